/* One bulk export's life on the bulk thread (bulk_int.h, life.h): its
 * kick-off, status polls and manifest, its files (files.c), and its ending.
 *
 * Ending goes in acknowledged steps, like a patient job: the failure record
 * and dead letter of an export that failed (FAILING), then the status record
 * (REPORTING), then the final progress record and the DELETE on the server
 * (ENDED). A step whose outputs Kafka did not take leaves the export unended
 * (DROPPING): its last progress record stands, and it resumes when its
 * partition is next assigned.
 *
 * Every state change goes through move(), which keeps the export on its
 * state's list (fx_bulk.exports) and fhirx_bulk_exports_active true; what a
 * state waits for is checked in advance(). */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/strutil.h"
#include "common/url.h"
#include "worker/bulk/bulk_int.h"

static void advance(bx_export *e);
static void step(bx_export *e);

/* ---- the lifecycle ------------------------------------------------------------------ */

/* Moves e on by ev (life.h). 0, or -1 when ev does not apply in e's state
 * (nothing changes: the caller drops the event). */
static int move(bx_export *e, fx_bx_event ev) {
  int next = fx_bx_next(e->state, ev);
  if (next == FX_BX_NONE) return -1;
  fx_bulk *b = e->b;
  int was = fx_bx_active(e->state), is = fx_bx_active((fx_bx_state)next);
  bx_list_del(&b->exports[e->state], &e->link);
  e->state = (fx_bx_state)next;
  bx_list_add(&b->exports[e->state], &e->link);
  if (is != was) atomic_fetch_add(&b->sv->metrics->bulk_active, is ? 1 : -1);
  return 0;
}

static void on_export_closed(uv_handle_t *h) {
  bx_export *e = h->data;
  fx_bulk *b = e->b;
  bx_list_del(&b->exports[e->state], &e->link);
  json_decref(e->rec);
  json_decref(e->counts);
  json_decref(e->manifest);
  fx_job_free(e->job);
  fx_refs_free(&e->refs);
  if (e->ts) fx_tenant_set_release(e->ts);
  free(e->status_url);
  free(e->done);
  free(e->job_id);
  free(e);
  bx_maybe_leave(b);
}

static long long published(const bx_export *e) { return bx_counts_sum(e->counts); }

/* The ending begins (FAILING or REPORTING): nothing more is asked of the
 * server or downloaded. A duplicate pending record read later is stale. */
static void begin_ending(bx_export *e, fx_outcome outcome, fx_errclass cls, fx_bx_record rstate,
                         int delete_on_server) {
  e->end_outcome = outcome;
  e->end_cls = cls;
  e->end_rstate = rstate;
  e->end_delete = delete_on_server;
  bx_finished_set(e->b, e->job_id, e->attempt, e->seq + 1);
  uv_timer_stop(&e->timer);
  bx_files_stop(e);
}

static void report_status(bx_export *e) {
  fx_sink_open(&e->sink);
  bx_publish_status(e);
  fx_sink_close(&e->sink);
}

static void export_fail(bx_export *e, fx_errclass cls, long status, const char *msg) {
  if (move(e, FX_BX_FAIL) != 0) return; /* ending already, or given up */
  const char *tenant = json_string_value(json_object_get(e->rec, "tenant"));
  char st[16] = "";
  if (status) snprintf(st, sizeof st, "%ld", status);
  fx_log(FX_LOG_WARN, "bulk export failed", "job_id", e->job_id, "tenant", tenant, "error_class",
         fx_errclass_name(cls), "http_status", st[0] ? st : NULL, NULL);
  /* The reason may quote the server's OperationOutcome, which can name a
   * patient: as for patient jobs, only at debug (it is in the dead letter). */
  if (fx_log_enabled(FX_LOG_DEBUG))
    fx_log(FX_LOG_DEBUG, "bulk export failed: details", "job_id", e->job_id, "reason", msg, NULL);
  /* Some files published already: partial (the dead letter re-runs it
   * whole). An expired export is gone already; any other is cleaned up. */
  begin_ending(e, fx_bx_outcome(1, published(e), 0), cls, FX_BXR_FAILED,
               cls != FX_EC_EXPORT_EXPIRED);
  /* A job that cannot run here names no request (failure.schema.json). */
  int job_level = cls == FX_EC_INVALID_JOB || cls == FX_EC_UNKNOWN_TENANT;
  fx_sink_open(&e->sink);
  bx_publish_failure(e, &e->sink,
                     &(bx_failure){.cls = cls,
                                   .status = job_level ? 0 : status,
                                   .url = job_level ? NULL : e->status_url,
                                   .message = msg});
  bx_publish_dead_letter(e, cls, status, msg);
  fx_sink_close(&e->sink);
}

