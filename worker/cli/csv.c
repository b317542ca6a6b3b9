#include "worker/cli/csv.h"

#include <string.h>

static int is_space(char c) { return c == ' ' || c == '\t'; }

int fx_csv_split(char *line, char **fields, size_t max, const char **why) {
  size_t len = strlen(line);
  if (len && line[len - 1] == '\r') line[--len] = '\0';
  size_t n = 0;
  char *p = line;
  for (;;) {
    if (n == max) {
      *why = "too many columns";
      return -1;
    }
    while (is_space(*p)) p++;
    char *out = p, *start = p;
    if (*p == '"') {
      /* Quoted: copy down over the quotes, "" becomes ". */
      p++;
      for (;;) {
        if (!*p) {
          *why = "a quoted field is not closed (a quote is missing)";
          return -1;
        }
        if (*p == '"') {
          if (p[1] == '"') {
            *out++ = '"';
            p += 2;
            continue;
          }
          p++;
          break;
        }
        *out++ = *p++;
      }
      while (is_space(*p)) p++;
      if (*p && *p != ',') {
        *why = "text after a closing quote (quote the whole field, doubling quotes inside)";
        return -1;
      }
    } else {
      while (*p && *p != ',') {
        if (*p == '"') {
          *why = "a quote inside an unquoted field (quote the whole field, doubling quotes inside)";
          return -1;
        }
        p++;
      }
      out = p;
      while (out > start && is_space(out[-1])) out--;
    }
    char sep = *p;
    *out = '\0';
    fields[n++] = start;
    if (!sep) return (int)n;
    p++;
  }
}
