#include "worker/model/resources.h"

#include "common/url.h"


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const fx_type_names[FX_NTYPES] = {
    "Account", "ActivityDefinition", "AdverseEvent", "AllergyIntolerance", "Appointment",
    "AppointmentResponse", "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct",
    "BodyStructure", "CapabilityStatement", "CarePlan", "CareTeam", "CatalogEntry", "ChargeItem",
    "ChargeItemDefinition", "Claim", "ClaimResponse", "ClinicalImpression", "CodeSystem",
    "Communication", "CommunicationRequest", "CompartmentDefinition", "Composition", "ConceptMap",
    "Condition", "Consent", "Contract", "Coverage", "CoverageEligibilityRequest",
    "CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric",
    "DeviceRequest", "DeviceUseStatement", "DiagnosticReport", "DocumentManifest",
    "DocumentReference", "EffectEvidenceSynthesis", "Encounter", "Endpoint", "EnrollmentRequest",
    "EnrollmentResponse", "EpisodeOfCare", "EventDefinition", "Evidence", "EvidenceVariable",
    "ExampleScenario", "ExplanationOfBenefit", "FamilyMemberHistory", "Flag", "Goal",
    "GraphDefinition", "Group", "GuidanceResponse", "HealthcareService", "ImagingStudy",
    "Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation", "ImplementationGuide",
    "InsurancePlan", "Invoice", "Library", "Linkage", "List", "Location", "Measure",
    "MeasureReport", "Media", "Medication", "MedicationAdministration", "MedicationDispense",
    "MedicationKnowledge", "MedicationRequest", "MedicationStatement", "MedicinalProduct",
    "MedicinalProductAuthorization", "MedicinalProductContraindication",
    "MedicinalProductIndication", "MedicinalProductIngredient", "MedicinalProductInteraction",
    "MedicinalProductManufactured", "MedicinalProductPackaged", "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect", "MessageDefinition", "MessageHeader", "MolecularSequence",
    "NamingSystem", "NutritionOrder", "Observation", "ObservationDefinition",
    "OperationDefinition", "Organization", "OrganizationAffiliation", "Patient", "PaymentNotice",
    "PaymentReconciliation", "Person", "PlanDefinition", "Practitioner", "PractitionerRole",
    "Procedure", "Provenance", "Questionnaire", "QuestionnaireResponse", "RelatedPerson",
    "RequestGroup", "ResearchDefinition", "ResearchElementDefinition", "ResearchStudy",
    "ResearchSubject", "RiskAssessment", "RiskEvidenceSynthesis", "Schedule", "SearchParameter",
    "ServiceRequest", "Slot", "Specimen", "SpecimenDefinition", "StructureDefinition",
    "StructureMap", "Subscription", "Substance", "SubstanceNucleicAcid", "SubstancePolymer",
    "SubstanceProtein", "SubstanceReferenceInformation", "SubstanceSourceMaterial",
    "SubstanceSpecification", "SupplyDelivery", "SupplyRequest", "Task", "TerminologyCapabilities",
    "TestReport", "TestScript", "ValueSet", "VerificationResult", "VisionPrescription",
};

int fx_resource_index(const char *type) {
  if (!type) return -1;
  int lo = 0, hi = FX_NTYPES - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, c = strcmp(type, fx_type_names[mid]);
    if (c == 0) return mid;
    if (c < 0) hi = mid - 1;
    else lo = mid + 1;
  }
  return -1;
}

int fx_resource_type_known(const char *type) { return fx_resource_index(type) >= 0; }

int fx_types_join(fx_types s, const char *sep, char *out, size_t size) {
  if (size) *out = '\0';
  size_t used = 0, sl = strlen(sep);
  for (int i = fx_types_next(s, 0); i >= 0; i = fx_types_next(s, i + 1)) {
    size_t n = strlen(fx_type_names[i]) + (used ? sl : 0);
    if (used + n >= size) {
      if (size) *out = '\0';
      return -1;
    }
    snprintf(out + used, size - used, "%s%s", used ? sep : "", fx_type_names[i]);
    used += n;
  }
  return (int)used;
}

void fx_scope_for(const char *type, int smart_version, char *out, size_t size) {
  snprintf(out, size, "system/%s.%s", type, smart_version == FX_SMART_V2 ? "rs" : "read");
}

static int id_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

