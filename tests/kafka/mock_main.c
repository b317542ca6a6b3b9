/* fhirx-kafka-mock: a librdkafka mock Kafka cluster in its own process, for
 * the tests and the demo (no real broker can be installed here). See
 * docs/embedded-kafka.md.
 *
 *   fhirx-kafka-mock [--brokers 3] [--partitions 6] [--topics a,b,...]
 *                    [--bootstrap-file PATH] [--control-file PATH]
 *                    [--control-port N] [--verbose]
 *
 * Exit status: 0 after SIGTERM/SIGINT, 2 for bad arguments, 1 when the
 * cluster or the control server cannot start. */
#include "tests/kafka/mock_cluster.h"
#include "tests/kafka/mock_http.h"
#include "tests/kafka/mock_log.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_TOPICS "fhirx.jobs,fhirx.results,fhirx.failures,fhirx.dlq,fhirx.status,fhirx.parking,fhirx.bulk"

typedef struct options {
  int brokers;
  int partitions;
  const char *topics;
  const char *bootstrap_file;
  const char *control_file;
  unsigned control_port;
  bool verbose;
} options;

static void print_usage(FILE *f) {
  fprintf(f,
          "usage: fhirx-kafka-mock [--brokers 1-%d (3)] [--partitions 1-%d (6)]\n"
          "                        [--topics a,b,... (" DEFAULT_TOPICS ")]\n"
          "                        [--bootstrap-file PATH] [--control-file PATH]\n"
          "                        [--control-port N (0: any free port)] [--verbose]\n"
          "Runs librdkafka's mock Kafka cluster until SIGTERM/SIGINT; see "
          "docs/embedded-kafka.md.\n",
          FXM_MAX_BROKERS, FXM_MAX_PARTITIONS);
}

