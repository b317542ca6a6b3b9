/* Internal interface of the FHIR modules (fhir*.c): how each resource type
 * is searched.
 *
 * Stored types (Patient and the pools) are searched on search keys
 * extracted once per resource at start-up (sim_key: name + value), never on
 * the JSON: a type's `index` function extracts them, its `params` table says
 * how each parameter compares, and an optional `indexed_param` gets a value
 * -> resources index.
 *
 * Per-patient types are searched by patient (or _id): the matches are the
 * patient's resources of that type, computed from ids alone, filtered on
 * _lastUpdated where the type honours it (data_clinical.c). */
#ifndef SIM_FHIR_H
#define SIM_FHIR_H

#include "tests/sim/data.h"
#include "tests/sim/http.h"

#include <stdbool.h>

typedef enum {
  SIM_P_STRING,    /* case-insensitive "starts with" (name, family, address-postalcode) */
  SIM_P_TOKEN,     /* [system|]code; key stored as "system|code" or "code" */
  SIM_P_DATE,      /* [eq|ne|gt|lt|ge|le]YYYY[-MM[-DD]] against an ISO date/instant */
  SIM_P_REFERENCE, /* "123" or "Patient/123"; key stores the id */
  SIM_P_PHONE,     /* digits only */
} sim_param_kind;

typedef struct sim_search_param {
  const char *name;
  sim_param_kind kind;
} sim_search_param;

typedef int (*sim_index_fn)(sim_resource *r);

/* _lastUpdated as each type's page of Cerner's R4 documentation allows it. */
typedef enum {
  /* up to 2 values, eq/ge/gt/le/lt (none = eq), time optional; two values
   * are a ge/gt lower and an le/lt upper bound (allergy-intolerance.md,
   * condition.md, diagnostic-report.md, document-reference.md, encounter.md,
   * observation.md, procedure.md) */
  SIM_LU_RANGE = 0,
  /* up to 2 values, ge/le only, each with a time; two are one ge and one le
   * (medication-request.md, service-request.md) */
  SIM_LU_TIMED_GE_LE,
  /* one value, gt or ge, time optional (immunization.md) */
  SIM_LU_ONE_GT_GE,
} sim_lu_rule;

typedef struct sim_search_def {
  sim_rtype type;
  bool searchable;              /* false: read only (Binary) */
  const char *const *required;  /* NULL-terminated, at least one must be present; NULL = none */
  const sim_search_param *params; /* stored types; terminated by {NULL}; others are ignored */
  sim_index_fn index;           /* stored types: extracts search keys; NULL = only _id works */
  const char *indexed_param;    /* a key with a value -> resources index, or NULL */
  unsigned default_count;
  unsigned max_count;
  unsigned max_matches;         /* 0 = unlimited; more matches answer 422 (Patient: 1000) */
  bool last_updated;            /* honours _lastUpdated (per-patient types) */
  sim_lu_rule lu_rule;          /* how Cerner's documentation restricts it */
  bool lu_no_date;              /* date (and period) may not come with _lastUpdated */
  bool relationship_level;      /* RelatedPerson: patient/identifier need -relationship-level=Patient */
  bool id_alone;                /* _id must be sent alone (_count aside) */
  bool quirks;                  /* Cerner's paging quirks apply (knobs paging_*) */
  const char *patient_requires; /* "name=value" a search by patient must carry, or NULL */
} sim_search_def;

/* Borrowed row for type t (every sim_rtype has one). */
const sim_search_def *sim_search_def_for(sim_rtype t);

/* sim_store_indexer: attaches search keys and indexes to every resource of a
 * freshly built store. Passed to sim_state_init by main. */
int sim_fhir_prepare_store(sim_store *s);

/* Runs a search on the tenant's data and fills resp with a searchset Bundle
 * or an OperationOutcome. */
void sim_fhir_search(sim_req *req, sim_resp *resp, const sim_search_def *def);

