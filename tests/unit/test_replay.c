/* fhirx replay's decisions: times, filters, groups, what becomes of a dead
 * letter, and the marker that makes an interrupted replay resumable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/replay/replay.h"

static fx_config *cfg;
static fx_profile_set profiles;

static int setup(void **state) {
  (void)state;
  fx_err err = {0};
  int rc = fx_config_parse(
      "{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://x/r4/t1\",\"client_id\":\"c\",\"follow_references\":true}],"
      "\"keys\":[{\"path\":\"k.pem\"}]}",
      "/", &cfg, &err);
  return rc ? rc : fx_profile_set_load(cfg, &profiles, &err);
}

static int teardown(void **state) {
  (void)state;
  fx_profile_set_free(&profiles);
  fx_config_free(cfg);
  return 0;
}

static void times(void **state) {
  (void)state;
  int64_t t;
  assert_int_equal(fx_time_parse_ms("2026-11-30T06:10:00Z", 0, &t), 0);
  assert_int_equal(t, 1796019000000LL);
  assert_int_equal(fx_time_parse_ms("2026-11-30T06:10:00.123Z", 0, &t), 0);
  assert_int_equal(t, 1796019000123LL);
  assert_int_equal(fx_time_parse_ms("2026-11-30T07:10:00+01:00", 0, &t), 0);
  assert_int_equal(t, 1796019000000LL);
  assert_int_equal(fx_time_parse_ms("2026-11-30", 0, &t), 0);
  assert_int_equal(t, 1795996800000LL);
  assert_int_equal(fx_time_parse_ms("2h", 10000000, &t), 0);
  assert_int_equal(t, 10000000 - 7200000);
  assert_int_equal(fx_time_parse_ms("7d", 1000000000000LL, &t), 0);
  assert_int_equal(t, 1000000000000LL - 7 * 86400000LL);
  assert_int_equal(fx_time_parse_ms("90s", 100000, &t), 0);
  assert_int_equal(t, 10000);
  const char *bad[] = {"", "yesterday", "2h ago", "2026-13-01", "2026-11-30T25:00:00Z",
                       "2026-11-30T06:10:00", "2026-11-30T06:10:00Zx", "h", "-2h", "2026/11/30"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (fx_time_parse_ms(bad[i], 0, &t) == 0) fail_msg("accepted '%s'", bad[i]);
}

static fx_rp_letter letter(const char *tenant, const char *cls, const char *job_id,
                           const char *last_failure) {
  return (fx_rp_letter){.topic = "fhirx.dlq", .partition = 2, .offset = 17, .timestamp_ms = 5,
                        .error_class = cls, .tenant = tenant, .job_id = job_id,
                        .last_failure = last_failure, .attempt = "1",
                        .orig_topic = "fhirx.jobs", .orig_partition = "1", .orig_offset = "5520"};
}

static void filters(void **state) {
  (void)state;
  fx_rp_filter f = {0};
  fx_err err = {0};
  int64_t now = 1796019000000LL;
  assert_true(fx_rp_filter_empty(&f));
  fx_rp_letter a = letter("t1", "scope", "j-1", "2026-11-30T06:00:00.000Z");
  fx_rp_letter b = letter("t2", "transient", "j-2", "2026-11-28T06:00:00.000Z");
  fx_rp_letter none = letter(NULL, NULL, NULL, NULL);
  assert_true(fx_rp_match(&f, &a) && fx_rp_match(&f, &none));

  assert_int_equal(fx_rp_filter_set(&f, FX_RP_CLASS, "transient,scope", now, &err), 0);
  assert_true(fx_rp_match(&f, &a) && fx_rp_match(&f, &b));
  assert_false(fx_rp_match(&f, &none));
  assert_int_equal(fx_rp_filter_set(&f, FX_RP_TENANT, "t2", now, &err), 0);
  assert_false(fx_rp_match(&f, &a));
  assert_true(fx_rp_match(&f, &b));
  assert_int_equal(fx_rp_filter_set(&f, FX_RP_SINCE, "1d", now, &err), 0);
  assert_false(fx_rp_match(&f, &b)); /* two days old */
  char desc[300], group[300];
  fx_rp_filter_describe(&f, desc, sizeof desc);
  assert_string_equal(desc, "error-class=scope,transient;since=1d;tenant=t2");
  fx_rp_group("fhirx-replay", &f, 0, group, sizeof group);
  assert_string_equal(group, "fhirx-replay;error-class=scope,transient;since=1d;tenant=t2");
  fx_rp_group("fhirx-replay", &f, 1, group, sizeof group);
  assert_string_equal(group, "fhirx-replay.parking;error-class=scope,transient;since=1d;tenant=t2");
  fx_rp_filter_free(&f);
  fx_rp_group("fhirx-replay", &f, 0, group, sizeof group);
  assert_string_equal(group, "fhirx-replay");

  /* The same filter written differently is the same group. */
  fx_rp_filter g = {0};
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_TENANT, "b,a,b", now, &err), 0);
  fx_rp_filter_describe(&g, desc, sizeof desc);
  assert_string_equal(desc, "tenant=a,b");
  fx_rp_filter_free(&g);

  /* since is inclusive, to the millisecond: a letter that failed at exactly the
   * given instant is selected, one a millisecond earlier is not. */
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_SINCE, "2026-11-30T06:00:00Z", now, &err), 0);
  assert_true(fx_rp_match(&g, &a)); /* failed at 06:00:00.000Z */
  fx_rp_letter earlier = letter("t1", "scope", "j-3", "2026-11-30T05:59:59.999Z");
  assert_false(fx_rp_match(&g, &earlier));
  fx_rp_letter later = letter("t1", "scope", "j-4", "2026-11-30T06:00:00.001Z");
  assert_true(fx_rp_match(&g, &later));
  fx_rp_filter_free(&g);
  /* The same without fhirx-last-failure: the message timestamp counts. */
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_SINCE, "2026-11-30T06:00:00Z", now, &err), 0);
  fx_rp_letter stamped = letter("t1", "scope", "j-5", NULL);
  stamped.timestamp_ms = g.since_ms;
  assert_true(fx_rp_match(&g, &stamped));
  stamped.timestamp_ms = g.since_ms - 1;
  assert_false(fx_rp_match(&g, &stamped));
  fx_rp_filter_free(&g);

  /* until is exclusive; without fhirx-last-failure the message time counts. */
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_UNTIL, "2026-11-30T06:00:00Z", now, &err), 0);
  assert_false(fx_rp_match(&g, &a));
  assert_true(fx_rp_match(&g, &b));
  assert_true(fx_rp_match(&g, &none)); /* timestamp 5 ms after the epoch */
  fx_rp_filter_free(&g);

  /* Many job ids: a hashed group name. */
  char ids[4000] = "";
  for (int i = 0; i < 100; i++) snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%sjob-%03d", i ? "," : "", i);
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_JOB_ID, ids, now, &err), 0);
  fx_rp_group("fhirx-replay", &g, 0, group, sizeof group);
  assert_true(strncmp(group, "fhirx-replay;filter-", 20) == 0 && strlen(group) == 36);
  fx_rp_filter_free(&g);

  assert_int_equal(fx_rp_filter_set(&g, FX_RP_CLASS, "scope,nope", now, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "'nope' is not an error class; one of invalid_job"));
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_TENANT, "a/b", now, &err), FX_EINVAL);
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_SINCE, "last week", now, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "--since"));
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_JOB_ID, "offset:fhirx.jobs/1/5520", now, &err), 0);
  assert_int_equal(fx_rp_filter_set(&g, FX_RP_JOB_ID, ",", now, &err), FX_EINVAL);
  fx_rp_filter_free(&g);
}

