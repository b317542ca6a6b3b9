/* What every fhirx subcommand that talks to a tenant sets up: the config,
 * the signing keys, and the token cache with every tenant registered. */
#ifndef FX_APP_H
#define FX_APP_H

#include "common/config.h"
#include "common/keys.h"
#include "common/token.h"
#include "worker/model/profile.h"

typedef struct fx_app {
  fx_config *cfg;
  fx_profile_set profiles;
  fx_keyset keys;
  fx_token_cache *tokens;
} fx_app;

/* Loads the config at path, validates tenants' resource types, loads every
 * key (refusing group/world-readable files), and builds the token cache. */
int fx_app_open(fx_app *app, const char *config_path, fx_err *err);
void fx_app_close(fx_app *app);

/* Checks what the config tables cannot: every tenants[].resources entry is
 * a type fhirx knows. */
int fx_app_check_resources(const fx_config *cfg, fx_err *err);

/* Loads only the keys of cfg into ks. */
int fx_app_load_keys(const fx_config *cfg, fx_keyset *ks, fx_err *err);

#endif
