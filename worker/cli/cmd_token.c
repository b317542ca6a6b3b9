/* fhirx token | get: one-shot smoke tests of the whole auth chain, running
 * the same loop, HTTP client and token cache the worker uses. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/fhir.h"
#include "common/log.h"
#include "common/strutil.h"
#include "common/url.h"
#include "worker/model/app.h"
#include "worker/cli/cli.h"
#include "worker/model/resources.h"

typedef struct oneshot {
  fx_app app;
  uv_loop_t uv;
  fx_loop lp;
  const fx_tenant_conf *tenant;
  const char *cmd;
  int status; /* exit status */
  int show_token, summary;
} oneshot;

static int oneshot_open(oneshot *o, const char *cmd, const char *config, const char *tenant) {
  memset(o, 0, sizeof *o);
  o->cmd = cmd;
  fx_err err = {0};
  if (fx_app_open(&o->app, config, &err) != 0) return fx_cli_fail(cmd, FX_EXIT_FAIL, "%s", err.msg);
  /* One-shot commands print their own results and errors; logs only when asked for
   * (FHIRX_LOG_LEVEL), whatever the worker-oriented log.level in the config says. */
  fx_cli_log_level(FX_LOG_ERROR);
  o->tenant = tenant ? fx_config_tenant(o->app.cfg, tenant)
                     : (o->app.cfg->n_tenants == 1 ? &o->app.cfg->tenants[0] : NULL);
  if (!o->tenant) {
    fx_app_close(&o->app);
    return fx_cli_fail(cmd, FX_EXIT_USAGE,
                       tenant ? "tenant '%s' is not in the config's tenants[]"
                              : "the config has several tenants: choose one with --tenant%s",
                       tenant ? tenant : "");
  }
  uv_loop_init(&o->uv);
  if (fx_loop_init(&o->lp, &o->uv, &o->app.cfg->http, &err) != 0) {
    uv_loop_close(&o->uv);
    fx_app_close(&o->app);
    return fx_cli_fail(cmd, FX_EXIT_FAIL, "%s", err.msg);
  }
  return 0;
}

static int oneshot_run(oneshot *o) {
  uv_run(&o->uv, UV_RUN_DEFAULT); /* until the operation calls oneshot_done */
  uv_run(&o->uv, UV_RUN_DEFAULT); /* let the handles close */
  uv_loop_close(&o->uv);
  fx_app_close(&o->app);
  return o->status;
}

static void oneshot_done(oneshot *o, int status) {
  o->status = status;
  fx_loop_close(&o->lp);
}

static int parse_common(int argc, char **argv, const char *usage, const char **config,
                        const char **tenant, int *show_token, int *summary) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"tenant", required_argument, 0, 't'},
                                       {"show-token", no_argument, 0, 's'},
                                       {"summary", no_argument, 0, 'S'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'c': *config = optarg; break;
    case 't': *tenant = optarg; break;
    case 's':
      if (!show_token) goto bad;
      *show_token = 1;
      break;
    case 'S':
      if (!summary) goto bad;
      *summary = 1;
      break;
    case 'h': fputs(usage, stdout); return -1; /* help shown: exit 0 */
    default: goto bad;
    }
  }
  *config = fx_cli_config(*config);
  if (!*config) {
    fputs(usage, stderr);
    return FX_EXIT_USAGE;
  }
  return 0;
bad:
  fputs(usage, stderr);
  return FX_EXIT_USAGE;
}

/* ---- fhirx token -------------------------------------------------------- */

static const char token_usage[] =
    "usage: fhirx token --config FILE [--tenant ID] [--show-token]\n"
    "\n"
    "Discovers the token endpoint (unless configured), signs a client assertion with the\n"
    "newest key, and exchanges it for an access token. Prints JSON with the granted scope\n"
    "and expires_in; the token itself only with --show-token. On failure, says why and what\n"
    "to change (Code Console scopes, the JWKS on Cerner Central, the clock).\n";

