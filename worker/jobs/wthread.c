/* A worker thread: one libuv loop, one Kafka consumer of the shared group,
 * the jobs of its partitions. Consumer events reach the loop through the
 * queue bridge (common/kafka.h); the rebalance callback runs inside
 * rd_kafka_consumer_poll on this thread. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/pool/pool.h"

#define POLL_BUDGET 500

/* The paused-partitions gauge: this thread's contribution, kept current. */
static void count_paused(fx_wthread *wt) {
  long long mine = wt->paused ? (long long)wt->n_parts : 0;
  atomic_fetch_add(&wt->pool->stats.paused_partitions, mine - wt->paused_counted);
  wt->paused_counted = mine;
  atomic_store(&wt->assigned, (int)wt->n_parts);
}

static fx_partition *find_part(fx_wthread *wt, const char *topic, int32_t partition) {
  for (size_t i = 0; i < wt->n_parts; i++)
    if (wt->parts[i]->partition == partition && strcmp(wt->parts[i]->topic, topic) == 0)
      return wt->parts[i];
  return NULL;
}

static int add_part(fx_wthread *wt, const char *topic, int32_t partition) {
  if (find_part(wt, topic, partition)) return 0;
  if (wt->n_parts == wt->cap_parts) {
    size_t cap = wt->cap_parts ? wt->cap_parts * 2 : 8;
    fx_partition **grown = realloc(wt->parts, cap * sizeof *grown);
    if (!grown) return -1;
    wt->parts = grown;
    wt->cap_parts = cap;
  }
  fx_partition *p = fx_partition_new(topic, partition);
  if (!p) return -1;
  wt->parts[wt->n_parts++] = p;
  return 0;
}

static void drop_part(fx_wthread *wt, const char *topic, int32_t partition) {
  for (size_t i = 0; i < wt->n_parts; i++) {
    fx_partition *p = wt->parts[i];
    if (p->partition != partition || strcmp(p->topic, topic) != 0) continue;
    p->revoked = 1;
    /* Its jobs keep running to free their memory, but publish nothing more
     * and store nothing: the new owner consumes them again. */
    for (fx_run *r = wt->runs; r; r = r->next)
      if (r->part == p) fx_run_abandon(r);
    wt->parts[i] = wt->parts[--wt->n_parts];
    fx_partition_unref(p);
    return;
  }
}

/* Pauses or resumes every partition this thread holds. */
static void set_paused(fx_wthread *wt, int pause) {
  rd_kafka_topic_partition_list_t *l = NULL;
  if (rd_kafka_assignment(wt->consumer, &l) != RD_KAFKA_RESP_ERR_NO_ERROR || !l) return;
  if (l->cnt) {
    if (pause) rd_kafka_pause_partitions(wt->consumer, l);
    else rd_kafka_resume_partitions(wt->consumer, l);
  }
  rd_kafka_topic_partition_list_destroy(l);
  wt->paused = pause;
  count_paused(wt);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  fx_wthread *wt = opaque;
  int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  char n[16];
  snprintf(n, sizeof n, "%d", parts->cnt);
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    wt->assigned_once = 1;
    for (int i = 0; i < parts->cnt; i++)
      if (add_part(wt, parts->elems[i].topic, parts->elems[i].partition) != 0)
        fx_log(FX_LOG_ERROR, "out of memory tracking a partition", NULL);
    rd_kafka_error_t *e = NULL;
    if (cooperative) e = rd_kafka_incremental_assign(rk, parts);
    else rd_kafka_assign(rk, parts);
    if (e) {
      fx_log(FX_LOG_ERROR, "assign failed", "error", rd_kafka_error_string(e), NULL);
      rd_kafka_error_destroy(e);
    }
    /* librdkafka keeps a partition's pause flag across rebalances: a
     * partition paused for backpressure before it was revoked comes back
     * paused. Set the state this thread wants, whatever it was. */
    if (wt->paused || wt->stopping) rd_kafka_pause_partitions(rk, parts);
    else rd_kafka_resume_partitions(rk, parts);
    count_paused(wt);
    fx_log(FX_LOG_INFO, "partitions assigned", "count", n, NULL);
  } else {
    for (int i = 0; i < parts->cnt; i++) drop_part(wt, parts->elems[i].topic, parts->elems[i].partition);
    if (cooperative) {
      rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
      if (e) rd_kafka_error_destroy(e);
    } else {
      rd_kafka_assign(rk, NULL);
    }
    count_paused(wt);
    fx_log(FX_LOG_INFO, "partitions revoked", "count", n, NULL);
  }
}

