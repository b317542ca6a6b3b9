/* Small string helpers that libc lacks. */
#ifndef FX_STRUTIL_H
#define FX_STRUTIL_H

#include <stddef.h>

/* A NUL-terminated copy of n bytes that need not be NUL-terminated (Kafka
 * keys, HTTP bodies). Unlike strndup it never looks past p + n. New string,
 * NULL on OOM or when p is NULL. */
char *fx_memstr(const void *p, size_t n);

/* 1 if the JSON text in p[0..n) nests objects/arrays no deeper than max
 * (strings are skipped, escapes honoured); 0 otherwise. A cheap check
 * before parsing untrusted documents. */
int fx_json_depth_ok(const char *p, size_t n, int max);

#endif
