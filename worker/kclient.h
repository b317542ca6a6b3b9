/* Plain, blocking Kafka clients for the command-line tools (enqueue,
 * report, replay). They run no event loop, so waiting is fine here. */
#ifndef FX_KCLIENT_H
#define FX_KCLIENT_H

#include <librdkafka/rdkafka.h>

#include "common/config.h"
#include "common/err.h"

typedef struct fx_kproducer {
  rd_kafka_t *rk;
  unsigned long delivered, failed;
  char first_error[256];
} fx_kproducer;

int fx_kproducer_open(fx_kproducer *kp, const fx_config *cfg, fx_err *err);
/* Queues one message (copied); waits while the local queue is full. */
int fx_kproducer_send(fx_kproducer *kp, const char *topic, const char *key, const char *value,
                      size_t len, rd_kafka_headers_t *headers, fx_err *err);
/* Waits up to timeout_ms for every delivery report; returns the number still
 * undelivered (0 = all acknowledged). */
int fx_kproducer_flush(fx_kproducer *kp, int timeout_ms);
void fx_kproducer_close(fx_kproducer *kp);

/* Reads every message of topic from the beginning up to the high watermarks
 * taken at the start (without a consumer group, committing nothing), calling
 * fn for each. Returns 0 or an error. */
typedef void (*fx_kread_fn)(const rd_kafka_message_t *m, void *arg);
int fx_kread_all(const fx_config *cfg, const char *topic, fx_kread_fn fn, void *arg,
                 int timeout_ms, fx_err *err);

#endif
