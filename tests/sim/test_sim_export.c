/* sim_export: Bulk Data Group $export as a client sees it (docs/simulator.md
 * "Bulk Data $export"): Group reads, kick-off rules (Prefer, Accept, _type
 * sent once, no Binary, scopes), one export per client (429 with
 * Retry-After), 202 polls with X-Progress, the manifest, 307 redirects to the
 * storage server, which refuses an Authorization header and serves gzip,
 * files whose lines are exactly the resources `expected` lists (and exactly
 * the bytes a read serves), _since, the error file, fail_next, expire,
 * DELETE, counters, faults on export paths, and a ~20 MB file. Cerner's
 * documented rules (group-export.md): the 18 _type values (Coverage,
 * RelatedPerson, ServiceRequest refused; the reference types and Provenance
 * exported, only with a patient type), _typeFilter's rules and filters
 * applied to the data, unsupported parameters (Prefer: handling=lenient),
 * and status, file and DELETE requests from the exporting client only. Reference
 * server mode (docs/simulator.md "Reference server mode"): long client ids
 * issued by auth/register, status and files outside the FHIR base served
 * directly, Claim/ExplanationOfBenefit/ImagingStudy lines, no read API, and
 * the per-route rate limit with epoch Retry-After values.
 *
 * The tests share one simulator and run in the order listed in main(); each
 * finishes or deletes the exports it started, so the one-export-per-client
 * rule never leaks from one test into the next. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/b64.h"
#include "fx_testsupport.h"
#include "tests/sim/test_keys.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define ZLIB_CONST /* next_in is const */
#include <zlib.h>

#define TENANT "export-t"
#define BIG "big-t"
#define REF "ref-t"     /* reference server mode */
#define REF_RL "ref-rl" /* reference server mode with a tight rate limit */
#define CLIENT "export-client"
#define OTHER "other-client"
#define NARROW "narrow-client"
#define WIDE "wide-client"
#define WIDE_SCOPES                                                                              \
  "system/Patient.read system/Observation.read system/Condition.read system/Encounter.read "    \
  "system/Coverage.read "                                                                        \
  "system/RelatedPerson.read system/ServiceRequest.read system/Practitioner.read "               \
  "system/Organization.read system/Location.read system/Provenance.read"
#define SMALL_GROUP "g-small"
#define ALL_SCOPES                                                                               \
  "system/Group.read system/Patient.read system/Observation.read system/Condition.read "       \
  "system/Encounter.read system/AllergyIntolerance.read system/Binary.read "                   \
  "system/Practitioner.read"
#define EXPORT_CTL "/_sim/tenants/" TENANT "/export"
#define DURATION_MS 1000 /* the tenant's export.duration_ms */

/* Small counts so that files and manifests stay readable: only Observation,
 * Condition and Encounter have resources. */
#define ZERO_OTHERS                                                                              \
  "\"AllergyIntolerance\": 0, \"CarePlan\": 0, \"CareTeam\": 0, \"Coverage\": 0, "                \
  "\"Device\": 0, \"DiagnosticReport\": 0, \"DocumentReference\": 0, \"Goal\": 0, "               \
  "\"Immunization\": 0, \"MedicationRequest\": 0, \"Procedure\": 0, \"RelatedPerson\": 0, "       \
  "\"ServiceRequest\": 0"
static const char config_json[] =
    "{\"seed\": 11, \"tenants\": ["
    " {\"id\": \"" TENANT "\", \"sandbox\": true, \"patients\": 30,"
    "  \"per_patient\": {\"Observation\": 12, \"Condition\": 3, \"Encounter\": 2, " ZERO_OTHERS "},"
    "  \"groups\": [{\"id\": \"" SMALL_GROUP "\", \"patients\": [\"20000001\", \"20000002\","
    "                \"12724065\"]},"
    "              {\"id\": \"g-range\", \"first\": 5, \"count\": 20}],"
    "  \"export\": {\"duration_ms\": 1000, \"retry_after_s\": 1, \"file_max_resources\": 10},"
    "  \"clients\": []},"
    " {\"id\": \"" BIG "\", \"patients\": 600,"
    "  \"per_patient\": {\"Observation\": 40, \"Condition\": 0, \"Encounter\": 0, " ZERO_OTHERS "},"
    "  \"groups\": [{\"id\": \"all\", \"first\": 1, \"count\": 600}],"
    "  \"export\": {\"duration_ms\": 0, \"file_max_resources\": 100000},"
    "  \"clients\": []},"
    " {\"id\": \"" REF "\", \"patients\": 10,"
    "  \"per_patient\": {\"Observation\": 4, \"Condition\": 2, \"Encounter\": 1, " ZERO_OTHERS "},"
    "  \"groups\": [{\"id\": \"BMCHealthNet\", \"first\": 1, \"count\": 4}],"
    "  \"export\": {\"duration_ms\": 300, \"file_max_resources\": 5},"
    "  \"reference_server\": {\"extra_types\": {\"Claim\": 2, \"ExplanationOfBenefit\": 2,"
    "                        \"ImagingStudy\": 1}}},"
    " {\"id\": \"" REF_RL "\", \"patients\": 3,"
    "  \"groups\": [{\"id\": \"g\", \"first\": 1, \"count\": 3}],"
    "  \"export\": {\"duration_ms\": 0},"
    "  \"reference_server\": {\"rate_limit\": {\"requests\": 1, \"window_ms\": 2000,"
    "                                          \"block_ms\": 3000}}}]}";

typedef struct fixture {
  fx_sim sim;
  test_key key;
  unsigned jti_seq;
  char *token;        /* CLIENT, ALL_SCOPES */
  char *other_token;  /* OTHER, ALL_SCOPES */
  char *narrow_token; /* NARROW: Patient and Observation only */
  char *wide_token;   /* WIDE: WIDE_SCOPES (the pool types and Provenance too) */
  char *big_token;    /* CLIENT on BIG */
  char *ref_id;       /* the client id REF issued (a JWT) */
  char *ref_token;    /* that client's token on REF */
  long storage_port;
} fixture;

/* ---- helpers ---- */

static char *exchange(fixture *f, const char *tenant, const char *client, const char *scopes);

static char *token_for(fixture *f, const char *tenant, const char *client, const char *scopes) {
  /* Register the client with this key and exactly these scopes. */
  json_t *list = json_array();
  char *copy = strdup(scopes), *save = NULL;
  for (char *s = strtok_r(copy, " ", &save); s; s = strtok_r(NULL, " ", &save))
    json_array_append_new(list, json_string(s));
  free(copy);
  json_t *jc = json_pack("{s:s, s:{s:[o]}, s:o}", "client_id", client, "jwks", "keys",
                         test_key_jwk(&f->key), "scopes", list);
  char *text = json_dumps(jc, JSON_COMPACT), path[256];
  json_decref(jc);
  snprintf(path, sizeof path, "/_sim/tenants/%s/clients", tenant);
  assert_int_equal(fx_sim_post_json(&f->sim, path, text), 200);
  free(text);
  return exchange(f, tenant, client, scopes);
}

/* A client assertion for client (iss = sub, however long) exchanged for a
 * token with these scopes; expects 200. */
static char *exchange(fixture *f, const char *tenant, const char *client, const char *scopes) {
  char aud[512], jti[64];
  snprintf(aud, sizeof aud, "%s/tenants/%s/protocols/oauth2/profiles/smart-v1/token",
           f->sim.url, tenant);
  snprintf(jti, sizeof jti, "export-%ld-%u", (long)time(NULL), ++f->jti_seq);
  json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:s}", "iss", client, "sub", client, "aud",
                             aud, "exp", (json_int_t)(time(NULL) + 240), "jti", jti);
  char *jwt = test_jwt_sign(&f->key, claims, NULL, NULL);
  json_decref(claims);
  assert_non_null(jwt);
  char *esc = curl_easy_escape(NULL, scopes, 0);
  size_t n = strlen(jwt) + strlen(esc) + 256;
  char *form = malloc(n);
  snprintf(form, n,
           "grant_type=client_credentials&client_assertion_type=urn%%3Aietf%%3Aparams%%3Aoauth"
           "%%3Aclient-assertion-type%%3Ajwt-bearer&client_assertion=%s&scope=%s",
           jwt, esc);
  const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  fxt_http_resp r;
  assert_int_equal(fxt_http("POST", aud, headers, form, &r), 0);
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

/* One request to an absolute URL. token, accept and prefer may be NULL
 * (accept NULL sends curl's default Accept: * / *; "" sends none). */
static long request(const char *method, const char *url, const char *token, const char *accept,
                    const char *prefer, fxt_http_resp *r) {
  char auth[256], acc[128], pref[128];
  const char *headers[4];
  size_t n = 0;
  if (token) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    headers[n++] = auth;
  }
  if (accept) {
    snprintf(acc, sizeof acc, "Accept:%s%s", *accept ? " " : "", accept);
    headers[n++] = acc;
  }
  if (prefer) {
    snprintf(pref, sizeof pref, "Prefer: %s", prefer);
    headers[n++] = pref;
  }
  headers[n] = NULL;
  assert_int_equal(fxt_http(method, url, headers, NULL, r), 0);
  return r->status;
}

static void fhir_url(const fixture *f, const char *tenant, const char *path, char *out, size_t n) {
  snprintf(out, n, "%s/r4/%s%s", f->sim.url, tenant, path);
}

/* GET {tenant}/Group/{group}/$export{query} as a Bulk Data client does. */
static long kickoff(const fixture *f, const char *tenant, const char *token, const char *group,
                    const char *query, fxt_http_resp *r) {
  char url[1024], path[512];
  snprintf(path, sizeof path, "/Group/%s/$export%s", group, query ? query : "");
  fhir_url(f, tenant, path, url, sizeof url);
  return request("GET", url, token, "application/fhir+json", "respond-async", r);
}

