/* fhirx replay: dead letters back to the jobs topic (attempt + 1), or to
 * the parking topic when they cannot or may not run again.
 *
 * The flow, one batch at a time (worker/replay/replay.h explains the marker):
 *
 *   poll up to --batch letters -> decide each (filter, rules, attempt limit)
 *   -> commit the batch's first offsets with a marker
 *   -> produce the jobs and parked letters, wait for every acknowledgement
 *   -> commit the offsets after the batch, without a marker
 *
 * Offsets move only past letters whose outputs Kafka acknowledged, and a run
 * that finds a marker knows which of the batch's outputs already exist, so
 * replaying, killing and replaying again handles each letter exactly once.
 * Nothing is produced while polling, so a rebalance (another replay joining
 * the group) only ever drops letters that were decided but not produced. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "common/kafka.h"
#include "common/log.h"
#include "common/strutil.h"
#include "worker/cli/cli.h"
#include "worker/cli/replay_run.h"
#include "worker/cli/kclient.h"
#include "worker/cli/progress.h"
#include "worker/cli/ratelimit.h"
#include "worker/replay/replay.h"
#include "worker/model/strset.h"

volatile sig_atomic_t fx_replay_stop_requested;

/* ---- letters --------------------------------------------------------------- */

/* A letter's headers as strings (owned), and the view fx_rp_* reads. */
typedef struct letter {
  fx_rp_letter l;
  char *h[10];
} letter;

static const char *const header_names[10] = {
    "fhirx-error-class", "fhirx-http-status", "fhirx-tenant", "fhirx-job-id",
    "fhirx-attempt", "fhirx-last-failure", "fhirx-original-topic", "fhirx-original-partition",
    "fhirx-original-offset", "fhirx-value-omitted"};

static void letter_load(letter *lt, const rd_kafka_message_t *m, const char *topic) {
  memset(lt, 0, sizeof *lt);
  for (int i = 0; i < 10; i++) lt->h[i] = fx_kheader(m, header_names[i]);
  rd_kafka_timestamp_type_t tt;
  int64_t ts = rd_kafka_message_timestamp(m, &tt);
  lt->l = (fx_rp_letter){.topic = topic, .partition = m->partition, .offset = m->offset,
                         .timestamp_ms = tt == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? -1 : ts,
                         .error_class = lt->h[0], .http_status = lt->h[1], .tenant = lt->h[2],
                         .job_id = lt->h[3], .attempt = lt->h[4], .last_failure = lt->h[5],
                         .orig_topic = lt->h[6], .orig_partition = lt->h[7],
                         .orig_offset = lt->h[8], .value_omitted = lt->h[9],
                         .value = m->payload, .len = m->len};
}

static void letter_free(letter *lt) {
  for (int i = 0; i < 10; i++) free(lt->h[i]);
}

static int already_done(const replay *r, const fx_rp_letter *l) {
  char pos[320], ident[400];
  fx_rp_position(l, pos, sizeof pos);
  if (fx_strset_has(r->done_pos, pos)) return 1;
  fx_rp_identity(l, ident, sizeof ident);
  if (!fx_strset_has(r->done_ident, ident)) return 0;
  return fx_rp_marker_covers(&r->carry, l->partition, l->offset);
}

