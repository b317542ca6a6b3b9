/* A worker thread: a Kafka thread (pool/kthread.h) whose role is to run the
 * jobs of the jobs-topic partitions it is assigned.
 *
 * Each consumed message becomes a run (run.h). The thread's fetcher
 * (fetch.h) takes work from the runs, oldest first, tenant by tenant: runs
 * wait in one ready queue per tenant, so a tenant its governor holds back
 * (breaker open, every slot taken) is passed over in one step and cannot
 * starve the others. A run that reaches DONE releases its offset to its
 * partition's tracker (offsets.h), which stores, through librdkafka, the
 * offset after the lowest unfinished job; auto-commit commits it.
 *
 * Backpressure: once worker.max_jobs_in_flight runs are active (runs of a
 * tenant whose breaker is open are parked, not active; parked ones are
 * bounded at 8x), the thread pauses its partitions and keeps polling; it
 * resumes them below half.
 *
 * Threads: fx_jobs_new/start/join on the supervisor's thread; fx_jobs_stop
 * and the getters from any; the rest on the thread's loop. */
#ifndef FX_JOBS_JOBS_H
#define FX_JOBS_JOBS_H

#include "common/err.h"
#include "worker/pool/kthread.h"
#include "worker/pool/services.h"

typedef struct fx_jobs fx_jobs;

/* Creates worker thread number index (consumer, loop, fetcher); nothing
 * joins the group yet. group: the process's threads of the jobs group. */
int fx_jobs_new(const fx_services *sv, int index, fx_kthread_group *group,
                void (*on_exit)(void *arg), void *exit_arg, fx_jobs **out, fx_err *err);
int fx_jobs_start(fx_jobs *j, fx_err *err);
/* Any thread: drain, commit, leave. */
void fx_jobs_stop(fx_jobs *j);
/* After on_exit: joins the thread and frees j. */
void fx_jobs_join(fx_jobs *j);
/* A thread never started. */
void fx_jobs_free(fx_jobs *j);

/* Health, from any thread. */
const fx_kthread *fx_jobs_kthread(const fx_jobs *j);

#endif
