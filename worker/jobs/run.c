/* A job's life on its worker thread (run.h). */
#include "worker/jobs/run.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/fhir.h"
#include "common/log.h"
#include "common/strutil.h"
#include "common/url.h"
#include "worker/bulk/bulk.h"
#include "worker/model/refs.h"
#include "worker/model/strset.h"
#include "worker/out/records.h"
#include "worker/replay/replay.h"

/* One request of a run: a (patient, type) task page by page, or a
 * referenced entity. */
typedef struct run_fetch {
  fx_fetch f;       /* first: the fetcher hands this back */
  fx_run *run;
  size_t task;      /* index in the job's tasks (for a reference: the task it came from) */
  int type;         /* index in fx_type_names */
  int depth;        /* 0: a patient task; n: a reference n hops away */
  int origin_type;  /* references: the type of the task that led here */
  int cache_owner;  /* references: this fetch fills the reference cache */
  char *ref_key;    /* references: "Practitioner/5" */
  char *url;        /* what to GET next */
  int page;
} run_fetch;

struct fx_run {
  fx_run_links links;
  fx_run_env env;
  fx_run_state state;
  fx_sink sink;
  int sink_open;      /* the run's hold on the sink */
  int delivered;      /* DONE with every output acknowledged */
  uint64_t seq;
  fx_partition *part; /* a reference */
  int64_t offset, timestamp;
  char *key;          /* the message key, for dead letters of unparseable jobs */
  char replayed_from[300];
  fx_tenant_metrics *tm;
  fx_job *job;        /* NULL when the job was invalid */
  fx_tenant_set *ts;  /* the tenants and profiles the job started with (a reference) */
  const fx_tenant_conf *tenant;
  const fx_profile *profile;
  fx_job_error jerr;
  char *raw;          /* invalid jobs: the original value, for the dead letter */
  size_t raw_len;
  int bulk;           /* a bulk job, handed over (no status here) */
  char job_id_buf[160];
  /* progress */
  size_t tasks_left, tasks_failed;
  size_t cursor_task;
  int cursor_type;
  fx_types *failed_types; /* per task: what a replay redoes */
  fx_types full_types;    /* fetched in full although the job had since */
  uint32_t *counts;       /* per type */
  size_t resources, failures;
  fx_errclass first_class;
  long first_status;
  char first_reason[512];
  char first_failure_at[32], last_failure_at[32];
  char started_at[32];
  uint64_t started_ms, deadline_ms;
  fx_strset *seen;        /* "Type/id" published by this job */
  fx_refs refs;           /* references asked for, reported, capped */
  size_t refs_fetched, refs_cached;
};

static void advance(fx_run *run);

const char *fx_run_state_name(fx_run_state s) {
  static const char *const names[] = {"fetching", "acking", "status", "dropping", "done"};
  return names[s];
}

/* ---- identity --------------------------------------------------------------- */

/* A job's identity in its outputs: its job_id, else what could be read of
 * it, else the message key when it looks like a job id (enqueue keys by
 * job_id), else where it came from. */
static const char *job_id(fx_run *r) {
  if (r->job) return r->job->job_id;
  if (r->jerr.job_id[0]) return r->jerr.job_id;
  if (r->key && fx_job_id_valid(r->key)) return r->key;
  snprintf(r->job_id_buf, sizeof r->job_id_buf, "offset:%s/%d/%lld", r->part->topic,
           (int)r->part->partition, (long long)r->offset);
  return r->job_id_buf;
}

const char *fx_run_tenant(const fx_run *r) {
  return r->job ? r->job->tenant : (r->jerr.tenant[0] ? r->jerr.tenant : NULL);
}

static fx_rec_job rec_job(fx_run *r) {
  fx_rec_job j = {.job_id = job_id(r), .tenant = fx_run_tenant(r),
                  .attempt = r->job ? r->job->attempt : 1, .topic = r->part->topic,
                  .partition = r->part->partition, .offset = r->offset};
  return j;
}

typedef struct logctx {
  char partition[16], offset[24];
} logctx;

static logctx log_of(const fx_run *run) {
  logctx c;
  snprintf(c.partition, sizeof c.partition, "%d", (int)run->part->partition);
  snprintf(c.offset, sizeof c.offset, "%lld", (long long)run->offset);
  return c;
}

/* ---- outputs ------------------------------------------------------------------ */

static void emit(fx_run *run, const char *topic, const char *key, char *value, size_t len,
                 rd_kafka_headers_t *h) {
  fx_out_emit(run->env.out, &run->sink, topic, key, value, len, h);
}

/* A record that could not be built (no memory): the job must not look
 * complete, so its sink fails and it runs again. */
static void unbuilt(fx_run *run, const char *what) {
  atomic_fetch_add(&run->env.sv->metrics->records_unbuilt, 1);
  fx_log(FX_LOG_ERROR, "a record could not be built; the job is not committed and runs again",
         "record", what, "job_id", job_id(run), NULL);
  fx_sink_fail(&run->sink);
}

typedef struct failure {
  fx_errclass cls;
  long status;
  const char *outcome;
  const char *url;
  int attempts;
  const char *message;
  int no_replay; /* a replay cannot help (the server's data is at fault): not dead-lettered */
} failure;

