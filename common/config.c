#include "common/config.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/url.h"

typedef enum { OPT_STRING, OPT_INT, OPT_BOOL, OPT_ENUM, OPT_STRLIST, OPT_PATH, OPT_URL } opt_type;

/* One configuration option. For strings min/max bound the length; for
 * integers the value. choices lists ENUM values separated by '|'; the stored
 * value is the index of the choice (or -1 when unset without a default). */
typedef struct opt {
  const char *name;
  opt_type type;
  size_t off;
  const char *def;
  int required;
  long long min, max;
  const char *choices;
  const char *doc;
} opt;

#define T(f) offsetof(fx_tenant_conf, f)
#define K(f) offsetof(fx_key_conf, f)
#define H(f) offsetof(fx_http_conf, f)
#define A(f) offsetof(fx_auth_conf, f)
#define L(f) offsetof(fx_log_conf, f)
#define TP(f) offsetof(fx_topics_conf, f)
#define W(f) offsetof(fx_worker_conf, f)

static const opt tenant_opts[] = {
    {"id", OPT_STRING, T(id), NULL, 1, 1, 64, NULL,
     "Tenant id, as in the FHIR base URL (Cerner: a UUID). Letters, digits, '.', '_' and '-'. "
     "Used in message keys, logs and metric labels."},
    {"environment", OPT_ENUM, T(environment), "production", 0, 0, 0, "sandbox|production",
     "`production` requires https URLs; `sandbox` also allows http (simulator, local tests)."},
    {"fhir_base", OPT_URL, T(fhir_base), NULL, 1, 8, 2048, NULL,
     "FHIR R4 base URL, e.g. `https://fhir-ehr.cerner.com/r4/{tenant}`: absolute, with a host, "
     "without query, and without `.`/`..` segments or encoded `/` or `\\` in its path (plain or "
     "percent-encoded: they would widen the pin). The access token is sent "
     "to URLs under this base (same scheme, host, port and path prefix), to the URLs of a Bulk "
     "Data export the tenant started on the same origin, and to `token_url_prefixes`; nowhere "
     "else."},
    {"client_id", OPT_STRING, T(client_id), NULL, 1, 1, FX_CLIENT_ID_MAX, NULL,
     "The System app's client id from Code Console (or whatever the server issued: some, like "
     "the SMART reference Bulk Data server, issue signed JWTs of a thousand characters). "
     "Printable ASCII and spaces (RFC 6749 VSCHAR), up to 8192 bytes. Sent as iss and sub of the "
     "client assertion; logs and messages show only its start and length."},
    {"token_endpoint", OPT_URL, T(token_endpoint), NULL, 0, 8, 2048, NULL,
     "Token endpoint URL. Leave unset to discover it from "
     "`{fhir_base}/.well-known/smart-configuration` (recommended: discovery wins on Cerner)."},
    {"scopes", OPT_STRLIST, T(scopes), NULL, 0, 1, 256, NULL,
     "Scopes to request. Unset: one per resource type fhirx fetches (see `fhirx scopes`)."},
    {"smart_version", OPT_ENUM, T(smart_version), "v1", 0, 0, 0, "v1|v2",
     "Scope syntax of the app registration: v1 `system/Patient.read`, v2 `system/Patient.rs`. A "
     "v2 registration silently drops v1 scopes, so this must match Code Console. v1 is the "
     "default: Oracle's R4 documentation (2024) does not confirm v2 `.rs` scopes for system "
     "apps; set v2 only for an app registered with v2 scopes."},
    {"resources", OPT_STRLIST, T(resources), NULL, 0, 1, 64, NULL,
     "Resource types to extract for this tenant: what its jobs fetch when they name none, and "
     "what its token asks scopes for. A type the profile fetches per patient, or one its bulk "
     "section exports (e.g. Provenance on Cerner). Unset: the profile's default query set."},
    {"follow_references", OPT_BOOL, T(follow_references), "false", 0, 0, 0, NULL,
     "Whether this tenant's jobs may follow references (`follow_references` in a job). When "
     "true, the token also asks for the scopes of the profile's reference types (cerner: "
     "Practitioner, Organization, Location, Binary, RelatedPerson); when false those scopes are "
     "not requested and a job asking to follow references is refused (invalid_job)."},
    {"token_url_prefixes", OPT_STRLIST, T(token_url_prefixes), NULL, 0, 8, 2048, NULL,
     "More places this tenant's access token may be sent, besides `fhir_base`: absolute URL "
     "prefixes (`https://files.example.org/bulk` covers that path and below on that origin; "
     "`https://files.example.org/` the whole origin), https for production tenants. Unset (the "
     "safe default): the token goes only under `fhir_base`, plus the status URL and file URLs "
     "of a Bulk Data export the tenant started, when they are on `fhir_base`'s origin. Add a "
     "prefix only for a host the server itself uses (e.g. an export file server on another "
     "origin that wants the token): every next link and manifest URL under it will get the "
     "token (references are always read from `fhir_base`). See docs/architecture.md, \"Where a "
     "token may go\"."},
    {"allow_private_storage", OPT_BOOL, T(allow_private_storage), "false", 0, 0, 0, NULL,
     "Production tenants only (sandbox tenants may always): whether Bulk Data files downloaded "
     "without the access token (a manifest with `requiresAccessToken: false`, or storage a file "
     "URL redirects to) may come from loopback, link-local or private addresses (127.0.0.0/8, "
     "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, 100.64.0.0/10, ::1, fc00::/7, "
     "fe80::/10, ...). The address curl connects to is checked, not only the name. False: such "
     "a file fails as `foreign_reference` naming the address (so a manifest cannot make the "
     "worker read internal services); set true only when the export's storage really is on an "
     "internal network."},
    {"max_concurrency", OPT_INT, T(max_concurrency), "16", 0, 1, 10000, NULL,
     "Requests in flight to this tenant per worker process. The limit adapts below this: halved "
     "on 429s and timeouts, grown back one at a time on success."},
    {"rate_per_s", OPT_INT, T(rate_per_s), "0", 0, 0, 100000, NULL,
     "Requests per second to this tenant per worker process (token bucket); 0 = no rate limit."},
    {"burst", OPT_INT, T(burst), "20", 0, 1, 100000, NULL, "Token bucket size for rate_per_s."},
    {"profile", OPT_STRING, T(profile), "cerner", 0, 1, 1024, NULL,
     "Query profile: how each type is fetched, what a Group $export exports and which references "
     "are followed. Built in: `cerner` (worker/profiles/cerner.json) and `generic` (a standard "
     "FHIR R4 server, worker/profiles/generic.json); or the path of a profile file."},
};

