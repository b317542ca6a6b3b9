/* Deterministic synthetic FHIR data for one tenant.
 *
 * Two kinds of resource types:
 *
 * - Stored types (Patient, Practitioner, Organization, Location) are built
 *   once at start-up, serialized once, and searched through precomputed
 *   search keys. A stored resource's handle is its index in the store.
 *
 * - Per-patient types (the 16 clinical types plus RelatedPerson, see
 *   sim_rtype_per_patient) are never stored. Each resource is a pure
 *   function of (seed, tenant, type, patient ordinal, index) and is written
 *   on demand, so a 2,000-patient tenant with ~80 resources per patient
 *   costs no memory beyond its patients. A per-patient resource's handle is
 *   ordinal * SIM_PP_STRIDE + index (data_clinical.c).
 *
 * Every resource is drawn from its own splitmix64 stream keyed by (seed,
 * tenant, type, handle), so the same inputs always give byte-identical
 * resources and adding patients never changes existing ones.
 *
 * Threading: everything is immutable after sim_store_build except the
 * "touched" overrides of meta.lastUpdated (sim_store_touch), which have their
 * own lock; every function here may be called from any thread. */
#ifndef SIM_DATA_H
#define SIM_DATA_H

#include "tests/sim/util.h"

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
/* True for the types generated per patient on demand (not stored). */
bool sim_rtype_per_patient(sim_rtype t);

/* Most resources of one per-patient type a single patient can have. */
#define SIM_PP_MAX 9999
/* handle = ordinal * SIM_PP_STRIDE + index, index < SIM_PP_MAX */
#define SIM_PP_STRIDE 10000u

/* The data knobs of one tenant (docs/simulator.md, "Data"). */
typedef struct sim_data_knobs {
  unsigned per_patient[SIM_RT_COUNT]; /* resources per patient (scale applied); 0 elsewhere */
  bool per_patient_vary;              /* each patient gets 0..2x the count instead of exactly it */
  unsigned practitioners, organizations, locations;
  bool foreign_references; /* a few references to another server */
  unsigned binary_min_bytes, binary_max_bytes;
  unsigned binary_large_bytes; /* size of the occasional large Binary */
  unsigned binary_large_every; /* about 1 in N Binaries is large; 0 = none */
  bool binary_signed_urls;     /* attachment URLs carry ?sig=; a Binary read without it is 404 */
  bool paging_repeats;         /* pages 3, 6, 9, ... start with the previous page's last entry */
  bool paging_short_pages;     /* some pages after the first are shorter than _count */
  bool paging_outcomes;        /* pages 2, 6, 10, ... carry an OperationOutcome entry */
} sim_data_knobs;

/* Fills k with the documented defaults (~84 resources per patient). */
void sim_data_knobs_default(sim_data_knobs *k);

typedef struct sim_data_params {
  uint64_t seed;
  const char *tenant_id;
  bool sandbox;
  long patients;
  sim_data_knobs knobs;
} sim_data_params;

/* One search key of a stored resource, e.g. {"family", "SMART"}: values
 * extracted once at start-up so searches never walk JSON. Which keys exist
 * and how they compare is decided by the FHIR layer. */
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

typedef struct sim_store sim_store;
/* Attaches search keys and indexes to a freshly built store; returns 0 or -1. */
typedef int (*sim_store_indexer)(sim_store *s);

/* Builds all stored resources, then runs indexer (may be NULL). p is copied.
 * Returns a new store (free with sim_store_free) or NULL with a message in err. */
sim_store *sim_store_build(const sim_data_params *p, sim_store_indexer indexer, char *err,
                           size_t errlen);
void sim_store_free(sim_store *s);

/* Borrowed; the store's own copy (tenant_id included). */
const sim_data_params *sim_store_params(const sim_store *s);

/* ---- stored resources ---- */

size_t sim_store_count(const sim_store *s, sim_rtype t);
/* Borrowed; i < sim_store_count(). Order is stable: insertion order. */
const sim_resource *sim_store_at(const sim_store *s, sim_rtype t, size_t i);
/* Borrowed, or NULL when the type has no stored resource with that id. */
const sim_resource *sim_store_find(const sim_store *s, sim_rtype t, const char *id);

