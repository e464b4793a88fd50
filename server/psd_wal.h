/* psd_wal: the redo log behind `durability: mode: sync` — checksummed
 * records appended by the loop thread, written and fdatasync'ed in groups
 * by one writer thread, replayed at start after the last snapshot.
 *
 * Files: DIR/<first seq, 16 hex digits>.log, "segments"; each a sequence
 * of records, each record
 *     u32 len | u32 crc | u64 seq | len payload bytes      (little-endian)
 * where crc is the CRC-32C (ps_crc32c.h) of the len field, seq and the
 * payload when the len field's top bit is set (the payload's length is
 * the lower 31 bits), and zlib's CRC-32 of them when it is clear: the
 * format of versions before CRC-32C, whose logs replay unchanged; this
 * version writes only the first.  Sequence numbers start at 1 and grow
 * by 1 per record, across segments.  A record of seq 2^64 - 1 is a skip
 * record (zeros, checksummed like any other): padding that replay steps
 * over (invariant 8); logs without them replay as before.  DIR/id holds
 * the log's id (psd_wal_id), which the store keeps too.
 *
 * Invariants:
 *  1. Records are written in seq order at the end of the current segment,
 *     and a record's waiters run only after an fdatasync that covered it
 *     returned 0 (psd_wal_opts.sync is the seam tests use to check it).
 *  2. Group commit: the writer takes every record appended while it was
 *     writing or syncing (at most group_commit_max_bytes, at least one
 *     record), after waiting up to group_commit_max_wait_us for more when
 *     fewer bytes are there; one write and one fdatasync per group.
 *  3. A failed write or sync keeps the group: the writer retries it (from
 *     the last synced offset, cutting off whatever the failed attempt left)
 *     every retry_ms until it succeeds or the log is stopped.  Meanwhile
 *     psd_wal_waiting waiters are answered with the error (their records
 *     stay queued and are written by a later retry: the log always holds
 *     every record appended, so it matches what the caller applied).
 *  4. Segments before the current one are fully synced; each holds the
 *     records from its first (its name) to the next one's first - 1, and
 *     whatever follows them in the file (a reused file's old bytes, an
 *     O_DIRECT write's zeros) is no part of the log; so the replay does
 *     not read one whose records a snapshot all holds, as the next one's
 *     name says once its first record shows that the roll to it
 *     completed (a spare renamed by a roll that failed holds older
 *     records, invariant 6).  A segment is
 *     deleted (or kept as a spare, invariant 6) only when
 *     psd_wal_truncate said that a finished snapshot holds all its
 *     records; each truncate request also rolls the current segment (when
 *     it holds records), so the log stays about two snapshot intervals
 *     long.
 *  5. Replay: records of the last segment after the first one that is
 *     short or fails its checksum are a torn tail (never acknowledged):
 *     they are counted (every seq from the next one to the last intact
 *     record of ours after the bad bytes, those whose headers the damage
 *     took included; with none after, the bad one when its header carries
 *     the next seq or was cut short; the intact ones are records of the next
 *     seq or later at any byte offset, since the bad header's length may
 *     be the damage; a candidate's checksum is computed when it follows
 *     a record found, or is followed by the file's end, zeros or a next
 *     or skip header, or else carries the CRC-32C flag; each check costs
 *     about 2 KiB whatever the length field claims, from checksums of the
 *     segment's prefixes, so a reused file's older bytes, however many
 *     candidates they hold, never cut the search short: wal_count_after),
 *     logged and cut off; but when a
 *     group after the bad record's was written, the bad record was synced
 *     (a group is written only once the one before is synced): refused
 *     (PS_EIO), nothing cut.  Each group's write ends in its end mark, a
 *     skip record (invariant 8) whose payload is a magic, the segment's
 *     first seq, the offset where the group starts and its first record's
 *     seq (group_commit_max_bytes counts it); a mark of this segment for a
 *     group that starts after the bad record's (which starts where the
 *     last mark before it ends), or an intact record of ours after the
 *     bad record's own group's mark, says a later group was written (a
 *     reused file's older marks name another segment).  A file cut short
 *     after it was written (no crash does that) reads as a torn tail too:
 *     nothing left in it tells, and the warning says it may be one.
 *     Without marks (a
 *     log written before them, or the marks damaged too), when
 *     intact records follow the bad one over more than max_batch_bytes,
 *     an eighth and 16 KiB (one group of two records or more holds at
 *     most that, with the skip records of invariant 8, and the next is
 *     written only after its sync), it was synced: refused (PS_EIO),
 *     nothing cut.  In a
 *     segment before the last that the replay reads (invariant 4), the
 *     first record that is bad or does not follow the
 *     one before ends its records (what follows is not read, invariant 4);
 *     a bad first record there, a gap in the sequence after FROM (also
 *     where a segment's records ended early: the message says where; a
 *     segment named past the record needed next is one, whether or not it
 *     holds any record), or a log that starts after FROM + 1 is refused
 *     (PS_EIO) with a message saying which.
 *     Before all that, damaged bytes where records may follow (in the last
 *     segment, or in one whose records end before the next segment's
 *     first) are stepped over, with a warning, to the first intact record
 *     of ours after them when it holds the next seq (they were a skip
 *     record or an end mark: no record is missing; its record may never
 *     have been acknowledged, like any record a crash between write and
 *     sync leaves intact) or the snapshot holds every record before it
 *     (its seq at most FROM + 1).
 *     In the last segment an intact record older than the segment's first
 *     (a reused file's old bytes, invariant 6) ends the records cleanly:
 *     cut off, nothing dropped; a segment of any position that starts with
 *     one holds no record (a reused file no write reached) and is removed
 *     (when read: one the snapshot holds is dropped after the start anyway).
 *     Every segment the replay reads is fdatasync'ed before its records
 *     are applied: a crash between a group's write and its sync leaves
 *     records that only the page cache holds, which the replay applies
 *     and what follows builds on (new records: the crash loop's simulated
 *     power cut found this; sparse rows evicted to RocksDB meanwhile).
 *  6. Reuse: up to eight deleted segments are renamed DIR/<old first>.free
 *     instead of unlinked, and a roll renames the largest to the new
 *     segment's name and overwrites it from offset 0: an fdatasync of
 *     blocks the file already has need not commit a new file size (on
 *     ext4 about twice the syncs per second of appending, measured).  So
 *     no file is cut at a roll (a cut file would be appended to again when
 *     reused): a segment before the last ends its records where the next
 *     one starts (invariant 4), and in the last one the bytes after its
 *     records are records older than its name (or garbage within one,
 *     read as a torn tail).  Spares are only kept for speed: they are
 *     removed when a write or sync of the log fails, when the shard's
 *     snapshot fails (psd_wal_drop_spares), and at every start before the
 *     store opens (psd_wal_remove_spares), so that on a full disk they
 *     never hold space the log, a snapshot or RocksDB needs.
 *
 *  7. Writes bypass the page cache (O_DIRECT) where the filesystem allows
 *     it: the kernel's copy of every record into the page cache and its
 *     writeback cost the demo's shard more CPU than anything else in the
 *     log (the fdatasync that follows each write stays: it flushes the
 *     disk's cache and commits what metadata changed).  Buffers are
 *     WAL_ALIGN (4 KiB) aligned; a group is written from the start of
 *     the block holding the segment's end, the block's bytes before it
 *     (kept in memory from the last group) rewritten unchanged, the
 *     records followed by zeros to a whole block.  So a segment may end
 *     in zeros after its records: in the last one read by the replay as
 *     bytes that are no record (cut off, nothing dropped; a clean stop
 *     cuts them off first), in an earlier one not read (invariant 4).
 *     Where open or the first write says EINVAL (some tmpfs versions,
 *     network or FUSE filesystems) the log says so once and writes
 *     buffered (the crash loop runs a third of its starts so).
 *  8. Zero copy (psd_wal_append_own): a record's last piece of at least
 *     WAL_ZC_MIN (64 KiB) bytes, WAL_ALIGN-aligned in a block the caller
 *     hands over, is never copied: the loop thread checksums the
 *     record, the piece where it lies, and copies only the record's head;
 *     the writer writes the piece's whole blocks straight from it
 *     (pwritev), a skip record
 *     placed before the record so that the piece starts on a block of
 *     the file; the piece's last partial block is copied with the
 *     records after it.  A segment's first record is copied whole, so no
 *     segment starts with a skip record: versions before skip records
 *     refuse a log that holds one (its seq is not the next one) instead
 *     of taking a segment that starts with one for a torn one; since
 *     every group ends in an end mark (a skip record, invariant 5), they
 *     refuse every log this version writes.  The
 *     block is the log's until the group that holds the record is
 *     written and synced (a failed attempt is
 *     retried from it, invariant 3); then the writer lists it as done,
 *     and a later psd_wal_append_own (loop thread) gives it to its
 *     caller, keeps up to four, and frees the others.  The writer never
 *     frees or writes a block: the caller still reads it on the loop
 *     thread after handing it over (a push is applied from it once
 *     logged), until it returns to the loop.  A block may also be lent
 *     (ps_lend: a client's shared memory, psd_chan invariant 11): taken
 *     the same way, with hold, but released to its lender instead of
 *     given back, from the writer thread once its group is synced (or by
 *     psd_wal_free); the lender's client leaves it unchanged until the
 *     push is answered.  Since a failed write or sync answers the pushes
 *     it held (PS_EDEGRADED), the writer first copies every lent piece
 *     it still has into a block of its own and releases it (the retries
 *     write the copy), and a failing log copies instead of taking a
 *     lent block.  A piece it finds no memory to copy stays lent, and
 *     its push and the later ones are not answered until a later
 *     attempt copies it or a retry syncs it.
 *
 *  9. Space: the log must not take the disk space that the snapshot
 *     freeing it needs (the snapshot waits for the log's sync of what it
 *     holds, psd_store invariant 11, so a log that filled the disk would
 *     stay stuck until an operator freed space).  Before each group, and
 *     every retry_ms while short, the writer looks at the filesystem's
 *     free space: under the reserve (psd_wal_set_reserve, at most a
 *     quarter of the filesystem) the log is short: it says so through
 *     on_state like a failure (the shard refuses new pushes, DEGRADED)
 *     but goes on writing the records it holds, into the reserve, so the
 *     next snapshot can be taken and the log cut; spares are dropped and
 *     none kept meanwhile.  Back above the reserve and a quarter more, it
 *     works again (on_state 0); meanwhile on_state says each new figure
 *     of the free space (in MiB, one decimal).  A write that fails
 *     anyway (ENOSPC) is a failure as in invariant 3.
 *
 * Threads: psd_wal_append, _wait, _cancel, _truncate, _stats, _stop run
 * on the loop thread; waiters are called there (from a uv_async). */
