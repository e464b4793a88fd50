/* Tests for psd_wal (the redo log of durability sync) and the store's
 * replay through it:
 *  - every waiter runs after an fdatasync that covered its record (the
 *    sync seam records the file's size at each sync), groups stay within
 *    group_commit_max_bytes and share syncs;
 *  - a simulated power cut (the file cut back to what the last sync
 *    covered, plus garbage) loses no acknowledged record;
 *  - torn tail, corrupt tail, empty log, a log that starts after the
 *    snapshot, a corrupt record in an earlier segment, or in the last one
 *    with more than a group's bytes of intact records after it: recovered
 *    or refused with a clear message;
 *  - segments reused after a snapshot: their old records are never
 *    replayed, nothing is counted as dropped;
 *  - both record formats: CRC-32 (logs of versions before CRC-32C) and
 *    CRC-32C records replay, in one log; a flipped format flag is a
 *    checksum mismatch;
 *  - zero copy (invariant 8): copied and taken pieces mixed in groups
 *    replay exactly; a torn tail inside a taken piece or inside a skip
 *    record is cut; a taken block is given back only after its group's
 *    sync succeeded (held and failed syncs), and stays readable, unchanged,
 *    until the caller's next append (the push is applied from it);
 *  - the store: pushes (Adam, staleness weighting) logged, a snapshot in
 *    the middle, the log truncated, a crash (no final flush), replay: the
 *    state is bit for bit the pre-crash one; a log whose snapshot is gone
 *    is refused. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <linux/capability.h>
#include <zlib.h>

#include "ps_crc32c.h"
#include "ps_model.h"
#include "psd_store.h"
#include "psd_wal.h"
#include "ps_test.h"

/* ---- the sync seam ------------------------------------------------------------ */

typedef struct seam {
  uint64_t synced_size;   /* file size at the last sync */
  uint64_t prev_size;
  uint64_t max_group;     /* largest growth between two syncs */
  uint64_t syncs;
  int fail;               /* > 0: fail this many syncs with EIO */
  int hold_ms;            /* > 0: the next sync first sleeps this long (a disk not answering) */
} seam;

static int seam_sync(int fd, void *arg) {
  seam *s = arg;
  struct stat st;
  if (s->fail > 0) {
    s->fail--;
    errno = EIO;
    return -1;
  }
  if (s->hold_ms > 0) {
    usleep((useconds_t)s->hold_ms * 1000);
    s->hold_ms = 0;
  }
  usleep(1000); /* a slow disk: appends pile up behind the sync */
  if (fdatasync(fd) < 0 || fstat(fd, &st) < 0) return -1;
  /* the seam runs on the writer thread; the waiters read it on the loop
   * after the writer published the sync under its mutex */
  uint64_t size = (uint64_t)st.st_size;
  if (size < s->prev_size) s->prev_size = 0; /* a new segment */
  if (size - s->prev_size > s->max_group) s->max_group = size - s->prev_size;
  s->prev_size = size;
  __atomic_store_n(&s->synced_size, size, __ATOMIC_RELEASE);
  s->syncs++;
  return 0;
}

typedef struct waiter {
  psd_wal_waiter wt;
  uint64_t end;           /* the record's end offset in the segment */
  seam *sm;
  int status, done, covered;
} waiter;

static void waiter_done(psd_done *d, int status, const char *msg) {
  (void)msg;
  waiter *w = d->arg;
  w->status = status;
  w->done = 1;
  w->covered = __atomic_load_n(&w->sm->synced_size, __ATOMIC_ACQUIRE) >= w->end;
}

/* 1: logs written buffered (psd_wal invariant 7: where O_DIRECT is
 * refused); the loop tests run with 0 (O_DIRECT where the test's
 * filesystem allows it) and 1. */
static int wal_buffered;

static psd_wal *wal_open(const char *dir, uint64_t max_bytes, seam *sm) {
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = max_bytes, .retry_ms = 20,
                    .sync = sm ? seam_sync : NULL, .sync_arg = sm, .buffered = wal_buffered};
  psd_wal *w;
  ps_errbuf eb;
  int rc = psd_wal_open(&w, &o, &eb);
  ck_assert_msg(rc == 0, "%s", eb.msg);
  return w;
}

/* run_until runs LOOP until every one of N waiters is done (bounded). */
static void run_until(uv_loop_t *loop, waiter *ws, size_t n) {
  int64_t end = ps_test_now_ms() + 20000;
  for (;;) {
    size_t done = 0;
    for (size_t i = 0; i < n; i++) done += ws[i].done;
    if (done == n) return;
    ck_assert_msg(ps_test_now_ms() < end, "waiters not done: %zu of %zu", done, n);
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(200);
  }
}

#define WAL_HDR_TEST 16 /* a record's header (psd_wal.h) */

typedef struct replayed {
  uint64_t n, first, last;
  int bad;
} replayed;

/* count_rec checks record payloads: byte i of record seq is (seq + i) & 0xff. */
static int count_rec(void *arg, uint64_t seq, const uint8_t *p, size_t len, ps_errbuf *eb) {
  (void)eb;
  replayed *r = arg;
  for (size_t i = 0; i < len; i++)
    if (p[i] != (uint8_t)(seq + i)) r->bad = 1;
  if (!r->n) r->first = seq;
  r->last = seq;
  r->n++;
  return 0;
}

static void fill(uint8_t *b, size_t len, uint64_t seq) {
  for (size_t i = 0; i < len; i++) b[i] = (uint8_t)(seq + i);
}

/* append_n appends N records of LEN bytes and queues waiters for them. */
static void append_n(psd_wal *w, waiter *ws, size_t n, size_t len, seam *sm, uint64_t *off) {
  uint8_t *b = malloc(len);
  for (size_t i = 0; i < n; i++) {
    uint64_t seq;
    ps_errbuf eb;
    /* the seq is known only after the append: fill with the next one */
    psd_wal_stats st;
    psd_wal_stats_get(w, &st);
    fill(b, len, st.last_seq + 1);
    struct iovec iov = {b, len};
    ck_assert_int_eq(psd_wal_append(w, &iov, 1, &seq, &eb), 0);
    ck_assert_uint_eq(seq, st.last_seq + 1);
    *off += 16 + len;
    ws[i] = (waiter){.wt = {.done = {.fn = waiter_done, .arg = &ws[i]}, .seq = seq}, .end = *off,
                     .sm = sm};
    int rc = psd_wal_wait(w, &ws[i].wt, &eb);
    /* a sync the seam failed before this wait: refused at once */
    if (rc == PS_EDEGRADED && sm) {
      waiter_done(&ws[i].wt.done, rc, eb.msg);
      continue;
    }
    ck_assert_int_ge(rc, 0);
    if (rc == 0) waiter_done(&ws[i].wt.done, 0, NULL);
  }
  free(b);
}

/* replay_stats replays DIR's log after FROM into R (count_rec), its
 * stats into ST; the replay's return code. */
static int replay_stats(const char *dir, uint64_t from, replayed *r, psd_wal_stats *st,
                        ps_errbuf *eb) {
  psd_wal *w = wal_open(dir, 1 << 20, NULL);
  memset(r, 0, sizeof *r);
  int rc = psd_wal_replay(w, from, count_rec, r, eb);
  psd_wal_stats_get(w, st);
  psd_wal_free(w);
  return rc;
}

static uint64_t replay_count(const char *dir, uint64_t from, replayed *r, int expect_rc,
                             ps_errbuf *eb) {
  psd_wal_stats st;
  int rc = replay_stats(dir, from, r, &st, eb);
  ck_assert_msg(rc == expect_rc, "replay: %d (%s), want %d", rc, rc ? eb->msg : "", expect_rc);
  ck_assert_int_eq(r->bad, 0);
  return st.replay_dropped;
}

/* only_segment returns the path of DIR's newest non-empty segment. */
static char *newest_segment(const char *dir) {
  DIR *d = opendir(dir);
  ck_assert_ptr_nonnull(d);
  struct dirent *e;
  char best[300] = "";
  while ((e = readdir(d)) != NULL) {
    struct stat st;
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (strstr(e->d_name, ".log") && stat(p, &st) == 0 && st.st_size > 0 &&
        strcmp(e->d_name, best) > 0)
      snprintf(best, sizeof best, "%s", e->d_name);
  }
  closedir(d);
  ck_assert_msg(best[0], "no segment in '%s'", dir);
  char *out = malloc(1100);
  snprintf(out, 1100, "%s/%s", dir, best);
  return out;
}

/* seg_rec returns the offset of segment SEG's record K (0 the first;
 * skip records and groups' end marks, psd_wal invariants 5 and 8, not
 * counted): groups end in marks, so records do not lie back to back. */
static off_t seg_rec(const char *seg, int k) {
  size_t n;
  uint8_t *b = (uint8_t *)ps_test_read_file(seg, &n);
  size_t off = 0;
  for (int i = 0; off + 16 <= n; ) {
    uint32_t len;
    uint64_t seq;
    memcpy(&len, b + off, 4);
    memcpy(&seq, b + off + 8, 8);
    if (seq != UINT64_MAX && i++ == k) break;
    off += 16 + (len & 0x7fffffffu);
  }
  free(b);
  ck_assert_msg(off + 16 <= n, "segment '%s' has no record %d", seg, k);
  return (off_t)off;
}

/* seg_last_group returns the index (as seg_rec counts) of segment SEG's
 * first record in its last group: groups are cut where the writer woke,
 * so a test that damages a record "in the last group" finds it here. */
static int seg_last_group(const char *seg) {
  size_t n;
  uint8_t *b = (uint8_t *)ps_test_read_file(seg, &n);
  int recs = 0, marks[2] = {0, 0}; /* records before the last two marks */
  for (size_t off = 0; off + 16 <= n;) {
    uint32_t len;
    uint64_t seq, magic = 0;
    memcpy(&len, b + off, 4);
    memcpy(&seq, b + off + 8, 8);
    if (off + 24 <= n) memcpy(&magic, b + off + 16, 8);
    if (seq != UINT64_MAX) recs++;
    else if (magic == 0x70756f7267647370ull) marks[0] = marks[1], marks[1] = recs;
    off += 16 + (len & 0x7fffffffu);
  }
  free(b);
  return marks[0];
}

/* wal_close stops W, runs LOOP until its last answers ran, frees W and
 * closes LOOP. */
static void wal_close(psd_wal *w, uv_loop_t *loop) {
  psd_wal_stop(w);
  uv_run(loop, UV_RUN_DEFAULT);
  psd_wal_free(w);
  uv_loop_close(loop);
}

/* write_stop appends N records of LEN bytes to the started log W, runs
 * LOOP until all are answered, puts W's stats in *ST (when not NULL),
 * then stops and frees W and closes LOOP. */
static void write_stop(psd_wal *w, uv_loop_t *loop, size_t n, size_t len, seam *sm,
                       psd_wal_stats *st) {
  waiter *ws = calloc(n, sizeof *ws);
  uint64_t off = 0;
  seam dummy = {0};
  append_n(w, ws, n, len, sm ? sm : &dummy, &off);
  run_until(loop, ws, n);
  if (st) psd_wal_stats_get(w, st);
  wal_close(w, loop);
  free(ws);
}

/* write_log writes N records of LEN bytes into a fresh log at DIR, all
 * synced. */
static void write_log(const char *dir, size_t n, size_t len, uint64_t from, seam *sm) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  psd_wal *w = wal_open(dir, 1 << 20, sm);
  ps_errbuf eb;
  replayed r = {0};
  ck_assert_int_eq(psd_wal_replay(w, from, count_rec, &r, &eb), 0);
  ck_assert_int_eq(psd_wal_start(w, &loop, &eb), 0);
  write_stop(w, &loop, n, len, sm, NULL);
}

/* stderr_to sends stderr (the log's messages) to a file beside DIR (not
 * in it: a foreign file there is warned about); the saved descriptor
 * for stderr_back. */
static int stderr_to(const char *dir) {
  char errlog[700];
  snprintf(errlog, sizeof errlog, "%s.stderr", dir);
  fflush(stderr);
  int saved = dup(2), lf = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ck_assert(saved >= 0 && lf >= 0);
  dup2(lf, 2);
  close(lf);
  return saved;
}

/* stderr_back puts stderr back (SAVED, from stderr_to) and returns what
 * was written meanwhile (the caller frees). */
static char *stderr_back(const char *dir, int saved) {
  char errlog[700];
  snprintf(errlog, sizeof errlog, "%s.stderr", dir);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  char *text = ps_test_read_file(errlog, NULL);
  unlink(errlog);
  return text;
}

/* wal_started opens the log O names, replays it (empty) and starts it on
 * LOOP. */