/* Decides m and prepares its output in e. */
static void decide(replay *r, const rd_kafka_message_t *m, entry *e, char *reason, size_t size) {
  letter lt;
  letter_load(&lt, m, r->source);
  memset(e, 0, sizeof *e);
  e->partition = m->partition;
  e->offset = m->offset;
  *reason = '\0';
  if (!fx_rp_match(&r->filter, &lt.l)) {
    e->act = ACT_SKIP;
  } else if (already_done(r, &lt.l)) {
    e->act = ACT_ALREADY;
  } else {
    char *job = NULL;
    size_t job_len = 0;
    fx_rp_action a = fx_rp_decide(&r->rules, &lt.l, &job, &job_len, reason, size);
    if (a == FX_RP_REPLAY) {
      json_t *doc = json_loadb(job, job_len, 0, NULL);
      const char *id = json_string_value(json_object_get(doc, "job_id"));
      e->act = ACT_REPLAY;
      e->topic = r->cfg->topics.jobs;
      e->key = id ? strdup(id) : NULL;
      e->key_len = id ? strlen(id) : 0;
      json_decref(doc);
      e->value = job;
      e->len = job_len;
      if (!r->dry) {
        char pos[320];
        fx_rp_position(&lt.l, pos, sizeof pos);
        e->headers = rd_kafka_headers_new(1);
        rd_kafka_header_add(e->headers, "fhirx-replayed-from", -1, pos, -1);
      }
    } else if (r->from_parking) {
      e->act = a == FX_RP_PARK_LIMIT ? ACT_KEEP_LIMIT : ACT_KEEP_INVALID;
    } else {
      /* Parked as it is: key, value and headers of the dead letter, plus why. */
      e->act = a == FX_RP_PARK_LIMIT ? ACT_PARK_LIMIT : ACT_PARK_INVALID;
      e->topic = r->cfg->topics.parking;
      if (m->key) {
        e->key = malloc(m->key_len ? m->key_len : 1);
        if (e->key) memcpy(e->key, m->key, m->key_len);
        e->key_len = m->key_len;
      }
      e->value = malloc(m->len ? m->len : 1);
      if (e->value && m->len) memcpy(e->value, m->payload, m->len);
      e->len = m->len;
      if (!r->dry) {
        rd_kafka_headers_t *h = NULL;
        e->headers = rd_kafka_message_headers(m, &h) == 0 && h ? rd_kafka_headers_copy(h)
                                                               : rd_kafka_headers_new(1);
        rd_kafka_header_remove(e->headers, "fhirx-parked-reason");
        rd_kafka_header_add(e->headers, "fhirx-parked-reason", -1, reason,
                            (ssize_t)fx_utf8_cut(reason, 512)); /* a character kept whole */
      }
    }
  }
  if (r->dry) {
    /* Per tenant and class, then the first --show letters. */
    if (e->act != ACT_SKIP) {
      char k[200];
      fx_rp_dry_key(&lt.l, k, sizeof k); /* header text, escaped for the terminal */
      json_t *row = json_object_get(r->table, k);
      if (!row) {
        row = json_pack("[i, i, i]", 0, 0, 0);
        json_object_set_new(r->table, k, row);
      }
      size_t col = e->act == ACT_REPLAY ? 0 : e->act == ACT_ALREADY ? 2 : 1;
      json_array_set_new(row, col, json_integer(json_integer_value(json_array_get(row, col)) + 1));
    }
    if (e->act != ACT_SKIP && r->listed < r->show) {
      static const char *const verbs[] = {"skip", "replay", "park", "park", "keep", "keep", "done"};
      char line[1400], attempt[32];
      int a = fx_rp_attempt(&lt.l);
      if (e->act == ACT_REPLAY) snprintf(attempt, sizeof attempt, "%d -> %d", a, a + 1);
      else snprintf(attempt, sizeof attempt, "%d", a);
      /* Header values escaped (a dead letter's headers may hold terminal escapes). */
      fx_rp_dry_line(&lt.l, verbs[e->act], attempt, reason, line, sizeof line);
      json_array_append_new(r->listing, json_string(line));
      r->listed++;
    }
  }
  letter_free(&lt);
}

static void entry_free(entry *e) {
  free(e->key);
  free(e->value);
  if (e->headers) rd_kafka_headers_destroy(e->headers);
  memset(e, 0, sizeof *e);
}

static void count(counts *c, action a) {
  c->read++;
  switch (a) {
  case ACT_SKIP: c->skipped++; break;
  case ACT_REPLAY: c->replayed++; break;
  case ACT_PARK_LIMIT: c->parked_limit++; break;
  case ACT_PARK_INVALID: c->parked_invalid++; break;
  case ACT_KEEP_LIMIT: c->kept_limit++; break;
  case ACT_KEEP_INVALID: c->kept_invalid++; break;
  case ACT_ALREADY: c->already++; break;
  }
}

/* ---- recovering from an interrupted run ------------------------------------ */

typedef struct scan_jobs {
  replay *r;
  const fx_rp_marker *mk;
  long found;
} scan_jobs;

