/* fx_http against an in-process libmicrohttpd server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/fhir.h"
#include "common/http.h"
#include "common/strutil.h"

static struct MHD_Daemon *server;
static int port;
static atomic_int connections;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             const char *body, size_t len) {
  /* MUST_COPY: MHD copies before returning, so the const is never written through. */
  void *buf;
  memcpy(&buf, &body, sizeof buf);
  struct MHD_Response *r = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Retry-After", "7");
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

/* A 503 (or the "status" query value) whose Retry-After headers are the
 * request's "first" and "second" query values, in that order (none when
 * absent). */
static enum MHD_Result reply_retry(struct MHD_Connection *c) {
  struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
  const char *first = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "first");
  const char *second = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "second");
  if (first) MHD_add_response_header(r, "Retry-After", first);
  if (second) MHD_add_response_header(r, "Retry-After", second);
  const char *status = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "status");
  enum MHD_Result ret = MHD_queue_response(c, status ? (unsigned)atoi(status) : 503, r);
  MHD_destroy_response(r);
  return ret;
}

/* A 500 whose body is an OperationOutcome padded to ERROR_HUGE bytes, with
 * its length (Content-Length) or without (chunked, so only the bytes say how
 * long it is). */
#define ERROR_HUGE ((size_t)8 << 20)
#define OUTCOME_START \
  "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"exception\"," \
  "\"diagnostics\":\"storage unavailable "

static char error_huge[ERROR_HUGE];

static ssize_t error_huge_chunk(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)cls;
  if (pos >= ERROR_HUGE) return MHD_CONTENT_READER_END_OF_STREAM;
  size_t n = ERROR_HUGE - (size_t)pos < max ? ERROR_HUGE - (size_t)pos : max;
  memcpy(buf, error_huge + pos, n);
  return (ssize_t)n;
}

static enum MHD_Result reply_error_huge(struct MHD_Connection *c, int chunked) {
  if (!error_huge[0]) {
    memset(error_huge, 'x', sizeof error_huge);
    memcpy(error_huge, OUTCOME_START, strlen(OUTCOME_START));
  }
  struct MHD_Response *r =
      chunked ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 65536, error_huge_chunk,
                                                  NULL, NULL)
              : MHD_create_response_from_buffer(ERROR_HUGE, error_huge, MHD_RESPMEM_PERSISTENT);
  MHD_add_response_header(r, "Content-Type", "application/fhir+json");
  enum MHD_Result ret = MHD_queue_response(c, 500, r);
  MHD_destroy_response(r);
  return ret;
}

typedef struct upload {
  size_t len;
} upload;

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls) {
  (void)cls, (void)version;
  if (strcmp(method, "POST") == 0) {
    upload *u = *con_cls;
    if (!u) {
      *con_cls = calloc(1, sizeof *u);
      return MHD_YES;
    }
    if (*data_size) {
      u->len += *data_size;
      *data_size = 0;
      return MHD_YES;
    }
    char body[512];
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    int n = snprintf(body, sizeof body, "{\"len\":%zu,\"auth\":\"%s\",\"type\":\"%s\"}", u->len,
                     auth ? auth : "", type ? type : "");
    free(u);
    *con_cls = NULL;
    return reply(c, 200, "application/json", body, (size_t)n);
  }
  (void)data;
  /* Answer on the second call, once MHD knows the request is complete: a
   * response queued on the first call makes MHD close the connection. */
  static int marker;
  if (!*con_cls) {
    *con_cls = &marker;
    return MHD_YES;
  }
  if (strcmp(url, "/ok") == 0) return reply(c, 200, "application/json", "{\"ok\":true}", 11);
  if (strcmp(url, "/big") == 0) {
    /* Per request: MHD answers concurrent requests on their own threads (a shared buffer
     * filled on each request was a data race under TSan). */
    size_t n = (size_t)1 << 20;
    char *big = malloc(n);
    if (!big) return MHD_NO;
    memset(big, 'x', n);
    enum MHD_Result ret = reply(c, 200, "text/plain", big, n);
    free(big);
    return ret;
  }
  if (strcmp(url, "/slow") == 0) {
    sleep(2);
    return reply(c, 200, "text/plain", "late", 4);
  }
  if (strcmp(url, "/auth") == 0) {
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    return reply(c, 200, "text/plain", a ? a : "", a ? strlen(a) : 0);
  }
  if (strcmp(url, "/retry") == 0) return reply_retry(c);
  if (strcmp(url, "/error-huge") == 0) return reply_error_huge(c, 0);
  if (strcmp(url, "/error-huge-chunked") == 0) return reply_error_huge(c, 1);
  return reply(c, 404, "text/plain", "nope", 4);
}

