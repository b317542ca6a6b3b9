/* What a bulk export writes (bulk_int.h): its progress records on the bulk
 * topic, and its failure records, dead letter and status record, built by
 * out/records.h exactly as a patient job's are. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/strutil.h"
#include "common/url.h"
#include "worker/bulk/bulk_int.h"

json_t *fx_bulk_pending_record(const fx_job *job, const char *topic, int32_t partition,
                               int64_t offset, int64_t timestamp, const char *replayed_from) {
  char now[32];
  fx_iso_now(now);
  json_t *j = fx_job_to_json(job);
  if (!j) return NULL;
  json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:o, s:{s:s, s:i, s:I}, s:I, s:s}", "type",
                        "bulk_progress", "job_id", job->job_id, "tenant", job->tenant, "attempt",
                        job->attempt, "seq", 0, "state", fx_bx_record_name(FX_BXR_PENDING), "job",
                        j, "source", "topic", topic, "partition", (int)partition, "offset",
                        (json_int_t)offset, "timestamp", (json_int_t)timestamp, "updated_at", now);
  if (o && replayed_from && *replayed_from)
    json_object_set_new(o, "replayed_from", json_string(replayed_from));
  return o;
}

/* The job and its source come from the pending record the export began
 * with; topic is "" when it has none. */
