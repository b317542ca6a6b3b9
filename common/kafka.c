#include "common/kafka.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fx_kqueue {
  uv_poll_t poll;
  uv_timer_t kick;
  int fds[2];
  rd_kafka_queue_t *q;
  fx_kqueue_cb cb;
  void *arg;
  int closing;
};

static void drain_pipe(int fd) {
  char buf[256];
  while (read(fd, buf, sizeof buf) > 0) {}
}

static void on_readable(uv_poll_t *p, int status, int events) {
  (void)status, (void)events;
  fx_kqueue *kq = p->data;
  drain_pipe(kq->fds[0]);
  if (!kq->closing) kq->cb(kq->arg);
}

static void on_kick(uv_timer_t *t) {
  fx_kqueue *kq = t->data;
  if (!kq->closing) kq->cb(kq->arg);
}

int fx_kqueue_open(uv_loop_t *loop, rd_kafka_queue_t *q, fx_kqueue_cb cb, void *arg,
                   fx_kqueue **out, fx_err *err) {
  fx_kqueue *kq = calloc(1, sizeof *kq);
  if (!kq) return fx_err_set(err, FX_ENOMEM, "out of memory");
  /* Both ends non-blocking: librdkafka must never block writing a wake-up byte. */
  int rc = uv_pipe(kq->fds, UV_NONBLOCK_PIPE, UV_NONBLOCK_PIPE);
  if (rc != 0) {
    free(kq);
    return fx_err_set(err, FX_EIO, "cannot create a pipe for Kafka events: %s", uv_strerror(rc));
  }
  kq->q = q;
  kq->cb = cb;
  kq->arg = arg;
  uv_poll_init(loop, &kq->poll, kq->fds[0]);
  kq->poll.data = kq;
  uv_timer_init(loop, &kq->kick);
  kq->kick.data = kq;
  uv_poll_start(&kq->poll, UV_READABLE, on_readable);
  rd_kafka_queue_io_event_enable(q, kq->fds[1], "1", 1);
  /* Events queued before the pipe was attached produced no byte: look once. */
  uv_timer_start(&kq->kick, on_kick, 0, 0);
  *out = kq;
  return 0;
}

void fx_kqueue_kick(fx_kqueue *kq) {
  if (!kq->closing) uv_timer_start(&kq->kick, on_kick, 0, 0);
}

static void on_closed(uv_handle_t *h) {
  fx_kqueue *kq = h->data;
  if (--kq->closing == 0) {
    close(kq->fds[0]);
    close(kq->fds[1]);
    free(kq);
  }
}

void fx_kqueue_close(fx_kqueue *kq) {
  if (!kq || kq->closing) return;
  rd_kafka_queue_io_event_enable(kq->q, -1, NULL, 0);
  kq->closing = 2; /* two handles to close */
  uv_poll_stop(&kq->poll);
  uv_timer_stop(&kq->kick);
  uv_close((uv_handle_t *)&kq->poll, on_closed);
  uv_close((uv_handle_t *)&kq->kick, on_closed);
}

int fx_kafka_set(rd_kafka_conf_t *conf, const char *name, const char *value, fx_err *err) {
  char why[512];
  if (rd_kafka_conf_set(conf, name, value, why, sizeof why) != RD_KAFKA_CONF_OK)
    return fx_err_set(err, FX_EINVAL, "kafka.%s: %s", name, why);
  return 0;
}

/* fhirx's defaults per role; the config may override every one of them. */
static const char *const producer_defaults[][2] = {
    {"enable.idempotence", "true"}, {"acks", "all"}, {"compression.type", "lz4"},
    {"linger.ms", "5"}, {"client.id", "fhirx-producer"},
    /* 64 MiB, not librdkafka's 1 GiB: a worker's memory stays bounded when
     * Kafka is slower than the EHR (jobs defer, bulk downloads pause). */
    {"queue.buffering.max.kbytes", "65536"}};
