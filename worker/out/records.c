#include "worker/out/records.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/strutil.h"
#include "common/url.h"

/* Dead letters carry the first failure's reason in a header: at most this. */
#define REASON_MAX 512

const char *fx_outcome_name(fx_outcome o) {
  static const char *const names[] = {"completed", "partial", "failed"};
  return names[o];
}

json_t *fx_rec_text(const char *s) {
  if (!s) return json_null();
  json_t *j = json_string(s);
  if (j) return j;
  char *copy = strdup(s);
  if (!copy) return NULL;
  fx_utf8_fix(copy);
  j = json_string(copy);
  free(copy);
  return j;
}

static json_t *or_null(const char *s) { return s && *s ? fx_rec_text(s) : json_null(); }

static char *dump(json_t *o, size_t *len) {
  char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(o);
  *len = s ? strlen(s) : 0;
  return s;
}

static json_t *source(const fx_rec_job *j) {
  return json_pack("{s:o, s:i, s:I}", "topic", fx_rec_text(j->topic ? j->topic : ""),
                   "partition", (int)j->partition, "offset", (json_int_t)j->offset);
}

/* Header values are bytes to Kafka but text to whoever reads them: the same
 * UTF-8 rule, and a bound. Plain ASCII within the bound (job ids, tenants,
 * numbers: nearly every header) is added as it is, without a copy. */
static void header(rd_kafka_headers_t *h, const char *name, const char *value, size_t max) {
  size_t n = 0;
  int ascii = 1;
  for (; n < max && value[n]; n++) ascii &= (unsigned char)value[n] < 0x80;
  if (ascii) {
    rd_kafka_header_add(h, name, -1, value, (ssize_t)n);
    return;
  }
  n = fx_utf8_cut(value, max); /* a character is kept whole or left out */
  char *copy = malloc(n + 1);
  if (!copy) return;
  memcpy(copy, value, n);
  copy[n] = '\0';
  fx_utf8_fix(copy);
  rd_kafka_header_add(h, name, -1, copy, (ssize_t)strlen(copy));
  free(copy);
}

rd_kafka_headers_t *fx_rec_headers(const fx_rec_job *j) {
  char attempt[16];
  rd_kafka_headers_t *h = rd_kafka_headers_new(14);
  header(h, "fhirx-job-id", j->job_id, 256);
  if (j->tenant) header(h, "fhirx-tenant", j->tenant, 256);
  snprintf(attempt, sizeof attempt, "%d", j->attempt);
  rd_kafka_header_add(h, "fhirx-attempt", -1, attempt, -1);
  return h;
}

char *fx_rec_failure_key(const fx_rec_job *j) {
  const char *t = j->tenant ? j->tenant : "";
  size_t a = strlen(t), b = strlen(j->job_id);
  char *key = malloc(a + b + 2);
  if (!key) return NULL;
  memcpy(key, t, a);
  key[a] = '/';
  memcpy(key + a + 1, j->job_id, b + 1);
  return key;
}

char *fx_rec_failure_value(const fx_rec_job *j, const fx_rec_failure *f, size_t *len) {
  char now[32], shown[1024] = "";
  if (!f->time) fx_iso_now(now);
  if (f->url) fx_url_redact(f->url, shown, sizeof shown);
  fx_utf8_trim(shown); /* a long URL is cut on a character */
  json_t *o = json_pack(
      "{s:s, s:o, s:o, s:o, s:o, s:o, s:s, s:b, s:o, s:o, s:o, s:i, s:o, s:s, s:i, s:o}", "type",
      "failure", "job_id", fx_rec_text(j->job_id), "tenant", or_null(j->tenant), "patient",
      or_null(f->patient), "resource_type", or_null(f->resource_type), "reference",
      or_null(f->reference), "error_class", fx_errclass_name(f->cls), "transient",
      fx_errclass_transient(f->cls), "http_status",
      f->http_status ? json_integer(f->http_status) : json_null(), "outcome", or_null(f->outcome),
      "url", or_null(shown), "attempts", f->attempts ? f->attempts : 1, "message",
      fx_rec_text(f->message ? f->message : ""), "time", f->time ? f->time : now, "attempt",
      j->attempt, "source", source(j));
  return dump(o, len);
}

rd_kafka_headers_t *fx_rec_dead_letter_headers(const fx_rec_job *j, const fx_rec_dead_letter *d) {
  char buf[32];
  rd_kafka_headers_t *h = fx_rec_headers(j);
  rd_kafka_header_add(h, "fhirx-error-class", -1, fx_errclass_name(d->cls), -1);
  if (d->http_status) {
    snprintf(buf, sizeof buf, "%ld", d->http_status);
    rd_kafka_header_add(h, "fhirx-http-status", -1, buf, -1);
  }
  header(h, "fhirx-reason", d->reason ? d->reason : "", REASON_MAX);
  header(h, "fhirx-original-topic", j->topic ? j->topic : "", 256);
  snprintf(buf, sizeof buf, "%d", (int)j->partition);
  rd_kafka_header_add(h, "fhirx-original-partition", -1, buf, -1);
  snprintf(buf, sizeof buf, "%lld", (long long)j->offset);
  rd_kafka_header_add(h, "fhirx-original-offset", -1, buf, -1);
  snprintf(buf, sizeof buf, "%lld", (long long)d->timestamp);
  rd_kafka_header_add(h, "fhirx-original-timestamp", -1, buf, -1);
  rd_kafka_header_add(h, "fhirx-first-failure", -1, d->first_failure, -1);
  rd_kafka_header_add(h, "fhirx-last-failure", -1, d->last_failure, -1);
  if (d->replayed_from && *d->replayed_from)
    header(h, "fhirx-replayed-from", d->replayed_from, 300);
  if (d->omitted) rd_kafka_header_add(h, "fhirx-value-omitted", -1, d->omitted, -1);
  return h;
}

char *fx_rec_status_value(const fx_rec_job *j, const fx_rec_status *s, size_t *len) {
  /* "s:O" takes a reference of its own: an array made here is given with "s:o". */
  json_t *types = s->full_types ? json_incref(s->full_types) : json_array();
  json_t *o = json_pack(
      "{s:s, s:o, s:o, s:s, s:i, s:I, s:I, s:I, s:O, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:s,"
      " s:s, s:I, s:o, s:o}",
      "type", "status", "job_id", fx_rec_text(j->job_id), "tenant", or_null(j->tenant), "state",
      fx_outcome_name(s->outcome), "attempt", j->attempt, "patients", (json_int_t)s->patients,
      "tasks", (json_int_t)s->tasks, "tasks_failed", (json_int_t)s->tasks_failed, "counts",
      s->counts, "resources", (json_int_t)s->resources, "references_fetched",
      (json_int_t)s->references_fetched, "references_cached", (json_int_t)s->references_cached,
      "failures", (json_int_t)s->failures, "failures_not_recorded",
      (json_int_t)s->failures_unrecorded, "error_class",
      s->error_class != FX_EC_NONE ? json_string(fx_errclass_name(s->error_class)) : json_null(),
      "full_types", types, "since", or_null(s->since),
      "started_at", s->started_at, "finished_at", s->finished_at, "duration_ms",
      (json_int_t)s->duration_ms, "source", source(j), "worker", fx_rec_text(s->worker));
  if (o && s->bulk) json_object_set(o, "bulk", s->bulk);
  return dump(o, len);
}
