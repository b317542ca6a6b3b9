#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/config.h"
#include "common/log.h"
#include "unit_util.h"
#include "worker/model/app.h"
#include "worker/model/resources.h"

#define TENANT(extra)                                                                        \
  "{\"id\":\"t1\",\"environment\":\"sandbox\",\"fhir_base\":\"http://127.0.0.1:9/r4/t1\"," \
  "\"client_id\":\"c1\"" extra "}"
#define KEYS "\"keys\":[{\"path\":\"k.pem\"}]"

/* Parses text and expects failure with every needle in the message. */
static void expect_error(const char *text, const char *needle1, const char *needle2) {
  fx_config *cfg = NULL;
  fx_err err = {0};
  int rc = fx_config_parse(text, "/etc/fhirx", &cfg, &err);
  if (rc == 0) fail_msg("accepted: %s", text);
  assert_null(cfg);
  if (!strstr(err.msg, needle1)) fail_msg("'%s' not in '%s'", needle1, err.msg);
  if (needle2 && !strstr(err.msg, needle2)) fail_msg("'%s' not in '%s'", needle2, err.msg);
}

static void errors_name_the_field(void **state) {
  (void)state;
  expect_error("{\"tenants\":[" TENANT("") "]," KEYS ",\"tenantz\":1}", "tenantz",
               "unknown section");
  expect_error("{" KEYS "}", "tenants is required", NULL);
  expect_error("{\"tenants\":[" TENANT("") "]}", "keys is required", NULL);
  expect_error("{\"tenants\":[{\"id\":\"t1\",\"client_id\":\"c\"}]," KEYS "}",
               "tenants[0].fhir_base is required", NULL);
  expect_error("{\"tenants\":[" TENANT("") ",{\"id\":\"t2\",\"fhir_base\":\"not a url\","
               "\"client_id\":\"c\"}]," KEYS "}",
               "tenants[1].fhir_base", "not an absolute URL");
  expect_error("{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"http://x/r4/t1\",\"client_id\":\"c\""
               "}]," KEYS "}",
               "tenants[0].fhir_base", "production tenants must use https");
  expect_error("{\"tenants\":[" TENANT(",\"smart_version\":\"v3\"") "]," KEYS "}",
               "tenants[0].smart_version", "v1|v2");
  expect_error("{\"tenants\":[" TENANT(",\"clientid\":\"x\"") "]," KEYS "}",
               "tenants[0].clientid: unknown option", "client_id");
  expect_error("{\"tenants\":[" TENANT("") "," TENANT("") "]," KEYS "}", "tenants[1].id",
               "already used");
  expect_error("{\"tenants\":[" TENANT("") "]," KEYS ",\"http\":{\"timeout_ms\":5}}",
               "http.timeout_ms", "out of range");
  expect_error("{\"tenants\":[" TENANT("") "]," KEYS ",\"http\":{\"timeout_ms\":\"30\"}}",
               "http.timeout_ms", "expected an integer");
  expect_error("{\"tenants\":[" TENANT("") "]," KEYS ",\"http\":{\"max_error_body_bytes\":100}}",
               "http.max_error_body_bytes", "out of range 1024..67108864");
  expect_error("{\"tenants\":[" TENANT("") "]," KEYS ",\"http\":{\"max_retry_after_s\":0}}",
               "http.max_retry_after_s", "out of range 1..604800");
  expect_error("{\"tenants\":[" TENANT("") "],\"keys\":[{\"path\":\"k.pem\",\"alg\":\"HS256\"}]}",
               "keys[0].alg", "RS384|ES384");
  expect_error("{\"tenants\":[" TENANT(",\"scopes\":[\"a\",3]") "]," KEYS "}",
               "tenants[0].scopes[1]", NULL);
  expect_error("{\"tenants\":[" TENANT(",\"token_endpoint\":\"ftp://x/token\"") "]," KEYS "}",
               "tenants[0].token_endpoint", "scheme");
  expect_error("{\"tenants\":[{\"id\":\"a b\",\"environment\":\"sandbox\",\"fhir_base\":"
               "\"http://x/r4\",\"client_id\":\"c\"}]," KEYS "}",
               "tenants[0].id", "letters, digits");
  expect_error("{\n\"tenants\": [\n,]}", "line 3", "JSON");
  expect_error("[1]", "top level must be a JSON object", NULL);
}

