#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "worker/job.h"
#include "worker/resources.h"

static fx_config *cfg;
static fx_profile_set profiles;
static const fx_job_limits lim = {.max_bytes = 4096, .max_patients = 3};

static int setup(void **state) {
  (void)state;
  fx_err err = {0};
  int rc = fx_config_parse(
      "{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://x/r4/t1\",\"client_id\":\"c\"},"
      "{\"id\":\"t2\",\"fhir_base\":\"https://x/r4/t2\",\"client_id\":\"c\","
      "\"resources\":[\"Patient\",\"Condition\",\"Practitioner\"]}],"
      "\"keys\":[{\"path\":\"k.pem\"}]}",
      "/", &cfg, &err);
  return rc ? rc : fx_profile_set_load(cfg, &profiles, &err);
}

static int teardown(void **state) {
  (void)state;
  fx_profile_set_free(&profiles);
  fx_config_free(cfg);
  return 0;
}

static uint32_t bit(const char *type) { return FX_TYPE_BIT(fx_resource_index(type)); }

static void expect_bad(const char *text, fx_errclass cls, const char *needle) {
  fx_job *job = NULL;
  fx_job_error e;
  if (fx_job_parse(text, strlen(text), &profiles, &lim, &job, &e) == 0) fail_msg("accepted: %s", text);
  assert_null(job);
  if (e.cls != cls) fail_msg("class %s, want %s: %s", fx_errclass_name(e.cls), fx_errclass_name(cls), e.msg);
  if (!strstr(e.msg, needle)) fail_msg("'%s' not in '%s'", needle, e.msg);
}

static void valid_jobs(void **state) {
  (void)state;
  const char *text = "{\"job_id\":\"j-1\",\"tenant\":\"t1\",\"patients\":[\"12724065\",\"12724066\","
                     "\"12724065\"],\"resources\":[\"Patient\",\"Observation\"],"
                     "\"since\":\"2026-11-01T00:00:00Z\",\"follow_references\":true}";
  fx_job *job;
  fx_job_error e;
  assert_int_equal(fx_job_parse(text, strlen(text), &profiles, &lim, &job, &e), 0);
  assert_string_equal(job->job_id, "j-1");
  assert_int_equal(job->n_tasks, 2); /* the repeated patient folds into one task */
  assert_string_equal(job->tasks[1].patient, "12724066");
  assert_int_equal(job->tasks[0].types, bit("Patient") | bit("Observation"));
  assert_string_equal(job->since, "2026-11-01T00:00:00Z");
  assert_int_equal(job->follow_references, 1);
  assert_int_equal(job->attempt, 1);
  assert_int_equal(fx_job_task_count(job), 4);
  fx_job_free(job);

  /* Without resources: the tenant's query set, per-patient types only. */
  const char *t2 = "{\"job_id\":\"j2\",\"tenant\":\"t2\",\"patients\":[\"1\"],\"attempt\":3}";
  assert_int_equal(fx_job_parse(t2, strlen(t2), &profiles, &lim, &job, &e), 0);
  assert_int_equal(job->tasks[0].types, bit("Patient") | bit("Condition"));
  assert_int_equal(job->attempt, 3);
  fx_job_free(job);
  const char *t1 = "{\"job_id\":\"j3\",\"tenant\":\"t1\",\"patients\":[\"1\"]}";
  assert_int_equal(fx_job_parse(t1, strlen(t1), &profiles, &lim, &job, &e), 0);
  assert_int_equal(job->tasks[0].types, fx_profile_patient_types(profiles.by_tenant[0]));
  assert_false(job->tasks[0].types & bit("Practitioner"));
  assert_true(job->tasks[0].types & bit("RelatedPerson"));
  fx_job_free(job);
}

