#include "common/loop.h"

#include <stdlib.h>


static void drain(fx_loop *lp) {
  /* Take the whole queue under the lock, run it without the lock, so a call
   * may post again (it then lands in the next batch). */
  for (;;) {
    pthread_mutex_lock(&lp->mu);
    fx_post *p = lp->head;
    lp->head = lp->tail = NULL;
    pthread_mutex_unlock(&lp->mu);
    if (!p) return;
    while (p) {
      fx_post *next = p->next;
      /* An embedded item may be queued again by its own fn: read it first. */
      fx_post_fn fn = p->fn;
      void *arg = p->arg;
      if (!p->embedded) free(p);
      fn(arg);
      p = next;
    }
  }
}

static void on_wake(uv_async_t *a) {
  fx_loop *lp = a->data;
  lp->wakeups++;
  drain(lp);
}

int fx_loop_init(fx_loop *lp, uv_loop_t *uv, const fx_http_conf *http_conf, fx_err *err) {
  lp->uv = uv;
  lp->head = lp->tail = NULL;
  lp->closed = 0;
  lp->wakeups = 0;
  int rc = fx_http_new(uv, http_conf, &lp->http, err);
  if (rc) return rc;
  pthread_mutex_init(&lp->mu, NULL);
  uv_async_init(uv, &lp->wake, on_wake);
  lp->wake.data = lp;
  return 0;
}

int fx_loop_post(fx_loop *lp, fx_post_fn fn, void *arg) {
  fx_post *p = malloc(sizeof *p);
  if (!p) return FX_ENOMEM;
  p->next = NULL;
  p->fn = fn;
  p->arg = arg;
  p->embedded = 0;
  pthread_mutex_lock(&lp->mu);
  if (lp->closed) {
    pthread_mutex_unlock(&lp->mu);
    free(p);
    return FX_ECANCELED;
  }
  if (lp->tail) lp->tail->next = p;
  else lp->head = p;
  lp->tail = p;
  pthread_mutex_unlock(&lp->mu);
  uv_async_send(&lp->wake);
  return 0;
}

int fx_loop_post_chain(fx_loop *lp, fx_post *first, fx_post *last) {
  last->next = NULL;
  pthread_mutex_lock(&lp->mu);
  if (lp->closed) {
    pthread_mutex_unlock(&lp->mu);
    return FX_ECANCELED;
  }
  if (lp->tail) lp->tail->next = first;
  else lp->head = first;
  lp->tail = last;
  pthread_mutex_unlock(&lp->mu);
  uv_async_send(&lp->wake);
  return 0;
}

static void on_wake_closed(uv_handle_t *h) {
  fx_loop *lp = h->data;
  drain(lp); /* anything posted between the last wake-up and closed = 1 */
  pthread_mutex_destroy(&lp->mu);
}

void fx_loop_close(fx_loop *lp) {
  drain(lp);
  fx_http_close(lp->http);
  lp->http = NULL;
  pthread_mutex_lock(&lp->mu);
  lp->closed = 1;
  pthread_mutex_unlock(&lp->mu);
  uv_close((uv_handle_t *)&lp->wake, on_wake_closed);
}