static void on_conn(void *cls, struct MHD_Connection *c, void **socket_context,
                    enum MHD_ConnectionNotificationCode code) {
  (void)cls, (void)c, (void)socket_context;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) atomic_fetch_add(&connections, 1);
}

static int setup(void **state) {
  (void)state;
  server = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0,
                            NULL, NULL, handler, NULL, MHD_OPTION_NOTIFY_CONNECTION, on_conn,
                            NULL, MHD_OPTION_END);
  if (!server) return -1;
  port = MHD_get_daemon_info(server, MHD_DAEMON_INFO_BIND_PORT)->port;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  MHD_stop_daemon(server);
  return 0;
}

/* ---- a tiny driver: send, run the loop, collect ------------------------ */

typedef struct result {
  int done;
  int rc;
  long status;
  char body[256];
  char retry_after[16];
  long retry_after_ms;
  fx_retry_after_use retry_after_use;
  size_t body_len;
  int truncated;
  char type[64];
  char error[512];
} result;

/* What collect and get_once use: fx_http_retry_after_ms's flags, the client's
 * configuration (NULL: the defaults). */
static int ra_flags;
static const fx_http_conf *client_conf;

static void collect(fx_http_response *res, void *arg) {
  result *r = arg;
  r->done++;
  r->rc = res->result;
  r->status = res->status;
  snprintf(r->body, sizeof r->body, "%s", res->body);
  const char *ra = fx_http_header(res, "Retry-After");
  const char *ct = fx_http_header(res, "content-type"); /* case-insensitive */
  snprintf(r->retry_after, sizeof r->retry_after, "%s", ra ? ra : "");
  r->retry_after_ms = fx_http_retry_after_ms(res, ra_flags, &r->retry_after_use);
  r->body_len = res->body_len;
  r->truncated = res->body_truncated;
  snprintf(r->type, sizeof r->type, "%s", ct ? ct : "");
  snprintf(r->error, sizeof r->error, "%s", res->error);
}

/* A ring of buffers so several URLs can be alive in one test. */
static const char *url(const char *path) {
  static char bufs[8][128];
  static int next;
  char *buf = bufs[next++ % 8];
  snprintf(buf, sizeof bufs[0], "http://127.0.0.1:%d%s", port, path);
  return buf;
}

static void finish(uv_loop_t *loop, fx_http *h) {
  fx_http_close(h);
  uv_run(loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(loop), 0); /* every handle was closed */
}

static void get_ok(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, NULL, &h, &err), 0);
  result r = {0};
  fx_http_request req = {.url = url("/ok"), .accept = "application/json"};
  assert_int_equal(fx_http_send(h, &req, collect, &r, &err), 0);
  assert_int_equal(r.done, 0); /* never synchronous */
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(r.done, 1);
  assert_int_equal(r.rc, 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"ok\":true}");
  assert_string_equal(r.retry_after, "7");
  assert_int_equal(r.retry_after_ms, -1); /* a 200's Retry-After means nothing */
  assert_int_equal(r.retry_after_use, FX_RA_IGNORED);
  assert_string_equal(r.type, "application/json");
  assert_int_equal(fx_http_inflight(h), 0);
  finish(&loop, h);
}

/* GET path and collect the answer. */
static void get_once(const char *path, result *r) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, client_conf, &h, &err), 0);
  memset(r, 0, sizeof *r);
  fx_http_request req = {.url = url(path)};
  assert_int_equal(fx_http_send(h, &req, collect, r, &err), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(r->done, 1);
  assert_int_equal(r->rc, 0);
  finish(&loop, h);
}

/* An HTTP-date (IMF-fixdate) at t, query-escaped: "Tue%2C%2008%20Dec%202026%20...". */
static void http_date(time_t t, char *out, size_t size) {
  char date[64];
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  char *e = curl_easy_escape(NULL, date, 0);
  snprintf(out, size, "%s", e);
  curl_free(e);
}

