#include "worker/resources.h"

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

const char *const fx_reference_types[] = {"Binary", "Location", "Organization", "Practitioner",
                                          "RelatedPerson"};
const size_t fx_reference_types_n = sizeof fx_reference_types / sizeof fx_reference_types[0];

int fx_resource_index(const char *type) {
  for (size_t i = 0; type && i < fx_cerner_types_n; i++)
    if (strcmp(fx_cerner_types[i], type) == 0) return (int)i;
  return -1;
}

int fx_resource_type_known(const char *type) { return fx_resource_index(type) >= 0; }

void fx_scope_for(const char *type, int smart_version, char *out, size_t size) {
  snprintf(out, size, "system/%s.%s", type, smart_version == FX_SMART_V2 ? "rs" : "read");
}

static int in_list(const fx_strlist *l, const char *s) {
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->v[i], s) == 0) return 1;
  return 0;
}

static int is_reference_type(const char *s) {
  for (size_t i = 0; i < fx_reference_types_n; i++)
    if (strcmp(fx_reference_types[i], s) == 0) return 1;
  return 0;
}

char *fx_tenant_scope(const fx_tenant_conf *t) {
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
  for (size_t i = 0; i < fx_cerner_types_n; i++) {
    const char *type = fx_cerner_types[i];
    if (t->resources.n && !in_list(&t->resources, type) && !is_reference_type(type)) continue;
    char scope[96];
    fx_scope_for(type, t->smart_version, scope, sizeof scope);
    used += (size_t)snprintf(out + used, cap - used, "%s%s", used ? " " : "", scope);
  }
  return out;
}

uint32_t fx_patient_types(void) {
  uint32_t all = 0;
  for (size_t i = 0; i < fx_cerner_types_n; i++)
    if (!is_reference_type(fx_cerner_types[i]) || strcmp(fx_cerner_types[i], "RelatedPerson") == 0)
      all |= FX_TYPE_BIT(i);
  return all;
}

uint32_t fx_tenant_types(const fx_tenant_conf *t) {
  if (!t->resources.n) return fx_patient_types();
  uint32_t set = 0;
  for (size_t i = 0; i < t->resources.n; i++) {
    int idx = fx_resource_index(t->resources.v[i]);
    if (idx >= 0) set |= FX_TYPE_BIT(idx);
  }
  return set & fx_patient_types();
}

/* Indexed like fx_cerner_types. Reference-only types have no patient query. */
static const fx_type_query queries[] = {
    /* AllergyIntolerance */ {0, "patient", "", 0, 1},
    /* Binary */ {0, NULL, "", 0, 0},
    /* CarePlan: Cerner rejects a patient search without this category */
    {0, "patient", "&category=assess-plan", 100, 1},
    /* CareTeam */ {0, "patient", "", 0, 1},
    /* Condition */ {0, "patient", "", 0, 1},
    /* Coverage */ {0, "patient", "", 0, 0},
    /* Device */ {0, "patient", "", 0, 1},
    /* DiagnosticReport */ {0, "patient", "", 100, 1},
    /* DocumentReference */ {0, "patient", "", 100, 1},
    /* Encounter */ {0, "patient", "", 100, 1},
    /* Goal */ {0, "patient", "", 0, 1},
    /* Immunization */ {0, "patient", "", 0, 1},
    /* Location */ {0, NULL, "", 0, 0},
    /* MedicationRequest */ {0, "patient", "", 100, 1},
    /* Observation */ {0, "patient", "", 200, 1},
    /* Organization */ {0, NULL, "", 0, 0},
    /* Patient */ {1, NULL, "", 0, 0},
    /* Practitioner */ {0, NULL, "", 0, 0},
    /* Procedure */ {0, "patient", "", 0, 1},
    /* RelatedPerson */ {0, "patient", "", 0, 0},
    /* ServiceRequest */ {0, "patient", "", 0, 1},
};

const fx_type_query *fx_type_query_of(int type_index) {
  return type_index >= 0 && (size_t)type_index < sizeof queries / sizeof queries[0]
             ? &queries[type_index]
             : NULL;
}
