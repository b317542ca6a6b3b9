/* sim_smoke: starts cerner-sim and checks the behaviour fhirx's tests rely
 * on: discovery, strict token validation with each reason code, bearer
 * checks on FHIR reads and searches, the control API (clients, settings,
 * faults, counters), deterministic data and clean shutdown.
 *
 * The tests share one simulator and run in the order listed in main(); each
 * test uses fresh jtis so earlier tests cannot make later ones pass. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "fx_testsupport.h"
#include "tests/sim/test_keys.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TENANT "ec2458f2-1e24-41c8-b71b-0e701af7583d"
#define TENANT_B "tenant-b"
#define CLIENT "abc-123"
#define WILMA "12724065"
#define CERNER_PATIENT_400                                                                       \
  "at least one of _id, identifier, name, family, given, birthdate, phone, email, "             \
  "address-postalcode, or -pageContext must be provided"

/* Clients start with an empty key set; the tests register real keys through
 * the control API, as a test granting a key or scope later would. */
static const char config_json[] =
    "{\"seed\": 42, \"tenants\": ["
    " {\"id\": \"" TENANT "\", \"sandbox\": true, \"patients\": 5,"
    "  \"clients\": [{\"client_id\": \"" CLIENT "\", \"jwks\": {\"keys\": []},"
    "                 \"scopes\": [\"system/Patient.read\", \"system/Observation.read\"]}]},"
    " {\"id\": \"" TENANT_B "\", \"patients\": 3, \"expires_in\": 60,"
    "  \"signing_algs\": [\"RS384\"]}"
    "]}";

typedef struct fixture {
  fx_sim sim;
  test_key es, rs, rogue; /* rogue is never registered */
  char *dir;              /* scratch files (JWKS for rotation) */
  unsigned jti_seq;
} fixture;

/* ---- helpers ---- */

static char *jwks_text(test_key *const *keys, size_t n) {
  json_t *arr = json_array();
  for (size_t i = 0; i < n; i++) json_array_append_new(arr, test_key_jwk(keys[i]));
  json_t *doc = json_pack("{s:o}", "keys", arr);
  char *text = json_dumps(doc, JSON_COMPACT);
  json_decref(doc);
  return text;
}

/* Registers (or replaces) a client with an inline JWKS of es + rs. */
static void register_client(fixture *f, const char *tenant, const char *client_id,
                            const char *scopes_json) {
  test_key *keys[] = {&f->es, &f->rs};
  char *jwks = jwks_text(keys, 2);
  char body[8192], path[256];
  snprintf(body, sizeof body, "{\"client_id\":\"%s\",\"jwks\":%s,\"scopes\":%s}", client_id, jwks,
           scopes_json);
  snprintf(path, sizeof path, "/_sim/tenants/%s/clients", tenant);
  assert_int_equal(fx_sim_post_json(&f->sim, path, body), 200);
  free(jwks);
}

static void token_url(const fixture *f, const char *tenant, char *out, size_t n) {
  snprintf(out, n, "%s/tenants/%s/protocols/oauth2/profiles/smart-v1/token", f->sim.url, tenant);
}

/* Claims for iss=sub=client; exp_offset relative to now; jti NULL = fresh. */
static json_t *claims(fixture *f, const char *tenant, const char *client, long exp_offset,
                      const char *jti) {
  char aud[512], fresh[64];
  token_url(f, tenant, aud, sizeof aud);
  snprintf(fresh, sizeof fresh, "jti-%ld-%u", (long)time(NULL), ++f->jti_seq);
  return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", client, "sub", client, "aud", aud,
                   "exp", (json_int_t)(time(NULL) + exp_offset), "iat", (json_int_t)time(NULL),
                   "jti", jti ? jti : fresh);
}

static char *sign(test_key *k, json_t *c /* stolen */) {
  char *jwt = test_jwt_sign(k, c, NULL, NULL);
  json_decref(c);
  assert_non_null(jwt);
  return jwt;
}

/* POSTs a token request; returns the status and the parsed body in *out. */
static long post_token(fixture *f, const char *tenant, const char *content_type,
                       const char *form, json_t **out) {
  char url[512], ct[128];
  token_url(f, tenant, url, sizeof url);
  snprintf(ct, sizeof ct, "Content-Type: %s", content_type);
  const char *headers[] = {ct, NULL};
  fxt_http_resp r;
  assert_int_equal(fxt_http("POST", url, headers, form, &r), 0);
  *out = json_loads(r.body, 0, NULL);
  long status = r.status;
  char *cache = fxt_http_header(&r, "Cache-Control");
  assert_non_null(cache);
  assert_string_equal(cache, "no-store");
  free(cache);
  fxt_http_resp_free(&r);
  return status;
}

