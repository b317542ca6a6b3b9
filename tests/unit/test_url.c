#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/url.h"

static void within(void **state) {
  (void)state;
  const char *base = "https://fhir-ehr.cerner.com/r4/t1";
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Patient/1", base));
  assert_true(fx_url_within("https://FHIR-EHR.cerner.com:443/r4/t1/Patient?_id=1", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/", "https://fhir-ehr.cerner.com/r4/t1/"));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t10/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t2/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/../t2/Patient/1", base));
  assert_false(fx_url_within("http://fhir-ehr.cerner.com/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com:8443/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://evil.example/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com.evil.example/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://user@evil.example/r4/t1", base));
  assert_false(fx_url_within("Patient/1", base));
  assert_false(fx_url_within("", base));
}

static void redact(void **state) {
  (void)state;
  char out[256];
  fx_url_redact("https://h/r4/t1/Observation?patient=12724065&_count=50#x", out, sizeof out);
  assert_string_equal(out, "https://h/r4/t1/Observation?patient=&_count=");
  fx_url_redact("https://h/r4/t1/Patient/1", out, sizeof out);
  assert_string_equal(out, "https://h/r4/t1/Patient/1");
  fx_url_redact("https://h/r4/t1?-pageContext=secret-cursor", out, sizeof out);
  assert_null(strstr(out, "secret"));
  fx_url_redact("https://h/r4/t1/Patient?_id=1", out, 12);
  assert_int_equal(strlen(out), 11); /* truncated, still terminated */
}

/* A redirect is named (without query values) and said not to be followed;
 * any other status gives nothing. */
static void redirect_note(void **state) {
  (void)state;
  char out[400];
  fx_url_redirect_note(302, "https://elsewhere.example/r4/Patient?patient=123&_count=5", out,
                       sizeof out);
  assert_non_null(strstr(out, "a redirect to https://elsewhere.example/r4/Patient?patient=&_count=,"));
  assert_non_null(strstr(out, "not followed"));
  assert_null(strstr(out, "123"));
  fx_url_redirect_note(307, NULL, out, sizeof out);
  assert_int_equal(strncmp(out, "a redirect, not followed", 24), 0);
  fx_url_redirect_note(299, "https://x.example/", out, sizeof out);
  assert_string_equal(out, "");
  fx_url_redirect_note(400, "https://x.example/", out, sizeof out);
  assert_string_equal(out, "");
  fx_url_redirect_note(399, "https://x.example/", out, sizeof out);
  assert_non_null(strstr(out, "https://x.example/"));
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(within), cmocka_unit_test(redact),
                                     cmocka_unit_test(redirect_note)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
