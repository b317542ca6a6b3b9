/* Internal interface of the FHIR modules (fhir*.c): how each resource type
 * is searched.
 *
 * Searching works on search keys extracted once per resource at start-up
 * (sim_key: name + value), never on the JSON: a type's `index` function
 * extracts them, its `params` table says how each parameter compares, and
 * an optional `indexed_param` gets a value -> resources index so the common
 * patient=X search does not scan the whole type.
 *
 * Adding a resource type = a generator in data_<type>.c, a row in
 * fhir_types.c, and usually nothing else (sim_index_patient_ref covers the
 * usual subject/patient reference). */
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

typedef struct sim_search_def {
  sim_rtype type;
  bool searchable;              /* false: read only (Binary) */
  const char *const *required;  /* NULL-terminated, at least one must be present; NULL = none */
  const sim_search_param *params; /* terminated by {NULL}; unknown parameters are ignored */
  sim_index_fn index;           /* extracts search keys; NULL = only _id works */
  const char *indexed_param;    /* a key with a value -> resources index, or NULL */
  unsigned default_count;
  unsigned max_count;
  unsigned max_matches;         /* 0 = unlimited; more matches answer 422 (Patient: 1000) */
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

/* Index functions. */
int sim_index_patient(sim_resource *r);
/* "patient" and "subject" keys from a subject/patient reference to Patient/<id>. */
int sim_index_patient_ref(sim_resource *r);

#endif
