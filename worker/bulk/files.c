/* One file of a bulk export's manifest (bulk_int.h): its download, streamed
 * line by line to the results topic, paused while the producer is full; its
 * retries; the references its lines lead to (follow.c) and the per-patient
 * follow-up jobs of its Patients. A file's phases are in life.h.
 *
 * Delivery: every output of a file (results, failure records, follow-up
 * jobs) goes through the file's sink, and the file counts as done only when
 * the sink settles with every output taken. A file given up, or with an
 * output Kafka refused, is downloaded again, whole (at-least-once: results
 * are keyed tenant/Type/id). */
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/strutil.h"
#include "common/url.h"
#include "worker/bulk/bulk_int.h"

static bx_file *file_of(bx_link *k) { return BX_OF(k, bx_file, link); }

/* Moves f on by ev (life.h), keeping it on its phase's list. 0, or -1 when
 * ev does not apply (nothing changes). */
static int move(bx_file *f, fx_bxf_event ev) {
  int next = fx_bxf_next(f->phase, ev);
  if (next == FX_BX_NONE) return -1;
  bx_list_del(&f->e->files[f->phase], &f->link);
  f->phase = (fx_bxf_phase)next;
  bx_list_add(&f->e->files[f->phase], &f->link);
  return 0;
}

size_t bx_files_running(const bx_export *e) {
  size_t n = 0;
  for (int p = 0; p < FX_BXF_SETTLED; p++) n += e->files[p].n;
  return n;
}

size_t bx_files_live(const bx_export *e) {
  return bx_files_running(e) + e->files[FX_BXF_SETTLED].n;
}

/* Nothing more is published for f: its sink fails (it is not done) and is
 * closed; the file ends when what it produced is acknowledged. */
static void give_up(bx_file *f) {
  if (move(f, FX_BXF_GIVE_UP) != 0) return;
  uv_timer_stop(&f->timer);
  f->len = f->off = 0;
  fx_sink_fail(&f->sink);
  fx_sink_close(&f->sink);
}

/* ---- per-patient follow-up jobs --------------------------------------------------- */

static void pp_clear(bx_file *f) {
  for (size_t i = 0; i < f->n_pp; i++) free(f->pp_ids[i]);
  free(f->pp_ids);
  f->pp_ids = NULL;
  f->n_pp = f->cap_pp = 0;
  json_array_clear(f->pp_jobs);
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
             "exported Patient/%.*s has an id a patient job does not take; its %s were not "
             "fetched",
             (int)fx_utf8_cut(id, 64), id, names);
    bx_publish_failure(e, &f->sink,
                       &(bx_failure){.cls = FX_EC_INVALID_RESPONSE,
                                     .url = f->url,
                                     .type = "Patient",
                                     .message = msg});
    f->bad_lines++;
    return;
  }
  if (f->n_pp == f->cap_pp) {
    size_t cap = f->cap_pp ? f->cap_pp * 2 : 64;
    char **grown = realloc(f->pp_ids, cap * sizeof *grown);
    if (!grown) {
      fx_sink_fail(&f->sink); /* out of memory: downloaded again later */
      return;
    }
    f->pp_ids = grown;
    f->cap_pp = cap;
  }
  if (!(f->pp_ids[f->n_pp] = strdup(id))) {
    fx_sink_fail(&f->sink);
    return;
  }
  f->n_pp++;
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
    size_t len;
    char *value = NULL;
    if (job) {
      if (e->job->follow_references) json_object_set_new(job, "follow_references", json_true());
      json_object_set_new(job, "attempt", json_integer(e->attempt));
      value = bx_dump(job, &len);
      json_decref(job);
    }
    if (!value) {
      bx_unbuilt(e, &f->sink, "per-patient job"); /* the file is downloaded again later */
      break;
    }
    bx_emit(e->b, &f->sink, p->app->cfg->topics.jobs, id, value, len, NULL);
    if (!f->pp_jobs) f->pp_jobs = json_array();
    json_array_append_new(f->pp_jobs, json_string(id));
  }
  if (!types) fx_sink_fail(&f->sink);
  json_decref(types);
}