static psd_wal *wal_started(const psd_wal_opts *o, uv_loop_t *loop) {
  psd_wal *w;
  ps_errbuf eb;
  replayed r = {0};
  ck_assert_msg(psd_wal_open(&w, o, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(psd_wal_replay(w, 0, count_rec, &r, &eb), 0);
  ck_assert_int_eq(psd_wal_start(w, loop, &eb), 0);
  return w;
}

/* wait_synced runs LOOP until W has synced record SEQ (bounded). */
static void wait_synced(uv_loop_t *loop, psd_wal *w, uint64_t seq) {
  psd_wal_stats st;
  int64_t end = ps_test_now_ms() + 20000;
  do {
    ck_assert_msg(ps_test_now_ms() < end, "record %llu not synced", (unsigned long long)seq);
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(200);
    psd_wal_stats_get(w, &st);
  } while (st.synced_seq < seq);
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(test_ack_follows_sync) {
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  seam sm = {0};
  uv_loop_t loop;
  uv_loop_init(&loop);
  enum { N = 200, LEN = 1000 };
  psd_wal *w = wal_open(dir, 4096, &sm); /* at most 4 records of 1016 bytes per group */
  ps_errbuf eb;
  replayed r;
  ck_assert_int_eq(psd_wal_replay(w, 0, count_rec, &r, &eb), 0);
  ck_assert_int_eq(psd_wal_start(w, &loop, &eb), 0);
  waiter ws[N];
  uint64_t off = 0;
  append_n(w, ws, N, LEN, &sm, &off);
  run_until(&loop, ws, N);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(ws[i].status, 0);
    ck_assert_msg(ws[i].covered, "record %d acknowledged before a sync covered it", i);
  }
  psd_wal_stats st;
  psd_wal_stats_get(w, &st);
  ck_assert_uint_eq(st.records, N);
  ck_assert_uint_le(sm.max_group, 4096);
  ck_assert_uint_lt(st.syncs, N); /* groups shared syncs */
  ck_assert_uint_eq(st.syncs, sm.syncs);
  wal_close(w, &loop);
  replay_count(dir, 0, &r, 0, &eb);
  ck_assert_uint_eq(r.n, N);
  ck_assert_uint_eq(r.first, 1);
  ck_assert_uint_eq(r.last, N);
}
END_TEST

/* A failing sync: waiters get PS_EDEGRADED, the state callback says so,
 * the retry writes the records (nothing lost) and says it works again. */
static int state_calls, state_last;
static char state_msg[600];
static void on_state(void *arg, int err, const char *msg) {
  (void)arg;
  state_calls++;
  state_last = err;
  snprintf(state_msg, sizeof state_msg, "%s", msg ? msg : "");
}

/* wait_works_again runs LOOP until on_state has been called twice (the
 * log failed or ran short, then works again), at most BOUND_MS, and
 * checks that. */
static void wait_works_again(uv_loop_t *loop, int bound_ms) {
  int64_t end = ps_test_now_ms() + bound_ms;
  while (state_calls < 2 && ps_test_now_ms() < end) {
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ck_assert_int_eq(state_calls, 2);
  ck_assert_int_eq(state_last, 0);
}

START_TEST(test_sync_failure_retried) {
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  seam sm = {.fail = 3};
  uv_loop_t loop;
  uv_loop_init(&loop);
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .retry_ms = 10, .sync = seam_sync,
                    .sync_arg = &sm, .on_state = on_state, .buffered = wal_buffered};
  psd_wal *w;
  ps_errbuf eb;
  replayed r;
  state_calls = 0;
  ck_assert_int_eq(psd_wal_open(&w, &o, &eb), 0);
  ck_assert_int_eq(psd_wal_replay(w, 0, count_rec, &r, &eb), 0);
  ck_assert_int_eq(psd_wal_start(w, &loop, &eb), 0);
  waiter ws[5];
  uint64_t off = 0;
  append_n(w, ws, 5, 100, &sm, &off);
  run_until(&loop, ws, 5);
  ck_assert_int_eq(ws[0].status, PS_EDEGRADED);
  wait_works_again(&loop, 10000); /* the retries succeed */
  wal_close(w, &loop);
  replay_count(dir, 0, &r, 0, &eb);
  ck_assert_uint_eq(r.n, 5); /* the failed group was written by the retry */
}
END_TEST

/* The writer's timed waits: a failed sync is retried only after retry_ms
 * (three failures: at least three waits), and with group_commit_max_wait_us
 * a record appended while the writer waits for more shares the first
 * one's sync.  (Both once read their deadlines on the wrong clock, so
 * neither waited.) */
START_TEST(test_writer_waits) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  seam sm = {.fail = 3};
  psd_wal_opts o = {.dir = ps_test_tmpdir(), .max_batch_bytes = 1 << 20, .retry_ms = 100,
                    .sync = seam_sync, .sync_arg = &sm, .on_state = on_state};
  psd_wal *w = wal_started(&o, &loop);
  state_calls = 0;
  waiter ws[3];
  uint64_t off = 0;
  int64_t t0 = ps_test_now_ms();
  append_n(w, ws, 1, 100, &sm, &off);
  wait_works_again(&loop, 20000);
  int64_t took = ps_test_now_ms() - t0;
  ck_assert_msg(took >= 300, "3 failed syncs retried within %lld ms (retry_ms 100)",
                (long long)took);
  psd_wal_stop(w);
  uv_run(&loop, UV_RUN_DEFAULT);
  psd_wal_free(w);
  /* a group: the second record comes 50 ms into the writer's 400 ms wait */
  sm = (seam){0};
  o = (psd_wal_opts){.dir = ps_test_tmpdir(), .max_batch_bytes = 1 << 20, .retry_ms = 100,
                     .max_wait_us = 400000, .sync = seam_sync, .sync_arg = &sm};
  w = wal_started(&o, &loop);
  off = 0;
  append_n(w, ws + 1, 1, 100, &sm, &off);
  usleep(50000);
  append_n(w, ws + 2, 1, 100, &sm, &off);
  run_until(&loop, ws + 1, 2);
  psd_wal_stats st;
  psd_wal_stats_get(w, &st);
  ck_assert_int_eq(ws[1].status, 0);
  ck_assert_int_eq(ws[2].status, 0);
  ck_assert_uint_eq(st.records, 2);
  ck_assert_uint_eq(st.syncs, 1);
  wal_close(w, &loop);
}
END_TEST

/* psd_wal_wait_synced (what a snapshot waits for, psd_store invariant
 * 11): 0 once the record is synced; PS_EDEGRADED while syncs fail, then
 * 0 once the retry synced it; PS_ESHUTDOWN for a record the stopped log
 * never got. */
START_TEST(test_wait_synced) {
  const char *dir = ps_test_tmpdir();
  seam sm = {0};
  uv_loop_t loop;
  uv_loop_init(&loop);
  psd_wal *w = wal_open(dir, 1 << 20, &sm);
  ps_errbuf eb;
  replayed r;
  ck_assert_int_eq(psd_wal_replay(w, 0, count_rec, &r, &eb), 0);
  ck_assert_int_eq(psd_wal_start(w, &loop, &eb), 0);
  waiter ws[2];
  uint64_t off = 0;
  append_n(w, ws, 1, 100, &sm, &off);
  ck_assert_int_eq(psd_wal_wait_synced(w, 1, &eb), 0);
  ck_assert_uint_ge(__atomic_load_n(&sm.synced_size, __ATOMIC_ACQUIRE), ws[0].end);
  run_until(&loop, ws, 1);
  sm.fail = 3; /* the writer is idle: the append below hands it over */
  append_n(w, ws + 1, 1, 100, &sm, &off);
  int rc = psd_wal_wait_synced(w, 2, &eb);
  ck_assert_msg(rc == PS_EDEGRADED, "wait for a failing sync: %d (%s)", rc, eb.msg);
  int64_t end = ps_test_now_ms() + 10000;
  while ((rc = psd_wal_wait_synced(w, 2, &eb)) != 0 && ps_test_now_ms() < end) usleep(1000);
  ck_assert_msg(rc == 0, "record 2 never synced: %s", eb.msg);
  ck_assert_uint_ge(__atomic_load_n(&sm.synced_size, __ATOMIC_ACQUIRE), ws[1].end);
  run_until(&loop, ws + 1, 1);
  psd_wal_stop(w);
  ck_assert_int_eq(psd_wal_wait_synced(w, 3, &eb), PS_ESHUTDOWN);
  ck_assert_int_eq(psd_wal_wait_synced(w, 2, &eb), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  psd_wal_free(w);
  uv_loop_close(&loop);
}
END_TEST

/* wait_synced_thread: psd_wal_wait_synced(ARG, 1), as a snapshot's thread waits. */
static void *wait_synced_thread(void *arg) {
  ps_errbuf eb;
  return (void *)(intptr_t)psd_wal_wait_synced(arg, 1, &eb);
}

/* Two waits for a sync the disk holds past 5 s (a stop's dense snapshot
 * and its sparse rows) warn once between them, not each in the same
 * millisecond; both end when the sync does. */
START_TEST(test_wait_synced_warns_once) {
  const char *dir = ps_test_tmpdir();
  seam sm = {.hold_ms = 5600};
  uv_loop_t loop;
  uv_loop_init(&loop);
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .retry_ms = 20, .sync = seam_sync,
                    .sync_arg = &sm};
  psd_wal *w = wal_started(&o, &loop);
  int saved = stderr_to(dir);
  waiter ws[1];
  uint64_t off = 0;
  append_n(w, ws, 1, 100, &sm, &off);
  pthread_t th[2];
  void *rc[2];
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, wait_synced_thread, w), 0);
  for (int i = 0; i < 2; i++) pthread_join(th[i], &rc[i]);
  char *text = stderr_back(dir, saved);
  ck_assert_int_eq((int)(intptr_t)rc[0], 0);
  ck_assert_int_eq((int)(intptr_t)rc[1], 0);
  int n = 0;
  for (const char *p = text; (p = strstr(p, "for the sync of record 1 ")); p++) n++;
  ck_assert_msg(n == 1, "%d warnings:\n%s", n, text);
  free(text);
  run_until(&loop, ws, 1);
  wal_close(w, &loop);
}
END_TEST

START_TEST(test_power_cut) {
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  seam sm = {0};
  write_log(dir, 50, 300, 0, &sm);
  /* unsynced bytes lost, garbage in their place (a torn group) */
  char *seg = newest_segment(dir);
  ck_assert_int_eq(truncate(seg, (off_t)sm.synced_size), 0);
  int fd = open(seg, O_WRONLY | O_APPEND);
  char junk[700];
  memset(junk, 0x5a, sizeof junk);
  ck_assert_int_eq(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
  close(fd);
  replayed r;
  ps_errbuf eb;
  uint64_t dropped = replay_count(dir, 0, &r, 0, &eb);
  ck_assert_uint_eq(r.n, 50); /* every acknowledged record */
  ck_assert_uint_eq(dropped, 0); /* the junk is no record of the log: cut, not counted */
  free(seg);
}
END_TEST

static void old_record(uint8_t *out, size_t *n, uint64_t seq, uint32_t len, int c32c);

/* rec_c32c: the CRC-32C of the record at H (LEN payload bytes): its len
 * and seq fields and its payload, as this version computes it. */
static uint32_t rec_c32c(const uint8_t *h, uint32_t len) {
  return ps_crc32c(ps_crc32c(ps_crc32c(0, h, 4), h + 8, 8), h + 16, len);
}

/* mark_record appends to OUT (at *N) the end mark of a group of segment
 * FIRST that starts at START with record SEQ (psd_wal invariant 5). */
static void mark_record(uint8_t *out, size_t *n, uint64_t first, uint64_t start, uint64_t seq) {
  uint8_t *h = out + *n;
  uint32_t l = 32 | 0x80000000u;
  uint64_t v[5] = {UINT64_MAX, 0x70756f7267647370ull /* "psdgroup" */, first, start, seq};
  memcpy(h, &l, 4);
  memcpy(h + 8, v, sizeof v);
  uint32_t crc = rec_c32c(h, 32);
  memcpy(h + 4, &crc, 4);
  *n += 48;
}

/* groups_file writes DIR's segment starting at record FIRST as two
 * groups, N1 records and the N2 after them (LEN bytes each), each ending
 * in its mark; returns its path. */
static char *groups_file(const char *dir, uint64_t first, int n1, int n2, uint32_t len) {
  uint8_t *buf = malloc((size_t)(n1 + n2) * (16 + len) + 96);
  size_t n = 0, start = 0;
  for (int g = 0; g < 2; g++) {
    uint64_t q0 = g ? first + (uint64_t)n1 : first;
    for (uint64_t q = q0; q < q0 + (uint64_t)(g ? n2 : n1); q++) old_record(buf, &n, q, len, 1);
    mark_record(buf, &n, first, start, q0);
    start = n;
  }
  char *p = malloc(1100);
  snprintf(p, 1100, "%s/%016llx.log", dir, (unsigned long long)first);
  FILE *f = fopen(p, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
  fclose(f);
  free(buf);
  return p;
}

START_TEST(test_torn_and_corrupt_tail) {
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  write_log(dir, 10, 200, 0, NULL);
  char *seg = newest_segment(dir);
  struct stat st;
  ck_assert_int_eq(stat(seg, &st), 0);
  /* truncated: the last record loses 5 bytes (and its group's end mark) */
  ck_assert_int_eq(truncate(seg, seg_rec(seg, 9) + 16 + 200 - 5), 0);
  replayed r;
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 1);
  ck_assert_uint_eq(r.n, 9);
  /* the tail was cut: a second replay finds nothing torn */
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 9);
  free(seg);
  /* corrupt, in a log of two groups, records 1..5 and 6..10, each ending
   * in its mark: a byte of the 8th record's payload flipped is a torn
   * last group (the 8th and the two after it dropped); of the 3rd, a
   * synced record (a later group follows): refused, nothing cut; the 5th
   * and the first group's mark damaged both: the second group's mark
   * says a group started after the bad record's */
  for (int k = 0; k < 3; k++) {
    char *path = groups_file(dir, 1, 5, 5, 200);
    int fd = open(path, O_RDWR);
    uint8_t b;
    off_t at = seg_rec(path, k == 0 ? 7 : k == 1 ? 2 : 4) + 16 + 50;
    ck_assert_int_eq(pread(fd, &b, 1, at), 1);
    b ^= 0x40;
    ck_assert_int_eq(pwrite(fd, &b, 1, at), 1);
    if (k == 2) { /* the mark right after the 5th record */
      static const uint8_t z[16];
      ck_assert_int_eq(pwrite(fd, z, 16, seg_rec(path, 4) + 16 + 200), 16);
    }
    close(fd);
    ck_assert_int_eq(stat(path, &st), 0);
    if (k == 0) {
      ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 3);
      ck_assert_uint_eq(r.n, 7);
    } else {
      off_t size = st.st_size;
      replay_count(dir, 0, &r, PS_EIO, &eb);
      ck_assert_msg(strstr(eb.msg, "corrupt") && strstr(eb.msg, "group written after"), "%s",
                    eb.msg);
      ck_assert_int_eq(stat(path, &st), 0);
      ck_assert_int_eq(st.st_size, size); /* nothing cut */
    }
    free(path);
  }
}
END_TEST

/* A bad record in the last segment followed by intact records over more
 * bytes than one group holds (group_commit_max_bytes, 1 MiB here) is no
 * torn write: its group was synced before the later ones were written,
 * so it was acknowledged.  Refused, not cut off as "never acknowledged"
 * (which dropped 1,390 acknowledged records here).  The damage: a byte of
 * the 10th record's payload (_i 0), its length field off by one (1), its
 * header zeroed (2), the 4 KiB block holding its header zeroed (3).  For
 * 1-3 the walk for intact records used to start where the bad length
 * claims the record ends (or stop at once) and found none, so the log was
 * cut there as a torn tail. */
START_TEST(test_corrupt_synced_record_refused) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 1400, 1000, 0, NULL); /* 1.4 MB, one segment */
  char *seg = newest_segment(dir);
  int fd = open(seg, O_RDWR);
  ck_assert_int_ge(fd, 0);
  off_t at = seg_rec(seg, 9); /* the 10th record's header */
  uint8_t b[4096] = {0};
  if (_i <= 1) {
    at += _i == 0 ? 16 + 500 : 0;
    ck_assert_int_eq(pread(fd, b, 1, at), 1);
    b[0] ^= _i == 0 ? 0x40 : 1;
    ck_assert_int_eq(pwrite(fd, b, 1, at), 1);
  } else if (_i == 2) {
    ck_assert_int_eq(pwrite(fd, b, 16, at), 16);
  } else {
    ck_assert_int_eq(pwrite(fd, b, 4096, at / 4096 * 4096), 4096);
  }
  close(fd);
  struct stat before, after;
  ck_assert_int_eq(stat(seg, &before), 0);
  replayed r;
  ps_errbuf eb;
  replay_count(dir, 0, &r, PS_EIO, &eb);
  ck_assert_msg(strstr(eb.msg, "corrupt") && strstr(eb.msg, "acknowledged") &&
                strstr(eb.msg, _i < 3 ? "1390 intact records" : "intact records"), "%s", eb.msg);
  ck_assert_int_eq(stat(seg, &after), 0);
  ck_assert_int_eq(after.st_size, before.st_size); /* nothing cut */
  free(seg);
}
END_TEST

/* A torn tail's count: the 8th of 10 records (or the last group's first,
 * when the writer's first group took more) with a length past the file's
 * end drops it and the intact ones after it (it said 1); a file cut
 * inside the last record's header drops that record (it said 0). */
START_TEST(test_torn_tail_counts) {
  char dir[2][1024];
  for (int k = 0; k < 2; k++) {
    snprintf(dir[k], sizeof dir[k], "%s/%d", ps_test_tmpdir(), k);
    ck_assert_int_eq(mkdir(dir[k], 0700), 0);
    write_log(dir[k], 10, 200, 0, NULL);
  }
  char *seg = newest_segment(dir[0]);
  ck_assert_int_eq(truncate(seg, seg_rec(seg, 9) + 7), 0);
  free(seg);
  replayed r;
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir[0], 0, &r, 0, &eb), 1);
  ck_assert_uint_eq(r.n, 9);
  seg = newest_segment(dir[1]);
  /* the 8th, or the last group's first when the writer took more first */
  int bad = seg_last_group(seg);
  if (bad < 7) bad = 7;
  int fd = open(seg, O_RDWR);
  ck_assert_int_ge(fd, 0);
  const uint8_t huge[4] = {0, 0, 0, 0x7f};
  ck_assert_int_eq(pwrite(fd, huge, 4, seg_rec(seg, bad)), 4);
  close(fd);
  ck_assert_uint_eq(replay_count(dir[1], 0, &r, 0, &eb), (uint64_t)(10 - bad));
  ck_assert_uint_eq(r.n, (uint64_t)bad);
  free(seg);
}
END_TEST

/* write_log_one_group writes N records of LEN bytes into a fresh log at
 * DIR as one group: the writer waits up to 400 ms for more records
 * (group_commit_max_wait_us) while all N are appended. */
static void write_log_one_group(const char *dir, size_t n, size_t len) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  seam sm = {0};
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .retry_ms = 20, .max_wait_us = 400000,
                    .sync = seam_sync, .sync_arg = &sm, .buffered = wal_buffered};
  psd_wal_stats st;
  write_stop(wal_started(&o, &loop), &loop, n, len, &sm, &st);
  ck_assert_uint_eq(st.syncs, 1);
}

