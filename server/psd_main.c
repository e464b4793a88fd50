/* psd: the parameter-server daemon, one process per shard.
 *
 *   psd --config FILE --shard N     serve shard N
 *   psd --config FILE --aggregator NAME  run as aggregator NAME (psd_agg.h)
 *   psd -t --config FILE [--shard N | --aggregator NAME] check the configuration and exit
 *   psd --version                   print the build (ps_version.h) and exit
 *
 * The main thread runs a libuv loop: signals, the flush timer, systemd
 * watchdog pings, the tensor channel and the handlers of gRPC requests
 * (handed over by psd_grpc's thread).  Start order: open the store
 * (RECOVERING), replay the redo log after its snapshot and start the log's
 * writer (durability sync; psd_wal.h), bind both listeners, SERVING,
 * READY=1.  SIGTERM/SIGINT:
 * STOPPING=1, DRAINING, stop accepting, wait for in-flight requests
 * (bounded by drain_timeout_ms), a final synchronous flush (under sync
 * the log, which it then holds entirely, is removed), close, exit 0 (1
 * when the final flush failed).  A SIGTERM/SIGINT during the start stops
 * the replay before the next record it would apply (exit 0), or drains as
 * soon as the listeners are bound; a second one before they are ends the
 * start at once.  Exit codes: 0 clean, 1 runtime failure
 * (store cannot be opened, address taken, failed final flush), 2 usage or
 * configuration error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

#include "ps_addr.h"
#include "ps_auth.h"
#include "ps_config.h"
#include "ps_fpu.h"
#include "ps_log.h"
#include "ps_pb.h"
#include "ps_proc.h"
#include "ps_rpc.h"
#include "ps_stop.h"
#include "ps_time.h"
#include "ps_tls.h"
#include "ps_version.h"
#include "psd_agg.h"
#include "psd_chan.h"
#include "psd_fd.h"
#include "psd_grpc.h"
#include "psd_probe.h"
#include "psd_shard.h"
#include "psd_shard_sparse.h"
#include "psd_store.h"
#include "psd_wal.h"

/* The stop's watch (psd_stop_watch_tick). */
typedef struct psd_stop_watch {
  ps_ticker ticker;
  uint32_t shard;
  int64_t warn_ms;           /* the next warning (the first, then at each doubling) */
  const char *kill;          /* what a kill now would lose */
} psd_stop_watch;

typedef struct psd_main {
  psd_shard sh;
  const char *renamed_from;  /* psd --rename-cluster OLD, or NULL */
  uv_loop_t loop;
  uv_signal_t sig[3];
  uv_timer_t flush_timer, watchdog_timer, drain_timer, wal_timer;
  uv_timer_t cert_timer;     /* the TLS certificate's end (psd_main_on_cert_timer) */
  int cert_said;             /* ... 1: that it ends within a week was said, 2: that it ended */
  psd_stop_watch watch;      /* from the drain's start to the exit */
  uint64_t wal_stall_ms;     /* the log's stalled sync was said to run this long (0: none) */
  uint64_t wal_stall_seen;   /* ... and was last seen running this long */
  uv_work_t flush_work;
  psd_probe probe;           /* rebuilds a gRPC server that stopped accepting */
  psd_flush *flush;          /* the flush being written, or NULL */
  int flush_busy;            /* a flush (dense, sparse or both) is being written */
  int flush_again;           /* ... and another is due at its end (psd_main_flush_soon) */
  int flush_status;
  int sp_persist;            /* the flush persists the sparse rows' memtable */
  int sp_status;
  int sp_snap_err;           /* the sparse snapshot of this flush failed (message in sp_eb) */
  uint64_t sp_seq;           /* the log position that sparse snapshot holds */
  ps_errbuf sp_eb;
  uint64_t replay_from_d;    /* the log positions the dense snapshot and the rows on disk */
  uint64_t replay_from_sp;   /*   held at start (replay skips what they hold) */
  uint64_t dur_d, dur_sp;    /* what the last finished snapshots hold (the log keeps the rest) */
  int64_t flush_snap_ms; /* when the flush in progress snapshotted the store */
  ps_errbuf flush_eb;
  unsigned flush_failures;   /* failed flushes in a row */
  char flush_fail_msg[sizeof(ps_errbuf)]; /* the last one's message */
  uint64_t drain_deadline_ms;
  int drain_said;            /* the drain said what it waits for */
  int exit_code;
  int wal_failed;            /* the redo log's writer is failing (sync) */
  int wal_err;               /* the code it last said (psd_main_wal_state) */
  char wal_fail_msg[sizeof(ps_errbuf)]; /* why */
  char status_why[sizeof ((psd_shard *)0)->degraded_why]; /* the DEGRADED reason systemd has */
  int replay_stopped;        /* a SIGTERM/SIGINT ended the start's replay */
  ps_ticker start_ticker;    /* systemd's start timeout and stop (psd_main_start_tick) */
  atomic_int replaying;      /* the replay runs ... */
  atomic_uint_fast64_t replayed; /* ... and has applied this many records */
  uint64_t replayed_seen;    /* (the start ticker's) */
  int64_t extend_next_ms;    /* (the start ticker's) */
  int64_t extend_other_ms;   /* (the start ticker's) extended outside the replay */
  int stopping_said;         /* (the start ticker's) STOPPING=1 sent */
  int start_errno;           /* why the start failed, for systemd (0: no errno known) */
  char start_fail[sizeof(ps_errbuf) + 64]; /* ... and its message, or "" */
  atomic_int final_flush;    /* the stop's flush: the sparse rows wait for no log */
  int dir_lock;              /* data_dir, locked (psd_store_lock_dir), or -1 */
} psd_main;

/* psd_main_unix_ms returns the wall clock in milliseconds. */
static int64_t psd_main_unix_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* psd_main_why says in the shard's degraded_why (psctl status, refused
 * pushes) what keeps it DEGRADED now: the redo log, the flush, or both
 * (either may fail while the other already did, and either may recover
 * first); and systemd's STATUS= says the same whenever it changes (it
 * kept the first cause: "degraded: cannot sync the redo log" while only
 * the store failed, the log written again).  SERVING again: forgotten. */
static void psd_main_why(psd_main *m) {
  psd_shard *sh = &m->sh;
  if (sh->state != PSD_DEGRADED) {
    m->status_why[0] = '\0';
    return;
  }
  int log = m->wal_failed, flush = m->flush_failures > 0;
  snprintf(sh->degraded_why, sizeof sh->degraded_why, "%s%s%s%s", log ? m->wal_fail_msg : "",
           log && flush ? "; " : "", flush ? "its last flush failed: " : "",
           flush ? m->flush_fail_msg : "");
  if (strcmp(sh->degraded_why, m->status_why)) {
    snprintf(m->status_why, sizeof m->status_why, "%s", sh->degraded_why);
    sd_notifyf(0, "STATUS=degraded: %s", m->status_why);
  }
}

/* psd_main_flushed records the outcome of a flush of the state as of
 * SNAP_MS: a failure turns a serving shard DEGRADED (it serves from
 * memory, refuses submits; the store closed RocksDB and the flush timer
 * retries, reopening it), a success after one turns it back to SERVING.
 * last_flush_unix_ms is the time up to which every accepted update is on
 * disk.  Failures in a row are logged when their message changes (but
 * for its numbers) and every 60th time, not at every tick. */
/* psd_main_same_but_numbers says whether A and B differ only in their
 * digits (RocksDB names a new file each time the same failure recurs). */
static int psd_main_same_but_numbers(const char *a, const char *b) {
  for (;; a++, b++) {
    while (*a >= '0' && *a <= '9') a++;
    while (*b >= '0' && *b <= '9') b++;
    if (*a != *b) return 0;
    if (!*a) return 1;
  }
}

static void psd_main_flushed(psd_main *m, int status, const ps_errbuf *eb, int64_t snap_ms) {
  psd_shard *sh = &m->sh;
  if (status < 0) {
    int changed = !psd_main_same_but_numbers(m->flush_fail_msg, eb->msg);
    if (sh->state == PSD_SERVING) {
      char why[sizeof eb->msg + 32];
      snprintf(why, sizeof why, "its last flush failed: %s", eb->msg);
      psd_shard_set_state(sh, PSD_DEGRADED, why);
    }
    if (changed || m->flush_failures % 60 == 0)
      ps_err("flush failed (%u in a row), shard %u degraded: %s, retrying every %u ms: %s",
             m->flush_failures + 1, sh->me->id,
             sh->wal ? "serving pulls from memory, refusing pushes and submits"
                     : "serving from memory, refusing submits",
             sh->cfg->flush_interval_ms, eb->msg);
    snprintf(m->flush_fail_msg, sizeof m->flush_fail_msg, "%s", eb->msg);
    m->flush_failures++;
    if (sh->wal) psd_wal_drop_spares(sh->wal); /* the disk may be full: give their space back */
    psd_main_why(m);
    return;
  }
  sh->last_flush_unix_ms = snap_ms;
  if (sh->state == PSD_DEGRADED && !m->wal_failed) {
    psd_shard_set_state(sh, PSD_SERVING, NULL);
    sd_notifyf(0, "STATUS=serving shard %u", sh->me->id);
    ps_info("flush succeeded after %u failed, shard %u serving again", m->flush_failures,
            sh->me->id);
  }
  m->flush_failures = 0;
  m->flush_fail_msg[0] = '\0';
  psd_main_why(m); /* still DEGRADED: the log */
}

/* psd_main_log_retry_ms: how often a failing redo log is retried: each
 * flush interval, but at least every second (a write retried is cheap,
 * and a shard whose disk got room again should not wait an hour). */
