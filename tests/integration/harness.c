#include "harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jwks.h"

static void write_jwks(fx_key *key, const char *path) {
  fx_keyset one = {key, 1};
  fx_err err = {0};
  json_t *jwks = fx_jwks_build(&one, &err);
  assert_non_null(jwks);
  assert_int_equal(json_dump_file(jwks, path, 0), 0);
  json_decref(jwks);
}

void h_open(harness *h, const harness_opts *o) {
  memset(h, 0, sizeof *h);
  fx_alg alg = o->alg ? o->alg : FX_ALG_ES384;
  h->dir = fx_test_tmpdir();
  assert_non_null(h->dir);
  char key_path[512], other_path[512], jwks_path[512];
  snprintf(key_path, sizeof key_path, "%s/signing.pem", h->dir);
  snprintf(other_path, sizeof other_path, "%s/other.pem", h->dir);
  snprintf(jwks_path, sizeof jwks_path, "%s/jwks.json", h->dir);
  fx_err err = {0};
  assert_int_equal(fx_key_generate(alg, 2048, key_path, &err), 0);
  h->keys.keys = calloc(1, sizeof(fx_key));
  h->keys.n = 1;
  assert_int_equal(fx_key_load(key_path, FX_ALG_NONE, NULL, &h->keys.keys[0], &err), 0);
  if (o->publish_other_key) {
    fx_key other;
    assert_int_equal(fx_key_generate(alg, 2048, other_path, &err), 0);
    assert_int_equal(fx_key_load(other_path, FX_ALG_NONE, NULL, &other, &err), 0);
    write_jwks(&other, jwks_path);
    fx_key_free(&other);
  } else {
    write_jwks(&h->keys.keys[0], jwks_path);
  }

  char sim_cfg[4096];
  snprintf(sim_cfg, sizeof sim_cfg,
           "{\"seed\":7,\"tenants\":[{\"id\":\"" H_TENANT "\",\"sandbox\":true%s%s,"
           "\"clients\":[{\"client_id\":\"" H_CLIENT "\",\"jwks_file\":\"%s\",\"scopes\":%s}]}]}",
           o->sim_tenant_json ? "," : "", o->sim_tenant_json ? o->sim_tenant_json : "",
           jwks_path,
           o->client_scopes ? o->client_scopes
                            : "[\"system/Patient.read\",\"system/Observation.read\"]");
  assert_int_equal(fx_sim_start(&h->sim, sim_cfg), 0);

  char endpoint[512] = "";
  if (o->token_endpoint)
    snprintf(endpoint, sizeof endpoint, ",\"token_endpoint\":\"%s%s\"", h->sim.url,
             o->token_endpoint);
  char cfg[4096];
  snprintf(cfg, sizeof cfg,
           "{\"tenants\":[{\"id\":\"" H_TENANT "\",\"environment\":\"sandbox\","
           "\"fhir_base\":\"%s/r4/" H_TENANT "\",\"client_id\":\"%s\"%s,"
           "\"scopes\":[\"system/Patient.read\",\"system/Observation.read\"]}],"
           "\"keys\":[{\"path\":\"signing.pem\"}],"
           "\"auth\":{\"backoff_min_ms\":200,\"backoff_max_ms\":1000}%s%s}",
           h->sim.url, o->client_id ? o->client_id : H_CLIENT, endpoint,
           o->http_json ? ",\"http\":" : "", o->http_json ? o->http_json : "");
  if (fx_config_parse(cfg, h->dir, &h->cfg, &err) != 0) fail_msg("config: %s", err.msg);
  assert_int_equal(fx_token_cache_new(&h->keys, &h->cfg->auth, &h->tokens, &err), 0);
  assert_int_equal(fx_token_cache_set_tenant(h->tokens, &h->cfg->tenants[0],
                                             "system/Patient.read system/Observation.read", &err),
                   0);
  uv_loop_init(&h->uv);
  assert_int_equal(fx_loop_init(&h->lp, &h->uv, &h->cfg->http, &err), 0);
}

