#include "worker/model/job.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/strutil.h"
#include "worker/model/resources.h"

#define MAX_ID 128
#define MAX_PATIENT_ID 64

static int fail(fx_job_error *e, fx_errclass cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The field path a message starts with ("patients[0]: ...",
 * "type_filter[2]: ...", "kind: ..."): lower-case names with optional
 * indexes, joined by dots, then ": ". Its length, or 0 when there is none. */
static size_t field_prefix(const char *m) {
  const char *p = m;
  for (;;) {
    if (!(*p >= 'a' && *p <= 'z') && *p != '_') return 0;
    while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_') p++;
    if (*p == '[') {
      const char *q = ++p;
      while (*p >= '0' && *p <= '9') p++;
      if (p == q || *p != ']') return 0;
      p++;
    }
    if (*p == '.') {
      p++;
      continue;
    }
    return p[0] == ':' && p[1] == ' ' ? (size_t)(p - m) : 0;
  }
}

/* At most 64 bytes of a string from the job, for "%.*s", cut on a character. */
#define SHOWN64(s) (int)fx_utf8_cut((s), 64), (s)

static int fail(fx_job_error *e, fx_errclass cls, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  fx_utf8_trim(e->msg); /* a long message is cut on a character, never inside one */
  e->cls = cls;
  size_t n = field_prefix(e->msg);
  snprintf(e->field, sizeof e->field, "%.*s", (int)n, e->msg);
  return -1;
}

const char *fx_job_error_text(const fx_job_error *e) {
  size_t n = strlen(e->field);
  return n && strncmp(e->msg, e->field, n) == 0 && e->msg[n] == ':' ? e->msg + n + 2 : e->msg;
}

/* Ids travel in URLs, message keys and headers: keep them to a safe alphabet. */
static int safe_id(const char *s, size_t max, const char *extra) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          strchr(extra, *p)))
      return 0;
  return 1;
}

/* RFC 3339 date or date-time, as FHIR's _lastUpdated takes it. */
static int valid_instant(const char *s) {
  int y, mo, d, h, mi, sec, n = 0;
  size_t len = strlen(s);
  if (len == 10) return sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) == 3 && n == 10 && mo >= 1 &&
                        mo <= 12 && d >= 1 && d <= 31;
  if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
    return 0;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return 0;
  const char *p = s + 19;
  if (*p == '.')
    for (p++; *p >= '0' && *p <= '9'; p++) {}
  if (strcmp(p, "Z") == 0) return 1;
  int oh, om;
  return (*p == '+' || *p == '-') && sscanf(p + 1, "%2d:%2d%n", &oh, &om, &n) == 2 && n == 5 &&
         p[6] == '\0';
}

int fx_job_since_instant(const char *since, char *out, size_t size) {
  size_t n = strlen(since);
  int date_only = n == 10 && since[4] == '-' && since[7] == '-';
  int len = snprintf(out, size, date_only ? "%sT00:00:00Z" : "%s", since);
  if (len < 0 || (size_t)len >= size) {
    if (size) out[0] = '\0';
    return -1;
  }
  return len;
}

static int parse_types(json_t *arr, const char *where, const fx_profile *prof, fx_types *out,
                       fx_job_error *e) {
  if (!json_is_array(arr) || json_array_size(arr) == 0)
    return fail(e, FX_EC_INVALID_JOB, "%s: expected a non-empty array of resource types", where);
  fx_types set = FX_TYPES_NONE, patient = fx_profile_patient_types(prof);
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) {
    const char *t = json_string_value(v);
    int idx = fx_resource_index(t);
    if (idx < 0)
      return fail(e, FX_EC_INVALID_JOB,
                  "%s[%zu]: '%.*s' is not an R4 resource type fhirx extracts (names are "
                  "case-sensitive: Observation)",
                  where, i, SHOWN64(t ? t : "(not a string)"));
    if (!fx_types_has(patient, idx))
      return fail(e, FX_EC_INVALID_JOB,
                  "%s[%zu]: the tenant's profile (%s) does not fetch %s per patient; %s", where, i,
                  prof->name, t,
                  prof->types[idx].mode == FX_FETCH_REFERENCE
                      ? "it is reached through references (set follow_references)"
                  : fx_types_has(prof->bulk_types, idx)
                      ? "only a bulk job (a Group $export) gets it"
                      : "drop it, or use a profile that fetches it (tenants[].profile)");
    fx_types_add(&set, idx);
  }
  *out = set;
  return 0;
}

