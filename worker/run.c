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
#include "common/url.h"
#include "worker/pool.h"
#include "worker/strset.h"

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

void fx_iso_now(char out[32]) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 32 - n, ".%03dZ", (int)(ts.tv_nsec / 1000000L));
}

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

static int run_attempt(const fx_run *r) { return r->job ? r->job->attempt : 1; }

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

static void release(fx_run *run) {
  if (atomic_fetch_sub(&run->outputs, 1) == 1) fx_run_complete(run);
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
  if (f) run->failed_types[f->task] |= FX_TYPE_BIT(f->type);
  const char *job_id = run_job_id(run, jb, sizeof jb);
  json_t *o = json_pack(
      "{s:s, s:s, s:o, s:o, s:s, s:o, s:s, s:b, s:o, s:o, s:o, s:i, s:s, s:s, s:i, s:o}", "type",
      "failure", "job_id", job_id, "tenant",
      run_tenant(run) ? json_string(run_tenant(run)) : json_null(), "patient",
      f ? json_string(run->job->tasks[f->task].patient) : json_null(), "resource_type",
      f ? fx_cerner_types[f->type] : "", "reference", json_null(), "error_class",
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
  fx_log(FX_LOG_WARN, "task failed", "job_id", job_id, "error_class", fx_errclass_name(fl->cls),
         "resource_type", f ? fx_cerner_types[f->type] : NULL, "url", shown[0] ? shown : NULL,
         "reason", fl->message, NULL);
}

/* ---- the end of a run ----------------------------------------------------- */

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
      if (run->failed_types[i]) {
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
  if (omitted) rd_kafka_header_add(h, "fhirx-value-omitted", -1, omitted, -1);
  emit(run, p->app.cfg->topics.dlq, job_id, value, len, h);
  atomic_fetch_add(&p->stats.dead_letters, 1);
}

static json_t *types_array(uint32_t types) {
  json_t *a = json_array();
  for (size_t i = 0; i < fx_cerner_types_n; i++)
    if (types & FX_TYPE_BIT(i)) json_array_append_new(a, json_string(fx_cerner_types[i]));
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
  for (size_t i = 0; i < fx_cerner_types_n; i++)
    if (run->counts[i]) json_object_set_new(counts, fx_cerner_types[i], json_integer(run->counts[i]));
  json_t *o = json_pack(
      "{s:s, s:s, s:o, s:s, s:i, s:I, s:I, s:I, s:o, s:I, s:i, s:i, s:I, s:o, s:o, s:o, s:s, s:s,"
      " s:I, s:o}",
      "type", "status", "job_id", job_id, "tenant",
      run_tenant(run) ? json_string(run_tenant(run)) : json_null(), "state", states[run->state],
      "attempt", run_attempt(run), "patients", (json_int_t)(run->job ? run->job->n_tasks : 0),
      "tasks", (json_int_t)tasks, "tasks_failed", (json_int_t)run->tasks_failed, "counts", counts,
      "resources", (json_int_t)run->resources, "references_fetched", 0, "references_cached", 0,
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
  fx_log(FX_LOG_INFO, "job finished", "job_id", job_id, "state", states[run->state], NULL);
}

/* Every output but the status is acknowledged: the status record goes last,
 * so whoever reads it can rely on every result, failure and dead letter of
 * the job being in Kafka. A job with an undelivered output gets no status:
 * it is not committed and runs again. */
void fx_run_acked(void *arg) {
  fx_run *run = arg;
  if (!run->abandoned && !atomic_load(&run->delivery_failed)) publish_status(run);
  release(run);
}

/* Every task is done: publish the dead letter, then wait for the acks. */
static void tasks_finished(fx_run *run) {
  if (run->abandoned) {
    release(run);
    return;
  }
  if (run->failures) publish_dead_letter(run);
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
  free(f);
}

static void fetch_free(fx_fetch *f) { uv_close((uv_handle_t *)&f->timer, on_fetch_closed); }

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

static char *first_url(const fx_run *run, size_t task, int type, uint32_t *full) {
  const fx_tenant_conf *t = fx_config_tenant(run->wt->pool->app.cfg, run->job->tenant);
  const fx_type_query *q = fx_type_query_of(type);
  const char *patient = run->job->tasks[task].patient;
  char *url = NULL;
  if (q->read) {
    size_t n = strlen(t->fhir_base) + strlen(fx_cerner_types[type]) + strlen(patient) + 3;
    if ((url = malloc(n))) snprintf(url, n, "%s/%s/%s", t->fhir_base, fx_cerner_types[type], patient);
    if (run->job->since) *full |= FX_TYPE_BIT(type);
    return url;
  }
  char count[32] = "", since[160] = "";
  if (q->count) snprintf(count, sizeof count, "&_count=%d", q->count);
  if (run->job->since && q->last_updated) {
    char *e = curl_easy_escape(NULL, run->job->since, 0);
    snprintf(since, sizeof since, "&_lastUpdated=ge%s", e ? e : "");
    curl_free(e);
  } else if (run->job->since) {
    *full |= FX_TYPE_BIT(type);
  }
  size_t n = strlen(t->fhir_base) + strlen(fx_cerner_types[type]) + strlen(q->param) +
             strlen(patient) + strlen(q->extra) + strlen(count) + strlen(since) + 8;
  if ((url = malloc(n)))
    snprintf(url, n, "%s/%s?%s=%s%s%s%s", t->fhir_base, fx_cerner_types[type], q->param, patient,
             q->extra, count, since);
  return url;
}

/* The next (patient, type) of the oldest run with work left, as a fetch. */
static fx_fetch *next_task(fx_wthread *wt) {
  for (fx_run *run = wt->runs; run; run = run->next) {
    if (run->abandoned || cursor_exhausted(run)) continue;
    const fx_job_task *task = &run->job->tasks[run->cursor_task];
    int type = run->cursor_type;
    while (type < FX_NTYPES && !(task->types & FX_TYPE_BIT(type))) type++;
    if (type >= FX_NTYPES) { /* cannot happen: parsed tasks have at least one type */
      run->cursor_task++;
      run->cursor_type = 0;
      continue;
    }
    run->cursor_type = type + 1;
    if (run->cursor_type >= FX_NTYPES || !(task->types >> run->cursor_type)) {
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
  const fx_tenant_conf *t = fx_config_tenant(wt->pool->app.cfg, run->job->tenant);
  fx_fhir_request req = {.tenant = t->id, .fhir_base = t->fhir_base, .url = f->url};
  fx_err err = {0};
  wt->inflight++;
  f->attempts++;
  atomic_fetch_add(&wt->pool->stats.http_requests, 1);
  if (fx_fhir_get(&wt->lp, wt->pool->app.tokens, &req, on_fetched, f, &err) != 0) {
    wt->inflight--;
    failure fl = {.cls = err.code == FX_EPERM ? FX_EC_FOREIGN_REFERENCE : FX_EC_INVALID_JOB,
                  .url = f->url, .attempts = f->attempts, .message = err.msg};
    record_failure(run, f, &fl);
    run->tasks_failed++;
    fetch_finish(f);
  }
}

void fx_wthread_pump(fx_wthread *wt) {
  size_t max = (size_t)wt->pool->app.cfg->worker.max_requests_in_flight;
  while (wt->inflight < max && !wt->closing) {
    fx_fetch *f = wt->q_head;
    if (f) {
      wt->q_head = f->next;
      if (!wt->q_head) wt->q_tail = NULL;
    } else if (!(f = next_task(wt))) {
      break;
    }
    if (f->run->abandoned || !wt->lp.http) { /* no HTTP client after the drain deadline */
      fetch_finish(f);
      continue;
    }
    send_fetch(wt, f);
  }
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

/* Retry-After: delta-seconds or an HTTP-date; -1 if absent or unreadable. */
static long retry_after_ms(const fx_http_response *res) {
  const char *v = res ? fx_http_header(res, "Retry-After") : NULL;
  if (!v) return -1;
  char *end;
  long secs = strtol(v, &end, 10);
  if (end != v && *end == '\0') return secs < 0 ? -1 : secs * 1000;
  time_t when = curl_getdate(v, NULL);
  if (when < 0) return -1;
  time_t now = time(NULL);
  return when > now ? (long)(when - now) * 1000 : 0;
}

/* Exponential backoff with full jitter, never earlier than Retry-After. */
static uint64_t retry_delay(int attempts, long after_ms) {
  double cap = RETRY_BASE_MS * pow(2.0, attempts - 1);
  if (cap > RETRY_CAP_MS) cap = RETRY_CAP_MS;
  uint64_t d = (uint64_t)(cap * ((double)rand() / RAND_MAX));
  if (after_ms >= 0 && (uint64_t)after_ms > d) d = (uint64_t)after_ms;
  return d;
}

static int schedule_retry(fx_wthread *wt, fx_fetch *f, long after_ms) {
  if (f->attempts > wt->pool->app.cfg->worker.retries || wt->stopping) return 0;
  atomic_fetch_add(&wt->pool->stats.http_retries, 1);
  f->next = wt->waiting;
  wt->waiting = f;
  uv_timer_start(&f->timer, on_retry_due, retry_delay(f->attempts, after_ms), 0);
  return 1;
}

/* ---- answers ---------------------------------------------------------------- */

static fx_errclass class_of_status(long status) {
  switch (status) {
  case 400: return FX_EC_SEARCH_RESTRICTION;
  case 401: return FX_EC_AUTH;
  case 403: return FX_EC_SCOPE;
  case 404: return FX_EC_NOT_FOUND;
  case 408:
  case 500:
  case 502:
  case 503:
  case 504: return FX_EC_TRANSIENT;
  case 429: return FX_EC_THROTTLED;
  default: return status >= 500 ? FX_EC_TRANSIENT : FX_EC_SERVER;
  }
}

static void publish_resource(fx_fetch *f, json_t *res, const char *via) {
  fx_run *run = f->run;
  fx_pool *p = run->wt->pool;
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  if (!type || !id) return; /* nothing to key it by: not a resource we can publish */
  char key[256];
  snprintf(key, sizeof key, "%s/%s/%s", run->job->tenant, type, id);
  if (fx_strset_add(run->seen, key + strlen(run->job->tenant) + 1) != 1) return;
  size_t len;
  char *value = dump(res, &len);
  if (!value) return;
  if (len > p->max_message) {
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
  rd_kafka_header_add(h, "fhirx-patient", -1, run->job->tasks[f->task].patient, -1);
  rd_kafka_header_add(h, "fhirx-source-url", -1, shown, -1);
  rd_kafka_header_add(h, "fhirx-fetched-at", -1, now, -1);
  rd_kafka_header_add(h, "fhirx-via", -1, via, -1);
  emit(run, p->app.cfg->topics.results, key, value, len, h);
  int idx = fx_resource_index(type);
  if (idx >= 0) run->counts[idx]++;
  run->resources++;
  atomic_fetch_add(&p->stats.results, 1);
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
  const fx_tenant_conf *t = fx_config_tenant(run->wt->pool->app.cfg, run->job->tenant);
  if (!fx_url_within(next, t->fhir_base)) {
    char shown[512], msg[768];
    fx_url_redact(next, shown, sizeof shown);
    snprintf(msg, sizeof msg, "the next page link %s is outside the tenant's FHIR base; not "
             "followed with the tenant's token", shown);
    failure fl = {.cls = FX_EC_FOREIGN_REFERENCE, .url = f->url, .attempts = f->attempts,
                  .message = msg};
    record_failure(run, f, &fl);
    return 0;
  }
  if (f->page + 1 >= run->wt->pool->app.cfg->worker.max_pages) {
    char msg[160];
    snprintf(msg, sizeof msg, "the search has more than %lld pages (worker.max_pages)",
             run->wt->pool->app.cfg->worker.max_pages);
    failure fl = {.cls = FX_EC_TOO_LARGE, .url = f->url, .attempts = f->attempts, .message = msg};
    record_failure(run, f, &fl);
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

static void on_fetched(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  fx_fetch *f = arg;
  fx_run *run = f->run;
  fx_wthread *wt = run->wt;
  wt->inflight--;
  if (run->abandoned || wt->closing) {
    fetch_finish(f);
    fx_wthread_pump(wt);
    return;
  }
  failure fl = {.url = f->url, .attempts = f->attempts};
  char outcome[512] = "", msg[768] = "";
  long after = -1;
  int transient = 0;
  if (ae) {
    fl.cls = strcmp(ae->oauth_error, "invalid_scope") == 0 ? FX_EC_SCOPE : FX_EC_AUTH;
    transient = ae->err.code == FX_ETRANSIENT || ae->err.code == FX_ECANCELED;
    if (ae->err.code == FX_EPERM) fl.cls = FX_EC_FOREIGN_REFERENCE;
    after = ae->retry_after_ms > 0 ? ae->retry_after_ms : -1;
    snprintf(msg, sizeof msg, "%s", ae->err.msg);
  } else if (res->result) {
    fl.cls = res->result == FX_ETOOLARGE ? FX_EC_TOO_LARGE : FX_EC_TRANSIENT;
    transient = fl.cls == FX_EC_TRANSIENT;
    snprintf(msg, sizeof msg, "%s", res->error);
  } else if (res->status != 200) {
    fl.cls = class_of_status(res->status);
    fl.status = res->status;
    transient = fx_errclass_transient(fl.cls);
    after = retry_after_ms(res);
    fx_fhir_outcome_summary(res->body, outcome, sizeof outcome);
    snprintf(msg, sizeof msg, "HTTP %ld%s%s", res->status, outcome[0] ? ": " : "", outcome);
    fl.outcome = outcome;
  } else {
    json_error_t jerr;
    json_t *doc = json_loadb(res->body, res->body_len, 0, &jerr);
    const char *rt = json_string_value(json_object_get(doc, "resourceType"));
    const fx_type_query *q = fx_type_query_of(f->type);
    int continues = 0;
    if (rt && q->read && strcmp(rt, fx_cerner_types[f->type]) == 0) {
      publish_resource(f, doc, "read");
    } else if (rt && !q->read && strcmp(rt, "Bundle") == 0) {
      continues = handle_bundle(f, doc);
    } else {
      fl.cls = FX_EC_INVALID_RESPONSE;
      snprintf(msg, sizeof msg, "expected a %s but got %s", q->read ? fx_cerner_types[f->type] : "Bundle",
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
  run->tasks_failed++;
  fetch_finish(f);
  fx_wthread_pump(wt);
}

/* ---- start, abandon, complete ------------------------------------------------ */

static void run_free(fx_run *run) {
  fx_job_free(run->job);
  fx_strset_free(run->seen);
  free(run->failed_types);
  free(run->raw);
  free(run->key);
  free(run);
}

void fx_run_start(fx_wthread *wt, fx_partition *part, const rd_kafka_message_t *m) {
  fx_pool *p = wt->pool;
  fx_run *run = calloc(1, sizeof *run);
  if (!run || !(run->seen = fx_strset_new())) {
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
  atomic_init(&run->outputs, 1); /* the guard, dropped when every task is done */
  atomic_init(&run->delivery_failed, 0);
  atomic_init(&run->awaiting_acks, 0);
  fx_iso_now(run->started_at);
  run->started_ms = fx_now_ms();
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

  if (fx_job_parse(m->payload ? m->payload : "", m->len, p->app.cfg, &p->limits, &run->job,
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
  run->tasks_left = fx_job_task_count(run->job);
  run->failed_types = calloc(run->job->n_tasks, sizeof *run->failed_types);
  if (!run->failed_types) {
    run->abandoned = 1; /* cannot track it: let it be consumed again */
    run->cursor_task = run->job->n_tasks;
    run->tasks_left = 0;
    tasks_finished(run);
    return;
  }
  if (fx_log_enabled(FX_LOG_DEBUG))
    fx_log(FX_LOG_DEBUG, "job started", "job_id", run->job->job_id, "tenant", run->job->tenant,
           NULL);
  fx_wthread_pump(wt);
}

void fx_run_abandon(fx_run *run) {
  if (run->abandoned) return;
  fx_wthread *wt = run->wt;
  run->abandoned = 1;
  /* Tasks not started yet will never start: count them done now. */
  size_t unstarted = 0;
  for (size_t i = run->cursor_task; run->job && i < run->job->n_tasks; i++) {
    uint32_t types = run->job->tasks[i].types;
    if (i == run->cursor_task) types &= ~(uint32_t)((1u << run->cursor_type) - 1u);
    unstarted += (size_t)__builtin_popcount(types);
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
  fx_partition_unref(part);
  run_free(run);
  fx_wthread_run_done(wt);
}
