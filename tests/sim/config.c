#include "tests/sim/config.h"

#include "tests/sim/map.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PATIENTS 1000000L
#define MAX_EXPIRES_IN 86400L
#define MAX_BINARY_BYTES 67108864L /* 64 MiB: its base64 JSON form must still fit in memory */
#define MAX_SCALE 100.0
#define MAX_GROUP_MEMBERS 100000L /* Cerner's groups hold up to 20,000 */
#define FIRST_SYNTHETIC_ID 20000001L

/* Every object in the file is checked against its list of allowed keys so a
 * typo ("expire_in") fails loudly instead of silently using a default. */
static const char *const top_keys[] = {"seed", "tenants", NULL};
static const char *const tenant_keys[] = {
    "id",           "sandbox",           "patients",           "expires_in",
    "auth_methods", "signing_algs",      "clients",            "per_patient",
    "per_patient_scale", "per_patient_vary", "practitioners",  "organizations",
    "locations",    "foreign_references", "binary_min_bytes",  "binary_max_bytes",
    "binary_large_bytes", "binary_large_every", "binary_signed_urls", "paging_repeats",
    "paging_short_pages",
    "paging_outcomes", "groups", "export", "reference_server", NULL};
static const char *const refserver_keys[] = {"extra_types", "rate_limit", "scopes", NULL};
static const char *const rate_limit_keys[] = {"requests", "window_ms", "block_ms", NULL};
static const char *const group_keys[] = {"id", "patients", "first", "count", NULL};
static const char *const export_keys[] = {"duration_ms", "retry_after_s", "file_max_resources",
                                          "error_file", NULL};
static const char *const export_control_keys[] = {
    "duration_ms", "retry_after_s", "file_max_resources", "error_file", "fail_next", NULL};
static const char *const client_keys[] = {"client_id", "jwks_file", "jwks_url", "jwks",
                                          "scopes",    NULL};

static int fail(char *err, size_t n, const char *where, const char *what) {
  snprintf(err, n, "%s%s%s", where, *where ? ": " : "", what);
  return -1;
}

static int check_keys(json_t *o, const char *const *allowed, const char *where, char *err,
                      size_t n) {
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    bool ok = false;
    for (size_t i = 0; allowed[i] && !ok; i++) ok = strcmp(allowed[i], key) == 0;
    if (!ok) {
      snprintf(err, n, "%s%sunknown key \"%s\"", where, *where ? ": " : "", key);
      return -1;
    }
  }
  return 0;
}

static int get_long(json_t *o, const char *key, long min, long max, long def,
                    const char *where, long *out, char *err, size_t n) {
  json_t *v = json_object_get(o, key);
  *out = def;
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
    snprintf(err, n, "%s.%s: expected an integer from %ld to %ld", where, key, min, max);
    return -1;
  }
  *out = (long)json_integer_value(v);
  return 0;
}

static int get_bool(json_t *o, const char *key, bool *out, const char *where, char *err,
                    size_t n) {
  json_t *v = json_object_get(o, key);
  if (!v) return 0;
  if (!json_is_boolean(v)) {
    snprintf(err, n, "%s.%s: expected true or false", where, key);
    return -1;
  }
  *out = json_is_true(v);
  return 0;
}

static int get_unsigned(json_t *o, const char *key, long min, long max, unsigned *out,
                        const char *where, char *err, size_t n) {
  long v;
  if (get_long(o, key, min, max, (long)*out, where, &v, err, n)) return -1;
  *out = (unsigned)v;
  return 0;
}

/* "per_patient": {"Observation": 30, ...} overrides the defaults type by
 * type; "per_patient_scale" then multiplies every count. */
