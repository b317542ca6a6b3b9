#include "worker/out/producer.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/kafka.h"
#include "common/log.h"

/* Events served per turn of the loop before yielding to timers and signals. */
#define EVENT_BUDGET 64

struct fx_producer {
  rd_kafka_t *rk;
  rd_kafka_queue_t *q;
  fx_kqueue *kq;
  size_t max_message;
  atomic_int give_up;
  atomic_ullong delivery_errors;
  atomic_int brokers_up;
  /* Deliveries Kafka acknowledged, counted per output topic (/metrics: what
   * was published, not what was handed to librdkafka). */
  fx_producer_counter counted[FX_PRODUCER_COUNTERS];
  size_t n_counted;
};

static void count_delivered(fx_producer *p, const rd_kafka_message_t *m) {
  if (!p->n_counted) return;
  const char *topic = rd_kafka_topic_name(m->rkt);
  for (size_t i = 0; i < p->n_counted; i++)
    if (strcmp(topic, p->counted[i].topic) == 0) {
      atomic_fetch_add(p->counted[i].count, 1);
      return;
    }
}

void fx_producer_count(fx_producer *p, const fx_producer_counter *c, size_t n) {
  p->n_counted = n < FX_PRODUCER_COUNTERS ? n : FX_PRODUCER_COUNTERS;
  for (size_t i = 0; i < p->n_counted; i++) p->counted[i] = c[i];
}

/* A message produced again after a failed delivery: its sink and how often
 * it was tried. Its opaque is the ticket, not the sink. */
typedef struct ticket {
  uint32_t kind; /* FX_OUT_TICKET */
  int attempts;
  fx_sink *sink;
} ticket;

static int purged(rd_kafka_resp_err_t err) {
  return err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
}

/* Produces m again under a ticket. Returns 0, or -1 when it cannot (the
 * message then counts as not delivered). */
static int reproduce(fx_producer *p, const rd_kafka_message_t *m, fx_sink *s, ticket *t) {
  if (!t) {
    if (!(t = calloc(1, sizeof *t))) return -1;
    t->kind = FX_OUT_TICKET;
    t->sink = s;
  }
  t->attempts++;
  rd_kafka_headers_t *hdrs = NULL;
  if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
    hdrs = rd_kafka_headers_copy(hdrs);
  else
    hdrs = NULL;
  rd_kafka_resp_err_t err = rd_kafka_producev(
      p->rk, RD_KAFKA_V_RKT(m->rkt), RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
      RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(t),
      RD_KAFKA_V_END);
  if (!err) return 0;
  if (hdrs) rd_kafka_headers_destroy(hdrs);
  free(t);
  return -1;
}

/* One delivery report batch. Consecutive messages of one sink (the usual
 * case: a page of one job) are counted down together. */
static void on_dr(fx_producer *p, rd_kafka_event_t *ev, fx_sink_batch *batch) {
  fx_sink *run_sink = NULL;
  int run_n = 0, run_failed = 0;
  const rd_kafka_message_t *m;
  while ((m = rd_kafka_event_message_next(ev))) {
    uint32_t kind = *(const uint32_t *)m->_private;
    ticket *t = kind == FX_OUT_TICKET ? (ticket *)m->_private : NULL;
    fx_sink *s = t ? t->sink : (fx_sink *)m->_private;
    int failed = 0;
    if (m->err) {
      atomic_fetch_add(&p->delivery_errors, 1);
      int attempts = t ? t->attempts : 0;
      if (!purged(m->err) && !atomic_load(&p->give_up) && attempts < FX_PRODUCER_REPRODUCE) {
        fx_log(FX_LOG_WARN, "delivery failed; producing again", "topic",
               rd_kafka_topic_name(m->rkt), "error", rd_kafka_err2str(m->err), NULL);
        if (reproduce(p, m, s, t) == 0) continue; /* still in flight for its sink */
        t = NULL;                                 /* reproduce freed it */
      } else {
        free(t);
        t = NULL;
      }
      fx_log(FX_LOG_ERROR,
             "an output was not delivered; its job will not be committed and is consumed again "
             "after a restart",
             "topic", rd_kafka_topic_name(m->rkt), "error", rd_kafka_err2str(m->err), NULL);
      failed = 1;
    } else {
      count_delivered(p, m);
    }
    free(t);
    if (s != run_sink) {
      if (run_sink) fx_sink_acked_batch(batch, run_sink, run_n, run_failed);
      run_sink = s;
      run_n = 0;
      run_failed = 0;
    }
    run_n++;
    run_failed |= failed;
  }
  if (run_sink) fx_sink_acked_batch(batch, run_sink, run_n, run_failed);
}

