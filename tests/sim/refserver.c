/* Reference server mode: URLs, rate limiter, Authorization counts per path
 * and the extra resource types (refserver.h says what the mode is). */
#include "tests/sim/refserver.h"

#include "common/b64.h"
#include "tests/sim/jsonw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COUNTED_PATHS 10000 /* further paths count under "(other)" */

/* ---- URLs ---- */

static bool job_id_ok(const char *s, size_t n) {
  if (n != SIM_EXPORT_ID_LEN) return false;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  return true;
}

/* The settings segment of a file URL: base64url of {"id":"<job>","secure":true},
 * as the real server encodes a file's parameters into its path. */
static char *file_blob(const char *job) {
  char json[96];
  int n = snprintf(json, sizeof json, "{\"id\":\"%s\",\"secure\":true}", job);
  return fx_b64url_encode_alloc((const uint8_t *)json, (size_t)n);
}

static bool blob_job(const char *blob, size_t len, char job[SIM_EXPORT_ID_LEN + 1]) {
  size_t n = 0;
  uint8_t *raw = len && len < 512 ? fx_b64url_decode(blob, len, &n) : NULL;
  json_t *doc = raw ? json_loadb((const char *)raw, n, 0, NULL) : NULL;
  const char *id = json_string_value(json_object_get(doc, "id"));
  bool ok = id && job_id_ok(id, strlen(id));
  if (ok) snprintf(job, SIM_EXPORT_ID_LEN + 1, "%s", id);
  json_decref(doc);
  free(raw);
  return ok;
}

int sim_ref_parse_path(const char *path, char job[SIM_EXPORT_ID_LEN + 1], unsigned long *file) {
  size_t sp = strlen(SIM_REF_STATUS_PREFIX);
  if (strncmp(path, SIM_REF_STATUS_PREFIX, sp) == 0) {
    const char *id = path + sp;
    if (!job_id_ok(id, strlen(id))) return SIM_REF_PATH_NONE;
    memcpy(job, id, SIM_EXPORT_ID_LEN + 1);
    return SIM_REF_PATH_STATUS;
  }
  /* "/<blob>/fhir/bulkfiles/<n>.<Type>.ndjson" */
  if (path[0] != '/') return SIM_REF_PATH_NONE;
  const char *blob = path + 1;
  size_t blen = strcspn(blob, "/");
  const char *part = blob + blen;
  size_t fp = strlen(SIM_REF_FILES_PART);
  if (strncmp(part, SIM_REF_FILES_PART, fp) != 0) return SIM_REF_PATH_NONE;
  const char *name = part + fp;
  char *end;
  unsigned long n = strtoul(name, &end, 10);
  if (*name < '1' || *name > '9' || *end != '.' || strchr(end, '/') ||
      strlen(end) < 8 || strcmp(end + strlen(end) - 7, ".ndjson") != 0)
    return SIM_REF_PATH_NONE;
  if (!blob_job(blob, blen, job)) return SIM_REF_PATH_NONE;
  *file = n;
  return SIM_REF_PATH_FILE;
}

sim_tenant *sim_ref_tenant_of(sim_state *st, const char *path) {
  char job[SIM_EXPORT_ID_LEN + 1];
  unsigned long file;
  if (sim_ref_parse_path(path, job, &file) == SIM_REF_PATH_NONE) return NULL;
  pthread_mutex_lock(&st->lock);
  const sim_export *x = sim_map_get(&st->exports, job);
  size_t tenant = x ? x->tenant : st->ntenants;
  pthread_mutex_unlock(&st->lock);
  /* The tenant array and each tenant's mode are immutable. */
  return tenant < st->ntenants && st->tenants[tenant].ref.enabled ? &st->tenants[tenant] : NULL;
}

char *sim_ref_status_url(const char *host, const char *job) {
  sim_buf b = {0};
  sim_buf_printf(&b, "http://%s" SIM_REF_STATUS_PREFIX "%s", host, job);
  return sim_buf_steal(&b, NULL);
}

char *sim_ref_file_url(const char *host, const char *job, size_t file, const char *type) {
  char *blob = file_blob(job);
  if (!blob) return NULL;
  sim_buf b = {0};
  sim_buf_printf(&b, "http://%s/%s" SIM_REF_FILES_PART "%zu.%s.ndjson", host, blob, file, type);
  free(blob);
  return sim_buf_steal(&b, NULL);
}

/* ---- rate limiter ---- */

