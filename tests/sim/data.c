/* The store of one tenant's data: stored resources with their ids and
 * search indexes, patient ordinals, the random streams every generator draws
 * from, and dispatch between stored and per-patient (on-demand) types. */
#include "tests/sim/data_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const rtype_names[SIM_RT_COUNT] = {
    [SIM_RT_ALLERGY_INTOLERANCE] = "AllergyIntolerance",
    [SIM_RT_BINARY] = "Binary",
    [SIM_RT_CARE_PLAN] = "CarePlan",
    [SIM_RT_CARE_TEAM] = "CareTeam",
    [SIM_RT_CONDITION] = "Condition",
    [SIM_RT_COVERAGE] = "Coverage",
    [SIM_RT_DEVICE] = "Device",
    [SIM_RT_DIAGNOSTIC_REPORT] = "DiagnosticReport",
    [SIM_RT_DOCUMENT_REFERENCE] = "DocumentReference",
    [SIM_RT_ENCOUNTER] = "Encounter",
    [SIM_RT_GOAL] = "Goal",
    [SIM_RT_IMMUNIZATION] = "Immunization",
    [SIM_RT_LOCATION] = "Location",
    [SIM_RT_MEDICATION_REQUEST] = "MedicationRequest",
    [SIM_RT_OBSERVATION] = "Observation",
    [SIM_RT_ORGANIZATION] = "Organization",
    [SIM_RT_PATIENT] = "Patient",
    [SIM_RT_PRACTITIONER] = "Practitioner",
    [SIM_RT_PROCEDURE] = "Procedure",
    [SIM_RT_RELATED_PERSON] = "RelatedPerson",
    [SIM_RT_SERVICE_REQUEST] = "ServiceRequest",
};

/* Generators run in this order; a type that references another (Observation
 * -> Patient) must come after it. New types add one line here. */
static int (*const generators[])(sim_store *, const sim_data_params *) = {
    sim_gen_pools,
    sim_gen_patients,
};

static void idx_list_free(void *p) {
  idx_list *l = p;
  free(l->v);
  free(l);
}

const char *sim_rtype_name(sim_rtype t) {
  return (unsigned)t < SIM_RT_COUNT ? rtype_names[t] : "?";
}

int sim_rtype_from_name(const char *name) {
  for (int i = 0; i < SIM_RT_COUNT; i++)
    if (strcmp(rtype_names[i], name) == 0) return i;
  return -1;
}

bool sim_rtype_per_patient(sim_rtype t) {
  switch (t) {
  case SIM_RT_BINARY:
  case SIM_RT_LOCATION:
  case SIM_RT_ORGANIZATION:
  case SIM_RT_PATIENT:
  case SIM_RT_PRACTITIONER: return false;
  default: return (unsigned)t < SIM_RT_COUNT;
  }
}

void sim_data_knobs_default(sim_data_knobs *k) {
  /* About 84 resources per patient, Observation-heavy like a real chart. */
  static const unsigned per_patient[SIM_RT_COUNT] = {
      [SIM_RT_ALLERGY_INTOLERANCE] = 3, [SIM_RT_CARE_PLAN] = 2,
      [SIM_RT_CARE_TEAM] = 1,           [SIM_RT_CONDITION] = 6,
      [SIM_RT_COVERAGE] = 1,            [SIM_RT_DEVICE] = 1,
      [SIM_RT_DIAGNOSTIC_REPORT] = 5,   [SIM_RT_DOCUMENT_REFERENCE] = 5,
      [SIM_RT_ENCOUNTER] = 8,           [SIM_RT_GOAL] = 2,
      [SIM_RT_IMMUNIZATION] = 4,        [SIM_RT_MEDICATION_REQUEST] = 6,
      [SIM_RT_OBSERVATION] = 30,        [SIM_RT_PROCEDURE] = 4,
      [SIM_RT_RELATED_PERSON] = 2,      [SIM_RT_SERVICE_REQUEST] = 4,
  };
  *k = (sim_data_knobs){.practitioners = 50,
                        .organizations = 10,
                        .locations = 20,
                        .binary_min_bytes = 2048,
                        .binary_max_bytes = 32768,
                        .binary_large_bytes = 5000000,
                        .binary_large_every = 0,
                        .paging_repeats = true,
                        .paging_short_pages = true,
                        .paging_outcomes = true};
  memcpy(k->per_patient, per_patient, sizeof per_patient);
}

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Streams are keyed by (seed, tenant, domain, index); a domain is a
 * sim_rtype or a SIM_DOMAIN_* value (both below 256). */
