#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/smart.h"
#include "unit_util.h"

static fx_key key = {.alg = FX_ALG_ES384, .kid = "kid-123", .path = "k.pem"};
static const fx_smart_client client = {
    .tenant = "t1",
    .client_id = "client-1",
    .fhir_base = "https://fhir/r4/t1",
    .token_endpoint = "https://auth/tenants/t1/protocols/oauth2/profiles/smart-v1/token",
    .scope = "system/Patient.read system/Observation.read",
    .key = &key};

#define CERNER_URI(reason)                                                                    \
  "https://authorization.cerner.com/errors/"                                                 \
  "urn%3Acerner%3Aerror%3Aauthorization-server%3Aoauth2%3Atoken%3A" reason                   \
  "/instances/8c6f2b7e-1f0e-4c8e-a0a4-5c2f6d1f9a11?client=client-1&tenant=t1"

static void success(void **state) {
  (void)state;
  fx_token_grant g;
  fx_auth_error e;
  assert_int_equal(
      fx_smart_parse_token_response(&client, 200, "application/json",
                                    "{\"access_token\":\"abc\",\"token_type\":\"bearer\","
                                    "\"expires_in\":570,\"scope\":\"system/Patient.read\"}",
                                    &g, &e),
      0);
  assert_string_equal(g.access_token, "abc");
  assert_string_equal(g.scope, "system/Patient.read");
  assert_int_equal(g.expires_in, 570);
  fx_token_grant_clear(&g);
  /* No scope in the answer means "as requested" (RFC 6749 5.1). */
  assert_int_equal(fx_smart_parse_token_response(
                       &client, 200, "application/json",
                       "{\"access_token\":\"abc\",\"token_type\":\"Bearer\",\"expires_in\":60}",
                       &g, &e),
                   0);
  assert_string_equal(g.scope, client.scope);
  fx_token_grant_clear(&g);
}

/* expires_in is bounded when it is read: the largest JSON integer, or a
 * value whose milliseconds overflow 64 bits, is a day, never a wrapped
 * lifetime; absent, zero, negative or not an integer is the default. */
static void expires_in_is_bounded(void **state) {
  (void)state;
  static const struct {
    const char *value;
    long want;
  } cases[] = {{"570", 570},
               {"86400", FX_TOKEN_MAX_EXPIRES_IN_S},
               {"86401", FX_TOKEN_MAX_EXPIRES_IN_S},
               {"18446744073709552", FX_TOKEN_MAX_EXPIRES_IN_S},
               {"9223372036854775807", FX_TOKEN_MAX_EXPIRES_IN_S},
               {"0", 300},
               {"-5", 300},
               {"1e30", 300},
               {"\"3600\"", 300}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char body[256];
    snprintf(body, sizeof body,
             "{\"access_token\":\"abc\",\"token_type\":\"Bearer\",\"expires_in\":%s}",
             cases[i].value);
    fx_token_grant g;
    fx_auth_error e;
    assert_int_equal(fx_smart_parse_token_response(&client, 200, "application/json", body, &g, &e),
                     0);
    if (g.expires_in != cases[i].want)
      fail_msg("expires_in %s read as %ld, want %ld", cases[i].value, g.expires_in, cases[i].want);
    fx_token_grant_clear(&g);
  }
}

static void invalid_client_names_kid_and_reason(void **state) {
  (void)state;
  fx_token_grant g;
  fx_auth_error e;
  int rc = fx_smart_parse_token_response(
      &client, 400, "application/json",
      "{\"error\":\"invalid_client\",\"error_uri\":\"" CERNER_URI("unknown-kid") "\"}", &g, &e);
  assert_int_equal(rc, FX_EAUTH);
  assert_string_equal(e.oauth_error, "invalid_client");
  assert_string_equal(e.reason, "unknown-kid");
  assert_int_equal(e.http_status, 400);
  assert_non_null(strstr(e.err.msg, "kid 'kid-123'"));
  assert_non_null(strstr(e.err.msg, "ES384"));
  assert_non_null(strstr(e.err.msg, "Cerner Central"));
  assert_non_null(strstr(e.err.msg, "fhirx keys jwks"));
  assert_null(g.access_token);

  rc = fx_smart_parse_token_response(
      &client, 400, "application/json",
      "{\"error\":\"invalid_client\",\"error_description\":\"bad aud\",\"error_uri\":\"" CERNER_URI(
          "invalid-audience") "\"}",
      &g, &e);
  assert_int_equal(rc, FX_EAUTH);
  assert_non_null(strstr(e.err.msg, "reason: invalid-audience; bad aud"));
  assert_non_null(strstr(e.err.msg, "token_endpoint"));
}