static const opt key_opts[] = {
    {"path", OPT_PATH, K(path), NULL, 1, 1, 1024, NULL,
     "PEM private key file (PKCS#8 or traditional), mode 0600. Relative paths are resolved "
     "against the config file's directory."},
    {"alg", OPT_ENUM, K(alg), NULL, 0, 0, 0, "RS384|ES384",
     "Signing algorithm. Unset: inferred (RSA -> RS384, EC P-384 -> ES384)."},
    {"kid", OPT_STRING, K(kid), NULL, 0, 1, 127, NULL,
     "Key id published in the JWKS and sent in the assertion header. Unset: the RFC 7638 "
     "thumbprint."},
};

static const opt http_opts[] = {
    {"timeout_ms", OPT_INT, H(timeout_ms), "60000", 0, 100, 3600000, NULL,
     "Whole-request timeout. Cerner's gateway answers 504 after about 57 s."},
    {"connect_timeout_ms", OPT_INT, H(connect_timeout_ms), "10000", 0, 100, 600000, NULL,
     "TCP + TLS connect timeout."},
    {"max_response_bytes", OPT_INT, H(max_response_bytes), "67108864", 0, 1024, 4294967296LL,
     NULL, "Largest response body accepted; larger ones fail as too_large."},
    {"max_error_body_bytes", OPT_INT, H(max_error_body_bytes), "262144", 0, 1024, 67108864,
     NULL,
     "Most of a non-2xx answer's body kept (for its reason or OperationOutcome), whatever "
     "max_response_bytes or a bulk file allows; the rest is not read. The answer still counts "
     "as its status."},
    {"max_retry_after_s", OPT_INT, H(max_retry_after_s), "3600", 0, 1, 604800, NULL,
     "Longest Retry-After honoured (on 429 and 503, and on 202 for bulk status polls; ignored on "
     "any other status); a longer one is cut to this and counted in "
     "fhirx_retry_after_capped_total. Cerner sends 600 s on bulk status polls."},
    {"low_speed_bytes", OPT_INT, H(low_speed_bytes), "1", 0, 0, 1000000000, NULL,
     "Abort a transfer slower than this many bytes/s for low_speed_seconds (0 disables)."},
    {"low_speed_seconds", OPT_INT, H(low_speed_seconds), "30", 0, 1, 3600, NULL,
     "See low_speed_bytes."},
    {"max_json_depth", OPT_INT, H(max_json_depth), "64", 0, 8, 2000, NULL,
     "Deepest JSON nesting accepted in a response; deeper ones fail as invalid_response before "
     "they are parsed."},
    {"ca_bundle", OPT_PATH, H(ca_bundle), NULL, 0, 1, 1024, NULL,
     "CA bundle (PEM) for TLS verification. Unset: the system store. Verification is always on."},
    {"user_agent", OPT_STRING, H(user_agent), "fhirx/0.1", 0, 1, 256, NULL,
     "User-Agent header."},
};

static const opt auth_opts[] = {
    {"assertion_lifetime_s", OPT_INT, A(assertion_lifetime_s), "240", 0, 10, 300, NULL,
     "Lifetime of client assertions (exp - now). Servers reject more than 300 s."},
    {"refresh_at_percent", OPT_INT, A(refresh_at_percent), "80", 0, 10, 95, NULL,
     "Refresh a token in the background once this share of expires_in has passed, so requests "
     "never wait for one in steady state."},
    {"backoff_min_ms", OPT_INT, A(backoff_min_ms), "1000", 0, 10, 600000, NULL,
     "First wait after a failed token request; doubles per failure (with jitter)."},
    {"backoff_max_ms", OPT_INT, A(backoff_max_ms), "60000", 0, 10, 3600000, NULL,
     "Longest wait between token requests of a failing tenant."},
};

static const opt log_opts[] = {
    {"level", OPT_ENUM, L(level), "info", 0, 0, 0, "debug|info|warn|error|off",
     "Least severe level written. Patient ids appear only at debug."},
};

