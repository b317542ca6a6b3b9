#include "worker/cli/jobinput.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "worker/cli/csv.h"
#include "worker/model/resources.h"
#include "worker/model/strset.h"

/* Patients that share tenant, resources, since and follow_references, on
 * their way into jobs of `batch`. */
typedef struct group {
  char *tenant;
  fx_types types; /* the line's explicit resources; none = the tenant's query set */
  char *since;
  int follow;
  char **pending;
  size_t n_pending;
  fx_strset *seen; /* every patient of the group so far, to drop repeats */
} group;

enum { COL_PATIENT, COL_TENANT, COL_RESOURCES, COL_SINCE, COL_FOLLOW, N_COLS };
static const char *const col_names[N_COLS] = {NULL, "tenant", "resources", "since",
                                              "follow_references"};
#define MAX_CSV_FIELDS 64

struct fx_jobin {
  const fx_profile_set *ps;
  const fx_job_limits *lim;
  fx_jobin_opts o;
  fx_jobin_bad_fn bad;
  void *arg;
  fx_types default_types;
  group *groups;
  size_t n_groups, cap_groups;
  json_t *group_index; /* group key -> index into groups */
  fx_jobin_job *jobs;
  size_t n_jobs, cap_jobs;
  fx_strset *tenants;
  fx_strset *ids; /* the job ids given so far: each names one job */
  fx_jobin_stats st;
  unsigned long next_number; /* for prefix-NNNNNN */
  int csv_cols[N_COLS];      /* column index, -1 when absent */
  size_t csv_width;
  char failed[512]; /* a job we built that the workers would reject ("" = none) */
};

static void bad(fx_jobin *in, unsigned long line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reports a bad line and leaves the function that found it. */
#define REJECT(...) \
  do {              \
    bad(__VA_ARGS__); \
    return;         \
  } while (0)

static void bad(fx_jobin *in, unsigned long line, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  in->st.bad_lines++;
  if (in->bad) in->bad(line, msg, in->arg);
}

/* ---- types ---------------------------------------------------------------- */

/* Resource types separated by any of `seps`; 0 and a message when a name is
 * not a type fhirx extracts. */
static int parse_types(const char *list, const char *seps, fx_types *out, char *why,
                       size_t size) {
  char *copy = strdup(list), *save = NULL;
  fx_types set = FX_TYPES_NONE;
  int rc = 0;
  for (char *t = copy ? strtok_r(copy, seps, &save) : NULL; t; t = strtok_r(NULL, seps, &save)) {
    int idx = fx_resource_index(t);
    if (idx < 0) {
      snprintf(why, size,
               "resources: '%.64s' is not an R4 resource type fhirx extracts (names are "
               "case-sensitive: Observation)",
               t);
      rc = -1;
      break;
    }
    fx_types_add(&set, idx);
  }
  free(copy);
  if (!rc && fx_types_empty(set)) {
    snprintf(why, size, "resources: no resource type given");
    rc = -1;
  }
  *out = set;
  return rc;
}

static json_t *types_json(fx_types types) {
  json_t *a = json_array();
  for (int i = fx_types_next(types, 0); a && i >= 0; i = fx_types_next(types, i + 1))
    json_array_append_new(a, json_string(fx_type_names[i]));
  return a;
}

/* ---- jobs ----------------------------------------------------------------- */

static char *dump(const json_t *o) { return json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER); }

/* "job-" + 16 hex digits of SHA-256 over the job's content (without its id),
 * keys sorted: the same job gets the same id however it was written. */
static void derive_id(const json_t *content, char out[32]) {
  char *text = json_dumps(content, JSON_COMPACT | JSON_SORT_KEYS);
  unsigned char d[32] = {0};
  unsigned int n = 0;
  if (text) EVP_Digest(text, strlen(text), d, &n, EVP_sha256(), NULL);
  free(text);
  snprintf(out, 32, "job-");
  for (int i = 0; i < 8; i++) snprintf(out + 4 + 2 * i, 3, "%02x", d[i]);
}

