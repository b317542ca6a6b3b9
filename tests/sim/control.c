/* Control API for tests under /_sim/ (no auth, JSON in and out):
 *
 *   GET    /_sim/health
 *   GET    /_sim/counters
 *   POST   /_sim/counters/reset
 *   POST   /_sim/tenants/{t}/clients    one client object, added or replaced
 *   POST   /_sim/tenants/{t}/settings   {expires_in, revoke_tokens, fhir_always_401}
 *   POST   /_sim/tenants/{t}/faults     one fault (fault.c validates it), added or
 *                                       replacing the fault with the same name
 *   GET    /_sim/tenants/{t}/faults     the list, with how often each matched/fired
 *   DELETE /_sim/tenants/{t}/faults[?name=N]  all of them, or one
 *   GET    /_sim/tenants/{t}/retry_after_violations  retries sent too early
 *   DELETE /_sim/tenants/{t}/retry_after_violations  forget them
 *   GET    /_sim/tenants/{t}/expected   what a correct extraction returns (control_data.c)
 *   POST   /_sim/tenants/{t}/touch      bump meta.lastUpdated of some resources
 *   DELETE /_sim/tenants/{t}/touch      forget every touch
 *   GET    /_sim/tenants/{t}/reads      reads per "Type/id"
 *   GET    /_sim/tenants/{t}/authorization  reference server mode: requests and
 *                                       Authorization headers per path (refserver.c)
 *   GET    /_sim/tenants/{t}/export     Bulk Data settings and jobs (export_control.c)
 *   POST   /_sim/tenants/{t}/export     change them; {"fail_next": true}
 *   POST   /_sim/tenants/{t}/export/expire  every job of the tenant expires
 *   GET    /_sim/tenants/{t}/groups/{id}/expected  what an export of the group holds
 *
 * Bodies are validated completely before anything changes, so a rejected
 * request (400 {"error": "..."}) leaves the simulator as it was. */
#include "tests/sim/config.h"
#include "tests/sim/fhir.h"
#include "tests/sim/http.h"
#include "tests/sim/refserver.h"

#include <stdio.h>
#include <string.h>

static void reply(sim_resp *resp, unsigned status, const char *error) {
  json_t *doc = error ? json_pack("{s:s}", "error", error) : json_pack("{s:b}", "ok", 1);
  sim_resp_json(resp, status, SIM_CT_JSON, doc);
}

/* Parses the body as a JSON object (new reference) or answers 400. */
static json_t *body_object(const sim_req *req, sim_resp *resp) {
  json_error_t e;
  json_t *o = json_loadb(req->body.data ? req->body.data : "", req->body.len,
                         JSON_REJECT_DUPLICATES, &e);
  if (!json_is_object(o)) {
    char msg[256];
    snprintf(msg, sizeof msg, "body must be a JSON object (%s)", o ? "not an object" : e.text);
    sim_utf8_trim(msg);
    reply(resp, 400, msg);
    json_decref(o);
    return NULL;
  }
  return o;
}

static bool only_keys(json_t *o, const char *const *allowed, sim_resp *resp) {
  const char *key;
  const json_t *v;
  json_object_foreach(o, key, v) {
    size_t i = 0;
    while (allowed[i] && strcmp(allowed[i], key) != 0) i++;
    if (!allowed[i]) {
      char k[101], msg[160];
      snprintf(k, sizeof k, "%s", key);
      sim_utf8_trim(k); /* the cut may fall inside a character */
      snprintf(msg, sizeof msg, "unknown key \"%s\"", k);
      reply(resp, 400, msg);
      return false;
    }
  }
  return true;
}

static void put_client(sim_req *req, sim_tenant *t, sim_resp *resp) {
  json_t *o = body_object(req, resp);
  if (!o) return;
  char err[256];
  sim_client c;
  if (sim_client_parse(o, "client", &c, err, sizeof err) != 0) {
    sim_utf8_trim(err);
    reply(resp, 400, err);
  } else if (sim_state_put_client(req->st, t, &c) != 0) {
    reply(resp, 500, "out of memory");
  } else {
    reply(resp, 200, NULL);
  }
  sim_client_clear(&c);
  json_decref(o);
}

static void settings(sim_req *req, sim_tenant *t, sim_resp *resp) {
  static const char *const keys[] = {"expires_in", "revoke_tokens", "fhir_always_401", NULL};
  json_t *o = body_object(req, resp);
  if (!o || !only_keys(o, keys, resp)) goto out;
  const json_t *exp = json_object_get(o, "expires_in");
  const json_t *revoke = json_object_get(o, "revoke_tokens");
  const json_t *always = json_object_get(o, "fhir_always_401");
  if (exp && (!json_is_integer(exp) || json_integer_value(exp) < 1 ||
              json_integer_value(exp) > 86400)) {
    reply(resp, 400, "expires_in: expected an integer from 1 to 86400");
  } else if ((revoke && !json_is_boolean(revoke)) || (always && !json_is_boolean(always))) {
    reply(resp, 400, "revoke_tokens and fhir_always_401 must be true or false");
  } else {
    if (exp) sim_state_set_expires_in(req->st, t, (long)json_integer_value(exp));
    if (json_is_true(revoke)) sim_state_revoke_tokens(req->st, t);
    if (always) sim_state_set_always_401(req->st, t, json_is_true(always));
    reply(resp, 200, NULL);
  }
out:
  json_decref(o);
}

