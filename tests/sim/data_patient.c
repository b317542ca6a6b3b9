/* Patients: Cerner's public sandbox patients (when the tenant is a sandbox)
 * followed by `patients` synthetic ones with ids 20000001, 20000002, ...
 * Each names its general practitioner (the first of its care team, see
 * sim_patient_team) and a managing organization from the tenant's pools. */
#include "tests/sim/data_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define FIRST_SYNTHETIC_ID 20000001L
#define MRN_SYSTEM "urn:oid:2.16.840.1.113883.6.1000"
#define DATA_EPOCH SIM_DATA_EPOCH

typedef struct patient_spec {
  const char *id;
  const char *family;
  const char *given;
  const char *gender;
  const char *birth_date;
  bool active;
} patient_spec;

/* Names and ids as in Cerner's secure sandbox (cerner-smart-facts.md section
 * 2); the birth dates other than WILMA's are invented. */
static const patient_spec sandbox_patients[] = {
    {"12724065", "SMART", "WILMA", "female", "1990-09-15", true},
    {"12724066", "SMART", "NANCY", "female", "1980-08-11", true},
    {"12724067", "SMART", "JOE", "male", "1976-04-29", true},
    {"12724068", "SMART", "HAILEY", "female", "2014-02-03", true},
    {"12724069", "SMART", "TIMMY", "male", "2012-06-01", true},
    {"12724070", "SMART", "FREDRICK", "male", "1945-03-12", true},
    {"12724071", "SMART", "VALERIE", "female", "1984-11-22", true},
    {"12742399", "SMART", "SANDY", "female", "1991-07-04", true},
    {"12742397", "BABY", "BOY", "male", "2023-05-10", true},
    {"12742400", "PETERS", "TIM", "male", "1962-10-02", true},
};

static const char *const female_given[] = {"Maria", "Emma",   "Olivia", "Ava",   "Sophia",
                                           "Linda", "Grace",  "Nora",   "Ruth",  "Alice",
                                           "Chloe", "Hannah", "Leah",   "Priya", "Mei"};
static const char *const male_given[] = {"James", "John",  "Robert", "Michael", "David",
                                         "Liam",  "Noah",  "Ethan",  "Samuel",  "Daniel",
                                         "Omar",  "Lucas", "Henry",  "Arjun",   "Wei"};
static const char *const families[] = {
    "Smith",  "Johnson", "Williams", "Brown",  "Jones",     "Garcia", "Miller", "Davis",
    "Lopez",  "Wilson",  "Anderson", "Thomas", "Taylor",    "Moore",  "Martin", "Lee",
    "Nguyen", "Patel",   "Kim",      "Clark",  "Rodriguez", "Lewis",  "Walker", "Young"};
static const char *const streets[] = {"Main St", "Oak Ave", "Maple Dr", "Cedar Ln",
                                      "Elm St",  "Pine Rd", "Park Blvd", "Lake Way"};
static const struct {
  const char *city, *state, *zip3;
} cities[] = {{"Kansas City", "MO", "641"}, {"Overland Park", "KS", "662"},
              {"Columbia", "MO", "652"},    {"Omaha", "NE", "681"},
              {"Springfield", "MO", "658"}, {"Wichita", "KS", "672"}};

static json_t *mrn_identifier(const char *mrn) {
  return json_pack("{s:s, s:{s:[{s:s, s:s, s:s}], s:s}, s:s, s:s}", "use", "usual", "type",
                   "coding", "system", "http://terminology.hl7.org/CodeSystem/v2-0203", "code",
                   "MR", "display", "Medical record number", "text", "MRN", "system", MRN_SYSTEM,
                   "value", mrn);
}

/* Cerner writes name.text as "FAMILY, GIVEN". */
static json_t *official_name(const char *family, const char *given) {
  char text[128];
  snprintf(text, sizeof text, "%s, %s", family, given);
  return json_pack("{s:s, s:s, s:s, s:[s]}", "use", "official", "text", text, "family", family,
                   "given", given);
}

static json_t *narrative(const char *family, const char *given) {
  char div[256];
  snprintf(div, sizeof div,
           "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p><b>Patient</b></p>"
           "<p><b>Name</b>: %s, %s</p></div>",
           family, given);
  return json_pack("{s:s, s:s}", "status", "generated", "div", div);
}

/* Builds the common Patient skeleton; telecom/address are added by callers. */
static json_t *patient_doc(const patient_spec *p, const char *mrn, int64_t updated,
                           unsigned version) {
  char when[32], ver[16];
  sim_fhir_instant(updated, when);
  snprintf(ver, sizeof ver, "%u", version);
  json_t *doc = json_pack("{s:s, s:s, s:{s:s, s:s}, s:o, s:[o], s:b, s:[o], s:s, s:s}",
                          "resourceType", "Patient", "id", p->id, "meta", "versionId", ver,
                          "lastUpdated", when, "text", narrative(p->family, p->given),
                          "identifier", mrn_identifier(mrn), "active", p->active, "name",
                          official_name(p->family, p->given), "gender", p->gender, "birthDate",
                          p->birth_date);
  return doc;
}

/* Appended after the other fields (and drawn from their own stream) so that
 * adding them left every earlier byte of a Patient unchanged. */
