#include "worker/model/errclass.h"

#include <string.h>

#include "common/smart.h"

static const struct {
  const char *name;
  int transient;
} classes[FX_EC_COUNT] = {
    [FX_EC_NONE] = {"none", 0},
    [FX_EC_INVALID_JOB] = {"invalid_job", 0},
    [FX_EC_UNKNOWN_TENANT] = {"unknown_tenant", 0},
    [FX_EC_AUTH] = {"auth", 0},
    [FX_EC_SCOPE] = {"scope", 0},
    [FX_EC_NOT_FOUND] = {"not_found", 0},
    [FX_EC_SEARCH_RESTRICTION] = {"search_restriction", 0},
    [FX_EC_THROTTLED] = {"throttled", 1},
    [FX_EC_TRANSIENT] = {"transient", 1},
    [FX_EC_TOO_LARGE] = {"too_large", 0},
    [FX_EC_FOREIGN_REFERENCE] = {"foreign_reference", 0},
    [FX_EC_INVALID_RESPONSE] = {"invalid_response", 0},
    [FX_EC_SERVER] = {"server", 0},
    [FX_EC_EXPORT_FAILED] = {"export_failed", 1},
    [FX_EC_EXPORT_EXPIRED] = {"export_expired", 1},
    [FX_EC_DEADLINE] = {"deadline", 1},
};

const char *fx_errclass_name(fx_errclass c) {
  return c >= 0 && c < FX_EC_COUNT ? classes[c].name : "none";
}

fx_errclass fx_errclass_parse(const char *name) {
  for (int i = 1; name && i < FX_EC_COUNT; i++)
    if (strcmp(classes[i].name, name) == 0) return (fx_errclass)i;
  return FX_EC_NONE;
}

int fx_errclass_transient(fx_errclass c) {
  return c >= 0 && c < FX_EC_COUNT && classes[c].transient;
}

fx_errclass fx_errclass_of_status(long status) {
  switch (status) {
  case 400: return FX_EC_SEARCH_RESTRICTION;
  case 401: return FX_EC_AUTH;
  case 403: return FX_EC_SCOPE;
  case 404:
  case 410: return FX_EC_NOT_FOUND;
  case 408: return FX_EC_TRANSIENT;
  case 429: return FX_EC_THROTTLED;
  default: return status >= 500 ? FX_EC_TRANSIENT : FX_EC_SERVER;
  }
}

fx_errclass fx_errclass_of_auth(const fx_auth_error *ae, int *transient) {
  if (transient) *transient = ae->err.code == FX_ETRANSIENT || ae->err.code == FX_ECANCELED;
  if (ae->err.code == FX_EPERM) return FX_EC_FOREIGN_REFERENCE;
  return strcmp(ae->oauth_error, "invalid_scope") == 0 ? FX_EC_SCOPE : FX_EC_AUTH;
}
