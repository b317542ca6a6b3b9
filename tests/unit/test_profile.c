#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/profile.h"
#include "worker/model/resources.h"

static int idx(const char *t) { return fx_resource_index(t); }

/* The set of the NULL-terminated type names. */
static fx_types set_of(const char *first, ...) {
  fx_types s = FX_TYPES_NONE;
  va_list ap;
  va_start(ap, first);
  for (const char *t = first; t; t = va_arg(ap, const char *)) {
    if (idx(t) < 0) fail_msg("not a type: %s", t);
    fx_types_add(&s, idx(t));
  }
  va_end(ap);
  return s;
}

static void joined(fx_types s, const char *want) {
  char got[4096];
  assert_true(fx_types_join(s, ",", got, sizeof got) >= 0);
  assert_string_equal(got, want);
}

/* The registry is R4's list, sorted (lookups are a binary search and every
 * walk is alphabetical), without the types that are never extracted data. */
static void type_registry(void **state) {
  (void)state;
  assert_int_equal(FX_NTYPES, 143);
  for (int i = 1; i < FX_NTYPES; i++)
    if (strcmp(fx_type_names[i - 1], fx_type_names[i]) >= 0)
      fail_msg("not sorted: %s, %s", fx_type_names[i - 1], fx_type_names[i]);
  for (int i = 0; i < FX_NTYPES; i++) assert_int_equal(idx(fx_type_names[i]), i);
  static const char *const r4[] = {"Account", "Claim", "ExplanationOfBenefit", "ImagingStudy",
                                   "Provenance", "VisionPrescription", "MedicinalProduct",
                                   "MedicinalProductUndesirableEffect", "Specimen",
                                   "SpecimenDefinition"};
  for (size_t i = 0; i < sizeof r4 / sizeof r4[0]; i++) assert_true(fx_resource_type_known(r4[i]));
  static const char *const not[] = {"Bundle", "OperationOutcome", "Parameters", "observation",
                                    "Observation ", "", "DomainResource", "Pet"};
  for (size_t i = 0; i < sizeof not / sizeof not[0]; i++) assert_int_equal(idx(not[i]), -1);
  assert_int_equal(idx(NULL), -1);

  /* Sets reach every index, also past the first 64-bit word. */
  fx_types s = FX_TYPES_NONE;
  assert_true(fx_types_empty(s));
  fx_types_add(&s, 0);
  fx_types_add(&s, 64);
  fx_types_add(&s, FX_NTYPES - 1);
  fx_types_add(&s, FX_NTYPES); /* out of range: ignored */
  fx_types_add(&s, -1);
  assert_int_equal(fx_types_count(s), 3);
  assert_true(fx_types_has(s, 64) && fx_types_has(s, FX_NTYPES - 1) && !fx_types_has(s, 63));
  assert_int_equal(fx_types_next(s, 1), 64);
  assert_int_equal(fx_types_next(s, 65), FX_NTYPES - 1);
  assert_int_equal(fx_types_next(s, FX_NTYPES), -1);
  fx_types_del(&s, 64);
  assert_false(fx_types_has(s, 64));
  fx_types a = set_of("Claim", "Patient", "VisionPrescription", NULL);
  fx_types b = set_of("Patient", "Account", NULL);
  joined(fx_types_or(a, b), "Account,Claim,Patient,VisionPrescription");
  joined(fx_types_and(a, b), "Patient");
  joined(fx_types_minus(a, b), "Claim,VisionPrescription");
  assert_true(fx_types_eq(a, set_of("VisionPrescription", "Claim", "Patient", NULL)));
  assert_false(fx_types_eq(a, b));
  char small[8] = "x";
  assert_int_equal(fx_types_join(a, ",", small, sizeof small), -1);
  assert_string_equal(small, "");
  joined(FX_TYPES_NONE, "");
}

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
  fx_types inc = FX_TYPES_NONE;
  for (int i = 0; i < FX_NTYPES; i++)
    if (p->types[i].incremental) fx_types_add(&inc, i);
  assert_true(fx_types_eq(inc, set_of("AllergyIntolerance", "Condition", "DiagnosticReport",
                                      "DocumentReference", "Encounter", "Immunization",
                                      "MedicationRequest", "Observation", "Procedure",
                                      "ServiceRequest", NULL)));
  assert_true(fx_types_eq(p->follow, set_of("Practitioner", "Organization", "Location", "Binary",
                                             "RelatedPerson", NULL)));
  assert_int_equal(p->depth, 1);
  /* 17 types per patient, all of them by default; 4 only through references. */
  assert_int_equal(fx_types_count(fx_profile_patient_types(p)), 17);
  assert_true(fx_types_eq(fx_profile_default_types(p), fx_profile_patient_types(p)));
  int known = 0;
  for (int i = 0; i < FX_NTYPES; i++) known += p->types[i].mode != FX_FETCH_NONE;
  assert_int_equal(known, 21);
  assert_int_equal(p->types[idx("Claim")].mode, FX_FETCH_NONE);
  /* group-export.md: _type takes exactly these 18 types. */
  joined(p->bulk_types, "AllergyIntolerance,CarePlan,CareTeam,Condition,Device,DiagnosticReport,"
                        "DocumentReference,Encounter,Goal,Immunization,Location,MedicationRequest,"
                        "Observation,Organization,Patient,Practitioner,Procedure,Provenance");
  joined(fx_types_minus(fx_profile_patient_types(p), p->bulk_types),
         "Coverage,RelatedPerson,ServiceRequest");
  joined(p->bulk_not_alone, "Location,Organization,Practitioner,Provenance");
  joined(p->filter_refused_types, "Location,Organization,Patient,Practitioner,Provenance");
  assert_int_equal(p->n_filter_refused_params, 15);
  int patient = 0, lastupdated = 0;
  for (size_t i = 0; i < p->n_filter_refused_params; i++) {
    patient |= strcmp(p->filter_refused_params[i], "patient") == 0;
    lastupdated |= strcmp(p->filter_refused_params[i], "_lastUpdated") == 0;
  }
  assert_true(patient && lastupdated);
  assert_true(p->filter_one_per_type);
  fx_profile_free(p);
}

