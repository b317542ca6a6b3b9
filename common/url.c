#include "common/url.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
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

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes s[0..n) into out (room for n bytes); the decoded length. */
static size_t decode(const char *s, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int h, l;
    if (s[i] == '%' && i + 2 < n && (h = hexval((unsigned char)s[i + 1])) >= 0 &&
        (l = hexval((unsigned char)s[i + 2])) >= 0) {
      out[o++] = (char)(h * 16 + l);
      i += 2;
    } else {
      out[o++] = s[i];
    }
  }
  return o;
}

/* Whether s[0..n) is a dot segment: "." or "..", also with path parameters
 * ("..;x", "..;"), which Tomcat, Jetty and Spring drop before they
 * normalize, so "..;" climbs like "..". */
static int dot_segment(const char *s, size_t n) {
  const char *semi = memchr(s, ';', n);
  size_t k = semi ? (size_t)(semi - s) : n;
  return (k == 1 && s[0] == '.') || (k == 2 && s[0] == '.' && s[1] == '.');
}

/* The problem with one path segment (seg[0..n), no raw '/'), or NULL. The
 * segment is decoded until it no longer changes, so "%252e" (a proxy that
 * decodes once, then a server that decodes again) counts as "." too. */
static const char *segment_problem(const char *seg, size_t n) {
  if (memchr(seg, '\\', n)) return "a backslash";
  if (dot_segment(seg, n)) return "a dot segment ('.' or '..', with or without ';parameters')";
  if (!memchr(seg, '%', n)) return NULL;
  char *buf = malloc(n);
  if (!buf) return "a path segment that could not be checked (out of memory)";
  memcpy(buf, seg, n);
  const char *why = NULL;
  for (;;) {
    size_t m = decode(buf, n, buf); /* in place: the output never passes the input */
    if (m == n) break;              /* nothing left to decode */
    n = m;
    if (memchr(buf, '\\', n)) why = "a percent-encoded backslash ('%5c')";
    else if (memchr(buf, '/', n)) why = "a percent-encoded '/' ('%2f')";
    else if (memchr(buf, '\0', n)) why = "a percent-encoded NUL ('%00')";
    else if (dot_segment(buf, n))
      why = "a percent-encoded dot segment ('%2e', '.%2e', '..%3b', ...)";
    if (why) break;
  }
  free(buf);
  return why;
}

const char *fx_url_problem(const char *url) {
  if (!url || !*url) return "it is empty";
  const char *sep = strstr(url, "://");
  if (!sep || sep == url || strcspn(url, ":/?#") != (size_t)(sep - url))
    return "it is not an absolute URL (scheme://host/path)";
  const char *auth = sep + 3;
  size_t alen = strcspn(auth, "/?#");
  if (memchr(auth, '\\', alen)) return "its host part holds a backslash";
  const char *at = NULL;
  for (const char *q = auth; q < auth + alen; q++)
    if (*q == '@') at = q;
  const char *host = at ? at + 1 : auth;
  if (host == auth + alen || *host == ':') return "it is not an absolute URL: it names no host";
  /* The path, segment by segment, up to the query or fragment. */
  const char *p = auth + alen, *end = p + strcspn(p, "?#");
  while (p < end) {
    if (*p == '/') p++;
    size_t n = strcspn(p, "/?#");
    if (p + n > end) n = (size_t)(end - p);
    const char *why = segment_problem(p, n);
    if (why) return why;
    p += n;
  }
  return NULL;
}

void fx_url_problem_note(const char *url, char *out, size_t size) {
  const char *why = fx_url_problem(url);
  if (!size) return;
  out[0] = '\0';
  if (!why) return;
  if (strncmp(why, "it ", 3) == 0) /* not absolute, no host */
    snprintf(out, size, "; %s", why);
  else
    snprintf(out, size, "; its path holds %s, which a server or proxy may read as another path",
             why);
}

int fx_url_within(const char *url, const char *base) {
  if (!url || !base || fx_url_problem(url) || fx_url_problem(base)) return 0;
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
  return s->own_export && !fx_url_problem(url) && fx_url_same_origin(url, s->base);
}

static void redact(const char *url, char *out, size_t size) {
  out[0] = '\0';
  size_t n = strcspn(url, "?#"), used = 0;
  const char *from = url;
  /* Userinfo ("user:secret@") never leaves: the last '@' of the authority
   * ends it, as curl and RFC 3986 read it. */
  const char *sep = strstr(url, "://");
  if (sep && (size_t)(sep - url) < n) {
    const char *auth = sep + 3, *at = NULL;
    for (const char *q = auth; *q && !strchr("/?#", *q); q++)
      if (*q == '@') at = q;
    if (at) {
      used = (size_t)snprintf(out, size, "%.*s", (int)(auth - url), url);
      if (used >= size) return;
      from = at + 1;
    }
  }
  used += (size_t)snprintf(out + used, size - used, "%.*s", (int)(url + n - from), from);
  if (url[n] != '?' || used >= size) return;
  /* Keep parameter names, drop values: "?patient=&_count=". */
  const char *q = url + n + 1;
  char sep_c = '?';
  while (*q && *q != '#' && used + 2 < size) {
    size_t name = strcspn(q, "=&#");
    used += (size_t)snprintf(out + used, size - used, "%c%.*s=", sep_c, (int)name, q);
    sep_c = '&';
    q += strcspn(q, "&#");
    if (*q == '&') q++;
  }
}

void fx_url_redact(const char *url, char *out, size_t size) {
  if (!size) return;
  char *raw = malloc(size);
  if (!raw) {
    out[0] = '\0';
    return;
  }
  redact(url, raw, size);
  /* What a server wrote goes into headers, records and logs: ASCII only.
   * Bytes outside printable ASCII are percent-encoded, as a URL writes them
   * (never '?', which would read as a query); an escape that does not fit
   * whole is left out. */
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
    if (*p > 0x20 && *p < 0x7f) {
      if (o + 1 >= size) break;
      out[o++] = (char)*p;
    } else {
      if (o + 3 >= size) break;
      out[o++] = '%';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
    }
  }
  out[o] = '\0';
  free(raw);
}
