/* Where a token may go and what a URL shows (common/url.c), and reference
 * parsing (worker/model/resources.c fx_ref_parse, refs.c). The first input
 * byte picks a tenant base (and, for one value, takes the base from the
 * input: "base\nurl"), the second a redaction size; the rest is a URL or a
 * reference. Properties:
 *  - a URL accepted for a tenant's token has the base's origin and, decoded
 *    once as a server or proxy would, a path under the base's path with no
 *    ".." segment (split at '/' and '\'); with own_export, the base's origin;
 *  - redacted output is a NUL-terminated string within its size, with no
 *    fragment, no userinfo (no '@' in its authority) and no query values
 *    (each '=' ends a parameter);
 *  - fx_ref_parse: a local reference gives "Type/id" with a known type and an
 *    id that obeys the id rule, an absolute one is under the base; a foreign
 *    one is not; a key never passes its buffer;
 *  - fx_refs_consider: a reference followed by its exact URL may carry the
 *    tenant's token. */
#include <curl/curl.h>
#include <strings.h>

#include "common/url.h"
#include "tests/fuzz/fuzz.h"
#include "worker/model/refs.h"
#include "worker/model/resources.h"

static const char *const bases[] = {"https://x/r4/t1", "https://x/r4/t1/",
                                    "https://fhir.example.com:8443/r4/ec2458f2-1e24",
                                    "http://127.0.0.1:9/fhir"};
#define N_BASES (sizeof bases / sizeof bases[0])

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The path of url as curl reads it, percent-decoded once. NULL if curl does
 * not read it. */
static char *decoded_path(const char *url) {
  CURLU *u = curl_url();
  char *path = NULL, *out = NULL;
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK) {
    size_t n = strlen(path), o = 0;
    out = malloc(n + 1);
    if (!out) abort();
    for (size_t i = 0; i < n; i++) {
      int h, l;
      if (path[i] == '%' && i + 2 < n && (h = hexval((unsigned char)path[i + 1])) >= 0 &&
          (l = hexval((unsigned char)path[i + 2])) >= 0) {
        out[o++] = (char)(h * 16 + l);
        i += 2;
      } else {
        out[o++] = path[i];
      }
    }
    out[o] = '\0';
  }
  curl_free(path);
  curl_url_cleanup(u);
  return out;
}

/* 1 if url's path, decoded, is base's path or below it, with no ".." segment. */
static int path_under(const char *url, const char *base) {
  char *p = decoded_path(url), *b = decoded_path(base);
  int ok = p && b;
  if (ok) {
    size_t bl = strlen(b);
    while (bl && b[bl - 1] == '/') bl--;
    ok = strncmp(p, b, bl) == 0 && (p[bl] == '\0' || p[bl] == '/');
    for (const char *s = p; ok && *s;) {
      size_t n = strcspn(s, "/\\");
      if (n == 2 && s[0] == '.' && s[1] == '.') ok = 0;
      s += n;
      if (*s) s++;
    }
  }
  free(p);
  free(b);
  return ok;
}

static void check_redaction(const char *url, size_t size) {
  char *out = malloc(size + 1);
  if (!out) abort();
  out[size] = 'Z'; /* a canary past the given size */
  fx_url_redact(url, out, size);
  FZ_CHECK(out[size] == 'Z', "fx_url_redact wrote past %zu bytes", size);
  FZ_CHECK(memchr(out, '\0', size) != NULL, "fx_url_redact left no NUL within %zu bytes", size);
  FZ_CHECK(!strchr(out, '#'), "redacted \"%s\" keeps a fragment", out);
  const char *sep = strstr(out, "://");
  if (sep && (size_t)(sep - out) < strcspn(out, "?#")) {
    const char *auth = sep + 3;
    size_t alen = strcspn(auth, "/?#");
    FZ_CHECK(!memchr(auth, '@', alen), "redacted \"%s\" keeps userinfo", out);
  }
  const char *q = strchr(out, '?');
  if (q)
    for (const char *e = strchr(q, '='); e; e = strchr(e + 1, '='))
      FZ_CHECK(e[1] == '\0' || e[1] == '&', "redacted \"%s\" keeps a query value", out);
  free(out);
}

