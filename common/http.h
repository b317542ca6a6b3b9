/* Asynchronous HTTP client: one curl multi handle driven by one libuv loop.
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION -> one
 * uv_poll_t per socket, stored with curl_multi_assign) and when to wake it
 * (CURLMOPT_TIMERFUNCTION -> one uv_timer_t); libuv tells curl what happened
 * with curl_multi_socket_action. Nothing blocks the loop. Connections are kept
 * alive and reused, responses may be compressed, HTTP/2 is used where the
 * server offers it, TLS peer and host verification are always on, and
 * redirects are never followed (callers decide, so a bearer token cannot leak
 * to another host).
 *
 * Thread: every function must be called on the loop's thread. */
#ifndef FX_HTTP_H
#define FX_HTTP_H

#include <stddef.h>
#include <uv.h>

#include "common/config.h"
#include "common/err.h"

typedef struct fx_http fx_http;
typedef struct fx_http_xfer fx_http_xfer;

/* A streamed body: for a 2xx response, each chunk goes to the sink as it
 * arrives instead of being buffered (other statuses are buffered as usual,
 * so errors can be read). Return 0 to go on, FX_HTTP_PAUSE to stop
 * receiving after this chunk (the chunk counts as consumed; resume with
 * fx_http_resume), or -1 to abort the transfer (result FX_ECANCELED). The
 * xfer stays valid until the completion callback has run. */
#define FX_HTTP_PAUSE 1
typedef int (*fx_http_sink)(const char *data, size_t len, void *arg, fx_http_xfer *x);

typedef struct fx_http_request {
  const char *method;       /* NULL = GET; also "POST", "DELETE" */
  const char *url;          /* absolute */
  const char *accept;       /* Accept header, NULL = none */
  const char *content_type; /* for bodies */
  const char *body;         /* copied; may contain NULs when body_len is given */
  size_t body_len;
  const char *bearer;       /* Authorization: Bearer <bearer>; never logged */
  const char *const *headers; /* extra "Name: value" lines, NULL-terminated, or NULL */
  long timeout_ms;          /* 0 = the client's default; streams: the low-speed abort still applies */
  size_t max_body;          /* 0 = the client's default; streams: the most they may carry */
  fx_http_sink sink;        /* NULL = buffer the body */
  void *sink_arg;
  /* 1: never connect to an internal address (fx_http_address_kind): each
   * address curl is about to connect to is checked (CURLOPT_OPENSOCKETFUNCTION),
   * so a name that resolves to one is refused too, before any byte is sent.
   * When every address was refused the result is FX_EPERM and error names
   * the address and its kind. Used for token-less bulk downloads of
   * production tenants (tenants[].allow_private_storage). Behind a proxy
   * it is the proxy's address that is checked. */
  int public_only;
} fx_http_request;

typedef struct fx_http_response {
  int result;        /* 0: a response arrived (any status); else FX_E* transport failure */
  long status;       /* HTTP status, 0 if none */
  char *body;        /* NUL-terminated, owned by the client, valid during the callback */
  size_t body_len;
  int body_truncated; /* a non-2xx body longer than http.max_error_body_bytes: body
                         holds its start, the rest was not read */
  const char *url;   /* the requested URL */
  double seconds;    /* total transfer time */
  char error[512];   /* transport failure text (curl's, plus what to do for TLS trust
                        failures), empty on success */
  void *easy_;       /* private: lets fx_http_header read response headers */
  long retry_after_cap_ms_; /* private: http.max_retry_after_s of the client, in ms */
} fx_http_response;

/* Called exactly once per successful fx_http_send, on the loop thread, also
 * when the client is closed first (result FX_ECANCELED). */
typedef void (*fx_http_cb)(fx_http_response *res, void *arg);

/* Creates a client on loop. conf may be NULL for defaults. */
int fx_http_new(uv_loop_t *loop, const fx_http_conf *conf, fx_http **out, fx_err *err);

/* What kind of internal address sa is ("loopback", "private", "link-local",
 * "unspecified", "multicast", "reserved"), or NULL for a public one. IPv4 in
 * IPv6 (::ffff:a.b.c.d, ::a.b.c.d, 64:ff9b::a.b.c.d) is judged by its IPv4
 * address. */
