#include "common/strutil.h"

#include <stdlib.h>
#include <string.h>

char *fx_memstr(const void *p, size_t n) {
  if (!p) return NULL;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}
