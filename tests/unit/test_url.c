#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/url.h"

static void within(void **state) {
  (void)state;
  const char *base = "https://fhir-ehr.cerner.com/r4/t1";
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Patient/1", base));
  assert_true(fx_url_within("https://FHIR-EHR.cerner.com:443/r4/t1/Patient?_id=1", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/", "https://fhir-ehr.cerner.com/r4/t1/"));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t10/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t2/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/../t2/Patient/1", base));
  assert_false(fx_url_within("http://fhir-ehr.cerner.com/r4/t1/Patient/1", base));
  /* The scheme is compared on its own, not through its default port: plain
   * http to port 443 would carry the token in clear text. */
  assert_false(fx_url_within("http://fhir-ehr.cerner.com:443/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com:80/r4/t1/Patient/1",
                             "http://fhir-ehr.cerner.com/r4/t1"));
  assert_true(fx_url_within("HTTPS://fhir-ehr.cerner.com/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com:8443/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://evil.example/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com.evil.example/r4/t1/Patient/1", base));
  assert_false(fx_url_within("https://user@evil.example/r4/t1", base));
  assert_false(fx_url_within("Patient/1", base));
  assert_false(fx_url_within("", base));
}

/* Issue 13 item 8: paths a server or proxy may decode or normalize into
 * another tenant's never get t1's token, however they are spelled. */
static void encoded_dot_segments_and_backslashes(void **state) {
  (void)state;
  const char *base = "https://fhir-ehr.cerner.com/r4/t1";
  const char *bad[] = {
      "https://fhir-ehr.cerner.com/r4/t1/%2e%2e/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/%2E%2E/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/.%2e/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/%2e./t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%2ft2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%2Ft2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%5ct2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%5Ct2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..\\t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/Patient\\1",
      "https://fhir-ehr.cerner.com/r4/t1/%2e/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/./Patient/1",
      /* double encoding: a proxy decodes once, the server again */
      "https://fhir-ehr.cerner.com/r4/t1/%252e%252e/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%252ft2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%255ct2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/%25252e%25252e/t2/Patient/1",
      /* path parameters: Tomcat, Jetty and Spring drop ";..." before they
       * normalize, so "..;" climbs like ".."; and a decoded NUL */
      "https://fhir-ehr.cerner.com/r4/t1/..;/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..;x=1/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/.;/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/%2e%2e;x=1/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%3b/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%3B/t2/Patient/1",
      "https://fhir-ehr.cerner.com/r4/t1/..%00/t2/Patient/1",
  };
  fx_token_scope s = {.base = base};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (fx_url_within(bad[i], base)) fail_msg("within: %s", bad[i]);
    if (fx_url_may_carry_token(bad[i], &s)) fail_msg("may carry: %s", bad[i]);
    s.own_export = 1; /* nor as a URL of the tenant's own export, on its origin */
    if (fx_url_may_carry_token(bad[i], &s)) fail_msg("own export: %s", bad[i]);
    s.own_export = 0;
    if (!fx_url_problem(bad[i])) fail_msg("no problem: %s", bad[i]);
  }
  /* What stays allowed: percent-encoding that decodes to nothing special, dots
   * inside a segment, and anything in the query. */
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Binary/a.b..c", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Patient/%41", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Patient/...", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Patient/a;b", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Patient/...;x", base));
  assert_true(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Observation?x=%2e%2e%2f..\\", base));
  assert_null(fx_url_problem("https://fhir-ehr.cerner.com/r4/t1/Patient?a=%2e%2e"));
  assert_non_null(strstr(fx_url_problem("https://h/r4/t1/%2e%2e/t2"), "dot segment"));
  assert_non_null(strstr(fx_url_problem("https://h/r4/t1/..%2ft2"), "'/'"));
  assert_non_null(strstr(fx_url_problem("https://h/r4/t1/..%5ct2"), "backslash"));
  char note[200];
  fx_url_problem_note("https://h/r4/t1/%2e%2e/t2", note, sizeof note);
  assert_non_null(strstr(note, "; its path holds a percent-encoded dot segment"));
  fx_url_problem_note("https://h/r4/t1/Patient/1", note, sizeof note);
  assert_string_equal(note, "");
  fx_url_problem_note("https:/h/r4", note, sizeof note);
  assert_non_null(strstr(note, "not an absolute URL"));
  /* A base that is itself unsafe pins nothing: "/r4/t1/.." would cover every tenant. */
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t2/Patient/1",
                             "https://fhir-ehr.cerner.com/r4/t1/.."));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t2/Patient/1",
                             "https://fhir-ehr.cerner.com/r4/t1/%2e%2e"));
}

/* Issue 13 item 5: "https:/host" and "https:///host" are taken by curl, but
 * are not absolute URLs with a host. */
