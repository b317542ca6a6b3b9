/* Small helpers shared by the unit tests (header-only, test code only). */
#ifndef FX_UNIT_UTIL_H
#define FX_UNIT_UTIL_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A fresh private directory under $TMPDIR (or /tmp); removed by ut_rmdir. */
static inline char *ut_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  char *path = malloc(512);
  snprintf(path, 512, "%s/fhirx-unit-XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(path)) abort();
  return path;
}

static inline void ut_rmdir(char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  free(dir);
}

static inline char *ut_path(const char *dir, const char *name) {
  char *p = malloc(600);
  snprintf(p, 600, "%s/%s", dir, name);
  return p;
}

static inline void ut_write(const char *path, const char *text, mode_t mode) {
  FILE *f = fopen(path, "w");
  if (!f) abort();
  fputs(text, f);
  fclose(f);
  chmod(path, mode);
}

/* Writes an arbitrary OpenSSL-generated private key (e.g. "RSA", 1024 or
 * "EC", "P-256") as PEM with mode 0600. */
static inline void ut_write_pkey(const char *path, EVP_PKEY *pkey) {
  FILE *f = fopen(path, "w");
  if (!f || !PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL)) abort();
  fclose(f);
  chmod(path, 0600);
  EVP_PKEY_free(pkey);
}

#endif