static int usage(const char *problem) {
  fprintf(stderr, "fhirx-kafka-mock: %s\n", problem);
  print_usage(stderr);
  return 2;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (!*s || *end || errno || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* Validates the --topics names up front, so a typo is a usage error (2)
 * rather than a failed start. */
static int check_topics(const char *list) {
  char *copy = strdup(list), *save = NULL;
  int rc = copy ? 0 : 2;
  for (char *name = copy ? strtok_r(copy, ",", &save) : NULL; name && !rc;
       name = strtok_r(NULL, ",", &save)) {
    char err[512], problem[600];
    if (fxm_topic_name_check(name, err, sizeof err)) {
      snprintf(problem, sizeof problem, "--topics: %s", err);
      rc = usage(problem);
    }
  }
  free(copy);
  return rc;
}

static int parse_args(int argc, char **argv, options *o) {
  static const struct option longopts[] = {
      {"brokers", required_argument, NULL, 'b'},
      {"partitions", required_argument, NULL, 'p'},
      {"topics", required_argument, NULL, 't'},
      {"bootstrap-file", required_argument, NULL, 'B'},
      {"control-file", required_argument, NULL, 'C'},
      {"control-port", required_argument, NULL, 'P'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  *o = (options){.brokers = 3, .partitions = 6, .topics = DEFAULT_TOPICS};
  long v;
  int c;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
    case 'b':
      if (parse_int(optarg, 1, FXM_MAX_BROKERS, &v)) return usage("--brokers: expected 1-32");
      o->brokers = (int)v;
      break;
    case 'p':
      if (parse_int(optarg, 1, FXM_MAX_PARTITIONS, &v))
        return usage("--partitions: expected 1-1024");
      o->partitions = (int)v;
      break;
    case 't': o->topics = optarg; break;
    case 'B': o->bootstrap_file = optarg; break;
    case 'C': o->control_file = optarg; break;
    case 'P':
      if (parse_int(optarg, 0, 65535, &v)) return usage("--control-port: expected 0-65535");
      o->control_port = (unsigned)v;
      break;
    case 'v': o->verbose = true; break;
    case 'h': print_usage(stdout); exit(0);
    default: return usage("unknown option");
    }
  }
  if (optind < argc) return usage("unexpected argument");
  return check_topics(o->topics);
}

/* Written as tmp + rename so a reader polling for the file sees either
 * nothing or the whole line, never a prefix of it. */
static int write_file_atomic(const char *path, const char *line) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
    fprintf(stderr, "fhirx-kafka-mock: path too long: %s\n", path);
    return -1;
  }
  FILE *f = fopen(tmp, "w");
  if (!f) {
    fprintf(stderr, "fhirx-kafka-mock: cannot create %s: %s\n", tmp, strerror(errno));
    return -1;
  }
  int failed = fprintf(f, "%s\n", line) < 0;
  failed |= fclose(f) != 0;
  if (failed || rename(tmp, path) != 0) {
    fprintf(stderr, "fhirx-kafka-mock: cannot write %s: %s\n", path, strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}

/* Creates every topic of the comma-separated list. */
static int create_topics(fxm_cluster *c, const char *list) {
  char *copy = strdup(list), *save = NULL;
  int rc = copy ? 0 : -1;
  for (char *name = copy ? strtok_r(copy, ",", &save) : NULL; name && !rc;
       name = strtok_r(NULL, ",", &save)) {
    char err[512];
    if (fxm_cluster_create_topic(c, name, 0, err, sizeof err) < 0) {
      fprintf(stderr, "fhirx-kafka-mock: --topics: %s\n", err);
      rc = -1;
    }
  }
  free(copy);
  return rc;
}

/* Blocks until SIGTERM or SIGINT; they were blocked in every thread before
 * any was started, so sigwait here is the only place they are seen and no
 * handler ever runs in a librdkafka or libmicrohttpd thread. */
static int wait_for_signal(const sigset_t *set) {
  int sig = 0;
  while (sigwait(set, &sig) != 0) {
  }
  return sig;
}

static int run(const options *o, const sigset_t *signals) {
  char err[512];
  char control_url[64];
  int rc = 1;
  fxm_http *http = NULL;
  fxm_cluster *cluster = fxm_cluster_new(o->brokers, o->partitions, o->verbose, err, sizeof err);
  if (!cluster) {
    fprintf(stderr, "fhirx-kafka-mock: %s\n", err);
    return 1;
  }
  if (create_topics(cluster, o->topics)) goto out;
  http = fxm_http_start(cluster, o->control_port, err, sizeof err);
  if (!http) {
    fprintf(stderr, "fhirx-kafka-mock: %s\n", err);
    goto out;
  }
  snprintf(control_url, sizeof control_url, "http://127.0.0.1:%u", fxm_http_port(http));
  /* The bootstrap file goes first and the control file last: a reader that
   * sees the control file knows both the cluster and the API are up. */
  if (o->bootstrap_file && write_file_atomic(o->bootstrap_file, fxm_cluster_bootstraps(cluster)))
    goto out;
  if (o->control_file && write_file_atomic(o->control_file, control_url)) goto out;
  fxm_log("info", "ready",
          json_pack("{s:s, s:s, s:i, s:i, s:s, s:s}", "bootstrap", fxm_cluster_bootstraps(cluster),
                    "control", control_url, "brokers", o->brokers, "partitions", o->partitions,
                    "topics", o->topics, "librdkafka", rd_kafka_version_str()));

  int sig = wait_for_signal(signals);
  fxm_log("info", "shutting down", json_pack("{s:s}", "signal", sig == SIGINT ? "INT" : "TERM"));
  rc = 0;

out:
  fxm_http_stop(http);
  /* Readers must not mistake a stopped cluster for a running one. */
  if (o->control_file) unlink(o->control_file);
  if (o->bootstrap_file) unlink(o->bootstrap_file);
  fxm_cluster_free(cluster);
  return rc;
}

int main(int argc, char **argv) {
  options o;
  if (parse_args(argc, argv, &o)) return 2;

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  if (pthread_sigmask(SIG_BLOCK, &signals, NULL) != 0) {
    fprintf(stderr, "fhirx-kafka-mock: cannot block signals\n");
    return 1;
  }
  int rc = run(&o, &signals);
  /* librdkafka finishes some teardown on its own threads after
   * rd_kafka_destroy returns; waiting keeps leak checkers from seeing it
   * half done. */
  if (rd_kafka_wait_destroyed(5000) != 0) {
    fxm_log("warn", "librdkafka threads still running at exit", NULL);
    if (rc == 0) rc = 1;
  }
  if (rc == 0) fxm_log("info", "stopped", NULL);
  return rc;
}
