/* Private to worker/bulk/: what the bulk thread's files share, and nothing
 * anyone else may include.
 *
 * The files, each calling only those below it (a lower file reports upward
 * through the callbacks in fx_bulk, set by the file above it):
 *
 *   bulk.c    the thread's role: partitions, the progress records read from
 *             the bulk topic, which exports start or resume, the drain
 *   export.c  one export's lifecycle (life.h): kick-off, status polls, the
 *             manifest, and its ending (failure and dead letter, status
 *             record, final progress record, DELETE)
 *   files.c   one file's download: NDJSON lines to results, pause and resume
 *             against a full producer, retries, per-patient follow-up jobs
 *   follow.c  follow_references: the entities a file's resources reference,
 *             read (at most REF_PARALLEL at a time per file) and published
 *   report.c  what an export writes: progress, failure, dead-letter and
 *             status records (out/records.h), and the text of failed answers
 *   life.c    the pure parts: lifecycles, record states, poll waits, ranges
 *
 *   bulk.c -> export.c -> files.c -> follow.c -> report.c -> life.c
 *
 * Ownership: fx_bulk owns its exports (one list per lifecycle state); an
 * export owns its files (one list per phase); a file owns its references.
 * An export is freed once it reached DONE, which it does only when nothing
 * it started (a request, a file) is in flight; a file is freed once its
 * sink settled and its timer closed.
 *
 * Thread: the bulk thread, all of it. */
#ifndef FX_BULK_INT_H
#define FX_BULK_INT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

#include "common/fhir.h"
#include "common/http.h"
#include "worker/bulk/bulk.h"
#include "worker/bulk/life.h"
#include "worker/model/refs.h"
#include "worker/out/out.h"
#include "worker/out/records.h"
#include "worker/pool/kthread.h"
#include "worker/pool/services.h"

#define REDIRECTS_MAX 3      /* a file's redirects (to storage) followed */
#define BLOCKED_RETRY_MS 50  /* a full producer is tried again after this */
#define REF_PARALLEL 4       /* reference reads in flight per file */
#define PROGRESS_MS 1000     /* files done are recorded at most this often */
/* Distinct resource types one export may count: FHIR R4 has 145, so only a
 * broken server reaches this; its lines beyond are failures, not counts. */
#define MAX_COUNTED_TYPES 256

typedef struct bx_export bx_export;
typedef struct bx_file bx_file;
typedef struct bx_ref bx_ref; /* follow.c's */

/* ---- lists: one per export state, one per file phase -------------------------- */

typedef struct bx_link {
  struct bx_link *prev, *next;
} bx_link;

typedef struct bx_list {
  bx_link *first;
  size_t n;
} bx_list;

#define BX_OF(link, type, member) ((type *)(void *)((char *)(link) - offsetof(type, member)))

static inline void bx_list_add(bx_list *l, bx_link *k) {
  k->prev = NULL;
  k->next = l->first;
  if (l->first) l->first->prev = k;
  l->first = k;
  l->n++;
}

static inline void bx_list_del(bx_list *l, bx_link *k) {
  if (k->prev) k->prev->next = k->next;
  else l->first = k->next;
  if (k->next) k->next->prev = k->prev;
  k->prev = k->next = NULL;
  l->n--;
}

/* ---- the thread --------------------------------------------------------------- */

typedef struct bx_part {
  int32_t partition;
  int caught_up; /* read to the end once: its exports may run */
} bx_part;

/* How files.c reports to export.c (export.c sets them: bx_exports_init). */
typedef struct bx_file_up {
  /* Kafka answered for every output of f: delivered when each was taken and
   * the file was published whole. f closes right after. */
  void (*settled)(bx_file *f, int delivered);
  /* A file of e was freed. */
  void (*freed)(bx_export *e);
  /* f cannot be downloaded: its export fails. */
  void (*fail)(bx_export *e, fx_errclass cls, long status, const char *msg);
} bx_file_up;

struct fx_bulk {
  const fx_services *sv;
  fx_kthread *kt;   /* the thread: its loop, its consumer in <group>.bulk */
  fx_loop *lp;      /* the thread's loop (fx_kthread_loop) */
  uv_loop_t *uv;
  fx_out *out;      /* this thread's way out to Kafka */
  fx_sink loose;    /* progress records: always open, nobody waits for them */
  bx_part *parts;
  size_t n_parts, cap_parts;
  bx_list exports[FX_BX_NSTATES]; /* every export in memory, by state */
  json_t *finished; /* job_id -> [attempt, seq] of exports that ended */
  int stopping;
  uint64_t hour_ms; /* what an hour of bulk.deadline_hours lasts (deadline_hour_ms) */
  const bx_file_up *file_up;       /* export.c's, for files.c */
  void (*follow_done)(bx_file *f); /* files.c's, for follow.c: see bx_follow_pump */
};

