/* The resource types fhirx knows, sets of them, and the scopes a tenant needs
 * for what it extracts. (The query profile that says how each type is
 * fetched builds on this list.) */
#ifndef FX_RESOURCES_H
#define FX_RESOURCES_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/url.h"

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

/* ---- Resource ids: the one rule ---------------------------------------------
 *
 * Every logical id fhirx puts into a result key ("{tenant}/{Type}/{id}"), a
 * reference key ("Type/id") or a URL it builds ("{base}/{Type}/{id}") obeys
 * one rule, on every path: patient-job searches and reads, referenced
 * entities, bulk export lines:
 *
 *   1..FX_FHIR_ID_MAX (256) bytes of [A-Za-z0-9._~-] (RFC 3986's unreserved
 *   characters), and not "." or ".." alone.
 *
 * Real servers' ids pass it: Cerner's CareTeam ids contain '_'
 * ("CARE_TEAM-119078440-34768489-17490349-4048128-0-22554767",
 * "LIFETIME_PROVIDER-4169494-0-3038500-0-0-0", Oracle's care-team.md) and so do
 * its Provenance ids ("INT.cteam-LIFETIME_PROVIDER-..."); FHIR's own
 * [A-Za-z0-9.-]{1,64} is a subset; UUIDs and Epic's ids pass. Cerner builds
 * such ids from several Millennium ids, so they can outgrow FHIR's 64
 * characters: the bound is 256. And the key stays unambiguous and safe: no
 * '/' (a key splits at its first two '/' into tenant, type and id), no '%' or
 * reserved character (the id goes into a URL path unescaped and means the
 * same to every URL parser), no space or control character (logs, Kafka key
 * consumers), no "." or ".." (a URL path resolves those to another
 * resource), and a bounded length. Keys are built from lengths, never cut.
 *
 * A resource whose id breaks the rule is never published, and a reference
 * whose id breaks it is never fetched: each becomes an invalid_response
 * failure naming the type and the reason, never the id itself (an id that
 * breaks the rule is not the opaque token a server should send and may hold
 * anything, a name or an MRN; the failure's url and patient say where it came
 * from). Job fields (patients, group) keep their stricter schema pattern. */
#define FX_FHIR_ID_MAX 256
/* A resourceType: 1..64 ASCII letters. */
#define FX_TYPE_NAME_MAX 64
/* Room for any "Type/id" key under the rule, with its NUL. */
#define FX_REF_KEY_SIZE (FX_TYPE_NAME_MAX + 1 + FX_FHIR_ID_MAX + 1)

/* 1 if s[0..n) obeys the id rule above. */
int fx_fhir_id_ok(const char *s, size_t n);

/* NULL if s[0..n) obeys the id rule, else why (written into why, at most
 * size bytes) without quoting the id: "is empty", "is 300 bytes long (at most
 * 256)", "contains '/' at byte 8 of 40", "contains byte 0x0a at byte 3 of 9",
 * "is only dots". */
const char *fx_fhir_id_problem(const char *s, size_t n, char *why, size_t size);

/* NULL if a resource with this resourceType and id can be keyed, else why, as
 * a phrase to follow "a resource ..." or "a <Type> ...": "has no id", "has no
 * resourceType", "has a resourceType that is not a FHIR type name (1..64
 * letters)", "has an id that breaks fhirx's id rule: contains '/' at ...".
 * type and id may be NULL (absent). */
const char *fx_resource_key_problem(const char *type, const char *id, char *why, size_t size);

/* "{tenant}/{type}/{id}", built from their lengths: a new string (caller
 * frees), NULL when out of memory. */
char *fx_result_key(const char *tenant, const char *type, const char *id);

/* 1 if name looks like a FHIR resource type: [A-Z][A-Za-z]{1,63}, as
 * schemas/common.schema.json's resourceType (any type, not only Cerner's). */
int fx_resource_type_name_ok(const char *name);

/* Where tenant t's token may go (common/url.h): its fhir_base, its
 * token_url_prefixes, and, with own_export, its export URLs on the base's
 * origin. The result points into t: use it while t is alive. */
fx_token_scope fx_tenant_token_scope(const fx_tenant_conf *t, int own_export);

typedef enum { FX_REF_NONE = 0, FX_REF_LOCAL, FX_REF_FOREIGN, FX_REF_INVALID } fx_ref_kind;

/* Reads a reference value: "Type/id[/_history/n]" relative to the tenant's
 * base, or an absolute URL. FX_REF_LOCAL: under base, a known type and an id
 * that obeys the rule; *key = "Type/id" (size must be at least
 * FX_REF_KEY_SIZE: a key that does not fit is FX_REF_NONE, never cut),
 * *type_index its index in fx_type_names. FX_REF_INVALID: under base and a
 * known type (*type_index set) but an id that breaks the rule (key not
 * filled): report it, never fetch it. FX_REF_FOREIGN: an absolute URL outside
 * base (never fetched with the tenant's token). FX_REF_NONE: contained
 * ("#x"), empty, or not of that shape. */
fx_ref_kind fx_ref_parse(const char *ref, const char *base, char *key, size_t size,
                         int *type_index);

#endif
