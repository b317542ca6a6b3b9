/* Control endpoints for Bulk Data $export (docs/simulator.md "Bulk Data
 * $export"):
 *
 *   GET  /_sim/tenants/{t}/export              settings and the tenant's jobs
 *   POST /_sim/tenants/{t}/export              {duration_ms, retry_after_s,
 *                                              file_max_resources, error_file, fail_next}
 *   POST /_sim/tenants/{t}/export/expire       every job of the tenant expires
 *   GET  /_sim/tenants/{t}/groups/{id}/expected?types=A,B[&since=INSTANT]
 *                                              [&type_filter=Type?query,...]
 *
 * `expected` walks the group with the same code (sim_xnext) that plans and
 * writes the export's files, so it cannot drift from what a download holds. */
#include "tests/sim/fhir.h"
#include "tests/sim/refserver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void reply_error(sim_resp *resp, unsigned status, const char *error) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s", error);
  sim_utf8_trim(msg);
  sim_resp_json(resp, status, SIM_CT_JSON, json_pack("{s:s}", "error", msg));
}

/* ---- settings and jobs ---- */

typedef struct list_scan {
  size_t tenant;
  int64_t now_ms;
  json_t *jobs;
  const sim_tenant *t;
} list_scan;

static const char *job_state(const sim_export *x, int64_t now_ms) {
  if (sim_export_expired_locked(x, now_ms)) return "expired";
  if (now_ms < x->done_ms) return "running";
  return x->fail ? "failed" : "completed";
}

static void visit_list(const char *key, void *value, void *arg) {
  (void)key;
  const sim_export *x = value;
  list_scan *s = arg;
  if (x->tenant != s->tenant) return;
  char when[32];
  sim_fhir_instant_ms(x->kickoff_ms, when);
  json_array_append_new(
      s->jobs, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "id", x->id, "client_id",
                         x->client_id, "group", x->scope.group->id, "state",
                         job_state(x, s->now_ms), "transactionTime", when, "request", x->request,
                         "files", (json_int_t)x->nfiles));
}

void sim_control_export_get(sim_req *req, sim_tenant *t, sim_resp *resp) {
  sim_state *st = req->st;
  list_scan s = {.tenant = t->index, .now_ms = sim_now_ms(), .jobs = json_array(), .t = t};
  if (!s.jobs) {
    reply_error(resp, 500, "out of memory");
    return;
  }
  pthread_mutex_lock(&st->lock);
  sim_export_settings cfg = t->export_settings;
  bool fail_next = t->export_fail_next;
  sim_map_foreach(&st->exports, visit_list, &s);
  json_t *kickoffs = json_deep_copy(t->counters.kickoffs);
  pthread_mutex_unlock(&st->lock);
  sim_resp_json(resp, 200, SIM_CT_JSON,
                json_pack("{s:I, s:I, s:I, s:b, s:b, s:o, s:o*}", "duration_ms",
                          (json_int_t)cfg.duration_ms, "retry_after_s",
                          (json_int_t)cfg.retry_after_s, "file_max_resources",
                          (json_int_t)cfg.file_max_resources, "error_file", cfg.error_file,
                          "fail_next", fail_next, "exports", s.jobs, "kickoffs", kickoffs));
}

void sim_control_export_set(sim_req *req, sim_tenant *t, sim_resp *resp) {
  json_error_t e;
  json_t *o = json_loadb(req->body.data ? req->body.data : "", req->body.len,
                         JSON_REJECT_DUPLICATES, &e);
  char err[256];
  sim_export_settings parsed;
  sim_export_settings_default(&parsed);
  bool fail_next = false;
  unsigned set = 0;
  if (!json_is_object(o)) {
    snprintf(err, sizeof err, "body must be a JSON object (%s)", o ? "not an object" : e.text);
    reply_error(resp, 400, err);
  } else if (sim_export_settings_parse(o, "", &parsed, &fail_next, &set, err, sizeof err) != 0) {
    reply_error(resp, 400, err);
  } else {
    /* Only the keys sent change, all at once. */
    pthread_mutex_lock(&req->st->lock);
    sim_export_settings *cur = &t->export_settings;
    if (set & SIM_XSET_DURATION) cur->duration_ms = parsed.duration_ms;
    if (set & SIM_XSET_RETRY_AFTER) cur->retry_after_s = parsed.retry_after_s;
    if (set & SIM_XSET_FILE_MAX) cur->file_max_resources = parsed.file_max_resources;
    if (set & SIM_XSET_ERROR_FILE) cur->error_file = parsed.error_file;
    if (set & SIM_XSET_FAIL_NEXT) t->export_fail_next = fail_next;
    pthread_mutex_unlock(&req->st->lock);
    sim_resp_json(resp, 200, SIM_CT_JSON, json_pack("{s:b}", "ok", 1));
  }
  json_decref(o);
}