static void invalid_scope_lists_what_we_asked(void **state) {
  (void)state;
  fx_token_grant g;
  fx_auth_error e;
  int rc = fx_smart_parse_token_response(&client, 400, "application/json",
                                         "{\"error\":\"invalid_scope\"}", &g, &e);
  assert_int_equal(rc, FX_EAUTH);
  assert_non_null(strstr(e.err.msg, "system/Patient.read system/Observation.read"));
  assert_non_null(strstr(e.err.msg, "Code Console"));
}

/* Every R4 type's scope (a generic tenant that extracts many): the message
 * stays within fx_err, ends with the whole hint, and the list is cut between
 * two scopes with the number left out, never in the middle of one. */
static void invalid_scope_never_cut_mid_sentence(void **state) {
  (void)state;
  char scope[8192] = "";
  for (int i = 0; i < 60; i++)
    snprintf(scope + strlen(scope), sizeof scope - strlen(scope), "%ssystem/Type%02dResource.read",
             i ? " " : "", i);
  fx_smart_client big = client;
  big.scope = scope;
  fx_token_grant g;
  fx_auth_error e;
  assert_int_equal(fx_smart_parse_token_response(
                       &big, 400, "application/json",
                       "{\"error\":\"invalid_scope\",\"error_description\":\"scope not allowed\"}",
                       &g, &e),
                   FX_EAUTH);
  size_t n = strlen(e.err.msg);
  assert_true(n < sizeof e.err.msg - 1 || e.err.msg[n - 1] == ')');
  const char *end = "(a SMART v2 registration drops v1 scopes)";
  assert_string_equal(e.err.msg + n - strlen(end), end);
  assert_non_null(strstr(e.err.msg, "system/Type00Resource.read system/Type01Resource.read"));
  const char *more = strstr(e.err.msg, " ... (");
  assert_non_null(more);
  /* What comes before " ... (" is a whole scope; the count is right. */
  assert_memory_equal(more - 5, ".read", 5);
  size_t shown = 0;
  for (const char *p = strstr(e.err.msg, "system/Type"); p && p < more; p = strstr(p + 1, "system/Type"))
    shown++;
  char want[64];
  snprintf(want, sizeof want, " ... (%zu more scopes); granted: nothing.", 60 - shown);
  assert_non_null(strstr(e.err.msg, want));
  assert_true(shown > 10);

  /* The helper: whole, cut with a count, and the singular. */
  char out[128];
  fx_smart_scope_list("a b c", 10, out, sizeof out);
  assert_string_equal(out, "a b c");
  fx_smart_scope_list("system/A.read system/B.read system/C.read", 40, out, sizeof out);
  assert_string_equal(out, "system/A.read ... (2 more scopes)");
  fx_smart_scope_list("system/A.read system/B.read", 26, out, sizeof out);
  assert_string_equal(out, "... (2 more scopes)");
  fx_smart_scope_list("system/A.read system/B.read system/C.read", 38, out, sizeof out);
  assert_string_equal(out, "system/A.read ... (2 more scopes)");
  fx_smart_scope_list("aa bb cc", 7, out, sizeof out);
  assert_string_equal(out, "... (3 more scopes)"); /* room smaller than any note: the note wins */
  fx_smart_scope_list("system/A.read system/B.read system/C.read", 41, out, sizeof out);
  assert_string_equal(out, "system/A.read system/B.read system/C.read");
  fx_smart_scope_list("system/A.read system/B.read system/C.read", 39, out, sizeof out);
  assert_string_equal(out, "system/A.read ... (2 more scopes)");
}

static void outages_are_transient(void **state) {
  (void)state;
  fx_token_grant g;
  fx_auth_error e;
  assert_int_equal(fx_smart_parse_token_response(&client, 503, "text/html",
                                                 "<html><body>Service Unavailable</body></html>",
                                                 &g, &e),
                   FX_ETRANSIENT);
  assert_non_null(strstr(e.err.msg, "HTML"));
  assert_non_null(strstr(e.err.msg, "503"));
  assert_int_equal(fx_smart_parse_token_response(&client, 200, "text/html", "<html/>", &g, &e),
                   FX_ETRANSIENT);
  assert_int_equal(fx_smart_parse_token_response(&client, 502, "application/json", "{}", &g, &e),
                   FX_ETRANSIENT);
  assert_int_equal(fx_smart_parse_token_response(&client, 429, NULL, "", &g, &e), FX_ETRANSIENT);
}

static void refuses_non_bearer(void **state) {
  (void)state;
  fx_token_grant g;
  fx_auth_error e;
  assert_int_equal(fx_smart_parse_token_response(
                       &client, 200, "application/json",
                       "{\"access_token\":\"abc\",\"token_type\":\"mac\",\"expires_in\":60}", &g,
                       &e),
                   FX_EAUTH);
  assert_non_null(strstr(e.err.msg, "Bearer"));
  assert_int_equal(fx_smart_parse_token_response(&client, 200, "application/json",
                                                 "{\"token_type\":\"Bearer\"}", &g, &e),
                   FX_EAUTH);
}