/* A torn tail's count when a record of it lost its header (a block of
 * the group's write that never reached the disk): records 1..10 in one
 * group, record 5's header zeroed (or record 5's payload damaged and
 * record 6's header zeroed): records 5..10 are dropped, 6 of them.  The
 * count took the bad bytes for a record only when their header held the
 * next seq, and added the intact records found after them, so a record
 * whose header was lost went uncounted (it said 5). */
START_TEST(test_torn_tail_counts_lost_header) {
  for (int k = 0; k < 2; k++) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%d", ps_test_tmpdir(), k);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    write_log_one_group(dir, 10, 200);
    char *seg = newest_segment(dir);
    ck_assert_int_eq(seg_last_group(seg), 0);
    int fd = open(seg, O_RDWR);
    ck_assert_int_ge(fd, 0);
    static const uint8_t zero[WAL_HDR_TEST];
    if (k == 1) {
      uint8_t b = 0;
      off_t at = seg_rec(seg, 4) + WAL_HDR_TEST + 50;
      ck_assert_int_eq(pread(fd, &b, 1, at), 1);
      b ^= 0x40;
      ck_assert_int_eq(pwrite(fd, &b, 1, at), 1);
    }
    off_t hdr = seg_rec(seg, 4 + k);
    ck_assert_int_eq(pwrite(fd, zero, sizeof zero, hdr), (ssize_t)sizeof zero);
    close(fd);
    replayed r;
    ps_errbuf eb;
    ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 6);
    ck_assert_uint_eq(r.n, 4);
    free(seg);
  }
}
END_TEST

/* log_of_ten writes a log of records 100000..100009 in DIR and opens its
 * segment (*SEG, malloc'd) for writing: the descriptor, with *AT the
 * offset after the direct write's padding. */
static int log_of_ten(const char *dir, char **seg, off_t *at) {
  write_log(dir, 10, 200, 99999, NULL);
  *seg = newest_segment(dir);
  int fd = open(*seg, O_WRONLY);
  ck_assert_int_ge(fd, 0);
  *at = lseek(fd, 0, SEEK_END);
  *at = (*at + 4095) / 4096 * 4096;
  return fd;
}

/* After a crash the last segment is often a reused file whose older
 * records follow ours: the search for intact records after our last one
 * reads them all.  Older sparse pushes hold sorted small keys, many of
 * them in the window of plausible seqs, each with a length field of up
 * to the previous key: checksumming every such candidate made a replay
 * over 16 MiB of them take 9 s (32 MiB: 42 s; an outside review's
 * measurement).  Candidates must be followed by what may follow a record
 * before a checksum is computed, so the search ends within its budget
 * (replay_scan_cut 0) and finds nothing of ours there. */
START_TEST(test_scan_old_sparse_bytes) {
  const char *dir = ps_test_tmpdir();
  char *seg;
  off_t at;
  int fd = log_of_ten(dir, &seg, &at);
  enum { KEYS = 512, DIM = 16, RECS = 16 << 20 >> 15 }; /* 32 KiB each, 16 MiB */
  size_t rl = WAL_HDR_TEST + KEYS * 8 + KEYS * DIM * 4;
  uint8_t *rec = malloc(rl);
  uint64_t key = 0;
  ps_test_rng_init();
  for (int r = 0; r < RECS; r++) {
    uint32_t len = (uint32_t)(rl - WAL_HDR_TEST) | 0x80000000u, crc = 0x12345678;
    uint64_t seq = 1000 + (uint64_t)r;
    memcpy(rec, &len, 4);
    memcpy(rec + 4, &crc, 4);
    memcpy(rec + 8, &seq, 8);
    for (int k = 0; k < KEYS; k++) {
      key = (key + 1 + (uint64_t)(ps_test_rnd() * 2)) % 400000;
      memcpy(rec + WAL_HDR_TEST + 8 * k, &key, 8);
    }
    for (int k = 0; k < KEYS * DIM; k++) {
      float f = ps_test_rnd();
      memcpy(rec + WAL_HDR_TEST + KEYS * 8 + 4 * k, &f, 4);
    }
    ck_assert_int_eq(pwrite(fd, rec, rl, at), (ssize_t)rl);
    at += (off_t)rl;
  }
  close(fd);
  free(rec);
  replayed r;
  psd_wal_stats st;
  ps_errbuf eb;
  ck_assert_msg(replay_stats(dir, 99999, &r, &st, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(r.n, 10);
  ck_assert_uint_eq(st.replay_dropped, 0);
  ck_assert_msg(!st.replay_scan_cut, "the search for intact records ended early");
  free(seg);
}
END_TEST

/* replay_logged: replay_stats with stderr (the log's messages) in
 * *TEXT (the caller frees). */
static int replay_logged(const char *dir, uint64_t from, replayed *r, psd_wal_stats *st,
                         ps_errbuf *eb, char **text) {
  int saved = stderr_to(dir);
  int rc = replay_stats(dir, from, r, st, eb);
  *text = stderr_back(dir, saved);
  return rc;
}

/* A search for records of ours after the last one, cut by its budget
 * (bytes that look like records at every 16th offset, each with a long
 * length field) farther from the bad offset than one group's bytes
 * (1 MiB + an eighth + 16 KiB here) is not warned about: a later group
 * would start within those bytes, so only records behind a second damaged
 * group could be missed. */
START_TEST(test_scan_cut_far_not_warned) {
  const char *dir = ps_test_tmpdir();
  char *seg;
  off_t at;
  int fd = log_of_ten(dir, &seg, &at);
  at += 3 << 19; /* 1.5 MiB of zeros past the records */
  enum { TAIL = 4 << 20 };
  uint8_t *tail = malloc(TAIL);
  for (size_t c = 0; c < TAIL / 16; c++) { /* seq 100010 (the next), a length reaching far */
    uint32_t len = (uint32_t)(TAIL - 16 * c - 2 * WAL_HDR_TEST) | 0x80000000u, crc = (uint32_t)c;
    uint64_t seq = 100010;
    memcpy(tail + 16 * c, &len, 4);
    memcpy(tail + 16 * c + 4, &crc, 4);
    memcpy(tail + 16 * c + 8, &seq, 8);
  }
  ck_assert_int_eq(pwrite(fd, tail, TAIL, at), (ssize_t)TAIL);
  close(fd);
  free(tail);
  replayed r;
  psd_wal_stats st;
  ps_errbuf eb;
  char *text;
  int rc = replay_logged(dir, 99999, &r, &st, &eb, &text);
  ck_assert_msg(rc == 0, "%s", eb.msg);
  ck_assert_uint_eq(r.n, 10);
  ck_assert_uint_eq(st.replay_dropped, 0);
  ck_assert_msg(st.replay_scan_cut, "the bytes did not cut the search: the test shows nothing");
  ck_assert_msg(!strstr(text, "search for intact records"), "%s", text);
  free(text);
  free(seg);
}
END_TEST

/* The common crash: the last segment is a reused file, and after our
 * last group's end mark and the block's zeros come its older dense
 * pushes (floats, many exactly zero: a ReLU's dead units).  A nonzero
 * float followed by two zero floats reads as a seq of 12k to 49k, which
 * a log of low seqs (a new store) takes for a candidate a few hundred
 * KiB after its end; the float before, read as a length field, often
 * carries the CRC-32C flag and reaches megabytes far.  Checksummed byte
 * by byte, a few such candidates exhausted the search's budget within a
 * megabyte and every such restart warned that the search "ended early
 * or skipped some ... it may have missed some" (an outside test: 3 kill
 * -9 restarts of 20 on the demo's MLP with Adam; 3 of 3 here).  Every
 * candidate is checked now: no cut, no warning, nothing of ours found. */
START_TEST(test_scan_old_dense_floats) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 10, 200, 999, NULL); /* records 1000..1009 */
  char *seg = newest_segment(dir);
  int fd = open(seg, O_WRONLY);
  ck_assert_int_ge(fd, 0);
  off_t at = lseek(fd, 0, SEEK_END);
  at = (at + 4095) / 4096 * 4096;
  enum { REC = 940584, RECS = 16 }; /* the demo MLP's push: 235146 floats */
  size_t rl = WAL_HDR_TEST + 40 + REC;
  uint8_t *rec = malloc(rl);
  ps_test_rng_init();
  for (int k = 0; k < RECS; k++) {
    uint32_t len = (uint32_t)(rl - WAL_HDR_TEST) | 0x80000000u, crc = 0x9e3779b9u * (uint32_t)k;
    uint64_t seq = 900 + (uint64_t)k; /* older than the segment's records */
    memcpy(rec, &len, 4);
    memcpy(rec + 4, &crc, 4);
    memcpy(rec + 8, &seq, 8);
    memset(rec + WAL_HDR_TEST, 0, 40); /* the push's header (kind, name, gen, clock...) */
    for (size_t i = 0; i < REC / 4; i++) {
      float u = ps_test_rnd(), g = 0;
      if (u > 0) g = 1e-4f + 4e-3f * ps_test_rnd() * ps_test_rnd(); /* half of them zero */
      if (g && u > 0.5f) g = -g;
      memcpy(rec + WAL_HDR_TEST + 40 + 4 * i, &g, 4);
    }
    ck_assert_int_eq(pwrite(fd, rec, rl, at), (ssize_t)rl);
    at += (off_t)rl;
  }
  close(fd);
  free(rec);
  replayed r;
  psd_wal_stats st;
  ps_errbuf eb;
  char *text;
  int64_t t0 = ps_test_now_ms();
  int rc = replay_logged(dir, 999, &r, &st, &eb, &text);
  int64_t ms = ps_test_now_ms() - t0;
  ck_assert_msg(rc == 0, "%s", eb.msg);
  ck_assert_uint_eq(r.n, 10);
  ck_assert_uint_eq(r.first, 1000);
  ck_assert_uint_eq(st.replay_dropped, 0);
  ck_assert_msg(!st.replay_scan_cut, "the search ended early: %s", text);
  ck_assert_msg(!strstr(text, "search for intact records"), "%s", text);
  ck_assert_msg(strstr(text, "no record of this log"), "%s", text); /* cut off, said so */
  ck_assert_msg(ms < 10000, "the replay took %lld ms", (long long)ms);
  free(text);
  free(seg);
}
END_TEST

/* old_record appends to OUT (at *N) the record SEQ of LEN bytes (count_rec's
 * pattern) as the versions before CRC-32C wrote it (zlib's CRC-32, no flag),
 * or with FLAG set in the len field and CRC-32C (this version's). */
static void old_record(uint8_t *out, size_t *n, uint64_t seq, uint32_t len, int c32c) {
  uint8_t *h = out + *n;
  uint32_t l = len | (c32c ? 0x80000000u : 0);
  memcpy(h, &l, 4);
  memcpy(h + 8, &seq, 8);
  fill(h + 16, len, seq);
  uint32_t crc;
  if (c32c) {
    crc = rec_c32c(h, len);
  } else {
    uLong c = crc32(crc32(crc32(0L, Z_NULL, 0), h, 4), h + 8, 8);
    crc = (uint32_t)crc32_z(c, h + 16, len);
  }
  memcpy(h + 4, &crc, 4);
  *n += 16 + len;
}

/* A damaged record the snapshot holds (its seq at most FROM) does not
 * stop the replay when the first intact record after it leaves out no
 * record the snapshot lacks: in the last segment, and in an earlier one,
 * whose records after it would else count as missing (an outside review
 * found a shard refusing to start in both modes over a bit flip in
 * records its snapshot held).  A damaged record the snapshot lacks is
 * still refused. */
START_TEST(test_damaged_record_snapshot_holds) {
  const char *dir = ps_test_tmpdir();
  for (int two = 0; two < 2; two++) {
    char *a = groups_file(dir, 1, 5, 5, 200), *b = two ? groups_file(dir, 11, 1, 1, 200) : NULL;
    int fd = open(a, O_RDWR);
    uint8_t x;
    off_t at = seg_rec(a, 2) + 16 + 50; /* record 3's payload */
    ck_assert_int_eq(pread(fd, &x, 1, at), 1);
    x ^= 0x40;
    ck_assert_int_eq(pwrite(fd, &x, 1, at), 1);
    close(fd);
    replayed r;
    ps_errbuf eb;
    replay_count(dir, 2, &r, PS_EIO, &eb); /* record 3 is not in the snapshot */
    ck_assert_msg(strstr(eb.msg, "corrupt") || strstr(eb.msg, "missing"), "%s", eb.msg);
    for (uint64_t from = 3; from <= 5; from++) {
      ck_assert_uint_eq(replay_count(dir, from, &r, 0, &eb), 0);
      ck_assert_uint_eq(r.first, from + 1);
      ck_assert_uint_eq(r.last, two ? 12 : 10);
      ck_assert_uint_eq(r.n, (two ? 12 : 10) - from);
    }
    free(a);
    free(b);
  }
}
END_TEST

/* A damaged group end mark holds no record: stepped over, in the last
 * segment and in an earlier one (whose records would else end there and
 * the next segment's first count as a gap); and with it stepped over, a
 * torn group after it is still the last group (its own mark, intact, is
 * not taken for a later group's). */
START_TEST(test_damaged_mark) {
  const char *dir = ps_test_tmpdir();
  replayed r;
  ps_errbuf eb;
  for (int k = 0; k < 3; k++) {
    char *a = groups_file(dir, 1, 3, 3, 200), *b = k == 1 ? groups_file(dir, 7, 1, 1, 200) : NULL;
    int fd = open(a, O_RDWR);
    uint8_t x = 0x33;
    ck_assert_int_eq(pwrite(fd, &x, 1, seg_rec(a, 2) + 216 + 20), 1); /* the first mark */
    if (k == 2) ck_assert_int_eq(pwrite(fd, &x, 1, seg_rec(a, 4) + 16 + 50), 1); /* torn */
    close(fd);
    uint64_t dropped = replay_count(dir, 0, &r, 0, &eb);
    ck_assert_uint_eq(r.first, 1);
    ck_assert_uint_eq(r.n, k == 1 ? 8 : k == 2 ? 4 : 6);
    ck_assert_uint_eq(dropped, k == 2 ? 2 : 0);
    if (b) ck_assert_int_eq(unlink(b), 0);
    free(a);
    free(b);
  }
}
END_TEST

/* The record that carries the intact bytes past one group can be the
 * last before a reused file's older bytes, which no header follows: it
 * is still found (86b2bb0 missed it, cut the log after the bad record
 * and dropped the acknowledged one).  Here record 2, of 1.3 MB, is a
 * group of its own, synced after record 1, whose payload is then
 * damaged; older bytes (0x5a) follow record 2. */
START_TEST(test_corrupt_before_last_record_refused) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 2, 1300000, 0, NULL);
  char *seg = newest_segment(dir);
  int fd = open(seg, O_RDWR);
  ck_assert_int_ge(fd, 0);
  uint8_t b = 0;
  ck_assert_int_eq(pread(fd, &b, 1, 16 + 500), 1);
  b ^= 0x40;
  ck_assert_int_eq(pwrite(fd, &b, 1, 16 + 500), 1);
  static uint8_t junk[16384];
  memset(junk, 0x5a, sizeof junk);
  struct stat st;
  ck_assert_int_eq(fstat(fd, &st), 0); /* the log's end: record 2, its mark */
  ck_assert_int_eq(pwrite(fd, junk, sizeof junk, st.st_size), (ssize_t)sizeof junk);
  close(fd);
  replayed r;
  ps_errbuf eb;
  replay_count(dir, 0, &r, PS_EIO, &eb);
  ck_assert_msg(strstr(eb.msg, "corrupt") && strstr(eb.msg, "1 intact records"), "%s", eb.msg);
  free(seg);
}
END_TEST

/* A group of one large record is a skip record and the record (psd_wal
 * invariant 8), in one write: when the skip record's header is lost in a
 * power cut and the record's bytes are not, no record is missing: the
 * damaged bytes are stepped over and the intact record replayed (like
 * any record a crash between write and sync leaves intact), though it is
 * longer than one group of two records or more may be. */
