/* Internals shared by the data modules (data*.c); nothing outside them
 * includes this. */
#ifndef SIM_DATA_INTERNAL_H
#define SIM_DATA_INTERNAL_H

#include "tests/sim/data.h"
#include "tests/sim/map.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct idx_list {
  size_t *v;
  size_t n, cap;
} idx_list;

typedef struct type_list {
  sim_resource *items;
  size_t n, cap;
  sim_map by_id;            /* id -> index + 1 (as a pointer-sized integer), values borrowed */
  const char *indexed_key;  /* key name of `index`, or NULL */
  sim_map index;            /* key value -> idx_list* (owned) */
} type_list;

/* Overrides of meta.lastUpdated made through the control API. The only
 * mutable part of a store, so it lives behind a pointer (the store itself is
 * shared as const) with its own lock. `count` lets the common case (nothing
 * touched) skip the lock. */
typedef struct sim_touches {
  pthread_mutex_t lock;
  sim_map map; /* "<type>/<handle>" -> sim_touch* (owned) */
  atomic_size_t count;
} sim_touches;

typedef struct sim_touch {
  int64_t ms;
  unsigned bumps; /* added to the generated versionId */
} sim_touch;

struct sim_store {
  type_list types[SIM_RT_COUNT];
  sim_data_params p; /* p.tenant_id points at tenant_id */
  char *tenant_id;
  size_t nsandbox; /* sandbox patients at the start of the Patient list */
  sim_touches *touches;
};

/* Number of Cerner sandbox patients (data_patient.c). */
#define SIM_SANDBOX_PATIENTS 10

/* Looks up a touch of (t, handle); returns true and fills *out if there is one. */
bool sim_touch_get(const sim_store *s, sim_rtype t, uint64_t handle, sim_touch *out);

/* Per-patient resources (data_clinical.c). */
bool sim_pp_resolve(const sim_store *s, sim_rtype t, const char *id, uint64_t *handle);
void sim_pp_id(const sim_store *s, sim_rtype t, uint64_t handle, char out[64]);
void sim_pp_write(const sim_store *s, sim_rtype t, uint64_t handle, const char *host,
                  sim_buf *out);



/* How the entity pools are split (data_pools.c): Organizations [0, nprov)
 * are providers and [payor_first, payor_first + npayor) payors (the same
 * ones when there are fewer than 4); Locations [0, nsite) are sites, then
 * nbuilding buildings (partOf a site), then wards and rooms (partOf a
 * building), which clinical resources point at. */
typedef struct sim_pool_layout {
  unsigned nprov, payor_first, npayor;
  unsigned nsite, nbuilding, leaf_first, nleaf;
} sim_pool_layout;

void sim_pool_layout_of(const sim_data_knobs *k, sim_pool_layout *out);

/* Display text of a stored pool resource (name[0].text or name), or "". */
const char *sim_pool_display(const sim_store *s, sim_rtype t, unsigned index);

#endif