typedef struct expire_scan {
  size_t tenant;
  int64_t now_ms;
  bool urls_only;
  long expired;
} expire_scan;

static void visit_expire(const char *key, void *value, void *arg) {
  (void)key;
  sim_export *x = value;
  expire_scan *s = arg;
  if (x->tenant != s->tenant || sim_export_expired_locked(x, s->now_ms)) return;
  if (s->urls_only) {
    if (x->urls_expired) return;
    x->urls_expired = true;
  } else {
    x->expired = true;
  }
  s->expired++;
}

/* Body (optional): {"urls_only": true} expires only the exports' storage
 * URLs, as when pre-signed URLs outlive their signature: status polls and
 * file redirects still answer, the storage server answers 403 "Request has
 * expired" to every URL of those exports, issued before or after. */
void sim_control_export_expire(sim_req *req, sim_tenant *t, sim_resp *resp) {
  expire_scan s = {.tenant = t->index, .now_ms = sim_now_ms()};
  if (req->body.len) {
    json_error_t e;
    json_t *o = json_loadb(req->body.data, req->body.len, JSON_REJECT_DUPLICATES, &e);
    json_t *u = json_object_get(o, "urls_only");
    bool ok = json_is_object(o) && json_object_size(o) == (u ? 1u : 0u) && (!u || json_is_boolean(u));
    s.urls_only = ok && json_is_true(u);
    json_decref(o);
    if (!ok) {
      reply_error(resp, 400, "body: expected {} or {\"urls_only\": true|false}");
      return;
    }
  }
  pthread_mutex_lock(&req->st->lock);
  sim_map_foreach(&req->st->exports, visit_expire, &s);
  pthread_mutex_unlock(&req->st->lock);
  sim_resp_json(resp, 200, SIM_CT_JSON,
                json_pack("{s:b, s:I}", "ok", 1, "expired", (json_int_t)s.expired));
}

/* ---- expected ---- */

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Parses a comma list of exportable type names into out (Provenance into
 * *provenance, and a reference server's extra types into extra, when not
 * NULL); returns NULL or the 400 message. */
static const char *parse_types(const char *list, bool out[SIM_RT_COUNT], bool *provenance,
                               bool extra[SIM_REF_EXTRA_COUNT], char *msg, size_t n) {
  memset(out, 0, SIM_RT_COUNT * sizeof *out);
  *provenance = false;
  for (const char *p = list;;) {
    size_t len = strcspn(p, ",");
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), p);
    int t = sim_rtype_from_name(name);
    int k = extra ? sim_ref_extra_from_name(name) : -1;
    if (k >= 0) {
      extra[k] = true;
    } else if (strcmp(name, "Provenance") == 0) {
      *provenance = true;
    } else if (t < 0 || (extra ? t != SIM_RT_PATIENT && !sim_rtype_per_patient((sim_rtype)t)
                               : !sim_xtype_exportable((sim_rtype)t))) {
      bool plain = *name != '\0';
      for (const char *c = name; *c; c++)
        plain = plain && ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z'));
      snprintf(msg, n,
               "types: \"%s\" is not exported by a Group export (see group-export.md: Patient, "
               "the per-patient types but Coverage, RelatedPerson and ServiceRequest, Location, "
               "Organization, Practitioner, Provenance)",
               plain ? name : "(invalid name)");
      return msg;
    } else {
      out[t] = true;
    }
    if (!p[len]) return NULL;
    p += len + 1;
  }
}

/* type_filter=Type?query[,Type?query...] as a kick-off's _typeFilter (one
 * query per type, on a type among `types`). */
static const char *parse_filters(const char *list, const bool types[SIM_RT_COUNT],
                                 sim_xscope *scope, char *msg, size_t n) {
  char *copy = strdup(list), *save = NULL;
  const char *bad = copy ? NULL : "out of memory";
  for (char *q = copy ? strtok_r(copy, ",", &save) : NULL; q && !bad;
       q = strtok_r(NULL, ",", &save)) {
    char *mark = strchr(q, '?');
    int t = -1;
    if (mark) {
      *mark = '\0';
      t = sim_rtype_from_name(q);
    }
    if (t < 0 || !types[t] || scope->filters[t] || t == SIM_RT_PATIENT ||
        sim_xtype_pool((sim_rtype)t)) {
      snprintf(msg, n,
               "type_filter: each query is <Type>?<query> for one of types (not Patient or a "
               "pool type), one per type");
      bad = msg;
    } else if (sim_xfilter_parse(mark + 1, &scope->filters[t], msg, n) != 0) {
      bad = msg;
    }
  }
  free(copy);
  return bad;
}

