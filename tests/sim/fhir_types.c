/* Search rules per resource type, following Cerner's R4 documentation
 * (cerner-smart-facts.md section 3). "-pageContext" is accepted everywhere
 * because it continues a search whose first page passed these checks.
 *
 * _lastUpdated is honoured by the 10 clinical types Cerner documents it for,
 * each with its documented restrictions (sim_lu_rule); the others ignore it
 * like any parameter they do not know, so a "since" search of them returns
 * everything. */
#include "tests/sim/fhir.h"

#define REQ(...) ((const char *const[]){__VA_ARGS__, "-pageContext", NULL})

static const sim_search_param patient_params[] = {
    {"identifier", SIM_P_TOKEN}, {"name", SIM_P_STRING},
    {"family", SIM_P_STRING},    {"given", SIM_P_STRING},
    {"birthdate", SIM_P_DATE},   {"phone", SIM_P_PHONE},
    {"email", SIM_P_TOKEN},      {"address-postalcode", SIM_P_STRING},
    {"gender", SIM_P_TOKEN},     {NULL, SIM_P_STRING}};

static const sim_search_param practitioner_params[] = {
    {"identifier", SIM_P_TOKEN}, {"name", SIM_P_STRING}, {"family", SIM_P_STRING},
    {"given", SIM_P_STRING},     {"active", SIM_P_TOKEN}, {NULL, SIM_P_STRING}};

static const sim_search_param organization_params[] = {
    {"identifier", SIM_P_TOKEN}, {"name", SIM_P_STRING}, {"type", SIM_P_TOKEN},
    {NULL, SIM_P_STRING}};

static const sim_search_param location_params[] = {
    {"name", SIM_P_STRING}, {"-physicalType", SIM_P_TOKEN}, {NULL, SIM_P_STRING}};

/* A per-patient type: found by patient (or _id), never by scanning.
 * `since` says whether it honours _lastUpdated. */
#define PER_PATIENT(t, req, dflt, max, since)                                                  \
  [t] = {.type = t, .searchable = true, .required = req, .default_count = dflt,               \
         .max_count = max, .last_updated = since, .id_alone = true, .quirks = true}

/* A stored pool type searched on its keys. */
#define POOL(t, req, prm, idx, dflt, max)                                                     \
  [t] = {.type = t, .searchable = true, .required = req, .params = prm, .index = idx,         \
         .default_count = dflt, .max_count = max, .id_alone = true, .quirks = true}

/* A per-patient type with _lastUpdated restricted as documented. */
#define PER_PATIENT_LU(t, req, dflt, max, rule, no_date)                                       \
  [t] = {.type = t, .searchable = true, .required = req, .default_count = dflt,               \
         .max_count = max, .last_updated = true, .lu_rule = rule, .lu_no_date = no_date,     \
         .id_alone = true, .quirks = true}

static const sim_search_def defs[SIM_RT_COUNT] = {
    PER_PATIENT_LU(SIM_RT_ALLERGY_INTOLERANCE, REQ("_id", "patient"), 50, 200, SIM_LU_RANGE,
                   false),
    [SIM_RT_BINARY] = {.type = SIM_RT_BINARY, .searchable = false},
    [SIM_RT_CARE_PLAN] = {.type = SIM_RT_CARE_PLAN, .searchable = true,
                          .required = REQ("_id", "patient"), .default_count = 50,
                          .max_count = 200, .id_alone = true, .quirks = true,
                          .patient_requires = "category=assess-plan"},
    PER_PATIENT(SIM_RT_CARE_TEAM, REQ("_id", "patient", "encounter"), 50, 200, false),
    PER_PATIENT_LU(SIM_RT_CONDITION, REQ("_id", "patient", "subject"), 50, 200, SIM_LU_RANGE,
                   false),
    PER_PATIENT(SIM_RT_COVERAGE, REQ("patient", "-encounter"), 50, 200, false),
    PER_PATIENT(SIM_RT_DEVICE, REQ("_id", "patient"), 50, 200, false),
    PER_PATIENT_LU(SIM_RT_DIAGNOSTIC_REPORT, REQ("_id", "patient"), 10, 100, SIM_LU_RANGE, true),
    PER_PATIENT_LU(SIM_RT_DOCUMENT_REFERENCE, REQ("_id", "patient"), 10, 100, SIM_LU_RANGE, true),
    PER_PATIENT_LU(SIM_RT_ENCOUNTER, REQ("_id", "patient", "subject", "account", "identifier"),
                   50, 200, SIM_LU_RANGE, false),
    PER_PATIENT(SIM_RT_GOAL, REQ("_id", "patient"), 50, 200, false),
    PER_PATIENT_LU(SIM_RT_IMMUNIZATION, REQ("_id", "patient"), 50, 200, SIM_LU_ONE_GT_GE, true),
    POOL(SIM_RT_LOCATION, REQ("_id", "-physicalType"), location_params, sim_index_location, 100,
         200),
    PER_PATIENT_LU(SIM_RT_MEDICATION_REQUEST, REQ("_id", "patient"), 50, 200,
                   SIM_LU_TIMED_GE_LE, false),
    PER_PATIENT_LU(SIM_RT_OBSERVATION, REQ("_id", "patient", "subject"), 50, 200, SIM_LU_RANGE,
                   true),
    POOL(SIM_RT_ORGANIZATION, NULL, organization_params, sim_index_organization, 100, 200),
    /* Patient keeps the behaviour it always had: no paging quirks, _id combinable. */
    [SIM_RT_PATIENT] = {.type = SIM_RT_PATIENT, .searchable = true,
                        .required = REQ("_id", "identifier", "name", "family", "given",
                                        "birthdate", "phone", "email", "address-postalcode"),
                        .params = patient_params, .index = sim_index_patient,
                        .default_count = 20, .max_count = 100, .max_matches = 1000},
    POOL(SIM_RT_PRACTITIONER, REQ("_id", "identifier", "family", "name", "active"),
         practitioner_params, sim_index_practitioner, 50, 200),
    PER_PATIENT_LU(SIM_RT_PROCEDURE, REQ("_id", "patient", "subject"), 50, 200, SIM_LU_RANGE,
                   true),
    /* related-person.md: -relationship-level=Patient with patient or identifier. */
    [SIM_RT_RELATED_PERSON] = {.type = SIM_RT_RELATED_PERSON, .searchable = true,
                               .required = REQ("_id", "identifier", "patient", "-encounter"),
                               .default_count = 50, .max_count = 200, .id_alone = true,
                               .quirks = true, .relationship_level = true},
    PER_PATIENT_LU(SIM_RT_SERVICE_REQUEST, REQ("_id", "patient", "subject"), 50, 200,
                   SIM_LU_TIMED_GE_LE, false),
};

const sim_search_def *sim_search_def_for(sim_rtype t) { return &defs[t]; }
