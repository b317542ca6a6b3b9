/* sim_faults: every fault cerner-sim can inject, seen from a client (plain
 * libcurl easy requests), and fhirx-canary. Each test states what a client
 * experiences: a 429 carries Retry-After in both forms, a reset is a
 * transport error, a drip trips CURLOPT_LOW_SPEED_LIMIT, a truncated body is
 * invalid JSON, a huge body streams without the simulator's memory growing,
 * foreign links point at the canary, and so on.
 *
 * The tests share one simulator and one canary and run in the order listed
 * in main(); each clears the faults it set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "fx_testsupport.h"
#include "tests/sim/test_keys.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TENANT "faults-t"
#define CLIENT "fault-client"
#define WILMA "12724065"
#define FAULTS "/_sim/tenants/" TENANT "/faults"
#define VIOLATIONS "/_sim/tenants/" TENANT "/retry_after_violations"
#define SCOPES                                                                                   \
  "system/Patient.read system/Observation.read system/Practitioner.read "                      \
  "system/DocumentReference.read system/Binary.read"

static const char config_json[] =
    "{\"seed\": 7, \"tenants\": [{\"id\": \"" TENANT "\", \"sandbox\": true, \"patients\": 3,"
    " \"clients\": [{\"client_id\": \"" CLIENT "\", \"jwks\": {\"keys\": []},"
    "  \"scopes\": [\"system/Patient.read\", \"system/Observation.read\","
    "   \"system/Practitioner.read\", \"system/DocumentReference.read\","
    "   \"system/Binary.read\"]}]}]}";

typedef struct fixture {
  fx_sim sim;
  fx_canary canary;
  test_key key;
  char *token;
} fixture;

/* ---- helpers ---- */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void url_for(const fixture *f, const char *path, char *out, size_t n) {
  snprintf(out, n, "%s%s", f->sim.url, path);
}

/* POSTs a fault; returns the status and, for a 400, the error text. */
static long post_fault(fixture *f, const char *json, char *error, size_t n) {
  char url[512];
  url_for(f, FAULTS, url, sizeof url);
  const char *headers[] = {"Content-Type: application/json", NULL};
  fxt_http_resp r;
  assert_int_equal(fxt_http("POST", url, headers, json, &r), 0);
  if (error) {
    json_t *doc = json_loads(r.body, 0, NULL);
    const char *text = json_string_value(json_object_get(doc, "error"));
    snprintf(error, n, "%s", text ? text : "");
    json_decref(doc);
  }
  long status = r.status;
  fxt_http_resp_free(&r);
  return status;
}

static void set_fault(fixture *f, const char *json) {
  char error[256];
  long status = post_fault(f, json, error, sizeof error);
  if (status != 200) fprintf(stderr, "fault %s rejected: %s\n", json, error);
  assert_int_equal(status, 200);
}

static void clear_faults(fixture *f) {
  assert_int_equal(fx_sim_delete(&f->sim, FAULTS), 200);
}

/* One request with everything a test may want to look at. */
typedef struct xfer {
  CURLcode rc;
  long status;
  char *body;
  size_t len;
  char *headers;
  int64_t ms;
} xfer;

typedef struct sink {
  char *data;
  size_t len, cap;
} sink;

static size_t on_data(char *p, size_t size, size_t n, void *ud) {
  sink *s = ud;
  size_t add = size * n;
  if (s->len + add + 1 > s->cap) {
    s->cap = (s->len + add + 1) * 2;
    s->data = realloc(s->data, s->cap);
    assert_non_null(s->data);
  }
  memcpy(s->data + s->len, p, add);
  s->len += add;
  s->data[s->len] = '\0';
  return add;
}

typedef void (*tweak_fn)(CURL *h, void *arg);

/* GET (or POST with form) of an absolute URL, with the fixture's bearer
 * token when auth is set. tweak may set extra curl options. */
static void xfer_url(fixture *f, const char *method, const char *url, bool auth, const char *form,
                     tweak_fn tweak, void *arg, xfer *x) {
  *x = (xfer){0};
  CURL *h = curl_easy_init();
  assert_non_null(h);
  char bearer[256];
  snprintf(bearer, sizeof bearer, "Authorization: Bearer %s", f->token ? f->token : "");
  struct curl_slist *list = curl_slist_append(NULL, "Accept: application/fhir+json");
  if (auth) list = curl_slist_append(list, bearer);
  sink body = {0}, headers = {0};
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 60000L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &headers);
  if (form) curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
  if (tweak) tweak(h, arg);
  int64_t start = mono_ms();
  x->rc = curl_easy_perform(h);
  x->ms = mono_ms() - start;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &x->status);
  curl_easy_cleanup(h);
  curl_slist_free_all(list);
  x->body = body.data ? body.data : strdup("");
  x->len = body.len;
  x->headers = headers.data ? headers.data : strdup("");
}

/* GET {sim}/r4/{tenant}{path} with the token. */
static void fhir(fixture *f, const char *path, tweak_fn tweak, void *arg, xfer *x) {
  char url[1024];
  snprintf(url, sizeof url, "%s/r4/" TENANT "%s", f->sim.url, path);
  xfer_url(f, "GET", url, true, NULL, tweak, arg, x);
}

static long fhir_status(fixture *f, const char *path) {
  xfer x;
  fhir(f, path, NULL, NULL, &x);
  long status = x.rc == CURLE_OK ? x.status : -1;
  free(x.body);
  free(x.headers);
  return status;
}

