#include "common/refcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct waiter {
  struct waiter *next;
  fx_loop *lp;
  fx_refcache_cb cb;
  void *arg;
  char *json; /* copy delivered to the waiter, NULL on failure */
  size_t len;
} waiter;

/* An entry is pending (being fetched, json NULL) or ready. Ready entries are
 * on a doubly linked LRU list, most recent first. */
typedef struct entry {
  struct entry *hnext;         /* hash chain */
  struct entry *prev, *next;   /* LRU (ready entries only) */
  char *key;                   /* "tenant\x1fType/id" */
  char *json;
  size_t len;
  uint64_t expires;
  waiter *waiters;             /* pending entries only */
} entry;

struct fx_refcache {
  pthread_mutex_t mu;
  entry **buckets;
  size_t n_buckets;
  entry *lru_head, *lru_tail;
  size_t max_entries, max_bytes;
  uint64_t ttl_ms;
  fx_refcache_stats st;
};

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

fx_refcache *fx_refcache_new(size_t max_entries, size_t max_bytes, uint64_t ttl_ms) {
  fx_refcache *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->n_buckets = 4096;
  c->buckets = calloc(c->n_buckets, sizeof *c->buckets);
  if (!c->buckets) {
    free(c);
    return NULL;
  }
  pthread_mutex_init(&c->mu, NULL);
  c->max_entries = max_entries;
  c->max_bytes = max_bytes;
  c->ttl_ms = ttl_ms;
  return c;
}

static void entry_free(entry *e) {
  free(e->key);
  free(e->json);
  free(e);
}

