/* What `fhirx enqueue` reads: patients from arguments, a CSV file or an
 * NDJSON file, each line validated with the rules the workers apply and
 * grouped into jobs.
 *
 * Lines. A CSV file has a header row; one column holds the patient id
 * (default "patient"), and optional columns tenant, resources (types
 * separated by spaces, ';' or '|'), since and follow_references override the
 * command line's defaults per line. An NDJSON line is either one patient,
 * {"patient": "12724065", "tenant": "...", "resources": [...], "since": "...",
 * "follow_references": true} (all but patient optional), or a whole job (it has
 * patients or tasks, or is a bulk job: "kind", "group"), which becomes one job
 * as written.
 *
 * Bulk. fx_jobin_bulk makes one Group $export job (`enqueue --group`) from
 * the options' tenant, resources, since and follow_references.
 *
 * Jobs. Patients with the same tenant, resources, since and
 * follow_references go into jobs of `batch` patients, in input order; a
 * patient repeated within such a group is dropped (counted as a duplicate).
 * A job is complete when its batch is full; the unfilled batches end the
 * list in the order their groups first appeared. Ids are prefix-000001,
 * prefix-000002, ... in that order, or "job-" + a hash of the job's content:
 * either way the same input gives the same jobs with the same ids.
 *
 * A bad line is reported through the callback with its number and skipped;
 * the caller decides whether the good ones are still produced. */
#ifndef FX_JOBINPUT_H
#define FX_JOBINPUT_H

#include <stdio.h>

#include "common/err.h"
#include "worker/model/job.h"

typedef struct fx_jobin_opts {
  const char *tenant;    /* default tenant; NULL: every line must name one */
  const char *resources; /* default, comma-separated; NULL: the tenant's query set */
  const char *since;     /* default; NULL: full extract */
  int follow_references;
  size_t batch;          /* patients per job, >= 1 */
  const char *id_prefix; /* NULL: ids derived from the content */
  const char *job_id;    /* the id of the only job (an error if there are more) */
  const char *column;    /* CSV patient column; NULL: "patient" */
} fx_jobin_opts;

typedef struct fx_jobin_job {
  char *job_id;
  char *tenant;
  char *text; /* the job as produced: compact JSON */
  size_t len;
  size_t patients;
} fx_jobin_job;

typedef struct fx_jobin_stats {
  unsigned long lines;      /* input lines read (blank ones included) */
  unsigned long bad_lines;  /* reported and skipped */
  unsigned long patients;   /* in jobs */
  unsigned long duplicates; /* patients dropped as repeated within their group */
  unsigned long tenants;    /* distinct, in jobs */
  unsigned long jobs;
  unsigned long bulk_jobs;  /* of jobs, Group $export jobs (no patients) */
} fx_jobin_stats;

typedef enum { FX_JOBIN_CSV, FX_JOBIN_NDJSON } fx_jobin_format;

/* line: 1-based line number (for arguments, the patient's position);
 * msg: what is wrong and what to do, without the line's content. */
typedef void (*fx_jobin_bad_fn)(unsigned long line, const char *msg, void *arg);

typedef struct fx_jobin fx_jobin;

/* profiles (and profiles->cfg) and lim must outlive the fx_jobin. Fails when
 * an option is unusable (prefix, batch above the workers' limit). */
int fx_jobin_new(const fx_profile_set *profiles, const fx_job_limits *lim,
                 const fx_jobin_opts *opts, fx_jobin_bad_fn bad, void *arg, fx_jobin **out,
                 fx_err *err);
void fx_jobin_free(fx_jobin *in);

/* One patient given as an argument, at position pos. */
void fx_jobin_patient(fx_jobin *in, unsigned long pos, const char *patient);
/* One NDJSON line (without the newline). */
void fx_jobin_ndjson(fx_jobin *in, unsigned long line, const char *text, size_t len);
/* Reads a whole stream. Returns 0, or an error for what stops the reading
 * altogether (I/O, a CSV header without the patient column). */
int fx_jobin_read(fx_jobin *in, FILE *f, fx_jobin_format format, fx_err *err);

/* One bulk job ("kind": "bulk") exporting group, with the options' tenant
 * (or the config's only tenant), resources, since and follow_references
 * and the given _typeFilter queries (borrowed, in order). Its id is
 * opts.job_id, else prefix-NNNNNN, else "job-" + a hash of its content, so
 * the same request always gets the same id. Returns 0, or an error naming
 * the option at fault (nothing is added). */
int fx_jobin_bulk(fx_jobin *in, const char *group, const char *const *type_filters,
                  size_t n_type_filters, fx_err *err);

/* Ends the input: the unfilled batches become jobs and ids are final.
 * Fails when --job-id names one job but there are more. */
int fx_jobin_finish(fx_jobin *in, fx_err *err);

/* The jobs so far, in order (borrowed). */
const fx_jobin_job *fx_jobin_jobs(const fx_jobin *in, size_t *n);
void fx_jobin_get_stats(const fx_jobin *in, fx_jobin_stats *st);

#endif
