/* Group bulk $export jobs: the bulk thread (see bulk.h for the design). */
#include "worker/bulk/bulk.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/fhir.h"
#include "common/log.h"
#include "common/strutil.h"
#include "worker/out/out.h"
#include "worker/pool/kthread.h"
#include "worker/pool/services.h"
#include "worker/model/resources.h"
#include "worker/model/tenants.h"
#include "worker/model/refs.h"
#include "worker/model/strset.h"
#include "worker/out/records.h"

#define POLL_BUDGET 500
#define REDIRECTS_MAX 3
#define BLOCKED_RETRY_MS 50
#define DEFER_MS 50
#define REF_PARALLEL 4 /* reference reads in flight per file */
#define PROGRESS_MS 1000

enum { BX_PENDING, BX_EXPORTING, BX_DOWNLOADING, BX_COMPLETED, BX_FAILED };
static const char *const state_names[] = {"pending", "exporting", "downloading", "completed",
                                          "failed"};

typedef struct bx_export bx_export;
typedef struct bx_file bx_file;

typedef struct bx_part {
  int32_t partition;
  int caught_up; /* read to the end once: its exports may run */
} bx_part;

struct fx_bulk {
  const fx_services *sv;
  fx_kthread *kt;   /* the thread: its loop, its consumer in <group>.bulk */
  fx_loop *lp;      /* the thread's loop (fx_kthread_loop) */
  uv_loop_t *uv;
  fx_out *out;      /* this thread's way out to Kafka */
  fx_sink loose;    /* progress records: always open, nobody waits for them */
  bx_part *parts;
  size_t n_parts, cap_parts;
  bx_export *exports; /* every export known from the assigned partitions */
  json_t *finished;   /* job_id -> [attempt, seq] of exports that ended */
  size_t live_files, live_exports; /* not yet freed (shutdown waits for them) */
  int stopping;
  uint64_t hour_ms; /* what an hour of bulk.deadline_hours lasts (deadline_hour_ms) */
};

struct bx_export {
  fx_sink sink; /* first: the failure and dead letter of an export that failed */
  bx_export *next;
  fx_bulk *b;
  int32_t partition;
  char *job_id;
  int attempt;
  long long seq;
  int state;
  json_t *rec;       /* the latest progress record, updated and republished */
  fx_job *job;       /* parsed when it starts */
  fx_tenant_set *ts; /* the tenants it started with (a reference) */
  const fx_tenant_conf *tenant;
  char *status_url;
  uint64_t deadline_ms; /* wall clock, epoch ms */
  uint64_t wait_ms;     /* the last poll wait */
  int tries;            /* consecutive transient failures of the current step */
  int started, removed, abandoned;
  int ending; /* 1: failure and dead letter in flight; 2: status in flight */
  int end_status, end_state, end_delete;
  fx_errclass end_cls;
  int refs; /* list membership + requests in flight + live files */
  uv_timer_t timer;
  /* the manifest */
  json_t *manifest;
  size_t n_out, n_err, n_files; /* output files, error files, both */
  unsigned char *done;
  int requires_token;
  size_t running; /* files being downloaded */
  size_t n_done;  /* files with done[] set */
  size_t cursor;  /* the next file index never started (one to redo lowers it) */
  int progress_dirty; /* files finished since the last progress record */
  bx_file *files; /* live files */
  json_t *counts; /* resourceType -> resources published (acknowledged files), any type */
  long long error_lines, bad_lines;
  fx_errclass first_cls; /* of the first failure record published; FX_EC_NONE before */
  fx_refs refs_asked; /* entities asked for, references reported, the cap (model/refs.h) */
  long long refs_fetched;
  char transaction_time[64];
  uint64_t started_ms;
};

/* A file's download goes through phases; the guard in outputs is released
 * when it reaches F_DONE (or is given up). */
enum { F_WAIT, F_XFER, F_DRAIN, F_REFS, F_DONE };

/* A referenced entity to read (follow_references), found in a file's lines. */
typedef struct bx_ref {
  struct bx_ref *next;
  int depth; /* 1: referenced by an exported resource */
  int tries;
  char *url; /* owned: the exact URL to read (attachments), NULL = base + key */
  char key[FX_REF_KEY_SIZE]; /* "Practitioner/4000001" */
} bx_ref;

static void ref_free(bx_ref *r) {
  if (!r) return;
  free(r->url);
  free(r);
}

struct bx_file {
  fx_sink sink;  /* first: results and failure records of this file */
  bx_file *next; /* in its export's list */
  bx_export *e;
  size_t index; /* in the manifest: outputs first, then error files */
  char *url;    /* the manifest's URL (what is recorded and shown) */
  char shown[1024]; /* url without query values, for every result's fhirx-source-url */
  char *type;
  int is_error;
  int phase;
  int redirects;
  int tries;
  int paused;   /* the transfer is paused: lines wait for room in the producer */
  int complete; /* the whole body was read and published */
  int settled;  /* file_acked ran: done, or to be downloaded again by another bx_file */
  fx_http_xfer *xfer;
  char *buf;
  size_t len, cap, off;
  int skipping; /* inside an over-long line: drop bytes up to its newline */
  long long line_no;
  json_t *counts; /* resourceType -> resources this download published */
  long long error_lines, bad_lines;
  bx_ref *refs_head, *refs_tail; /* references to read once the lines are published */
  int refs_inflight;
  long long refs_fetched;
  /* The job's per-patient types (Cerner: Coverage, RelatedPerson,
   * ServiceRequest): the ids of this file's Patient lines, and the follow-up
   * patient jobs enqueued for them once the lines are published. */
  char **pp_ids;
  size_t n_pp, cap_pp;
  json_t *pp_jobs;
  uv_timer_t timer;
};

static void export_unref(bx_export *e);
static void export_step(bx_export *e);
static void export_fail(bx_export *e, fx_errclass cls, long status, const char *msg);
static void pump_files(bx_export *e);
static void file_start(bx_file *f);
static void file_acked(void *arg);
static void maybe_leave(fx_bulk *b);

/* ---- small things -------------------------------------------------------------- */

static char *dump(const json_t *o, size_t *len) {
  char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  *len = s ? strlen(s) : 0;
  return s;
}

/* Counts are kept by the resourceType each line names, known to fhirx's
 * profiles or not (a server may export Claim, ExplanationOfBenefit,
 * ImagingStudy, ...): the status counts what was published. */
static long long count_of(json_t *counts, const char *type) {
  return json_integer_value(json_object_get(counts, type));
}

static void count_add(json_t *counts, const char *type, long long n) {
  if (n) json_object_set_new(counts, type, json_integer(count_of(counts, type) + n));
}

static long long counts_sum(json_t *counts) {
  long long n = 0;
  const char *k;
  json_t *v;
  json_object_foreach(counts, k, v) n += json_integer_value(v);
  return n;
}

/* Distinct resource types one export may count: FHIR R4 has 145, so only a
 * broken server reaches this; its lines beyond are failures, not counts. */
#define MAX_COUNTED_TYPES 256


uint64_t fx_bulk_poll_delay(long retry_after_ms, uint64_t prev_ms, uint64_t floor_ms,
                            uint64_t ceiling_ms, uint64_t now_ms, uint64_t deadline_ms) {
  if (now_ms >= deadline_ms) return 0;
  uint64_t d = retry_after_ms >= 0 ? (uint64_t)retry_after_ms : (prev_ms ? prev_ms * 2 : floor_ms);
  if (d < floor_ms) d = floor_ms;
  if (d > ceiling_ms) d = ceiling_ms;
  if (now_ms + d > deadline_ms) d = deadline_ms - now_ms;
  return d;
}

json_t *fx_bulk_ranges(const unsigned char *done, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < n;) {
    if (!done[i]) {
      i++;
      continue;
    }
    size_t j = i;
    while (j + 1 < n && done[j + 1]) j++;
    json_array_append_new(a, json_pack("[I, I]", (json_int_t)i, (json_int_t)j));
    i = j + 1;
  }
  return a;
}

void fx_bulk_ranges_parse(const json_t *ranges, unsigned char *done, size_t n) {
  size_t k;
  json_t *r;
  json_array_foreach(ranges, k, r) {
    json_t *ja = json_array_get(r, 0), *jz = json_array_get(r, 1);
    if (json_array_size(r) != 2 || !json_is_integer(ja) || !json_is_integer(jz)) continue;
    json_int_t a = json_integer_value(ja), z = json_integer_value(jz);
    if (a < 0) continue;
    for (json_int_t i = a; i <= z && (size_t)i < n; i++) done[i] = 1;
  }
}

json_t *fx_bulk_pending_record(const fx_job *job, const char *topic, int32_t partition,
                               int64_t offset, int64_t timestamp, const char *replayed_from) {
  char now[32];
  fx_iso_now(now);
  json_t *j = fx_job_to_json(job);
  if (!j) return NULL;
  json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:o, s:{s:s, s:i, s:I}, s:I, s:s}", "type",
                        "bulk_progress", "job_id", job->job_id, "tenant", job->tenant, "attempt",
                        job->attempt, "seq", 0, "state", "pending", "job", j, "source", "topic",
                        topic, "partition", (int)partition, "offset", (json_int_t)offset,
                        "timestamp", (json_int_t)timestamp, "updated_at", now);
  if (o && replayed_from && *replayed_from)
    json_object_set_new(o, "replayed_from", json_string(replayed_from));
  return o;
}

/* ---- producing ------------------------------------------------------------------- */

/* Who the export's records are about: its job and where the job was read
 * (the pending record's source). topic is "" when the record has none. */
static fx_rec_job rec_job(const bx_export *e) {
  json_t *src = json_object_get(e->rec, "source");
  const char *topic = json_string_value(json_object_get(src, "topic"));
  fx_rec_job j = {.job_id = e->job_id,
                  .tenant = json_string_value(json_object_get(e->rec, "tenant")),
                  .attempt = e->attempt,
                  .topic = topic ? topic : "",
                  .partition = (int32_t)json_integer_value(json_object_get(src, "partition")),
                  .offset = (int64_t)json_integer_value(json_object_get(src, "offset"))};
  return j;
}

/* fhirx-job-id, fhirx-tenant, fhirx-attempt: what every output carries. */
static rd_kafka_headers_t *headers_for(const bx_export *e) {
  fx_rec_job j = rec_job(e);
  return fx_rec_headers(&j);
}

/* Produces a control record (progress, status, failure, dead letter) for
 * sink (NULL: nobody waits for it); when the producer's queue is full it
 * waits in the thread's out queue, in order. Takes value and hdrs. */
static void emit(fx_bulk *b, fx_sink *sink, const char *topic, const char *key, char *value,
                 size_t len, rd_kafka_headers_t *hdrs) {
  fx_out_emit(b->out, sink ? sink : &b->loose, topic, key, value, len, hdrs);
}

/* A record that could not be built (no memory): whatever waits for sink
 * must not count on it (a file is downloaded again, an ending export
 * resumes later). */
static void unbuilt(bx_export *e, fx_sink *sink, const char *what) {
  atomic_fetch_add(&e->b->sv->metrics->records_unbuilt, 1);
  fx_log(FX_LOG_ERROR, "a record could not be built; the bulk export redoes that step",
         "record", what, "job_id", e->job_id, NULL);
  if (sink) fx_sink_fail(sink);
}

