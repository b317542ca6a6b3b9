/* Small helpers shared by the simulator modules: a growable byte buffer,
 * string lists, URL/JSON escaping, random identifiers and clocks.
 * Nothing here knows about HTTP or tenants. */
#ifndef SIM_UTIL_H
#define SIM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Growable NUL-terminated buffer. A failed allocation sets `oom` and turns
 * every later append into a no-op, so builders check once at the end. */
typedef struct sim_buf {
  char *data;
  size_t len;
  size_t cap;
  bool oom;
} sim_buf;

void sim_buf_append(sim_buf *b, const char *s, size_t n);
void sim_buf_puts(sim_buf *b, const char *s);
void sim_buf_printf(sim_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
void sim_buf_json_str(sim_buf *b, const char *s);
/* Appends s percent-encoded for a URL query component (RFC 3986 unreserved kept). */
void sim_buf_url_encode(sim_buf *b, const char *s);
/* Hands the buffer to the caller (who frees it) and resets b; NULL after OOM. */
char *sim_buf_steal(sim_buf *b, size_t *len);
void sim_buf_free(sim_buf *b);

/* NULL-safe list of owned strings. */
typedef struct sim_strv {
  char **v;
  size_t n;
} sim_strv;

int sim_strv_push(sim_strv *sv, const char *s);
bool sim_strv_contains(const sim_strv *sv, const char *s);
int sim_strv_copy(sim_strv *dst, const sim_strv *src);
void sim_strv_free(sim_strv *sv);

/* Decodes application/x-www-form-urlencoded text in place ('+' is a space).
 * Returns false on a malformed %-escape or an embedded NUL. */
bool sim_form_unescape(char *s);

/* RFC 4122 version 4 UUID text (37 bytes with NUL) from OpenSSL's CSPRNG. */
void sim_uuid4(char out[37]);

/* n random bytes base64url-encoded into a new string (caller frees). */
char *sim_random_b64url(size_t n);

/* Wall clock in seconds since the epoch (what JWT exp is compared against). */
int64_t sim_now(void);
/* Wall clock in milliseconds: token lifetimes, so a token issued at x.9 s
 * does not expire almost a second early. */
int64_t sim_now_ms(void);
/* Monotonic milliseconds, for delays and request timing. */
int64_t sim_mono_ms(void);
/* Monotonic microseconds (request arrival times, GET /_sim/tenants/{t}/load). */
int64_t sim_mono_us(void);

/* The scheme of the URLs the simulator builds for itself ("http", or
 * "https" with --tls-cert): discovery, token audience, next links, Binary
 * URLs, export URLs. Set once by main before any server starts; immutable
 * afterwards, so it is read without a lock. */
void sim_set_scheme(const char *scheme);
const char *sim_scheme(void);

char *sim_strdup(const char *s); /* NULL-safe strdup */

/* Cuts an incomplete UTF-8 sequence off the end of s. Messages built with
 * snprintf from client-supplied text are truncated at byte boundaries, and
 * jansson refuses invalid UTF-8, which would turn an error answer into a 500. */
void sim_utf8_trim(char *s);

#endif
