/* The per-tenant governor: how hard fhirx may push one EHR tenant.
 *
 * Shared by every worker thread of a process. For each tenant it keeps
 *  - a concurrency limit that adapts (AIMD): halved on 429s and timeouts (at
 *    most once a second), grown by one after a window of successes, within
 *    1..max_concurrency;
 *  - a request rate (token bucket with a burst);
 *  - Retry-After: no request to a tenant path before the time the server
 *    named;
 *  - a circuit breaker: when most of the recent requests failed transiently
 *    it opens and nothing is sent for a cool-down (doubling up to a cap);
 *    then one probe is let through, whose outcome closes or reopens it.
 * A request asks fx_governor_acquire first: either it may go now (and then
 * reports its outcome with fx_governor_done), or it is told how long to
 * wait. Nothing here blocks or sleeps. All functions are thread-safe. */
#ifndef FX_GOVERNOR_H
#define FX_GOVERNOR_H

#include <stdint.h>

typedef struct fx_governor fx_governor;

typedef struct fx_gov_conf {
  int max_concurrency;     /* requests in flight to the tenant, per process */
  double rate_per_s;       /* 0 = unlimited */
  int burst;               /* token bucket size */
  int breaker_window;      /* outcomes considered */
  double breaker_ratio;    /* transient failure share that opens the breaker */
  uint64_t breaker_cooldown_ms;     /* first cool-down */
  uint64_t breaker_cooldown_max_ms; /* cool-downs double up to this */
} fx_gov_conf;

typedef enum {
  FX_GOV_OK = 0,        /* an answer that was not a throttle or a transient failure */
  FX_GOV_THROTTLED,     /* 429 */
  FX_GOV_TRANSIENT,     /* timeout, reset, 5xx */
  FX_GOV_CANCELED       /* never really sent: neither success nor failure */
} fx_gov_outcome;

typedef enum { FX_BREAKER_CLOSED = 0, FX_BREAKER_OPEN, FX_BREAKER_HALF_OPEN } fx_breaker_state;

typedef struct fx_gov_stats {
  int limit;      /* current adaptive concurrency limit */
  int inflight;
  fx_breaker_state breaker;
  uint64_t breaker_opened; /* times it opened */
  uint64_t retry_after_waits;
  uint64_t throttled, transient, ok;
} fx_gov_stats;

fx_governor *fx_governor_new(void);
void fx_governor_free(fx_governor *g);

/* Adds or reconfigures a tenant. Returns 0 or -1 on OOM. */
int fx_governor_set_tenant(fx_governor *g, const char *tenant, const fx_gov_conf *conf);
void fx_governor_remove_tenant(fx_governor *g, const char *tenant);

/* May a request to tenant's path go at now_ms? Returns 0 when it may (one
 * slot is taken: call fx_governor_done exactly once), else the number of ms
 * to wait before asking again. *why (may be NULL) names the reason:
 * "breaker", "retry-after", "rate" or "concurrency". Unknown tenants go. */
long fx_governor_acquire(fx_governor *g, const char *tenant, const char *path, uint64_t now_ms,
                         const char **why);

/* How long the tenant as a whole is blocked (breaker open, or every slot
 * taken), 0 if a request might go now. For schedulers choosing work. */
long fx_governor_blocked(fx_governor *g, const char *tenant, uint64_t now_ms);

/* 1 while the tenant's circuit breaker is open (its work should be parked). */
int fx_governor_breaker_open(fx_governor *g, const char *tenant, uint64_t now_ms);

/* Reports the outcome of an acquired request. retry_after_ms >= 0 when the
 * server sent Retry-After (then path waits that long). */
void fx_governor_done(fx_governor *g, const char *tenant, const char *path, fx_gov_outcome outcome,
                      long retry_after_ms, uint64_t now_ms);

int fx_governor_stats(fx_governor *g, const char *tenant, fx_gov_stats *out);

#endif