/* Drops a hold on s (failed: an output of it will not be delivered). */
static void sink_done(fx_sink *s, int failed) {
  if (failed) fx_sink_fail(s);
  fx_sink_close(s);
}

/* Publishes the export's state as a new progress record. */
static void publish_progress(bx_export *e) {
  fx_bulk *b = e->b;
  e->progress_dirty = 0;
  char now[32];
  fx_iso_now(now);
  e->seq++;
  json_object_set_new(e->rec, "seq", json_integer(e->seq));
  json_object_set_new(e->rec, "state", json_string(state_names[e->state]));
  json_object_set_new(e->rec, "updated_at", json_string(now));
  json_object_set_new(e->rec, "worker", json_string(b->sv->identity));
  if (e->status_url) json_object_set_new(e->rec, "status_url", json_string(e->status_url));
  json_object_set_new(e->rec, "deadline_ms", json_integer((json_int_t)e->deadline_ms));
  if (e->n_files) {
    json_object_set_new(e->rec, "files_total", json_integer((json_int_t)e->n_files));
    json_object_set_new(e->rec, "files_done", fx_bulk_ranges(e->done, e->n_files));
  }
  if (e->transaction_time[0])
    json_object_set_new(e->rec, "transaction_time", json_string(e->transaction_time));
  json_object_set_new(e->rec, "counts", json_deep_copy(e->counts));
  json_object_set_new(e->rec, "error_lines", json_integer(e->error_lines));
  json_object_set_new(e->rec, "failures", json_integer(e->bad_lines));
  if (e->first_cls != FX_EC_NONE)
    json_object_set_new(e->rec, "error_class", json_string(fx_errclass_name(e->first_cls)));
  json_object_set_new(e->rec, "references_fetched", json_integer(e->refs_fetched));
  size_t len;
  char *value = dump(e->rec, &len);
  if (value) emit(b, NULL, b->sv->app->cfg->topics.bulk, e->job_id, value, len, NULL);
}

/* Files finish fast and an export may have tens of thousands: their
 * progress is published at most once a second (PROGRESS_MS). A worker that
 * dies in between loses at most that second's files, which the next owner
 * downloads again. */
static void on_progress_timer(uv_timer_t *t) {
  bx_export *e = t->data;
  if (e->progress_dirty && !e->removed && !e->abandoned) {
    e->progress_dirty = 0;
    publish_progress(e);
  }
}

static void progress_soon(bx_export *e) {
  e->progress_dirty = 1;
  if (!uv_is_active((uv_handle_t *)&e->timer))
    uv_timer_start(&e->timer, on_progress_timer, PROGRESS_MS, 0);
}

/* What a failure record says (out/records.h builds it). */
typedef struct bx_failure {
  fx_errclass cls;
  long status;           /* 0: none */
  const char *outcome;   /* the server's OperationOutcome, NULL or "" for none */
  const char *url;       /* as requested (redacted by the builder); NULL: none */
  const char *type;      /* resource_type, NULL: none */
  const char *reference; /* "Type/id" of a referenced entity, NULL: none */
  int attempts;          /* 0: the export's current step's tries (at least 1) */
  const char *message;
} bx_failure;

/* One failure record (topics.failures), shaped like a patient job's (the
 * patient is null: a bulk job names none). The first failure's class
 * becomes the status's error_class (finish). */
static void publish_failure(bx_export *e, fx_sink *sink, const bx_failure *fl) {
  const fx_services *p = e->b->sv;
  if (e->first_cls == FX_EC_NONE) e->first_cls = fl->cls;
  fx_rec_job j = rec_job(e);
  fx_rec_failure rf = {.cls = fl->cls,
                       .http_status = fl->status,
                       .outcome = fl->outcome,
                       .url = fl->url,
                       .attempts = fl->attempts > 0 ? fl->attempts : (e->tries ? e->tries : 1),
                       .message = fl->message,
                       .resource_type = fl->type,
                       .reference = fl->reference};
  size_t len;
  char *value = fx_rec_failure_value(&j, &rf, &len);
  char *key = fx_rec_failure_key(&j);
  if (value && key)
    emit(e->b, sink, p->app->cfg->topics.failures, key, value, len, fx_rec_headers(&j));
  else
    free(value), unbuilt(e, sink, "failure");
  free(key);
  atomic_fetch_add(&p->metrics->failures, 1);
}

/* The names of the types in t, as a new array (NULL on OOM). */
static json_t *type_names(fx_types t) {
  json_t *a = json_array();
  for (int i = fx_types_next(t, 0); a && i >= 0; i = fx_types_next(t, i + 1))
    json_array_append_new(a, json_string(fx_type_names[i]));
  return a;
}

/* The status record's bulk object (status.schema.json). New reference,
 * NULL on OOM. */
static json_t *bulk_object(const bx_export *e, long long patient_resources) {
  json_t *o = json_pack(
      "{s:s, s:o, s:I, s:I, s:I, s:I, s:I}", "group", e->job && e->job->group ? e->job->group : "",
      "transaction_time", e->transaction_time[0] ? json_string(e->transaction_time) : json_null(),
      "files", (json_int_t)e->n_out, "files_done", (json_int_t)e->n_done, "error_files",
      (json_int_t)e->n_err, "error_lines", (json_int_t)e->error_lines, "patient_resources",
      (json_int_t)patient_resources);
  if (!o) return NULL;
  if (e->job && !fx_types_empty(e->job->per_patient_types)) {
    /* The types the server does not export, and the patient jobs that fetch
     * them (their own statuses follow on the status topic). */
    json_t *jobs = json_object_get(e->rec, "per_patient_jobs");
    json_t *pp = json_pack("{s:o, s:o, s:I}", "types", type_names(e->job->per_patient_types),
                           "jobs", json_is_array(jobs) ? json_deep_copy(jobs) : json_array(),
                           "patients",
                           json_integer_value(json_object_get(e->rec, "per_patient_patients")));
    if (!pp || json_object_set_new(o, "per_patient", pp) != 0) {
      json_decref(o);
      return NULL;
    }
  }
  if (e->job && !fx_types_empty(e->job->per_patient_skipped)) {
    /* Types the tenant extracts that neither the export nor follow-up jobs
     * fetched: said here, never silently absent. */
    json_t *nf = json_pack(
        "{s:o, s:s}", "types", type_names(e->job->per_patient_skipped), "reason",
        e->job->since
            ? "the server's Group $export does not export these types, and fetching "
              "them per patient needs every member's Patient: an export with since "
              "lists only the patients changed since then. Fetch them with patient "
              "jobs, or a bulk job without since"
            : "the server's Group $export does not export these types, and the job "
              "exports no Patient to fetch them for. Add Patient to the tenant's "
              "resources, or fetch them with patient jobs");
    if (!nf || json_object_set_new(o, "not_fetched", nf) != 0) {
      json_decref(o);
      return NULL;
    }
  }
  return o;
}

static void publish_status(bx_export *e, fx_outcome outcome, fx_errclass cls) {
  const fx_services *p = e->b->sv;
  int failed = e->end_state == BX_FAILED; /* the export itself failed: dead-lettered */
  char now[32];
  fx_iso_now(now);
  long long patient_resources = count_of(e->counts, "Patient");
  const char *started = json_string_value(json_object_get(e->rec, "started_at"));
  long long tasks = e->n_out ? (long long)e->n_out : 1;
  fx_rec_job j = rec_job(e);
  json_t *bulk = bulk_object(e, patient_resources), *full = json_array();
  fx_rec_status st = {
      .outcome = outcome,
      /* A bulk job names no patients: `patients` has always carried the
       * Patient resources exported (not the Group's members, which fhirx
       * never reads); kept for readers of older statuses, named properly in
       * bulk. */
      .patients = patient_resources,
      .tasks = tasks,
      .tasks_failed = failed ? tasks : 0,
      .counts = e->counts,
      .resources = counts_sum(e->counts),
      .references_fetched = e->refs_fetched,
      .references_cached = 0,
      .failures = e->error_lines + e->bad_lines + failed,
      .error_class = outcome != FX_OUTCOME_COMPLETED ? cls : FX_EC_NONE,
      .full_types = full,
      .since = e->job ? e->job->since : NULL,
      .started_at = started ? started : now,
      .finished_at = now,
      .duration_ms = (long long)(e->started_ms ? fx_now_ms() - e->started_ms : 0),
      .worker = p->identity,
      .bulk = bulk};
  size_t len;
  char *value = bulk && full ? fx_rec_status_value(&j, &st, &len) : NULL;
  json_decref(bulk);
  json_decref(full);
  if (!value) {
    unbuilt(e, &e->sink, "status");
    return;
  }
  emit(e->b, &e->sink, p->app->cfg->topics.status, e->job_id, value, len, fx_rec_headers(&j));
  atomic_fetch_add(&p->metrics->statuses, 1);
  fx_metrics_job_finished(p->metrics, (int)outcome);
  fx_log(FX_LOG_INFO, "bulk job finished", "job_id", e->job_id, "tenant", j.tenant, "state",
         fx_outcome_name(outcome), NULL);
}

/* The dead letter: the job as it was (replay re-runs a new export), the
 * cause in the same headers a patient job's dead letter has. */
static void publish_dead_letter(bx_export *e, fx_errclass cls, long status, const char *msg) {
  const fx_services *p = e->b->sv;
  json_t *job = json_object_get(e->rec, "job");
  if (!job) return; /* a bulk record without its job: its failure record says so */
  size_t len = 0;
  char *value = dump(job, &len);
  if (!value) {
    unbuilt(e, &e->sink, "dead letter");
    return;
  }
  char now[32];
  fx_iso_now(now);
  fx_rec_job j = rec_job(e);
  if (!j.topic[0]) j.topic = p->app->cfg->topics.jobs;
  fx_rec_dead_letter d = {
      .cls = cls,
      .http_status = status,
      .reason = msg,
      .timestamp = (int64_t)json_integer_value(json_object_get(e->rec, "timestamp")),
      .first_failure = now,
      .last_failure = now,
      .replayed_from = json_string_value(json_object_get(e->rec, "replayed_from"))};
  emit(e->b, &e->sink, p->app->cfg->topics.dlq, e->job_id, value, len,
       fx_rec_dead_letter_headers(&j, &d));
  atomic_fetch_add(&p->metrics->dead_letters, 1);
}

/* ---- export lifecycle ----------------------------------------------------------- */

static bx_export *find_export(fx_bulk *b, const char *job_id) {
  for (bx_export *e = b->exports; e; e = e->next)
    if (strcmp(e->job_id, job_id) == 0) return e;
  return NULL;
}

static void on_export_closed(uv_handle_t *h) {
  bx_export *e = h->data;
  fx_bulk *b = e->b;
  json_decref(e->rec);
  json_decref(e->counts);
  json_decref(e->manifest);
  fx_job_free(e->job);
  fx_refs_free(&e->refs_asked);
  if (e->ts) fx_tenant_set_release(e->ts);
  free(e->status_url);
  free(e->done);
  free(e->job_id);
  free(e);
  b->live_exports--;
  maybe_leave(b);
}

