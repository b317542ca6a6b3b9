/* A run's requests and their answers (run_int.h): each resource published
 * once, next pages followed exactly as given, references followed once per
 * job. */
#include "worker/jobs/run_int.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/fhir.h"
#include "common/log.h"
#include "common/strutil.h"
#include "common/url.h"

static void run_on_fetch_done(fx_fetch *ff, const fx_fetch_result *r);

/* ---- fetching ------------------------------------------------------------------ */

static void run_on_fetch_done(fx_fetch *ff, const fx_fetch_result *r);

static run_fetch *run_new_fetch(fx_run *run, size_t task, int type) {
  run_fetch *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->run = run;
  f->task = task;
  f->type = type;
  f->f.tenant = run->job->tenant;
  f->f.scope = fx_tenant_token_scope(run->tenant, 0);
  f->f.path = fx_type_names[type];
  f->f.deadline_ms = run->deadline_ms;
  f->f.tm = run->tm;
  f->f.done = run_on_fetch_done;
  f->f.owner = run;
  return f;
}

static void run_fetch_free(run_fetch *f) {
  /* A reference fetch that was to fill the cache and did not: wake whoever
   * waits for it, so they fetch it themselves. */
  if (f->cache_owner) fx_refcache_fail(f->run->env.sv->refs, f->run->job->tenant, f->ref_key);
  free(f->url);
  free(f->ref_key);
  free(f);
}

static void run_fetch_finish(run_fetch *f) {
  fx_run *run = f->run;
  run_fetch_free(f);
  run_task_done(run);
}

/* Replaces every {patient} in a profile's search template; NULL on OOM. */
static char *expand(const char *tmpl, const char *patient) {
  size_t n = 1, pl = strlen(patient);
  for (const char *p = tmpl; *p;) {
    if (strncmp(p, "{patient}", 9) == 0) n += pl, p += 9;
    else n++, p++;
  }
  char *out = malloc(n), *o = out;
  if (!out) return NULL;
  for (const char *p = tmpl; *p;) {
    if (strncmp(p, "{patient}", 9) == 0) {
      memcpy(o, patient, pl);
      o += pl;
      p += 9;
    } else {
      *o++ = *p++;
    }
  }
  *o = '\0';
  return out;
}

static char *run_first_url(fx_run *run, size_t task, int type) {
  const char *base = run->tenant->fhir_base;
  const fx_type_rule *rule = &run->profile->types[type];
  const char *patient = run->job->tasks[task].patient;
  if (rule->mode == FX_FETCH_READ) {
    if (run->job->since) fx_types_add(&run->full_types, type);
    size_t n = strlen(base) + strlen(fx_type_names[type]) + strlen(patient) + 3;
    char *url = malloc(n);
    if (url) snprintf(url, n, "%s/%s/%s", base, fx_type_names[type], patient);
    return url;
  }
  char *query = expand(rule->search, patient);
  if (!query) return NULL;
  char count[32] = "";
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
      free(query);
      return NULL;
    }
    free(inst);
  } else if (run->job->since) {
    fx_types_add(&run->full_types, type); /* the server cannot narrow it: fetched in full */
  }
  size_t n = strlen(base) + strlen(fx_type_names[type]) + strlen(query) + strlen(count) +
             (since ? strlen(since) + 16 : 0) + 4;
  char *url = malloc(n);
  if (url)
    snprintf(url, n, "%s/%s?%s%s%s%s", base, fx_type_names[type], query, count,
             since ? "&_lastUpdated=ge" : "", since ? since : "");
  curl_free(since);
  free(query);
  return url;
}

run_fetch *run_first_fetch(fx_run *run, size_t task, int type) {
  run_fetch *f = run_new_fetch(run, task, type);
  if (f && (f->url = run_first_url(run, task, type))) {
    f->f.url = f->url;
    f->f.accept = run->profile->types[type].accept;
    return f;
  }
  if (f) {
    failure fl = {.cls = FX_EC_INVALID_JOB, .message = "out of memory building a URL"};
    run_record_failure(run, f, &fl);
    run->tasks_failed++;
    run_fetch_finish(f);
  } else {
    fx_sink_fail(&run->sink); /* out of memory: the task is lost to this run: it runs again */
    run_task_done(run);
  }
  return NULL;
}


/* ---- answers -------------------------------------------------------------------- */

/* Shared by every resource of one response: when and from where, computed
 * once per page rather than once per resource. */
typedef struct page {
  const char *via;
  char fetched_at[32];
  char shown[1024]; /* the URL without query values */
} page;

