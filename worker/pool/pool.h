/* The worker pool: `fhirx worker`.
 *
 * One process runs N worker threads and a supervisor (the main thread).
 *
 *   main thread: signals, the shared idempotent producer's delivery reports
 *                (its queue bridged into the main loop), thread start/stop.
 *   worker thread (x N): a libuv loop with its own Kafka consumer (same
 *                group, cooperative-sticky), its own curl multi, and the
 *                jobs of the partitions it was assigned.
 *
 * A job ("run") lives on the thread that consumed it. Its outputs (results,
 * failures, dead letter, status) are produced on the shared producer with
 * the run as opaque; delivery reports arrive on the main thread, which
 * counts them down and posts the run back to its thread when the last one
 * is in. Only then is the run's offset released to the partition tracker
 * (offsets.h), which stores the offset after the lowest unfinished job.
 *
 * Ownership: a run is freed on its thread once (a) every task is done and
 * (b) every output is acknowledged; runs.outputs is the atomic count of (b)
 * plus one guard held while (a) is not yet true. Exactly one party sees the
 * count reach zero. */
#ifndef FX_POOL_H
#define FX_POOL_H

#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "common/governor.h"
#include "common/kafka.h"
#include "common/loop.h"
#include "common/refcache.h"
#include "worker/model/app.h"
#include "worker/bulk/bulk.h"
#include "worker/model/job.h"
#include "worker/pool/offsets.h"
#include "worker/model/resources.h"
#include "worker/model/tenants.h"

typedef struct fx_pool fx_pool;
typedef struct fx_wthread fx_wthread;
typedef struct fx_run fx_run;
typedef struct fx_fetch fx_fetch;

/* Request latency buckets (seconds) of fhirx_http_request_duration_seconds. */
#define FX_LAT_BUCKETS 12
extern const double fx_lat_bounds[FX_LAT_BUCKETS];

/* Per-tenant request metrics. Tenants get a slot on first use (startup or
 * reload) and keep it: labels stay bounded by the tenants ever configured. */
