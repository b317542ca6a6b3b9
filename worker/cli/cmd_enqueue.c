/* fhirx enqueue: read patients, validate them as the workers would, group
 * them into jobs and produce the jobs; or make one bulk job (--group). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/cli/cli.h"
#include "worker/cli/jobinput.h"
#include "worker/cli/kclient.h"
#include "worker/cli/progress.h"
#include "worker/cli/ratelimit.h"

static const char enqueue_usage[] =
    "usage: fhirx enqueue --config FILE [--tenant ID] [--resources TYPE[,TYPE...]]\n"
    "                     [--since INSTANT] [--follow-references]\n"
    "                     (--patients ID[,ID...] | ID... | --csv FILE [--column NAME] |\n"
    "                      --ndjson FILE)\n"
    "                     [--batch N] [--job-id ID | --job-id-prefix PREFIX] [--rate N]\n"
    "                     [--strict] [--dry-run]\n"
    "       fhirx enqueue --config FILE --group ID [--tenant ID] [--resources TYPE[,TYPE...]]\n"
    "                     [--since INSTANT] [--type-filter QUERY]... [--follow-references]\n"
    "                     [--job-id ID | --job-id-prefix PREFIX] [--dry-run]\n"
    "\n"
    "Builds extraction jobs, validates them with the rules the workers apply (the same\n"
    "config), and produces them to the jobs topic keyed by job id.\n"
    "\n"
    "Patients come from --patients and/or the arguments, from a CSV file with a header row\n"
    "(--column names the patient column, default 'patient'; optional columns tenant,\n"
    "resources (separated by spaces, ';' or '|'), since and follow_references), or from an\n"
    "NDJSON file with one {\"patient\": ID, \"tenant\": ..., \"resources\": [...], \"since\": ...}\n"
    "per line, or a whole job per line. FILE '-' reads stdin. --tenant, --resources, --since\n"
    "and --follow-references are the defaults a line may override.\n"
    "\n"
    "Patients with the same tenant, resources, since and follow_references go into jobs of\n"
    "--batch patients (default 100; with --job-id, one job), in input order; a patient\n"
    "repeated within such a group is dropped. Job ids are PREFIX-000001, PREFIX-000002, ...\n"
    "with --job-id-prefix, else 'job-' and a hash of the job: the same input always gives\n"
    "the same jobs with the same ids, so a re-run does not create new identities.\n"
    "\n"
    "Every line is checked before anything is produced. A bad line is reported on stderr\n"
    "as 'line N: what is wrong' and skipped; the other jobs are still produced and the exit\n"
    "status is 1. With --strict one bad line means nothing is produced. --dry-run prints the\n"
    "jobs as NDJSON on stdout (the summary goes to stderr) and produces nothing.\n"
    "--rate limits jobs per second. A progress bar is drawn when stderr is a terminal; the\n"
    "summary is one line on stdout: jobs, patients, tenants.\n"
    "\n"
    "With --group, one bulk job: a Bulk Data $export of that Group for --tenant (default:\n"
    "the config's only tenant). --resources (default: the tenant's types) is split by the\n"
    "tenant's profile: what its server exports becomes _type (Cerner: 18 types, Provenance\n"
    "and Location, Organization, Practitioner included); the rest (Cerner: Coverage,\n"
    "RelatedPerson, ServiceRequest) is fetched per patient for the exported Patients by\n"
    "follow-up patient jobs, which needs Patient and no --since. --since becomes _since,\n"
    "each --type-filter TYPE?QUERY (repeatable, up to 32; TYPE an exported type of the job;\n"
    "a ',' inside written %2C) _typeFilter, checked against the server's rules (Cerner: none\n"
    "on Patient, Location, Organization, Practitioner, Provenance; no patient, _lastUpdated,\n"
    "_count, _id, subject, encounter, identifier; one per type). Its id is --job-id,\n"
    "PREFIX-000001, or 'job-' and a hash of the job. --group takes no patients, --csv,\n"
    "--ndjson, --batch or --column.\n"
    "\n"
    "Exit status: 0 all enqueued; 1 a line was rejected or Kafka did not acknowledge a job;\n"
    "2 usage.\n";

typedef struct bad_report {
  const char *what; /* "line" or "argument" */
} bad_report;

