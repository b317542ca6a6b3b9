/* The pure parts of bulk export jobs: poll waits and the files-done ranges
 * that let another worker resume an export. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "worker/bulk/bulk.h"
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(poll_delay_honours_retry_after_within_bounds),
      cmocka_unit_test(poll_delay_doubles_without_retry_after),
      cmocka_unit_test(poll_delay_never_passes_the_deadline),
      cmocka_unit_test(ranges_round_trip),
      cmocka_unit_test(ranges_parse_ignores_what_does_not_fit),
      cmocka_unit_test(references_parse),
      cmocka_unit_test(status_classes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
