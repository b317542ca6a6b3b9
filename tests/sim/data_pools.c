/* The entity pools every tenant shares across its patients: Practitioners,
 * Organizations (providers and payors) and Locations (sites > buildings >
 * wards/rooms via partOf). Clinical resources reference them where Cerner
 * does, so many patients reference the same few entities, which is what a
 * reference cache in the extractor is for. */
#include "tests/sim/data_internal.h"

#include <stdio.h>
#include <string.h>

static const char *const families[] = {"Adams",  "Baker",  "Chen",   "Diaz",   "Evans",
                                       "Foster", "Gupta",  "Hughes", "Ibrahim", "Jensen",
                                       "Kowalski", "Larsen", "Murphy", "Novak", "Okafor",
                                       "Park",   "Quinn",  "Reyes",  "Schmidt", "Tanaka"};
static const char *const givens[] = {"Alan",  "Beth",  "Carlos", "Dana",  "Elena", "Frank",
                                     "Gita",  "Hiro",  "Irene",  "Jamal", "Karen", "Luis",
                                     "Mara",  "Nikhil", "Olga",  "Paul",  "Rosa",  "Sam"};
static const char *const specialties[][2] = {
    {"208D00000X", "General Practice"},     {"207R00000X", "Internal Medicine"},
    {"207Q00000X", "Family Medicine"},      {"207RC0000X", "Cardiovascular Disease"},
    {"2084N0400X", "Neurology"},            {"207V00000X", "Obstetrics & Gynecology"},
    {"208000000X", "Pediatrics"},           {"2085R0202X", "Diagnostic Radiology"}};
static const char *const provider_orgs[] = {
    "Kansas City Medical Center", "Overland Park Regional Hospital", "Columbia Family Clinic",
    "Omaha Heart Institute",      "Springfield Community Hospital", "Wichita Children's Clinic",
    "Prairie Valley Health",      "Riverbend Orthopedics"};
static const char *const payor_orgs[] = {"Heartland Health Plan", "Midwest Mutual Insurance",
                                         "Plains Medicare Advantage", "Great River HMO"};
static const char *const cities[] = {"Kansas City", "Overland Park", "Columbia", "Omaha",
                                     "Springfield", "Wichita"};

void sim_pool_layout_of(const sim_data_knobs *k, sim_pool_layout *out) {
  unsigned n = k->organizations;
  if (n < 4) {
    *out = (sim_pool_layout){.nprov = n, .payor_first = 0, .npayor = n};
  } else {
    unsigned payors = n / 4;
    *out = (sim_pool_layout){.nprov = n - payors, .payor_first = n - payors, .npayor = payors};
  }
  unsigned m = k->locations;
  out->nsite = m / 10 ? m / 10 : 1;
  out->nbuilding = m > out->nsite ? (m - out->nsite) / 4 : 0;
  out->leaf_first = out->nsite + out->nbuilding;
  out->nleaf = m - out->leaf_first;
  if (out->nleaf == 0) { /* tiny pools: point at whatever exists */
    out->leaf_first = 0;
    out->nleaf = m;
  }
}

const char *sim_pool_display(const sim_store *s, sim_rtype t, unsigned index) {
  const sim_resource *r = sim_store_at(s, t, index);
  if (!r) return "";
  const json_t *name = json_object_get(r->doc, "name");
  const char *text = json_is_array(name)
                         ? json_string_value(json_object_get(json_array_get(name, 0), "text"))
                         : json_string_value(name);
  return text ? text : "";
}

void sim_patient_team(const sim_data_params *p, uint32_t ordinal, unsigned team[SIM_TEAM_SIZE]) {
  sim_rng r;
  sim_rng_init_domain(&r, p, SIM_DOMAIN_PATIENT_TEAM, ordinal);
  for (int i = 0; i < SIM_TEAM_SIZE; i++) team[i] = sim_rng_below(&r, p->knobs.practitioners);
}