static void retry_after_forms(void **state) {
  (void)state;
  result r;
  char path[128], date[96];
  /* Repeated headers: the last one counts (a proxy may add its own first). */
  get_once("/retry?first=1&second=9", &r);
  assert_int_equal(r.status, 503);
  assert_string_equal(r.retry_after, "9");
  assert_int_equal(r.retry_after_ms, 9000);
  get_once("/retry?first=120", &r);
  assert_int_equal(r.retry_after_ms, 120000);
  /* An HTTP-date two minutes ahead: about 120 s from now. The window allows
   * for the seconds a loaded machine takes between writing and reading it. */
  http_date(time(NULL) + 120, date, sizeof date);
  snprintf(path, sizeof path, "/retry?first=%s", date);
  get_once(path, &r);
  if (r.retry_after_ms < 100000 || r.retry_after_ms > 120000)
    fail_msg("Retry-After %s read as %ld ms", r.retry_after, r.retry_after_ms);
  /* A date is also the last of two. */
  snprintf(path, sizeof path, "/retry?first=1&second=%s", date);
  get_once(path, &r);
  assert_true(r.retry_after_ms >= 100000 && r.retry_after_ms <= 120000);
  /* A date in the past: go now. */
  http_date(1000000000, date, sizeof date); /* 2001 */
  snprintf(path, sizeof path, "/retry?first=%s", date);
  get_once(path, &r);
  assert_int_equal(r.retry_after_ms, 0);
  /* Absent, unreadable or negative: none. */
  get_once("/retry", &r);
  assert_int_equal(r.retry_after_ms, -1);
  get_once("/retry?first=soon", &r);
  assert_int_equal(r.retry_after_ms, -1);
  get_once("/retry?first=-5", &r);
  assert_int_equal(r.retry_after_ms, -1);
}

/* Retry-After counts where HTTP gives it meaning (429, 503; a bulk poll's
 * 202), never on a 200 or a 500: `Retry-After: 31536000` on a search's 200
 * once held a tenant's searches back for the longest wait there is. What does
 * count is cut to http.max_retry_after_s. */
static void retry_after_only_where_it_means_something(void **state) {
  (void)state;
  static const struct {
    const char *path;
    int flags;
    long want_ms;
    fx_retry_after_use want_use;
  } cases[] = {
      {"/retry?first=31536000&status=200", 0, -1, FX_RA_IGNORED},
      {"/retry?first=31536000&status=200", FX_RA_POLL, -1, FX_RA_IGNORED},
      {"/retry?first=7&status=500", 0, -1, FX_RA_IGNORED},
      {"/retry?first=7&status=502", 0, -1, FX_RA_IGNORED},
      {"/retry?first=7&status=404", 0, -1, FX_RA_IGNORED},
      {"/retry?first=7&status=202", 0, -1, FX_RA_IGNORED},
      {"/retry?first=7&status=202", FX_RA_POLL, 7000, FX_RA_HONOURED},
      {"/retry?first=7&status=429", 0, 7000, FX_RA_HONOURED},
      {"/retry?first=7&status=503", 0, 7000, FX_RA_HONOURED},
      {"/retry?first=3600&status=503", 0, 3600000, FX_RA_HONOURED}, /* the default cap */
      {"/retry?first=3601&status=503", 0, 3600000, FX_RA_CAPPED},
      {"/retry?first=31536000&status=429", 0, 3600000, FX_RA_CAPPED},
      {"/retry?first=18446744073709552&status=429", 0, 3600000, FX_RA_CAPPED},
      {"/retry?first=soon&status=429", 0, -1, FX_RA_NONE},
      {"/retry?status=429", 0, -1, FX_RA_NONE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    result r;
    ra_flags = cases[i].flags;
    get_once(cases[i].path, &r);
    ra_flags = 0;
    if (r.retry_after_ms != cases[i].want_ms || r.retry_after_use != cases[i].want_use)
      fail_msg("%s (flags %d): %ld ms (use %d), want %ld ms (use %d)", cases[i].path,
               cases[i].flags, r.retry_after_ms, (int)r.retry_after_use, cases[i].want_ms,
               (int)cases[i].want_use);
  }
  /* The cap is the client's http.max_retry_after_s. */
  fx_http_conf conf = {.timeout_ms = 60000, .connect_timeout_ms = 10000,
                       .max_response_bytes = 67108864, .max_error_body_bytes = 262144,
                       .max_retry_after_s = 60, .low_speed_bytes = 1, .low_speed_seconds = 30};
  client_conf = &conf;
  result r;
  get_once("/retry?first=60&status=429", &r);
  assert_int_equal(r.retry_after_ms, 60000);
  assert_int_equal(r.retry_after_use, FX_RA_HONOURED);
  get_once("/retry?first=61&status=429", &r);
  assert_int_equal(r.retry_after_ms, 60000);
  assert_int_equal(r.retry_after_use, FX_RA_CAPPED);
  client_conf = NULL;
}

static void post_with_bearer(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, NULL, &h, &err), 0);
  result r = {0};
  fx_http_request req = {.method = "POST",
                         .url = url("/post"),
                         .content_type = "application/x-www-form-urlencoded",
                         .body = "a=1&b=2",
                         .bearer = "tok123"};
  assert_int_equal(fx_http_send(h, &req, collect, &r, &err), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(r.status, 200);
  assert_string_equal(
      r.body, "{\"len\":7,\"auth\":\"Bearer tok123\",\"type\":\"application/x-www-form-urlencoded\"}");
  finish(&loop, h);
}