static const opt topic_opts[] = {
    {"jobs", OPT_STRING, TP(jobs), "fhirx.jobs", 0, 1, 249, NULL,
     "Extraction jobs, consumed by the workers' consumer group."},
    {"results", OPT_STRING, TP(results), "fhirx.results", 0, 1, 249, NULL,
     "One message per FHIR resource, key `tenant/Type/id`."},
    {"failures", OPT_STRING, TP(failures), "fhirx.failures", 0, 1, 249, NULL,
     "One structured event per failed (patient, resource type) task."},
    {"dlq", OPT_STRING, TP(dlq), "fhirx.dlq", 0, 1, 249, NULL,
     "Dead letters: replayable jobs narrowed to what failed, the cause in headers."},
    {"status", OPT_STRING, TP(status), "fhirx.status", 0, 1, 249, NULL,
     "One completion record per job."},
    {"parking", OPT_STRING, TP(parking), "fhirx.parking", 0, 1, 249, NULL,
     "Jobs past the maximum number of attempts (replay)."},
    {"bulk", OPT_STRING, TP(bulk), "fhirx.bulk", 0, 1, 249, NULL,
     "Bulk export progress, key `job_id`: where each Group $export stands (status URL, files "
     "done), so another worker can resume it. Create it with cleanup.policy=compact."},
};

static const opt worker_opts[] = {
    {"threads", OPT_INT, W(threads), "0", 0, 0, 256, NULL,
     "Worker threads, each a libuv loop with its own Kafka consumer. 0: one per CPU core."},
    {"group_id", OPT_STRING, W(group_id), "fhirx-workers", 0, 1, 255, NULL,
     "Kafka consumer group shared by every worker of the pool."},
    {"max_jobs_in_flight", OPT_INT, W(max_jobs_in_flight), "16", 0, 1, 100000, NULL,
     "Jobs a thread works on at once; its partitions pause above this and resume at half."},
    {"max_requests_in_flight", OPT_INT, W(max_requests_in_flight), "16", 0, 1, 10000, NULL,
     "Concurrent FHIR requests per thread."},
    {"max_patients_per_job", OPT_INT, W(max_patients_per_job), "1000", 0, 1, 1000000, NULL,
     "Larger jobs are dead-lettered as invalid_job (split them with `fhirx enqueue --batch`)."},
    {"max_job_bytes", OPT_INT, W(max_job_bytes), "1048576", 0, 256, 104857600, NULL,
     "Larger job messages are dead-lettered as invalid_job."},
    {"max_pages", OPT_INT, W(max_pages), "1000", 0, 1, 1000000, NULL,
     "Pages followed per search before the task fails as too_large."},
    {"retries", OPT_INT, W(retries), "3", 0, 0, 100, NULL,
     "Retries of a request after a transient failure (timeouts, 429, 5xx), with backoff."},
    {"drain_timeout_ms", OPT_INT, W(drain_timeout_ms), "30000", 0, 0, 3600000, NULL,
     "On shutdown, time to finish in-flight jobs before leaving them for redelivery."},
    {"ref_cache_entries", OPT_INT, W(ref_cache_entries), "20000", 0, 0, 10000000, NULL,
     "Referenced entities (Practitioner, Organization, ...) kept per process, shared by all "
     "threads and jobs. 0 disables the cache."},
    {"ref_cache_bytes", OPT_INT, W(ref_cache_bytes), "67108864", 0, 0, 17179869184LL, NULL,
     "Memory the reference cache may use; least recently used entries go first."},
    {"ref_cache_ttl_s", OPT_INT, W(ref_cache_ttl_s), "3600", 0, 1, 604800, NULL,
     "A referenced entity is fetched again after this many seconds."},
    {"job_deadline_s", OPT_INT, W(job_deadline_s), "3600", 0, 10, 604800, NULL,
     "A task that would have to wait past its job's start plus this (Retry-After, an open "
     "breaker, backoff) fails as throttled/transient and is dead-lettered, instead of holding "
     "a worker for hours."},
    {"max_references_per_job", OPT_INT, W(max_references_per_job), "50000", 0, 1, 10000000, NULL,
     "Referenced entities one job may fetch; beyond, the job records a too_large failure."},
    {"max_reference_failures_per_job", OPT_INT, W(max_reference_failures_per_job), "100", 0, 1,
     1000000, NULL,
     "Failure records one job (or bulk export) publishes for references outside the tenant's "
     "base (foreign_reference) or with ids that break the id rule (one per distinct URL); "
     "beyond, they are only counted: the status record's failures_not_recorded and the metric "
     "fhirx_failures_not_recorded_total."},
    {"breaker_window", OPT_INT, W(breaker_window), "20", 0, 4, 256, NULL,
     "Circuit breaker: the last this many requests to a tenant are considered."},
    {"breaker_percent", OPT_INT, W(breaker_percent), "50", 0, 1, 100, NULL,
     "Circuit breaker: it opens when this share of them failed transiently (timeouts, resets, "
     "5xx, 429); the tenant's tasks wait instead of failing."},
    {"breaker_cooldown_ms", OPT_INT, W(breaker_cooldown_ms), "5000", 0, 100, 3600000, NULL,
     "Circuit breaker: first pause before a probe request; doubles while probes fail."},
    {"breaker_cooldown_max_ms", OPT_INT, W(breaker_cooldown_max_ms), "120000", 0, 100, 86400000,
     NULL, "Circuit breaker: the longest pause between probes."},
};

