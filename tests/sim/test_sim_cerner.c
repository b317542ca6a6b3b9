/* sim_cerner: the simulator is as strict as Cerner's R4 documentation on the
 * points a real extract trips over (cerner/fhir.cerner.com,
 * content/millennium/r4/...; docs/simulator.md cites each):
 *
 *   - RelatedPerson by patient needs -relationship-level=Patient
 *     (related-person.md), and its ids are Cerner's <person>-<patient>;
 *   - _lastUpdated as each type documents it: MedicationRequest and
 *     ServiceRequest need a time and ge/le, Immunization one gt/ge value, the
 *     others up to two eq/ge/gt/le/lt values forming a range, some never with
 *     date (medication-request.md, service-request.md, immunization.md, ...);
 *   - CareTeam ids are Cerner's, with '_' (care-team.md);
 *   - a DiagnosticReport has 2-3 presentedForm entries (XR- PDF, R- XML,
 *     TR- HTML), each Binary served as FHIR JSON, as its own content type, and
 *     refused as application/json (binary.md). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "fx_testsupport.h"
#include "tests/sim/test_keys.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TENANT "rules-t"
#define CLIENT "rules-client"
#define SIGNED "signed-t" /* binary_signed_urls */
#define P1 "20000003"

static const char config_json[] =
    "{\"seed\": 11, \"tenants\": ["
    " {\"id\": \"" TENANT "\", \"sandbox\": true, \"patients\": 40,"
    "  \"per_patient\": {\"RelatedPerson\": 3, \"CareTeam\": 2, \"DiagnosticReport\": 6},"
    "  \"binary_min_bytes\": 300, \"binary_max_bytes\": 2000},"
    " {\"id\": \"" SIGNED "\", \"patients\": 2, \"binary_signed_urls\": true}"
    "]}";

typedef struct fixture {
  fx_sim sim;
  test_key key;
  char *token;
  char *token_signed;
} fixture;

static const char *const all_types[] = {
    "AllergyIntolerance", "Binary",       "CarePlan",      "CareTeam",     "Condition",
    "Coverage",           "Device",       "DiagnosticReport", "DocumentReference",
    "Encounter",          "Goal",         "Immunization",  "Location",     "MedicationRequest",
    "Observation",        "Organization", "Patient",       "Practitioner", "Procedure",
    "RelatedPerson",      "ServiceRequest"};

static char *get_token(fixture *f, const char *tenant) {
  json_t *scopes = json_array();
  char scope_str[2048] = "";
  for (size_t i = 0; i < sizeof all_types / sizeof *all_types; i++) {
    char s[96];
    snprintf(s, sizeof s, "system/%s.read", all_types[i]);
    json_array_append_new(scopes, json_string(s));
    snprintf(scope_str + strlen(scope_str), sizeof scope_str - strlen(scope_str), "%s%s",
             i ? " " : "", s);
  }
  json_t *client = json_pack("{s:s, s:{s:[o]}, s:o}", "client_id", CLIENT, "jwks", "keys",
                             test_key_jwk(&f->key), "scopes", scopes);
  char *body = json_dumps(client, JSON_COMPACT);
  char path[256];
  snprintf(path, sizeof path, "/_sim/tenants/%s/clients", tenant);
  assert_int_equal(fx_sim_post_json(&f->sim, path, body), 200);
  free(body);
  json_decref(client);

  char aud[512];
  snprintf(aud, sizeof aud, "%s/tenants/%s/protocols/oauth2/profiles/smart-v1/token", f->sim.url,
           tenant);
  json_t *c = json_pack("{s:s, s:s, s:s, s:I, s:s}", "iss", CLIENT, "sub", CLIENT, "aud", aud,
                        "exp", (json_int_t)(time(NULL) + 240), "jti", tenant);
  char *jwt = test_jwt_sign(&f->key, c, NULL, NULL);
  json_decref(c);
  char *esc = curl_easy_escape(NULL, scope_str, 0);
  size_t n = strlen(jwt) + strlen(esc) + 256;
  char *form = malloc(n);
  snprintf(form, n,
           "grant_type=client_credentials&client_assertion_type=urn%%3Aietf%%3Aparams%%3Aoauth"
           "%%3Aclient-assertion-type%%3Ajwt-bearer&client_assertion=%s&scope=%s",
           jwt, esc);
  const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  fxt_http_resp r;
  assert_int_equal(fxt_http("POST", aud, headers, form, &r), 0);
  assert_int_equal(r.status, 200);
  json_t *doc = json_loads(r.body, 0, NULL);
  char *token = strdup(json_string_value(json_object_get(doc, "access_token")));
  json_decref(doc);
  fxt_http_resp_free(&r);
  free(form);
  curl_free(esc);
  free(jwt);
  return token;
}