/* A job on the jobs topic replayed from one of the marker's letters. */
static int on_scanned_job(const rd_kafka_message_t *m, void *arg) {
  scan_jobs *s = arg;
  char *from = fx_kheader(m, "fhirx-replayed-from");
  char topic[256];
  int32_t p;
  int64_t o;
  if (from && fx_rp_parse_position(from, strlen(from), topic, sizeof topic, &p, &o) == 0 &&
      strcmp(topic, s->r->source) == 0 && fx_rp_marker_covers(s->mk, p, o) &&
      fx_strset_add(s->r->done_pos, from) == 1)
    s->found++;
  free(from);
  return s->found >= s->mk->n_jobs; /* every job of the batch is accounted for */
}

static int on_scanned_parked(const rd_kafka_message_t *m, void *arg) {
  scan_jobs *s = arg;
  letter lt;
  letter_load(&lt, m, s->r->cfg->topics.parking);
  char ident[400];
  fx_rp_identity(&lt.l, ident, sizeof ident);
  if (fx_strset_add(s->r->done_ident, ident) == 1) s->found++;
  letter_free(&lt);
  return 0;
}

static rd_kafka_topic_partition_list_t *tp_list(const char *topic, const fx_rp_tp *l, size_t n) {
  rd_kafka_topic_partition_list_t *out = rd_kafka_topic_partition_list_new((int)n);
  for (size_t i = 0; i < n; i++)
    rd_kafka_topic_partition_list_add(out, topic, l[i].partition)->offset = l[i].offset;
  return out;
}

/* A marker on a committed offset: an earlier run was interrupted inside a
 * batch. Learn which of the batch's outputs reached Kafka. committed (the
 * offsets of the partitions this run reads) drops ranges already passed. */
static int recover(replay *r, const char *text, size_t len,
                   const rd_kafka_topic_partition_list_t *committed) {
  char *copy = fx_memstr(text, len);
  if (!copy) return fx_err_set(&r->err, FX_ENOMEM, "out of memory");
  int seen = fx_strset_add(r->marker_texts, copy); /* every partition of a batch has it */
  free(copy);
  if (seen == 0) return 0;
  fx_rp_marker mk;
  int d = fx_rp_marker_decode(text, len, &mk);
  if (d == 1) return 0;
  if (d < 0)
    return fx_err_set(&r->err, FX_EINVAL,
                      "the offsets group %s committed on %s carry a replay marker that cannot be "
                      "read; another program may commit with this group: use another --group",
                      r->group, r->source);
  for (int i = 0; committed && i < committed->cnt; i++)
    if (committed->elems[i].offset >= 0)
      fx_rp_marker_prune(&mk, committed->elems[i].partition, committed->elems[i].offset);
  if (mk.n_ranges == 0) {
    fx_rp_marker_free(&mk);
    return 0;
  }
  fx_log(FX_LOG_INFO, "an earlier replay was interrupted inside a batch; looking for what it produced",
         "group", r->group, NULL);
  int rc = 0;
  scan_jobs s = {r, &mk, 0};
  if (mk.n_jobs > 0 && mk.n_jobs_tp > 0) {
    rd_kafka_topic_partition_list_t *from = tp_list(r->cfg->topics.jobs, mk.jobs, mk.n_jobs_tp);
    rc = fx_kscan(r->cfg, r->cfg->topics.jobs, from, on_scanned_job, &s, 30000, &r->err);
    rd_kafka_topic_partition_list_destroy(from);
  }
  long jobs_found = s.found;
  s.found = 0;
  if (!rc && mk.n_parked > 0 && mk.n_parking_tp > 0) {
    rd_kafka_topic_partition_list_t *from =
        tp_list(r->cfg->topics.parking, mk.parking, mk.n_parking_tp);
    rc = fx_kscan(r->cfg, r->cfg->topics.parking, from, on_scanned_parked, &s, 30000, &r->err);
    rd_kafka_topic_partition_list_destroy(from);
  }
  if (!rc && fx_rp_marker_merge(&r->carry, &mk) != 0)
    rc = fx_err_set(&r->err, FX_ENOMEM, "out of memory");
  if (rc) {
    fx_err_prefix(&r->err, "cannot check what an interrupted replay produced");
    fx_rp_marker_free(&mk);
    return rc;
  }
  char a[24], b2[24];
  snprintf(a, sizeof a, "%ld", jobs_found);
  snprintf(b2, sizeof b2, "%ld", s.found);
  fx_log(FX_LOG_INFO, "the interrupted batch's outputs found", "jobs", a, "parked", b2, NULL);
  fx_rp_marker_free(&mk);
  return 0;
}