static void many_in_parallel_reuse_connections(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, NULL, &h, &err), 0);
  enum { N = 64 };
  result rs[N];
  memset(rs, 0, sizeof rs);
  for (int i = 0; i < N; i++) {
    fx_http_request req = {.url = url("/ok")};
    assert_int_equal(fx_http_send(h, &req, collect, &rs[i], &err), 0);
  }
  assert_int_equal(fx_http_inflight(h), N);
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < N; i++) {
    assert_int_equal(rs[i].done, 1);
    assert_int_equal(rs[i].status, 200);
  }
  /* Sequential requests after that ride on kept-alive connections. */
  int before = atomic_load(&connections);
  for (int i = 0; i < 20; i++) {
    result r = {0};
    fx_http_request req = {.url = url("/ok")};
    assert_int_equal(fx_http_send(h, &req, collect, &r, &err), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(r.status, 200);
  }
  assert_int_equal(atomic_load(&connections), before);
  finish(&loop, h);
}

static void too_large_timeout_refused(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, NULL, &h, &err), 0);
  result big = {0}, slow = {0}, refused = {0}, ok = {0};
  fx_http_request r1 = {.url = url("/big"), .max_body = 1000};
  fx_http_request r2 = {.url = url("/slow"), .timeout_ms = 300};
  fx_http_request r3 = {.url = "http://127.0.0.1:1/nothing-listens-here"};
  fx_http_request r4 = {.url = url("/big")}; /* default cap (64 MiB) lets 1 MiB through */
  assert_int_equal(fx_http_send(h, &r1, collect, &big, &err), 0);
  assert_int_equal(fx_http_send(h, &r2, collect, &slow, &err), 0);
  assert_int_equal(fx_http_send(h, &r3, collect, &refused, &err), 0);
  assert_int_equal(fx_http_send(h, &r4, collect, &ok, &err), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(big.rc, FX_ETOOLARGE);
  assert_int_equal(slow.rc, FX_ETRANSIENT);
  assert_int_equal(refused.rc, FX_ETRANSIENT);
  assert_int_equal(ok.rc, 0);
  assert_int_equal(ok.status, 200);
  finish(&loop, h);
}

static void close_cancels_inflight(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, NULL, &h, &err), 0);
  result r = {0};
  fx_http_request req = {.url = url("/slow")};
  assert_int_equal(fx_http_send(h, &req, collect, &r, &err), 0);
  uv_run(&loop, UV_RUN_NOWAIT); /* connect and send */
  fx_http_close(h);
  assert_int_equal(r.done, 1);
  assert_int_equal(r.rc, FX_ECANCELED);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Closing from inside a completion callback is allowed. */
static void close_from_callback_cb(fx_http_response *res, void *arg) {
  collect(res, ((void **)arg)[0]);
  fx_http_close(((void **)arg)[1]);
}

