/* SMART Backend Services against the Cerner simulator: token + read for both
 * algorithms, every rejection reason mapped to the operator's hint, one token
 * request for 1,000 concurrent waiters, refresh ahead of expiry, the 401 rule,
 * and backoff on token endpoint failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/b64.h"
#include "common/jwt.h"
#include "harness.h"

#define TOKEN_PATH "/tenants/" H_TENANT "/protocols/oauth2/profiles/smart-v1/token"

/* The token cache's clock, set by refresh_before_expiry. common/token.c reads
 * fx_now_ms(); this test is linked with -Wl,--wrap=fx_now_ms
 * (tests/integration/CMakeLists.txt), so those calls land here and get the
 * test's time while one is set (0: the real clock, for every other test). */
uint64_t __real_fx_now_ms(void);
uint64_t __wrap_fx_now_ms(void);
static _Atomic uint64_t fake_now;
uint64_t __wrap_fx_now_ms(void) {
  uint64_t now = atomic_load(&fake_now);
  return now ? now : __real_fx_now_ms();
}

static void token_and_read(fx_alg alg) {
  harness h;
  harness_opts o = {.alg = alg};
  h_open(&h, &o);
  fx_token *tok = NULL;
  fx_auth_error e;
  int waited = 0;
  int rc = h_token(&h, &tok, &e, &waited);
  if (rc) fail_msg("token: %s", e.err.msg);
  assert_true(waited);
  assert_string_equal(tok->scope, "system/Patient.read system/Observation.read");
  assert_int_equal(tok->expires_in, 570);
  fx_token_release(tok);
  /* The endpoint came from discovery, once. */
  assert_int_equal(h_counter(&h, "discovery_requests"), 1);
  assert_int_equal(h_counter(&h, "token_requests"), 1);

  h_read r;
  h_get(&h, "Patient/12724065", &r);
  assert_int_equal(r.status, 200);
  json_t *p = json_loads(r.body, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(p, "birthDate")), "1990-09-15");
  assert_non_null(strstr(r.body, "WILMA"));
  json_decref(p);
  h_read_free(&r);
  /* The cached token served the read: still one token request. */
  assert_int_equal(h_counter(&h, "token_requests"), 1);
  h_close(&h);
}

static void es384_token_and_read(void **state) {
  (void)state;
  token_and_read(FX_ALG_ES384);
}

static void rs384_token_and_read(void **state) {
  (void)state;
  token_and_read(FX_ALG_RS384);
}

/* ---- rejections ---------------------------------------------------------- */

/* Signs header.claims with key as given (no validation), so each assertion
 * can be wrong in exactly one way. */
static char *craft(const fx_key *key, json_t *header, json_t *claims) {
  char *h = json_dumps(header, JSON_COMPACT), *c = json_dumps(claims, JSON_COMPACT);
  char *h64 = fx_b64url_encode_alloc((uint8_t *)h, strlen(h));
  char *c64 = fx_b64url_encode_alloc((uint8_t *)c, strlen(c));
  size_t n = strlen(h64) + strlen(c64) + 2;
  char *input = malloc(n);
  snprintf(input, n, "%s.%s", h64, c64);
  char *sig = NULL;
  fx_err err = {0};
  assert_int_equal(fx_jws_sign(key, input, &sig, &err), 0);
  size_t m = n + strlen(sig) + 1;
  char *jwt = malloc(m);
  snprintf(jwt, m, "%s.%s", input, sig);
  free(h), free(c), free(h64), free(c64), free(input), free(sig);
  json_decref(header);
  json_decref(claims);
  return jwt;
}

/* POSTs a token request with assertion and runs the answer through the same
 * parser `fhirx token` uses; returns the operator's error. */