/* Validates a job we built with the workers' rules, with the real limits. */
static int check_job(fx_jobin *in, const json_t *doc, size_t *patients, int *bulk) {
  fx_job *job = NULL;
  fx_job_error jerr;
  if (fx_job_from_json(doc, in->ps, in->lim, &job, &jerr) != 0) {
    if (!in->failed[0])
      snprintf(in->failed, sizeof in->failed, "job %s would be rejected by the workers (%s): %s",
               jerr.job_id[0] ? jerr.job_id : "(no id)", fx_errclass_name(jerr.cls), jerr.msg);
    return -1;
  }
  *patients = job->n_tasks;
  *bulk = job->kind == FX_JOB_BULK;
  fx_job_free(job);
  return 0;
}

/* Adds content (without job_id; stolen) as the next job, giving it an id
 * unless it has one. */
static void add_job(fx_jobin *in, json_t *content) {
  const char *own = json_string_value(json_object_get(content, "job_id"));
  char id[160];
  if (own) {
    snprintf(id, sizeof id, "%s", own);
  } else if (in->o.job_id) {
    snprintf(id, sizeof id, "%s", in->o.job_id);
  } else if (in->o.id_prefix) {
    snprintf(id, sizeof id, "%s-%06lu", in->o.id_prefix, ++in->next_number);
  } else {
    derive_id(content, id);
  }
  json_t *job = json_pack("{s:s}", "job_id", id);
  const char *k;
  json_t *v;
  json_object_foreach(content, k, v) {
    if (strcmp(k, "job_id") != 0) json_object_set(job, k, v);
  }
  json_decref(content);
  char *text = dump(job);
  const char *tenant = json_string_value(json_object_get(job, "tenant"));
  size_t patients = 0;
  int bulk = 0;
  if (!text || check_job(in, job, &patients, &bulk) != 0) {
    free(text);
    json_decref(job);
    return;
  }
  /* Two jobs with one id would be one job to everything downstream (status,
   * dead letters, replay). --job-id is checked by fx_jobin_finish. */
  int fresh = in->o.job_id ? 1 : fx_strset_add(in->ids, id);
  if (fresh != 1) {
    if (!in->failed[0])
      snprintf(in->failed, sizeof in->failed,
               fresh == 0 ? "two jobs of the input have the job_id %s (a job written twice, or "
                            "one id given to two jobs); a job id names one job: drop the "
                            "repeated job or give each its own job_id"
                          : "out of memory (job %s)",
               id);
    free(text);
    json_decref(job);
    return;
  }
  if (in->n_jobs == in->cap_jobs) {
    size_t cap = in->cap_jobs ? 2 * in->cap_jobs : 64;
    fx_jobin_job *grown = realloc(in->jobs, cap * sizeof *grown);
    if (!grown) {
      snprintf(in->failed, sizeof in->failed, "out of memory");
      free(text);
      json_decref(job);
      return;
    }
    in->jobs = grown;
    in->cap_jobs = cap;
  }
  fx_jobin_job *j = &in->jobs[in->n_jobs++];
  j->job_id = strdup(id);
  j->tenant = strdup(tenant ? tenant : "");
  j->text = text;
  j->len = strlen(text);
  j->patients = patients;
  in->st.patients += patients;
  in->st.jobs++;
  in->st.bulk_jobs += bulk ? 1 : 0;
  if (tenant && fx_strset_add(in->tenants, tenant) == 1) in->st.tenants++;
  json_decref(job);
}

static void emit_group(fx_jobin *in, group *g) {
  if (!g->n_pending) return;
  json_t *pats = json_array();
  for (size_t i = 0; i < g->n_pending; i++) {
    json_array_append_new(pats, json_string(g->pending[i]));
    free(g->pending[i]);
  }
  g->n_pending = 0;
  json_t *o = json_pack("{s:s, s:o}", "tenant", g->tenant, "patients", pats);
  if (!fx_types_empty(g->types)) json_object_set_new(o, "resources", types_json(g->types));
  if (g->since) json_object_set_new(o, "since", json_string(g->since));
  if (g->follow) json_object_set_new(o, "follow_references", json_true());
  add_job(in, o);
}

