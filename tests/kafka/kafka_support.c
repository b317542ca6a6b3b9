#include "tests/kafka/kafka_support.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#ifndef FXK_MOCK_BIN
#error "FXK_MOCK_BIN must name the fhirx-kafka-mock binary (set by tests/kafka/CMakeLists.txt)"
#endif

#define START_TIMEOUT_MS 15000
#define STOP_TIMEOUT_MS 15000
#define CONTROL_TIMEOUT_MS 30000
#define MAX_MOCK_ARGS 64

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ==== the mock cluster process ==== */

const char *fxk_mock_binary(void) {
  const char *env = getenv("FXK_MOCK_BIN");
  return env && *env ? env : FXK_MOCK_BIN;
}

static void remove_dir(const char *dir) {
  if (!dir[0]) return;
  DIR *d = opendir(dir);
  if (d) {
    /* Only flat files live here: the two the mock writes and, if it was
     * killed mid-write, their .tmp siblings. */
    for (struct dirent *e; (e = readdir(d));) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char path[512];
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      unlink(path);
    }
    closedir(d);
  }
  rmdir(dir);
}

/* Reads the first line of dir/name into buf. 0 if the file exists and holds
 * a line, -1 otherwise (it is written by rename, so never partially). */
static int read_line_file(const char *dir, const char *name, char *buf, size_t len) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char *line = fgets(buf, (int)len, f);
  fclose(f);
  if (!line) return -1;
  buf[strcspn(buf, "\r\n")] = '\0';
  return buf[0] ? 0 : -1;
}

/* A waitpid status as fxk_stop reports it: the exit code, or 128 + signal. */
static int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

/* Runs in the forked child before exec: only async-signal-safe calls, since
 * the test process may have librdkafka threads whose locks were copied mid-
 * use. */
static void exec_child(const char *bin, char *const *argv, pid_t parent) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
#ifdef __linux__
  /* A test that crashes or is killed by ctest's timeout must not leave a
   * cluster running. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(127);
#else
  (void)parent;
#endif
  execv(bin, argv);
  static const char msg[] = "fxk: exec of fhirx-kafka-mock failed\n";
  (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
  _exit(127);
}

/* execv's argv is char *const[] for historical reasons; it does not write
 * to the strings. */
static char *exec_arg(const char *s) { return (char *)(uintptr_t)s; }

/* Builds the argument vector. Strings point into `store` or the caller's
 * arrays; everything is prepared before fork(). */
static int build_argv(const fxk_cluster *c, int brokers, int partitions,
                      const char *const *extra, char store[4][512], char **argv) {
  size_t n = 0;
  snprintf(store[0], 512, "%d", brokers);
  snprintf(store[1], 512, "%d", partitions);
  snprintf(store[2], 512, "%s/%s", c->dir, FXK_BOOTSTRAP_FILE);
  snprintf(store[3], 512, "%s/%s", c->dir, FXK_CONTROL_FILE);
  argv[n++] = exec_arg(fxk_mock_binary());
  argv[n++] = "--brokers";
  argv[n++] = store[0];
  argv[n++] = "--partitions";
  argv[n++] = store[1];
  argv[n++] = "--bootstrap-file";
  argv[n++] = store[2];
  argv[n++] = "--control-file";
  argv[n++] = store[3];
  const char *verbose = getenv("FXK_MOCK_VERBOSE");
  if (verbose && *verbose && strcmp(verbose, "0") != 0) argv[n++] = "--verbose";
  for (size_t i = 0; extra && extra[i]; i++) {
    if (n + 1 >= MAX_MOCK_ARGS) {
      fprintf(stderr, "fxk_start: too many extra arguments\n");
      return -1;
    }
    argv[n++] = exec_arg(extra[i]);
  }
  argv[n] = NULL;
  return 0;
}

