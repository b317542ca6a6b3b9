#include "common/url.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

typedef struct parts {
  char *scheme, *host, *port, *path;
} parts;

static int split(const char *url, parts *p) {
  memset(p, 0, sizeof *p);
  CURLU *u = curl_url();
  if (!u) return -1;
  int ok = curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_SCHEME, &p->scheme, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_HOST, &p->host, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_PORT, &p->port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_PATH, &p->path, 0) == CURLUE_OK;
  curl_url_cleanup(u);
  return ok ? 0 : -1;
}

static void parts_free(parts *p) {
  curl_free(p->scheme);
  curl_free(p->host);
  curl_free(p->port);
  curl_free(p->path);
}

int fx_url_within(const char *url, const char *base) {
  parts a, b;
  int ra = split(url, &a), rb = split(base, &b);
  int ok = 0;
  if (ra == 0 && rb == 0 && strcasecmp(a.scheme, b.scheme) == 0 &&
      strcasecmp(a.host, b.host) == 0 && strcmp(a.port, b.port) == 0) {
    size_t bl = strlen(b.path);
    while (bl > 0 && b.path[bl - 1] == '/') bl--;
    /* curl normalizes "/a/../b", so a path cannot climb out of the base. */
    ok = strncmp(a.path, b.path, bl) == 0 && (a.path[bl] == '\0' || a.path[bl] == '/');
  }
  parts_free(&a);
  parts_free(&b);
  return ok;
}

void fx_url_redirect_note(long status, const char *location, char *out, size_t size) {
  if (size) out[0] = '\0';
  if (status < 300 || status > 399 || !size) return;
  char shown[512] = "";
  if (location) fx_url_redact(location, shown, sizeof shown);
  snprintf(out, size,
           "a redirect%s%s, not followed (fhirx never follows redirects, so a token or client "
           "assertion goes only to the URL it was meant for)",
           shown[0] ? " to " : "", shown);
}

int fx_url_same_origin(const char *a, const char *b) {
  parts pa, pb;
  int ra = split(a, &pa), rb = split(b, &pb);
  int ok = ra == 0 && rb == 0 && strcasecmp(pa.scheme, pb.scheme) == 0 &&
           strcasecmp(pa.host, pb.host) == 0 && strcmp(pa.port, pb.port) == 0;
  parts_free(&pa);
  parts_free(&pb);
  return ok;
}

int fx_url_may_carry_token(const char *url, const fx_token_scope *s) {
  if (!url || !s || !s->base) return 0;
  if (fx_url_within(url, s->base)) return 1;
  for (size_t i = 0; i < s->n_prefixes; i++)
    if (s->prefixes[i] && fx_url_within(url, s->prefixes[i])) return 1;
  return s->own_export && fx_url_same_origin(url, s->base);
}

void fx_url_redact(const char *url, char *out, size_t size) {
  size_t n = strcspn(url, "?#");
  size_t used = (size_t)snprintf(out, size, "%.*s", (int)n, url);
  if (url[n] != '?' || used >= size) return;
  /* Keep parameter names, drop values: "?patient=&_count=". */
  const char *q = url + n + 1;
  char sep = '?';
  while (*q && *q != '#' && used + 2 < size) {
    size_t name = strcspn(q, "=&#");
    used += (size_t)snprintf(out + used, size - used, "%c%.*s=", sep, (int)name, q);
    sep = '&';
    q += strcspn(q, "&#");
    if (*q == '&') q++;
  }
}
