/* Everything the simulator remembers between requests: tenants and their
 * clients, issued tokens, seen jtis, settings, injected faults (fault.c),
 * bulk exports (export.h) and counters.
 *
 * Threading: MHD's pool threads call these functions concurrently. One mutex
 * guards all mutable fields and is held only for map look-ups and counter
 * increments, never across I/O, crypto or response building. The tenant
 * array, tenant ids, signing/auth lists and data stores are immutable after
 * sim_state_init and are read without the lock. */
#ifndef SIM_STATE_H
#define SIM_STATE_H

#include "tests/sim/config.h"
#include "tests/sim/data.h"
#include "tests/sim/export.h"
#include "tests/sim/fault.h"
#include "tests/sim/map.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>


typedef struct sim_counters {
  long token_requests;
  long tokens_granted;
  long discovery_requests;
  long fhir_requests;
  json_t *token_rejections; /* reason or OAuth error -> count */
  json_t *by_client;        /* client_id -> token requests */
  json_t *fhir_by_status;   /* "200" -> count */
  json_t *faults_served;    /* target -> count */
  json_t *fhir_by_type;      /* "Observation" -> requests */
  json_t *fhir_by_kind;      /* "read" | "search" | "page" -> requests */
  json_t *fhir_by_type_kind; /* "Observation.page" -> requests */
  json_t *reads;             /* "Practitioner/4000001" -> reads of that path */
  /* Bulk Data $export (export.c). */
  long export_kickoffs;      /* accepted (202) */
  long export_refused;       /* 429: another export of the client is running */
  long export_polls;         /* status GETs */
  long export_files;         /* file GETs redirected (307) */
  long export_deletes;       /* DELETEs answered 202 */
  json_t *kickoffs;          /* the last SIM_KICKOFF_LOG kick-offs: query as received, status */
  long export_invalid;       /* kick-offs refused for their parameters (400/422) */
  long export_other_client;  /* status, file or DELETE requests of another client (403) */
  /* Reference server mode (refserver.c). */
  long ref_registrations;    /* clients registered through auth/register */
  long ref_limited_ms;       /* 429s whose Retry-After was an epoch in milliseconds */
  long ref_limited_s;        /* 429s whose Retry-After was an epoch in seconds */
  json_t *auth_paths;        /* path -> {"requests": n, "authorization": m} */
} sim_counters;

#define SIM_KICKOFF_LOG 100

/* A reference-server route's rate limiter (refserver.c): the real server's
 * sliding window per route (lib.ts rateLimiter). */
typedef struct sim_ratelimit {
  int64_t *times; /* arrivals still inside the window, oldest first */
  size_t n, cap;
  int64_t blocked_until; /* epoch ms; 0 = not blocked */
} sim_ratelimit;

enum { SIM_REF_ROUTE_KICKOFF, SIM_REF_ROUTE_STATUS, SIM_REF_ROUTE_COUNT };

typedef enum {
  SIM_XCOUNT_KICKOFF,
  SIM_XCOUNT_REFUSED,
  SIM_XCOUNT_POLL,
  SIM_XCOUNT_FILE,
  SIM_XCOUNT_DELETE,
  SIM_XCOUNT_INVALID,
  SIM_XCOUNT_OTHER_CLIENT,
} sim_export_count;

/* What the FHIR requests of a tenant look like from the server's side
 * (load.c): how many are in flight (from arrival until the answer is queued,
 * delays included), the most there ever were, and when each arrived, for
 * checking a client's concurrency and rate limits. Guarded by sim_state.lock. */
typedef struct sim_load {
  long in_flight;
  long peak;
  int64_t *arrivals_us; /* monotonic, in arrival order; the first SIM_LOAD_MAX kept */
  size_t n, cap;
  long dropped;         /* arrivals beyond SIM_LOAD_MAX, counted only */
} sim_load;

#define SIM_LOAD_MAX 200000

typedef struct sim_tenant {
  /* Immutable after init. */
  char *id;
  sim_store *store;
  sim_strv auth_methods;
  sim_strv signing_algs;
  size_t index;
  sim_group *groups; /* Bulk Data groups (export.c) */
  size_t ngroups;
  sim_refserver_cfg ref; /* reference server mode (refserver.c) */
  /* Guarded by sim_state.lock. */
  long expires_in;
  bool fhir_always_401;
  uint64_t token_generation; /* bumped by revoke_tokens; older tokens are invalid */
  sim_client *clients;
  size_t nclients;
  sim_export_settings export_settings;
  bool export_fail_next; /* the next accepted kick-off's export fails */
  sim_ratelimit ratelimit[SIM_REF_ROUTE_COUNT]; /* reference server mode */
  sim_fault *faults; /* in posting order; first match wins (fault.c) */
  size_t nfaults;
  sim_map retry_pending;  /* request target -> Retry-After announced (fault.c) */
  long retry_checked;
  long retry_violations;
  json_t *retry_details;  /* the first violations, for GET retry_after_violations */
  /* Set (under the lock) while a fault is active or a Retry-After pending;
   * read without it so that requests of an untouched tenant stay lock-free. */
  atomic_bool fault_armed;
  sim_counters counters;
  sim_load load;
} sim_tenant;

