/* fhirx replay's driver (cli/replay_run.c): the consumer, the batches, the
 * recovery of an interrupted run, --dry-run. cli/cmd_replay.c parses the
 * command line into a replay and prints the summary. The decisions
 * themselves are replay/replay.h's. Single-threaded: the command's own. */
#ifndef FX_CLI_REPLAY_RUN_H
#define FX_CLI_REPLAY_RUN_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>

#include "common/config.h"
#include "common/err.h"
#include "worker/cli/kclient.h"
#include "worker/cli/progress.h"
#include "worker/cli/ratelimit.h"
#include "worker/model/strset.h"
#include "worker/replay/replay.h"

#define ASSIGN_WAIT_MS 60000
#define FLUSH_WAIT_MS 120000
#define IDLE_FLUSH_MS 300

typedef enum {
  ACT_SKIP = 0, /* not selected by the filter */
  ACT_REPLAY,
  ACT_PARK_LIMIT,
  ACT_PARK_INVALID,
  ACT_KEEP_LIMIT,   /* from parking: would be parked again; left where it is */
  ACT_KEEP_INVALID,
  ACT_ALREADY /* produced by an interrupted run */
} action;

/* One letter of the batch, decided; its output ready to produce. */
typedef struct entry {
  int32_t partition;
  int64_t offset;
  action act;
  char *topic, *key, *value;
  size_t key_len, len;
  rd_kafka_headers_t *headers;
} entry;

typedef struct counts {
  unsigned long read, replayed, parked_limit, parked_invalid, kept_limit, kept_invalid, skipped,
      already;
} counts;

typedef struct replay {
  const fx_config *cfg;
  fx_rp_filter filter;
  fx_rp_rules rules;
  const char *source; /* the topic read: dlq, or parking with --from-parking */
  int from_parking, dry, follow;
  long show, batch_max;
  fx_rate rate;
  char group[256];
  rd_kafka_t *rk;
  fx_kproducer kp;
  /* The assignment, indexed by partition id. */
  int *assigned, *eof;
  size_t n_slots;
  int n_assigned;
  entry *batch;
  size_t n_batch, cap_batch;
  /* What interrupted runs produced: replayed positions and parked
   * identities (the latter only count inside the markers' ranges), and
   * every marker found merged into one, carried forward (replay.h). */
  fx_strset *done_pos, *done_ident, *marker_texts;
  fx_rp_marker carry;
  counts c;
  uint64_t total;
  fx_progress bar;
  /* --dry-run */
  json_t *table;   /* "tenant\tclass" -> [replay, park, done] */
  json_t *listing; /* the first --show letters, one line each */
  long listed;
  int fatal;
  fx_err err;
} replay;


/* Set by SIGINT/SIGTERM: the run finishes its batch and stops. */
extern volatile sig_atomic_t fx_replay_stop_requested;

/* Runs the replay (outcome: 0 done, 1 interrupted or failed; -1 with r->err). */
int fx_replay_run(replay *r);
/* Frees the letters of an unfinished batch. */
void fx_replay_drop_batch(replay *r);
/* --dry-run: counts and the first letters, nothing produced or committed. */
int fx_replay_dry_run(replay *r);

#endif