/* f: the fetch it is about (NULL for the job as a whole). */
static void record_failure(fx_run *run, const run_fetch *f, const failure *fl) {
  const fx_services *sv = run->env.sv;
  char now[32];
  fx_iso_now(now);
  if (!run->failures) {
    run->first_class = fl->cls;
    run->first_status = fl->status;
    snprintf(run->first_reason, sizeof run->first_reason, "%s", fl->message);
    memcpy(run->first_failure_at, now, sizeof now);
  }
  memcpy(run->last_failure_at, now, sizeof now);
  run->failures++;
  /* What a replay re-runs: the failed (patient, type) task; for a reference,
   * the task that led to it, and only when trying again could help; nothing
   * when the server's data itself is at fault (no_replay). */
  if (f && !fl->no_replay && f->depth == 0)
    fx_types_add(&run->failed_types[f->task], f->type);
  else if (f && !fl->no_replay && fx_errclass_transient(fl->cls))
    fx_types_add(&run->failed_types[f->task], f->origin_type);
  fx_rec_job j = rec_job(run);
  fx_rec_failure rf = {.cls = fl->cls, .http_status = fl->status, .outcome = fl->outcome,
                       .url = fl->url, .attempts = fl->attempts, .message = fl->message,
                       .patient = f ? run->job->tasks[f->task].patient : NULL,
                       .resource_type = f && f->type >= 0 ? fx_type_names[f->type] : NULL,
                       .reference = f ? f->ref_key : NULL, .time = now};
  size_t len;
  char *value = fx_rec_failure_value(&j, &rf, &len);
  char *key = fx_rec_failure_key(&j);
  if (value && key)
    emit(run, sv->app->cfg->topics.failures, key, value, len, fx_rec_headers(&j));
  else
    free(value), unbuilt(run, "failure");
  free(key);
  atomic_fetch_add(&sv->metrics->failures, 1);
  /* Patient ids only at debug: a read URL or a server's message can hold one. */
  char status[16] = "";
  if (fl->status) snprintf(status, sizeof status, "%ld", fl->status);
  logctx lc = log_of(run);
  fx_log(FX_LOG_WARN, "task failed", "job_id", j.job_id, "tenant", j.tenant, "partition",
         lc.partition, "offset", lc.offset, "error_class", fx_errclass_name(fl->cls),
         "resource_type", rf.resource_type, "http_status", status[0] ? status : NULL, NULL);
  if (fx_log_enabled(FX_LOG_DEBUG)) {
    char shown[1024] = "";
    if (fl->url) fx_url_redact(fl->url, shown, sizeof shown);
    fx_log(FX_LOG_DEBUG, "task failed: details", "job_id", j.job_id, "url",
           shown[0] ? shown : NULL, "reason", fl->message, NULL);
  }
}

/* A job is dead-lettered when it could not run at all, or when some of its
 * tasks failed in a way a replay can redo (record_failure). Permanent
 * failures of referenced entities alone are recorded, not dead-lettered. */
static int needs_dead_letter(const fx_run *run) {
  if (!run->job) return 1;
  for (size_t i = 0; i < run->job->n_tasks; i++)
    if (!fx_types_empty(run->failed_types[i])) return 1;
  return 0;
}

static char *dump(json_t *o, size_t *len) {
  char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  *len = s ? strlen(s) : 0;
  return s;
}

static void publish_dead_letter(fx_run *run) {
  const fx_services *sv = run->env.sv;
  char *value = NULL;
  size_t len = 0;
  const char *omitted = NULL;
  if (run->job) {
    /* A replayable job narrowed to the (patient, type) tasks that failed. */
    fx_job narrow = *run->job;
    narrow.tasks = calloc(run->job->n_tasks, sizeof *narrow.tasks);
    narrow.n_tasks = 0;
    for (size_t i = 0; narrow.tasks && i < run->job->n_tasks; i++)
      if (!fx_types_empty(run->failed_types[i])) {
        narrow.tasks[narrow.n_tasks] = run->job->tasks[i];
        narrow.tasks[narrow.n_tasks++].types = run->failed_types[i];
      }
    json_t *j = narrow.tasks ? fx_job_to_json(&narrow) : NULL;
    value = dump(j, &len);
    json_decref(j);
    free(narrow.tasks);
    if (!value) {
      unbuilt(run, "dead letter");
      return;
    }
  } else if (run->raw) {
    value = malloc(run->raw_len ? run->raw_len : 1);
    if (!value) {
      unbuilt(run, "dead letter");
      return;
    }
    memcpy(value, run->raw, run->raw_len);
    len = run->raw_len;
  } else {
    omitted = "original-too-large";
  }
  fx_rec_job j = rec_job(run);
  fx_rec_dead_letter d = {.cls = run->first_class, .http_status = run->first_status,
                          .reason = run->first_reason, .timestamp = run->timestamp,
                          .first_failure = run->first_failure_at,
                          .last_failure = run->last_failure_at,
                          .replayed_from = run->replayed_from, .omitted = omitted};
  emit(run, sv->app->cfg->topics.dlq, j.job_id, value, len, fx_rec_dead_letter_headers(&j, &d));
  atomic_fetch_add(&sv->metrics->dead_letters, 1);
}