static void xfer_free(xfer *x) {
  free(x->body);
  free(x->headers);
  *x = (xfer){0};
}

static char *header(const xfer *x, const char *name) {
  fxt_http_resp r = {.headers = x->headers};
  return fxt_http_header(&r, name);
}

static json_t *faults_list(fixture *f) {
  json_t *doc = fx_sim_get_json(&f->sim, FAULTS);
  assert_non_null(doc);
  return doc;
}

/* A member of the fault called name in GET faults. */
static long fault_stat(fixture *f, const char *name, const char *stat) {
  json_t *doc = faults_list(f);
  long out = -1;
  size_t i;
  const json_t *o;
  json_array_foreach(json_object_get(doc, "faults"), i, o) {
    if (strcmp(json_string_value(json_object_get(o, "name")), name) == 0)
      out = (long)json_integer_value(json_object_get(o, stat));
  }
  json_decref(doc);
  return out;
}

static long retry_stat(fixture *f, const char *name) {
  json_t *doc = fx_sim_get_json(&f->sim, VIOLATIONS);
  assert_non_null(doc);
  long v = (long)json_integer_value(json_object_get(doc, name));
  json_decref(doc);
  return v;
}

/* VmRSS of pid in KiB, from /proc. */
static long rss_kib(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  char *text = fx_test_read_file(path, NULL);
  const char *at = text ? strstr(text, "VmRSS:") : NULL;
  long kib = at ? strtol(at + 6, NULL, 10) : -1;
  free(text);
  return kib;
}

/* ---- fixture ---- */

static char *obtain_token(fixture *f) {
  json_t *jwk = test_key_jwk(&f->key);
  json_t *client = json_pack("{s:s, s:{s:[o]}, s:[s,s,s,s,s]}", "client_id", CLIENT, "jwks",
                             "keys", jwk, "scopes", "system/Patient.read",
                             "system/Observation.read", "system/Practitioner.read",
                             "system/DocumentReference.read", "system/Binary.read");
  char *text = json_dumps(client, JSON_COMPACT);
  json_decref(client);
  int posted = fx_sim_post_json(&f->sim, "/_sim/tenants/" TENANT "/clients", text);
  free(text);
  if (posted != 200) return NULL;
  char aud[512], jti[64];
  snprintf(aud, sizeof aud, "%s/tenants/" TENANT "/protocols/oauth2/profiles/smart-v1/token",
           f->sim.url);
  snprintf(jti, sizeof jti, "faults-%ld", (long)time(NULL));
  json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:s}", "iss", CLIENT, "sub", CLIENT, "aud", aud,
                             "exp", (json_int_t)(time(NULL) + 240), "jti", jti);
  char *jwt = test_jwt_sign(&f->key, claims, NULL, NULL);
  json_decref(claims);
  char *scope = curl_easy_escape(NULL, SCOPES, 0);
  char form[4096];
  snprintf(form, sizeof form,
           "grant_type=client_credentials&client_assertion_type=urn%%3Aietf%%3Aparams%%3Aoauth"
           "%%3Aclient-assertion-type%%3Ajwt-bearer&client_assertion=%s&scope=%s",
           jwt ? jwt : "", scope);
  curl_free(scope);
  free(jwt);
  const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  fxt_http_resp r;
  char *token = NULL;
  if (fxt_http("POST", aud, headers, form, &r) == 0 && r.status == 200) {
    json_t *doc = json_loads(r.body, 0, NULL);
    token = json_string_value(json_object_get(doc, "access_token"))
                ? strdup(json_string_value(json_object_get(doc, "access_token")))
                : NULL;
    json_decref(doc);
  }
  fxt_http_resp_free(&r);
  return token;
}

static int group_setup(void **state) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  fixture *f = calloc(1, sizeof *f);
  if (!f || test_key_gen(&f->key, "ES384", "es-faults")) return -1;
  /* Two pool threads, so that a fault blocking a thread would show. */
  const char *args[] = {"--threads", "2", NULL};
  if (fx_sim_start_args(&f->sim, config_json, args) != 0) return -1;
  if (fx_canary_start(&f->canary, NULL) != 0) return -1;
  if (!(f->token = obtain_token(f))) return -1;
  *state = f;
  return 0;
}

static int group_teardown(void **state) {
  fixture *f = *state;
  if (f) {
    fx_sim_stop(&f->sim);
    fx_canary_stop(&f->canary);
    test_key_free(&f->key);
    free(f->token);
    free(f);
  }
  curl_global_cleanup();
  return 0;
}

/* ---- tests ---- */

static void expect_rejected(fixture *f, const char *json, const char *words) {
  char error[256];
  long status = post_fault(f, json, error, sizeof error);
  if (status != 400 || !strstr(error, words))
    fprintf(stderr, "%s: %ld \"%s\" (wanted 400 naming \"%s\")\n", json, status, error, words);
  assert_int_equal(status, 400);
  assert_non_null(strstr(error, words));
}