static int exchange(harness *h, const char *assertion, fx_auth_error *e) {
  char *scope = "system/Patient.read";
  size_t n = strlen(assertion) + 512;
  char *body = malloc(n);
  snprintf(body, n,
           "grant_type=client_credentials&scope=system%%2FPatient.read&client_assertion_type=urn"
           "%%3Aietf%%3Aparams%%3Aoauth%%3Aclient-assertion-type%%3Ajwt-bearer&client_assertion=%s",
           assertion);
  char url[512];
  snprintf(url, sizeof url, "%s" TOKEN_PATH, h->sim.url);
  const char *hdrs[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  fxt_http_resp resp;
  assert_int_equal(fxt_http("POST", url, hdrs, body, &resp), 0);
  fx_smart_client c = {.tenant = H_TENANT, .client_id = H_CLIENT, .token_endpoint = url,
                       .scope = scope, .key = &h->keys.keys[0]};
  fx_token_grant g;
  int rc = fx_smart_parse_token_response(&c, resp.status, NULL, resp.body, &g, e);
  fx_token_grant_clear(&g);
  fxt_http_resp_free(&resp);
  free(body);
  return rc;
}

static json_t *good_claims(const char *aud, const char *jti) {
  time_t now = time(NULL);
  return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", H_CLIENT, "sub", H_CLIENT, "aud", aud,
                   "exp", (json_int_t)(now + 200), "iat", (json_int_t)now, "jti", jti);
}

static json_t *good_header(const fx_key *k) {
  return json_pack("{s:s, s:s, s:s}", "alg", fx_alg_name(k->alg), "kid", k->kid, "typ", "JWT");
}

typedef struct rejection {
  const char *reason, *hint;
} rejection;

static void expect_rejection(harness *h, char *jwt, const char *reason, const char *hint) {
  fx_auth_error e;
  int rc = exchange(h, jwt, &e);
  free(jwt);
  if (rc != FX_EAUTH) fail_msg("%s: expected a refusal, got %d (%s)", reason, rc, e.err.msg);
  assert_string_equal(e.oauth_error, "invalid_client");
  if (strcmp(e.reason, reason) != 0) fail_msg("expected reason %s, got %s", reason, e.reason);
  if (!strstr(e.err.msg, hint)) fail_msg("%s: hint '%s' missing from: %s", reason, hint, e.err.msg);
  char counter[96];
  snprintf(counter, sizeof counter, "token_rejections.%s", reason);
  assert_true(h_counter(h, counter) >= 1);
}

static void every_rejection_reason(void **state) {
  (void)state;
  harness h;
  harness_opts o = {0};
  h_open(&h, &o);
  const fx_key *k = &h.keys.keys[0];
  char aud[512];
  snprintf(aud, sizeof aud, "%s" TOKEN_PATH, h.sim.url);

  expect_rejection(&h, strdup("not.a-jwt"), "malformed-assertion", "JWKS");
  json_t *hs = good_header(k);
  json_object_set_new(hs, "alg", json_string("HS256"));
  expect_rejection(&h, craft(k, hs, good_claims(aud, "j1")), "unsupported-algorithm",
                   "algorithm");
  json_t *c = good_claims(aud, "j2");
  json_object_set_new(c, "iss", json_string("someone-else"));
  json_object_set_new(c, "sub", json_string("someone-else"));
  expect_rejection(&h, craft(k, good_header(k), c), "unknown-client", "client_id");
  c = good_claims(aud, "j3");
  json_object_set_new(c, "sub", json_string("other"));
  expect_rejection(&h, craft(k, good_header(k), c), "sub-mismatch", "iss and sub");
  json_t *kh = good_header(k);
  json_object_set_new(kh, "kid", json_string("no-such-kid"));
  expect_rejection(&h, craft(k, kh, good_claims(aud, "j4")), "unknown-kid", "fhirx keys jwks");
  char *jwt = craft(k, good_header(k), good_claims(aud, "j5"));
  jwt[strlen(jwt) - 5] = jwt[strlen(jwt) - 5] == 'A' ? 'B' : 'A'; /* break the signature */
  expect_rejection(&h, jwt, "invalid-signature", "same kid");
  expect_rejection(&h, craft(k, good_header(k), good_claims("https://elsewhere/token", "j6")),
                   "invalid-audience", "token endpoint exactly");
  c = good_claims(aud, "j7");
  json_object_del(c, "exp");
  expect_rejection(&h, craft(k, good_header(k), c), "missing-expiration", "exp");
  c = good_claims(aud, "j8");
  json_object_set_new(c, "exp", json_integer((json_int_t)time(NULL) - 60));
  expect_rejection(&h, craft(k, good_header(k), c), "expired", "clock");
  c = good_claims(aud, "j9");
  json_object_set_new(c, "exp", json_integer((json_int_t)time(NULL) + 600));
  expect_rejection(&h, craft(k, good_header(k), c), "expiration-too-far", "clock");
  c = good_claims(aud, "j10");
  json_object_del(c, "jti");
  expect_rejection(&h, craft(k, good_header(k), c), "missing-jti", "JWKS");
  /* A valid assertion works once; the same jti again is refused. */
  fx_auth_error e;
  jwt = craft(k, good_header(k), good_claims(aud, "j11"));
  assert_int_equal(exchange(&h, jwt, &e), 0);
  expect_rejection(&h, jwt, "jti-replayed", "new assertion");
  h_close(&h);
}