START_TEST(test_torn_single_record_group) {
  const char *dir = ps_test_tmpdir();
  char p[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  size_t big = 1300000, n = 0;
  uint8_t *buf = calloc(1, 3 * WAL_HDR_TEST + 100 + 3000 + big);
  old_record(buf, &n, 1, 100, 1);
  size_t skip = n;
  old_record(buf, &n, UINT64_MAX, 3000, 1); /* the skip record (its payload is not read) */
  memset(buf + skip, 0, WAL_HDR_TEST); /* its header never reached the disk */
  old_record(buf, &n, 2, (uint32_t)big, 1);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, buf, n), (ssize_t)n);
  close(fd);
  free(buf);
  replayed r;
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 2);
  ck_assert_uint_eq(r.last, 2);
  struct stat st;
  ck_assert_int_eq(stat(p, &st), 0);
  ck_assert_int_eq(st.st_size, (off_t)n); /* nothing cut */
}
END_TEST

START_TEST(test_empty_log) {
  const char *dir = ps_test_tmpdir();
  replayed r;
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 0);
  ck_assert_int_eq(psd_wal_has_records(dir), 0);
  /* an empty segment (a start that wrote nothing) is fine too */
  char p[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  ps_test_write_file(p, "");
  ck_assert_uint_eq(replay_count(dir, 7, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 0);
  /* a snapshot ahead of the log: records continue after it */
  write_log(dir, 3, 10, 7, NULL);
  ck_assert_uint_eq(replay_count(dir, 7, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.first, 8);
  ck_assert_uint_eq(r.n, 3);
}
END_TEST

START_TEST(test_log_after_missing_snapshot) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 3, 10, 20, NULL); /* records 21..23, written after a snapshot of 20 */
  replayed r;
  ps_errbuf eb;
  replay_count(dir, 0, &r, PS_EIO, &eb); /* that snapshot is gone */
  ck_assert_msg(strstr(eb.msg, "missing"), "%s", eb.msg);
  ck_assert_uint_eq(r.n, 0);
}
END_TEST

/* An earlier segment deleted: the message names a missing segment as a
 * cause, not only a missing snapshot (it used to ask only "is the
 * snapshot missing or from another store?"). */
START_TEST(test_missing_earlier_segment_refused) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 4, 10, 0, NULL); /* segment 1: records 1..4 */
  write_log(dir, 4, 10, 0, NULL); /* segment 5: records 5..8 */
  char p[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  ck_assert_int_eq(unlink(p), 0);
  replayed r;
  ps_errbuf eb;
  replay_count(dir, 0, &r, PS_EIO, &eb);
  ck_assert_msg(strstr(eb.msg, "record 1 is missing") && strstr(eb.msg, "log segment"), "%s",
                eb.msg);
  ck_assert_uint_eq(r.n, 0);
}
END_TEST

/* The log's directory holds its segments, spares and id: a segment whose
 * name was changed (it may hold acknowledged records) is refused, not
 * skipped; another file is ignored with a warning; an id written without
 * its newline reads. */
START_TEST(test_foreign_files) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 4, 10, 0, NULL);
  char p[1024], q[1024];
  snprintf(p, sizeof p, "%s/notes.txt", dir);
  ps_test_write_file(p, "hello\n");
  replayed r;
  psd_wal_stats st;
  ps_errbuf eb;
  char *text;
  ck_assert_int_eq(replay_logged(dir, 0, &r, &st, &eb, &text), 0);
  ck_assert_uint_eq(r.n, 4);
  ck_assert_msg(strstr(text, "'notes.txt' is no file of the log: ignored"), "%s", text);
  free(text);
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  snprintf(q, sizeof q, "%s/1.log", dir);
  ck_assert_int_eq(rename(p, q), 0);
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20};
  psd_wal *w;
  ck_assert_int_eq(psd_wal_open(&w, &o, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "'1.log' is no segment name"), "%s", eb.msg);
  ck_assert_int_eq(rename(q, p), 0);
  w = wal_open(dir, 1 << 20, NULL);
  uint64_t id;
  snprintf(p, sizeof p, "%s/id", dir);
  ps_test_write_file(p, "psd redo log 00000000000000ab");
  ck_assert_msg(psd_wal_id(w, &id, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(id, 0xab);
  ps_test_write_file(p, "psd redo log 00000000000000ab\n");
  ck_assert_msg(psd_wal_id(w, &id, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(id, 0xab);
  ps_test_write_file(p, "psd redo log 00000000000000ab\nx");
  ck_assert_int_eq(psd_wal_id(w, &id, &eb), PS_EIO);
  ps_test_write_file(p, "psd redo log 00000000000000a");
  ck_assert_int_eq(psd_wal_id(w, &id, &eb), PS_EIO);
  psd_wal_free(w);
  /* a segment renamed to a lower name: its intact first record says so;
   * refused, and the file is neither cut nor removed */
  write_log(dir, 4, 10, 0, NULL); /* segment 5: records 5..8 */
  snprintf(p, sizeof p, "%s/0000000000000005.log", dir);
  snprintf(q, sizeof q, "%s/0000000000000004.log", dir);
  ck_assert_int_eq(rename(p, q), 0);
  struct stat sb;
  ck_assert_int_eq(stat(q, &sb), 0);
  off_t size = sb.st_size;
  replay_count(dir, 0, &r, PS_EIO, &eb);
  ck_assert_msg(strstr(eb.msg, "starts with record 5, not 4"), "%s", eb.msg);
  ck_assert_int_eq(stat(q, &sb), 0);
  ck_assert_int_eq(sb.st_size, size);
}
END_TEST

/* An entry named like a segment that is no regular file (a directory)
 * is refused by its own name (it was taken for a segment, and the
 * message blamed the real one before it: "ends its records at offset
 * ... (checksum mismatch)"). */
START_TEST(test_segment_not_a_file) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 4, 10, 0, NULL);
  char p[1024];
  snprintf(p, sizeof p, "%s/0000000000009999.log", dir);
  ck_assert_int_eq(mkdir(p, 0755), 0);
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20};
  psd_wal *w = NULL;
  ps_errbuf eb;
  ck_assert_int_eq(psd_wal_open(&w, &o, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "'0000000000009999.log' is not a regular file") &&
                    !strstr(eb.msg, "0000000000000001.log"), "%s", eb.msg);
}
END_TEST

/* nocaps_replay replays DIR's log from a child process without
 * capabilities (root's CAP_DAC_OVERRIDE opens a read-only file for
 * writing anyway); the error message in MSG, the replay's code returned. */
static int nocaps_replay(const char *dir, char *msg, size_t n) {
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2] = {{0}};
    if (geteuid() == 0 && syscall(SYS_capset, &h, d) < 0) _exit(100);
    psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20};
    psd_wal *w = NULL;
    ps_errbuf eb = {{0}};
    replayed r = {0};
    int rc = psd_wal_open(&w, &o, &eb);
    if (rc == 0) rc = psd_wal_replay(w, 0, count_rec, &r, &eb);
    psd_wal_free(w);
    if (write(fds[1], eb.msg, strlen(eb.msg)) < 0) _exit(101);
    _exit(-rc);
  }
  close(fds[1]);
  ssize_t got = read(fds[0], msg, n - 1);
  msg[got > 0 ? got : 0] = 0;
  close(fds[0]);
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) < 100, "child: status %d", st);
  return -WEXITSTATUS(st);
}

/* A segment psd cannot open for writing (read-only, psd not root): the
 * message names the open that failed ("cannot sync" said before). */
START_TEST(test_segment_read_only) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 4, 10, 0, NULL);
  char p[1024], msg[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  ck_assert_int_eq(chmod(p, 0444), 0);
  ck_assert_int_eq(nocaps_replay(dir, msg, sizeof msg), PS_EIO);
  ck_assert_msg(strstr(msg, "cannot open") && strstr(msg, "0000000000000001.log' for writing") &&
                    strstr(msg, "Permission denied") && !strstr(msg, "sync"), "%s", msg);
}
END_TEST

/* An earlier segment cut short after 20 bytes (its first record damaged)
 * is refused when the replay needs its records; when the snapshot holds
 * them all (1..4), it is not read (psd_wal_replay), and the later
 * segments replay. */
START_TEST(test_corrupt_earlier_segment_refused) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 4, 10, 0, NULL); /* segment 1: records 1..4 */
  write_log(dir, 4, 10, 0, NULL); /* reopened: segment 5: records 5..8 */
  write_log(dir, 4, 10, 0, NULL); /* segment 9: records 9..12 */
  char p[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  ck_assert_int_eq(truncate(p, 20), 0);
  replayed r;
  ps_errbuf eb;
  replay_count(dir, 3, &r, PS_EIO, &eb);
  ck_assert_msg(strstr(eb.msg, "corrupt") && strstr(eb.msg, "later segments"), "%s", eb.msg);
  for (uint64_t from = 4; from <= 8; from += 4) {
    psd_wal_stats st;
    ck_assert_msg(replay_stats(dir, from, &r, &st, &eb) == 0, "%s", eb.msg);
    ck_assert_uint_eq(st.replay_skipped, from / 4);
    ck_assert_uint_eq(st.replay_last, 12);
    ck_assert_uint_eq(r.first, from + 1);
    ck_assert_uint_eq(r.last, 12);
    ck_assert_uint_eq(r.n, 12 - from);
  }
}
END_TEST

/* A spare renamed to the next segment's name by a roll that failed (the
 * rename reached the disk, the unlink did not: invariant 6) holds older
 * records, so the name says nothing about where the segment before it
 * ends: that one is read even when the name puts it under the snapshot,
 * and its records after the snapshot are replayed. */
