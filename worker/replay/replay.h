/* What `fhirx replay` decides, apart from Kafka (cmd_replay.c drives it):
 * which dead letters a filter selects, what becomes of each one (back to the
 * jobs topic with attempt + 1, or to the parking topic with a reason), which
 * consumer group a filter reads with, and the marker that lets a replay that
 * was killed halfway run again without replaying anything twice.
 *
 * The marker. Offsets are committed only after the replayed jobs are
 * acknowledged, but a process can die between the two. So before producing a
 * batch, replay commits the batch's starting offsets again with a marker as
 * the commit's metadata: the high watermarks of the jobs and parking topics
 * at that moment, the dead-letter offsets the batch covers, and how many
 * messages it is about to produce. After the batch is acknowledged the new
 * offsets are committed without a marker. A run that finds a marker on a
 * partition it is assigned reads the jobs topic (and the parking topic) from
 * those watermarks: every job carrying `fhirx-replayed-from` for a covered
 * dead letter, and every parked letter naming the same original job and
 * attempt, was produced by the interrupted batch, so those dead letters are
 * not produced again. What the dead process had not yet handed to Kafka is
 * not there and is produced now: each dead letter exactly once.
 *
 * Markers are carried forward. The run after an interrupted one may itself
 * be interrupted before it has passed every dead letter the old marker
 * covers; its own commits must not lose that knowledge. So a run merges
 * every marker it found into one (the lowest watermarks, the union of the
 * ranges) and writes that merge with each of its batch markers, and even
 * with its after-batch commits, until it has committed past every range. */
#ifndef FX_REPLAY_H
#define FX_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "worker/model/job.h"

/* A point in time for --since/--until, in ms since the epoch: an RFC 3339
 * date-time (2026-11-30T06:10:00Z, fraction and offset allowed), a date
 * (2026-11-30, midnight UTC) or a duration back from now_ms: 90s, 15m, 2h,
 * 7d. Returns 0, or -1 when s is none of these. */
int fx_time_parse_ms(const char *s, int64_t now_ms, int64_t *out);

typedef struct fx_rp_filter {
  char **tenants; /* any of them; none = any tenant */
  size_t n_tenants;
  char **job_ids;
  size_t n_job_ids;
  uint32_t classes; /* bit per fx_errclass; 0 = any class */
  int has_since, has_until;
  int64_t since_ms, until_ms; /* since inclusive, until exclusive */
  char *since_text, *until_text; /* as given: part of the derived group name */
} fx_rp_filter;

typedef enum { FX_RP_TENANT, FX_RP_CLASS, FX_RP_JOB_ID, FX_RP_SINCE, FX_RP_UNTIL } fx_rp_field;

/* Adds a comma-separated list (tenant, class, job id) or sets a time. Errors
 * name the option and what is accepted. */
int fx_rp_filter_set(fx_rp_filter *f, fx_rp_field field, const char *value, int64_t now_ms,
                     fx_err *err);
void fx_rp_filter_free(fx_rp_filter *f);
int fx_rp_filter_empty(const fx_rp_filter *f);

/* The filter in a canonical form, fields in a fixed order and values sorted:
 * "error-class=scope;tenant=a,b"; "" for no filter. */
void fx_rp_filter_describe(const fx_rp_filter *f, char *out, size_t size);

/* The consumer group a run reads with: base for an unfiltered run of the
 * dead-letter topic; base + ".parking" when reading the parking topic; plus
 * ";" + the canonical filter when filtered (a SHA-256 prefix instead when
 * that would be longer than 200 characters). So each filter keeps its own
 * position and never moves another's. */
void fx_rp_group(const char *base, const fx_rp_filter *f, int from_parking, char *out,
                 size_t size);

/* A dead letter (or a parked letter) as replay sees it: where it is, its
 * headers (NULL when absent) and its value. Borrowed pointers. */
typedef struct fx_rp_letter {
  const char *topic;
  int32_t partition;
  int64_t offset;
  int64_t timestamp_ms; /* the message's Kafka timestamp, -1 if none */
  const char *error_class, *http_status, *tenant, *job_id, *attempt, *last_failure;
  const char *orig_topic, *orig_partition, *orig_offset, *value_omitted;
  const char *value;
  size_t len;
} fx_rp_letter;

/* 1 when the filter selects the letter. Times compare against
 * fhirx-last-failure, or the message timestamp when that header is absent. */
int fx_rp_match(const fx_rp_filter *f, const fx_rp_letter *l);