/* Kicks off, expects 202, returns the Content-Location (caller frees). */
static char *start_export(const fixture *f, const char *tenant, const char *token,
                          const char *group, const char *query) {
  fxt_http_resp r;
  long status = kickoff(f, tenant, token, group, query, &r);
  if (status != 202) fprintf(stderr, "kick-off %s: %ld %s\n", query ? query : "", status, r.body);
  assert_int_equal(status, 202);
  char *loc = fxt_http_header(&r, "Content-Location");
  assert_non_null(loc);
  fxt_http_resp_free(&r);
  return loc;
}

/* Polls until the status is no longer 202; returns the final answer. */
static long wait_export(const char *status_url, const char *token, fxt_http_resp *r) {
  for (int i = 0; i < 600; i++) {
    long status = request("GET", status_url, token, "application/json", NULL, r);
    if (status != 202) return status;
    fxt_http_resp_free(r);
    fx_test_sleep_ms(50);
  }
  fail_msg("export %s did not complete", status_url);
  return -1;
}

/* Waits for completion and returns the manifest (new reference). */
static json_t *manifest_of(const char *status_url, const char *token) {
  fxt_http_resp r;
  assert_int_equal(wait_export(status_url, token, &r), 200);
  json_t *m = json_loads(r.body, 0, NULL);
  assert_non_null(m);
  fxt_http_resp_free(&r);
  return m;
}

static void delete_export(const char *status_url, const char *token) {
  fxt_http_resp r;
  assert_int_equal(request("DELETE", status_url, token, NULL, NULL, &r), 202);
  fxt_http_resp_free(&r);
}

static long export_counter(const fixture *f, const char *tenant, const char *name) {
  json_t *all = fx_sim_get_json(&f->sim, "/_sim/counters");
  const json_t *x =
      json_object_get(json_object_get(json_object_get(all, "tenants"), tenant), "export");
  const json_t *v = json_object_get(x, name);
  long out = json_is_integer(v) ? (long)json_integer_value(v) : -1;
  json_decref(all);
  return out;
}

static long storage_counter(const fixture *f, const char *name) {
  json_t *all = fx_sim_get_json(&f->sim, "/_sim/counters");
  const json_t *v = json_object_get(json_object_get(all, "storage"), name);
  long out = json_is_integer(v) ? (long)json_integer_value(v) : -1;
  json_decref(all);
  return out;
}

static json_t *group_expected_filtered(const fixture *f, const char *tenant, const char *group,
                                       const char *types, const char *since,
                                       const char *type_filter) {
  char path[1024];
  snprintf(path, sizeof path, "/_sim/tenants/%s/groups/%s/expected?types=%s%s%s%s%s", tenant,
           group, types, since ? "&since=" : "", since ? since : "",
           type_filter ? "&type_filter=" : "", type_filter ? type_filter : "");
  json_t *doc = fx_sim_get_json(&f->sim, path);
  assert_non_null(doc);
  json_t *list = json_incref(json_object_get(doc, "resources"));
  json_decref(doc);
  assert_true(json_is_array(list));
  return list;
}

static json_t *group_expected(const fixture *f, const char *tenant, const char *group,
                              const char *types, const char *since) {
  return group_expected_filtered(f, tenant, group, types, since, NULL);
}

/* How many entries of a Type/id list are of type. */
static size_t count_type(const json_t *list, const char *type) {
  size_t i, n = 0, tl = strlen(type);
  const json_t *v;
  json_array_foreach(list, i, v) {
    const char *ref = json_string_value(v);
    n += strncmp(ref, type, tl) == 0 && ref[tl] == '/';
  }
  return n;
}

/* The outcome's diagnostics, or "". */
static const char *diagnostics(const json_t *oo) {
  const char *d =
      json_string_value(json_object_get(json_array_get(json_object_get(oo, "issue"), 0),
                                        "diagnostics"));
  return d ? d : "";
}

static void expect_outcome(const fxt_http_resp *r, long status, const char *words) {
  json_t *oo = json_loads(r->body, 0, NULL);
  if (r->status != status || !strstr(diagnostics(oo), words))
    fprintf(stderr, "got %ld \"%s\", wanted %ld naming \"%s\"\n", r->status, diagnostics(oo),
            status, words);
  assert_int_equal(r->status, status);
  assert_string_equal(json_string_value(json_object_get(oo, "resourceType")), "OperationOutcome");
  assert_non_null(strstr(diagnostics(oo), words));
  json_decref(oo);
}

static void expect_kickoff_error(const fixture *f, const char *token, const char *group,
                                 const char *query, long status, const char *words) {
  fxt_http_resp r;
  kickoff(f, TENANT, token, group, query, &r);
  expect_outcome(&r, status, words);
  fxt_http_resp_free(&r);
}

static char *gunzip(const char *in, size_t n, size_t *out_len) {
  z_stream z = {0};
  assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
  size_t cap = n * 8 + 1024, len = 0;
  char *out = malloc(cap);
  assert_non_null(out);
  z.next_in = (const Bytef *)in;
  z.avail_in = (uInt)n;
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    if (cap - len < 65536) {
      cap *= 2;
      out = realloc(out, cap);
      assert_non_null(out);
    }
    z.next_out = (Bytef *)out + len;
    z.avail_out = (uInt)(cap - len - 1);
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) fail_msg("inflate: %d (%s)", rc, z.msg ? z.msg : "");
    len = cap - 1 - z.avail_out;
  }
  assert_int_equal(z.avail_in, 0); /* nothing after the gzip member */
  inflateEnd(&z);
  out[len] = '\0';
  *out_len = len;
  return out;
}

/* GET a manifest url with the token: the 307's Location (caller frees). */
static char *storage_location(const char *file_url, const char *token) {
  fxt_http_resp r;
  long status = request("GET", file_url, token, "application/fhir+ndjson", NULL, &r);
  if (status != 307) fprintf(stderr, "GET %s: %ld %s\n", file_url, status, r.body);
  assert_int_equal(status, 307);
  char *loc = fxt_http_header(&r, "Location");
  assert_non_null(loc);
  fxt_http_resp_free(&r);
  return loc;
}

/* Downloads a file (307, then the storage URL without Authorization) and
 * returns its NDJSON text (caller frees). */
static char *download(const fixture *f, const char *file_url, const char *token, size_t *len) {
  char *loc = storage_location(file_url, token);
  char prefix[64];
  snprintf(prefix, sizeof prefix, "http://127.0.0.1:%ld/storage/", f->storage_port);
  assert_true(strncmp(loc, prefix, strlen(prefix)) == 0);
  fxt_http_resp r;
  assert_int_equal(request("GET", loc, NULL, "", NULL, &r), 200);
  char *ce = fxt_http_header(&r, "Content-Encoding"), *ct = fxt_http_header(&r, "Content-Type");
  assert_string_equal(ce, "gzip");
  assert_string_equal(ct, "application/fhir+ndjson");
  char *text = gunzip(r.body, r.body_len, len);
  free(ce);
  free(ct);
  free(loc);
  fxt_http_resp_free(&r);
  return text;
}

/* Adds "Type/id" of every line to set; checks the lines' shape. Returns the
 * number of lines. */
static size_t collect_lines(const char *text, size_t len, const char *type, json_t *set) {
  size_t lines = 0;
  assert_true(len > 0 && text[len - 1] == '\n');
  for (const char *p = text; p < text + len;) {
    const char *nl = memchr(p, '\n', (size_t)(text + len - p));
    assert_non_null(nl);
    json_error_t e;
    json_t *doc = json_loadb(p, (size_t)(nl - p), 0, &e);
    if (!doc) fail_msg("line %zu: %s", lines + 1, e.text);
    const char *rt = json_string_value(json_object_get(doc, "resourceType"));
    assert_string_equal(rt, type);
    char ref[160];
    snprintf(ref, sizeof ref, "%s/%s", rt, json_string_value(json_object_get(doc, "id")));
    assert_null(json_object_get(set, ref)); /* every resource once */
    json_object_set_new(set, ref, json_true());
    json_decref(doc);
    lines++;
    p = nl + 1;
  }
  return lines;
}

/* Downloads every output file of the manifest; checks counts and that the
 * union of the lines is exactly `expected`. */
static void check_outputs(const fixture *f, const json_t *manifest, const char *token,
                          const json_t *expected) {
  json_t *set = json_object();
  size_t i;
  const json_t *o;
  json_array_foreach(json_object_get(manifest, "output"), i, o) {
    size_t len;
    char *text = download(f, json_string_value(json_object_get(o, "url")), token, &len);
    size_t lines = collect_lines(text, len, json_string_value(json_object_get(o, "type")), set);
    assert_int_equal(lines, (size_t)json_integer_value(json_object_get(o, "count")));
    free(text);
  }
  assert_int_equal(json_object_size(set), json_array_size(expected));
  const json_t *ref;
  json_array_foreach(expected, i, ref) {
    if (!json_object_get(set, json_string_value(ref)))
      fail_msg("%s expected but not exported", json_string_value(ref));
  }
  json_decref(set);
}

/* ---- fixture ---- */

static int group_setup(void **state) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  fixture *f = calloc(1, sizeof *f);
  if (!f || test_key_gen(&f->key, "ES384", "es-export")) return -1;
  const char *args[] = {"--threads", "4", NULL};
  if (fx_sim_start_args(&f->sim, config_json, args) != 0) return -1;
  *state = f;
  f->token = token_for(f, TENANT, CLIENT, ALL_SCOPES);
  f->other_token = token_for(f, TENANT, OTHER, ALL_SCOPES);
  f->narrow_token = token_for(f, TENANT, NARROW, "system/Patient.read system/Observation.rs");
  f->wide_token = token_for(f, TENANT, WIDE, WIDE_SCOPES);
  f->big_token = token_for(f, BIG, CLIENT, "system/Patient.read system/Observation.read");
  f->storage_port = storage_counter(f, "port");
  return f->storage_port > 0 && f->storage_port != f->sim.port ? 0 : -1;
}

