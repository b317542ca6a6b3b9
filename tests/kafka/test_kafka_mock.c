/* Smoke test of fhirx-kafka-mock and fx_kafkasupport, and a record of what
 * librdkafka 2.0.2's mock cluster does for the features the worker design
 * relies on (docs/embedded-kafka.md lists the results). One mock cluster
 * serves every test; each test uses its own topic and group so they do not
 * see each other's messages. Timings of the slow steps (group joins,
 * rebalances) go to stderr as "timing:" lines. */
#include "tests/kafka/kafka_support.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define BROKERS 3
#define PARTITIONS 6
/* Consumer groups on the mock: the first join takes ~3 s and a rebalance
 * waits up to session.timeout.ms - 1 s, so groups use a short session. */
#define SESSION_TIMEOUT "6000"

static fxk_cluster cluster;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- control API helpers ---- */

static json_t *get_status(void) {
  char *body = NULL;
  int status = fxk_control_body(&cluster, "GET", "/status", NULL, &body);
  assert_int_equal(status, 200);
  json_t *doc = json_loads(body, 0, NULL);
  free(body);
  assert_non_null(doc);
  return doc;
}

static json_t *topic_status(json_t *st, const char *topic) {
  return json_object_get(json_object_get(st, "topics"), topic);
}

static int leader_of(json_t *st, const char *topic, int partition) {
  json_t *parts = json_object_get(topic_status(st, topic), "partitions");
  return (int)json_integer_value(json_object_get(json_array_get(parts, (size_t)partition),
                                                 "leader"));
}

static void create_topic(const char *name, int partitions) {
  char body[256];
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"partitions\":%d}", name, partitions);
  assert_int_equal(fxk_control(&cluster, "POST", "/topics", body), 201);
}

static void control_ok(const char *path, const char *body) {
  assert_int_equal(fxk_control(&cluster, "POST", path, body), 200);
}

/* ---- consumer helpers ---- */

typedef struct group_member {
  rd_kafka_t *rk;
  int assigned;     /* partitions currently assigned */
  int revoked;      /* partitions revoked over the member's life */
  int rebalances;
  char protocol[16]; /* "EAGER" or "COOPERATIVE", from the last rebalance */
} group_member;

/* Follows whichever protocol the group negotiated, as the worker must. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  group_member *m = opaque;
  const char *protocol = rd_kafka_rebalance_protocol(rk);
  bool cooperative = protocol && strcmp(protocol, "COOPERATIVE") == 0;
  snprintf(m->protocol, sizeof m->protocol, "%s", protocol ? protocol : "NONE");
  m->rebalances++;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (cooperative)
      rd_kafka_error_destroy(rd_kafka_incremental_assign(rk, parts));
    else
      rd_kafka_assign(rk, parts);
    m->assigned += parts->cnt;
  } else {
    if (cooperative)
      rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, parts));
    else
      rd_kafka_assign(rk, NULL);
    m->assigned -= parts->cnt;
    m->revoked += parts->cnt;
  }
}

/* A group consumer; extra is name, value, ..., NULL. */
static void member_start(group_member *m, const char *group, const char *topic,
                         const char *const *extra) {
  char why[512];
  const char *const base[] = {"bootstrap.servers", cluster.bootstrap, "group.id", group,
                              "session.timeout.ms", SESSION_TIMEOUT, "auto.offset.reset",
                              "earliest", "enable.auto.commit", "false", "fetch.wait.max.ms",
                              "100", NULL};
  *m = (group_member){0};
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  for (size_t i = 0; base[i]; i += 2)
    assert_int_equal(rd_kafka_conf_set(conf, base[i], base[i + 1], why, sizeof why), 0);
  for (size_t i = 0; extra && extra[i]; i += 2)
    assert_int_equal(rd_kafka_conf_set(conf, extra[i], extra[i + 1], why, sizeof why), 0);
  rd_kafka_conf_set_opaque(conf, m);
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  m->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
  assert_non_null(m->rk);
  rd_kafka_poll_set_consumer(m->rk);
  rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
  assert_int_equal(rd_kafka_subscribe(m->rk, sub), 0);
  rd_kafka_topic_partition_list_destroy(sub);
}

