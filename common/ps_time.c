/* ps_time: see ps_time.h. */
#include "ps_time.h"

#include <errno.h>
#include <time.h>

#include "ps_error.h"

int64_t ps_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double ps_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* stopped: *STOP is set. */
static int stopped(volatile sig_atomic_t *stop) { return stop && *stop; }

int ps_sleep_ms(uint32_t ms, volatile sig_atomic_t *stop) {
  while (ms > 0) {
    if (stopped(stop)) return PS_ESHUTDOWN;
    uint32_t slice = ms < 50 ? ms : 50;
    struct timespec ts = {0, (long)slice * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
      if (stopped(stop)) return PS_ESHUTDOWN;
    ms -= slice;
  }
  return stopped(stop) ? PS_ESHUTDOWN : 0;
}

uint32_t ps_backoff_next(uint32_t delay) {
  return delay > PS_BACKOFF_MAX_MS / 2 ? PS_BACKOFF_MAX_MS : delay * 2;
}

/* ps_cond_init_mono: see ps_time.h. */
int ps_cond_init_mono(pthread_cond_t *cv) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int rc = pthread_cond_init(cv, &ca);
  pthread_condattr_destroy(&ca);
  return rc;
}

/* ps_deadline_ns: see ps_time.h. */
struct timespec ps_deadline_ns(uint64_t ns) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  ns += (uint64_t)t.tv_nsec;
  t.tv_sec += (time_t)(ns / 1000000000u);
  t.tv_nsec = (long)(ns % 1000000000u);
  return t;
}

/* ps_backoff_nap: see ps_time.h. */
uint32_t ps_backoff_nap(int64_t start_ms, uint32_t delay, uint32_t budget_ms) {
  int64_t left = start_ms + (int64_t)budget_ms - ps_now_ms();
  if (left <= 0) return 0;
  return (int64_t)delay < left ? delay : (uint32_t)left;
}

/* ps_ticker_main is T's thread: a full period between calls, whatever
 * wakes the wait early but a stop. */
static void *ps_ticker_main(void *arg) {
  ps_ticker *t = arg;
  pthread_mutex_lock(&t->mu);
  for (;;) {
    struct timespec until = ps_deadline_ns((uint64_t)t->period_ms * 1000000u);
    while (!t->quit && pthread_cond_timedwait(&t->cv, &t->mu, &until) == 0) {
    }
    if (t->quit) break;
    pthread_mutex_unlock(&t->mu);
    t->fn(t->arg, ps_now_ms() - t->t0_ms);
    pthread_mutex_lock(&t->mu);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

int ps_ticker_start(ps_ticker *t, uint32_t period_ms, void (*fn)(void *arg, int64_t ms),
                    void *arg) {
  *t = (ps_ticker){.period_ms = period_ms, .t0_ms = ps_now_ms(), .fn = fn, .arg = arg};
  pthread_mutex_init(&t->mu, NULL);
  ps_cond_init_mono(&t->cv);
  if (pthread_create(&t->thread, NULL, ps_ticker_main, t) == 0) {
    t->started = 1;
    return 0;
  }
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
  return -1;
}

void ps_ticker_stop(ps_ticker *t) {
  if (!t->started) return;
  pthread_mutex_lock(&t->mu);
  t->quit = 1;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
  pthread_join(t->thread, NULL);
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
  t->started = 0;
}
