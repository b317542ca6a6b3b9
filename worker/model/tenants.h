/* The tenant set a worker runs with, replaceable while it runs.
 *
 * SIGHUP re-reads the configuration file: the new tenants (with their query
 * profiles) become current for jobs consumed from then on, while jobs
 * already running keep the set they started with. A set is immutable and
 * reference counted: the pool holds the current one, every job holds the
 * one it started with. Only the tenants section is reloaded; other
 * sections need a restart. */
#ifndef FX_TENANTS_H
#define FX_TENANTS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "common/config.h"
#include "worker/model/profile.h"

typedef struct fx_tenant_set {
  atomic_int refs;
  uint64_t generation;
  fx_config *cfg;          /* the whole file as loaded; only tenants are used */
  int owns_cfg;
  fx_profile_set profiles; /* owned */
} fx_tenant_set;

/* A set over an existing config (borrowed) with its profiles loaded. */
int fx_tenant_set_new(fx_config *cfg, int take_cfg, uint64_t generation, fx_tenant_set **out,
                      fx_err *err);
fx_tenant_set *fx_tenant_set_retain(fx_tenant_set *ts);
void fx_tenant_set_release(fx_tenant_set *ts);

const fx_tenant_conf *fx_tenant_set_find(const fx_tenant_set *ts, const char *tenant);

/* The holder of the current set, shared by threads. */
typedef struct fx_tenant_slot {
  pthread_mutex_t mu;
  fx_tenant_set *current;
} fx_tenant_slot;

void fx_tenant_slot_init(fx_tenant_slot *slot, fx_tenant_set *first);
/* A new reference to the current set. */
fx_tenant_set *fx_tenant_slot_get(fx_tenant_slot *slot);
/* Makes next current; returns the previous one (the caller releases it). */
fx_tenant_set *fx_tenant_slot_swap(fx_tenant_slot *slot, fx_tenant_set *next);
void fx_tenant_slot_destroy(fx_tenant_slot *slot);

#endif
