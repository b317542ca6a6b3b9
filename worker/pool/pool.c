/* `fhirx worker`: the supervisor (pool.h). */
#include "worker/pool/pool.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/admin/admin.h"
#include "worker/bulk/bulk.h"
#include "worker/jobs/jobs.h"
#include "worker/model/resources.h"
#include "worker/pool/services.h"

/* After the threads' drain deadline, outputs still undelivered are given up
 * (their jobs stay uncommitted and are consumed again later). */
#define PURGE_GRACE_MS 2000
#define FLUSH_MS 5000
#define WATCH_MS 100

typedef struct supervisor {
  fx_services sv;
  fx_app app;
  fx_metrics metrics;
  fx_tenant_slot tenants;
  char identity[300];
  const char *config_path;
  uv_loop_t uv;
  fx_loop lp;
  fx_jobs **threads;
  const fx_kthread **kts; /* the threads' Kafka threads, for the admin endpoint */
  size_t n_threads;
  fx_kthread_group *group;
  fx_bulk *bulk;
  fx_admin *admin;
  int running;            /* threads (and the bulk thread) not yet exited */
  atomic_int draining;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t purge_timer, watch;
  int signals;
  int shutting_down;
} supervisor;

static void on_purge(uv_timer_t *t) {
  supervisor *s = t->data;
  fx_producer_give_up(s->sv.producer);
  fx_log(FX_LOG_WARN, "gave up on undelivered outputs; their jobs were not committed", NULL);
}

static void begin_shutdown(supervisor *s) {
  if (s->shutting_down) return;
  s->shutting_down = 1;
  atomic_store(&s->draining, 1); /* /readyz says no from now on */
  fx_log(FX_LOG_INFO, "draining: no new jobs, finishing the ones in flight", NULL);
  for (size_t i = 0; i < s->n_threads; i++) fx_jobs_stop(s->threads[i]);
  if (s->bulk) fx_bulk_stop(s->bulk);
  uv_timer_start(&s->purge_timer, on_purge,
                 (uint64_t)s->app.cfg->worker.drain_timeout_ms + PURGE_GRACE_MS, 0);
}

/* ---- reload ----------------------------------------------------------------------- */

/* Whether a tenant's change needs its token and cached references dropped. */
static int same_tenant(const fx_tenant_conf *a, const fx_tenant_conf *b) {
#define SAME(f) ((!a->f && !b->f) || (a->f && b->f && strcmp(a->f, b->f) == 0))
  return SAME(fhir_base) && SAME(client_id) && SAME(token_endpoint) && SAME(profile) &&
         a->environment == b->environment && a->smart_version == b->smart_version &&
         a->max_concurrency == b->max_concurrency && a->rate_per_s == b->rate_per_s &&
         a->burst == b->burst;
#undef SAME
}

static void govern(supervisor *s, const fx_tenant_conf *t) {
  const fx_worker_conf *wc = &s->app.cfg->worker;
  fx_gov_conf gc = {.max_concurrency = (int)t->max_concurrency,
                    .rate_per_s = (double)t->rate_per_s,
                    .burst = (int)t->burst,
                    .breaker_window = (int)wc->breaker_window,
                    .breaker_ratio = (double)wc->breaker_percent / 100.0,
                    .breaker_cooldown_ms = (uint64_t)wc->breaker_cooldown_ms,
                    .breaker_cooldown_max_ms = (uint64_t)wc->breaker_cooldown_max_ms};
  fx_governor_set_tenant(s->sv.gov, t->id, &gc);
}

/* SIGHUP: the tenants section again. A new set becomes current for jobs
 * consumed from now on; the shared per-tenant services follow it (the token
 * cache keeps an unchanged tenant's token, the governor takes new limits, a
 * changed or removed tenant's cached references go). */
