#include "tests/sim/jsonw.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Comma (if the container already has a member) and "key": */
static void member(sim_jw *w, const char *key) {
  uint64_t bit = (uint64_t)1 << w->depth;
  if (w->nonempty & bit) sim_buf_append(w->b, ",", 1);
  w->nonempty |= bit;
  if (key) {
    sim_buf_append(w->b, "\"", 1);
    sim_buf_puts(w->b, key);
    sim_buf_append(w->b, "\":", 2);
  }
}

static void open_container(sim_jw *w, const char *key, const char *bracket) {
  member(w, key);
  sim_buf_append(w->b, bracket, 1);
  w->depth++;
  w->nonempty &= ~((uint64_t)1 << w->depth);
}

static void close_container(sim_jw *w, const char *bracket) {
  if (w->depth) w->depth--;
  sim_buf_append(w->b, bracket, 1);
}

void sim_jw_obj(sim_jw *w, const char *key) { open_container(w, key, "{"); }
void sim_jw_end(sim_jw *w) { close_container(w, "}"); }
void sim_jw_arr(sim_jw *w, const char *key) { open_container(w, key, "["); }
void sim_jw_end_arr(sim_jw *w) { close_container(w, "]"); }

void sim_jw_str(sim_jw *w, const char *key, const char *value) {
  member(w, key);
  sim_buf_json_str(w->b, value);
}

void sim_jw_strf(sim_jw *w, const char *key, const char *fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  sim_jw_str(w, key, text);
}

void sim_jw_int(sim_jw *w, const char *key, long long value) {
  member(w, key);
  sim_buf_printf(w->b, "%lld", value);
}

void sim_jw_bool(sim_jw *w, const char *key, bool value) {
  member(w, key);
  sim_buf_puts(w->b, value ? "true" : "false");
}

void sim_jw_raw(sim_jw *w, const char *key, const char *literal) {
  member(w, key);
  sim_buf_puts(w->b, literal);
}
