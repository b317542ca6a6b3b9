/* The resource types fhirx knows how to extract from Cerner, and the scopes
 * a tenant needs for them. (The query profile that says how each type is
 * searched builds on this list.) */
#ifndef FX_RESOURCES_H
#define FX_RESOURCES_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/url.h"

/* The 21 types of Cerner's System app registration guide, alphabetical. */
extern const char *const fx_cerner_types[];
extern const size_t fx_cerner_types_n;


int fx_resource_type_known(const char *type);

/* Index of type in fx_cerner_types (0..20), or -1. Sets of types are
 * uint32_t bitmasks of these indexes. */
int fx_resource_index(const char *type);
#define FX_TYPE_BIT(i) ((uint32_t)1u << (i))

/* The types in FHIR's Patient compartment: Patient and the 16 types that
 * point at a patient. A Group-level Bulk Data $export covers these; Binary,
 * Location, Organization and Practitioner are reached only through
 * references (Cerner does not export Binary at all). */
uint32_t fx_patient_compartment_types(void);

/* The scope for reading type in the tenant's SMART syntax:
 * v1 "system/Patient.read", v2 "system/Patient.rs". */
void fx_scope_for(const char *type, int smart_version, char *out, size_t size);

/* 1 if name looks like a FHIR resource type: [A-Z][A-Za-z]{1,63}, as
 * schemas/common.schema.json's resourceType (any type, not only Cerner's). */
int fx_resource_type_name_ok(const char *name);

/* 1 if s[0..n) is a FHIR logical id as fhirx accepts one: 1..64 of
 * [A-Za-z0-9.-] (never '/', so it is safe in a path and a Kafka key). */
int fx_fhir_id_ok(const char *s, size_t n);

/* Where tenant t's token may go (common/url.h): its fhir_base, its
 * token_url_prefixes, and, with own_export, its export URLs on the base's
 * origin. The result points into t: use it while t is alive. */
fx_token_scope fx_tenant_token_scope(const fx_tenant_conf *t, int own_export);

typedef enum { FX_REF_NONE = 0, FX_REF_LOCAL, FX_REF_FOREIGN } fx_ref_kind;

/* Reads a reference value: "Type/id[/_history/n]" relative to the tenant's
 * base, or an absolute URL. FX_REF_LOCAL: under base, a known type and a
 * valid id; *key = "Type/id", *type_index its index in fx_cerner_types.
 * FX_REF_FOREIGN: an absolute URL outside base (never fetched with the
 * tenant's token). FX_REF_NONE: contained ("#x"), empty, or not of that
 * shape. */
fx_ref_kind fx_ref_parse(const char *ref, const char *base, char *key, size_t size,
                         int *type_index);

struct fx_profile;

/* The types a job without "resources" fetches for tenant t under profile p:
 * its configured resources that the profile fetches per patient, or all of
 * those. */
uint32_t fx_tenant_types(const fx_tenant_conf *t, const struct fx_profile *p);

/* The tenant's scope set: tenants[].scopes if configured, else one scope per
 * type it extracts (its query set) plus the reference types the profile
 * follows, in fx_cerner_types order. Returns a new space-separated string
 * (caller frees), NULL on OOM. */
char *fx_tenant_scope(const fx_tenant_conf *t, const struct fx_profile *p);

#endif
