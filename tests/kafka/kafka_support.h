/* Test helpers for Kafka: start/stop/drive fhirx-kafka-mock (a librdkafka
 * mock cluster in its own process, docs/embedded-kafka.md) and produce or
 * read messages synchronously.
 *
 * Every function reports failures with a line on stderr that says what
 * failed (so a failing test explains itself) and an error return; none
 * aborts. Not thread-safe: call from the test's main thread. Independent of
 * the other fhirx libraries. Every symbol starts with fxk_. */
#ifndef FXK_KAFKA_SUPPORT_H
#define FXK_KAFKA_SUPPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* librdkafka's handle type, so this header does not need rdkafka.h. */
struct rd_kafka_s;

/* ---- the mock cluster process ---- */

typedef struct fxk_cluster {
  pid_t pid;
  char bootstrap[512]; /* bootstrap.servers, e.g. "127.0.0.1:40001,127.0.0.1:40002,..." */
  char control[128];   /* control API base URL, "http://127.0.0.1:PORT" */
  char dir[256];       /* temp dir holding the files named below */
} fxk_cluster;

/* Files in fxk_cluster.dir that fhirx-kafka-mock writes (one line each) and
 * removes when it stops; scripts and other processes can read them. */
#define FXK_BOOTSTRAP_FILE "bootstrap"
#define FXK_CONTROL_FILE "control"

/* Path of the fhirx-kafka-mock binary: env FXK_MOCK_BIN, else the one built
 * with this library. Static or environment string. */
const char *fxk_mock_binary(void);

/* Spawns fhirx-kafka-mock with `brokers` brokers and the fhirx topics
 * pre-created with `partitions` partitions each, and waits up to 15 s for it
 * to write its bootstrap and control files. Env FXK_MOCK_VERBOSE=1 passes
 * --verbose (librdkafka mock debug on stderr). The mock gets SIGTERM if this
 * process dies. Returns 0, or -1 with a message on stderr (then nothing is
 * left running and the dir is removed). */
int fxk_start(fxk_cluster *c, int brokers, int partitions);
/* Same, with extra arguments for fhirx-kafka-mock (NULL-terminated, may be
 * NULL), e.g. {"--topics", "a,b", NULL}. */
int fxk_start_args(fxk_cluster *c, int brokers, int partitions, const char *const *extra_args);

/* SIGTERM, wait (SIGKILL after 15 s), remove the dir. Returns the mock's exit
 * status: 0 for a clean shutdown (under ASan, leaks make it non-zero), 128+N
 * if it died of signal N, -1 if there was nothing to stop. Safe on a zeroed
 * or already stopped fxk_cluster. */
int fxk_stop(fxk_cluster *c);

/* Sends `method` (GET, POST) to c->control + path with json_body (may be
 * NULL) as application/json. Returns the HTTP status, or -1 if the request
 * failed (message on stderr). */
int fxk_control(const fxk_cluster *c, const char *method, const char *path,
                const char *json_body);
/* Same, also handing back the response body: *response is a new
 * NUL-terminated string the caller frees (NULL when -1 is returned). */
int fxk_control_body(const fxk_cluster *c, const char *method, const char *path,
                     const char *json_body, char **response);

/* ---- producing ---- */

/* Extra librdkafka properties are passed as name, value, ..., NULL. */

typedef struct fxk_producer fxk_producer;

/* A producer for bootstrap with acks=all, linger.ms=5 and
 * message.timeout.ms=30000 (so a stuck delivery fails well inside a test's
 * timeout); `conf` (may be NULL) overrides any of them. Returns NULL with a
 * message on stderr. Owned by the caller: fxk_producer_free. */
fxk_producer *fxk_producer_new(const char *bootstrap, const char *const *conf);
/* Queues one message (copied) for `topic`; key and value may be NULL.
 * `headers` is name, value, ..., NULL (may be NULL). partition -1 lets the
 * partitioner choose (by key). Returns 0 or -1. */
int fxk_producer_send(fxk_producer *p, const char *topic, int32_t partition, const char *key,
                      const char *value, const char *const *headers);
/* Serves delivery reports for up to timeout_ms. Returns how many messages are
 * still in flight (0: every queued message has a delivery report). */
int fxk_producer_flush(fxk_producer *p, int timeout_ms);
/* Delivery reports seen so far: successes and failures. */
size_t fxk_producer_delivered(const fxk_producer *p);
size_t fxk_producer_failed(const fxk_producer *p);
/* The first delivery error seen, as rd_kafka_err2name() prints it, or NULL. */
const char *fxk_producer_first_error(const fxk_producer *p);
/* The underlying librdkafka handle (borrowed), for what the helpers lack. */
struct rd_kafka_s *fxk_producer_handle(fxk_producer *p);
/* Waits up to 10 s for messages in flight, then frees. NULL is fine. */
void fxk_producer_free(fxk_producer *p);

/* One message, synchronously: returns 0 once the cluster acknowledged it
 * (acks=all), -1 otherwise. */
int fxk_produce(const char *bootstrap, const char *topic, const char *key, const char *value,
                const char *const *headers);

/* ---- consuming ---- */

typedef struct fxk_header {
  char *name;
  char *value; /* NUL-terminated copy; NULL for a null header value */
  size_t value_len;
} fxk_header;

typedef struct fxk_msg {
  char *key; /* NUL-terminated copy, NULL when the message had no key */
  size_t key_len;
  char *value; /* NUL-terminated copy, NULL for a null value (tombstone) */
  size_t value_len;
  int32_t partition;
  int64_t offset;
  fxk_header *headers;
  size_t n_headers;
} fxk_msg;

/* Reads `topic` from the beginning of every partition (assign, no group
 * membership, nothing committed) until every partition has been read to its
 * end and at least expect_at_least messages were seen, or timeout_ms passed.
 * A topic that does not exist yet is waited for (unless expect_at_least is 0,
 * which then succeeds with nothing); reading never creates it. Messages are in the order they were
 * fetched: partitions interleave, offsets ascend within each partition.
 * Returns 0 on success, -1 on timeout or error (message on stderr). In both
 * cases *out and *n hold what was read: new memory the caller frees with
 * fxk_msgs_free(*out, *n). */
int fxk_consume_all(const char *bootstrap, const char *topic, int expect_at_least,
                    int timeout_ms, fxk_msg **out, size_t *n);
void fxk_msgs_free(fxk_msg *msgs, size_t n);
/* The value of the last header named `name` (borrowed), or NULL. */
const char *fxk_msg_header(const fxk_msg *m, const char *name);

#endif
