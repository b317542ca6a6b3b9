#include "worker/jobs/fetch.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define RETRY_BASE_MS 500
#define RETRY_CAP_MS 30000

/* Where a fetch is: one list at a time. */
enum { AT_NONE, AT_READY, AT_HELD, AT_RETRY, AT_SENT, AT_ENDING };

/* Fetches the governor holds back, per (tenant, path): they go again, in
 * order, once wake_ms has passed. */
typedef struct held {
  char *tenant, *path;
  fx_fetch *head, *tail;
  uint64_t wake_ms;
} held;

struct fx_fetcher {
  fx_loop *lp;
  const fx_services *sv;
  fx_fetch_source source;
  void *ctx;
  uv_timer_t timer;   /* the earliest of: a held queue's wake, a retry, the source's */
  uv_timer_t soon;    /* ends (canceled fetches) run from here, never inline */
  fx_fetch *ready_head, *ready_tail;
  fx_fetch *retry;    /* sorted by due_ms */
  fx_fetch *ending;   /* to be told CANCELED */
  held *held;
  size_t n_held, cap_held;
  uint64_t source_wake_ms; /* the source said work may go then; 0 = none */
  size_t inflight;
  int draining, closing, pumping;
  int handles_open; /* closing: handles whose close callback has not run */
};

static void on_timer(uv_timer_t *t);

/* ---- lists ------------------------------------------------------------------ */

static void push_ready(fx_fetcher *fr, fx_fetch *f, int first) {
  f->where = AT_READY;
  if (first) {
    f->next = fr->ready_head;
    fr->ready_head = f;
    if (!fr->ready_tail) fr->ready_tail = f;
  } else {
    f->next = NULL;
    if (fr->ready_tail) fr->ready_tail->next = f;
    else fr->ready_head = f;
    fr->ready_tail = f;
  }
}

static fx_fetch *pop_ready(fx_fetcher *fr) {
  fx_fetch *f = fr->ready_head;
  if (!f) return NULL;
  fr->ready_head = f->next;
  if (!fr->ready_head) fr->ready_tail = NULL;
  f->next = NULL;
  f->where = AT_NONE;
  return f;
}

static held *held_for(fx_fetcher *fr, const char *tenant, const char *path) {
  for (size_t i = 0; i < fr->n_held; i++)
    if (strcmp(fr->held[i].tenant, tenant) == 0 && strcmp(fr->held[i].path, path) == 0)
      return &fr->held[i];
  if (fr->n_held == fr->cap_held) {
    size_t cap = fr->cap_held ? fr->cap_held * 2 : 8;
    held *grown = realloc(fr->held, cap * sizeof *grown);
    if (!grown) return NULL;
    fr->held = grown;
    fr->cap_held = cap;
  }
  held *h = &fr->held[fr->n_held];
  memset(h, 0, sizeof *h);
  if (!(h->tenant = strdup(tenant)) || !(h->path = strdup(path))) {
    free(h->tenant);
    return NULL;
  }
  fr->n_held++;
  return h;
}

static void held_remove(fx_fetcher *fr, size_t i) {
  free(fr->held[i].tenant);
  free(fr->held[i].path);
  fr->held[i] = fr->held[--fr->n_held];
}

static void insert_retry(fx_fetcher *fr, fx_fetch *f) {
  f->where = AT_RETRY;
  fx_fetch **pp = &fr->retry;
  while (*pp && (*pp)->due_ms <= f->due_ms) pp = &(*pp)->next;
  f->next = *pp;
  *pp = f;
}

/* One timer for every wait: the earliest wake of a held queue, a retry, or
 * work the source passed over. */
static void arm(fx_fetcher *fr, uint64_t now) {
  if (fr->closing) return;
  uint64_t when = UINT64_MAX;
  for (size_t i = 0; i < fr->n_held; i++)
    if (fr->held[i].wake_ms < when) when = fr->held[i].wake_ms;
  if (fr->retry && fr->retry->due_ms < when) when = fr->retry->due_ms;
  if (fr->source_wake_ms && fr->source_wake_ms < when) when = fr->source_wake_ms;
  if (when == UINT64_MAX) {
    uv_timer_stop(&fr->timer);
    return;
  }
  uv_timer_start(&fr->timer, on_timer, when > now ? when - now : 0, 0);
}

/* ---- ending ----------------------------------------------------------------- */

