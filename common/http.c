#include "common/http.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"

#define DEFAULT_TIMEOUT_MS 60000L
#define DEFAULT_CONNECT_MS 10000L
#define DEFAULT_MAX_BODY ((size_t)64 << 20)
#define DEFAULT_MAX_ERROR_BODY ((size_t)256 << 10)
#define DEFAULT_MAX_RETRY_AFTER_MS (3600L * 1000L)

typedef struct fx_http_xfer xfer;

struct fx_http {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  xfer *inflight; /* doubly linked list of transfers owned by the multi */
  struct sock_ctx *socks; /* sockets being watched, closed at teardown if curl did not */
  size_t n_inflight;
  int dispatching; /* > 0 while completion callbacks run */
  int closing;
  /* Defaults copied from the configuration. */
  long timeout_ms, connect_ms, low_speed_bytes, low_speed_s;
  size_t max_body, max_error_body;
  long max_retry_after_ms;
  char *ca_bundle;
  char *user_agent;
};

struct fx_http_xfer {
  xfer *prev, *next;
  fx_http *h;
  CURL *easy;
  struct curl_slist *headers;
  char *url;
  char *body;
  size_t len, cap, max_body;
  int too_large;
  int failed_status;   /* 1: not 2xx, so at most max_error_body is kept; 0: 2xx; -1: not known yet */
  int error_truncated; /* the error body went past max_error_body: reading stopped there */
  fx_http_sink sink;
  void *sink_arg;
  int streaming; /* 1: 2xx, chunks go to the sink; -1: not 2xx, buffered; 0: not known yet */
  int sink_abort;
  size_t streamed;
  fx_http_cb cb;
  void *arg;
  int public_only;
  char refused[96]; /* public_only: the last address refused, "127.0.0.1 (loopback)" */
  char errbuf[CURL_ERROR_SIZE];
};

/* One per socket curl asks us to watch; freed in the uv close callback. */
typedef struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  fx_http *h;
  struct sock_ctx *prev, *next;
} sock_ctx;

static void sock_close(fx_http *h, sock_ctx *s);

static const char *v4_kind(uint32_t a) { /* host order */
  if ((a >> 24) == 127) return "loopback";
  if ((a >> 24) == 0) return "unspecified";
  if ((a >> 24) == 10 || (a >> 20) == (172u << 4 | 1) || (a >> 16) == (192u << 8 | 168))
    return "private";
  if ((a >> 22) == (100u << 2 | 1)) return "private (shared address space, RFC 6598)";
  if ((a >> 16) == (169u << 8 | 254)) return "link-local";
  if ((a >> 28) == 14) return "multicast";
  if ((a >> 28) == 15) return "reserved";
  return NULL;
}

const char *fx_http_address_kind(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return v4_kind(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
  if (sa->sa_family != AF_INET6) return "reserved";
  const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
  static const unsigned char zero[16], mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff},
                                       nat64[12] = {0, 0x64, 0xff, 0x9b};
  if (memcmp(b, zero, 16) == 0) return "unspecified";
  if (memcmp(b, zero, 15) == 0 && b[15] == 1) return "loopback";
  if (memcmp(b, mapped, 12) == 0 || memcmp(b, zero, 12) == 0 || memcmp(b, nat64, 12) == 0)
    return v4_kind((uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15]);
  if (b[0] == 0xff) return "multicast";
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return "link-local";
  if ((b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)) return "private";
  return NULL;
}

/* public_only: curl asks for a socket for each address it is about to
 * connect to (after DNS, so the address is the real one). */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a) {
  xfer *x = clientp;
  const char *kind = purpose == CURLSOCKTYPE_IPCXN ? fx_http_address_kind(&a->addr) : NULL;
  if (kind) {
    char ip[INET6_ADDRSTRLEN] = "?";
    const void *src = a->family == AF_INET6
                          ? (const void *)&((const struct sockaddr_in6 *)&a->addr)->sin6_addr
                          : (const void *)&((const struct sockaddr_in *)&a->addr)->sin_addr;
    inet_ntop(a->family, src, ip, sizeof ip);
    snprintf(x->refused, sizeof x->refused, "%s (%s)", ip, kind);
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype, a->protocol);
}

static void check_done(fx_http *h);

/* curl_global_init is thread-safe since 7.84, but once per process is all it needs. */
static void global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx *s = p->data;
  fx_http *h = s->h;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  check_done(h);
}

static void on_sock_closed(uv_handle_t *handle) { free(handle->data); }

