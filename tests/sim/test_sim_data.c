/* sim_data: the simulator's data for all 21 resource types and Cerner's
 * search behaviour, as the worker's end-to-end tests and benchmarks rely on
 * it: every type searchable per patient with its required parameters,
 * paging (opaque contexts, short pages, repeated ids, outcome entries) that
 * yields exactly what /expected says, _lastUpdated, touch, Binary in both
 * forms, references that resolve, shared practitioners, read counters,
 * byte-identical data for the same seed, and a clean exit.
 *
 * The tests share one simulator and run in the order listed in main(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "fx_testsupport.h"
#include "tests/sim/test_keys.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TENANT "data-t"
#define BIG "big-t" /* every Binary large */
#define CLIENT "data-client"
#define WILMA "12724065"
#define P1 "20000003"
#define P2 "20000011"
#define LARGE_BYTES 3000000

static const char *const per_patient_types[] = {
    "AllergyIntolerance", "CarePlan",      "CareTeam",     "Condition",
    "Coverage",           "Device",        "DiagnosticReport", "DocumentReference",
    "Encounter",          "Goal",          "Immunization", "MedicationRequest",
    "Observation",        "Procedure",     "RelatedPerson", "ServiceRequest"};
#define NTYPES (sizeof per_patient_types / sizeof *per_patient_types)

static const char config_json[] =
    "{\"seed\": 7, \"tenants\": ["
    " {\"id\": \"" TENANT "\", \"sandbox\": true, \"patients\": 30, \"foreign_references\": true,"
    "  \"per_patient\": {\"Observation\": 23, \"DocumentReference\": 12},"
    "  \"binary_min_bytes\": 1000, \"binary_max_bytes\": 5000},"
    " {\"id\": \"" BIG "\", \"patients\": 2, \"binary_large_every\": 1,"
    "  \"binary_large_bytes\": 3000000, \"per_patient\": {\"DocumentReference\": 1}}"
    "]}";

typedef struct fixture {
  fx_sim sim;
  test_key key;
  char *token;      /* every read scope */
  char *token_big;  /* every read scope, tenant BIG */
  unsigned jti_seq;
} fixture;

/* ---- helpers ---- */

/* What a search by patient must carry besides patient (Cerner's rules). */
static const char *extra_params(const char *type) {
  if (strcmp(type, "CarePlan") == 0) return "&category=assess-plan";
  if (strcmp(type, "RelatedPerson") == 0) return "&-relationship-level=Patient";
  return "";
}

static char *all_scopes(void) {
  static const char *const types[] = {
      "AllergyIntolerance", "Binary",       "CarePlan",      "CareTeam",     "Condition",
      "Coverage",           "Device",       "DiagnosticReport", "DocumentReference",
      "Encounter",          "Goal",         "Immunization",  "Location",     "MedicationRequest",
      "Observation",        "Organization", "Patient",       "Practitioner", "Procedure",
      "RelatedPerson",      "ServiceRequest"};
  char *s = calloc(1, 2048);
  for (size_t i = 0; s && i < sizeof types / sizeof *types; i++)
    snprintf(s + strlen(s), 2048 - strlen(s), "%ssystem/%s.read", i ? " " : "", types[i]);
  return s;
}

static void register_client(fixture *f, const char *tenant) {
  json_t *jwks = json_pack("{s:[o]}", "keys", test_key_jwk(&f->key));
  char *scopes = all_scopes();
  json_t *list = json_array();
  char *copy = strdup(scopes), *save = NULL;
  for (char *s = strtok_r(copy, " ", &save); s; s = strtok_r(NULL, " ", &save))
    json_array_append_new(list, json_string(s));
  json_t *client = json_pack("{s:s, s:o, s:o}", "client_id", CLIENT, "jwks", jwks, "scopes", list);
  char *body = json_dumps(client, JSON_COMPACT), path[256];
  snprintf(path, sizeof path, "/_sim/tenants/%s/clients", tenant);
  assert_int_equal(fx_sim_post_json(&f->sim, path, body), 200);
  free(body);
  free(copy);
  free(scopes);
  json_decref(client);
}