static void page_init(page *pg, const char *via, const char *url) {
  pg->via = via;
  fx_iso_now(pg->fetched_at);
  fx_url_redact(url, pg->shown, sizeof pg->shown);
}

static void follow_references(const run_fetch *from, json_t *res);

static void publish_resource(run_fetch *f, const page *pg, json_t *res) {
  fx_run *run = f->run;
  const fx_services *sv = run->env.sv;
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  char why[200];
  if (fx_resource_key_problem(type, id, why, sizeof why)) {
    /* Nothing safe to key it by: a failure that says why, never the id
     * (resources.h), and never a silent drop. */
    char msg[320];
    int known = type && fx_resource_index(type) >= 0;
    snprintf(msg, sizeof msg, "%s resource in the response %s; not published", known ? type : "a",
             why);
    run_fetch g = *f;
    if (known) g.type = fx_resource_index(type);
    failure fl = {.cls = FX_EC_INVALID_RESPONSE, .url = f->url, .attempts = f->f.attempts,
                  .message = msg, .no_replay = 1};
    run_record_failure(run, &g, &fl);
    return;
  }
  char *key = fx_result_key(run->job->tenant, type, id);
  if (!key) {
    fx_sink_fail(&run->sink); /* out of memory: the job runs again */
    return;
  }
  int fresh = fx_strset_add(run->seen, key + strlen(run->job->tenant) + 1);
  if (fresh != 1) {
    if (fresh < 0) fx_sink_fail(&run->sink);
    free(key);
    return;
  }
  size_t len;
  char *value = run_dump(res, &len);
  if (!value) {
    run_unbuilt(run, "result"); /* counted and logged; the job runs again */
    free(key);
    return;
  }
  if (len > sv->max_message) {
    free(key);
    free(value);
    char msg[256];
    snprintf(msg, sizeof msg, "%s/%s is %zu bytes, more than the %zu bytes a message may have",
             type, id, len, sv->max_message);
    failure fl = {.cls = FX_EC_TOO_LARGE, .url = f->url, .attempts = f->f.attempts,
                  .message = msg};
    run_record_failure(run, f, &fl);
    return;
  }
  fx_rec_job j = run_rec_job(run);
  rd_kafka_headers_t *h = fx_rec_headers(&j);
  /* Referenced entities are shared by many patients: no patient header. */
  if (f->depth == 0)
    rd_kafka_header_add(h, "fhirx-patient", -1, run->job->tasks[f->task].patient, -1);
  rd_kafka_header_add(h, "fhirx-source-url", -1, pg->shown, -1);
  rd_kafka_header_add(h, "fhirx-fetched-at", -1, pg->fetched_at, -1);
  rd_kafka_header_add(h, "fhirx-via", -1, pg->via, -1);
  run_emit(run, sv->app->cfg->topics.results, key, value, len, h);
  free(key);
  int idx = fx_resource_index(type);
  if (idx >= 0) run->counts[idx]++;
  run->resources++;
  follow_references(f, res);
}

/* ---- references ---------------------------------------------------------------- */

typedef struct ref_wait {
  fx_run *run;
  size_t task;
  int type, depth, origin_type;
  char *url; /* owned: the exact URL to fetch (attachments), NULL = base + key */
  char key[FX_REF_KEY_SIZE];
} ref_wait;

static char *entity_url(const fx_run *run, const char *key) {
  const char *base = run->tenant->fhir_base;
  size_t n = strlen(base) + strlen(key) + 2;
  char *url = malloc(n);
  if (url) snprintf(url, n, "%s/%s", base, key);
  return url;
}

/* Fetches a reference ourselves (a cache miss, or no cache). Takes w->url. */
static void fetch_reference(ref_wait *w, int cache_owner) {
  fx_run *run = w->run;
  run_fetch *f = run_new_fetch(run, w->task, w->type);
  char *url = w->url ? w->url : entity_url(run, w->key);
  w->url = NULL;
  if (!f || !url || !(f->ref_key = strdup(w->key))) {
    free(url);
    if (cache_owner) fx_refcache_fail(run->env.sv->refs, run->job->tenant, w->key);
    if (f) run_fetch_free(f);
    fx_sink_fail(&run->sink); /* out of memory: the job runs again */
    run_task_done(run);
    return;
  }
  f->url = url;
  f->f.url = url;
  f->f.accept = run->profile->types[w->type].accept;
  f->depth = w->depth;
  f->origin_type = w->origin_type;
  f->cache_owner = cache_owner && run->env.sv->refs;
  fx_fetcher_submit(run->env.fetcher, &f->f, 0);
}

