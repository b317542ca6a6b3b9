#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/governor.h"

static fx_gov_conf conf(int max, double rate, int burst) {
  fx_gov_conf c = {.max_concurrency = max, .rate_per_s = rate, .burst = burst,
                   .breaker_window = 10, .breaker_ratio = 0.5, .breaker_cooldown_ms = 1000,
                   .breaker_cooldown_max_ms = 4000};
  return c;
}

static void concurrency_cap(void **state) {
  (void)state;
  fx_governor *g = fx_governor_new();
  fx_gov_conf c = conf(2, 0, 1);
  assert_int_equal(fx_governor_set_tenant(g, "t", &c), 0);
  const char *why;
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 0, &why), 0);
  assert_int_equal(fx_governor_acquire(g, "t", "Condition", 0, &why), 0);
  assert_true(fx_governor_acquire(g, "t", "Observation", 0, &why) > 0);
  assert_string_equal(why, "concurrency");
  assert_true(fx_governor_blocked(g, "t", 0) > 0);
  /* Another tenant is not affected; an unknown one is not governed. */
  fx_governor_set_tenant(g, "u", &c);
  assert_int_equal(fx_governor_acquire(g, "u", "Observation", 0, &why), 0);
  assert_int_equal(fx_governor_acquire(g, "nobody", "Observation", 0, &why), 0);
  fx_governor_done(g, "t", "Observation", FX_GOV_OK, -1, 1);
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 1, &why), 0);
  fx_governor_free(g);
}

static void rate_limit(void **state) {
  (void)state;
  fx_governor *g = fx_governor_new();
  fx_gov_conf c = conf(100, 10, 2); /* 10/s, burst 2 */
  fx_governor_set_tenant(g, "t", &c);
  const char *why;
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 0, &why), 0);
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 0, &why), 0);
  long wait = fx_governor_acquire(g, "t", "Observation", 0, &why);
  assert_string_equal(why, "rate");
  assert_true(wait >= 99 && wait <= 101); /* one token per 100 ms */
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 100, &why), 0);
  fx_governor_free(g);
}

static void retry_after_per_path(void **state) {
  (void)state;
  fx_governor *g = fx_governor_new();
  fx_gov_conf c = conf(10, 0, 1);
  fx_governor_set_tenant(g, "t", &c);
  const char *why;
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 1000, &why), 0);
  fx_governor_done(g, "t", "Observation", FX_GOV_THROTTLED, 2000, 1000);
  /* No request to that path before 3000; other paths go. */
  long wait = fx_governor_acquire(g, "t", "Observation", 1500, &why);
  assert_int_equal(wait, 1500);
  assert_string_equal(why, "retry-after");
  assert_int_equal(fx_governor_acquire(g, "t", "Condition", 1500, &why), 0);
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 3000, &why), 0);
  fx_gov_stats st;
  fx_governor_stats(g, "t", &st);
  assert_int_equal(st.retry_after_waits, 1);
  assert_int_equal(st.throttled, 1);
  fx_governor_free(g);
}

/* Two requests in flight on one path: the first answer asks for 10 s, the
 * second, later, for 1 s. The later, shorter wait does not cut the longer one short. */
static void retry_after_never_shortened(void **state) {
  (void)state;
  fx_governor *g = fx_governor_new();
  fx_gov_conf c = conf(10, 0, 1);
  fx_governor_set_tenant(g, "t", &c);
  const char *why;
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 1000, &why), 0);
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 1000, &why), 0);
  fx_governor_done(g, "t", "Observation", FX_GOV_THROTTLED, 10000, 1100);
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 1200, &why), 9900);
  fx_governor_done(g, "t", "Observation", FX_GOV_THROTTLED, 1000, 1300);
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 2500, &why), 8600);
  assert_string_equal(why, "retry-after");
  assert_int_equal(fx_governor_acquire(g, "t", "Observation", 11100, &why), 0);
  fx_governor_free(g);
}