/* ---- the assignment --------------------------------------------------------- */

static int slot(replay *r, int32_t partition) {
  if (partition < 0) return -1;
  if ((size_t)partition >= r->n_slots) {
    size_t n = (size_t)partition + 16;
    int *a = realloc(r->assigned, n * sizeof *a);
    if (a) r->assigned = a;
    int *e = realloc(r->eof, n * sizeof *e);
    if (e) r->eof = e;
    if (!a || !e) return -1;
    for (size_t i = r->n_slots; i < n; i++) r->assigned[i] = r->eof[i] = 0;
    r->n_slots = n;
  }
  return partition;
}

static int all_eof(const replay *r) {
  if (r->n_assigned == 0) return 0;
  for (size_t i = 0; i < r->n_slots; i++)
    if (r->assigned[i] && !r->eof[i]) return 0;
  return 1;
}

void fx_replay_drop_batch(replay *r) {
  for (size_t i = 0; i < r->n_batch; i++) entry_free(&r->batch[i]);
  r->n_batch = 0;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  replay *r = opaque;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    /* Before fetching anything: markers left by an interrupted run, and how
     * much there is to read (for the progress bar). */
    rd_kafka_topic_partition_list_t *committed = rd_kafka_topic_partition_list_copy(parts);
    rd_kafka_resp_err_t e = rd_kafka_committed(rk, committed, 30000);
    if (e) {
      fx_err_set(&r->err, FX_EIO, "cannot read the offsets group %s committed on %s: %s",
                 r->group, r->source, rd_kafka_err2str(e));
      r->fatal = 1;
    }
    r->total = r->c.read; /* what is left to read starts again from here */
    for (int i = 0; !r->fatal && i < committed->cnt; i++) {
      rd_kafka_topic_partition_t *tp = &committed->elems[i];
      if (tp->metadata_size && recover(r, tp->metadata, tp->metadata_size, committed) != 0)
        r->fatal = 1;
      int64_t lo = 0, hi = 0;
      if (!rd_kafka_query_watermark_offsets(rk, tp->topic, tp->partition, &lo, &hi, 10000)) {
        int64_t from = tp->offset >= lo ? tp->offset : lo;
        if (hi > from) r->total += (uint64_t)(hi - from);
      }
      if (slot(r, tp->partition) >= 0) {
        if (!r->assigned[tp->partition]) r->n_assigned++;
        r->assigned[tp->partition] = 1;
        r->eof[tp->partition] = 0;
      }
    }
    rd_kafka_topic_partition_list_destroy(committed);
    r->bar.total = r->total;
    rd_kafka_assign(rk, parts);
  } else {
    /* Whatever was decided but not produced is read again by whoever gets
     * the partition next. */
    fx_replay_drop_batch(r);
    for (size_t i = 0; i < r->n_slots; i++) r->assigned[i] = r->eof[i] = 0;
    r->n_assigned = 0;
    rd_kafka_assign(rk, NULL);
  }
}

/* ---- a batch ------------------------------------------------------------------ */

static int commit_is_rebalance(rd_kafka_resp_err_t e) {
  return e == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS ||
         e == RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION || e == RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID ||
         e == RD_KAFKA_RESP_ERR__STATE || e == RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST;
}

/* Commits, per partition of the batch, its first offset with the batch's
 * marker, or (after) the offset past its last letter with the carried
 * marker while some of its ranges are still ahead (else no metadata).
 * Returns the error. */