static long token_request(fixture *f, const char *tenant, const char *assertion,
                          const char *scope, json_t **out) {
  char *esc = curl_easy_escape(NULL, scope, 0);
  size_t n = strlen(assertion) + strlen(esc) + 256;
  char *form = malloc(n);
  assert_non_null(form);
  snprintf(form, n,
           "grant_type=client_credentials&client_assertion_type=urn%%3Aietf%%3Aparams%%3Aoauth"
           "%%3Aclient-assertion-type%%3Ajwt-bearer&client_assertion=%s&scope=%s",
           assertion, esc);
  long status = post_token(f, tenant, "application/x-www-form-urlencoded", form, out);
  free(form);
  curl_free(esc);
  return status;
}

/* Asserts a 400 invalid_client whose error_uri carries `reason`. */
static void expect_reason(fixture *f, const char *tenant, const char *assertion,
                          const char *reason) {
  json_t *body = NULL;
  long status = token_request(f, tenant, assertion, "system/Patient.read", &body);
  const char *uri = json_string_value(json_object_get(body, "error_uri"));
  char want[256];
  snprintf(want, sizeof want, "oauth2%%3Atoken%%3A%s/instances/", reason);
  if (status != 400 || !uri || !strstr(uri, want))
    fprintf(stderr, "expected reason %s, got %ld %s\n", reason, status, uri ? uri : "(none)");
  assert_int_equal(status, 400);
  assert_string_equal(json_string_value(json_object_get(body, "error")), "invalid_client");
  assert_non_null(uri);
  assert_non_null(strstr(uri, want));
  assert_non_null(strstr(uri, "tenant=" ));
  json_decref(body);
}

/* Obtains a token for CLIENT on TENANT with key k; returns it (caller frees). */
static char *get_token(fixture *f, test_key *k, const char *scope) {
  char *jwt = sign(k, claims(f, TENANT, CLIENT, 240, NULL));
  json_t *body = NULL;
  assert_int_equal(token_request(f, TENANT, jwt, scope, &body), 200);
  char *token = strdup(json_string_value(json_object_get(body, "access_token")));
  json_decref(body);
  free(jwt);
  return token;
}

static long fhir_get(const fx_sim *s, const char *path, const char *token, fxt_http_resp *r) {
  char url[1024], auth[512];
  snprintf(url, sizeof url, "%s/r4/%s%s", s->url, TENANT, path);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", token ? token : "");
  const char *headers[] = {"Accept: application/fhir+json", token ? auth : NULL, NULL};
  assert_int_equal(fxt_http("GET", url, headers, NULL, r), 0);
  return r->status;
}

static json_t *body_json(const fxt_http_resp *r) {
  json_t *doc = json_loads(r->body, 0, NULL);
  assert_non_null(doc);
  return doc;
}

static const char *issue_text(const json_t *oo) {
  return json_string_value(json_object_get(json_array_get(json_object_get(oo, "issue"), 0),
                                           "diagnostics"));
}

static bool array_has(const json_t *arr, const char *s) {
  size_t i;
  const json_t *v;
  json_array_foreach(arr, i, v) {
    if (json_is_string(v) && strcmp(json_string_value(v), s) == 0) return true;
  }
  return false;
}

/* ---- fixture ---- */

static int group_setup(void **state) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  fixture *f = calloc(1, sizeof *f);
  if (!f || test_key_gen(&f->es, "ES384", "es-1") || test_key_gen(&f->rs, "RS384", "rs-1") ||
      test_key_gen(&f->rogue, "ES384", "es-1") || !(f->dir = fx_test_tmpdir()))
    return -1;
  const char *args[] = {"--threads", "4", NULL};
  if (fx_sim_start_args(&f->sim, config_json, args) != 0) return -1;
  *state = f;
  return 0;
}

static int group_teardown(void **state) {
  fixture *f = *state;
  if (f) {
    fx_sim_stop(&f->sim);
    test_key_free(&f->es);
    test_key_free(&f->rs);
    test_key_free(&f->rogue);
    if (f->dir) fx_test_rmtree(f->dir);
    free(f->dir);
    free(f);
  }
  curl_global_cleanup();
  return 0;
}

/* ---- tests ---- */