static void reload(supervisor *s) {
  fx_config *cfg = NULL;
  fx_tenant_set *next = NULL;
  fx_err err = {0};
  fx_tenant_set *prev = fx_tenant_slot_get(&s->tenants);
  int rc = fx_config_load(s->config_path, &cfg, &err);
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
    if (scope) fx_token_cache_set_tenant(s->app.tokens, t, scope, &err);
    free(scope);
    govern(s, t);
    if (!old) added++;
    else if (!same_tenant(old, t)) changed++;
    if (old && !same_tenant(old, t) && s->sv.refs) fx_refcache_drop_tenant(s->sv.refs, t->id);
  }
  for (size_t i = 0; i < prev->cfg->n_tenants; i++) {
    const char *id = prev->cfg->tenants[i].id;
    if (fx_config_tenant(cfg, id)) continue;
    fx_token_cache_remove_tenant(s->app.tokens, id); /* its tokens are dropped */
    fx_governor_remove_tenant(s->sv.gov, id);
    if (s->sv.refs) fx_refcache_drop_tenant(s->sv.refs, id);
    removed++;
  }
  fx_tenant_set_release(fx_tenant_slot_swap(&s->tenants, next));
  fx_tenant_set_release(prev);
  char a[16], c[16], r[16];
  snprintf(a, sizeof a, "%d", added);
  snprintf(c, sizeof c, "%d", changed);
  snprintf(r, sizeof r, "%d", removed);
  fx_log(FX_LOG_INFO, "configuration reloaded: tenants applied to jobs from now on", "added", a,
         "changed", c, "removed", r, NULL);
}

/* ---- signals and the end ------------------------------------------------------------- */