/* A token for CLIENT on tenant with the given space-separated scopes. */
static char *token_for(fixture *f, const fx_sim *sim, const char *tenant, const char *scope) {
  char aud[512], jti[64], url[512];
  snprintf(aud, sizeof aud, "%s/tenants/%s/protocols/oauth2/profiles/smart-v1/token", sim->url,
           tenant);
  snprintf(jti, sizeof jti, "data-%ld-%u", (long)time(NULL), ++f->jti_seq);
  json_t *c = json_pack("{s:s, s:s, s:s, s:I, s:s}", "iss", CLIENT, "sub", CLIENT, "aud", aud,
                        "exp", (json_int_t)(time(NULL) + 240), "jti", jti);
  char *jwt = test_jwt_sign(&f->key, c, NULL, NULL);
  json_decref(c);
  assert_non_null(jwt);
  char *esc = curl_easy_escape(NULL, scope, 0);
  size_t n = strlen(jwt) + strlen(esc) + 256;
  char *form = malloc(n);
  snprintf(form, n,
           "grant_type=client_credentials&client_assertion_type=urn%%3Aietf%%3Aparams%%3Aoauth"
           "%%3Aclient-assertion-type%%3Ajwt-bearer&client_assertion=%s&scope=%s",
           jwt, esc);
  const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  fxt_http_resp r;
  snprintf(url, sizeof url, "%s", aud);
  assert_int_equal(fxt_http("POST", url, headers, form, &r), 0);
  assert_int_equal(r.status, 200);
  json_t *body = json_loads(r.body, 0, NULL);
  char *token = strdup(json_string_value(json_object_get(body, "access_token")));
  json_decref(body);
  fxt_http_resp_free(&r);
  free(form);
  curl_free(esc);
  free(jwt);
  return token;
}

/* GET {sim}/r4/{tenant}{path}; extra: one more header or NULL. */
static long get(const fx_sim *sim, const char *tenant, const char *path, const char *token,
                const char *extra, fxt_http_resp *r) {
  char url[2048], auth[512];
  if (strncmp(path, "http", 4) == 0)
    snprintf(url, sizeof url, "%s", path);
  else
    snprintf(url, sizeof url, "%s/r4/%s%s", sim->url, tenant, path);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
  const char *headers[] = {auth, extra ? extra : "Accept: application/fhir+json", NULL};
  assert_int_equal(fxt_http("GET", url, headers, NULL, r), 0);
  return r->status;
}

static json_t *get_json(const fx_sim *sim, const char *tenant, const char *path,
                        const char *token, long want_status) {
  fxt_http_resp r;
  long status = get(sim, tenant, path, token, NULL, &r);
  if (status != want_status) fprintf(stderr, "GET %s: %ld %s\n", path, status, r.body);
  assert_int_equal(status, want_status);
  json_t *doc = json_loads(r.body, 0, NULL);
  assert_non_null(doc);
  fxt_http_resp_free(&r);
  return doc;
}

static const char *diagnostics(const json_t *oo) {
  return json_string_value(
      json_object_get(json_array_get(json_object_get(oo, "issue"), 0), "diagnostics"));
}

static const char *next_link(const json_t *bundle) {
  size_t i;
  const json_t *l;
  json_array_foreach(json_object_get(bundle, "link"), i, l) {
    if (strcmp(json_string_value(json_object_get(l, "relation")), "next") == 0)
      return json_string_value(json_object_get(l, "url"));
  }
  return NULL;
}

typedef struct walk_stats {
  size_t pages, matches, repeats, outcomes, short_pages;
} walk_stats;

/* Follows next links from `path`, adding "Type/id" of every match entry to
 * `ids` (a set object). Checks entry shape, the opaque next links and the
 * absence of Bundle.total on the way. */
static void walk(fixture *f, const char *path, unsigned count, json_t *ids, walk_stats *st) {
  char url[2048];
  snprintf(url, sizeof url, "%s", path);
  while (*url) {
    json_t *b = get_json(&f->sim, TENANT, url, f->token, 200);
    assert_string_equal(json_string_value(json_object_get(b, "type")), "searchset");
    assert_null(json_object_get(b, "total"));
    st->pages++;
    size_t i, n = 0;
    const json_t *e;
    json_array_foreach(json_object_get(b, "entry"), i, e) {
      const char *mode = json_string_value(json_object_get(json_object_get(e, "search"), "mode"));
      const json_t *res = json_object_get(e, "resource");
      if (strcmp(mode, "outcome") == 0) {
        assert_string_equal(json_string_value(json_object_get(res, "resourceType")),
                            "OperationOutcome");
        st->outcomes++;
        continue;
      }
      assert_string_equal(mode, "match");
      char key[160];
      snprintf(key, sizeof key, "%s/%s", json_string_value(json_object_get(res, "resourceType")),
               json_string_value(json_object_get(res, "id")));
      const char *full = json_string_value(json_object_get(e, "fullUrl"));
      assert_non_null(full);
      assert_string_equal(full + strlen(full) - strlen(key), key);
      if (json_object_get(ids, key))
        st->repeats++;
      else
        json_object_set_new(ids, key, json_true());
      n++;
    }
    st->matches += n;
    const char *next = next_link(b);
    url[0] = '\0';
    if (next) {
      /* Opaque: the only parameter is -pageContext, and the patient id and
       * offset are not readable in it. */
      const char *q = strchr(next, '?');
      assert_non_null(q);
      assert_int_equal(strncmp(q, "?-pageContext=", 14), 0);
      assert_null(strchr(q + 1, '&'));
      assert_null(strstr(q, P1));
      if (n < count) st->short_pages++;
      snprintf(url, sizeof url, "%s", next);
    }
    json_decref(b);
    assert_true(st->pages < 500);
  }
}

