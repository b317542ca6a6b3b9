/* Structured logs: one JSON object per line on stderr.
 *
 *   {"time":"2026-11-30T04:40:28.123Z","level":"info","msg":"token refreshed","tenant":"t1"}
 *
 * Context goes in key/value pairs, never formatted into the message, so log
 * pipelines can filter on it. Nothing secret may be passed here: no access
 * tokens, client assertions, key material or resource bodies. Patient ids only
 * at debug level. Thread-safe: each line is written with a single write(2). */
#ifndef FX_LOG_H
#define FX_LOG_H

#include <stdarg.h>

typedef enum { FX_LOG_DEBUG = 0, FX_LOG_INFO, FX_LOG_WARN, FX_LOG_ERROR, FX_LOG_OFF } fx_log_level;

void fx_log_set_level(fx_log_level level);
fx_log_level fx_log_get_level(void);
/* Parses "debug|info|warn|error|off"; returns -1 if the name is unknown. */
int fx_log_level_parse(const char *name);
int fx_log_enabled(fx_log_level level);

/* Writes one line. After msg come key/value string pairs ending with NULL:
 *   fx_log(FX_LOG_INFO, "token refreshed", "tenant", t, "expires_in", "570", NULL);
 * A NULL value is written as JSON null. */
void fx_log(fx_log_level level, const char *msg, ...) __attribute__((sentinel));
void fx_logv(fx_log_level level, const char *msg, va_list kv);

/* Redirects output to fd (default 2); tests use this to scan what was logged. */
void fx_log_set_fd(int fd);

#endif