static void cerner_reason(void **state) {
  (void)state;
  char r[64];
  assert_int_equal(fx_smart_cerner_reason(CERNER_URI("jti-replayed"), r, sizeof r), 0);
  assert_string_equal(r, "jti-replayed");
  assert_int_equal(fx_smart_cerner_reason("https://x/errors/urn:cerner:error:authorization-"
                                          "server:oauth2:token:expired/instances/1",
                                          r, sizeof r),
                   0);
  assert_string_equal(r, "expired");
  assert_int_equal(fx_smart_cerner_reason("https://example.com/help", r, sizeof r), -1);
  assert_int_equal(fx_smart_cerner_reason(NULL, r, sizeof r), -1);
}

static void scope_missing(void **state) {
  (void)state;
  char *m = fx_scope_missing("a b c", "c a");
  assert_string_equal(m, "b");
  free(m);
  m = fx_scope_missing("a b", "a b");
  assert_string_equal(m, "");
  free(m);
  m = fx_scope_missing("system/Patient.read", "system/Patient.reads");
  assert_string_equal(m, "system/Patient.read");
  free(m);
}

static void discovery_checks(void **state) {
  (void)state;
  char *te = NULL;
  fx_auth_error e;
  const char *good = "{\"token_endpoint\":\"https://auth/token\","
                     "\"token_endpoint_auth_methods_supported\":[\"private_key_jwt\"],"
                     "\"token_endpoint_auth_signing_alg_values_supported\":[\"RS384\",\"ES384\"]}";
  assert_int_equal(fx_smart_check_discovery("t1", 200, good, FX_ALG_ES384, 1, &te, &e), 0);
  assert_string_equal(te, "https://auth/token");
  free(te);
  const char *rs_only = "{\"token_endpoint\":\"https://auth/token\","
                        "\"token_endpoint_auth_signing_alg_values_supported\":[\"RS384\"]}";
  assert_int_equal(fx_smart_check_discovery("t1", 200, rs_only, FX_ALG_ES384, 1, &te, &e),
                   FX_EUNSUPPORTED);
  assert_non_null(strstr(e.err.msg, "ES384"));
  assert_non_null(strstr(e.err.msg, "RS384"));
  const char *no_jwt = "{\"token_endpoint\":\"https://auth/token\","
                       "\"token_endpoint_auth_methods_supported\":[\"client_secret_basic\"]}";
  assert_int_equal(fx_smart_check_discovery("t1", 200, no_jwt, FX_ALG_ES384, 1, &te, &e),
                   FX_EUNSUPPORTED);
  assert_non_null(strstr(e.err.msg, "private_key_jwt"));
  assert_int_equal(fx_smart_check_discovery("t1", 404, "", FX_ALG_ES384, 1, &te, &e), FX_EAUTH);
  assert_non_null(strstr(e.err.msg, "fhir_base"));
  assert_int_equal(fx_smart_check_discovery("t1", 503, "", FX_ALG_ES384, 1, &te, &e), FX_ETRANSIENT);
  assert_int_equal(fx_smart_check_discovery("t1", 200, "<html>", FX_ALG_ES384, 1, &te, &e),
                   FX_ETRANSIENT);
}

/* Issue 13 item 10: a discovered token endpoint is held to the rules of a
 * configured one (fx_config_check_url): https for production tenants, an
 * absolute URL with a host, a clean path, no query; the message says what to
 * set, and shows no userinfo. */
