/* `fhirx worker`: the supervisor. Starts the producer and the worker
 * threads, turns SIGTERM/SIGINT into a drain, and exits when every thread
 * has left the group. A second signal exits at once. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/pool.h"

/* After the threads' drain deadline, outputs still undelivered are given up
 * (their jobs stay uncommitted and are consumed again later). */
#define PURGE_GRACE_MS 2000
#define FLUSH_MS 5000

typedef struct supervisor {
  fx_pool *pool;
  uv_signal_t sigterm, sigint;
  uv_timer_t purge_timer, watch;
  int signals;
  int shutting_down;
} supervisor;

static void on_purge(uv_timer_t *t) {
  supervisor *s = t->data;
  atomic_store(&s->pool->force, 1);
  rd_kafka_purge(s->pool->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  fx_log(FX_LOG_WARN, "gave up on undelivered outputs; their jobs were not committed", NULL);
}

static void begin_shutdown(supervisor *s) {
  if (s->shutting_down) return;
  s->shutting_down = 1;
  fx_log(FX_LOG_INFO, "draining: no new jobs, finishing the ones in flight", NULL);
  for (size_t i = 0; i < s->pool->n_threads; i++)
    if (s->pool->threads[i]) fx_loop_post(&s->pool->threads[i]->lp, fx_wthread_stop, s->pool->threads[i]);
  uv_timer_start(&s->purge_timer, on_purge,
                 (uint64_t)s->pool->app.cfg->worker.drain_timeout_ms + PURGE_GRACE_MS, 0);
}

static void on_signal(uv_signal_t *h, int signum) {
  supervisor *s = h->data;
  if (++s->signals > 1) {
    static const char msg[] = "{\"level\":\"error\",\"msg\":\"second signal: exiting now\"}\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(128 + signum);
  }
  begin_shutdown(s);
}

/* Every 100 ms: are all threads gone? (Thread exits post to the main loop,
 * which decrements threads_running; this notices the zero.) */
static void on_watch(uv_timer_t *t) {
  supervisor *s = t->data;
  if (atomic_load(&s->pool->threads_running) > 0) return;
  uv_timer_stop(&s->watch);
  uv_timer_stop(&s->purge_timer);
  uv_signal_stop(&s->sigterm);
  uv_signal_stop(&s->sigint);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->purge_timer, NULL);
  uv_close((uv_handle_t *)&s->watch, NULL);
  /* The producer's bridge goes too, or the loop would never end; what is
   * left of the producer is flushed after the loop (no worker is left). */
  fx_kqueue_close(s->pool->producer_kq);
  s->pool->producer_kq = NULL;
  fx_loop_close(&s->pool->main_lp);
}

static void log_totals(fx_pool *p) {
  char buf[8][24];
  snprintf(buf[0], sizeof buf[0], "%llu", (unsigned long long)atomic_load(&p->stats.jobs_consumed));
  snprintf(buf[1], sizeof buf[1], "%llu", (unsigned long long)atomic_load(&p->stats.jobs_completed));
  snprintf(buf[2], sizeof buf[2], "%llu", (unsigned long long)atomic_load(&p->stats.jobs_partial));
  snprintf(buf[3], sizeof buf[3], "%llu", (unsigned long long)atomic_load(&p->stats.jobs_failed));
  snprintf(buf[4], sizeof buf[4], "%llu", (unsigned long long)atomic_load(&p->stats.results));
  snprintf(buf[5], sizeof buf[5], "%llu", (unsigned long long)atomic_load(&p->stats.failures));
  snprintf(buf[6], sizeof buf[6], "%llu", (unsigned long long)atomic_load(&p->stats.http_requests));
  fx_log(FX_LOG_INFO, "worker stopped", "jobs", buf[0], "completed", buf[1], "partial", buf[2],
         "failed", buf[3], "results", buf[4], "failures", buf[5], "http_requests", buf[6], NULL);
}

