#include "worker/pool/kthread.h"

#include <pthread.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kafka.h"
#include "common/log.h"

/* Messages served per turn of the loop before yielding. */
#define POLL_BUDGET 500
#define HEARTBEAT_MS 500
#define COMMIT_TRIES 10
#define COMMIT_RETRY_MS 300
#define COMMIT_WAIT_MS 10000 /* for one commit's answer */
#define CLOSE_TICK_MS 100
/* After the drain deadline, how long a role gets to drop what it holds. */
#define DRAIN_GRACE_MS 5000
#define GROUP_MAX 256

struct fx_kthread_group {
  pthread_mutex_t mu;
  fx_kthread *members[GROUP_MAX];
  size_t n;
  size_t committed;
};

struct fx_kthread {
  const fx_kthread_role *role;
  void *ctx;
  const fx_config *cfg;
  char *topic;
  char *log_client;
  fx_loop *supervisor;
  void (*on_exit)(void *arg);
  void *exit_arg;

  uv_thread_t tid;
  uv_loop_t uv;
  fx_loop lp;
  rd_kafka_t *consumer;
  rd_kafka_queue_t *cq;
  fx_kqueue *ckq;
  uv_timer_t heartbeat, timer; /* timer: drain deadline, commit retry, close ticks */
  fx_kthread_group *group;
  int counted;          /* this thread's final commit counted in its group */

  fx_kthread_state state;
  atomic_int state_any; /* state, for other threads */
  int cooperative_unassigned; /* cooperative and never assigned: see kthread.h on #4312 */
  int commit_tries;
  int paused;
  int deadline_passed;
  int forced_idle; /* the grace after the deadline passed: leave, idle or not */
  int left_unclosed; /* librdkafka never said the consumer closed: do not close it again */
  uint64_t leave_by_ms; /* LEAVING gives up waiting for librdkafka after this */

  atomic_ullong beat_ms;
  atomic_int brokers_up;
  atomic_llong lag;
  atomic_int assigned;
};

static const char *const state_names[] = {"starting",  "running", "draining", "committing",
                                          "committed", "leaving", "closed"};

const char *fx_kthread_state_name(fx_kthread_state s) { return state_names[s]; }

static void step(fx_kthread *kt);
static void check_left(fx_kthread *kt);

/* Every transition goes through here: the role may watch them (tests, logs). */
static void set_state(fx_kthread *kt, fx_kthread_state to) {
  fx_kthread_state from = kt->state;
  kt->state = to;
  atomic_store(&kt->state_any, (int)to);
  /* The way out, step by step: a hang at exit shows where it stopped. */
  if (to >= FX_KT_DRAINING && from != to)
    fx_log(FX_LOG_INFO, "Kafka thread stopping", "client", kt->log_client, "state",
           state_names[to], NULL);
  if (kt->role->on_state && from != to) kt->role->on_state(kt->ctx, from, to);
}

/* ---- partitions ----------------------------------------------------------- */

/* How many partitions this thread holds, kept from the rebalance callbacks'
 * own lists. Not rd_kafka_assignment(): it waits for librdkafka's main
 * thread to answer, and during a consumer close that answer may never come
 * (CI saw a worker hang in a revoke callback on it, never exiting). */
static void count_assigned(fx_kthread *kt, rd_kafka_resp_err_t err, int cooperative, int cnt) {
  int n = atomic_load(&kt->assigned);
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) n = cooperative ? n + cnt : cnt;
  else n = cooperative && n > cnt ? n - cnt : 0;
  atomic_store(&kt->assigned, n);
}

void fx_kthread_pause(fx_kthread *kt, int pause) {
  /* Leaving, nothing is consumed any more; and rd_kafka_assignment() may
   * wait forever on a consumer being closed (count_assigned). */
  if (kt->state >= FX_KT_LEAVING) return;
  rd_kafka_topic_partition_list_t *l = NULL;
  if (rd_kafka_assignment(kt->consumer, &l) != RD_KAFKA_RESP_ERR_NO_ERROR || !l) return;
  if (l->cnt) {
    if (pause) rd_kafka_pause_partitions(kt->consumer, l);
    else rd_kafka_resume_partitions(kt->consumer, l);
  }
  rd_kafka_topic_partition_list_destroy(l);
  kt->paused = pause;
}