static uint32_t psd_main_log_retry_ms(const ps_config *cfg) {
  return cfg->flush_interval_ms < 1000 ? cfg->flush_interval_ms : 1000;
}

/* psd_main_log_reserve: the free space the redo log keeps on its disk
 * (psd_wal invariant 9): room for a snapshot of every model (an SST file
 * and RocksDB's compaction of it: twice the models' bytes) and 64 MiB
 * for RocksDB's own files; psd_wal caps it at a quarter of the disk. */
static uint64_t psd_main_log_reserve(const psd_main *m) {
  return (64ull << 20) + 2 * psd_store_bytes(m->sh.store);
}

static void psd_main_on_flush_timer(uv_timer_t *t);

/* psd_main_flush_soon takes a snapshot now, or once the one being
 * written ends, rather than at the next tick: a redo log short of space
 * shrinks only by a snapshot, and the shard refuses pushes until then
 * (for up to flush_interval_ms, ten minutes with a long one). */
static void psd_main_flush_soon(psd_main *m) {
  if (!uv_is_active((uv_handle_t *)&m->flush_timer)) return; /* not yet, or stopping */
  if (m->flush_busy) {
    m->flush_again = 1;
    return;
  }
  uv_timer_start(&m->flush_timer, psd_main_on_flush_timer, 0,
                 uv_timer_get_repeat(&m->flush_timer));
}

/* psd_main_wal_state is the redo log's state callback (psd_wal.h): a
 * failing log, or one short of disk space, turns a serving shard DEGRADED (it stops acknowledging
 * pushes: refused before they apply); a log that works again makes it
 * SERVING unless a flush is failing too.  A new message in the same state
 * (the free space of a log short of it) only updates the reason: logged
 * on changes of state, not at each figure. */
static void psd_main_wal_state(void *arg, int err, const char *msg) {
  psd_main *m = arg;
  psd_shard *sh = &m->sh;
  int again = err < 0 && err == m->wal_err; /* the same state, a new message: not logged */
  m->wal_failed = err < 0;
  m->wal_err = err;
  if (err < 0) snprintf(m->wal_fail_msg, sizeof m->wal_fail_msg, "%s", msg);
  if (again) { /* (short of space: the free space now; the snapshot was asked) */
    psd_main_why(m);
    return;
  }
  if (err < 0) {
    if (err == PS_EDEGRADED) { /* short of space (psd_wal invariant 9): the message says so */
      ps_err("shard %u degraded: %s; pushes are refused until the next snapshot, taken now, "
             "shrinks the log, or space is freed", sh->me->id, msg);
      psd_main_flush_soon(m);
    } else {
      ps_err("shard %u degraded: the redo log fails (%s), pushes are refused; retrying every "
             "%u ms", sh->me->id, msg, psd_main_log_retry_ms(sh->cfg));
    }
    if (sh->state == PSD_SERVING) psd_shard_set_state(sh, PSD_DEGRADED, msg);
    psd_main_why(m);
    return;
  }
  ps_info("shard %u: the redo log is written again", sh->me->id);
  if (sh->state == PSD_DEGRADED && m->flush_failures == 0) {
    psd_shard_set_state(sh, PSD_SERVING, NULL);
    sd_notifyf(0, "STATUS=serving shard %u", sh->me->id);
  }
  psd_main_why(m); /* still DEGRADED: the flush */
}

/* psd_main_start_failed logs why the start fails (one error line, FMT)
 * and keeps it for systemd (psd_main_serve: STATUS=, and ERRNO= where
 * ERR, a PS_E* code, stands for one errno). */
static void psd_main_start_failed(psd_main *m, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void psd_main_start_failed(psd_main *m, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m->start_fail, sizeof m->start_fail, fmt, ap);
  va_end(ap);
  ps_err("%s", m->start_fail);
  m->start_errno = err == PS_ENOSPC ? ENOSPC : err == PS_ENOMEM ? ENOMEM
                   : err == PS_EPERM ? EACCES : err == PS_ELOCKED ? EWOULDBLOCK : 0;
}

/* During the start, the start ticker (a thread: the store's open and the
 * replay block the loop) tells systemd
 *  - STOPPING=1 as soon as a SIGTERM/SIGINT came (the replay stops at
 *    its next record, a start past it drains once it serves), and
 *  - EXTEND_TIMEOUT_USEC every PSD_MAIN_EXTEND_MS, so that a replay or a
 *    store open longer than the unit's TimeoutStartSec is not killed
 *    (killed, psd would exit 0 and be started again, to replay from the
 *    start).  A replay that applied no record since the last extension
 *    gets none: a start stuck on its disk still times out; outside the
 *    replay (a store open, a snapshot, whose progress cannot be seen)
 *    extensions stop after PSD_MAIN_EXTEND_OTHER_MS in all, so that a
 *    start hung on its disk there times out too. */