/* The drain may end once nothing is left (fx_kthread_check asks idle). */
static inline void bx_maybe_leave(fx_bulk *b) {
  if (b->stopping && b->kt) fx_kthread_check(b->kt);
}

/* An export that ended (or whose ending began) at (attempt, seq): an older
 * record of it read again does not start it again. */
static inline void bx_finished_set(fx_bulk *b, const char *job_id, int attempt, long long seq) {
  json_object_set_new(b->finished, job_id, json_pack("[i, I]", attempt, (json_int_t)seq));
}

/* ---- an export ---------------------------------------------------------------- */

struct bx_export {
  fx_sink sink;         /* first: the records of its ending (failure and dead letter, status) */
  bx_link link;         /* in b->exports[state] */
  fx_bx_state state;    /* in memory (life.h): moved by export.c's move() only */
  fx_bulk *b;
  int32_t partition;
  char *job_id;
  int attempt;
  long long seq;
  fx_bx_record rstate;  /* what its progress records say: where a resume starts */
  json_t *rec;          /* the latest progress record, updated and republished */
  fx_job *job;          /* parsed when it starts */
  fx_tenant_set *ts;    /* the tenants it started with (a reference) */
  const fx_tenant_conf *tenant;
  char *status_url;
  uint64_t deadline_ms; /* wall clock, epoch ms */
  uint64_t wait_ms;     /* the last poll wait */
  int tries;            /* consecutive transient failures of the current step */
  int requests;         /* its kick-off, status poll or DELETE in flight */
  uv_timer_t timer;     /* WAITING: the next request; DOWNLOADING: the next progress record,
                         * or the end of a refusal's back-off */
  /* its ending (FAILING, REPORTING, ENDED) */
  fx_outcome end_outcome;
  fx_errclass end_cls;
  fx_bx_record end_rstate; /* completed, or failed */
  int end_delete;          /* DELETE the export on the server */
  /* the manifest */
  json_t *manifest;
  size_t n_out, n_err, n_files; /* output files, error files, both */
  unsigned char *done;  /* per file: acknowledged (recorded as files_done) */
  unsigned char *busy;  /* per file: a download of it is live (files.c) */
  int requires_token;
  size_t n_done;        /* files with done[] set */
  size_t cursor;        /* files.c: below it every file was started (one to redo lowers it) */
  int progress_dirty;   /* files finished since the last progress record */
  int refusals;         /* files whose results Kafka refused: each backs the next start off */
  uint64_t pump_at_ms;  /* monotonic: no file starts before it (0: none pending) */
  bx_list files[FX_BXF_NPHASES]; /* live files, by phase */
  json_t *counts;       /* resourceType -> resources published (acknowledged files), any type */
  long long error_lines, bad_lines;
  long long unrecorded; /* reference failures past the cap, counted only (model/refs.h) */
  fx_errclass first_cls; /* of the first failure record published; FX_EC_NONE before */
  fx_refs refs;         /* entities asked for, references reported, the cap (model/refs.h) */
  long long refs_fetched;
  char transaction_time[64];
  uint64_t started_ms;
};

/* export.c, for bulk.c. */
void bx_exports_init(fx_bulk *b);
/* A LISTED export of job_id, holding rec (taken); NULL when out of memory
 * (rec is then not taken). */
bx_export *bx_export_new(fx_bulk *b, const char *job_id, json_t *rec);
/* Starts or resumes a LISTED export from its record (rstate, rec). */
void bx_export_start(bx_export *e);
/* Gives e up here: its partition went elsewhere, the thread stops, or a
 * newer record says it ended. */
void bx_export_drop(bx_export *e);

/* ---- a file ------------------------------------------------------------------- */

struct bx_file {
  fx_sink sink;         /* first: every result, failure record and follow-up job of this file */
  bx_link link;         /* in e->files[phase] */
  fx_bxf_phase phase;   /* life.h: moved by files.c's move() only */
  bx_export *e;
  size_t index;         /* in the manifest: outputs first, then error files */
  char *url;            /* the manifest's URL (what is recorded and shown) */
  char shown[1024];     /* url without query values, for every result's fhirx-source-url */
  char *type;
  int is_error;
  int redirects;
  int tries;
  fx_http_xfer *xfer;   /* RECEIVING, PAUSED: the transfer, once its body began */
  char *buf;
  size_t len, cap, off;
  int skipping;         /* inside an over-long line: drop bytes up to its newline */
  long long line_no;
  json_t *counts;       /* resourceType -> resources this download published */
  long long error_lines, bad_lines;
  long long unrecorded; /* reference failures past the cap, counted only */
  /* follow.c: references to read once the lines are published */
  bx_ref *refs_head, *refs_tail;
  int refs_inflight;
  long long refs_fetched;
  /* The job's per-patient types (Cerner: Coverage, RelatedPerson,
   * ServiceRequest): the ids of this file's Patient lines, and the follow-up
   * patient jobs enqueued for them once the lines are published. */
  char **pp_ids;
  size_t n_pp, cap_pp;
  json_t *pp_jobs;
  uv_timer_t timer;     /* WAITING: the retry; PAUSED, DRAINING: room in the producer;
                           REFERENCES: a reference's retry */
};