static void tasks_round_trip(void **state) {
  (void)state;
  const char *text = "{\"job_id\":\"j\",\"tenant\":\"t1\",\"tasks\":[{\"patient\":\"1\","
                     "\"resources\":[\"Observation\"]},{\"patient\":\"2\",\"resources\":"
                     "[\"Condition\",\"Patient\"]}],\"attempt\":2}";
  fx_job *job;
  fx_job_error e;
  assert_int_equal(fx_job_parse(text, strlen(text), &profiles, &lim, &job, &e), 0);
  json_t *j = fx_job_to_json(job);
  char *again = json_dumps(j, JSON_COMPACT);
  assert_string_equal(again, "{\"job_id\":\"j\",\"tenant\":\"t1\",\"tasks\":[{\"patient\":\"1\","
                             "\"resources\":[\"Observation\"]},{\"patient\":\"2\",\"resources\":"
                             "[\"Condition\",\"Patient\"]}],\"attempt\":2}");
  fx_job *job2;
  assert_int_equal(fx_job_parse(again, strlen(again), &profiles, &lim, &job2, &e), 0);
  assert_int_equal(job2->tasks[1].types, job->tasks[1].types);
  free(again);
  json_decref(j);
  fx_job_free(job);
  fx_job_free(job2);
}

static void rejects(void **state) {
  (void)state;
  expect_bad("not json", FX_EC_INVALID_JOB, "not JSON");
  expect_bad("[1,2]", FX_EC_INVALID_JOB, "JSON object");
  expect_bad("{\"tenant\":\"t1\",\"patients\":[\"1\"]}", FX_EC_INVALID_JOB, "job_id");
  expect_bad("{\"job_id\":\"a b\",\"tenant\":\"t1\",\"patients\":[\"1\"]}", FX_EC_INVALID_JOB,
             "job_id");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"nope\",\"patients\":[\"1\"]}", FX_EC_UNKNOWN_TENANT,
             "nope");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[]}", FX_EC_INVALID_JOB,
             "non-empty");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[12]}", FX_EC_INVALID_JOB,
             "patients[0]");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"../x\"]}", FX_EC_INVALID_JOB,
             "patients[0]");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\",\"2\",\"3\",\"4\"]}",
             FX_EC_INVALID_JOB, "limit of 3");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"resources\":"
             "[\"Medication\"]}",
             FX_EC_INVALID_JOB, "resources[0]: 'Medication'");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"resources\":"
             "[\"Practitioner\"]}",
             FX_EC_INVALID_JOB, "references");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"since\":\"yesterday\"}",
             FX_EC_INVALID_JOB, "since");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"attempt\":0}",
             FX_EC_INVALID_JOB, "attempt");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"priority\":1}",
             FX_EC_INVALID_JOB, "unknown field 'priority'");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"tasks\":[]}",
             FX_EC_INVALID_JOB, "exactly one of");
  expect_bad("{\"job_id\":\"j\",\"job_id\":\"k\",\"tenant\":\"t1\",\"patients\":[\"1\"]}",
             FX_EC_INVALID_JOB, "not JSON");
  char big[5000];
  memset(big, ' ', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  expect_bad(big, FX_EC_INVALID_JOB, "more than the 4096 bytes");
  /* A 10 MB job against a 1 MiB limit is refused before it is parsed. */
  size_t ten = 10 * 1000 * 1000;
  char *huge = malloc(ten);
  memset(huge, ' ', ten);
  fx_job_limits mib = {.max_bytes = 1 << 20, .max_patients = 1000};
  fx_job *hj = NULL;
  fx_job_error he;
  assert_int_equal(fx_job_parse(huge, ten, &profiles, &mib, &hj, &he), -1);
  assert_int_equal(he.cls, FX_EC_INVALID_JOB);
  assert_non_null(strstr(he.msg, "10000000 bytes"));
  free(huge);
  /* What could be read of a bad job is kept for its status record. */
  fx_job *job;
  fx_job_error e;
  const char *t = "{\"job_id\":\"keep-me\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"x\":1}";
  assert_int_equal(fx_job_parse(t, strlen(t), &profiles, &lim, &job, &e), -1);
  assert_string_equal(e.job_id, "keep-me");
  t = "{\"job_id\":\"bad id\",\"tenant\":\"t1\",\"patients\":[\"1\"]}";
  assert_int_equal(fx_job_parse(t, strlen(t), &profiles, &lim, &job, &e), -1);
  assert_string_equal(e.job_id, ""); /* an unsafe id is not echoed */
  t = "{\"job_id\":\"keep-me\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"since\":\"x\"}";
  assert_int_equal(fx_job_parse(t, strlen(t), &profiles, &lim, &job, &e), -1);
  assert_string_equal(e.job_id, "keep-me");
  assert_string_equal(e.tenant, "t1");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(valid_jobs), cmocka_unit_test(tasks_round_trip),
                                     cmocka_unit_test(rejects)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