static void export_unref(bx_export *e) {
  if (--e->refs > 0) return;
  if (e->started && !e->abandoned) atomic_fetch_sub(&e->b->sv->metrics->bulk_active, 1);
  uv_close((uv_handle_t *)&e->timer, on_export_closed);
}

/* Takes e off the list (it ended, or its partition went elsewhere). */
static void export_remove(bx_export *e) {
  if (e->removed) return;
  e->removed = 1;
  uv_timer_stop(&e->timer);
  for (bx_export **pp = &e->b->exports; *pp; pp = &(*pp)->next)
    if (*pp == e) {
      *pp = e->next;
      break;
    }
  export_unref(e);
}

static void remember_finished(fx_bulk *b, const char *job_id, int attempt, long long seq) {
  json_object_set_new(b->finished, job_id, json_pack("[i, I]", attempt, (json_int_t)seq));
}

/* An export ended: record that, clean up on the server, forget it. */
static void on_deleted(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  bx_export *e = arg;
  if (res && res->result == 0 && res->status >= 200 && res->status < 300)
    fx_log(FX_LOG_DEBUG, "bulk export deleted on the server", "job_id", e->job_id, NULL);
  else if (!e->abandoned)
    fx_log(FX_LOG_WARN, "could not delete a finished bulk export on the server", "job_id",
           e->job_id, "error", ae ? ae->err.msg : (res && res->result ? res->error : NULL), NULL);
  export_unref(e);
}

static void export_end(bx_export *e, int state, int delete_on_server) {
  e->state = state;
  publish_progress(e);
  remember_finished(e->b, e->job_id, e->attempt, e->seq);
  atomic_fetch_add(state == BX_COMPLETED ? &e->b->sv->metrics->bulk_completed
                                         : &e->b->sv->metrics->bulk_failed,
                   1);
  if (delete_on_server && e->status_url && e->tenant) {
    /* The status URL came from this export's kick-off: wherever on the
     * base's origin the server put it, the DELETE reaches it. */
    fx_fhir_request rq = {.tenant = e->tenant->id,
                          .scope = fx_tenant_token_scope(e->tenant, 1),
                          .url = e->status_url,
                          .accept = "application/json",
                          .method = "DELETE"};
    fx_err err = {0};
    e->refs++;
    if (fx_fhir_get(e->b->lp, e->b->sv->app->tokens, &rq, on_deleted, e, &err) != 0) e->refs--;
  }
  export_remove(e);
}

/* Ending an export goes in acknowledged steps, like a patient job: its
 * failure record and dead letter (when it failed), then its status record,
 * then the final progress record and the DELETE. A step whose outputs Kafka
 * did not take leaves the export unended: its last progress record stands,
 * and it resumes when its partition is next assigned. */
static void export_acked(void *arg);

static long long published(const bx_export *e) { return counts_sum(e->counts); }

static void begin_ending(bx_export *e, int status_state, fx_errclass cls, int end_state,
                         int delete_on_server) {
  e->ending = 1;
  e->end_status = status_state;
  e->end_cls = cls;
  e->end_state = end_state;
  e->end_delete = delete_on_server;
  e->refs++;                                                  /* held until the last step */
  remember_finished(e->b, e->job_id, e->attempt, e->seq + 1); /* a duplicate pending is stale now */
  uv_timer_stop(&e->timer);
  for (bx_export **pp = &e->b->exports; *pp; pp = &(*pp)->next)
    if (*pp == e) {
      *pp = e->next;
      break;
    }
  e->removed = 1;  /* off the list: nothing else moves it on */
  export_unref(e); /* the list's reference */
}

static void export_acked(void *arg) {
  bx_export *e = arg;
  if (atomic_exchange(&e->sink.failed, 0)) {
    fx_log(FX_LOG_ERROR,
           "Kafka did not take a bulk export's final records; it resumes when its partition is "
           "next assigned",
           "job_id", e->job_id, NULL);
    json_object_del(e->b->finished, e->job_id);
    export_unref(e);
    return;
  }
  if (e->ending == 1) {
    e->ending = 2;
    fx_sink_open(&e->sink);
    publish_status(e, (fx_outcome)e->end_status, e->end_cls);
    sink_done(&e->sink, 0);
    return;
  }
  export_end(e, e->end_state, e->end_delete);
  export_unref(e);
}

static void export_fail(bx_export *e, fx_errclass cls, long status, const char *msg) {
  if (e->removed || e->abandoned) return;
  const char *tenant = json_string_value(json_object_get(e->rec, "tenant"));
  char st[16] = "";
  if (status) snprintf(st, sizeof st, "%ld", status);
  fx_log(FX_LOG_WARN, "bulk export failed", "job_id", e->job_id, "tenant", tenant, "error_class",
         fx_errclass_name(cls), "http_status", st[0] ? st : NULL, NULL);
  /* The reason may quote the server's OperationOutcome, which can name a
   * patient: as for patient jobs, only at debug (it is in the dead letter). */
  if (fx_log_enabled(FX_LOG_DEBUG))
    fx_log(FX_LOG_DEBUG, "bulk export failed: details", "job_id", e->job_id, "reason", msg, NULL);
  /* An expired export is gone already; any other is cleaned up. */
  /* Some files published already: partial (the dead letter re-runs it whole). */
  begin_ending(e, published(e) ? 1 : 2, cls, BX_FAILED, cls != FX_EC_EXPORT_EXPIRED);
  fx_sink_open(&e->sink);
  /* A job that cannot run here names no request (failure.schema.json). */
  int job_level = cls == FX_EC_INVALID_JOB || cls == FX_EC_UNKNOWN_TENANT;
  publish_failure(e, &e->sink, &(bx_failure){.cls = cls, .status = job_level ? 0 : status, .url = job_level ? NULL : e->status_url, .message = msg});
  publish_dead_letter(e, cls, status, msg);
  sink_done(&e->sink, 0);
}

static void on_timer(uv_timer_t *t) {
  bx_export *e = t->data;
  if (!e->abandoned && !e->removed) export_step(e);
}

static void wait_then_step(bx_export *e, uint64_t ms) {
  uv_timer_start(&e->timer, on_timer, ms, 0);
}

/* Whether a transient failure of the current step may be retried; if not,
 * the export fails. */
static int retry_step(bx_export *e, long after_ms, long status, const char *what) {
  fx_bulk *b = e->b;
  const fx_bulk_conf *bc = &b->sv->app->cfg->bulk;
  e->tries++;
  uint64_t now = fx_wall_ms();
  if (e->tries > bc->retries || now >= e->deadline_ms) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s failed %d times in a row (last: %s)", state_names[e->state],
             e->tries, what);
    export_fail(e, now >= e->deadline_ms ? FX_EC_DEADLINE : FX_EC_TRANSIENT, status, msg);
    return 0;
  }
  uint64_t backoff = (uint64_t)bc->poll_min_ms << (e->tries - 1);
  wait_then_step(
      e, fx_bulk_poll_delay(after_ms, 0, backoff, (uint64_t)bc->poll_max_ms, now, e->deadline_ms));
  return 1;
}


static int transient_status(long status) {
  return status == 408 || status == 429 || status == 502 || status == 503 || status == 504;
}

/* A message for a failed exchange: the server's OperationOutcome if any. */
static void describe(const fx_http_response *res, const char *what, char *out, size_t size) {
  char oo[300], redirect[400];
  fx_fhir_outcome_summary(res->body, oo, sizeof oo);
  fx_url_redirect_note(res->status, fx_http_header(res, "Location"), redirect, sizeof redirect);
  snprintf(out, size, "%s answered HTTP %ld%s%s%s%s", what, res->status, redirect[0] ? ": " : "",
           redirect, oo[0] ? ": " : "", oo);
}

static void auth_failed(bx_export *e, const fx_auth_error *ae) {
  /* A reload removed the tenant while its export ran: its tokens are gone. */
  fx_tenant_set *now = fx_tenant_slot_get(e->b->sv->tenants);
  int configured = fx_tenant_set_find(now, e->tenant->id) != NULL;
  fx_tenant_set_release(now);
  if (!configured) {
    char msg[200];
    snprintf(msg, sizeof msg,
             "tenant %s was removed from the configuration while its export ran; replay the "
             "job once it is back",
             e->tenant->id);
    export_fail(e, FX_EC_UNKNOWN_TENANT, 0, msg);
    return;
  }
  int transient;
  fx_errclass cls = fx_errclass_of_auth(ae, &transient);
  if (transient) {
    retry_step(e, ae->retry_after_ms > 0 ? ae->retry_after_ms : -1, 0, ae->err.msg);
    return;
  }
  export_fail(e, cls, ae->http_status, ae->err.msg);
}

/* Resolves a Content-Location or Location against the URL it came with. */
static char *resolve(const char *base, const char *ref) {
  CURLU *u = curl_url();
  char *out = NULL, *tmp = NULL;
  if (u && curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_URL, ref, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_URL, &tmp, 0) == CURLUE_OK) {
    out = strdup(tmp);
    curl_free(tmp);
  }
  curl_url_cleanup(u);
  return out;
}

/* ---- kick-off -------------------------------------------------------------------- */

static void on_kickoff(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  bx_export *e = arg;
  fx_bulk *b = e->b;
  if (e->abandoned || e->removed) goto out;
  if (ae) {
    auth_failed(e, ae);
    goto out;
  }
  if (res->result) {
    retry_step(e, -1, 0, res->error);
    goto out;
  }
  char msg[512];
  if (res->status == 202) {
    const char *loc = fx_http_header(res, "Content-Location");
    char *url = loc ? resolve(res->url, loc) : NULL;
    if (!url) {
      export_fail(e, FX_EC_INVALID_RESPONSE, 202,
                  "the $export kick-off was accepted (202) without a Content-Location to poll");
      goto out;
    }
    fx_token_scope scope = fx_tenant_token_scope(e->tenant, 1);
    if (!fx_url_may_carry_token(url, &scope)) {
      char shown[200];
      fx_url_redact(url, shown, sizeof shown);
      snprintf(msg, sizeof msg,
               "the export's status URL %s is on another origin than the tenant's FHIR base; the "
               "token is not sent there, so the export cannot be polled or DELETEd (it stays on "
               "the server until it expires). If that host belongs to the server, add it to "
               "tenants[].token_url_prefixes",
               shown);
      free(url);
      export_fail(e, FX_EC_FOREIGN_REFERENCE, 202, msg);
      goto out;
    }
    free(e->status_url);
    e->status_url = url;
    e->state = BX_EXPORTING;
    e->tries = 0;
    e->wait_ms = 0;
    char now[32];
    fx_iso_now(now);
    json_object_set_new(e->rec, "kicked_off_at", json_string(now));
    publish_progress(e);
    atomic_fetch_add(&b->sv->metrics->bulk_kickoffs, 1);
    fx_log(FX_LOG_INFO, "bulk export started", "job_id", e->job_id, "tenant", e->tenant->id, NULL);
    const fx_bulk_conf *bc = &b->sv->app->cfg->bulk;
    wait_then_step(e, fx_bulk_poll_delay(fx_http_retry_after_ms(res), 0, (uint64_t)bc->poll_min_ms,
                                         (uint64_t)bc->poll_max_ms, fx_wall_ms(), e->deadline_ms));
    goto out;
  }
  if (res->status == 429) {
    /* Cerner runs one export per client and tenant: wait the other one out
     * (until the deadline), do not fail. */
    const fx_bulk_conf *bc = &b->sv->app->cfg->bulk;
    uint64_t now = fx_wall_ms();
    if (now >= e->deadline_ms) {
      export_fail(e, FX_EC_DEADLINE, 429,
                  "another export of this client kept the tenant busy until the deadline");
      goto out;
    }
    fx_log(FX_LOG_INFO, "another export of this client is running on the tenant; waiting", "job_id",
           e->job_id, "tenant", e->tenant->id, NULL);
    e->wait_ms =
        fx_bulk_poll_delay(fx_http_retry_after_ms(res), e->wait_ms, (uint64_t)bc->poll_min_ms,
                           (uint64_t)bc->poll_max_ms, now, e->deadline_ms);
    wait_then_step(e, e->wait_ms);
    goto out;
  }
  describe(res, "the $export kick-off", msg, sizeof msg);
  if (transient_status(res->status) || res->status >= 500) {
    retry_step(e, fx_http_retry_after_ms(res), res->status, msg);
    goto out;
  }
  fx_errclass cls = fx_errclass_of_status(res->status);
  if (res->status == 404)
    snprintf(msg + strlen(msg), sizeof msg - strlen(msg), " (is Group %s on this tenant?)",
             e->job->group);
  export_fail(e, cls, res->status, msg);
out:
  export_unref(e);
}

