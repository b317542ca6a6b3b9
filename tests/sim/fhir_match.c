/* Search matching on precomputed search keys. Parameters a type does not
 * declare are ignored, like a lenient server; comma-separated values mean OR. */
#include "tests/sim/fhir.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static bool prefix_ci(const char *s, const char *prefix) {
  for (; *prefix; s++, prefix++)
    if (!*s || tolower((unsigned char)*s) != tolower((unsigned char)*prefix)) return false;
  return true;
}

/* query [system|]code against key "system|code" or "code" */
static bool token_matches(const char *key, const char *q) {
  if (strchr(q, '|')) return strcmp(key, q) == 0;
  const char *bar = strchr(key, '|');
  return strcmp(bar ? bar + 1 : key, q) == 0;
}

/* ISO dates and instants compare correctly as strings; a partial date
 * (1990, 1990-09) matches the whole period it names. */
static bool date_matches(const char *key, const char *q) {
  char op[3] = "eq";
  if (isalpha((unsigned char)q[0]) && isalpha((unsigned char)q[1])) {
    memcpy(op, q, 2);
    q += 2;
  }
  if (!*q) return false;
  bool within = strncmp(key, q, strlen(q)) == 0;
  int cmp = strcmp(key, q);
  if (strcmp(op, "eq") == 0) return within;
  if (strcmp(op, "ne") == 0) return !within;
  if (strcmp(op, "gt") == 0) return !within && cmp > 0;
  if (strcmp(op, "lt") == 0) return !within && cmp < 0;
  if (strcmp(op, "ge") == 0) return within || cmp > 0;
  if (strcmp(op, "le") == 0) return within || cmp < 0;
  return false; /* unknown prefix */
}

static void digits(const char *s, char *out, size_t n) {
  size_t j = 0;
  for (; *s && j + 1 < n; s++)
    if (isdigit((unsigned char)*s)) out[j++] = *s;
  out[j] = '\0';
}

bool sim_fhir_value_matches(sim_param_kind kind, const char *key, const char *q) {
  char a[64], b[64];
  switch (kind) {
  case SIM_P_STRING: return prefix_ci(key, q);
  case SIM_P_TOKEN: return token_matches(key, q);
  case SIM_P_DATE: return date_matches(key, q);
  case SIM_P_REFERENCE: {
    const char *slash = strrchr(q, '/');
    return strcmp(key, slash ? slash + 1 : q) == 0;
  }
  case SIM_P_PHONE:
    digits(key, a, sizeof a);
    digits(q, b, sizeof b);
    return *b && strcmp(a, b) == 0;
  }
  return false;
}

/* One query value against every key of that parameter. */
static bool any_key_matches(const sim_resource *r, const sim_search_param *p, const char *q) {
  for (size_t k = 0; k < r->nkeys; k++)
    if (strcmp(r->keys[k].name, p->name) == 0 && sim_fhir_value_matches(p->kind, r->keys[k].value, q))
      return true;
  return false;
}

/* OR over the comma-separated values of one parameter. */
static bool param_matches(const sim_resource *r, const sim_search_param *p, const char *list) {
  char *copy = strdup(list), *save = NULL;
  bool hit = false;
  for (char *q = copy ? strtok_r(copy, ",", &save) : NULL; q && !hit;
       q = strtok_r(NULL, ",", &save))
    hit = p ? any_key_matches(r, p, q) : strcmp(r->id, q) == 0;
  free(copy);
  return hit;
}

static const sim_search_param *find_param(const sim_search_def *def, const char *name) {
  for (const sim_search_param *p = def->params; p && p->name; p++)
    if (strcmp(p->name, name) == 0) return p;
  return NULL;
}

bool sim_fhir_match(const sim_search_def *def, const sim_resource *r, const sim_kv *params,
                    size_t n) {
  for (size_t i = 0; i < n; i++) {
    bool is_id = strcmp(params[i].key, "_id") == 0;
    const sim_search_param *p = is_id ? NULL : find_param(def, params[i].key);
    if (!is_id && !p) continue; /* undeclared parameter: ignored */
    if (!param_matches(r, p, params[i].value)) return false;
  }
  return true;
}

int sim_fhir_prepare_store(sim_store *s) {
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    const sim_search_def *def = sim_search_def_for((sim_rtype)t);
    for (size_t i = 0; def->index && i < sim_store_count(s, (sim_rtype)t); i++)
      if (def->index(sim_store_at_mut(s, (sim_rtype)t, i)) != 0) return -1;
    if (def->indexed_param && sim_store_build_index(s, (sim_rtype)t, def->indexed_param) != 0)
      return -1;
  }
  return 0;
}
