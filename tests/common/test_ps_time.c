/* Tests for ps_time: the clock, stop-aware sleeps, the retry backoff. */
#include <errno.h>
#include <stdatomic.h>
#include <unistd.h>

#include "ps_error.h"
#include "ps_test.h"

#include "ps_time.h"

START_TEST(test_sleep_and_clock) {
  int64_t t0 = ps_now_ms();
  double s0 = ps_now_s();
  ck_assert_int_eq(ps_sleep_ms(120, NULL), 0);
  int64_t waited = ps_now_ms() - t0;
  ck_assert_msg(waited >= 120 && waited < 5000, "slept %lld ms", (long long)waited);
  ck_assert(ps_now_s() - s0 >= 0.12);
  /* a set stop flag ends the sleep before it starts */
  volatile sig_atomic_t stop = 1;
  t0 = ps_now_ms();
  ck_assert_int_eq(ps_sleep_ms(10000, &stop), PS_ESHUTDOWN);
  ck_assert(ps_now_ms() - t0 < 1000);
  stop = 0;
  ck_assert_int_eq(ps_sleep_ms(1, &stop), 0);
}
END_TEST

/* A condition from ps_cond_init_mono waits out a ps_deadline_ns deadline
 * (a condition on the realtime clock would read it as long past). */
START_TEST(test_mono_deadline) {
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv;
  ck_assert_int_eq(ps_cond_init_mono(&cv), 0);
  int64_t t0 = ps_now_ms();
  struct timespec dl = ps_deadline_ns(100u * 1000000u);
  pthread_mutex_lock(&mu);
  int rc = 0;
  while (rc != ETIMEDOUT) rc = pthread_cond_timedwait(&cv, &mu, &dl);
  pthread_mutex_unlock(&mu);
  int64_t waited = ps_now_ms() - t0;
  ck_assert_msg(waited >= 99 && waited < 5000, "waited %lld ms for a 100 ms deadline",
                (long long)waited);
  pthread_cond_destroy(&cv);
}
END_TEST

/* A ticker calls its function every period, with the time since its
 * start, until stopped (and never after); a zeroed one stops fine. */
static atomic_int tick_calls;
static int64_t tick_last_ms;
static void tick(void *arg, int64_t ms) {
  (void)arg;
  tick_last_ms = ms;
  atomic_fetch_add(&tick_calls, 1);
}

START_TEST(test_ticker) {
  ps_ticker t;
  ck_assert_int_eq(ps_ticker_start(&t, 20, tick, NULL), 0);
  usleep(150000);
  ps_ticker_stop(&t);
  int n = atomic_load(&tick_calls);
  ck_assert_msg(n >= 2 && n <= 8, "%d calls in 150 ms of a 20 ms ticker", n);
  ck_assert_int_ge(tick_last_ms, 20 * (int64_t)n);
  usleep(60000);
  ck_assert_int_eq(atomic_load(&tick_calls), n);
  ps_ticker z = {0};
  ps_ticker_stop(&z);
}
END_TEST

START_TEST(test_backoff) {
  uint32_t d = PS_BACKOFF_FIRST_MS, seen[8];
  for (int i = 0; i < 8; i++) seen[i] = d = ps_backoff_next(d);
  ck_assert_uint_eq(seen[0], 2 * PS_BACKOFF_FIRST_MS);
  ck_assert_uint_eq(seen[1], 4 * PS_BACKOFF_FIRST_MS);
  ck_assert_uint_eq(seen[7], PS_BACKOFF_MAX_MS); /* capped, never past it */
  for (int i = 1; i < 8; i++) ck_assert(seen[i] >= seen[i - 1] && seen[i] <= PS_BACKOFF_MAX_MS);
  ck_assert_uint_eq(ps_backoff_next(PS_BACKOFF_MAX_MS), PS_BACKOFF_MAX_MS);
  ck_assert_uint_eq(ps_backoff_next(UINT32_MAX), PS_BACKOFF_MAX_MS);
  /* the nap: the delay, cut to the budget left, 0 once it is spent (a
   * loop with a 3000 ms budget tried last at 1.5 s, the next 2 s step
   * looking past it) */
  int64_t now = ps_now_ms();
  ck_assert_uint_eq(ps_backoff_nap(now, 100, 3000), 100);
  uint32_t nap = ps_backoff_nap(now - 1500, 2000, 3000);
  ck_assert(nap > 1000 && nap <= 1500);
  ck_assert_uint_eq(ps_backoff_nap(now - 3000, 100, 3000), 0);
  ck_assert_uint_eq(ps_backoff_nap(now - 10000, 2000, 3000), 0);
}
END_TEST

Suite *ps_time_suite(void) {
  Suite *s = suite_create("ps_time");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_sleep_and_clock);
  tcase_add_test(tc, test_backoff);
  tcase_add_test(tc, test_mono_deadline);
  tcase_add_test(tc, test_ticker);
  suite_add_tcase(s, tc);
  return s;
}