static void finish_close(fx_wthread *wt);

/* Jobs that count against worker.max_jobs_in_flight: those of tenants whose
 * circuit breaker is open are parked, so a failing tenant's jobs (waiting
 * for the breaker, up to their deadline) do not stop a healthy tenant's
 * jobs from being consumed. Parked jobs are bounded too (8x), by memory. */
static void backpressure(fx_wthread *wt) {
  size_t max = (size_t)wt->pool->app.cfg->worker.max_jobs_in_flight;
  size_t active = 0;
  uint64_t now = fx_now_ms();
  for (fx_run *r = wt->runs; r; r = r->next)
    if (!r->job || !fx_governor_breaker_open(wt->pool->gov, r->job->tenant, now)) active++;
  int full = active >= max || wt->n_runs >= max * 8;
  int drained = active <= max / 2 && wt->n_runs < max * 4;
  if (!wt->paused && full) set_paused(wt, 1);
  else if (wt->paused && drained && !wt->stopping) set_paused(wt, 0);
}

static void handle_message(fx_wthread *wt, rd_kafka_message_t *m) {
  if (m->err) {
    if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
      fx_log(FX_LOG_WARN, "consumer error", "error", rd_kafka_message_errstr(m), NULL);
    return;
  }
  /* Stopping: messages fetched before the pause are left for the next owner.
   * Skipping is safe: no later offset of this partition is tracked, so the
   * stored offset cannot pass this one. */
  if (wt->stopping) return;
  const char *topic = rd_kafka_topic_name(m->rkt);
  fx_partition *part = find_part(wt, topic, m->partition);
  if (!part) {
    /* A message of a partition we no longer own (revoked after fetch). */
    return;
  }
  if (fx_partition_add(part, m->offset) != 0) {
    fx_log(FX_LOG_ERROR, "out of memory tracking an offset; stopping this partition", NULL);
    return;
  }
  fx_run_start(wt, part, m);
  backpressure(wt); /* stop fetching when full; polling goes on */
}

static void on_consumer_events(void *arg) {
  fx_wthread *wt = arg;
  if (wt->closed) return;
  for (int i = 0; i < POLL_BUDGET; i++) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(wt->consumer, 0);
    if (!m) {
      if (wt->left && rd_kafka_consumer_closed(wt->consumer)) finish_close(wt);
      return;
    }
    handle_message(wt, m);
    rd_kafka_message_destroy(m);
  }
  fx_kqueue_kick(wt->ckq);
}

static void on_close_tick(uv_timer_t *t) { on_consumer_events(t->data); }

/* Every 500 ms, whatever the queue bridge says: librdkafka counts a consumer
 * that does not call consumer_poll within max.poll.interval.ms as dead (a
 * paused thread may see no event for that long), and a tenant's breaker
 * opening or closing changes what backpressure allows. */
static void on_heartbeat(uv_timer_t *t) {
  fx_wthread *wt = t->data;
  atomic_store(&wt->beat_ms, fx_now_ms());
  if (!wt->stopping) backpressure(wt);
  on_consumer_events(wt);
}
static void on_commit_retry(uv_timer_t *t);

static void leave_group(fx_wthread *wt);

/* The final commit's answer, served on this thread by consumer_poll. */
static void on_committed(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *offsets, void *opaque) {
  (void)rk;
  fx_wthread *wt = opaque;
  if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET && wt->commit_tries < 10) {
    /* The coordinator may be moving; the drain deadline still bounds this. */
    fx_log(FX_LOG_WARN, "final offset commit failed; trying again", "error", rd_kafka_err2str(err),
           NULL);
    wt->commit_tries++;
    uv_timer_start(&wt->drain_timer, on_commit_retry, 300, 0);
    return;
  }
  if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
    fx_log(FX_LOG_ERROR, "final offset commit failed; finished jobs will be consumed again",
           "error", rd_kafka_err2str(err), NULL);
  else
    fx_log(FX_LOG_INFO, err ? "no new offsets to commit" : "final offsets committed",
           "partitions", offsets ? (offsets->cnt ? "some" : "none") : "none", NULL);
  leave_group(wt);
}