static group *group_for(fx_jobin *in, const char *tenant, fx_types types, const char *since,
                        int follow) {
  char key[320], set[64] = "";
  for (size_t k = 0; k < sizeof types.w / sizeof types.w[0]; k++)
    snprintf(set + strlen(set), sizeof set - strlen(set), "%016llx",
             (unsigned long long)types.w[k]);
  snprintf(key, sizeof key, "%s|%s|%s|%d", tenant, set, since ? since : "", follow);
  json_t *idx = json_object_get(in->group_index, key);
  if (idx) return &in->groups[json_integer_value(idx)];
  if (in->n_groups == in->cap_groups) {
    size_t cap = in->cap_groups ? 2 * in->cap_groups : 8;
    group *grown = realloc(in->groups, cap * sizeof *grown);
    if (!grown) return NULL;
    in->groups = grown;
    in->cap_groups = cap;
  }
  group *g = &in->groups[in->n_groups];
  memset(g, 0, sizeof *g);
  g->tenant = strdup(tenant);
  g->since = since ? strdup(since) : NULL;
  g->types = types;
  g->follow = follow;
  g->pending = calloc(in->o.batch, sizeof *g->pending);
  g->seen = fx_strset_new();
  if (!g->tenant || (since && !g->since) || !g->pending || !g->seen) {
    free(g->tenant);
    free(g->since);
    free(g->pending);
    if (g->seen) fx_strset_free(g->seen);
    return NULL;
  }
  json_object_set_new(in->group_index, key, json_integer((json_int_t)in->n_groups));
  return &in->groups[in->n_groups++];
}

/* One patient with its settings, from any input: validated as a job of one
 * patient with the workers' rules, then batched. */
static void add_patient(fx_jobin *in, unsigned long line, const char *patient, const char *tenant,
                        fx_types types, const char *since, int follow) {
  if (!tenant) {
    bad(in, line, "no tenant: give --tenant, or a tenant for the line");
    return;
  }
  if (fx_types_empty(types)) types = in->default_types;
  json_t *probe = json_pack("{s:s, s:s, s:[s]}", "job_id", "probe", "tenant", tenant, "patients",
                            patient);
  if (!fx_types_empty(types)) json_object_set_new(probe, "resources", types_json(types));
  if (since) json_object_set_new(probe, "since", json_string(since));
  if (follow) json_object_set_new(probe, "follow_references", json_true());
  fx_job *job = NULL;
  fx_job_error jerr;
  int rc = fx_job_from_json(probe, in->ps, in->lim, &job, &jerr);
  json_decref(probe);
  fx_job_free(job);
  if (rc != 0) {
    if (jerr.cls == FX_EC_UNKNOWN_TENANT)
      bad(in, line, "tenant '%.64s' is not configured (add it under tenants[] in the config)",
          tenant);
    else if (strcmp(jerr.field, "patients[0]") == 0) /* the line's one patient */
      bad(in, line, "patient: %s", fx_job_error_text(&jerr));
    else
      bad(in, line, "%s", jerr.msg);
    return;
  }
  group *g = group_for(in, tenant, types, since, follow);
  if (!g) {
    bad(in, line, "out of memory");
    return;
  }
  int added = fx_strset_add(g->seen, patient);
  if (added == 0) {
    in->st.duplicates++;
    return;
  }
  if (added < 0 || !(g->pending[g->n_pending] = strdup(patient))) {
    bad(in, line, "out of memory");
    return;
  }
  if (++g->n_pending == in->o.batch) emit_group(in, g);
}

/* ---- bulk ------------------------------------------------------------------ */

/* The parser names JSON fields ("resources[1]: ...", "type_filter[0]: ...");
 * the operator gave options: name those instead. */
