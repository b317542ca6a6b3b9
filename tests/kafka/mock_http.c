#include "tests/kafka/mock_http.h"

#include "tests/kafka/mock_log.h"
#include "tests/kafka/mock_names.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY (64 * 1024)
#define MAX_INJECTED_ERRORS 1000
#define MAX_RTT_MS (10 * 60 * 1000)

struct fxm_http {
  struct MHD_Daemon *daemon;
  fxm_cluster *cluster;
  unsigned port;
};

/* A request body collected across MHD's upload callbacks; owned by the
 * connection (con_cls) and freed in on_completed, which MHD calls even when
 * the client goes away mid-request. */
typedef struct upload {
  char *data;
  size_t len;
  bool too_large;
} upload;

typedef struct request {
  const char *method;
  const char *path;
  json_t *body; /* the parsed JSON object, or NULL when the body was empty */
  char seg[256]; /* what the route's '*' matched: a broker id or a topic name */
} request;

typedef struct reply {
  unsigned status;
  json_t *doc; /* owned; sent as the body */
} reply;

/* ---- replies ---- */

static void reply_json(reply *out, unsigned status, json_t *doc) {
  json_decref(out->doc);
  out->status = doc ? status : MHD_HTTP_INTERNAL_SERVER_ERROR;
  out->doc = doc ? doc : json_pack("{s:s}", "error", "out of memory building the reply");
}

/* Every rejection says what was wrong and what would be accepted, and is
 * logged, since the caller is usually a test whose assertion would otherwise
 * only show a status code. */
__attribute__((format(printf, 4, 5))) static void reply_error(reply *out, const request *r,
                                                              unsigned status, const char *fmt,
                                                              ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fxm_log("warn", "control request rejected",
          json_pack("{s:s, s:s, s:i, s:s}", "method", r->method, "path", r->path, "status",
                    (int)status, "error", msg));
  reply_json(out, status, json_pack("{s:s}", "error", msg));
}

/* ---- body helpers ---- */

/* Rejects keys outside `allowed` (NULL-terminated), so a typo such as
 * {"partiton": 3} is an error rather than a silent default. */
static int check_keys(const request *r, const char *const *allowed, reply *out) {
  const char *key;
  json_t *value;
  json_object_foreach(r->body, key, value) {
    bool ok = false;
    for (size_t i = 0; allowed[i] && !ok; i++) ok = strcmp(key, allowed[i]) == 0;
    if (!ok) {
      char list[256] = "";
      for (size_t i = 0; allowed[i]; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s\"%s\"", i ? ", " : "", allowed[i]);
      }
      reply_error(out, r, MHD_HTTP_BAD_REQUEST, "unknown key \"%s\" in the body; expected %s",
                  key, list);
      return -1;
    }
  }
  return 0;
}

static int require_body(const request *r, reply *out) {
  if (r->body) return 0;
  reply_error(out, r, MHD_HTTP_BAD_REQUEST, "%s %s needs a JSON object body", r->method, r->path);
  return -1;
}

/* Reads an optional integer member into *v (left alone when absent). */
static int get_int(const request *r, const char *key, long lo, long hi, long *v, reply *out) {
  json_t *j = r->body ? json_object_get(r->body, key) : NULL;
  if (!j) return 0;
  if (!json_is_integer(j) || json_integer_value(j) < lo || json_integer_value(j) > hi) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "\"%s\" must be an integer from %ld to %ld", key,
                lo, hi);
    return -1;
  }
  *v = (long)json_integer_value(j);
  return 0;
}

/* ---- handlers ---- */

typedef void (*handler_fn)(fxm_cluster *c, const request *r, reply *out);

static void h_status(fxm_cluster *c, const request *r, reply *out) {
  (void)r;
  reply_json(out, MHD_HTTP_OK, fxm_cluster_status(c));
}

static int parse_broker_id(fxm_cluster *c, const request *r, int32_t *id, reply *out) {
  char *end;
  long v = strtol(r->seg, &end, 10);
  if (*end || v < 1 || v > fxm_cluster_broker_count(c)) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "no broker \"%s\": this cluster has brokers 1-%d",
                r->seg, fxm_cluster_broker_count(c));
    return -1;
  }
  *id = (int32_t)v;
  return 0;
}

