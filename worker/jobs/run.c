/* A job's life on its worker thread (run.h): creation, the task cursor,
 * abandoning; the lifecycle and outputs are in run_core.c, requests and
 * answers in run_fetch.c. */
#include "worker/jobs/run_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/strutil.h"
#include "worker/bulk/bulk.h"
#include "worker/replay/replay.h"

void fx_run_abandon(fx_run *run) { run_abandon(run); }

fx_fetch *fx_run_next_fetch(fx_run *run) {
  while (run->state == FX_RUN_FETCHING && !run_cursor_exhausted(run)) {
    const fx_job_task *task = &run->job->tasks[run->cursor_task];
    size_t ti = run->cursor_task;
    int type = fx_types_next(task->types, run->cursor_type);
    if (type < 0) { /* cannot happen: parsed tasks have at least one type */
      run->cursor_task++;
      run->cursor_type = 0;
      continue;
    }
    run->cursor_type = type + 1;
    if (fx_types_next(task->types, run->cursor_type) < 0) {
      run->cursor_task++;
      run->cursor_type = 0;
    }
    run_fetch *f = run_first_fetch(run, ti, type);
    if (f) return &f->f;
  }
  return NULL;
}

int fx_run_has_work(const fx_run *run) {
  return run->state == FX_RUN_FETCHING && !run_cursor_exhausted(run);
}

/* ---- start and the rest ------------------------------------------------------------ */

/* A bulk job runs on the bulk thread of whichever worker owns its key on the
 * bulk topic (bulk.h): this thread only publishes the pending record. Once
 * Kafka has it, the job's offset moves on like any finished job's; its
 * status record comes from the bulk thread when the export ends. */
static void hand_over_bulk(fx_run *run) {
  const fx_services *sv = run->env.sv;
  run->bulk = 1;
  json_t *rec = fx_bulk_pending_record(run->job, run->part->topic, run->part->partition,
                                       run->offset, run->timestamp, run->replayed_from);
  size_t len;
  char *value = run_dump(rec, &len);
  json_decref(rec);
  if (!value) {
    run_unbuilt(run, "bulk pending");
  } else {
    fx_rec_job j = run_rec_job(run);
    run_emit(run, sv->app->cfg->topics.bulk, run->job->job_id, value, len, fx_rec_headers(&j));
    run_logctx lc = run_log_of(run);
    fx_log(FX_LOG_INFO, "bulk job handed to the bulk owner", "job_id", run->job->job_id,
           "tenant", run->job->tenant, "partition", lc.partition, "offset", lc.offset, NULL);
  }
}

