/* A job's life on its worker thread: validate, fetch every (patient, type)
 * task page by page, publish each resource once, record failures, then the
 * dead letter and the status record; release the offset when Kafka has
 * acknowledged all of it. */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/fhir.h"
#include "common/log.h"
#include "common/strutil.h"
#include "common/governor.h"
#include "common/url.h"
#include "worker/pool/pool.h"
#include "worker/replay/replay.h"
#include "worker/model/strset.h"

#define RETRY_BASE_MS 500
#define RETRY_CAP_MS 30000
#define DEFER_MS 50

typedef struct fx_deferred {
  struct fx_deferred *next;
  fx_run *run;
  char *topic, *key, *value;
  size_t len;
  rd_kafka_headers_t *hdrs;
} fx_deferred;


/* A job's identity for outputs: its job_id, else what could be read of it,
 * else the message key when it looks like a job id (enqueue keys by job_id),
 * else where it came from. */
static const char *run_job_id(const fx_run *r, char *buf, size_t size) {
  if (r->job) return r->job->job_id;
  if (r->jerr.job_id[0]) return r->jerr.job_id;
  if (r->key && fx_job_id_valid(r->key)) return r->key;
  snprintf(buf, size, "offset:%s/%d/%lld", r->part->topic, (int)r->part->partition,
           (long long)r->offset);
  return buf;
}

static const char *run_tenant(const fx_run *r) {
  return r->job ? r->job->tenant : (r->jerr.tenant[0] ? r->jerr.tenant : NULL);
}

/* Log context of a run's source message: partition and offset as strings. */
typedef struct run_logctx {
  char partition[16];
  char offset[24];
} run_logctx;

static run_logctx logctx(const fx_run *run) {
  run_logctx c;
  snprintf(c.partition, sizeof c.partition, "%d", (int)run->part->partition);
  snprintf(c.offset, sizeof c.offset, "%lld", (long long)run->offset);
  return c;
}

static int run_attempt(const fx_run *r) { return r->job ? r->job->attempt : 1; }

static const fx_tenant_conf *run_tenant_conf(const fx_run *r) {
  return fx_tenant_set_find(r->ts, r->job->tenant);
}

static const fx_profile *run_profile(const fx_run *r) {
  return fx_profile_for(&r->ts->profiles, r->job->tenant);
}

/* ---- producing ------------------------------------------------------------ */

static void on_deferred_timer(uv_timer_t *t);

/* Produces or, when the producer's local queue is full, keeps the message
 * and tries again shortly. Order is kept: once something waits, new
 * outputs queue behind it. A deferred output holds its run (one count). */
static void emit(fx_run *run, const char *topic, const char *key, char *value, size_t len,
                 rd_kafka_headers_t *hdrs) {
  fx_wthread *wt = run->wt;
  int err = wt->def_head ? RD_KAFKA_RESP_ERR__QUEUE_FULL
                         : fx_produce(wt->pool, run, topic, key, value, len, hdrs);
  if (!err) return;
  if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
    fx_deferred *d = calloc(1, sizeof *d);
    if (d && (d->topic = strdup(topic)) && (!key || (d->key = strdup(key)))) {
      d->run = run;
      d->value = value;
      d->len = len;
      d->hdrs = hdrs;
      atomic_fetch_add(&run->outputs, 1);
      if (wt->def_tail) wt->def_tail->next = d;
      else wt->def_head = d;
      wt->def_tail = d;
      if (!uv_is_active((uv_handle_t *)&wt->def_timer))
        uv_timer_start(&wt->def_timer, on_deferred_timer, DEFER_MS, 0);
      return;
    }
    if (d) free(d->topic), free(d->key), free(d);
  }
  char jb[160];
  fx_log(FX_LOG_ERROR, "cannot produce an output; the job will not be committed", "topic", topic,
         "job_id", run_job_id(run, jb, sizeof jb), "error",
         rd_kafka_err2str((rd_kafka_resp_err_t)err), NULL);
  atomic_store(&run->delivery_failed, 1);
  free(value);
  if (hdrs) rd_kafka_headers_destroy(hdrs);
}

/* Drops the thread's hold on run. The free that may follow is deferred to
 * the loop's mailbox (as redis defers client frees): callers walking the
 * run list, or deep in a chain of callbacks, never see a run vanish under
 * them. */
static void release(fx_run *run) {
  if (atomic_fetch_sub(&run->outputs, 1) == 1 &&
      fx_loop_post(&run->wt->lp, fx_run_complete, run) != 0)
    fx_run_complete(run);
}

static void on_deferred_timer(uv_timer_t *t) {
  fx_wthread *wt = t->data;
  while (wt->def_head) {
    fx_deferred *d = wt->def_head;
    int err = fx_produce(wt->pool, d->run, d->topic, d->key, d->value, d->len, d->hdrs);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      uv_timer_start(&wt->def_timer, on_deferred_timer, DEFER_MS, 0);
      return;
    }
    wt->def_head = d->next;
    if (!wt->def_head) wt->def_tail = NULL;
    if (err) {
      atomic_store(&d->run->delivery_failed, 1);
      free(d->value);
      if (d->hdrs) rd_kafka_headers_destroy(d->hdrs);
    }
    fx_run *run = d->run;
    free(d->topic);
    free(d->key);
    free(d);
    release(run); /* the deferral's hold; a produced message holds its own */
  }
}

static rd_kafka_headers_t *headers_for(const fx_run *run) {
  char jb[160], attempt[16];
  rd_kafka_headers_t *h = rd_kafka_headers_new(12);
  rd_kafka_header_add(h, "fhirx-job-id", -1, run_job_id(run, jb, sizeof jb), -1);
  if (run_tenant(run)) rd_kafka_header_add(h, "fhirx-tenant", -1, run_tenant(run), -1);
  snprintf(attempt, sizeof attempt, "%d", run_attempt(run));
  rd_kafka_header_add(h, "fhirx-attempt", -1, attempt, -1);
  return h;
}

static char *dump(json_t *o, size_t *len) {
  char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  *len = s ? strlen(s) : 0;
  return s;
}

static json_t *source_json(const fx_run *run) {
  return json_pack("{s:s, s:i, s:I}", "topic", run->part->topic, "partition",
                   (int)run->part->partition, "offset", (json_int_t)run->offset);
}

/* ---- failures ------------------------------------------------------------- */

typedef struct failure {
  fx_errclass cls;
  long status;
  const char *outcome;
  const char *url;
  int attempts;
  const char *message;
  int no_replay; /* a replay cannot help (the server's data is at fault): not dead-lettered */
} failure;