static int add_links(sim_store *s, const sim_data_params *dp, json_t *doc, uint32_t ordinal) {
  unsigned team[SIM_TEAM_SIZE];
  sim_patient_team(dp, ordinal, team);
  sim_pool_layout l;
  sim_pool_layout_of(&dp->knobs, &l);
  unsigned org = l.nprov ? ordinal % l.nprov : 0;
  char gp[48], mo[48];
  snprintf(gp, sizeof gp, "Practitioner/%ld", SIM_PRACTITIONER_BASE + (long)team[0]);
  snprintf(mo, sizeof mo, "Organization/%ld", SIM_ORGANIZATION_BASE + (long)org);
  json_t *gps = json_pack("[{s:s, s:s}]", "reference", gp, "display",
                          sim_pool_display(s, SIM_RT_PRACTITIONER, team[0]));
  json_t *mos = json_pack("{s:s, s:s}", "reference", mo, "display",
                          sim_pool_display(s, SIM_RT_ORGANIZATION, org));
  if (!gps || !mos) {
    json_decref(gps);
    json_decref(mos);
    return -1;
  }
  json_object_set_new(doc, "generalPractitioner", gps);
  json_object_set_new(doc, "managingOrganization", mos);
  return 0;
}

static int add_sandbox(sim_store *s, const sim_data_params *dp) {
  for (size_t i = 0; i < sizeof sandbox_patients / sizeof *sandbox_patients; i++) {
    const patient_spec *p = &sandbox_patients[i];
    char mrn[16];
    snprintf(mrn, sizeof mrn, "%s", p->id + 1); /* stable and unique among these */
    json_t *doc = patient_doc(p, mrn, DATA_EPOCH + (int64_t)i * 86400, 1);
    if (!doc || add_links(s, dp, doc, SIM_SANDBOX_ORDINAL + (uint32_t)i) != 0) {
      json_decref(doc);
      return -1;
    }
    if (sim_store_add(s, SIM_RT_PATIENT, doc) != 0) return -1;
  }
  return 0;
}

static void lowercase(char *s) {
  for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

static int add_contact(json_t *doc, sim_rng *r, const char *family, const char *given) {
  unsigned phone_tail = sim_rng_below(r, 10000);
  unsigned email_tail = sim_rng_below(r, 100);
  char phone[16], email[96];
  snprintf(phone, sizeof phone, "816555%04u", phone_tail);
  snprintf(email, sizeof email, "%s.%s%u@example.com", given, family, email_tail);
  lowercase(email);
  unsigned c = sim_rng_below(r, (uint32_t)(sizeof cities / sizeof *cities));
  unsigned house = 100 + sim_rng_below(r, 9900);
  const char *street = SIM_RNG_PICK(r, streets);
  unsigned zip_tail = sim_rng_below(r, 100);
  char line[64], zip[8];
  snprintf(line, sizeof line, "%u %s", house, street);
  snprintf(zip, sizeof zip, "%s%02u", cities[c].zip3, zip_tail);
  json_t *telecom = json_pack("[{s:s, s:s, s:s}, {s:s, s:s, s:s}]", "system", "phone", "value",
                              phone, "use", "home", "system", "email", "value", email, "use",
                              "home");
  json_t *address = json_pack("[{s:s, s:[s], s:s, s:s, s:s, s:s}]", "use", "home", "line", line,
                              "city", cities[c].city, "state", cities[c].state, "postalCode", zip,
                              "country", "USA");
  if (!telecom || !address) {
    json_decref(telecom);
    json_decref(address);
    return -1;
  }
  json_object_set_new(doc, "telecom", telecom);
  json_object_set_new(doc, "address", address);
  return 0;
}

/* Every random draw is its own statement: the evaluation order of function
 * arguments and initializers is unspecified in C, and byte-identical output
 * across compilers needs a fixed draw order. */
static int add_synthetic(sim_store *s, const sim_data_params *p, long index) {
  sim_rng r;
  sim_rng_init(&r, p, SIM_RT_PATIENT, (uint64_t)index);
  patient_spec spec;
  bool female = sim_rng_below(&r, 2) == 0;
  spec.family = SIM_RNG_PICK(&r, families);
  spec.given = female ? SIM_RNG_PICK(&r, female_given) : SIM_RNG_PICK(&r, male_given);
  spec.gender = female ? "female" : "male";
  spec.active = sim_rng_below(&r, 10) != 0; /* about 1 in 10 inactive */
  unsigned year = 1930 + sim_rng_below(&r, 94);
  unsigned month = 1 + sim_rng_below(&r, 12);
  unsigned day = 1 + sim_rng_below(&r, 28);
  int64_t updated = DATA_EPOCH + (int64_t)sim_rng_below(&r, 365 * 86400);
  unsigned version = 1 + sim_rng_below(&r, 5);

  char id[16], mrn[16], birth[16];
  snprintf(id, sizeof id, "%ld", FIRST_SYNTHETIC_ID + index);
  snprintf(mrn, sizeof mrn, "%ld", 30000001L + index);
  snprintf(birth, sizeof birth, "%04u-%02u-%02u", year, month, day);
  spec.id = id;
  spec.birth_date = birth;
  json_t *doc = patient_doc(&spec, mrn, updated, version);
  if (!doc || add_contact(doc, &r, spec.family, spec.given) != 0 ||
      add_links(s, p, doc, (uint32_t)index + 1) != 0) {
    json_decref(doc);
    return -1;
  }
  return sim_store_add(s, SIM_RT_PATIENT, doc);
}

bool sim_sandbox_patient_id(const char *id) {
  for (size_t i = 0; i < sizeof sandbox_patients / sizeof *sandbox_patients; i++)
    if (strcmp(sandbox_patients[i].id, id) == 0) return true;
  return false;
}

int sim_gen_patients(sim_store *s, const sim_data_params *p) {
  _Static_assert(sizeof sandbox_patients / sizeof *sandbox_patients == SIM_SANDBOX_PATIENTS,
                 "data_internal.h counts the sandbox patients");
  if (p->sandbox && add_sandbox(s, p) != 0) return -1;
  for (long i = 0; i < p->patients; i++)
    if (add_synthetic(s, p, i) != 0) return -1;
  return 0;
}
