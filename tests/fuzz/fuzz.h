/* Shared by the fuzz targets (docs/testing.md, "Fuzzing"). A target checks
 * properties of what the code under test returns and aborts, naming the
 * property, when one does not hold: libFuzzer then saves the input as a
 * crash, and the replay driver (driver.c) fails. */
#ifndef FX_FUZZ_H
#define FX_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/err.h"
#include "worker/model/profile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_CHECK(cond, ...)                                                \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "fuzz property violated (%s:%d): ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, "\n");                                               \
      abort();                                                             \
    }                                                                      \
  } while (0)

/* The input as a NUL-terminated string (cut at its first NUL). Free it. */
static inline char *fz_str(const uint8_t *data, size_t size) {
  char *s = malloc(size + 1);
  if (!s) abort();
  memcpy(s, data, size);
  s[size] = '\0';
  return s;
}

/* 1 if s is valid UTF-8 (RFC 3629: no overlong forms, surrogates or code
 * points past U+10FFFF), written here independently of common/strutil.c. */
static inline int fz_utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned c = *p;
    size_t n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 9;
    if (n == 9) return 0;
    unsigned cp = n == 0 ? c : n == 1 ? (c & 0x1F) : n == 2 ? (c & 0x0F) : (c & 0x07);
    for (size_t i = 1; i <= n; i++) {
      if ((p[i] & 0xC0) != 0x80) return 0;
      cp = cp << 6 | (p[i] & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    p += n + 1;
  }
  return 1;
}

/* A configuration with three tenants on one host (t1: Cerner, follows
 * references; t2: Cerner, three resource types; t3: the generic profile),
 * and its profiles; loaded once per process. */
static inline const fx_profile_set *fz_profiles(void) {
  static fx_config *cfg;
  static fx_profile_set ps;
  if (!cfg) {
    fx_err err = {0};
    if (fx_config_parse(
            "{\"tenants\":[{\"id\":\"t1\",\"fhir_base\":\"https://x/r4/t1\",\"client_id\":\"c\","
            "\"follow_references\":true},"
            "{\"id\":\"t2\",\"fhir_base\":\"https://x/r4/t2\",\"client_id\":\"c\","
            "\"resources\":[\"Patient\",\"Condition\",\"Practitioner\"]},"
            "{\"id\":\"t3\",\"fhir_base\":\"https://x/r4/t3\",\"client_id\":\"c\","
            "\"profile\":\"generic\"}],"
            "\"keys\":[{\"path\":\"k.pem\"}]}",
            "/", &cfg, &err) != 0 ||
        fx_profile_set_load(cfg, &ps, &err) != 0) {
      fprintf(stderr, "fuzz: the fixed configuration does not load: %s\n", err.msg);
      abort();
    }
  }
  return &ps;
}

#endif
