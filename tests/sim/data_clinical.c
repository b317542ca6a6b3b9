/* Per-patient resources: ids, counts, meta.lastUpdated (touches included),
 * and the helpers the generators in data_gen_*.c share.
 *
 * Nothing is stored. A resource is identified by (type, patient ordinal,
 * index) and written on demand from its own random stream, so the ids of a
 * patient's resources are computable without generating them:
 *
 *   RelatedPerson: "<person id>-<patient id>", Cerner's shape
 *                  (related-person.md: 12724066-12724068, the person first)
 *   CareTeam:      "CARE_TEAM-<patient id>-<n>-<n>-<n>-0-<index>" or
 *                  "LIFETIME_PROVIDER-<patient id>-0-<n>-0-0-<index>", Cerner's
 *                  shapes with '_' (care-team.md: CARE_TEAM-119078440-34768489-
 *                  17490349-4048128-0-22554767, LIFETIME_PROVIDER-4169494-0-
 *                  3038500-0-0-0)
 *   the others:    code * 10^11 + ordinal * 10^4 + index, e.g. Observation
 *                  2300000010007 is index 7 of patient ordinal 1 (20000001).
 *
 * The numbers <n> and the person id derive from (ordinal, index) by a hash,
 * so an id is computed without generating the resource; resolving one parses
 * the patient and the index and compares with the id computed from them. 
 *
 * The first draws of every resource's stream are always lastUpdated, then
 * versionId, then the clinical time, so a search can filter on lastUpdated
 * with one draw instead of writing the resource. */
#include "tests/sim/data_gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ID_TYPE_FACTOR 100000000000ULL /* 10^11 */
/* Generated lastUpdated values fall in [SIM_DATA_EPOCH, SIM_DATA_EPOCH + 1 year). */
#define UPDATED_SPAN_MS (365LL * SIM_DAY * 1000)
/* The clinical time is up to two years before the generated lastUpdated. */
#define CLINICAL_SPAN_S (2 * 365 * SIM_DAY)

static const unsigned id_codes[SIM_RT_COUNT] = {
    [SIM_RT_ALLERGY_INTOLERANCE] = 11, [SIM_RT_CARE_PLAN] = 12,
    [SIM_RT_CARE_TEAM] = 13,           [SIM_RT_CONDITION] = 14,
    [SIM_RT_COVERAGE] = 15,            [SIM_RT_DEVICE] = 16,
    [SIM_RT_DIAGNOSTIC_REPORT] = 17,   [SIM_RT_DOCUMENT_REFERENCE] = 18,
    [SIM_RT_ENCOUNTER] = 19,           [SIM_RT_GOAL] = 20,
    [SIM_RT_IMMUNIZATION] = 21,        [SIM_RT_MEDICATION_REQUEST] = 22,
    [SIM_RT_OBSERVATION] = 23,         [SIM_RT_PROCEDURE] = 24,
    [SIM_RT_SERVICE_REQUEST] = 26,
};

static const sim_gen_fn generators[SIM_RT_COUNT] = {
    [SIM_RT_ALLERGY_INTOLERANCE] = sim_gen_allergy_intolerance,
    [SIM_RT_CARE_PLAN] = sim_gen_care_plan,
    [SIM_RT_CARE_TEAM] = sim_gen_care_team,
    [SIM_RT_CONDITION] = sim_gen_condition,
    [SIM_RT_COVERAGE] = sim_gen_coverage,
    [SIM_RT_DEVICE] = sim_gen_device,
    [SIM_RT_DIAGNOSTIC_REPORT] = sim_gen_diagnostic_report,
    [SIM_RT_DOCUMENT_REFERENCE] = sim_gen_document_reference,
    [SIM_RT_ENCOUNTER] = sim_gen_encounter,
    [SIM_RT_GOAL] = sim_gen_goal,
    [SIM_RT_IMMUNIZATION] = sim_gen_immunization,
    [SIM_RT_MEDICATION_REQUEST] = sim_gen_medication_request,
    [SIM_RT_OBSERVATION] = sim_gen_observation,
    [SIM_RT_PROCEDURE] = sim_gen_procedure,
    [SIM_RT_RELATED_PERSON] = sim_gen_related_person,
    [SIM_RT_SERVICE_REQUEST] = sim_gen_service_request,
};

