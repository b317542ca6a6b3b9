/* follow_references for a bulk export (bulk_int.h): the entities a file's
 * resources reference are decided by model/refs.h (once per export and
 * entity, within worker.max_references_per_job), queued on the file, and
 * read once every line of the file is published, at most REF_PARALLEL at a
 * time per file. What they reference in turn is followed to the profile's
 * depth, as for patient jobs. Each read entity is a result of the file, so
 * the file counts as done only once Kafka has them.
 *
 * These reads do not go through the tenant's governor (jobs/fetch.h): a
 * group-wide limit for bulk exports is a later issue's; REF_PARALLEL bounds
 * them per file meanwhile. */
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/strutil.h"
#include "common/url.h"
#include "worker/bulk/bulk_int.h"

/* A referenced entity to read, found in a file's lines. */
struct bx_ref {
  bx_ref *next;
  int depth; /* 1: referenced by an exported resource */
  int tries;
  char *url; /* owned: the exact URL to read (attachments), NULL = base + key */
  char key[FX_REF_KEY_SIZE]; /* "Practitioner/4000001" */
};

static void ref_free(bx_ref *r) {
  if (!r) return;
  free(r->url);
  free(r);
}

static void enqueue(bx_file *f, bx_ref *r) {
  r->next = NULL;
  if (f->refs_tail) f->refs_tail->next = r;
  else f->refs_head = r;
  f->refs_tail = r;
}

void bx_follow_clear(bx_file *f) {
  while (f->refs_head) {
    bx_ref *r = f->refs_head;
    f->refs_head = r->next;
    ref_free(r);
  }
  f->refs_tail = NULL;
}

/* ---- deciding ------------------------------------------------------------------ */

typedef struct ref_ctx {
  bx_file *f;
  const fx_profile *prof;
  int depth; /* of what is found: 1 = referenced by an exported resource */
} ref_ctx;

/* What one reference (or attachment URL) means for the export: queued to be
 * read, reported once, or nothing. */
static void on_reference(void *arg, const char *ref, int only_type, int exact) {
  const ref_ctx *c = arg;
  bx_file *f = c->f;
  bx_export *e = f->e;
  fx_ref_found found;
  char msg[800];
  switch (fx_refs_consider(&e->refs, c->prof, e->tenant->fhir_base, NULL, ref, only_type, exact,
                           &found)) {
  case FX_REFD_SKIP: return;
  case FX_REFD_UNRECORDED:
    /* Past the export's failure cap: counted (status and metric), not recorded. */
    atomic_fetch_add(&e->b->sv->metrics->failures_unrecorded, 1);
    f->unrecorded++;
    return;
  case FX_REFD_FOREIGN: {
    char shown[512], note[160];
    fx_url_redact(ref, shown, sizeof shown);
    fx_url_problem_note(ref, note, sizeof note);
    fx_utf8_trim(shown);
    snprintf(msg, sizeof msg, "reference %s is outside the tenant's FHIR base%s; not followed",
             shown, note);
    /* url: the reference's URL, which was not requested (failure.schema.json). */
    bx_publish_failure(e, &f->sink,
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
    bx_publish_failure(e, &f->sink,
                       &(bx_failure){.cls = FX_EC_INVALID_RESPONSE,
                                     .type = fx_type_names[found.type],
                                     .message = msg});
    f->bad_lines++;
    return;
  case FX_REFD_CAPPED:
    snprintf(msg, sizeof msg,
             "more than %zu referenced entities (worker.max_references_per_job); the rest were "
             "not fetched",
             e->refs.max);
    bx_publish_failure(e, &f->sink, &(bx_failure){.cls = FX_EC_TOO_LARGE, .message = msg});
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
  enqueue(f, r);
}

/* Every reference in res, plus the attachment URLs the profile wants as
 * Binary (an absolute one read exactly as given: Cerner's binary.md says to
 * use the link unchanged). */
void bx_follow_collect(bx_file *f, json_t *res, int depth) {
  bx_export *e = f->e;
  if (!e->job->follow_references) return;
  const fx_profile *prof = fx_profile_for(&e->ts->profiles, e->tenant->id);
  if (!prof || depth > prof->depth || fx_types_empty(prof->follow)) return;
  ref_ctx c = {.f = f, .prof = prof, .depth = depth};
  fx_refs_walk(prof, res, on_reference, &c);
}

/* ---- reading --------------------------------------------------------------------- */

typedef struct ref_call {
  bx_file *f;
  bx_ref *r;
  char *url; /* owned */
} ref_call;

static void ref_call_free(ref_call *c) {
  free(c->url);
  free(c);
}

static void on_ref_retry(uv_timer_t *t) { bx_follow_pump(t->data); }

/* A read entity: published as a result of the file, or a failure saying
 * why not; then what it references, one hop further. */
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
    bx_publish_failure(e, &f->sink,
                       &(bx_failure){.cls = FX_EC_INVALID_RESPONSE,
                                     .status = res->status,
                                     .url = res->url,
                                     .type = rtype,
                                     .reference = r->key,
                                     .attempts = r->tries + 1,
                                     .message = msg});
    f->bad_lines++;
    json_decref(doc);
    return;
  }
  if (fx_resource_key_problem(type, id, why, sizeof why)) {
    /* Never the id (resources.h): the type and why. */
    snprintf(msg, sizeof msg, "the referenced %s read from the server %s; not published", type,
             why);
    bx_publish_failure(e, &f->sink,
                       &(bx_failure){.cls = FX_EC_INVALID_RESPONSE,
                                     .status = res->status,
                                     .url = res->url,
                                     .type = type,
                                     .message = msg});
    f->bad_lines++;
    json_decref(doc);
    return;
  }
  if (res->body_len > p->max_message) {
    snprintf(msg, sizeof msg, "%s is %zu bytes, more than the %zu bytes a message may have", r->key,
             res->body_len, p->max_message);
    bx_publish_failure(e, &f->sink,
                       &(bx_failure){.cls = FX_EC_TOO_LARGE,
                                     .status = res->status,
                                     .url = res->url,
                                     .type = type,
                                     .reference = r->key,
                                     .attempts = r->tries + 1,
                                     .message = msg});
    f->bad_lines++;
    json_decref(doc);
    return;
  }
  char now[32], shown[1024];
  char *key = fx_result_key(e->tenant->id, type, id);
  fx_iso_now(now);
  fx_url_redact(res->url, shown, sizeof shown);
  rd_kafka_headers_t *h = bx_headers(e);
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
    bx_count_add(f->counts, type, 1);
    f->refs_fetched++;
    atomic_fetch_add(&p->metrics->refs_fetched, 1);
  }
  bx_follow_collect(f, doc, r->depth + 1);
  json_decref(doc);
}

