/* Tests for psd_sparse: rows created from the deterministic initializer,
 * per-row optimizers with per-row step counts (against psd_optim on a
 * copy), eviction under a memory budget and a bit-identical read back
 * (values, optimizer slots, update count, clock), bad input refused with
 * no row changed, admission after k pulls, flush and reopen, redo log
 * records replayed into the same rows. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps_place.h"
#include "ps_test.h"
#include "psd_optim.h"
#include "psd_sparse.h"

enum { D = 8 };

static psd_sparse *open_sparse(const char *dir, uint64_t memory_rows, uint32_t admit) {
  psd_sparse_opts o = {.dir = dir, .memory_rows = memory_rows, .admit_after = admit};
  psd_sparse *s;
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_open(&s, &o, &eb) == 0, "%s", eb.msg);
  return s;
}

static void add_table(psd_sparse *s, const char *kind, float lr) {
  Ps__OptimizerSpec spec = PS__OPTIMIZER_SPEC__INIT;
  spec.kind = (char *)kind;
  spec.lr = lr;
  psd_sparse_table_opts t = {.model = "ctr", .table = 2, .dim = D, .init = "normal",
                             .scale = 0.1f, .seed = 9, .optim = &spec};
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_add_table(s, &t, &eb) == 0, "%s", eb.msg);
}

/* A row's whole state as psd_sparse_row reports it. */
typedef struct row_state {
  float v[D], sl[2 * D];
  uint64_t count, clock;
  int in_mem;
} row_state;

static row_state get_row(psd_sparse *s, uint64_t key) {
  row_state r;
  memset(&r, 0, sizeof r);
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_row(s, "ctr", 2, key, r.v, r.sl, &r.count, &r.clock, &r.in_mem, &eb) == 0,
                "%s", eb.msg);
  return r;
}

static int same_row(const row_state *a, const row_state *b) {
  return memcmp(a->v, b->v, sizeof a->v) == 0 && memcmp(a->sl, b->sl, sizeof a->sl) == 0 &&
         a->count == b->count && a->clock == b->clock;
}

static void pull(psd_sparse *s, const uint64_t *keys, size_t n, float *rows) {
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_pull(s, "ctr", 2, keys, n, rows, n * D, &eb) == 0, "%s", eb.msg);
}

static void push(psd_sparse *s, const uint64_t *keys, size_t n, const float *g) {
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_push(s, "ctr", 2, keys, n, g, n * D, &eb) == 0, "%s", eb.msg);
}

/* max_new_rows bounds the rows one request may create (the loop's time
 * on it): a pull or push naming more keys without a row is refused
 * whole, PS_ETOOBIG, creating none; keys with a row do not count. */
START_TEST(test_max_new_rows) {
  psd_sparse_opts o = {.dir = ps_test_tmpdir(), .max_new_rows = 4};
  psd_sparse *s;
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_open(&s, &o, &eb) == 0, "%s", eb.msg);
  add_table(s, "adagrad", 0.1f);
  uint64_t keys[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  float rows[8 * D], g[8 * D];
  for (int i = 0; i < 8 * D; i++) g[i] = 0.25f;
  ck_assert_int_eq(psd_sparse_pull(s, "ctr", 2, keys, 5, rows, 5 * D, &eb), PS_ETOOBIG);
  ck_assert_msg(strstr(eb.msg, "sparse.max_new_rows") != NULL, "%s", eb.msg);
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys, 5, g, 5 * D, &eb), PS_ETOOBIG);
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.created, 0);
  ck_assert_uint_eq(st.rows_mem, 0);
  ck_assert_int_eq(psd_sparse_row(s, "ctr", 2, 1, NULL, NULL, NULL, NULL, NULL, &eb), PS_ENOENT);
  pull(s, keys, 4, rows);     /* 4 new: at the limit */
  pull(s, keys, 8, rows);     /* 4 with a row, 4 new */
  push(s, keys, 8, g);        /* all have rows */
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.created, 8);
  psd_sparse_close(s);
}
END_TEST

START_TEST(test_pull_creates_from_initializer) {
  psd_sparse *s = open_sparse(ps_test_tmpdir(), 0, 0);
  add_table(s, "sgd", 0.1f);
  uint64_t keys[3] = {5, UINT64_MAX, 1ull << 40};
  float rows[3 * D], want[D];
  pull(s, keys, 3, rows);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(ps_init_row(want, "normal", 0.1f, 9, 2, keys[i], D), 0);
    ck_assert_int_eq(memcmp(rows + i * D, want, sizeof want), 0);
  }
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.created, 3);
  ck_assert_uint_eq(st.misses, 3);
  ck_assert_uint_eq(st.rows_mem, 3);
  pull(s, keys, 2, rows);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.hits, 2);
  /* the same table again is fine, another dim or optimizer is not */
  add_table(s, "sgd", 0.5f);
  Ps__OptimizerSpec spec = PS__OPTIMIZER_SPEC__INIT;
  spec.kind = "adam";
  spec.lr = 0.1f;
  psd_sparse_table_opts t = {.model = "ctr", .table = 2, .dim = D, .init = "normal", .optim = &spec};
  ps_errbuf eb;
  ck_assert_int_eq(psd_sparse_add_table(s, &t, &eb), PS_EEXIST);
  t.table = 3, t.dim = 0;
  ck_assert_int_eq(psd_sparse_add_table(s, &t, &eb), PS_EINVAL);
  t.dim = 4, t.init = "bogus";
  ck_assert_int_eq(psd_sparse_add_table(s, &t, &eb), PS_EINVAL);
  ck_assert(strstr(eb.msg, "'bogus'") != NULL);
  psd_sparse_close(s);
}
END_TEST

/* Per-row optimizers: key A is pushed 3 times and key B once, and each
 * row follows psd_optim_apply on a copy with its own step count (lazy
 * Adam: B's one update gets the bias correction of t = 1). */
START_TEST(test_push_per_row_optimizers) {
  static const char *const kinds[] = {"sgd", "adagrad", "adam", "momentum"};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    psd_sparse *s = open_sparse(ps_test_tmpdir(), 0, 0);
    add_table(s, kinds[k], 0.05f);
    Ps__OptimizerSpec spec = PS__OPTIMIZER_SPEC__INIT;
    spec.kind = (char *)kinds[k];
    spec.lr = 0.05f;
    psd_optim o;
    ps_errbuf eb;
    ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), 0);
    float ref[2][3 * D] = {{0}}, rows[2 * D], g[2 * D];
    uint64_t keys[2] = {11, 12};
    pull(s, keys, 2, rows);
    for (int r = 0; r < 2; r++) memcpy(ref[r], rows + r * D, D * sizeof(float));
    for (int step = 1; step <= 3; step++) {
      for (int i = 0; i < 2 * D; i++) g[i] = ps_test_rnd();
      size_t n = step == 2 ? 2 : 1; /* key 12 is pushed at step 2 only */
      uint64_t ks[2] = {11, 12};
      push(s, ks, n, g);
      psd_optim_apply(&o, ref[0], ref[0] + D, g, D, (uint64_t)step);
      if (n == 2) psd_optim_apply(&o, ref[1], ref[1] + D, g + D, D, 1);
    }
    row_state a = get_row(s, 11), b = get_row(s, 12);
    ck_assert_uint_eq(a.count, 3);
    ck_assert_uint_eq(b.count, 1);
    ck_assert_msg(memcmp(a.v, ref[0], sizeof a.v) == 0, "%s: row 11 differs from psd_optim", kinds[k]);
    ck_assert_msg(memcmp(b.v, ref[1], sizeof b.v) == 0, "%s: row 12 differs from psd_optim", kinds[k]);
    unsigned ns = psd_optim_slots(&o);
    ck_assert_int_eq(memcmp(a.sl, ref[0] + D, ns * D * sizeof(float)), 0);
    psd_sparse_close(s);
  }
}
END_TEST

/* A budget of 16 rows, 200 rows with Adam state: the evicted rows are on
 * disk bit for bit, a pull reads them back (one MultiGet per batch) with
 * the same values, and memory never holds more than the budget. */
