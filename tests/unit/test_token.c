/* The token cache's rules, against a token endpoint in this process and with
 * a clock the test sets: the expiry margin (10% of the lifetime, at most
 * 10 s), refresh ahead of expiry, the 401 rule (drop exactly the rejected
 * token), one request for many waiters, a reconfiguration while a request is
 * in flight, and backoff after failures. No test waits for time to pass.
 *
 * The clock: common/token.c reads fx_now_ms(). This test is linked with
 * -Wl,--wrap=fx_now_ms (tests/unit/CMakeLists.txt), so those calls land in
 * __wrap_fx_now_ms below, which returns the test's time when one is set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/loop.h"
#include "common/token.h"
#include "unit_util.h"

uint64_t __real_fx_now_ms(void);
uint64_t __wrap_fx_now_ms(void);

static _Atomic uint64_t fake_now; /* 0: the real clock */

uint64_t __wrap_fx_now_ms(void) {
  uint64_t now = atomic_load(&fake_now);
  return now ? now : __real_fx_now_ms();
}

#define T0 1000000u /* any start will do; not 0, which means "real clock" */

/* ---- the token endpoint --------------------------------------------------- */

static struct MHD_Daemon *server;
static int port;
static atomic_int requests;     /* token requests answered */
static atomic_long expires_in;  /* of the next grant */
static atomic_int fail_status;  /* 0: grant a token; else answer this status */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body) {
  void *buf;
  memcpy(&buf, &body, sizeof buf); /* MUST_COPY: never written through */
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), buf, MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(r, "Content-Type", "application/json");
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls) {
  (void)cls, (void)version, (void)data;
  static int marker;
  if (!*con_cls) { /* headers only: the body follows */
    *con_cls = &marker;
    return MHD_YES;
  }
  if (*data_size) { /* the form; its content is checked by test_smart and the simulator */
    *data_size = 0;
    return MHD_YES;
  }
  if (strcmp(method, "POST") != 0 || strcmp(url, "/token") != 0)
    return reply(c, 404, "{\"error\":\"invalid_request\"}");
  int n = atomic_fetch_add(&requests, 1) + 1;
  int status = atomic_load(&fail_status);
  if (status) return reply(c, (unsigned)status, "{}");
  char body[256];
  /* No scope in the answer: the grant's scope is then the one asked for (RFC 6749 5.1). */
  snprintf(body, sizeof body, "{\"access_token\":\"tok-%d\",\"token_type\":\"Bearer\",\"expires_in\":%ld}",
           n, atomic_load(&expires_in));
  return reply(c, 200, body);
}

/* ---- the cache and a loop ---------------------------------------------------- */

static char *dir;
static fx_keyset keys;

static int group_setup(void **state) {
  (void)state;
  server = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                            handler, NULL, MHD_OPTION_END);
  if (!server) return -1;
  port = MHD_get_daemon_info(server, MHD_DAEMON_INFO_BIND_PORT)->port;
  dir = ut_tmpdir();
  char *path = ut_path(dir, "signing.pem");
  fx_err err = {0};
  keys.keys = calloc(1, sizeof(fx_key));
  keys.n = 1;
  int rc = fx_key_generate(FX_ALG_ES384, 0, path, &err) ||
           fx_key_load(path, FX_ALG_NONE, NULL, &keys.keys[0], &err);
  free(path);
  return rc ? -1 : 0;
}

static int group_teardown(void **state) {
  (void)state;
  MHD_stop_daemon(server);
  fx_keyset_free(&keys);
  ut_rmdir(dir);
  return 0;
}

typedef struct ctx {
  fx_token_cache *c;
  uv_loop_t uv;
  fx_loop lp;
  char base[128], endpoint[128];
} ctx;

#define TENANT "t1"
#define SCOPE "system/Patient.read system/Observation.read"

static void set_tenant(ctx *x, const char *scope) {
  fx_tenant_conf t = {.id = TENANT, .client_id = "client-1", .fhir_base = x->base,
                      .token_endpoint = x->endpoint};
  fx_err err = {0};
  assert_int_equal(fx_token_cache_set_tenant(x->c, &t, scope, &err), 0);
}