static int add_task(fx_job *job, size_t cap, const char *patient, fx_types types,
                    fx_job_error *e) {
  for (size_t i = 0; i < job->n_tasks; i++)
    if (strcmp(job->tasks[i].patient, patient) == 0) {
      /* the same patient twice: one task, union of types */
      job->tasks[i].types = fx_types_or(job->tasks[i].types, types);
      return 0;
    }
  if (job->n_tasks == cap) return fail(e, FX_EC_INVALID_JOB, "too many tasks");
  job->tasks[job->n_tasks].patient = strdup(patient);
  if (!job->tasks[job->n_tasks].patient) return fail(e, FX_EC_INVALID_JOB, "out of memory");
  job->tasks[job->n_tasks++].types = types;
  return 0;
}

static int check_patient(json_t *v, const char *where, size_t i, fx_job_error *e) {
  const char *p = json_string_value(v);
  if (!p || !safe_id(p, MAX_PATIENT_ID, "-."))
    return fail(e, FX_EC_INVALID_JOB,
                "%s[%zu]: a patient id must be a string of 1..%d letters, digits, '-' or '.'",
                where, i, MAX_PATIENT_ID);
  return 0;
}

static const char *const known_fields[] = {"kind",  "job_id", "tenant",    "patients",
                                           "resources", "tasks", "since", "follow_references",
                                           "attempt", "group", "type_filter"};

/* ---- bulk jobs ------------------------------------------------------------ */

#define MAX_GROUP_ID 64

/* One type named by a bulk job's resources: exported by the profile's Group
 * $export, or else fetched per patient. */
static int bulk_type(const char *t, size_t i, const fx_profile *prof, int *idx,
                     fx_job_error *e) {
  *idx = fx_resource_index(t);
  if (*idx < 0)
    return fail(e, FX_EC_INVALID_JOB,
                "resources[%zu]: '%.*s' is not an R4 resource type fhirx extracts (names are "
                "case-sensitive: Observation)",
                i, SHOWN64(t ? t : "(not a string)"));
  if (fx_types_has(prof->bulk_types, *idx) ||
      fx_types_has(fx_profile_patient_types(prof), *idx))
    return 0;
  if (strcmp(t, "Binary") == 0)
    return fail(e, FX_EC_INVALID_JOB,
                "resources[%zu]: the Group $export of profile %s does not export Binary; drop it "
                "(with follow_references, the attachments of DocumentReference and "
                "DiagnosticReport are fetched as Binary)",
                i, prof->name);
  return fail(e, FX_EC_INVALID_JOB,
              "resources[%zu]: the Group $export of profile %s does not export %s, and the "
              "profile does not fetch it per patient either; drop it%s",
              i, prof->name, t,
              prof->types[*idx].mode == FX_FETCH_REFERENCE
                  ? " (set follow_references to fetch what the exported resources reference)"
                  : "");
}

/* A filter's search parameter name, without a modifier ("code:text" ->
 * "code"), is refused by the profile. */
static int refused_param(const fx_profile *prof, const char *name, size_t n) {
  size_t base = strcspn(name, ":");
  if (base < n) n = base;
  for (size_t k = 0; k < prof->n_filter_refused_params; k++)
    if (strlen(prof->filter_refused_params[k]) == n &&
        strncmp(prof->filter_refused_params[k], name, n) == 0)
      return 1;
  return 0;
}

/* A _typeFilter entry goes into one comma-joined query parameter: printable
 * ASCII without spaces, and no literal comma (it would split the entry).
 * Then the profile's rules (Cerner's: group-export.md): the type is one the
 * job exports, the server takes filters on it, no refused search parameter,
 * and at most one filter per type. *filtered collects the types seen. */