static void on_soon(uv_timer_t *t) {
  fx_fetcher *fr = t->data;
  while (fr->ending) {
    fx_fetch *f = fr->ending;
    fr->ending = f->next;
    f->next = NULL;
    f->where = AT_NONE;
    fx_fetch_result r = {.end = FX_FETCH_CANCELED};
    f->done(f, &r);
  }
}

static void end_later(fx_fetcher *fr, fx_fetch *f) {
  f->where = AT_ENDING;
  f->next = fr->ending;
  fr->ending = f;
  if (!uv_is_active((uv_handle_t *)&fr->soon)) uv_timer_start(&fr->soon, on_soon, 0, 0);
}

static void end_now(fx_fetch *f, const fx_fetch_result *r) {
  f->where = AT_NONE;
  f->next = NULL;
  f->done(f, r);
}

/* ---- sending ---------------------------------------------------------------- */

/* How the answer counts for the tenant's governor. */
static fx_gov_outcome outcome_of(const fx_http_response *res, const fx_auth_error *ae) {
  if (ae || res->result == FX_ECANCELED) return FX_GOV_CANCELED;
  if (res->result) return res->result == FX_ETOOLARGE ? FX_GOV_OK : FX_GOV_TRANSIENT;
  if (res->status == 429) return FX_GOV_THROTTLED;
  if (res->status == 408 || res->status >= 500) return FX_GOV_TRANSIENT;
  return FX_GOV_OK;
}

/* Exponential backoff with full jitter, never earlier than Retry-After. */
static uint64_t retry_delay(int attempts, long after_ms) {
  double cap = RETRY_BASE_MS * pow(2.0, attempts - 1);
  if (cap > RETRY_CAP_MS) cap = RETRY_CAP_MS;
  uint64_t d = (uint64_t)(cap * ((double)rand() / RAND_MAX));
  if (after_ms >= 0 && (uint64_t)after_ms > d) d = (uint64_t)after_ms;
  return d;
}

static void on_answer(fx_http_response *res, const fx_auth_error *ae, void *arg) {
  fx_fetch *f = arg;
  fx_fetcher *fr = f->fetcher;
  const fx_services *sv = fr->sv;
  uint64_t now = fx_now_ms();
  fr->inflight--;
  atomic_fetch_sub(&sv->metrics->requests_in_flight, 1);
  if (f->tm && !ae && res->result != FX_ECANCELED) fx_metrics_request(f->tm, res);
  long after = ae ? -1 : fx_metrics_retry_after(sv->metrics, res, 0);
  if (f->governed) {
    fx_governor_done(sv->gov, f->tenant, f->path, outcome_of(res, ae), after, now);
    f->governed = 0;
  }
  int transient;
  if (ae) {
    fx_errclass_of_auth(ae, &transient);
    after = ae->retry_after_ms > 0 ? ae->retry_after_ms : -1; /* the token's own backoff */
  } else if (res->result) {
    transient = res->result != FX_ETOOLARGE && !(fr->closing && res->result == FX_ECANCELED);
  } else {
    transient = fx_errclass_transient(fx_errclass_of_status(res->status));
  }
  fx_fetch_result r = {.end = FX_FETCH_ANSWER, .res = ae ? NULL : res, .ae = ae};
  if (transient) {
    uint64_t delay = retry_delay(f->attempts, after);
    if (fr->draining || fr->closing) {
      r.end = FX_FETCH_GAVE_UP;
      r.draining = 1;
    } else if (f->attempts > sv->app->cfg->worker.retries || now + delay > f->deadline_ms) {
      r.end = FX_FETCH_GAVE_UP;
    } else {
      atomic_fetch_add(&sv->metrics->http_retries, 1);
      f->due_ms = now + delay;
      insert_retry(fr, f);
      arm(fr, now);
      fx_fetcher_pump(fr);
      return;
    }
  }
  end_now(f, &r);
  fx_fetcher_pump(fr);
}

static void refuse(fx_fetch *f, fx_errclass cls, const char *msg) {
  fx_fetch_result r = {.end = FX_FETCH_REFUSED, .cls = cls, .message = msg};
  end_now(f, &r);
}

static void send_fetch(fx_fetcher *fr, fx_fetch *f) {
  const fx_services *sv = fr->sv;
  fx_fhir_request req = {.tenant = f->tenant, .scope = f->scope, .url = f->url,
                         .accept = f->accept};
  fx_err err = {0};
  fr->inflight++;
  f->attempts++;
  f->where = AT_SENT;
  atomic_fetch_add(&sv->metrics->http_requests, 1);
  atomic_fetch_add(&sv->metrics->requests_in_flight, 1);
  if (fx_fhir_get(fr->lp, sv->app->tokens, &req, on_answer, f, &err) == 0) return;
  fr->inflight--;
  atomic_fetch_sub(&sv->metrics->requests_in_flight, 1);
  if (f->governed) {
    fx_governor_done(sv->gov, f->tenant, f->path, FX_GOV_CANCELED, -1, fx_now_ms());
    f->governed = 0;
  }
  refuse(f, err.code == FX_EPERM ? FX_EC_FOREIGN_REFERENCE : FX_EC_INVALID_JOB, err.msg);
}