static void test_discovery(void **state) {
  fixture *f = *state;
  json_t *d = fx_sim_get_json(&f->sim, "/r4/" TENANT "/.well-known/smart-configuration");
  assert_non_null(d);
  char want[512];
  token_url(f, TENANT, want, sizeof want);
  assert_string_equal(json_string_value(json_object_get(d, "token_endpoint")), want);
  assert_true(array_has(json_object_get(d, "token_endpoint_auth_methods_supported"),
                        "private_key_jwt"));
  const json_t *algs = json_object_get(d, "token_endpoint_auth_signing_alg_values_supported");
  assert_true(array_has(algs, "RS384") && array_has(algs, "ES384"));
  const json_t *caps = json_object_get(d, "capabilities");
  assert_true(array_has(caps, "client-confidential-asymmetric"));
  assert_true(array_has(caps, "permission-v2"));
  assert_true(array_has(json_object_get(d, "scopes_supported"), "system/Patient.read"));
  assert_true(array_has(json_object_get(d, "grant_types_supported"), "client_credentials"));
  json_decref(d);

  /* Tenant B advertises only what its config allows. */
  d = fx_sim_get_json(&f->sim, "/r4/" TENANT_B "/.well-known/smart-configuration");
  assert_non_null(d);
  algs = json_object_get(d, "token_endpoint_auth_signing_alg_values_supported");
  assert_int_equal(json_array_size(algs), 1);
  assert_true(array_has(algs, "RS384"));
  json_decref(d);
}

static void test_unknown_tenant(void **state) {
  fixture *f = *state;
  char url[256];
  snprintf(url, sizeof url, "%s/r4/no-such-tenant/Patient/1", f->sim.url);
  fxt_http_resp r;
  assert_int_equal(fxt_http("GET", url, NULL, NULL, &r), 0);
  assert_int_equal(r.status, 404);
  json_t *oo = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(oo, "resourceType")), "OperationOutcome");
  json_decref(oo);
  fxt_http_resp_free(&r);
}

static void test_read_without_token(void **state) {
  fixture *f = *state;
  fxt_http_resp r;
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, NULL, &r), 401);
  char *www = fxt_http_header(&r, "WWW-Authenticate");
  assert_non_null(www);
  assert_non_null(strstr(www, "error=\"invalid_token\""));
  assert_non_null(strstr(www, "Bearer realm="));
  free(www);
  fxt_http_resp_free(&r);

  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, "not-a-token", &r), 401);
  fxt_http_resp_free(&r);
}

static void test_garbage_assertion(void **state) {
  fixture *f = *state;
  expect_reason(f, TENANT, "garbage", "malformed-assertion");
  expect_reason(f, TENANT, "a.b.c", "malformed-assertion");
}

static void test_es384_token_and_read(void **state) {
  fixture *f = *state;
  register_client(f, TENANT, CLIENT, "[\"system/Patient.read\", \"system/Observation.read\"]");
  char *jwt = sign(&f->es, claims(f, TENANT, CLIENT, 240, NULL));
  json_t *body = NULL;
  /* Encounter is not registered: it is dropped, the rest kept in request order. */
  assert_int_equal(token_request(f, TENANT, jwt,
                                 "system/Observation.read system/Encounter.read "
                                 "system/Patient.read",
                                 &body),
                   200);
  assert_string_equal(json_string_value(json_object_get(body, "scope")),
                      "system/Observation.read system/Patient.read");
  assert_int_equal(json_integer_value(json_object_get(body, "expires_in")), 570);
  assert_string_equal(json_string_value(json_object_get(body, "token_type")), "Bearer");
  const char *token = json_string_value(json_object_get(body, "access_token"));
  assert_int_equal(strlen(token), 43); /* 32 random bytes, base64url */

  fxt_http_resp r;
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 200);
  char *ct = fxt_http_header(&r, "Content-Type");
  assert_non_null(ct);
  assert_non_null(strstr(ct, "application/fhir+json"));
  free(ct);
  json_t *p = body_json(&r);
  const json_t *name = json_array_get(json_object_get(p, "name"), 0);
  assert_string_equal(json_string_value(json_object_get(name, "text")), "SMART, WILMA");
  assert_string_equal(json_string_value(json_object_get(name, "family")), "SMART");
  assert_string_equal(json_string_value(json_object_get(p, "birthDate")), "1990-09-15");
  assert_true(json_is_true(json_object_get(p, "active")));
  json_decref(p);
  fxt_http_resp_free(&r);

  assert_int_equal(fhir_get(&f->sim, "/Patient/99999999", token, &r), 404);
  fxt_http_resp_free(&r);
  json_decref(body);
  free(jwt);
}