static int check_type_filter(const char *q, size_t i, const fx_profile *prof, const fx_job *job,
                             int types_from_tenant, fx_types *filtered, fx_job_error *e) {
  size_t n = strlen(q);
  if (n == 0 || n > FX_BULK_TYPE_FILTER_MAX)
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter[%zu]: expected 1..%d characters, \"<Type>?<query>\"", i,
                FX_BULK_TYPE_FILTER_MAX);
  for (const char *p = q; *p; p++) {
    if (*p == ',')
      return fail(e, FX_EC_INVALID_JOB,
                  "type_filter[%zu]: a literal ',' would split the comma-joined _typeFilter "
                  "parameter; percent-encode it as %%2C",
                  i);
    if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
      return fail(e, FX_EC_INVALID_JOB,
                  "type_filter[%zu]: a space, control or non-ASCII character at position %zu; "
                  "percent-encode it (a space as %%20)",
                  i, (size_t)(p - q));
  }
  const char *mark = strchr(q, '?');
  if (!mark || mark == q || mark[1] == '\0')
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter[%zu]: expected \"<Type>?<query>\", e.g. "
                "\"Observation?category=laboratory\"",
                i);
  char type[64];
  int idx = -1;
  if ((size_t)(mark - q) < sizeof type) {
    memcpy(type, q, (size_t)(mark - q));
    type[mark - q] = '\0';
    idx = fx_resource_index(type);
  }
  if (idx < 0)
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter[%zu]: '%.*s' is not an R4 resource type (names are case-sensitive: "
                "Observation)",
                i, (int)((size_t)(mark - q) < 40 ? (size_t)(mark - q) : 40), q);
  if (fx_types_has(job->per_patient_types, idx))
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter[%zu]: the Group $export of profile %s does not export %s (it is "
                "fetched per patient instead), so a _typeFilter cannot narrow it; drop the filter",
                i, prof->name, type);
  if (!job->bulk_all && !fx_types_has(job->bulk_types, idx)) {
    if (types_from_tenant)
      return fail(e, FX_EC_INVALID_JOB,
                  "type_filter[%zu]: tenant %.*s does not extract %s (tenants[].resources, or "
                  "its profile); drop the filter, or name the types in resources",
                  i, SHOWN64(job->tenant), type);
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter[%zu]: %s is not among the job's resources; a _typeFilter narrows "
                "one of the exported types (_type): add it to resources or drop the filter",
                i, type);
  }
  if (fx_types_has(prof->filter_refused_types, idx)) {
    char list[400];
    fx_types_join(prof->filter_refused_types, ", ", list, sizeof list);
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter[%zu]: profile %s: the server takes no _typeFilter on %s (nor on "
                "any of %s); drop the filter: %s is exported whole",
                i, prof->name, type, list, type);
  }
  if (prof->filter_one_per_type && fx_types_has(*filtered, idx))
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter[%zu]: a second filter for %s; profile %s's server takes one "
                "_typeFilter per type: merge them into one query if both conditions must hold "
                "(a&b), or export the other in a second bulk job",
                i, type, prof->name);
  fx_types_add(filtered, idx);
  for (const char *p = mark + 1; *p;) {
    size_t len = strcspn(p, "&"), name = strcspn(p, "=");
    if (name == 0 || name >= len || name + 1 == len)
      return fail(e, FX_EC_INVALID_JOB,
                  "type_filter[%zu]: '%.*s' is not name=value; a filter is a search query such "
                  "as \"Observation?category=laboratory\"",
                  i, (int)(len < 60 ? len : 60), p);
    if (refused_param(prof, p, name)) {
      char list[400] = "";
      for (size_t k = 0; k < prof->n_filter_refused_params; k++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "",
                 prof->filter_refused_params[k]);
      return fail(e, FX_EC_INVALID_JOB,
                  "type_filter[%zu]: parameter '%.*s' is refused in a _typeFilter by profile %s's "
                  "server (refused: %s); drop it: the export already covers the Group's patients, "
                  "and since becomes _since",
                  i, (int)(name < 40 ? name : 40), p, prof->name, list);
    }
    p += len;
    if (*p == '&') p++;
  }
  return 0;
}

/* A bulk job's types: resources (or the tenant's), split into what the
 * export gets (_type) and what is fetched per patient afterwards. */
