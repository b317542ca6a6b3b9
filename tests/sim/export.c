/* Bulk Data $export on Groups, the FHIR side (export.h; docs/simulator.md
 * "Bulk Data $export"):
 *
 *   GET    /r4/{t}/Group/{id}                         the Group (system/Group.read)
 *   GET    /r4/{t}/Group/{id}/$export?...             kick-off: 202 + Content-Location
 *   GET    /r4/{t}/bulk-export/jobs/{job}             status: 202 running, 200 manifest,
 *                                                     500 failed, 404 gone
 *   DELETE /r4/{t}/bulk-export/jobs/{job}             202, the job is gone
 *   GET    /r4/{t}/bulk-export/jobs/{job}/files/{n}   307 to the storage server (storage.c)
 *
 * Checks of a kick-off, in order: method (405), group (404), Prefer and
 * Accept (400), parameters (400), scopes of every exported type (403), one
 * running export per client and tenant (429 with Retry-After). */
#include "tests/sim/fhir.h"
#include "tests/sim/jsonw.h"
#include "tests/sim/refserver.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define JOBS "/bulk-export/jobs/"
#define CT_NDJSON "application/fhir+ndjson"
/* Patients named by the error file's OperationOutcomes: ids no tenant has. */
#define FAKE_PATIENT_BASE 29999991L

/* ---- groups ---- */

/* Cerner's secure sandbox groups (cerner-smart-facts.md section 2); which
 * three patients the small one holds is not published: the first three. */
static const struct {
  const char *id;
  unsigned members;
} sandbox_groups[] = {
    {"11ec-d16a-c763b73e-98e8-a31715e6a2bf", 3},
    {"11ec-d16a-b40370f8-9d31-577f11a339c5", 10},
};

static sim_group *group_new(sim_tenant *t, const char *id, size_t n) {
  sim_group *g = &t->groups[t->ngroups];
  g->id = strdup(id);
  g->ordinals = calloc(n ? n : 1, sizeof *g->ordinals);
  if (!g->id || !g->ordinals) {
    free(g->id);
    free(g->ordinals);
    *g = (sim_group){0};
    return NULL;
  }
  g->n = n;
  t->ngroups++;
  return g;
}

static bool configured(const sim_tenant_cfg *tc, const char *id) {
  for (size_t i = 0; i < tc->ngroups; i++)
    if (strcmp(tc->groups[i].id, id) == 0) return true;
  return false;
}

int sim_groups_init(sim_tenant *t, const sim_tenant_cfg *tc, char *err, size_t errlen) {
  size_t nsandbox = sizeof sandbox_groups / sizeof *sandbox_groups;
  t->groups = calloc(tc->ngroups + nsandbox, sizeof *t->groups);
  if (!t->groups) goto oom;
  for (size_t i = 0; i < tc->ngroups; i++) {
    const sim_group_cfg *gc = &tc->groups[i];
    sim_group *g = group_new(t, gc->id, gc->first ? (size_t)gc->count : gc->patients.n);
    if (!g) goto oom;
    for (size_t k = 0; k < g->n; k++) {
      /* Synthetic patient 20000001 + i has ordinal i + 1, so the 1-based
       * `first` is already an ordinal. */
      if (gc->first) {
        g->ordinals[k] = (uint32_t)(gc->first + (long)k);
      } else if (!sim_store_patient_ordinal(t->store, gc->patients.v[k], &g->ordinals[k])) {
        snprintf(err, errlen, "tenant %s: group %s: no patient %s", t->id, gc->id,
                 gc->patients.v[k]);
        return -1;
      }
    }
  }
  for (size_t i = 0; sim_store_params(t->store)->sandbox && i < nsandbox; i++) {
    if (configured(tc, sandbox_groups[i].id)) continue;
    sim_group *g = group_new(t, sandbox_groups[i].id, sandbox_groups[i].members);
    if (!g) goto oom;
    for (size_t k = 0; k < g->n; k++) g->ordinals[k] = SIM_SANDBOX_ORDINAL + (uint32_t)k;
  }
  return 0;
oom:
  snprintf(err, errlen, "out of memory");
  return -1;
}

void sim_groups_free(sim_tenant *t) {
  for (size_t i = 0; i < t->ngroups; i++) {
    free(t->groups[i].id);
    free(t->groups[i].ordinals);
  }
  free(t->groups);
  t->groups = NULL;
  t->ngroups = 0;
}

const sim_group *sim_group_find(const sim_tenant *t, const char *id) {
  for (size_t i = 0; i < t->ngroups; i++)
    if (strcmp(t->groups[i].id, id) == 0) return &t->groups[i];
  return NULL;
}

static void read_group(sim_req *req, sim_resp *resp, const sim_group *g) {
  const sim_store *store = req->tenant->store;
  json_t *members = json_array();
  for (size_t i = 0; members && i < g->n; i++) {
    const sim_resource *p = sim_store_patient(store, g->ordinals[i]);
    char ref[96];
    snprintf(ref, sizeof ref, "Patient/%s", p ? p->id : "0");
    if (json_array_append_new(members, json_pack("{s:{s:s}}", "entity", "reference", ref))) {
      json_decref(members);
      members = NULL;
    }
  }
  if (!members) {
    sim_fhir_outcome(resp, 500, "exception", "out of memory");
    return;
  }
  if (g->n == 0) { /* FHIR has no empty arrays */
    json_decref(members);
    members = NULL;
  }
  json_t *doc = json_pack("{s:s, s:s, s:{s:s, s:s}, s:s, s:b, s:I, s:o*}", "resourceType", "Group",
                          "id", g->id, "meta", "versionId", "1", "lastUpdated",
                          "2024-01-01T00:00:00.000Z", "type", "person", "actual", 1, "quantity",
                          (json_int_t)g->n, "member", members);
  sim_resp_json(resp, 200, SIM_CT_FHIR, doc);
}

/* ---- writing an export's files (what is in them: export_scope.c) ---- */

/* The k-th line of the error file: an OperationOutcome about a patient that
 * is in no tenant, for one of the exported types. */
