/* What a Group $export contains (export.h sim_xscope), walked the same way
 * by the plan, the downloads and the expected endpoint:
 *
 * - Patient and the per-patient types Cerner exports, member by member,
 *   narrowed by _since and by the type's _typeFilter;
 * - the pool types (Practitioner, Organization, Location): the entities the
 *   other exported resources reference (one level, as `expected` lists
 *   references), narrowed by _since. group-export.md calls them "reference
 *   resources" and exports them only together with a patient type;
 * - Provenance: one per exported resource of a patient type ("all relevant
 *   Provenance resources associated with each of the non-provenance
 *   resources"; none for the pool types).
 *
 * _typeFilter matching (group-export.md: "_typeFilter supports queries with
 * the search parameters supported for the R4 resources"): the simulator
 * matches the token parameters below on the resource's JSON, with the
 * comparisons of its searches (fhir_match.c). */
#include "tests/sim/fhir.h"
#include "tests/sim/jsonw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- types ---- */

bool sim_xtype_pool(sim_rtype t) {
  return t == SIM_RT_PRACTITIONER || t == SIM_RT_ORGANIZATION || t == SIM_RT_LOCATION;
}

bool sim_xtype_exportable(sim_rtype t) {
  if (t == SIM_RT_PATIENT || sim_xtype_pool(t)) return true;
  return sim_rtype_per_patient(t) && t != SIM_RT_COVERAGE && t != SIM_RT_RELATED_PERSON &&
         t != SIM_RT_SERVICE_REQUEST;
}

/* ---- _typeFilter ---- */

/* group-export.md: "_typeFilter supports queries with the search parameters
 * supported for the R4 resources with the exception of ..." these. */
static const char *const refused_params[] = {
    "_count",  "_contained", "_containedType", "_elements", "_id",        "_include",
    "_lastUpdated", "_revinclude", "_sort",   "_summary",  "_total",     "encounter",
    "identifier",   "patient",     "subject"};

/* The parameters the simulator matches, and the element each one reads. */
static const struct {
  const char *param, *element;
} token_params[] = {
    {"category", "category"},       {"code", "code"},
    {"status", "status"},           {"clinical-status", "clinicalStatus"},
    {"verification-status", "verificationStatus"}, {"intent", "intent"},
    {"type", "type"},               {"class", "class"},
    {"vaccine-code", "vaccineCode"},
};

typedef struct xparam {
  const char *element;
  char *values; /* decoded, comma-separated: OR */
} xparam;

struct sim_xfilter {
  xparam *params; /* AND */
  size_t n;
};

void sim_xfilter_free(sim_xfilter *f) {
  if (!f) return;
  for (size_t i = 0; i < f->n; i++) free(f->params[i].values);
  free(f->params);
  free(f);
}

/* A parameter name as it may be echoed (client-controlled bytes). */
static const char *echo(const char *name) {
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '_' || *p == ':'))
      return "(invalid name)";
  return name;
}