/* The sorted "Type/id" strings of a JSON array, for set comparisons. */
static bool same_set(const json_t *set_obj, const json_t *array) {
  if (json_object_size(set_obj) != json_array_size(array)) return false;
  size_t i;
  const json_t *v;
  json_array_foreach(array, i, v) {
    if (!json_object_get(set_obj, json_string_value(v))) return false;
  }
  return true;
}

static bool array_has(const json_t *arr, const char *s) {
  size_t i;
  const json_t *v;
  json_array_foreach(arr, i, v) {
    if (strcmp(json_string_value(v), s) == 0) return true;
  }
  return false;
}

/* ---- fixture ---- */

static int group_setup(void **state) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  fixture *f = calloc(1, sizeof *f);
  if (!f || test_key_gen(&f->key, "ES384", "data-1")) return -1;
  const char *args[] = {"--threads", "4", NULL};
  if (fx_sim_start_args(&f->sim, config_json, args) != 0) return -1;
  *state = f;
  register_client(f, TENANT);
  register_client(f, BIG);
  char *scopes = all_scopes();
  f->token = token_for(f, &f->sim, TENANT, scopes);
  f->token_big = token_for(f, &f->sim, BIG, scopes);
  free(scopes);
  return 0;
}

static int group_teardown(void **state) {
  fixture *f = *state;
  if (f) {
    fx_sim_stop(&f->sim);
    test_key_free(&f->key);
    free(f->token);
    free(f->token_big);
    free(f);
  }
  curl_global_cleanup();
  return 0;
}

/* ---- tests ---- */

/* Every per-patient type answers a search by patient with exactly the
 * patient's resources, and a 400 in Cerner's words without its required
 * parameter. */
static void test_every_type_searchable(void **state) {
  fixture *f = *state;
  json_t *exp = fx_sim_expected(&f->sim, TENANT, P1, NULL, NULL);
  assert_non_null(exp);
  for (size_t t = 0; t < NTYPES; t++) {
    const char *type = per_patient_types[t];
    char path[256];
    snprintf(path, sizeof path, "/%s?patient=%s%s&_count=200", type, P1, extra_params(type));
    json_t *ids = json_object();
    walk_stats st = {0};
    walk(f, path, 200, ids, &st);
    size_t want = 0, i;
    const json_t *v;
    json_array_foreach(json_object_get(exp, "resources"), i, v) {
      const char *s = json_string_value(v);
      if (strncmp(s, type, strlen(type)) == 0 && s[strlen(type)] == '/') {
        want++;
        assert_non_null(json_object_get(ids, s));
      }
    }
    if (json_object_size(ids) != want)
      fprintf(stderr, "%s: %zu found, %zu expected\n", type, json_object_size(ids), want);
    assert_int_equal(json_object_size(ids), want);
    assert_true(want > 0);
    json_decref(ids);

    snprintf(path, sizeof path, "/%s", type);
    json_t *oo = get_json(&f->sim, TENANT, path, f->token, 400);
    assert_non_null(strstr(diagnostics(oo), "must be provided"));
    json_decref(oo);
  }
  json_decref(exp);

  json_t *oo = get_json(&f->sim, TENANT, "/Observation", f->token, 400);
  assert_string_equal(diagnostics(oo),
                      "at least one of _id, patient, subject, or -pageContext must be provided");
  json_decref(oo);
  oo = get_json(&f->sim, TENANT, "/Coverage?_id=1", f->token, 400);
  assert_string_equal(diagnostics(oo),
                      "at least one of patient, -encounter, or -pageContext must be provided");
  json_decref(oo);
  /* CarePlan by patient needs category=assess-plan. */
  json_decref(get_json(&f->sim, TENANT, "/CarePlan?patient=" P1, f->token, 400));
  json_decref(get_json(&f->sim, TENANT, "/CarePlan?patient=" P1 "&category=other", f->token, 400));
  /* One patient per search; _id alone; subject only where Cerner takes it. */
  json_decref(get_json(&f->sim, TENANT, "/Immunization?patient=" P1 "," P2, f->token, 400));
  json_decref(get_json(&f->sim, TENANT, "/Observation?_id=1&patient=" P1, f->token, 400));
  json_decref(get_json(&f->sim, TENANT, "/DiagnosticReport?subject=" P1, f->token, 400));
  json_t *b = get_json(&f->sim, TENANT, "/Observation?subject=Patient/" P1, f->token, 200);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 23);
  json_decref(b);
  /* Default _count: DocumentReference 10 (12 exist), Observation 50 (23 exist). */
  b = get_json(&f->sim, TENANT, "/DocumentReference?patient=" P1, f->token, 200);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 10);
  assert_non_null(next_link(b));
  json_decref(b);
  /* Patient search keeps working. */
  b = get_json(&f->sim, TENANT, "/Patient?family=smart&_count=100", f->token, 200);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 8);
  json_decref(b);
}