static int group_setup(void **state) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  fixture *f = calloc(1, sizeof *f);
  if (!f || test_key_gen(&f->key, "ES384", "rules-1")) return -1;
  if (fx_sim_start(&f->sim, config_json) != 0) return -1;
  *state = f;
  f->token = get_token(f, TENANT);
  f->token_signed = get_token(f, SIGNED);
  return 0;
}

static int group_teardown(void **state) {
  fixture *f = *state;
  if (f) {
    fx_sim_stop(&f->sim);
    test_key_free(&f->key);
    free(f->token);
    free(f->token_signed);
    free(f);
  }
  curl_global_cleanup();
  return 0;
}

/* GET {sim}/r4/TENANT{path} (or an absolute URL) with an Accept header. */
static long get(fixture *f, const char *path, const char *accept, fxt_http_resp *r) {
  char url[2048], auth[512], acc[128];
  if (strncmp(path, "http", 4) == 0)
    snprintf(url, sizeof url, "%s", path);
  else
    snprintf(url, sizeof url, "%s/r4/" TENANT "%s", f->sim.url, path);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", f->token);
  snprintf(acc, sizeof acc, "Accept: %s", accept ? accept : "application/fhir+json");
  const char *headers[] = {auth, acc, NULL};
  assert_int_equal(fxt_http("GET", url, headers, NULL, r), 0);
  return r->status;
}

/* The JSON answer of path, which must have status want. */
static json_t *get_json(fixture *f, const char *path, long want) {
  fxt_http_resp r;
  long status = get(f, path, NULL, &r);
  if (status != want) fprintf(stderr, "GET %s: %ld %s\n", path, status, r.body);
  assert_int_equal(status, want);
  json_t *doc = json_loads(r.body, 0, NULL);
  assert_non_null(doc);
  fxt_http_resp_free(&r);
  return doc;
}

static const char *diagnostics(const json_t *oo) {
  return json_string_value(
      json_object_get(json_array_get(json_object_get(oo, "issue"), 0), "diagnostics"));
}

/* A 400 whose OperationOutcome says `needle`. */
static void expect_400(fixture *f, const char *path, const char *needle) {
  json_t *oo = get_json(f, path, 400);
  assert_string_equal(json_string_value(json_object_get(oo, "resourceType")), "OperationOutcome");
  const char *d = diagnostics(oo);
  if (!d || !strstr(d, needle)) fail_msg("%s: '%s' not in '%s'", path, needle, d ? d : "(none)");
  json_decref(oo);
}

static size_t entries(fixture *f, const char *path) {
  json_t *b = get_json(f, path, 200);
  size_t n = json_array_size(json_object_get(b, "entry"));
  json_decref(b);
  return n;
}

static bool matches(const char *re, const char *s) {
  regex_t rx;
  assert_int_equal(regcomp(&rx, re, REG_EXTENDED | REG_NOSUB), 0);
  bool ok = regexec(&rx, s, 0, NULL, 0) == 0;
  regfree(&rx);
  return ok;
}

/* ---- tests ---- */

