/* Extraction jobs: the messages upstream systems put on fhirx.jobs.
 *
 *   {"job_id": "nightly-2026-11-30-0001", "tenant": "ec2458f2-...",
 *    "patients": ["12724065", "12724066"],
 *    "resources": ["Patient", "Observation"],        optional: the tenant's query set
 *    "since": "2026-11-01T00:00:00Z",                optional: incremental
 *    "follow_references": true,                      optional
 *    "attempt": 1}                                   set by replay
 *
 * A dead letter narrows a job to what failed, per patient, with "tasks"
 * instead of "patients"/"resources":
 *    "tasks": [{"patient": "12724065", "resources": ["Observation"]}]
 *
 * Parsing is strict (schemas/job.schema.json says the same): unknown fields,
 * wrong types, unknown tenants or resource types and limits are rejected with
 * an error class and a sentence naming the field. */
#ifndef FX_JOB_H
#define FX_JOB_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "common/config.h"
#include "worker/errclass.h"
#include "worker/profile.h"

typedef struct fx_job_task {
  char *patient;
  uint32_t types; /* bitmask over fx_cerner_types; never 0 after parsing */
} fx_job_task;

typedef struct fx_job {
  char *job_id;
  char *tenant;
  fx_job_task *tasks; /* one per patient, in the job's order, de-duplicated */
  size_t n_tasks;
  char *since;           /* NULL: full extract */
  int follow_references; /* 0/1 */
  int attempt;           /* >= 1 */
} fx_job;

typedef struct fx_job_limits {
  size_t max_bytes;    /* largest accepted message value */
  size_t max_patients; /* per job */
} fx_job_limits;

typedef struct fx_job_error {
  fx_errclass cls;
  char job_id[129]; /* what could be read of the id, for the status record; "" if none */
  char tenant[65];
  char msg[512];
} fx_job_error;

/* Parses and validates a job. profiles supplies the tenants (profiles->cfg)
 * and how each fetches. Returns 0 and a new job in *out (fx_job_free), or -1
 * with err filled. */
int fx_job_parse(const char *buf, size_t len, const fx_profile_set *profiles,
                 const fx_job_limits *lim, fx_job **out, fx_job_error *err);

void fx_job_free(fx_job *job);

/* 1 if s is an acceptable job_id: 1..128 of [A-Za-z0-9._:-]. */
int fx_job_id_valid(const char *s);

/* The job as JSON (new reference), in the tasks form when tasks differ in
 * their types, else the compact patients/resources form. */
json_t *fx_job_to_json(const fx_job *job);

/* Total (patient, type) tasks. */
size_t fx_job_task_count(const fx_job *job);

#endif
