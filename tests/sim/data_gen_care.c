/* Per-patient generators: AllergyIntolerance, CarePlan, CareTeam, Condition,
 * Goal, Immunization, Procedure. */
#include "tests/sim/data_gen.h"

#include <string.h>

#include <stdio.h>

#define SNOMED "http://snomed.info/sct"

void sim_gen_allergy_intolerance(sim_gen *g) {
  static const struct {
    const char *category, *system, *code, *display;
  } substances[] = {
      {"medication", "http://www.nlm.nih.gov/research/umls/rxnorm", "7980", "Penicillin G"},
      {"medication", "http://www.nlm.nih.gov/research/umls/rxnorm", "10831", "Sulfamethoxazole"},
      {"food", SNOMED, "256349002", "Peanut"},
      {"food", SNOMED, "227037002", "Fish (substance)"},
      {"environment", SNOMED, "111088007", "Latex"},
      {"environment", SNOMED, "256259004", "Pollen"},
  };
  static const char *const reactions[][2] = {
      {"247472004", "Hives"}, {"271807003", "Skin rash"}, {"39579001", "Anaphylaxis"}};
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof substances / sizeof *substances));
  uint32_t react = sim_rng_below(&g->r, 3);
  bool resolved = sim_rng_below(&g->r, 8) == 0;
  char summary[128];
  snprintf(summary, sizeof summary, "Allergy to %s", substances[k].display);
  sim_gen_begin(g, summary);
  sim_gen_cc(w, "clinicalStatus",
             "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            resolved ? "resolved" : "active", resolved ? "Resolved" : "Active");
  sim_gen_cc(w, "verificationStatus",
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed",
            "Confirmed");
  sim_jw_str(w, "type", "allergy");
  sim_jw_arr(w, "category");
  sim_jw_str(w, NULL, substances[k].category);
  sim_jw_end_arr(w);
  sim_jw_str(w, "criticality", react == 2 ? "high" : "low");
  sim_gen_cc(w, "code", substances[k].system, substances[k].code, substances[k].display);
  sim_gen_patient_ref(g, "patient");
  sim_gen_encounter_ref(g, "encounter");
  sim_gen_instant(w, "onsetDateTime", g->when - 400 * SIM_DAY);
  sim_gen_instant(w, "recordedDate", g->when);
  sim_gen_practitioner_ref(g, "recorder");
  sim_jw_arr(w, "reaction");
  sim_jw_obj(w, NULL);
  sim_jw_arr(w, "manifestation");
  sim_gen_cc(w, NULL, SNOMED, reactions[react][0], reactions[react][1]);
  sim_jw_end_arr(w);
  sim_jw_str(w, "severity", react == 2 ? "severe" : "mild");
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_end(w);
}

void sim_gen_care_plan(sim_gen *g) {
  static const char *const plans[] = {"Diabetes self-management plan", "Hypertension follow-up",
                                      "Weight management plan", "Post-operative care plan"};
  sim_jw *w = &g->w;
  const char *plan = SIM_RNG_PICK(&g->r, plans);
  bool completed = sim_rng_below(&g->r, 4) == 0;
  sim_gen_begin(g, plan);
  sim_jw_str(w, "status", completed ? "completed" : "active");
  sim_jw_str(w, "intent", "plan");
  sim_jw_arr(w, "category");
  sim_gen_cc(w, NULL, "http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "assess-plan",
             "Assessment and Plan of Treatment");
  sim_jw_end_arr(w);
  sim_jw_str(w, "title", plan);
  sim_gen_patient_ref(g, "subject");
  sim_gen_encounter_ref(g, "encounter");
  sim_jw_obj(w, "period");
  sim_gen_instant(w, "start", g->when);
  if (completed) sim_gen_instant(w, "end", g->when + 90 * SIM_DAY);
  sim_jw_end(w);
  sim_gen_practitioner_ref(g, "author");
  sim_jw_end(w);
}

static void participant(sim_gen *g, const char *role_code, const char *role_display,
                        bool related) {
  sim_jw *w = &g->w;
  sim_jw_obj(w, NULL);
  sim_jw_arr(w, "role");
  sim_gen_cc(w, NULL, SNOMED, role_code, role_display);
  sim_jw_end_arr(w);
  if (!related || !sim_gen_related_ref(g, "member")) sim_gen_practitioner_ref(g, "member");
  sim_jw_end(w);
}