static int group_teardown(void **state) {
  fixture *f = *state;
  if (f) {
    fx_sim_stop(&f->sim);
    test_key_free(&f->key);
    free(f->token);
    free(f->other_token);
    free(f->narrow_token);
    free(f->wide_token);
    free(f->big_token);
    free(f->ref_id);
    free(f->ref_token);
    free(f);
  }
  curl_global_cleanup();
  return 0;
}

/* ---- tests ---- */

static void expect_config_error(const char *config, const char *words) {
  char *dir = fx_test_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/bad.json", dir);
  assert_int_equal(fx_test_write_file(path, config), 0);
  const char *argv[] = {fx_sim_binary(), "--config", path, NULL};
  fx_run_result res;
  assert_int_equal(fx_test_run(argv, NULL, 10000, &res), 0);
  if (res.exit_code != 2 || !strstr(res.err, words))
    fprintf(stderr, "config %s: exit %d, %s (wanted 2 naming \"%s\")\n", config, res.exit_code,
            res.err, words);
  assert_int_equal(res.exit_code, 2);
  assert_non_null(strstr(res.err, words));
  fx_run_result_free(&res);
  fx_test_rmtree(dir);
  free(dir);
}

static void test_config_validation(void **state) {
  (void)state;
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"patients\":5,\"groups\":[{\"id\":\"g\","
                      "\"first\":1,\"count\":5,\"size\":3}]}]}",
                      "tenants[0].groups[0]: unknown key \"size\"");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"patients\":5,\"groups\":[{\"id\":\"g\","
                      "\"first\":3,\"count\":5}]}]}",
                      "tenants[0].groups[0].count");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"patients\":5,\"groups\":[{\"id\":\"g\","
                      "\"patients\":[\"20000006\"]}]}]}",
                      "tenants[0].groups[0].patients[0]");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"patients\":5,\"groups\":[{\"id\":\"g\","
                      "\"patients\":[\"12724065\"]}]}]}",
                      "tenants[0].groups[0].patients[0]"); /* not a sandbox tenant */
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"patients\":5,\"groups\":[{\"id\":\"g/x\","
                      "\"first\":1,\"count\":1}]}]}",
                      "tenants[0].groups[0].id");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"patients\":5,\"groups\":[{\"id\":\"g\","
                      "\"first\":1,\"count\":1},{\"id\":\"g\",\"first\":2,\"count\":1}]}]}",
                      "duplicate group id");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"export\":{\"duration\":5}}]}",
                      "tenants[0].export: unknown key \"duration\"");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"export\":{\"file_max_resources\":0}}]}",
                      "tenants[0].export.file_max_resources");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"export\":{\"fail_next\":true}}]}",
                      "unknown key \"fail_next\""); /* control API only */
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"reference_server\":{\"extra_types\":"
                      "{\"Invoice\":1}}}]}",
                      "tenants[0].reference_server.extra_types: \"Invoice\" is not one of");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"reference_server\":{\"rate_limit\":"
                      "{\"window_ms\":0}}}]}",
                      "tenants[0].reference_server.rate_limit.window_ms");
  expect_config_error("{\"tenants\":[{\"id\":\"t\",\"reference_server\":{\"prefix\":1}}]}",
                      "tenants[0].reference_server: unknown key \"prefix\"");
}

static void test_group_read(void **state) {
  fixture *f = *state;
  char url[512];
  fxt_http_resp r;
  fhir_url(f, TENANT, "/Group/" SMALL_GROUP, url, sizeof url);
  assert_int_equal(request("GET", url, f->token, "application/fhir+json", NULL, &r), 200);
  json_t *g = json_loads(r.body, 0, NULL);
  fxt_http_resp_free(&r);
  assert_string_equal(json_string_value(json_object_get(g, "resourceType")), "Group");
  assert_string_equal(json_string_value(json_object_get(g, "id")), SMALL_GROUP);
  assert_string_equal(json_string_value(json_object_get(g, "type")), "person");
  assert_true(json_is_true(json_object_get(g, "actual")));
  assert_int_equal(json_integer_value(json_object_get(g, "quantity")), 3);
  const json_t *members = json_object_get(g, "member");
  assert_int_equal(json_array_size(members), 3);
  static const char *const want[] = {"Patient/20000001", "Patient/20000002", "Patient/12724065"};
  for (size_t i = 0; i < 3; i++)
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(members, i), "entity"), "reference")),
                        want[i]);
  json_decref(g);

  fhir_url(f, TENANT, "/Group/g-range", url, sizeof url);
  assert_int_equal(request("GET", url, f->token, NULL, NULL, &r), 200);
  g = json_loads(r.body, 0, NULL);
  fxt_http_resp_free(&r);
  assert_int_equal(json_integer_value(json_object_get(g, "quantity")), 20);
  assert_string_equal(json_string_value(json_object_get(json_object_get(
                          json_array_get(json_object_get(g, "member"), 0), "entity"),
                                                        "reference")),
                      "Patient/20000005");
  json_decref(g);

  /* Cerner's sandbox groups come with sandbox: true. */
  fhir_url(f, TENANT, "/Group/11ec-d16a-b40370f8-9d31-577f11a339c5", url, sizeof url);
  assert_int_equal(request("GET", url, f->token, NULL, NULL, &r), 200);
  fxt_http_resp_free(&r);

  fhir_url(f, TENANT, "/Group/nope", url, sizeof url);
  request("GET", url, f->token, NULL, NULL, &r);
  expect_outcome(&r, 404, "Group/nope was not found");
  fxt_http_resp_free(&r);
  fhir_url(f, TENANT, "/Group/" SMALL_GROUP, url, sizeof url);
  request("GET", url, f->narrow_token, NULL, NULL, &r);
  expect_outcome(&r, 403, "system/Group.read");
  fxt_http_resp_free(&r);
  assert_int_equal(request("GET", url, NULL, NULL, NULL, &r), 401);
  fxt_http_resp_free(&r);
}

static void test_kickoff_validation(void **state) {
  fixture *f = *state;
  char url[512];
  fxt_http_resp r;
  fhir_url(f, TENANT, "/Group/" SMALL_GROUP "/$export", url, sizeof url);
  request("GET", url, f->token, "application/fhir+json", NULL, &r);
  expect_outcome(&r, 400, "Prefer: respond-async");
  fxt_http_resp_free(&r);
  request("GET", url, f->token, "application/json", "respond-async", &r);
  expect_outcome(&r, 400, "Accept: application/fhir+json");
  fxt_http_resp_free(&r);
  request("GET", url, f->token, "", "respond-async", &r);
  expect_outcome(&r, 400, "Accept: application/fhir+json");
  fxt_http_resp_free(&r);
  assert_int_equal(request("GET", url, NULL, "application/fhir+json", "respond-async", &r), 401);
  fxt_http_resp_free(&r);
  assert_int_equal(request("POST", url, f->token, "application/fhir+json", "respond-async", &r),
                   405);
  fxt_http_resp_free(&r);

  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_type=Patient&_type=Observation", 400,
                       "_type must be sent once, comma separated");
  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_type=Observation,Binary", 400,
                       "Binary is not exported");
  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_type=Observation,Foo", 400,
                       "unknown resource type \"Foo\"");
  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_type=Practitioner", 400,
                       "exported only together with at least one of");
  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_type=Observation,", 400, "empty type name");
  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_outputFormat=text/csv", 400, "_outputFormat");
  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_since=yesterday", 400, "_since");
  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_since=2024&_since=2025", 400,
                       "_since must be sent once");
  expect_kickoff_error(f, f->narrow_token, SMALL_GROUP, "?_type=Patient,Condition", 403,
                       "system/Condition.read");
  expect_kickoff_error(f, f->token, "g-unknown", NULL, 404, "Group/g-unknown was not found");
  /* Nothing was accepted. */
  assert_int_equal(export_counter(f, TENANT, "kickoffs"), 0);
}

static void test_one_export_per_client(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/counters/reset", NULL), 200);
  /* Long enough for the checks below to happen while it runs, even on a
   * loaded machine. */
  assert_int_equal(fx_sim_post_json(&f->sim, EXPORT_CTL, "{\"duration_ms\": 3000}"), 200);
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  char prefix[256];
  snprintf(prefix, sizeof prefix, "%s/r4/" TENANT "/bulk-export/jobs/", f->sim.url);
  assert_true(strncmp(loc, prefix, strlen(prefix)) == 0);
  assert_int_equal(strlen(loc + strlen(prefix)), 32); /* an unguessable hex id */

  /* While it runs: 429 for the same client, with Retry-After. */
  fxt_http_resp r;
  assert_int_equal(kickoff(f, TENANT, f->token, "g-range", NULL, &r), 429);
  char *ra = fxt_http_header(&r, "Retry-After");
  assert_string_equal(ra, "1");
  free(ra);
  expect_outcome(&r, 429, "another export of this client is in progress");
  fxt_http_resp_free(&r);
  /* Another client is not affected. */
  char *other = start_export(f, TENANT, f->other_token, SMALL_GROUP, "?_type=Patient");

  /* Polls while running: 202 with X-Progress and Retry-After, no body. */
  assert_int_equal(request("GET", loc, f->token, "application/json", NULL, &r), 202);
  char *progress = fxt_http_header(&r, "X-Progress");
  ra = fxt_http_header(&r, "Retry-After");
  assert_non_null(progress);
  assert_non_null(strstr(progress, "% complete"));
  assert_string_equal(ra, "1");
  assert_int_equal(r.body_len, 0);
  free(progress);
  free(ra);
  fxt_http_resp_free(&r);

  /* Once complete, the client may start another one. */
  assert_int_equal(fx_sim_post_json(&f->sim, EXPORT_CTL, "{\"duration_ms\": 1000}"), 200);
  json_t *m = manifest_of(loc, f->token);
  json_decref(m);
  char *again = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  /* ...and a DELETE ends a running export at once. */
  delete_export(again, f->token);
  char *third = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  delete_export(third, f->token);
  delete_export(other, f->other_token);
  delete_export(loc, f->token);

  assert_int_equal(export_counter(f, TENANT, "kickoffs"), 4);
  assert_int_equal(export_counter(f, TENANT, "kickoffs_refused"), 1);
  assert_int_equal(export_counter(f, TENANT, "deletes"), 4);
  assert_true(export_counter(f, TENANT, "status_polls") >= 2);
  free(loc);
  free(other);
  free(again);
  free(third);
}