/* Every file is acknowledged: straight to the status record, whose
 * error_class is the class of the export's first failure record (a
 * reference's not_found, a bad line's invalid_response, an error-file
 * line's export_failed). */
static void finish(bx_export *e) {
  if (move(e, FX_BX_FILES_DONE) != 0) return;
  begin_ending(e, fx_bx_outcome(0, published(e), e->error_lines + e->bad_lines),
               e->first_cls != FX_EC_NONE ? e->first_cls : FX_EC_EXPORT_FAILED, FX_BXR_COMPLETED,
               1);
  report_status(e);
}

static void on_deleted(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  bx_export *e = arg;
  e->requests--;
  if (res && res->result == 0 && res->status >= 200 && res->status < 300)
    fx_log(FX_LOG_DEBUG, "bulk export deleted on the server", "job_id", e->job_id, NULL);
  else
    fx_log(FX_LOG_WARN, "could not delete a finished bulk export on the server", "job_id",
           e->job_id, "error", ae ? ae->err.msg : (res && res->result ? res->error : NULL), NULL);
  advance(e);
}

/* ENDED: record the end, clean up on the server. */
static void end(bx_export *e) {
  fx_bulk *b = e->b;
  e->rstate = e->end_rstate;
  bx_publish_progress(e);
  bx_finished_set(b, e->job_id, e->attempt, e->seq);
  atomic_fetch_add(e->rstate == FX_BXR_COMPLETED ? &b->sv->metrics->bulk_completed
                                                 : &b->sv->metrics->bulk_failed,
                   1);
  if (!e->end_delete || !e->status_url || !e->tenant) return;
  /* The status URL came from this export's kick-off: wherever on the base's
   * origin the server put it, the DELETE reaches it. */
  fx_fhir_request rq = {.tenant = e->tenant->id,
                        .scope = fx_tenant_token_scope(e->tenant, 1),
                        .url = e->status_url,
                        .accept = "application/json",
                        .method = "DELETE"};
  fx_err err = {0};
  e->requests++;
  if (fx_fhir_get(b->lp, b->sv->app->tokens, &rq, on_deleted, e, &err) != 0) e->requests--;
}

/* Kafka has (or refused) the records of the ending's step. */
static void on_export_settled(fx_sink *s, int failed) {
  bx_export *e = (bx_export *)s;
  if (move(e, failed ? FX_BX_NOT_ACKED : FX_BX_ACKED) != 0) return;
  switch (e->state) {
  case FX_BX_REPORTING: report_status(e); return;
  case FX_BX_ENDED: end(e); break;
  case FX_BX_DROPPING:
    fx_log(FX_LOG_ERROR,
           "Kafka did not take a bulk export's final records; it resumes when its partition is "
           "next assigned",
           "job_id", e->job_id, NULL);
    json_object_del(e->b->finished, e->job_id);
    break;
  default: break;
  }
  advance(e);
}

/* The one place a state's wait is checked: the others move on from their
 * callbacks (a timer, an answer, the sink). */