static void write_error_line(const sim_export *x, size_t k, sim_buf *out) {
  size_t ntypes = 0;
  for (int t = 0; t < SIM_RT_COUNT; t++) ntypes += x->types[t];
  size_t pick = ntypes ? k % ntypes : 0;
  const char *type = "Observation";
  for (int t = 0; t < SIM_RT_COUNT; t++)
    if (x->types[t] && pick-- == 0) {
      type = sim_rtype_name((sim_rtype)t);
      break;
    }
  char diag[256], id[64];
  snprintf(diag, sizeof diag,
           "%s resources of Patient/%ld could not be exported: the source system did not "
           "answer in time",
           type, FAKE_PATIENT_BASE + (long)k);
  snprintf(id, sizeof id, "%s-error-%zu", x->id, k + 1);
  sim_jw w = sim_jw_on(out);
  sim_jw_obj(&w, NULL);
  sim_jw_str(&w, "resourceType", "OperationOutcome");
  sim_jw_str(&w, "id", id);
  sim_jw_arr(&w, "issue");
  sim_jw_obj(&w, NULL);
  sim_jw_str(&w, "severity", "error");
  sim_jw_str(&w, "code", "exception");
  sim_jw_obj(&w, "details");
  sim_jw_str(&w, "text", diag);
  sim_jw_end(&w);
  sim_jw_str(&w, "diagnostics", diag);
  sim_jw_end(&w);
  sim_jw_end_arr(&w);
  sim_jw_end(&w);
}

bool sim_export_write_lines(const sim_export *x, size_t f, sim_xcursor *c, size_t *done,
                            size_t min_bytes, sim_buf *out) {
  const sim_xfile *file = &x->files[f];
  while (*done < file->count && out->len < min_bytes && !out->oom) {
    if (file->type == SIM_XFILE_ERRORS) {
      write_error_line(x, *done, out);
    } else if (file->type == SIM_XFILE_PROVENANCE) {
      uint64_t h;
      sim_rtype target;
      if (!sim_xnext_provenance(&x->scope, c, &target, &h)) {
        *done = file->count;
        break;
      }
      sim_xwrite_provenance(&x->scope, target, h, out);
    } else if (file->type >= SIM_XFILE_EXTRA) {
      uint32_t ordinal, index;
      if (!sim_ref_xnext(&x->scope, x->extra_pp, file->type - SIM_XFILE_EXTRA, c, &ordinal,
                         &index)) {
        *done = file->count;
        break;
      }
      sim_ref_write_extra(&x->scope, file->type - SIM_XFILE_EXTRA, ordinal, index, out);
    } else {
      uint64_t h;
      /* Only a touch between planning and download can shorten a file. */
      if (!sim_xnext(&x->scope, (sim_rtype)file->type, c, &h)) {
        *done = file->count;
        break;
      }
      sim_store_write(x->scope.store, (sim_rtype)file->type, h, x->host, out);
    }
    sim_buf_append(out, "\n", 1);
    (*done)++;
  }
  return *done >= file->count;
}

const char *sim_export_file_type(const sim_export *x, size_t f) {
  int t = x->files[f].type;
  if (t == SIM_XFILE_ERRORS) return "OperationOutcome";
  if (t == SIM_XFILE_PROVENANCE) return "Provenance";
  if (t >= SIM_XFILE_EXTRA) return sim_ref_extra_names[t - SIM_XFILE_EXTRA];
  return sim_rtype_name((sim_rtype)t);
}

/* ---- jobs ---- */

void sim_export_ref(sim_export *x) { atomic_fetch_add(&x->refs, 1); }

void sim_export_unref(void *p) {
  sim_export *x = p;
  if (!x || atomic_fetch_sub(&x->refs, 1) != 1) return;
  sim_xscope_free(&x->scope);
  free(x->client_id);
  free(x->request);
  free(x->files);
  free(x);
}

bool sim_export_expired_locked(const sim_export *x, int64_t now_ms) {
  return x->expired || now_ms >= x->done_ms + SIM_EXPORT_TTL_MS;
}

void sim_export_sign(const sim_state *st, const char *id, size_t f, char out[65]) {
  char msg[SIM_EXPORT_ID_LEN + 32];
  int len = snprintf(msg, sizeof msg, "%s/%zu", id, f);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned maclen = 0;
  if (!HMAC(EVP_sha256(), st->storage_secret, (int)sizeof st->storage_secret,
            (const unsigned char *)msg, (size_t)len, mac, &maclen))
    maclen = 0;
  for (unsigned i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", i < maclen ? mac[i] : 0);
}

static bool job_id_valid(const char *id) {
  if (strlen(id) != SIM_EXPORT_ID_LEN) return false;
  for (const char *p = id; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
  return true;
}

/* A new reference to job `id` of tenant t if clients may still see it, else
 * NULL. Lock held. */
static sim_export *find_locked(sim_state *st, const sim_tenant *t, const char *id,
                               int64_t now_ms) {
  sim_export *x = sim_map_get(&st->exports, id);
  if (!x || x->tenant != t->index || sim_export_expired_locked(x, now_ms)) return NULL;
  sim_export_ref(x);
  return x;
}

/* group-export.md, Status and Delete requests: "the client in the token
 * must match the client that requested the export" (also for file
 * retrieval). Cerner gives no status for it; bulk-data.md's client errors
 * answer 403 for "an instance where the application is not authorized". */
static bool other_client(sim_req *req, sim_resp *resp, const sim_export *x,
                         const char *client_id) {
  if (client_id && strcmp(x->client_id, client_id) == 0) return false;
  char diag[200];
  snprintf(diag, sizeof diag,
           "export %s was requested by another client; only that client may check, download or "
           "delete it",
           x->id);
  sim_count_export(req->st, req->tenant, SIM_XCOUNT_OTHER_CLIENT);
  sim_fhir_outcome(resp, 403, "forbidden", diag);
  return true;
}

static void not_found(sim_resp *resp, const char *id) {
  char diag[200];
  snprintf(diag, sizeof diag, "export %s was not found; it may have expired or been deleted",
           job_id_valid(id) ? id : "(invalid id)");
  sim_fhir_outcome(resp, 404, "not-found", diag);
}

/* ---- kick-off ---- */

/* True if the comma-separated header lists `want` as an element (its
 * parameters after ';' ignored), case-insensitively. */
static bool header_lists(const char *h, const char *want) {
  size_t wlen = strlen(want);
  for (const char *p = h; p && *p;) {
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    size_t len = strcspn(p, ",;="), trimmed = len;
    while (trimmed && (p[trimmed - 1] == ' ' || p[trimmed - 1] == '\t')) trimmed--;
    if (trimmed == wlen && strncasecmp(p, want, wlen) == 0) return true;
    p += strcspn(p, ",");
  }
  return false;
}

static size_t query_count(const sim_req *req, const char *key) {
  size_t n = 0;
  for (size_t i = 0; i < req->nquery; i++) n += strcmp(req->query[i].key, key) == 0;
  return n;
}

/* A type name as it may be echoed in a message (client-controlled bytes). */
static const char *echo_name(const char *name) {
  for (const char *p = name; *p; p++)
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))) return "(invalid name)";
  return name;
}

