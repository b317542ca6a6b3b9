/* fhirx worker */
#include <getopt.h>
#include <stdio.h>

#include "common/log.h"
#include "worker/cli/cli.h"
#include "worker/pool/pool.h"

static const char worker_usage[] =
    "usage: fhirx worker --config FILE\n"
    "\n"
    "Consumes extraction jobs from the jobs topic with the worker consumer group, fetches\n"
    "what each job names from its tenant, and publishes results, failures, dead letters and\n"
    "one status record per job. At-least-once: a job's offset is committed only after Kafka\n"
    "acknowledged everything it produced. SIGTERM/SIGINT drain and commit; a second signal\n"
    "exits at once. Logs are JSON lines on stderr (log.level, or FHIRX_LOG_LEVEL).\n";

int fx_cmd_worker(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config = optarg; break;
    case 'h': fputs(worker_usage, stdout); return FX_EXIT_OK;
    default: fputs(worker_usage, stderr); return FX_EXIT_USAGE;
    }
  }
  config = fx_cli_config(config);
  if (!config) {
    fputs(worker_usage, stderr);
    return FX_EXIT_USAGE;
  }
  return fx_pool_run(config) == 0 ? FX_EXIT_OK : FX_EXIT_FAIL;
}