static int parse_per_patient(json_t *o, const char *where, sim_data_knobs *k, char *err,
                             size_t n) {
  json_t *pp = json_object_get(o, "per_patient");
  if (pp && !json_is_object(pp)) {
    snprintf(err, n, "%s.per_patient: expected an object of type name -> count", where);
    return -1;
  }
  const char *type;
  json_t *v;
  json_object_foreach(pp, type, v) {
    int t = sim_rtype_from_name(type);
    if (t < 0 || !sim_rtype_per_patient((sim_rtype)t)) {
      snprintf(err, n,
               "%s.per_patient: \"%s\" is not a per-patient resource type (Patient, "
               "Practitioner, Organization, Location and Binary have their own knobs)",
               where, type);
      return -1;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > SIM_PP_MAX) {
      snprintf(err, n, "%s.per_patient.%s: expected an integer from 0 to %d", where, type,
               SIM_PP_MAX);
      return -1;
    }
    k->per_patient[t] = (unsigned)json_integer_value(v);
  }
  json_t *scale = json_object_get(o, "per_patient_scale");
  if (!scale) return 0;
  double f = json_number_value(scale);
  if (!json_is_number(scale) || f < 0 || f > MAX_SCALE) {
    snprintf(err, n, "%s.per_patient_scale: expected a number from 0 to %g", where, MAX_SCALE);
    return -1;
  }
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    double scaled = floor(k->per_patient[t] * f + 0.5);
    if (scaled > SIM_PP_MAX) {
      snprintf(err, n, "%s.per_patient_scale: %s would have %.0f per patient, more than %d",
               where, sim_rtype_name((sim_rtype)t), scaled, SIM_PP_MAX);
      return -1;
    }
    k->per_patient[t] = (unsigned)scaled;
  }
  return 0;
}

static int parse_data_knobs(json_t *o, const char *where, sim_data_knobs *k, char *err,
                            size_t n) {
  sim_data_knobs_default(k);
  if (parse_per_patient(o, where, k, err, n) ||
      get_bool(o, "per_patient_vary", &k->per_patient_vary, where, err, n) ||
      get_unsigned(o, "practitioners", 1, 100000, &k->practitioners, where, err, n) ||
      get_unsigned(o, "organizations", 1, 10000, &k->organizations, where, err, n) ||
      get_unsigned(o, "locations", 1, 10000, &k->locations, where, err, n) ||
      get_bool(o, "foreign_references", &k->foreign_references, where, err, n) ||
      get_unsigned(o, "binary_min_bytes", 128, MAX_BINARY_BYTES, &k->binary_min_bytes, where,
                   err, n) ||
      get_unsigned(o, "binary_max_bytes", 128, MAX_BINARY_BYTES, &k->binary_max_bytes, where,
                   err, n) ||
      get_unsigned(o, "binary_large_bytes", 128, MAX_BINARY_BYTES, &k->binary_large_bytes,
                   where, err, n) ||
      get_unsigned(o, "binary_large_every", 0, 1000000, &k->binary_large_every, where, err,
                   n) ||
      get_bool(o, "binary_signed_urls", &k->binary_signed_urls, where, err, n) ||
      get_bool(o, "paging_repeats", &k->paging_repeats, where, err, n) ||
      get_bool(o, "paging_short_pages", &k->paging_short_pages, where, err, n) ||
      get_bool(o, "paging_outcomes", &k->paging_outcomes, where, err, n))
    return -1;
  if (k->binary_max_bytes < k->binary_min_bytes) {
    snprintf(err, n, "%s.binary_max_bytes: smaller than binary_min_bytes (%u)", where,
             k->binary_min_bytes);
    return -1;
  }
  return 0;
}

/* Reads an optional array of non-empty strings; `def` (NULL-terminated) is
 * used when the key is absent. */
static int get_strv(json_t *o, const char *key, const char *const *def, const char *where,
                    sim_strv *out, char *err, size_t n) {
  json_t *v = json_object_get(o, key);
  *out = (sim_strv){0};
  if (!v) {
    for (size_t i = 0; def && def[i]; i++)
      if (sim_strv_push(out, def[i]) != 0) return fail(err, n, where, "out of memory");
    return 0;
  }
  if (!json_is_array(v)) goto bad;
  size_t i;
  json_t *s;
  json_array_foreach(v, i, s) {
    if (!json_is_string(s) || !*json_string_value(s)) goto bad;
    if (sim_strv_push(out, json_string_value(s)) != 0) {
      sim_strv_free(out);
      return fail(err, n, where, "out of memory");
    }
  }
  return 0;
bad:
  sim_strv_free(out);
  snprintf(err, n, "%s.%s: expected an array of non-empty strings", where, key);
  return -1;
}