typedef struct fx_tenant_metrics {
  char id[65];
  atomic_ullong http[5]; /* 2xx, 3xx, 4xx, 5xx, no answer (transport error) */
  atomic_ullong lat[FX_LAT_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
  atomic_ullong lat_sum_us, lat_count;
} fx_tenant_metrics;

#define FX_MAX_TENANT_METRICS 1024

/* Process-wide counters, for logs and /metrics. */
typedef struct fx_pool_stats {
  atomic_ullong jobs_consumed, jobs_completed, jobs_partial, jobs_failed;
  atomic_ullong results, failures, dead_letters, statuses, delivery_errors;
  atomic_ullong http_requests, http_retries;
  atomic_ullong refs_fetched, refs_cached;
  atomic_ullong governor_waits;
  atomic_ullong bulk_kickoffs, bulk_polls, bulk_files, bulk_completed, bulk_failed, bulk_resumed;
  atomic_llong bulk_active;
  atomic_llong requests_in_flight, jobs_in_flight, paused_partitions;
  atomic_int producer_brokers_up;
  atomic_ullong main_beat_ms;
} fx_pool_stats;

struct fx_pool {
  fx_app app;
  fx_job_limits limits;
  size_t max_message; /* largest value we produce (message.max.bytes minus headroom) */
  rd_kafka_t *producer;
  rd_kafka_queue_t *producer_q;
  uv_loop_t *main_loop;
  fx_loop main_lp;
  fx_kqueue *producer_kq;
  fx_wthread **threads;
  size_t n_threads;
  atomic_int threads_running;
  atomic_int force; /* drain deadline passed: give up on undelivered outputs */
  char identity[300]; /* "host:pid", in status records */
  fx_refcache *refs;  /* NULL when worker.ref_cache_entries is 0 */
  fx_governor *gov;   /* per-tenant limits, Retry-After, circuit breaker */
  fx_tenant_slot tenants; /* the current tenant set (SIGHUP replaces it) */
  const char *config_path;
  pthread_mutex_t tm_mu; /* adding tenant metrics slots */
  fx_tenant_metrics *tm[FX_MAX_TENANT_METRICS];
  atomic_int n_tm;
  struct fx_admin *admin;
  struct fx_bulk *bulk;
  atomic_int draining;
  fx_pool_stats stats;
};

/* One resource fetch: a read, or a search followed page by page. */
struct fx_fetch {
  fx_fetch *next;   /* in the ready queue or the waiting list */
  fx_run *run;
  size_t task; /* index in run->job->tasks (for a reference: the task it came from) */
  int type;    /* index in fx_type_names */
  int depth;   /* 0: a patient task; n: a reference n hops away */
  int origin_type;  /* references: the type of the task that led here */
  int cache_owner;  /* references: this fetch fills the reference cache */
  int governed;     /* holds a governor slot until its answer is in */
  char *ref_key;    /* references: "Practitioner/5" */
  char *url;   /* what to GET next */
  int page;
  int attempts;
  uv_timer_t timer; /* retry delay; the fetch is freed in its close callback */
};

struct fx_run {
  fx_wthread *wt;
  fx_run *prev, *next;
  fx_partition *part; /* reference */
  int64_t offset, timestamp;
  char *key;          /* the message key, for dead letters of unparseable jobs */
  char replayed_from[300]; /* fhirx-replayed-from of the job message: "topic/partition/offset" */
  fx_tenant_metrics *tm;   /* the job's tenant's request metrics, NULL for invalid jobs */
  fx_job *job;        /* NULL when the job was invalid */
  fx_tenant_set *ts;  /* the tenants and profiles this job started with (a reference) */
  fx_job_error jerr;
  char *raw;          /* invalid jobs: the original value, for the dead letter */
  size_t raw_len;
  atomic_int outputs;
  atomic_int delivery_failed;
  atomic_int awaiting_acks; /* tasks done; the status waits for the other outputs' acks */
  size_t tasks_left, tasks_failed;
  fx_types *failed_types; /* per task */
  uint32_t counts[FX_NTYPES];
  size_t resources, failures;
  fx_errclass first_class;
  long first_status;
  char first_reason[256];
  char first_failure_at[32], last_failure_at[32];
  char started_at[32];
  uint64_t started_ms;
  struct fx_strset *seen; /* Type/id published by this job */
  struct fx_strset *requested; /* Type/id references asked for (fetched, cached or failed) */
  size_t refs_fetched, refs_cached, refs_requested;
  uint64_t deadline_ms; /* worker.job_deadline_s after it started */
  size_t cursor_task;     /* the next (task, type) to start */
  int cursor_type;
  fx_types full_types;    /* types fetched in full although the job had since */
  int state;              /* 0 completed, 1 partial, 2 failed: set when the status is made */
  int bulk;               /* a bulk job, handed over to the bulk thread (no status here) */
  int abandoned;
};

struct fx_wthread {
  fx_pool *pool;
  int index;
  uv_thread_t tid;
  uv_loop_t uv;
  fx_loop lp;
  rd_kafka_t *consumer;
  rd_kafka_queue_t *cq;
  fx_kqueue *ckq;
  fx_partition **parts;
  size_t n_parts, cap_parts;
  fx_run *runs;
  size_t n_runs;
  int paused;
  fx_fetch *q_head, *q_tail; /* fetches ready to send (next pages, retries due) */
  fx_fetch *waiting;         /* fetches in a retry delay */
  size_t inflight;           /* fetches sending or waiting for a token */
  struct fx_deferred *def_head, *def_tail; /* outputs the producer's queue had no room for */
  uv_timer_t def_timer;
  uv_timer_t pump_timer; /* wakes the pump when a blocked tenant may go again */
  uv_timer_t heartbeat;  /* polls the consumer and re-checks backpressure every 500 ms */
  atomic_ullong beat_ms;  /* last heartbeat: /healthz checks the loop turns */
  atomic_int brokers_up;  /* from the consumer's statistics */
  atomic_llong lag;       /* consumer lag over its partitions, from statistics */
  atomic_int assigned;    /* partitions currently assigned */
  long long paused_counted; /* this thread's share of the paused-partitions gauge */
  int stopping, closing, closed;
  int assigned_once; /* the group gave this consumer an assignment at least once */
  int commit_tries;  /* final commit attempts */
  int left;          /* consumer_close_queue called */
  int skip_destroy;  /* see maybe_close: librdkafka 2.0.2 cannot destroy it safely */
  uv_timer_t drain_timer;
};

/* pool.c */
int fx_pool_run(const char *config_path);

/* producer.c: produce with run as opaque. On success librdkafka owns value
 * (malloc'd; it frees it) and headers, and the run counts one more output.
 * On failure (e.g. the local queue is full) nothing changed hands: the
 * caller still owns value and headers and may try again later. */
int fx_produce(fx_pool *p, fx_run *run, const char *topic, const char *key, char *value,
               size_t value_len, rd_kafka_headers_t *headers);
/* The same for a bulk export's outputs: obj (NULL, or malloc-aligned) comes
 * back through fx_bulk_delivered on the main thread. */
int fx_produce_bulk(fx_pool *p, void *obj, const char *topic, const char *key, char *value,
                    size_t value_len, rd_kafka_headers_t *headers);
int fx_producer_open(fx_pool *p, fx_err *err);
void fx_producer_close(fx_pool *p);

/* run.c */
void fx_run_start(fx_wthread *wt, fx_partition *part, const rd_kafka_message_t *m);
void fx_run_complete(void *run); /* on the run's thread, when its outputs are all in */
void fx_run_acked(void *run);    /* on the run's thread: every output but the status is in */
void fx_run_abandon(fx_run *run);
void fx_wthread_pump(fx_wthread *wt);

/* wthread.c */
int fx_wthread_start(fx_pool *p, int index, fx_err *err);
void fx_wthread_stop(void *wt); /* posted to the thread's mailbox */
void fx_wthread_run_done(fx_wthread *wt); /* a run was freed: backpressure, shutdown */

/* The request metrics slot of tenant (created on first use). */
fx_tenant_metrics *fx_pool_tenant_metrics(fx_pool *p, const char *tenant);


/* admin.c */
int fx_admin_start(fx_pool *p, fx_err *err);
void fx_admin_stop(fx_pool *p);


#endif