static void related_person_needs_relationship_level(void **state) {
  fixture *f = *state;
  expect_400(f, "/RelatedPerson?patient=" P1,
             "-relationship-level is required for patient and identifier searches");
  expect_400(f, "/RelatedPerson?identifier=urn:oid:1|2",
             "-relationship-level is required for patient and identifier searches");
  expect_400(f, "/RelatedPerson?patient=" P1 "&-relationship-level=Encounter",
             "-relationship-level can only be set to Patient");
  expect_400(f, "/RelatedPerson?-encounter=1&-relationship-level=Patient",
             "-relationship-level can only be provided with patient or identifier");
  json_t *b = get_json(f, "/RelatedPerson?patient=" P1 "&-relationship-level=Patient", 200);
  assert_int_equal(json_array_size(json_object_get(b, "entry")), 3);
  /* Cerner's example form with the system is the same search. */
  assert_int_equal(entries(f, "/RelatedPerson?patient=" P1 "&-relationship-level="
                              "http%3A%2F%2Fhl7.org%2Ffhir%2Fresource-types%7CPatient"),
                   3);
  /* Ids are Cerner's <person id>-<patient id> (12724066-12742397), and read back. */
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(b, "entry"), i, e) {
    const char *id = json_string_value(json_object_get(json_object_get(e, "resource"), "id"));
    if (!matches("^[1-9][0-9]{7}-" P1 "$", id)) fail_msg("RelatedPerson id %s", id);
    char path[128];
    snprintf(path, sizeof path, "/RelatedPerson/%s", id);
    json_decref(get_json(f, path, 200));
  }
  json_decref(b);
  /* _id alone needs no level, and a made-up id of the right shape is unknown. */
  json_decref(get_json(f, "/RelatedPerson/39999999-" P1, 404));
  /* The paging continuation needs nothing more. */
  b = get_json(f, "/RelatedPerson?patient=" P1 "&-relationship-level=Patient&_count=1", 200);
  const char *next = NULL;
  json_array_foreach(json_object_get(b, "link"), i, e) {
    if (strcmp(json_string_value(json_object_get(e, "relation")), "next") == 0)
      next = json_string_value(json_object_get(e, "url"));
  }
  assert_non_null(next);
  json_decref(get_json(f, next, 200));
  json_decref(b);
}

