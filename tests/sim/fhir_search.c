/* The search engine shared by all resource types: Cerner's parameter rules
 * (required parameters, _id alone, one patient, CarePlan's category),
 * matching, _count, and paging through an opaque -pageContext.
 *
 * A -pageContext carries the original parameters, the offset and the page
 * number, obfuscated and authenticated with a per-tenant secret, so a next
 * link is self-contained (no server-side cursor) yet not editable. Pages
 * are cut from the match list with Cerner's quirks when the type has them
 * (fhir_types.c) and the tenant's paging_* knobs are on:
 *
 *   - some pages after the first are shorter than _count although more follow;
 *   - pages 3, 6, 9, ... start with the last entry of the page before, so a
 *     client sees that id twice and must de-duplicate;
 *   - pages 2, 6, 10, ... carry an OperationOutcome entry with
 *     search.mode "outcome" (a warning, not data).
 *
 * Every choice derives from the query and the page number, so the same
 * request always gets the same page. */
#include "common/b64.h"
#include "tests/sim/fhir.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_CONTEXT "-pageContext"
#define TAG_LEN 8

typedef struct query {
  sim_kv *p; /* owned; never contains -pageContext */
  size_t n;
  size_t offset;
  unsigned page; /* 0 = the first page */
  unsigned count;
} query;

static void query_free(query *q) {
  for (size_t i = 0; i < q->n; i++) {
    free(q->p[i].key);
    free(q->p[i].value);
  }
  free(q->p);
  *q = (query){0};
}

static int query_add(query *q, const char *k, const char *v) {
  sim_kv *p = realloc(q->p, (q->n + 1) * sizeof *p);
  if (!p) return -1;
  q->p = p;
  p[q->n].key = strdup(k);
  p[q->n].value = strdup(v);
  if (!p[q->n].key || !p[q->n].value) {
    free(p[q->n].key);
    free(p[q->n].value);
    return -1;
  }
  q->n++;
  return 0;
}

