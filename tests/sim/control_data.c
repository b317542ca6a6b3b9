/* Control endpoints about the tenant's data, for tests that compare what an
 * extractor published with what the simulator holds:
 *
 *   GET    /_sim/tenants/{t}/expected?patient=ID[,ID..][&types=A,B][&since=INSTANT]
 *                                    [&ref_types=A,B]
 *   POST   /_sim/tenants/{t}/touch   {"patient","type","count"} or {"patient","type","ids"}
 *   DELETE /_sim/tenants/{t}/touch
 *   GET    /_sim/tenants/{t}/reads[?type=T]
 *
 * `expected` answers from the same generators the FHIR endpoints serve, by
 * writing each resource and collecting the references found in it, so it
 * cannot drift from what a search returns. */
#include "tests/sim/fhir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void reply_error(sim_resp *resp, unsigned status, const char *error) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s", error);
  sim_utf8_trim(msg);
  sim_resp_json(resp, status, SIM_CT_JSON, json_pack("{s:s}", "error", msg));
}

/* ---- expected ---- */

typedef struct collect {
  const char *base;       /* "http://{host}/r4/{tenant}/" */
  char root[96];          /* "Patient/<id>" of the patient being extracted */
  const bool *ref_types;  /* [SIM_RT_COUNT] or NULL for all */
  json_t *references;     /* set: "Type/id" -> true */
} collect;

static void add_reference(collect *c, const char *full) {
  if (full[0] == '#') return; /* contained: nothing to fetch */
  char copy[512]; /* "Type/id" without an attachment URL's query */
  snprintf(copy, sizeof copy, "%.*s", (int)strcspn(full, "?#"), full);
  const char *ref = copy;
  size_t blen = strlen(c->base);
  if (strstr(ref, "://")) {
    if (strncmp(ref, c->base, blen) != 0) return; /* another server: never fetched */
    ref += blen;
  }
  const char *slash = strchr(ref, '/');
  if (!slash || strchr(slash + 1, '/') || strcmp(ref, c->root) == 0) return;
  char type[64];
  snprintf(type, sizeof type, "%.*s", (int)(slash - ref), ref);
  int t = sim_rtype_from_name(type);
  if (t < 0 || (c->ref_types && !c->ref_types[t])) return;
  json_object_set_new(c->references, ref, json_true());
}

/* References live in "reference" members; Binary in attachment "url"s. */
static void walk(collect *c, json_t *v) {
  const char *key;
  json_t *child;
  size_t i;
  if (json_is_object(v)) {
    json_object_foreach(v, key, child) {
      if (json_is_string(child) && strcmp(key, "reference") == 0)
        add_reference(c, json_string_value(child));
      else if (json_is_string(child) && strcmp(key, "url") == 0 &&
               strncmp(json_string_value(child), c->base, strlen(c->base)) == 0)
        add_reference(c, json_string_value(child));
      else
        walk(c, child);
    }
  } else if (json_is_array(v)) {
    json_array_foreach(v, i, child) walk(c, child);
  }
}

/* Writes one resource, adds "Type/id" to resources and its references. */
static int collect_resource(const sim_req *req, const sim_store *store, collect *c, sim_rtype t,
                            uint64_t handle, json_t *resources) {
  char id[64], ref[96];
  sim_store_id(store, t, handle, id);
  snprintf(ref, sizeof ref, "%s/%s", sim_rtype_name(t), id);
  sim_buf b = {0};
  sim_store_write(store, t, handle, req->host, &b);
  json_t *doc = b.oom ? NULL : json_loadb(b.data ? b.data : "", b.len, 0, NULL);
  sim_buf_free(&b);
  if (!doc) return -1;
  walk(c, doc);
  json_decref(doc);
  return json_array_append_new(resources, json_string(ref));
}

/* Parses a comma list of type names into flags; returns the bad name or NULL. */
static const char *parse_types(const char *list, bool out[SIM_RT_COUNT], char *bad, size_t n) {
  memset(out, 0, SIM_RT_COUNT * sizeof *out);
  for (const char *p = list; *p;) {
    size_t len = strcspn(p, ",");
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), p);
    int t = sim_rtype_from_name(name);
    if (t < 0) {
      snprintf(bad, n, "%s", name);
      return bad;
    }
    out[t] = true;
    p += len + (p[len] == ',');
  }
  return NULL;
}

