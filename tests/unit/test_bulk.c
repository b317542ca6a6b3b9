/* The pure parts of bulk export jobs: poll waits, the files-done ranges
 * that let another worker resume an export, and the lifecycles of an export
 * and of its files in memory (worker/bulk/life.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "worker/bulk/bulk.h"
#include "worker/bulk/life.h"
#include "worker/model/errclass.h"
#include "worker/model/resources.h"

#define FLOOR 1000u
#define CEIL 600000u
#define NOW 1000000000u
#define LATER (NOW + 86400000u)

static void poll_delay_honours_retry_after_within_bounds(void **state) {
  (void)state;
  /* Retry-After wins when it is inside the bounds. */
  assert_int_equal(fx_bulk_poll_delay(5000, 0, FLOOR, CEIL, NOW, LATER), 5000);
  /* Below the floor: the floor (a server saying 0 is not polled in a loop). */
  assert_int_equal(fx_bulk_poll_delay(0, 0, FLOOR, CEIL, NOW, LATER), FLOOR);
  /* Above the ceiling (Cerner has sent 600 s, some send hours): cut. */
  assert_int_equal(fx_bulk_poll_delay(3600000, 0, FLOOR, CEIL, NOW, LATER), CEIL);
}

static void poll_delay_doubles_without_retry_after(void **state) {
  (void)state;
  uint64_t d = fx_bulk_poll_delay(-1, 0, FLOOR, CEIL, NOW, LATER);
  assert_int_equal(d, FLOOR);
  d = fx_bulk_poll_delay(-1, d, FLOOR, CEIL, NOW, LATER);
  assert_int_equal(d, 2 * FLOOR);
  for (int i = 0; i < 20; i++) d = fx_bulk_poll_delay(-1, d, FLOOR, CEIL, NOW, LATER);
  assert_int_equal(d, CEIL);
}

static void poll_delay_never_passes_the_deadline(void **state) {
  (void)state;
  assert_int_equal(fx_bulk_poll_delay(60000, 0, FLOOR, CEIL, NOW, NOW + 2500), 2500);
  assert_int_equal(fx_bulk_poll_delay(60000, 0, FLOOR, CEIL, NOW, NOW), 0);
  assert_int_equal(fx_bulk_poll_delay(-1, 0, FLOOR, CEIL, NOW + 5, NOW), 0);
}

/* bulk.retries goes up to 100: the doubling saturates instead of shifting a
 * 64-bit value by 99 (undefined; x86 shifts by 99 % 64 and waits 35 s). */
static void backoff_saturates_for_every_try(void **state) {
  (void)state;
  assert_int_equal(fx_bulk_backoff_ms(FLOOR, 1, CEIL), FLOOR);
  assert_int_equal(fx_bulk_backoff_ms(FLOOR, 2, CEIL), 2 * FLOOR);
  assert_int_equal(fx_bulk_backoff_ms(FLOOR, 10, CEIL), 512 * FLOOR);
  assert_int_equal(fx_bulk_backoff_ms(FLOOR, 11, CEIL), CEIL);
  uint64_t prev = 0;
  for (int tries = 1; tries <= 100; tries++) {
    uint64_t d = fx_bulk_backoff_ms(FLOOR, tries, CEIL);
    if (d < prev || d > CEIL) fail_msg("try %d: backoff %llu after %llu", tries,
                                       (unsigned long long)d, (unsigned long long)prev);
    prev = d;
  }
  assert_int_equal(prev, CEIL);
  /* The largest floor and ceiling bulk.poll_min_ms / poll_max_ms allow. */
  assert_int_equal(fx_bulk_backoff_ms(3600000u, 100, 86400000u), 86400000u);
  assert_int_equal(fx_bulk_backoff_ms(3600000u, 64, 86400000u), 86400000u);
  assert_int_equal(fx_bulk_backoff_ms(FLOOR, 0, CEIL), FLOOR); /* never called so, but defined */
}

static void ranges_round_trip(void **state) {
  (void)state;
  unsigned char done[12] = {1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1};
  json_t *r = fx_bulk_ranges(done, sizeof done);
  char *s = json_dumps(r, JSON_COMPACT);
  assert_string_equal(s, "[[0,2],[4,4],[7,8],[11,11]]");
  unsigned char back[12] = {0};
  fx_bulk_ranges_parse(r, back, sizeof back);
  assert_memory_equal(done, back, sizeof done);
  free(s);
  json_decref(r);
  /* Nothing done; everything done. */
  unsigned char none[3] = {0}, all[3] = {1, 1, 1};
  r = fx_bulk_ranges(none, 3);
  assert_int_equal(json_array_size(r), 0);
  json_decref(r);
  r = fx_bulk_ranges(all, 3);
  s = json_dumps(r, JSON_COMPACT);
  assert_string_equal(s, "[[0,2]]");
  free(s);
  json_decref(r);
}