#define PSD_MAIN_EXTEND_MS 5000
#define PSD_MAIN_EXTEND_USEC 30000000ull /* 30 s: six ticks' margin */
#define PSD_MAIN_EXTEND_OTHER_MS (10 * 60 * 1000)
static void psd_main_start_tick(void *arg, int64_t ms) {
  psd_main *m = arg;
  int sig = ps_stop_signal;
  if (sig && !m->stopping_said) {
    m->stopping_said = 1;
    sd_notifyf(0, "STOPPING=1\nSTATUS=stopping: %s during the start",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
  }
  if (sig || ms < m->extend_next_ms) return;
  m->extend_next_ms = ms + PSD_MAIN_EXTEND_MS;
  uint64_t done = atomic_load(&m->replayed);
  int replaying = atomic_load(&m->replaying);
  if (replaying && done == m->replayed_seen) return;
  if (!replaying && (m->extend_other_ms += PSD_MAIN_EXTEND_MS) > PSD_MAIN_EXTEND_OTHER_MS) return;
  m->replayed_seen = done;
  sd_notifyf(0, "EXTEND_TIMEOUT_USEC=%llu", PSD_MAIN_EXTEND_USEC);
}

/* psd_main_log_append is the store's log hook (psd_store_set_log). */
static int psd_main_log_append(void *arg, const struct iovec *iov, int niov, void **own,
                               size_t *own_cap, const ps_lend *lend, uint64_t *seq,
                               ps_errbuf *eb) {
  return psd_wal_append_own(arg, iov, niov, own, own_cap, lend, seq, eb);
}

static int psd_main_flush_durable(void *arg, uint64_t seq, ps_errbuf *eb);

/* psd_main_sparse_log_append is the sparse rows' log hook: the record's
 * seq also moves the store's log position (psd_store_log_note), which is
 * what a push's acknowledgement waits for (psd_shard_push_durable). */
static int psd_main_sparse_log_append(void *arg, const struct iovec *iov, int niov,
                                      uint64_t *seq, ps_errbuf *eb) {
  psd_main *m = arg;
  int err = psd_wal_append(m->sh.wal, iov, niov, seq, eb);
  if (err == 0) psd_store_log_note(m->sh.store, *seq);
  return err;
}

/* psd_main_replay_one applies one redo log record (psd_wal_replay_fn):
 * a sparse push to the rows, a dense one to the store, each unless the
 * snapshot that replay started from for it holds it already. */
static int psd_main_replay_one(void *arg, uint64_t seq, const uint8_t *p, size_t len,
                               ps_errbuf *eb) {
  psd_main *m = arg;
  if (ps_stop_signal) {
    m->replay_stopped = 1;
    return ps_errf(eb, PS_ESHUTDOWN, "%s during the replay", strsignal(ps_stop_signal));
  }
  atomic_fetch_add(&m->replayed, 1);
  if (len && p[0] == PSD_SPARSE_LOG_PUSH)
    return seq <= m->replay_from_sp ? 0 : psd_shard_sparse_replay(&m->sh, seq, p, len, eb);
  return seq <= m->replay_from_d ? 0 : psd_store_replay(m->sh.store, seq, p, len, eb);
}

/* psd_main_truncate lets the redo log drop what both snapshots hold. */
static void psd_main_truncate(psd_main *m) {
  if (m->sh.wal) psd_wal_truncate(m->sh.wal, m->dur_d < m->dur_sp ? m->dur_d : m->dur_sp);
}

/* psd_main_bind_log checks that redo log W (in DIR) is this store's: the
 * store and the log keep the same random id (psd_store_log_id,
 * psd_wal_id).  A log of another id, a log with records and an id while
 * the store has none (the store was replaced), or a log with records and
 * no id while the store has one (its id file removed: another store's
 * log passes as any store's) is refused; the first log of a store gets a
 * new id.  A log without an id and without records (removed) takes the
 * store's, with a warning saying what may be lost; so does a log from
 * before ids beside a store from before ids, which cannot be checked.
 * That last pair gets its id in two writes, the store's marked pending
 * until the log's is written, so that a crash between them (a store with
 * an id, a log with records and none) is told apart from a removed id and
 * finished.  0 or an error (EB). */
static int psd_main_bind_log(psd_main *m, psd_wal *w, const char *dir, ps_errbuf *eb) {
  psd_shard *sh = &m->sh;
  uint64_t sid = 0, lid = 0;
  int pending = 0;
  int rc = psd_store_log_id(sh->store, &sid, &pending, eb);
  if (rc == 0) rc = psd_wal_id(w, &lid, eb);
  if (rc < 0) return rc;
  int recs = psd_wal_nonempty(w);
  if (sid && lid && sid != lid)
    return ps_errf(eb, PS_EIO, "redo log '%s' (id %016" PRIx64 ") is not the log of store '%s' "
                   "(id %016" PRIx64 "): it comes from another store or data directory; "
                   "refusing to replay it (put this store's own redo directory back)",
                   dir, lid, sh->me->data_dir, sid);
  /* pending: a crash after the log's id was written, before the mark went */
  if (sid && lid) return pending ? psd_store_set_log_id(sh->store, sid, 0, eb) : 0;
  if (lid && recs)
    return ps_errf(eb, PS_EIO, "redo log '%s' (id %016" PRIx64 ") holds records, but store '%s' "
                   "holds no log id: the store is not the one this log was written for "
                   "(replaced, or from another data directory); refusing to replay it",
                   dir, lid, sh->me->data_dir);
  if (lid) return psd_store_set_log_id(sh->store, lid, 0, eb);
  if (sid) {
    if (recs && !pending)
      return ps_errf(eb, PS_EIO, "redo log '%s' holds records but no id, while store '%s' was "
                     "logged to redo log %016" PRIx64 ": its id file was removed, so nothing "
                     "says it is this store's log (another store's would pass too); refusing "
                     "to replay it. Put this store's own redo directory back; if this log is "
                     "certainly the store's own, write its id back: printf 'psd redo log "
                     "%016" PRIx64 "\\n' > '%s/id'", dir, sh->me->data_dir, sid, sid, dir);
    if (recs)
      ps_warn("shard %u: redo log '%s' (from before log ids) gets store '%s''s id %016" PRIx64
              ": the start that gave it stopped between the store's write and the log's",
              sh->me->id, dir, sh->me->data_dir, sid);
    else
      ps_warn("shard %u: store '%s' was logged to redo log %016" PRIx64 ", but '%s' holds no log "
              "and no id: if that log was removed, the pushes it held after the snapshot's "
              "record %" PRIu64 " are lost; a new log starts", sh->me->id, sh->me->data_dir, sid,
              dir, psd_store_log_seq(sh->store));
    rc = psd_wal_set_id(w, sid, eb);
    return rc || !pending ? rc : psd_store_set_log_id(sh->store, sid, 0, eb);
  }
  uint64_t id = 0;
  while (!id)
    if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
      return ps_errf(eb, PS_EIO, "getrandom: %s", strerror(errno));
  if (recs) {
    ps_warn("shard %u: redo log '%s' and store '%s' have no id (a psd before log ids wrote "
            "them): the log cannot be checked against the store; taken as its log",
            sh->me->id, dir, sh->me->data_dir);
    rc = psd_store_set_log_id(sh->store, id, 1, eb);
    if (rc == 0) rc = psd_wal_set_id(w, id, eb);
    return rc ? rc : psd_store_set_log_id(sh->store, id, 0, eb);
  }
  /* no records: the log's id first, which alone the next start takes */
  rc = psd_wal_set_id(w, id, eb);
  return rc ? rc : psd_store_set_log_id(sh->store, id, 0, eb);
}

/* psd_main_recover replays the redo log in DATA_DIR/redo after the
 * store's snapshot (durability sync, or a log left by a sync run) and,
 * under sync, starts it; under periodic a replayed log is flushed into
 * a snapshot and removed.  0, or 1 after one clear log line. */
static int psd_main_recover(psd_main *m) {
  psd_shard *sh = &m->sh;
  const ps_config *cfg = sh->cfg;
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/redo", sh->me->data_dir);
  int sync = cfg->durability == PS_DUR_SYNC;
  if (!sync && !psd_wal_has_records(dir)) return 0;
  sd_notifyf(0, "STATUS=replaying the redo log\nEXTEND_TIMEOUT_USEC=%llu", PSD_MAIN_EXTEND_USEC);
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = cfg->group_commit_max_bytes,
                    .max_wait_us = cfg->group_commit_max_wait_us,
                    .retry_ms = psd_main_log_retry_ms(cfg), .on_state = psd_main_wal_state,
                    .arg = m, .reserve_bytes = psd_main_log_reserve(m)};
  psd_wal *w = NULL;
  ps_errbuf eb = {{0}};
  /* the dense snapshot and the sparse rows may hold different positions:
   * replay starts at the older, each skipping what it holds */
  m->replay_from_d = m->dur_d = psd_store_log_seq(sh->store);
  m->replay_from_sp = m->dur_sp = psd_shard_sparse_log_from(sh);
  uint64_t from = m->replay_from_d < m->replay_from_sp ? m->replay_from_d : m->replay_from_sp;
  int err = psd_wal_open(&w, &o, &eb);
  if (err == 0) err = psd_main_bind_log(m, w, dir, &eb);
  atomic_store(&m->replaying, 1);
  int replay_err = 0;
  if (err == 0) err = replay_err = psd_wal_replay(w, from, psd_main_replay_one, m, &eb);
  atomic_store(&m->replaying, 0);
  psd_wal_stats st = {0};
  if (err == 0) {
    psd_wal_stats_get(w, &st);
    sh->replay.done = 1;
    sh->replay.records = st.replayed;
    sh->replay.dropped = st.replay_dropped;
    sh->replay.ms = st.replay_ms;
    ps_info("shard %u: redo log replayed: %llu records after the snapshot's %llu in %llu ms "
            "(torn-tail records dropped: %llu; %llu segments the snapshot holds not read)",
            sh->me->id, (unsigned long long)st.replayed, (unsigned long long)from,
            (unsigned long long)st.replay_ms, (unsigned long long)st.replay_dropped,
            (unsigned long long)st.replay_skipped);
  }
  /* A snapshot ahead of the log's last record (one written before the
   * write-ahead rule, psd_store invariant 11, by a shard killed before
   * the records it held were synced, or the final snapshot of a stop
   * while the log failed, written anyway, by a shard killed before it
   * removed the log): a log that went on after its last record would
   * give those seqs again, and a later replay would skip the new records
   * as held.  So the replayed state goes into a snapshot at the newest
   * position and the log starts above it, as under periodic, where the
   * replayed state always goes into a snapshot.  (With no record in the
   * log, its end is where the older of the two positions left the next
   * seq: a clean stop, which removes the log, leaves them equal.) */
  uint64_t top = m->dur_d;
  if (m->dur_sp != UINT64_MAX && m->dur_sp > top) top = m->dur_sp;
  uint64_t end = st.replay_last ? st.replay_last : st.last_seq;
  int ahead = err == 0 && top > end;
  if (err == 0 && (!sync || ahead)) {
    /* TOP may be the sparse rows' position alone (kept even without
     * sparse tables): a stop whose log failed and whose final dense
     * snapshot failed too still lets the rows' writer write theirs
     * (psd_main_finish); the dense snapshot then lacks those records */
    if (ahead && top > m->dur_d)
      ps_warn("shard %u: the sparse rows' snapshot holds records up to %llu, but the dense "
              "snapshot only %llu and the redo log ends at %llu: records %llu to %llu are in "
              "neither (pushes the log never synced, so never acknowledged: left by a stop "
              "whose log and final snapshot failed); taking a snapshot of the replayed state "
              "and starting the log after %llu", sh->me->id, (unsigned long long)top,
              (unsigned long long)m->dur_d, (unsigned long long)end,
              (unsigned long long)(end > m->dur_d ? end : m->dur_d) + 1,
              (unsigned long long)top, (unsigned long long)top);
    else if (ahead)
      ps_warn("shard %u: the snapshot holds records up to %llu, the redo log ends at %llu: "
              "taking a snapshot of the replayed state and starting the log after %llu. If "
              "the log was restored from an older copy or lost its newest segment, the pushes "
              "acknowledged after record %llu are lost (the snapshot cannot tell that from a "
              "shard killed before its last pushes were synced, which loses nothing "
              "acknowledged)", sh->me->id, (unsigned long long)top, (unsigned long long)end,
              (unsigned long long)top, (unsigned long long)top);
    psd_store_log_note(sh->store, top);
    err = psd_store_flush(sh->store, &eb);
    if (err == 0) err = psd_shard_sparse_flush(sh, &eb);
    if (err == 0) err = psd_wal_discard(w, top, &eb);
    if (err == 0) {
      sh->last_flush_unix_ms = psd_main_unix_ms(); /* the replayed state is on disk */
      m->dur_d = top;
      if (m->dur_sp != UINT64_MAX) m->dur_sp = top;
    }
  }
  if (err == 0 && !sync) {
    psd_wal_free(w);
    w = NULL;
  }
  if (err == 0 && sync) {
    psd_store_set_log(sh->store, psd_main_log_append, w);
    psd_shard_sparse_set_log(sh, psd_main_sparse_log_append, m);
    psd_shard_sparse_set_durable(sh, psd_main_flush_durable, m);
    err = psd_wal_start(w, sh->loop, &eb);
    if (err == 0) {
      sh->wal = w;
      /* segments the snapshots hold go now, not at the first snapshot,
       * which an idle shard does not take (a log left by a shard killed
       * in its stop, after the final snapshot) */
      psd_main_truncate(m);
    }
  }
  if (err < 0) {
    if (replay_err) psd_wal_stats_get(w, &st); /* (replay_refused) */
    psd_store_set_log(sh->store, NULL, NULL);
    psd_shard_sparse_set_log(sh, NULL, NULL);
    psd_shard_sparse_set_durable(sh, NULL, NULL);
    psd_wal_free(w);
    if (m->replay_stopped)
      ps_info("shard %u: %s; stopping (the next start replays the log again)", sh->me->id,
              eb.msg);
    /* the message says why (a corrupt record is no i/o error); a log the
     * replay refuses as damaged leaves the operator one way on, which
     * costs what the log holds past the snapshot: said.  Not for a system
     * call's failure (a segment it may not write, a failing disk), where
     * the log is whole and moving it would lose those pushes for nothing */
    else if (replay_err == PS_EIO && st.replay_refused)
      psd_main_start_failed(m, err, "shard %u: cannot recover from the redo log: %s. To start "
                            "from the last snapshot instead, losing the pushes acknowledged "
                            "after it, move the whole directory '%s' away (keep it to "
                            "inspect)", sh->me->id, eb.msg, dir);
    else psd_main_start_failed(m, err, "shard %u: cannot recover from the redo log: %s",
                               sh->me->id, eb.msg);
    return 1;
  }
  return 0;
}

