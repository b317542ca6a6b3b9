/* Search keys of the pool types: Practitioner (identifier, name, family,
 * given, active), Organization (identifier, name, type) and Location (name,
 * -physicalType). */
#include "tests/sim/fhir.h"

#include <stdio.h>

/* "system|code" and "code" of the first coding of a CodeableConcept. */
static int index_concept(sim_resource *r, const char *key, const json_t *cc) {
  const json_t *coding = json_array_get(json_object_get(cc, "coding"), 0);
  const char *sys = json_string_value(json_object_get(coding, "system"));
  const char *code = json_string_value(json_object_get(coding, "code"));
  if (!code) return 0;
  char value[256];
  snprintf(value, sizeof value, "%s%s%s", sys ? sys : "", sys ? "|" : "", code);
  return sim_resource_add_key(r, key, value);
}

int sim_index_practitioner(sim_resource *r) {
  const json_t *active = json_object_get(r->doc, "active");
  if (sim_index_names(r) || sim_index_identifiers(r)) return -1;
  return json_is_boolean(active)
             ? sim_resource_add_key(r, "active", json_is_true(active) ? "true" : "false")
             : 0;
}

int sim_index_organization(sim_resource *r) {
  if (sim_index_identifiers(r) || sim_index_string(r, "name", json_object_get(r->doc, "name")))
    return -1;
  return index_concept(r, "type", json_array_get(json_object_get(r->doc, "type"), 0));
}

int sim_index_location(sim_resource *r) {
  if (sim_index_string(r, "name", json_object_get(r->doc, "name"))) return -1;
  return index_concept(r, "-physicalType", json_object_get(r->doc, "physicalType"));
}