static void record_failure(fx_run *run, const fx_fetch *f, const failure *fl) {
  fx_pool *p = run->wt->pool;
  char now[32], jb[160], shown[1024] = "";
  fx_iso_now(now);
  if (fl->url) fx_url_redact(fl->url, shown, sizeof shown);
  if (!run->failures) {
    run->first_class = fl->cls;
    run->first_status = fl->status;
    snprintf(run->first_reason, sizeof run->first_reason, "%s", fl->message);
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
  const char *job_id = run_job_id(run, jb, sizeof jb);
  json_t *o = json_pack(
      "{s:s, s:s, s:o, s:o, s:s, s:o, s:s, s:b, s:o, s:o, s:o, s:i, s:s, s:s, s:i, s:o}", "type",
      "failure", "job_id", job_id, "tenant",
      run_tenant(run) ? json_string(run_tenant(run)) : json_null(), "patient",
      f ? json_string(run->job->tasks[f->task].patient) : json_null(), "resource_type",
      f ? fx_type_names[f->type] : "", "reference",
      f && f->ref_key ? json_string(f->ref_key) : json_null(), "error_class",
      fx_errclass_name(fl->cls), "transient", fx_errclass_transient(fl->cls), "http_status",
      fl->status ? json_integer(fl->status) : json_null(), "outcome",
      fl->outcome && *fl->outcome ? json_string(fl->outcome) : json_null(), "url",
      shown[0] ? json_string(shown) : json_null(), "attempts", fl->attempts ? fl->attempts : 1,
      "message", fl->message, "time", now, "attempt", run_attempt(run), "source",
      source_json(run));
  if (!f) json_object_set_new(o, "resource_type", json_null());
  size_t len;
  char *value = dump(o, &len);
  json_decref(o);
  char key[256]; /* tenant/job_id; an empty tenant segment when there is none */
  snprintf(key, sizeof key, "%s/%s", run_tenant(run) ? run_tenant(run) : "", job_id);
  if (value) emit(run, p->app.cfg->topics.failures, key, value, len, headers_for(run));
  atomic_fetch_add(&p->stats.failures, 1);
  /* Patient ids only at debug: a read URL or a server's message can hold one. */
  char status[16] = "";
  if (fl->status) snprintf(status, sizeof status, "%ld", fl->status);
  run_logctx lc = logctx(run);
  fx_log(FX_LOG_WARN, "task failed", "job_id", job_id, "tenant", run_tenant(run), "partition",
         lc.partition, "offset", lc.offset, "error_class", fx_errclass_name(fl->cls),
         "resource_type", f ? fx_type_names[f->type] : NULL, "http_status",
         status[0] ? status : NULL, NULL);
  if (fx_log_enabled(FX_LOG_DEBUG))
    fx_log(FX_LOG_DEBUG, "task failed: details", "job_id", job_id, "url", shown[0] ? shown : NULL,
           "reason", fl->message, NULL);
}

/* ---- the end of a run ----------------------------------------------------- */

/* A job is dead-lettered when it could not run at all, or when some of its
 * tasks failed in a way a replay can redo (see record_failure). Permanent
 * failures of referenced entities alone are recorded, not dead-lettered. */
static int needs_dead_letter(const fx_run *run) {
  if (!run->job) return 1;
  for (size_t i = 0; i < run->job->n_tasks; i++)
    if (!fx_types_empty(run->failed_types[i])) return 1;
  return 0;
}

static void publish_dead_letter(fx_run *run) {
  fx_pool *p = run->wt->pool;
  char jb[160], buf[32];
  const char *job_id = run_job_id(run, jb, sizeof jb);
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
    value = j ? dump(j, &len) : NULL;
    json_decref(j);
    free(narrow.tasks);
  } else if (run->raw) {
    value = malloc(run->raw_len ? run->raw_len : 1);
    if (value) memcpy(value, run->raw, run->raw_len);
    len = run->raw_len;
  } else {
    omitted = "original-too-large";
  }
  rd_kafka_headers_t *h = headers_for(run);
  rd_kafka_header_add(h, "fhirx-error-class", -1, fx_errclass_name(run->first_class), -1);
  if (run->first_status) {
    snprintf(buf, sizeof buf, "%ld", run->first_status);
    rd_kafka_header_add(h, "fhirx-http-status", -1, buf, -1);
  }
  rd_kafka_header_add(h, "fhirx-reason", -1, run->first_reason,
                      (ssize_t)strnlen(run->first_reason, 512));
  rd_kafka_header_add(h, "fhirx-original-topic", -1, run->part->topic, -1);
  snprintf(buf, sizeof buf, "%d", (int)run->part->partition);
  rd_kafka_header_add(h, "fhirx-original-partition", -1, buf, -1);
  snprintf(buf, sizeof buf, "%lld", (long long)run->offset);
  rd_kafka_header_add(h, "fhirx-original-offset", -1, buf, -1);
  snprintf(buf, sizeof buf, "%lld", (long long)run->timestamp);
  rd_kafka_header_add(h, "fhirx-original-timestamp", -1, buf, -1);
  rd_kafka_header_add(h, "fhirx-first-failure", -1, run->first_failure_at, -1);
  rd_kafka_header_add(h, "fhirx-last-failure", -1, run->last_failure_at, -1);
  if (run->replayed_from[0])
    rd_kafka_header_add(h, "fhirx-replayed-from", -1, run->replayed_from, -1);
  if (omitted) rd_kafka_header_add(h, "fhirx-value-omitted", -1, omitted, -1);
  emit(run, p->app.cfg->topics.dlq, job_id, value, len, h);
  atomic_fetch_add(&p->stats.dead_letters, 1);
}

static json_t *types_array(fx_types types) {
  json_t *a = json_array();
  for (int i = fx_types_next(types, 0); a && i >= 0; i = fx_types_next(types, i + 1))
    json_array_append_new(a, json_string(fx_type_names[i]));
  return a;
}

static void publish_status(fx_run *run) {
  fx_pool *p = run->wt->pool;
  char jb[160], now[32];
  fx_iso_now(now);
  const char *job_id = run_job_id(run, jb, sizeof jb);
  size_t tasks = run->job ? fx_job_task_count(run->job) : 0;
  run->state = run->failures == 0 ? 0 : (run->resources > 0 ? 1 : 2);
  static const char *const states[] = {"completed", "partial", "failed"};
  json_t *counts = json_object();
  for (size_t i = 0; i < FX_NTYPES; i++)
    if (run->counts[i]) json_object_set_new(counts, fx_type_names[i], json_integer(run->counts[i]));
  json_t *o = json_pack(
      "{s:s, s:s, s:o, s:s, s:i, s:I, s:I, s:I, s:o, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:s, s:s,"
      " s:I, s:o}",
      "type", "status", "job_id", job_id, "tenant",
      run_tenant(run) ? json_string(run_tenant(run)) : json_null(), "state", states[run->state],
      "attempt", run_attempt(run), "patients", (json_int_t)(run->job ? run->job->n_tasks : 0),
      "tasks", (json_int_t)tasks, "tasks_failed", (json_int_t)run->tasks_failed, "counts", counts,
      "resources", (json_int_t)run->resources, "references_fetched", (json_int_t)run->refs_fetched,
      "references_cached", (json_int_t)run->refs_cached,
      "failures", (json_int_t)run->failures, "error_class",
      run->failures ? json_string(fx_errclass_name(run->first_class)) : json_null(), "full_types",
      types_array(run->full_types), "since",
      run->job && run->job->since ? json_string(run->job->since) : json_null(), "started_at",
      run->started_at, "finished_at", now, "duration_ms",
      (json_int_t)(fx_now_ms() - run->started_ms), "source", source_json(run));
  if (o) json_object_set_new(o, "worker", json_string(p->identity));
  size_t len;
  char *value = o ? dump(o, &len) : NULL;
  json_decref(o);
  if (value) emit(run, p->app.cfg->topics.status, job_id, value, len, headers_for(run));
  atomic_fetch_add(&p->stats.statuses, 1);
  atomic_fetch_add(run->state == 0   ? &p->stats.jobs_completed
                   : run->state == 1 ? &p->stats.jobs_partial
                                     : &p->stats.jobs_failed,
                   1);
  run_logctx lc = logctx(run);
  fx_log(FX_LOG_INFO, "job finished", "job_id", job_id, "tenant", run_tenant(run), "partition",
         lc.partition, "offset", lc.offset, "state", states[run->state], NULL);
}

