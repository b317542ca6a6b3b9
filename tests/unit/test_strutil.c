#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/strutil.h"

static void memstr(void **state) {
  (void)state;
  char raw[4] = {'a', 'b', 'c', 'd'}; /* no terminator */
  char *s = fx_memstr(raw, 3);
  assert_string_equal(s, "abc");
  free(s);
  assert_null(fx_memstr(NULL, 3));
}

static void json_depth(void **state) {
  (void)state;
  const char *ok = "{\"a\":[{\"b\":[1,2,{\"c\":3}]}]}"; /* depth 5 */
  assert_true(fx_json_depth_ok(ok, strlen(ok), 5));
  assert_false(fx_json_depth_ok(ok, strlen(ok), 4));
  /* Brackets inside strings, escaped quotes included, do not count. */
  const char *str = "{\"a\":\"[[[[\\\"]]]]{{{{\"}";
  assert_true(fx_json_depth_ok(str, strlen(str), 1));
  size_t n = 200000;
  char *deep = malloc(n);
  memset(deep, '[', n / 2);
  memset(deep + n / 2, ']', n / 2);
  assert_false(fx_json_depth_ok(deep, n, 64));
  assert_true(fx_json_depth_ok(deep, n, 100000));
  free(deep);
}

static void redact_secrets(void **state) {
  (void)state;
  static const struct {
    const char *in, *want;
  } cases[] = {
      {"request rejected; it carried Authorization: Bearer gOQkR5WsCcOkvict6RsNfCo3OSO6xn1s",
       "request rejected; it carried Authorization: [redacted]"},
      {"BEARER abc.def-ghi, then more", "[redacted], then more"},
      {"assertion eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl rejected",
       "assertion [redacted] rejected"},
      {"cannot validate grant_type=client_credentials&client_assertion=eyJh.eyJp.sig&x=1",
       "cannot validate grant_type=client_credentials&client_assertion=[redacted]&x=1"},
      {"{\"access_token\":\"s3cr3t-t0ken\",\"token_type\":\"x\"}",
       "{\"access_token\":\"[redacted]\",\"token_type\":\"x\"}"},
      /* Words that only look like it stay. */
      {"the bearer of bad news; eyJust a word; access_token missing",
       "the bearer of bad news; eyJust a word; access_token missing"},
      {"Patient/12724065 was not found", "Patient/12724065 was not found"},
      {"", ""},
  };
  char out[256];
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    fx_redact_secrets(cases[i].in, out, sizeof out);
    assert_string_equal(out, cases[i].want);
  }
  fx_redact_secrets(NULL, out, sizeof out);
  assert_string_equal(out, "");
  fx_redact_secrets("Bearer abcdefgh and more text", out, 8); /* cut, still terminated */
  assert_string_equal(out, "[redact");
}

static void scrub_secret(void **state) {
  (void)state;
  char buf[128] = "token XarVlPj-xYzz1234567 rejected; XarVlPj-xYzz1234567 again";
  size_t n = fx_scrub_secret(buf, strlen(buf), sizeof buf, "XarVlPj-xYzz1234567");
  assert_string_equal(buf, "token [redacted] rejected; [redacted] again");
  assert_int_equal(n, strlen(buf));
  char short_secret[] = "a b a";
  assert_int_equal(fx_scrub_secret(short_secret, 5, 6, "a"), 5); /* under 8 bytes: untouched */
  assert_string_equal(short_secret, "a b a");
  assert_int_equal(fx_scrub_secret(NULL, 0, 0, "XarVlPj-xYzz1234567"), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(memstr), cmocka_unit_test(json_depth),
                                     cmocka_unit_test(redact_secrets),
                                     cmocka_unit_test(scrub_secret)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
