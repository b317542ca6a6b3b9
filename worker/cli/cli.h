/* Shared plumbing of the fhirx subcommands. */
#ifndef FX_CLI_H
#define FX_CLI_H

#include "common/err.h"

/* Exit statuses: 0 success, 1 the operation failed, 2 bad usage. */
enum { FX_EXIT_OK = 0, FX_EXIT_FAIL = 1, FX_EXIT_USAGE = 2 };

/* Prints "fhirx <cmd>: <message>" on one line to stderr and returns status. */
int fx_cli_fail(const char *cmd, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The config path a subcommand uses: the --config value if given, else
 * FHIRX_CONFIG (NULL when neither is set). */
const char *fx_cli_config(const char *given);

/* Log level for a subcommand: FHIRX_LOG_LEVEL if set, else `fallback`. */
void fx_cli_log_level(int fallback);

int fx_cmd_keys(int argc, char **argv);
int fx_cmd_token(int argc, char **argv);
int fx_cmd_get(int argc, char **argv);
int fx_cmd_scopes(int argc, char **argv);
int fx_cmd_config(int argc, char **argv);
int fx_cmd_worker(int argc, char **argv);
int fx_cmd_enqueue(int argc, char **argv);
int fx_cmd_report(int argc, char **argv);
int fx_cmd_replay(int argc, char **argv);

#endif