/* Polls for the control file (written last) while watching the child. */
static int wait_ready(fxk_cluster *c) {
  int64_t deadline = now_ms() + START_TIMEOUT_MS;
  while (now_ms() < deadline) {
    int status;
    if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
      fprintf(stderr, "fxk_start: fhirx-kafka-mock exited with status %d before it was ready "
                      "(its stderr is above)\n",
              exit_code(status));
      c->pid = 0;
      return -1;
    }
    if (read_line_file(c->dir, FXK_CONTROL_FILE, c->control, sizeof c->control) == 0 &&
        read_line_file(c->dir, FXK_BOOTSTRAP_FILE, c->bootstrap, sizeof c->bootstrap) == 0)
      return 0;
    sleep_ms(20);
  }
  fprintf(stderr, "fxk_start: fhirx-kafka-mock wrote no %s/%s within %d ms\n", c->dir,
          FXK_CONTROL_FILE, START_TIMEOUT_MS);
  return -1;
}

int fxk_start_args(fxk_cluster *c, int brokers, int partitions, const char *const *extra_args) {
  char store[4][512];
  char *argv[MAX_MOCK_ARGS];
  *c = (fxk_cluster){0};
  const char *tmp = getenv("TMPDIR");
  int len = snprintf(c->dir, sizeof c->dir, "%s/fxk-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (len < 0 || (size_t)len >= sizeof c->dir) {
    fprintf(stderr, "fxk_start: TMPDIR is too long for a %zu-byte path\n", sizeof c->dir);
    c->dir[0] = '\0';
    return -1;
  }
  if (!mkdtemp(c->dir)) {
    fprintf(stderr, "fxk_start: mkdtemp(%s): %s\n", c->dir, strerror(errno));
    c->dir[0] = '\0';
    return -1;
  }
  if (build_argv(c, brokers, partitions, extra_args, store, argv)) goto fail;
  const char *bin = argv[0];
  if (access(bin, X_OK) != 0) {
    fprintf(stderr, "fxk_start: %s is not executable (%s); build fhirx-kafka-mock or set "
                    "FXK_MOCK_BIN\n",
            bin, strerror(errno));
    goto fail;
  }
  pid_t parent = getpid();
  fflush(NULL); /* or the child would inherit, and may repeat, buffered output */
  c->pid = fork();
  if (c->pid < 0) {
    fprintf(stderr, "fxk_start: fork: %s\n", strerror(errno));
    c->pid = 0;
    goto fail;
  }
  if (c->pid == 0) exec_child(bin, argv, parent);
  if (wait_ready(c) == 0) return 0;

fail:
  fxk_stop(c);
  return -1;
}

int fxk_start(fxk_cluster *c, int brokers, int partitions) {
  return fxk_start_args(c, brokers, partitions, NULL);
}

/* Waits up to timeout_ms for pid; returns its fxk_stop status or -2 if it is
 * still running. */
static int wait_exit(pid_t pid, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  for (;;) {
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return exit_code(status);
    if (r < 0 && errno != EINTR) return -1;
    if (now_ms() >= deadline) return -2;
    sleep_ms(10);
  }
}

int fxk_stop(fxk_cluster *c) {
  int rc = -1;
  if (c->pid > 0) {
    kill(c->pid, SIGTERM);
    rc = wait_exit(c->pid, STOP_TIMEOUT_MS);
    if (rc == -2) {
      fprintf(stderr, "fxk_stop: fhirx-kafka-mock (pid %ld) ignored SIGTERM for %d ms; killing "
                      "it\n",
              (long)c->pid, STOP_TIMEOUT_MS);
      kill(c->pid, SIGKILL);
      rc = wait_exit(c->pid, STOP_TIMEOUT_MS);
    }
    if (rc != 0)
      fprintf(stderr, "fxk_stop: fhirx-kafka-mock exited with status %d (0 is clean)\n", rc);
  }
  remove_dir(c->dir);
  *c = (fxk_cluster){0};
  return rc;
}

/* ==== the control API ==== */

