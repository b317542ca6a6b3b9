#include "common/fhir.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/strutil.h"
#include "common/url.h"
#include <jansson.h>

typedef struct call {
  fx_loop *lp;
  fx_token_cache *tc;
  char *tenant, *url, *accept, *method;
  char **headers; /* NULL-terminated copy, or NULL */
  fx_http_sink sink;
  void *sink_arg;
  size_t max_body;
  long timeout_ms;
  int attempt; /* 0, or 1 after a 401 */
  fx_token *tok;
  fx_auth_error ae; /* a failure waiting to be delivered */
  fx_fhir_cb cb;
  void *arg;
} call;

static void call_free(call *c) {
  fx_token_release(c->tok);
  free(c->tenant);
  free(c->url);
  free(c->accept);
  free(c->method);
  for (char **h = c->headers; h && *h; h++) free(*h);
  free(c->headers);
  free(c);
}

static void deliver_failure(void *arg) {
  call *c = arg;
  c->cb(NULL, &c->ae, c->arg);
  call_free(c);
}

/* Failures are delivered from the mailbox, never from inside fx_fhir_get, so
 * a caller is not re-entered before fx_fhir_get has returned. */
static void fail(call *c, const fx_auth_error *ae) {
  c->ae = *ae;
  if (fx_loop_post(c->lp, deliver_failure, c) != 0) deliver_failure(c);
}

static void send_with(call *c, fx_token *tok);

static void on_token(fx_token *tok, const fx_auth_error *ae, void *arg) {
  call *c = arg;
  if (!tok) {
    fail(c, ae);
    return;
  }
  send_with(c, fx_token_retain(tok));
}

/* Gets a token (now, or later through on_token) and sends. */
static void acquire(call *c) {
  fx_token *tok = NULL;
  fx_auth_error ae;
  int rc = fx_token_get(c->tc, c->lp, c->tenant, on_token, c, &tok, &ae);
  if (rc == 0) send_with(c, tok);
  else if (rc < 0) fail(c, &ae);
}

static void on_response(fx_http_response *res, void *arg) {
  call *c = arg;
  if (res->result == 0 && res->status == 401 && c->attempt == 0) {
    /* The token expired early or was revoked: drop exactly this one, fetch a
     * new one (shared with everyone else who saw the 401) and retry once. */
    fx_token_cache_invalidate(c->tc, c->tenant, c->tok);
    fx_token_release(c->tok);
    c->tok = NULL;
    c->attempt = 1;
    acquire(c);
    return;
  }
  /* A server may repeat the request's credential in an error (a 401 that
   * quotes the Authorization header): it must not reach a failure record,
   * a dead letter or a log through the caller's message. */
  if (res->result == 0 && (res->status < 200 || res->status >= 300) && c->tok && res->body_len)
    res->body_len = fx_scrub_secret(res->body, res->body_len, res->body_len + 1,
                                    c->tok->access_token);
  c->cb(res, NULL, c->arg);
  call_free(c);
}

static void send_with(call *c, fx_token *tok) {
  fx_token_release(c->tok);
  c->tok = tok;
  fx_http_request hr = {.url = c->url,
                        .accept = c->accept,
                        .bearer = tok->access_token,
                        .timeout_ms = c->timeout_ms,
                        .method = c->method,
                        .headers = (const char *const *)c->headers,
                        .sink = c->sink,
                        .sink_arg = c->sink_arg,
                        .max_body = c->max_body};
  fx_auth_error ae;
  memset(&ae, 0, sizeof ae);
  if (fx_http_send(c->lp->http, &hr, on_response, c, &ae.err) != 0) fail(c, &ae);
}

int fx_fhir_get(fx_loop *lp, fx_token_cache *tc, const fx_fhir_request *req, fx_fhir_cb cb,
                void *arg, fx_err *err) {
  if (!fx_url_may_carry_token(req->url, &req->scope)) {
    char shown[512], note[160];
    fx_url_redact(req->url, shown, sizeof shown);
    fx_url_problem_note(req->url, note, sizeof note);
    return fx_err_set(err, FX_EPERM,
                      "refusing to send tenant %s's token to %s: it is outside the tenant's FHIR "
                      "base %s%s%s",
                      req->tenant, shown, req->scope.base ? req->scope.base : "(none)",
                      req->scope.n_prefixes ? " and its tenants[].token_url_prefixes" : "", note);
  }
  call *c = calloc(1, sizeof *c);
  if (!c) return fx_err_set(err, FX_ENOMEM, "out of memory");
  c->lp = lp;
  c->tc = tc;
  c->cb = cb;
  c->arg = arg;
  c->timeout_ms = req->timeout_ms;
  c->tenant = strdup(req->tenant);
  c->url = strdup(req->url);
  c->accept = strdup(req->accept ? req->accept : "application/fhir+json");
  c->sink = req->sink;
  c->sink_arg = req->sink_arg;
  c->max_body = req->max_body;
  int oom = req->method && !(c->method = strdup(req->method));
  size_t nh = 0;
  while (req->headers && req->headers[nh]) nh++;
  if (nh && !(c->headers = calloc(nh + 1, sizeof *c->headers))) oom = 1;
  for (size_t i = 0; c->headers && i < nh; i++)
    if (!(c->headers[i] = strdup(req->headers[i]))) oom = 1;
  if (oom || !c->tenant || !c->url || !c->accept) {
    call_free(c);
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  }
  acquire(c);
  return 0;
}

void fx_fhir_outcome_summary(const char *body, char *out, size_t size) {
  out[0] = '\0';
  json_t *doc = body ? json_loads(body, 0, NULL) : NULL;
  const char *rt = json_string_value(json_object_get(doc, "resourceType"));
  if (rt && strcmp(rt, "OperationOutcome") == 0) {
    json_t *issue = json_array_get(json_object_get(doc, "issue"), 0);
    const char *sev = json_string_value(json_object_get(issue, "severity"));
    const char *code = json_string_value(json_object_get(issue, "code"));
    const char *text = json_string_value(json_object_get(issue, "diagnostics"));
    if (!text)
      text = json_string_value(json_object_get(json_object_get(issue, "details"), "text"));
    char clean[1024];
    fx_redact_secrets(text, clean, sizeof clean); /* the server's words may quote a credential */
    snprintf(out, size, "%s%s%s%s%s", sev ? sev : "", sev && code ? " " : "", code ? code : "",
             (sev || code) && text ? ": " : "", text ? clean : "");
    fx_utf8_trim(out); /* a long diagnostic is cut: on a character, never inside one */
  }
  json_decref(doc);
  /* One line: a server's line breaks and other control characters become
   * spaces, so the summary cannot forge or split a line of a log or a report
   * (found by tests/fuzz/fuzz_replies). ASCII only: UTF-8 stays valid. */
  for (char *c = out; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = ' ';
}