static void on_bad(unsigned long line, const char *msg, void *arg) {
  const bad_report *r = arg;
  fprintf(stderr, "%s %lu: %s\n", r->what, line, msg);
}

static int parse_count(const char *s, long max, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < 0 || v > max) return -1;
  *out = v;
  return 0;
}

static FILE *open_input(const char *path) {
  return strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
}

/* Produces every job, at most rate per second, and waits for Kafka's
 * acknowledgements. Returns the number acknowledged. */
static int produce_jobs(const fx_config *cfg, const fx_jobin_job *jobs, size_t n, long rate,
                        unsigned long *acked, fx_err *err) {
  fx_kproducer kp;
  int rc = fx_kproducer_open(&kp, cfg, err);
  if (rc) return rc;
  fx_rate rl;
  fx_rate_init(&rl, (double)rate);
  fx_progress bar;
  fx_progress_init(&bar, "enqueue", n);
  for (size_t i = 0; i < n && !rc; i++) {
    fx_rate_wait(&rl);
    rc = fx_kproducer_send(&kp, cfg->topics.jobs, jobs[i].job_id, jobs[i].text, jobs[i].len, NULL,
                           err);
    rd_kafka_poll(kp.rk, 0);
    fx_progress_update(&bar, i + 1, NULL, 0);
  }
  int left = fx_kproducer_flush(&kp, 60000);
  fx_progress_done(&bar);
  *acked = kp.delivered;
  if (!rc && (left || kp.failed))
    rc = fx_err_set(err, FX_EIO,
                    "%lu of %zu jobs were not acknowledged by Kafka (%s); run the same command "
                    "again: the job ids are the same, so nothing is doubled but the work",
                    (unsigned long)n - kp.delivered, n, kp.failed ? kp.first_error : "timed out");
  fx_kproducer_close(&kp);
  return rc;
}