#define RP(f) offsetof(fx_replay_conf, f)
static const opt replay_opts[] = {
    {"max_attempts", OPT_INT, RP(max_attempts), "5", 0, 1, 1000, NULL,
     "A dead letter whose job already ran this many times goes to the parking topic instead of "
     "back to the jobs topic."},
    {"group_id", OPT_STRING, RP(group_id), "fhirx-replay", 0, 1, 255, NULL,
     "Consumer group `fhirx replay` reads the dead-letter topic with, so each run continues "
     "where the last one stopped."},
    {"rate_per_s", OPT_INT, RP(rate_per_s), "0", 0, 0, 1000000, NULL,
     "Jobs replayed per second (0: as fast as Kafka takes them)."},
};

#define AD(f) offsetof(fx_admin_conf, f)
static const opt admin_opts[] = {
    {"listen", OPT_STRING, AD(listen), "127.0.0.1:9470", 0, 0, 300, NULL,
     "Where `fhirx worker` serves /metrics, /healthz, /readyz and /.well-known/jwks.json: "
     "`host:port` (port 0 picks a free one), loopback by default; \"\" turns it off. The "
     "environment variable FHIRX_ADMIN_LISTEN overrides it."},
    {"port_file", OPT_PATH, AD(port_file), NULL, 0, 1, 1024, NULL,
     "If set, the admin port is written to this file once listening (useful with port 0)."},
};

#define BK(f) offsetof(fx_bulk_conf, f)
static const opt bulk_opts[] = {
    {"poll_min_ms", OPT_INT, BK(poll_min_ms), "1000", 0, 100, 3600000, NULL,
     "Shortest wait between two status polls of an export, whatever Retry-After says."},
    {"poll_max_ms", OPT_INT, BK(poll_max_ms), "600000", 0, 100, 86400000, NULL,
     "Longest wait between two status polls; a longer Retry-After is cut to this. Without "
     "Retry-After the wait doubles from poll_min_ms up to this."},
    {"deadline_hours", OPT_INT, BK(deadline_hours), "24", 0, 1, 720, NULL,
     "An export not finished (every file published) this long after its kick-off fails with "
     "error class `deadline` and is dead-lettered."},
    {"parallel_downloads", OPT_INT, BK(parallel_downloads), "2", 0, 1, 64, NULL,
     "Output files of one export downloaded at the same time."},
    {"retries", OPT_INT, BK(retries), "5", 0, 0, 100, NULL,
     "Consecutive transient failures (timeouts, resets, 5xx) of one kick-off, status poll or "
     "file download before the export fails."},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

typedef struct section {
  const char *name;
  const opt *opts;
  size_t n_opts;
  int is_array;   /* 1: an array of objects, each parsed with opts; 2: a free name/value map */
  size_t off;     /* object: offset of the struct in fx_config; array: of the pointer */
  size_t off_n;   /* array: offset of the element count */
  size_t elem;    /* array: element size */
  int required;
  const char *doc;
} section;

static const section sections[] = {
    {"tenants", tenant_opts, COUNT(tenant_opts), 1, offsetof(fx_config, tenants),
     offsetof(fx_config, n_tenants), sizeof(fx_tenant_conf), 1,
     "Each Cerner (Oracle Health) tenant fhirx extracts from. An array of objects."},
    {"keys", key_opts, COUNT(key_opts), 1, offsetof(fx_config, keys), offsetof(fx_config, n_keys),
     sizeof(fx_key_conf), 1,
     "Private keys for client assertions, oldest first. Every public key is published in the "
     "JWKS; the last one signs. To rotate: append a new key, publish the JWKS, then remove the "
     "old key once Cerner has fetched the new set."},
    {"http", http_opts, COUNT(http_opts), 0, offsetof(fx_config, http), 0, 0, 0,
     "HTTP client settings for FHIR and token requests."},
    {"auth", auth_opts, COUNT(auth_opts), 0, offsetof(fx_config, auth), 0, 0, 0,
     "Token acquisition."},
    {"log", log_opts, COUNT(log_opts), 0, offsetof(fx_config, log), 0, 0, 0, "Logging."},
    {"kafka", NULL, 0, 2, offsetof(fx_config, kafka), 0, 0, 0,
     "librdkafka properties (https://github.com/confluentinc/librdkafka/blob/master/"
     "CONFIGURATION.md), applied to the consumers and the producer; prefix a name with "
     "`consumer.` or `producer.` to apply it to one only. Values are strings, numbers or "
     "booleans. `bootstrap.servers` is required to run the worker; the environment variable "
     "`FHIRX_BOOTSTRAP_SERVERS` overrides it. fhirx sets, unless given here: "
     "`enable.auto.offset.store=false`, `partition.assignment.strategy=cooperative-sticky`, "
     "`enable.idempotence=true`, `acks=all`, `compression.type=lz4`, "
     "`queue.buffering.max.kbytes=65536` (the producer's queue bounds a worker's memory: jobs "
     "wait and bulk downloads pause while it is full)."},
    {"topics", topic_opts, COUNT(topic_opts), 0, offsetof(fx_config, topics), 0, 0, 0,
     "Topic names."},
    {"worker", worker_opts, COUNT(worker_opts), 0, offsetof(fx_config, worker), 0, 0, 0,
     "The worker pool (`fhirx worker`)."},
    {"replay", replay_opts, COUNT(replay_opts), 0, offsetof(fx_config, replay), 0, 0, 0,
     "`fhirx replay`: dead letters back to the jobs topic."},
    {"admin", admin_opts, COUNT(admin_opts), 0, offsetof(fx_config, admin), 0, 0, 0,
     "The worker's admin HTTP endpoint (metrics, health, JWKS)."},
    {"bulk", bulk_opts, COUNT(bulk_opts), 0, offsetof(fx_config, bulk), 0, 0, 0,
     "Group bulk $export jobs (`\"kind\": \"bulk\"`)."},
};

static const char *type_name(opt_type t) {
  switch (t) {
  case OPT_STRING: return "string";
  case OPT_INT: return "integer";
  case OPT_BOOL: return "boolean";
  case OPT_ENUM: return "enum";
  case OPT_STRLIST: return "array of strings";
  case OPT_PATH: return "file path";
  case OPT_URL: return "URL";
  }
  return "?";
}

/* Index of value in a '|' separated list, or -1. */
static int choice_index(const char *choices, const char *value) {
  int i = 0;
  size_t vl = strlen(value);
  for (const char *p = choices; *p; i++) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == vl && strncmp(p, value, len) == 0) return i;
    if (!bar) break;
    p = bar + 1;
  }
  return -1;
}