int fx_kthread_paused(const fx_kthread *kt) { return kt->paused; }

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  fx_kthread *kt = opaque;
  int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  char n[16];
  snprintf(n, sizeof n, "%d", parts->cnt);
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    kt->cooperative_unassigned = 0;
    if (kt->role->on_assign) kt->role->on_assign(kt->ctx, parts);
    rd_kafka_error_t *e = NULL;
    if (cooperative) e = rd_kafka_incremental_assign(rk, parts);
    else rd_kafka_assign(rk, parts);
    if (e) {
      fx_log(FX_LOG_ERROR, "assign failed", "client", kt->log_client, "error",
             rd_kafka_error_string(e), NULL);
      rd_kafka_error_destroy(e);
    }
    /* librdkafka keeps a partition's pause flag across rebalances: one
     * paused before it was revoked comes back paused. Set what this thread
     * wants, whatever it was. */
    if (kt->paused || kt->state >= FX_KT_DRAINING) rd_kafka_pause_partitions(rk, parts);
    else rd_kafka_resume_partitions(rk, parts);
    if (kt->state == FX_KT_STARTING) set_state(kt, FX_KT_RUNNING);
    if (kt->role->on_assigned) kt->role->on_assigned(kt->ctx, parts);
    fx_log(FX_LOG_INFO, "partitions assigned", "client", kt->log_client, "count", n, NULL);
  } else {
    if (kt->role->on_revoke) kt->role->on_revoke(kt->ctx, parts);
    if (cooperative) {
      rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
      if (e) rd_kafka_error_destroy(e);
    } else {
      rd_kafka_assign(rk, NULL);
    }
    fx_log(FX_LOG_INFO, "partitions revoked", "client", kt->log_client, "count", n, NULL);
  }
  count_assigned(kt, err, cooperative, parts->cnt);
}

/* ---- the consumer queue --------------------------------------------------- */

static void on_consumer_events(void *arg) {
  fx_kthread *kt = arg;
  if (kt->state == FX_KT_CLOSED) return;
  for (int i = 0; i < POLL_BUDGET; i++) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(kt->consumer, 0);
    if (!m) {
      if (kt->state == FX_KT_LEAVING) check_left(kt);
      return;
    }
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      /* (A thread still starting has no partitions, so no EOF either.) */
      if (kt->role->on_eof && kt->state == FX_KT_RUNNING)
        kt->role->on_eof(kt->ctx, rd_kafka_topic_name(m->rkt), m->partition);
    } else if (m->err) {
      fx_log(FX_LOG_WARN, "consumer error", "client", kt->log_client, "error",
             rd_kafka_message_errstr(m), NULL);
    } else if (kt->state == FX_KT_RUNNING) {
      /* Draining: what was fetched before the pause is left for the next
       * owner. Skipping is safe: nothing later of its partition is tracked,
       * so no stored offset can pass it. */
      kt->role->on_message(kt->ctx, m);
    }
    rd_kafka_message_destroy(m);
  }
  fx_kqueue_kick(kt->ckq);
}

/* Every 500 ms, whatever the queue bridge says: librdkafka counts a consumer
 * that does not call consumer_poll within max.poll.interval.ms as gone (a
 * paused thread may see no event for that long), and roles re-check what
 * time changes (breakers, deadlines). */
static void on_heartbeat(uv_timer_t *t) {
  fx_kthread *kt = t->data;
  atomic_store(&kt->beat_ms, fx_now_ms());
  if (kt->state <= FX_KT_DRAINING && kt->role->on_heartbeat) kt->role->on_heartbeat(kt->ctx);
  on_consumer_events(kt);
  if (kt->state == FX_KT_DRAINING) step(kt); /* a role may get idle without saying so */
}

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
  (void)rk;
  fx_kthread *kt = opaque;
  int up = 0;
  long long lag = 0;
  fx_kafka_stats_parse(json, len, &up, &lag);
  atomic_store(&kt->brokers_up, up);
  atomic_store(&kt->lag, lag);
  return 0; /* librdkafka frees json */
}