/* psd_main_flush_work writes the dense snapshot and persists the sparse
 * rows' memtable (worker thread). */
static void psd_main_flush_work(uv_work_t *w) {
  psd_main *m = w->data;
  m->flush_status = m->flush ? psd_flush_write(m->flush, &m->flush_eb) : 0;
  /* the rows' position too names only records on disk (psd_store invariant 11) */
  m->sp_status = m->sp_persist && m->sh.wal ? psd_wal_wait_synced(m->sh.wal, m->sp_seq, &m->sp_eb) : 0;
  if (m->sp_status == 0 && m->sp_persist) m->sp_status = psd_shard_sparse_persist(&m->sh, &m->sp_eb);
}

/* psd_main_flush_durable is the background flush's durable hook
 * (psd_flush_set_durable): the snapshot is ingested only once the redo
 * log has synced every record it holds (psd_store invariant 11); the
 * sparse rows' write buffers wait the same way (psd_sparse_set_durable). */
static int psd_main_flush_durable(void *arg, uint64_t seq, ps_errbuf *eb) {
  psd_main *m = arg;
  if (atomic_load(&m->final_flush)) return 0; /* psd_main_finish waited (or wrote anyway) */
  return m->sh.wal ? psd_wal_wait_synced(m->sh.wal, seq, eb) : 0;
}

/* psd_main_flush_end finishes a flush on the loop: FLUSH_STATUS for the
 * dense snapshot, SP_STATUS for the sparse rows' persist. */
static void psd_main_flush_end(psd_main *m) {
  if (m->flush) {
    if (m->flush_status == 0) m->dur_d = psd_flush_log_seq(m->flush);
    psd_flush_finish(m->sh.store, m->flush, m->flush_status);
  }
  if (m->sp_persist) {
    if (m->sp_status == 0) m->dur_sp = m->sp_seq;
    else psd_shard_sparse_persist_failed(&m->sh);
  }
  m->flush = NULL;
  m->sp_persist = 0;
  m->flush_busy = 0;
  psd_main_truncate(m);
  if (m->sp_status == 0) m->sp_status = m->sp_snap_err;
  if (m->flush_status == 0 && m->sp_status < 0) {
    m->flush_status = m->sp_status;
    m->flush_eb = m->sp_eb;
  }
  psd_main_flushed(m, m->flush_status, &m->flush_eb, m->flush_status < 0 ? 0 : m->flush_snap_ms);
  if (m->flush_again) {
    m->flush_again = 0;
    psd_main_flush_soon(m);
  }
}

static void psd_main_flush_after(uv_work_t *w, int status) {
  psd_main *m = w->data;
  if (status < 0) {
    m->flush_status = ps_errf(&m->flush_eb, PS_EINTERNAL, "flush work cancelled");
    m->sp_status = PS_EINTERNAL;
  }
  psd_main_flush_end(m);
}

/* psd_main_on_wal_timer says in the log when the redo log's disk work in
 * flight (psd_wal_stats.busy_ms) has run PSD_MAIN_WAL_STALL_MS or longer
 * (a disk that does not answer: the pushes wait, nothing is acknowledged
 * meanwhile; psctl status shows it too), again each time it has run twice
 * as long, and when the log answers again.  (Not during a stop, whose
 * final flush waits for the log on the loop.) */
#define PSD_MAIN_WAL_STALL_MS 5000
static void psd_main_on_wal_timer(uv_timer_t *t) {
  psd_main *m = t->data;
  psd_wal_stats ws;
  psd_wal_stats_get(m->sh.wal, &ws);
  if (ws.busy_ms >= PSD_MAIN_WAL_STALL_MS && ws.busy_ms >= 2 * m->wal_stall_ms) {
    ps_warn("shard %u: the redo log's disk work in flight has run %.1f s (the disk is not "
            "answering?); pushes wait for it, none is acknowledged meanwhile",
            m->sh.me->id, (double)ws.busy_ms / 1e3);
    m->wal_stall_ms = ws.busy_ms;
  } else if (m->wal_stall_ms && ws.busy_ms < m->wal_stall_seen) {
    ps_info("shard %u: the redo log's stalled disk work ended (it ran %.1f to %.1f s)",
            m->sh.me->id, (double)m->wal_stall_seen / 1e3, (double)m->wal_stall_seen / 1e3 + 1);
    m->wal_stall_ms = 0;
  }
  m->wal_stall_seen = m->wal_stall_ms ? ws.busy_ms : 0; /* this timer's period: 1 s */
}

/* psd_main_on_flush_timer snapshots dirty state on the loop (the sparse
 * rows into RocksDB's memtable, the dense chunks' list) and writes it on
 * a worker thread; skips a tick while the last write still runs. */
static void psd_main_on_flush_timer(uv_timer_t *t) {
  psd_main *m = t->data;
  if (m->flush_busy || m->sh.state == PSD_DRAINING) return;
  psd_flush *f = NULL;
  m->flush_snap_ms = psd_main_unix_ms();
  if (m->sh.wal) psd_wal_set_reserve(m->sh.wal, psd_main_log_reserve(m)); /* models come, go */
  /* a failing sparse snapshot does not hold the dense one back: both are
   * tried, and either failing makes the flush a failure */
  int persist = 0;
  m->sp_snap_err = psd_shard_sparse_snapshot(&m->sh, &persist, &m->sp_seq, &m->sp_eb);
  int err = psd_flush_prepare(m->sh.store, &f, &m->flush_eb);
  if (err < 0) {
    if (persist) psd_shard_sparse_persist_failed(&m->sh);
    psd_main_flushed(m, err, &m->flush_eb, 0);
    return;
  }
  if (!m->sp_snap_err && !persist) m->dur_sp = m->sp_seq; /* on disk already */
  if (!f) m->dur_d = psd_store_log_seq(m->sh.store);       /* likewise */
  if (!f && !persist) { /* nothing dirty: everything accepted so far is on disk */
    psd_main_truncate(m); /* (after a restart whose replay found nothing to apply, say) */
    if (m->sp_snap_err < 0) psd_main_flushed(m, m->sp_snap_err, &m->sp_eb, 0);
    else psd_main_flushed(m, 0, NULL, m->flush_snap_ms);
    return;
  }
  if (f) psd_flush_set_durable(f, psd_main_flush_durable, m);
  m->flush = f;
  m->sp_persist = persist;
  m->flush_busy = 1;
  m->flush_work.data = m;
  err = uv_queue_work(&m->loop, &m->flush_work, psd_main_flush_work, psd_main_flush_after);
  if (err < 0) {
    ps_errf(&m->flush_eb, PS_EINTERNAL, "cannot queue the flush: %s", uv_strerror(err));
    m->flush_status = m->sp_status = PS_EINTERNAL;
    psd_main_flush_end(m);
  }
}

static void psd_main_on_watchdog(uv_timer_t *t) {
  (void)t;
  sd_notify(0, "WATCHDOG=1");
}

static void psd_main_close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* The stop's disk work (the coordinator's state saved at the drain's
 * start, the log's last sync, the final snapshot) runs on the loop, whose
 * stall check (psd_main_on_wal_timer) and drain deadline cannot run then:
 * a watch thread, from the drain's start to the exit, says in the log when
 * the stop has run drain_timeout_ms + 5 s, and again at each doubling. */

/* psd_stop_watch_tick: the watch's thread, every 250 ms (ps_ticker). */
static void psd_stop_watch_tick(void *arg, int64_t ms) {
  psd_stop_watch *w = arg;
  if (ms < w->warn_ms) return;
  ps_warn("shard %" PRIu32 ": the stop has run %.0f s: past the drain, it waits for the disk "
          "(the coordinator's state, the redo log's sync or the final snapshot: the disk is not "
          "answering?) and goes on waiting (%s)", w->shard, (double)ms / 1e3, w->kill);
  w->warn_ms *= 2;
}

/* psd_stop_watch_start starts W for SHARD, first saying so after
 * FIRST_MS, KILL saying what a kill would lose (NULL: no watch); nothing
 * when the thread cannot start (the stop goes on, unwatched). */
static void psd_stop_watch_start(psd_stop_watch *w, uint32_t shard, int64_t first_ms,
                                 const char *kill) {
  *w = (psd_stop_watch){.shard = shard, .warn_ms = first_ms, .kill = kill};
  if (kill) ps_ticker_start(&w->ticker, 250, psd_stop_watch_tick, w);
}

/* psd_main_finish runs once the drain is over: stops gRPC, flushes
 * synchronously, closes every handle so the loop ends. */
