#include "tests/kafka/mock_log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void format_time(char *buf, size_t len) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

/* stdio would be fine for atomicity too, but a single write(2) also keeps
 * lines whole when stderr is a pipe shared with the test process. */
static void write_line(const char *text) {
  size_t len = strlen(text);
  while (len > 0) {
    ssize_t n = write(STDERR_FILENO, text, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    text += n;
    len -= (size_t)n;
  }
}

void fxm_log(const char *level, const char *msg, json_t *fields) {
  char when[40];
  format_time(when, sizeof when);
  json_t *line = json_pack("{s:s, s:s, s:s}", "time", when, "level", level, "msg", msg);
  if (line && fields) json_object_update(line, fields);
  json_decref(fields);
  char *text = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(line);
  if (!text) return;
  /* json_dumps has no room for the newline; one extra small copy keeps the
   * line a single write. */
  size_t len = strlen(text);
  char *buf = malloc(len + 2);
  if (buf) {
    memcpy(buf, text, len);
    buf[len] = '\n';
    buf[len + 1] = '\0';
    write_line(buf);
  }
  free(buf);
  free(text);
}