/* Every output but the status is acknowledged: the status record goes last,
 * so whoever reads it can rely on every result, failure and dead letter of
 * the job being in Kafka. A job with an undelivered output gets no status:
 * it is not committed and runs again. */
void fx_run_acked(void *arg) {
  fx_run *run = arg;
  if (!run->abandoned && !atomic_load(&run->delivery_failed) && !run->bulk) publish_status(run);
  release(run);
}

/* Every task is done: publish the dead letter, then wait for the acks. */
static void tasks_finished(fx_run *run) {
  if (run->abandoned) {
    release(run);
    return;
  }
  if (run->failures && needs_dead_letter(run)) publish_dead_letter(run);
  atomic_store(&run->awaiting_acks, 1);
  /* Nothing in flight but the guard: no report will come to trigger it. */
  if (atomic_load(&run->outputs) == 1 && atomic_exchange(&run->awaiting_acks, 0) == 1)
    fx_run_acked(run);
}

static int cursor_exhausted(const fx_run *run) {
  return !run->job || run->cursor_task >= run->job->n_tasks;
}

static void task_done(fx_run *run) {
  if (--run->tasks_left == 0 && cursor_exhausted(run)) tasks_finished(run);
}

/* ---- fetching ------------------------------------------------------------- */

static void on_fetch_closed(uv_handle_t *h) {
  fx_fetch *f = h->data;
  free(f->url);
  free(f->ref_key);
  free(f);
}

static void fetch_free(fx_fetch *f) {
  /* A reference fetch that was to fill the cache and did not: wake whoever
   * waits for it, so they fetch it themselves. */
  if (f->cache_owner) {
    fx_refcache_fail(f->run->wt->pool->refs, f->run->job->tenant, f->ref_key);
    f->cache_owner = 0;
  }
  uv_close((uv_handle_t *)&f->timer, on_fetch_closed);
}

static void fetch_finish(fx_fetch *f) {
  fx_run *run = f->run;
  fetch_free(f);
  task_done(run);
}

static void enqueue(fx_wthread *wt, fx_fetch *f) {
  f->next = NULL;
  if (wt->q_tail) wt->q_tail->next = f;
  else wt->q_head = f;
  wt->q_tail = f;
}

/* Replaces every {patient} in a profile's search template. */
static void expand(const char *tmpl, const char *patient, char *out, size_t size) {
  size_t used = 0;
  out[0] = '\0';
  for (const char *p = tmpl; *p && used + 1 < size;) {
    if (strncmp(p, "{patient}", 9) == 0) {
      used += (size_t)snprintf(out + used, size - used, "%s", patient);
      p += 9;
    } else {
      out[used++] = *p++;
      out[used] = '\0';
    }
  }
}

static char *first_url(const fx_run *run, size_t task, int type, fx_types *full) {
  const fx_tenant_conf *t = run_tenant_conf(run);
  const fx_type_rule *rule = &run_profile(run)->types[type];
  const char *patient = run->job->tasks[task].patient;
  char query[1024] = "", count[32] = "";
  if (rule->mode == FX_FETCH_READ) {
    if (run->job->since) fx_types_add(full, type);
    size_t n = strlen(t->fhir_base) + strlen(fx_type_names[type]) + strlen(patient) + 3;
    char *url = malloc(n);
    if (url) snprintf(url, n, "%s/%s/%s", t->fhir_base, fx_type_names[type], patient);
    return url;
  }
  expand(rule->search, patient, query, sizeof query);
  if (rule->count) snprintf(count, sizeof count, "&_count=%d", rule->count);
  char *since = NULL; /* the escaped instant */
  if (run->job->since && rule->incremental) {
    /* A date-only since goes out as its first instant (UTC), as bulk's _since
     * does: Cerner refuses _lastUpdated without a time for MedicationRequest
     * and ServiceRequest (medication-request.md, service-request.md). */
    size_t size = strlen(run->job->since) + 16;
    char *inst = malloc(size);
    if (!inst || fx_job_since_instant(run->job->since, inst, size) < 0 ||
        !(since = curl_easy_escape(NULL, inst, 0))) {
      free(inst);
      return NULL;
    }
    free(inst);
  } else if (run->job->since) {
    fx_types_add(full, type); /* Cerner cannot narrow it: fetched in full, and said so */
  }
  size_t n = strlen(t->fhir_base) + strlen(fx_type_names[type]) + strlen(query) +
             strlen(count) + (since ? strlen(since) + 16 : 0) + 4;
  char *url = malloc(n);
  if (url)
    snprintf(url, n, "%s/%s?%s%s%s%s", t->fhir_base, fx_type_names[type], query, count,
             since ? "&_lastUpdated=ge" : "", since ? since : "");
  curl_free(since);
  return url;
}

/* The next (patient, type) of the oldest run with work left, as a fetch.
 * Runs of a tenant the governor blocks (breaker open, every slot taken) are
 * passed over, so one slow or failing tenant does not starve the others;
 * *blocked_ms says when the first of them may go again. */
static fx_fetch *next_task(fx_wthread *wt, long *blocked_ms) {
  uint64_t now = fx_now_ms();
  for (fx_run *run = wt->runs; run; run = run->next) {
    if (run->abandoned || cursor_exhausted(run)) continue;
    long blocked = fx_governor_blocked(wt->pool->gov, run->job->tenant, now);
    /* A wait that outlasts the job's deadline is not waited for: the fetch
     * is made so that admitted() ends it with the reason. */
    if (blocked > 0 && now + (uint64_t)blocked <= run->deadline_ms) {
      if (*blocked_ms <= 0 || blocked < *blocked_ms) *blocked_ms = blocked;
      continue;
    }
    const fx_job_task *task = &run->job->tasks[run->cursor_task];
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
    fx_fetch *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->run = run;
    f->task = (size_t)(task - run->job->tasks);
    f->type = type;
    f->url = first_url(run, f->task, type, &run->full_types);
    uv_timer_init(&wt->uv, &f->timer);
    f->timer.data = f;
    if (!f->url) {
      failure fl = {.cls = FX_EC_INVALID_JOB, .message = "out of memory building a URL"};
      record_failure(run, f, &fl);
      run->tasks_failed++;
      fetch_finish(f);
      continue;
    }
    return f;
  }
  return NULL;
}

static void on_fetched(fx_http_response *res, const fx_auth_error *ae, void *arg);