/* Mistakes an operator makes, seen through the token cache as `fhirx token` sees them. */
static void operator_mistakes(void **state) {
  (void)state;
  fx_token *tok = NULL;
  fx_auth_error e;
  harness h;

  /* The JWKS on "Cerner Central" is not the one our key belongs to. */
  harness_opts stale_jwks = {.publish_other_key = 1};
  h_open(&h, &stale_jwks);
  assert_int_equal(h_token(&h, &tok, &e, NULL), FX_EAUTH);
  assert_string_equal(e.reason, "unknown-kid");
  assert_non_null(strstr(e.err.msg, h.keys.keys[0].kid)); /* names the kid we signed with */
  assert_non_null(strstr(e.err.msg, "Cerner Central"));
  h_close(&h);

  /* The client_id does not match Code Console. */
  harness_opts wrong_client = {.client_id = "typo-app"};
  h_open(&h, &wrong_client);
  assert_int_equal(h_token(&h, &tok, &e, NULL), FX_EAUTH);
  assert_string_equal(e.reason, "unknown-client");
  assert_non_null(strstr(e.err.msg, "typo-app"));
  assert_non_null(strstr(e.err.msg, "Code Console"));
  h_close(&h);

  /* None of the scopes were ticked in Code Console. */
  harness_opts no_scope = {.client_scopes = "[\"system/Encounter.read\"]"};
  h_open(&h, &no_scope);
  assert_int_equal(h_token(&h, &tok, &e, NULL), FX_EAUTH);
  assert_string_equal(e.oauth_error, "invalid_scope");
  assert_non_null(strstr(e.err.msg, "system/Patient.read system/Observation.read"));
  assert_non_null(strstr(e.err.msg, "Code Console"));
  h_close(&h);

  /* Some were: the token carries fewer scopes, and reading a type whose
   * scope is missing is a 403 the server explains. */
  harness_opts partial = {.client_scopes = "[\"system/Observation.read\"]"};
  h_open(&h, &partial);
  assert_int_equal(h_token(&h, &tok, &e, NULL), 0);
  assert_string_equal(tok->scope, "system/Observation.read");
  char *missing = fx_scope_missing("system/Patient.read system/Observation.read", tok->scope);
  assert_string_equal(missing, "system/Patient.read");
  free(missing);
  fx_token_release(tok);
  h_read r;
  h_get(&h, "Patient/12724065", &r);
  assert_int_equal(r.status, 403);
  h_read_free(&r);
  h_close(&h);

  /* The server cannot verify our algorithm: discovery says so before any token request. */
  harness_opts rs_only = {.sim_tenant_json = "\"signing_algs\":[\"RS384\"]"};
  h_open(&h, &rs_only);
  assert_int_equal(h_token(&h, &tok, &e, NULL), FX_EUNSUPPORTED);
  assert_non_null(strstr(e.err.msg, "ES384"));
  assert_int_equal(h_counter(&h, "token_requests"), 0);
  h_close(&h);
}