fx_run *fx_run_new(const fx_run_env *env, fx_partition *part, const rd_kafka_message_t *m,
                   uint64_t seq) {
  fx_run *run = calloc(1, sizeof *run);
  if (!run || !(run->seen = fx_strset_new()) ||
      fx_refs_init(&run->refs, (size_t)env->sv->app->cfg->worker.max_references_per_job,
                   (size_t)env->sv->app->cfg->worker.max_reference_failures_per_job) != 0 ||
      !(run->counts = calloc(FX_NTYPES, sizeof *run->counts))) {
    if (run) {
      fx_strset_free(run->seen);
      fx_refs_free(&run->refs);
    }
    free(run);
    return NULL;
  }
  run->env = *env;
  run->seq = seq;
  run->part = part;
  part->refs++;
  run->offset = m->offset;
  run->timestamp = rd_kafka_message_timestamp(m, NULL);
  if (m->key) run->key = fx_memstr(m->key, m->key_len);
  /* A replayed job names the dead letter it came from; its own dead letter
   * carries that on, so an audit can follow a job through its attempts. */
  rd_kafka_headers_t *mh = NULL;
  const void *rv = NULL;
  size_t rlen = 0;
  if (rd_kafka_message_headers(m, &mh) == RD_KAFKA_RESP_ERR_NO_ERROR &&
      rd_kafka_header_get_last(mh, "fhirx-replayed-from", &rv, &rlen) ==
          RD_KAFKA_RESP_ERR_NO_ERROR &&
      rv && rlen < sizeof run->replayed_from) {
    memcpy(run->replayed_from, rv, rlen);
    run->replayed_from[rlen] = '\0';
    char topic[256];
    int32_t part_no;
    int64_t off;
    if (fx_rp_parse_position(run->replayed_from, rlen, topic, sizeof topic, &part_no, &off) != 0)
      run->replayed_from[0] = '\0';
  }
  fx_sink_init(&run->sink, env->lp, run_on_settled);
  fx_sink_open(&run->sink);
  run->sink_open = 1;
  run->state = FX_RUN_FETCHING;
  fx_iso_now(run->started_at);
  run->started_ms = fx_now_ms();
  run->deadline_ms =
      run->started_ms + (uint64_t)env->sv->app->cfg->worker.job_deadline_s * 1000u;
  run->ts = fx_tenant_slot_get(env->sv->tenants);
  const char *payload = m->payload ? m->payload : "";
  if (fx_job_parse(payload, m->len, &run->ts->profiles, &env->sv->limits, &run->job,
                   &run->jerr) != 0) {
    if (m->len <= env->sv->max_message && (run->raw = malloc(m->len ? m->len : 1))) {
      memcpy(run->raw, payload, m->len);
      run->raw_len = m->len;
    }
    return run;
  }
  run->tenant = fx_tenant_set_find(run->ts, run->job->tenant);
  run->profile = fx_profile_for(&run->ts->profiles, run->job->tenant);
  run->tm = fx_metrics_tenant(env->sv->metrics, run->job->tenant);
  if (run->job->kind == FX_JOB_BULK) {
    run->bulk = 1;
    return run;
  }
  run->tasks_left = fx_job_task_count(run->job);
  if (!(run->failed_types = calloc(run->job->n_tasks ? run->job->n_tasks : 1,
                                   sizeof *run->failed_types))) {
    fx_run_free(run);
    return NULL;
  }
  return run;
}

void fx_run_start(fx_run *run) {
  if (!run->job) {
    char msg[sizeof run->jerr.msg + 40];
    snprintf(msg, sizeof msg, "%s%s", run->jerr.msg,
             run->jerr.cls == FX_EC_UNKNOWN_TENANT ? " (then replay the dead letter)" : "");
    failure fl = {.cls = run->jerr.cls, .message = msg};
    run_record_failure(run, NULL, &fl);
  } else if (run->bulk) {
    hand_over_bulk(run);
  } else if (fx_log_enabled(FX_LOG_DEBUG)) {
    run_logctx lc = run_log_of(run);
    fx_log(FX_LOG_DEBUG, "job started", "job_id", run->job->job_id, "tenant", run->job->tenant,
           "partition", lc.partition, "offset", lc.offset, NULL);
  }
  run_advance(run);
}

void fx_run_free(fx_run *run) {
  if (!run) return;
  fx_job_free(run->job);
  if (run->ts) fx_tenant_set_release(run->ts);
  fx_strset_free(run->seen);
  fx_refs_free(&run->refs);
  fx_partition_unref(run->part);
  free(run->failed_types);
  free(run->counts);
  free(run->raw);
  free(run->key);
  free(run);
}

fx_run_state fx_run_get_state(const fx_run *run) { return run->state; }
uint64_t fx_run_deadline(const fx_run *run) { return run->deadline_ms; }
uint64_t fx_run_seq(const fx_run *run) { return run->seq; }
fx_partition *fx_run_partition(const fx_run *run) { return run->part; }
int64_t fx_run_offset(const fx_run *run) { return run->offset; }
int fx_run_committable(const fx_run *run) { return run->state == FX_RUN_DONE && run->delivered; }
fx_run_links *fx_run_links_of(fx_run *run) { return &run->links; }