static int append_param(char *url, size_t size, const char *name, const char *value, int *first) {
  char *esc = curl_easy_escape(NULL, value, 0);
  if (!esc) return -1;
  size_t used = strlen(url);
  int n = snprintf(url + used, size - used, "%s%s=%s", *first ? "?" : "&", name, esc);
  curl_free(esc);
  *first = 0;
  return n < 0 || (size_t)n >= size - used ? -1 : 0;
}

static void kickoff(bx_export *e) {
  fx_bulk *b = e->b;
  size_t size = 8192 + 1100 * FX_BULK_MAX_TYPE_FILTERS;
  char *url = malloc(size);
  if (!url) {
    retry_step(e, -1, 0, "out of memory");
    return;
  }
  const char *base = e->tenant->fhir_base;
  size_t bl = strlen(base);
  char *group = curl_easy_escape(NULL, e->job->group, 0);
  snprintf(url, size, "%.*s/Group/%s/$export", (int)(bl && base[bl - 1] == '/' ? bl - 1 : bl), base,
           group ? group : "");
  curl_free(group);
  int first = 1, bad = 0;
  char types[FX_BULK_TYPE_STRING_SIZE];
  if (fx_job_bulk_type_string(e->job, types, sizeof types) > 0)
    bad |= append_param(url, size, "_type", types, &first);
  if (e->job->since) {
    /* _since is a FHIR instant; a job may say a date: its first instant, UTC. */
    char inst[256];
    if (fx_job_since_instant(e->job->since, inst, sizeof inst) < 0)
      bad = 1;
    else
      bad |= append_param(url, size, "_since", inst, &first);
  }
  char *filters = fx_job_bulk_type_filter_string(e->job);
  if (!filters) {
    free(url);
    retry_step(e, -1, 0, "out of memory building the kick-off's _typeFilter");
    return;
  }
  if (*filters) bad |= append_param(url, size, "_typeFilter", filters, &first);
  free(filters);
  if (bad) {
    free(url);
    export_fail(e, FX_EC_INVALID_JOB, 0, "the $export kick-off URL would be longer than 8 KB: use fewer or shorter type_filter "
                "entries");
    return;
  }
  static const char *const prefer[] = {"Prefer: respond-async", NULL};
  fx_fhir_request rq = {.tenant = e->tenant->id,
                        .scope = fx_tenant_token_scope(e->tenant, 0),
                        .url = url,
                        .accept = "application/fhir+json",
                        .headers = prefer};
  fx_err err = {0};
  e->refs++;
  if (fx_fhir_get(b->lp, b->sv->app->tokens, &rq, on_kickoff, e, &err) != 0) {
    e->refs--;
    free(url);
    export_fail(e, FX_EC_FOREIGN_REFERENCE, 0, err.msg);
    return;
  }
  free(url);
}

/* ---- status polls and the manifest ------------------------------------------------ */

static int read_manifest(bx_export *e, const fx_http_response *res, char *msg, size_t size) {
  json_error_t je;
  json_t *m = json_loadb(res->body, res->body_len, 0, &je);
  json_t *out = json_object_get(m, "output");
  json_t *err = json_object_get(m, "error");
  if (!json_is_object(m) || !json_is_array(out) || (err && !json_is_array(err))) {
    json_decref(m);
    snprintf(msg, size,
             "the completed export's manifest is not a Bulk Data manifest (output[] "
             "missing or not an array)");
    return -1;
  }
  size_t n_out = json_array_size(out), n_err = err ? json_array_size(err) : 0;
  for (size_t i = 0; i < n_out + n_err; i++) {
    json_t *it = i < n_out ? json_array_get(out, i) : json_array_get(err, i - n_out);
    if (!json_string_value(json_object_get(it, "url")) ||
        !json_string_value(json_object_get(it, "type"))) {
      json_decref(m);
      snprintf(msg, size, "manifest entry %zu has no url or type", i);
      return -1;
    }
  }
  json_t *rat = json_object_get(m, "requiresAccessToken");
  e->requires_token = !json_is_false(rat);
  const char *tt = json_string_value(json_object_get(m, "transactionTime"));
  snprintf(e->transaction_time, sizeof e->transaction_time, "%s", tt ? tt : "");
  /* A resumed export keeps the files it had done, if the manifest is the same size. */
  unsigned char *done = calloc(n_out + n_err ? n_out + n_err : 1, 1);
  if (!done) {
    json_decref(m);
    snprintf(msg, size, "out of memory");
    return -1;
  }
  json_int_t recorded = json_integer_value(json_object_get(e->rec, "files_total"));
  if ((size_t)recorded == n_out + n_err)
    fx_bulk_ranges_parse(json_object_get(e->rec, "files_done"), done, n_out + n_err);
  else
    json_object_clear(e->counts);
  free(e->done);
  e->done = done;
  json_decref(e->manifest);
  e->manifest = m;
  e->n_out = n_out;
  e->n_err = n_err;
  e->n_files = n_out + n_err;
  e->cursor = 0;
  e->n_done = 0;
  for (size_t i = 0; i < e->n_files; i++) e->n_done += e->done[i];
  return 0;
}

static void finish(bx_export *e) {
  /* Every file is acknowledged: straight to the status record, whose
   * error_class is the class of the export's first failure record (a
   * reference's not_found, a bad line's invalid_response, an error-file
   * line's export_failed). */
  int state = !(e->error_lines || e->bad_lines) ? 0 : published(e) ? 1 : 2;
  begin_ending(e, state, e->first_cls != FX_EC_NONE ? e->first_cls : FX_EC_EXPORT_FAILED,
               BX_COMPLETED, 1);
  e->ending = 1;
  atomic_store(&e->sink.failed, 0);
  fx_sink_open(&e->sink);
  sink_done(&e->sink, 0); /* no failure step: on to the status */
}

static void on_status(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  bx_export *e = arg;
  fx_bulk *b = e->b;
  const fx_bulk_conf *bc = &b->sv->app->cfg->bulk;
  if (e->abandoned || e->removed) goto out;
  atomic_fetch_add(&b->sv->metrics->bulk_polls, 1);
  if (ae) {
    auth_failed(e, ae);
    goto out;
  }
  if (res->result) {
    retry_step(e, -1, 0, res->error);
    goto out;
  }
  char msg[512];
  uint64_t now = fx_wall_ms();
  if (res->status == 202) {
    e->tries = 0;
    const char *progress = fx_http_header(res, "X-Progress");
    if (progress) json_object_set_new(e->rec, "progress", json_string(progress));
    if (now >= e->deadline_ms) {
      snprintf(msg, sizeof msg,
               "the export was still running after %lld hours (bulk.deadline_hours)",
               bc->deadline_hours);
      export_fail(e, FX_EC_DEADLINE, 202, msg);
      goto out;
    }
    e->wait_ms =
        fx_bulk_poll_delay(fx_http_retry_after_ms(res), e->wait_ms, (uint64_t)bc->poll_min_ms,
                           (uint64_t)bc->poll_max_ms, now, e->deadline_ms);
    if (fx_log_enabled(FX_LOG_DEBUG)) {
      char w[24];
      snprintf(w, sizeof w, "%llu", (unsigned long long)e->wait_ms);
      fx_log(FX_LOG_DEBUG, "bulk export in progress", "job_id", e->job_id, "progress", progress,
             "next_poll_ms", w, NULL);
    }
    wait_then_step(e, e->wait_ms);
    goto out;
  }
  if (res->status == 200) {
    if (read_manifest(e, res, msg, sizeof msg) != 0) {
      export_fail(e, FX_EC_INVALID_RESPONSE, 200, msg);
      goto out;
    }
    e->tries = 0;
    if (e->state != BX_DOWNLOADING) {
      e->state = BX_DOWNLOADING;
      publish_progress(e);
      char n[24];
      snprintf(n, sizeof n, "%zu", e->n_files);
      fx_log(FX_LOG_INFO, "bulk export ready; downloading", "job_id", e->job_id, "files", n, NULL);
    }
    pump_files(e);
    goto out;
  }
  if (res->status == 404 || res->status == 410) {
    describe(res, "the export's status URL", msg, sizeof msg);
    export_fail(e, FX_EC_EXPORT_EXPIRED, res->status, msg);
    goto out;
  }
  describe(res, "the export's status URL", msg, sizeof msg);
  if (transient_status(res->status)) {
    retry_step(e, fx_http_retry_after_ms(res), res->status, msg);
    goto out;
  }
  /* Bulk Data: an error status (4xx/5xx with an OperationOutcome) means the
   * export failed; a new one may work, so it is replayable. */
  export_fail(e, res->status >= 500 ? FX_EC_EXPORT_FAILED : fx_errclass_of_status(res->status),
              res->status, msg);
out:
  export_unref(e);
}

static void poll_status(bx_export *e) {
  fx_fhir_request rq = {.tenant = e->tenant->id,
                        .scope = fx_tenant_token_scope(e->tenant, 1),
                        .url = e->status_url,
                        .accept = "application/json"};
  fx_err err = {0};
  e->refs++;
  if (fx_fhir_get(e->b->lp, e->b->sv->app->tokens, &rq, on_status, e, &err) != 0) {
    e->refs--;
    export_fail(e, FX_EC_FOREIGN_REFERENCE, 0, err.msg);
  }
}

/* ---- files ------------------------------------------------------------------------ */

static int file_dead(const bx_file *f) { return f->e->abandoned || f->e->removed; }

static void pp_clear(bx_file *f) {
  for (size_t i = 0; i < f->n_pp; i++) free(f->pp_ids[i]);
  free(f->pp_ids);
  f->pp_ids = NULL;
  f->n_pp = f->cap_pp = 0;
  json_array_clear(f->pp_jobs);
}