START_TEST(test_evict_read_back_bit_identical) {
  psd_sparse *s = open_sparse(ps_test_tmpdir(), 16, 0);
  add_table(s, "adam", 0.01f);
  enum { N = 200 };
  static row_state before[N];
  uint64_t keys[10];
  float rows[16 * D], g[10 * D]; /* up to 16 rows pulled at once */
  for (int b = 0; b < N / 10; b++) {
    for (int i = 0; i < 10; i++) keys[i] = 1000 + (uint64_t)(b * 10 + i) * 7919;
    pull(s, keys, 10, rows);
    for (int rep = 0; rep < 1 + b % 3; rep++) {
      for (int i = 0; i < 10 * D; i++) g[i] = ps_test_rnd();
      push(s, keys, 10, g);
    }
    psd_sparse_stats st;
    ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
    ck_assert_uint_le(st.rows_mem, 16);
  }
  for (int k = 0; k < N; k++) before[k] = get_row(s, 1000 + (uint64_t)k * 7919);
  int on_disk = 0;
  for (int k = 0; k < N; k++) on_disk += !before[k].in_mem;
  ck_assert_int_ge(on_disk, N - 16);
  /* the evicted rows into RocksDB's files (out of the write buffers) */
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_flush(s, 0, &eb) == 0, "%s", eb.msg);
  /* read every row back in batches of 10: the values pulled are the
   * values evicted, and the read-back rows hold the same slots and count */
  for (int b = 0; b < N / 10; b++) {
    for (int i = 0; i < 10; i++) keys[i] = 1000 + (uint64_t)(b * 10 + i) * 7919;
    pull(s, keys, 10, rows);
    for (int i = 0; i < 10; i++) {
      const row_state *w = &before[b * 10 + i];
      ck_assert_int_eq(memcmp(rows + i * D, w->v, sizeof w->v), 0);
      row_state now = get_row(s, keys[i]);
      ck_assert(now.in_mem);
      ck_assert_int_eq(memcmp(now.sl, w->sl, sizeof now.sl), 0);
      ck_assert_uint_eq(now.count, w->count);
    }
  }
  /* and a row evicted twice is still the same: evict all, compare whole state */
  uint64_t other[16];
  for (int i = 0; i < 16; i++) other[i] = 5 + (uint64_t)i;
  pull(s, other, 16, rows);
  pull(s, other, 16, rows);
  for (int k = 0; k < N; k++) {
    row_state now = get_row(s, 1000 + (uint64_t)k * 7919);
    ck_assert(!now.in_mem);
    ck_assert_int_eq(memcmp(now.v, before[k].v, sizeof now.v), 0);
    ck_assert_int_eq(memcmp(now.sl, before[k].sl, sizeof now.sl), 0);
    ck_assert_uint_eq(now.count, before[k].count);
  }
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_ge(st.evictions, 2 * (N - 16));
  ck_assert_uint_ge(st.disk_reads, N - 16);
  ck_assert_uint_eq(st.disk_read_bytes, st.disk_reads * 3 * D * sizeof(float));
  ck_assert_uint_eq(st.created, N + 16);
  psd_sparse_close(s);
}
END_TEST

/* pending_keys: key I of test_evict_pending_write_read_back. */
static uint64_t pending_key(int i) { return 77 + (uint64_t)i * 104729; }

/* pending_round pulls and pushes the N keys of pending_key in batches of
 * 10 (a budget of 16: most are evicted meanwhile). */
static void pending_round(psd_sparse *s, int n) {
  uint64_t keys[10];
  float rows[10 * D], g[10 * D];
  for (int b = 0; b < n / 10; b++) {
    for (int i = 0; i < 10; i++) keys[i] = pending_key(b * 10 + i);
    pull(s, keys, 10, rows);
    for (int i = 0; i < 10 * D; i++) g[i] = ps_test_rnd();
    push(s, keys, 10, g);
  }
}

/* Rows evicted while their write is pending (the writer thread held, the
 * snapshot's buffer sealed and not written): a pull serves them from the
 * buffer bit for bit (values, Adam slots, count) with no RocksDB read;
 * evicted again after another push, the newer copy wins over the pending
 * one; once the writer goes on, the persist returns and a reopened
 * directory reads the newest rows from RocksDB's files. */
START_TEST(test_evict_pending_write_read_back) {
  const char *dir = ps_test_tmpdir();
  psd_sparse *s = open_sparse(dir, 16, 0);
  add_table(s, "adam", 0.01f);
  enum { N = 120 };
  static row_state before[N], after[N];
  psd_sparse_hold_writer(s, 1);
  pending_round(s, N);
  ps_errbuf eb;
  int persist = 0;
  ck_assert_msg(psd_sparse_snapshot(s, 5, &persist, &eb) == 0, "%s", eb.msg);
  ck_assert(persist);
  int evicted = 0;
  for (int k = 0; k < N; k++) {
    before[k] = get_row(s, pending_key(k));
    evicted += !before[k].in_mem;
  }
  ck_assert_int_ge(evicted, N - 16);
  uint64_t keys[10];
  float rows[10 * D];
  for (int b = 0; b < N / 10; b++) {
    for (int i = 0; i < 10; i++) keys[i] = pending_key(b * 10 + i);
    pull(s, keys, 10, rows);
    for (int i = 0; i < 10; i++) {
      const row_state *w = &before[b * 10 + i];
      row_state now = get_row(s, keys[i]);
      ck_assert_int_eq(memcmp(rows + i * D, w->v, sizeof w->v), 0);
      ck_assert(now.in_mem);
      ck_assert_int_eq(memcmp(now.sl, w->sl, sizeof now.sl), 0);
      ck_assert_uint_eq(now.count, w->count);
    }
  }
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.disk_reads, 0);
  ck_assert_uint_ge(st.buffer_reads, N - 16);
  /* pushed again and evicted again: the open buffer's copy is the newest */
  pending_round(s, N);
  for (int k = 0; k < N; k++) after[k] = get_row(s, pending_key(k));
  uint64_t other[16];
  float orows[16 * D];
  for (int i = 0; i < 16; i++) other[i] = 3 + (uint64_t)i;
  pull(s, other, 16, orows);
  for (int k = 0; k < N; k++) {
    row_state now = get_row(s, pending_key(k));
    ck_assert(!now.in_mem);
    ck_assert(same_row(&now, &after[k]));
    ck_assert_uint_eq(now.count, before[k].count + 1);
  }
  psd_sparse_hold_writer(s, 0);
  ck_assert_msg(psd_sparse_persist(s, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psd_sparse_flush(s, 6, &eb) == 0, "%s", eb.msg);
  psd_sparse_close(s);
  s = open_sparse(dir, 16, 0);
  add_table(s, "adam", 0.01f);
  for (int k = 0; k < N; k++) {
    row_state now = get_row(s, pending_key(k));
    ck_assert(!now.in_mem);
    ck_assert(same_row(&now, &after[k]));
  }
  psd_sparse_close(s);
}
END_TEST

/* A redo log in a file (the records a killed process handed the hook):
 * per record its length (u64) and bytes; seqs 1, 2, ... */
typedef struct file_log {
  FILE *f;
  uint64_t n;
} file_log;

static int file_append(void *arg, const struct iovec *iov, int niov, uint64_t *seq,
                       ps_errbuf *eb) {
  (void)eb;
  file_log *l = arg;
  uint64_t len = 0;
  for (int i = 0; i < niov; i++) len += iov[i].iov_len;
  ck_assert_uint_eq(fwrite(&len, 8, 1, l->f), 1);
  for (int i = 0; i < niov; i++) ck_assert_uint_eq(fwrite(iov[i].iov_base, 1, iov[i].iov_len, l->f), iov[i].iov_len);
  ck_assert_int_eq(fflush(l->f), 0);
  *seq = ++l->n;
  return 0;
}

/* States of the N keys of pending_key, written by the killed child. */
static void states_write(psd_sparse *s, const char *path, int n) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  for (int k = 0; k < n; k++) {
    row_state r = get_row(s, pending_key(k));
    ck_assert_uint_eq(fwrite(&r, sizeof r, 1, f), 1);
  }
  ck_assert_int_eq(fclose(f), 0);
}

static void states_read(const char *path, row_state *st, int n) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fread(st, sizeof *st, (size_t)n, f), (size_t)n);
  fclose(f);
}

/* kill -9 while write buffers are pending (the writer held: a sealed
 * buffer and the open one not in RocksDB's files).  A child process
 * pushes three rounds with a redo log (in a file): a snapshot after the
 * first, persisted; one after the second, sealed but held; the third in
 * the open buffer; then SIGKILL.  Reopened (a half-written buffer file
 * removed), the rows are exactly the
 * persisted snapshot's (periodic's promise: nothing after it was
 * written, nothing before it lost); replaying the log records after the
 * snapshot's position gives every row's last state before the kill, bit
 * for bit (sync's promise). */
