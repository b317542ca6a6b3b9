/* The command-line tools' token bucket and progress bar. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "worker/cli/progress.h"
#include "worker/cli/ratelimit.h"

static void token_bucket(void **state) {
  (void)state;
  fx_rate r;
  fx_rate_init(&r, 100); /* a tenth of a second's worth: 10 at once */
  int64_t t = 1000000;
  for (int i = 0; i < 10; i++) assert_int_equal(fx_rate_take(&r, t), 0);
  int64_t wait = fx_rate_take(&r, t);
  assert_true(wait > 9000 && wait <= 10001); /* one more token in 10 ms */
  assert_int_equal(fx_rate_take(&r, t + 10000), 0);
  /* Over a simulated second at most 100 (+ the burst) are taken. */
  int taken = 0;
  for (int64_t now = t + 10000; now < t + 1010000; now += 1000)
    while (fx_rate_take(&r, now) == 0) taken++;
  assert_true(taken >= 99 && taken <= 101);
  /* A long pause refills only the burst. */
  taken = 0;
  while (fx_rate_take(&r, t + 60000000) == 0) taken++;
  assert_int_equal(taken, 10);
  /* 0 means no limit; a slow rate still holds one. */
  fx_rate_init(&r, 0);
  for (int i = 0; i < 1000; i++) assert_int_equal(fx_rate_take(&r, t), 0);
  fx_rate_init(&r, 2);
  assert_int_equal(fx_rate_take(&r, t), 0);
  wait = fx_rate_take(&r, t);
  assert_true(wait > 490000 && wait <= 500001);
  /* fx_rate_wait really waits: 5 at 200/s after a burst of 20 takes ~25 ms. */
  fx_rate_init(&r, 200);
  int64_t start = fx_mono_us();
  for (int i = 0; i < 25; i++) fx_rate_wait(&r);
  int64_t took = fx_mono_us() - start;
  assert_true(took >= 20000 && took < 2000000);
}

static void progress_line(void **state) {
  (void)state;
  fx_progress p;
  setenv("FHIRX_PROGRESS", "0", 1);
  fx_progress_init(&p, "replay", 200);
  assert_false(p.enabled);
  char line[256];
  fx_progress_format(&p, 50, 2000000, "parked 3", line, sizeof line);
  assert_string_equal(line, "replay [######..................] 50/200  25% 25/s  parked 3");
  fx_progress_format(&p, 250, 1000000, NULL, line, sizeof line);
  assert_string_equal(line, "replay [########################] 250/200 100% 250/s");
  p.total = 0;
  fx_progress_format(&p, 7, 0, NULL, line, sizeof line);
  assert_string_equal(line, "replay 7 0/s");
  /* Not a terminal: drawing does nothing. */
  fx_progress_update(&p, 1, NULL, 1);
  fx_progress_done(&p);
  assert_int_equal(p.drawn, 0);
  setenv("FHIRX_PROGRESS", "1", 1);
  fx_progress_init(&p, "x", 1);
  assert_true(p.enabled);
  unsetenv("FHIRX_PROGRESS");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(token_bucket), cmocka_unit_test(progress_line)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