/* The real server's algorithm, per route (and per client address, which is
 * always 127.0.0.1 here): while blocked, 429 with Retry-After = the end of
 * the block in epoch seconds (rounded up); otherwise the arrival is added to
 * those of the last window, and one more than `requests` blocks the client
 * for block_ms, answered 429 with Retry-After = the end of the block in epoch
 * milliseconds. A refused request during a block is not remembered. */
bool sim_ref_rate_limited(sim_state *st, sim_tenant *t, int route, int64_t now_ms,
                          sim_resp *resp) {
  const sim_refserver_cfg *cfg = &t->ref;
  if (!cfg->enabled || cfg->rl_requests <= 0 || route < 0 || route >= SIM_REF_ROUTE_COUNT)
    return false;
  sim_ratelimit *rl = &t->ratelimit[route];
  int64_t until = 0;
  bool epoch_ms = false;
  pthread_mutex_lock(&st->lock);
  if (rl->blocked_until && now_ms < rl->blocked_until) {
    until = rl->blocked_until;
    t->counters.ref_limited_s++;
  } else {
    rl->blocked_until = 0;
    size_t keep = 0;
    for (size_t i = 0; i < rl->n; i++)
      if (now_ms - rl->times[i] < cfg->rl_window_ms) rl->times[keep++] = rl->times[i];
    rl->n = keep;
    if (rl->n == rl->cap) {
      size_t ncap = rl->cap ? rl->cap * 2 : 16;
      int64_t *grown = realloc(rl->times, ncap * sizeof *grown);
      if (grown) {
        rl->times = grown;
        rl->cap = ncap;
      }
    }
    if (rl->n < rl->cap) rl->times[rl->n++] = now_ms;
    if ((long)rl->n > cfg->rl_requests) {
      until = rl->blocked_until = now_ms + cfg->rl_block_ms;
      epoch_ms = true;
      t->counters.ref_limited_ms++;
    }
  }
  pthread_mutex_unlock(&st->lock);
  if (!until) return false;
  char *text = strdup("Too Many Requests. Try again later.");
  sim_resp_body(resp, 429, "text/html; charset=utf-8", text, text ? strlen(text) : 0);
  if (epoch_ms) {
    sim_resp_header(resp, "Retry-After", "%lld", (long long)until);
    resp->retry_not_before_ms = until;
  } else {
    long long secs = (long long)((until + 999) / 1000);
    sim_resp_header(resp, "Retry-After", "%lld", secs);
    resp->retry_not_before_ms = secs * 1000;
  }
  return true;
}

void sim_ref_rate_reset_locked(sim_tenant *t) {
  for (int r = 0; r < SIM_REF_ROUTE_COUNT; r++) {
    t->ratelimit[r].n = 0;
    t->ratelimit[r].blocked_until = 0;
  }
}

void sim_ref_rate_free(sim_tenant *t) {
  for (int r = 0; r < SIM_REF_ROUTE_COUNT; r++) {
    free(t->ratelimit[r].times);
    t->ratelimit[r] = (sim_ratelimit){0};
  }
}

/* ---- Authorization per path ---- */

void sim_ref_count_path(sim_state *st, sim_tenant *t, const char *path, bool authorization) {
  pthread_mutex_lock(&st->lock);
  json_t *paths = t->counters.auth_paths;
  json_t *e = json_object_get(paths, path);
  if (!e && json_object_size(paths) >= MAX_COUNTED_PATHS) e = json_object_get(paths, "(other)");
  if (!e) {
    e = json_pack("{s:I, s:I}", "requests", (json_int_t)0, "authorization", (json_int_t)0);
    if (e && json_object_set_new(paths,
                                 json_object_size(paths) >= MAX_COUNTED_PATHS ? "(other)" : path,
                                 e) != 0)
      e = NULL;
  }
  if (e) {
    json_object_set_new(e, "requests",
                        json_integer(json_integer_value(json_object_get(e, "requests")) + 1));
    if (authorization)
      json_object_set_new(
          e, "authorization",
          json_integer(json_integer_value(json_object_get(e, "authorization")) + 1));
  }
  pthread_mutex_unlock(&st->lock);
}

json_t *sim_ref_authorization_json(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  json_t *copy = json_deep_copy(t->counters.auth_paths);
  pthread_mutex_unlock(&st->lock);
  return json_pack("{s:o*}", "paths", copy);
}

/* ---- extra resource types ---- */

