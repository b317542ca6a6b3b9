#include "tests/sim/data.h"

#include "tests/sim/map.h"

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
    sim_gen_patients,
};

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

static void idx_list_free(void *p) {
  idx_list *l = p;
  free(l->v);
  free(l);
}

struct sim_store {
  type_list types[SIM_RT_COUNT];
};

const char *sim_rtype_name(sim_rtype t) {
  return (unsigned)t < SIM_RT_COUNT ? rtype_names[t] : "?";
}

int sim_rtype_from_name(const char *name) {
  for (int i = 0; i < SIM_RT_COUNT; i++)
    if (strcmp(rtype_names[i], name) == 0) return i;
  return -1;
}

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void sim_rng_init(sim_rng *r, const sim_data_params *p, sim_rtype t, uint64_t index) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a of the tenant id */
  for (const char *c = p->tenant_id; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ULL;
  uint64_t x = p->seed;
  uint64_t mixed = splitmix64(&x) ^ h;
  x = mixed ^ ((uint64_t)t << 56) ^ index;
  r->state = splitmix64(&x); /* one extra round decorrelates neighbouring indices */
}

uint64_t sim_rng_next(sim_rng *r) { return splitmix64(&r->state); }

uint32_t sim_rng_below(sim_rng *r, uint32_t n) { return (uint32_t)(sim_rng_next(r) % n); }

void sim_fhir_instant(int64_t epoch, char out[32]) {
  time_t t = (time_t)epoch;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 32, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
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
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    sim_map_init(&s->types[t].by_id, NULL);
    sim_map_init(&s->types[t].index, idx_list_free);
  }
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < sizeof generators / sizeof *generators; i++)
    rc = generators[i](s, p);
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
  free(s);
}

size_t sim_store_count(const sim_store *s, sim_rtype t) { return s->types[t].n; }

const sim_resource *sim_store_at(const sim_store *s, sim_rtype t, size_t i) {
  return i < s->types[t].n ? &s->types[t].items[i] : NULL;
}

const sim_resource *sim_store_find(const sim_store *s, sim_rtype t, const char *id) {
  uintptr_t idx = (uintptr_t)sim_map_get(&s->types[t].by_id, id);
  return idx ? &s->types[t].items[idx - 1] : NULL;
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