static void publish_status(fx_run *run) {
  const fx_services *sv = run->env.sv;
  char now[32];
  fx_iso_now(now);
  fx_outcome outcome = run->failures == 0   ? FX_OUTCOME_COMPLETED
                       : run->resources > 0 ? FX_OUTCOME_PARTIAL
                                            : FX_OUTCOME_FAILED;
  json_t *counts = json_object(), *full = json_array();
  for (int i = 0; counts && run->counts && i < FX_NTYPES; i++)
    if (run->counts[i]) json_object_set_new(counts, fx_type_names[i], json_integer(run->counts[i]));
  for (int i = fx_types_next(run->full_types, 0); full && i >= 0;
       i = fx_types_next(run->full_types, i + 1))
    json_array_append_new(full, json_string(fx_type_names[i]));
  fx_rec_job j = rec_job(run);
  fx_rec_status st = {
      .outcome = outcome,
      .patients = run->job ? (long long)run->job->n_tasks : 0,
      .tasks = run->job ? (long long)fx_job_task_count(run->job) : 0,
      .tasks_failed = (long long)run->tasks_failed,
      .counts = counts,
      .resources = (long long)run->resources,
      .references_fetched = (long long)run->refs_fetched,
      .references_cached = (long long)run->refs_cached,
      .failures = (long long)run->failures,
      .error_class = run->failures ? run->first_class : FX_EC_NONE,
      .full_types = full,
      .since = run->job ? run->job->since : NULL,
      .started_at = run->started_at,
      .finished_at = now,
      .duration_ms = (long long)(fx_now_ms() - run->started_ms),
      .worker = sv->identity};
  size_t len;
  char *value = counts && full ? fx_rec_status_value(&j, &st, &len) : NULL;
  json_decref(counts);
  json_decref(full);
  if (!value) {
    unbuilt(run, "status");
    return;
  }
  emit(run, sv->app->cfg->topics.status, j.job_id, value, len, fx_rec_headers(&j));
  atomic_fetch_add(&sv->metrics->statuses, 1);
  fx_metrics_job_finished(sv->metrics, (int)outcome);
  logctx lc = log_of(run);
  fx_log(FX_LOG_INFO, "job finished", "job_id", j.job_id, "tenant", j.tenant, "partition",
         lc.partition, "offset", lc.offset, "state", fx_outcome_name(outcome), NULL);
}

/* ---- the lifecycle ------------------------------------------------------------ */

static int cursor_exhausted(const fx_run *run) {
  return !run->job || run->bulk || run->cursor_task >= run->job->n_tasks;
}

static void close_sink(fx_run *run) {
  if (!run->sink_open) return;
  run->sink_open = 0;
  fx_sink_close(&run->sink);
}

/* The one place FETCHING and DROPPING move on (ACKING and STATUS move on
 * when the sink settles). */
static void advance(fx_run *run) {
  switch (run->state) {
  case FX_RUN_FETCHING:
    if (run->tasks_left || !cursor_exhausted(run)) return;
    if (run->failures && needs_dead_letter(run)) publish_dead_letter(run);
    run->state = FX_RUN_ACKING;
    close_sink(run);
    return;
  case FX_RUN_DROPPING:
    if (run->tasks_left) return;
    close_sink(run);
    return;
  case FX_RUN_ACKING:
  case FX_RUN_STATUS:
  case FX_RUN_DONE: return;
  }
}

/* Kafka has (or refused) every output of the round: the status record goes
 * last, so whoever reads it can rely on every result, failure and dead
 * letter of the job being in Kafka. A job with an undelivered output gets
 * no status: it is not committed and runs again. */
static void on_settled(fx_sink *s, int failed) {
  fx_run *run = (fx_run *)((char *)s - offsetof(fx_run, sink));
  switch (run->state) {
  case FX_RUN_ACKING:
    if (!failed && !run->bulk) {
      run->state = FX_RUN_STATUS;
      fx_sink_open(s);
      run->sink_open = 1;
      publish_status(run);
      close_sink(run);
      return;
    }
    run->delivered = !failed;
    break;
  case FX_RUN_STATUS: run->delivered = !failed; break;
  case FX_RUN_DROPPING: run->delivered = 0; break;
  case FX_RUN_FETCHING:
  case FX_RUN_DONE: return; /* cannot happen: the sink is open while fetching */
  }
  run->state = FX_RUN_DONE;
  run->env.done(run->env.ctx, run);
}

static void task_done(fx_run *run) {
  run->tasks_left--;
  advance(run);
}

static int of_run(const fx_fetch *f, void *run) { return ((const run_fetch *)f)->run == run; }

void fx_run_abandon(fx_run *run) {
  if (run->state == FX_RUN_DROPPING || run->state == FX_RUN_DONE) return;
  int fetching = run->state == FX_RUN_FETCHING;
  run->state = FX_RUN_DROPPING;
  if (fetching && run->job) {
    /* Tasks not started yet never will: count them done. Fetches that wait
     * (for a retry or the governor) end canceled; those in flight end when
     * their answers come. */
    for (size_t i = run->cursor_task; !run->bulk && i < run->job->n_tasks; i++) {
      fx_types types = run->job->tasks[i].types;
      for (int k = 0; i == run->cursor_task && k < run->cursor_type; k++) fx_types_del(&types, k);
      run->tasks_left -= (size_t)fx_types_count(types);
    }
    run->cursor_task = run->job->n_tasks;
    /* Its fetches that wait end canceled (from the loop, soon). */
    fx_fetcher_drop(run->env.fetcher, of_run, run);
  }
  advance(run);
}

/* ---- fetching ------------------------------------------------------------------ */

static void on_fetch_done(fx_fetch *ff, const fx_fetch_result *r);

static run_fetch *new_fetch(fx_run *run, size_t task, int type) {
  run_fetch *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->run = run;
  f->task = task;
  f->type = type;
  f->f.tenant = run->job->tenant;
  f->f.scope = fx_tenant_token_scope(run->tenant, 0);
  f->f.path = fx_type_names[type];
  f->f.deadline_ms = run->deadline_ms;
  f->f.tm = run->tm;
  f->f.done = on_fetch_done;
  return f;
}

static void fetch_free(run_fetch *f) {
  /* A reference fetch that was to fill the cache and did not: wake whoever
   * waits for it, so they fetch it themselves. */
  if (f->cache_owner) fx_refcache_fail(f->run->env.sv->refs, f->run->job->tenant, f->ref_key);
  free(f->url);
  free(f->ref_key);
  free(f);
}

static void fetch_finish(run_fetch *f) {
  fx_run *run = f->run;
  fetch_free(f);
  task_done(run);
}

