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
  /* related-person.md: a search by patient must carry -relationship-level=Patient. */
  assert_string_equal(p->types[idx("RelatedPerson")].search,
                      "patient={patient}&-relationship-level=Patient");
  /* Every attachment form by default. */
  assert_null(p->types[idx("Binary")].content_types);
  assert_true(fx_profile_wants_attachment(p, "text/html"));
  /* The 10 types Cerner documents _lastUpdated for, and no other. */
  static const char *const incremental[] = {
      "AllergyIntolerance", "Condition",         "DiagnosticReport", "DocumentReference",
      "Encounter",          "Immunization",      "MedicationRequest", "Observation",
      "Procedure",          "ServiceRequest"};
  uint32_t inc = 0, want = 0;
  for (int i = 0; i < FX_PROFILE_TYPES; i++)
    if (p->types[i].incremental) inc |= FX_TYPE_BIT(i);
  for (size_t i = 0; i < sizeof incremental / sizeof *incremental; i++)
    want |= FX_TYPE_BIT(idx(incremental[i]));
  assert_int_equal(inc, want);
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
  expect_bad("{\"name\":\"x\",\"types\":{\"Observation\":{\"fetch\":\"search\",\"search\":"
             "\"patient={patient}\",\"content_types\":[\"application/pdf\"]}}}",
             "types.Observation.content_types: only Binary");
  expect_bad("{\"name\":\"x\",\"types\":{\"Binary\":{\"fetch\":\"reference\","
             "\"content_types\":[]}}}",
             "types.Binary.content_types");
  expect_bad("{\"name\":\"x\",\"types\":{\"Binary\":{\"fetch\":\"reference\","
             "\"content_types\":[\"application/pdf;charset=utf-8\"]}}}",
             "types.Binary.content_types[0]");
  expect_bad("{\"name\":\"x\",\"types\":{\"Binary\":{\"fetch\":\"reference\","
             "\"content_types\":[\"pdf\"]}}}",
             "types.Binary.content_types[0]");
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

static void collect_url(void *arg, const char *url) { json_array_append_new(arg, json_string(url)); }

/* Which attachments become Binary fetches: every presentedForm of a
 * DiagnosticReport (Cerner sends 2-3), DocumentReference contents, exactly as
 * given, none with inline data, and only the forms the profile lists. */
static void attachments_the_profile_wants(void **state) {
  (void)state;
  const char *base = "https://fhir-ehr.cerner.com/r4/t/Binary/";
  json_t *dr = json_pack(
      "{s:s, s:s, s:[{s:s, s:s+}, {s:s, s:s+}, {s:s, s:s+}, {s:s, s:s, s:s}]}", "resourceType",
      "DiagnosticReport", "id", "196151517", "presentedForm", "contentType", "application/pdf",
      "url", base, "XR-196151517", "contentType", "application/xml", "url", base, "R-196151517",
      "contentType", "text/html;charset=utf-8", "url", base, "TR-196151517", "contentType",
      "application/pdf", "url", "http://snomed.info/sct", "data", "JVBERi0x");
  json_t *doc = json_pack("{s:s, s:[{s:{s:s, s:s+}}, {s:{s:s}}]}", "resourceType",
                          "DocumentReference", "content", "attachment", "contentType",
                          "application/pdf", "url", base, "XR-198381924", "attachment",
                          "contentType", "application/pdf");
  json_t *obs = json_pack("{s:s, s:[{s:s}]}", "resourceType", "Observation", "presentedForm",
                          "url", "https://x/Binary/1");
  fx_profile *all, *pdf;
  fx_err err = {0};
  assert_int_equal(fx_profile_load("cerner", &all, &err), 0);
  assert_int_equal(
      fx_profile_parse("{\"name\":\"pdf\",\"types\":{\"Binary\":{\"fetch\":\"reference\","
                       "\"content_types\":[\"Application/PDF\",\"text/html\"]}}}",
                       "pdf", &pdf, &err),
      0);
  json_t *got = json_array();
  fx_profile_attachments(all, dr, collect_url, got);
  assert_int_equal(json_array_size(got), 3); /* the inline form is not fetched */
  assert_string_equal(json_string_value(json_array_get(got, 0)),
                      "https://fhir-ehr.cerner.com/r4/t/Binary/XR-196151517");
  assert_string_equal(json_string_value(json_array_get(got, 1)),
                      "https://fhir-ehr.cerner.com/r4/t/Binary/R-196151517");
  json_array_clear(got);
  fx_profile_attachments(pdf, dr, collect_url, got);
  assert_int_equal(json_array_size(got), 2); /* PDF and HTML (parameters ignored), not XML */
  assert_string_equal(json_string_value(json_array_get(got, 1)),
                      "https://fhir-ehr.cerner.com/r4/t/Binary/TR-196151517");
  json_array_clear(got);
  fx_profile_attachments(pdf, doc, collect_url, got);
  assert_int_equal(json_array_size(got), 1); /* the second content has no url */
  json_array_clear(got);
  fx_profile_attachments(all, obs, collect_url, got);
  assert_int_equal(json_array_size(got), 0);
  assert_false(fx_profile_wants_attachment(pdf, "application/xml"));
  assert_true(fx_profile_wants_attachment(pdf, "APPLICATION/PDF ; charset=utf-8"));
  assert_true(fx_profile_wants_attachment(pdf, NULL)); /* cannot be judged: fetched */
  json_decref(got);
  json_decref(dr);
  json_decref(doc);
  json_decref(obs);
  fx_profile_free(all);
  fx_profile_free(pdf);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(builtin_cerner),
                                     cmocka_unit_test(rejects_bad_profiles),
                                     cmocka_unit_test(tenant_scopes_follow_the_profile),
                                     cmocka_unit_test(attachments_the_profile_wants)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