static int expected_for_patient(const sim_req *req, const sim_store *store, collect *c,
                                const char *patient, const bool types[SIM_RT_COUNT],
                                bool has_since, int64_t since_ms, json_t *resources) {
  uint32_t ordinal;
  if (!sim_store_patient_ordinal(store, patient, &ordinal)) return 1;
  snprintf(c->root, sizeof c->root, "Patient/%s", patient);
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    if (!types[t]) continue;
    if (t == SIM_RT_PATIENT) {
      uint64_t h;
      if (!sim_store_resolve(store, SIM_RT_PATIENT, patient, &h) ||
          collect_resource(req, store, c, SIM_RT_PATIENT, h, resources) != 0)
        return -1;
      continue;
    }
    bool filter = has_since && sim_search_def_for((sim_rtype)t)->last_updated;
    size_t n = sim_pp_count(store, (sim_rtype)t, ordinal);
    for (size_t i = 0; i < n; i++) {
      uint64_t h = (uint64_t)ordinal * SIM_PP_STRIDE + i;
      if (filter && sim_pp_last_updated_ms(store, (sim_rtype)t, h) < since_ms) continue;
      if (collect_resource(req, store, c, (sim_rtype)t, h, resources) != 0) return -1;
    }
  }
  return 0;
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The keys of an object, sorted, as a new array (NULL on OOM). */
static json_t *sorted_keys(json_t *set) {
  size_t n = json_object_size(set), i = 0;
  const char **keys = calloc(n ? n : 1, sizeof *keys);
  json_t *out = json_array();
  if (!keys || !out) {
    free(keys);
    json_decref(out);
    return NULL;
  }
  const char *key;
  json_t *v;
  json_object_foreach(set, key, v) keys[i++] = key;
  qsort(keys, n, sizeof *keys, compare_strings);
  for (i = 0; i < n; i++) json_array_append_new(out, json_string(keys[i]));
  free(keys);
  return out;
}

static const char *const default_types =
    "AllergyIntolerance,CarePlan,CareTeam,Condition,Coverage,Device,DiagnosticReport,"
    "DocumentReference,Encounter,Goal,Immunization,MedicationRequest,Observation,Procedure,"
    "RelatedPerson,ServiceRequest";

void sim_control_expected(sim_req *req, sim_tenant *t, sim_resp *resp) {
  const char *patients = sim_req_query(req, "patient");
  const char *types_q = sim_req_query(req, "types");
  const char *since = sim_req_query(req, "since");
  const char *ref_types_q = sim_req_query(req, "ref_types");
  bool types[SIM_RT_COUNT], ref_types[SIM_RT_COUNT];
  char bad[64], msg[160];
  int64_t since_ms = 0, ignored;
  if (!patients || !*patients) {
    reply_error(resp, 400, "patient: required (one id or a comma-separated list)");
    return;
  }
  if (parse_types(types_q && *types_q ? types_q : default_types, types, bad, sizeof bad)) {
    snprintf(msg, sizeof msg, "types: unknown resource type \"%s\"", bad);
    reply_error(resp, 400, msg);
    return;
  }
  for (int i = 0; i < SIM_RT_COUNT; i++) {
    if (types[i] && i != SIM_RT_PATIENT && !sim_rtype_per_patient((sim_rtype)i)) {
      snprintf(msg, sizeof msg, "types: %s is not extracted per patient",
               sim_rtype_name((sim_rtype)i));
      reply_error(resp, 400, msg);
      return;
    }
  }
  if (ref_types_q && parse_types(ref_types_q, ref_types, bad, sizeof bad)) {
    snprintf(msg, sizeof msg, "ref_types: unknown resource type \"%s\"", bad);
    reply_error(resp, 400, msg);
    return;
  }
  if (since && sim_fhir_parse_instant(since, &since_ms, &ignored) != 0) {
    reply_error(resp, 400, "since: expected a FHIR instant such as 2024-06-01T00:00:00Z");
    return;
  }
  char base[512];
  snprintf(base, sizeof base, "%s://%s/r4/%s/", sim_scheme(), req->host, t->id);
  collect c = {.base = base, .ref_types = ref_types_q ? ref_types : NULL,
               .references = json_object()};
  json_t *resources = json_array();
  char *list = strdup(patients), *save = NULL;
  int rc = c.references && resources && list ? 0 : -1;
  for (char *p = list ? strtok_r(list, ",", &save) : NULL; rc == 0 && p;
       p = strtok_r(NULL, ",", &save)) {
    rc = expected_for_patient(req, t->store, &c, p, types, since != NULL, since_ms, resources);
    if (rc == 1) {
      snprintf(msg, sizeof msg, "patient: no patient with id \"%.64s\"", p);
      reply_error(resp, 404, msg);
    }
  }
  if (rc == 0) {
    json_t *refs = sorted_keys(c.references);
    json_t *doc = refs ? json_pack("{s:O, s:o}", "resources", resources, "references", refs) : NULL;
    sim_resp_json(resp, 200, SIM_CT_JSON, doc);
  } else if (rc < 0) {
    reply_error(resp, 500, "out of memory");
  }
  free(list);
  json_decref(resources);
  json_decref(c.references);
}