static void test_validation(void **state) {
  fixture *f = *state;
  expect_rejected(f, "{\"target\":\"fhir\",\"status\":503,\"retry\":2}", "unknown key \"retry\"");
  expect_rejected(f, "{\"target\":\"fhirr\",\"status\":503}", "target");
  expect_rejected(f, "{\"target\":\"token\",\"path\":\"Patient\",\"status\":503}", "path");
  expect_rejected(f, "{\"target\":\"fhir\"}", "needs an effect");
  expect_rejected(f, "{\"target\":\"fhir\",\"status\":42}", "status");
  expect_rejected(f, "{\"target\":\"fhir\",\"ratio\":0,\"status\":503}", "ratio");
  expect_rejected(f, "{\"target\":\"fhir\",\"ratio\":1.5,\"status\":503}", "ratio");
  expect_rejected(f, "{\"target\":\"fhir\",\"count\":0,\"status\":503}", "count");
  expect_rejected(f, "{\"target\":\"fhir\",\"reset\":true,\"status\":503}", "reset");
  expect_rejected(f, "{\"target\":\"fhir\",\"truncate\":true,\"status\":500}", "truncate");
  expect_rejected(f, "{\"target\":\"fhir\",\"retry_after_date\":true}", "retry_after");
  expect_rejected(f, "{\"target\":\"fhir\",\"nest_depth\":3}", "nest_depth");
  expect_rejected(f, "{\"target\":\"fhir\",\"malformed\":true,\"huge_bytes\":100000}", "exclude");
  expect_rejected(f, "{\"target\":\"fhir\",\"delay_ms_min\":10}", "delay_ms_max");
  expect_rejected(f, "{\"target\":\"fhir\",\"delay_ms_min\":10,\"delay_ms_max\":5}",
                  "delay_ms_min");
  expect_rejected(f, "{\"target\":\"fhir\",\"foreign_next\":\"http://127.0.0.1:1/x\"}",
                  "foreign_next");
  expect_rejected(f, "{\"target\":\"token\",\"foreign_references\":\"http://127.0.0.1:1\"}",
                  "foreign_references");
  expect_rejected(f, "{\"target\":\"token\",\"next_segment\":\"%2e%2e/x\"}", "next_segment");
  expect_rejected(f, "{\"target\":\"fhir\",\"next_segment\":\"/x\"}", "next_segment");
  expect_rejected(f, "{\"target\":\"fhir\",\"next_segment\":\"a?b\"}", "next_segment");
  expect_rejected(f, "{\"target\":\"fhir\",\"next_segment\":\"x\",\"status\":500}",
                  "next_segment");
  expect_rejected(f, "{\"target\":\"fhir\",\"status\":503,\"headers\":{\"X\":\"a\\nb\"}}",
                  "headers");
  /* Nothing was stored by the rejected requests. */
  json_t *doc = faults_list(f);
  assert_int_equal(json_array_size(json_object_get(doc, "faults")), 0);
  json_decref(doc);
  /* The original request shape still works; its default name is the target. */
  set_fault(f, "{\"target\":\"fhir\",\"status\":503,\"content_type\":\"text/html\",\"body\":"
               "\"<html>busy</html>\",\"headers\":{\"X-Why\":\"test\"},\"delay_ms\":0}");
  xfer x;
  fhir(f, "/Patient/" WILMA, NULL, NULL, &x);
  assert_int_equal(x.status, 503);
  assert_string_equal(x.body, "<html>busy</html>");
  char *why = header(&x, "X-Why");
  assert_string_equal(why, "test");
  free(why);
  xfer_free(&x);
  assert_int_equal(fault_stat(f, "fhir", "fired"), 1);
  assert_int_equal(fault_stat(f, "fhir", "remaining"), 0);
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 200); /* count 1 */
  clear_faults(f);
}

static void test_path_matching(void **state) {
  fixture *f = *state;
  /* A plain path is a resource type: its searches and reads. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"status\":503,\"count\":-1}");
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Practitioner/*\",\"status\":500,\"count\":-1}");
  assert_int_equal(fhir_status(f, "/Observation?patient=" WILMA), 503);
  assert_int_equal(fhir_status(f, "/Observation/2310000110000"), 503);
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 200);
  /* A glob matches the whole path: reads only here. */
  assert_int_equal(fhir_status(f, "/Practitioner?_id=4000001"), 200);
  assert_int_equal(fhir_status(f, "/Practitioner/4000001"), 500);
  /* First match wins: a catch-all posted later only gets what is left. */
  set_fault(f, "{\"target\":\"fhir\",\"name\":\"all\",\"status\":502,\"count\":-1}");
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 502);
  assert_int_equal(fhir_status(f, "/Observation?patient=" WILMA), 503);
  json_t *doc = faults_list(f);
  const json_t *list = json_object_get(doc, "faults");
  assert_int_equal(json_array_size(list), 3);
  assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "name")),
                      "fhir:Observation");
  assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "path")),
                      "Observation");
  json_decref(doc);
  assert_int_equal(fault_stat(f, "fhir:Observation", "fired"), 3);
  assert_int_equal(fault_stat(f, "fhir:Practitioner/*", "fired"), 1);
  assert_int_equal(fault_stat(f, "fhir:Practitioner/*", "matched"), 1);
  assert_int_equal(fault_stat(f, "all", "fired"), 1);
  assert_int_equal(fault_stat(f, "all", "remaining"), -1);
  /* Posting the same name replaces the fault in place. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"status\":504}");
  assert_int_equal(fhir_status(f, "/Observation?patient=" WILMA), 504);
  assert_int_equal(fhir_status(f, "/Observation?patient=" WILMA), 502); /* spent: falls through */
  assert_int_equal(fault_stat(f, "fhir:Observation", "fired"), 1);
  /* One fault can be removed by name; the rest stay. */
  assert_int_equal(fx_sim_delete(&f->sim, FAULTS "?name=all"), 200);
  assert_int_equal(fx_sim_delete(&f->sim, FAULTS "?name=all"), 404);
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 200);
  assert_int_equal(fhir_status(f, "/Practitioner/4000001"), 500);
  clear_faults(f);
  assert_int_equal(fhir_status(f, "/Practitioner/4000001"), 200);
  doc = faults_list(f);
  assert_int_equal(json_array_size(json_object_get(doc, "faults")), 0);
  json_decref(doc);
}

