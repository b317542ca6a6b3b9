/* The records fhirx writes about jobs, built in one place from plain fields
 * for both kinds of job (patient jobs and bulk exports): failure records
 * (fhirx.failures), dead-letter headers (fhirx.dlq) and status records
 * (fhirx.status), plus the headers every output carries. The shapes are a
 * contract: schemas/failure.schema.json, dlq.headers.schema.json,
 * status.schema.json.
 *
 * No text can make a record vanish: every string goes through a UTF-8 check
 * (a character cut by a fixed-size copy becomes '?', fx_utf8_fix), so jansson
 * never refuses it. A builder returns NULL only when memory runs out; the
 * caller then counts it (fx_metrics.records_unbuilt) and logs it.
 *
 * Thread: any; nothing is shared. */
#ifndef FX_OUT_RECORDS_H
#define FX_OUT_RECORDS_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/model/errclass.h"

/* Who a record is about: the job and where its message was read. */
typedef struct fx_rec_job {
  const char *job_id;
  const char *tenant; /* NULL when unknown (a job that could not be read) */
  int attempt;
  const char *topic;  /* the job message's topic, partition and offset */
  int32_t partition;
  int64_t offset;
} fx_rec_job;

/* The outcome of a job, as status records name it. */
typedef enum fx_outcome { FX_OUTCOME_COMPLETED, FX_OUTCOME_PARTIAL, FX_OUTCOME_FAILED } fx_outcome;
const char *fx_outcome_name(fx_outcome o);

/* fhirx-job-id, fhirx-tenant (when known), fhirx-attempt. New list. */
rd_kafka_headers_t *fx_rec_headers(const fx_rec_job *j);

typedef struct fx_rec_failure {
  fx_errclass cls;
  long http_status;          /* 0: none */
  const char *outcome;       /* the server's OperationOutcome, NULL or "" for none */
  const char *url;           /* as requested; redacted here (no query values) */
  int attempts;              /* 0 counts as 1 */
  const char *message;
  const char *patient;       /* NULL: none */
  const char *resource_type; /* NULL: none */
  const char *reference;     /* "Type/id" a reference failure is about, NULL: none */
  const char *time;          /* RFC 3339, NULL: now */
} fx_rec_failure;

/* A failure record's value (malloc'd JSON, *len set) and key ("tenant/job_id",
 * the tenant segment empty when unknown). NULL when out of memory. */
char *fx_rec_failure_value(const fx_rec_job *j, const fx_rec_failure *f, size_t *len);
char *fx_rec_failure_key(const fx_rec_job *j);

typedef struct fx_rec_dead_letter {
  fx_errclass cls;
  long http_status;          /* 0: none */
  const char *reason;        /* the first failure's message (cut at 512 bytes, on a character) */
  int64_t timestamp;         /* the job message's timestamp (ms) */
  const char *first_failure; /* RFC 3339 */
  const char *last_failure;
  const char *replayed_from; /* NULL or "" when the job was not replayed */
  const char *omitted;       /* fhirx-value-omitted, NULL: the value is there */
} fx_rec_dead_letter;

/* fx_rec_headers plus every fhirx-* header of a dead letter. New list. */
rd_kafka_headers_t *fx_rec_dead_letter_headers(const fx_rec_job *j, const fx_rec_dead_letter *d);

typedef struct fx_rec_status {
  fx_outcome outcome;
  long long patients, tasks, tasks_failed;
  json_t *counts;            /* borrowed: resourceType -> n */
  long long resources, references_fetched, references_cached, failures;
  long long failures_unrecorded; /* past worker.max_reference_failures_per_job: counted only */
  fx_errclass error_class;   /* FX_EC_NONE: null */
  json_t *full_types;        /* borrowed array; NULL = [] */
  const char *since;         /* NULL: null */
  const char *started_at, *finished_at;
  long long duration_ms;
  const char *worker;        /* host:pid */
  json_t *bulk;              /* borrowed: the bulk object of a bulk job, NULL for patient jobs */
} fx_rec_status;

char *fx_rec_status_value(const fx_rec_job *j, const fx_rec_status *s, size_t *len);

/* A string for a record: valid UTF-8 (see above). New reference. */
json_t *fx_rec_text(const char *s);

#endif