static int bulk_types(json_t *doc, const fx_profile *prof, const fx_tenant_conf *t, fx_job *job,
                      int *from_tenant, fx_job_error *e) {
  if (fx_types_empty(prof->bulk_types))
    return fail(e, FX_EC_INVALID_JOB,
                "kind: tenant %.*s's profile (%s) has no bulk section, so its server's Group "
                "$export is not known; use patient jobs, or a profile with one (tenants[].profile)",
                SHOWN64(job->tenant), prof->name);
  fx_types want = FX_TYPES_NONE;
  json_t *resources = json_object_get(doc, "resources");
  if (resources) {
    if (!json_is_array(resources) || json_array_size(resources) == 0)
      return fail(e, FX_EC_INVALID_JOB,
                  "resources: expected a non-empty array of resource types");
    size_t i;
    json_t *v;
    json_array_foreach(resources, i, v) {
      int idx;
      if (bulk_type(json_string_value(v), i, prof, &idx, e)) return -1;
      fx_types_add(&want, idx);
    }
  } else {
    /* What the tenant extracts (tenants[].resources, or the profile's default
     * query set), so the export stays within the tenant's scopes. */
    *from_tenant = 1;
    if (prof->bulk_any && !t->resources.n) {
      /* A standard server, and nobody named types: export what it has (no
       * _type), as a Bulk Data client would. */
      job->bulk_all = 1;
      return 0;
    }
    want = fx_types_and(fx_tenant_extract_types(t, prof),
                        fx_types_or(prof->bulk_types, fx_profile_patient_types(prof)));
    if (fx_types_empty(want))
      return fail(e, FX_EC_INVALID_JOB,
                  "tenant %.*s extracts no type its profile (%s) exports or fetches per "
                  "patient (tenants[].resources); name the types in resources",
                  SHOWN64(job->tenant), prof->name);
  }
  job->bulk_types = fx_types_and(want, prof->bulk_types);
  job->per_patient_types = fx_types_minus(want, prof->bulk_types);
  char names[400];
  fx_types_join(job->per_patient_types, ", ", names, sizeof names);
  const char *whose = *from_tenant ? "the tenant's types include" : "resources names";
  int patient = fx_resource_index("Patient");
  if (*from_tenant && !fx_types_empty(job->per_patient_types) &&
      (job->since || !fx_types_has(job->bulk_types, patient))) {
    /* The job named no types: export what can be exported and say in the
     * status what was not fetched and why, rather than refuse the job (a job
     * that names them is refused below, with the reason). */
    job->per_patient_skipped = job->per_patient_types;
    job->per_patient_types = FX_TYPES_NONE;
  }
  if (!fx_types_empty(job->per_patient_types) && !fx_types_has(job->bulk_types, patient))
    return fail(e, FX_EC_INVALID_JOB,
                "resources: %s %s, which the Group $export of profile %s does not export: fhirx "
                "fetches them per patient for the exported Patient resources, so add Patient "
                "(or drop them)",
                whose, names, prof->name);
  if (!fx_types_empty(job->per_patient_types) && job->since)
    return fail(e, FX_EC_INVALID_JOB,
                "since: %s %s, which the Group $export of profile %s does not export; fhirx "
                "fetches them per patient for the exported Patients, but _since narrows those to "
                "the Patients changed since then, so some patients would be missed: drop since, "
                "or name resources without %s (and fetch those in a bulk job without since)",
                whose, names, prof->name, names);
  if (fx_types_empty(fx_types_minus(job->bulk_types, prof->bulk_not_alone))) {
    char alone[400];
    fx_types_join(prof->bulk_not_alone, ", ", alone, sizeof alone);
    fx_types_join(job->bulk_types, ", ", names, sizeof names);
    return fail(e, FX_EC_INVALID_JOB,
                "resources: the Group $export of profile %s exports %s only together with a "
                "patient type (any type but %s); add one, e.g. Patient",
                prof->name, names, alone);
  }
  return 0;
}