static void ranges_parse_ignores_what_does_not_fit(void **state) {
  (void)state;
  /* A record from a manifest with more files (or garbage) cannot mark
   * files that do not exist, nor write past the array. */
  json_t *r = json_loads("[[2,9],[-4,0],[\"x\",1],[7]]", 0, NULL);
  unsigned char done[4] = {0};
  fx_bulk_ranges_parse(r, done, sizeof done);
  unsigned char want[4] = {0, 0, 1, 1};
  assert_memory_equal(done, want, sizeof want);
  json_decref(r);
}

/* Reference parsing, shared by patient jobs and bulk exports. */
static void references_parse(void **state) {
  (void)state;
  const char *base = "https://fhir.example.org/r4/t1";
  char key[FX_REF_KEY_SIZE];
  int idx = -1;
  assert_int_equal(fx_ref_parse("Practitioner/4000001", base, key, sizeof key, &idx), FX_REF_LOCAL);
  assert_string_equal(key, "Practitioner/4000001");
  assert_int_equal(idx, fx_resource_index("Practitioner"));
  assert_int_equal(fx_ref_parse("https://fhir.example.org/r4/t1/Location/6000001/_history/2", base,
                                key, sizeof key, &idx),
                   FX_REF_LOCAL);
  assert_string_equal(key, "Location/6000001");
  assert_int_equal(fx_ref_parse("https://other.example.org/r4/t1/Location/1", base, key,
                                sizeof key, &idx),
                   FX_REF_FOREIGN);
  assert_int_equal(fx_ref_parse("https://fhir.example.org/r4/t2/Location/1", base, key,
                                sizeof key, &idx),
                   FX_REF_FOREIGN); /* another tenant's base on the same host */
  assert_int_equal(fx_ref_parse("#contained", base, key, sizeof key, &idx), FX_REF_NONE);
  assert_int_equal(fx_ref_parse("Spaceship/1", base, key, sizeof key, &idx), FX_REF_NONE);
  /* One id rule (resources.h): Cerner's '_' passes; '%', "..", empty do not. */
  assert_int_equal(fx_ref_parse("CareTeam/CARE_TEAM-1-2", base, key, sizeof key, &idx),
                   FX_REF_LOCAL);
  assert_string_equal(key, "CareTeam/CARE_TEAM-1-2");
  assert_int_equal(fx_ref_parse("Patient/a%2Fb", base, key, sizeof key, &idx), FX_REF_INVALID);
  assert_int_equal(idx, fx_resource_index("Patient"));
  assert_int_equal(fx_ref_parse("Binary/..", base, key, sizeof key, &idx), FX_REF_INVALID);
  assert_int_equal(fx_ref_parse("Binary/", base, key, sizeof key, &idx), FX_REF_INVALID);
  assert_int_equal(fx_ref_parse("Patient", base, key, sizeof key, &idx), FX_REF_NONE);
  assert_int_equal(fx_ref_parse("", base, key, sizeof key, &idx), FX_REF_NONE);
  assert_true(fx_fhir_id_ok("L-197392513.2", 13));
  assert_false(fx_fhir_id_ok("", 0));
  assert_false(fx_fhir_id_ok("a/b", 3));
}

static void status_classes(void **state) {
  (void)state;
  assert_int_equal(fx_errclass_of_status(400), FX_EC_SEARCH_RESTRICTION);
  assert_int_equal(fx_errclass_of_status(401), FX_EC_AUTH);
  assert_int_equal(fx_errclass_of_status(403), FX_EC_SCOPE);
  assert_int_equal(fx_errclass_of_status(404), FX_EC_NOT_FOUND);
  assert_int_equal(fx_errclass_of_status(410), FX_EC_NOT_FOUND);
  assert_int_equal(fx_errclass_of_status(408), FX_EC_TRANSIENT);
  assert_int_equal(fx_errclass_of_status(429), FX_EC_THROTTLED);
  assert_int_equal(fx_errclass_of_status(503), FX_EC_TRANSIENT);
  assert_int_equal(fx_errclass_of_status(409), FX_EC_SERVER);
}


/* ---- the export's lifecycle (life.h) ------------------------------------------------ */

