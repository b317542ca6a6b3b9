/* FHIR R4 endpoints under /r4/{tenant}: bearer token checks (401 with
 * Cerner's WWW-Authenticate, 403 for a missing scope), then read by id (any
 * type, Binary in fhir_binary.c) or search through the per-type rules in
 * fhir_types.c. Group reads and Bulk Data $export (Group/{id}/$export and
 * the bulk-export/jobs/... URLs it hands out) are in export.c. */
#include "tests/sim/fhir.h"
#include "tests/sim/refserver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define REALM "fhir-ehr-code.cerner.com"

void sim_fhir_outcome(sim_resp *resp, unsigned status, const char *code, const char *diagnostics) {
  json_t *oo = json_pack("{s:s, s:[{s:s, s:s, s:{s:s}, s:s}]}", "resourceType",
                         "OperationOutcome", "issue", "severity", "error", "code", code,
                         "details", "text", diagnostics, "diagnostics", diagnostics);
  sim_resp_json(resp, status, SIM_CT_FHIR, oo);
}

static void unauthorized(sim_resp *resp, const char *why) {
  sim_fhir_outcome(resp, 401, "login", why);
  /* why never contains quotes: it comes from fixed strings in state.c/here. */
  sim_resp_header(resp, "WWW-Authenticate",
                  "Bearer realm=\"" REALM "\", error=\"invalid_token\", error_description=\"%s\"",
                  why);
}

/* The token after "Bearer " (scheme case-insensitive), or NULL. */
static const char *bearer_token(const sim_req *req) {
  const char *h = sim_req_header(req, "Authorization");
  if (!h || strncasecmp(h, "Bearer ", 7) != 0) return NULL;
  h += 7;
  while (*h == ' ') h++;
  return *h ? h : NULL;
}

/* SMART v2 permissions are a subsequence of "cruds"; reading needs 'r'. */
static bool v2_permits_read(const char *perm, size_t len) {
  const char *order = "cruds";
  bool read = false;
  for (size_t i = 0; i < len; i++) {
    const char *at = memchr(order, perm[i], strlen(order));
    if (!at) return false;
    order = at + 1;
    read = read || perm[i] == 'r';
  }
  return read;
}

/* True if a granted scope allows reading `type`: system/T.read (v1) or
 * system/T.<v2 permissions with r>, optionally followed by "?query". */
bool sim_fhir_scope_allows_read(const char *scopes, const char *type) {
  size_t tlen = strlen(type);
  for (const char *p = scopes; *p;) {
    size_t len = strcspn(p, " ");
    const char *end = p + len;
    if (len > 7 + tlen + 1 && strncmp(p, "system/", 7) == 0 && strncmp(p + 7, type, tlen) == 0 &&
        p[7 + tlen] == '.') {
      const char *perm = p + 7 + tlen + 1;
      size_t plen = strcspn(perm, " ?");
      if ((plen == 4 && strncmp(perm, "read", 4) == 0) || v2_permits_read(perm, plen))
        return true;
    }
    p = *end ? end + 1 : end;
  }
  return false;
}

/* Checks the bearer token; fills resp (401) and returns NULL when it is not
 * valid, else returns its granted scopes and the client it was issued to
 * (new strings, caller frees). */
static char *authenticate(sim_req *req, sim_resp *resp, char **client_id) {
  const char *token = bearer_token(req);
  if (!token) {
    unauthorized(resp, "the request has no bearer token");
    return NULL;
  }
  char why[128], *scopes = NULL;
  if (sim_state_token_scope(req->st, req->tenant, token, &scopes, client_id, why, sizeof why) !=
      0) {
    unauthorized(resp, why);
    return NULL;
  }
  return scopes;
}

void sim_fhir_forbidden(sim_resp *resp, const char *type) {
  char diag[256];
  snprintf(diag, sizeof diag,
           "insufficient scope: the access token lacks system/%s.read (SMART v2: system/%s.rs)",
           type, type);
  sim_fhir_outcome(resp, 403, "forbidden", diag);
}

/* Binary needs its own scope plus one of the types whose attachments it
 * holds, as on Cerner. Fills resp and returns false when not allowed. */
static bool binary_allowed(const char *scopes, sim_resp *resp) {
  if (!sim_fhir_scope_allows_read(scopes, "Binary")) {
    sim_fhir_forbidden(resp, "Binary");
    return false;
  }
  if (!sim_fhir_scope_allows_read(scopes, "DocumentReference") &&
      !sim_fhir_scope_allows_read(scopes, "DiagnosticReport")) {
    sim_fhir_outcome(resp, 403, "forbidden",
                     "insufficient scope: reading Binary also needs system/DocumentReference.read "
                     "or system/DiagnosticReport.read");
    return false;
  }
  return true;
}

/* What Express answers for a route it does not have: the reference server
 * has Group read and $export under its FHIR base, but no read or search. */
static void cannot_get(const sim_req *req, sim_resp *resp) {
  sim_buf b = {0};
  sim_buf_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                   "<title>Error</title>\n</head>\n<body>\n<pre>Cannot GET ");
  for (const char *p = req->path; *p; p++) /* client bytes: only what needs no escaping */
    sim_buf_append(&b, strchr("<>&\"'", *p) || (unsigned char)*p < 0x20 ? "?" : p, 1);
  sim_buf_puts(&b, "</pre>\n</body>\n</html>\n");
  size_t len;
  char *body = sim_buf_steal(&b, &len);
  sim_resp_body(resp, 404, "text/html; charset=utf-8", body, body ? len : 0);
}