static const char *query_get(const query *q, const char *key) {
  for (size_t i = 0; i < q->n; i++)
    if (strcmp(q->p[i].key, key) == 0) return q->p[i].value;
  return NULL;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

#define FNV_SEED 1469598103934665603ULL

/* A hash of the parameters only (not offset or page): the same search has
 * the same quirks on every page. */
static uint64_t query_hash(const query *q) {
  uint64_t h = FNV_SEED;
  for (size_t i = 0; i < q->n; i++) {
    h = fnv1a(h, q->p[i].key, strlen(q->p[i].key) + 1);
    h = fnv1a(h, q->p[i].value, strlen(q->p[i].value) + 1);
  }
  return h;
}

static uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* ---- page context ---- */

static uint64_t tenant_secret(const sim_store *store) {
  sim_rng r;
  sim_rng_init_domain(&r, sim_store_params(store), SIM_DOMAIN_PAGING, 0);
  return sim_rng_next(&r);
}

/* XORs data with a keystream derived from the secret and the tag. */
static void keystream_xor(uint64_t secret, uint64_t tag, uint8_t *data, size_t n) {
  uint64_t state = secret ^ mix(tag), word = 0;
  for (size_t i = 0; i < n; i++) {
    if (i % 8 == 0) word = mix(state += 0x9e3779b97f4a7c15ULL);
    data[i] ^= (uint8_t)(word >> (8 * (i % 8)));
  }
}

static uint64_t context_tag(uint64_t secret, const uint8_t *plain, size_t n) {
  return fnv1a(fnv1a(FNV_SEED, &secret, sizeof secret), plain, n);
}

static char *page_context_encode(const sim_store *store, const query *q, size_t offset,
                                 unsigned page) {
  json_t *params = json_array();
  for (size_t i = 0; params && i < q->n; i++)
    json_array_append_new(params, json_pack("[s,s]", q->p[i].key, q->p[i].value));
  json_t *doc = json_pack("{s:I, s:I, s:o}", "o", (json_int_t)offset, "g", (json_int_t)page,
                          "p", params);
  char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  if (!text) return NULL;
  size_t n = strlen(text);
  uint8_t *raw = malloc(n + TAG_LEN);
  char *out = NULL;
  if (raw) {
    uint64_t secret = tenant_secret(store);
    uint64_t tag = context_tag(secret, (const uint8_t *)text, n);
    memcpy(raw, text, n);
    keystream_xor(secret, tag, raw, n);
    for (int i = 0; i < TAG_LEN; i++) raw[n + (size_t)i] = (uint8_t)(tag >> (8 * i));
    out = fx_b64url_encode_alloc(raw, n + TAG_LEN);
    free(raw);
  }
  free(text);
  return out;
}

static int page_context_decode(const sim_store *store, const char *ctx, query *q) {
  size_t len;
  uint8_t *raw = fx_b64url_decode(ctx, strlen(ctx), &len);
  if (!raw || len <= TAG_LEN) {
    free(raw);
    return -1;
  }
  size_t n = len - TAG_LEN;
  uint64_t tag = 0, secret = tenant_secret(store);
  for (int i = 0; i < TAG_LEN; i++) tag |= (uint64_t)raw[n + (size_t)i] << (8 * i);
  keystream_xor(secret, tag, raw, n);
  json_t *doc = context_tag(secret, raw, n) == tag ? json_loadb((const char *)raw, n, 0, NULL)
                                                   : NULL;
  free(raw);
  const json_t *o = json_object_get(doc, "o"), *g = json_object_get(doc, "g");
  const json_t *params = json_object_get(doc, "p");
  int rc = json_is_integer(o) && json_integer_value(o) >= 0 && json_is_integer(g) &&
                   json_integer_value(g) >= 0 && json_is_array(params)
               ? 0
               : -1;
  size_t i;
  const json_t *kv;
  json_array_foreach(params, i, kv) {
    const char *k = json_string_value(json_array_get(kv, 0));
    const char *v = json_string_value(json_array_get(kv, 1));
    if (rc || !k || !v || strcmp(k, PAGE_CONTEXT) == 0 || query_add(q, k, v) != 0) rc = -1;
  }
  if (rc == 0) {
    q->offset = (size_t)json_integer_value(o);
    q->page = (unsigned)json_integer_value(g);
  }
  json_decref(doc);
  return rc;
}

/* ---- dates ---- */

static bool digits_at(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (!isdigit((unsigned char)s[i])) return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

static int64_t days_from_civil(int y, int m, int d) { /* Howard Hinnant's algorithm */
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int sim_fhir_parse_instant(const char *s, int64_t *lo_ms, int64_t *hi_ms) {
  int y, mo = 1, d = 1, h = 0, mi = 0, sec = 0;
  size_t len = strlen(s);
  if (len < 4 || !digits_at(s, 4, &y)) return -1;
  const char *p = s + 4;
  int precision = 0; /* 0 year, 1 month, 2 day, 3 minute, 4 second, 5+ fraction digits */
  if (*p == '-') {
    if (!digits_at(p + 1, 2, &mo) || mo < 1 || mo > 12) return -1;
    p += 3, precision = 1;
    if (*p == '-') {
      if (!digits_at(p + 1, 2, &d) || d < 1 || d > 31) return -1;
      p += 3, precision = 2;
    }
  }
  int64_t frac_ms = 0, frac_step = 1000;
  if (*p == 'T' && precision == 2) {
    if (!digits_at(p + 1, 2, &h) || p[3] != ':' || !digits_at(p + 4, 2, &mi) || h > 23 ||
        mi > 59)
      return -1;
    p += 6, precision = 3;
    if (*p == ':') {
      if (!digits_at(p + 1, 2, &sec) || sec > 60) return -1;
      p += 3, precision = 4;
      if (*p == '.') {
        p++;
        int ndig = 0;
        for (; isdigit((unsigned char)*p); p++, ndig++)
          if (ndig < 3) frac_ms = frac_ms * 10 + (*p - '0'), frac_step /= 10;
        if (ndig == 0) return -1;
        for (int i = ndig; i < 3; i++) frac_ms *= 10;
      }
    }
  }
  int64_t offset_s = 0;
  if (precision >= 3) {
    /* '+' arrives as ' ' when a client forgot to percent-encode it. */
    if (*p == 'Z') {
      p++;
    } else if (*p == '+' || *p == '-' || *p == ' ') {
      int oh, om;
      if (!digits_at(p + 1, 2, &oh) || p[3] != ':' || !digits_at(p + 4, 2, &om)) return -1;
      offset_s = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
      p += 6;
    }
  }
  if (*p) return -1;
  int64_t start_day = days_from_civil(y, mo, d);
  int64_t start = ((start_day * 24 + h) * 60 + mi) * 60 + sec - offset_s;
  int64_t end_s;
  switch (precision) {
  case 0: end_s = days_from_civil(y + 1, 1, 1) * 86400; break;
  case 1: end_s = days_from_civil(mo == 12 ? y + 1 : y, mo == 12 ? 1 : mo + 1, 1) * 86400; break;
  case 2: end_s = start + 86400; break;
  case 3: end_s = start + 60; break;
  default: end_s = start + 1; break;
  }
  *lo_ms = start * 1000 + frac_ms;
  *hi_ms = precision >= 4 && frac_step < 1000 ? *lo_ms + frac_step : end_s * 1000;
  return 0;
}

/* One _lastUpdated value: [prefix]instant. Returns -1 when malformed. */
static int last_updated_matches(const char *value, int64_t t, bool *match) {
  char op[3] = "eq";
  if (isalpha((unsigned char)value[0]) && isalpha((unsigned char)value[1])) {
    memcpy(op, value, 2);
    value += 2;
  }
  int64_t lo, hi;
  if (sim_fhir_parse_instant(value, &lo, &hi) != 0) return -1;
  if (strcmp(op, "eq") == 0)
    *match = t >= lo && t < hi;
  else if (strcmp(op, "ne") == 0)
    *match = t < lo || t >= hi;
  else if (strcmp(op, "ge") == 0)
    *match = t >= lo;
  else if (strcmp(op, "gt") == 0 || strcmp(op, "sa") == 0)
    *match = t >= hi;
  else if (strcmp(op, "le") == 0)
    *match = t < hi;
  else if (strcmp(op, "lt") == 0 || strcmp(op, "eb") == 0)
    *match = t < lo;
  else
    return -1;
  return 0;
}

/* ---- parameter checks ---- */

/* One _lastUpdated value's prefix (explicit or the implied "eq") and bounds. */
typedef struct lu_value {
  char op[3];
  bool explicit_op, has_time;
  int64_t lo, hi;
} lu_value;

static int lu_parse(const char *value, lu_value *v) {
  snprintf(v->op, sizeof v->op, "eq");
  v->explicit_op = isalpha((unsigned char)value[0]) && isalpha((unsigned char)value[1]);
  if (v->explicit_op) {
    memcpy(v->op, value, 2);
    value += 2;
  }
  v->has_time = strchr(value, 'T') != NULL;
  return sim_fhir_parse_instant(value, &v->lo, &v->hi);
}

static bool op_is(const lu_value *v, const char *a, const char *b) {
  return strcmp(v->op, a) == 0 || (b && strcmp(v->op, b) == 0);
}

/* _lastUpdated as the type's page of Cerner's R4 documentation allows it
 * (sim_lu_rule), or the 400 message. */
static const char *last_updated_problem(const sim_search_def *def, const query *q) {
  lu_value v[2];
  size_t n = 0;
  for (size_t i = 0; i < q->n; i++) {
    if (strcmp(q->p[i].key, "_lastUpdated") != 0) continue;
    if (n == 2 || (n == 1 && def->lu_rule == SIM_LU_ONE_GT_GE))
      return def->lu_rule == SIM_LU_ONE_GT_GE
                 ? "_lastUpdated can be provided only once, with the gt or ge prefix"
                 : "_lastUpdated may be provided at most two times";
    if (lu_parse(q->p[i].value, &v[n]) != 0)
      return "_lastUpdated must be a prefix (eq, ge, gt, le, lt) followed by a FHIR date or "
             "instant, e.g. _lastUpdated=ge2014-05-19T20:54:02.000Z";
    n++;
  }
  if (n == 0) return NULL;
  if (def->lu_no_date && (query_get(q, "date") || query_get(q, "period")))
    return "The date and _lastUpdated parameters may not be provided together";
  switch (def->lu_rule) {
  case SIM_LU_ONE_GT_GE:
    if (!op_is(&v[0], "gt", "ge")) return "_lastUpdated must use the gt or ge prefix";
    return NULL;
  case SIM_LU_TIMED_GE_LE:
    for (size_t i = 0; i < n; i++)
      if (!v[i].explicit_op || !op_is(&v[i], "ge", "le") || !v[i].has_time)
        return "_lastUpdated must include a time and be prefixed by ge or le, e.g. "
               "_lastUpdated=ge2014-05-19T20:54:02.000Z";
    if (n == 2 && (strcmp(v[0].op, v[1].op) == 0 ||
                   (op_is(&v[0], "ge", NULL) ? v[0].lo > v[1].hi : v[1].lo > v[0].hi)))
      return "_lastUpdated provided twice must be a ge lower and an le upper bound";
    return NULL;
  case SIM_LU_RANGE:
    for (size_t i = 0; i < n; i++)
      if (!op_is(&v[i], "eq", "ge") && !op_is(&v[i], "gt", "le") && !op_is(&v[i], "lt", NULL))
        return "_lastUpdated must use the eq, ge, gt, le, or lt prefixes";
    if (n == 2) {
      const lu_value *lower = op_is(&v[0], "ge", "gt") ? &v[0] : &v[1];
      const lu_value *upper = lower == &v[0] ? &v[1] : &v[0];
      if (!op_is(lower, "ge", "gt") || !op_is(upper, "le", "lt") || lower->lo > upper->hi)
        return "When _lastUpdated is provided twice, the lower value must have a ge or gt prefix "
               "and the higher value an le or lt prefix";
    }
    return NULL;
  }
  return NULL;
}

static bool has_required(const sim_search_def *def, const query *q, bool paged) {
  if (!def->required || paged) return true;
  for (size_t i = 0; def->required[i]; i++) {
    const char *v = query_get(q, def->required[i]);
    if (v && *v) return true;
  }
  return false;
}

static bool accepts(const sim_search_def *def, const char *name) {
  for (size_t i = 0; def->required && def->required[i]; i++)
    if (strcmp(def->required[i], name) == 0) return true;
  return false;
}

/* Cerner's wording: "at least one of a, b, or c must be provided". */
static char *missing_message(const sim_search_def *def) {
  sim_buf b = {0};
  sim_buf_puts(&b, "at least one of ");
  for (size_t i = 0; def->required[i]; i++) {
    if (i) sim_buf_puts(&b, def->required[i + 1] ? ", " : ", or ");
    sim_buf_puts(&b, def->required[i]);
  }
  sim_buf_puts(&b, " must be provided");
  return sim_buf_steal(&b, NULL);
}

/* The rules beyond "one required parameter", checked on first pages only
 * (a -pageContext continues a search that passed them). Returns NULL or the
 * 400 message. */
static const char *rule_problem(const sim_search_def *def, const query *q) {
  bool is_pp = sim_rtype_per_patient(def->type);
  if (def->id_alone && query_get(q, "_id")) {
    for (size_t i = 0; i < q->n; i++)
      if (strcmp(q->p[i].key, "_id") != 0 && strcmp(q->p[i].key, "_count") != 0)
        return "_id cannot be combined with other search parameters";
  }
  if (is_pp) {
    static const char *const refs[] = {"patient", "subject"};
    for (size_t i = 0; i < 2; i++) {
      const char *v = query_get(q, refs[i]);
      if (v && accepts(def, refs[i]) && strchr(v, ','))
        return "only one patient may be searched at a time: patient and subject take a single id";
    }
  }
  if (def->patient_requires && (query_get(q, "patient") || query_get(q, "subject"))) {
    const char *eq = strchr(def->patient_requires, '=');
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(eq - def->patient_requires), def->patient_requires);
    const char *v = query_get(q, name);
    if (!v || strcmp(v, eq + 1) != 0)
      return "a search by patient requires category=assess-plan";
  }
  if (def->relationship_level) {
    /* related-person.md: "-relationship-level is required for patient and
     * identifier searches", "can only be provided with patient or
     * identifier", "can only be set to Patient". */
    const char *level = query_get(q, "-relationship-level");
    bool by_person = query_get(q, "patient") || query_get(q, "identifier");
    if (by_person && !level)
      return "-relationship-level is required for patient and identifier searches: add "
             "-relationship-level=Patient";
    if (level && !by_person)
      return "-relationship-level can only be provided with patient or identifier";
    if (level && strcmp(level, "Patient") != 0 &&
        strcmp(level, "http://hl7.org/fhir/resource-types|Patient") != 0)
      return "-relationship-level can only be set to Patient";
  }
  if (def->last_updated) return last_updated_problem(def, q);
  return NULL;
}

static int parse_count(const sim_search_def *def, const query *q, unsigned *count) {
  const char *s = query_get(q, "_count");
  *count = def->default_count;
  if (!s) return 0;
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 1) return -1;
  *count = v > (long)def->max_count ? def->max_count : (unsigned)v;
  return 0;
}

/* ---- matching ---- */

typedef struct matches {
  uint64_t *v; /* handles, in result order */
  size_t n, cap;
  bool oom;
} matches;

static void matches_add(matches *m, uint64_t h) {
  if (m->oom) return;
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint64_t *v = realloc(m->v, cap * sizeof *v);
    if (!v) {
      m->oom = true;
      return;
    }
    m->v = v;
    m->cap = cap;
  }
  m->v[m->n++] = h;
}

