/* What a fired fault does to an answer (see fault.h for when it fires):
 * replacing answers (status, 429 + Retry-After, malformed, deeply nested,
 * huge), rewrites of the normal answer (truncated, foreign next link,
 * foreign references) and the streaming body that serves huge and slow
 * ("drip") answers without holding them in memory or blocking a thread. */
#include "tests/sim/delay.h"
#include "tests/sim/http.h"

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Reasonable resolution for drip bodies: a suspended connection is woken at
 * most every MIN_TICK_MS, sending what accumulated meanwhile. */
#define MIN_TICK_MS 50

static const char malformed_body[] =
    "<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body>"
    "<h1>Service Unavailable</h1><p>The server is temporarily unable to service your request."
    "</p></body></html>";

static const char *answer_type(sim_target target) {
  return target == SIM_TARGET_FHIR ? SIM_CT_FHIR : SIM_CT_JSON;
}

/* {"resourceType":"Bundle",...,"extension":[[...[]...]]}}]} whose deepest
 * point is exactly depth levels down (the Bundle itself is level 1). */
static char *nested_body(long depth, size_t *len) {
  static const char head[] =
      "{\"resourceType\":\"Bundle\",\"id\":\"nested\",\"type\":\"searchset\",\"entry\":[{"
      "\"resource\":{\"resourceType\":\"Observation\",\"id\":\"nested\",\"status\":\"final\","
      "\"extension\":";
  static const char tail[] = "}}]}";
  size_t k = (size_t)depth - 4; /* Bundle, entry[], entry{}, resource{} */
  size_t n = sizeof head - 1 + 2 * k + sizeof tail - 1;
  char *b = malloc(n + 1);
  if (!b) return NULL;
  char *p = b;
  memcpy(p, head, sizeof head - 1);
  p += sizeof head - 1;
  memset(p, '[', k);
  p += k;
  memset(p, ']', k);
  p += k;
  memcpy(p, tail, sizeof tail);
  *len = n;
  return b;
}

void sim_fault_respond(const sim_fault_effect *e, sim_target target, sim_resp *resp) {
  unsigned status = e->status ? e->status : 200;
  if (e->nest_depth) {
    size_t len = 0;
    char *body = nested_body(e->nest_depth, &len);
    if (!body) status = 500;
    sim_resp_body(resp, status, e->content_type ? e->content_type : answer_type(target), body, len);
  } else if (e->huge_bytes) {
    /* The body is streamed by sim_stream (http.c creates it). */
    sim_resp_body(resp, status, e->content_type ? e->content_type : answer_type(target), NULL, 0);
  } else if (e->malformed) {
    /* A gateway's HTML page under the JSON content type the client expects. */
    char *body = sim_strdup(e->body ? e->body : malformed_body);
    const char *type = e->content_type ? e->content_type : answer_type(target);
    sim_resp_body(resp, body ? status : 500, type, body, body ? strlen(body) : 0);
  } else {
    char *body = sim_strdup(e->body ? e->body : "");
    sim_resp_body(resp, body ? status : 500,
                  e->content_type ? e->content_type : "text/plain;charset=utf-8", body,
                  body ? strlen(body) : 0);
  }
}

/* s as the inside of a JSON string (no quotes), into b. */
static void json_inner(sim_buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\')
      sim_buf_printf(b, "\\%c", c);
    else if (c < 0x20)
      sim_buf_printf(b, "\\u%04x", c);
    else
      sim_buf_append(b, (const char *)&c, 1);
  }
}

void sim_fault_echo(const sim_req *req, sim_resp *resp) {
  if (!resp->body) return;
  const char *auth = sim_req_header(req, "Authorization");
  sim_buf b = {0};
  for (const char *p = resp->body; *p;) {
    if (strncmp(p, "{authorization}", 15) == 0) {
      json_inner(&b, auth ? auth : "", auth ? strlen(auth) : 0);
      p += 15;
    } else if (strncmp(p, "{request_body}", 14) == 0) {
      json_inner(&b, req->body.data ? req->body.data : "", req->body.len);
      p += 14;
    } else if (strncmp(p, "{client_assertion}", 18) == 0) {
      /* The form field, still URL-encoded (a JWT needs no encoding). */
      const char *body = req->body.data ? req->body.data : "", *v = strstr(body, "client_assertion=");
      while (v && v != body && v[-1] != '&') v = strstr(v + 1, "client_assertion=");
      if (v) json_inner(&b, v + 17, strcspn(v + 17, "&"));
      p += 18;
    } else {
      sim_buf_append(&b, p++, 1);
    }
  }
  size_t len;
  char *body = sim_buf_steal(&b, &len);
  if (body) sim_resp_body(resp, resp->status, resp->content_type, body, len);
}