static void discovered_endpoint_follows_config_rules(void **state) {
  (void)state;
  char *te = NULL, doc[512];
  fx_auth_error e;
  const char *bad[][2] = {{"http://auth/token", "production tenants must use https"},
                          {"https:/auth/token", "absolute URL"},
                          {"https:///auth/token", "absolute URL"},
                          {"ftp://auth/token", "scheme"},
                          {"https://auth/t1/%2e%2e/t2/token", "dot segment"},
                          {"https://auth/t1/..%2Ftoken", "'/'"},
                          {"https://auth/token?x=1", "query"},
                          {"token", "absolute URL"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(doc, sizeof doc, "{\"token_endpoint\":\"%s\"}", bad[i][0]);
    te = NULL;
    assert_int_equal(fx_smart_check_discovery("t1", 200, doc, FX_ALG_ES384, 1, &te, &e),
                     FX_EAUTH);
    assert_null(te);
    if (!strstr(e.err.msg, bad[i][1])) fail_msg("'%s' not in '%s'", bad[i][1], e.err.msg);
    assert_non_null(strstr(e.err.msg, "tenants[].token_endpoint"));
  }
  /* http is a sandbox's right, as in configuration; the rest is not. */
  const char *http = "{\"token_endpoint\":\"http://127.0.0.1:8080/token/\"}";
  assert_int_equal(fx_smart_check_discovery("t1", 200, http, FX_ALG_ES384, 0, &te, &e), 0);
  assert_string_equal(te, "http://127.0.0.1:8080/token/"); /* as written: it is the aud */
  free(te);
  const char *dots = "{\"token_endpoint\":\"http://127.0.0.1:8080/a/%2e%2e/token\"}";
  assert_int_equal(fx_smart_check_discovery("t1", 200, dots, FX_ALG_ES384, 0, &te, &e), FX_EAUTH);
  const char *creds = "{\"token_endpoint\":\"http://u:hunter2@auth/token\"}";
  assert_int_equal(fx_smart_check_discovery("t1", 200, creds, FX_ALG_ES384, 1, &te, &e), FX_EAUTH);
  assert_null(strstr(e.err.msg, "hunter2"));
}

/* A client id of a thousand characters (the SMART reference server issues
 * signed JWTs) is shown by its start and length: the message keeps its hint,
 * and never holds something that looks like a JWT. */
static void long_client_id_keeps_the_message(void **state) {
  (void)state;
  char id[1100];
  snprintf(id, sizeof id, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJqd2tzIjp7ImtleXMiOlt7Imt0eSI6");
  size_t n = strlen(id);
  while (n < 1057) id[n++] = 'Q';
  id[n] = '\0';
  char shown[96];
  fx_smart_client_id_shown(id, shown, sizeof shown);
  assert_string_equal(shown, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpX... (1057 characters)");
  fx_smart_client_id_shown("client-1", shown, sizeof shown);
  assert_string_equal(shown, "client-1");
  fx_smart_client_id_shown("eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln-and-more-than-forty-eight-characters",
                           shown, sizeof shown);
  assert_string_equal(shown, "eyJhbGciOi... (68 characters)");
  fx_smart_client c = client;
  c.client_id = id;
  fx_token_grant g;
  fx_auth_error e;
  int rc = fx_smart_parse_token_response(
      &c, 400, "application/json",
      "{\"error\":\"invalid_client\",\"error_uri\":\"" CERNER_URI("unknown-client") "\"}", &g, &e);
  assert_int_equal(rc, FX_EAUTH);
  assert_non_null(strstr(e.err.msg, "as client 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpX... (1057 characters)'"));
  assert_non_null(strstr(e.err.msg, "Hint: the client_id is not registered"));
  assert_null(strstr(e.err.msg, ".eyJ"));
}

/* A token endpoint with userinfo (configured or discovered) is named in auth
 * errors, which reach failure records, dead letters and logs: never with its
 * userinfo (issue 13 item 9). */
static void token_endpoint_userinfo_never_shown(void **state) {
  (void)state;
  fx_smart_client c = client;
  c.token_endpoint = "https://svc:hunter2@auth/tenants/t1/protocols/oauth2/profiles/smart-v1/token";
  fx_token_grant g;
  fx_auth_error e;
  int rc = fx_smart_parse_token_response(
      &c, 400, "application/json",
      "{\"error\":\"invalid_client\",\"error_uri\":\"" CERNER_URI("unknown-kid") "\"}", &g, &e);
  assert_int_equal(rc, FX_EAUTH);
  assert_non_null(strstr(e.err.msg, "for aud https://auth/tenants/t1/"));
  assert_null(strstr(e.err.msg, "hunter2"));
  rc = fx_smart_parse_token_response(&c, 503, "text/html", "<html>down</html>", &g, &e);
  assert_int_equal(rc, FX_ETRANSIENT);
  assert_non_null(strstr(e.err.msg, "the token endpoint https://auth/tenants/t1/"));
  assert_null(strstr(e.err.msg, "hunter2"));
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(success),
                                     cmocka_unit_test(expires_in_is_bounded),
                                     cmocka_unit_test(invalid_client_names_kid_and_reason),
                                     cmocka_unit_test(token_endpoint_userinfo_never_shown),
                                     cmocka_unit_test(invalid_scope_lists_what_we_asked),
                                     cmocka_unit_test(invalid_scope_never_cut_mid_sentence),
                                     cmocka_unit_test(outages_are_transient),
                                     cmocka_unit_test(refuses_non_bearer),
                                     cmocka_unit_test(cerner_reason),
                                     cmocka_unit_test(scope_missing),
                                     cmocka_unit_test(discovery_checks),
      cmocka_unit_test(discovered_endpoint_follows_config_rules),
                                     cmocka_unit_test(long_client_id_keeps_the_message)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