/* ---- lines --------------------------------------------------------------------- */

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

/* A line that is not published: a failure of the file that says why. */
static void line_failed(bx_file *f, fx_errclass cls, const char *type, const char *msg) {
  bx_publish_failure(f->e, &f->sink,
                     &(bx_failure){.cls = cls, .url = f->url, .type = type, .message = msg});
  f->bad_lines++;
}

/* A line of a manifest's error file (one OperationOutcome per line): a
 * failure record of class export_failed. */
static void error_line(bx_file *f, const char *type, const char *line, size_t n) {
  char oo[300] = "", msg[512];
  if (type && strcmp(type, "OperationOutcome") == 0) {
    char *s = fx_memstr(line, n);
    if (s) fx_fhir_outcome_summary(s, oo, sizeof oo);
    free(s);
  }
  f->line_no++;
  snprintf(msg, sizeof msg, "the server could not export something (error file line %lld)%s%s",
           f->line_no, oo[0] ? ": " : "", oo);
  bx_publish_failure(f->e, &f->sink,
                     &(bx_failure){.cls = FX_EC_EXPORT_FAILED,
                                   .outcome = oo,
                                   .url = f->url,
                                   .message = msg});
  f->error_lines++;
}

/* 1 when the line (res, parsed or NULL) cannot be published: a failure says
 * why, never the id (resources.h). */