static void on_events(void *arg) {
  fx_producer *p = arg;
  fx_sink_batch batch;
  fx_sink_batch_init(&batch);
  int served = 0;
  rd_kafka_event_t *ev = NULL;
  while (served < EVENT_BUDGET && (ev = rd_kafka_queue_poll(p->q, 0))) {
    served++;
    switch (rd_kafka_event_type(ev)) {
    case RD_KAFKA_EVENT_DR: on_dr(p, ev, &batch); break;
    case RD_KAFKA_EVENT_STATS: {
      const char *json = rd_kafka_event_stats(ev);
      int up = 0;
      if (json) fx_kafka_stats_parse(json, strlen(json), &up, NULL);
      atomic_store(&p->brokers_up, up);
      break;
    }
    case RD_KAFKA_EVENT_ERROR:
      fx_log(rd_kafka_event_error_is_fatal(ev) ? FX_LOG_ERROR : FX_LOG_WARN,
             "Kafka producer error", "error", rd_kafka_event_error_string(ev), NULL);
      break;
    default: break;
    }
    rd_kafka_event_destroy(ev);
  }
  /* Every settled sink of this turn goes home now: one wake-up per home. */
  fx_sink_batch_flush(&batch);
  if (served == EVENT_BUDGET && p->kq) fx_kqueue_kick(p->kq);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  fx_log(level <= 3 ? FX_LOG_ERROR : (level <= 4 ? FX_LOG_WARN : FX_LOG_DEBUG), buf, "facility",
         fac, "client", "producer", NULL);
}

int fx_producer_open(const fx_config *cfg, fx_loop *serve, fx_producer **out, fx_err *err) {
  fx_producer *p = calloc(1, sizeof *p);
  if (!p) return fx_err_set(err, FX_ENOMEM, "out of memory");
  rd_kafka_conf_t *conf = NULL;
  int rc = fx_kafka_conf(&cfg->kafka, FX_KAFKA_PRODUCER, &conf, err);
  if (rc) {
    free(p);
    return rc;
  }
  size_t max = fx_kafka_max_message(conf);
  p->max_message = max > 16384 ? max - 8192 : max / 2;
  rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_STATS | RD_KAFKA_EVENT_ERROR);
  rd_kafka_conf_set_log_cb(conf, on_log);
  fx_kafka_default_stats_interval(conf);
  char why[512];
  p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
  if (!p->rk) {
    rd_kafka_conf_destroy(conf);
    free(p);
    return fx_err_set(err, FX_EINVAL, "cannot create the Kafka producer: %s", why);
  }
  p->q = rd_kafka_queue_get_main(p->rk);
  rc = fx_kqueue_open(serve->uv, p->q, on_events, p, &p->kq, err);
  if (rc) {
    rd_kafka_queue_destroy(p->q);
    rd_kafka_destroy(p->rk);
    free(p);
    return rc;
  }
  *out = p;
  return 0;
}

void fx_producer_stop_serving(fx_producer *p) {
  if (p && p->kq) {
    fx_kqueue_close(p->kq);
    p->kq = NULL;
  }
}

void fx_producer_close(fx_producer *p, int flush_ms) {
  if (!p) return;
  fx_producer_stop_serving(p);
  /* Normally nothing is left: every sink settled before its thread ended.
   * What is left has nobody waiting for it any more: wait up to flush_ms for
   * it to reach Kafka, then purge it. (With delivery reports as events,
   * librdkafka counts a message until its report is destroyed, so this
   * serves the queue itself instead of rd_kafka_flush.) The reports only
   * free the producer's tickets: their sinks' owners are gone. */
  uint64_t end = fx_now_ms() + (uint64_t)(flush_ms > 0 ? flush_ms : 0);
  int purged_all = 0;
  while (rd_kafka_outq_len(p->rk) > 0) {
    if (!purged_all && fx_now_ms() >= end) {
      rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
      purged_all = 1;
      end = fx_now_ms() + 1000;
    } else if (purged_all && fx_now_ms() >= end) {
      break;
    }
    rd_kafka_event_t *ev = rd_kafka_queue_poll(p->q, 100);
    if (!ev) continue;
    if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_DR) {
      const rd_kafka_message_t *m;
      while ((m = rd_kafka_event_message_next(ev)))
        if (*(const uint32_t *)m->_private == FX_OUT_TICKET) free(m->_private);
    }
    rd_kafka_event_destroy(ev);
  }
  rd_kafka_queue_destroy(p->q);
  rd_kafka_destroy(p->rk);
  free(p);
}

rd_kafka_resp_err_t fx_producer_send(fx_producer *p, fx_sink *s, const char *topic,
                                     const char *key, size_t key_len, char *value, size_t len,
                                     rd_kafka_headers_t *headers) {
  fx_sink_add(s);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? key_len : 0),
      RD_KAFKA_V_VALUE(value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
      RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(s), RD_KAFKA_V_END);
  /* Not queued: value and headers stay the caller's, and s is as it was.
   * (s cannot settle here: its owner still holds it open.) */
  if (err) atomic_fetch_sub(&s->outputs, 1);
  return err;
}

void fx_producer_give_up(fx_producer *p) {
  atomic_store(&p->give_up, 1);
  rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
}

size_t fx_producer_max_message(const fx_producer *p) { return p->max_message; }

unsigned long long fx_producer_delivery_errors(const fx_producer *p) {
  return atomic_load(&p->delivery_errors);
}

int fx_producer_brokers_up(const fx_producer *p) { return atomic_load(&p->brokers_up); }