/* Publishes a referenced entity from the cache, as if it had been fetched. */
static void publish_cached(const ref_wait *w, const char *json, size_t len) {
  fx_run *run = w->run;
  json_t *doc = json_loadb(json, len, 0, NULL);
  char *url = w->url ? NULL : entity_url(run, w->key);
  if (doc && (url || w->url)) {
    run_fetch f = {.run = run, .task = w->task, .type = w->type, .depth = w->depth,
                   .origin_type = w->origin_type, .ref_key = (char *)(uintptr_t)w->key,
                   .url = url ? url : w->url};
    page pg;
    page_init(&pg, "reference", f.url);
    publish_resource(&f, &pg, doc);
    run->refs_cached++;
    atomic_fetch_add(&run->env.sv->metrics->refs_cached, 1);
  } else {
    fx_sink_fail(&run->sink);
  }
  json_decref(doc);
  free(url);
}

static void on_reference_ready(const char *json, size_t len, void *arg) {
  ref_wait *w = arg;
  fx_run *run = w->run;
  if (run->state == FX_RUN_DROPPING) {
    run_task_done(run);
  } else if (json) {
    publish_cached(w, json, len);
    run_task_done(run);
  } else {
    fetch_reference(w, 0); /* the fetch we waited for failed: try ourselves */
  }
  free(w->url);
  free(w);
  fx_fetcher_pump(run->env.fetcher);
}

/* Asks for the entity key once: from the cache, or fetched (from url when
 * given: takes it). */
