#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "worker/profile.h"
#include "worker/resources.h"

static int idx(const char *t) { return fx_resource_index(t); }

static void builtin_cerner(void **state) {
  (void)state;
  fx_profile *p;
  fx_err err = {0};
  assert_int_equal(fx_profile_load("cerner", &p, &err), 0);
  assert_string_equal(p->name, "cerner");
  assert_int_equal(p->types[idx("Patient")].mode, FX_FETCH_READ);
  assert_int_equal(p->types[idx("Observation")].mode, FX_FETCH_SEARCH);
  assert_int_equal(p->types[idx("Observation")].count, 200);
  assert_true(p->types[idx("Observation")].incremental);
  assert_string_equal(p->types[idx("CarePlan")].search, "patient={patient}&category=assess-plan");
  assert_false(p->types[idx("CarePlan")].incremental);
  assert_int_equal(p->types[idx("Practitioner")].mode, FX_FETCH_REFERENCE);
  assert_string_equal(p->types[idx("Binary")].accept, "application/fhir+json");
  uint32_t refs = FX_TYPE_BIT(idx("Practitioner")) | FX_TYPE_BIT(idx("Organization")) |
                  FX_TYPE_BIT(idx("Location")) | FX_TYPE_BIT(idx("Binary")) |
                  FX_TYPE_BIT(idx("RelatedPerson"));
  assert_int_equal(p->follow, refs);
  assert_int_equal(p->depth, 1);
  /* 17 types per patient, 4 only through references: 21 in all. */
  assert_int_equal(__builtin_popcount(fx_profile_patient_types(p)), 17);
  for (int i = 0; i < FX_PROFILE_TYPES; i++) assert_int_not_equal(p->types[i].mode, FX_FETCH_NONE);
  fx_profile_free(p);
}

static void expect_bad(const char *text, const char *needle) {
  fx_profile *p = NULL;
  fx_err err = {0};
  if (fx_profile_parse(text, "profile test.json", &p, &err) == 0) fail_msg("accepted: %s", text);
  if (!strstr(err.msg, needle)) fail_msg("'%s' not in '%s'", needle, err.msg);
  assert_non_null(strstr(err.msg, "profile test.json"));
}

static void rejects_bad_profiles(void **state) {
  (void)state;
  expect_bad("{\"name\":\"x\",\"types\":{\"Medication\":{\"fetch\":\"read\"}}}", "types.Medication");
  expect_bad("{\"name\":\"x\",\"types\":{\"Observation\":{\"fetch\":\"search\",\"search\":\"category=x\"}}}",
             "types.Observation.search");
  expect_bad("{\"name\":\"x\",\"types\":{\"Observation\":{\"fetch\":\"grab\"}}}", "types.Observation.fetch");
  expect_bad("{\"name\":\"x\",\"types\":{\"Patient\":{\"fetch\":\"read\",\"colour\":1}}}",
             "types.Patient.colour");
  expect_bad("{\"name\":\"x\",\"types\":{\"Observation\":{\"fetch\":\"search\",\"search\":"
             "\"patient={patient}\",\"count\":0}}}",
             "types.Observation.count");
  expect_bad("{\"name\":\"x\",\"types\":{},\"references\":{\"follow\":[\"Pet\"]}}", "references.follow");
  expect_bad("{\"types\":{}}", "name");
  expect_bad("{\"name\":\"x\",\"types\":{},\"extra\":1}", "extra");
  expect_bad("not json", "line 1");
  fx_profile *p = NULL;
  fx_err err = {0};
  assert_int_not_equal(fx_profile_load("/nonexistent/profile.json", &p, &err), 0);
  assert_non_null(strstr(err.msg, "neither a built-in profile"));
}

static void tenant_scopes_follow_the_profile(void **state) {
  (void)state;
  fx_profile *p;
  fx_err err = {0};
  assert_int_equal(fx_profile_parse("{\"name\":\"small\",\"types\":{\"Patient\":{\"fetch\":\"read\"},"
                                    "\"Condition\":{\"fetch\":\"search\",\"search\":\"patient={patient}\"},"
                                    "\"Practitioner\":{\"fetch\":\"reference\"}},"
                                    "\"references\":{\"follow\":[\"Practitioner\"],\"depth\":1}}",
                                    "small", &p, &err),
                   0);
  fx_tenant_conf t = {.id = "t", .smart_version = FX_SMART_V2};
  char *scope = fx_tenant_scope(&t, p);
  assert_string_equal(scope, "system/Condition.rs system/Patient.rs system/Practitioner.rs");
  free(scope);
  p->depth = 0; /* not following references: their scopes are not needed */
  scope = fx_tenant_scope(&t, p);
  assert_string_equal(scope, "system/Condition.rs system/Patient.rs");
  free(scope);
  fx_profile_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(builtin_cerner),
                                     cmocka_unit_test(rejects_bad_profiles),
                                     cmocka_unit_test(tenant_scopes_follow_the_profile)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
