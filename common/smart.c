#include "common/smart.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/config.h"
#include "common/jwt.h"
#include "common/strutil.h"
#include "common/url.h"
#include "common/log.h"

#define DEFAULT_EXPIRES_IN 300

void fx_token_grant_clear(fx_token_grant *g) {
  if (!g) return;
  if (g->access_token) OPENSSL_cleanse(g->access_token, strlen(g->access_token));
  free(g->access_token);
  free(g->token_type);
  free(g->scope);
  memset(g, 0, sizeof *g);
}

static void auth_error(fx_auth_error *e, int code, long status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void auth_error(fx_auth_error *e, int code, long status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->err.msg, sizeof e->err.msg, fmt, ap);
  va_end(ap);
  fx_utf8_trim(e->err.msg); /* the server's words may be cut: on a character */
  e->err.code = code;
  e->http_status = status;
}

/* ---- discovery ---------------------------------------------------------- */

static int json_array_has(json_t *arr, const char *s) {
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
      return 1;
  return 0;
}

static void join_strings(json_t *arr, char *buf, size_t size) {
  size_t i, used = 0;
  json_t *v;
  buf[0] = '\0';
  json_array_foreach(arr, i, v) {
    if (!json_is_string(v) || used >= size) continue;
    used += (size_t)snprintf(buf + used, size - used, "%s%s", used ? ", " : "",
                             json_string_value(v));
  }
}

int fx_smart_check_discovery(const char *tenant, long status, const char *body, fx_alg alg,
                             int production, char **token_endpoint, fx_auth_error *e) {
  memset(e, 0, sizeof *e);
  *token_endpoint = NULL;
  if (status >= 500 || status == 429 || status == 408) {
    auth_error(e, FX_ETRANSIENT, status,
               "tenant %s: SMART discovery answered HTTP %ld; retrying later", tenant, status);
    return e->err.code;
  }
  if (status != 200) {
    char redirect[300];
    fx_url_redirect_note(status, NULL, redirect, sizeof redirect);
    auth_error(e, FX_EAUTH, status,
               "tenant %s: SMART discovery answered HTTP %ld%s%s; check tenants[].fhir_base, or "
               "set tenants[].token_endpoint explicitly",
               tenant, status, redirect[0] ? ", " : "", redirect);
    return e->err.code;
  }
  json_t *doc = json_loads(body, 0, NULL);
  json_t *te = json_object_get(doc, "token_endpoint");
  int rc = 0;
  if (!json_is_object(doc) || !json_is_string(te)) {
    auth_error(e, FX_ETRANSIENT, status,
               "tenant %s: SMART discovery did not return a JSON document with a "
               "token_endpoint; retrying later (set tenants[].token_endpoint to skip discovery)",
               tenant);
    rc = e->err.code;
    goto out;
  }
  json_t *methods = json_object_get(doc, "token_endpoint_auth_methods_supported");
  if (json_is_array(methods) && !json_array_has(methods, "private_key_jwt")) {
    char list[256];
    join_strings(methods, list, sizeof list);
    auth_error(e, FX_EUNSUPPORTED, status,
               "tenant %s: the server does not offer private_key_jwt client authentication "
               "(it offers: %s); SMART Backend Services cannot work with it",
               tenant, list);
    rc = e->err.code;
    goto out;
  }
  json_t *algs = json_object_get(doc, "token_endpoint_auth_signing_alg_values_supported");
  if (json_is_array(algs) && !json_array_has(algs, fx_alg_name(alg))) {
    char list[256];
    join_strings(algs, list, sizeof list);
    auth_error(e, FX_EUNSUPPORTED, status,
               "tenant %s: the server does not accept %s client assertions (it accepts: %s); "
               "configure a key for one of those (`fhirx keys generate --alg ...`)",
               tenant, fx_alg_name(alg), list);
    rc = e->err.code;
    goto out;
  }
  /* The rules a configured tenants[].token_endpoint passes, by the same
   * function: a client assertion goes to a discovered endpoint only if it
   * could have been configured there. */
  fx_err bad = {0};
  int urc = fx_config_check_url(json_string_value(te), "token_endpoint", production, NULL, &bad);
  /* Kept as the server wrote it: it is the assertion's aud. */
  if (!urc && !(*token_endpoint = strdup(json_string_value(te)))) urc = FX_ENOMEM;
  if (urc == FX_ENOMEM) {
    auth_error(e, FX_ENOMEM, status, "out of memory");
    rc = e->err.code;
  } else if (urc) {
    auth_error(e, FX_EAUTH, status,
               "tenant %s: SMART discovery names a token endpoint fhirx will not send a client "
               "assertion to (%s); if the server really uses another endpoint, set "
               "tenants[].token_endpoint, which is held to the same rules",
               tenant, bad.msg);
    rc = e->err.code;
  }
out:
  json_decref(doc);
  return rc;
}