static rd_kafka_resp_err_t commit_batch(replay *r, int after, const char *marker) {
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
  for (size_t i = 0; i < r->n_batch; i++) {
    const entry *e = &r->batch[i];
    rd_kafka_topic_partition_t *tp = rd_kafka_topic_partition_list_find(l, r->source, e->partition);
    if (!tp) {
      tp = rd_kafka_topic_partition_list_add(l, r->source, e->partition);
      tp->offset = e->offset;
    }
    if (after) tp->offset = e->offset + 1; /* letters come in offset order per partition */
  }
  char carried[FX_RP_MARKER_MAX + 1];
  fx_rp_marker rest = {0};
  if (after && r->carry.n_ranges) {
    /* What the carried marker still covers once these offsets are committed. */
    if (fx_rp_marker_merge(&rest, &r->carry) != 0) {
      rd_kafka_topic_partition_list_destroy(l);
      fx_rp_marker_free(&rest);
      return RD_KAFKA_RESP_ERR__FAIL; /* out of memory */
    }
    for (int i = 0; i < l->cnt; i++) fx_rp_marker_prune(&rest, l->elems[i].partition, l->elems[i].offset);
    if (rest.n_ranges && fx_rp_marker_encode(&rest, carried, sizeof carried) == 0) marker = carried;
  }
  for (int i = 0; marker && i < l->cnt; i++) {
    l->elems[i].metadata = strdup(marker);
    l->elems[i].metadata_size = l->elems[i].metadata ? strlen(marker) : 0;
  }
  rd_kafka_resp_err_t e = rd_kafka_commit(r->rk, l, 0);
  for (int i = 0; !e && i < l->cnt; i++) e = l->elems[i].err;
  if (!e && after) /* committed past: forget those ranges */
    for (int i = 0; i < l->cnt; i++)
      fx_rp_marker_prune(&r->carry, l->elems[i].partition, l->elems[i].offset);
  fx_rp_marker_free(&rest);
  rd_kafka_topic_partition_list_destroy(l);
  return e;
}

/* The marker for the batch in hand: the outputs it will produce and where
 * they can only be, merged with what earlier interrupted runs left (their
 * outputs for letters of this batch are older than this batch's). The
 * counts bound the recovery's early stop, so letters found already replayed
 * count as well. */
static int build_marker(replay *r, long n_jobs, long n_parked, long n_already, char *out,
                        size_t size) {
  fx_rp_marker mk = {.n_jobs = n_jobs + n_already, .n_parked = n_parked + n_already};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  mk.t_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  rd_kafka_topic_partition_list_t *jw = NULL, *pw = NULL;
  int rc = n_jobs ? fx_kwatermarks(r->kp.rk, r->cfg->topics.jobs, 10000, &jw, &r->err) : 0;
  if (!rc && n_parked) rc = fx_kwatermarks(r->kp.rk, r->cfg->topics.parking, 10000, &pw, &r->err);
  size_t nj = jw ? (size_t)jw->cnt : 0, np = pw ? (size_t)pw->cnt : 0;
  mk.jobs = calloc(nj + 1, sizeof *mk.jobs);
  mk.parking = calloc(np + 1, sizeof *mk.parking);
  mk.ranges = calloc(r->n_batch + 1, sizeof *mk.ranges);
  if (!rc && (!mk.jobs || !mk.parking || !mk.ranges)) rc = fx_err_set(&r->err, FX_ENOMEM, "out of memory");
  for (size_t i = 0; !rc && i < nj; i++)
    mk.jobs[mk.n_jobs_tp++] = (fx_rp_tp){jw->elems[i].partition, jw->elems[i].offset, 0};
  for (size_t i = 0; !rc && i < np; i++)
    mk.parking[mk.n_parking_tp++] = (fx_rp_tp){pw->elems[i].partition, pw->elems[i].offset, 0};
  for (size_t i = 0; !rc && i < r->n_batch; i++) {
    const entry *e = &r->batch[i];
    size_t k = 0;
    while (k < mk.n_ranges && mk.ranges[k].partition != e->partition) k++;
    if (k == mk.n_ranges) mk.ranges[mk.n_ranges++] = (fx_rp_tp){e->partition, e->offset, e->offset};
    else mk.ranges[k].last = e->offset;
  }
  if (!rc && r->carry.n_ranges && fx_rp_marker_merge(&mk, &r->carry) != 0)
    rc = fx_err_set(&r->err, FX_ENOMEM, "out of memory");
  if (!rc && fx_rp_marker_encode(&mk, out, size) != 0)
    rc = fx_err_set(&r->err, FX_EINVAL,
                    "the replay marker for this batch is longer than Kafka's commit metadata "
                    "allows (too many partitions on %s/%s); use a smaller --batch",
                    r->cfg->topics.jobs, r->cfg->topics.parking);
  if (jw) rd_kafka_topic_partition_list_destroy(jw);
  if (pw) rd_kafka_topic_partition_list_destroy(pw);
  fx_rp_marker_free(&mk);
  return rc;
}

