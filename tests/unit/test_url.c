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
  /* The scheme is compared on its own, not through its default port: plain
   * http to port 443 would carry the token in clear text. */
  assert_false(fx_url_within("http://fhir-ehr.cerner.com:443/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com:80/r4/t1/Patient/1",
                             "http://fhir-ehr.cerner.com/r4/t1"));
  assert_true(fx_url_within("HTTPS://fhir-ehr.cerner.com/r4/t1/Patient/1", base));
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

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(within), cmocka_unit_test(redact)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