static fx_rp_rules rules(long long max_attempts) {
  return (fx_rp_rules){.profiles = &profiles, .lim = {.max_bytes = 4096, .max_patients = 10},
                       .max_attempts = max_attempts};
}

static void decisions(void **state) {
  (void)state;
  char *job = NULL, reason[600];
  size_t len = 0;
  fx_rp_rules r = rules(3);
  fx_rp_letter l = letter("t1", "scope", "j-1", NULL);
  const char *narrowed =
      "{\"job_id\":\"j-1\",\"tenant\":\"t1\",\"tasks\":[{\"patient\":\"1\",\"resources\":"
      "[\"Condition\"]}],\"since\":\"2026-11-01\",\"attempt\":1}";
  l.value = narrowed;
  l.len = strlen(narrowed);
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_REPLAY);
  assert_string_equal(job, "{\"job_id\":\"j-1\",\"tenant\":\"t1\",\"tasks\":[{\"patient\":\"1\","
                           "\"resources\":[\"Condition\"]}],\"since\":\"2026-11-01\",\"attempt\":2}");
  assert_int_equal(len, strlen(job));
  free(job);

  /* The header decides the attempt; the attempt limit parks. */
  l.attempt = "3";
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_PARK_LIMIT);
  assert_null(job);
  assert_string_equal(reason, "attempt limit 3 reached: attempt 3 failed (scope)");
  l.attempt = "2";
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_REPLAY);
  assert_non_null(strstr(job, "\"attempt\":3"));
  free(job);
  /* Without the header: the value's attempt. */
  l.attempt = NULL;
  assert_int_equal(fx_rp_attempt(&l), 1);

  /* Not a job: parked with a reason that says what to do. */
  l.value = "this is not json {";
  l.len = strlen(l.value);
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_PARK_INVALID);
  assert_non_null(strstr(reason, "not a JSON object"));
  l.value = "{\"job_id\":\"j\",\"tenant\":\"elsewhere\",\"patients\":[\"1\"]}";
  l.len = strlen(l.value);
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_PARK_INVALID);
  assert_non_null(strstr(reason, "(unknown_tenant): tenant 'elsewhere' is not configured"));
  assert_null(strstr(reason, "then replay the dead letter"));
  assert_non_null(strstr(reason, "--from-parking"));
  l.value = "";
  l.len = 0;
  l.value_omitted = "original-too-large";
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_PARK_INVALID);
  assert_non_null(strstr(reason, "too large"));
  assert_non_null(strstr(reason, "fhirx.jobs/1/5520"));
  assert_true(strlen(reason) <= 512);

  char pos[100], ident[100];
  fx_rp_position(&l, pos, sizeof pos);
  assert_string_equal(pos, "fhirx.dlq/2/17");
  l.attempt = "4";
  fx_rp_identity(&l, ident, sizeof ident);
  assert_string_equal(ident, "fhirx.jobs/1/5520#4");
}

