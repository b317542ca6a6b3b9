/* fhirx enqueue's input: lines validated with the workers' rules, batched
 * into jobs with deterministic ids, bad lines reported by number. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/cli/csv.h"
#include "worker/cli/jobinput.h"

static fx_config *cfg;
static fx_profile_set profiles;
static const fx_job_limits lim = {.max_bytes = 1 << 20, .max_patients = 100};

static int setup(void **state) {
  (void)state;
  fx_err err = {0};
  int rc = fx_config_parse(
      "{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://x/r4/t1\",\"client_id\":\"c\"},"
      "{\"id\":\"t2\",\"fhir_base\":\"https://x/r4/t2\",\"client_id\":\"c\","
      "\"follow_references\":true}],"
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

/* Bad lines, as "N: message\n" lines. */
static char reported[8192];

static void on_bad(unsigned long line, const char *msg, void *arg) {
  (void)arg;
  snprintf(reported + strlen(reported), sizeof reported - strlen(reported), "%lu: %s\n", line, msg);
}

static fx_jobin *open_in(fx_jobin_opts o) {
  reported[0] = '\0';
  fx_jobin *in = NULL;
  fx_err err = {0};
  if (fx_jobin_new(&profiles, &lim, &o, on_bad, NULL, &in, &err) != 0) fail_msg("%s", err.msg);
  return in;
}

static void read_text(fx_jobin *in, const char *text, fx_jobin_format fmt, int want_rc) {
  FILE *f = fmemopen((void *)(uintptr_t)text, strlen(text), "r");
  fx_err err = {0};
  int rc = fx_jobin_read(in, f, fmt, &err);
  fclose(f);
  if ((rc != 0) != (want_rc != 0)) fail_msg("read returned %d: %s", rc, err.msg);
}

static void csv_split(void **state) {
  (void)state;
  char line[200];
  char *f[8];
  const char *why = NULL;
  snprintf(line, sizeof line, " a , \"b,c\" ,\"say \"\"hi\"\"\",,d\r");
  assert_int_equal(fx_csv_split(line, f, 8, &why), 5);
  assert_string_equal(f[0], "a");
  assert_string_equal(f[1], "b,c");
  assert_string_equal(f[2], "say \"hi\"");
  assert_string_equal(f[3], "");
  assert_string_equal(f[4], "d");
  snprintf(line, sizeof line, "\"open");
  assert_int_equal(fx_csv_split(line, f, 8, &why), -1);
  assert_non_null(strstr(why, "not closed"));
  snprintf(line, sizeof line, "\"a\"b");
  assert_int_equal(fx_csv_split(line, f, 8, &why), -1);
  snprintf(line, sizeof line, "a\"b");
  assert_int_equal(fx_csv_split(line, f, 8, &why), -1);
  snprintf(line, sizeof line, "a,b,c");
  assert_int_equal(fx_csv_split(line, f, 2, &why), -1);
  snprintf(line, sizeof line, "%s", "");
  assert_int_equal(fx_csv_split(line, f, 8, &why), 1);
}

