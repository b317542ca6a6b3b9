/* The worker's admin endpoint (libmicrohttpd, on its own thread):
 *   /metrics                Prometheus text format
 *   /healthz                the process is alive and every loop turns
 *   /readyz                 Kafka is reachable and the worker takes jobs
 *   /.well-known/jwks.json  the public keys, for the JWKS URL on Cerner Central
 * It only reads what is safe from any thread (atomics, the shared services'
 * thread-safe statistics, the Kafka threads' health getters); it never
 * touches a worker loop. Tenant labels are bounded to the tenants ever
 * configured. */
#ifndef FX_ADMIN_ADMIN_H
#define FX_ADMIN_ADMIN_H

#include <stdatomic.h>
#include <stddef.h>

#include "common/err.h"
#include "worker/pool/kthread.h"
#include "worker/pool/services.h"

/* What the endpoint reads; every pointer must outlive fx_admin_stop. */
typedef struct fx_admin_view {
  const fx_services *sv;
  const fx_kthread *const *threads; /* the worker threads (health, lag, assignments) */
  size_t n_threads;
  const atomic_int *draining;       /* 1 once the worker drains */
} fx_admin_view;

typedef struct fx_admin fx_admin;

/* Binds admin.listen (or FHIRX_ADMIN_LISTEN) and serves; *out is NULL when
 * the endpoint is turned off (""). Fails when the port cannot be bound. */
int fx_admin_start(const fx_admin_view *v, fx_admin **out, fx_err *err);
void fx_admin_stop(fx_admin *a);

#endif
