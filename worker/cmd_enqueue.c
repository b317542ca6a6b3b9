/* fhirx enqueue: build, validate and produce extraction jobs. */
#include <getopt.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/app.h"
#include "worker/cli.h"
#include "worker/job.h"
#include "worker/kclient.h"

static const char enqueue_usage[] =
    "usage: fhirx enqueue --config FILE --tenant ID --patients ID[,ID...]\n"
    "                     [--resources TYPE[,TYPE...]] [--since INSTANT] [--follow-references]\n"
    "                     [--job-id ID] [--dry-run]\n"
    "\n"
    "Builds one job, validates it with the rules the worker applies, and produces it to the\n"
    "jobs topic keyed by its job id. Without --job-id the id is derived from the job's content,\n"
    "so enqueuing the same job twice gives it the same identity. --dry-run prints the job\n"
    "instead of producing it.\n";

static json_t *csv_array(const char *csv) {
  json_t *a = json_array();
  char *copy = strdup(csv);
  for (char *save = NULL, *t = copy ? strtok_r(copy, ",", &save) : NULL; t;
       t = strtok_r(NULL, ",", &save))
    json_array_append_new(a, json_string(t));
  free(copy);
  return a;
}

/* "job-" + 16 hex digits of SHA-256 over the job's content. */
static void derive_id(json_t *job, char out[32]) {
  char *text = json_dumps(job, JSON_COMPACT | JSON_SORT_KEYS);
  unsigned char d[32];
  unsigned int n = 0;
  EVP_Digest(text, strlen(text), d, &n, EVP_sha256(), NULL);
  free(text);
  snprintf(out, 32, "job-");
  for (int i = 0; i < 8; i++) snprintf(out + 4 + 2 * i, 3, "%02x", d[i]);
}

int fx_cmd_enqueue(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"tenant", required_argument, 0, 't'},
                                       {"patients", required_argument, 0, 'p'},
                                       {"resources", required_argument, 0, 'r'},
                                       {"since", required_argument, 0, 's'},
                                       {"follow-references", no_argument, 0, 'f'},
                                       {"job-id", required_argument, 0, 'j'},
                                       {"dry-run", no_argument, 0, 'n'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL, *tenant = NULL, *patients = NULL, *resources = NULL, *since = NULL;
  const char *job_id = NULL;
  int follow = 0, dry = 0, c;
  fx_cli_log_level(FX_LOG_WARN);
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config = optarg; break;
    case 't': tenant = optarg; break;
    case 'p': patients = optarg; break;
    case 'r': resources = optarg; break;
    case 's': since = optarg; break;
    case 'f': follow = 1; break;
    case 'j': job_id = optarg; break;
    case 'n': dry = 1; break;
    case 'h': fputs(enqueue_usage, stdout); return FX_EXIT_OK;
    default: fputs(enqueue_usage, stderr); return FX_EXIT_USAGE;
    }
  }
  if (!config || !tenant || !patients) {
    fputs(enqueue_usage, stderr);
    return FX_EXIT_USAGE;
  }
  fx_config *cfg = NULL;
  fx_err err = {0};
  if (fx_config_load(config, &cfg, &err) != 0)
    return fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s", err.msg);

  json_t *job = json_pack("{s:s, s:o}", "tenant", tenant, "patients", csv_array(patients));
  if (resources) json_object_set_new(job, "resources", csv_array(resources));
  if (since) json_object_set_new(job, "since", json_string(since));
  if (follow) json_object_set_new(job, "follow_references", json_true());
  char derived[32];
  if (!job_id) derive_id(job, derived);
  json_object_set_new(job, "job_id", json_string(job_id ? job_id : derived));
  char *text = json_dumps(job, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(job);

  fx_job_limits lim = {.max_bytes = (size_t)cfg->worker.max_job_bytes,
                       .max_patients = (size_t)cfg->worker.max_patients_per_job};
  fx_job *parsed = NULL;
  fx_job_error jerr;
  int rc = FX_EXIT_OK;
  fx_profile_set profiles;
  if (fx_profile_set_load(cfg, &profiles, &err) != 0) {
    free(text);
    fx_config_free(cfg);
    return fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s", err.msg);
  }
  if (fx_job_parse(text, strlen(text), &profiles, &lim, &parsed, &jerr) != 0) {
    rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "the job would be rejected (%s): %s",
                     fx_errclass_name(jerr.cls), jerr.msg);
  } else if (dry) {
    puts(text);
  } else {
    fx_kproducer kp;
    if (fx_kproducer_open(&kp, cfg, &err) != 0 ||
        fx_kproducer_send(&kp, cfg->topics.jobs, parsed->job_id, text, strlen(text), NULL, &err) != 0) {
      rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s", err.msg);
    } else if (fx_kproducer_flush(&kp, 30000) != 0 || kp.failed) {
      rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "the job was not acknowledged by Kafka: %s",
                       kp.failed ? kp.first_error : "timed out");
    } else {
      printf("enqueued %s: %zu patient%s for tenant %s on %s\n", parsed->job_id, parsed->n_tasks,
             parsed->n_tasks == 1 ? "" : "s", parsed->tenant, cfg->topics.jobs);
    }
    if (kp.rk) fx_kproducer_close(&kp);
  }
  fx_job_free(parsed);
  free(text);
  fx_profile_set_free(&profiles);
  fx_config_free(cfg);
  return rc;
}