static void test_rs384_token(void **state) {
  fixture *f = *state;
  char *jwt = sign(&f->rs, claims(f, TENANT, CLIENT, 120, NULL));
  json_t *body = NULL;
  assert_int_equal(token_request(f, TENANT, jwt, "system/Patient.read", &body), 200);
  assert_string_equal(json_string_value(json_object_get(body, "scope")), "system/Patient.read");
  assert_int_equal(json_integer_value(json_object_get(body, "expires_in")), 570);
  fxt_http_resp r;
  assert_int_equal(fhir_get(&f->sim, "/Patient/20000001",
                            json_string_value(json_object_get(body, "access_token")), &r),
                   200);
  fxt_http_resp_free(&r);
  json_decref(body);
  free(jwt);
}

static void test_patient_search(void **state) {
  fixture *f = *state;
  char *token = get_token(f, &f->es, "system/Patient.read");
  fxt_http_resp r;
  assert_int_equal(fhir_get(&f->sim, "/Patient", token, &r), 400);
  json_t *oo = body_json(&r);
  assert_string_equal(issue_text(oo), CERNER_PATIENT_400);
  json_decref(oo);
  fxt_http_resp_free(&r);

  assert_int_equal(fhir_get(&f->sim, "/Patient?_id=" WILMA, token, &r), 200);
  json_t *b = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(b, "type")), "searchset");
  const json_t *entries = json_object_get(b, "entry");
  assert_int_equal(json_array_size(entries), 1);
  const json_t *e = json_array_get(entries, 0);
  char full[512];
  snprintf(full, sizeof full, "%s/r4/%s/Patient/%s", f->sim.url, TENANT, WILMA);
  assert_string_equal(json_string_value(json_object_get(e, "fullUrl")), full);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(e, "search"), "mode")), "match");
  json_decref(b);
  fxt_http_resp_free(&r);

  assert_int_equal(fhir_get(&f->sim, "/Patient?_id=1", token, &r), 200);
  b = body_json(&r);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 0);
  json_decref(b);
  fxt_http_resp_free(&r);

  /* Paging: 8 sandbox patients are family SMART; 3 per page -> 3 pages. */
  char path[2048] = "/Patient?family=smart&_count=3";
  size_t total = 0, pages = 0;
  while (*path) {
    assert_int_equal(fhir_get(&f->sim, path, token, &r), 200);
    b = body_json(&r);
    total += json_array_size(json_object_get(b, "entry"));
    pages++;
    path[0] = '\0';
    size_t i;
    const json_t *link;
    json_array_foreach(json_object_get(b, "link"), i, link) {
      const char *url = json_string_value(json_object_get(link, "url"));
      const char *rel = json_string_value(json_object_get(link, "relation"));
      const char *at = strstr(url, "/r4/" TENANT);
      if (strcmp(rel, "next") == 0 && at)
        snprintf(path, sizeof path, "%s", at + strlen("/r4/" TENANT));
    }
    json_decref(b);
    fxt_http_resp_free(&r);
    assert_true(pages <= 5);
  }
  assert_int_equal(total, 8);
  assert_int_equal(pages, 3);

  /* Token search on the MRN, with and without its system. */
  assert_int_equal(fhir_get(&f->sim, "/Patient?identifier=2724065", token, &r), 200);
  b = body_json(&r);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 1);
  json_decref(b);
  fxt_http_resp_free(&r);
  assert_int_equal(
      fhir_get(&f->sim, "/Patient?identifier=urn:oid:9.9%7C2724065&birthdate=1990", token, &r),
      200);
  b = body_json(&r);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 0);
  json_decref(b);
  fxt_http_resp_free(&r);

  /* Other resource types demand their own required parameter. */
  char *obs = get_token(f, &f->es, "system/Observation.read");
  assert_int_equal(fhir_get(&f->sim, "/Observation", obs, &r), 400);
  oo = body_json(&r);
  assert_string_equal(issue_text(oo),
                      "at least one of _id, patient, subject, or -pageContext must be provided");
  json_decref(oo);
  fxt_http_resp_free(&r);
  assert_int_equal(fhir_get(&f->sim, "/Observation?patient=" WILMA, obs, &r), 200);
  b = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(b, "type")), "searchset");
  json_decref(b);
  fxt_http_resp_free(&r);
  free(obs);
  free(token);
}

static void test_jti_replayed(void **state) {
  fixture *f = *state;
  char *jwt = sign(&f->es, claims(f, TENANT, CLIENT, 240, NULL));
  json_t *body = NULL;
  assert_int_equal(token_request(f, TENANT, jwt, "system/Patient.read", &body), 200);
  json_decref(body);
  expect_reason(f, TENANT, jwt, "jti-replayed");
  free(jwt);
}

static void test_wrong_audience(void **state) {
  fixture *f = *state;
  json_t *c = claims(f, TENANT, CLIENT, 240, NULL);
  json_object_set_new(c, "aud", json_string("https://authorization.cerner.com/tenants/" TENANT
                                            "/protocols/oauth2/profiles/smart-v1/token"));
  char *jwt = sign(&f->es, c);
  expect_reason(f, TENANT, jwt, "invalid-audience");
  free(jwt);
}