static void option_error(char *out, size_t size, const fx_job_error *e,
                         const char *const *type_filters, size_t n_type_filters) {
  static const char *const fields[] = {"resources", "type_filter", "group", "since"};
  static const char *const options[] = {"--resources", "--type-filter", "--group", "--since"};
  for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
    size_t n = strlen(fields[f]);
    if (strncmp(e->field, fields[f], n) != 0 || (e->field[n] && e->field[n] != '[')) continue;
    size_t idx = e->field[n] == '[' ? strtoul(e->field + n + 1, NULL, 10) : (size_t)-1;
    if (f == 1 && idx < n_type_filters)
      snprintf(out, size, "--type-filter '%.80s': %s", type_filters[idx], fx_job_error_text(e));
    else
      snprintf(out, size, "%s: %s", options[f], fx_job_error_text(e));
    return;
  }
  snprintf(out, size, "%s", e->msg);
}

int fx_jobin_bulk(fx_jobin *in, const char *group_id, const char *const *type_filters,
                  size_t n_type_filters, fx_err *err) {
  const fx_config *cfg = in->ps->cfg;
  const char *tenant = in->o.tenant;
  if (!tenant && cfg->n_tenants == 1) tenant = cfg->tenants[0].id;
  if (!tenant)
    return fx_err_set(err, FX_EINVAL,
                      "--tenant: the config has %zu tenants; name the one whose Group to export",
                      cfg->n_tenants);
  json_t *o = json_pack("{s:s, s:s, s:s}", "kind", "bulk", "tenant", tenant, "group", group_id);
  if (!o) return fx_err_set(err, FX_ENOMEM, "out of memory");
  if (!fx_types_empty(in->default_types))
    json_object_set_new(o, "resources", types_json(in->default_types));
  if (in->o.since) json_object_set_new(o, "since", json_string(in->o.since));
  if (n_type_filters) {
    json_t *tf = json_array();
    for (size_t i = 0; i < n_type_filters; i++)
      json_array_append_new(tf, json_string(type_filters[i]));
    json_object_set_new(o, "type_filter", tf);
  }
  if (in->o.follow_references) json_object_set_new(o, "follow_references", json_true());
  /* Checked first with the workers' rules, so a mistake is reported against
   * the option rather than as a job the workers would reject. */
  json_t *probe = json_deep_copy(o);
  if (probe) json_object_set_new(probe, "job_id", json_string("probe"));
  fx_job *job = NULL;
  fx_job_error jerr;
  int rc = fx_job_from_json(probe, in->ps, in->lim, &job, &jerr);
  json_decref(probe);
  fx_job_free(job);
  if (rc != 0) {
    json_decref(o);
    char msg[700];
    option_error(msg, sizeof msg, &jerr, type_filters, n_type_filters);
    return fx_err_set(err, FX_EINVAL, "%s", msg);
  }
  size_t before = in->n_jobs;
  add_job(in, o);
  if (in->n_jobs == before)
    return fx_err_set(err, FX_EINVAL, "%s", in->failed[0] ? in->failed : "out of memory");
  return 0;
}

/* ---- the inputs ------------------------------------------------------------ */

void fx_jobin_patient(fx_jobin *in, unsigned long pos, const char *patient) {
  add_patient(in, pos, patient, in->o.tenant, FX_TYPES_NONE, in->o.since,
              in->o.follow_references);
}

static const char *const line_fields[] = {"patient", "tenant", "resources", "since",
                                          "follow_references"};