/* Returns the string value of an optional key, NULL when absent; -1 in *rc
 * when present but not a non-empty string. */
static const char *opt_str(json_t *o, const char *key, const char *where, int *rc,
                           char *err, size_t n) {
  json_t *v = json_object_get(o, key);
  if (!v) return NULL;
  if (!json_is_string(v) || !*json_string_value(v)) {
    snprintf(err, n, "%s.%s: expected a non-empty string", where, key);
    *rc = -1;
    return NULL;
  }
  return json_string_value(v);
}

static int check_client_id(const char *id, const char *where, char *err, size_t n) {
  if (!id) return fail(err, n, where, "client_id: required non-empty string");
  /* Real servers issue long ids: the SMART reference server's is a signed
   * JWT carrying the JWKS (557-1,057+ characters). */
  if (strlen(id) > SIM_CLIENT_ID_MAX)
    return fail(err, n, where, "client_id: longer than 16384 characters");
  for (const unsigned char *p = (const unsigned char *)id; *p; p++)
    if (*p < 0x21 || *p == 0x7f) return fail(err, n, where, "client_id: contains whitespace");
  return 0;
}

/* Exactly one JWKS source, because a real registration has exactly one. */
static int parse_jwks_source(json_t *obj, const char *where, sim_client *c, char *err,
                             size_t n) {
  int rc = 0;
  const char *file = opt_str(obj, "jwks_file", where, &rc, err, n);
  const char *url = opt_str(obj, "jwks_url", where, &rc, err, n);
  json_t *inl = json_object_get(obj, "jwks");
  if (rc) return rc;
  if ((file != NULL) + (url != NULL) + (inl != NULL) != 1)
    return fail(err, n, where, "exactly one of jwks_file, jwks_url, jwks is required");
  if (url && strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
    return fail(err, n, where, "jwks_url: must start with http:// or https://");
  if (inl && (!json_is_object(inl) || !json_is_array(json_object_get(inl, "keys"))))
    return fail(err, n, where, "jwks: expected an object with a \"keys\" array");
  c->jwks_file = sim_strdup(file);
  c->jwks_url = sim_strdup(url);
  c->jwks = inl ? json_deep_copy(inl) : NULL;
  if ((file && !c->jwks_file) || (url && !c->jwks_url) || (inl && !c->jwks))
    return fail(err, n, where, "out of memory");
  return 0;
}

int sim_client_parse(json_t *obj, const char *where, sim_client *out, char *err,
                     size_t errlen) {
  *out = (sim_client){0};
  if (!json_is_object(obj)) return fail(err, errlen, where, "expected an object");
  if (check_keys(obj, client_keys, where, err, errlen)) return -1;
  int rc = 0;
  const char *id = opt_str(obj, "client_id", where, &rc, err, errlen);
  if (rc || check_client_id(id, where, err, errlen)) return -1;
  if (!json_is_array(json_object_get(obj, "scopes")))
    return fail(err, errlen, where, "scopes: required array of strings");
  out->client_id = strdup(id);
  if (!out->client_id || parse_jwks_source(obj, where, out, err, errlen) ||
      get_strv(obj, "scopes", NULL, where, &out->scopes, err, errlen)) {
    if (!out->client_id) fail(err, errlen, where, "out of memory");
    sim_client_clear(out);
    return -1;
  }
  return 0;
}

int sim_client_copy(sim_client *dst, const sim_client *src) {
  *dst = (sim_client){0};
  dst->client_id = sim_strdup(src->client_id);
  dst->jwks_file = sim_strdup(src->jwks_file);
  dst->jwks_url = sim_strdup(src->jwks_url);
  dst->jwks = src->jwks ? json_deep_copy(src->jwks) : NULL;
  int rc = sim_strv_copy(&dst->scopes, &src->scopes);
  if (rc || !dst->client_id || (src->jwks_file && !dst->jwks_file) ||
      (src->jwks_url && !dst->jwks_url) || (src->jwks && !dst->jwks)) {
    sim_client_clear(dst);
    return -1;
  }
  return 0;
}

void sim_client_clear(sim_client *c) {
  free(c->client_id);
  free(c->jwks_file);
  free(c->jwks_url);
  json_decref(c->jwks);
  sim_strv_free(&c->scopes);
  *c = (sim_client){0};
}

bool sim_tenant_id_valid(const char *id) {
  size_t len = strlen(id);
  if (len == 0 || len > 64) return false;
  for (const char *p = id; *p; p++) {
    char c = *p;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
          c == '-' || c == '.' || c == '_'))
      return false;
  }
  return true;
}

