/* Group bulk $export jobs.
 *
 * A bulk job consumed from the jobs topic is not run on the worker thread
 * that consumed it: run.c hands it over by publishing a "pending" progress
 * record to the bulk topic (key job_id), and the job's offset moves on as
 * soon as that record is acknowledged. Nothing holds a jobs partition while
 * an export runs for hours.
 *
 * The bulk topic is the exports' durable state. Each worker process has one
 * bulk thread (a libuv loop with its own curl multi) whose consumer, in the
 * group "<worker.group_id>.bulk", owns some of the bulk topic's partitions.
 * On assignment it reads them from the beginning (the topic is compacted:
 * the latest record per job), and once at their end resumes every export
 * still running: kick-off, status polls (Retry-After and X-Progress, within
 * bulk.poll_min_ms..poll_max_ms, up to bulk.deadline_hours), manifest,
 * downloads (307 to storage followed without the token, NDJSON streamed line
 * by line to the results topic), then the status record and DELETE. Every
 * step is recorded in a new progress record (status URL, files done, counts),
 * so when a worker dies another one takes over its partitions and continues
 * the same export instead of starting another.
 *
 * Delivery: a file counts as done only once every result it produced is
 * acknowledged, so a resumed export re-downloads at most the files that were
 * in flight (at-least-once, results keyed tenant/Type/id). */
#ifndef FX_BULK_H
#define FX_BULK_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/url.h"
#include "worker/model/job.h"
#include "worker/pool/services.h"

typedef struct fx_bulk fx_bulk;

/* Creates the bulk thread: a Kafka thread (pool/kthread.h) in the group
 * "<worker.group_id>.bulk" whose role is the exports of its partitions of
 * the bulk topic. Nothing joins the group yet. on_exit is posted to the
 * supervisor's loop once the thread's loop ended. */
int fx_bulk_new(const struct fx_services *sv, void (*on_exit)(void *arg), void *exit_arg,
                fx_bulk **out, fx_err *err);
int fx_bulk_start(fx_bulk *b, fx_err *err);
/* Any thread: stop taking exports, leave the group once nothing is in flight. */
void fx_bulk_stop(fx_bulk *b);
/* After on_exit: joins the thread and frees b. */
void fx_bulk_join(fx_bulk *b);
/* A bulk thread never started. */
void fx_bulk_free(fx_bulk *b);

/* The handover record a worker thread publishes for a consumed bulk job
 * (state "pending", seq 0). source: where the job was read; timestamp: the
 * job message's; replayed_from: "" or the job's fhirx-replayed-from. New
 * reference, NULL on OOM. */
json_t *fx_bulk_pending_record(const fx_job *job, const char *topic, int32_t partition,
                               int64_t offset, int64_t timestamp, const char *replayed_from);

/* The wait before the next status poll (pure, for tests): Retry-After when
 * the server sent one (retry_after_ms >= 0), else double the previous wait
 * (prev_ms 0: the floor), always within [floor_ms, ceiling_ms] and never past
 * the deadline (returns 0 when now_ms is already past it). */
uint64_t fx_bulk_poll_delay(long retry_after_ms, uint64_t prev_ms, uint64_t floor_ms,
                            uint64_t ceiling_ms, uint64_t now_ms, uint64_t deadline_ms);

/* The backoff before try number tries (1, 2, ...) after a transient failure:
 * base_ms doubled for each try after the first, saturating at ceiling_ms
 * (pure, for tests). No shift overflows, whatever tries is (bulk.retries goes
 * up to 100). */
uint64_t fx_bulk_backoff_ms(uint64_t base_ms, int tries, uint64_t ceiling_ms);

/* The NDJSON splitter of file downloads (pure, for tests and fuzzing): the
 * next line of buf[0..avail). Returns the bytes it takes (the line and its
 * '\n'; with final, an unterminated last line too), or 0 when buf holds no
 * complete line yet. *line_len is the line's length without the trailing
 * '\r', ' ' and '\t' (0: a blank line, skipped). */
size_t fx_bulk_line(const char *buf, size_t avail, int final, size_t *line_len);

/* Checks a completed export's manifest (pure, for tests and fuzzing): an
 * object with an output array and, if present, an error array, each entry
 * with a string url and type. Returns 0 with the counts, or -1 with msg
 * saying what is wrong. */
int fx_bulk_manifest_check(const json_t *m, size_t *n_out, size_t *n_err, char *msg, size_t size);

/* files_done ranges ([[0,3],[5,5]]) <-> a flag per file. Parsing ignores
 * indexes >= n. */
json_t *fx_bulk_ranges(const unsigned char *done, size_t n);
void fx_bulk_ranges_parse(const json_t *ranges, unsigned char *done, size_t n);

#endif