START_TEST(test_stale_name_not_skipped) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 8, 10, 0, NULL); /* segment 1: records 1..8, 26 bytes each */
  char p[1024], q[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  snprintf(q, sizeof q, "%s/0000000000000005.log", dir);
  size_t len;
  char *recs = ps_test_read_file(p, &len);
  FILE *f = fopen(q, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(recs, 1, 26, f), 26); /* an older log's record 1 */
  fclose(f);
  free(recs);
  replayed r;
  psd_wal_stats st;
  ps_errbuf eb;
  ck_assert_msg(replay_stats(dir, 4, &r, &st, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(st.replay_skipped, 0);
  ck_assert_uint_eq(st.replay_last, 8);
  ck_assert_uint_eq(r.first, 5);
  ck_assert_uint_eq(r.last, 8);
  ck_assert_uint_eq(r.n, 4);
}
END_TEST

/* A record of an earlier segment that fails its checksum after others
 * that are intact ends that segment's records (invariant 4): the record
 * missing where the next segment starts is refused, saying where the
 * segment ended; a snapshot that holds it needs nothing from it. */
START_TEST(test_corrupt_inside_earlier_segment) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 4, 10, 0, NULL); /* segment 1: records 1..4, 26 bytes each */
  write_log(dir, 4, 10, 0, NULL); /* segment 5: records 5..8 */
  char p[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  off_t rec3 = seg_rec(p, 2); /* (where the writer's groups put it: their marks between) */
  int fd = open(p, O_RDWR);
  ck_assert_int_ge(fd, 0);
  uint8_t b;
  ck_assert_int_eq(pread(fd, &b, 1, rec3 + 16 + 3), 1); /* record 3's payload */
  b ^= 0x40;
  ck_assert_int_eq(pwrite(fd, &b, 1, rec3 + 16 + 3), 1);
  close(fd);
  replayed r;
  ps_errbuf eb;
  replay_count(dir, 0, &r, PS_EIO, &eb);
  char ends[64];
  snprintf(ends, sizeof ends, "ends its records at offset %lld (checksum mismatch)",
           (long long)rec3);
  ck_assert_msg(strstr(eb.msg, "record 3 is missing") && strstr(eb.msg, ends), "%s", eb.msg);
  ck_assert_uint_eq(replay_count(dir, 4, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.first, 5);
  ck_assert_uint_eq(r.n, 4);
}
END_TEST

/* The same damage when the next segment holds no record (the last one,
 * which a crash left before any record reached it: empty, or a reused
 * file's older bytes): its name still says which records the damaged
 * one held, so the loss is refused, not read as the log's end.  So is
 * an earlier segment cut short. */
START_TEST(test_damage_before_recordless_segment) {
  for (int k = 0; k < 3; k++) {
    const char *dir = ps_test_tmpdir();
    write_log(dir, 4, 10, 0, NULL); /* segment 1: records 1..4, 26 bytes each */
    write_log(dir, 4, 10, 0, NULL); /* segment 5: records 5..8 */
    char p[1024], q[1024];
    snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
    snprintf(q, sizeof q, "%s/0000000000000005.log", dir);
    off_t rec3 = seg_rec(p, 2);
    if (k < 2) { /* record 3's payload damaged */
      int fd = open(p, O_RDWR);
      ck_assert_int_ge(fd, 0);
      uint8_t b;
      ck_assert_int_eq(pread(fd, &b, 1, rec3 + 16 + 3), 1);
      b ^= 0x40;
      ck_assert_int_eq(pwrite(fd, &b, 1, rec3 + 16 + 3), 1);
      close(fd);
    } else { /* cut short inside record 3 */
      ck_assert_int_eq(truncate(p, rec3 + 5), 0);
    }
    if (k == 1) { /* segment 5 as a reused file: an older log's record 1 */
      size_t len;
      char *recs = ps_test_read_file(p, &len);
      FILE *f = fopen(q, "wb");
      ck_assert_ptr_nonnull(f);
      ck_assert_uint_eq(fwrite(recs + seg_rec(p, 0), 1, 26, f), 26);
      fclose(f);
      free(recs);
    } else {
      ck_assert_int_eq(truncate(q, 0), 0);
    }
    replayed r;
    ps_errbuf eb;
    replay_count(dir, 0, &r, PS_EIO, &eb);
    ck_assert_msg(strstr(eb.msg, "record 3 is missing") && strstr(eb.msg, "starts at record 5") &&
                      strstr(eb.msg, "ends its records at offset"),
                  "case %d: %s", k, eb.msg);
    /* a snapshot that holds records 3 and 4 needs nothing from them */
    ck_assert_msg(replay_count(dir, 4, &r, 0, &eb) == 0, "case %d: %s", k, eb.msg);
    ck_assert_uint_eq(r.n, 0);
  }
}
END_TEST

/* Bytes after the records of a segment before the last (a reused file's
 * old records, an O_DIRECT write's zeros: files are not cut at a roll,
 * invariant 6) are no part of the log: not read, not cut, nothing
 * dropped. */
START_TEST(test_old_bytes_after_earlier_segment) {
  const char *dir = ps_test_tmpdir();
  write_log(dir, 4, 10, 0, NULL); /* segment 1: records 1..4 */
  char p[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  size_t len;
  char *recs = ps_test_read_file(p, &len);
  ck_assert_uint_ge(len, 4 * 26); /* and the groups' marks */
  FILE *f = fopen(p, "ab");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(recs, 1, 26 + 7, f), 26 + 7); /* an old record 1, then a part */
  static const uint8_t zeros[4096];
  ck_assert_uint_eq(fwrite(zeros, 1, sizeof zeros, f), sizeof zeros);
  fclose(f);
  free(recs);
  write_log(dir, 4, 10, 0, NULL); /* segment 5: records 5..8 */
  struct stat st;
  ck_assert_int_eq(stat(p, &st), 0);
  off_t size = st.st_size;
  replayed r;
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.first, 1);
  ck_assert_uint_eq(r.last, 8);
  ck_assert_uint_eq(r.n, 8);
  ck_assert_int_eq(stat(p, &st), 0);
  ck_assert_int_eq(st.st_size, size);
}
END_TEST

/* append_each appends N records of 300 bytes, one per group (each
 * answered before the next); *TOTAL counts. */
static void append_each(psd_wal *w, uv_loop_t *loop, int n, uint64_t *off, uint64_t *total) {
  seam dummy = {0};
  waiter ws[1];
  for (int k = 0; k < n; k++, (*total)++) {
    append_n(w, ws, 1, 300, &dummy, off);
    run_until(loop, ws, 1);
  }
}

/* more_spares appends records as append_each after a snapshot at UPTO
 * until DIR holds a spare (invariant 6). */
static void more_spares(psd_wal *w, uv_loop_t *loop, const char *dir, uint64_t upto,
                        uint64_t *off, uint64_t *total) {
  psd_wal_truncate(w, upto);
  for (int k = 0; k < 100 && ps_test_count_files(dir, ".free", 0) == 0; k++)
    append_each(w, loop, 1, off, total);
  ck_assert_int_gt(ps_test_count_files(dir, ".free", 0), 0);
}

/* Segments a snapshot covered become spares and later rolls overwrite
 * them (invariant 6): the old records left after the new ones are not
 * replayed, nothing is dropped, and a spare renamed before any record
 * reached it (a crash right after the rename) is an empty segment. */
START_TEST(test_reused_segments) {
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  uv_loop_t loop;
  uv_loop_init(&loop);
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .retry_ms = 20, .segment_bytes = 4096,
                    .buffered = wal_buffered};
  psd_wal *w = wal_started(&o, &loop);
  ps_errbuf eb;
  replayed r = {0};
  seam dummy = {0};
  waiter ws[40];
  uint64_t off = 0, total = 0;
  /* 40 records of 300 bytes in groups of 5: a roll every 15 records */
  for (int k = 0; k < 8; k++) {
    append_n(w, ws, 5, 300, &dummy, &off);
    run_until(&loop, ws, 5);
  }
  total = 40;
  /* a snapshot holds records 1..26: their segments become spares */
  more_spares(w, &loop, dir, 26, &off, &total);
  int spares = ps_test_count_files(dir, ".free", 0);
  /* a later roll takes a spare; then a group smaller than its old records */
  for (int k = 0; k < 100 && ps_test_count_files(dir, ".free", 0) == spares; k++) {
    append_n(w, ws, 5, 200, &dummy, &off);
    run_until(&loop, ws, 5);
    total += 5;
  }
  ck_assert_int_lt(ps_test_count_files(dir, ".free", 0), spares);
  append_n(w, ws, 2, 200, &dummy, &off);
  run_until(&loop, ws, 2);
  total += 2;
  psd_wal_stop(w);
  uv_run(&loop, UV_RUN_DEFAULT);
  psd_wal_free(w);
  /* the current segment is the reused file, old records after its own */
  char *cur = newest_segment(dir);
  struct stat st;
  ck_assert_int_eq(stat(cur, &st), 0);
  off_t before = st.st_size; /* the old file's: 15 records of 316 bytes */
  ck_assert_uint_eq(replay_count(dir, 26, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.first, 27);
  ck_assert_uint_eq(r.last, total);
  ck_assert_uint_eq(r.n, total - 26);
  ck_assert_int_eq(stat(cur, &st), 0); /* cut after its own last record (216 bytes) */
  ck_assert_int_lt(st.st_size, before);
  unsigned long long curfirst = strtoull(strrchr(cur, '/') + 1, NULL, 16);
  ck_assert_int_eq(st.st_size, seg_rec(cur, (int)(total - curfirst)) + 16 + 200);
  ck_assert_int_le(st.st_size, 12 * (16 + 200 + 48)); /* with the groups' marks */
  /* a crash right after a spare got its new name: old records only */
  size_t len;
  char *old = ps_test_read_file(cur, &len);
  char to[1100];
  snprintf(to, sizeof to, "%s/%016llx.log", dir, (unsigned long long)total + 1);
  FILE *f = fopen(to, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(old, 1, len, f), len);
  fclose(f);
  ck_assert_uint_eq(replay_count(dir, 26, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, total - 26);
  ck_assert_uint_eq(r.last, total);
  ck_assert_int_eq(access(to, F_OK), -1); /* an empty segment is removed */
  /* the same before the last segment (a roll whose directory sync failed):
   * a file holding records 1..3 named as a segment between the last two */
  unsigned long long lastfirst = strtoull(strrchr(cur, '/') + 1, NULL, 16);
  ck_assert_uint_gt(lastfirst, 27);
  char other[1100];
  snprintf(other, sizeof other, "%s/other", dir);
  ck_assert_int_eq(mkdir(other, 0755), 0);
  write_log(other, 3, 10, 0, NULL);
  char *stale = newest_segment(other);
  size_t slen;
  char *sbytes = ps_test_read_file(stale, &slen);
  snprintf(to, sizeof to, "%s/%016llx.log", dir, lastfirst - 1);
  ck_assert_int_eq(access(to, F_OK), -1);
  f = fopen(to, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(sbytes, 1, slen, f), slen);
  fclose(f);
  free(sbytes);
  free(stale);
  ck_assert_uint_eq(replay_count(dir, 26, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, total - 26);
  ck_assert_uint_eq(r.last, total);
  ck_assert_int_eq(access(to, F_OK), -1);
  free(old);
  free(cur);
  uv_loop_close(&loop);
}
END_TEST

/* A roll that cannot open its segment (here: no descriptor left, as in a
 * shard at its file limit) after renaming a spare to the segment's name
 * leaves no file under that name (a replay would take the spare's old
 * records for the last segment's); the log goes on in the current
 * segment, and once a roll succeeds everything replays. */
START_TEST(test_failed_roll) {
  const char *dir = ps_test_tmpdir();
  uv_loop_t loop;
  uv_loop_init(&loop);
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .retry_ms = 20, .segment_bytes = 4096};
  psd_wal *w = wal_started(&o, &loop);
  ps_errbuf eb;
  replayed r = {0};
  seam dummy = {0};
  waiter ws[5];
  uint64_t off = 0, total = 0;
  for (int k = 0; k < 8; k++, total += 5) {
    append_n(w, ws, 5, 300, &dummy, &off);
    run_until(&loop, ws, 5);
  }
  more_spares(w, &loop, dir, 26, &off, &total);
  /* the writer trims after it answers a group: the first spare can show
   * while it still renames the next; counted once that has settled */
  int segs = ps_test_count_files(dir, ".log", 0);
  for (int same = 0, k = 0; same < 5 && k < 200; k++) {
    usleep(10 * 1000);
    int now = ps_test_count_files(dir, ".log", 0);
    same = now == segs ? same + 1 : 0;
    segs = now;
  }
  /* every descriptor below a lowered limit taken: the next opens fail */
  struct rlimit old, lim;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  lim = old;
  lim.rlim_cur = 256;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &lim), 0);
  int fds[256], nfds = 0;
  while (nfds < 256 && (fds[nfds] = dup(0)) >= 0) nfds++;
  ck_assert_int_lt(nfds, 256);
  /* groups that fill the segment past its size: each tries a roll */
  for (int k = 0; k < 6; k++, total += 5) {
    append_n(w, ws, 5, 300, &dummy, &off);
    run_until(&loop, ws, 5);
  }
  for (int i = 0; i < nfds; i++) close(fds[i]);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  ck_assert_int_eq(ps_test_count_files(dir, ".log", 0), segs); /* no name without a segment */
  ck_assert_int_eq(ps_test_count_files(dir, ".free", 0), 0);   /* the spares were tried */
  for (int k = 0; k < 4; k++, total += 5) {         /* a roll succeeds again */
    append_n(w, ws, 5, 300, &dummy, &off);
    run_until(&loop, ws, 5);
  }
  ck_assert_int_gt(ps_test_count_files(dir, ".log", 0), segs);
  wal_close(w, &loop);
  ck_assert_uint_eq(replay_count(dir, 26, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.first, 27);
  ck_assert_uint_eq(r.last, total);
  ck_assert_uint_eq(r.n, total - 26);
}
END_TEST

/* Spares are only kept for speed (invariant 6): a failed write of the
 * log removes them, so does psd_wal_drop_spares (a failed snapshot), and
 * psd_wal_remove_spares before a start; nothing is lost. */
START_TEST(test_spares_dropped) {
  const char *dir = ps_test_tmpdir();
  uv_loop_t loop;
  uv_loop_init(&loop);
  seam sm = {0};
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .retry_ms = 20, .segment_bytes = 4096,
                    .sync = seam_sync, .sync_arg = &sm};
  psd_wal *w = wal_started(&o, &loop);
  waiter ws[5];
  uint64_t off = 0, total = 0;
  for (int k = 0; k < 8; k++, total += 5) {
    append_n(w, ws, 5, 300, &sm, &off);
    run_until(&loop, ws, 5);
  }
  more_spares(w, &loop, dir, 20, &off, &total);
  psd_wal_drop_spares(w); /* the writer removes them at its next turn */
  int64_t end = ps_test_now_ms() + 20000;
  while (ps_test_count_files(dir, ".free", 0) > 0) {
    ck_assert_msg(ps_test_now_ms() < end, "spares not removed");
    usleep(1000);
  }
  more_spares(w, &loop, dir, 35, &off, &total);
  sm.fail = 1; /* read by the writer after the append below */
  append_n(w, ws, 1, 300, &sm, &off);
  total++;
  run_until(&loop, ws, 1); /* PS_EDEGRADED, or 0 when the retry came first */
  ck_assert(ws[0].status == PS_EDEGRADED || ws[0].status == 0);
  ck_assert_int_eq(sm.fail, 0); /* the sync failed */
  ck_assert_int_eq(ps_test_count_files(dir, ".free", 0), 0);
  wait_synced(&loop, w, total); /* the retry */
  /* More than a segment's worth first, one record a group, so that a
   * segment before the current one ends at or below total - 2: the cuts
   * above stop at the first spare they see, after some appends or none
   * (the writer may trim before the first look), and with none the last
   * segment they closed can end past it (the cut would free nothing) */
  append_each(w, &loop, 16, &off, &total);
  more_spares(w, &loop, dir, total - 2, &off, &total);
  wal_close(w, &loop);
  int n = ps_test_count_files(dir, ".free", 0);
  ck_assert_int_eq(psd_wal_remove_spares(dir), n);
  ck_assert_int_eq(ps_test_count_files(dir, ".free", 0), 0);
  ck_assert_int_eq(psd_wal_remove_spares("/nonexistent/redo"), 0);
  replayed r = {0};
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, total - 2, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.last, total);
}
END_TEST

/* A log written by a version before CRC-32C (records with zlib's CRC-32)
 * replays as it is, the records this version appends after it carry
 * CRC-32C, and a replay reads both; a record whose format flag flipped
 * fails its checksum (a torn tail, not a record read the other way). */
START_TEST(test_crc_formats) {
  const char *dir = ps_test_tmpdir();
  uint8_t buf[8 * (16 + 100)];
  size_t n = 0;
  for (uint64_t seq = 1; seq <= 4; seq++) old_record(buf, &n, seq, 100, 0);
  char p[1024];
  snprintf(p, sizeof p, "%s/0000000000000001.log", dir);
  FILE *f = fopen(p, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
  fclose(f);
  replayed r;
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 4);
  write_log(dir, 3, 100, 0, NULL); /* records 5..7, this version's format */
  char *seg = newest_segment(dir);
  size_t len;
  uint8_t *b = (uint8_t *)ps_test_read_file(seg, &len);
  uint32_t l0;
  memcpy(&l0, b, 4);
  ck_assert_uint_eq(l0, 100u | 0x80000000u); /* the flag: CRC-32C */
  uint8_t want[16 + 100];
  size_t wn = 0;
  old_record(want, &wn, 5, 100, 1);
  ck_assert_int_eq(memcmp(b, want, wn), 0); /* the checksum is CRC-32C's */
  free(b);
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 7);
  ck_assert_uint_eq(r.first, 1);
  ck_assert_uint_eq(r.last, 7);
  /* record 7's flag cleared: its CRC-32C is no CRC-32 of it */
  int fd = open(seg, O_RDWR);
  off_t at = seg_rec(seg, 2) + 3; /* (groups' marks may lie between records) */
  uint8_t hi;
  ck_assert_int_eq(pread(fd, &hi, 1, at), 1);
  hi &= 0x7f;
  ck_assert_int_eq(pwrite(fd, &hi, 1, at), 1);
  close(fd);
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 1);
  ck_assert_uint_eq(r.n, 6);
  free(seg);
}
END_TEST

/* ---- zero copy (psd_wal invariant 8) ------------------------------------------------ */

/* zc_block returns a page-aligned block of CAP bytes, as the channel's. */
static void *zc_block(size_t cap) {
  void *p = NULL;
  ck_assert_int_eq(posix_memalign(&p, 4096, cap), 0);
  return p;
}

/* zc_len: record I's gradient piece: copied (under 64 KiB), or taken, of
 * whole blocks or not; ZC_HEAD its head, which moves the skip record's
 * size through every value, under WAL_HDR included. */
static size_t zc_len(int i) {
  return i % 3 == 1 ? 300 : i % 5 == 0 ? 17 * 4096 : 65536 + (size_t)(i * 1237) % 9000;
}
#define ZC_HEAD(i) (1 + ((i) * 37) % 120)
#define ZC_N 24

/* zc_append appends record I (seq SEQ) with its piece in *BLK (*CAP
 * bytes, replaced by what the log gives back) and queues waiter WT;
 * returns 1 when the log took the block. */
static int zc_append(psd_wal *w, int i, uint64_t seq, void **blk, size_t *cap, waiter *wt,
                     seam *sm) {
  size_t hl = ZC_HEAD(i), dl = zc_len(i);
  if (!*blk || *cap < dl) {
    free(*blk);
    *cap = dl + 100;
    *blk = zc_block(*cap);
  }
  uint8_t head[128];
  fill(head, hl, seq);
  fill(*blk, dl, seq + hl);
  struct iovec iov[2] = {{head, hl}, {*blk, dl}};
  void *was = *blk;
  uint64_t got;
  ps_errbuf eb;
  ck_assert_int_eq(psd_wal_append_own(w, iov, 2, blk, cap, NULL, &got, &eb), 0);
  ck_assert_uint_eq(got, seq);
  int taken = *blk != was;
  ck_assert_int_eq(taken, dl >= 65536); /* small pieces are copied as before */
  *wt = (waiter){.wt = {.done = {.fn = waiter_done, .arg = wt}, .seq = seq}, .sm = sm};
  int rc = psd_wal_wait(w, &wt->wt, &eb);
  ck_assert_msg(rc >= 0 || rc == PS_EDEGRADED, "%s", eb.msg); /* a failing log: retried */
  if (rc <= 0) waiter_done(&wt->wt.done, rc, rc ? eb.msg : NULL);
  return taken;
}

/* zc_write_log writes ZC_N records of zc_len's mix into a fresh log at DIR
 * (appended while the seam's slow syncs make groups of several), all
 * synced; blocks come back from the log once synced. */
static void zc_write_log(const char *dir) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  seam sm = {0};
  psd_wal *w = wal_open(dir, 1 << 20, &sm);
  ps_errbuf eb;
  replayed r = {0};
  ck_assert_int_eq(psd_wal_replay(w, 0, count_rec, &r, &eb), 0);
  ck_assert_int_eq(psd_wal_start(w, &loop, &eb), 0);
  waiter ws[ZC_N];
  void *blk = NULL;
  size_t cap = 0;
  int taken = 0;
  for (int i = 0; i < ZC_N; i++) {
    taken += zc_append(w, i, (uint64_t)i + 1, &blk, &cap, &ws[i], &sm);
    if (i % 7 == 6) run_until(&loop, ws, (size_t)i + 1); /* blocks come back */
  }
  run_until(&loop, ws, ZC_N);
  for (int i = 0; i < ZC_N; i++) ck_assert_int_eq(ws[i].status, 0);
  ck_assert_int_gt(taken, ZC_N / 2);
  wal_close(w, &loop);
  free(blk);
}

/* zc_skips lists SEG's skip records (seq 2^64 - 1): their offsets into OFFS and
 * payload lengths into LENS (at most MAX), and returns how many. */
static size_t zc_skips(const char *seg, off_t *offs, uint32_t *lens, size_t max) {
  int fd = open(seg, O_RDONLY);
  ck_assert_int_ge(fd, 0);
  struct stat st;
  ck_assert_int_eq(fstat(fd, &st), 0);
  size_t k = 0;
  for (off_t off = 0; off + 16 <= st.st_size;) {
    uint8_t h[16];
    ck_assert_int_eq(pread(fd, h, 16, off), 16);
    uint32_t len;
    uint64_t seq;
    memcpy(&len, h, 4);
    memcpy(&seq, h + 8, 8);
    len &= 0x7fffffffu;
    if (seq == 0 && len == 0) break; /* zeros after the records */
    uint64_t magic = 0;
    if (seq == UINT64_MAX && len == 32) ck_assert_int_eq(pread(fd, &magic, 8, off + 16), 8);
    if (seq == UINT64_MAX && !magic && k < max) offs[k] = off, lens[k++] = len; /* not a mark */
    off += 16 + len;
  }
  close(fd);
  return k;
}