static void sock_close(fx_http *h, sock_ctx *s) {
  if (s->prev) s->prev->next = s->next;
  else h->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)easy;
  fx_http *h = userp;
  sock_ctx *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      sock_close(h, s);
      curl_multi_assign(h->multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->fd = fd;
    s->h = h;
    s->poll.data = s;
    if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    curl_multi_assign(h->multi, fd, s);
    s->next = h->socks;
    if (h->socks) h->socks->prev = s;
    h->socks = s;
  }
  int events = 0;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  fx_http *h = t->data;
  int running;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(h);
}

static int on_timer_change(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  fx_http *h = userp;
  if (timeout_ms < 0)
    uv_timer_stop(&h->timer);
  else /* 0 means "as soon as possible": the next loop iteration, never inline */
    uv_timer_start(&h->timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

/* Whether the answer is a failure (not 2xx), decided at its first body bytes.
 * A success too large by its Content-Length is refused before any is read
 * (curl's CURLOPT_MAXFILESIZE would also refuse an error that way and lose
 * its status). */
static void classify(xfer *x) {
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  x->failed_status = !(status >= 200 && status < 300);
  if (x->sink) x->streaming = x->failed_status ? -1 : 1;
  curl_off_t length = -1;
  if (!x->failed_status &&
      curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK &&
      length > 0 && (uint64_t)length > (uint64_t)x->max_body)
    x->too_large = 1;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp) {
  xfer *x = userp;
  size_t n = size * nmemb;
  if (x->failed_status < 0) classify(x);
  if (x->too_large) return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
  if (x->streaming == 1) {
    if (x->sink_abort) return 0; /* refused already: curl may still flush what it held */
    if (x->streamed + n > x->max_body) {
      x->too_large = 1;
      return 0;
    }
    x->streamed += n;
    int rc = x->sink(data, n, x->sink_arg, x);
    if (rc < 0) {
      x->sink_abort = 1;
      return 0;
    }
    /* Pausing from inside the write callback is allowed; this chunk is
     * consumed, the next one waits for fx_http_resume. */
    if (rc == FX_HTTP_PAUSE) curl_easy_pause(x->easy, CURLPAUSE_RECV);
    return n;
  }
  size_t keep = n;
  if (x->failed_status) {
    /* An error's body says why; its start is enough. The rest is neither
     * held nor read: the transfer stops here and still answers its status. */
    size_t room = x->len < x->h->max_error_body ? x->h->max_error_body - x->len : 0;
    if (n > room) {
      keep = room;
      x->error_truncated = 1;
    }
  } else if (x->len + n > x->max_body) {
    x->too_large = 1;
    return 0;
  }
  if (x->len + keep + 1 > x->cap) {
    size_t cap = x->cap ? x->cap : 16384;
    while (cap < x->len + keep + 1) cap *= 2;
    char *b = realloc(x->body, cap);
    if (!b) return 0;
    x->body = b;
    x->cap = cap;
  }
  memcpy(x->body + x->len, data, keep);
  x->len += keep;
  x->body[x->len] = '\0';
  return x->error_truncated ? 0 : n; /* 0: CURLE_WRITE_ERROR, read as the answer in complete() */
}

int fx_http_new(uv_loop_t *loop, const fx_http_conf *conf, fx_http **out, fx_err *err) {
  *out = NULL;
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, global_init);
  fx_http *h = calloc(1, sizeof *h);
  if (!h) return fx_err_set(err, FX_ENOMEM, "out of memory");
  h->loop = loop;
  h->timeout_ms = conf ? (long)conf->timeout_ms : DEFAULT_TIMEOUT_MS;
  h->connect_ms = conf ? (long)conf->connect_timeout_ms : DEFAULT_CONNECT_MS;
  h->max_body = conf ? (size_t)conf->max_response_bytes : DEFAULT_MAX_BODY;
  h->max_error_body = conf && conf->max_error_body_bytes > 0 ? (size_t)conf->max_error_body_bytes
                                                             : DEFAULT_MAX_ERROR_BODY;
  h->max_retry_after_ms = conf && conf->max_retry_after_s > 0
                              ? (long)(conf->max_retry_after_s * 1000)
                              : DEFAULT_MAX_RETRY_AFTER_MS;
  if (h->max_retry_after_ms > FX_RETRY_AFTER_MAX_MS) h->max_retry_after_ms = FX_RETRY_AFTER_MAX_MS;
  h->low_speed_bytes = conf ? (long)conf->low_speed_bytes : 1;
  h->low_speed_s = conf ? (long)conf->low_speed_seconds : 30;
  h->ca_bundle = conf && conf->ca_bundle ? strdup(conf->ca_bundle) : NULL;
  h->user_agent = strdup(conf && conf->user_agent ? conf->user_agent : "fhirx/0.1");
  h->multi = curl_multi_init();
  if (!h->multi || !h->user_agent) {
    curl_multi_cleanup(h->multi);
    free(h->ca_bundle);
    free(h->user_agent);
    free(h);
    return fx_err_set(err, FX_ENOMEM, "cannot create an HTTP client (out of memory)");
  }
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  *out = h;
  return 0;
}

static void xfer_free(xfer *x) {
  if (x->easy) curl_easy_cleanup(x->easy);
  curl_slist_free_all(x->headers);
  free(x->url);
  free(x->body);
  free(x);
}

static void unlink_xfer(fx_http *h, xfer *x) {
  if (x->prev) x->prev->next = x->next;
  else h->inflight = x->next;
  if (x->next) x->next->prev = x->prev;
  h->n_inflight--;
}

static int add_header(xfer *x, const char *name, const char *value) {
  size_t n = strlen(name) + 2 + strlen(value) + 1;
  char *line = malloc(n);
  if (!line) return -1;
  snprintf(line, n, "%s: %s", name, value);
  struct curl_slist *l = curl_slist_append(x->headers, line);
  free(line);
  if (!l) return -1;
  x->headers = l;
  return 0;
}

int fx_http_send(fx_http *h, const fx_http_request *req, fx_http_cb cb, void *arg, fx_err *err) {
  if (h->closing) return fx_err_set(err, FX_ECANCELED, "HTTP client is shutting down");
  if (!req->url) return fx_err_set(err, FX_EINVAL, "HTTP request without a URL");
  xfer *x = calloc(1, sizeof *x);
  if (!x) return fx_err_set(err, FX_ENOMEM, "out of memory");
  x->h = h;
  x->cb = cb;
  x->arg = arg;
  x->max_body = req->max_body ? req->max_body : h->max_body;
  x->failed_status = -1;
  x->sink = req->sink;
  x->sink_arg = req->sink_arg;
  x->public_only = req->public_only;
  x->url = strdup(req->url);
  x->easy = curl_easy_init();
  int bad = !x->url || !x->easy;
  /* Headers: an empty "Expect:" stops curl from waiting for 100-continue on POSTs. */
  if (!bad && req->accept) bad |= add_header(x, "Accept", req->accept);
  if (!bad && req->content_type) bad |= add_header(x, "Content-Type", req->content_type);
  if (!bad && req->bearer) {
    size_t n = strlen(req->bearer) + 8;
    char *v = malloc(n);
    bad |= !v;
    if (v) {
      snprintf(v, n, "Bearer %s", req->bearer);
      bad |= add_header(x, "Authorization", v);
      OPENSSL_clear_free(v, n);
    }
  }
  for (const char *const *hl = req->headers; !bad && hl && *hl; hl++) {
    struct curl_slist *l = curl_slist_append(x->headers, *hl);
    if (!l) bad = 1;
    else x->headers = l;
  }
  if (!bad && req->body) {
    struct curl_slist *l = curl_slist_append(x->headers, "Expect:");
    if (!l) bad = 1;
    else x->headers = l;
  }
  if (bad) {
    xfer_free(x);
    return fx_err_set(err, FX_ENOMEM, "out of memory preparing an HTTP request");
  }

  CURL *e = x->easy;
  curl_easy_setopt(e, CURLOPT_URL, x->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, x);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
  curl_easy_setopt(e, CURLOPT_USERAGENT, h->user_agent);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, ""); /* every encoding curl was built with */
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  if (h->ca_bundle) curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_bundle);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms ? req->timeout_ms : h->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, h->connect_ms);
  if (h->low_speed_bytes > 0) {
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, h->low_speed_bytes);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, h->low_speed_s);
  }
  /* No CURLOPT_MAXFILESIZE: on_body bounds successes by max_body and
   * errors by max_error_body (curl's check would lose an error's status). */
  if (x->public_only) {
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
    /* A pooled connection was opened without the check: never reuse one,
     * and never leave this one for a request that would not check. */
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
  }
  /* A stream may take long in total; the low-speed abort catches a stall. */
  if (req->sink && !req->timeout_ms) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 0L);
  if (req->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)(req->body_len ? req->body_len : strlen(req->body)));
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body);
  }
  if (req->method && strcmp(req->method, "GET") != 0) {
    if (strcmp(req->method, "POST") == 0 && req->body)
      curl_easy_setopt(e, CURLOPT_POST, 1L);
    else
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
  }

  if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
    xfer_free(x);
    return fx_err_set(err, FX_ENOMEM, "cannot start an HTTP request");
  }
  x->next = h->inflight;
  if (h->inflight) h->inflight->prev = x;
  h->inflight = x;
  h->n_inflight++;
  return 0;
}