int fx_cmd_enqueue(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"tenant", required_argument, 0, 't'},
                                       {"patients", required_argument, 0, 'p'},
                                       {"resources", required_argument, 0, 'r'},
                                       {"since", required_argument, 0, 's'},
                                       {"follow-references", no_argument, 0, 'f'},
                                       {"csv", required_argument, 0, 'C'},
                                       {"column", required_argument, 0, 'k'},
                                       {"ndjson", required_argument, 0, 'N'},
                                       {"batch", required_argument, 0, 'b'},
                                       {"job-id", required_argument, 0, 'j'},
                                       {"job-id-prefix", required_argument, 0, 'P'},
                                       {"rate", required_argument, 0, 'R'},
                                       {"strict", no_argument, 0, 'S'},
                                       {"dry-run", no_argument, 0, 'n'},
                                       {"group", required_argument, 0, 'G'},
                                       {"type-filter", required_argument, 0, 'T'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL, *patients = NULL, *csv = NULL, *ndjson = NULL, *group = NULL;
  const char *type_filters[64]; /* more than a job may have: the parser says how many */
  size_t n_type_filters = 0;
  fx_jobin_opts jo = {0};
  long batch = -1, rate = 0;
  int strict = 0, dry = 0, c;
  fx_cli_log_level(FX_LOG_WARN);
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config = optarg; break;
    case 't': jo.tenant = optarg; break;
    case 'p': patients = optarg; break;
    case 'r': jo.resources = optarg; break;
    case 's': jo.since = optarg; break;
    case 'f': jo.follow_references = 1; break;
    case 'C': csv = optarg; break;
    case 'k': jo.column = optarg; break;
    case 'N': ndjson = optarg; break;
    case 'b':
      if (parse_count(optarg, 1000000, &batch) || batch < 1)
        return fx_cli_fail("enqueue", FX_EXIT_USAGE, "--batch: expected patients per job, 1 or more");
      break;
    case 'j': jo.job_id = optarg; break;
    case 'P': jo.id_prefix = optarg; break;
    case 'R':
      if (parse_count(optarg, 1000000, &rate))
        return fx_cli_fail("enqueue", FX_EXIT_USAGE, "--rate: expected jobs per second (0: no limit)");
      break;
    case 'S': strict = 1; break;
    case 'n': dry = 1; break;
    case 'G': group = optarg; break;
    case 'T':
      if (n_type_filters == sizeof type_filters / sizeof type_filters[0])
        return fx_cli_fail("enqueue", FX_EXIT_USAGE, "--type-filter: at most %d per job",
                           FX_BULK_MAX_TYPE_FILTERS);
      type_filters[n_type_filters++] = optarg;
      break;
    case 'h': fputs(enqueue_usage, stdout); return FX_EXIT_OK;
    default: fputs(enqueue_usage, stderr); return FX_EXIT_USAGE;
    }
  }
  int from_args = patients || optind < argc;
  config = fx_cli_config(config);
  if (group && (from_args || csv || ndjson || batch >= 0 || jo.column)) {
    fputs(enqueue_usage, stderr);
    return fx_cli_fail("enqueue", FX_EXIT_USAGE,
                       "--group makes one bulk job (a Group $export): it takes no patients, "
                       "--csv, --ndjson, --batch or --column; enqueue patient lists separately");
  }
  if (n_type_filters && !group)
    return fx_cli_fail("enqueue", FX_EXIT_USAGE,
                       "--type-filter applies to bulk jobs only (--group)");
  if (!config || (!group && from_args + !!csv + !!ndjson != 1)) {
    fputs(enqueue_usage, stderr);
    return fx_cli_fail("enqueue", FX_EXIT_USAGE,
                       "give --config and exactly one source of patients: --patients/arguments, "
                       "--csv or --ndjson (or --group for a bulk job)");
  }
  if (jo.job_id && jo.id_prefix)
    return fx_cli_fail("enqueue", FX_EXIT_USAGE, "--job-id and --job-id-prefix exclude each other");
  if (jo.column && !csv)
    return fx_cli_fail("enqueue", FX_EXIT_USAGE, "--column applies to --csv only");

  fx_config *cfg = NULL;
  fx_err err = {0};
  if (fx_config_load(config, &cfg, &err) != 0)
    return fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s", err.msg);
  fx_profile_set profiles;
  if (fx_profile_set_load(cfg, &profiles, &err) != 0) {
    fx_config_free(cfg);
    return fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s", err.msg);
  }
  fx_job_limits lim = {.max_bytes = (size_t)cfg->worker.max_job_bytes,
                       .max_patients = (size_t)cfg->worker.max_patients_per_job};
  if (batch < 0) batch = jo.job_id || group ? (long)lim.max_patients : (100 < (long)lim.max_patients ? 100 : (long)lim.max_patients);
  jo.batch = (size_t)batch;

  bad_report br = {from_args ? "argument" : "line"};
  fx_jobin *in = NULL;
  int rc = FX_EXIT_OK;
  if (fx_jobin_new(&profiles, &lim, &jo, on_bad, &br, &in, &err) != 0) {
    rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s", err.msg);
    goto out;
  }
  if (group) {
    if (fx_jobin_bulk(in, group, type_filters, n_type_filters, &err) != 0) {
      rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s; nothing was produced", err.msg);
      goto out;
    }
  } else if (from_args) {
    unsigned long pos = 0;
    char *copy = patients ? strdup(patients) : NULL, *save = NULL;
    for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
      fx_jobin_patient(in, ++pos, t);
    free(copy);
    for (int i = optind; i < argc; i++) fx_jobin_patient(in, ++pos, argv[i]);
  } else {
    const char *path = csv ? csv : ndjson;
    FILE *f = open_input(path);
    if (!f) {
      rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "cannot open %s: %s", path, strerror(errno));
      goto out;
    }
    int read_rc = fx_jobin_read(in, f, csv ? FX_JOBIN_CSV : FX_JOBIN_NDJSON, &err);
    if (f != stdin) fclose(f);
    if (read_rc) {
      rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s: %s; nothing was produced",
                       strcmp(path, "-") ? path : "stdin", err.msg);
      goto out;
    }
  }
  if (fx_jobin_finish(in, &err) != 0) {
    rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s; nothing was produced", err.msg);
    goto out;
  }
  fx_jobin_stats st;
  fx_jobin_get_stats(in, &st);
  size_t n = 0;
  const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
  char tail[160] = "";
  if (st.bad_lines)
    snprintf(tail, sizeof tail, "; %lu %s%s rejected", st.bad_lines,
             from_args ? "argument" : "line", st.bad_lines == 1 ? "" : "s");
  if (st.duplicates)
    snprintf(tail + strlen(tail), sizeof tail - strlen(tail), "; %lu repeated patient%s dropped",
             st.duplicates, st.duplicates == 1 ? "" : "s");
  if (st.bad_lines && strict) {
    rc = fx_cli_fail("enqueue", FX_EXIT_FAIL,
                     "%lu bad %s%s (listed above); nothing was produced (--strict)", st.bad_lines,
                     from_args ? "argument" : "line", st.bad_lines == 1 ? "" : "s");
    goto out;
  }
  if (n == 0) {
    rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "no job to enqueue: the input holds no valid patient or job%s",
                     tail);
    goto out;
  }
  char named[200] = "", what[200] = "";
  if (n == 1) snprintf(named, sizeof named, ": %s", jobs[0].job_id);
  /* What the jobs hold: patients, bulk exports (a Group's size is unknown
   * here), tenants. */
  if (st.jobs > st.bulk_jobs)
    snprintf(what, sizeof what, "%lu patients, ", st.patients);
  if (group)
    snprintf(what + strlen(what), sizeof what - strlen(what), "bulk export of Group %s, ", group);
  else if (st.bulk_jobs)
    snprintf(what + strlen(what), sizeof what - strlen(what), "%lu bulk export%s, ", st.bulk_jobs,
             st.bulk_jobs == 1 ? "" : "s");
  snprintf(what + strlen(what), sizeof what - strlen(what), "%lu tenant%s", st.tenants,
           st.tenants == 1 ? "" : "s");
  if (dry) {
    for (size_t i = 0; i < n; i++) {
      fwrite(jobs[i].text, 1, jobs[i].len, stdout);
      fputc('\n', stdout);
    }
    fprintf(stderr, "dry run: %lu job%s (%s)%s; nothing produced%s\n", st.jobs,
            st.jobs == 1 ? "" : "s", what, named, tail);
  } else {
    unsigned long acked = 0;
    if (produce_jobs(cfg, jobs, n, rate, &acked, &err) != 0) {
      rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "%s", err.msg);
      goto out;
    }
    printf("enqueued %lu job%s (%s) on %s%s%s\n", st.jobs, st.jobs == 1 ? "" : "s", what,
           cfg->topics.jobs, named, tail);
  }
  if (st.bad_lines)
    rc = fx_cli_fail("enqueue", FX_EXIT_FAIL, "%lu %s%s rejected (listed above); the others were %s",
                     st.bad_lines, from_args ? "argument" : "line", st.bad_lines == 1 ? " was" : "s were",
                     dry ? "printed" : "enqueued");
out:
  fx_jobin_free(in);
  fx_profile_set_free(&profiles);
  fx_config_free(cfg);
  return rc;
}
