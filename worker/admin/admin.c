/* The worker's admin endpoint (libmicrohttpd, its own thread):
 *   /metrics                Prometheus text format
 *   /healthz                the process is alive and every loop turns
 *   /readyz                 Kafka is reachable and the worker takes jobs
 *   /.well-known/jwks.json  the public keys, for the JWKS URL on Cerner Central
 * It only reads atomics and thread-safe statistics; it never touches a
 * worker loop. Tenant labels are bounded to the tenants ever configured. */
#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jwks.h"
#include "common/log.h"
#include "worker/admin/admin.h"

#define STALE_LOOP_MS 5000

struct fx_admin {
  fx_admin_view v;
  struct MHD_Daemon *mhd;
  char *jwks; /* rendered once: keys do not change while running */
};

/* ---- Prometheus text ------------------------------------------------------- */

typedef struct buf {
  char *s;
  size_t len, cap;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(buf *b, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (b->s && b->len + (size_t)n < b->cap) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = b->cap ? b->cap * 2 : 16384;
    while (cap < b->len + (size_t)n + 1) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) return;
    b->s = s;
    b->cap = cap;
  }
}

static void metric(buf *b, const char *name, const char *type, const char *help) {
  put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Tenant ids are [A-Za-z0-9._-]: no label escaping is needed. */
static void render(const fx_admin *a, buf *b) {
  const fx_services *sv = a->v.sv;
  fx_metrics *st = sv->metrics;
  metric(b, "fhirx_up", "gauge", "1 while the worker runs.");
  put(b, "fhirx_up 1\n");
  metric(b, "fhirx_jobs_consumed_total", "counter", "Job messages consumed.");
  put(b, "fhirx_jobs_consumed_total %llu\n", (unsigned long long)atomic_load(&st->jobs_consumed));
  metric(b, "fhirx_jobs_finished_total", "counter", "Jobs that published their status record, by state.");
  put(b, "fhirx_jobs_finished_total{state=\"completed\"} %llu\n",
      (unsigned long long)atomic_load(&st->jobs_completed));
  put(b, "fhirx_jobs_finished_total{state=\"partial\"} %llu\n",
      (unsigned long long)atomic_load(&st->jobs_partial));
  put(b, "fhirx_jobs_finished_total{state=\"failed\"} %llu\n",
      (unsigned long long)atomic_load(&st->jobs_failed));
  static const struct {
    const char *name, *help;
    size_t off;
  } counters[] = {
      {"fhirx_results_total", "Resources published to the results topic (acknowledged by Kafka).", offsetof(fx_metrics, results)},
      {"fhirx_failures_total", "Failure records published (acknowledged by Kafka).", offsetof(fx_metrics, failures)},
      {"fhirx_failures_not_recorded_total", "Foreign or invalid references past a job's worker.max_reference_failures_per_job: counted, not published as failure records.", offsetof(fx_metrics, failures_unrecorded)},
      {"fhirx_dead_letters_total", "Dead letters published (acknowledged by Kafka).", offsetof(fx_metrics, dead_letters)},
      {"fhirx_status_records_total", "Status records published (acknowledged by Kafka).", offsetof(fx_metrics, statuses)},
      {"fhirx_http_retries_total", "FHIR requests retried after a transient failure.", offsetof(fx_metrics, http_retries)},
      {"fhirx_reference_fetches_total", "Referenced entities fetched.", offsetof(fx_metrics, refs_fetched)},
      {"fhirx_reference_cache_hits_total", "Referenced entities published from the reference cache.", offsetof(fx_metrics, refs_cached)},
      {"fhirx_governor_waits_total", "Requests that waited for a tenant's limits, Retry-After or breaker.", offsetof(fx_metrics, governor_waits)},
      {"fhirx_retry_after_ignored_total", "Retry-After headers ignored: sent with a status where HTTP gives them no meaning (only 429, 503 and a bulk poll's 202 count).", offsetof(fx_metrics, retry_after_ignored)},
      {"fhirx_retry_after_capped_total", "Retry-After headers longer than http.max_retry_after_s, cut to it.", offsetof(fx_metrics, retry_after_capped)},
      {"fhirx_bulk_kickoffs_total", "Bulk $export kick-offs the server accepted.", offsetof(fx_metrics, bulk_kickoffs)},
      {"fhirx_bulk_status_polls_total", "Bulk export status polls.", offsetof(fx_metrics, bulk_polls)},
      {"fhirx_bulk_files_total", "Bulk export files downloaded and published.", offsetof(fx_metrics, bulk_files)},
      {"fhirx_bulk_resumed_total", "Bulk exports resumed from their progress records (after a restart or rebalance).", offsetof(fx_metrics, bulk_resumed)},
      {"fhirx_bulk_completed_total", "Bulk exports that ended with their status record.", offsetof(fx_metrics, bulk_completed)},
      {"fhirx_bulk_failed_total", "Bulk exports that failed and were dead-lettered.", offsetof(fx_metrics, bulk_failed)},
  };
  for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
    metric(b, counters[i].name, "counter", counters[i].help);
    put(b, "%s %llu\n", counters[i].name,
        (unsigned long long)atomic_load((atomic_ullong *)((char *)st + counters[i].off)));
  }
  metric(b, "fhirx_delivery_errors_total", "counter", "Kafka delivery reports with an error.");
  put(b, "fhirx_delivery_errors_total %llu\n", fx_producer_delivery_errors(sv->producer));
  metric(b, "fhirx_records_unbuilt_total", "counter",
         "Failure, dead-letter or status records that could not be built (out of memory); their "
         "jobs run again.");
  put(b, "fhirx_records_unbuilt_total %llu\n",
      (unsigned long long)atomic_load(&st->records_unbuilt));
  metric(b, "fhirx_requests_in_flight", "gauge", "FHIR requests in flight.");
  put(b, "fhirx_requests_in_flight %lld\n", (long long)atomic_load(&st->requests_in_flight));
  metric(b, "fhirx_jobs_in_flight", "gauge", "Jobs being worked on (consumed, not yet committed).");
  put(b, "fhirx_jobs_in_flight %lld\n", (long long)atomic_load(&st->jobs_in_flight));
  metric(b, "fhirx_bulk_exports_active", "gauge", "Bulk exports this worker is running (kick-off, polling or downloading).");
  put(b, "fhirx_bulk_exports_active %lld\n", (long long)atomic_load(&st->bulk_active));
  metric(b, "fhirx_paused_partitions", "gauge", "Job partitions paused for backpressure.");
  put(b, "fhirx_paused_partitions %lld\n", (long long)atomic_load(&st->paused_partitions));
  long long lag = 0;
  for (size_t i = 0; i < a->v.n_threads; i++) lag += fx_kthread_lag(a->v.threads[i]);
  metric(b, "fhirx_consumer_lag", "gauge", "Messages on the jobs topic not yet consumed by this process (librdkafka statistics).");
  put(b, "fhirx_consumer_lag %lld\n", lag);
  if (sv->refs) {
    fx_refcache_stats rs;
    fx_refcache_stats_get(sv->refs, &rs);
    metric(b, "fhirx_reference_cache_entries", "gauge", "Entities in the reference cache.");
    put(b, "fhirx_reference_cache_entries %llu\n", (unsigned long long)rs.entries);
    metric(b, "fhirx_reference_cache_misses_total", "counter", "Reference cache lookups that had to fetch.");
    put(b, "fhirx_reference_cache_misses_total %llu\n", (unsigned long long)rs.misses);
  }

  int n = atomic_load(&st->n_tm);
  metric(b, "fhirx_http_requests_total", "counter", "FHIR requests by tenant and status class.");
  static const char *const classes[] = {"2xx", "3xx", "4xx", "5xx", "error"};
  for (int i = 0; i < n; i++)
    for (int c = 0; c < 5; c++)
      put(b, "fhirx_http_requests_total{tenant=\"%s\",class=\"%s\"} %llu\n", st->tm[i]->id,
          classes[c], (unsigned long long)atomic_load(&st->tm[i]->http[c]));
  metric(b, "fhirx_http_request_duration_seconds", "histogram", "FHIR request latency by tenant.");
  for (int i = 0; i < n; i++) {
    unsigned long long cum = 0;
    for (int k = 0; k <= FX_LAT_BUCKETS; k++) {
      cum += atomic_load(&st->tm[i]->lat[k]);
      if (k < FX_LAT_BUCKETS)
        put(b, "fhirx_http_request_duration_seconds_bucket{tenant=\"%s\",le=\"%g\"} %llu\n",
            st->tm[i]->id, fx_lat_bounds[k], cum);
      else
        put(b, "fhirx_http_request_duration_seconds_bucket{tenant=\"%s\",le=\"+Inf\"} %llu\n",
            st->tm[i]->id, cum);
    }
    put(b, "fhirx_http_request_duration_seconds_sum{tenant=\"%s\"} %.6f\n", st->tm[i]->id,
        (double)atomic_load(&st->tm[i]->lat_sum_us) / 1e6);
    put(b, "fhirx_http_request_duration_seconds_count{tenant=\"%s\"} %llu\n", st->tm[i]->id,
        (unsigned long long)atomic_load(&st->tm[i]->lat_count));
  }
  /* Token, governor and breaker state, for the tenants configured now. */
  fx_tenant_set *ts = fx_tenant_slot_get(sv->tenants);
  static const char *const tok[][2] = {
      {"fhirx_token_requests_total", "Token requests sent, by tenant."},
      {"fhirx_token_failures_total", "Token requests that failed, by tenant."},
      {"fhirx_token_cache_hits_total", "Token lookups answered from the cache, by tenant."}};
  for (int m = 0; m < 3; m++) {
    metric(b, tok[m][0], "counter", tok[m][1]);
    for (size_t i = 0; i < ts->cfg->n_tenants; i++) {
      fx_token_stats t = {0};
      fx_token_cache_stats(sv->app->tokens, ts->cfg->tenants[i].id, &t);
      uint64_t v = m == 0 ? t.requests : (m == 1 ? t.failures : t.hits);
      put(b, "%s{tenant=\"%s\"} %llu\n", tok[m][0], ts->cfg->tenants[i].id, (unsigned long long)v);
    }
  }
  static const char *const gov[][3] = {
      {"fhirx_breaker_state", "gauge", "Circuit breaker by tenant: 0 closed, 1 open, 2 half-open."},
      {"fhirx_breaker_opened_total", "counter", "Times the tenant's circuit breaker opened."},
      {"fhirx_retry_after_waits_total", "counter", "Requests held back by the tenant's Retry-After."},
      {"fhirx_tenant_concurrency_limit", "gauge", "The tenant's adaptive concurrency limit."}};
  for (int m = 0; m < 4; m++) {
    metric(b, gov[m][0], gov[m][1], gov[m][2]);
    for (size_t i = 0; i < ts->cfg->n_tenants; i++) {
      fx_gov_stats g = {0};
      if (fx_governor_stats(sv->gov, ts->cfg->tenants[i].id, &g) != 0) continue;
      unsigned long long v = m == 0 ? (unsigned long long)g.breaker
                             : m == 1 ? g.breaker_opened
                             : m == 2 ? g.retry_after_waits
                                      : (unsigned long long)g.limit;
      put(b, "%s{tenant=\"%s\"} %llu\n", gov[m][0], ts->cfg->tenants[i].id, v);
    }
  }
  fx_tenant_set_release(ts);
}

