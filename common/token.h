/* The process-wide access token cache, shared by every worker thread.
 *
 * One entry per tenant (its scope set is part of its configuration). The
 * invariants:
 *  - at most one token request per tenant is in flight, however many
 *    requests wait; waiters are woken on their own loop (fx_loop_post);
 *  - a token is refreshed in the background once refresh_at_percent of its
 *    lifetime has passed, so steady-state requests never wait;
 *  - a token is not handed out in its last moments (a margin of 10% of its
 *    lifetime, at most 10 s), so it cannot expire in flight;
 *  - a 401 drops exactly the token that was rejected (fx_token_cache_invalidate),
 *    never a newer one;
 *  - failures back off per tenant (exponential, full jitter, capped): while
 *    backing off, requests fail at once with the last error and the time of
 *    the next attempt instead of hammering the token endpoint.
 * The refresh runs on the loop of the request that triggered it, using that
 * loop's HTTP client. All functions are thread-safe. */
#ifndef FX_TOKEN_H
#define FX_TOKEN_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/config.h"
#include "common/keys.h"
#include "common/loop.h"
#include "common/smart.h"

#define FX_TOKEN_PENDING 1

/* An access token: immutable and reference counted. */
typedef struct fx_token {
  atomic_int refs;
  char *access_token; /* secret: never log */
  char *scope;        /* granted */
  long expires_in;
  uint64_t obtained_ms; /* fx_now_ms() clock */
} fx_token;

fx_token *fx_token_retain(fx_token *t);
void fx_token_release(fx_token *t);

typedef struct fx_token_cache fx_token_cache;

/* keys is borrowed and must outlive the cache; auth may be NULL for defaults. */
int fx_token_cache_new(const fx_keyset *keys, const fx_auth_conf *auth, fx_token_cache **out,
                       fx_err *err);
/* All refreshes must have finished (their loops closed) before this. */
void fx_token_cache_free(fx_token_cache *c);

/* Adds or replaces a tenant; scope is the space-separated scope set to ask for.
 * Replacing a tenant whose client, endpoints or scopes changed drops its token. */
int fx_token_cache_set_tenant(fx_token_cache *c, const fx_tenant_conf *t, const char *scope,
                              fx_err *err);
/* Removes a tenant and drops its token. Returns 0, or FX_ENOTFOUND. */
int fx_token_cache_remove_tenant(fx_token_cache *c, const char *tenant);

/* Called on lp's thread with a borrowed token (retain it to keep it) or an error. */
typedef void (*fx_token_cb)(fx_token *tok, const fx_auth_error *e, void *arg);

/* Gets a token for tenant. Returns
 *   0                 *out holds a new reference to a usable token (cb not called);
 *   FX_TOKEN_PENDING  cb will be called on lp's thread;
 *   negative          e says why (unknown tenant, backing off after a failure
 *                     with e->retry_after_ms until the next attempt); cb not called. */
int fx_token_get(fx_token_cache *c, fx_loop *lp, const char *tenant, fx_token_cb cb, void *arg,
                 fx_token **out, fx_auth_error *e);

/* A server rejected tok with 401: forget it if it is still the current one. */
void fx_token_cache_invalidate(fx_token_cache *c, const char *tenant, const fx_token *tok);

typedef struct fx_token_stats {
  uint64_t requests;     /* token requests sent */
  uint64_t failures;     /* token requests that failed */
  uint64_t hits;         /* fx_token_get answered at once */
  uint64_t waits;        /* fx_token_get that had to wait */
  uint64_t invalidated;  /* tokens dropped after a 401 */
  uint64_t discoveries;  /* discovery requests sent */
} fx_token_stats;

int fx_token_cache_stats(fx_token_cache *c, const char *tenant, fx_token_stats *out);

/* The token endpoint in use for tenant (configured or discovered) into buf. */
int fx_token_cache_endpoint(fx_token_cache *c, const char *tenant, char *buf, size_t size);

#endif
