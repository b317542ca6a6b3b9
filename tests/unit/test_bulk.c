/* The pure parts of bulk export jobs: poll waits and the files-done ranges
 * that let another worker resume an export. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "worker/bulk.h"

#define FLOOR 1000u
#define CEIL 600000u
#define NOW 1000000000u
#define LATER (NOW + 86400000u)

static void poll_delay_honours_retry_after_within_bounds(void **state) {
  (void)state;
  /* Retry-After wins when it is inside the bounds. */
  assert_int_equal(fx_bulk_poll_delay(5000, 0, FLOOR, CEIL, NOW, LATER), 5000);
  /* Below the floor: the floor (a server saying 0 is not polled in a loop). */
  assert_int_equal(fx_bulk_poll_delay(0, 0, FLOOR, CEIL, NOW, LATER), FLOOR);
  /* Above the ceiling (Cerner has sent 600 s, some send hours): cut. */
  assert_int_equal(fx_bulk_poll_delay(3600000, 0, FLOOR, CEIL, NOW, LATER), CEIL);
}

static void poll_delay_doubles_without_retry_after(void **state) {
  (void)state;
  uint64_t d = fx_bulk_poll_delay(-1, 0, FLOOR, CEIL, NOW, LATER);
  assert_int_equal(d, FLOOR);
  d = fx_bulk_poll_delay(-1, d, FLOOR, CEIL, NOW, LATER);
  assert_int_equal(d, 2 * FLOOR);
  for (int i = 0; i < 20; i++) d = fx_bulk_poll_delay(-1, d, FLOOR, CEIL, NOW, LATER);
  assert_int_equal(d, CEIL);
}

static void poll_delay_never_passes_the_deadline(void **state) {
  (void)state;
  assert_int_equal(fx_bulk_poll_delay(60000, 0, FLOOR, CEIL, NOW, NOW + 2500), 2500);
  assert_int_equal(fx_bulk_poll_delay(60000, 0, FLOOR, CEIL, NOW, NOW), 0);
  assert_int_equal(fx_bulk_poll_delay(-1, 0, FLOOR, CEIL, NOW + 5, NOW), 0);
}

static void ranges_round_trip(void **state) {
  (void)state;
  unsigned char done[12] = {1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1};
  json_t *r = fx_bulk_ranges(done, sizeof done);
  char *s = json_dumps(r, JSON_COMPACT);
  assert_string_equal(s, "[[0,2],[4,4],[7,8],[11,11]]");
  unsigned char back[12] = {0};
  fx_bulk_ranges_parse(r, back, sizeof back);
  assert_memory_equal(done, back, sizeof done);
  free(s);
  json_decref(r);
  /* Nothing done; everything done. */
  unsigned char none[3] = {0}, all[3] = {1, 1, 1};
  r = fx_bulk_ranges(none, 3);
  assert_int_equal(json_array_size(r), 0);
  json_decref(r);
  r = fx_bulk_ranges(all, 3);
  s = json_dumps(r, JSON_COMPACT);
  assert_string_equal(s, "[[0,2]]");
  free(s);
  json_decref(r);
}

static void ranges_parse_ignores_what_does_not_fit(void **state) {
  (void)state;
  /* A record from a manifest with more files (or garbage) cannot mark
   * files that do not exist, nor write past the array. */
  json_t *r = json_loads("[[2,9],[-4,0],[\"x\",1],[7]]", 0, NULL);
  unsigned char done[4] = {0};
  fx_bulk_ranges_parse(r, done, sizeof done);
  unsigned char want[4] = {0, 0, 1, 1};
  assert_memory_equal(done, want, sizeof want);
  json_decref(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(poll_delay_honours_retry_after_within_bounds),
      cmocka_unit_test(poll_delay_doubles_without_retry_after),
      cmocka_unit_test(poll_delay_never_passes_the_deadline),
      cmocka_unit_test(ranges_round_trip),
      cmocka_unit_test(ranges_parse_ignores_what_does_not_fit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