const char *fx_fhir_id_problem(const char *s, size_t n, char *why, size_t size) {
  if (n == 0) {
    snprintf(why, size, "is empty");
    return why;
  }
  if (n > FX_FHIR_ID_MAX) {
    snprintf(why, size, "is %zu bytes long (at most %d)", n, FX_FHIR_ID_MAX);
    return why;
  }
  size_t dots = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!id_char(c)) {
      /* One character says what is wrong without saying what the id is. */
      if (c > 0x20 && c < 0x7f)
        snprintf(why, size, "contains '%c' at byte %zu of %zu", c, i + 1, n);
      else
        snprintf(why, size, "contains byte 0x%02x at byte %zu of %zu", c, i + 1, n);
      return why;
    }
    dots += c == '.';
  }
  if (dots == n && n <= 2) {
    snprintf(why, size, "is only dots (a URL path would resolve it to another resource)");
    return why;
  }
  return NULL;
}

fx_token_scope fx_tenant_token_scope(const fx_tenant_conf *t, int own_export) {
  fx_token_scope s = {.base = t->fhir_base,
                      .prefixes = t->token_url_prefixes.v,
                      .n_prefixes = t->token_url_prefixes.n,
                      .own_export = own_export};
  return s;
}

int fx_resource_type_name_ok(const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n < 2 || n > 64 || name[0] < 'A' || name[0] > 'Z') return 0;
  for (size_t i = 1; i < n; i++)
    if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z'))) return 0;
  return 1;
}

int fx_fhir_id_ok(const char *s, size_t n) {
  char why[8];
  return fx_fhir_id_problem(s, n, why, sizeof why) == NULL;
}

static int type_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > FX_TYPE_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z'))) return 0;
  return 1;
}

const char *fx_resource_key_problem(const char *type, const char *id, char *why, size_t size) {
  char detail[96];
  if (!type) {
    snprintf(why, size, "has no resourceType");
  } else if (!type_name_ok(type)) {
    snprintf(why, size, "has a resourceType that is not a FHIR type name (1..%d letters)",
             FX_TYPE_NAME_MAX);
  } else if (!id) {
    snprintf(why, size, "has no id");
  } else if (fx_fhir_id_problem(id, strlen(id), detail, sizeof detail)) {
    snprintf(why, size,
             "has an id that breaks fhirx's id rule (1..%d of A-Z a-z 0-9 . _ ~ -): %s",
             FX_FHIR_ID_MAX, detail);
  } else {
    return NULL;
  }
  return why;
}

char *fx_result_key(const char *tenant, const char *type, const char *id) {
  size_t a = strlen(tenant), b = strlen(type), c = strlen(id);
  char *key = malloc(a + b + c + 3);
  if (!key) return NULL;
  memcpy(key, tenant, a);
  key[a] = '/';
  memcpy(key + a + 1, type, b);
  key[a + 1 + b] = '/';
  memcpy(key + a + b + 2, id, c);
  key[a + b + c + 2] = '\0';
  return key;
}

fx_ref_kind fx_ref_parse(const char *ref, const char *base, char *key, size_t size,
                         int *type_index) {
  if (!ref || !*ref || ref[0] == '#') return FX_REF_NONE;
  const char *rel = ref;
  if (strstr(ref, "://")) {
    /* fx_url_within refuses a URL or base without "scheme://" and a host
     * (issue 13: "https:/h" is a URL to curl), so both have "://" below;
     * checked again so a future change cannot bring the NULL back. */
    const char *rs = strstr(ref, "://"), *bs = base ? strstr(base, "://") : NULL;
    if (!rs || !bs || !fx_url_within(ref, base)) return FX_REF_FOREIGN;
    /* Same origin and path prefix: what follows the base's path is Type/id. */
    const char *path = strchr(rs + 3, '/');
    const char *bpath = strchr(bs + 3, '/');
    size_t bl = bpath ? strlen(bpath) : 0;
    if (!path || strncmp(path, bpath ? bpath : "", bl) != 0) return FX_REF_NONE;
    rel = path + bl;
    while (*rel == '/') rel++;
  }
  const char *slash = strchr(rel, '/');
  if (!slash) return FX_REF_NONE;
  char type[40];
  size_t tl = (size_t)(slash - rel);
  if (tl == 0 || tl >= sizeof type) return FX_REF_NONE;
  memcpy(type, rel, tl);
  type[tl] = '\0';
  int idx = fx_resource_index(type);
  const char *id = slash + 1;
  size_t il = strcspn(id, "/?#");
  if (idx < 0) return FX_REF_NONE;
  *type_index = idx;
  if (!fx_fhir_id_ok(id, il)) return FX_REF_INVALID;
  if (tl + 1 + il + 1 > size) return FX_REF_NONE;
  memcpy(key, type, tl);
  key[tl] = '/';
  memcpy(key + tl + 1, id, il);
  key[tl + 1 + il] = '\0';
  return FX_REF_LOCAL;
}