void sim_rng_init_domain(sim_rng *r, const sim_data_params *p, unsigned domain, uint64_t index) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a of the tenant id */
  for (const char *c = p->tenant_id; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ULL;
  uint64_t x = p->seed;
  uint64_t mixed = splitmix64(&x) ^ h;
  x = mixed ^ ((uint64_t)domain << 56) ^ index;
  r->state = splitmix64(&x); /* one extra round decorrelates neighbouring indices */
}

void sim_rng_init(sim_rng *r, const sim_data_params *p, sim_rtype t, uint64_t index) {
  sim_rng_init_domain(r, p, (unsigned)t, index);
}

uint64_t sim_rng_next(sim_rng *r) { return splitmix64(&r->state); }

uint32_t sim_rng_below(sim_rng *r, uint32_t n) { return (uint32_t)(sim_rng_next(r) % n); }

void sim_fhir_instant(int64_t epoch, char out[32]) {
  time_t t = (time_t)epoch;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 32, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
}

void sim_fhir_instant_ms(int64_t epoch_ms, char out[32]) {
  int64_t sec = epoch_ms / 1000, ms = epoch_ms % 1000;
  if (ms < 0) sec--, ms += 1000;
  time_t t = (time_t)sec;
  struct tm tm;
  char head[24];
  gmtime_r(&t, &tm);
  strftime(head, sizeof head, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, 32, "%s.%03dZ", head, (int)ms);
}

int sim_store_add(sim_store *s, sim_rtype t, json_t *doc) {
  type_list *l = &s->types[t];
  const char *id = json_string_value(json_object_get(doc, "id"));
  if (!id || strlen(id) >= sizeof l->items[0].id || sim_map_get(&l->by_id, id)) goto fail;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    sim_resource *items = realloc(l->items, cap * sizeof *items);
    if (!items) goto fail;
    l->items = items;
    l->cap = cap;
  }
  sim_resource *r = &l->items[l->n];
  *r = (sim_resource){.type = t, .doc = doc};
  snprintf(r->id, sizeof r->id, "%s", id);
  r->json = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!r->json) goto fail;
  r->json_len = strlen(r->json);
  if (sim_map_put(&l->by_id, r->id, (void *)(uintptr_t)(l->n + 1)) != 0) {
    free(r->json);
    goto fail;
  }
  l->n++;
  return 0;
fail:
  json_decref(doc);
  return -1;
}

sim_store *sim_store_build(const sim_data_params *p, sim_store_indexer indexer, char *err,
                           size_t errlen) {
  sim_store *s = calloc(1, sizeof *s);
  sim_touches *touches = calloc(1, sizeof *touches);
  char *tenant_id = strdup(p->tenant_id);
  if (!s || !touches || !tenant_id) {
    free(s);
    free(touches);
    free(tenant_id);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    sim_map_init(&s->types[t].by_id, NULL);
    sim_map_init(&s->types[t].index, idx_list_free);
  }
  pthread_mutex_init(&touches->lock, NULL);
  sim_map_init(&touches->map, free);
  s->touches = touches;
  s->tenant_id = tenant_id;
  s->p = *p;
  s->p.tenant_id = tenant_id;
  s->nsandbox = p->sandbox ? SIM_SANDBOX_PATIENTS : 0;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < sizeof generators / sizeof *generators; i++)
    rc = generators[i](s, &s->p);
  if (rc == 0 && indexer) rc = indexer(s);
  if (rc != 0) {
    snprintf(err, errlen, "tenant %s: generating synthetic data failed (out of memory?)",
             p->tenant_id);
    sim_store_free(s);
    return NULL;
  }
  return s;
}

void sim_store_free(sim_store *s) {
  if (!s) return;
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    type_list *l = &s->types[t];
    for (size_t i = 0; i < l->n; i++) {
      sim_resource *r = &l->items[i];
      free(r->json);
      json_decref(r->doc);
      for (size_t k = 0; k < r->nkeys; k++) free(r->keys[k].value);
      free(r->keys);
    }
    free(l->items);
    sim_map_free(&l->by_id);
    sim_map_free(&l->index);
  }
  sim_map_free(&s->touches->map);
  pthread_mutex_destroy(&s->touches->lock);
  free(s->touches);
  free(s->tenant_id);
  free(s);
}

const sim_data_params *sim_store_params(const sim_store *s) { return &s->p; }

size_t sim_store_count(const sim_store *s, sim_rtype t) { return s->types[t].n; }

const sim_resource *sim_store_at(const sim_store *s, sim_rtype t, size_t i) {
  return i < s->types[t].n ? &s->types[t].items[i] : NULL;
}

