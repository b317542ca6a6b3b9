/* Test support for fhirx's C tests: start/stop/query the Cerner simulator,
 * plain HTTP requests, temporary directories and running commands.
 *
 * Every function reports failures with a line on stderr (so a failing test
 * says why) and an error return; none aborts. Not thread-safe unless noted:
 * use from the test's main thread. */
#ifndef FX_TESTSUPPORT_H
#define FX_TESTSUPPORT_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

/* ---- the simulator ---- */

typedef struct fx_sim {
  pid_t pid;
  int port;
  char url[128]; /* "http://127.0.0.1:PORT" */
  char dir[256]; /* temp dir holding config.json and the port file */
} fx_sim;

/* Path of the cerner-sim binary: env FX_SIM_BIN, else the one built with
 * this library. */
const char *fx_sim_binary(void);

/* Writes config_json to a fresh temp dir, spawns cerner-sim on a random port
 * (binary: env FX_SIM_BIN, else the path compiled in) and waits up to 10 s
 * for its port file. Returns 0, or -1 with a message on stderr (then nothing
 * is left running and the dir is removed). The simulator gets SIGTERM when
 * the calling thread exits, so a crashed or timed-out test leaves no orphan:
 * call it from a thread that lives as long as the simulator should. */
int fx_sim_start(fx_sim *s, const char *config_json);
/* Same, with extra command-line arguments (NULL-terminated, may be NULL),
 * e.g. {"--threads", "4", "--verbose", NULL}. */
int fx_sim_start_args(fx_sim *s, const char *config_json, const char *const *extra_args);

/* SIGTERM, wait (SIGKILL after 10 s), remove the temp dir. Safe to call on a
 * zeroed or already stopped fx_sim. */
void fx_sim_stop(fx_sim *s);
/* Like fx_sim_stop, returning the simulator's exit status: 0 for a clean
 * shutdown (under ASan, leaks make it non-zero), 128+N if killed by signal N,
 * -1 if there was nothing to stop. */
int fx_sim_stop_status(fx_sim *s);

/* GET s->url + path and parse the body. New reference, or NULL when the
 * request fails, the status is not 2xx or the body is not JSON. */
json_t *fx_sim_get_json(const fx_sim *s, const char *path);
/* POST body (JSON text, may be NULL for empty) to s->url + path. Returns the
 * HTTP status, or -1 if the request failed. */
int fx_sim_post_json(const fx_sim *s, const char *path, const char *body);
/* DELETE s->url + path. Returns the HTTP status or -1. */
int fx_sim_delete(const fx_sim *s, const char *path);

/* A counter from GET /_sim/counters for a tenant. `name` is a top-level
 * counter ("token_requests") or "map.key" for counter maps, split at the
 * first dot ("token_rejections.jti-replayed", "fhir_by_status.401",
 * "token_requests_by_client.abc-123"). A missing map key counts 0. Returns
 * -1 if the tenant or counter does not exist or the request fails. */
long fx_sim_counter(const fx_sim *s, const char *tenant, const char *name);

/* GET /_sim/tenants/{tenant}/expected: what a correct per-patient extraction
 * of `types` (comma-separated, NULL = every per-patient type) returns for
 * `patient` (one id or a comma list), with _lastUpdated=ge`since` where the
 * type honours it (since may be NULL). New reference
 * {"resources": ["Type/id", ...], "references": [...]}, or NULL on error. */
json_t *fx_sim_expected(const fx_sim *s, const char *tenant, const char *patient,
                        const char *types, const char *since);
/* How often `path` ("Practitioner/4000001") was read on the tenant since the
 * last counter reset (GET /_sim/tenants/{tenant}/reads); -1 on error. */
long fx_sim_reads(const fx_sim *s, const char *tenant, const char *path);

/* ---- the canary: a host that must never be contacted ---- */

typedef struct fx_canary {
  pid_t pid;
  int port;
  char url[128]; /* "http://127.0.0.1:PORT": the origin to hand to foreign_next etc. */
  char dir[256]; /* temp dir holding the port file */
} fx_canary;

/* Path of the fhirx-canary binary: env FX_CANARY_BIN, else the one built
 * with this library. */
const char *fx_canary_binary(void);
/* Spawns fhirx-canary on 127.0.0.1 and a random port and waits up to 10 s
 * for it, like fx_sim_start (same orphan protection). extra_args: NULL or
 * NULL-terminated, e.g. {"--ok", NULL} to answer 200 instead of 404.
 * Returns 0, or -1 with a message on stderr. */
int fx_canary_start(fx_canary *c, const char *const *extra_args);
/* SIGTERM and wait; the exit status (0 = clean) or -1 if nothing ran. */
int fx_canary_stop_status(fx_canary *c);
void fx_canary_stop(fx_canary *c);
/* GET /_canary/requests: new reference {"requests": N, "with_authorization":
 * M, "paths": [...], "log": [{"method", "path", "authorization"}]}, or NULL
 * (message on stderr). */
json_t *fx_canary_requests(const fx_canary *c);
/* One number from it: "requests" or "with_authorization"; -1 on error. */
long fx_canary_count(const fx_canary *c, const char *name);
/* DELETE /_canary/requests. Returns the HTTP status or -1. */
int fx_canary_reset(const fx_canary *c);

/* ---- HTTP ---- */

typedef struct fxt_http_resp {
  long status;   /* 0 if no response */
  char *body;    /* NUL-terminated (body_len excludes the NUL); owned */
  size_t body_len;
  char *headers; /* raw response header block; owned */
} fxt_http_resp;

/* One request with libcurl. headers: NULL-terminated "Name: value" strings or
 * NULL; body: request body or NULL (sent with its strlen). Returns 0 when a
 * response arrived (any status), -1 on transport failure; out is always
 * initialized and must be freed with fxt_http_resp_free. Thread-safe. */
int fxt_http(const char *method, const char *url, const char *const *headers, const char *body,
             fxt_http_resp *out);
/* Value of the first header called name (case-insensitive), trimmed; new
 * string (caller frees) or NULL. */
char *fxt_http_header(const fxt_http_resp *r, const char *name);
void fxt_http_resp_free(fxt_http_resp *r);

/* ---- files and processes ---- */

/* mkdtemp under $TMPDIR or /tmp; new string (caller frees) or NULL. */
char *fx_test_tmpdir(void);
/* Recursively removes path (no symlink following). Returns 0 or -1. */
int fx_test_rmtree(const char *path);
/* Writes content to path (created 0600, truncated). Returns 0 or -1. */
int fx_test_write_file(const char *path, const char *content);
/* Whole file as a new NUL-terminated string (caller frees), length in *len
 * if len is non-NULL; NULL on error. */
char *fx_test_read_file(const char *path, size_t *len);

/* Sleeps ms milliseconds (restarting after signals). */
void fx_test_sleep_ms(int ms);

typedef struct fx_run_result {
  int exit_code; /* exit status, 128+N if killed by signal N, -1 on timeout/spawn failure */
  char *out;     /* captured stdout, NUL-terminated; owned */
  char *err;     /* captured stderr; owned */
} fx_run_result;

/* Runs argv[0] (PATH is searched) with stdin_text on stdin (NULL: empty),
 * capturing stdout and stderr; kills it after timeout_ms. Returns 0 when the
 * command ran to completion (whatever its exit code), -1 otherwise. res must
 * be freed with fx_run_result_free. */
int fx_test_run(const char *const *argv, const char *stdin_text, int timeout_ms,
                fx_run_result *res);
void fx_run_result_free(fx_run_result *r);

#endif