static int parse_bulk(json_t *doc, const fx_profile *prof, const fx_tenant_conf *t, fx_job *job,
                      fx_job_error *e) {
  json_t *group = json_object_get(doc, "group");
  if (!group)
    return fail(e, FX_EC_INVALID_JOB,
                "group: required for a bulk job: the id of the Group to export (1..%d letters, "
                "digits, '-' or '.')",
                MAX_GROUP_ID);
  if (!json_is_string(group) || !safe_id(json_string_value(group), MAX_GROUP_ID, "-."))
    return fail(e, FX_EC_INVALID_JOB,
                "group: a Group id must be a string of 1..%d letters, digits, '-' or '.'",
                MAX_GROUP_ID);
  if (!(job->group = strdup(json_string_value(group))))
    return fail(e, FX_EC_INVALID_JOB, "out of memory");
  int from_tenant = 0;
  if (bulk_types(doc, prof, t, job, &from_tenant, e)) return -1;

  json_t *filters = json_object_get(doc, "type_filter");
  if (!filters) return 0;
  size_t n = json_array_size(filters);
  if (!json_is_array(filters) || n == 0)
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter: expected a non-empty array of \"<Type>?<query>\" strings");
  if (n > FX_BULK_MAX_TYPE_FILTERS)
    return fail(e, FX_EC_INVALID_JOB,
                "type_filter: %zu filters is more than the %d a bulk job may have; split the "
                "job",
                n, FX_BULK_MAX_TYPE_FILTERS);
  if (!(job->type_filters = calloc(n, sizeof *job->type_filters)))
    return fail(e, FX_EC_INVALID_JOB, "out of memory");
  fx_types filtered = FX_TYPES_NONE;
  size_t i;
  json_t *v;
  json_array_foreach(filters, i, v) {
    const char *q = json_string_value(v);
    if (!q)
      return fail(e, FX_EC_INVALID_JOB,
                  "type_filter[%zu]: expected a string \"<Type>?<query>\"", i);
    if (check_type_filter(q, i, prof, job, from_tenant, &filtered, e)) return -1;
    if (!(job->type_filters[job->n_type_filters] = strdup(q)))
      return fail(e, FX_EC_INVALID_JOB, "out of memory");
    job->n_type_filters++;
  }
  return 0;
}

