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

/* Copies in to out (size bytes, always NUL-terminated) with credentials a
 * server may have echoed replaced by "[redacted]": a bearer credential
 * ("Bearer <token>", any case), a JWT-shaped run ("eyJ..." with a dot, a
 * client assertion or an id token), and the values of client_assertion= and
 * access_token. For text from servers (OperationOutcome diagnostics, OAuth
 * error descriptions) before it goes into a failure record, a dead letter or
 * a log line: fhirx never puts a credential there itself, but a server may
 * repeat what it received. A guard for the common shapes, not a proof. */
void fx_redact_secrets(const char *in, char *out, size_t size);

/* Replaces every occurrence of secret (at least 8 bytes, else nothing is
 * done) in buf[0..len) by "[redacted]", in place, and returns the new length
 * (a NUL is written there when there is room). For the exact token a request
 * carried, which a server may echo without any recognizable shape. */
size_t fx_scrub_secret(char *buf, size_t len, size_t cap, const char *secret);

/* Makes s valid UTF-8 in place: every byte that does not start or continue a
 * well-formed sequence (a character cut in half by a fixed-size copy, or
 * bytes that were never UTF-8) becomes '?'. Returns the number of bytes
 * replaced. JSON strings must be UTF-8: jansson refuses anything else, and a
 * record built from such text would otherwise not be built at all. */
size_t fx_utf8_fix(char *s);

#endif
