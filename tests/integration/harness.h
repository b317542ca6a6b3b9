/* A tenant wired to the simulator: keys on disk, their JWKS registered for a
 * client, a config, a token cache and a worker loop. Used by the auth
 * integration tests. */
#ifndef FX_HARNESS_H
#define FX_HARNESS_H

#include "common/config.h"
#include "common/fhir.h"
#include "common/keys.h"
#include "common/loop.h"
#include "common/token.h"
#include "fx_testsupport.h"

#define H_TENANT "ec2458f2-1e24-41c8-b71b-0e701af7583d"
#define H_CLIENT "fhirx-test-app"

typedef struct harness {
  char *dir;
  fx_sim sim;
  fx_keyset keys;
  fx_config *cfg;
  fx_token_cache *tokens;
  uv_loop_t uv;
  fx_loop lp;
} harness;

typedef struct harness_opts {
  fx_alg alg;                  /* signing key algorithm (default ES384) */
  const char *sim_tenant_json; /* extra fields for the sim tenant, e.g. "\"expires_in\":4" */
  const char *client_scopes;   /* JSON array text; default Patient + Observation read */
  const char *client_id;       /* what fhirx sends; default H_CLIENT */
  const char *token_endpoint;  /* tenant's explicit token_endpoint path on the sim, or NULL */
  const char *http_json;       /* the config's http section, or NULL */
  int publish_other_key;       /* register a different key's JWKS than the one that signs */
} harness_opts;

/* Sets everything up; fails the test on error. */
void h_open(harness *h, const harness_opts *o);
void h_close(harness *h);

/* Token from the cache, waiting on the loop if needed. Returns 0 and a new
 * reference in *tok, or the error code with *e filled. *waited tells whether
 * the cache had to ask the token endpoint (or wait for someone who did). */
int h_token(harness *h, fx_token **tok, fx_auth_error *e, int *waited);

typedef struct h_read {
  uv_loop_t *loop;
  int done;
  long status;
  int result;
  char *body;
  fx_auth_error ae;
  int failed_auth;
} h_read;

/* GET {fhir_base}/{path} through fx_fhir_get and wait for the answer. */
void h_get(harness *h, const char *path, h_read *out);
void h_read_free(h_read *r);

long h_counter(harness *h, const char *name);

#endif