static void set_up(fxm_cluster *c, const request *r, int32_t id, bool up, reply *out) {
  char err[256];
  if (fxm_cluster_set_up(c, id, up, err, sizeof err)) {
    reply_error(out, r, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
    return;
  }
  json_t *who = id == -1 ? json_string("all") : json_integer(id);
  fxm_log("info", up ? "broker up" : "broker down", json_pack("{s:O}", "broker", who));
  reply_json(out, MHD_HTTP_OK, json_pack("{s:o, s:b}", "broker", who, "up", up));
}

static void h_broker_down(fxm_cluster *c, const request *r, reply *out) {
  int32_t id;
  if (!parse_broker_id(c, r, &id, out)) set_up(c, r, id, false, out);
}

static void h_broker_up(fxm_cluster *c, const request *r, reply *out) {
  int32_t id;
  if (!parse_broker_id(c, r, &id, out)) set_up(c, r, id, true, out);
}

static void h_cluster_down(fxm_cluster *c, const request *r, reply *out) {
  set_up(c, r, -1, false, out);
}

static void h_cluster_up(fxm_cluster *c, const request *r, reply *out) {
  set_up(c, r, -1, true, out);
}

static void set_rtt(fxm_cluster *c, const request *r, int32_t id, reply *out) {
  static const char *const keys[] = {"ms", NULL};
  long ms = -1;
  char err[256];
  if (require_body(r, out) || check_keys(r, keys, out) ||
      get_int(r, "ms", 0, MAX_RTT_MS, &ms, out))
    return;
  if (ms < 0) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "body needs \"ms\": the delay in milliseconds");
    return;
  }
  if (fxm_cluster_set_rtt(c, id, (int)ms, err, sizeof err)) {
    reply_error(out, r, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
    return;
  }
  json_t *who = id == -1 ? json_string("all") : json_integer(id);
  fxm_log("info", "broker rtt", json_pack("{s:O, s:i}", "broker", who, "rtt_ms", (int)ms));
  reply_json(out, MHD_HTTP_OK, json_pack("{s:o, s:i}", "broker", who, "rtt_ms", (int)ms));
}

static void h_broker_rtt(fxm_cluster *c, const request *r, reply *out) {
  int32_t id;
  if (!parse_broker_id(c, r, &id, out)) set_rtt(c, r, id, out);
}

static void h_cluster_rtt(fxm_cluster *c, const request *r, reply *out) {
  set_rtt(c, r, -1, out);
}

/* "api": a request name ("Produce") or its numeric ApiKey. */
static int parse_api(const request *r, int16_t *key, reply *out) {
  json_t *j = json_object_get(r->body, "api");
  if (json_is_string(j) && !fxm_api_key(json_string_value(j), key)) return 0;
  if (json_is_integer(j) && json_integer_value(j) >= 0 && json_integer_value(j) <= INT16_MAX &&
      fxm_api_name((int16_t)json_integer_value(j))) {
    *key = (int16_t)json_integer_value(j);
    return 0;
  }
  char known[1024];
  fxm_api_list(known, sizeof known);
  if (!j)
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "body needs \"api\", one of: %s", known);
  else
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "unknown \"api\" %s; use one of: %s",
                json_is_string(j) ? json_string_value(j) : "(not a name or ApiKey)", known);
  return -1;
}

