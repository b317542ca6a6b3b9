#include "worker/model/profile.h"

#include <ctype.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "worker/model/resources.h"

/* worker/profiles/{cerner,generic}.json, embedded at build time (profile_builtin.c). */
extern const char fx_profile_cerner_json[];
extern const char fx_profile_generic_json[];

static int fail(fx_err *err, const char *origin, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(fx_err *err, const char *origin, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return fx_err_set(err, FX_EINVAL, "%s: %s", origin, what);
}

/* A media type as a profile lists it: type/subtype of token characters, no
 * parameters. */
static int media_type_ok(const char *s) {
  const char *slash = strchr(s, '/');
  if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/')) return 0;
  for (const char *p = s; *p; p++)
    if (!(isalnum((unsigned char)*p) || strchr("/!#$&^_.+-", *p))) return 0;
  return 1;
}

/* types.Binary.content_types: which attachment forms to fetch. */
static int parse_content_types(json_t *v, const char *type, const char *origin, fx_type_rule *r,
                               fx_err *err) {
  if (!v) return 0;
  if (strcmp(type, "Binary") != 0)
    return fail(err, origin,
                "types.%s.content_types: only Binary takes content_types (the attachment forms "
                "to fetch)",
                type);
  if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 32)
    return fail(err, origin,
                "types.Binary.content_types: expected 1..32 media types such as "
                "\"application/pdf\" (leave it out to fetch every attachment)");
  if (!(r->content_types = calloc(json_array_size(v), sizeof *r->content_types)))
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  size_t i;
  json_t *t;
  json_array_foreach(v, i, t) {
    const char *s = json_string_value(t);
    if (!s || !media_type_ok(s))
      return fail(err, origin,
                  "types.Binary.content_types[%zu]: expected a media type such as "
                  "\"application/pdf\" (type/subtype, no parameters)",
                  i);
    char *low = strdup(s);
    if (!low) return fx_err_set(err, FX_ENOMEM, "out of memory");
    for (char *p = low; *p; p++) *p = (char)tolower((unsigned char)*p);
    r->content_types[r->n_content_types++] = low;
  }
  return 0;
}

static int parse_rule(json_t *o, const char *type, const char *origin, fx_type_rule *r,
                      fx_err *err) {
  if (!json_is_object(o)) return fail(err, origin, "types.%s: expected an object", type);
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    if (strcmp(key, "fetch") && strcmp(key, "search") && strcmp(key, "count") &&
        strcmp(key, "incremental") && strcmp(key, "accept") && strcmp(key, "content_types") &&
        strcmp(key, "optional"))
      return fail(err, origin,
                  "types.%s.%s: unknown field; a type takes fetch, search, count, incremental, "
                  "accept, optional, content_types (Binary)",
                  type, key);
  }
  const char *fetch = json_string_value(json_object_get(o, "fetch"));
  if (!fetch) return fail(err, origin, "types.%s.fetch: required: read, search, reference or none", type);
  if (strcmp(fetch, "read") == 0) r->mode = FX_FETCH_READ;
  else if (strcmp(fetch, "search") == 0) r->mode = FX_FETCH_SEARCH;
  else if (strcmp(fetch, "reference") == 0) r->mode = FX_FETCH_REFERENCE;
  else if (strcmp(fetch, "none") == 0) r->mode = FX_FETCH_NONE;
  else return fail(err, origin, "types.%s.fetch: '%s' is not read, search, reference or none", type, fetch);
  json_t *search = json_object_get(o, "search");
  if (r->mode == FX_FETCH_SEARCH) {
    const char *s = json_string_value(search);
    if (!s || !strstr(s, "{patient}") || strchr(s, '?') || strchr(s, '#'))
      return fail(err, origin,
                  "types.%s.search: a search needs a query string with {patient}, e.g. "
                  "\"patient={patient}\"",
                  type);
    if (!(r->search = strdup(s))) return fx_err_set(err, FX_ENOMEM, "out of memory");
  } else if (search) {
    return fail(err, origin, "types.%s.search: only a search type takes search", type);
  }
  json_t *count = json_object_get(o, "count");
  if (count && (!json_is_integer(count) || json_integer_value(count) < 1 ||
                json_integer_value(count) > 1000))
    return fail(err, origin, "types.%s.count: expected an integer from 1 to 1000", type);
  r->count = count ? (int)json_integer_value(count) : 0;
  json_t *inc = json_object_get(o, "incremental");
  if (inc && !json_is_boolean(inc))
    return fail(err, origin, "types.%s.incremental: expected true or false", type);
  r->incremental = inc && json_is_true(inc);
  json_t *opt = json_object_get(o, "optional");
  if (opt && !json_is_boolean(opt))
    return fail(err, origin, "types.%s.optional: expected true or false", type);
  r->optional = opt && json_is_true(opt);
  const char *accept = json_string_value(json_object_get(o, "accept"));
  if (accept && !(r->accept = strdup(accept))) return fx_err_set(err, FX_ENOMEM, "out of memory");
  return parse_content_types(json_object_get(o, "content_types"), type, origin, r, err);
}

