/* The resource types fhirx knows how to extract from Cerner, and the scopes
 * a tenant needs for them. (The query profile that says how each type is
 * searched builds on this list.) */
#ifndef FX_RESOURCES_H
#define FX_RESOURCES_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

/* The 21 types of Cerner's System app registration guide, alphabetical. */
extern const char *const fx_cerner_types[];
extern const size_t fx_cerner_types_n;

/* Types only reached by following references (added to every query set). */
extern const char *const fx_reference_types[];
extern const size_t fx_reference_types_n;

int fx_resource_type_known(const char *type);

/* Index of type in fx_cerner_types (0..20), or -1. Sets of types are
 * uint32_t bitmasks of these indexes. */
int fx_resource_index(const char *type);
#define FX_TYPE_BIT(i) ((uint32_t)1u << (i))

/* Types fetched per patient (read or search by patient); the others
 * (Binary, Location, Organization, Practitioner) are reached only through
 * references. */
uint32_t fx_patient_types(void);

/* The types a job without "resources" fetches for tenant t: its configured
 * resources (those fetched per patient) or every per-patient type. */
uint32_t fx_tenant_types(const fx_tenant_conf *t);

/* How a type is fetched for one patient on Cerner (facts: search rules):
 * read Patient/{id}, or search {Type}?{param}={id}{extra}&_count={count}, and
 * whether _lastUpdated can narrow it for incremental extracts. */
typedef struct fx_type_query {
  int read;           /* 1: GET {Type}/{patient id} */
  const char *param;  /* patient search parameter */
  const char *extra;  /* fixed parameters, e.g. "&category=assess-plan", or "" */
  int count;          /* _count to send, 0 = server default */
  int last_updated;   /* _lastUpdated=ge honoured */
} fx_type_query;

const fx_type_query *fx_type_query_of(int type_index);

/* The scope for reading type in the tenant's SMART syntax:
 * v1 "system/Patient.read", v2 "system/Patient.rs". */
void fx_scope_for(const char *type, int smart_version, char *out, size_t size);

/* The tenant's scope set: tenants[].scopes if configured, else one scope per
 * type of its query set plus the reference types, in fx_cerner_types order.
 * Returns a new space-separated string (caller frees), NULL on OOM. */
char *fx_tenant_scope(const fx_tenant_conf *t);

#endif