START_TEST(test_kill_with_pending_writes) {
  const char *dir = ps_test_tmpdir();
  char rows_dir[600], logp[600], snap_p[600], last_p[600];
  snprintf(rows_dir, sizeof rows_dir, "%s/rows", dir);
  snprintf(logp, sizeof logp, "%s/log", dir);
  snprintf(snap_p, sizeof snap_p, "%s/at_snapshot", dir);
  snprintf(last_p, sizeof last_p, "%s/at_kill", dir);
  enum { N = 60 };
  fflush(NULL);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    file_log l = {fopen(logp, "wb"), 0};
    ck_assert_ptr_nonnull(l.f);
    psd_sparse *s = open_sparse(rows_dir, 16, 0);
    add_table(s, "adam", 0.01f);
    psd_sparse_set_log(s, file_append, &l);
    ps_errbuf eb;
    uint64_t from;
    ck_assert_int_eq(psd_sparse_log_start(s, 0, &from, &eb), 0);
    pending_round(s, N);
    int persist;
    ck_assert_msg(psd_sparse_snapshot(s, l.n, &persist, &eb) == 0, "%s", eb.msg);
    ck_assert(persist);
    ck_assert_msg(psd_sparse_persist(s, &eb) == 0, "%s", eb.msg);
    states_write(s, snap_p, N);
    psd_sparse_hold_writer(s, 1);
    pending_round(s, N);
    ck_assert_msg(psd_sparse_snapshot(s, l.n, &persist, &eb) == 0, "%s", eb.msg);
    pending_round(s, N);
    states_write(s, last_p, N);
    raise(SIGKILL);
    _exit(3);
  }
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the child ended with status %d", st);
  static row_state at_snap[N], at_kill[N];
  states_read(snap_p, at_snap, N);
  states_read(last_p, at_kill, N);
  /* a buffer file the killed writer left half written is removed at open */
  char tmp_p[700];
  snprintf(tmp_p, sizeof tmp_p, "%s/spill-9.sst.tmp", rows_dir);
  ps_test_write_file(tmp_p, "half");
  psd_sparse *s = open_sparse(rows_dir, 16, 0);
  ck_assert_int_ne(access(tmp_p, F_OK), 0);
  add_table(s, "adam", 0.01f);
  ps_errbuf eb;
  uint64_t from;
  ck_assert_int_eq(psd_sparse_log_start(s, 0, &from, &eb), 0);
  ck_assert_uint_eq(from, 6); /* the first snapshot's: 6 pushes of 10 keys */
  for (int k = 0; k < N; k++) {
    row_state now = get_row(s, pending_key(k));
    ck_assert_msg(same_row(&now, &at_snap[k]), "key %d: not the persisted snapshot's row", k);
    ck_assert_uint_eq(now.count, 1);
  }
  FILE *f = fopen(logp, "rb");
  ck_assert_ptr_nonnull(f);
  uint64_t len, seq = 0;
  while (fread(&len, 8, 1, f) == 1) {
    uint8_t *rec = malloc(len);
    ck_assert_uint_eq(fread(rec, 1, len, f), len);
    if (++seq > from)
      ck_assert_msg(psd_sparse_replay(s, seq, rec, len, &eb) == 0, "%s", eb.msg);
    free(rec);
  }
  fclose(f);
  ck_assert_uint_eq(seq, 18);
  for (int k = 0; k < N; k++) {
    row_state now = get_row(s, pending_key(k));
    ck_assert_int_eq(memcmp(now.v, at_kill[k].v, sizeof now.v), 0);
    ck_assert_int_eq(memcmp(now.sl, at_kill[k].sl, sizeof now.sl), 0);
    ck_assert_uint_eq(now.count, 3);
  }
  psd_sparse_close(s);
}
END_TEST

/* Eviction drops exactly the rows touched longest ago (ties: the row
 * that came first), whether the rows' clocks span few ticks (counted per
 * tick) or many more ticks than rows (a table whose old rows sat while
 * others were pulled thousands of times: sorted).  Key 1 is touched
 * first, keys 2 and 3 together next, 4..8 after and often: with 9 over
 * the budget of 8, keys 1 and 2 go (down to 7 rows), 3..9 stay. */
START_TEST(test_evict_oldest_first) {
  for (int wide = 0; wide < 2; wide++) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%d", ps_test_tmpdir(), wide);
    psd_sparse *s = open_sparse(dir, 8, 0);
    add_table(s, "sgd", 0.1f);
    float rows[5 * D];
    uint64_t first[3] = {1, 2, 3}, hot[5] = {4, 5, 6, 7, 8};
    pull(s, first, 1, rows);
    pull(s, first + 1, 2, rows);
    for (int rep = 0; rep < (wide ? 6000 : 1); rep++) pull(s, hot, 5, rows);
    uint64_t k9 = 9;
    pull(s, &k9, 1, rows);
    psd_sparse_stats st;
    ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
    ck_assert_uint_eq(st.rows_mem, 7);
    ck_assert_uint_eq(st.evictions, 2);
    for (uint64_t k = 1; k <= 9; k++)
      ck_assert_msg(get_row(s, k).in_mem == (k >= 3), "wide %d: key %llu in memory: %d", wide,
                    (unsigned long long)k, get_row(s, k).in_mem);
    psd_sparse_close(s);
  }
}
END_TEST

/* Bad requests: clear errors, and every row (in memory and on disk) as
 * it was. */
START_TEST(test_bad_input_changes_nothing) {
  psd_sparse *s = open_sparse(ps_test_tmpdir(), 4, 0);
  add_table(s, "sgd", 10.0f);
  uint64_t keys[6] = {1, 2, 3, 4, 5, 6};
  float rows[6 * D], g[6 * D];
  pull(s, keys, 6, rows); /* 6 rows over a budget of 4: some on disk */
  for (int i = 0; i < 6 * D; i++) g[i] = 0.01f * (float)i;
  push(s, keys, 6, g);
  row_state before[6];
  for (int i = 0; i < 6; i++) before[i] = get_row(s, keys[i]);
  ps_errbuf eb;
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 9, keys, 6, g, 6 * D, &eb), PS_ENOENT);
  ck_assert_str_eq(eb.msg, "sparse push: model 'ctr' has no sparse table 9");
  ck_assert_int_eq(psd_sparse_pull(s, "ctx", 2, keys, 6, rows, 6 * D, &eb), PS_ENOENT);
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys, 6, g, 5 * D, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "sparse push 'ctr'/2: 6 keys need 48 floats of rows (dim 8), got 40");
  ck_assert_int_eq(psd_sparse_pull(s, "ctr", 2, keys, 6, rows, 6 * D + 1, &eb), PS_EINVAL);
  uint64_t dup[3] = {1, 2, 1};
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, dup, 3, g, 3 * D, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "sparse push 'ctr'/2: key 1 is given twice");
  g[3 * D + 2] = NAN;
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys, 6, g, 6 * D, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "sparse push 'ctr'/2: the gradient of key 4 is not finite");
  /* finite gradients whose update overflows (lr 10 x 1e38) in the last row only */
  g[3 * D + 2] = 0;
  g[5 * D] = 1e38f;
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys, 6, g, 6 * D, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "sparse push 'ctr'/2: the update would make row 6 non-finite");
  for (int i = 0; i < 6; i++) {
    row_state now = get_row(s, keys[i]);
    ck_assert_msg(memcmp(now.v, before[i].v, sizeof now.v) == 0 && now.count == before[i].count,
                  "row %d changed by a refused request", i);
  }
  psd_sparse_close(s);
}
END_TEST

/* Admission after 3 pulls: until then the key reads as its initial value,
 * has no row, and its gradients are counted, not stored. */
START_TEST(test_admission) {
  psd_sparse *s = open_sparse(ps_test_tmpdir(), 0, 3);
  add_table(s, "sgd", 0.5f);
  uint64_t key = 77;
  float row[D], init[D], g[D];
  for (int i = 0; i < D; i++) g[i] = 1;
  ck_assert_int_eq(ps_init_row(init, "normal", 0.1f, 9, 2, key, D), 0);
  ps_errbuf eb;
  for (int seen = 1; seen <= 2; seen++) {
    pull(s, &key, 1, row);
    ck_assert_int_eq(memcmp(row, init, sizeof row), 0);
    push(s, &key, 1, g);
    ck_assert_int_eq(psd_sparse_row(s, "ctr", 2, key, NULL, NULL, NULL, NULL, NULL, &eb), PS_ENOENT);
  }
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.pending, 1);
  ck_assert_uint_eq(st.dropped_grads, 2);
  ck_assert_uint_eq(st.created, 0);
  pull(s, &key, 1, row); /* the third pull admits it */
  ck_assert_int_eq(memcmp(row, init, sizeof row), 0);
  push(s, &key, 1, g);
  row_state r = get_row(s, key);
  ck_assert_uint_eq(r.count, 1);
  ck_assert_float_eq(r.v[0], init[0] - 0.5f);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.pending, 0);
  ck_assert_uint_eq(st.created, 1);
  psd_sparse_close(s);
}
END_TEST

/* A key's admission count goes once it has a row (the map held every
 * key ever admitted, growing without bound): admit_bytes falls back to 0
 * once every pending key is admitted.  Deleting from the map (linear
 * probing) must leave every other count findable: half the keys admitted
 * first, the other half still need only their second pull; keys 0 and
 * UINT64_MAX among them. */
START_TEST(test_admission_forgets_admitted) {
  enum { N = 3000 };
  psd_sparse *s = open_sparse(ps_test_tmpdir(), 0, 2);
  add_table(s, "sgd", 0.5f);
  uint64_t *keys = malloc(N * sizeof *keys);
  float *rows = malloc(N * D * sizeof *rows);
  for (int i = 0; i < N; i++) keys[i] = (uint64_t)i * 2654435761u;
  keys[1] = UINT64_MAX; /* keys[0] is 0 */
  keys[N - 1] = UINT64_MAX - 1;
  pull(s, keys, N, rows);
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.pending, N);
  ck_assert_uint_eq(st.created, 0);
  ck_assert_uint_gt(st.admit_bytes, (uint64_t)N * 12);
  uint64_t full = st.admit_bytes;
  /* every other key's second pull admits it: its count goes */
  for (int i = 0; i < N; i += 2) pull(s, &keys[i], 1, rows);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.pending, N / 2);
  ck_assert_uint_eq(st.created, N / 2);
  ck_assert_uint_le(st.admit_bytes, full);
  /* the others were pulled once: one more pull admits each */
  for (int i = 1; i < N; i += 2) pull(s, &keys[i], 1, rows);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.created, N);
  ck_assert_uint_eq(st.pending, 0);
  ck_assert_uint_eq(st.admit_bytes, 0);
  /* a row admits its key from then on: no count is made again */
  pull(s, keys, N, rows);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.created, N);
  ck_assert_uint_eq(st.admit_bytes, 0);
  ck_assert_uint_eq(st.hits, N);
  free(keys);
  free(rows);
  psd_sparse_close(s);
}
END_TEST