static void psd_main_finish(psd_main *m) {
  psd_shard *sh = &m->sh;
  uv_timer_stop(&m->drain_timer);
  /* gRPC replies already queued (a push applied, its answer on the way)
   * get the rest of the drain time, at least 200 ms, before calls are
   * cancelled: a cancelled answer to an applied push invites a retry that
   * would apply it twice. */
  uint64_t now = uv_now(&m->loop);
  uint64_t left = m->drain_deadline_ms > now ? m->drain_deadline_ms - now : 0;
  psd_grpc_stop(sh, left < 200 ? 200 : (int)(left > 5000 ? 5000 : left));
  sd_notify(0, sh->store ? "STATUS=final flush" : "STATUS=stopping: answering what is left");
  ps_errbuf eb = {{0}};
  psd_agg_stop(sh->agg); /* sums still waiting for workers are answered: shutting down */
  /* the final snapshot, too, holds only pushes the log has on disk
   * (psd_store invariant 11): a crash before the exit must not leave it
   * ahead of the log.  A failing log cannot sync them: the snapshot is
   * then their only copy, written anyway (the sparse rows' too: this
   * wait covers their own, which psd_main_flush_durable now skips; the
   * rows' writer thread may be inside it, so the hook stays). */
  if (sh->wal && sh->store && psd_wal_wait_synced(sh->wal, psd_store_log_seq(sh->store), &eb) < 0)
    ps_warn("final flush of shard %u: %s; writing the snapshot anyway", sh->me->id, eb.msg);
  atomic_store(&m->final_flush, 1);
  int err = sh->store ? psd_store_flush(sh->store, &eb) : 0;
  const char *what = "";
  if (err >= 0 && (err = psd_shard_sparse_flush(sh, &eb)) < 0) what = "'s sparse rows";
  if (err < 0) {
    ps_err("final flush of shard %u%s failed: %s", sh->me->id, what, eb.msg);
    m->exit_code = 1;
  } else {
    sh->last_flush_unix_ms = psd_main_unix_ms();
    if (sh->agg_me) ps_info("aggregator %s stopping", sh->agg_me->name);
    else ps_info("shard %u flushed, stopping", sh->me->id);
  }
  psd_wal_stop(sh->wal); /* nothing waits on it now: gRPC and the channel are done */
  /* the snapshots hold every record: a clean stop leaves no log to read */
  if (err >= 0 && sh->wal && psd_wal_discard(sh->wal, psd_store_log_seq(sh->store), &eb) < 0)
    ps_warn("shard %u: %s; the next start reads the log but replays none of it", sh->me->id,
            eb.msg);
  ps_ticker_stop(&m->watch.ticker);
  psd_chan_close(sh);
  uv_walk(&m->loop, psd_main_close_walk, NULL);
}

/* psd_main_on_drain_timer waits for in-flight requests and a running
 * flush write to end, at most drain_timeout_ms. */
static void psd_main_on_drain_timer(uv_timer_t *t) {
  psd_main *m = t->data;
  if (m->flush_busy) return; /* its after-callback must run before the final flush */
  uint64_t now = uv_now(&m->loop);
  const psd_shard *sh = &m->sh;
  char who[128];
  if (sh->agg_me) snprintf(who, sizeof who, "aggregator %s", sh->agg_me->name);
  else snprintf(who, sizeof who, "shard %u", sh->me->id);
  if (sh->inflight > 0 && now < m->drain_deadline_ms) {
    if (!m->drain_said) /* once: the stop may take all of drain_timeout_ms */
      ps_info("%s: draining: waiting up to %llu ms for %u requests in flight, whose replies are "
              "not written yet (%u channel connections open: a worker that does not read its "
              "connection, a stopped one say, holds them to the end)", who,
              (unsigned long long)(m->drain_deadline_ms - now), sh->inflight, sh->chan_conns);
    m->drain_said = 1;
    return;
  }
  if (sh->inflight > 0)
    ps_warn("%s: drain timed out after drain_timeout_ms (%u ms) with %u requests in flight; "
            "stopping without their replies", who, sh->cfg->drain_timeout_ms, sh->inflight);
  psd_main_finish(m);
}

/* psd_main_drain starts the shutdown at SIGTERM/SIGINT. */
static void psd_main_drain(psd_main *m, int signum) {
  psd_shard *sh = &m->sh;
  if (sh->state == PSD_DRAINING) return;
  if (sh->agg_me) ps_info("%s: draining aggregator %s", strsignal(signum), sh->agg_me->name);
  else ps_info("%s: draining shard %u", strsignal(signum), sh->me->id);
  /* the stop may take drain_timeout_ms (up to 10 minutes) and then the
   * final flush: systemd's stop timeout (the unit's TimeoutStopSec, 60 s)
   * is extended to cover both, or a long drain is SIGKILLed before its
   * flush (the updates since the last one lost).  An extension shorter
   * than the unit's timeout changes nothing. */
  sd_notifyf(0, "STOPPING=1\nSTATUS=draining\nEXTEND_TIMEOUT_USEC=%llu",
             (unsigned long long)sh->cfg->drain_timeout_ms * 1000 + PSD_MAIN_EXTEND_USEC);
  /* from here the loop may block on the disk (the coordinator's state is
   * saved at once; the final snapshot), where its own timers cannot say
   * so: a thread of its own does, once the drain's time is past */
  psd_stop_watch_start(&m->watch, sh->me->id, (int64_t)sh->cfg->drain_timeout_ms + 5000,
                       !sh->store ? NULL /* an aggregator: nothing on disk, no watch */
                       : sh->wal && !m->wal_failed
                           ? "what the log acknowledged is on disk already: a kill loses none "
                             "of it"
                           : "the updates since the last flush are in memory only: a kill "
                             "loses them");
  psd_shard_set_state(sh, PSD_DRAINING, NULL);
  psd_shard_clock_stop(sh); /* parked pulls are answered: shutting down */
  psd_agg_drain(sh->agg);   /* held sums go to the roots now, waiting pulls are answered */
  uv_timer_stop(&m->flush_timer);
  uv_timer_stop(&m->watchdog_timer);
  psd_probe_stop(&m->probe); /* gRPC stops on purpose now */
  psd_grpc_stop_accepting(sh);
  psd_chan_stop_accepting(sh);
  m->drain_deadline_ms = uv_now(&m->loop) + sh->cfg->drain_timeout_ms;
  uv_timer_start(&m->drain_timer, psd_main_on_drain_timer, 0, 5);
}

/* psd_main_on_cert_timer says in the log, once each, that the TLS
 * certificate gRPC serves ends within a week, and that it has ended:
 * from then on every new client refuses the handshake ("certificate
 * verify failed") and nothing else here says why.  A reload starts over. */
static void psd_main_on_cert_timer(uv_timer_t *t) {
  psd_main *m = t->data;
  ps_errbuf eb;
  if (!m->sh.tls || m->cert_said == 2) return;
  if (ps_tls_server_expiry(m->sh.tls, 0, &eb) == 1) {
    ps_err("security.tls.cert: %s: clients refuse every new connection to this server "
           "(\"certificate verify failed\"); put a renewed certificate in place and send psd "
           "SIGHUP (README.md, \"Renewing certificates\")", eb.msg);
    m->cert_said = 2;
  } else if (m->cert_said == 0 && ps_tls_server_expiry(m->sh.tls, 7 * 86400, &eb) == 1) {
    ps_warn("security.tls.cert: %s: renew it and send psd SIGHUP before then (README.md, "
            "\"Renewing certificates\")", eb.msg);
    m->cert_said = 1;
  }
}

/* psd_main_reload reloads at SIGHUP what psd reads again there: the
 * channel keys (security.secret_file) and the TLS certificate, key and
 * CA gRPC serves to new connections.  A file that fails keeps the old. */
static void psd_main_reload(psd_main *m) {
  const ps_security_conf *sec = &m->sh.cfg->security;
  ps_errbuf eb;
  size_t n;
  if (!sec->secret_file && !m->sh.tls)
    ps_info("sighup: nothing to reload (no security.secret_file, no TLS); configuration "
            "unchanged");
  if (sec->secret_file && psd_chan_reload_keys(&m->sh, &n, &eb) < 0)
    ps_err("sighup: channel keys not reloaded, the old ones stay: %s", eb.msg);
  else if (sec->secret_file)
    ps_info("sighup: channel keys reloaded: %zu accepted", n);
  if (!m->sh.tls) return;
  if (psd_grpc_reload_tls(&m->sh, &eb) < 0) {
    ps_err("sighup: TLS certificate not reloaded, new connections still get the old one: %s",
           eb.msg);
    return;
  }
  ps_info("sighup: TLS certificate reloaded: '%s' (serial %s) and CA '%s' for new connections; "
          "open ones keep theirs", sec->tls.cert, ps_tls_server_serial(m->sh.tls), sec->tls.ca);
  m->cert_said = 0;
  psd_main_on_cert_timer(&m->cert_timer); /* a renewal that ends soon as well says so now */
}

static void psd_main_on_signal(uv_signal_t *s, int signum) {
  psd_main *m = s->data;
  if (signum == SIGHUP) psd_main_reload(m);
  else psd_main_drain(m, signum);
}

/* psd_main_handles starts signals, the flush timer, watchdog pings and
 * the redo log's stall check. */