static void member_stop(group_member *m) {
  if (!m->rk) return;
  rd_kafka_consumer_close(m->rk);
  rd_kafka_destroy(m->rk);
  m->rk = NULL;
}

/* Polls once; returns 1 and counts the message if one arrived. */
static int member_poll(group_member *m, int timeout_ms) {
  rd_kafka_message_t *msg = rd_kafka_consumer_poll(m->rk, timeout_ms);
  if (!msg) return 0;
  int got = msg->err ? 0 : 1;
  if (msg->err && msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
    fprintf(stderr, "consumer error: %s\n", rd_kafka_message_errstr(msg));
  rd_kafka_message_destroy(msg);
  return got;
}

/* Produces n keyed messages "<prefix>-<i>" to topic and waits for all acks. */
static void produce_n(const char *topic, const char *prefix, int n, const char *const *conf) {
  fxk_producer *p = fxk_producer_new(cluster.bootstrap, conf);
  assert_non_null(p);
  for (int i = 0; i < n; i++) {
    char key[64];
    snprintf(key, sizeof key, "%s-%d", prefix, i);
    assert_int_equal(fxk_producer_send(p, topic, -1, key, key, NULL), 0);
  }
  assert_int_equal(fxk_producer_flush(p, 30000), 0);
  assert_int_equal(fxk_producer_delivered(p), (size_t)n);
  fxk_producer_free(p);
}

/* The number after "<prefix>-" in one of our keys, or -1. */
static long key_index(const char *key, size_t plen) {
  char *end;
  long v = strtol(key + plen + 1, &end, 10);
  return *end ? -1 : v;
}

/* Asserts msgs hold each "<prefix>-<i>" key (i < n) exactly once. */
static void assert_each_key_once(const fxk_msg *msgs, size_t count, const char *prefix, int n) {
  int *seen = calloc((size_t)n, sizeof *seen);
  assert_non_null(seen);
  size_t plen = strlen(prefix);
  for (size_t i = 0; i < count; i++) {
    assert_non_null(msgs[i].key);
    assert_memory_equal(msgs[i].key, prefix, plen);
    long k = key_index(msgs[i].key, plen);
    assert_true(k >= 0 && k < n);
    seen[k]++;
  }
  for (int k = 0; k < n; k++) {
    if (seen[k] != 1) fprintf(stderr, "key %s-%d seen %d times\n", prefix, k, seen[k]);
    assert_int_equal(seen[k], 1);
  }
  free(seen);
}

/* ---- tests ---- */

/* The control API: status shape, pre-created topics, and 4xx with a reason. */
static void test_control_api(void **state) {
  (void)state;
  json_t *st = get_status();
  assert_string_equal(json_string_value(json_object_get(st, "bootstrap")), cluster.bootstrap);
  assert_int_equal(json_array_size(json_object_get(st, "brokers")), BROKERS);
  static const char *const topics[] = {"fhirx.jobs", "fhirx.results", "fhirx.failures",
                                       "fhirx.dlq", "fhirx.status", "fhirx.parking",
                                       "fhirx.bulk"};
  for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
    json_t *t = topic_status(st, topics[i]);
    assert_non_null(t);
    assert_int_equal(json_array_size(json_object_get(t, "partitions")), PARTITIONS);
  }
  json_decref(st);

  char *body = NULL;
  assert_int_equal(fxk_control_body(&cluster, "POST", "/brokers/9/down", NULL, &body), 400);
  assert_non_null(strstr(body, "brokers 1-3"));
  free(body);
  assert_int_equal(fxk_control_body(&cluster, "POST", "/errors",
                                    "{\"api\":\"Produce\",\"errors\":[\"NO_SUCH_ERROR\"]}", &body),
                   400);
  assert_non_null(strstr(body, "NO_SUCH_ERROR"));
  free(body);
  assert_int_equal(fxk_control(&cluster, "POST", "/errors", "{\"api\":\"Nope\",\"errors\":[1]}"),
                   400);
  assert_int_equal(fxk_control(&cluster, "POST", "/topics", "{\"name\":\"a/b\"}"), 400);
  assert_int_equal(fxk_control(&cluster, "POST", "/topics", "{\"name\":\"fhirx.jobs\"}"), 409);
  assert_int_equal(fxk_control(&cluster, "POST", "/brokers/1/rtt", "not json"), 400);
  assert_int_equal(fxk_control(&cluster, "GET", "/nowhere", NULL), 404);
  assert_int_equal(fxk_control(&cluster, "GET", "/cluster/down", NULL), 405);
}

