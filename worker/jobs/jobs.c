/* A worker thread's role: the jobs of its partitions (jobs.h). */
#include "worker/jobs/jobs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/jobs/fetch.h"
#include "worker/jobs/run.h"
#include "worker/out/out.h"
#include "worker/pool/offsets.h"

/* The runs of one tenant on this thread: those with tasks to start wait in
 * order of consumption; count is all of them (for backpressure). */
typedef struct tenant_q {
  char *tenant;
  fx_run *head, *tail; /* ready: tasks to start */
  size_t count;
} tenant_q;

struct fx_jobs {
  const fx_services *sv;
  int index;
  fx_kthread *kt;
  fx_out *out;
  fx_fetcher *fetcher;
  fx_run_env env;
  fx_partition **parts;
  size_t n_parts, cap_parts;
  fx_run *runs_head, *runs_tail; /* every run, in consumption order */
  size_t n_runs;
  tenant_q *tq;
  size_t n_tq, cap_tq;
  uint64_t seq;
  long long paused_counted; /* this thread's share of the paused-partitions gauge */
  int stopping;
};

static void backpressure(fx_jobs *j);

/* ---- tenants' ready queues ----------------------------------------------------- */

static tenant_q *tq_for(fx_jobs *j, const char *tenant, int create) {
  for (size_t i = 0; i < j->n_tq; i++)
    if (strcmp(j->tq[i].tenant, tenant) == 0) return &j->tq[i];
  if (!create) return NULL;
  if (j->n_tq == j->cap_tq) {
    size_t cap = j->cap_tq ? j->cap_tq * 2 : 8;
    tenant_q *grown = realloc(j->tq, cap * sizeof *grown);
    if (!grown) return NULL;
    j->tq = grown;
    j->cap_tq = cap;
  }
  tenant_q *q = &j->tq[j->n_tq];
  memset(q, 0, sizeof *q);
  if (!(q->tenant = strdup(tenant))) return NULL;
  j->n_tq++;
  return q;
}

static void ready_remove_head(tenant_q *q) {
  fx_run *run = q->head;
  fx_run_links *l = fx_run_links_of(run);
  q->head = l->ready_next;
  if (!q->head) q->tail = NULL;
  l->ready_next = NULL;
  l->queue = NULL;
}

static void ready_remove(tenant_q *q, fx_run *run) {
  fx_run **pp = &q->head, *prev = NULL;
  while (*pp && *pp != run) {
    prev = *pp;
    pp = &fx_run_links_of(*pp)->ready_next;
  }
  if (!*pp) return;
  fx_run_links *l = fx_run_links_of(run);
  *pp = l->ready_next;
  if (q->tail == run) q->tail = prev;
  l->ready_next = NULL;
  l->queue = NULL;
}

/* The fetcher's source: the next task of the oldest run with work left among
 * the tenants that may go now. A tenant the governor blocks is passed over
 * (one step for all its runs); *blocked_ms says when the first of them may
 * go again. A wait that outlasts the oldest run's deadline is not waited for:
 * its fetch is handed out so that the fetcher ends it with the reason. */
static fx_fetch *next_work(void *ctx, uint64_t now, long *blocked_ms) {
  fx_jobs *j = ctx;
  for (;;) {
    tenant_q *best = NULL;
    for (size_t i = 0; i < j->n_tq; i++) {
      tenant_q *q = &j->tq[i];
      if (!q->head || (best && fx_run_seq(best->head) < fx_run_seq(q->head))) continue;
      long blocked = fx_governor_blocked(j->sv->gov, q->tenant, now);
      if (blocked > 0 && now + (uint64_t)blocked <= fx_run_deadline(q->head)) {
        if (*blocked_ms <= 0 || blocked < *blocked_ms) *blocked_ms = blocked;
        continue;
      }
      best = q;
    }
    if (!best) return NULL;
    fx_run *run = best->head;
    fx_fetch *f = fx_run_next_fetch(run);
    if (!fx_run_has_work(run)) ready_remove_head(best);
    if (f) return f;
  }
}

