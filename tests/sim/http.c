#include "tests/sim/http.h"

#include "common/log.h"
#include "tests/sim/delay.h"
#include "tests/sim/fhir.h"
#include "tests/sim/refserver.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY (1024 * 1024)
#define SHUTDOWN_WAIT_MS 2000L
#define STREAM_BLOCK (64 * 1024) /* content reader buffer of streamed fault bodies */

struct sim_server {
  struct MHD_Daemon *daemon;
  sim_state *st;
  sim_delay delay;
  bool verbose;
  unsigned port;
  char fallback_host[96]; /* used when a request has no usable Host header */
};

/* Per-request state kept in MHD's con_cls between callbacks. */
typedef struct req_ctx {
  sim_req req;
  sim_server *srv;
  sim_fault_effect fault; /* the fault that fired for this request (fault.h) */
  bool has_fault;
  bool reset;         /* close the connection instead of answering */
  char *request_key;  /* path?query; only built while the tenant has faults armed */
  bool suspended;     /* a delay was applied */
  bool delay_pending; /* suspended (delay or drip) and not yet accounted as resumed */
  int64_t started_ms;
  unsigned status;
  bool oom; /* copying the request out of MHD failed */
  bool started;   /* the access handler has copied the request out of MHD */
  bool in_flight; /* counted in the tenant's in-flight FHIR requests (sim_load_*) */
  char *raw_uri;  /* the request target exactly as received (on_uri) */
} req_ctx;

/* ---- responses ---- */

void sim_resp_body(sim_resp *r, unsigned status, const char *content_type, char *body,
                   size_t len) {
  free(r->body);
  r->status = status;
  r->content_type = content_type;
  r->body = body;
  r->len = body ? len : 0;
}

void sim_resp_json(sim_resp *r, unsigned status, const char *content_type, json_t *doc) {
  char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(doc);
  if (!text) {
    sim_resp_body(r, 500, SIM_CT_JSON, NULL, 0);
    return;
  }
  sim_resp_body(r, status, content_type, text, strlen(text));
}

void sim_resp_header(sim_resp *r, const char *name, const char *fmt, ...) {
  if (r->nhdrs == SIM_RESP_MAX_HEADERS) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *value = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (!value) return;
  va_start(ap, fmt);
  vsnprintf(value, (size_t)n + 1, fmt, ap);
  va_end(ap);
  r->hdrs[r->nhdrs].name = name;
  r->hdrs[r->nhdrs].value = value;
  r->nhdrs++;
}

void sim_resp_free(sim_resp *r) {
  free(r->body);
  for (size_t i = 0; i < r->nhdrs; i++) free(r->hdrs[i].value);
  *r = (sim_resp){0};
}

/* ---- requests ---- */

const char *sim_req_header(const sim_req *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *sim_req_query(const sim_req *r, const char *key) {
  for (size_t i = 0; i < r->nquery; i++)
    if (strcmp(r->query[i].key, key) == 0) return r->query[i].value;
  return NULL;
}

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value) {
  (void)kind;
  req_ctx *c = cls;
  sim_req *r = &c->req;
  sim_kv *q = realloc(r->query, (r->nquery + 1) * sizeof *q);
  if (q) {
    r->query = q;
    q[r->nquery].key = strdup(key);
    q[r->nquery].value = strdup(value ? value : "");
    if (q[r->nquery].key && q[r->nquery].value) {
      r->nquery++;
      return MHD_YES;
    }
    free(q[r->nquery].key);
    free(q[r->nquery].value);
  }
  c->oom = true;
  return MHD_NO;
}

/* The Host header becomes part of URLs we hand out (token_endpoint, fullUrl,
 * next links) and of the expected JWT aud, so only host[:port] characters
 * are accepted; anything else falls back to the listening address. */
static void set_host(sim_req *r, const char *fallback) {
  const char *h = sim_req_header(r, MHD_HTTP_HEADER_HOST);
  bool ok = h && *h && strlen(h) < sizeof r->host;
  for (const char *p = h; ok && *p; p++)
    ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
         strchr(".-:[]_", *p) != NULL;
  snprintf(r->host, sizeof r->host, "%s", ok ? h : fallback);
}

/* Copies the path segment after `prefix` (up to the next '/') into seg and
 * returns the rest of the path, or NULL if path does not start with prefix. */