typedef struct race {
  const fixture *f;
  long status;
  char *loc;
} race;

static void *race_kickoff(void *arg) {
  race *r = arg;
  fxt_http_resp resp;
  r->status = kickoff(r->f, TENANT, r->f->token, SMALL_GROUP, "?_type=Observation", &resp);
  r->loc = fxt_http_header(&resp, "Content-Location");
  fxt_http_resp_free(&resp);
  return NULL;
}

/* Concurrent kick-offs of one client: exactly one wins. */
static void test_concurrent_kickoffs(void **state) {
  fixture *f = *state;
  enum { N = 8 };
  /* Long enough that every thread arrives while the winner runs. */
  assert_int_equal(fx_sim_post_json(&f->sim, EXPORT_CTL, "{\"duration_ms\": 10000}"), 200);
  race races[N];
  pthread_t threads[N];
  for (int i = 0; i < N; i++) {
    races[i] = (race){.f = f};
    assert_int_equal(pthread_create(&threads[i], NULL, race_kickoff, &races[i]), 0);
  }
  /* Join them all before deleting the winner: a straggler arriving after
   * the DELETE would rightly be accepted. */
  for (int i = 0; i < N; i++) pthread_join(threads[i], NULL);
  int accepted = 0;
  for (int i = 0; i < N; i++) {
    if (races[i].status == 202) {
      accepted++;
      delete_export(races[i].loc, f->token);
    } else {
      assert_int_equal(races[i].status, 429);
    }
    free(races[i].loc);
  }
  assert_int_equal(accepted, 1);
  assert_int_equal(fx_sim_post_json(&f->sim, EXPORT_CTL, "{\"duration_ms\": 1000}"), 200);
}

static void test_manifest_and_download(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/counters/reset", NULL), 200);
  const char *query = "?_type=Patient,Observation,Condition&_typeFilter=Observation%3Fcategory%3Dlaboratory";
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, query);
  json_t *m = manifest_of(loc, f->token);

  /* The 200 itself: JSON with Expires. */
  fxt_http_resp r;
  assert_int_equal(request("GET", loc, f->token, "application/json", NULL, &r), 200);
  char *ct = fxt_http_header(&r, "Content-Type"), *expires = fxt_http_header(&r, "Expires");
  assert_non_null(strstr(ct, "application/json"));
  assert_non_null(expires);
  assert_non_null(strstr(expires, " GMT"));
  free(ct);
  free(expires);
  fxt_http_resp_free(&r);

  const char *tt = json_string_value(json_object_get(m, "transactionTime"));
  assert_non_null(tt);
  assert_int_equal(strlen(tt), strlen("2026-01-01T00:00:00.000Z"));
  char want_request[1024];
  snprintf(want_request, sizeof want_request,
           "%s/r4/" TENANT "/Group/" SMALL_GROUP "/$export?_type=Patient,Observation,Condition"
           "&_typeFilter=Observation?category%%3Dlaboratory",
           f->sim.url);
  assert_string_equal(json_string_value(json_object_get(m, "request")), want_request);
  assert_true(json_is_true(json_object_get(m, "requiresAccessToken")));
  assert_int_equal(json_array_size(json_object_get(m, "error")), 0);

  /* Several files per type (file_max_resources 10), counts add up. 3
   * patients: 3 Patients, 9 Conditions, and of their 36 Observations the
   * laboratory ones (the filter is applied). */
  json_t *expected = group_expected_filtered(f, TENANT, SMALL_GROUP, "Patient,Observation,Condition",
                                             NULL, "Observation%3Fcategory%3Dlaboratory");
  long labs = (long)count_type(expected, "Observation");
  assert_true(labs > 10 && labs < 36);
  long patient = 0, observation = 0, condition = 0, obs_files = 0;
  size_t i;
  const json_t *o;
  json_array_foreach(json_object_get(m, "output"), i, o) {
    const char *type = json_string_value(json_object_get(o, "type"));
    long count = (long)json_integer_value(json_object_get(o, "count"));
    assert_true(count >= 1 && count <= 10);
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s/r4/" TENANT "/bulk-export/jobs/", f->sim.url);
    assert_true(strncmp(json_string_value(json_object_get(o, "url")), prefix, strlen(prefix)) ==
                0);
    if (strcmp(type, "Patient") == 0) patient += count;
    if (strcmp(type, "Observation") == 0) observation += count, obs_files++;
    if (strcmp(type, "Condition") == 0) condition += count;
  }
  assert_int_equal(patient, 3);
  assert_int_equal(observation, labs);
  assert_int_equal(obs_files, (labs + 9) / 10);
  assert_int_equal(condition, 9);
  assert_int_equal(json_array_size(expected), (size_t)(3 + labs + 9));
  check_outputs(f, m, f->token, expected);
  json_decref(expected);

  /* A line is byte for byte what a read of that resource serves. */
  size_t len;
  const json_t *first = json_array_get(json_object_get(m, "output"), 0);
  char *text = download(f, json_string_value(json_object_get(first, "url")), f->token, &len);
  json_t *doc = json_loadb(text, strcspn(text, "\n"), 0, NULL);
  char read_url[512], path[256];
  snprintf(path, sizeof path, "/%s/%s", json_string_value(json_object_get(doc, "resourceType")),
           json_string_value(json_object_get(doc, "id")));
  fhir_url(f, TENANT, path, read_url, sizeof read_url);
  assert_int_equal(request("GET", read_url, f->token, "application/fhir+json", NULL, &r), 200);
  assert_int_equal(r.body_len, strcspn(text, "\n"));
  assert_memory_equal(r.body, text, r.body_len);
  fxt_http_resp_free(&r);
  json_decref(doc);
  free(text);

  const char *file_url = json_string_value(json_object_get(first, "url"));
  /* Downloads need the token and Accept: application/fhir+ndjson. */
  assert_int_equal(request("GET", file_url, NULL, "application/fhir+ndjson", NULL, &r), 401);
  fxt_http_resp_free(&r);
  request("GET", file_url, f->token, "application/fhir+json", NULL, &r);
  expect_outcome(&r, 406, "application/fhir+ndjson");
  fxt_http_resp_free(&r);
  char bad[1024];
  snprintf(bad, sizeof bad, "%s/files/99", loc);
  request("GET", bad, f->token, "application/fhir+ndjson", NULL, &r);
  expect_outcome(&r, 404, "was not found");
  fxt_http_resp_free(&r);

  /* The storage server refuses the bearer token, as S3 does, and counts it. */
  char *storage = storage_location(file_url, f->token);
  long auth_before = storage_counter(f, "authorization_headers");
  assert_int_equal(request("GET", storage, f->token, "", NULL, &r), 400);
  assert_non_null(strstr(r.body, "Only one auth mechanism allowed"));
  fxt_http_resp_free(&r);
  assert_int_equal(storage_counter(f, "authorization_headers"), auth_before + 1);
  /* A tampered signature is refused too. */
  char tampered[1024];
  snprintf(tampered, sizeof tampered, "%s", storage);
  char *sig = strstr(tampered, "X-Amz-Signature=") + strlen("X-Amz-Signature=");
  sig[0] = sig[0] == '0' ? '1' : '0';
  assert_int_equal(request("GET", tampered, NULL, "", NULL, &r), 403);
  assert_non_null(strstr(r.body, "SignatureDoesNotMatch"));
  fxt_http_resp_free(&r);
  free(storage);

  long outputs = (long)json_array_size(json_object_get(m, "output"));
  /* check_outputs, the first file again, storage_location: outputs + 2 redirects. */
  assert_int_equal(export_counter(f, TENANT, "files_served"), outputs + 2);
  assert_int_equal(storage_counter(f, "requests"), outputs + 1 + 2);
  assert_true(storage_counter(f, "bytes") > 0);
  delete_export(loc, f->token);
  json_decref(m);
  free(loc);
}

static void test_default_types(void **state) {
  fixture *f = *state;
  /* No _type: Patient and every per-patient type the token can read. */
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, NULL);
  json_t *m = manifest_of(loc, f->token);
  json_t *seen = json_object();
  size_t i;
  const json_t *o;
  json_array_foreach(json_object_get(m, "output"), i, o)
      json_object_set_new(seen, json_string_value(json_object_get(o, "type")), json_true());
  /* AllergyIntolerance is readable but has no resources: no file. The
   * token reads Practitioner: the ones the others reference are exported
   * (group-export.md: "the resources to be exported will be determined by
   * the scopes provided in the authorization token"). */
  assert_int_equal(json_object_size(seen), 5);
  assert_non_null(json_object_get(seen, "Patient"));
  assert_non_null(json_object_get(seen, "Observation"));
  assert_non_null(json_object_get(seen, "Condition"));
  assert_non_null(json_object_get(seen, "Encounter"));
  assert_non_null(json_object_get(seen, "Practitioner"));
  json_decref(seen);
  json_decref(m);
  delete_export(loc, f->token);
  free(loc);

  /* The narrow client gets Patient and Observation only (v2 scope .rs). */
  loc = start_export(f, TENANT, f->narrow_token, "g-range", NULL);
  m = manifest_of(loc, f->narrow_token);
  json_t *expected = group_expected(f, TENANT, "g-range", "Patient,Observation", NULL);
  assert_int_equal(json_array_size(expected), 20 + 20 * 12);
  check_outputs(f, m, f->narrow_token, expected);
  json_decref(expected);
  json_decref(m);
  delete_export(loc, f->narrow_token);
  free(loc);
}

