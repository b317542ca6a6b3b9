#include "tests/sim/state.h"

#include "tests/sim/refserver.h"
#include "tests/sim/util.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Maps are swept for expired entries once they double in size, which keeps
 * the amortized cost per insert constant without a background thread. */
#define PRUNE_MIN 1024

typedef struct issued_token {
  size_t tenant;
  char *client_id;
  char *scope;
  int64_t expires_at_ms;
  uint64_t generation;
} issued_token;

static void issued_token_free(void *p) {
  issued_token *it = p;
  free(it->client_id);
  free(it->scope);
  free(it);
}

static int counters_init(sim_counters *c) {
  *c = (sim_counters){.token_rejections = json_object(),
                      .by_client = json_object(),
                      .fhir_by_status = json_object(),
                      .faults_served = json_object(),
                      .fhir_by_type = json_object(),
                      .fhir_by_kind = json_object(),
                      .fhir_by_type_kind = json_object(),
                      .reads = json_object(),
                      .kickoffs = json_array(),
                      .auth_paths = json_object()};
  return c->token_rejections && c->by_client && c->fhir_by_status && c->faults_served &&
                 c->fhir_by_type && c->fhir_by_kind && c->fhir_by_type_kind && c->reads &&
                 c->kickoffs && c->auth_paths
             ? 0
             : -1;
}

static void counters_free(sim_counters *c) {
  json_decref(c->token_rejections);
  json_decref(c->by_client);
  json_decref(c->fhir_by_status);
  json_decref(c->faults_served);
  json_decref(c->fhir_by_type);
  json_decref(c->fhir_by_kind);
  json_decref(c->fhir_by_type_kind);
  json_decref(c->reads);
  json_decref(c->kickoffs);
  json_decref(c->auth_paths);
  *c = (sim_counters){0};
}

static int tenant_init(sim_tenant *t, const sim_tenant_cfg *tc, uint64_t seed,
                       sim_store_indexer indexer, char *err, size_t errlen) {
  sim_data_params dp = {.seed = seed, .tenant_id = tc->id, .sandbox = tc->sandbox,
                        .patients = tc->patients, .knobs = tc->data};
  t->id = strdup(tc->id);
  t->expires_in = tc->expires_in;
  t->export_settings = tc->export_settings;
  t->ref = tc->ref;
  t->ref.scopes = (sim_strv){0};
  t->store = sim_store_build(&dp, indexer, err, errlen);
  if (!t->store || sim_groups_init(t, tc, err, errlen) != 0) return -1;
  t->clients = calloc(tc->nclients + 1, sizeof *t->clients);
  if (!t->id || !t->clients || sim_strv_copy(&t->auth_methods, &tc->auth_methods) ||
      sim_strv_copy(&t->signing_algs, &tc->signing_algs) ||
      sim_strv_copy(&t->ref.scopes, &tc->ref.scopes) || counters_init(&t->counters) ||
      sim_faults_tenant_init(t))
    goto oom;
  for (size_t i = 0; i < tc->nclients; i++) {
    if (sim_client_copy(&t->clients[i], &tc->clients[i])) goto oom;
    t->nclients++;
  }
  return 0;
oom:
  snprintf(err, errlen, "out of memory");
  return -1;
}

static void tenant_free(sim_tenant *t) {
  free(t->id);
  sim_groups_free(t);
  sim_store_free(t->store);
  sim_strv_free(&t->auth_methods);
  sim_strv_free(&t->signing_algs);
  sim_strv_free(&t->ref.scopes);
  sim_ref_rate_free(t);
  for (size_t i = 0; i < t->nclients; i++) sim_client_clear(&t->clients[i]);
  free(t->clients);
  sim_faults_tenant_free(t);
  counters_free(&t->counters);
  sim_load_free(t);
}