/* A cache for one tenant; refresh_at_percent 100 turns refreshing ahead off. */
static void open_ctx(ctx *x, long expires, int refresh_at_percent) {
  memset(x, 0, sizeof *x);
  atomic_store(&requests, 0);
  atomic_store(&fail_status, 0);
  atomic_store(&expires_in, expires);
  atomic_store(&fake_now, T0);
  fx_auth_conf auth = {.assertion_lifetime_s = 240, .refresh_at_percent = refresh_at_percent,
                       .backoff_min_ms = 1000, .backoff_max_ms = 60000};
  fx_err err = {0};
  assert_int_equal(fx_token_cache_new(&keys, &auth, &x->c, &err), 0);
  snprintf(x->base, sizeof x->base, "http://127.0.0.1:%d/r4/" TENANT, port);
  snprintf(x->endpoint, sizeof x->endpoint, "http://127.0.0.1:%d/token", port);
  set_tenant(x, SCOPE);
  assert_int_equal(uv_loop_init(&x->uv), 0);
  assert_int_equal(fx_loop_init(&x->lp, &x->uv, NULL, &err), 0);
}

static void close_ctx(ctx *x) {
  fx_loop_close(&x->lp);
  uv_run(&x->uv, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&x->uv), 0);
  fx_token_cache_free(x->c);
  atomic_store(&fake_now, 0);
}

static void at(uint64_t ms) { atomic_store(&fake_now, ms); }

/* Runs the loop until pred(arg) holds, failing the test after 20 s instead of
 * hanging until ctest's timeout. The predicate is checked before each poll
 * (a prepare handle): when it holds, uv_stop makes that poll return at once.
 * Checking only after uv_run(UV_RUN_ONCE) is not enough: a completion
 * delivered from a timer callback is followed by a blocking poll. */
typedef struct until {
  int (*pred)(void *);
  void *arg;
  int fired;
} until;

static void on_prepare(uv_prepare_t *p) {
  until *u = p->data;
  if (u->pred(u->arg)) uv_stop(p->loop);
}

static void on_watchdog(uv_timer_t *t) {
  until *u = t->data;
  u->fired = 1;
  uv_stop(t->loop);
}

static void on_closed(uv_handle_t *h) { (*(int *)h->data)++; }

static void run_until(ctx *x, int (*pred)(void *), void *arg, const char *what) {
  until u = {pred, arg, 0};
  uv_prepare_t prep;
  uv_timer_t dog;
  uv_prepare_init(&x->uv, &prep);
  uv_timer_init(&x->uv, &dog);
  prep.data = dog.data = &u;
  uv_prepare_start(&prep, on_prepare);
  uv_timer_start(&dog, on_watchdog, 20000, 0);
  while (!pred(arg) && !u.fired) uv_run(&x->uv, UV_RUN_DEFAULT);
  int closed = 0;
  prep.data = dog.data = &closed;
  uv_close((uv_handle_t *)&prep, on_closed);
  uv_close((uv_handle_t *)&dog, on_closed);
  while (closed < 2) uv_run(&x->uv, UV_RUN_NOWAIT); /* the handles live on this frame */
  if (u.fired) fail_msg("nothing after 20 s while waiting for %s", what);
}

typedef struct waiter {
  int done;
  fx_token *tok;
  fx_auth_error err;
} waiter;

static void on_token(fx_token *tok, const fx_auth_error *e, void *arg) {
  waiter *w = arg;
  if (!w) return; /* a call that should not have waited: the test has failed already */
  w->done++;
  w->tok = fx_token_retain(tok);
  if (e) w->err = *e;
}

static int waiter_done(void *arg) { return ((waiter *)arg)->done; }

static void wait_for(ctx *x, waiter *w) { run_until(x, waiter_done, w, "a token callback"); }

/* A token the cache had to ask for: fx_token_get must answer PENDING. */
static fx_token *fetched(ctx *x) {
  waiter w = {0};
  fx_token *tok = NULL;
  fx_auth_error e;
  int rc = fx_token_get(x->c, &x->lp, TENANT, on_token, &w, &tok, &e);
  if (rc != FX_TOKEN_PENDING) fail_msg("expected to wait for a new token, got %d", rc);
  wait_for(x, &w);
  if (!w.tok) fail_msg("token request failed: %s", w.err.err.msg);
  return w.tok;
}