typedef struct sim_state {
  pthread_mutex_t lock;
  sim_tenant *tenants;
  size_t ntenants;
  sim_map tokens;  /* access token -> issued_token */
  sim_map jtis;    /* "tenant\x1fclient\x1fjti" -> int64_t expiry */
  size_t tokens_prune_at;
  size_t jtis_prune_at;
  sim_map exports; /* job id -> sim_export* (one reference each) */
  /* The storage server (storage.c) that export downloads are redirected
   * to. Port and origin are set by main before any server starts and are
   * immutable afterwards; the secret signs storage URLs. */
  unsigned storage_port;
  char storage_origin[128]; /* "http://127.0.0.1:PORT" */
  bool storage_any_host;    /* bound to 0.0.0.0 or ::: redirect to the request's host name */
  unsigned char storage_secret[32];
  long storage_requests;       /* guarded by lock, like every counter */
  long storage_authorization;  /* requests carrying an Authorization header */
  long storage_bytes;          /* body bytes produced for 200 answers */
} sim_state;

/* Builds tenants (including their synthetic data, prepared for searching by
 * indexer) from cfg. Returns 0, or -1 with a message in err. cfg is not
 * modified or kept. */
int sim_state_init(sim_state *st, const sim_config *cfg, sim_store_indexer indexer, char *err,
                   size_t errlen);
void sim_state_free(sim_state *st);

/* Borrowed tenant or NULL; no lock needed. */
sim_tenant *sim_state_tenant(sim_state *st, const char *id);

/* Copies the client into *out (caller clears it). Returns 0, or -1 if the
 * tenant has no such client (or on OOM). */
int sim_state_client_copy(sim_state *st, sim_tenant *t, const char *client_id, sim_client *out);
/* Adds or replaces a client by client_id; takes ownership of *c's contents
 * on success. Returns 0 or -1 on OOM. */
int sim_state_put_client(sim_state *st, sim_tenant *t, sim_client *c);

long sim_state_expires_in(sim_state *st, sim_tenant *t);
void sim_state_set_expires_in(sim_state *st, sim_tenant *t, long seconds);
void sim_state_revoke_tokens(sim_state *st, sim_tenant *t);
void sim_state_set_always_401(sim_state *st, sim_tenant *t, bool on);

/* Records a jti until `exp`. Returns 1 if it was new, 0 if it was already
 * seen for this tenant and client (a replay), -1 on OOM. */
int sim_state_use_jti(sim_state *st, sim_tenant *t, const char *client_id, const char *jti,
                      int64_t exp);

/* Issues and remembers a token. Returns a new string (caller frees) or NULL. */
char *sim_state_issue_token(sim_state *st, sim_tenant *t, const char *client_id,
                            const char *scope, long expires_in);

/* Checks a bearer token for a FHIR request on tenant t. Returns 0 with the
 * token's granted scopes in *scope and, if client_id is not NULL, the client
 * it was issued to in *client_id (new strings, caller frees), or -1 with the
 * reason in why (fhir_always_401, unknown, other tenant, expired, revoked). */
int sim_state_token_scope(sim_state *st, sim_tenant *t, const char *token, char **scope,
                          char **client_id, char *why, size_t whylen);

/* Counters. client_id may be NULL when the request named none. */
void sim_count_token_request(sim_state *st, sim_tenant *t, const char *client_id);
/* rejection: a reason code, an OAuth error, or NULL for a granted token. */
void sim_count_token_outcome(sim_state *st, sim_tenant *t, const char *rejection);
void sim_count_discovery(sim_state *st, sim_tenant *t);
/* status 0 is a connection reset (counted as "reset"). */
void sim_count_fhir(sim_state *st, sim_tenant *t, unsigned status);
void sim_count_fault(sim_state *st, sim_tenant *t, sim_target target);
/* One FHIR request by resource type and kind ("read", "search", "page");
 * type "" (unknown type or path) counts nowhere; read_key "Type/id" or "". */
void sim_count_fhir_request(sim_state *st, sim_tenant *t, const char *type, const char *kind,
                            const char *read_key);
void sim_count_export(sim_state *st, sim_tenant *t, sim_export_count what);
/* A client registered through a reference-server tenant's auth/register. */
void sim_count_ref_registration(sim_state *st, sim_tenant *t);
/* One storage request; bytes of bodies are added as they are produced. */
void sim_count_storage_request(sim_state *st, bool authorization);
void sim_count_storage_bytes(sim_state *st, size_t bytes);
/* New reference: {"Type/id": reads} of the tenant, only `type`'s when type
 * is not NULL. */
json_t *sim_state_reads_json(sim_state *st, sim_tenant *t, const char *type);

/* Load (load.c): a FHIR request of tenant t arrives (at monotonic time
 * now_us) or stops being in flight. t NULL is ignored. */
void sim_load_arrive(sim_state *st, sim_tenant *t, int64_t now_us);
void sim_load_leave(sim_state *st, sim_tenant *t);
/* New reference: {"in_flight", "peak_in_flight", "requests", "dropped",
 * "arrivals_us": [...]} (GET /_sim/tenants/{t}/load). */
json_t *sim_load_json(sim_state *st, sim_tenant *t);
/* Forgets arrivals and sets the peak to what is in flight now. Lock held. */
void sim_load_reset_locked(sim_tenant *t);
void sim_load_free(sim_tenant *t);

/* New reference: {"tokens": ["...", ...]}: the access tokens issued for
 * tenant t that have not been pruned (GET /_sim/tenants/{t}/tokens), so a
 * test can look for them where they must never appear. */
json_t *sim_state_tokens_json(sim_state *st, sim_tenant *t);

/* New reference: {"tenants":{"<id>":{...}}, "storage":{...}}. */
json_t *sim_state_counters_json(sim_state *st);
void sim_state_reset_counters(sim_state *st);

#endif