/* ---- partitions ------------------------------------------------------------------ */

static fx_partition *find_part(fx_jobs *j, const char *topic, int32_t partition) {
  for (size_t i = 0; i < j->n_parts; i++)
    if (j->parts[i]->partition == partition && strcmp(j->parts[i]->topic, topic) == 0)
      return j->parts[i];
  return NULL;
}

static void count_paused(fx_jobs *j) {
  long long mine = fx_kthread_paused(j->kt) ? (long long)j->n_parts : 0;
  atomic_fetch_add(&j->sv->metrics->paused_partitions, mine - j->paused_counted);
  j->paused_counted = mine;
}

static void on_assign(void *ctx, rd_kafka_topic_partition_list_t *parts) {
  fx_jobs *j = ctx;
  for (int i = 0; i < parts->cnt; i++) {
    const char *topic = parts->elems[i].topic;
    int32_t partition = parts->elems[i].partition;
    if (find_part(j, topic, partition)) continue;
    if (j->n_parts == j->cap_parts) {
      size_t cap = j->cap_parts ? j->cap_parts * 2 : 8;
      fx_partition **grown = realloc(j->parts, cap * sizeof *grown);
      if (!grown) goto oom;
      j->parts = grown;
      j->cap_parts = cap;
    }
    fx_partition *p = fx_partition_new(topic, partition);
    if (!p) goto oom;
    j->parts[j->n_parts++] = p;
    continue;
  oom:
    fx_log(FX_LOG_ERROR, "out of memory tracking a partition", NULL);
  }
}

static void on_assigned(void *ctx, const rd_kafka_topic_partition_list_t *parts) {
  (void)parts;
  count_paused(ctx);
}

static void on_revoke(void *ctx, const rd_kafka_topic_partition_list_t *parts) {
  fx_jobs *j = ctx;
  for (int k = 0; k < parts->cnt; k++) {
    for (size_t i = 0; i < j->n_parts; i++) {
      fx_partition *p = j->parts[i];
      if (p->partition != parts->elems[k].partition || strcmp(p->topic, parts->elems[k].topic))
        continue;
      p->revoked = 1;
      /* Its jobs keep running to free their memory, but publish nothing more
       * and store nothing: the new owner consumes them again. */
      for (fx_run *r = j->runs_head; r; r = fx_run_links_of(r)->next)
        if (fx_run_partition(r) == p) fx_run_abandon(r);
      j->parts[i] = j->parts[--j->n_parts];
      fx_partition_unref(p);
      break;
    }
  }
  count_paused(j);
}

/* ---- runs ------------------------------------------------------------------------- */

/* A run is over: its offset goes to its partition's tracker (stored when it
 * moves the lowest unfinished offset), and it leaves every list. */
static void on_run_done(void *ctx, fx_run *run) {
  fx_jobs *j = ctx;
  fx_partition *part = fx_run_partition(run);
  if (fx_run_committable(run) && !part->revoked) {
    int64_t off = fx_partition_done(part, fx_run_offset(run));
    if (off >= 0) {
      rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
      rd_kafka_topic_partition_list_add(l, part->topic, part->partition)->offset = off;
      rd_kafka_resp_err_t err = rd_kafka_offsets_store(fx_kthread_consumer(j->kt), l);
      if (err)
        fx_log(FX_LOG_WARN, "cannot store an offset", "topic", part->topic, "error",
               rd_kafka_err2str(err), NULL);
      rd_kafka_topic_partition_list_destroy(l);
    }
  }
  fx_run_links *l = fx_run_links_of(run);
  if (l->queue) ready_remove(l->queue, run);
  const char *tenant = fx_run_tenant(run);
  tenant_q *q = tenant ? tq_for(j, tenant, 0) : NULL;
  if (q && q->count) q->count--;
  if (l->prev) fx_run_links_of(l->prev)->next = l->next;
  else j->runs_head = l->next;
  if (l->next) fx_run_links_of(l->next)->prev = l->prev;
  else j->runs_tail = l->prev;
  j->n_runs--;
  atomic_fetch_sub(&j->sv->metrics->jobs_in_flight, 1);
  fx_run_free(run);
  backpressure(j);
  fx_fetcher_pump(j->fetcher);
  fx_kthread_check(j->kt);
}