/* One element of "errors": a librdkafka error name or a numeric code. */
static int parse_error(const request *r, json_t *j, size_t i, rd_kafka_resp_err_t *e,
                       reply *out) {
  if (json_is_string(j) && !fxm_error_code(json_string_value(j), e)) return 0;
  if (json_is_integer(j) && json_integer_value(j) >= -1000 && json_integer_value(j) <= 1000 &&
      !fxm_error_known((long)json_integer_value(j))) {
    *e = (rd_kafka_resp_err_t)json_integer_value(j);
    return 0;
  }
  reply_error(out, r, MHD_HTTP_BAD_REQUEST,
              "errors[%zu] %s is not a librdkafka error name or code; use names as "
              "rd_kafka_err2name() prints them, e.g. NOT_LEADER_FOR_PARTITION, "
              "REQUEST_TIMED_OUT, COORDINATOR_NOT_AVAILABLE, or _TRANSPORT to drop the "
              "connection",
              i, json_is_string(j) ? json_string_value(j) : "(not a string or integer)");
  return -1;
}

static rd_kafka_resp_err_t *parse_errors(const request *r, size_t *n, reply *out) {
  json_t *arr = json_object_get(r->body, "errors");
  if (!json_is_array(arr) || json_array_size(arr) == 0 ||
      json_array_size(arr) > MAX_INJECTED_ERRORS) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST,
                "body needs \"errors\": an array of 1-%d error names, e.g. "
                "[\"NOT_LEADER_FOR_PARTITION\"]",
                MAX_INJECTED_ERRORS);
    return NULL;
  }
  *n = json_array_size(arr);
  rd_kafka_resp_err_t *errs = calloc(*n, sizeof *errs);
  if (!errs) {
    reply_error(out, r, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < *n; i++) {
    if (parse_error(r, json_array_get(arr, i), i, &errs[i], out)) {
      free(errs);
      return NULL;
    }
  }
  return errs;
}

static json_t *error_names(const rd_kafka_resp_err_t *errs, size_t n) {
  json_t *arr = json_array();
  for (size_t i = 0; arr && i < n; i++)
    json_array_append_new(arr, json_string(rd_kafka_err2name(errs[i])));
  return arr;
}

static void h_errors(fxm_cluster *c, const request *r, reply *out) {
  static const char *const keys[] = {"api", "errors", "broker", "rtt_ms", NULL};
  int16_t api;
  size_t n = 0;
  long broker = 0, rtt = -1;
  char err[256];
  if (require_body(r, out) || check_keys(r, keys, out) || parse_api(r, &api, out) ||
      get_int(r, "broker", 1, fxm_cluster_broker_count(c), &broker, out) ||
      get_int(r, "rtt_ms", 0, MAX_RTT_MS, &rtt, out))
    return;
  if (rtt >= 0 && broker == 0) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST,
                "\"rtt_ms\" needs \"broker\": only per-broker errors carry a delay");
    return;
  }
  rd_kafka_resp_err_t *errs = parse_errors(r, &n, out);
  if (!errs) return;
  if (fxm_cluster_push_errors(c, api, errs, n, (int32_t)broker, rtt < 0 ? 0 : (int)rtt, err,
                              sizeof err)) {
    reply_error(out, r, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
  } else {
    json_t *who = broker ? json_integer(broker) : json_null();
    fxm_log("info", "errors injected",
            json_pack("{s:s, s:i, s:o, s:O}", "api", fxm_api_name(api), "api_key", api, "errors",
                      error_names(errs, n), "broker", who));
    reply_json(out, MHD_HTTP_OK,
               json_pack("{s:s, s:i, s:o, s:o}", "api", fxm_api_name(api), "api_key", api,
                         "errors", error_names(errs, n), "broker", who));
  }
  free(errs);
}

static void h_errors_clear(fxm_cluster *c, const request *r, reply *out) {
  static const char *const keys[] = {"api", NULL};
  int16_t api;
  if (require_body(r, out) || check_keys(r, keys, out) || parse_api(r, &api, out)) return;
  fxm_cluster_clear_errors(c, api);
  fxm_log("info", "errors cleared", json_pack("{s:s}", "api", fxm_api_name(api)));
  reply_json(out, MHD_HTTP_OK, json_pack("{s:s, s:b}", "api", fxm_api_name(api), "cleared", 1));
}

