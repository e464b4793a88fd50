/* psd_stall: a loop's stall watch, shared by a shard's worker leases
 * (psd_shard.c, psd_clock invariant 3) and an aggregator's (psd_agg.h
 * invariant 6).
 *
 * A loop that ran nothing for a while (one long request held it, or the
 * process was stopped) read no request meanwhile: the workers' words of
 * that time wait unread in its sockets, so that time is not their
 * silence.  The watch sees such a stall as the lateness of one timer of
 * the loop, which it keeps due a watch period away at most while leases
 * run (psd_stall_arm): a timer overdue by a watch period at a time the
 * loop reads (psd_stall_check) means the loop ran nothing since it was
 * due.  The owner credits the stall to its leases (psd_stall_lost) before
 * it uses that time for anything else.  Loop thread only. */
#ifndef PSD_STALL_H
#define PSD_STALL_H

#include <stdint.h>
#include <uv.h>

typedef struct psd_stall {
  uv_timer_t *timer;        /* the watched timer (the owner's, initialized) */
  uv_timer_cb cb;           /* what it runs */
  uint64_t due_ms;          /* when it should fire (0: stopped); lateness = a stalled loop */
  uint64_t heartbeat_ms;    /* workers.heartbeat_ms */
  uint64_t watch_ms;        /* psd_stall_watch_ms */
  char who[96];             /* "shard 1", "aggregator h0": the log's subject */
  const char *unread;       /* what waited unread: "heartbeats", "requests" */
} psd_stall;

/* psd_stall_init sets S up to watch TIMER (running CB) for WHO, whose
 * workers' UNREAD (a static string) wait in its sockets during a stall:
 * the watch period is half HEARTBEAT_MS (a quarter of LEASE_MS when
 * shorter, never under 100 ms of timer jitter). */
void psd_stall_init(psd_stall *s, uv_timer_t *timer, uv_timer_cb cb, uint64_t heartbeat_ms,
                    uint64_t lease_ms, const char *who, const char *unread);

/* psd_stall_arm (re)starts the timer at NEXT (UINT64_MAX: no deadline),
 * or a watch period after NOW when sooner and WATCH (leases run), or
 * stops it when neither.  A timer due sooner already stays as it is:
 * re-arming it later at each request would hide the stall it is late
 * for (it fires early; its callback arms again). */
void psd_stall_arm(psd_stall *s, uint64_t now, uint64_t next, int watch);

/* psd_stall_fired notes that the timer fired: call it first thing in the
 * callback, after psd_stall_check. */
void psd_stall_fired(psd_stall *s);

/* psd_stall_stop stops the timer. */
void psd_stall_stop(psd_stall *s);

/* psd_stall_check returns the stall (ms) that ended at NOW: the timer
 * overdue by a watch period or more, else 0.  It is credited once, and
 * logged when a heartbeat or more went unread (a shorter one, a busy
 * machine, is credited quietly).  Call it with the loop's updated time
 * before any use of that time by the leases. */
uint64_t psd_stall_check(psd_stall *s, uint64_t now);

/* psd_stall_lost returns the part of a STALL_MS stall that ended at
 * NOW_MS which a worker last heard from at LAST_MS lost: its lease is
 * extended by that much (until its next word). */
uint64_t psd_stall_lost(uint64_t last_ms, uint64_t stall_ms, uint64_t now_ms);

/* psd_stall_silence returns how long a worker last heard from at LAST_MS
 * has been silent at NOW_MS, less CREDIT_MS of the loop's stalls since
 * (psd_stall_lost's sum): a stall is no silence. */
uint64_t psd_stall_silence(uint64_t last_ms, uint64_t credit_ms, uint64_t now_ms);

#endif
