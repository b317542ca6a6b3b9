/* Reference server mode (docs/simulator.md "Reference server mode"): a
 * tenant that behaves like the SMART reference Bulk Data server
 * (github.com/smart-on-fhir/bulk-data-server), the server bulk-data-client is
 * tested against, where it differs from Cerner:
 *
 *   - client ids are signed JWTs carrying the JWKS (POST /tenants/{t}/auth/register,
 *     token.c), 557-1,057+ characters;
 *   - the status URL is {origin}/fhir/bulkstatus/{job} and the files
 *     {origin}/{base64url settings}/fhir/bulkfiles/{n}.{Type}.ndjson: outside the
 *     FHIR base's path, on its origin; files are served directly (200, no 307 to
 *     storage) and need the token (requiresAccessToken true);
 *   - exports also hold Claim, ExplanationOfBenefit and ImagingStudy lines;
 *   - no read or search API: every read and search is a 404 (Express's
 *     "Cannot GET");
 *   - a rate limit per route (kick-off, status): more than `requests` within
 *     `window_ms` blocks the client for `block_ms`, answered 429 with
 *     `Retry-After: <epoch ms>` the first time and `<epoch s>` while blocked
 *     (lib.ts rateLimiter; against RFC 9110, which wants delay-seconds);
 *   - no "one export per client" rule.
 *
 * Threading: as state.h says; the rate limiters and counters are guarded by
 * sim_state.lock, the configuration is immutable. */
#ifndef SIM_REFSERVER_H
#define SIM_REFSERVER_H

#include "tests/sim/http.h"

#include <stdbool.h>
#include <stdint.h>

/* The exports' URL paths outside /r4/{tenant}: "/fhir/bulkstatus/" and
 * ".../fhir/bulkfiles/". */
#define SIM_REF_STATUS_PREFIX "/fhir/bulkstatus/"
#define SIM_REF_FILES_PART "/fhir/bulkfiles/"

enum { SIM_REF_PATH_NONE, SIM_REF_PATH_STATUS, SIM_REF_PATH_FILE };

/* What a path outside /r4 names: SIM_REF_PATH_STATUS with the job id in
 * job, SIM_REF_PATH_FILE with the job id and the file's 1-based number in
 * *file, or SIM_REF_PATH_NONE. Does not look the job up. */
int sim_ref_parse_path(const char *path, char job[SIM_EXPORT_ID_LEN + 1], unsigned long *file);

/* The reference-server tenant of the export a status or file path names, or
 * NULL (no such path or export, or a Cerner-mode tenant's). Takes the lock. */
sim_tenant *sim_ref_tenant_of(sim_state *st, const char *path);

/* URLs handed to clients (new strings). */
char *sim_ref_status_url(const char *host, const char *job);
char *sim_ref_file_url(const char *host, const char *job, size_t file, const char *type);

/* The rate limiter of `route` (SIM_REF_ROUTE_*) of t. Returns true after
 * filling resp with the 429 when the request is refused. */
bool sim_ref_rate_limited(sim_state *st, sim_tenant *t, int route, int64_t now_ms,
                          sim_resp *resp);
void sim_ref_rate_reset_locked(sim_tenant *t);
void sim_ref_rate_free(sim_tenant *t);

/* Counts one request of a reference-server tenant by its path (no query),
 * and whether it carried an Authorization header. */
void sim_ref_count_path(sim_state *st, sim_tenant *t, const char *path, bool authorization);
/* New reference: {"paths": {"/fhir/bulkstatus/..": {"requests": 3, "authorization": 3}}}. */
json_t *sim_ref_authorization_json(sim_state *st, sim_tenant *t);

/* The k-th extra type (SIM_REF_*): advances *c to the next resource of a
 * reference-server export's scope and returns true with its member ordinal
 * and index, or false at the end. Start from (sim_xcursor){0}. */
bool sim_ref_xnext(const sim_xscope *s, const long per_patient[SIM_REF_EXTRA_COUNT], int k,
                   sim_xcursor *c, uint32_t *ordinal, uint32_t *index);
/* "Claim/clm-20000001-1": the reference of that resource. */
void sim_ref_extra_ref(const sim_xscope *s, int k, uint32_t ordinal, uint32_t index,
                       char out[96]);
/* Appends the resource's JSON (one NDJSON line, no newline). */
void sim_ref_write_extra(const sim_xscope *s, int k, uint32_t ordinal, uint32_t index,
                         sim_buf *out);

#endif