/* The bar, with `handled` letters of the batch in hand already produced. */
static void progress(replay *r, size_t handled, int force) {
  if (!r->bar.enabled) return;
  unsigned long replayed = r->c.replayed, parked = r->c.parked_limit + r->c.parked_invalid;
  for (size_t i = 0; i < handled && i < r->n_batch; i++) {
    replayed += r->batch[i].act == ACT_REPLAY;
    parked += r->batch[i].act == ACT_PARK_LIMIT || r->batch[i].act == ACT_PARK_INVALID;
  }
  char extra[96];
  snprintf(extra, sizeof extra, "replayed %lu  parked %lu", replayed, parked);
  fx_progress_update(&r->bar, r->c.read + handled, extra, force);
}

/* Produces the batch's outputs, waits for Kafka, commits. Returns 0, or -1
 * with r->err set (fatal). */
static int process_batch(replay *r) {
  if (!r->n_batch) return 0;
  long n_jobs = 0, n_parked = 0, n_already = 0;
  for (size_t i = 0; i < r->n_batch; i++) {
    n_jobs += r->batch[i].act == ACT_REPLAY;
    n_parked += r->batch[i].act == ACT_PARK_LIMIT || r->batch[i].act == ACT_PARK_INVALID;
    n_already += r->batch[i].act == ACT_ALREADY;
  }
  if (n_jobs + n_parked > 0) {
    char marker[FX_RP_MARKER_MAX + 1];
    if (build_marker(r, n_jobs, n_parked, n_already, marker, sizeof marker) != 0) return -1;
    rd_kafka_resp_err_t e = commit_batch(r, 0, marker);
    if (e && commit_is_rebalance(e)) {
      /* The group is rebalancing: produce nothing and read these again
       * (the rebalance callback resets positions; seek in case it does not). */
      rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
      for (size_t i = 0; i < r->n_batch; i++)
        if (!rd_kafka_topic_partition_list_find(l, r->source, r->batch[i].partition))
          rd_kafka_topic_partition_list_add(l, r->source, r->batch[i].partition)->offset =
              r->batch[i].offset;
      rd_kafka_error_t *se = rd_kafka_seek_partitions(r->rk, l, 5000);
      if (se) rd_kafka_error_destroy(se);
      rd_kafka_topic_partition_list_destroy(l);
      fx_replay_drop_batch(r);
      return 0;
    }
    if (e)
      return fx_err_set(&r->err, FX_EIO,
                        "cannot commit to Kafka before replaying (%s); nothing of this batch was "
                        "produced: run replay again",
                        rd_kafka_err2str(e));
  }
  unsigned long failed_before = r->kp.failed;
  for (size_t i = 0; i < r->n_batch; i++) {
    entry *e = &r->batch[i];
    if (e->topic) {
      if (e->act == ACT_REPLAY) fx_rate_wait(&r->rate);
      /* fx_kproducer_send copies the key as a string: keys are ids here. */
      char *key = e->key ? fx_memstr(e->key, e->key_len) : NULL;
      rd_kafka_headers_t *h = e->headers;
      e->headers = NULL; /* the producer owns them now, or freed them */
      int rc = fx_kproducer_send(&r->kp, e->topic, key, e->value, e->len, h, &r->err);
      free(key);
      if (rc) return -1;
      rd_kafka_poll(r->kp.rk, 0);
    }
    progress(r, i + 1, 0);
  }
  int waited = 0;
  while (fx_kproducer_flush(&r->kp, 1000) > 0 && r->kp.failed == failed_before) {
    waited += 1000;
    if (waited >= FLUSH_WAIT_MS) break;
  }
  if (r->kp.failed != failed_before || rd_kafka_outq_len(r->kp.rk) > 0)
    return fx_err_set(&r->err, FX_EIO,
                      "Kafka did not acknowledge every replayed job (%s); the batch was not "
                      "committed: run replay again (what was produced is recognized and not "
                      "produced twice)",
                      r->kp.failed != failed_before ? r->kp.first_error : "timed out");
  rd_kafka_resp_err_t e = commit_batch(r, 1, NULL);
  if (e && !commit_is_rebalance(e))
    return fx_err_set(&r->err, FX_EIO,
                      "the batch was replayed but its offsets could not be committed (%s): run "
                      "replay again (what was produced is recognized and not produced twice)",
                      rd_kafka_err2str(e));
  /* After a rebalance the marker stays: whoever gets the partitions next
   * recognizes what this batch produced. */
  for (size_t i = 0; i < r->n_batch; i++) count(&r->c, r->batch[i].act);
  if (n_jobs + n_parked) {
    char a[24], b[24];
    snprintf(a, sizeof a, "%ld", n_jobs);
    snprintf(b, sizeof b, "%ld", n_parked);
    fx_log(FX_LOG_INFO, "batch replayed and committed", "jobs", a, "parked", b, NULL);
  }
  fx_replay_drop_batch(r);
  progress(r, 0, 1);
  return 0;
}

