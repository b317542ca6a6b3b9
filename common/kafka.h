/* Kafka glue: librdkafka queues bridged into libuv loops, and client
 * configuration built from the config's kafka section.
 *
 * Bridging: librdkafka writes a byte to a pipe when a queue goes from empty
 * to non-empty (rd_kafka_queue_io_event_enable); a uv_poll_t watches the
 * pipe and calls the owner, which must poll the queue with timeout 0 until it
 * is empty, or call fx_kqueue_kick() to be called again on the next loop
 * iteration (no new byte arrives while the queue stays non-empty). Nothing
 * ever waits inside librdkafka on a loop thread. */
#ifndef FX_KAFKA_H
#define FX_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <uv.h>

#include "common/config.h"
#include "common/err.h"

typedef struct fx_kqueue fx_kqueue;
typedef void (*fx_kqueue_cb)(void *arg);

/* Watches q (borrowed: the caller keeps its reference and must close the
 * bridge before destroying q). cb runs on loop's thread. */
int fx_kqueue_open(uv_loop_t *loop, rd_kafka_queue_t *q, fx_kqueue_cb cb, void *arg,
                   fx_kqueue **out, fx_err *err);
/* Calls cb again on the next loop iteration (after a drain cut short). */
void fx_kqueue_kick(fx_kqueue *kq);
/* Stops watching; handles are closed and freed by the loop. */
void fx_kqueue_close(fx_kqueue *kq);

typedef enum { FX_KAFKA_PRODUCER, FX_KAFKA_CONSUMER } fx_kafka_role;

/* A librdkafka configuration for role: fhirx's defaults, then every
 * property of the kafka section that applies to the role (plain names, or
 * "producer."/"consumer." prefixed ones), then FHIRX_BOOTSTRAP_SERVERS.
 * Errors name the offending property. */
int fx_kafka_conf(const fx_strmap *props, fx_kafka_role role, rd_kafka_conf_t **out, fx_err *err);

/* Sets one property, turning librdkafka's complaint into an fx_err. */
int fx_kafka_set(rd_kafka_conf_t *conf, const char *name, const char *value, fx_err *err);

/* The largest message the producer will accept (message.max.bytes). */
size_t fx_kafka_max_message(const rd_kafka_conf_t *conf);

/* librdkafka statistics (statistics.interval.ms): brokers up and, for a
 * consumer, the lag over its partitions (lag may be NULL). */
void fx_kafka_stats_parse(const char *json, size_t len, int *brokers_up, long long *lag);

/* statistics.interval.ms = 1000 unless the config sets it. */
void fx_kafka_default_stats_interval(rd_kafka_conf_t *conf);

#endif