/* Flush, close, reopen: every row reads back as it was, whether it was
 * in memory or evicted at the flush. */
START_TEST(test_flush_and_reopen) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/sparse", ps_test_tmpdir());
  psd_sparse *s = open_sparse(dir, 8, 0);
  add_table(s, "adagrad", 0.1f);
  uint64_t keys[20];
  float rows[20 * D], g[20 * D];
  for (int i = 0; i < 20; i++) keys[i] = (uint64_t)i * 1000003;
  for (int i = 0; i < 20 * D; i++) g[i] = ps_test_rnd();
  pull(s, keys, 20, rows);
  push(s, keys + 12, 8, g);
  row_state before[20];
  for (int i = 0; i < 20; i++) before[i] = get_row(s, keys[i]);
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_flush(s, 0, &eb) == 0, "%s", eb.msg);
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_gt(st.disk_bytes, 0);
  psd_sparse_close(s);
  s = open_sparse(dir, 8, 0);
  add_table(s, "adagrad", 0.1f);
  for (int i = 0; i < 20; i++) {
    row_state now = get_row(s, keys[i]);
    ck_assert(!now.in_mem);
    ck_assert_msg(same_row(&now, &before[i]), "row %d differs after reopen", i);
  }
  pull(s, keys, 8, rows);
  for (int i = 0; i < 8; i++) ck_assert_int_eq(memcmp(rows + i * D, before[i].v, sizeof before[i].v), 0);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.disk_reads, 8);
  ck_assert_uint_eq(st.created, 0);
  psd_sparse_close(s);
}
END_TEST

/* ---- redo log records and replay (invariant 6) ---------------------------- */

/* A log in memory: the records the hook was handed, seqs 1, 2, ... */
typedef struct mem_log {
  uint8_t *rec[64];
  size_t len[64], n;
  int fail; /* the next append fails */
} mem_log;

static int mem_append(void *arg, const struct iovec *iov, int niov, uint64_t *seq, ps_errbuf *eb) {
  mem_log *l = arg;
  if (l->fail) return ps_errf(eb, PS_EIO, "test: the log fails");
  ck_assert_uint_lt(l->n, 64);
  size_t len = 0;
  for (int i = 0; i < niov; i++) len += iov[i].iov_len;
  uint8_t *p = malloc(len ? len : 1);
  len = 0;
  for (int i = 0; i < niov; i++) memcpy(p + len, iov[i].iov_base, iov[i].iov_len), len += iov[i].iov_len;
  l->rec[l->n] = p;
  l->len[l->n++] = len;
  *seq = l->n;
  return 0;
}

static void replay_all(psd_sparse *s, const mem_log *l) {
  ps_errbuf eb;
  for (size_t i = 0; i < l->n; i++)
    ck_assert_msg(psd_sparse_replay(s, i + 1, l->rec[i], l->len[i], &eb) == 0, "%s", eb.msg);
}

/* dur_hook: a durable hook whose log has synced up to SYNCED; it notes
 * the newest seq it was asked for (on the writer thread). */
typedef struct dur_hook {
  uint64_t synced, asked;
  int calls;
} dur_hook;

static int dur_wait(void *arg, uint64_t seq, ps_errbuf *eb) {
  dur_hook *h = arg;
  h->calls++;
  if (seq > h->asked) h->asked = seq;
  return seq <= h->synced ? 0
                          : ps_errf(eb, PS_EDEGRADED, "test: the log has synced only %llu",
                                    (unsigned long long)h->synced);
}

/* Rows go into RocksDB's files only once the log has synced the records
 * they hold (invariant 6): with the log behind, the write buffer's file
 * is not ingested (the persist fails, the rows stay readable); once the
 * log caught up, the next snapshot writes them and a reopened directory
 * holds them. */
