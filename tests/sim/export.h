/* Bulk Data $export (docs/simulator.md "Bulk Data $export"): a tenant's
 * Groups and the export jobs kicked off on them, as Cerner runs them
 * (cerner-smart-facts.md section 5).
 *
 * A job is immutable once it is in the state's `exports` map except for its
 * `expired` flag: kick-off validates the request, plans the files (which
 * resources go into which NDJSON file, as cursors, not contents) without
 * holding the lock, then inserts the job under the lock after re-checking
 * that the client has no other export running. Status polls build the
 * manifest from the plan; downloads are redirected to the storage server
 * (storage.c), which generates and gzips a file's lines while sending it.
 *
 * Jobs are reference counted: the map holds one reference, each download in
 * flight another, so a DELETE during a download frees the job only when the
 * download ends. References are taken and dropped under the state lock or
 * (drop only) from a download's free callback.
 *
 * Threading: everything here is guarded by sim_state.lock as state.h says;
 * groups are immutable after init. */
#ifndef SIM_EXPORT_H
#define SIM_EXPORT_H

#include "tests/sim/config.h"
#include "tests/sim/data.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sim_state;
struct sim_tenant;

/* A Group of a tenant: its members' patient ordinals, in member order. */
typedef struct sim_group {
  char *id;
  uint32_t *ordinals;
  size_t n;
} sim_group;

/* Builds the tenant's groups from its config (plus Cerner's two sandbox
 * groups on a sandbox tenant, unless the config defines those ids). Needs
 * t->store. Returns 0 or -1 with a message in err. */
int sim_groups_init(struct sim_tenant *t, const sim_tenant_cfg *tc, char *err, size_t errlen);
void sim_groups_free(struct sim_tenant *t);
/* Borrowed group or NULL; no lock needed. */
const sim_group *sim_group_find(const struct sim_tenant *t, const char *id);

/* Bytes of a job id (hex: twice as many characters). */
#define SIM_EXPORT_ID_BYTES 16
#define SIM_EXPORT_ID_LEN (2 * SIM_EXPORT_ID_BYTES)
/* Files expire this long after the export completed, as on Cerner. */
#define SIM_EXPORT_TTL_MS (30LL * 86400 * 1000)

/* Where an export walk stands: member index in the group and resource
 * index within that member's resources of the type being walked (for the
 * pool types: member is the index in the scope's list; for Provenance, sub
 * is the target type being walked). */
typedef struct sim_xcursor {
  size_t member;
  uint32_t index;
  int sub;
} sim_xcursor;

/* A parsed _typeFilter query of one type (export_scope.c). */
typedef struct sim_xfilter sim_xfilter;

/* What an export contains besides its types: the group's members, the
 * _since filter (meta.lastUpdated >= since_ms, for every type), the
 * _typeFilter queries, the pool entities (Practitioner, Organization,
 * Location) the exported resources reference, and which types' resources
 * get a Provenance. Built by kick-off (or the expected endpoint), then
 * immutable; sim_xscope_free releases what it owns. */
typedef struct sim_xscope {
  const sim_store *store;
  const sim_group *group;
  bool has_since;
  int64_t since_ms;
  sim_xfilter *filters[SIM_RT_COUNT]; /* owned; NULL: the type is not filtered */
  uint64_t *pool[SIM_RT_COUNT];       /* owned; sorted handles, pool types only */
  size_t npool[SIM_RT_COUNT];
  bool provenance[SIM_RT_COUNT];      /* a Provenance per exported resource of these types */
} sim_xscope;

/* The Group $export's _type values on Cerner (group-export.md): Patient, the
 * per-patient types but Coverage, RelatedPerson and ServiceRequest, and the
 * pool types. (Provenance, which has no sim_rtype, is exported too.) */
bool sim_xtype_exportable(sim_rtype t);
/* The pool types Cerner exports only as what the other types reference. */
bool sim_xtype_pool(sim_rtype t);

/* Parses one _typeFilter query (after '?': "category=laboratory&status=final",
 * values percent-encoded) into *out. Returns 0, or 422 with the reason in msg:
 * a parameter Cerner refuses in a _typeFilter or one the simulator cannot
 * match (it matches the token parameters listed in docs/simulator.md). */
int sim_xfilter_parse(const char *query, sim_xfilter **out, char *msg, size_t n);
void sim_xfilter_free(sim_xfilter *f);

