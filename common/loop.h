/* A worker loop: one libuv loop, its HTTP client, and a mailbox other
 * threads use to run a function on this loop's thread.
 *
 * The mailbox is how shared objects (the token cache) wake waiters that live
 * on other loops: fx_loop_post() from any thread queues a call and signals a
 * uv_async_t; the loop runs queued calls in order. */
#ifndef FX_LOOP_H
#define FX_LOOP_H

#include <pthread.h>
#include <uv.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/err.h"
#include "common/http.h"

typedef void (*fx_post_fn)(void *arg);

/* A call queued on a loop. fx_loop_post allocates one per call; objects that
 * hand themselves to a loop often (an output sink) embed one and queue it
 * with fx_loop_post_chain, which allocates nothing. An embedded item belongs
 * to the loop from the moment it is queued until fn has started. */
typedef struct fx_post {
  struct fx_post *next;
  fx_post_fn fn;
  void *arg;
  int embedded; /* 1: the caller's memory, not freed by the loop */
} fx_post;

typedef struct fx_loop {
  uv_loop_t *uv;
  fx_http *http;
  uv_async_t wake;
  pthread_mutex_t mu;
  fx_post *head, *tail; /* guarded by mu */
  int closed;           /* guarded by mu */
  unsigned long long wakeups; /* mailbox wake-ups served (this loop's thread only) */
} fx_loop;

/* Sets up lp on an existing uv loop (lp must stay at a fixed address). */
int fx_loop_init(fx_loop *lp, uv_loop_t *uv, const fx_http_conf *http_conf, fx_err *err);

/* Thread-safe. Runs fn(arg) on lp's thread soon. Returns 0, or FX_ECANCELED
 * if the loop is closed (fn will not run; the caller still owns arg). */
int fx_loop_post(fx_loop *lp, fx_post_fn fn, void *arg);

/* Thread-safe. Queues the chain first..last of embedded items (linked by
 * next, last->next ignored) with one wake-up for all of them: a batch of
 * completions crosses threads at the cost of one. Returns 0, or
 * FX_ECANCELED if the loop is closed (nothing was queued). */
int fx_loop_post_chain(fx_loop *lp, fx_post *first, fx_post *last);

/* Runs what is queued, closes the HTTP client (canceling requests) and the
 * mailbox. Keep running the uv loop until it returns to finish closing. */
void fx_loop_close(fx_loop *lp);


#endif
