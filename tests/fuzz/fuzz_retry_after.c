/* Retry-After and HTTP-dates (common/http.c fx_http_retry_after_value_ms).
 * Input: 6 bytes of "now" (epoch ms, up to year ~2109), 5 bytes of a point in
 * time, then the header value. Properties:
 *  - the result is -1 (absent or unreadable) or a wait in
 *    [0, FX_RETRY_AFTER_MAX_MS], whatever the value and the clock;
 *  - delay-seconds below FX_RETRY_AFTER_EPOCH_MIN, with optional blanks
 *    around, wait exactly that long (capped);
 *  - the IMF-fixdate of the point in time ("Sun, 06 Nov 1994 08:49:37 GMT")
 *    waits until then: 0 when it has passed, capped. */
#include <time.h>

#include "common/http.h"
#include "tests/fuzz/fuzz.h"

static long long read_be(const uint8_t *p, size_t n) {
  long long v = 0;
  for (size_t i = 0; i < n; i++) v = v << 8 | p[i];
  return v;
}

static long expect_wait(long long ms) {
  if (ms <= 0) return 0;
  return ms > FX_RETRY_AFTER_MAX_MS ? FX_RETRY_AFTER_MAX_MS : (long)ms;
}

static void check_range(long r, const char *value) {
  FZ_CHECK(r == -1 || (r >= 0 && r <= FX_RETRY_AFTER_MAX_MS),
           "Retry-After \"%s\" gave %ld ms", value, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 11) return 0;
  long long now_ms = read_be(data, 6) % 4300000000000LL;
  long long when = read_be(data + 6, 5) % 253402300800LL; /* up to 9999-12-31 */
  char *value = fz_str(data + 11, size - 11);

  long r = fx_http_retry_after_value_ms(value, now_ms);
  check_range(r, value);

  const char *p = value;
  while (*p == ' ' || *p == '\t') p++;
  size_t nd = strspn(p, "0123456789");
  if (nd && nd <= 9 && p[nd + strspn(p + nd, " \t")] == '\0') {
    long long v = atoll(p);
    if (v < FX_RETRY_AFTER_EPOCH_MIN)
      FZ_CHECK(r == expect_wait(v * 1000), "delay-seconds \"%s\" gave %ld ms", value, r);
  }

  time_t t = (time_t)when;
  struct tm tm;
  char date[64];
  if (gmtime_r(&t, &tm) && strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm) > 0) {
    long rd = fx_http_retry_after_value_ms(date, now_ms);
    check_range(rd, date);
    FZ_CHECK(rd == expect_wait(when * 1000 - now_ms), "HTTP-date \"%s\" at now %lld gave %ld ms",
             date, now_ms, rd);
  }
  free(value);
  return 0;
}