static void test_since(void **state) {
  fixture *f = *state;
  const char *since = "2024-07-01T00:00:00Z";
  char *loc = start_export(f, TENANT, f->token, "g-range",
                           "?_type=Patient,Observation,Encounter&_since=2024-07-01T00:00:00Z");
  json_t *m = manifest_of(loc, f->token);
  json_t *expected = group_expected(f, TENANT, "g-range", "Patient,Observation,Encounter", since);
  json_t *all = group_expected(f, TENANT, "g-range", "Patient,Observation,Encounter", NULL);
  /* The filter removes some of every type, but not everything. */
  assert_true(json_array_size(expected) > 0);
  assert_true(json_array_size(expected) < json_array_size(all) * 3 / 4);
  check_outputs(f, m, f->token, expected);
  json_decref(expected);
  json_decref(all);
  json_decref(m);
  delete_export(loc, f->token);
  free(loc);
}

static void test_error_file(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_post_json(&f->sim, EXPORT_CTL, "{\"error_file\": true}"), 200);
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient,Condition");
  json_t *m = manifest_of(loc, f->token);
  const json_t *errors = json_object_get(m, "error");
  assert_int_equal(json_array_size(errors), 1);
  const json_t *e = json_array_get(errors, 0);
  assert_string_equal(json_string_value(json_object_get(e, "type")), "OperationOutcome");
  size_t len;
  char *text = download(f, json_string_value(json_object_get(e, "url")), f->token, &len);
  json_t *set = json_object();
  assert_int_equal(collect_lines(text, len, "OperationOutcome", set), 2);
  assert_non_null(strstr(text, "could not be exported"));
  assert_non_null(strstr(text, "Patient/"));
  json_decref(set);
  free(text);
  /* The outputs are complete all the same (a partial failure is still 200). */
  json_t *expected = group_expected(f, TENANT, SMALL_GROUP, "Patient,Condition", NULL);
  check_outputs(f, m, f->token, expected);
  json_decref(expected);
  json_decref(m);
  delete_export(loc, f->token);
  free(loc);
  assert_int_equal(fx_sim_post_json(&f->sim, EXPORT_CTL, "{\"error_file\": false}"), 200);
}

static void test_fail_next(void **state) {
  fixture *f = *state;
  fxt_http_resp r;
  const char *url = "/_sim/tenants/" TENANT "/export";
  char full[512];
  snprintf(full, sizeof full, "%s%s", f->sim.url, url);
  const char *json_headers[] = {"Content-Type: application/json", NULL};
  assert_int_equal(fxt_http("POST", full, json_headers, "{\"fail_nxt\": true}", &r), 0);
  assert_int_equal(r.status, 400);
  json_t *err = json_loads(r.body, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(err, "error")), "unknown key \"fail_nxt\"");
  json_decref(err);
  fxt_http_resp_free(&r);
  assert_int_equal(fxt_http("POST", full, json_headers, "{\"retry_after_s\": -1}", &r), 0);
  assert_int_equal(r.status, 400);
  assert_non_null(strstr(r.body, "retry_after_s"));
  fxt_http_resp_free(&r);

  assert_int_equal(fx_sim_post_json(&f->sim, url, "{\"fail_next\": true, \"retry_after_s\": 2}"),
                   200);
  json_t *cfg = fx_sim_get_json(&f->sim, url);
  assert_true(json_is_true(json_object_get(cfg, "fail_next")));
  assert_int_equal(json_integer_value(json_object_get(cfg, "retry_after_s")), 2);
  assert_int_equal(json_integer_value(json_object_get(cfg, "duration_ms")), DURATION_MS);
  json_decref(cfg);

  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  assert_int_equal(request("GET", loc, f->token, "application/json", NULL, &r), 202);
  char *ra = fxt_http_header(&r, "Retry-After");
  assert_string_equal(ra, "2");
  free(ra);
  fxt_http_resp_free(&r);
  wait_export(loc, f->token, &r);
  expect_outcome(&r, 500, "the export failed");
  fxt_http_resp_free(&r);
  /* A failed export is no longer running; the flag was used up. */
  char *next = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  json_t *m = manifest_of(next, f->token);
  json_decref(m);
  delete_export(next, f->token);
  delete_export(loc, f->token);
  free(next);
  free(loc);
  assert_int_equal(fx_sim_post_json(&f->sim, url, "{\"retry_after_s\": 1}"), 200);
}

static void test_expire(void **state) {
  fixture *f = *state;
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  json_t *m = manifest_of(loc, f->token);
  const char *file_url =
      json_string_value(json_object_get(json_array_get(json_object_get(m, "output"), 0), "url"));
  char *storage = storage_location(file_url, f->token);
  /* A running export expires too, and stops counting as running. */
  char *running = start_export(f, TENANT, f->other_token, SMALL_GROUP, "?_type=Patient");

  json_t *res = NULL;
  char path[256];
  snprintf(path, sizeof path, "%s/_sim/tenants/" TENANT "/export/expire", f->sim.url);
  fxt_http_resp r;
  assert_int_equal(fxt_http("POST", path, NULL, NULL, &r), 0);
  assert_int_equal(r.status, 200);
  res = json_loads(r.body, 0, NULL);
  assert_int_equal(json_integer_value(json_object_get(res, "expired")), 2);
  json_decref(res);
  fxt_http_resp_free(&r);

  request("GET", loc, f->token, "application/json", NULL, &r);
  expect_outcome(&r, 404, "it may have expired or been deleted");
  fxt_http_resp_free(&r);
  request("GET", file_url, f->token, "application/fhir+ndjson", NULL, &r);
  expect_outcome(&r, 404, "was not found");
  fxt_http_resp_free(&r);
  assert_int_equal(request("GET", storage, NULL, "", NULL, &r), 403);
  assert_non_null(strstr(r.body, "Request has expired"));
  fxt_http_resp_free(&r);
  request("DELETE", loc, f->token, NULL, NULL, &r);
  expect_outcome(&r, 404, "was not found");
  fxt_http_resp_free(&r);
  char *again = start_export(f, TENANT, f->other_token, SMALL_GROUP, "?_type=Patient");
  delete_export(again, f->other_token);

  json_t *list = fx_sim_get_json(&f->sim, EXPORT_CTL);
  size_t i, expired = 0;
  const json_t *x;
  json_array_foreach(json_object_get(list, "exports"), i, x)
      expired += strcmp(json_string_value(json_object_get(x, "state")), "expired") == 0;
  assert_true(expired >= 2);
  json_decref(list);
  json_decref(m);
  free(storage);
  free(loc);
  free(running);
  free(again);
}

static void test_delete(void **state) {
  fixture *f = *state;
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Condition");
  json_t *m = manifest_of(loc, f->token);
  const char *file_url =
      json_string_value(json_object_get(json_array_get(json_object_get(m, "output"), 0), "url"));
  char *storage = storage_location(file_url, f->token);
  delete_export(loc, f->token);
  fxt_http_resp r;
  request("GET", loc, f->token, "application/json", NULL, &r);
  expect_outcome(&r, 404, "it may have expired or been deleted");
  fxt_http_resp_free(&r);
  request("DELETE", loc, f->token, NULL, NULL, &r);
  expect_outcome(&r, 404, "was not found");
  fxt_http_resp_free(&r);
  request("GET", file_url, f->token, "application/fhir+ndjson", NULL, &r);
  expect_outcome(&r, 404, "was not found");
  fxt_http_resp_free(&r);
  assert_int_equal(request("GET", storage, NULL, "", NULL, &r), 404);
  assert_non_null(strstr(r.body, "NoSuchKey"));
  fxt_http_resp_free(&r);
  /* Another tenant's token cannot see a job either. */
  char *other_tenant = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  char big_url[512];
  snprintf(big_url, sizeof big_url, "%s/r4/" BIG "/bulk-export/jobs/%s", f->sim.url,
           strrchr(other_tenant, '/') + 1);
  request("GET", big_url, f->big_token, "application/json", NULL, &r);
  expect_outcome(&r, 404, "was not found");
  fxt_http_resp_free(&r);
  delete_export(other_tenant, f->token);
  free(other_tenant);
  json_decref(m);
  free(storage);
  free(loc);
}

