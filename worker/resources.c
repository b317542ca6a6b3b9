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

static int id_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

const char *fx_fhir_id_problem(const char *s, size_t n, char *why, size_t size) {
  if (n == 0) {
    snprintf(why, size, "is empty");
    return why;
  }
  if (n > FX_FHIR_ID_MAX) {
    snprintf(why, size, "is %zu bytes long (at most %d)", n, FX_FHIR_ID_MAX);
    return why;
  }
  size_t dots = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!id_char(c)) {
      /* One character says what is wrong without saying what the id is. */
      if (c > 0x20 && c < 0x7f)
        snprintf(why, size, "contains '%c' at byte %zu of %zu", c, i + 1, n);
      else
        snprintf(why, size, "contains byte 0x%02x at byte %zu of %zu", c, i + 1, n);
      return why;
    }
    dots += c == '.';
  }
  if (dots == n && n <= 2) {
    snprintf(why, size, "is only dots (a URL path would resolve it to another resource)");
    return why;
  }
  return NULL;
}

int fx_fhir_id_ok(const char *s, size_t n) {
  char why[8];
  return fx_fhir_id_problem(s, n, why, sizeof why) == NULL;
}

static int type_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > FX_TYPE_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z'))) return 0;
  return 1;
}

const char *fx_resource_key_problem(const char *type, const char *id, char *why, size_t size) {
  char detail[96];
  if (!type) {
    snprintf(why, size, "has no resourceType");
  } else if (!type_name_ok(type)) {
    snprintf(why, size, "has a resourceType that is not a FHIR type name (1..%d letters)",
             FX_TYPE_NAME_MAX);
  } else if (!id) {
    snprintf(why, size, "has no id");
  } else if (fx_fhir_id_problem(id, strlen(id), detail, sizeof detail)) {
    snprintf(why, size,
             "has an id that breaks fhirx's id rule (1..%d of A-Z a-z 0-9 . _ ~ -): %s",
             FX_FHIR_ID_MAX, detail);
  } else {
    return NULL;
  }
  return why;
}

char *fx_result_key(const char *tenant, const char *type, const char *id) {
  size_t a = strlen(tenant), b = strlen(type), c = strlen(id);
  char *key = malloc(a + b + c + 3);
  if (!key) return NULL;
  memcpy(key, tenant, a);
  key[a] = '/';
  memcpy(key + a + 1, type, b);
  key[a + 1 + b] = '/';
  memcpy(key + a + b + 2, id, c);
  key[a + b + c + 2] = '\0';
  return key;
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
  if (idx < 0) return FX_REF_NONE;
  *type_index = idx;
  if (!fx_fhir_id_ok(id, il)) return FX_REF_INVALID;
  if (tl + 1 + il + 1 > size) return FX_REF_NONE;
  memcpy(key, type, tl);
  key[tl] = '/';
  memcpy(key + tl + 1, id, il);
  key[tl + 1 + il] = '\0';
  return FX_REF_LOCAL;
}