/* The governor's word on f: go (1), or f now waits or has ended (0). */
static int admit(fx_fetcher *fr, fx_fetch *f, uint64_t now) {
  const fx_services *sv = fr->sv;
  const char *why = NULL;
  long wait = fx_governor_acquire(sv->gov, f->tenant, f->path, now, &why);
  if (wait <= 0) {
    f->governed = 1;
    return 1;
  }
  atomic_fetch_add(&sv->metrics->governor_waits, 1);
  if (now + (uint64_t)wait > f->deadline_ms) {
    char msg[300];
    snprintf(msg, sizeof msg,
             "the tenant asked to wait %ld s (%s), past this job's deadline "
             "(worker.job_deadline_s); replay the dead letter once the tenant is healthy",
             wait / 1000, why);
    int throttled = strcmp(why, "retry-after") == 0 || strcmp(why, "rate") == 0;
    refuse(f, throttled ? FX_EC_THROTTLED : FX_EC_TRANSIENT, msg);
    return 0;
  }
  held *h = held_for(fr, f->tenant, f->path);
  if (!h) { /* out of memory: a short retry instead */
    f->due_ms = now + (uint64_t)wait;
    insert_retry(fr, f);
    return 0;
  }
  f->where = AT_HELD;
  f->next = NULL;
  if (h->tail) h->tail->next = f;
  else h->head = f;
  h->tail = f;
  if (!h->wake_ms || now + (uint64_t)wait < h->wake_ms) h->wake_ms = now + (uint64_t)wait;
  return 0;
}

void fx_fetcher_pump(fx_fetcher *fr) {
  if (fr->pumping || fr->closing) return; /* a done callback pumping again: the loop below goes on */
  fr->pumping = 1;
  size_t max = (size_t)fr->sv->app->cfg->worker.max_requests_in_flight;
  uint64_t now = fx_now_ms();
  long blocked = 0;
  fr->source_wake_ms = 0;
  while (fr->inflight < max && !fr->closing) {
    fx_fetch *f = pop_ready(fr);
    if (!f) {
      long b = 0;
      if (!(f = fr->source(fr->ctx, now, &b))) {
        blocked = b;
        break;
      }
      f->fetcher = fr;
      f->attempts = 0;
    }
    if (admit(fr, f, now)) send_fetch(fr, f);
  }
  if (blocked > 0) fr->source_wake_ms = now + (uint64_t)blocked;
  fr->pumping = 0;
  arm(fr, now);
}

static void on_timer(uv_timer_t *t) {
  fx_fetcher *fr = t->data;
  uint64_t now = fx_now_ms();
  /* Due retries first, then what the governor held: both are older work
   * than anything the source has not handed out yet. Kept in order. */
  fx_fetch *due = NULL, **tail = &due;
  while (fr->retry && fr->retry->due_ms <= now) {
    fx_fetch *f = fr->retry;
    fr->retry = f->next;
    f->next = NULL;
    *tail = f;
    tail = &f->next;
  }
  for (size_t i = 0; i < fr->n_held;) {
    held *h = &fr->held[i];
    if (h->wake_ms > now) {
      i++;
      continue;
    }
    *tail = h->head;
    while (*tail) tail = &(*tail)->next;
    held_remove(fr, i);
  }
  /* Splice in front of the ready queue. */
  if (due) {
    fx_fetch *last = due;
    for (fx_fetch *f = due; f; f = f->next) {
      f->where = AT_READY;
      last = f;
    }
    last->next = fr->ready_head;
    fr->ready_head = due;
    if (!fr->ready_tail) fr->ready_tail = last;
  }
  fx_fetcher_pump(fr);
}

/* ---- the rest --------------------------------------------------------------- */

int fx_fetcher_new(fx_loop *lp, const fx_services *sv, fx_fetch_source source, void *ctx,
                   fx_fetcher **out, fx_err *err) {
  fx_fetcher *fr = calloc(1, sizeof *fr);
  if (!fr) return fx_err_set(err, FX_ENOMEM, "out of memory");
  fr->lp = lp;
  fr->sv = sv;
  fr->source = source;
  fr->ctx = ctx;
  uv_timer_init(lp->uv, &fr->timer);
  fr->timer.data = fr;
  uv_timer_init(lp->uv, &fr->soon);
  fr->soon.data = fr;
  *out = fr;
  return 0;
}