/* Its export stopped downloading (failed, dropped): the file only ends. */
static inline int bx_file_dead(const bx_file *f) { return f->e->state != FX_BX_DOWNLOADING; }

/* files.c, for export.c. */
void bx_files_init(fx_bulk *b);
/* Starts downloads up to bulk.parallel_downloads. */
void bx_files_pump(bx_export *e);
/* The export stopped downloading: files waiting or paused end now, the
 * others at their next callback. */
void bx_files_stop(bx_export *e);
/* Files not yet settled; files not yet freed. */
size_t bx_files_running(const bx_export *e);
size_t bx_files_live(const bx_export *e);

/* follow.c, for files.c. */
/* Queues what res (found at depth: 1 = an exported resource) references,
 * when the job follows references and the profile goes that deep. */
void bx_follow_collect(bx_file *f, json_t *res, int depth);
/* Reads queued references, REF_PARALLEL at a time. Calls b->follow_done(f)
 * once none is queued or in flight (or, the file being dead, once none is in
 * flight: the queue is dropped). */
void bx_follow_pump(bx_file *f);
/* Frees what is queued. */
void bx_follow_clear(bx_file *f);

/* ---- report.c ----------------------------------------------------------------- */

/* Who the export's records are about: its job and where the job was read. */
fx_rec_job bx_rec_job(const bx_export *e);
/* fhirx-job-id, fhirx-tenant, fhirx-attempt: what every output carries. */
rd_kafka_headers_t *bx_headers(const bx_export *e);
/* Produces a record for sink (NULL: nobody waits for it). Takes value and hdrs. */
void bx_emit(fx_bulk *b, fx_sink *sink, const char *topic, const char *key, char *value,
             size_t len, rd_kafka_headers_t *hdrs);
/* A record that could not be built (no memory): sink (may be NULL) fails, so
 * whatever waits for it redoes the step. */
void bx_unbuilt(bx_export *e, fx_sink *sink, const char *what);

/* Publishes the export's state as a new progress record (seq + 1). */
void bx_publish_progress(bx_export *e);

/* What a failure record says (out/records.h builds it). */
typedef struct bx_failure {
  fx_errclass cls;
  long status;           /* 0: none */
  const char *outcome;   /* the server's OperationOutcome, NULL or "" for none */
  const char *url;       /* as requested (the builder redacts it); NULL: none */
  const char *type;      /* resource_type, NULL: none */
  const char *reference; /* "Type/id" of a referenced entity, NULL: none */
  int attempts;          /* 0: the export's current step's tries (at least 1) */
  const char *message;
} bx_failure;

/* One failure record for sink. The export's first failure's class becomes
 * its status's error_class. */
void bx_publish_failure(bx_export *e, fx_sink *sink, const bx_failure *fl);
/* The dead letter of a failed export (its job as it was), for e->sink. */
void bx_publish_dead_letter(bx_export *e, fx_errclass cls, long status, const char *msg);
/* The status record of an ending export (end_outcome, end_cls), for e->sink. */
void bx_publish_status(bx_export *e);

/* "<what> answered HTTP <status>[: <redirect note>][: <OperationOutcome>]". */
void bx_describe(const fx_http_response *res, const char *what, char *out, size_t size);
/* A Content-Location or Location resolved against the URL it came with;
 * malloc'd, NULL when it cannot be. */
char *bx_resolve(const char *base, const char *ref);

/* ---- small things ------------------------------------------------------------- */

static inline int bx_transient_status(long status) {
  return status == 408 || status == 429 || status == 502 || status == 503 || status == 504;
}

/* Compact JSON, malloc'd (NULL on OOM), *len set. */
static inline char *bx_dump(const json_t *o, size_t *len) {
  char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  *len = s ? strlen(s) : 0;
  return s;
}

/* Counts are kept by the resourceType each line names, known to fhirx's
 * profiles or not (a server may export Claim, ExplanationOfBenefit,
 * ImagingStudy, ...): the status counts what was published. */
static inline long long bx_count_of(json_t *counts, const char *type) {
  return json_integer_value(json_object_get(counts, type));
}

static inline void bx_count_add(json_t *counts, const char *type, long long n) {
  if (n) json_object_set_new(counts, type, json_integer(bx_count_of(counts, type) + n));
}

static inline long long bx_counts_sum(json_t *counts) {
  long long n = 0;
  const char *k;
  json_t *v;
  json_object_foreach(counts, k, v) n += json_integer_value(v);
  return n;
}

#endif
