/* SMART Backend Services on the wire: discovery and the token exchange.
 *
 * Discovery: GET {fhir_base}/.well-known/smart-configuration, checked for
 * private_key_jwt and our signing algorithm. Token exchange: POST a form with
 * grant_type=client_credentials, scope, client_assertion_type and a freshly
 * signed client_assertion. Failures are mapped to sentences an operator can
 * act on (which kid we signed with, which scopes we asked for, Cerner's
 * reason from error_uri), and classified permanent or transient. */
#ifndef FX_SMART_H
#define FX_SMART_H

#include <jansson.h>

#include "common/err.h"
#include "common/http.h"
#include "common/keys.h"

/* A token failure as the operator and the retry logic need it. */
typedef struct fx_auth_error {
  fx_err err;            /* code: FX_EAUTH (refused, fix config), FX_ETRANSIENT (retry),
                            FX_EUNSUPPORTED (server cannot take our key), FX_EINVAL ... */
  long http_status;      /* 0 if no HTTP answer */
  char oauth_error[64];  /* RFC 6749 5.2 error code, e.g. "invalid_client" */
  char reason[128];      /* Cerner's reason from error_uri, e.g. "unknown-kid" */
  long retry_after_ms;   /* set on cached failures: when the next attempt may happen */
} fx_auth_error;

/* What a tenant's token requests need; all strings borrowed. */
typedef struct fx_smart_client {
  const char *tenant;
  const char *client_id;
  const char *fhir_base;
  const char *token_endpoint; /* the POST URL and the assertion's aud */
  const char *scope;          /* space separated */
  const fx_key *key;          /* signs the assertion */
  int assertion_lifetime_s;
} fx_smart_client;

/* The longest token lifetime believed: a longer expires_in (up to 2^63 - 1 in
 * JSON) is read as this, so the cache's arithmetic (ms, percentages) cannot
 * wrap. Cerner grants 570 s; refreshing a day-long token early costs nothing. */
#define FX_TOKEN_MAX_EXPIRES_IN_S 86400L

typedef struct fx_token_grant {
  char *access_token; /* secret */
  char *token_type;
  char *scope;        /* granted (== requested when the server omits it) */
  long expires_in;    /* 1..FX_TOKEN_MAX_EXPIRES_IN_S */
} fx_token_grant;

void fx_token_grant_clear(fx_token_grant *g);

typedef void (*fx_smart_discovery_cb)(const char *token_endpoint, const fx_auth_error *e,
                                      void *arg);
typedef void (*fx_smart_token_cb)(fx_token_grant *grant, const fx_auth_error *e, void *arg);

/* GET the discovery document and check it against key's algorithm, and its
 * token endpoint against the rules a configured one passes
 * (fx_config_check_url; https when production is set). The callback gets the
 * token endpoint (borrowed) or an error. */
int fx_smart_discover(fx_http *http, const char *tenant, const char *fhir_base, fx_alg alg,
                      int production, fx_smart_discovery_cb cb, void *arg, fx_err *err);

/* Signs an assertion and POSTs the token request. The callback may take
 * ownership of the grant's strings (set them to NULL); the rest is freed. */
int fx_smart_request_token(fx_http *http, const fx_smart_client *c, fx_smart_token_cb cb,
                           void *arg, fx_err *err);

/* Pure functions behind the above, exposed for unit tests. */
int fx_smart_check_discovery(const char *tenant, long status, const char *body, fx_alg alg,
                             int production, char **token_endpoint, fx_auth_error *e);
int fx_smart_parse_token_response(const fx_smart_client *c, long status,
                                  const char *content_type, const char *body,
                                  fx_token_grant *grant, fx_auth_error *e);
/* Cerner's reason from an error_uri such as
 * ".../errors/urn%3Acerner%3Aerror%3Aauthorization-server%3Aoauth2%3Atoken%3Aunknown-kid/instances/..."
 * -> "unknown-kid". Returns 0 and fills out, or -1 if the URI holds none. */
int fx_smart_cerner_reason(const char *error_uri, char *out, size_t out_size);

/* The space-separated scope list for a message, in at most `room` bytes
 * (and size - 1): whole when it fits, else cut between two scopes with
 * " ... (N more scopes)" naming what was left out; never in the middle of a
 * scope. Written into out (NUL terminated). */
void fx_smart_scope_list(const char *scope, size_t room, char *out, size_t size);

/* Scopes in a space-separated list `want` that are missing from `have`,
 * space separated, in a new string (empty if none). */
char *fx_scope_missing(const char *want, const char *have);

/* A client id as logs and messages show it: whole when at most 48 characters,
 * else its first characters up to 32 (cut before the first '.', so a JWT
 * client id never appears as a JWT) and its length: "eyJhbGciOiJIUzI1NiIs...
 * (1057 characters)". A message keeps its hint however long the id is. */
void fx_smart_client_id_shown(const char *id, char *out, size_t size);

#endif
