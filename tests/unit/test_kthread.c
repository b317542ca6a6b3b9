/* pool/kthread: the Kafka thread's lifecycle against the embedded Kafka
 * (a mock cluster in its own process). Each test watches the transitions a
 * role sees (on_state) and checks the path, not the timing:
 *   - stopped before any assignment: STARTING, DRAINING, then it leaves
 *     without waiting for the drain deadline;
 *   - assigned, messages delivered to the role, a drain that waits until the
 *     role says it is idle, then COMMITTING, COMMITTED, LEAVING, CLOSED, and
 *     the offsets the role stored are committed;
 *   - a role that never gets idle is told when the drain deadline passes;
 *   - two threads of one group leave together: neither leaves before both
 *     have committed. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "tests/kafka/kafka_support.h"
#include "worker/pool/kthread.h"

#define TOPIC "fhirx.jobs"

static fxk_cluster cluster;

/* What a role saw, readable from the test's thread. */
typedef struct probe {
  pthread_mutex_t mu;
  fx_kthread_state path[32]; /* every state entered, in order */
  uint64_t at[32];           /* when (monotonic ms) */
  int n;
  atomic_int messages;
  atomic_int idle;           /* what idle() answers */
  atomic_int deadline;       /* on_deadline ran */
  atomic_int closed;         /* on_close ran */
  atomic_int exited;         /* on_exit ran */
  fx_kthread *kt;
} probe;

static void on_state(void *ctx, fx_kthread_state from, fx_kthread_state to) {
  (void)from;
  probe *p = ctx;
  pthread_mutex_lock(&p->mu);
  if (p->n < 32) {
    p->at[p->n] = fx_now_ms();
    p->path[p->n++] = to;
  }
  pthread_mutex_unlock(&p->mu);
}

/* Stores each message's offset + 1, as a role that finished its job does. */
static void on_message(void *ctx, const rd_kafka_message_t *m) {
  probe *p = ctx;
  atomic_fetch_add(&p->messages, 1);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(m->rkt), m->partition)->offset =
      m->offset + 1;
  rd_kafka_offsets_store(fx_kthread_consumer(p->kt), l);
  rd_kafka_topic_partition_list_destroy(l);
}

static int idle(void *ctx) { return atomic_load(&((probe *)ctx)->idle); }
static void on_deadline(void *ctx) { atomic_store(&((probe *)ctx)->deadline, 1); }
static void on_close(void *ctx) { atomic_store(&((probe *)ctx)->closed, 1); }

static const fx_kthread_role role = {.name = "test",
                                     .on_message = on_message,
                                     .on_state = on_state,
                                     .idle = idle,
                                     .on_deadline = on_deadline,
                                     .on_close = on_close,
                                     .commit_on_close = 1};

/* The supervisor: a loop on the test's thread that on_exit is posted to. */
typedef struct super {
  uv_loop_t uv;
  fx_loop lp;
} super;

static void on_exit_posted(void *arg) { atomic_store(&((probe *)arg)->exited, 1); }

static fx_config *config(int drain_ms) {
  char text[1024];
  snprintf(text, sizeof text,
           "{\"tenants\":[{\"id\":\"t\",\"fhir_base\":\"https://x/r4/t\",\"client_id\":\"c\"}],"
           "\"keys\":[{\"path\":\"k.pem\"}],"
           "\"kafka\":{\"bootstrap.servers\":\"%s\",\"consumer.session.timeout.ms\":6000,"
           "\"consumer.heartbeat.interval.ms\":500,\"consumer.fetch.wait.max.ms\":100},"
           "\"worker\":{\"drain_timeout_ms\":%d}}",
           cluster.bootstrap, drain_ms);
  fx_config *cfg = NULL;
  fx_err err = {0};
  if (fx_config_parse(text, "/", &cfg, &err) != 0) fail_msg("config: %s", err.msg);
  return cfg;
}

static fx_kthread *start(const fx_config *cfg, super *s, probe *p, fx_kthread_group *g,
                         const char *group_id) {
  memset(p, 0, sizeof *p);
  pthread_mutex_init(&p->mu, NULL);
  fx_kthread_conf kc = {.cfg = cfg, .group_id = group_id, .topic = TOPIC, .log_client = "test",
                        .group = g, .supervisor = &s->lp, .on_exit = on_exit_posted,
                        .exit_arg = p};
  fx_err err = {0};
  fx_kthread *kt = NULL;
  if (fx_kthread_new(&kc, &role, p, &kt, &err) != 0) fail_msg("kthread: %s", err.msg);
  p->kt = kt;
  assert_int_equal(fx_kthread_start(kt, &err), 0);
  return kt;
}