#ifndef PSD_WAL_H
#define PSD_WAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "ps_error.h"
#include "ps_req.h"
#include "psd_done.h"

typedef struct psd_wal psd_wal;

/* The fdatasync seam: returns 0 or -1 with errno.  ARG is opts.sync_arg. */
typedef int psd_wal_sync_fn(int fd, void *arg);

/* psd_wal_state_fn: the log failed (ERR < 0, MSG says why) or works again
 * (ERR 0); called again with the same ERR when only MSG changes (the free
 * space of a log short of it, invariant 9).  Loop thread. */
typedef void psd_wal_state_fn(void *arg, int err, const char *msg);

typedef struct psd_wal_opts {
  const char *dir;            /* created when missing (its parent must exist) */
  uint64_t max_batch_bytes;   /* group_commit_max_bytes */
  uint32_t max_wait_us;       /* group_commit_max_wait_us */
  uint32_t retry_ms;          /* between attempts after a failure; 0: 1000 */
  uint64_t segment_bytes;     /* roll at this size; 0: 64 MiB */
  psd_wal_state_fn *on_state; /* may be NULL */
  void *arg;
  psd_wal_sync_fn *sync;      /* NULL: fdatasync */
  void *sync_arg;
  /* the copy of a lent piece a failure makes (invariant 8): 0 and *P (N
   * bytes, 4 KiB-aligned, for free) or nonzero; NULL: posix_memalign.
   * ARG is sync_arg.  A test seam, as sync is. */
  int (*copy_alloc)(void **p, size_t n, void *arg);
  int buffered;               /* 1: never O_DIRECT (invariant 7; tests) */
  uint64_t reserve_bytes;     /* free space kept on the log's filesystem (invariant 9);
                               * 0: none; psd_wal_set_reserve changes it */
} psd_wal_opts;

