/* The shared producer: idempotent, acks=all, compressed. Runs on every
 * thread (rd_kafka_producev is thread-safe and never blocks here: no
 * RD_KAFKA_MSG_F_BLOCK); its delivery reports are served on the main loop.
 *
 * A delivery report decrements its run's output count; the report that
 * brings it to zero posts the run back to its own thread. A failed delivery
 * (after librdkafka's own retries for message.timeout.ms) is produced again,
 * a few times, before the run is marked as not delivered: such a run never
 * releases its offset, so its job is consumed again after a restart. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/pool/pool.h"

#define REPRODUCE_LIMIT 5

/* Opaque of a message produced again after a failed delivery: the low bit
 * tells it apart from a plain run pointer (runs are malloc-aligned). Bit 1
 * marks a bulk export's output (fx_produce_bulk). */
typedef struct retry_tag {
  fx_run *run;
  int attempts;
} retry_tag;

/* Counts one output down. The report that leaves only the guard, while the
 * run waits for its acknowledgements, lets the run publish its status; the
 * one that reaches zero completes the run. Both happen on the run's thread. */
static void output_done(fx_pool *p, fx_run *run) {
  (void)p;
  int before = atomic_fetch_sub(&run->outputs, 1);
  fx_post_fn next = NULL;
  if (before == 1) next = fx_run_complete;
  else if (before == 2 && atomic_exchange(&run->awaiting_acks, 0) == 1) next = fx_run_acked;
  if (next && fx_loop_post(&run->wt->lp, next, run) != 0)
    fx_log(FX_LOG_ERROR, "cannot hand a job back to its thread", "job_id",
           run->job ? run->job->job_id : run->jerr.job_id, NULL);
}

static int purged(rd_kafka_resp_err_t err) {
  return err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  fx_pool *p = opaque;
  uintptr_t tag = (uintptr_t)m->_private;
  if (tag & 2u) { /* a bulk export's output (bulk.c counts and retries its own) */
    if (m->err) {
      atomic_fetch_add(&p->stats.delivery_errors, 1);
      fx_log(FX_LOG_WARN, "bulk export output not delivered", "topic", rd_kafka_topic_name(m->rkt),
             "error", rd_kafka_err2str(m->err), NULL);
    }
    fx_bulk_delivered((void *)(tag & ~(uintptr_t)3u), m->err != 0);
    return;
  }
  retry_tag *rt = (tag & 1u) ? (retry_tag *)(tag & ~(uintptr_t)1u) : NULL;
  fx_run *run = rt ? rt->run : (fx_run *)tag;
  if (!m->err) {
    free(rt);
    output_done(p, run);
    return;
  }
  atomic_fetch_add(&p->stats.delivery_errors, 1);
  int attempts = rt ? rt->attempts : 0;
  if (!purged(m->err) && !atomic_load(&p->force) && attempts < REPRODUCE_LIMIT) {
    fx_log(FX_LOG_WARN, "delivery failed; producing again", "topic", rd_kafka_topic_name(m->rkt),
           "error", rd_kafka_err2str(m->err), NULL);
    if (!rt && !(rt = calloc(1, sizeof *rt))) goto give_up;
    rt->run = run;
    rt->attempts = attempts + 1;
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
      hdrs = rd_kafka_headers_copy(hdrs);
    else
      hdrs = NULL;
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_RKT(m->rkt), RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
        RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs),
        RD_KAFKA_V_OPAQUE((void *)((uintptr_t)rt | 1u)), RD_KAFKA_V_END);
    if (!err) return;
    if (hdrs) rd_kafka_headers_destroy(hdrs);
  }
give_up:
  fx_log(FX_LOG_ERROR,
         "an output was not delivered; its job will not be committed and is consumed again "
         "after a restart",
         "topic", rd_kafka_topic_name(m->rkt), "error", rd_kafka_err2str(m->err), NULL);
  free(rt);
  atomic_store(&run->delivery_failed, 1);
  output_done(p, run);
}

static void on_producer_events(void *arg) {
  fx_pool *p = arg;
  /* Serve up to a batch; if more may be queued, come back next iteration so
   * signals and timers on the main loop still get their turn. */
  int served = 0;
  while (served < 10000) {
    int n = rd_kafka_poll(p->producer, 0);
    if (n <= 0) return;
    served += n;
  }
  fx_kqueue_kick(p->producer_kq);
}

/* Statistics every second (unless configured otherwise): brokers up, for /readyz. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
  (void)rk;
  fx_pool *p = opaque;
  int up = 0;
  fx_kafka_stats_parse(json, len, &up, NULL);
  atomic_store(&p->stats.producer_brokers_up, up);
  return 0; /* librdkafka frees json */
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  fx_log(level <= 3 ? FX_LOG_ERROR : (level <= 4 ? FX_LOG_WARN : FX_LOG_DEBUG), buf, "facility",
         fac, "client", "producer", NULL);
}

int fx_producer_open(fx_pool *p, fx_err *err) {
  rd_kafka_conf_t *conf = NULL;
  int rc = fx_kafka_conf(&p->app.cfg->kafka, FX_KAFKA_PRODUCER, &conf, err);
  if (rc) return rc;
  /* Headroom for key, headers and record overhead under message.max.bytes. */
  size_t max = fx_kafka_max_message(conf);
  p->max_message = max > 16384 ? max - 8192 : max / 2;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_log_cb(conf, on_log);
  rd_kafka_conf_set_stats_cb(conf, on_stats);
  fx_kafka_default_stats_interval(conf);
  rd_kafka_conf_set_opaque(conf, p);
  char why[512];
  p->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
  if (!p->producer) {
    rd_kafka_conf_destroy(conf);
    return fx_err_set(err, FX_EINVAL, "cannot create the Kafka producer: %s", why);
  }
  p->producer_q = rd_kafka_queue_get_main(p->producer);
  rc = fx_kqueue_open(p->main_loop, p->producer_q, on_producer_events, p, &p->producer_kq, err);
  if (rc) {
    rd_kafka_queue_destroy(p->producer_q);
    rd_kafka_destroy(p->producer);
    p->producer = NULL;
  }
  return rc;
}

void fx_producer_close(fx_pool *p) {
  if (!p->producer) return;
  fx_kqueue_close(p->producer_kq); /* NULL when the supervisor closed it already */
  rd_kafka_queue_destroy(p->producer_q);
  rd_kafka_destroy(p->producer);
  p->producer = NULL;
}

int fx_produce(fx_pool *p, fx_run *run, const char *topic, const char *key, char *value,
               size_t value_len, rd_kafka_headers_t *headers) {
  atomic_fetch_add(&run->outputs, 1);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      p->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
      RD_KAFKA_V_VALUE(value, value_len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
      RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(run), RD_KAFKA_V_END);
  if (err) atomic_fetch_sub(&run->outputs, 1); /* not queued: value and headers stay ours */
  return (int)err;
}

int fx_produce_bulk(fx_pool *p, void *obj, const char *topic, const char *key, char *value,
                    size_t value_len, rd_kafka_headers_t *headers) {
  return (int)rd_kafka_producev(
      p->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
      RD_KAFKA_V_VALUE(value, value_len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
      RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE((void *)((uintptr_t)obj | 2u)), RD_KAFKA_V_END);
}