static void ndjson_patient(fx_jobin *in, unsigned long line, json_t *doc) {
  const char *k;
  json_t *v;
  json_object_foreach(doc, k, v) {
    size_t i = 0, n = sizeof line_fields / sizeof line_fields[0];
    while (i < n && strcmp(line_fields[i], k) != 0) i++;
    if (i == n) {
      bad(in, line,
          "unknown field '%.64s'; a line has patient, tenant, resources, since, "
          "follow_references, or is a whole job (with patients or tasks, or \"kind\": \"bulk\")",
          k);
      return;
    }
  }
  json_t *p = json_object_get(doc, "patient"), *t = json_object_get(doc, "tenant");
  json_t *r = json_object_get(doc, "resources"), *s = json_object_get(doc, "since");
  json_t *f = json_object_get(doc, "follow_references");
  if (!json_is_string(p)) REJECT(in, line, "patient: expected a string");
  if (t && !json_is_string(t)) REJECT(in, line, "tenant: expected a string");
  if (s && !json_is_string(s)) REJECT(in, line, "since: expected a string (RFC 3339)");
  if (f && !json_is_boolean(f)) REJECT(in, line, "follow_references: expected true or false");
  fx_types types = FX_TYPES_NONE;
  char why[200];
  if (json_is_string(r)) {
    if (parse_types(json_string_value(r), " ,;|", &types, why, sizeof why))
      REJECT(in, line, "%s", why);
  } else if (json_is_array(r)) {
    size_t i;
    json_t *item;
    json_array_foreach(r, i, item) {
      if (!json_is_string(item)) REJECT(in, line, "resources[%zu]: expected a string", i);
      fx_types one;
      if (parse_types(json_string_value(item), " ", &one, why, sizeof why))
        REJECT(in, line, "%s", why);
      types = fx_types_or(types, one);
    }
    if (fx_types_empty(types)) REJECT(in, line, "resources: expected a non-empty array of resource types");
  } else if (r) {
    REJECT(in, line, "resources: expected an array of resource types");
  }
  add_patient(in, line, json_string_value(p), t ? json_string_value(t) : in->o.tenant, types,
              s ? json_string_value(s) : in->o.since,
              f ? json_is_true(f) : in->o.follow_references);
}

/* A whole job on one line: checked as the workers would, then one job. */
static void ndjson_job(fx_jobin *in, unsigned long line, json_t *doc) {
  if (!json_object_get(doc, "tenant") && in->o.tenant)
    json_object_set_new(doc, "tenant", json_string(in->o.tenant));
  json_t *probe = json_deep_copy(doc);
  if (!json_object_get(probe, "job_id")) json_object_set_new(probe, "job_id", json_string("probe"));
  fx_job *job = NULL;
  fx_job_error jerr;
  int rc = fx_job_from_json(probe, in->ps, in->lim, &job, &jerr);
  json_decref(probe);
  fx_job_free(job);
  if (rc != 0)
    REJECT(in, line, "the job would be rejected (%s): %s", fx_errclass_name(jerr.cls), jerr.msg);
  add_job(in, json_incref(doc));
}

void fx_jobin_ndjson(fx_jobin *in, unsigned long line, const char *text, size_t len) {
  size_t i = 0;
  while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r')) i++;
  if (i == len) return; /* blank lines are allowed */
  json_error_t jerr;
  json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!doc) {
    /* jansson's text quotes the input; the column is enough. */
    bad(in, line, "not valid JSON (column %d)", jerr.column);
    return;
  }
  if (!json_is_object(doc)) bad(in, line, "expected a JSON object");
  else if (json_object_get(doc, "patient")) ndjson_patient(in, line, doc);
  else if (json_object_get(doc, "patients") || json_object_get(doc, "tasks") ||
           json_object_get(doc, "kind") || json_object_get(doc, "group"))
    ndjson_job(in, line, doc);
  else bad(in, line, "expected {\"patient\": ...} or a job (with patients or tasks, or a bulk "
                     "job: \"kind\": \"bulk\" and a group)");
  json_decref(doc);
}