static void last_updated_as_documented(void **state) {
  fixture *f = *state;
  /* MedicationRequest and ServiceRequest: a time, ge or le. */
  static const char *const timed[] = {"MedicationRequest", "ServiceRequest"};
  for (size_t t = 0; t < 2; t++) {
    char path[256];
    snprintf(path, sizeof path, "/%s?patient=" P1 "&_lastUpdated=ge2024-07-01", timed[t]);
    expect_400(f, path, "_lastUpdated must include a time and be prefixed by ge or le");
    snprintf(path, sizeof path, "/%s?patient=" P1 "&_lastUpdated=gt2024-07-01T00:00:00Z",
             timed[t]);
    expect_400(f, path, "prefixed by ge or le");
    snprintf(path, sizeof path, "/%s?patient=" P1 "&_lastUpdated=2024-07-01T00:00:00Z", timed[t]);
    expect_400(f, path, "prefixed by ge or le");
    snprintf(path, sizeof path, "/%s?patient=" P1 "&_lastUpdated=ge2024-07-01T00:00:00Z",
             timed[t]);
    json_decref(get_json(f, path, 200));
    snprintf(path, sizeof path,
             "/%s?patient=" P1 "&_lastUpdated=ge2024-01-01T00:00:00.000Z"
             "&_lastUpdated=le2024-12-31T23:59:59.000Z",
             timed[t]);
    json_decref(get_json(f, path, 200));
    snprintf(path, sizeof path,
             "/%s?patient=" P1 "&_lastUpdated=ge2024-01-01T00:00:00Z"
             "&_lastUpdated=ge2024-02-01T00:00:00Z",
             timed[t]);
    expect_400(f, path, "a ge lower and an le upper bound");
  }
  /* Immunization: one value, gt or ge, time optional. */
  json_decref(get_json(f, "/Immunization?patient=" P1 "&_lastUpdated=gt2024-07-01", 200));
  json_decref(get_json(f, "/Immunization?patient=" P1 "&_lastUpdated=ge2024-07-01T10:00:00Z", 200));
  expect_400(f, "/Immunization?patient=" P1 "&_lastUpdated=le2024-07-01",
             "must use the gt or ge prefix");
  expect_400(f, "/Immunization?patient=" P1 "&_lastUpdated=ge2024-01-01&_lastUpdated=le2024-12-01",
             "only once");
  expect_400(f, "/Immunization?patient=" P1 "&_lastUpdated=ge2024-01-01&date=ge2020-01-01",
             "may not be provided together");
  /* The range types: eq/ge/gt/le/lt (implied eq), at most two, forming a range. */
  json_decref(get_json(f, "/Observation?patient=" P1 "&_lastUpdated=ge2024-07-01", 200));
  json_decref(get_json(f, "/Observation?patient=" P1 "&_lastUpdated=2024-07-01", 200));
  json_decref(get_json(
      f, "/Encounter?patient=" P1 "&_lastUpdated=gt2024-01-01&_lastUpdated=lt2024-07-01", 200));
  expect_400(f, "/Condition?patient=" P1 "&_lastUpdated=ne2024-07-01",
             "must use the eq, ge, gt, le, or lt prefixes");
  expect_400(f, "/AllergyIntolerance?patient=" P1 "&_lastUpdated=ge2024-01-01&_lastUpdated=gt2024-02-01",
             "the lower value must have a ge or gt prefix");
  expect_400(f, "/Procedure?patient=" P1 "&_lastUpdated=ge2024-07-01&_lastUpdated=le2024-01-01",
             "the lower value must have a ge or gt prefix");
  expect_400(f,
             "/Observation?patient=" P1
             "&_lastUpdated=ge2024-01-01&_lastUpdated=le2024-03-01&_lastUpdated=le2024-05-01",
             "at most two times");
  expect_400(f, "/DiagnosticReport?patient=" P1 "&_lastUpdated=ge2024-01-01&date=ge2020-01-01",
             "may not be provided together");
  expect_400(f, "/DocumentReference?patient=" P1 "&_lastUpdated=ge2024-01-01&period=ge2020-01-01",
             "may not be provided together");
  /* Types without a documented _lastUpdated ignore it (a since search returns all). */
  size_t all = entries(f, "/Goal?patient=" P1);
  assert_true(all > 0);
  assert_int_equal(entries(f, "/Goal?patient=" P1 "&_lastUpdated=ge2099-01-01"), all);
}

static void care_team_ids_are_cerners(void **state) {
  fixture *f = *state;
  bool care_team = false, lifetime = false;
  for (int p = 1; p <= 40 && !(care_team && lifetime); p++) {
    char path[128];
    snprintf(path, sizeof path, "/CareTeam?patient=%d", 20000000 + p);
    json_t *b = get_json(f, path, 200);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(b, "entry"), i, e) {
      const json_t *res = json_object_get(e, "resource");
      const char *id = json_string_value(json_object_get(res, "id"));
      char pat[16];
      snprintf(pat, sizeof pat, "%d", 20000000 + p);
      if (matches("^CARE_TEAM-[0-9]+-[0-9]+-[0-9]+-[0-9]+-0-[0-9]+$", id)) {
        care_team = true;
      } else if (matches("^LIFETIME_PROVIDER-[0-9]+-0-[0-9]+-0-0-[0-9]+$", id)) {
        lifetime = true;
      } else {
        fail_msg("CareTeam id %s is not Cerner's shape", id);
      }
      assert_non_null(strstr(id, pat));
      assert_true(strlen(id) <= 64);
      /* Read and _id search by the id with '_'. */
      char read[160];
      snprintf(read, sizeof read, "/CareTeam/%s", id);
      json_t *got = get_json(f, read, 200);
      assert_string_equal(json_string_value(json_object_get(got, "id")), id);
      json_decref(got);
      snprintf(read, sizeof read, "/CareTeam?_id=%s", id);
      assert_int_equal(entries(f, read), 1);
    }
    json_decref(b);
  }
  assert_true(care_team);
  assert_true(lifetime);
  /* An id of the right shape that the patient does not have is unknown. */
  json_decref(get_json(f, "/CareTeam/CARE_TEAM-" P1 "-1-2-3-0-0", 404));
}