static const char *segment_after(const char *path, const char *prefix, char *seg, size_t n) {
  size_t plen = strlen(prefix);
  if (strncmp(path, prefix, plen) != 0) return NULL;
  const char *start = path + plen;
  size_t len = strcspn(start, "/");
  if (len == 0 || len >= n) return NULL;
  memcpy(seg, start, len);
  seg[len] = '\0';
  return start + len;
}

static void route(sim_req *r) {
  char tenant[128];
  const char *rest;
  r->route = SIM_ROUTE_NOT_FOUND;
  if (strcmp(r->path, "/_sim") == 0 || strncmp(r->path, "/_sim/", 6) == 0) {
    r->route = SIM_ROUTE_CONTROL;
    r->subpath = r->path + 5;
  } else if ((rest = segment_after(r->path, "/r4/", tenant, sizeof tenant))) {
    r->tenant = sim_state_tenant(r->st, tenant);
    r->subpath = rest;
    if (!r->tenant)
      r->route = SIM_ROUTE_UNKNOWN_TENANT;
    else if (strcmp(rest, "/.well-known/smart-configuration") == 0)
      r->route = SIM_ROUTE_DISCOVERY;
    else
      r->route = SIM_ROUTE_FHIR;
  } else if ((rest = segment_after(r->path, "/tenants/", tenant, sizeof tenant))) {
    r->tenant = sim_state_tenant(r->st, tenant);
    if (!r->tenant)
      r->route = SIM_ROUTE_UNKNOWN_TENANT;
    else if (strcmp(rest, "/protocols/oauth2/profiles/smart-v1/token") == 0)
      r->route = SIM_ROUTE_TOKEN;
    else if (strcmp(rest, "/auth/register") == 0 && r->tenant->ref.enabled)
      r->route = SIM_ROUTE_REGISTER;
  } else if ((r->tenant = sim_ref_tenant_of(r->st, r->path))) {
    /* A reference-server export's status or file URL: outside /r4/{tenant},
     * it belongs to the tenant whose export it names. Fault paths match it
     * whole: "fhir/bulkstatus/{job}", "{settings}/fhir/bulkfiles/{file}". */
    r->subpath = r->path;
    r->route = SIM_ROUTE_FHIR;
  }
}

static int route_target(sim_route route) {
  switch (route) {
  case SIM_ROUTE_TOKEN: return SIM_TARGET_TOKEN;
  case SIM_ROUTE_DISCOVERY: return SIM_TARGET_DISCOVERY;
  case SIM_ROUTE_FHIR: return SIM_TARGET_FHIR;
  default: return -1;
  }
}

static void ctx_free(req_ctx *c);

/* The request target as the Retry-After ledger knows it: the path and the
 * query re-encoded from MHD's decoded arguments, so the same request always
 * gives the same key. New string or NULL. */
static char *request_key(const sim_req *r) {
  sim_buf b = {0};
  sim_buf_puts(&b, r->path);
  for (size_t i = 0; i < r->nquery; i++) {
    sim_buf_puts(&b, i ? "&" : "?");
    sim_buf_url_encode(&b, r->query[i].key);
    sim_buf_puts(&b, "=");
    sim_buf_url_encode(&b, r->query[i].value);
  }
  return sim_buf_steal(&b, NULL);
}

/* Faults are chosen when the request arrives, so `count` is consumed in
 * arrival order even if bodies finish uploading in another order, and a
 * retry is judged against Retry-After by when it arrived. A tenant without
 * faults costs one atomic load here. */
static void pick_fault(req_ctx *c) {
  sim_req *r = &c->req;
  int target = route_target(r->route);
  if (target < 0 || !sim_faults_armed(r->tenant)) return;
  c->request_key = request_key(r);
  const char *path = target == SIM_TARGET_FHIR && r->subpath[0] == '/' ? r->subpath + 1 : "";
  c->has_fault = sim_faults_arrive(r->st, r->tenant, (sim_target)target, path, c->request_key,
                                   sim_now_ms(), &c->fault);
}

/* MHD_OPTION_URI_LOG_CALLBACK: the first callback of a request, before its
 * headers are parsed, and the only one that sees the request target as the
 * client sent it (the access handler gets the path and the arguments
 * decoded). The context created here is MHD's con_cls from now on and is
 * freed by on_completed, which MHD calls for every request this callback saw. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
  (void)cls;
  (void)conn;
  req_ctx *c = calloc(1, sizeof *c);
  if (c) c->raw_uri = strdup(uri ? uri : "");
  return c;
}

static void load_leave(req_ctx *c) {
  if (!c->in_flight) return;
  c->in_flight = false;
  sim_load_leave(c->req.st, c->req.tenant);
}

/* Fills the context the first time the access handler runs (c from on_uri,
 * or NULL if that could not allocate). */
