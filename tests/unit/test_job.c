#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/strutil.h"
#include "worker/model/job.h"
#include "worker/model/resources.h"

static fx_config *cfg;
static fx_profile_set profiles;
static const fx_job_limits lim = {.max_bytes = 4096, .max_patients = 3};

static int setup(void **state) {
  (void)state;
  fx_err err = {0};
  int rc = fx_config_parse(
      "{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://x/r4/t1\",\"client_id\":\"c\","
      "\"follow_references\":true},"
      "{\"id\":\"t2\",\"fhir_base\":\"https://x/r4/t2\",\"client_id\":\"c\","
      "\"resources\":[\"Patient\",\"Condition\",\"Practitioner\"]},"
      "{\"id\":\"t3\",\"fhir_base\":\"https://x/r4/t3\",\"client_id\":\"c\","
      "\"profile\":\"generic\"}],"
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

/* The set of the NULL-terminated type names. */
static fx_types set_of(const char *first, ...) {
  fx_types s = FX_TYPES_NONE;
  va_list ap;
  va_start(ap, first);
  for (const char *t = first; t; t = va_arg(ap, const char *)) {
    if (fx_resource_index(t) < 0) fail_msg("not a type: %s", t);
    fx_types_add(&s, fx_resource_index(t));
  }
  va_end(ap);
  return s;
}

static void joined(fx_types s, const char *want) {
  char got[4096];
  assert_true(fx_types_join(s, ",", got, sizeof got) >= 0);
  assert_string_equal(got, want);
}

static int has(fx_types s, const char *type) { return fx_types_has(s, fx_resource_index(type)); }

static void expect_bad(const char *text, fx_errclass cls, const char *needle) {
  fx_job *job = NULL;
  fx_job_error e;
  if (fx_job_parse(text, strlen(text), &profiles, &lim, &job, &e) == 0) fail_msg("accepted: %s", text);
  assert_null(job);
  if (e.cls != cls) fail_msg("class %s, want %s: %s", fx_errclass_name(e.cls), fx_errclass_name(cls), e.msg);
  if (!strstr(e.msg, needle)) fail_msg("'%s' not in '%s'", needle, e.msg);
}

/* One helper turns a job's since into what both kinds of job send: a date
 * becomes its midnight UTC (MedicationRequest and ServiceRequest refuse a
 * _lastUpdated without time), an instant stays as written. */
static void since_instant(void **state) {
  (void)state;
  char out[64];
  assert_int_equal(fx_job_since_instant("2026-11-01", out, sizeof out), 20);
  assert_string_equal(out, "2026-11-01T00:00:00Z");
  assert_int_equal(fx_job_since_instant("2026-11-01T06:30:00+02:00", out, sizeof out), 25);
  assert_string_equal(out, "2026-11-01T06:30:00+02:00");
  assert_int_equal(fx_job_since_instant("2026-11-01T06:30:00.123Z", out, sizeof out), 24);
  assert_string_equal(out, "2026-11-01T06:30:00.123Z");
  char small[12];
  assert_int_equal(fx_job_since_instant("2026-11-01", small, sizeof small), -1);
  assert_string_equal(small, "");
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
  assert_true(fx_types_eq(job->tasks[0].types, set_of("Patient", "Observation", NULL)));
  assert_string_equal(job->since, "2026-11-01T00:00:00Z");
  assert_int_equal(job->follow_references, 1);
  assert_int_equal(job->attempt, 1);
  assert_int_equal(fx_job_task_count(job), 4);
  fx_job_free(job);

  /* Without resources: the tenant's query set, per-patient types only. */
  const char *t2 = "{\"job_id\":\"j2\",\"tenant\":\"t2\",\"patients\":[\"1\"],\"attempt\":3}";
  assert_int_equal(fx_job_parse(t2, strlen(t2), &profiles, &lim, &job, &e), 0);
  joined(job->tasks[0].types, "Condition,Patient");
  assert_int_equal(job->attempt, 3);
  fx_job_free(job);
  const char *t1 = "{\"job_id\":\"j3\",\"tenant\":\"t1\",\"patients\":[\"1\"]}";
  assert_int_equal(fx_job_parse(t1, strlen(t1), &profiles, &lim, &job, &e), 0);
  assert_true(fx_types_eq(job->tasks[0].types, fx_profile_default_types(profiles.by_tenant[0])));
  assert_false(has(job->tasks[0].types, "Practitioner"));
  assert_true(has(job->tasks[0].types, "RelatedPerson"));
  fx_job_free(job);

  /* A generic tenant: a type outside Cerner's 21 when named, US Core by default. */
  const char *t3 = "{\"job_id\":\"j4\",\"tenant\":\"t3\",\"patients\":[\"1\"],"
                   "\"resources\":[\"Claim\",\"ExplanationOfBenefit\",\"ImagingStudy\"]}";
  assert_int_equal(fx_job_parse(t3, strlen(t3), &profiles, &lim, &job, &e), 0);
  joined(job->tasks[0].types, "Claim,ExplanationOfBenefit,ImagingStudy");
  fx_job_free(job);
  t3 = "{\"job_id\":\"j5\",\"tenant\":\"t3\",\"patients\":[\"1\"]}";
  assert_int_equal(fx_job_parse(t3, strlen(t3), &profiles, &lim, &job, &e), 0);
  assert_true(has(job->tasks[0].types, "Observation") && !has(job->tasks[0].types, "Claim"));
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
  assert_true(fx_types_eq(job2->tasks[1].types, job->tasks[1].types));
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
             "[\"Pet\"]}",
             FX_EC_INVALID_JOB, "resources[0]: 'Pet' is not an R4 resource type");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"resources\":"
             "[\"Claim\"]}",
             FX_EC_INVALID_JOB, "the tenant's profile (cerner) does not fetch Claim per patient");
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"resources\":"
             "[\"Provenance\"]}",
             FX_EC_INVALID_JOB, "only a bulk job (a Group $export) gets it");
  /* Following references needs a tenant that does (its token has their scopes). */
  expect_bad("{\"job_id\":\"j\",\"tenant\":\"t2\",\"patients\":[\"1\"],"
             "\"follow_references\":true}",
             FX_EC_INVALID_JOB,
             "follow_references: tenant t2 does not follow references (tenants[].follow_references "
             "is false, so its token has no scopes for Binary, Location, Organization, "
             "Practitioner, RelatedPerson)");
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


