#include "worker/cli/ratelimit.h"

#include <time.h>

void fx_rate_init(fx_rate *r, double per_s) {
  r->per_s = per_s > 0 ? per_s : 0;
  r->burst = r->per_s / 10 < 1 ? 1 : r->per_s / 10;
  r->tokens = r->burst;
  r->last_us = 0;
}

int64_t fx_rate_take(fx_rate *r, int64_t now_us) {
  if (r->per_s <= 0) return 0;
  if (r->last_us && now_us > r->last_us) {
    r->tokens += (double)(now_us - r->last_us) * r->per_s / 1e6;
    if (r->tokens > r->burst) r->tokens = r->burst;
  }
  if (!r->last_us || now_us > r->last_us) r->last_us = now_us;
  if (r->tokens >= 1) {
    r->tokens -= 1;
    return 0;
  }
  int64_t wait = (int64_t)((1 - r->tokens) * 1e6 / r->per_s) + 1;
  return wait > 0 ? wait : 1;
}

void fx_rate_wait(fx_rate *r) {
  for (;;) {
    int64_t wait = fx_rate_take(r, fx_mono_us());
    if (wait == 0) return;
    struct timespec ts = {.tv_sec = (time_t)(wait / 1000000), .tv_nsec = (long)(wait % 1000000) * 1000};
    nanosleep(&ts, NULL);
  }
}
