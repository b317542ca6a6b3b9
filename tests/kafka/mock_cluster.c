#include "tests/kafka/mock_cluster.h"

#include "tests/kafka/mock_log.h"

#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* /status asks the cluster through a real client; these bound how long a
 * slow (injected RTT) or partly down cluster can hold the control thread. */
#define STATUS_METADATA_TIMEOUT_MS 2000
#define STATUS_OFFSETS_TIMEOUT_MS 2000

/* Which librdkafka handle a log line comes from, and the most verbose syslog
 * level worth printing for it. Passed as the handle's opaque. */
typedef struct log_ctx {
  const char *role;
  int max_level;
} log_ctx;

typedef struct broker_state {
  bool up;
  int rtt_ms;
} broker_state;

struct fxm_cluster {
  rd_kafka_t *rk; /* hosts the mock cluster; never produces anything */
  rd_kafka_mock_cluster_t *mock;
  char *bootstraps;
  int brokers;
  int default_partitions;
  broker_state broker[FXM_MAX_BROKERS]; /* index id - 1 */
  log_ctx host_log;
  log_ctx status_log;
};

/* ---- librdkafka plumbing ---- */

static const char *syslog_level_name(int level) {
  if (level <= 3) return "error";
  if (level == 4) return "warn";
  if (level <= 6) return "info";
  return "debug";
}

/* Runs on librdkafka's threads. */
static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  const log_ctx *ctx = rd_kafka_opaque(rk);
  if (ctx && level > ctx->max_level) return;
  fxm_log(syslog_level_name(level), "rdkafka",
          json_pack("{s:s, s:s, s:s}", "client", ctx ? ctx->role : "?", "fac", fac, "text", buf));
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                    size_t errlen) {
  char why[256];
  if (rd_kafka_conf_set(conf, name, value, why, sizeof why) == RD_KAFKA_CONF_OK) return 0;
  snprintf(err, errlen, "librdkafka rejected %s=%s: %s", name, value, why);
  return -1;
}

/* A producer handle is the lightest librdkafka client: it starts no consumer
 * group machinery and connects to brokers only when asked to. */
static rd_kafka_t *new_handle(const char *client_id, const char *bootstrap, const char *debug,
                              log_ctx *log, char *err, size_t errlen) {
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char why[512];
  if (conf_set(conf, "client.id", client_id, err, errlen) ||
      (bootstrap && conf_set(conf, "bootstrap.servers", bootstrap, err, errlen)) ||
      (debug && conf_set(conf, "debug", debug, err, errlen))) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_conf_set_opaque(conf, log);
  rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
  if (!rk) {
    rd_kafka_conf_destroy(conf); /* rd_kafka_new only takes it on success */
    snprintf(err, errlen, "rd_kafka_new failed: %s", why);
  }
  return rk;
}

/* ---- lifecycle ---- */

fxm_cluster *fxm_cluster_new(int brokers, int default_partitions, bool verbose, char *err,
                             size_t errlen) {
  if (brokers < 1 || brokers > FXM_MAX_BROKERS) {
    snprintf(err, errlen, "brokers must be 1-%d, not %d", FXM_MAX_BROKERS, brokers);
    return NULL;
  }
  fxm_cluster *c = calloc(1, sizeof *c);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->brokers = brokers;
  c->default_partitions = default_partitions;
  /* The hosting handle is a client that never connects anywhere; its lines
   * below error level (e.g. that it has no bootstrap.servers) are noise
   * unless --verbose asked for the mock's debug output. The status client's
   * failures are reported in /status instead of the log. */
  c->host_log = (log_ctx){"mock", verbose ? 7 : 3};
  c->status_log = (log_ctx){"status", verbose ? 7 : -1};
  for (int i = 0; i < brokers; i++) c->broker[i] = (broker_state){.up = true};

  c->rk = new_handle("fhirx-kafka-mock", NULL, verbose ? "mock" : NULL, &c->host_log, err,
                     errlen);
  if (!c->rk) goto fail;
  c->mock = rd_kafka_mock_cluster_new(c->rk, brokers);
  if (!c->mock) {
    snprintf(err, errlen, "rd_kafka_mock_cluster_new(%d brokers) failed", brokers);
    goto fail;
  }
  c->bootstraps = strdup(rd_kafka_mock_cluster_bootstraps(c->mock));
  if (!c->bootstraps) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  return c;

fail:
  fxm_cluster_free(c);
  return NULL;
}

void fxm_cluster_free(fxm_cluster *c) {
  if (!c) return;
  /* The mock must go before the handle it was created on. */
  if (c->mock) rd_kafka_mock_cluster_destroy(c->mock);
  if (c->rk) rd_kafka_destroy(c->rk);
  free(c->bootstraps);
  free(c);
}