/* n requests of Patient/WILMA; bit i of *hits set when request i failed. */
static int ratio_run(fixture *f, int n, uint64_t hits[4]) {
  memset(hits, 0, 4 * sizeof *hits);
  int failed = 0;
  for (int i = 0; i < n; i++) {
    long status = fhir_status(f, "/Patient/" WILMA);
    assert_true(status == 200 || status == 503);
    if (status == 503) {
      failed++;
      hits[i / 64] |= 1ULL << (i % 64);
    }
  }
  return failed;
}

static void test_ratio(void **state) {
  fixture *f = *state;
  uint64_t first[4], again[4], other[4];
  const char *fault = "{\"target\":\"fhir\",\"path\":\"Patient\",\"ratio\":0.3,\"status\":503}";
  set_fault(f, fault); /* with a ratio, count defaults to -1 */
  int n1 = ratio_run(f, 200, first);
  /* Binomial(200, 0.3): mean 60, sd 6.5. The draw is deterministic, so this
   * either always passes or never does. */
  assert_in_range(n1, 40, 80);
  assert_int_equal(fault_stat(f, "fhir:Patient", "matched"), 200);
  assert_int_equal(fault_stat(f, "fhir:Patient", "fired"), n1);
  /* Reproducible: the same fault again gives the same sequence. */
  clear_faults(f);
  set_fault(f, fault);
  assert_int_equal(ratio_run(f, 200, again), n1);
  assert_memory_equal(first, again, sizeof first);
  /* Another seed, another sequence. */
  clear_faults(f);
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"ratio\":0.3,\"seed\":99,"
               "\"status\":503}");
  ratio_run(f, 200, other);
  assert_true(memcmp(first, other, sizeof first) != 0);
  /* count still bounds the total. */
  clear_faults(f);
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"ratio\":0.5,\"count\":5,"
               "\"status\":503}");
  assert_int_equal(ratio_run(f, 100, other), 5);
  assert_int_equal(fault_stat(f, "fhir:Patient", "fired"), 5);
  assert_int_equal(fault_stat(f, "fhir:Patient", "remaining"), 0);
  clear_faults(f);
}

static void test_random_latency(void **state) {
  fixture *f = *state;
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"delay_ms_min\":100,"
               "\"delay_ms_max\":300,\"count\":-1}");
  int64_t lo = INT64_MAX, hi = 0;
  for (int i = 0; i < 6; i++) {
    xfer x;
    fhir(f, "/Patient/" WILMA, NULL, NULL, &x);
    assert_int_equal(x.status, 200);
    assert_true(x.ms >= 100);
    lo = x.ms < lo ? x.ms : lo;
    hi = x.ms > hi ? x.ms : hi;
    xfer_free(&x);
  }
  assert_true(hi < 300 + 2000); /* generous for loaded machines */
  assert_true(hi - lo >= 5);    /* drawn, not fixed */
  /* Other paths are not delayed. */
  xfer x;
  fhir(f, "/Observation?patient=" WILMA, NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  xfer_free(&x);
  assert_int_equal(fault_stat(f, "fhir:Patient", "fired"), 6);
  clear_faults(f);
}

static void sleep_until_wall(int64_t when_ms) {
  int64_t left = when_ms - wall_ms();
  if (left > 0) fx_test_sleep_ms((int)left);
}

