/* Fault injection (docs/simulator.md "Faults"): what a misbehaving EHR or
 * the gateway in front of it does to a request.
 *
 * A tenant holds an ordered list of faults posted through the control API.
 * When a request arrives (before authentication, as a gateway would), the
 * first active fault whose target, path and ratio draw match fires: one use
 * of its count is consumed and its effect (sim_fault_effect) is copied into
 * the request, which applies it while answering (http.c with fault_body.c).
 *
 * The same module keeps the Retry-After ledger: every answer that carried a
 * Retry-After is remembered per request target until the next request for
 * that target arrives, which is then checked against the announced time.
 *
 * Threading: the list and the ledger are guarded by sim_state.lock; a
 * per-tenant atomic flag (sim_tenant.fault_armed) says whether either holds
 * anything, so requests of a tenant without faults never take the lock. */
#ifndef SIM_FAULT_H
#define SIM_FAULT_H

#include "tests/sim/data.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct sim_state;
struct sim_tenant;

typedef enum {
  SIM_TARGET_TOKEN,
  SIM_TARGET_DISCOVERY,
  SIM_TARGET_FHIR,
  SIM_TARGET_COUNT
} sim_target;

const char *sim_target_name(sim_target t);
int sim_target_from_name(const char *name); /* -1 if unknown */

/* Slack allowed when checking a retry against its Retry-After: clocks are
 * read in milliseconds on both sides and HTTP-dates have whole seconds. */
#define SIM_RETRY_SLACK_MS 50

/* What a fault does to one request. In a posted fault delay_ms is -1 when
 * the delay is random (delay_min..delay_max); in a request's copy it is
 * resolved. Strings and headers are owned. */
typedef struct sim_fault_effect {
  unsigned status;        /* replacing answer's status; 0 = keep the normal one */
  long delay_ms;          /* before answering (connection suspended) */
  long delay_min, delay_max;
  char *content_type;     /* replacing answer; NULL = default */
  char *body;             /* replacing answer; NULL = empty (or generated) */
  json_t *headers;        /* added to whatever answer is sent, or NULL */
  long retry_after;       /* seconds, -1 = none */
  bool retry_after_date;  /* send it as an HTTP-date instead of delta-seconds */
  bool reset;             /* close the connection (RST) without an answer */
  bool truncate;          /* normal body cut in half, Content-Length to match */
  bool malformed;         /* a 200 whose body is not JSON */
  long drip_bytes_per_s;  /* 0 = full speed */
  long nest_depth;        /* 0, or a 200 Bundle nested this deep */
  uint64_t huge_bytes;    /* 0, or a 200 Bundle of exactly this size, streamed */
  char *foreign_next;     /* origin replacing the next link's, or NULL */
  char *foreign_references; /* origin for absolute references, or NULL */
  char *next_segment;     /* inserted after the tenant's base path in the next link, or NULL */
  bool echo;              /* body: {authorization} and {request_body} become the request's */
} sim_fault_effect;

typedef struct sim_fault {
  char *name;             /* unique per tenant; posting the same name replaces */
  sim_target target;
  char *path;             /* FHIR only: a resource type or a glob; NULL = any */
  bool path_glob;
  double ratio;           /* 1 = every matching request */
  sim_rng rng;            /* ratio draws and random delays */
  long count;             /* uses left; -1 = until cleared; 0 = spent */
  long matched;           /* requests that matched target and path */
  long fired;             /* requests it was applied to */
  json_t *spec;           /* the posted object, echoed by GET */
  sim_fault_effect fx;
} sim_fault;

void sim_fault_effect_clear(sim_fault_effect *e);
void sim_fault_free(sim_fault *f);

/* Validates a posted fault strictly and fills *out (caller frees with
 * sim_fault_free); `params` seeds the ratio stream with the tenant's data
 * seed. Returns 0, or -1 with a one-line message in err naming the key. */
int sim_fault_parse(json_t *o, const sim_data_params *params, sim_fault *out, char *err,
                    size_t errlen);

/* True when the fault's answer replaces the normal one (status, 429,
 * malformed, nested, huge); false when it only delays, resets or rewrites. */
bool sim_fault_replaces(const sim_fault_effect *e);

/* ---- per-tenant list (lock taken inside) ---- */

/* Adds f (taking ownership of its contents) at the end, or in place of the
 * fault with the same name. */
void sim_faults_put(struct sim_state *st, struct sim_tenant *t, sim_fault *f);
void sim_faults_clear(struct sim_state *st, struct sim_tenant *t);
/* Removes the fault called name; returns false if there was none. */
bool sim_faults_delete(struct sim_state *st, struct sim_tenant *t, const char *name);
/* New reference: {"faults": [{spec..., "name", "matched", "fired", "remaining"}]}. */
json_t *sim_faults_json(struct sim_state *st, struct sim_tenant *t);

/* Cheap check (one atomic load) whether a request of t needs sim_faults_arrive. */
bool sim_faults_armed(struct sim_tenant *t);

/* A request arrived at now_ms (wall clock). Checks it against a pending
 * Retry-After for request_key (path and query), then picks the first fault
 * for target whose path matches fhir_path (the path after the tenant base,
 * without the leading '/'; "" for token and discovery) and whose ratio draw
 * fires. Returns true with a copy of its effect in *out (caller clears). */
bool sim_faults_arrive(struct sim_state *st, struct sim_tenant *t, sim_target target,
                       const char *fhir_path, const char *request_key, int64_t now_ms,
                       sim_fault_effect *out);

/* An answer with Retry-After was sent for request_key at sent_ms; the next
 * request for it should not come before not_before_ms (wall clock). */
void sim_faults_note_retry(struct sim_state *st, struct sim_tenant *t, const char *request_key,
                           int64_t sent_ms, int64_t not_before_ms);
/* New reference: {"violations": N, "checked": M, "pending": P, "slack_ms": 50,
 * "details": [...]}. */
json_t *sim_faults_retry_json(struct sim_state *st, struct sim_tenant *t);
/* Forgets checks, violations and pending Retry-Afters (lock held by caller
 * or not: *_locked is for sim_state_reset_counters). */
void sim_faults_retry_reset(struct sim_state *st, struct sim_tenant *t);
void sim_faults_retry_reset_locked(struct sim_tenant *t);

/* Per-tenant storage, owned by sim_tenant; initialized/freed by state.c. */
int sim_faults_tenant_init(struct sim_tenant *t);
void sim_faults_tenant_free(struct sim_tenant *t);

/* The wall-clock time a Retry-After value (delta-seconds or HTTP-date)
 * announces, relative to now_ms. Returns false when it is neither. */
bool sim_retry_after_parse(const char *value, int64_t now_ms, int64_t *not_before_ms);

#endif