/* Stored types: candidates come from the type's index when the query pins
 * its indexed parameter to one value, else from a scan of the type. */
static void find_stored(const sim_store *store, const sim_search_def *def, const query *q,
                        matches *m) {
  sim_kv *filters = calloc(q->n + 1, sizeof *filters);
  size_t nf = 0;
  for (size_t i = 0; filters && i < q->n; i++)
    if (strcmp(q->p[i].key, "_count") != 0) filters[nf++] = q->p[i];
  if (!filters) {
    m->oom = true;
    return;
  }
  const size_t *cand = NULL;
  size_t ncand = 0;
  const char *v = def->indexed_param ? query_get(q, def->indexed_param) : NULL;
  bool indexed = v && !strchr(v, ',') &&
                 sim_store_lookup(store, def->type, def->indexed_param, v, &cand, &ncand);
  if (!indexed) ncand = sim_store_count(store, def->type);
  for (size_t c = 0; c < ncand; c++) {
    size_t i = indexed ? cand[c] : c;
    if (sim_fhir_match(def, sim_store_at(store, def->type, i), filters, nf)) matches_add(m, i);
  }
  free(filters);
}

static bool matches_has(const matches *m, uint64_t h) {
  for (size_t i = 0; i < m->n; i++)
    if (m->v[i] == h) return true;
  return false;
}