typedef struct buffer {
  char *data;
  size_t len;
  bool oom;
} buffer;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
  buffer *b = userdata;
  size_t n = size * nmemb;
  char *grown = realloc(b->data, b->len + n + 1);
  if (!grown) {
    b->oom = true;
    return 0; /* makes curl fail the transfer */
  }
  memcpy(grown + b->len, ptr, n);
  b->len += n;
  grown[b->len] = '\0';
  b->data = grown;
  return n;
}

int fxk_control_body(const fxk_cluster *c, const char *method, const char *path,
                     const char *json_body, char **response) {
  char url[512];
  char errbuf[CURL_ERROR_SIZE] = "";
  buffer body = {0};
  long status = -1;
  if (response) *response = NULL;
  snprintf(url, sizeof url, "%s%s", c->control, path);
  CURL *curl = curl_easy_init();
  struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  if (!curl || !hdrs) {
    fprintf(stderr, "fxk_control: out of memory\n");
    goto out;
  }
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)CONTROL_TIMEOUT_MS);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  if (json_body) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, json_body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(json_body));
  }
  CURLcode rc = curl_easy_perform(curl);
  if (rc != CURLE_OK) {
    fprintf(stderr, "fxk_control: %s %s: %s\n", method, url, errbuf[0] ? errbuf
                                                                       : curl_easy_strerror(rc));
    goto out;
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  if (response) {
    *response = body.data ? body.data : strdup("");
    body.data = NULL;
  }

out:
  free(body.data);
  curl_slist_free_all(hdrs);
  if (curl) curl_easy_cleanup(curl);
  return (int)status;
}

int fxk_control(const fxk_cluster *c, const char *method, const char *path,
                const char *json_body) {
  return fxk_control_body(c, method, path, json_body, NULL);
}

/* ==== librdkafka helpers ==== */

/* Applies name/value pairs; a rejected property is a test bug, so it is
 * reported with librdkafka's reason. */
static int apply_conf(rd_kafka_conf_t *conf, const char *const *pairs, const char *who) {
  char why[512];
  for (size_t i = 0; pairs && pairs[i]; i += 2) {
    if (!pairs[i + 1]) {
      fprintf(stderr, "%s: property %s has no value (pairs must be name, value, ..., NULL)\n",
              who, pairs[i]);
      return -1;
    }
    if (rd_kafka_conf_set(conf, pairs[i], pairs[i + 1], why, sizeof why) != RD_KAFKA_CONF_OK) {
      fprintf(stderr, "%s: %s=%s: %s\n", who, pairs[i], pairs[i + 1], why);
      return -1;
    }
  }
  return 0;
}

static rd_kafka_t *new_client(rd_kafka_type_t type, rd_kafka_conf_t *conf, const char *who) {
  char why[512];
  rd_kafka_t *rk = rd_kafka_new(type, conf, why, sizeof why);
  if (!rk) {
    fprintf(stderr, "%s: rd_kafka_new: %s\n", who, why);
    rd_kafka_conf_destroy(conf); /* only taken over on success */
  }
  return rk;
}

/* ==== producing ==== */

struct fxk_producer {
  rd_kafka_t *rk;
  size_t sent;
  size_t delivered;
  size_t failed;
  char first_error[128];
};

