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

/* Text from peers goes into fixed-size buffers (a tenant in an error, a
 * server's OperationOutcome in a failure reason). A plain copy may cut a
 * character in half, and the half is not UTF-8. These cut on character
 * boundaries instead, so what is kept reads the same; fx_utf8_fix is the net
 * for what was never UTF-8. */

/* The length of the longest prefix of s with at most max bytes that does not
 * end inside a UTF-8 character (s is NUL-terminated; scanning stops there).
 * A byte that starts no well-formed sequence counts as one character, except
 * a sequence cut by the end of s itself, which is left out. For
 * "%.*s" with a bound: printf("%.*s", (int)fx_utf8_cut(s, 64), s). */
size_t fx_utf8_cut(const char *s, size_t max);

/* Copies as much of src as fits into out (size bytes, NUL-terminated when
 * size > 0) without cutting a character (fx_utf8_cut), then makes the copy
 * valid UTF-8 (fx_utf8_fix). NULL copies as "". Returns the copy's length. */
size_t fx_utf8_copy(char *out, size_t size, const char *src);

/* Drops a UTF-8 sequence left incomplete at the end of s, in place: after an
 * snprintf that may have cut the last character of what it wrote. */
void fx_utf8_trim(char *s);

/* Copies src into out (size bytes, always NUL-terminated when size > 0) for
 * a terminal: control characters (C0, DEL and the C1 range U+0080..U+009F,
 * which start escape sequences) and bytes that are not well-formed UTF-8
 * become \xNN, a backslash becomes \\, other characters are kept whole. Text
 * that does not fit is left out at a character or escape boundary. NULL
 * copies as "". */
void fx_str_printable(const char *src, char *out, size_t size);

#endif
