#include "worker/cli/kclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kafka.h"
#include "common/strutil.h"

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

/* A consumer in a group nobody joins: reading and asking for committed
 * offsets need a group.id, committing is off. */
static rd_kafka_t *plain_consumer(const fx_config *cfg, const char *group, fx_err *err) {
  rd_kafka_conf_t *conf = NULL;
  int rc = fx_kafka_conf(&cfg->kafka, FX_KAFKA_CONSUMER, &conf, err);
  if (!rc) rc = fx_kafka_set(conf, "group.id", group, err);
  if (!rc) rc = fx_kafka_set(conf, "enable.auto.commit", "false", err);
  if (!rc) rc = fx_kafka_set(conf, "enable.partition.eof", "true", err);
  if (rc) {
    if (conf) rd_kafka_conf_destroy(conf);
    return NULL;
  }
  char why[512];
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    fx_err_set(err, FX_EINVAL, "cannot create a Kafka consumer: %s", why);
  }
  return rk;
}

/* The partition ids of topic, sorted. */
static int partitions_of(rd_kafka_t *rk, const char *topic, int timeout_ms, int32_t **ids,
                         int *n, fx_err *err) {
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
  const rd_kafka_metadata_t *md = NULL;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
  rd_kafka_topic_destroy(rkt);
  if (!e && (md->topic_cnt != 1 || md->topics[0].err)) e = md->topic_cnt ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
  if (!e && md->topics[0].partition_cnt == 0) e = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
  if (e) {
    if (md) rd_kafka_metadata_destroy(md);
    return fx_err_set(err, FX_EIO, "cannot read the partitions of %s: %s (is the topic created "
                      "and kafka.bootstrap.servers right?)", topic, rd_kafka_err2str(e));
  }
  *n = md->topics[0].partition_cnt;
  *ids = calloc((size_t)*n, sizeof **ids);
  for (int i = 0; *ids && i < *n; i++) (*ids)[i] = md->topics[0].partitions[i].id;
  rd_kafka_metadata_destroy(md);
  if (!*ids) return fx_err_set(err, FX_ENOMEM, "out of memory");
  for (int i = 1; i < *n; i++) /* insertion sort: a handful of partitions */
    for (int j = i; j > 0 && (*ids)[j - 1] > (*ids)[j]; j--) {
      int32_t t = (*ids)[j];
      (*ids)[j] = (*ids)[j - 1];
      (*ids)[j - 1] = t;
    }
  return 0;
}

int fx_kwatermarks(rd_kafka_t *rk, const char *topic, int timeout_ms,
                   rd_kafka_topic_partition_list_t **out, fx_err *err) {
  int32_t *ids = NULL;
  int n = 0;
  int rc = partitions_of(rk, topic, timeout_ms, &ids, &n, err);
  if (rc) return rc;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
  for (int i = 0; i < n && !rc; i++) {
    int64_t lo = 0, hi = 0;
    rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, ids[i], &lo, &hi, timeout_ms);
    if (e)
      rc = fx_err_set(err, FX_EIO, "cannot read the end of %s partition %d: %s", topic,
                      (int)ids[i], rd_kafka_err2str(e));
    else
      rd_kafka_topic_partition_list_add(l, topic, ids[i])->offset = hi;
  }
  free(ids);
  if (rc) {
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
  }
  *out = l;
  return 0;
}

int fx_kcommitted(const fx_config *cfg, const char *group, const char *topic, int timeout_ms,
                  rd_kafka_topic_partition_list_t **out, fx_err *err) {
  rd_kafka_t *rk = plain_consumer(cfg, group, err);
  if (!rk) return err ? err->code : FX_EINVAL;
  int32_t *ids = NULL;
  int n = 0;
  int rc = partitions_of(rk, topic, timeout_ms, &ids, &n, err);
  if (!rc) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int i = 0; i < n; i++) rd_kafka_topic_partition_list_add(l, topic, ids[i]);
    rd_kafka_resp_err_t e = rd_kafka_committed(rk, l, timeout_ms);
    if (e) {
      rc = fx_err_set(err, FX_EIO, "cannot read the offsets group %s committed on %s: %s", group,
                      topic, rd_kafka_err2str(e));
      rd_kafka_topic_partition_list_destroy(l);
    } else {
      *out = l;
    }
  }
  free(ids);
  rd_kafka_destroy(rk);
  return rc;
}