static void on_file_closed(uv_handle_t *h) {
  bx_file *f = h->data;
  bx_export *e = f->e;
  fx_bulk *b = e->b;
  for (bx_file **pp = &e->files; *pp; pp = &(*pp)->next)
    if (*pp == f) {
      *pp = f->next;
      break;
    }
  while (f->refs_head) {
    bx_ref *r = f->refs_head;
    f->refs_head = r->next;
    ref_free(r);
  }
  pp_clear(f);
  json_decref(f->pp_jobs);
  free(f->buf);
  json_decref(f->counts);
  free(f->url);
  free(f->type);
  free(f);
  b->live_files--;
  export_unref(e);
}

/* The follow-up jobs of a file whose outputs Kafka acknowledged: recorded
 * in the export's progress record (per_patient_jobs, per_patient_patients),
 * so that its status names them even after a resume. */
static void per_patient_done(bx_export *e, const bx_file *f) {
  if (!json_array_size(f->pp_jobs)) return;
  json_t *jobs = json_object_get(e->rec, "per_patient_jobs");
  if (!json_is_array(jobs)) {
    jobs = json_array();
    json_object_set_new(e->rec, "per_patient_jobs", jobs);
  }
  size_t i, k;
  json_t *id, *have;
  json_array_foreach(f->pp_jobs, i, id) {
    int known = 0;
    json_array_foreach(jobs, k, have) known |= json_equal(have, id);
    if (!known) json_array_append(jobs, id);
  }
  json_int_t n = json_integer_value(json_object_get(e->rec, "per_patient_patients"));
  json_object_set_new(e->rec, "per_patient_patients", json_integer(n + (json_int_t)f->n_pp));
}

/* On the bulk thread: the download ended and every result it produced was
 * acknowledged (or it was given up). */
static void file_acked(void *arg) {
  bx_file *f = arg;
  bx_export *e = f->e;
  f->settled = 1;
  if (!file_dead(f)) {
    e->running--;
    if (f->complete && !atomic_load(&f->sink.failed)) {
      e->done[f->index] = 1;
      e->n_done++;
      const char *k;
      json_t *v;
      json_object_foreach(f->counts, k, v) count_add(e->counts, k, json_integer_value(v));
      per_patient_done(e, f);
      e->error_lines += f->error_lines;
      e->bad_lines += f->bad_lines;
      e->refs_fetched += f->refs_fetched;
      atomic_fetch_add(&e->b->sv->metrics->bulk_files, 1);
      progress_soon(e);
    } else {
      /* A result was not delivered: that file is downloaded again, whole. */
      fx_log(FX_LOG_WARN, "a bulk file's results were not all delivered; downloading it again",
             "job_id", e->job_id, NULL);
      if (f->index < e->cursor) e->cursor = f->index;
    }
    pump_files(e);
  }
  uv_close((uv_handle_t *)&f->timer, on_file_closed);
}

static void file_release(bx_file *f) {
  f->phase = F_DONE;
  sink_done(&f->sink, 0);
}

static void on_file_settled(fx_sink *s, int failed) {
  (void)failed; /* file_acked reads it from the sink */
  file_acked(s);
}

static void on_export_settled(fx_sink *s, int failed) {
  (void)failed;
  export_acked(s);
}

/* The patient a resource belongs to, for the fhirx-patient header. */
static const char *patient_of(json_t *res, const char *type, const char *id) {
  if (strcmp(type, "Patient") == 0) return id;
  static const char *const fields[] = {"subject", "patient", "beneficiary"};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    const char *ref =
        json_string_value(json_object_get(json_object_get(res, fields[i]), "reference"));
    if (ref && strncmp(ref, "Patient/", 8) == 0) return ref + 8;
  }
  return NULL;
}

/* ---- references (follow_references) ----------------------------------------------- */

static void refs_pump(bx_file *f);

/* What one reference (or attachment URL) found at depth means for the
 * export (model/refs.h decides, once per export and entity): queued to be
 * read, reported, or nothing. */
typedef struct ref_ctx {
  bx_file *f;
  const fx_profile *prof;
  int depth; /* 1: referenced by an exported resource */
} ref_ctx;

static void on_reference(void *arg, const char *ref, int only_type, int exact) {
  const ref_ctx *c = arg;
  bx_file *f = c->f;
  bx_export *e = f->e;
  fx_ref_found found;
  char msg[700];
  switch (fx_refs_consider(&e->refs_asked, c->prof, e->tenant->fhir_base, NULL, ref, only_type, exact,
                           &found)) {
  case FX_REFD_SKIP: return;
  case FX_REFD_FOREIGN: {
    char shown[512];
    fx_url_redact(ref, shown, sizeof shown);
    snprintf(msg, sizeof msg, "reference %s is outside the tenant's FHIR base; not followed",
             shown);
    /* url: the reference's URL, which was not requested (failure.schema.json). */
    publish_failure(e, &f->sink,
                    &(bx_failure){.cls = FX_EC_FOREIGN_REFERENCE, .url = ref, .message = msg});
    f->bad_lines++;
    return;
  }
  case FX_REFD_INVALID:
    /* A followed type with an id that breaks the id rule (resources.h): never
     * read; reported by type, never with the id. */
    snprintf(msg, sizeof msg,
             "a reference to a %s has an id that breaks fhirx's id rule (1..%d of A-Z a-z 0-9 . "
             "_ ~ -, not '.' or '..' alone); not followed",
             fx_type_names[found.type], FX_FHIR_ID_MAX);
    publish_failure(e, &f->sink,
                    &(bx_failure){.cls = FX_EC_INVALID_RESPONSE,
                                  .type = fx_type_names[found.type],
                                  .message = msg});
    f->bad_lines++;
    return;
  case FX_REFD_CAPPED:
    snprintf(msg, sizeof msg,
             "more than %zu referenced entities (worker.max_references_per_job); the rest were "
             "not fetched",
             e->refs_asked.max);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_TOO_LARGE, .message = msg});
    f->bad_lines++;
    return;
  case FX_REFD_FOLLOW: break;
  }
  bx_ref *r = calloc(1, sizeof *r);
  if (!r || (found.exact && !(r->url = strdup(ref)))) {
    free(r);
    fx_sink_fail(&f->sink); /* out of memory: the file is downloaded again */
    return;
  }
  snprintf(r->key, sizeof r->key, "%s", found.key);
  r->depth = c->depth;
  if (f->refs_tail)
    f->refs_tail->next = r;
  else
    f->refs_head = r;
  f->refs_tail = r;
}

/* Every reference in res, plus the attachment URLs the profile wants as
 * Binary (an absolute one read exactly as given: Cerner's binary.md says to
 * use the link unchanged), while depth is within the profile's (as for
 * patient jobs). */
static void collect_refs(bx_file *f, json_t *res, int depth) {
  bx_export *e = f->e;
  if (!e->job->follow_references) return;
  const fx_profile *prof = fx_profile_for(&e->ts->profiles, e->tenant->id);
  if (!prof || depth > prof->depth || fx_types_empty(prof->follow)) return;
  ref_ctx c = {.f = f, .prof = prof, .depth = depth};
  fx_refs_walk(prof, res, on_reference, &c);
}

typedef struct ref_call {
  bx_file *f;
  bx_ref *r;
  char *url; /* owned */
} ref_call;

static void ref_call_free(ref_call *c) {
  free(c->url);
  free(c);
}

/* The follow-up patient jobs for the Patients of a file: the job's types
 * the server does not export, fetched per patient by the ordinary workers
 * (their failures, dead letters and replays are a patient job's). Each is an
 * output of the file, so the file counts as done only once Kafka has them;
 * a file downloaded again enqueues the same jobs (same ids) again. */
static void enqueue_per_patient(bx_file *f) {
  bx_export *e = f->e;
  const fx_services *p = e->b->sv;
  if (!f->n_pp) return;
  size_t per_job = p->limits.max_patients;
  /* Within the job size limit too: an id takes at most 64 + 3 bytes. */
  size_t by_bytes = p->limits.max_bytes > 4096 ? (p->limits.max_bytes - 4096) / 67 : 1;
  if (by_bytes < per_job) per_job = by_bytes;
  if (per_job < 1) per_job = 1;
  json_t *types = json_array();
  fx_types pp = e->job->per_patient_types;
  for (int i = fx_types_next(pp, 0); types && i >= 0; i = fx_types_next(pp, i + 1))
    json_array_append_new(types, json_string(fx_type_names[i]));
  for (size_t at = 0, chunk = 1; types && at < f->n_pp; at += per_job, chunk++) {
    char id[160];
    if (fx_job_per_patient_id(e->job_id, f->index + 1, chunk, id, sizeof id) != 0) break;
    json_t *pats = json_array();
    for (size_t i = at; pats && i < f->n_pp && i < at + per_job; i++)
      json_array_append_new(pats, json_string(f->pp_ids[i]));
    json_t *job = json_pack("{s:s, s:s, s:o, s:O}", "job_id", id, "tenant", e->job->tenant,
                            "patients", pats, "resources", types);
    if (!job) break;
    if (e->job->follow_references) json_object_set_new(job, "follow_references", json_true());
    json_object_set_new(job, "attempt", json_integer(e->attempt));
    size_t len;
    char *value = dump(job, &len);
    json_decref(job);
    if (!value) {
      atomic_store(&f->sink.failed, 1); /* downloaded again later */
      break;
    }
    emit(e->b, &f->sink, p->app->cfg->topics.jobs, id, value, len, NULL);
    if (!f->pp_jobs) f->pp_jobs = json_array();
    json_array_append_new(f->pp_jobs, json_string(id));
  }
  json_decref(types);
}

/* The file's lines and references are all published: it is done once Kafka
 * has acknowledged them. */
static void file_all_published(bx_file *f) {
  enqueue_per_patient(f);
  f->complete = 1;
  file_release(f);
}

static void on_ref_retry(uv_timer_t *t) { refs_pump(t->data); }