static void ndjson_batches(void **state) {
  (void)state;
  fx_jobin *in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 2, .id_prefix = "n"});
  read_text(in,
            "{\"patient\": \"1\"}\n"
            "{\"patient\": \"2\", \"tenant\": \"t2\", \"resources\": \"Patient Condition\"}\n"
            "\n"
            "{\"patient\": \"3\"}\n"                       /* fills t1's batch: job 1 */
            "{\"patient\": \"1\"}\n"                       /* a repeat: dropped */
            "{\"job_id\": \"whole\", \"patients\": [\"9\"]}\n" /* tenant from --tenant */
            "{\"patients\": [\"8\"], \"tenant\": \"t2\"}\n"   /* a whole job, no id: next number */
            "{\"patient\": \"4\", \"since\": \"2026-11-01\"}\n"
            "{\"patient\": \"5\", \"resources\": [\"Condition\", \"Patient\"], \"tenant\": \"t2\"}\n",
            FX_JOBIN_NDJSON, 0);
  fx_err err = {0};
  assert_int_equal(fx_jobin_finish(in, &err), 0);
  size_t n;
  const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
  assert_int_equal(n, 5);
  assert_string_equal(jobs[0].text, "{\"job_id\":\"n-000001\",\"tenant\":\"t1\",\"patients\":[\"1\",\"3\"]}");
  assert_string_equal(jobs[1].text, "{\"job_id\":\"whole\",\"patients\":[\"9\"],\"tenant\":\"t1\"}");
  assert_string_equal(jobs[2].text, "{\"job_id\":\"n-000002\",\"patients\":[\"8\"],\"tenant\":\"t2\"}");
  /* The same settings in another order are the same group: 2 and 5. */
  assert_string_equal(jobs[3].text, "{\"job_id\":\"n-000003\",\"tenant\":\"t2\",\"patients\":[\"2\",\"5\"],"
                                    "\"resources\":[\"Condition\",\"Patient\"]}");
  assert_string_equal(jobs[4].text, "{\"job_id\":\"n-000004\",\"tenant\":\"t1\",\"patients\":[\"4\"],"
                                    "\"since\":\"2026-11-01\"}");
  assert_string_equal(jobs[4].job_id, "n-000004");
  assert_string_equal(jobs[4].tenant, "t1");
  assert_int_equal(jobs[3].patients, 2);
  fx_jobin_stats st;
  fx_jobin_get_stats(in, &st);
  assert_int_equal(st.lines, 9);
  assert_int_equal(st.bad_lines, 0);
  assert_int_equal(st.patients, 7);
  assert_int_equal(st.duplicates, 1);
  assert_int_equal(st.tenants, 2);
  assert_int_equal(st.jobs, 5);
  assert_string_equal(reported, "");
  fx_jobin_free(in);
}

static void bad_lines(void **state) {
  (void)state;
  fx_jobin *in = open_in((fx_jobin_opts){.batch = 10});
  read_text(in,
            "{\"patient\": \"1\"}\n"                                   /* no tenant */
            "{\"patient\": \"1\", \"tenant\": \"t9\"}\n"
            "{\"patient\": \"a b\", \"tenant\": \"t1\"}\n"
            "{\"patient\": \"1\", \"tenant\": \"t1\", \"resources\": [\"Pet\"]}\n"
            "{\"patient\": \"1\", \"tenant\": \"t1\", \"resources\": [\"Practitioner\"]}\n"
            "not json\n"
            "{\"patient\": \"1\", \"tenant\": \"t1\", \"colour\": 1}\n"
            "{\"patient\": \"1\", \"tenant\": \"t1\", \"since\": \"soon\"}\n"
            "{\"tenant\": \"t1\", \"patients\": \"1\"}\n"
            "{\"tenant\": \"t1\"}\n"
            "{\"patient\": \"7\", \"tenant\": \"t1\"}\n",
            FX_JOBIN_NDJSON, 0);
  const char *want[] = {
      "1: no tenant: give --tenant, or a tenant for the line\n",
      "2: tenant 't9' is not configured (add it under tenants[] in the config)\n",
      "3: patient: a patient id must be a string of 1..64 letters, digits, '-' or '.'\n",
      "4: resources: 'Pet' is not an R4 resource type fhirx extracts",
      "5: resources[0]: the tenant's profile (cerner) does not fetch Practitioner per patient",
      "6: not valid JSON (column 3)\n",
      "7: unknown field 'colour'",
      "8: since: expected an RFC 3339 date or date-time",
      "9: the job would be rejected (invalid_job): patients: expected a non-empty array\n",
      "10: expected {\"patient\": ...} or a job (with patients or tasks, or a bulk job: "
      "\"kind\": \"bulk\" and a group)\n"};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(reported, want[i])) fail_msg("'%s' not in:\n%s", want[i], reported);
  fx_err err = {0};
  assert_int_equal(fx_jobin_finish(in, &err), 0);
  fx_jobin_stats st;
  fx_jobin_get_stats(in, &st);
  assert_int_equal(st.bad_lines, 10);
  assert_int_equal(st.jobs, 1);
  fx_jobin_free(in);
}

static const char csv_text[] =
    "\xEF\xBB\xBFmrn,Tenant,resources,follow_references\n"
    "1,,,\n"
    "2,t2,Patient;Condition,yes\n"
    "3\n"
    ",t1,,\n"
    "4,t1,Patient,maybe\n"
    "5,t1,,,extra\n"
    "\"6\",,,false\n";

