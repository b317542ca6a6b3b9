/* Small string helpers that libc lacks. */
#ifndef FX_STRUTIL_H
#define FX_STRUTIL_H

#include <stddef.h>

/* A NUL-terminated copy of n bytes that need not be NUL-terminated (Kafka
 * keys, HTTP bodies). Unlike strndup it never looks past p + n. New string,
 * NULL on OOM or when p is NULL. */
char *fx_memstr(const void *p, size_t n);

#endif