/* Turns the supervisor's loop until cond holds (polled every 10 ms), or fails
 * after timeout_ms: a hang is a failure, not a wait on the clock. */
#define WAIT_FOR(s, cond, timeout_ms)                                                   \
  do {                                                                                  \
    uint64_t end_ = fx_now_ms() + (timeout_ms);                                         \
    while (!(cond)) {                                                                   \
      if (fx_now_ms() > end_) fail_msg("timed out waiting for: %s", #cond);             \
      uv_run(&(s)->uv, UV_RUN_NOWAIT);                                                  \
      usleep(10000);                                                                    \
    }                                                                                   \
  } while (0)

static int entered(probe *p, fx_kthread_state st) {
  pthread_mutex_lock(&p->mu);
  int found = -1;
  for (int i = 0; i < p->n && found < 0; i++)
    if (p->path[i] == st) found = i;
  pthread_mutex_unlock(&p->mu);
  return found;
}

static void super_init(super *s) {
  assert_int_equal(uv_loop_init(&s->uv), 0);
  assert_int_equal(fx_loop_init(&s->lp, &s->uv, NULL, NULL), 0);
}

static void super_close(super *s) {
  fx_loop_close(&s->lp);
  uv_run(&s->uv, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&s->uv), 0);
}

static void assert_path(probe *p, const fx_kthread_state *want, int n) {
  pthread_mutex_lock(&p->mu);
  int ok = p->n == n;
  for (int i = 0; ok && i < n; i++) ok = p->path[i] == want[i];
  char got[256] = "";
  for (int i = 0; i < p->n; i++)
    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s", i ? " " : "",
             fx_kthread_state_name(p->path[i]));
  pthread_mutex_unlock(&p->mu);
  if (!ok) fail_msg("unexpected path: %s", got);
}

/* Stopped while it waits for its first assignment: nothing ran, nothing is
 * to be committed, so it leaves at once; the drain deadline (20 s here) is
 * never reached. */
static void stopped_before_assignment_leaves_at_once(void **state) {
  (void)state;
  fx_config *cfg = config(20000);
  super s;
  super_init(&s);
  probe p;
  atomic_store(&p.idle, 1);
  fx_kthread *kt = start(cfg, &s, &p, NULL, "never-assigned");
  atomic_store(&p.idle, 1);
  fx_kthread_stop(kt);
  WAIT_FOR(&s, atomic_load(&p.exited), 15000);
  /* It left without the drain deadline (20 s, longer than the wait above). */
  assert_int_equal(atomic_load(&p.deadline), 0);
  assert_int_equal(atomic_load(&p.closed), 1);
  static const fx_kthread_state want[] = {FX_KT_DRAINING, FX_KT_LEAVING, FX_KT_CLOSED};
  assert_path(&p, want, 3);
  fx_kthread_join(kt);
  super_close(&s);
  fx_config_free(cfg);
}

/* The whole life: assigned, messages, a drain that waits for the role, the
 * final commit of what the role stored, leaving, closing. */
