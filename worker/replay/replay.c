#include "worker/replay/replay.h"

#include <jansson.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/strutil.h"
#include "worker/model/errclass.h"

/* ---- times --------------------------------------------------------------- */

static int digits(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return 0;
}

int fx_time_parse_ms(const char *s, int64_t now_ms, int64_t *out) {
  size_t len = s ? strlen(s) : 0;
  if (len >= 2 && len < 12) {
    /* A duration back from now: 90s, 15m, 2h, 7d. */
    char unit = s[len - 1];
    long long mult = unit == 's' ? 1000LL : unit == 'm' ? 60000LL : unit == 'h' ? 3600000LL
                   : unit == 'd' ? 86400000LL : 0;
    long long n = 0;
    size_t i = 0;
    for (; mult && i < len - 1 && s[i] >= '0' && s[i] <= '9'; i++) n = n * 10 + (s[i] - '0');
    if (mult && i == len - 1) {
      *out = now_ms - n * mult;
      return 0;
    }
  }
  int y, mo, d, h = 0, mi = 0, sec = 0;
  if (len < 10 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
      digits(s + 8, 2, &d) || mo < 1 || mo > 12 || d < 1 || d > 31)
    return -1;
  const char *p = s + 10;
  int64_t ms = 0, offset_min = 0;
  if (*p) {
    if ((*p != 'T' && *p != 't' && *p != ' ') || strlen(p) < 9 || digits(p + 1, 2, &h) ||
        p[3] != ':' || digits(p + 4, 2, &mi) || p[6] != ':' || digits(p + 7, 2, &sec) || h > 23 ||
        mi > 59 || sec > 60)
      return -1;
    p += 9;
    if (*p == '.') {
      int64_t scale = 100;
      for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10) ms += (*p - '0') * scale;
    }
    if (*p == 'Z' || *p == 'z') {
      p++;
    } else if (*p == '+' || *p == '-') {
      int oh, om;
      if (strlen(p) < 6 || digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om))
        return -1;
      offset_min = (*p == '-' ? -1 : 1) * (oh * 60 + om);
      p += 6;
    } else {
      return -1;
    }
    if (*p) return -1;
  }
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                  .tm_min = mi, .tm_sec = sec};
  time_t t = timegm(&tm);
  *out = ((int64_t)t - offset_min * 60) * 1000 + ms;
  return 0;
}

/* ---- the filter ---------------------------------------------------------- */

static int add_list(char ***list, size_t *n, const char *csv, const char *opt,
                    int (*valid)(const char *), const char *what, fx_err *err) {
  char *copy = strdup(csv);
  if (!copy) return fx_err_set(err, FX_ENOMEM, "out of memory");
  int rc = 0;
  size_t before = *n;
  char *save = NULL;
  for (char *t = strtok_r(copy, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
    if (!valid(t)) {
      rc = fx_err_set(err, FX_EINVAL, "%s: '%.64s' is not %s", opt, t, what);
      break;
    }
    char **grown = realloc(*list, (*n + 1) * sizeof **list);
    if (!grown || !(grown[*n] = strdup(t))) {
      if (grown) *list = grown;
      rc = fx_err_set(err, FX_ENOMEM, "out of memory");
      break;
    }
    *list = grown;
    (*n)++;
  }
  if (!rc && *n == before) rc = fx_err_set(err, FX_EINVAL, "%s: give at least one value", opt);
  free(copy);
  return rc;
}

static int tenant_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 64) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '.' || *s == '_' || *s == '-'))
      return 0;
  return 1;
}

/* A job id or a surrogate (offset:{topic}/{partition}/{offset}). */
static int any_job_id_ok(const char *s) {
  if (strncmp(s, "offset:", 7) == 0) {
    char topic[256];
    int32_t p;
    int64_t o;
    return fx_rp_parse_position(s + 7, strlen(s + 7), topic, sizeof topic, &p, &o) == 0;
  }
  return fx_job_id_valid(s);
}