static void publish_ref(bx_file *f, const bx_ref *r, const fx_http_response *res) {
  bx_export *e = f->e;
  const fx_services *p = e->b->sv;
  char msg[512];
  json_error_t je;
  json_t *doc = json_loadb(res->body, res->body_len, 0, &je);
  const char *type = json_string_value(json_object_get(doc, "resourceType"));
  const char *id = json_string_value(json_object_get(doc, "id"));
  size_t tl = strcspn(r->key, "/");
  char why[200];
  if (!type || strlen(type) != tl || strncmp(type, r->key, tl) != 0) {
    char rtype[FX_TYPE_NAME_MAX + 1];
    snprintf(rtype, sizeof rtype, "%.*s", (int)tl, r->key);
    snprintf(msg, sizeof msg, "reading %s did not return that resource", r->key);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_INVALID_RESPONSE, .status = res->status, .url = res->url, .type = rtype, .reference = r->key, .attempts = r->tries + 1, .message = msg});
    f->bad_lines++;
    json_decref(doc);
    return;
  }
  if (fx_resource_key_problem(type, id, why, sizeof why)) {
    /* Never the id (resources.h): the type and why. */
    snprintf(msg, sizeof msg, "the referenced %s read from the server %s; not published", type,
             why);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_INVALID_RESPONSE, .status = res->status, .url = res->url, .type = type, .message = msg});
    f->bad_lines++;
    json_decref(doc);
    return;
  }
  if (res->body_len > p->max_message) {
    snprintf(msg, sizeof msg, "%s is %zu bytes, more than the %zu bytes a message may have", r->key,
             res->body_len, p->max_message);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_TOO_LARGE, .status = res->status, .url = res->url, .type = type, .reference = r->key, .attempts = r->tries + 1, .message = msg});
    f->bad_lines++;
    json_decref(doc);
    return;
  }
  char now[32], shown[1024];
  char *key = fx_result_key(e->tenant->id, type, id);
  fx_iso_now(now);
  fx_url_redact(res->url, shown, sizeof shown);
  rd_kafka_headers_t *h = headers_for(e);
  rd_kafka_header_add(h, "fhirx-source-url", -1, shown, -1);
  rd_kafka_header_add(h, "fhirx-fetched-at", -1, now, -1);
  rd_kafka_header_add(h, "fhirx-via", -1, "reference", -1);
  char *value = key ? fx_memstr(res->body, res->body_len) : NULL;
  if (!value) {
    /* Out of memory: the file is downloaded again later. */
    free(key);
    rd_kafka_headers_destroy(h);
    fx_sink_fail(&f->sink);
  } else {
    fx_out_emit(e->b->out, &f->sink, p->app->cfg->topics.results, key, value, res->body_len, h);
    free(key);
    count_add(f->counts, type, 1);
    f->refs_fetched++;
    atomic_fetch_add(&p->metrics->results, 1);
    atomic_fetch_add(&p->metrics->refs_fetched, 1);
  }
  collect_refs(f, doc, r->depth + 1);
  json_decref(doc);
}

static void on_ref(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  ref_call *c = arg;
  bx_file *f = c->f;
  bx_ref *r = c->r;
  f->refs_inflight--;
  if (file_dead(f)) {
    ref_call_free(c);
    ref_free(r);
    if (f->refs_inflight == 0) file_release(f);
    return;
  }
  const fx_bulk_conf *bc = &f->e->b->sv->app->cfg->bulk;
  int transient = 0;
  fx_errclass auth_cls = ae ? fx_errclass_of_auth(ae, &transient) : FX_EC_NONE;
  if (!ae) transient = res->result != 0 || transient_status(res->status) || res->status >= 500;
  if (!ae && res->result == 0 && res->status == 200) {
    publish_ref(f, r, res);
    ref_free(r);
  } else if (transient && ++r->tries <= bc->retries) {
    r->next = NULL; /* again, after a pause */
    if (f->refs_tail)
      f->refs_tail->next = r;
    else
      f->refs_head = r;
    f->refs_tail = r;
    if (!uv_is_active((uv_handle_t *)&f->timer))
      uv_timer_start(&f->timer, on_ref_retry, (uint64_t)bc->poll_min_ms, 0);
    if (!r->url) { /* an attachment's exact URL goes back with it */
      r->url = c->url;
      c->url = NULL;
    }
    ref_call_free(c);
    return;
  } else {
    char msg[600], oo[300] = "", http[32];
    long status = ae ? ae->http_status : res->status;
    fx_errclass cls = ae            ? auth_cls
                      : res->result ? FX_EC_TRANSIENT
                                    : fx_errclass_of_status(res->status);
    if (!ae && res->result == 0) fx_fhir_outcome_summary(res->body, oo, sizeof oo);
    snprintf(http, sizeof http, "HTTP %ld", status);
    snprintf(msg, sizeof msg, "reading referenced %s failed: %s", r->key,
             ae            ? ae->err.msg
             : res->result ? res->error
                           : (oo[0] ? oo : http));
    /* The failure names what it was about: the reference and its type. */
    char type[64];
    snprintf(type, sizeof type, "%.*s", (int)strcspn(r->key, "/"), r->key);
    /* A transient failure counted its last try in r->tries already. */
    int attempts = transient ? r->tries : r->tries + 1;
    publish_failure(f->e, &f->sink, &(bx_failure){.cls = cls, .status = status, .outcome = oo, .url = c->url, .type = type, .reference = r->key, .attempts = attempts, .message = msg});
    f->bad_lines++;
    ref_free(r);
  }
  ref_call_free(c);
  refs_pump(f);
}

/* The profile's Accept for reading the type of key ("Binary/..."), NULL =
 * application/fhir+json. */
static const char *ref_accept(const fx_profile *prof, const char *key) {
  char type[FX_TYPE_NAME_MAX + 1];
  snprintf(type, sizeof type, "%.*s", (int)strcspn(key, "/"), key);
  int idx = fx_resource_index(type);
  return prof && idx >= 0 ? prof->types[idx].accept : NULL;
}

/* Reads queued references, REF_PARALLEL at a time; the file is done when
 * none is left. */
static void refs_pump(bx_file *f) {
  bx_export *e = f->e;
  if (file_dead(f)) {
    while (f->refs_head) {
      bx_ref *r = f->refs_head;
      f->refs_head = r->next;
      ref_free(r);
    }
    f->refs_tail = NULL;
    if (f->refs_inflight == 0 && f->phase == F_REFS) file_release(f);
    return;
  }
  f->phase = F_REFS;
  while (f->refs_head && f->refs_inflight < REF_PARALLEL) {
    bx_ref *r = f->refs_head;
    f->refs_head = r->next;
    if (!f->refs_head) f->refs_tail = NULL;
    r->next = NULL;
    ref_call *c = calloc(1, sizeof *c);
    const char *base = e->tenant->fhir_base;
    size_t bl = strlen(base);
    if (bl && base[bl - 1] == '/') bl--;
    /* An attachment's exact URL, else base + "/" + key, built from lengths. */
    if (c && r->url) {
      c->url = r->url;
      r->url = NULL;
    } else if (c && (c->url = malloc(bl + strlen(r->key) + 2))) {
      memcpy(c->url, base, bl);
      c->url[bl] = '/';
      memcpy(c->url + bl + 1, r->key, strlen(r->key) + 1);
    }
    if (!c || !c->url) {
      if (c) ref_call_free(c);
      ref_free(r);
      continue;
    }
    c->f = f;
    c->r = r;
    const fx_profile *prof = fx_profile_for(&e->ts->profiles, e->tenant->id);
    fx_fhir_request rq = {.tenant = e->tenant->id,
                          .scope = fx_tenant_token_scope(e->tenant, 0),
                          .url = c->url,
                          .accept = ref_accept(prof, r->key)};
    fx_err err = {0};
    f->refs_inflight++;
    if (fx_fhir_get(e->b->lp, e->b->sv->app->tokens, &rq, on_ref, c, &err) != 0) {
      f->refs_inflight--;
      char msg[600];
      snprintf(msg, sizeof msg, "reading referenced %s failed: %s", r->key, err.msg);
      publish_failure(e, &f->sink, &(bx_failure){.cls = err.code == FX_EPERM ? FX_EC_FOREIGN_REFERENCE : FX_EC_INVALID_RESPONSE, .message = msg});
      f->bad_lines++;
      ref_call_free(c);
      ref_free(r);
    }
  }
  if (!f->refs_head && f->refs_inflight == 0 && !uv_is_active((uv_handle_t *)&f->timer))
    file_all_published(f);
}

/* A Patient line of an export with per-patient types: its id, for the
 * follow-up patient jobs. An id a patient job would refuse is a failure of
 * the file, so those patients' missing types are never silent. */
static void per_patient_add(bx_file *f, const char *id) {
  bx_export *e = f->e;
  if (!fx_job_patient_valid(id)) {
    char msg[300], names[200];
    fx_types_join(e->job->per_patient_types, ", ", names, sizeof names);
    snprintf(msg, sizeof msg,
             "exported Patient/%.64s has an id a patient job does not take; its %s were not "
             "fetched",
             id, names);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_INVALID_RESPONSE, .url = f->url, .type = "Patient", .message = msg});
    f->bad_lines++;
    return;
  }
  if (f->n_pp == f->cap_pp) {
    size_t cap = f->cap_pp ? f->cap_pp * 2 : 64;
    char **grown = realloc(f->pp_ids, cap * sizeof *grown);
    if (!grown) {
      atomic_store(&f->sink.failed, 1); /* out of memory: downloaded again later */
      return;
    }
    f->pp_ids = grown;
    f->cap_pp = cap;
  }
  if (!(f->pp_ids[f->n_pp] = strdup(id))) {
    atomic_store(&f->sink.failed, 1);
    return;
  }
  f->n_pp++;
}

/* One NDJSON line. Returns 0, or RD_KAFKA_RESP_ERR__QUEUE_FULL to offer the
 * same line again later. */
static int publish_line(bx_file *f, const char *line, size_t n) {
  bx_export *e = f->e;
  const fx_services *p = e->b->sv;
  json_error_t je;
  json_t *res = json_loadb(line, n, 0, &je);
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  char msg[512];
  if (f->is_error) {
    /* The manifest's error files: one OperationOutcome per line. */
    char oo[300] = "";
    if (type && strcmp(type, "OperationOutcome") == 0) {
      char *s = fx_memstr(line, n);
      if (s) fx_fhir_outcome_summary(s, oo, sizeof oo);
      free(s);
    }
    f->line_no++;
    snprintf(msg, sizeof msg, "the server could not export something (error file line %lld)%s%s",
             f->line_no, oo[0] ? ": " : "", oo);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_EXPORT_FAILED, .outcome = oo, .url = f->url, .message = msg});
    f->error_lines++;
    json_decref(res);
    return 0;
  }
  char why[200];
  int not_data = type && (strcmp(type, "OperationOutcome") == 0 || strcmp(type, "Bundle") == 0);
  if (!res || not_data || fx_resource_key_problem(type, id, why, sizeof why)) {
    /* Not publishable: the failure says why, never the id (resources.h). */
    f->line_no++;
    if (!res)
      snprintf(msg, sizeof msg, "line %lld of a %s file is not JSON: %s", f->line_no, f->type,
               je.text);
    else if (not_data)
      snprintf(msg, sizeof msg, "line %lld of a %s file is a %s, not a resource to publish",
               f->line_no, f->type, type);
    else
      snprintf(msg, sizeof msg, "line %lld of a %s file is a resource that %s; not published",
               f->line_no, f->type, why);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_INVALID_RESPONSE, .url = f->url, .type = f->type, .message = msg});
    f->bad_lines++;
    json_decref(res);
    return 0;
  }
  if (!json_object_get(f->counts, type) && !json_object_get(e->counts, type) &&
      json_object_size(f->counts) + json_object_size(e->counts) >= MAX_COUNTED_TYPES) {
    const char *file_type = fx_resource_type_name_ok(f->type) ? f->type : NULL;
    f->line_no++;
    snprintf(msg, sizeof msg,
             "line %lld of a %s file is a %s, and the export already has %d resource types; a "
             "FHIR server has fewer, so the line is not published",
             f->line_no, file_type ? file_type : "(unnamed)", type, MAX_COUNTED_TYPES);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_INVALID_RESPONSE, .url = f->url, .type = type, .message = msg});
    f->bad_lines++;
    json_decref(res);
    return 0;
  }
  if (n > p->max_message) {
    f->line_no++;
    snprintf(msg, sizeof msg, "%s/%s is %zu bytes, more than the %zu bytes a message may have",
             type, id, n, p->max_message);
    publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_TOO_LARGE, .url = f->url, .type = type, .message = msg});
    f->bad_lines++;
    json_decref(res);
    return 0;
  }
  char now[32];
  char *key = fx_result_key(e->tenant->id, type, id);
  if (!key) {
    json_decref(res);
    return RD_KAFKA_RESP_ERR__QUEUE_FULL; /* out of memory: offer it again shortly */
  }
  fx_iso_now(now);
  rd_kafka_headers_t *h = headers_for(e);
  const char *patient = patient_of(res, type, id);
  if (patient && fx_fhir_id_ok(patient, strlen(patient)))
    rd_kafka_header_add(h, "fhirx-patient", -1, patient, -1);
  rd_kafka_header_add(h, "fhirx-source-url", -1, f->shown, -1);
  rd_kafka_header_add(h, "fhirx-fetched-at", -1, now, -1);
  rd_kafka_header_add(h, "fhirx-via", -1, "bulk", -1);
  char *value = fx_memstr(line, n); /* the resource exactly as the server wrote it */
  if (!value) {
    free(key);
    json_decref(res);
    rd_kafka_headers_destroy(h);
    return RD_KAFKA_RESP_ERR__QUEUE_FULL; /* out of memory: offer it again shortly */
  }
  /* Offered, not queued: when the producer is full the line stays in the
   * file's buffer and the download pauses (memory stays bounded). */
  if (fx_out_offer(e->b->out, &f->sink, p->app->cfg->topics.results, key, value, n, h) ==
      FX_EAGAIN) {
    free(key);
    free(value);
    rd_kafka_headers_destroy(h);
    json_decref(res);
    return RD_KAFKA_RESP_ERR__QUEUE_FULL;
  }
  free(key);
  count_add(f->counts, type, 1); /* before res, which owns type, is released */
  collect_refs(f, res, 1);
  if (strcmp(type, "Patient") == 0 && !fx_types_empty(e->job->per_patient_types))
    per_patient_add(f, id);
  json_decref(res);
  f->line_no++;
  atomic_fetch_add(&p->metrics->results, 1);
  return 0;
}