/* Runs inside rd_kafka_poll/flush on the caller's thread. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  fxk_producer *p = opaque;
  if (!m->err) {
    p->delivered++;
    return;
  }
  p->failed++;
  if (!p->first_error[0]) {
    snprintf(p->first_error, sizeof p->first_error, "%s", rd_kafka_err2name(m->err));
    fprintf(stderr, "fxk_producer: delivery to %s failed: %s\n", rd_kafka_topic_name(m->rkt),
            rd_kafka_err2str(m->err));
  }
}

fxk_producer *fxk_producer_new(const char *bootstrap, const char *const *conf_pairs) {
  const char *const defaults[] = {"bootstrap.servers", bootstrap, "acks", "all", "linger.ms", "5",
                                  "message.timeout.ms", "30000", NULL};
  fxk_producer *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (apply_conf(conf, defaults, "fxk_producer_new") ||
      apply_conf(conf, conf_pairs, "fxk_producer_new")) {
    rd_kafka_conf_destroy(conf);
    free(p);
    return NULL;
  }
  rd_kafka_conf_set_opaque(conf, p);
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  p->rk = new_client(RD_KAFKA_PRODUCER, conf, "fxk_producer_new");
  if (!p->rk) {
    free(p);
    return NULL;
  }
  return p;
}

static rd_kafka_headers_t *make_headers(const char *const *pairs) {
  size_t n = 0;
  while (pairs && pairs[n]) n++;
  if (n % 2) {
    fprintf(stderr, "fxk_producer_send: headers must be name, value, ..., NULL\n");
    return NULL;
  }
  rd_kafka_headers_t *hdrs = rd_kafka_headers_new(n / 2);
  for (size_t i = 0; i < n; i += 2)
    rd_kafka_header_add(hdrs, pairs[i], -1, pairs[i + 1], -1);
  return hdrs;
}

int fxk_producer_send(fxk_producer *p, const char *topic, int32_t partition, const char *key,
                      const char *value, const char *const *headers) {
  rd_kafka_headers_t *hdrs = make_headers(headers);
  if (!hdrs) return -1;
  /* The local queue only fills if a test outpaces a stalled cluster; give
   * delivery reports a moment rather than failing at once. */
  for (int attempt = 0;; attempt++) {
    rd_kafka_resp_err_t err = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
        RD_KAFKA_V_VALUE((void *)(uintptr_t)value, value ? strlen(value) : 0),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
    if (!err) break; /* hdrs now belongs to the message */
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && attempt < 100) {
      rd_kafka_poll(p->rk, 100);
      continue;
    }
    fprintf(stderr, "fxk_producer_send: %s: %s\n", topic, rd_kafka_err2str(err));
    rd_kafka_headers_destroy(hdrs);
    return -1;
  }
  p->sent++;
  rd_kafka_poll(p->rk, 0);
  return 0;
}

int fxk_producer_flush(fxk_producer *p, int timeout_ms) {
  rd_kafka_flush(p->rk, timeout_ms);
  return (int)(p->sent - p->delivered - p->failed);
}

size_t fxk_producer_delivered(const fxk_producer *p) { return p->delivered; }
size_t fxk_producer_failed(const fxk_producer *p) { return p->failed; }

const char *fxk_producer_first_error(const fxk_producer *p) {
  return p->first_error[0] ? p->first_error : NULL;
}

struct rd_kafka_s *fxk_producer_handle(fxk_producer *p) { return p->rk; }

void fxk_producer_free(fxk_producer *p) {
  if (!p) return;
  if (fxk_producer_flush(p, 10000) > 0) {
    /* Whatever is still queued (e.g. its leader is down) is dropped so the
     * destroy below cannot hang; the purge produces failed delivery
     * reports, served by the final poll. */
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(p->rk, 0);
  }
  rd_kafka_destroy(p->rk);
  free(p);
}

int fxk_produce(const char *bootstrap, const char *topic, const char *key, const char *value,
                const char *const *headers) {
  fxk_producer *p = fxk_producer_new(bootstrap, NULL);
  if (!p) return -1;
  int rc = fxk_producer_send(p, topic, -1, key, value, headers);
  if (rc == 0 && (fxk_producer_flush(p, 30000) != 0 || p->delivered != 1)) {
    fprintf(stderr, "fxk_produce: message to %s not acknowledged: %s\n", topic,
            p->first_error[0] ? p->first_error : "timed out");
    rc = -1;
  }
  fxk_producer_free(p);
  return rc;
}

/* ==== consuming ==== */

typedef struct msg_list {
  fxk_msg *items;
  size_t n;
  size_t cap;
} msg_list;