fx_rec_job bx_rec_job(const bx_export *e) {
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

rd_kafka_headers_t *bx_headers(const bx_export *e) {
  fx_rec_job j = bx_rec_job(e);
  return fx_rec_headers(&j);
}

/* When the producer's queue is full the record waits in the thread's out
 * queue, in order (out/out.h). */
void bx_emit(fx_bulk *b, fx_sink *sink, const char *topic, const char *key, char *value,
             size_t len, rd_kafka_headers_t *hdrs) {
  fx_out_emit(b->out, sink ? sink : &b->loose, topic, key, value, len, hdrs);
}

void bx_unbuilt(bx_export *e, fx_sink *sink, const char *what) {
  atomic_fetch_add(&e->b->sv->metrics->records_unbuilt, 1);
  fx_log(FX_LOG_ERROR, "a record could not be built; the bulk export redoes that step", "record",
         what, "job_id", e->job_id, NULL);
  if (sink) fx_sink_fail(sink);
}

void bx_publish_progress(bx_export *e) {
  fx_bulk *b = e->b;
  e->progress_dirty = 0;
  char now[32];
  fx_iso_now(now);
  e->seq++;
  json_object_set_new(e->rec, "seq", json_integer(e->seq));
  json_object_set_new(e->rec, "state", json_string(fx_bx_record_name(e->rstate)));
  json_object_set_new(e->rec, "updated_at", json_string(now));
  json_object_set_new(e->rec, "worker", json_string(b->sv->identity));
  if (e->status_url) json_object_set_new(e->rec, "status_url", fx_rec_text(e->status_url));
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
  json_object_set_new(e->rec, "failures_not_recorded", json_integer(e->unrecorded));
  if (e->first_cls != FX_EC_NONE)
    json_object_set_new(e->rec, "error_class", json_string(fx_errclass_name(e->first_cls)));
  json_object_set_new(e->rec, "references_fetched", json_integer(e->refs_fetched));
  size_t len;
  char *value = bx_dump(e->rec, &len);
  /* Not delivered, or not built: only a resume's starting point is older. */
  if (value) bx_emit(b, NULL, b->sv->app->cfg->topics.bulk, e->job_id, value, len, NULL);
  else bx_unbuilt(e, NULL, "progress");
}

/* The patient is null: a bulk job names none. */
void bx_publish_failure(bx_export *e, fx_sink *sink, const bx_failure *fl) {
  const fx_services *p = e->b->sv;
  if (e->first_cls == FX_EC_NONE) e->first_cls = fl->cls;
  fx_rec_job j = bx_rec_job(e);
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
    bx_emit(e->b, sink, p->app->cfg->topics.failures, key, value, len, fx_rec_headers(&j));
  else
    free(value), bx_unbuilt(e, sink, "failure");
  free(key);
}

/* The dead letter: the job as it was (replay re-runs a new export), the
 * cause in the same headers a patient job's dead letter has. */
void bx_publish_dead_letter(bx_export *e, fx_errclass cls, long status, const char *msg) {
  const fx_services *p = e->b->sv;
  json_t *job = json_object_get(e->rec, "job");
  if (!job) return; /* a bulk record without its job: its failure record says so */
  size_t len = 0;
  char *value = bx_dump(job, &len);
  if (!value) {
    bx_unbuilt(e, &e->sink, "dead letter");
    return;
  }
  char now[32];
  fx_iso_now(now);
  fx_rec_job j = bx_rec_job(e);
  if (!j.topic[0]) j.topic = p->app->cfg->topics.jobs;
  fx_rec_dead_letter d = {
      .cls = cls,
      .http_status = status,
      .reason = msg,
      .timestamp = (int64_t)json_integer_value(json_object_get(e->rec, "timestamp")),
      .first_failure = now,
      .last_failure = now,
      .replayed_from = json_string_value(json_object_get(e->rec, "replayed_from"))};
  bx_emit(e->b, &e->sink, p->app->cfg->topics.dlq, e->job_id, value, len,
          fx_rec_dead_letter_headers(&j, &d));
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

void bx_publish_status(bx_export *e) {
  const fx_services *p = e->b->sv;
  int failed = e->end_rstate == FX_BXR_FAILED; /* the export itself failed: dead-lettered */
  char now[32];
  fx_iso_now(now);
  long long patient_resources = bx_count_of(e->counts, "Patient");
  const char *started = json_string_value(json_object_get(e->rec, "started_at"));
  long long tasks = e->n_out ? (long long)e->n_out : 1;
  fx_rec_job j = bx_rec_job(e);
  json_t *bulk = bulk_object(e, patient_resources), *full = json_array();
  fx_rec_status st = {
      .outcome = e->end_outcome,
      /* A bulk job names no patients: `patients` has always carried the
       * Patient resources exported (not the Group's members, which fhirx
       * never reads); kept for readers of older statuses, named properly in
       * bulk. */
      .patients = patient_resources,
      .tasks = tasks,
      .tasks_failed = failed ? tasks : 0,
      .counts = e->counts,
      .resources = bx_counts_sum(e->counts),
      .references_fetched = e->refs_fetched,
      .references_cached = 0,
      .failures = e->error_lines + e->bad_lines + failed,
      .failures_unrecorded = e->unrecorded,
      .error_class = e->end_outcome != FX_OUTCOME_COMPLETED ? e->end_cls : FX_EC_NONE,
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
    bx_unbuilt(e, &e->sink, "status");
    return;
  }
  bx_emit(e->b, &e->sink, p->app->cfg->topics.status, e->job_id, value, len, fx_rec_headers(&j));
  fx_metrics_job_finished(p->metrics, (int)e->end_outcome);
  fx_log(FX_LOG_INFO, "bulk job finished", "job_id", e->job_id, "tenant", j.tenant, "state",
         fx_outcome_name(e->end_outcome), NULL);
}

/* A message for a failed exchange: the server's OperationOutcome if any. */
void bx_describe(const fx_http_response *res, const char *what, char *out, size_t size) {
  char oo[300], redirect[400];
  fx_fhir_outcome_summary(res->body, oo, sizeof oo);
  fx_url_redirect_note(res->status, fx_http_header(res, "Location"), redirect, sizeof redirect);
  fx_utf8_trim(redirect); /* the server's Location, cut on a character */
  snprintf(out, size, "%s answered HTTP %ld%s%s%s%s", what, res->status, redirect[0] ? ": " : "",
           redirect, oo[0] ? ": " : "", oo);
  fx_utf8_trim(out);
}

char *bx_resolve(const char *base, const char *ref) {
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
