/* Delayed answers without blocking pool threads: a delayed request suspends
 * its MHD connection and a timer thread resumes it when the delay is over.
 *
 * MHD forbids stopping a daemon with suspended connections, so shutdown
 * resumes every pending connection early and waits (bounded) until their
 * handlers have run again before the daemon is stopped. */
#ifndef SIM_DELAY_H
#define SIM_DELAY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct MHD_Connection;

typedef struct sim_delay_entry sim_delay_entry;

typedef struct sim_delay {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_t thread;
  bool started;
  bool stopping;
  sim_delay_entry *pending; /* sorted by wake time */
  size_t in_flight;         /* suspended, or resumed but handler not yet re-run */
} sim_delay;

int sim_delay_start(sim_delay *d);
/* Called from the access handler. Suspends conn for ms milliseconds and
 * returns true, or returns false (caller answers now) when shutting down. */
bool sim_delay_suspend(sim_delay *d, struct MHD_Connection *conn, long ms);
/* Called when the handler runs again after the resume. */
void sim_delay_resumed(sim_delay *d);
/* Resumes everything, joins the timer thread and waits up to wait_ms for the
 * resumed handlers to run again. */
void sim_delay_stop(sim_delay *d, long wait_ms);
/* Frees the synchronization objects; only after the MHD daemon is stopped,
 * because a late handler may still call sim_delay_resumed until then. */
void sim_delay_destroy(sim_delay *d);

#endif
