#include "tests/sim/delay.h"

#include "tests/sim/util.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <time.h>

struct sim_delay_entry {
  sim_delay_entry *next;
  struct MHD_Connection *conn;
  int64_t wake_ms;
};

static struct timespec abs_deadline(int64_t wake_mono_ms) {
  /* The condition variable uses CLOCK_MONOTONIC (see sim_delay_start). */
  struct timespec ts = {.tv_sec = (time_t)(wake_mono_ms / 1000),
                        .tv_nsec = (long)(wake_mono_ms % 1000) * 1000000L};
  return ts;
}

/* Pops every entry due at `now` (all of them when stopping) into a list the
 * caller resumes after dropping the lock. Lock order is always ours, then
 * MHD's (sim_delay_suspend calls MHD_suspend_connection under ours); the
 * timer thread never calls MHD with ours held, so there is no cycle. */
static sim_delay_entry *take_due(sim_delay *d, int64_t now) {
  sim_delay_entry *due = NULL, **tail = &due;
  while (d->pending && (d->stopping || d->pending->wake_ms <= now)) {
    sim_delay_entry *e = d->pending;
    d->pending = e->next;
    e->next = NULL;
    *tail = e;
    tail = &e->next;
  }
  return due;
}

static void *timer_main(void *arg) {
  sim_delay *d = arg;
  pthread_mutex_lock(&d->lock);
  for (;;) {
    sim_delay_entry *due = take_due(d, sim_mono_ms());
    if (due) {
      pthread_mutex_unlock(&d->lock);
      for (sim_delay_entry *e = due, *next; e; e = next) {
        next = e->next;
        MHD_resume_connection(e->conn);
        free(e);
      }
      pthread_mutex_lock(&d->lock);
      continue;
    }
    if (d->stopping) break;
    if (d->pending) {
      struct timespec ts = abs_deadline(d->pending->wake_ms);
      pthread_cond_timedwait(&d->cond, &d->lock, &ts);
    } else {
      pthread_cond_wait(&d->cond, &d->lock);
    }
  }
  pthread_mutex_unlock(&d->lock);
  return NULL;
}

int sim_delay_start(sim_delay *d) {
  *d = (sim_delay){0};
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&d->lock, NULL);
  pthread_cond_init(&d->cond, &ca);
  pthread_condattr_destroy(&ca);
  if (pthread_create(&d->thread, NULL, timer_main, d) != 0) {
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->lock);
    return -1;
  }
  d->started = true;
  return 0;
}

bool sim_delay_suspend(sim_delay *d, struct MHD_Connection *conn, long ms) {
  sim_delay_entry *e = malloc(sizeof *e);
  if (!e) return false;
  e->conn = conn;
  e->wake_ms = sim_mono_ms() + ms;
  pthread_mutex_lock(&d->lock);
  if (d->stopping) {
    pthread_mutex_unlock(&d->lock);
    free(e);
    return false;
  }
  /* Suspend before the entry becomes visible to the timer thread, so it can
   * never resume a connection that is not suspended yet. */
  MHD_suspend_connection(conn);
  sim_delay_entry **link = &d->pending;
  while (*link && (*link)->wake_ms <= e->wake_ms) link = &(*link)->next;
  e->next = *link;
  *link = e;
  d->in_flight++;
  pthread_cond_signal(&d->cond);
  pthread_mutex_unlock(&d->lock);
  return true;
}

void sim_delay_resumed(sim_delay *d) {
  pthread_mutex_lock(&d->lock);
  d->in_flight--;
  pthread_cond_broadcast(&d->cond);
  pthread_mutex_unlock(&d->lock);
}

void sim_delay_stop(sim_delay *d, long wait_ms) {
  if (!d->started) return;
  pthread_mutex_lock(&d->lock);
  d->stopping = true;
  pthread_cond_broadcast(&d->cond);
  pthread_mutex_unlock(&d->lock);
  pthread_join(d->thread, NULL); /* it resumes everything pending before exiting */

  struct timespec ts = abs_deadline(sim_mono_ms() + wait_ms);
  pthread_mutex_lock(&d->lock);
  while (d->in_flight > 0)
    if (pthread_cond_timedwait(&d->cond, &d->lock, &ts) != 0) break;
  pthread_mutex_unlock(&d->lock);
}

void sim_delay_destroy(sim_delay *d) {
  if (!d->started) return;
  pthread_cond_destroy(&d->cond);
  pthread_mutex_destroy(&d->lock);
  d->started = false;
}
