/* POST /tenants/{tenant}/protocols/oauth2/profiles/smart-v1/token
 *
 * SMART Backend Services client_credentials with a private_key_jwt client
 * assertion, validated as strictly as a real authorization server would, in
 * a fixed order so each test can provoke exactly one failure reason. Every
 * assertion failure is HTTP 400 invalid_client with Cerner's error_uri that
 * carries the reason code (see docs/simulator.md). */
#include "tests/sim/http.h"
#include "tests/sim/jwt.h"

#include "common/b64.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ASSERTION_TYPE "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#define MAX_EXP_AHEAD 300 /* seconds: SMART allows at most five minutes */
#define CLOCK_SKEW 5
#define ERROR_URN "urn%3Acerner%3Aerror%3Aauthorization-server%3Aoauth2%3Atoken%3A"

/* ---- form parsing ---- */

typedef struct form {
  sim_kv *kv;
  size_t n;
  bool duplicate; /* RFC 6749 3.2: parameters must not be repeated */
  bool malformed;
} form;

static void form_free(form *f) {
  for (size_t i = 0; i < f->n; i++) free(f->kv[i].key); /* value shares key's block */
  free(f->kv);
  *f = (form){0};
}

static const char *form_get(const form *f, const char *key) {
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->kv[i].key, key) == 0) return f->kv[i].value;
  return NULL;
}

/* Each pair is one malloc'd "key\0value" block: kv.value points into it. */
static int form_add(form *f, const char *pair, size_t len) {
  char *block = malloc(len + 2);
  sim_kv *kv = realloc(f->kv, (f->n + 1) * sizeof *kv);
  if (!block || !kv) {
    free(block);
    if (kv) f->kv = kv;
    return -1;
  }
  f->kv = kv;
  memcpy(block, pair, len);
  block[len] = '\0';
  char *eq = strchr(block, '=');
  char *value = eq ? eq + 1 : block + len + 1;
  if (eq) *eq = '\0';
  else block[len + 1] = '\0';
  if (!sim_form_unescape(block) || !sim_form_unescape(value)) f->malformed = true;
  if (form_get(f, block)) f->duplicate = true;
  kv[f->n].key = block;
  kv[f->n].value = value;
  f->n++;
  return 0;
}

static int form_parse(const sim_buf *body, form *f) {
  *f = (form){0};
  const char *p = body->data ? body->data : "";
  const char *end = p + body->len;
  while (p < end) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    size_t len = (size_t)((amp ? amp : end) - p);
    if (len && form_add(f, p, len) != 0) return -1;
    p += len + 1;
  }
  return 0;
}