/* The attempt that failed: fhirx-attempt, else the value's attempt, else 1. */
int fx_rp_attempt(const fx_rp_letter *l);

/* "topic/partition/offset" of the letter itself: the fhirx-replayed-from
 * value of its replay. */
void fx_rp_position(const fx_rp_letter *l, char *out, size_t size);

/* One line of `replay --dry-run`'s listing: verb (replay, park, keep, done),
 * the letter's position, job, tenant, class (and HTTP status), attempt (as
 * the caller words it, "1 -> 2"), last failure and reason ("" for none).
 * Every header value and the reason are shown with control characters
 * escaped (fx_str_printable): a dead letter's headers are whatever was
 * produced to the topic, and a terminal would obey an escape sequence in
 * them. Writes out (NUL-terminated, cut on a character when too small). */
void fx_rp_dry_line(const fx_rp_letter *l, const char *verb, const char *attempt,
                    const char *reason, char *out, size_t size);

/* The dry run's table key, "tenant<TAB>class" ("-" for an absent header),
 * both escaped as above, so a tab inside a header cannot split the key; the
 * tab is always there (size >= 2), the two cut to fit around it. */
void fx_rp_dry_key(const fx_rp_letter *l, char *out, size_t size);

/* "orig-topic/partition/offset#attempt": which job attempt the letter is
 * about; a parked letter keeps it (its headers are the dead letter's). */
void fx_rp_identity(const fx_rp_letter *l, char *out, size_t size);

typedef struct fx_rp_rules {
  const fx_profile_set *profiles; /* the workers' rules: tenants, types */
  fx_job_limits lim;
  long long max_attempts;
} fx_rp_rules;

typedef enum {
  FX_RP_REPLAY = 1, /* back to the jobs topic with attempt + 1 */
  FX_RP_PARK_LIMIT, /* attempt limit reached: parking topic */
  FX_RP_PARK_INVALID /* not a job that could run as is: parking topic */
} fx_rp_action;

/* Decides a selected letter's fate. FX_RP_REPLAY sets *job to a new string
 * (free it), the job with attempt + 1, valid by the workers' rules. The other
 * actions write the parking reason (one redacted sentence, at most 512
 * characters) into reason. */
fx_rp_action fx_rp_decide(const fx_rp_rules *r, const fx_rp_letter *l, char **job, size_t *job_len,
                          char *reason, size_t reason_size);

/* ---- the marker (see the top of this file) ---- */

typedef struct fx_rp_tp {
  int32_t partition;
  int64_t offset; /* a high watermark, or the first offset of a range */
  int64_t last;   /* the last offset of a range (ranges only) */
} fx_rp_tp;

typedef struct fx_rp_marker {
  int64_t t_ms;
  long n_jobs, n_parked; /* messages the batch was about to produce */
  fx_rp_tp *jobs;        /* high watermarks of the jobs topic before the batch */
  size_t n_jobs_tp;
  fx_rp_tp *parking; /* and of the parking topic */
  size_t n_parking_tp;
  fx_rp_tp *ranges; /* dead letters the batch covers, first..last per partition */
  size_t n_ranges;
} fx_rp_marker;

#define FX_RP_MARKER_MAX 4000 /* under Kafka's offset.metadata.max.bytes (4096) */

/* Writes the marker as text; -1 when it would not fit in size. */
int fx_rp_marker_encode(const fx_rp_marker *m, char *out, size_t size);
/* 0: *m filled (fx_rp_marker_free); 1: not a marker (empty, or someone
 * else's metadata); -1: a marker that cannot be read. */
int fx_rp_marker_decode(const char *text, size_t len, fx_rp_marker *m);
void fx_rp_marker_free(fx_rp_marker *m);
/* 1 when the marker's batch covers this dead letter. */
int fx_rp_marker_covers(const fx_rp_marker *m, int32_t partition, int64_t offset);

/* Merges from into into: per partition the lower watermark and the hull
 * of the ranges; the counts add up (they only bound an early stop). Returns
 * 0, or -1 when out of memory (into is then unchanged in its meaning). */
int fx_rp_marker_merge(fx_rp_marker *into, const fx_rp_marker *from);
/* Drops the ranges on partition that end before offset (committed past). */
void fx_rp_marker_prune(fx_rp_marker *m, int32_t partition, int64_t offset);

/* Parses "topic/partition/offset"; 0 or -1. topic gets at most topic_size-1
 * characters. */
int fx_rp_parse_position(const char *s, size_t len, char *topic, size_t topic_size,
                         int32_t *partition, int64_t *offset);

#endif