/* Faults apply to export URLs like to any FHIR path. */
static void test_faults(void **state) {
  fixture *f = *state;
  const char *faults = "/_sim/tenants/" TENANT "/faults";
  assert_int_equal(fx_sim_post_json(&f->sim, faults,
                                    "{\"target\":\"fhir\",\"path\":\"bulk-export/*\","
                                    "\"status\":503,\"count\":1}"),
                   200);
  assert_int_equal(fx_sim_post_json(&f->sim, faults,
                                    "{\"target\":\"fhir\",\"path\":\"Group\",\"retry_after\":3,"
                                    "\"count\":1}"),
                   200);
  fxt_http_resp r;
  assert_int_equal(kickoff(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient", &r), 429);
  char *ra = fxt_http_header(&r, "Retry-After");
  assert_string_equal(ra, "3");
  free(ra);
  fxt_http_resp_free(&r);
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  assert_int_equal(request("GET", loc, f->token, "application/json", NULL, &r), 503);
  fxt_http_resp_free(&r);
  json_t *m = manifest_of(loc, f->token);
  json_decref(m);
  delete_export(loc, f->token);
  free(loc);
  assert_int_equal(fx_sim_delete(&f->sim, faults), 200);
  assert_int_equal(fx_sim_delete(&f->sim, "/_sim/tenants/" TENANT "/retry_after_violations"), 200);
}

/* group-export.md's _type rules: the 18 valid values, Coverage, RelatedPerson
 * and ServiceRequest refused; the reference types and Provenance only with a
 * patient type. */
static void test_cerner_type_rules(void **state) {
  fixture *f = *state;
  static const char *const refused[] = {"Coverage", "RelatedPerson", "ServiceRequest"};
  for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
    char q[128], words[128];
    snprintf(q, sizeof q, "?_type=Patient,%s", refused[i]);
    snprintf(words, sizeof words, "_type: %s is not supported by the Group export", refused[i]);
    expect_kickoff_error(f, f->wide_token, SMALL_GROUP, q, 400, words);
  }
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP, "?_type=Location,Organization,Provenance",
                       400, "exported only together with at least one of AllergyIntolerance");
  /* Asked with a patient type, they are exported: the pool entities the
   * other exported resources reference, and a Provenance per exported
   * resource (none for the pool types). */
  const char *types =
      "Patient,Observation,Encounter,Practitioner,Organization,Location,Provenance";
  char query[256];
  snprintf(query, sizeof query, "?_type=%s", types);
  char *loc = start_export(f, TENANT, f->wide_token, SMALL_GROUP, query);
  json_t *m = manifest_of(loc, f->wide_token);
  json_t *expected = group_expected(f, TENANT, SMALL_GROUP, types, NULL);
  size_t patients = count_type(expected, "Patient"), obs = count_type(expected, "Observation");
  size_t enc = count_type(expected, "Encounter");
  assert_int_equal(patients, 3);
  assert_int_equal(obs, 36);
  assert_int_equal(enc, 6);
  assert_true(count_type(expected, "Practitioner") > 0);
  assert_true(count_type(expected, "Organization") > 0);
  assert_true(count_type(expected, "Location") > 0);
  assert_int_equal(count_type(expected, "Provenance"), patients + obs + enc);
  check_outputs(f, m, f->wide_token, expected);
  /* Types in alphabetical order, Provenance in its place. */
  const char *order[] = {"Encounter",    "Location",     "Observation",
                         "Organization", "Patient",      "Practitioner", "Provenance"};
  size_t i, k = 0;
  const json_t *o;
  json_array_foreach(json_object_get(m, "output"), i, o) {
    const char *t = json_string_value(json_object_get(o, "type"));
    while (k < 7 && strcmp(order[k], t) != 0) k++;
    assert_true(k < 7);
  }
  /* The exported Practitioners are exactly those the Patients,
   * Observations and Encounters reference. */
  json_t *refs = json_object();
  json_array_foreach(json_object_get(m, "output"), i, o) {
    const char *t = json_string_value(json_object_get(o, "type"));
    if (strcmp(t, "Patient") && strcmp(t, "Observation") && strcmp(t, "Encounter")) continue;
    size_t len;
    char *text = download(f, json_string_value(json_object_get(o, "url")), f->wide_token, &len);
    for (const char *p = strstr(text, "\"Practitioner/"); p;
         p = strstr(p + 1, "\"Practitioner/")) {
      char ref[96];
      snprintf(ref, sizeof ref, "%.*s", (int)strcspn(p + 1, "\""), p + 1);
      json_object_set_new(refs, ref, json_true());
    }
    free(text);
  }
  assert_int_equal(json_object_size(refs), count_type(expected, "Practitioner"));
  json_decref(refs);
  json_decref(expected);
  json_decref(m);
  delete_export(loc, f->wide_token);
  free(loc);
  /* Without the scope, Provenance is a 403 like any type. */
  expect_kickoff_error(f, f->token, SMALL_GROUP, "?_type=Patient,Provenance", 403,
                       "system/Provenance.read");
}

/* group-export.md's _typeFilter rules: 400 for a filter without _type, on a
 * type not in _type or twice for one type; 422 for a filter on Patient,
 * Location, Organization, Practitioner or Provenance, or with a parameter it
 * excludes (or one the simulator cannot match). */
static void test_type_filter_rules(void **state) {
  fixture *f = *state;
  long invalid = export_counter(f, TENANT, "kickoffs_invalid");
  long accepted = export_counter(f, TENANT, "kickoffs");
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP,
                       "?_typeFilter=Observation%3Fcategory%3Dlaboratory", 400,
                       "_typeFilter requires _type");
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP,
                       "?_type=Patient&_typeFilter=Observation%3Fcategory%3Dlaboratory", 400,
                       "do not match the resources supplied in _type");
  static const char *const unfiltered[] = {"Patient", "Practitioner", "Organization", "Location",
                                           "Provenance"};
  for (size_t i = 0; i < sizeof unfiltered / sizeof *unfiltered; i++) {
    char q[256];
    snprintf(q, sizeof q, "?_type=Patient,Observation,%s&_typeFilter=%s%%3Fname%%3Dx",
             unfiltered[i], unfiltered[i]);
    expect_kickoff_error(f, f->wide_token, SMALL_GROUP, q, 422,
                         "_typeFilter does not support queries for the following resources");
  }
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP,
                       "?_type=Observation&_typeFilter=Observation%3Fcategory%3Dlaboratory,"
                       "Observation%3Fcategory%3Dvital-signs",
                       400, "multiple queries for the same resource");
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP,
                       "?_type=Observation&_typeFilter=Observation%3Fcategory%3Dlaboratory"
                       "&_typeFilter=Observation%3Fstatus%3Dfinal",
                       400, "multiple queries for the same resource");
  static const char *const params[] = {"_lastUpdated=ge2024", "patient=20000001", "_count=5",
                                       "_id=1", "subject=Patient%2F20000001", "encounter=1",
                                       "identifier=x", "patient:missing=false"};
  for (size_t i = 0; i < sizeof params / sizeof *params; i++) {
    char q[256], words[128];
    snprintf(q, sizeof q, "?_type=Observation&_typeFilter=Observation%%3Fcategory%%3Dlaboratory%%26%s",
             params[i]);
    snprintf(words, sizeof words, "_typeFilter does not support the search parameter %.*s",
             (int)strcspn(params[i], "=:"), params[i]);
    expect_kickoff_error(f, f->wide_token, SMALL_GROUP, q, 422, words);
  }
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP,
                       "?_type=Observation&_typeFilter=Observation%3Fvalue-quantity%3D5", 422,
                       "is not supported in a _typeFilter here");
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP,
                       "?_type=Observation&_typeFilter=Observation%3Fcategory", 422,
                       "is not a search parameter with a value");
  assert_int_equal(export_counter(f, TENANT, "kickoffs_invalid"), invalid + 19);
  assert_int_equal(export_counter(f, TENANT, "kickoffs"), accepted); /* none was accepted */
}

/* A filter the server takes narrows what it exports: the test of an
 * extractor that claims to honour filters. */
static void test_type_filter_applied(void **state) {
  fixture *f = *state;
  const char *filters = "Observation%3Fcategory%3Dvital-signs,"
                        "Condition%3Fclinical-status%3Dactive%252Crecurrence";
  char query[512];
  snprintf(query, sizeof query, "?_type=Observation,Condition&_typeFilter=%s", filters);
  char *loc = start_export(f, TENANT, f->wide_token, "g-range", query);
  json_t *m = manifest_of(loc, f->wide_token);
  json_t *expected =
      group_expected_filtered(f, TENANT, "g-range", "Observation,Condition", NULL, filters);
  json_t *all = group_expected(f, TENANT, "g-range", "Observation,Condition", NULL);
  size_t vitals = count_type(expected, "Observation"), conds = count_type(expected, "Condition");
  assert_true(vitals > 0 && vitals < count_type(all, "Observation"));
  assert_true(conds > 0 && conds <= count_type(all, "Condition"));
  check_outputs(f, m, f->wide_token, expected);
  /* Every exported Observation is a vital sign, and none of the others is. */
  size_t i;
  const json_t *o;
  json_array_foreach(json_object_get(m, "output"), i, o) {
    if (strcmp(json_string_value(json_object_get(o, "type")), "Observation")) continue;
    size_t len;
    char *text = download(f, json_string_value(json_object_get(o, "url")), f->wide_token, &len);
    for (const char *p = text; p < text + len; p = strchr(p, '\n') + 1) {
      size_t ll = strcspn(p, "\n");
      char *line = strndup(p, ll);
      assert_non_null(strstr(line, "\"vital-signs\""));
      assert_null(strstr(line, "\"laboratory\""));
      free(line);
    }
    free(text);
  }
  json_decref(all);
  json_decref(expected);
  json_decref(m);
  delete_export(loc, f->wide_token);
  free(loc);
}

/* bulk-data.md, Lenient Workflow: an unsupported parameter is a 400 unless
 * Prefer: handling=lenient; includeAssociatedData's rules. */