static void test_pools_searchable(void **state) {
  fixture *f = *state;
  json_t *b = get_json(&f->sim, TENANT, "/Practitioner?_id=4000001,4000002", f->token, 200);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 2);
  json_decref(b);
  json_decref(get_json(&f->sim, TENANT, "/Practitioner", f->token, 400));
  b = get_json(&f->sim, TENANT, "/Organization", f->token, 200); /* no parameter needed */
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 10);
  json_decref(b);
  b = get_json(&f->sim, TENANT, "/Location?_id=6000011", f->token, 200);
  const json_t *loc = json_object_get(json_array_get(json_object_get(b, "entry"), 0), "resource");
  assert_string_equal(json_string_value(json_object_get(loc, "id")), "6000011");
  assert_non_null(json_object_get(loc, "partOf"));
  assert_non_null(json_object_get(loc, "managingOrganization"));
  json_decref(b);
  b = get_json(&f->sim, TENANT, "/Location?-physicalType=si", f->token, 200);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 2);
  json_decref(b);
  json_decref(get_json(&f->sim, TENANT, "/Location", f->token, 400));
}

/* Paging through every type with small pages yields exactly /expected,
 * and along the way the quirks a client must survive all occur. */
static void test_paging_matches_expected(void **state) {
  fixture *f = *state;
  walk_stats st = {0};
  json_t *ids = json_object();
  for (size_t t = 0; t < NTYPES; t++) {
    char path[256];
    snprintf(path, sizeof path, "/%s?patient=%s&_count=2%s", per_patient_types[t], WILMA,
             extra_params(per_patient_types[t]));
    walk(f, path, 2, ids, &st);
  }
  walk(f, "/Observation?patient=" P2 "&_count=3", 3, ids, &st);
  json_t *exp = fx_sim_expected(&f->sim, TENANT, WILMA, NULL, NULL);
  json_t *exp2 = fx_sim_expected(&f->sim, TENANT, P2, "Observation", NULL);
  assert_non_null(exp);
  assert_non_null(exp2);
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(exp2, "resources"), i, v)
      json_array_append(json_object_get(exp, "resources"), v);
  assert_true(same_set(ids, json_object_get(exp, "resources")));
  fprintf(stderr, "paging: %zu pages, %zu matches, %zu repeats, %zu outcomes, %zu short\n",
          st.pages, st.matches, st.repeats, st.outcomes, st.short_pages);
  assert_true(st.repeats > 0);
  assert_true(st.outcomes > 0);
  assert_true(st.short_pages > 0);
  assert_int_equal(st.matches, json_object_size(ids) + st.repeats);
  json_decref(exp);
  json_decref(exp2);
  json_decref(ids);

  /* A tampered page context is refused. */
  json_t *b = get_json(&f->sim, TENANT, "/Observation?patient=" P1 "&_count=5", f->token, 200);
  char bad[2048];
  snprintf(bad, sizeof bad, "%s", next_link(b));
  bad[strlen(bad) - 3] = bad[strlen(bad) - 3] == 'A' ? 'B' : 'A';
  json_decref(get_json(&f->sim, TENANT, bad, f->token, 400));
  json_decref(b);
}