static void commit_stored(fx_wthread *wt) {
  rd_kafka_resp_err_t err = rd_kafka_commit_queue(wt->consumer, NULL, wt->cq, on_committed, wt);
  if (err) on_committed(wt->consumer, err, NULL, wt);
}

static void on_commit_retry(uv_timer_t *t) { commit_stored(t->data); }

/* Closing: commit what finished (explicitly, so a failed commit is seen and
 * retried), then leave the group. Called once no run is left, or after the
 * drain deadline. */
static void begin_close(fx_wthread *wt) {
  if (wt->closing) return;
  wt->closing = 1;
  uv_timer_stop(&wt->drain_timer);
  commit_stored(wt);
  fx_kqueue_kick(wt->ckq);
}

static void leave_group(fx_wthread *wt) {
  uv_timer_stop(&wt->drain_timer);
  /* No run is left (maybe_close checks), so no fetch is queued either. */
  rd_kafka_error_t *e = rd_kafka_consumer_close_queue(wt->consumer, wt->cq);
  if (e) {
    fx_log(FX_LOG_WARN, "consumer close", "error", rd_kafka_error_string(e), NULL);
    rd_kafka_error_destroy(e);
  }
  wt->left = 1;
  /* Closing ends without a final event on the queue: look every 100 ms too. */
  uv_timer_start(&wt->drain_timer, on_close_tick, 0, 100);
}

/* Leaves the group once nothing is left to finish. One more condition works
 * around a librdkafka 2.0.2 bug (confluentinc/librdkafka#4312, fixed in
 * 2.3.0): destroying a cooperative-sticky consumer that never received an
 * assignment trips an assertion and aborts the process. So a worker stopped
 * during its first group join waits for that assignment (normally seconds);
 * only past the drain deadline does it close without one, and then it skips
 * rd_kafka_destroy (the process is exiting anyway). */
static void maybe_close(fx_wthread *wt) {
  if (wt->stopping && !wt->closing && wt->n_runs == 0 && !wt->def_head &&
      (wt->assigned_once || wt->skip_destroy))
    begin_close(wt);
}

void fx_wthread_run_done(fx_wthread *wt) {
  backpressure(wt);
  fx_wthread_pump(wt);
  maybe_close(wt);
}

static void on_drain_deadline(uv_timer_t *t) {
  fx_wthread *wt = t->data;
  if (!wt->assigned_once) {
    fx_log(FX_LOG_WARN,
           "stopping before the consumer group assigned this thread anything; its consumer is "
           "not destroyed (librdkafka 2.0.2 would abort)",
           NULL);
    wt->skip_destroy = 1;
  }
  char n[16];
  snprintf(n, sizeof n, "%zu", wt->n_runs);
  fx_log(FX_LOG_WARN, "drain deadline passed; unfinished jobs are left for redelivery", "jobs", n,
         NULL);
  for (fx_run *r = wt->runs; r; r = r->next) fx_run_abandon(r);
  /* Requests in flight are canceled; their callbacks finish the abandoned tasks. */
  fx_http_close(wt->lp.http);
  wt->lp.http = NULL;
  maybe_close(wt);
}

void fx_wthread_stop(void *arg) {
  fx_wthread *wt = arg;
  if (wt->stopping) return;
  wt->stopping = 1;
  set_paused(wt, 1);
  uv_timer_start(&wt->drain_timer, on_drain_deadline,
                 (uint64_t)wt->pool->app.cfg->worker.drain_timeout_ms, 0);
  maybe_close(wt);
}

static void on_thread_exit_posted(void *arg) {
  fx_pool *p = arg;
  atomic_fetch_sub(&p->threads_running, 1);
}

static void finish_close(fx_wthread *wt) {
  if (wt->closed) return;
  wt->closed = 1;
  fx_kqueue_close(wt->ckq);
  wt->ckq = NULL;
  uv_close((uv_handle_t *)&wt->drain_timer, NULL);
  uv_close((uv_handle_t *)&wt->def_timer, NULL);
  uv_close((uv_handle_t *)&wt->pump_timer, NULL);
  uv_timer_stop(&wt->heartbeat);
  uv_close((uv_handle_t *)&wt->heartbeat, NULL);
  fx_loop_close(&wt->lp);
}