const char *fxm_cluster_bootstraps(const fxm_cluster *c) { return c->bootstraps; }
int fxm_cluster_broker_count(const fxm_cluster *c) { return c->brokers; }
int fxm_cluster_default_partitions(const fxm_cluster *c) { return c->default_partitions; }

/* ---- topics ---- */

int fxm_topic_name_check(const char *name, char *err, size_t errlen) {
  size_t len = strlen(name);
  if (len == 0 || len > 249) {
    snprintf(err, errlen, "topic name must be 1-249 characters, got %zu", len);
    return -1;
  }
  if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
    snprintf(err, errlen, "topic name cannot be \"%s\"", name);
    return -1;
  }
  size_t ok = strspn(name,
                     "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-");
  if (ok != len) {
    snprintf(err, errlen,
             "topic name \"%s\" has '%c' at position %zu; only letters, digits, '.', '_' and "
             "'-' are allowed",
             name, name[ok], ok);
    return -1;
  }
  return 0;
}

int fxm_cluster_create_topic(fxm_cluster *c, const char *name, int partitions, char *err,
                             size_t errlen) {
  if (fxm_topic_name_check(name, err, errlen)) return -1;
  if (partitions == 0) partitions = c->default_partitions;
  if (partitions < 1 || partitions > FXM_MAX_PARTITIONS) {
    snprintf(err, errlen, "partitions must be 1-%d, not %d", FXM_MAX_PARTITIONS, partitions);
    return -1;
  }
  int replication = c->brokers < 3 ? c->brokers : 3;
  rd_kafka_resp_err_t rerr = rd_kafka_mock_topic_create(c->mock, name, partitions, replication);
  if (rerr == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) return 1;
  if (rerr) {
    snprintf(err, errlen, "creating topic \"%s\" failed: %s", name, rd_kafka_err2name(rerr));
    return -1;
  }
  return 0;
}

/* The partition count of an existing topic, from the cluster's metadata
 * (a listing of all topics, which never auto-creates one); 0 if there is no
 * such topic, -1 with a reason when the cluster cannot be asked. */
static int partition_count(fxm_cluster *c, const char *topic, char *err, size_t errlen) {
  rd_kafka_t *rk = new_handle("fhirx-kafka-mock-leader", c->bootstraps, NULL, &c->status_log,
                              err, errlen);
  if (!rk) return -1;
  const rd_kafka_metadata_t *md = NULL;
  int n = -1;
  rd_kafka_resp_err_t rerr = rd_kafka_metadata(rk, 1, NULL, &md, STATUS_METADATA_TIMEOUT_MS);
  if (rerr) {
    snprintf(err, errlen, "metadata request failed: %s (are all brokers down?)",
             rd_kafka_err2name(rerr));
  } else {
    n = 0;
    for (int t = 0; t < md->topic_cnt; t++)
      if (!md->topics[t].err && strcmp(md->topics[t].topic, topic) == 0)
        n = md->topics[t].partition_cnt;
  }
  if (md) rd_kafka_metadata_destroy(md);
  rd_kafka_destroy(rk);
  return n;
}

int fxm_cluster_set_leader(fxm_cluster *c, const char *topic, int32_t partition, int32_t broker,
                           char *err, size_t errlen) {
  if (fxm_topic_name_check(topic, err, errlen)) return -1;
  if (broker < 1 || broker > c->brokers) {
    snprintf(err, errlen, "no broker %d: this cluster has brokers 1-%d", (int)broker, c->brokers);
    return -1;
  }
  int n = partition_count(c, topic, err, errlen);
  if (n < 0) return -1;
  if (n == 0) {
    snprintf(err, errlen, "no topic \"%s\" (create it first: POST /topics)", topic);
    return -1;
  }
  if (partition >= n) {
    snprintf(err, errlen, "topic \"%s\" has partitions 0-%d, not %d", topic, n - 1,
             (int)partition);
    return -1;
  }
  int changed = 0;
  for (int32_t p = partition < 0 ? 0 : partition; p < (partition < 0 ? n : partition + 1); p++) {
    rd_kafka_resp_err_t rerr = rd_kafka_mock_partition_set_leader(c->mock, topic, p, broker);
    if (rerr) {
      snprintf(err, errlen, "setting the leader of %s [%d] failed: %s", topic, (int)p,
               rd_kafka_err2name(rerr));
      return -1;
    }
    changed++;
  }
  return changed;
}

/* ---- brokers ---- */

static int check_broker(const fxm_cluster *c, int32_t id, bool allow_all, char *err,
                        size_t errlen) {
  if ((allow_all && id == -1) || (id >= 1 && id <= c->brokers)) return 0;
  snprintf(err, errlen, "no broker %d: this cluster has brokers 1-%d", (int)id, c->brokers);
  return -1;
}