/* group-export.md, Notes: the valid _type values, and the types exported
 * only together with one of the others. */
#define VALID_TYPES                                                                              \
  "AllergyIntolerance, CarePlan, CareTeam, Condition, Device, DiagnosticReport, "                \
  "DocumentReference, Encounter, Goal, Immunization, Location, MedicationRequest, Patient, "    \
  "Procedure, Observation, Organization, Practitioner, Provenance"
#define PATIENT_TYPES                                                                            \
  "AllergyIntolerance, CarePlan, CareTeam, Condition, Device, DiagnosticReport, "                \
  "DocumentReference, Encounter, Goal, Immunization, MedicationRequest, Observation, Patient, "  \
  "Procedure"

/* Parses _type into out and *provenance (and, for a reference-server export,
 * its extra types into extra); returns NULL or the 400 message (in msg). */
static const char *parse_export_types(const char *list, bool out[SIM_RT_COUNT], bool *provenance,
                                      bool extra[SIM_REF_EXTRA_COUNT], char *msg, size_t n) {
  memset(out, 0, SIM_RT_COUNT * sizeof *out);
  *provenance = false;
  bool patient_type = false;
  for (const char *p = list;;) {
    size_t len = strcspn(p, ",");
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), p);
    int t = len && len < sizeof name ? sim_rtype_from_name(name) : -1;
    if (len == 0) {
      snprintf(msg, n, "_type: empty type name (send the types comma separated)");
      return msg;
    }
    int k = extra && len < sizeof name ? sim_ref_extra_from_name(name) : -1;
    if (k >= 0) {
      extra[k] = true;
      if (!p[len]) return NULL;
      p += len + 1;
      continue;
    }
    if (len < sizeof name && strcmp(name, "Provenance") == 0) {
      *provenance = true;
    } else if (t == SIM_RT_BINARY) {
      snprintf(msg, n, "Binary is not exported; _type valid values are " VALID_TYPES);
      return msg;
    } else if (t < 0) {
      snprintf(msg, n, "_type: unknown resource type \"%s\"", echo_name(name));
      return msg;
    } else if (extra ? t != SIM_RT_PATIENT && !sim_rtype_per_patient((sim_rtype)t)
                     : !sim_xtype_exportable((sim_rtype)t)) {
      snprintf(msg, n,
               "_type: %s is not supported by the Group export; valid values are " VALID_TYPES,
               name);
      return msg;
    } else {
      out[t] = true;
      patient_type |= !sim_xtype_pool((sim_rtype)t);
    }
    if (!p[len]) break;
    p += len + 1;
  }
  if (!patient_type) {
    snprintf(msg, n,
             "_type: Location, Organization, Practitioner and Provenance are exported only "
             "together with at least one of " PATIENT_TYPES);
    return msg;
  }
  return NULL;
}

/* Kick-off parameters (group-export.md, Parameters); any other is a 400
 * unless the request carries Prefer: handling=lenient. */
static const char *const kickoff_params[] = {"_type", "_typeFilter", "_since",
                                             "includeAssociatedData", "_outputFormat"};

/* True if the Prefer header has the preference handling=lenient. */
static bool prefer_lenient(const char *h) {
  for (const char *p = h; p && *p;) {
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    size_t len = strcspn(p, ",");
    char pref[64];
    size_t w = 0;
    for (size_t i = 0; i < len && w + 1 < sizeof pref; i++)
      if (p[i] != ' ' && p[i] != '\t') pref[w++] = p[i];
    pref[w] = '\0';
    if (strcasecmp(pref, "handling=lenient") == 0) return true;
    p += len;
  }
  return false;
}

/* _typeFilter (group-export.md): needs _type, each query's type among
 * _type (400), no query on Patient or the types only referenced (422), one
 * query per type (400), no refused or unsupported search parameter (422).
 * The queries parsed are stored in the scope; they narrow what is exported.
 * Returns 0 or the status, with the message in msg. */
static unsigned parse_type_filters(const sim_req *req, bool has_type, sim_export *x, char *msg,
                                   size_t n) {
  for (size_t i = 0; i < req->nquery; i++) {
    if (strcmp(req->query[i].key, "_typeFilter") != 0) continue;
    if (!has_type) {
      snprintf(msg, n,
               "_typeFilter requires _type: the resources provided in _typeFilter do not match "
               "the resources supplied in _type");
      return 400;
    }
    char *list = strdup(req->query[i].value), *save = NULL;
    if (!list) {
      snprintf(msg, n, "out of memory");
      return 500;
    }
    unsigned status = 0;
    for (char *q = strtok_r(list, ",", &save); q && !status; q = strtok_r(NULL, ",", &save)) {
      char *mark = strchr(q, '?');
      if (!mark || mark == q || !mark[1]) {
        snprintf(msg, n, "_typeFilter: \"%.60s\" is not <Type>?<query>", echo_name(q));
        status = 422;
        break;
      }
      *mark = '\0';
      bool prov = strcmp(q, "Provenance") == 0;
      int t = sim_rtype_from_name(q);
      if (!(prov ? x->provenance : t >= 0 && x->types[t])) {
        snprintf(msg, n,
                 "_typeFilter: the resources provided in _typeFilter do not match the resources "
                 "supplied in _type (%s)",
                 echo_name(q));
        status = 400;
      } else if (prov || t == SIM_RT_PATIENT || sim_xtype_pool((sim_rtype)t)) {
        snprintf(msg, n,
                 "_typeFilter does not support queries for the following resources: Location, "
                 "Organization, Patient, Practitioner, Provenance (got %s)",
                 q);
        status = 422;
      } else if (x->scope.filters[t]) {
        snprintf(msg, n, "_typeFilter contains multiple queries for the same resource (%s)", q);
        status = 400;
      } else {
        status = (unsigned)sim_xfilter_parse(mark + 1, &x->scope.filters[t], msg, n);
      }
    }
    free(list);
    if (status) return status;
  }
  return 0;
}
/* Appends a query component, escaping only what would change its meaning,
 * so the manifest's `request` reads like the URL the client sent. */