static void close_inside_callback(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, NULL, &h, &err), 0);
  result a = {0}, b = {0};
  void *ctx[2] = {&a, h};
  fx_http_request fast = {.url = url("/ok")}, slow = {.url = url("/slow")};
  assert_int_equal(fx_http_send(h, &fast, close_from_callback_cb, ctx, &err), 0);
  assert_int_equal(fx_http_send(h, &slow, collect, &b, &err), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(a.status, 200);
  assert_int_equal(b.done, 1);
  assert_int_equal(b.rc, FX_ECANCELED);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- streamed bodies ---------------------------------------------------- */

typedef struct stream {
  uv_timer_t timer;
  fx_http_xfer *paused;
  size_t bytes, chunks, pauses;
  int all_x; /* every byte was 'x' */
  int abort_after; /* > 0: refuse the transfer after this many chunks */
} stream;

static void on_resume(uv_timer_t *t) {
  stream *s = t->data;
  fx_http_xfer *x = s->paused;
  s->paused = NULL;
  fx_http_resume(x); /* may deliver the next chunk before it returns */
}

/* Pauses after every chunk; a timer resumes 2 ms later. */
static int sink(const char *data, size_t len, void *arg, fx_http_xfer *x) {
  stream *s = arg;
  s->chunks++;
  s->bytes += len;
  for (size_t i = 0; i < len; i++) s->all_x &= data[i] == 'x';
  if (s->abort_after && (int)s->chunks >= s->abort_after) return -1;
  s->pauses++;
  s->paused = x;
  uv_timer_start(&s->timer, on_resume, 2, 0);
  return FX_HTTP_PAUSE;
}

/* Streams path through sink (with s's settings) and collects the answer. */
static void stream_get(const char *path, stream *s, result *r) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, NULL, &h, &err), 0);
  s->all_x = 1;
  uv_timer_init(&loop, &s->timer);
  s->timer.data = s;
  fx_http_request req = {.url = url(path), .sink = sink, .sink_arg = s};
  assert_int_equal(fx_http_send(h, &req, collect, r, &err), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(r->done, 1);
  uv_close((uv_handle_t *)&s->timer, NULL);
  finish(&loop, h);
}

static void stream_pauses_and_resumes(void **state) {
  (void)state;
  stream s = {0};
  result r = {0};
  stream_get("/big", &s, &r);
  assert_int_equal(r.rc, 0);
  assert_int_equal(r.status, 200);
  assert_int_equal(s.bytes, 1 << 20); /* every byte, once */
  assert_true(s.all_x);
  assert_true(s.pauses > 4);       /* 1 MiB comes in many chunks, each paused */
  assert_int_equal(r.body_len, 0); /* nothing was buffered */
}

static void stream_error_is_buffered_not_streamed(void **state) {
  (void)state;
  stream s = {0};
  result r = {0};
  stream_get("/missing", &s, &r);
  assert_int_equal(r.status, 404);
  assert_int_equal(s.chunks, 0);
  assert_string_equal(r.body, "nope"); /* readable, as for any request */
}

static void stream_refused_by_sink_is_canceled(void **state) {
  (void)state;
  stream s = {.abort_after = 2};
  result r = {0};
  stream_get("/big", &s, &r);
  assert_int_equal(r.rc, FX_ECANCELED);
  assert_int_equal(s.chunks, 2); /* never called again after refusing */
  assert_true(s.bytes < (1 << 20));
}

/* A 500 with an 8 MiB body, to a request that may carry 1 TiB (a bulk file
 * download's max_body), buffered or streamed, with or without a
 * Content-Length: the answer is the 500 with the start of its body (the
 * OperationOutcome's reason), never more than http.max_error_body_bytes held,
 * and never "too large". */