/* ---- any resource, by handle ---- */

/* Finds a resource of any type except Binary by id; false if there is none. */
bool sim_store_resolve(const sim_store *s, sim_rtype t, const char *id, uint64_t *handle);
/* The id of a resource (handle from sim_store_resolve or a search). */
void sim_store_id(const sim_store *s, sim_rtype t, uint64_t handle, char out[64]);
/* Appends the resource's JSON to out. `host` is the request's host[:port],
 * which absolute Binary URLs are built from. */
void sim_store_write(const sim_store *s, sim_rtype t, uint64_t handle, const char *host,
                     sim_buf *out);

/* ---- patients ---- */

/* Every patient has an ordinal that is stable however many other patients
 * exist: synthetic patient i (id 20000001 + i) has ordinal i + 1, sandbox
 * patient k has SIM_SANDBOX_ORDINAL + k. */
#define SIM_SANDBOX_ORDINAL 1000001u
/* Returns true and the ordinal of the patient with this id. */
bool sim_store_patient_ordinal(const sim_store *s, const char *patient_id, uint32_t *ordinal);
/* True if id is one of Cerner's sandbox patients (present when the tenant
 * has `sandbox: true`); usable before any store exists (config checks). */
bool sim_sandbox_patient_id(const char *id);
/* Ordinal of the i-th stored Patient. */
uint32_t sim_store_patient_ordinal_at(const sim_store *s, size_t i);
/* The Patient with this ordinal (borrowed), or NULL. */
const sim_resource *sim_store_patient(const sim_store *s, uint32_t ordinal);

/* ---- per-patient resources (data_clinical.c) ---- */

/* How many resources of per-patient type t the patient has. */
size_t sim_pp_count(const sim_store *s, sim_rtype t, uint32_t ordinal);
/* meta.lastUpdated in epoch milliseconds, touches included. */
int64_t sim_pp_last_updated_ms(const sim_store *s, sim_rtype t, uint64_t handle);

/* Sets meta.lastUpdated of a per-patient resource to now_ms and bumps its
 * meta.versionId. Returns 0 or -1 on OOM. */
int sim_store_touch(const sim_store *s, sim_rtype t, uint64_t handle, int64_t now_ms);
/* Forgets every touch. */
void sim_store_untouch_all(const sim_store *s);

/* ---- Binary (data_binary.c): the documents behind DocumentReference and
 * DiagnosticReport attachment URLs, in Cerner's forms ---- */

typedef enum {
  SIM_BIN_PDF = 0, /* XR-<id>, application/pdf */
  SIM_BIN_XML,     /* R-<id>, application/xml (DiagnosticReport) */
  SIM_BIN_HTML,    /* TR-<id>, text/html (about half of the DiagnosticReports) */
  SIM_BIN_FORMS
} sim_bin_form;

/* Parses a Binary id; false if no such Binary exists. */
bool sim_binary_resolve(const sim_store *s, const char *id, uint64_t *handle);
/* Size in bytes of the document. */
size_t sim_binary_size(const sim_store *s, uint64_t handle);
/* Fills out[0..size) with the document's bytes (PDF-, XML- or HTML-like). */
void sim_binary_fill(const sim_store *s, uint64_t handle, uint8_t *out, size_t size);
/* The document's contentType ("application/pdf", ...). Static. */
const char *sim_binary_content_type(uint64_t handle);
/* The forms a DocumentReference (1) or DiagnosticReport (2 or 3) has, in
 * attachment order; returns how many. */
size_t sim_binary_forms(sim_rtype source, uint64_t source_handle, sim_bin_form out[SIM_BIN_FORMS]);
/* The Binary id of one form of a DocumentReference or DiagnosticReport. */
void sim_binary_id_for(sim_rtype source, uint64_t source_handle, sim_bin_form form,
                       char out[64]);
