#include "worker/out/sink.h"

#include "common/log.h"

static void run_settled(void *arg) {
  fx_sink *s = arg;
  s->settled(s, atomic_load(&s->failed));
}

void fx_sink_init(fx_sink *s, fx_loop *home, fx_sink_settled_fn settled) {
  s->kind = FX_OUT_SINK;
  atomic_init(&s->outputs, 0);
  atomic_init(&s->failed, 0);
  s->home = home;
  s->settled = settled;
  s->item.next = NULL;
  s->item.fn = run_settled;
  s->item.arg = s;
  s->item.embedded = 1;
}

void fx_sink_open(fx_sink *s) {
  atomic_store(&s->failed, 0);
  atomic_store(&s->outputs, 1);
}

int fx_sink_busy(const fx_sink *s) { return atomic_load(&s->outputs) > 0; }

void fx_sink_add(fx_sink *s) { atomic_fetch_add(&s->outputs, 1); }

void fx_sink_fail(fx_sink *s) { atomic_store(&s->failed, 1); }

/* The count reached zero: s belongs to its home loop until settled runs. */
static void hand_home(fx_sink *s) {
  if (fx_loop_post_chain(s->home, &s->item, &s->item) != 0)
    fx_log(FX_LOG_ERROR, "an output sink settled after its loop closed; its owner never hears",
           NULL);
}

void fx_sink_close(fx_sink *s) {
  if (atomic_fetch_sub(&s->outputs, 1) == 1) hand_home(s);
}

void fx_sink_batch_init(fx_sink_batch *b) { b->n_homes = 0; }

void fx_sink_acked_batch(fx_sink_batch *b, fx_sink *s, int n, int failed) {
  if (failed) atomic_store(&s->failed, 1);
  if (atomic_fetch_sub(&s->outputs, n) != n) return;
  for (size_t i = 0; i < b->n_homes; i++)
    if (b->homes[i].home == s->home) {
      b->homes[i].last->next = &s->item;
      b->homes[i].last = &s->item;
      return;
    }
  if (b->n_homes == FX_SINK_BATCH_HOMES) { /* more homes than threads can be: never in practice */
    hand_home(s);
    return;
  }
  b->homes[b->n_homes].home = s->home;
  b->homes[b->n_homes].first = b->homes[b->n_homes].last = &s->item;
  b->n_homes++;
}

void fx_sink_batch_flush(fx_sink_batch *b) {
  for (size_t i = 0; i < b->n_homes; i++)
    if (fx_loop_post_chain(b->homes[i].home, b->homes[i].first, b->homes[i].last) != 0)
      fx_log(FX_LOG_ERROR, "output sinks settled after their loop closed; their owners never hear",
             NULL);
  b->n_homes = 0;
}