int sim_xfilter_parse(const char *query, sim_xfilter **out, char *msg, size_t n) {
  *out = NULL;
  sim_xfilter *f = calloc(1, sizeof *f);
  char *copy = strdup(query);
  size_t cap = 1;
  for (const char *p = query; *p; p++) cap += *p == '&';
  if (f) f->params = calloc(cap, sizeof *f->params);
  if (!f || !copy || !f->params) {
    snprintf(msg, n, "out of memory");
    goto fail;
  }
  char *save = NULL;
  for (char *part = strtok_r(copy, "&", &save); part; part = strtok_r(NULL, "&", &save)) {
    char *eq = strchr(part, '=');
    if (!eq || eq == part || !eq[1]) {
      snprintf(msg, n, "_typeFilter: '%.40s' is not a search parameter with a value",
               echo(part));
      goto fail;
    }
    *eq = '\0';
    char name[64];
    snprintf(name, sizeof name, "%s", part);
    char *modifier = strchr(name, ':');
    if (modifier) *modifier = '\0';
    for (size_t i = 0; i < sizeof refused_params / sizeof *refused_params; i++)
      if (strcmp(name, refused_params[i]) == 0) {
        snprintf(msg, n,
                 "_typeFilter does not support the search parameter %s (nor _count, _contained, "
                 "_containedType, _elements, _id, _include, _lastUpdated, _revinclude, _sort, "
                 "_summary, _total, encounter, identifier, patient, subject)",
                 refused_params[i]);
        goto fail;
      }
    const char *element = NULL;
    for (size_t i = 0; i < sizeof token_params / sizeof *token_params; i++)
      if (strcmp(name, token_params[i].param) == 0) element = token_params[i].element;
    if (!element || modifier) {
      snprintf(msg, n,
               "_typeFilter: the search parameter %s%s is not supported in a _typeFilter here "
               "(the simulator matches category, code, status, clinical-status, "
               "verification-status, intent, type, class and vaccine-code, without modifiers)",
               echo(part), modifier ? " with a modifier" : "");
      goto fail;
    }
    char *values = strdup(eq + 1);
    if (!values || !sim_form_unescape(values)) {
      free(values);
      snprintf(msg, n, "_typeFilter: the value of %s is not validly percent-encoded", name);
      goto fail;
    }
    f->params[f->n++] = (xparam){.element = element, .values = values};
  }
  if (!f->n) {
    snprintf(msg, n, "_typeFilter: an empty query");
    goto fail;
  }
  free(copy);
  *out = f;
  return 0;
fail:
  free(copy);
  sim_xfilter_free(f);
  return 422;
}

/* Token keys of an element: a code string, a Coding ("system|code"), a
 * CodeableConcept (its codings) or an array of those. */
static bool element_matches(const json_t *v, const char *q) {
  if (json_is_string(v)) return sim_fhir_value_matches(SIM_P_TOKEN, json_string_value(v), q);
  if (json_is_array(v)) {
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) if (element_matches(item, q)) return true;
    return false;
  }
  if (!json_is_object(v)) return false;
  const char *code = json_string_value(json_object_get(v, "code"));
  if (code) {
    const char *system = json_string_value(json_object_get(v, "system"));
    char key[512];
    snprintf(key, sizeof key, "%s%s%s", system ? system : "", system ? "|" : "", code);
    if (sim_fhir_value_matches(SIM_P_TOKEN, key, q)) return true;
  }
  return element_matches(json_object_get(v, "coding"), q);
}

static bool filter_matches(const sim_xfilter *f, const json_t *doc) {
  for (size_t i = 0; i < f->n; i++) {
    const json_t *v = json_object_get(doc, f->params[i].element);
    char *copy = strdup(f->params[i].values), *save = NULL;
    bool hit = false;
    for (char *q = copy ? strtok_r(copy, ",", &save) : NULL; q && !hit;
         q = strtok_r(NULL, ",", &save))
      hit = element_matches(v, q);
    free(copy);
    if (!hit) return false;
  }
  return true;
}

/* Generates the resource and matches it: what a server does with a filter. */
static bool resource_passes(const sim_xscope *s, sim_rtype t, uint64_t handle) {
  const sim_xfilter *f = s->filters[t];
  if (!f) return true;
  sim_buf b = {0};
  sim_store_write(s->store, t, handle, "localhost", &b);
  json_t *doc = b.oom ? NULL : json_loadb(b.data ? b.data : "", b.len, 0, NULL);
  sim_buf_free(&b);
  bool ok = doc && filter_matches(f, doc);
  json_decref(doc);
  return ok;
}

/* ---- walking ---- */

static int64_t updated_ms(const sim_resource *r) {
  const char *when = json_string_value(json_object_get(json_object_get(r->doc, "meta"),
                                                       "lastUpdated"));
  int64_t lo, hi;
  return when && sim_fhir_parse_instant(when, &lo, &hi) == 0 ? lo : 0;
}

