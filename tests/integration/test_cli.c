/* The fhirx command line against the simulator, as an operator uses it on
 * day one: exit statuses, outputs, and the hints on failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fx_testsupport.h"

#define TENANT "ec2458f2-1e24-41c8-b71b-0e701af7583d"

static char *dir;
static fx_sim sim;
static char config[600], key[600];

static fx_run_result run(const char *a1, const char *a2, const char *a3, const char *a4,
                         const char *a5, const char *a6) {
  const char *argv[] = {FHIRX_BIN, a1, a2, a3, a4, a5, a6, NULL};
  fx_run_result r;
  if (fx_test_run(argv, NULL, 30000, &r) != 0) fail_msg("fhirx did not run to completion");
  return r;
}

static int setup(void **state) {
  (void)state;
  dir = fx_test_tmpdir();
  snprintf(key, sizeof key, "%s/key.pem", dir);
  char jwks[600];
  snprintf(jwks, sizeof jwks, "%s/jwks.json", dir);
  fx_run_result r = run("keys", "generate", "--alg", "ES384", "--out", key);
  if (r.exit_code != 0) return -1;
  fx_run_result_free(&r);
  r = run("keys", "jwks", "--key", key, NULL, NULL);
  if (r.exit_code != 0 || fx_test_write_file(jwks, r.out) != 0) return -1;
  fx_run_result_free(&r);
  char simcfg[2048];
  snprintf(simcfg, sizeof simcfg,
           "{\"tenants\":[{\"id\":\"" TENANT "\",\"sandbox\":true,\"clients\":[{\"client_id\":"
           "\"app\",\"jwks_file\":\"%s\",\"scopes\":[\"system/Patient.read\","
           "\"system/Observation.read\"]}]}]}",
           jwks);
  if (fx_sim_start(&sim, simcfg) != 0) return -1;
  snprintf(config, sizeof config, "%s/fhirx.json", dir);
  char cfg[2048];
  snprintf(cfg, sizeof cfg,
           "{\"tenants\":[{\"id\":\"" TENANT "\",\"environment\":\"sandbox\",\"fhir_base\":"
           "\"%s/r4/" TENANT "\",\"client_id\":\"app\",\"scopes\":[\"system/Patient.read\","
           "\"system/Observation.read\",\"system/Encounter.read\"]}],"
           "\"keys\":[{\"path\":\"key.pem\"}]}",
           sim.url);
  return fx_test_write_file(config, cfg);
}

static int teardown(void **state) {
  (void)state;
  fx_sim_stop(&sim);
  fx_test_rmtree(dir);
  free(dir);
  return 0;
}

static void token_prints_grant_not_secret(void **state) {
  (void)state;
  fx_run_result r = run("token", "--config", config, NULL, NULL, NULL);
  assert_int_equal(r.exit_code, 0);
  json_t *out = json_loads(r.out, 0, NULL);
  assert_non_null(out);
  assert_string_equal(json_string_value(json_object_get(out, "scope")),
                      "system/Patient.read system/Observation.read");
  assert_int_equal(json_integer_value(json_object_get(out, "expires_in")), 570);
  assert_null(json_object_get(out, "access_token"));
  /* What Code Console did not grant is called out. */
  assert_string_equal(json_string_value(json_object_get(out, "not_granted")),
                      "system/Encounter.read");
  assert_non_null(strstr(r.err, "system/Encounter.read"));
  json_decref(out);
  fx_run_result_free(&r);

  /* --show-token prints it on stdout, and debug logs still never carry it. */
  setenv("FHIRX_LOG_LEVEL", "debug", 1);
  r = run("token", "--config", config, "--show-token", NULL, NULL);
  unsetenv("FHIRX_LOG_LEVEL");
  assert_int_equal(r.exit_code, 0);
  out = json_loads(r.out, 0, NULL);
  const char *tok = json_string_value(json_object_get(out, "access_token"));
  assert_non_null(tok);
  assert_true(strlen(tok) > 20);
  assert_null(strstr(r.err, tok));
  assert_non_null(strstr(r.err, "\"level\":\"info\"")); /* logs were on */
  json_decref(out);
  fx_run_result_free(&r);
}

