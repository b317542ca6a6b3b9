/* A worker thread's FHIR requests: the fetcher.
 *
 * A fetch is one GET a job needs (a search page, a read, a referenced
 * entity). The fetcher sends it when three limits allow: the thread's
 * worker.max_requests_in_flight, its tenant's governor (adaptive
 * concurrency, rate, Retry-After per path, the circuit breaker), and its
 * deadline. A fetch the governor holds back waits in its (tenant, path)
 * queue; a transient failure is tried again after a backoff (never before a
 * Retry-After) up to worker.retries times. One timer serves every wait and
 * every retry of the thread, so nothing is scanned or timed per fetch.
 *
 * The final word on a fetch goes to its done callback, exactly once:
 *   FX_FETCH_ANSWER    a response to read (any status that is not worth
 *                      retrying), or a token failure that is not transient;
 *   FX_FETCH_GAVE_UP   transient failures until no retry was left (or the
 *                      thread drains: result.draining); res or ae is the last;
 *   FX_FETCH_REFUSED   never sent: the governor's wait would pass the
 *                      deadline, or the URL may not carry the token (class
 *                      and message say which);
 *   FX_FETCH_CANCELED  dropped (fx_fetcher_drop) or the fetcher closed.
 * Callbacks never run inside fx_fetcher_submit or fx_fetcher_drop.
 *
 * New work comes from the owner's source when the ready queue is empty: the
 * fetcher asks it for the next fetch, and the source says, when everything
 * it has is held back by a governor, how long until that may change.
 *
 * Thread: one loop; everything here runs on it. */
#ifndef FX_JOBS_FETCH_H
#define FX_JOBS_FETCH_H

#include <stdint.h>

#include "common/fhir.h"
#include "common/loop.h"
#include "worker/admin/metrics.h"
#include "worker/model/errclass.h"
#include "worker/pool/services.h"

typedef struct fx_fetcher fx_fetcher;
typedef struct fx_fetch fx_fetch;

typedef enum fx_fetch_end {
  FX_FETCH_ANSWER,
  FX_FETCH_GAVE_UP,
  FX_FETCH_REFUSED,
  FX_FETCH_CANCELED
} fx_fetch_end;

typedef struct fx_fetch_result {
  fx_fetch_end end;
  fx_http_response *res;     /* ANSWER and GAVE_UP: the last response, or NULL */
  const fx_auth_error *ae;   /* ANSWER and GAVE_UP: no token could be had, or NULL */
  fx_errclass cls;           /* REFUSED: what to record */
  const char *message;       /* REFUSED: why */
  int draining;              /* GAVE_UP: the thread drains (a retry would have run) */
} fx_fetch_result;

typedef void (*fx_fetch_done_fn)(fx_fetch *f, const fx_fetch_result *r);

/* Set by the owner before fx_fetcher_submit; the fetcher only reads them.
 * The fetch's memory is the owner's: it must stay valid until done ran. */
struct fx_fetch {
  const char *tenant;       /* borrowed */
  fx_token_scope scope;     /* where the token may go (fx_tenant_token_scope) */
  const char *path;         /* the governor's path: the resource type */
  const char *url;          /* borrowed; the owner may change it between submits */
  const char *accept;       /* NULL = application/fhir+json */
  uint64_t deadline_ms;     /* monotonic: no wait and no retry past it */
  fx_tenant_metrics *tm;    /* request metrics, may be NULL */
  fx_fetch_done_fn done;
  void *owner;              /* whose fetch this is (fx_fetcher_drop_owner) */
  /* The fetcher's. */
  fx_fetch *next;
  uint64_t due_ms;          /* a retry's time */
  int attempts;             /* sent so far (reset by the owner for a next page) */
  int where;
  int governed;             /* holds a governor slot until its answer is in */
  fx_fetcher *fetcher;
};

/* A source of new work: the next fetch to send (not yet submitted), or
 * NULL. *blocked_ms > 0 tells when work it passed over (its tenant blocked)
 * may go. */
typedef fx_fetch *(*fx_fetch_source)(void *ctx, uint64_t now_ms, long *blocked_ms);

int fx_fetcher_new(fx_loop *lp, const fx_services *sv, fx_fetch_source source, void *ctx,
                   fx_fetcher **out, fx_err *err);

/* Queues f at the back (new work, next pages) or the front (first: work
 * that is older, such as a page whose job is further along). */
void fx_fetcher_submit(fx_fetcher *fr, fx_fetch *f, int first);

/* Sends what the limits allow now, taking new work from the source. Cheap
 * when nothing can move; call it whenever something changed. */
void fx_fetcher_pump(fx_fetcher *fr);

/* Every fetch not in flight for which match(f, arg) is true ends CANCELED
 * (soon, from the loop, never inside this call). */
void fx_fetcher_drop(fx_fetcher *fr, int (*match)(const fx_fetch *f, void *arg), void *arg);

/* fx_fetcher_drop of every fetch whose owner is owner. */
void fx_fetcher_drop_owner(fx_fetcher *fr, const void *owner);

/* The thread drains: a transient failure ends GAVE_UP (draining) at once
 * instead of waiting for a retry. */
void fx_fetcher_draining(fx_fetcher *fr);

/* Fetches sent and not answered. */
size_t fx_fetcher_inflight(const fx_fetcher *fr);

/* Ends every fetch not in flight (CANCELED), stops the timer and frees fr
 * once the loop closed it. Fetches in flight end when the loop's HTTP client
 * is closed (their answers come back canceled). */
void fx_fetcher_close(fx_fetcher *fr);

#endif
