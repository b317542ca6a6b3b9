/* Fault list and Retry-After ledger of a tenant (see fault.h). Answers are
 * shaped in fault_body.c; http.c decides when each stage runs. */
#include "tests/sim/fault.h"

#include "tests/sim/state.h"
#include "tests/sim/util.h"

#include <curl/curl.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DELAY_MS 600000L
#define MAX_NAME 100
#define MAX_PATH 256
#define MAX_ORIGIN 200
#define MAX_DETAILS 100 /* violations listed in full; later ones are only counted */

static const char *const target_names[SIM_TARGET_COUNT] = {"token", "discovery", "fhir"};

const char *sim_target_name(sim_target t) { return target_names[t]; }

int sim_target_from_name(const char *name) {
  for (int i = 0; i < SIM_TARGET_COUNT; i++)
    if (strcmp(target_names[i], name) == 0) return i;
  return -1;
}

void sim_fault_effect_clear(sim_fault_effect *e) {
  free(e->content_type);
  free(e->body);
  json_decref(e->headers);
  free(e->foreign_next);
  free(e->foreign_references);
  free(e->next_segment);
  *e = (sim_fault_effect){.retry_after = -1};
}

void sim_fault_free(sim_fault *f) {
  free(f->name);
  free(f->path);
  json_decref(f->spec);
  sim_fault_effect_clear(&f->fx);
  *f = (sim_fault){0};
}

bool sim_fault_replaces(const sim_fault_effect *e) {
  return e->status != 0 || e->retry_after >= 0 || e->malformed || e->nest_depth > 0 ||
         e->huge_bytes > 0;
}

/* ---- parsing ---- */

static const char *const fault_keys[] = {
    "target",     "name",         "path",         "ratio",          "seed",
    "count",      "status",       "content_type", "body",           "headers",
    "delay_ms",   "delay_ms_min", "delay_ms_max", "retry_after",    "retry_after_date",
    "reset",      "truncate",     "malformed",    "drip_bytes_per_s", "nest_depth",
    "huge_bytes", "foreign_next", "foreign_references", "echo", "next_segment", NULL};

/* The first key (in this order) whose effect replaces the normal answer,
 * or rewrites it: the two groups exclude each other and reset excludes
 * both. NULL when there is none. */
static const char *replacing_key(const sim_fault_effect *fx) {
  return fx->status && fx->retry_after < 0 ? "status"
         : fx->retry_after >= 0            ? "retry_after"
         : fx->malformed                   ? "malformed"
         : fx->nest_depth                  ? "nest_depth"
         : fx->huge_bytes                  ? "huge_bytes"
         : fx->body                        ? "body"
         : fx->content_type                ? "content_type"
                                           : NULL;
}

static const char *rewriting_key(const sim_fault_effect *fx) {
  return fx->truncate             ? "truncate"
         : fx->foreign_next       ? "foreign_next"
         : fx->foreign_references ? "foreign_references"
         : fx->next_segment       ? "next_segment"
                                  : NULL;
}

typedef struct perr {
  char *buf;
  size_t len;
} perr;

static int fail(perr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(perr *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->buf, e->len, fmt, ap);
  va_end(ap);
  return -1;
}

/* Integer member in [lo, hi] into *out (left alone when absent). */
static int get_int(json_t *o, const char *key, long long lo, long long hi, long long *out,
                   perr *e) {
  const json_t *v = json_object_get(o, key);
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return fail(e, "%s: expected an integer from %lld to %lld", key, lo, hi);
  *out = json_integer_value(v);
  return 0;
}

static int get_bool(json_t *o, const char *key, bool *out, perr *e) {
  const json_t *v = json_object_get(o, key);
  if (!v) return 0;
  if (!json_is_boolean(v)) return fail(e, "%s: expected true or false", key);
  *out = json_is_true(v);
  return 0;
}

/* A string of 1..max printable ASCII characters (no spaces) into *out. */
static int get_token_str(json_t *o, const char *key, size_t max, char **out, perr *e) {
  const json_t *v = json_object_get(o, key);
  if (!v) return 0;
  const char *s = json_string_value(v);
  bool ok = s && *s && strlen(s) <= max;
  for (const char *p = s; ok && *p; p++) ok = *p > ' ' && *p < 127;
  if (!ok)
    return fail(e, "%s: expected 1 to %zu printable characters without spaces", key, max);
  if (!(*out = strdup(s))) return fail(e, "out of memory");
  return 0;
}