static void advance(bx_export *e) {
  switch (e->state) {
  case FX_BX_DOWNLOADING:
    if (e->n_done == e->n_files && bx_files_running(e) == 0) finish(e);
    else bx_files_pump(e);
    return;
  case FX_BX_ENDED:
  case FX_BX_DROPPING:
    if (e->requests || bx_files_live(e)) return;
    move(e, FX_BX_IDLE);
    uv_close((uv_handle_t *)&e->timer, on_export_closed);
    return;
  case FX_BX_LISTED:    /* bx_export_start moves it */
  case FX_BX_WAITING:   /* its timer */
  case FX_BX_ASKING:    /* its answer */
  case FX_BX_FAILING:   /* its sink */
  case FX_BX_REPORTING: /* its sink */
  case FX_BX_DONE:
  case FX_BX_NSTATES: return;
  }
}

/* ---- files, for files.c -------------------------------------------------------------- */

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

/* Files finish fast and an export may have tens of thousands: their
 * progress is published at most once a second (PROGRESS_MS). A worker that
 * dies in between loses at most that second's files, which the next owner
 * downloads again. */
static void on_export_timer(uv_timer_t *t) {
  bx_export *e = t->data;
  if (e->state != FX_BX_DOWNLOADING) return;
  if (e->progress_dirty) bx_publish_progress(e);
  if (!e->pump_at_ms) return;
  uint64_t now = fx_now_ms();
  if (now < e->pump_at_ms) {
    uv_timer_start(&e->timer, on_export_timer, e->pump_at_ms - now, 0);
  } else {
    e->pump_at_ms = 0;
    advance(e);
  }
}

/* The timer fires within ms (it may be due sooner already). */
static void timer_within(bx_export *e, uint64_t ms) {
  if (uv_is_active((uv_handle_t *)&e->timer) && uv_timer_get_due_in(&e->timer) <= ms) return;
  uv_timer_start(&e->timer, on_export_timer, ms, 0);
}

static void on_file_settled(bx_file *f, int delivered) {
  bx_export *e = f->e;
  if (e->state != FX_BX_DOWNLOADING) return;
  if (delivered) {
    e->done[f->index] = 1;
    e->n_done++;
    const char *k;
    json_t *v;
    json_object_foreach(f->counts, k, v) bx_count_add(e->counts, k, json_integer_value(v));
    per_patient_done(e, f);
    e->error_lines += f->error_lines;
    e->bad_lines += f->bad_lines;
    e->unrecorded += f->unrecorded;
    e->refs_fetched += f->refs_fetched;
    atomic_fetch_add(&e->b->sv->metrics->bulk_files, 1);
    e->progress_dirty = 1;
    timer_within(e, PROGRESS_MS);
  } else {
    /* A result was not delivered: that file is downloaded again, whole, but
     * not at once. What refuses a record (a record over message.max.bytes, a
     * topic gone) refuses it again: downloads start again after a back-off
     * that doubles with each refusal, from bulk.poll_min_ms up to
     * bulk.poll_max_ms; the export's deadline still ends it. */
    const fx_bulk_conf *bc = &e->b->sv->app->cfg->bulk;
    int shift = e->refusals < 20 ? e->refusals : 20;
    uint64_t d = (uint64_t)bc->poll_min_ms << shift;
    if (d > (uint64_t)bc->poll_max_ms) d = (uint64_t)bc->poll_max_ms;
    e->refusals++;
    e->pump_at_ms = fx_now_ms() + d;
    timer_within(e, d);
    char in[24];
    snprintf(in, sizeof in, "%llu", (unsigned long long)d);
    fx_log(FX_LOG_WARN, "a bulk file's results were not all delivered; downloading it again",
           "job_id", e->job_id, "retry_in_ms", in, NULL);
  }
  advance(e);
}

static void on_file_freed(bx_export *e) { advance(e); }

static const bx_file_up file_up = {
    .settled = on_file_settled, .freed = on_file_freed, .fail = export_fail};

/* ---- waits and retries ----------------------------------------------------------------- */

static void on_step_timer(uv_timer_t *t) {
  bx_export *e = t->data;
  if (e->state == FX_BX_WAITING) step(e);
}

