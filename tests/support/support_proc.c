/* Temporary files and child processes for tests. */
#include "fx_testsupport.h"
#include "support_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void fx_test__sbuf_append(fx_test__sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

char *fx_test__sbuf_take(fx_test__sbuf *b, size_t *len) {
  if (!b->data && !b->oom) fx_test__sbuf_append(b, "", 0);
  char *out = b->oom ? NULL : b->data;
  if (len) *len = out ? b->len : 0;
  if (!out) free(b->data);
  *b = (fx_test__sbuf){0};
  return out;
}

void fx_test_sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char **fx_test__argv_dup(const char *const *argv) {
  size_t n = 0;
  while (argv[n]) n++;
  char **out = calloc(n + 1, sizeof *out);
  for (size_t i = 0; out && i < n; i++)
    if (!(out[i] = strdup(argv[i]))) return NULL;
  return out;
}

static int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

int fx_test__wait_child(pid_t pid, int timeout_ms) {
  int64_t deadline = mono_ms() + timeout_ms;
  for (;;) {
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return decode_status(status);
    if (r < 0 && errno != EINTR) return -1;
    if (mono_ms() >= deadline) return -1;
    fx_test_sleep_ms(5);
  }
}

char *fx_test_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  char tmpl[4096];
  snprintf(tmpl, sizeof tmpl, "%s/fhirx-test-XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmpl)) {
    fprintf(stderr, "fx_test_tmpdir: mkdtemp %s: %s\n", tmpl, strerror(errno));
    return NULL;
  }
  return strdup(tmpl);
}

int fx_test_rmtree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
  if (!S_ISDIR(st.st_mode)) return unlink(path);
  DIR *d = opendir(path);
  if (!d) return -1;
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    char child[4096];
    snprintf(child, sizeof child, "%s/%s", path, e->d_name);
    if (fx_test_rmtree(child) != 0) rc = -1;
  }
  closedir(d);
  return rmdir(path) == 0 ? rc : -1;
}

int fx_test_write_file(const char *path, const char *content) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    fprintf(stderr, "fx_test_write_file: %s: %s\n", path, strerror(errno));
    return -1;
  }
  size_t len = strlen(content), off = 0;
  while (off < len) {
    ssize_t n = write(fd, content + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += (size_t)n;
  }
  int rc = close(fd) == 0 && off == len ? 0 : -1;
  if (rc) fprintf(stderr, "fx_test_write_file: %s: short write\n", path);
  return rc;
}

char *fx_test_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fx_test__sbuf b = {0};
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) fx_test__sbuf_append(&b, chunk, n);
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(b.data);
    return NULL;
  }
  return fx_test__sbuf_take(&b, len);
}

/* ---- fx_test_run ---- */

typedef struct pipes {
  int in[2], out[2], err[2];
} pipes;

static void close_pipes(pipes *p) {
  int *fds[] = {p->in, p->out, p->err};
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 2; j++)
      if (fds[i][j] >= 0) close(fds[i][j]), fds[i][j] = -1;
}

static void child_exec(const char *const *argv, pipes *p) {
  dup2(p->in[0], 0);
  dup2(p->out[1], 1);
  dup2(p->err[1], 2);
  close_pipes(p);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  char **av = fx_test__argv_dup(argv);
  if (av) execvp(av[0], av);
  fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

/* Feeds stdin and drains stdout/stderr until both close or the deadline. */
static int pump(pipes *p, const char *in, fx_test__sbuf *out, fx_test__sbuf *err,
                int64_t deadline) {
  size_t in_len = in ? strlen(in) : 0, in_off = 0;
  if (in_len == 0) close(p->in[1]), p->in[1] = -1;
  while (p->out[0] >= 0 || p->err[0] >= 0) {
    struct pollfd fds[3] = {{p->out[0], POLLIN, 0}, {p->err[0], POLLIN, 0}, {p->in[1], POLLOUT, 0}};
    int64_t left = deadline - mono_ms();
    if (left <= 0) return -1;
    if (poll(fds, 3, (int)left) < 0 && errno != EINTR) return -1;
    fx_test__sbuf *bufs[2] = {out, err};
    int *ends[2] = {&p->out[0], &p->err[0]};
    for (int i = 0; i < 2; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char chunk[4096];
      ssize_t n = read(*ends[i], chunk, sizeof chunk);
      if (n > 0) fx_test__sbuf_append(bufs[i], chunk, (size_t)n);
      else if (n == 0 || errno != EINTR) close(*ends[i]), *ends[i] = -1;
    }
    if (fds[2].revents & (POLLOUT | POLLERR | POLLHUP)) {
      ssize_t n = write(p->in[1], in + in_off, in_len - in_off);
      if (n > 0) in_off += (size_t)n;
      if (n < 0 || in_off == in_len) close(p->in[1]), p->in[1] = -1;
    }
  }
  return 0;
}

int fx_test_run(const char *const *argv, const char *stdin_text, int timeout_ms,
                fx_run_result *res) {
  *res = (fx_run_result){.exit_code = -1};
  pipes p = {{-1, -1}, {-1, -1}, {-1, -1}};
  if (pipe(p.in) || pipe(p.out) || pipe(p.err)) {
    fprintf(stderr, "fx_test_run: pipe: %s\n", strerror(errno));
    close_pipes(&p);
    return -1;
  }
  /* The write end of stdin must not kill the test when the child exits early. */
  void (*old)(int) = signal(SIGPIPE, SIG_IGN);
  pid_t pid = fork();
  if (pid == 0) child_exec(argv, &p);
  close(p.in[0]), p.in[0] = -1;
  close(p.out[1]), p.out[1] = -1;
  close(p.err[1]), p.err[1] = -1;
  fx_test__sbuf out = {0}, err = {0};
  int64_t deadline = mono_ms() + timeout_ms;
  int rc = pid > 0 ? pump(&p, stdin_text, &out, &err, deadline) : -1;
  close_pipes(&p);
  if (pid > 0) {
    int64_t left = deadline - mono_ms();
    res->exit_code = rc == 0 ? fx_test__wait_child(pid, left > 0 ? (int)left : 0) : -1;
    if (res->exit_code < 0) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      fprintf(stderr, "fx_test_run: %s timed out after %d ms\n", argv[0], timeout_ms);
    }
  }
  signal(SIGPIPE, old);
  res->out = fx_test__sbuf_take(&out, NULL);
  res->err = fx_test__sbuf_take(&err, NULL);
  return res->exit_code >= 0 ? 0 : -1;
}

void fx_run_result_free(fx_run_result *r) {
  free(r->out);
  free(r->err);
  *r = (fx_run_result){.exit_code = -1};
}