START_TEST(test_zero_copy_replay) {
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  zc_write_log(dir);
  replayed r;
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0); /* every byte checked */
  ck_assert_uint_eq(r.n, ZC_N);
  ck_assert_uint_eq(r.last, ZC_N);
  char *seg = newest_segment(dir);
  off_t skips[64];
  uint32_t lens[64];
  size_t ns = zc_skips(seg, skips, lens, 64);
  /* O_DIRECT: skip records put the taken pieces on blocks of the file;
   * buffered writes need none */
  if (_i) ck_assert_uint_eq(ns, 0);
  /* record 1, taken, is the segment's first: copied whole, no skip
   * record before it (versions before skip records would cut the
   * segment) */
  ck_assert(ns == 0 || skips[0] > 0);
  /* a torn tail inside the last record's piece, written from its block:
   * the record is dropped, the ones before it stay */
  struct stat st;
  ck_assert_int_eq(stat(seg, &st), 0);
  ck_assert_int_eq(truncate(seg, st.st_size - 5000), 0);
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 1);
  ck_assert_uint_eq(r.n, ZC_N - 1);
  if (ns > 1) {
    /* a skip record damaged (its zeros, or its checksum when it has
     * none): the record after it is the next one, so nothing is missing:
     * stepped over, every record replayed */
    off_t at = skips[ns - 2] + (lens[ns - 2] ? 16 + lens[ns - 2] / 2 : 4);
    int fd = open(seg, O_RDWR);
    uint8_t b = 0x77;
    ck_assert_int_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
    psd_wal *w = wal_open(dir, 1 << 20, NULL);
    memset(&r, 0, sizeof r);
    int rc = psd_wal_replay(w, 0, count_rec, &r, &eb);
    psd_wal_stats st2;
    psd_wal_stats_get(w, &st2);
    psd_wal_free(w);
    ck_assert_msg(rc == 0, "%s", eb.msg); /* stepped over: no record is missing */
    ck_assert_uint_eq(st2.replay_dropped, 0);
    ck_assert_uint_eq(r.n, ZC_N - 1);
    ck_assert_uint_eq(r.last, ZC_N - 1);
  }
  free(seg);
}
END_TEST

/* the hold seam: fails its first HOLD->fail syncs, then blocks each sync
 * while HOLD->hold is set, saying so in HOLD->in_sync. */
typedef struct hold_seam {
  int hold, in_sync, fail, calls;
  int nomem, allocs; /* hold_alloc: copies to fail; copies tried */
} hold_seam;

/* hold_alloc: the log's copy of a lent piece (psd_wal_opts.copy_alloc),
 * failing while nomem says so. */
static int hold_alloc(void **p, size_t n, void *arg) {
  hold_seam *h = arg;
  __atomic_add_fetch(&h->allocs, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&h->nomem, __ATOMIC_SEQ_CST) > 0) {
    __atomic_sub_fetch(&h->nomem, 1, __ATOMIC_SEQ_CST);
    return ENOMEM;
  }
  return posix_memalign(p, 4096, n);
}

static int hold_sync(int fd, void *arg) {
  hold_seam *h = arg;
  __atomic_add_fetch(&h->calls, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&h->fail, __ATOMIC_SEQ_CST) > 0) {
    __atomic_sub_fetch(&h->fail, 1, __ATOMIC_SEQ_CST);
    errno = EIO;
    return -1;
  }
  __atomic_store_n(&h->in_sync, 1, __ATOMIC_SEQ_CST);
  int64_t end = ps_test_now_ms() + 20000;
  while (__atomic_load_n(&h->hold, __ATOMIC_SEQ_CST) && ps_test_now_ms() < end) usleep(500);
  __atomic_store_n(&h->in_sync, 0, __ATOMIC_SEQ_CST);
  return fdatasync(fd);
}

/* wait_flag waits (bounded) for *P to become V, running LOOP. */
static void wait_flag(uv_loop_t *loop, int *p, int v) {
  int64_t end = ps_test_now_ms() + 20000;
  while (__atomic_load_n(p, __ATOMIC_SEQ_CST) != v) {
    ck_assert_msg(ps_test_now_ms() < end, "flag not %d", v);
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(200);
  }
}

/* hold_started starts a log at DIR on LOOP whose syncs go through HS
 * (hold_sync), written buffered as wal_buffered says. */
static psd_wal *hold_started(const char *dir, hold_seam *hs, uv_loop_t *loop) {
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .retry_ms = 20, .sync = hold_sync,
                    .sync_arg = hs, .copy_alloc = hold_alloc, .buffered = wal_buffered};
  return wal_started(&o, loop);
}

START_TEST(test_zero_copy_block_kept) {
  /* a taken block is not given back before its group is written and
   * synced: not while the sync is in progress, not after a failed one
   * (the retry writes from it again) */
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  uv_loop_t loop;
  uv_loop_init(&loop);
  hold_seam hs = {.hold = 1, .fail = 1};
  psd_wal *w = hold_started(dir, &hs, &loop);
  ps_errbuf eb;
  replayed r = {0};
  seam dummy = {0};
  waiter ws[3];
  void *a = NULL, *b = NULL, *c = NULL;
  size_t ca = 0, cb = 0, cc = 0;
  zc_append(w, 2, 1, &a, &ca, &ws[0], &dummy); /* i = 2: a taken piece */
  ck_assert_ptr_null(a);                      /* nothing to give back yet */
  /* its first sync fails, the retry's sync is held */
  wait_flag(&loop, &hs.in_sync, 1);
  ck_assert_int_ge(__atomic_load_n(&hs.calls, __ATOMIC_SEQ_CST), 2);
  zc_append(w, 5, 2, &b, &cb, &ws[1], &dummy);
  ck_assert_ptr_null(b); /* record 1's block is still the log's */
  __atomic_store_n(&hs.hold, 0, __ATOMIC_SEQ_CST);
  run_until(&loop, ws, 2); /* answered: synced, or PS_EDEGRADED while the sync failed */
  wait_synced(&loop, w, 2);
  zc_append(w, 8, 3, &c, &cc, &ws[2], &dummy);
  ck_assert_ptr_nonnull(c); /* a synced block came back */
  run_until(&loop, ws + 2, 1);
  wal_close(w, &loop);
  free(c);
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 3); /* the retried record's bytes exact */
}
END_TEST

START_TEST(test_zero_copy_block_readable) {
  /* a block handed over stays readable, unchanged, until the caller's
   * next psd_wal_append_own (a push is applied from it after it is
   * logged), even when its group synced meanwhile and more blocks came
   * back than the log keeps: only that next call frees them */
  wal_buffered = 0;
  const char *dir = ps_test_tmpdir();
  uv_loop_t loop;
  uv_loop_init(&loop);
  hold_seam hs = {.hold = 1};
  psd_wal *w = hold_started(dir, &hs, &loop);
  ps_errbuf eb;
  replayed r = {0};
  enum { K = 7 };
  seam dummy = {0};
  waiter ws[K + 1];
  uint8_t *orig[K];
  for (int k = 0; k < K; k++) {
    int i = 2 + 3 * k; /* taken pieces (zc_len) */
    size_t cap = zc_len(i) + 100;
    void *b = zc_block(cap);
    orig[k] = b;
    zc_append(w, i, (uint64_t)k + 1, &b, &cap, &ws[k], &dummy);
    ck_assert_ptr_null(b); /* the first sync is held: nothing came back */
  }
  __atomic_store_n(&hs.hold, 0, __ATOMIC_SEQ_CST);
  run_until(&loop, ws, K);
  wait_synced(&loop, w, K);
  void *other[2 * K]; /* what a freed block would become next */
  for (int k = 0; k < 2 * K; k++) {
    other[k] = malloc(zc_len(2 + 3 * (k % K)) + 100);
    memset(other[k], 0xee, zc_len(2 + 3 * (k % K)) + 100);
  }
  for (int k = 0; k < K; k++) { /* every byte as handed over */
    int i = 2 + 3 * k;
    size_t hl = ZC_HEAD(i), dl = zc_len(i);
    for (size_t j = 0; j < dl; j++)
      ck_assert_msg(orig[k][j] == (uint8_t)((uint64_t)k + 1 + hl + j), "block %d byte %zu", k, j);
  }
  for (int k = 0; k < 2 * K; k++) free(other[k]);
  /* the next append gives one back and frees those beyond the log's four */
  void *b = zc_block(zc_len(23) + 100);
  size_t cap = zc_len(23) + 100;
  zc_append(w, 23, K + 1, &b, &cap, &ws[K], &dummy);
  ck_assert_ptr_nonnull(b);
  int mine = 0;
  for (int k = 0; k < K; k++) mine += b == orig[k];
  ck_assert_int_eq(mine, 1);
  run_until(&loop, ws + K, 1);
  wal_close(w, &loop);
  free(b);
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, K + 1);
}
END_TEST

/* a lender (ps_lend) that counts its holds and releases */
typedef struct lender {
  int holds, releases;
} lender;
static void lender_hold(void *a) { __atomic_add_fetch(&((lender *)a)->holds, 1, __ATOMIC_SEQ_CST); }
static void lender_release(void *a) {
  __atomic_add_fetch(&((lender *)a)->releases, 1, __ATOMIC_SEQ_CST);
}
static int lender_get(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

/* lent_append appends record I (seq SEQ) with its piece lent at BLK (CAP
 * bytes, filled here) and queues waiter WT; the block stays the
 * caller's, taken or not. */
static void lent_append(psd_wal *w, int i, uint64_t seq, uint8_t *blk, size_t cap,
                        const ps_lend *lend, waiter *wt, seam *sm) {
  size_t hl = ZC_HEAD(i), dl = zc_len(i);
  uint8_t head[128];
  fill(head, hl, seq);
  fill(blk, dl, seq + hl);
  struct iovec iov[2] = {{head, hl}, {blk, dl}};
  void *own = blk;
  uint64_t got;
  ps_errbuf eb;
  ck_assert_int_eq(psd_wal_append_own(w, iov, 2, &own, &cap, lend, &got, &eb), 0);
  ck_assert_uint_eq(got, seq);
  ck_assert_ptr_eq(own, blk); /* lent, not given: nothing comes back */
  *wt = (waiter){.wt = {.done = {.fn = waiter_done, .arg = wt}, .seq = seq}, .sm = sm};
  int rc = psd_wal_wait(w, &wt->wt, &eb);
  ck_assert_msg(rc >= 0 || rc == PS_EDEGRADED, "%s", eb.msg);
  if (rc <= 0) waiter_done(&wt->wt.done, rc, rc ? eb.msg : NULL);
}

START_TEST(test_zero_copy_lent) {
  /* a lent piece (a client's shared memory, ps_lend) is written from
   * where it lies, held once and released once its group is synced, not
   * during the sync; a failed sync answers its push (PS_EDEGRADED), after
   * which the client may rewrite it, so the log copies it out first and
   * the retry writes the bytes it was lent; a failing log copies a lent
   * piece instead of holding it.  Every record replays exact. */
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  uv_loop_t loop;
  uv_loop_init(&loop);
  hold_seam hs = {.hold = 1, .fail = 1};
  psd_wal *w = hold_started(dir, &hs, &loop);
  lender ld = {0};
  ps_lend lend = {.hold = lender_hold, .release = lender_release, .arg = &ld};
  size_t l1 = zc_len(2), l2 = zc_len(5), a2 = (l1 + 4095) & ~(size_t)4095, cap = a2 + l2;
  uint8_t *region = zc_block(cap);
  seam dummy = {0};
  waiter ws[3];
  lent_append(w, 2, 1, region, cap, &lend, &ws[0], &dummy);
  ck_assert_int_eq(lender_get(&ld.holds), 1);
  wait_flag(&loop, &hs.in_sync, 1); /* its first sync failed, the retry's is held */
  run_until(&loop, ws, 1);
  ck_assert_int_eq(ws[0].status, PS_EDEGRADED);
  ck_assert_int_eq(lender_get(&ld.releases), 1); /* copied out before that answer */
  memset(region, 0xab, l1);                       /* the client's next gradients */
  lent_append(w, 5, 2, region + a2, cap - a2, &lend, &ws[1], &dummy);
  ck_assert_int_eq(lender_get(&ld.holds), 1); /* failing: copied, not held */
  memset(region + a2, 0xcd, l2);
  __atomic_store_n(&hs.hold, 0, __ATOMIC_SEQ_CST);
  run_until(&loop, ws + 1, 1);
  wait_synced(&loop, w, 2);
  __atomic_store_n(&hs.hold, 1, __ATOMIC_SEQ_CST);
  lent_append(w, 8, 3, region, cap, &lend, &ws[2], &dummy);
  ck_assert_int_eq(lender_get(&ld.holds), 2);
  wait_flag(&loop, &hs.in_sync, 1);
  ck_assert_int_eq(lender_get(&ld.releases), 1); /* not during its sync */
  __atomic_store_n(&hs.hold, 0, __ATOMIC_SEQ_CST);
  run_until(&loop, ws + 2, 1);
  ck_assert_int_eq(ws[2].status, 0);
  ck_assert_int_eq(lender_get(&ld.releases), 2); /* before its answer */
  wal_close(w, &loop);
  free(region);
  ck_assert_int_eq(lender_get(&ld.holds), lender_get(&ld.releases));
  replayed r = {0};
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 3);
  ck_assert_int_eq(r.bad, 0); /* the bytes lent, not those written there after */
}
END_TEST

/* A failed sync whose lent piece the log finds no memory to copy does
 * not answer that push (its client would rewrite the piece the log still
 * writes from): the answer comes once a later attempt copied it, and the
 * bytes lent are the ones replayed. */
START_TEST(test_zero_copy_lent_nomem) {
  wal_buffered = _i;
  const char *dir = ps_test_tmpdir();
  uv_loop_t loop;
  uv_loop_init(&loop);
  hold_seam hs = {.hold = 1, .fail = 3, .nomem = 2}; /* the fourth attempt held */
  psd_wal *w = hold_started(dir, &hs, &loop);
  lender ld = {0};
  ps_lend lend = {.hold = lender_hold, .release = lender_release, .arg = &ld};
  size_t cap = zc_len(2) + 4096;
  uint8_t *region = zc_block(cap);
  seam dummy = {0};
  waiter ws[1];
  lent_append(w, 2, 1, region, cap, &lend, &ws[0], &dummy);
  int64_t end = ps_test_now_ms() + 20000;
  while (!ws[0].done) {
    ck_assert_msg(ps_test_now_ms() < end, "the push was never answered");
    uv_run(&loop, UV_RUN_NOWAIT);
    /* answered only after its piece was copied out and released */
    ck_assert(!ws[0].done || lender_get(&ld.releases) == 1);
    usleep(200);
  }
  ck_assert_int_ge(__atomic_load_n(&hs.allocs, __ATOMIC_SEQ_CST), 3);
  ck_assert_int_eq(ws[0].status, PS_EDEGRADED);
  memset(region, 0xab, cap); /* the client's next gradients */
  __atomic_store_n(&hs.hold, 0, __ATOMIC_SEQ_CST);
  wait_synced(&loop, w, 1);
  wal_close(w, &loop);
  free(region);
  ck_assert_int_eq(lender_get(&ld.holds), 1);
  ck_assert_int_eq(lender_get(&ld.releases), 1);
  replayed r = {0};
  ps_errbuf eb;
  ck_assert_uint_eq(replay_count(dir, 0, &r, 0, &eb), 0);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_int_eq(r.bad, 0);
}
END_TEST

/* ---- the store through the log ------------------------------------------------------ */

static uint32_t shape_w[] = {40, 25};
static const uint32_t wal_ids1[] = {0};

typedef struct store_spec {
  Ps__TensorSpec t;
  Ps__TensorSpec *tp;
  Ps__OptimizerSpec opt;
  Ps__ModelSpec spec;
} store_spec;

