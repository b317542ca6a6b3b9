/* fhirx config check | reference */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "worker/model/app.h"
#include "worker/cli/cli.h"

static const char config_usage[] =
    "usage: fhirx config check --config FILE\n"
    "       fhirx config reference\n"
    "\n"
    "check      loads the file and every key exactly as the worker would; exit 0 if fine,\n"
    "           otherwise names the offending option and what to do.\n"
    "reference  prints the Markdown reference of every option (docs/configuration.md).\n";

int fx_cmd_config(int argc, char **argv) {
  fx_cli_log_level(FX_LOG_WARN);
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(config_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? FX_EXIT_USAGE : FX_EXIT_OK;
  }
  if (strcmp(argv[1], "reference") == 0) {
    fx_config_write_reference(stdout);
    return FX_EXIT_OK;
  }
  if (strcmp(argv[1], "check") != 0)
    return fx_cli_fail("config", FX_EXIT_USAGE, "unknown subcommand '%s'; use check or reference",
                       argv[1]);
  static const struct option opts[] = {{"config", required_argument, 0, 'c'}, {0, 0, 0, 0}};
  const char *config = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
    if (c != 'c') {
      fputs(config_usage, stderr);
      return FX_EXIT_USAGE;
    }
    config = optarg;
  }
  config = fx_cli_config(config);
  if (!config) {
    fputs(config_usage, stderr);
    return FX_EXIT_USAGE;
  }
  fx_app app;
  fx_err err = {0};
  if (fx_app_open(&app, config, &err) != 0)
    return fx_cli_fail("config check", FX_EXIT_FAIL, "%s", err.msg);
  printf("%s: ok (%zu tenant%s, %zu key%s; signing key kid %s, %s)\n", config, app.cfg->n_tenants,
         app.cfg->n_tenants == 1 ? "" : "s", app.keys.n, app.keys.n == 1 ? "" : "s",
         fx_keyset_signer(&app.keys)->kid, fx_alg_name(fx_keyset_signer(&app.keys)->alg));
  fx_app_close(&app);
  return FX_EXIT_OK;
}