enum { LI = FX_BX_LISTED, WA = FX_BX_WAITING, AS = FX_BX_ASKING, DL = FX_BX_DOWNLOADING,
       FA = FX_BX_FAILING, RE = FX_BX_REPORTING, EN = FX_BX_ENDED, DR = FX_BX_DROPPING,
       DO = FX_BX_DONE, NO = FX_BX_NONE };

/* Every (state, event) pair, written out: the specification the code must
 * follow. Columns: send, wait, manifest, files_done, fail, acked, not_acked,
 * drop, idle. */
static const int export_table[FX_BX_NSTATES][FX_BX_NEVENTS] = {
    [FX_BX_LISTED] = {AS, WA, NO, NO, FA, NO, NO, DR, NO},
    [FX_BX_WAITING] = {AS, WA, NO, NO, FA, NO, NO, DR, NO},
    [FX_BX_ASKING] = {NO, WA, DL, NO, FA, NO, NO, DR, NO},
    [FX_BX_DOWNLOADING] = {NO, NO, NO, RE, FA, NO, NO, DR, NO},
    [FX_BX_FAILING] = {NO, NO, NO, NO, NO, RE, DR, NO, NO},
    [FX_BX_REPORTING] = {NO, NO, NO, NO, NO, EN, DR, NO, NO},
    [FX_BX_ENDED] = {NO, NO, NO, NO, NO, NO, NO, NO, DO},
    [FX_BX_DROPPING] = {NO, NO, NO, NO, NO, NO, NO, NO, DO},
    [FX_BX_DONE] = {NO, NO, NO, NO, NO, NO, NO, NO, NO},
};

static void export_transitions_follow_the_table(void **state) {
  (void)state;
  for (int s = 0; s < FX_BX_NSTATES; s++)
    for (int ev = 0; ev < FX_BX_NEVENTS; ev++) {
      int got = fx_bx_next((fx_bx_state)s, (fx_bx_event)ev);
      if (got != export_table[s][ev])
        fail_msg("%s --%s--> %s, expected %s", fx_bx_state_name((fx_bx_state)s),
                 fx_bx_event_name((fx_bx_event)ev),
                 got == NO ? "(refused)" : fx_bx_state_name((fx_bx_state)got),
                 export_table[s][ev] == NO ? "(refused)"
                                           : fx_bx_state_name((fx_bx_state)export_table[s][ev]));
    }
}

/* Runs events from s; returns the state reached, or NO at the first refusal. */
static int run_export(int s, const fx_bx_event *evs, size_t n) {
  for (size_t i = 0; i < n && s != NO; i++) s = fx_bx_next((fx_bx_state)s, evs[i]);
  return s;
}

static void export_paths(void **state) {
  (void)state;
  /* A fresh export: kick-off, polls until the manifest, downloads, status,
   * DELETE, freed. */
  const fx_bx_event happy[] = {FX_BX_SEND,     FX_BX_WAIT,       FX_BX_SEND,
                               FX_BX_WAIT,     FX_BX_SEND,       FX_BX_MANIFEST,
                               FX_BX_FILES_DONE, FX_BX_ACKED,    FX_BX_IDLE};
  assert_int_equal(run_export(LI, happy, sizeof happy / sizeof happy[0]), DO);
  /* A retry of a step that could not start (out of memory) waits first. */
  const fx_bx_event retried[] = {FX_BX_WAIT, FX_BX_SEND, FX_BX_MANIFEST};
  assert_int_equal(run_export(LI, retried, 3), DL);
  /* A failed export: failure and dead letter, then the status, then the end. */
  const fx_bx_event failed[] = {FX_BX_SEND, FX_BX_FAIL, FX_BX_ACKED, FX_BX_ACKED, FX_BX_IDLE};
  assert_int_equal(run_export(LI, failed, 5), DO);
  /* A job that cannot be read fails before any request. */
  assert_int_equal(fx_bx_next(FX_BX_LISTED, FX_BX_FAIL), FA);
  /* Kafka refuses the status: the export is not ended, it resumes elsewhere. */
  const fx_bx_event refused[] = {FX_BX_SEND, FX_BX_MANIFEST, FX_BX_FILES_DONE, FX_BX_NOT_ACKED};
  assert_int_equal(run_export(LI, refused, 4), DR);
  /* A revoked partition drops a download; it ends once nothing is in flight. */
  const fx_bx_event revoked[] = {FX_BX_SEND, FX_BX_MANIFEST, FX_BX_DROP, FX_BX_IDLE};
  assert_int_equal(run_export(LI, revoked, 4), DO);
}