static void defaults_and_paths(void **state) {
  (void)state;
  fx_config *cfg = NULL;
  fx_err err = {0};
  const char *text = "{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://fhir/r4/t1/\","
                     "\"client_id\":\"c1\"}],\"keys\":[{\"path\":\"keys/k.pem\"},"
                     "{\"path\":\"/abs/k2.pem\",\"alg\":\"ES384\",\"kid\":\"k2\"}]}";
  assert_int_equal(fx_config_parse(text, "/etc/fhirx", &cfg, &err), 0);
  assert_int_equal(cfg->n_tenants, 1);
  const fx_tenant_conf *t = fx_config_tenant(cfg, "t1");
  assert_non_null(t);
  assert_null(fx_config_tenant(cfg, "t2"));
  assert_string_equal(t->fhir_base, "https://fhir/r4/t1"); /* trailing slash dropped */
  assert_int_equal(t->environment, FX_ENV_PRODUCTION);
  assert_int_equal(t->smart_version, FX_SMART_V1);
  assert_null(t->token_endpoint);
  assert_string_equal(cfg->keys[0].path, "/etc/fhirx/keys/k.pem");
  assert_int_equal(cfg->keys[0].alg, -1);
  assert_null(cfg->keys[0].kid);
  assert_string_equal(cfg->keys[1].path, "/abs/k2.pem");
  assert_int_equal(cfg->keys[1].alg, 1);
  assert_string_equal(cfg->keys[1].kid, "k2");
  assert_int_equal(cfg->http.timeout_ms, 60000);
  assert_int_equal(cfg->http.max_error_body_bytes, 262144);
  assert_int_equal(cfg->http.max_retry_after_s, 3600);
  assert_int_equal(cfg->auth.assertion_lifetime_s, 240);
  assert_int_equal(cfg->auth.refresh_at_percent, 80);
  assert_int_equal(cfg->log.level, FX_LOG_INFO);
  fx_config_free(cfg);
}

static void load_names_the_file(void **state) {
  (void)state;
  char *dir = ut_tmpdir();
  char *path = ut_path(dir, "fhirx.json");
  ut_write(path, "{\"tenants\":[" TENANT(",\"resources\":[\"Patient\",\"Medication\"]") "]," KEYS
                 "}",
           0600);
  fx_app app;
  fx_err err = {0};
  assert_int_not_equal(fx_app_open(&app, path, &err), 0);
  assert_non_null(strstr(err.msg, "tenants[0].resources[1]"));
  assert_non_null(strstr(err.msg, "Medication"));
  ut_write(path, "{\"tenants\":[" TENANT("") "]," KEYS "}", 0600);
  assert_int_not_equal(fx_app_open(&app, path, &err), 0);
  assert_non_null(strstr(err.msg, "keys[0]")); /* k.pem does not exist */
  assert_non_null(strstr(err.msg, "k.pem"));
  fx_config *cfg;
  assert_int_equal(fx_config_load(path, &cfg, &err), 0);
  fx_config_free(cfg);
  free(path);
  path = ut_path(dir, "nope.json");
  assert_int_not_equal(fx_config_load(path, &cfg, &err), 0);
  assert_non_null(strstr(err.msg, "nope.json"));
  free(path);
  ut_rmdir(dir);
}

static void scopes_follow_the_query_set(void **state) {
  (void)state;
  fx_config *cfg = NULL;
  fx_err err = {0};
  const char *text =
      "{\"tenants\":[" TENANT("") "," "{\"id\":\"t2\",\"environment\":\"sandbox\","
      "\"fhir_base\":\"http://x/r4/t2\",\"client_id\":\"c\",\"smart_version\":\"v2\","
      "\"resources\":[\"Patient\",\"Observation\"]},"
      "{\"id\":\"t3\",\"environment\":\"sandbox\",\"fhir_base\":\"http://x/r4/t3\","
      "\"client_id\":\"c\",\"scopes\":[\"system/Patient.read\"]}]," KEYS "}";
  assert_int_equal(fx_config_parse(text, "/", &cfg, &err), 0);
  fx_profile_set ps;
  assert_int_equal(fx_profile_set_load(cfg, &ps, &err), 0);
  char *s1 = fx_tenant_scope(&cfg->tenants[0], ps.by_tenant[0]);
  char *s2 = fx_tenant_scope(&cfg->tenants[1], ps.by_tenant[1]);
  char *s3 = fx_tenant_scope(&cfg->tenants[2], ps.by_tenant[2]);
  /* Default: the 17 types Cerner is searched for per patient, v1 syntax; not
   * the reference types (Binary, Location, ...): the tenant does not follow
   * references (tenants[].follow_references). */
  size_t words = 1;
  for (const char *p = s1; *p; p++) words += *p == ' ';
  assert_int_equal(words, 17);
  assert_non_null(strstr(s1, "system/Patient.read"));
  assert_non_null(strstr(s1, "system/CarePlan.read"));
  assert_non_null(strstr(s1, "system/RelatedPerson.read"));
  assert_null(strstr(s1, "MedicationDispense"));
  assert_null(strstr(s1, "Binary"));
  assert_null(strstr(s1, "Location"));
  /* A subset, in v2 syntax: tenants[].resources narrows the scopes too. */
  assert_string_equal(s2, "system/Observation.rs system/Patient.rs");
  assert_string_equal(s3, "system/Patient.read");
  free(s1), free(s2), free(s3);
  fx_profile_set_free(&ps);
  fx_config_free(cfg);
}