bool sim_xnext(const sim_xscope *s, sim_rtype t, sim_xcursor *c, uint64_t *handle) {
  if (sim_xtype_pool(t)) {
    if (c->member >= s->npool[t]) return false;
    *handle = s->pool[t][c->member++];
    return true;
  }
  const sim_group *g = s->group;
  while (c->member < g->n) {
    uint32_t ordinal = g->ordinals[c->member];
    if (t == SIM_RT_PATIENT) {
      bool first = c->index == 0;
      c->member++;
      c->index = 0;
      const sim_resource *p = sim_store_patient(s->store, ordinal);
      if (!first || !p || (s->has_since && updated_ms(p) < s->since_ms)) continue;
      if (sim_store_resolve(s->store, SIM_RT_PATIENT, p->id, handle)) return true;
      continue;
    }
    size_t n = sim_pp_count(s->store, t, ordinal);
    while (c->index < n) {
      uint64_t h = (uint64_t)ordinal * SIM_PP_STRIDE + c->index++;
      if (s->has_since && sim_pp_last_updated_ms(s->store, t, h) < s->since_ms) continue;
      if (!resource_passes(s, t, h)) continue;
      *handle = h;
      return true;
    }
    c->member++;
    c->index = 0;
  }
  return false;
}

bool sim_xnext_provenance(const sim_xscope *s, sim_xcursor *c, sim_rtype *target,
                          uint64_t *handle) {
  for (; c->sub < SIM_RT_COUNT; c->sub++, c->member = 0, c->index = 0) {
    if (!s->provenance[c->sub]) continue;
    if (sim_xnext(s, (sim_rtype)c->sub, c, handle)) {
      *target = (sim_rtype)c->sub;
      return true;
    }
  }
  return false;
}

static int64_t target_updated_ms(const sim_xscope *s, sim_rtype t, uint64_t h) {
  if (sim_rtype_per_patient(t)) return sim_pp_last_updated_ms(s->store, t, h);
  const sim_resource *r = sim_store_at(s->store, t, (size_t)h);
  return r ? updated_ms(r) : 0;
}

void sim_xwrite_provenance(const sim_xscope *s, sim_rtype target, uint64_t handle,
                           sim_buf *out) {
  char tid[64], id[80], ref[128], when[32];
  sim_store_id(s->store, target, handle, tid);
  snprintf(id, sizeof id, "prv-%s", tid);
  snprintf(ref, sizeof ref, "%s/%s", sim_rtype_name(target), tid);
  sim_fhir_instant_ms(target_updated_ms(s, target, handle), when);
  sim_jw w = sim_jw_on(out);
  sim_jw_obj(&w, NULL);
  sim_jw_str(&w, "resourceType", "Provenance");
  sim_jw_str(&w, "id", id);
  sim_jw_obj(&w, "meta");
  sim_jw_str(&w, "versionId", "1");
  sim_jw_str(&w, "lastUpdated", when);
  sim_jw_end(&w);
  sim_jw_arr(&w, "target");
  sim_jw_obj(&w, NULL);
  sim_jw_str(&w, "reference", ref);
  sim_jw_end(&w);
  sim_jw_end_arr(&w);
  sim_jw_str(&w, "recorded", when);
  sim_jw_arr(&w, "agent");
  sim_jw_obj(&w, NULL);
  sim_jw_obj(&w, "type");
  sim_jw_arr(&w, "coding");
  sim_jw_obj(&w, NULL);
  sim_jw_str(&w, "system", "http://terminology.hl7.org/CodeSystem/provenance-participant-type");
  sim_jw_str(&w, "code", "author");
  sim_jw_end(&w);
  sim_jw_end_arr(&w);
  sim_jw_str(&w, "text", "Author");
  sim_jw_end(&w);
  sim_jw_obj(&w, "who");
  sim_jw_str(&w, "display", "Cerner Millennium");
  sim_jw_end(&w);
  sim_jw_end(&w);
  sim_jw_end_arr(&w);
  sim_jw_end(&w);
}