/* ---- bulk jobs ------------------------------------------------------------ */

static fx_job *parse_ok(const char *text) {
  fx_job *job = NULL;
  fx_job_error e;
  if (fx_job_parse(text, strlen(text), &profiles, &lim, &job, &e) != 0)
    fail_msg("rejected (%s): %s\n%s", fx_errclass_name(e.cls), e.msg, text);
  return job;
}

static void bulk_jobs(void **state) {
  (void)state;
  /* The least a bulk job says: the tenant's types, split into what Cerner's
   * $export exports (_type) and what it does not (fetched per patient). */
  fx_job *job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"b-1\",\"tenant\":\"t1\","
                         "\"group\":\"11ec-d16a-c763b73e-98e8-a31715e6a2bf\"}");
  assert_int_equal(job->kind, FX_JOB_BULK);
  assert_string_equal(job->group, "11ec-d16a-c763b73e-98e8-a31715e6a2bf");
  joined(job->bulk_types, "AllergyIntolerance,CarePlan,CareTeam,Condition,Device,DiagnosticReport,"
                          "DocumentReference,Encounter,Goal,Immunization,MedicationRequest,"
                          "Observation,Patient,Procedure");
  joined(job->per_patient_types, "Coverage,RelatedPerson,ServiceRequest");
  assert_null(job->tasks);
  assert_int_equal(job->n_tasks, 0);
  assert_int_equal(fx_job_task_count(job), 0);
  assert_null(job->type_filters);
  assert_int_equal(job->n_type_filters, 0);
  assert_null(job->since);
  assert_int_equal(job->follow_references, 0);
  assert_int_equal(job->attempt, 1);
  char types[FX_BULK_TYPE_STRING_SIZE];
  assert_true(fx_job_bulk_type_string(job, types, sizeof types) > 0);
  assert_string_equal(types, "AllergyIntolerance,CarePlan,CareTeam,Condition,Device,DiagnosticReport,"
                             "DocumentReference,Encounter,Goal,Immunization,MedicationRequest,"
                             "Observation,Patient,Procedure"); /* never Coverage: a 400 on Cerner */
  char *filters = fx_job_bulk_type_filter_string(job);
  assert_string_equal(filters, "");
  free(filters);
  fx_job_free(job);

  /* Everything a bulk job may say; resources in any order, kept as a set. */
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"b-2\",\"tenant\":\"t1\",\"group\":\"g.1\","
                 "\"resources\":[\"Patient\",\"Observation\",\"Condition\"],"
                 "\"since\":\"2026-11-01T00:00:00Z\",\"type_filter\":["
                 "\"Observation?category=laboratory\",\"Condition?clinical-status=active%2Crecurrence\"],"
                 "\"follow_references\":true,\"attempt\":4}");
  assert_true(fx_types_eq(job->bulk_types, set_of("Patient", "Observation", "Condition", NULL)));
  assert_true(fx_types_empty(job->per_patient_types));
  assert_string_equal(job->since, "2026-11-01T00:00:00Z");
  assert_int_equal(job->n_type_filters, 2);
  assert_string_equal(job->type_filters[1], "Condition?clinical-status=active%2Crecurrence");
  assert_int_equal(job->follow_references, 1);
  assert_int_equal(job->attempt, 4);
  assert_int_equal(fx_job_bulk_type_string(job, types, sizeof types),
                   (int)strlen("Condition,Observation,Patient"));
  assert_string_equal(types, "Condition,Observation,Patient"); /* fx_type_names order */
  filters = fx_job_bulk_type_filter_string(job);
  assert_string_equal(filters, "Observation?category=laboratory,"
                               "Condition?clinical-status=active%2Crecurrence");
  free(filters);
  /* Too small a buffer: -1 and an empty string, never a cut list. */
  char small[12] = "x";
  assert_int_equal(fx_job_bulk_type_string(job, small, sizeof small), -1);
  assert_string_equal(small, "");
  char exact[sizeof "Condition,Observation,Patient"];
  assert_int_equal(fx_job_bulk_type_string(job, exact, sizeof exact), (int)sizeof exact - 1);
  fx_job_free(job);

  /* Every type Cerner exports, the reference types and Provenance included
   * (group-export.md lists 18), plus the three it does not: fetched per patient. */
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"b-3\",\"tenant\":\"t1\",\"group\":\"g\","
                 "\"resources\":[\"AllergyIntolerance\",\"CarePlan\",\"CareTeam\",\"Condition\","
                 "\"Coverage\",\"Device\",\"DiagnosticReport\",\"DocumentReference\",\"Encounter\","
                 "\"Goal\",\"Immunization\",\"Location\",\"MedicationRequest\",\"Observation\","
                 "\"Organization\",\"Patient\",\"Practitioner\",\"Procedure\",\"Provenance\","
                 "\"RelatedPerson\",\"ServiceRequest\"]}");
  assert_true(fx_types_eq(job->bulk_types, profiles.by_tenant[0]->bulk_types));
  joined(job->per_patient_types, "Coverage,RelatedPerson,ServiceRequest");
  assert_true(fx_job_bulk_type_string(job, types, sizeof types) > 0);
  assert_non_null(strstr(types, "Goal,Immunization,Location,MedicationRequest,"));
  assert_non_null(strstr(types, ",Procedure,Provenance"));
  assert_null(strstr(types, "Coverage"));
  fx_job_free(job);
  /* Only what Cerner exports: nothing per patient, so since is fine. */
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"b-3b\",\"tenant\":\"t1\",\"group\":\"g\","
                 "\"resources\":[\"Observation\",\"Practitioner\",\"Provenance\"],"
                 "\"since\":\"2026-11-01\"}");
  joined(job->bulk_types, "Observation,Practitioner,Provenance");
  assert_true(fx_types_empty(job->per_patient_types));
  fx_job_free(job);

  /* A tenant whose config narrows its types: the export asks for those,
   * Practitioner (which Cerner exports) included. */
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"b-4\",\"tenant\":\"t2\",\"group\":\"g\"}");
  joined(job->bulk_types, "Condition,Patient,Practitioner");
  assert_true(fx_types_empty(job->per_patient_types));
  fx_job_free(job);

  /* An incremental export that names no types: what the tenant extracts and
   * Cerner exports, and the other three are not fetched (the status says so):
   * an export with since lists only changed patients, so fetching them per
   * patient would miss the rest. Refusing the job would make every
   * incremental bulk extract of a default tenant fail. */
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"b-4b\",\"tenant\":\"t1\",\"group\":\"g\","
                 "\"since\":\"2026-11-01\"}");
  assert_true(fx_types_empty(job->per_patient_types));
  joined(job->per_patient_skipped, "Coverage,RelatedPerson,ServiceRequest");
  assert_true(fx_job_bulk_type_string(job, types, sizeof types) > 0);
  assert_null(strstr(types, "Coverage"));
  assert_non_null(strstr(types, "Patient"));
  json_t *back = fx_job_to_json(job);
  char *dumped = json_dumps(back, JSON_COMPACT);
  assert_null(strstr(dumped, "Coverage")); /* a replay asks for what was exported */
  free(dumped);
  json_decref(back);
  fx_job_free(job);

  /* A generic tenant that names no types: the export has whatever the server
   * has (no _type), and a replay of it does the same. */
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"b-4c\",\"tenant\":\"t3\",\"group\":\"g\"}");
  assert_int_equal(job->bulk_all, 1);
  assert_int_equal(fx_job_bulk_type_string(job, types, sizeof types), 0);
  assert_string_equal(types, "");
  back = fx_job_to_json(job);
  assert_null(json_object_get(back, "resources"));
  json_decref(back);
  fx_job_free(job);

  /* A generic server exports what it has: any R4 type. */
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"b-5\",\"tenant\":\"t3\",\"group\":\"g\","
                 "\"resources\":[\"Claim\",\"ExplanationOfBenefit\",\"ImagingStudy\",\"Coverage\"],"
                 "\"since\":\"2026-11-01\",\"type_filter\":[\"Claim?use=claim\",\"Claim?use=preauthorization\"]}");
  joined(job->bulk_types, "Claim,Coverage,ExplanationOfBenefit,ImagingStudy");
  assert_true(fx_types_empty(job->per_patient_types));
  assert_int_equal(job->n_type_filters, 2); /* several per type: the IG ORs them */
  fx_job_free(job);

  /* "kind": "patients" is the default written out. */
  job = parse_ok("{\"kind\":\"patients\",\"job_id\":\"p\",\"tenant\":\"t1\",\"patients\":[\"1\"]}");
  assert_int_equal(job->kind, FX_JOB_PATIENTS);
  assert_null(job->group);
  assert_int_equal(job->n_tasks, 1);
  assert_int_equal(fx_job_bulk_type_string(job, types, sizeof types), 0);
  fx_job_free(job);

  /* The limits: 32 filters of up to 1024 characters (on a generic tenant:
   * Cerner takes one filter per type). */
  char text[4096];
  int n = snprintf(text, sizeof text,
                   "{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t3\",\"group\":\"g\","
                   "\"resources\":[\"Goal\"],\"type_filter\":[");
  for (int i = 0; i < FX_BULK_MAX_TYPE_FILTERS; i++)
    n += snprintf(text + n, sizeof text - (size_t)n, "%s\"Goal?x=%d\"", i ? "," : "", i);
  snprintf(text + n, sizeof text - (size_t)n, "]}");
  job = parse_ok(text);
  assert_int_equal(job->n_type_filters, FX_BULK_MAX_TYPE_FILTERS);
  fx_job_free(job);
  char q[FX_BULK_TYPE_FILTER_MAX + 1];
  memset(q, 'a', sizeof q - 1);
  q[sizeof q - 1] = '\0';
  memcpy(q, "Goal?x=", 7);
  snprintf(text, sizeof text,
           "{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t1\",\"group\":\"g\",\"type_filter\":[\"%s\"]}",
           q);
  job = parse_ok(text);
  assert_int_equal(strlen(job->type_filters[0]), FX_BULK_TYPE_FILTER_MAX);
  fx_job_free(job);
}

