/* Per-patient generators: MedicationRequest, ServiceRequest, Device,
 * Coverage, RelatedPerson. */
#include "tests/sim/data_gen.h"

#include <stdio.h>

#define SNOMED "http://snomed.info/sct"
#define RXNORM "http://www.nlm.nih.gov/research/umls/rxnorm"

void sim_gen_medication_request(sim_gen *g) {
  static const char *const meds[][3] = {
      {"197361", "amlodipine 5 MG Oral Tablet", "1 tablet by mouth once daily"},
      {"860975", "metformin hydrochloride 500 MG Oral Tablet", "1 tablet by mouth twice daily"},
      {"314076", "lisinopril 10 MG Oral Tablet", "1 tablet by mouth once daily"},
      {"617312", "atorvastatin 40 MG Oral Tablet", "1 tablet by mouth at bedtime"},
      {"310965", "ibuprofen 200 MG Oral Tablet", "2 tablets by mouth every 6 hours as needed"},
      {"308136", "amlodipine 2.5 MG Oral Tablet", "1 tablet by mouth once daily"},
  };
  static const char *const statuses[] = {"active", "active", "completed", "stopped"};
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof meds / sizeof *meds));
  const char *status = SIM_RNG_PICK(&g->r, statuses);
  /* About 1 in 4 carry the medication as a contained resource, referenced
   * as "#med1": nothing to fetch, but a naive extractor would try. */
  bool contained = sim_rng_below(&g->r, 4) == 0;
  uint32_t refills = sim_rng_below(&g->r, 6);
  sim_gen_begin(g, meds[k][1]);
  if (contained) {
    sim_jw_arr(w, "contained");
    sim_jw_obj(w, NULL);
    sim_jw_str(w, "resourceType", "Medication");
    sim_jw_str(w, "id", "med1");
    sim_gen_cc(w, "code", RXNORM, meds[k][0], meds[k][1]);
    sim_jw_end(w);
    sim_jw_end_arr(w);
  }
  sim_jw_str(w, "status", status);
  sim_jw_str(w, "intent", "order");
  sim_jw_arr(w, "category");
  sim_gen_cc(w, NULL, "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
             "community", "Community");
  sim_jw_end_arr(w);
  if (contained) {
    sim_jw_obj(w, "medicationReference");
    sim_jw_str(w, "reference", "#med1");
    sim_jw_str(w, "display", meds[k][1]);
    sim_jw_end(w);
  } else {
    sim_gen_cc(w, "medicationCodeableConcept", RXNORM, meds[k][0], meds[k][1]);
  }
  sim_gen_patient_ref(g, "subject");
  sim_gen_encounter_ref(g, "encounter");
  sim_gen_instant(w, "authoredOn", g->when);
  sim_gen_practitioner_ref(g, "requester");
  sim_gen_practitioner_ref(g, "recorder");
  sim_jw_arr(w, "dosageInstruction");
  sim_jw_obj(w, NULL);
  sim_jw_str(w, "text", meds[k][2]);
  sim_gen_cc(w, "route", SNOMED, "26643006", "Oral route");
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_obj(w, "dispenseRequest");
  sim_jw_int(w, "numberOfRepeatsAllowed", refills);
  sim_jw_obj(w, "quantity");
  sim_jw_int(w, "value", 30);
  sim_jw_str(w, "unit", "tablet");
  sim_jw_end(w);
  sim_jw_end(w);
  sim_jw_end(w);
}

void sim_gen_service_request(sim_gen *g) {
  static const struct {
    const char *cat, *cat_display, *system, *code, *display;
  } orders[] = {
      {"108252007", "Laboratory procedure", "http://loinc.org", "24323-8",
       "Comprehensive metabolic panel"},
      {"108252007", "Laboratory procedure", "http://loinc.org", "4548-4", "Hemoglobin A1c"},
      {"363679005", "Imaging", "http://loinc.org", "36643-5", "XR Chest 2 Views"},
      {"409063005", "Counseling", SNOMED, "410177006", "Dietary counseling"},
      {"387713003", "Surgical procedure", SNOMED, "73761001", "Colonoscopy"},
  };
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof orders / sizeof *orders));
  bool done = sim_rng_below(&g->r, 2) == 0;
  bool urgent = sim_rng_below(&g->r, 8) == 0;
  sim_gen_begin(g, orders[k].display);
  sim_jw_str(w, "status", done ? "completed" : "active");
  sim_jw_str(w, "intent", "order");
  sim_jw_arr(w, "category");
  sim_gen_cc(w, NULL, SNOMED, orders[k].cat, orders[k].cat_display);
  sim_jw_end_arr(w);
  sim_jw_str(w, "priority", urgent ? "urgent" : "routine");
  sim_gen_cc(w, "code", orders[k].system, orders[k].code, orders[k].display);
  sim_gen_patient_ref(g, "subject");
  sim_gen_encounter_ref(g, "encounter");
  sim_gen_instant(w, "authoredOn", g->when);
  sim_gen_practitioner_ref(g, "requester");
  sim_jw_arr(w, "performer");
  sim_gen_organization_ref(g, NULL, false);
  sim_jw_end_arr(w);
  sim_jw_end(w);
}