typedef struct disc_ctx {
  char *tenant;
  fx_alg alg;
  int production;
  fx_smart_discovery_cb cb;
  void *arg;
} disc_ctx;

static void on_discovery(fx_http_response *res, void *arg) {
  disc_ctx *d = arg;
  fx_auth_error e;
  char *te = NULL;
  if (res->result) {
    char shown[512];
    fx_url_redact(res->url, shown, sizeof shown);
    memset(&e, 0, sizeof e);
    auth_error(&e, res->result == FX_ECANCELED ? FX_ECANCELED : FX_ETRANSIENT, 0,
               "tenant %s: SMART discovery at %s failed: %s; retrying later", d->tenant, shown,
               res->error);
  } else {
    fx_smart_check_discovery(d->tenant, res->status, res->body, d->alg, d->production, &te, &e);
  }
  d->cb(te, te ? NULL : &e, d->arg);
  free(te);
  free(d->tenant);
  free(d);
}

int fx_smart_discover(fx_http *http, const char *tenant, const char *fhir_base, fx_alg alg,
                      int production, fx_smart_discovery_cb cb, void *arg, fx_err *err) {
  size_t n = strlen(fhir_base) + sizeof "/.well-known/smart-configuration";
  char *url = malloc(n);
  disc_ctx *d = calloc(1, sizeof *d);
  if (!url || !d || !(d->tenant = strdup(tenant))) {
    free(url);
    if (d) free(d->tenant);
    free(d);
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  }
  snprintf(url, n, "%s/.well-known/smart-configuration", fhir_base);
  d->alg = alg;
  d->production = production;
  d->cb = cb;
  d->arg = arg;
  fx_http_request req = {.url = url, .accept = "application/json"};
  int rc = fx_http_send(http, &req, on_discovery, d, err);
  free(url);
  if (rc) {
    free(d->tenant);
    free(d);
  }
  return rc;
}

/* ---- token exchange ----------------------------------------------------- */

int fx_smart_cerner_reason(const char *error_uri, char *out, size_t out_size) {
  static const char marker[] = "oauth2%3Atoken%3A";
  static const char marker_plain[] = "oauth2:token:";
  if (!error_uri) return -1;
  const char *p = strstr(error_uri, marker);
  size_t skip = sizeof marker - 1;
  if (!p) {
    p = strstr(error_uri, marker_plain);
    skip = sizeof marker_plain - 1;
  }
  if (!p) return -1;
  p += skip;
  size_t n = strcspn(p, "/?#%");
  if (n == 0 || n >= out_size) return -1;
  memcpy(out, p, n);
  out[n] = '\0';
  return 0;
}

char *fx_scope_missing(const char *want, const char *have) {
  size_t cap = strlen(want) + 1;
  char *out = calloc(1, cap);
  if (!out) return NULL;
  size_t used = 0;
  for (const char *p = want; *p;) {
    p += strspn(p, " ");
    size_t len = strcspn(p, " ");
    if (!len) break;
    int found = 0;
    for (const char *q = have ? have : ""; *q && !found;) {
      q += strspn(q, " ");
      size_t ql = strcspn(q, " ");
      found = ql == len && strncmp(p, q, len) == 0;
      q += ql;
    }
    if (!found) {
      if (used) out[used++] = ' ';
      memcpy(out + used, p, len);
      used += len;
      out[used] = '\0';
    }
    p += len;
  }
  return out;
}

/* What an operator should check for each reason a strict server (Cerner, or
 * our simulator, which uses these reason names) gives for invalid_client. */