/* FHIRX_CONFIG stands for --config; an explicit --config still wins. */
static void config_from_environment(void **state) {
  (void)state;
  setenv("FHIRX_CONFIG", config, 1);
  fx_run_result r = run("token", NULL, NULL, NULL, NULL, NULL);
  assert_int_equal(r.exit_code, 0);
  assert_non_null(strstr(r.out, "\"expires_in\""));
  fx_run_result_free(&r);
  char missing[700];
  snprintf(missing, sizeof missing, "%s/nope.json", dir);
  r = run("token", "--config", missing, NULL, NULL, NULL);
  assert_int_not_equal(r.exit_code, 0);
  assert_non_null(strstr(r.err, "nope.json"));
  fx_run_result_free(&r);
  /* A wrong FHIRX_CONFIG is named like a wrong --config. */
  setenv("FHIRX_CONFIG", missing, 1);
  r = run("config", "check", NULL, NULL, NULL, NULL);
  unsetenv("FHIRX_CONFIG");
  assert_int_not_equal(r.exit_code, 0);
  assert_non_null(strstr(r.err, "nope.json"));
  fx_run_result_free(&r);
}

static void get_reads_and_explains(void **state) {
  (void)state;
  fx_run_result r = run("get", "--config", config, "--summary", "Patient/12724065", NULL);
  assert_int_equal(r.exit_code, 0);
  assert_string_equal(r.out, "Patient/12724065: SMART, WILMA, born 1990-09-15, active\n");
  fx_run_result_free(&r);

  r = run("get", "--config", config, "Patient/12724065", NULL, NULL);
  assert_int_equal(r.exit_code, 0);
  json_t *p = json_loads(r.out, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(p, "resourceType")), "Patient");
  json_decref(p);
  fx_run_result_free(&r);

  /* A search without its required parameter: Cerner's 400, and what to do. */
  r = run("get", "--config", config, "Patient", NULL, NULL);
  assert_int_equal(r.exit_code, 1);
  assert_non_null(strstr(r.err, "HTTP 400"));
  assert_non_null(strstr(r.err, "at least one of _id, identifier"));
  assert_non_null(strstr(r.err, "search restriction"));
  assert_non_null(strstr(r.err, "patient="));
  assert_null(strchr(strchr(r.err, '\n') + 1, '\n')); /* one line */
  fx_run_result_free(&r);

  r = run("get", "--config", config, "Patient/1", NULL, NULL);
  assert_int_equal(r.exit_code, 1);
  assert_non_null(strstr(r.err, "HTTP 404"));
  fx_run_result_free(&r);

  /* Never send the token elsewhere, even when asked to. */
  r = run("get", "--config", config, "http://127.0.0.1:1/r4/" TENANT "/Patient/12724065", NULL,
          NULL);
  assert_int_equal(r.exit_code, 1);
  assert_non_null(strstr(r.err, "outside the tenant's FHIR base"));
  fx_run_result_free(&r);
}

/* fhirx scopes prints what each tenant extracts: its resources (or the
 * profile's default query set), plus the reference types only for a tenant
 * that follows references; tenants[].scopes overrides. */