static void wait_then_step(bx_export *e, uint64_t ms) {
  if (move(e, FX_BX_WAIT) == 0) uv_timer_start(&e->timer, on_step_timer, ms, 0);
}

/* A transient failure of the current step: retried after a backoff, or, past
 * bulk.retries or the deadline, the export fails. */
static void retry_step(bx_export *e, long after_ms, long status, const char *what) {
  const fx_bulk_conf *bc = &e->b->sv->app->cfg->bulk;
  e->tries++;
  uint64_t now = fx_wall_ms();
  if (e->tries > bc->retries || now >= e->deadline_ms) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s failed %d times in a row (last: %s)",
             fx_bx_record_name(e->rstate), e->tries, what);
    fx_utf8_trim(msg);
    export_fail(e, now >= e->deadline_ms ? FX_EC_DEADLINE : FX_EC_TRANSIENT, status, msg);
    return;
  }
  uint64_t backoff =
      fx_bulk_backoff_ms((uint64_t)bc->poll_min_ms, e->tries, (uint64_t)bc->poll_max_ms);
  wait_then_step(
      e, fx_bulk_poll_delay(after_ms, 0, backoff, (uint64_t)bc->poll_max_ms, now, e->deadline_ms));
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
  if (transient)
    retry_step(e, ae->retry_after_ms > 0 ? ae->retry_after_ms : -1, 0, ae->err.msg);
  else
    export_fail(e, cls, ae->http_status, ae->err.msg);
}

/* Sends a kick-off or a status poll (cb gets e). */
static void ask(bx_export *e, const fx_fhir_request *rq, fx_fhir_cb cb) {
  fx_err err = {0};
  if (move(e, FX_BX_SEND) != 0) return;
  e->requests++;
  if (fx_fhir_get(e->b->lp, e->b->sv->app->tokens, rq, cb, e, &err) != 0) {
    e->requests--;
    export_fail(e, FX_EC_FOREIGN_REFERENCE, 0, err.msg);
  }
}

/* ---- kick-off --------------------------------------------------------------------------- */

/* A 202: the export runs on the server; poll its status URL. */
static void kicked_off(bx_export *e, fx_http_response *res) {
  fx_bulk *b = e->b;
  char msg[800];
  const char *loc = fx_http_header(res, "Content-Location");
  char *url = loc ? bx_resolve(res->url, loc) : NULL;
  if (!url) {
    export_fail(e, FX_EC_INVALID_RESPONSE, 202,
                "the $export kick-off was accepted (202) without a Content-Location to poll");
    return;
  }
  fx_token_scope scope = fx_tenant_token_scope(e->tenant, 1);
  if (!fx_url_may_carry_token(url, &scope)) {
    char shown[200], note[160];
    fx_url_redact(url, shown, sizeof shown);
    fx_url_problem_note(url, note, sizeof note);
    fx_utf8_trim(shown);
    snprintf(msg, sizeof msg,
             "the export's status URL %s is on another origin than the tenant's FHIR base%s; the "
             "token is not sent there, so the export cannot be polled or DELETEd (it stays on "
             "the server until it expires). If that host belongs to the server, add it to "
             "tenants[].token_url_prefixes",
             shown, note);
    free(url);
    export_fail(e, FX_EC_FOREIGN_REFERENCE, 202, msg);
    return;
  }
  free(e->status_url);
  e->status_url = url;
  e->rstate = FX_BXR_EXPORTING;
  e->tries = 0;
  e->wait_ms = 0;
  char now[32];
  fx_iso_now(now);
  json_object_set_new(e->rec, "kicked_off_at", json_string(now));
  bx_publish_progress(e);
  atomic_fetch_add(&b->sv->metrics->bulk_kickoffs, 1);
  fx_log(FX_LOG_INFO, "bulk export started", "job_id", e->job_id, "tenant", e->tenant->id, NULL);
  const fx_bulk_conf *bc = &b->sv->app->cfg->bulk;
  long after = fx_metrics_retry_after(b->sv->metrics, res, FX_RA_POLL);
  wait_then_step(e, fx_bulk_poll_delay(after, 0, (uint64_t)bc->poll_min_ms,
                                       (uint64_t)bc->poll_max_ms, fx_wall_ms(), e->deadline_ms));
}