static void markers(void **state) {
  (void)state;
  fx_rp_tp jobs[] = {{0, 12, 0}, {1, 0, 0}, {5, 123456789012LL, 0}};
  fx_rp_tp parking[] = {{0, 3, 0}};
  fx_rp_tp ranges[] = {{2, 17, 54}, {4, 0, 0}};
  fx_rp_marker m = {.t_ms = 1796019000123LL, .n_jobs = 37, .n_parked = 2, .jobs = jobs,
                    .n_jobs_tp = 3, .parking = parking, .n_parking_tp = 1, .ranges = ranges,
                    .n_ranges = 2};
  char text[FX_RP_MARKER_MAX + 1];
  assert_int_equal(fx_rp_marker_encode(&m, text, sizeof text), 0);
  assert_string_equal(text, "fhirx-replay/1 t=1796019000123 nj=37 np=2 j=0:12,1:0,5:123456789012 "
                            "k=0:3 d=2:17-54,4:0-0");
  fx_rp_marker d;
  assert_int_equal(fx_rp_marker_decode(text, strlen(text), &d), 0);
  assert_int_equal(d.t_ms, m.t_ms);
  assert_int_equal(d.n_jobs, 37);
  assert_int_equal(d.n_parked, 2);
  assert_int_equal(d.n_jobs_tp, 3);
  assert_int_equal(d.jobs[2].partition, 5);
  assert_int_equal(d.jobs[2].offset, 123456789012LL);
  assert_int_equal(d.n_ranges, 2);
  assert_true(fx_rp_marker_covers(&d, 2, 17) && fx_rp_marker_covers(&d, 2, 54) &&
              fx_rp_marker_covers(&d, 4, 0));
  assert_false(fx_rp_marker_covers(&d, 2, 55) || fx_rp_marker_covers(&d, 2, 16) ||
               fx_rp_marker_covers(&d, 3, 20));
  fx_rp_marker_free(&d);

  /* Empty lists (a batch that only parks) survive the round trip. */
  fx_rp_marker e = {.t_ms = 1, .n_parked = 1, .parking = parking, .n_parking_tp = 1,
                    .ranges = ranges, .n_ranges = 1};
  assert_int_equal(fx_rp_marker_encode(&e, text, sizeof text), 0);
  assert_int_equal(fx_rp_marker_decode(text, strlen(text), &d), 0);
  assert_int_equal(d.n_jobs_tp, 0);
  assert_int_equal(d.n_parking_tp, 1);
  fx_rp_marker_free(&d);
  assert_int_equal(fx_rp_marker_encode(&m, text, 40), -1);

  /* Someone else's metadata is not a marker; a damaged marker is an error. */
  assert_int_equal(fx_rp_marker_decode("", 0, &d), 1);
  assert_int_equal(fx_rp_marker_decode("hello", 5, &d), 1);
  const char *broken[] = {"fhirx-replay/1 t=1 nj=1 np=0 j=0:1 k=",
                          "fhirx-replay/1 t=1 nj=1 np=0 j=0:x k= d=0:1-2",
                          "fhirx-replay/1 t=1 nj=1 np=0 j=0:1 k= d=0:5-2",
                          "fhirx-replay/1 t=1 nj=1 np=0 j=0:1, k= d=0:1-2",
                          "fhirx-replay/1 t=1 nj=1 np=0 j=0:1 k= d=0:1-2 z=1",
                          /* A repeated key: refused, and the first list is not leaked
                           * (LeakSanitizer in the sanitized build). */
                          "fhirx-replay/1 t=1 nj=1 np=0 j=0:1 j=0:2 k=0:3 d=0:1-2",
                          "fhirx-replay/1 t=1 nj=1 np=0 j=0:1 k=0:3 k=1:3 d=0:1-2 d=1:1-2",
                          "fhirx-replay/1 t=1 t=2 nj=1 np=0 j=0:1 k= d=0:1-2"};
  for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++)
    if (fx_rp_marker_decode(broken[i], strlen(broken[i]), &d) != -1)
      fail_msg("accepted '%s'", broken[i]);
}