/* ---- one token for a thousand waiters ------------------------------------ */

enum { THREADS = 4, PER_THREAD = 250 };

typedef struct racer {
  harness *h;
  uv_loop_t *loop;
  pthread_barrier_t *start;
  int got, failed, immediate;
  char first[128];
  int distinct;
} racer;

static void racer_cb(fx_token *tok, const fx_auth_error *e, void *arg) {
  racer *r = arg;
  (void)e;
  if (!tok) r->failed++;
  else r->got++;
  if (r->got + r->failed == PER_THREAD) uv_stop(r->loop);
  if (!tok) return;
  if (!r->first[0]) snprintf(r->first, sizeof r->first, "%s", tok->access_token);
  else if (strcmp(r->first, tok->access_token) != 0) r->distinct++;
}

static void *race(void *arg) {
  racer *r = arg;
  uv_loop_t uv;
  fx_loop lp;
  fx_err err = {0};
  /* No cmocka asserts off the main thread: failures are counted and checked there. */
  uv_loop_init(&uv);
  r->loop = &uv;
  if (fx_loop_init(&lp, &uv, &r->h->cfg->http, &err) != 0) {
    r->failed = PER_THREAD;
    pthread_barrier_wait(r->start);
    return NULL;
  }
  pthread_barrier_wait(r->start);
  for (int i = 0; i < PER_THREAD; i++) {
    fx_token *tok = NULL;
    fx_auth_error e;
    int rc = fx_token_get(r->h->tokens, &lp, H_TENANT, racer_cb, r, &tok, &e);
    if (rc == 0) {
      r->immediate++;
      racer_cb(tok, NULL, r);
      fx_token_release(tok);
    } else if (rc < 0) {
      r->failed++;
    }
  }
  while (r->got + r->failed < PER_THREAD) uv_run(&uv, UV_RUN_DEFAULT);
  fx_loop_close(&lp);
  uv_run(&uv, UV_RUN_DEFAULT);
  if (uv_loop_close(&uv) != 0) r->failed++;
  return NULL;
}

static void thousand_waiters_one_request(void **state) {
  (void)state;
  harness h;
  harness_opts o = {0};
  h_open(&h, &o);
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, THREADS);
  racer rs[THREADS];
  pthread_t th[THREADS];
  memset(rs, 0, sizeof rs);
  for (int i = 0; i < THREADS; i++) {
    rs[i].h = &h;
    rs[i].start = &start;
    pthread_create(&th[i], NULL, race, &rs[i]);
  }
  int total = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(rs[i].failed, 0);
    assert_int_equal(rs[i].distinct, 0);
    assert_string_equal(rs[i].first, rs[0].first); /* everyone got the same token */
    total += rs[i].got;
  }
  pthread_barrier_destroy(&start);
  assert_int_equal(total, THREADS * PER_THREAD);
  assert_int_equal(h_counter(&h, "token_requests"), 1);
  assert_int_equal(h_counter(&h, "discovery_requests"), 1);
  fx_token_stats st;
  assert_int_equal(fx_token_cache_stats(h.tokens, H_TENANT, &st), 0);
  assert_int_equal(st.requests, 1);
  assert_int_equal(st.hits + st.waits, THREADS * PER_THREAD);
  h_close(&h);
}

/* ---- refresh ahead ------------------------------------------------------- */