static int unpublishable(bx_file *f, json_t *res, const json_error_t *je, size_t n) {
  bx_export *e = f->e;
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  char msg[512], why[200];
  int not_data = type && (strcmp(type, "OperationOutcome") == 0 || strcmp(type, "Bundle") == 0);
  if (!res || not_data || fx_resource_key_problem(type, id, why, sizeof why)) {
    f->line_no++;
    if (!res)
      snprintf(msg, sizeof msg, "line %lld of a %s file is not JSON: %s", f->line_no, f->type,
               je->text);
    else if (not_data)
      snprintf(msg, sizeof msg, "line %lld of a %s file is a %s, not a resource to publish",
               f->line_no, f->type, type);
    else
      snprintf(msg, sizeof msg, "line %lld of a %s file is a resource that %s; not published",
               f->line_no, f->type, why);
    fx_utf8_trim(msg); /* the manifest's type and the line's are the server's text */
    line_failed(f, FX_EC_INVALID_RESPONSE, f->type, msg);
    return 1;
  }
  if (!json_object_get(f->counts, type) && !json_object_get(e->counts, type) &&
      json_object_size(f->counts) + json_object_size(e->counts) >= MAX_COUNTED_TYPES) {
    const char *file_type = fx_resource_type_name_ok(f->type) ? f->type : NULL;
    f->line_no++;
    snprintf(msg, sizeof msg,
             "line %lld of a %s file is a %s, and the export already has %d resource types; a "
             "FHIR server has fewer, so the line is not published",
             f->line_no, file_type ? file_type : "(unnamed)", type, MAX_COUNTED_TYPES);
    line_failed(f, FX_EC_INVALID_RESPONSE, type, msg);
    return 1;
  }
  size_t max = e->b->sv->max_message;
  if (n > max) {
    f->line_no++;
    snprintf(msg, sizeof msg, "%s/%s is %zu bytes, more than the %zu bytes a message may have",
             type, id, n, max);
    line_failed(f, FX_EC_TOO_LARGE, type, msg);
    return 1;
  }
  return 0;
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
  if (f->is_error) error_line(f, type, line, n);
  if (f->is_error || unpublishable(f, res, &je, n)) {
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
  rd_kafka_headers_t *h = bx_headers(e);
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
  bx_count_add(f->counts, type, 1); /* before res, which owns type, is released */
  bx_follow_collect(f, res, 1);
  if (strcmp(type, "Patient") == 0 && !fx_types_empty(e->job->per_patient_types))
    per_patient_add(f, id);
  json_decref(res);
  f->line_no++;
  return 0;
}

/* Publishes the complete lines in the buffer (and the last, unterminated
 * one when final). Returns 1 when the producer's queue is full. */
static int process_lines(bx_file *f, int final) {
  size_t max_line = f->e->b->sv->max_message + 65536;
  while (f->off < f->len) {
    char *start = f->buf + f->off;
    size_t avail = f->len - f->off;
    size_t m;
    size_t take = fx_bulk_line(start, avail, final, &m);
    if (!take) {
      if (avail > max_line && !f->skipping) {
        /* Longer than any message may be: report it once, skip to its end. */
        char msg[300];
        f->line_no++;
        snprintf(msg, sizeof msg, "line %lld of a %s file is longer than %zu bytes", f->line_no,
                 f->type, max_line);
        fx_utf8_trim(msg); /* the manifest's type is the server's text */
        line_failed(f, FX_EC_TOO_LARGE, fx_resource_type_name_ok(f->type) ? f->type : NULL, msg);
        f->skipping = 1;
      }
      if (f->skipping) f->off = f->len;
      break;
    }
    if (f->skipping) {
      f->skipping = 0;
      f->off += take;
      continue;
    }
    if (m && publish_line(f, start, m) == RD_KAFKA_RESP_ERR__QUEUE_FULL) return 1;
    f->off += take;
  }
  if (f->off) { /* keep only the unfinished line */
    memmove(f->buf, f->buf + f->off, f->len - f->off);
    f->len -= f->off;
    f->off = 0;
  }
  return 0;
}

/* ---- the end of a file --------------------------------------------------------- */

/* Every line is published: on to the references it found. */
static void lines_done(bx_file *f) {
  if (move(f, FX_BXF_LINES_DONE) == 0) bx_follow_pump(f);
}

/* follow.c: nothing is queued or in flight any more. Lines and references
 * all published, the file waits for Kafka's acknowledgements. */
static void on_follow_done(bx_file *f) {
  if (bx_file_dead(f)) {
    give_up(f);
    return;
  }
  enqueue_per_patient(f);
  if (move(f, FX_BXF_REFS_DONE) == 0) fx_sink_close(&f->sink);
}

static void on_file_closed(uv_handle_t *h) {
  bx_file *f = h->data;
  bx_export *e = f->e;
  bx_list_del(&e->files[f->phase], &f->link);
  bx_follow_clear(f);
  pp_clear(f);
  json_decref(f->pp_jobs);
  free(f->buf);
  json_decref(f->counts);
  free(f->url);
  free(f->type);
  free(f);
  e->b->file_up->freed(e);
}

/* On the bulk thread: every output of the file is acknowledged (or
 * refused). A file that was given up failed its sink: not delivered. */
static void on_sink_settled(fx_sink *s, int failed) {
  bx_file *f = (bx_file *)s;
  bx_export *e = f->e;
  move(f, FX_BXF_SETTLE);
  e->busy[f->index] = 0;
  if (failed && f->index < e->cursor) e->cursor = f->index; /* downloaded again, whole */
  e->b->file_up->settled(f, !failed);
  uv_close((uv_handle_t *)&f->timer, on_file_closed);
}

/* ---- the download ------------------------------------------------------------------ */

static void file_start(bx_file *f);

/* The producer had no room: the buffered lines are offered again, then the
 * transfer resumes (PAUSED) or the file moves on (DRAINING). */
static void on_blocked_timer(uv_timer_t *t) {
  bx_file *f = t->data;
  int dead = bx_file_dead(f);
  if (dead) f->len = f->off = 0;
  else if (process_lines(f, f->phase == FX_BXF_DRAINING)) {
    uv_timer_start(&f->timer, on_blocked_timer, BLOCKED_RETRY_MS, 0);
    return;
  }
  if (f->phase == FX_BXF_DRAINING) {
    if (dead) give_up(f);
    else lines_done(f);
  } else if (move(f, FX_BXF_RESUME) == 0 && f->xfer) {
    /* Dead: the sink refuses the next chunk and the transfer ends. Else it
     * may call on_chunk before it returns. */
    fx_http_resume(f->xfer);
  }
}

static int on_chunk(const char *data, size_t n, void *arg, fx_http_xfer *x) {
  bx_file *f = arg;
  f->xfer = x;
  if (bx_file_dead(f)) return -1;
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
    move(f, FX_BXF_PAUSE);
    if (!uv_is_active((uv_handle_t *)&f->timer))
      uv_timer_start(&f->timer, on_blocked_timer, BLOCKED_RETRY_MS, 0);
    return FX_HTTP_PAUSE;
  }
  return 0;
}

