/* fhirx-kafka-with-mock: runs one command against a fresh fhirx-kafka-mock.
 *
 *   fhirx-kafka-with-mock [--brokers N] [--partitions N] -- COMMAND [ARG...]
 *
 * The command sees FXK_BOOTSTRAP (bootstrap.servers), FXK_BOOTSTRAP_FILE,
 * FXK_CONTROL (control API URL) and FXK_CONTROL_FILE in its environment.
 * Exit status: the command's (128+N if it died of signal N); if the command
 * succeeded but the mock did not shut down cleanly (e.g. a leak under ASan),
 * the mock's; 2 for bad arguments; 1 if the mock could not start. */
#include "tests/kafka/kafka_support.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

static int usage(const char *problem) {
  fprintf(stderr,
          "fhirx-kafka-with-mock: %s\n"
          "usage: fhirx-kafka-with-mock [--brokers N (3)] [--partitions N (6)] -- COMMAND "
          "[ARG...]\n",
          problem);
  return 2;
}

static int parse_count(const char *s, long max, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < 1 || v > max) return -1;
  *out = (int)v;
  return 0;
}

static int export_env(const fxk_cluster *c) {
  char path[512];
  int rc = setenv("FXK_BOOTSTRAP", c->bootstrap, 1) | setenv("FXK_CONTROL", c->control, 1);
  snprintf(path, sizeof path, "%s/%s", c->dir, FXK_BOOTSTRAP_FILE);
  rc |= setenv("FXK_BOOTSTRAP_FILE", path, 1);
  snprintf(path, sizeof path, "%s/%s", c->dir, FXK_CONTROL_FILE);
  rc |= setenv("FXK_CONTROL_FILE", path, 1);
  return rc;
}

static int run_command(char **argv) {
  pid_t parent = getpid();
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "fhirx-kafka-with-mock: fork: %s\n", strerror(errno));
    return 1;
  }
  if (pid == 0) {
#ifdef __linux__
    /* If ctest kills us on timeout, the command goes too. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
#else
    (void)parent;
#endif
    execvp(argv[0], argv);
    fprintf(stderr, "fhirx-kafka-with-mock: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return 1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
}

int main(int argc, char **argv) {
  int brokers = 3, partitions = 6, i = 1;
  for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
    if (i + 1 >= argc) return usage("option without a value");
    if (strcmp(argv[i], "--brokers") == 0) {
      if (parse_count(argv[i + 1], 32, &brokers)) return usage("--brokers: expected 1-32");
    } else if (strcmp(argv[i], "--partitions") == 0) {
      if (parse_count(argv[i + 1], 1024, &partitions)) return usage("--partitions: expected 1-1024");
    } else {
      return usage("unknown option");
    }
  }
  if (i + 1 >= argc) return usage("no command after --");

  fxk_cluster c;
  if (fxk_start(&c, brokers, partitions)) return 1;
  int rc = export_env(&c) ? 1 : run_command(argv + i + 1);
  int mock_rc = fxk_stop(&c);
  if (rc == 0 && mock_rc != 0) {
    fprintf(stderr, "fhirx-kafka-with-mock: the mock exited with status %d\n", mock_rc);
    rc = mock_rc < 0 ? 1 : mock_rc;
  }
  return rc;
}
