#include "common/token.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/url.h"

#define MARGIN_MAX_MS 10000u

fx_token *fx_token_retain(fx_token *t) {
  if (t) atomic_fetch_add(&t->refs, 1);
  return t;
}

void fx_token_release(fx_token *t) {
  if (!t || atomic_fetch_sub(&t->refs, 1) != 1) return;
  OPENSSL_clear_free(t->access_token, strlen(t->access_token));
  free(t->scope);
  free(t);
}

typedef struct waiter {
  struct waiter *next;
  fx_loop *lp;
  fx_token_cb cb;
  void *arg;
  fx_token *tok;
  fx_auth_error err;
} waiter;

/* A tenant's slot. Fields are guarded by the cache mutex. refs counts the
 * list's reference plus one per refresh in flight, so a tenant removed while
 * its refresh runs is freed when that refresh finishes. */
typedef struct entry {
  struct entry *next;
  int refs;
  int removed;
  uint64_t config_gen;
  char *tenant, *client_id, *fhir_base, *conf_endpoint, *scope;
  int production; /* discovery holds the token endpoint to https */
  char *endpoint; /* in use: configured, or discovered */
  fx_token *tok;
  uint64_t refresh_at, usable_until;
  int refreshing;
  waiter *waiters, *waiters_tail;
  int failures;
  uint64_t next_attempt;
  int has_err;
  fx_auth_error last_err;
  fx_token_stats stats;
} entry;

struct fx_token_cache {
  pthread_mutex_t mu;
  entry *head;
  const fx_keyset *keys;
  fx_auth_conf auth;
  uint64_t rng; /* guarded by mu */
};

/* One refresh: discovery if needed, then the token request. Runs on lp. */
typedef struct refresh {
  fx_token_cache *c;
  entry *e;
  fx_loop *lp;
  uint64_t config_gen;
  uint64_t started;
  char *tenant, *client_id, *fhir_base, *endpoint, *scope;
  int production;
} refresh;

static void entry_free(entry *e) {
  fx_token_release(e->tok);
  free(e->tenant);
  free(e->client_id);
  free(e->fhir_base);
  free(e->conf_endpoint);
  free(e->scope);
  free(e->endpoint);
  free(e);
}

static entry *find(fx_token_cache *c, const char *tenant) {
  for (entry *e = c->head; e; e = e->next)
    if (strcmp(e->tenant, tenant) == 0) return e;
  return NULL;
}

int fx_token_cache_new(const fx_keyset *keys, const fx_auth_conf *auth, fx_token_cache **out,
                       fx_err *err) {
  *out = NULL;
  if (!fx_keyset_signer(keys))
    return fx_err_set(err, FX_EINVAL, "no signing key configured: add one under keys[]");
  fx_token_cache *c = calloc(1, sizeof *c);
  if (!c) return fx_err_set(err, FX_ENOMEM, "out of memory");
  pthread_mutex_init(&c->mu, NULL);
  c->keys = keys;
  if (auth) {
    c->auth = *auth;
  } else {
    c->auth.assertion_lifetime_s = 240;
    c->auth.refresh_at_percent = 80;
    c->auth.backoff_min_ms = 1000;
    c->auth.backoff_max_ms = 60000;
  }
  c->rng = uv_hrtime() | 1;
  *out = c;
  return 0;
}

void fx_token_cache_free(fx_token_cache *c) {
  if (!c) return;
  while (c->head) {
    entry *e = c->head;
    c->head = e->next;
    entry_free(e);
  }
  pthread_mutex_destroy(&c->mu);
  free(c);
}

