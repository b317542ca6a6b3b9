/* A job's life on the worker thread that consumed it (a "run").
 *
 * A patient job is validated, then fetched task by task ((patient, type)
 * pairs, page by page, plus the entities its resources reference); each
 * resource is published once, each failure recorded; then the dead letter
 * (narrowed to what failed), and, once Kafka acknowledged all of that, the
 * status record. A bulk job only hands over: its pending record goes to the
 * bulk topic (bulk/bulk.h). A job that cannot be read is recorded, dead-
 * lettered and given a failed status.
 *
 * Lifecycle (fx_run_state), moved on only by the run's advance function and
 * its sink's settled callback:
 *
 *   FETCHING  tasks to start, or fetches in flight
 *   ACKING    every task done, the dead letter produced: the outputs' sink is
 *             closed and waits for Kafka's acknowledgements
 *   STATUS    the status record produced: its acknowledgement is awaited
 *   DROPPING  abandoned (its partition was revoked, the drain deadline
 *             passed, or the thread drains while the EHR fails): nothing more
 *             is published; the run waits for its fetches and outputs to end
 *   DONE      over: the owner stores the offset when fx_run_committable says
 *             so, and frees the run
 *
 * Every output goes through the run's sink (out/sink.h); a run whose output
 * was not delivered is not committable and has no status: its job runs
 * again (at-least-once).
 *
 * Thread: the run's loop; everything here runs on it. */
#ifndef FX_JOBS_RUN_H
#define FX_JOBS_RUN_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "worker/jobs/fetch.h"
#include "worker/out/out.h"
#include "worker/pool/offsets.h"
#include "worker/pool/services.h"

typedef struct fx_run fx_run;

typedef enum fx_run_state {
  FX_RUN_FETCHING,
  FX_RUN_ACKING,
  FX_RUN_STATUS,
  FX_RUN_DROPPING,
  FX_RUN_DONE
} fx_run_state;

const char *fx_run_state_name(fx_run_state s);

/* What a run needs from its thread. */
typedef struct fx_run_env {
  const fx_services *sv;
  fx_loop *lp;
  fx_out *out;
  fx_fetcher *fetcher;
  /* The run reached DONE (from its loop, never inside a call into it). */
  void (*done)(void *ctx, fx_run *run);
  void *ctx;
} fx_run_env;

/* A run for message m of partition part (the run holds a reference on
 * part). NULL when out of memory (the message is then left unfinished: its
 * partition's offset never passes it). seq orders runs by consumption. */
fx_run *fx_run_new(const fx_run_env *env, fx_partition *part, const rd_kafka_message_t *m,
                   uint64_t seq);
/* Starts it (after the owner has listed it): publishes what a job that
 * cannot run needs, or hands a bulk job over, or waits for fetches. */
void fx_run_start(fx_run *run);

/* The next (patient, type) task as a fetch, or NULL when every task has
 * started. The owner submits it to its fetcher. */
fx_fetch *fx_run_next_fetch(fx_run *run);

/* Gives the run up: nothing more is published, its offset is not stored. */
void fx_run_abandon(fx_run *run);

fx_run_state fx_run_get_state(const fx_run *run);
/* The tenant it fetches for, NULL when its job could not be read. */
const char *fx_run_tenant(const fx_run *run);
/* 1 while it has tasks not yet started (the owner's source asks). */
int fx_run_has_work(const fx_run *run);
/* Its job's deadline (monotonic ms). */
uint64_t fx_run_deadline(const fx_run *run);
uint64_t fx_run_seq(const fx_run *run);
fx_partition *fx_run_partition(const fx_run *run);
int64_t fx_run_offset(const fx_run *run);
/* DONE and every output delivered: its offset may be stored. */
int fx_run_committable(const fx_run *run);

/* For the owner's lists: links it may use freely (the run never reads them). */
typedef struct fx_run_links {
  fx_run *prev, *next;  /* every run of the thread */
  fx_run *ready_next;   /* runs of one tenant with tasks to start */
  void *queue;          /* the owner's: which ready queue holds it, NULL = none */
} fx_run_links;
fx_run_links *fx_run_links_of(fx_run *run);

void fx_run_free(fx_run *run);

#endif
