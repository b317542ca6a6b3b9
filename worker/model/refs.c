#include "worker/model/refs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fx_refs_init(fx_refs *r, size_t max, size_t max_failures) {
  memset(r, 0, sizeof *r);
  r->max = max;
  r->max_failures = max_failures;
  return (r->asked = fx_strset_new()) ? 0 : -1;
}

void fx_refs_free(fx_refs *r) {
  fx_strset_free(r->asked);
  r->asked = NULL;
}

/* A foreign or invalid reference: reported once per URL while the job is
 * under its failure cap; past it, counted without being remembered. The set
 * key is prefix + URL, built from lengths: two long URLs never collide. */
static fx_ref_decision once(fx_refs *r, const char *prefix, const char *s, fx_ref_decision d) {
  size_t a = strlen(prefix), b = strlen(s);
  char *key = malloc(a + b + 1);
  if (!key) return FX_REFD_SKIP;
  memcpy(key, prefix, a);
  memcpy(key + a, s, b + 1);
  int rc;
  if (fx_strset_has(r->asked, key)) {
    rc = 0;
  } else if (r->reported >= r->max_failures) {
    r->unrecorded++;
    free(key);
    return FX_REFD_UNRECORDED;
  } else {
    rc = fx_strset_add(r->asked, key);
  }
  free(key);
  if (rc != 1) return FX_REFD_SKIP;
  r->reported++;
  return d;
}

fx_ref_decision fx_refs_consider(fx_refs *r, const fx_profile *p, const char *base,
                                 const fx_strset *seen, const char *ref, int only_type, int exact,
                                 fx_ref_found *out) {
  int idx = -1;
  switch (fx_ref_parse(ref, base, out->key, sizeof out->key, &idx)) {
  case FX_REF_NONE: return FX_REFD_SKIP;
  case FX_REF_FOREIGN: return once(r, "foreign:", ref, FX_REFD_FOREIGN);
  case FX_REF_INVALID:
    if (!fx_types_has(p->follow, idx) || (only_type >= 0 && idx != only_type)) return FX_REFD_SKIP;
    out->type = idx;
    return once(r, "invalid:", ref, FX_REFD_INVALID);
  case FX_REF_LOCAL: break;
  }
  if (!fx_types_has(p->follow, idx) || (only_type >= 0 && idx != only_type)) return FX_REFD_SKIP;
  if ((seen && fx_strset_has(seen, out->key)) || fx_strset_has(r->asked, out->key))
    return FX_REFD_SKIP;
  /* Past the cap nothing is remembered: the set holds at most max entities. */
  if (r->followed >= r->max) {
    if (r->capped) return FX_REFD_SKIP;
    r->capped = 1;
    return FX_REFD_CAPPED;
  }
  if (fx_strset_add(r->asked, out->key) != 1) return FX_REFD_SKIP;
  r->followed++;
  out->type = idx;
  out->exact = exact && strstr(ref, "://") != NULL;
  return FX_REFD_FOLLOW;
}

typedef struct walk {
  fx_refs_visit visit;
  void *arg;
} walk;

static void walk_value(const walk *w, json_t *v) {
  const char *k;
  json_t *child;
  size_t i;
  if (json_is_object(v)) {
    json_object_foreach(v, k, child) {
      if (strcmp(k, "reference") == 0 && json_is_string(child))
        w->visit(w->arg, json_string_value(child), -1, 0);
      else
        walk_value(w, child);
    }
  } else if (json_is_array(v)) {
    json_array_foreach(v, i, child) walk_value(w, child);
  }
}

static void attachment(void *arg, const char *url) {
  const walk *w = arg;
  w->visit(w->arg, url, fx_resource_index("Binary"), 1);
}

void fx_refs_walk(const fx_profile *p, json_t *res, fx_refs_visit visit, void *arg) {
  walk w = {.visit = visit, .arg = arg};
  walk_value(&w, res);
  fx_profile_attachments(p, res, attachment, &w);
}

int fx_refs_url_key(const char *url, char *out, size_t size) {
  size_t end = strcspn(url, "?#");
  const char *p = url + end;
  const char *id = NULL, *type = NULL;
  for (const char *q = p; q > url; q--)
    if (q[-1] == '/') {
      if (!id) id = q;
      else {
        type = q;
        break;
      }
    }
  if (!type || !id) return -1;
  size_t tl = (size_t)(id - 1 - type), il = (size_t)(p - id);
  char t[FX_TYPE_NAME_MAX + 1];
  if (tl == 0 || tl >= sizeof t || !fx_fhir_id_ok(id, il) || tl + il + 2 > size) return -1;
  memcpy(t, type, tl);
  t[tl] = '\0';
  if (fx_resource_index(t) < 0) return -1;
  snprintf(out, size, "%s/%.*s", t, (int)il, id);
  return 0;
}
