/* The private parts of a run, shared by the three files that make it, in
 * layers (each calls only the ones below):
 *
 *   run.c        the public API (run.h): creation, start, the task cursor,
 *                abandoning, the owner's getters
 *   run_fetch.c  a run's requests and their answers: resources published,
 *                next pages, references followed
 *   run_core.c   its lifecycle (advance, the sink's settled callback) and
 *                its outputs (failure records, the dead letter, the status)
 *
 * Thread: the run's loop. */
#ifndef FX_JOBS_RUN_INT_H
#define FX_JOBS_RUN_INT_H

#include <jansson.h>

#include "worker/jobs/run.h"
#include "worker/model/refs.h"
#include "worker/model/strset.h"
#include "worker/out/records.h"

/* One request of a run: a (patient, type) task page by page, or a
 * referenced entity. */
typedef struct run_fetch {
  fx_fetch f;       /* first: the fetcher hands this back */
  fx_run *run;
  size_t task;      /* index in the job's tasks (for a reference: the task it came from) */
  int type;         /* index in fx_type_names */
  int depth;        /* 0: a patient task; n: a reference n hops away */
  int origin_type;  /* references: the type of the task that led here */
  int cache_owner;  /* references: this fetch fills the reference cache */
  char *ref_key;    /* references: "Practitioner/5" */
  char *url;        /* what to GET next */
  int page;
} run_fetch;

struct fx_run {
  fx_run_links links;
  fx_run_env env;
  fx_run_state state;
  fx_sink sink;
  int sink_open;      /* the run's hold on the sink */
  int delivered;      /* DONE with every output acknowledged */
  uint64_t seq;
  fx_partition *part; /* a reference */
  int64_t offset, timestamp;
  char *key;          /* the message key, for dead letters of unparseable jobs */
  char replayed_from[300];
  fx_tenant_metrics *tm;
  fx_job *job;        /* NULL when the job was invalid */
  fx_tenant_set *ts;  /* the tenants and profiles the job started with (a reference) */
  const fx_tenant_conf *tenant;
  const fx_profile *profile;
  fx_job_error jerr;
  char *raw;          /* invalid jobs: the original value, for the dead letter */
  size_t raw_len;
  int bulk;           /* a bulk job, handed over (no status here) */
  char job_id_buf[160];
  /* progress */
  size_t tasks_left, tasks_failed;
  size_t cursor_task;
  int cursor_type;
  fx_types *failed_types; /* per task: what a replay redoes */
  fx_types full_types;    /* fetched in full although the job had since */
  uint32_t *counts;       /* per type */
  size_t resources, failures;
  fx_errclass first_class;
  long first_status;
  char first_reason[512];
  char first_failure_at[32], last_failure_at[32];
  char started_at[32];
  uint64_t started_ms, deadline_ms;
  fx_strset *seen;        /* "Type/id" published by this job */
  fx_refs refs;           /* references asked for, reported, capped */
  size_t refs_fetched, refs_cached;
};

typedef struct failure {
  fx_errclass cls;
  long status;
  const char *outcome;
  const char *url;
  int attempts;
  const char *message;
  int no_replay; /* a replay cannot help (the server's data is at fault): not dead-lettered */
} failure;

typedef struct run_logctx {
  char partition[16], offset[24];
} run_logctx;

/* ---- run_core.c ---- */

/* The job's identity in its outputs (its job_id, else what could be read). */
const char *run_job_id(fx_run *r);
fx_rec_job run_rec_job(fx_run *r);
run_logctx run_log_of(const fx_run *run);
/* Produces through the thread's out queue, counted in the run's sink. */
void run_emit(fx_run *run, const char *topic, const char *key, char *value, size_t len,
              rd_kafka_headers_t *h);
/* A record could not be built (out of memory): counted, logged, the run fails. */
void run_unbuilt(fx_run *run, const char *what);
/* A failure record (f: the request it is about, NULL for the job as a whole). */
void run_record_failure(fx_run *run, const run_fetch *f, const failure *fl);
char *run_dump(json_t *o, size_t *len);
int run_cursor_exhausted(const fx_run *run);
/* Moves FETCHING and DROPPING on when they can. */
void run_advance(fx_run *run);
/* The sink's settled callback: ACKING and STATUS move on. */
void run_on_settled(fx_sink *s, int failed);
/* One task unit (a (patient, type) task or a reference) is done. */
void run_task_done(fx_run *run);
/* fx_run_abandon: nothing more is published; its waiting fetches are dropped. */
void run_abandon(fx_run *run);

/* ---- run_fetch.c ---- */

/* The first request of task (patient, type), or NULL when out of memory
 * (the failure is then recorded and the task done). */
run_fetch *run_first_fetch(fx_run *run, size_t task, int type);

#endif