/* The sig= of the Binary's attachment URL (binary_signed_urls): 16 hex
 * digits derived from the seed, the tenant and the handle. */
void sim_binary_sig(const sim_store *s, uint64_t handle, char out[17]);
/* The handle of that Binary (sizes and bytes derive from it). */
uint64_t sim_binary_handle_for(sim_rtype source, uint64_t source_handle, sim_bin_form form);

/* ---- search keys and indexes of stored types (set up once, before serving) ---- */

sim_resource *sim_store_at_mut(sim_store *s, sim_rtype t, size_t i);
/* Adds a search key to r; name must be a static string. Returns 0 or -1. */
int sim_resource_add_key(sim_resource *r, const char *name, const char *value);
/* Builds a value -> resources index over key `name` for type t (one indexed
 * key per type). Returns 0 or -1 on OOM. */
int sim_store_build_index(sim_store *s, sim_rtype t, const char *name);
/* If type t is indexed on `name`: sets *idx and *n to the (borrowed, ascending)
 * indices of resources whose key equals value and returns true; returns
 * false when there is no such index. */
bool sim_store_lookup(const sim_store *s, sim_rtype t, const char *name, const char *value,
                      const size_t **idx, size_t *n);

/* ---- for generator modules (data_*.c) ---- */

typedef struct sim_rng {
  uint64_t state;
} sim_rng;

/* Seeds an independent stream for one resource. */
void sim_rng_init(sim_rng *r, const sim_data_params *p, sim_rtype t, uint64_t index);
/* Streams that are not one resource (patient care teams, Binary sizes, ...):
 * `domain` is one of SIM_DOMAIN_*, distinct from every sim_rtype. */
enum {
  SIM_DOMAIN_PATIENT_TEAM = 64, /* a patient's usual practitioners */
  SIM_DOMAIN_PP_COUNT,          /* per_patient_vary counts */
  SIM_DOMAIN_BINARY,            /* Binary sizes and bytes */
  SIM_DOMAIN_PAGING,            /* page-context keystream */
  SIM_DOMAIN_FAULT,             /* fault ratio draws and random delays (fault.c) */
};
void sim_rng_init_domain(sim_rng *r, const sim_data_params *p, unsigned domain, uint64_t index);
uint64_t sim_rng_next(sim_rng *r);
/* Uniform in [0, n); n > 0. */
uint32_t sim_rng_below(sim_rng *r, uint32_t n);
#define SIM_RNG_PICK(r, list) \
  ((list)[sim_rng_below((r), (uint32_t)(sizeof(list) / sizeof *(list)))])

/* Adds a stored resource; takes ownership of doc (also on failure). doc must
 * have a string "id". Returns 0, or -1 on OOM or duplicate id. */
int sim_store_add(sim_store *s, sim_rtype t, json_t *doc);

/* Formats "YYYY-MM-DDThh:mm:ss.000Z" for meta.lastUpdated. */
void sim_fhir_instant(int64_t epoch, char out[32]);
/* Same with milliseconds: "YYYY-MM-DDThh:mm:ss.mmmZ". */
void sim_fhir_instant_ms(int64_t epoch_ms, char out[32]);

/* 2024-01-01T00:00:00Z: synthetic lastUpdated values fall in the year after it. */
#define SIM_DATA_EPOCH 1704067200LL

/* Pool ids: Practitioner/4000001.., Organization/5000001.., Location/6000001.. */
#define SIM_PRACTITIONER_BASE 4000001L
#define SIM_ORGANIZATION_BASE 5000001L
#define SIM_LOCATION_BASE 6000001L

/* Generators of stored types: add every resource of their type. Return 0 or -1. */
int sim_gen_patients(sim_store *s, const sim_data_params *p);
int sim_gen_pools(sim_store *s, const sim_data_params *p);

/* A patient's usual practitioners (indices into the Practitioner pool), the
 * first being Patient.generalPractitioner. */
#define SIM_TEAM_SIZE 4
void sim_patient_team(const sim_data_params *p, uint32_t ordinal, unsigned team[SIM_TEAM_SIZE]);

#endif