static void on_kickoff(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  bx_export *e = arg;
  const fx_bulk_conf *bc = &e->b->sv->app->cfg->bulk;
  char msg[512];
  e->requests--;
  if (e->state != FX_BX_ASKING) goto out; /* given up meanwhile */
  if (ae) {
    auth_failed(e, ae);
  } else if (res->result) {
    retry_step(e, -1, 0, res->error);
  } else if (res->status == 202) {
    kicked_off(e, res);
  } else if (res->status == 429) {
    /* Cerner runs one export per client and tenant: wait the other one out
     * (until the deadline), do not fail. */
    uint64_t now = fx_wall_ms();
    if (now >= e->deadline_ms) {
      export_fail(e, FX_EC_DEADLINE, 429,
                  "another export of this client kept the tenant busy until the deadline");
      goto out;
    }
    fx_log(FX_LOG_INFO, "another export of this client is running on the tenant; waiting",
           "job_id", e->job_id, "tenant", e->tenant->id, NULL);
    e->wait_ms =
        fx_bulk_poll_delay(fx_metrics_retry_after(e->b->sv->metrics, res, 0), e->wait_ms,
                           (uint64_t)bc->poll_min_ms,
                           (uint64_t)bc->poll_max_ms, now, e->deadline_ms);
    wait_then_step(e, e->wait_ms);
  } else {
    bx_describe(res, "the $export kick-off", msg, sizeof msg);
    if (bx_transient_status(res->status) || res->status >= 500) {
      retry_step(e, fx_metrics_retry_after(e->b->sv->metrics, res, 0), res->status, msg);
      goto out;
    }
    if (res->status == 404)
      snprintf(msg + strlen(msg), sizeof msg - strlen(msg), " (is Group %s on this tenant?)",
               e->job->group);
    export_fail(e, fx_errclass_of_status(res->status), res->status, msg);
  }
out:
  advance(e);
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
    export_fail(e, FX_EC_INVALID_JOB, 0,
                "the $export kick-off URL would be longer than 8 KB: use fewer or shorter "
                "type_filter entries");
    return;
  }
  static const char *const prefer[] = {"Prefer: respond-async", NULL};
  fx_fhir_request rq = {.tenant = e->tenant->id,
                        .scope = fx_tenant_token_scope(e->tenant, 0),
                        .url = url,
                        .accept = "application/fhir+json",
                        .headers = prefer};
  ask(e, &rq, on_kickoff);
  free(url);
}

/* ---- status polls and the manifest ------------------------------------------------------ */

static int read_manifest(bx_export *e, const fx_http_response *res, char *msg, size_t size) {
  json_error_t je;
  json_t *m = json_loadb(res->body, res->body_len, 0, &je);
  size_t n_out, n_err;
  if (fx_bulk_manifest_check(m, &n_out, &n_err, msg, size) != 0) {
    json_decref(m);
    return -1;
  }
  size_t n = n_out + n_err;
  json_t *rat = json_object_get(m, "requiresAccessToken");
  e->requires_token = !json_is_false(rat);
  const char *tt = json_string_value(json_object_get(m, "transactionTime"));
  fx_utf8_copy(e->transaction_time, sizeof e->transaction_time, tt); /* the server's text */
  /* done[] and busy[] in one block. A resumed export keeps the files it had
   * done, if the manifest is the same size. */
  unsigned char *done = calloc(n ? 2 * n : 1, 1);
  if (!done) {
    json_decref(m);
    snprintf(msg, size, "out of memory");
    return -1;
  }
  json_int_t recorded = json_integer_value(json_object_get(e->rec, "files_total"));
  if ((size_t)recorded == n)
    fx_bulk_ranges_parse(json_object_get(e->rec, "files_done"), done, n);
  else
    json_object_clear(e->counts);
  free(e->done);
  e->done = done;
  e->busy = done + n;
  json_decref(e->manifest);
  e->manifest = m;
  e->n_out = n_out;
  e->n_err = n_err;
  e->n_files = n;
  e->cursor = 0;
  e->n_done = 0;
  for (size_t i = 0; i < n; i++) e->n_done += e->done[i];
  return 0;
}