/* scheme://host[:port] and nothing else: what a foreign link points at. */
static int get_origin(json_t *o, const char *key, char **out, perr *e) {
  const json_t *v = json_object_get(o, key);
  if (!v) return 0;
  const char *s = json_string_value(v);
  const char *host = !s                               ? NULL
                     : strncmp(s, "http://", 7) == 0  ? s + 7
                     : strncmp(s, "https://", 8) == 0 ? s + 8
                                                      : NULL;
  bool ok = host && *host && strlen(s) <= MAX_ORIGIN;
  for (const char *p = host; ok && *p; p++)
    ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
         strchr(".-:[]_", *p) != NULL;
  if (!ok)
    return fail(e, "%s: expected an origin such as \"http://127.0.0.1:8081\" (no path)", key);
  if (!(*out = strdup(s))) return fail(e, "out of memory");
  return 0;
}

static int check_keys(json_t *o, perr *e) {
  const char *key;
  const json_t *v;
  json_object_foreach(o, key, v) {
    size_t i = 0;
    while (fault_keys[i] && strcmp(fault_keys[i], key) != 0) i++;
    if (!fault_keys[i]) {
      char k[101];
      snprintf(k, sizeof k, "%s", key);
      sim_utf8_trim(k); /* the cut may fall inside a character */
      return fail(e, "unknown key \"%s\"", k);
    }
  }
  return 0;
}

static int parse_headers(json_t *o, sim_fault_effect *fx, perr *e) {
  json_t *headers = json_object_get(o, "headers");
  if (!headers) return 0;
  if (!json_is_object(headers)) return fail(e, "headers: expected an object of strings");
  const char *k;
  const json_t *v;
  json_object_foreach(headers, k, v) {
    if (!json_is_string(v) || strpbrk(json_string_value(v), "\r\n") || strpbrk(k, "\r\n: ") ||
        !*k)
      return fail(e, "headers: expected an object of single-line strings");
  }
  if (json_object_size(headers) > 8) return fail(e, "headers: at most 8 headers");
  if (!(fx->headers = json_deep_copy(headers))) return fail(e, "out of memory");
  return 0;
}

static int parse_strings(json_t *o, sim_fault_effect *fx, perr *e) {
  const json_t *ct = json_object_get(o, "content_type"), *body = json_object_get(o, "body");
  if ((ct && !json_is_string(ct)) || (body && !json_is_string(body)))
    return fail(e, "content_type and body must be strings");
  if (ct && strpbrk(json_string_value(ct), "\r\n"))
    return fail(e, "content_type: expected a single line");
  fx->content_type = sim_strdup(json_string_value(ct));
  fx->body = sim_strdup(json_string_value(body));
  if ((ct && !fx->content_type) || (body && !fx->body)) return fail(e, "out of memory");
  return 0;
}

static int parse_delay(json_t *o, sim_fault_effect *fx, perr *e) {
  long long d = 0, lo = -1, hi = -1;
  if (get_int(o, "delay_ms", 0, MAX_DELAY_MS, &d, e) ||
      get_int(o, "delay_ms_min", 0, MAX_DELAY_MS, &lo, e) ||
      get_int(o, "delay_ms_max", 0, MAX_DELAY_MS, &hi, e))
    return -1;
  if ((lo < 0) != (hi < 0)) return fail(e, "delay_ms_min and delay_ms_max go together");
  if (lo >= 0 && json_object_get(o, "delay_ms"))
    return fail(e, "delay_ms: give either delay_ms or delay_ms_min/delay_ms_max");
  if (lo > hi) return fail(e, "delay_ms_min: must not exceed delay_ms_max");
  fx->delay_ms = lo >= 0 ? -1 : (long)d;
  fx->delay_min = lo >= 0 ? (long)lo : 0;
  fx->delay_max = hi >= 0 ? (long)hi : 0;
  return 0;
}