/* The token the cache hands out at once: fx_token_get must answer 0. */
static fx_token *cached(ctx *x) {
  fx_token *tok = NULL;
  fx_auth_error e;
  int rc = fx_token_get(x->c, &x->lp, TENANT, on_token, NULL, &tok, &e);
  if (rc != 0) fail_msg("expected the cached token at once, got %d (%s)", rc, e.err.msg);
  return tok;
}

static fx_token_stats stats(ctx *x) {
  fx_token_stats st;
  assert_int_equal(fx_token_cache_stats(x->c, TENANT, &st), 0);
  return st;
}

/* ---- the margin ------------------------------------------------------------------ */

static void margin_is_a_tenth_of_a_short_lifetime(void **state) {
  (void)state;
  ctx x;
  open_ctx(&x, 50, 100);
  fx_token *a = fetched(&x);
  assert_string_equal(a->access_token, "tok-1");
  assert_int_equal(a->obtained_ms, T0);
  /* 50 s: handed out for 45 s (a 5 s margin), not a millisecond longer. */
  at(T0 + 44999);
  fx_token *t = cached(&x);
  assert_ptr_equal(t, a);
  fx_token_release(t);
  at(T0 + 45000);
  fx_token *b = fetched(&x);
  assert_string_equal(b->access_token, "tok-2");
  assert_int_equal(atomic_load(&requests), 2);
  fx_token_release(a);
  fx_token_release(b);
  close_ctx(&x);
}

static void margin_is_at_most_ten_seconds(void **state) {
  (void)state;
  ctx x;
  open_ctx(&x, 570, 100); /* Cerner's lifetime: 10% would be 57 s, the cap says 10 s */
  fx_token *a = fetched(&x);
  at(T0 + 559999);
  fx_token *t = cached(&x);
  assert_ptr_equal(t, a);
  fx_token_release(t);
  assert_int_equal(atomic_load(&requests), 1);
  at(T0 + 560000);
  fx_token *b = fetched(&x);
  assert_ptr_not_equal(b, a);
  assert_int_equal(atomic_load(&requests), 2);
  fx_token_release(a);
  fx_token_release(b);
  close_ctx(&x);
}

/* ---- refresh ahead ------------------------------------------------------------- */

typedef struct replaced {
  ctx *x;
  const fx_token *old;
} replaced;

/* Whether the cache now hands out a token other than r->old (and never waits). */
static int token_replaced(void *arg) {
  replaced *r = arg;
  fx_token *t = NULL;
  fx_auth_error e;
  int rc = fx_token_get(r->x->c, &r->x->lp, TENANT, on_token, NULL, &t, &e);
  int other = rc == 0 && t != r->old;
  fx_token_release(t);
  return other || rc != 0; /* rc != 0: stop; the caller's check fails */
}

static void refreshes_ahead_while_serving_the_current_token(void **state) {
  (void)state;
  ctx x;
  open_ctx(&x, 570, 80);
  fx_token *a = fetched(&x);
  at(T0 + 455999); /* before 80% of the lifetime: nothing happens */
  fx_token *t = cached(&x);
  fx_token_release(t);
  assert_int_equal(stats(&x).requests, 1);
  at(T0 + 456000); /* 80%: callers keep the current token, one refresh starts */
  for (int i = 0; i < 10; i++) {
    t = cached(&x);
    assert_ptr_equal(t, a);
    fx_token_release(t);
  }
  assert_int_equal(stats(&x).requests, 2);
  /* The refresh lands: from then on the new token, at once. */
  replaced r = {&x, a};
  run_until(&x, token_replaced, &r, "the refreshed token");
  t = cached(&x);
  assert_ptr_not_equal(t, a);
  assert_string_equal(t->access_token, "tok-2");
  assert_int_equal(t->obtained_ms, T0 + 456000);
  fx_token_stats st = stats(&x);
  assert_int_equal(st.requests, 2);
  assert_int_equal(st.waits, 1); /* only the very first request waited */
  assert_int_equal(atomic_load(&requests), 2);
  fx_token_release(t);
  fx_token_release(a);
  close_ctx(&x);
}