static Ps__ModelSpec *adam_spec(store_spec *b) {
  ps__tensor_spec__init(&b->t);
  b->t.name = "w";
  b->t.n_shape = 2;
  b->t.shape = shape_w;
  b->t.init = "glorot";
  b->t.scale = 1;
  b->tp = &b->t;
  ps__optimizer_spec__init(&b->opt);
  b->opt.kind = "adam";
  b->opt.lr = 0.01f;
  ps__model_spec__init(&b->spec);
  b->spec.name = "m";
  b->spec.seed = 3;
  b->spec.n_tensors = 1;
  b->spec.tensors = &b->tp;
  b->spec.optimizer = &b->opt;
  b->spec.chunk_elems = 128;
  b->spec.staleness_weight = "inverse";
  return &b->spec;
}

static psd_store *store_open(const char *dir) {
  psd_store_opts o = {.dir = dir, .shard_index = 0, .shard_ids = wal_ids1, .nshards = 1,
                      .chunk_elems = 128};
  psd_store *s;
  ps_errbuf eb;
  ck_assert_msg(psd_store_open(&s, &o, &eb) == 0, "%s", eb.msg);
  return s;
}

static int log_hook(void *arg, const struct iovec *iov, int niov, void **own, size_t *own_cap,
                    const ps_lend *lend, uint64_t *seq, ps_errbuf *eb) {
  return psd_wal_append_own(arg, iov, niov, own, own_cap, lend, seq, eb);
}

static int replay_hook(void *arg, uint64_t seq, const uint8_t *p, size_t len, ps_errbuf *eb) {
  return psd_store_replay(arg, seq, p, len, eb);
}

/* state_copy returns every held chunk's values, slots and step, and the
 * version, as one buffer. */
static uint8_t *state_copy(psd_store *s, size_t *n) {
  const uint32_t *ids;
  size_t nids;
  ck_assert_int_eq(psd_store_held(s, "m", &ids, &nids, NULL), 0);
  uint8_t *out = NULL;
  *n = 0;
  for (size_t i = 0; i < nids; i++) {
    const float *d;
    uint32_t len;
    unsigned slots;
    uint64_t step;
    ck_assert_int_eq(psd_store_chunk_state(s, "m", ids[i], &d, &len, &slots, &step), 0);
    size_t b = (size_t)len * (1 + slots) * 4;
    out = realloc(out, *n + b + 8);
    memcpy(out + *n, d, b);
    memcpy(out + *n + b, &step, 8);
    *n += b + 8;
  }
  psd_model_info info;
  psd_store_model_info(s, 0, &info);
  out = realloc(out, *n + 8);
  memcpy(out + *n, &info.version, 8);
  *n += 8;
  return out;
}

/* rnd01 returns a uniform number in [0, 1). */
static float rnd01(void) { return (ps_test_rnd() + 1) * 0.4999f; }

/* random_push picks 1..3 consecutive chunks of model "m" in S into IDS
 * (their count returned) and the version a push to them saw into *SEEN
 * (up to 2 behind). */
static size_t random_push(psd_store *s, uint32_t ids[3], uint64_t *seen) {
  const uint32_t *held;
  size_t nheld;
  ck_assert_int_eq(psd_store_held(s, "m", &held, &nheld, NULL), 0);
  size_t n = 1 + (size_t)(rnd01() * 3);
  uint32_t first = (uint32_t)(rnd01() * (float)(nheld - n));
  for (size_t j = 0; j < n; j++) ids[j] = held[first + j];
  psd_model_info info;
  psd_store_model_info(s, 0, &info);
  *seen = info.version > 3 ? info.version - (uint64_t)(rnd01() * 3) : 0;
  return n;
}

/* push_random pushes K random gradients to random chunk sets. */
static void push_random(psd_store *s, int k) {
  float g[1000];
  for (int i = 0; i < k; i++) {
    uint32_t ids[3];
    uint64_t elems = 0, nbytes = 0, seen;
    size_t n = random_push(s, ids, &seen);
    ps_errbuf eb;
    ps_req q = {.model = "m", .ids = ids, .nids = n};
    ck_assert_int_eq(psd_store_payload(s, &q, 1, &elems, &nbytes, &eb), 0);
    for (uint64_t j = 0; j < elems; j++) g[j] = ps_test_rnd() * 0.5f;
    ps_req r = {.model = "m", .ids = ids, .nids = n, .worker = 1, .version = seen, .grads = g,
                .nbytes = elems * sizeof(float)};
    ck_assert_int_eq(psd_store_push(s, &r, NULL, &eb), 0);
  }
}

/* store_dirs names a store's directory DIR in a new temporary directory,
 * and LOGDIR, its redo log's, inside it. */
static void store_dirs(char dir[1024], char logdir[1100]) {
  snprintf(dir, 1024, "%s/store", ps_test_tmpdir());
  snprintf(logdir, 1100, "%s/redo", dir);
}

/* logged_store opens a store in DIR with model SPEC ("m") and a started
 * redo log in LOGDIR whose records it logs; *W receives the log. */
static psd_store *logged_store(const char *dir, const char *logdir, uv_loop_t *loop,
                               Ps__ModelSpec *spec, psd_wal **w) {
  psd_store *s = store_open(dir);
  ps_errbuf eb;
  int created;
  ck_assert_int_eq(psd_store_submit(s, spec, 0, &created, NULL, NULL, &eb), 0);
  *w = wal_open(logdir, 1 << 20, NULL);
  replayed r;
  ck_assert_int_eq(psd_wal_replay(*w, psd_store_log_seq(s), count_rec, &r, &eb), 0);
  ck_assert_int_eq(psd_wal_start(*w, loop, &eb), 0);
  psd_store_set_log(s, log_hook, *w);
  return s;
}

/* crash_replay stops W (its queued records written: they were
 * acknowledged) and closes *S without a final flush (a crash), reopens
 * the store at DIR, checks it holds log position FROM, replays the log
 * in LOGDIR and checks that the state is BEFORE (N bytes of state_copy)
 * at log position LAST.  Returns the number of records replayed; the
 * reopened store is left in *S. */
static uint64_t crash_replay(psd_store **s, psd_wal *w, uv_loop_t *loop, const char *dir,
                             const char *logdir, uint64_t from, uint64_t last,
                             const uint8_t *before, size_t n) {
  ps_errbuf eb;
  psd_wal_stop(w);
  uv_run(loop, UV_RUN_DEFAULT);
  psd_wal_free(w);
  psd_store_close(*s);
  *s = store_open(dir);
  ck_assert_uint_eq(psd_store_log_seq(*s), from);
  w = wal_open(logdir, 1 << 20, NULL);
  ck_assert_msg(psd_wal_replay(w, psd_store_log_seq(*s), replay_hook, *s, &eb) == 0, "%s", eb.msg);
  psd_wal_stats st;
  psd_wal_stats_get(w, &st);
  ck_assert_uint_eq(psd_store_log_seq(*s), last);
  size_t n2;
  uint8_t *after = state_copy(*s, &n2);
  ck_assert_uint_eq(n, n2);
  ck_assert_msg(memcmp(before, after, n) == 0, "replayed state differs from the pre-crash one");
  free(after);
  psd_model_info info; /* the reopened store received no push: replayed ones are not counted */
  psd_store_model_info(*s, 0, &info);
  for (int i = 0; i < PSD_TAU_BUCKETS; i++) ck_assert_uint_eq(info.tau_hist[i], 0);
  psd_wal_free(w);
  return st.replayed;
}

START_TEST(test_store_replay_exact) {
  ps_test_rng_init();
  char dir[1024], logdir[1100];
  store_dirs(dir, logdir);
  uv_loop_t loop;
  uv_loop_init(&loop);
  store_spec sb;
  ps_errbuf eb;
  psd_wal *w;
  psd_store *s = logged_store(dir, logdir, &loop, adam_spec(&sb), &w);
  push_random(s, 40);
  ck_assert_int_eq(psd_store_flush(s, &eb), 0); /* a snapshot in the middle */
  psd_wal_truncate(w, psd_store_log_seq(s));
  push_random(s, 60);
  size_t n1;
  uint8_t *before = state_copy(s, &n1);
  ck_assert_uint_eq(psd_store_log_seq(s), 100);
  ck_assert_uint_eq(crash_replay(&s, w, &loop, dir, logdir, 40, 100, before, n1), 60);
  psd_store_close(s);
  /* the store's directory lost (the log kept): refused, naming the model */
  char cmd[2300];
  snprintf(cmd, sizeof cmd, "cd '%s' && find . -maxdepth 1 -type f -delete", dir);
  ck_assert_int_eq(system(cmd), 0);
  s = store_open(dir);
  w = wal_open(logdir, 1 << 20, NULL);
  ck_assert_int_eq(psd_wal_replay(w, psd_store_log_seq(s), replay_hook, s, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "snapshot is missing") || strstr(eb.msg, "missing"), "%s", eb.msg);
  psd_wal_free(w);
  psd_store_close(s);
  free(before);
  uv_loop_close(&loop);
}
END_TEST

typedef struct flush_job {
  psd_flush *f;
  int rc;
  ps_errbuf eb;
} flush_job;

static void *flush_thread(void *arg) {
  flush_job *j = arg;
  j->rc = psd_flush_write(j->f, &j->eb);
  return NULL;
}

/* A snapshot is written while pushes go on (its writing thread beside
 * them, as psd's flush runs): its chunks may hold pushes after its log
 * position, each saying which, and replay after that position gives back
 * the exact pre-crash state (a push applied twice would differ). */
START_TEST(test_store_replay_fuzzy_snapshot) {
  ps_test_rng_init();
  char dir[1024], logdir[1100];
  store_dirs(dir, logdir);
  uv_loop_t loop;
  uv_loop_init(&loop);
  store_spec sb;
  ps_errbuf eb;
  psd_wal *w;
  psd_store *s = logged_store(dir, logdir, &loop, adam_spec(&sb), &w);
  push_random(s, 30);
  for (int round = 0; round < 3; round++) {
    psd_flush *f = NULL;
    ck_assert_int_eq(psd_flush_prepare(s, &f, &eb), 0);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(psd_flush_log_seq(f), 30 + 40 * (uint64_t)round);
    push_random(s, 15); /* before the write: its chunks hold these */
    flush_job j = {.f = f};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, flush_thread, &j), 0);
    push_random(s, 15); /* beside the write: some chunks may hold these */
    pthread_join(t, NULL);
    ck_assert_msg(j.rc == 0, "%s", j.eb.msg);
    uint64_t held = psd_flush_log_seq(f);
    psd_flush_finish(s, f, 0); /* frees F */
    psd_wal_truncate(w, held);
    push_random(s, 10);
  }
  size_t n1;
  uint8_t *before = state_copy(s, &n1);
  ck_assert_uint_eq(psd_store_log_seq(s), 150);
  crash_replay(&s, w, &loop, dir, logdir, 110, 150, before, n1);
  psd_store_close(s);
  free(before);
  uv_loop_close(&loop);
}
END_TEST

/* A dense push record whose element count x 4 wraps round to the
 * record's size does not decode (it was applied as the push of chunk 0's
 * 128 elements the record holds). */
