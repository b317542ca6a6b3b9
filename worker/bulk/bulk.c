/* Group bulk $export jobs: the bulk thread's role (bulk.h for the design,
 * bulk_int.h for how its files divide the work).
 *
 * The bulk topic is the exports' state: on assignment each partition is read
 * from its beginning, every progress record replacing the one before it for
 * its job (newer attempt, or same attempt and higher seq). An export starts,
 * or resumes from its latest record, once its partition has been read to its
 * end; until then it is LISTED (life.h). */
#include "worker/bulk/bulk.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/bulk/bulk_int.h"

/* ---- the bulk topic ---------------------------------------------------------------- */

static bx_part *find_part(fx_bulk *b, int32_t partition) {
  for (size_t i = 0; i < b->n_parts; i++)
    if (b->parts[i].partition == partition) return &b->parts[i];
  return NULL;
}

static int newer(int attempt, long long seq, int than_attempt, long long than_seq) {
  return attempt > than_attempt || (attempt == than_attempt && seq > than_seq);
}

/* The export of job_id that a record read now may still concern (it has
 * not begun to end), or NULL. */
static bx_export *find_export(fx_bulk *b, const char *job_id) {
  for (int s = 0; s < FX_BX_NSTATES; s++) {
    if (!fx_bx_known((fx_bx_state)s)) continue;
    for (bx_link *k = b->exports[s].first; k; k = k->next) {
      bx_export *e = BX_OF(k, bx_export, link);
      if (strcmp(e->job_id, job_id) == 0) return e;
    }
  }
  return NULL;
}

/* A progress record read from the bulk topic. */
static void apply_record(fx_bulk *b, const rd_kafka_message_t *m) {
  if (!m->key || m->key_len == 0 || m->key_len > 128 || !m->payload) return; /* tombstones */
  json_t *rec = json_loadb(m->payload, m->len, 0, NULL);
  const char *job_id = json_string_value(json_object_get(rec, "job_id"));
  int state = fx_bx_record_parse(json_string_value(json_object_get(rec, "state")));
  int attempt = (int)json_integer_value(json_object_get(rec, "attempt"));
  long long seq = json_integer_value(json_object_get(rec, "seq"));
  if (!job_id || state == FX_BX_NONE || attempt < 1) {
    fx_log(FX_LOG_WARN, "ignoring a record of the bulk topic that is not a progress record", NULL);
    json_decref(rec);
    return;
  }
  json_t *fin = json_object_get(b->finished, job_id);
  if (fin && !newer(attempt, seq, (int)json_integer_value(json_array_get(fin, 0)),
                    json_integer_value(json_array_get(fin, 1)))) {
    json_decref(rec); /* an export that ended already (e.g. a job consumed twice) */
    return;
  }
  bx_export *e = find_export(b, job_id);
  if (e && !newer(attempt, seq, e->attempt, e->seq)) {
    json_decref(rec); /* our own record coming back, or an older one */
    return;
  }
  if (e && e->state != FX_BX_LISTED) {
    /* Someone else moved it on: only a newer attempt (a replay) replaces a
     * running export, and only once this one ended, which it cannot have. */
    json_decref(rec);
    return;
  }
  if (state == FX_BXR_COMPLETED || state == FX_BXR_FAILED) {
    bx_finished_set(b, job_id, attempt, seq);
    if (e) bx_export_drop(e);
    json_decref(rec);
    return;
  }
  if (e) {
    json_decref(e->rec);
    e->rec = rec;
  } else if (!(e = bx_export_new(b, job_id, rec))) {
    json_decref(rec);
    fx_log(FX_LOG_ERROR, "out of memory tracking a bulk export", NULL);
    return;
  }
  e->partition = m->partition;
  e->attempt = attempt;
  e->seq = seq;
  e->rstate = (fx_bx_record)state;
  json_t *counts = json_object_get(rec, "counts");
  json_object_clear(e->counts);
  const char *k;
  json_t *v;
  json_object_foreach(counts, k, v) {
    if (fx_resource_type_name_ok(k) && json_integer_value(v) > 0 &&
        json_object_size(e->counts) < MAX_COUNTED_TYPES)
      json_object_set_new(e->counts, k, json_integer(json_integer_value(v)));
  }
  e->error_lines = json_integer_value(json_object_get(rec, "error_lines"));
  e->bad_lines = json_integer_value(json_object_get(rec, "failures"));
  e->unrecorded = json_integer_value(json_object_get(rec, "failures_not_recorded"));
  e->first_cls = fx_errclass_parse(json_string_value(json_object_get(rec, "error_class")));
  e->refs_fetched = json_integer_value(json_object_get(rec, "references_fetched"));
  bx_part *p = find_part(b, m->partition);
  if (p && p->caught_up && !b->stopping) bx_export_start(e);
}