/* ---- the pool entities an export references ---- */

typedef struct pool_set {
  uint64_t *v[SIM_RT_COUNT];
  size_t n[SIM_RT_COUNT], cap[SIM_RT_COUNT];
  const bool *want;
  const sim_store *store;
  bool oom;
} pool_set;

static void pool_add(pool_set *ps, const char *ref) {
  const char *slash = strchr(ref, '/');
  if (!slash || strchr(slash + 1, '/')) return; /* relative Type/id only: pools are local */
  char type[32];
  snprintf(type, sizeof type, "%.*s", (int)(slash - ref), ref);
  int t = sim_rtype_from_name(type);
  uint64_t h;
  if (t < 0 || !sim_xtype_pool((sim_rtype)t) || !ps->want[t] ||
      !sim_store_resolve(ps->store, (sim_rtype)t, slash + 1, &h))
    return;
  if (ps->n[t] == ps->cap[t]) {
    size_t cap = ps->cap[t] ? ps->cap[t] * 2 : 64;
    uint64_t *v = realloc(ps->v[t], cap * sizeof *v);
    if (!v) {
      ps->oom = true;
      return;
    }
    ps->v[t] = v;
    ps->cap[t] = cap;
  }
  ps->v[t][ps->n[t]++] = h;
}

static void pool_walk(pool_set *ps, json_t *v) {
  const char *key;
  json_t *child;
  size_t i;
  if (json_is_object(v)) {
    json_object_foreach(v, key, child) {
      if (strcmp(key, "reference") == 0 && json_is_string(child))
        pool_add(ps, json_string_value(child));
      else
        pool_walk(ps, child);
    }
  } else if (json_is_array(v)) {
    json_array_foreach(v, i, child) pool_walk(ps, child);
  }
}

static int compare_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int sim_xscope_collect_pools(sim_xscope *s, const bool types[SIM_RT_COUNT]) {
  bool any = false;
  for (int t = 0; t < SIM_RT_COUNT; t++) any |= types[t] && sim_xtype_pool((sim_rtype)t);
  if (!any) return 0;
  pool_set ps = {.want = types, .store = s->store};
  for (int t = 0; t < SIM_RT_COUNT && !ps.oom; t++) {
    if (!types[t] || sim_xtype_pool((sim_rtype)t)) continue;
    sim_xcursor c = {0};
    uint64_t h;
    while (!ps.oom && sim_xnext(s, (sim_rtype)t, &c, &h)) {
      sim_buf b = {0};
      sim_store_write(s->store, (sim_rtype)t, h, "localhost", &b);
      json_t *doc = b.oom ? NULL : json_loadb(b.data ? b.data : "", b.len, 0, NULL);
      sim_buf_free(&b);
      if (!doc) ps.oom = true;
      pool_walk(&ps, doc);
      json_decref(doc);
    }
  }
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    if (ps.oom) {
      free(ps.v[t]);
      continue;
    }
    /* Sorted and unique; _since applies to the entities too. */
    if (ps.n[t]) qsort(ps.v[t], ps.n[t], sizeof *ps.v[t], compare_u64);
    size_t w = 0;
    for (size_t i = 0; i < ps.n[t]; i++) {
      if (w && ps.v[t][w - 1] == ps.v[t][i]) continue;
      const sim_resource *r = sim_store_at(s->store, (sim_rtype)t, (size_t)ps.v[t][i]);
      if (s->has_since && (!r || updated_ms(r) < s->since_ms)) continue;
      ps.v[t][w++] = ps.v[t][i];
    }
    s->pool[t] = ps.v[t];
    s->npool[t] = w;
  }
  return ps.oom ? -1 : 0;
}

void sim_xscope_free(sim_xscope *s) {
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    sim_xfilter_free(s->filters[t]);
    s->filters[t] = NULL;
    free(s->pool[t]);
    s->pool[t] = NULL;
    s->npool[t] = 0;
  }
}