static const char *add_ref(char ***refs, size_t *n, size_t *cap, const char *type,
                           const char *id) {
  if (*n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 256;
    char **v = realloc(*refs, ncap * sizeof *v);
    if (!v) return "out of memory";
    *refs = v;
    *cap = ncap;
  }
  size_t len = strlen(type) + strlen(id) + 2;
  if (!((*refs)[*n] = malloc(len))) return "out of memory";
  snprintf((*refs)[*n], len, "%s/%s", type, id);
  (*n)++;
  return NULL;
}

void sim_control_group_expected(sim_req *req, sim_tenant *t, const char *group_id,
                                sim_resp *resp) {
  const char *types_q = sim_req_query(req, "types");
  const char *since = sim_req_query(req, "since");
  const char *filters_q = sim_req_query(req, "type_filter");
  const sim_group *g = sim_group_find(t, group_id);
  char msg[512];
  sim_xscope scope = {.store = t->store, .group = g, .has_since = since != NULL};
  bool types[SIM_RT_COUNT], provenance = false, extra[SIM_REF_EXTRA_COUNT] = {false};
  int64_t hi;
  if (!g) {
    reply_error(resp, 404, "unknown group");
    return;
  }
  if (types_q && *types_q &&
      parse_types(types_q, types, &provenance, t->ref.enabled ? extra : NULL, msg, sizeof msg)) {
    reply_error(resp, 400, msg);
    return;
  }
  /* Default: Patient and the per-patient types Cerner exports (and a reference
   * server's other types). */
  if (!types_q || !*types_q) {
    for (int i = 0; i < SIM_RT_COUNT; i++)
      types[i] = t->ref.enabled ? i == SIM_RT_PATIENT || sim_rtype_per_patient((sim_rtype)i)
                                : sim_xtype_exportable((sim_rtype)i) && !sim_xtype_pool((sim_rtype)i);
    for (int k = 0; k < SIM_REF_EXTRA_COUNT; k++) extra[k] = t->ref.enabled;
  }
  if (since && sim_fhir_parse_instant(since, &scope.since_ms, &hi) != 0) {
    reply_error(resp, 400, "since: expected a FHIR instant such as 2024-06-01T00:00:00Z");
    return;
  }
  if (filters_q && parse_filters(filters_q, types, &scope, msg, sizeof msg)) {
    sim_xscope_free(&scope);
    reply_error(resp, 400, msg);
    return;
  }
  for (int i = 0; i < SIM_RT_COUNT; i++)
    scope.provenance[i] = provenance && types[i] && !sim_xtype_pool((sim_rtype)i);
  char **refs = NULL;
  size_t n = 0, cap = 0;
  const char *oom = sim_xscope_collect_pools(&scope, types) ? "out of memory" : NULL;
  for (int i = 0; !oom && i < SIM_RT_COUNT; i++) {
    if (!types[i]) continue;
    sim_xcursor c = {0};
    uint64_t h;
    char id[64];
    while (!oom && sim_xnext(&scope, (sim_rtype)i, &c, &h)) {
      sim_store_id(t->store, (sim_rtype)i, h, id);
      oom = add_ref(&refs, &n, &cap, sim_rtype_name((sim_rtype)i), id);
    }
  }
  for (int k = 0; !oom && k < SIM_REF_EXTRA_COUNT; k++) {
    if (!extra[k]) continue;
    sim_xcursor c = {0};
    uint32_t ordinal, index;
    char ref[96];
    while (!oom && sim_ref_xnext(&scope, t->ref.extra, k, &c, &ordinal, &index)) {
      sim_ref_extra_ref(&scope, k, ordinal, index, ref);
      char *slash = strchr(ref, '/');
      if (!slash) continue;
      *slash = '\0';
      oom = add_ref(&refs, &n, &cap, ref, slash + 1);
    }
  }
  if (provenance) {
    sim_xcursor c = {0};
    uint64_t h;
    sim_rtype target;
    char id[64], pid[80];
    while (!oom && sim_xnext_provenance(&scope, &c, &target, &h)) {
      sim_store_id(t->store, target, h, id);
      snprintf(pid, sizeof pid, "prv-%s", id);
      oom = add_ref(&refs, &n, &cap, "Provenance", pid);
    }
  }
  sim_xscope_free(&scope);
  json_t *list = oom ? NULL : json_array();
  if (list) {
    if (n) qsort(refs, n, sizeof *refs, compare_strings);
    for (size_t i = 0; i < n; i++)
      if (json_array_append_new(list, json_string(refs[i]))) {
        json_decref(list);
        list = NULL;
        break;
      }
  }
  for (size_t i = 0; i < n; i++) free(refs[i]);
  free(refs);
  if (list)
    sim_resp_json(resp, 200, SIM_CT_JSON, json_pack("{s:o}", "resources", list));
  else
    reply_error(resp, 500, "out of memory");
}