static int parse_clients(json_t *arr, const char *where, sim_tenant_cfg *t, char *err,
                         size_t n) {
  if (!arr) return 0;
  if (!json_is_array(arr)) return fail(err, n, where, "clients: expected an array");
  t->clients = calloc(json_array_size(arr) + 1, sizeof *t->clients);
  if (!t->clients) return fail(err, n, where, "out of memory");
  for (size_t i = 0; i < json_array_size(arr); i++) {
    char cw[128];
    snprintf(cw, sizeof cw, "%s.clients[%zu]", where, i);
    sim_client *c = &t->clients[t->nclients];
    if (sim_client_parse(json_array_get(arr, i), cw, c, err, n)) return -1;
    t->nclients++;
    for (size_t j = 0; j + 1 < t->nclients; j++)
      if (strcmp(t->clients[j].client_id, c->client_id) == 0)
        return fail(err, n, cw, "client_id: duplicate within the tenant");
  }
  return 0;
}

/* ---- Bulk Data: groups and export settings ---- */

void sim_export_settings_default(sim_export_settings *s) {
  *s = (sim_export_settings){.duration_ms = 2000, .retry_after_s = 1,
                             .file_max_resources = 1000, .error_file = false};
}

bool sim_group_id_valid(const char *id) {
  size_t len = strlen(id);
  if (len == 0 || len > 64) return false;
  for (const char *p = id; *p; p++)
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '.'))
      return false;
  return true;
}

/* One integer setting; `where` may be "" (control API), then the message
 * starts with the key. */
static int export_long(json_t *o, const char *key, long min, long max, const char *where,
                       long *out, unsigned bit, unsigned *set, char *err, size_t n) {
  json_t *v = json_object_get(o, key);
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
    snprintf(err, n, "%s%s%s: expected an integer from %ld to %ld", where, *where ? "." : "", key,
             min, max);
    return -1;
  }
  *out = (long)json_integer_value(v);
  *set |= bit;
  return 0;
}

static int export_bool(json_t *o, const char *key, const char *where, bool *out, unsigned bit,
                       unsigned *set, char *err, size_t n) {
  json_t *v = json_object_get(o, key);
  if (!v) return 0;
  if (!json_is_boolean(v)) {
    snprintf(err, n, "%s%s%s: expected true or false", where, *where ? "." : "", key);
    return -1;
  }
  *out = json_is_true(v);
  *set |= bit;
  return 0;
}

int sim_export_settings_parse(json_t *o, const char *where, sim_export_settings *out,
                              bool *fail_next, unsigned *set, char *err, size_t errlen) {
  sim_export_settings s = *out;
  bool fail_once = false;
  *set = 0;
  if (!json_is_object(o)) return fail(err, errlen, where, "expected an object");
  if (check_keys(o, fail_next ? export_control_keys : export_keys, where, err, errlen) ||
      export_long(o, "duration_ms", 0, 86400000L, where, &s.duration_ms, SIM_XSET_DURATION, set,
                  err, errlen) ||
      export_long(o, "retry_after_s", 0, 86400L, where, &s.retry_after_s, SIM_XSET_RETRY_AFTER,
                  set, err, errlen) ||
      export_long(o, "file_max_resources", 1, 10000000L, where, &s.file_max_resources,
                  SIM_XSET_FILE_MAX, set, err, errlen) ||
      export_bool(o, "error_file", where, &s.error_file, SIM_XSET_ERROR_FILE, set, err, errlen) ||
      (fail_next && export_bool(o, "fail_next", where, &fail_once, SIM_XSET_FAIL_NEXT, set, err,
                                errlen)))
    return -1;
  *out = s;
  if (fail_next) *fail_next = fail_once;
  return 0;
}

/* ---- reference server mode ---- */

const char *const sim_ref_extra_names[SIM_REF_EXTRA_COUNT] = {"Claim", "ExplanationOfBenefit",
                                                               "ImagingStudy"};