/* ---- the end -------------------------------------------------------------- */

static void on_timer_step(uv_timer_t *t) { step(t->data); }

/* Leaves the group: rd_kafka_consumer_close_queue, then poll until closed. */
static void leave(fx_kthread *kt) {
  set_state(kt, FX_KT_LEAVING);
  kt->leave_by_ms = fx_now_ms() + (uint64_t)kt->cfg->worker.drain_timeout_ms;
  rd_kafka_error_t *e = rd_kafka_consumer_close_queue(kt->consumer, kt->cq);
  if (e) {
    fx_log(FX_LOG_WARN, "consumer close", "client", kt->log_client, "error",
           rd_kafka_error_string(e), NULL);
    rd_kafka_error_destroy(e);
  }
  /* Closing ends without a final event on the queue: look every 100 ms too. */
  uv_timer_start(&kt->timer, on_timer_step, 0, CLOSE_TICK_MS);
}

fx_kthread_group *fx_kthread_group_new(void) {
  fx_kthread_group *g = calloc(1, sizeof *g);
  if (g) pthread_mutex_init(&g->mu, NULL);
  return g;
}

void fx_kthread_group_free(fx_kthread_group *g) {
  if (!g) return;
  pthread_mutex_destroy(&g->mu);
  free(g);
}

static void on_group_done(void *arg) {
  fx_kthread *kt = arg;
  if (kt->state == FX_KT_COMMITTED) leave(kt);
}

/* This thread committed (or has nothing to commit): it leaves once every
 * member of its group has committed. The last one to get here lets them all
 * go, each on its own loop. */
static void committed(fx_kthread *kt) {
  if (!kt->group) {
    leave(kt);
    return;
  }
  set_state(kt, FX_KT_COMMITTED);
  uv_timer_start(&kt->timer, on_timer_step, (uint64_t)kt->cfg->worker.drain_timeout_ms, 0);
  fx_kthread_group *g = kt->group;
  pthread_mutex_lock(&g->mu);
  if (!kt->counted) {
    kt->counted = 1;
    g->committed++;
  }
  int all = g->committed == g->n;
  pthread_mutex_unlock(&g->mu);
  if (!all) return;
  for (size_t i = 0; i < g->n; i++)
    if (fx_loop_post(&g->members[i]->lp, on_group_done, g->members[i]) != 0 && g->members[i] == kt)
      leave(kt);
}

static void on_committed(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *offsets, void *opaque) {
  (void)rk;
  fx_kthread *kt = opaque;
  if (kt->state != FX_KT_COMMITTING) return; /* the answer came after its wait ended */
  uv_timer_stop(&kt->timer);
  if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET && ++kt->commit_tries < COMMIT_TRIES) {
    /* The coordinator may be moving; the supervisor's purge still bounds this. */
    fx_log(FX_LOG_WARN, "final offset commit failed; trying again", "client", kt->log_client,
           "error", rd_kafka_err2str(err), NULL);
    uv_timer_start(&kt->timer, on_timer_step, COMMIT_RETRY_MS, 0);
    return;
  }
  if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
    fx_log(FX_LOG_ERROR, "final offset commit failed; finished jobs will be consumed again",
           "client", kt->log_client, "error", rd_kafka_err2str(err), NULL);
  else
    fx_log(FX_LOG_INFO, err ? "no new offsets to commit" : "final offsets committed", "client",
           kt->log_client, "partitions", offsets && offsets->cnt ? "some" : "none", NULL);
  committed(kt);
}

/* The commit's answer never came (no coordinator, a request librdkafka keeps
 * retrying): the offsets are not committed, so their jobs run again; at
 * least once still holds. */
static void on_commit_wait(uv_timer_t *t) {
  fx_kthread *kt = t->data;
  if (kt->state != FX_KT_COMMITTING) return;
  fx_log(FX_LOG_ERROR, "the final offset commit got no answer in time; finished jobs will be "
         "consumed again", "client", kt->log_client, NULL);
  committed(kt);
}

