/* A run's lifecycle and outputs (run_int.h). */
#include "worker/jobs/run_int.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/strutil.h"
#include "common/url.h"

const char *fx_run_state_name(fx_run_state s) {
  static const char *const names[] = {"fetching", "acking", "status", "dropping", "done"};
  return names[s];
}

/* ---- identity --------------------------------------------------------------- */

/* A job's identity in its outputs: its job_id, else what could be read of
 * it, else the message key when it looks like a job id (enqueue keys by
 * job_id), else where it came from. */
const char *run_job_id(fx_run *r) {
  if (r->job) return r->job->job_id;
  if (r->jerr.job_id[0]) return r->jerr.job_id;
  if (r->key && fx_job_id_valid(r->key)) return r->key;
  snprintf(r->job_id_buf, sizeof r->job_id_buf, "offset:%s/%d/%lld", r->part->topic,
           (int)r->part->partition, (long long)r->offset);
  return r->job_id_buf;
}

const char *fx_run_tenant(const fx_run *r) {
  return r->job ? r->job->tenant : (r->jerr.tenant[0] ? r->jerr.tenant : NULL);
}

fx_rec_job run_rec_job(fx_run *r) {
  fx_rec_job j = {.job_id = run_job_id(r), .tenant = fx_run_tenant(r),
                  .attempt = r->job ? r->job->attempt : 1, .topic = r->part->topic,
                  .partition = r->part->partition, .offset = r->offset};
  return j;
}


run_logctx run_log_of(const fx_run *run) {
  run_logctx c;
  snprintf(c.partition, sizeof c.partition, "%d", (int)run->part->partition);
  snprintf(c.offset, sizeof c.offset, "%lld", (long long)run->offset);
  return c;
}

/* ---- outputs ------------------------------------------------------------------ */

void run_emit(fx_run *run, const char *topic, const char *key, char *value, size_t len,
                 rd_kafka_headers_t *h) {
  fx_out_emit(run->env.out, &run->sink, topic, key, value, len, h);
}

/* A record that could not be built (no memory): the job must not look
 * complete, so its sink fails and it runs again. */
void run_unbuilt(fx_run *run, const char *what) {
  atomic_fetch_add(&run->env.sv->metrics->records_unbuilt, 1);
  fx_log(FX_LOG_ERROR, "a record could not be built; the job is not committed and runs again",
         "record", what, "job_id", run_job_id(run), NULL);
  fx_sink_fail(&run->sink);
}


/* f: the fetch it is about (NULL for the job as a whole). */
void run_record_failure(fx_run *run, const run_fetch *f, const failure *fl) {
  const fx_services *sv = run->env.sv;
  char now[32];
  fx_iso_now(now);
  if (!run->failures) {
    run->first_class = fl->cls;
    run->first_status = fl->status;
    fx_utf8_copy(run->first_reason, sizeof run->first_reason, fl->message);
    memcpy(run->first_failure_at, now, sizeof now);
  }
  memcpy(run->last_failure_at, now, sizeof now);
  run->failures++;
  /* What a replay re-runs: the failed (patient, type) task; for a reference,
   * the task that led to it, and only when trying again could help; nothing
   * when the server's data itself is at fault (no_replay). */
  if (f && !fl->no_replay && f->depth == 0)
    fx_types_add(&run->failed_types[f->task], f->type);
  else if (f && !fl->no_replay && fx_errclass_transient(fl->cls))
    fx_types_add(&run->failed_types[f->task], f->origin_type);
  fx_rec_job j = run_rec_job(run);
  fx_rec_failure rf = {.cls = fl->cls, .http_status = fl->status, .outcome = fl->outcome,
                       .url = fl->url, .attempts = fl->attempts, .message = fl->message,
                       .patient = f ? run->job->tasks[f->task].patient : NULL,
                       .resource_type = f && f->type >= 0 ? fx_type_names[f->type] : NULL,
                       .reference = f ? f->ref_key : NULL, .time = now};
  size_t len;
  char *value = fx_rec_failure_value(&j, &rf, &len);
  char *key = fx_rec_failure_key(&j);
  if (value && key)
    run_emit(run, sv->app->cfg->topics.failures, key, value, len, fx_rec_headers(&j));
  else
    free(value), run_unbuilt(run, "failure");
  free(key);
  /* Patient ids only at debug: a read URL or a server's message can hold one. */
  char status[16] = "";
  if (fl->status) snprintf(status, sizeof status, "%ld", fl->status);
  run_logctx lc = run_log_of(run);
  fx_log(FX_LOG_WARN, "task failed", "job_id", j.job_id, "tenant", j.tenant, "partition",
         lc.partition, "offset", lc.offset, "error_class", fx_errclass_name(fl->cls),
         "resource_type", rf.resource_type, "http_status", status[0] ? status : NULL, NULL);
  if (fx_log_enabled(FX_LOG_DEBUG)) {
    char shown[1024] = "";
    if (fl->url) fx_url_redact(fl->url, shown, sizeof shown);
    fx_log(FX_LOG_DEBUG, "task failed: details", "job_id", j.job_id, "url",
           shown[0] ? shown : NULL, "reason", fl->message, NULL);
  }
}