static const char *invalid_client_hint(const char *reason) {
  static const struct {
    const char *reason, *hint;
  } hints[] = {
      {"unknown-kid", "the JWKS registered for this app does not contain the kid we signed with: "
                      "publish the output of `fhirx keys jwks` at the JWKS URL on Cerner Central "
                      "(the server may cache the old set for a while)"},
      {"jwks-unavailable", "the server could not fetch or parse the JWKS URL registered on Cerner "
                           "Central: check that it is publicly reachable over HTTPS and serves "
                           "`fhirx keys jwks` output"},
      {"invalid-signature", "the signature did not verify with the published key of that kid: "
                            "the JWKS URL may serve a different key with the same kid"},
      {"unsupported-algorithm", "the server does not accept this signing algorithm"},
      {"unknown-client", "the client_id is not registered for this tenant: check "
                         "tenants[].client_id against Code Console and that the tenant's admin "
                         "authorized the app"},
      {"sub-mismatch", "iss and sub must both be the client_id"},
      {"invalid-audience", "aud must be the token endpoint exactly: check tenants[].token_endpoint "
                           "or leave it unset to use discovery"},
      {"expired", "the assertion had already expired: check this machine's clock (NTP)"},
      {"expiration-too-far", "exp was more than 5 minutes ahead: check this machine's clock (NTP) "
                             "and auth.assertion_lifetime_s"},
      {"missing-expiration", "the assertion had no exp claim"},
      {"jti-replayed", "the server saw this jti before; a retry must sign a new assertion"},
  };
  for (size_t i = 0; reason && i < sizeof hints / sizeof hints[0]; i++)
    if (strcmp(reason, hints[i].reason) == 0) return hints[i].hint;
  return "check that the JWKS URL registered on Cerner Central is reachable and serves our "
         "current keys (`fhirx keys jwks`), and that tenants[].client_id matches Code Console";
}

void fx_smart_scope_list(const char *scope, size_t room, char *out, size_t size) {
  if (!size) return;
  if (room >= size) room = size - 1;
  size_t len = strlen(scope);
  if (len <= room) {
    memcpy(out, scope, len + 1);
    return;
  }
  size_t total = 0;
  for (const char *p = scope + strspn(scope, " "); *p; p += strspn(p, " ")) {
    total++;
    p += strcspn(p, " ");
  }
  /* Keep whole scopes while they and the note about the rest still fit. */
  size_t kept = 0, end = 0;
  char tail[64];
  for (const char *p = scope + strspn(scope, " "); *p; p += strspn(p, " ")) {
    size_t wl = strcspn(p, " "), at = (size_t)(p - scope), left = total - kept - 1;
    int tl = left ? snprintf(tail, sizeof tail, " ... (%zu more scope%s)", left,
                             left == 1 ? "" : "s")
                  : 0;
    if (at + wl + (size_t)tl > room) break;
    kept++;
    end = at + wl;
    p += wl;
  }
  size_t left = total - kept;
  if (left)
    snprintf(tail, sizeof tail, "%s... (%zu more scope%s)", kept ? " " : "", left,
             left == 1 ? "" : "s");
  else
    tail[0] = '\0';
  snprintf(out, size, "%.*s%s", (int)end, scope, tail);
}

void fx_smart_client_id_shown(const char *id, char *out, size_t size) {
  size_t len = id ? strlen(id) : 0;
  if (len <= 48) {
    snprintf(out, size, "%s", id ? id : "");
    return;
  }
  size_t head = strcspn(id, ".");
  if (head > 32) head = 32;
  snprintf(out, size, "%.*s... (%zu characters)", (int)head, id, len);
}

