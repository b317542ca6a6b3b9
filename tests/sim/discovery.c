/* GET {fhir_base}/.well-known/smart-configuration, shaped like the document
 * Cerner's tenants publish. URLs are built from the request's Host header so
 * the same simulator works as 127.0.0.1 and as localhost. */
#include "tests/sim/http.h"

#include <stdio.h>
#include <string.h>

static json_t *strv_json(const sim_strv *sv) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < sv->n; i++) json_array_append_new(a, json_string(sv->v[i]));
  return a;
}

/* One system/<Type>.read per routed type; Binary is read-only like the rest. */
static json_t *scopes_supported(void) {
  json_t *a = json_array();
  for (int t = 0; a && t < SIM_RT_COUNT; t++) {
    char scope[96];
    snprintf(scope, sizeof scope, "system/%s.read", sim_rtype_name((sim_rtype)t));
    json_array_append_new(a, json_string(scope));
  }
  return a;
}

void sim_discovery_handle(sim_req *req, sim_resp *resp) {
  if (strcmp(req->method, "GET") != 0) {
    sim_fhir_outcome(resp, 405, "not-supported", "use GET for the SMART configuration");
    return;
  }
  char base[512], token[512], authorize[512], revoke[512];
  snprintf(base, sizeof base, "%s://%s/tenants/%s/protocols/oauth2/profiles/smart-v1",
           sim_scheme(), req->host, req->tenant->id);
  snprintf(token, sizeof token, "%s/token", base);
  snprintf(authorize, sizeof authorize, "%s/personas/provider/authorize", base);
  snprintf(revoke, sizeof revoke, "%s/token/revoke", base);
  /* auth_methods and signing_algs are immutable after start: no lock needed. */
  json_t *doc = json_pack(
      "{s:s, s:s, s:o, s:o, s:[s], s:[s,s,s], s:o, s:s, s:[s]}", "authorization_endpoint",
      authorize, "token_endpoint", token, "token_endpoint_auth_methods_supported",
      strv_json(&req->tenant->auth_methods), "token_endpoint_auth_signing_alg_values_supported",
      strv_json(&req->tenant->signing_algs), "grant_types_supported", "client_credentials",
      "capabilities", "client-confidential-asymmetric", "permission-v1", "permission-v2",
      "scopes_supported", scopes_supported(), "revocation_endpoint", revoke,
      "response_types_supported", "code");
  sim_resp_json(resp, 200, SIM_CT_JSON, doc);
  sim_resp_header(resp, "Cache-Control", "max-age=3600");
}
