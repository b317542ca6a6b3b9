/* The simulator's configuration file (see docs/simulator.md) and the client
 * objects the control API accepts in the same format. Parsing is strict:
 * unknown keys and wrong types are errors whose text names the field, e.g.
 * "tenants[0].clients[1].scopes: expected an array of strings". */
#ifndef SIM_CONFIG_H
#define SIM_CONFIG_H

#include "tests/sim/data.h"
#include "tests/sim/util.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* A registered client. Exactly one JWKS source is set. */
typedef struct sim_client {
  char *client_id;
  char *jwks_file; /* re-read on every token request (key rotation tests) */
  char *jwks_url;  /* fetched on every token request */
  json_t *jwks;    /* inline key set, owned */
  sim_strv scopes; /* registered scopes: the most a token can be granted */
} sim_client;

typedef struct sim_tenant_cfg {
  char *id;
  bool sandbox; /* adds Cerner's sandbox patients (WILMA SMART, ...) */
  long patients; /* synthetic patients 20000001.. */
  long expires_in;
  sim_strv auth_methods;
  sim_strv signing_algs;
  sim_client *clients;
  size_t nclients;
  sim_data_knobs data; /* per_patient, pools, Binary sizes, paging quirks */
} sim_tenant_cfg;

typedef struct sim_config {
  uint64_t seed;
  sim_tenant_cfg *tenants;
  size_t ntenants;
} sim_config;

/* Loads and validates path into *out (caller frees with sim_config_free).
 * Returns 0, or -1 with a one-line message in err. */
int sim_config_load(const char *path, sim_config *out, char *err, size_t errlen);
void sim_config_free(sim_config *c);

/* Parses one client object; `where` prefixes error messages ("clients[0]").
 * Returns 0 (out owns copies of everything, obj is not stolen) or -1. */
int sim_client_parse(json_t *obj, const char *where, sim_client *out, char *err,
                     size_t errlen);
/* Deep copy; returns 0 or -1 on OOM (dst left empty). */
int sim_client_copy(sim_client *dst, const sim_client *src);
void sim_client_clear(sim_client *c);

/* Tenant ids appear in URL paths, so they are limited to [A-Za-z0-9._-]. */
bool sim_tenant_id_valid(const char *id);

#endif