/* Watches the cache while the loop runs: stops the loop once the cached token
 * is no longer `first` (the background refresh landed), or at the watchdog. */
typedef struct refresh_watch {
  harness *h;
  const fx_token *first;
  int fresh, fired, open;
} refresh_watch;

static void on_token_unused(fx_token *tok, const fx_auth_error *e, void *arg) {
  (void)tok, (void)e, (void)arg;
}

/* Runs before each poll, so a refresh completed by a timer is seen before the
 * loop would block again. */
static void on_prepare_look(uv_prepare_t *p) {
  refresh_watch *w = p->data;
  fx_token *t = NULL;
  fx_auth_error e;
  if (fx_token_get(w->h->tokens, &w->h->lp, H_TENANT, on_token_unused, NULL, &t, &e) != 0) return;
  w->fresh = t != w->first;
  fx_token_release(t);
  if (w->fresh) uv_stop(p->loop);
}

static void on_watch_dog(uv_timer_t *t) {
  refresh_watch *w = t->data;
  w->fired = 1;
  uv_stop(t->loop);
}

static void on_watch_closed(uv_handle_t *h) { ((refresh_watch *)h->data)->open--; }

/* Back to the real clock, also when the test failed halfway. */
static int real_clock(void **state) {
  (void)state;
  atomic_store(&fake_now, 0);
  return 0;
}

static void refresh_before_expiry(void **state) {
  (void)state;
  harness h;
  harness_opts o = {0}; /* the simulator's tokens: expires_in 570 */
  h_open(&h, &o);
  /* The cache runs on the test's clock; the simulator checks tokens on its own
   * (real) clock, so every token stays valid there while the test moves time. */
  const uint64_t t0 = 1000000;
  atomic_store(&fake_now, t0);
  fx_token *first = NULL, *t = NULL;
  fx_auth_error e;
  int waited;
  assert_int_equal(h_token(&h, &first, &e, &waited), 0);
  assert_true(waited);
  assert_int_equal(first->expires_in, 570);
  const uint64_t life = 570000, refresh_at = t0 + life * 80 / 100, usable_until = t0 + life - 10000;
  fx_token_stats st;

  /* Until 80% of the lifetime: the cached token, no refresh. */
  atomic_store(&fake_now, refresh_at - 1);
  assert_int_equal(h_token(&h, &t, &e, &waited), 0);
  assert_false(waited);
  assert_ptr_equal(t, first);
  fx_token_release(t);
  assert_int_equal(fx_token_cache_stats(h.tokens, H_TENANT, &st), 0);
  assert_int_equal(st.requests, 1);

  /* At 80%: the caller still gets the current token at once, and a refresh starts. */
  atomic_store(&fake_now, refresh_at);
  assert_int_equal(h_token(&h, &t, &e, &waited), 0);
  assert_false(waited);
  assert_ptr_equal(t, first);
  fx_token_release(t);
  assert_int_equal(fx_token_cache_stats(h.tokens, H_TENANT, &st), 0);
  assert_int_equal(st.requests, 2);

  /* Run the loop until the refresh lands (no caller waits for it: watch the cache). */
  refresh_watch w = {.h = &h, .first = first, .open = 2};
  uv_prepare_t look;
  uv_timer_t dog;
  uv_prepare_init(&h.uv, &look);
  uv_timer_init(&h.uv, &dog);
  look.data = dog.data = &w;
  uv_prepare_start(&look, on_prepare_look);
  uv_timer_start(&dog, on_watch_dog, 20000, 0);
  while (!w.fresh && !w.fired) uv_run(&h.uv, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&look, on_watch_closed);
  uv_close((uv_handle_t *)&dog, on_watch_closed);
  while (w.open) uv_run(&h.uv, UV_RUN_NOWAIT); /* both live on this stack frame */
  assert_false(w.fired);
  assert_int_equal(h_counter(&h, "token_requests"), 2);

  /* Past the first token's usable time (its last 10 s are not handed out), the new one
   * is handed out at once, and the server accepts it. */
  atomic_store(&fake_now, usable_until);
  assert_int_equal(h_token(&h, &t, &e, &waited), 0);
  assert_false(waited);
  assert_ptr_not_equal(t, first);
  assert_int_equal(h_counter(&h, "token_requests"), 2);
  char url[512], auth[256];
  snprintf(url, sizeof url, "%s/r4/" H_TENANT "/Patient/12724065", h.sim.url);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", t->access_token);
  const char *hdrs[] = {auth, NULL};
  fxt_http_resp resp;
  assert_int_equal(fxt_http("GET", url, hdrs, NULL, &resp), 0);
  assert_int_equal(resp.status, 200);
  fxt_http_resp_free(&resp);
  fx_token_release(t);
  fx_token_release(first);
  h_close(&h);
}