static void send_fetch(fx_wthread *wt, fx_fetch *f) {
  fx_run *run = f->run;
  const fx_tenant_conf *t = run_tenant_conf(run);
  fx_fhir_request req = {.tenant = t->id, .scope = fx_tenant_token_scope(t, 0), .url = f->url,
                         .accept = run_profile(run)->types[f->type].accept};
  fx_err err = {0};
  wt->inflight++;
  f->attempts++;
  atomic_fetch_add(&wt->pool->stats.http_requests, 1);
  atomic_fetch_add(&wt->pool->stats.requests_in_flight, 1);
  if (fx_fhir_get(&wt->lp, wt->pool->app.tokens, &req, on_fetched, f, &err) != 0) {
    wt->inflight--;
    atomic_fetch_sub(&wt->pool->stats.requests_in_flight, 1);
    if (f->governed) {
      fx_governor_done(wt->pool->gov, t->id, fx_type_names[f->type], FX_GOV_CANCELED, -1,
                       fx_now_ms());
      f->governed = 0;
    }
    failure fl = {.cls = err.code == FX_EPERM ? FX_EC_FOREIGN_REFERENCE : FX_EC_INVALID_JOB,
                  .url = f->url, .attempts = f->attempts, .message = err.msg};
    record_failure(run, f, &fl);
    run->tasks_failed++;
    fetch_finish(f);
  }
}

static void park(fx_wthread *wt, fx_fetch *f, uint64_t ms);

/* Asks the tenant's governor whether f may be sent now. If not, f waits (or,
 * when the wait would outlast its job's deadline, fails with the reason). */
static int admitted(fx_wthread *wt, fx_fetch *f) {
  fx_run *run = f->run;
  const char *why = NULL;
  uint64_t now = fx_now_ms();
  long wait = fx_governor_acquire(wt->pool->gov, run->job->tenant, fx_type_names[f->type], now, &why);
  if (wait <= 0) {
    f->governed = 1;
    return 1;
  }
  atomic_fetch_add(&wt->pool->stats.governor_waits, 1);
  if (now + (uint64_t)wait <= run->deadline_ms) {
    park(wt, f, (uint64_t)wait);
    return 0;
  }
  char msg[300];
  snprintf(msg, sizeof msg,
           "the tenant asked to wait %ld s (%s), past this job's deadline (worker.job_deadline_s); "
           "replay the dead letter once the tenant is healthy", wait / 1000, why);
  int throttled = strcmp(why, "retry-after") == 0 || strcmp(why, "rate") == 0;
  failure fl = {.cls = throttled ? FX_EC_THROTTLED : FX_EC_TRANSIENT, .url = f->url,
                .attempts = f->attempts, .message = msg};
  record_failure(run, f, &fl);
  if (f->depth == 0) run->tasks_failed++;
  fetch_finish(f);
  return 0;
}

static void on_pump_timer(uv_timer_t *t) { fx_wthread_pump(t->data); }

void fx_wthread_pump(fx_wthread *wt) {
  size_t max = (size_t)wt->pool->app.cfg->worker.max_requests_in_flight;
  long blocked_ms = 0;
  while (wt->inflight < max && !wt->closing) {
    fx_fetch *f = wt->q_head;
    if (f) {
      wt->q_head = f->next;
      if (!wt->q_head) wt->q_tail = NULL;
    } else if (!(f = next_task(wt, &blocked_ms))) {
      break;
    }
    if (f->run->abandoned || !wt->lp.http) { /* no HTTP client after the drain deadline */
      fetch_finish(f);
      continue;
    }
    if (admitted(wt, f)) send_fetch(wt, f);
  }
  /* Work was passed over for a blocked tenant: look again when it may go. */
  if (blocked_ms > 0 && !wt->closing && !uv_is_active((uv_handle_t *)&wt->pump_timer))
    uv_timer_start(&wt->pump_timer, on_pump_timer, (uint64_t)blocked_ms, 0);
}

/* ---- retries ---------------------------------------------------------------- */

static void unlink_waiting(fx_wthread *wt, fx_fetch *f) {
  for (fx_fetch **pp = &wt->waiting; *pp; pp = &(*pp)->next)
    if (*pp == f) {
      *pp = f->next;
      return;
    }
}

static void on_retry_due(uv_timer_t *t) {
  fx_fetch *f = t->data;
  fx_wthread *wt = f->run->wt;
  unlink_waiting(wt, f);
  /* Retries go first: they are the oldest work. */
  f->next = wt->q_head;
  wt->q_head = f;
  if (!wt->q_tail) wt->q_tail = f;
  fx_wthread_pump(wt);
}


/* Exponential backoff with full jitter, never earlier than Retry-After. */
static uint64_t retry_delay(int attempts, long after_ms) {
  double cap = RETRY_BASE_MS * pow(2.0, attempts - 1);
  if (cap > RETRY_CAP_MS) cap = RETRY_CAP_MS;
  uint64_t d = (uint64_t)(cap * ((double)rand() / RAND_MAX));
  if (after_ms >= 0 && (uint64_t)after_ms > d) d = (uint64_t)after_ms;
  return d;
}

static void park(fx_wthread *wt, fx_fetch *f, uint64_t ms) {
  f->next = wt->waiting;
  wt->waiting = f;
  uv_timer_start(&f->timer, on_retry_due, ms, 0);
}

/* Retries a transient failure later, unless attempts are used up, the
 * worker is draining, or the wait would end past the job's deadline. */
static int schedule_retry(fx_wthread *wt, fx_fetch *f, long after_ms) {
  if (f->attempts > wt->pool->app.cfg->worker.retries || wt->stopping) return 0;
  uint64_t delay = retry_delay(f->attempts, after_ms);
  if (fx_now_ms() + delay > f->run->deadline_ms) return 0;
  atomic_fetch_add(&wt->pool->stats.http_retries, 1);
  park(wt, f, delay);
  return 1;
}

/* ---- answers ---------------------------------------------------------------- */

static void follow_references(const fx_fetch *from, json_t *res);