/* A job is dead-lettered when it could not run at all, or when some of its
 * tasks failed in a way a replay can redo (record_failure). Permanent
 * failures of referenced entities alone are recorded, not dead-lettered. */
static int needs_dead_letter(const fx_run *run) {
  if (!run->job) return 1;
  for (size_t i = 0; i < run->job->n_tasks; i++)
    if (!fx_types_empty(run->failed_types[i])) return 1;
  return 0;
}

char *run_dump(json_t *o, size_t *len) {
  char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  *len = s ? strlen(s) : 0;
  return s;
}

static void publish_dead_letter(fx_run *run) {
  const fx_services *sv = run->env.sv;
  char *value = NULL;
  size_t len = 0;
  const char *omitted = NULL;
  if (run->job) {
    /* A replayable job narrowed to the (patient, type) tasks that failed. */
    fx_job narrow = *run->job;
    narrow.tasks = calloc(run->job->n_tasks, sizeof *narrow.tasks);
    narrow.n_tasks = 0;
    for (size_t i = 0; narrow.tasks && i < run->job->n_tasks; i++)
      if (!fx_types_empty(run->failed_types[i])) {
        narrow.tasks[narrow.n_tasks] = run->job->tasks[i];
        narrow.tasks[narrow.n_tasks++].types = run->failed_types[i];
      }
    json_t *j = narrow.tasks ? fx_job_to_json(&narrow) : NULL;
    value = run_dump(j, &len);
    json_decref(j);
    free(narrow.tasks);
    if (!value) {
      run_unbuilt(run, "dead letter");
      return;
    }
  } else if (run->raw) {
    value = malloc(run->raw_len ? run->raw_len : 1);
    if (!value) {
      run_unbuilt(run, "dead letter");
      return;
    }
    memcpy(value, run->raw, run->raw_len);
    len = run->raw_len;
  } else {
    omitted = "original-too-large";
  }
  fx_rec_job j = run_rec_job(run);
  fx_rec_dead_letter d = {.cls = run->first_class, .http_status = run->first_status,
                          .reason = run->first_reason, .timestamp = run->timestamp,
                          .first_failure = run->first_failure_at,
                          .last_failure = run->last_failure_at,
                          .replayed_from = run->replayed_from, .omitted = omitted};
  run_emit(run, sv->app->cfg->topics.dlq, j.job_id, value, len, fx_rec_dead_letter_headers(&j, &d));
}