/* A standard R4 server: US Core by default, any other R4 type when named. */
static void builtin_generic(void **state) {
  (void)state;
  fx_profile *p;
  fx_err err = {0};
  assert_int_equal(fx_profile_load("generic", &p, &err), 0);
  assert_string_equal(p->name, "generic");
  const fx_type_rule *claim = &p->types[idx("Claim")];
  assert_int_equal(claim->mode, FX_FETCH_SEARCH);
  assert_string_equal(claim->search, "patient={patient}");
  assert_true(claim->incremental && claim->optional);
  assert_false(p->types[idx("Observation")].optional);
  assert_int_equal(p->types[idx("Practitioner")].mode, FX_FETCH_REFERENCE);
  assert_int_equal(p->types[idx("Patient")].mode, FX_FETCH_READ);
  fx_types defaults = fx_profile_default_types(p), all = fx_profile_patient_types(p);
  assert_true(fx_types_has(defaults, idx("Observation")) && fx_types_has(defaults, idx("Patient")));
  static const char *const named[] = {"Claim", "ExplanationOfBenefit", "ImagingStudy", "Coverage"};
  for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
    assert_false(fx_types_has(defaults, idx(named[i])));
    assert_true(fx_types_has(all, idx(named[i])));
  }
  assert_int_equal(fx_types_count(p->bulk_types), FX_NTYPES);
  assert_true(fx_types_empty(p->bulk_not_alone) && fx_types_empty(p->filter_refused_types));
  assert_int_equal(p->n_filter_refused_params, 0);
  assert_false(p->filter_one_per_type);
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
  expect_bad("{\"name\":\"x\",\"types\":{\"Pet\":{\"fetch\":\"read\"}}}", "types.Pet");
  expect_bad("{\"name\":\"x\",\"types\":{\"Observation\":{\"fetch\":\"search\",\"search\":\"category=x\"}}}",
             "types.Observation.search");
  expect_bad("{\"name\":\"x\",\"types\":{\"Observation\":{\"fetch\":\"grab\"}}}", "types.Observation.fetch");
  expect_bad("{\"name\":\"x\",\"types\":{\"Patient\":{\"fetch\":\"read\",\"colour\":1}}}",
             "types.Patient.colour");
  expect_bad("{\"name\":\"x\",\"types\":{\"Patient\":{\"fetch\":\"read\",\"optional\":1}}}",
             "types.Patient.optional");
  expect_bad("{\"name\":\"x\",\"types\":{\"*\":{\"fetch\":\"search\",\"search\":\"x=1\"}}}",
             "types.*.search");
  expect_bad("{\"name\":\"x\",\"types\":{\"Observation\":{\"fetch\":\"search\",\"search\":"
             "\"patient={patient}\",\"count\":0}}}",
             "types.Observation.count");
  expect_bad("{\"name\":\"x\",\"types\":{},\"references\":{\"follow\":[\"Pet\"]}}", "references.follow");
  expect_bad("{\"types\":{}}", "name");
  expect_bad("{\"name\":\"x\",\"types\":{},\"extra\":1}", "extra");
  expect_bad("{\"name\":\"x\",\"types\":{},\"bulk\":{}}", "bulk.types: required");
  expect_bad("{\"name\":\"x\",\"types\":{},\"bulk\":{\"types\":\"all\"}}", "bulk.types: expected");
  expect_bad("{\"name\":\"x\",\"types\":{},\"bulk\":{\"types\":[\"Pet\"]}}", "bulk.types[0]: 'Pet'");
  expect_bad("{\"name\":\"x\",\"types\":{},\"bulk\":{\"types\":\"*\",\"not_alone\":\"*\"}}",
             "bulk.not_alone: expected an array");
  expect_bad("{\"name\":\"x\",\"types\":{},\"bulk\":{\"types\":\"*\",\"colour\":1}}", "bulk.colour");
  expect_bad("{\"name\":\"x\",\"types\":{},\"bulk\":{\"types\":\"*\",\"type_filter\":{\"x\":1}}}",
             "bulk.type_filter.x");
  expect_bad("{\"name\":\"x\",\"types\":{},\"bulk\":{\"types\":\"*\",\"type_filter\":"
             "{\"refused_params\":[\"\"]}}}",
             "bulk.type_filter.refused_params[0]");
  expect_bad("{\"name\":\"x\",\"types\":{},\"bulk\":{\"types\":\"*\",\"type_filter\":"
             "{\"one_per_type\":\"yes\"}}}",
             "bulk.type_filter.one_per_type");
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
  assert_non_null(strstr(err.msg, "neither a built-in profile (cerner, generic)"));
}