static void caught_up(fx_bulk *b, int32_t partition) {
  bx_part *p = find_part(b, partition);
  if (!p || p->caught_up) return;
  p->caught_up = 1;
  bx_link *next;
  for (bx_link *k = b->exports[FX_BX_LISTED].first; k && !b->stopping; k = next) {
    next = k->next; /* a started export leaves the list */
    bx_export *e = BX_OF(k, bx_export, link);
    if (e->partition == partition) bx_export_start(e);
  }
}

/* ---- the thread's role ------------------------------------------------------------ */

static void on_message(void *ctx, const rd_kafka_message_t *m) {
  fx_bulk *b = ctx;
  if (!b->stopping) apply_record(b, m);
}

static void on_eof(void *ctx, const char *topic, int32_t partition) {
  (void)topic;
  caught_up(ctx, partition);
}

static void on_assign(void *ctx, rd_kafka_topic_partition_list_t *parts) {
  fx_bulk *b = ctx;
  for (int i = 0; i < parts->cnt; i++) {
    /* The whole partition, every time: it is the state of its exports. */
    parts->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
    if (find_part(b, parts->elems[i].partition)) continue;
    if (b->n_parts == b->cap_parts) {
      size_t cap = b->cap_parts ? b->cap_parts * 2 : 8;
      bx_part *grown = realloc(b->parts, cap * sizeof *grown);
      if (!grown) continue;
      b->parts = grown;
      b->cap_parts = cap;
    }
    b->parts[b->n_parts++] = (bx_part){.partition = parts->elems[i].partition};
  }
}

/* Every export not yet ending is given up here (it resumes from its last
 * progress record wherever its partition goes); those ending finish. */
static void drop_all(fx_bulk *b) {
  for (int s = 0; s < FX_BX_NSTATES; s++) {
    if (!fx_bx_known((fx_bx_state)s)) continue;
    bx_link *next;
    for (bx_link *k = b->exports[s].first; k; k = next) {
      next = k->next; /* a dropped export leaves the list */
      bx_export_drop(BX_OF(k, bx_export, link));
    }
  }
}

/* Eager protocol: everything is revoked; exports resume wherever their
 * partition goes (maybe here again, from its records). */
static void on_revoke(void *ctx, const rd_kafka_topic_partition_list_t *parts) {
  (void)parts;
  fx_bulk *b = ctx;
  drop_all(b);
  json_object_clear(b->finished);
  b->n_parts = 0;
}

/* Leaves the group once every export and file is gone and every control
 * record is handed to the producer. */
static int idle(void *ctx) {
  fx_bulk *b = ctx;
  for (int s = 0; s < FX_BX_NSTATES; s++)
    if (b->exports[s].n) return 0;
  return fx_out_waiting(b->out) == 0;
}

static void busy(void *ctx, char *buf, size_t n) {
  fx_bulk *b = ctx;
  size_t at = 0;
  for (int s = 0; s < FX_BX_NSTATES && at < n; s++)
    if (b->exports[s].n)
      at += (size_t)snprintf(buf + at, n - at, "%zu exports %s, ", (size_t)b->exports[s].n,
                             fx_bx_state_name((fx_bx_state)s));
  if (at < n) snprintf(buf + at, n - at, "%zu outputs waiting for the producer", fx_out_waiting(b->out));
}

static void on_stop(void *ctx) {
  fx_bulk *b = ctx;
  b->stopping = 1;
  drop_all(b);
}

/* Downloads in flight are canceled (the thread closes its HTTP client);
 * controls still waiting for the producer are dropped: progress records are
 * only an optimisation of a resume, the rest is redone. */
static void on_deadline(void *ctx) {
  fx_bulk *b = ctx;
  fx_log(FX_LOG_WARN, "bulk drain deadline passed; canceling downloads (they resume elsewhere)",
         NULL);
  fx_out_drop(b->out);
}

