#include "worker/cli/cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"

int fx_cli_fail(const char *cmd, int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "fhirx %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return status;
}

void fx_cli_log_level(int fallback) {
  const char *env = getenv("FHIRX_LOG_LEVEL");
  int level = env ? fx_log_level_parse(env) : -1;
  fx_log_set_level((fx_log_level)(level >= 0 ? level : fallback));
}

const char *fx_cli_config(const char *given) {
  if (given) return given;
  const char *env = getenv("FHIRX_CONFIG");
  return env && *env ? env : NULL;
}