static void publish_resource(fx_fetch *f, json_t *res, const char *via) {
  fx_run *run = f->run;
  fx_pool *p = run->wt->pool;
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  char why[200];
  if (fx_resource_key_problem(type, id, why, sizeof why)) {
    /* Nothing safe to key it by: a failure that says why, never the id
     * (resources.h), and never a silent drop. */
    char msg[320];
    int known = type && fx_resource_index(type) >= 0;
    snprintf(msg, sizeof msg, "%s resource in the response %s; not published",
             known ? type : "a", why);
    fx_fetch g = *f;
    if (known) g.type = fx_resource_index(type);
    failure fl = {.cls = FX_EC_INVALID_RESPONSE, .url = f->url, .attempts = f->attempts,
                  .message = msg, .no_replay = 1};
    record_failure(run, &g, &fl);
    return;
  }
  char *key = fx_result_key(run->job->tenant, type, id);
  if (!key) return; /* out of memory: the job's counts show it missing */
  int fresh = fx_strset_add(run->seen, key + strlen(run->job->tenant) + 1);
  size_t len;
  char *value = fresh == 1 ? dump(res, &len) : NULL;
  if (!value) {
    free(key);
    return;
  }
  if (len > p->max_message) {
    free(key);
    free(value);
    char msg[256];
    snprintf(msg, sizeof msg, "%s/%s is %zu bytes, more than the %zu bytes a message may have",
             type, id, len, p->max_message);
    failure fl = {.cls = FX_EC_TOO_LARGE, .url = f->url, .attempts = f->attempts, .message = msg};
    record_failure(run, f, &fl);
    return;
  }
  char now[32], shown[1024];
  fx_iso_now(now);
  fx_url_redact(f->url, shown, sizeof shown);
  rd_kafka_headers_t *h = headers_for(run);
  /* Referenced entities are shared by many patients: no patient header. */
  if (f->depth == 0) rd_kafka_header_add(h, "fhirx-patient", -1, run->job->tasks[f->task].patient, -1);
  rd_kafka_header_add(h, "fhirx-source-url", -1, shown, -1);
  rd_kafka_header_add(h, "fhirx-fetched-at", -1, now, -1);
  rd_kafka_header_add(h, "fhirx-via", -1, via, -1);
  emit(run, p->app.cfg->topics.results, key, value, len, h);
  free(key);
  int idx = fx_resource_index(type);
  if (idx >= 0) run->counts[idx]++;
  run->resources++;
  atomic_fetch_add(&p->stats.results, 1);
  follow_references(f, res);
}

/* ---- references ------------------------------------------------------------- */

typedef struct ref_wait {
  fx_run *run;
  size_t task;
  int type, depth, origin_type;
  char *url; /* owned: the exact URL to fetch (attachments), NULL = base + key */
  char key[FX_REF_KEY_SIZE];
} ref_wait;

static fx_fetch *new_fetch(fx_run *run, size_t task, int type) {
  fx_fetch *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->run = run;
  f->task = task;
  f->type = type;
  uv_timer_init(&run->wt->uv, &f->timer);
  f->timer.data = f;
  return f;
}

static char *entity_url(const fx_run *run, const char *key) {
  const char *base = run_tenant_conf(run)->fhir_base;
  size_t n = strlen(base) + strlen(key) + 2;
  char *url = malloc(n);
  if (url) snprintf(url, n, "%s/%s", base, key);
  return url;
}

/* Fetches a reference ourselves (a cache miss, or no cache). Takes w->url. */
static void fetch_reference(ref_wait *w, int cache_owner) {
  fx_run *run = w->run;
  fx_fetch *f = new_fetch(run, w->task, w->type);
  char *url = w->url ? w->url : entity_url(run, w->key);
  w->url = NULL;
  if (!f || !url || !(f->ref_key = strdup(w->key))) {
    free(url);
    if (f) {
      if (cache_owner) fx_refcache_fail(run->wt->pool->refs, run->job->tenant, w->key);
      fetch_free(f);
    }
    task_done(run);
    return;
  }
  f->url = url;
  f->depth = w->depth;
  f->origin_type = w->origin_type;
  f->cache_owner = cache_owner && run->wt->pool->refs;
  enqueue(run->wt, f);
}

/* Publishes a referenced entity from the cache, as if it had been fetched. */
static void publish_cached(const ref_wait *w, const char *json, size_t len) {
  fx_run *run = w->run;
  json_t *doc = json_loadb(json, len, 0, NULL);
  char *url = w->url ? NULL : entity_url(run, w->key);
  if (doc && (url || w->url)) {
    fx_fetch f = {.run = run, .task = w->task, .type = w->type, .depth = w->depth,
                  .origin_type = w->origin_type, .ref_key = (char *)(uintptr_t)w->key,
                  .url = url ? url : w->url};
    publish_resource(&f, doc, "reference");
    run->refs_cached++;
    atomic_fetch_add(&run->wt->pool->stats.refs_cached, 1);
  }
  json_decref(doc);
  free(url);
}

static void on_reference_ready(const char *json, size_t len, void *arg) {
  ref_wait *w = arg;
  fx_run *run = w->run;
  if (run->abandoned) {
    task_done(run);
  } else if (json) {
    publish_cached(w, json, len);
    task_done(run);
  } else {
    fetch_reference(w, 0); /* the fetch we waited for failed: try ourselves */
  }
  free(w->url);
  free(w);
  fx_wthread_pump(run->wt);
}

/* Asks for the entity key ("Type/id") once: from the cache, or fetched (from
 * url when given: takes it). */
static void request_reference(const fx_fetch *from, int type, const char *key, char *url) {
  fx_run *run = from->run;
  fx_pool *p = run->wt->pool;
  if (++run->refs_requested > (size_t)p->app.cfg->worker.max_references_per_job) {
    free(url);
    if (run->refs_requested == (size_t)p->app.cfg->worker.max_references_per_job + 1) {
      char msg[200];
      snprintf(msg, sizeof msg, "the job references more than %lld entities "
               "(worker.max_references_per_job); the rest were not fetched",
               p->app.cfg->worker.max_references_per_job);
      fx_fetch f = *from;
      f.depth = from->depth + 1;
      f.ref_key = NULL;
      failure fl = {.cls = FX_EC_TOO_LARGE, .attempts = 1, .message = msg};
      record_failure(run, &f, &fl);
    }
    return;
  }
  ref_wait w = {.run = run, .task = from->task, .type = type, .depth = from->depth + 1,
                .origin_type = from->depth > 0 ? from->origin_type : from->type, .url = url};
  snprintf(w.key, sizeof w.key, "%s", key); /* fits: fx_ref_parse made it for FX_REF_KEY_SIZE */
  run->tasks_left++; /* one unit for this reference, done by task_done */
  if (!p->refs) {
    fetch_reference(&w, 0);
    return;
  }
  ref_wait *waiting = malloc(sizeof *waiting);
  if (!waiting) {
    fetch_reference(&w, 0);
    return;
  }
  *waiting = w;
  char *json = NULL;
  size_t len = 0;
  int rc = fx_refcache_get(p->refs, run->job->tenant, key, &run->wt->lp, on_reference_ready,
                           waiting, &json, &len);
  if (rc == FX_REF_WAIT) return; /* on_reference_ready owns waiting (and url) now */
  free(waiting);
  if (rc == FX_REF_HIT) {
    publish_cached(&w, json, len);
    free(json);
    free(w.url);
    task_done(run);
  } else {
    fetch_reference(&w, 1);
  }
}

/* "Type/id" from the end of a URL's path, when it has that shape. */
static int url_type_id(const char *url, char *out, size_t size) {
  size_t end = strcspn(url, "?#");
  const char *p = url + end;
  const char *id = NULL, *type = NULL;
  for (const char *q = p; q > url; q--)
    if (q[-1] == '/') {
      if (!id) id = q;
      else {
        type = q;
        break;
      }
    }
  if (!type || !id) return -1;
  size_t tl = (size_t)(id - 1 - type), il = (size_t)(p - id);
  char t[40];
  if (tl == 0 || tl >= sizeof t || !fx_fhir_id_ok(id, il) || tl + il + 2 > size) return -1;
  memcpy(t, type, tl);
  t[tl] = '\0';
  if (fx_resource_index(t) < 0) return -1;
  snprintf(out, size, "%s/%.*s", t, (int)il, id);
  return 0;
}