static void on_close(void *ctx) {
  fx_bulk *b = ctx;
  fx_out_close(b->out);
  b->out = NULL;
}

static void on_out_empty(void *ctx) { bx_maybe_leave(ctx); }

static void on_loose_settled(fx_sink *s, int failed) { (void)s, (void)failed; }

static const fx_kthread_role bulk_role = {
    .name = "bulk",
    .on_message = on_message,
    .on_eof = on_eof,
    .on_assign = on_assign,
    .on_revoke = on_revoke,
    .on_stop = on_stop,
    .idle = idle,
    .on_deadline = on_deadline,
    .busy = busy,
    .on_close = on_close,
    .commit_on_close = 0,
};

/* An hour of bulk.deadline_hours in ms: 3,600,000, unless the test hook
 * FHIRX_TEST_DEADLINE_HOUR_MS (1-3600000) shortens it, so that a test can see
 * an export pass its deadline without waiting an hour. The option itself
 * keeps its unit and range; the hook is announced with a warning at start
 * (docs/operations.md). */
static uint64_t deadline_hour_ms(void) {
  const char *env = getenv("FHIRX_TEST_DEADLINE_HOUR_MS");
  if (!env || !*env) return 3600000u;
  char *end;
  errno = 0;
  long long v = strtoll(env, &end, 10);
  if (errno || *end || v < 1 || v > 3600000) {
    fx_log(FX_LOG_WARN, "FHIRX_TEST_DEADLINE_HOUR_MS ignored: expected 1-3600000 (ms)", "value",
           env, NULL);
    return 3600000u;
  }
  fx_log(FX_LOG_WARN,
         "test hook FHIRX_TEST_DEADLINE_HOUR_MS is set: an hour of bulk.deadline_hours lasts "
         "this many ms; never set it in production",
         "ms", env, NULL);
  return (uint64_t)v;
}

int fx_bulk_new(const fx_services *sv, void (*on_exit)(void *arg), void *exit_arg,
                fx_bulk **out, fx_err *err) {
  fx_bulk *b = calloc(1, sizeof *b);
  if (!b || !(b->finished = json_object())) {
    free(b);
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  }
  b->sv = sv;
  b->hour_ms = deadline_hour_ms();
  char group[300];
  snprintf(group, sizeof group, "%s.bulk", sv->app->cfg->worker.group_id);
  /* Eager assignment: a revoked partition's exports stop at once, and the
   * cooperative protocol's shutdown bug in librdkafka 2.0.2 (#4312) cannot
   * hit a consumer that is stopped before its first assignment. */
  static const char *const props[] = {"enable.partition.eof", "true", "enable.auto.commit",
                                      "false", "partition.assignment.strategy", "roundrobin",
                                      NULL};
  fx_kthread_conf kc = {.cfg = sv->app->cfg,
                        .group_id = group,
                        .topic = sv->app->cfg->topics.bulk,
                        .props = props,
                        .log_client = "bulk-consumer",
                        .supervisor = sv->supervisor,
                        .on_exit = on_exit,
                        .exit_arg = exit_arg};
  int rc = fx_kthread_new(&kc, &bulk_role, b, &b->kt, err);
  if (!rc) {
    b->lp = fx_kthread_loop(b->kt);
    b->uv = b->lp->uv;
    rc = fx_out_new(b->uv, sv->producer, on_out_empty, b, &b->out, err);
  }
  if (rc) {
    fx_bulk_free(b);
    return rc;
  }
  fx_sink_init(&b->loose, b->lp, on_loose_settled);
  fx_sink_open(&b->loose);
  bx_exports_init(b);
  *out = b;
  return 0;
}

int fx_bulk_start(fx_bulk *b, fx_err *err) { return fx_kthread_start(b->kt, err); }

void fx_bulk_stop(fx_bulk *b) { fx_kthread_stop(b->kt); }

void fx_bulk_join(fx_bulk *b) {
  if (!b) return;
  fx_kthread_join(b->kt);
  free(b->parts);
  json_decref(b->finished);
  free(b);
}

void fx_bulk_free(fx_bulk *b) {
  if (!b) return;
  if (b->out) fx_out_close(b->out);
  fx_kthread_free(b->kt);
  free(b->parts);
  json_decref(b->finished);
  free(b);
}