void h_close(harness *h) {
  fx_loop_close(&h->lp);
  uv_run(&h->uv, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&h->uv), 0);
  fx_token_cache_free(h->tokens);
  fx_config_free(h->cfg);
  fx_keyset_free(&h->keys);
  assert_int_equal(fx_sim_stop_status(&h->sim), 0); /* the simulator shut down cleanly */
  fx_test_rmtree(h->dir);
  free(h->dir);
}

/* Runs the loop until *done, failing the test with what can be seen if that
 * takes longer than 20 s (instead of hanging until ctest's timeout). The
 * callbacks that set *done call uv_stop: UV_RUN_ONCE is not enough, because
 * a completion delivered from a timer callback is followed by a blocking
 * poll in the same iteration. */
static void on_watchdog(uv_timer_t *t) {
  *(int *)t->data = 1;
  uv_stop(t->loop);
}
static void on_dog_closed(uv_handle_t *t) { t->data = NULL; }

static void run_until(harness *h, const int *done, const char *what) {
  uv_timer_t dog;
  int fired = 0;
  uv_timer_init(&h->uv, &dog);
  dog.data = &fired;
  uv_timer_start(&dog, on_watchdog, 20000, 0);
  while (!*done && !fired) uv_run(&h->uv, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&dog, on_dog_closed);
  while (dog.data) uv_run(&h->uv, UV_RUN_NOWAIT); /* dog lives on this stack frame */
  if (fired) {
    fx_token_stats st = {0};
    fx_token_cache_stats(h->tokens, H_TENANT, &st);
    fail_msg("%s: no answer after 20 s; http in flight %zu; token requests %lu hits %lu waits %lu;"
             " sim: token_requests %ld fhir_requests %ld",
             what, fx_http_inflight(h->lp.http), (unsigned long)st.requests,
             (unsigned long)st.hits, (unsigned long)st.waits, h_counter(h, "token_requests"),
             h_counter(h, "fhir_requests"));
  }
}

typedef struct wait_tok {
  uv_loop_t *loop;
  int done;
  fx_token *tok;
  fx_auth_error e;
} wait_tok;

static void on_tok(fx_token *tok, const fx_auth_error *e, void *arg) {
  wait_tok *w = arg;
  w->done = 1;
  uv_stop(w->loop);
  if (tok) w->tok = fx_token_retain(tok);
  else w->e = *e;
}

int h_token(harness *h, fx_token **tok, fx_auth_error *e, int *waited) {
  wait_tok w = {.loop = &h->uv};
  int rc = fx_token_get(h->tokens, &h->lp, H_TENANT, on_tok, &w, tok, e);
  if (waited) *waited = rc == FX_TOKEN_PENDING;
  if (rc != FX_TOKEN_PENDING) return rc;
  run_until(h, &w.done, "token");
  *tok = w.tok;
  if (!w.tok) *e = w.e;
  return w.tok ? 0 : w.e.err.code;
}

static void on_read(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  h_read *r = arg;
  r->done = 1;
  uv_stop(r->loop);
  if (ae) {
    r->failed_auth = 1;
    r->ae = *ae;
    return;
  }
  r->result = res->result;
  r->status = res->status;
  r->body = strdup(res->body);
}

void h_get(harness *h, const char *path, h_read *out) {
  memset(out, 0, sizeof *out);
  out->loop = &h->uv;
  char url[1024];
  snprintf(url, sizeof url, "%s/%s", h->cfg->tenants[0].fhir_base, path);
  fx_fhir_request req = {.tenant = H_TENANT, .scope = {.base = h->cfg->tenants[0].fhir_base},
                         .url = url};
  fx_err err = {0};
  assert_int_equal(fx_fhir_get(&h->lp, h->tokens, &req, on_read, out, &err), 0);
  assert_int_equal(out->done, 0); /* never called back before fx_fhir_get returns */
  run_until(h, &out->done, path);
}

void h_read_free(h_read *r) { free(r->body); }

long h_counter(harness *h, const char *name) { return fx_sim_counter(&h->sim, H_TENANT, name); }