static void check_pinning(const char *url, const char *base) {
  fx_token_scope s = {.base = base};
  if (fx_url_may_carry_token(url, &s)) {
    FZ_CHECK(fx_url_same_origin(url, base), "%s may carry %s's token from another origin", url,
             base);
    FZ_CHECK(path_under(url, base), "%s may carry %s's token outside its path", url, base);
  }
  s.own_export = 1;
  if (fx_url_may_carry_token(url, &s))
    FZ_CHECK(fx_url_same_origin(url, base), "%s may carry %s's token (own export) elsewhere", url,
             base);
}

static void check_ref(const char *ref, const char *base, size_t key_size) {
  char key[FX_REF_KEY_SIZE + 8];
  memset(key, 'Z', sizeof key);
  int ti = -1;
  fx_ref_kind k = fx_ref_parse(ref, base, key, key_size, &ti);
  FZ_CHECK(key[key_size] == 'Z' || key_size == sizeof key, "fx_ref_parse wrote past its key");
  int absolute = strstr(ref, "://") != NULL;
  if (k == FX_REF_LOCAL) {
    FZ_CHECK(ti >= 0 && ti < FX_NTYPES, "a local reference has no type: %s", ref);
    size_t tl = strlen(fx_type_names[ti]);
    FZ_CHECK(strncmp(key, fx_type_names[ti], tl) == 0 && key[tl] == '/',
             "key \"%.*s\" does not start with its type %s", (int)key_size, key,
             fx_type_names[ti]);
    FZ_CHECK(fx_fhir_id_ok(key + tl + 1, strlen(key + tl + 1)), "key %s has a bad id", key);
    if (absolute)
      FZ_CHECK(fx_url_within(ref, base), "absolute reference %s is local but not under %s", ref,
               base);
  } else if (k == FX_REF_INVALID) {
    FZ_CHECK(ti >= 0 && ti < FX_NTYPES, "an invalid reference has no type: %s", ref);
  } else if (k == FX_REF_FOREIGN) {
    FZ_CHECK(absolute && !fx_url_within(ref, base), "foreign reference %s is under %s", ref,
             base);
  }
}

static void check_follow(const char *ref, const char *base) {
  const fx_profile *p = fx_profile_for(fz_profiles(), "t1");
  fx_refs r;
  if (!p || fx_refs_init(&r, 10, 10) != 0) abort();
  fx_ref_found f;
  memset(&f, 0, sizeof f);
  for (int exact = 0; exact < 2; exact++) {
    fx_ref_decision d = fx_refs_consider(&r, p, base, NULL, ref, exact ? fx_resource_index("Binary") : -1,
                                         exact, &f);
    if (d == FX_REFD_FOLLOW && f.exact) {
      fx_token_scope s = {.base = base};
      FZ_CHECK(fx_url_may_carry_token(ref, &s), "%s is followed exactly but may not carry %s's token",
               ref, base);
    }
  }
  char key[FX_REF_KEY_SIZE];
  if (fx_refs_url_key(ref, key, sizeof key) == 0) {
    char *slash = strchr(key, '/');
    FZ_CHECK(slash && slash[1], "fx_refs_url_key gave \"%s\", not Type/id", key);
    *slash = '\0';
    FZ_CHECK(fx_resource_type_name_ok(key), "fx_refs_url_key's type \"%s\" is not a type name",
             key);
  }
  fx_refs_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  char *in = fz_str(data + 2, size - 2);
  size_t pick = data[0] % (N_BASES + 1);
  const char *base, *url = in;
  if (pick == N_BASES) { /* "base\nurl": any base, crash-freedom and the pin */
    char *nl = strchr(in, '\n');
    if (!nl) {
      free(in);
      return 0;
    }
    *nl = '\0';
    base = in;
    url = nl + 1;
  } else {
    base = bases[pick];
  }
  check_pinning(url, base);
  check_redaction(url, 1 + data[1] % 96u);
  check_redaction(url, 4096);
  check_ref(url, base, FX_REF_KEY_SIZE);
  if (pick != N_BASES) check_follow(url, base);
  free(in);
  return 0;
}