int fx_rp_filter_set(fx_rp_filter *f, fx_rp_field field, const char *value, int64_t now_ms,
                     fx_err *err) {
  switch (field) {
  case FX_RP_TENANT:
    return add_list(&f->tenants, &f->n_tenants, value, "--tenant", tenant_ok,
                    "a tenant id (1..64 letters, digits, '.', '_' or '-')", err);
  case FX_RP_JOB_ID:
    return add_list(&f->job_ids, &f->n_job_ids, value, "--job-id", any_job_id_ok,
                    "a job id (1..128 letters, digits, '-', '.', '_' or ':')", err);
  case FX_RP_CLASS: {
    char *copy = strdup(value), *save = NULL;
    if (!copy) return fx_err_set(err, FX_ENOMEM, "out of memory");
    int rc = 0, any = 0;
    for (char *t = strtok_r(copy, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save), any = 1) {
      fx_errclass c = fx_errclass_parse(t);
      if (c == FX_EC_NONE) {
        char names[400] = "";
        for (int i = 1; i < FX_EC_COUNT; i++)
          snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i > 1 ? ", " : "",
                   fx_errclass_name((fx_errclass)i));
        rc = fx_err_set(err, FX_EINVAL, "--error-class: '%.64s' is not an error class; one of %s",
                        t, names);
      } else {
        f->classes |= 1u << c;
      }
    }
    free(copy);
    if (!rc && !any) rc = fx_err_set(err, FX_EINVAL, "--error-class: give at least one class");
    return rc;
  }
  case FX_RP_SINCE:
  case FX_RP_UNTIL: {
    int64_t t;
    const char *opt = field == FX_RP_SINCE ? "--since" : "--until";
    if (fx_time_parse_ms(value, now_ms, &t) != 0)
      return fx_err_set(err, FX_EINVAL,
                        "%s: '%.64s' is not a time; give 2026-11-30T06:00:00Z, 2026-11-30 or a "
                        "duration back from now (90s, 15m, 2h, 7d)",
                        opt, value);
    char **text = field == FX_RP_SINCE ? &f->since_text : &f->until_text;
    free(*text);
    if (!(*text = strdup(value))) return fx_err_set(err, FX_ENOMEM, "out of memory");
    if (field == FX_RP_SINCE) f->has_since = 1, f->since_ms = t;
    else f->has_until = 1, f->until_ms = t;
    return 0;
  }
  }
  return fx_err_set(err, FX_EINVAL, "unknown filter");
}

void fx_rp_filter_free(fx_rp_filter *f) {
  for (size_t i = 0; i < f->n_tenants; i++) free(f->tenants[i]);
  for (size_t i = 0; i < f->n_job_ids; i++) free(f->job_ids[i]);
  free(f->tenants);
  free(f->job_ids);
  free(f->since_text);
  free(f->until_text);
  memset(f, 0, sizeof *f);
}