static int csv_header(fx_jobin *in, unsigned long line, char *text, fx_err *err) {
  if ((unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB &&
      (unsigned char)text[2] == 0xBF)
    text += 3; /* a UTF-8 byte order mark, as spreadsheets write it */
  char *fields[MAX_CSV_FIELDS];
  const char *why = NULL;
  int n = fx_csv_split(text, fields, MAX_CSV_FIELDS, &why);
  if (n < 0) return fx_err_set(err, FX_EINVAL, "line %lu (the header row): %s", line, why);
  const char *patient_col = in->o.column ? in->o.column : "patient";
  for (int c = 0; c < N_COLS; c++) in->csv_cols[c] = -1;
  for (int i = 0; i < n; i++)
    for (int c = 0; c < N_COLS; c++)
      if (strcasecmp(fields[i], c == COL_PATIENT ? patient_col : col_names[c]) == 0) {
        if (in->csv_cols[c] >= 0)
          return fx_err_set(err, FX_EINVAL, "line %lu (the header row): column '%s' appears twice",
                            line, fields[i]);
        in->csv_cols[c] = i;
      }
  if (in->csv_cols[COL_PATIENT] < 0) {
    char cols[300] = "";
    for (int i = 0; i < n; i++)
      snprintf(cols + strlen(cols), sizeof cols - strlen(cols), "%s'%s'", i ? ", " : "", fields[i]);
    return fx_err_set(err, FX_EINVAL,
                      "line %lu (the header row) has no column '%s' (columns: %s); name the patient "
                      "column with --column",
                      line, patient_col, cols);
  }
  in->csv_width = (size_t)n;
  return 0;
}

static void csv_row(fx_jobin *in, unsigned long line, char *text) {
  char *fields[MAX_CSV_FIELDS];
  const char *why = NULL;
  int n = fx_csv_split(text, fields, MAX_CSV_FIELDS, &why);
  if (n < 0) REJECT(in, line, "%s", why);
  if ((size_t)n > in->csv_width)
    REJECT(in, line, "%d fields, but the header row has %zu", n, in->csv_width);
  const char *cell[N_COLS];
  for (int c = 0; c < N_COLS; c++)
    cell[c] = in->csv_cols[c] >= 0 && in->csv_cols[c] < n && *fields[in->csv_cols[c]]
                  ? fields[in->csv_cols[c]] : NULL;
  if (!cell[COL_PATIENT]) REJECT(in, line, "patient: the cell is empty");
  fx_types types = FX_TYPES_NONE;
  char msg[200];
  if (cell[COL_RESOURCES] && parse_types(cell[COL_RESOURCES], " ,;|", &types, msg, sizeof msg))
    REJECT(in, line, "%s", msg);
  int follow = in->o.follow_references;
  if (cell[COL_FOLLOW]) {
    const char *v = cell[COL_FOLLOW];
    if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcmp(v, "1")) follow = 1;
    else if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcmp(v, "0")) follow = 0;
    else REJECT(in, line, "follow_references: expected true or false");
  }
  add_patient(in, line, cell[COL_PATIENT], cell[COL_TENANT] ? cell[COL_TENANT] : in->o.tenant,
              types, cell[COL_SINCE] ? cell[COL_SINCE] : in->o.since, follow);
}

int fx_jobin_read(fx_jobin *in, FILE *f, fx_jobin_format format, fx_err *err) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t got;
  int header_done = format != FX_JOBIN_CSV, rc = 0;
  unsigned long no = 0;
  while (!rc && (got = getline(&line, &cap, f)) >= 0) {
    no++;
    in->st.lines++;
    size_t len = (size_t)got;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (format == FX_JOBIN_NDJSON) {
      fx_jobin_ndjson(in, no, line, len);
      continue;
    }
    if (strlen(line) != len) {
      bad(in, no, "the line contains a NUL byte");
      continue;
    }
    size_t blank = strspn(line, " \t,");
    if (line[blank] == '\0') continue;
    if (!header_done) {
      rc = csv_header(in, no, line, err);
      header_done = 1;
    } else {
      csv_row(in, no, line);
    }
  }
  if (!rc && ferror(f)) rc = fx_err_set(err, FX_EIO, "cannot read the input after line %lu", no);
  if (!rc && !header_done)
    rc = fx_err_set(err, FX_EINVAL, "the CSV input is empty: it needs a header row");
  free(line);
  return rc;
}