static int token_error(const fx_smart_client *c, long status, json_t *doc, fx_auth_error *e) {
  const char *error = json_string_value(json_object_get(doc, "error"));
  const char *raw_desc = json_string_value(json_object_get(doc, "error_description"));
  const char *uri = json_string_value(json_object_get(doc, "error_uri"));
  /* The server's words may repeat what it received (the client assertion). */
  char desc_clean[512], error_clean[128];
  fx_redact_secrets(raw_desc, desc_clean, sizeof desc_clean);
  fx_redact_secrets(error, error_clean, sizeof error_clean);
  const char *desc = raw_desc ? desc_clean : NULL;
  error = error_clean;
  fx_utf8_copy(e->oauth_error, sizeof e->oauth_error, error);
  if (fx_smart_cerner_reason(uri, e->reason, sizeof e->reason) != 0) e->reason[0] = '\0';
  char why[320] = "";
  if (e->reason[0] && desc)
    snprintf(why, sizeof why, " (reason: %s; %.*s)", e->reason, (int)fx_utf8_cut(desc, 200), desc);
  else if (e->reason[0])
    snprintf(why, sizeof why, " (reason: %s)", e->reason);
  else if (desc)
    snprintf(why, sizeof why, " (%.*s)", (int)fx_utf8_cut(desc, 200), desc);
  if (strcmp(error, "invalid_client") == 0) {
    char client[96], aud[512];
    fx_smart_client_id_shown(c->client_id, client, sizeof client);
    fx_url_redact(c->token_endpoint, aud, sizeof aud); /* never its userinfo */
    auth_error(e, FX_EAUTH, status,
               "tenant %s: invalid_client%s: the token endpoint refused our client assertion, "
               "signed with kid '%s' (%s) as client '%s' for aud %s. Hint: %s",
               c->tenant, why, c->key->kid, fx_alg_name(c->key->alg), client, aud,
               invalid_client_hint(e->reason));
  } else if (strcmp(error, "invalid_scope") == 0) {
    /* The scope list can be long (a scope per resource type); the message
     * is built from lengths so that the hint always survives whole and the
     * list is cut between two scopes, saying how many were left out. */
    static const char hint[] =
        "; granted: nothing. Hint: tick these scopes for the app in Code Console (`fhirx "
        "scopes`), and check tenants[].smart_version (a SMART v2 registration drops v1 scopes)";
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "tenant %.64s: invalid_scope%s: none of the requested scopes were granted. "
                      "Asked for: ",
                      c->tenant, why);
    size_t used = hl < 0 ? 0 : (size_t)hl < sizeof head ? (size_t)hl : sizeof head - 1;
    size_t room = sizeof e->err.msg - 1 - used - (sizeof hint - 1);
    char list[sizeof e->err.msg];
    fx_smart_scope_list(c->scope ? c->scope : "", room, list, sizeof list);
    auth_error(e, FX_EAUTH, status, "%s%s%s", head, list, hint);
  } else {
    auth_error(e, FX_EAUTH, status,
               "tenant %s: the token endpoint refused the request: %s%s (HTTP %ld). Hint: %s",
               c->tenant, error, why, status,
               strcmp(error, "unauthorized_client") == 0
                   ? "the app is not allowed the client_credentials grant for this tenant; "
                     "register it as a System app and have the tenant authorize it"
                   : "this is a request the server considers malformed; report it with this "
                     "message");
  }
  return e->err.code;
}

int fx_smart_parse_token_response(const fx_smart_client *c, long status,
                                  const char *content_type, const char *body,
                                  fx_token_grant *grant, fx_auth_error *e) {
  memset(e, 0, sizeof *e);
  memset(grant, 0, sizeof *grant);
  json_t *doc = json_loads(body ? body : "", 0, NULL);
  int rc;
  if (json_is_object(doc) && json_is_string(json_object_get(doc, "error")) && status >= 400 &&
      status < 500) {
    rc = token_error(c, status, doc, e);
    goto out;
  }
  if (status >= 500 || status == 429 || status == 408 || !json_is_object(doc)) {
    const char *what = !json_is_object(doc)
                           ? (content_type && strstr(content_type, "html") ? "an HTML page"
                                                                           : "a non-JSON body")
                           : "a JSON body";
    int transient = status >= 500 || status == 429 || status == 408 || status == 200;
    char redirect[300], shown[512];
    fx_url_redirect_note(status, NULL, redirect, sizeof redirect);
    fx_url_redact(c->token_endpoint, shown, sizeof shown);
    auth_error(e, transient ? FX_ETRANSIENT : FX_EAUTH, status,
               "tenant %s: the token endpoint %s answered HTTP %ld with %s%s%s; %s", c->tenant,
               shown, status, what, redirect[0] ? ", " : "", redirect,
               transient ? "this looks like an outage or a proxy in the way, retrying with backoff"
                         : "check tenants[].token_endpoint (or let discovery find it)");
    rc = e->err.code;
    goto out;
  }
  if (status != 200) {
    auth_error(e, FX_EAUTH, status,
               "tenant %s: the token endpoint answered HTTP %ld without an OAuth error; check "
               "tenants[].token_endpoint",
               c->tenant, status);
    rc = e->err.code;
    goto out;
  }
  const char *tok = json_string_value(json_object_get(doc, "access_token"));
  const char *type = json_string_value(json_object_get(doc, "token_type"));
  json_t *exp = json_object_get(doc, "expires_in");
  const char *scope = json_string_value(json_object_get(doc, "scope"));
  if (!tok || !*tok || !type || strcasecmp(type, "bearer") != 0) {
    auth_error(e, FX_EAUTH, status,
               "tenant %s: the token response has no access_token or its token_type is not "
               "Bearer (got '%s'); fhirx only supports bearer tokens",
               c->tenant, type ? type : "nothing");
    rc = e->err.code;
    goto out;
  }
  grant->access_token = strdup(tok);
  grant->token_type = strdup(type);
  grant->scope = strdup(scope ? scope : c->scope); /* RFC 6749 5.1: omitted = as requested */
  /* Bounded here, where it is read: nothing downstream multiplies a lifetime
   * of 2^63 - 1 seconds into milliseconds. */
  json_int_t secs = json_is_integer(exp) ? json_integer_value(exp) : 0;
  grant->expires_in = secs <= 0                           ? DEFAULT_EXPIRES_IN
                      : secs > FX_TOKEN_MAX_EXPIRES_IN_S ? FX_TOKEN_MAX_EXPIRES_IN_S
                                                          : (long)secs;
  if (!grant->access_token || !grant->token_type || !grant->scope) {
    fx_token_grant_clear(grant);
    auth_error(e, FX_ENOMEM, status, "out of memory");
    rc = e->err.code;
    goto out;
  }
  rc = 0;
out:
  json_decref(doc);
  return rc;
}