static void put_query_part(sim_buf *b, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
        strchr("-._~:@/?,$!'()*", *p))
      sim_buf_append(b, (const char *)p, 1);
    else
      sim_buf_printf(b, "%%%02X", *p);
  }
}

static char *kickoff_url(const sim_req *req) {
  sim_buf b = {0};
  sim_buf_printf(&b, "%s://%s", sim_scheme(), req->host);
  for (const unsigned char *p = (const unsigned char *)req->path; *p; p++) {
    if (*p > 0x20 && *p < 0x7f && *p != '%')
      sim_buf_append(&b, (const char *)p, 1);
    else
      sim_buf_printf(&b, "%%%02X", *p);
  }
  for (size_t i = 0; i < req->nquery; i++) {
    sim_buf_puts(&b, i ? "&" : "?");
    put_query_part(&b, req->query[i].key);
    sim_buf_puts(&b, "=");
    put_query_part(&b, req->query[i].value);
  }
  return sim_buf_steal(&b, NULL);
}

typedef struct active_scan {
  size_t tenant;
  const char *client_id;
  int64_t now_ms;
  bool found;
} active_scan;

static void visit_active(const char *key, void *value, void *arg) {
  (void)key;
  const sim_export *x = value;
  active_scan *a = arg;
  if (x->tenant == a->tenant && !x->expired && a->now_ms < x->done_ms &&
      strcmp(x->client_id, a->client_id) == 0)
    a->found = true;
}

/* True if the client has an export of this tenant running. Lock held. */
static bool client_busy_locked(sim_state *st, const sim_tenant *t, const char *client_id,
                               int64_t now_ms) {
  active_scan a = {.tenant = t->index, .client_id = client_id, .now_ms = now_ms};
  sim_map_foreach(&st->exports, visit_active, &a);
  return a.found;
}

static int push_file(sim_export *x, size_t *cap, int type, sim_xcursor start, size_t count) {
  if (x->nfiles == *cap) {
    size_t ncap = *cap ? *cap * 2 : 16;
    sim_xfile *f = realloc(x->files, ncap * sizeof *f);
    if (!f) return -1;
    x->files = f;
    *cap = ncap;
  }
  x->files[x->nfiles++] = (sim_xfile){.type = type, .start = start, .count = count};
  return 0;
}

/* Decides which resources go into which file: a walk over every type,
 * cutting a file every file_max_resources resources. Returns 0 or -1 on OOM. */
static int plan_provenance(sim_export *x, size_t *cap, size_t max) {
  sim_xcursor c = {0}, start = {0};
  size_t in_file = 0;
  uint64_t h;
  sim_rtype target;
  for (;;) {
    sim_xcursor before = c;
    if (!sim_xnext_provenance(&x->scope, &c, &target, &h)) break;
    if (in_file == 0) start = before;
    if (++in_file == max) {
      if (push_file(x, cap, SIM_XFILE_PROVENANCE, start, in_file)) return -1;
      in_file = 0;
    }
  }
  return in_file ? push_file(x, cap, SIM_XFILE_PROVENANCE, start, in_file) : 0;
}

static int plan(sim_export *x, const sim_export_settings *cfg) {
  size_t cap = 0, max = (size_t)cfg->file_max_resources;
  if (sim_xscope_collect_pools(&x->scope, x->types) != 0) return -1;
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    /* Alphabetical, Provenance (no sim_rtype) in its place. */
    if (x->provenance && t == SIM_RT_RELATED_PERSON && plan_provenance(x, &cap, max)) return -1;
    if (!x->types[t]) continue;
    sim_xcursor c = {0}, start = {0};
    size_t in_file = 0;
    uint64_t h;
    for (;;) {
      sim_xcursor before = c;
      if (!sim_xnext(&x->scope, (sim_rtype)t, &c, &h)) break;
      if (in_file == 0) start = before;
      if (++in_file == max) {
        if (push_file(x, &cap, t, start, in_file)) return -1;
        in_file = 0;
      }
    }
    if (in_file && push_file(x, &cap, t, start, in_file)) return -1;
  }
  /* A reference-server export's extra types, after the others. */
  for (int k = 0; x->refserver && k < SIM_REF_EXTRA_COUNT; k++) {
    if (!x->extra[k] || x->extra_pp[k] == 0) continue;
    sim_xcursor c = {0}, start = {0};
    size_t in_file = 0;
    uint32_t ordinal, index;
    for (;;) {
      sim_xcursor before = c;
      if (!sim_ref_xnext(&x->scope, x->extra_pp, k, &c, &ordinal, &index)) break;
      if (in_file == 0) start = before;
      if (++in_file == max) {
        if (push_file(x, &cap, SIM_XFILE_EXTRA + k, start, in_file)) return -1;
        in_file = 0;
      }
    }
    if (in_file && push_file(x, &cap, SIM_XFILE_EXTRA + k, start, in_file)) return -1;
  }
  x->noutput = x->nfiles;
  if (cfg->error_file &&
      push_file(x, &cap, SIM_XFILE_ERRORS, (sim_xcursor){0}, SIM_XFILE_ERROR_LINES))
    return -1;
  return 0;
}