static int parse_fields(json_t *doc, const fx_profile_set *ps, const fx_job_limits *lim,
                        fx_job *job, fx_job_error *e) {
  const fx_config *cfg = ps->cfg;
  /* Keep what can be read of the id and tenant first: even a rejected job
   * gets a status record and a dead letter that name it. */
  const char *id0 = json_string_value(json_object_get(doc, "job_id"));
  const char *tenant0 = json_string_value(json_object_get(doc, "tenant"));
  if (id0 && safe_id(id0, MAX_ID, "-._:")) snprintf(e->job_id, sizeof e->job_id, "%s", id0);
  if (tenant0) fx_utf8_copy(e->tenant, sizeof e->tenant, tenant0); /* never half a character */
  const char *key;
  json_t *v;
  json_object_foreach(doc, key, v) {
    size_t i = 0, n = sizeof known_fields / sizeof known_fields[0];
    while (i < n && strcmp(known_fields[i], key) != 0) i++;
    if (i == n)
      return fail(e, FX_EC_INVALID_JOB,
                  "unknown field '%.*s'; a job has job_id, tenant, patients or tasks, resources, "
                  "since, follow_references, attempt (a bulk job, \"kind\": \"bulk\", has "
                  "group and type_filter instead of patients or tasks)",
                  SHOWN64(key));
  }
  json_t *kind = json_object_get(doc, "kind");
  if (kind) {
    const char *k = json_string_value(kind);
    if (k && strcmp(k, "bulk") == 0) job->kind = FX_JOB_BULK;
    else if (!k || strcmp(k, "patients") != 0)
      return fail(e, FX_EC_INVALID_JOB,
                  "kind: expected \"patients\" (the default: listed patients) or \"bulk\" (a "
                  "Group $export)");
  }
  /* Fields of the other kind are refused by name: a job that mixes them
   * would silently do less than its author meant. */
  if (job->kind == FX_JOB_BULK) {
    if (json_object_get(doc, "patients"))
      return fail(e, FX_EC_INVALID_JOB,
                  "patients: a bulk job exports a Group, not listed patients; drop patients, or "
                  "drop \"kind\": \"bulk\" to fetch the patients one by one");
    if (json_object_get(doc, "tasks"))
      return fail(e, FX_EC_INVALID_JOB,
                  "tasks: a bulk job has no tasks (a failed one is replayed whole); drop tasks, "
                  "or drop \"kind\": \"bulk\" for a patient job");
  } else {
    if (json_object_get(doc, "group"))
      return fail(e, FX_EC_INVALID_JOB,
                  "group: only a bulk job exports a Group; add \"kind\": \"bulk\" (without "
                  "patients or tasks), or drop group");
    if (json_object_get(doc, "type_filter"))
      return fail(e, FX_EC_INVALID_JOB,
                  "type_filter: only a bulk job (\"kind\": \"bulk\") takes _typeFilter "
                  "queries; a patient job searches as the tenant's profile says: drop it");
  }
  const char *id = json_string_value(json_object_get(doc, "job_id"));
  if (!id || !safe_id(id, MAX_ID, "-._:"))
    return fail(e, FX_EC_INVALID_JOB,
                "job_id: required, a string of 1..%d letters, digits, '-', '.', '_' or ':'",
                MAX_ID);
  const char *tenant = tenant0;
  if (!tenant) return fail(e, FX_EC_INVALID_JOB, "tenant: required, a configured tenant id");
  /* Not a name any tenant can have (tenants[].id, schemas/job.schema.json): no
   * configuration would let a replay run it, so it is not unknown_tenant. */
  if (!safe_id(tenant, 64, "._-"))
    return fail(e, FX_EC_INVALID_JOB,
                "tenant: '%.*s' is not a tenant id (1..64 of A-Z a-z 0-9 . _ -, as tenants[].id)",
                SHOWN64(tenant));
  const fx_tenant_conf *t = fx_config_tenant(cfg, tenant);
  if (!t)
    return fail(e, FX_EC_UNKNOWN_TENANT,
                "tenant '%.*s' is not configured on this worker; add it under tenants[]",
                SHOWN64(tenant));
  if (!(job->job_id = strdup(id)) || !(job->tenant = strdup(tenant)))
    return fail(e, FX_EC_INVALID_JOB, "out of memory");

  json_t *since = json_object_get(doc, "since");
  if (since) {
    if (!json_is_string(since) || !valid_instant(json_string_value(since)))
      return fail(e, FX_EC_INVALID_JOB,
                  "since: expected an RFC 3339 date or date-time, e.g. 2026-11-01T00:00:00Z");
    if (!(job->since = strdup(json_string_value(since))))
      return fail(e, FX_EC_INVALID_JOB, "out of memory");
  }
  json_t *follow = json_object_get(doc, "follow_references");
  if (follow && !json_is_boolean(follow))
    return fail(e, FX_EC_INVALID_JOB, "follow_references: expected true or false");
  job->follow_references = follow ? json_is_true(follow) : 0;
  if (job->follow_references && !t->follow_references) {
    const fx_profile *fp = fx_profile_for(ps, tenant);
    char names[400] = "";
    if (fp) fx_types_join(fp->follow, ", ", names, sizeof names);
    return fail(e, FX_EC_INVALID_JOB,
                "follow_references: tenant %.*s does not follow references "
                "(tenants[].follow_references is false, so its token has no scopes for %s); set "
                "it to true and tick those scopes, or drop follow_references",
                SHOWN64(tenant), names[0] ? names : "the referenced types");
  }
  json_t *attempt = json_object_get(doc, "attempt");
  if (attempt && (!json_is_integer(attempt) || json_integer_value(attempt) < 1 ||
                  json_integer_value(attempt) > 1000))
    return fail(e, FX_EC_INVALID_JOB, "attempt: expected an integer from 1 to 1000");
  job->attempt = attempt ? (int)json_integer_value(attempt) : 1;
  if (job->kind == FX_JOB_BULK) return parse_bulk(doc, fx_profile_for(ps, tenant), t, job, e);

  json_t *patients = json_object_get(doc, "patients"), *tasks = json_object_get(doc, "tasks");
  json_t *resources = json_object_get(doc, "resources");
  if (!patients == !tasks)
    return fail(e, FX_EC_INVALID_JOB, "a job needs exactly one of patients or tasks");
  size_t n = json_array_size(patients ? patients : tasks);
  if ((patients && !json_is_array(patients)) || (tasks && !json_is_array(tasks)) || n == 0)
    return fail(e, FX_EC_INVALID_JOB, "%s: expected a non-empty array",
                patients ? "patients" : "tasks");
  if (n > lim->max_patients)
    return fail(e, FX_EC_INVALID_JOB,
                "%s: %zu patients is more than this worker's limit of %zu per job; split the job "
                "(`fhirx enqueue --batch`)",
                patients ? "patients" : "tasks", n, lim->max_patients);
  job->tasks = calloc(n, sizeof *job->tasks);
  if (!job->tasks) return fail(e, FX_EC_INVALID_JOB, "out of memory");

  const fx_profile *prof = fx_profile_for(ps, tenant);
  fx_types types = fx_tenant_types(t, prof);
  if (resources && parse_types(resources, "resources", prof, &types, e)) return -1;
  if (fx_types_empty(types))
    return fail(e, FX_EC_INVALID_JOB, "tenant %s has no resource types to fetch per patient",
                tenant);
  size_t i;
  json_t *item;
  if (patients) {
    json_array_foreach(patients, i, item) {
      if (check_patient(item, "patients", i, e) ||
          add_task(job, n, json_string_value(item), types, e))
        return -1;
    }
    return 0;
  }
  if (resources)
    return fail(e, FX_EC_INVALID_JOB, "resources: give resources inside each task instead");
  json_array_foreach(tasks, i, item) {
    char where[48];
    snprintf(where, sizeof where, "tasks[%zu]", i);
    json_t *p = json_object_get(item, "patient"), *r = json_object_get(item, "resources");
    if (!json_is_object(item) || !p || !r || json_object_size(item) != 2)
      return fail(e, FX_EC_INVALID_JOB, "%s: expected {\"patient\": ..., \"resources\": [...]}",
                  where);
    fx_types task_types;
    char rwhere[64];
    snprintf(rwhere, sizeof rwhere, "%s.resources", where);
    if (check_patient(p, "tasks.patient", i, e) || parse_types(r, rwhere, prof, &task_types, e) ||
        add_task(job, n, json_string_value(p), task_types, e))
      return -1;
  }
  return 0;
}