/* A push waiting for its record's sync; the caller owns the struct, sets
 * done.fn and done.arg, and keeps it alive until done.fn ran or
 * psd_wal_cancel.  It finishes (psd_done.h) once, on the loop thread,
 * with 0 (synced) or a PS_E* code and a message. */
typedef struct psd_wal_waiter {
  psd_done done;
  uint64_t seq;
  struct psd_wal_waiter *prev, *next; /* the log's list (psd_wal's own) */
} psd_wal_waiter;

typedef struct psd_wal_stats {
  uint64_t bytes;          /* of its records, every segment (a reused segment
                            * file and the spares take more of the disk) */
  uint64_t syncs;          /* fdatasyncs that succeeded */
  uint64_t records;        /* records synced */
  uint64_t last_seq;       /* last appended */
  uint64_t synced_seq;     /* last synced */
  uint64_t replayed;       /* records the last replay applied */
  uint64_t replay_last;    /* the last record it found, applied or not (0: none;
                            * of a segment it did not read: the one before
                            * the next segment's first) */
  uint64_t replay_dropped; /* torn-tail records it cut off */
  uint64_t replay_skipped; /* segments it did not read: the snapshot held them */
  uint64_t replay_ms;      /* how long it took */
  int replay_scan_cut;     /* its search for intact records after a bad one
                            * ended early (wal_count_after's budget: bytes
                            * that look like records at nearly every offset) */
  int replay_refused;      /* it refused the log's records (corrupt or missing
                            * ones), not for a system call's failure (a
                            * segment it could not read, sync or cut) nor
                            * FN's: a log damaged, not one unreadable */
  uint64_t write_us;       /* the writer's time in pwrite, all groups */
  uint64_t sync_us;        /* its time in fdatasync, all groups */
  uint64_t loop_us;        /* the loop thread's time inside psd_wal_append,
                            * _wait and the completion before the waiters'
                            * callbacks (checksumming and copying records
                            * in, the mutex) */
  uint64_t loop_max_us;    /* the longest single one */
  uint64_t lock_us;        /* of loop_us: waiting for the writer's mutex
                            * (the loop's stall on the writer) */
  uint64_t lock_max_us;    /* the longest single wait */
  int failed;              /* a write or sync is failing now */
  uint64_t busy_ms;        /* how long the writer's disk work in flight (a write
                            * + fdatasync, spares dropped, a segment cut or
                            * made) has run (0: none; a disk that does not
                            * answer shows here and in psd's log,
                            * psd_main_on_wal_timer) */
} psd_wal_stats;