static json_t *meta(sim_rng *r) {
  char when[32], ver[16];
  sim_fhir_instant(SIM_DATA_EPOCH - 400 * 86400LL + (int64_t)sim_rng_below(r, 365 * 86400), when);
  snprintf(ver, sizeof ver, "%u", 1 + sim_rng_below(r, 4));
  return json_pack("{s:s, s:s}", "versionId", ver, "lastUpdated", when);
}

static int add_practitioner(sim_store *s, const sim_data_params *p, unsigned k) {
  sim_rng r;
  sim_rng_init(&r, p, SIM_RT_PRACTITIONER, k);
  json_t *m = meta(&r);
  const char *family = SIM_RNG_PICK(&r, families);
  const char *given = SIM_RNG_PICK(&r, givens);
  bool female = sim_rng_below(&r, 2) == 0;
  bool active = sim_rng_below(&r, 12) != 0;
  unsigned spec = sim_rng_below(&r, (uint32_t)(sizeof specialties / sizeof *specialties));
  unsigned npi_tail = sim_rng_below(&r, 100000000);
  unsigned phone = sim_rng_below(&r, 10000);
  char id[24], text[96], npi[16], tel[16];
  snprintf(id, sizeof id, "%ld", SIM_PRACTITIONER_BASE + (long)k);
  snprintf(text, sizeof text, "%s, %s MD", family, given);
  snprintf(npi, sizeof npi, "1%09u", npi_tail + k % 10);
  snprintf(tel, sizeof tel, "816555%04u", phone);
  json_t *doc = json_pack(
      "{s:s, s:s, s:o, s:[{s:s, s:{s:[{s:s, s:s}], s:s}, s:s, s:s}], s:b,"
      " s:[{s:s, s:s, s:s, s:[s], s:[s], s:[s]}], s:[{s:s, s:s, s:s}], s:s,"
      " s:[{s:{s:[{s:s, s:s, s:s}], s:s}}]}",
      "resourceType", "Practitioner", "id", id, "meta", m, "identifier", "use", "usual", "type",
      "coding", "system", "http://terminology.hl7.org/CodeSystem/v2-0203", "code", "NPI", "text",
      "National Provider Identifier", "system", "http://hl7.org/fhir/sid/us-npi", "value", npi,
      "active", active, "name", "use", "official", "text", text, "family", family, "given", given,
      "prefix", "Dr.", "suffix", "MD", "telecom", "system", "phone", "value", tel, "use", "work",
      "gender", female ? "female" : "male", "qualification", "code", "coding", "system",
      "http://nucc.org/provider-taxonomy", "code", specialties[spec][0], "display",
      specialties[spec][1], "text", specialties[spec][1]);
  return doc ? sim_store_add(s, SIM_RT_PRACTITIONER, doc) : -1;
}

static int add_organization(sim_store *s, const sim_data_params *p, unsigned k,
                            const sim_pool_layout *l) {
  sim_rng r;
  sim_rng_init(&r, p, SIM_RT_ORGANIZATION, k);
  json_t *m = meta(&r);
  bool payor = l->payor_first > 0 && k >= l->payor_first; /* tiny pools: all providers */
  const char *city = SIM_RNG_PICK(&r, cities);
  unsigned phone = sim_rng_below(&r, 10000);
  char id[24], name[128], tel[16], ident[24];
  snprintf(id, sizeof id, "%ld", SIM_ORGANIZATION_BASE + (long)k);
  if (payor)
    snprintf(name, sizeof name, "%s", payor_orgs[(k - l->payor_first) % 4]);
  else
    snprintf(name, sizeof name, "%s", provider_orgs[k % 8]);
  if (k >= 8 && !payor) /* more providers than names: number the repeats */
    snprintf(name + strlen(name), sizeof name - strlen(name), " %u", k / 8 + 1);
  snprintf(tel, sizeof tel, "816444%04u", phone);
  snprintf(ident, sizeof ident, "ORG%06u", k + 1);
  json_t *doc = json_pack(
      "{s:s, s:s, s:o, s:[{s:s, s:s, s:s}], s:b, s:[{s:[{s:s, s:s, s:s}], s:s}], s:s,"
      " s:[{s:s, s:s, s:s}], s:[{s:s, s:s, s:s, s:s}]}",
      "resourceType", "Organization", "id", id, "meta", m, "identifier", "use", "usual",
      "system", "urn:oid:2.16.840.1.113883.3.13.6", "value", ident, "active", 1, "type",
      "coding", "system", "http://terminology.hl7.org/CodeSystem/organization-type", "code",
      payor ? "pay" : "prov", "display", payor ? "Payer" : "Healthcare Provider", "text",
      payor ? "Payer" : "Healthcare Provider", "name", name, "telecom", "system", "phone",
      "value", tel, "use", "work", "address", "use", "work", "city", city, "state", "MO",
      "country", "USA");
  return doc ? sim_store_add(s, SIM_RT_ORGANIZATION, doc) : -1;
}