/* A bulk job survives to_json and parse, field by field: the dead letter of
 * a failed bulk job is fx_job_to_json(job). */
static void bulk_round_trip(void **state) {
  (void)state;
  const char *text = "{\"follow_references\":true,\"type_filter\":[\"Observation?category=laboratory\"],"
                     "\"since\":\"2026-11-01\",\"resources\":[\"Observation\",\"Patient\"],"
                     "\"group\":\"11ec-group-1\",\"tenant\":\"t1\",\"job_id\":\"cohort-1\","
                     "\"kind\":\"bulk\",\"attempt\":2}";
  fx_job *job = parse_ok(text);
  json_t *j = fx_job_to_json(job);
  char *again = json_dumps(j, JSON_COMPACT);
  assert_string_equal(again, "{\"kind\":\"bulk\",\"job_id\":\"cohort-1\",\"tenant\":\"t1\","
                             "\"group\":\"11ec-group-1\",\"resources\":[\"Observation\",\"Patient\"],"
                             "\"since\":\"2026-11-01\",\"type_filter\":[\"Observation?category=laboratory\"],"
                             "\"follow_references\":true,\"attempt\":2}");
  fx_job *job2 = parse_ok(again);
  assert_int_equal(job2->kind, FX_JOB_BULK);
  assert_string_equal(job2->job_id, job->job_id);
  assert_string_equal(job2->tenant, job->tenant);
  assert_string_equal(job2->group, job->group);
  assert_true(fx_types_eq(job2->bulk_types, job->bulk_types));
  assert_string_equal(job2->since, job->since);
  assert_int_equal(job2->n_type_filters, 1);
  assert_string_equal(job2->type_filters[0], job->type_filters[0]);
  assert_int_equal(job2->follow_references, 1);
  assert_int_equal(job2->attempt, 2);
  assert_int_equal(job2->n_tasks, 0);
  free(again);
  json_decref(j);
  fx_job_free(job2);
  fx_job_free(job);

  /* The least bulk job writes the types it resolved (the tenant's), so its
   * dead letter replays the same export, the per-patient types included. */
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"c\",\"tenant\":\"t2\",\"group\":\"g\"}");
  j = fx_job_to_json(job);
  again = json_dumps(j, JSON_COMPACT);
  assert_string_equal(again, "{\"kind\":\"bulk\",\"job_id\":\"c\",\"tenant\":\"t2\",\"group\":\"g\","
                             "\"resources\":[\"Condition\",\"Patient\",\"Practitioner\"],"
                             "\"attempt\":1}");
  free(again);
  json_decref(j);
  fx_job_free(job);
  job = parse_ok("{\"kind\":\"bulk\",\"job_id\":\"c\",\"tenant\":\"t1\",\"group\":\"g\","
                 "\"resources\":[\"Patient\",\"Coverage\"]}");
  j = fx_job_to_json(job);
  again = json_dumps(j, JSON_COMPACT);
  assert_string_equal(again, "{\"kind\":\"bulk\",\"job_id\":\"c\",\"tenant\":\"t1\",\"group\":\"g\","
                             "\"resources\":[\"Coverage\",\"Patient\"],\"attempt\":1}");
  free(again);
  json_decref(j);
  fx_job_free(job);

  /* A patient job is written as before, without kind. */
  job = parse_ok("{\"kind\":\"patients\",\"job_id\":\"p\",\"tenant\":\"t1\",\"patients\":[\"1\"],"
                 "\"resources\":[\"Patient\"]}");
  j = fx_job_to_json(job);
  again = json_dumps(j, JSON_COMPACT);
  assert_string_equal(again, "{\"job_id\":\"p\",\"tenant\":\"t1\",\"patients\":[\"1\"],"
                             "\"resources\":[\"Patient\"],\"attempt\":1}");
  free(again);
  json_decref(j);
  fx_job_free(job);
}

