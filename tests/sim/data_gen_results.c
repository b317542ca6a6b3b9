/* Per-patient generators: Observation, DiagnosticReport, DocumentReference,
 * Encounter. Shapes follow Cerner's R4 examples, trimmed to the fields an
 * extractor has to carry. */
#include "tests/sim/data_gen.h"

#include <stdio.h>

#define LOINC "http://loinc.org"
#define SNOMED "http://snomed.info/sct"
#define UCUM "http://unitsofmeasure.org"

typedef struct quantity_kind {
  const char *loinc, *display, *unit;
  int lo, hi;      /* value range, in 1/scale units */
  int scale;       /* 1, 10 or 100 */
  int ref_lo, ref_hi; /* reference range (labs), same units; 0/0 = none */
} quantity_kind;

static const quantity_kind vitals[] = {
    {"8867-4", "Heart rate", "/min", 50, 110, 1, 0, 0},
    {"8310-5", "Body temperature", "Cel", 3600, 3850, 100, 0, 0},
    {"9279-1", "Respiratory rate", "/min", 12, 24, 1, 0, 0},
    {"29463-7", "Body weight", "kg", 4000, 12000, 100, 0, 0},
    {"8302-2", "Body height", "cm", 1500, 1950, 10, 0, 0},
    {"59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 92, 100, 1, 0, 0},
};

static const quantity_kind lab_kinds[] = {
    {"2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 60, 200, 1, 70, 99},
    {"718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 100, 175, 10, 120, 160},
    {"2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 50, 160, 100, 60, 120},
    {"2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 130, 150, 1, 135, 145},
    {"2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 31, 55, 10, 35, 51},
};

/* v in 1/scale units as a decimal literal: 3712/100 -> "37.12". */
static void scaled(char out[32], int v, int scale) {
  if (scale == 100)
    snprintf(out, 32, "%d.%02d", v / 100, v % 100);
  else if (scale == 10)
    snprintf(out, 32, "%d.%d", v / 10, v % 10);
  else
    snprintf(out, 32, "%d", v);
}

static void quantity(sim_jw *w, const char *key, const char *value, const char *unit) {
  sim_jw_obj(w, key);
  sim_jw_raw(w, "value", value);
  sim_jw_str(w, "unit", unit);
  sim_jw_str(w, "system", UCUM);
  sim_jw_str(w, "code", unit);
  sim_jw_end(w);
}

static void category(sim_jw *w, const char *system, const char *code, const char *display) {
  sim_jw_arr(w, "category");
  sim_gen_cc(w, NULL, system, code, display);
  sim_jw_end_arr(w);
}

static void blood_pressure(sim_gen *g, sim_jw *w) {
  int sys = 100 + (int)sim_rng_below(&g->r, 60);
  int dia = 60 + (int)sim_rng_below(&g->r, 35);
  char a[32], b[32];
  scaled(a, sys, 1);
  scaled(b, dia, 1);
  sim_jw_arr(w, "component");
  sim_jw_obj(w, NULL);
  sim_gen_cc(w, "code", LOINC, "8480-6", "Systolic blood pressure");
  quantity(w, "valueQuantity", a, "mm[Hg]");
  sim_jw_end(w);
  sim_jw_obj(w, NULL);
  sim_gen_cc(w, "code", LOINC, "8462-4", "Diastolic blood pressure");
  quantity(w, "valueQuantity", b, "mm[Hg]");
  sim_jw_end(w);
  sim_jw_end_arr(w);
}

void sim_gen_observation(sim_gen *g) {
  sim_jw *w = &g->w;
  uint32_t kind = sim_rng_below(&g->r, 10); /* 0-5 vitals, 6 blood pressure, 7-9 labs */
  const quantity_kind *q = kind < 6   ? &vitals[sim_rng_below(&g->r, 6)]
                           : kind < 7 ? NULL
                                      : &lab_kinds[sim_rng_below(&g->r, 5)];
  bool lab = kind >= 7;
  int v = q ? q->lo + (int)sim_rng_below(&g->r, (uint32_t)(q->hi - q->lo + 1)) : 0;
  bool amended = sim_rng_below(&g->r, 10) == 0;
  uint32_t foreign_roll = sim_rng_below(&g->r, 6);
  char value[32], summary[160];
  scaled(value, v, q ? q->scale : 1);
  if (q)
    snprintf(summary, sizeof summary, "%s: %s %s", q->display, value, q->unit);
  else
    snprintf(summary, sizeof summary, "Blood pressure panel");

  sim_gen_begin(g, summary);
  sim_jw_str(w, "status", amended ? "amended" : "final");
  if (lab)
    category(w, "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory",
             "Laboratory");
  else
    category(w, "http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs",
             "Vital Signs");
  if (q)
    sim_gen_cc(w, "code", LOINC, q->loinc, q->display);
  else
    sim_gen_cc(w, "code", LOINC, "85354-9", "Blood pressure panel with all children optional");
  sim_gen_patient_ref(g, "subject");
  sim_gen_encounter_ref(g, "encounter");
  sim_gen_instant(w, "effectiveDateTime", g->when);
  sim_gen_instant(w, "issued", g->when + 600);
  sim_jw_arr(w, "performer");
  sim_gen_practitioner_ref(g, NULL);
  if (lab) sim_gen_organization_ref(g, NULL, false); /* the performing laboratory */
  if (g->p->knobs.foreign_references && foreign_roll == 0)
    sim_gen_foreign_ref(g, NULL, "Practitioner");
  sim_jw_end_arr(w);
  if (q) quantity(w, "valueQuantity", value, q->unit);
  if (!q) blood_pressure(g, w);
  if (lab && q->ref_hi) {
    const char *flag = v < q->ref_lo ? "L" : v > q->ref_hi ? "H" : "N";
    const char *flag_text = *flag == 'L' ? "Low" : *flag == 'H' ? "High" : "Normal";
    char lo[32], hi[32];
    sim_jw_arr(w, "interpretation");
    sim_gen_cc(w, NULL, "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
               flag, flag_text);
    sim_jw_end_arr(w);
    scaled(lo, q->ref_lo, q->scale);
    scaled(hi, q->ref_hi, q->scale);
    sim_jw_arr(w, "referenceRange");
    sim_jw_obj(w, NULL);
    quantity(w, "low", lo, q->unit);
    quantity(w, "high", hi, q->unit);
    sim_jw_end(w);
    sim_jw_end_arr(w);
  }
  sim_jw_end(w);
}

void sim_gen_diagnostic_report(sim_gen *g) {
  static const struct {
    const char *cat, *cat_display, *loinc, *display;
  } kinds[] = {
      {"RAD", "Radiology", "36643-5", "XR Chest 2 Views"},
      {"RAD", "Radiology", "24725-4", "CT Head WO contrast"},
      {"CUS", "Cardiac Ultrasound", "34552-0", "Cardiac 2D echo panel"},
      {"LAB", "Laboratory", "58410-2", "CBC panel - Blood by Automated count"},
      {"PAT", "Pathology", "60567-5", "Comprehensive pathology report panel"},
  };
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof kinds / sizeof *kinds));
  bool preliminary = sim_rng_below(&g->r, 12) == 0;
  sim_gen_begin(g, kinds[k].display);
  sim_jw_str(w, "status", preliminary ? "preliminary" : "final");
  category(w, "http://terminology.hl7.org/CodeSystem/v2-0074", kinds[k].cat, kinds[k].cat_display);
  sim_gen_cc(w, "code", LOINC, kinds[k].loinc, kinds[k].display);
  sim_gen_patient_ref(g, "subject");
  sim_gen_encounter_ref(g, "encounter");
  sim_gen_instant(w, "effectiveDateTime", g->when);
  sim_gen_instant(w, "issued", g->when + 3600);
  sim_jw_arr(w, "performer");
  sim_gen_practitioner_ref(g, NULL);
  sim_jw_end_arr(w);
  sim_jw_arr(w, "resultsInterpreter");
  sim_gen_practitioner_ref(g, NULL);
  sim_jw_end_arr(w);
  sim_gen_presented_forms(g, kinds[k].display);
  sim_jw_end(w);
}

void sim_gen_document_reference(sim_gen *g) {
  static const char *const types[][2] = {{"11506-3", "Progress note"},
                                         {"18842-5", "Discharge summary"},
                                         {"34117-2", "History and physical note"},
                                         {"11488-4", "Consult note"},
                                         {"28570-0", "Procedure note"}};
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof types / sizeof *types));
  sim_gen_begin(g, types[k][1]);
  sim_jw_arr(w, "identifier");
  sim_jw_obj(w, NULL);
  sim_jw_str(w, "system", "https://fhir.cerner.com/ceuuid");
  sim_jw_strf(w, "value", "CE87caf4b7-9397-4667-9897-702218017c9e-%s", g->id);
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_str(w, "status", "current");
  sim_jw_str(w, "docStatus", "final");
  sim_gen_cc(w, "type", LOINC, types[k][0], types[k][1]);
  category(w, "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
           "clinical-note", "Clinical Note");
  sim_gen_patient_ref(g, "subject");
  sim_gen_instant(w, "date", g->when + 1800);
  sim_jw_arr(w, "author");
  sim_gen_practitioner_ref(g, NULL);
  sim_jw_end_arr(w);
  sim_gen_practitioner_ref(g, "authenticator");
  sim_gen_organization_ref(g, "custodian", false);
  sim_jw_arr(w, "content");
  sim_jw_obj(w, NULL);
  sim_gen_attachment(g, "attachment", types[k][1]);
  sim_jw_obj(w, "format");
  sim_jw_str(w, "system", "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode");
  sim_jw_str(w, "code", "urn:ihe:iti:xds:2017:mimeTypeSufficient");
  sim_jw_str(w, "display", "mimeType Sufficient");
  sim_jw_end(w);
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_obj(w, "context");
  if (sim_pp_count(g->s, SIM_RT_ENCOUNTER, g->ordinal)) { /* no empty arrays in FHIR */
    sim_jw_arr(w, "encounter");
    sim_gen_encounter_ref(g, NULL);
    sim_jw_end_arr(w);
  }
  sim_jw_obj(w, "period");
  sim_gen_instant(w, "start", g->when);
  sim_gen_instant(w, "end", g->when + 1800);
  sim_jw_end(w);
  sim_jw_end(w);
  sim_jw_end(w);
}

void sim_gen_encounter(sim_gen *g) {
  static const struct {
    const char *code, *display, *type_code, *type_display;
    int hours;
  } classes[] = {
      {"AMB", "ambulatory", "185349003", "Encounter for check up", 1},
      {"AMB", "ambulatory", "185345009", "Encounter for symptom", 1},
      {"IMP", "inpatient encounter", "32485007", "Hospital admission", 72},
      {"EMER", "emergency", "50849002", "Emergency room admission", 6},
  };
  sim_jw *w = &g->w;
  uint32_t k = sim_rng_below(&g->r, (uint32_t)(sizeof classes / sizeof *classes));
  bool in_progress = sim_rng_below(&g->r, 12) == 0;
  uint32_t foreign_roll = sim_rng_below(&g->r, 6);
  sim_gen_begin(g, classes[k].type_display);
  sim_jw_arr(w, "identifier");
  sim_jw_obj(w, NULL);
  sim_jw_str(w, "use", "usual");
  sim_jw_obj(w, "type");
  sim_jw_str(w, "text", "FIN NBR");
  sim_jw_end(w);
  sim_jw_str(w, "system", "urn:oid:2.16.840.1.113883.3.13.6");
  sim_jw_strf(w, "value", "FIN%s", g->id);
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_str(w, "status", in_progress ? "in-progress" : "finished");
  sim_jw_obj(w, "class");
  sim_jw_str(w, "system", "http://terminology.hl7.org/CodeSystem/v3-ActCode");
  sim_jw_str(w, "code", classes[k].code);
  sim_jw_str(w, "display", classes[k].display);
  sim_jw_end(w);
  sim_jw_arr(w, "type");
  sim_gen_cc(w, NULL, SNOMED, classes[k].type_code, classes[k].type_display);
  sim_jw_end_arr(w);
  sim_gen_patient_ref(g, "subject");
  sim_jw_arr(w, "participant");
  sim_jw_obj(w, NULL);
  sim_jw_arr(w, "type");
  sim_gen_cc(w, NULL, "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "ATND",
             "attender");
  sim_jw_end_arr(w);
  sim_gen_practitioner_ref(g, "individual");
  sim_jw_end(w);
  if (g->p->knobs.foreign_references && foreign_roll == 0) {
    sim_jw_obj(w, NULL);
    sim_gen_foreign_ref(g, "individual", "Practitioner");
    sim_jw_end(w);
  }
  sim_jw_end_arr(w);
  sim_jw_obj(w, "period");
  sim_gen_instant(w, "start", g->when);
  if (!in_progress) sim_gen_instant(w, "end", g->when + classes[k].hours * 3600);
  sim_jw_end(w);
  sim_jw_arr(w, "location");
  sim_jw_obj(w, NULL);
  sim_gen_location_ref(g, "location");
  sim_jw_str(w, "status", in_progress ? "active" : "completed");
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_gen_organization_ref(g, "serviceProvider", false);
  sim_jw_end(w);
}
