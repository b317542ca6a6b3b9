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

int fx_json_depth_ok(const char *p, size_t n, int max) {
  int depth = 0, in_string = 0;
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (in_string) {
      if (c == '\\') i++; /* skip the escaped character */
      else if (c == '"') in_string = 0;
    } else if (c == '"') {
      in_string = 1;
    } else if (c == '{' || c == '[') {
      if (++depth > max) return 0;
    } else if (c == '}' || c == ']') {
      depth--;
    }
  }
  return 1;
}
