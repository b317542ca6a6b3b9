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
 * A bulk job ("kind": "bulk") is one Group-level Bulk Data $export instead of
 * a patient list ("kind" is optional and defaults to "patients"):
 *
 *   {"kind": "bulk", "job_id": "cohort-2026-11-30", "tenant": "ec2458f2-...",
 *    "group": "11ec-d16a-c763b73e-98e8-a31715e6a2bf",
 *    "resources": ["Patient", "Observation"],        optional: the tenant's types; those
 *                                                    the profile's $export takes go in
 *                                                    _type, the rest per patient
 *    "since": "2026-11-01T00:00:00Z",                optional: _since
 *    "type_filter": ["Observation?category=laboratory"], optional: _typeFilter
 *    "follow_references": true,                      optional
 *    "attempt": 1}                                   set by replay
 *
 * It has no tasks: a failed bulk job is dead-lettered and replayed whole.
 * "patients"/"tasks" are rejected in a bulk job, "group"/"type_filter" in a
 * patient job.
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
#include "worker/model/errclass.h"
#include "worker/model/profile.h"
#include "worker/model/resources.h"

typedef struct fx_job_task {
  char *patient;
  fx_types types; /* never empty after parsing */
} fx_job_task;

typedef enum { FX_JOB_PATIENTS = 0, FX_JOB_BULK = 1 } fx_job_kind;

#define FX_BULK_MAX_TYPE_FILTERS 32     /* type_filter entries per bulk job */
#define FX_BULK_TYPE_FILTER_MAX 1024    /* characters per type_filter entry */

typedef struct fx_job {
  fx_job_kind kind;
  char *job_id;
  char *tenant;
  fx_job_task *tasks; /* one per patient, in the job's order, de-duplicated; NULL for bulk */
  size_t n_tasks;     /* 0 for bulk */
  char *since;           /* NULL: full extract (bulk: sent as _since) */
  int follow_references; /* 0/1 */
  int attempt;           /* >= 1 */
  /* Kind bulk only (NULL/0 for a patient job): */
  char *group;           /* the Group id: 1..64 of [A-Za-z0-9.-] */
  fx_types bulk_types;   /* _type: the job's types that the profile's Group $export exports;
                            never empty unless bulk_all. Without "resources", the tenant's types
                            (tenants[].resources or the profile's default query set), so
                            the export stays within the tenant's scopes */
  fx_types per_patient_types; /* the job's types the export does not cover (Cerner: Coverage,
                                 RelatedPerson, ServiceRequest): fetched per patient, for
                                 the exported Patients, by follow-up patient jobs (bulk.h).
                                 Non-empty only with Patient exported and no since */
  fx_types per_patient_skipped; /* the tenant's types (the job named none) that the export
                                   does not cover and that cannot be fetched per patient:
                                   with since, the export's Patients are only those changed
                                   (so some patients would be missed), or Patient is not
                                   exported. Not fetched; the status record says so */
  int bulk_all;          /* no _type: the export has whatever the server exports (a profile
                            whose bulk.types is "*", and no resources named by the job or
                            the tenant); bulk_types is then empty */
  char **type_filters;   /* _typeFilter queries as written, "Observation?category=laboratory":
                            a type of the export, '?', a query; no ',' (written %2C) */
  size_t n_type_filters; /* 0..FX_BULK_MAX_TYPE_FILTERS */
} fx_job;

typedef struct fx_job_limits {
  size_t max_bytes;    /* largest accepted message value */
  size_t max_patients; /* per job */
} fx_job_limits;

typedef struct fx_job_error {
  fx_errclass cls;
  char job_id[129]; /* what could be read of the id, for the status record; "" if none */
  char tenant[65];
  char msg[512];    /* "patients[0]: ..." : the field it is about, then what is wrong */
  char field[96];   /* that field's path ("patients[0]", "type_filter[2]"), "" for the
                       job as a whole */
} fx_job_error;

/* The message without its field path ("expected ..." for "patients[0]:
 * expected ..."), for callers that name the field their own way. */
const char *fx_job_error_text(const fx_job_error *e);

/* Validates a job built as JSON (doc is borrowed), with the same rules and
 * limits as a message (the size limit applies to its compact form): for
 * tools that build jobs (enqueue, replay) and check them without printing
 * and parsing them again. */
int fx_job_from_json(const json_t *doc, const fx_profile_set *profiles, const fx_job_limits *lim,
                     fx_job **out, fx_job_error *err);

/* Parses and validates a job (buf may be NULL with len 0: a tombstone, refused
 * as an empty message). profiles supplies the tenants (profiles->cfg)
 * and how each fetches. Returns 0 and a new job in *out (fx_job_free), or -1
 * with err filled. */
int fx_job_parse(const char *buf, size_t len, const fx_profile_set *profiles,
                 const fx_job_limits *lim, fx_job **out, fx_job_error *err);

void fx_job_free(fx_job *job);

/* 1 if s is an acceptable job_id: 1..128 of [A-Za-z0-9._:-]. */
int fx_job_id_valid(const char *s);

/* 1 if s is a patient id a patient job takes. */
int fx_job_patient_valid(const char *s);

/* The id of a bulk job's follow-up patient job: "<job_id>.per-patient.<file>.<chunk>"
 * (file: the 1-based manifest index of the Patient file whose patients it
 * names; chunk: 1-based, for files with more patients than a job may have),
 * with the job_id cut and a hash of it added when the whole would pass 128
 * characters. The same arguments always give the same id (a resumed or
 * repeated download enqueues the same job again, never a new one). Returns 0,
 * or -1 when size is too small. */
int fx_job_per_patient_id(const char *job_id, size_t file_no, size_t chunk_no, char *out,
                          size_t size);

/* The job as JSON (new reference), in the tasks form when tasks differ in
 * their types, else the compact patients/resources form. */
json_t *fx_job_to_json(const fx_job *job);

/* A job's since as the FHIR instant both kinds of job send (_lastUpdated=ge
 * for patient jobs, _since for bulk): a date ("2026-11-01", which a job may
 * say) becomes its first instant in UTC ("2026-11-01T00:00:00Z"), an instant
 * stays as written. Cerner needs the time: MedicationRequest and
 * ServiceRequest refuse _lastUpdated without one (medication-request.md,
 * service-request.md), and _since is an instant (group-export.md). Writes
 * into out (NUL terminated); returns its length, or -1 when since does not
 * fit (out is then ""). The job and its status record keep since as written. */
int fx_job_since_instant(const char *since, char *out, size_t size);

/* Total (patient, type) tasks; 0 for a bulk job. */
size_t fx_job_task_count(const fx_job *job);

/* A buffer that holds any _type value: every type name plus a comma each. */
#define FX_BULK_TYPE_STRING_SIZE 4096

/* The _type value of a bulk job: its bulk_types comma-separated in
 * fx_type_names order ("Observation,Patient"), written into out (NUL
 * terminated). Returns its length (0 and "" for a job that is not a bulk
 * job), or -1 when size is too small (out is then "" if size > 0). Bulk Data
 * sends it once, never repeated. */
int fx_job_bulk_type_string(const fx_job *job, char *out, size_t size);

/* The _typeFilter value of a bulk job: its type_filters joined with ',' in
 * the job's order, unencoded (percent-encode it as any query value when
 * building the URL). Returns a new string (free it): "" when there are no
 * filters (send no _typeFilter), NULL only when out of memory. */
char *fx_job_bulk_type_filter_string(const fx_job *job);

#endif
