/* Bulk Data downloads (worker/bulk): the NDJSON splitter of file downloads
 * (fx_bulk_line, as files.c process_lines drives it), the manifest check
 * (fx_bulk_manifest_check), manifest URLs resolved against the status URL
 * (bx_resolve) and the files-done ranges (fx_bulk_ranges). The first byte
 * picks the mode and the download's chunk sizes. Properties:
 *  - the lines of a file are the same however the download is cut into
 *    chunks; a line never holds '\n' nor ends in '\r', ' ' or '\t'; every
 *    byte is taken exactly once;
 *  - a resource line that can be keyed gets the key "tenant/Type/id" whole;
 *  - the manifest check accepts exactly an object whose output (and error,
 *    if present) are arrays of entries with string url and type, and counts
 *    them; a refusal says why;
 *  - a manifest URL resolved against the status URL may carry the token (as
 *    the export's own) only on the status URL's origin;
 *  - files-done flags survive ranges and back, and parsing any ranges never
 *    writes past the flags. */
#include <jansson.h>

#include "common/url.h"
#include "tests/fuzz/fuzz.h"
#include "worker/bulk/bulk.h"
#include "worker/bulk/bulk_int.h"
#include "worker/model/resources.h"

typedef struct lines {
  char **v;
  size_t n;
} lines;

static void add_line(lines *l, const char *s, size_t n) {
  l->v = realloc(l->v, (l->n + 1) * sizeof *l->v);
  if (!l->v) abort();
  l->v[l->n] = malloc(n + 1);
  if (!l->v[l->n]) abort();
  memcpy(l->v[l->n], s, n);
  l->v[l->n++][n] = '\0';
}

static void free_lines(lines *l) {
  for (size_t i = 0; i < l->n; i++) free(l->v[i]);
  free(l->v);
}

/* Takes the lines of buf[0..len) as process_lines does; returns the bytes left. */
static size_t take_lines(const char *buf, size_t len, int final, lines *out) {
  size_t off = 0;
  while (off < len) {
    size_t m = 99999;
    size_t take = fx_bulk_line(buf + off, len - off, final, &m);
    if (!take) {
      FZ_CHECK(!final, "a final buffer kept %zu bytes", len - off);
      FZ_CHECK(!memchr(buf + off, '\n', len - off), "a complete line was not taken");
      break;
    }
    FZ_CHECK(take <= len - off && m <= take, "took %zu (line %zu) of %zu bytes", take, m,
             len - off);
    FZ_CHECK(!memchr(buf + off, '\n', m), "a line holds a newline");
    FZ_CHECK(m == 0 || (buf[off + m - 1] != '\r' && buf[off + m - 1] != ' ' &&
                        buf[off + m - 1] != '\t'),
             "a line ends in a blank");
    if (m) add_line(out, buf + off, m);
    off += take;
  }
  return len - off;
}

static void check_line_key(const char *line) {
  json_t *res = json_loads(line, 0, NULL);
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  char why[200];
  if (json_is_object(res) && !fx_resource_key_problem(type, id, why, sizeof why)) {
    char *key = fx_result_key("t1", type, id);
    FZ_CHECK(key, "fx_result_key failed");
    size_t tl = strlen(type), il = strlen(id);
    FZ_CHECK(strlen(key) == 3 + tl + 1 + il && strncmp(key, "t1/", 3) == 0 &&
                 strncmp(key + 3, type, tl) == 0 && key[3 + tl] == '/' &&
                 strcmp(key + 4 + tl, id) == 0,
             "the key of %s/%s is \"%s\"", type, id, key);
    free(key);
  }
  json_decref(res);
}