bool sim_fault_add_headers(const sim_fault_effect *e, int64_t now_ms, sim_resp *resp,
                           int64_t *not_before_ms) {
  bool announced = false;
  const char *name;
  const json_t *v;
  json_object_foreach(e->headers, name, v) {
    /* resp borrows the name; the effect lives in the request context, which
     * outlasts send_response (where MHD copies it). */
    sim_resp_header(resp, name, "%s", json_string_value(v));
    if (strcasecmp(name, "Retry-After") == 0)
      announced = sim_retry_after_parse(json_string_value(v), now_ms, not_before_ms);
  }
  if (e->retry_after >= 0) {
    if (e->retry_after_date) {
      /* HTTP-dates have whole seconds: round up so that a client waiting
       * until the date never waits less than retry_after seconds. */
      time_t when = (time_t)((now_ms + e->retry_after * 1000 + 999) / 1000);
      struct tm tm;
      char date[64];
      gmtime_r(&when, &tm);
      strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
      sim_resp_header(resp, "Retry-After", "%s", date);
      *not_before_ms = (int64_t)when * 1000;
    } else {
      sim_resp_header(resp, "Retry-After", "%ld", e->retry_after);
      *not_before_ms = now_ms + (int64_t)e->retry_after * 1000;
    }
    announced = true;
  }
  return announced;
}

/* ---- rewrites of the normal answer ---- */

static const char *find(const char *hay, size_t len, const char *needle) {
  size_t n = strlen(needle);
  for (const char *p = hay; n <= len && p <= hay + len - n; p++) {
    p = memchr(p, needle[0], (size_t)(hay + len - n - p) + 1);
    if (!p) return NULL;
    if (memcmp(p, needle, n) == 0) return p;
  }
  return NULL;
}

static void replace_body(sim_resp *resp, sim_buf *b) {
  size_t len;
  char *body = sim_buf_steal(b, &len);
  if (body) {
    free(resp->body);
    resp->body = body;
    resp->len = len;
  }
}

/* Bundle.link[next].url keeps its path and query but gets `origin`. Our
 * Bundles are written by fhir_search.c, so the link has one exact shape. */
static void rewrite_next(sim_resp *resp, const char *origin) {
  static const char marker[] = "{\"relation\":\"next\",\"url\":\"";
  const char *at = find(resp->body, resp->len, marker);
  if (!at) return;
  const char *url = at + sizeof marker - 1;
  const char *end = resp->body + resp->len;
  const char *scheme = find(url, (size_t)(end - url), "://");
  const char *path = scheme ? memchr(scheme + 3, '/', (size_t)(end - scheme - 3)) : NULL;
  if (!path) return;
  sim_buf b = {0};
  sim_buf_append(&b, resp->body, (size_t)(url - resp->body));
  sim_buf_puts(&b, origin);
  sim_buf_append(&b, path, (size_t)(end - path));
  replace_body(resp, &b);
}

/* next_segment: "{origin}/r4/{tenant}/Observation?..." becomes
 * "{origin}/r4/{tenant}/{segment}/Observation?..." (e.g. "%2e%2e/other": a
 * link that a decoding server would read as another tenant's). */
static void insert_next_segment(sim_resp *resp, const sim_req *req, const char *segment) {
  static const char marker[] = "{\"relation\":\"next\",\"url\":\"";
  const char *at = find(resp->body, resp->len, marker);
  if (!at) return;
  const char *url = at + sizeof marker - 1;
  const char *end = resp->body + resp->len;
  char base[160];
  snprintf(base, sizeof base, "/r4/%s/", req->tenant->id);
  const char *quote = find(url, (size_t)(end - url), "\"");
  const char *p = quote ? find(url, (size_t)(quote - url), base) : NULL;
  if (!p) return;
  p += strlen(base);
  sim_buf b = {0};
  sim_buf_append(&b, resp->body, (size_t)(p - resp->body));
  for (const char *q = segment; *q; q++) /* a JSON string: '\\' is escaped */
    sim_buf_append(&b, *q == '\\' ? "\\\\" : q, *q == '\\' ? 2 : 1);
  sim_buf_puts(&b, "/");
  sim_buf_append(&b, p, (size_t)(end - p));
  replace_body(resp, &b);
}

/* Relative references ("Practitioner/4000001") become absolute on origin,
 * with this tenant's path ("http://canary/r4/{tenant}/Practitioner/..."),
 * and attachment URLs on this server move there too. Bundle links and
 * fullUrls are left alone: only what is inside resources changes. Strings
 * inside JSON values have their quotes escaped, so the patterns below only
 * ever match member names. */