int fx_rp_filter_empty(const fx_rp_filter *f) {
  return !f->n_tenants && !f->n_job_ids && !f->classes && !f->has_since && !f->has_until;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void append(char *out, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void append(char *out, size_t size, const char *fmt, ...) {
  size_t n = strlen(out);
  if (n + 1 >= size) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out + n, size - n, fmt, ap);
  va_end(ap);
}

static void describe_list(char *out, size_t size, const char *name, char **list, size_t n) {
  if (!n) return;
  char **sorted = malloc(n * sizeof *sorted);
  if (!sorted) return;
  memcpy(sorted, list, n * sizeof *sorted);
  qsort(sorted, n, sizeof *sorted, cmp_str);
  append(out, size, *out ? ";%s=" : "%s=", name);
  for (size_t i = 0; i < n; i++)
    if (i == 0 || strcmp(sorted[i], sorted[i - 1]) != 0)
      append(out, size, i ? ",%s" : "%s", sorted[i]);
  free(sorted);
}

void fx_rp_filter_describe(const fx_rp_filter *f, char *out, size_t size) {
  if (!size) return;
  *out = '\0';
  if (f->classes) {
    append(out, size, "%s", "error-class=");
    int first = 1;
    for (int i = 1; i < FX_EC_COUNT; i++)
      if (f->classes & (1u << i)) {
        append(out, size, first ? "%s" : ",%s", fx_errclass_name((fx_errclass)i));
        first = 0;
      }
  }
  describe_list(out, size, "job-id", f->job_ids, f->n_job_ids);
  if (f->has_since) append(out, size, *out ? ";since=%s" : "since=%s", f->since_text);
  describe_list(out, size, "tenant", f->tenants, f->n_tenants);
  if (f->has_until) append(out, size, *out ? ";until=%s" : "until=%s", f->until_text);
}

void fx_rp_group(const char *base, const fx_rp_filter *f, int from_parking, char *out,
                 size_t size) {
  char desc[2048];
  fx_rp_filter_describe(f, desc, sizeof desc);
  const char *suffix = from_parking ? ".parking" : "";
  if (!*desc) {
    snprintf(out, size, "%s%s", base, suffix);
  } else if (strlen(base) + strlen(suffix) + 1 + strlen(desc) <= 200) {
    snprintf(out, size, "%s%s;%s", base, suffix, desc);
  } else {
    unsigned char d[32];
    unsigned int n = 0;
    EVP_Digest(desc, strlen(desc), d, &n, EVP_sha256(), NULL);
    char hex[17];
    for (int i = 0; i < 8; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    snprintf(out, size, "%s%s;filter-%s", base, suffix, hex);
  }
}

/* ---- letters ------------------------------------------------------------- */

static int in_list(char **list, size_t n, const char *v) {
  if (!v) return 0;
  for (size_t i = 0; i < n; i++)
    if (strcmp(list[i], v) == 0) return 1;
  return 0;
}

int fx_rp_match(const fx_rp_filter *f, const fx_rp_letter *l) {
  if (f->n_tenants && !in_list(f->tenants, f->n_tenants, l->tenant)) return 0;
  if (f->n_job_ids && !in_list(f->job_ids, f->n_job_ids, l->job_id)) return 0;
  if (f->classes) {
    fx_errclass c = fx_errclass_parse(l->error_class);
    if (c == FX_EC_NONE || !(f->classes & (1u << c))) return 0;
  }
  if (f->has_since || f->has_until) {
    int64_t when = -1;
    /* The header is always absolute; a duration there would be a forgery. */
    if (!l->last_failure || strlen(l->last_failure) < 10 ||
        fx_time_parse_ms(l->last_failure, 0, &when) != 0)
      when = l->timestamp_ms;
    if (when < 0) return 0;
    if (f->has_since && when < f->since_ms) return 0;
    if (f->has_until && when >= f->until_ms) return 0;
  }
  return 1;
}

static int parse_int(const char *s, long long lo, long long hi, long long *out) {
  if (!s || !*s) return -1;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (*end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

int fx_rp_attempt(const fx_rp_letter *l) {
  long long a;
  if (parse_int(l->attempt, 1, 1000, &a) == 0) return (int)a;
  json_t *v = l->len ? json_loadb(l->value, l->len, 0, NULL) : NULL;
  json_t *at = json_object_get(v, "attempt");
  a = json_is_integer(at) ? json_integer_value(at) : 1;
  json_decref(v);
  return a >= 1 && a <= 1000 ? (int)a : 1;
}

void fx_rp_position(const fx_rp_letter *l, char *out, size_t size) {
  snprintf(out, size, "%s/%d/%lld", l->topic, (int)l->partition, (long long)l->offset);
}

void fx_rp_identity(const fx_rp_letter *l, char *out, size_t size) {
  snprintf(out, size, "%s/%s/%s#%d", l->orig_topic ? l->orig_topic : "",
           l->orig_partition ? l->orig_partition : "", l->orig_offset ? l->orig_offset : "",
           fx_rp_attempt(l));
}

/* The hint every "cannot be replayed" reason ends with. */
#define AFTER_FIX "; after fixing the cause, `fhirx replay --from-parking` sends it back"

fx_rp_action fx_rp_decide(const fx_rp_rules *r, const fx_rp_letter *l, char **job, size_t *job_len,
                          char *reason, size_t reason_size) {
  *job = NULL;
  *job_len = 0;
  if (l->value_omitted || !l->len) {
    if (l->value_omitted)
      snprintf(reason, reason_size,
               "not replayable: the original job was too large to copy into the dead letter; it "
               "is at %s/%s/%s: split it and enqueue the parts",
               l->orig_topic ? l->orig_topic : "?", l->orig_partition ? l->orig_partition : "?",
               l->orig_offset ? l->orig_offset : "?");
    else
      snprintf(reason, reason_size, "not replayable: the dead letter has no value");
    return FX_RP_PARK_INVALID;
  }
  json_t *doc = json_loadb(l->value, l->len, JSON_REJECT_DUPLICATES, NULL);
  if (!json_is_object(doc)) {
    json_decref(doc);
    snprintf(reason, reason_size,
             "not replayable: the dead letter is the original message, which is not a JSON "
             "object; correct it where it was produced and enqueue it again");
    return FX_RP_PARK_INVALID;
  }
  int attempt = fx_rp_attempt(l);
  json_object_set_new(doc, "attempt", json_integer(attempt < 1000 ? attempt + 1 : 1000));
  fx_job *parsed = NULL;
  fx_job_error jerr;
  if (fx_job_from_json(doc, r->profiles, &r->lim, &parsed, &jerr) != 0) {
    json_decref(doc);
    snprintf(reason, reason_size, "not replayable as is (%s): %.*s" AFTER_FIX,
             fx_errclass_name(jerr.cls), (int)fx_utf8_cut(jerr.msg, 300), jerr.msg);
    return FX_RP_PARK_INVALID;
  }
  char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(doc);
  if (!text) {
    fx_job_free(parsed);
    snprintf(reason, reason_size, "not replayable: out of memory");
    return FX_RP_PARK_INVALID;
  }
  fx_job_free(parsed);
  if (attempt >= r->max_attempts || attempt >= 1000) {
    free(text);
    snprintf(reason, reason_size, "attempt limit %lld reached: attempt %d failed (%s)",
             r->max_attempts < 1000 ? r->max_attempts : 1000, attempt,
             l->error_class ? l->error_class : "unknown class");
    return FX_RP_PARK_LIMIT;
  }
  *job = text;
  *job_len = strlen(text);
  return FX_RP_REPLAY;
}

/* ---- the marker ---------------------------------------------------------- */

#define MARKER_PREFIX "fhirx-replay/1 "

/* Appends to out[0..size) at *n; -1 when it does not fit. */
static int put(char *out, size_t size, size_t *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int put(char *out, size_t size, size_t *n, const char *fmt, ...) {
  if (*n >= size) return -1;
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(out + *n, size - *n, fmt, ap);
  va_end(ap);
  if (w < 0 || (size_t)w >= size - *n) return -1;
  *n += (size_t)w;
  return 0;
}

static int put_list(char *out, size_t size, size_t *n, const char *name, const fx_rp_tp *l,
                    size_t cnt, int ranges) {
  if (put(out, size, n, " %s=", name)) return -1;
  for (size_t i = 0; i < cnt; i++) {
    int rc = ranges ? put(out, size, n, "%s%d:%lld-%lld", i ? "," : "", (int)l[i].partition,
                          (long long)l[i].offset, (long long)l[i].last)
                    : put(out, size, n, "%s%d:%lld", i ? "," : "", (int)l[i].partition,
                          (long long)l[i].offset);
    if (rc) return -1;
  }
  return 0;
}

int fx_rp_marker_encode(const fx_rp_marker *m, char *out, size_t size) {
  size_t n = 0;
  if (put(out, size, &n, MARKER_PREFIX "t=%lld nj=%ld np=%ld", (long long)m->t_ms, m->n_jobs,
          m->n_parked) ||
      put_list(out, size, &n, "j", m->jobs, m->n_jobs_tp, 0) ||
      put_list(out, size, &n, "k", m->parking, m->n_parking_tp, 0) ||
      put_list(out, size, &n, "d", m->ranges, m->n_ranges, 1))
    return -1;
  return 0;
}

static int decode_list(const char *v, fx_rp_tp **out, size_t *cnt, int ranges) {
  *out = NULL;
  *cnt = 0;
  if (!*v) return 0;
  size_t cap = 1;
  for (const char *p = v; *p; p++) cap += *p == ',';
  fx_rp_tp *l = calloc(cap, sizeof *l);
  if (!l) return -1;
  const char *p = v;
  for (size_t i = 0; i < cap; i++) {
    char *end;
    long long part = strtoll(p, &end, 10);
    if (end == p || *end != ':' || part < 0 || part > INT32_MAX) goto bad;
    p = end + 1;
    long long off = strtoll(p, &end, 10);
    if (end == p || off < 0) goto bad;
    long long last = off;
    if (ranges) {
      if (*end != '-') goto bad;
      p = end + 1;
      last = strtoll(p, &end, 10);
      if (end == p || last < off) goto bad;
    }
    if (*end != (i + 1 < cap ? ',' : '\0')) goto bad;
    p = end + 1;
    l[i] = (fx_rp_tp){.partition = (int32_t)part, .offset = off, .last = last};
  }
  *out = l;
  *cnt = cap;
  return 0;
bad:
  free(l);
  return -1;
}

int fx_rp_marker_decode(const char *text, size_t len, fx_rp_marker *m) {
  memset(m, 0, sizeof *m);
  size_t plen = strlen(MARKER_PREFIX);
  if (!text || len < plen || memcmp(text, MARKER_PREFIX, plen) != 0) return 1;
  char *copy = malloc(len + 1);
  if (!copy) return -1;
  memcpy(copy, text, len);
  copy[len] = '\0';
  int seen = 0, rc = 0;
  char *save = NULL;
  for (char *t = strtok_r(copy + plen, " ", &save); t && !rc; t = strtok_r(NULL, " ", &save)) {
    char *eq = strchr(t, '=');
    if (!eq) {
      rc = -1;
      break;
    }
    *eq = '\0';
    const char *v = eq + 1;
    long long num;
    /* Each key once: a repeated list would replace (and leak) the first, and
     * a marker is only ever written with each key once. */
    static const char *const keys[] = {"t", "nj", "np", "j", "k", "d"};
    int bit = 0;
    for (int i = 0; i < 6; i++)
      if (strcmp(t, keys[i]) == 0) bit = 1 << i;
    if (bit & seen) {
      rc = -1;
      break;
    }
    if (strcmp(t, "t") == 0 && parse_int(v, 0, INT64_MAX, &num) == 0) m->t_ms = num, seen |= 1;
    else if (strcmp(t, "nj") == 0 && parse_int(v, 0, INT32_MAX, &num) == 0) m->n_jobs = (long)num, seen |= 2;
    else if (strcmp(t, "np") == 0 && parse_int(v, 0, INT32_MAX, &num) == 0) m->n_parked = (long)num, seen |= 4;
    else if (strcmp(t, "j") == 0) rc = decode_list(v, &m->jobs, &m->n_jobs_tp, 0), seen |= 8;
    else if (strcmp(t, "k") == 0) rc = decode_list(v, &m->parking, &m->n_parking_tp, 0), seen |= 16;
    else if (strcmp(t, "d") == 0) rc = decode_list(v, &m->ranges, &m->n_ranges, 1), seen |= 32;
    else rc = -1;
  }
  free(copy);
  if (rc || seen != 63) {
    fx_rp_marker_free(m);
    return -1;
  }
  return 0;
}

void fx_rp_marker_free(fx_rp_marker *m) {
  free(m->jobs);
  free(m->parking);
  free(m->ranges);
  memset(m, 0, sizeof *m);
}

int fx_rp_marker_covers(const fx_rp_marker *m, int32_t partition, int64_t offset) {
  for (size_t i = 0; i < m->n_ranges; i++)
    if (m->ranges[i].partition == partition && offset >= m->ranges[i].offset &&
        offset <= m->ranges[i].last)
      return 1;
  return 0;
}

static int merge_list(fx_rp_tp **into, size_t *n, const fx_rp_tp *from, size_t m, int ranges) {
  fx_rp_tp *l = realloc(*into, (*n + m + 1) * sizeof *l);
  if (!l) return -1;
  *into = l;
  for (size_t i = 0; i < m; i++) {
    size_t k = 0;
    while (k < *n && l[k].partition != from[i].partition) k++;
    if (k == *n) {
      l[(*n)++] = from[i];
      continue;
    }
    if (from[i].offset < l[k].offset) l[k].offset = from[i].offset;
    if (ranges && from[i].last > l[k].last) l[k].last = from[i].last;
  }
  return 0;
}

int fx_rp_marker_merge(fx_rp_marker *into, const fx_rp_marker *from) {
  if (merge_list(&into->jobs, &into->n_jobs_tp, from->jobs, from->n_jobs_tp, 0) ||
      merge_list(&into->parking, &into->n_parking_tp, from->parking, from->n_parking_tp, 0) ||
      merge_list(&into->ranges, &into->n_ranges, from->ranges, from->n_ranges, 1))
    return -1;
  if (!into->t_ms || (from->t_ms && from->t_ms < into->t_ms)) into->t_ms = from->t_ms;
  into->n_jobs += from->n_jobs;
  into->n_parked += from->n_parked;
  return 0;
}

void fx_rp_marker_prune(fx_rp_marker *m, int32_t partition, int64_t offset) {
  size_t k = 0;
  for (size_t i = 0; i < m->n_ranges; i++)
    if (m->ranges[i].partition != partition || m->ranges[i].last >= offset)
      m->ranges[k++] = m->ranges[i];
  m->n_ranges = k;
}

int fx_rp_parse_position(const char *s, size_t len, char *topic, size_t topic_size,
                         int32_t *partition, int64_t *offset) {
  /* topic/partition/offset: the topic may not contain '/', so split at the
   * last two slashes. */
  const char *end = s + len, *b = NULL, *a = NULL;
  for (const char *p = end; p > s; p--)
    if (p[-1] == '/') {
      if (!b) b = p - 1;
      else {
        a = p - 1;
        break;
      }
    }
  if (!a || a == s || (size_t)(a - s) >= topic_size || b - a < 2 || end - b < 2) return -1;
  long long v[2];
  const char *from[2] = {a + 1, b + 1}, *to[2] = {b, end};
  for (int i = 0; i < 2; i++) {
    v[i] = 0;
    if (to[i] - from[i] > 18) return -1;
    for (const char *p = from[i]; p < to[i]; p++) {
      if (*p < '0' || *p > '9') return -1;
      v[i] = v[i] * 10 + (*p - '0');
    }
  }
  if (v[0] > INT32_MAX) return -1;
  for (const char *p = s; p < a; p++)
    if (*p == '/') return -1;
  memcpy(topic, s, (size_t)(a - s));
  topic[a - s] = '\0';
  *partition = (int32_t)v[0];
  *offset = v[1];
  return 0;
}

/* ---- the dry run's text ----------------------------------------------------------- */

/* A header value for a terminal: escaped, "-" when absent. */
static void shown(const char *v, char *out, size_t size) {
  fx_str_printable(v && *v ? v : "-", out, size);
}

void fx_rp_dry_line(const fx_rp_letter *l, const char *verb, const char *attempt,
                    const char *reason, char *out, size_t size) {
  char pos[320], job[600], tenant[600], cls[300], status[100], last[300], why[2600];
  fx_rp_position(l, pos, sizeof pos);
  shown(l->job_id, job, sizeof job);
  shown(l->tenant, tenant, sizeof tenant);
  shown(l->error_class, cls, sizeof cls);
  fx_str_printable(l->http_status, status, sizeof status);
  shown(l->last_failure, last, sizeof last);
  fx_str_printable(reason, why, sizeof why);
  if (!size) return;
  snprintf(out, size, "%-6s %s  job %s  tenant %s  %s%s%s%s  attempt %s  last failure %s%s%s",
           verb, pos, job, tenant, cls, status[0] ? " (" : "", status, status[0] ? ")" : "",
           attempt, last, why[0] ? ": " : "", why);
  fx_utf8_trim(out);
}

void fx_rp_dry_key(const fx_rp_letter *l, char *out, size_t size) {
  char tenant[600], cls[300];
  shown(l->tenant, tenant, sizeof tenant);
  shown(l->error_class, cls, sizeof cls);
  if (!size) return;
  /* The tab always fits: escaping makes a header up to 4x longer, and a key
   * without its tab cannot be split again. When both do not fit, the class
   * keeps up to half the room and the tenant the rest, each cut on a
   * character (escaped text is valid UTF-8). */
  size_t room = size - 1, nt = strlen(tenant), nc = strlen(cls);
  if (room < 1) {
    out[0] = '\0';
    return;
  }
  if (nt + 1 + nc > room) {
    if (nc > (room - 1) / 2) nc = (room - 1) / 2;
    if (nt > room - 1 - nc) nt = room - 1 - nc;
  }
  snprintf(out, size, "%.*s\t%.*s", (int)fx_utf8_cut(tenant, nt), tenant,
           (int)fx_utf8_cut(cls, nc), cls);
}
