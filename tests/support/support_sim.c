/* Starting, stopping and querying cerner-sim from tests. */
#include "fx_testsupport.h"
#include "support_internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FX_SIM_BIN
#error "FX_SIM_BIN must be defined by the build (path of the cerner-sim binary)"
#endif

#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 10000
#define MAX_EXTRA_ARGS 32

const char *fx_sim_binary(void) {
  const char *env = getenv("FX_SIM_BIN");
  return env && *env ? env : FX_SIM_BIN;
}

static pid_t spawn(const char *const *argv) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0) return pid;
  /* If the test dies (crash, failed assertion that skips fx_sim_stop, ctest
   * timeout) the kernel sends the simulator SIGTERM, so no orphaned
   * simulators pile up. Checked again after prctl for the race where the
   * parent died before it took effect. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);
  /* The child starts with default signal handling whatever the test runner
   * set up, so SIGTERM always reaches the simulator's sigwait. */
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  char **av = fx_test__argv_dup(argv);
  if (av) execv(av[0], av);
  fprintf(stderr, "fx_sim_start: exec %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

/* Polls for the port file while checking that the child is still alive. */
static int wait_for_port(fx_sim *s, const char *port_file) {
  for (int waited = 0; waited < START_TIMEOUT_MS; waited += 10) {
    char *text = fx_test_read_file(port_file, NULL);
    long port = text ? strtol(text, NULL, 10) : 0;
    free(text);
    if (port > 0 && port < 65536) {
      s->port = (int)port;
      return 0;
    }
    int status;
    if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
      fprintf(stderr, "fx_sim_start: cerner-sim exited before listening (status %d)\n",
              WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
      s->pid = 0;
      return -1;
    }
    fx_test_sleep_ms(10);
  }
  fprintf(stderr, "fx_sim_start: no port file after %d ms\n", START_TIMEOUT_MS);
  return -1;
}

int fx_sim_start_args(fx_sim *s, const char *config_json, const char *const *extra_args) {
  *s = (fx_sim){0};
  char *dir = fx_test_tmpdir();
  if (!dir) return -1;
  snprintf(s->dir, sizeof s->dir, "%s", dir);
  free(dir);
  char config[512], port_file[512];
  snprintf(config, sizeof config, "%s/config.json", s->dir);
  snprintf(port_file, sizeof port_file, "%s/port", s->dir);
  if (fx_test_write_file(config, config_json) != 0) goto fail;

  const char *argv[8 + MAX_EXTRA_ARGS] = {fx_sim_binary(), "--config", config, "--port", "0",
                                          "--port-file", port_file};
  size_t argc = 7;
  for (size_t i = 0; extra_args && extra_args[i] && i < MAX_EXTRA_ARGS; i++)
    argv[argc++] = extra_args[i];
  argv[argc] = NULL;
  s->pid = spawn(argv);
  if (s->pid < 0) {
    fprintf(stderr, "fx_sim_start: fork: %s\n", strerror(errno));
    s->pid = 0;
    goto fail;
  }
  if (wait_for_port(s, port_file) != 0) goto fail;
  snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
  return 0;
fail:
  fx_sim_stop(s);
  return -1;
}

int fx_sim_start(fx_sim *s, const char *config_json) {
  return fx_sim_start_args(s, config_json, NULL);
}

int fx_sim_stop_status(fx_sim *s) {
  int status = -1;
  if (s->pid > 0) {
    kill(s->pid, SIGTERM);
    status = fx_test__wait_child(s->pid, STOP_TIMEOUT_MS);
    if (status < 0) {
      fprintf(stderr, "fx_sim_stop: cerner-sim ignored SIGTERM for %d ms; killing it\n",
              STOP_TIMEOUT_MS);
      kill(s->pid, SIGKILL);
      waitpid(s->pid, NULL, 0);
      status = 128 + SIGKILL;
    }
  }
  if (s->dir[0]) fx_test_rmtree(s->dir);
  *s = (fx_sim){0};
  return status;
}

void fx_sim_stop(fx_sim *s) { (void)fx_sim_stop_status(s); }

static int request(const fx_sim *s, const char *method, const char *path, const char *body,
                   fxt_http_resp *r) {
  char url[1024];
  snprintf(url, sizeof url, "%s%s", s->url, path);
  static const char *const json_headers[] = {"Content-Type: application/json", NULL};
  return fxt_http(method, url, body ? json_headers : NULL, body, r);
}

json_t *fx_sim_get_json(const fx_sim *s, const char *path) {
  fxt_http_resp r;
  json_t *doc = NULL;
  if (request(s, "GET", path, NULL, &r) == 0 && r.status >= 200 && r.status < 300) {
    json_error_t e;
    doc = json_loadb(r.body, r.body_len, 0, &e);
    if (!doc) fprintf(stderr, "fx_sim_get_json: %s: %s\n", path, e.text);
  } else {
    fprintf(stderr, "fx_sim_get_json: GET %s answered %ld\n", path, r.status);
  }
  fxt_http_resp_free(&r);
  return doc;
}

int fx_sim_post_json(const fx_sim *s, const char *path, const char *body) {
  fxt_http_resp r;
  int status = request(s, "POST", path, body, &r) == 0 ? (int)r.status : -1;
  if (status >= 400) fprintf(stderr, "fx_sim_post_json: POST %s: %ld %s\n", path, r.status, r.body);
  fxt_http_resp_free(&r);
  return status;
}

int fx_sim_delete(const fx_sim *s, const char *path) {
  fxt_http_resp r;
  int status = request(s, "DELETE", path, NULL, &r) == 0 ? (int)r.status : -1;
  fxt_http_resp_free(&r);
  return status;
}

long fx_sim_counter(const fx_sim *s, const char *tenant, const char *name) {
  json_t *all = fx_sim_get_json(s, "/_sim/counters");
  const json_t *t = json_object_get(json_object_get(all, "tenants"), tenant);
  const char *dot = strchr(name, '.');
  char top[128];
  snprintf(top, sizeof top, "%.*s", (int)(dot ? (size_t)(dot - name) : strlen(name)), name);
  const json_t *v = json_object_get(t, top);
  long out = -1;
  if (dot && json_is_object(v)) {
    const json_t *e = json_object_get(v, dot + 1);
    out = e ? (long)json_integer_value(e) : 0;
  } else if (!dot && json_is_integer(v)) {
    out = (long)json_integer_value(v);
  }
  json_decref(all);
  return out;
}

/* Appends "?name=value" or "&name=value" (value percent-encoded) when value is set. */
static void add_param(char *url, size_t n, const char *name, const char *value) {
  if (!value) return;
  char *esc = curl_easy_escape(NULL, value, 0);
  size_t len = strlen(url);
  snprintf(url + len, n - len, "%c%s=%s", strchr(url, '?') ? '&' : '?', name, esc ? esc : "");
  curl_free(esc);
}

json_t *fx_sim_expected(const fx_sim *s, const char *tenant, const char *patient,
                        const char *types, const char *since) {
  char path[4096];
  snprintf(path, sizeof path, "/_sim/tenants/%s/expected", tenant);
  add_param(path, sizeof path, "patient", patient);
  add_param(path, sizeof path, "types", types);
  add_param(path, sizeof path, "since", since);
  return fx_sim_get_json(s, path);
}

long fx_sim_reads(const fx_sim *s, const char *tenant, const char *path) {
  char url[512];
  snprintf(url, sizeof url, "/_sim/tenants/%s/reads", tenant);
  json_t *all = fx_sim_get_json(s, url);
  const json_t *v = json_object_get(all, path);
  long out = all ? (v ? (long)json_integer_value(v) : 0) : -1;
  json_decref(all);
  return out;
}
