/* fhirx configuration: one JSON file, described by tables.
 *
 * Every option is a row in a table (name, type, default, range, description),
 * like librdkafka's configuration. The same tables parse the file, reject
 * unknown keys, apply defaults and generate docs/configuration.md, so the
 * reference can never drift from the code. Errors name the option by its
 * path, e.g. "tenants[1].fhir_base", and say what a valid value looks like.
 *
 * Relative paths in the file (key files, CA bundle) are resolved against the
 * directory holding the config file. */
#ifndef FX_CONFIG_H
#define FX_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "common/err.h"

typedef struct fx_strlist {
  char **v; /* owned strings */
  size_t n;
} fx_strlist;

enum { FX_ENV_SANDBOX = 0, FX_ENV_PRODUCTION = 1 };
enum { FX_SMART_V1 = 0, FX_SMART_V2 = 1 };

/* Free-form name/value pairs (the kafka section: librdkafka properties). */
typedef struct fx_strmap {
  char **keys, **vals; /* owned */
  size_t n;
} fx_strmap;

/* Value of key in m, or NULL. */
const char *fx_strmap_get(const fx_strmap *m, const char *key);

/* Longest client id accepted (bytes). No spec limits client ids; servers
 * issue long ones (the SMART reference Bulk Data server's is a signed JWT
 * carrying the client's JWKS, 557-1,057+ characters). Every buffer a client
 * id passes through is sized from the string, not fixed. */
#define FX_CLIENT_ID_MAX 8192

typedef struct fx_tenant_conf {
  char *id;
  int environment;      /* FX_ENV_* */
  char *fhir_base;      /* normalized: no trailing slash */
  char *client_id;
  char *token_endpoint; /* NULL: discovered from {fhir_base}/.well-known/smart-configuration */
  fx_strlist scopes;    /* empty: derived from the resource types fhirx fetches */
  int smart_version;    /* FX_SMART_* */
  fx_strlist resources; /* empty: the profile's full query set */
  int follow_references; /* jobs may follow references: their types' scopes are asked for */
  fx_strlist token_url_prefixes; /* more URL prefixes the token may go to (normalized) */
  int allow_private_storage; /* production: token-less bulk downloads may reach internal addresses */
  char *profile;        /* built-in profile name, or a file path (absolute after loading) */
  long long max_concurrency; /* requests in flight to this tenant, per process */
  long long rate_per_s;      /* 0 = unlimited */
  long long burst;
} fx_tenant_conf;

typedef struct fx_key_conf {
  char *path; /* absolute after loading */
  int alg;    /* -1 = infer from the key; else 0 = RS384, 1 = ES384 */
  char *kid;  /* NULL = RFC 7638 thumbprint */
} fx_key_conf;

typedef struct fx_http_conf {
  long long timeout_ms;
  long long connect_timeout_ms;
  long long max_response_bytes;
  long long max_error_body_bytes; /* of a non-2xx answer: the rest is not read */
  long long max_retry_after_s;    /* longer Retry-After values are cut to this */
  long long low_speed_bytes;
  long long low_speed_seconds;
  long long max_json_depth;
  char *ca_bundle;
  char *user_agent;
} fx_http_conf;

typedef struct fx_auth_conf {
  long long assertion_lifetime_s;
  long long refresh_at_percent;
  long long backoff_min_ms;
  long long backoff_max_ms;
} fx_auth_conf;

typedef struct fx_log_conf {
  int level; /* fx_log_level */
} fx_log_conf;

typedef struct fx_topics_conf {
  char *jobs, *results, *failures, *dlq, *status, *parking, *bulk;
} fx_topics_conf;

typedef struct fx_worker_conf {
  long long threads;              /* 0 = one per CPU core */
  char *group_id;
  long long max_jobs_in_flight;   /* per thread: partitions pause above this */
  long long max_requests_in_flight; /* per thread: concurrent FHIR requests */
  long long max_patients_per_job;
  long long max_job_bytes;
  long long max_pages;            /* per search */
  long long retries;              /* per request, for transient failures */
  long long drain_timeout_ms;     /* shutdown and revoke: finish in-flight jobs within this */
  long long ref_cache_entries;    /* reference cache, per process */
  long long ref_cache_bytes;
  long long ref_cache_ttl_s;
  long long job_deadline_s;       /* a task that would wait past this fails instead */
  long long max_references_per_job;
  long long max_reference_failures_per_job; /* foreign/invalid reference records, then counted */
  long long breaker_window;
  long long breaker_percent;
  long long breaker_cooldown_ms;
  long long breaker_cooldown_max_ms;
} fx_worker_conf;

typedef struct fx_replay_conf {
  long long max_attempts; /* a dead letter past this goes to the parking topic */
  char *group_id;         /* replay's own consumer group on the dlq topic */
  long long rate_per_s;   /* jobs per second, 0 = unlimited */
} fx_replay_conf;

typedef struct fx_admin_conf {
  char *listen;    /* "host:port"; "" disables the admin endpoint */
  char *port_file; /* optional: the bound port is written here (tests, port 0) */
} fx_admin_conf;

typedef struct fx_bulk_conf {
  long long poll_min_ms;       /* floor of the wait between status polls */
  long long poll_max_ms;       /* ceiling (a Retry-After above it is cut) */
  long long deadline_hours;    /* from kick-off to the last file */
  long long parallel_downloads; /* files of one export downloaded at once */
  long long retries;           /* consecutive transient failures of one step */
} fx_bulk_conf;

typedef struct fx_config {
  char *path; /* the file this came from (absolute) */
  char *dir;  /* its directory, for relative paths */
  fx_tenant_conf *tenants;
  size_t n_tenants;
  fx_key_conf *keys;
  size_t n_keys;
  fx_http_conf http;
  fx_auth_conf auth;
  fx_log_conf log;
  fx_strmap kafka;
  fx_topics_conf topics;
  fx_worker_conf worker;
  fx_replay_conf replay;
  fx_admin_conf admin;
  fx_bulk_conf bulk;
} fx_config;

/* Parses the file at path. On success *out is a new config (fx_config_free).
 * On failure err says which option is wrong and why. */
int fx_config_load(const char *path, fx_config **out, fx_err *err);

/* Same, from JSON text; base_dir resolves relative paths (tests use this). */
int fx_config_parse(const char *text, const char *base_dir, fx_config **out, fx_err *err);

void fx_config_free(fx_config *cfg);

const fx_tenant_conf *fx_config_tenant(const fx_config *cfg, const char *id);

/* The check every URL of a tenant passes (fhir_base, token_endpoint,
 * token_url_prefixes, and a token endpoint named by SMART discovery): an
 * absolute http(s) URL with a host, no query or fragment, a clean path
 * (fx_url_problem: no dot segments, encoded '/' or '\\'), and https when
 * production is set. Errors start with where (e.g. "tenants[0].fhir_base")
 * and show the value without userinfo. With out set, *out gets a copy
 * without trailing slashes. 0, or an FX_E* code with err set. */
int fx_config_check_url(const char *value, const char *where, int production, char **out,
                        fx_err *err);

/* Writes the Markdown reference of every option (docs/configuration.md). */
void fx_config_write_reference(FILE *out);

#endif