START_TEST(test_rows_wait_for_log) {
  const char *dir = ps_test_tmpdir();
  psd_sparse *s = open_sparse(dir, 6, 0);
  add_table(s, "adam", 0.05f);
  mem_log *l = calloc(1, sizeof *l);
  dur_hook h = {0};
  psd_sparse_set_log(s, mem_append, l);
  psd_sparse_set_durable(s, dur_wait, &h);
  uint64_t keys[12];
  float rows[12 * D], g[12 * D];
  for (int i = 0; i < 12; i++) keys[i] = (uint64_t)i * 7919 + 3;
  for (int round = 0; round < 4; round++) {
    pull(s, keys, 12, rows);
    for (int i = 0; i < 12 * D; i++) g[i] = ps_test_rnd();
    push(s, keys, 12, g);
  }
  static row_state want[12];
  for (int i = 0; i < 12; i++) want[i] = get_row(s, keys[i]);
  ps_errbuf eb;
  int persist = 0;
  ck_assert_msg(psd_sparse_snapshot(s, l->n, &persist, &eb) == 0, "%s", eb.msg);
  ck_assert(persist);
  ck_assert_int_lt(psd_sparse_persist(s, &eb), 0);
  ck_assert_int_gt(h.calls, 0);
  ck_assert_uint_eq(h.asked, l->n); /* the newest record the rows hold */
  pull(s, keys, 12, rows); /* still served, from memory or the unwritten buffer */
  for (int i = 0; i < 12; i++) ck_assert_int_eq(memcmp(rows + i * D, want[i].v, sizeof want[i].v), 0);
  h.synced = l->n;
  ck_assert_msg(psd_sparse_snapshot(s, l->n, &persist, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psd_sparse_persist(s, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psd_sparse_flush(s, l->n, &eb) == 0, "%s", eb.msg);
  psd_sparse_close(s);
  s = open_sparse(dir, 0, 0);
  add_table(s, "adam", 0.05f);
  for (int i = 0; i < 12; i++) {
    row_state now = get_row(s, keys[i]);
    /* values, slots and count (the last pull's touch of the clock is not written) */
    ck_assert_int_eq(memcmp(now.v, want[i].v, sizeof now.v), 0);
    ck_assert_int_eq(memcmp(now.sl, want[i].sl, sizeof now.sl), 0);
    ck_assert_uint_eq(now.count, want[i].count);
  }
  psd_sparse_close(s);
  for (size_t i = 0; i < l->n; i++) free(l->rec[i]);
  free(l);
}
END_TEST

START_TEST(test_log_and_replay) {
  /* pushes under a log, with a budget (rows evicted between pushes) and
   * admission after 2 pulls; replayed into an empty directory they give
   * the same rows (values, slots, update counts), replayed once more
   * nothing changes (each row holds its last seq), and a failing log or a
   * bad record changes nothing */
  char d1[600], d2[600];
  snprintf(d1, sizeof d1, "%s/a", ps_test_tmpdir());
  snprintf(d2, sizeof d2, "%s/b", ps_test_tmpdir());
  psd_sparse *s = open_sparse(d1, 6, 2);
  add_table(s, "adam", 0.05f);
  mem_log *l = calloc(1, sizeof *l);
  psd_sparse_set_log(s, mem_append, l);
  uint64_t keys[12];
  float rows[12 * D], g[12 * D];
  for (int i = 0; i < 12; i++) keys[i] = (uint64_t)i * 7919 + 3;
  for (int round = 0; round < 6; round++) {
    pull(s, keys, 12 - (size_t)round % 3, rows); /* the last keys are admitted later */
    for (int i = 0; i < 12 * D; i++) g[i] = ps_test_rnd();
    push(s, keys, 12, g);
  }
  ck_assert_uint_eq(l->n, 5); /* the first round admitted no key: no record */
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_gt(st.evictions, 0);
  /* a failing log refuses the push with nothing changed */
  row_state before[12];
  for (int i = 0; i < 12; i++) before[i] = get_row(s, keys[i]);
  l->fail = 1;
  ps_errbuf eb;
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys, 12, g, 12 * D, &eb), PS_EIO);
  for (int i = 0; i < 12; i++) {
    row_state now = get_row(s, keys[i]);
    ck_assert(memcmp(now.v, before[i].v, sizeof now.v) == 0 && now.count == before[i].count);
  }
  l->fail = 0;
  /* replay into a fresh directory */
  psd_sparse *r = open_sparse(d2, 6, 2);
  add_table(r, "adam", 0.05f);
  uint64_t from = 1;
  ck_assert_msg(psd_sparse_log_start(r, 0, &from, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(from, 0);
  for (int pass = 0; pass < 2; pass++) {
    replay_all(r, l);
    for (int i = 0; i < 12; i++) {
      row_state a = get_row(r, keys[i]);
      ck_assert_msg(memcmp(a.v, before[i].v, sizeof a.v) == 0 &&
                    memcmp(a.sl, before[i].sl, sizeof a.sl) == 0 && a.count == before[i].count,
                    "pass %d: row %d differs after replay (count %llu, want %llu)", pass, i,
                    (unsigned long long)a.count, (unsigned long long)before[i].count);
    }
  }
  /* bad records: cut short, another dim, an unknown table */
  uint8_t *bad = malloc(l->len[0]);
  memcpy(bad, l->rec[0], l->len[0]);
  ck_assert_int_eq(psd_sparse_replay(r, 100, bad, l->len[0] - 3, &eb), PS_EIO);
  ck_assert_ptr_nonnull(strstr(eb.msg, "does not decode"));
  bad[2 + 3 + 4] ^= 1; /* dim (model "ctr") */
  ck_assert_int_eq(psd_sparse_replay(r, 100, bad, l->len[0], &eb), PS_EIO);
  bad[2 + 3 + 4] ^= 1;
  bad[2 + 3] ^= 1; /* table */
  ck_assert_int_eq(psd_sparse_replay(r, 100, bad, l->len[0], &eb), PS_EIO);
  ck_assert_ptr_nonnull(strstr(eb.msg, "does not hold"));
  free(bad);
  for (int i = 0; i < 12; i++) {
    row_state a = get_row(r, keys[i]);
    ck_assert(memcmp(a.v, before[i].v, sizeof a.v) == 0 && a.count == before[i].count);
  }
  /* the log position survives a reopen; an existing one is kept */
  int persist;
  ck_assert_int_eq(psd_sparse_snapshot(r, 6, &persist, &eb), 0);
  ck_assert_int_eq(persist, 1);
  ck_assert_int_eq(psd_sparse_persist(r, &eb), 0);
  ck_assert_int_eq(psd_sparse_snapshot(r, 6, &persist, &eb), 0);
  ck_assert_int_eq(persist, 0); /* nothing new */
  psd_sparse_close(r);
  r = open_sparse(d2, 6, 2);
  add_table(r, "adam", 0.05f);
  ck_assert_int_eq(psd_sparse_log_start(r, 2, &from, &eb), 0);
  ck_assert_uint_eq(from, 6);
  for (int i = 0; i < 12; i++) {
    row_state a = get_row(r, keys[i]);
    ck_assert(memcmp(a.v, before[i].v, sizeof a.v) == 0 && a.count == before[i].count);
  }
  psd_sparse_close(r);
  psd_sparse_close(s);
  for (size_t i = 0; i < l->n; i++) free(l->rec[i]);
  free(l);
}
END_TEST

/* A push refused after its keys were looked up (an update that would
 * turn non-finite, a log that fails) materialises no row of the keys
 * that had none: psd_sparse_row still finds none and nothing was created
 * (fuzz_sparse found refused pushes creating rows). */
START_TEST(test_refused_push_creates_no_row) {
  psd_sparse *s = open_sparse(ps_test_tmpdir(), 0, 0);
  add_table(s, "sgd", 10.0f);
  uint64_t keys[2] = {7, 8};
  float g[2 * D] = {0};
  g[D] = 1e38f; /* key 8's update overflows */
  ps_errbuf eb;
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys, 2, g, 2 * D, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "sparse push 'ctr'/2: the update would make row 8 non-finite");
  g[D] = 0.5f;
  mem_log *l = calloc(1, sizeof *l);
  l->fail = 1;
  psd_sparse_set_log(s, mem_append, l);
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys, 2, g, 2 * D, &eb), PS_EIO);
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(psd_sparse_row(s, "ctr", 2, keys[i], NULL, NULL, NULL, NULL, NULL, &eb),
                     PS_ENOENT);
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.created, 0);
  ck_assert_uint_eq(st.rows_mem, 0);
  /* the same push once the log works: both rows, from their initial rows */
  l->fail = 0;
  push(s, keys, 2, g);
  ck_assert_uint_eq(get_row(s, 7).count, 1);
  ck_assert_uint_eq(get_row(s, 8).count, 1);
  ck_assert_uint_eq(l->n, 1);
  /* a record naming a key twice does not decode: PS_EIO, rows unchanged */
  uint8_t rec[2 + 3 + 12 + 2 * 8 + 2 * D * 4] = {PSD_SPARSE_LOG_PUSH, 3, 'c', 't', 'r'};
  uint32_t u[3] = {2, D, 2};
  memcpy(rec + 5, u, sizeof u);
  uint64_t dup[2] = {7, 7};
  memcpy(rec + 17, dup, sizeof dup);
  ck_assert_int_eq(psd_sparse_replay(s, 5, rec, sizeof rec, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, "redo log record 5 does not decode: sparse push 'ctr'/2: key 7 is given twice");
  ck_assert_uint_eq(get_row(s, 7).count, 1);
  /* records whose gradients no push would have logged (NaN; an update
   * that turns non-finite) do not apply: PS_EIO, no row made or changed
   * (fuzz_wal found replays writing non-finite rows) */
  uint64_t fresh[2] = {7, 9};
  memcpy(rec + 17, fresh, sizeof fresh);
  float bad = NAN;
  memcpy(rec + 17 + 16 + D * 4, &bad, 4);
  ck_assert_int_eq(psd_sparse_replay(s, 5, rec, sizeof rec, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, "redo log record 5 does not apply: sparse push 'ctr'/2: the gradient "
                   "of key 9 is not finite");
  bad = 1e38f;
  memcpy(rec + 17 + 16 + D * 4, &bad, 4);
  ck_assert_int_eq(psd_sparse_replay(s, 5, rec, sizeof rec, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, "redo log record 5 does not apply: sparse push 'ctr'/2: the update "
                   "would make row 9 non-finite");
  ck_assert_uint_eq(get_row(s, 7).count, 1);
  ck_assert_int_eq(psd_sparse_row(s, "ctr", 2, 9, NULL, NULL, NULL, NULL, NULL, &eb), PS_ENOENT);
  psd_sparse_close(s);
  for (size_t i = 0; i < l->n; i++) free(l->rec[i]);
  free(l);
}
END_TEST

/* A push refused after it read rows back from disk (an update that
 * would turn non-finite, a log that fails) leaves the table at most
 * memory_rows rows (invariant 3): the rows it read back stay unchanged
 * (invariant 4) but are evicted again (they stayed in memory, over the
 * budget, until the next request that succeeded). */
START_TEST(test_refused_push_keeps_budget) {
  psd_sparse *s = open_sparse(ps_test_tmpdir(), 4, 0);
  add_table(s, "sgd", 10.0f);
  uint64_t keys[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  float rows[8 * D], g[8 * D] = {0};
  pull(s, keys, 8, rows); /* 8 rows over a budget of 4: keys 1-4 on disk */
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.rows_mem, 4);
  row_state before[8];
  for (int i = 0; i < 8; i++) before[i] = get_row(s, keys[i]);
  ck_assert(!before[0].in_mem && !before[3].in_mem);
  ps_errbuf eb;
  g[3 * D] = 1e38f; /* key 4's update overflows */
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys, 4, g, 4 * D, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "sparse push 'ctr'/2: the update would make row 4 non-finite");
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.disk_reads + st.buffer_reads, 4);
  ck_assert_uint_le(st.rows_mem, 4);
  /* a log that fails: the same */
  g[3 * D] = 0.5f;
  mem_log *l = calloc(1, sizeof *l);
  l->fail = 1;
  psd_sparse_set_log(s, mem_append, l);
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys + 4, 4, g, 4 * D, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, "test: the log fails");
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_le(st.rows_mem, 4);
  for (int i = 0; i < 8; i++) {
    row_state now = get_row(s, keys[i]);
    ck_assert_msg(same_row(&now, &before[i]), "row %d changed by a refused push", i);
  }
  psd_sparse_set_log(s, NULL, NULL);
  psd_sparse_close(s);
  free(l);
}
END_TEST

/* Keys at the ends of the key space (0, 1, UINT64_MAX - 1, UINT64_MAX)
 * are ordinary keys everywhere: admission counts, rows in memory,
 * eviction through the write buffers and RocksDB's files, read-back,
 * flush and reopen, export pages (resuming after UINT64_MAX - 1 and
 * after UINT64_MAX), redo log replay.  No structure may take one of them
 * for its "empty" mark. */