static void reference_lists_every_option(void **state) {
  (void)state;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  fx_config_write_reference(f);
  fclose(f);
  const char *names[] = {"`tenants`", "`fhir_base`", "`client_id`", "`token_endpoint`",
                         "`smart_version`", "`keys`", "`path`", "`kid`", "`timeout_ms`",
                         "`ca_bundle`", "`assertion_lifetime_s`", "`refresh_at_percent`",
                         "`level`"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strstr(buf, names[i])) fail_msg("%s missing from the reference", names[i]);
  free(buf);
}

/* Client ids: any printable ASCII up to FX_CLIENT_ID_MAX bytes (the SMART
 * reference server's are JWTs of 557-1,057+ characters); the field is named
 * when one is too long or holds a control character. */
static void client_ids(void **state) {
  (void)state;
  size_t cap = FX_CLIENT_ID_MAX + 512;
  char *text = malloc(cap), *id = malloc(FX_CLIENT_ID_MAX + 2);
  for (size_t i = 0; i < FX_CLIENT_ID_MAX + 1; i++) id[i] = "eyJhbGciOiJIUzI1NiJ9.e30-_ "[i % 27];
  const size_t lens[] = {1057, FX_CLIENT_ID_MAX};
  for (size_t k = 0; k < 2; k++) {
    snprintf(text, cap,
             "{\"tenants\":[{\"id\":\"t1\",\"environment\":\"sandbox\",\"fhir_base\":"
             "\"http://h/r4/t1\",\"client_id\":\"%.*s\"}]," KEYS "}",
             (int)lens[k], id);
    fx_config *cfg = NULL;
    fx_err err = {0};
    if (fx_config_parse(text, "/etc/fhirx", &cfg, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(strlen(cfg->tenants[0].client_id), lens[k]);
    assert_memory_equal(cfg->tenants[0].client_id, id, lens[k]);
    fx_config_free(cfg);
  }
  snprintf(text, cap,
           "{\"tenants\":[{\"id\":\"t1\",\"environment\":\"sandbox\",\"fhir_base\":"
           "\"http://h/r4/t1\",\"client_id\":\"%.*s\"}]," KEYS "}",
           FX_CLIENT_ID_MAX + 1, id);
  expect_error(text, "tenants[0].client_id", "out of range 1..8192");
  expect_error("{\"tenants\":[{\"id\":\"t1\",\"environment\":\"sandbox\",\"fhir_base\":"
               "\"http://h/r4/t1\",\"client_id\":\"eyJhbGci\\nOiJI\"}]," KEYS "}",
               "tenants[0].client_id: character 9 is not printable ASCII", "line breaks");
  free(text);
  free(id);
}

/* tenants[].token_url_prefixes: absolute http(s) URLs without query, https
 * for production tenants, normalized like fhir_base; each error names the entry. */
static void token_url_prefixes(void **state) {
  (void)state;
  fx_config *cfg = NULL;
  fx_err err = {0};
  const char *text =
      "{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://h/r4/t1\",\"client_id\":\"c\","
      "\"token_url_prefixes\":[\"https://files.h/exports/\",\"https://cdn.h/\"]},"
      "{\"id\":\"t2\",\"fhir_base\":\"https://h/r4/t2\",\"client_id\":\"c\"}]," KEYS "}";
  if (fx_config_parse(text, "/etc/fhirx", &cfg, &err) != 0) fail_msg("%s", err.msg);
  assert_int_equal(cfg->tenants[0].token_url_prefixes.n, 2);
  assert_string_equal(cfg->tenants[0].token_url_prefixes.v[0], "https://files.h/exports");
  assert_string_equal(cfg->tenants[0].token_url_prefixes.v[1], "https://cdn.h");
  assert_int_equal(cfg->tenants[1].token_url_prefixes.n, 0); /* the safe default: none */
  fx_config_free(cfg);
  expect_error("{\"tenants\":[" TENANT(",\"token_url_prefixes\":[\"/relative\"]") "]," KEYS "}",
               "tenants[0].token_url_prefixes[0]", "not an absolute URL");
  expect_error("{\"tenants\":[" TENANT(",\"token_url_prefixes\":[\"ftp://h/x\"]") "]," KEYS "}",
               "tenants[0].token_url_prefixes[0]", "scheme");
  expect_error("{\"tenants\":[" TENANT(",\"token_url_prefixes\":[\"https://h/x?y=1\"]") "],"
               KEYS "}",
               "tenants[0].token_url_prefixes[0]", "query");
  expect_error("{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://h/r4/t1\",\"client_id\":"
               "\"c\",\"token_url_prefixes\":[\"https://ok/x\",\"http://files.h/x\"]}]," KEYS "}",
               "tenants[0].token_url_prefixes[1]", "only over https");
  expect_error("{\"tenants\":[" TENANT(",\"token_url_prefixes\":\"https://h\"") "]," KEYS "}",
               "tenants[0].token_url_prefixes", "array of strings");
}

/* Issue 13 item 5: every URL in a tenant is an absolute URL with a host, and
 * no path that a server could read as another one ("/r4/t1/.." would pin
 * every tenant of the host). The field is named, and what to write instead. */
#define SANDBOX_BASE(base)                                                              \
  "{\"tenants\":[{\"id\":\"t1\",\"environment\":\"sandbox\",\"fhir_base\":\"" base \
  "\",\"client_id\":\"c\"}]," KEYS "}"
static void urls_are_absolute_and_clean(void **state) {
  (void)state;
  expect_error(SANDBOX_BASE("https:/h/r4/t1"), "tenants[0].fhir_base", "not an absolute URL");
  expect_error(SANDBOX_BASE("https:/h/r4/t1"), "tenants[0].fhir_base", "https://host/");
  expect_error(SANDBOX_BASE("https:///h/r4/t1"), "tenants[0].fhir_base", "absolute URL");
  expect_error(SANDBOX_BASE("http:h/r4/t1"), "tenants[0].fhir_base", "absolute URL");
  expect_error(SANDBOX_BASE("https://h/r4/t1/.."), "tenants[0].fhir_base", "dot segment");
  expect_error(SANDBOX_BASE("https://h/r4/t1/../t2"), "tenants[0].fhir_base", "dot segment");
  expect_error(SANDBOX_BASE("https://h/r4/./t1"), "tenants[0].fhir_base", "dot segment");
  expect_error(SANDBOX_BASE("https://h/r4/t1/%2e%2e"), "tenants[0].fhir_base", "dot segment");
  expect_error(SANDBOX_BASE("https://h/r4/t1/.%2E"), "tenants[0].fhir_base", "dot segment");
  expect_error(SANDBOX_BASE("https://h/r4/t1%2f..%2ft2"), "tenants[0].fhir_base", "'/'");
  expect_error(SANDBOX_BASE("https://h/r4\\\\t1"), "tenants[0].fhir_base", "backslash");
  /* The value is shown without userinfo. */
  expect_error(SANDBOX_BASE("https://u:hunter2@h/r4/t1/%2e%2e"), "tenants[0].fhir_base",
               "'https://h/r4/t1/%2e%2e'");
  fx_config *cfg = NULL;
  fx_err err = {0};
  if (fx_config_parse(SANDBOX_BASE("https://u:hunter2@h/r4/t1/.."), "/", &cfg, &err) == 0)
    fail_msg("accepted");
  assert_null(strstr(err.msg, "hunter2"));
  expect_error("{\"tenants\":[" TENANT(",\"token_endpoint\":\"https:/a/token\"") "]," KEYS "}",
               "tenants[0].token_endpoint", "absolute URL");
  expect_error("{\"tenants\":[" TENANT(",\"token_endpoint\":\"https://a/t/%2e%2e/x\"") "],"
               KEYS "}",
               "tenants[0].token_endpoint", "dot segment");
  expect_error("{\"tenants\":[" TENANT(",\"token_url_prefixes\":[\"https://a/x/..\"]") "]," KEYS
               "}",
               "tenants[0].token_url_prefixes[0]", "dot segment");
  expect_error("{\"tenants\":[" TENANT(",\"token_url_prefixes\":[\"https:///a\"]") "]," KEYS "}",
               "tenants[0].token_url_prefixes[0]", "absolute URL");
  /* Still fine: a port, IPv6, dots inside segments. */
  if (fx_config_parse(SANDBOX_BASE("https://[::1]:8443/r4.x/t..1"), "/", &cfg, &err) != 0)
    fail_msg("%s", err.msg);
  fx_config_free(cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(errors_name_the_field), cmocka_unit_test(defaults_and_paths),
      cmocka_unit_test(load_names_the_file), cmocka_unit_test(scopes_follow_the_query_set),
      cmocka_unit_test(reference_lists_every_option),
      cmocka_unit_test(client_ids), cmocka_unit_test(token_url_prefixes),
      cmocka_unit_test(urls_are_absolute_and_clean)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
