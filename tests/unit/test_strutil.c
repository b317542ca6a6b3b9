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

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(memstr), cmocka_unit_test(json_depth)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
