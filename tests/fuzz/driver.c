/* Replays fuzz inputs without libFuzzer: each argument is a file or a
 * directory of files (names starting with '.' are skipped), and every file
 * is handed once to the target's LLVMFuzzerTestOneInput. ctest runs each
 * target this way over its seed corpus and its regression inputs
 * (tests/fuzz/corpus/<target>, tests/fuzz/regressions/<target>), in the
 * normal build and under ASan + UBSan. A violated property aborts; an input
 * path that does not exist, or no input at all, fails. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "fuzz replay: cannot open %s\n", path);
    return -1;
  }
  size_t cap = 4096, len = 0;
  uint8_t *buf = malloc(cap);
  size_t n;
  while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
    len += n;
    if (len == cap) {
      uint8_t *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  fclose(f);
  if (!buf) {
    fprintf(stderr, "fuzz replay: out of memory reading %s\n", path);
    return -1;
  }
  /* An exact-size copy, so ASan sees a read past the input's end. */
  uint8_t *exact = malloc(len ? len : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, len);
  free(buf);
  fprintf(stderr, "fuzz replay: %s (%zu bytes)\n", path, len);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  return 0;
}

static int cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay(const char *path, size_t *count) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "fuzz replay: %s does not exist\n", path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    if (replay_file(path) != 0) return -1;
    (*count)++;
    return 0;
  }
  DIR *d = opendir(path);
  if (!d) {
    fprintf(stderr, "fuzz replay: cannot read the directory %s\n", path);
    return -1;
  }
  char **names = NULL;
  size_t n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    char **nn = realloc(names, (n + 1) * sizeof *names);
    if (!nn) break;
    names = nn;
    names[n] = strdup(de->d_name);
    if (names[n]) n++;
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, cmp); /* the same order every run */
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    size_t plen = strlen(path) + strlen(names[i]) + 2;
    char *full = malloc(plen);
    if (full) {
      snprintf(full, plen, "%s/%s", path, names[i]);
      if (replay(full, count) != 0) rc = -1;
      free(full);
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

int main(int argc, char **argv) {
  size_t count = 0;
  int rc = 0;
  for (int i = 1; i < argc; i++)
    if (replay(argv[i], &count) != 0) rc = 1;
  if (count == 0) {
    fprintf(stderr, "fuzz replay: no input given (usage: %s FILE|DIR...)\n", argv[0]);
    return 1;
  }
  fprintf(stderr, "fuzz replay: %zu inputs, every property held\n", count);
  return rc;
}