/* psd_wal_open reads DIR's segments (no thread yet).  0, or PS_EIO /
 * PS_ENOSPC / PS_ENOMEM / PS_EINVAL with a message naming DIR; the caller
 * frees *OUT with psd_wal_free. */
int psd_wal_open(psd_wal **out, const psd_wal_opts *o, ps_errbuf *eb);

/* psd_wal_replay_fn applies one record; 0 or a PS_E* code (replay stops). */
typedef int psd_wal_replay_fn(void *arg, uint64_t seq, const uint8_t *p, size_t len,
                              ps_errbuf *eb);

/* psd_wal_replay calls FN for every record after FROM (the seq the last
 * snapshot holds), in order, then cuts a torn tail off (invariant 5) and
 * sets the next seq to after max(FROM, the last record).  A segment before
 * the last whose records the snapshot all holds (the next segment's first
 * at most FROM + 1, and that segment's first record intact and of that
 * seq) is not read.  Returns 0 or the refusal / FN's error. */
int psd_wal_replay(psd_wal *w, uint64_t from, psd_wal_replay_fn *fn, void *arg, ps_errbuf *eb);

/* psd_wal_discard removes every segment (and spare) of a log that is not
 * started, or is stopped (psd_wal_stop), after a snapshot took in what it
 * held; the next seq it gives is after max(its last record, ABOVE).  0 or
 * PS_EIO. */
int psd_wal_discard(psd_wal *w, uint64_t above, ps_errbuf *eb);

/* psd_wal_start opens a fresh segment and starts the writer thread and
 * the loop's wake-up handle.  0 or PS_EIO/PS_ENOSPC with a message. */
int psd_wal_start(psd_wal *w, uv_loop_t *loop, ps_errbuf *eb);

/* psd_wal_append queues one record of the bytes of IOV (NIOV pieces, copied)
 * and writes its seq to *SEQ.  0, or PS_ENOMEM / PS_ETOOBIG (2 GiB or more)
 * / PS_ESHUTDOWN (stopped); nothing is queued on error. */
int psd_wal_append(psd_wal *w, const struct iovec *iov, int niov, uint64_t *seq, ps_errbuf *eb);

/* psd_wal_append_own: psd_wal_append, but when OWN is not NULL and *OWN is
 * a malloc'd block (*OWN_CAP bytes) that holds IOV's last piece, the log
 * may take the block instead of copying that piece (invariant 8: when
 * the piece is at least 64 KiB and starts WAL_ALIGN-aligned; the writer
 * writes it from there) and then gives the caller a block it took
 * earlier and no longer needs in its place, or NULL (*OWN_CAP 0); else
 * *OWN stays the caller's.  A block taken stays readable and unchanged
 * until the caller's next call (the push is applied from it meanwhile).
 * With LEND (not NULL), *OWN is lent, not given: the log may read the
 * piece from there (holding and releasing it under LEND's rules, which
 * must stay valid until the release), and *OWN, *OWN_CAP stay as they
 * are. */