static void too_many(sim_resp *resp, long retry_after_s) {
  sim_fhir_outcome(resp, 429, "throttled",
                   "another export of this client is in progress; wait for it to complete "
                   "or DELETE it");
  sim_resp_header(resp, "Retry-After", "%ld", retry_after_s);
}

/* A kick-off refused for its parameters: counted, so a test can assert that
 * a client never sent one. */
static bool invalid(sim_req *req, sim_resp *resp, unsigned status, const char *msg) {
  sim_count_export(req->st, req->tenant, SIM_XCOUNT_INVALID);
  sim_fhir_outcome(resp, status, "invalid", msg);
  return false;
}

/* Validates the kick-off; returns false after filling resp with the error. */
static bool kickoff_checks(sim_req *req, sim_resp *resp, const char *scopes, sim_export *x) {
  const char *prefer = sim_req_header(req, "Prefer");
  const char *accept = sim_req_header(req, "Accept");
  char msg[512];
  if (!prefer || !header_lists(prefer, "respond-async")) {
    sim_fhir_outcome(resp, 400, "invalid",
                     "$export requires the header Prefer: respond-async (it runs asynchronously)");
    return false;
  }
  if (!accept || !header_lists(accept, "application/fhir+json")) {
    sim_fhir_outcome(resp, 400, "invalid", "$export requires the header Accept: application/fhir+json");
    return false;
  }
  /* bulk-data.md, Lenient Workflow: unknown or unsupported parameters are a
   * 400 unless Prefer: handling=lenient says to ignore them. */
  if (!prefer_lenient(prefer)) {
    for (size_t i = 0; i < req->nquery; i++) {
      size_t k = 0, nk = sizeof kickoff_params / sizeof *kickoff_params;
      while (k < nk && strcmp(req->query[i].key, kickoff_params[k]) != 0) k++;
      if (k < nk) continue;
      snprintf(msg, sizeof msg,
               "Unsupported parameters are passed to the export request: %.64s (supported: "
               "_type, _typeFilter, _since, includeAssociatedData, _outputFormat; send Prefer: "
               "handling=lenient to have others ignored)",
               echo_name(req->query[i].key));
      return invalid(req, resp, 400, msg);
    }
  }
  if (query_count(req, "_type") > 1)
    return invalid(req, resp, 400, "_type must be sent once, comma separated");
  static const char *const once[] = {"_since", "_outputFormat", "includeAssociatedData"};
  for (size_t i = 0; i < sizeof once / sizeof *once; i++) {
    if (query_count(req, once[i]) > 1) {
      snprintf(msg, sizeof msg, "%s must be sent once", once[i]);
      return invalid(req, resp, 400, msg);
    }
  }
  const char *types = sim_req_query(req, "_type");
  if (types && parse_export_types(types, x->types, &x->provenance,
                                      x->refserver ? x->extra : NULL, msg, sizeof msg))
    return invalid(req, resp, 400, msg);
  const char *assoc = sim_req_query(req, "includeAssociatedData");
  if (assoc) {
    char *copy = strdup(assoc), *save = NULL;
    bool ok = copy != NULL;
    for (char *v = copy ? strtok_r(copy, ",", &save) : NULL; ok && v;
         v = strtok_r(NULL, ",", &save))
      ok = strcmp(v, "LatestProvenanceResources") == 0 ||
           strcmp(v, "RelevantProvenanceResources") == 0;
    free(copy);
    if (!ok)
      return invalid(req, resp, 400,
                     "includeAssociatedData: valid values are LatestProvenanceResources and "
                     "RelevantProvenanceResources");
    if (types && !x->provenance)
      return invalid(req, resp, 400,
                     "When both the includeAssociatedData parameter and the _type parameter are "
                     "provided, the _type parameter MUST include Provenance");
  }
  unsigned fs = parse_type_filters(req, types != NULL, x, msg, sizeof msg);
  if (fs) return invalid(req, resp, fs, msg);
  const char *format = sim_req_query(req, "_outputFormat");
  if (format && strcmp(format, "application/fhir+ndjson") != 0 &&
      strcmp(format, "application/ndjson") != 0 && strcmp(format, "ndjson") != 0)
    return invalid(req, resp, 400,
                   "_outputFormat: only application/fhir+ndjson (also application/ndjson, "
                   "ndjson) is supported");
  const char *since = sim_req_query(req, "_since");
  int64_t hi;
  if (since && sim_fhir_parse_instant(since, &x->scope.since_ms, &hi) != 0)
    return invalid(req, resp, 400, "_since: expected a FHIR instant such as 2024-06-01T00:00:00Z");
  x->scope.has_since = since != NULL;
  /* Without _type: every type the token can read (group-export.md), the
   * pool types and Provenance included; the reference server exports Patient
   * and the patient-compartment types (and its other types, below). */
  if (!types && x->refserver) {
    for (int t = 0; t < SIM_RT_COUNT; t++)
      x->types[t] = (t == SIM_RT_PATIENT || sim_rtype_per_patient((sim_rtype)t)) &&
                    sim_fhir_scope_allows_read(scopes, sim_rtype_name((sim_rtype)t));
  } else if (!types) {
    for (int t = 0; t < SIM_RT_COUNT; t++)
      x->types[t] = sim_xtype_exportable((sim_rtype)t) &&
                    sim_fhir_scope_allows_read(scopes, sim_rtype_name((sim_rtype)t));
    x->provenance = sim_fhir_scope_allows_read(scopes, "Provenance");
  }
  /* The reference server exports its other types too (whatever the scopes:
   * it checks scopes per resource type only where it knows them). */
  for (int k = 0; !types && x->refserver && k < SIM_REF_EXTRA_COUNT; k++) x->extra[k] = true;
  for (int t = 0; t < SIM_RT_COUNT; t++) {
    if (x->types[t] && !sim_fhir_scope_allows_read(scopes, sim_rtype_name((sim_rtype)t))) {
      sim_fhir_forbidden(resp, sim_rtype_name((sim_rtype)t));
      return false;
    }
  }
  if (x->provenance && !sim_fhir_scope_allows_read(scopes, "Provenance")) {
    sim_fhir_forbidden(resp, "Provenance");
    return false;
  }
  /* Provenance of Location, Organization and Practitioner is not exported. */
  for (int t = 0; t < SIM_RT_COUNT; t++)
    x->scope.provenance[t] = x->provenance && x->types[t] && !sim_xtype_pool((sim_rtype)t);
  return true;
}

