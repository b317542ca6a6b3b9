#include "common/governor.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PATHS 32   /* Retry-After is remembered per path (resource type) */
#define MAX_WINDOW 256
#define CUT_INTERVAL_MS 1000

typedef struct path_wait {
  char path[40];
  uint64_t not_before;
} path_wait;

typedef struct tenant {
  struct tenant *next;
  char *id;
  fx_gov_conf conf;
  int limit;
  int inflight;
  int successes; /* since the limit last changed */
  uint64_t last_cut;
  double tokens;
  uint64_t refilled_at;
  path_wait waits[MAX_PATHS];
  /* breaker */
  fx_breaker_state state;
  unsigned char window[MAX_WINDOW]; /* 1 = transient failure */
  int win_len, win_pos, win_fail;
  uint64_t open_until, cooldown;
  int probing;
  fx_gov_stats st;
} tenant;

struct fx_governor {
  pthread_mutex_t mu;
  tenant *tenants;
};

fx_governor *fx_governor_new(void) {
  fx_governor *g = calloc(1, sizeof *g);
  if (g) pthread_mutex_init(&g->mu, NULL);
  return g;
}

void fx_governor_free(fx_governor *g) {
  if (!g) return;
  while (g->tenants) {
    tenant *t = g->tenants;
    g->tenants = t->next;
    free(t->id);
    free(t);
  }
  pthread_mutex_destroy(&g->mu);
  free(g);
}

static tenant *find(fx_governor *g, const char *id) {
  for (tenant *t = g->tenants; t; t = t->next)
    if (strcmp(t->id, id) == 0) return t;
  return NULL;
}

static void clamp_conf(fx_gov_conf *c) {
  if (c->max_concurrency < 1) c->max_concurrency = 1;
  if (c->burst < 1) c->burst = 1;
  if (c->breaker_window < 4) c->breaker_window = 4;
  if (c->breaker_window > MAX_WINDOW) c->breaker_window = MAX_WINDOW;
  if (c->breaker_ratio <= 0 || c->breaker_ratio > 1) c->breaker_ratio = 0.5;
  if (!c->breaker_cooldown_ms) c->breaker_cooldown_ms = 5000;
  if (c->breaker_cooldown_max_ms < c->breaker_cooldown_ms)
    c->breaker_cooldown_max_ms = c->breaker_cooldown_ms;
}

int fx_governor_set_tenant(fx_governor *g, const char *id, const fx_gov_conf *conf) {
  pthread_mutex_lock(&g->mu);
  tenant *t = find(g, id);
  if (!t) {
    t = calloc(1, sizeof *t);
    if (!t || !(t->id = strdup(id))) {
      free(t);
      pthread_mutex_unlock(&g->mu);
      return -1;
    }
    t->next = g->tenants;
    g->tenants = t;
    t->tokens = conf->burst;
  }
  t->conf = *conf;
  clamp_conf(&t->conf);
  t->limit = t->conf.max_concurrency;
  t->cooldown = t->conf.breaker_cooldown_ms;
  pthread_mutex_unlock(&g->mu);
  return 0;
}

void fx_governor_remove_tenant(fx_governor *g, const char *id) {
  pthread_mutex_lock(&g->mu);
  for (tenant **pp = &g->tenants; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->id, id) == 0) {
      tenant *t = *pp;
      *pp = t->next;
      free(t->id);
      free(t);
      break;
    }
  pthread_mutex_unlock(&g->mu);
}

static path_wait *path_slot(tenant *t, const char *path, int create) {
  path_wait *free_slot = NULL;
  for (int i = 0; i < MAX_PATHS; i++) {
    if (t->waits[i].path[0] && strcmp(t->waits[i].path, path) == 0) return &t->waits[i];
    if (!t->waits[i].path[0] && !free_slot) free_slot = &t->waits[i];
  }
  if (!create) return NULL;
  if (!free_slot) free_slot = &t->waits[0]; /* more paths than slots: reuse the first */
  strncpy(free_slot->path, path, sizeof free_slot->path - 1);
  free_slot->path[sizeof free_slot->path - 1] = '\0';
  return free_slot;
}

static void refill(tenant *t, uint64_t now) {
  if (t->conf.rate_per_s <= 0) return;
  if (now > t->refilled_at) {
    t->tokens += (double)(now - t->refilled_at) * t->conf.rate_per_s / 1000.0;
    if (t->tokens > t->conf.burst) t->tokens = t->conf.burst;
  }
  t->refilled_at = now;
}

/* The tenant-wide part of acquire: breaker and concurrency. */
static long tenant_wait(tenant *t, uint64_t now, const char **why) {
  if (t->state == FX_BREAKER_OPEN) {
    if (now < t->open_until) {
      *why = "breaker";
      return (long)(t->open_until - now);
    }
    t->state = FX_BREAKER_HALF_OPEN; /* cool-down over: let one probe through */
    t->probing = 0;
  }
  if (t->state == FX_BREAKER_HALF_OPEN && t->probing) {
    *why = "breaker";
    return 100;
  }
  if (t->inflight >= t->limit) {
    *why = "concurrency";
    return 10; /* a slot frees when a request ends; look again shortly */
  }
  return 0;
}