static bool is_form_content_type(const char *ct) {
  static const char want[] = "application/x-www-form-urlencoded";
  if (!ct) return false;
  while (*ct == ' ') ct++;
  size_t n = strlen(want);
  return strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

char *sim_token_peek_client(const sim_req *req) {
  form f;
  char *client = NULL;
  if (form_parse(&req->body, &f) == 0) {
    const char *assertion = form_get(&f, "client_assertion");
    const char *id = form_get(&f, "client_id");
    client = assertion ? sim_jwt_peek_iss(assertion) : NULL;
    if (!client && id) client = strdup(id);
  }
  form_free(&f);
  return client;
}

/* ---- responses ---- */

static void no_store(sim_resp *resp) {
  sim_resp_header(resp, "Cache-Control", "no-store");
  sim_resp_header(resp, "Pragma", "no-cache");
}

static void oauth_error(sim_req *req, sim_resp *resp, unsigned status, const char *error,
                        const char *desc) {
  sim_count_token_outcome(req->st, req->tenant, error);
  sim_resp_json(resp, status, SIM_CT_JSON,
                json_pack("{s:s, s:s}", "error", error, "error_description", desc));
  no_store(resp);
}

static void invalid_client(sim_req *req, sim_resp *resp, const char *reason, const char *client,
                           const char *desc) {
  char uuid[37];
  sim_uuid4(uuid);
  sim_buf uri = {0};
  sim_buf_printf(&uri, "https://%s/errors/%s%s/instances/%s?client=", req->host, ERROR_URN,
                 reason, uuid);
  sim_buf_url_encode(&uri, client ? client : "");
  sim_buf_puts(&uri, "&tenant=");
  sim_buf_url_encode(&uri, req->tenant->id);
  sim_count_token_outcome(req->st, req->tenant, reason);
  sim_resp_json(resp, 400, SIM_CT_JSON,
                json_pack("{s:s, s:s, s:s}", "error", "invalid_client", "error_description", desc,
                          "error_uri", uri.data ? uri.data : ""));
  sim_buf_free(&uri);
  no_store(resp);
}

/* ---- assertion validation ---- */

typedef struct verdict {
  const char *reason; /* NULL when the assertion is valid */
  char desc[256];
  char *client_id;    /* iss once known (owned) */
  sim_client client;  /* the registered client, once found */
} verdict;

static void verdict_free(verdict *v) {
  free(v->client_id);
  sim_client_clear(&v->client);
}

/* Records the first failure; returns false so checks chain with &&. */
__attribute__((format(printf, 3, 4))) static bool fail(verdict *v, const char *reason,
                                                       const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  v->reason = reason;
  vsnprintf(v->desc, sizeof v->desc, fmt, ap);
  va_end(ap);
  sim_utf8_trim(v->desc);
  return false;
}

static bool check_alg(const sim_req *req, const sim_jwt *jwt, verdict *v) {
  const char *alg = json_string_value(json_object_get(jwt->header, "alg"));
  bool known = alg && (strcmp(alg, "RS384") == 0 || strcmp(alg, "ES384") == 0);
  if (!known || !sim_strv_contains(&req->tenant->signing_algs, alg))
    return fail(v, "unsupported-algorithm", "JWT alg %s is not supported by this tenant",
                alg ? alg : "(missing)");
  return true;
}

static bool check_client(sim_req *req, const sim_jwt *jwt, verdict *v) {
  const char *iss = json_string_value(json_object_get(jwt->claims, "iss"));
  const char *sub = json_string_value(json_object_get(jwt->claims, "sub"));
  if (!iss || sim_state_client_copy(req->st, req->tenant, iss, &v->client) != 0)
    return fail(v, "unknown-client", "iss %s is not a client registered with this tenant",
                iss ? iss : "(missing)");
  if (!sub || strcmp(sub, iss) != 0)
    return fail(v, "sub-mismatch", "sub must equal iss (%s)", iss);
  /* A jku header is only meaningful against a registered JWKS URL. */
  const char *jku = json_string_value(json_object_get(jwt->header, "jku"));
  if (jku && v->client.jwks_url && strcmp(jku, v->client.jwks_url) != 0)
    return fail(v, "jku-mismatch", "jku does not match the registered JWKS URL %s",
                v->client.jwks_url);
  return true;
}

static bool check_signature(const sim_jwt *jwt, const char *assertion, verdict *v) {
  char why[256] = "";
  json_t *jwks = sim_jwks_load(&v->client, why, sizeof why);
  if (!jwks) return fail(v, "jwks-unavailable", "the client's JWKS cannot be used: %s", why);
  const char *kid = json_string_value(json_object_get(jwt->header, "kid"));
  const char *alg = json_string_value(json_object_get(jwt->header, "alg"));
  const json_t *jwk = kid ? sim_jwks_find(jwks, kid) : NULL;
  bool ok = true;
  if (!jwk)
    ok = fail(v, "unknown-kid", "kid %s is not in the client's JWKS", kid ? kid : "(missing)");
  else if (sim_jwk_verify(jwk, alg, assertion, jwt->signing_len, jwt->sig, jwt->sig_len) != 0)
    ok = fail(v, "invalid-signature", "the signature does not verify with key %s", kid);
  json_decref(jwks);
  return ok;
}

static bool check_audience(const sim_req *req, const sim_jwt *jwt, verdict *v) {
  char expected[512];
  snprintf(expected, sizeof expected,
           "%s://%s/tenants/%s/protocols/oauth2/profiles/smart-v1/token", sim_scheme(),
           req->host, req->tenant->id);
  const json_t *aud = json_object_get(jwt->claims, "aud");
  if (json_is_string(aud) && strcmp(json_string_value(aud), expected) == 0) return true;
  size_t i;
  const json_t *a;
  json_array_foreach(aud, i, a) {
    if (json_is_string(a) && strcmp(json_string_value(a), expected) == 0) return true;
  }
  return fail(v, "invalid-audience", "aud must be the token endpoint %s", expected);
}

static bool check_expiry(const sim_jwt *jwt, verdict *v, int64_t *exp_out) {
  const json_t *exp = json_object_get(jwt->claims, "exp");
  if (!json_is_integer(exp)) return fail(v, "missing-expiration", "exp (integer) is required");
  int64_t now = sim_now(), e = (int64_t)json_integer_value(exp);
  if (e + CLOCK_SKEW <= now)
    return fail(v, "expired", "the assertion expired at %lld", (long long)e);
  if (e > now + MAX_EXP_AHEAD + CLOCK_SKEW)
    return fail(v, "expiration-too-far", "exp is more than %d seconds in the future",
                MAX_EXP_AHEAD);
  *exp_out = e;
  return true;
}

static bool check_jti(sim_req *req, const sim_jwt *jwt, int64_t exp, verdict *v) {
  const char *jti = json_string_value(json_object_get(jwt->claims, "jti"));
  if (!jti || !*jti) return fail(v, "missing-jti", "jti is required");
  int fresh = sim_state_use_jti(req->st, req->tenant, v->client_id, jti, exp);
  if (fresh == 0) return fail(v, "jti-replayed", "jti %s has already been used", jti);
  if (fresh < 0) return fail(v, "jti-replayed", "jti %s could not be recorded", jti);
  return true;
}

/* Runs the checks in the documented order; stops at the first failure. */
static void validate(sim_req *req, const char *assertion, verdict *v) {
  sim_jwt jwt;
  int64_t exp = 0;
  if (sim_jwt_parse(assertion, &jwt) != 0) {
    v->client_id = sim_jwt_peek_iss(assertion);
    fail(v, "malformed-assertion",
         "client_assertion is not a compact JWS with JSON header and claims");
    return;
  }
  v->client_id = sim_strdup(json_string_value(json_object_get(jwt.claims, "iss")));
  (void)(check_alg(req, &jwt, v) && check_client(req, &jwt, v) &&
         check_signature(&jwt, assertion, v) && check_audience(req, &jwt, v) &&
         check_expiry(&jwt, v, &exp) && check_jti(req, &jwt, exp, v));
  sim_jwt_clear(&jwt);
}

/* ---- scopes and success ---- */

/* Granted = requested scopes the client is registered for, in request order,
 * without duplicates. Returns a new space-separated string ("" if none). */
static char *grant_scopes(const char *requested, const sim_strv *registered) {
  sim_buf out = {0};
  sim_strv seen = {0};
  char *copy = strdup(requested);
  char *save = NULL;
  for (char *s = copy ? strtok_r(copy, " ", &save) : NULL; s; s = strtok_r(NULL, " ", &save)) {
    if (!sim_strv_contains(registered, s) || sim_strv_contains(&seen, s)) continue;
    sim_strv_push(&seen, s);
    if (out.len) sim_buf_puts(&out, " ");
    sim_buf_puts(&out, s);
  }
  free(copy);
  sim_strv_free(&seen);
  return sim_buf_steal(&out, NULL);
}

static void grant(sim_req *req, sim_resp *resp, const verdict *v, const char *requested) {
  char *scope = grant_scopes(requested, &v->client.scopes);
  if (!scope || !*scope) {
    oauth_error(req, resp, 400, "invalid_scope",
                "none of the requested scopes is registered for this client");
    free(scope);
    return;
  }
  long expires_in = sim_state_expires_in(req->st, req->tenant);
  char *token = sim_state_issue_token(req->st, req->tenant, v->client_id, scope, expires_in);
  if (!token) {
    free(scope);
    oauth_error(req, resp, 500, "server_error", "out of memory");
    return;
  }
  sim_count_token_outcome(req->st, req->tenant, NULL);
  sim_resp_json(resp, 200, SIM_CT_JSON,
                json_pack("{s:s, s:s, s:I, s:s}", "access_token", token, "token_type", "Bearer",
                          "expires_in", (json_int_t)expires_in, "scope", scope));
  no_store(resp);
  free(token);
  free(scope);
}

/* Returns the OAuth error for a bad request shape, or NULL if it is fine. */
static const char *check_request(const sim_req *req, const form *f, const char **desc) {
  const char *grant_type = form_get(f, "grant_type");
  const char *atype = form_get(f, "client_assertion_type");
  *desc = NULL;
  if (!is_form_content_type(sim_req_header(req, "Content-Type"))) {
    *desc = "Content-Type must be application/x-www-form-urlencoded";
  } else if (f->malformed || f->duplicate) {
    *desc = "the form body is malformed or repeats a parameter";
  } else if (!grant_type || strcmp(grant_type, "client_credentials") != 0) {
    *desc = "only grant_type=client_credentials is supported";
    return "unsupported_grant_type";
  } else if (!atype || strcmp(atype, ASSERTION_TYPE) != 0) {
    *desc = "client_assertion_type must be " ASSERTION_TYPE;
  } else if (!form_get(f, "client_assertion")) {
    *desc = "client_assertion is required";
  } else if (!form_get(f, "scope")) {
    *desc = "scope is required";
  }
  return *desc ? "invalid_request" : NULL;
}

void sim_token_handle(sim_req *req, sim_resp *resp) {
  if (strcmp(req->method, "POST") != 0) {
    oauth_error(req, resp, 405, "invalid_request", "the token endpoint only accepts POST");
    return;
  }
  form f;
  if (form_parse(&req->body, &f) != 0) {
    form_free(&f);
    oauth_error(req, resp, 500, "server_error", "out of memory");
    return;
  }
  const char *desc;
  const char *error = check_request(req, &f, &desc);
  if (error) {
    oauth_error(req, resp, 400, error, desc);
    form_free(&f);
    return;
  }
  verdict v = {0};
  validate(req, form_get(&f, "client_assertion"), &v);
  if (v.reason)
    invalid_client(req, resp, v.reason, v.client_id, v.desc);
  else
    grant(req, resp, &v, form_get(&f, "scope"));
  verdict_free(&v);
  form_free(&f);
}

/* ---- reference server mode: registration (POST /tenants/{t}/auth/register) ---- */

/* HS256 over header.payload with the process's secret: the reference server
 * signs its client ids with its own secret (registration_handler.ts). New
 * string or NULL. */
static char *sign_hs256(const sim_state *st, const char *input) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (!HMAC(EVP_sha256(), st->storage_secret, (int)sizeof st->storage_secret,
            (const unsigned char *)input, strlen(input), mac, &len))
    return NULL;
  return fx_b64url_encode_alloc(mac, len);
}