/* A copy of a rule (the "*" rule, for each type it covers). */
static int copy_rule(const fx_type_rule *from, fx_type_rule *to, fx_err *err) {
  *to = *from;
  to->search = NULL;
  to->accept = NULL;
  to->content_types = NULL; /* Binary's own: never a "*" rule's */
  to->n_content_types = 0;
  to->optional = 1;
  if ((from->search && !(to->search = strdup(from->search))) ||
      (from->accept && !(to->accept = strdup(from->accept))))
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  return 0;
}

/* An array of resource type names (or, where star is allowed, "*": every
 * type fhirx knows) into a set. */
static int parse_type_list(json_t *v, const char *where, const char *origin, int star,
                           fx_types *out, fx_err *err) {
  if (star && json_is_string(v) && strcmp(json_string_value(v), "*") == 0) {
    for (int i = 0; i < FX_NTYPES; i++) fx_types_add(out, i);
    return 0;
  }
  if (!json_is_array(v))
    return fail(err, origin, "%s: expected an array of resource types%s", where,
                star ? " or \"*\"" : "");
  size_t i;
  json_t *t;
  json_array_foreach(v, i, t) {
    int idx = fx_resource_index(json_string_value(t));
    if (idx < 0)
      return fail(err, origin, "%s[%zu]: '%s' is not an R4 resource type", where, i,
                  json_string_value(t) ? json_string_value(t) : "(not a string)");
    fx_types_add(out, idx);
  }
  return 0;
}

/* "bulk": the server's Group $export. */
static int parse_bulk(json_t *o, const char *origin, fx_profile *p, fx_err *err) {
  if (!json_is_object(o)) return fail(err, origin, "bulk: expected an object");
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    if (strcmp(key, "description") && strcmp(key, "types") && strcmp(key, "not_alone") &&
        strcmp(key, "type_filter"))
      return fail(err, origin,
                  "bulk.%s: unknown field; bulk takes description, types, not_alone, type_filter",
                  key);
  }
  json_t *types = json_object_get(o, "types");
  if (!types) return fail(err, origin, "bulk.types: required: the types the server exports, or \"*\"");
  int rc = parse_type_list(types, "bulk.types", origin, 1, &p->bulk_types, err);
  p->bulk_any = json_is_string(types) && strcmp(json_string_value(types), "*") == 0;
  json_t *alone = json_object_get(o, "not_alone");
  if (!rc && alone) rc = parse_type_list(alone, "bulk.not_alone", origin, 0, &p->bulk_not_alone, err);
  json_t *tf = json_object_get(o, "type_filter");
  if (rc || !tf) return rc;
  if (!json_is_object(tf)) return fail(err, origin, "bulk.type_filter: expected an object");
  json_object_foreach(tf, key, v) {
    if (strcmp(key, "refused_types") && strcmp(key, "refused_params") &&
        strcmp(key, "one_per_type"))
      return fail(err, origin,
                  "bulk.type_filter.%s: unknown field; type_filter takes refused_types, "
                  "refused_params, one_per_type",
                  key);
  }
  json_t *rt = json_object_get(tf, "refused_types");
  if (rt && (rc = parse_type_list(rt, "bulk.type_filter.refused_types", origin, 0,
                                  &p->filter_refused_types, err)))
    return rc;
  json_t *one = json_object_get(tf, "one_per_type");
  if (one && !json_is_boolean(one))
    return fail(err, origin, "bulk.type_filter.one_per_type: expected true or false");
  p->filter_one_per_type = one && json_is_true(one);
  json_t *rp = json_object_get(tf, "refused_params");
  if (!rp) return 0;
  if (!json_is_array(rp))
    return fail(err, origin, "bulk.type_filter.refused_params: expected an array of names");
  size_t n = json_array_size(rp), i;
  if (n && !(p->filter_refused_params = calloc(n, sizeof *p->filter_refused_params)))
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  json_array_foreach(rp, i, v) {
    const char *name = json_string_value(v);
    if (!name || !*name)
      return fail(err, origin, "bulk.type_filter.refused_params[%zu]: expected a parameter name",
                  i);
    if (!(p->filter_refused_params[i] = strdup(name)))
      return fx_err_set(err, FX_ENOMEM, "out of memory");
    p->n_filter_refused_params++;
  }
  return 0;
}