static void print_token(oneshot *o, fx_token *tok) {
  char endpoint[2048] = "";
  char endpoint_raw[2048] = "";
  fx_token_cache_endpoint(o->app.tokens, o->tenant->id, endpoint_raw, sizeof endpoint_raw);
  fx_url_redact(endpoint_raw, endpoint, sizeof endpoint);
  char *asked = fx_tenant_scope(o->tenant, fx_profile_for(&o->app.profiles, o->tenant->id));
  char *missing = asked ? fx_scope_missing(asked, tok->scope) : NULL;
  json_t *out = json_pack("{s:s, s:s, s:s, s:I}", "tenant", o->tenant->id, "token_endpoint",
                          endpoint, "scope", tok->scope, "expires_in", (json_int_t)tok->expires_in);
  if (out && missing && *missing) json_object_set_new(out, "not_granted", json_string(missing));
  if (out && o->show_token) json_object_set_new(out, "access_token", json_string(tok->access_token));
  char *text = out ? json_dumps(out, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  if (text) puts(text);
  if (missing && *missing)
    fprintf(stderr,
            "fhirx token: warning: not granted: %s. Tick these scopes for the app in Code Console "
            "or fhirx cannot extract those types.\n",
            missing);
  free(text);
  json_decref(out);
  free(asked);
  free(missing);
}

static void on_token(fx_token *tok, const fx_auth_error *e, void *arg) {
  oneshot *o = arg;
  if (tok) {
    print_token(o, tok);
    oneshot_done(o, FX_EXIT_OK);
  } else {
    fx_cli_fail(o->cmd, FX_EXIT_FAIL, "%s", e->err.msg);
    oneshot_done(o, FX_EXIT_FAIL);
  }
}

int fx_cmd_token(int argc, char **argv) {
  const char *config = NULL, *tenant = NULL;
  int show = 0;
  int rc = parse_common(argc, argv, token_usage, &config, &tenant, &show, NULL);
  if (rc) return rc < 0 ? FX_EXIT_OK : rc;
  oneshot o;
  if ((rc = oneshot_open(&o, "token", config, tenant)) != 0) return rc;
  o.show_token = show;
  fx_token *tok = NULL;
  fx_auth_error e;
  rc = fx_token_get(o.app.tokens, &o.lp, o.tenant->id, on_token, &o, &tok, &e);
  if (rc == 0) {
    on_token(tok, NULL, &o);
    fx_token_release(tok);
  } else if (rc < 0) {
    on_token(NULL, &e, &o);
  }
  return oneshot_run(&o);
}

/* ---- fhirx get ---------------------------------------------------------- */

static const char get_usage[] =
    "usage: fhirx get --config FILE [--tenant ID] [--summary] PATH\n"
    "\n"
    "PATH is relative to the tenant's FHIR base (Patient/12724065, Observation?patient=12724065)\n"
    "or an absolute URL under it. Prints the resource (or Bundle) as JSON; --summary prints one\n"
    "line instead. Runs discovery, the token exchange and the read, so it proves the whole chain.\n";

/* "SMART, WILMA": the official name's text, else FAMILY, Given. */
static void person_name(json_t *res, char *out, size_t size) {
  json_t *names = json_object_get(res, "name"), *pick = json_array_get(names, 0), *n;
  size_t i;
  json_array_foreach(names, i, n) {
    const char *use = json_string_value(json_object_get(n, "use"));
    if (use && strcmp(use, "official") == 0) {
      pick = n;
      break;
    }
  }
  const char *text = json_string_value(json_object_get(pick, "text"));
  if (text) {
    fx_utf8_copy(out, size, text);
    return;
  }
  const char *family = json_string_value(json_object_get(pick, "family"));
  const char *given = json_string_value(json_array_get(json_object_get(pick, "given"), 0));
  snprintf(out, size, "%s%s%s", family ? family : "", family && given ? ", " : "",
           given ? given : "");
  fx_utf8_trim(out);
}

static void print_summary(json_t *res) {
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  if (type && strcmp(type, "Bundle") == 0) {
    const char *btype = json_string_value(json_object_get(res, "type"));
    printf("Bundle (%s): %zu entries\n", btype ? btype : "?",
           json_array_size(json_object_get(res, "entry")));
    return;
  }
  printf("%s/%s", type ? type : "?", id ? id : "?");
  if (type && (strcmp(type, "Patient") == 0 || strcmp(type, "Practitioner") == 0 ||
               strcmp(type, "RelatedPerson") == 0)) {
    char name[256];
    person_name(res, name, sizeof name);
    const char *born = json_string_value(json_object_get(res, "birthDate"));
    json_t *active = json_object_get(res, "active");
    printf(": %s", name);
    if (born) printf(", born %s", born);
    if (json_is_boolean(active)) printf(", %s", json_is_true(active) ? "active" : "inactive");
  }
  putchar('\n');
}

/* The operator's next step for a failed read. */
static const char *status_hint(long status, const char *outcome) {
  if (status == 400 && outcome && strstr(outcome, "at least one of"))
    return "a Cerner search restriction: read a specific id (Type/id) or add patient=<id> to "
           "the search";
  switch (status) {
  case 400: return "the server rejected the request's parameters";
  case 401: return "the server rejected a freshly obtained token twice: check that the token "
                   "endpoint belongs to this FHIR server (tenants[].token_endpoint)";
  case 403: return "the token lacks a scope for this read, or the tenant has not authorized "
                   "the app: tick the type's scope in Code Console (see `fhirx scopes`)";
  case 404: return "no such resource on this tenant";
  case 406: return "the server does not serve this Accept type";
  case 429: return "throttled: try again later";
  default: return status >= 500 ? "a server-side failure: usually transient, try again" : "";
  }
}

static void on_read(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  oneshot *o = arg;
  if (ae) {
    fx_cli_fail(o->cmd, FX_EXIT_FAIL, "%s", ae->err.msg);
    oneshot_done(o, FX_EXIT_FAIL);
    return;
  }
  char shown[1024];
  fx_url_redact(res->url, shown, sizeof shown);
  if (res->result) {
    fx_cli_fail(o->cmd, FX_EXIT_FAIL, "GET %s failed: %s", shown, res->error);
    oneshot_done(o, FX_EXIT_FAIL);
    return;
  }
  if (res->status != 200) {
    char outcome[512];
    fx_fhir_outcome_summary(res->body, outcome, sizeof outcome);
    const char *hint = status_hint(res->status, outcome);
    char redirect[400];
    fx_url_redirect_note(res->status, fx_http_header(res, "Location"), redirect, sizeof redirect);
    fx_cli_fail(o->cmd, FX_EXIT_FAIL, "GET %s: HTTP %ld%s%s%s%s%s%s", shown, res->status,
                redirect[0] ? ": " : "", redirect, outcome[0] ? ": " : "", outcome,
                hint[0] ? ". Hint: " : "", hint);
    oneshot_done(o, FX_EXIT_FAIL);
    return;
  }
  json_error_t jerr;
  json_t *doc = json_loadb(res->body, res->body_len, 0, &jerr);
  if (!doc) {
    fx_cli_fail(o->cmd, FX_EXIT_FAIL, "GET %s: HTTP 200 but the body is not JSON (%s)", shown,
                jerr.text);
    oneshot_done(o, FX_EXIT_FAIL);
    return;
  }
  if (o->summary) {
    print_summary(doc);
  } else {
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text) puts(text);
    free(text);
  }
  json_decref(doc);
  oneshot_done(o, FX_EXIT_OK);
}

