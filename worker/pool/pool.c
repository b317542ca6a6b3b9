/* `fhirx worker`: the supervisor. Starts the producer and the worker
 * threads, turns SIGTERM/SIGINT into a drain, and exits when every thread
 * has left the group. A second signal exits at once. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/pool/pool.h"
#include "worker/model/app.h"
#include "worker/model/resources.h"

/* After the threads' drain deadline, outputs still undelivered are given up
 * (their jobs stay uncommitted and are consumed again later). */
#define PURGE_GRACE_MS 2000
#define FLUSH_MS 5000

typedef struct supervisor {
  fx_pool *pool;
  uv_signal_t sigterm, sigint, sighup;
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
  atomic_store(&s->pool->draining, 1); /* /readyz says no from now on */
  fx_log(FX_LOG_INFO, "draining: no new jobs, finishing the ones in flight", NULL);
  for (size_t i = 0; i < s->pool->n_threads; i++)
    if (s->pool->threads[i]) fx_loop_post(&s->pool->threads[i]->lp, fx_wthread_stop, s->pool->threads[i]);
  if (s->pool->bulk) fx_loop_post(fx_bulk_loop(s->pool->bulk), fx_bulk_stop, s->pool->bulk);
  uv_timer_start(&s->purge_timer, on_purge,
                 (uint64_t)s->pool->app.cfg->worker.drain_timeout_ms + PURGE_GRACE_MS, 0);
}

/* Applies a tenant set to the shared per-tenant services: the token cache
 * (a changed tenant loses its token), the governor and the reference cache. */
static int same_tenant(const fx_tenant_conf *a, const fx_tenant_conf *b) {
#define SAME(f) ((!a->f && !b->f) || (a->f && b->f && strcmp(a->f, b->f) == 0))
  return SAME(fhir_base) && SAME(client_id) && SAME(token_endpoint) && SAME(profile) &&
         a->environment == b->environment && a->smart_version == b->smart_version &&
         a->max_concurrency == b->max_concurrency && a->rate_per_s == b->rate_per_s &&
         a->burst == b->burst;
#undef SAME
}

static void govern(fx_pool *p, const fx_tenant_conf *t) {
  const fx_worker_conf *wc = &p->app.cfg->worker;
  fx_gov_conf gc = {.max_concurrency = (int)t->max_concurrency,
                    .rate_per_s = (double)t->rate_per_s,
                    .burst = (int)t->burst,
                    .breaker_window = (int)wc->breaker_window,
                    .breaker_ratio = (double)wc->breaker_percent / 100.0,
                    .breaker_cooldown_ms = (uint64_t)wc->breaker_cooldown_ms,
                    .breaker_cooldown_max_ms = (uint64_t)wc->breaker_cooldown_max_ms};
  fx_governor_set_tenant(p->gov, t->id, &gc);
}

static void reload(fx_pool *p) {
  fx_config *cfg = NULL;
  fx_tenant_set *next = NULL;
  fx_err err = {0};
  fx_tenant_set *prev = fx_tenant_slot_get(&p->tenants);
  int rc = fx_config_load(p->config_path, &cfg, &err);
  if (!rc) rc = fx_app_check_resources(cfg, &err);
  if (!rc) rc = fx_tenant_set_new(cfg, 1, prev->generation + 1, &next, &err);
  if (rc) {
    fx_log(FX_LOG_ERROR, "configuration reload refused; the running configuration stays",
           "reason", err.msg, NULL);
    if (!next) fx_config_free(cfg);
    fx_tenant_set_release(prev);
    return;
  }
  int added = 0, changed = 0, removed = 0;
  for (size_t i = 0; i < cfg->n_tenants; i++) {
    const fx_tenant_conf *t = &cfg->tenants[i];
    const fx_tenant_conf *old = fx_tenant_set_find(prev, t->id);
    char *scope = fx_tenant_scope(t, next->profiles.by_tenant[i]);
    if (scope) fx_token_cache_set_tenant(p->app.tokens, t, scope, &err); /* keeps an unchanged token */
    free(scope);
    govern(p, t);
    if (!old) added++;
    else if (!same_tenant(old, t)) changed++;
    if (old && !same_tenant(old, t) && p->refs) fx_refcache_drop_tenant(p->refs, t->id);
  }
  for (size_t i = 0; i < prev->cfg->n_tenants; i++) {
    const char *id = prev->cfg->tenants[i].id;
    if (fx_config_tenant(cfg, id)) continue;
    fx_token_cache_remove_tenant(p->app.tokens, id); /* its tokens are dropped */
    fx_governor_remove_tenant(p->gov, id);
    if (p->refs) fx_refcache_drop_tenant(p->refs, id);
    removed++;
  }
  fx_tenant_set_release(fx_tenant_slot_swap(&p->tenants, next));
  fx_tenant_set_release(prev);
  char a[16], c[16], r[16];
  snprintf(a, sizeof a, "%d", added);
  snprintf(c, sizeof c, "%d", changed);
  snprintf(r, sizeof r, "%d", removed);
  fx_log(FX_LOG_INFO, "configuration reloaded: tenants applied to jobs from now on", "added", a,
         "changed", c, "removed", r, NULL);
}

