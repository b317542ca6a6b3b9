/* What the per-patient generators (data_gen_*.c) share: the context of the
 * resource being written and helpers for the FHIR shapes every type uses.
 *
 * A generator writes one resource as JSON through g->w, drawing every random
 * choice from g->r in a fixed order (each draw its own statement: argument
 * evaluation order is unspecified in C, and byte-identical output needs a
 * fixed draw order). References go only where Cerner puts them
 * (cerner-smart-facts.md section 6). */
#ifndef SIM_DATA_GEN_H
#define SIM_DATA_GEN_H

#include "tests/sim/data_internal.h"
#include "tests/sim/jsonw.h"

typedef struct sim_gen {
  const sim_store *s;
  const sim_data_params *p;
  sim_rtype type;
  uint64_t handle;
  uint32_t ordinal, index;
  char id[64];
  const char *patient_id;   /* borrowed from the stored Patient */
  const char *patient_name; /* "SMART, WILMA" */
  unsigned team[SIM_TEAM_SIZE];
  sim_rng r;          /* positioned after the common draws */
  int64_t updated_ms; /* meta.lastUpdated, touches included */
  unsigned version;   /* meta.versionId */
  int64_t when;       /* the clinical time (epoch seconds), before the generated lastUpdated */
  const char *host;   /* for absolute Binary URLs */
  sim_jw w;
} sim_gen;

typedef void (*sim_gen_fn)(sim_gen *g);

/* One per per-patient type. */
void sim_gen_allergy_intolerance(sim_gen *g);
void sim_gen_care_plan(sim_gen *g);
void sim_gen_care_team(sim_gen *g);
void sim_gen_condition(sim_gen *g);
void sim_gen_coverage(sim_gen *g);
void sim_gen_device(sim_gen *g);
void sim_gen_diagnostic_report(sim_gen *g);
void sim_gen_document_reference(sim_gen *g);
void sim_gen_encounter(sim_gen *g);
void sim_gen_goal(sim_gen *g);
void sim_gen_immunization(sim_gen *g);
void sim_gen_medication_request(sim_gen *g);
void sim_gen_observation(sim_gen *g);
void sim_gen_procedure(sim_gen *g);
void sim_gen_related_person(sim_gen *g);
void sim_gen_service_request(sim_gen *g);

/* ---- helpers (data_clinical.c) ---- */

/* {"resourceType":..,"id":..,"meta":{..},"text":{..}} opening; the caller
 * closes the object with sim_jw_end. `summary` is the narrative's one line. */
void sim_gen_begin(sim_gen *g, const char *summary);
/* key: {"reference":"Patient/<id>","display":"<name>"} */
void sim_gen_patient_ref(sim_gen *g, const char *key);
/* key: a Practitioner reference; usually one of the patient's team, about 1 in 5 anyone. */
void sim_gen_practitioner_ref(sim_gen *g, const char *key);
/* key: an Organization reference; payor picks from the payors, else providers. */
void sim_gen_organization_ref(sim_gen *g, const char *key, bool payor);
/* key: a Location reference (a ward or room when there are any). */
void sim_gen_location_ref(sim_gen *g, const char *key);
/* key: one of the patient's Encounters; writes nothing when the patient has none. */
void sim_gen_encounter_ref(sim_gen *g, const char *key);
/* key: one of the patient's RelatedPersons; returns false (nothing written) if none. */
bool sim_gen_related_ref(sim_gen *g, const char *key);
/* key: a reference to a resource on another server (when foreign_references is on). */
void sim_gen_foreign_ref(sim_gen *g, const char *key, const char *type);
/* key: {"coding":[{"system","code","display"}],"text":display} */
void sim_gen_cc(sim_jw *w, const char *key, const char *system, const char *code,
                const char *display);
/* key: "YYYY-MM-DDThh:mm:ss.000Z" */
void sim_gen_instant(sim_jw *w, const char *key, int64_t epoch);
/* key: "YYYY-MM-DD" */
void sim_gen_date(sim_jw *w, const char *key, int64_t epoch);
/* The attachment of a DocumentReference/DiagnosticReport: contentType, url
 * (absolute, this server), size, title, creation. */
void sim_gen_attachment(sim_gen *g, const char *key, const char *title);
/* DiagnosticReport.presentedForm: every form of its documents (2-3, Cerner's
 * XR- PDF, R- XML, TR- HTML). */
void sim_gen_presented_forms(sim_gen *g, const char *title);

#define SIM_DAY 86400LL

#endif