/* A run after an interrupted one carries the old marker forward: lowest
 * watermarks, the hull of the ranges, until it has committed past them. */
static void carried_markers(void **state) {
  (void)state;
  fx_rp_tp j1[] = {{0, 10, 0}, {1, 20, 0}}, d1[] = {{2, 100, 150}, {3, 40, 60}};
  fx_rp_tp j2[] = {{0, 15, 0}, {2, 7, 0}}, k2[] = {{0, 1, 0}}, d2[] = {{2, 120, 200}};
  fx_rp_marker a = {.t_ms = 5, .n_jobs = 30, .jobs = j1, .n_jobs_tp = 2, .ranges = d1, .n_ranges = 2};
  fx_rp_marker b = {.t_ms = 9, .n_jobs = 4, .n_parked = 1, .jobs = j2, .n_jobs_tp = 2,
                    .parking = k2, .n_parking_tp = 1, .ranges = d2, .n_ranges = 1};
  fx_rp_marker carry = {0};
  assert_int_equal(fx_rp_marker_merge(&carry, &b), 0);
  assert_int_equal(fx_rp_marker_merge(&carry, &a), 0);
  char text[FX_RP_MARKER_MAX + 1];
  assert_int_equal(fx_rp_marker_encode(&carry, text, sizeof text), 0);
  assert_string_equal(text, "fhirx-replay/1 t=5 nj=34 np=1 j=0:10,2:7,1:20 k=0:1 d=2:100-200,3:40-60");
  fx_rp_marker_prune(&carry, 2, 150); /* committed up to 150 on partition 2: still ahead */
  assert_true(fx_rp_marker_covers(&carry, 2, 180));
  fx_rp_marker_prune(&carry, 2, 201); /* past it */
  assert_false(fx_rp_marker_covers(&carry, 2, 180));
  assert_true(fx_rp_marker_covers(&carry, 3, 40));
  fx_rp_marker_prune(&carry, 3, 61);
  assert_int_equal(carry.n_ranges, 0);
  fx_rp_marker_free(&carry);
}