/* A token endpoint claiming the largest lifetime JSON can say: the token is
 * used for a day at most (FX_TOKEN_MAX_EXPIRES_IN_S), refreshed ahead at its
 * percentage of that day; no millisecond arithmetic wraps into a token that
 * is stale at once or refreshed on every request. */
static void a_huge_lifetime_is_a_day(void **state) {
  (void)state;
  ctx x;
  open_ctx(&x, 9223372036854775807L, 80);
  fx_token *a = fetched(&x);
  assert_int_equal(a->expires_in, FX_TOKEN_MAX_EXPIRES_IN_S);
  const uint64_t day_ms = (uint64_t)FX_TOKEN_MAX_EXPIRES_IN_S * 1000u;
  at(T0 + 1);
  fx_token *t = cached(&x);
  assert_ptr_equal(t, a);
  fx_token_release(t);
  at(T0 + day_ms * 80 / 100 - 1); /* not yet refreshed ahead */
  t = cached(&x);
  assert_ptr_equal(t, a);
  fx_token_release(t);
  assert_int_equal(stats(&x).requests, 1);
  at(T0 + day_ms * 80 / 100); /* 80% of the day: one refresh starts */
  t = cached(&x);
  assert_ptr_equal(t, a);
  fx_token_release(t);
  assert_int_equal(stats(&x).requests, 2);
  replaced r = {&x, a};
  run_until(&x, token_replaced, &r, "the refreshed token");
  fx_token_release(a);
  close_ctx(&x);
}

/* ---- 401 ------------------------------------------------------------------------ */

static void a_401_drops_exactly_the_rejected_token(void **state) {
  (void)state;
  ctx x;
  open_ctx(&x, 570, 80);
  fx_token *a = fetched(&x);
  fx_token_cache_invalidate(x.c, TENANT, NULL); /* nothing named: nothing dropped */
  fx_token *t = cached(&x);
  fx_token_release(t);
  fx_token_cache_invalidate(x.c, TENANT, a);
  assert_int_equal(stats(&x).invalidated, 1);
  fx_token *b = fetched(&x);
  assert_ptr_not_equal(b, a);
  /* A request sent with a before the refresh comes back 401 now: b stays. */
  fx_token_cache_invalidate(x.c, TENANT, a);
  t = cached(&x);
  assert_ptr_equal(t, b);
  fx_token_release(t);
  assert_int_equal(stats(&x).invalidated, 1);
  assert_int_equal(atomic_load(&requests), 2);
  /* b itself rejected: dropped, the next caller waits for c. */
  fx_token_cache_invalidate(x.c, TENANT, b);
  fx_token *c = fetched(&x);
  assert_string_equal(c->access_token, "tok-3");
  assert_int_equal(stats(&x).invalidated, 2);
  fx_token_release(a);
  fx_token_release(b);
  fx_token_release(c);
  close_ctx(&x);
}

/* ---- single flight ----------------------------------------------------------------- */

static void one_request_for_many_waiters(void **state) {
  (void)state;
  ctx x;
  open_ctx(&x, 570, 80);
  enum { N = 50 };
  waiter ws[N];
  memset(ws, 0, sizeof ws);
  for (int i = 0; i < N; i++) {
    fx_token *tok = NULL;
    fx_auth_error e;
    assert_int_equal(fx_token_get(x.c, &x.lp, TENANT, on_token, &ws[i], &tok, &e),
                     FX_TOKEN_PENDING);
  }
  for (int i = 0; i < N; i++) wait_for(&x, &ws[i]);
  for (int i = 0; i < N; i++) {
    assert_int_equal(ws[i].done, 1);
    assert_ptr_equal(ws[i].tok, ws[0].tok);
    fx_token_release(ws[i].tok);
  }
  assert_int_equal(atomic_load(&requests), 1);
  fx_token_stats st = stats(&x);
  assert_int_equal(st.requests, 1);
  assert_int_equal(st.waits, N);
  close_ctx(&x);
}