/* Publishes the complete lines in the buffer (and the last, unterminated
 * one when final). Returns 1 when the producer's queue is full. */
static int process_lines(bx_file *f, int final) {
  size_t max_line = f->e->b->sv->max_message + 65536;
  while (f->off < f->len) {
    char *start = f->buf + f->off;
    size_t avail = f->len - f->off;
    char *nl = memchr(start, '\n', avail);
    if (!nl && !final) {
      if (avail > max_line && !f->skipping) {
        /* Longer than any message may be: report it once, skip to its end. */
        char msg[300];
        f->line_no++;
        snprintf(msg, sizeof msg, "line %lld of a %s file is longer than %zu bytes", f->line_no,
                 f->type, max_line);
        publish_failure(f->e, &f->sink, &(bx_failure){.cls = FX_EC_TOO_LARGE, .url = f->url, .type = fx_resource_type_name_ok(f->type) ? f->type : NULL, .message = msg});
        f->bad_lines++;
        f->skipping = 1;
      }
      if (f->skipping) f->off = f->len;
      break;
    }
    size_t n = nl ? (size_t)(nl - start) : avail;
    if (f->skipping) {
      f->skipping = 0;
      f->off += n + (nl ? 1 : 0);
      continue;
    }
    size_t m = n;
    while (m && (start[m - 1] == '\r' || start[m - 1] == ' ' || start[m - 1] == '\t')) m--;
    if (m && publish_line(f, start, m) == RD_KAFKA_RESP_ERR__QUEUE_FULL) return 1;
    f->off += n + (nl ? 1 : 0);
  }
  if (f->off) { /* keep only the unfinished line */
    memmove(f->buf, f->buf + f->off, f->len - f->off);
    f->len -= f->off;
    f->off = 0;
  }
  return 0;
}

static void on_blocked_timer(uv_timer_t *t) {
  bx_file *f = t->data;
  if (file_dead(f)) {
    f->len = f->off = 0;
    if (f->phase == F_DRAIN)
      file_release(f);
    else if (f->paused && f->xfer) {
      f->paused = 0;
      fx_http_resume(f->xfer); /* the sink refuses the next chunk: the transfer ends */
    }
    return;
  }
  if (process_lines(f, f->phase == F_DRAIN)) {
    uv_timer_start(&f->timer, on_blocked_timer, BLOCKED_RETRY_MS, 0);
    return;
  }
  if (f->phase == F_DRAIN) {
    refs_pump(f); /* then done */
  } else if (f->paused && f->xfer) {
    f->paused = 0;
    fx_http_resume(f->xfer); /* may call on_chunk before it returns */
  }
}

static int on_chunk(const char *data, size_t n, void *arg, fx_http_xfer *x) {
  bx_file *f = arg;
  f->xfer = x;
  if (file_dead(f)) return -1;
  if (f->len + n > f->cap) {
    size_t cap = f->cap ? f->cap : 65536;
    while (cap < f->len + n) cap *= 2;
    char *grown = realloc(f->buf, cap);
    if (!grown) return -1;
    f->buf = grown;
    f->cap = cap;
  }
  memcpy(f->buf + f->len, data, n);
  f->len += n;
  if (process_lines(f, 0)) {
    f->paused = 1;
    if (!uv_is_active((uv_handle_t *)&f->timer))
      uv_timer_start(&f->timer, on_blocked_timer, BLOCKED_RETRY_MS, 0);
    return FX_HTTP_PAUSE;
  }
  return 0;
}

static void on_file_retry(uv_timer_t *t) {
  bx_file *f = t->data;
  if (file_dead(f)) {
    file_release(f);
    return;
  }
  file_start(f);
}

/* A download failed: try the file again, or fail the export. */
static void file_failed(bx_file *f, fx_errclass cls, long status, long after_ms, const char *msg) {
  bx_export *e = f->e;
  const fx_bulk_conf *bc = &e->b->sv->app->cfg->bulk;
  f->len = f->off = 0;
  f->skipping = 0;
  /* References found so far stay queued: the export will not find them again. */
  if (cls == FX_EC_TRANSIENT && ++f->tries <= bc->retries && fx_wall_ms() < e->deadline_ms) {
    json_object_clear(f->counts);
    pp_clear(f);
    f->error_lines = f->bad_lines = f->line_no = 0;
    f->redirects = 0;
    uint64_t d = fx_bulk_poll_delay(after_ms, 0, (uint64_t)bc->poll_min_ms << (f->tries - 1),
                                    (uint64_t)bc->poll_max_ms, fx_wall_ms(), e->deadline_ms);
    char attempt[16];
    snprintf(attempt, sizeof attempt, "%d", f->tries);
    fx_log(FX_LOG_WARN, "bulk file download failed; trying again", "job_id", e->job_id,
           "error_class", fx_errclass_name(cls), "try", attempt, NULL);
    if (fx_log_enabled(FX_LOG_DEBUG))
      fx_log(FX_LOG_DEBUG, "bulk file download failed: details", "job_id", e->job_id, "reason",
             msg, NULL);
    f->phase = F_WAIT;
    uv_timer_stop(&f->timer);
    uv_timer_start(&f->timer, on_file_retry, d, 0);
    return;
  }
  if (cls == FX_EC_TRANSIENT && fx_wall_ms() >= e->deadline_ms) cls = FX_EC_DEADLINE;
  export_fail(e, cls, status, msg);
  file_release(f);
}

static void on_file_response(fx_http_response *res, void *arg);

static void on_file_fhir(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  bx_file *f = arg;
  if (ae) {
    f->xfer = NULL;
    if (file_dead(f)) {
      file_release(f);
      return;
    }
    int transient;
    fx_errclass cls = fx_errclass_of_auth(ae, &transient);
    file_failed(f, transient ? FX_EC_TRANSIENT : cls, ae->http_status,
                ae->retry_after_ms > 0 ? ae->retry_after_ms : -1, ae->err.msg);
    return;
  }
  on_file_response(res, f);
}

/* Sends the file's request: with the token when the manifest requires it
 * (file_start checked that the URL may have it), else (a redirect to
 * storage, or a manifest that does not require the token) without any
 * Authorization header. */
static void file_send(bx_file *f, const char *url) {
  bx_export *e = f->e;
  fx_bulk *b = e->b;
  f->phase = F_XFER;
  f->xfer = NULL;
  fx_err err = {0};
  int rc;
  if (f->redirects == 0 && e->requires_token) {
    fx_fhir_request rq = {.tenant = e->tenant->id,
                          .scope = fx_tenant_token_scope(e->tenant, 1),
                          .url = url,
                          .accept = "application/fhir+ndjson",
                          .sink = on_chunk,
                          .sink_arg = f,
                          .max_body = (size_t)1 << 40};
    rc = fx_fhir_get(b->lp, b->sv->app->tokens, &rq, on_file_fhir, f, &err);
  } else {
    fx_http_request rq = {.url = url,
                          .accept = "application/fhir+ndjson",
                          .sink = on_chunk,
                          .sink_arg = f,
                          .max_body = (size_t)1 << 40};
    rc = b->lp->http ? fx_http_send(b->lp->http, &rq, on_file_response, f, &err) : FX_ECANCELED;
  }
  if (rc) file_failed(f, FX_EC_TRANSIENT, 0, -1, err.msg[0] ? err.msg : "cannot send");
}

static void file_start(bx_file *f) {
  bx_export *e = f->e;
  fx_token_scope scope = fx_tenant_token_scope(e->tenant, 1);
  if (f->redirects == 0 && e->requires_token && !fx_url_may_carry_token(f->url, &scope)) {
    char shown[512], msg[700];
    fx_url_redact(f->url, shown, sizeof shown);
    snprintf(msg, sizeof msg,
             "manifest file %s is on another origin than the tenant's FHIR base but requires "
             "the access token; the token is not sent there (add the host to "
             "tenants[].token_url_prefixes if it belongs to the server)",
             shown);
    export_fail(e, FX_EC_FOREIGN_REFERENCE, 0, msg);
    file_release(f);
    return;
  }
  file_send(f, f->url);
}

static void on_file_response(fx_http_response *res, void *arg) {
  bx_file *f = arg;
  f->xfer = NULL;
  f->paused = 0;
  if (file_dead(f)) {
    file_release(f);
    return;
  }
  char msg[700];
  if (res->result) {
    file_failed(f, res->result == FX_ETOOLARGE ? FX_EC_TOO_LARGE : FX_EC_TRANSIENT, 0, -1,
                res->error);
    return;
  }
  long st = res->status;
  if (st >= 200 && st < 300) {
    f->phase = F_DRAIN;
    if (process_lines(f, 1)) {
      if (!uv_is_active((uv_handle_t *)&f->timer))
        uv_timer_start(&f->timer, on_blocked_timer, BLOCKED_RETRY_MS, 0);
      return;
    }
    refs_pump(f); /* then done */
    return;
  }
  if (st == 301 || st == 302 || st == 303 || st == 307 || st == 308) {
    const char *loc = fx_http_header(res, "Location");
    char *next = loc ? resolve(res->url, loc) : NULL;
    if (!next || ++f->redirects > REDIRECTS_MAX ||
        (strncmp(next, "https://", 8) != 0 && strncmp(next, "http://", 7) != 0)) {
      free(next);
      snprintf(msg, sizeof msg, "a bulk file download was redirected %s",
               loc ? "too often or to a URL that is not http(s)" : "without a Location");
      file_failed(f, FX_EC_INVALID_RESPONSE, st, -1, msg);
      return;
    }
    /* Storage elsewhere (a pre-signed URL): followed without the token. */
    file_send(f, next);
    free(next);
    return;
  }
  describe(res, f->redirects ? "the storage URL of a bulk file" : "a bulk file URL", msg,
           sizeof msg);
  if (st == 404 || st == 410 || (f->redirects && st == 403))
    file_failed(f, FX_EC_EXPORT_EXPIRED, st, -1, msg);
  else if (transient_status(st) || st >= 500)
    file_failed(f, FX_EC_TRANSIENT, st, fx_http_retry_after_ms(res), msg);
  else
    file_failed(f, fx_errclass_of_status(st), st, -1, msg);
}