void fx_fetcher_submit(fx_fetcher *fr, fx_fetch *f, int first) {
  f->fetcher = fr;
  push_ready(fr, f, first);
}

void fx_fetcher_drop(fx_fetcher *fr, int (*match)(const fx_fetch *f, void *arg), void *arg) {
  for (fx_fetch **pp = &fr->ready_head; *pp;) {
    fx_fetch *f = *pp;
    if (!match(f, arg)) {
      pp = &f->next;
      continue;
    }
    *pp = f->next;
    if (fr->ready_tail == f) fr->ready_tail = NULL;
    end_later(fr, f);
  }
  if (!fr->ready_tail) /* find the tail again after removals */
    for (fx_fetch *f = fr->ready_head; f; f = f->next) fr->ready_tail = f;
  for (fx_fetch **pp = &fr->retry; *pp;) {
    fx_fetch *f = *pp;
    if (!match(f, arg)) {
      pp = &f->next;
      continue;
    }
    *pp = f->next;
    end_later(fr, f);
  }
  for (size_t i = 0; i < fr->n_held;) {
    held *h = &fr->held[i];
    fx_fetch *keep = NULL, **kt = &keep;
    for (fx_fetch *f = h->head, *next; f; f = next) {
      next = f->next;
      if (match(f, arg)) {
        end_later(fr, f);
      } else {
        f->next = NULL;
        *kt = f;
        kt = &f->next;
      }
    }
    h->head = keep;
    h->tail = NULL;
    for (fx_fetch *f = keep; f; f = f->next) h->tail = f;
    if (!h->head) held_remove(fr, i);
    else i++;
  }
  arm(fr, fx_now_ms());
}

static int owned_by(const fx_fetch *f, void *owner) { return f->owner == owner; }

void fx_fetcher_drop_owner(fx_fetcher *fr, const void *owner) {
  fx_fetcher_drop(fr, owned_by, (void *)(uintptr_t)owner);
}

void fx_fetcher_draining(fx_fetcher *fr) {
  fr->draining = 1;
  /* Retries that were waiting would now give up: let them, from the loop. */
  uint64_t now = fx_now_ms();
  for (fx_fetch *f = fr->retry; f; f = f->next) f->due_ms = now;
  arm(fr, now);
}

size_t fx_fetcher_inflight(const fx_fetcher *fr) { return fr->inflight; }

static void on_closed(uv_handle_t *h) {
  fx_fetcher *fr = h->data;
  if (--fr->handles_open > 0) return; /* the last of the two frees */
  for (size_t i = 0; i < fr->n_held; i++) {
    free(fr->held[i].tenant);
    free(fr->held[i].path);
  }
  free(fr->held);
  free(fr);
}

void fx_fetcher_close(fx_fetcher *fr) {
  if (!fr) return;
  if (fr->inflight)
    fx_log(FX_LOG_ERROR, "the fetcher closes with requests in flight (a bug)", NULL);
  fr->closing = 1;
  /* Everything not in flight ends canceled, now (the loop is ending). */
  fx_fetch *all = NULL;
  for (fx_fetch *f; (f = pop_ready(fr));) {
    f->next = all;
    all = f;
  }
  while (fr->retry) {
    fx_fetch *f = fr->retry;
    fr->retry = f->next;
    f->next = all;
    all = f;
  }
  for (size_t i = 0; i < fr->n_held; i++)
    for (fx_fetch *f = fr->held[i].head, *next; f; f = next) {
      next = f->next;
      f->next = all;
      all = f;
    }
  for (size_t i = 0; i < fr->n_held; i++) fr->held[i].head = fr->held[i].tail = NULL;
  while (fr->ending) {
    fx_fetch *f = fr->ending;
    fr->ending = f->next;
    f->next = all;
    all = f;
  }
  while (all) {
    fx_fetch *f = all;
    all = f->next;
    fx_fetch_result r = {.end = FX_FETCH_CANCELED};
    end_now(f, &r);
  }
  uv_timer_stop(&fr->timer);
  uv_timer_stop(&fr->soon);
  fr->handles_open = 2;
  uv_close((uv_handle_t *)&fr->timer, on_closed);
  uv_close((uv_handle_t *)&fr->soon, on_closed);
}
