/* Clocks, in one place. Monotonic time for deadlines, waits and latencies;
 * wall time (UTC) only for what is written down for people and other
 * systems (record timestamps, Retry-After dates, deadlines that must
 * survive a restart). Any thread. */
#ifndef FX_CLOCK_H
#define FX_CLOCK_H

#include <stdint.h>

/* Monotonic milliseconds, comparable across threads of a process. */
uint64_t fx_now_ms(void);

/* Monotonic microseconds. */
int64_t fx_mono_us(void);

/* Wall clock: milliseconds since the Unix epoch. */
uint64_t fx_wall_ms(void);

/* wall_ms as RFC 3339 UTC with milliseconds: "2026-11-30T06:10:00.123Z". */
void fx_iso_time(uint64_t wall_ms, char out[32]);

/* fx_iso_time(fx_wall_ms()). */
void fx_iso_now(char out[32]);

#endif
