#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/loop.h"
#include "common/refcache.h"

/* The cache's clock: common/refcache.c reads fx_now_ms(); this test is linked
 * with -Wl,--wrap=fx_now_ms (tests/unit/CMakeLists.txt), so those calls land
 * here and get the test's time while one is set (0: the real clock). */
uint64_t __real_fx_now_ms(void);
uint64_t __wrap_fx_now_ms(void);
static _Atomic uint64_t fake_now;
uint64_t __wrap_fx_now_ms(void) {
  uint64_t now = atomic_load(&fake_now);
  return now ? now : __real_fx_now_ms();
}

static void miss_fill_hit(void **state) {
  (void)state;
  fx_refcache *c = fx_refcache_new(100, 1 << 20, 60000);
  char *out;
  size_t len;
  assert_int_equal(fx_refcache_get(c, "t1", "Practitioner/5", NULL, NULL, NULL, &out, &len), FX_REF_MISS);
  fx_refcache_put(c, "t1", "Practitioner/5", "{\"id\":\"5\"}", 10);
  assert_int_equal(fx_refcache_get(c, "t1", "Practitioner/5", NULL, NULL, NULL, &out, &len), FX_REF_HIT);
  assert_string_equal(out, "{\"id\":\"5\"}");
  assert_int_equal(len, 10);
  free(out);
  /* Per tenant: the same key of another tenant is a different entity. */
  assert_int_equal(fx_refcache_get(c, "t2", "Practitioner/5", NULL, NULL, NULL, &out, &len), FX_REF_MISS);
  fx_refcache_fail(c, "t2", "Practitioner/5");
  fx_refcache_drop_tenant(c, "t1");
  assert_int_equal(fx_refcache_get(c, "t1", "Practitioner/5", NULL, NULL, NULL, &out, &len), FX_REF_MISS);
  fx_refcache_fail(c, "t1", "Practitioner/5");
  fx_refcache_stats st;
  fx_refcache_stats_get(c, &st);
  assert_int_equal(st.hits, 1);
  assert_int_equal(st.misses, 3);
  fx_refcache_free(c);
}

typedef struct woke {
  int n;
  char got[64];
  int nulls;
} woke;

static void on_ready(const char *json, size_t len, void *arg) {
  woke *w = arg;
  w->n++;
  if (json) snprintf(w->got, sizeof w->got, "%.*s", (int)len, json);
  else w->nulls++;
}

static void waiters_are_woken_on_their_loop(void **state) {
  (void)state;
  uv_loop_t uv;
  uv_loop_init(&uv);
  fx_loop lp;
  fx_err err = {0};
  assert_int_equal(fx_loop_init(&lp, &uv, NULL, &err), 0);
  fx_refcache *c = fx_refcache_new(100, 1 << 20, 60000);
  char *out;
  size_t len;
  woke a = {0}, b = {0};
  assert_int_equal(fx_refcache_get(c, "t", "Organization/1", &lp, on_ready, &a, &out, &len), FX_REF_MISS);
  /* While the first asker fetches, the others wait instead of fetching too. */
  assert_int_equal(fx_refcache_get(c, "t", "Organization/1", &lp, on_ready, &a, &out, &len), FX_REF_WAIT);
  assert_int_equal(fx_refcache_get(c, "t", "Organization/1", &lp, on_ready, &b, &out, &len), FX_REF_WAIT);
  fx_refcache_put(c, "t", "Organization/1", "{\"id\":\"1\"}", 10);
  assert_int_equal(a.n, 0); /* delivered through the loop, not inline */
  uv_run(&uv, UV_RUN_NOWAIT);
  assert_int_equal(a.n, 1);
  assert_int_equal(b.n, 1);
  assert_string_equal(b.got, "{\"id\":\"1\"}");
  /* A failed fetch wakes the waiters with nothing: they fetch themselves. */
  woke w = {0};
  assert_int_equal(fx_refcache_get(c, "t", "Location/9", &lp, on_ready, &w, &out, &len), FX_REF_MISS);
  assert_int_equal(fx_refcache_get(c, "t", "Location/9", &lp, on_ready, &w, &out, &len), FX_REF_WAIT);
  fx_refcache_fail(c, "t", "Location/9");
  uv_run(&uv, UV_RUN_NOWAIT);
  assert_int_equal(w.nulls, 1);
  assert_int_equal(fx_refcache_get(c, "t", "Location/9", &lp, on_ready, &w, &out, &len), FX_REF_MISS);
  fx_refcache_fail(c, "t", "Location/9");
  fx_refcache_free(c);
  fx_loop_close(&lp);
  uv_run(&uv, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&uv), 0);
}

static void bounded_and_expiring(void **state) {
  (void)state;
  char *out;
  size_t len;
  fx_refcache *c = fx_refcache_new(3, 1 << 20, 60000);
  const char *keys[] = {"Practitioner/1", "Practitioner/2", "Practitioner/3", "Practitioner/4"};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(fx_refcache_get(c, "t", keys[i], NULL, NULL, NULL, &out, &len), FX_REF_MISS);
    fx_refcache_put(c, "t", keys[i], "{}", 2);
  }
  /* Least recently used first out: entry 1 went when 4 came. */
  assert_int_equal(fx_refcache_get(c, "t", keys[0], NULL, NULL, NULL, &out, &len), FX_REF_MISS);
  fx_refcache_fail(c, "t", keys[0]);
  assert_int_equal(fx_refcache_get(c, "t", keys[3], NULL, NULL, NULL, &out, &len), FX_REF_HIT);
  free(out);
  fx_refcache_stats st;
  fx_refcache_stats_get(c, &st);
  assert_int_equal(st.entries, 3);
  assert_int_equal(st.evictions, 1);
  fx_refcache_free(c);

  c = fx_refcache_new(100, 10, 60000); /* bytes bound */
  assert_int_equal(fx_refcache_get(c, "t", "Binary/1", NULL, NULL, NULL, &out, &len), FX_REF_MISS);
  fx_refcache_put(c, "t", "Binary/1", "0123456789ABCDEF", 16);
  assert_int_equal(fx_refcache_get(c, "t", "Binary/1", NULL, NULL, NULL, &out, &len), FX_REF_MISS);
  fx_refcache_fail(c, "t", "Binary/1");
  fx_refcache_free(c);

  /* The TTL on the test's clock: an entry is served until exactly ttl after it was put. */
  const uint64_t t0 = 1000000;
  atomic_store(&fake_now, t0);
  c = fx_refcache_new(100, 1 << 20, 60000); /* 60 s TTL */
  assert_int_equal(fx_refcache_get(c, "t", "Location/1", NULL, NULL, NULL, &out, &len), FX_REF_MISS);
  fx_refcache_put(c, "t", "Location/1", "{}", 2);
  atomic_store(&fake_now, t0 + 60000 - 1);
  assert_int_equal(fx_refcache_get(c, "t", "Location/1", NULL, NULL, NULL, &out, &len), FX_REF_HIT);
  free(out);
  atomic_store(&fake_now, t0 + 60000);
  assert_int_equal(fx_refcache_get(c, "t", "Location/1", NULL, NULL, NULL, &out, &len), FX_REF_MISS);
  fx_refcache_fail(c, "t", "Location/1");
  fx_refcache_free(c);
}

/* Back to the real clock, also when the test failed halfway. */
static int real_clock(void **state) {
  (void)state;
  atomic_store(&fake_now, 0);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(miss_fill_hit),
                                     cmocka_unit_test(waiters_are_woken_on_their_loop),
                                     cmocka_unit_test_teardown(bounded_and_expiring, real_clock)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
