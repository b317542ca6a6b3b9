#include "worker/pool/offsets.h"

#include <stdlib.h>
#include <string.h>

fx_partition *fx_partition_new(const char *topic, int32_t partition) {
  fx_partition *p = calloc(1, sizeof *p);
  if (!p || !(p->topic = strdup(topic))) {
    free(p);
    return NULL;
  }
  p->partition = partition;
  p->refs = 1;
  p->stored = -1;
  return p;
}

void fx_partition_unref(fx_partition *p) {
  if (!p || --p->refs > 0) return;
  free(p->slots);
  free(p->topic);
  free(p);
}

int fx_partition_add(fx_partition *p, int64_t offset) {
  if (p->head + p->count == p->cap) {
    if (p->head > 0) { /* slide the live window to the front before growing */
      memmove(p->slots, p->slots + p->head, p->count * sizeof *p->slots);
      p->head = 0;
    }
    if (p->count == p->cap) {
      size_t cap = p->cap ? p->cap * 2 : 16;
      fx_slot *s = realloc(p->slots, cap * sizeof *s);
      if (!s) return -1;
      p->slots = s;
      p->cap = cap;
    }
  }
  p->slots[p->head + p->count].offset = offset;
  p->slots[p->head + p->count].done = 0;
  p->count++;
  return 0;
}

int64_t fx_partition_done(fx_partition *p, int64_t offset) {
  /* Jobs finish roughly in order, so the slot is near the front; a binary
   * search would do too, but slots are few (bounded by jobs in flight). */
  for (size_t i = 0; i < p->count; i++) {
    fx_slot *s = &p->slots[p->head + i];
    if (s->offset == offset) {
      s->done = 1;
      break;
    }
  }
  int64_t last = -1;
  while (p->count && p->slots[p->head].done) {
    last = p->slots[p->head].offset;
    p->head++;
    p->count--;
  }
  if (last < 0) return -1;
  int64_t next = p->count ? p->slots[p->head].offset : last + 1;
  if (next <= p->stored) return -1;
  p->stored = next;
  return next;
}

size_t fx_partition_pending(const fx_partition *p) { return p->count; }
