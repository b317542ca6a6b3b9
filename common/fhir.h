/* Authorized FHIR requests: a token from the cache, sent only where the
 * tenant's token may go (fx_url_may_carry_token),
 * and the 401 rule (drop the rejected token, get a new one, retry once; a
 * second 401 is reported, never looped on).
 *
 * Thread: call on lp's thread; the callback runs there too. */
#ifndef FX_FHIR_H
#define FX_FHIR_H

#include "common/http.h"
#include "common/loop.h"
#include "common/token.h"
#include "common/url.h"

/* Exactly one of res and ae is non-NULL:
 *   res: an HTTP exchange finished (any status, or a transport failure in res->result);
 *   ae:  no request was sent: no token could be had. */
typedef void (*fx_fhir_cb)(fx_http_response *res, const fx_auth_error *ae, void *arg);

typedef struct fx_fhir_request {
  const char *tenant;
  fx_token_scope scope;  /* where the token may go (fx_tenant_token_scope); checked once, here */
  const char *url;       /* absolute */
  const char *accept;    /* NULL = application/fhir+json */
  long timeout_ms;
  const char *method;    /* NULL = GET; "DELETE" */
  const char *const *headers; /* extra "Name: value" lines, NULL-terminated, copied */
  fx_http_sink sink;     /* stream a 2xx body (common/http.h); NULL = buffer it */
  void *sink_arg;
  size_t max_body;       /* 0 = the client's default */
} fx_fhir_request;

/* Returns 0 and later calls cb once, or a negative code without calling it:
 * FX_EPERM (with a message naming the URL, redacted) when req->url may not
 * carry the tenant's token.
 * A streamed request that gets a 401 is retried once like any other: the
 * sink has seen nothing of a non-2xx answer. */
int fx_fhir_get(fx_loop *lp, fx_token_cache *tc, const fx_fhir_request *req, fx_fhir_cb cb,
                void *arg, fx_err *err);

/* One line from an OperationOutcome body ("error required: at least one of ..."),
 * empty if the body is not one; control characters (line breaks) become spaces. Diagnostics come from the server, not from
 * the resource data, so they are safe to log. */
void fx_fhir_outcome_summary(const char *body, char *out, size_t size);

#endif