void fx_refcache_free(fx_refcache *c) {
  if (!c) return;
  for (size_t i = 0; i < c->n_buckets; i++)
    for (entry *e = c->buckets[i], *n; e; e = n) {
      n = e->hnext;
      /* A pending entry here means a fetch never reported back: its
       * waiters' loops are gone too, so there is nobody left to wake. */
      for (waiter *w = e->waiters, *wn; w; w = wn) {
        wn = w->next;
        free(w);
      }
      entry_free(e);
    }
  free(c->buckets);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

static char *make_key(const char *tenant, const char *key) {
  size_t a = strlen(tenant), b = strlen(key);
  char *k = malloc(a + b + 2);
  if (!k) return NULL;
  memcpy(k, tenant, a);
  k[a] = '\x1f'; /* cannot appear in a tenant id */
  memcpy(k + a + 1, key, b + 1);
  return k;
}

static entry **slot(fx_refcache *c, const char *k) {
  entry **pp = &c->buckets[hash(k) & (c->n_buckets - 1)];
  while (*pp && strcmp((*pp)->key, k) != 0) pp = &(*pp)->hnext;
  return pp;
}

static void lru_unlink(fx_refcache *c, entry *e) {
  if (e->prev) e->prev->next = e->next;
  else c->lru_head = e->next;
  if (e->next) e->next->prev = e->prev;
  else c->lru_tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push(fx_refcache *c, entry *e) {
  e->prev = NULL;
  e->next = c->lru_head;
  if (c->lru_head) c->lru_head->prev = e;
  c->lru_head = e;
  if (!c->lru_tail) c->lru_tail = e;
}

/* Removes a ready entry entirely. Called with the lock held. */
static void remove_ready(fx_refcache *c, entry *e) {
  entry **pp = slot(c, e->key);
  *pp = e->hnext;
  lru_unlink(c, e);
  c->st.entries--;
  c->st.bytes -= e->len;
  entry_free(e);
}

static void evict(fx_refcache *c) {
  while (c->lru_tail && (c->st.entries > c->max_entries || c->st.bytes > c->max_bytes)) {
    remove_ready(c, c->lru_tail);
    c->st.evictions++;
  }
}

int fx_refcache_get(fx_refcache *c, const char *tenant, const char *key, fx_loop *lp,
                    fx_refcache_cb cb, void *arg, char **out, size_t *len) {
  *out = NULL;
  char *k = make_key(tenant, key);
  if (!k) return FX_REF_MISS; /* out of memory: fetch without the cache */
  pthread_mutex_lock(&c->mu);
  entry **pp = slot(c, k);
  entry *e = *pp;
  if (e && e->json && fx_now_ms() >= e->expires) {
    remove_ready(c, e); /* expired: fetch again */
    e = NULL;
    pp = slot(c, k);
  }
  int rc;
  if (e && e->json) {
    *out = malloc(e->len + 1);
    if (*out) {
      memcpy(*out, e->json, e->len + 1);
      *len = e->len;
      lru_unlink(c, e);
      lru_push(c, e);
      c->st.hits++;
      rc = FX_REF_HIT;
    } else {
      rc = FX_REF_MISS;
    }
  } else if (e) { /* pending: wait for the fetch in flight */
    waiter *w = calloc(1, sizeof *w);
    if (w) {
      w->lp = lp;
      w->cb = cb;
      w->arg = arg;
      w->next = e->waiters;
      e->waiters = w;
      c->st.waits++;
      rc = FX_REF_WAIT;
    } else {
      rc = FX_REF_MISS;
    }
  } else { /* first to ask: becomes the fetcher; a pending entry holds the place */
    e = calloc(1, sizeof *e);
    if (e) {
      e->key = k;
      k = NULL;
      e->hnext = NULL;
      *pp = e;
    }
    c->st.misses++;
    rc = FX_REF_MISS;
  }
  pthread_mutex_unlock(&c->mu);
  free(k);
  return rc;
}

static void deliver(void *arg) {
  waiter *w = arg;
  w->cb(w->json, w->len, w->arg);
  free(w->json);
  free(w);
}

/* Ends a pending entry: ready with json, or removed when json is NULL. */
static void settle(fx_refcache *c, const char *tenant, const char *key, const char *json,
                   size_t len) {
  char *k = make_key(tenant, key);
  if (!k) return;
  pthread_mutex_lock(&c->mu);
  entry **pp = slot(c, k);
  entry *e = *pp;
  waiter *ws = NULL;
  if (e && !e->json) {
    ws = e->waiters;
    e->waiters = NULL;
    if (json && (e->json = malloc(len + 1))) {
      memcpy(e->json, json, len);
      e->json[len] = '\0';
      e->len = len;
      e->expires = fx_now_ms() + c->ttl_ms;
      lru_push(c, e);
      c->st.entries++;
      c->st.bytes += len;
      evict(c);
    } else {
      *pp = e->hnext;
      entry_free(e);
    }
  }
  pthread_mutex_unlock(&c->mu);
  free(k);
  while (ws) {
    waiter *w = ws;
    ws = w->next;
    if (json && (w->json = malloc(len + 1))) {
      memcpy(w->json, json, len);
      w->json[len] = '\0';
      w->len = len;
    }
    if (fx_loop_post(w->lp, deliver, w) != 0) {
      free(w->json);
      free(w);
    }
  }
}

void fx_refcache_put(fx_refcache *c, const char *tenant, const char *key, const char *json,
                     size_t len) {
  settle(c, tenant, key, json, len);
}

void fx_refcache_fail(fx_refcache *c, const char *tenant, const char *key) {
  settle(c, tenant, key, NULL, 0);
}

void fx_refcache_drop_tenant(fx_refcache *c, const char *tenant) {
  size_t tl = strlen(tenant);
  pthread_mutex_lock(&c->mu);
  for (entry *e = c->lru_head, *n; e; e = n) {
    n = e->next;
    if (strncmp(e->key, tenant, tl) == 0 && e->key[tl] == '\x1f') remove_ready(c, e);
  }
  pthread_mutex_unlock(&c->mu);
}

void fx_refcache_stats_get(fx_refcache *c, fx_refcache_stats *out) {
  pthread_mutex_lock(&c->mu);
  *out = c->st;
  pthread_mutex_unlock(&c->mu);
}
