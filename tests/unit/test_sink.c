/* out/sink: the output protocol. A sink settles exactly once per round, on
 * its home loop, never inside the call that released it, with the failure
 * flag of its messages; a batch of delivery reports wakes each home once. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "worker/out/sink.h"

typedef struct probe {
  fx_sink sink;
  int settled;
  int failed;
  uv_thread_t settled_on;
} probe;

static void on_settled(fx_sink *s, int failed) {
  probe *p = (probe *)s;
  p->settled++;
  p->failed = failed;
  p->settled_on = uv_thread_self();
}

typedef struct home {
  uv_loop_t uv;
  fx_loop lp;
} home;

static void home_init(home *h) {
  assert_int_equal(uv_loop_init(&h->uv), 0);
  assert_int_equal(fx_loop_init(&h->lp, &h->uv, NULL, NULL), 0);
}

static void home_close(home *h) {
  fx_loop_close(&h->lp);
  uv_run(&h->uv, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&h->uv), 0);
}

static void turn(home *h) { uv_run(&h->uv, UV_RUN_NOWAIT); }

static void settles_on_home_never_inline(void **state) {
  (void)state;
  home h;
  home_init(&h);
  probe p = {0};
  fx_sink_init(&p.sink, &h.lp, on_settled);
  assert_false(fx_sink_busy(&p.sink));
  fx_sink_open(&p.sink);
  assert_true(fx_sink_busy(&p.sink));
  fx_sink_close(&p.sink); /* nothing in flight: settles, but not inside this call */
  assert_int_equal(p.settled, 0);
  turn(&h);
  assert_int_equal(p.settled, 1);
  assert_int_equal(p.failed, 0);
  assert_false(fx_sink_busy(&p.sink));
  home_close(&h);
}

static void counts_every_message(void **state) {
  (void)state;
  home h;
  home_init(&h);
  probe p = {0};
  fx_sink_init(&p.sink, &h.lp, on_settled);
  fx_sink_open(&p.sink);
  for (int i = 0; i < 3; i++) fx_sink_add(&p.sink);
  fx_sink_close(&p.sink); /* three still in flight */
  turn(&h);
  assert_int_equal(p.settled, 0);
  fx_sink_batch b;
  fx_sink_batch_init(&b);
  fx_sink_acked_batch(&b, &p.sink, 2, 0);
  fx_sink_batch_flush(&b);
  turn(&h);
  assert_int_equal(p.settled, 0);
  fx_sink_acked_batch(&b, &p.sink, 1, 0);
  assert_int_equal(p.settled, 0); /* queued for the flush, not run */
  fx_sink_batch_flush(&b);
  turn(&h);
  assert_int_equal(p.settled, 1);
  assert_int_equal(p.failed, 0);
  home_close(&h);
}

static void a_failed_message_fails_the_round_only(void **state) {
  (void)state;
  home h;
  home_init(&h);
  probe p = {0};
  fx_sink_init(&p.sink, &h.lp, on_settled);
  fx_sink_open(&p.sink);
  fx_sink_add(&p.sink);
  fx_sink_add(&p.sink);
  fx_sink_close(&p.sink);
  fx_sink_batch b;
  fx_sink_batch_init(&b);
  fx_sink_acked_batch(&b, &p.sink, 1, 1);
  fx_sink_acked_batch(&b, &p.sink, 1, 0);
  fx_sink_batch_flush(&b);
  turn(&h);
  assert_int_equal(p.settled, 1);
  assert_int_equal(p.failed, 1);
  /* Opened again (a job's status after its other outputs): a clean round. */
  fx_sink_open(&p.sink);
  fx_sink_add(&p.sink);
  fx_sink_close(&p.sink);
  fx_sink_acked_batch(&b, &p.sink, 1, 0);
  fx_sink_batch_flush(&b);
  turn(&h);
  assert_int_equal(p.settled, 2);
  assert_int_equal(p.failed, 0);
  home_close(&h);
}

static void one_wakeup_per_home_per_batch(void **state) {
  (void)state;
  enum { N = 50 };
  home h1, h2;
  home_init(&h1);
  home_init(&h2);
  probe *ps = calloc(2 * N, sizeof *ps);
  fx_sink_batch b;
  fx_sink_batch_init(&b);
  for (int i = 0; i < 2 * N; i++) {
    fx_sink_init(&ps[i].sink, i < N ? &h1.lp : &h2.lp, on_settled);
    fx_sink_open(&ps[i].sink);
    fx_sink_add(&ps[i].sink);
    fx_sink_close(&ps[i].sink);
  }
  unsigned long long w1 = h1.lp.wakeups, w2 = h2.lp.wakeups;
  for (int i = 0; i < 2 * N; i++) fx_sink_acked_batch(&b, &ps[i].sink, 1, 0);
  fx_sink_batch_flush(&b);
  turn(&h1);
  turn(&h2);
  for (int i = 0; i < 2 * N; i++) assert_int_equal(ps[i].settled, 1);
  assert_int_equal(h1.lp.wakeups - w1, 1);
  assert_int_equal(h2.lp.wakeups - w2, 1);
  free(ps);
  home_close(&h1);
  home_close(&h2);
}

/* Reports counted on another thread (the producer's) settle on the home's. */
typedef struct other {
  probe *p;
  int n;
} other;

static void count_elsewhere(void *arg) {
  other *o = arg;
  fx_sink_batch b;
  fx_sink_batch_init(&b);
  for (int i = 0; i < o->n; i++) {
    fx_sink_acked_batch(&b, &o->p->sink, 1, 0);
    if (i % 7 == 0) fx_sink_batch_flush(&b);
  }
  fx_sink_batch_flush(&b);
}

static void settles_on_home_from_another_thread(void **state) {
  (void)state;
  home h;
  home_init(&h);
  probe p = {0};
  fx_sink_init(&p.sink, &h.lp, on_settled);
  fx_sink_open(&p.sink);
  for (int i = 0; i < 1000; i++) fx_sink_add(&p.sink);
  fx_sink_close(&p.sink);
  other o = {.p = &p, .n = 1000};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, count_elsewhere, &o), 0);
  uv_thread_join(&t);
  uv_thread_t self = uv_thread_self();
  turn(&h);
  assert_int_equal(p.settled, 1);
  assert_true(uv_thread_equal(&p.settled_on, &self));
  home_close(&h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(settles_on_home_never_inline),
      cmocka_unit_test(counts_every_message),
      cmocka_unit_test(a_failed_message_fails_the_round_only),
      cmocka_unit_test(one_wakeup_per_home_per_batch),
      cmocka_unit_test(settles_on_home_from_another_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
