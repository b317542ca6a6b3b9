/* Error classes: which HTTP answers are retried (transient) and which are
 * final, by status, and the names failure records and `fhirx replay
 * --error-class` use. Each expectation is written out, not derived. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>

#include "worker/model/errclass.h"

typedef struct status_case {
  long status;
  fx_errclass cls;
  int transient;
} status_case;

static void statuses(void **state) {
  (void)state;
  static const status_case cases[] = {
      /* outages and overload: retried, then dead-lettered for a replay */
      {500, FX_EC_TRANSIENT, 1},
      {502, FX_EC_TRANSIENT, 1},
      {503, FX_EC_TRANSIENT, 1},
      {504, FX_EC_TRANSIENT, 1},
      {408, FX_EC_TRANSIENT, 1},
      {429, FX_EC_THROTTLED, 1},
      /* answers a retry cannot change */
      {400, FX_EC_SEARCH_RESTRICTION, 0},
      {401, FX_EC_AUTH, 0},
      {403, FX_EC_SCOPE, 0},
      {404, FX_EC_NOT_FOUND, 0},
      {410, FX_EC_NOT_FOUND, 0},
      {405, FX_EC_SERVER, 0},
      {406, FX_EC_SERVER, 0},
      {409, FX_EC_SERVER, 0},
      {422, FX_EC_SERVER, 0},
      {499, FX_EC_SERVER, 0},
      {302, FX_EC_SERVER, 0}, /* redirects are never followed for FHIR requests */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const status_case *c = &cases[i];
    fx_errclass got = fx_errclass_of_status(c->status);
    if (got != c->cls)
      fail_msg("HTTP %ld: class %s, want %s", c->status, fx_errclass_name(got),
               fx_errclass_name(c->cls));
    if (fx_errclass_transient(got) != c->transient)
      fail_msg("HTTP %ld (%s): transient %d, want %d", c->status, fx_errclass_name(got),
               fx_errclass_transient(got), c->transient);
  }
}

static void classes(void **state) {
  (void)state;
  static const struct {
    fx_errclass cls;
    const char *name;
    int transient;
  } all[] = {
      {FX_EC_INVALID_JOB, "invalid_job", 0},
      {FX_EC_UNKNOWN_TENANT, "unknown_tenant", 0},
      {FX_EC_AUTH, "auth", 0},
      {FX_EC_SCOPE, "scope", 0},
      {FX_EC_NOT_FOUND, "not_found", 0},
      {FX_EC_SEARCH_RESTRICTION, "search_restriction", 0},
      {FX_EC_THROTTLED, "throttled", 1},
      {FX_EC_TRANSIENT, "transient", 1},
      {FX_EC_TOO_LARGE, "too_large", 0},
      {FX_EC_FOREIGN_REFERENCE, "foreign_reference", 0},
      {FX_EC_INVALID_RESPONSE, "invalid_response", 0},
      {FX_EC_SERVER, "server", 0},
      {FX_EC_EXPORT_FAILED, "export_failed", 1},
      {FX_EC_EXPORT_EXPIRED, "export_expired", 1},
      {FX_EC_DEADLINE, "deadline", 1},
  };
  assert_int_equal(sizeof all / sizeof all[0], FX_EC_COUNT - 1); /* every class listed */
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    assert_string_equal(fx_errclass_name(all[i].cls), all[i].name);
    assert_int_equal(fx_errclass_parse(all[i].name), all[i].cls);
    if (fx_errclass_transient(all[i].cls) != all[i].transient)
      fail_msg("%s: transient %d, want %d", all[i].name, fx_errclass_transient(all[i].cls),
               all[i].transient);
  }
  /* Unknown names and values map to "none", which is never transient. */
  assert_int_equal(fx_errclass_parse("Transient"), FX_EC_NONE);
  assert_int_equal(fx_errclass_parse("none"), FX_EC_NONE);
  assert_int_equal(fx_errclass_parse(NULL), FX_EC_NONE);
  assert_string_equal(fx_errclass_name(FX_EC_COUNT), "none");
  assert_false(fx_errclass_transient(FX_EC_NONE));
  assert_false(fx_errclass_transient(FX_EC_COUNT));
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(statuses), cmocka_unit_test(classes)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