static int add_to_batch(replay *r, const rd_kafka_message_t *m) {
  if (r->n_batch == r->cap_batch) {
    size_t cap = r->cap_batch ? 2 * r->cap_batch : 64;
    entry *grown = realloc(r->batch, cap * sizeof *grown);
    if (!grown) return fx_err_set(&r->err, FX_ENOMEM, "out of memory");
    r->batch = grown;
    r->cap_batch = cap;
  }
  char reason[600];
  decide(r, m, &r->batch[r->n_batch++], reason, sizeof reason);
  return 0;
}

/* ---- the run ------------------------------------------------------------------ */

static int open_consumer(replay *r) {
  rd_kafka_conf_t *conf = NULL;
  int rc = fx_kafka_conf(&r->cfg->kafka, FX_KAFKA_CONSUMER, &conf, &r->err);
  if (!rc) rc = fx_kafka_set(conf, "group.id", r->group, &r->err);
  if (!rc) rc = fx_kafka_set(conf, "enable.auto.commit", "false", &r->err);
  if (!rc) rc = fx_kafka_set(conf, "enable.partition.eof", "true", &r->err);
  if (!rc) rc = fx_kafka_set(conf, "client.id", "fhirx-replay", &r->err);
  /* An eager protocol: a rebalance takes every partition away at once, and
   * nothing is ever produced while polling, so dropping the batch in hand is
   * all a revocation needs. */
  if (!rc) rc = fx_kafka_set(conf, "partition.assignment.strategy", "range", &r->err);
  if (rc) {
    if (conf) rd_kafka_conf_destroy(conf);
    return rc;
  }
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  rd_kafka_conf_set_opaque(conf, r);
  char why[512];
  r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
  if (!r->rk) {
    rd_kafka_conf_destroy(conf);
    return fx_err_set(&r->err, FX_EINVAL, "cannot create a Kafka consumer: %s", why);
  }
  rd_kafka_poll_set_consumer(r->rk);
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, r->source, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t e = rd_kafka_subscribe(r->rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (e) return fx_err_set(&r->err, FX_EIO, "cannot subscribe to %s: %s", r->source, rd_kafka_err2str(e));
  return 0;
}

/* Returns 0 at the end (or on a signal with --follow), 1 when interrupted
 * before the end, -1 on failure (r->err). */
int fx_replay_run(replay *r) {
  int64_t started = fx_mono_us(), idle_since = 0;
  if (fx_kproducer_open(&r->kp, r->cfg, &r->err) != 0 || open_consumer(r) != 0) return -1;
  fx_progress_init(&r->bar, "replay", 0);
  for (;;) {
    if (fx_replay_stop_requested) {
      fx_replay_drop_batch(r); /* decided but not produced: read again next time */
      return r->follow ? 0 : 1;
    }
    rd_kafka_message_t *m = rd_kafka_consumer_poll(r->rk, 100);
    if (r->fatal) {
      if (m) rd_kafka_message_destroy(m);
      return -1;
    }
    if (!m) {
      int64_t now = fx_mono_us();
      if (!idle_since) idle_since = now;
      if (r->n_assigned == 0 && now - started > (int64_t)ASSIGN_WAIT_MS * 1000)
        return fx_err_set(&r->err, FX_EIO,
                          "no partition of %s was assigned to group %s within %d s: is Kafka "
                          "reachable, the topic created, and no other replay with this group "
                          "running?",
                          r->source, r->group, ASSIGN_WAIT_MS / 1000), -1;
      if (r->n_batch && (all_eof(r) || now - idle_since > IDLE_FLUSH_MS * 1000) &&
          process_batch(r) != 0)
        return -1;
      if (!r->follow && !r->n_batch && all_eof(r)) return 0;
      continue;
    }
    idle_since = 0;
    int p = slot(r, m->partition);
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      if (p >= 0) r->eof[p] = 1;
      rd_kafka_message_destroy(m);
      if (all_eof(r)) {
        if (process_batch(r) != 0) return -1;
        if (!r->follow && all_eof(r)) return 0;
      }
      continue;
    }
    if (m->err) {
      rd_kafka_resp_err_t e = m->err;
      rd_kafka_message_destroy(m);
      if (e == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC || e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
          e == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
          e == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED || e == RD_KAFKA_RESP_ERR__FATAL)
        return fx_err_set(&r->err, FX_EIO, "cannot read %s with group %s: %s", r->source,
                          r->group, rd_kafka_err2str(e)), -1;
      fx_log(FX_LOG_WARN, "kafka consumer", "error", rd_kafka_err2str(e), NULL);
      continue;
    }
    if (p >= 0) r->eof[p] = 0;
    int rc = add_to_batch(r, m);
    rd_kafka_message_destroy(m);
    if (rc) return -1;
    if ((long)r->n_batch >= r->batch_max && process_batch(r) != 0) return -1;
  }
}

