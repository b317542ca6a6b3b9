/* fhirx replay: the command line (cli/replay_run.c drives the run). */
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

static const char replay_usage[] =
    "usage: fhirx replay --config FILE [--tenant ID[,ID...]] [--error-class C[,C...]]\n"
    "                    [--job-id ID[,ID...]] [--since TIME] [--until TIME]\n"
    "                    [--dry-run [--show N]] [--follow] [--rate N] [--max-attempts N]\n"
    "                    [--batch N] [--group ID] [--from-parking]\n"
    "\n"
    "Reads the dead-letter topic (topics.dlq) with its own consumer group and sends every\n"
    "selected dead letter back to the jobs topic as it is, narrowed to the tasks that failed,\n"
    "with attempt + 1, its job id as key and the header fhirx-replayed-from naming the dead\n"
    "letter (topic/partition/offset). Each job is checked with the workers' rules first (give\n"
    "the workers' config). A dead letter whose attempt reached replay.max_attempts, or that is\n"
    "not a job that could run as is (an unparseable original, one too large to copy, a job\n"
    "the workers would reject), goes to the parking topic with the reason in\n"
    "fhirx-parked-reason instead.\n"
    "\n"
    "Filters (lists are comma-separated; a letter must match every filter given):\n"
    "  --tenant, --error-class, --job-id   header values (classes: see schemas/README.md)\n"
    "  --since, --until                     on fhirx-last-failure: 2026-11-30T06:00:00Z,\n"
    "                                       2026-11-30, or back from now: 90s, 15m, 2h, 7d\n"
    "\n"
    "Positions. An unfiltered run reads with the group replay.group_id; a filtered run with\n"
    "its own group, replay.group_id + ';' + the filter (e.g. fhirx-replay;error-class=scope),\n"
    "so running the same command again continues where the last run stopped and a filter\n"
    "never moves another filter's position: a dead letter a filtered run passes over is\n"
    "still there for an unfiltered run. The letters a filtered run replayed are also still\n"
    "there for other groups: an unfiltered run afterwards replays them once more (results\n"
    "are idempotent, but the work is done twice), so work through one incident with one\n"
    "filter. --group names a group explicitly.\n"
    "\n"
    "Offsets are committed only after Kafka acknowledged the batch's jobs; a run killed\n"
    "halfway can simply be run again: what the interrupted batch produced is recognized\n"
    "(a marker in the commit metadata, then fhirx-replayed-from on the jobs topic) and not\n"
    "produced twice. The run stops at the end of the topic and exits 0 with a one-line\n"
    "summary; --follow keeps it running until SIGINT/SIGTERM (a batch being produced is\n"
    "finished and committed first). --dry-run reads from the group's position without joining the group, prints\n"
    "the counts per tenant and class and the first --show (default 20) letters, and neither\n"
    "produces nor commits anything.\n"
    "\n"
    "--rate N    jobs per second (default replay.rate_per_s; 0 = no limit)\n"
    "--max-attempts N   overrides replay.max_attempts\n"
    "--batch N   dead letters per commit (default 200; at most N per second with --rate)\n"
    "--from-parking   read the parking topic instead (group replay.group_id + '.parking'):\n"
    "            after fixing what parked them, send parked letters back; letters that\n"
    "            still cannot run stay parked and are only counted\n"
    "\n"
    "A token the workers hold keeps the scopes it was issued with: after ticking a scope in\n"
    "Code Console, restart the workers (or wait for their tokens to expire) before replaying\n"
    "scope failures.\n"
    "\n"
    "Exit status: 0 done; 1 Kafka failed or the run was interrupted before the end; 2 usage.\n";


static void on_signal(int sig) {
  (void)sig;
  fx_replay_stop_requested = 1;
}

/* ---- the command -------------------------------------------------------------- */