static int add_location(sim_store *s, const sim_data_params *p, unsigned k,
                        const sim_pool_layout *l) {
  static const char *const units[] = {"Medical", "Surgical", "Cardiac", "Pediatric",
                                      "Oncology", "Maternity"};
  sim_rng r;
  sim_rng_init(&r, p, SIM_RT_LOCATION, k);
  json_t *m = meta(&r);
  const char *unit = SIM_RNG_PICK(&r, units);
  bool room = sim_rng_below(&r, 2) == 0;
  const char *code, *display;
  long parent = -1;
  char id[24], name[128];
  snprintf(id, sizeof id, "%ld", SIM_LOCATION_BASE + (long)k);
  if (k < l->nsite) {
    code = "si", display = "Site";
    snprintf(name, sizeof name, "%s Campus", provider_orgs[k % 8]);
  } else if (k < l->nsite + l->nbuilding) {
    code = "bu", display = "Building";
    parent = (long)((k - l->nsite) % l->nsite);
    snprintf(name, sizeof name, "Building %c", 'A' + (int)((k - l->nsite) % 26));
  } else {
    code = room ? "ro" : "wa", display = room ? "Room" : "Ward";
    parent = l->nbuilding ? (long)(l->nsite + (k - l->leaf_first) % l->nbuilding)
                          : (long)(k % l->nsite);
    snprintf(name, sizeof name, "%s %s %u", unit, display, k);
  }
  if ((long)k == parent) parent = -1; /* tiny pools */
  unsigned org = l->nprov ? k % l->nprov : 0;
  char org_ref[48];
  snprintf(org_ref, sizeof org_ref, "Organization/%ld", SIM_ORGANIZATION_BASE + (long)org);
  json_t *doc = json_pack(
      "{s:s, s:s, s:o, s:s, s:s, s:s, s:{s:[{s:s, s:s, s:s}], s:s}, s:{s:s, s:s}}",
      "resourceType", "Location", "id", id, "meta", m, "status", "active", "name", name, "mode",
      "instance", "physicalType", "coding", "system",
      "http://terminology.hl7.org/CodeSystem/location-physical-type", "code", code, "display",
      display, "text", display, "managingOrganization", "reference", org_ref, "display",
      sim_pool_display(s, SIM_RT_ORGANIZATION, org));
  if (!doc) return -1;
  if (parent >= 0) {
    char parent_ref[48];
    snprintf(parent_ref, sizeof parent_ref, "Location/%ld", SIM_LOCATION_BASE + parent);
    json_object_set_new(doc, "partOf",
                        json_pack("{s:s, s:s}", "reference", parent_ref, "display",
                                  sim_pool_display(s, SIM_RT_LOCATION, (unsigned)parent)));
  }
  return sim_store_add(s, SIM_RT_LOCATION, doc);
}

int sim_gen_pools(sim_store *s, const sim_data_params *p) {
  sim_pool_layout l;
  sim_pool_layout_of(&p->knobs, &l);
  for (unsigned k = 0; k < p->knobs.practitioners; k++)
    if (add_practitioner(s, p, k) != 0) return -1;
  /* Organizations before Locations: a Location's display names its organization. */
  for (unsigned k = 0; k < p->knobs.organizations; k++)
    if (add_organization(s, p, k, &l) != 0) return -1;
  for (unsigned k = 0; k < p->knobs.locations; k++)
    if (add_location(s, p, k, &l) != 0) return -1;
  return 0;
}