static void h_topics(fxm_cluster *c, const request *r, reply *out) {
  static const char *const keys[] = {"name", "partitions", NULL};
  long partitions = fxm_cluster_default_partitions(c);
  char err[512];
  if (require_body(r, out) || check_keys(r, keys, out) ||
      get_int(r, "partitions", 1, FXM_MAX_PARTITIONS, &partitions, out))
    return;
  const char *name = json_string_value(json_object_get(r->body, "name"));
  if (!name) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "body needs \"name\": the topic name");
    return;
  }
  int rc = fxm_cluster_create_topic(c, name, (int)partitions, err, sizeof err);
  if (rc < 0) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "%s", err);
    return;
  }
  if (rc == 1) {
    reply_error(out, r, MHD_HTTP_CONFLICT,
                "topic \"%s\" already exists (the mock cannot change its partition count)",
                name);
    return;
  }
  fxm_log("info", "topic created", json_pack("{s:s, s:i}", "topic", name, "partitions",
                                             (int)partitions));
  reply_json(out, MHD_HTTP_CREATED,
             json_pack("{s:s, s:i}", "name", name, "partitions", (int)partitions));
}

/* POST /topics/{name}/leader {"broker": 3[, "partition": 0]}: every partition
 * of the topic (or one) led by that broker, so per-broker errors (/errors
 * with "broker") hit that topic and no other. */
static void h_topic_leader(fxm_cluster *c, const request *r, reply *out) {
  static const char *const keys[] = {"broker", "partition", NULL};
  long broker = 0, partition = -1;
  char err[512];
  if (require_body(r, out) || check_keys(r, keys, out) ||
      get_int(r, "broker", 1, fxm_cluster_broker_count(c), &broker, out) ||
      get_int(r, "partition", 0, FXM_MAX_PARTITIONS - 1, &partition, out))
    return;
  if (!broker) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "body needs \"broker\": the new leader's id (1-%d)",
                fxm_cluster_broker_count(c));
    return;
  }
  int n = fxm_cluster_set_leader(c, r->seg, (int32_t)partition, (int32_t)broker, err, sizeof err);
  if (n < 0) {
    reply_error(out, r, MHD_HTTP_BAD_REQUEST, "%s", err);
    return;
  }
  fxm_log("info", "leader set", json_pack("{s:s, s:i, s:i, s:i}", "topic", r->seg, "partition",
                                          (int)partition, "broker", (int)broker, "partitions", n));
  reply_json(out, MHD_HTTP_OK, json_pack("{s:s, s:i, s:i}", "topic", r->seg, "broker",
                                         (int)broker, "partitions", n));
}

/* ---- routing ---- */

static const struct route {
  const char *method;
  const char *pattern; /* '*' matches one path segment */
  handler_fn fn;
} routes[] = {
    {"GET", "/status", h_status},
    {"POST", "/brokers/*/down", h_broker_down},
    {"POST", "/brokers/*/up", h_broker_up},
    {"POST", "/brokers/*/rtt", h_broker_rtt},
    {"POST", "/cluster/down", h_cluster_down},
    {"POST", "/cluster/up", h_cluster_up},
    {"POST", "/cluster/rtt", h_cluster_rtt},
    {"POST", "/errors", h_errors},
    {"POST", "/errors/clear", h_errors_clear},
    {"POST", "/topics", h_topics},
    {"POST", "/topics/*/leader", h_topic_leader},
};

/* Segment-by-segment match; a '*' segment must be non-empty and fit seg. */
static bool match(const char *pattern, const char *path, char *seg, size_t seglen) {
  while (*pattern && *path) {
    if (*pattern == '*') {
      size_t len = strcspn(path, "/");
      if (len == 0 || len >= seglen) return false;
      memcpy(seg, path, len);
      seg[len] = '\0';
      path += len;
      pattern++;
    } else if (*pattern++ != *path++) {
      return false;
    }
  }
  return *pattern == '\0' && *path == '\0';
}