static char *join_path(const char *dir, const char *value) {
  if (value[0] == '/' || !dir) return strdup(value);
  size_t n = strlen(dir) + 1 + strlen(value) + 1;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s/%s", dir, value);
  return s;
}

int fx_config_check_url(const char *value, const char *where, int production, char **out,
                        fx_err *err) {
  CURLU *u = NULL;
  char *scheme = NULL, *host = NULL, *query = NULL, *frag = NULL;
  char shown[512];
  int rc = FX_EINVAL;
  if (out) *out = NULL;
  fx_url_redact(value, shown, sizeof shown);
  const char *why = fx_url_problem(value);
  if (why) {
    fx_err_set(err, rc,
               "%s: '%s' cannot be used: %s; expected an absolute URL such as "
               "https://host/path, with no '.' or '..' segment and no encoded '/' or '\\' "
               "in its path",
               where, shown, why);
    goto out;
  }
  if (!(u = curl_url())) {
    rc = fx_err_set(err, FX_ENOMEM, "out of memory");
    goto out;
  }
  if (curl_url_set(u, CURLUPART_URL, value, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host) {
    fx_err_set(err, rc, "%s: '%s' is not an absolute URL; expected e.g. https://host/path", where,
               shown);
    goto out;
  }
  if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) {
    fx_err_set(err, rc, "%s: scheme '%s' is not allowed; use https (http only for sandbox)", where,
               scheme);
    goto out;
  }
  curl_url_get(u, CURLUPART_QUERY, &query, 0);
  curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0);
  if (query || frag) {
    fx_err_set(err, rc, "%s: '%s' must not carry a query or fragment", where, shown);
    goto out;
  }
  if (production && strcasecmp(scheme, "https") != 0) {
    fx_err_set(err, rc,
               "%s: production tenants must use https (a token or client assertion travels only "
               "over https); http is only allowed with \"environment\": \"sandbox\"",
               where);
    goto out;
  }
  if (out) {
    if (!(*out = strdup(value))) {
      rc = fx_err_set(err, FX_ENOMEM, "out of memory");
      goto out;
    }
    size_t len = strlen(*out);
    while (len > 0 && (*out)[len - 1] == '/') (*out)[--len] = '\0';
  }
  rc = 0;
out:
  curl_free(scheme);
  curl_free(host);
  curl_free(query);
  curl_free(frag);
  curl_url_cleanup(u);
  return rc;
}

