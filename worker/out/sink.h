/* The output protocol: how whoever produces messages (a patient job, a bulk
 * file, an ending export) learns that Kafka has every one of them.
 *
 * A sink counts the messages produced for it that Kafka has not yet
 * acknowledged, plus one hold while its owner may still produce more. The
 * owner opens it (the hold), produces through out/out.h, and closes it (drops
 * the hold). Delivery reports arrive on the producer's thread in batches
 * (out/producer.h); the report that brings a sink to zero queues the sink on
 * its home loop, and each batch wakes each home once, however many sinks of
 * that home it settled. The home then runs the sink's settled callback on its
 * own thread, never inside the call that released the sink, with failed = 1
 * if any message of the sink was not delivered.
 *
 * A settled sink may be opened again: a job's status record is produced only
 * after its other outputs settled, and the same sink then settles again.
 *
 * Threads: init, open, close and the settled callback belong to the home's
 * thread; the counting functions (fx_sink_acked_batch) run on the producer's
 * thread; fx_sink_add and fx_sink_fail are atomic and may run anywhere. */
#ifndef FX_OUT_SINK_H
#define FX_OUT_SINK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/loop.h"

typedef struct fx_sink fx_sink;
typedef void (*fx_sink_settled_fn)(fx_sink *s, int failed);

/* Tells a sink from the producer's own delivery tickets (a message produced
 * again after a failed delivery): both are what librdkafka hands back as a
 * message's opaque, and both begin with this. */
enum { FX_OUT_SINK = 0x51c4, FX_OUT_TICKET = 0x71c7 };

struct fx_sink {
  uint32_t kind;        /* FX_OUT_SINK */
  atomic_int outputs;   /* in flight, plus 1 while open; 0 = settled (or never opened) */
  atomic_int failed;    /* some message was not delivered */
  fx_loop *home;        /* where settled runs */
  fx_sink_settled_fn settled;
  fx_post item;         /* how it is queued on home; owned by the loop while queued */
};

/* Prepares s (not open). home must outlive s's last settled callback. */
void fx_sink_init(fx_sink *s, fx_loop *home, fx_sink_settled_fn settled);

/* Opens s for a round of outputs: the hold, and a clean failure flag. s must
 * be settled (or new). */
void fx_sink_open(fx_sink *s);

/* Drops the owner's hold. When nothing is in flight any more, settled runs
 * soon on the home loop (never inside this call). */
void fx_sink_close(fx_sink *s);

/* One more message in flight (out/out.c calls it as it hands one over). */
void fx_sink_add(fx_sink *s);

/* Marks s as not fully delivered (its owner must not count on its outputs). */
void fx_sink_fail(fx_sink *s);

/* 1 between open and settled. */
int fx_sink_busy(const fx_sink *s);

/* Delivery reports counted per batch, on the producer's thread. A batch
 * collects the sinks that settle and wakes each home once at flush. */
#define FX_SINK_BATCH_HOMES 64
typedef struct fx_sink_batch {
  struct {
    fx_loop *home;
    fx_post *first, *last;
  } homes[FX_SINK_BATCH_HOMES];
  size_t n_homes;
} fx_sink_batch;

void fx_sink_batch_init(fx_sink_batch *b);
/* n messages of s were acknowledged (failed: not delivered). */
void fx_sink_acked_batch(fx_sink_batch *b, fx_sink *s, int n, int failed);
/* Hands every settled sink to its home: one wake-up per home. */
void fx_sink_batch_flush(fx_sink_batch *b);

#endif