/* Replaces every {patient} in a profile's search template; NULL on OOM. */
static char *expand(const char *tmpl, const char *patient) {
  size_t n = 1, pl = strlen(patient);
  for (const char *p = tmpl; *p;) {
    if (strncmp(p, "{patient}", 9) == 0) n += pl, p += 9;
    else n++, p++;
  }
  char *out = malloc(n), *o = out;
  if (!out) return NULL;
  for (const char *p = tmpl; *p;) {
    if (strncmp(p, "{patient}", 9) == 0) {
      memcpy(o, patient, pl);
      o += pl;
      p += 9;
    } else {
      *o++ = *p++;
    }
  }
  *o = '\0';
  return out;
}

static char *first_url(fx_run *run, size_t task, int type) {
  const char *base = run->tenant->fhir_base;
  const fx_type_rule *rule = &run->profile->types[type];
  const char *patient = run->job->tasks[task].patient;
  if (rule->mode == FX_FETCH_READ) {
    if (run->job->since) fx_types_add(&run->full_types, type);
    size_t n = strlen(base) + strlen(fx_type_names[type]) + strlen(patient) + 3;
    char *url = malloc(n);
    if (url) snprintf(url, n, "%s/%s/%s", base, fx_type_names[type], patient);
    return url;
  }
  char *query = expand(rule->search, patient);
  if (!query) return NULL;
  char count[32] = "";
  if (rule->count) snprintf(count, sizeof count, "&_count=%d", rule->count);
  char *since = NULL; /* the escaped instant */
  if (run->job->since && rule->incremental) {
    /* A date-only since goes out as its first instant (UTC), as bulk's _since
     * does: Cerner refuses _lastUpdated without a time for MedicationRequest
     * and ServiceRequest (medication-request.md, service-request.md). */
    size_t size = strlen(run->job->since) + 16;
    char *inst = malloc(size);
    if (!inst || fx_job_since_instant(run->job->since, inst, size) < 0 ||
        !(since = curl_easy_escape(NULL, inst, 0))) {
      free(inst);
      free(query);
      return NULL;
    }
    free(inst);
  } else if (run->job->since) {
    fx_types_add(&run->full_types, type); /* the server cannot narrow it: fetched in full */
  }
  size_t n = strlen(base) + strlen(fx_type_names[type]) + strlen(query) + strlen(count) +
             (since ? strlen(since) + 16 : 0) + 4;
  char *url = malloc(n);
  if (url)
    snprintf(url, n, "%s/%s?%s%s%s%s", base, fx_type_names[type], query, count,
             since ? "&_lastUpdated=ge" : "", since ? since : "");
  curl_free(since);
  free(query);
  return url;
}

fx_fetch *fx_run_next_fetch(fx_run *run) {
  while (run->state == FX_RUN_FETCHING && !cursor_exhausted(run)) {
    const fx_job_task *task = &run->job->tasks[run->cursor_task];
    size_t ti = run->cursor_task;
    int type = fx_types_next(task->types, run->cursor_type);
    if (type < 0) { /* cannot happen: parsed tasks have at least one type */
      run->cursor_task++;
      run->cursor_type = 0;
      continue;
    }
    run->cursor_type = type + 1;
    if (fx_types_next(task->types, run->cursor_type) < 0) {
      run->cursor_task++;
      run->cursor_type = 0;
    }
    run_fetch *f = new_fetch(run, ti, type);
    if (f && (f->url = first_url(run, ti, type))) {
      f->f.url = f->url;
      f->f.accept = run->profile->types[type].accept;
      return &f->f;
    }
    if (f) {
      failure fl = {.cls = FX_EC_INVALID_JOB, .message = "out of memory building a URL"};
      record_failure(run, f, &fl);
      run->tasks_failed++;
      fetch_finish(f);
    } else {
      task_done(run); /* out of memory: this task is lost to this run: fail it */
      fx_sink_fail(&run->sink);
    }
  }
  return NULL;
}

int fx_run_has_work(const fx_run *run) {
  return run->state == FX_RUN_FETCHING && !cursor_exhausted(run);
}

/* ---- answers -------------------------------------------------------------------- */

/* Shared by every resource of one response: when and from where, computed
 * once per page rather than once per resource. */
typedef struct page {
  const char *via;
  char fetched_at[32];
  char shown[1024]; /* the URL without query values */
} page;

static void page_init(page *pg, const char *via, const char *url) {
  pg->via = via;
  fx_iso_now(pg->fetched_at);
  fx_url_redact(url, pg->shown, sizeof pg->shown);
}

static void follow_references(const run_fetch *from, json_t *res);