static void test_last_updated(void **state) {
  fixture *f = *state;
  const char *since = "2024-07-01T00:00:00Z";
  json_t *after = json_object(), *before = json_object();
  walk_stats st = {0};
  walk(f, "/Observation?patient=" P1 "&_lastUpdated=ge2024-07-01T00:00:00Z", 50, after, &st);
  walk(f, "/Observation?patient=" P1 "&_lastUpdated=lt2024-07-01T00:00:00Z", 50, before, &st);
  assert_int_equal(json_object_size(after) + json_object_size(before), 23);
  assert_true(json_object_size(after) > 0 && json_object_size(before) > 0);
  json_t *exp = fx_sim_expected(&f->sim, TENANT, P1, "Observation", since);
  assert_true(same_set(after, json_object_get(exp, "resources")));
  json_decref(exp);
  /* Every returned resource really is that recent. */
  json_t *b = get_json(&f->sim, TENANT, "/Observation?patient=" P1 "&_lastUpdated=ge2024-07-01",
                       f->token, 200);
  size_t i;
  const json_t *e;
  json_array_foreach(json_object_get(b, "entry"), i, e) {
    const char *lu = json_string_value(
        json_object_get(json_object_get(json_object_get(e, "resource"), "meta"), "lastUpdated"));
    assert_true(strcmp(lu, "2024-07-01") > 0);
  }
  json_decref(b);
  /* Goal does not honour _lastUpdated: a since search returns everything. */
  json_t *goals = json_object();
  walk(f, "/Goal?patient=" P1 "&_lastUpdated=ge2030-01-01", 50, goals, &st);
  assert_int_equal(json_object_size(goals), 2);
  exp = fx_sim_expected(&f->sim, TENANT, P1, "Goal", "2030-01-01T00:00:00Z");
  assert_true(same_set(goals, json_object_get(exp, "resources")));
  json_decref(exp);
  json_decref(get_json(&f->sim, TENANT, "/Observation?patient=" P1 "&_lastUpdated=ge2024-13",
                       f->token, 400));
  json_decref(goals);
  json_decref(after);
  json_decref(before);
}

static void test_touch_then_since(void **state) {
  fixture *f = *state;
  char since[32], path[256];
  time_t now = time(NULL);
  strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  fxt_http_resp r;
  char url[512];
  snprintf(url, sizeof url, "%s/_sim/tenants/" TENANT "/touch", f->sim.url);
  const char *h[] = {"Content-Type: application/json", NULL};
  assert_int_equal(fxt_http("POST", url, h,
                            "{\"patient\":\"" P2 "\",\"type\":\"Observation\",\"count\":3}", &r),
                   0);
  assert_int_equal(r.status, 200);
  json_t *touched = json_loads(r.body, 0, NULL);
  fxt_http_resp_free(&r);
  const json_t *list = json_object_get(touched, "touched");
  assert_int_equal(json_array_size(list), 3);

  snprintf(path, sizeof path, "/Observation?patient=%s&_lastUpdated=ge%s", P2, since);
  json_t *ids = json_object();
  walk_stats st = {0};
  walk(f, path, 50, ids, &st);
  assert_true(same_set(ids, list));
  json_t *exp = fx_sim_expected(&f->sim, TENANT, P2, "Observation", since);
  assert_true(same_set(ids, json_object_get(exp, "resources")));
  json_decref(exp);
  json_decref(ids);

  /* The touched resource reads back with the new lastUpdated and a bumped versionId. */
  const char *first = json_string_value(json_array_get(list, 0));
  snprintf(path, sizeof path, "/%s", first);
  json_t *res = get_json(&f->sim, TENANT, path, f->token, 200);
  assert_string_equal(json_string_value(json_object_get(json_object_get(res, "meta"),
                                                        "lastUpdated")),
                      json_string_value(json_object_get(touched, "lastUpdated")));
  json_decref(res);

  /* Bad bodies change nothing; DELETE forgets every touch. */
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/touch",
                                    "{\"patient\":\"" P2 "\",\"type\":\"Patient\",\"count\":1}"),
                   400);
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/touch",
                                    "{\"patient\":\"" P2 "\",\"type\":\"Observation\","
                                    "\"ids\":[\"2300000010000\"]}"),
                   400);
  assert_int_equal(fx_sim_delete(&f->sim, "/_sim/tenants/" TENANT "/touch"), 200);
  snprintf(path, sizeof path, "/Observation?patient=%s&_lastUpdated=ge%s", P2, since);
  json_t *b = get_json(&f->sim, TENANT, path, f->token, 200);
  assert_null(json_object_get(b, "entry"));
  json_decref(b);
  json_decref(touched);
}

static uint8_t *b64_decode(const char *s, size_t *n) {
  size_t len = strlen(s);
  uint8_t *out = malloc(len / 4 * 3 + 3);
  int got = EVP_DecodeBlock(out, (const unsigned char *)s, (int)len);
  assert_true(got >= 0);
  *n = (size_t)got - (len && s[len - 1] == '=') - (len > 1 && s[len - 2] == '=');
  return out;
}