int sim_state_init(sim_state *st, const sim_config *cfg, sim_store_indexer indexer, char *err,
                   size_t errlen) {
  *st = (sim_state){.tokens_prune_at = PRUNE_MIN, .jtis_prune_at = PRUNE_MIN};
  pthread_mutex_init(&st->lock, NULL);
  sim_map_init(&st->tokens, issued_token_free);
  sim_map_init(&st->jtis, free);
  sim_map_init(&st->exports, sim_export_unref);
  if (RAND_bytes(st->storage_secret, sizeof st->storage_secret) != 1) {
    snprintf(err, errlen, "cannot draw the storage signing secret");
    return -1;
  }
  st->tenants = calloc(cfg->ntenants, sizeof *st->tenants);
  if (!st->tenants) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < cfg->ntenants; i++) {
    st->ntenants++;
    st->tenants[i].index = i;
    if (tenant_init(&st->tenants[i], &cfg->tenants[i], cfg->seed, indexer, err, errlen)) return -1;
  }
  return 0;
}

void sim_state_free(sim_state *st) {
  /* Jobs first: nothing else refers to them once the servers are stopped. */
  sim_map_free(&st->exports);
  for (size_t i = 0; i < st->ntenants; i++) tenant_free(&st->tenants[i]);
  free(st->tenants);
  sim_map_free(&st->tokens);
  sim_map_free(&st->jtis);
  pthread_mutex_destroy(&st->lock);
  *st = (sim_state){0};
}

sim_tenant *sim_state_tenant(sim_state *st, const char *id) {
  for (size_t i = 0; i < st->ntenants; i++)
    if (strcmp(st->tenants[i].id, id) == 0) return &st->tenants[i];
  return NULL;
}

static sim_client *find_client(sim_tenant *t, const char *client_id) {
  for (size_t i = 0; i < t->nclients; i++)
    if (strcmp(t->clients[i].client_id, client_id) == 0) return &t->clients[i];
  return NULL;
}

int sim_state_client_copy(sim_state *st, sim_tenant *t, const char *client_id, sim_client *out) {
  pthread_mutex_lock(&st->lock);
  sim_client *c = find_client(t, client_id);
  int rc = c ? sim_client_copy(out, c) : -1;
  pthread_mutex_unlock(&st->lock);
  return rc;
}

int sim_state_put_client(sim_state *st, sim_tenant *t, sim_client *c) {
  int rc = 0;
  pthread_mutex_lock(&st->lock);
  sim_client *old = find_client(t, c->client_id);
  if (old) {
    sim_client_clear(old);
    *old = *c;
  } else {
    sim_client *v = realloc(t->clients, (t->nclients + 1) * sizeof *v);
    if (v) {
      t->clients = v;
      v[t->nclients++] = *c;
    } else {
      rc = -1;
    }
  }
  pthread_mutex_unlock(&st->lock);
  if (rc == 0) *c = (sim_client){0};
  return rc;
}

long sim_state_expires_in(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  long v = t->expires_in;
  pthread_mutex_unlock(&st->lock);
  return v;
}

void sim_state_set_expires_in(sim_state *st, sim_tenant *t, long seconds) {
  pthread_mutex_lock(&st->lock);
  t->expires_in = seconds;
  pthread_mutex_unlock(&st->lock);
}

void sim_state_revoke_tokens(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  t->token_generation++;
  pthread_mutex_unlock(&st->lock);
}

void sim_state_set_always_401(sim_state *st, sim_tenant *t, bool on) {
  pthread_mutex_lock(&st->lock);
  t->fhir_always_401 = on;
  pthread_mutex_unlock(&st->lock);
}

static bool jti_expired(const char *key, void *value, void *arg) {
  (void)key;
  return *(int64_t *)value < *(int64_t *)arg;
}

static bool token_expired(const char *key, void *value, void *arg) {
  (void)key;
  return ((issued_token *)value)->expires_at_ms <= *(int64_t *)arg;
}

/* Sweeps expired entries once the map has grown past *prune_at; `now` is in
 * the unit the predicate compares. */
static void maybe_prune(sim_map *m, size_t *prune_at, sim_map_pred expired, int64_t now) {
  if (m->count < *prune_at) return;
  sim_map_remove_if(m, expired, &now);
  *prune_at = m->count * 2 > PRUNE_MIN ? m->count * 2 : PRUNE_MIN;
}