static void csv_input(void **state) {
  (void)state;
  fx_jobin_opts o = {.tenant = "t1", .batch = 5, .column = "MRN", .resources = "Patient"};
  fx_jobin *in = open_in(o);
  read_text(in, csv_text, FX_JOBIN_CSV, 0);
  assert_non_null(strstr(reported, "5: patient: the cell is empty\n"));
  assert_non_null(strstr(reported, "6: follow_references: expected true or false\n"));
  assert_non_null(strstr(reported, "7: 5 fields, but the header row has 4\n"));
  fx_err err = {0};
  assert_int_equal(fx_jobin_finish(in, &err), 0);
  size_t n;
  const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
  assert_int_equal(n, 2);
  /* --resources applies where the line gives none; ids are hashes of the content. */
  assert_non_null(strstr(jobs[0].text, "\"tenant\":\"t1\",\"patients\":[\"1\",\"3\",\"6\"],"
                                       "\"resources\":[\"Patient\"]}"));
  assert_non_null(strstr(jobs[1].text, "\"tenant\":\"t2\",\"patients\":[\"2\"],\"resources\":"
                                       "[\"Condition\",\"Patient\"],\"follow_references\":true}"));
  assert_true(strncmp(jobs[0].job_id, "job-", 4) == 0 && strlen(jobs[0].job_id) == 20);
  /* The same input again: the same ids. */
  fx_jobin *again = open_in(o);
  read_text(again, csv_text, FX_JOBIN_CSV, 0);
  assert_int_equal(fx_jobin_finish(again, &err), 0);
  size_t n2;
  const fx_jobin_job *jobs2 = fx_jobin_jobs(again, &n2);
  assert_int_equal(n2, 2);
  assert_string_equal(jobs2[0].job_id, jobs[0].job_id);
  assert_string_equal(jobs2[1].text, jobs[1].text);
  fx_jobin_free(again);
  fx_jobin_free(in);

  /* A header without the patient column stops the reading. */
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 5});
  FILE *f = fmemopen((void *)(uintptr_t)"id,tenant\n1,t1\n", 15, "r");
  assert_int_equal(fx_jobin_read(in, f, FX_JOBIN_CSV, &err), FX_EINVAL);
  fclose(f);
  assert_non_null(strstr(err.msg, "no column 'patient' (columns: 'id', 'tenant'); name the patient column with --column"));
  fx_jobin_free(in);
}

static void options(void **state) {
  (void)state;
  fx_jobin *in = NULL;
  fx_err err = {0};
  fx_jobin_opts o = {.tenant = "t1", .batch = 101};
  assert_int_equal(fx_jobin_new(&profiles, &lim, &o, on_bad, NULL, &in, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "the workers accept 1 to 100"));
  o = (fx_jobin_opts){.tenant = "t1", .batch = 1, .id_prefix = "bad prefix"};
  assert_int_equal(fx_jobin_new(&profiles, &lim, &o, on_bad, NULL, &in, &err), FX_EINVAL);
  o = (fx_jobin_opts){.tenant = "t9", .batch = 1};
  assert_int_equal(fx_jobin_new(&profiles, &lim, &o, on_bad, NULL, &in, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--tenant: 't9' is not configured"));
  o = (fx_jobin_opts){.tenant = "t1", .batch = 1, .resources = "Patient,Nope"};
  assert_int_equal(fx_jobin_new(&profiles, &lim, &o, on_bad, NULL, &in, &err), FX_EINVAL);
  assert_null(in);

  /* --job-id names one job: more is an error, one gets the id. */
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 1, .job_id = "only"});
  fx_jobin_patient(in, 1, "1");
  fx_jobin_patient(in, 2, "2");
  assert_int_equal(fx_jobin_finish(in, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--job-id names one job, but the input makes 2"));
  fx_jobin_free(in);
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 100, .job_id = "only"});
  fx_jobin_patient(in, 1, "1");
  fx_jobin_patient(in, 2, "bad!");
  fx_jobin_patient(in, 3, "2");
  assert_int_equal(fx_jobin_finish(in, &err), 0);
  size_t n;
  const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
  assert_int_equal(n, 1);
  assert_string_equal(jobs[0].text, "{\"job_id\":\"only\",\"tenant\":\"t1\",\"patients\":[\"1\",\"2\"]}");
  assert_non_null(strstr(reported, "2: patient: "));
  fx_jobin_free(in);
}