static int psd_main_handles(psd_main *m) {
  static const int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
  for (int i = 0; i < 3; i++) {
    uv_signal_init(&m->loop, &m->sig[i]);
    m->sig[i].data = m;
    if (uv_signal_start(&m->sig[i], psd_main_on_signal, sigs[i]) < 0) return -1;
  }
  uv_timer_init(&m->loop, &m->flush_timer);
  uv_timer_init(&m->loop, &m->watchdog_timer);
  uv_timer_init(&m->loop, &m->wal_timer);
  uv_timer_init(&m->loop, &m->drain_timer);
  uv_timer_init(&m->loop, &m->cert_timer);
  m->flush_timer.data = m->watchdog_timer.data = m->drain_timer.data = m->wal_timer.data = m;
  m->cert_timer.data = m;
  if (m->sh.tls) {
    ps_errbuf eb; /* an end within a week was said at the start (psd_main_check_ends) */
    m->cert_said = ps_tls_server_expiry(m->sh.tls, 7 * 86400, &eb) == 1;
    uv_timer_start(&m->cert_timer, psd_main_on_cert_timer, 1000, 1000); /* a compare a second */
  }
  if (m->sh.wal) uv_timer_start(&m->wal_timer, psd_main_on_wal_timer, 1000, 1000);
  uint64_t iv = m->sh.cfg->flush_interval_ms ? m->sh.cfg->flush_interval_ms : 1000;
  if (m->sh.store) uv_timer_start(&m->flush_timer, psd_main_on_flush_timer, iv, iv);
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec >= 2000) {
    uint64_t ms = usec / 2000; /* ping at half the watchdog period */
    uv_timer_start(&m->watchdog_timer, psd_main_on_watchdog, ms, ms);
  }
  return 0;
}

/* psd_main_can_listen binds a socket to ADDR (host:port) and closes it:
 * 0, or PS_EUNAVAIL saying why (a port taken, an address not this
 * host's), so that a start that cannot serve says so before it opens (or
 * makes) the store, and more clearly than gRPC's bind does. */
static int psd_main_can_listen(const char *what, const char *addr, ps_errbuf *eb) {
  char host[256], port[16];
  int p;
  if (ps_addr_split(addr, host, sizeof host, &p, eb) < 0) return PS_ECONFIG;
  snprintf(port, sizeof port, "%d", p);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *ai = NULL;
  int g = getaddrinfo(host, port, &hints, &ai);
  if (g != 0)
    return ps_errf(eb, PS_EUNAVAIL, "cannot listen on %s address '%s': %s", what, addr,
                   gai_strerror(g));
  /* as gRPC does: one address the name resolves to that binds is enough */
  int why = 0, bound = 0;
  for (const struct addrinfo *a = ai; a && !bound; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol), one = 1;
    bound = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
            bind(fd, a->ai_addr, a->ai_addrlen) == 0;
    if (!bound && !why) why = errno;
    if (fd >= 0) close(fd);
  }
  freeaddrinfo(ai);
  if (bound) return 0;
  return ps_errf(eb, PS_EUNAVAIL, "cannot listen on %s address '%s': %s", what, addr,
                 strerror(why));
}

/* psd_main_store_exit: the exit status of a start that the store's ERR
 * ends: 2 for another cluster's or shard's store (PS_ECONFIG: the file
 * is wrong, and a retry cannot mend it: the unit's
 * RestartPreventExitStatus=2), else 1. */
static int psd_main_store_exit(int err) {
  return err == PS_ECONFIG ? 2 : 1;
}

/* psd_main_open opens the store and both listeners; 0, or 1 (2: see
 * psd_main_store_exit) after one clear log line. */
static int psd_main_open(psd_main *m) {
  psd_shard *sh = &m->sh;
  const ps_config *cfg = sh->cfg;
  ps_errbuf eb = {{0}};
  int err = psd_store_lock_dir(sh->me->data_dir, &m->dir_lock, &eb);
  if (err < 0) {
    psd_main_start_failed(m, err, "shard %u: cannot open the store: %s", sh->me->id, eb.msg);
    return 1;
  }
  if ((err = psd_main_can_listen("grpc", sh->me->grpc_addr, &eb)) < 0 ||
      (err = psd_main_can_listen("channel", sh->me->channel_addr, &eb)) < 0) {
    psd_main_start_failed(m, err, "shard %u: %s", sh->me->id, eb.msg);
    return 1;
  }
  uint32_t *ids = calloc(cfg->nshards, sizeof *ids);
  if (!ids) return 1;
  for (size_t i = 0; i < cfg->nshards; i++) ids[i] = cfg->shards[i].id;
  psd_store_opts o = {.dir = sh->me->data_dir, .cluster = cfg->cluster,
                      .renamed_from = m->renamed_from, .shard_index = sh->index, .shard_ids = ids,
                      .nshards = cfg->nshards, .chunk_elems = cfg->chunk_elems,
                      .max_bytes = ps_config_shard_budget(cfg)};
  /* the log's spare files (psd_wal invariant 6) go first: on a full disk
   * the store may need their space to open */
  char redo[4096];
  snprintf(redo, sizeof redo, "%s/redo", sh->me->data_dir);
  int nspare = psd_wal_remove_spares(redo);
  if (nspare) ps_debug("shard %u: %d spare redo log files removed", sh->me->id, nspare);
  sd_notify(0, "STATUS=opening store");
  psd_shard_set_state(sh, PSD_RECOVERING, NULL);
  err = psd_store_open(&sh->store, &o, &eb);
  free(ids);
  if (err < 0) {
    psd_main_start_failed(m, err, "shard %u: cannot open the store: %s (%s)", sh->me->id, eb.msg,
                          ps_strerror(err));
    return psd_main_store_exit(err);
  }
  /* the rows before the replay: the log may hold sparse pushes */
  if ((err = psd_shard_sparse_open(sh, &eb)) < 0) {
    psd_main_start_failed(m, err, "shard %u: cannot open the sparse tables: %s (%s)", sh->me->id,
                          eb.msg, ps_strerror(err));
    return 1;
  }
  if (psd_main_recover(m)) return 1;
  /* every update the shard holds is on disk now (the snapshot restored,
   * under sync the log replayed, synced and kept until the next one):
   * FLUSHED says so, not "never" until the first snapshot */
  if (!sh->last_flush_unix_ms) sh->last_flush_unix_ms = psd_main_unix_ms();
  if ((err = psd_shard_clock_start(sh, &eb)) < 0) {
    psd_main_start_failed(m, err, "shard %u: cannot make the clock table: %s", sh->me->id,
                          eb.msg);
    return 1;
  }
  sd_notify(0, "STATUS=starting listeners");
  if ((err = psd_grpc_start(sh, &eb)) < 0 || (err = psd_chan_start(sh, &eb)) < 0) {
    psd_main_start_failed(m, err, "shard %u: %s", sh->me->id, eb.msg);
    return 1;
  }
  return 0;
}

/* psd_main_open_agg starts the forward backend and both listeners of an
 * aggregator (no store, no clock table); 0, or 1 after one log line. */
static int psd_main_open_agg(psd_main *m) {
  psd_shard *sh = &m->sh;
  ps_errbuf eb = {{0}};
  psd_shard_set_state(sh, PSD_RECOVERING, NULL);
  int err = psd_agg_new(&sh->agg, sh->loop, sh->cfg, sh->agg_me, &eb);
  if (err == 0) err = psd_grpc_start(sh, &eb);
  if (err == 0) err = psd_chan_start(sh, &eb);
  if (err < 0) {
    psd_main_start_failed(m, err, "aggregator %s: %s", sh->agg_me->name, eb.msg);
    return 1;
  }
  return 0;
}

typedef struct psd_args {
  const char *config;
  const char *aggregator; /* NULL: a shard */
  const char *renamed_from; /* --rename-cluster OLD, or NULL */
  long shard; /* -1: none given */
  int test;
} psd_args;

/* psd_main_args parses argv; 0, or the exit code (0 for --help, 2). */
static int psd_main_args(int argc, char **argv, psd_args *a) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"shard", required_argument, 0, 's'},
                                       {"aggregator", required_argument, 0, 'a'},
                                       {"test", no_argument, 0, 't'},
                                       {"rename-cluster", required_argument, 0, 'R'},
                                       {"help", no_argument, 0, 'h'},
                                       {"version", no_argument, 0, 'V'},
                                       {0, 0, 0, 0}};
  static const char usage[] =
      "usage: psd --config FILE --shard N    serve shard N of the cluster file\n"
      "       psd --config FILE --aggregator NAME\n"
      "                                      run as aggregator NAME (the 'aggregators' list):\n"
      "                                      sum local workers' pushes, serve their pulls\n"
      "       psd -t|--test --config FILE [--shard N | --aggregator NAME]\n"
      "                                      check the configuration and exit\n"
      "       psd --config FILE --shard N --rename-cluster OLD\n"
      "                                      serve shard N whose store records cluster OLD\n"
      "                                      (the cluster was renamed in the file): the store\n"
      "                                      then records the file's name (also with -t --shard N:\n"
      "                                      check as if it did)\n"
      "       psd --version                   print the build (commit and its UTC date) and exit\n"
      "SIGTERM or SIGINT drains and stops the shard (a second one during its start ends it at\n"
      "once).  SIGHUP, once it serves (ignored while it starts), reloads security.secret_file\n"
      "and the TLS certificate, key and CA (security.tls: new connections get them); a file\n"
      "that fails keeps the old ones and logs why.\n"
      "Short forms: -c FILE (--config), -s N (--shard), -a NAME (--aggregator), -t (--test),\n"
      "-h (--help).\n"
      "Exit status: 0 stopped cleanly (or by a signal while starting; -t: the file is good),\n"
      "1 a runtime failure (the store, the redo log, a listener: the log says which; -t: its\n"
      "result line could not be written to stdout), 2 bad usage or configuration (a data_dir\n"
      "holding another cluster's or shard's store included).\n";
  a->config = NULL;
  a->shard = -1;
  a->aggregator = NULL;
  a->renamed_from = NULL;
  a->test = 0;
  int c, version = 0;
  while ((c = getopt_long(argc, argv, "c:s:a:th", opts, NULL)) != -1) {
    uint64_t id;
    ps_errbuf eb;
    switch (c) {
      case 'c':
        if (a->config || !*optarg) {
          ps_log_plain(LOG_ERR, "psd: %s\n",
                       a->config ? "--config given twice" : "--config wants a file");
          return 2;
        }
        a->config = optarg;
        break;
      case 's':
        if (a->shard >= 0) {
          ps_log_plain(LOG_ERR, "psd: --shard given twice\n");
          return 2;
        }
        if (ps_flag_uint("--shard", optarg, 0, UINT32_MAX, &id, &eb) < 0) {
          ps_log_plain(LOG_ERR, "psd: %s\n", eb.msg);
          return 2;
        }
        a->shard = (long)id;
        break;
      case 'a':
        if (a->aggregator) {
          ps_log_plain(LOG_ERR, "psd: --aggregator given twice\n");
          return 2;
        }
        a->aggregator = optarg;
        break;
      case 't': a->test = 1; break;
      case 'R':
        if (a->renamed_from || !ps_name_valid(optarg)) {
          ps_log_plain(LOG_ERR, "psd: %s\n", a->renamed_from ? "--rename-cluster given twice"
                       : "--rename-cluster wants the old cluster name (1-63 letters, digits, "
                         "'.', '_', '-')");
          return 2;
        }
        a->renamed_from = optarg;
        break;
      case 'h': fputs(usage, stdout); return -1;
      case 'V': version = 1; break;
      default: ps_log_plain(LOG_ERR, "%s", usage); return 2;
    }
  }
  if (version && optind < argc) { /* a script's typo must not read as a build */
    ps_log_plain(LOG_ERR, "psd: --version takes no argument, got '%s'\nsee 'psd --help'\n",
            argv[optind]);
    return 2;
  }
  if (version) {
    ps_version_print("psd");
    return -1;
  }
  const char *why = optind < argc ? "an argument that is no option"
                    : !a->config ? "--config FILE is required"
                    : a->shard >= 0 && a->aggregator ? "--shard and --aggregator exclude each other"
                    : a->renamed_from && a->shard < 0 ? "--rename-cluster needs --shard N"
                    : !a->test && a->shard < 0 && !a->aggregator
                        ? "--shard N or --aggregator NAME is required (or -t)"
                        : NULL;
  if (why) {
    ps_log_plain(LOG_ERR, "psd: %s%s%s\n%s", why, optind < argc ? ": " : "",
            optind < argc ? argv[optind] : "", usage);
    return 2;
  }
  return 0;
}

