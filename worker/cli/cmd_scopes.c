/* fhirx scopes: what to tick for the System app in Code Console. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/model/app.h"
#include "worker/cli/cli.h"
#include "worker/model/resources.h"

static const char scopes_usage[] =
    "usage: fhirx scopes --config FILE [--tenant ID]\n"
    "\n"
    "Prints one scope per line: the scopes fhirx requests, derived from the resource types it\n"
    "extracts (tenants[].resources, or the profile's default query set) plus, for a tenant\n"
    "with \"follow_references\": true, the types its profile reaches through references, in\n"
    "each tenant's SMART syntax (v1 system/X.read, v2 system/X.rs); tenants[].scopes replaces\n"
    "them. Tick exactly these for the app in Code Console, and no more: a server may refuse a\n"
    "scope for a type it does not have (invalid_scope). Without --tenant, prints the union\n"
    "over all tenants.\n";

int fx_cmd_scopes(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"tenant", required_argument, 0, 't'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL, *tenant = NULL;
  int c;
  fx_cli_log_level(FX_LOG_WARN);
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config = optarg; break;
    case 't': tenant = optarg; break;
    case 'h': fputs(scopes_usage, stdout); return FX_EXIT_OK;
    default: fputs(scopes_usage, stderr); return FX_EXIT_USAGE;
    }
  }
  config = fx_cli_config(config);
  if (!config) {
    fputs(scopes_usage, stderr);
    return FX_EXIT_USAGE;
  }
  fx_config *cfg = NULL;
  fx_err err = {0};
  if (fx_config_load(config, &cfg, &err) != 0)
    return fx_cli_fail("scopes", FX_EXIT_FAIL, "%s", err.msg);
  if (tenant && !fx_config_tenant(cfg, tenant)) {
    fx_config_free(cfg);
    return fx_cli_fail("scopes", FX_EXIT_USAGE, "tenant '%s' is not in the config's tenants[]",
                       tenant);
  }
  fx_profile_set profiles;
  if (fx_profile_set_load(cfg, &profiles, &err) != 0) {
    fx_config_free(cfg);
    return fx_cli_fail("scopes", FX_EXIT_FAIL, "%s", err.msg);
  }
  /* Union in first-seen order; scope strings are short, a linear scan is fine. */
  char **seen = NULL;
  size_t n_seen = 0;
  int rc = FX_EXIT_OK;
  for (size_t i = 0; i < cfg->n_tenants && rc == FX_EXIT_OK; i++) {
    if (tenant && strcmp(cfg->tenants[i].id, tenant) != 0) continue;
    char *scope = fx_tenant_scope(&cfg->tenants[i], profiles.by_tenant[i]);
    if (!scope) {
      rc = fx_cli_fail("scopes", FX_EXIT_FAIL, "out of memory");
      break;
    }
    for (char *save = NULL, *s = strtok_r(scope, " ", &save); s; s = strtok_r(NULL, " ", &save)) {
      size_t j = 0;
      while (j < n_seen && strcmp(seen[j], s) != 0) j++;
      if (j < n_seen) continue;
      char **grown = realloc(seen, (n_seen + 1) * sizeof *seen);
      if (!grown || !(grown[n_seen] = strdup(s))) {
        seen = grown ? grown : seen;
        rc = fx_cli_fail("scopes", FX_EXIT_FAIL, "out of memory");
        break;
      }
      seen = grown;
      puts(seen[n_seen++]);
    }
    free(scope);
  }
  for (size_t j = 0; j < n_seen; j++) free(seen[j]);
  free(seen);
  fx_profile_set_free(&profiles);
  fx_config_free(cfg);
  return rc;
}
