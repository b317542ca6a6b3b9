#include "tests/sim/map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct sim_map_entry {
  sim_map_entry *next;
  uint64_t hash;
  void *value;
  char key[]; /* NUL-terminated copy */
};

static uint64_t fnv1a(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

void sim_map_init(sim_map *m, sim_map_free_fn free_fn) { *m = (sim_map){.free_fn = free_fn}; }

static sim_map_entry *find(const sim_map *m, const char *key, uint64_t h) {
  if (!m->nbuckets) return NULL;
  for (sim_map_entry *e = m->buckets[h % m->nbuckets]; e; e = e->next)
    if (e->hash == h && strcmp(e->key, key) == 0) return e;
  return NULL;
}

void *sim_map_get(const sim_map *m, const char *key) {
  sim_map_entry *e = find(m, key, fnv1a(key));
  return e ? e->value : NULL;
}

/* Doubles the table once the load factor reaches 1; a failed grow is not an
 * error because chains simply get longer. */
static void grow(sim_map *m) {
  if (m->count < m->nbuckets) return;
  size_t n = m->nbuckets ? m->nbuckets * 2 : 64;
  sim_map_entry **b = calloc(n, sizeof *b);
  if (!b) return;
  for (size_t i = 0; i < m->nbuckets; i++) {
    for (sim_map_entry *e = m->buckets[i], *next; e; e = next) {
      next = e->next;
      e->next = b[e->hash % n];
      b[e->hash % n] = e;
    }
  }
  free(m->buckets);
  m->buckets = b;
  m->nbuckets = n;
}

int sim_map_put(sim_map *m, const char *key, void *value) {
  uint64_t h = fnv1a(key);
  sim_map_entry *e = find(m, key, h);
  if (e) {
    if (m->free_fn && e->value != value) m->free_fn(e->value);
    e->value = value;
    return 0;
  }
  grow(m);
  if (!m->nbuckets) return -1;
  size_t klen = strlen(key);
  e = malloc(sizeof *e + klen + 1);
  if (!e) return -1;
  memcpy(e->key, key, klen + 1);
  e->hash = h;
  e->value = value;
  e->next = m->buckets[h % m->nbuckets];
  m->buckets[h % m->nbuckets] = e;
  m->count++;
  return 0;
}

size_t sim_map_remove_if(sim_map *m, sim_map_pred pred, void *arg) {
  size_t removed = 0;
  for (size_t i = 0; i < m->nbuckets; i++) {
    sim_map_entry **link = &m->buckets[i];
    while (*link) {
      sim_map_entry *e = *link;
      if (pred(e->key, e->value, arg)) {
        *link = e->next;
        if (m->free_fn) m->free_fn(e->value);
        free(e);
        removed++;
      } else {
        link = &e->next;
      }
    }
  }
  m->count -= removed;
  return removed;
}

bool sim_map_remove(sim_map *m, const char *key) {
  uint64_t h = fnv1a(key);
  if (!m->nbuckets) return false;
  for (sim_map_entry **link = &m->buckets[h % m->nbuckets]; *link; link = &(*link)->next) {
    sim_map_entry *e = *link;
    if (e->hash != h || strcmp(e->key, key) != 0) continue;
    *link = e->next;
    if (m->free_fn) m->free_fn(e->value);
    free(e);
    m->count--;
    return true;
  }
  return false;
}

void sim_map_foreach(const sim_map *m, sim_map_visit fn, void *arg) {
  for (size_t i = 0; i < m->nbuckets; i++)
    for (sim_map_entry *e = m->buckets[i]; e; e = e->next) fn(e->key, e->value, arg);
}

static bool always(const char *key, void *value, void *arg) {
  (void)key, (void)value, (void)arg;
  return true;
}

void sim_map_free(sim_map *m) {
  sim_map_remove_if(m, always, NULL);
  free(m->buckets);
  *m = (sim_map){.free_fn = m->free_fn};
}