long fx_governor_acquire(fx_governor *g, const char *id, const char *path, uint64_t now,
                         const char **why) {
  const char *reason = NULL;
  long wait = 0;
  pthread_mutex_lock(&g->mu);
  tenant *t = find(g, id);
  if (t) {
    wait = tenant_wait(t, now, &reason);
    path_wait *pw = wait ? NULL : path_slot(t, path, 0);
    if (!wait && pw && now < pw->not_before) {
      reason = "retry-after";
      wait = (long)(pw->not_before - now);
      t->st.retry_after_waits++;
    }
    if (!wait && t->conf.rate_per_s > 0) {
      refill(t, now);
      if (t->tokens < 1.0) {
        reason = "rate";
        wait = (long)((1.0 - t->tokens) * 1000.0 / t->conf.rate_per_s) + 1;
      }
    }
    if (!wait) {
      if (t->conf.rate_per_s > 0) t->tokens -= 1.0;
      if (t->state == FX_BREAKER_HALF_OPEN) t->probing = 1;
      t->inflight++;
    }
  }
  pthread_mutex_unlock(&g->mu);
  if (why) *why = reason;
  return wait;
}

long fx_governor_blocked(fx_governor *g, const char *id, uint64_t now) {
  const char *why;
  pthread_mutex_lock(&g->mu);
  tenant *t = find(g, id);
  long wait = t ? tenant_wait(t, now, &why) : 0;
  pthread_mutex_unlock(&g->mu);
  return wait;
}

int fx_governor_breaker_open(fx_governor *g, const char *id, uint64_t now) {
  pthread_mutex_lock(&g->mu);
  tenant *t = find(g, id);
  int open = t && t->state == FX_BREAKER_OPEN && now < t->open_until;
  pthread_mutex_unlock(&g->mu);
  return open;
}

static void open_breaker(tenant *t, uint64_t now) {
  t->state = FX_BREAKER_OPEN;
  t->open_until = now + t->cooldown;
  t->cooldown *= 2;
  if (t->cooldown > t->conf.breaker_cooldown_max_ms) t->cooldown = t->conf.breaker_cooldown_max_ms;
  t->st.breaker_opened++;
}

static void record(tenant *t, int failed) {
  int n = t->conf.breaker_window;
  if (t->win_len == n) t->win_fail -= t->window[t->win_pos];
  else t->win_len++;
  t->window[t->win_pos] = (unsigned char)failed;
  t->win_fail += failed;
  t->win_pos = (t->win_pos + 1) % n;
}

void fx_governor_done(fx_governor *g, const char *id, const char *path, fx_gov_outcome outcome,
                      long retry_after_ms, uint64_t now) {
  pthread_mutex_lock(&g->mu);
  tenant *t = find(g, id);
  if (!t) {
    pthread_mutex_unlock(&g->mu);
    return;
  }
  if (t->inflight > 0) t->inflight--;
  if (retry_after_ms >= 0) {
    path_wait *pw = path_slot(t, path, 1);
    if (now + (uint64_t)retry_after_ms > pw->not_before) pw->not_before = now + (uint64_t)retry_after_ms;
  }
  int probe = t->state == FX_BREAKER_HALF_OPEN && t->probing;
  if (outcome == FX_GOV_CANCELED) {
    if (probe) t->probing = 0;
  } else if (outcome == FX_GOV_OK) {
    t->st.ok++;
    record(t, 0);
    if (probe) { /* the probe came back: the tenant works again */
      t->state = FX_BREAKER_CLOSED;
      t->cooldown = t->conf.breaker_cooldown_ms;
      t->win_len = t->win_pos = t->win_fail = 0;
    }
    if (++t->successes >= t->limit && t->limit < t->conf.max_concurrency) {
      t->limit++; /* additive increase after a window of successes */
      t->successes = 0;
    }
  } else {
    if (outcome == FX_GOV_THROTTLED) t->st.throttled++;
    else t->st.transient++;
    record(t, 1);
    if (now - t->last_cut >= CUT_INTERVAL_MS && t->limit > 1) {
      t->limit = t->limit / 2 > 1 ? t->limit / 2 : 1; /* multiplicative decrease */
      t->last_cut = now;
      t->successes = 0;
    }
    if (probe) {
      open_breaker(t, now);
    } else if (t->state == FX_BREAKER_CLOSED && t->win_len >= t->conf.breaker_window &&
               (double)t->win_fail >= t->conf.breaker_ratio * t->win_len) {
      open_breaker(t, now);
    }
  }
  pthread_mutex_unlock(&g->mu);
}

int fx_governor_stats(fx_governor *g, const char *id, fx_gov_stats *out) {
  pthread_mutex_lock(&g->mu);
  tenant *t = find(g, id);
  if (t) {
    *out = t->st;
    out->limit = t->limit;
    out->inflight = t->inflight;
    out->breaker = t->state;
  }
  pthread_mutex_unlock(&g->mu);
  return t ? 0 : -1;
}