static req_ctx *ctx_new(sim_server *srv, req_ctx *c, struct MHD_Connection *conn, const char *url,
                        const char *method) {
  if (!c && !(c = calloc(1, sizeof *c))) return NULL;
  c->started = true;
  c->srv = srv;
  c->started_ms = sim_mono_ms();
  c->req.conn = conn;
  c->req.st = srv->st;
  snprintf(c->req.method, sizeof c->req.method, "%s", method);
  c->req.path = strdup(url);
  if (c->req.path) MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_arg, c);
  if (!c->req.path || c->oom) {
    ctx_free(c);
    return NULL;
  }
  const char *q = c->raw_uri ? strchr(c->raw_uri, '?') : NULL;
  c->req.raw_query = q ? q + 1 : "";
  set_host(&c->req, srv->fallback_host);
  route(&c->req);
  if (c->req.route == SIM_ROUTE_FHIR) {
    sim_load_arrive(srv->st, c->req.tenant, sim_mono_us());
    c->in_flight = true;
  }
  pick_fault(c);
  return c;
}

static void ctx_free(req_ctx *c) {
  for (size_t i = 0; i < c->req.nquery; i++) {
    free(c->req.query[i].key);
    free(c->req.query[i].value);
  }
  free(c->req.query);
  free(c->req.path);
  sim_buf_free(&c->req.body);
  sim_fault_effect_clear(&c->fault);
  free(c->request_key);
  free(c->raw_uri);
  free(c);
}

/* ---- dispatch ---- */

/* Everything but a pure delay changes what the client gets. */
static bool fault_changes_answer(const sim_fault_effect *f) {
  return sim_fault_replaces(f) || f->reset || f->truncate || f->drip_bytes_per_s ||
         f->foreign_next || f->foreign_references || f->next_segment || f->headers;
}

static void dispatch_tenant(req_ctx *c, sim_resp *resp) {
  sim_req *r = &c->req;
  sim_state *st = r->st;
  sim_target target = (sim_target)route_target(r->route);
  const sim_fault_effect *f = c->has_fault ? &c->fault : NULL;
  if (r->route == SIM_ROUTE_TOKEN) {
    char *client = sim_token_peek_client(r);
    sim_count_token_request(st, r->tenant, client);
    free(client);
  } else if (r->route == SIM_ROUTE_DISCOVERY) {
    sim_count_discovery(st, r->tenant);
  } else if (r->route == SIM_ROUTE_FHIR) {
    /* Counted before the fault check, like fhir_requests: a client that
     * retries a faulted read has fetched it twice. */
    char type[64], read_key[160];
    const char *kind;
    sim_fhir_classify(r, type, &kind, read_key);
    sim_count_fhir_request(st, r->tenant, type, kind, read_key);
  }
  if (r->tenant->ref.enabled)
    sim_ref_count_path(st, r->tenant, r->path, sim_req_header(r, "Authorization") != NULL);
  if (f && fault_changes_answer(f)) sim_count_fault(st, r->tenant, target);
  if (f && f->reset) {
    c->reset = true;
    if (r->route == SIM_ROUTE_FHIR) sim_count_fhir(st, r->tenant, 0);
    return;
  }
  if (f && sim_fault_replaces(f)) {
    sim_fault_respond(f, target, resp);
    if (f->echo) sim_fault_echo(r, resp);
  } else {
    if (r->route == SIM_ROUTE_TOKEN)
      sim_token_handle(r, resp);
    else if (r->route == SIM_ROUTE_DISCOVERY)
      sim_discovery_handle(r, resp);
    else
      sim_fhir_handle(r, resp);
    if (f) sim_fault_rewrite(f, r, resp);
  }
  int64_t now = f || resp->retry_not_before_ms ? sim_now_ms() : 0, not_before;
  if (f && sim_fault_add_headers(f, now, resp, &not_before) && c->request_key)
    sim_faults_note_retry(st, r->tenant, c->request_key, now, not_before);
  else if (resp->retry_not_before_ms) {
    /* The handler announced a Retry-After itself (the reference server's
     * rate limiter): the next request for this target is checked alike. */
    if (!c->request_key) c->request_key = request_key(r);
    if (c->request_key)
      sim_faults_note_retry(st, r->tenant, c->request_key, now, resp->retry_not_before_ms);
  }
  if (r->route == SIM_ROUTE_FHIR) sim_count_fhir(st, r->tenant, resp->status);
}

