/* Deterministic synthetic FHIR data for one tenant.
 *
 * A store is built once at start-up from (seed, tenant id, tenant config) and
 * is read-only afterwards, so request threads read it without locking. The
 * same inputs always give byte-identical resources: every resource is drawn
 * from its own splitmix64 stream keyed by (seed, tenant, type, index), so
 * adding patients or a new resource type never changes existing resources.
 *
 * Resource types are a fixed enum; each type's generator lives in its own
 * data_<type>.c and registers in the table in data.c. */
#ifndef SIM_DATA_H
#define SIM_DATA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The 21 resource types fhirx extracts (cerner-smart-facts.md section 3 plus Binary). */
typedef enum {
  SIM_RT_ALLERGY_INTOLERANCE,
  SIM_RT_BINARY,
  SIM_RT_CARE_PLAN,
  SIM_RT_CARE_TEAM,
  SIM_RT_CONDITION,
  SIM_RT_COVERAGE,
  SIM_RT_DEVICE,
  SIM_RT_DIAGNOSTIC_REPORT,
  SIM_RT_DOCUMENT_REFERENCE,
  SIM_RT_ENCOUNTER,
  SIM_RT_GOAL,
  SIM_RT_IMMUNIZATION,
  SIM_RT_LOCATION,
  SIM_RT_MEDICATION_REQUEST,
  SIM_RT_OBSERVATION,
  SIM_RT_ORGANIZATION,
  SIM_RT_PATIENT,
  SIM_RT_PRACTITIONER,
  SIM_RT_PROCEDURE,
  SIM_RT_RELATED_PERSON,
  SIM_RT_SERVICE_REQUEST,
  SIM_RT_COUNT
} sim_rtype;

const char *sim_rtype_name(sim_rtype t);
/* Returns the type for its FHIR name (case-sensitive), or -1. */
int sim_rtype_from_name(const char *name);

/* One search key of a resource, e.g. {"family", "SMART"} or {"patient",
 * "12724065"}: values extracted once at start-up so searches never walk JSON.
 * Which keys exist and how they compare is decided by the FHIR layer. */
typedef struct sim_key {
  const char *name; /* static string */
  char *value;      /* owned */
} sim_key;

typedef struct sim_resource {
  sim_rtype type;
  char id[64];
  char *json;      /* compact serialization, served byte-for-byte */
  size_t json_len;
  json_t *doc;     /* parsed form, for extracting search keys; never modified */
  sim_key *keys;   /* search keys (owned) */
  size_t nkeys;
} sim_resource;

typedef struct sim_data_params {
  uint64_t seed;
  const char *tenant_id;
  bool sandbox;
  long patients;
} sim_data_params;

typedef struct sim_store sim_store;
/* Attaches search keys and indexes to a freshly built store; returns 0 or -1. */
typedef int (*sim_store_indexer)(sim_store *s);

/* Builds all resources, then runs indexer (may be NULL). Returns a new store
 * (free with sim_store_free) or NULL with a message in err. */
sim_store *sim_store_build(const sim_data_params *p, sim_store_indexer indexer, char *err,
                           size_t errlen);
void sim_store_free(sim_store *s);

size_t sim_store_count(const sim_store *s, sim_rtype t);
/* Borrowed; i < sim_store_count(). Order is stable: insertion order. */
const sim_resource *sim_store_at(const sim_store *s, sim_rtype t, size_t i);
/* Borrowed, or NULL when the type has no resource with that id. */
const sim_resource *sim_store_find(const sim_store *s, sim_rtype t, const char *id);

/* ---- search keys and indexes (set up once, before serving) ---- */

sim_resource *sim_store_at_mut(sim_store *s, sim_rtype t, size_t i);
/* Adds a search key to r; name must be a static string. Returns 0 or -1. */
int sim_resource_add_key(sim_resource *r, const char *name, const char *value);
/* Builds a value -> resources index over key `name` for type t (one indexed
 * key per type), so e.g. Observation?patient=X does not scan every
 * Observation. Returns 0 or -1 on OOM. */
int sim_store_build_index(sim_store *s, sim_rtype t, const char *name);
/* If type t is indexed on `name`: sets *idx and *n to the (borrowed, ascending)
 * indices of resources whose key equals value and returns true; returns
 * false when there is no such index. */
bool sim_store_lookup(const sim_store *s, sim_rtype t, const char *name, const char *value,
                      const size_t **idx, size_t *n);

/* ---- for generator modules (data_<type>.c) ---- */

typedef struct sim_rng {
  uint64_t state;
} sim_rng;

/* Seeds an independent stream for one resource. */
void sim_rng_init(sim_rng *r, const sim_data_params *p, sim_rtype t, uint64_t index);
uint64_t sim_rng_next(sim_rng *r);
/* Uniform in [0, n); n > 0. */
uint32_t sim_rng_below(sim_rng *r, uint32_t n);
#define SIM_RNG_PICK(r, list) \
  ((list)[sim_rng_below((r), (uint32_t)(sizeof(list) / sizeof *(list)))])

/* Adds a resource; takes ownership of doc (also on failure). doc must have a
 * string "id". Returns 0, or -1 on OOM or duplicate id. */
int sim_store_add(sim_store *s, sim_rtype t, json_t *doc);

/* Formats "YYYY-MM-DDThh:mm:ss.000Z" for meta.lastUpdated. */
void sim_fhir_instant(int64_t epoch, char out[32]);

/* Generators: add every resource of their type for p. Return 0 or -1. */
int sim_gen_patients(sim_store *s, const sim_data_params *p);

#endif