static uint8_t *b64_decode(const char *s, size_t *n) {
  size_t len = strlen(s);
  uint8_t *out = malloc(len / 4 * 3 + 3);
  int got = EVP_DecodeBlock(out, (const unsigned char *)s, (int)len);
  assert_true(got >= 0);
  *n = (size_t)got - (len && s[len - 1] == '=') - (len > 1 && s[len - 2] == '=');
  return out;
}

/* One Binary in its three answers: FHIR JSON, raw bytes as its own content
 * type (the same bytes), and 406 for application/json and other types. */
static void check_form(fixture *f, const char *url, const char *ct, size_t size,
                       const char *magic) {
  fxt_http_resp r;
  assert_int_equal(get(f, url, "application/fhir+json", &r), 200);
  json_t *bin = json_loads(r.body, 0, NULL);
  fxt_http_resp_free(&r);
  assert_string_equal(json_string_value(json_object_get(bin, "resourceType")), "Binary");
  assert_string_equal(json_string_value(json_object_get(bin, "contentType")), ct);
  const char *id = json_string_value(json_object_get(bin, "id"));
  assert_string_equal(id, strrchr(url, '/') + 1);
  size_t n;
  uint8_t *data = b64_decode(json_string_value(json_object_get(bin, "data")), &n);
  assert_int_equal(n, size);
  assert_memory_equal(data, magic, strlen(magic));
  json_decref(bin);
  assert_int_equal(get(f, url, ct, &r), 200);
  char *got_ct = fxt_http_header(&r, "Content-Type");
  assert_string_equal(got_ct, ct);
  free(got_ct);
  assert_int_equal(r.body_len, size);
  assert_memory_equal(r.body, data, size);
  fxt_http_resp_free(&r);
  free(data);
  assert_int_equal(get(f, url, "application/json", &r), 406);
  assert_non_null(strstr(r.body, "will not accept the application/json mime type"));
  fxt_http_resp_free(&r);
  const char *other = strcmp(ct, "application/pdf") == 0 ? "text/html" : "application/pdf";
  assert_int_equal(get(f, url, other, &r), 406);
  fxt_http_resp_free(&r);
}

static void diagnostic_reports_have_several_forms(void **state) {
  fixture *f = *state;
  size_t with[4] = {0};
  for (int p = 1; p <= 4; p++) {
    char path[128];
    snprintf(path, sizeof path, "/DiagnosticReport?patient=%d&_count=100", 20000000 + p);
    json_t *b = get_json(f, path, 200);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(b, "entry"), i, e) {
      const json_t *dr = json_object_get(e, "resource");
      const char *id = json_string_value(json_object_get(dr, "id"));
      const json_t *forms = json_object_get(dr, "presentedForm");
      size_t n = json_array_size(forms);
      assert_true(n == 2 || n == 3);
      with[n]++;
      static const char *const prefix[] = {"XR-", "R-", "TR-"};
      static const char *const ct[] = {"application/pdf", "application/xml", "text/html"};
      static const char *const magic[] = {"%PDF-1.4", "<?xml", "<!DOCTYPE html>"};
      for (size_t k = 0; k < n; k++) {
        const json_t *a = json_array_get(forms, k);
        const char *url = json_string_value(json_object_get(a, "url"));
        char want[160];
        snprintf(want, sizeof want, "/r4/" TENANT "/Binary/%s%s", prefix[k], id);
        assert_non_null(strstr(url, want));
        assert_string_equal(url + strlen(url) - strlen(want), want);
        assert_string_equal(json_string_value(json_object_get(a, "contentType")), ct[k]);
        if (p == 1 && i < 2)
          check_form(f, url, ct[k], (size_t)json_integer_value(json_object_get(a, "size")),
                     magic[k]);
      }
    }
    json_decref(b);
  }
  assert_true(with[2] > 0 && with[3] > 0); /* both counts occur */
  /* A DocumentReference has its one PDF; a TR- the report does not have is unknown. */
  json_t *b = get_json(f, "/DocumentReference?patient=" P1 "&_count=1", 200);
  const json_t *doc = json_object_get(json_array_get(json_object_get(b, "entry"), 0), "resource");
  const json_t *content = json_object_get(doc, "content");
  assert_int_equal(json_array_size(content), 1);
  const char *url =
      json_string_value(json_object_get(json_object_get(json_array_get(content, 0), "attachment"), "url"));
  assert_non_null(strstr(url, "/Binary/XR-"));
  char tr[512];
  snprintf(tr, sizeof tr, "/Binary/TR-%s", json_string_value(json_object_get(doc, "id")));
  json_decref(get_json(f, tr, 404));
  json_decref(b);
  /* Every form is in /expected's references, so an extractor is held to all of them. */
  json_t *exp = fx_sim_expected(&f->sim, TENANT, "20000001", "DiagnosticReport", NULL);
  size_t tr_refs = 0, r_refs = 0, i;
  json_t *v;
  json_array_foreach(json_object_get(exp, "references"), i, v) {
    tr_refs += strncmp(json_string_value(v), "Binary/TR-", 10) == 0;
    r_refs += strncmp(json_string_value(v), "Binary/R-", 9) == 0;
  }
  assert_int_equal(r_refs, 6);
  assert_true(tr_refs >= 1);
  json_decref(exp);
}