static void error_bodies_are_bounded(void **state) {
  (void)state;
  static const struct {
    const char *path;
    int streamed;
    size_t max_body;
  } cases[] = {{"/error-huge", 0, (size_t)1 << 40},
               {"/error-huge", 1, (size_t)1 << 40},
               {"/error-huge-chunked", 0, (size_t)1 << 40},
               {"/error-huge-chunked", 1, (size_t)1 << 40},
               {"/error-huge", 0, (size_t)1 << 20}, /* Content-Length above max_body */
               {"/error-huge", 0, 0}};
  fx_http_conf conf = {.timeout_ms = 60000, .connect_timeout_ms = 10000,
                       .max_response_bytes = 67108864, .max_error_body_bytes = 4096,
                       .max_retry_after_s = 3600, .low_speed_bytes = 1, .low_speed_seconds = 30};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    fx_http *h;
    fx_err err = {0};
    assert_int_equal(fx_http_new(&loop, &conf, &h, &err), 0);
    stream s = {0};
    s.all_x = 1;
    result r = {0};
    fx_http_request req = {.url = url(cases[i].path), .max_body = cases[i].max_body,
                           .sink = cases[i].streamed ? sink : NULL, .sink_arg = &s};
    uv_timer_init(&loop, &s.timer);
    s.timer.data = &s;
    assert_int_equal(fx_http_send(h, &req, collect, &r, &err), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&s.timer, NULL);
    finish(&loop, h);
    if (r.done != 1 || r.rc != 0 || r.status != 500 || r.body_len > 4096 || !r.truncated)
      fail_msg("%s (%s, max_body %zu): done %d, result %d, status %ld, %zu body bytes held, "
               "truncated %d",
               cases[i].path, cases[i].streamed ? "streamed" : "buffered", cases[i].max_body,
               r.done, r.rc, r.status, r.body_len, r.truncated);
    assert_int_equal(r.body_len, 4096); /* as much as allowed */
    assert_memory_equal(r.body, OUTCOME_START, strlen(OUTCOME_START));
    assert_int_equal(s.chunks, 0); /* an error never reaches the sink */
  }
}

/* The default bound: a few hundred KB, far below max_response_bytes. */
static void error_bodies_are_bounded_by_default(void **state) {
  (void)state;
  result r;
  get_once("/error-huge", &r);
  assert_int_equal(r.status, 500);
  assert_true(r.truncated);
  assert_int_equal(r.body_len, 262144);
}

/* Retry-After as RFC 9110 says (delay-seconds, HTTP-date) and as the SMART
 * reference Bulk Data server sends it (epoch seconds, epoch milliseconds).
 * "now" is fixed, so nothing depends on the clock. */