/* ---- life cycle ----------------------------------------------------------- */

int fx_jobin_new(const fx_profile_set *profiles, const fx_job_limits *lim,
                 const fx_jobin_opts *opts, fx_jobin_bad_fn badfn, void *arg, fx_jobin **out,
                 fx_err *err) {
  *out = NULL;
  if (opts->batch < 1 || opts->batch > lim->max_patients)
    return fx_err_set(err, FX_EINVAL,
                      "--batch: %zu patients per job; the workers accept 1 to %zu "
                      "(worker.max_patients_per_job)",
                      opts->batch, lim->max_patients);
  if (opts->id_prefix) {
    char probe[200];
    snprintf(probe, sizeof probe, "%s-000001", opts->id_prefix);
    if (strlen(opts->id_prefix) > 120 || !fx_job_id_valid(probe))
      return fx_err_set(err, FX_EINVAL,
                        "--job-id-prefix: '%.64s' must be 1..120 letters, digits, '-', '.', '_' "
                        "or ':'",
                        opts->id_prefix);
  }
  if (opts->job_id && !fx_job_id_valid(opts->job_id))
    return fx_err_set(err, FX_EINVAL,
                      "--job-id: '%.64s' must be 1..128 letters, digits, '-', '.', '_' or ':'",
                      opts->job_id);
  fx_jobin *in = calloc(1, sizeof *in);
  if (!in) return fx_err_set(err, FX_ENOMEM, "out of memory");
  in->ps = profiles;
  in->lim = lim;
  in->o = *opts;
  in->group_index = json_object();
  in->tenants = fx_strset_new();
  in->ids = fx_strset_new();
  if (!in->group_index || !in->tenants || !in->ids) {
    fx_jobin_free(in);
    return fx_err_set(err, FX_ENOMEM, "out of memory");
  }
  char why[200];
  if (opts->resources && parse_types(opts->resources, ",", &in->default_types, why, sizeof why)) {
    fx_jobin_free(in);
    return fx_err_set(err, FX_EINVAL, "--%s", why);
  }
  if (opts->tenant && !fx_config_tenant(profiles->cfg, opts->tenant)) {
    fx_jobin_free(in);
    return fx_err_set(err, FX_EINVAL,
                      "--tenant: '%.64s' is not configured (add it under tenants[] in the config)",
                      opts->tenant);
  }
  in->bad = badfn;
  in->arg = arg;
  *out = in;
  return 0;
}

int fx_jobin_finish(fx_jobin *in, fx_err *err) {
  for (size_t i = 0; i < in->n_groups; i++) emit_group(in, &in->groups[i]);
  if (in->failed[0]) return fx_err_set(err, FX_EINVAL, "%s", in->failed);
  if (in->o.job_id && in->n_jobs > 1)
    return fx_err_set(err, FX_EINVAL,
                      "--job-id names one job, but the input makes %zu; use --job-id-prefix",
                      in->n_jobs);
  return 0;
}

const fx_jobin_job *fx_jobin_jobs(const fx_jobin *in, size_t *n) {
  *n = in->n_jobs;
  return in->jobs;
}

void fx_jobin_get_stats(const fx_jobin *in, fx_jobin_stats *st) { *st = in->st; }

void fx_jobin_free(fx_jobin *in) {
  if (!in) return;
  for (size_t i = 0; i < in->n_groups; i++) {
    group *g = &in->groups[i];
    for (size_t k = 0; k < g->n_pending; k++) free(g->pending[k]);
    free(g->pending);
    free(g->tenant);
    free(g->since);
    fx_strset_free(g->seen);
  }
  free(in->groups);
  for (size_t i = 0; i < in->n_jobs; i++) {
    free(in->jobs[i].job_id);
    free(in->jobs[i].tenant);
    free(in->jobs[i].text);
  }
  free(in->jobs);
  json_decref(in->group_index);
  if (in->tenants) fx_strset_free(in->tenants);
  if (in->ids) fx_strset_free(in->ids);
  free(in);
}
