/* Patient search keys. Cerner's Patient search parameters: _id, identifier,
 * name, family, given, birthdate, phone, email, address-postalcode (plus
 * gender as a filter). */
#include "tests/sim/fhir.h"

#include <stdio.h>
#include <string.h>

int sim_index_string(sim_resource *r, const char *key, const json_t *value) {
  return json_is_string(value) ? sim_resource_add_key(r, key, json_string_value(value)) : 0;
}

#define add_str sim_index_string

/* name matches family, any given name or the text; family/given separately. */
int sim_index_names(sim_resource *r) {
  size_t i, j;
  const json_t *name, *given;
  json_array_foreach(json_object_get(r->doc, "name"), i, name) {
    const json_t *family = json_object_get(name, "family");
    if (add_str(r, "family", family) || add_str(r, "name", family) ||
        add_str(r, "name", json_object_get(name, "text")))
      return -1;
    json_array_foreach(json_object_get(name, "given"), j, given) {
      if (add_str(r, "given", given) || add_str(r, "name", given)) return -1;
    }
  }
  return 0;
}

int sim_index_identifiers(sim_resource *r) {
  size_t i;
  const json_t *ident;
  json_array_foreach(json_object_get(r->doc, "identifier"), i, ident) {
    const char *sys = json_string_value(json_object_get(ident, "system"));
    const char *val = json_string_value(json_object_get(ident, "value"));
    char key[256];
    if (!val) continue;
    snprintf(key, sizeof key, "%s%s%s", sys ? sys : "", sys ? "|" : "", val);
    if (sim_resource_add_key(r, "identifier", key)) return -1;
  }
  return 0;
}

static int index_contacts(sim_resource *r) {
  size_t i;
  const json_t *t, *a;
  json_array_foreach(json_object_get(r->doc, "telecom"), i, t) {
    const char *sys = json_string_value(json_object_get(t, "system"));
    if (sys && (strcmp(sys, "phone") == 0 || strcmp(sys, "email") == 0) &&
        add_str(r, strcmp(sys, "phone") == 0 ? "phone" : "email", json_object_get(t, "value")))
      return -1;
  }
  json_array_foreach(json_object_get(r->doc, "address"), i, a) {
    if (add_str(r, "address-postalcode", json_object_get(a, "postalCode"))) return -1;
  }
  return 0;
}

int sim_index_patient(sim_resource *r) {
  if (sim_index_names(r) || sim_index_identifiers(r) || index_contacts(r) ||
      add_str(r, "birthdate", json_object_get(r->doc, "birthDate")) ||
      add_str(r, "gender", json_object_get(r->doc, "gender")))
    return -1;
  return 0;
}
