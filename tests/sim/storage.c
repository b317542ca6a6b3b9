/* The storage server behind Bulk Data downloads (docs/simulator.md "Storage
 * server"): Cerner answers a file GET with a 307 to a pre-signed URL on
 * cloud storage, which must be fetched WITHOUT the bearer token. This is a
 * second MHD daemon on its own port that behaves like that S3 bucket:
 *
 *   GET /storage/<job>-<n>.ndjson.gz?X-Amz-...&X-Amz-Signature=<hmac>
 *     Authorization header present -> 400 InvalidArgument "Only one auth
 *                                     mechanism allowed" (counted)
 *     signature wrong               -> 403 SignatureDoesNotMatch
 *     job deleted, file unknown     -> 404 NoSuchKey
 *     job expired, or its URLs      -> 403 AccessDenied "Request has expired"
 *     otherwise                     -> 200, Content-Type application/fhir+ndjson,
 *                                      Content-Encoding gzip (whatever Accept-Encoding
 *                                      says, like an object stored with that metadata)
 *
 * Errors are S3's XML documents. A file's lines are generated and gzipped
 * while they are sent (an MHD content reader, chunked), so a 20 MB file
 * costs a few hundred KiB of memory and no lock is held while generating;
 * the download holds a reference to its job (export.h). */
#include "common/log.h"
#include "tests/sim/http.h"

#include <limits.h>
#include <microhttpd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <zlib.h>

#define BLOCK (64 * 1024)  /* content reader buffer */
#define BATCH (256 * 1024) /* NDJSON generated per refill of the compressor */
#define CT_NDJSON "application/fhir+ndjson"
#define CT_XML "application/xml"

struct sim_storage {
  struct MHD_Daemon *daemon;
  sim_state *st;
  bool verbose;
  unsigned port;
};

/* ---- the gzip stream of one file ---- */

typedef struct gz_stream {
  sim_state *st;
  sim_export *x; /* a reference */
  size_t file;   /* 0-based */
  sim_xcursor c;
  size_t done;   /* lines written */
  bool input_done, z_done;
  z_stream z;
  sim_buf in;
} gz_stream;

static void gz_free(void *cls) {
  gz_stream *g = cls;
  deflateEnd(&g->z);
  sim_buf_free(&g->in);
  sim_export_unref(g->x);
  free(g);
}

static gz_stream *gz_new(sim_state *st, sim_export *x, size_t file) {
  gz_stream *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->st = st;
  g->x = x;
  g->file = file;
  g->c = x->files[file].start;
  /* windowBits 15 + 16: a gzip wrapper, as a stored .gz object has. */
  if (deflateInit2(&g->z, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    free(g);
    return NULL;
  }
  return g;
}

static bool refill(gz_stream *g) {
  g->in.len = 0;
  g->input_done = sim_export_write_lines(g->x, g->file, &g->c, &g->done, BATCH, &g->in);
  if (g->in.oom) return false;
  g->z.next_in = (Bytef *)g->in.data;
  g->z.avail_in = (uInt)g->in.len;
  return true;
}

/* MHD_ContentReaderCallback: compresses until buf is full or the file ends. */
static ssize_t gz_read(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)pos;
  gz_stream *g = cls;
  if (g->z_done) return MHD_CONTENT_READER_END_OF_STREAM;
  uInt room = (uInt)(max > UINT_MAX ? UINT_MAX : max);
  g->z.next_out = (Bytef *)buf;
  g->z.avail_out = room;
  while (g->z.avail_out > 0 && !g->z_done) {
    if (g->z.avail_in == 0 && !g->input_done && !refill(g))
      return MHD_CONTENT_READER_END_WITH_ERROR;
    int rc = deflate(&g->z, g->input_done && g->z.avail_in == 0 ? Z_FINISH : Z_NO_FLUSH);
    if (rc == Z_STREAM_END)
      g->z_done = true;
    else if (rc != Z_OK && rc != Z_BUF_ERROR)
      return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  size_t n = room - g->z.avail_out;
  if (n == 0) return MHD_CONTENT_READER_END_OF_STREAM;
  sim_count_storage_bytes(g->st, n);
  return (ssize_t)n;
}

/* ---- answers ---- */

static struct MHD_Response *xml_error(unsigned *status, unsigned code, const char *name,
                                      const char *message) {
  unsigned char raw[8];
  char rid[17] = "0000000000000000";
  if (RAND_bytes(raw, sizeof raw) == 1)
    for (size_t i = 0; i < sizeof raw; i++) snprintf(rid + 2 * i, 3, "%02X", raw[i]);
  sim_buf b = {0};
  sim_buf_printf(&b,
                 "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s"
                 "</Message><RequestId>%s</RequestId></Error>",
                 name, message, rid);
  size_t len;
  char *body = sim_buf_steal(&b, &len);
  if (!body) return NULL;
  struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(body);
    return NULL;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CT_XML);
  *status = code;
  return r;
}