/* binary_signed_urls: the attachment URL works as given, and only as given
 * (binary.md: "Modifying the link has undefined consequences"). */
static void signed_attachment_urls(void **state) {
  fixture *f = *state;
  char url[1024], auth[512];
  snprintf(url, sizeof url, "%s/r4/" SIGNED "/DiagnosticReport?patient=20000001&_count=1",
           f->sim.url);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", f->token_signed);
  const char *h[] = {auth, "Accept: application/fhir+json", NULL};
  fxt_http_resp r;
  assert_int_equal(fxt_http("GET", url, h, NULL, &r), 0);
  assert_int_equal(r.status, 200);
  json_t *b = json_loads(r.body, 0, NULL);
  fxt_http_resp_free(&r);
  const json_t *dr = json_object_get(json_array_get(json_object_get(b, "entry"), 0), "resource");
  const char *att = json_string_value(
      json_object_get(json_array_get(json_object_get(dr, "presentedForm"), 1), "url"));
  assert_non_null(strstr(att, "/Binary/R-"));
  const char *q = strstr(att, "?sig=");
  assert_non_null(q);
  assert_int_equal(strlen(q), 5 + 16);
  assert_int_equal(fxt_http("GET", att, h, NULL, &r), 0);
  assert_int_equal(r.status, 200);
  fxt_http_resp_free(&r);
  /* Rebuilt from base + id (no sig), or with another document's sig: 404. */
  snprintf(url, sizeof url, "%.*s", (int)(q - att), att);
  assert_int_equal(fxt_http("GET", url, h, NULL, &r), 0);
  assert_int_equal(r.status, 404);
  assert_non_null(strstr(r.body, "use the attachment URL exactly as given"));
  fxt_http_resp_free(&r);
  snprintf(url, sizeof url, "%.*s?sig=0000000000000000", (int)(q - att), att);
  assert_int_equal(fxt_http("GET", url, h, NULL, &r), 0);
  assert_int_equal(r.status, 404);
  fxt_http_resp_free(&r);
  /* /expected names the Binary by type and id, without the query. */
  json_t *exp = fx_sim_expected(&f->sim, SIGNED, "20000001", "DiagnosticReport", NULL);
  size_t i, binaries = 0;
  json_t *v;
  json_array_foreach(json_object_get(exp, "references"), i, v) {
    const char *ref = json_string_value(v);
    if (strncmp(ref, "Binary/", 7) == 0) binaries++;
    assert_null(strchr(ref, '?'));
  }
  assert_true(binaries >= 2);
  json_decref(exp);
  json_decref(b);
}

static void clean_shutdown(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_stop_status(&f->sim), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(related_person_needs_relationship_level),
      cmocka_unit_test(last_updated_as_documented),
      cmocka_unit_test(care_team_ids_are_cerners),
      cmocka_unit_test(diagnostic_reports_have_several_forms),
      cmocka_unit_test(signed_attachment_urls),
      cmocka_unit_test(clean_shutdown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