static void publish_resource(run_fetch *f, const page *pg, json_t *res) {
  fx_run *run = f->run;
  const fx_services *sv = run->env.sv;
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  char why[200];
  if (fx_resource_key_problem(type, id, why, sizeof why)) {
    /* Nothing safe to key it by: a failure that says why, never the id
     * (resources.h), and never a silent drop. */
    char msg[320];
    int known = type && fx_resource_index(type) >= 0;
    snprintf(msg, sizeof msg, "%s resource in the response %s; not published", known ? type : "a",
             why);
    run_fetch g = *f;
    if (known) g.type = fx_resource_index(type);
    failure fl = {.cls = FX_EC_INVALID_RESPONSE, .url = f->url, .attempts = f->f.attempts,
                  .message = msg, .no_replay = 1};
    record_failure(run, &g, &fl);
    return;
  }
  char *key = fx_result_key(run->job->tenant, type, id);
  if (!key) {
    fx_sink_fail(&run->sink); /* out of memory: the job runs again */
    return;
  }
  int fresh = fx_strset_add(run->seen, key + strlen(run->job->tenant) + 1);
  if (fresh != 1) {
    if (fresh < 0) fx_sink_fail(&run->sink);
    free(key);
    return;
  }
  size_t len;
  char *value = dump(res, &len);
  if (!value) {
    fx_sink_fail(&run->sink);
    free(key);
    return;
  }
  if (len > sv->max_message) {
    free(key);
    free(value);
    char msg[256];
    snprintf(msg, sizeof msg, "%s/%s is %zu bytes, more than the %zu bytes a message may have",
             type, id, len, sv->max_message);
    failure fl = {.cls = FX_EC_TOO_LARGE, .url = f->url, .attempts = f->f.attempts,
                  .message = msg};
    record_failure(run, f, &fl);
    return;
  }
  fx_rec_job j = rec_job(run);
  rd_kafka_headers_t *h = fx_rec_headers(&j);
  /* Referenced entities are shared by many patients: no patient header. */
  if (f->depth == 0)
    rd_kafka_header_add(h, "fhirx-patient", -1, run->job->tasks[f->task].patient, -1);
  rd_kafka_header_add(h, "fhirx-source-url", -1, pg->shown, -1);
  rd_kafka_header_add(h, "fhirx-fetched-at", -1, pg->fetched_at, -1);
  rd_kafka_header_add(h, "fhirx-via", -1, pg->via, -1);
  emit(run, sv->app->cfg->topics.results, key, value, len, h);
  free(key);
  int idx = fx_resource_index(type);
  if (idx >= 0) run->counts[idx]++;
  run->resources++;
  atomic_fetch_add(&sv->metrics->results, 1);
  follow_references(f, res);
}

/* ---- references ---------------------------------------------------------------- */

typedef struct ref_wait {
  fx_run *run;
  size_t task;
  int type, depth, origin_type;
  char *url; /* owned: the exact URL to fetch (attachments), NULL = base + key */
  char key[FX_REF_KEY_SIZE];
} ref_wait;

static char *entity_url(const fx_run *run, const char *key) {
  const char *base = run->tenant->fhir_base;
  size_t n = strlen(base) + strlen(key) + 2;
  char *url = malloc(n);
  if (url) snprintf(url, n, "%s/%s", base, key);
  return url;
}

/* Fetches a reference ourselves (a cache miss, or no cache). Takes w->url. */
static void fetch_reference(ref_wait *w, int cache_owner) {
  fx_run *run = w->run;
  run_fetch *f = new_fetch(run, w->task, w->type);
  char *url = w->url ? w->url : entity_url(run, w->key);
  w->url = NULL;
  if (!f || !url || !(f->ref_key = strdup(w->key))) {
    free(url);
    if (cache_owner) fx_refcache_fail(run->env.sv->refs, run->job->tenant, w->key);
    if (f) fetch_free(f);
    fx_sink_fail(&run->sink); /* out of memory: the job runs again */
    task_done(run);
    return;
  }
  f->url = url;
  f->f.url = url;
  f->f.accept = run->profile->types[w->type].accept;
  f->depth = w->depth;
  f->origin_type = w->origin_type;
  f->cache_owner = cache_owner && run->env.sv->refs;
  fx_fetcher_submit(run->env.fetcher, &f->f, 0);
}

/* Publishes a referenced entity from the cache, as if it had been fetched. */
static void publish_cached(const ref_wait *w, const char *json, size_t len) {
  fx_run *run = w->run;
  json_t *doc = json_loadb(json, len, 0, NULL);
  char *url = w->url ? NULL : entity_url(run, w->key);
  if (doc && (url || w->url)) {
    run_fetch f = {.run = run, .task = w->task, .type = w->type, .depth = w->depth,
                   .origin_type = w->origin_type, .ref_key = (char *)(uintptr_t)w->key,
                   .url = url ? url : w->url};
    page pg;
    page_init(&pg, "reference", f.url);
    publish_resource(&f, &pg, doc);
    run->refs_cached++;
    atomic_fetch_add(&run->env.sv->metrics->refs_cached, 1);
  } else {
    fx_sink_fail(&run->sink);
  }
  json_decref(doc);
  free(url);
}

static void on_reference_ready(const char *json, size_t len, void *arg) {
  ref_wait *w = arg;
  fx_run *run = w->run;
  if (run->state == FX_RUN_DROPPING) {
    task_done(run);
  } else if (json) {
    publish_cached(w, json, len);
    task_done(run);
  } else {
    fetch_reference(w, 0); /* the fetch we waited for failed: try ourselves */
  }
  free(w->url);
  free(w);
  fx_fetcher_pump(run->env.fetcher);
}

/* Asks for the entity key once: from the cache, or fetched (from url when
 * given: takes it). */
static void request_reference(const run_fetch *from, int type, const char *key, char *url) {
  fx_run *run = from->run;
  const fx_services *sv = run->env.sv;
  ref_wait w = {.run = run, .task = from->task, .type = type, .depth = from->depth + 1,
                .origin_type = from->depth > 0 ? from->origin_type : from->type, .url = url};
  snprintf(w.key, sizeof w.key, "%s", key); /* fits: fx_ref_parse made it for FX_REF_KEY_SIZE */
  run->tasks_left++; /* one unit for this reference, done by task_done */
  if (!sv->refs) {
    fetch_reference(&w, 0);
    return;
  }
  ref_wait *waiting = malloc(sizeof *waiting);
  if (!waiting) {
    fetch_reference(&w, 0);
    return;
  }
  *waiting = w;
  char *json = NULL;
  size_t len = 0;
  int rc = fx_refcache_get(sv->refs, run->job->tenant, key, run->env.lp, on_reference_ready,
                           waiting, &json, &len);
  if (rc == FX_REF_WAIT) return; /* on_reference_ready owns waiting (and url) now */
  free(waiting);
  if (rc == FX_REF_HIT) {
    publish_cached(&w, json, len);
    free(json);
    free(w.url);
    task_done(run);
  } else {
    fetch_reference(&w, 1);
  }
}