static void set_fault(sim_req *req, sim_tenant *t, sim_resp *resp) {
  json_t *o = body_object(req, resp);
  if (!o) return;
  char err[256];
  sim_fault f;
  if (sim_fault_parse(o, sim_store_params(t->store), &f, err, sizeof err) != 0) {
    sim_utf8_trim(err);
    reply(resp, 400, err);
  } else {
    sim_resp_json(resp, 200, SIM_CT_JSON, json_pack("{s:b, s:s}", "ok", 1, "name", f.name));
    sim_faults_put(req->st, t, &f);
  }
  json_decref(o);
}

static void delete_faults(sim_req *req, sim_tenant *t, sim_resp *resp) {
  const char *name = sim_req_query(req, "name");
  if (!name)
    sim_faults_clear(req->st, t);
  else if (!sim_faults_delete(req->st, t, name)) {
    reply(resp, 404, "no fault with that name");
    return;
  }
  reply(resp, 200, NULL);
}

/* "/groups/{id}/expected": copies the id into group. */
static bool group_expected(const char *what, char *group, size_t n) {
  if (strncmp(what, "/groups/", 8) != 0) return false;
  const char *id = what + 8;
  size_t len = strcspn(id, "/");
  if (len == 0 || len >= n || strcmp(id + len, "/expected") != 0) return false;
  memcpy(group, id, len);
  group[len] = '\0';
  return true;
}

/* /tenants/{t}/<what> */
static void tenant_route(sim_req *req, const char *rest, sim_resp *resp) {
  char id[128], group[128];
  size_t len = strcspn(rest, "/");
  if (len == 0 || len >= sizeof id) {
    reply(resp, 404, "no such control endpoint");
    return;
  }
  memcpy(id, rest, len);
  id[len] = '\0';
  sim_tenant *t = sim_state_tenant(req->st, id);
  const char *what = rest + len;
  bool post = strcmp(req->method, "POST") == 0, get = strcmp(req->method, "GET") == 0;
  bool del = strcmp(req->method, "DELETE") == 0;
  if (!t)
    reply(resp, 404, "unknown tenant");
  else if (get && strcmp(what, "/expected") == 0)
    sim_control_expected(req, t, resp);
  else if (get && strcmp(what, "/reads") == 0)
    sim_control_reads(req, t, resp);
  else if (get && strcmp(what, "/authorization") == 0)
    sim_resp_json(resp, 200, SIM_CT_JSON, sim_ref_authorization_json(req->st, t));
  else if (get && strcmp(what, "/export") == 0)
    sim_control_export_get(req, t, resp);
  else if (post && strcmp(what, "/export") == 0)
    sim_control_export_set(req, t, resp);
  else if (post && strcmp(what, "/export/expire") == 0)
    sim_control_export_expire(req, t, resp);
  else if (get && group_expected(what, group, sizeof group))
    sim_control_group_expected(req, t, group, resp);
  else if (post && strcmp(what, "/touch") == 0)
    sim_control_touch(req, t, resp);
  else if (del && strcmp(what, "/touch") == 0)
    sim_control_untouch(req, t, resp);
  else if (post && strcmp(what, "/clients") == 0)
    put_client(req, t, resp);
  else if (post && strcmp(what, "/settings") == 0)
    settings(req, t, resp);
  else if (post && strcmp(what, "/faults") == 0)
    set_fault(req, t, resp);
  else if (get && strcmp(what, "/faults") == 0)
    sim_resp_json(resp, 200, SIM_CT_JSON, sim_faults_json(req->st, t));
  else if (del && strcmp(what, "/faults") == 0)
    delete_faults(req, t, resp);
  else if (get && strcmp(what, "/load") == 0)
    sim_resp_json(resp, 200, SIM_CT_JSON, sim_load_json(req->st, t));
  else if (del && strcmp(what, "/load") == 0) {
    pthread_mutex_lock(&req->st->lock);
    sim_load_reset_locked(t);
    pthread_mutex_unlock(&req->st->lock);
    reply(resp, 200, NULL);
  } else if (get && strcmp(what, "/tokens") == 0)
    sim_resp_json(resp, 200, SIM_CT_JSON, sim_state_tokens_json(req->st, t));
  else if (get && strcmp(what, "/retry_after_violations") == 0)
    sim_resp_json(resp, 200, SIM_CT_JSON, sim_faults_retry_json(req->st, t));
  else if (del && strcmp(what, "/retry_after_violations") == 0) {
    sim_faults_retry_reset(req->st, t);
    reply(resp, 200, NULL);
  } else
    reply(resp, 404, "no such control endpoint (or wrong method)");
}

void sim_control_handle(sim_req *req, sim_resp *resp) {
  const char *sub = req->subpath;
  bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
  if (get && strcmp(sub, "/health") == 0) {
    reply(resp, 200, NULL);
  } else if (get && strcmp(sub, "/counters") == 0) {
    sim_resp_json(resp, 200, SIM_CT_JSON, sim_state_counters_json(req->st));
  } else if (post && strcmp(sub, "/counters/reset") == 0) {
    sim_state_reset_counters(req->st);
    reply(resp, 200, NULL);
  } else if (strncmp(sub, "/tenants/", 9) == 0) {
    tenant_route(req, sub + 9, resp);
  } else {
    reply(resp, 404, "no such control endpoint (or wrong method)");
  }
  sim_resp_header(resp, "Cache-Control", "no-store");
}