static void publish_status(fx_run *run) {
  const fx_services *sv = run->env.sv;
  char now[32];
  fx_iso_now(now);
  fx_outcome outcome = run->failures == 0   ? FX_OUTCOME_COMPLETED
                       : run->resources > 0 ? FX_OUTCOME_PARTIAL
                                            : FX_OUTCOME_FAILED;
  json_t *counts = json_object(), *full = json_array();
  for (int i = 0; counts && run->counts && i < FX_NTYPES; i++)
    if (run->counts[i]) json_object_set_new(counts, fx_type_names[i], json_integer(run->counts[i]));
  for (int i = fx_types_next(run->full_types, 0); full && i >= 0;
       i = fx_types_next(run->full_types, i + 1))
    json_array_append_new(full, json_string(fx_type_names[i]));
  fx_rec_job j = run_rec_job(run);
  fx_rec_status st = {
      .outcome = outcome,
      .patients = run->job ? (long long)run->job->n_tasks : 0,
      .tasks = run->job ? (long long)fx_job_task_count(run->job) : 0,
      .tasks_failed = (long long)run->tasks_failed,
      .counts = counts,
      .resources = (long long)run->resources,
      .references_fetched = (long long)run->refs_fetched,
      .references_cached = (long long)run->refs_cached,
      .failures = (long long)run->failures,
      .failures_unrecorded = run->refs.unrecorded,
      .error_class = run->failures ? run->first_class : FX_EC_NONE,
      .full_types = full,
      .since = run->job ? run->job->since : NULL,
      .started_at = run->started_at,
      .finished_at = now,
      .duration_ms = (long long)(fx_now_ms() - run->started_ms),
      .worker = sv->identity};
  size_t len;
  char *value = counts && full ? fx_rec_status_value(&j, &st, &len) : NULL;
  json_decref(counts);
  json_decref(full);
  if (!value) {
    run_unbuilt(run, "status");
    return;
  }
  run_emit(run, sv->app->cfg->topics.status, j.job_id, value, len, fx_rec_headers(&j));
  fx_metrics_job_finished(sv->metrics, (int)outcome);
  run_logctx lc = run_log_of(run);
  fx_log(FX_LOG_INFO, "job finished", "job_id", j.job_id, "tenant", j.tenant, "partition",
         lc.partition, "offset", lc.offset, "state", fx_outcome_name(outcome), NULL);
}

/* ---- the lifecycle ------------------------------------------------------------ */

int run_cursor_exhausted(const fx_run *run) {
  return !run->job || run->bulk || run->cursor_task >= run->job->n_tasks;
}

static void close_sink(fx_run *run) {
  if (!run->sink_open) return;
  run->sink_open = 0;
  fx_sink_close(&run->sink);
}

/* The one place FETCHING and DROPPING move on (ACKING and STATUS move on
 * when the sink settles). */
void run_advance(fx_run *run) {
  switch (run->state) {
  case FX_RUN_FETCHING:
    if (run->tasks_left || !run_cursor_exhausted(run)) return;
    if (run->failures && needs_dead_letter(run)) publish_dead_letter(run);
    run->state = FX_RUN_ACKING;
    close_sink(run);
    return;
  case FX_RUN_DROPPING:
    if (run->tasks_left) return;
    close_sink(run);
    return;
  case FX_RUN_ACKING:
  case FX_RUN_STATUS:
  case FX_RUN_DONE: return;
  }
}

/* Kafka has (or refused) every output of the round: the status record goes
 * last, so whoever reads it can rely on every result, failure and dead
 * letter of the job being in Kafka. A job with an undelivered output gets
 * no status: it is not committed and runs again. */
void run_on_settled(fx_sink *s, int failed) {
  fx_run *run = (fx_run *)((char *)s - offsetof(fx_run, sink));
  switch (run->state) {
  case FX_RUN_ACKING:
    if (!failed && !run->bulk) {
      run->state = FX_RUN_STATUS;
      fx_sink_open(s);
      run->sink_open = 1;
      publish_status(run);
      close_sink(run);
      return;
    }
    run->delivered = !failed;
    break;
  case FX_RUN_STATUS: run->delivered = !failed; break;
  case FX_RUN_DROPPING: run->delivered = 0; break;
  case FX_RUN_FETCHING:
  case FX_RUN_DONE: return; /* cannot happen: the sink is open while fetching */
  }
  run->state = FX_RUN_DONE;
  run->env.done(run->env.ctx, run);
}

void run_task_done(fx_run *run) {
  run->tasks_left--;
  run_advance(run);
}

void run_abandon(fx_run *run) {
  if (run->state == FX_RUN_DROPPING || run->state == FX_RUN_DONE) return;
  int fetching = run->state == FX_RUN_FETCHING;
  run->state = FX_RUN_DROPPING;
  if (fetching && run->job) {
    /* Tasks not started yet never will: count them done. Fetches that wait
     * (for a retry or the governor) end canceled; those in flight end when
     * their answers come. */
    for (size_t i = run->cursor_task; !run->bulk && i < run->job->n_tasks; i++) {
      fx_types types = run->job->tasks[i].types;
      for (int k = 0; i == run->cursor_task && k < run->cursor_type; k++) fx_types_del(&types, k);
      run->tasks_left -= (size_t)fx_types_count(types);
    }
    run->cursor_task = run->job->n_tasks;
    /* Its fetches that wait end canceled (from the loop, soon). */
    fx_fetcher_drop_owner(run->env.fetcher, run);
  }
  run_advance(run);
}