int sim_state_use_jti(sim_state *st, sim_tenant *t, const char *client_id, const char *jti,
                      int64_t exp) {
  sim_buf key = {0};
  sim_buf_printf(&key, "%s\x1f%s\x1f%s", t->id, client_id, jti);
  int64_t *until = malloc(sizeof *until);
  if (key.oom || !until) {
    sim_buf_free(&key);
    free(until);
    return -1;
  }
  /* Keep the jti until the assertion could no longer be accepted anyway. */
  int64_t now = sim_now();
  *until = exp > now ? exp : now;
  int rc;
  pthread_mutex_lock(&st->lock);
  int64_t *seen = sim_map_get(&st->jtis, key.data);
  if (seen && *seen >= now) {
    rc = 0;
  } else {
    maybe_prune(&st->jtis, &st->jtis_prune_at, jti_expired, now);
    rc = sim_map_put(&st->jtis, key.data, until) == 0 ? 1 : -1;
    if (rc == 1) until = NULL;
  }
  pthread_mutex_unlock(&st->lock);
  free(until);
  sim_buf_free(&key);
  return rc;
}

char *sim_state_issue_token(sim_state *st, sim_tenant *t, const char *client_id,
                            const char *scope, long expires_in) {
  char *token = sim_random_b64url(32);
  issued_token *it = calloc(1, sizeof *it);
  if (!token || !it || !(it->client_id = strdup(client_id)) || !(it->scope = strdup(scope)))
    goto fail;
  it->tenant = t->index;
  int64_t now_ms = sim_now_ms();
  it->expires_at_ms = now_ms + (int64_t)expires_in * 1000;
  pthread_mutex_lock(&st->lock);
  it->generation = t->token_generation;
  maybe_prune(&st->tokens, &st->tokens_prune_at, token_expired, now_ms);
  int rc = sim_map_put(&st->tokens, token, it);
  pthread_mutex_unlock(&st->lock);
  if (rc == 0) return token;
fail:
  if (it) issued_token_free(it);
  free(token);
  return NULL;
}

int sim_state_token_scope(sim_state *st, sim_tenant *t, const char *token, char **scope,
                          char **client_id, char *why, size_t whylen) {
  const char *problem = NULL;
  *scope = NULL;
  if (client_id) *client_id = NULL;
  int64_t now_ms = sim_now_ms();
  pthread_mutex_lock(&st->lock);
  issued_token *it = sim_map_get(&st->tokens, token);
  if (t->fhir_always_401)
    problem = "the access token is invalid (fhir_always_401 is set)";
  else if (!it)
    problem = "the access token is unknown";
  else if (it->tenant != t->index)
    problem = "the access token was issued for another tenant";
  else if (it->expires_at_ms <= now_ms)
    problem = "the access token has expired";
  else if (it->generation != t->token_generation)
    problem = "the access token has been revoked";
  else if (!(*scope = strdup(it->scope)) || (client_id && !(*client_id = strdup(it->client_id))))
    problem = "out of memory";
  pthread_mutex_unlock(&st->lock);
  if (!problem) return 0;
  free(*scope);
  *scope = NULL;
  snprintf(why, whylen, "%s", problem);
  return -1;
}

typedef struct token_scan {
  size_t tenant;
  json_t *list;
} token_scan;

static void visit_token(const char *key, void *value, void *arg) {
  token_scan *ts = arg;
  if (((issued_token *)value)->tenant == ts->tenant)
    json_array_append_new(ts->list, json_string(key));
}

json_t *sim_state_tokens_json(sim_state *st, sim_tenant *t) {
  token_scan ts = {.tenant = t->index, .list = json_array()};
  if (!ts.list) return NULL;
  pthread_mutex_lock(&st->lock);
  sim_map_foreach(&st->tokens, visit_token, &ts);
  pthread_mutex_unlock(&st->lock);
  return json_pack("{s:o}", "tokens", ts.list);
}