static void commit(fx_kthread *kt) {
  uv_timer_start(&kt->timer, on_commit_wait, COMMIT_WAIT_MS, 0);
  rd_kafka_resp_err_t err = rd_kafka_commit_queue(kt->consumer, NULL, kt->cq, on_committed, kt);
  if (err) on_committed(kt->consumer, err, NULL, kt);
}

static void close_handles(fx_kthread *kt) {
  set_state(kt, FX_KT_CLOSED);
  if (kt->role->on_close) kt->role->on_close(kt->ctx);
  fx_kqueue_close(kt->ckq);
  kt->ckq = NULL;
  uv_timer_stop(&kt->heartbeat);
  uv_timer_stop(&kt->timer);
  uv_close((uv_handle_t *)&kt->heartbeat, NULL);
  uv_close((uv_handle_t *)&kt->timer, NULL);
  fx_loop_close(&kt->lp);
}

/* DRAINING after the deadline and its grace: the role never got idle (a
 * request its callbacks never ended, an output the producer never settled).
 * Leave anyway: what it holds was never stored as done. */
static void on_grace(uv_timer_t *t) {
  fx_kthread *kt = t->data;
  if (kt->state != FX_KT_DRAINING) return;
  char what[256] = "";
  if (kt->role->busy) kt->role->busy(kt->ctx, what, sizeof what);
  fx_log(FX_LOG_WARN, "still busy after the drain deadline; leaving anyway (unfinished work runs "
         "again elsewhere)", "client", kt->log_client, "busy", what[0] ? what : "unknown", NULL);
  kt->forced_idle = 1;
  step(kt);
}

static void on_deadline(uv_timer_t *t) {
  fx_kthread *kt = t->data;
  if (kt->state != FX_KT_DRAINING) return;
  kt->deadline_passed = 1;
  fx_log(FX_LOG_WARN, "drain deadline passed; what is unfinished runs again elsewhere", "client",
         kt->log_client, NULL);
  if (kt->role->on_deadline) kt->role->on_deadline(kt->ctx);
  /* Requests in flight are canceled; their callbacks let the role finish. */
  fx_http_close(kt->lp.http);
  kt->lp.http = NULL;
  step(kt);
  if (kt->state == FX_KT_DRAINING) uv_timer_start(&kt->timer, on_grace, DRAIN_GRACE_MS, 0);
}

/* LEAVING: the consumer's queue is served; has librdkafka closed it? */
static void check_left(fx_kthread *kt) {
  if (rd_kafka_consumer_closed(kt->consumer)) {
    close_handles(kt);
  } else if (fx_now_ms() > kt->leave_by_ms) {
    fx_log(FX_LOG_WARN, "the consumer did not finish leaving its group in time; closing anyway",
           "client", kt->log_client, NULL);
    kt->left_unclosed = 1;
    close_handles(kt);
  }
}

/* The one place the state moves on. */
static void step(fx_kthread *kt) {
  switch (kt->state) {
  case FX_KT_STARTING:
  case FX_KT_RUNNING:
  case FX_KT_CLOSED: return;
  case FX_KT_DRAINING:
    if (!kt->forced_idle && !kt->role->idle(kt->ctx)) return;
    uv_timer_stop(&kt->timer);
    if (kt->role->commit_on_close && !kt->cooperative_unassigned) {
      set_state(kt, FX_KT_COMMITTING);
      commit(kt);
    } else {
      committed(kt); /* nothing stored (never assigned, or a role that stores nothing) */
    }
    return;
  case FX_KT_COMMITTING: /* a retry of the final commit is due */
    commit(kt);
    return;
  case FX_KT_COMMITTED: /* the others did not commit in time: leave anyway */
    fx_log(FX_LOG_WARN, "other threads did not finish their final commit in time; leaving",
           "client", kt->log_client, NULL);
    leave(kt);
    return;
  case FX_KT_LEAVING:
    on_consumer_events(kt); /* serve what the close put on the queue; then check_left */
    return;
  }
}

void fx_kthread_check(fx_kthread *kt) {
  if (kt->state == FX_KT_DRAINING) step(kt);
}