static void kickoff_answer(sim_req *req, sim_resp *resp, const sim_group *g, const char *scopes,
                           const char *client_id);

/* Every kick-off that passed authentication is logged with its query exactly
 * as received (still percent-encoded) and the status it got, so tests can
 * check how a client encodes _type, _since and _typeFilter: the decoded
 * arguments the checks use cannot show that, and accepted exports are gone
 * from the export list once deleted. */
static void kickoff(sim_req *req, sim_resp *resp, const sim_group *g, const char *scopes,
                    const char *client_id) {
  kickoff_answer(req, resp, g, scopes, client_id);
  char when[32];
  sim_fhir_instant_ms(sim_now_ms(), when);
  json_t *entry = json_pack("{s:s, s:s, s:s, s:s, s:i}", "time", when, "client_id", client_id,
                            "group", g->id, "query_raw", req->raw_query, "status",
                            (int)resp->status);
  if (!entry) return;
  sim_state *st = req->st;
  pthread_mutex_lock(&st->lock);
  json_t *log = req->tenant->counters.kickoffs;
  if (json_array_size(log) >= SIM_KICKOFF_LOG) json_array_remove(log, 0);
  json_array_append_new(log, entry);
  pthread_mutex_unlock(&st->lock);
}

static void kickoff_answer(sim_req *req, sim_resp *resp, const sim_group *g, const char *scopes,
                           const char *client_id) {
  sim_state *st = req->st;
  sim_tenant *t = req->tenant;
  sim_export *x = calloc(1, sizeof *x);
  unsigned char raw[SIM_EXPORT_ID_BYTES];
  if (x) atomic_init(&x->refs, 1);
  if (!x || RAND_bytes(raw, sizeof raw) != 1) goto oom;
  for (size_t i = 0; i < sizeof raw; i++) snprintf(x->id + 2 * i, 3, "%02x", raw[i]);
  x->tenant = t->index;
  x->scope = (sim_xscope){.store = t->store, .group = g};
  x->refserver = t->ref.enabled;
  memcpy(x->extra_pp, t->ref.extra, sizeof x->extra_pp);
  if (!kickoff_checks(req, resp, scopes, x)) {
    sim_export_unref(x);
    return;
  }
  x->client_id = strdup(client_id);
  x->request = kickoff_url(req);
  snprintf(x->host, sizeof x->host, "%s", req->host);
  if (!x->client_id || !x->request) goto oom;

  /* A cheap look first, so a refused kick-off costs no planning. */
  int64_t now = sim_now_ms();
  pthread_mutex_lock(&st->lock);
  sim_export_settings cfg = t->export_settings;
  /* One export per client and tenant is Cerner's rule, not the reference server's. */
  bool busy = !x->refserver && client_busy_locked(st, t, client_id, now);
  if (busy) t->counters.export_refused++;
  pthread_mutex_unlock(&st->lock);
  if (busy) {
    too_many(resp, cfg.retry_after_s);
    sim_export_unref(x);
    return;
  }
  if (plan(x, &cfg) != 0) goto oom;
  x->kickoff_ms = now;
  x->done_ms = now + cfg.duration_ms;

  /* Check again: another kick-off of the client may have won meanwhile. */
  pthread_mutex_lock(&st->lock);
  busy = !x->refserver && client_busy_locked(st, t, client_id, sim_now_ms());
  int rc = busy ? 0 : sim_map_put(&st->exports, x->id, x);
  if (busy) {
    t->counters.export_refused++;
  } else if (rc == 0) {
    x->fail = t->export_fail_next;
    t->export_fail_next = false;
    t->counters.export_kickoffs++;
  }
  long retry_after = t->export_settings.retry_after_s;
  pthread_mutex_unlock(&st->lock);
  if (busy) {
    too_many(resp, retry_after);
    sim_export_unref(x);
    return;
  }
  if (rc != 0) goto oom;
  /* The map owns x now; x->id is immutable, so it may be read unlocked. */
  if (x->refserver) {
    /* {origin}/fhir/bulkstatus/{id}: outside the FHIR base's path, as the
     * reference server builds it (ExportManager.ts), with an OperationOutcome. */
    char *url = sim_ref_status_url(req->host, x->id);
    if (!url) goto oom_mapped;
    char diag[300];
    snprintf(diag, sizeof diag,
             "Your request has been accepted. You can check its status at \"%s\"", url);
    json_t *oo = json_pack("{s:s, s:[{s:s, s:s, s:s}]}", "resourceType", "OperationOutcome",
                           "issue", "severity", "information", "code", "informational",
                           "diagnostics", diag);
    sim_resp_json(resp, 202, SIM_CT_FHIR, oo);
    sim_resp_header(resp, "Content-Location", "%s", url);
    free(url);
    return;
  }
  sim_resp_body(resp, 202, NULL, NULL, 0);
  sim_resp_header(resp, "Content-Location", "%s://%s/r4/%s" JOBS "%s", sim_scheme(), req->host,
                  t->id, x->id);
  return;
oom_mapped:
  sim_fhir_outcome(resp, 500, "exception", "out of memory");
  return;
oom:
  sim_export_unref(x);
  sim_fhir_outcome(resp, 500, "exception", "out of memory");
}

/* ---- status, delete, files ---- */

