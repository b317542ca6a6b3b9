/* Search rules per resource type, following Cerner's R4 documentation
 * (cerner-smart-facts.md section 3). "-pageContext" is accepted everywhere
 * because it continues a search whose first page passed these checks. */
#include "tests/sim/fhir.h"

#define REQ(...) ((const char *const[]){__VA_ARGS__, "-pageContext", NULL})

/* Parameters of clinical types whose only data link so far is the patient. */
static const sim_search_param patient_ref_params[] = {
    {"patient", SIM_P_REFERENCE}, {"subject", SIM_P_REFERENCE}, {NULL, SIM_P_STRING}};

static const sim_search_param patient_params[] = {
    {"identifier", SIM_P_TOKEN}, {"name", SIM_P_STRING},
    {"family", SIM_P_STRING},    {"given", SIM_P_STRING},
    {"birthdate", SIM_P_DATE},   {"phone", SIM_P_PHONE},
    {"email", SIM_P_TOKEN},      {"address-postalcode", SIM_P_STRING},
    {"gender", SIM_P_TOKEN},     {NULL, SIM_P_STRING}};

/* A clinical type linked to its patient, indexed on it. */
#define CLINICAL(t, req, def_count, max_count)                                                   \
  [t] = {t, true, req, patient_ref_params, sim_index_patient_ref, "patient", def_count, max_count, \
         0}

/* A type not linked to a patient; until it has data and parameters only _id
 * filters. */
#define DIRECTORY(t, req, def_count, max_count)                                                  \
  [t] = {t, true, req, NULL, NULL, NULL, def_count, max_count, 0}

static const sim_search_def defs[SIM_RT_COUNT] = {
    CLINICAL(SIM_RT_ALLERGY_INTOLERANCE, REQ("_id", "patient"), 50, 100),
    [SIM_RT_BINARY] = {SIM_RT_BINARY, false, NULL, NULL, NULL, NULL, 0, 0, 0},
    CLINICAL(SIM_RT_CARE_PLAN, REQ("_id", "patient"), 10, 100),
    CLINICAL(SIM_RT_CARE_TEAM, REQ("_id", "patient", "encounter"), 50, 100),
    CLINICAL(SIM_RT_CONDITION, REQ("_id", "patient", "subject"), 50, 100),
    CLINICAL(SIM_RT_COVERAGE, REQ("patient", "-encounter"), 50, 100),
    CLINICAL(SIM_RT_DEVICE, REQ("_id", "patient"), 50, 100),
    CLINICAL(SIM_RT_DIAGNOSTIC_REPORT, REQ("_id", "patient"), 10, 100),
    CLINICAL(SIM_RT_DOCUMENT_REFERENCE, REQ("_id", "patient"), 10, 100),
    CLINICAL(SIM_RT_ENCOUNTER, REQ("_id", "patient", "subject", "account", "identifier"), 10, 100),
    CLINICAL(SIM_RT_GOAL, REQ("_id", "patient"), 50, 100),
    CLINICAL(SIM_RT_IMMUNIZATION, REQ("_id", "patient"), 50, 100),
    DIRECTORY(SIM_RT_LOCATION, REQ("_id", "-physicalType"), 100, 100),
    CLINICAL(SIM_RT_MEDICATION_REQUEST, REQ("_id", "patient"), 10, 100),
    CLINICAL(SIM_RT_OBSERVATION, REQ("_id", "patient", "subject"), 50, 200),
    DIRECTORY(SIM_RT_ORGANIZATION, NULL, 100, 100),
    [SIM_RT_PATIENT] = {SIM_RT_PATIENT, true,
                        REQ("_id", "identifier", "name", "family", "given", "birthdate", "phone",
                            "email", "address-postalcode"),
                        patient_params, sim_index_patient, NULL, 20, 100, 1000},
    DIRECTORY(SIM_RT_PRACTITIONER, REQ("_id", "identifier", "family", "name", "active"), 20, 100),
    CLINICAL(SIM_RT_PROCEDURE, REQ("_id", "patient", "subject"), 50, 100),
    CLINICAL(SIM_RT_RELATED_PERSON, REQ("_id", "identifier", "patient", "-encounter"), 50, 100),
    CLINICAL(SIM_RT_SERVICE_REQUEST, REQ("_id", "patient", "subject"), 50, 100),
};

const sim_search_def *sim_search_def_for(sim_rtype t) { return &defs[t]; }