/* POST /topics/{name}/leader moves a topic's leadership to one broker (what
 * per-broker error injection needs to hit one topic); /status shows it. */
static void test_topic_leader(void **state) {
  (void)state;
  assert_int_equal(fxk_control(&cluster, "POST", "/topics", "{\"name\":\"leader.test\",\"partitions\":3}"),
                   201);
  char *body = NULL;
  assert_int_equal(fxk_control_body(&cluster, "POST", "/topics/leader.test/leader",
                                    "{\"broker\":2}", &body),
                   200);
  assert_non_null(strstr(body, "\"partitions\":3"));
  free(body);
  assert_int_equal(fxk_control(&cluster, "POST", "/topics/leader.test/leader",
                               "{\"broker\":3,\"partition\":1}"),
                   200);
  json_t *st = get_status();
  json_t *parts = json_object_get(topic_status(st, "leader.test"), "partitions");
  assert_int_equal(json_array_size(parts), 3);
  size_t i;
  json_t *p;
  json_array_foreach(parts, i, p) {
    long id = (long)json_integer_value(json_object_get(p, "id"));
    assert_int_equal(json_integer_value(json_object_get(p, "leader")), id == 1 ? 3 : 2);
  }
  json_decref(st);
  assert_int_equal(fxk_control_body(&cluster, "POST", "/topics/no.such.topic/leader",
                                    "{\"broker\":1}", &body),
                   400);
  assert_non_null(strstr(body, "no topic"));
  free(body);
  assert_int_equal(fxk_control(&cluster, "POST", "/topics/leader.test/leader", "{\"broker\":9}"),
                   400);
  assert_int_equal(fxk_control(&cluster, "POST", "/topics/leader.test/leader",
                               "{\"broker\":1,\"partition\":3}"),
                   400);
  assert_int_equal(fxk_control(&cluster, "POST", "/topics/leader.test/leader", "{}"), 400);
}

/* 100 keyed messages with headers from this process, read back in full. */
static void test_produce_consume(void **state) {
  (void)state;
  enum { N = 100 };
  fxk_producer *p = fxk_producer_new(cluster.bootstrap, NULL);
  assert_non_null(p);
  for (int i = 0; i < N; i++) {
    char key[32], value[64], attempt[16];
    snprintf(key, sizeof key, "job-%d", i);
    snprintf(value, sizeof value, "{\"job\":%d}", i);
    snprintf(attempt, sizeof attempt, "%d", i % 3);
    const char *const headers[] = {"tenant", "t1", "attempt", attempt, NULL};
    assert_int_equal(fxk_producer_send(p, "fhirx.jobs", -1, key, value, headers), 0);
  }
  assert_int_equal(fxk_producer_flush(p, 30000), 0);
  assert_int_equal(fxk_producer_delivered(p), N);
  fxk_producer_free(p);

  fxk_msg *msgs;
  size_t n;
  int64_t t0 = now_ms();
  assert_int_equal(fxk_consume_all(cluster.bootstrap, "fhirx.jobs", N, 30000, &msgs, &n), 0);
  fprintf(stderr, "timing: fxk_consume_all of %d messages: %lld ms\n", N,
          (long long)(now_ms() - t0));
  assert_int_equal(n, N);
  assert_each_key_once(msgs, n, "job", N);
  for (size_t i = 0; i < n; i++) {
    long k = key_index(msgs[i].key, strlen("job"));
    char value[64], attempt[16];
    snprintf(value, sizeof value, "{\"job\":%ld}", k);
    snprintf(attempt, sizeof attempt, "%ld", k % 3);
    assert_string_equal(msgs[i].value, value);
    assert_int_equal(msgs[i].value_len, strlen(value));
    assert_int_equal(msgs[i].n_headers, 2);
    assert_string_equal(fxk_msg_header(&msgs[i], "tenant"), "t1");
    assert_string_equal(fxk_msg_header(&msgs[i], "attempt"), attempt);
  }
  fxk_msgs_free(msgs, n);

  /* /status counts them too. */
  json_t *st = get_status();
  assert_int_equal(json_integer_value(json_object_get(topic_status(st, "fhirx.jobs"), "messages")),
                   N);
  json_decref(st);
}