/* Ids as Cerner's look: letters, digits, '-', '.' and '_' (CareTeam's
 * CARE_TEAM-..., care-team.md). */
static bool id_valid(const char *id) {
  size_t len = strlen(id);
  if (len == 0 || len > 64) return false;
  for (const char *p = id; *p; p++)
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '.' || *p == '_'))
      return false;
  return true;
}

static void read_resource(sim_req *req, sim_resp *resp, sim_rtype type, const char *id) {
  bool valid = id_valid(id);
  uint64_t handle;
  if (!valid || !sim_store_resolve(req->tenant->store, type, id, &handle)) {
    /* Only a valid id is echoed: the path is client-controlled bytes. */
    char diag[160];
    snprintf(diag, sizeof diag, "%s/%s was not found", sim_rtype_name(type),
             valid ? id : "(invalid id)");
    sim_fhir_outcome(resp, 404, "not-found", diag);
    return;
  }
  sim_buf b = {0};
  sim_store_write(req->tenant->store, type, handle, req->host, &b);
  size_t len;
  char *body = sim_buf_steal(&b, &len);
  if (body)
    sim_resp_body(resp, 200, SIM_CT_FHIR, body, len);
  else
    sim_fhir_outcome(resp, 500, "exception", "out of memory");
}

/* Splits subpath "/Type" or "/Type/id"; returns the type or -1, and the id
 * (pointer into subpath, NULL for a search). */
static int parse_path(const char *subpath, char *type_name, size_t n, const char **id) {
  *id = NULL;
  if (*subpath != '/') return -1;
  size_t len = strcspn(subpath + 1, "/");
  if (len == 0 || len >= n) return -1;
  memcpy(type_name, subpath + 1, len);
  type_name[len] = '\0';
  const char *rest = subpath + 1 + len;
  if (*rest == '/') {
    *id = rest + 1;
    if (!**id || strchr(*id, '/')) return -1; /* no _history, $operations, ... yet */
  }
  return sim_rtype_from_name(type_name);
}

/* Reference server mode: which rate-limited route a request is, or -1. */
static int ref_route(const sim_req *req) {
  if (strcmp(req->method, "GET") != 0) return -1;
  char job[SIM_EXPORT_ID_LEN + 1];
  unsigned long file;
  if (sim_ref_parse_path(req->path, job, &file) == SIM_REF_PATH_STATUS)
    return SIM_REF_ROUTE_STATUS;
  const char *sub = req->subpath, *dollar = strstr(sub, "/$export");
  if (strncmp(sub, "/Group/", 7) == 0 && dollar && strcmp(dollar, "/$export") == 0 &&
      !memchr(sub + 7, '/', (size_t)(dollar - sub - 7)))
    return SIM_REF_ROUTE_KICKOFF;
  return -1;
}

void sim_fhir_handle(sim_req *req, sim_resp *resp) {
  char type_name[64];
  const char *id;
  int type = parse_path(req->subpath, type_name, sizeof type_name, &id);
  bool ref = req->tenant->ref.enabled;
  /* The reference server limits its kick-off and status routes before it
   * looks at the token (bulk_data_handler.ts: rateLimiter() comes first). */
  if (ref && sim_ref_rate_limited(req->st, req->tenant, ref_route(req), sim_now_ms(), resp))
    return;
  /* Authentication comes first, as on Cerner: nothing is revealed without a token. */
  char *client = NULL;
  char *scopes = authenticate(req, resp, &client);
  if (!scopes) return;
  char job[SIM_EXPORT_ID_LEN + 1];
  unsigned long file;
  if (ref && sim_ref_parse_path(req->path, job, &file) != SIM_REF_PATH_NONE)
    sim_ref_export_handle(req, resp, client); /* status, DELETE and files outside the base */
  else if (sim_export_path(req->subpath))
    sim_export_handle(req, resp, scopes, client); /* DELETE is allowed there */
  else if (strcmp(req->method, "GET") != 0)
    sim_fhir_outcome(resp, 405, "not-supported", "this simulator serves GET only");
  else if (ref)
    cannot_get(req, resp); /* the reference server has no read or search API */
  else if (type < 0)
    sim_fhir_outcome(resp, 404, "not-supported", "unknown resource type or path");
  else if (type == SIM_RT_BINARY && id) {
    if (binary_allowed(scopes, resp)) sim_fhir_read_binary(req, resp, id_valid(id) ? id : "");
  } else if (!sim_fhir_scope_allows_read(scopes, type_name))
    sim_fhir_forbidden(resp, type_name);
  else if (id)
    read_resource(req, resp, (sim_rtype)type, id);
  else
    sim_fhir_search(req, resp, sim_search_def_for((sim_rtype)type));
  free(scopes);
  free(client);
}

void sim_fhir_classify(const sim_req *req, char type[64], const char **kind, char read_key[160]) {
  const char *id;
  int t = parse_path(req->subpath, type, 64, &id);
  read_key[0] = '\0';
  if (t < 0) {
    type[0] = '\0';
    *kind = "search";
    return;
  }
  if (id) {
    *kind = "read";
    snprintf(read_key, 160, "%s/%s", type, id_valid(id) ? id : "(invalid id)");
  } else {
    *kind = sim_req_query(req, "-pageContext") ? "page" : "search";
  }
}