/* Adds prefix + s to the job's requested set: 1 when new, 0 when seen, -1 on
 * OOM. Built from lengths: two long URLs never collide. */
static int requested_once(fx_run *run, const char *prefix, const char *s) {
  size_t a = strlen(prefix), b = strlen(s);
  char *key = malloc(a + b + 1);
  if (!key) return -1;
  memcpy(key, prefix, a);
  memcpy(key + a, s, b + 1);
  int rc = fx_strset_add(run->requested, key);
  free(key);
  return rc;
}

/* A reference that points outside the tenant's base is never fetched with
 * its token: recorded once per job as foreign_reference. */
static void foreign_reference(const fx_fetch *from, const char *url) {
  fx_run *run = from->run;
  char shown[512], msg[700], ref[FX_REF_KEY_SIZE];
  if (requested_once(run, "foreign:", url) != 1) return;
  fx_url_redact(url, shown, sizeof shown);
  snprintf(msg, sizeof msg, "reference %s is outside the tenant's FHIR base; not fetched with "
           "the tenant's token", shown);
  fx_fetch f = *from;
  /* The failure names what was referenced (when the URL says) and where. */
  f.ref_key = url_type_id(url, ref, sizeof ref) == 0 ? ref : NULL;
  f.origin_type = from->depth > 0 ? from->origin_type : from->type;
  f.depth = from->depth + 1; /* a reference is one hop away, fetched or not */
  if (f.ref_key) {
    char type[40];
    snprintf(type, sizeof type, "%.*s", (int)strcspn(ref, "/"), ref);
    f.type = fx_resource_index(type);
  }
  failure fl = {.cls = FX_EC_FOREIGN_REFERENCE, .url = url, .attempts = 1, .message = msg};
  record_failure(run, &f, &fl);
}

/* A reference of a followed type whose id breaks the id rule (resources.h):
 * never fetched, recorded once per job. The failure names the type, not the
 * id (nor the URL, which holds it). */
static void invalid_reference(const fx_fetch *from, const char *ref, int type) {
  fx_run *run = from->run;
  if (requested_once(run, "invalid:", ref) != 1) return;
  char msg[300];
  snprintf(msg, sizeof msg,
           "a reference to a %s has an id that breaks fhirx's id rule (1..%d of A-Z a-z 0-9 . _ "
           "~ -, not '.' or '..' alone); not followed",
           fx_type_names[type], FX_FHIR_ID_MAX);
  fx_fetch f = *from;
  f.ref_key = NULL;
  f.origin_type = from->depth > 0 ? from->origin_type : from->type;
  f.depth = from->depth + 1;
  f.type = type;
  failure fl = {.cls = FX_EC_INVALID_RESPONSE, .attempts = 1, .message = msg, .no_replay = 1};
  record_failure(run, &f, &fl);
}

/* One reference value: "#x" (contained), "Type/id[/_history/n]", or an
 * absolute URL. only_type >= 0 restricts it (attachment URLs are Binary);
 * exact: an absolute URL is fetched exactly as given, never rebuilt from the
 * base and the id (Cerner's binary.md: "Modifying the link has undefined
 * consequences"). */
static void consider_reference(const fx_fetch *from, const char *ref, int only_type, int exact) {
  fx_run *run = from->run;
  const fx_profile *prof = run_profile(run);
  char key[FX_REF_KEY_SIZE];
  int idx = -1;
  switch (fx_ref_parse(ref, run_tenant_conf(run)->fhir_base, key, sizeof key, &idx)) {
  case FX_REF_FOREIGN: foreign_reference(from, ref); return;
  case FX_REF_NONE: return;
  case FX_REF_INVALID:
    if (fx_types_has(prof->follow, idx) && (only_type < 0 || idx == only_type))
      invalid_reference(from, ref, idx);
    return;
  case FX_REF_LOCAL: break;
  }
  if (!fx_types_has(prof->follow, idx) || (only_type >= 0 && idx != only_type)) return;
  if (fx_strset_has(run->seen, key) || fx_strset_add(run->requested, key) != 1) return;
  char *url = NULL;
  if (exact && strstr(ref, "://") && !(url = strdup(ref))) return;
  request_reference(from, idx, key, url);
}

static void walk_references(const fx_fetch *from, json_t *v) {
  const char *k;
  json_t *child;
  size_t i;
  if (json_is_object(v)) {
    json_object_foreach(v, k, child) {
      if (strcmp(k, "reference") == 0 && json_is_string(child))
        consider_reference(from, json_string_value(child), -1, 0);
      else
        walk_references(from, child);
    }
  } else if (json_is_array(v)) {
    json_array_foreach(v, i, child) walk_references(from, child);
  }
}

static void consider_attachment(void *from, const char *url) {
  consider_reference(from, url, fx_resource_index("Binary"), 1);
}

/* Every reference in res, plus the attachment URLs the profile wants as
 * Binary (fx_profile_attachments), to the profile's depth; each referenced
 * entity is asked for once per job. */
static void follow_references(const fx_fetch *from, json_t *res) {
  fx_run *run = from->run;
  const fx_profile *prof = run_profile(run);
  if (!run->job->follow_references || from->depth >= prof->depth || fx_types_empty(prof->follow)) return;
  walk_references(from, res);
  fx_profile_attachments(prof, res, consider_attachment, (void *)(uintptr_t)from);
}

/* A search page: publish its entries, then follow Bundle.link[next]. Returns
 * 1 when the fetch continues with the next page. */
static int handle_bundle(fx_fetch *f, json_t *bundle) {
  fx_run *run = f->run;
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(bundle, "entry"), i, e) {
    json_t *res = json_object_get(e, "resource");
    const char *mode = json_string_value(json_object_get(json_object_get(e, "search"), "mode"));
    const char *rt = json_string_value(json_object_get(res, "resourceType"));
    /* Cerner adds OperationOutcome warnings with search.mode=outcome: not data. */
    if ((mode && strcmp(mode, "outcome") == 0) || (rt && strcmp(rt, "OperationOutcome") == 0))
      continue;
    publish_resource(f, res, "search");
  }
  const char *next = NULL;
  json_array_foreach(json_object_get(bundle, "link"), i, e) {
    const char *rel = json_string_value(json_object_get(e, "relation"));
    if (rel && strcmp(rel, "next") == 0) next = json_string_value(json_object_get(e, "url"));
  }
  if (!next) return 0;
  const fx_tenant_conf *t = run_tenant_conf(run);
  fx_token_scope scope = fx_tenant_token_scope(t, 0);
  if (!fx_url_may_carry_token(next, &scope)) {
    char shown[512], msg[768];
    fx_url_redact(next, shown, sizeof shown);
    snprintf(msg, sizeof msg, "the next page link %s is outside the tenant's FHIR base (and its "
             "token_url_prefixes); not followed with the tenant's token", shown);
    failure fl = {.cls = FX_EC_FOREIGN_REFERENCE, .url = f->url, .attempts = f->attempts,
                  .message = msg};
    record_failure(run, f, &fl);
    if (f->depth == 0) run->tasks_failed++; /* the task is in the dead letter: count it */
    return 0;
  }
  if (f->page + 1 >= run->wt->pool->app.cfg->worker.max_pages) {
    char msg[160];
    snprintf(msg, sizeof msg, "the search has more than %lld pages (worker.max_pages)",
             run->wt->pool->app.cfg->worker.max_pages);
    failure fl = {.cls = FX_EC_TOO_LARGE, .url = f->url, .attempts = f->attempts, .message = msg};
    record_failure(run, f, &fl);
    if (f->depth == 0) run->tasks_failed++;
    return 0;
  }
  char *url = strdup(next); /* followed exactly as given: -pageContext is opaque */
  if (!url) return 0;
  free(f->url);
  f->url = url;
  f->page++;
  f->attempts = 0;
  enqueue(run->wt, f);
  return 1;
}