void sim_gen_device(sim_gen *g) {
  static const char *const devices[][3] = {
      {"14106009", "Cardiac pacemaker", "Medtronic"},
      {"69805005", "Insulin pump", "Tandem Diabetes Care"},
      {"304120007", "Total knee replacement prosthesis", "Zimmer Biomet"},
      {"6012004", "Hearing aid", "Phonak"},
  };
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof devices / sizeof *devices));
  uint32_t serial = sim_rng_below(&g->r, 100000000);
  sim_gen_begin(g, devices[k][1]);
  sim_jw_arr(w, "udiCarrier");
  sim_jw_obj(w, NULL);
  sim_jw_strf(w, "deviceIdentifier", "0%013u", serial);
  sim_jw_strf(w, "carrierHRF", "(01)0%013u(21)SN%08u", serial, serial);
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_str(w, "status", "active");
  sim_jw_str(w, "manufacturer", devices[k][2]);
  sim_jw_strf(w, "serialNumber", "SN%08u", serial);
  sim_gen_cc(w, "type", SNOMED, devices[k][0], devices[k][1]);
  sim_gen_patient_ref(g, "patient");
  sim_jw_end(w);
}

void sim_gen_coverage(sim_gen *g) {
  static const char *const relationships[][2] = {
      {"self", "Self"}, {"spouse", "Spouse"}, {"child", "Child"}};
  sim_jw *w = &g->w;
  uint32_t rel = sim_rng_below(&g->r, 3);
  uint32_t member = sim_rng_below(&g->r, 100000000);
  sim_gen_begin(g, "Health insurance plan policy");
  sim_jw_str(w, "status", "active");
  sim_gen_cc(w, "type", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "HIP",
             "health insurance plan policy");
  /* The policy holder is the patient ("self") or a RelatedPerson. */
  if (rel == 0 || !sim_gen_related_ref(g, "subscriber")) {
    rel = 0;
    sim_gen_patient_ref(g, "subscriber");
  }
  sim_jw_strf(w, "subscriberId", "M%08u", member);
  sim_gen_patient_ref(g, "beneficiary");
  sim_gen_cc(w, "relationship", "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
             relationships[rel][0], relationships[rel][1]);
  sim_jw_obj(w, "period");
  sim_gen_date(w, "start", g->when - 365 * SIM_DAY);
  sim_jw_end(w);
  sim_jw_arr(w, "payor");
  sim_gen_organization_ref(g, NULL, true);
  sim_jw_end_arr(w);
  sim_jw_end(w);
}

void sim_gen_related_person(sim_gen *g) {
  static const char *const relations[][2] = {{"MTH", "mother"}, {"FTH", "father"},
                                             {"SPS", "spouse"}, {"CHILD", "child"},
                                             {"SIB", "sibling"}, {"FRND", "friend"}};
  static const char *const given_f[] = {"Anna", "Beatrice", "Clara", "Diane", "Esther"};
  static const char *const given_m[] = {"Arthur", "Bruno", "Cyrus", "Dennis", "Edgar"};
  static const char *const families[] = {"Smith", "Garcia", "Nguyen", "Okafor", "Kowalski"};
  sim_jw *w = &g->w;
  uint32_t rel = sim_rng_below(&g->r, (uint32_t)(sizeof relations / sizeof *relations));
  bool female = sim_rng_below(&g->r, 2) == 0;
  const char *given = female ? SIM_RNG_PICK(&g->r, given_f) : SIM_RNG_PICK(&g->r, given_m);
  const char *family = SIM_RNG_PICK(&g->r, families);
  uint32_t phone = sim_rng_below(&g->r, 10000);
  char summary[128];
  snprintf(summary, sizeof summary, "%s, %s (%s)", family, given, relations[rel][1]);
  sim_gen_begin(g, summary);
  sim_jw_bool(w, "active", true);
  sim_gen_patient_ref(g, "patient");
  sim_jw_arr(w, "relationship");
  sim_gen_cc(w, NULL, "http://terminology.hl7.org/CodeSystem/v3-RoleCode", relations[rel][0],
             relations[rel][1]);
  sim_jw_end_arr(w);
  sim_jw_arr(w, "name");
  sim_jw_obj(w, NULL);
  sim_jw_str(w, "use", "official");
  sim_jw_strf(w, "text", "%s, %s", family, given);
  sim_jw_str(w, "family", family);
  sim_jw_arr(w, "given");
  sim_jw_str(w, NULL, given);
  sim_jw_end_arr(w);
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_arr(w, "telecom");
  sim_jw_obj(w, NULL);
  sim_jw_str(w, "system", "phone");
  sim_jw_strf(w, "value", "816555%04u", phone);
  sim_jw_str(w, "use", "home");
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_str(w, "gender", female ? "female" : "male");
  sim_jw_end(w);
}