/* One assertion per remaining reason code, each wrong in exactly one way. */
static void test_other_reasons(void **state) {
  fixture *f = *state;
  json_t *c;
  char *jwt;

  c = claims(f, TENANT, CLIENT, 240, NULL);
  jwt = test_jwt_sign(&f->rs, c, "RS256", NULL);
  json_decref(c);
  expect_reason(f, TENANT, jwt, "unsupported-algorithm");
  free(jwt);

  /* Tenant B only allows RS384. */
  register_client(f, TENANT_B, CLIENT, "[\"system/Patient.read\"]");
  expect_reason(f, TENANT_B, (jwt = sign(&f->es, claims(f, TENANT_B, CLIENT, 240, NULL))),
                "unsupported-algorithm");
  free(jwt);

  expect_reason(f, TENANT, (jwt = sign(&f->es, claims(f, TENANT, "nobody", 240, NULL))),
                "unknown-client");
  free(jwt);

  c = claims(f, TENANT, CLIENT, 240, NULL);
  json_object_set_new(c, "sub", json_string("someone-else"));
  expect_reason(f, TENANT, (jwt = sign(&f->es, c)), "sub-mismatch");
  free(jwt);

  c = claims(f, TENANT, CLIENT, 240, NULL);
  jwt = test_jwt_sign(&f->es, c, NULL, "no-such-kid");
  json_decref(c);
  expect_reason(f, TENANT, jwt, "unknown-kid");
  free(jwt);

  expect_reason(f, TENANT, (jwt = sign(&f->rogue, claims(f, TENANT, CLIENT, 240, NULL))),
                "invalid-signature");
  free(jwt);

  c = claims(f, TENANT, CLIENT, 240, NULL);
  json_object_del(c, "exp");
  expect_reason(f, TENANT, (jwt = sign(&f->es, c)), "missing-expiration");
  free(jwt);

  expect_reason(f, TENANT, (jwt = sign(&f->es, claims(f, TENANT, CLIENT, -60, NULL))), "expired");
  free(jwt);

  expect_reason(f, TENANT, (jwt = sign(&f->es, claims(f, TENANT, CLIENT, 400, NULL))),
                "expiration-too-far");
  free(jwt);

  c = claims(f, TENANT, CLIENT, 240, NULL);
  json_object_del(c, "jti");
  expect_reason(f, TENANT, (jwt = sign(&f->es, c)), "missing-jti");
  free(jwt);
}

static void test_request_errors(void **state) {
  fixture *f = *state;
  json_t *body = NULL;
  char *jwt = sign(&f->es, claims(f, TENANT, CLIENT, 240, NULL));
  char form[4096];
  snprintf(form, sizeof form, "grant_type=client_credentials&client_assertion=%s", jwt);

  assert_int_equal(post_token(f, TENANT, "application/json", "{}", &body), 400);
  assert_string_equal(json_string_value(json_object_get(body, "error")), "invalid_request");
  json_decref(body);

  assert_int_equal(post_token(f, TENANT, "application/x-www-form-urlencoded",
                              "grant_type=authorization_code", &body),
                   400);
  assert_string_equal(json_string_value(json_object_get(body, "error")), "unsupported_grant_type");
  json_decref(body);

  assert_int_equal(post_token(f, TENANT, "application/x-www-form-urlencoded", form, &body), 400);
  assert_string_equal(json_string_value(json_object_get(body, "error")), "invalid_request");
  json_decref(body);

  assert_int_equal(token_request(f, TENANT, jwt, "system/Encounter.read", &body), 400);
  assert_string_equal(json_string_value(json_object_get(body, "error")), "invalid_scope");
  json_decref(body);
  free(jwt);
}

static void test_scope_forbidden(void **state) {
  fixture *f = *state;
  char *token = get_token(f, &f->es, "system/Observation.read");
  fxt_http_resp r;
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 403);
  json_t *oo = body_json(&r);
  assert_non_null(strstr(issue_text(oo), "system/Patient.read"));
  json_decref(oo);
  fxt_http_resp_free(&r);
  free(token);

  /* A SMART v2 registration works the same way with .rs scopes. */
  register_client(f, TENANT, CLIENT, "[\"system/Patient.rs\", \"system/Observation.read\"]");
  token = get_token(f, &f->es, "system/Patient.rs");
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 200);
  fxt_http_resp_free(&r);
  free(token);
  register_client(f, TENANT, CLIENT, "[\"system/Patient.read\", \"system/Observation.read\"]");
}

