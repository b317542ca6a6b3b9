/* jobs/run: a job run's lifecycle, on a loop of the test's own, producing to
 * the embedded Kafka (a mock cluster in its own process). Jobs that need no
 * FHIR request show every path of the state machine:
 *   - a job that cannot be read: FETCHING, ACKING (failure record and dead
 *     letter produced), STATUS (only once Kafka has both), DONE, committable;
 *     the status comes after the records it vouches for;
 *   - a bulk job: its pending record, ACKING, DONE, committable, no status;
 *   - a run abandoned while it waits for its acknowledgements: DROPPING,
 *     DONE, not committable, no status;
 *   - a run whose dead letter Kafka cannot take (larger than
 *     message.max.bytes): DONE, not committable, no status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "tests/kafka/kafka_support.h"
#include "worker/jobs/run.h"

static fxk_cluster cluster;

/* A worker thread of one: the loop, its out queue, a fetcher with no work,
 * and the shared services. */
typedef struct world {
  uv_loop_t uv;
  fx_loop lp;
  fx_app app;
  fx_metrics metrics;
  fx_tenant_slot tenants;
  fx_services sv;
  fx_out *out;
  fx_fetcher *fetcher;
  fx_run_env env;
  fx_partition *part;
  /* what the runs did */
  fx_run_state seen[4][8];
  int n_seen[4];
  int done[4];
  int committable[4];
} world;

static fx_fetch *no_work(void *ctx, uint64_t now, long *blocked) {
  (void)ctx, (void)now, (void)blocked;
  return NULL;
}

static void on_done(void *ctx, fx_run *run) {
  world *w = ctx;
  int64_t i = fx_run_offset(run);
  w->done[i] = 1;
  w->committable[i] = fx_run_committable(run);
  fx_run_free(run);
}

static void world_init(world *w, long max_message) {
  memset(w, 0, sizeof *w);
  char text[1024];
  snprintf(text, sizeof text,
           "{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://x/r4/t1\",\"client_id\":\"c\"}],"
           "\"keys\":[{\"path\":\"k.pem\"}],"
           "\"kafka\":{\"bootstrap.servers\":\"%s\",\"producer.linger.ms\":2,"
           "\"producer.message.max.bytes\":%ld}}",
           cluster.bootstrap, max_message);
  fx_err err = {0};
  if (fx_config_parse(text, "/", &w->app.cfg, &err) != 0) fail_msg("config: %s", err.msg);
  assert_int_equal(fx_profile_set_load(w->app.cfg, &w->app.profiles, &err), 0);
  fx_tenant_set *first = NULL;
  assert_int_equal(fx_tenant_set_new(w->app.cfg, 0, 1, &first, &err), 0);
  fx_tenant_slot_init(&w->tenants, first);
  fx_metrics_init(&w->metrics);
  assert_int_equal(uv_loop_init(&w->uv), 0);
  assert_int_equal(fx_loop_init(&w->lp, &w->uv, NULL, &err), 0);
  w->sv.app = &w->app;
  w->sv.metrics = &w->metrics;
  w->sv.tenants = &w->tenants;
  w->sv.identity = "test:1";
  w->sv.supervisor = &w->lp;
  w->sv.limits.max_bytes = 1 << 20;
  w->sv.limits.max_patients = 100;
  w->sv.gov = fx_governor_new();
  if (fx_producer_open(w->app.cfg, &w->lp, &w->sv.producer, &err) != 0)
    fail_msg("producer: %s", err.msg);
  w->sv.max_message = fx_producer_max_message(w->sv.producer);
  assert_int_equal(fx_out_new(&w->uv, w->sv.producer, NULL, NULL, &w->out, &err), 0);
  assert_int_equal(fx_fetcher_new(&w->lp, &w->sv, no_work, w, &w->fetcher, &err), 0);
  w->env = (fx_run_env){.sv = &w->sv, .lp = &w->lp, .out = w->out, .fetcher = w->fetcher,
                        .done = on_done, .ctx = w};
  w->part = fx_partition_new("fhirx.jobs", 0);
}

static void world_close(world *w) {
  fx_fetcher_close(w->fetcher);
  fx_out_close(w->out);
  fx_producer_stop_serving(w->sv.producer);
  fx_loop_close(&w->lp);
  uv_run(&w->uv, UV_RUN_DEFAULT);
  fx_producer_close(w->sv.producer, 5000);
  assert_int_equal(uv_loop_close(&w->uv), 0);
  fx_partition_unref(w->part);
  fx_governor_free(w->sv.gov);
  fx_tenant_slot_destroy(&w->tenants);
  fx_profile_set_free(&w->app.profiles);
  fx_config_free(w->app.cfg);
  fx_metrics_destroy(&w->metrics);
}