START_TEST(test_edge_keys) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/sparse", ps_test_tmpdir());
  psd_sparse *s = open_sparse(dir, 4, 2);
  add_table(s, "adagrad", 0.1f);
  mem_log *l = calloc(1, sizeof *l);
  psd_sparse_set_log(s, mem_append, l);
  enum { E = 4 };
  uint64_t edge[E] = {0, 1, UINT64_MAX - 1, UINT64_MAX};
  float rows[16 * D], g[8 * D], init[D]; /* rows: an export page of up to 16 */
  for (int i = 0; i < 8 * D; i++) g[i] = 0.125f * (float)(i % 7 + 1);
  /* the first pull counts them, a push is dropped, the second admits */
  pull(s, edge, E, rows);
  for (int i = 0; i < E; i++) {
    ck_assert_int_eq(ps_init_row(init, "normal", 0.1f, 9, 2, edge[i], D), 0);
    ck_assert_int_eq(memcmp(rows + i * D, init, sizeof init), 0);
  }
  push(s, edge, E, g);
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.pending, E);
  ck_assert_uint_eq(st.dropped_grads, E);
  ck_assert_uint_eq(st.created, 0);
  pull(s, edge, E, rows);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.created, E);
  ck_assert_uint_eq(st.pending, 0);
  ck_assert_uint_eq(st.admit_bytes, 0);
  push(s, edge, E, g);
  row_state before[E];
  for (int i = 0; i < E; i++) {
    before[i] = get_row(s, edge[i]);
    ck_assert(before[i].in_mem);
    ck_assert_uint_eq(before[i].count, 1);
  }
  /* other keys push them out of memory (budget 4), then they come back */
  uint64_t other[8];
  for (int i = 0; i < 8; i++) other[i] = 100 + (uint64_t)i;
  for (int rep = 0; rep < 2; rep++) pull(s, other, 8, rows);
  for (int i = 0; i < E; i++) {
    row_state now = get_row(s, edge[i]);
    ck_assert_msg(!now.in_mem, "key %d still in memory", i);
    ck_assert_msg(same_row(&now, &before[i]), "key %d differs once evicted", i);
  }
  pull(s, edge, E, rows);
  for (int i = 0; i < E; i++) ck_assert_int_eq(memcmp(rows + i * D, before[i].v, sizeof before[i].v), 0);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.disk_reads + st.buffer_reads, E);
  ck_assert_uint_eq(st.created, E + 8);
  push(s, edge, E, g); /* logged: record 2 */
  for (int i = 0; i < E; i++) before[i] = get_row(s, edge[i]);
  ck_assert_uint_eq(before[3].count, 2);
  ps_errbuf eb;
  /* export: 0 first, UINT64_MAX last; pages resumed at the end */
  uint64_t keys[16];
  size_t got;
  int done;
  ck_assert_msg(psd_sparse_export(s, "ctr", 2, 0, 0, 16, keys, rows, &got, &done, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(got, E + 8);
  ck_assert(done);
  ck_assert_uint_eq(keys[0], 0);
  ck_assert_uint_eq(keys[1], 1);
  ck_assert_uint_eq(keys[got - 2], UINT64_MAX - 1);
  ck_assert_uint_eq(keys[got - 1], UINT64_MAX);
  ck_assert_msg(psd_sparse_export(s, "ctr", 2, 1, UINT64_MAX - 1, 16, keys, rows, &got, &done, &eb) == 0,
                "%s", eb.msg);
  ck_assert_uint_eq(got, 1);
  ck_assert_uint_eq(keys[0], UINT64_MAX);
  ck_assert_int_eq(memcmp(rows, before[3].v, sizeof before[3].v), 0);
  ck_assert_msg(psd_sparse_export(s, "ctr", 2, 1, UINT64_MAX, 16, keys, rows, &got, &done, &eb) == 0,
                "%s", eb.msg);
  ck_assert_uint_eq(got, 0);
  ck_assert(done);
  ck_assert_msg(psd_sparse_export(s, "ctr", 2, 1, 0, 1, keys, rows, &got, &done, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(got, 1);
  ck_assert_uint_eq(keys[0], 1);
  ck_assert(!done);
  /* flush, reopen: every edge row as it was, read back from the files */
  ck_assert_msg(psd_sparse_flush(s, 0, &eb) == 0, "%s", eb.msg);
  psd_sparse_close(s);
  s = open_sparse(dir, 4, 2);
  add_table(s, "adagrad", 0.1f);
  for (int i = 0; i < E; i++) {
    row_state now = get_row(s, edge[i]);
    ck_assert(!now.in_mem);
    ck_assert_msg(same_row(&now, &before[i]), "key %d differs after reopen", i);
  }
  pull(s, edge, E, rows);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.disk_reads, E);
  ck_assert_uint_eq(st.created, 0);
  psd_sparse_close(s);
  /* a fresh directory: the log's records (the two pushes of admitted
   * rows) replay into the same rows, created as the pushes found them */
  snprintf(dir, sizeof dir, "%s/sparse", ps_test_tmpdir());
  s = open_sparse(dir, 4, 2);
  add_table(s, "adagrad", 0.1f);
  ck_assert_uint_eq(l->n, 2);
  replay_all(s, l);
  for (int i = 0; i < E; i++) {
    row_state now = get_row(s, edge[i]);
    ck_assert_uint_eq(now.count, 2);
    ck_assert_int_eq(memcmp(now.v, before[i].v, sizeof now.v), 0);
    ck_assert_int_eq(memcmp(now.sl, before[i].sl, sizeof now.sl), 0);
  }
  psd_sparse_close(s);
  for (size_t i = 0; i < l->n; i++) free(l->rec[i]);
  free(l);
}
END_TEST

/* ---- rows on disk that cannot be read --------------------------------------- */

enum { BAD_N = 400 };

/* bad_rows_dir writes rows 0..BAD_N-1 (keys in order: the SST file's
 * data blocks hold them in order) to a new directory through a flush,
 * closes it and damages its one SST file at FRAC of its length (a
 * block's checksum no longer matches: RocksDB reads it as Corruption). */
static const char *bad_rows_dir(double frac) {
  static char dir[512];
  snprintf(dir, sizeof dir, "%s/sparse", ps_test_tmpdir());
  psd_sparse *s = open_sparse(dir, 0, 0);
  add_table(s, "sgd", 0.5f);
  uint64_t *keys = malloc(BAD_N * sizeof *keys);
  float *rows = malloc(BAD_N * D * sizeof *rows);
  for (int i = 0; i < BAD_N; i++) keys[i] = (uint64_t)i;
  pull(s, keys, BAD_N, rows);
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_flush(s, 0, &eb) == 0, "%s", eb.msg);
  psd_sparse_close(s);
  free(keys);
  free(rows);
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "ls %s/*.sst", dir);
  FILE *f = popen(cmd, "r");
  char path[1024] = "";
  ck_assert(f && fgets(path, sizeof path, f));
  pclose(f);
  path[strcspn(path, "\n")] = '\0';
  int fd = open(path, O_RDWR);
  ck_assert_int_ge(fd, 0);
  off_t len = lseek(fd, 0, SEEK_END);
  ck_assert_int_gt(len, 16384);
  char junk[64];
  memset(junk, 0x5a, sizeof junk);
  ck_assert_int_eq(pwrite(fd, junk, sizeof junk, (off_t)((double)len * frac)), (ssize_t)sizeof junk);
  close(fd);
  return dir;
}

/* A read-back that fails (RocksDB reports an I/O error or corruption)
 * refuses the request with PS_EIO naming the table and the key, and the
 * rows it did read back before the failure are evicted down to
 * memory_rows (invariant 3), as after any refusal. */
START_TEST(test_read_back_error) {
  const char *dir = bad_rows_dir(0.45); /* a block in the middle: not the first row's */
  psd_sparse *s = open_sparse(dir, 4, 0);
  add_table(s, "sgd", 0.5f);
  uint64_t keys[BAD_N];
  float rows[BAD_N * D];
  for (int i = 0; i < BAD_N; i++) keys[i] = (uint64_t)i;
  pull(s, keys, 4, rows); /* rows 0..3 read back: the table at its budget */
  ps_errbuf eb;
  int rc = psd_sparse_pull(s, "ctr", 2, keys + 4, BAD_N - 4, rows, (BAD_N - 4) * D, &eb);
  ck_assert_int_eq(rc, PS_EIO);
  ck_assert_msg(strstr(eb.msg, "reading row ") && strstr(eb.msg, " of 'ctr'/2 back: Corruption"),
                "%s", eb.msg);
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_gt(st.disk_reads, 8); /* rows before the damaged block came back */
  ck_assert_uint_le(st.rows_mem, 4);
  ck_assert_uint_eq(st.created, 0);
  /* a push the same */
  float g[(BAD_N - 4) * D];
  memset(g, 0, sizeof g);
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, keys + 4, BAD_N - 4, g, (BAD_N - 4) * D, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, " of 'ctr'/2 back: "), "%s", eb.msg);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_le(st.rows_mem, 4);
  ck_assert_uint_eq(st.created, 0);
  psd_sparse_close(s);
}
END_TEST

/* A table added over rows on disk that cannot be read (its first block
 * damaged: the look for any row of it fails) counts them as on disk: a
 * pull reads them back, and fails, rather than handing out fresh rows
 * from the initializer (that, once written, would replace the trained
 * rows for good). */