static void tenant_scopes_follow_what_it_extracts(void **state) {
  (void)state;
  fx_profile *p;
  fx_err err = {0};
  assert_int_equal(fx_profile_parse("{\"name\":\"small\",\"types\":{\"Patient\":{\"fetch\":\"read\"},"
                                    "\"Condition\":{\"fetch\":\"search\",\"search\":\"patient={patient}\"},"
                                    "\"Claim\":{\"fetch\":\"search\",\"search\":\"patient={patient}\","
                                    "\"optional\":true},"
                                    "\"Practitioner\":{\"fetch\":\"reference\"}},"
                                    "\"references\":{\"follow\":[\"Practitioner\"],\"depth\":1},"
                                    "\"bulk\":{\"types\":[\"Patient\",\"Condition\",\"Provenance\"]}}",
                                    "small", &p, &err),
                   0);
  /* The default query set, without the reference types: the tenant does not
   * follow references. An optional type is not asked for unless named. */
  fx_tenant_conf t = {.id = "t", .smart_version = FX_SMART_V2};
  char *scope = fx_tenant_scope(&t, p);
  assert_string_equal(scope, "system/Condition.rs system/Patient.rs");
  free(scope);
  t.follow_references = 1;
  scope = fx_tenant_scope(&t, p);
  assert_string_equal(scope, "system/Condition.rs system/Patient.rs system/Practitioner.rs");
  free(scope);
  p->depth = 0; /* a profile that follows nothing needs no reference scopes */
  scope = fx_tenant_scope(&t, p);
  assert_string_equal(scope, "system/Condition.rs system/Patient.rs");
  free(scope);
  /* tenants[].resources narrows everything, and may name an optional type or
   * one only bulk jobs get. */
  char *names[] = {"Patient", "Claim", "Provenance"};
  t.resources = (fx_strlist){.v = names, .n = 3};
  t.follow_references = 0;
  t.smart_version = FX_SMART_V1;
  scope = fx_tenant_scope(&t, p);
  assert_string_equal(scope, "system/Claim.read system/Patient.read system/Provenance.read");
  free(scope);
  joined(fx_tenant_types(&t, p), "Claim,Patient"); /* what a patient job fetches */
  joined(fx_tenant_extract_types(&t, p), "Claim,Patient,Provenance");
  /* tenants[].scopes is the explicit override. */
  char *explicit[] = {"system/*.read"};
  t.scopes = (fx_strlist){.v = explicit, .n = 1};
  scope = fx_tenant_scope(&t, p);
  assert_string_equal(scope, "system/*.read");
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

/* tenants[].resources must name types the tenant's profile can deliver. */
static void tenant_resources_checked_against_the_profile(void **state) {
  (void)state;
  fx_config *cfg = NULL;
  fx_err err = {0};
  assert_int_equal(fx_config_parse("{\"tenants\":[{\"id\":\"a\",\"fhir_base\":\"https://x/r4/a\","
                                   "\"client_id\":\"c\",\"resources\":[\"Patient\",\"Claim\"]}],"
                                   "\"keys\":[{\"path\":\"k.pem\"}]}",
                                   "/", &cfg, &err),
                   0);
  fx_profile_set ps;
  assert_int_not_equal(fx_profile_set_load(cfg, &ps, &err), 0);
  assert_non_null(strstr(err.msg, "tenants[0].resources[1]: profile cerner neither fetches Claim"));
  fx_config_free(cfg);
  /* The generic profile searches any R4 type; Provenance is a Cerner bulk type. */
  assert_int_equal(fx_config_parse("{\"tenants\":[{\"id\":\"a\",\"fhir_base\":\"https://x/r4/a\","
                                   "\"client_id\":\"c\",\"profile\":\"generic\",\"resources\":"
                                   "[\"Patient\",\"Claim\",\"ImagingStudy\"]},"
                                   "{\"id\":\"b\",\"fhir_base\":\"https://x/r4/b\",\"client_id\":\"c\","
                                   "\"resources\":[\"Patient\",\"Provenance\",\"Location\"]}],"
                                   "\"keys\":[{\"path\":\"k.pem\"}]}",
                                   "/", &cfg, &err),
                   0);
  assert_int_equal(fx_profile_set_load(cfg, &ps, &err), 0);
  char *scope = fx_tenant_scope(&cfg->tenants[0], ps.by_tenant[0]);
  assert_string_equal(scope, "system/Claim.read system/ImagingStudy.read system/Patient.read");
  free(scope);
  scope = fx_tenant_scope(&cfg->tenants[1], ps.by_tenant[1]);
  assert_string_equal(scope, "system/Location.read system/Patient.read system/Provenance.read");
  free(scope);
  fx_profile_set_free(&ps);
  fx_config_free(cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(type_registry),
                                     cmocka_unit_test(builtin_cerner),
                                     cmocka_unit_test(builtin_generic),
                                     cmocka_unit_test(rejects_bad_profiles),
                                     cmocka_unit_test(tenant_scopes_follow_what_it_extracts),
                                     cmocka_unit_test(tenant_resources_checked_against_the_profile),
                                     cmocka_unit_test(attachments_the_profile_wants)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