static void scopes_for_code_console(void **state) {
  (void)state;
  char cfg[600];
  snprintf(cfg, sizeof cfg, "%s/scopes.json", dir);
  fx_test_write_file(cfg, "{\"tenants\":[{\"id\":\"a\",\"fhir_base\":\"https://x/r4/a\","
                          "\"client_id\":\"c\"},{\"id\":\"b\",\"fhir_base\":\"https://x/r4/b\","
                          "\"client_id\":\"c\",\"smart_version\":\"v2\",\"resources\":"
                          "[\"Patient\"]},{\"id\":\"f\",\"fhir_base\":\"https://x/r4/f\","
                          "\"client_id\":\"c\",\"follow_references\":true},"
                          "{\"id\":\"g\",\"fhir_base\":\"https://x/r4/g\",\"client_id\":\"c\","
                          "\"profile\":\"generic\",\"resources\":[\"Patient\",\"Claim\","
                          "\"ExplanationOfBenefit\",\"ImagingStudy\"]},"
                          "{\"id\":\"s\",\"fhir_base\":\"https://x/r4/s\",\"client_id\":\"c\","
                          "\"scopes\":[\"system/Patient.read\"]}],\"keys\":[{\"path\":\"key.pem\"}]}");
  const char *query_set[] = {"AllergyIntolerance", "CarePlan", "CareTeam", "Condition",
                             "Coverage", "Device", "DiagnosticReport", "DocumentReference",
                             "Encounter", "Goal", "Immunization", "MedicationRequest",
                             "Observation", "Patient", "Procedure", "RelatedPerson",
                             "ServiceRequest"};
  const char *followed[] = {"AllergyIntolerance", "Binary", "CarePlan", "CareTeam", "Condition",
                            "Coverage", "Device", "DiagnosticReport", "DocumentReference",
                            "Encounter", "Goal", "Immunization", "Location", "MedicationRequest",
                            "Observation", "Organization", "Patient", "Practitioner", "Procedure",
                            "RelatedPerson", "ServiceRequest"};
  char expect[2048] = "";
  for (size_t i = 0; i < sizeof query_set / sizeof query_set[0]; i++)
    snprintf(expect + strlen(expect), sizeof expect - strlen(expect), "system/%s.read\n",
             query_set[i]);
  fx_run_result r = run("scopes", "--config", cfg, "--tenant", "a", NULL);
  assert_int_equal(r.exit_code, 0);
  assert_string_equal(r.out, expect); /* no Binary, Location, ...: no references followed */
  fx_run_result_free(&r);
  expect[0] = '\0';
  for (size_t i = 0; i < sizeof followed / sizeof followed[0]; i++)
    snprintf(expect + strlen(expect), sizeof expect - strlen(expect), "system/%s.read\n",
             followed[i]);
  r = run("scopes", "--config", cfg, "--tenant", "f", NULL);
  assert_int_equal(r.exit_code, 0);
  assert_string_equal(r.out, expect);
  fx_run_result_free(&r);
  r = run("scopes", "--config", cfg, "--tenant", "b", NULL);
  assert_int_equal(r.exit_code, 0);
  assert_string_equal(r.out, "system/Patient.rs\n");
  fx_run_result_free(&r);
  r = run("scopes", "--config", cfg, "--tenant", "g", NULL);
  assert_int_equal(r.exit_code, 0);
  assert_string_equal(r.out, "system/Claim.read\nsystem/ExplanationOfBenefit.read\n"
                             "system/ImagingStudy.read\nsystem/Patient.read\n");
  fx_run_result_free(&r);
  r = run("scopes", "--config", cfg, "--tenant", "s", NULL);
  assert_int_equal(r.exit_code, 0);
  assert_string_equal(r.out, "system/Patient.read\n");
  fx_run_result_free(&r);
}

static void refuses_bad_setup(void **state) {
  (void)state;
  /* A key readable by others stops everything, naming the file and the fix. */
  chmod(key, 0644);
  fx_run_result r = run("config", "check", "--config", config, NULL, NULL);
  chmod(key, 0600);
  assert_int_equal(r.exit_code, 1);
  assert_non_null(strstr(r.err, key));
  assert_non_null(strstr(r.err, "chmod 600"));
  fx_run_result_free(&r);
  r = run("config", "check", "--config", config, NULL, NULL);
  assert_int_equal(r.exit_code, 0);
  fx_run_result_free(&r);

  char bad[600];
  snprintf(bad, sizeof bad, "%s/bad.json", dir);
  fx_test_write_file(bad, "{\"tenants\":[{\"id\":\"a\",\"fhir_base\":\"http://x/r4/a\","
                          "\"client_id\":\"c\"}],\"keys\":[{\"path\":\"key.pem\"}]}");
  r = run("token", "--config", bad, NULL, NULL, NULL);
  assert_int_equal(r.exit_code, 1);
  assert_non_null(strstr(r.err, "tenants[0].fhir_base"));
  assert_non_null(strstr(r.err, "https"));
  fx_run_result_free(&r);

  r = run("keys", "generate", "--alg", "ES384", "--out", key);
  assert_int_equal(r.exit_code, 1);
  assert_non_null(strstr(r.err, "refusing to overwrite"));
  fx_run_result_free(&r);

  r = run("token", NULL, NULL, NULL, NULL, NULL);
  assert_int_equal(r.exit_code, 2);
  fx_run_result_free(&r);
  r = run("frobnicate", NULL, NULL, NULL, NULL, NULL);
  assert_int_equal(r.exit_code, 2);
  fx_run_result_free(&r);
  r = run("keys", "generate", "--alg", "HS256", "--out", "/tmp/x");
  assert_int_equal(r.exit_code, 2);
  fx_run_result_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(token_prints_grant_not_secret),
                                     cmocka_unit_test(config_from_environment),
                                     cmocka_unit_test(get_reads_and_explains),
                                     cmocka_unit_test(scopes_for_code_console),
                                     cmocka_unit_test(refuses_bad_setup)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