/* fhirx_http_requests_total and the latency histogram. */
static void record_request(fx_tenant_metrics *tm, const fx_http_response *res) {
  int cls = res->result ? 4 : (res->status >= 200 && res->status < 600 ? (int)res->status / 100 - 2 : 4);
  if (cls < 0 || cls > 4) cls = 4;
  atomic_fetch_add(&tm->http[cls], 1);
  int k = 0;
  while (k < FX_LAT_BUCKETS && res->seconds > fx_lat_bounds[k]) k++;
  atomic_fetch_add(&tm->lat[k], 1);
  atomic_fetch_add(&tm->lat_sum_us, (unsigned long long)(res->seconds * 1e6));
  atomic_fetch_add(&tm->lat_count, 1);
}

/* How the answer counts for the tenant's governor. */
static fx_gov_outcome outcome_of(const fx_http_response *res, const fx_auth_error *ae) {
  if (ae || (res->result == FX_ECANCELED)) return FX_GOV_CANCELED;
  if (res->result) return res->result == FX_ETOOLARGE ? FX_GOV_OK : FX_GOV_TRANSIENT;
  if (res->status == 429) return FX_GOV_THROTTLED;
  if (res->status == 408 || res->status >= 500) return FX_GOV_TRANSIENT;
  return FX_GOV_OK;
}

static void on_fetched(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  fx_fetch *f = arg;
  fx_run *run = f->run;
  fx_wthread *wt = run->wt;
  wt->inflight--;
  atomic_fetch_sub(&wt->pool->stats.requests_in_flight, 1);
  if (run->tm && !ae && res->result != FX_ECANCELED) record_request(run->tm, res);
  long after = ae ? -1 : fx_http_retry_after_ms(res);
  if (f->governed) {
    fx_governor_done(wt->pool->gov, run->job->tenant, fx_type_names[f->type], outcome_of(res, ae),
                     after, fx_now_ms());
    f->governed = 0;
  }
  if (run->abandoned || wt->closing) {
    fetch_finish(f);
    fx_wthread_pump(wt);
    return;
  }
  failure fl = {.url = f->url, .attempts = f->attempts};
  char outcome[512] = "", msg[768] = "";
  int transient = 0;
  if (ae) {
    fl.cls = strcmp(ae->oauth_error, "invalid_scope") == 0 ? FX_EC_SCOPE : FX_EC_AUTH;
    transient = ae->err.code == FX_ETRANSIENT || ae->err.code == FX_ECANCELED;
    if (ae->err.code == FX_EPERM) fl.cls = FX_EC_FOREIGN_REFERENCE;
    after = ae->retry_after_ms > 0 ? ae->retry_after_ms : -1; /* the token's backoff */
    snprintf(msg, sizeof msg, "%s", ae->err.msg);
  } else if (res->result) {
    fl.cls = res->result == FX_ETOOLARGE ? FX_EC_TOO_LARGE : FX_EC_TRANSIENT;
    transient = fl.cls == FX_EC_TRANSIENT;
    snprintf(msg, sizeof msg, "%s", res->error);
  } else if (res->status != 200) {
    fl.cls = fx_errclass_of_status(res->status);
    fl.status = res->status;
    transient = fx_errclass_transient(fl.cls);
    fx_fhir_outcome_summary(res->body, outcome, sizeof outcome);
    char redirect[400];
    fx_url_redirect_note(res->status, fx_http_header(res, "Location"), redirect, sizeof redirect);
    snprintf(msg, sizeof msg, "HTTP %ld%s%s%s%s", res->status, redirect[0] ? ": " : "", redirect,
             outcome[0] ? ": " : "", outcome);
    fl.outcome = outcome;
  } else if (!fx_json_depth_ok(res->body, res->body_len, (int)wt->pool->app.cfg->http.max_json_depth)) {
    fl.cls = FX_EC_INVALID_RESPONSE;
    fl.status = res->status;
    snprintf(msg, sizeof msg, "the response nests JSON deeper than http.max_json_depth (%lld); "
             "not parsed", wt->pool->app.cfg->http.max_json_depth);
  } else {
    json_error_t jerr;
    json_t *doc = json_loadb(res->body, res->body_len, 0, &jerr);
    const char *rt = json_string_value(json_object_get(doc, "resourceType"));
    int is_read = f->depth > 0 || run_profile(run)->types[f->type].mode == FX_FETCH_READ;
    int continues = 0;
    if (rt && is_read && strcmp(rt, fx_type_names[f->type]) == 0) {
      if (f->depth > 0) {
        if (f->cache_owner) { /* share it before anything else can go wrong */
          size_t len;
          char *text = dump(doc, &len);
          if (text) fx_refcache_put(wt->pool->refs, run->job->tenant, f->ref_key, text, len);
          else fx_refcache_fail(wt->pool->refs, run->job->tenant, f->ref_key);
          free(text);
          f->cache_owner = 0;
        }
        run->refs_fetched++;
        atomic_fetch_add(&wt->pool->stats.refs_fetched, 1);
      }
      publish_resource(f, doc, f->depth > 0 ? "reference" : "read");
    } else if (rt && !is_read && strcmp(rt, "Bundle") == 0) {
      continues = handle_bundle(f, doc);
    } else {
      fl.cls = FX_EC_INVALID_RESPONSE;
      snprintf(msg, sizeof msg, "expected a %s but got %s", is_read ? fx_type_names[f->type] : "Bundle",
               doc ? (rt ? rt : "JSON without resourceType") : "a body that is not JSON");
    }
    json_decref(doc);
    if (!fl.cls) {
      if (!continues) fetch_finish(f);
      fx_wthread_pump(wt);
      return;
    }
  }
  if (transient && schedule_retry(wt, f, after)) {
    fx_wthread_pump(wt);
    return;
  }
  if (transient && wt->stopping) {
    /* Draining and the EHR is failing: leave the whole job to the next
     * owner rather than dead-letter what a retry would fetch. */
    fx_run_abandon(run);
    fetch_finish(f);
    fx_wthread_pump(wt);
    return;
  }
  fl.message = msg;
  record_failure(run, f, &fl);
  if (f->depth == 0) run->tasks_failed++;
  fetch_finish(f);
  fx_wthread_pump(wt);
}

/* ---- start, abandon, complete ------------------------------------------------ */