int sim_ref_extra_from_name(const char *name) {
  for (int i = 0; name && i < SIM_REF_EXTRA_COUNT; i++)
    if (strcmp(sim_ref_extra_names[i], name) == 0) return i;
  return -1;
}

/* Scopes a registered client gets: system/<T>.read for every type the
 * simulator serves or exports, and Group. */
static int default_ref_scopes(sim_strv *out) {
  char scope[96];
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    snprintf(scope, sizeof scope, "system/%s.read", sim_rtype_name((sim_rtype)t));
    if (sim_strv_push(out, scope)) return -1;
  }
  for (int k = 0; k < SIM_REF_EXTRA_COUNT; k++) {
    snprintf(scope, sizeof scope, "system/%s.read", sim_ref_extra_names[k]);
    if (sim_strv_push(out, scope)) return -1;
  }
  return sim_strv_push(out, "system/Group.read");
}

/* "reference_server": true, or an object with every key optional. The
 * defaults are the real server's: 60 requests per minute per route, then a
 * 5 minute block (lib.ts rateLimiter). */
static int parse_refserver(json_t *o, const char *where, sim_refserver_cfg *r, char *err,
                           size_t n) {
  char rw[96];
  snprintf(rw, sizeof rw, "%s.reference_server", where);
  *r = (sim_refserver_cfg){.extra = {2, 2, 1}, .rl_requests = 60, .rl_window_ms = 60000,
                           .rl_block_ms = 300000};
  if (!o || json_is_false(o)) return 0;
  r->enabled = true;
  if (json_is_true(o)) return default_ref_scopes(&r->scopes) ? fail(err, n, rw, "out of memory") : 0;
  if (!json_is_object(o)) return fail(err, n, rw, "expected true, false or an object");
  if (check_keys(o, refserver_keys, rw, err, n)) return -1;
  json_t *extra = json_object_get(o, "extra_types");
  if (extra && !json_is_object(extra)) {
    snprintf(err, n, "%s.extra_types: expected an object of type name -> count per patient", rw);
    return -1;
  }
  const char *type;
  json_t *v;
  json_object_foreach(extra, type, v) {
    int k = sim_ref_extra_from_name(type);
    if (k < 0) {
      snprintf(err, n, "%s.extra_types: \"%.64s\" is not one of Claim, ExplanationOfBenefit, "
               "ImagingStudy", rw, type);
      return -1;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000) {
      snprintf(err, n, "%s.extra_types.%s: expected an integer from 0 to 1000", rw, type);
      return -1;
    }
    r->extra[k] = (long)json_integer_value(v);
  }
  json_t *rl = json_object_get(o, "rate_limit");
  if (rl) {
    char lw[128];
    snprintf(lw, sizeof lw, "%s.rate_limit", rw);
    if (!json_is_object(rl)) return fail(err, n, lw, "expected an object");
    if (check_keys(rl, rate_limit_keys, lw, err, n) ||
        get_long(rl, "requests", 0, 1000000, r->rl_requests, lw, &r->rl_requests, err, n) ||
        get_long(rl, "window_ms", 1, 86400000L, r->rl_window_ms, lw, &r->rl_window_ms, err, n) ||
        get_long(rl, "block_ms", 1, 86400000L, r->rl_block_ms, lw, &r->rl_block_ms, err, n))
      return -1;
  }
  if (json_object_get(o, "scopes")) return get_strv(o, "scopes", NULL, rw, &r->scopes, err, n);
  return default_ref_scopes(&r->scopes) ? fail(err, n, rw, "out of memory") : 0;
}

/* A group member given by id must be a patient the tenant will have:
 * a synthetic id within `patients`, or a sandbox id on a sandbox tenant. */
static bool member_exists(const sim_tenant_cfg *t, const char *id) {
  if (t->sandbox && sim_sandbox_patient_id(id)) return true;
  char *end;
  long v = strtol(id, &end, 10);
  return *id >= '1' && *id <= '9' && !*end && v >= FIRST_SYNTHETIC_ID &&
         v < FIRST_SYNTHETIC_ID + t->patients;
}