int fx_pool_run(const char *config_path) {
  fx_pool *p = calloc(1, sizeof *p);
  if (!p) return 1;
  fx_err err = {0};
  uv_loop_t loop;
  uv_loop_init(&loop);
  p->main_loop = &loop;
  int rc = fx_app_open(&p->app, config_path, &err);
  if (rc) {
    fprintf(stderr, "fhirx worker: %s\n", err.msg);
    uv_loop_close(&loop);
    free(p);
    return 1;
  }
  const fx_worker_conf *wc = &p->app.cfg->worker;
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  snprintf(p->identity, sizeof p->identity, "%s:%ld", host, (long)getpid());
  p->limits.max_bytes = (size_t)wc->max_job_bytes;
  p->limits.max_patients = (size_t)wc->max_patients_per_job;
  p->n_threads = wc->threads ? (size_t)wc->threads : (size_t)uv_available_parallelism();
  p->gov = fx_governor_new();
  for (size_t i = 0; p->gov && i < p->app.cfg->n_tenants; i++) {
    const fx_tenant_conf *t = &p->app.cfg->tenants[i];
    fx_gov_conf gc = {.max_concurrency = (int)t->max_concurrency,
                      .rate_per_s = (double)t->rate_per_s,
                      .burst = (int)t->burst,
                      .breaker_window = (int)wc->breaker_window,
                      .breaker_ratio = (double)wc->breaker_percent / 100.0,
                      .breaker_cooldown_ms = (uint64_t)wc->breaker_cooldown_ms,
                      .breaker_cooldown_max_ms = (uint64_t)wc->breaker_cooldown_max_ms};
    fx_governor_set_tenant(p->gov, t->id, &gc);
  }
  if (wc->ref_cache_entries > 0)
    p->refs = fx_refcache_new((size_t)wc->ref_cache_entries, (size_t)wc->ref_cache_bytes,
                              (uint64_t)wc->ref_cache_ttl_s * 1000u);
  p->threads = calloc(p->n_threads, sizeof *p->threads);
  supervisor s = {.pool = p};
  rc = p->threads ? fx_loop_init(&p->main_lp, &loop, NULL, &err) : FX_ENOMEM;
  if (!rc) rc = fx_producer_open(p, &err);
  for (size_t i = 0; !rc && i < p->n_threads; i++) rc = fx_wthread_start(p, (int)i, &err);
  if (rc) {
    /* A start-up failure is a configuration problem: say which and stop. */
    fprintf(stderr, "fhirx worker: %s\n", err.msg[0] ? err.msg : "cannot start");
    _exit(1); /* threads may already run; there is nothing to drain yet */
  }
  uv_signal_init(&loop, &s.sigterm);
  uv_signal_init(&loop, &s.sigint);
  s.sigterm.data = s.sigint.data = &s;
  uv_signal_start(&s.sigterm, on_signal, SIGTERM);
  uv_signal_start(&s.sigint, on_signal, SIGINT);
  uv_timer_init(&loop, &s.purge_timer);
  s.purge_timer.data = &s;
  uv_timer_init(&loop, &s.watch);
  s.watch.data = &s;
  uv_timer_start(&s.watch, on_watch, 100, 100);
  char n[16];
  snprintf(n, sizeof n, "%zu", p->n_threads);
  fx_log(FX_LOG_INFO, "worker started", "threads", n, "group", wc->group_id, "topic",
         p->app.cfg->topics.jobs, NULL);

  uv_run(&loop, UV_RUN_DEFAULT);

  for (size_t i = 0; i < p->n_threads; i++) {
    uv_thread_join(&p->threads[i]->tid);
    free(p->threads[i]);
  }
  /* Normally nothing is left: every run waited for its delivery reports. */
  rd_kafka_flush(p->producer, FLUSH_MS);
  fx_producer_close(p);
  uv_run(&loop, UV_RUN_DEFAULT);
  log_totals(p);
  fx_refcache_free(p->refs);
  fx_governor_free(p->gov);
  free(p->threads);
  fx_app_close(&p->app);
  rc = uv_loop_close(&loop);
  free(p);
  return rc ? 1 : 0;
}