/* Ten thousand lines in one go: quick, and batches of exactly --batch. */
static void many_lines(void **state) {
  (void)state;
  size_t size = 10000 * 40;
  char *text = malloc(size), *p = text;
  for (int i = 0; i < 10000; i++)
    p += snprintf(p, size - (size_t)(p - text), "{\"patient\":\"%d\",\"tenant\":\"t%d\"}\n", 100000 + i, 1 + i % 2);
  fx_jobin *in = open_in((fx_jobin_opts){.batch = 100, .id_prefix = "m"});
  read_text(in, text, FX_JOBIN_NDJSON, 0);
  fx_err err = {0};
  assert_int_equal(fx_jobin_finish(in, &err), 0);
  size_t n;
  const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
  assert_int_equal(n, 100);
  for (size_t i = 0; i < n; i++) assert_int_equal(jobs[i].patients, 100);
  assert_string_equal(jobs[99].job_id, "m-000100");
  fx_jobin_free(in);
  free(text);
}


/* What `enqueue --group` builds parses back, with the workers' parser, to the
 * job that was asked for; the same request gets the same id. */
static void bulk_job(void **state) {
  (void)state;
  const char *filters[] = {"Observation?category=laboratory", "Condition?clinical-status=active"};
  fx_jobin_opts o = {.tenant = "t2", .batch = 100, .resources = "Patient,Observation,Condition",
                     .since = "2026-11-01T00:00:00Z", .follow_references = 1};
  fx_jobin *in = open_in(o);
  fx_err err = {0};
  assert_int_equal(fx_jobin_bulk(in, "11ec-d16a-c763b73e-98e8-a31715e6a2bf", filters, 2, &err), 0);
  assert_int_equal(fx_jobin_finish(in, &err), 0);
  size_t n;
  const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
  assert_int_equal(n, 1);
  assert_true(strncmp(jobs[0].job_id, "job-", 4) == 0 && strlen(jobs[0].job_id) == 20);
  assert_string_equal(jobs[0].tenant, "t2");
  assert_int_equal(jobs[0].patients, 0);
  fx_jobin_stats st;
  fx_jobin_get_stats(in, &st);
  assert_int_equal(st.jobs, 1);
  assert_int_equal(st.bulk_jobs, 1);
  assert_int_equal(st.patients, 0);
  assert_int_equal(st.tenants, 1);

  fx_job *job = NULL;
  fx_job_error jerr;
  if (fx_job_parse(jobs[0].text, jobs[0].len, &profiles, &lim, &job, &jerr) != 0)
    fail_msg("%s: %s", jobs[0].text, jerr.msg);
  assert_int_equal(job->kind, FX_JOB_BULK);
  assert_string_equal(job->job_id, jobs[0].job_id);
  assert_string_equal(job->tenant, "t2");
  assert_string_equal(job->group, "11ec-d16a-c763b73e-98e8-a31715e6a2bf");
  char types[FX_BULK_TYPE_STRING_SIZE];
  assert_true(fx_job_bulk_type_string(job, types, sizeof types) > 0);
  assert_string_equal(types, "Condition,Observation,Patient");
  assert_string_equal(job->since, "2026-11-01T00:00:00Z");
  assert_int_equal(job->n_type_filters, 2);
  assert_string_equal(job->type_filters[0], filters[0]);
  assert_string_equal(job->type_filters[1], filters[1]);
  assert_int_equal(job->follow_references, 1);
  assert_int_equal(job->attempt, 1);
  assert_int_equal(job->n_tasks, 0);
  /* ... and fx_job_to_json of it is the text enqueue produced (key order aside). */
  json_t *a = fx_job_to_json(job), *b = json_loads(jobs[0].text, 0, NULL);
  json_object_del(a, "attempt"); /* written by to_json, implicit (1) in what enqueue makes */
  assert_true(json_equal(a, b));
  json_decref(a);
  json_decref(b);
  fx_job_free(job);

  /* The same request again: the same id; another group: another id. */
  fx_jobin *again = open_in(o);
  assert_int_equal(fx_jobin_bulk(again, "11ec-d16a-c763b73e-98e8-a31715e6a2bf", filters, 2, &err), 0);
  assert_int_equal(fx_jobin_bulk(again, "other-group", filters, 2, &err), 0);
  const fx_jobin_job *jobs2 = fx_jobin_jobs(again, &n);
  assert_int_equal(n, 2);
  assert_string_equal(jobs2[0].job_id, jobs[0].job_id);
  assert_string_equal(jobs2[0].text, jobs[0].text);
  assert_string_not_equal(jobs2[1].job_id, jobs[0].job_id);
  fx_jobin_free(again);
  fx_jobin_free(in);

  /* --job-id and --job-id-prefix name it. */
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 1, .job_id = "cohort-1"});
  assert_int_equal(fx_jobin_bulk(in, "g", NULL, 0, &err), 0);
  jobs = fx_jobin_jobs(in, &n);
  assert_string_equal(jobs[0].text, "{\"job_id\":\"cohort-1\",\"kind\":\"bulk\",\"tenant\":\"t1\",\"group\":\"g\"}");
  fx_jobin_free(in);
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 1, .id_prefix = "cohort"});
  assert_int_equal(fx_jobin_bulk(in, "g", NULL, 0, &err), 0);
  jobs = fx_jobin_jobs(in, &n);
  assert_string_equal(jobs[0].job_id, "cohort-000001");
  fx_jobin_free(in);

  /* Mistakes name the option, and add no job. */
  in = open_in((fx_jobin_opts){.batch = 1});
  assert_int_equal(fx_jobin_bulk(in, "g", NULL, 0, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--tenant: the config has 2 tenants"));
  fx_jobin_free(in);
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 1, .resources = "Patient,Binary"});
  assert_int_equal(fx_jobin_bulk(in, "g", NULL, 0, &err), FX_EINVAL);
  assert_non_null(
      strstr(err.msg, "--resources: the Group $export of profile cerner does not export Binary"));
  assert_int_equal(fx_jobin_bulk(in, "no/such", NULL, 0, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--group: a Group id must be"));
  fx_jobin_free(in);
  const char *comma[] = {"Goal?x=1", "Observation?code=a,b"};
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 1});
  assert_int_equal(fx_jobin_bulk(in, "g", comma, 2, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--type-filter 'Observation?code=a,b': a literal ','"));
  assert_non_null(strstr(err.msg, "%2C"));
  fx_jobin_free(in);
  /* Cerner's _typeFilter rules (group-export.md), named by the filter. */
  const char *on_patient[] = {"Patient?gender=male"};
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 1, .resources = "Patient,Observation"});
  assert_int_equal(fx_jobin_bulk(in, "g", on_patient, 1, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--type-filter 'Patient?gender=male': profile cerner: the "
                                  "server takes no _typeFilter on Patient"));
  const char *by_patient[] = {"Observation?patient=12724065"};
  assert_int_equal(fx_jobin_bulk(in, "g", by_patient, 1, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--type-filter 'Observation?patient=12724065': parameter "
                                  "'patient' is refused in a _typeFilter"));
  const char *twice[] = {"Observation?category=laboratory", "Observation?category=vital-signs"};
  assert_int_equal(fx_jobin_bulk(in, "g", twice, 2, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--type-filter 'Observation?category=vital-signs': a second "
                                  "filter for Observation"));
  fx_jobin_free(in);
  in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 1, .since = "soon"});
  assert_int_equal(fx_jobin_bulk(in, "g", NULL, 0, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--since: expected an RFC 3339"));
  fx_jobin_jobs(in, &n);
  assert_int_equal(n, 0);
  fx_jobin_free(in);
}

/* Bulk jobs in NDJSON are whole jobs, checked like the others. */
static void ndjson_bulk(void **state) {
  (void)state;
  fx_jobin *in = open_in((fx_jobin_opts){.tenant = "t1", .batch = 10, .id_prefix = "n"});
  read_text(in,
            "{\"kind\": \"bulk\", \"group\": \"g1\", \"resources\": [\"Patient\"]}\n"
            "{\"patient\": \"1\"}\n"
            "{\"kind\": \"bulk\", \"job_id\": \"mine\", \"tenant\": \"t2\", \"group\": \"g2\"}\n"
            "{\"kind\": \"bulk\", \"group\": \"g3\", \"patients\": [\"1\"]}\n"
            "{\"group\": \"g4\"}\n"
            "{\"kind\": \"bulk\", \"group\": \"g5\", \"resources\": [\"Binary\"]}\n",
            FX_JOBIN_NDJSON, 0);
  fx_err err = {0};
  assert_int_equal(fx_jobin_finish(in, &err), 0);
  size_t n;
  const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
  assert_int_equal(n, 3);
  assert_string_equal(jobs[0].text, "{\"job_id\":\"n-000001\",\"kind\":\"bulk\",\"group\":\"g1\","
                                    "\"resources\":[\"Patient\"],\"tenant\":\"t1\"}");
  assert_string_equal(jobs[1].text, "{\"job_id\":\"mine\",\"kind\":\"bulk\",\"tenant\":\"t2\",\"group\":\"g2\"}");
  assert_string_equal(jobs[2].text, "{\"job_id\":\"n-000002\",\"tenant\":\"t1\",\"patients\":[\"1\"]}");
  assert_non_null(strstr(reported, "4: the job would be rejected (invalid_job): patients: a bulk job "
                                   "exports a Group"));
  assert_non_null(strstr(reported, "5: the job would be rejected (invalid_job): group: only a bulk job"));
  assert_non_null(strstr(reported, "6: the job would be rejected (invalid_job): resources[0]: "
                                   "the Group $export of profile cerner does not export Binary"));
  fx_jobin_stats st;
  fx_jobin_get_stats(in, &st);
  assert_int_equal(st.jobs, 3);
  assert_int_equal(st.bulk_jobs, 2);
  assert_int_equal(st.patients, 1);
  assert_int_equal(st.bad_lines, 3);
  fx_jobin_free(in);
}

/* A job id names one job: the same job written twice (its id derived from
 * its content) or one id given to two jobs fails the input, naming the id
 * (found by tests/fuzz/fuzz_jobinput: regressions/jobinput/same-job-twice-same-id). */
static void duplicate_job_ids(void **state) {
  (void)state;
  fx_err err = {0};
  const char *twice = "{\"tenant\":\"t1\",\"patients\":[\"7\"]}\n"
                      "{\"tenant\":\"t1\",\"patients\":[\"7\"]}\n";
  fx_jobin *in = open_in((fx_jobin_opts){.batch = 10});
  read_text(in, twice, FX_JOBIN_NDJSON, 0);
  assert_int_equal(fx_jobin_finish(in, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "two jobs of the input have the job_id job-"));
  fx_jobin_free(in);
  in = open_in((fx_jobin_opts){.batch = 10});
  read_text(in,
            "{\"job_id\":\"j1\",\"tenant\":\"t1\",\"patients\":[\"1\"]}\n"
            "{\"job_id\":\"j1\",\"tenant\":\"t1\",\"patients\":[\"2\"]}\n",
            FX_JOBIN_NDJSON, 0);
  assert_int_equal(fx_jobin_finish(in, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "the job_id j1 "));
  fx_jobin_free(in);
  /* Distinct jobs keep distinct derived ids. */
  in = open_in((fx_jobin_opts){.batch = 10});
  read_text(in,
            "{\"tenant\":\"t1\",\"patients\":[\"1\"]}\n"
            "{\"tenant\":\"t1\",\"patients\":[\"2\"]}\n",
            FX_JOBIN_NDJSON, 0);
  assert_int_equal(fx_jobin_finish(in, &err), 0);
  size_t n = 0;
  const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
  assert_int_equal(n, 2);
  assert_string_not_equal(jobs[0].job_id, jobs[1].job_id);
  fx_jobin_free(in);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(csv_split), cmocka_unit_test(ndjson_batches),
                                     cmocka_unit_test(bad_lines), cmocka_unit_test(csv_input),
                                     cmocka_unit_test(options), cmocka_unit_test(many_lines),
                                     cmocka_unit_test(bulk_job), cmocka_unit_test(ndjson_bulk),
                                     cmocka_unit_test(duplicate_job_ids)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
