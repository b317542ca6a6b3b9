/* Logging for fhirx-kafka-mock: one JSON object per line on stderr, in the
 * same shape as fhirx's own logs so a test's output reads the same:
 *
 *   {"time":"2026-01-01T10:00:00.123Z","level":"info","msg":"broker down","broker":1}
 *
 * Thread-safe: the control thread, the main thread and librdkafka's threads
 * (through the log callback) all log; each line is written with one write(2)
 * so lines never interleave. */
#ifndef FXM_LOG_H
#define FXM_LOG_H

#include <jansson.h>

/* Writes one line. `fields` is an object of extra keys, or NULL; the reference
 * is stolen (so json_pack(...) can be passed inline; a NULL from a failed
 * json_pack just drops the extra keys). */
void fxm_log(const char *level, const char *msg, json_t *fields);

#endif