static void request_reference(const run_fetch *from, int type, const char *key, char *url) {
  fx_run *run = from->run;
  const fx_services *sv = run->env.sv;
  ref_wait w = {.run = run, .task = from->task, .type = type, .depth = from->depth + 1,
                .origin_type = from->depth > 0 ? from->origin_type : from->type, .url = url};
  snprintf(w.key, sizeof w.key, "%s", key); /* fits: fx_ref_parse made it for FX_REF_KEY_SIZE */
  run->tasks_left++; /* one unit for this reference, done by task_done */
  if (!sv->refs) {
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
  int rc = fx_refcache_get(sv->refs, run->job->tenant, key, run->env.lp, on_reference_ready,
                           waiting, &json, &len);
  if (rc == FX_REF_WAIT) return; /* on_reference_ready owns waiting (and url) now */
  free(waiting);
  if (rc == FX_REF_HIT) {
    publish_cached(&w, json, len);
    free(json);
    free(w.url);
    run_task_done(run);
  } else {
    fetch_reference(&w, 1);
  }
}

static void on_reference(void *arg, const char *ref, int only_type, int exact) {
  const run_fetch *from = arg;
  fx_run *run = from->run;
  fx_ref_found found;
  run_fetch f = *from;
  f.origin_type = from->depth > 0 ? from->origin_type : from->type;
  f.depth = from->depth + 1; /* a reference is one hop away, fetched or not */
  f.ref_key = NULL;
  switch (fx_refs_consider(&run->refs, run->profile, run->tenant->fhir_base, run->seen, ref,
                           only_type, exact, &found)) {
  case FX_REFD_SKIP: return;
  case FX_REFD_UNRECORDED:
    /* Past the job's failure cap: counted (status and metric), not recorded. */
    atomic_fetch_add(&run->env.sv->metrics->failures_unrecorded, 1);
    return;
  case FX_REFD_FOLLOW: {
    char *url = NULL;
    if (found.exact && !(url = strdup(ref))) {
      fx_sink_fail(&run->sink);
      return;
    }
    request_reference(from, found.type, found.key, url);
    return;
  }
  case FX_REFD_FOREIGN: {
    /* Never fetched with the tenant's token; the failure names what was
     * referenced (when the URL says) and where. */
    char shown[512], note[160], msg[860], key[FX_REF_KEY_SIZE];
    fx_url_redact(ref, shown, sizeof shown);
    fx_url_problem_note(ref, note, sizeof note);
    fx_utf8_trim(shown);
    snprintf(msg, sizeof msg,
             "reference %s is outside the tenant's FHIR base%s; not fetched with the tenant's "
             "token",
             shown, note);
    if (fx_refs_url_key(ref, key, sizeof key) == 0) {
      f.ref_key = key;
      char type[FX_TYPE_NAME_MAX + 1];
      snprintf(type, sizeof type, "%.*s", (int)strcspn(key, "/"), key);
      f.type = fx_resource_index(type);
    }
    failure fl = {.cls = FX_EC_FOREIGN_REFERENCE, .url = ref, .attempts = 1, .message = msg};
    run_record_failure(run, &f, &fl);
    return;
  }
  case FX_REFD_INVALID: {
    /* The failure names the type, never the id (nor the URL that holds it). */
    char msg[300];
    snprintf(msg, sizeof msg,
             "a reference to a %s has an id that breaks fhirx's id rule (1..%d of A-Z a-z 0-9 . "
             "_ ~ -, not '.' or '..' alone); not followed",
             fx_type_names[found.type], FX_FHIR_ID_MAX);
    f.type = found.type;
    failure fl = {.cls = FX_EC_INVALID_RESPONSE, .attempts = 1, .message = msg, .no_replay = 1};
    run_record_failure(run, &f, &fl);
    return;
  }
  case FX_REFD_CAPPED: {
    char msg[200];
    snprintf(msg, sizeof msg,
             "the job references more than %zu entities (worker.max_references_per_job); the "
             "rest were not fetched",
             run->refs.max);
    f = *from;
    f.depth = from->depth + 1;
    f.ref_key = NULL;
    failure fl = {.cls = FX_EC_TOO_LARGE, .attempts = 1, .message = msg};
    run_record_failure(run, &f, &fl);
    return;
  }
  }
}

/* Every reference in res, plus the attachment URLs the profile wants as
 * Binary, to the profile's depth; each entity is asked for once per job. */
static void follow_references(const run_fetch *from, json_t *res) {
  fx_run *run = from->run;
  if (!run->job->follow_references || from->depth >= run->profile->depth ||
      fx_types_empty(run->profile->follow))
    return;
  fx_refs_walk(run->profile, res, on_reference, (void *)(uintptr_t)from);
}

/* A search page: publish its entries, then follow Bundle.link[next]. Returns
 * 1 when the fetch goes on with the next page. */
static int handle_bundle(run_fetch *f, json_t *bundle) {
  fx_run *run = f->run;
  page pg;
  page_init(&pg, "search", f->url);
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(bundle, "entry"), i, e) {
    json_t *res = json_object_get(e, "resource");
    const char *mode = json_string_value(json_object_get(json_object_get(e, "search"), "mode"));
    const char *rt = json_string_value(json_object_get(res, "resourceType"));
    /* Cerner adds OperationOutcome warnings with search.mode=outcome: not data. */
    if ((mode && strcmp(mode, "outcome") == 0) || (rt && strcmp(rt, "OperationOutcome") == 0))
      continue;
    publish_resource(f, &pg, res);
  }
  const char *next = NULL;
  json_array_foreach(json_object_get(bundle, "link"), i, e) {
    const char *rel = json_string_value(json_object_get(e, "relation"));
    if (rel && strcmp(rel, "next") == 0) next = json_string_value(json_object_get(e, "url"));
  }
  if (!next) return 0;
  if (!fx_url_may_carry_token(next, &f->f.scope)) {
    char shown[512], note[160], msg[900];
    fx_url_redact(next, shown, sizeof shown);
    fx_url_problem_note(next, note, sizeof note);
    snprintf(msg, sizeof msg,
             "the next page link %s is outside the tenant's FHIR base (and its "
             "token_url_prefixes)%s; not followed with the tenant's token",
             shown, note);
    failure fl = {.cls = FX_EC_FOREIGN_REFERENCE, .url = f->url, .attempts = f->f.attempts,
                  .message = msg};
    run_record_failure(run, f, &fl);
    if (f->depth == 0) run->tasks_failed++; /* the task is in the dead letter: count it */
    return 0;
  }
  long long max_pages = run->env.sv->app->cfg->worker.max_pages;
  if (f->page + 1 >= max_pages) {
    char msg[160];
    snprintf(msg, sizeof msg, "the search has more than %lld pages (worker.max_pages)", max_pages);
    failure fl = {.cls = FX_EC_TOO_LARGE, .url = f->url, .attempts = f->f.attempts,
                  .message = msg};
    run_record_failure(run, f, &fl);
    if (f->depth == 0) run->tasks_failed++;
    return 0;
  }
  char *url = strdup(next); /* followed exactly as given: -pageContext is opaque */
  if (!url) {
    fx_sink_fail(&run->sink);
    return 0;
  }
  free(f->url);
  f->url = url;
  f->f.url = url;
  f->page++;
  f->f.attempts = 0;
  fx_fetcher_submit(run->env.fetcher, &f->f, 0);
  return 1;
}

/* A 200 answer: the resource (read) or the Bundle (search). Returns 1 when
 * the fetch goes on (a next page), 0 when it is over; a failure is in fl. */
