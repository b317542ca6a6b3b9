/* The simulator's HTTP server: libmicrohttpd with an internal epoll polling
 * thread and a thread pool, request/response types shared by the handlers,
 * and routing to the token, discovery, FHIR and control modules.
 *
 * Handlers run on MHD pool threads; they build the whole response in memory
 * (sim_resp) and never block on another request. */
#ifndef SIM_HTTP_H
#define SIM_HTTP_H

#include "tests/sim/state.h"
#include "tests/sim/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SIM_CT_JSON "application/json;charset=utf-8"
#define SIM_CT_FHIR "application/fhir+json;charset=utf-8"

typedef struct sim_kv {
  char *key;
  char *value;
} sim_kv;

typedef enum {
  SIM_ROUTE_NOT_FOUND,
  SIM_ROUTE_UNKNOWN_TENANT,
  SIM_ROUTE_CONTROL,
  SIM_ROUTE_DISCOVERY,
  SIM_ROUTE_TOKEN,
  SIM_ROUTE_FHIR,
  SIM_ROUTE_REGISTER, /* reference server mode: POST /tenants/{t}/auth/register */
} sim_route;

struct MHD_Connection;

/* One request. Everything is copied out of MHD at the first callback so
 * handlers may run after a suspend/resume. */
typedef struct sim_req {
  struct MHD_Connection *conn;
  sim_state *st;
  char method[16];
  char *path;      /* owned, URL path without the query */
  const char *raw_query; /* the query exactly as received (percent-encoded, no '?'), or "";
                            borrowed from the request context */
  char host[256];  /* sanitized Host header: what {host} means in URLs we build */
  sim_kv *query;   /* owned, decoded query arguments in request order */
  size_t nquery;
  sim_buf body;
  bool body_too_large;
  sim_route route;
  sim_tenant *tenant;  /* for tenant routes */
  const char *subpath; /* into path: after "/r4/{tenant}" (FHIR) or "/_sim" (control) */
} sim_req;

/* Request header value (borrowed) or NULL; only valid inside the handler. */
const char *sim_req_header(const sim_req *r, const char *name);
/* First value of a query argument (borrowed) or NULL. */
const char *sim_req_query(const sim_req *r, const char *key);

#define SIM_RESP_MAX_HEADERS 16 /* handlers add up to 2, faults up to 8 + Retry-After */

typedef struct sim_resp {
  unsigned status;
  const char *content_type; /* borrowed: static, or alive until the response is sent */
  char *body;               /* owned */
  size_t len;
  struct {
    const char *name; /* borrowed like content_type */
    char *value;      /* owned */
  } hdrs[SIM_RESP_MAX_HEADERS];
  size_t nhdrs;
  /* A handler that answers with Retry-After sets the instant it announced
   * (epoch ms); http.c then checks the next request for the same target
   * against it like a fault's (docs/simulator.md "Retry-After"). 0 = none. */
  int64_t retry_not_before_ms;
} sim_resp;

/* Sets status and body, taking ownership of body (malloc'd, may be NULL). */
void sim_resp_body(sim_resp *r, unsigned status, const char *content_type, char *body,
                   size_t len);