/* Starts downloads up to bulk.parallel_downloads; finishes the export when
 * every file is done. */
static void pump_files(bx_export *e) {
  if (e->abandoned || e->removed || e->state != BX_DOWNLOADING) return;
  fx_bulk *b = e->b;
  size_t max = (size_t)b->sv->app->cfg->bulk.parallel_downloads;
  if (e->n_done == e->n_files && e->running == 0) {
    finish(e);
    return;
  }
  size_t i = e->cursor;
  for (; i < e->n_files && e->running < max && !b->stopping; i++) {
    if (e->done[i]) continue;
    int busy = 0;
    for (bx_file *g = e->files; g; g = g->next) busy |= g->index == i && !g->settled;
    if (busy) continue;
    json_t *it = i < e->n_out ? json_array_get(json_object_get(e->manifest, "output"), i)
                              : json_array_get(json_object_get(e->manifest, "error"), i - e->n_out);
    bx_file *f = calloc(1, sizeof *f);
    if (!f || !(f->url = strdup(json_string_value(json_object_get(it, "url")))) ||
        !(f->type = strdup(json_string_value(json_object_get(it, "type")))) ||
        !(f->counts = json_object())) {
      if (f) free(f->url), free(f->type), free(f);
      fx_log(FX_LOG_ERROR, "out of memory starting a bulk file download", NULL);
      return;
    }
    f->e = e;
    f->index = i;
    fx_url_redact(f->url, f->shown, sizeof f->shown);
    f->is_error = i >= e->n_out;
    fx_sink_init(&f->sink, b->lp, on_file_settled);
    fx_sink_open(&f->sink);
    uv_timer_init(b->uv, &f->timer);
    f->timer.data = f;
    f->next = e->files;
    e->files = f;
    e->refs++;
    e->running++;
    b->live_files++;
    file_start(f);
  }
  e->cursor = i;
}

/* ---- steps ------------------------------------------------------------------------- */

static void export_step(bx_export *e) {
  if (e->removed || e->abandoned) return;
  if (fx_wall_ms() >= e->deadline_ms) {
    char msg[200];
    snprintf(msg, sizeof msg, "the export did not finish within %lld hours (bulk.deadline_hours)",
             e->b->sv->app->cfg->bulk.deadline_hours);
    export_fail(e, FX_EC_DEADLINE, 0, msg);
    return;
  }
  switch (e->state) {
  case BX_PENDING: kickoff(e); break;
  case BX_EXPORTING:
  case BX_DOWNLOADING: poll_status(e); break; /* a resumed download re-reads the manifest */
  default: break;
  }
}

/* Starts (or resumes) an export whose partition has been read to its end. */
static void export_start(bx_export *e) {
  if (e->started || e->removed) return;
  e->started = 1;
  fx_bulk *b = e->b;
  atomic_fetch_add(&b->sv->metrics->bulk_active, 1);
  e->started_ms = fx_now_ms();
  e->ts = fx_tenant_slot_get(b->sv->tenants);
  json_t *job = json_object_get(e->rec, "job");
  size_t len = 0;
  char *text = job ? dump(job, &len) : NULL;
  fx_job_error jerr;
  memset(&jerr, 0, sizeof jerr);
  if (!text || fx_job_parse(text, len, &e->ts->profiles, &b->sv->limits, &e->job, &jerr) != 0 ||
      e->job->kind != FX_JOB_BULK) {
    free(text);
    export_fail(e, text ? jerr.cls : FX_EC_INVALID_JOB, 0,
                jerr.msg[0] ? jerr.msg
                           : "the fhirx.bulk record holds no bulk job: only fhirx writes to that "
                             "topic; enqueue bulk jobs on the jobs topic");
    return;
  }
  free(text);
  e->tenant = fx_tenant_set_find(e->ts, e->job->tenant);
  if (!json_object_get(e->rec, "started_at")) {
    char now[32];
    fx_iso_now(now);
    json_object_set_new(e->rec, "started_at", json_string(now));
  }
  json_int_t dl = json_integer_value(json_object_get(e->rec, "deadline_ms"));
  e->deadline_ms = dl > 0 ? (uint64_t)dl
                          : fx_wall_ms() + (uint64_t)b->sv->app->cfg->bulk.deadline_hours * b->hour_ms;
  const char *su = json_string_value(json_object_get(e->rec, "status_url"));
  if (su && !(e->status_url = strdup(su))) {
    export_fail(e, FX_EC_INVALID_JOB, 0, "out of memory");
    return;
  }
  if (e->state != BX_PENDING) {
    atomic_fetch_add(&b->sv->metrics->bulk_resumed, 1);
    fx_log(FX_LOG_INFO, "resuming a bulk export", "job_id", e->job_id, "tenant", e->job->tenant,
           "state", state_names[e->state], NULL);
  }
  export_step(e);
}

/* Drops an export whose partition went to another worker: it resumes there. */
static void export_abandon(bx_export *e) {
  e->abandoned = 1;
  uv_timer_stop(&e->timer);
  for (bx_file *f = e->files; f; f = f->next) {
    if (f->phase == F_WAIT) {
      uv_timer_stop(&f->timer);
      file_release(f);
    } else if (f->phase == F_XFER && f->paused && f->xfer) {
      f->paused = 0;
      uv_timer_stop(&f->timer);
      fx_http_resume(f->xfer); /* the sink refuses the next chunk */
    } else if (f->phase == F_DRAIN && !uv_is_active((uv_handle_t *)&f->timer)) {
      uv_timer_start(&f->timer, on_blocked_timer, 0, 0);
    } else if (f->phase == F_REFS && f->refs_inflight == 0) {
      uv_timer_stop(&f->timer);
      refs_pump(f); /* drops the queue and releases the file */
    }
  }
  if (e->started) atomic_fetch_sub(&e->b->sv->metrics->bulk_active, 1);
  export_remove(e);
}

/* ---- the bulk topic ---------------------------------------------------------------- */

static bx_part *find_part(fx_bulk *b, int32_t partition) {
  for (size_t i = 0; i < b->n_parts; i++)
    if (b->parts[i].partition == partition) return &b->parts[i];
  return NULL;
}

static int newer(int attempt, long long seq, int than_attempt, long long than_seq) {
  return attempt > than_attempt || (attempt == than_attempt && seq > than_seq);
}

static int state_of(const char *name) {
  for (int i = 0; i < (int)(sizeof state_names / sizeof state_names[0]); i++)
    if (name && strcmp(state_names[i], name) == 0) return i;
  return -1;
}

/* A progress record read from the bulk topic. */
static void apply_record(fx_bulk *b, const rd_kafka_message_t *m) {
  if (!m->key || m->key_len == 0 || m->key_len > 128 || !m->payload) return; /* tombstones */
  json_t *rec = json_loadb(m->payload, m->len, 0, NULL);
  const char *job_id = json_string_value(json_object_get(rec, "job_id"));
  int state = state_of(json_string_value(json_object_get(rec, "state")));
  int attempt = (int)json_integer_value(json_object_get(rec, "attempt"));
  long long seq = json_integer_value(json_object_get(rec, "seq"));
  if (!job_id || state < 0 || attempt < 1) {
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
  if (e && e->started) {
    /* Someone else moved it on: only a newer attempt (a replay) replaces a
     * running export, and only once this one ended, which it cannot have. */
    json_decref(rec);
    return;
  }
  if (state == BX_COMPLETED || state == BX_FAILED) {
    remember_finished(b, job_id, attempt, seq);
    if (e) export_remove(e);
    json_decref(rec);
    return;
  }
  if (e) {
    json_decref(e->rec);
    e->rec = rec;
  } else {
    e = calloc(1, sizeof *e);
    if (!e || !(e->job_id = strdup(job_id)) || !(e->counts = json_object()) ||
        fx_refs_init(&e->refs_asked,
                     (size_t)b->sv->app->cfg->worker.max_references_per_job) != 0) {
      if (e) free(e->job_id), json_decref(e->counts);
      free(e);
      json_decref(rec);
      fx_log(FX_LOG_ERROR, "out of memory tracking a bulk export", NULL);
      return;
    }
    e->b = b;
    e->rec = rec;
    e->refs = 1;
    fx_sink_init(&e->sink, b->lp, on_export_settled);
    uv_timer_init(b->uv, &e->timer);
    e->timer.data = e;
    e->next = b->exports;
    b->exports = e;
    b->live_exports++;
  }
  e->partition = m->partition;
  e->attempt = attempt;
  e->seq = seq;
  e->state = state;
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
  e->first_cls = fx_errclass_parse(json_string_value(json_object_get(rec, "error_class")));
  e->refs_fetched = json_integer_value(json_object_get(rec, "references_fetched"));
  bx_part *p = find_part(b, m->partition);
  if (p && p->caught_up && !b->stopping) export_start(e);
}

static void caught_up(fx_bulk *b, int32_t partition) {
  bx_part *p = find_part(b, partition);
  if (!p || p->caught_up) return;
  p->caught_up = 1;
  for (bx_export *e = b->exports, *next; e; e = next) {
    next = e->next;
    if (e->partition == partition && !b->stopping) export_start(e);
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

/* Eager protocol: everything is revoked; exports resume wherever their
 * partition goes (maybe here again, from its records). */
static void on_revoke(void *ctx, const rd_kafka_topic_partition_list_t *parts) {
  (void)parts;
  fx_bulk *b = ctx;
  for (bx_export *e = b->exports, *next; e; e = next) {
    next = e->next;
    export_abandon(e);
  }
  json_object_clear(b->finished);
  b->n_parts = 0;
}

/* Leaves the group once every export and file is gone and every control
 * record is handed to the producer. */
static int idle(void *ctx) {
  fx_bulk *b = ctx;
  return !b->live_exports && !b->live_files && fx_out_waiting(b->out) == 0;
}

static void maybe_leave(fx_bulk *b) {
  if (b->stopping && b->kt) fx_kthread_check(b->kt);
}

static void on_stop(void *ctx) {
  fx_bulk *b = ctx;
  b->stopping = 1;
  for (bx_export *e = b->exports, *next; e; e = next) {
    next = e->next;
    export_abandon(e);
  }
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

static void on_out_empty(void *ctx) { maybe_leave(ctx); }

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
