#include "worker/kclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kafka.h"

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  fx_kproducer *kp = opaque;
  if (!m->err) {
    kp->delivered++;
    return;
  }
  if (!kp->failed++)
    snprintf(kp->first_error, sizeof kp->first_error, "%s", rd_kafka_err2str(m->err));
}

int fx_kproducer_open(fx_kproducer *kp, const fx_config *cfg, fx_err *err) {
  memset(kp, 0, sizeof *kp);
  rd_kafka_conf_t *conf = NULL;
  int rc = fx_kafka_conf(&cfg->kafka, FX_KAFKA_PRODUCER, &conf, err);
  if (rc) return rc;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_opaque(conf, kp);
  char why[512];
  kp->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
  if (!kp->rk) {
    rd_kafka_conf_destroy(conf);
    return fx_err_set(err, FX_EINVAL, "cannot create a Kafka producer: %s", why);
  }
  return 0;
}

int fx_kproducer_send(fx_kproducer *kp, const char *topic, const char *key, const char *value,
                      size_t len, rd_kafka_headers_t *headers, fx_err *err) {
  for (;;) {
    rd_kafka_resp_err_t e = rd_kafka_producev(
        kp->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
        RD_KAFKA_V_VALUE((void *)(uintptr_t)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_END);
    if (!e) return 0;
    if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      if (headers) rd_kafka_headers_destroy(headers);
      return fx_err_set(err, FX_EIO, "cannot produce to %s: %s", topic, rd_kafka_err2str(e));
    }
    rd_kafka_poll(kp->rk, 100); /* a CLI may wait for room */
  }
}

int fx_kproducer_flush(fx_kproducer *kp, int timeout_ms) {
  rd_kafka_flush(kp->rk, timeout_ms);
  return rd_kafka_outq_len(kp->rk);
}

void fx_kproducer_close(fx_kproducer *kp) {
  if (kp->rk) rd_kafka_destroy(kp->rk);
  kp->rk = NULL;
}

int fx_kread_all(const fx_config *cfg, const char *topic, fx_kread_fn fn, void *arg,
                 int timeout_ms, fx_err *err) {
  rd_kafka_conf_t *conf = NULL;
  int rc = fx_kafka_conf(&cfg->kafka, FX_KAFKA_CONSUMER, &conf, err);
  if (!rc) rc = fx_kafka_set(conf, "group.id", "fhirx-reader-unused", err);
  if (!rc) rc = fx_kafka_set(conf, "enable.auto.commit", "false", err);
  if (rc) {
    if (conf) rd_kafka_conf_destroy(conf);
    return rc;
  }
  char why[512];
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    return fx_err_set(err, FX_EINVAL, "cannot create a Kafka consumer: %s", why);
  }
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
  const rd_kafka_metadata_t *md = NULL;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
  rd_kafka_topic_destroy(rkt);
  if (e || md->topic_cnt != 1 || md->topics[0].err) {
    rc = fx_err_set(err, FX_EIO, "cannot read the partitions of %s: %s", topic,
                    rd_kafka_err2str(e ? e : (md && md->topic_cnt ? md->topics[0].err : e)));
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    return rc;
  }
  int n = md->topics[0].partition_cnt;
  int64_t *high = calloc((size_t)n, sizeof *high);
  int64_t *next = calloc((size_t)n, sizeof *next);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
  int remaining = 0;
  for (int i = 0; i < n && high && next; i++) {
    int32_t part = md->topics[0].partitions[i].id;
    int64_t lo = 0, hi = 0;
    rd_kafka_query_watermark_offsets(rk, topic, part, &lo, &hi, timeout_ms);
    high[i] = hi;
    next[i] = lo;
    if (hi > lo) {
      rd_kafka_topic_partition_list_add(l, topic, part)->offset = lo;
      remaining++;
    }
  }
  rd_kafka_metadata_destroy(md);
  if (remaining) rd_kafka_assign(rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  int idle = 0;
  while (remaining > 0 && idle < timeout_ms) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
    if (!m) {
      idle += 100;
      continue;
    }
    idle = 0;
    if (!m->err && m->partition >= 0 && m->partition < n) {
      fn(m, arg);
      if (m->offset + 1 >= high[m->partition] && next[m->partition] < high[m->partition]) {
        next[m->partition] = high[m->partition];
        remaining--;
      }
    }
    rd_kafka_message_destroy(m);
  }
  if (remaining > 0) rc = fx_err_set(err, FX_EIO, "timed out reading %s", topic);
  free(high);
  free(next);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return rc;
}