/* ---- health ------------------------------------------------------------------ */

static int healthz(const fx_admin *a, json_t **out) {
  uint64_t now = fx_now_ms();
  int ok = now - atomic_load(&a->v.sv->metrics->main_beat_ms) < STALE_LOOP_MS;
  json_t *loops = json_array();
  for (size_t i = 0; i < a->v.n_threads; i++) {
    uint64_t age = now - fx_kthread_beat_ms(a->v.threads[i]);
    ok &= age < STALE_LOOP_MS;
    json_array_append_new(loops, json_pack("{s:i, s:I}", "thread", (int)i, "ms_since_beat", (json_int_t)age));
  }
  *out = json_pack("{s:b, s:o}", "alive", ok, "loops", loops);
  return ok;
}

static int readyz(const fx_admin *a, json_t **out) {
  const fx_services *sv = a->v.sv;
  int producer = fx_producer_brokers_up(sv->producer);
  int draining = atomic_load(a->v.draining);
  int ok = producer > 0 && !draining && sv->app->keys.n > 0;
  json_t *consumers = json_array();
  for (size_t i = 0; i < a->v.n_threads; i++) {
    int up = fx_kthread_brokers_up(a->v.threads[i]);
    ok &= up > 0;
    json_array_append_new(consumers,
                          json_pack("{s:i, s:i, s:i}", "thread", (int)i, "brokers_up", up,
                                    "assigned_partitions", fx_kthread_assigned(a->v.threads[i])));
  }
  *out = json_pack("{s:b, s:b, s:i, s:i, s:o}", "ready", ok, "draining", draining, "keys",
                   (int)sv->app->keys.n, "producer_brokers_up", producer, "consumers", consumers);
  return ok;
}