static int parse_group_members(json_t *arr, const char *gw, const sim_tenant_cfg *t,
                               sim_group_cfg *g, char *err, size_t n) {
  if (!json_is_array(arr) || json_array_size(arr) > (size_t)MAX_GROUP_MEMBERS) {
    snprintf(err, n, "%s.patients: expected an array of at most %ld patient ids", gw,
             MAX_GROUP_MEMBERS);
    return -1;
  }
  sim_map seen;
  sim_map_init(&seen, NULL);
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < json_array_size(arr); i++) {
    const char *id = json_string_value(json_array_get(arr, i));
    if (!id || !member_exists(t, id)) {
      snprintf(err, n,
               "%s.patients[%zu]: expected the id of a patient of this tenant (20000001.. "
               "within \"patients\", or a sandbox patient when \"sandbox\" is true)",
               gw, i);
      rc = -1;
    } else if (sim_map_get(&seen, id)) {
      snprintf(err, n, "%s.patients[%zu]: patient %s is listed twice", gw, i, id);
      rc = -1;
    } else if (sim_map_put(&seen, id, (void *)1) != 0 || sim_strv_push(&g->patients, id) != 0) {
      rc = fail(err, n, gw, "out of memory");
    }
  }
  sim_map_free(&seen);
  return rc;
}

static int parse_group(json_t *o, const char *gw, const sim_tenant_cfg *t, sim_group_cfg *g,
                       char *err, size_t n) {
  if (!json_is_object(o)) return fail(err, n, gw, "expected an object");
  if (check_keys(o, group_keys, gw, err, n)) return -1;
  json_t *id = json_object_get(o, "id");
  if (!json_is_string(id) || !sim_group_id_valid(json_string_value(id))) {
    snprintf(err, n, "%s.id: required string of 1-64 characters [A-Za-z0-9.-]", gw);
    return -1;
  }
  if (!(g->id = strdup(json_string_value(id)))) return fail(err, n, gw, "out of memory");
  json_t *patients = json_object_get(o, "patients");
  bool range = json_object_get(o, "first") || json_object_get(o, "count");
  if ((patients != NULL) == range)
    return fail(err, n, gw, "exactly one of \"patients\" or \"first\" + \"count\" is required");
  if (patients) return parse_group_members(patients, gw, t, g, err, n);
  if (t->patients < 1)
    return fail(err, n, gw, "first/count: the tenant has no synthetic patients");
  if (get_long(o, "first", 1, t->patients, 0, gw, &g->first, err, n) ||
      get_long(o, "count", 1, MAX_GROUP_MEMBERS, 0, gw, &g->count, err, n))
    return -1;
  if (!g->first || !g->count)
    return fail(err, n, gw, "first and count are both required");
  if (g->first + g->count - 1 > t->patients) {
    snprintf(err, n, "%s.count: patients %ld..%ld do not exist (the tenant has %ld)", gw,
             g->first, g->first + g->count - 1, t->patients);
    return -1;
  }
  return 0;
}

static int parse_groups(json_t *arr, const char *where, sim_tenant_cfg *t, char *err, size_t n) {
  if (!arr) return 0;
  if (!json_is_array(arr)) return fail(err, n, where, "groups: expected an array");
  t->groups = calloc(json_array_size(arr) + 1, sizeof *t->groups);
  if (!t->groups) return fail(err, n, where, "out of memory");
  for (size_t i = 0; i < json_array_size(arr); i++) {
    char gw[128];
    snprintf(gw, sizeof gw, "%s.groups[%zu]", where, i);
    sim_group_cfg *g = &t->groups[t->ngroups++];
    if (parse_group(json_array_get(arr, i), gw, t, g, err, n)) return -1;
    for (size_t j = 0; j + 1 < t->ngroups; j++)
      if (strcmp(t->groups[j].id, g->id) == 0)
        return fail(err, n, gw, "id: duplicate group id within the tenant");
  }
  return 0;
}

