/* The reference cache: referenced entities (Practitioner, Organization,
 * Location, ...) shared by every worker thread of a process, per tenant.
 *
 * A Practitioner referenced by thousands of patients is fetched once per
 * TTL, not once per patient: the first job to miss fetches it (the others
 * that ask meanwhile wait for that fetch, woken on their own loops), and
 * every job publishes it from the cached copy. Entries are the resource's
 * compact JSON; the cache is bounded by entry count and bytes (least
 * recently used first out) and entries expire after the TTL.
 * All functions are thread-safe. */
#ifndef FX_REFCACHE_H
#define FX_REFCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "common/loop.h"

typedef struct fx_refcache fx_refcache;

typedef struct fx_refcache_stats {
  uint64_t hits, misses, waits, evictions, entries, bytes;
} fx_refcache_stats;

fx_refcache *fx_refcache_new(size_t max_entries, size_t max_bytes, uint64_t ttl_ms);
void fx_refcache_free(fx_refcache *c);

enum { FX_REF_HIT = 0, FX_REF_MISS = 1, FX_REF_WAIT = 2 };

/* Called on the waiter's loop with the JSON (borrowed, NUL-terminated) or
 * NULL when the fetch it waited for failed (then fetch it yourself). */
typedef void (*fx_refcache_cb)(const char *json, size_t len, void *arg);

/* Looks up tenant's key ("Practitioner/5"). Returns
 *   FX_REF_HIT   *out is a new malloc'd copy (caller frees), *len its length;
 *   FX_REF_MISS  the caller must fetch it and then call fx_refcache_put or
 *                fx_refcache_fail exactly once;
 *   FX_REF_WAIT  someone is fetching it: cb runs on lp when that ends. */
int fx_refcache_get(fx_refcache *c, const char *tenant, const char *key, fx_loop *lp,
                    fx_refcache_cb cb, void *arg, char **out, size_t *len);
/* Stores what a FX_REF_MISS caller fetched and wakes the waiters. */
void fx_refcache_put(fx_refcache *c, const char *tenant, const char *key, const char *json,
                     size_t len);
/* The FX_REF_MISS caller could not fetch it: wakes the waiters with NULL. */
void fx_refcache_fail(fx_refcache *c, const char *tenant, const char *key);
/* Drops every entry of tenant (a reconfigured or removed tenant). */
void fx_refcache_drop_tenant(fx_refcache *c, const char *tenant);

void fx_refcache_stats_get(fx_refcache *c, fx_refcache_stats *out);

#endif
