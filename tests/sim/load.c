/* The load a client puts on a tenant, seen from the server (state.h
 * sim_load): FHIR requests in flight, their peak, and arrival times. Tests
 * check fhirx's per-tenant governor with it end to end: the peak against
 * tenants[].max_concurrency, the arrival times against the token bucket of
 * rate_per_s and burst (docs/simulator.md "Load").
 *
 * A request is in flight from the moment its headers arrived until its
 * answer is queued (delays and suspended requests included), or until the
 * connection ends without one. Ending at "queued" rather than "sent" means
 * the simulator can count fewer requests in flight than the client has
 * open, never more: the client cannot have an answer that was not queued. */
#include "tests/sim/state.h"

#include <stdlib.h>

void sim_load_arrive(sim_state *st, sim_tenant *t, int64_t now_us) {
  if (!t) return;
  pthread_mutex_lock(&st->lock);
  sim_load *l = &t->load;
  if (++l->in_flight > l->peak) l->peak = l->in_flight;
  if (l->n == l->cap && l->cap < SIM_LOAD_MAX) {
    size_t cap = l->cap ? l->cap * 2 : 1024;
    if (cap > SIM_LOAD_MAX) cap = SIM_LOAD_MAX;
    int64_t *grown = realloc(l->arrivals_us, cap * sizeof *grown);
    if (grown) {
      l->arrivals_us = grown;
      l->cap = cap;
    }
  }
  if (l->n < l->cap)
    l->arrivals_us[l->n++] = now_us;
  else
    l->dropped++;
  pthread_mutex_unlock(&st->lock);
}

void sim_load_leave(sim_state *st, sim_tenant *t) {
  if (!t) return;
  pthread_mutex_lock(&st->lock);
  if (t->load.in_flight > 0) t->load.in_flight--;
  pthread_mutex_unlock(&st->lock);
}

json_t *sim_load_json(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  const sim_load *l = &t->load;
  json_t *arrivals = json_array();
  for (size_t i = 0; arrivals && i < l->n; i++)
    if (json_array_append_new(arrivals, json_integer((json_int_t)l->arrivals_us[i]))) {
      json_decref(arrivals);
      arrivals = NULL;
    }
  json_t *out = arrivals ? json_pack("{s:I, s:I, s:I, s:I, s:o}", "in_flight",
                                     (json_int_t)l->in_flight, "peak_in_flight",
                                     (json_int_t)l->peak, "requests",
                                     (json_int_t)l->n + l->dropped, "dropped",
                                     (json_int_t)l->dropped, "arrivals_us", arrivals)
                         : NULL;
  pthread_mutex_unlock(&st->lock);
  return out;
}

void sim_load_reset_locked(sim_tenant *t) {
  t->load.n = 0;
  t->load.dropped = 0;
  t->load.peak = t->load.in_flight;
}

void sim_load_free(sim_tenant *t) {
  free(t->load.arrivals_us);
  t->load = (sim_load){0};
}
