/* The one resource-id rule (worker/model/resources.h) and the keys built on it:
 * real servers' ids pass (Cerner's '_', UUIDs, ids longer than FHIR's 64),
 * what would make a key ambiguous or a URL path mean something else does
 * not, reasons never quote the id, and keys are built from lengths (two long
 * ids sharing a prefix keep distinct keys). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/refs.h"
#include "worker/model/resources.h"

static int ok(const char *s) { return fx_fhir_id_ok(s, strlen(s)); }

static void accepts_real_ids(void **state) {
  (void)state;
  /* Oracle's care-team.md, related-person.md, binary.md, provenance examples. */
  static const char *const real[] = {
      "CARE_TEAM-119078440-34768489-17490349-4048128-0-22554767",
      "LIFETIME_PROVIDER-4169494-0-3038500-0-0-0",
      "INT.cteam-LIFETIME_PROVIDER-4169494-0-4105597-0-0-0",
      "12724066-12742397",
      "E-12457994-97697434",
      "XR-197198634",
      "TR-21961261",
      "489580643.0.-4.prsnl",
      "L-197392513.2",
      "087d18d8-fd94-4c4f-9058-278ee7985ae7", /* UUIDs (the CCD Binary, most servers) */
      "Tbt3KuCY0B5PSrJvCu2j-PlK.aiHsu2xUjUM8bWpetXoB", /* Epic-style */
      "a~b",
      "1",
  };
  for (size_t i = 0; i < sizeof real / sizeof *real; i++)
    if (!ok(real[i])) fail_msg("refused a real id: %s", real[i]);
  /* Longer than FHIR's 64, within the bound. */
  char longest[FX_FHIR_ID_MAX + 1];
  memset(longest, '7', FX_FHIR_ID_MAX);
  longest[FX_FHIR_ID_MAX] = '\0';
  assert_true(ok(longest));
  assert_true(ok("..."));  /* three dots is a name, not a dot segment */
  assert_true(ok(".a"));
}