/* doc is an object; len its size as a message. */
static int parse_doc(const json_t *doc, size_t len, const fx_profile_set *ps,
                     const fx_job_limits *lim, fx_job **out, fx_job_error *e) {
  if (len > lim->max_bytes)
    return fail(e, FX_EC_INVALID_JOB,
                "the job is %zu bytes, more than the %zu bytes a job may have; split it", len,
                lim->max_bytes);
  if (!json_is_object(doc)) return fail(e, FX_EC_INVALID_JOB, "a job must be a JSON object");
  fx_job *job = calloc(1, sizeof *job);
  int rc = job ? parse_fields((json_t *)(uintptr_t)doc, ps, lim, job, e)
               : fail(e, FX_EC_INVALID_JOB, "out of memory");
  if (rc) {
    fx_job_free(job);
    return -1;
  }
  *out = job;
  return 0;
}

int fx_job_parse(const char *buf, size_t len, const fx_profile_set *ps,
                 const fx_job_limits *lim, fx_job **out, fx_job_error *e) {
  *out = NULL;
  memset(e, 0, sizeof *e);
  if (len > lim->max_bytes) return parse_doc(NULL, len, ps, lim, out, e);
  if (!buf || len == 0)
    return fail(e, FX_EC_INVALID_JOB,
                "empty message (tombstone): a job is a JSON object; a null value deletes a key "
                "on a compacted topic, and the jobs topic is not one. Produce the job itself");
  json_error_t jerr;
  json_t *doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!doc) {
    /* jansson's text quotes the input near the error, cut wherever its buffer
     * ended (inside a character, or in bytes that were never UTF-8). */
    char text[sizeof jerr.text];
    fx_utf8_copy(text, sizeof text, jerr.text);
    return fail(e, FX_EC_INVALID_JOB, "not JSON: %s at line %d, column %d", text, jerr.line,
                jerr.column);
  }
  int rc = parse_doc(doc, len, ps, lim, out, e);
  json_decref(doc);
  return rc;
}

int fx_job_from_json(const json_t *doc, const fx_profile_set *ps, const fx_job_limits *lim,
                     fx_job **out, fx_job_error *e) {
  *out = NULL;
  memset(e, 0, sizeof *e);
  /* The size it would have as a message (json_dumpb with no buffer only measures). */
  size_t len = doc ? json_dumpb(doc, NULL, 0, JSON_COMPACT) : 0;
  if (!doc) return fail(e, FX_EC_INVALID_JOB, "out of memory");
  return parse_doc(doc, len, ps, lim, out, e);
}

int fx_job_id_valid(const char *s) { return s && safe_id(s, MAX_ID, "-._:"); }

int fx_job_patient_valid(const char *s) { return s && safe_id(s, MAX_PATIENT_ID, "-."); }

int fx_job_per_patient_id(const char *job_id, size_t file_no, size_t chunk_no, char *out,
                          size_t size) {
  char suffix[64];
  int sl = snprintf(suffix, sizeof suffix, ".per-patient.%zu.%zu", file_no, chunk_no);
  size_t jl = strlen(job_id);
  int n;
  if (jl + (size_t)sl <= MAX_ID) {
    n = snprintf(out, size, "%s%s", job_id, suffix);
  } else {
    /* Too long with the suffix: keep a prefix and a hash of the whole id,
     * so two long ids that share the prefix still differ. */
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = job_id; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    int keep = MAX_ID - sl - 17;
    n = snprintf(out, size, "%.*s-%016llx%s", keep, job_id, (unsigned long long)h, suffix);
  }
  return n < 0 || (size_t)n >= size ? -1 : 0;
}