static int parse_effect(json_t *o, sim_target target, sim_fault_effect *fx, perr *e) {
  long long status = 0, retry = -1, drip = 0, nest = 0, huge = 0;
  if (get_int(o, "status", 0, 599, &status, e)) return -1;
  if (status != 0 && status < 100)
    return fail(e, "status: expected 0 (normal answer) or an HTTP status 100-599");
  if (parse_delay(o, fx, e) || get_int(o, "retry_after", 0, 86400, &retry, e) ||
      get_bool(o, "retry_after_date", &fx->retry_after_date, e) ||
      get_bool(o, "reset", &fx->reset, e) || get_bool(o, "truncate", &fx->truncate, e) ||
      get_bool(o, "malformed", &fx->malformed, e) ||
      get_int(o, "drip_bytes_per_s", 1, 100000000, &drip, e) ||
      get_int(o, "nest_depth", 5, 10000000, &nest, e) ||
      get_int(o, "huge_bytes", 1024, 1000000000000LL, &huge, e) || parse_headers(o, fx, e) ||
      get_bool(o, "echo", &fx->echo, e) ||
      parse_strings(o, fx, e) || get_origin(o, "foreign_next", &fx->foreign_next, e) ||
      get_origin(o, "foreign_references", &fx->foreign_references, e) ||
      get_token_str(o, "next_segment", 200, &fx->next_segment, e))
    return -1;
  if (fx->next_segment && (strpbrk(fx->next_segment, "\"?#") || fx->next_segment[0] == '/'))
    return fail(e, "next_segment: no quote, '?', '#' or leading '/'");
  fx->status = (unsigned)status;
  fx->retry_after = (long)retry;
  fx->drip_bytes_per_s = (long)drip;
  fx->nest_depth = (long)nest;
  fx->huge_bytes = (uint64_t)huge;
  if (fx->retry_after_date && retry < 0) return fail(e, "retry_after_date: needs retry_after");
  if (retry >= 0 && !status) fx->status = 429;
  if ((fx->foreign_next || fx->foreign_references || fx->next_segment) &&
      target != SIM_TARGET_FHIR)
    return fail(e, "%s: only for target \"fhir\"",
                fx->foreign_next         ? "foreign_next"
                : fx->foreign_references ? "foreign_references"
                                         : "next_segment");
  if (fx->malformed + (nest > 0) + (huge > 0) > 1)
    return fail(e, "malformed, nest_depth and huge_bytes exclude each other");
  if (fx->echo && (!fx->body || !status))
    return fail(e, "echo: needs status and a body with {authorization}, {request_body} or "
                   "{client_assertion} in it");
  if ((nest > 0 || huge > 0) && fx->body)
    return fail(e, "body: not with %s (the body is generated)", nest ? "nest_depth" : "huge_bytes");
  const char *replace = replacing_key(fx), *rewrite = rewriting_key(fx);
  if (fx->reset) {
    const char *other = replace ? replace
                        : rewrite ? rewrite
                        : fx->drip_bytes_per_s ? "drip_bytes_per_s"
                        : fx->headers ? "headers"
                                      : NULL;
    if (other) return fail(e, "reset: cannot be combined with %s (nothing is answered)", other);
  }
  if (rewrite && replace)
    return fail(e, "%s: rewrites the normal answer, so it cannot be combined with %s", rewrite,
                replace);
  bool any = sim_fault_replaces(fx) || fx->delay_ms != 0 || fx->delay_max > 0 || fx->reset ||
             fx->truncate || fx->drip_bytes_per_s || fx->foreign_next || fx->foreign_references ||
             fx->next_segment || fx->headers;
  if (!any)
    return fail(e, "a fault needs an effect: status, delay_ms, retry_after, reset, truncate, "
                   "malformed, drip_bytes_per_s, nest_depth, huge_bytes, foreign_next, "
                   "foreign_references, next_segment or headers");
  return 0;
}