static void strlist_free(fx_strlist *l) {
  for (size_t i = 0; i < l->n; i++) free(l->v[i]);
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

static int set_string(const opt *o, const char *s, void *field, const char *where,
                      const char *dir, fx_err *err) {
  size_t len = strlen(s);
  if ((long long)len < o->min || (long long)len > o->max)
    return fx_err_set(err, FX_EINVAL, "%s: length %zu is out of range %lld..%lld", where, len,
                      o->min, o->max);
  char **dst = field;
  if (o->type == OPT_URL) return fx_config_check_url(s, where, 0, dst, err);
  *dst = o->type == OPT_PATH ? join_path(dir, s) : strdup(s);
  return *dst ? 0 : fx_err_set(err, FX_ENOMEM, "out of memory");
}

static int set_value(const opt *o, json_t *v, void *base, const char *where, const char *dir,
                     fx_err *err) {
  void *field = (char *)base + o->off;
  switch (o->type) {
  case OPT_STRING:
  case OPT_PATH:
  case OPT_URL:
    if (!json_is_string(v))
      return fx_err_set(err, FX_EINVAL, "%s: expected a %s (a JSON string)", where,
                        type_name(o->type));
    return set_string(o, json_string_value(v), field, where, dir, err);
  case OPT_INT: {
    if (!json_is_integer(v))
      return fx_err_set(err, FX_EINVAL, "%s: expected an integer", where);
    long long x = json_integer_value(v);
    if (x < o->min || x > o->max)
      return fx_err_set(err, FX_EINVAL, "%s: %lld is out of range %lld..%lld", where, x, o->min,
                        o->max);
    *(long long *)field = x;
    return 0;
  }
  case OPT_BOOL:
    if (!json_is_boolean(v))
      return fx_err_set(err, FX_EINVAL, "%s: expected true or false", where);
    *(int *)field = json_is_true(v);
    return 0;
  case OPT_ENUM: {
    int idx = json_is_string(v) ? choice_index(o->choices, json_string_value(v)) : -1;
    if (idx < 0)
      return fx_err_set(err, FX_EINVAL, "%s: expected one of %s", where, o->choices);
    *(int *)field = idx;
    return 0;
  }
  case OPT_STRLIST: {
    fx_strlist *l = field;
    if (!json_is_array(v))
      return fx_err_set(err, FX_EINVAL, "%s: expected an array of strings", where);
    size_t n = json_array_size(v);
    l->v = calloc(n ? n : 1, sizeof *l->v);
    if (!l->v) return fx_err_set(err, FX_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
      json_t *e = json_array_get(v, i);
      const char *s = json_string_value(e);
      if (!s || (long long)strlen(s) < o->min || (long long)strlen(s) > o->max)
        return fx_err_set(err, FX_EINVAL, "%s[%zu]: expected a string of %lld..%lld characters",
                          where, i, o->min, o->max);
      l->v[i] = strdup(s);
      if (!l->v[i]) return fx_err_set(err, FX_ENOMEM, "out of memory");
      l->n = i + 1;
    }
    return 0;
  }
  }
  return FX_EINVAL;
}

static int set_default(const opt *o, void *base) {
  void *field = (char *)base + o->off;
  switch (o->type) {
  case OPT_INT: *(long long *)field = o->def ? strtoll(o->def, NULL, 10) : 0; break;
  case OPT_BOOL: *(int *)field = o->def && strcmp(o->def, "true") == 0; break;
  case OPT_ENUM: *(int *)field = o->def ? choice_index(o->choices, o->def) : -1; break;
  case OPT_STRING:
  case OPT_PATH:
  case OPT_URL:
    if (o->def && !(*(char **)field = strdup(o->def))) return FX_ENOMEM;
    break;
  case OPT_STRLIST: break;
  }
  return 0;
}

static void free_fields(const opt *opts, size_t n, void *base) {
  for (size_t i = 0; i < n; i++) {
    void *field = (char *)base + opts[i].off;
    if (opts[i].type == OPT_STRING || opts[i].type == OPT_PATH || opts[i].type == OPT_URL) {
      free(*(char **)field);
      *(char **)field = NULL;
    } else if (opts[i].type == OPT_STRLIST) {
      strlist_free(field);
    }
  }
}

static void known_names(const opt *opts, size_t n, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n && used < size; i++)
    used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? ", " : "", opts[i].name);
}

/* A key from the file as an error quotes it: whole up to 64 bytes, else its
 * first 64 at most (never inside a character) and "...", so what the message
 * goes on to say (the names allowed) always fits (found by tests/fuzz/fuzz_config). */
static const char *shown_key(const char *key, char out[72]) {
  size_t m = strlen(key);
  if (m <= 64) return key;
  m = 64;
  while (m && ((unsigned char)key[m] & 0xC0) == 0x80) m--;
  snprintf(out, 72, "%.*s...", (int)m, key);
  return out;
}

static int parse_object(json_t *obj, const opt *opts, size_t n, void *base, const char *path,
                        const char *dir, fx_err *err) {
  char where[256];
  if (!json_is_object(obj)) return fx_err_set(err, FX_EINVAL, "%s: expected an object", path);
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v) {
    size_t i = 0;
    while (i < n && strcmp(opts[i].name, key) != 0) i++;
    if (i == n) {
      char names[512];
      known_names(opts, n, names, sizeof names);
      char shown[72];
      return fx_err_set(err, FX_EINVAL, "%s.%s: unknown option; %s takes: %s", path,
                        shown_key(key, shown), path, names);
    }
  }
  for (size_t i = 0; i < n; i++) {
    snprintf(where, sizeof where, "%s.%s", path, opts[i].name);
    v = json_object_get(obj, opts[i].name);
    int rc;
    if (v && !json_is_null(v))
      rc = set_value(&opts[i], v, base, where, dir, err);
    else if (opts[i].required)
      rc = fx_err_set(err, FX_EINVAL, "%s is required: %s", where, opts[i].doc);
    else
      rc = set_default(&opts[i], base);
    if (rc) return rc;
  }
  return 0;
}

static int valid_tenant_id(const char *id) {
  for (const char *p = id; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '_' || *p == '.'))
      return 0;
  return 1;
}

