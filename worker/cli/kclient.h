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
/* Queues one message (copied); waits while the local queue is full. Takes
 * headers (they are freed on failure too). */
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

/* Like fx_kread_all, but from the offsets in `from` (topic, partition,
 * offset; partitions not listed are not read; an offset below the low
 * watermark or RD_KAFKA_OFFSET_INVALID/BEGINNING starts at the low
 * watermark). NULL from reads every partition from the beginning. fn returns
 * nonzero to stop early. timeout_ms bounds the metadata requests and any
 * wait without progress. */
typedef int (*fx_kscan_fn)(const rd_kafka_message_t *m, void *arg);
int fx_kscan(const fx_config *cfg, const char *topic, const rd_kafka_topic_partition_list_t *from,
             fx_kscan_fn fn, void *arg, int timeout_ms, fx_err *err);

/* The high watermark (the offset the next message will get) of every
 * partition of topic, asked through any client rk: a new list in *out,
 * sorted by partition (rd_kafka_topic_partition_list_destroy). */
int fx_kwatermarks(rd_kafka_t *rk, const char *topic, int timeout_ms,
                   rd_kafka_topic_partition_list_t **out, fx_err *err);

/* The offsets (and commit metadata) group committed on every partition of
 * topic, asked without joining the group: a new list in *out, offset
 * RD_KAFKA_OFFSET_INVALID where nothing is committed. */
int fx_kcommitted(const fx_config *cfg, const char *group, const char *topic, int timeout_ms,
                  rd_kafka_topic_partition_list_t **out, fx_err *err);

/* The value of header name (the last one when repeated) as a new
 * NUL-terminated string, or NULL. */
char *fx_kheader(const rd_kafka_message_t *m, const char *name);

#endif