/* A NUL-terminated copy of len bytes; NULL data stays NULL. */
static int copy_bytes(const void *data, size_t len, char **out) {
  *out = NULL;
  if (!data) return 0;
  *out = malloc(len + 1);
  if (!*out) return -1;
  memcpy(*out, data, len);
  (*out)[len] = '\0';
  return 0;
}

static int copy_headers(const rd_kafka_message_t *m, fxk_msg *dst) {
  rd_kafka_headers_t *hdrs;
  if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR) return 0;
  size_t n = rd_kafka_header_cnt(hdrs);
  if (n == 0) return 0;
  dst->headers = calloc(n, sizeof *dst->headers);
  if (!dst->headers) return -1;
  for (size_t i = 0; i < n; i++) {
    const char *name;
    const void *value;
    size_t size;
    if (rd_kafka_header_get_all(hdrs, i, &name, &value, &size)) break;
    fxk_header *h = &dst->headers[dst->n_headers++];
    h->value_len = value ? size : 0;
    h->name = strdup(name);
    if (!h->name || copy_bytes(value, size, &h->value)) return -1;
  }
  return 0;
}

static int append_msg(msg_list *l, const rd_kafka_message_t *m) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    fxk_msg *grown = realloc(l->items, cap * sizeof *grown);
    if (!grown) return -1;
    l->items = grown;
    l->cap = cap;
  }
  fxk_msg *dst = &l->items[l->n++];
  *dst = (fxk_msg){.partition = m->partition, .offset = m->offset};
  dst->key_len = m->key ? m->key_len : 0;
  dst->value_len = m->payload ? m->len : 0;
  /* Counted in n even if a copy fails part way, so fxk_msgs_free frees it. */
  if (copy_bytes(m->key, m->key_len, &dst->key) || copy_bytes(m->payload, m->len, &dst->value) ||
      copy_headers(m, dst))
    return -1;
  return 0;
}

void fxk_msgs_free(fxk_msg *msgs, size_t n) {
  for (size_t i = 0; msgs && i < n; i++) {
    for (size_t h = 0; h < msgs[i].n_headers; h++) {
      free(msgs[i].headers[h].name);
      free(msgs[i].headers[h].value);
    }
    free(msgs[i].headers);
    free(msgs[i].key);
    free(msgs[i].value);
  }
  free(msgs);
}

const char *fxk_msg_header(const fxk_msg *m, const char *name) {
  const char *found = NULL;
  for (size_t i = 0; i < m->n_headers; i++)
    if (strcmp(m->headers[i].name, name) == 0) found = m->headers[i].value;
  return found;
}

/* A consumer that only ever assigns: group.id is required by librdkafka's
 * consumer API, but without subscribe() it never joins the group, and
 * nothing is committed. Partition EOF events tell when a partition has been
 * read to its end. The mock answers an empty fetch only after
 * fetch.wait.max.ms (it does not wake waiting fetches on produce), so that is
 * kept short. */
static rd_kafka_t *new_reader(const char *bootstrap) {
  static unsigned seq;
  char group[96];
  snprintf(group, sizeof group, "fxk-consume-all-%ld-%u-%lld", (long)getpid(), ++seq,
           (long long)now_ms());
  const char *const pairs[] = {"bootstrap.servers", bootstrap, "group.id", group,
                               "enable.auto.commit", "false", "enable.partition.eof", "true",
                               "auto.offset.reset", "earliest", "fetch.wait.max.ms", "100",
                               NULL};
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (apply_conf(conf, pairs, "fxk_consume_all")) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  return new_client(RD_KAFKA_CONSUMER, conf, "fxk_consume_all");
}

/* Partition count of `topic` from a metadata request for all topics, 0 if
 * it does not exist, -1 on error. All topics, because the mock creates any
 * topic a metadata request names (it speaks only Metadata versions that
 * cannot say "do not auto-create"), and reading must not create. */
