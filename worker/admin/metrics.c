#include "worker/admin/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double fx_lat_bounds[FX_LAT_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                              0.5,   1,    2.5,   5,    10,  30};

void fx_metrics_init(fx_metrics *m) {
  memset(m, 0, sizeof *m);
  pthread_mutex_init(&m->tm_mu, NULL);
}

void fx_metrics_destroy(fx_metrics *m) {
  for (int i = 0; i < atomic_load(&m->n_tm); i++) free(m->tm[i]);
  pthread_mutex_destroy(&m->tm_mu);
}

fx_tenant_metrics *fx_metrics_tenant(fx_metrics *m, const char *tenant) {
  int n = atomic_load(&m->n_tm);
  for (int i = 0; i < n; i++)
    if (strcmp(m->tm[i]->id, tenant) == 0) return m->tm[i];
  pthread_mutex_lock(&m->tm_mu);
  fx_tenant_metrics *found = NULL;
  n = atomic_load(&m->n_tm);
  for (int i = 0; i < n && !found; i++)
    if (strcmp(m->tm[i]->id, tenant) == 0) found = m->tm[i];
  if (!found && n < FX_MAX_TENANT_METRICS && (found = calloc(1, sizeof *found))) {
    snprintf(found->id, sizeof found->id, "%s", tenant);
    m->tm[n] = found;
    atomic_store(&m->n_tm, n + 1); /* published after the slot is filled */
  }
  pthread_mutex_unlock(&m->tm_mu);
  return found;
}

void fx_metrics_request(fx_tenant_metrics *tm, const fx_http_response *res) {
  if (!tm) return;
  int cls = res->result ? 4 : (res->status >= 200 && res->status < 600 ? (int)res->status / 100 - 2 : 4);
  if (cls < 0 || cls > 4) cls = 4;
  atomic_fetch_add(&tm->http[cls], 1);
  int k = 0;
  while (k < FX_LAT_BUCKETS && res->seconds > fx_lat_bounds[k]) k++;
  atomic_fetch_add(&tm->lat[k], 1);
  atomic_fetch_add(&tm->lat_sum_us, (unsigned long long)(res->seconds * 1e6));
  atomic_fetch_add(&tm->lat_count, 1);
}

long fx_metrics_retry_after(fx_metrics *m, const fx_http_response *res, int flags) {
  fx_retry_after_use use;
  long ms = fx_http_retry_after_ms(res, flags, &use);
  if (use == FX_RA_IGNORED) atomic_fetch_add(&m->retry_after_ignored, 1);
  else if (use == FX_RA_CAPPED) atomic_fetch_add(&m->retry_after_capped, 1);
  return ms;
}

void fx_metrics_job_finished(fx_metrics *m, int outcome) {
  atomic_fetch_add(outcome == 0   ? &m->jobs_completed
                   : outcome == 1 ? &m->jobs_partial
                                  : &m->jobs_failed,
                   1);
}