/* ---- --dry-run ---------------------------------------------------------------- */

static int on_dry(const rd_kafka_message_t *m, void *arg) {
  replay *r = arg;
  entry e;
  char reason[600];
  decide(r, m, &e, reason, sizeof reason);
  count(&r->c, e.act);
  entry_free(&e);
  return 0;
}

static int cmp_key(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int fx_replay_dry_run(replay *r) {
  rd_kafka_topic_partition_list_t *from = NULL;
  if (fx_kcommitted(r->cfg, r->group, r->source, 30000, &from, &r->err) != 0) return -1;
  int rc = 0;
  for (int i = 0; !rc && i < from->cnt; i++)
    if (from->elems[i].metadata_size)
      rc = recover(r, from->elems[i].metadata, from->elems[i].metadata_size, from);
  printf("dry run: %s from group %s's position (nothing produced, nothing committed)\n",
         r->source, r->group);
  if (!rc) rc = fx_kscan(r->cfg, r->source, from, on_dry, r, 30000, &r->err);
  rd_kafka_topic_partition_list_destroy(from);
  if (rc) return -1;
  size_t n = json_object_size(r->table), i = 0;
  const char **keys = calloc(n + 1, sizeof *keys);
  const char *k;
  json_t *v;
  json_object_foreach(r->table, k, v) if (keys) keys[i++] = k;
  if (keys) qsort(keys, n, sizeof *keys, cmp_key);
  printf("%-40s %-20s %8s %8s %8s\n", "tenant", "class", "replay", r->from_parking ? "keep" : "park",
         "done");
  for (i = 0; keys && i < n; i++) {
    json_t *row = json_object_get(r->table, keys[i]);
    const char *tab = strchr(keys[i], '\t'); /* always there (fx_rp_dry_key) */
    int tlen = tab ? (int)(tab - keys[i]) : (int)strlen(keys[i]);
    printf("%-40.*s %-20s %8lld %8lld %8lld\n", tlen, keys[i], tab ? tab + 1 : "",
           (long long)json_integer_value(json_array_get(row, 0)),
           (long long)json_integer_value(json_array_get(row, 1)),
           (long long)json_integer_value(json_array_get(row, 2)));
  }
  free(keys);
  if (r->listed) {
    printf("first %ld:\n", r->listed);
    size_t idx;
    json_t *line;
    json_array_foreach(r->listing, idx, line) printf("  %s\n", json_string_value(line));
  }
  return 0;
}