/* ---- HTTP -------------------------------------------------------------------- */

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type,
                               char *body, const char *cache) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Cache-Control", cache ? cache : "no-store");
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result respond_json(struct MHD_Connection *c, unsigned status, json_t *doc) {
  char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(doc);
  return respond(c, status, "application/json", text ? text : strdup("{}"), NULL);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls) {
  (void)version, (void)upload, (void)upload_size;
  const fx_admin *a = cls;
  static int marker;
  if (!*con_cls) { /* answer once the request is complete, keeping the connection alive */
    *con_cls = &marker;
    return MHD_YES;
  }
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
    return respond(c, 405, "text/plain", strdup("only GET\n"), NULL);
  json_t *doc = NULL;
  if (strcmp(url, "/metrics") == 0) {
    buf b = {0};
    render(a, &b);
    return respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.s ? b.s : strdup(""),
                   NULL);
  }
  if (strcmp(url, "/healthz") == 0) {
    int ok = healthz(a, &doc);
    return respond_json(c, ok ? 200 : 503, doc);
  }
  if (strcmp(url, "/readyz") == 0) {
    int ok = readyz(a, &doc);
    return respond_json(c, ok ? 200 : 503, doc);
  }
  if (strcmp(url, "/.well-known/jwks.json") == 0 && a->jwks)
    return respond(c, 200, "application/json", strdup(a->jwks), "public, max-age=3600");
  return respond(c, 404, "text/plain",
                 strdup("not found: try /metrics, /healthz, /readyz, /.well-known/jwks.json\n"),
                 NULL);
}