static const char *const consumer_defaults[][2] = {
    {"enable.auto.offset.store", "false"},
    {"enable.auto.commit", "true"},
    {"auto.offset.reset", "earliest"},
    {"partition.assignment.strategy", "cooperative-sticky"},
    {"client.id", "fhirx-worker"}};

int fx_kafka_conf(const fx_strmap *props, fx_kafka_role role, rd_kafka_conf_t **out, fx_err *err) {
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  const char *const(*defs)[2] = role == FX_KAFKA_PRODUCER ? producer_defaults : consumer_defaults;
  size_t n_defs = role == FX_KAFKA_PRODUCER ? sizeof producer_defaults / sizeof producer_defaults[0]
                                            : sizeof consumer_defaults / sizeof consumer_defaults[0];
  const char *mine = role == FX_KAFKA_PRODUCER ? "producer." : "consumer.";
  const char *theirs = role == FX_KAFKA_PRODUCER ? "consumer." : "producer.";
  int rc = 0;
  for (size_t i = 0; !rc && i < n_defs; i++) rc = fx_kafka_set(conf, defs[i][0], defs[i][1], err);
  for (size_t i = 0; !rc && props && i < props->n; i++) {
    const char *name = props->keys[i];
    if (strncmp(name, theirs, strlen(theirs)) == 0) continue;
    if (strncmp(name, mine, strlen(mine)) == 0) name += strlen(mine);
    rc = fx_kafka_set(conf, name, props->vals[i], err);
  }
  const char *env = getenv("FHIRX_BOOTSTRAP_SERVERS");
  if (!rc && env && *env) rc = fx_kafka_set(conf, "bootstrap.servers", env, err);
  if (!rc) {
    char bs[8] = "";
    size_t len = sizeof bs;
    if (rd_kafka_conf_get(conf, "bootstrap.servers", bs, &len) != RD_KAFKA_CONF_OK || len <= 1)
      rc = fx_err_set(err, FX_EINVAL,
                      "kafka.bootstrap.servers is required (or set FHIRX_BOOTSTRAP_SERVERS), e.g. "
                      "\"localhost:9092\"");
  }
  if (rc) {
    rd_kafka_conf_destroy(conf);
    return rc;
  }
  *out = conf;
  return 0;
}

size_t fx_kafka_max_message(const rd_kafka_conf_t *conf) {
  char buf[32];
  size_t len = sizeof buf;
  if (rd_kafka_conf_get(conf, "message.max.bytes", buf, &len) != RD_KAFKA_CONF_OK) return 1000000;
  return (size_t)strtoull(buf, NULL, 10);
}

void fx_kafka_stats_parse(const char *json, size_t len, int *brokers_up, long long *lag) {
  json_t *doc = json_loadb(json, len, 0, NULL);
  const char *k;
  json_t *b;
  int up = 0;
  json_object_foreach(json_object_get(doc, "brokers"), k, b) {
    /* Bootstrap and internal entries have nodeid -1: count real brokers. */
    const char *state = json_string_value(json_object_get(b, "state"));
    if (json_integer_value(json_object_get(b, "nodeid")) >= 0 && state && strcmp(state, "UP") == 0)
      up++;
  }
  long long total = 0;
  json_t *t, *part;
  const char *pk;
  json_object_foreach(json_object_get(doc, "topics"), k, t) {
    json_object_foreach(json_object_get(t, "partitions"), pk, part) {
      long long l = json_integer_value(json_object_get(part, "consumer_lag"));
      if (strcmp(pk, "-1") != 0 && l > 0) total += l;
    }
  }
  json_decref(doc);
  *brokers_up = up;
  if (lag) *lag = total;
}

void fx_kafka_default_stats_interval(rd_kafka_conf_t *conf) {
  char v[32] = "0";
  size_t len = sizeof v;
  if (rd_kafka_conf_get(conf, "statistics.interval.ms", v, &len) == RD_KAFKA_CONF_OK &&
      strcmp(v, "0") == 0)
    rd_kafka_conf_set(conf, "statistics.interval.ms", "1000", NULL, 0);
}