static void adaptive_concurrency(void **state) {
  (void)state;
  fx_governor *g = fx_governor_new();
  fx_gov_conf c = conf(16, 0, 1);
  c.breaker_window = 256; /* keep the breaker out of this test */
  fx_governor_set_tenant(g, "t", &c);
  fx_gov_stats st;
  const char *why;
  fx_governor_acquire(g, "t", "p", 0, &why);
  fx_governor_done(g, "t", "p", FX_GOV_THROTTLED, -1, 5000);
  fx_governor_stats(g, "t", &st);
  assert_int_equal(st.limit, 8); /* halved */
  fx_governor_acquire(g, "t", "p", 0, &why);
  fx_governor_done(g, "t", "p", FX_GOV_TRANSIENT, -1, 5500);
  fx_governor_stats(g, "t", &st);
  assert_int_equal(st.limit, 8); /* at most one cut a second */
  fx_governor_acquire(g, "t", "p", 0, &why);
  fx_governor_done(g, "t", "p", FX_GOV_TRANSIENT, -1, 6100);
  fx_governor_stats(g, "t", &st);
  assert_int_equal(st.limit, 4);
  for (int i = 0; i < 4; i++) { /* a window of successes grows it by one */
    fx_governor_acquire(g, "t", "p", 7000, &why);
    fx_governor_done(g, "t", "p", FX_GOV_OK, -1, 7000);
  }
  fx_governor_stats(g, "t", &st);
  assert_int_equal(st.limit, 5);
  fx_governor_free(g);
}

static void breaker(void **state) {
  (void)state;
  fx_governor *g = fx_governor_new();
  fx_gov_conf c = conf(100, 0, 1);
  fx_governor_set_tenant(g, "t", &c);
  const char *why;
  uint64_t now = 10000;
  for (int i = 0; i < 10; i++) { /* the tenant starts failing: 6 of the last 10 */
    assert_int_equal(fx_governor_acquire(g, "t", "p", now, &why), 0);
    fx_governor_done(g, "t", "p", i < 4 ? FX_GOV_OK : FX_GOV_TRANSIENT, -1, now);
  }
  fx_gov_stats st;
  fx_governor_stats(g, "t", &st);
  assert_int_equal(st.breaker, FX_BREAKER_OPEN);
  long wait = fx_governor_acquire(g, "t", "p", now + 10, &why);
  assert_string_equal(why, "breaker");
  assert_int_equal(wait, 990);
  /* After the cool-down one probe goes; the others wait for its outcome. */
  assert_int_equal(fx_governor_acquire(g, "t", "p", now + 1000, &why), 0);
  assert_true(fx_governor_acquire(g, "t", "p", now + 1000, &why) > 0);
  assert_string_equal(why, "breaker");
  fx_governor_done(g, "t", "p", FX_GOV_TRANSIENT, -1, now + 1100); /* probe fails: reopen, 2 s */
  assert_int_equal(fx_governor_acquire(g, "t", "p", now + 1100, &why), 2000);
  assert_int_equal(fx_governor_acquire(g, "t", "p", now + 3100, &why), 0); /* the next probe */
  fx_governor_done(g, "t", "p", FX_GOV_OK, -1, now + 3200);                 /* succeeds: closed */
  fx_governor_stats(g, "t", &st);
  assert_int_equal(st.breaker, FX_BREAKER_CLOSED);
  assert_int_equal(st.breaker_opened, 2);
  assert_int_equal(fx_governor_acquire(g, "t", "p", now + 3200, &why), 0);
  fx_governor_free(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(concurrency_cap), cmocka_unit_test(rate_limit),
                                     cmocka_unit_test(retry_after_per_path),
                                     cmocka_unit_test(retry_after_never_shortened),
                                     cmocka_unit_test(adaptive_concurrency), cmocka_unit_test(breaker)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