/* A 200: the manifest. Downloads start (advance). */
static void manifest_ready(bx_export *e, const fx_http_response *res) {
  char msg[512];
  if (read_manifest(e, res, msg, sizeof msg) != 0) {
    export_fail(e, FX_EC_INVALID_RESPONSE, 200, msg);
    return;
  }
  e->tries = 0;
  if (e->rstate != FX_BXR_DOWNLOADING) {
    e->rstate = FX_BXR_DOWNLOADING;
    bx_publish_progress(e);
    char n[24];
    snprintf(n, sizeof n, "%zu", e->n_files);
    fx_log(FX_LOG_INFO, "bulk export ready; downloading", "job_id", e->job_id, "files", n, NULL);
  }
  move(e, FX_BX_MANIFEST);
}

/* A 202: still running. */
static void in_progress(bx_export *e, const fx_http_response *res) {
  const fx_bulk_conf *bc = &e->b->sv->app->cfg->bulk;
  uint64_t now = fx_wall_ms();
  e->tries = 0;
  const char *progress = fx_http_header(res, "X-Progress");
  if (progress) json_object_set_new(e->rec, "progress", json_string(progress));
  if (now >= e->deadline_ms) {
    char msg[200];
    snprintf(msg, sizeof msg, "the export was still running after %lld hours (bulk.deadline_hours)",
             bc->deadline_hours);
    export_fail(e, FX_EC_DEADLINE, 202, msg);
    return;
  }
  e->wait_ms = fx_bulk_poll_delay(fx_metrics_retry_after(e->b->sv->metrics, res, FX_RA_POLL),
                                  e->wait_ms,
                                  (uint64_t)bc->poll_min_ms, (uint64_t)bc->poll_max_ms, now,
                                  e->deadline_ms);
  if (fx_log_enabled(FX_LOG_DEBUG)) {
    char w[24];
    snprintf(w, sizeof w, "%llu", (unsigned long long)e->wait_ms);
    fx_log(FX_LOG_DEBUG, "bulk export in progress", "job_id", e->job_id, "progress", progress,
           "next_poll_ms", w, NULL);
  }
  wait_then_step(e, e->wait_ms);
}

static void on_status(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  bx_export *e = arg;
  char msg[512];
  e->requests--;
  if (e->state != FX_BX_ASKING) goto out; /* given up meanwhile */
  atomic_fetch_add(&e->b->sv->metrics->bulk_polls, 1);
  if (ae) {
    auth_failed(e, ae);
  } else if (res->result) {
    retry_step(e, -1, 0, res->error);
  } else if (res->status == 202) {
    in_progress(e, res);
  } else if (res->status == 200) {
    manifest_ready(e, res);
  } else {
    bx_describe(res, "the export's status URL", msg, sizeof msg);
    if (res->status == 404 || res->status == 410)
      export_fail(e, FX_EC_EXPORT_EXPIRED, res->status, msg);
    else if (bx_transient_status(res->status))
      retry_step(e, fx_metrics_retry_after(e->b->sv->metrics, res, 0), res->status, msg);
    else
      /* Bulk Data: an error status (4xx/5xx with an OperationOutcome) means
       * the export failed; a new one may work, so it is replayable. */
      export_fail(e, res->status >= 500 ? FX_EC_EXPORT_FAILED : fx_errclass_of_status(res->status),
                  res->status, msg);
  }
out:
  advance(e);
}

static void poll_status(bx_export *e) {
  fx_fhir_request rq = {.tenant = e->tenant->id,
                        .scope = fx_tenant_token_scope(e->tenant, 1),
                        .url = e->status_url,
                        .accept = "application/json"};
  ask(e, &rq, on_status);
}