static uint32_t ordinal_of(uint64_t handle) { return (uint32_t)(handle / SIM_PP_STRIDE); }
static uint32_t index_of(uint64_t handle) { return (uint32_t)(handle % SIM_PP_STRIDE); }

size_t sim_pp_count(const sim_store *s, sim_rtype t, uint32_t ordinal) {
  if (!sim_rtype_per_patient(t)) return 0;
  unsigned base = s->p.knobs.per_patient[t];
  if (!s->p.knobs.per_patient_vary || base == 0) return base;
  sim_rng r;
  sim_rng_init_domain(&r, &s->p, SIM_DOMAIN_PP_COUNT, (uint64_t)ordinal * 64 + (uint64_t)t);
  uint32_t n = sim_rng_below(&r, 2 * base + 1);
  return n > SIM_PP_MAX ? SIM_PP_MAX : n;
}

/* ---- ids ---- */

static uint64_t id_hash(uint64_t x) { /* splitmix64's finalizer */
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

void sim_pp_id(const sim_store *s, sim_rtype t, uint64_t handle, char out[64]) {
  if (t == SIM_RT_RELATED_PERSON || t == SIM_RT_CARE_TEAM) {
    const sim_resource *pat = sim_store_patient(s, ordinal_of(handle));
    const char *pid = pat ? pat->id : "0";
    uint64_t h = id_hash(handle ^ ((uint64_t)t << 56));
    unsigned index = index_of(handle);
    typedef unsigned long long ull;
    if (t == SIM_RT_RELATED_PERSON)
      snprintf(out, 64, "%llu-%s", (ull)(40000000 + (h % 5000) * SIM_PP_STRIDE + index), pid);
    else if (h & 1)
      snprintf(out, 64, "LIFETIME_PROVIDER-%s-0-%llu-0-0-%u", pid,
               (ull)(3000000 + (h >> 1) % 1000000), index);
    else
      snprintf(out, 64, "CARE_TEAM-%s-%llu-%llu-%llu-0-%u", pid,
               (ull)(30000000 + (h >> 1) % 10000000), (ull)(10000000 + (h >> 25) % 10000000),
               (ull)(4000000 + (h >> 49) % 1000000), index);
    return;
  }
  snprintf(out, 64, "%llu",
           (unsigned long long)(id_codes[t] * ID_TYPE_FACTOR + (uint64_t)ordinal_of(handle) *
                                                                  SIM_PP_STRIDE +
                                index_of(handle)));
}

static bool parse_u64(const char *s, size_t len, uint64_t *out) {
  if (len == 0 || len > 18) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = v;
  return true;
}

bool sim_pp_resolve(const sim_store *s, sim_rtype t, const char *id, uint64_t *handle) {
  uint32_t ordinal;
  uint64_t index;
  if (t == SIM_RT_RELATED_PERSON || t == SIM_RT_CARE_TEAM) {
    /* The patient and the index, then the id computed from them must match:
     * every resource has exactly one id. */
    char patient[64];
    const char *p = id, *end;
    if (t == SIM_RT_RELATED_PERSON) {
      const char *dash = strchr(id, '-');
      if (!dash || !parse_u64(id, (size_t)(dash - id), &index)) return false;
      index %= SIM_PP_STRIDE;
      p = dash + 1;
      end = p + strlen(p);
    } else {
      if (strncmp(id, "CARE_TEAM-", 10) == 0)
        p = id + 10;
      else if (strncmp(id, "LIFETIME_PROVIDER-", 18) == 0)
        p = id + 18;
      else
        return false;
      end = strchr(p, '-');
      const char *last = strrchr(id, '-');
      if (!end || !parse_u64(last + 1, strlen(last + 1), &index)) return false;
    }
    if ((size_t)(end - p) >= sizeof patient) return false;
    memcpy(patient, p, (size_t)(end - p));
    patient[end - p] = '\0';
    if (index >= SIM_PP_STRIDE || !sim_store_patient_ordinal(s, patient, &ordinal) ||
        index >= sim_pp_count(s, t, ordinal))
      return false;
    char again[64];
    sim_pp_id(s, t, (uint64_t)ordinal * SIM_PP_STRIDE + index, again);
    if (strcmp(again, id) != 0) return false;
  } else {
    uint64_t v;
    if (!sim_rtype_per_patient(t) || !parse_u64(id, strlen(id), &v) || id[0] == '0' ||
        v / ID_TYPE_FACTOR != id_codes[t])
      return false;
    uint64_t rest = v % ID_TYPE_FACTOR;
    if (rest / SIM_PP_STRIDE > UINT32_MAX) return false;
    ordinal = (uint32_t)(rest / SIM_PP_STRIDE);
    index = rest % SIM_PP_STRIDE;
    if (!sim_store_patient(s, ordinal)) return false;
  }
  if (index >= sim_pp_count(s, t, ordinal)) return false;
  *handle = (uint64_t)ordinal * SIM_PP_STRIDE + index;
  return true;
}

/* ---- lastUpdated and touches ---- */

static void touch_key(sim_rtype t, uint64_t handle, char out[48]) {
  snprintf(out, 48, "%d/%llu", (int)t, (unsigned long long)handle);
}

bool sim_touch_get(const sim_store *s, sim_rtype t, uint64_t handle, sim_touch *out) {
  if (atomic_load(&s->touches->count) == 0) return false;
  char key[48];
  touch_key(t, handle, key);
  pthread_mutex_lock(&s->touches->lock);
  const sim_touch *found = sim_map_get(&s->touches->map, key);
  if (found) *out = *found;
  pthread_mutex_unlock(&s->touches->lock);
  return found != NULL;
}

int sim_store_touch(const sim_store *s, sim_rtype t, uint64_t handle, int64_t now_ms) {
  char key[48];
  touch_key(t, handle, key);
  sim_touches *tc = s->touches;
  int rc = 0;
  pthread_mutex_lock(&tc->lock);
  sim_touch *found = sim_map_get(&tc->map, key);
  if (found) {
    found->ms = now_ms;
    found->bumps++;
  } else if ((found = malloc(sizeof *found))) {
    *found = (sim_touch){.ms = now_ms, .bumps = 1};
    if (sim_map_put(&tc->map, key, found) == 0)
      atomic_fetch_add(&tc->count, 1);
    else {
      free(found);
      rc = -1;
    }
  } else {
    rc = -1;
  }
  pthread_mutex_unlock(&tc->lock);
  return rc;
}

void sim_store_untouch_all(const sim_store *s) {
  sim_touches *tc = s->touches;
  pthread_mutex_lock(&tc->lock);
  sim_map_free(&tc->map);
  atomic_store(&tc->count, 0);
  pthread_mutex_unlock(&tc->lock);
}

/* The common first draws of a resource's stream. */
static void common_draws(const sim_data_params *p, sim_rtype t, uint64_t handle, sim_rng *r,
                         int64_t *updated_ms, unsigned *version, int64_t *when) {
  sim_rng_init(r, p, t, handle);
  uint64_t offset = sim_rng_next(r) % (uint64_t)UPDATED_SPAN_MS;
  *updated_ms = SIM_DATA_EPOCH * 1000 + (int64_t)offset;
  *version = 1 + sim_rng_below(r, 3);
  *when = *updated_ms / 1000 - (int64_t)sim_rng_below(r, (uint32_t)CLINICAL_SPAN_S);
}

int64_t sim_pp_last_updated_ms(const sim_store *s, sim_rtype t, uint64_t handle) {
  sim_touch touch;
  if (sim_touch_get(s, t, handle, &touch)) return touch.ms;
  sim_rng r;
  sim_rng_init(&r, &s->p, t, handle);
  return SIM_DATA_EPOCH * 1000 + (int64_t)(sim_rng_next(&r) % (uint64_t)UPDATED_SPAN_MS);
}

void sim_pp_write(const sim_store *s, sim_rtype t, uint64_t handle, const char *host,
                  sim_buf *out) {
  const sim_resource *pat = sim_store_patient(s, ordinal_of(handle));
  if (!pat || !generators[t]) return;
  sim_gen g = {.s = s,
               .p = &s->p,
               .type = t,
               .handle = handle,
               .ordinal = ordinal_of(handle),
               .index = index_of(handle),
               .patient_id = pat->id,
               .host = host,
               .w = sim_jw_on(out)};
  const json_t *name = json_array_get(json_object_get(pat->doc, "name"), 0);
  g.patient_name = json_string_value(json_object_get(name, "text"));
  if (!g.patient_name) g.patient_name = "";
  sim_pp_id(s, t, handle, g.id);
  sim_patient_team(&s->p, g.ordinal, g.team);
  common_draws(&s->p, t, handle, &g.r, &g.updated_ms, &g.version, &g.when);
  sim_touch touch;
  if (sim_touch_get(s, t, handle, &touch)) {
    g.updated_ms = touch.ms;
    g.version += touch.bumps;
  }
  generators[t](&g);
}

/* ---- helpers for the generators ---- */

void sim_gen_begin(sim_gen *g, const char *summary) {
  char when[32], div[384];
  sim_fhir_instant_ms(g->updated_ms, when);
  sim_jw_obj(&g->w, NULL);
  sim_jw_str(&g->w, "resourceType", sim_rtype_name(g->type));
  sim_jw_str(&g->w, "id", g->id);
  sim_jw_obj(&g->w, "meta");
  sim_jw_strf(&g->w, "versionId", "%u", g->version);
  sim_jw_str(&g->w, "lastUpdated", when);
  sim_jw_end(&g->w);
  snprintf(div, sizeof div,
           "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p><b>%s</b></p><p><b>Patient</b>: "
           "%s</p><p>%s</p></div>",
           sim_rtype_name(g->type), g->patient_name, summary);
  sim_jw_obj(&g->w, "text");
  sim_jw_str(&g->w, "status", "generated");
  sim_jw_str(&g->w, "div", div);
  sim_jw_end(&g->w);
}

static void ref(sim_jw *w, const char *key, const char *type, const char *id,
                const char *display) {
  char target[96];
  snprintf(target, sizeof target, "%s/%s", type, id);
  sim_jw_obj(w, key);
  sim_jw_str(w, "reference", target);
  if (display && *display) sim_jw_str(w, "display", display);
  sim_jw_end(w);
}

void sim_gen_patient_ref(sim_gen *g, const char *key) {
  ref(&g->w, key, "Patient", g->patient_id, g->patient_name);
}

static void pool_ref(sim_gen *g, const char *key, sim_rtype t, long base, unsigned index) {
  char id[24];
  snprintf(id, sizeof id, "%ld", base + (long)index);
  ref(&g->w, key, sim_rtype_name(t), id, sim_pool_display(g->s, t, index));
}

void sim_gen_practitioner_ref(sim_gen *g, const char *key) {
  uint32_t roll = sim_rng_below(&g->r, 5);
  uint32_t pick = sim_rng_below(&g->r, g->p->knobs.practitioners);
  unsigned index = roll == 0 ? pick : g->team[pick % SIM_TEAM_SIZE];
  pool_ref(g, key, SIM_RT_PRACTITIONER, SIM_PRACTITIONER_BASE, index);
}

void sim_gen_organization_ref(sim_gen *g, const char *key, bool payor) {
  sim_pool_layout l;
  sim_pool_layout_of(&g->p->knobs, &l);
  unsigned index = payor ? l.payor_first + sim_rng_below(&g->r, l.npayor)
                         : sim_rng_below(&g->r, l.nprov);
  pool_ref(g, key, SIM_RT_ORGANIZATION, SIM_ORGANIZATION_BASE, index);
}

void sim_gen_location_ref(sim_gen *g, const char *key) {
  sim_pool_layout l;
  sim_pool_layout_of(&g->p->knobs, &l);
  unsigned index = l.leaf_first + sim_rng_below(&g->r, l.nleaf);
  pool_ref(g, key, SIM_RT_LOCATION, SIM_LOCATION_BASE, index);
}

void sim_gen_encounter_ref(sim_gen *g, const char *key) {
  size_t n = sim_pp_count(g->s, SIM_RT_ENCOUNTER, g->ordinal);
  if (n == 0) return;
  uint32_t index = sim_rng_below(&g->r, (uint32_t)n);
  char id[64];
  sim_pp_id(g->s, SIM_RT_ENCOUNTER, (uint64_t)g->ordinal * SIM_PP_STRIDE + index, id);
  ref(&g->w, key, "Encounter", id, NULL);
}

bool sim_gen_related_ref(sim_gen *g, const char *key) {
  size_t n = sim_pp_count(g->s, SIM_RT_RELATED_PERSON, g->ordinal);
  if (n == 0) return false;
  uint32_t index = sim_rng_below(&g->r, (uint32_t)n);
  char id[64];
  sim_pp_id(g->s, SIM_RT_RELATED_PERSON, (uint64_t)g->ordinal * SIM_PP_STRIDE + index, id);
  ref(&g->w, key, "RelatedPerson", id, NULL);
  return true;
}

void sim_gen_foreign_ref(sim_gen *g, const char *key, const char *type) {
  char url[160];
  snprintf(url, sizeof url, "https://fhir.other-ehr.example.org/r4/shared/%s/F%u", type,
           1000 + sim_rng_below(&g->r, 9000));
  sim_jw_obj(&g->w, key);
  sim_jw_str(&g->w, "reference", url);
  sim_jw_str(&g->w, "display", "Outside record");
  sim_jw_end(&g->w);
}

void sim_gen_cc(sim_jw *w, const char *key, const char *system, const char *code,
                const char *display) {
  sim_jw_obj(w, key);
  sim_jw_arr(w, "coding");
  sim_jw_obj(w, NULL);
  sim_jw_str(w, "system", system);
  sim_jw_str(w, "code", code);
  sim_jw_str(w, "display", display);
  sim_jw_end(w);
  sim_jw_end_arr(w);
  sim_jw_str(w, "text", display);
  sim_jw_end(w);
}

void sim_gen_instant(sim_jw *w, const char *key, int64_t epoch) {
  char when[32];
  sim_fhir_instant(epoch, when);
  sim_jw_str(w, key, when);
}

void sim_gen_date(sim_jw *w, const char *key, int64_t epoch) {
  char when[32];
  sim_fhir_instant(epoch, when);
  when[10] = '\0';
  sim_jw_str(w, key, when);
}

/* One attachment: form of this resource's documents. */
static void attachment(sim_gen *g, const char *key, const char *title, sim_bin_form form) {
  char bid[64], url[512];
  uint64_t bh = sim_binary_handle_for(g->type, g->handle, form);
  sim_binary_id_for(g->type, g->handle, form, bid);
  int n = snprintf(url, sizeof url, "%s://%s/r4/%s/Binary/%s", sim_scheme(), g->host,
                   g->p->tenant_id, bid);
  if (g->p->knobs.binary_signed_urls && n > 0 && (size_t)n < sizeof url) {
    char sig[17];
    sim_binary_sig(g->s, bh, sig);
    snprintf(url + n, sizeof url - (size_t)n, "?sig=%s", sig);
  }
  sim_jw_obj(&g->w, key);
  sim_jw_str(&g->w, "contentType", sim_binary_content_type(bh));
  sim_jw_str(&g->w, "url", url);
  sim_jw_int(&g->w, "size", (long long)sim_binary_size(g->s, bh));
  sim_jw_str(&g->w, "title", title);
  sim_gen_instant(&g->w, "creation", g->when);
  sim_jw_end(&g->w);
}

void sim_gen_attachment(sim_gen *g, const char *key, const char *title) {
  attachment(g, key, title, SIM_BIN_PDF);
}

void sim_gen_presented_forms(sim_gen *g, const char *title) {
  sim_bin_form forms[SIM_BIN_FORMS];
  size_t n = sim_binary_forms(g->type, g->handle, forms);
  sim_jw_arr(&g->w, "presentedForm");
  for (size_t i = 0; i < n; i++) attachment(g, NULL, title, forms[i]);
  sim_jw_end_arr(&g->w);
}