static int parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static void summary(const replay *r, double seconds, int dry) {
  const counts *c = &r->c;
  if (r->from_parking)
    printf("%s%lu replayed to %s, %lu left parked (%lu at the attempt limit, %lu not replayable), "
           "%lu skipped by the filter, %lu already replayed by an interrupted run; %lu read from "
           "%s by group %s in %.1f s\n",
           dry ? "dry run: would have " : "", c->replayed, r->cfg->topics.jobs,
           c->kept_limit + c->kept_invalid, c->kept_limit, c->kept_invalid, c->skipped, c->already,
           c->read, r->source, r->group, seconds);
  else
    printf("%s%lu replayed to %s, %lu parked to %s (%lu at the attempt limit, %lu not "
           "replayable), %lu skipped by the filter, %lu already replayed by an interrupted run; "
           "%lu read from %s by group %s in %.1f s\n",
           dry ? "dry run: would have " : "", c->replayed, r->cfg->topics.jobs,
           c->parked_limit + c->parked_invalid, r->cfg->topics.parking, c->parked_limit,
           c->parked_invalid, c->skipped, c->already, c->read, r->source, r->group, seconds);
}

int fx_cmd_replay(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"tenant", required_argument, 0, 't'},
                                       {"error-class", required_argument, 0, 'e'},
                                       {"job-id", required_argument, 0, 'j'},
                                       {"since", required_argument, 0, 's'},
                                       {"until", required_argument, 0, 'u'},
                                       {"dry-run", no_argument, 0, 'n'},
                                       {"show", required_argument, 0, 'S'},
                                       {"follow", no_argument, 0, 'f'},
                                       {"rate", required_argument, 0, 'R'},
                                       {"max-attempts", required_argument, 0, 'M'},
                                       {"batch", required_argument, 0, 'b'},
                                       {"group", required_argument, 0, 'g'},
                                       {"from-parking", no_argument, 0, 'P'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  replay r;
  memset(&r, 0, sizeof r);
  const char *config = NULL, *group = NULL;
  long rate = -1, max_attempts = -1;
  r.show = 20;
  r.batch_max = 200;
  struct timespec now_ts;
  clock_gettime(CLOCK_REALTIME, &now_ts);
  int64_t now_ms = (int64_t)now_ts.tv_sec * 1000 + now_ts.tv_nsec / 1000000;
  int c, rc = FX_EXIT_OK;
  fx_cli_log_level(FX_LOG_WARN);
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    fx_rp_field field = FX_RP_TENANT;
    switch (c) {
    case 'c': config = optarg; continue;
    case 't': field = FX_RP_TENANT; break;
    case 'e': field = FX_RP_CLASS; break;
    case 'j': field = FX_RP_JOB_ID; break;
    case 's': field = FX_RP_SINCE; break;
    case 'u': field = FX_RP_UNTIL; break;
    case 'n': r.dry = 1; continue;
    case 'f': r.follow = 1; continue;
    case 'P': r.from_parking = 1; continue;
    case 'g': group = optarg; continue;
    case 'S':
    case 'R':
    case 'M':
    case 'b': {
      long v, lo = c == 'M' || c == 'b' ? 1 : 0, hi = c == 'M' ? 1000 : 1000000;
      if (parse_long(optarg, lo, hi, &v)) {
        rc = fx_cli_fail("replay", FX_EXIT_USAGE, "--%s: expected a number from %ld to %ld",
                         c == 'S' ? "show" : c == 'R' ? "rate" : c == 'M' ? "max-attempts" : "batch",
                         lo, hi);
        goto out;
      }
      if (c == 'S') r.show = v;
      else if (c == 'R') rate = v;
      else if (c == 'M') max_attempts = v;
      else r.batch_max = v;
      continue;
    }
    case 'h': fputs(replay_usage, stdout); goto out;
    default:
      fputs(replay_usage, stderr);
      rc = FX_EXIT_USAGE;
      goto out;
    }
    if (fx_rp_filter_set(&r.filter, field, optarg, now_ms, &r.err) != 0) {
      rc = fx_cli_fail("replay", FX_EXIT_USAGE, "%s", r.err.msg);
      goto out;
    }
  }
  config = fx_cli_config(config);
  if (!config || optind < argc) {
    fputs(replay_usage, stderr);
    rc = FX_EXIT_USAGE;
    goto out;
  }
  if (r.follow && r.dry) {
    rc = fx_cli_fail("replay", FX_EXIT_USAGE, "--follow and --dry-run exclude each other");
    goto out;
  }
  fx_config *cfg = NULL;
  if (fx_config_load(config, &cfg, &r.err) != 0) {
    rc = fx_cli_fail("replay", FX_EXIT_FAIL, "%s", r.err.msg);
    goto out;
  }
  fx_profile_set profiles;
  if (fx_profile_set_load(cfg, &profiles, &r.err) != 0) {
    fx_config_free(cfg);
    rc = fx_cli_fail("replay", FX_EXIT_FAIL, "%s", r.err.msg);
    goto out;
  }
  r.cfg = cfg;
  r.source = r.from_parking ? cfg->topics.parking : cfg->topics.dlq;
  r.rules = (fx_rp_rules){.profiles = &profiles,
                          .lim = {.max_bytes = (size_t)cfg->worker.max_job_bytes,
                                  .max_patients = (size_t)cfg->worker.max_patients_per_job},
                          .max_attempts = max_attempts > 0 ? max_attempts : cfg->replay.max_attempts};
  if (rate < 0) rate = (long)cfg->replay.rate_per_s;
  fx_rate_init(&r.rate, (double)rate);
  /* Commit at least about once a second under a rate limit. */
  if (rate > 0 && r.batch_max > rate) r.batch_max = rate;
  if (group) snprintf(r.group, sizeof r.group, "%s", group);
  else fx_rp_group(cfg->replay.group_id, &r.filter, r.from_parking, r.group, sizeof r.group);
  r.done_pos = fx_strset_new();
  r.done_ident = fx_strset_new();
  r.marker_texts = fx_strset_new();
  r.table = json_object();
  r.listing = json_array();
  int64_t started = fx_mono_us();
  int outcome;
  if (!r.done_pos || !r.done_ident || !r.marker_texts || !r.table || !r.listing) {
    fx_err_set(&r.err, FX_ENOMEM, "out of memory");
    outcome = -1;
  } else if (r.dry) {
    outcome = fx_replay_dry_run(&r);
  } else {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = (int)SA_RESETHAND; /* a second signal ends the process at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    outcome = fx_replay_run(&r);
  }
  fx_progress_done(&r.bar);
  double seconds = (double)(fx_mono_us() - started) / 1e6;
  if (outcome >= 0) summary(&r, seconds, r.dry);
  if (outcome < 0)
    rc = fx_cli_fail("replay", FX_EXIT_FAIL, "%s", r.err.msg);
  else if (outcome == 1)
    rc = fx_cli_fail("replay", FX_EXIT_FAIL,
                     "interrupted before the end of %s; run the same command again to continue",
                     r.source);
  if (r.rk) {
    rd_kafka_consumer_close(r.rk);
    rd_kafka_destroy(r.rk);
  }
  fx_replay_drop_batch(&r);
  if (r.kp.rk) {
    fx_kproducer_flush(&r.kp, 10000);
    fx_kproducer_close(&r.kp);
  }
  free(r.batch);
  free(r.assigned);
  free(r.eof);
  fx_rp_marker_free(&r.carry);
  if (r.marker_texts) fx_strset_free(r.marker_texts);
  if (r.done_pos) fx_strset_free(r.done_pos);
  if (r.done_ident) fx_strset_free(r.done_ident);
  json_decref(r.table);
  json_decref(r.listing);
  fx_profile_set_free(&profiles);
  fx_config_free(cfg);
out:
  fx_rp_filter_free(&r.filter);
  return rc;
}