static int partition_count_once(rd_kafka_t *rk, const char *topic, int timeout_ms,
                                rd_kafka_resp_err_t *err) {
  const rd_kafka_metadata_t *md = NULL;
  *err = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms);
  if (*err) return -1;
  int count = 0;
  for (int i = 0; i < md->topic_cnt; i++)
    if (strcmp(md->topics[i].topic, topic) == 0 && !md->topics[i].err)
      count = md->topics[i].partition_cnt;
  rd_kafka_metadata_destroy(md);
  return count;
}

/* The topic's partition count; when wait is true, waits (until deadline)
 * for the topic to exist. Returns 0 when it does not exist and wait is
 * false, -1 on timeout or error. */
static int partition_count(rd_kafka_t *rk, const char *topic, bool wait, int64_t deadline) {
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) break;
    int count = partition_count_once(rk, topic, (int)(left < 2000 ? left : 2000), &err);
    if (count > 0 || (count == 0 && !wait)) return count;
    if (count == 0) err = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    sleep_ms(100);
  }
  fprintf(stderr, "fxk_consume_all: no partitions for topic %s: %s\n", topic,
          rd_kafka_err2name(err));
  return -1;
}

static int assign_all(rd_kafka_t *rk, const char *topic, int partitions) {
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(partitions);
  for (int i = 0; i < partitions; i++)
    rd_kafka_topic_partition_list_add(parts, topic, i)->offset = RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_resp_err_t err = rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  if (err) fprintf(stderr, "fxk_consume_all: assign %s: %s\n", topic, rd_kafka_err2str(err));
  return err ? -1 : 0;
}

static bool all_true(const bool *v, int n) {
  for (int i = 0; i < n; i++)
    if (!v[i]) return false;
  return true;
}

/* Polls until every partition is at its end with enough messages read. */
static int read_to_end(rd_kafka_t *rk, int partitions, size_t expect, int64_t deadline,
                       msg_list *l) {
  bool *at_end = calloc((size_t)partitions, sizeof *at_end);
  int rc = -1;
  while (at_end && now_ms() < deadline) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
    if (!m) continue;
    bool in_range = m->partition >= 0 && m->partition < partitions;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      if (in_range) at_end[m->partition] = true;
    } else if (m->err) {
      /* Broker transport errors are retried by librdkafka; say what happened
       * in case the test then times out. */
      fprintf(stderr, "fxk_consume_all: consumer error (continuing): %s\n",
              rd_kafka_message_errstr(m));
    } else {
      if (in_range) at_end[m->partition] = false;
      if (append_msg(l, m)) {
        fprintf(stderr, "fxk_consume_all: out of memory\n");
        rd_kafka_message_destroy(m);
        break;
      }
    }
    rd_kafka_message_destroy(m);
    if (all_true(at_end, partitions) && l->n >= expect) {
      rc = 0;
      break;
    }
  }
  free(at_end);
  return rc;
}

int fxk_consume_all(const char *bootstrap, const char *topic, int expect_at_least,
                    int timeout_ms, fxk_msg **out, size_t *n) {
  msg_list l = {0};
  int rc = -1;
  int64_t deadline = now_ms() + timeout_ms;
  size_t expect = expect_at_least > 0 ? (size_t)expect_at_least : 0;
  rd_kafka_t *rk = new_reader(bootstrap);
  if (!rk) goto out;
  int partitions = partition_count(rk, topic, expect > 0, deadline);
  if (partitions == 0) rc = 0; /* no topic and nothing expected */
  if (partitions <= 0 || assign_all(rk, topic, partitions)) goto out;
  rc = read_to_end(rk, partitions, expect, deadline, &l);
  if (rc)
    fprintf(stderr, "fxk_consume_all: %s: read %zu of at least %zu messages in %d ms\n", topic,
            l.n, expect, timeout_ms);

out:
  if (rk) {
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
  }
  *out = l.items;
  *n = l.n;
  return rc;
}
