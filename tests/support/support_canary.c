/* Starting, stopping and querying fhirx-canary from tests (the process
 * handling mirrors support_sim.c). */
#include "fx_testsupport.h"
#include "support_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FX_CANARY_BIN
#error "FX_CANARY_BIN must be defined by the build (path of the fhirx-canary binary)"
#endif

#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 10000
#define MAX_EXTRA_ARGS 16

const char *fx_canary_binary(void) {
  const char *env = getenv("FX_CANARY_BIN");
  return env && *env ? env : FX_CANARY_BIN;
}

static pid_t spawn(const char *const *argv) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0) return pid;
  /* SIGTERM when the test dies, so no orphaned canaries pile up. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  char **av = fx_test__argv_dup(argv);
  if (av) execv(av[0], av);
  fprintf(stderr, "fx_canary_start: exec %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

int fx_canary_start(fx_canary *c, const char *const *extra_args) {
  *c = (fx_canary){0};
  char *dir = fx_test_tmpdir();
  if (!dir) return -1;
  snprintf(c->dir, sizeof c->dir, "%s", dir);
  free(dir);
  char port_file[512];
  snprintf(port_file, sizeof port_file, "%s/port", c->dir);
  const char *argv[4 + MAX_EXTRA_ARGS] = {fx_canary_binary(), "--port-file", port_file};
  size_t argc = 3;
  for (size_t i = 0; extra_args && extra_args[i] && i < MAX_EXTRA_ARGS; i++)
    argv[argc++] = extra_args[i];
  argv[argc] = NULL;
  c->pid = spawn(argv);
  if (c->pid < 0) {
    fprintf(stderr, "fx_canary_start: fork: %s\n", strerror(errno));
    c->pid = 0;
    goto fail;
  }
  for (int waited = 0; waited < START_TIMEOUT_MS; waited += 10) {
    char *text = fx_test_read_file(port_file, NULL);
    long port = text ? strtol(text, NULL, 10) : 0;
    free(text);
    if (port > 0 && port < 65536) {
      c->port = (int)port;
      snprintf(c->url, sizeof c->url, "http://127.0.0.1:%d", c->port);
      return 0;
    }
    int status;
    if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
      fprintf(stderr, "fx_canary_start: fhirx-canary exited before listening\n");
      c->pid = 0;
      goto fail;
    }
    fx_test_sleep_ms(10);
  }
  fprintf(stderr, "fx_canary_start: no port file after %d ms\n", START_TIMEOUT_MS);
fail:
  fx_canary_stop(c);
  return -1;
}

int fx_canary_stop_status(fx_canary *c) {
  int status = -1;
  if (c->pid > 0) {
    kill(c->pid, SIGTERM);
    status = fx_test__wait_child(c->pid, STOP_TIMEOUT_MS);
    if (status < 0) {
      fprintf(stderr, "fx_canary_stop: fhirx-canary ignored SIGTERM; killing it\n");
      kill(c->pid, SIGKILL);
      waitpid(c->pid, NULL, 0);
      status = 128 + SIGKILL;
    }
  }
  if (c->dir[0]) fx_test_rmtree(c->dir);
  *c = (fx_canary){0};
  return status;
}

void fx_canary_stop(fx_canary *c) { (void)fx_canary_stop_status(c); }

json_t *fx_canary_requests(const fx_canary *c) {
  char url[256];
  snprintf(url, sizeof url, "%s/_canary/requests", c->url);
  fxt_http_resp r;
  json_t *doc = NULL;
  if (fxt_http("GET", url, NULL, NULL, &r) == 0 && r.status == 200)
    doc = json_loadb(r.body, r.body_len, 0, NULL);
  if (!doc) fprintf(stderr, "fx_canary_requests: GET %s answered %ld\n", url, r.status);
  fxt_http_resp_free(&r);
  return doc;
}

long fx_canary_count(const fx_canary *c, const char *name) {
  json_t *doc = fx_canary_requests(c);
  const json_t *v = json_object_get(doc, name);
  long n = json_is_integer(v) ? (long)json_integer_value(v) : -1;
  json_decref(doc);
  return n;
}

int fx_canary_reset(const fx_canary *c) {
  char url[256];
  snprintf(url, sizeof url, "%s/_canary/requests", c->url);
  fxt_http_resp r;
  int status = fxt_http("DELETE", url, NULL, NULL, &r) == 0 ? (int)r.status : -1;
  fxt_http_resp_free(&r);
  return status;
}