static void retry_after_values(void **state) {
  (void)state;
  const long long now_s = 1796680191LL, now = now_s * 1000 + 250; /* 2026-12-07T21:49:51Z */
  /* delay-seconds */
  assert_int_equal(fx_http_retry_after_value_ms("0", now), 0);
  assert_int_equal(fx_http_retry_after_value_ms("7", now), 7000);
  assert_int_equal(fx_http_retry_after_value_ms(" 120 ", now), 120000);
  assert_int_equal(fx_http_retry_after_value_ms("86400", now), 86400000L);
  /* Not a value: negative, trailing junk, empty, nothing. */
  assert_int_equal(fx_http_retry_after_value_ms("-5", now), -1);
  assert_int_equal(fx_http_retry_after_value_ms("5s", now), -1);
  assert_int_equal(fx_http_retry_after_value_ms("", now), -1);
  assert_int_equal(fx_http_retry_after_value_ms(NULL, now), -1);
  /* The reference server's 429 while blocked: epoch seconds, 300 s ahead.
   * Read as seconds it would be 57 years. */
  assert_int_equal(fx_http_retry_after_value_ms("1796680491", now), 300000 - 250);
  /* Its first 429: epoch milliseconds, 300 s ahead. */
  assert_int_equal(fx_http_retry_after_value_ms("1796680491250", now), 300000);
  /* A point in time that has passed (clock skew): no wait. */
  assert_int_equal(fx_http_retry_after_value_ms("1796680000", now), 0);
  assert_int_equal(fx_http_retry_after_value_ms("1796680000000", now), 0);
  /* The window edge: 7 days ahead is still a point in time... */
  char v[32];
  snprintf(v, sizeof v, "%lld", now_s + FX_RETRY_AFTER_EPOCH_WINDOW_S);
  assert_int_equal(fx_http_retry_after_value_ms(v, now), FX_RETRY_AFTER_MAX_MS - 250);
  /* ...8 days in the past is not: it is seconds again (decades), clamped. */
  snprintf(v, sizeof v, "%lld", now_s - 8 * 86400);
  assert_int_equal(fx_http_retry_after_value_ms(v, now), FX_RETRY_AFTER_MAX_MS);
  /* Just under the epoch threshold: a (long) delay in seconds, clamped. */
  assert_int_equal(fx_http_retry_after_value_ms("999999999", now), FX_RETRY_AFTER_MAX_MS);
  /* Huge numbers saturate instead of overflowing (UBSan checks this). */
  assert_int_equal(fx_http_retry_after_value_ms("99999999999999999999999999999999999999", now),
                   FX_RETRY_AFTER_MAX_MS);
  assert_int_equal(fx_http_retry_after_value_ms("9223372036854775808", now), FX_RETRY_AFTER_MAX_MS);
  /* HTTP-date: 30 s ahead, in the past, and far ahead (clamped). */
  assert_int_equal(fx_http_retry_after_value_ms("Mon, 07 Dec 2026 21:50:21 GMT", now), 29750);
  assert_int_equal(fx_http_retry_after_value_ms("Wed, 21 Oct 2015 07:28:00 GMT", now), 0);
  assert_int_equal(fx_http_retry_after_value_ms("Fri, 01 Jan 2100 00:00:00 GMT", now),
                   FX_RETRY_AFTER_MAX_MS);
  /* Hostile values (issue 13): the seconds whose milliseconds pass 2^64, their
   * milliseconds, and dates so far ahead or behind that ms arithmetic on
   * them would overflow or go negative. Never a wrapped small or negative
   * wait; a date before 1970 has passed (0), it is not "unreadable". */
  assert_int_equal(fx_http_retry_after_value_ms("18446744073709552", now), FX_RETRY_AFTER_MAX_MS);
  assert_int_equal(fx_http_retry_after_value_ms("18446744073709552000", now),
                   FX_RETRY_AFTER_MAX_MS);
  assert_int_equal(fx_http_retry_after_value_ms("Fri, 31 Dec 9999 23:59:59 GMT", now),
                   FX_RETRY_AFTER_MAX_MS);
  assert_int_equal(fx_http_retry_after_value_ms("Fri, 01 Jan 100000 00:00:00 GMT", now),
                   FX_RETRY_AFTER_MAX_MS);
  assert_int_equal(fx_http_retry_after_value_ms("Mon, 01 Jan 1900 00:00:00 GMT", now), 0);
  /* Found by fuzz_retry_after: 17 digits passed the saturation point by 10x
   * and overflowed v * 1000 (UBSan). */
  assert_int_equal(fx_http_retry_after_value_ms("09223372036854776", now), FX_RETRY_AFTER_MAX_MS);
  assert_int_equal(fx_http_retry_after_value_ms("9999999999999999", now), FX_RETRY_AFTER_MAX_MS);
}

/* Issue 13 item 11: a request marked public_only never connects to an
 * internal address; the address curl would connect to is what is checked
 * (a name resolving to one is refused too), and the error names it. */
static const char *kind_of(const char *ip) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
  }
  return fx_http_address_kind((struct sockaddr *)&ss);
}