static char *b64_json(json_t *doc) {
  char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  char *out = text ? fx_b64url_encode_alloc((const uint8_t *)text, strlen(text)) : NULL;
  free(text);
  return out;
}

/* Registration errors are the server's OAuth-style errors; they are not
 * token requests, so they are not counted as token rejections. */
static void reg_error(sim_resp *resp, unsigned status, char *desc) {
  sim_utf8_trim(desc);
  sim_resp_json(resp, status, SIM_CT_JSON,
                json_pack("{s:s, s:s}", "error", status == 400 ? "invalid_request" : "server_error",
                          "error_description", desc));
}

/* Like the reference server: a form with `jwks` (the key set as JSON text)
 * or `jwks_url` answers text/plain, a JWT (HS256, kid "registration-token")
 * whose claims carry that key set: the client id, 557-1,057+ characters.
 * The client is registered with the tenant's reference_server.scopes. */
void sim_ref_register(sim_req *req, sim_resp *resp) {
  if (strcmp(req->method, "POST") != 0) {
    static const char text[] = "This endpoint can only be used with POST requests";
    sim_resp_body(resp, 400, "text/plain; charset=utf-8", strdup(text), sizeof text - 1);
    return;
  }
  form f;
  if (form_parse(&req->body, &f) != 0) {
    form_free(&f);
    reg_error(resp, 500, "out of memory");
    return;
  }
  const char *jwks_text = form_get(&f, "jwks"), *jwks_url = form_get(&f, "jwks_url");
  json_t *jwks = jwks_text ? json_loads(jwks_text, JSON_REJECT_DUPLICATES, NULL) : NULL;
  char err[256] = "";
  if (!is_form_content_type(sim_req_header(req, "Content-Type")) || f.malformed || f.duplicate)
    snprintf(err, sizeof err, "Invalid request content-type header (must be "
                              "'application/x-www-form-urlencoded')");
  else if (!jwks_text == !jwks_url)
    snprintf(err, sizeof err, "Either 'jwks' or 'jwks_url' is required");
  else if (jwks_text && !json_is_object(jwks))
    snprintf(err, sizeof err, "jwks: not a JSON object");
  char *id = NULL;
  if (!err[0]) {
    json_t *header = json_pack("{s:s, s:s, s:s}", "alg", "HS256", "typ", "JWT", "kid",
                               "registration-token");
    json_t *claims = jwks ? json_pack("{s:O, s:i}", "jwks", jwks, "accessTokensExpireIn", 15)
                          : json_pack("{s:s, s:i}", "jwks_url", jwks_url,
                                      "accessTokensExpireIn", 15);
    char *h = b64_json(header), *c = b64_json(claims);
    json_decref(header);
    json_decref(claims);
    sim_buf b = {0};
    if (h && c) sim_buf_printf(&b, "%s.%s", h, c);
    char *input = sim_buf_steal(&b, NULL), *sig = input ? sign_hs256(req->st, input) : NULL;
    if (sig) {
      sim_buf_printf(&b, "%s.%s", input, sig);
      id = sim_buf_steal(&b, NULL);
    }
    free(h), free(c), free(input), free(sig);
    if (!id) snprintf(err, sizeof err, "out of memory");
  }
  sim_client client = {0};
  if (!err[0]) {
    json_t *scopes = json_array();
    for (size_t i = 0; scopes && i < req->tenant->ref.scopes.n; i++)
      json_array_append_new(scopes, json_string(req->tenant->ref.scopes.v[i]));
    json_t *spec = jwks ? json_pack("{s:s, s:O, s:o}", "client_id", id, "jwks", jwks, "scopes",
                                    scopes)
                        : json_pack("{s:s, s:s, s:o}", "client_id", id, "jwks_url", jwks_url,
                                    "scopes", scopes);
    if (!spec || sim_client_parse(spec, "registration", &client, err, sizeof err) != 0 ||
        sim_state_put_client(req->st, req->tenant, &client) != 0) {
      if (!err[0]) snprintf(err, sizeof err, "out of memory");
    } else {
      sim_count_ref_registration(req->st, req->tenant);
    }
    json_decref(spec);
    sim_client_clear(&client);
  }
  if (err[0]) {
    reg_error(resp, 400, err);
    free(id);
  } else {
    size_t len = strlen(id);
    sim_resp_body(resp, 200, "text/plain; charset=utf-8", id, len);
  }
  json_decref(jwks);
  form_free(&f);
}