/* psd_main_check_agg checks what an aggregator of CFG needs besides the
 * shard's pair, the way it will use it: under TLS the worker pair, which
 * it presents to the roots for their models (GetModel; none while the
 * roots require a client certificate is refused as psw refuses it), and
 * a key of its role in the secret file, to prove to the roots.  Else its
 * workers would be the ones to fail, each pull "no root shard answered".
 * 0 or PS_ECONFIG / PS_EIO with the path in EB. */
static int psd_main_check_agg(const ps_config *cfg, ps_errbuf *eb) {
  const ps_security_conf *s = &cfg->security;
  int rc = 0;
  if (s->mode == PS_SEC_TLS && !s->tls.worker_cert && s->require_client_cert)
    return ps_errf(eb, PS_ECONFIG, "security.tls.worker_cert is not set, and the shards refuse "
                   "a client without a certificate (security.require_client_cert): an "
                   "aggregator asks the root shards for models with the worker pair");
  if (s->mode == PS_SEC_TLS && s->tls.worker_cert &&
      (rc = ps_tls_check_pair(s->tls.ca, s->tls.worker_cert, s->tls.worker_key, "worker_",
                              eb)) < 0) {
    ps_errbuf why = *eb;
    return ps_errf(eb, rc, "%s (security.tls.worker_cert and worker_key: an aggregator asks "
                   "the root shards for models with the worker pair)", why.msg);
  }
  if (s->secret_file) {
    ps_auth_keys k;
    const ps_auth_key *mine;
    rc = ps_auth_client_key(s->secret_file, PS_ROLE_AGGREGATOR, &k, &mine, eb);
    ps_auth_release(&k);
    if (rc < 0) {
      ps_errbuf why = *eb;
      return ps_errf(eb, rc, "%s (an aggregator proves a key of its role to the root shards)",
                     why.msg);
    }
  }
  return 0;
}

/* psd_main_check_security reads what the shard's security section names
 * (certificates, owner-only key and secret files) the way serving will,
 * and checks the shard's certificate and key (ps_tls_check); with AGGS
 * (an aggregator runs or is checked, or psd -t checks the whole file and
 * it names aggregators) also what an aggregator needs (psd_main_check_agg).
 * 0 or PS_ECONFIG / PS_EIO with the path in EB. */
static int psd_main_check_security(const ps_config *cfg, int aggs, ps_errbuf *eb) {
  const ps_security_conf *s = &cfg->security;
  int rc = 0;
  if (s->mode == PS_SEC_TLS) rc = ps_tls_check(s->tls.ca, s->tls.cert, s->tls.key, eb);
  if (rc == 0 && s->secret_file) {
    ps_auth_keys k;
    rc = ps_auth_load(&k, s->secret_file, eb);
    ps_auth_release(&k);
  }
  if (rc == 0 && aggs) rc = psd_main_check_agg(cfg, eb);
  return rc;
}

/* psd_main_check_ends warns, under TLS, of a certificate that ends within
 * 30 days: the shard's, the CA's (AGG: the worker pair's too, which an
 * aggregator presents to its roots), naming the file and the date.  An
 * ended one fails psd_main_check_security before this. */
static void psd_main_check_ends(const ps_config *cfg, const char *path, int agg) {
  const ps_tls_conf *t = &cfg->security.tls;
  if (cfg->security.mode != PS_SEC_TLS) return;
  const char *files[3] = {t->cert, t->ca, agg ? t->worker_cert : NULL};
  const char *keys[3] = {"cert", "ca", "worker_cert"};
  for (int i = 0; i < 3; i++) {
    ps_errbuf eb;
    if (files[i] && ps_tls_expiry(files[i], 30 * 86400, &eb) == 1)
      ps_log_plain(LOG_WARNING, "%s: warning: security.tls.%s: %s: renew it before then and "
                   "send psd SIGHUP (README.md, \"Renewing certificates\")\n", path, keys[i],
                   eb.msg);
  }
}

/* psd_main_check_names warns, under TLS, when the shards' certificate
 * does not name the gRPC host that clients dial: ME's, AGG's, or (psd -t
 * with neither) every shard's and aggregator's.  Their handshakes would
 * fail with gRPC's terse "peer name" error, far from the cause. */
static void psd_main_check_names(const ps_config *cfg, const char *path, const ps_shard_conf *me,
                                 const ps_agg_conf *agg) {
  if (cfg->security.mode != PS_SEC_TLS || !cfg->security.tls.cert) return;
  size_t n = 0;
  const char **addrs = calloc(cfg->nshards + cfg->naggs + 1, sizeof *addrs);
  if (!addrs) return;
  if (agg) addrs[n++] = agg->grpc_addr;
  else if (me) addrs[n++] = me->grpc_addr;
  else {
    for (size_t i = 0; i < cfg->nshards; i++) addrs[n++] = cfg->shards[i].grpc_addr;
    for (size_t i = 0; i < cfg->naggs; i++) addrs[n++] = cfg->aggs[i].grpc_addr;
  }
  ps_errbuf eb;
  if (ps_tls_check_hosts(cfg->security.tls.cert, addrs, n, &eb) < 0)
    ps_log_plain(LOG_WARNING, "%s: warning: security.tls.cert: %s\n", path, eb.msg);
  free(addrs);
}

/* psd_main_warn_plaintext warns when ME serves gRPC without TLS on an
 * address other hosts can reach, or an unauthenticated channel there: in
 * the log at start (PATH NULL), or, for psd -t (PATH the file's), on
 * stderr for ME or, ME NULL, for every shard and aggregator of CFG. */
static void psd_main_warn_plaintext(const ps_config *cfg, const char *path,
                                    const ps_shard_conf *me) {
  int open[2] = {cfg->security.mode != PS_SEC_TLS, !cfg->security.secret_file};
  const char *what[2] = {"gRPC control plane in plaintext (security.mode: none)",
                         "tensor channel without authentication (no security.secret_file)"};
  size_t n = me ? 1 : cfg->nshards + cfg->naggs;
  for (size_t k = 0; k < n; k++) {
    const char *addrs[2];
    if (me) addrs[0] = me->grpc_addr, addrs[1] = me->channel_addr;
    else if (k < cfg->nshards)
      addrs[0] = cfg->shards[k].grpc_addr, addrs[1] = cfg->shards[k].channel_addr;
    else
      addrs[0] = cfg->aggs[k - cfg->nshards].grpc_addr,
      addrs[1] = cfg->aggs[k - cfg->nshards].channel_addr;
    for (int i = 0; i < 2; i++) {
      /* loopback as an address, not as text: LOCALHOST and [0:0::1] are */
      if (!open[i] || ps_addr_loopback(addrs[i])) continue;
      if (path)
        ps_log_plain(LOG_WARNING, "%s: warning: the %s would be served on the non-loopback address "
                "'%s': anyone who reaches it may change the models\n", path, what[i], addrs[i]);
      else
        ps_warn("serving the %s on the non-loopback address '%s': anyone who reaches it may "
                "change the models", what[i], addrs[i]);
    }
  }
}

/* psd_main_serve runs shard ME of CFG (or, with AGG, aggregator AGG on
 * addresses ME) until it has drained; the exit code. */