/* "/storage/<32 hex>-<n>.ndjson.gz" -> id and n (1-based); false otherwise. */
static bool parse_object(const char *url, char id[SIM_EXPORT_ID_LEN + 1], size_t *n) {
  static const char prefix[] = "/storage/", suffix[] = ".ndjson.gz";
  if (strncmp(url, prefix, sizeof prefix - 1) != 0) return false;
  const char *p = url + sizeof prefix - 1;
  for (size_t i = 0; i < SIM_EXPORT_ID_LEN; i++)
    if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return false;
  if (p[SIM_EXPORT_ID_LEN] != '-') return false;
  memcpy(id, p, SIM_EXPORT_ID_LEN);
  id[SIM_EXPORT_ID_LEN] = '\0';
  const char *num = p + SIM_EXPORT_ID_LEN + 1;
  char *end;
  unsigned long v = strtoul(num, &end, 10);
  if (*num < '1' || *num > '9' || strcmp(end, suffix) != 0) return false;
  *n = v;
  return true;
}

static struct MHD_Response *answer(sim_storage *s, struct MHD_Connection *conn, const char *url,
                                   const char *method, unsigned *status) {
  sim_state *st = s->st;
  /* Only whether it is there is looked at: the value is never read or logged. */
  bool auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization") != NULL;
  sim_count_storage_request(st, auth);
  if (auth)
    return xml_error(status, 400, "InvalidArgument",
                     "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                     "Signature query string parameter or the Authorization header should be "
                     "specified");
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
    return xml_error(status, 405, "MethodNotAllowed",
                     "The specified method is not allowed against this resource.");
  char id[SIM_EXPORT_ID_LEN + 1], want[65];
  size_t n;
  if (!parse_object(url, id, &n))
    return xml_error(status, 404, "NoSuchKey", "The specified key does not exist.");
  const char *sig = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "X-Amz-Signature");
  sim_export_sign(st, id, n, want);
  if (!sig || strcmp(sig, want) != 0)
    return xml_error(status, 403, "SignatureDoesNotMatch",
                     "The request signature we calculated does not match the signature you "
                     "provided. Check your key and signing method.");
  int64_t now = sim_now_ms();
  pthread_mutex_lock(&st->lock);
  sim_export *x = sim_map_get(&st->exports, id);
  bool expired = x && (sim_export_expired_locked(x, now) || x->urls_expired);
  if (x && !expired) sim_export_ref(x);
  pthread_mutex_unlock(&st->lock);
  if (expired) return xml_error(status, 403, "AccessDenied", "Request has expired");
  if (!x || n > x->nfiles || now < x->done_ms || x->fail) {
    sim_export_unref(x);
    return xml_error(status, 404, "NoSuchKey", "The specified key does not exist.");
  }
  gz_stream *g = gz_new(st, x, n - 1);
  struct MHD_Response *r =
      g ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, BLOCK, gz_read, g, gz_free) : NULL;
  if (!r) {
    if (g)
      gz_free(g);
    else
      sim_export_unref(x);
    return xml_error(status, 500, "InternalError", "We encountered an internal error.");
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CT_NDJSON);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
  *status = 200;
  return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  (void)version;
  (void)upload_data;
  static int started;
  sim_storage *s = cls;
  if (!*con_cls) { /* headers only; answer once any body has been read */
    *con_cls = &started;
    return MHD_YES;
  }
  if (*upload_data_size) {
    *upload_data_size = 0;
    return MHD_YES;
  }
  unsigned status = 500;
  struct MHD_Response *r = answer(s, conn, url, method, &status);
  if (!r) return MHD_NO;
  if (s->verbose) {
    char code[8];
    snprintf(code, sizeof code, "%u", status);
    /* The path only: the query carries the signature. */
    fx_log(FX_LOG_DEBUG, "storage request", "method", method, "path", url, "status", code, NULL);
  }
  enum MHD_Result rc = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return rc;
}

sim_storage *sim_storage_start(sim_state *st, const sim_server_opts *o, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  bool v6 = false;
  if (sim_parse_addr(o->host, o->port, &ss, &v6) != 0) {
    snprintf(err, errlen, "--host %s: not a numeric IPv4 or IPv6 address", o->host);
    return NULL;
  }
  sim_storage *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  s->st = st;
  s->verbose = o->verbose;
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | (v6 ? MHD_USE_IPv6 : 0) |
                   (o->verbose ? MHD_USE_ERROR_LOG : 0);
  s->daemon = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, s,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                               MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)o->threads,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)60,
                               MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int)1024, MHD_OPTION_END);
  if (!s->daemon) {
    snprintf(err, errlen, "cannot listen on %s storage port %u (in use?)", o->host, o->port);
    free(s);
    return NULL;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
  s->port = info ? info->port : o->port;
  st->storage_port = s->port;
  /* A wildcard address is no place to send a client: then the redirect
   * names the host the client reached the FHIR server by (export.c). */
  st->storage_any_host =
      v6 ? IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr)
         : ((struct sockaddr_in *)&ss)->sin_addr.s_addr == htonl(INADDR_ANY);
  snprintf(st->storage_origin, sizeof st->storage_origin, v6 ? "http://[%s]:%u" : "http://%s:%u",
           o->host, s->port);
  return s;
}

unsigned sim_storage_port(const sim_storage *s) { return s->port; }

void sim_storage_stop(sim_storage *s) {
  if (!s) return;
  MHD_stop_daemon(s->daemon);
  free(s);
}