static void on_stop(void *arg) {
  fx_kthread *kt = arg;
  if (kt->state >= FX_KT_DRAINING) return;
  int never_assigned = kt->state == FX_KT_STARTING;
  set_state(kt, FX_KT_DRAINING);
  fx_kthread_pause(kt, 1);
  if (kt->role->on_stop) kt->role->on_stop(kt->ctx);
  if (!never_assigned)
    uv_timer_start(&kt->timer, on_deadline, (uint64_t)kt->cfg->worker.drain_timeout_ms, 0);
  step(kt);
}

void fx_kthread_stop(fx_kthread *kt) {
  if (fx_loop_post(&kt->lp, on_stop, kt) != 0)
    fx_log(FX_LOG_WARN, "a Kafka thread could not be told to stop (its loop is closed)", NULL);
}

static void thread_main(void *arg) {
  fx_kthread *kt = arg;
  uv_run(&kt->uv, UV_RUN_DEFAULT);
  /* Everything on the loop is closed: the consumer can go. */
  rd_kafka_queue_destroy(kt->cq);
  kt->cq = NULL;
  if (!kt->cooperative_unassigned) {
    /* A consumer whose close did not finish would be closed again by a plain
     * rd_kafka_destroy, which blocks until it is. */
    rd_kafka_destroy_flags(kt->consumer,
                           kt->left_unclosed ? RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE : 0);
    kt->consumer = NULL;
  }
  if (uv_loop_close(&kt->uv))
    fx_log(FX_LOG_ERROR, "a Kafka thread's loop closed with open handles", "client",
           kt->log_client, NULL);
  if (!kt->on_exit) return;
  if (fx_loop_post(kt->supervisor, kt->on_exit, kt->exit_arg) != 0) kt->on_exit(kt->exit_arg);
}

/* ---- creation ------------------------------------------------------------- */

static void on_consumer_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  const fx_kthread *kt = rd_kafka_opaque(rk);
  fx_log(level <= 3 ? FX_LOG_ERROR : (level <= 4 ? FX_LOG_WARN : FX_LOG_DEBUG), buf, "facility",
         fac, "client", kt ? kt->log_client : "consumer", NULL);
}

int fx_kthread_new(const fx_kthread_conf *conf, const fx_kthread_role *role, void *ctx,
                   fx_kthread **out, fx_err *err) {
  fx_kthread *kt = calloc(1, sizeof *kt);
  if (!kt || !(kt->topic = strdup(conf->topic)) ||
      !(kt->log_client = strdup(conf->log_client ? conf->log_client : "consumer"))) {
    if (kt) free(kt->topic);
    free(kt);
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  }
  kt->role = role;
  kt->ctx = ctx;
  kt->cfg = conf->cfg;
  kt->supervisor = conf->supervisor;
  kt->group = conf->group;
  if (kt->group) {
    pthread_mutex_lock(&kt->group->mu);
    if (kt->group->n < GROUP_MAX) kt->group->members[kt->group->n++] = kt;
    else kt->group = NULL;
    pthread_mutex_unlock(&kt->group->mu);
  }
  kt->on_exit = conf->on_exit;
  kt->exit_arg = conf->exit_arg;
  rd_kafka_conf_t *kc = NULL;
  int rc = fx_kafka_conf(&conf->cfg->kafka, FX_KAFKA_CONSUMER, &kc, err);
  if (!rc) rc = fx_kafka_set(kc, "group.id", conf->group_id, err);
  for (size_t i = 0; !rc && conf->props && conf->props[i]; i += 2)
    rc = fx_kafka_set(kc, conf->props[i], conf->props[i + 1], err);
  if (rc) {
    if (kc) rd_kafka_conf_destroy(kc);
    fx_kthread_free(kt);
    return rc;
  }
  char strategy[64] = "";
  size_t len = sizeof strategy;
  rd_kafka_conf_get(kc, "partition.assignment.strategy", strategy, &len);
  kt->cooperative_unassigned = strstr(strategy, "cooperative") != NULL;
  rd_kafka_conf_set_rebalance_cb(kc, on_rebalance);
  rd_kafka_conf_set_log_cb(kc, on_consumer_log);
  rd_kafka_conf_set_stats_cb(kc, on_stats);
  fx_kafka_default_stats_interval(kc);
  rd_kafka_conf_set_opaque(kc, kt);
  char why[512];
  kt->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, kc, why, sizeof why);
  if (!kt->consumer) {
    rd_kafka_conf_destroy(kc);
    fx_kthread_free(kt);
    return fx_err_set(err, FX_EINVAL, "cannot create a Kafka consumer: %s", why);
  }
  rd_kafka_poll_set_consumer(kt->consumer);
  kt->cq = rd_kafka_queue_get_consumer(kt->consumer);
  uv_loop_init(&kt->uv);
  rc = fx_loop_init(&kt->lp, &kt->uv, &conf->cfg->http, err);
  if (!rc) rc = fx_kqueue_open(&kt->uv, kt->cq, on_consumer_events, kt, &kt->ckq, err);
  if (rc) {
    fx_kthread_free(kt);
    return rc;
  }
  uv_timer_init(&kt->uv, &kt->heartbeat);
  kt->heartbeat.data = kt;
  uv_timer_init(&kt->uv, &kt->timer);
  kt->timer.data = kt;
  kt->state = FX_KT_STARTING;
  atomic_store(&kt->beat_ms, fx_now_ms());
  *out = kt;
  return 0;
}