static void on_reference(void *arg, const char *ref, int only_type, int exact) {
  const run_fetch *from = arg;
  fx_run *run = from->run;
  fx_ref_found found;
  run_fetch f = *from;
  f.origin_type = from->depth > 0 ? from->origin_type : from->type;
  f.depth = from->depth + 1; /* a reference is one hop away, fetched or not */
  f.ref_key = NULL;
  switch (fx_refs_consider(&run->refs, run->profile, run->tenant->fhir_base, run->seen, ref,
                           only_type, exact, &found)) {
  case FX_REFD_SKIP: return;
  case FX_REFD_FOLLOW: {
    char *url = NULL;
    if (found.exact && !(url = strdup(ref))) {
      fx_sink_fail(&run->sink);
      return;
    }
    request_reference(from, found.type, found.key, url);
    return;
  }
  case FX_REFD_FOREIGN: {
    /* Never fetched with the tenant's token; the failure names what was
     * referenced (when the URL says) and where. */
    char shown[512], msg[700], key[FX_REF_KEY_SIZE];
    fx_url_redact(ref, shown, sizeof shown);
    snprintf(msg, sizeof msg,
             "reference %s is outside the tenant's FHIR base; not fetched with the tenant's "
             "token",
             shown);
    if (fx_refs_url_key(ref, key, sizeof key) == 0) {
      f.ref_key = key;
      char type[FX_TYPE_NAME_MAX + 1];
      snprintf(type, sizeof type, "%.*s", (int)strcspn(key, "/"), key);
      f.type = fx_resource_index(type);
    }
    failure fl = {.cls = FX_EC_FOREIGN_REFERENCE, .url = ref, .attempts = 1, .message = msg};
    record_failure(run, &f, &fl);
    return;
  }
  case FX_REFD_INVALID: {
    /* The failure names the type, never the id (nor the URL that holds it). */
    char msg[300];
    snprintf(msg, sizeof msg,
             "a reference to a %s has an id that breaks fhirx's id rule (1..%d of A-Z a-z 0-9 . "
             "_ ~ -, not '.' or '..' alone); not followed",
             fx_type_names[found.type], FX_FHIR_ID_MAX);
    f.type = found.type;
    failure fl = {.cls = FX_EC_INVALID_RESPONSE, .attempts = 1, .message = msg, .no_replay = 1};
    record_failure(run, &f, &fl);
    return;
  }
  case FX_REFD_CAPPED: {
    char msg[200];
    snprintf(msg, sizeof msg,
             "the job references more than %zu entities (worker.max_references_per_job); the "
             "rest were not fetched",
             run->refs.max);
    f = *from;
    f.depth = from->depth + 1;
    f.ref_key = NULL;
    failure fl = {.cls = FX_EC_TOO_LARGE, .attempts = 1, .message = msg};
    record_failure(run, &f, &fl);
    return;
  }
  }
}

/* Every reference in res, plus the attachment URLs the profile wants as
 * Binary, to the profile's depth; each entity is asked for once per job. */
static void follow_references(const run_fetch *from, json_t *res) {
  fx_run *run = from->run;
  if (!run->job->follow_references || from->depth >= run->profile->depth ||
      fx_types_empty(run->profile->follow))
    return;
  fx_refs_walk(run->profile, res, on_reference, (void *)(uintptr_t)from);
}

/* A search page: publish its entries, then follow Bundle.link[next]. Returns
 * 1 when the fetch goes on with the next page. */
static int handle_bundle(run_fetch *f, json_t *bundle) {
  fx_run *run = f->run;
  page pg;
  page_init(&pg, "search", f->url);
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(bundle, "entry"), i, e) {
    json_t *res = json_object_get(e, "resource");
    const char *mode = json_string_value(json_object_get(json_object_get(e, "search"), "mode"));
    const char *rt = json_string_value(json_object_get(res, "resourceType"));
    /* Cerner adds OperationOutcome warnings with search.mode=outcome: not data. */
    if ((mode && strcmp(mode, "outcome") == 0) || (rt && strcmp(rt, "OperationOutcome") == 0))
      continue;
    publish_resource(f, &pg, res);
  }
  const char *next = NULL;
  json_array_foreach(json_object_get(bundle, "link"), i, e) {
    const char *rel = json_string_value(json_object_get(e, "relation"));
    if (rel && strcmp(rel, "next") == 0) next = json_string_value(json_object_get(e, "url"));
  }
  if (!next) return 0;
  if (!fx_url_may_carry_token(next, &f->f.scope)) {
    char shown[512], msg[768];
    fx_url_redact(next, shown, sizeof shown);
    snprintf(msg, sizeof msg,
             "the next page link %s is outside the tenant's FHIR base (and its "
             "token_url_prefixes); not followed with the tenant's token",
             shown);
    failure fl = {.cls = FX_EC_FOREIGN_REFERENCE, .url = f->url, .attempts = f->f.attempts,
                  .message = msg};
    record_failure(run, f, &fl);
    if (f->depth == 0) run->tasks_failed++; /* the task is in the dead letter: count it */
    return 0;
  }
  long long max_pages = run->env.sv->app->cfg->worker.max_pages;
  if (f->page + 1 >= max_pages) {
    char msg[160];
    snprintf(msg, sizeof msg, "the search has more than %lld pages (worker.max_pages)", max_pages);
    failure fl = {.cls = FX_EC_TOO_LARGE, .url = f->url, .attempts = f->f.attempts,
                  .message = msg};
    record_failure(run, f, &fl);
    if (f->depth == 0) run->tasks_failed++;
    return 0;
  }
  char *url = strdup(next); /* followed exactly as given: -pageContext is opaque */
  if (!url) {
    fx_sink_fail(&run->sink);
    return 0;
  }
  free(f->url);
  f->url = url;
  f->f.url = url;
  f->page++;
  f->f.attempts = 0;
  fx_fetcher_submit(run->env.fetcher, &f->f, 0);
  return 1;
}