static void thread_main(void *arg) {
  fx_wthread *wt = arg;
  uv_run(&wt->uv, UV_RUN_DEFAULT);
  /* Everything on the loop is closed: the consumer can go. */
  rd_kafka_queue_destroy(wt->cq);
  if (!wt->skip_destroy) rd_kafka_destroy(wt->consumer);
  wt->consumer = NULL;
  for (size_t i = 0; i < wt->n_parts; i++) fx_partition_unref(wt->parts[i]);
  free(wt->parts);
  int rc = uv_loop_close(&wt->uv);
  if (rc) fx_log(FX_LOG_ERROR, "worker loop closed with open handles", NULL);
  if (fx_loop_post(&wt->pool->main_lp, on_thread_exit_posted, wt->pool) != 0)
    atomic_fetch_sub(&wt->pool->threads_running, 1);
}

static int on_consumer_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
  (void)rk;
  fx_wthread *wt = opaque;
  int up = 0;
  long long lag = 0;
  fx_kafka_stats_parse(json, len, &up, &lag);
  atomic_store(&wt->brokers_up, up);
  atomic_store(&wt->lag, lag);
  return 0;
}

static void on_consumer_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  fx_log(level <= 3 ? FX_LOG_ERROR : (level <= 4 ? FX_LOG_WARN : FX_LOG_DEBUG), buf, "facility",
         fac, "client", "consumer", NULL);
}

int fx_wthread_start(fx_pool *p, int index, fx_err *err) {
  fx_wthread *wt = calloc(1, sizeof *wt);
  if (!wt) return fx_err_set(err, FX_ENOMEM, "out of memory");
  wt->pool = p;
  wt->index = index;
  rd_kafka_conf_t *conf = NULL;
  int rc = fx_kafka_conf(&p->app.cfg->kafka, FX_KAFKA_CONSUMER, &conf, err);
  if (!rc) rc = fx_kafka_set(conf, "group.id", p->app.cfg->worker.group_id, err);
  if (rc) {
    if (conf) rd_kafka_conf_destroy(conf);
    free(wt);
    return rc;
  }
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  rd_kafka_conf_set_log_cb(conf, on_consumer_log);
  rd_kafka_conf_set_stats_cb(conf, on_consumer_stats);
  fx_kafka_default_stats_interval(conf);
  rd_kafka_conf_set_opaque(conf, wt);
  char why[512];
  wt->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
  if (!wt->consumer) {
    rd_kafka_conf_destroy(conf);
    free(wt);
    return fx_err_set(err, FX_EINVAL, "cannot create a Kafka consumer: %s", why);
  }
  rd_kafka_poll_set_consumer(wt->consumer);
  wt->cq = rd_kafka_queue_get_consumer(wt->consumer);
  uv_loop_init(&wt->uv);
  rc = fx_loop_init(&wt->lp, &wt->uv, &p->app.cfg->http, err);
  if (!rc) rc = fx_kqueue_open(&wt->uv, wt->cq, on_consumer_events, wt, &wt->ckq, err);
  if (rc) return rc; /* start-up failure: the process exits */
  uv_timer_init(&wt->uv, &wt->drain_timer);
  wt->drain_timer.data = wt;
  uv_timer_init(&wt->uv, &wt->def_timer);
  wt->def_timer.data = wt;
  uv_timer_init(&wt->uv, &wt->pump_timer);
  wt->pump_timer.data = wt;
  uv_timer_init(&wt->uv, &wt->heartbeat);
  wt->heartbeat.data = wt;
  uv_timer_start(&wt->heartbeat, on_heartbeat, 500, 500);
  atomic_store(&wt->beat_ms, fx_now_ms());
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, p->app.cfg->topics.jobs, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t kerr = rd_kafka_subscribe(wt->consumer, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (kerr) return fx_err_set(err, FX_EINVAL, "cannot subscribe to %s: %s", p->app.cfg->topics.jobs,
                              rd_kafka_err2str(kerr));
  p->threads[index] = wt;
  atomic_fetch_add(&p->threads_running, 1);
  if (uv_thread_create(&wt->tid, thread_main, wt) != 0)
    return fx_err_set(err, FX_EIO, "cannot start worker thread %d", index);
  return 0;
}
