#include "common/log.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = FX_LOG_INFO;
static atomic_int g_fd = 2;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void fx_log_set_level(fx_log_level level) { atomic_store(&g_level, (int)level); }
fx_log_level fx_log_get_level(void) { return (fx_log_level)atomic_load(&g_level); }
void fx_log_set_fd(int fd) { atomic_store(&g_fd, fd); }

int fx_log_level_parse(const char *name) {
  for (int i = 0; i <= FX_LOG_OFF; i++)
    if (name && strcmp(name, level_names[i]) == 0) return i;
  return -1;
}

int fx_log_enabled(fx_log_level level) {
  return level != FX_LOG_OFF && (int)level >= atomic_load(&g_level);
}

void fx_logv(fx_log_level level, const char *msg, va_list kv) {
  if (!fx_log_enabled(level)) return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[40];
  size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(when + n, sizeof when - n, ".%03ldZ", ts.tv_nsec / 1000000L);

  json_t *o = json_object();
  if (!o) return;
  json_object_set_new(o, "time", json_string(when));
  json_object_set_new(o, "level", json_string(level_names[level]));
  json_object_set_new(o, "msg", json_string(msg ? msg : ""));
  for (;;) {
    const char *k = va_arg(kv, const char *);
    if (!k) break;
    const char *v = va_arg(kv, const char *);
    json_object_set_new(o, k, v ? json_string(v) : json_null());
  }
  char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
  json_decref(o);
  if (!line) return;
  size_t len = strlen(line);
  line[len] = '\n'; /* json_dumps leaves room for exactly the NUL we overwrite */
  ssize_t w = write(atomic_load(&g_fd), line, len + 1);
  (void)w;
  free(line);
}

void fx_log(fx_log_level level, const char *msg, ...) {
  va_list ap;
  va_start(ap, msg);
  fx_logv(level, msg, ap);
  va_end(ap);
}