static void test_unsupported_parameters(void **state) {
  fixture *f = *state;
  static const char *const odd[] = {"?_type=Patient&foo=1", "?_type=Patient&patient=20000001",
                                    "?_type=Patient&_elements=id", "?_count=10"};
  for (size_t i = 0; i < sizeof odd / sizeof *odd; i++)
    expect_kickoff_error(f, f->wide_token, SMALL_GROUP, odd[i], 400,
                         "Unsupported parameters are passed to the export request");
  char url[512];
  fxt_http_resp r;
  fhir_url(f, TENANT, "/Group/" SMALL_GROUP "/$export?_type=Patient&foo=1&_elements=id", url,
           sizeof url);
  assert_int_equal(request("GET", url, f->wide_token, "application/fhir+json",
                           "respond-async, handling=lenient", &r),
                   202);
  char *loc = fxt_http_header(&r, "Content-Location");
  fxt_http_resp_free(&r);
  json_t *m = manifest_of(loc, f->wide_token);
  json_t *expected = group_expected(f, TENANT, SMALL_GROUP, "Patient", NULL);
  check_outputs(f, m, f->wide_token, expected); /* the parameters were ignored */
  json_decref(expected);
  json_decref(m);
  delete_export(loc, f->wide_token);
  free(loc);
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP,
                       "?_type=Patient&includeAssociatedData=LatestProvenanceResources", 400,
                       "the _type parameter MUST include Provenance");
  expect_kickoff_error(f, f->wide_token, SMALL_GROUP,
                       "?_type=Patient,Provenance&includeAssociatedData=Everything", 400,
                       "includeAssociatedData: valid values are");
  loc = start_export(f, TENANT, f->wide_token, SMALL_GROUP,
                     "?_type=Patient,Provenance&includeAssociatedData=LatestProvenanceResources");
  delete_export(loc, f->wide_token);
  free(loc);
}

/* group-export.md: status, file and DELETE requests must come from the
 * client that started the export; another client's token gets a 403. */
static void test_other_client(void **state) {
  fixture *f = *state;
  long before = export_counter(f, TENANT, "other_client");
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  fxt_http_resp r;
  request("GET", loc, f->other_token, "application/json", NULL, &r);
  expect_outcome(&r, 403, "was requested by another client");
  fxt_http_resp_free(&r);
  json_t *m = manifest_of(loc, f->token);
  const char *file_url =
      json_string_value(json_object_get(json_array_get(json_object_get(m, "output"), 0), "url"));
  request("GET", file_url, f->other_token, "application/fhir+ndjson", NULL, &r);
  expect_outcome(&r, 403, "was requested by another client");
  fxt_http_resp_free(&r);
  request("DELETE", loc, f->other_token, NULL, NULL, &r);
  expect_outcome(&r, 403, "was requested by another client");
  fxt_http_resp_free(&r);
  /* The export is still there for its own client. */
  json_t *again = manifest_of(loc, f->token);
  json_decref(again);
  delete_export(loc, f->token);
  assert_int_equal(export_counter(f, TENANT, "other_client"), before + 3);
  json_decref(m);
  free(loc);
}

/* 600 patients x 40 Observations in one file: about 20 MB of NDJSON,
 * generated and gzipped while it is sent. */
static void test_big_file(void **state) {
  fixture *f = *state;
  long bytes_before = storage_counter(f, "bytes");
  char *loc = start_export(f, BIG, f->big_token, "all", "?_type=Observation");
  json_t *m = manifest_of(loc, f->big_token);
  const json_t *outputs = json_object_get(m, "output");
  assert_int_equal(json_array_size(outputs), 1);
  const json_t *o = json_array_get(outputs, 0);
  assert_int_equal(json_integer_value(json_object_get(o, "count")), 600 * 40);

  char *storage = storage_location(json_string_value(json_object_get(o, "url")), f->big_token);
  fxt_http_resp r;
  assert_int_equal(request("GET", storage, NULL, "", NULL, &r), 200);
  size_t len;
  char *text = gunzip(r.body, r.body_len, &len);
  assert_true(len > 15 * 1000 * 1000);
  assert_true(r.body_len < len / 4); /* it is really compressed */
  assert_int_equal(storage_counter(f, "bytes") - bytes_before, (long)r.body_len);
  json_t *set = json_object();
  assert_int_equal(collect_lines(text, len, "Observation", set), 600 * 40);
  json_t *expected = group_expected(f, BIG, "all", "Observation", NULL);
  assert_int_equal(json_array_size(expected), json_object_size(set));
  size_t i;
  const json_t *ref;
  json_array_foreach(expected, i, ref) assert_non_null(json_object_get(set, json_string_value(ref)));
  json_decref(expected);
  json_decref(set);
  free(text);
  fxt_http_resp_free(&r);
  free(storage);
  delete_export(loc, f->big_token);
  json_decref(m);
  free(loc);
}

static void test_control_expected(void **state) {
  fixture *f = *state;
  json_t *list = group_expected(f, TENANT, SMALL_GROUP, "Patient", NULL);
  assert_int_equal(json_array_size(list), 3);
  /* Sorted. */
  assert_string_equal(json_string_value(json_array_get(list, 0)), "Patient/12724065");
  assert_string_equal(json_string_value(json_array_get(list, 2)), "Patient/20000002");
  json_decref(list);
  fxt_http_resp r;
  char url[512];
  snprintf(url, sizeof url, "%s/_sim/tenants/" TENANT "/groups/" SMALL_GROUP
                            "/expected?types=Binary", f->sim.url);
  assert_int_equal(fxt_http("GET", url, NULL, NULL, &r), 0);
  assert_int_equal(r.status, 400);
  fxt_http_resp_free(&r);
  snprintf(url, sizeof url, "%s/_sim/tenants/" TENANT "/groups/nope/expected", f->sim.url);
  assert_int_equal(fxt_http("GET", url, NULL, NULL, &r), 0);
  assert_int_equal(r.status, 404);
  fxt_http_resp_free(&r);
}

/* ---- reference server mode ---- */

/* POST {sim}/tenants/{tenant}/auth/register with the form `body`. */
static long ref_register(const fixture *f, const char *tenant, const char *body,
                         fxt_http_resp *r) {
  char url[512];
  snprintf(url, sizeof url, "%s/tenants/%s/auth/register", f->sim.url, tenant);
  const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  assert_int_equal(fxt_http("POST", url, headers, body, r), 0);
  return r->status;
}

/* The reference server issues client ids: a JWT carrying the JWKS, far longer
 * than 256 characters; an assertion whose iss and sub are that id gets a
 * token. */
static void test_ref_register(void **state) {
  fixture *f = *state;
  json_t *jwks = json_pack("{s:[o]}", "keys", test_key_jwk(&f->key));
  char *jtext = json_dumps(jwks, JSON_COMPACT);
  json_decref(jwks);
  char *esc = curl_easy_escape(NULL, jtext, 0);
  size_t flen = strlen(esc) + 16;
  char *form = malloc(flen);
  snprintf(form, flen, "jwks=%s", esc);
  fxt_http_resp r;
  assert_int_equal(ref_register(f, REF, form, &r), 200);
  char *ct = fxt_http_header(&r, "Content-Type");
  assert_non_null(strstr(ct, "text/plain"));
  free(ct);
  f->ref_id = strdup(r.body);
  fxt_http_resp_free(&r);
  /* One P-384 public key makes about 500 characters, an RSA-2048 key about
   * 800 (the reference server's ids are 557-1,057+): past the 256 bytes
   * clients used to allow, within the 8192 fhirx accepts. */
  size_t len = strlen(f->ref_id);
  if (len <= 400 || len > 8192) fail_msg("client id of %zu characters", len);
  /* header.claims.signature, claims carrying the key set. */
  const char *d1 = strchr(f->ref_id, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
  assert_non_null(d2);
  assert_null(strchr(d2 + 1, '.'));
  size_t n;
  uint8_t *claims = fx_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &n);
  json_t *c = json_loadb((const char *)claims, n, 0, NULL);
  assert_non_null(json_object_get(json_object_get(c, "jwks"), "keys"));
  json_decref(c);
  free(claims);
  f->ref_token = exchange(f, REF, f->ref_id,
                          "system/Group.read system/Patient.read system/Observation.read "
                          "system/Condition.read system/Encounter.read system/Practitioner.read");
  assert_int_equal(fx_sim_counter(&f->sim, REF, "reference_server.registrations"), 1);
  /* Neither jwks nor jwks_url: 400; not POST: 400. */
  assert_int_equal(ref_register(f, REF, "dur=5", &r), 400);
  assert_non_null(strstr(r.body, "Either 'jwks' or 'jwks_url' is required"));
  fxt_http_resp_free(&r);
  char url[512];
  snprintf(url, sizeof url, "%s/tenants/" REF "/auth/register", f->sim.url);
  assert_int_equal(fxt_http("GET", url, NULL, NULL, &r), 0);
  assert_int_equal(r.status, 400);
  fxt_http_resp_free(&r);
  /* Only reference-server tenants register clients this way. */
  assert_int_equal(ref_register(f, TENANT, form, &r), 404);
  fxt_http_resp_free(&r);
  free(form);
  curl_free(esc);
  free(jtext);
}

/* An export: the status URL and the files are outside /r4/{tenant} (on its
 * origin), files are served directly with the token (no 307), and hold the
 * extra types; DELETE on the status URL; Authorization counted per path. */