/* A 200 answer: the resource (read) or the Bundle (search). Returns 1 when
 * the fetch goes on (a next page), 0 when it is over; a failure is in fl. */
static int read_answer(run_fetch *f, const fx_http_response *res, failure *fl, char *msg,
                       size_t size) {
  fx_run *run = f->run;
  const fx_services *sv = run->env.sv;
  if (!fx_json_depth_ok(res->body, res->body_len, (int)sv->app->cfg->http.max_json_depth)) {
    fl->cls = FX_EC_INVALID_RESPONSE;
    fl->status = res->status;
    snprintf(msg, size,
             "the response nests JSON deeper than http.max_json_depth (%lld); not parsed",
             sv->app->cfg->http.max_json_depth);
    return 0;
  }
  json_error_t jerr;
  json_t *doc = json_loadb(res->body, res->body_len, 0, &jerr);
  const char *rt = json_string_value(json_object_get(doc, "resourceType"));
  int is_read = f->depth > 0 || run->profile->types[f->type].mode == FX_FETCH_READ;
  int continues = 0;
  if (rt && is_read && strcmp(rt, fx_type_names[f->type]) == 0) {
    if (f->depth > 0) {
      if (f->cache_owner) { /* share it before anything else can go wrong */
        size_t len;
        char *text = dump(doc, &len);
        if (text) fx_refcache_put(sv->refs, run->job->tenant, f->ref_key, text, len);
        else fx_refcache_fail(sv->refs, run->job->tenant, f->ref_key);
        free(text);
        f->cache_owner = 0;
      }
      run->refs_fetched++;
      atomic_fetch_add(&sv->metrics->refs_fetched, 1);
    }
    page pg;
    page_init(&pg, f->depth > 0 ? "reference" : "read", f->url);
    publish_resource(f, &pg, doc);
  } else if (rt && !is_read && strcmp(rt, "Bundle") == 0) {
    continues = handle_bundle(f, doc);
  } else {
    fl->cls = FX_EC_INVALID_RESPONSE;
    snprintf(msg, size, "expected a %s but got %s", is_read ? fx_type_names[f->type] : "Bundle",
             doc ? (rt ? rt : "JSON without resourceType") : "a body that is not JSON");
  }
  json_decref(doc);
  return continues;
}

/* What a failed answer says: class, status, outcome and message. */
static void describe_failure(const fx_fetch_result *r, failure *fl, char *outcome,
                             size_t osize, char *msg, size_t size) {
  const fx_http_response *res = r->res;
  if (r->ae) {
    fl->cls = fx_errclass_of_auth(r->ae, NULL);
    snprintf(msg, size, "%s", r->ae->err.msg);
  } else if (res->result) {
    fl->cls = res->result == FX_ETOOLARGE ? FX_EC_TOO_LARGE : FX_EC_TRANSIENT;
    snprintf(msg, size, "%s", res->error);
  } else {
    fl->cls = fx_errclass_of_status(res->status);
    fl->status = res->status;
    fx_fhir_outcome_summary(res->body, outcome, osize);
    char redirect[400];
    fx_url_redirect_note(res->status, fx_http_header(res, "Location"), redirect, sizeof redirect);
    snprintf(msg, size, "HTTP %ld%s%s%s%s", res->status, redirect[0] ? ": " : "", redirect,
             outcome[0] ? ": " : "", outcome);
    fl->outcome = outcome;
  }
}

static void on_fetch_done(fx_fetch *ff, const fx_fetch_result *r) {
  run_fetch *f = (run_fetch *)ff;
  fx_run *run = f->run;
  if (r->end == FX_FETCH_CANCELED || run->state == FX_RUN_DROPPING) {
    fetch_finish(f);
    return;
  }
  if (r->end == FX_FETCH_GAVE_UP && r->draining) {
    /* Draining and the EHR is failing: leave the whole job to the next owner
     * rather than dead-letter what a retry would fetch. */
    fx_run_abandon(run);
    fetch_finish(f);
    return;
  }
  failure fl = {.url = f->url, .attempts = f->f.attempts};
  char outcome[512] = "", msg[768] = "";
  if (r->end == FX_FETCH_REFUSED) {
    fl.cls = r->cls;
    snprintf(msg, sizeof msg, "%s", r->message);
  } else if (!r->ae && !r->res->result && r->res->status == 200) {
    int continues = read_answer(f, r->res, &fl, msg, sizeof msg);
    if (!fl.cls) {
      if (!continues) fetch_finish(f);
      return;
    }
  } else {
    describe_failure(r, &fl, outcome, sizeof outcome, msg, sizeof msg);
  }
  fl.message = msg;
  record_failure(run, f, &fl);
  if (f->depth == 0) run->tasks_failed++;
  fetch_finish(f);
}

/* ---- start and the rest ------------------------------------------------------------ */

/* A bulk job runs on the bulk thread of whichever worker owns its key on the
 * bulk topic (bulk.h): this thread only publishes the pending record. Once
 * Kafka has it, the job's offset moves on like any finished job's; its
 * status record comes from the bulk thread when the export ends. */