/* A broker down: with acks=all, messages for the partitions it leads wait
 * (the mock never moves leaders) and are delivered once it is back; the
 * others are delivered meanwhile. The broker taken down is the leader of
 * partition 0, so at least one partition is affected whatever the mock's
 * random leader choice was. */
static void test_broker_down_then_up(void **state) {
  (void)state;
  enum { PER_PARTITION = 5, N = PER_PARTITION * PARTITIONS };
  const char *topic = "smoke.down";
  char path[64];
  create_topic(topic, PARTITIONS);
  json_t *st = get_status();
  int down = leader_of(st, topic, 0), led = 0;
  for (int p = 0; p < PARTITIONS; p++) led += leader_of(st, topic, p) == down;
  json_decref(st);

  snprintf(path, sizeof path, "/brokers/%d/down", down);
  control_ok(path, NULL);
  fxk_producer *p = fxk_producer_new(cluster.bootstrap, NULL);
  assert_non_null(p);
  for (int i = 0; i < N; i++) {
    char key[32];
    snprintf(key, sizeof key, "down-%d", i);
    assert_int_equal(fxk_producer_send(p, topic, i % PARTITIONS, key, key, NULL), 0);
  }
  int in_flight = fxk_producer_flush(p, 3000);
  fprintf(stderr, "fact: broker %d down, leads %d of %d partitions: %d of %d messages waiting\n",
          down, led, PARTITIONS, in_flight, N);
  assert_int_equal(in_flight, PER_PARTITION * led);
  assert_int_equal(fxk_producer_failed(p), 0);

  snprintf(path, sizeof path, "/brokers/%d/up", down);
  control_ok(path, NULL);
  int64_t t0 = now_ms();
  assert_int_equal(fxk_producer_flush(p, 30000), 0);
  fprintf(stderr, "timing: delivery after broker %d came back: %lld ms\n", down,
          (long long)(now_ms() - t0));
  assert_int_equal(fxk_producer_delivered(p), N);
  assert_int_equal(fxk_producer_failed(p), 0);
  fxk_producer_free(p);

  fxk_msg *msgs;
  size_t n;
  assert_int_equal(fxk_consume_all(cluster.bootstrap, topic, N, 30000, &msgs, &n), 0);
  assert_each_key_once(msgs, n, "down", N);
  fxk_msgs_free(msgs, n);
}

/* A full outage: /status says so, produced messages wait, and all are
 * delivered once the cluster is back. */
static void test_cluster_outage(void **state) {
  (void)state;
  enum { N = 12 };
  const char *topic = "smoke.outage";
  create_topic(topic, PARTITIONS);
  control_ok("/cluster/down", NULL);
  json_t *st = get_status();
  assert_true(json_is_null(json_object_get(st, "topics")));
  assert_non_null(json_string_value(json_object_get(st, "topics_error")));
  json_t *broker;
  size_t i;
  json_array_foreach(json_object_get(st, "brokers"), i, broker)
      assert_true(json_is_false(json_object_get(broker, "up")));
  json_decref(st);

  fxk_producer *p = fxk_producer_new(cluster.bootstrap, NULL);
  assert_non_null(p);
  for (int k = 0; k < N; k++) {
    char key[32];
    snprintf(key, sizeof key, "outage-%d", k);
    assert_int_equal(fxk_producer_send(p, topic, -1, key, key, NULL), 0);
  }
  assert_int_equal(fxk_producer_flush(p, 1500), N);
  control_ok("/cluster/up", NULL);
  int64_t t0 = now_ms();
  assert_int_equal(fxk_producer_flush(p, 30000), 0);
  fprintf(stderr, "timing: delivery after a full outage ended: %lld ms\n",
          (long long)(now_ms() - t0));
  assert_int_equal(fxk_producer_delivered(p), N);
  fxk_producer_free(p);
}