static int parse_tenant(json_t *o, const char *where, sim_tenant_cfg *t, char *err,
                        size_t n) {
  static const char *const def_methods[] = {"private_key_jwt", NULL};
  static const char *const def_algs[] = {"RS384", "ES384", NULL};
  if (!json_is_object(o)) return fail(err, n, where, "expected an object");
  if (check_keys(o, tenant_keys, where, err, n)) return -1;
  json_t *id = json_object_get(o, "id");
  if (!json_is_string(id) || !sim_tenant_id_valid(json_string_value(id))) {
    snprintf(err, n, "%s.id: required string of 1-64 characters [A-Za-z0-9._-]", where);
    return -1;
  }
  if (!(t->id = strdup(json_string_value(id)))) return fail(err, n, where, "out of memory");
  json_t *sb = json_object_get(o, "sandbox");
  if (sb && !json_is_boolean(sb)) {
    snprintf(err, n, "%s.sandbox: expected true or false", where);
    return -1;
  }
  t->sandbox = json_is_true(sb);
  if (get_long(o, "patients", 0, MAX_PATIENTS, 0, where, &t->patients, err, n) ||
      get_long(o, "expires_in", 1, MAX_EXPIRES_IN, 570, where, &t->expires_in, err, n) ||
      get_strv(o, "auth_methods", def_methods, where, &t->auth_methods, err, n) ||
      get_strv(o, "signing_algs", def_algs, where, &t->signing_algs, err, n) ||
      parse_data_knobs(o, where, &t->data, err, n))
    return -1;
  sim_export_settings_default(&t->export_settings);
  json_t *xs = json_object_get(o, "export");
  char xw[96];
  unsigned set;
  snprintf(xw, sizeof xw, "%s.export", where);
  if ((xs && sim_export_settings_parse(xs, xw, &t->export_settings, NULL, &set, err, n)) ||
      parse_groups(json_object_get(o, "groups"), where, t, err, n) ||
      parse_refserver(json_object_get(o, "reference_server"), where, &t->ref, err, n))
    return -1;
  return parse_clients(json_object_get(o, "clients"), where, t, err, n);
}

static int parse_top(json_t *root, sim_config *c, char *err, size_t n) {
  if (!json_is_object(root)) return fail(err, n, "", "top level: expected an object");
  if (check_keys(root, top_keys, "", err, n)) return -1;
  json_t *seed = json_object_get(root, "seed");
  if (seed && (!json_is_integer(seed) || json_integer_value(seed) < 0))
    return fail(err, n, "seed", "expected a non-negative integer");
  c->seed = seed ? (uint64_t)json_integer_value(seed) : 0;
  json_t *ts = json_object_get(root, "tenants");
  if (!json_is_array(ts) || json_array_size(ts) == 0)
    return fail(err, n, "tenants", "required non-empty array");
  c->tenants = calloc(json_array_size(ts), sizeof *c->tenants);
  if (!c->tenants) return fail(err, n, "tenants", "out of memory");
  for (size_t i = 0; i < json_array_size(ts); i++) {
    char where[64];
    snprintf(where, sizeof where, "tenants[%zu]", i);
    c->ntenants++;
    if (parse_tenant(json_array_get(ts, i), where, &c->tenants[i], err, n)) return -1;
    for (size_t j = 0; j < i; j++)
      if (strcmp(c->tenants[j].id, c->tenants[i].id) == 0)
        return fail(err, n, where, "id: duplicate tenant id");
  }
  return 0;
}

int sim_config_load(const char *path, sim_config *out, char *err, size_t errlen) {
  *out = (sim_config){0};
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    snprintf(err, errlen, "%s: line %d column %d: %s", path, jerr.line, jerr.column, jerr.text);
    return -1;
  }
  int rc = parse_top(root, out, err, errlen);
  json_decref(root);
  if (rc) sim_config_free(out);
  return rc;
}

void sim_config_free(sim_config *c) {
  for (size_t i = 0; i < c->ntenants; i++) {
    sim_tenant_cfg *t = &c->tenants[i];
    free(t->id);
    sim_strv_free(&t->auth_methods);
    sim_strv_free(&t->signing_algs);
    for (size_t j = 0; j < t->nclients; j++) sim_client_clear(&t->clients[j]);
    free(t->clients);
    for (size_t j = 0; j < t->ngroups; j++) {
      free(t->groups[j].id);
      sim_strv_free(&t->groups[j].patients);
    }
    free(t->groups);
    sim_strv_free(&t->ref.scopes);
  }
  free(c->tenants);
  *c = (sim_config){0};
}
