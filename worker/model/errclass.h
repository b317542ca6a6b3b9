/* Error classes: the vocabulary of failure records, dead-letter headers and
 * `fhirx replay --error-class`. Each class says whether a later attempt can
 * succeed without anyone changing anything. */
#ifndef FX_ERRCLASS_H
#define FX_ERRCLASS_H

typedef enum fx_errclass {
  FX_EC_NONE = 0,
  FX_EC_INVALID_JOB,        /* not JSON, schema violation, unknown resource type, too many patients */
  FX_EC_UNKNOWN_TENANT,     /* the job names a tenant this worker is not configured for */
  FX_EC_AUTH,               /* no token: invalid_client, discovery mismatch, 401 twice */
  FX_EC_SCOPE,              /* invalid_scope, or 403 for a type whose scope was not granted */
  FX_EC_NOT_FOUND,          /* 404 */
  FX_EC_SEARCH_RESTRICTION, /* 400: Cerner refused the search's parameters */
  FX_EC_THROTTLED,          /* 429 beyond the retry budget */
  FX_EC_TRANSIENT,          /* timeouts, resets, 5xx beyond the retry budget */
  FX_EC_TOO_LARGE,          /* response or resource over a configured limit */
  FX_EC_FOREIGN_REFERENCE,  /* a link or reference outside the tenant's FHIR base */
  FX_EC_INVALID_RESPONSE,   /* the server's answer is not the FHIR JSON we asked for */
  FX_EC_SERVER,             /* another permanent HTTP error (406, 409, 422, ...) */
  FX_EC_EXPORT_FAILED,      /* bulk: the server reported the export failed */
  FX_EC_EXPORT_EXPIRED,     /* bulk: the export or its files were gone before we had them */
  FX_EC_DEADLINE,           /* bulk: not finished within bulk.deadline_hours */
  FX_EC_COUNT
} fx_errclass;

const char *fx_errclass_name(fx_errclass c);
/* FX_EC_NONE when the name is unknown. */
fx_errclass fx_errclass_parse(const char *name);
/* The class of a failed HTTP answer: 400 search_restriction, 401 auth, 403
 * scope, 404/410 not_found, 429 throttled, 408 and 5xx transient, any other
 * status server. */
fx_errclass fx_errclass_of_status(long status);

/* The class of a failure to get a token, so that no request was sent:
 * invalid_scope is scope; a URL the token may not go to (FX_EPERM) is
 * foreign_reference; anything else is auth. *transient (may be NULL) is 1
 * when trying again later can work without a change (the token endpoint was
 * unreachable, or the wait for a token was canceled). The one place this is
 * decided, for patient jobs and bulk exports alike. */
struct fx_auth_error;
fx_errclass fx_errclass_of_auth(const struct fx_auth_error *ae, int *transient);

/* 1 if retrying later without a change can succeed. */
int fx_errclass_transient(fx_errclass c);

#endif