typedef struct token_ctx {
  fx_smart_client c; /* strings below are owned copies */
  char *tenant, *client_id, *token_endpoint, *scope;
  fx_smart_token_cb cb;
  void *arg;
} token_ctx;

static void token_ctx_free(token_ctx *t) {
  free(t->tenant);
  free(t->client_id);
  free(t->token_endpoint);
  free(t->scope);
  free(t);
}

static void on_token(fx_http_response *res, void *arg) {
  token_ctx *t = arg;
  fx_auth_error e;
  fx_token_grant g;
  memset(&g, 0, sizeof g);
  int rc;
  if (res->result) {
    memset(&e, 0, sizeof e);
    char shown[512];
    fx_url_redact(t->token_endpoint, shown, sizeof shown);
    auth_error(&e, res->result == FX_ECANCELED ? FX_ECANCELED : FX_ETRANSIENT, 0,
               "tenant %s: token request to %s failed: %s; retrying with backoff", t->tenant,
               shown, res->error);
    rc = e.err.code;
  } else {
    rc = fx_smart_parse_token_response(&t->c, res->status, fx_http_header(res, "Content-Type"),
                                       res->body, &g, &e);
  }
  t->cb(rc ? NULL : &g, rc ? &e : NULL, t->arg);
  fx_token_grant_clear(&g);
  token_ctx_free(t);
}

/* application/x-www-form-urlencoded value. */
static char *form_escape(const char *s) {
  char *e = curl_easy_escape(NULL, s, 0);
  char *copy = e ? strdup(e) : NULL;
  curl_free(e);
  return copy;
}

int fx_smart_request_token(fx_http *http, const fx_smart_client *c, fx_smart_token_cb cb,
                           void *arg, fx_err *err) {
  char *assertion = NULL;
  int rc = fx_jwt_client_assertion(c->key, c->client_id, c->token_endpoint,
                                   c->assertion_lifetime_s, time(NULL), &assertion, err);
  if (rc) return rc;
  char *scope_e = form_escape(c->scope);
  token_ctx *t = calloc(1, sizeof *t);
  char *body = NULL;
  rc = FX_ENOMEM;
  if (!scope_e || !t) goto fail;
  t->tenant = strdup(c->tenant);
  t->client_id = strdup(c->client_id);
  t->token_endpoint = strdup(c->token_endpoint);
  t->scope = strdup(c->scope);
  if (!t->tenant || !t->client_id || !t->token_endpoint || !t->scope) goto fail;
  t->c = *c;
  t->c.tenant = t->tenant;
  t->c.client_id = t->client_id;
  t->c.token_endpoint = t->token_endpoint;
  t->c.scope = t->scope;
  t->cb = cb;
  t->arg = arg;
  /* The assertion is base64url and '.', which need no form escaping. */
  static const char fmt[] =
      "grant_type=client_credentials&scope=%s"
      "&client_assertion_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Aclient-assertion-type%%3Ajwt-bearer"
      "&client_assertion=%s";
  size_t n = sizeof fmt + strlen(scope_e) + strlen(assertion);
  body = malloc(n);
  if (!body) goto fail;
  snprintf(body, n, fmt, scope_e, assertion);
  fx_http_request req = {.method = "POST",
                         .url = c->token_endpoint,
                         .accept = "application/json",
                         .content_type = "application/x-www-form-urlencoded",
                         .body = body};
  rc = fx_http_send(http, &req, on_token, t, err);
  if (rc) goto fail;
  t = NULL;
  goto out;
fail:
  if (rc == FX_ENOMEM) fx_err_set(err, rc, "out of memory preparing a token request");
  if (t) token_ctx_free(t);
out:
  if (body) OPENSSL_clear_free(body, strlen(body));
  OPENSSL_clear_free(assertion, strlen(assertion));
  free(scope_e);
  return rc;
}