static const char *const id_prefix[SIM_REF_EXTRA_COUNT] = {"clm", "eob", "img"};

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static uint64_t draw(const sim_xscope *s, int k, uint32_t ordinal, uint32_t index) {
  return mix(sim_store_params(s->store)->seed ^ mix(((uint64_t)ordinal << 20) ^
                                                    ((uint64_t)index << 4) ^ (uint64_t)k));
}

/* meta.lastUpdated: spread over 2024 like every other resource's. */
static int64_t extra_updated_ms(const sim_xscope *s, int k, uint32_t ordinal, uint32_t index) {
  const int64_t y2024 = 1704067200000LL, year = 366LL * 86400 * 1000;
  return y2024 + (int64_t)(draw(s, k, ordinal, index) % (uint64_t)year);
}

bool sim_ref_xnext(const sim_xscope *s, const long per_patient[SIM_REF_EXTRA_COUNT], int k,
                   sim_xcursor *c, uint32_t *ordinal, uint32_t *index) {
  const sim_group *g = s->group;
  uint32_t n = (uint32_t)per_patient[k];
  while (c->member < g->n) {
    uint32_t o = g->ordinals[c->member];
    while (c->index < n) {
      uint32_t i = c->index++;
      if (s->has_since && extra_updated_ms(s, k, o, i) < s->since_ms) continue;
      *ordinal = o;
      *index = i;
      return true;
    }
    c->member++;
    c->index = 0;
  }
  return false;
}

static const char *patient_id(const sim_xscope *s, uint32_t ordinal) {
  const sim_resource *p = sim_store_patient(s->store, ordinal);
  return p ? p->id : "0";
}

void sim_ref_extra_ref(const sim_xscope *s, int k, uint32_t ordinal, uint32_t index,
                       char out[96]) {
  snprintf(out, 96, "%s/%s-%s-%u", sim_ref_extra_names[k], id_prefix[k], patient_id(s, ordinal),
           index + 1);
}

void sim_ref_write_extra(const sim_xscope *s, int k, uint32_t ordinal, uint32_t index,
                         sim_buf *out) {
  char ref[96], when[32], pat[96], prac[48];
  sim_ref_extra_ref(s, k, ordinal, index, ref);
  const char *id = strchr(ref, '/') + 1;
  int64_t updated = extra_updated_ms(s, k, ordinal, index);
  sim_fhir_instant_ms(updated, when);
  snprintf(pat, sizeof pat, "Patient/%s", patient_id(s, ordinal));
  /* A practitioner of the tenant's pool: something follow_references reads. */
  unsigned pool = sim_store_params(s->store)->knobs.practitioners;
  snprintf(prac, sizeof prac, "Practitioner/%u",
           4000001u + (unsigned)(draw(s, k, ordinal, index) >> 32) % (pool ? pool : 1));
  sim_jw w = sim_jw_on(out);
  sim_jw_obj(&w, NULL);
  sim_jw_str(&w, "resourceType", sim_ref_extra_names[k]);
  sim_jw_str(&w, "id", id);
  sim_jw_obj(&w, "meta");
  sim_jw_str(&w, "lastUpdated", when);
  sim_jw_end(&w);
  switch (k) {
  case SIM_REF_CLAIM:
  case SIM_REF_EOB:
    sim_jw_str(&w, "status", "active");
    sim_jw_str(&w, "use", "claim");
    sim_jw_obj(&w, "patient");
    sim_jw_str(&w, "reference", pat);
    sim_jw_end(&w);
    sim_jw_str(&w, "created", when);
    sim_jw_obj(&w, "provider");
    sim_jw_str(&w, "reference", prac);
    sim_jw_end(&w);
    if (k == SIM_REF_EOB) {
      char claim[96];
      sim_ref_extra_ref(s, SIM_REF_CLAIM, ordinal, index, claim);
      sim_jw_obj(&w, "claim");
      sim_jw_str(&w, "reference", claim);
      sim_jw_end(&w);
      sim_jw_str(&w, "outcome", "complete");
    }
    break;
  default:
    sim_jw_str(&w, "status", "available");
    sim_jw_obj(&w, "subject");
    sim_jw_str(&w, "reference", pat);
    sim_jw_end(&w);
    sim_jw_str(&w, "started", when);
    sim_jw_obj(&w, "referrer");
    sim_jw_str(&w, "reference", prac);
    sim_jw_end(&w);
    break;
  }
  sim_jw_end(&w);
}