/* Applies the bookkeeping for broker id, or for every broker when id is -1. */
static void note_brokers(fxm_cluster *c, int32_t id, const bool *up, const int *rtt_ms) {
  for (int32_t b = 1; b <= c->brokers; b++) {
    if (id != -1 && b != id) continue;
    if (up) c->broker[b - 1].up = *up;
    if (rtt_ms) c->broker[b - 1].rtt_ms = *rtt_ms;
  }
}

/* id -1 is passed straight to librdkafka, which applies it to every broker
 * in one request to the mock thread. (Measured with 2.0.2: calling set_up or
 * set_rtt once per broker in a row took about 1 s per extra broker, while a
 * single call with -1 takes milliseconds.) */
int fxm_cluster_set_up(fxm_cluster *c, int32_t id, bool up, char *err, size_t errlen) {
  if (check_broker(c, id, true, err, errlen)) return -1;
  rd_kafka_resp_err_t rerr =
      up ? rd_kafka_mock_broker_set_up(c->mock, id) : rd_kafka_mock_broker_set_down(c->mock, id);
  if (rerr) {
    snprintf(err, errlen, "setting broker %d %s failed: %s", (int)id, up ? "up" : "down",
             rd_kafka_err2name(rerr));
    return -1;
  }
  note_brokers(c, id, &up, NULL);
  return 0;
}

int fxm_cluster_set_rtt(fxm_cluster *c, int32_t id, int rtt_ms, char *err, size_t errlen) {
  if (check_broker(c, id, true, err, errlen)) return -1;
  rd_kafka_resp_err_t rerr = rd_kafka_mock_broker_set_rtt(c->mock, id, rtt_ms);
  if (rerr) {
    snprintf(err, errlen, "setting broker %d rtt failed: %s", (int)id, rd_kafka_err2name(rerr));
    return -1;
  }
  note_brokers(c, id, NULL, &rtt_ms);
  return 0;
}

/* ---- error injection ---- */

int fxm_cluster_push_errors(fxm_cluster *c, int16_t api_key, const rd_kafka_resp_err_t *errs,
                            size_t n, int32_t broker, int rtt_ms, char *err, size_t errlen) {
  if (broker == 0) {
    rd_kafka_mock_push_request_errors_array(c->mock, api_key, n, errs);
    return 0;
  }
  if (check_broker(c, broker, false, err, errlen)) return -1;
  /* The broker variant only comes as varargs; pushing one (error, rtt) pair
   * per call appends to the same stack in order. */
  for (size_t i = 0; i < n; i++) {
    rd_kafka_resp_err_t rerr =
        rd_kafka_mock_broker_push_request_error_rtts(c->mock, broker, api_key, 1, errs[i], rtt_ms);
    if (rerr) {
      snprintf(err, errlen, "pushing error %zu on broker %d failed: %s", i, (int)broker,
               rd_kafka_err2name(rerr));
      return -1;
    }
  }
  return 0;
}

void fxm_cluster_clear_errors(fxm_cluster *c, int16_t api_key) {
  rd_kafka_mock_clear_request_errors(c->mock, api_key);
}

/* ---- status ---- */

static json_t *brokers_json(const fxm_cluster *c) {
  json_t *arr = json_array();
  for (int i = 0; arr && i < c->brokers; i++)
    json_array_append_new(arr, json_pack("{s:i, s:b, s:i}", "id", i + 1, "up", c->broker[i].up,
                                         "rtt_ms", c->broker[i].rtt_ms));
  return arr;
}

static bool leader_reachable(const fxm_cluster *c, int32_t leader) {
  return leader >= 1 && leader <= c->brokers && c->broker[leader - 1].up;
}

/* Fills lo and hi (lists of the same partitions, in the same order) with the
 * log start and end offsets of every partition whose leader is up. A
 * partition led by a down broker is left out: asking it would only burn the
 * whole timeout. */
static rd_kafka_resp_err_t query_offsets(const fxm_cluster *c, rd_kafka_t *rk,
                                         const rd_kafka_metadata_t *md,
                                         rd_kafka_topic_partition_list_t *lo,
                                         rd_kafka_topic_partition_list_t *hi) {
  for (int t = 0; t < md->topic_cnt; t++) {
    const rd_kafka_metadata_topic_t *mt = &md->topics[t];
    if (mt->err) continue;
    for (int p = 0; p < mt->partition_cnt; p++) {
      if (!leader_reachable(c, mt->partitions[p].leader)) continue;
      rd_kafka_topic_partition_list_add(lo, mt->topic, mt->partitions[p].id)->offset =
          RD_KAFKA_OFFSET_BEGINNING;
      rd_kafka_topic_partition_list_add(hi, mt->topic, mt->partitions[p].id)->offset =
          RD_KAFKA_OFFSET_END;
    }
  }
  if (lo->cnt == 0) return RD_KAFKA_RESP_ERR_NO_ERROR;
  /* ListOffsets with the special timestamps -2/-1 returns the log start and
   * end offsets; the mock implements exactly those two. */
  rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(rk, lo, STATUS_OFFSETS_TIMEOUT_MS);
  if (!err) err = rd_kafka_offsets_for_times(rk, hi, STATUS_OFFSETS_TIMEOUT_MS);
  return err;
}

