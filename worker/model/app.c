#include "worker/model/app.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/model/resources.h"

int fx_app_load_keys(const fx_config *cfg, fx_keyset *ks, fx_err *err) {
  ks->keys = calloc(cfg->n_keys, sizeof *ks->keys);
  ks->n = 0;
  if (!ks->keys) return fx_err_set(err, FX_ENOMEM, "out of memory");
  for (size_t i = 0; i < cfg->n_keys; i++) {
    const fx_key_conf *k = &cfg->keys[i];
    fx_alg alg = k->alg < 0 ? FX_ALG_NONE : (k->alg == 0 ? FX_ALG_RS384 : FX_ALG_ES384);
    int rc = fx_key_load(k->path, alg, k->kid, &ks->keys[i], err);
    if (rc) {
      fx_err_prefix(err, "keys[%zu]", i);
      fx_keyset_free(ks);
      return rc;
    }
    ks->n = i + 1;
    for (size_t j = 0; j < i; j++)
      if (strcmp(ks->keys[j].kid, ks->keys[i].kid) == 0) {
        fx_err_set(err, FX_EINVAL,
                   "keys[%zu]: kid '%s' is already used by keys[%zu]; kids must be unique in the "
                   "JWKS",
                   i, ks->keys[i].kid, j);
        fx_keyset_free(ks);
        return FX_EINVAL;
      }
  }
  return 0;
}

int fx_app_check_resources(const fx_config *cfg, fx_err *err) {
  for (size_t i = 0; i < cfg->n_tenants; i++) {
    const fx_strlist *r = &cfg->tenants[i].resources;
    for (size_t j = 0; j < r->n; j++)
      if (!fx_resource_type_known(r->v[j]))
        return fx_err_set(err, FX_EINVAL,
                          "config %s: tenants[%zu].resources[%zu]: '%s' is not an R4 resource "
                          "type (names are case-sensitive: Observation)",
                          cfg->path ? cfg->path : "", i, j, r->v[j]);
  }
  return 0;
}

int fx_app_open(fx_app *app, const char *config_path, fx_err *err) {
  memset(app, 0, sizeof *app);
  int rc = fx_config_load(config_path, &app->cfg, err);
  if (!rc) rc = fx_app_check_resources(app->cfg, err);
  if (!rc) rc = fx_profile_set_load(app->cfg, &app->profiles, err);
  if (!rc) {
    const char *env = getenv("FHIRX_LOG_LEVEL"); /* the environment wins over the file */
    int level = env ? fx_log_level_parse(env) : -1;
    fx_log_set_level((fx_log_level)(level >= 0 ? level : app->cfg->log.level));
    rc = fx_app_load_keys(app->cfg, &app->keys, err);
  }
  if (!rc) rc = fx_token_cache_new(&app->keys, &app->cfg->auth, &app->tokens, err);
  for (size_t i = 0; !rc && i < app->cfg->n_tenants; i++) {
    char *scope = fx_tenant_scope(&app->cfg->tenants[i], app->profiles.by_tenant[i]);
    rc = scope ? fx_token_cache_set_tenant(app->tokens, &app->cfg->tenants[i], scope, err)
               : fx_err_set(err, FX_ENOMEM, "out of memory");
    free(scope);
  }
  if (rc) fx_app_close(app);
  return rc;
}

void fx_app_close(fx_app *app) {
  fx_token_cache_free(app->tokens);
  fx_keyset_free(&app->keys);
  fx_profile_set_free(&app->profiles);
  fx_config_free(app->cfg);
  memset(app, 0, sizeof *app);
}
