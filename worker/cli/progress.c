#include "worker/cli/progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/cli/ratelimit.h"

#define BAR_WIDTH 24

void fx_progress_init(fx_progress *p, const char *label, uint64_t total) {
  memset(p, 0, sizeof *p);
  snprintf(p->label, sizeof p->label, "%s", label);
  p->total = total;
  const char *env = getenv("FHIRX_PROGRESS");
  p->enabled = env && *env ? strcmp(env, "0") != 0 : isatty(STDERR_FILENO);
  p->start_us = fx_mono_us();
}

void fx_progress_format(const fx_progress *p, uint64_t done, int64_t elapsed_us,
                        const char *extra, char *out, size_t size) {
  double rate = elapsed_us > 0 ? (double)done * 1e6 / (double)elapsed_us : 0;
  size_t n = 0;
  if (p->total) {
    uint64_t shown = done > p->total ? p->total : done;
    size_t fill = (size_t)(shown * BAR_WIDTH / p->total);
    char bar[BAR_WIDTH + 1];
    memset(bar, '#', fill);
    memset(bar + fill, '.', BAR_WIDTH - fill);
    bar[BAR_WIDTH] = '\0';
    n = (size_t)snprintf(out, size, "%s [%s] %llu/%llu %3d%% %.0f/s", p->label, bar,
                         (unsigned long long)done, (unsigned long long)p->total,
                         (int)(shown * 100 / p->total), rate);
  } else {
    n = (size_t)snprintf(out, size, "%s %llu %.0f/s", p->label, (unsigned long long)done, rate);
  }
  if (extra && *extra && n < size) snprintf(out + n, size - n, "  %s", extra);
}

void fx_progress_update(fx_progress *p, uint64_t done, const char *extra, int force) {
  if (!p->enabled) return;
  int64_t now = fx_mono_us();
  if (!force && p->drawn && now - p->last_draw_us < 100000) return;
  char line[256];
  fx_progress_format(p, done, now - p->start_us, extra, line, sizeof line);
  fprintf(stderr, "\r%s\033[K", line);
  fflush(stderr);
  p->last_draw_us = now;
  p->drawn = 1;
}

void fx_progress_done(fx_progress *p) {
  if (!p->enabled || !p->drawn) return;
  fputs("\r\033[K", stderr);
  fflush(stderr);
  p->drawn = 0;
}
