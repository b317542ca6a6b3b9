/* String-keyed hash map (separate chaining, FNV-1a) holding owned values.
 * Not thread-safe: callers hold the state lock. Used for issued tokens, seen
 * jtis, resource ids and bulk exports. */
#ifndef SIM_MAP_H
#define SIM_MAP_H

#include <stdbool.h>
#include <stddef.h>

typedef void (*sim_map_free_fn)(void *value);
/* Returns true to remove the entry (its value is freed with the map's free_fn). */
typedef bool (*sim_map_pred)(const char *key, void *value, void *arg);

typedef struct sim_map_entry sim_map_entry;
typedef struct sim_map {
  sim_map_entry **buckets;
  size_t nbuckets;
  size_t count;
  sim_map_free_fn free_fn; /* may be NULL: values are borrowed */
} sim_map;

void sim_map_init(sim_map *m, sim_map_free_fn free_fn);
/* Borrowed value or NULL. */
void *sim_map_get(const sim_map *m, const char *key);
/* Takes ownership of value on success (replacing and freeing an old one);
 * returns -1 on OOM, leaving value with the caller. */
int sim_map_put(sim_map *m, const char *key, void *value);
size_t sim_map_remove_if(sim_map *m, sim_map_pred pred, void *arg);
/* Removes one entry (freeing its value); returns false if there was none. */
bool sim_map_remove(sim_map *m, const char *key);
/* Calls fn for every entry, in no particular order; fn must not change m. */
typedef void (*sim_map_visit)(const char *key, void *value, void *arg);
void sim_map_foreach(const sim_map *m, sim_map_visit fn, void *arg);
void sim_map_free(sim_map *m);

#endif