static void export_refuses_late_events(void **state) {
  (void)state;
  /* An answer that arrives after its export was dropped changes nothing. */
  assert_int_equal(fx_bx_next(FX_BX_DROPPING, FX_BX_WAIT), NO);
  assert_int_equal(fx_bx_next(FX_BX_DROPPING, FX_BX_MANIFEST), NO);
  assert_int_equal(fx_bx_next(FX_BX_DROPPING, FX_BX_FAIL), NO);
  /* A second failure (another file failing) does not fail it twice. */
  assert_int_equal(fx_bx_next(FX_BX_FAILING, FX_BX_FAIL), NO);
  assert_int_equal(fx_bx_next(FX_BX_REPORTING, FX_BX_FAIL), NO);
  /* An ending export finishes even when its partition is revoked. */
  assert_int_equal(fx_bx_next(FX_BX_FAILING, FX_BX_DROP), NO);
  assert_int_equal(fx_bx_next(FX_BX_REPORTING, FX_BX_DROP), NO);
  assert_int_equal(fx_bx_next(FX_BX_ENDED, FX_BX_DROP), NO);
  /* Only an export with something in flight waits for IDLE; one request at
   * a time; a manifest only answers a request. */
  assert_int_equal(fx_bx_next(FX_BX_DOWNLOADING, FX_BX_IDLE), NO);
  assert_int_equal(fx_bx_next(FX_BX_ASKING, FX_BX_SEND), NO);
  assert_int_equal(fx_bx_next(FX_BX_WAITING, FX_BX_MANIFEST), NO);
  for (int ev = 0; ev < FX_BX_NEVENTS; ev++)
    assert_int_equal(fx_bx_next(FX_BX_DONE, (fx_bx_event)ev), NO);
}

static void export_active_and_known(void **state) {
  (void)state;
  /* fhirx_bulk_exports_active: started here, until given up or freed. */
  const int active[FX_BX_NSTATES] = {0, 1, 1, 1, 1, 1, 1, 0, 0};
  /* A record read from the bulk topic concerns it until its ending began. */
  const int known[FX_BX_NSTATES] = {1, 1, 1, 1, 0, 0, 0, 0, 0};
  for (int s = 0; s < FX_BX_NSTATES; s++) {
    assert_int_equal(fx_bx_active((fx_bx_state)s), active[s]);
    assert_int_equal(fx_bx_known((fx_bx_state)s), known[s]);
  }
  assert_string_equal(fx_bx_state_name(FX_BX_DOWNLOADING), "downloading");
  assert_string_equal(fx_bx_state_name((fx_bx_state)FX_BX_NSTATES), "?");
}

/* ---- a file's phases ------------------------------------------------------------------ */

enum { FW = FX_BXF_WAITING, FR = FX_BXF_RECEIVING, FP = FX_BXF_PAUSED, FD = FX_BXF_DRAINING,
       FF = FX_BXF_REFERENCES, FK = FX_BXF_ACKING, FS = FX_BXF_SETTLED };

/* Columns: send, pause, resume, body_end, lines_done, refs_done, retry,
 * give_up, settle. */
static const int file_table[FX_BXF_NPHASES][FX_BXF_NEVENTS] = {
    [FX_BXF_WAITING] = {FR, NO, NO, NO, NO, NO, NO, FK, NO},
    [FX_BXF_RECEIVING] = {FR, FP, NO, FD, NO, NO, FW, FK, NO},
    [FX_BXF_PAUSED] = {FR, NO, FR, FD, NO, NO, FW, FK, NO},
    [FX_BXF_DRAINING] = {NO, NO, NO, NO, FF, NO, NO, FK, NO},
    [FX_BXF_REFERENCES] = {NO, NO, NO, NO, NO, FK, NO, FK, NO},
    [FX_BXF_ACKING] = {NO, NO, NO, NO, NO, NO, NO, NO, FS},
    [FX_BXF_SETTLED] = {NO, NO, NO, NO, NO, NO, NO, NO, NO},
};

static void file_transitions_follow_the_table(void **state) {
  (void)state;
  for (int p = 0; p < FX_BXF_NPHASES; p++)
    for (int ev = 0; ev < FX_BXF_NEVENTS; ev++) {
      int got = fx_bxf_next((fx_bxf_phase)p, (fx_bxf_event)ev);
      if (got != file_table[p][ev])
        fail_msg("file %s: event %d gives %d, expected %d", fx_bxf_phase_name((fx_bxf_phase)p),
                 ev, got, file_table[p][ev]);
    }
}