static void on_message(void *ctx, const rd_kafka_message_t *m) {
  fx_jobs *j = ctx;
  fx_partition *part = find_part(j, rd_kafka_topic_name(m->rkt), m->partition);
  if (!part) return; /* a message of a partition no longer ours (revoked after the fetch) */
  if (fx_partition_add(part, m->offset) != 0) {
    fx_log(FX_LOG_ERROR, "out of memory tracking an offset; the job is consumed again later",
           NULL);
    return;
  }
  fx_run *run = fx_run_new(&j->env, part, m, ++j->seq);
  if (!run) {
    /* Its slot stays unfinished: the offset never passes it. */
    fx_log(FX_LOG_ERROR, "out of memory starting a job; it will be consumed again", NULL);
    return;
  }
  fx_run_links *l = fx_run_links_of(run);
  l->prev = j->runs_tail;
  if (j->runs_tail) fx_run_links_of(j->runs_tail)->next = run;
  else j->runs_head = run;
  j->runs_tail = run;
  j->n_runs++;
  atomic_fetch_add(&j->sv->metrics->jobs_consumed, 1);
  atomic_fetch_add(&j->sv->metrics->jobs_in_flight, 1);
  const char *tenant = fx_run_tenant(run);
  tenant_q *q = tenant ? tq_for(j, tenant, 1) : NULL;
  if (q) q->count++;
  if (q && fx_run_has_work(run)) {
    l->queue = q;
    if (q->tail) fx_run_links_of(q->tail)->ready_next = run;
    else q->head = run;
    q->tail = run;
  } else if (tenant && !q && fx_run_has_work(run)) {
    fx_run_abandon(run); /* out of memory: consumed again later */
  }
  fx_run_start(run); /* may end it (an invalid job) later, never inside this call */
  backpressure(j);   /* stop fetching when full; polling goes on */
  fx_fetcher_pump(j->fetcher);
}

/* Runs that count against worker.max_jobs_in_flight: those of tenants whose
 * breaker is open are parked, so a failing tenant's jobs (waiting for the
 * breaker, up to their deadline) do not stop a healthy tenant's jobs from
 * being consumed. Parked runs are bounded too (8x), by memory. */
static void backpressure(fx_jobs *j) {
  if (j->stopping) return;
  size_t max = (size_t)j->sv->app->cfg->worker.max_jobs_in_flight;
  size_t parked = 0;
  uint64_t now = fx_now_ms();
  for (size_t i = 0; i < j->n_tq; i++)
    if (j->tq[i].count && fx_governor_breaker_open(j->sv->gov, j->tq[i].tenant, now))
      parked += j->tq[i].count;
  size_t active = j->n_runs - parked;
  int full = active >= max || j->n_runs >= max * 8;
  int drained = active <= max / 2 && j->n_runs < max * 4;
  int paused = fx_kthread_paused(j->kt);
  if (!paused && full) fx_kthread_pause(j->kt, 1);
  else if (paused && drained) fx_kthread_pause(j->kt, 0);
  count_paused(j);
}

/* ---- the thread's life ---------------------------------------------------------------- */

static void on_heartbeat(void *ctx) {
  fx_jobs *j = ctx;
  backpressure(j);
  fx_fetcher_pump(j->fetcher);
}

static void on_stop(void *ctx) {
  fx_jobs *j = ctx;
  j->stopping = 1;
  fx_fetcher_draining(j->fetcher);
  count_paused(j);
}

static int idle(void *ctx) {
  fx_jobs *j = ctx;
  return j->n_runs == 0 && fx_out_waiting(j->out) == 0 && fx_fetcher_inflight(j->fetcher) == 0;
}

static void busy(void *ctx, char *buf, size_t n) {
  fx_jobs *j = ctx;
  snprintf(buf, n, "%zu runs, %zu outputs waiting for the producer, %zu requests in flight",
           j->n_runs, fx_out_waiting(j->out), (size_t)fx_fetcher_inflight(j->fetcher));
}