static int parse_doc(json_t *doc, const char *origin, fx_profile *p, fx_err *err) {
  if (!json_is_object(doc)) return fail(err, origin, "expected a JSON object");
  const char *key;
  json_t *v;
  json_object_foreach(doc, key, v) {
    if (strcmp(key, "name") && strcmp(key, "description") && strcmp(key, "types") &&
        strcmp(key, "references") && strcmp(key, "bulk"))
      return fail(err, origin,
                  "%s: unknown field; a profile has name, description, types, references, bulk",
                  key);
  }
  const char *name = json_string_value(json_object_get(doc, "name"));
  if (!name) return fail(err, origin, "name: required");
  if (!(p->name = strdup(name))) return fx_err_set(err, FX_ENOMEM, "out of memory");
  json_t *types = json_object_get(doc, "types");
  if (!json_is_object(types)) return fail(err, origin, "types: required, an object");
  json_object_foreach(types, key, v) {
    if (strcmp(key, "*") == 0) continue; /* below, once the named types are known */
    int idx = fx_resource_index(key);
    if (idx < 0)
      return fail(err, origin,
                  "types.%s: not an R4 resource type (names are case-sensitive: Observation)",
                  key);
    int rc = parse_rule(v, key, origin, &p->types[idx], err);
    if (rc) return rc;
  }
  /* "*": the rule of every type the profile does not name, fetched only
   * when a job or the tenant's resources name it. */
  json_t *star = json_object_get(types, "*");
  if (star) {
    fx_type_rule any = {0};
    int rc = parse_rule(star, "*", origin, &any, err);
    for (int i = 0; !rc && i < FX_NTYPES; i++)
      if (!json_object_get(types, fx_type_names[i])) rc = copy_rule(&any, &p->types[i], err);
    free(any.search);
    free(any.accept);
    if (rc) return rc;
  }
  json_t *refs = json_object_get(doc, "references");
  if (refs) {
    json_t *follow = json_object_get(refs, "follow"), *depth = json_object_get(refs, "depth");
    if (!json_is_object(refs) || (follow && !json_is_array(follow)) ||
        (depth && (!json_is_integer(depth) || json_integer_value(depth) < 0 ||
                   json_integer_value(depth) > 5)))
      return fail(err, origin,
                  "references: expected {\"follow\": [types], \"depth\": 0..5}");
    if (follow) {
      int rc = parse_type_list(follow, "references.follow", origin, 0, &p->follow, err);
      if (rc) return rc;
    }
    p->depth = depth ? (int)json_integer_value(depth) : 1;
  }
  json_t *bulk = json_object_get(doc, "bulk");
  return bulk ? parse_bulk(bulk, origin, p, err) : 0;
}

int fx_profile_parse(const char *text, const char *origin, fx_profile **out, fx_err *err) {
  *out = NULL;
  json_error_t jerr;
  json_t *doc = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
  if (!doc)
    return fx_err_set(err, FX_EINVAL, "%s: line %d, column %d: %s", origin, jerr.line,
                      jerr.column, jerr.text);
  fx_profile *p = calloc(1, sizeof *p);
  int rc = p ? parse_doc(doc, origin, p, err) : fx_err_set(err, FX_ENOMEM, "out of memory");
  json_decref(doc);
  if (rc) {
    fx_profile_free(p);
    return rc;
  }
  *out = p;
  return 0;
}