static void run_free(fx_run *run) {
  fx_job_free(run->job);
  fx_tenant_set_release(run->ts);
  fx_strset_free(run->seen);
  fx_strset_free(run->requested);
  free(run->failed_types);
  free(run->raw);
  free(run->key);
  free(run);
}

/* A bulk job runs on the bulk thread of whichever worker owns its key on the
 * bulk topic (bulk.h): this thread only publishes the pending record. Once
 * Kafka has it, the job's offset moves on like any finished job's; its
 * status record comes from the bulk thread when the export ends. */
static void hand_over_bulk(fx_run *run) {
  fx_pool *p = run->wt->pool;
  run->bulk = 1;
  json_t *rec = fx_bulk_pending_record(run->job, run->part->topic, run->part->partition,
                                       run->offset, run->timestamp, run->replayed_from);
  size_t len;
  char *value = rec ? dump(rec, &len) : NULL;
  json_decref(rec);
  if (!value) {
    run->abandoned = 1; /* out of memory: consumed again later */
  } else {
    emit(run, p->app.cfg->topics.bulk, run->job->job_id, value, len, headers_for(run));
    run_logctx lc = logctx(run);
    fx_log(FX_LOG_INFO, "bulk job handed to the bulk owner", "job_id", run->job->job_id,
           "tenant", run->job->tenant, "partition", lc.partition, "offset", lc.offset, NULL);
  }
  tasks_finished(run);
}

void fx_run_start(fx_wthread *wt, fx_partition *part, const rd_kafka_message_t *m) {
  fx_pool *p = wt->pool;
  fx_run *run = calloc(1, sizeof *run);
  if (!run || !(run->seen = fx_strset_new()) || !(run->requested = fx_strset_new())) {
    if (run) fx_strset_free(run->seen);
    free(run);
    fx_log(FX_LOG_ERROR, "out of memory starting a job; it will be consumed again", NULL);
    return; /* its slot stays unfinished: the offset never passes it */
  }
  run->wt = wt;
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
      rd_kafka_header_get_last(mh, "fhirx-replayed-from", &rv, &rlen) == RD_KAFKA_RESP_ERR_NO_ERROR &&
      rv && rlen < sizeof run->replayed_from) {
    memcpy(run->replayed_from, rv, rlen);
    run->replayed_from[rlen] = '\0';
    char topic[256];
    int32_t part_no;
    int64_t off;
    if (fx_rp_parse_position(run->replayed_from, rlen, topic, sizeof topic, &part_no, &off) != 0)
      run->replayed_from[0] = '\0';
  }
  atomic_init(&run->outputs, 1); /* the guard, dropped when every task is done */
  atomic_init(&run->delivery_failed, 0);
  atomic_init(&run->awaiting_acks, 0);
  fx_iso_now(run->started_at);
  run->started_ms = fx_now_ms();
  run->deadline_ms = run->started_ms + (uint64_t)p->app.cfg->worker.job_deadline_s * 1000u;
  run->prev = NULL;
  /* Oldest first: next_task() serves runs in consumption order. */
  fx_run **tail = &wt->runs;
  while (*tail) {
    run->prev = *tail;
    tail = &(*tail)->next;
  }
  *tail = run;
  wt->n_runs++;
  atomic_fetch_add(&p->stats.jobs_consumed, 1);
  atomic_fetch_add(&p->stats.jobs_in_flight, 1);

  run->ts = fx_tenant_slot_get(&p->tenants);
  if (fx_job_parse(m->payload ? m->payload : "", m->len, &run->ts->profiles, &p->limits, &run->job,
                   &run->jerr) != 0) {
    if (m->len <= p->max_message && (run->raw = malloc(m->len ? m->len : 1))) {
      memcpy(run->raw, m->payload, m->len);
      run->raw_len = m->len;
    }
    failure fl = {.cls = run->jerr.cls, .message = run->jerr.msg};
    record_failure(run, NULL, &fl);
    tasks_finished(run);
    return;
  }
  run->tm = fx_pool_tenant_metrics(p, run->job->tenant);
  if (run->job->kind == FX_JOB_BULK) {
    hand_over_bulk(run);
    return;
  }
  run->tasks_left = fx_job_task_count(run->job);
  run->failed_types = calloc(run->job->n_tasks, sizeof *run->failed_types);
  if (!run->failed_types) {
    run->abandoned = 1; /* cannot track it: let it be consumed again */
    run->cursor_task = run->job->n_tasks;
    run->tasks_left = 0;
    tasks_finished(run);
    return;
  }
  if (fx_log_enabled(FX_LOG_DEBUG)) {
    run_logctx lc = logctx(run);
    fx_log(FX_LOG_DEBUG, "job started", "job_id", run->job->job_id, "tenant", run->job->tenant,
           "partition", lc.partition, "offset", lc.offset, NULL);
  }
  fx_wthread_pump(wt);
}

void fx_run_abandon(fx_run *run) {
  if (run->abandoned) return;
  fx_wthread *wt = run->wt;
  run->abandoned = 1;
  /* Tasks not started yet will never start: count them done now. */
  size_t unstarted = 0;
  for (size_t i = run->cursor_task; run->job && i < run->job->n_tasks; i++) {
    fx_types types = run->job->tasks[i].types;
    for (int k = 0; i == run->cursor_task && k < run->cursor_type; k++) fx_types_del(&types, k);
    unstarted += (size_t)fx_types_count(types);
  }
  if (run->job) run->cursor_task = run->job->n_tasks;
  /* Fetches waiting for a retry are done too; queued ones finish when popped. */
  for (fx_fetch **pp = &wt->waiting; *pp;) {
    fx_fetch *f = *pp;
    if (f->run == run) {
      *pp = f->next;
      uv_timer_stop(&f->timer);
      fetch_free(f);
      unstarted++;
    } else {
      pp = &f->next;
    }
  }
  if (unstarted && run->tasks_left >= unstarted) {
    run->tasks_left -= unstarted;
    if (run->tasks_left == 0) tasks_finished(run);
  }
}

void fx_run_complete(void *arg) {
  fx_run *run = arg;
  fx_wthread *wt = run->wt;
  fx_partition *part = run->part;
  if (!run->abandoned && !atomic_load(&run->delivery_failed) && !part->revoked) {
    int64_t off = fx_partition_done(part, run->offset);
    if (off >= 0) {
      rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
      rd_kafka_topic_partition_list_add(l, part->topic, part->partition)->offset = off;
      rd_kafka_resp_err_t err = rd_kafka_offsets_store(wt->consumer, l);
      if (err)
        fx_log(FX_LOG_WARN, "cannot store an offset", "topic", part->topic, "error",
               rd_kafka_err2str(err), NULL);
      rd_kafka_topic_partition_list_destroy(l);
    }
  }
  if (run->prev) run->prev->next = run->next;
  else wt->runs = run->next;
  if (run->next) run->next->prev = run->prev;
  wt->n_runs--;
  atomic_fetch_sub(&wt->pool->stats.jobs_in_flight, 1);
  fx_partition_unref(part);
  run_free(run);
  fx_wthread_run_done(wt);
}
