/* A Kafka thread: one libuv loop (with its HTTP client and mailbox), one
 * consumer in a group with its queue bridged into the loop, a heartbeat that
 * keeps polling the consumer, and an orderly end. The worker threads that
 * run patient jobs and the bulk thread are both Kafka threads: each brings a
 * role (the callbacks below) that says what a message means, what an
 * assignment or a revocation does, and whether anything is still running.
 *
 * Lifecycle (fx_kthread_state), moved on only by kthread_step():
 *
 *   STARTING    created and subscribed; no assignment yet
 *   RUNNING     assigned at least once; messages go to the role
 *   DRAINING    stop requested: partitions are paused, the role finishes what
 *               it runs, until it is idle or the drain deadline passes (the
 *               role is then told to abandon what is left; a role still not
 *               idle DRAIN_GRACE_MS after that is left anyway, with a warning
 *               naming what it still holds: the stored offsets cover only
 *               finished work, so nothing is lost, it runs again elsewhere)
 *   COMMITTING  the final commit of stored offsets is in flight (roles that
 *               store offsets; retried a few times, each answer awaited 10 s at most)
 *   COMMITTED   committed; waiting for the other threads of its group (a
 *               fx_kthread_group) to commit too, so that no thread's leaving
 *               starts a rebalance that fails another one's final commit
 *               (bounded by worker.drain_timeout_ms)
 *   LEAVING     rd_kafka_consumer_close_queue called; polling until
 *               librdkafka says the consumer is closed
 *   CLOSED      every handle is closing; the loop ends and the thread exits
 *
 * A thread stopped in STARTING leaves at once: nothing ran, nothing is to be
 * committed. (librdkafka 2.0.2 aborts when a cooperative-sticky consumer
 * that never had an assignment is destroyed, confluentinc/librdkafka#4312,
 * fixed in 2.3.0: such a consumer is closed but not destroyed; the process
 * is exiting anyway.)
 *
 * Threads: fx_kthread_new/start/join/free on the supervisor's thread;
 * fx_kthread_stop from any thread; the health getters from any thread;
 * everything else, and every role callback, on the Kafka thread. */
#ifndef FX_POOL_KTHREAD_H
#define FX_POOL_KTHREAD_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "common/loop.h"

typedef struct fx_kthread fx_kthread;

typedef enum fx_kthread_state {
  FX_KT_STARTING,
  FX_KT_RUNNING,
  FX_KT_DRAINING,
  FX_KT_COMMITTING,
  FX_KT_COMMITTED,
  FX_KT_LEAVING,
  FX_KT_CLOSED
} fx_kthread_state;

const char *fx_kthread_state_name(fx_kthread_state s);

typedef struct fx_kthread_role {
  const char *name; /* "worker", "bulk": logs */
  /* A message (errors other than partition EOF are logged here, not passed). */
  void (*on_message)(void *ctx, const rd_kafka_message_t *m);
  /* The end of a partition was reached (needs enable.partition.eof). */
  void (*on_eof)(void *ctx, const char *topic, int32_t partition);
  /* Partitions are being assigned: the role may set their start offsets. */
  void (*on_assign)(void *ctx, rd_kafka_topic_partition_list_t *parts);
  /* After the assignment took effect (the role may pause them). */
  void (*on_assigned)(void *ctx, const rd_kafka_topic_partition_list_t *parts);
  /* Partitions are revoked or lost: the role drops what it holds of them. */
  void (*on_revoke)(void *ctx, const rd_kafka_topic_partition_list_t *parts);
  /* Every 500 ms while the thread runs (after the consumer was polled). */
  void (*on_heartbeat)(void *ctx);
  /* The drain begins: take no new work. */
  void (*on_stop)(void *ctx);
  /* 1 when nothing is left to finish (the drain can end). */
  int (*idle)(void *ctx);
  /* The drain deadline passed: abandon what is left (it runs again elsewhere). */
  void (*on_deadline)(void *ctx);
  /* What keeps the role from being idle, for the warning when the thread
   * leaves without it (optional). */
  void (*busy)(void *ctx, char *buf, size_t n);
  /* The lifecycle moved (optional; on the thread). */
  void (*on_state)(void *ctx, fx_kthread_state from, fx_kthread_state to);
  /* The thread is closing its handles: the role closes its own (timers,
   * HTTP users) on this loop now. */
  void (*on_close)(void *ctx);
  /* 1: commit the stored offsets before leaving (auto-commit groups). */
  int commit_on_close;
} fx_kthread_role;

/* The threads of one process in one consumer group: they leave the group
 * together, once each has made its final commit. */
typedef struct fx_kthread_group fx_kthread_group;
fx_kthread_group *fx_kthread_group_new(void);
void fx_kthread_group_free(fx_kthread_group *g);

typedef struct fx_kthread_conf {
  const fx_config *cfg;   /* kafka section, http section, worker.drain_timeout_ms */
  const char *group_id;
  const char *topic;      /* subscribed */
  const char *const *props; /* extra consumer properties, name/value pairs, NULL-terminated */
  const char *log_client; /* "consumer", "bulk-consumer": the client field of librdkafka's logs */
  fx_kthread_group *group; /* NULL: leaves on its own */
  fx_loop *supervisor;    /* where on_exit is posted */
  void (*on_exit)(void *arg); /* posted to supervisor once the thread's loop ended */
  void *exit_arg;
} fx_kthread_conf;

/* Creates the consumer and the loop (nothing joins the group yet). */
int fx_kthread_new(const fx_kthread_conf *conf, const fx_kthread_role *role, void *ctx,
                   fx_kthread **out, fx_err *err);
/* Subscribes and starts the thread. */
int fx_kthread_start(fx_kthread *kt, fx_err *err);
/* Any thread: begin the drain (posted to the thread's mailbox). */
void fx_kthread_stop(fx_kthread *kt);
/* After on_exit: waits for the thread and frees kt. */
void fx_kthread_join(fx_kthread *kt);
/* Frees a thread that was never started. */
void fx_kthread_free(fx_kthread *kt);

/* On the thread. */
fx_loop *fx_kthread_loop(fx_kthread *kt);
rd_kafka_t *fx_kthread_consumer(fx_kthread *kt);
/* Any thread. */
fx_kthread_state fx_kthread_get_state(const fx_kthread *kt);
/* The role finished something: move the drain on if it can. */
void fx_kthread_check(fx_kthread *kt);
/* Pauses or resumes every assigned partition (backpressure). */
void fx_kthread_pause(fx_kthread *kt, int pause);
int fx_kthread_paused(const fx_kthread *kt);

/* Health, from any thread. */
uint64_t fx_kthread_beat_ms(const fx_kthread *kt);
int fx_kthread_brokers_up(const fx_kthread *kt);
long long fx_kthread_lag(const fx_kthread *kt);
int fx_kthread_assigned(const fx_kthread *kt);

#endif