static void on_hup(uv_signal_t *h, int signum) {
  (void)signum;
  supervisor *s = h->data;
  if (!s->shutting_down) reload(s);
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

static void close_main(supervisor *s) {
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
   * left of the producer is flushed after the loop (no thread is left). */
  fx_producer_stop_serving(s->sv.producer);
  fx_loop_close(&s->lp);
}

/* Posted by each thread when its loop ended. */
static void on_thread_exit(void *arg) {
  supervisor *s = arg;
  if (--s->running == 0) close_main(s);
}

static void on_watch(uv_timer_t *t) {
  supervisor *s = t->data;
  atomic_store(&s->metrics.main_beat_ms, fx_now_ms());
}

static void log_totals(const fx_metrics *m) {
  char buf[7][24];
  const atomic_ullong *v[7] = {&m->jobs_consumed, &m->jobs_completed, &m->jobs_partial,
                               &m->jobs_failed,   &m->results,        &m->failures,
                               &m->http_requests};
  for (int i = 0; i < 7; i++)
    snprintf(buf[i], sizeof buf[i], "%llu", (unsigned long long)atomic_load(v[i]));
  fx_log(FX_LOG_INFO, "worker stopped", "jobs", buf[0], "completed", buf[1], "partial", buf[2],
         "failed", buf[3], "results", buf[4], "failures", buf[5], "http_requests", buf[6], NULL);
}

/* ---- start ------------------------------------------------------------------------------ */

/* Builds what the threads share and the threads themselves, binds the admin
 * port, and only then lets the consumers join their groups. */
static int start(supervisor *s, fx_err *err) {
  const fx_config *cfg = s->app.cfg;
  const fx_worker_conf *wc = &cfg->worker;
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  snprintf(s->identity, sizeof s->identity, "%s:%ld", host, (long)getpid());
  s->sv.app = &s->app;
  s->sv.metrics = &s->metrics;
  s->sv.tenants = &s->tenants;
  s->sv.identity = s->identity;
  s->sv.supervisor = &s->lp;
  s->sv.limits.max_bytes = (size_t)wc->max_job_bytes;
  s->sv.limits.max_patients = (size_t)wc->max_patients_per_job;
  if (!(s->sv.gov = fx_governor_new())) return fx_err_set(err, FX_ENOMEM, "out of memory");
  for (size_t i = 0; i < cfg->n_tenants; i++) govern(s, &cfg->tenants[i]);
  if (wc->ref_cache_entries > 0)
    s->sv.refs = fx_refcache_new((size_t)wc->ref_cache_entries, (size_t)wc->ref_cache_bytes,
                                 (uint64_t)wc->ref_cache_ttl_s * 1000u);
  int rc = fx_producer_open(cfg, &s->lp, &s->sv.producer, err);
  if (rc) return rc;
  /* /metrics counts what Kafka acknowledged on each output topic. */
  const fx_producer_counter counted[] = {{cfg->topics.results, &s->metrics.results},
                                         {cfg->topics.failures, &s->metrics.failures},
                                         {cfg->topics.dlq, &s->metrics.dead_letters},
                                         {cfg->topics.status, &s->metrics.statuses}};
  fx_producer_count(s->sv.producer, counted, sizeof counted / sizeof counted[0]);
  s->sv.max_message = fx_producer_max_message(s->sv.producer);
  s->n_threads = wc->threads ? (size_t)wc->threads : (size_t)uv_available_parallelism();
  s->threads = calloc(s->n_threads, sizeof *s->threads);
  s->kts = calloc(s->n_threads, sizeof *s->kts);
  s->group = fx_kthread_group_new();
  if (!s->threads || !s->kts || !s->group) return fx_err_set(err, FX_ENOMEM, "out of memory");
  for (size_t i = 0; i < s->n_threads; i++) {
    rc = fx_jobs_new(&s->sv, (int)i, s->group, on_thread_exit, s, &s->threads[i], err);
    if (rc) return rc;
    s->kts[i] = fx_jobs_kthread(s->threads[i]);
  }
  rc = fx_bulk_new(&s->sv, on_thread_exit, s, &s->bulk, err);
  if (rc) return rc;
  fx_admin_view view = {.sv = &s->sv, .threads = s->kts, .n_threads = s->n_threads,
                        .draining = &s->draining};
  rc = fx_admin_start(&view, &s->admin, err);
  if (rc) return rc;
  /* Everything that can fail has: now join the groups. */
  for (size_t i = 0; i < s->n_threads; i++) {
    if ((rc = fx_jobs_start(s->threads[i], err))) return rc;
    s->running++;
  }
  if ((rc = fx_bulk_start(s->bulk, err))) return rc;
  s->running++;
  return 0;
}

int fx_pool_run(const char *config_path) {
  supervisor *s = calloc(1, sizeof *s);
  if (!s) return 1;
  fx_err err = {0};
  s->config_path = config_path;
  uv_loop_init(&s->uv);
  fx_metrics_init(&s->metrics);
  int rc = fx_app_open(&s->app, config_path, &err);
  fx_tenant_set *first = NULL;
  if (!rc) rc = fx_tenant_set_new(s->app.cfg, 0, 1, &first, &err);
  if (!rc) {
    fx_tenant_slot_init(&s->tenants, first);
    rc = fx_loop_init(&s->lp, &s->uv, NULL, &err);
  }
  atomic_store(&s->metrics.main_beat_ms, fx_now_ms());
  if (!rc) rc = start(s, &err);
  if (rc) {
    /* A start-up failure is a configuration problem: say which and stop. A
     * thread that started has joined its group: it is left as the process
     * exits (its session ends); threads not started never joined. */
    fprintf(stderr, "fhirx worker: %s\n", err.msg[0] ? err.msg : "cannot start");
    _exit(1);
  }
  uv_signal_init(&s->uv, &s->sigterm);
  uv_signal_init(&s->uv, &s->sigint);
  uv_signal_init(&s->uv, &s->sighup);
  s->sigterm.data = s->sigint.data = s->sighup.data = s;
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_signal_start(&s->sighup, on_hup, SIGHUP);
  uv_timer_init(&s->uv, &s->purge_timer);
  s->purge_timer.data = s;
  uv_timer_init(&s->uv, &s->watch);
  s->watch.data = s;
  uv_timer_start(&s->watch, on_watch, WATCH_MS, WATCH_MS);
  char n[16];
  snprintf(n, sizeof n, "%zu", s->n_threads);
  fx_log(FX_LOG_INFO, "worker started", "threads", n, "group", s->app.cfg->worker.group_id,
         "topic", s->app.cfg->topics.jobs, NULL);

  uv_run(&s->uv, UV_RUN_DEFAULT);

  fx_admin_stop(s->admin); /* before the threads it reads go away */
  for (size_t i = 0; i < s->n_threads; i++) fx_jobs_join(s->threads[i]);
  fx_bulk_join(s->bulk);
  fx_kthread_group_free(s->group);
  fx_log(FX_LOG_INFO, "every Kafka thread ended; closing the producer", NULL);
  /* Normally nothing is left: every run waited for its delivery reports. */
  fx_producer_close(s->sv.producer, FLUSH_MS);
  uv_run(&s->uv, UV_RUN_DEFAULT);
  log_totals(&s->metrics);
  fx_refcache_free(s->sv.refs);
  fx_governor_free(s->sv.gov);
  fx_tenant_slot_destroy(&s->tenants);
  free(s->threads);
  free(s->kts);
  fx_app_close(&s->app);
  fx_metrics_destroy(&s->metrics);
  rc = uv_loop_close(&s->uv);
  free(s);
  return rc ? 1 : 0;
}