/* Serializes doc (stolen) as the body; OOM turns into a bodiless 500. */
void sim_resp_json(sim_resp *r, unsigned status, const char *content_type, json_t *doc);
void sim_resp_header(sim_resp *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sim_resp_free(sim_resp *r);

typedef struct sim_server_opts {
  const char *host; /* numeric IPv4 or IPv6 address */
  unsigned port;    /* 0 = any free port */
  unsigned threads;
  bool verbose;
  /* PEM text of a certificate (chain) and its private key: serve HTTPS
   * instead of HTTP (FHIR server only). Borrowed; must outlive the server. */
  const char *tls_cert_pem;
  const char *tls_key_pem;
} sim_server_opts;

typedef struct sim_server sim_server;

/* Starts listening. Returns a server (stop with sim_server_stop) or NULL
 * with a message in err. st must outlive the server. */
sim_server *sim_server_start(sim_state *st, const sim_server_opts *o, char *err, size_t errlen);
unsigned sim_server_port(const sim_server *s);
/* Resumes delayed requests, stops MHD and frees the server. */
void sim_server_stop(sim_server *s);

/* Parses a numeric IPv4 or IPv6 address and port into *ss; -1 if host is
 * neither. */
struct sockaddr_storage;
int sim_parse_addr(const char *host, unsigned port, struct sockaddr_storage *ss, bool *v6);

/* The storage server that Bulk Data downloads are redirected to (storage.c):
 * a second MHD daemon on its own port, like the S3 bucket behind Cerner's
 * pre-signed URLs. Starting it sets st->storage_port and st->storage_origin,
 * so it must start before the FHIR server. Returns NULL with a message in
 * err when it cannot listen. */
typedef struct sim_storage sim_storage;
sim_storage *sim_storage_start(sim_state *st, const sim_server_opts *o, char *err, size_t errlen);
unsigned sim_storage_port(const sim_storage *s);
/* Stops the daemon (downloads in flight are cut) and frees it. */
void sim_storage_stop(sim_storage *s);

/* Handlers (each in its own file). They fill resp; counting of requests per
 * target happens in http.c so that injected faults are counted too. */
void sim_discovery_handle(sim_req *req, sim_resp *resp);
void sim_token_handle(sim_req *req, sim_resp *resp);
void sim_fhir_handle(sim_req *req, sim_resp *resp);
void sim_control_handle(sim_req *req, sim_resp *resp);
/* Reference server mode: issues a client id the way the SMART reference
 * server does (a signed JWT carrying the JWKS) and registers it (token.c). */
void sim_ref_register(sim_req *req, sim_resp *resp);

/* The client a token request names (unverified iss of the assertion, else
 * the client_id form field): new string or NULL. */
char *sim_token_peek_client(const sim_req *req);

/* ---- fault answers (fault_body.c; when they apply: fault.h, http.c) ---- */

/* Fills resp with the answer that replaces the normal one (status with
 * body, 429, malformed, nested; for huge_bytes only status and type: the
 * body is a sim_stream). */
void sim_fault_respond(const sim_fault_effect *e, sim_target target, sim_resp *resp);
/* Rewrites a normal answer: foreign next link and references (200s only),
 * then truncation. */
void sim_fault_rewrite(const sim_fault_effect *e, const sim_req *req, sim_resp *resp);
/* A fault with `echo`: replaces {authorization}, {request_body} and
 * {client_assertion} in resp's body with the request's Authorization header,
 * body and client_assertion form field (JSON-escaped), as a server that
 * reflects what it got in its error text would. */
void sim_fault_echo(const sim_req *req, sim_resp *resp);
/* Adds the fault's headers and Retry-After to resp. Returns true with the
 * announced wall-clock time in *not_before_ms when a Retry-After was sent. */
bool sim_fault_add_headers(const sim_fault_effect *e, int64_t now_ms, sim_resp *resp,
                           int64_t *not_before_ms);

/* A response body produced piecewise by an MHD content reader: a buffer
 * sent at a limited rate (drip) or the generated huge Bundle. */
typedef struct sim_stream sim_stream;
struct sim_delay;

/* How a paced stream waits: it suspends conn through delay and sets
 * *pending (the request context's delay_pending) until it runs again. */
typedef struct sim_stream_pacer {
  struct sim_delay *delay;
  struct MHD_Connection *conn;
  bool *pending;
} sim_stream_pacer;

/* Takes ownership of body (also on failure). bytes_per_s 0 = unpaced.
 * NULL on OOM. */
sim_stream *sim_stream_buffer(char *body, size_t len, long bytes_per_s);
sim_stream *sim_stream_huge(uint64_t total, long bytes_per_s);
/* Required before the first read of a paced stream. */
void sim_stream_set_pacer(sim_stream *s, const sim_stream_pacer *p);
uint64_t sim_stream_size(const sim_stream *s);
/* MHD_ContentReaderCallback and MHD_ContentReaderFreeCallback. */
ssize_t sim_stream_read(void *cls, uint64_t pos, char *buf, size_t max);
void sim_stream_free(void *cls);

/* FHIR OperationOutcome response with one error issue. */
void sim_fhir_outcome(sim_resp *resp, unsigned status, const char *code, const char *diagnostics);

#endif
