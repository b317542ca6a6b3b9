#include "tests/sim/util.h"

#include "common/b64.h"

#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool buf_reserve(sim_buf *b, size_t extra) {
  if (b->oom) return false;
  if (b->len + extra + 1 <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p) {
    b->oom = true;
    return false;
  }
  b->data = p;
  b->cap = cap;
  return true;
}

void sim_buf_append(sim_buf *b, const char *s, size_t n) {
  if (!buf_reserve(b, n)) return;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void sim_buf_puts(sim_buf *b, const char *s) { sim_buf_append(b, s, strlen(s)); }

void sim_buf_printf(sim_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || !buf_reserve(b, (size_t)n)) return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void sim_buf_json_str(sim_buf *b, const char *s) {
  sim_buf_append(b, "\"", 1);
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    /* Copy the run of characters that need no escaping in one go: resources
     * are written through here string by string. */
    const unsigned char *run = p;
    while (*p >= 0x20 && *p != '"' && *p != '\\') p++;
    if (p > run) sim_buf_append(b, (const char *)run, (size_t)(p - run));
    if (!*p) break;
    char esc[8];
    switch (*p) {
    case '"': sim_buf_append(b, "\\\"", 2); break;
    case '\\': sim_buf_append(b, "\\\\", 2); break;
    case '\n': sim_buf_append(b, "\\n", 2); break;
    case '\r': sim_buf_append(b, "\\r", 2); break;
    case '\t': sim_buf_append(b, "\\t", 2); break;
    default:
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      sim_buf_puts(b, esc);
    }
    p++;
  }
  sim_buf_append(b, "\"", 1);
}

void sim_buf_url_encode(sim_buf *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    unsigned char c = *p;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
        c == '-' || c == '.' || c == '_' || c == '~') {
      sim_buf_append(b, (const char *)p, 1);
    } else {
      char e[3] = {'%', hex[c >> 4], hex[c & 15]};
      sim_buf_append(b, e, 3);
    }
  }
}

char *sim_buf_steal(sim_buf *b, size_t *len) {
  if (!b->oom && !b->data && buf_reserve(b, 0)) b->data[0] = '\0';
  char *out = b->oom ? NULL : b->data;
  if (len) *len = out ? b->len : 0;
  if (!out) free(b->data);
  *b = (sim_buf){0};
  return out;
}

void sim_buf_free(sim_buf *b) {
  free(b->data);
  *b = (sim_buf){0};
}

int sim_strv_push(sim_strv *sv, const char *s) {
  char *copy = strdup(s);
  char **v = copy ? realloc(sv->v, (sv->n + 1) * sizeof *v) : NULL;
  if (!v) {
    free(copy);
    return -1;
  }
  v[sv->n++] = copy;
  sv->v = v;
  return 0;
}

bool sim_strv_contains(const sim_strv *sv, const char *s) {
  for (size_t i = 0; i < sv->n; i++)
    if (strcmp(sv->v[i], s) == 0) return true;
  return false;
}

int sim_strv_copy(sim_strv *dst, const sim_strv *src) {
  *dst = (sim_strv){0};
  for (size_t i = 0; i < src->n; i++) {
    if (sim_strv_push(dst, src->v[i]) != 0) {
      sim_strv_free(dst);
      return -1;
    }
  }
  return 0;
}

void sim_strv_free(sim_strv *sv) {
  for (size_t i = 0; i < sv->n; i++) free(sv->v[i]);
  free(sv->v);
  *sv = (sim_strv){0};
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool sim_form_unescape(char *s) {
  char *w = s;
  for (const char *r = s; *r; r++) {
    if (*r == '+') {
      *w++ = ' ';
    } else if (*r == '%') {
      int hi = hexval(r[1]), lo = hi < 0 ? -1 : hexval(r[2]);
      if (lo < 0 || (hi == 0 && lo == 0)) return false;
      *w++ = (char)(hi * 16 + lo);
      r += 2;
    } else {
      *w++ = *r;
    }
  }
  *w = '\0';
  return true;
}

void sim_uuid4(char out[37]) {
  unsigned char u[16];
  if (RAND_bytes(u, sizeof u) != 1) memset(u, 0x5a, sizeof u); /* never in practice */
  u[6] = (unsigned char)((u[6] & 0x0f) | 0x40);
  u[8] = (unsigned char)((u[8] & 0x3f) | 0x80);
  snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
           u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
           u[15]);
}

char *sim_random_b64url(size_t n) {
  unsigned char raw[64];
  if (n > sizeof raw || RAND_bytes(raw, (int)n) != 1) return NULL;
  return fx_b64url_encode_alloc(raw, n);
}

int64_t sim_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec;
}

int64_t sim_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sim_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sim_mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static const char *url_scheme = "http";

void sim_set_scheme(const char *scheme) { url_scheme = scheme; }

const char *sim_scheme(void) { return url_scheme; }

char *sim_strdup(const char *s) { return s ? strdup(s) : NULL; }

void sim_utf8_trim(char *s) {
  size_t len = strlen(s);
  /* Find the start of the last sequence (at most 4 bytes back). */
  size_t i = len;
  while (i > 0 && len - i < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--;
  if (i == 0) return;
  unsigned char lead = (unsigned char)s[i - 1];
  size_t need = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 0;
  if (need == 0 || len - (i - 1) < need) s[i - 1] = '\0';
}