static uint64_t fnv1a(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

int sim_fault_parse(json_t *o, const sim_data_params *params, sim_fault *out, char *err,
                    size_t errlen) {
  perr e = {err, errlen};
  *out = (sim_fault){.ratio = 1.0, .fx = {.retry_after = -1}};
  if (check_keys(o, &e)) return -1;
  const char *target = json_string_value(json_object_get(o, "target"));
  if (!target || sim_target_from_name(target) < 0)
    return fail(&e, "target: expected \"token\", \"discovery\" or \"fhir\"");
  out->target = (sim_target)sim_target_from_name(target);
  long long seed = 0, count = 0;
  const json_t *ratio = json_object_get(o, "ratio");
  if (get_token_str(o, "name", MAX_NAME, &out->name, &e) ||
      get_token_str(o, "path", MAX_PATH, &out->path, &e) ||
      get_int(o, "seed", 0, INT64_MAX, &seed, &e) ||
      get_int(o, "count", -1, 1000000000L, &count, &e))
    goto fail;
  if (out->path && out->target != SIM_TARGET_FHIR) {
    fail(&e, "path: only for target \"fhir\" (token and discovery have one path each)");
    goto fail;
  }
  if (json_object_get(o, "count") && count == 0) {
    fail(&e, "count: expected a positive integer or -1 (until cleared)");
    goto fail;
  }
  if (ratio && (!json_is_number(ratio) || !(json_number_value(ratio) > 0) ||
                json_number_value(ratio) > 1)) {
    fail(&e, "ratio: expected a number greater than 0 and at most 1");
    goto fail;
  }
  if (parse_effect(o, out->target, &out->fx, &e)) goto fail;
  out->ratio = ratio ? json_number_value(ratio) : 1.0;
  /* With a ratio, "the next request" makes little sense: default to unbounded. */
  out->count = json_object_get(o, "count") ? (long)count : ratio ? -1 : 1;
  out->path_glob = out->path && strpbrk(out->path, "*?[") != NULL;
  if (!out->name) {
    sim_buf n = {0};
    sim_buf_printf(&n, "%s%s%s", target, out->path ? ":" : "", out->path ? out->path : "");
    out->name = sim_buf_steal(&n, NULL);
  }
  out->spec = json_deep_copy(o);
  if (!out->name || !out->spec ||
      json_object_set_new(out->spec, "name", json_string(out->name)) != 0) {
    fail(&e, "out of memory");
    goto fail;
  }
  sim_rng_init_domain(&out->rng, params, SIM_DOMAIN_FAULT,
                      fnv1a(out->name) ^ ((uint64_t)seed * 0x9e3779b97f4a7c15ULL));
  return 0;
fail:
  sim_fault_free(out);
  return -1;
}

/* ---- the list ---- */

/* Lock held. The flag is the only thing requests read without the lock. */
static void update_armed(sim_tenant *t) {
  bool armed = t->retry_pending.count > 0;
  for (size_t i = 0; !armed && i < t->nfaults; i++) armed = t->faults[i].count != 0;
  atomic_store_explicit(&t->fault_armed, armed, memory_order_release);
}

bool sim_faults_armed(sim_tenant *t) {
  return atomic_load_explicit(&t->fault_armed, memory_order_acquire);
}

void sim_faults_put(sim_state *st, sim_tenant *t, sim_fault *f) {
  sim_fault old = {0};
  pthread_mutex_lock(&st->lock);
  size_t i = 0;
  while (i < t->nfaults && strcmp(t->faults[i].name, f->name) != 0) i++;
  if (i < t->nfaults) {
    old = t->faults[i];
    t->faults[i] = *f;
    *f = (sim_fault){0};
  } else {
    sim_fault *v = realloc(t->faults, (t->nfaults + 1) * sizeof *v);
    if (v) {
      t->faults = v;
      v[t->nfaults++] = *f;
      *f = (sim_fault){0};
    }
  }
  update_armed(t);
  pthread_mutex_unlock(&st->lock);
  sim_fault_free(&old);
  sim_fault_free(f); /* only still set when out of memory */
}

void sim_faults_clear(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  sim_fault *old = t->faults;
  size_t n = t->nfaults;
  t->faults = NULL;
  t->nfaults = 0;
  update_armed(t);
  pthread_mutex_unlock(&st->lock);
  for (size_t i = 0; i < n; i++) sim_fault_free(&old[i]);
  free(old);
}

bool sim_faults_delete(sim_state *st, sim_tenant *t, const char *name) {
  sim_fault old = {0};
  pthread_mutex_lock(&st->lock);
  size_t i = 0;
  while (i < t->nfaults && strcmp(t->faults[i].name, name) != 0) i++;
  bool found = i < t->nfaults;
  if (found) {
    old = t->faults[i];
    memmove(&t->faults[i], &t->faults[i + 1], (t->nfaults - i - 1) * sizeof *t->faults);
    t->nfaults--;
    update_armed(t);
  }
  pthread_mutex_unlock(&st->lock);
  sim_fault_free(&old);
  return found;
}

json_t *sim_faults_json(sim_state *st, sim_tenant *t) {
  json_t *list = json_array();
  pthread_mutex_lock(&st->lock);
  for (size_t i = 0; list && i < t->nfaults; i++) {
    const sim_fault *f = &t->faults[i];
    json_t *o = json_deep_copy(f->spec);
    if (!o) continue;
    json_object_set_new(o, "matched", json_integer(f->matched));
    json_object_set_new(o, "fired", json_integer(f->fired));
    json_object_set_new(o, "remaining", json_integer(f->count));
    json_array_append_new(list, o);
  }
  pthread_mutex_unlock(&st->lock);
  return list ? json_pack("{s:o}", "faults", list) : NULL;
}

/* ---- matching ---- */

/* A plain path names a resource type: it matches searches ("Observation")
 * and reads ("Observation/123") of that type and nothing else. A glob
 * (* ? [...]) is matched against the whole path, '*' crossing '/'. */
static bool path_matches(const sim_fault *f, const char *path) {
  if (!f->path) return true;
  if (f->path_glob) return fnmatch(f->path, path, 0) == 0;
  size_t n = strlen(f->path);
  return strncmp(path, f->path, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* Uniform in [0, 1) from the top 53 bits. */
static double draw(sim_rng *r) { return (double)(sim_rng_next(r) >> 11) * 0x1p-53; }

static int copy_effect(const sim_fault_effect *src, sim_fault_effect *dst) {
  *dst = *src;
  dst->content_type = sim_strdup(src->content_type);
  dst->body = sim_strdup(src->body);
  dst->headers = src->headers ? json_deep_copy(src->headers) : NULL;
  dst->foreign_next = sim_strdup(src->foreign_next);
  dst->foreign_references = sim_strdup(src->foreign_references);
  dst->next_segment = sim_strdup(src->next_segment);
  if ((src->content_type && !dst->content_type) || (src->body && !dst->body) ||
      (src->headers && !dst->headers) || (src->foreign_next && !dst->foreign_next) ||
      (src->foreign_references && !dst->foreign_references) ||
      (src->next_segment && !dst->next_segment)) {
    sim_fault_effect_clear(dst);
    return -1;
  }
  return 0;
}

typedef struct retry_note {
  int64_t sent_ms;
  int64_t not_before_ms;
} retry_note;

static bool key_is(const char *key, void *value, void *arg) {
  (void)value;
  return strcmp(key, arg) == 0;
}

static void iso_ms(int64_t ms, char out[32]) {
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

/* Lock held: the request for key arrived at now_ms; judge it against the
 * Retry-After its predecessor carried, once. */
static void check_retry(sim_tenant *t, const char *key, int64_t now_ms) {
  retry_note *n = sim_map_get(&t->retry_pending, key);
  if (!n) return;
  t->retry_checked++;
  if (now_ms < n->not_before_ms - SIM_RETRY_SLACK_MS) {
    t->retry_violations++;
    if (json_array_size(t->retry_details) < MAX_DETAILS) {
      char sent[32], nb[32], at[32];
      iso_ms(n->sent_ms, sent);
      iso_ms(n->not_before_ms, nb);
      iso_ms(now_ms, at);
      json_array_append_new(t->retry_details,
                            json_pack("{s:s, s:s, s:s, s:s, s:I}", "request", key, "sent", sent,
                                      "not_before", nb, "arrived", at, "early_ms",
                                      (json_int_t)(n->not_before_ms - now_ms)));
    }
  }
  /* The predicate only reads the key; the cast drops const for its void *. */
  sim_map_remove_if(&t->retry_pending, key_is, (void *)(uintptr_t)key);
}

bool sim_faults_arrive(sim_state *st, sim_tenant *t, sim_target target, const char *fhir_path,
                       const char *request_key, int64_t now_ms, sim_fault_effect *out) {
  *out = (sim_fault_effect){.retry_after = -1};
  bool fired = false;
  pthread_mutex_lock(&st->lock);
  if (request_key && t->retry_pending.count) check_retry(t, request_key, now_ms);
  for (size_t i = 0; i < t->nfaults; i++) {
    sim_fault *f = &t->faults[i];
    if (f->count == 0 || f->target != target || !path_matches(f, fhir_path)) continue;
    f->matched++;
    if (f->ratio < 1.0 && draw(&f->rng) >= f->ratio) continue;
    if (copy_effect(&f->fx, out) != 0) break; /* out of memory: answer normally */
    if (f->fx.delay_ms < 0) {
      uint32_t span = (uint32_t)(f->fx.delay_max - f->fx.delay_min + 1);
      out->delay_ms = f->fx.delay_min + (long)sim_rng_below(&f->rng, span);
    }
    f->fired++;
    if (f->count > 0) f->count--;
    fired = true;
    break;
  }
  update_armed(t);
  pthread_mutex_unlock(&st->lock);
  return fired;
}

/* ---- Retry-After ledger ---- */

void sim_faults_note_retry(sim_state *st, sim_tenant *t, const char *request_key, int64_t sent_ms,
                           int64_t not_before_ms) {
  retry_note *n = malloc(sizeof *n);
  if (!n) return;
  *n = (retry_note){.sent_ms = sent_ms, .not_before_ms = not_before_ms};
  pthread_mutex_lock(&st->lock);
  if (sim_map_put(&t->retry_pending, request_key, n) == 0) n = NULL;
  update_armed(t);
  pthread_mutex_unlock(&st->lock);
  free(n);
}

json_t *sim_faults_retry_json(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  json_t *doc = json_pack("{s:I, s:I, s:I, s:i, s:O}", "violations",
                          (json_int_t)t->retry_violations, "checked", (json_int_t)t->retry_checked,
                          "pending", (json_int_t)t->retry_pending.count, "slack_ms",
                          SIM_RETRY_SLACK_MS, "details", t->retry_details);
  /* Deep copy: the live array keeps changing after the lock is released. */
  json_t *copy = doc ? json_deep_copy(doc) : NULL;
  pthread_mutex_unlock(&st->lock);
  json_decref(doc);
  return copy;
}

static bool always(const char *key, void *value, void *arg) {
  (void)key, (void)value, (void)arg;
  return true;
}

void sim_faults_retry_reset_locked(sim_tenant *t) {
  sim_map_remove_if(&t->retry_pending, always, NULL);
  t->retry_checked = t->retry_violations = 0;
  json_array_clear(t->retry_details);
  update_armed(t);
}

void sim_faults_retry_reset(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  sim_faults_retry_reset_locked(t);
  pthread_mutex_unlock(&st->lock);
}

int sim_faults_tenant_init(sim_tenant *t) {
  sim_map_init(&t->retry_pending, free);
  atomic_init(&t->fault_armed, false);
  t->retry_details = json_array();
  return t->retry_details ? 0 : -1;
}

void sim_faults_tenant_free(sim_tenant *t) {
  for (size_t i = 0; i < t->nfaults; i++) sim_fault_free(&t->faults[i]);
  free(t->faults);
  t->faults = NULL;
  t->nfaults = 0;
  sim_map_free(&t->retry_pending);
  json_decref(t->retry_details);
  t->retry_details = NULL;
}

bool sim_retry_after_parse(const char *value, int64_t now_ms, int64_t *not_before_ms) {
  if (!value || !*value) return false;
  if (strspn(value, "0123456789") == strlen(value)) {
    if (strlen(value) > 9) return false;
    *not_before_ms = now_ms + strtoll(value, NULL, 10) * 1000;
    return true;
  }
  time_t when = curl_getdate(value, NULL);
  if (when < 0) return false;
  *not_before_ms = (int64_t)when * 1000;
  return true;
}