static void bump(json_t *obj, const char *key) {
  json_t *v = json_object_get(obj, key);
  if (v)
    json_integer_set(v, json_integer_value(v) + 1);
  else
    json_object_set_new(obj, key, json_integer(1));
}

void sim_count_token_request(sim_state *st, sim_tenant *t, const char *client_id) {
  pthread_mutex_lock(&st->lock);
  t->counters.token_requests++;
  if (client_id) bump(t->counters.by_client, client_id);
  pthread_mutex_unlock(&st->lock);
}

void sim_count_token_outcome(sim_state *st, sim_tenant *t, const char *rejection) {
  pthread_mutex_lock(&st->lock);
  if (rejection)
    bump(t->counters.token_rejections, rejection);
  else
    t->counters.tokens_granted++;
  pthread_mutex_unlock(&st->lock);
}

void sim_count_discovery(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  t->counters.discovery_requests++;
  pthread_mutex_unlock(&st->lock);
}

void sim_count_fhir(sim_state *st, sim_tenant *t, unsigned status) {
  char key[8];
  if (status)
    snprintf(key, sizeof key, "%u", status);
  else
    snprintf(key, sizeof key, "reset");
  pthread_mutex_lock(&st->lock);
  t->counters.fhir_requests++;
  bump(t->counters.fhir_by_status, key);
  pthread_mutex_unlock(&st->lock);
}

void sim_count_fault(sim_state *st, sim_tenant *t, sim_target target) {
  pthread_mutex_lock(&st->lock);
  bump(t->counters.faults_served, sim_target_name(target));
  pthread_mutex_unlock(&st->lock);
}

void sim_count_fhir_request(sim_state *st, sim_tenant *t, const char *type, const char *kind,
                            const char *read_key) {
  if (!*type) return;
  char type_kind[96];
  snprintf(type_kind, sizeof type_kind, "%s.%s", type, kind);
  pthread_mutex_lock(&st->lock);
  bump(t->counters.fhir_by_type, type);
  bump(t->counters.fhir_by_kind, kind);
  bump(t->counters.fhir_by_type_kind, type_kind);
  if (*read_key) bump(t->counters.reads, read_key);
  pthread_mutex_unlock(&st->lock);
}

void sim_count_export(sim_state *st, sim_tenant *t, sim_export_count what) {
  pthread_mutex_lock(&st->lock);
  sim_counters *c = &t->counters;
  switch (what) {
  case SIM_XCOUNT_KICKOFF: c->export_kickoffs++; break;
  case SIM_XCOUNT_REFUSED: c->export_refused++; break;
  case SIM_XCOUNT_POLL: c->export_polls++; break;
  case SIM_XCOUNT_FILE: c->export_files++; break;
  case SIM_XCOUNT_DELETE: c->export_deletes++; break;
  case SIM_XCOUNT_INVALID: c->export_invalid++; break;
  case SIM_XCOUNT_OTHER_CLIENT: c->export_other_client++; break;
  }
  pthread_mutex_unlock(&st->lock);
}

void sim_count_ref_registration(sim_state *st, sim_tenant *t) {
  pthread_mutex_lock(&st->lock);
  t->counters.ref_registrations++;
  pthread_mutex_unlock(&st->lock);
}

void sim_count_storage_request(sim_state *st, bool authorization) {
  pthread_mutex_lock(&st->lock);
  st->storage_requests++;
  if (authorization) st->storage_authorization++;
  pthread_mutex_unlock(&st->lock);
}

void sim_count_storage_bytes(sim_state *st, size_t bytes) {
  pthread_mutex_lock(&st->lock);
  st->storage_bytes += (long)bytes;
  pthread_mutex_unlock(&st->lock);
}

json_t *sim_state_reads_json(sim_state *st, sim_tenant *t, const char *type) {
  json_t *out = json_object();
  size_t tlen = type ? strlen(type) : 0;
  const char *key;
  json_t *v;
  pthread_mutex_lock(&st->lock);
  json_object_foreach(t->counters.reads, key, v) {
    if (!type || (strncmp(key, type, tlen) == 0 && key[tlen] == '/'))
      json_object_set_new(out, key, json_integer(json_integer_value(v)));
  }
  pthread_mutex_unlock(&st->lock);
  return out;
}