static const rd_kafka_topic_partition_t *find_offset(const rd_kafka_topic_partition_list_t *l,
                                                     const char *topic, int32_t partition) {
  for (int i = 0; i < l->cnt; i++)
    if (l->elems[i].partition == partition && strcmp(l->elems[i].topic, topic) == 0 &&
        !l->elems[i].err)
      return &l->elems[i];
  return NULL;
}

/* {"partitions": [{"id":0,"leader":1,"low":0,"high":3}, ...], "messages": N}
 * where messages is the sum of high - low over partitions whose offsets are
 * known; low/high are null for partitions that could not be asked. */
static json_t *topic_json(const rd_kafka_metadata_topic_t *mt,
                          const rd_kafka_topic_partition_list_t *lo,
                          const rd_kafka_topic_partition_list_t *hi) {
  json_t *parts = json_array();
  json_int_t messages = 0;
  bool complete = true;
  for (int p = 0; parts && p < mt->partition_cnt; p++) {
    const rd_kafka_metadata_partition_t *mp = &mt->partitions[p];
    const rd_kafka_topic_partition_t *l = find_offset(lo, mt->topic, mp->id);
    const rd_kafka_topic_partition_t *h = find_offset(hi, mt->topic, mp->id);
    json_t *part = json_pack("{s:i, s:i}", "id", (int)mp->id, "leader", (int)mp->leader);
    if (l && h) {
      json_object_set_new(part, "low", json_integer(l->offset));
      json_object_set_new(part, "high", json_integer(h->offset));
      messages += h->offset - l->offset;
    } else {
      json_object_set_new(part, "low", json_null());
      json_object_set_new(part, "high", json_null());
      complete = false;
    }
    json_array_append_new(parts, part);
  }
  return json_pack("{s:o, s:I, s:b}", "partitions", parts, "messages", messages, "complete",
                   complete);
}

/* Adds "topics" (or "topics": null and "topics_error") to st. */
static void add_topics(fxm_cluster *c, json_t *st) {
  char err[512] = "";
  const rd_kafka_metadata_t *md = NULL;
  rd_kafka_topic_partition_list_t *lo = rd_kafka_topic_partition_list_new(64);
  rd_kafka_topic_partition_list_t *hi = rd_kafka_topic_partition_list_new(64);
  /* A fresh client per request: between requests nothing of ours stays
   * connected to the brokers, so the cluster's connections and error stacks
   * belong to the clients under test alone. */
  rd_kafka_t *rk = new_handle("fhirx-kafka-mock-status", c->bootstraps, NULL, &c->status_log,
                              err, sizeof err);
  if (!rk) goto out;
  rd_kafka_resp_err_t rerr = rd_kafka_metadata(rk, 1, NULL, &md, STATUS_METADATA_TIMEOUT_MS);
  if (rerr) {
    snprintf(err, sizeof err, "metadata request failed: %s (are all brokers down?)",
             rd_kafka_err2name(rerr));
    goto out;
  }
  rerr = query_offsets(c, rk, md, lo, hi);
  if (rerr)
    fxm_log("warn", "status: offsets incomplete", json_pack("{s:s}", "error",
                                                             rd_kafka_err2name(rerr)));
  json_t *topics = json_object();
  for (int t = 0; topics && t < md->topic_cnt; t++)
    if (!md->topics[t].err)
      json_object_set_new(topics, md->topics[t].topic, topic_json(&md->topics[t], lo, hi));
  json_object_set_new(st, "topics", topics);

out:
  if (err[0]) {
    json_object_set_new(st, "topics", json_null());
    json_object_set_new(st, "topics_error", json_string(err));
  }
  if (md) rd_kafka_metadata_destroy(md);
  rd_kafka_topic_partition_list_destroy(lo);
  rd_kafka_topic_partition_list_destroy(hi);
  if (rk) rd_kafka_destroy(rk);
}

json_t *fxm_cluster_status(fxm_cluster *c) {
  json_t *st = json_pack("{s:s, s:o, s:i}", "bootstrap", c->bootstraps, "brokers",
                         brokers_json(c), "default_partitions", c->default_partitions);
  if (!st) return NULL;
  bool any_up = false;
  for (int i = 0; i < c->brokers; i++) any_up |= c->broker[i].up;
  if (any_up) {
    add_topics(c, st);
  } else {
    json_object_set_new(st, "topics", json_null());
    json_object_set_new(st, "topics_error", json_string("every broker is down"));
  }
  return st;
}