void sim_gen_care_team(sim_gen *g) {
  sim_jw *w = &g->w;
  /* Cerner: CARE_TEAM-... ids are encounter teams, LIFETIME_PROVIDER-...
   * longitudinal ones (care-team.md). */
  bool encounter = strncmp(g->id, "CARE_TEAM-", 10) == 0;
  sim_gen_begin(g, encounter ? "Encounter care team" : "Longitudinal care team");
  sim_jw_str(w, "status", "active");
  sim_jw_arr(w, "category");
  if (encounter)
    sim_gen_cc(w, NULL, "http://loinc.org", "LA27975-4", "Encounter-focused care team");
  else
    sim_gen_cc(w, NULL, "http://loinc.org", "LA27976-2",
               "Longitudinal care-coordination focused care team");
  sim_jw_end_arr(w);
  sim_jw_str(w, "name", encounter ? "Inpatient care team" : "Primary care team");
  sim_gen_patient_ref(g, "subject");
  sim_gen_encounter_ref(g, "encounter");
  sim_jw_arr(w, "participant");
  participant(g, "446050000", "Primary care physician", false);
  participant(g, "224535009", "Registered nurse", false);
  participant(g, "133932002", "Caregiver", true);
  sim_jw_end_arr(w);
  sim_jw_arr(w, "managingOrganization");
  sim_gen_organization_ref(g, NULL, false);
  sim_jw_end_arr(w);
  sim_jw_end(w);
}

void sim_gen_condition(sim_gen *g) {
  static const char *const conditions[][3] = {
      {"38341003", "I10", "Essential hypertension"},
      {"44054006", "E11.9", "Type 2 diabetes mellitus"},
      {"195967001", "J45.909", "Asthma"},
      {"55822004", "E78.5", "Hyperlipidemia"},
      {"35489007", "F32.9", "Depressive disorder"},
      {"235595009", "K21.9", "Gastroesophageal reflux disease"},
      {"396275006", "M19.90", "Osteoarthritis"},
      {"37796009", "G43.909", "Migraine"},
  };
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof conditions / sizeof *conditions));
  bool resolved = sim_rng_below(&g->r, 5) == 0;
  bool problem_list = sim_rng_below(&g->r, 2) == 0;
  bool noted = sim_rng_below(&g->r, 3) == 0;
  sim_gen_begin(g, conditions[k][2]);
  sim_gen_cc(w, "clinicalStatus", "http://terminology.hl7.org/CodeSystem/condition-clinical",
            resolved ? "resolved" : "active", resolved ? "Resolved" : "Active");
  sim_gen_cc(w, "verificationStatus", "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "confirmed", "Confirmed");
  sim_jw_arr(w, "category");
  if (problem_list)
    sim_gen_cc(w, NULL, "http://terminology.hl7.org/CodeSystem/condition-category",
               "problem-list-item", "Problem List Item");
  else
    sim_gen_cc(w, NULL, "http://terminology.hl7.org/CodeSystem/condition-category",
               "encounter-diagnosis", "Encounter Diagnosis");
  sim_jw_end_arr(w);
  sim_jw_obj(w, "code");
  sim_jw_arr(w, "coding");
  sim_jw_obj(w, NULL);
  sim_jw_str(w, "system", SNOMED);
  sim_jw_str(w, "code", conditions[k][0]);
  sim_jw_str(w, "display", conditions[k][2]);
  sim_jw_end(w);
  sim_jw_obj(w, NULL);
  sim_jw_str(w, "system", "http://hl7.org/fhir/sid/icd-10-cm");
  sim_jw_str(w, "code", conditions[k][1]);
  sim_jw_str(w, "display", conditions[k][2]);
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_str(w, "text", conditions[k][2]);
  sim_jw_end(w);
  sim_gen_patient_ref(g, "subject");
  sim_gen_encounter_ref(g, "encounter");
  sim_gen_instant(w, "onsetDateTime", g->when - 30 * SIM_DAY);
  if (resolved) sim_gen_instant(w, "abatementDateTime", g->when + 60 * SIM_DAY);
  sim_gen_instant(w, "recordedDate", g->when);
  sim_gen_practitioner_ref(g, "recorder");
  sim_gen_practitioner_ref(g, "asserter");
  if (noted) {
    sim_jw_arr(w, "note");
    sim_jw_obj(w, NULL);
    sim_gen_practitioner_ref(g, "authorReference");
    sim_gen_instant(w, "time", g->when);
    sim_jw_str(w, "text", "Discussed with patient; continue current management.");
    sim_jw_end(w);
    sim_jw_end_arr(w);
  }
  sim_jw_end(w);
}