static void absolute_with_a_host(void **state) {
  (void)state;
  assert_null(fx_url_problem("https://fhir-ehr.cerner.com/r4/t1"));
  assert_null(fx_url_problem("http://127.0.0.1:8080"));
  assert_null(fx_url_problem("https://[::1]:8443/r4/t1"));
  const char *bad[] = {"https:/fhir-ehr.cerner.com/r4/t1", "https:///fhir-ehr.cerner.com/r4",
                       "https:fhir-ehr.cerner.com/r4", "//fhir-ehr.cerner.com/r4", "/r4/t1",
                       "Patient/1", "", "https://", "https://:443/r4", "https://user@/r4",
                       "https://fhir\\ehr.cerner.com/r4"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (!fx_url_problem(bad[i])) fail_msg("accepted: '%s'", bad[i]);
  assert_non_null(fx_url_problem(NULL));
  assert_false(fx_url_within("https://fhir-ehr.cerner.com/r4/t1/Patient/1",
                             "https:/fhir-ehr.cerner.com/r4/t1"));
  assert_false(fx_url_within("https:/fhir-ehr.cerner.com/r4/t1/Patient/1",
                             "https://fhir-ehr.cerner.com/r4/t1"));
}

static void redact(void **state) {
  (void)state;
  char out[256];
  fx_url_redact("https://h/r4/t1/Observation?patient=12724065&_count=50#x", out, sizeof out);
  assert_string_equal(out, "https://h/r4/t1/Observation?patient=&_count=");
  fx_url_redact("https://h/r4/t1/Patient/1", out, sizeof out);
  assert_string_equal(out, "https://h/r4/t1/Patient/1");
  fx_url_redact("https://h/r4/t1?-pageContext=secret-cursor", out, sizeof out);
  assert_null(strstr(out, "secret"));
  fx_url_redact("https://h/r4/t1/Patient?_id=1", out, 12);
  assert_int_equal(strlen(out), 11); /* truncated, still terminated */
  /* Userinfo never leaves (issue 13 item 9): scheme, host, path and names. */
  fx_url_redact("https://user:secret@storage.example/b/1.ndjson?sig=abc", out, sizeof out);
  assert_string_equal(out, "https://storage.example/b/1.ndjson?sig=");
  fx_url_redact("https://secret@storage.example:9000/b", out, sizeof out);
  assert_string_equal(out, "https://storage.example:9000/b");
  fx_url_redact("https://a@b:secret@storage.example", out, sizeof out);
  assert_string_equal(out, "https://storage.example");
  fx_url_redact("http://u:secret@h?x=1", out, sizeof out);
  assert_string_equal(out, "http://h?x=");
  /* An '@' in the path or query is not userinfo. */
  fx_url_redact("https://h/a@b/c?d=e@f", out, sizeof out);
  assert_string_equal(out, "https://h/a@b/c?d=");
  /* Printable ASCII whatever the server wrote: other bytes are
   * percent-encoded (never '?', which would read as a query), and an escape
   * the end would cut is left out. */
  fx_url_redact("https://h/caf\xc3\xa9", out, 15);
  assert_string_equal(out, "https://h/caf");
  fx_url_redact("https://h/caf\xc3\xa9", out, 20);
  assert_string_equal(out, "https://h/caf%C3%A9");
  fx_url_redact("https://h/a\xff\xc3" "b\x1b[2J c", out, sizeof out);
  assert_string_equal(out, "https://h/a%FF%C3b%1B[2J%20c");
  for (size_t n = 1; n < 40; n++) { /* cut anywhere: terminated, never the secret */
    fx_url_redact("https://user:secret@storage.example/b/1.ndjson", out, n);
    assert_true(strlen(out) < n);
    assert_null(strstr(out, "secret"));
    assert_null(strstr(out, "user"));
  }
}

/* A redirect is named (without query values) and said not to be followed;
 * any other status gives nothing. */
static void redirect_note(void **state) {
  (void)state;
  char out[400];
  fx_url_redirect_note(302, "https://elsewhere.example/r4/Patient?patient=123&_count=5", out,
                       sizeof out);
  assert_non_null(strstr(out, "a redirect to https://elsewhere.example/r4/Patient?patient=&_count=,"));
  assert_non_null(strstr(out, "not followed"));
  assert_null(strstr(out, "123"));
  fx_url_redirect_note(307, NULL, out, sizeof out);
  assert_int_equal(strncmp(out, "a redirect, not followed", 24), 0);
  fx_url_redirect_note(299, "https://x.example/", out, sizeof out);
  assert_string_equal(out, "");
  fx_url_redirect_note(400, "https://x.example/", out, sizeof out);
  assert_string_equal(out, "");
  fx_url_redirect_note(399, "https://x.example/", out, sizeof out);
  assert_non_null(strstr(out, "https://x.example/"));
}

/* Where a tenant's token may go (docs/architecture.md "Where a token may
 * go"): under the base; under a configured prefix; and, for URLs of an export
 * the tenant started, anywhere on the base's origin. Nothing else. */
static void may_carry_token(void **state) {
  (void)state;
  /* The SMART reference server: base {origin}/{settings}/fhir, status URL
   * {origin}/fhir/bulkstatus/{id}, files {origin}/{other}/fhir/bulkfiles/... */
  fx_token_scope s = {.base = "https://bulk-data.smarthealthit.org/eyJlcnIiOiIifQ/fhir"};
  const char *status = "https://bulk-data.smarthealthit.org/fhir/bulkstatus/92a7e9b2";
  const char *file = "https://bulk-data.smarthealthit.org/eyJpZCI6IjkyYSJ9/fhir/bulkfiles/"
                     "1.Patient.ndjson";
  assert_true(fx_url_may_carry_token("https://bulk-data.smarthealthit.org/eyJlcnIiOiIifQ/fhir/"
                                     "Group/g1/$export", &s));
  /* Default: export URLs outside the base's path are refused... */
  assert_false(fx_url_may_carry_token(status, &s));
  assert_false(fx_url_may_carry_token(file, &s));
  /* ...unless they belong to the tenant's own export, on the base's origin. */
  s.own_export = 1;
  assert_true(fx_url_may_carry_token(status, &s));
  assert_true(fx_url_may_carry_token(file, &s));
  assert_true(fx_url_may_carry_token("https://BULK-DATA.smarthealthit.org:443/fhir/x", &s));
  /* Even then: never another origin (host, scheme or port), never a look-alike host. */
  assert_false(fx_url_may_carry_token("https://evil.example/fhir/bulkstatus/92a7e9b2", &s));
  assert_false(fx_url_may_carry_token("http://bulk-data.smarthealthit.org/fhir/bulkstatus/1", &s));
  assert_false(
      fx_url_may_carry_token("https://bulk-data.smarthealthit.org:8443/fhir/bulkstatus/1", &s));
  assert_false(fx_url_may_carry_token(
      "https://bulk-data.smarthealthit.org.evil.example/fhir/bulkstatus/1", &s));
  assert_false(fx_url_may_carry_token("https://user@evil.example/fhir/bulkstatus/1", &s));
  assert_false(fx_url_may_carry_token("/fhir/bulkstatus/1", &s));
  assert_false(fx_url_may_carry_token("", &s));
  assert_false(fx_url_may_carry_token(NULL, &s));

  /* Cerner: tenants share a host; another tenant's path never gets the token
   * from a next link or a reference (own_export is never set for those). */
  fx_token_scope c = {.base = "https://fhir-ehr.cerner.com/r4/t1"};
  assert_true(fx_url_may_carry_token("https://fhir-ehr.cerner.com/r4/t1/Patient?x=1", &c));
  assert_false(fx_url_may_carry_token("https://fhir-ehr.cerner.com/r4/t2/Patient/1", &c));
  assert_false(fx_url_may_carry_token("https://fhir-ehr.cerner.com/r4/t10/Patient/1", &c));
  assert_false(fx_url_may_carry_token("https://fhir-ehr.cerner.com/r4/t1/../t2/Patient/1", &c));

  /* Configured prefixes: a path prefix covers that path and below (segment-wise),
   * an origin ("https://h" after normalization) everything on it. */
  char *prefixes[] = {"https://files.example.org/exports", "https://cdn.example.net"};
  c.prefixes = prefixes;
  c.n_prefixes = 2;
  assert_true(fx_url_may_carry_token("https://files.example.org/exports/j1/1.ndjson", &c));
  assert_true(fx_url_may_carry_token("https://files.example.org/exports", &c));
  assert_false(fx_url_may_carry_token("https://files.example.org/exports2/j1", &c));
  assert_false(fx_url_may_carry_token("https://files.example.org/other", &c));
  assert_true(fx_url_may_carry_token("https://cdn.example.net/any/path", &c));
  assert_false(fx_url_may_carry_token("http://cdn.example.net/any/path", &c));
  assert_false(fx_url_may_carry_token("https://fhir-ehr.cerner.com/r4/t2/Patient/1", &c));
  assert_false(fx_url_may_carry_token("https://x", &(fx_token_scope){0}));
}

static void same_origin(void **state) {
  (void)state;
  assert_true(fx_url_same_origin("https://h/a", "https://H:443/b?c"));
  assert_true(fx_url_same_origin("http://h:8080/a", "http://h:8080"));
  assert_false(fx_url_same_origin("http://h:8080/a", "http://h:8081/a"));
  assert_false(fx_url_same_origin("http://h/a", "https://h/a"));
  assert_false(fx_url_same_origin("https://h/a", "https://h.evil/a"));
  assert_false(fx_url_same_origin("/a", "https://h/a"));
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(within),
                                     cmocka_unit_test(encoded_dot_segments_and_backslashes),
                                     cmocka_unit_test(absolute_with_a_host),
                                     cmocka_unit_test(redact),
                                     cmocka_unit_test(redirect_note),
                                     cmocka_unit_test(may_carry_token),
                                     cmocka_unit_test(same_origin)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
