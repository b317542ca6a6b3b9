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

/* Longest client id a tenant registers (fhirx accepts up to 8192). */
#define SIM_CLIENT_ID_MAX 16384

/* A registered client. Exactly one JWKS source is set. */
typedef struct sim_client {
  char *client_id;
  char *jwks_file; /* re-read on every token request (key rotation tests) */
  char *jwks_url;  /* fetched on every token request */
  json_t *jwks;    /* inline key set, owned */
  sim_strv scopes; /* registered scopes: the most a token can be granted */
} sim_client;

/* A Group for Bulk Data $export: explicit patient ids, or the synthetic
 * patients first..first+count-1 (1-based: first 1 is 20000001). */
typedef struct sim_group_cfg {
  char *id;
  sim_strv patients; /* explicit members in order; empty when first > 0 */
  long first, count; /* first 0 = explicit list */
} sim_group_cfg;

/* Bulk Data $export behaviour of a tenant: config "export", changed at run
 * time by POST /_sim/tenants/{t}/export. */
typedef struct sim_export_settings {
  long duration_ms;        /* kick-off to completion */
  long retry_after_s;      /* Retry-After of 202 status polls and 429 kick-offs */
  long file_max_resources; /* NDJSON lines per file */
  bool error_file;         /* the manifest lists an error file of OperationOutcomes */
} sim_export_settings;

/* Bits of the `set` mask of sim_export_settings_parse: which keys were present. */
enum {
  SIM_XSET_DURATION = 1,
  SIM_XSET_RETRY_AFTER = 2,
  SIM_XSET_FILE_MAX = 4,
  SIM_XSET_ERROR_FILE = 8,
  SIM_XSET_FAIL_NEXT = 16,
};

void sim_export_settings_default(sim_export_settings *s);
/* Validates an export settings object strictly and writes the keys it has
 * into *out (others untouched), their bits into *set. fail_next (the control
 * API's one-shot key) is accepted only when fail_next is not NULL. `where`
 * prefixes messages ("tenants[0].export", or "" for the control API).
 * Returns 0 or -1 with a message naming the key. */
int sim_export_settings_parse(json_t *o, const char *where, sim_export_settings *out,
                              bool *fail_next, unsigned *set, char *err, size_t errlen);

/* Resource types the SMART reference server exports that Cerner's set has
 * not (docs/simulator.md "Reference server mode"): written only by
 * reference-server tenants' exports, never searchable. */
enum { SIM_REF_CLAIM, SIM_REF_EOB, SIM_REF_IMAGING, SIM_REF_EXTRA_COUNT };
extern const char *const sim_ref_extra_names[SIM_REF_EXTRA_COUNT];
/* Index in sim_ref_extra_names, or -1. */
int sim_ref_extra_from_name(const char *name);

/* "reference_server": a tenant that behaves like the SMART reference Bulk
 * Data server (smart-on-fhir/bulk-data-server) instead of Cerner where they
 * differ. Immutable after start-up. */
typedef struct sim_refserver_cfg {
  bool enabled;
  long extra[SIM_REF_EXTRA_COUNT]; /* resources per patient of each extra type */
  long rl_requests;                /* rate limit per route: requests per window (0 = none) */
  long rl_window_ms;
  long rl_block_ms;                /* a client over the limit is refused this long */
  sim_strv scopes;                 /* granted to clients registered through auth/register */
} sim_refserver_cfg;

/* Group ids appear in URL paths: [A-Za-z0-9.-]{1,64}. */
bool sim_group_id_valid(const char *id);

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
  sim_group_cfg *groups;
  size_t ngroups;
  sim_export_settings export_settings;
  sim_refserver_cfg ref;
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