/* Injected retriable Produce errors: the idempotent producer retries and
 * every message lands exactly once. */
static void test_idempotent_producer_retries(void **state) {
  (void)state;
  enum { N = 50 };
  const char *topic = "smoke.idempotent";
  const char *const conf[] = {"enable.idempotence", "true", NULL};
  create_topic(topic, PARTITIONS);
  control_ok("/errors", "{\"api\":\"Produce\",\"errors\":[\"NOT_LEADER_FOR_PARTITION\","
                        "\"NOT_LEADER_FOR_PARTITION\",\"REQUEST_TIMED_OUT\"]}");
  produce_n(topic, "idem", N, conf);
  fxk_msg *msgs;
  size_t n;
  assert_int_equal(fxk_consume_all(cluster.bootstrap, topic, N, 30000, &msgs, &n), 0);
  assert_int_equal(n, N);
  assert_each_key_once(msgs, n, "idem", N);
  fxk_msgs_free(msgs, n);
}

/* A lost acknowledgement: the leader appends a Produce request but answers
 * after the client gave up (socket.timeout.ms), so the client retries. The
 * mock checks producer sequence numbers only for transactional producers,
 * so even with enable.idempotence=true the retry is appended again: every
 * message is reported delivered once, yet some are in the log twice. This
 * pins that behaviour (docs/embedded-kafka.md relies on it): consumers of
 * fhirx topics must tolerate duplicates, on the mock as with real Kafka
 * under at-least-once. */
static void test_lost_ack_duplicates(void **state) {
  (void)state;
  enum { N = 5 };
  const char *topic = "smoke.lost-ack";
  const char *const conf[] = {"enable.idempotence", "true", "socket.timeout.ms", "1000",
                              "linger.ms", "0", NULL};
  char body[160];
  create_topic(topic, 1);
  json_t *st = get_status();
  snprintf(body, sizeof body,
           "{\"api\":\"Produce\",\"errors\":[\"NO_ERROR\"],\"broker\":%d,\"rtt_ms\":2500}",
           leader_of(st, topic, 0));
  json_decref(st);
  control_ok("/errors", body);
  produce_n(topic, "lost", N, conf);

  fxk_msg *msgs;
  size_t n;
  assert_int_equal(fxk_consume_all(cluster.bootstrap, topic, N, 30000, &msgs, &n), 0);
  fprintf(stderr, "fact: %d messages acknowledged once each, %zu in the log after a lost ack\n",
          N, n);
  assert_true(n > N);
  fxk_msgs_free(msgs, n);
}

/* Transactions are accepted but are no-ops: messages of an aborted
 * transaction are still delivered to a read_committed consumer (librdkafka's
 * default isolation, which fxk_consume_all uses). */
static void test_transactions_are_noops(void **state) {
  (void)state;
  const char *topic = "smoke.txn";
  const char *const conf[] = {"transactional.id", "smoke-txn", NULL};
  create_topic(topic, 1);
  fxk_producer *p = fxk_producer_new(cluster.bootstrap, conf);
  assert_non_null(p);
  rd_kafka_t *rk = fxk_producer_handle(p);
  rd_kafka_error_t *err = rd_kafka_init_transactions(rk, 10000);
  assert_null(err);
  assert_null(rd_kafka_begin_transaction(rk));
  for (int i = 0; i < 3; i++) {
    char key[32];
    snprintf(key, sizeof key, "aborted-%d", i);
    assert_int_equal(fxk_producer_send(p, topic, 0, key, key, NULL), 0);
  }
  assert_int_equal(fxk_producer_flush(p, 10000), 0);
  err = rd_kafka_abort_transaction(rk, 10000);
  assert_null(err);
  fxk_producer_free(p);

  fxk_msg *msgs;
  size_t n;
  assert_int_equal(fxk_consume_all(cluster.bootstrap, topic, 0, 10000, &msgs, &n), 0);
  fprintf(stderr, "fact: a read_committed consumer sees %zu of 3 aborted messages\n", n);
  assert_int_equal(n, 3);
  fxk_msgs_free(msgs, n);
}