START_TEST(test_add_table_over_unreadable_rows) {
  const char *dir = bad_rows_dir(0.002); /* the first data block: row 0's */
  psd_sparse *s = open_sparse(dir, 4, 0);
  add_table(s, "sgd", 0.5f);
  uint64_t key = 0;
  float row[D];
  ps_errbuf eb;
  ck_assert_int_eq(psd_sparse_pull(s, "ctr", 2, &key, 1, row, D, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "reading row 0 of 'ctr'/2 back: Corruption"), "%s", eb.msg);
  float g[D] = {0};
  ck_assert_int_eq(psd_sparse_push(s, "ctr", 2, &key, 1, g, D, &eb), PS_EIO);
  /* a look at the row (export, tests) names it too */
  ck_assert_int_eq(psd_sparse_row(s, "ctr", 2, key, row, NULL, NULL, NULL, NULL, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "reading row 0 of 'ctr'/2: Corruption"), "%s", eb.msg);
  /* the LOCK file's error is still PS_ELOCKED ("lock" alone no longer is) */
  psd_sparse_opts o = {.dir = dir};
  psd_sparse *s2 = NULL;
  ck_assert_int_eq(psd_sparse_open(&s2, &o, &eb), PS_ELOCKED);
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.created, 0);
  ck_assert_uint_eq(st.rows_mem, 0);
  /* rows in blocks that can be read come back as they were */
  uint64_t last = BAD_N - 1;
  ck_assert_int_eq(psd_sparse_pull(s, "ctr", 2, &last, 1, row, D, &eb), 0);
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 2, &st), 0);
  ck_assert_uint_eq(st.disk_reads, 1);
  ck_assert_uint_eq(st.created, 0);
  psd_sparse_close(s);
}
END_TEST

/* ---- a full disk (the shard DEGRADED) -------------------------------------- */

/* The fixture's small filesystem (made in the runner, inherited by the
 * test; unmounted however the test ends). */
static ps_test_tmpfs full_fs;

static void full_setup(void) { ps_test_tmpfs_make(&full_fs, "ps_test_sparse_full", "size=64m"); }
static void full_teardown(void) { ps_test_tmpfs_remove(&full_fs); }

/* fill appends to PATH until its filesystem is full. */
static void fill(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  ck_assert_msg(fd >= 0, "open '%s': %s", path, strerror(errno));
  static char block[1 << 16];
  ssize_t n;
  while ((n = write(fd, block, sizeof block)) > 0) {
  }
  int e = errno;
  close(fd);
  ck_assert_msg(n < 0 && e == ENOSPC, "filling '%s' ended with %s", path, strerror(e));
}

enum { FD_DIM = 1024, FD_BUDGET = 256, FD_BATCH = 128 };

/* full_pull pulls N keys from FIRST of table 3 (FD_DIM wide): served. */
static void full_pull(psd_sparse *s, uint64_t first, size_t n, float *rows) {
  uint64_t keys[FD_BATCH];
  for (size_t i = 0; i < n; i++) keys[i] = first + i;
  ps_errbuf eb;
  int rc = psd_sparse_pull(s, "ctr", 3, keys, n, rows, n * FD_DIM, &eb);
  ck_assert_msg(rc == 0, "pull of keys %llu.. on a full disk: %s (%s)",
                (unsigned long long)first, eb.msg, ps_errname(rc));
}

/* full_export reads table 3 whole, page by page, and checks that it holds
 * the keys 0..N-1, each with the value WANT gives. */
static void full_export(psd_sparse *s, uint64_t n, const float *want) {
  enum { PAGE = 1000 };
  uint64_t *keys = malloc(PAGE * sizeof *keys), after = 0, seen = 0;
  float *rows = malloc((size_t)PAGE * FD_DIM * sizeof *rows);
  ck_assert(keys && rows);
  int done = 0, resume = 0;
  while (!done) {
    size_t got;
    ps_errbuf eb;
    ck_assert_msg(psd_sparse_export(s, "ctr", 3, resume, after, PAGE, keys, rows, &got, &done,
                                    &eb) == 0, "export on a full disk: %s", eb.msg);
    for (size_t i = 0; i < got; i++, seen++) {
      ck_assert_uint_eq(keys[i], seen);
      ck_assert_msg(memcmp(rows + i * FD_DIM, want + seen * FD_DIM, FD_DIM * sizeof(float)) == 0,
                    "exported row %llu differs", (unsigned long long)seen);
    }
    if (got) after = keys[got - 1];
    resume = 1;
  }
  ck_assert_uint_eq(seen, n);
  free(keys);
  free(rows);
}

/* full_open opens the rows in SUB on the small filesystem (its path to
 * DIR, the filler's to FILLER: 700 bytes each) with BUDGET rows per table
 * and adds table ID of DIM floats (SGD at LR, "normal" 0.1, seed 9) as
 * *T, whose optimizer *SPEC is. */
static psd_sparse *full_open(const char *sub, uint64_t budget, uint32_t id, uint32_t dim, float lr,
                             Ps__OptimizerSpec *spec, psd_sparse_table_opts *t, char *dir,
                             char *filler) {
  snprintf(dir, 700, "%s/%s", full_fs.mnt, sub);
  snprintf(filler, 700, "%s/filler", full_fs.mnt);
  psd_sparse *s = open_sparse(dir, budget, 0);
  ps__optimizer_spec__init(spec);
  spec->kind = "sgd";
  spec->lr = lr;
  *t = (psd_sparse_table_opts){.model = "ctr", .table = id, .dim = dim, .init = "normal",
                               .scale = 0.1f, .seed = 9, .optim = spec};
  ps_errbuf eb;
  ck_assert_msg(psd_sparse_add_table(s, t, &eb) == 0, "%s", eb.msg);
  return s;
}

/* A disk that refuses the rows' writes (full) while rows must be evicted:
 * pulls and pushes are served, the rows that cannot be written stay in
 * memory (over memory_rows), an export reads them; once the disk takes
 * writes again the next snapshot writes them and the budget holds again
 * after the next request.  Before the fix the pull whose eviction sealed
 * a write buffer behind the failed one failed with the disk's error (a
 * shard answered it "No space left on device"), and so did an export. */
START_TEST(test_full_disk_serves_rows) {
  if (!full_fs.mounted) PS_SKIP("%s", full_fs.why);
  char dir[700], filler[700];
  Ps__OptimizerSpec spec;
  psd_sparse_table_opts t;
  psd_sparse *s = full_open("sparse", FD_BUDGET, 3, FD_DIM, 0.5f, &spec, &t, dir, filler);
  ps_errbuf eb;
  fill(filler);
  enum { N = 6144 }; /* 24 MiB of rows: more than a write buffer past the budget */
  float *want = malloc((size_t)N * FD_DIM * sizeof *want), *g = malloc(FD_BATCH * FD_DIM * sizeof *g);
  ck_assert(want && g);
  full_pull(s, 0, FD_BATCH, want);
  /* a snapshot's buffer fails: the disk refuses writes from here on */
  int persist = 0, rc;
  ck_assert_int_eq(psd_sparse_snapshot(s, 0, &persist, &eb), 0);
  ck_assert(persist);
  ck_assert_msg(psd_sparse_persist(s, &eb) == PS_ENOSPC, "persist on a full disk: %s", eb.msg);
  psd_sparse_persist_failed(s);
  /* pulls of new keys, each over the budget; every 8th batch pushed too */
  for (uint64_t k = FD_BATCH; k < N; k += FD_BATCH) {
    full_pull(s, k, FD_BATCH, want + k * FD_DIM);
    if (k / FD_BATCH % 8) continue;
    uint64_t keys[FD_BATCH];
    for (int i = 0; i < FD_BATCH; i++) keys[i] = k + (uint64_t)i;
    for (int i = 0; i < FD_BATCH * FD_DIM; i++) g[i] = 0.01f * (float)(i % 7);
    ck_assert_msg(psd_sparse_push(s, "ctr", 3, keys, FD_BATCH, g, FD_BATCH * FD_DIM, &eb) == 0,
                  "push on a full disk: %s", eb.msg);
    full_pull(s, k, FD_BATCH, want + k * FD_DIM);
  }
  /* the first rows come back as they were (from memory or the buffers) */
  float *again = malloc(FD_BATCH * FD_DIM * sizeof *again);
  ck_assert_ptr_nonnull(again);
  full_pull(s, 0, FD_BATCH, again);
  ck_assert_int_eq(memcmp(again, want, FD_BATCH * FD_DIM * sizeof(float)), 0);
  full_export(s, N, want);
  /* the snapshot still fails while the disk is full */
  rc = psd_sparse_snapshot(s, 0, &persist, &eb);
  if (!rc && persist) rc = psd_sparse_persist(s, &eb);
  ck_assert_msg(rc == PS_ENOSPC, "snapshot on a full disk: %d %s", rc, eb.msg);
  psd_sparse_persist_failed(s);
  /* room again: the snapshot writes everything; the budget holds again */
  ck_assert_int_eq(unlink(filler), 0);
  ck_assert_int_eq(psd_sparse_snapshot(s, 0, &persist, &eb), 0);
  ck_assert_msg(psd_sparse_persist(s, &eb) == 0, "persist with room again: %s", eb.msg);
  full_pull(s, 0, FD_BATCH, again);
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 3, &st), 0);
  ck_assert_msg(st.rows_mem <= FD_BUDGET, "%llu rows in memory after the disk came back, budget %d",
                (unsigned long long)st.rows_mem, FD_BUDGET);
  ck_assert_int_eq(memcmp(again, want, FD_BATCH * FD_DIM * sizeof(float)), 0);
  ck_assert_msg(psd_sparse_flush(s, 0, &eb) == 0, "%s", eb.msg);
  psd_sparse_close(s);
  s = open_sparse(dir, FD_BUDGET, 0);
  ck_assert_msg(psd_sparse_add_table(s, &t, &eb) == 0, "%s", eb.msg);
  full_export(s, N, want);
  psd_sparse_close(s);
  free(want);
  free(g);
  free(again);
}
END_TEST