/* A real message (rd_kafka_message_t has parts only librdkafka fills):
 * produced to a topic of the test's, then read back from offset `offset`. */
static rd_kafka_message_t *message(const char *topic, int64_t offset, const char *value,
                                   rd_kafka_t **reader) {
  assert_int_equal(fxk_produce(cluster.bootstrap, topic, "k", value, NULL), 0);
  char why[256];
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  rd_kafka_conf_set(c, "bootstrap.servers", cluster.bootstrap, why, sizeof why);
  rd_kafka_conf_set(c, "group.id", "test-run-reader", why, sizeof why);
  rd_kafka_conf_set(c, "enable.auto.commit", "false", why, sizeof why);
  rd_kafka_conf_set(c, "fetch.wait.max.ms", "100", why, sizeof why);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, why, sizeof why);
  assert_non_null(rk);
  /* The message went to whichever partition its key hashes to: read them all. */
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
  assert_int_equal(rd_kafka_metadata(rk, 0, rkt, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
  int n = md->topic_cnt ? md->topics[0].partition_cnt : 0;
  rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);
  assert_true(n > 0);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
  for (int i = 0; i < n; i++) rd_kafka_topic_partition_list_add(l, topic, i)->offset = offset;
  rd_kafka_assign(rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  rd_kafka_message_t *m = NULL;
  uint64_t end = fx_now_ms() + 20000;
  while (fx_now_ms() < end) {
    m = rd_kafka_consumer_poll(rk, 200);
    if (m && !m->err) break;
    if (m) rd_kafka_message_destroy(m);
    m = NULL;
  }
  assert_non_null(m);
  *reader = rk; /* destroyed after the message */
  return m;
}

static fx_run *consume(world *w, int64_t offset, const char *value) {
  char topic[64];
  snprintf(topic, sizeof topic, "run-jobs-%lld", (long long)offset);
  rd_kafka_t *reader = NULL;
  rd_kafka_message_t *m = message(topic, 0, value, &reader);
  assert_int_equal(fx_partition_add(w->part, offset), 0);
  m->offset = offset; /* the run's identity in this test: the slot it finishes */
  fx_run *run = fx_run_new(&w->env, w->part, m, (uint64_t)offset + 1);
  assert_non_null(run);
  /* The run keeps what it needs of the message: both can go now. */
  rd_kafka_message_destroy(m);
  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);
  w->seen[offset][w->n_seen[offset]++] = fx_run_get_state(run); /* before it starts */
  return run;
}

/* Turns the loop until run offset i is done, noting every state it passes. */
static void watch(world *w, fx_run *run, int64_t i, int abandon_in_acking) {
  uint64_t end = fx_now_ms() + 30000;
  fx_run_state last = w->seen[i][w->n_seen[i] - 1];
  while (!w->done[i]) {
    if (fx_now_ms() > end) fail_msg("run %lld never ended", (long long)i);
    fx_run_state st = fx_run_get_state(run);
    if (st != last && w->n_seen[i] < 8) {
      w->seen[i][w->n_seen[i]++] = st;
      last = st;
      if (st == FX_RUN_ACKING && abandon_in_acking) fx_run_abandon(run);
    }
    uv_run(&w->uv, UV_RUN_NOWAIT);
    usleep(1000);
  }
}

static void assert_seen(const world *w, int i, const fx_run_state *want, int n) {
  char got[200] = "";
  for (int k = 0; k < w->n_seen[i]; k++)
    snprintf(got + strlen(got), sizeof got - strlen(got), "%s ", fx_run_state_name(w->seen[i][k]));
  if (w->n_seen[i] != n) fail_msg("states: %s", got);
  for (int k = 0; k < n; k++)
    if (w->seen[i][k] != want[k]) fail_msg("states: %s", got);
}

static int count_for(const char *topic, const char *job_id, int64_t *first_offset) {
  fxk_msg *msgs = NULL;
  size_t n = 0;
  fxk_consume_all(cluster.bootstrap, topic, 0, 10000, &msgs, &n);
  int c = 0;
  for (size_t i = 0; i < n; i++) {
    const char *id = fxk_msg_header(&msgs[i], "fhirx-job-id");
    if (id && strcmp(id, job_id) == 0) {
      if (!c && first_offset) *first_offset = msgs[i].offset;
      c++;
    }
  }
  fxk_msgs_free(msgs, n);
  return c;
}