static void check_binary(const fx_sim *sim, const char *tenant, const char *token,
                         const char *url, size_t size) {
  fxt_http_resp r;
  /* FHIR form: a Binary resource with base64 data. */
  assert_int_equal(get(sim, tenant, url, token, "Accept: application/fhir+json", &r), 200);
  json_t *bin = json_loads(r.body, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(bin, "resourceType")), "Binary");
  assert_string_equal(json_string_value(json_object_get(bin, "contentType")), "application/pdf");
  size_t n;
  uint8_t *data = b64_decode(json_string_value(json_object_get(bin, "data")), &n);
  assert_int_equal(n, size);
  assert_memory_equal(data, "%PDF-1.4", 8);
  fxt_http_resp_free(&r);
  json_decref(bin);
  /* Raw form: the same bytes. */
  assert_int_equal(get(sim, tenant, url, token, "Accept: application/pdf", &r), 200);
  char *ct = fxt_http_header(&r, "Content-Type");
  assert_string_equal(ct, "application/pdf");
  free(ct);
  assert_int_equal(r.body_len, size);
  assert_memory_equal(r.body, data, size);
  assert_memory_equal(r.body + size - 7, "\n%%EOF\n", 7);
  fxt_http_resp_free(&r);
  free(data);
  assert_int_equal(get(sim, tenant, url, token, "Accept: text/html", &r), 406);
  fxt_http_resp_free(&r);
  /* binary.md: application/json only for JSON data. */
  assert_int_equal(get(sim, tenant, url, token, "Accept: application/json", &r), 406);
  fxt_http_resp_free(&r);
}

static void test_binary(void **state) {
  fixture *f = *state;
  /* DocumentReference and DiagnosticReport attachments: absolute URLs here. */
  json_t *b =
      get_json(&f->sim, TENANT, "/DocumentReference?patient=" P1 "&_count=1", f->token, 200);
  const json_t *doc = json_object_get(json_array_get(json_object_get(b, "entry"), 0), "resource");
  const json_t *att =
      json_object_get(json_array_get(json_object_get(doc, "content"), 0), "attachment");
  const char *url = json_string_value(json_object_get(att, "url"));
  char prefix[256];
  snprintf(prefix, sizeof prefix, "%s/r4/" TENANT "/Binary/", f->sim.url);
  assert_int_equal(strncmp(url, prefix, strlen(prefix)), 0);
  size_t size = (size_t)json_integer_value(json_object_get(att, "size"));
  assert_true(size >= 1000 && size <= 5000);
  check_binary(&f->sim, TENANT, f->token, url, size);
  char binary_url[512];
  snprintf(binary_url, sizeof binary_url, "%s", url);
  json_decref(b);

  b = get_json(&f->sim, TENANT, "/DiagnosticReport?patient=" P1 "&_count=1", f->token, 200);
  const json_t *dr = json_object_get(json_array_get(json_object_get(b, "entry"), 0), "resource");
  att = json_array_get(json_object_get(dr, "presentedForm"), 0);
  check_binary(&f->sim, TENANT, f->token, json_string_value(json_object_get(att, "url")),
               (size_t)json_integer_value(json_object_get(att, "size")));
  json_decref(b);

  /* Scopes: Binary.read plus DocumentReference.read or DiagnosticReport.read. */
  fxt_http_resp r;
  char *t1 = token_for(f, &f->sim, TENANT, "system/Binary.read");
  char *t2 = token_for(f, &f->sim, TENANT, "system/DocumentReference.read");
  char *t3 = token_for(f, &f->sim, TENANT, "system/Binary.read system/DiagnosticReport.read");
  assert_int_equal(get(&f->sim, TENANT, binary_url, t1, NULL, &r), 403);
  fxt_http_resp_free(&r);
  assert_int_equal(get(&f->sim, TENANT, binary_url, t2, NULL, &r), 403);
  fxt_http_resp_free(&r);
  assert_int_equal(get(&f->sim, TENANT, binary_url, t3, NULL, &r), 200);
  fxt_http_resp_free(&r);
  free(t1);
  free(t2);
  free(t3);
  assert_int_equal(get(&f->sim, TENANT, "/Binary/XR-999", f->token, NULL, &r), 404);
  fxt_http_resp_free(&r);

  /* The large-document tenant: attachment.size says 3 MB and 3 MB arrive. */
  b = get_json(&f->sim, BIG, "/DocumentReference?patient=20000001", f->token_big, 200);
  doc = json_object_get(json_array_get(json_object_get(b, "entry"), 0), "resource");
  att = json_object_get(json_array_get(json_object_get(doc, "content"), 0), "attachment");
  assert_int_equal(json_integer_value(json_object_get(att, "size")), LARGE_BYTES);
  check_binary(&f->sim, BIG, f->token_big, json_string_value(json_object_get(att, "url")),
               LARGE_BYTES);
  json_decref(b);
}