/* True when r satisfies every parameter of def it knows (AND across
 * parameters, OR across comma-separated values). params never contain
 * _count or -pageContext. */
bool sim_fhir_match(const sim_search_def *def, const sim_resource *r, const sim_kv *params,
                    size_t n);

/* One search value q against one key, as a parameter of that kind compares
 * (shared with the export's _typeFilter matching, export_scope.c). */
bool sim_fhir_value_matches(sim_param_kind kind, const char *key, const char *q);

/* Index functions. */
int sim_index_patient(sim_resource *r);
int sim_index_practitioner(sim_resource *r);
int sim_index_organization(sim_resource *r);
int sim_index_location(sim_resource *r);
/* Shared by them: "family"/"given"/"name" keys from name[], "identifier" keys. */
int sim_index_names(sim_resource *r);
int sim_index_identifiers(sim_resource *r);
int sim_index_string(sim_resource *r, const char *key, const json_t *value);

/* Parses a FHIR date or instant of any precision (YYYY, YYYY-MM,
 * YYYY-MM-DD, YYYY-MM-DDThh:mm[:ss[.fff]][Z|+hh:mm]) into the half-open
 * range [*lo_ms, *hi_ms) of epoch milliseconds it denotes. Returns 0 or -1. */
int sim_fhir_parse_instant(const char *s, int64_t *lo_ms, int64_t *hi_ms);

/* Binary read (fhir_binary.c): Accept decides between the Binary resource
 * and the raw document; anything else is 406. */
void sim_fhir_read_binary(sim_req *req, sim_resp *resp, const char *id);

/* Classifies a FHIR request for the counters without answering it: the
 * resource type name (or "" when unknown), the kind ("read", "search" or
 * "page") and, for reads, "Type/id" in read_key (else ""). */
void sim_fhir_classify(const sim_req *req, char type[64], const char **kind, char read_key[160]);

/* True if a granted scope (space-separated list) allows reading `type`:
 * system/T.read (v1) or system/T.<v2 permissions with r>. */
bool sim_fhir_scope_allows_read(const char *scopes, const char *type);
/* 403 OperationOutcome naming the missing system/<type>.read scope. */
void sim_fhir_forbidden(sim_resp *resp, const char *type);

/* ---- Bulk Data (export.c) ---- */

/* True for the paths export.c answers: /Group... and /bulk-export/... */
bool sim_export_path(const char *subpath);
/* Group read, $export kick-off, status, DELETE and file redirects, after
 * authentication: scopes and client_id are the token's. */
void sim_export_handle(sim_req *req, sim_resp *resp, const char *scopes, const char *client_id);

/* Reference server mode (refserver.h): status (GET, DELETE) and file URLs
 * outside the FHIR base, after authentication. */
void sim_ref_export_handle(sim_req *req, sim_resp *resp, const char *client_id);

/* Control endpoints that need the FHIR rules (control_data.c). */
void sim_control_expected(sim_req *req, sim_tenant *t, sim_resp *resp);
void sim_control_touch(sim_req *req, sim_tenant *t, sim_resp *resp);
void sim_control_untouch(sim_req *req, sim_tenant *t, sim_resp *resp);
void sim_control_reads(sim_req *req, sim_tenant *t, sim_resp *resp);
/* Bulk Data control endpoints (export_control.c):
 *   GET  /_sim/tenants/{t}/export              settings and jobs
 *   POST /_sim/tenants/{t}/export              change settings, fail_next
 *   POST /_sim/tenants/{t}/export/expire       expire every job of the tenant
 *   GET  /_sim/tenants/{t}/groups/{id}/expected  what an export of the group holds */
void sim_control_export_get(sim_req *req, sim_tenant *t, sim_resp *resp);
void sim_control_export_set(sim_req *req, sim_tenant *t, sim_resp *resp);
void sim_control_export_expire(sim_req *req, sim_tenant *t, sim_resp *resp);
void sim_control_group_expected(sim_req *req, sim_tenant *t, const char *group_id,
                                sim_resp *resp);

#endif