static void test_revoke_and_always_401(void **state) {
  fixture *f = *state;
  char *token = get_token(f, &f->es, "system/Patient.read");
  fxt_http_resp r;
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 200);
  fxt_http_resp_free(&r);
  assert_int_equal(
      fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/settings", "{\"revoke_tokens\":true}"),
      200);
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 401);
  fxt_http_resp_free(&r);
  free(token);

  token = get_token(f, &f->es, "system/Patient.read");
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/settings",
                                    "{\"fhir_always_401\":true}"),
                   200);
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 401);
  fxt_http_resp_free(&r);
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/settings",
                                    "{\"fhir_always_401\":false, \"expires_in\": 300}"),
                   200);
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 200);
  fxt_http_resp_free(&r);
  free(token);

  char *jwt = sign(&f->es, claims(f, TENANT, CLIENT, 240, NULL));
  json_t *body = NULL;
  assert_int_equal(token_request(f, TENANT, jwt, "system/Patient.read", &body), 200);
  assert_int_equal(json_integer_value(json_object_get(body, "expires_in")), 300);
  json_decref(body);
  free(jwt);
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/settings",
                                    "{\"expires_in\": 570}"),
                   200);
  /* Unknown settings are rejected rather than ignored. */
  assert_int_equal(
      fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/settings", "{\"expire_in\": 5}"), 400);
}

static void test_jwks_file_rotation(void **state) {
  fixture *f = *state;
  char path[512], body[1024];
  snprintf(path, sizeof path, "%s/jwks.json", f->dir);
  test_key *es_only[] = {&f->es};
  char *jwks = jwks_text(es_only, 1);
  assert_int_equal(fx_test_write_file(path, jwks), 0);
  free(jwks);
  snprintf(body, sizeof body,
           "{\"client_id\":\"rotating\",\"jwks_file\":\"%s\",\"scopes\":[\"system/Patient.read\"]}",
           path);
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/clients", body), 200);

  char *jwt = sign(&f->es, claims(f, TENANT, "rotating", 240, NULL));
  json_t *resp = NULL;
  assert_int_equal(token_request(f, TENANT, jwt, "system/Patient.read", &resp), 200);
  json_decref(resp);
  free(jwt);

  /* Rotate: the file now holds only the RSA key; the EC kid is gone. */
  test_key *rs_only[] = {&f->rs};
  jwks = jwks_text(rs_only, 1);
  assert_int_equal(fx_test_write_file(path, jwks), 0);
  free(jwks);
  expect_reason(f, TENANT, (jwt = sign(&f->es, claims(f, TENANT, "rotating", 240, NULL))),
                "unknown-kid");
  free(jwt);
  assert_int_equal(fx_test_write_file(path, "not json"), 0);
  expect_reason(f, TENANT, (jwt = sign(&f->rs, claims(f, TENANT, "rotating", 240, NULL))),
                "jwks-unavailable");
  free(jwt);

  /* A JWKS URL nobody listens on. */
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/clients",
                                    "{\"client_id\":\"remote\",\"jwks_url\":"
                                    "\"http://127.0.0.1:1/jwks.json\",\"scopes\":[]}"),
                   200);
  expect_reason(f, TENANT, (jwt = sign(&f->rs, claims(f, TENANT, "remote", 240, NULL))),
                "jwks-unavailable");
  free(jwt);
}

typedef struct timed_get {
  const char *url;
  long status;
  int64_t done_ms; /* monotonic completion time */
} timed_get;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *timed_get_main(void *arg) {
  timed_get *t = arg;
  fxt_http_resp r;
  if (fxt_http("GET", t->url, NULL, NULL, &r) == 0) t->status = r.status;
  t->done_ms = now_ms();
  fxt_http_resp_free(&r);
  return NULL;
}