#define BULK "{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t1\",\"group\":\"g\","

static void bulk_rejects(void **state) {
  (void)state;
  /* kind, and the fields of the other kind, by name. */
  expect_bad("{\"kind\":\"export\",\"job_id\":\"b\",\"tenant\":\"t1\",\"group\":\"g\"}",
             FX_EC_INVALID_JOB, "kind: expected \"patients\"");
  expect_bad("{\"kind\":1,\"job_id\":\"b\",\"tenant\":\"t1\",\"patients\":[\"1\"]}", FX_EC_INVALID_JOB,
             "kind: ");
  expect_bad(BULK "\"patients\":[\"1\"]}", FX_EC_INVALID_JOB,
             "patients: a bulk job exports a Group, not listed patients");
  expect_bad(BULK "\"tasks\":[{\"patient\":\"1\",\"resources\":[\"Patient\"]}]}", FX_EC_INVALID_JOB,
             "tasks: a bulk job has no tasks");
  expect_bad("{\"job_id\":\"p\",\"tenant\":\"t1\",\"patients\":[\"1\"],\"group\":\"g\"}",
             FX_EC_INVALID_JOB, "group: only a bulk job exports a Group; add \"kind\": \"bulk\"");
  expect_bad("{\"kind\":\"patients\",\"job_id\":\"p\",\"tenant\":\"t1\",\"patients\":[\"1\"],"
             "\"type_filter\":[\"Goal?x=1\"]}",
             FX_EC_INVALID_JOB, "type_filter: only a bulk job");
  expect_bad(BULK "\"colour\":1}", FX_EC_INVALID_JOB, "unknown field 'colour'");
  /* group */
  expect_bad("{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t1\"}", FX_EC_INVALID_JOB,
             "group: required for a bulk job");
  expect_bad("{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t1\",\"group\":\"../Patient/1\"}",
             FX_EC_INVALID_JOB, "group: a Group id must be");
  expect_bad("{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t1\",\"group\":7}", FX_EC_INVALID_JOB,
             "group: a Group id must be");
  char longg[200];
  snprintf(longg, sizeof longg, "{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t1\",\"group\":\"%065d\"}", 0);
  expect_bad(longg, FX_EC_INVALID_JOB, "group: ");
  /* What every job checks still applies. */
  expect_bad("{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"nope\",\"group\":\"g\"}",
             FX_EC_UNKNOWN_TENANT, "tenant 'nope' is not configured");
  expect_bad(BULK "\"since\":\"last week\"}", FX_EC_INVALID_JOB, "since: ");
  expect_bad(BULK "\"attempt\":0}", FX_EC_INVALID_JOB, "attempt: ");
  expect_bad(BULK "\"follow_references\":\"yes\"}", FX_EC_INVALID_JOB, "follow_references: ");
  /* resources */
  expect_bad(BULK "\"resources\":[]}", FX_EC_INVALID_JOB, "resources: expected a non-empty array");
  expect_bad(BULK "\"resources\":\"Patient\"}", FX_EC_INVALID_JOB, "resources: expected");
  expect_bad(BULK "\"resources\":[\"Pet\"]}", FX_EC_INVALID_JOB,
             "resources[0]: 'Pet' is not an R4 resource type fhirx extracts");
  expect_bad(BULK "\"resources\":[\"Patient\",\"Binary\"]}", FX_EC_INVALID_JOB,
             "resources[1]: the Group $export of profile cerner does not export Binary");
  expect_bad(BULK "\"resources\":[\"Patient\",\"Claim\"]}", FX_EC_INVALID_JOB,
             "resources[1]: the Group $export of profile cerner does not export Claim, and the "
             "profile does not fetch it per patient either");
  /* group-export.md: the reference types and Provenance only with a patient type. */
  expect_bad(BULK "\"resources\":[\"Practitioner\"]}", FX_EC_INVALID_JOB,
             "resources: the Group $export of profile cerner exports Practitioner only together "
             "with a patient type (any type but Location, Organization, Practitioner, "
             "Provenance); add one, e.g. Patient");
  expect_bad(BULK "\"resources\":[\"Location\",\"Provenance\"]}", FX_EC_INVALID_JOB,
             "exports Location, Provenance only together with a patient type");
  /* What Cerner does not export is fetched per patient, for the exported
   * Patients: so Patient must be exported, and since cannot apply. */
  expect_bad(BULK "\"resources\":[\"Observation\",\"Coverage\"]}", FX_EC_INVALID_JOB,
             "resources: resources names Coverage, which the Group $export of profile cerner does "
             "not export: fhirx fetches them per patient for the exported Patient resources, so "
             "add Patient");
  expect_bad(BULK "\"resources\":[\"Patient\",\"ServiceRequest\",\"RelatedPerson\"],"
             "\"since\":\"2026-11-01\"}",
             FX_EC_INVALID_JOB,
             "since: resources names RelatedPerson, ServiceRequest, which the Group $export of "
             "profile cerner does not export");
  /* A tenant without follow_references may not follow them in bulk either. */
  expect_bad("{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t2\",\"group\":\"g\","
             "\"follow_references\":true}",
             FX_EC_INVALID_JOB, "follow_references: tenant t2 does not follow references");
  /* type_filter */
  expect_bad(BULK "\"type_filter\":[]}", FX_EC_INVALID_JOB, "type_filter: expected a non-empty array");
  expect_bad(BULK "\"type_filter\":\"Goal?x=1\"}", FX_EC_INVALID_JOB, "type_filter: expected");
  expect_bad(BULK "\"type_filter\":[3]}", FX_EC_INVALID_JOB, "type_filter[0]: expected a string");
  expect_bad(BULK "\"type_filter\":[\"\"]}", FX_EC_INVALID_JOB, "type_filter[0]: expected 1..1024");
  expect_bad(BULK "\"type_filter\":[\"Goal?x=1\",\"category=laboratory\"]}", FX_EC_INVALID_JOB,
             "type_filter[1]: expected \"<Type>?<query>\"");
  expect_bad(BULK "\"type_filter\":[\"Observation?\"]}", FX_EC_INVALID_JOB,
             "type_filter[0]: expected \"<Type>?<query>\"");
  expect_bad(BULK "\"type_filter\":[\"?x=1\"]}", FX_EC_INVALID_JOB, "type_filter[0]: expected");
  expect_bad(BULK "\"type_filter\":[\"Pet?x=1\"]}", FX_EC_INVALID_JOB,
             "type_filter[0]: 'Pet' is not an R4 resource type");
  expect_bad(BULK "\"type_filter\":[\"Binary?x=1\"]}", FX_EC_INVALID_JOB,
             "type_filter[0]: tenant t1 does not extract Binary");
  expect_bad(BULK "\"resources\":[\"Patient\"],\"type_filter\":[\"Observation?category=laboratory\"]}",
             FX_EC_INVALID_JOB,
             "type_filter[0]: Observation is not among the job's resources; a _typeFilter narrows "
             "one of the exported types (_type): add it to resources");
  expect_bad(BULK "\"type_filter\":[\"Observation?category=laboratory,vital-signs\"]}",
             FX_EC_INVALID_JOB, "type_filter[0]: a literal ',' would split the comma-joined "
                                "_typeFilter parameter; percent-encode it as %2C");
  expect_bad(BULK "\"type_filter\":[\"Observation?code=a b\"]}", FX_EC_INVALID_JOB,
             "type_filter[0]: a space, control or non-ASCII character at position 18");
  expect_bad(BULK "\"type_filter\":[\"Observation?code=\\u00e9\"]}", FX_EC_INVALID_JOB,
             "non-ASCII");
  expect_bad(BULK "\"type_filter\":[\"Observation?category\"]}", FX_EC_INVALID_JOB,
             "type_filter[0]: 'category' is not name=value");
  expect_bad(BULK "\"type_filter\":[\"Observation?category=laboratory&=x\"]}", FX_EC_INVALID_JOB,
             "type_filter[0]: '=x' is not name=value");
  /* Cerner's rules (group-export.md): no filter on Patient, Location,
   * Organization, Practitioner or Provenance ... */
  static const char *const unfiltered[] = {"Patient", "Location", "Organization", "Practitioner",
                                           "Provenance"};
  for (size_t i = 0; i < sizeof unfiltered / sizeof unfiltered[0]; i++) {
    char t[512], want[200];
    snprintf(t, sizeof t, BULK "\"resources\":[\"Patient\",\"%s\"],\"type_filter\":[\"%s?name=x\"]}",
             unfiltered[i], unfiltered[i]);
    snprintf(want, sizeof want,
             "type_filter[0]: profile cerner: the server takes no _typeFilter on %s (nor on any "
             "of Location, Organization, Patient, Practitioner, Provenance); drop the filter",
             unfiltered[i]);
    expect_bad(t, FX_EC_INVALID_JOB, want);
  }
  /* ... none on a type fetched per patient (it is not exported) ... */
  expect_bad(BULK "\"resources\":[\"Patient\",\"Coverage\"],\"type_filter\":[\"Coverage?status=active\"]}",
             FX_EC_INVALID_JOB,
             "type_filter[0]: the Group $export of profile cerner does not export Coverage (it is "
             "fetched per patient instead), so a _typeFilter cannot narrow it");
  /* ... none of these search parameters (a modifier does not hide one) ... */
  static const char *const params[] = {"_lastUpdated=ge2024-01-01", "patient=1", "_count=5",
                                       "_id=1",          "subject=Patient/1", "encounter=2",
                                       "identifier=x",   "patient:missing=false", "_sort=date",
                                       "_include=Observation:subject"};
  for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
    char t[512], want[200];
    snprintf(t, sizeof t, BULK "\"type_filter\":[\"Observation?category=laboratory&%s\"]}",
             params[i]);
    snprintf(want, sizeof want, "type_filter[0]: parameter '%.*s' is refused in a _typeFilter by "
             "profile cerner's server (refused: _count, _contained,",
             (int)strcspn(params[i], "="), params[i]);
    expect_bad(t, FX_EC_INVALID_JOB, want);
  }
  /* ... and one filter per type. */
  expect_bad(BULK "\"type_filter\":[\"Observation?category=laboratory\",\"Condition?category=x\","
             "\"Observation?category=vital-signs\"]}",
             FX_EC_INVALID_JOB,
             "type_filter[2]: a second filter for Observation; profile cerner's server takes one "
             "_typeFilter per type");
  /* The tenant's configured types bound the filters when resources are not given. */
  expect_bad("{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t2\",\"group\":\"g\","
             "\"type_filter\":[\"Observation?category=laboratory\"]}",
             FX_EC_INVALID_JOB, "type_filter[0]: tenant t2 does not extract Observation");
  char text[4096];
  int n = snprintf(text, sizeof text, BULK "\"type_filter\":[");
  for (int i = 0; i <= FX_BULK_MAX_TYPE_FILTERS; i++)
    n += snprintf(text + n, sizeof text - (size_t)n, "%s\"Goal?x=%d\"", i ? "," : "", i);
  snprintf(text + n, sizeof text - (size_t)n, "]}");
  expect_bad(text, FX_EC_INVALID_JOB, "type_filter: 33 filters is more than the 32");
  char q[FX_BULK_TYPE_FILTER_MAX + 2];
  memset(q, 'a', sizeof q - 1);
  q[sizeof q - 1] = '\0';
  memcpy(q, "Goal?x=", 7);
  snprintf(text, sizeof text, BULK "\"type_filter\":[\"%s\"]}", q);
  expect_bad(text, FX_EC_INVALID_JOB, "type_filter[0]: expected 1..1024 characters");
  /* A rejected bulk job still names itself for its status record. */
  fx_job *job;
  fx_job_error e;
  const char *t = BULK "\"resources\":[\"Binary\"]}";
  assert_int_equal(fx_job_parse(t, strlen(t), &profiles, &lim, &job, &e), -1);
  assert_string_equal(e.job_id, "b");
  assert_string_equal(e.tenant, "t1");
}

