/* What every thread of a worker process shares. The supervisor (pool.c)
 * builds it before any thread starts and frees it after the last one ended;
 * in between it does not change, and each member is thread-safe on its own
 * (the tenant slot hands out reference-counted sets; the token cache, the
 * governor, the reference cache and the producer lock or use atomics;
 * metrics are atomics). Data only: including it calls nothing. */
#ifndef FX_POOL_SERVICES_H
#define FX_POOL_SERVICES_H

#include <stddef.h>

#include "common/governor.h"
#include "common/loop.h"
#include "common/refcache.h"
#include "worker/admin/metrics.h"
#include "worker/model/app.h"
#include "worker/model/job.h"
#include "worker/model/tenants.h"
#include "worker/out/producer.h"

typedef struct fx_services {
  fx_app *app;              /* the configuration, keys and token cache */
  fx_governor *gov;         /* per-tenant limits, Retry-After, breaker */
  fx_refcache *refs;        /* NULL when worker.ref_cache_entries is 0 */
  fx_tenant_slot *tenants;  /* the current tenant set (SIGHUP replaces it) */
  fx_producer *producer;
  fx_metrics *metrics;
  fx_job_limits limits;
  size_t max_message;       /* the largest value produced (fx_producer_max_message) */
  const char *identity;     /* "host:pid", in status and progress records */
  fx_loop *supervisor;      /* the main loop: where threads report their exit */
} fx_services;

#endif