/* Per-patient types: the patient's resources in index order, or the listed
 * ids. Searches by encounter, account, identifier or -encounter are valid
 * but match nothing: no simulated resource is linked that way. */
static void find_per_patient(const sim_store *store, const sim_search_def *def, const query *q,
                             matches *m) {
  const char *ids = query_get(q, "_id");
  if (ids) {
    char *copy = strdup(ids), *save = NULL;
    if (!copy) m->oom = true;
    for (char *id = copy ? strtok_r(copy, ",", &save) : NULL; id;
         id = strtok_r(NULL, ",", &save)) {
      uint64_t h;
      if (sim_store_resolve(store, def->type, id, &h) && !matches_has(m, h)) matches_add(m, h);
    }
    free(copy);
    return;
  }
  const char *patient = query_get(q, "patient");
  const char *subject = accepts(def, "subject") ? query_get(q, "subject") : NULL;
  if (patient && subject) {
    const char *a = strrchr(patient, '/'), *b = strrchr(subject, '/');
    if (strcmp(a ? a + 1 : patient, b ? b + 1 : subject) != 0) return;
  }
  const char *who = patient ? patient : subject;
  if (!who) return;
  const char *slash = strrchr(who, '/');
  uint32_t ordinal;
  if (!sim_store_patient_ordinal(store, slash ? slash + 1 : who, &ordinal)) return;
  bool filter = false;
  for (size_t i = 0; def->last_updated && i < q->n; i++)
    filter = filter || strcmp(q->p[i].key, "_lastUpdated") == 0;
  size_t n = sim_pp_count(store, def->type, ordinal);
  for (size_t i = 0; i < n; i++) {
    uint64_t h = (uint64_t)ordinal * SIM_PP_STRIDE + i;
    bool keep = true;
    if (filter) {
      int64_t t = sim_pp_last_updated_ms(store, def->type, h);
      for (size_t k = 0; keep && k < q->n; k++) {
        bool hit = false;
        if (strcmp(q->p[k].key, "_lastUpdated") == 0 &&
            (last_updated_matches(q->p[k].value, t, &hit) != 0 || !hit))
          keep = false;
      }
    }
    if (keep) matches_add(m, h);
  }
}

