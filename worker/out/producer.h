/* The shared producer: one idempotent librdkafka producer (acks=all,
 * compressed) for every thread of a worker process.
 *
 * Any thread produces (rd_kafka_producev is thread-safe; nothing here
 * blocks). Each message carries its sink (out/sink.h) as opaque. Delivery
 * reports are served on one loop (the main loop) as librdkafka's event API
 * delivers them: in batches, one event per produce response. Each batch is
 * counted down per sink and the sinks it settles go home with one wake-up
 * per home loop.
 *
 * A message whose delivery failed after librdkafka's own retries (for
 * message.timeout.ms) is produced again, up to FX_PRODUCER_REPRODUCE times,
 * before its sink is marked failed; a sink marked failed tells its owner not
 * to count on its outputs (a job is then not committed and runs again). Once
 * fx_producer_give_up has been called (the drain deadline passed), failures
 * are final at once and whatever is queued is purged.
 *
 * Thread: open and close on the serving loop's thread; send from any. */
#ifndef FX_OUT_PRODUCER_H
#define FX_OUT_PRODUCER_H

#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stddef.h>

#include "common/config.h"
#include "common/err.h"
#include "common/loop.h"
#include "worker/out/sink.h"

#define FX_PRODUCER_REPRODUCE 5

typedef struct fx_producer fx_producer;

/* Creates the producer from cfg's kafka section; its events are served on
 * serve (a loop of the calling thread). */
int fx_producer_open(const fx_config *cfg, fx_loop *serve, fx_producer **out, fx_err *err);

/* Stops serving events on the serving loop (whose handles then close with
 * the loop's next turns), so that the loop can end. */
void fx_producer_stop_serving(fx_producer *p);

/* After the serving loop ended: waits up to flush_ms for what is still
 * queued (nobody waits for it any more), purges the rest, frees p. */
void fx_producer_close(fx_producer *p, int flush_ms);

/* Hands one message to librdkafka for sink s. On success s counts one more
 * in-flight message and librdkafka owns value (malloc'd) and headers. On
 * failure (RD_KAFKA_RESP_ERR__QUEUE_FULL when the local queue is full, or
 * another error) nothing changed hands: the caller still owns both. */
rd_kafka_resp_err_t fx_producer_send(fx_producer *p, fx_sink *s, const char *topic,
                                     const char *key, size_t key_len, char *value, size_t len,
                                     rd_kafka_headers_t *headers);

/* From now on a failed delivery is final, and what is queued is purged (its
 * sinks settle as failed). Any thread. */
void fx_producer_give_up(fx_producer *p);

/* The largest value this producer takes (message.max.bytes minus headroom
 * for key, headers and record overhead). */
size_t fx_producer_max_message(const fx_producer *p);

/* Counts acknowledged deliveries to these topics (each counter once per
 * message Kafka acknowledged; a refused or purged one is not counted). The
 * topics' strings must outlive p. Call before anything is produced. */
#define FX_PRODUCER_COUNTERS 8
typedef struct fx_producer_counter {
  const char *topic;
  atomic_ullong *count;
} fx_producer_counter;
void fx_producer_count(fx_producer *p, const fx_producer_counter *c, size_t n);

/* For /metrics and /readyz: messages whose delivery failed (each try), and
 * brokers up per the latest statistics. Any thread. */
unsigned long long fx_producer_delivery_errors(const fx_producer *p);
int fx_producer_brokers_up(const fx_producer *p);

#endif
