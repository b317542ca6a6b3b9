/* The worker's numbers: process-wide counters and per-tenant request
 * metrics, updated by every thread with atomics and read by the admin
 * endpoint (admin.h) and the final log line. Nothing here calls anything
 * else in the worker: every module may include it.
 *
 * Tenants get a request-metrics slot on first use and keep it, so label sets
 * stay bounded by the tenants ever configured (FX_MAX_TENANT_METRICS). */
#ifndef FX_ADMIN_METRICS_H
#define FX_ADMIN_METRICS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "common/http.h"

/* Request latency buckets (seconds) of fhirx_http_request_duration_seconds. */
#define FX_LAT_BUCKETS 12
extern const double fx_lat_bounds[FX_LAT_BUCKETS];

typedef struct fx_tenant_metrics {
  char id[65];
  atomic_ullong http[5]; /* 2xx, 3xx, 4xx, 5xx, no answer (transport error) */
  atomic_ullong lat[FX_LAT_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
  atomic_ullong lat_sum_us, lat_count;
} fx_tenant_metrics;

#define FX_MAX_TENANT_METRICS 1024

typedef struct fx_metrics {
  atomic_ullong jobs_consumed, jobs_completed, jobs_partial, jobs_failed;
  atomic_ullong results, failures, dead_letters, statuses;
  atomic_ullong http_requests, http_retries;
  atomic_ullong refs_fetched, refs_cached;
  atomic_ullong governor_waits;
  atomic_ullong retry_after_ignored, retry_after_capped; /* fx_metrics_retry_after */
  atomic_ullong records_unbuilt; /* a record could not be built (a bug or no memory) */
  atomic_ullong failures_unrecorded; /* past worker.max_reference_failures_per_job */
  atomic_ullong bulk_kickoffs, bulk_polls, bulk_files, bulk_completed, bulk_failed, bulk_resumed;
  atomic_llong bulk_active;
  atomic_llong requests_in_flight, jobs_in_flight, paused_partitions;
  atomic_ullong main_beat_ms;

  pthread_mutex_t tm_mu; /* adding tenant slots */
  fx_tenant_metrics *tm[FX_MAX_TENANT_METRICS];
  atomic_int n_tm;
} fx_metrics;

void fx_metrics_init(fx_metrics *m);
void fx_metrics_destroy(fx_metrics *m);

/* The request metrics of tenant, created on first use; NULL past
 * FX_MAX_TENANT_METRICS (or out of memory). Any thread. */
fx_tenant_metrics *fx_metrics_tenant(fx_metrics *m, const char *tenant);

/* One answered (or failed) FHIR request: its status class and latency. */
void fx_metrics_request(fx_tenant_metrics *tm, const fx_http_response *res);

/* The response's Retry-After as fx_http_retry_after_ms(res, flags) reads it
 * (-1: none to honour), counting what was ignored (a status where it means
 * nothing) or cut to http.max_retry_after_s. Every site that waits for a
 * Retry-After asks this. */
long fx_metrics_retry_after(fx_metrics *m, const fx_http_response *res, int flags);

/* The outcome counter of a finished job (0 completed, 1 partial, 2 failed). */
void fx_metrics_job_finished(fx_metrics *m, int outcome);

#endif
