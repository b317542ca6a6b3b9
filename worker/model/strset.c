#include "worker/model/strset.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct fx_strset {
  char **slots;
  size_t cap, n;
};

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

fx_strset *fx_strset_new(void) {
  fx_strset *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->cap = 64;
  s->slots = calloc(s->cap, sizeof *s->slots);
  if (!s->slots) {
    free(s);
    return NULL;
  }
  return s;
}

void fx_strset_free(fx_strset *s) {
  if (!s) return;
  for (size_t i = 0; i < s->cap; i++) free(s->slots[i]);
  free(s->slots);
  free(s);
}

static size_t find(char *const *slots, size_t cap, const char *key) {
  size_t i = (size_t)hash(key) & (cap - 1);
  while (slots[i] && strcmp(slots[i], key) != 0) i = (i + 1) & (cap - 1);
  return i;
}

static int grow(fx_strset *s) {
  size_t cap = s->cap * 2;
  char **slots = calloc(cap, sizeof *slots);
  if (!slots) return -1;
  for (size_t i = 0; i < s->cap; i++)
    if (s->slots[i]) slots[find(slots, cap, s->slots[i])] = s->slots[i];
  free(s->slots);
  s->slots = slots;
  s->cap = cap;
  return 0;
}

int fx_strset_add(fx_strset *s, const char *key) {
  if ((s->n + 1) * 4 > s->cap * 3 && grow(s) != 0) return -1; /* keep load <= 3/4 */
  size_t i = find(s->slots, s->cap, key);
  if (s->slots[i]) return 0;
  if (!(s->slots[i] = strdup(key))) return -1;
  s->n++;
  return 1;
}

int fx_strset_has(const fx_strset *s, const char *key) {
  return s->slots[find(s->slots, s->cap, key)] != NULL;
}

size_t fx_strset_size(const fx_strset *s) { return s->n; }