static int parse_listen(const char *listen, struct sockaddr_in *sa, fx_err *err) {
  const char *colon = strrchr(listen, ':');
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  char host[64];
  char *end;
  long port = colon ? strtol(colon + 1, &end, 10) : -1;
  if (!colon || (size_t)(colon - listen) >= sizeof host || *end || port < 0 || port > 65535)
    return fx_err_set(err, FX_EINVAL, "admin.listen: '%s' is not host:port (e.g. 127.0.0.1:9470)",
                      listen);
  memcpy(host, listen, (size_t)(colon - listen));
  host[colon - listen] = '\0';
  if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
    return fx_err_set(err, FX_EINVAL, "admin.listen: '%s' is not an IPv4 address", host);
  sa->sin_port = htons((uint16_t)port);
  return 0;
}

int fx_admin_start(const fx_admin_view *v, fx_admin **out, fx_err *err) {
  *out = NULL;
  const fx_config *cfg = v->sv->app->cfg;
  const char *env = getenv("FHIRX_ADMIN_LISTEN");
  const char *listen = env ? env : cfg->admin.listen;
  if (!listen || !*listen) return 0; /* turned off */
  struct sockaddr_in sa;
  int rc = parse_listen(listen, &sa, err);
  if (rc) return rc;
  fx_admin *a = calloc(1, sizeof *a);
  if (!a) return fx_err_set(err, FX_ENOMEM, "out of memory");
  a->v = *v;
  json_t *jwks = fx_jwks_build(&v->sv->app->keys, err);
  a->jwks = jwks ? json_dumps(jwks, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  json_decref(jwks);
  a->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL, handle,
                            a, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
  if (!a->mhd) {
    fx_admin_stop(a);
    return fx_err_set(err, FX_EIO,
                      "admin endpoint: cannot listen on %s (in use? set admin.listen, or \"\" to "
                      "turn it off)",
                      listen);
  }
  int port = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_BIND_PORT)->port;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  if (cfg->admin.port_file) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", cfg->admin.port_file);
    FILE *f = fopen(tmp, "w");
    if (f) {
      fprintf(f, "%d\n", port);
      fclose(f);
      rename(tmp, cfg->admin.port_file);
    }
  }
  fx_log(FX_LOG_INFO, "admin endpoint listening", "port", ps, NULL);
  *out = a;
  return 0;
}

void fx_admin_stop(fx_admin *a) {
  if (!a) return;
  if (a->mhd) MHD_stop_daemon(a->mhd);
  free(a->jwks);
  free(a);
}