/* ---- reconfiguration ---------------------------------------------------------------- */

static void a_reload_during_a_request_discards_its_answer(void **state) {
  (void)state;
  ctx x;
  open_ctx(&x, 570, 80);
  waiter w = {0};
  fx_token *tok = NULL;
  fx_auth_error e;
  assert_int_equal(fx_token_get(x.c, &x.lp, TENANT, on_token, &w, &tok, &e), FX_TOKEN_PENDING);
  /* The operator reloads with fewer scopes while the request is on the wire. */
  set_tenant(&x, "system/Patient.read");
  wait_for(&x, &w);
  assert_null(w.tok);
  assert_int_equal(w.err.err.code, FX_ETRANSIENT);
  assert_non_null(strstr(w.err.err.msg, "reconfigured"));
  /* The answer to the old question was not kept: the next caller asks again. */
  fx_token *t = fetched(&x);
  assert_string_equal(t->scope, "system/Patient.read");
  assert_int_equal(atomic_load(&requests), 2);
  fx_token_release(t);
  close_ctx(&x);
}

/* ---- backoff ----------------------------------------------------------------------- */

/* Fails the token request the cache makes now; returns the backoff it then
 * reports to callers (they fail at once, without a request). */
static long failed_attempt(ctx *x) {
  waiter w = {0};
  fx_token *tok = NULL;
  fx_auth_error e;
  int before = atomic_load(&requests);
  assert_int_equal(fx_token_get(x->c, &x->lp, TENANT, on_token, &w, &tok, &e), FX_TOKEN_PENDING);
  wait_for(x, &w);
  assert_null(w.tok);
  assert_int_equal(w.err.err.code, FX_ETRANSIENT);
  assert_int_equal(atomic_load(&requests), before + 1);
  assert_int_equal(fx_token_get(x->c, &x->lp, TENANT, on_token, NULL, &tok, &e), FX_ETRANSIENT);
  assert_non_null(strstr(e.err.msg, "503"));
  assert_int_equal(atomic_load(&requests), before + 1);
  return e.retry_after_ms;
}

static void failures_back_off(void **state) {
  (void)state;
  ctx x;
  open_ctx(&x, 570, 80);
  atomic_store(&fail_status, 503);
  uint64_t now = T0;
  /* backoff_min_ms 1000: half fixed, half jitter, so 500..1000 ms, then doubling. */
  long wait = failed_attempt(&x);
  assert_true(wait >= 500 && wait <= 1000);
  at(now + (uint64_t)wait - 1);
  fx_token *tok = NULL;
  fx_auth_error e;
  assert_int_equal(fx_token_get(x.c, &x.lp, TENANT, on_token, NULL, &tok, &e), FX_ETRANSIENT);
  assert_int_equal(e.retry_after_ms, 1);
  assert_int_equal(atomic_load(&requests), 1);
  now += (uint64_t)wait;
  at(now);
  wait = failed_attempt(&x);
  assert_true(wait >= 1000 && wait <= 2000);
  /* The endpoint recovers: the first attempt after the backoff gets a token. */
  atomic_store(&fail_status, 0);
  now += (uint64_t)wait;
  at(now);
  fx_token *t = fetched(&x);
  assert_string_equal(t->access_token, "tok-3");
  fx_token_stats st = stats(&x);
  assert_int_equal(st.failures, 2);
  assert_int_equal(st.requests, 3);
  fx_token_release(t);
  close_ctx(&x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(margin_is_a_tenth_of_a_short_lifetime),
      cmocka_unit_test(margin_is_at_most_ten_seconds),
      cmocka_unit_test(refreshes_ahead_while_serving_the_current_token),
      cmocka_unit_test(a_huge_lifetime_is_a_day),
      cmocka_unit_test(a_401_drops_exactly_the_rejected_token),
      cmocka_unit_test(one_request_for_many_waiters),
      cmocka_unit_test(a_reload_during_a_request_discards_its_answer),
      cmocka_unit_test(failures_back_off),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