static void on_deadline(void *ctx) {
  fx_jobs *j = ctx;
  char n[16];
  snprintf(n, sizeof n, "%zu", j->n_runs);
  fx_log(FX_LOG_WARN, "unfinished jobs are left for redelivery", "jobs", n, NULL);
  for (fx_run *r = j->runs_head; r; r = fx_run_links_of(r)->next) fx_run_abandon(r);
  /* What waits for room in the producer is given up: its runs do not commit. */
  fx_out_drop(j->out);
}

static void on_close(void *ctx) {
  fx_jobs *j = ctx;
  fx_fetcher_close(j->fetcher);
  j->fetcher = NULL;
  fx_out_close(j->out);
  j->out = NULL;
  atomic_fetch_add(&j->sv->metrics->paused_partitions, -j->paused_counted);
  j->paused_counted = 0;
}

static void on_out_empty(void *ctx) {
  fx_jobs *j = ctx;
  if (j->kt) fx_kthread_check(j->kt);
}

static const fx_kthread_role jobs_role = {
    .name = "worker",
    .on_message = on_message,
    .on_assign = on_assign,
    .on_assigned = on_assigned,
    .on_revoke = on_revoke,
    .on_heartbeat = on_heartbeat,
    .on_stop = on_stop,
    .idle = idle,
    .on_deadline = on_deadline,
    .busy = busy,
    .on_close = on_close,
    .commit_on_close = 1,
};

int fx_jobs_new(const fx_services *sv, int index, fx_kthread_group *group,
                void (*on_exit)(void *arg), void *exit_arg, fx_jobs **out, fx_err *err) {
  fx_jobs *j = calloc(1, sizeof *j);
  if (!j) return fx_err_set(err, FX_ENOMEM, "out of memory");
  j->sv = sv;
  j->index = index;
  fx_kthread_conf kc = {.cfg = sv->app->cfg,
                        .group_id = sv->app->cfg->worker.group_id,
                        .topic = sv->app->cfg->topics.jobs,
                        .log_client = "consumer",
                        .group = group,
                        .supervisor = sv->supervisor,
                        .on_exit = on_exit,
                        .exit_arg = exit_arg};
  int rc = fx_kthread_new(&kc, &jobs_role, j, &j->kt, err);
  fx_loop *lp = rc ? NULL : fx_kthread_loop(j->kt);
  if (!rc) rc = fx_out_new(lp->uv, sv->producer, on_out_empty, j, &j->out, err);
  if (!rc) rc = fx_fetcher_new(lp, sv, next_work, j, &j->fetcher, err);
  if (rc) {
    fx_jobs_free(j);
    return rc;
  }
  j->env = (fx_run_env){.sv = sv, .lp = lp, .out = j->out, .fetcher = j->fetcher,
                        .done = on_run_done, .ctx = j};
  *out = j;
  return 0;
}

int fx_jobs_start(fx_jobs *j, fx_err *err) { return fx_kthread_start(j->kt, err); }

void fx_jobs_stop(fx_jobs *j) { fx_kthread_stop(j->kt); }

static void free_lists(fx_jobs *j) {
  for (size_t i = 0; i < j->n_parts; i++) fx_partition_unref(j->parts[i]);
  free(j->parts);
  for (size_t i = 0; i < j->n_tq; i++) free(j->tq[i].tenant);
  free(j->tq);
}

void fx_jobs_join(fx_jobs *j) {
  if (!j) return;
  fx_kthread_join(j->kt);
  free_lists(j);
  free(j);
}

void fx_jobs_free(fx_jobs *j) {
  if (!j) return;
  /* Never started: the handles are closed with the loop by fx_kthread_free. */
  if (j->fetcher) fx_fetcher_close(j->fetcher);
  if (j->out) fx_out_close(j->out);
  fx_kthread_free(j->kt);
  free_lists(j);
  free(j);
}

const fx_kthread *fx_jobs_kthread(const fx_jobs *j) { return j->kt; }
