/* The pure parts of bulk exports: the in-memory lifecycles (life.h), the
 * record states, the wait before a poll and the files-done ranges
 * (bulk.h). */
#include "worker/bulk/life.h"

#include <stdio.h>
#include <string.h>

#include "worker/bulk/bulk.h"

static const char *const state_names[FX_BX_NSTATES] = {
    "listed", "waiting", "asking", "downloading", "failing",
    "reporting", "ended", "dropping", "done"};

static const char *const event_names[FX_BX_NEVENTS] = {
    "send", "wait", "manifest", "files_done", "fail", "acked", "not_acked", "drop", "idle"};

const char *fx_bx_state_name(fx_bx_state s) {
  return s >= 0 && s < FX_BX_NSTATES ? state_names[s] : "?";
}

const char *fx_bx_event_name(fx_bx_event ev) {
  return ev >= 0 && ev < FX_BX_NEVENTS ? event_names[ev] : "?";
}

int fx_bx_next(fx_bx_state s, fx_bx_event ev) {
  switch (s) {
  case FX_BX_LISTED:
  case FX_BX_WAITING:
  case FX_BX_ASKING:
  case FX_BX_DOWNLOADING:
    switch (ev) {
    /* A request goes out from a timer, or as the export starts. */
    case FX_BX_SEND: return s == FX_BX_LISTED || s == FX_BX_WAITING ? FX_BX_ASKING : FX_BX_NONE;
    /* A wait follows an answer, or a step that could not start (retried). */
    case FX_BX_WAIT: return s != FX_BX_DOWNLOADING ? FX_BX_WAITING : FX_BX_NONE;
    case FX_BX_MANIFEST: return s == FX_BX_ASKING ? FX_BX_DOWNLOADING : FX_BX_NONE;
    case FX_BX_FILES_DONE: return s == FX_BX_DOWNLOADING ? FX_BX_REPORTING : FX_BX_NONE;
    case FX_BX_FAIL: return FX_BX_FAILING;
    case FX_BX_DROP: return FX_BX_DROPPING;
    default: return FX_BX_NONE;
    }
  case FX_BX_FAILING:
  case FX_BX_REPORTING:
    /* Ending goes in acknowledged steps; a step Kafka refused leaves the
     * export unended (its last progress record stands). */
    if (ev == FX_BX_ACKED) return s == FX_BX_FAILING ? FX_BX_REPORTING : FX_BX_ENDED;
    if (ev == FX_BX_NOT_ACKED) return FX_BX_DROPPING;
    return FX_BX_NONE;
  case FX_BX_ENDED:
  case FX_BX_DROPPING: return ev == FX_BX_IDLE ? FX_BX_DONE : FX_BX_NONE;
  case FX_BX_DONE:
  case FX_BX_NSTATES: break;
  }
  return FX_BX_NONE;
}

int fx_bx_active(fx_bx_state s) {
  return s != FX_BX_LISTED && s != FX_BX_DROPPING && s != FX_BX_DONE && s != FX_BX_NSTATES;
}

int fx_bx_known(fx_bx_state s) { return s >= FX_BX_LISTED && s <= FX_BX_DOWNLOADING; }

static const char *const phase_names[FX_BXF_NPHASES] = {
    "waiting", "receiving", "paused", "draining", "references", "acking", "settled"};

const char *fx_bxf_phase_name(fx_bxf_phase p) {
  return p >= 0 && p < FX_BXF_NPHASES ? phase_names[p] : "?";
}

int fx_bxf_transferring(fx_bxf_phase p) { return p == FX_BXF_RECEIVING || p == FX_BXF_PAUSED; }

int fx_bxf_next(fx_bxf_phase p, fx_bxf_event ev) {
  /* Given up at any point before everything is produced (a transfer is
   * given up once it ended: its completion callback does it). */
  if (ev == FX_BXF_GIVE_UP) return p < FX_BXF_ACKING ? FX_BXF_ACKING : FX_BX_NONE;
  switch (p) {
  case FX_BXF_WAITING: return ev == FX_BXF_SEND ? FX_BXF_RECEIVING : FX_BX_NONE;
  case FX_BXF_RECEIVING:
  case FX_BXF_PAUSED:
    /* A paused transfer can still end (the low-speed abort, a reset). */
    switch (ev) {
    case FX_BXF_SEND: return FX_BXF_RECEIVING; /* a redirect */
    case FX_BXF_PAUSE: return p == FX_BXF_RECEIVING ? FX_BXF_PAUSED : FX_BX_NONE;
    case FX_BXF_RESUME: return p == FX_BXF_PAUSED ? FX_BXF_RECEIVING : FX_BX_NONE;
    case FX_BXF_BODY_END: return FX_BXF_DRAINING;
    case FX_BXF_RETRY: return FX_BXF_WAITING;
    default: return FX_BX_NONE;
    }
  case FX_BXF_DRAINING: return ev == FX_BXF_LINES_DONE ? FX_BXF_REFERENCES : FX_BX_NONE;
  case FX_BXF_REFERENCES: return ev == FX_BXF_REFS_DONE ? FX_BXF_ACKING : FX_BX_NONE;
  case FX_BXF_ACKING: return ev == FX_BXF_SETTLE ? FX_BXF_SETTLED : FX_BX_NONE;
  case FX_BXF_SETTLED:
  case FX_BXF_NPHASES: break;
  }
  return FX_BX_NONE;
}