/* ---- a failed ingest: the rows' RocksDB reopened ---------------------------- */

static const char *ing_filler; /* ing_durable fills it once when set */

/* ing_durable is the durable hook: it fills the disk once, after the
 * write buffer's file is written and before RocksDB takes it in. */
static int ing_durable(void *arg, uint64_t seq, ps_errbuf *eb) {
  (void)arg, (void)seq, (void)eb;
  if (ing_filler) fill(ing_filler);
  ing_filler = NULL;
  return 0;
}

/* ing_log is a redo log that keeps nothing and numbers its records. */
static int ing_log(void *arg, const struct iovec *iov, int niov, uint64_t *seq, ps_errbuf *eb) {
  (void)iov, (void)niov, (void)eb;
  *seq = ++*(uint64_t *)arg;
  return 0;
}

enum { ING_KEYS = 48, ING_DIM = 4, ING_BUDGET = 8 };

/* ing_check pulls every key and checks that each row is its initial value
 * minus 0.25 per push (SGD lr 1, gradient 0.25), PUSHES of them. */
static void ing_check(psd_sparse *s, const uint64_t *keys, int pushes, const char *when) {
  float rows[ING_KEYS * ING_DIM];
  ps_errbuf eb;
  int rc = psd_sparse_pull(s, "ctr", 4, keys, ING_KEYS, rows, ING_KEYS * ING_DIM, &eb);
  ck_assert_msg(rc == 0, "pull %s: %s", when, eb.msg);
  for (int k = 0; k < ING_KEYS; k++) {
    float want[ING_DIM];
    ck_assert_int_eq(ps_init_row(want, "normal", 0.1f, 9, 4, keys[k], ING_DIM), 0);
    for (int j = 0; j < ING_DIM; j++) {
      for (int i = 0; i < pushes; i++) want[j] -= 0.25f;
      ck_assert_msg(fabsf(rows[k * ING_DIM + j] - want[j]) < 1e-5f,
                    "%s: key %d element %d is %g, want %g (%d pushes)", when, k, j,
                    (double)rows[k * ING_DIM + j], (double)want[j], pushes);
    }
  }
}

/* A full disk that fails the ingest itself (RocksDB's MANIFEST write, not
 * psd's file): the durable hook fills the disk after each write buffer's
 * file is written and before RocksDB takes it in, round after round, until
 * an ingest fails (the MANIFEST needs a new page: within some tens of
 * rounds).  While the disk stays full the snapshot fails (the reopen for
 * writing too) and every row is still read (evicted ones through a
 * read-only handle); once the disk has room the next snapshot reopens
 * RocksDB and writes the failed buffer, evictions work again (the budget
 * holds), and a reopen of the directory reads every row back.  Before the
 * fix the handle stayed in RocksDB's background error state: every later
 * snapshot failed with the MANIFEST's "No space left", room or not. */
START_TEST(test_full_disk_ingest_reopens) {
  if (!full_fs.mounted) PS_SKIP("%s", full_fs.why);
  char dir[700], filler[700];
  Ps__OptimizerSpec spec;
  psd_sparse_table_opts t;
  psd_sparse *s = full_open("ingest", ING_BUDGET, 4, ING_DIM, 1.0f, &spec, &t, dir, filler);
  ps_errbuf eb;
  uint64_t seq = 0;
  psd_sparse_set_log(s, ing_log, &seq);
  psd_sparse_set_durable(s, ing_durable, NULL);
  uint64_t keys[ING_KEYS];
  float g[ING_KEYS * ING_DIM];
  for (int i = 0; i < ING_KEYS; i++) keys[i] = (uint64_t)i * 7919;
  for (int i = 0; i < ING_KEYS * ING_DIM; i++) g[i] = 0.25f;
  int pushes = 0, rc = 0, persist;
  for (int round = 0; round < 400 && !rc; round++) {
    for (int k = 0; k < ING_KEYS; k += 6)
      ck_assert_msg(psd_sparse_push(s, "ctr", 4, keys + k, 6, g + k * ING_DIM, 6 * ING_DIM, &eb)
                    == 0, "round %d push: %s", round, eb.msg);
    pushes++;
    ing_filler = filler;
    rc = psd_sparse_snapshot(s, seq, &persist, &eb);
    if (!rc && persist) rc = psd_sparse_persist(s, &eb);
    ck_assert_msg(!ing_filler, "round %d: no write buffer reached the durable hook", round);
    if (!rc) ck_assert_int_eq(unlink(filler), 0);
  }
  /* RocksDB's own write failed, not psd's file of the buffer */
  ck_assert_msg(rc == PS_ENOSPC && !strstr(eb.msg, ".sst.tmp"),
                "no ingest failed on the full disk in 400 rounds: %d %s", rc, eb.msg);
  psd_sparse_persist_failed(s);
  /* still full (what the failure freed taken too): the snapshot fails,
   * every row is served, nothing is evicted */
  fill(filler);
  for (int k = 0; k < ING_KEYS; k += 6)
    ck_assert_msg(psd_sparse_push(s, "ctr", 4, keys + k, 6, g + k * ING_DIM, 6 * ING_DIM, &eb)
                  == 0, "push on the full disk: %s", eb.msg);
  pushes++;
  rc = psd_sparse_snapshot(s, seq, &persist, &eb);
  if (!rc && persist) rc = psd_sparse_persist(s, &eb);
  ck_assert_msg(rc == PS_ENOSPC, "snapshot on the full disk: %d %s", rc, eb.msg);
  psd_sparse_persist_failed(s);
  ing_check(s, keys, pushes, "on the full disk");
  /* room again: the snapshot reopens RocksDB and writes everything */
  ck_assert_int_eq(unlink(filler), 0);
  rc = psd_sparse_snapshot(s, seq, &persist, &eb);
  if (!rc && persist) rc = psd_sparse_persist(s, &eb);
  ck_assert_msg(rc == 0, "snapshot with room again: %s", eb.msg);
  ing_check(s, keys, pushes, "with room again");
  psd_sparse_stats st;
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 4, &st), 0);
  ck_assert_msg(st.rows_mem <= ING_BUDGET, "%llu rows in memory with room again, budget %d",
                (unsigned long long)st.rows_mem, ING_BUDGET);
  /* more pushes, evicted and read back through the reopened handle */
  for (int round = 0; round < 3; round++, pushes++)
    for (int k = 0; k < ING_KEYS; k += 6)
      ck_assert_msg(psd_sparse_push(s, "ctr", 4, keys + k, 6, g + k * ING_DIM, 6 * ING_DIM, &eb)
                    == 0, "push with room again: %s", eb.msg);
  ck_assert_msg(psd_sparse_flush(s, seq, &eb) == 0, "flush: %s", eb.msg);
  ing_check(s, keys, pushes, "after more pushes");
  psd_sparse_close(s);
  s = open_sparse(dir, ING_BUDGET, 0);
  ck_assert_msg(psd_sparse_add_table(s, &t, &eb) == 0, "%s", eb.msg);
  ing_check(s, keys, pushes, "after a reopen");
  ck_assert_int_eq(psd_sparse_stats_get(s, "ctr", 4, &st), 0);
  ck_assert_uint_ge(st.disk_reads, ING_KEYS - ING_BUDGET);
  psd_sparse_close(s);
}
END_TEST

Suite *psd_sparse_suite(void) {
  Suite *s = suite_create("psd_sparse");
  TCase *tc = tcase_create("tables");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_pull_creates_from_initializer);
  tcase_add_test(tc, test_push_per_row_optimizers);
  tcase_add_test(tc, test_evict_read_back_bit_identical);
  tcase_add_test(tc, test_evict_pending_write_read_back);
  tcase_add_test(tc, test_rows_wait_for_log);
  tcase_add_test(tc, test_kill_with_pending_writes);
  tcase_add_test(tc, test_evict_oldest_first);
  tcase_add_test(tc, test_bad_input_changes_nothing);
  tcase_add_test(tc, test_admission);
  tcase_add_test(tc, test_admission_forgets_admitted);
  tcase_add_test(tc, test_flush_and_reopen);
  tcase_add_test(tc, test_log_and_replay);
  tcase_add_test(tc, test_refused_push_creates_no_row);
  tcase_add_test(tc, test_refused_push_keeps_budget);
  tcase_add_test(tc, test_read_back_error);
  tcase_add_test(tc, test_add_table_over_unreadable_rows);
  tcase_add_test(tc, test_edge_keys);
  tcase_add_test(tc, test_max_new_rows);
  suite_add_tcase(s, tc);
  tc = tcase_create("full_disk");
  tcase_set_timeout(tc, 120);
  tcase_add_unchecked_fixture(tc, full_setup, full_teardown);
  tcase_add_test(tc, test_full_disk_serves_rows);
  tcase_add_test(tc, test_full_disk_ingest_reopens);
  suite_add_tcase(s, tc);
  return s;
}