static void rewrite_references(sim_resp *resp, const sim_req *req, const char *origin) {
  static const char ref[] = "\"reference\":\"", url[] = "\"url\":\"";
  char own[300];
  snprintf(own, sizeof own, "%s://%s/", sim_scheme(), req->host);
  const char *p = resp->body, *end = resp->body + resp->len;
  const char *entries = find(p, resp->len, ",\"entry\":[");
  if (strncmp(p, "{\"resourceType\":\"Bundle\"", 24) == 0) {
    if (!entries) return;
    p = entries;
  }
  sim_buf b = {0};
  sim_buf_append(&b, resp->body, (size_t)(p - resp->body));
  size_t ownlen = strlen(own);
  while (p < end) {
    const char *q = memchr(p, '"', (size_t)(end - p));
    if (!q) q = end;
    sim_buf_append(&b, p, (size_t)(q - p));
    p = q;
    if (p == end) break;
    size_t left = (size_t)(end - p);
    if (left > sizeof ref && memcmp(p, ref, sizeof ref - 1) == 0) {
      const char *v = p + sizeof ref - 1;
      size_t vlen = strcspn(v, "\"");
      bool relative = v[0] >= 'A' && v[0] <= 'Z' && memchr(v, '/', vlen) && !memchr(v, ':', vlen);
      sim_buf_append(&b, p, sizeof ref - 1);
      if (relative) sim_buf_printf(&b, "%s/r4/%s/", origin, req->tenant->id);
      p = v;
    } else if (left > sizeof url + ownlen && memcmp(p, url, sizeof url - 1) == 0 &&
               memcmp(p + sizeof url - 1, own, ownlen) == 0) {
      sim_buf_append(&b, p, sizeof url - 1);
      sim_buf_printf(&b, "%s/", origin);
      p += sizeof url - 1 + ownlen;
    } else {
      sim_buf_append(&b, p, 1);
      p++;
    }
  }
  replace_body(resp, &b);
}

void sim_fault_rewrite(const sim_fault_effect *e, const sim_req *req, sim_resp *resp) {
  if (!resp->body) return;
  if (resp->status == 200 && e->foreign_next) rewrite_next(resp, e->foreign_next);
  if (resp->status == 200 && e->next_segment) insert_next_segment(resp, req, e->next_segment);
  if (resp->status == 200 && e->foreign_references)
    rewrite_references(resp, req, e->foreign_references);
  /* Content-Length follows len, so the client gets a complete message
   * whose JSON is cut off: a parse error, not a transport error. */
  if (e->truncate) resp->len /= 2;
}

/* ---- streamed bodies ---- */

/* A huge body: a searchset Bundle of identical-length Observation entries,
 * padded with spaces before the closing "]}" to exactly the asked size.
 * Every byte is a function of its offset, so nothing is buffered. */
static const char huge_prefix[] =
    "{\"resourceType\":\"Bundle\",\"id\":\"huge\",\"type\":\"searchset\",\"entry\":[";
static const char huge_entry[] = /* the first character is the separator */
    ",{\"fullUrl\":\"urn:uuid:00000000-0000-4000-8000-000000000000\",\"resource\":{"
    "\"resourceType\":\"Observation\",\"id\":\"huge-0000000000\",\"status\":\"final\","
    "\"code\":{\"text\":\"Filler observation\"},\"valueString\":\"abcdefghijklmnopqrstuvwxyz\"},"
    "\"search\":{\"mode\":\"match\"}}";
static const char huge_suffix[] = "]}";
#define HUGE_DIGITS 10

struct sim_stream {
  char *body; /* owned buffer, or NULL for the huge generator */
  uint64_t total;
  long bytes_per_s;
  bool started;
  int64_t start_ms;
  uint64_t entries; /* huge: number of entries, then padding */
  uint64_t cached;  /* huge: index of the entry in `entry`, or UINT64_MAX */
  char entry[sizeof huge_entry];
  size_t digit_at[2];
  sim_stream_pacer pacer;
};

static sim_stream *stream_new(uint64_t total, long bytes_per_s) {
  sim_stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->total = total;
  s->bytes_per_s = bytes_per_s;
  s->cached = UINT64_MAX;
  return s;
}

sim_stream *sim_stream_buffer(char *body, size_t len, long bytes_per_s) {
  sim_stream *s = stream_new(len, bytes_per_s);
  if (s) s->body = body;
  else free(body);
  return s;
}