static void http_date(int64_t ms, char out[64]) {
  time_t when = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&when, &tm);
  strftime(out, 64, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

static json_t *manifest(const sim_req *req, const sim_export *x) {
  char when[32], url[512];
  sim_fhir_instant_ms(x->kickoff_ms, when);
  json_t *output = json_array(), *error = json_array();
  for (size_t f = 0; output && error && f < x->nfiles; f++) {
    char *ref_url = x->refserver
                        ? sim_ref_file_url(req->host, x->id, f + 1, sim_export_file_type(x, f))
                        : NULL;
    snprintf(url, sizeof url, "%s://%s/r4/%s" JOBS "%s/files/%zu", sim_scheme(), req->host,
             req->tenant->id, x->id, f + 1);
    json_t *entry =
        f < x->noutput
            ? json_pack("{s:s, s:s, s:I}", "type", sim_export_file_type(x, f), "url",
                        ref_url ? ref_url : url, "count", (json_int_t)x->files[f].count)
            : json_pack("{s:s, s:s}", "type", "OperationOutcome", "url", ref_url ? ref_url : url);
    free(ref_url);
    if (json_array_append_new(f < x->noutput ? output : error, entry)) {
      json_decref(output);
      output = NULL;
    }
  }
  if (!output || !error) {
    json_decref(output);
    json_decref(error);
    return NULL;
  }
  return json_pack("{s:s, s:s, s:b, s:o, s:o}", "transactionTime", when, "request", x->request,
                   "requiresAccessToken", 1, "output", output, "error", error);
}

static void status(sim_req *req, sim_resp *resp, const char *id, const char *client_id) {
  sim_state *st = req->st;
  int64_t now = sim_now_ms();
  pthread_mutex_lock(&st->lock);
  sim_export *x = find_locked(st, req->tenant, id, now);
  long retry_after = req->tenant->export_settings.retry_after_s;
  req->tenant->counters.export_polls++;
  pthread_mutex_unlock(&st->lock);
  if (!x) {
    not_found(resp, id);
    return;
  }
  if (other_client(req, resp, x, client_id)) {
  } else if (now < x->done_ms) {
    int64_t span = x->done_ms - x->kickoff_ms;
    long pct = span > 0 ? (long)((now - x->kickoff_ms) * 100 / span) : 99;
    sim_resp_body(resp, 202, NULL, NULL, 0);
    pct = pct < 0 ? 0 : pct > 99 ? 99 : pct;
    if (x->refserver)
      sim_resp_header(resp, "X-Progress", "%ld%% complete, generating files", pct);
    else
      sim_resp_header(resp, "X-Progress", "%ld%% complete", pct);
    sim_resp_header(resp, "Retry-After", "%ld", retry_after);
  } else if (x->fail) {
    sim_fhir_outcome(resp, 500, "exception",
                     "the export failed: an internal error stopped it (fail_next was set); "
                     "kick off a new export");
  } else {
    char expires[64];
    http_date(x->done_ms + SIM_EXPORT_TTL_MS, expires);
    sim_resp_json(resp, 200, SIM_CT_JSON, manifest(req, x));
    sim_resp_header(resp, "Expires", "%s", expires);
  }
  sim_export_unref(x);
}

static void delete_job(sim_req *req, sim_resp *resp, const char *id, const char *client_id) {
  sim_state *st = req->st;
  pthread_mutex_lock(&st->lock);
  sim_export *x = find_locked(st, req->tenant, id, sim_now_ms());
  bool mine = x && client_id && strcmp(x->client_id, client_id) == 0;
  if (mine) {
    sim_export_unref(x); /* ours; the map still holds one */
    sim_map_remove(&st->exports, id);
    req->tenant->counters.export_deletes++;
  }
  pthread_mutex_unlock(&st->lock);
  if (mine) {
    sim_resp_body(resp, 202, NULL, NULL, 0);
  } else if (x) {
    other_client(req, resp, x, client_id);
    sim_export_unref(x);
  } else {
    not_found(resp, id);
  }
}

/* "http://host:port" of the storage server for this request: the address
 * it listens on, or with a wildcard bind (0.0.0.0, ::, as in a container)
 * the name the client used for this server, with the storage port. */
static void storage_origin(const sim_req *req, char *out, size_t n) {
  const sim_state *st = req->st;
  if (!st->storage_any_host) {
    snprintf(out, n, "%s", st->storage_origin);
    return;
  }
  const char *h = req->host, *colon = strrchr(h, ':');
  size_t len = strlen(h);
  if (h[0] == '[')
    len = strchr(h, ']') ? (size_t)(strchr(h, ']') - h) + 1 : len;
  else if (colon && strchr(h, ':') == colon)
    len = (size_t)(colon - h);
  snprintf(out, n, "http://%.*s:%u", (int)len, h, st->storage_port);
}

static void file_redirect(sim_req *req, sim_resp *resp, const char *id, const char *n_text,
                          const char *client_id) {
  sim_state *st = req->st;
  char *end;
  unsigned long n = strtoul(n_text, &end, 10);
  bool number = *n_text >= '1' && *n_text <= '9' && !*end;
  int64_t now = sim_now_ms();
  pthread_mutex_lock(&st->lock);
  sim_export *x = number ? find_locked(st, req->tenant, id, now) : NULL;
  pthread_mutex_unlock(&st->lock);
  if (!x || now < x->done_ms || x->fail || n > x->nfiles) {
    char diag[200];
    snprintf(diag, sizeof diag, "file %s of export %s was not found", number ? n_text : "(invalid)",
             job_id_valid(id) ? id : "(invalid id)");
    sim_fhir_outcome(resp, 404, "not-found", diag);
  } else if (other_client(req, resp, x, client_id)) {
  } else if (!header_lists(sim_req_header(req, "Accept"), CT_NDJSON)) {
    sim_fhir_outcome(resp, 406, "not-supported",
                     "export files are served as Accept: application/fhir+ndjson");
  } else {
    char sig[65], origin[300];
    sim_export_sign(st, x->id, n, sig);
    storage_origin(req, origin, sizeof origin);
    sim_count_export(st, req->tenant, SIM_XCOUNT_FILE);
    sim_resp_body(resp, 307, NULL, NULL, 0);
    sim_resp_header(resp, "Location",
                    "%s/storage/%s-%lu.ndjson.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=%s",
                    origin, x->id, n, sig);
  }
  sim_export_unref(x);
}

/* ---- reference server mode: status and files outside the FHIR base ---- */

static void method_not_allowed(sim_resp *resp, const char *allowed);

/* GET {origin}/{settings}/fhir/bulkfiles/{n}.{Type}.ndjson: the file itself,
 * 200 application/fhir+ndjson (the reference server streams it; no redirect,
 * no gzip), built in memory so that faults can rewrite it. */
static void ref_file(sim_req *req, sim_resp *resp, const char *id, unsigned long n) {
  sim_state *st = req->st;
  int64_t now = sim_now_ms();
  pthread_mutex_lock(&st->lock);
  sim_export *x = find_locked(st, req->tenant, id, now);
  pthread_mutex_unlock(&st->lock);
  if (!x || now < x->done_ms || x->fail || n == 0 || n > x->nfiles) {
    sim_fhir_outcome(resp, 404, "not-found", "The requested file was not found");
    sim_export_unref(x);
    return;
  }
  sim_buf b = {0};
  sim_xcursor c = x->files[n - 1].start;
  size_t done = 0;
  sim_export_write_lines(x, n - 1, &c, &done, SIZE_MAX, &b);
  size_t len;
  char *body = b.oom ? NULL : sim_buf_steal(&b, &len);
  sim_buf_free(&b);
  sim_export_unref(x);
  if (!body) {
    sim_fhir_outcome(resp, 500, "exception", "out of memory");
    return;
  }
  sim_count_export(st, req->tenant, SIM_XCOUNT_FILE);
  sim_resp_body(resp, 200, CT_NDJSON, body, len);
}

void sim_ref_export_handle(sim_req *req, sim_resp *resp, const char *client_id) {
  char id[SIM_EXPORT_ID_LEN + 1];
  unsigned long file = 0;
  int kind = sim_ref_parse_path(req->path, id, &file);
  bool get = strcmp(req->method, "GET") == 0, del = strcmp(req->method, "DELETE") == 0;
  if (kind == SIM_REF_PATH_FILE) {
    if (get)
      ref_file(req, resp, id, file);
    else
      method_not_allowed(resp, "GET");
  } else if (kind == SIM_REF_PATH_STATUS && get) {
    status(req, resp, id, client_id);
  } else if (kind == SIM_REF_PATH_STATUS && del) {
    delete_job(req, resp, id, client_id);
  } else if (kind == SIM_REF_PATH_STATUS) {
    method_not_allowed(resp, "GET and DELETE");
  } else {
    sim_fhir_outcome(resp, 404, "not-found", "no such bulk export URL");
  }
}

/* ---- routing ---- */

static bool has_prefix(const char *s, const char *prefix) {
  size_t n = strlen(prefix);
  return strncmp(s, prefix, n) == 0 && (s[n] == '\0' || s[n] == '/');
}

bool sim_export_path(const char *subpath) {
  return has_prefix(subpath, "/Group") || has_prefix(subpath, "/bulk-export");
}

static void method_not_allowed(sim_resp *resp, const char *allowed) {
  char diag[96];
  snprintf(diag, sizeof diag, "this URL answers %s only", allowed);
  sim_fhir_outcome(resp, 405, "not-supported", diag);
}

static void group_route(sim_req *req, sim_resp *resp, const char *rest, const char *scopes,
                        const char *client_id) {
  bool get = strcmp(req->method, "GET") == 0;
  char id[80];
  size_t len = strcspn(rest, "/");
  const char *after = rest + len;
  if (len == 0 || len >= sizeof id || (*after && strcmp(after, "/$export") != 0)) {
    sim_fhir_outcome(resp, 404, "not-supported",
                     "Group supports read (Group/{id}) and $export (Group/{id}/$export) only");
    return;
  }
  if (!get) {
    method_not_allowed(resp, "GET");
    return;
  }
  memcpy(id, rest, len);
  id[len] = '\0';
  const sim_group *g = sim_group_id_valid(id) ? sim_group_find(req->tenant, id) : NULL;
  if (!g) {
    char diag[120];
    snprintf(diag, sizeof diag, "Group/%s was not found",
             sim_group_id_valid(id) ? id : "(invalid id)");
    sim_fhir_outcome(resp, 404, "not-found", diag);
  } else if (*after) {
    kickoff(req, resp, g, scopes, client_id);
  } else if (!sim_fhir_scope_allows_read(scopes, "Group")) {
    sim_fhir_forbidden(resp, "Group");
  } else {
    read_group(req, resp, g);
  }
}

static void jobs_route(sim_req *req, sim_resp *resp, const char *rest, const char *client_id) {
  bool get = strcmp(req->method, "GET") == 0, del = strcmp(req->method, "DELETE") == 0;
  char id[80];
  size_t len = strcspn(rest, "/");
  const char *after = rest + len;
  if (len == 0 || len >= sizeof id || (*after && strncmp(after, "/files/", 7) != 0) ||
      (*after && (!after[7] || strchr(after + 7, '/')))) {
    sim_fhir_outcome(resp, 404, "not-found", "no such bulk export URL");
    return;
  }
  memcpy(id, rest, len);
  id[len] = '\0';
  if (*after) {
    if (get)
      file_redirect(req, resp, id, after + 7, client_id);
    else
      method_not_allowed(resp, "GET");
  } else if (get) {
    status(req, resp, id, client_id);
  } else if (del) {
    delete_job(req, resp, id, client_id);
  } else {
    method_not_allowed(resp, "GET and DELETE");
  }
}

void sim_export_handle(sim_req *req, sim_resp *resp, const char *scopes, const char *client_id) {
  const char *sub = req->subpath;
  if (strncmp(sub, "/Group/", 7) == 0)
    group_route(req, resp, sub + 7, scopes, client_id);
  else if (strncmp(sub, JOBS, strlen(JOBS)) == 0)
    jobs_route(req, resp, sub + strlen(JOBS), client_id);
  else if (strcmp(sub, "/Group") == 0)
    sim_fhir_outcome(resp, 404, "not-supported",
                     "Group supports read (Group/{id}) and $export (Group/{id}/$export) only");
  else
    sim_fhir_outcome(resp, 404, "not-found", "no such bulk export URL");
}
