/* fhirx-canary: a host that must never be contacted. Tests point foreign
 * next links and references at it (cerner-sim faults foreign_next and
 * foreign_references, docs/simulator.md "Canary") and then assert that it
 * saw no request, and above all no Authorization header.
 *
 *   fhirx-canary [--host 127.0.0.1] [--port N] [--port-file PATH] [--ok]
 *
 * Every request is counted with its method, path and whether it carried an
 * Authorization header (never its value), then answered 404 with an
 * OperationOutcome, or with --ok a plausible 200 (the resource the path
 * names, or an empty searchset Bundle). /_canary/... is the control API
 * and is not counted:
 *
 *   GET    /_canary/requests  {"requests": N, "with_authorization": M,
 *                              "paths": ["/r4/t/Practitioner/1", ...],
 *                              "log": [{"method", "path", "authorization"}]}
 *   DELETE /_canary/requests  forget everything
 *   GET    /_canary/health    {"ok": true}
 *
 * Exit status: 0 after SIGTERM/SIGINT, 2 for bad arguments, 1 when it
 * cannot listen. */
#include <arpa/inet.h>
#include <getopt.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LOG 10000 /* requests listed in full; later ones are only counted */
#define CT_FHIR "application/fhir+json;charset=utf-8"
#define CT_JSON "application/json;charset=utf-8"

typedef struct canary {
  pthread_mutex_t lock;
  long requests;
  long with_authorization;
  json_t *paths; /* guarded by lock */
  json_t *log;
  bool ok;       /* answer 200 instead of 404 */
} canary;

/* Marks the second call of the access handler (the first only announces
 * the request; its body, if any, follows). */
static int seen_marker;

static void record(canary *c, const char *method, const char *url, bool authorization) {
  pthread_mutex_lock(&c->lock);
  c->requests++;
  if (authorization) c->with_authorization++;
  if (json_array_size(c->log) < MAX_LOG) {
    json_array_append_new(c->paths, json_string(url));
    json_array_append_new(c->log, json_pack("{s:s, s:s, s:b}", "method", method, "path", url,
                                            "authorization", authorization));
  }
  pthread_mutex_unlock(&c->lock);
}

static json_t *report(canary *c) {
  pthread_mutex_lock(&c->lock);
  json_t *doc = json_pack("{s:I, s:I, s:O, s:O}", "requests", (json_int_t)c->requests,
                          "with_authorization", (json_int_t)c->with_authorization, "paths",
                          c->paths, "log", c->log);
  json_t *copy = doc ? json_deep_copy(doc) : NULL;
  pthread_mutex_unlock(&c->lock);
  json_decref(doc);
  return copy;
}

static void forget(canary *c) {
  pthread_mutex_lock(&c->lock);
  c->requests = c->with_authorization = 0;
  json_array_clear(c->paths);
  json_array_clear(c->log);
  pthread_mutex_unlock(&c->lock);
}

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *type,
                              json_t *doc /* stolen */) {
  char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(doc);
  if (!text) return MHD_NO;
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  enum MHD_Result rc = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return rc;
}

static enum MHD_Result control(canary *c, struct MHD_Connection *conn, const char *url,
                               const char *method) {
  if (strcmp(url, "/_canary/requests") == 0 && strcmp(method, "GET") == 0)
    return answer(conn, 200, CT_JSON, report(c));
  if (strcmp(url, "/_canary/requests") == 0 && strcmp(method, "DELETE") == 0) {
    forget(c);
    return answer(conn, 200, CT_JSON, json_pack("{s:b}", "ok", 1));
  }
  if (strcmp(url, "/_canary/health") == 0 && strcmp(method, "GET") == 0)
    return answer(conn, 200, CT_JSON, json_pack("{s:b}", "ok", 1));
  return answer(conn, 404, CT_JSON, json_pack("{s:s}", "error", "no such control endpoint"));
}

/* A resource for ".../Type/id", else an empty searchset: enough to look
 * like a FHIR server to a client that should not be here at all. */
