/* The config loader (common/config.c fx_config_parse), then the profiles it
 * selects (worker/model/profile.c). Properties:
 *  - a config either loads or fails with an error code and a message that
 *    names where: a JSON position ("line 3, column 5: ...") or a field (it
 *    names a section, "tenants[0].fhir_base: ..."); an unknown name is
 *    quoted short enough that the names allowed still fit;
 *  - in a loaded config every tenant's fhir_base is an absolute http(s) URL
 *    with a host (curl reads it so), without a trailing '/', and the tenant
 *    ids are distinct;
 *  - loading the profiles of a loaded config succeeds or names its problem. */
#include <curl/curl.h>
#include <strings.h>

#include "tests/fuzz/fuzz.h"

static const char *const sections[] = {"tenants", "keys",   "http",  "auth",  "log", "kafka",
                                       "topics",  "worker", "replay", "admin", "bulk"};

static int names_where(const char *msg) {
  if (strncmp(msg, "line ", 5) == 0 || strncmp(msg, "the top level", 13) == 0 ||
      strcmp(msg, "out of memory") == 0)
    return 1;
  for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
    if (strstr(msg, sections[i])) return 1;
  return 0;
}

static void check_base(const char *base, size_t i) {
  FZ_CHECK(base && *base, "tenants[%zu] loaded without fhir_base", i);
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL;
  int ok = u && curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK;
  FZ_CHECK(ok && host && *host, "tenants[%zu].fhir_base \"%s\" loaded without a host", i, base);
  FZ_CHECK(strcasecmp(scheme, "https") == 0 || strcasecmp(scheme, "http") == 0,
           "tenants[%zu].fhir_base \"%s\" loaded with scheme %s", i, base, scheme);
  FZ_CHECK(base[strlen(base) - 1] != '/', "tenants[%zu].fhir_base \"%s\" ends with '/'", i, base);
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fz_str(data, size);
  fx_config *cfg = NULL;
  fx_err err;
  memset(&err, 0, sizeof err);
  int rc = fx_config_parse(text, "/nonexistent-fuzz-dir", &cfg, &err);
  if (rc != 0) {
    FZ_CHECK(cfg == NULL, "a refused config was returned");
    FZ_CHECK(err.code != 0 && err.msg[0], "a refused config has no error");
    FZ_CHECK(names_where(err.msg), "the error \"%s\" names no field", err.msg);
    if (strstr(err.msg, ": unknown section;") || strstr(err.msg, ": unknown option;"))
      FZ_CHECK(strlen(err.msg) + 1 < sizeof err.msg,
               "the unknown name crowds out what is allowed: \"%s\"", err.msg);
    free(text);
    return 0;
  }
  FZ_CHECK(cfg != NULL && cfg->n_tenants >= 1, "a loaded config has no tenant");
  for (size_t i = 0; i < cfg->n_tenants; i++) {
    check_base(cfg->tenants[i].fhir_base, i);
    for (size_t j = 0; j < i; j++)
      FZ_CHECK(strcmp(cfg->tenants[i].id, cfg->tenants[j].id) != 0,
               "tenants[%zu] and tenants[%zu] share the id %s", j, i, cfg->tenants[i].id);
  }
  fx_profile_set ps;
  memset(&ps, 0, sizeof ps);
  memset(&err, 0, sizeof err);
  if (fx_profile_set_load(cfg, &ps, &err) == 0)
    fx_profile_set_free(&ps);
  else
    FZ_CHECK(err.msg[0] != '\0', "profiles refused without a message");
  fx_config_free(cfg);
  free(text);
  return 0;
}
