/* At-least-once offset tracking for one assigned partition.
 *
 * Every consumed message (a job, valid or not) takes a slot in offset order.
 * A slot is done when everything the job produced has been acknowledged by
 * Kafka. The offset to store is the lowest unfinished slot's offset (the
 * next message to read after a restart), or last done + 1 when nothing is
 * unfinished; it only moves forward. A slot that never completes (its output
 * could not be delivered) holds the partition back: its job and every job
 * after it are redelivered after a restart, never skipped.
 *
 * Thread: owned by one worker thread. */
#ifndef FX_OFFSETS_H
#define FX_OFFSETS_H

#include <stddef.h>
#include <stdint.h>

typedef struct fx_slot {
  int64_t offset;
  int done;
} fx_slot;

typedef struct fx_partition {
  char *topic;
  int32_t partition;
  int revoked;    /* no longer ours: nothing more is stored */
  int refs;       /* the assignment + one per job in flight */
  fx_slot *slots; /* slots[head .. head+count) in offset order */
  size_t head, count, cap;
  int64_t stored; /* last offset handed to Kafka to store, -1 = none */
} fx_partition;

fx_partition *fx_partition_new(const char *topic, int32_t partition);
/* Drops a reference; frees at zero. */
void fx_partition_unref(fx_partition *p);

/* Records a consumed offset (offsets arrive in increasing order). 0 or -1 on OOM. */
int fx_partition_add(fx_partition *p, int64_t offset);

/* Marks offset done. Returns the offset to store now (> the previous one),
 * or -1 when the lowest unfinished slot did not move. */
int64_t fx_partition_done(fx_partition *p, int64_t offset);

/* Slots not done yet. */
size_t fx_partition_pending(const fx_partition *p);

#endif