static void test_retry_after(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_delete(&f->sim, VIOLATIONS), 200);
  /* Delta-seconds, default status 429. Retrying at once is a violation. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"retry_after\":1}");
  xfer x;
  fhir(f, "/Patient/" WILMA, NULL, NULL, &x);
  assert_int_equal(x.status, 429);
  char *ra = header(&x, "Retry-After");
  assert_string_equal(ra, "1");
  free(ra);
  xfer_free(&x);
  assert_int_equal(retry_stat(f, "pending"), 1);
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 200);
  assert_int_equal(retry_stat(f, "checked"), 1);
  assert_int_equal(retry_stat(f, "violations"), 1);
  assert_int_equal(retry_stat(f, "pending"), 0);
  json_t *doc = fx_sim_get_json(&f->sim, VIOLATIONS);
  const json_t *d = json_array_get(json_object_get(doc, "details"), 0);
  assert_string_equal(json_string_value(json_object_get(d, "request")),
                      "/r4/" TENANT "/Patient/" WILMA);
  assert_true(json_integer_value(json_object_get(d, "early_ms")) > 500);
  assert_int_equal(json_integer_value(json_object_get(doc, "slack_ms")), 50);
  json_decref(doc);

  /* Waiting as told is not a violation; a request to another target does
   * not consume the check. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"retry_after\":1}");
  fhir(f, "/Patient/" WILMA, NULL, NULL, &x);
  int64_t got = mono_ms();
  assert_int_equal(x.status, 429);
  xfer_free(&x);
  assert_int_equal(fhir_status(f, "/Patient/20000001"), 200);
  fx_test_sleep_ms((int)(1000 - (mono_ms() - got)) + 20);
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 200);
  assert_int_equal(retry_stat(f, "checked"), 2);
  assert_int_equal(retry_stat(f, "violations"), 1);

  /* HTTP-date form, at least retry_after seconds ahead. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"status\":503,\"retry_after\":2,"
               "\"retry_after_date\":true}");
  int64_t before = wall_ms();
  fhir(f, "/Patient/" WILMA, NULL, NULL, &x);
  assert_int_equal(x.status, 503);
  ra = header(&x, "Retry-After");
  assert_non_null(ra);
  assert_non_null(strstr(ra, " GMT"));
  time_t when = curl_getdate(ra, NULL);
  free(ra);
  xfer_free(&x);
  assert_true((int64_t)when * 1000 >= before + 2000);
  assert_true((int64_t)when * 1000 <= wall_ms() + 3000);
  sleep_until_wall((int64_t)when * 1000 + 10);
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 200);
  assert_int_equal(retry_stat(f, "checked"), 3);
  assert_int_equal(retry_stat(f, "violations"), 1);

  /* A Retry-After given through "headers" is tracked too, for any target. */
  set_fault(f, "{\"target\":\"token\",\"status\":503,\"headers\":{\"Retry-After\":\"30\"}}");
  char url[512];
  url_for(f, "/tenants/" TENANT "/protocols/oauth2/profiles/smart-v1/token", url, sizeof url);
  xfer_url(f, "POST", url, false, "grant_type=client_credentials", NULL, NULL, &x);
  assert_int_equal(x.status, 503);
  xfer_free(&x);
  xfer_url(f, "POST", url, false, "grant_type=client_credentials", NULL, NULL, &x);
  assert_int_equal(x.status, 400); /* answered normally: a bad token request */
  xfer_free(&x);
  assert_int_equal(retry_stat(f, "checked"), 4);
  assert_int_equal(retry_stat(f, "violations"), 2);
  clear_faults(f);
  assert_int_equal(fx_sim_delete(&f->sim, VIOLATIONS), 200);
  assert_int_equal(retry_stat(f, "violations"), 0);
}

static void test_reset(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_sim_post_json(&f->sim, "/_sim/counters/reset", NULL), 200);
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"reset\":true}");
  xfer x;
  fhir(f, "/Patient/" WILMA, NULL, NULL, &x);
  /* A transport error: no HTTP status at all. */
  assert_true(x.rc == CURLE_RECV_ERROR || x.rc == CURLE_GOT_NOTHING);
  assert_int_equal(x.status, 0);
  xfer_free(&x);
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 200);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "fhir_by_status.reset"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "faults_served.fhir"), 1);

  /* Token endpoint and discovery outages, after a delay (a gateway timing out). */
  set_fault(f, "{\"target\":\"token\",\"reset\":true,\"delay_ms\":100}");
  set_fault(f, "{\"target\":\"discovery\",\"reset\":true}");
  char url[512];
  url_for(f, "/tenants/" TENANT "/protocols/oauth2/profiles/smart-v1/token", url, sizeof url);
  xfer_url(f, "POST", url, false, "grant_type=client_credentials", NULL, NULL, &x);
  assert_true(x.rc == CURLE_RECV_ERROR || x.rc == CURLE_GOT_NOTHING);
  assert_true(x.ms >= 100);
  xfer_free(&x);
  url_for(f, "/r4/" TENANT "/.well-known/smart-configuration", url, sizeof url);
  xfer_url(f, "GET", url, false, NULL, NULL, NULL, &x);
  assert_true(x.rc == CURLE_RECV_ERROR || x.rc == CURLE_GOT_NOTHING);
  xfer_free(&x);
  xfer_url(f, "GET", url, false, NULL, NULL, NULL, &x);
  assert_int_equal(x.rc, CURLE_OK);
  assert_int_equal(x.status, 200);
  xfer_free(&x);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "faults_served.token"), 1);
  assert_int_equal(fx_sim_counter(&f->sim, TENANT, "faults_served.discovery"), 1);
  clear_faults(f);
}

static void low_speed(CURL *h, void *arg) {
  (void)arg;
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1000L); /* bytes/s */
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 2L);     /* for 2 s */
}

/* The thread gets its own copy of the fixture: the main thread may stop
 * (and zero) the simulator while the request is still in flight. */
typedef struct drip_call {
  fixture f;
  xfer x;
} drip_call;

static void short_timeout(CURL *h, void *arg) {
  (void)arg;
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 1500L);
}

static void *drip_main(void *arg) {
  drip_call *c = arg;
  fhir(&c->f, "/Observation?patient=" WILMA, short_timeout, NULL, &c->x);
  return NULL;
}

