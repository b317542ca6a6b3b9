/* Query profiles: how each resource type is fetched from an EHR, as data.
 *
 * A profile (worker/profiles/cerner.json is the built-in default) says for
 * each of the 21 types whether it is read by patient id, searched with which
 * parameters ({patient} is replaced by the id), its _count, whether
 * _lastUpdated can narrow it for incremental extracts, or whether it is only
 * reached through references; and which reference types are followed, to
 * what depth. Tenants pick one with tenants[].profile: a built-in name or a
 * file path. */
#ifndef FX_PROFILE_H
#define FX_PROFILE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"

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
} fx_type_rule;

#define FX_PROFILE_TYPES 21

typedef struct fx_profile {
  char *name;
  fx_type_rule types[FX_PROFILE_TYPES]; /* indexed like fx_cerner_types */
  uint32_t follow; /* reference types followed */
  int depth;       /* 0 = references not followed */
} fx_profile;

/* Parses a profile document; origin names it in errors ("profile x.json"). */
int fx_profile_parse(const char *text, const char *origin, fx_profile **out, fx_err *err);
/* A built-in profile by name ("cerner"), or a JSON file path. */
int fx_profile_load(const char *name_or_path, fx_profile **out, fx_err *err);
void fx_profile_free(fx_profile *p);

/* Types fetched per patient (read or search). */
uint32_t fx_profile_patient_types(const fx_profile *p);

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

#endif
