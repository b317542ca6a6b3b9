/* A loop thread's way out to Kafka: produce a message for a sink, and when
 * the producer's local queue is full, keep it, in order, and try again
 * shortly.
 *
 * fx_out_emit never fails from its caller's point of view: the message is
 * produced now, or waits here (counted in its sink, so the sink cannot
 * settle before it is produced), or, when it cannot be produced at all (an
 * error other than a full queue), its sink is marked failed. Once something
 * waits, every later message waits behind it, so a sink's messages keep
 * their order.
 *
 * fx_out_offer is for streams that can pause (a bulk download): it produces
 * now or takes nothing and returns FX_EAGAIN, and the caller keeps its line
 * and pauses its transfer.
 *
 * Thread: everything on the owning loop's thread. */
#ifndef FX_OUT_OUT_H
#define FX_OUT_OUT_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <uv.h>

#include "common/err.h"
#include "worker/out/producer.h"
#include "worker/out/sink.h"

typedef struct fx_out fx_out;

/* on_empty (may be NULL) runs when the last waiting message was produced or
 * dropped: a thread that drains waits for that. */
int fx_out_new(uv_loop_t *loop, fx_producer *p, void (*on_empty)(void *arg), void *arg,
               fx_out **out, fx_err *err);

/* Takes value (malloc'd) and headers (may be NULL). key may be NULL. */
void fx_out_emit(fx_out *o, fx_sink *s, const char *topic, const char *key, char *value,
                 size_t len, rd_kafka_headers_t *headers);

/* Produces now, or returns FX_EAGAIN (queue full, or messages waiting)
 * without taking value and headers. Any other failure marks s failed and
 * frees value and headers; 0 is returned then too (the line is dealt with). */
int fx_out_offer(fx_out *o, fx_sink *s, const char *topic, const char *key, char *value,
                 size_t len, rd_kafka_headers_t *headers);

/* Messages waiting for room. */
size_t fx_out_waiting(const fx_out *o);

/* Drops every waiting message (the drain deadline passed): their sinks are
 * marked failed and released. */
void fx_out_drop(fx_out *o);

/* Drops what waits and closes the timer; o is freed once the loop has
 * closed it. */
void fx_out_close(fx_out *o);

/* The producer behind o. */
fx_producer *fx_out_producer(const fx_out *o);

#endif
