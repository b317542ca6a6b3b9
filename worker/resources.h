/* The resource types fhirx knows, sets of them, and the scopes a tenant needs
 * for what it extracts. (The query profile that says how each type is
 * fetched builds on this list.) */
#ifndef FX_RESOURCES_H
#define FX_RESOURCES_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

/* The resource types of FHIR R4 (4.0.1), sorted by name (strcmp): every
 * type a profile may fetch, export or follow. Bundle, OperationOutcome and
 * Parameters are left out: they wrap or describe data, they are never data a
 * job extracts. Which of them a tenant actually extracts is its profile's
 * business (worker/profiles/cerner.json: the 21 types of Cerner's System app
 * registration guide, plus Provenance for bulk exports). */
#define FX_NTYPES 143
extern const char *const fx_type_names[FX_NTYPES];

int fx_resource_type_known(const char *type);

/* Index of type in fx_type_names, or -1. */
int fx_resource_index(const char *type);

/* A set of resource types: one bit per index of fx_type_names. Passed by
 * value; FX_TYPES_NONE is the empty set. Because fx_type_names is sorted, a
 * walk in index order (fx_types_next) is alphabetical. */
typedef struct fx_types {
  uint64_t w[(FX_NTYPES + 63) / 64];
} fx_types;
#define FX_TYPES_NONE ((fx_types){{0}})

static inline int fx_types_has(fx_types s, int i) {
  return i >= 0 && i < FX_NTYPES && (s.w[i / 64] >> (i % 64) & 1u);
}
static inline void fx_types_add(fx_types *s, int i) {
  if (i >= 0 && i < FX_NTYPES) s->w[i / 64] |= (uint64_t)1 << (i % 64);
}
static inline void fx_types_del(fx_types *s, int i) {
  if (i >= 0 && i < FX_NTYPES) s->w[i / 64] &= ~((uint64_t)1 << (i % 64));
}
static inline fx_types fx_types_of(int i) {
  fx_types s = FX_TYPES_NONE;
  fx_types_add(&s, i);
  return s;
}
static inline fx_types fx_types_or(fx_types a, fx_types b) {
  for (size_t k = 0; k < sizeof a.w / sizeof a.w[0]; k++) a.w[k] |= b.w[k];
  return a;
}
static inline fx_types fx_types_and(fx_types a, fx_types b) {
  for (size_t k = 0; k < sizeof a.w / sizeof a.w[0]; k++) a.w[k] &= b.w[k];
  return a;
}
/* a without the types of b. */
static inline fx_types fx_types_minus(fx_types a, fx_types b) {
  for (size_t k = 0; k < sizeof a.w / sizeof a.w[0]; k++) a.w[k] &= ~b.w[k];
  return a;
}
static inline int fx_types_empty(fx_types s) {
  for (size_t k = 0; k < sizeof s.w / sizeof s.w[0]; k++)
    if (s.w[k]) return 0;
  return 1;
}
static inline int fx_types_eq(fx_types a, fx_types b) {
  return fx_types_empty(fx_types_minus(a, b)) && fx_types_empty(fx_types_minus(b, a));
}
static inline int fx_types_count(fx_types s) {
  int n = 0;
  for (size_t k = 0; k < sizeof s.w / sizeof s.w[0]; k++) n += __builtin_popcountll(s.w[k]);
  return n;
}
/* The first index >= from in s, or -1. */
static inline int fx_types_next(fx_types s, int from) {
  for (int i = from < 0 ? 0 : from; i < FX_NTYPES; i++)
    if (fx_types_has(s, i)) return i;
  return -1;
}

/* The names of s joined by sep in index order, into out (NUL terminated).
 * Returns the length, or -1 when out is too small (out then holds "" if size
 * > 0). */
int fx_types_join(fx_types s, const char *sep, char *out, size_t size);

/* The scope for reading type in the tenant's SMART syntax:
 * v1 "system/Patient.read", v2 "system/Patient.rs". */
void fx_scope_for(const char *type, int smart_version, char *out, size_t size);

/* 1 if s[0..n) is a FHIR logical id as fhirx accepts one: 1..64 of
 * [A-Za-z0-9.-] (never '/', so it is safe in a path and a Kafka key). */
int fx_fhir_id_ok(const char *s, size_t n);

typedef enum { FX_REF_NONE = 0, FX_REF_LOCAL, FX_REF_FOREIGN } fx_ref_kind;

/* Reads a reference value: "Type/id[/_history/n]" relative to the tenant's
 * base, or an absolute URL. FX_REF_LOCAL: under base, a known type and a
 * valid id; *key = "Type/id", *type_index its index in fx_type_names.
 * FX_REF_FOREIGN: an absolute URL outside base (never fetched with the
 * tenant's token). FX_REF_NONE: contained ("#x"), empty, or not of that
 * shape. */
fx_ref_kind fx_ref_parse(const char *ref, const char *base, char *key, size_t size,
                         int *type_index);

struct fx_profile;

/* The types a patient job without "resources" fetches for tenant t under
 * profile p: its configured resources that the profile fetches per patient,
 * or the profile's default query set. */
fx_types fx_tenant_types(const fx_tenant_conf *t, const struct fx_profile *p);

/* Every type tenant t extracts under p, by any route: its configured
 * resources (per-patient and bulk-only types alike), or the profile's default
 * query set. A bulk job without "resources" asks for these. */
fx_types fx_tenant_extract_types(const fx_tenant_conf *t, const struct fx_profile *p);

/* The tenant's scope set: tenants[].scopes if configured, else one scope per
 * type it extracts (fx_tenant_extract_types), plus the reference types the
 * profile follows when the tenant follows references
 * (tenants[].follow_references), in fx_type_names order. Returns a new
 * space-separated string (caller frees), NULL on OOM. */
char *fx_tenant_scope(const fx_tenant_conf *t, const struct fx_profile *p);

#endif