/* The follow-up patient jobs of a bulk job get ids derived from its own: the
 * same every time (a file downloaded again enqueues the same jobs), valid job
 * ids however long the bulk job's id is. */
static void per_patient_ids(void **state) {
  (void)state;
  char id[160];
  assert_int_equal(fx_job_per_patient_id("cohort-1", 15, 2, id, sizeof id), 0);
  assert_string_equal(id, "cohort-1.per-patient.15.2");
  assert_true(fx_job_id_valid(id));
  char longid[129], other[129], a[160], b[160], again[160];
  memset(longid, 'x', 128);
  longid[128] = '\0';
  memcpy(other, longid, sizeof other);
  other[127] = 'y'; /* the same first 127 characters */
  assert_int_equal(fx_job_per_patient_id(longid, 1234, 7, a, sizeof a), 0);
  assert_int_equal(fx_job_per_patient_id(other, 1234, 7, b, sizeof b), 0);
  assert_int_equal(fx_job_per_patient_id(longid, 1234, 7, again, sizeof again), 0);
  assert_true(strlen(a) <= 128 && fx_job_id_valid(a) && fx_job_id_valid(b));
  assert_string_equal(a, again);
  assert_string_not_equal(a, b);
  assert_non_null(strstr(a, ".per-patient.1234.7"));
  char small[20];
  assert_int_equal(fx_job_per_patient_id("cohort-1", 1, 1, small, sizeof small), -1);
  /* Patient ids the follow-up jobs may name: those a patient job takes. */
  assert_true(fx_job_patient_valid("12724065") && fx_job_patient_valid("a.b-c"));
  assert_false(fx_job_patient_valid("a/b") || fx_job_patient_valid("") ||
               fx_job_patient_valid(NULL));
}