void sim_gen_goal(sim_gen *g) {
  static const char *const goals[] = {"HbA1c below 7%", "Walk 30 minutes daily",
                                      "Lose 5 kg in 6 months", "Blood pressure below 130/80"};
  sim_jw *w = &g->w;
  const char *goal = SIM_RNG_PICK(&g->r, goals);
  uint32_t who = sim_rng_below(&g->r, 3); /* 0 patient, 1 practitioner, 2 related person */
  bool achieved = sim_rng_below(&g->r, 4) == 0;
  sim_gen_begin(g, goal);
  sim_jw_str(w, "lifecycleStatus", achieved ? "completed" : "active");
  if (achieved)
    sim_gen_cc(w, "achievementStatus", "http://terminology.hl7.org/CodeSystem/goal-achievement",
               "achieved", "Achieved");
  sim_jw_obj(w, "description");
  sim_jw_str(w, "text", goal);
  sim_jw_end(w);
  sim_gen_patient_ref(g, "subject");
  sim_gen_date(w, "startDate", g->when);
  sim_jw_arr(w, "target");
  sim_jw_obj(w, NULL);
  sim_gen_date(w, "dueDate", g->when + 180 * SIM_DAY);
  sim_jw_end(w);
  sim_jw_end_arr(w);
  if (who == 0)
    sim_gen_patient_ref(g, "expressedBy");
  else if (who == 1 || !sim_gen_related_ref(g, "expressedBy"))
    sim_gen_practitioner_ref(g, "expressedBy");
  sim_jw_end(w);
}

void sim_gen_immunization(sim_gen *g) {
  static const char *const vaccines[][2] = {
      {"208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"},
      {"140", "Influenza, seasonal, injectable, preservative free"},
      {"115", "Tdap"},
      {"33", "pneumococcal polysaccharide vaccine, 23 valent"},
      {"43", "Hep B, adult"},
  };
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof vaccines / sizeof *vaccines));
  uint32_t lot = sim_rng_below(&g->r, 900000);
  sim_gen_begin(g, vaccines[k][1]);
  sim_jw_str(w, "status", "completed");
  sim_gen_cc(w, "vaccineCode", "http://hl7.org/fhir/sid/cvx", vaccines[k][0], vaccines[k][1]);
  sim_gen_patient_ref(g, "patient");
  sim_gen_encounter_ref(g, "encounter");
  sim_gen_instant(w, "occurrenceDateTime", g->when);
  sim_gen_instant(w, "recorded", g->when + 300);
  sim_jw_bool(w, "primarySource", true);
  sim_gen_location_ref(g, "location");
  sim_jw_strf(w, "lotNumber", "L%06u", lot + 100000);
  sim_jw_arr(w, "performer");
  sim_jw_obj(w, NULL);
  sim_gen_cc(w, "function", "http://terminology.hl7.org/CodeSystem/v2-0443", "AP",
             "Administering Provider");
  sim_gen_practitioner_ref(g, "actor");
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_end(w);
}

void sim_gen_procedure(sim_gen *g) {
  static const char *const procedures[][2] = {
      {"80146002", "Appendectomy"},           {"73761001", "Colonoscopy"},
      {"232717009", "Coronary artery bypass"}, {"22523008", "Vasectomy"},
      {"387607004", "Construction of diverting colostomy"},
      {"268425006", "Pelvis X-ray"},
  };
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof procedures / sizeof *procedures));
  sim_gen_begin(g, procedures[k][1]);
  sim_jw_str(w, "status", "completed");
  sim_gen_cc(w, "code", SNOMED, procedures[k][0], procedures[k][1]);
  sim_gen_patient_ref(g, "subject");
  sim_gen_encounter_ref(g, "encounter");
  sim_gen_instant(w, "performedDateTime", g->when);
  sim_gen_practitioner_ref(g, "recorder");
  sim_jw_arr(w, "performer");
  sim_jw_obj(w, NULL);
  sim_gen_practitioner_ref(g, "actor");
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_gen_location_ref(g, "location");
  sim_jw_end(w);
}