static json_t *tenant_counters(const sim_counters *c) {
  return json_pack("{s:I, s:I, s:O, s:O, s:I, s:I, s:O, s:O, s:O, s:O, s:O, s:{s:I, s:I, s:I, "
                   "s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I}}",
                   "token_requests",
                   (json_int_t)c->token_requests, "tokens_granted", (json_int_t)c->tokens_granted,
                   "token_rejections", c->token_rejections, "token_requests_by_client",
                   c->by_client, "discovery_requests", (json_int_t)c->discovery_requests,
                   "fhir_requests", (json_int_t)c->fhir_requests, "fhir_by_status",
                   c->fhir_by_status, "faults_served", c->faults_served, "fhir_by_type",
                   c->fhir_by_type, "fhir_by_kind", c->fhir_by_kind, "fhir_by_type_kind",
                   c->fhir_by_type_kind, "export", "kickoffs", (json_int_t)c->export_kickoffs,
                   "kickoffs_refused", (json_int_t)c->export_refused, "status_polls",
                   (json_int_t)c->export_polls, "files_served", (json_int_t)c->export_files,
                   "deletes", (json_int_t)c->export_deletes, "kickoffs_invalid",
                   (json_int_t)c->export_invalid, "other_client",
                   (json_int_t)c->export_other_client, "reference_server",
                   "registrations", (json_int_t)c->ref_registrations, "rate_limited_epoch_ms",
                   (json_int_t)c->ref_limited_ms, "rate_limited_epoch_s",
                   (json_int_t)c->ref_limited_s);
}

json_t *sim_state_counters_json(sim_state *st) {
  json_t *tenants = json_object();
  if (!tenants) return NULL;
  pthread_mutex_lock(&st->lock);
  /* Deep copies, because the live maps keep changing after the lock is released. */
  for (size_t i = 0; i < st->ntenants; i++) {
    json_t *c = tenant_counters(&st->tenants[i].counters);
    json_t *copy = c ? json_deep_copy(c) : NULL;
    json_decref(c);
    json_object_set_new(tenants, st->tenants[i].id, copy ? copy : json_null());
  }
  json_t *storage = json_pack("{s:I, s:I, s:I, s:I}", "requests", (json_int_t)st->storage_requests,
                              "authorization_headers", (json_int_t)st->storage_authorization,
                              "bytes", (json_int_t)st->storage_bytes, "port",
                              (json_int_t)st->storage_port);
  pthread_mutex_unlock(&st->lock);
  return json_pack("{s:o, s:o*}", "tenants", tenants, "storage", storage);
}

void sim_state_reset_counters(sim_state *st) {
  pthread_mutex_lock(&st->lock);
  for (size_t i = 0; i < st->ntenants; i++) {
    sim_counters *c = &st->tenants[i].counters;
    c->token_requests = c->tokens_granted = c->discovery_requests = c->fhir_requests = 0;
    c->export_kickoffs = c->export_refused = c->export_polls = c->export_files =
        c->export_deletes = c->export_invalid = c->export_other_client = 0;
    c->ref_registrations = c->ref_limited_ms = c->ref_limited_s = 0;
    json_object_clear(c->auth_paths);
    sim_ref_rate_reset_locked(&st->tenants[i]);
    json_object_clear(c->token_rejections);
    json_object_clear(c->by_client);
    json_object_clear(c->fhir_by_status);
    json_object_clear(c->faults_served);
    json_object_clear(c->fhir_by_type);
    json_object_clear(c->fhir_by_kind);
    json_object_clear(c->fhir_by_type_kind);
    json_object_clear(c->reads);
    json_array_clear(c->kickoffs);
    sim_faults_retry_reset_locked(&st->tenants[i]);
    sim_load_reset_locked(&st->tenants[i]);
  }
  st->storage_requests = st->storage_authorization = st->storage_bytes = 0;
  pthread_mutex_unlock(&st->lock);
}