static void on_file_retry(uv_timer_t *t) {
  bx_file *f = t->data;
  if (bx_file_dead(f)) give_up(f);
  else file_start(f);
}

/* A download failed: try the file again, or fail the export. */
static void file_failed(bx_file *f, fx_errclass cls, long status, long after_ms, const char *msg) {
  bx_export *e = f->e;
  const fx_bulk_conf *bc = &e->b->sv->app->cfg->bulk;
  f->len = f->off = 0;
  f->skipping = 0;
  /* References found so far stay queued: the export will not find them again. */
  if (cls == FX_EC_TRANSIENT && ++f->tries <= bc->retries && fx_wall_ms() < e->deadline_ms &&
      move(f, FX_BXF_RETRY) == 0) {
    json_object_clear(f->counts);
    pp_clear(f);
    f->error_lines = f->bad_lines = f->line_no = 0;
    f->unrecorded = 0;
    f->redirects = 0;
    uint64_t backoff =
        fx_bulk_backoff_ms((uint64_t)bc->poll_min_ms, f->tries, (uint64_t)bc->poll_max_ms);
    uint64_t d = fx_bulk_poll_delay(after_ms, 0, backoff, (uint64_t)bc->poll_max_ms,
                                    fx_wall_ms(), e->deadline_ms);
    char attempt[16];
    snprintf(attempt, sizeof attempt, "%d", f->tries);
    fx_log(FX_LOG_WARN, "bulk file download failed; trying again", "job_id", e->job_id,
           "error_class", fx_errclass_name(cls), "try", attempt, NULL);
    if (fx_log_enabled(FX_LOG_DEBUG))
      fx_log(FX_LOG_DEBUG, "bulk file download failed: details", "job_id", e->job_id, "reason",
             msg, NULL);
    uv_timer_stop(&f->timer);
    uv_timer_start(&f->timer, on_file_retry, d, 0);
    return;
  }
  if (cls == FX_EC_TRANSIENT && fx_wall_ms() >= e->deadline_ms) cls = FX_EC_DEADLINE;
  e->b->file_up->fail(e, cls, status, msg);
  give_up(f);
}

static void on_file_response(fx_http_response *res, void *arg);

static void on_file_fhir(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  bx_file *f = arg;
  if (!ae) {
    on_file_response(res, f);
    return;
  }
  f->xfer = NULL;
  if (bx_file_dead(f)) {
    give_up(f);
    return;
  }
  int transient;
  fx_errclass cls = fx_errclass_of_auth(ae, &transient);
  file_failed(f, transient ? FX_EC_TRANSIENT : cls, ae->http_status,
              ae->retry_after_ms > 0 ? ae->retry_after_ms : -1, ae->err.msg);
}

/* Sends the file's request: with the token when the manifest requires it
 * (file_start checked that the URL may have it), else (a redirect to
 * storage, or a manifest that does not require the token) without any
 * Authorization header. */