/* ---- touch ---- */

void sim_control_touch(sim_req *req, sim_tenant *t, sim_resp *resp) {
  json_error_t e;
  json_t *o = json_loadb(req->body.data ? req->body.data : "", req->body.len,
                         JSON_REJECT_DUPLICATES, &e);
  const char *key;
  json_t *v;
  const char *problem = NULL;
  json_object_foreach(o, key, v) {
    if (strcmp(key, "patient") && strcmp(key, "type") && strcmp(key, "count") &&
        strcmp(key, "ids"))
      problem = "unknown key (expected patient, type, count or ids)";
  }
  const char *patient = json_string_value(json_object_get(o, "patient"));
  const char *type_name = json_string_value(json_object_get(o, "type"));
  json_t *count = json_object_get(o, "count"), *ids = json_object_get(o, "ids");
  int type = type_name ? sim_rtype_from_name(type_name) : -1;
  const sim_store *store = t->store;
  uint32_t ordinal = 0;
  if (!json_is_object(o))
    problem = "body must be a JSON object";
  else if (!problem && (!patient || !sim_store_patient_ordinal(store, patient, &ordinal)))
    problem = "patient: expected the id of a patient of this tenant";
  else if (!problem && (type < 0 || !sim_rtype_per_patient((sim_rtype)type)))
    problem = "type: expected a per-patient resource type (Observation, Condition, ...)";
  else if (!problem && (count != NULL) == (ids != NULL))
    problem = "exactly one of count and ids is required";
  else if (!problem && count && (!json_is_integer(count) || json_integer_value(count) < 1))
    problem = "count: expected a positive integer";
  else if (!problem && ids && !json_is_array(ids))
    problem = "ids: expected an array of resource ids";
  /* Resolve everything before touching anything. */
  size_t n = sim_pp_count(store, (sim_rtype)(type < 0 ? 0 : type), ordinal);
  uint64_t *handles = NULL;
  size_t nh = 0;
  if (!problem) {
    size_t want = count ? (size_t)json_integer_value(count) : json_array_size(ids);
    if (count && want > n) want = n;
    handles = calloc(want ? want : 1, sizeof *handles);
    if (!handles) problem = "out of memory";
    for (size_t i = 0; !problem && i < want; i++) {
      uint64_t h = (uint64_t)ordinal * SIM_PP_STRIDE + i;
      const char *id = ids ? json_string_value(json_array_get(ids, i)) : NULL;
      if (ids && (!id || !sim_store_resolve(store, (sim_rtype)type, id, &h) ||
                  h / SIM_PP_STRIDE != ordinal))
        problem = "ids: every id must name a resource of that type and patient";
      else
        handles[nh++] = h;
    }
  }
  if (problem) {
    reply_error(resp, 400, problem);
  } else {
    int64_t now = sim_now_ms();
    char when[32];
    sim_fhir_instant_ms(now, when);
    json_t *touched = json_array();
    int rc = touched ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < nh; i++) {
      char id[64], ref[96];
      sim_store_id(store, (sim_rtype)type, handles[i], id);
      snprintf(ref, sizeof ref, "%s/%s", type_name, id);
      rc = sim_store_touch(store, (sim_rtype)type, handles[i], now) ||
           json_array_append_new(touched, json_string(ref));
    }
    if (rc == 0)
      sim_resp_json(resp, 200, SIM_CT_JSON,
                    json_pack("{s:o, s:s}", "touched", touched, "lastUpdated", when));
    else {
      json_decref(touched);
      reply_error(resp, 500, "out of memory");
    }
  }
  free(handles);
  json_decref(o);
}

void sim_control_untouch(sim_req *req, sim_tenant *t, sim_resp *resp) {
  (void)req;
  sim_store_untouch_all(t->store);
  sim_resp_json(resp, 200, SIM_CT_JSON, json_pack("{s:b}", "ok", 1));
}

/* ---- reads ---- */

void sim_control_reads(sim_req *req, sim_tenant *t, sim_resp *resp) {
  const char *type = sim_req_query(req, "type");
  sim_resp_json(resp, 200, SIM_CT_JSON,
                sim_state_reads_json(req->st, t, type && *type ? type : NULL));
}