static json_t *plausible(const char *url) {
  const char *last = strrchr(url, '/');
  const char *prev = last;
  while (prev && prev > url && prev[-1] != '/') prev--;
  if (last && last[1] && prev && prev < last && prev[0] >= 'A' && prev[0] <= 'Z') {
    char type[64];
    snprintf(type, sizeof type, "%.*s", (int)(last - prev), prev);
    return json_pack("{s:s, s:s}", "resourceType", type, "id", last + 1);
  }
  return json_pack("{s:s, s:s, s:[]}", "resourceType", "Bundle", "type", "searchset", "link");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  (void)version, (void)upload_data;
  canary *c = cls;
  bool is_control = strncmp(url, "/_canary/", 9) == 0;
  if (!*con_cls) {
    /* Counted on arrival, before any body: a request that never completes
     * was still sent, and the Authorization header is already here. */
    if (!is_control)
      record(c, method, url,
             MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization") != NULL);
    *con_cls = &seen_marker;
    return MHD_YES;
  }
  if (*upload_data_size) {
    *upload_data_size = 0; /* bodies are read and dropped */
    return MHD_YES;
  }
  if (is_control) return control(c, conn, url, method);
  if (c->ok) return answer(conn, 200, CT_FHIR, plausible(url));
  return answer(conn, 404, CT_FHIR,
                json_pack("{s:s, s:[{s:s, s:s, s:s}]}", "resourceType", "OperationOutcome",
                          "issue", "severity", "error", "code", "not-found", "diagnostics",
                          "fhirx-canary: this host must never be contacted"));
}

static int write_port_file(const char *path, unsigned port) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  int ok = fprintf(f, "%u\n", port) > 0;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return -1;
  }
  return 0;
}

static int usage(const char *problem) {
  fprintf(stderr,
          "fhirx-canary: %s\nusage: fhirx-canary [--host 127.0.0.1] [--port N] "
          "[--port-file PATH] [--ok]\n",
          problem);
  return 2;
}

int main(int argc, char **argv) {
  /* Blocked before any thread exists, collected with sigwait (as cerner-sim). */
  sigset_t set;
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  static const struct option longopts[] = {{"host", required_argument, NULL, 'H'},
                                           {"port", required_argument, NULL, 'p'},
                                           {"port-file", required_argument, NULL, 'f'},
                                           {"ok", no_argument, NULL, 'o'},
                                           {NULL, 0, NULL, 0}};
  const char *host = "127.0.0.1", *port_file = NULL;
  unsigned long port = 0;
  canary c = {.ok = false};
  int opt;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    char *end;
    switch (opt) {
    case 'H': host = optarg; break;
    case 'f': port_file = optarg; break;
    case 'o': c.ok = true; break;
    case 'p':
      port = strtoul(optarg, &end, 10);
      if (!*optarg || *end || port > 65535) return usage("--port: expected 0-65535");
      break;
    default: return usage("unknown option");
    }
  }
  if (optind < argc) return usage("unexpected argument");
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
    return usage("--host: expected a numeric IPv4 address");

  pthread_mutex_init(&c.lock, NULL);
  c.paths = json_array();
  c.log = json_array();
  int rc = 0;
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, (uint16_t)port, NULL, NULL, on_request, &c,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_TIMEOUT,
      (unsigned int)30, MHD_OPTION_END);
  const union MHD_DaemonInfo *info = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
  if (!d || !c.paths || !c.log) {
    fprintf(stderr, "fhirx-canary: cannot listen on %s port %lu\n", host, port);
    rc = 1;
  } else if (port_file && write_port_file(port_file, info ? info->port : (unsigned)port) != 0) {
    fprintf(stderr, "fhirx-canary: cannot write --port-file %s\n", port_file);
    rc = 1;
  } else {
    int sig = 0;
    sigwait(&set, &sig);
  }
  if (d) MHD_stop_daemon(d);
  json_decref(c.paths);
  json_decref(c.log);
  pthread_mutex_destroy(&c.lock);
  return rc;
}
