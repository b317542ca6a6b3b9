#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/b64.h"

/* RFC 4648 section 10 vectors, in the url alphabet without padding. */
static const struct {
  const char *in, *out;
} vectors[] = {{"", ""},         {"f", "Zg"},         {"fo", "Zm8"},       {"foo", "Zm9v"},
               {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}};

static void encode_vectors(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
    char *s = fx_b64url_encode_alloc((const uint8_t *)vectors[i].in, strlen(vectors[i].in));
    assert_non_null(s);
    assert_string_equal(s, vectors[i].out);
    assert_int_equal(strlen(s), fx_b64url_encoded_len(strlen(vectors[i].in)));
    free(s);
  }
}

static void decode_vectors(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
    size_t n = 99;
    uint8_t *d = fx_b64url_decode(vectors[i].out, strlen(vectors[i].out), &n);
    assert_non_null(d);
    assert_int_equal(n, strlen(vectors[i].in));
    assert_memory_equal(d, vectors[i].in, n);
    free(d);
  }
}

static void url_alphabet(void **state) {
  (void)state;
  const uint8_t in[] = {0xfb, 0xff, 0xbf}; /* "+/+/" in the standard alphabet */
  char out[8];
  fx_b64url_encode(in, sizeof in, out);
  assert_string_equal(out, "-_-_");
  size_t n;
  uint8_t *d = fx_b64url_decode(out, strlen(out), &n);
  assert_non_null(d);
  assert_int_equal(n, 3);
  assert_memory_equal(d, in, 3);
  free(d);
}

static void rejects_bad_input(void **state) {
  (void)state;
  const char *bad[] = {"Zg==", "Zm9v+A", "Zm9v/A", "Zm 9v", "Z", "Zm9vY", "Zm9v\n"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t n;
    uint8_t *d = fx_b64url_decode(bad[i], strlen(bad[i]), &n);
    if (d) fail_msg("accepted invalid input '%s'", bad[i]);
  }
}

static void round_trip_all_lengths(void **state) {
  (void)state;
  uint8_t buf[300];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 37 + 11);
  for (size_t len = 0; len <= sizeof buf; len++) {
    char *s = fx_b64url_encode_alloc(buf, len);
    assert_non_null(s);
    assert_null(strchr(s, '='));
    size_t n;
    uint8_t *d = fx_b64url_decode(s, strlen(s), &n);
    assert_non_null(d);
    assert_int_equal(n, len);
    assert_memory_equal(d, buf, len);
    free(d);
    free(s);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(encode_vectors), cmocka_unit_test(decode_vectors),
      cmocka_unit_test(url_alphabet), cmocka_unit_test(rejects_bad_input),
      cmocka_unit_test(round_trip_all_lengths)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