/* A job built as JSON is checked without printing and parsing it: the same
 * verdict as its text gets, the same limits (the size of its compact form),
 * and errors that say which field (fx_job_error.field) apart from what is
 * wrong with it (fx_job_error_text), so a tool names the field its own way
 * without rewriting the message. */
static void from_json_and_field_paths(void **state) {
  (void)state;
  const char *text = "{\"job_id\":\"j\",\"tenant\":\"t1\",\"patients\":[\"1\",\"a b\"]}";
  json_t *doc = json_loads(text, 0, NULL);
  fx_job *job = NULL;
  fx_job_error e1, e2;
  assert_int_not_equal(fx_job_from_json(doc, &profiles, &lim, &job, &e1), 0);
  assert_null(job);
  assert_int_not_equal(fx_job_parse(text, strlen(text), &profiles, &lim, &job, &e2), 0);
  assert_string_equal(e1.msg, e2.msg);
  assert_string_equal(e1.field, "patients[1]");
  assert_int_equal(strncmp(e1.msg, "patients[1]: ", 13), 0);
  assert_string_equal(fx_job_error_text(&e1), e1.msg + 13);
  json_decref(doc);
  /* The job as a whole: no field. */
  doc = json_loads("[1]", 0, NULL);
  assert_int_not_equal(fx_job_from_json(doc, &profiles, &lim, &job, &e1), 0);
  assert_string_equal(e1.field, "");
  assert_string_equal(fx_job_error_text(&e1), e1.msg);
  json_decref(doc);
  /* A good one, and the size limit on its compact form (lim: 4096 bytes). */
  doc = json_pack("{s:s, s:s, s:[s]}", "job_id", "ok", "tenant", "t1", "patients", "12724065");
  assert_int_equal(fx_job_from_json(doc, &profiles, &lim, &job, &e1), 0);
  assert_string_equal(job->job_id, "ok");
  fx_job_free(job);
  char big[4200];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  json_object_set_new(doc, "note_that_is_not_a_field", json_string(big));
  assert_int_not_equal(fx_job_from_json(doc, &profiles, &lim, &job, &e1), 0);
  assert_non_null(strstr(e1.msg, "more than the 4096 bytes a job may have"));
  json_decref(doc);
  /* An unknown tenant: the parser says what to change; what to do next is
   * the caller's (the worker adds "then replay the dead letter"). */
  doc = json_pack("{s:s, s:s, s:[s]}", "job_id", "j", "tenant", "nope", "patients", "1");
  assert_int_not_equal(fx_job_from_json(doc, &profiles, &lim, &job, &e1), 0);
  assert_int_equal(e1.cls, FX_EC_UNKNOWN_TENANT);
  assert_null(strstr(e1.msg, "replay"));
  json_decref(doc);
}