static void drain_waits_for_the_role_then_commits(void **state) {
  (void)state;
  for (int i = 0; i < 3; i++) {
    char v[16];
    snprintf(v, sizeof v, "job-%d", i);
    assert_int_equal(fxk_produce(cluster.bootstrap, TOPIC, v, v, NULL), 0);
  }
  fx_config *cfg = config(20000);
  super s;
  super_init(&s);
  probe p;
  fx_kthread *kt = start(cfg, &s, &p, NULL, "whole-life");
  WAIT_FOR(&s, atomic_load(&p.messages) == 3, 30000);
  assert_true(entered(&p, FX_KT_RUNNING) >= 0);
  fx_kthread_stop(kt);
  WAIT_FOR(&s, entered(&p, FX_KT_DRAINING) >= 0, 5000);
  /* Not idle: it stays draining (no commit, no leaving) until told. */
  usleep(300000);
  uv_run(&s.uv, UV_RUN_NOWAIT);
  assert_int_equal(entered(&p, FX_KT_COMMITTING), -1);
  atomic_store(&p.idle, 1); /* the heartbeat or the next check sees it */
  WAIT_FOR(&s, atomic_load(&p.exited), 20000);
  /* (No COMMITTED: a thread outside a group has nobody to wait for.) */
  static const fx_kthread_state want[] = {FX_KT_RUNNING, FX_KT_DRAINING, FX_KT_COMMITTING,
                                          FX_KT_LEAVING, FX_KT_CLOSED};
  assert_path(&p, want, 5);
  assert_int_equal(atomic_load(&p.deadline), 0);
  fx_kthread_join(kt);
  /* The group committed what the role stored: every message, next offset 3. */
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  char why[256];
  assert_int_equal(rd_kafka_conf_set(c, "bootstrap.servers", cluster.bootstrap, why, sizeof why),
                   RD_KAFKA_CONF_OK);
  assert_int_equal(rd_kafka_conf_set(c, "group.id", "whole-life", why, sizeof why),
                   RD_KAFKA_CONF_OK);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, why, sizeof why);
  assert_non_null(rk);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(2);
  rd_kafka_topic_partition_list_add(l, TOPIC, 0);
  rd_kafka_topic_partition_list_add(l, TOPIC, 1);
  assert_int_equal(rd_kafka_committed(rk, l, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
  int64_t total = 0;
  for (int i = 0; i < l->cnt; i++) total += l->elems[i].offset > 0 ? l->elems[i].offset : 0;
  assert_int_equal(total, 3);
  rd_kafka_topic_partition_list_destroy(l);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  super_close(&s);
  fx_config_free(cfg);
}

/* A role that never gets idle is told when the drain deadline passes (its
 * work goes to the next owner), and the thread still commits and leaves. */
static void deadline_abandons_then_leaves(void **state) {
  (void)state;
  fx_config *cfg = config(500);
  super s;
  super_init(&s);
  probe p;
  fx_kthread *kt = start(cfg, &s, &p, NULL, "whole-life");
  WAIT_FOR(&s, entered(&p, FX_KT_RUNNING) >= 0, 30000);
  fx_kthread_stop(kt);
  WAIT_FOR(&s, atomic_load(&p.deadline), 10000);
  atomic_store(&p.idle, 1); /* what was left is abandoned: now it is */
  WAIT_FOR(&s, atomic_load(&p.exited), 20000);
  assert_true(entered(&p, FX_KT_COMMITTING) > entered(&p, FX_KT_DRAINING));
  assert_true(entered(&p, FX_KT_CLOSED) > entered(&p, FX_KT_LEAVING));
  fx_kthread_join(kt);
  super_close(&s);
  fx_config_free(cfg);
}

/* Two threads of one group: the one that commits first waits (COMMITTED)
 * until the other has committed too; neither leaves before. */
static void a_group_leaves_together(void **state) {
  (void)state;
  fx_config *cfg = config(20000);
  super s;
  super_init(&s);
  fx_kthread_group *g = fx_kthread_group_new();
  probe a, b;
  fx_kthread *ka = start(cfg, &s, &a, g, "together");
  fx_kthread *kb = start(cfg, &s, &b, g, "together");
  WAIT_FOR(&s, entered(&a, FX_KT_RUNNING) >= 0 && entered(&b, FX_KT_RUNNING) >= 0, 40000);
  atomic_store(&a.idle, 1);
  fx_kthread_stop(ka);
  fx_kthread_stop(kb); /* b is not idle yet */
  WAIT_FOR(&s, entered(&a, FX_KT_COMMITTED) >= 0, 10000);
  usleep(300000);
  uv_run(&s.uv, UV_RUN_NOWAIT);
  assert_int_equal(entered(&a, FX_KT_LEAVING), -1); /* waits for b */
  assert_int_equal(entered(&b, FX_KT_COMMITTING), -1);
  atomic_store(&b.idle, 1);
  WAIT_FOR(&s, atomic_load(&a.exited) && atomic_load(&b.exited), 30000);
  /* a left only after b had committed. */
  int ai = entered(&a, FX_KT_LEAVING), bi = entered(&b, FX_KT_COMMITTED);
  assert_true(ai >= 0 && bi >= 0);
  uint64_t a_left = a.at[ai], b_committed = b.at[bi]; /* the threads are gone: no lock needed */
  assert_true(a_left >= b_committed);
  fx_kthread_join(ka);
  fx_kthread_join(kb);
  fx_kthread_group_free(g);
  super_close(&s);
  fx_config_free(cfg);
}

static int group_setup(void **state) {
  (void)state;
  return fxk_start(&cluster, 1, 2);
}

static int group_teardown(void **state) {
  (void)state;
  return fxk_stop(&cluster) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(stopped_before_assignment_leaves_at_once),
      cmocka_unit_test(drain_waits_for_the_role_then_commits),
      cmocka_unit_test(deadline_abandons_then_leaves),
      cmocka_unit_test(a_group_leaves_together),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
