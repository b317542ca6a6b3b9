/* ThreadSanitizer and C11 threads (only built with -DFHIRX_TSAN=ON; docs/testing.md).
 *
 * librdkafka uses C11 threads: thrd_create/thrd_join, mtx_* and cnd_*. glibc implements them
 * on its internal pthread functions, not through the exported ones, and neither GCC's nor
 * clang's TSan runtime intercepts the C11 names. So TSan never registers librdkafka's threads
 * (the first allocation on one dereferences a missing thread state: "ThreadSanitizer: SEGV"
 * in rdk:main, in every process that uses librdkafka), and it would not see librdkafka's locks,
 * joins and condition variables either (every callback librdkafka runs under its own lock
 * would look like a race). This library defines those C11 functions on top of the pthread
 * functions TSan does intercept; a library loaded before libc wins over glibc's copies for
 * librdkafka and for us. It is compiled without instrumentation: it only forwards, with the
 * same types and mappings as glibc (thrd_t is a pthread_t, mtx_t a pthread_mutex_t, cnd_t a
 * pthread_cond_t; a thread's int result travels as a pointer, as glibc's thrd_join expects). */
#include <pthread.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <threads.h>

struct fx_c11_start {
  thrd_start_t func;
  void *arg;
};

static void *fx_c11_trampoline(void *p) {
  struct fx_c11_start s = *(struct fx_c11_start *)p;
  free(p);
  return (void *)(intptr_t)s.func(s.arg);
}

int thrd_create(thrd_t *thr, thrd_start_t func, void *arg) {
  struct fx_c11_start *s = malloc(sizeof *s);
  if (!s)
    return thrd_nomem;
  s->func = func;
  s->arg = arg;
  int err = pthread_create(thr, NULL, fx_c11_trampoline, s);
  if (err) {
    free(s);
    return err == ENOMEM ? thrd_nomem : thrd_error;
  }
  return thrd_success;
}

int thrd_join(thrd_t thr, int *res) {
  void *v = NULL;
  if (pthread_join(thr, &v) != 0)
    return thrd_error;
  if (res)
    *res = (int)(intptr_t)v;
  return thrd_success;
}

int thrd_detach(thrd_t thr) {
  return pthread_detach(thr) == 0 ? thrd_success : thrd_error;
}

static int fx_c11_result(int err) {
  switch (err) {
  case 0:
    return thrd_success;
  case ETIMEDOUT:
    return thrd_timedout;
  case EBUSY:
    return thrd_busy;
  case ENOMEM:
    return thrd_nomem;
  default:
    return thrd_error;
  }
}

int mtx_init(mtx_t *m, int type) {
  pthread_mutexattr_t attr;
  if (pthread_mutexattr_init(&attr) != 0)
    return thrd_error;
  pthread_mutexattr_settype(&attr, (type & mtx_recursive) ? PTHREAD_MUTEX_RECURSIVE
                                                          : PTHREAD_MUTEX_DEFAULT);
  int err = pthread_mutex_init((pthread_mutex_t *)m, &attr);
  pthread_mutexattr_destroy(&attr);
  return fx_c11_result(err);
}

int mtx_lock(mtx_t *m) {
  return fx_c11_result(pthread_mutex_lock((pthread_mutex_t *)m));
}

int mtx_trylock(mtx_t *m) {
  return fx_c11_result(pthread_mutex_trylock((pthread_mutex_t *)m));
}

int mtx_timedlock(mtx_t *restrict m, const struct timespec *restrict ts) {
  return fx_c11_result(pthread_mutex_timedlock((pthread_mutex_t *)m, ts));
}

int mtx_unlock(mtx_t *m) {
  return fx_c11_result(pthread_mutex_unlock((pthread_mutex_t *)m));
}

void mtx_destroy(mtx_t *m) {
  pthread_mutex_destroy((pthread_mutex_t *)m);
}

int cnd_init(cnd_t *c) {
  return fx_c11_result(pthread_cond_init((pthread_cond_t *)c, NULL));
}

int cnd_signal(cnd_t *c) {
  return fx_c11_result(pthread_cond_signal((pthread_cond_t *)c));
}

int cnd_broadcast(cnd_t *c) {
  return fx_c11_result(pthread_cond_broadcast((pthread_cond_t *)c));
}

int cnd_wait(cnd_t *c, mtx_t *m) {
  return fx_c11_result(pthread_cond_wait((pthread_cond_t *)c, (pthread_mutex_t *)m));
}

int cnd_timedwait(cnd_t *restrict c, mtx_t *restrict m, const struct timespec *restrict ts) {
  return fx_c11_result(pthread_cond_timedwait((pthread_cond_t *)c, (pthread_mutex_t *)m, ts));
}

void cnd_destroy(cnd_t *c) {
  pthread_cond_destroy((pthread_cond_t *)c);
}

void call_once(once_flag *flag, void (*func)(void)) {
  pthread_once((pthread_once_t *)flag, func);
}