/* ---- bundle ---- */

typedef struct page {
  size_t start, n;   /* entries m[start .. start + n) */
  size_t next;       /* offset of the next page */
  bool has_next;
  bool outcome;      /* add an OperationOutcome entry */
} page;

static page cut_page(const sim_search_def *def, const sim_data_knobs *k, const query *q,
                     uint64_t qhash, size_t total) {
  bool quirks = def->quirks;
  size_t start = q->offset < total ? q->offset : total;
  size_t size = q->count;
  unsigned p = q->page;
  uint64_t h = mix(qhash ^ ((uint64_t)p << 32));
  if (quirks && k->paging_short_pages && p >= 1 && size >= 2 && h % 3 == 0)
    size = size - 1 - (size_t)((h / 3) % ((size + 2) / 3));
  /* size >= 2 keeps the page making progress despite the repeated entry. */
  if (quirks && k->paging_repeats && p >= 2 && p % 3 == 2 && start > 0 && start < total &&
      size >= 2)
    start--;
  page pg = {.start = start, .n = total - start < size ? total - start : size};
  pg.next = pg.start + pg.n;
  pg.has_next = pg.next < total;
  pg.outcome = quirks && k->paging_outcomes && p % 4 == 1;
  return pg;
}

static void append_link(sim_buf *b, const char *relation, const char *url, bool first) {
  sim_buf_printf(b, "%s{\"relation\":\"%s\",\"url\":", first ? "" : ",", relation);
  sim_buf_json_str(b, url);
  sim_buf_puts(b, "}");
}

