/* URL checks built on curl's URL API. */
#ifndef FX_URL_H
#define FX_URL_H

#include <stddef.h>

/* Why url cannot be pinned to or carry a token, as a sentence fragment
 * ("it names no host", "a percent-encoded dot segment ..."), or NULL when it
 * is fine. It must be absolute with "scheme://" and a host (curl would take
 * "https:/host" and "https:///host"; fhirx does not), and no path segment may
 * be, or decode to, "." or ".." (plain, "%2e", ".%2E", double encoded
 * "%252e"), hold an encoded '/' or '\' ("%2f", "%5C", "%252f") or a raw
 * '\': a server or proxy that decodes or normalizes them would serve
 * another path (another tenant) than the one that was checked. The query is
 * not looked at. docs/architecture.md "Where a token may go". */
const char *fx_url_problem(const char *url);

/* For messages about a refused URL: "" when fx_url_problem finds nothing,
 * else "; its path holds <problem>, which a server or proxy may read as
 * another path" (into out, always terminated). */
void fx_url_problem_note(const char *url, char *out, size_t size);

/* 1 if url has the same scheme, host and port as base and its path is base's
 * path or below it (segment-wise: /r4/t1 does not cover /r4/t10); else 0.
 * 0 too when either has a fx_url_problem.
 * This is the test a URL must pass before it may carry a tenant's token. */
int fx_url_within(const char *url, const char *base);

/* 1 if a and b have the same scheme, host and port (an origin, RFC 6454). */
int fx_url_same_origin(const char *a, const char *b);

/* Where a tenant's access token may be sent; docs/architecture.md ("Where a
 * token may go") gives the reasons. Built by fx_tenant_token_scope
 * (worker/model/resources.h) from the tenant's configuration. */
typedef struct fx_token_scope {
  const char *base;      /* tenants[].fhir_base: URLs under it (fx_url_within) */
  char *const *prefixes; /* tenants[].token_url_prefixes: URLs under any of these */
  size_t n_prefixes;
  /* The URL was handed to fhirx by the tenant's server for an export this
   * tenant started: the kick-off's Content-Location (the status URL, polled
   * and DELETEd) or a file url of that status URL's manifest. Such a URL may
   * be anywhere on the base's origin: servers put them outside the FHIR path
   * (the SMART reference server: {origin}/fhir/bulkstatus/..., files under
   * {origin}/{other prefix}/fhir/bulkfiles/...). Never set it for URLs taken
   * from resource content (references, next links). */
  int own_export;
} fx_token_scope;

/* 1 if url may carry the token: under base, under one of the prefixes, or
 * (own_export) on base's origin. The one place that decides where a token
 * goes: fx_fhir_get enforces it for every authorized request, and callers
 * ask it before they plan a request (next links, bulk status and files).
 * Every URL it allows passes fx_url_problem (no dot segments, encoded
 * slashes or backslashes), whichever rule lets it through. */
int fx_url_may_carry_token(const char *url, const fx_token_scope *s);

/* Copies url into out without userinfo ("user:secret@"), query values and
 * fragment ("https://host/path?patient=&_count=") so it can be logged or
 * published without credentials, patient ids or page secrets. Every URL
 * fhirx logs or publishes goes through it. The copy is printable ASCII:
 * other bytes (controls, spaces, UTF-8, bytes that were never UTF-8) are
 * percent-encoded, and an escape that does not fit whole is left out. */
void fx_url_redact(const char *url, char *out, size_t size);

/* For a redirect status (300-399), a sentence fragment for error messages into
 * out: "a redirect to <location without query values>, not followed (...)";
 * for any other status "". location may be NULL (not sent, or not known). */
void fx_url_redirect_note(long status, const char *location, char *out, size_t size);

#endif