static void test_drip(void **state) {
  fixture *f = *state;
  xfer normal;
  fhir(f, "/Observation?patient=" WILMA, NULL, NULL, &normal);
  assert_int_equal(normal.status, 200);
  assert_true(normal.len > 4000);

  /* 100 bytes/s trips a client's low-speed limit of 1000 bytes/s. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"drip_bytes_per_s\":100}");
  xfer x;
  fhir(f, "/Observation?patient=" WILMA, low_speed, NULL, &x);
  assert_int_equal(x.rc, CURLE_OPERATION_TIMEDOUT);
  assert_true(x.ms >= 2000);
  assert_int_equal(x.status, 200); /* the headers came at once */
  assert_true(x.len < 1000);
  xfer_free(&x);

  /* A faster drip delivers exactly the normal body, just slowly. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"drip_bytes_per_s\":20000}");
  fhir(f, "/Observation?patient=" WILMA, NULL, NULL, &x);
  assert_int_equal(x.rc, CURLE_OK);
  assert_int_equal(x.len, normal.len);
  assert_memory_equal(x.body, normal.body, normal.len);
  assert_true(x.ms >= (int64_t)(normal.len * 1000 / 20000) - 100);
  xfer_free(&x);

  /* Dripping connections do not occupy the pool's two threads. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"drip_bytes_per_s\":50,"
               "\"count\":3}");
  drip_call calls[3];
  pthread_t threads[3];
  for (int i = 0; i < 3; i++) {
    calls[i] = (drip_call){.f = *f};
    assert_int_equal(pthread_create(&threads[i], NULL, drip_main, &calls[i]), 0);
  }
  fx_test_sleep_ms(300);
  xfer health;
  char hurl[512];
  url_for(f, "/_sim/health", hurl, sizeof hurl);
  xfer_url(f, "GET", hurl, false, NULL, NULL, NULL, &health);
  int64_t health_done = mono_ms();
  assert_int_equal(health.status, 200);
  xfer_free(&health);
  for (int i = 0; i < 3; i++) {
    pthread_join(threads[i], NULL);
    assert_int_equal(calls[i].x.rc, CURLE_OPERATION_TIMEDOUT);
    xfer_free(&calls[i].x);
  }
  assert_true(mono_ms() - health_done >= 500); /* health answered well before they ended */
  xfer_free(&normal);
  clear_faults(f);
}

static void test_truncate_and_malformed(void **state) {
  fixture *f = *state;
  xfer normal, x;
  fhir(f, "/Observation?patient=" WILMA, NULL, NULL, &normal);
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"truncate\":true}");
  fhir(f, "/Observation?patient=" WILMA, NULL, NULL, &x);
  /* A complete HTTP message (no transport error) whose JSON is cut off. */
  assert_int_equal(x.rc, CURLE_OK);
  assert_int_equal(x.status, 200);
  assert_int_equal(x.len, normal.len / 2);
  assert_memory_equal(x.body, normal.body, x.len);
  char *cl = header(&x, "Content-Length");
  assert_int_equal(strtol(cl, NULL, 10), (long)x.len);
  free(cl);
  json_error_t e;
  assert_null(json_loadb(x.body, x.len, 0, &e));
  xfer_free(&x);
  xfer_free(&normal);

  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"malformed\":true}");
  fhir(f, "/Patient/" WILMA, NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  char *ct = header(&x, "Content-Type");
  assert_non_null(strstr(ct, "application/fhir+json"));
  free(ct);
  assert_null(json_loadb(x.body, x.len, 0, &e));
  xfer_free(&x);

  /* The token endpoint and discovery can answer garbage too. */
  set_fault(f, "{\"target\":\"token\",\"malformed\":true}");
  set_fault(f, "{\"target\":\"discovery\",\"malformed\":true,"
               "\"body\":\"{\\\"token_endpoint\\\":\"}");
  char url[512];
  url_for(f, "/tenants/" TENANT "/protocols/oauth2/profiles/smart-v1/token", url, sizeof url);
  xfer_url(f, "POST", url, false, "grant_type=client_credentials", NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  ct = header(&x, "Content-Type");
  assert_non_null(strstr(ct, "application/json"));
  free(ct);
  assert_null(json_loadb(x.body, x.len, 0, &e));
  xfer_free(&x);
  url_for(f, "/r4/" TENANT "/.well-known/smart-configuration", url, sizeof url);
  xfer_url(f, "GET", url, false, NULL, NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  assert_string_equal(x.body, "{\"token_endpoint\":");
  xfer_free(&x);
  clear_faults(f);
}

/* A minimal JSON structure check independent of jansson's depth limit:
 * balanced containers outside strings, nothing after the top-level value.
 * Returns the maximum depth, or -1. */
static long json_depth(const char *s, size_t len) {
  long depth = 0, max = 0;
  bool in_string = false;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (in_string) {
      if (c == '\\') i++;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max) max = depth;
    } else if (c == '}' || c == ']') {
      if (--depth < 0) return -1;
      if (depth == 0 && i + 1 != len) return -1;
    }
  }
  return depth == 0 && !in_string ? max : -1;
}

