/* A set of strings (open addressing, FNV-1a). Used to de-duplicate
 * resources within a job: Cerner can return the same id on two pages. */
#ifndef FX_STRSET_H
#define FX_STRSET_H

#include <stddef.h>

typedef struct fx_strset fx_strset;

fx_strset *fx_strset_new(void);
void fx_strset_free(fx_strset *s);
/* Adds a copy of key. Returns 1 if added, 0 if already present, -1 on OOM. */
int fx_strset_add(fx_strset *s, const char *key);
int fx_strset_has(const fx_strset *s, const char *key);
size_t fx_strset_size(const fx_strset *s);

#endif