static void append_query_url(sim_buf *b, const char *base, const sim_kv *p, size_t n) {
  sim_buf_puts(b, base);
  for (size_t i = 0; i < n; i++) {
    sim_buf_puts(b, i ? "&" : "?");
    sim_buf_url_encode(b, p[i].key);
    sim_buf_puts(b, "=");
    sim_buf_url_encode(b, p[i].value);
  }
}

static void append_links(sim_buf *b, const sim_req *req, const char *base, const query *q,
                         const page *pg) {
  sim_buf url = {0};
  append_query_url(&url, base, req->query, req->nquery);
  sim_buf_puts(b, "\"link\":[");
  append_link(b, "self", url.data ? url.data : base, true);
  if (pg->has_next) {
    char *ctx = page_context_encode(req->tenant->store, q, pg->next, q->page + 1);
    url.len = 0;
    sim_buf_printf(&url, "%s?" PAGE_CONTEXT "=%s", base, ctx ? ctx : "");
    append_link(b, "next", url.data ? url.data : base, false);
    free(ctx);
  }
  sim_buf_puts(b, "]");
  sim_buf_free(&url);
}

static void format_uuid(uint64_t a, uint64_t b, char out[37]) {
  snprintf(out, 37, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32),
           (unsigned)(a >> 16) & 0xffff, (unsigned)a & 0xfff,
           (unsigned)(0x8000 | (b >> 48 & 0x3fff)), (unsigned long long)(b & 0xffffffffffffULL));
}

static void append_outcome(sim_buf *b, uint64_t seed) {
  char id[37];
  format_uuid(mix(seed ^ 0x6f7574636f6d65ULL), mix(seed + 1), id);
  sim_buf_printf(b,
                 "{\"resource\":{\"resourceType\":\"OperationOutcome\",\"id\":\"%s\","
                 "\"issue\":[{\"severity\":\"warning\",\"code\":\"suppressed\",\"details\":"
                 "{\"text\":\"Some data may have been omitted from this page\"},"
                 "\"diagnostics\":\"Some data may have been omitted from this page\"}]},"
                 "\"search\":{\"mode\":\"outcome\"}}",
                 id);
}