static void test_nested(void **state) {
  fixture *f = *state;
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"nest_depth\":100000}");
  xfer x;
  fhir(f, "/Observation?patient=" WILMA, NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  assert_int_equal(json_depth(x.body, x.len), 100000);
  /* jansson's default limit (2048) refuses it, as a careful client should. */
  json_error_t e;
  assert_null(json_loadb(x.body, x.len, 0, &e));
  assert_non_null(strstr(e.text, "depth"));
  xfer_free(&x);

  /* Shallow enough, it parses: a valid Bundle nested exactly that deep. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"nest_depth\":100}");
  fhir(f, "/Observation?patient=" WILMA, NULL, NULL, &x);
  json_t *doc = json_loadb(x.body, x.len, 0, &e);
  assert_non_null(doc);
  assert_string_equal(json_string_value(json_object_get(doc, "resourceType")), "Bundle");
  assert_int_equal(json_depth(x.body, x.len), 100);
  json_decref(doc);
  xfer_free(&x);
  clear_faults(f);
}

typedef struct huge_sink {
  pid_t sim;
  uint64_t bytes;
  uint64_t next_sample;
  long max_rss;
  char head[64];
  char tail[2];
} huge_sink;

static size_t on_huge(char *p, size_t size, size_t n, void *ud) {
  huge_sink *s = ud;
  size_t len = size * n;
  for (size_t i = 0; i < len; i++) {
    if (s->bytes + i < sizeof s->head - 1) s->head[s->bytes + i] = p[i];
  }
  if (len >= 2) memcpy(s->tail, p + len - 2, 2);
  else if (len == 1) s->tail[0] = s->tail[1], s->tail[1] = p[0];
  s->bytes += len;
  if (s->bytes >= s->next_sample) {
    long rss = rss_kib(s->sim);
    if (rss > s->max_rss) s->max_rss = rss;
    s->next_sample += 4u << 20;
  }
  return len;
}

static void huge_opts(CURL *h, void *arg) {
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_huge);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, arg);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 120000L);
}

static void test_huge(void **state) {
  fixture *f = *state;
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"huge_bytes\":200000000}");
  long before = rss_kib(f->sim.pid);
  assert_true(before > 0);
  huge_sink s = {.sim = f->sim.pid};
  xfer x;
  fhir(f, "/Observation?patient=" WILMA, huge_opts, &s, &x);
  assert_int_equal(x.rc, CURLE_OK);
  assert_int_equal(x.status, 200);
  char *cl = header(&x, "Content-Length");
  assert_string_equal(cl, "200000000");
  free(cl);
  xfer_free(&x);
  assert_int_equal(s.bytes, 200000000);
  assert_non_null(strstr(s.head, "{\"resourceType\":\"Bundle\""));
  assert_memory_equal(s.tail, "]}", 2);
  /* 200 MB went through; the simulator grew by far less than that. */
  fprintf(stderr, "huge: sim VmRSS %ld KiB before, at most %ld KiB while streaming\n", before,
          s.max_rss);
  assert_true(s.max_rss > 0);
  assert_true(s.max_rss - before < 32 * 1024);
  clear_faults(f);
}

/* The "next" link of a Bundle (new string) or NULL. */
static char *next_link(const char *body) {
  json_t *doc = json_loads(body, 0, NULL);
  char *out = NULL;
  size_t i;
  const json_t *l;
  json_array_foreach(json_object_get(doc, "link"), i, l) {
    if (strcmp(json_string_value(json_object_get(l, "relation")), "next") == 0)
      out = strdup(json_string_value(json_object_get(l, "url")));
  }
  json_decref(doc);
  return out;
}

/* Appends to out every "reference" and "url" string found under v. */
static void collect_refs(json_t *v, const char *key, json_t *out) {
  if (json_is_object(v)) {
    const char *k;
    json_t *m;
    json_object_foreach(v, k, m) collect_refs(m, k, out);
  } else if (json_is_array(v)) {
    size_t i;
    json_t *m;
    json_array_foreach(v, i, m) collect_refs(m, key, out);
  } else if (json_is_string(v) && key && (!strcmp(key, "reference") || !strcmp(key, "url"))) {
    json_array_append_new(out, json_string(json_string_value(v)));
  }
}