int fx_profile_load(const char *name_or_path, fx_profile **out, fx_err *err) {
  if (strcmp(name_or_path, "cerner") == 0)
    return fx_profile_parse(fx_profile_cerner_json, "built-in profile cerner", out, err);
  if (strcmp(name_or_path, "generic") == 0)
    return fx_profile_parse(fx_profile_generic_json, "built-in profile generic", out, err);
  FILE *f = fopen(name_or_path, "rb");
  if (!f)
    return fx_err_set(err, FX_EIO,
                      "profile '%s' is neither a built-in profile (cerner, generic) nor a "
                      "readable file",
                      name_or_path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = n >= 0 && n < (1 << 20) ? malloc((size_t)n + 1) : NULL;
  size_t got = text ? fread(text, 1, (size_t)n, f) : 0;
  fclose(f);
  if (!text || got != (size_t)n) {
    free(text);
    return fx_err_set(err, FX_EIO, "cannot read profile %s", name_or_path);
  }
  text[n] = '\0';
  char origin[600];
  snprintf(origin, sizeof origin, "profile %s", name_or_path);
  int rc = fx_profile_parse(text, origin, out, err);
  free(text);
  return rc;
}

void fx_profile_free(fx_profile *p) {
  if (!p) return;
  for (int i = 0; i < FX_NTYPES; i++) {
    free(p->types[i].search);
    free(p->types[i].accept);
    for (size_t k = 0; k < p->types[i].n_content_types; k++) free(p->types[i].content_types[k]);
    free(p->types[i].content_types);
  }
  for (size_t i = 0; i < p->n_filter_refused_params; i++) free(p->filter_refused_params[i]);
  free(p->filter_refused_params);
  free(p->name);
  free(p);
}

fx_types fx_profile_patient_types(const fx_profile *p) {
  fx_types set = FX_TYPES_NONE;
  for (int i = 0; i < FX_NTYPES; i++)
    if (p->types[i].mode == FX_FETCH_READ || p->types[i].mode == FX_FETCH_SEARCH)
      fx_types_add(&set, i);
  return set;
}

int fx_profile_wants_attachment(const fx_profile *p, const char *content_type) {
  const fx_type_rule *r = &p->types[fx_resource_index("Binary")];
  if (!r->content_types || !content_type) return 1;
  size_t n = strcspn(content_type, ";");
  while (n && (content_type[n - 1] == ' ' || content_type[n - 1] == '\t')) n--;
  for (size_t i = 0; i < r->n_content_types; i++)
    if (strlen(r->content_types[i]) == n && strncasecmp(r->content_types[i], content_type, n) == 0)
      return 1;
  return 0;
}

static void attachment(const fx_profile *p, json_t *a, void (*fn)(void *, const char *),
                       void *arg) {
  const char *url = json_string_value(json_object_get(a, "url"));
  if (!url || json_object_get(a, "data")) return;
  if (!fx_profile_wants_attachment(p, json_string_value(json_object_get(a, "contentType")))) return;
  fn(arg, url);
}

void fx_profile_attachments(const fx_profile *p, json_t *res,
                            void (*fn)(void *arg, const char *url), void *arg) {
  const char *rt = json_string_value(json_object_get(res, "resourceType"));
  size_t i;
  json_t *item;
  if (rt && strcmp(rt, "DocumentReference") == 0) {
    json_array_foreach(json_object_get(res, "content"), i, item)
      attachment(p, json_object_get(item, "attachment"), fn, arg);
  } else if (rt && strcmp(rt, "DiagnosticReport") == 0) {
    json_array_foreach(json_object_get(res, "presentedForm"), i, item)
      attachment(p, item, fn, arg);
  }
}

fx_types fx_profile_default_types(const fx_profile *p) {
  fx_types set = fx_profile_patient_types(p);
  for (int i = 0; i < FX_NTYPES; i++)
    if (p->types[i].optional) fx_types_del(&set, i);
  return set;
}

/* Every type in tenants[i].resources must be one the profile can deliver:
 * fetched per patient, or exported by its Group $export. */
static int check_tenant_resources(const fx_tenant_conf *t, size_t ti, const fx_profile *p,
                                  fx_err *err) {
  fx_types usable = fx_types_or(fx_profile_patient_types(p), p->bulk_types);
  for (size_t j = 0; j < t->resources.n; j++) {
    int idx = fx_resource_index(t->resources.v[j]);
    if (fx_types_has(usable, idx)) continue;
    return fx_err_set(err, FX_EINVAL,
                      "tenants[%zu].resources[%zu]: profile %s neither fetches %s per patient nor "
                      "exports it in a Group $export%s; drop it, or use a profile that does "
                      "(tenants[].profile)",
                      ti, j, p->name, t->resources.v[j],
                      p->types[idx >= 0 ? idx : 0].mode == FX_FETCH_REFERENCE && idx >= 0
                          ? " (it is reached through references: set follow_references)"
                          : "");
  }
  return 0;
}

int fx_profile_set_load(const fx_config *cfg, fx_profile_set *set, fx_err *err) {
  memset(set, 0, sizeof *set);
  set->cfg = cfg;
  set->by_tenant = calloc(cfg->n_tenants ? cfg->n_tenants : 1, sizeof *set->by_tenant);
  set->owned = calloc(cfg->n_tenants ? cfg->n_tenants : 1, sizeof *set->owned);
  if (!set->by_tenant || !set->owned) return fx_err_set(err, FX_ENOMEM, "out of memory");
  for (size_t i = 0; i < cfg->n_tenants; i++) {
    const char *want = cfg->tenants[i].profile;
    /* Tenants naming the same profile share one copy. */
    for (size_t j = 0; j < i && !set->by_tenant[i]; j++)
      if (strcmp(cfg->tenants[j].profile, want) == 0) set->by_tenant[i] = set->by_tenant[j];
    if (!set->by_tenant[i]) {
      int rc = fx_profile_load(want, &set->by_tenant[i], err);
      if (rc) {
        fx_err_prefix(err, "tenants[%zu].profile", i);
        fx_profile_set_free(set);
        return rc;
      }
      set->owned[set->n_owned++] = set->by_tenant[i];
    }
    int rc = check_tenant_resources(&cfg->tenants[i], i, set->by_tenant[i], err);
    if (rc) {
      fx_profile_set_free(set);
      return rc;
    }
  }
  return 0;
}

void fx_profile_set_free(fx_profile_set *set) {
  for (size_t i = 0; set->owned && i < set->n_owned; i++) fx_profile_free(set->owned[i]);
  free(set->owned);
  free(set->by_tenant);
  memset(set, 0, sizeof *set);
}

const fx_profile *fx_profile_for(const fx_profile_set *set, const char *tenant) {
  for (size_t i = 0; set->cfg && i < set->cfg->n_tenants; i++)
    if (strcmp(set->cfg->tenants[i].id, tenant) == 0) return set->by_tenant[i];
  return NULL;
}

/* ---- what a tenant extracts under its profile ---- */

fx_types fx_tenant_types(const fx_tenant_conf *t, const fx_profile *p) {
  if (!t->resources.n) return fx_profile_default_types(p);
  return fx_types_and(fx_tenant_extract_types(t, p), fx_profile_patient_types(p));
}

fx_types fx_tenant_extract_types(const fx_tenant_conf *t, const fx_profile *p) {
  if (!t->resources.n) return fx_profile_default_types(p);
  fx_types set = FX_TYPES_NONE;
  for (size_t i = 0; i < t->resources.n; i++) fx_types_add(&set, fx_resource_index(t->resources.v[i]));
  return set;
}

char *fx_tenant_scope(const fx_tenant_conf *t, const fx_profile *p) {
  size_t cap = 64;
  for (size_t i = 0; i < t->scopes.n; i++) cap += strlen(t->scopes.v[i]) + 1;
  fx_types want = fx_tenant_extract_types(t, p);
  if (t->follow_references && p->depth > 0) want = fx_types_or(want, p->follow);
  cap += (size_t)fx_types_count(want) * 48;
  char *out = calloc(1, cap);
  if (!out) return NULL;
  size_t used = 0;
  if (t->scopes.n) {
    for (size_t i = 0; i < t->scopes.n; i++)
      used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? " " : "", t->scopes.v[i]);
    return out;
  }
  for (int i = fx_types_next(want, 0); i >= 0; i = fx_types_next(want, i + 1)) {
    char scope[96];
    fx_scope_for(fx_type_names[i], t->smart_version, scope, sizeof scope);
    used += (size_t)snprintf(out + used, cap - used, "%s%s", used ? " " : "", scope);
  }
  return out;
}