static void refuses_unsafe_ids(void **state) {
  (void)state;
  static const char *const bad[] = {"a/b",   "a b",  "a\tb", "a\nb", "a%2Fb", "a?b",  "a#b",
                                    "a&b",   "a=b",  "a+b",  "a:b",  "a@b",   "\xc3\xa9", ".",
                                    "..",    "a,b",  "a;b",  "a\\b", "a\"b",  "a\x7f"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    if (ok(bad[i])) fail_msg("accepted an unsafe id #%zu", i);
  assert_false(fx_fhir_id_ok("", 0));
  char too_long[FX_FHIR_ID_MAX + 2];
  memset(too_long, 'a', FX_FHIR_ID_MAX + 1);
  too_long[FX_FHIR_ID_MAX + 1] = '\0';
  assert_false(ok(too_long));
  /* Only the n bytes given count: an embedded NUL is a control byte. */
  assert_false(fx_fhir_id_ok("ab\0cd", 5));
  assert_true(fx_fhir_id_ok("ab\0cd", 2));
}

static void reasons_never_quote_the_id(void **state) {
  (void)state;
  char why[128];
  const char *id = "SMITH/JOHN";
  assert_non_null(fx_fhir_id_problem(id, strlen(id), why, sizeof why));
  assert_string_equal(why, "contains '/' at byte 6 of 10");
  assert_null(strstr(why, "SMITH"));
  assert_non_null(fx_fhir_id_problem("ab\ncd", 5, why, sizeof why));
  assert_string_equal(why, "contains byte 0x0a at byte 3 of 5");
  assert_non_null(fx_fhir_id_problem("", 0, why, sizeof why));
  assert_string_equal(why, "is empty");
  char big[300];
  memset(big, 'x', sizeof big);
  assert_non_null(fx_fhir_id_problem(big, sizeof big, why, sizeof why));
  assert_string_equal(why, "is 300 bytes long (at most 256)");
  assert_non_null(fx_fhir_id_problem("..", 2, why, sizeof why));
  assert_non_null(strstr(why, "only dots"));
  assert_null(fx_fhir_id_problem("CARE_TEAM-1", 11, why, sizeof why));

  char msg[200];
  assert_null(fx_resource_key_problem("CareTeam", "CARE_TEAM-1-2", msg, sizeof msg));
  assert_non_null(fx_resource_key_problem("CareTeam", NULL, msg, sizeof msg));
  assert_string_equal(msg, "has no id");
  assert_non_null(fx_resource_key_problem(NULL, "1", msg, sizeof msg));
  assert_string_equal(msg, "has no resourceType");
  assert_non_null(fx_resource_key_problem("Care/Team", "1", msg, sizeof msg));
  assert_non_null(strstr(msg, "not a FHIR type name"));
  assert_non_null(fx_resource_key_problem("Patient", "JOHN DOE 1970", msg, sizeof msg));
  assert_non_null(strstr(msg, "breaks fhirx's id rule"));
  assert_non_null(strstr(msg, "contains byte 0x20 at byte 5 of 13"));
  assert_null(strstr(msg, "JOHN"));
}

/* Keys come from lengths: ids that share a long prefix stay apart, and a
 * 256-byte id is kept whole (a fixed 256-byte buffer used to cut both to the
 * same key, and one resource vanished as a "duplicate"). */
static void keys_are_never_cut(void **state) {
  (void)state;
  const char *tenant = "ec2458f2-1e24-41c8-b71b-0e701af7583d";
  char a[FX_FHIR_ID_MAX + 1], b[FX_FHIR_ID_MAX + 1];
  memset(a, 'q', FX_FHIR_ID_MAX);
  memcpy(b, a, FX_FHIR_ID_MAX);
  a[FX_FHIR_ID_MAX] = b[FX_FHIR_ID_MAX] = '\0';
  b[FX_FHIR_ID_MAX - 1] = 'r';
  char *ka = fx_result_key(tenant, "DocumentReference", a);
  char *kb = fx_result_key(tenant, "DocumentReference", b);
  assert_non_null(ka);
  assert_non_null(kb);
  assert_int_equal(strlen(ka), strlen(tenant) + 1 + strlen("DocumentReference") + 1 + FX_FHIR_ID_MAX);
  assert_string_not_equal(ka, kb);
  assert_int_equal(strncmp(ka, tenant, strlen(tenant)), 0);
  assert_string_equal(ka + strlen(ka) - FX_FHIR_ID_MAX, a);
  free(ka);
  free(kb);
  char *k = fx_result_key("t", "CareTeam", "LIFETIME_PROVIDER-4169494-0-3038500-0-0-0");
  assert_string_equal(k, "t/CareTeam/LIFETIME_PROVIDER-4169494-0-3038500-0-0-0");
  free(k);
}

/* References: the same rule, and a reference key always fits FX_REF_KEY_SIZE. */
static void references_follow_the_rule(void **state) {
  (void)state;
  const char *base = "https://fhir-ehr.cerner.com/r4/ec2458f2";
  char key[FX_REF_KEY_SIZE], ref[FX_REF_KEY_SIZE + 64];
  int idx = -1;
  char id[FX_FHIR_ID_MAX + 2];
  memset(id, '5', sizeof id);
  id[FX_FHIR_ID_MAX] = '\0';
  snprintf(ref, sizeof ref, "ServiceRequest/%s", id);
  assert_int_equal(fx_ref_parse(ref, base, key, sizeof key, &idx), FX_REF_LOCAL);
  assert_string_equal(key, ref);
  id[FX_FHIR_ID_MAX] = '5';
  id[FX_FHIR_ID_MAX + 1] = '\0';
  snprintf(ref, sizeof ref, "ServiceRequest/%s", id);
  assert_int_equal(fx_ref_parse(ref, base, key, sizeof key, &idx), FX_REF_INVALID);
  assert_int_equal(idx, fx_resource_index("ServiceRequest"));
  /* An attachment URL: Cerner's Binary ids, and a query kept out of the key. */
  assert_int_equal(fx_ref_parse("https://fhir-ehr.cerner.com/r4/ec2458f2/Binary/XR-197198634",
                                base, key, sizeof key, &idx),
                   FX_REF_LOCAL);
  assert_string_equal(key, "Binary/XR-197198634");
  assert_int_equal(fx_ref_parse("RelatedPerson/12724066-12742397", base, key, sizeof key, &idx),
                   FX_REF_LOCAL);
  assert_int_equal(fx_ref_parse("Binary/$autogen-ccd-if?patient=1", base, key, sizeof key, &idx),
                   FX_REF_INVALID);
  assert_int_equal(fx_ref_parse("Practitioner/a b", base, key, sizeof key, &idx), FX_REF_INVALID);
  /* A buffer smaller than the key: refused, never cut. */
  char small[8];
  assert_int_equal(fx_ref_parse("Practitioner/4000001", base, small, sizeof small, &idx),
                   FX_REF_NONE);
}

/* Issue 13 items 5 and 8: an absolute reference against a malformed base
 * (curl reads "https:/h/r4/t1" as a URL; the raw string has no "://") used to
 * dereference NULL; it is foreign now, as is a reference whose path decodes
 * into another tenant. Config refuses such a base before it gets here
 * (test_config urls_are_absolute_and_clean). */
static void references_against_bad_bases_and_encoded_paths(void **state) {
  (void)state;
  char key[FX_REF_KEY_SIZE];
  int idx = -1;
  assert_int_equal(fx_ref_parse("https://fhir-ehr.cerner.com/r4/t1/Patient/1",
                                "https:/fhir-ehr.cerner.com/r4/t1", key, sizeof key, &idx),
                   FX_REF_FOREIGN);
  /* Not absolute (no "://"), not "Type/id": not a reference fhirx reads. */
  assert_int_equal(fx_ref_parse("https:/fhir-ehr.cerner.com/r4/t1/Patient/1",
                                "https:/fhir-ehr.cerner.com/r4/t1", key, sizeof key, &idx),
                   FX_REF_NONE);
  assert_int_equal(fx_ref_parse("https://fhir-ehr.cerner.com/r4/t1/Patient/1",
                                "https:///fhir-ehr.cerner.com/r4/t1", key, sizeof key, &idx),
                   FX_REF_FOREIGN);
  const char *base = "https://fhir-ehr.cerner.com/r4/t1";
  const char *bad[] = {"https://fhir-ehr.cerner.com/r4/t1/%2e%2e/t2/Patient/1",
                       "https://fhir-ehr.cerner.com/r4/t1/.%2E/t2/Patient/1",
                       "https://fhir-ehr.cerner.com/r4/t1/..%2Ft2/Patient/1",
                       "https://fhir-ehr.cerner.com/r4/t1/..%5ct2/Patient/1",
                       "https://fhir-ehr.cerner.com/r4/t1/..\\t2/Patient/1",
                       "https://fhir-ehr.cerner.com/r4/t1/%252e%252e/t2/Patient/1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (fx_ref_parse(bad[i], base, key, sizeof key, &idx) != FX_REF_FOREIGN)
      fail_msg("not foreign: %s", bad[i]);
}

/* A job's reference sets stay bounded (issue 13): foreign and invalid
 * references are reported once per URL up to the failure cap, then only
 * counted (their URLs are not remembered); followed entities past
 * max_references_per_job are neither fetched nor remembered. */
static void reference_sets_are_bounded(void **state) {
  (void)state;
  const char *base = "https://fhir-ehr.cerner.com/r4/ec2458f2";
  fx_profile p;
  memset(&p, 0, sizeof p);
  fx_types_add(&p.follow, fx_resource_index("Practitioner"));
  fx_refs r;
  assert_int_equal(fx_refs_init(&r, 3, 2), 0);
  fx_ref_found found;
  char ref[200];
  assert_int_equal(fx_refs_consider(&r, &p, base, NULL, "https://evil.example/r4/Practitioner/0",
                                    -1, 0, &found),
                   FX_REFD_FOREIGN);
  assert_int_equal(fx_refs_consider(&r, &p, base, NULL, "https://evil.example/r4/Practitioner/0",
                                    -1, 0, &found),
                   FX_REFD_SKIP); /* reported once */
  assert_int_equal(fx_refs_consider(&r, &p, base, NULL, "Practitioner/a b", -1, 0, &found),
                   FX_REFD_INVALID);
  for (int i = 1; i <= 1000; i++) {
    snprintf(ref, sizeof ref, "https://evil.example/r4/Practitioner/%d", i);
    assert_int_equal(fx_refs_consider(&r, &p, base, NULL, ref, -1, 0, &found),
                     FX_REFD_UNRECORDED);
  }
  assert_int_equal(fx_refs_consider(&r, &p, base, NULL, "Practitioner/c d", -1, 0, &found),
                   FX_REFD_UNRECORDED);
  assert_int_equal(r.unrecorded, 1001);
  assert_int_equal(fx_strset_size(r.asked), 2);
  for (int i = 0; i < 1000; i++) {
    snprintf(ref, sizeof ref, "Practitioner/%d", i);
    fx_ref_decision d = fx_refs_consider(&r, &p, base, NULL, ref, -1, 0, &found);
    assert_int_equal(d, i < 3 ? FX_REFD_FOLLOW : i == 3 ? FX_REFD_CAPPED : FX_REFD_SKIP);
  }
  assert_int_equal(fx_refs_consider(&r, &p, base, NULL, "Practitioner/1", -1, 0, &found),
                   FX_REFD_SKIP); /* asked for already */
  assert_true(fx_strset_size(r.asked) <= 2 + 3);
  fx_refs_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(accepts_real_ids),
      cmocka_unit_test(refuses_unsafe_ids),
      cmocka_unit_test(reasons_never_quote_the_id),
      cmocka_unit_test(keys_are_never_cut),
      cmocka_unit_test(references_follow_the_rule),
      cmocka_unit_test(references_against_bad_bases_and_encoded_paths),
      cmocka_unit_test(reference_sets_are_bounded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