static void test_references_resolve(void **state) {
  fixture *f = *state;
  json_t *exp = fx_sim_expected(&f->sim, TENANT, P1, NULL, NULL);
  const json_t *refs = json_object_get(exp, "references");
  bool kinds[6] = {0};
  static const char *const want[] = {"Practitioner/", "Organization/", "Location/",
                                     "Binary/",       "RelatedPerson/", "Encounter/"};
  size_t i;
  const json_t *v;
  json_array_foreach(refs, i, v) {
    const char *ref = json_string_value(v);
    char path[256];
    snprintf(path, sizeof path, "/%s", ref);
    fxt_http_resp r;
    long status = get(&f->sim, TENANT, path, f->token, NULL, &r);
    if (status != 200) fprintf(stderr, "%s: %ld\n", ref, status);
    assert_int_equal(status, 200);
    fxt_http_resp_free(&r);
    assert_null(strstr(ref, "://"));
    assert_int_not_equal(ref[0], '#');
    assert_int_not_equal(strcmp(ref, "Patient/" P1), 0);
    for (size_t k = 0; k < 6; k++)
      if (strncmp(ref, want[k], strlen(want[k])) == 0) kinds[k] = true;
  }
  for (size_t k = 0; k < 6; k++) assert_true(kinds[k]);

  /* Foreign and contained references exist in the data but never in /expected. */
  bool foreign = false, contained = false;
  for (int p = 1; p <= 10 && !(foreign && contained); p++) {
    char path[256];
    snprintf(path, sizeof path, "/Observation?patient=%d", 20000000 + p);
    fxt_http_resp r;
    assert_int_equal(get(&f->sim, TENANT, path, f->token, NULL, &r), 200);
    foreign = foreign || strstr(r.body, "\"reference\":\"https://fhir.other-ehr.example.org/");
    fxt_http_resp_free(&r);
    snprintf(path, sizeof path, "/MedicationRequest?patient=%d", 20000000 + p);
    assert_int_equal(get(&f->sim, TENANT, path, f->token, NULL, &r), 200);
    contained = contained || strstr(r.body, "\"reference\":\"#med1\"");
    fxt_http_resp_free(&r);
  }
  assert_true(foreign);
  assert_true(contained);
  json_decref(exp);
}

/* Many patients share the same practitioners; reads are counted per path. */
static void test_shared_practitioners_and_counters(void **state) {
  fixture *f = *state;
  json_t *a = fx_sim_expected(&f->sim, TENANT, P1, NULL, NULL);
  json_t *b = fx_sim_expected(&f->sim, TENANT, P2, NULL, NULL);
  size_t shared = 0, i;
  const json_t *v;
  json_array_foreach(json_object_get(a, "references"), i, v) {
    const char *ref = json_string_value(v);
    if (strncmp(ref, "Practitioner/", 13) == 0 && array_has(json_object_get(b, "references"), ref))
      shared++;
  }
  assert_true(shared >= 3);
  json_decref(a);
  json_decref(b);

  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/counters/reset", NULL), 200);
  fxt_http_resp r;
  for (int k = 0; k < 2; k++) {
    assert_int_equal(get(&f->sim, TENANT, "/Practitioner/4000001", f->token, NULL, &r), 200);
    fxt_http_resp_free(&r);
  }
  assert_int_equal(get(&f->sim, TENANT, "/Organization/5000001", f->token, NULL, &r), 200);
  fxt_http_resp_free(&r);
  json_t *page1 = get_json(&f->sim, TENANT, "/Observation?patient=" P1 "&_count=10", f->token, 200);
  json_decref(get_json(&f->sim, TENANT, next_link(page1), f->token, 200));
  json_decref(page1);

  assert_int_equal(fx_sim_reads(&f->sim, TENANT, "Practitioner/4000001"), 2);
  assert_int_equal(fx_sim_reads(&f->sim, TENANT, "Organization/5000001"), 1);
  assert_int_equal(fx_sim_reads(&f->sim, TENANT, "Practitioner/4000002"), 0);
  json_t *reads = fx_sim_get_json(&f->sim, "/_sim/tenants/" TENANT "/reads?type=Practitioner");
  assert_int_equal(json_object_size(reads), 1);
  json_decref(reads);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_by_type.Practitioner"), 2);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_by_kind.read"), 3);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_by_kind.search"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_by_kind.page"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_by_type_kind.Observation.page"), 1);
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/counters/reset", NULL), 200);
  assert_int_equal(fx_sim_reads(&f->sim, TENANT, "Practitioner/4000001"), 0);
}

