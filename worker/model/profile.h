/* Query profiles: how each resource type is fetched from an EHR, as data.
 *
 * A profile (worker/profiles/cerner.json is the built-in default,
 * worker/profiles/generic.json a standard R4 server) says for each resource
 * type it fetches whether it is read by patient id, searched with which
 * parameters ({patient} is replaced by the id), its _count, whether
 * _lastUpdated can narrow it for incremental extracts, or whether it is only
 * reached through references; which reference types are followed, to what
 * depth; and what the server's Group $export accepts (the bulk section).
 * Tenants pick one with tenants[].profile: a built-in name or a file path. */
#ifndef FX_PROFILE_H
#define FX_PROFILE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "worker/model/resources.h"

typedef enum {
  FX_FETCH_NONE = 0, /* not fetched at all */
  FX_FETCH_READ,     /* GET {Type}/{patient} */
  FX_FETCH_SEARCH,   /* GET {Type}?{search} */
  FX_FETCH_REFERENCE /* only through references */
} fx_fetch_mode;

typedef struct fx_type_rule {
  fx_fetch_mode mode;
  char *search;    /* query string template, e.g. "patient={patient}&category=assess-plan" */
  int count;       /* _count, 0 = server default */
  int incremental; /* _lastUpdated=ge{since} is honoured */
  char *accept;    /* Accept for reads, NULL = application/fhir+json */
  /* Binary only: the attachment contentTypes (media types, lower case,
   * without parameters) fetched; NULL = every attachment. */
  char **content_types;
  size_t n_content_types;
  int optional;    /* fetched only when named (a job's or the tenant's resources), not by
                      default ("optional": true, and every type the "*" rule covers) */
} fx_type_rule;

typedef struct fx_profile {
  char *name;
  fx_type_rule types[FX_NTYPES]; /* indexed like fx_type_names */
  fx_types follow; /* reference types followed */
  int depth;       /* 0 = references not followed */
  /* The "bulk" section: what the server's Group $export takes. A bulk job's
   * types outside bulk_types are fetched per patient (when the profile
   * fetches them so) for the exported Patients. */
  fx_types bulk_types;     /* _type values the server exports; empty: no bulk jobs */
  int bulk_any;            /* bulk.types is "*": the server exports whatever it has */
  fx_types bulk_not_alone; /* exported only together with a type outside this set */
  fx_types filter_refused_types; /* _typeFilter not accepted on these */
  char **filter_refused_params;  /* search parameters a _typeFilter may not use */
  size_t n_filter_refused_params;
  int filter_one_per_type; /* at most one _typeFilter per type */
} fx_profile;

/* Parses a profile document; origin names it in errors ("profile x.json").
 * README.md ("The pipeline") describes the format. */
int fx_profile_parse(const char *text, const char *origin, fx_profile **out, fx_err *err);
/* A built-in profile by name ("cerner", "generic"), or a JSON file path. */
int fx_profile_load(const char *name_or_path, fx_profile **out, fx_err *err);
void fx_profile_free(fx_profile *p);

/* Types fetched per patient (read or search), optional ones included. */
fx_types fx_profile_patient_types(const fx_profile *p);
/* The default query set: the per-patient types that are not optional. */
fx_types fx_profile_default_types(const fx_profile *p);

/* 1 when the profile wants an attachment of this contentType fetched as
 * Binary: its Binary rule lists no content_types, the attachment says no
 * contentType (it cannot be judged: fetched rather than silently missed), or
 * its media type (parameters such as ";charset=utf-8" dropped, case ignored)
 * is listed. */
int fx_profile_wants_attachment(const fx_profile *p, const char *content_type);

/* Calls fn(arg, url) for each attachment of res to fetch as Binary:
 * DocumentReference.content[].attachment and DiagnosticReport.presentedForm[]
 * (Cerner's document-reference.md, diagnostic-report.md: often 2-3 forms of
 * one report, e.g. XR- PDF, R-/XML- XML, TR- HTML), each with a url, without
 * inline data (its content is already in the resource), and of a contentType
 * the profile wants. The url is passed exactly as the resource gives it. */
void fx_profile_attachments(const fx_profile *p, json_t *res,
                            void (*fn)(void *arg, const char *url), void *arg);

/* The profiles of every tenant of a config, in tenant order. */
typedef struct fx_profile_set {
  const fx_config *cfg;
  fx_profile **by_tenant; /* owned; tenants sharing a profile share one pointer */
  fx_profile **owned;
  size_t n_owned;
} fx_profile_set;

int fx_profile_set_load(const fx_config *cfg, fx_profile_set *set, fx_err *err);
void fx_profile_set_free(fx_profile_set *set);
/* NULL when tenant is not configured. */
const fx_profile *fx_profile_for(const fx_profile_set *set, const char *tenant);

/* The types a patient job without "resources" fetches for tenant t under
 * profile p: its configured resources that the profile fetches per patient,
 * or the profile's default query set. */
fx_types fx_tenant_types(const fx_tenant_conf *t, const fx_profile *p);

/* Every type tenant t extracts under p, by any route: its configured
 * resources (per-patient and bulk-only types alike), or the profile's default
 * query set. A bulk job without "resources" asks for these. */
fx_types fx_tenant_extract_types(const fx_tenant_conf *t, const fx_profile *p);

/* The tenant's scope set: tenants[].scopes if configured, else one scope per
 * type it extracts (fx_tenant_extract_types), plus the reference types the
 * profile follows when the tenant follows references
 * (tenants[].follow_references), in fx_type_names order. Returns a new
 * space-separated string (caller frees), NULL on OOM. */
char *fx_tenant_scope(const fx_tenant_conf *t, const fx_profile *p);

#endif