static const char *const record_names[FX_BXR_COUNT] = {"pending", "exporting", "downloading",
                                                       "completed", "failed"};

const char *fx_bx_record_name(fx_bx_record r) {
  return r >= 0 && r < FX_BXR_COUNT ? record_names[r] : "?";
}

int fx_bx_record_parse(const char *name) {
  for (int i = 0; name && i < FX_BXR_COUNT; i++)
    if (strcmp(record_names[i], name) == 0) return i;
  return FX_BX_NONE;
}

fx_outcome fx_bx_outcome(int failed_export, long long published, long long failed_lines) {
  if (!failed_export && !failed_lines) return FX_OUTCOME_COMPLETED;
  return published ? FX_OUTCOME_PARTIAL : FX_OUTCOME_FAILED;
}

uint64_t fx_bulk_poll_delay(long retry_after_ms, uint64_t prev_ms, uint64_t floor_ms,
                            uint64_t ceiling_ms, uint64_t now_ms, uint64_t deadline_ms) {
  if (now_ms >= deadline_ms) return 0;
  uint64_t d = retry_after_ms >= 0 ? (uint64_t)retry_after_ms : (prev_ms ? prev_ms * 2 : floor_ms);
  if (d < floor_ms) d = floor_ms;
  if (d > ceiling_ms) d = ceiling_ms;
  if (now_ms + d > deadline_ms) d = deadline_ms - now_ms;
  return d;
}

uint64_t fx_bulk_backoff_ms(uint64_t base_ms, int tries, uint64_t ceiling_ms) {
  uint64_t d = base_ms;
  for (int i = 1; i < tries && d < ceiling_ms; i++) d = d > UINT64_MAX / 2 ? UINT64_MAX : d * 2;
  return d > ceiling_ms ? ceiling_ms : d;
}

json_t *fx_bulk_ranges(const unsigned char *done, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < n;) {
    if (!done[i]) {
      i++;
      continue;
    }
    size_t j = i;
    while (j + 1 < n && done[j + 1]) j++;
    json_array_append_new(a, json_pack("[I, I]", (json_int_t)i, (json_int_t)j));
    i = j + 1;
  }
  return a;
}

void fx_bulk_ranges_parse(const json_t *ranges, unsigned char *done, size_t n) {
  size_t k;
  json_t *r;
  json_array_foreach(ranges, k, r) {
    json_t *ja = json_array_get(r, 0), *jz = json_array_get(r, 1);
    if (json_array_size(r) != 2 || !json_is_integer(ja) || !json_is_integer(jz)) continue;
    json_int_t a = json_integer_value(ja), z = json_integer_value(jz);
    if (a < 0) continue;
    for (json_int_t i = a; i <= z && (size_t)i < n; i++) done[i] = 1;
  }
}

size_t fx_bulk_line(const char *buf, size_t avail, int final, size_t *line_len) {
  *line_len = 0;
  const char *nl = memchr(buf, '\n', avail);
  if (!nl && !final) return 0;
  size_t n = nl ? (size_t)(nl - buf) : avail, m = n;
  while (m && (buf[m - 1] == '\r' || buf[m - 1] == ' ' || buf[m - 1] == '\t')) m--;
  *line_len = m;
  return n + (nl ? 1 : 0);
}

int fx_bulk_manifest_check(const json_t *m, size_t *n_out, size_t *n_err, char *msg, size_t size) {
  json_t *out = json_object_get(m, "output");
  json_t *err = json_object_get(m, "error");
  *n_out = *n_err = 0;
  if (!json_is_object(m) || !json_is_array(out) || (err && !json_is_array(err))) {
    snprintf(msg, size,
             "the completed export's manifest is not a Bulk Data manifest (output[] "
             "missing or not an array)");
    return -1;
  }
  size_t no = json_array_size(out), ne = err ? json_array_size(err) : 0;
  for (size_t i = 0; i < no + ne; i++) {
    json_t *it = i < no ? json_array_get(out, i) : json_array_get(err, i - no);
    if (!json_string_value(json_object_get(it, "url")) ||
        !json_string_value(json_object_get(it, "type"))) {
      snprintf(msg, size, "manifest entry %zu has no url or type", i);
      return -1;
    }
  }
  *n_out = no;
  *n_err = ne;
  return 0;
}
