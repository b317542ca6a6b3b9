/* A streaming JSON writer over sim_buf: per-patient resources are written
 * straight into the response buffer (no jansson tree, no second copy), which
 * is what keeps searches cheap enough for benchmarks to measure fhirx rather
 * than the simulator.
 *
 * Commas are inserted automatically. `key` is the member name inside an
 * object and must be NULL inside an array or at the top level; keys are
 * static ASCII and written without escaping, values are escaped. Nesting
 * deeper than 63 levels is a programming error. Out of memory is sticky in
 * the sim_buf (checked once by whoever steals the buffer). */
#ifndef SIM_JSONW_H
#define SIM_JSONW_H

#include "tests/sim/util.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct sim_jw {
  sim_buf *b;
  unsigned depth;
  uint64_t nonempty; /* bit d: the container at depth d already has a member */
} sim_jw;

static inline sim_jw sim_jw_on(sim_buf *b) { return (sim_jw){.b = b}; }

void sim_jw_obj(sim_jw *w, const char *key);
void sim_jw_end(sim_jw *w); /* closes the innermost object */
void sim_jw_arr(sim_jw *w, const char *key);
void sim_jw_end_arr(sim_jw *w);
void sim_jw_str(sim_jw *w, const char *key, const char *value);
void sim_jw_strf(sim_jw *w, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sim_jw_int(sim_jw *w, const char *key, long long value);
void sim_jw_bool(sim_jw *w, const char *key, bool value);
/* A number (or other literal) given as text, e.g. "98.6". */
void sim_jw_raw(sim_jw *w, const char *key, const char *literal);

#endif