char *fx_kheader(const rd_kafka_message_t *m, const char *name) {
  rd_kafka_headers_t *h = NULL;
  const void *v = NULL;
  size_t size = 0;
  if (rd_kafka_message_headers(m, &h) || !h || rd_kafka_header_get_last(h, name, &v, &size) || !v)
    return NULL;
  return fx_memstr(v, size);
}

int fx_kscan(const fx_config *cfg, const char *topic, const rd_kafka_topic_partition_list_t *from,
             fx_kscan_fn fn, void *arg, int timeout_ms, fx_err *err) {
  rd_kafka_t *rk = plain_consumer(cfg, "fhirx-reader-unused", err);
  if (!rk) return err ? err->code : FX_EINVAL;
  int32_t *ids = NULL;
  int n = 0;
  int rc = partitions_of(rk, topic, timeout_ms, &ids, &n, err);
  if (rc) {
    rd_kafka_destroy(rk);
    return rc;
  }
  /* Per partition: where reading starts and the high watermark it stops at. */
  int64_t *high = calloc((size_t)n, sizeof *high);
  int *left = calloc((size_t)n, sizeof *left);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
  int remaining = 0;
  for (int i = 0; i < n && high && left && !rc; i++) {
    int64_t start = RD_KAFKA_OFFSET_BEGINNING;
    if (from) {
      const rd_kafka_topic_partition_t *f = NULL;
      for (int k = 0; k < from->cnt && !f; k++)
        if (from->elems[k].partition == ids[i] && strcmp(from->elems[k].topic, topic) == 0)
          f = &from->elems[k];
      if (!f) continue;
      start = f->offset;
    }
    int64_t lo = 0, hi = 0;
    rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, ids[i], &lo, &hi, timeout_ms);
    if (e) {
      rc = fx_err_set(err, FX_EIO, "cannot read the end of %s partition %d: %s", topic,
                      (int)ids[i], rd_kafka_err2str(e));
      break;
    }
    if (start < lo) start = lo;
    high[i] = hi;
    if (hi > start) {
      rd_kafka_topic_partition_list_add(l, topic, ids[i])->offset = start;
      left[i] = 1;
      remaining++;
    }
  }
  if (!rc && (!high || !left)) rc = fx_err_set(err, FX_ENOMEM, "out of memory");
  if (!rc && remaining) rd_kafka_assign(rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  int idle = 0, stop = 0;
  while (!rc && !stop && remaining > 0 && idle < timeout_ms) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
    if (!m) {
      idle += 100;
      continue;
    }
    idle = 0;
    int i = 0;
    while (i < n && ids[i] != m->partition) i++;
    if (i < n && left[i]) {
      if (!m->err && m->offset < high[i]) stop = fn(m, arg);
      /* A partition is done at its watermark, or at its end when the last
       * offsets before the watermark hold no message (compaction, markers). */
      if ((!m->err && m->offset + 1 >= high[i]) ||
          (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && m->offset >= high[i])) {
        left[i] = 0;
        remaining--;
      }
    }
    rd_kafka_message_destroy(m);
  }
  if (!rc && !stop && remaining > 0) rc = fx_err_set(err, FX_EIO, "timed out reading %s", topic);
  free(ids);
  free(high);
  free(left);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return rc;
}

typedef struct read_all {
  fx_kread_fn fn;
  void *arg;
} read_all;

static int read_all_fn(const rd_kafka_message_t *m, void *arg) {
  read_all *r = arg;
  r->fn(m, r->arg);
  return 0;
}

int fx_kread_all(const fx_config *cfg, const char *topic, fx_kread_fn fn, void *arg,
                 int timeout_ms, fx_err *err) {
  read_all r = {fn, arg};
  return fx_kscan(cfg, topic, NULL, read_all_fn, &r, timeout_ms, err);
}