static void test_foreign(void **state) {
  fixture *f = *state;
  assert_int_equal(fx_canary_reset(&f->canary), 200);
  const char *search = "/Observation?patient=" WILMA "&_count=5";
  xfer normal, x;
  fhir(f, search, NULL, NULL, &normal);
  char *want = next_link(normal.body);
  assert_non_null(want);
  assert_true(strncmp(want, f->sim.url, strlen(f->sim.url)) == 0);

  /* foreign_next: same path and query, the canary's origin. */
  char fault[512];
  snprintf(fault, sizeof fault,
           "{\"target\":\"fhir\",\"path\":\"Observation\",\"foreign_next\":\"%s\"}", f->canary.url);
  set_fault(f, fault);
  fhir(f, search, NULL, NULL, &x);
  char *got = next_link(x.body);
  char expect[2048];
  snprintf(expect, sizeof expect, "%s%s", f->canary.url, want + strlen(f->sim.url));
  assert_string_equal(got, expect);
  assert_non_null(strstr(x.body, "\"relation\":\"self\",\"url\":\"http://127.0.0.1:"));
  xfer_free(&x);

  /* foreign_references: every reference and attachment URL in the
   * resources is absolute on the canary; fullUrls and links stay. */
  snprintf(fault, sizeof fault,
           "{\"target\":\"fhir\",\"path\":\"DocumentReference\",\"foreign_references\":\"%s\","
           "\"count\":-1}",
           f->canary.url);
  set_fault(f, fault);
  fhir(f, "/DocumentReference?patient=" WILMA, NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  json_t *doc = json_loads(x.body, 0, NULL);
  assert_non_null(doc);
  json_t *refs = json_array();
  collect_refs(json_object_get(doc, "entry"), NULL, refs);
  char prefix[256];
  snprintf(prefix, sizeof prefix, "%s/r4/" TENANT "/", f->canary.url);
  size_t i, practitioners = 0, binaries = 0;
  const json_t *r;
  json_array_foreach(refs, i, r) {
    const char *ref = json_string_value(r);
    if (ref[0] == '#') continue;
    if (strncmp(ref, prefix, strlen(prefix)) != 0) fprintf(stderr, "not foreign: %s\n", ref);
    assert_true(strncmp(ref, prefix, strlen(prefix)) == 0);
    practitioners += strstr(ref, "/Practitioner/") != NULL;
    binaries += strstr(ref, "/Binary/") != NULL;
  }
  assert_true(practitioners > 0);
  assert_true(binaries > 0);
  const json_t *e0 = json_array_get(json_object_get(doc, "entry"), 0);
  assert_true(strncmp(json_string_value(json_object_get(e0, "fullUrl")), f->sim.url,
                      strlen(f->sim.url)) == 0);
  char read[256];
  snprintf(read, sizeof read, "/DocumentReference/%s",
           json_string_value(json_object_get(json_object_get(e0, "resource"), "id")));
  json_decref(refs);
  json_decref(doc);
  xfer_free(&x);

  /* A read gets the same treatment. */
  fhir(f, read, NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  assert_non_null(strstr(x.body, prefix));
  xfer_free(&x);

  /* The simulator never contacts the canary itself. */
  assert_int_equal(fx_canary_count(&f->canary, "requests"), 0);

  /* A client that follows the link is caught, and so is its token. */
  xfer_url(f, "GET", got, true, NULL, NULL, NULL, &x);
  assert_int_equal(x.status, 404);
  xfer_free(&x);
  xfer_url(f, "GET", prefix, false, NULL, NULL, NULL, &x);
  xfer_free(&x);
  json_t *seen = fx_canary_requests(&f->canary);
  assert_non_null(seen);
  assert_int_equal(json_integer_value(json_object_get(seen, "requests")), 2);
  assert_int_equal(json_integer_value(json_object_get(seen, "with_authorization")), 1);
  assert_string_equal(json_string_value(json_array_get(json_object_get(seen, "paths"), 0)),
                      "/r4/" TENANT "/Observation");
  const json_t *log0 = json_array_get(json_object_get(seen, "log"), 0);
  assert_string_equal(json_string_value(json_object_get(log0, "method")), "GET");
  assert_true(json_is_true(json_object_get(log0, "authorization")));
  char *text = json_dumps(seen, JSON_COMPACT);
  assert_null(strstr(text, f->token)); /* the header's value is never kept */
  free(text);
  json_decref(seen);
  assert_int_equal(fx_canary_reset(&f->canary), 200);
  assert_int_equal(fx_canary_count(&f->canary, "requests"), 0);
  free(want);
  free(got);
  xfer_free(&normal);
  clear_faults(f);
}

static void test_canary_ok(void **state) {
  fixture *f = *state;
  fx_canary ok;
  const char *args[] = {"--ok", NULL};
  assert_int_equal(fx_canary_start(&ok, args), 0);
  char url[256];
  snprintf(url, sizeof url, "%s/r4/x/Practitioner/4000001", ok.url);
  xfer x;
  xfer_url(f, "GET", url, true, NULL, NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  json_t *doc = json_loads(x.body, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(doc, "resourceType")), "Practitioner");
  assert_string_equal(json_string_value(json_object_get(doc, "id")), "4000001");
  json_decref(doc);
  xfer_free(&x);
  /* POST bodies are read and dropped; the control path is not counted. */
  snprintf(url, sizeof url, "%s/token", ok.url);
  xfer_url(f, "POST", url, false, "grant_type=client_credentials", NULL, NULL, &x);
  assert_int_equal(x.status, 200);
  xfer_free(&x);
  assert_int_equal(fx_canary_count(&ok, "requests"), 2);
  assert_int_equal(fx_canary_count(&ok, "with_authorization"), 1);
  assert_int_equal(fx_canary_stop_status(&ok), 0);
}

/* With no fault armed the path is the normal one: a fault that is spent or
 * cleared leaves nothing behind. */
static void test_disarmed(void **state) {
  fixture *f = *state;
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Patient\",\"status\":503}");
  assert_int_equal(fhir_status(f, "/Patient/" WILMA), 503);
  for (int i = 0; i < 5; i++) assert_int_equal(fhir_status(f, "/Patient/" WILMA), 200);
  json_t *doc = faults_list(f);
  assert_int_equal(json_array_size(json_object_get(doc, "faults")), 1); /* listed, spent */
  json_decref(doc);
  clear_faults(f);
}

/* Last: both servers must exit 0 (and, under ASan, without leaks). */
static void test_clean_shutdown(void **state) {
  fixture *f = *state;
  /* A drip still in progress must not hold up the shutdown. */
  set_fault(f, "{\"target\":\"fhir\",\"path\":\"Observation\",\"drip_bytes_per_s\":10}");
  drip_call call = {.f = *f};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, drip_main, &call), 0);
  fx_test_sleep_ms(300);
  assert_int_equal(fx_sim_stop_status(&f->sim), 0);
  pthread_join(t, NULL);
  assert_int_not_equal(call.x.rc, CURLE_OK);
  xfer_free(&call.x);
  assert_int_equal(fx_canary_stop_status(&f->canary), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_validation),
      cmocka_unit_test(test_path_matching),
      cmocka_unit_test(test_ratio),
      cmocka_unit_test(test_random_latency),
      cmocka_unit_test(test_retry_after),
      cmocka_unit_test(test_reset),
      cmocka_unit_test(test_drip),
      cmocka_unit_test(test_truncate_and_malformed),
      cmocka_unit_test(test_nested),
      cmocka_unit_test(test_huge),
      cmocka_unit_test(test_foreign),
      cmocka_unit_test(test_canary_ok),
      cmocka_unit_test(test_disarmed),
      cmocka_unit_test(test_clean_shutdown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