static void test_faults(void **state) {
  fixture *f = *state;
  assert_int_equal(
      fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/faults",
                       "{\"target\":\"token\",\"status\":503,\"content_type\":\"text/html\","
                       "\"body\":\"<html>busy</html>\",\"headers\":{\"Retry-After\":\"2\"},"
                       "\"count\":1}"),
      200);
  char *jwt = sign(&f->es, claims(f, TENANT, CLIENT, 240, NULL));
  char url[512], form[4096];
  token_url(f, TENANT, url, sizeof url);
  snprintf(form, sizeof form, "grant_type=client_credentials&client_assertion=%s", jwt);
  const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  fxt_http_resp r;
  assert_int_equal(fxt_http("POST", url, headers, form, &r), 0);
  assert_int_equal(r.status, 503);
  assert_string_equal(r.body, "<html>busy</html>");
  char *ra = fxt_http_header(&r, "Retry-After");
  assert_non_null(ra);
  assert_string_equal(ra, "2");
  free(ra);
  fxt_http_resp_free(&r);
  /* count 1: the next request is handled normally. */
  json_t *body = NULL;
  assert_int_equal(token_request(f, TENANT, jwt, "system/Patient.read", &body), 200);
  json_decref(body);
  free(jwt);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "faults_served.token"), 1);

  /* A delayed discovery must not hold up other requests. */
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/faults",
                                    "{\"target\":\"discovery\",\"delay_ms\":600,\"count\":4}"),
                   200);
  char durl[512];
  snprintf(durl, sizeof durl, "%s/r4/%s/.well-known/smart-configuration", f->sim.url, TENANT);
  timed_get slow[4];
  pthread_t threads[4];
  int64_t start = now_ms();
  for (int i = 0; i < 4; i++) {
    slow[i] = (timed_get){.url = durl};
    assert_int_equal(pthread_create(&threads[i], NULL, timed_get_main, &slow[i]), 0);
  }
  fx_test_sleep_ms(100);
  /* As many delayed requests as pool threads: a sleeping pool thread would
   * make this request wait for the delays to end. Compared by completion
   * order rather than absolute times so a loaded CI machine cannot fail it. */
  json_t *health = fx_sim_get_json(&f->sim, "/_sim/health");
  int64_t health_done = now_ms();
  assert_non_null(health);
  json_decref(health);
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    assert_int_equal(slow[i].status, 200);
    assert_true(slow[i].done_ms - start >= 600);
    assert_true(health_done < slow[i].done_ms);
  }
  assert_int_equal(fx_sim_delete(&f->sim, "/_sim/tenants/" TENANT "/faults"), 200);
  assert_int_equal(
      fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/faults", "{\"target\":\"nope\"}"), 400);
}

static void test_counters(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/counters/reset", NULL), 200);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "token_requests"), 0);

  json_t *d = fx_sim_get_json(&f->sim, "/r4/" TENANT "/.well-known/smart-configuration");
  json_decref(d);
  char *token = get_token(f, &f->rs, "system/Patient.read");
  expect_reason(f, TENANT, "garbage", "malformed-assertion");
  fxt_http_resp r;
  fhir_get(&f->sim, "/Patient/" WILMA, token, &r);
  fxt_http_resp_free(&r);
  fhir_get(&f->sim, "/Patient/" WILMA, NULL, &r);
  fxt_http_resp_free(&r);
  free(token);

  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "discovery_requests"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "token_requests"), 2);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "tokens_granted"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "token_rejections.malformed-assertion"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "token_rejections.jti-replayed"), 0);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "token_requests_by_client." CLIENT), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_requests"), 2);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_by_status.200"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_by_status.401"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT_B, "token_requests"), 0);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "no_such_counter"), -1);
}

/* What tests read to check a client from the server's side: the tenant's
 * load (requests, peak in flight, arrival times), the tokens it issued, and
 * an `echo` fault that repeats the request's credential in its answer. */
static void test_load_tokens_echo(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/counters/reset", NULL), 200);
  char *token = get_token(f, &f->es, "system/Patient.read");
  fxt_http_resp r;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 200);
    fxt_http_resp_free(&r);
  }
  json_t *load = fx_sim_get_json(&f->sim, "/_sim/tenants/" TENANT "/load");
  assert_int_equal(json_integer_value(json_object_get(load, "requests")), 3);
  assert_int_equal(json_integer_value(json_object_get(load, "in_flight")), 0);
  assert_int_equal(json_integer_value(json_object_get(load, "peak_in_flight")), 1);
  json_t *arr = json_object_get(load, "arrivals_us");
  assert_int_equal(json_array_size(arr), 3);
  assert_true(json_integer_value(json_array_get(arr, 0)) <= json_integer_value(json_array_get(arr, 2)));
  json_decref(load);
  assert_int_equal(fx_sim_delete(&f->sim, "/_sim/tenants/" TENANT "/load"), 200);
  load = fx_sim_get_json(&f->sim, "/_sim/tenants/" TENANT "/load");
  assert_int_equal(json_integer_value(json_object_get(load, "requests")), 0);
  json_decref(load);

  json_t *tokens = fx_sim_get_json(&f->sim, "/_sim/tenants/" TENANT "/tokens");
  assert_true(array_has(json_object_get(tokens, "tokens"), token));
  json_decref(tokens);
  tokens = fx_sim_get_json(&f->sim, "/_sim/tenants/" TENANT_B "/tokens");
  assert_false(array_has(json_object_get(tokens, "tokens"), token));
  json_decref(tokens);

  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/faults",
                                    "{\"target\":\"fhir\",\"status\":401,\"echo\":true}"),
                   400); /* echo needs a body to echo into */
  assert_int_equal(
      fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/faults",
                       "{\"target\":\"fhir\",\"path\":\"Patient\",\"status\":401,\"echo\":true,"
                       "\"count\":1,\"body\":\"{\\\"seen\\\":\\\"{authorization}\\\"}\"}"),
      200);
  assert_int_equal(fhir_get(&f->sim, "/Patient/" WILMA, token, &r), 401);
  char want[600];
  snprintf(want, sizeof want, "{\"seen\":\"Bearer %s\"}", token);
  assert_string_equal(r.body, want);
  fxt_http_resp_free(&r);
  assert_int_equal(fx_sim_delete(&f->sim, "/_sim/tenants/" TENANT "/faults"), 200);
  free(token);
}