static void check_split(const uint8_t *data, size_t size, uint8_t seed) {
  const char *text = (const char *)data;
  lines whole = {0}, chunked = {0};
  take_lines(text, size, 1, &whole);
  /* The same bytes arriving in chunks of 1..(seed % 64 + 1) bytes. */
  char *buf = malloc(size + 1);
  if (!buf) abort();
  size_t have = 0, pos = 0, step = 0;
  while (pos < size) {
    size_t chunk = 1 + (step++ * 7 + seed) % (size_t)(seed % 64 + 1);
    if (chunk > size - pos) chunk = size - pos;
    memcpy(buf + have, text + pos, chunk);
    have += chunk;
    pos += chunk;
    size_t left = take_lines(buf, have, 0, &chunked);
    memmove(buf, buf + have - left, left);
    have = left;
  }
  take_lines(buf, have, 1, &chunked);
  free(buf);
  FZ_CHECK(whole.n == chunked.n, "%zu lines whole, %zu in chunks", whole.n, chunked.n);
  for (size_t i = 0; i < whole.n; i++) {
    FZ_CHECK(strcmp(whole.v[i], chunked.v[i]) == 0, "line %zu differs in chunks", i);
    check_line_key(whole.v[i]);
  }
  free_lines(&whole);
  free_lines(&chunked);
}

static int entries_ok(json_t *a) {
  size_t i;
  json_t *it;
  json_array_foreach(a, i, it) {
    if (!json_is_string(json_object_get(it, "url")) || !json_is_string(json_object_get(it, "type")))
      return 0;
  }
  return 1;
}

static void check_manifest(const uint8_t *data, size_t size, uint8_t seed) {
  json_t *m = json_loadb((const char *)data, size, 0, NULL);
  size_t n_out = 99, n_err = 99;
  char msg[300] = "";
  int rc = fx_bulk_manifest_check(m, &n_out, &n_err, msg, sizeof msg);
  json_t *out = json_object_get(m, "output"), *err = json_object_get(m, "error");
  int valid = json_is_object(m) && json_is_array(out) && (!err || json_is_array(err)) &&
              entries_ok(out) && (!err || entries_ok(err));
  FZ_CHECK((rc == 0) == valid, "the manifest check says %d for a manifest that is %s", rc,
           valid ? "valid" : "not valid");
  if (rc != 0) {
    FZ_CHECK(msg[0] != '\0', "a refused manifest without a reason");
    json_decref(m);
    return;
  }
  FZ_CHECK(n_out == json_array_size(out) && n_err == (err ? json_array_size(err) : 0),
           "the manifest's counts are wrong");
  static const char *const status_urls[] = {"https://x/r4/t1/bulk/status/1",
                                            "https://x:8443/fhir/bulkstatus/abc"};
  const char *status = status_urls[seed & 1];
  fx_token_scope own = {.base = "https://x/r4/t1", .own_export = 1};
  if (seed & 1) own.base = "https://x:8443/fhir/r4/t1";
  for (size_t i = 0; i < n_out + n_err; i++) {
    json_t *it = i < n_out ? json_array_get(out, i) : json_array_get(err, i - n_out);
    char *abs = bx_resolve(status, json_string_value(json_object_get(it, "url")));
    if (abs && fx_url_may_carry_token(abs, &own))
      FZ_CHECK(fx_url_same_origin(abs, status), "manifest file %s may carry the token", abs);
    free(abs);
  }
  /* Ranges: the files-done flags of as many files as the manifest names. */
  size_t n = n_out + n_err;
  unsigned char *done = calloc(n + 1, 1), *again = calloc(n + 1, 1);
  if (!done || !again) abort();
  done[n] = again[n] = 0xAB;
  fx_bulk_ranges_parse(json_object_get(m, "files_done"), done, n);
  FZ_CHECK(done[n] == 0xAB, "ranges parsing wrote past %zu flags", n);
  for (size_t i = 0; i < n; i++) done[i] = (unsigned char)(done[i] ? 1 : (seed >> (i % 8)) & 1);
  json_t *r = fx_bulk_ranges(done, n);
  fx_bulk_ranges_parse(r, again, n);
  FZ_CHECK(memcmp(done, again, n + 1) == 0, "files-done flags changed through ranges");
  json_decref(r);
  free(done);
  free(again);
  json_decref(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  if (data[0] & 1)
    check_manifest(data + 1, size - 1, (uint8_t)(data[0] >> 1));
  else
    check_split(data + 1, size - 1, (uint8_t)(data[0] >> 1));
  return 0;
}
