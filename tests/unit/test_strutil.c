#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
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


/* "é" is C3 A9, "€" E2 82 AC, "😀" F0 9F 98 80. */
static void utf8_cut(void **state) {
  (void)state;
  const char *s = "ab\xc3\xa9" "c\xe2\x82\xac" "d\xf0\x9f\x98\x80";
  assert_int_equal(fx_utf8_cut(s, 100), strlen(s));
  assert_int_equal(fx_utf8_cut(s, 4), 4);  /* "abé" */
  assert_int_equal(fx_utf8_cut(s, 3), 2);  /* "ab": é would be cut */
  assert_int_equal(fx_utf8_cut(s, 6), 5);  /* "abéc": € would be cut */
  assert_int_equal(fx_utf8_cut(s, 7), 5);
  assert_int_equal(fx_utf8_cut(s, 8), 8);
  assert_int_equal(fx_utf8_cut(s, 12), 9); /* the emoji needs 4 */
  assert_int_equal(fx_utf8_cut(s, 0), 0);
  /* Bytes that are not UTF-8 at all count one each (fx_utf8_fix repairs them). */
  assert_int_equal(fx_utf8_cut("a\xff" "b", 2), 2);
  assert_int_equal(fx_utf8_cut("a\xc3", 5), 1); /* a sequence the string itself cut */
}

static void utf8_copy(void **state) {
  (void)state;
  char out[5];
  /* 63 bytes then "é" into 64: the é is dropped whole, never halved. */
  char tenant[66], buf[65];
  memset(tenant, 'a', 63);
  memcpy(tenant + 63, "\xc3\xa9", 3);
  assert_int_equal(fx_utf8_copy(buf, sizeof buf, tenant), 63);
  assert_int_equal(strlen(buf), 63);
  assert_int_equal(fx_utf8_fix(buf), 0);
  assert_int_equal(fx_utf8_copy(out, sizeof out, "abc\xc3\xa9"), 3);
  assert_string_equal(out, "abc");
  assert_int_equal(fx_utf8_copy(out, sizeof out, "ab"), 2);
  assert_string_equal(out, "ab");
  /* Bytes that are not UTF-8 become '?' in the copy. */
  assert_int_equal(fx_utf8_copy(out, sizeof out, "a\xff" "b"), 3);
  assert_string_equal(out, "a?b");
  assert_int_equal(fx_utf8_copy(out, sizeof out, NULL), 0);
  assert_string_equal(out, "");
}

static void utf8_trim(void **state) {
  (void)state;
  char buf[16];
  /* What a fixed-size copy leaves when it cuts "ab€" after 3 bytes. */
  memcpy(buf, "ab\xe2\x82", 4);
  buf[3] = '\0';
  fx_utf8_trim(buf);
  assert_string_equal(buf, "ab");
  memcpy(buf, "ab\xe2\x82\xac", 6);
  fx_utf8_trim(buf);
  assert_string_equal(buf, "ab\xe2\x82\xac");
  memcpy(buf, "a\xf0\x9f\x98", 5);
  fx_utf8_trim(buf);
  assert_string_equal(buf, "a");
  fx_utf8_trim(buf);
  assert_string_equal(buf, "a");
  buf[0] = '\0';
  fx_utf8_trim(buf);
  assert_string_equal(buf, "");
}

/* For a terminal: control characters and bytes that are not UTF-8 as \xNN,
 * a backslash doubled; characters kept whole; never a cut escape. */
static void printable(void **state) {
  (void)state;
  char out[64];
  fx_str_printable("t1\x1b]0;owned\x07\x1b[2J", out, sizeof out);
  assert_string_equal(out, "t1\\x1b]0;owned\\x07\\x1b[2J");
  assert_null(strchr(out, 0x1b));
  fx_str_printable("caf\xc3\xa9 a\\b\ttab\x7f", out, sizeof out);
  assert_string_equal(out, "caf\xc3\xa9 a\\\\b\\x09tab\\x7f");
  /* C1 controls (U+009B is a CSI on some terminals) and bad bytes. */
  fx_str_printable("x\xc2\x9b" "1m\xff", out, sizeof out);
  assert_string_equal(out, "x\\xc2\\x9b1m\\xff");
  char small[6];
  fx_str_printable("ab\x1b", small, sizeof small); /* "ab\x1b" needs 6 bytes + NUL */
  assert_string_equal(small, "ab");
  fx_str_printable(NULL, small, sizeof small);
  assert_string_equal(small, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(memstr), cmocka_unit_test(json_depth),
                                     cmocka_unit_test(redact_secrets),
                                     cmocka_unit_test(scrub_secret),
                                     cmocka_unit_test(utf8_cut), cmocka_unit_test(utf8_copy),
                                     cmocka_unit_test(utf8_trim), cmocka_unit_test(printable)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