static void public_only_refuses_internal_addresses(void **state) {
  (void)state;
  const char *internal[][2] = {
      {"127.0.0.1", "loopback"},      {"127.255.0.9", "loopback"},   {"::1", "loopback"},
      {"10.1.2.3", "private"},        {"172.16.0.1", "private"},     {"172.31.255.255", "private"},
      {"192.168.1.1", "private"},     {"100.64.0.1", "private"},     {"fd00::1", "private"},
      {"fc12::1", "private"},         {"169.254.169.254", "link-local"}, {"fe80::1", "link-local"},
      {"0.0.0.0", "unspecified"},     {"::", "unspecified"},         {"::ffff:127.0.0.1", "loopback"},
      {"::ffff:169.254.169.254", "link-local"}, {"::ffff:10.0.0.1", "private"},
      {"64:ff9b::7f00:1", "loopback"}, {"224.0.0.1", "multicast"},  {"ff02::1", "multicast"},
      {"255.255.255.255", "reserved"}};
  for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++) {
    const char *k = kind_of(internal[i][0]);
    if (!k || !strstr(k, internal[i][1]))
      fail_msg("%s: '%s', expected '%s'", internal[i][0], k ? k : "(public)", internal[i][1]);
  }
  const char *public[] = {"8.8.8.8", "172.15.255.255", "172.32.0.1", "100.128.0.1",
                          "192.169.0.1", "11.0.0.1", "2606:4700::1111", "::ffff:8.8.8.8",
                          "169.253.0.1"};
  for (size_t i = 0; i < sizeof public / sizeof public[0]; i++)
    if (kind_of(public[i])) fail_msg("%s: '%s', expected public", public[i], kind_of(public[i]));

  uv_loop_t loop;
  uv_loop_init(&loop);
  fx_http *h;
  fx_err err = {0};
  assert_int_equal(fx_http_new(&loop, NULL, &h, &err), 0);
  /* A request without the mark first: its connection stays in curl's pool
   * and must not be reused by a request that has it. */
  result ok = {0};
  fx_http_request plain = {.url = url("/ok")};
  assert_int_equal(fx_http_send(h, &plain, collect, &ok, &err), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(ok.rc, 0);
  assert_int_equal(ok.status, 200);
  int before = atomic_load(&connections);
  char by_name[128];
  snprintf(by_name, sizeof by_name, "http://localhost:%d/ok", port);
  const char *urls[] = {url("/ok"), by_name};
  for (size_t i = 0; i < 2; i++) {
    result r = {0};
    fx_http_request req = {.url = urls[i], .public_only = 1};
    assert_int_equal(fx_http_send(h, &req, collect, &r, &err), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(r.done, 1);
    if (r.rc != FX_EPERM || !strstr(r.error, "loopback"))
      fail_msg("%s: rc %d, '%s'", urls[i], r.rc, r.error);
    assert_int_equal(r.status, 0);
    if (i == 0) assert_non_null(strstr(r.error, "127.0.0.1"));
  }
  assert_int_equal(atomic_load(&connections), before); /* no new connection was made */
  finish(&loop, h);
}


/* An OperationOutcome longer than the buffer, with a two-byte character where
 * the buffer ends: the summary ends before that character, never inside it
 * (half a character is not UTF-8, and jansson refuses a record holding it). */
static void outcome_summary_cut(void **state) {
  (void)state;
  char diag[1100], body[1400], out[300];
  memset(diag, 'x', 280);
  strcpy(diag + 280, "\xc3\xa9\xc3\xa9 and more");
  snprintf(body, sizeof body,
           "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\","
           "\"code\":\"processing\",\"diagnostics\":\"%s\"}]}",
           diag);
  fx_fhir_outcome_summary(body, out, sizeof out);
  assert_int_equal(strlen(out), strlen("error processing: ") + 280);
  assert_int_equal(strncmp(out, "error processing: xxx", 21), 0);
  json_t *j = json_string(out);
  assert_non_null(j);
  json_decref(j);
  /* Cut by the redaction buffer (1024 bytes) instead of the caller's. */
  char big[2048];
  memset(diag, 'y', 1022);
  strcpy(diag + 1022, "\xc3\xa9\xc3\xa9");
  snprintf(body, sizeof body,
           "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"diagnostics\":\"%s\"}]}", diag);
  fx_fhir_outcome_summary(body, big, sizeof big);
  assert_int_equal(strlen(big), 1022);
  j = json_string(big);
  assert_non_null(j);
  json_decref(j);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(get_ok),
                                     cmocka_unit_test(retry_after_forms),
                                     cmocka_unit_test(post_with_bearer),
                                     cmocka_unit_test(many_in_parallel_reuse_connections),
                                     cmocka_unit_test(too_large_timeout_refused),
                                     cmocka_unit_test(close_cancels_inflight),
                                     cmocka_unit_test(close_inside_callback),
                                     cmocka_unit_test(stream_pauses_and_resumes),
                                     cmocka_unit_test(stream_error_is_buffered_not_streamed),
                                     cmocka_unit_test(stream_refused_by_sink_is_canceled),
                                     cmocka_unit_test(retry_after_values),
                                     cmocka_unit_test(retry_after_only_where_it_means_something),
                                     cmocka_unit_test(error_bodies_are_bounded),
                                     cmocka_unit_test(error_bodies_are_bounded_by_default),
                                     cmocka_unit_test(public_only_refuses_internal_addresses),
                                     cmocka_unit_test(outcome_summary_cut)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
