/* Following references, as both kinds of job do it (one walker, one rule).
 *
 * fx_refs_walk visits every "reference" string of a resource and the
 * attachment URLs the profile wants (as Binary, to be fetched exactly as
 * given); fx_refs_consider decides what one of them means for the job, once
 * per job and entity:
 *
 *   FX_REFD_FOLLOW   a type the profile follows, under the tenant's base,
 *                    not asked for before: fetch key (from url when set)
 *   FX_REFD_FOREIGN  an absolute URL outside the base: never fetched with
 *                    the tenant's token; reported once per URL
 *   FX_REFD_INVALID  a followed type whose id breaks the id rule
 *                    (resources.h): never fetched; reported once
 *   FX_REFD_UNRECORDED  a FOREIGN or INVALID one past
 *                    worker.max_reference_failures_per_job: counted in
 *                    unrecorded, not reported, its URL not remembered
 *   FX_REFD_CAPPED   past worker.max_references_per_job: reported once
 *                    (the first time), then skipped
 *   FX_REFD_SKIP     anything else: contained (#x), not followed, asked for
 *                    already, or already published by the job (seen)
 *
 * Both sets stay bounded whatever a server sends: "asked" holds at most
 * max entities plus max_failures reported URLs. Past the failure cap a URL
 * met twice is counted twice (remembering it is what the cap prevents).
 *
 * Thread: the caller's; a fx_refs belongs to one job. */
#ifndef FX_MODEL_REFS_H
#define FX_MODEL_REFS_H

#include <jansson.h>
#include <stddef.h>

#include "worker/model/profile.h"
#include "worker/model/resources.h"
#include "worker/model/strset.h"

typedef enum fx_ref_decision {
  FX_REFD_SKIP = 0,
  FX_REFD_FOLLOW,
  FX_REFD_FOREIGN,
  FX_REFD_INVALID,
  FX_REFD_CAPPED,
  FX_REFD_UNRECORDED
} fx_ref_decision;

typedef struct fx_refs {
  fx_strset *asked;   /* "Type/id" asked for; "foreign:URL" and "invalid:URL" reported */
  size_t followed;    /* FOLLOW decisions so far */
  size_t max;         /* worker.max_references_per_job */
  int capped;
  size_t max_failures; /* worker.max_reference_failures_per_job */
  size_t reported;     /* FOREIGN and INVALID decisions so far */
  long long unrecorded; /* UNRECORDED decisions so far */
} fx_refs;

typedef struct fx_ref_found {
  int type;                       /* FOLLOW, INVALID: the type's index */
  char key[FX_REF_KEY_SIZE];      /* FOLLOW: "Type/id" */
  int exact;                      /* FOLLOW: fetch ref itself (an attachment's absolute URL) */
} fx_ref_found;

/* max: entities followed; max_failures: foreign or invalid references
 * reported. 0, or -1 when out of memory. */
int fx_refs_init(fx_refs *r, size_t max, size_t max_failures);
void fx_refs_free(fx_refs *r);

/* What ref (a reference value, or an attachment URL with only_type Binary
 * and exact set) means for the job: see above. seen (may be NULL) holds the
 * "Type/id" the job published already. */
fx_ref_decision fx_refs_consider(fx_refs *r, const fx_profile *p, const char *base,
                                 const fx_strset *seen, const char *ref, int only_type, int exact,
                                 fx_ref_found *out);

typedef void (*fx_refs_visit)(void *arg, const char *ref, int only_type, int exact);

/* Visits res's references and wanted attachment URLs (does not check the
 * profile's depth: the caller knows the depth it is at). */
void fx_refs_walk(const fx_profile *p, json_t *res, fx_refs_visit visit, void *arg);

/* "Type/id" from the end of a URL's path when it has that shape (for naming
 * what a foreign reference pointed at); 0, or -1. */
int fx_refs_url_key(const char *url, char *out, size_t size);

#endif
