/* What servers answer: OperationOutcome bodies (common/fhir.c
 * fx_fhir_outcome_summary), SMART discovery documents and token responses
 * (common/smart.c). The first byte picks the reply and, for discovery and
 * token responses, the HTTP status; the rest is the body. Properties:
 *  - an outcome summary stays within its buffer (whatever its size), is
 *    NUL-terminated valid UTF-8 on one line (no control character), and is empty unless the body is
 *    an OperationOutcome;
 *  - discovery gives a token endpoint only on a 2xx, and then an absolute
 *    https URL with a host; else an error with a message;
 *  - a token response gives a grant only on a 200 whose token_type is Bearer,
 *    with the body's access_token and an expires_in within
 *    1..FX_TOKEN_MAX_EXPIRES_IN_S; a refusal never quotes the access_token. */
#include <curl/curl.h>
#include <jansson.h>
#include <strings.h>

#include "common/fhir.h"
#include "common/smart.h"
#include "tests/fuzz/fuzz.h"

static const long statuses[] = {200, 201, 202, 204, 301, 307, 400, 401, 403, 404, 408, 429, 500, 503};
#define N_STATUSES (sizeof statuses / sizeof statuses[0])

static void check_outcome(const char *body, size_t size) {
  char *out = malloc(size + 1);
  if (!out) abort();
  out[size] = 'Z';
  fx_fhir_outcome_summary(body, out, size);
  FZ_CHECK(out[size] == 'Z', "the outcome summary wrote past %zu bytes", size);
  FZ_CHECK(memchr(out, '\0', size) != NULL, "the outcome summary is not terminated");
  FZ_CHECK(fz_utf8_valid(out), "the outcome summary \"%s\" is not valid UTF-8", out);
  for (const char *c = out; *c; c++)
    FZ_CHECK((unsigned char)*c >= 0x20 && *c != 0x7f,
             "the outcome summary \"%s\" holds a control character (not one line)", out);
  if (out[0]) {
    json_t *doc = json_loads(body, 0, NULL);
    const char *rt = json_string_value(json_object_get(doc, "resourceType"));
    FZ_CHECK(rt && strcmp(rt, "OperationOutcome") == 0, "a summary of a %s", rt ? rt : "non-resource");
    json_decref(doc);
  }
  free(out);
}

static void check_discovery(const char *body, long status) {
  char *te = NULL;
  fx_auth_error e;
  int rc = fx_smart_check_discovery("t1", status, body, FX_ALG_RS384, 1, &te, &e);
  if (rc != 0) {
    FZ_CHECK(te == NULL, "a refused discovery gave an endpoint");
    FZ_CHECK(e.err.msg[0] != '\0', "a refused discovery has no message");
    return;
  }
  FZ_CHECK(status >= 200 && status < 300, "discovery accepted on HTTP %ld", status);
  FZ_CHECK(te && *te, "discovery accepted without an endpoint");
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL;
  int ok = u && curl_url_set(u, CURLUPART_URL, te, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK;
  FZ_CHECK(ok && host && *host, "discovered token endpoint \"%s\" has no host", te);
  FZ_CHECK(strcasecmp(scheme, "https") == 0, "discovered token endpoint \"%s\" is not https", te);
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  free(te);
}

static void check_token(const char *body, long status) {
  static const fx_key key = {.pkey = NULL, .alg = FX_ALG_RS384, .kid = "fuzz-kid"};
  fx_smart_client c = {.tenant = "t1", .client_id = "c", .fhir_base = "https://x/r4/t1",
                       .token_endpoint = "https://x/token", .scope = "system/Patient.read",
                       .key = &key};
  fx_token_grant g;
  fx_auth_error e;
  int rc = fx_smart_parse_token_response(&c, status, (status & 1) ? "text/html" : "application/json",
                                         body, &g, &e);
  json_t *doc = json_loads(body, 0, NULL);
  const char *tok = json_string_value(json_object_get(doc, "access_token"));
  if (rc == 0) {
    FZ_CHECK(status == 200, "a token grant on HTTP %ld", status);
    FZ_CHECK(g.access_token && tok && strcmp(g.access_token, tok) == 0,
             "the grant's token is not the body's access_token");
    FZ_CHECK(g.token_type && strcasecmp(g.token_type, "bearer") == 0, "a grant of a %s token",
             g.token_type ? g.token_type : "(null)");
    FZ_CHECK(g.scope != NULL, "a grant without a scope");
    FZ_CHECK(g.expires_in >= 1 && g.expires_in <= FX_TOKEN_MAX_EXPIRES_IN_S,
             "a grant expires in %ld s", g.expires_in);
    fx_token_grant_clear(&g);
  } else {
    FZ_CHECK(e.err.msg[0] != '\0', "a refused token response has no message");
    if (tok && strlen(tok) >= 8 && strstr(e.err.msg, tok)) {
      /* The same answer without its access_token: if that message holds the
       * text too, the message says it by itself (e.g. "access_token"). */
      json_t *without = json_deep_copy(doc);
      json_object_del(without, "access_token");
      char *body2 = json_dumps(without, JSON_COMPACT);
      fx_token_grant g2;
      fx_auth_error e2;
      if (fx_smart_parse_token_response(&c, status, (status & 1) ? "text/html" : "application/json",
                                        body2, &g2, &e2) == 0)
        fx_token_grant_clear(&g2);
      FZ_CHECK(strstr(e2.err.msg, tok) != NULL, "a token error quotes the access_token: %s",
               e.err.msg);
      free(body2);
      json_decref(without);
    }
  }
  json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  char *body = fz_str(data + 1, size - 1);
  long status = statuses[(data[0] >> 2) % N_STATUSES];
  switch (data[0] & 3) {
  case 0:
    check_outcome(body, 512);
    check_outcome(body, 1 + (size_t)(data[0] >> 2));
    break;
  case 1: check_discovery(body, status); break;
  default: check_token(body, status); break;
  }
  free(body);
  return 0;
}
