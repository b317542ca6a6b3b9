#include "worker/model/tenants.h"

#include <stdlib.h>

int fx_tenant_set_new(fx_config *cfg, int take_cfg, uint64_t generation, fx_tenant_set **out,
                      fx_err *err) {
  *out = NULL;
  fx_tenant_set *ts = calloc(1, sizeof *ts);
  if (!ts) return fx_err_set(err, FX_ENOMEM, "out of memory");
  int rc = fx_profile_set_load(cfg, &ts->profiles, err);
  if (rc) {
    free(ts);
    return rc;
  }
  atomic_init(&ts->refs, 1);
  ts->generation = generation;
  ts->cfg = cfg;
  ts->owns_cfg = take_cfg;
  *out = ts;
  return 0;
}

fx_tenant_set *fx_tenant_set_retain(fx_tenant_set *ts) {
  if (ts) atomic_fetch_add(&ts->refs, 1);
  return ts;
}

void fx_tenant_set_release(fx_tenant_set *ts) {
  if (!ts || atomic_fetch_sub(&ts->refs, 1) != 1) return;
  fx_profile_set_free(&ts->profiles);
  if (ts->owns_cfg) fx_config_free(ts->cfg);
  free(ts);
}

const fx_tenant_conf *fx_tenant_set_find(const fx_tenant_set *ts, const char *tenant) {
  return fx_config_tenant(ts->cfg, tenant);
}

void fx_tenant_slot_init(fx_tenant_slot *slot, fx_tenant_set *first) {
  pthread_mutex_init(&slot->mu, NULL);
  slot->current = first;
}

fx_tenant_set *fx_tenant_slot_get(fx_tenant_slot *slot) {
  pthread_mutex_lock(&slot->mu);
  fx_tenant_set *ts = fx_tenant_set_retain(slot->current);
  pthread_mutex_unlock(&slot->mu);
  return ts;
}

fx_tenant_set *fx_tenant_slot_swap(fx_tenant_slot *slot, fx_tenant_set *next) {
  pthread_mutex_lock(&slot->mu);
  fx_tenant_set *prev = slot->current;
  slot->current = next;
  pthread_mutex_unlock(&slot->mu);
  return prev;
}

void fx_tenant_slot_destroy(fx_tenant_slot *slot) {
  fx_tenant_set_release(slot->current);
  slot->current = NULL;
  pthread_mutex_destroy(&slot->mu);
}