int psd_wal_append_own(psd_wal *w, const struct iovec *iov, int niov, void **own,
                       size_t *own_cap, const ps_lend *lend, uint64_t *seq, ps_errbuf *eb);

/* psd_wal_wait: 0 when record WT->seq is synced already (WT unused), 1
 * when WT is queued (its fn runs later), or PS_EDEGRADED with a message
 * while the log is failing. */
int psd_wal_wait(psd_wal *w, psd_wal_waiter *wt, ps_errbuf *eb);

/* psd_wal_cancel unlinks a queued WT; its fn will not run. */
void psd_wal_cancel(psd_wal *w, psd_wal_waiter *wt);

/* psd_wal_wait_synced blocks the calling thread (any: the writer never
 * needs the loop) until every record up to SEQ is synced: 0, or
 * PS_EDEGRADED at once while writes fail, or PS_ESHUTDOWN when the writer
 * stopped short of SEQ.  A snapshot waits here before it may hold a
 * record (psd_store invariant 11).  A wait of 5 s and more is said in the
 * log, again at each doubling (a disk that does not answer). */
int psd_wal_wait_synced(psd_wal *w, uint64_t seq, ps_errbuf *eb);

/* psd_wal_truncate: a finished snapshot holds every record up to SEQ
 * (invariant 4); the writer deletes what it can. */
void psd_wal_truncate(psd_wal *w, uint64_t seq);

/* psd_wal_drop_spares: the disk failed a write elsewhere (a snapshot):
 * the writer removes the spare files at its next turn (invariant 6). */
void psd_wal_drop_spares(psd_wal *w);

/* psd_wal_remove_spares removes DIR's spare files (invariant 6) before a
 * log is opened there; returns how many (0 when DIR does not exist). */
int psd_wal_remove_spares(const char *dir);

void psd_wal_stats_get(psd_wal *w, psd_wal_stats *st);

/* psd_wal_stop writes and syncs what is queued (unless failing), stops
 * the writer, answers waiters still queued with PS_ESHUTDOWN and closes
 * the wake-up handle (the loop must run once more before psd_wal_free).
 * Safe to call twice or before psd_wal_start. */
void psd_wal_stop(psd_wal *w);

/* psd_wal_free closes the files and frees W.  NULL is fine. */
void psd_wal_free(psd_wal *w);

/* psd_wal_has_records: 1 when DIR holds a non-empty segment (a log to
 * replay) or a spare (invariant 6: removed by psd_wal_discard), 0 when
 * not or when DIR does not exist. */
int psd_wal_has_records(const char *dir);

/* psd_wal_id reads the log's id (DIR/id, "psd redo log <16 hex digits>",
 * which versions before ids ignore): *ID 0 when there is none (a new
 * log, or one written before ids); 0 or PS_EIO for a file that is not
 * such an id.  psd_wal_set_id writes ID there (atomically: a temporary
 * file synced and renamed, the directory synced); 0 or an error.  The
 * store keeps the same id (psd_store_log_id), so a start can tell its
 * own log from another store's (psd_main). */
int psd_wal_id(psd_wal *w, uint64_t *id, ps_errbuf *eb);
/* psd_wal_nonempty: 1 when the opened log has a segment file with bytes
 * (spares do not count), else 0; before the replay. */
int psd_wal_nonempty(const psd_wal *w);
/* psd_wal_set_reserve sets the free space the log keeps on its
 * filesystem (invariant 9) to BYTES, at most a quarter of the
 * filesystem's size.  Any thread. */
void psd_wal_set_reserve(psd_wal *w, uint64_t bytes);
/* psd_wal_short_msg writes to BUF (N bytes) why a log in DIR is short of
 * space (invariant 9): AVAIL bytes free, under RESERVE.  Both in MiB with
 * one decimal, the free space rounded down and the reserve up, so that
 * the message never says "3.0 MiB free, under the 3.0 MiB kept". */
void psd_wal_short_msg(char *buf, size_t n, const char *dir, uint64_t avail, uint64_t reserve);

/* psd_wal_dir: the log's directory (psd_wal_opts.dir). */
const char *psd_wal_dir(const psd_wal *w);
int psd_wal_set_id(psd_wal *w, uint64_t id, ps_errbuf *eb);

#endif