static void test_ref_export(void **state) {
  fixture *f = *state;
  char *loc = start_export(f, REF, f->ref_token, "BMCHealthNet", NULL);
  char want[256];
  snprintf(want, sizeof want, "%s/fhir/bulkstatus/", f->sim.url);
  assert_true(strncmp(loc, want, strlen(want)) == 0);
  assert_int_equal(strlen(loc), strlen(want) + 32);
  json_t *m = manifest_of(loc, f->ref_token);
  assert_true(json_is_true(json_object_get(m, "requiresAccessToken")));
  json_t *set = json_object();
  json_t *types = json_object();
  size_t i;
  const json_t *o;
  json_array_foreach(json_object_get(m, "output"), i, o) {
    const char *url = json_string_value(json_object_get(o, "url"));
    const char *type = json_string_value(json_object_get(o, "type"));
    char tail[128];
    snprintf(tail, sizeof tail, "/fhir/bulkfiles/%zu.%s.ndjson", i + 1, type);
    assert_true(strncmp(url, f->sim.url, strlen(f->sim.url)) == 0);
    assert_null(strstr(url, "/r4/"));
    assert_non_null(strstr(url, tail));
    json_object_set_new(types, type, json_true());
    fxt_http_resp r;
    /* The token is required; the file itself is the answer. */
    assert_int_equal(request("GET", url, NULL, "application/fhir+ndjson", NULL, &r), 401);
    fxt_http_resp_free(&r);
    assert_int_equal(request("GET", url, f->ref_token, "application/fhir+ndjson", NULL, &r), 200);
    char *ct = fxt_http_header(&r, "Content-Type");
    assert_string_equal(ct, "application/fhir+ndjson");
    free(ct);
    size_t lines = collect_lines(r.body, r.body_len, type, set);
    assert_int_equal(lines, (size_t)json_integer_value(json_object_get(o, "count")));
    fxt_http_resp_free(&r);
  }
  assert_non_null(json_object_get(types, "Claim"));
  assert_non_null(json_object_get(types, "ExplanationOfBenefit"));
  assert_non_null(json_object_get(types, "ImagingStudy"));
  /* What `expected` lists, no more: 4 patients x (1 + 4 + 2 + 1 + 2 + 2 + 1). */
  json_t *expected = group_expected(f, REF, "BMCHealthNet", "", NULL);
  assert_int_equal(json_array_size(expected), 4 * 13);
  assert_int_equal(json_object_size(set), json_array_size(expected));
  const json_t *ref;
  json_array_foreach(expected, i, ref) assert_non_null(json_object_get(set, json_string_value(ref)));
  json_decref(expected);
  json_t *claims = group_expected(f, REF, "BMCHealthNet", "Claim", NULL);
  assert_int_equal(json_array_size(claims), 8);
  json_decref(claims);

  /* Authorization headers per path: the status URL's path saw them. */
  json_t *auth = fx_sim_get_json(&f->sim, "/_sim/tenants/" REF "/authorization");
  const char *path = loc + strlen(f->sim.url);
  const json_t *st = json_object_get(json_object_get(auth, "paths"), path);
  assert_true(json_integer_value(json_object_get(st, "authorization")) >= 1);
  assert_int_equal(json_integer_value(json_object_get(st, "authorization")),
                   json_integer_value(json_object_get(st, "requests")));
  json_decref(auth);

  delete_export(loc, f->ref_token);
  fxt_http_resp r;
  assert_int_equal(request("GET", loc, f->ref_token, "application/json", NULL, &r), 404);
  fxt_http_resp_free(&r);
  const char *first =
      json_string_value(json_object_get(json_array_get(json_object_get(m, "output"), 0), "url"));
  assert_int_equal(request("GET", first, f->ref_token, "application/fhir+ndjson", NULL, &r), 404);
  fxt_http_resp_free(&r);
  assert_int_equal(export_counter(f, REF, "deletes"), 1);
  json_decref(types);
  json_decref(set);
  json_decref(m);
  free(loc);
}

/* No read or search API: Express's "Cannot GET"; Group read and $export only. */
static void test_ref_no_read_api(void **state) {
  fixture *f = *state;
  char url[512];
  fxt_http_resp r;
  static const char *const paths[] = {"/Patient/20000001", "/Practitioner/4000001",
                                      "/Observation?patient=20000001"};
  for (size_t i = 0; i < 3; i++) {
    fhir_url(f, REF, paths[i], url, sizeof url);
    assert_int_equal(request("GET", url, f->ref_token, "application/fhir+json", NULL, &r), 404);
    assert_non_null(strstr(r.body, "Cannot GET /r4/" REF));
    fxt_http_resp_free(&r);
  }
  fhir_url(f, REF, "/Group/BMCHealthNet", url, sizeof url);
  assert_int_equal(request("GET", url, f->ref_token, "application/fhir+json", NULL, &r), 200);
  fxt_http_resp_free(&r);
}

/* A rate limit per route: over `requests` per window, the first 429 says
 * Retry-After: <epoch ms>, later ones while blocked <epoch s>; both are
 * remembered by the Retry-After ledger; routes are limited separately. */
static void test_ref_rate_limit(void **state) {
  fixture *f = *state;
  char *token = token_for(f, REF_RL, "rl-client", "system/Patient.read");
  char *loc = start_export(f, REF_RL, token, "g", "?_type=Patient");
  fxt_http_resp r;
  struct timespec t0, t1;
  clock_gettime(CLOCK_REALTIME, &t0);
  assert_int_equal(kickoff(f, REF_RL, token, "g", "?_type=Patient", &r), 429);
  clock_gettime(CLOCK_REALTIME, &t1);
  char *ra = fxt_http_header(&r, "Retry-After");
  fxt_http_resp_free(&r);
  /* The end of the block, in epoch milliseconds: the request's arrival + 3000. */
  long long v = strtoll(ra, NULL, 10);
  long long lo = (long long)t0.tv_sec * 1000 + t0.tv_nsec / 1000000 + 3000;
  long long hi = (long long)t1.tv_sec * 1000 + t1.tv_nsec / 1000000 + 3000;
  assert_int_equal(strlen(ra), 13);
  assert_true(v >= lo - 1 && v <= hi + 1);
  free(ra);
  /* Again while blocked: the same instant in epoch seconds, rounded up. */
  assert_int_equal(kickoff(f, REF_RL, token, "g", "?_type=Patient", &r), 429);
  ra = fxt_http_header(&r, "Retry-After");
  assert_non_null(strstr(r.body, "Too Many Requests"));
  fxt_http_resp_free(&r);
  assert_int_equal(strlen(ra), 10);
  assert_int_equal(strtoll(ra, NULL, 10), (v + 999) / 1000);
  free(ra);
  assert_int_equal(fx_sim_counter(&f->sim, REF_RL, "reference_server.rate_limited_epoch_ms"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, REF_RL, "reference_server.rate_limited_epoch_s"), 1);
  /* That retry came before the announced instant: the ledger saw it. */
  json_t *ledger = fx_sim_get_json(&f->sim, "/_sim/tenants/" REF_RL "/retry_after_violations");
  assert_int_equal(json_integer_value(json_object_get(ledger, "violations")), 1);
  json_decref(ledger);
  /* The status route has its own limiter. */
  json_t *m = manifest_of(loc, token);
  json_decref(m);
  /* Once the block is over (and the window has passed), kick-offs work again. */
  long status = 0;
  for (int i = 0; i < 200 && status != 202; i++) {
    status = kickoff(f, REF_RL, token, "g", "?_type=Patient", &r);
    char *next = status == 202 ? fxt_http_header(&r, "Content-Location") : NULL;
    fxt_http_resp_free(&r);
    if (next) {
      delete_export(next, token);
      free(next);
    } else {
      fx_test_sleep_ms(50);
    }
  }
  assert_int_equal(status, 202);
  delete_export(loc, token);
  assert_int_equal(fx_sim_delete(&f->sim, "/_sim/tenants/" REF_RL "/retry_after_violations"), 200);
  free(loc);
  free(token);
}

/* Faults reach the paths outside the base by their whole path. */
static void test_ref_faults(void **state) {
  fixture *f = *state;
  const char *faults = "/_sim/tenants/" REF "/faults";
  assert_int_equal(fx_sim_post_json(&f->sim, faults,
                                    "{\"target\":\"fhir\",\"path\":\"*/fhir/bulkfiles/*\","
                                    "\"status\":503,\"count\":1}"),
                   200);
  char *loc = start_export(f, REF, f->ref_token, "BMCHealthNet", "?_type=Patient");
  json_t *m = manifest_of(loc, f->ref_token);
  const char *url =
      json_string_value(json_object_get(json_array_get(json_object_get(m, "output"), 0), "url"));
  fxt_http_resp r;
  assert_int_equal(request("GET", url, f->ref_token, "application/fhir+ndjson", NULL, &r), 503);
  fxt_http_resp_free(&r);
  assert_int_equal(request("GET", url, f->ref_token, "application/fhir+ndjson", NULL, &r), 200);
  fxt_http_resp_free(&r);
  delete_export(loc, f->ref_token);
  json_decref(m);
  free(loc);
  assert_int_equal(fx_sim_delete(&f->sim, faults), 200);
}

static void test_clean_shutdown(void **state) {
  fixture *f = *state;
  /* An export left running and one completed but never deleted must be
   * freed at shutdown (ASan's leak check makes the exit status non-zero). */
  char *loc = start_export(f, TENANT, f->token, SMALL_GROUP, "?_type=Patient");
  json_t *m = manifest_of(loc, f->token);
  json_decref(m);
  char *running = start_export(f, TENANT, f->other_token, SMALL_GROUP, NULL);
  free(loc);
  free(running);
  assert_int_equal(fx_sim_stop_status(&f->sim), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_validation),
      cmocka_unit_test(test_group_read),
      cmocka_unit_test(test_kickoff_validation),
      cmocka_unit_test(test_one_export_per_client),
      cmocka_unit_test(test_concurrent_kickoffs),
      cmocka_unit_test(test_manifest_and_download),
      cmocka_unit_test(test_default_types),
      cmocka_unit_test(test_since),
      cmocka_unit_test(test_error_file),
      cmocka_unit_test(test_fail_next),
      cmocka_unit_test(test_expire),
      cmocka_unit_test(test_delete),
      cmocka_unit_test(test_faults),
      cmocka_unit_test(test_cerner_type_rules),
      cmocka_unit_test(test_type_filter_rules),
      cmocka_unit_test(test_type_filter_applied),
      cmocka_unit_test(test_unsupported_parameters),
      cmocka_unit_test(test_other_client),
      cmocka_unit_test(test_big_file),
      cmocka_unit_test(test_control_expected),
      cmocka_unit_test(test_ref_register),
      cmocka_unit_test(test_ref_export),
      cmocka_unit_test(test_ref_no_read_api),
      cmocka_unit_test(test_ref_rate_limit),
      cmocka_unit_test(test_ref_faults),
      cmocka_unit_test(test_clean_shutdown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