/* ---- 401: one refresh, one retry, never a loop ------------------------------ */

static void retry_once_after_401(void **state) {
  (void)state;
  harness h;
  harness_opts o = {0};
  h_open(&h, &o);
  h_read r;
  h_get(&h, "Patient/12724065", &r);
  assert_int_equal(r.status, 200);
  h_read_free(&r);
  /* The server forgets every token: the next read sees 401, refreshes, retries. */
  assert_int_equal(fx_sim_post_json(&h.sim, "/_sim/tenants/" H_TENANT "/settings",
                                    "{\"revoke_tokens\":true}"),
                   200);
  h_get(&h, "Patient/12724065", &r);
  assert_int_equal(r.status, 200);
  h_read_free(&r);
  assert_int_equal(h_counter(&h, "token_requests"), 2);
  assert_int_equal(h_counter(&h, "fhir_by_status.401"), 1);
  assert_int_equal(h_counter(&h, "fhir_by_status.200"), 2);

  /* A server that rejects every token gets exactly one retry. */
  assert_int_equal(fx_sim_post_json(&h.sim, "/_sim/tenants/" H_TENANT "/settings",
                                    "{\"fhir_always_401\":true}"),
                   200);
  h_get(&h, "Patient/12724065", &r);
  assert_int_equal(r.status, 401);
  h_read_free(&r);
  assert_int_equal(h_counter(&h, "fhir_by_status.401"), 3);
  assert_int_equal(h_counter(&h, "token_requests"), 3);
  fx_token_stats st;
  fx_token_cache_stats(h.tokens, H_TENANT, &st);
  assert_int_equal(st.invalidated, 2);
  h_close(&h);
}

/* ---- discovery is held to the configuration's rules (issue 13 item 10) ------- */

static void expect_discovery_refused(harness *h, const char *needle) {
  fx_token *tok = NULL;
  fx_auth_error e;
  assert_int_equal(h_token(h, &tok, &e, NULL), FX_EAUTH);
  if (!strstr(e.err.msg, needle)) fail_msg("'%s' not in '%s'", needle, e.err.msg);
  assert_non_null(strstr(e.err.msg, "tenants[].token_endpoint")); /* what to do */
  assert_non_null(strstr(e.err.msg, "SMART discovery"));
  assert_int_equal(h_counter(h, "token_requests"), 0); /* no assertion went there */
}

/* A discovered token endpoint passes the check a configured token_endpoint
 * passes (fx_config_check_url): a clean absolute URL, and https for a
 * production tenant; refused before any client assertion is sent to it. */