sim_stream *sim_stream_huge(uint64_t total, long bytes_per_s) {
  sim_stream *s = stream_new(total, bytes_per_s);
  if (!s) return NULL;
  uint64_t fixed = sizeof huge_prefix - 1 + sizeof huge_suffix - 1;
  s->entries = total > fixed ? (total - fixed) / (sizeof huge_entry - 1) : 0;
  memcpy(s->entry, huge_entry, sizeof huge_entry);
  /* The two 10-digit counters: the end of the fullUrl uuid and of the id. */
  const char *u = strstr(huge_entry, "0000000000\"");
  const char *i = strstr(huge_entry, "huge-0000000000");
  s->digit_at[0] = (size_t)(u - huge_entry);
  s->digit_at[1] = (size_t)(i - huge_entry) + 5;
  return s;
}

void sim_stream_set_pacer(sim_stream *s, const sim_stream_pacer *p) { s->pacer = *p; }

uint64_t sim_stream_size(const sim_stream *s) { return s->total; }

static const char *huge_entry_text(sim_stream *s, uint64_t index) {
  if (s->cached != index) {
    char digits[HUGE_DIGITS + 1];
    snprintf(digits, sizeof digits, "%010llu", (unsigned long long)index);
    for (int k = 0; k < 2; k++) memcpy(s->entry + s->digit_at[k], digits, HUGE_DIGITS);
    s->entry[0] = index ? ',' : ' ';
    s->cached = index;
  }
  return s->entry;
}

static void huge_fill(sim_stream *s, uint64_t pos, char *buf, size_t n) {
  const uint64_t plen = sizeof huge_prefix - 1, elen = sizeof huge_entry - 1;
  const uint64_t entries_end = plen + s->entries * elen;
  const uint64_t pad_end = s->total - (sizeof huge_suffix - 1);
  while (n > 0) {
    size_t take;
    if (pos < plen) {
      take = (size_t)(plen - pos) < n ? (size_t)(plen - pos) : n;
      memcpy(buf, huge_prefix + pos, take);
    } else if (pos < entries_end) {
      uint64_t index = (pos - plen) / elen, off = (pos - plen) % elen;
      take = (size_t)(elen - off) < n ? (size_t)(elen - off) : n;
      memcpy(buf, huge_entry_text(s, index) + off, take);
    } else if (pos < pad_end) {
      take = (size_t)(pad_end - pos) < n ? (size_t)(pad_end - pos) : n;
      memset(buf, ' ', take);
    } else {
      take = n;
      memcpy(buf, huge_suffix + (pos - pad_end), take);
    }
    buf += take;
    pos += take;
    n -= take;
  }
}

/* How many bytes a paced stream may have sent by now. */
static uint64_t allowed_by_now(sim_stream *s, int64_t now) {
  if (!s->started) {
    s->started = true;
    s->start_ms = now;
  }
  return (uint64_t)(now - s->start_ms) * (uint64_t)s->bytes_per_s / 1000;
}

/* MHD content reader. A paced stream that is ahead of its schedule suspends
 * the connection until the next byte is due and returns 0: MHD calls it
 * again after the resume, and no thread sleeps meanwhile. */
ssize_t sim_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  sim_stream *s = cls;
  if (s->pacer.pending && *s->pacer.pending) {
    *s->pacer.pending = false;
    sim_delay_resumed(s->pacer.delay);
  }
  if (pos >= s->total) return MHD_CONTENT_READER_END_OF_STREAM;
  uint64_t n = s->total - pos < max ? s->total - pos : max;
  if (s->bytes_per_s) {
    int64_t now = sim_mono_ms();
    uint64_t allowed = allowed_by_now(s, now);
    if (allowed <= pos) {
      int64_t due = s->start_ms +
                    (int64_t)(((pos + 1) * 1000 + (uint64_t)s->bytes_per_s - 1) /
                              (uint64_t)s->bytes_per_s);
      long wait = due - now > MIN_TICK_MS ? (long)(due - now) : MIN_TICK_MS;
      *s->pacer.pending = true;
      if (sim_delay_suspend(s->pacer.delay, s->pacer.conn, wait)) return 0;
      /* Shutting down: abort rather than keep the server waiting. */
      *s->pacer.pending = false;
      return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (allowed - pos < n) n = allowed - pos;
  }
  if (s->body)
    memcpy(buf, s->body + pos, (size_t)n);
  else
    huge_fill(s, pos, buf, (size_t)n);
  return (ssize_t)n;
}

void sim_stream_free(void *cls) {
  sim_stream *s = cls;
  if (!s) return;
  free(s->body);
  free(s);
}
