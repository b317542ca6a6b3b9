/* A token bucket for the command-line tools: `fhirx replay` and `fhirx
 * enqueue` produce at most N jobs per second, so a replay of tens of
 * thousands of dead letters does not land on a tenant all at once.
 *
 * Not thread-safe; the tools are single-threaded. */
#ifndef FX_RATELIMIT_H
#define FX_RATELIMIT_H

#include <stdint.h>

#include "common/clock.h"

typedef struct fx_rate {
  double per_s;   /* tokens added per second; 0 = unlimited */
  double burst;   /* the bucket's size: at most this many at once after a pause */
  double tokens;  /* available now */
  int64_t last_us; /* when tokens was last brought up to date; 0 = never */
} fx_rate;

/* per_s 0 means unlimited. The bucket holds a tenth of a second's worth
 * (at least 1), so the pace is smooth rather than one burst per second. */
void fx_rate_init(fx_rate *r, double per_s);

/* At now_us (a monotonic clock in microseconds): takes a token and returns
 * 0, or returns how many microseconds to wait for one (taking nothing). */
int64_t fx_rate_take(fx_rate *r, int64_t now_us);

/* Sleeps until a token is available, then takes it. */
void fx_rate_wait(fx_rate *r);



#endif
