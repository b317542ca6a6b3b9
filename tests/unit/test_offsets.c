#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>

#include "worker/pool/offsets.h"

static void in_order(void **state) {
  (void)state;
  fx_partition *p = fx_partition_new("fhirx.jobs", 3);
  for (int64_t o = 10; o < 13; o++) assert_int_equal(fx_partition_add(p, o), 0);
  assert_int_equal(fx_partition_done(p, 10), 11);
  assert_int_equal(fx_partition_done(p, 11), 12);
  assert_int_equal(fx_partition_done(p, 12), 13);
  assert_int_equal(fx_partition_pending(p), 0);
  fx_partition_unref(p);
}

static void out_of_order_waits_for_the_lowest(void **state) {
  (void)state;
  fx_partition *p = fx_partition_new("t", 0);
  for (int64_t o = 0; o < 5; o++) fx_partition_add(p, o);
  assert_int_equal(fx_partition_done(p, 3), -1); /* 0 is unfinished */
  assert_int_equal(fx_partition_done(p, 1), -1);
  assert_int_equal(fx_partition_done(p, 0), 2);  /* 0 and 1 done; 2 is the lowest unfinished */
  assert_int_equal(fx_partition_done(p, 2), 4);  /* 3 was already done */
  assert_int_equal(fx_partition_pending(p), 1);
  assert_int_equal(fx_partition_done(p, 4), 5);
  fx_partition_unref(p);
}

static void a_stuck_job_holds_the_partition(void **state) {
  (void)state;
  fx_partition *p = fx_partition_new("t", 0);
  fx_partition_add(p, 100);
  fx_partition_add(p, 101);
  fx_partition_add(p, 105); /* gaps are fine (compaction, control records) */
  assert_int_equal(fx_partition_done(p, 101), -1);
  assert_int_equal(fx_partition_done(p, 105), -1);
  /* 100 never completes: nothing is stored, so 100, 101 and 105 are redelivered. */
  assert_int_equal(p->stored, -1);
  assert_int_equal(fx_partition_done(p, 100), 106);
  fx_partition_unref(p);
}

static void many_slots_grow_and_slide(void **state) {
  (void)state;
  fx_partition *p = fx_partition_new("t", 0);
  int64_t next = 0, stored = -1;
  /* Keep ~50 in flight while 10,000 pass, finishing each window in reverse. */
  for (int64_t base = 0; base < 10000; base += 50) {
    for (int64_t o = base; o < base + 50; o++) assert_int_equal(fx_partition_add(p, o), 0);
    for (int64_t o = base + 49; o >= base; o--) {
      int64_t s = fx_partition_done(p, o);
      if (s >= 0) {
        assert_true(s > stored);
        stored = s;
      }
    }
    next = base + 50;
    assert_int_equal(stored, next);
  }
  assert_true(p->cap <= 128); /* the window slid instead of growing without bound */
  fx_partition_unref(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(in_order),
                                     cmocka_unit_test(out_of_order_waits_for_the_lowest),
                                     cmocka_unit_test(a_stuck_job_holds_the_partition),
                                     cmocka_unit_test(many_slots_grow_and_slide)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
