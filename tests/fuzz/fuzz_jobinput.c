/* What `fhirx enqueue` reads (worker/cli/jobinput.c, csv.c). The first byte
 * picks the format (CSV or NDJSON), a default tenant or none, the batch size
 * and whether ids have a prefix; the rest is the file. Properties:
 *  - every bad line is reported with a line number that was read and a
 *    message; the good ones become jobs;
 *  - every job produced is one a worker accepts (fx_job_parse), with the id
 *    and tenant the list gives, and the patients counted add up;
 *  - ids are distinct, and the same input gives the same jobs (same bytes);
 *  - fx_csv_split: the fields of a line, written back as quoted CSV, split
 *    again to the same fields. */
#include "tests/fuzz/fuzz.h"
#include "worker/cli/csv.h"
#include "worker/cli/jobinput.h"

static const fx_job_limits lim = {.max_bytes = 4096, .max_patients = 5};

typedef struct bad_lines {
  unsigned long count, max_line;
} bad_lines;

static void on_bad(unsigned long line, const char *msg, void *arg) {
  bad_lines *b = arg;
  FZ_CHECK(line >= 1, "a bad line reported as line %lu", line);
  FZ_CHECK(msg && *msg, "bad line %lu has no message", line);
  b->count++;
  if (line > b->max_line) b->max_line = line;
}

/* The jobs of text as one string (ids and texts), NULL when reading failed. */
static char *run(const char *text, size_t len, uint8_t mode) {
  fx_jobin_opts o = {.tenant = (mode & 2) ? "t1" : NULL,
                     .batch = 1 + (size_t)((mode >> 2) & 3),
                     .id_prefix = (mode & 16) ? "fz" : NULL};
  bad_lines bad = {0, 0};
  fx_jobin *in = NULL;
  fx_err err;
  memset(&err, 0, sizeof err);
  FZ_CHECK(fx_jobin_new(fz_profiles(), &lim, &o, on_bad, &bad, &in, &err) == 0,
           "fixed options refused: %s", err.msg);
  FILE *f = fmemopen((void *)(uintptr_t)text, len ? len : 1, "r");
  if (!f) abort();
  int rc = len ? fx_jobin_read(in, f, (mode & 1) ? FX_JOBIN_NDJSON : FX_JOBIN_CSV, &err) : 0;
  fclose(f);
  char *all = NULL;
  if (rc == 0 && fx_jobin_finish(in, &err) == 0) {
    fx_jobin_stats st;
    fx_jobin_get_stats(in, &st);
    FZ_CHECK(st.bad_lines == bad.count, "%lu bad lines counted, %lu reported", st.bad_lines,
             bad.count);
    FZ_CHECK(bad.max_line <= st.lines, "bad line %lu of %lu lines", bad.max_line, st.lines);
    size_t n = 0, total = 1;
    const fx_jobin_job *jobs = fx_jobin_jobs(in, &n);
    FZ_CHECK(n == st.jobs, "%zu jobs listed, %lu counted", n, st.jobs);
    unsigned long patients = 0;
    for (size_t i = 0; i < n; i++) {
      fx_job *job = NULL;
      fx_job_error e;
      memset(&e, 0, sizeof e);
      FZ_CHECK(fx_job_parse(jobs[i].text, jobs[i].len, fz_profiles(), &lim, &job, &e) == 0,
               "enqueue produced a job a worker refuses (%s): %s", e.msg, jobs[i].text);
      FZ_CHECK(strcmp(job->job_id, jobs[i].job_id) == 0 && strcmp(job->tenant, jobs[i].tenant) == 0,
               "job %zu's id or tenant differs from its text", i);
      FZ_CHECK(jobs[i].patients == job->n_tasks, "job %s lists %zu patients, has %zu",
               jobs[i].job_id, jobs[i].patients, job->n_tasks);
      patients += jobs[i].patients;
      fx_job_free(job);
      for (size_t j = 0; j < i; j++)
        FZ_CHECK(strcmp(jobs[i].job_id, jobs[j].job_id) != 0, "two jobs share the id %s",
                 jobs[i].job_id);
      total += strlen(jobs[i].job_id) + jobs[i].len + 2;
    }
    FZ_CHECK(patients == st.patients, "%lu patients in jobs, %lu counted", patients, st.patients);
    all = malloc(total);
    if (!all) abort();
    all[0] = '\0';
    for (size_t i = 0; i < n; i++) {
      strcat(all, jobs[i].job_id);
      strcat(all, " ");
      strncat(all, jobs[i].text, jobs[i].len);
      strcat(all, "\n");
    }
  } else {
    FZ_CHECK(err.msg[0] != '\0', "reading failed without a message");
  }
  fx_jobin_free(in);
  return all;
}

static void csv_roundtrip(const char *line, size_t n) {
  char *a = malloc(n + 1);
  if (!a) abort();
  memcpy(a, line, n);
  a[n] = '\0';
  char *fields[16];
  const char *why = NULL;
  int nf = fx_csv_split(a, fields, 16, &why);
  if (nf < 0) {
    FZ_CHECK(why && *why, "a CSV line refused without a reason");
    free(a);
    return;
  }
  FZ_CHECK(nf >= 1 && nf <= 16, "fx_csv_split gave %d fields", nf);
  size_t cap = 3 * n + 64, used = 0;
  char *w = malloc(cap);
  if (!w) abort();
  for (int i = 0; i < nf; i++) {
    FZ_CHECK(fields[i] >= a && fields[i] <= a + n, "field %d points outside its line", i);
    if (i) w[used++] = ',';
    w[used++] = '"';
    for (const char *p = fields[i]; *p; p++) {
      if (*p == '"') w[used++] = '"';
      w[used++] = *p;
    }
    w[used++] = '"';
  }
  w[used] = '\0';
  char *again[16];
  int nf2 = fx_csv_split(w, again, 16, &why);
  FZ_CHECK(nf2 == nf, "CSV written back splits into %d fields, not %d", nf2, nf);
  for (int i = 0; i < nf; i++)
    FZ_CHECK(strcmp(fields[i], again[i]) == 0, "CSV field %d changed: \"%s\" -> \"%s\"", i,
             fields[i], again[i]);
  free(w);
  free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  char *text = fz_str(data + 1, size - 1);
  size_t len = strlen(text);
  char *one = run(text, len, data[0]);
  char *two = run(text, len, data[0]);
  FZ_CHECK((!one && !two) || (one && two && strcmp(one, two) == 0),
           "the same input gave different jobs");
  free(one);
  free(two);
  for (const char *p = text; *p;) {
    size_t n = strcspn(p, "\n");
    csv_roundtrip(p, n);
    p += n;
    if (*p) p++;
  }
  free(text);
  return 0;
}