static void positions(void **state) {
  (void)state;
  char topic[64];
  int32_t p;
  int64_t o;
  const char *s = "fhirx.dlq/3/17";
  assert_int_equal(fx_rp_parse_position(s, strlen(s), topic, sizeof topic, &p, &o), 0);
  assert_string_equal(topic, "fhirx.dlq");
  assert_int_equal(p, 3);
  assert_int_equal(o, 17);
  const char *bad[] = {"fhirx.dlq/3", "/3/17", "fhirx.dlq//17", "fhirx.dlq/3/", "a/b/3/17",
                       "fhirx.dlq/x/17", "fhirx.dlq/3/17x", "fhirx.dlq/99999999999/1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (fx_rp_parse_position(bad[i], strlen(bad[i]), topic, sizeof topic, &p, &o) == 0)
      fail_msg("accepted '%s'", bad[i]);
  assert_int_equal(fx_rp_parse_position(s, strlen(s), topic, 5, &p, &o), -1); /* topic too long */
}

/* --dry-run prints what dead letters' headers say: a header holding a terminal
 * escape sequence (ESC, BEL, a C1 CSI) is shown escaped, never raw, and the
 * table's "tenant<TAB>class" key cannot be split by a tab in a header. */
static void dry_run_lines(void **state) {
  (void)state;
  fx_rp_letter l = {.topic = "fhirx.dlq", .partition = 2, .offset = 7,
                    .job_id = "job\x1b]0;pwned\x07", .tenant = "t1\x1b[2J\tx",
                    .error_class = "transient\x1b[31m", .http_status = "503",
                    .last_failure = "2026-12-01T00:00:00Z\r\x1b[K"};
  char line[2048], key[256];
  fx_rp_dry_line(&l, "replay", "1 -> 2", "why\x1b[0m \xc2\x9b" "1m", line, sizeof line);
  assert_null(strchr(line, 0x1b));
  assert_null(strchr(line, 0x07));
  assert_null(strchr(line, '\r'));
  assert_null(strstr(line, "\xc2\x9b"));
  assert_non_null(strstr(line, "replay fhirx.dlq/2/7  job job\\x1b]0;pwned\\x07  tenant "
                               "t1\\x1b[2J\\x09x  transient\\x1b[31m (503)  attempt 1 -> 2"));
  assert_non_null(strstr(line, "last failure 2026-12-01T00:00:00Z\\x0d\\x1b[K: why\\x1b[0m "
                               "\\xc2\\x9b1m"));
  fx_rp_dry_key(&l, key, sizeof key);
  assert_string_equal(key, "t1\\x1b[2J\\x09x\ttransient\\x1b[31m");
  /* Absent headers show as "-"; a small buffer cuts the line, escapes stay escaped. */
  fx_rp_letter none = {.topic = "fhirx.dlq", .partition = 0, .offset = 1};
  fx_rp_dry_line(&none, "park", "1", "", line, sizeof line);
  assert_string_equal(line, "park   fhirx.dlq/0/1  job -  tenant -  -  attempt 1  last failure -");
  fx_rp_dry_key(&none, key, sizeof key);
  assert_string_equal(key, "-\t-");
  /* A tenant of 64 control bytes escapes to 256 characters: the key still
   * has its tab (replay_run splits it there) and fits its buffer. */
  char ctl[65], k200[200];
  memset(ctl, 0x01, 64);
  ctl[64] = '\0';
  fx_rp_letter loud = {.topic = "fhirx.dlq", .tenant = ctl, .error_class = "invalid_job"};
  fx_rp_dry_key(&loud, k200, sizeof k200);
  assert_non_null(strchr(k200, '\t'));
  assert_true(strlen(k200) < sizeof k200);
  assert_string_equal(strchr(k200, '\t') + 1, "invalid_job");
  assert_int_equal(strncmp(k200, "\\x01\\x01", 8), 0);
  fx_rp_dry_key(&loud, k200, 8);
  assert_non_null(strchr(k200, '\t'));
  fx_rp_dry_line(&l, "replay", "1 -> 2", "", line, 40);
  assert_true(strlen(line) < 40);
  assert_null(strchr(line, 0x1b));
}


/* The dead letter of a failed bulk job is the whole job (fx_job_to_json):
 * replayed as a bulk job with attempt + 1, nothing narrowed or lost. */
static void bulk_decisions(void **state) {
  (void)state;
  char *job = NULL, reason[600];
  size_t len = 0;
  fx_rp_rules r = rules(3);
  const char *orig = "{\"kind\":\"bulk\",\"job_id\":\"cohort-1\",\"tenant\":\"t1\",\"group\":\"11ec-group-1\","
                     "\"resources\":[\"Observation\",\"Patient\"],\"since\":\"2026-11-01T00:00:00Z\","
                     "\"type_filter\":[\"Observation?category=laboratory\"],\"follow_references\":true}";
  fx_job *parsed = NULL;
  fx_job_error jerr;
  assert_int_equal(fx_job_parse(orig, strlen(orig), &profiles, &r.lim, &parsed, &jerr), 0);
  json_t *dead = fx_job_to_json(parsed);
  char *value = json_dumps(dead, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(dead);
  fx_rp_letter l = letter("t1", "export_failed", "cohort-1", NULL);
  l.value = value;
  l.len = strlen(value);
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_REPLAY);
  assert_string_equal(job, "{\"kind\":\"bulk\",\"job_id\":\"cohort-1\",\"tenant\":\"t1\","
                           "\"group\":\"11ec-group-1\",\"resources\":[\"Observation\",\"Patient\"],"
                           "\"since\":\"2026-11-01T00:00:00Z\","
                           "\"type_filter\":[\"Observation?category=laboratory\"],"
                           "\"follow_references\":true,\"attempt\":2}");
  fx_job *again = NULL;
  assert_int_equal(fx_job_parse(job, len, &profiles, &r.lim, &again, &jerr), 0);
  assert_int_equal(again->kind, FX_JOB_BULK);
  assert_string_equal(again->group, parsed->group);
  assert_true(fx_types_eq(again->bulk_types, parsed->bulk_types));
  assert_string_equal(again->since, parsed->since);
  assert_int_equal(again->n_type_filters, 1);
  assert_string_equal(again->type_filters[0], parsed->type_filters[0]);
  assert_int_equal(again->follow_references, 1);
  assert_int_equal(again->attempt, 2);
  assert_int_equal(again->n_tasks, 0);
  fx_job_free(again);
  free(job);

  /* The attempt limit parks a bulk job as it does any other. */
  l.attempt = "3";
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_PARK_LIMIT);
  assert_string_equal(reason, "attempt limit 3 reached: attempt 3 failed (export_failed)");
  free(value);
  fx_job_free(parsed);

  /* A bulk job the workers now reject (here: Binary) is parked with the reason. */
  l.attempt = "1";
  l.value = "{\"kind\":\"bulk\",\"job_id\":\"b\",\"tenant\":\"t1\",\"group\":\"g\",\"resources\":[\"Binary\"]}";
  l.len = strlen(l.value);
  assert_int_equal(fx_rp_decide(&r, &l, &job, &len, reason, sizeof reason), FX_RP_PARK_INVALID);
  assert_non_null(strstr(reason, "(invalid_job): resources[0]: the Group $export of profile cerner does not "
                                 "export Binary"));
  assert_null(job);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(times), cmocka_unit_test(filters),
                                     cmocka_unit_test(decisions), cmocka_unit_test(bulk_decisions),
                                     cmocka_unit_test(markers),
                                     cmocka_unit_test(carried_markers),
                                     cmocka_unit_test(positions),
                                     cmocka_unit_test(dry_run_lines)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