/* Fills s->pool for the pool types marked in types, from the references of
 * the scope's resources of the other types marked (filters and since
 * applied; pool entities also by since). Returns 0 or -1 on OOM. */
int sim_xscope_collect_pools(sim_xscope *s, const bool types[SIM_RT_COUNT]);
void sim_xscope_free(sim_xscope *s);

/* Advances *c to the next resource of type t (Patient, a per-patient or a
 * pool type) that the scope contains and returns true with its handle (for
 * sim_store_write), or false at the end. Start from (sim_xcursor){0}. */
bool sim_xnext(const sim_xscope *s, sim_rtype t, sim_xcursor *c, uint64_t *handle);

/* The same for Provenance: the next exported resource that gets one (its
 * type in *target). */
bool sim_xnext_provenance(const sim_xscope *s, sim_xcursor *c, sim_rtype *target,
                          uint64_t *handle);
/* Appends the Provenance of that resource: id "prv-<target id>", target,
 * recorded and meta.lastUpdated = the target's meta.lastUpdated. */
void sim_xwrite_provenance(const sim_xscope *s, sim_rtype target, uint64_t handle, sim_buf *out);

/* The error file's lines are OperationOutcomes, not resources of a type;
 * Provenance files hold the Provenance of the exported resources. */
#define SIM_XFILE_ERRORS (-1)
#define SIM_XFILE_PROVENANCE (-2)
/* Files of the reference server's extra types (refserver.h): this plus k. */
#define SIM_XFILE_EXTRA 1000
/* Lines of the error file when the tenant's error_file is on. */
#define SIM_XFILE_ERROR_LINES 2

/* One NDJSON file of an export: `count` lines of `type` from `start` on. */
typedef struct sim_xfile {
  int type; /* sim_rtype, SIM_XFILE_ERRORS, SIM_XFILE_PROVENANCE, or SIM_XFILE_EXTRA + k */
  sim_xcursor start;
  size_t count;
} sim_xfile;

typedef struct sim_export {
  atomic_int refs;
  char id[SIM_EXPORT_ID_LEN + 1];
  size_t tenant; /* index in sim_state.tenants */
  sim_xscope scope; /* owns its filters and pool lists */
  bool types[SIM_RT_COUNT];
  bool provenance;  /* Provenance is exported */
  /* A reference-server tenant's export (refserver.h): its URLs, and the
   * extra types it holds (extra_pp per patient, from the tenant's config). */
  bool refserver;
  bool extra[SIM_REF_EXTRA_COUNT];
  long extra_pp[SIM_REF_EXTRA_COUNT];
  char *client_id;  /* the client that kicked it off: only it may poll, download, DELETE */
  char *request;    /* the kick-off URL, query included (manifest "request") */
  char host[256];   /* the kick-off's Host: absolute URLs inside resources use it */
  int64_t kickoff_ms, done_ms; /* wall clock; done = kick-off + duration_ms */
  bool fail;        /* answers 500 once done */
  sim_xfile *files; /* outputs [0, noutput), then the error file if any */
  size_t nfiles, noutput;
  /* Guarded by sim_state.lock. */
  bool expired;
  bool urls_expired; /* the storage URLs expired (403), the export itself did not */
} sim_export;

void sim_export_ref(sim_export *x);
/* Drops a reference; the last one frees the job. Also the map's free_fn. */
void sim_export_unref(void *x);

/* True once the export is gone for clients: expired by the control API or
 * SIM_EXPORT_TTL_MS after completion. Lock held. */
bool sim_export_expired_locked(const sim_export *x, int64_t now_ms);

/* Appends lines of file `f` of x to out, starting at *c / *done (lines
 * already written) until out holds at least `min_bytes` or the file is
 * complete. Every line is one resource's JSON exactly as a read serves it
 * (absolute URLs built from x->host), then '\n'. Returns true when the file
 * is complete. No lock needed: jobs' plans and the data are immutable. */
bool sim_export_write_lines(const sim_export *x, size_t f, sim_xcursor *c, size_t *done,
                            size_t min_bytes, sim_buf *out);

/* The resourceType of file f's lines ("OperationOutcome" for the error file). */
const char *sim_export_file_type(const sim_export *x, size_t f);

/* The signature part of a storage URL for file f of job id: hex HMAC with
 * the process's secret (sim_state.storage_secret). out: 65 bytes. */
void sim_export_sign(const struct sim_state *st, const char *id, size_t f, char out[65]);

#endif