static void dispatch(req_ctx *c, sim_resp *resp) {
  sim_req *r = &c->req;
  if (r->body_too_large) {
    sim_fhir_outcome(resp, 413, "too-costly", "request body larger than 1 MiB");
    return;
  }
  switch (r->route) {
  case SIM_ROUTE_CONTROL: sim_control_handle(r, resp); break;
  case SIM_ROUTE_UNKNOWN_TENANT:
    sim_fhir_outcome(resp, 404, "not-found", "unknown tenant");
    break;
  case SIM_ROUTE_NOT_FOUND:
    sim_fhir_outcome(resp, 404, "not-found", "no such endpoint");
    break;
  case SIM_ROUTE_REGISTER:
    sim_ref_count_path(r->st, r->tenant, r->path, sim_req_header(r, "Authorization") != NULL);
    sim_ref_register(r, resp);
    break;
  default: dispatch_tenant(c, resp); break;
  }
}

/* Huge and drip answers are produced by a content reader (fault_body.c);
 * everything else is one buffer. */
static struct MHD_Response *stream_response(req_ctx *c, sim_resp *resp) {
  const sim_fault_effect *f = &c->fault;
  sim_stream *s = f->huge_bytes && resp->status == (f->status ? f->status : 200u)
                      ? sim_stream_huge(f->huge_bytes, f->drip_bytes_per_s)
                      : sim_stream_buffer(resp->body, resp->len, f->drip_bytes_per_s);
  resp->body = NULL; /* the stream owns it now */
  if (!s) return NULL;
  sim_stream_pacer p = {.delay = &c->srv->delay, .conn = c->req.conn, .pending = &c->delay_pending};
  sim_stream_set_pacer(s, &p);
  struct MHD_Response *mr = MHD_create_response_from_callback(
      sim_stream_size(s), STREAM_BLOCK, sim_stream_read, s, sim_stream_free);
  if (!mr) sim_stream_free(s);
  return mr;
}

static enum MHD_Result send_response(req_ctx *c, sim_resp *resp) {
  struct MHD_Response *mr;
  if (c->has_fault && (c->fault.huge_bytes || c->fault.drip_bytes_per_s))
    mr = stream_response(c, resp);
  else if (resp->body)
    mr = MHD_create_response_from_buffer(resp->len, resp->body, MHD_RESPMEM_MUST_FREE);
  else
    mr = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
  if (!mr) {
    sim_resp_free(resp);
    return MHD_NO;
  }
  resp->body = NULL; /* MHD frees it with the response */
  if (resp->content_type)
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
  for (size_t i = 0; i < resp->nhdrs; i++)
    MHD_add_response_header(mr, resp->hdrs[i].name, resp->hdrs[i].value);
  c->status = resp->status;
  /* No longer in flight for the load counters once the answer is queued:
   * before the client can have it, so the simulator never counts more
   * requests in flight than the client has open. */
  load_leave(c);
  enum MHD_Result rc = MHD_queue_response(c->req.conn, resp->status, mr);
  MHD_destroy_response(mr);
  sim_resp_free(resp);
  return rc;
}

/* Aborts the TCP connection with an RST, so that the client sees
 * "connection reset by peer" (a transport error) rather than an answer or
 * an orderly close. MHD shuts the socket down for writing (a FIN) before
 * closing it, which would turn SO_LINGER {on, 0} alone into a plain close;
 * on Linux, connect(AF_UNSPEC) disconnects at once with an RST, and MHD's
 * later shutdown/close of the dead socket are harmless. */
