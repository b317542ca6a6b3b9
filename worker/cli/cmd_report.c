/* fhirx report: what the workers produced, read back from the output topics. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/strutil.h"
#include "worker/model/app.h"
#include "worker/cli/cli.h"
#include "worker/cli/kclient.h"
#include "worker/model/strset.h"

static const char report_usage[] =
    "usage: fhirx report --config FILE [--expect-jobs N] [--timeout SECONDS]\n"
    "\n"
    "Reads the status, results, failures and dead-letter topics from the beginning (no\n"
    "consumer group, nothing committed) and prints the status of every job and the resources\n"
    "published per type. --expect-jobs waits until that many status records exist.\n";

typedef struct report {
  json_t *jobs; /* job_id -> last status */
  json_t *types; /* resourceType -> count of distinct keys */
  fx_strset *keys;
  size_t results, failures, dead_letters;
} report;

static void on_status(const rd_kafka_message_t *m, void *arg) {
  report *r = arg;
  json_t *v = json_loadb(m->payload, m->len, 0, NULL);
  const char *id = json_string_value(json_object_get(v, "job_id"));
  if (id) json_object_set(r->jobs, id, v);
  json_decref(v);
}

static void on_result(const rd_kafka_message_t *m, void *arg) {
  report *r = arg;
  r->results++;
  if (!m->key) return;
  char *key = fx_memstr(m->key, m->key_len);
  if (key && fx_strset_add(r->keys, key) == 1) {
    char *slash = strchr(key, '/'), *type = slash ? slash + 1 : NULL;
    char *end = type ? strchr(type, '/') : NULL;
    if (end) {
      *end = '\0';
      json_t *n = json_object_get(r->types, type);
      json_object_set_new(r->types, type, json_integer(n ? json_integer_value(n) + 1 : 1));
    }
  }
  free(key);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void on_count(const rd_kafka_message_t *m, void *arg) {
  (void)m;
  (*(size_t *)arg)++;
}

int fx_cmd_report(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"expect-jobs", required_argument, 0, 'e'},
                                       {"timeout", required_argument, 0, 'T'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL;
  long expect = 0, timeout_s = 60;
  int c;
  fx_cli_log_level(FX_LOG_ERROR);
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config = optarg; break;
    case 'e': expect = strtol(optarg, NULL, 10); break;
    case 'T': timeout_s = strtol(optarg, NULL, 10); break;
    case 'h': fputs(report_usage, stdout); return FX_EXIT_OK;
    default: fputs(report_usage, stderr); return FX_EXIT_USAGE;
    }
  }
  config = fx_cli_config(config);
  if (!config || expect < 0 || timeout_s <= 0) {
    fputs(report_usage, stderr);
    return FX_EXIT_USAGE;
  }
  fx_config *cfg = NULL;
  fx_err err = {0};
  if (fx_config_load(config, &cfg, &err) != 0)
    return fx_cli_fail("report", FX_EXIT_FAIL, "%s", err.msg);
  report r = {.jobs = json_object(), .types = json_object(), .keys = fx_strset_new()};
  time_t deadline = time(NULL) + timeout_s;
  int rc = 0;
  /* Status records can lag their results: re-read until enough are there. */
  do {
    json_object_clear(r.jobs);
    rc = fx_kread_all(cfg, cfg->topics.status, on_status, &r, 10000, &err);
    if ((long)json_object_size(r.jobs) >= expect) break;
    struct timespec ts = {0, 300 * 1000000L};
    nanosleep(&ts, NULL);
  } while (time(NULL) < deadline);
  if (!rc) rc = fx_kread_all(cfg, cfg->topics.results, on_result, &r, 10000, &err);
  if (!rc) rc = fx_kread_all(cfg, cfg->topics.failures, on_count, &r.failures, 10000, &err);
  if (!rc) rc = fx_kread_all(cfg, cfg->topics.dlq, on_count, &r.dead_letters, 10000, &err);
  int exit_code = FX_EXIT_OK;
  if (rc) {
    exit_code = fx_cli_fail("report", FX_EXIT_FAIL, "%s", err.msg);
  } else {
    size_t by_state[3] = {0};
    const char *id;
    json_t *st;
    printf("jobs: %zu\n", json_object_size(r.jobs));
    json_object_foreach(r.jobs, id, st) {
      const char *state = json_string_value(json_object_get(st, "state"));
      by_state[state && strcmp(state, "completed") == 0 ? 0 : (state && strcmp(state, "partial") == 0 ? 1 : 2)]++;
      printf("  %-28s %-9s attempt %lld  resources %lld  failures %lld", id, state ? state : "?",
             (long long)json_integer_value(json_object_get(st, "attempt")),
             (long long)json_integer_value(json_object_get(st, "resources")),
             (long long)json_integer_value(json_object_get(st, "failures")));
      const char *cls = json_string_value(json_object_get(st, "error_class"));
      printf("%s%s\n", cls ? "  first error: " : "", cls ? cls : "");
    }
    printf("states: completed %zu, partial %zu, failed %zu\n", by_state[0], by_state[1], by_state[2]);
    printf("resources: %zu distinct (%zu messages)\n", fx_strset_size(r.keys), r.results);
    /* Types in alphabetical order, so reports compare line by line. */
    const char *type;
    json_t *n;
    const char *names[64];
    size_t k = 0;
    json_object_foreach(r.types, type, n) if (k < 64) names[k++] = type;
    qsort(names, k, sizeof *names, cmp_str);
    for (size_t i = 0; i < k; i++)
      printf("  %-20s %lld\n", names[i], (long long)json_integer_value(json_object_get(r.types, names[i])));
    printf("failures: %zu   dead letters: %zu\n", r.failures, r.dead_letters);
    if ((long)json_object_size(r.jobs) < expect)
      exit_code = fx_cli_fail("report", FX_EXIT_FAIL, "expected %ld status records, found %zu",
                              expect, json_object_size(r.jobs));
  }
  json_decref(r.jobs);
  json_decref(r.types);
  fx_strset_free(r.keys);
  fx_config_free(cfg);
  return exit_code;
}