static void file_send(bx_file *f, const char *url) {
  bx_export *e = f->e;
  fx_bulk *b = e->b;
  move(f, FX_BXF_SEND);
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
    /* Without the token nothing pins the URL to the tenant's server, so a
     * production tenant's download reaches only public addresses unless the
     * operator said otherwise (docs/operations.md "Token-less downloads"). */
    fx_http_request rq = {.url = url,
                          .accept = "application/fhir+ndjson",
                          .sink = on_chunk,
                          .sink_arg = f,
                          .max_body = (size_t)1 << 40,
                          .public_only = e->tenant->environment == FX_ENV_PRODUCTION &&
                                         !e->tenant->allow_private_storage};
    rc = b->lp->http ? fx_http_send(b->lp->http, &rq, on_file_response, f, &err) : FX_ECANCELED;
  }
  if (rc) file_failed(f, FX_EC_TRANSIENT, 0, -1, err.msg[0] ? err.msg : "cannot send");
}

static void file_start(bx_file *f) {
  bx_export *e = f->e;
  fx_token_scope scope = fx_tenant_token_scope(e->tenant, 1);
  if (f->redirects == 0 && e->requires_token && !fx_url_may_carry_token(f->url, &scope)) {
    char shown[512], note[160], msg[900];
    fx_url_redact(f->url, shown, sizeof shown);
    fx_url_problem_note(f->url, note, sizeof note);
    fx_utf8_trim(shown);
    snprintf(msg, sizeof msg,
             note[0] ? "manifest file %s requires the access token%s; the token is not sent "
                       "there"
                     : "manifest file %s is on another origin than the tenant's FHIR base but "
                       "requires the access token%s; the token is not sent there (add the host "
                       "to tenants[].token_url_prefixes if it belongs to the server)",
             shown, note);
    e->b->file_up->fail(e, FX_EC_FOREIGN_REFERENCE, 0, msg);
    give_up(f);
    return;
  }
  file_send(f, f->url);
}