/* Auto-creation. A producer creates a topic by producing to it. The mock
 * also creates any topic a metadata request names, even from a consumer with
 * allow.auto.create.topics=false: it implements Metadata only up to a
 * version that cannot carry that flag (librdkafka warns "not supported by
 * broker"). So subscribing to a missing topic creates it on the mock, with
 * 4 partitions. fxk_consume_all asks for all topics to avoid that. */
static void test_auto_create(void **state) {
  (void)state;
  assert_int_equal(fxk_produce(cluster.bootstrap, "smoke.auto", "k", "v", NULL), 0);
  json_t *st = get_status();
  json_t *t = topic_status(st, "smoke.auto");
  assert_non_null(t);
  fprintf(stderr, "fact: auto-created topic has %zu partitions\n",
          json_array_size(json_object_get(t, "partitions")));
  json_decref(st);

  fxk_msg *msgs;
  size_t n;
  /* expect 0 and a missing topic: succeeds at once without creating it */
  assert_int_equal(fxk_consume_all(cluster.bootstrap, "smoke.never", 0, 5000, &msgs, &n), 0);
  assert_int_equal(n, 0);
  fxk_msgs_free(msgs, n);
  st = get_status();
  assert_null(topic_status(st, "smoke.never"));
  json_decref(st);

  char why[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", cluster.bootstrap, why,
                                     sizeof why), 0);
  assert_int_equal(rd_kafka_conf_set(conf, "group.id", "smoke-auto", why, sizeof why), 0);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
  assert_non_null(rk);
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, "smoke.by-consumer", NULL);
  const rd_kafka_metadata_t *md = NULL;
  assert_int_equal(rd_kafka_metadata(rk, 0, rkt, &md, 5000), 0);
  rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);
  rd_kafka_destroy(rk);
  st = get_status();
  fprintf(stderr, "fact: a consumer's metadata request %s the topic\n",
          topic_status(st, "smoke.by-consumer") ? "created" : "did not create");
  assert_non_null(topic_status(st, "smoke.by-consumer"));
  json_decref(st);
}

/* A subscribed consumer group receives messages; the join time is recorded. */
static void test_consumer_group(void **state) {
  (void)state;
  enum { N = 20 };
  const char *topic = "smoke.group";
  create_topic(topic, PARTITIONS);
  produce_n(topic, "grp", N, NULL);
  group_member m;
  int64_t t0 = now_ms();
  member_start(&m, "smoke-group", topic, NULL);
  int got = 0;
  int64_t first_ms = -1;
  while (got < N && now_ms() - t0 < 30000) {
    got += member_poll(&m, 100);
    if (got > 0 && first_ms < 0) first_ms = now_ms() - t0;
  }
  fprintf(stderr, "timing: group join to first message: %lld ms, all %d: %lld ms (%s)\n",
          (long long)first_ms, N, (long long)(now_ms() - t0), m.protocol);
  assert_int_equal(got, N);
  assert_int_equal(m.assigned, PARTITIONS);
  member_stop(&m);
}

/* cooperative-sticky: a second member joining takes half the partitions
 * from the first, which gives up only those (incremental), not all. */