static int map_curl_error(CURLcode c, int too_large) {
  if (too_large || c == CURLE_FILESIZE_EXCEEDED) return FX_ETOOLARGE;
  switch (c) {
  case CURLE_OK: return 0;
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL: return FX_EINVAL;
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM: return FX_EIO; /* a TLS trust problem will not fix itself */
  case CURLE_OUT_OF_MEMORY: return FX_ENOMEM;
  default: return FX_ETRANSIENT; /* connect failures, resets, timeouts, bad framing */
  }
}

/* What an operator can do about a certificate that was not accepted (curl's
 * text says what was wrong, not what to change). */
static const char *tls_hint(CURLcode c, const char *curl_text) {
  if (c == CURLE_SSL_CACERT_BADFILE)
    return " (http.ca_bundle: the file cannot be read as PEM certificates)";
  if (c != CURLE_PEER_FAILED_VERIFICATION) return "";
  if (strstr(curl_text, "subject name") || strstr(curl_text, "host name"))
    return " (the server's certificate does not name the host of this URL: use the host name "
           "the certificate was issued for in tenants[].fhir_base)";
  return " (the server's certificate is not trusted: if the tenant uses a private CA, set "
         "http.ca_bundle to that CA's certificate; else the server sends an incomplete chain)";
}

static void complete(xfer *x, CURLcode code) {
  fx_http_response res;
  memset(&res, 0, sizeof res);
  res.url = x->url;
  res.easy_ = x->easy;
  res.body = x->body ? x->body : (char *)"";
  res.body_len = x->len;
  res.body_truncated = x->error_truncated;
  res.retry_after_cap_ms_ = x->h->max_retry_after_ms;
  if (x->error_truncated && code == CURLE_WRITE_ERROR) code = CURLE_OK; /* stopped on purpose */
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &res.status);
  curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &res.seconds);
  res.result = x->sink_abort ? FX_ECANCELED : map_curl_error(code, x->too_large);
  /* Refused only when no connection was made: an address refused while curl
   * went on to a public one of the same host does not turn a later timeout
   * or reset into a permanent refusal. */
  if (code == CURLE_COULDNT_CONNECT && x->refused[0] && !x->sink_abort) {
    res.result = FX_EPERM;
    snprintf(res.error, sizeof res.error,
             "refused to connect to %s: this request may reach only public addresses", x->refused);
  } else if (x->sink_abort)
    snprintf(res.error, sizeof res.error, "transfer stopped by its reader");
  else if (res.result == FX_ETOOLARGE)
    snprintf(res.error, sizeof res.error, "response body larger than %zu bytes", x->max_body);
  else if (res.result)
    snprintf(res.error, sizeof res.error, "%s%s",
             x->errbuf[0] ? x->errbuf : curl_easy_strerror(code), tls_hint(code, x->errbuf));
  x->cb(&res, x->arg);
  xfer_free(x);
}