static int read_answer(run_fetch *f, const fx_http_response *res, failure *fl, char *msg,
                       size_t size) {
  fx_run *run = f->run;
  const fx_services *sv = run->env.sv;
  if (!fx_json_depth_ok(res->body, res->body_len, (int)sv->app->cfg->http.max_json_depth)) {
    fl->cls = FX_EC_INVALID_RESPONSE;
    fl->status = res->status;
    snprintf(msg, size,
             "the response nests JSON deeper than http.max_json_depth (%lld); not parsed",
             sv->app->cfg->http.max_json_depth);
    return 0;
  }
  json_error_t jerr;
  json_t *doc = json_loadb(res->body, res->body_len, 0, &jerr);
  const char *rt = json_string_value(json_object_get(doc, "resourceType"));
  int is_read = f->depth > 0 || run->profile->types[f->type].mode == FX_FETCH_READ;
  int continues = 0;
  if (rt && is_read && strcmp(rt, fx_type_names[f->type]) == 0) {
    if (f->depth > 0) {
      if (f->cache_owner) { /* share it before anything else can go wrong */
        size_t len;
        char *text = run_dump(doc, &len);
        if (text) fx_refcache_put(sv->refs, run->job->tenant, f->ref_key, text, len);
        else fx_refcache_fail(sv->refs, run->job->tenant, f->ref_key);
        free(text);
        f->cache_owner = 0;
      }
      run->refs_fetched++;
      atomic_fetch_add(&sv->metrics->refs_fetched, 1);
    }
    page pg;
    page_init(&pg, f->depth > 0 ? "reference" : "read", f->url);
    publish_resource(f, &pg, doc);
  } else if (rt && !is_read && strcmp(rt, "Bundle") == 0) {
    continues = handle_bundle(f, doc);
  } else {
    fl->cls = FX_EC_INVALID_RESPONSE;
    snprintf(msg, size, "expected a %s but got %.*s", is_read ? fx_type_names[f->type] : "Bundle",
             (int)fx_utf8_cut(doc ? (rt ? rt : "JSON without resourceType") : "a body that is not JSON", 64),
             doc ? (rt ? rt : "JSON without resourceType") : "a body that is not JSON");
  }
  json_decref(doc);
  return continues;
}

/* What a failed answer says: class, status, outcome and message. */
static void describe_failure(const fx_fetch_result *r, failure *fl, char *outcome,
                             size_t osize, char *msg, size_t size) {
  const fx_http_response *res = r->res;
  if (r->ae) {
    fl->cls = fx_errclass_of_auth(r->ae, NULL);
    fx_utf8_copy(msg, size, r->ae->err.msg);
  } else if (res->result) {
    fl->cls = res->result == FX_ETOOLARGE ? FX_EC_TOO_LARGE : FX_EC_TRANSIENT;
    fx_utf8_copy(msg, size, res->error);
  } else {
    fl->cls = fx_errclass_of_status(res->status);
    fl->status = res->status;
    fx_fhir_outcome_summary(res->body, outcome, osize);
    char redirect[400];
    fx_url_redirect_note(res->status, fx_http_header(res, "Location"), redirect, sizeof redirect);
    fx_utf8_trim(redirect); /* the server's Location, cut on a character */
    snprintf(msg, size, "HTTP %ld%s%s%s%s", res->status, redirect[0] ? ": " : "", redirect,
             outcome[0] ? ": " : "", outcome);
    fx_utf8_trim(msg);
    fl->outcome = outcome;
  }
}

static void run_on_fetch_done(fx_fetch *ff, const fx_fetch_result *r) {
  run_fetch *f = (run_fetch *)ff;
  fx_run *run = f->run;
  if (r->end == FX_FETCH_CANCELED || run->state == FX_RUN_DROPPING) {
    run_fetch_finish(f);
    return;
  }
  if (r->end == FX_FETCH_GAVE_UP && r->draining) {
    /* Draining and the EHR is failing: leave the whole job to the next owner
     * rather than dead-letter what a retry would fetch. */
    run_abandon(run);
    run_fetch_finish(f);
    return;
  }
  failure fl = {.url = f->url, .attempts = f->f.attempts};
  char outcome[512] = "", msg[768] = "";
  if (r->end == FX_FETCH_REFUSED) {
    fl.cls = r->cls;
    fx_utf8_copy(msg, sizeof msg, r->message);
  } else if (!r->ae && !r->res->result && r->res->status == 200) {
    int continues = read_answer(f, r->res, &fl, msg, sizeof msg);
    if (!fl.cls) {
      if (!continues) run_fetch_finish(f);
      return;
    }
  } else {
    describe_failure(r, &fl, outcome, sizeof outcome, msg, sizeof msg);
  }
  fl.message = msg;
  run_record_failure(run, f, &fl);
  if (f->depth == 0) run->tasks_failed++;
  run_fetch_finish(f);
}