static void test_cooperative_sticky(void **state) {
  (void)state;
  const char *topic = "smoke.coop";
  const char *const coop[] = {"partition.assignment.strategy", "cooperative-sticky", NULL};
  create_topic(topic, PARTITIONS);
  group_member a, b;
  int64_t t0 = now_ms();
  member_start(&a, "smoke-coop", topic, coop);
  while (a.assigned < PARTITIONS && now_ms() - t0 < 30000) member_poll(&a, 100);
  assert_int_equal(a.assigned, PARTITIONS);
  int64_t t1 = now_ms();
  fprintf(stderr, "timing: cooperative first member assigned: %lld ms\n", (long long)(t1 - t0));

  member_start(&b, "smoke-coop", topic, coop);
  while ((a.assigned != PARTITIONS / 2 || b.assigned != PARTITIONS / 2) &&
         now_ms() - t1 < 30000) {
    member_poll(&a, 50);
    member_poll(&b, 50);
  }
  fprintf(stderr, "timing: cooperative rebalance to %d+%d: %lld ms; first member revoked %d, "
                  "protocol %s\n",
          a.assigned, b.assigned, (long long)(now_ms() - t1), a.revoked, a.protocol);
  assert_string_equal(a.protocol, "COOPERATIVE");
  assert_int_equal(a.assigned, PARTITIONS / 2);
  assert_int_equal(b.assigned, PARTITIONS / 2);
  assert_int_equal(a.revoked, PARTITIONS / 2); /* eager would revoke all 6 */
  member_stop(&b);
  member_stop(&a);
}

/* Committed offsets are stored and fetched: a new member of the group
 * starts after what the previous one committed. */
static void test_offset_commit_fetch(void **state) {
  (void)state;
  const char *topic = "smoke.commit";
  create_topic(topic, 2);
  produce_n(topic, "c1", 10, NULL);
  group_member m;
  member_start(&m, "smoke-commit", topic, NULL);
  int got = 0;
  int64_t t0 = now_ms();
  while (got < 10 && now_ms() - t0 < 30000) got += member_poll(&m, 100);
  assert_int_equal(got, 10);
  assert_int_equal(rd_kafka_commit(m.rk, NULL, 0), 0); /* synchronous */

  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(2);
  rd_kafka_topic_partition_list_add(parts, topic, 0);
  rd_kafka_topic_partition_list_add(parts, topic, 1);
  assert_int_equal(rd_kafka_committed(m.rk, parts, 10000), 0);
  int64_t committed = 0;
  for (int i = 0; i < parts->cnt; i++)
    if (parts->elems[i].offset > 0) committed += parts->elems[i].offset;
  rd_kafka_topic_partition_list_destroy(parts);
  assert_int_equal(committed, 10);
  member_stop(&m);

  produce_n(topic, "c2", 5, NULL);
  member_start(&m, "smoke-commit", topic, NULL);
  got = 0;
  t0 = now_ms();
  while (got < 5 && now_ms() - t0 < 30000) got += member_poll(&m, 100);
  /* Anything from the first batch would be a re-delivery. */
  int extra = 0;
  for (int64_t t = now_ms(); now_ms() - t < 1000;) extra += member_poll(&m, 100);
  assert_int_equal(got, 5);
  assert_int_equal(extra, 0);
  member_stop(&m);
}

/* pause/resume: a paused partition delivers nothing; after resume it
 * continues where the application left off. */
static void test_pause_resume(void **state) {
  (void)state;
  const char *topic = "smoke.pause";
  create_topic(topic, 1);
  produce_n(topic, "p1", 5, NULL);
  group_member m;
  member_start(&m, "smoke-pause", topic, NULL);
  int got = 0;
  int64_t t0 = now_ms();
  while (got < 5 && now_ms() - t0 < 30000) got += member_poll(&m, 100);
  assert_int_equal(got, 5);

  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(parts, topic, 0);
  assert_int_equal(rd_kafka_pause_partitions(m.rk, parts), 0);
  produce_n(topic, "p2", 5, NULL);
  int while_paused = 0;
  for (int64_t t = now_ms(); now_ms() - t < 1500;) while_paused += member_poll(&m, 100);
  assert_int_equal(while_paused, 0);

  assert_int_equal(rd_kafka_resume_partitions(m.rk, parts), 0);
  rd_kafka_topic_partition_list_destroy(parts);
  got = 0;
  t0 = now_ms();
  while (got < 5 && now_ms() - t0 < 10000) got += member_poll(&m, 100);
  assert_int_equal(got, 5);
  member_stop(&m);
}