/* Same seed, same bytes: a second simulator serves identical resources. */
static void test_deterministic_data(void **state) {
  fixture *f = *state;
  fx_sim second;
  assert_int_equal(fx_sim_start(&second, config_json), 0);
  char *token1 = get_token(f, &f->es, "system/Patient.read");
  fx_sim saved = f->sim;
  f->sim = second;
  register_client(f, TENANT, CLIENT, "[\"system/Patient.read\"]");
  char *token2 = get_token(f, &f->es, "system/Patient.read");
  f->sim = saved;

  const char *ids[] = {"/Patient/20000001", "/Patient/20000005", "/Patient/" WILMA};
  for (size_t i = 0; i < 3; i++) {
    fxt_http_resp a, b;
    assert_int_equal(fhir_get(&f->sim, ids[i], token1, &a), 200);
    assert_int_equal(fhir_get(&second, ids[i], token2, &b), 200);
    assert_int_equal(a.body_len, b.body_len);
    assert_memory_equal(a.body, b.body, a.body_len);
    fxt_http_resp_free(&a);
    fxt_http_resp_free(&b);
  }
  assert_int_equal(fx_sim_stop_status(&second), 0);
  free(token1);
  free(token2);
}

static void test_bad_config(void **state) {
  fixture *f = *state;
  char path[512];
  snprintf(path, sizeof path, "%s/bad.json", f->dir);
  assert_int_equal(fx_test_write_file(path, "{\"tenants\":[{\"id\":\"t\",\"expire_in\":5}]}"), 0);
  const char *argv[] = {fx_sim_binary(), "--config", path, NULL};
  fx_run_result res;
  assert_int_equal(fx_test_run(argv, NULL, 10000, &res), 0);
  assert_int_equal(res.exit_code, 2);
  assert_non_null(strstr(res.err, "tenants[0]"));
  assert_non_null(strstr(res.err, "expire_in"));
  assert_non_null(strchr(res.err, '\n'));
  assert_null(strchr(strchr(res.err, '\n') + 1, '\n')); /* one line */
  fx_run_result_free(&res);

  assert_int_equal(fx_test_write_file(path, "{\"tenants\":[{\"id\":\"t\",\"clients\":[{"
                                            "\"client_id\":\"c\",\"scopes\":[]}]}]}"),
                   0);
  assert_int_equal(fx_test_run(argv, NULL, 10000, &res), 0);
  assert_int_equal(res.exit_code, 2);
  assert_non_null(strstr(res.err, "tenants[0].clients[0]"));
  fx_run_result_free(&res);
}

/* Last: SIGTERM must give exit 0 (and, under ASan, no leaks). */
static void test_clean_shutdown(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_stop_status(&f->sim), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_discovery),
      cmocka_unit_test(test_unknown_tenant),
      cmocka_unit_test(test_read_without_token),
      cmocka_unit_test(test_garbage_assertion),
      cmocka_unit_test(test_es384_token_and_read),
      cmocka_unit_test(test_rs384_token),
      cmocka_unit_test(test_patient_search),
      cmocka_unit_test(test_jti_replayed),
      cmocka_unit_test(test_wrong_audience),
      cmocka_unit_test(test_other_reasons),
      cmocka_unit_test(test_request_errors),
      cmocka_unit_test(test_scope_forbidden),
      cmocka_unit_test(test_revoke_and_always_401),
      cmocka_unit_test(test_jwks_file_rotation),
      cmocka_unit_test(test_faults),
      cmocka_unit_test(test_counters),
      cmocka_unit_test(test_load_tokens_echo),
      cmocka_unit_test(test_deterministic_data),
      cmocka_unit_test(test_bad_config),
      cmocka_unit_test(test_clean_shutdown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