/* Reaps finished transfers. Handles are removed here, after
 * curl_multi_socket_action has returned, never inside a curl callback. */
static void check_done(fx_http *h) {
  if (h->closing) return;
  h->dispatching++;
  CURLMsg *m;
  int left;
  while (!h->closing && (m = curl_multi_info_read(h->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    xfer *x = NULL;
    CURLcode code = m->data.result;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    curl_multi_remove_handle(h->multi, x->easy);
    unlink_xfer(h, x);
    complete(x, code);
  }
  h->dispatching--;
  if (h->closing && h->dispatching == 0) fx_http_close(h);
}

const char *fx_http_header(const fx_http_response *res, const char *name) {
  struct curl_header *hd = NULL;
  if (!res->easy_ || res->status == 0) return NULL;
  if (curl_easy_header(res->easy_, name, 0, CURLH_HEADER, -1, &hd) != CURLHE_OK || !hd)
    return NULL;
  /* The last occurrence wins, e.g. for a repeated Retry-After. */
  if (hd->amount > 1 &&
      curl_easy_header(res->easy_, name, hd->amount - 1, CURLH_HEADER, -1, &hd) != CURLHE_OK)
    return NULL;
  return hd->value;
}

size_t fx_http_inflight(const fx_http *h) { return h->n_inflight; }

static long clamp_wait(long long ms) {
  if (ms <= 0) return 0;
  return ms > FX_RETRY_AFTER_MAX_MS ? FX_RETRY_AFTER_MAX_MS : (long)ms;
}

long fx_http_retry_after_value_ms(const char *value, long long now_ms) {
  if (!value) return -1;
  const char *p = value;
  while (*p == ' ' || *p == '\t') p++;
  const char *digits = p;
  /* Saturate far above anything read below (10^15 is more than any epoch
   * in milliseconds), so a 40-digit value cannot overflow. */
  const long long cap = 1000000000000000LL;
  long long v = 0;
  while (*p >= '0' && *p <= '9') {
    v = v > cap / 10 ? cap : v * 10 + (*p - '0');
    if (v > cap) v = cap; /* v <= cap: v * 1000 below cannot overflow */
    p++;
  }
  const char *end = p;
  while (*p == ' ' || *p == '\t') p++;
  if (end != digits && *p == '\0') {
    const long long window_ms = FX_RETRY_AFTER_EPOCH_WINDOW_S * 1000;
    if (v >= FX_RETRY_AFTER_EPOCH_MIN) {
      long long at_s = v * 1000; /* v <= cap: no overflow */
      if (v <= cap / 1000 && at_s >= now_ms - window_ms && at_s <= now_ms + window_ms)
        return clamp_wait(at_s - now_ms); /* epoch seconds */
      if (v >= now_ms - window_ms && v <= now_ms + window_ms)
        return clamp_wait(v - now_ms); /* epoch milliseconds */
    }
    return v > FX_RETRY_AFTER_MAX_MS / 1000 ? FX_RETRY_AFTER_MAX_MS : clamp_wait(v * 1000);
  }
  time_t when = curl_getdate(value, NULL);
  if (when == -1) return -1; /* unreadable (or the one second before 1970) */
  long long when_s = (long long)when;
  if (when_s < 0) return 0; /* before 1970: long passed */
  if (when_s > cap / 1000) return FX_RETRY_AFTER_MAX_MS;
  return clamp_wait(when_s * 1000 - now_ms);
}

long fx_http_retry_after_ms(const fx_http_response *res, int flags, fx_retry_after_use *use) {
  fx_retry_after_use dummy;
  if (!use) use = &dummy;
  *use = FX_RA_NONE;
  const char *v = res && res->result == 0 ? fx_http_header(res, "Retry-After") : NULL;
  if (!v) return -1;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  long ms = fx_http_retry_after_value_ms(v, (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
  if (ms < 0) return -1;
  int meaningful =
      res->status == 429 || res->status == 503 || (res->status == 202 && (flags & FX_RA_POLL));
  if (!meaningful) {
    *use = FX_RA_IGNORED;
    return -1;
  }
  long cap = res->retry_after_cap_ms_ > 0 ? res->retry_after_cap_ms_ : DEFAULT_MAX_RETRY_AFTER_MS;
  if (ms > cap) {
    *use = FX_RA_CAPPED;
    return cap;
  }
  *use = FX_RA_HONOURED;
  return ms;
}

void fx_http_resume(fx_http_xfer *x) {
  /* curl arms its timer on unpause, so the multi picks the transfer up again. */
  curl_easy_pause(x->easy, CURLPAUSE_CONT);
}

static void on_timer_closed(uv_handle_t *t) {
  fx_http *h = t->data;
  free(h->ca_bundle);
  free(h->user_agent);
  free(h);
}

void fx_http_close(fx_http *h) {
  if (!h) return;
  if (!h->multi) return; /* already torn down, waiting for the timer to close */
  h->closing = 1;
  if (h->dispatching) return; /* check_done finishes the job when callbacks unwind */
  h->dispatching++;           /* callbacks below may call fx_http_close again */
  while (h->inflight) {
    xfer *x = h->inflight;
    curl_multi_remove_handle(h->multi, x->easy);
    unlink_xfer(h, x);
    fx_http_response res;
    memset(&res, 0, sizeof res);
    res.url = x->url;
    res.body = (char *)"";
    res.result = FX_ECANCELED;
    snprintf(res.error, sizeof res.error, "request canceled: HTTP client shutting down");
    x->cb(&res, x->arg);
    xfer_free(x);
  }
  h->dispatching--;
  curl_multi_cleanup(h->multi); /* may still report CURL_POLL_REMOVE for pooled sockets */
  h->multi = NULL;
  while (h->socks) sock_close(h, h->socks);
  uv_timer_stop(&h->timer);
  uv_close((uv_handle_t *)&h->timer, on_timer_closed);
}