/* Statistics report consumer lag per partition. */
typedef struct lag_probe {
  int64_t lag;
  const char *topic;
} lag_probe;

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
  (void)rk;
  lag_probe *probe = opaque;
  json_t *doc = json_loadb(json, len, 0, NULL);
  json_t *p0 = json_object_get(
      json_object_get(json_object_get(json_object_get(doc, "topics"), probe->topic),
                      "partitions"),
      "0");
  json_t *lag = json_object_get(p0, "consumer_lag");
  if (json_is_integer(lag)) probe->lag = (int64_t)json_integer_value(lag);
  json_decref(doc);
  return 0; /* librdkafka frees json */
}

static void test_consumer_lag_statistics(void **state) {
  (void)state;
  const char *topic = "smoke.lag";
  char why[512];
  lag_probe probe = {.lag = -100, .topic = topic};
  create_topic(topic, 1);
  produce_n(topic, "lag", 10, NULL);

  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  const char *const pairs[] = {"bootstrap.servers", cluster.bootstrap, "group.id", "smoke-lag",
                               "enable.auto.commit", "false", "statistics.interval.ms", "200",
                               "fetch.wait.max.ms", "100", NULL};
  for (size_t i = 0; pairs[i]; i += 2)
    assert_int_equal(rd_kafka_conf_set(conf, pairs[i], pairs[i + 1], why, sizeof why), 0);
  rd_kafka_conf_set_opaque(conf, &probe);
  rd_kafka_conf_set_stats_cb(conf, on_stats);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
  assert_non_null(rk);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(parts, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
  assert_int_equal(rd_kafka_assign(rk, parts), 0);

  /* Read 3 of the 10 and commit that position. */
  int got = 0;
  int64_t t0 = now_ms();
  while (got < 3 && now_ms() - t0 < 10000) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 100);
    if (!msg) continue;
    if (!msg->err) got++;
    rd_kafka_message_destroy(msg);
  }
  assert_int_equal(got, 3);
  parts->elems[0].offset = 3;
  assert_int_equal(rd_kafka_commit(rk, parts, 0), 0);
  rd_kafka_topic_partition_list_destroy(parts);

  /* rd_kafka_poll serves statistics from the main queue without consuming
   * messages (no rd_kafka_poll_set_consumer here). */
  t0 = now_ms();
  while (probe.lag != 7 && now_ms() - t0 < 5000) rd_kafka_poll(rk, 100);
  fprintf(stderr, "fact: consumer_lag in statistics after committing 3 of 10: %lld\n",
          (long long)probe.lag);
  assert_int_equal(probe.lag, 7);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
}

/* Last: a clean shutdown (under ASan this also means no leaks). */
static void test_stop_is_clean(void **state) {
  (void)state;
  assert_int_equal(fxk_stop(&cluster), 0);
}

static int setup(void **state) {
  (void)state;
  return fxk_start(&cluster, BROKERS, PARTITIONS);
}

static int teardown(void **state) {
  (void)state;
  if (cluster.pid > 0) fxk_stop(&cluster);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_control_api),
      cmocka_unit_test(test_topic_leader),
      cmocka_unit_test(test_produce_consume),
      cmocka_unit_test(test_broker_down_then_up),
      cmocka_unit_test(test_cluster_outage),
      cmocka_unit_test(test_idempotent_producer_retries),
      cmocka_unit_test(test_lost_ack_duplicates),
      cmocka_unit_test(test_transactions_are_noops),
      cmocka_unit_test(test_auto_create),
      cmocka_unit_test(test_consumer_group),
      cmocka_unit_test(test_cooperative_sticky),
      cmocka_unit_test(test_offset_commit_fetch),
      cmocka_unit_test(test_pause_resume),
      cmocka_unit_test(test_consumer_lag_statistics),
      cmocka_unit_test(test_stop_is_clean),
  };
  return cmocka_run_group_tests_name("kafka_mock_smoke", tests, setup, teardown);
}
