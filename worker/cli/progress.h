/* A one-line progress bar on stderr for the command-line tools, drawn only
 * when stderr is a terminal (never into logs or pipes), at most ten times a
 * second, and erased when the work is done so the summary stands alone.
 *
 *   replay [###########.........]  5210/9000  57%  480/s  parked 3
 *
 * FHIRX_PROGRESS=0 turns it off, FHIRX_PROGRESS=1 on even without a
 * terminal. */
#ifndef FX_PROGRESS_H
#define FX_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct fx_progress {
  int enabled;
  char label[16];
  uint64_t total; /* 0 = unknown: no bar, only the count */
  int64_t start_us, last_draw_us;
  int drawn;
} fx_progress;

void fx_progress_init(fx_progress *p, const char *label, uint64_t total);

/* Formats the line for done items after elapsed_us (for tests and drawing):
 * no control characters; extra (may be NULL) is appended. */
void fx_progress_format(const fx_progress *p, uint64_t done, int64_t elapsed_us,
                        const char *extra, char *out, size_t size);

/* Redraws when enabled and the last draw is 100 ms old (or force). */
void fx_progress_update(fx_progress *p, uint64_t done, const char *extra, int force);

/* Erases the line. */
void fx_progress_done(fx_progress *p);

#endif
