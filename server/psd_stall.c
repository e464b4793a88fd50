/* psd_stall: a loop's stall watch (see psd_stall.h). */
#include "psd_stall.h"

#include <stdio.h>

#include "ps_log.h"

/* psd_stall_init: see psd_stall.h. */
void psd_stall_init(psd_stall *s, uv_timer_t *timer, uv_timer_cb cb, uint64_t heartbeat_ms,
                    uint64_t lease_ms, const char *who, const char *unread) {
  s->timer = timer;
  s->cb = cb;
  s->due_ms = 0;
  s->heartbeat_ms = heartbeat_ms;
  uint64_t w = heartbeat_ms / 2, q = lease_ms / 4;
  if (q < w) w = q;
  s->watch_ms = w < 100 ? 100 : w;
  snprintf(s->who, sizeof s->who, "%s", who);
  s->unread = unread;
}

/* psd_stall_arm: see psd_stall.h. */
void psd_stall_arm(psd_stall *s, uint64_t now, uint64_t next, int watch) {
  if (watch && next > now + s->watch_ms) next = now + s->watch_ms;
  if (next == UINT64_MAX) {
    psd_stall_stop(s);
    return;
  }
  if (next < now) next = now;
  if (s->due_ms && s->due_ms <= next) return;
  uv_timer_start(s->timer, s->cb, next - now, 0);
  s->due_ms = next;
}

/* psd_stall_fired: see psd_stall.h. */
void psd_stall_fired(psd_stall *s) { s->due_ms = 0; }

/* psd_stall_stop: see psd_stall.h. */
void psd_stall_stop(psd_stall *s) {
  uv_timer_stop(s->timer);
  s->due_ms = 0;
}

/* psd_stall_check: see psd_stall.h. */
uint64_t psd_stall_check(psd_stall *s, uint64_t now) {
  uint64_t due = s->due_ms;
  if (!due || now < due + s->watch_ms) return 0;
  if (now - due >= s->heartbeat_ms)
    ps_warn("%s: its event loop was stalled for %llu ms (a long request held it, or the process "
            "was stopped): the workers' leases are extended by as much, as their %s waited "
            "unread", s->who, (unsigned long long)(now - due), s->unread);
  s->due_ms = now; /* credited once; the timer still fires at once */
  return now - due;
}

/* psd_stall_lost: see psd_stall.h.  Only the part of the stall since it
 * last spoke was lost to it. */
uint64_t psd_stall_lost(uint64_t last_ms, uint64_t stall_ms, uint64_t now_ms) {
  if (now_ms <= last_ms) return 0;
  return now_ms - last_ms < stall_ms ? now_ms - last_ms : stall_ms;
}

/* psd_stall_silence: see psd_stall.h. */
uint64_t psd_stall_silence(uint64_t last_ms, uint64_t credit_ms, uint64_t now_ms) {
  uint64_t silent = now_ms > last_ms ? now_ms - last_ms : 0;
  return silent > credit_ms ? silent - credit_ms : 0;
}
