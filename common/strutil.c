#include "common/strutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *fx_memstr(const void *p, size_t n) {
  if (!p) return NULL;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

static int token68(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' || c == '=';
}

static int b64url_or_dot(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '_' || c == '.';
}

static int ieq_prefix(const char *s, const char *word) {
  for (; *word; s++, word++) {
    char a = *s, b = *word;
    if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
    if (a != b) return 0;
  }
  return 1;
}

/* How many bytes of s, starting at a credential, to drop; 0 if none starts
 * here. *keep is how many leading bytes (a parameter name) stay. */
static size_t credential_at(const char *s, size_t *keep) {
  *keep = 0;
  if (ieq_prefix(s, "bearer")) {
    size_t i = 6;
    while (s[i] == ' ' || s[i] == ':' || s[i] == '\t') i++;
    size_t j = i;
    while (token68((unsigned char)s[j])) j++;
    return j >= i + 8 ? j : 0; /* credentials are long; "the bearer of" is prose */
  }
  if (s[0] == 'e' && s[1] == 'y' && s[2] == 'J') {
    size_t j = 0, dots = 0;
    for (; b64url_or_dot((unsigned char)s[j]); j++) dots += s[j] == '.';
    return j >= 10 && dots ? j : 0;
  }
  static const char *const names[] = {"client_assertion", "access_token"};
  for (size_t n = 0; n < sizeof names / sizeof *names; n++) {
    size_t len = strlen(names[n]);
    if (strncmp(s, names[n], len) != 0) continue;
    size_t i = len;
    /* client_assertion=..., "access_token":"...", access_token: ... */
    if (s[i] == '"') i++;
    if (s[i] != '=' && s[i] != ':') return 0;
    i++;
    while (s[i] == ' ' || s[i] == '"') i++;
    size_t j = i;
    while (s[j] && s[j] != '&' && s[j] != '"' && s[j] != ' ' && s[j] != ',') j++;
    if (j == i) return 0;
    *keep = i;
    return j;
  }
  return 0;
}

void fx_redact_secrets(const char *in, char *out, size_t size) {
  static const char mark[] = "[redacted]";
  size_t o = 0;
  if (!size) return;
  const char *p = in ? in : "";
  while (*p && o + 1 < size) {
    size_t keep, drop = credential_at(p, &keep);
    if (!drop) {
      out[o++] = *p++;
      continue;
    }
    for (size_t k = 0; k < keep && o + 1 < size; k++) out[o++] = p[k];
    for (size_t k = 0; mark[k] && o + 1 < size; k++) out[o++] = mark[k];
    p += drop;
  }
  out[o] = '\0';
  if (*p) fx_utf8_trim(out); /* cut: never inside a character */
}

size_t fx_scrub_secret(char *buf, size_t len, size_t cap, const char *secret) {
  static const char mark[] = "[redacted]";
  size_t sl = secret ? strlen(secret) : 0, ml = sizeof mark - 1;
  if (!buf || sl < 8 || sl < ml) return len;
  size_t r = 0, w = 0;
  while (r < len) {
    if (r + sl <= len && memcmp(buf + r, secret, sl) == 0) {
      memcpy(buf + w, mark, ml); /* w <= r and ml <= sl: never overtakes the reader */
      w += ml;
      r += sl;
    } else {
      buf[w++] = buf[r++];
    }
  }
  if (w < cap) buf[w] = '\0';
  return w;
}

int fx_json_depth_ok(const char *p, size_t n, int max) {
  int depth = 0, in_string = 0;
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (in_string) {
      if (c == '\\') i++; /* skip the escaped character */
      else if (c == '"') in_string = 0;
    } else if (c == '"') {
      in_string = 1;
    } else if (c == '{' || c == '[') {
      if (++depth > max) return 0;
    } else if (c == '}' || c == ']') {
      depth--;
    }
  }
  return 1;
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlongs,
 * no surrogates, at most U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *p) {
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  size_t n;
  unsigned lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c == 0xE0) n = 3, lo = 0xA0;
  else if (c >= 0xE1 && c <= 0xEC) n = 3;
  else if (c == 0xED) n = 3, hi = 0x9F;
  else if (c >= 0xEE && c <= 0xEF) n = 3;
  else if (c == 0xF0) n = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3) n = 4;
  else if (c == 0xF4) n = 4, hi = 0x8F;
  else return 0;
  if (p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if (p[i] < 0x80 || p[i] > 0xBF) return 0;
  return n;
}

size_t fx_utf8_fix(char *s) {
  size_t fixed = 0;
  unsigned char *p = (unsigned char *)s;
  while (*p) {
    size_t n = utf8_seq(p);
    if (n) {
      p += n;
    } else {
      *p++ = '?';
      fixed++;
    }
  }
  return fixed;
}

/* How many bytes the sequence led by c wants (1 for ASCII and for a byte that
 * leads nothing). */
static size_t utf8_want(unsigned char c) {
  return c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 1;
}

size_t fx_utf8_cut(const char *s, size_t max) {
  const unsigned char *p = (const unsigned char *)s;
  size_t at = 0;
  if (!s) return 0;
  while (p[at]) {
    size_t n = utf8_seq(p + at);
    if (!n) {
      /* A lead byte whose continuation the string's end cut off is a cut
       * character, not a stray byte: it is left out. */
      size_t want = utf8_want(p[at]), k = 1;
      while (k < want && p[at + k] >= 0x80 && p[at + k] <= 0xBF) k++;
      if (want > 1 && !p[at + k]) break;
      n = 1;
    }
    if (at + n > max) break;
    at += n;
  }
  return at;
}

size_t fx_utf8_copy(char *out, size_t size, const char *src) {
  if (!size) return 0;
  size_t n = src ? fx_utf8_cut(src, size - 1) : 0;
  if (n) memcpy(out, src, n);
  out[n] = '\0';
  fx_utf8_fix(out);
  return n;
}

void fx_utf8_trim(char *s) {
  size_t len = strlen(s), i = len;
  /* The last byte that is not a continuation byte leads the last character. */
  while (i > 0 && len - i < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--;
  if (i == 0) return;
  unsigned char lead = (unsigned char)s[i - 1];
  size_t want = utf8_want(lead);
  if (want > 1 && len - (i - 1) < want) s[i - 1] = '\0';
}

void fx_str_printable(const char *src, char *out, size_t size) {
  size_t o = 0;
  if (!size) return;
  const unsigned char *p = (const unsigned char *)(src ? src : "");
  while (*p) {
    size_t n = utf8_seq(p);
    char esc[16];
    size_t el = 0;
    if (n == 0 || *p < 0x20 || *p == 0x7f || (n == 2 && p[0] == 0xC2 && p[1] < 0xA0)) {
      /* One escape per byte: a C1 control is two. */
      size_t bytes = n ? n : 1;
      for (size_t k = 0; k < bytes; k++)
        el += (size_t)snprintf(esc + el, sizeof esc - el, "\\x%02x", p[k]);
      n = bytes;
    } else if (*p == '\\') {
      memcpy(esc, "\\\\", 2);
      el = 2;
    }
    if (el) {
      if (o + el + 1 > size) break;
      memcpy(out + o, esc, el);
    } else {
      if (o + n + 1 > size) break;
      memcpy(out + o, p, n);
      el = n;
    }
    o += el;
    p += n;
  }
  out[o] = '\0';
}