static void on_hup(uv_signal_t *h, int signum) {
  (void)signum;
  supervisor *s = h->data;
  if (!s->shutting_down) reload(s->pool);
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
  atomic_store(&s->pool->stats.main_beat_ms, fx_now_ms());
  if (atomic_load(&s->pool->threads_running) > 0) return;
  uv_timer_stop(&s->watch);
  uv_timer_stop(&s->purge_timer);
  uv_signal_stop(&s->sigterm);
  uv_signal_stop(&s->sigint);
  uv_signal_stop(&s->sighup);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->sighup, NULL);
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
  for (size_t i = 0; p->gov && i < p->app.cfg->n_tenants; i++) govern(p, &p->app.cfg->tenants[i]);
  p->config_path = config_path;
  pthread_mutex_init(&p->tm_mu, NULL);
  fx_tenant_set *first = NULL;
  if (fx_tenant_set_new(p->app.cfg, 0, 1, &first, &err) != 0) {
    fprintf(stderr, "fhirx worker: %s\n", err.msg);
    return 1;
  }
  fx_tenant_slot_init(&p->tenants, first);
  if (wc->ref_cache_entries > 0)
    p->refs = fx_refcache_new((size_t)wc->ref_cache_entries, (size_t)wc->ref_cache_bytes,
                              (uint64_t)wc->ref_cache_ttl_s * 1000u);
  p->threads = calloc(p->n_threads, sizeof *p->threads);
  supervisor s = {.pool = p};
  rc = p->threads ? fx_loop_init(&p->main_lp, &loop, NULL, &err) : FX_ENOMEM;
  if (!rc) rc = fx_producer_open(p, &err);
  for (size_t i = 0; !rc && i < p->n_threads; i++) rc = fx_wthread_start(p, (int)i, &err);
  if (!rc) rc = fx_bulk_start(p, &err);
  atomic_store(&p->stats.main_beat_ms, fx_now_ms());
  if (!rc) rc = fx_admin_start(p, &err);
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
  uv_signal_init(&loop, &s.sighup);
  s.sighup.data = &s;
  uv_signal_start(&s.sighup, on_hup, SIGHUP);
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

  fx_admin_stop(p); /* before the threads it reads go away */
  for (size_t i = 0; i < p->n_threads; i++) uv_thread_join(&p->threads[i]->tid);
  fx_bulk_join(p);
  for (size_t i = 0; i < p->n_threads; i++) {
    free(p->threads[i]);
    p->threads[i] = NULL;
  }
  /* Normally nothing is left: every run waited for its delivery reports. */
  rd_kafka_flush(p->producer, FLUSH_MS);
  fx_producer_close(p);
  uv_run(&loop, UV_RUN_DEFAULT);
  log_totals(p);
  fx_refcache_free(p->refs);
  fx_governor_free(p->gov);
  fx_tenant_slot_destroy(&p->tenants);
  for (int i = 0; i < atomic_load(&p->n_tm); i++) free(p->tm[i]);
  pthread_mutex_destroy(&p->tm_mu);
  free(p->threads);
  fx_app_close(&p->app);
  rc = uv_loop_close(&loop);
  free(p);
  return rc ? 1 : 0;
}