static void reset_connection(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci) return;
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  struct sockaddr unspec = {.sa_family = AF_UNSPEC};
  connect(ci->connect_fd, &unspec, sizeof unspec);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  (void)version;
  sim_server *srv = cls;
  req_ctx *c = *con_cls;
  if (!c || !c->started) {
    c = ctx_new(srv, c, conn, url, method);
    *con_cls = c;
    return c ? MHD_YES : MHD_NO;
  }
  if (*upload_data_size) {
    if (c->req.body.len + *upload_data_size > MAX_BODY)
      c->req.body_too_large = true;
    else
      sim_buf_append(&c->req.body, upload_data, *upload_data_size);
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (c->delay_pending) {
    c->delay_pending = false;
    sim_delay_resumed(&srv->delay);
  } else if (!c->suspended && c->has_fault && c->fault.delay_ms > 0) {
    c->suspended = c->delay_pending = true;
    if (sim_delay_suspend(&srv->delay, conn, c->fault.delay_ms)) return MHD_YES;
    c->delay_pending = false; /* shutting down: answer without the delay */
  }
  sim_resp resp = {0};
  dispatch(c, &resp);
  if (c->reset) {
    sim_resp_free(&resp);
    load_leave(c);
    reset_connection(conn);
    return MHD_NO; /* MHD closes the connection without answering */
  }
  return send_response(c, &resp);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)conn;
  sim_server *srv = cls;
  req_ctx *c = *con_cls;
  if (!c) return;
  /* A resumed connection can be closed without the handler running again
   * (the client gave up meanwhile); shutdown must not wait for it. */
  if (c->delay_pending) sim_delay_resumed(&srv->delay);
  load_leave(c);
  if (srv->verbose && c->started) {
    char status[8], ms[24];
    snprintf(status, sizeof status, "%u", c->status);
    snprintf(ms, sizeof ms, "%lld", (long long)(sim_mono_ms() - c->started_ms));
    /* Debug level: paths carry patient ids (synthetic, but the rule is global). */
    fx_log(FX_LOG_DEBUG, "request", "method", c->req.method, "path", c->req.path, "status", status,
           "ms", ms, "completed", toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "ok" : "aborted",
           NULL);
  }
  ctx_free(c);
  *con_cls = NULL;
}

/* ---- server ---- */

int sim_parse_addr(const char *host, unsigned port, struct sockaddr_storage *ss, bool *v6) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    *v6 = false;
    return 0;
  }
  if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    *v6 = true;
    return 0;
  }
  return -1;
}

sim_server *sim_server_start(sim_state *st, const sim_server_opts *o, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  bool v6 = false;
  if (sim_parse_addr(o->host, o->port, &ss, &v6) != 0) {
    snprintf(err, errlen, "--host %s: not a numeric IPv4 or IPv6 address", o->host);
    return NULL;
  }
  sim_server *srv = calloc(1, sizeof *srv);
  if (!srv || sim_delay_start(&srv->delay) != 0) {
    snprintf(err, errlen, "out of memory or cannot start the delay thread");
    free(srv);
    return NULL;
  }
  srv->st = st;
  srv->verbose = o->verbose;
  bool tls = o->tls_cert_pem && o->tls_key_pem;
  if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
    snprintf(err, errlen, "--tls-cert: this libmicrohttpd was built without TLS support");
    sim_delay_stop(&srv->delay, 0);
    sim_delay_destroy(&srv->delay);
    free(srv);
    return NULL;
  }
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                   (v6 ? MHD_USE_IPv6 : 0) | (o->verbose ? MHD_USE_ERROR_LOG : 0) |
                   (tls ? MHD_USE_TLS : 0);
  /* Without TLS the key and certificate options are passed as no-ops, so
   * there is one call either way (MHD_OPTION_ARRAY keeps it readable). */
  struct MHD_OptionItem tls_opts[] = {
      {tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, (void *)(uintptr_t)o->tls_key_pem},
      {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)(uintptr_t)o->tls_cert_pem},
      {MHD_OPTION_END, 0, NULL}};
  srv->daemon = MHD_start_daemon(
      flags, (uint16_t)o->port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR,
      (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)o->threads,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_URI_LOG_CALLBACK, on_uri, srv,
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)60, MHD_OPTION_LISTEN_BACKLOG_SIZE,
      (unsigned int)1024, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)4096, MHD_OPTION_ARRAY,
      tls_opts, MHD_OPTION_END);
  if (!srv->daemon) {
    snprintf(err, errlen,
             tls ? "cannot listen on %s port %u with TLS (port in use, or the --tls-cert / "
                   "--tls-key PEM files are not a matching certificate and key?)"
                 : "cannot listen on %s port %u (in use, or not a local address?)",
             o->host, o->port);
    sim_delay_stop(&srv->delay, 0);
    sim_delay_destroy(&srv->delay);
    free(srv);
    return NULL;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
  srv->port = info ? info->port : o->port;
  snprintf(srv->fallback_host, sizeof srv->fallback_host, v6 ? "[%s]:%u" : "%s:%u", o->host,
           srv->port);
  return srv;
}

unsigned sim_server_port(const sim_server *s) { return s->port; }

void sim_server_stop(sim_server *s) {
  if (!s) return;
  sim_delay_stop(&s->delay, SHUTDOWN_WAIT_MS);
  MHD_stop_daemon(s->daemon);
  sim_delay_destroy(&s->delay);
  free(s);
}