static void append_entries(sim_buf *b, const sim_req *req, const char *base,
                           const sim_search_def *def, const matches *m, const page *pg,
                           uint64_t seed) {
  if (!pg->n && !pg->outcome) return;
  const sim_store *store = req->tenant->store;
  sim_buf_puts(b, ",\"entry\":[");
  if (pg->outcome) append_outcome(b, seed);
  for (size_t i = 0; i < pg->n; i++) {
    char id[64];
    uint64_t h = m->v[pg->start + i];
    sim_store_id(store, def->type, h, id);
    sim_buf_printf(b, "%s{\"fullUrl\":\"%s/%s\",\"resource\":", i || pg->outcome ? "," : "", base,
                   id);
    sim_store_write(store, def->type, h, req->host, b);
    sim_buf_puts(b, ",\"search\":{\"mode\":\"match\"}}");
  }
  sim_buf_puts(b, "]");
}

static void send_bundle(sim_req *req, sim_resp *resp, const sim_search_def *def, const query *q,
                        const matches *m) {
  const sim_store *store = req->tenant->store;
  char base[512], uuid[37];
  snprintf(base, sizeof base, "%s://%s/r4/%s/%s", sim_scheme(), req->host, req->tenant->id,
           sim_rtype_name(def->type));
  uint64_t qhash = query_hash(q);
  page pg = cut_page(def, &sim_store_params(store)->knobs, q, qhash, m->n);
  /* A deterministic Bundle id: the same request gets the same bytes. */
  uint64_t seed = mix(qhash ^ mix(q->offset) ^ ((uint64_t)q->page << 40));
  format_uuid(seed, mix(seed), uuid);
  sim_buf b = {0};
  sim_buf_printf(&b, "{\"resourceType\":\"Bundle\",\"id\":\"%s\",\"type\":\"searchset\",", uuid);
  append_links(&b, req, base, q, &pg);
  append_entries(&b, req, base, def, m, &pg, seed);
  sim_buf_puts(&b, "}");
  size_t len;
  char *body = sim_buf_steal(&b, &len);
  if (body)
    sim_resp_body(resp, 200, SIM_CT_FHIR, body, len);
  else
    sim_fhir_outcome(resp, 500, "exception", "out of memory");
}

/* Fills q from the request; answers 400 itself and returns -1 when the
 * -pageContext is not one this server produced. */
static int load_query(sim_req *req, sim_resp *resp, query *q, bool *paged) {
  const char *ctx = sim_req_query(req, PAGE_CONTEXT);
  *paged = ctx != NULL;
  if (ctx) {
    if (page_context_decode(req->tenant->store, ctx, q) == 0) return 0;
    sim_fhir_outcome(resp, 400, "invalid", "-pageContext is invalid or expired");
    return -1;
  }
  for (size_t i = 0; i < req->nquery; i++) {
    if (query_add(q, req->query[i].key, req->query[i].value) != 0) {
      sim_fhir_outcome(resp, 500, "exception", "out of memory");
      return -1;
    }
  }
  return 0;
}

void sim_fhir_search(sim_req *req, sim_resp *resp, const sim_search_def *def) {
  if (!def->searchable) {
    sim_fhir_outcome(resp, 405, "not-supported", "search is not supported for this resource type");
    return;
  }
  query q = {0};
  matches m = {0};
  bool paged;
  const char *problem;
  if (load_query(req, resp, &q, &paged) != 0) goto out;
  if (!has_required(def, &q, paged)) {
    char *msg = missing_message(def);
    sim_fhir_outcome(resp, 400, "invalid", msg ? msg : "a required search parameter is missing");
    free(msg);
    goto out;
  }
  if (!paged && (problem = rule_problem(def, &q))) {
    sim_fhir_outcome(resp, 400, "invalid", problem);
    goto out;
  }
  if (parse_count(def, &q, &q.count) != 0) {
    sim_fhir_outcome(resp, 400, "invalid", "_count must be a positive integer");
    goto out;
  }
  if (sim_rtype_per_patient(def->type))
    find_per_patient(req->tenant->store, def, &q, &m);
  else
    find_stored(req->tenant->store, def, &q, &m);
  if (m.oom)
    sim_fhir_outcome(resp, 500, "exception", "out of memory");
  else if (def->max_matches && m.n > def->max_matches)
    sim_fhir_outcome(resp, 422, "too-costly",
                     "the search matches too many resources; add parameters to narrow it");
  else
    send_bundle(req, resp, def, &q, &m);
out:
  free(m.v);
  query_free(&q);
}