/* The next request, by what the export's record says: a kick-off, or a
 * status poll (a resumed download re-reads the manifest). */
static void step(bx_export *e) {
  if (fx_wall_ms() >= e->deadline_ms) {
    char msg[200];
    snprintf(msg, sizeof msg, "the export did not finish within %lld hours (bulk.deadline_hours)",
             e->b->sv->app->cfg->bulk.deadline_hours);
    export_fail(e, FX_EC_DEADLINE, 0, msg);
    return;
  }
  switch (e->rstate) {
  case FX_BXR_PENDING: kickoff(e); return;
  case FX_BXR_EXPORTING:
  case FX_BXR_DOWNLOADING: poll_status(e); return;
  case FX_BXR_COMPLETED:
  case FX_BXR_FAILED:
  case FX_BXR_COUNT: return; /* never started: bulk.c forgets ended exports */
  }
}

/* ---- for bulk.c ---------------------------------------------------------------------------- */

void bx_exports_init(fx_bulk *b) {
  b->file_up = &file_up;
  bx_files_init(b);
}

bx_export *bx_export_new(fx_bulk *b, const char *job_id, json_t *rec) {
  bx_export *e = calloc(1, sizeof *e);
  if (!e || !(e->job_id = strdup(job_id)) || !(e->counts = json_object()) ||
      fx_refs_init(&e->refs, (size_t)b->sv->app->cfg->worker.max_references_per_job,
                   (size_t)b->sv->app->cfg->worker.max_reference_failures_per_job) != 0) {
    if (e) free(e->job_id), json_decref(e->counts);
    free(e);
    return NULL;
  }
  e->b = b;
  e->rec = rec;
  e->state = FX_BX_LISTED;
  bx_list_add(&b->exports[e->state], &e->link);
  fx_sink_init(&e->sink, b->lp, on_export_settled);
  uv_timer_init(b->uv, &e->timer);
  e->timer.data = e;
  return e;
}

void bx_export_start(bx_export *e) {
  if (e->state != FX_BX_LISTED) return;
  fx_bulk *b = e->b;
  e->started_ms = fx_now_ms();
  e->ts = fx_tenant_slot_get(b->sv->tenants);
  json_t *job = json_object_get(e->rec, "job");
  size_t len = 0;
  char *text = job ? bx_dump(job, &len) : NULL;
  fx_job_error jerr;
  memset(&jerr, 0, sizeof jerr);
  if (!text || fx_job_parse(text, len, &e->ts->profiles, &b->sv->limits, &e->job, &jerr) != 0 ||
      e->job->kind != FX_JOB_BULK) {
    free(text);
    export_fail(e, jerr.cls != FX_EC_NONE ? jerr.cls : FX_EC_INVALID_JOB, 0,
                jerr.msg[0] ? jerr.msg
                            : "the fhirx.bulk record holds no bulk job: only fhirx writes to "
                              "that topic; enqueue bulk jobs on the jobs topic");
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
  e->deadline_ms =
      dl > 0 ? (uint64_t)dl
             : fx_wall_ms() + (uint64_t)b->sv->app->cfg->bulk.deadline_hours * b->hour_ms;
  const char *su = json_string_value(json_object_get(e->rec, "status_url"));
  if (su && !(e->status_url = strdup(su))) {
    export_fail(e, FX_EC_INVALID_JOB, 0, "out of memory");
    return;
  }
  if (e->rstate != FX_BXR_PENDING) {
    atomic_fetch_add(&b->sv->metrics->bulk_resumed, 1);
    fx_log(FX_LOG_INFO, "resuming a bulk export", "job_id", e->job_id, "tenant", e->job->tenant,
           "state", fx_bx_record_name(e->rstate), NULL);
  }
  step(e);
}

void bx_export_drop(bx_export *e) {
  if (move(e, FX_BX_DROP) != 0) return;
  uv_timer_stop(&e->timer);
  bx_files_stop(e);
  advance(e);
}