static void hand_over_bulk(fx_run *run) {
  const fx_services *sv = run->env.sv;
  run->bulk = 1;
  json_t *rec = fx_bulk_pending_record(run->job, run->part->topic, run->part->partition,
                                       run->offset, run->timestamp, run->replayed_from);
  size_t len;
  char *value = dump(rec, &len);
  json_decref(rec);
  if (!value) {
    unbuilt(run, "bulk pending");
  } else {
    fx_rec_job j = rec_job(run);
    emit(run, sv->app->cfg->topics.bulk, run->job->job_id, value, len, fx_rec_headers(&j));
    logctx lc = log_of(run);
    fx_log(FX_LOG_INFO, "bulk job handed to the bulk owner", "job_id", run->job->job_id,
           "tenant", run->job->tenant, "partition", lc.partition, "offset", lc.offset, NULL);
  }
}

fx_run *fx_run_new(const fx_run_env *env, fx_partition *part, const rd_kafka_message_t *m,
                   uint64_t seq) {
  fx_run *run = calloc(1, sizeof *run);
  if (!run || !(run->seen = fx_strset_new()) ||
      fx_refs_init(&run->refs, (size_t)env->sv->app->cfg->worker.max_references_per_job) != 0 ||
      !(run->counts = calloc(FX_NTYPES, sizeof *run->counts))) {
    if (run) {
      fx_strset_free(run->seen);
      fx_refs_free(&run->refs);
    }
    free(run);
    return NULL;
  }
  run->env = *env;
  run->seq = seq;
  run->part = part;
  part->refs++;
  run->offset = m->offset;
  run->timestamp = rd_kafka_message_timestamp(m, NULL);
  if (m->key) run->key = fx_memstr(m->key, m->key_len);
  /* A replayed job names the dead letter it came from; its own dead letter
   * carries that on, so an audit can follow a job through its attempts. */
  rd_kafka_headers_t *mh = NULL;
  const void *rv = NULL;
  size_t rlen = 0;
  if (rd_kafka_message_headers(m, &mh) == RD_KAFKA_RESP_ERR_NO_ERROR &&
      rd_kafka_header_get_last(mh, "fhirx-replayed-from", &rv, &rlen) ==
          RD_KAFKA_RESP_ERR_NO_ERROR &&
      rv && rlen < sizeof run->replayed_from) {
    memcpy(run->replayed_from, rv, rlen);
    run->replayed_from[rlen] = '\0';
    char topic[256];
    int32_t part_no;
    int64_t off;
    if (fx_rp_parse_position(run->replayed_from, rlen, topic, sizeof topic, &part_no, &off) != 0)
      run->replayed_from[0] = '\0';
  }
  fx_sink_init(&run->sink, env->lp, on_settled);
  fx_sink_open(&run->sink);
  run->sink_open = 1;
  run->state = FX_RUN_FETCHING;
  fx_iso_now(run->started_at);
  run->started_ms = fx_now_ms();
  run->deadline_ms =
      run->started_ms + (uint64_t)env->sv->app->cfg->worker.job_deadline_s * 1000u;
  run->ts = fx_tenant_slot_get(env->sv->tenants);
  const char *payload = m->payload ? m->payload : "";
  if (fx_job_parse(payload, m->len, &run->ts->profiles, &env->sv->limits, &run->job,
                   &run->jerr) != 0) {
    if (m->len <= env->sv->max_message && (run->raw = malloc(m->len ? m->len : 1))) {
      memcpy(run->raw, payload, m->len);
      run->raw_len = m->len;
    }
    return run;
  }
  run->tenant = fx_tenant_set_find(run->ts, run->job->tenant);
  run->profile = fx_profile_for(&run->ts->profiles, run->job->tenant);
  run->tm = fx_metrics_tenant(env->sv->metrics, run->job->tenant);
  if (run->job->kind == FX_JOB_BULK) {
    run->bulk = 1;
    return run;
  }
  run->tasks_left = fx_job_task_count(run->job);
  if (!(run->failed_types = calloc(run->job->n_tasks ? run->job->n_tasks : 1,
                                   sizeof *run->failed_types))) {
    fx_run_free(run);
    return NULL;
  }
  return run;
}

void fx_run_start(fx_run *run) {
  if (!run->job) {
    failure fl = {.cls = run->jerr.cls, .message = run->jerr.msg};
    record_failure(run, NULL, &fl);
  } else if (run->bulk) {
    hand_over_bulk(run);
  } else if (fx_log_enabled(FX_LOG_DEBUG)) {
    logctx lc = log_of(run);
    fx_log(FX_LOG_DEBUG, "job started", "job_id", run->job->job_id, "tenant", run->job->tenant,
           "partition", lc.partition, "offset", lc.offset, NULL);
  }
  advance(run);
}

void fx_run_free(fx_run *run) {
  if (!run) return;
  fx_job_free(run->job);
  if (run->ts) fx_tenant_set_release(run->ts);
  fx_strset_free(run->seen);
  fx_refs_free(&run->refs);
  fx_partition_unref(run->part);
  free(run->failed_types);
  free(run->counts);
  free(run->raw);
  free(run->key);
  free(run);
}

fx_run_state fx_run_get_state(const fx_run *run) { return run->state; }
uint64_t fx_run_deadline(const fx_run *run) { return run->deadline_ms; }
uint64_t fx_run_seq(const fx_run *run) { return run->seq; }
fx_partition *fx_run_partition(const fx_run *run) { return run->part; }
int64_t fx_run_offset(const fx_run *run) { return run->offset; }
int fx_run_committable(const fx_run *run) { return run->state == FX_RUN_DONE && run->delivered; }
fx_run_links *fx_run_links_of(fx_run *run) { return &run->links; }