static int check_tenants(const fx_config *cfg, fx_err *err) {
  for (size_t i = 0; i < cfg->n_tenants; i++) {
    fx_tenant_conf *t = &cfg->tenants[i];
    /* A profile that names a file is relative to the config, like key paths. */
    if (strchr(t->profile, '/') || strstr(t->profile, ".json")) {
      char *abs = join_path(cfg->dir, t->profile);
      if (!abs) return fx_err_set(err, FX_ENOMEM, "out of memory");
      free(t->profile);
      t->profile = abs;
    }
    if (!valid_tenant_id(t->id))
      return fx_err_set(err, FX_EINVAL,
                        "tenants[%zu].id: '%s' may only contain letters, digits, '.', '_' and '-'",
                        i, t->id);
    for (const unsigned char *p = (const unsigned char *)t->client_id; *p; p++)
      if (*p < 0x20 || *p > 0x7e)
        return fx_err_set(err, FX_EINVAL,
                          "tenants[%zu].client_id: character %zu is not printable ASCII (RFC "
                          "6749 allows %%x20-7E); copy the client id exactly as the server issued "
                          "it, without line breaks",
                          i, (size_t)(p - (const unsigned char *)t->client_id) + 1);
    for (size_t j = 0; j < i; j++)
      if (strcmp(cfg->tenants[j].id, t->id) == 0)
        return fx_err_set(err, FX_EINVAL, "tenants[%zu].id: '%s' is already used by tenants[%zu]",
                          i, t->id, j);
    for (size_t k = 0; k < t->token_url_prefixes.n; k++) {
      char where[96], *norm = NULL;
      snprintf(where, sizeof where, "tenants[%zu].token_url_prefixes[%zu]", i, k);
      int rc = fx_config_check_url(t->token_url_prefixes.v[k], where, t->environment == FX_ENV_PRODUCTION, &norm, err);
      if (rc) return rc;
      free(t->token_url_prefixes.v[k]);
      t->token_url_prefixes.v[k] = norm;
    }
    /* The production rule (https) once the environment is known: the same
     * check SMART discovery applies to a discovered token endpoint. */
    char where[96];
    snprintf(where, sizeof where, "tenants[%zu].fhir_base", i);
    int rc = fx_config_check_url(t->fhir_base, where, t->environment == FX_ENV_PRODUCTION, NULL, err);
    snprintf(where, sizeof where, "tenants[%zu].token_endpoint", i);
    if (!rc && t->token_endpoint)
      rc = fx_config_check_url(t->token_endpoint, where,
                              t->environment == FX_ENV_PRODUCTION, NULL, err);
    if (rc) return rc;
  }
  return 0;
}

const char *fx_strmap_get(const fx_strmap *m, const char *key) {
  for (size_t i = 0; m && i < m->n; i++)
    if (strcmp(m->keys[i], key) == 0) return m->vals[i];
  return NULL;
}

static int parse_map(json_t *v, fx_strmap *m, const char *name, fx_err *err) {
  if (!v) return 0;
  if (!json_is_object(v))
    return fx_err_set(err, FX_EINVAL, "%s: expected an object of name/value pairs", name);
  size_t n = json_object_size(v);
  m->keys = calloc(n ? n : 1, sizeof *m->keys);
  m->vals = calloc(n ? n : 1, sizeof *m->vals);
  if (!m->keys || !m->vals) return fx_err_set(err, FX_ENOMEM, "out of memory");
  const char *key;
  json_t *val;
  json_object_foreach(v, key, val) {
    char buf[64];
    const char *text = buf;
    if (json_is_string(val)) text = json_string_value(val);
    else if (json_is_integer(val)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(val));
    else if (json_is_real(val)) snprintf(buf, sizeof buf, "%g", json_real_value(val));
    else if (json_is_boolean(val)) text = json_is_true(val) ? "true" : "false";
    else return fx_err_set(err, FX_EINVAL, "%s.%s: expected a string, number or boolean", name, key);
    m->keys[m->n] = strdup(key);
    m->vals[m->n] = strdup(text);
    if (!m->keys[m->n] || !m->vals[m->n]) {
      free(m->keys[m->n]);
      free(m->vals[m->n]);
      return fx_err_set(err, FX_ENOMEM, "out of memory");
    }
    m->n++;
  }
  return 0;
}

static void strmap_free(fx_strmap *m) {
  for (size_t i = 0; i < m->n; i++) {
    free(m->keys[i]);
    free(m->vals[i]);
  }
  free(m->keys);
  free(m->vals);
  memset(m, 0, sizeof *m);
}

static void section_free(const section *s, fx_config *cfg) {
  if (s->is_array == 2) {
    strmap_free((fx_strmap *)((char *)cfg + s->off));
  } else if (s->is_array) {
    char **arr = (char **)((char *)cfg + s->off);
    size_t *n = (size_t *)((char *)cfg + s->off_n);
    for (size_t i = 0; *arr && i < *n; i++) free_fields(s->opts, s->n_opts, *arr + i * s->elem);
    free(*arr);
    *arr = NULL;
    *n = 0;
  } else {
    free_fields(s->opts, s->n_opts, (char *)cfg + s->off);
  }
}

static int parse_section(const section *s, json_t *v, fx_config *cfg, fx_err *err) {
  if (s->is_array == 2) return parse_map(v, (fx_strmap *)((char *)cfg + s->off), s->name, err);
  if (!s->is_array) {
    json_t *empty = NULL;
    if (!v) v = empty = json_object();
    int rc = parse_object(v, s->opts, s->n_opts, (char *)cfg + s->off, s->name, cfg->dir, err);
    json_decref(empty);
    return rc;
  }
  if (!v || !json_is_array(v) || json_array_size(v) == 0)
    return fx_err_set(err, FX_EINVAL, "%s is required: a non-empty array. %s", s->name, s->doc);
  size_t n = json_array_size(v);
  char *arr = calloc(n, s->elem);
  if (!arr) return fx_err_set(err, FX_ENOMEM, "out of memory");
  *(char **)((char *)cfg + s->off) = arr;
  *(size_t *)((char *)cfg + s->off_n) = n;
  for (size_t i = 0; i < n; i++) {
    char path[64];
    snprintf(path, sizeof path, "%s[%zu]", s->name, i);
    int rc = parse_object(json_array_get(v, i), s->opts, s->n_opts, arr + i * s->elem, path,
                          cfg->dir, err);
    if (rc) return rc;
  }
  return 0;
}