static int psd_main_serve(psd_main *m, const ps_config *cfg, const ps_shard_conf *me,
                          const ps_agg_conf *agg) {
  psd_shard *sh = &m->sh;
  uv_loop_init(&m->loop);
  sh->agg_me = agg;
  sh->cfg = cfg;
  sh->me = me;
  sh->index = (uint32_t)(me - cfg->shards);
  sh->loop = &m->loop;
  sh->state = PSD_STARTING;
  sh->start_ms = uv_hrtime() / 1000000;
  m->extend_next_ms = PSD_MAIN_EXTEND_MS; /* the first: under TimeoutStartSec anyway */
  ps_ticker_start(&m->start_ticker, 250, psd_main_start_tick, m); /* none: no extensions */
  int code = sh->agg_me ? psd_main_open_agg(m) : psd_main_open(m);
  ps_ticker_stop(&m->start_ticker);
  if (code == 0 && psd_main_handles(m) < 0) {
    ps_err("cannot install signal handlers");
    code = 1;
  }
  ps_errbuf eb = {{0}};
  if (code == 0 && psd_probe_start(&m->probe, sh, &eb) < 0)
    ps_warn("%s; a gRPC listener that stops accepting will not be rebuilt", eb.msg);
  if (code == 0 && ps_stop_signal) { /* it came before the loop's handlers */
    uv_update_time(&m->loop);                /* (the drain's deadline) */
    psd_main_drain(m, ps_stop_signal);
    uv_run(&m->loop, UV_RUN_DEFAULT);
    code = m->exit_code;
  } else if (code == 0) {
    psd_shard_set_state(sh, PSD_SERVING, NULL);
    psd_shard_clock_serving(sh);
    if (sh->agg_me) {
      ps_info("aggregator %s serving %u local workers: grpc %s, channel %s, security %s, "
              "build %s", sh->agg_me->name, sh->agg_me->workers, me->grpc_addr,
              me->channel_addr, psd_shard_security_name(sh), ps_version());
      sd_notifyf(0, "READY=1\nSTATUS=aggregator %s", sh->agg_me->name);
    } else {
      ps_info("shard %u serving: grpc %s, channel %s, security %s, build %s", me->id,
              me->grpc_addr, me->channel_addr, psd_shard_security_name(sh), ps_version());
      sd_notifyf(0, "READY=1\nSTATUS=serving shard %u", me->id);
    }
    psd_main_warn_plaintext(cfg, NULL, me);
    uv_run(&m->loop, UV_RUN_DEFAULT);
    code = m->exit_code;
  } else {
    if (m->replay_stopped) code = 0; /* a stop asked for, not a failure */
    /* systemd hears why the start failed, or that it stops */
    if (code != 0 && m->start_errno)
      sd_notifyf(0, "STATUS=%s\nERRNO=%d", m->start_fail, m->start_errno);
    else if (code != 0)
      sd_notifyf(0, "STATUS=%s",
                 m->start_fail[0] ? m->start_fail : "the start failed: see the log");
    if (ps_stop_signal) sd_notify(0, "STOPPING=1");
    psd_grpc_stop(sh, 0);
    psd_wal_stop(sh->wal);
    if (sh->chan) psd_chan_close(sh);
    uv_walk(&m->loop, psd_main_close_walk, NULL);
    uv_run(&m->loop, UV_RUN_DEFAULT);
  }
  psd_clock_free(sh->clock);
  sh->clock = NULL;
  psd_shard_sparse_close(sh); /* first: its writer thread may be waiting on the log */
  psd_wal_free(sh->wal);
  sh->wal = NULL;
  psd_agg_stop(sh->agg);
  psd_agg_free(sh->agg);
  sh->agg = NULL;
  psd_store_close(sh->store);
  ps_tls_server_free(sh->tls); /* the last server that fetched from it is gone */
  sh->tls = NULL;
  if (m->dir_lock >= 0) close(m->dir_lock);
  uv_loop_close(&m->loop);
  return code;
}

int main(int argc, char **argv) {
  ps_proc_start(); /* first: fds 0-2 open, no signal blocked (ps_proc.h) */
  ps_grpc_env();   /* before any thread (ps_rpc.h) */
  mallopt(M_MMAP_THRESHOLD, 1 << 20); /* big freed buffers go back to the OS */
  /* ... but not the small ones every snapshot allocates and frees again
   * (RocksDB's block buffers, one chunk record each): at glibc's default
   * (128 KiB, fixed once the line above is set) an arena's free top went
   * back to the OS after each, and the flush thread spent most of its
   * time faulting the same pages in again (BENCHMARKS run 24). */
  mallopt(M_TRIM_THRESHOLD, 8 << 20);
  ps_fpu_flush_subnormals();          /* before any thread: they inherit it */
  /* A write to a peer that reset (channel reply, gRPC) must fail with
   * EPIPE on that connection, not kill the shard with unflushed updates. */
  signal(SIGPIPE, SIG_IGN);
  ps_log_init("psd", LOG_INFO);
  psd_args a;
  int code = psd_main_args(argc, argv, &a);
  if (code) return code < 0 ? ps_proc_flush_stdout("psd", "its output", 0) : code;
  /* a start: SIGTERM or SIGINT before the loop's handlers take over
   * (psd_main_handles; the store's open, the replay) stops the replay at
   * the next record it applies, or drains as soon as psd serves; SIGHUP
   * (a key reload) is ignored until the loop's handler takes it over */
  if (!a.test) ps_stop_install(1, 0);
  ps_config cfg;
  ps_errbuf eb = {{0}};
  if (ps_config_load(&cfg, a.config, &eb) < 0) {
    ps_log_plain(LOG_ERR, "%s\n", eb.msg);
    return 2;
  }
  if (cfg.warning[0]) ps_log_plain(LOG_WARNING, "%s\n", cfg.warning);
  const ps_shard_conf *me = a.shard >= 0 ? ps_config_shard(&cfg, (uint32_t)a.shard) : NULL;
  if (a.shard >= 0 && !me) {
    ps_log_plain(LOG_ERR, "%s: no shard with id %ld\n", a.config, a.shard);
    ps_config_release(&cfg);
    return 2;
  }
  /* an aggregator checks what it needs; psd -t with neither --shard nor
   * --aggregator checks the whole file, and warns of what its aggregators
   * would lack (a shard's host may not hold the worker pair they use) */
  if (psd_main_check_security(&cfg, a.aggregator != NULL, &eb) < 0) {
    ps_log_plain(LOG_ERR, "%s: security: %s\n", a.config, eb.msg);
    ps_config_release(&cfg);
    return 2;
  }
  if (a.test && !a.aggregator && a.shard < 0 && cfg.naggs > 0 && psd_main_check_agg(&cfg, &eb) < 0)
    ps_log_plain(LOG_WARNING, "%s: warning: security: %s; the aggregators started from this file "
                 "on this host would exit 2 (psd -t --aggregator NAME checks one)\n", a.config,
                 eb.msg);
  const ps_agg_conf *agg = a.aggregator ? ps_config_agg(&cfg, a.aggregator) : NULL;
  if (a.aggregator && !agg) {
    ps_log_plain(LOG_ERR, "%s: no aggregator named '%s' in the 'aggregators' list\n", a.config,
            a.aggregator);
    ps_config_release(&cfg);
    return 2;
  }
  psd_main_check_names(&cfg, a.config, me, agg);
  psd_main_check_ends(&cfg, a.config, agg != NULL);
  /* an aggregator serves on its own addresses, under an id no shard has */
  ps_shard_conf agg_addrs = {.id = UINT32_MAX, .grpc_addr = agg ? agg->grpc_addr : NULL,
                             .channel_addr = agg ? agg->channel_addr : NULL};
  if (agg) me = &agg_addrs;
  if (a.test) {
    psd_main_warn_plaintext(&cfg, a.config, agg || a.shard >= 0 ? me : NULL);
    /* the shard's own data_dir, on the host that checks it: a dangling
     * symlink there, or another cluster's or shard's store (a data_dir
     * copied from another file), fails the start */
    int err = 0;
    if (!agg && a.shard >= 0 && ((err = psd_store_dir_check(me->data_dir, &eb)) < 0 ||
                                 (err = psd_store_check_owner(me->data_dir, cfg.cluster,
                                                              a.renamed_from, me->id, &eb)) < 0))
      ps_log_plain(LOG_WARNING, "%s: warning: shard %ld's data_dir: %s: its start would fail "
                   "(exit %d)\n", a.config, a.shard, eb.msg, psd_main_store_exit(err));
    printf("%s: configuration ok (%zu shard%s, %zu aggregator%s)\n", a.config, cfg.nshards,
           cfg.nshards == 1 ? "" : "s", cfg.naggs, cfg.naggs == 1 ? "" : "s");
    ps_config_release(&cfg);
    /* a check whose verdict went nowhere is no check: exit 1 */
    return ps_proc_flush_stdout("psd", "the result line", 0);
  }
  /* Every descriptor the hard limit allows: gRPC core stops accepting for
   * good after one accept fails with EMFILE (psd_fd.h). */
  uint64_t before, after;
  if (psd_fd_raise_limit(&before, &after, &eb) < 0)
    ps_warn("cannot raise the open-files limit: %s", eb.msg);
  else if (after != before)
    ps_info("open-files limit raised from %llu to %llu", (unsigned long long)before,
            (unsigned long long)after);
  static psd_main m; /* static: zeroed, and large handles stay off the stack */
  m.dir_lock = -1;
  m.renamed_from = a.renamed_from;
  code = psd_main_serve(&m, &cfg, me, agg);
  ps_config_release(&cfg);
  return code;
}