static void discovery_held_to_config_rules(void **state) {
  (void)state;
  harness h;
  h_open(&h, &(harness_opts){0});
  /* The server's discovery document names a token endpoint whose path
   * climbs out through an encoded dot segment. */
  char fault[1024];
  snprintf(fault, sizeof fault,
           "{\"target\":\"discovery\",\"status\":200,\"content_type\":\"application/json\","
           "\"count\":-1,\"body\":\"{\\\"token_endpoint\\\":\\\"%s/tenants/" H_TENANT
           "/protocols/oauth2/profiles/smart-v1/%%2e%%2e/token\\\"}\"}",
           h.sim.url);
  assert_int_equal(fx_sim_post_json(&h.sim, "/_sim/tenants/" H_TENANT "/faults", fault), 200);
  expect_discovery_refused(&h, "dot segment");
  h_close(&h);

  /* The same for a production tenant whose discovery names an http endpoint
   * (the simulator speaks http here, so the tenant is made production in the
   * token cache directly; configuration would refuse its http base too: the
   * point is that discovery's answer is checked on its own). */
  h_open(&h, &(harness_opts){0});
  fx_tenant_conf prod = h.cfg->tenants[0];
  prod.environment = FX_ENV_PRODUCTION;
  fx_err err = {0};
  assert_int_equal(fx_token_cache_set_tenant(h.tokens, &prod,
                                             "system/Patient.read system/Observation.read", &err),
                   0);
  expect_discovery_refused(&h, "production tenants must use https");
  assert_int_equal(h_counter(&h, "discovery_requests"), 1);
  h_close(&h);
}

/* ---- token endpoint outages ---------------------------------------------------- */

static void outages_back_off(void **state) {
  (void)state;
  harness h;
  harness_opts o = {.token_endpoint = TOKEN_PATH, .http_json = "{\"timeout_ms\":500}"};
  h_open(&h, &o);
  fx_token *tok = NULL;
  fx_auth_error e;
  assert_int_equal(fx_sim_post_json(&h.sim, "/_sim/tenants/" H_TENANT "/faults",
                                    "{\"target\":\"token\",\"status\":503,\"content_type\":"
                                    "\"text/html\",\"body\":\"<html>down</html>\",\"count\":-1}"),
                   200);
  assert_int_equal(h_token(&h, &tok, &e, NULL), FX_ETRANSIENT);
  assert_non_null(strstr(e.err.msg, "HTML"));
  assert_non_null(strstr(e.err.msg, "503"));
  /* While backing off, requests fail at once without touching the endpoint. */
  long before = h_counter(&h, "token_requests");
  for (int i = 0; i < 50; i++) {
    int waited;
    assert_int_equal(h_token(&h, &tok, &e, &waited), FX_ETRANSIENT);
    assert_false(waited);
    assert_true(e.retry_after_ms > 0);
  }
  assert_int_equal(h_counter(&h, "token_requests"), before);
  /* After the backoff, one new attempt; a slow endpoint times out as transient. */
  assert_int_equal(fx_sim_delete(&h.sim, "/_sim/tenants/" H_TENANT "/faults"), 200);
  assert_int_equal(fx_sim_post_json(&h.sim, "/_sim/tenants/" H_TENANT "/faults",
                                    "{\"target\":\"token\",\"status\":0,\"delay_ms\":1500,"
                                    "\"count\":1}"),
                   200);
  fx_test_sleep_ms(1100); /* past backoff_max_ms */
  assert_int_equal(h_token(&h, &tok, &e, NULL), FX_ETRANSIENT);
  assert_non_null(strstr(e.err.msg, "timed out"));
  fx_test_sleep_ms(1100);
  /* The endpoint is healthy again: the cache recovers by itself. */
  assert_int_equal(h_token(&h, &tok, &e, NULL), 0);
  fx_token_release(tok);
  h_close(&h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(es384_token_and_read),   cmocka_unit_test(rs384_token_and_read),
      cmocka_unit_test(every_rejection_reason), cmocka_unit_test(operator_mistakes),
      cmocka_unit_test(thousand_waiters_one_request),
      cmocka_unit_test_teardown(refresh_before_expiry, real_clock),
      cmocka_unit_test(retry_once_after_401),   cmocka_unit_test(outages_back_off),
      cmocka_unit_test(discovery_held_to_config_rules)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