static int parse_root(json_t *root, fx_config *cfg, fx_err *err) {
  if (!json_is_object(root))
    return fx_err_set(err, FX_EINVAL, "the top level must be a JSON object");
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    size_t i = 0;
    while (i < COUNT(sections) && strcmp(sections[i].name, key) != 0) i++;
    char shown[72];
    if (i == COUNT(sections))
      return fx_err_set(err, FX_EINVAL,
                        "%s: unknown section; the top level takes: tenants, keys, http, auth, "
                        "log, kafka, topics, worker, replay, admin, bulk",
                        shown_key(key, shown));
  }
  for (size_t i = 0; i < COUNT(sections); i++) {
    int rc = parse_section(&sections[i], json_object_get(root, sections[i].name), cfg, err);
    if (rc) return rc;
  }
  if (cfg->auth.backoff_min_ms > cfg->auth.backoff_max_ms)
    return fx_err_set(err, FX_EINVAL, "auth.backoff_min_ms must not exceed auth.backoff_max_ms");
  return check_tenants(cfg, err);
}

int fx_config_parse(const char *text, const char *base_dir, fx_config **out, fx_err *err) {
  *out = NULL;
  json_error_t jerr;
  json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return fx_err_set(err, FX_EINVAL, "line %d, column %d: %s (the file must be JSON)", jerr.line,
                      jerr.column, jerr.text);
  fx_config *cfg = calloc(1, sizeof *cfg);
  int rc = FX_ENOMEM;
  if (!cfg || (base_dir && !(cfg->dir = strdup(base_dir)))) {
    fx_err_set(err, rc, "out of memory");
    goto fail;
  }
  rc = parse_root(root, cfg, err);
  if (rc) goto fail;
  json_decref(root);
  *out = cfg;
  return 0;
fail:
  json_decref(root);
  fx_config_free(cfg);
  return rc;
}

int fx_config_load(const char *path, fx_config **out, fx_err *err) {
  *out = NULL;
  char abs[PATH_MAX];
  if (!realpath(path, abs))
    return fx_err_set(err, FX_EIO, "config %s: %s", path, strerror(errno));
  FILE *f = fopen(abs, "rb");
  if (!f) return fx_err_set(err, FX_EIO, "config %s: %s", path, strerror(errno));
  json_error_t jerr;
  json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
  fclose(f);
  if (!root)
    return fx_err_set(err, FX_EINVAL, "config %s: line %d, column %d: %s (the file must be JSON)",
                      path, jerr.line, jerr.column, jerr.text);
  char *text = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  if (!text) return fx_err_set(err, FX_ENOMEM, "out of memory");
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", abs);
  char *slash = strrchr(dir, '/');
  if (slash) *(slash == dir ? slash + 1 : slash) = '\0';
  int rc = fx_config_parse(text, dir, out, err);
  free(text);
  if (rc) {
    fx_err_prefix(err, "config %s", path);
    return rc;
  }
  (*out)->path = strdup(abs);
  if (!(*out)->path) {
    fx_config_free(*out);
    *out = NULL;
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  }
  return 0;
}

void fx_config_free(fx_config *cfg) {
  if (!cfg) return;
  for (size_t i = 0; i < COUNT(sections); i++) section_free(&sections[i], cfg);
  free(cfg->path);
  free(cfg->dir);
  free(cfg);
}

const fx_tenant_conf *fx_config_tenant(const fx_config *cfg, const char *id) {
  for (size_t i = 0; cfg && id && i < cfg->n_tenants; i++)
    if (strcmp(cfg->tenants[i].id, id) == 0) return &cfg->tenants[i];
  return NULL;
}

void fx_config_write_reference(FILE *out) {
  fprintf(out, "# fhirx configuration reference\n\n"
               "Generated by `fhirx config reference` from the option tables in "
               "`common/config.c`; do not edit by hand.\n\n"
               "The configuration is one JSON file. Unknown options are errors, and every error "
               "names the option's path (for example `tenants[1].fhir_base`). Relative file paths "
               "are resolved against the directory of the configuration file.\n");
  for (size_t s = 0; s < COUNT(sections); s++) {
    const section *sec = &sections[s];
    fprintf(out, "\n## `%s`%s\n\n%s\n", sec->name,
            sec->is_array == 1 ? " (array of objects)" : (sec->is_array == 2 ? " (map)" : ""),
            sec->doc);
    if (!sec->n_opts) continue;
    fputc('\n', out);
    fprintf(out, "| option | type | default | range | description |\n|---|---|---|---|---|\n");
    for (size_t i = 0; i < sec->n_opts; i++) {
      const opt *o = &sec->opts[i];
      char range[96] = "";
      if (o->type == OPT_INT)
        snprintf(range, sizeof range, "%lld..%lld", o->min, o->max);
      else if (o->type == OPT_ENUM)
        snprintf(range, sizeof range, "%s", o->choices);
      for (char *p = range; *p; p++)
        if (*p == '|') *p = '/';
      fprintf(out, "| `%s` | %s | %s | %s | %s |\n", o->name, type_name(o->type),
              o->required ? "required" : (o->def ? o->def : "unset"), range, o->doc);
    }
  }
}
