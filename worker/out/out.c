#include "worker/out/out.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* How long a full queue is left alone before trying again. */
#define RETRY_MS 20

typedef struct waiting {
  struct waiting *next;
  fx_sink *sink;
  char *topic, *key, *value; /* topic and key copied; value taken */
  size_t len;
  rd_kafka_headers_t *headers;
} waiting;

struct fx_out {
  fx_producer *p;
  uv_timer_t timer;
  waiting *head, *tail;
  size_t n;
  void (*on_empty)(void *arg);
  void *arg;
};

int fx_out_new(uv_loop_t *loop, fx_producer *p, void (*on_empty)(void *arg), void *arg,
               fx_out **out, fx_err *err) {
  fx_out *o = calloc(1, sizeof *o);
  if (!o) return fx_err_set(err, FX_ENOMEM, "out of memory");
  o->p = p;
  o->on_empty = on_empty;
  o->arg = arg;
  uv_timer_init(loop, &o->timer);
  o->timer.data = o;
  *out = o;
  return 0;
}

fx_producer *fx_out_producer(const fx_out *o) { return o->p; }

size_t fx_out_waiting(const fx_out *o) { return o->n; }

static void not_produced(fx_sink *s, const char *topic, rd_kafka_resp_err_t err, char *value,
                         rd_kafka_headers_t *headers) {
  fx_log(FX_LOG_ERROR, "cannot produce an output; its job is not committed and runs again",
         "topic", topic, "error", rd_kafka_err2str(err), NULL);
  fx_sink_fail(s);
  free(value);
  if (headers) rd_kafka_headers_destroy(headers);
}

static void on_timer(uv_timer_t *t);

/* Produces what waits, oldest first, until the queue is full again. */
static void flush(fx_out *o) {
  while (o->head) {
    waiting *w = o->head;
    rd_kafka_resp_err_t err = fx_producer_send(o->p, w->sink, w->topic, w->key,
                                               w->key ? strlen(w->key) : 0, w->value, w->len,
                                               w->headers);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      uv_timer_start(&o->timer, on_timer, RETRY_MS, 0);
      return;
    }
    if (err) not_produced(w->sink, w->topic, err, w->value, w->headers);
    o->head = w->next;
    if (!o->head) o->tail = NULL;
    o->n--;
    fx_sink *s = w->sink;
    free(w->topic);
    free(w->key);
    free(w);
    fx_sink_close(s); /* the count it held while waiting; the message holds its own */
  }
  if (o->on_empty) o->on_empty(o->arg);
}

static void on_timer(uv_timer_t *t) { flush(t->data); }

static int keep(fx_out *o, fx_sink *s, const char *topic, const char *key, char *value, size_t len,
                rd_kafka_headers_t *headers) {
  waiting *w = calloc(1, sizeof *w);
  if (!w || !(w->topic = strdup(topic)) || (key && !(w->key = strdup(key)))) {
    if (w) free(w->topic);
    free(w);
    return -1;
  }
  w->sink = s;
  w->value = value;
  w->len = len;
  w->headers = headers;
  fx_sink_add(s);
  if (o->tail) o->tail->next = w;
  else o->head = w;
  o->tail = w;
  o->n++;
  if (!uv_is_active((uv_handle_t *)&o->timer)) uv_timer_start(&o->timer, on_timer, RETRY_MS, 0);
  return 0;
}

void fx_out_emit(fx_out *o, fx_sink *s, const char *topic, const char *key, char *value,
                 size_t len, rd_kafka_headers_t *headers) {
  rd_kafka_resp_err_t err =
      o->head ? RD_KAFKA_RESP_ERR__QUEUE_FULL
              : fx_producer_send(o->p, s, topic, key, key ? strlen(key) : 0, value, len, headers);
  if (!err) return;
  if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && keep(o, s, topic, key, value, len, headers) == 0)
    return;
  not_produced(s, topic, err == RD_KAFKA_RESP_ERR__QUEUE_FULL ? RD_KAFKA_RESP_ERR__FAIL : err,
               value, headers);
}

int fx_out_offer(fx_out *o, fx_sink *s, const char *topic, const char *key, char *value,
                 size_t len, rd_kafka_headers_t *headers) {
  if (o->head) return FX_EAGAIN;
  rd_kafka_resp_err_t err =
      fx_producer_send(o->p, s, topic, key, key ? strlen(key) : 0, value, len, headers);
  if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) return FX_EAGAIN;
  if (err) not_produced(s, topic, err, value, headers);
  return 0;
}

void fx_out_drop(fx_out *o) {
  uv_timer_stop(&o->timer);
  while (o->head) {
    waiting *w = o->head;
    o->head = w->next;
    o->n--;
    fx_sink_fail(w->sink);
    free(w->value);
    if (w->headers) rd_kafka_headers_destroy(w->headers);
    fx_sink *s = w->sink;
    free(w->topic);
    free(w->key);
    free(w);
    fx_sink_close(s);
  }
  o->tail = NULL;
  if (o->on_empty) o->on_empty(o->arg);
}

static void on_closed(uv_handle_t *h) { free(h->data); }

void fx_out_close(fx_out *o) {
  if (!o) return;
  o->on_empty = NULL;
  fx_out_drop(o);
  uv_close((uv_handle_t *)&o->timer, on_closed);
}
