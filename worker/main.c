/* fhirx: extract FHIR data from Oracle Health (Cerner) Millennium tenants
 * with SMART Backend Services. */
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "worker/cli/cli.h"

static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} commands[] = {
    {"worker", fx_cmd_worker, "run the worker pool: consume jobs, extract, publish"},
    {"enqueue", fx_cmd_enqueue, "validate and produce extraction jobs"},
    {"replay", fx_cmd_replay, "send dead letters back to the jobs topic (or park them)"},
    {"report", fx_cmd_report, "summarize status records and results from the output topics"},
    {"keys", fx_cmd_keys, "generate signing keys; print the JWKS to publish on Cerner Central"},
    {"token", fx_cmd_token, "exchange a client assertion for an access token (smoke test)"},
    {"get", fx_cmd_get, "read one FHIR resource or search through the full auth chain"},
    {"scopes", fx_cmd_scopes, "print the scopes to tick for the app in Code Console"},
    {"config", fx_cmd_config, "check a configuration file; print the option reference"},
};

static void usage(FILE *out) {
  fprintf(out, "usage: fhirx <command> [options]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\nRun `fhirx <command> --help` for a command's options.\n"
               "Environment: FHIRX_CONFIG=FILE stands for --config FILE; FHIRX_LOG_LEVEL=\n"
               "debug|info|warn|error overrides the log level; FHIRX_BOOTSTRAP_SERVERS overrides\n"
               "kafka.bootstrap.servers; FHIRX_ADMIN_LISTEN overrides admin.listen.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return FX_EXIT_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return FX_EXIT_OK;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("fhirx 0.1.0\n");
    return FX_EXIT_OK;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "fhirx: unknown command '%s'; run `fhirx --help` for the list\n", argv[1]);
  return FX_EXIT_USAGE;
}