const sim_resource *sim_store_find(const sim_store *s, sim_rtype t, const char *id) {
  uintptr_t idx = (uintptr_t)sim_map_get(&s->types[t].by_id, id);
  return idx ? &s->types[t].items[idx - 1] : NULL;
}

/* ---- patients ---- */

bool sim_store_patient_ordinal(const sim_store *s, const char *patient_id, uint32_t *ordinal) {
  uintptr_t idx = (uintptr_t)sim_map_get(&s->types[SIM_RT_PATIENT].by_id, patient_id);
  if (!idx) return false;
  *ordinal = sim_store_patient_ordinal_at(s, idx - 1);
  return true;
}

uint32_t sim_store_patient_ordinal_at(const sim_store *s, size_t i) {
  return i < s->nsandbox ? SIM_SANDBOX_ORDINAL + (uint32_t)i
                         : (uint32_t)(i - s->nsandbox + 1);
}

const sim_resource *sim_store_patient(const sim_store *s, uint32_t ordinal) {
  size_t i;
  if (ordinal >= SIM_SANDBOX_ORDINAL) {
    if (ordinal - SIM_SANDBOX_ORDINAL >= s->nsandbox) return NULL;
    i = ordinal - SIM_SANDBOX_ORDINAL;
  } else {
    if (ordinal == 0) return NULL;
    i = s->nsandbox + ordinal - 1;
  }
  return sim_store_at(s, SIM_RT_PATIENT, i);
}

/* ---- any resource ---- */

bool sim_store_resolve(const sim_store *s, sim_rtype t, const char *id, uint64_t *handle) {
  if (t == SIM_RT_BINARY) return false;
  if (sim_rtype_per_patient(t)) return sim_pp_resolve(s, t, id, handle);
  uintptr_t idx = (uintptr_t)sim_map_get(&s->types[t].by_id, id);
  if (!idx) return false;
  *handle = idx - 1;
  return true;
}

void sim_store_id(const sim_store *s, sim_rtype t, uint64_t handle, char out[64]) {
  if (sim_rtype_per_patient(t)) {
    sim_pp_id(s, t, handle, out);
    return;
  }
  const sim_resource *r = sim_store_at(s, t, (size_t)handle);
  snprintf(out, 64, "%s", r ? r->id : "");
}

void sim_store_write(const sim_store *s, sim_rtype t, uint64_t handle, const char *host,
                     sim_buf *out) {
  if (sim_rtype_per_patient(t)) {
    sim_pp_write(s, t, handle, host, out);
    return;
  }
  const sim_resource *r = sim_store_at(s, t, (size_t)handle);
  if (r) sim_buf_append(out, r->json, r->json_len);
}

sim_resource *sim_store_at_mut(sim_store *s, sim_rtype t, size_t i) {
  return i < s->types[t].n ? &s->types[t].items[i] : NULL;
}

int sim_resource_add_key(sim_resource *r, const char *name, const char *value) {
  char *v = strdup(value);
  sim_key *keys = v ? realloc(r->keys, (r->nkeys + 1) * sizeof *keys) : NULL;
  if (!keys) {
    free(v);
    return -1;
  }
  r->keys = keys;
  keys[r->nkeys++] = (sim_key){.name = name, .value = v};
  return 0;
}

static int index_add(sim_map *index, const char *value, size_t i) {
  idx_list *l = sim_map_get(index, value);
  if (!l) {
    if (!(l = calloc(1, sizeof *l))) return -1;
    if (sim_map_put(index, value, l) != 0) {
      free(l);
      return -1;
    }
  }
  if (l->n && l->v[l->n - 1] == i) return 0; /* same key value twice in one resource */
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    size_t *v = realloc(l->v, cap * sizeof *v);
    if (!v) return -1;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = i;
  return 0;
}

int sim_store_build_index(sim_store *s, sim_rtype t, const char *name) {
  type_list *tl = &s->types[t];
  tl->indexed_key = name;
  for (size_t i = 0; i < tl->n; i++) {
    const sim_resource *r = &tl->items[i];
    for (size_t k = 0; k < r->nkeys; k++)
      if (strcmp(r->keys[k].name, name) == 0 && index_add(&tl->index, r->keys[k].value, i) != 0)
        return -1;
  }
  return 0;
}

bool sim_store_lookup(const sim_store *s, sim_rtype t, const char *name, const char *value,
                      const size_t **idx, size_t *n) {
  const type_list *tl = &s->types[t];
  if (!tl->indexed_key || strcmp(tl->indexed_key, name) != 0) return false;
  const idx_list *l = sim_map_get(&tl->index, value);
  *idx = l ? l->v : NULL;
  *n = l ? l->n : 0;
  return true;
}