static void file_paths(void **state) {
  (void)state;
  /* A download that pauses twice for a full producer, then reads references. */
  const fx_bxf_event evs[] = {FX_BXF_SEND,      FX_BXF_PAUSE,     FX_BXF_RESUME,
                              FX_BXF_PAUSE,     FX_BXF_RESUME,    FX_BXF_BODY_END,
                              FX_BXF_LINES_DONE, FX_BXF_REFS_DONE, FX_BXF_SETTLE};
  int p = FW;
  for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++) {
    p = fx_bxf_next((fx_bxf_phase)p, evs[i]);
    assert_int_not_equal(p, NO);
  }
  assert_int_equal(p, FS);
  /* A redirect to storage is a second request of the same transfer phase;
   * a failure waits, then starts again. */
  assert_int_equal(fx_bxf_next(FX_BXF_RECEIVING, FX_BXF_SEND), FR);
  assert_int_equal(fx_bxf_next(FX_BXF_RECEIVING, FX_BXF_RETRY), FW);
  assert_int_equal(fx_bxf_next(FX_BXF_WAITING, FX_BXF_SEND), FR);
  /* Giving up is idempotent: once everything is produced it is refused, so
   * a file is never closed twice. */
  assert_int_equal(fx_bxf_next(FX_BXF_ACKING, FX_BXF_GIVE_UP), NO);
  assert_int_equal(fx_bxf_next(FX_BXF_SETTLED, FX_BXF_GIVE_UP), NO);
  /* Only a transfer in flight pauses or resumes. */
  assert_true(fx_bxf_transferring(FX_BXF_RECEIVING));
  assert_true(fx_bxf_transferring(FX_BXF_PAUSED));
  assert_false(fx_bxf_transferring(FX_BXF_DRAINING));
  assert_false(fx_bxf_transferring(FX_BXF_WAITING));
}

/* ---- what a record and a status say ------------------------------------------------- */

static void record_states_round_trip(void **state) {
  (void)state;
  const char *names[] = {"pending", "exporting", "downloading", "completed", "failed"};
  for (int r = 0; r < FX_BXR_COUNT; r++) {
    assert_string_equal(fx_bx_record_name((fx_bx_record)r), names[r]);
    assert_int_equal(fx_bx_record_parse(names[r]), r);
  }
  /* In-memory states are not record states. */
  assert_int_equal(fx_bx_record_parse("listed"), NO);
  assert_int_equal(fx_bx_record_parse("asking"), NO);
  assert_int_equal(fx_bx_record_parse(""), NO);
  assert_int_equal(fx_bx_record_parse(NULL), NO);
}

static void ending_outcomes(void **state) {
  (void)state;
  /* Every file published whole: completed, whatever was exported. */
  assert_int_equal(fx_bx_outcome(0, 0, 0), FX_OUTCOME_COMPLETED);
  assert_int_equal(fx_bx_outcome(0, 780, 0), FX_OUTCOME_COMPLETED);
  /* Lines that could not be published: partial with results, else failed. */
  assert_int_equal(fx_bx_outcome(0, 780, 3), FX_OUTCOME_PARTIAL);
  assert_int_equal(fx_bx_outcome(0, 0, 3), FX_OUTCOME_FAILED);
  /* The export itself failed: never completed. */
  assert_int_equal(fx_bx_outcome(1, 12, 0), FX_OUTCOME_PARTIAL);
  assert_int_equal(fx_bx_outcome(1, 0, 0), FX_OUTCOME_FAILED);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(poll_delay_honours_retry_after_within_bounds),
      cmocka_unit_test(poll_delay_doubles_without_retry_after),
      cmocka_unit_test(poll_delay_never_passes_the_deadline),
      cmocka_unit_test(backoff_saturates_for_every_try),
      cmocka_unit_test(ranges_round_trip),
      cmocka_unit_test(ranges_parse_ignores_what_does_not_fit),
      cmocka_unit_test(references_parse),
      cmocka_unit_test(status_classes),
      cmocka_unit_test(export_transitions_follow_the_table),
      cmocka_unit_test(export_paths),
      cmocka_unit_test(export_refuses_late_events),
      cmocka_unit_test(export_active_and_known),
      cmocka_unit_test(file_transitions_follow_the_table),
      cmocka_unit_test(file_paths),
      cmocka_unit_test(record_states_round_trip),
      cmocka_unit_test(ending_outcomes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