static void unreadable_job_gets_records_then_status(void **state) {
  (void)state;
  world w;
  world_init(&w, 1000000);
  fx_run *run = consume(&w, 0, "{\"job_id\":\"bad-1\",\"tenant\":\"t1\",\"patients\":7}");
  fx_run_start(run);
  watch(&w, run, 0, 0);
  static const fx_run_state want[] = {FX_RUN_FETCHING, FX_RUN_ACKING, FX_RUN_STATUS};
  assert_seen(&w, 0, want, 3);
  assert_true(w.committable[0]);
  assert_int_equal(count_for("fhirx.failures", "bad-1", NULL), 1);
  assert_int_equal(count_for("fhirx.dlq", "bad-1", NULL), 1);
  assert_int_equal(count_for("fhirx.status", "bad-1", NULL), 1);
  assert_int_equal(fx_partition_done(w.part, 0), 1); /* the owner would store 1 */
  world_close(&w);
}

static void bulk_job_hands_over_without_status(void **state) {
  (void)state;
  world w;
  world_init(&w, 1000000);
  fx_run *run = consume(&w, 1, "{\"kind\":\"bulk\",\"job_id\":\"bulk-1\",\"tenant\":\"t1\","
                               "\"group\":\"g1\",\"resources\":[\"Patient\"]}");
  fx_run_start(run);
  watch(&w, run, 1, 0);
  static const fx_run_state want[] = {FX_RUN_FETCHING, FX_RUN_ACKING};
  assert_seen(&w, 1, want, 2);
  assert_true(w.committable[1]);
  assert_int_equal(count_for("fhirx.bulk", "bulk-1", NULL), 1);
  assert_int_equal(count_for("fhirx.status", "bulk-1", NULL), 0);
  world_close(&w);
}

static void abandoned_while_acking_drops(void **state) {
  (void)state;
  world w;
  world_init(&w, 1000000);
  fx_run *run = consume(&w, 2, "not json at all");
  fx_run_start(run);
  if (fx_run_get_state(run) == FX_RUN_ACKING) {
    w.seen[2][w.n_seen[2]++] = FX_RUN_ACKING;
    fx_run_abandon(run); /* while Kafka has not acknowledged its records yet */
  }
  watch(&w, run, 2, 1);
  static const fx_run_state want[] = {FX_RUN_FETCHING, FX_RUN_ACKING, FX_RUN_DROPPING};
  assert_seen(&w, 2, want, 3);
  assert_false(w.committable[2]);
  assert_int_equal(count_for("fhirx.status", "offset:fhirx.jobs/0/2", NULL), 0);
  world_close(&w);
}

/* Its dead letter carries the original message, too large for the producer
 * (message.max.bytes 20000 here, the job 30000 bytes): not delivered, so no
 * status and no offset. */
static void undeliverable_dead_letter_fails_the_run(void **state) {
  (void)state;
  world w;
  world_init(&w, 20000);
  size_t n = 30000;
  char *big = malloc(n + 1);
  memset(big, 'x', n);
  memcpy(big, "{\"job_id\":\"huge-1\",\"x\":\"", 24);
  memcpy(big + n - 2, "\"}", 2);
  big[n] = '\0';
  w.sv.max_message = n + 1; /* keep the raw message, so the dead letter tries to carry it */
  fx_run *run = consume(&w, 3, big);
  fx_run_start(run);
  watch(&w, run, 3, 0);
  static const fx_run_state want[] = {FX_RUN_FETCHING, FX_RUN_ACKING};
  assert_seen(&w, 3, want, 2);
  assert_false(w.committable[3]);
  assert_int_equal(count_for("fhirx.status", "huge-1", NULL), 0);
  free(big);
  world_close(&w);
}

static int group_setup(void **state) {
  (void)state;
  return fxk_start(&cluster, 1, 1);
}

static int group_teardown(void **state) {
  (void)state;
  return fxk_stop(&cluster) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(unreadable_job_gets_records_then_status),
      cmocka_unit_test(bulk_job_hands_over_without_status),
      cmocka_unit_test(abandoned_while_acking_drops),
      cmocka_unit_test(undeliverable_dead_letter_fails_the_run),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
