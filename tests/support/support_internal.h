/* Shared by the fx_testsupport sources; not for tests. */
#ifndef FX_SUPPORT_INTERNAL_H
#define FX_SUPPORT_INTERNAL_H

#include <stddef.h>
#include <sys/types.h>

typedef struct fx_test__sbuf {
  char *data;
  size_t len, cap;
  int oom;
} fx_test__sbuf;

void fx_test__sbuf_append(fx_test__sbuf *b, const char *s, size_t n);
/* Returns the NUL-terminated contents (never NULL unless OOM) and resets b. */
char *fx_test__sbuf_take(fx_test__sbuf *b, size_t *len);

/* Mutable copy of a NULL-terminated argv for execv (which takes char *const *).
 * Only used in a forked child right before exec, so it is never freed. */
char **fx_test__argv_dup(const char *const *argv);

/* Waits up to timeout_ms for pid; returns the exit code (128+N when killed by
 * signal N) or -1 on timeout. */
int fx_test__wait_child(pid_t pid, int timeout_ms);

#endif