struct sockaddr;
const char *fx_http_address_kind(const struct sockaddr *sa);

/* Starts a request. Returns 0 and later calls cb, or a negative code without
 * calling cb (bad arguments, out of memory, client closing). */
int fx_http_send(fx_http *h, const fx_http_request *req, fx_http_cb cb, void *arg, fx_err *err);

/* Value of a response header (last occurrence), or NULL. Valid during the callback. */
const char *fx_http_header(const fx_http_response *res, const char *name);

/* Resumes a transfer its sink paused. Call on the loop thread before the
 * transfer's completion callback. */
void fx_http_resume(fx_http_xfer *x);

/* What fx_http_retry_after_ms made of a response's Retry-After. */
typedef enum fx_retry_after_use {
  FX_RA_NONE = 0, /* absent or unreadable */
  FX_RA_HONOURED, /* on a status that gives it meaning, within http.max_retry_after_s */
  FX_RA_CAPPED,   /* longer than http.max_retry_after_s: cut to it */
  FX_RA_IGNORED   /* on a status where HTTP gives it no meaning (a 200, a 500, ...) */
} fx_retry_after_use;

/* flags of fx_http_retry_after_ms: the answer is a bulk export's kick-off or
 * status poll, where a 202's Retry-After says when to poll next. */
#define FX_RA_POLL 1

/* The response's Retry-After in milliseconds from now, or -1 when absent,
 * unreadable or ignored. The one place Retry-After is honoured: everything
 * that waits for it calls this (fx_http_retry_after_value_ms says how a value
 * is read). It counts only where HTTP gives it meaning: on a 429 or a 503 (RFC
 * 9110 10.2.3, RFC 6585 4), and with FX_RA_POLL on a 202; on any other status
 * it is ignored (-1). It is cut to the client's http.max_retry_after_s. use
 * (may be NULL) says which of these happened, for the metrics. */
long fx_http_retry_after_ms(const fx_http_response *res, int flags, fx_retry_after_use *use);

/* A Retry-After value too large to be a delay: 10^9 s is over 31 years. */
#define FX_RETRY_AFTER_EPOCH_MIN 1000000000LL
/* How far from this machine's clock such a value may be and still be read
 * as a point in time (epoch seconds or milliseconds): 7 days either way. */
#define FX_RETRY_AFTER_EPOCH_WINDOW_S (7LL * 86400)
/* The longest wait returned: 7 days (also fits a 32-bit long). Callers clamp
 * further to their own limits. */
#define FX_RETRY_AFTER_MAX_MS (7L * 86400L * 1000L)

/* Reads one Retry-After value at wall-clock time now_ms (epoch ms):
 *  - RFC 9110 delay-seconds ("120"), or an HTTP-date (a date in the past is 0);
 *  - a delay-seconds value of at least FX_RETRY_AFTER_EPOCH_MIN that lies
 *    within FX_RETRY_AFTER_EPOCH_WINDOW_S of now, read as epoch seconds, or
 *    (divided by 1000) as epoch milliseconds, is that point in time (0 when
 *    it has passed). Against RFC 9110, some servers send one: the SMART
 *    reference Bulk Data server's rate limiter answers 429 with
 *    `Retry-After: <epoch ms>` and then `<epoch s>` (lib.ts rateLimiter).
 *    Read as seconds, such a value means decades, so nothing a real delay
 *    could mean is misread; a large value outside the window stays seconds.
 * Digits are accumulated with saturation, so no value overflows; the result
 * is clamped to FX_RETRY_AFTER_MAX_MS. -1 when value is NULL or neither form. */
long fx_http_retry_after_value_ms(const char *value, long long now_ms);

/* Requests in flight. */
size_t fx_http_inflight(const fx_http *h);

/* Cancels what is in flight (their callbacks run with FX_ECANCELED), releases
 * curl, closes the libuv handles and frees h once they are closed; the loop
 * must keep running until then. Safe to call from inside a response callback. */
void fx_http_close(fx_http *h);

#endif