static void on_ref(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  ref_call *c = arg;
  bx_file *f = c->f;
  bx_ref *r = c->r;
  f->refs_inflight--;
  if (bx_file_dead(f)) {
    ref_call_free(c);
    ref_free(r);
    bx_follow_pump(f); /* drops the queue; the file ends when nothing is in flight */
    return;
  }
  const fx_bulk_conf *bc = &f->e->b->sv->app->cfg->bulk;
  int transient = 0;
  fx_errclass auth_cls = ae ? fx_errclass_of_auth(ae, &transient) : FX_EC_NONE;
  if (!ae) transient = res->result != 0 || bx_transient_status(res->status) || res->status >= 500;
  if (!ae && res->result == 0 && res->status == 200) {
    publish_ref(f, r, res);
    ref_free(r);
  } else if (transient && ++r->tries <= bc->retries) {
    enqueue(f, r); /* again, after a pause */
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
    bx_publish_failure(f->e, &f->sink,
                       &(bx_failure){.cls = cls,
                                     .status = status,
                                     .outcome = oo,
                                     .url = c->url,
                                     .type = type,
                                     .reference = r->key,
                                     .attempts = transient ? r->tries : r->tries + 1,
                                     .message = msg});
    f->bad_lines++;
    ref_free(r);
  }
  ref_call_free(c);
  bx_follow_pump(f);
}

/* The profile's Accept for reading the type of key ("Binary/..."), NULL =
 * application/fhir+json. */
static const char *ref_accept(const fx_profile *prof, const char *key) {
  char type[FX_TYPE_NAME_MAX + 1];
  snprintf(type, sizeof type, "%.*s", (int)strcspn(key, "/"), key);
  int idx = fx_resource_index(type);
  return prof && idx >= 0 ? prof->types[idx].accept : NULL;
}

/* An attachment's exact URL, else base + "/" + key, built from lengths.
 * Takes r->url; NULL on OOM. */
static char *ref_url(const bx_export *e, bx_ref *r) {
  if (r->url) {
    char *url = r->url;
    r->url = NULL;
    return url;
  }
  const char *base = e->tenant->fhir_base;
  size_t bl = strlen(base), kl = strlen(r->key);
  if (bl && base[bl - 1] == '/') bl--;
  char *url = malloc(bl + kl + 2);
  if (!url) return NULL;
  memcpy(url, base, bl);
  url[bl] = '/';
  memcpy(url + bl + 1, r->key, kl + 1);
  return url;
}

static void read_ref(bx_file *f, bx_ref *r) {
  bx_export *e = f->e;
  ref_call *c = calloc(1, sizeof *c);
  if (!c || !(c->url = ref_url(e, r))) {
    free(c);
    ref_free(r);
    fx_sink_fail(&f->sink); /* out of memory: the file is downloaded again */
    return;
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
    fx_errclass cls = err.code == FX_EPERM ? FX_EC_FOREIGN_REFERENCE : FX_EC_INVALID_RESPONSE;
    bx_publish_failure(e, &f->sink, &(bx_failure){.cls = cls, .message = msg});
    f->bad_lines++;
    ref_call_free(c);
    ref_free(r);
  }
}

void bx_follow_pump(bx_file *f) {
  if (bx_file_dead(f)) {
    bx_follow_clear(f);
    if (f->refs_inflight == 0) f->e->b->follow_done(f);
    return;
  }
  while (f->refs_head && f->refs_inflight < REF_PARALLEL) {
    bx_ref *r = f->refs_head;
    f->refs_head = r->next;
    if (!f->refs_head) f->refs_tail = NULL;
    r->next = NULL;
    read_ref(f, r);
  }
  if (!f->refs_head && f->refs_inflight == 0 && !uv_is_active((uv_handle_t *)&f->timer))
    f->e->b->follow_done(f);
}