/* Peer text in a job's error is cut on characters: an unknown tenant of 63
 * bytes then "é" keeps its 63 bytes in the error (64 would halve the é), and
 * the message quoting it stays UTF-8. A tombstone (no value) says what it is. */
static void hostile_text(void **state) {
  (void)state;
  char text[300], tenant[70];
  memset(tenant, 'a', 63);
  strcpy(tenant + 63, "\xc3\xa9");
  snprintf(text, sizeof text, "{\"job_id\":\"utf8\",\"tenant\":\"%s\",\"patients\":[\"1\"]}",
           tenant);
  fx_job *job = NULL;
  fx_job_error e;
  assert_int_equal(fx_job_parse(text, strlen(text), &profiles, &lim, &job, &e), -1);
  assert_int_equal(e.cls, FX_EC_INVALID_JOB); /* no tenant can have that name */
  assert_int_equal(strlen(e.tenant), 63);
  assert_int_equal(fx_utf8_fix(e.tenant), 0);
  assert_int_equal(fx_utf8_fix(e.msg), 0);
  assert_non_null(strstr(e.msg, "is not a tenant id"));
  char quoted[80];
  snprintf(quoted, sizeof quoted, "'%.63s'", tenant);
  assert_non_null(strstr(e.msg, quoted));
  assert_int_equal(fx_job_parse(NULL, 0, &profiles, &lim, &job, &e), -1);
  assert_null(job);
  assert_int_equal(e.cls, FX_EC_INVALID_JOB);
  assert_non_null(strstr(e.msg, "empty message (tombstone)"));
  assert_int_equal(fx_job_parse("", 0, &profiles, &lim, &job, &e), -1);
  assert_non_null(strstr(e.msg, "empty message"));
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(since_instant),
                                     cmocka_unit_test(valid_jobs), cmocka_unit_test(tasks_round_trip),
                                     cmocka_unit_test(rejects), cmocka_unit_test(bulk_jobs),
                                     cmocka_unit_test(bulk_round_trip), cmocka_unit_test(bulk_rejects),
                                     cmocka_unit_test(per_patient_ids),
                                     cmocka_unit_test(from_json_and_field_paths),
                                     cmocka_unit_test(hostile_text)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