START_TEST(test_store_replay_bad_count) {
  const char *dir = ps_test_tmpdir();
  psd_store *s = store_open(dir);
  store_spec sb;
  ps_errbuf eb;
  int created;
  ck_assert_int_eq(psd_store_submit(s, adam_spec(&sb), 0, &created, NULL, NULL, &eb), 0);
  uint8_t rec[2 + 1 + 8 + 4 + 8 + 8 + 4 + 8 + 4 + 128 * 4] = {1, 1, 'm'};
  uint64_t gen = 1, nelems = (1ull << 62) + 128;
  uint32_t nids = 1;
  memcpy(rec + 3, &gen, 8);
  memcpy(rec + 3 + 28, &nids, 4);
  memcpy(rec + 3 + 32, &nelems, 8);
  ck_assert_int_eq(psd_store_replay(s, 1, rec, sizeof rec, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, "redo log record 1 does not decode");
  psd_store_close(s);
}
END_TEST

/* What the coded test's log hook saw: record bytes by kind (psd_store.c's
 * record kinds 1 and 3), and the bytes the floats would have taken. */
static struct {
  uint64_t recs[4], bytes[4];
} logged;

static int log_hook_tally(void *arg, const struct iovec *iov, int niov, void **own,
                          size_t *own_cap, const ps_lend *lend, uint64_t *seq, ps_errbuf *eb) {
  uint8_t kind = ((const uint8_t *)iov[0].iov_base)[0];
  ck_assert_uint_lt(kind, 4);
  logged.recs[kind]++;
  for (int i = 0; i < niov; i++) logged.bytes[kind] += iov[i].iov_len;
  return psd_wal_append_own(arg, iov, niov, own, own_cap, lend, seq, eb);
}

/* push_coded pushes K random gradients to random chunk sets of S (model
 * MODEL, laid out as L, as "m" is), encoded in CODEC (each chunk in the
 * codec L gives it); *FLOAT_BYTES grows by the bytes their floats take. */
static void push_coded(psd_store *s, const char *model, const ps_layout *l, int k,
                       ps_codec_id codec, uint64_t *float_bytes) {
  float g[128];
  uint8_t enc[3 * 128 * 4];
  for (int i = 0; i < k; i++) {
    uint32_t ids[3];
    uint64_t nbytes = 0, elems = 0, seen;
    size_t n = random_push(s, ids, &seen);
    for (size_t j = 0; j < n; j++) {
      uint32_t len = l->chunks[ids[j]].len;
      ck_assert_uint_le(len, 128);
      for (uint32_t e = 0; e < len; e++) g[e] = ps_test_rnd() * 0.5f;
      ps_codec_id c = ps_layout_chunk_codec(l, ids[j], codec, 1);
      ps_codec_encode(c, g, len, l->topk, enc + nbytes);
      nbytes += ps_codec_size(c, len, l->topk);
      elems += len;
    }
    ck_assert_uint_eq(nbytes, ps_layout_payload_bytes(l, ids, n, codec, 1));
    *float_bytes += elems * 4;
    ps_req r = {.model = model, .ids = ids, .nids = n, .worker = 2, .version = seen,
                .codec = codec, .grads = enc, .nbytes = nbytes};
    ps_errbuf eb;
    ck_assert_msg(psd_store_push(s, &r, NULL, &eb) == 0, "%s", eb.msg);
  }
}

/* A push that came encoded is logged as received, in fewer bytes than
 * its floats (kind 3), and replay decodes it to the exact pre-crash state;
 * a push whose encoding is no smaller (fp32) is logged as floats (kind 1).
 * Coded records that do not add up, name an unknown codec, or hold an
 * encoding the push path refuses are refused. */
START_TEST(test_store_replay_coded) {
  ps_test_rng_init();
  char dir[1024], logdir[1100];
  store_dirs(dir, logdir);
  uv_loop_t loop;
  uv_loop_init(&loop);
  store_spec sb;
  Ps__ModelSpec *spec = adam_spec(&sb);
  spec->codec_min_elems = 1; /* the 1000-element tensor is compressed */
  spec->topk = 0.25f;
  /* a model per codec (a shard takes pushes in its model's codec or
   * fp32), "m" the first; the fp32 pushes go to "m" */
  static const ps_codec_id codecs[] = {PS_CODEC_FP16, PS_CODEC_INT8, PS_CODEC_ONEBIT,
                                       PS_CODEC_TOPK, PS_CODEC_FP32};
  static const char *const models[] = {"m", "m_int8", "m_onebit", "m_topk", "m"};
  ps_layout ls[4], l;
  ps_errbuf eb;
  psd_wal *w;
  psd_store *s = NULL;
  for (int c = 0; c < 4; c++) {
    spec->name = (char *)models[c];
    spec->codec = (char *)ps_codec_name(codecs[c]);
    ck_assert_int_eq(ps_layout_build(&ls[c], spec, 128, wal_ids1, 1, &eb), 0);
    int created;
    if (c == 0) s = logged_store(dir, logdir, &loop, spec, &w);
    else ck_assert_int_eq(psd_store_submit(s, spec, 0, &created, NULL, NULL, &eb), 0);
  }
  spec->name = (char *)models[0];
  spec->codec = (char *)ps_codec_name(codecs[0]);
  ck_assert_int_eq(ps_layout_build(&l, spec, 128, wal_ids1, 1, &eb), 0);
  psd_store_set_log(s, log_hook_tally, w);
  memset(&logged, 0, sizeof logged);
  uint64_t float_bytes = 0;
  for (int round = 0; round < 2; round++) {
    for (size_t c = 0; c < sizeof codecs / sizeof codecs[0]; c++)
      push_coded(s, models[c], &ls[c < 4 ? c : 0], 6, codecs[c], &float_bytes);
    if (round == 0) { /* a snapshot in the middle */
      ck_assert_int_eq(psd_store_flush(s, &eb), 0);
      psd_wal_truncate(w, psd_store_log_seq(s));
    }
  }
  ck_assert_uint_eq(logged.recs[1], 12); /* the fp32 pushes */
  ck_assert_uint_eq(logged.recs[3], 48);
  ck_assert_uint_eq(logged.recs[0] + logged.recs[2], 0);
  /* per float 2, 1, 1/8 and 0.25 x (4 + 4) bytes (and a scale per chunk
   * for int8 and onebit): the coded records, 4/5 of the pushes, take
   * about a third of all the floats' bytes (12/15 if they held floats) */
  ck_assert_msg(logged.bytes[3] * 2 < float_bytes,
                "coded records: %llu bytes, the floats %llu",
                (unsigned long long)logged.bytes[3], (unsigned long long)float_bytes);
  size_t n1;
  uint8_t *before = state_copy(s, &n1);
  ck_assert_uint_eq(psd_store_log_seq(s), 60);
  ck_assert_uint_eq(crash_replay(&s, w, &loop, dir, logdir, 30, 60, before, n1), 30);
  free(before);

  /* hand-made kind 3 records of chunk 0 (128 elements, int8: 4 + 128
   * bytes), each refused */
  uint8_t rec[3 + 40 + 4 + 4 + 132];
  uint64_t gen = 1, nbytes = 132;
  uint32_t nids = 1, codec = PS_CODEC_INT8, id0 = 0;
  memset(rec, 0, sizeof rec);
  rec[0] = 3, rec[1] = 1, rec[2] = 'm';
  memcpy(rec + 3, &gen, 8);
  memcpy(rec + 3 + 28, &nids, 4);
  memcpy(rec + 3 + 32, &nbytes, 8);
  memcpy(rec + 3 + 40, &codec, 4);
  memcpy(rec + 3 + 44, &id0, 4);
  float scale = 1.0f / 0.0f; /* a non-finite scale: ps_codec_check refuses it */
  memcpy(rec + 3 + 48, &scale, 4);
  ck_assert_int_eq(psd_store_replay(s, 61, rec, sizeof rec, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "redo log record 61 does not apply: "), "%s", eb.msg);
  ck_assert_int_eq(psd_store_replay(s, 61, rec, sizeof rec - 1, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, "redo log record 61 does not decode");
  codec = 9;
  memcpy(rec + 3 + 40, &codec, 4);
  ck_assert_int_eq(psd_store_replay(s, 61, rec, sizeof rec, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, "redo log record 61 does not decode");
  codec = PS_CODEC_FP16; /* 132 bytes are not chunk 0's 256 in fp16 */
  memcpy(rec + 3 + 40, &codec, 4);
  ck_assert_int_eq(psd_store_replay(s, 61, rec, sizeof rec, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "does not apply"), "%s", eb.msg);
  psd_store_close(s);
  for (int c = 0; c < 4; c++) ps_layout_release(&ls[c]);
  ps_layout_release(&l);
  uv_loop_close(&loop);
}
END_TEST

/* ---- space (invariant 9) ---------------------------------------------------------- */

static ps_test_tmpfs sp_fs;
static void sp_setup(void) { ps_test_tmpfs_make(&sp_fs, "ps_test_wal", "size=16m"); }
static void sp_teardown(void) { ps_test_tmpfs_remove(&sp_fs); }

/* sp_wal starts a log in DIR on sp_fs on a new LOOP, synced through SM's
 * seam, with 1 MiB segments, a 64 MiB reserve (capped to a quarter of
 * the disk: 4 MiB) and on_state's count reset. */
static psd_wal *sp_wal(const char *dir, uv_loop_t *loop, seam *sm) {
  uv_loop_init(loop);
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .retry_ms = 20,
                    .segment_bytes = 1 << 20, .on_state = on_state, .sync = seam_sync,
                    .sync_arg = sm, .reserve_bytes = 64ull << 20};
  state_calls = 0;
  return wal_started(&o, loop);
}

/* sp_wait_said runs LOOP until on_state last said ERR with a message
 * holding WANT (any when NULL), at most 10 s, and checks that. */
static void sp_wait_said(uv_loop_t *loop, int err, const char *want) {
  int64_t end = ps_test_now_ms() + 10000;
  while (!(state_calls && state_last == err && (!want || strstr(state_msg, want))) &&
         ps_test_now_ms() < end) {
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ck_assert_msg(state_calls && state_last == err && (!want || strstr(state_msg, want)),
                "on_state said %d '%s' (%d calls), not %d '%s'", state_last, state_msg,
                state_calls, err, want ? want : "");
}

/* A log on a small disk stops short of the reserve kept for the snapshot
 * that lets it shrink: it says so (PS_EDEGRADED through on_state: the
 * shard refuses new pushes) but still syncs the records it was given,
 * keeps no spares, and works again once a snapshot's cut frees space. */
START_TEST(test_space_reserve) {
  if (!sp_fs.mounted) PS_SKIP("%s", sp_fs.why);
  char dir[700];
  snprintf(dir, sizeof dir, "%s/redo", sp_fs.mnt);
  uv_loop_t loop;
  seam sm = {0};
  psd_wal *w = sp_wal(dir, &loop, &sm);
  static waiter ws[256];
  uint64_t off = 0;
  size_t n = 0;
  while (state_calls == 0) { /* 64 KiB records, each synced before the next */
    ck_assert_msg(n < 256, "16 MiB written and the log never said it was short");
    append_n(w, ws + n, 1, 65536, &sm, &off);
    run_until(&loop, ws + n, 1);
    ck_assert_int_eq(ws[n].status, 0);
    n++;
    uv_run(&loop, UV_RUN_NOWAIT);
  }
  ck_assert_int_eq(state_last, PS_EDEGRADED);
  ck_assert_msg(n > 100, "short after %zu records", n); /* 12 MiB before the reserve */
  /* still written and synced: the reserve is for this */
  append_n(w, ws + n, 1, 65536, &sm, &off);
  run_until(&loop, ws + n, 1);
  ck_assert_int_eq(ws[n].status, 0);
  ck_assert_int_eq(ps_test_count_files(dir, ".free", 0), 0);
  /* a snapshot holds them all: the cut frees the space */
  psd_wal_truncate(w, ws[n].wt.seq);
  sp_wait_said(&loop, 0, NULL); /* (the last record's figure may be said before) */
  wal_close(w, &loop);
}
END_TEST

/* sp_wait_state runs LOOP until on_state has been called N times (bounded). */
static void sp_wait_state(uv_loop_t *loop, int n) {
  int64_t end = ps_test_now_ms() + 10000;
  while (state_calls < n && ps_test_now_ms() < end) {
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ck_assert_int_eq(state_calls, n);
}

/* A log short of space that then failed a write on the full disk, and
 * works again once the space is freed, says how much is free now: it
 * said what was free when it fell short, the disk full then ("0.7 MiB
 * free" in the DEGRADED reason with 10 MiB freed since). */
START_TEST(test_space_msg_after_failure) {
  if (!sp_fs.mounted) PS_SKIP("%s", sp_fs.why);
  char dir[700], filler[720];
  snprintf(dir, sizeof dir, "%s/redo_fail", sp_fs.mnt); /* (test_space_reserve's log stays) */
  snprintf(filler, sizeof filler, "%s/filler", sp_fs.mnt);
  uv_loop_t loop;
  seam sm = {0};
  psd_wal *w = sp_wal(dir, &loop, &sm);
  static waiter ws[2];
  uint64_t off = 0;
  /* the disk full: the log falls short of its reserve, then its write fails */
  ps_test_leave_free(filler, 16384);
  append_n(w, ws, 1, 65536, &sm, &off);
  run_until(&loop, ws, 1);
  ck_assert_int_eq(ws[0].status, PS_EDEGRADED);
  sp_wait_state(&loop, 1); /* (a wait made after the failure is refused before it is said) */
  ck_assert_int_ne(state_last, PS_EDEGRADED); /* the write's failure */
  /* 3 MiB free: still short (4 MiB kept), but the disk works again */
  ps_test_leave_free(filler, 3 << 20);
  sp_wait_state(&loop, 2);
  ck_assert_int_eq(state_last, PS_EDEGRADED);
  ck_assert_msg(strstr(state_msg, "disk is nearly full (2.") ||
                    strstr(state_msg, "disk is nearly full (3.0"),
                "'%s' (3 MiB free)", state_msg);
  unlink(filler);
  wal_close(w, &loop);
}
END_TEST

/* A log short of space says each new figure of the free space (once:
 * not at each look): the shard's DEGRADED reason kept the figure of when
 * it fell short, with space freed since (not enough), and said "under
 * the 4.0 MiB kept" with more than that free, short until a quarter more. */
START_TEST(test_space_msg_follows_free) {
  if (!sp_fs.mounted) PS_SKIP("%s", sp_fs.why);
  char dir[700], filler[720];
  snprintf(dir, sizeof dir, "%s/redo_follow", sp_fs.mnt);
  snprintf(filler, sizeof filler, "%s/filler_follow", sp_fs.mnt);
  uv_loop_t loop;
  seam sm = {0};
  psd_wal *w = sp_wal(dir, &loop, &sm);
  static waiter ws[1];
  uint64_t off = 0;
  ps_test_leave_free(filler, 2 << 20); /* short: 4 MiB kept */
  append_n(w, ws, 1, 4096, &sm, &off);
  run_until(&loop, ws, 1);
  ck_assert_int_eq(ws[0].status, 0); /* written into the reserve */
  sp_wait_said(&loop, PS_EDEGRADED, "nearly full (");
  ck_assert_msg(!strstr(state_msg, "(3."), "'%s' (2 MiB free)", state_msg);
  int calls = state_calls;
  ps_test_leave_free(filler, (3 << 20) + (1 << 19)); /* 3.5 MiB: still short */
  sp_wait_said(&loop, PS_EDEGRADED, "nearly full (3.");
  /* the same figure is not said again: ten looks (retry_ms 20) */
  calls = state_calls;
  int64_t end = ps_test_now_ms() + 200;
  while (ps_test_now_ms() < end) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ck_assert_int_eq(state_calls, calls);
  ps_test_leave_free(filler, (4 << 20) + (1 << 19)); /* 4.5 MiB: over the reserve, short until 5 */
  sp_wait_said(&loop, PS_EDEGRADED, "(4.");
  ck_assert_msg(strstr(state_msg, "under the 5.0 MiB it waits for: the 4.0 MiB kept"), "'%s'",
                state_msg);
  unlink(filler);
  sp_wait_said(&loop, 0, NULL);
  wal_close(w, &loop);
}
END_TEST

/* The short-of-space message never reads as "3.0 MiB free, under the
 * 3.0 MiB kept" (it did, the free space just under the reserve: a shard
 * on a 12 MiB disk said so, DEGRADED): the free space is rounded down,
 * the reserve up. */
START_TEST(test_space_short_msg) {
  char m[400], want[200];
  const uint64_t mib = 1048576;
  static const uint64_t cases[][3] = {
      /* avail, reserve, tenths of a MiB shown free then reserve */
      {3 * mib - 20 * 1024, 3 * mib, 29},  {3 * mib - 1, 3 * mib + 1, 29},
      {2 * mib + 60 * 1024, 2 * mib + 70 * 1024, 20}, {0, 36 * mib + 100 * 1024, 0}};
  static const unsigned shown_reserve[] = {30, 31, 21, 361};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    psd_wal_short_msg(m, sizeof m, "/d/redo", cases[i][0], cases[i][1]);
    snprintf(want, sizeof want, "(%u.%u MiB free in '/d/redo', under the %u.%u MiB kept",
             (unsigned)cases[i][2] / 10, (unsigned)cases[i][2] % 10, shown_reserve[i] / 10,
             shown_reserve[i] % 10);
    ck_assert_msg(strstr(m, want), "case %zu: '%s', want '%s'", i, m, want);
    /* what is refused is the shard's to say (psd_shard_accepting): said once */
    ck_assert_msg(strstr(m, "the redo log's disk is nearly full") && !strstr(m, "refused"),
                  "case %zu: '%s'", i, m);
  }
}
END_TEST

Suite *psd_wal_suite(void) {
  Suite *s = suite_create("psd_wal");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_loop_test(tc, test_ack_follows_sync, 0, 2);
  tcase_add_loop_test(tc, test_sync_failure_retried, 0, 2);
  tcase_add_test(tc, test_writer_waits);
  tcase_add_test(tc, test_wait_synced);
  tcase_add_test(tc, test_wait_synced_warns_once);
  tcase_add_loop_test(tc, test_power_cut, 0, 2);
  tcase_add_loop_test(tc, test_torn_and_corrupt_tail, 0, 2);
  tcase_add_loop_test(tc, test_corrupt_synced_record_refused, 0, 4);
  tcase_add_test(tc, test_torn_tail_counts);
  tcase_add_test(tc, test_torn_tail_counts_lost_header);
  tcase_add_test(tc, test_scan_old_sparse_bytes);
  tcase_add_test(tc, test_scan_cut_far_not_warned);
  tcase_add_test(tc, test_scan_old_dense_floats);
  tcase_add_test(tc, test_corrupt_before_last_record_refused);
  tcase_add_test(tc, test_damaged_record_snapshot_holds);
  tcase_add_test(tc, test_damaged_mark);
  tcase_add_test(tc, test_torn_single_record_group);
  tcase_add_test(tc, test_empty_log);
  tcase_add_test(tc, test_foreign_files);
  tcase_add_test(tc, test_segment_not_a_file);
  tcase_add_test(tc, test_segment_read_only);
  tcase_add_test(tc, test_log_after_missing_snapshot);
  tcase_add_test(tc, test_missing_earlier_segment_refused);
  tcase_add_test(tc, test_corrupt_earlier_segment_refused);
  tcase_add_test(tc, test_corrupt_inside_earlier_segment);
  tcase_add_test(tc, test_damage_before_recordless_segment);
  tcase_add_test(tc, test_stale_name_not_skipped);
  tcase_add_test(tc, test_old_bytes_after_earlier_segment);
  tcase_add_loop_test(tc, test_reused_segments, 0, 2);
  tcase_add_test(tc, test_failed_roll);
  tcase_add_test(tc, test_spares_dropped);
  tcase_add_test(tc, test_crc_formats);
  tcase_add_loop_test(tc, test_zero_copy_replay, 0, 2);
  tcase_add_loop_test(tc, test_zero_copy_block_kept, 0, 2);
  tcase_add_test(tc, test_zero_copy_block_readable);
  tcase_add_loop_test(tc, test_zero_copy_lent, 0, 2);
  tcase_add_loop_test(tc, test_zero_copy_lent_nomem, 0, 2);
  tcase_add_test(tc, test_store_replay_exact);
  tcase_add_test(tc, test_store_replay_fuzzy_snapshot);
  tcase_add_test(tc, test_store_replay_bad_count);
  tcase_add_test(tc, test_store_replay_coded);
  suite_add_tcase(s, tc);
  tc = tcase_create("space");
  tcase_set_timeout(tc, 60);
  tcase_add_unchecked_fixture(tc, sp_setup, sp_teardown);
  tcase_add_test(tc, test_space_reserve);
  tcase_add_test(tc, test_space_short_msg);
  tcase_add_test(tc, test_space_msg_after_failure);
  tcase_add_test(tc, test_space_msg_follows_free);
  suite_add_tcase(s, tc);
  return s;
}