int fx_cmd_get(int argc, char **argv) {
  const char *config = NULL, *tenant = NULL;
  int summary = 0;
  int rc = parse_common(argc, argv, get_usage, &config, &tenant, NULL, &summary);
  if (rc) return rc < 0 ? FX_EXIT_OK : rc;
  if (optind != argc - 1) {
    fputs(get_usage, stderr);
    return FX_EXIT_USAGE;
  }
  const char *path = argv[optind];
  oneshot o;
  if ((rc = oneshot_open(&o, "get", config, tenant)) != 0) return rc;
  o.summary = summary;
  char url[4096];
  if (strncasecmp(path, "http://", 7) == 0 || strncasecmp(path, "https://", 8) == 0)
    snprintf(url, sizeof url, "%s", path);
  else
    snprintf(url, sizeof url, "%s/%s", o.tenant->fhir_base, path[0] == '/' ? path + 1 : path);
  fx_fhir_request req = {.tenant = o.tenant->id, .scope = fx_tenant_token_scope(o.tenant, 0),
                         .url = url};
  fx_err err = {0};
  if (fx_fhir_get(&o.lp, o.app.tokens, &req, on_read, &o, &err) != 0) {
    fx_cli_fail("get", FX_EXIT_FAIL, "%s", err.msg);
    oneshot_done(&o, FX_EXIT_FAIL);
  }
  return oneshot_run(&o);
}
