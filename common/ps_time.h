/* ps_time: monotonic time, stop-aware sleeps and the retry backoff that
 * the programs share. */
#ifndef PS_TIME_H
#define PS_TIME_H

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>

/* Retries back off from PS_BACKOFF_FIRST_MS, doubling up to
 * PS_BACKOFF_MAX_MS (ps_backoff_next). */
#define PS_BACKOFF_FIRST_MS 100
#define PS_BACKOFF_MAX_MS 2000

/* ps_now_ms returns CLOCK_MONOTONIC in whole milliseconds. */
int64_t ps_now_ms(void);

/* ps_now_s returns CLOCK_MONOTONIC in seconds, with its full resolution. */
double ps_now_s(void);

/* ps_sleep_ms sleeps MS milliseconds in slices of at most 50 ms (signals
 * do not cut it short) and returns 0, or PS_ESHUTDOWN as soon as *STOP
 * (may be NULL) is set, before or during the sleep. */
int ps_sleep_ms(uint32_t ms, volatile sig_atomic_t *stop);

/* ps_cond_init_mono initialises CV for pthread_cond_timedwait deadlines
 * on CLOCK_MONOTONIC (ps_deadline_ns), which a step of the wall clock
 * does not move; returns pthread_cond_init's result. */
int ps_cond_init_mono(pthread_cond_t *cv);

/* ps_deadline_ns returns the CLOCK_MONOTONIC time NS nanoseconds from
 * now, for a condition made by ps_cond_init_mono. */
struct timespec ps_deadline_ns(uint64_t ns);

/* ps_ticker: FN(ARG, MS) called on a thread of its own every PERIOD_MS
 * (MS: the milliseconds since ps_ticker_start) until ps_ticker_stop,
 * which wakes it and joins it; the waits run on CLOCK_MONOTONIC.  A
 * program's periodic side work (psctl bench's heartbeats, psd's watch
 * over a stop) that must go on while its main thread blocks. */
typedef struct ps_ticker {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int quit, started;
  uint32_t period_ms;
  int64_t t0_ms;
  void (*fn)(void *arg, int64_t ms);
  void *arg;
} ps_ticker;

/* ps_ticker_start starts T; 0, or -1 when its thread cannot start (then
 * nothing runs, and ps_ticker_stop does nothing). */
int ps_ticker_start(ps_ticker *t, uint32_t period_ms, void (*fn)(void *arg, int64_t ms),
                    void *arg);

/* ps_ticker_stop ends T's thread (after the call of FN under way, if
 * any) and releases it; a T never started (zeroed) is fine. */
void ps_ticker_stop(ps_ticker *t);

/* ps_backoff_next returns the delay after DELAY: twice it, at most
 * PS_BACKOFF_MAX_MS. */
uint32_t ps_backoff_next(uint32_t delay);

/* ps_backoff_nap returns how long a retry loop begun at START_MS
 * (ps_now_ms) sleeps before its next try: DELAY, cut to what is left of
 * BUDGET_MS; 0 once the budget is spent (give up).  So the last try comes
 * at the budget's end, not a backoff step before it. */
uint32_t ps_backoff_nap(int64_t start_ms, uint32_t delay, uint32_t budget_ms);

#endif