static void dispatch(fxm_cluster *c, request *r, reply *out) {
  bool path_known = false;
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    if (!match(routes[i].pattern, r->path, r->seg, sizeof r->seg)) continue;
    path_known = true;
    if (strcmp(routes[i].method, r->method) == 0) {
      routes[i].fn(c, r, out);
      return;
    }
  }
  if (path_known)
    reply_error(out, r, MHD_HTTP_METHOD_NOT_ALLOWED, "%s is not allowed on %s", r->method,
                r->path);
  else
    reply_error(out, r, MHD_HTTP_NOT_FOUND,
                "no route %s; see docs/embedded-kafka.md (GET /status, POST /brokers/ID/down|up|"
                "rtt, /cluster/down|up|rtt, /errors, /errors/clear, /topics, /topics/NAME/leader)",
                r->path);
}

/* Parses the body (a JSON object or nothing), then routes. */
static void handle(fxm_cluster *c, const char *method, const char *url, upload *up, reply *out) {
  char path[256];
  request r = {.method = method, .path = url};
  if (up->too_large) {
    reply_error(out, &r, MHD_HTTP_CONTENT_TOO_LARGE, "body over %d bytes", MAX_BODY);
    return;
  }
  /* "/status/" means "/status". */
  snprintf(path, sizeof path, "%s", url);
  size_t len = strlen(path);
  if (len > 1 && path[len - 1] == '/') path[len - 1] = '\0';
  r.path = path;
  if (up->len > 0) {
    json_error_t jerr;
    r.body = json_loadb(up->data, up->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!r.body || !json_is_object(r.body)) {
      reply_error(out, &r, MHD_HTTP_BAD_REQUEST, "body is not a JSON object: %s",
                  r.body ? "it is another JSON type" : jerr.text);
      json_decref(r.body);
      return;
    }
  }
  dispatch(c, &r, out);
  json_decref(r.body);
}

static enum MHD_Result send_reply(struct MHD_Connection *conn, reply *out) {
  char *text = json_dumps(out->doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(out->doc);
  out->doc = NULL;
  if (!text) return MHD_NO;
  size_t len = strlen(text);
  struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  enum MHD_Result rc = MHD_queue_response(conn, out->status, resp);
  MHD_destroy_response(resp);
  return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  (void)version;
  fxm_http *h = cls;
  upload *up = *con_cls;
  if (!up) {
    /* First call: only the headers have arrived. */
    up = calloc(1, sizeof *up);
    if (!up) return MHD_NO;
    *con_cls = up;
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (up->too_large || up->len + n > MAX_BODY) {
      up->too_large = true;
      return MHD_YES; /* keep reading so the 413 can be sent */
    }
    char *grown = realloc(up->data, up->len + n);
    if (!grown) return MHD_NO;
    memcpy(grown + up->len, upload_data, n);
    up->data = grown;
    up->len += n;
    return MHD_YES;
  }
  reply out = {0};
  handle(h->cluster, method, url, up, &out);
  return send_reply(conn, &out);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode code) {
  (void)cls;
  (void)conn;
  (void)code;
  upload *up = *con_cls;
  if (up) free(up->data);
  free(up);
  *con_cls = NULL;
}

static void on_mhd_error(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  msg[strcspn(msg, "\n")] = '\0';
  fxm_log("error", "control server", json_pack("{s:s}", "error", msg));
}

fxm_http *fxm_http_start(fxm_cluster *cluster, unsigned port, char *err, size_t errlen) {
  fxm_http *h = calloc(1, sizeof *h);
  if (!h) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  h->cluster = cluster;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  /* One internal thread: requests are handled strictly one after another,
   * which is what fxm_cluster's lock-free bookkeeping relies on. */
  h->daemon = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)port, NULL, NULL,
      on_request, h, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_error, NULL, /* must come first */
      MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED,
      on_completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
  if (!h->daemon) {
    snprintf(err, errlen, "cannot listen on 127.0.0.1:%u (see the control server error above)",
             port);
    free(h);
    return NULL;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
  h->port = info ? info->port : port;
  return h;
}

unsigned fxm_http_port(const fxm_http *h) { return h->port; }

void fxm_http_stop(fxm_http *h) {
  if (!h) return;
  if (h->daemon) MHD_stop_daemon(h->daemon);
  free(h);
}