static void on_file_response(fx_http_response *res, void *arg) {
  bx_file *f = arg;
  f->xfer = NULL; /* the transfer is over, paused or not */
  if (bx_file_dead(f)) {
    give_up(f);
    return;
  }
  char msg[700];
  if (res->result == FX_EPERM) { /* public_only: an internal address (file_send) */
    char shown[512], why[1200];
    fx_url_redact(res->url, shown, sizeof shown);
    snprintf(why, sizeof why,
             "bulk file %s was not downloaded: %s. Tenant %s is a production tenant and this "
             "file is fetched without the access token, so only public addresses are allowed; "
             "if the export's storage really is on an internal network, set "
             "tenants[].allow_private_storage to true",
             shown, res->error, f->e->tenant->id);
    file_failed(f, FX_EC_FOREIGN_REFERENCE, 0, -1, why);
    return;
  }
  if (res->result) {
    file_failed(f, res->result == FX_ETOOLARGE ? FX_EC_TOO_LARGE : FX_EC_TRANSIENT, 0, -1,
                res->error);
    return;
  }
  long st = res->status;
  if (st >= 200 && st < 300) {
    move(f, FX_BXF_BODY_END);
    uv_timer_stop(&f->timer); /* a pause's: the lines are offered again here */
    if (process_lines(f, 1)) {
      uv_timer_start(&f->timer, on_blocked_timer, BLOCKED_RETRY_MS, 0);
      return;
    }
    lines_done(f);
    return;
  }
  if (st == 301 || st == 302 || st == 303 || st == 307 || st == 308) {
    const char *loc = fx_http_header(res, "Location");
    char *next = loc ? bx_resolve(res->url, loc) : NULL;
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
  bx_describe(res, f->redirects ? "the storage URL of a bulk file" : "a bulk file URL", msg,
              sizeof msg);
  if (st == 404 || st == 410 || (f->redirects && st == 403))
    file_failed(f, FX_EC_EXPORT_EXPIRED, st, -1, msg);
  else if (bx_transient_status(st) || st >= 500)
    file_failed(f, FX_EC_TRANSIENT, st, fx_metrics_retry_after(f->e->b->sv->metrics, res, 0), msg);
  else
    file_failed(f, fx_errclass_of_status(st), st, -1, msg);
}

/* ---- the export's files ------------------------------------------------------------ */

/* A file for manifest entry i (WAITING), or NULL when out of memory. */
static bx_file *file_new(bx_export *e, size_t i) {
  fx_bulk *b = e->b;
  json_t *it = i < e->n_out ? json_array_get(json_object_get(e->manifest, "output"), i)
                            : json_array_get(json_object_get(e->manifest, "error"), i - e->n_out);
  bx_file *f = calloc(1, sizeof *f);
  if (!f || !(f->url = strdup(json_string_value(json_object_get(it, "url")))) ||
      !(f->type = strdup(json_string_value(json_object_get(it, "type")))) ||
      !(f->counts = json_object())) {
    if (f) free(f->url), free(f->type), free(f);
    return NULL;
  }
  f->e = e;
  f->index = i;
  fx_url_redact(f->url, f->shown, sizeof f->shown);
  f->is_error = i >= e->n_out;
  f->phase = FX_BXF_WAITING;
  bx_list_add(&e->files[f->phase], &f->link);
  fx_sink_init(&f->sink, b->lp, on_sink_settled);
  fx_sink_open(&f->sink);
  uv_timer_init(b->uv, &f->timer);
  f->timer.data = f;
  return f;
}

void bx_files_pump(bx_export *e) {
  fx_bulk *b = e->b;
  size_t max = (size_t)b->sv->app->cfg->bulk.parallel_downloads;
  if (e->pump_at_ms && fx_now_ms() < e->pump_at_ms) return; /* a refusal's back-off (export.c) */
  size_t i = e->cursor;
  for (; i < e->n_files && bx_files_running(e) < max && e->state == FX_BX_DOWNLOADING &&
         !b->stopping;
       i++) {
    if (e->done[i] || e->busy[i]) continue;
    bx_file *f = file_new(e, i);
    if (!f) {
      /* The next file that settles tries again from here; with none, the
       * export fails (transient: a replay runs it again). */
      fx_log(FX_LOG_ERROR, "out of memory starting a bulk file download", NULL);
      e->cursor = i;
      if (!bx_files_running(e))
        b->file_up->fail(e, FX_EC_TRANSIENT, 0, "out of memory starting a file download");
      return;
    }
    e->busy[i] = 1;
    file_start(f);
  }
  e->cursor = i;
}

void bx_files_stop(bx_export *e) {
  bx_link *k, *next; /* each step below leaves other files where they are */
  for (k = e->files[FX_BXF_WAITING].first; k; k = next) {
    next = k->next;
    give_up(file_of(k));
  }
  for (k = e->files[FX_BXF_PAUSED].first; k; k = next) {
    next = k->next;
    bx_file *f = file_of(k);
    uv_timer_stop(&f->timer);
    move(f, FX_BXF_RESUME);
    if (f->xfer) fx_http_resume(f->xfer); /* the sink refuses the next chunk: the transfer ends */
  }
  for (k = e->files[FX_BXF_DRAINING].first; k; k = next) {
    next = k->next;
    bx_file *f = file_of(k);
    if (!uv_is_active((uv_handle_t *)&f->timer))
      uv_timer_start(&f->timer, on_blocked_timer, 0, 0); /* drops the lines, gives it up */
  }
  for (k = e->files[FX_BXF_REFERENCES].first; k; k = next) {
    next = k->next;
    bx_file *f = file_of(k);
    if (f->refs_inflight == 0) {
      uv_timer_stop(&f->timer);
      bx_follow_pump(f); /* drops the queue and gives it up */
    }
  }
}

void bx_files_init(fx_bulk *b) { b->follow_done = on_follow_done; }
