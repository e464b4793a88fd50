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