int fx_kthread_start(fx_kthread *kt, fx_err *err) {
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, kt->topic, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t kerr = rd_kafka_subscribe(kt->consumer, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (kerr)
    return fx_err_set(err, FX_EINVAL, "cannot subscribe to %s: %s", kt->topic,
                      rd_kafka_err2str(kerr));
  uv_timer_start(&kt->heartbeat, on_heartbeat, HEARTBEAT_MS, HEARTBEAT_MS);
  if (uv_thread_create(&kt->tid, thread_main, kt) != 0)
    return fx_err_set(err, FX_EIO, "cannot start a Kafka thread");
  return 0;
}

void fx_kthread_join(fx_kthread *kt) {
  if (!kt) return;
  uv_thread_join(&kt->tid);
  if (kt->consumer) {
    /* Closed but not destroyed (librdkafka #4312, kthread.h): its threads
     * live on until the process exits and may still call our callbacks,
     * whose opaque is kt. So kt stays too: a deliberate, bounded leak of a
     * process that is exiting, hidden from LeakSanitizer. */
#if defined(__SANITIZE_ADDRESS__)
    __lsan_ignore_object(kt);
#endif
    return;
  }
  free(kt->topic);
  free(kt->log_client);
  free(kt);
}

/* A thread never started: everything is closed here, on the caller's thread. */
void fx_kthread_free(fx_kthread *kt) {
  if (!kt) return;
  if (kt->consumer) {
    if (kt->ckq) {
      fx_kqueue_close(kt->ckq);
      uv_close((uv_handle_t *)&kt->heartbeat, NULL);
      uv_close((uv_handle_t *)&kt->timer, NULL);
      fx_loop_close(&kt->lp);
      uv_run(&kt->uv, UV_RUN_DEFAULT);
      uv_loop_close(&kt->uv);
    }
    if (kt->cq) rd_kafka_queue_destroy(kt->cq);
    rd_kafka_consumer_close(kt->consumer); /* never subscribed: returns at once */
    rd_kafka_destroy(kt->consumer);
  }
  free(kt->topic);
  free(kt->log_client);
  free(kt);
}

fx_loop *fx_kthread_loop(fx_kthread *kt) { return &kt->lp; }
rd_kafka_t *fx_kthread_consumer(fx_kthread *kt) { return kt->consumer; }
fx_kthread_state fx_kthread_get_state(const fx_kthread *kt) {
  return (fx_kthread_state)atomic_load(&kt->state_any);
}
uint64_t fx_kthread_beat_ms(const fx_kthread *kt) { return atomic_load(&kt->beat_ms); }
int fx_kthread_brokers_up(const fx_kthread *kt) { return atomic_load(&kt->brokers_up); }
long long fx_kthread_lag(const fx_kthread *kt) { return atomic_load(&kt->lag); }
int fx_kthread_assigned(const fx_kthread *kt) { return atomic_load(&kt->assigned); }