/* Same seed, same bytes: a second simulator serves identical reads, pages
 * and documents (same Host header, so the URLs inside match too). */
static void test_same_seed_same_bytes(void **state) {
  fixture *f = *state;
  fx_sim second;
  assert_int_equal(fx_sim_start(&second, config_json), 0);
  fx_sim saved = f->sim;
  f->sim = second;
  register_client(f, TENANT);
  char *scopes = all_scopes();
  char *token2 = token_for(f, &second, TENANT, scopes);
  free(scopes);
  f->sim = saved;

  const char *paths[] = {"/Observation?patient=" P1 "&_count=5",
                         "/DocumentReference?patient=" WILMA,
                         "/Encounter/1900000030002",
                         "/RelatedPerson?patient=" P1 "&-relationship-level=Patient",
                         "/CareTeam?patient=" P1,
                         "/Practitioner/4000007",
                         "/Location/6000015",
                         "/Patient/" P1,
                         "/Binary/XR-1800000030001"};
  for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
    char path[2048];
    snprintf(path, sizeof path, "%s", paths[i]);
    for (int page = 0; page < 2 && *path; page++) {
      fxt_http_resp a, b;
      assert_int_equal(get(&f->sim, TENANT, path, f->token, "Host: sim.example:1", &a), 200);
      assert_int_equal(get(&second, TENANT, path, token2, "Host: sim.example:1", &b), 200);
      assert_int_equal(a.body_len, b.body_len);
      assert_memory_equal(a.body, b.body, a.body_len);
      /* Follow the next link (it names sim.example:1) on our own port. */
      json_t *doc = json_loads(a.body, 0, NULL);
      const char *next = doc ? next_link(doc) : NULL;
      const char *rest = next ? strstr(next, "/r4/" TENANT) : NULL;
      snprintf(path, sizeof path, "%s", rest ? rest + strlen("/r4/" TENANT) : "");
      json_decref(doc);
      fxt_http_resp_free(&a);
      fxt_http_resp_free(&b);
    }
  }
  assert_int_equal(fx_sim_stop_status(&second), 0);
  free(token2);
}

static void test_bad_data_config(void **state) {
  (void)state;
  char *dir = fx_test_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/bad.json", dir);
  const char *argv[] = {fx_sim_binary(), "--config", path, NULL};
  static const char *const cases[][2] = {
      {"{\"tenants\":[{\"id\":\"t\",\"per_patient\":{\"Practitioner\":3}}]}", "per_patient"},
      {"{\"tenants\":[{\"id\":\"t\",\"per_patient\":{\"Observation\":-1}}]}", "Observation"},
      {"{\"tenants\":[{\"id\":\"t\",\"per_patient\":{\"Observation\":500},"
       "\"per_patient_scale\":50}]}",
       "per_patient_scale"},
      {"{\"tenants\":[{\"id\":\"t\",\"binary_min_bytes\":5000,\"binary_max_bytes\":4000}]}",
       "binary_max_bytes"},
      {"{\"tenants\":[{\"id\":\"t\",\"practitioners\":0}]}", "practitioners"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    assert_int_equal(fx_test_write_file(path, cases[i][0]), 0);
    fx_run_result res;
    assert_int_equal(fx_test_run(argv, NULL, 10000, &res), 0);
    if (res.exit_code != 2 || !strstr(res.err, cases[i][1]))
      fprintf(stderr, "case %zu: exit %d: %s\n", i, res.exit_code, res.err);
    assert_int_equal(res.exit_code, 2);
    assert_non_null(strstr(res.err, cases[i][1]));
    fx_run_result_free(&res);
  }
  fx_test_rmtree(dir);
  free(dir);
}

/* Last: SIGTERM must give exit 0 (and, under ASan, no leaks). */
static void test_clean_shutdown(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_stop_status(&f->sim), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_type_searchable),
      cmocka_unit_test(test_pools_searchable),
      cmocka_unit_test(test_paging_matches_expected),
      cmocka_unit_test(test_last_updated),
      cmocka_unit_test(test_touch_then_since),
      cmocka_unit_test(test_binary),
      cmocka_unit_test(test_references_resolve),
      cmocka_unit_test(test_shared_practitioners_and_counters),
      cmocka_unit_test(test_same_seed_same_bytes),
      cmocka_unit_test(test_bad_data_config),
      cmocka_unit_test(test_clean_shutdown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