void fx_job_free(fx_job *job) {
  if (!job) return;
  for (size_t i = 0; i < job->n_tasks; i++) free(job->tasks[i].patient);
  free(job->tasks);
  free(job->job_id);
  free(job->tenant);
  free(job->since);
  free(job->group);
  for (size_t i = 0; i < job->n_type_filters; i++) free(job->type_filters[i]);
  free(job->type_filters);
  free(job);
}

size_t fx_job_task_count(const fx_job *job) {
  size_t n = 0;
  for (size_t i = 0; i < job->n_tasks; i++) n += (size_t)fx_types_count(job->tasks[i].types);
  return n;
}

static json_t *types_json(fx_types types) {
  json_t *arr = json_array();
  for (int i = fx_types_next(types, 0); arr && i >= 0; i = fx_types_next(types, i + 1))
    json_array_append_new(arr, json_string(fx_type_names[i]));
  return arr;
}

static json_t *bulk_to_json(const fx_job *job) {
  json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "kind", "bulk", "job_id", job->job_id, "tenant",
                        job->tenant, "group", job->group);
  if (!o) return NULL;
  if (!job->bulk_all) /* else no resources: re-parsed, it exports everything again */
    json_object_set_new(o, "resources",
                        types_json(fx_types_or(job->bulk_types, job->per_patient_types)));
  if (job->since) json_object_set_new(o, "since", json_string(job->since));
  if (job->n_type_filters) {
    json_t *filters = json_array();
    for (size_t i = 0; i < job->n_type_filters; i++)
      json_array_append_new(filters, json_string(job->type_filters[i]));
    json_object_set_new(o, "type_filter", filters);
  }
  if (job->follow_references) json_object_set_new(o, "follow_references", json_true());
  json_object_set_new(o, "attempt", json_integer(job->attempt));
  return o;
}

json_t *fx_job_to_json(const fx_job *job) {
  if (job->kind == FX_JOB_BULK) return bulk_to_json(job);
  json_t *o = json_pack("{s:s, s:s}", "job_id", job->job_id, "tenant", job->tenant);
  if (!o) return NULL;
  int uniform = 1;
  for (size_t i = 1; i < job->n_tasks; i++)
    uniform &= fx_types_eq(job->tasks[i].types, job->tasks[0].types);
  if (uniform && job->n_tasks) {
    json_t *pats = json_array();
    for (size_t i = 0; i < job->n_tasks; i++)
      json_array_append_new(pats, json_string(job->tasks[i].patient));
    json_object_set_new(o, "patients", pats);
    json_object_set_new(o, "resources", types_json(job->tasks[0].types));
  } else {
    json_t *tasks = json_array();
    for (size_t i = 0; i < job->n_tasks; i++)
      json_array_append_new(tasks, json_pack("{s:s, s:o}", "patient", job->tasks[i].patient,
                                             "resources", types_json(job->tasks[i].types)));
    json_object_set_new(o, "tasks", tasks);
  }
  if (job->since) json_object_set_new(o, "since", json_string(job->since));
  if (job->follow_references) json_object_set_new(o, "follow_references", json_true());
  json_object_set_new(o, "attempt", json_integer(job->attempt));
  return o;
}

int fx_job_bulk_type_string(const fx_job *job, char *out, size_t size) {
  if (size) *out = '\0';
  if (job->kind != FX_JOB_BULK) return 0;
  if (job->bulk_all) return 0;
  return fx_types_join(job->bulk_types, ",", out, size);
}

char *fx_job_bulk_type_filter_string(const fx_job *job) {
  size_t len = 1;
  for (size_t i = 0; i < job->n_type_filters; i++) len += strlen(job->type_filters[i]) + 1;
  char *out = malloc(len), *p = out;
  if (!out) return NULL;
  *p = '\0';
  for (size_t i = 0; i < job->n_type_filters; i++) {
    if (i) *p++ = ',';
    size_t n = strlen(job->type_filters[i]);
    memcpy(p, job->type_filters[i], n + 1);
    p += n;
  }
  return out;
}
