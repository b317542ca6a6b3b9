#include "worker/resources.h"

#include "common/url.h"

#include "worker/profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const fx_cerner_types[] = {
    "AllergyIntolerance", "Binary",       "CarePlan",          "CareTeam",     "Condition",
    "Coverage",           "Device",       "DiagnosticReport",  "DocumentReference",
    "Encounter",          "Goal",         "Immunization",      "Location",     "MedicationRequest",
    "Observation",        "Organization", "Patient",           "Practitioner", "Procedure",
    "RelatedPerson",      "ServiceRequest"};
const size_t fx_cerner_types_n = sizeof fx_cerner_types / sizeof fx_cerner_types[0];


int fx_resource_index(const char *type) {
  for (size_t i = 0; type && i < fx_cerner_types_n; i++)
    if (strcmp(fx_cerner_types[i], type) == 0) return (int)i;
  return -1;
}

int fx_resource_type_known(const char *type) { return fx_resource_index(type) >= 0; }

uint32_t fx_patient_compartment_types(void) {
  static const char *const outside[] = {"Binary", "Location", "Organization", "Practitioner"};
  uint32_t set = (uint32_t)((1ull << fx_cerner_types_n) - 1);
  for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++)
    set &= ~FX_TYPE_BIT(fx_resource_index(outside[i]));
  return set;
}

void fx_scope_for(const char *type, int smart_version, char *out, size_t size) {
  snprintf(out, size, "system/%s.%s", type, smart_version == FX_SMART_V2 ? "rs" : "read");
}

uint32_t fx_tenant_types(const fx_tenant_conf *t, const fx_profile *p) {
  uint32_t per_patient = fx_profile_patient_types(p);
  if (!t->resources.n) return per_patient;
  uint32_t set = 0;
  for (size_t i = 0; i < t->resources.n; i++) {
    int idx = fx_resource_index(t->resources.v[i]);
    if (idx >= 0) set |= FX_TYPE_BIT(idx);
  }
  return set & per_patient;
}

char *fx_tenant_scope(const fx_tenant_conf *t, const fx_profile *p) {
  size_t cap = 64;
  for (size_t i = 0; i < t->scopes.n; i++) cap += strlen(t->scopes.v[i]) + 1;
  cap += fx_cerner_types_n * 48;
  char *out = calloc(1, cap);
  if (!out) return NULL;
  size_t used = 0;
  if (t->scopes.n) {
    for (size_t i = 0; i < t->scopes.n; i++)
      used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? " " : "", t->scopes.v[i]);
    return out;
  }
  uint32_t want = fx_tenant_types(t, p) | (p->depth > 0 ? p->follow : 0);
  for (size_t i = 0; i < fx_cerner_types_n; i++) {
    if (!(want & FX_TYPE_BIT(i))) continue;
    char scope[96];
    fx_scope_for(fx_cerner_types[i], t->smart_version, scope, sizeof scope);
    used += (size_t)snprintf(out + used, cap - used, "%s%s", used ? " " : "", scope);
  }
  return out;
}

fx_token_scope fx_tenant_token_scope(const fx_tenant_conf *t, int own_export) {
  fx_token_scope s = {.base = t->fhir_base,
                      .prefixes = t->token_url_prefixes.v,
                      .n_prefixes = t->token_url_prefixes.n,
                      .own_export = own_export};
  return s;
}

int fx_resource_type_name_ok(const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n < 2 || n > 64 || name[0] < 'A' || name[0] > 'Z') return 0;
  for (size_t i = 1; i < n; i++)
    if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z'))) return 0;
  return 1;
}

int fx_fhir_id_ok(const char *s, size_t n) {
  if (n == 0 || n > 64) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
          (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '.'))
      return 0;
  return 1;
}

fx_ref_kind fx_ref_parse(const char *ref, const char *base, char *key, size_t size,
                         int *type_index) {
  if (!ref || !*ref || ref[0] == '#') return FX_REF_NONE;
  const char *rel = ref;
  if (strstr(ref, "://")) {
    if (!fx_url_within(ref, base)) return FX_REF_FOREIGN;
    /* Same origin and path prefix: what follows the base's path is Type/id. */
    const char *path = strchr(strstr(ref, "://") + 3, '/');
    const char *bpath = strchr(strstr(base, "://") + 3, '/');
    size_t bl = bpath ? strlen(bpath) : 0;
    if (!path || strncmp(path, bpath ? bpath : "", bl) != 0) return FX_REF_NONE;
    rel = path + bl;
    while (*rel == '/') rel++;
  }
  const char *slash = strchr(rel, '/');
  if (!slash) return FX_REF_NONE;
  char type[40];
  size_t tl = (size_t)(slash - rel);
  if (tl == 0 || tl >= sizeof type) return FX_REF_NONE;
  memcpy(type, rel, tl);
  type[tl] = '\0';
  int idx = fx_resource_index(type);
  const char *id = slash + 1;
  size_t il = strcspn(id, "/?#");
  if (idx < 0 || !fx_fhir_id_ok(id, il)) return FX_REF_NONE;
  int n = snprintf(key, size, "%s/%.*s", type, (int)il, id);
  if (n < 0 || (size_t)n >= size) return FX_REF_NONE;
  *type_index = idx;
  return FX_REF_LOCAL;
}
