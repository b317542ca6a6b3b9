/* The job parser (worker/model/job.c), as a worker reads a message from
 * fhirx.jobs. Properties:
 *  - a rejected job has an error class and a message, and the message names
 *    its field when it has one ("patients[0]: ..."); its texts (message, what
 *    could be read of job_id and tenant) are valid UTF-8 when the input is;
 *  - a parsed job, written back as the worker writes a dead letter's value
 *    (fx_job_to_json, compact, run_core.c publish_dead_letter), parses again
 *    to the same job, and writing that one back gives the same bytes
 *    (a dead letter can always be replayed, and says what the job said). */
#include <jansson.h>

#include "tests/fuzz/fuzz.h"
#include "worker/model/job.h"

static const fx_job_limits lim = {.max_bytes = 2048, .max_patients = 5};
/* The dead letter is parsed without the size limit: it writes the resources
 * a job left to the tenant's default (17 types for Cerner) and the attempt,
 * so a job within ~300 bytes of worker.max_job_bytes has a dead letter over
 * it (docs/testing.md, "Fuzzing": not fixed here). */
static const fx_job_limits lim_dead = {.max_bytes = 1 << 20, .max_patients = 5};

static int eq_str(const char *a, const char *b) {
  if (!a || !b) return a == b;
  return strcmp(a, b) == 0;
}

static void same_job(const fx_job *a, const fx_job *b, const char *text) {
  FZ_CHECK(a->kind == b->kind, "kind changed: %s", text);
  FZ_CHECK(eq_str(a->job_id, b->job_id), "job_id changed: %s", text);
  FZ_CHECK(eq_str(a->tenant, b->tenant), "tenant changed: %s", text);
  FZ_CHECK(a->n_tasks == b->n_tasks, "task count %zu became %zu: %s", a->n_tasks, b->n_tasks,
           text);
  for (size_t i = 0; i < a->n_tasks; i++) {
    FZ_CHECK(eq_str(a->tasks[i].patient, b->tasks[i].patient), "task %zu's patient changed: %s",
             i, text);
    FZ_CHECK(fx_types_eq(a->tasks[i].types, b->tasks[i].types), "task %zu's types changed: %s",
             i, text);
    FZ_CHECK(!fx_types_empty(b->tasks[i].types), "task %zu has no types: %s", i, text);
  }
  FZ_CHECK(eq_str(a->since, b->since), "since changed: %s", text);
  FZ_CHECK(a->follow_references == b->follow_references, "follow_references changed: %s", text);
  FZ_CHECK(a->attempt == b->attempt && b->attempt >= 1, "attempt changed: %s", text);
  FZ_CHECK(eq_str(a->group, b->group), "group changed: %s", text);
  FZ_CHECK(fx_types_eq(a->bulk_types, b->bulk_types), "bulk types changed: %s", text);
  FZ_CHECK(fx_types_eq(a->per_patient_types, b->per_patient_types),
           "per-patient types changed: %s", text);
  FZ_CHECK(a->bulk_all == b->bulk_all, "bulk_all changed: %s", text);
  FZ_CHECK(a->n_type_filters == b->n_type_filters, "type_filter count changed: %s", text);
  for (size_t i = 0; i < a->n_type_filters; i++)
    FZ_CHECK(eq_str(a->type_filters[i], b->type_filters[i]), "type_filter[%zu] changed: %s", i,
             text);
}

/* The value of the job's dead letter, as run_core.c writes it. */
static char *dead_letter_value(const fx_job *job, size_t *len) {
  json_t *j = fx_job_to_json(job);
  FZ_CHECK(j != NULL, "fx_job_to_json refused a parsed job (%s)", job->job_id);
  char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(j);
  FZ_CHECK(s != NULL, "a parsed job's JSON does not print (%s)", job->job_id);
  *len = strlen(s);
  return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const fx_profile_set *ps = fz_profiles();
  fx_job *job = NULL;
  fx_job_error e;
  memset(&e, 0, sizeof e);
  if (fx_job_parse((const char *)data, size, ps, &lim, &job, &e) != 0) {
    FZ_CHECK(job == NULL, "a rejected job was returned");
    FZ_CHECK(e.cls != FX_EC_NONE, "a rejected job has no error class");
    FZ_CHECK(e.msg[0] != '\0', "a rejected job has no message");
    FZ_CHECK(memchr(e.msg, '\0', sizeof e.msg) && memchr(e.field, '\0', sizeof e.field) &&
                 memchr(e.job_id, '\0', sizeof e.job_id) && memchr(e.tenant, '\0', sizeof e.tenant),
             "an error field is not terminated");
    /* What the status record and the dead letter's headers say: valid UTF-8
     * when the message was (issue 13 item 4: a copy must not cut a character). */
    if (!memchr(data, '\0', size)) {
      char *in = fz_str(data, size);
      if (fz_utf8_valid(in))
        FZ_CHECK(fz_utf8_valid(e.msg) && fz_utf8_valid(e.job_id) && fz_utf8_valid(e.tenant) &&
                     fz_utf8_valid(e.field),
                 "an error text is not valid UTF-8: job_id \"%s\" tenant \"%s\" msg \"%s\"",
                 e.job_id, e.tenant, e.msg);
      free(in);
    }
    if (e.field[0])
      FZ_CHECK(strncmp(e.msg, e.field, strlen(e.field)) == 0,
               "the message \"%s\" does not start with its field \"%s\"", e.msg, e.field);
    return 0;
  }
  FZ_CHECK(job != NULL, "an accepted job is NULL");
  FZ_CHECK(fx_job_id_valid(job->job_id), "an accepted job_id is not valid: %s", job->job_id);
  size_t len = 0;
  char *dl = dead_letter_value(job, &len);
  fx_job *again = NULL;
  memset(&e, 0, sizeof e);
  FZ_CHECK(fx_job_parse(dl, len, ps, &lim_dead, &again, &e) == 0,
           "the dead letter of an accepted job is refused (%s): %s", e.msg, dl);
  same_job(job, again, dl);
  size_t len2 = 0;
  char *dl2 = dead_letter_value(again, &len2);
  FZ_CHECK(len == len2 && memcmp(dl, dl2, len) == 0, "the dead letter changed: %s -> %s", dl,
           dl2);
  free(dl2);
  fx_job_free(again);
  free(dl);
  fx_job_free(job);
  return 0;
}