static int str_eq(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int fx_token_cache_set_tenant(fx_token_cache *c, const fx_tenant_conf *t, const char *scope,
                              fx_err *err) {
  pthread_mutex_lock(&c->mu);
  entry *e = find(c, t->id);
  if (e && str_eq(e->client_id, t->client_id) && str_eq(e->fhir_base, t->fhir_base) &&
      str_eq(e->conf_endpoint, t->token_endpoint) && str_eq(e->scope, scope) &&
      e->production == (t->environment == FX_ENV_PRODUCTION)) {
    pthread_mutex_unlock(&c->mu);
    return 0; /* unchanged: keep the token */
  }
  int fresh = !e;
  if (fresh) {
    e = calloc(1, sizeof *e);
    if (!e || !(e->tenant = strdup(t->id))) goto oom;
    e->refs = 1;
  }
  char *client_id = strdup(t->client_id), *base = strdup(t->fhir_base);
  char *conf_ep = dup_or_null(t->token_endpoint), *ep = dup_or_null(t->token_endpoint);
  char *sc = strdup(scope);
  if (!client_id || !base || !sc || (t->token_endpoint && (!conf_ep || !ep))) {
    free(client_id), free(base), free(conf_ep), free(ep), free(sc);
    goto oom;
  }
  free(e->client_id), free(e->fhir_base), free(e->conf_endpoint), free(e->endpoint);
  free(e->scope);
  e->client_id = client_id, e->fhir_base = base, e->conf_endpoint = conf_ep, e->endpoint = ep;
  e->scope = sc;
  e->production = t->environment == FX_ENV_PRODUCTION;
  /* A changed client, endpoint or scope set invalidates what we hold. */
  fx_token_release(e->tok);
  e->tok = NULL;
  e->config_gen++;
  e->has_err = 0;
  e->failures = 0;
  e->next_attempt = 0;
  if (fresh) {
    e->next = c->head;
    c->head = e;
  }
  pthread_mutex_unlock(&c->mu);
  return 0;
oom:
  if (fresh && e) entry_free(e);
  pthread_mutex_unlock(&c->mu);
  return fx_err_set(err, FX_ENOMEM, "out of memory");
}

int fx_token_cache_remove_tenant(fx_token_cache *c, const char *tenant) {
  pthread_mutex_lock(&c->mu);
  entry **pp = &c->head;
  while (*pp && strcmp((*pp)->tenant, tenant) != 0) pp = &(*pp)->next;
  entry *e = *pp;
  if (!e) {
    pthread_mutex_unlock(&c->mu);
    return FX_ENOTFOUND;
  }
  *pp = e->next;
  e->removed = 1;
  fx_token_release(e->tok);
  e->tok = NULL;
  int last = --e->refs == 0;
  pthread_mutex_unlock(&c->mu);
  if (last) entry_free(e);
  return 0;
}

static uint64_t backoff_ms(fx_token_cache *c, int failures) {
  uint64_t d = (uint64_t)c->auth.backoff_min_ms;
  for (int i = 1; i < failures && d < (uint64_t)c->auth.backoff_max_ms; i++) d *= 2;
  if (d > (uint64_t)c->auth.backoff_max_ms) d = (uint64_t)c->auth.backoff_max_ms;
  /* xorshift64: jitter only, no secrecy needed. Half fixed, half random, so
   * a tenant never retries immediately yet many workers spread out. */
  c->rng ^= c->rng << 13, c->rng ^= c->rng >> 7, c->rng ^= c->rng << 17;
  return d / 2 + (d > 1 ? c->rng % (d / 2 + 1) : 0);
}

static void deliver(void *arg) {
  waiter *w = arg;
  w->cb(w->tok, w->tok ? NULL : &w->err, w->arg);
  fx_token_release(w->tok);
  free(w);
}

static void refresh_free(refresh *r) {
  free(r->tenant);
  free(r->client_id);
  free(r->fhir_base);
  free(r->endpoint);
  free(r->scope);
  free(r);
}

/* Ends a refresh with a grant or an error and wakes every waiter on its own loop. */
static void finish(refresh *r, fx_token_grant *grant, const fx_auth_error *ae) {
  fx_token_cache *c = r->c;
  fx_token *tok = NULL;
  fx_auth_error err;
  memset(&err, 0, sizeof err);
  if (grant) {
    tok = calloc(1, sizeof *tok);
    if (tok) {
      atomic_init(&tok->refs, 1);
      tok->access_token = grant->access_token;
      tok->scope = grant->scope;
      grant->access_token = grant->scope = NULL;
      tok->expires_in = grant->expires_in;
      tok->obtained_ms = r->started;
    } else {
      err.err.code = FX_ENOMEM;
      snprintf(err.err.msg, sizeof err.err.msg, "out of memory storing a token");
    }
  } else {
    err = *ae;
  }

  pthread_mutex_lock(&c->mu);
  entry *e = r->e;
  if (tok && (e->removed || e->config_gen != r->config_gen)) {
    /* The tenant changed while we asked: this token answers an old question. */
    fx_token_release(tok);
    tok = NULL;
    err.err.code = FX_ETRANSIENT;
    snprintf(err.err.msg, sizeof err.err.msg,
             "tenant %s was reconfigured or removed during a token request; retry", r->tenant);
  } else if (tok) {
    /* Bounded again (a grant is bounded when parsed): life * percent stays
     * far below 2^64, and the sums below are of times and day-long spans. */
    long secs = tok->expires_in < 1                           ? 1
                : tok->expires_in > FX_TOKEN_MAX_EXPIRES_IN_S ? FX_TOKEN_MAX_EXPIRES_IN_S
                                                              : tok->expires_in;
    uint64_t life = (uint64_t)secs * 1000u;
    uint64_t margin = life / 10 < MARGIN_MAX_MS ? life / 10 : MARGIN_MAX_MS;
    fx_token_release(e->tok);
    e->tok = fx_token_retain(tok);
    e->refresh_at = tok->obtained_ms + life * (uint64_t)c->auth.refresh_at_percent / 100u;
    e->usable_until = tok->obtained_ms + life - margin;
    e->failures = 0;
    e->has_err = 0;
    e->next_attempt = 0;
  } else {
    e->stats.failures++;
    if (err.err.code != FX_ECANCELED) {
      e->failures++;
      e->next_attempt = fx_now_ms() + backoff_ms(c, e->failures);
      e->last_err = err;
      e->has_err = 1;
    }
  }
  e->refreshing = 0;
  waiter *ws = e->waiters;
  e->waiters = e->waiters_tail = NULL;
  int last = --e->refs == 0;
  pthread_mutex_unlock(&c->mu);
  if (last) entry_free(e);

  if (tok)
    fx_log(FX_LOG_INFO, "access token obtained", "tenant", r->tenant, "scope", tok->scope, NULL);
  else
    fx_log(FX_LOG_WARN, "token request failed", "tenant", r->tenant, "error", err.err.msg, NULL);

  while (ws) {
    waiter *w = ws;
    ws = w->next;
    w->tok = fx_token_retain(tok);
    w->err = err;
    if (fx_loop_post(w->lp, deliver, w) != 0) { /* its loop is gone: nobody to tell */
      fx_token_release(w->tok);
      free(w);
    }
  }
  fx_token_release(tok);
  refresh_free(r);
}

static void on_grant(fx_token_grant *grant, const fx_auth_error *e, void *arg) {
  finish(arg, grant, e);
}

static void request_token(refresh *r) {
  fx_smart_client cl = {.tenant = r->tenant,
                        .client_id = r->client_id,
                        .fhir_base = r->fhir_base,
                        .token_endpoint = r->endpoint,
                        .scope = r->scope,
                        .key = fx_keyset_signer(r->c->keys),
                        .assertion_lifetime_s = (int)r->c->auth.assertion_lifetime_s};
  pthread_mutex_lock(&r->c->mu);
  r->e->stats.requests++;
  pthread_mutex_unlock(&r->c->mu);
  fx_auth_error ae;
  memset(&ae, 0, sizeof ae);
  if (fx_smart_request_token(r->lp->http, &cl, on_grant, r, &ae.err) != 0) finish(r, NULL, &ae);
}

static void on_discovered(const char *token_endpoint, const fx_auth_error *e, void *arg) {
  refresh *r = arg;
  if (!token_endpoint) {
    finish(r, NULL, e);
    return;
  }
  r->endpoint = strdup(token_endpoint);
  pthread_mutex_lock(&r->c->mu);
  if (r->endpoint && r->e->config_gen == r->config_gen && !r->e->endpoint)
    r->e->endpoint = strdup(token_endpoint);
  pthread_mutex_unlock(&r->c->mu);
  if (!r->endpoint) {
    fx_auth_error oom;
    memset(&oom, 0, sizeof oom);
    fx_err_set(&oom.err, FX_ENOMEM, "out of memory");
    finish(r, NULL, &oom);
    return;
  }
  char shown[512];
  fx_url_redact(r->endpoint, shown, sizeof shown);
  fx_log(FX_LOG_INFO, "token endpoint discovered", "tenant", r->tenant, "token_endpoint", shown,
         NULL);
  request_token(r);
}

static void run_refresh(refresh *r) {
  if (r->endpoint) {
    request_token(r);
    return;
  }
  fx_auth_error ae;
  memset(&ae, 0, sizeof ae);
  if (fx_smart_discover(r->lp->http, r->tenant, r->fhir_base, fx_keyset_signer(r->c->keys)->alg,
                        r->production, on_discovered, r, &ae.err) != 0)
    finish(r, NULL, &ae);
}

/* Called with the mutex held: marks e refreshing and snapshots what the
 * refresh needs, so it can run without the lock. */
static refresh *begin_refresh(fx_token_cache *c, entry *e, fx_loop *lp) {
  refresh *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->c = c;
  r->e = e;
  r->lp = lp;
  r->config_gen = e->config_gen;
  r->started = fx_now_ms();
  r->tenant = strdup(e->tenant);
  r->client_id = strdup(e->client_id);
  r->fhir_base = strdup(e->fhir_base);
  r->scope = strdup(e->scope);
  r->endpoint = dup_or_null(e->endpoint);
  r->production = e->production;
  if (!r->tenant || !r->client_id || !r->fhir_base || !r->scope ||
      (e->endpoint && !r->endpoint)) {
    refresh_free(r);
    return NULL;
  }
  if (!r->endpoint) e->stats.discoveries++;
  e->refreshing = 1;
  e->refs++;
  return r;
}

int fx_token_get(fx_token_cache *c, fx_loop *lp, const char *tenant, fx_token_cb cb, void *arg,
                 fx_token **out, fx_auth_error *ae) {
  *out = NULL;
  memset(ae, 0, sizeof ae[0]);
  uint64_t now = fx_now_ms();
  refresh *r = NULL;
  int rc;
  pthread_mutex_lock(&c->mu);
  entry *e = find(c, tenant);
  if (!e) {
    pthread_mutex_unlock(&c->mu);
    return fx_err_set(&ae->err, FX_ENOTFOUND,
                      "tenant '%s' is not configured; add it under tenants[] in the config",
                      tenant);
  }
  if (e->tok && now < e->usable_until) {
    *out = fx_token_retain(e->tok);
    e->stats.hits++;
    if (now >= e->refresh_at && !e->refreshing && now >= e->next_attempt)
      r = begin_refresh(c, e, lp); /* ahead of expiry; callers keep the current token */
    rc = 0;
  } else if (!e->refreshing && e->has_err && now < e->next_attempt) {
    *ae = e->last_err;
    ae->retry_after_ms = (long)(e->next_attempt - now);
    rc = ae->err.code ? ae->err.code : FX_ETRANSIENT;
  } else {
    waiter *w = calloc(1, sizeof *w);
    if (w && !e->refreshing && !(r = begin_refresh(c, e, lp))) {
      free(w);
      w = NULL;
    }
    if (!w) {
      pthread_mutex_unlock(&c->mu);
      return fx_err_set(&ae->err, FX_ENOMEM, "out of memory");
    }
    w->lp = lp;
    w->cb = cb;
    w->arg = arg;
    if (e->waiters_tail) e->waiters_tail->next = w;
    else e->waiters = w;
    e->waiters_tail = w;
    e->stats.waits++;
    rc = FX_TOKEN_PENDING;
  }
  pthread_mutex_unlock(&c->mu);
  if (r) run_refresh(r);
  return rc;
}

void fx_token_cache_invalidate(fx_token_cache *c, const char *tenant, const fx_token *tok) {
  fx_token *drop = NULL;
  pthread_mutex_lock(&c->mu);
  entry *e = find(c, tenant);
  if (e && tok && e->tok == tok) {
    drop = e->tok;
    e->tok = NULL;
    e->stats.invalidated++;
  }
  pthread_mutex_unlock(&c->mu);
  if (drop) {
    fx_log(FX_LOG_INFO, "access token rejected with 401; dropped", "tenant", tenant, NULL);
    fx_token_release(drop);
  }
}

int fx_token_cache_stats(fx_token_cache *c, const char *tenant, fx_token_stats *out) {
  pthread_mutex_lock(&c->mu);
  entry *e = find(c, tenant);
  if (e) *out = e->stats;
  pthread_mutex_unlock(&c->mu);
  return e ? 0 : FX_ENOTFOUND;
}

int fx_token_cache_endpoint(fx_token_cache *c, const char *tenant, char *buf, size_t size) {
  pthread_mutex_lock(&c->mu);
  entry *e = find(c, tenant);
  int rc = e && e->endpoint ? 0 : FX_ENOTFOUND;
  if (!rc) snprintf(buf, size, "%s", e->endpoint);
  pthread_mutex_unlock(&c->mu);
  return rc;
}
