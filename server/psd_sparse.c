/* psd_sparse: sparse tables in memory with RocksDB behind them (see
 * psd_sparse.h for the invariants).
 *
 * Memory layout of a table: rows live in a dense slab (row i at data + i
 * * rowf, rowf = dim x (1 + slots)) with parallel arrays of keys, update
 * counts, clocks and flags; an open-addressing index (linear probing on
 * ps_mix64(key), load <= 1/2) maps a key to its row + 1; a request
 * makes room for all the rows it creates at once, and its loops
 * prefetch the index slots of the keys a few places ahead.  Eviction
 * finds the clock below which the oldest rows lie from a histogram of
 * the rows' clocks (request ticks: O(rows)), gives the changed ones to
 * the write buffer, compacts the slab and rebuilds the index, once per
 * batch of evictions.
 * Admission counts live in a second open-addressing map (key -> pulls
 * seen) of the keys pulled and not admitted yet: a key's count goes once
 * it has a row (admit_forget), so the map holds the pending keys only. */
#include "psd_sparse.h"
#include "psd_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ps_log.h"
#include "ps_place.h"
#include "psd_optim.h"

enum { ROW_DIRTY = 1, ROW_ON_DISK = 2 };
#define KEY_MAX_LEN (1 + 64 + 1 + 4 + 8)
#define VAL_HDR 16 /* update count, clock */
#define VAL_SEQ 8  /* after the floats: the redo log seq of the last push applied */
#define LOG_HDR(nl) ((size_t)2 + (nl) + 12) /* kind, name length, name, table, dim, nkeys */
#define SPILL_BYTES (16u << 20) /* a write buffer is sealed once it holds this much */
#define SPILL_SEALED 1          /* sealed buffers waiting for the writer, at most */

struct sp_table;

/* A write buffer (see "the write buffers" below). */
enum { BUF_QUEUED = 1, BUF_WRITING, BUF_DONE, BUF_FAILED };

typedef struct sp_ent {
  struct sp_table *t;
  uint64_t key;
  size_t off;                /* its stored row: data + off, val_len(t) bytes */
} sp_ent;

typedef struct sp_buf {
  sp_ent *ent;
  size_t n, cap;
  uint32_t *ix;              /* open addressing on (table, key): entry + 1, 0 = empty */
  size_t icap;
  char *data;
  size_t used, dcap;
  int has_w;                 /* it carries the "w" record W */
  uint64_t w;
  uint64_t max_seq;          /* the newest log seq its rows (and W) hold */
  uint64_t gen;              /* seal order, from 1 */
  int state;                 /* BUF_*, once sealed (under psd_sparse.mu) */
  int code;                  /* BUF_FAILED: the error, its message in eb */
  ps_errbuf eb;
  struct sp_buf *next;       /* the sealed list, oldest first */
} sp_buf;

typedef struct sp_table {
  char *model;
  uint32_t id, dim;
  unsigned nslots;
  size_t rowf;               /* floats per row */
  char *init;
  float scale;
  uint64_t seed;
  psd_optim optim;
  /* rows in memory */
  size_t nrows, cap;
  uint64_t *keys, *count, *clock;
  uint64_t *rseq;            /* redo log seq of the last push applied (0: none logged) */
  uint8_t *flags;
  float *data;
  uint32_t *index;           /* row + 1, 0 = empty */
  size_t icap;
  /* admission: key -> pulls seen */
  uint64_t *akeys;
  uint32_t *aseen;
  size_t an, acap;
  uint64_t tick;
  int any_cold;              /* RocksDB or the write buffers may hold rows of it that are
                              * not in memory: some were on disk when it was added, or
                              * rows were evicted since (else a miss is a new key) */
  psd_sparse_stats st;
} sp_table;

struct psd_sparse {
  char *dir;
  uint64_t memory_rows;
  uint32_t admit_after;
  uint64_t max_new_rows;        /* keys without a row per request; 0: no limit */
  rocksdb_t *db;                /* NULL only when a reopen failed both ways (db_reopen) */
  int db_failed;                /* an ingest failed through db: reopened before the next (mu) */
  uint32_t reopen_fails;        /* reopens for writing that failed in a row */
  rocksdb_options_t *opts;
  rocksdb_block_based_table_options_t *bbto;
  rocksdb_cache_t *cache;
  rocksdb_readoptions_t *ro;
  rocksdb_column_family_handle_t *cf; /* the default family (batched MultiGet needs it) */
  sp_table **tables;
  size_t ntables;
  /* per-request scratch, grown as needed */
  uint64_t *set;                /* duplicate check: key + 1... as open addressing of keys */
  uint8_t *set_used;
  size_t set_cap;
  int64_t *rowof;               /* request key i -> row, -1: none */
  size_t rowof_cap;
  float *upd;                   /* updated rows before commit */
  size_t upd_cap;
  /* eviction and row i/o scratch, kept between requests: large buffers
   * malloc'd and freed per request cost a page fault per page each time */
  uint32_t *ev_hist;            /* rows per clock (age) */
  size_t ev_hist_cap;
  uint8_t *ev_mark;             /* rows to drop */
  size_t ev_mark_cap;
  struct key_at *ka;            /* keys to read, sorted */
  size_t ka_cap;
  /* the write buffers (see "the write buffers") */
  sp_buf *open;                 /* rows given to RocksDB since the last seal (loop) */
  sp_buf *sealed;               /* sealed, oldest first: the list is the loop's, states mu's */
  uint64_t gen;                 /* the last buffer sealed */
  uint64_t persist_gen;         /* psd_sparse_persist waits for the buffers up to it (mu) */
  rocksdb_ingestexternalfileoptions_t *io;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t writer;
  int writer_started, stop;     /* stop: under mu */
  int hold;                     /* psd_sparse_hold_writer (under mu) */
  /* durability (see psd_sparse.h, "Durability") */
  psd_sparse_log_fn *log_fn;    /* redo log hook; NULL: none */
  void *log_arg;
  psd_sparse_durable_fn *durable_fn; /* waits for the log before an ingest; NULL: none */
  void *durable_arg;
  uint64_t wseq;                /* the "w" record in RocksDB (or a write buffer) */
  int has_wseq;                 /* RocksDB held a "w" record at open or one was written */
  int unpersisted;              /* a persist failed: the next snapshot persists again */
};

/* ---- small helpers -------------------------------------------------------- */

/* rdb_err converts RocksDB's ERR (freed) into a PS_E* code
 * (psd_rdb_code: a damaged block is PS_EIO, not PS_ELOCKED) with WHAT and
 * the directory in EB. */
static int rdb_err(const psd_sparse *s, char *err, const char *what, ps_errbuf *eb) {
  int code = psd_rdb_code(err);
  ps_errf(eb, code, "sparse rows '%s': %s: %s", s->dir, what, err);
  rocksdb_free(err);
  return code;
}

/* grow_to makes *P (elements of SIZE bytes, capacity *CAP) hold N; 0 or
 * PS_ENOMEM with *P unchanged. */
static int grow_to(void *p, size_t *cap, size_t n, size_t size) {
  if (n <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < n) c *= 2;
  void *np = realloc(*(void **)p, c * size);
  if (!np) return PS_ENOMEM;
  *(void **)p = np;
  *cap = c;
  return 0;
}

/* row_key writes T's RocksDB key of KEY into K and returns its length. */
static size_t row_key(const sp_table *t, uint64_t key, char *k) {
  size_t n = strlen(t->model);
  k[0] = 'r';
  memcpy(k + 1, t->model, n + 1);
  n += 2;
  for (int i = 3; i >= 0; i--) k[n++] = (char)(t->id >> (8 * i));
  for (int i = 7; i >= 0; i--) k[n++] = (char)(key >> (8 * i));
  return n;
}

static float *row_data(const sp_table *t, size_t r) { return t->data + r * t->rowf; }

static size_t val_len(const sp_table *t) { return VAL_HDR + t->rowf * sizeof(float) + VAL_SEQ; }

/* val_ok: LEN is the length of a stored row of T: with its seq, or from
 * before rows carried one (read as seq 0). */
static int val_ok(const sp_table *t, size_t len) {
  return len == val_len(t) || len == val_len(t) - VAL_SEQ;
}

/* val_seq reads the seq of the stored row V (LEN bytes). */
static uint64_t val_seq(const sp_table *t, const char *v, size_t len) {
  uint64_t q = 0;
  if (len == val_len(t)) memcpy(&q, v + len - VAL_SEQ, 8);
  return q;
}

/* ---- the write buffers ----------------------------------------------------------
 *
 * Rows given to RocksDB (evictions, snapshots, exports) do not go through
 * RocksDB's memtable, a skiplist where each random insert and each lookup
 * of a read-back cost about a microsecond (most of a budgeted shard's
 * time).  They go to psd's own write buffer, a hash of (table, key) ->
 * stored row.  A buffer that holds SPILL_BYTES, or that a snapshot or an
 * export needs on disk, is sealed and handed to the writer thread, which
 * sorts it, writes it as one SST file (SstFileWriter, synced) and has
 * RocksDB take the file in whole (ingestion: no memtable, no WAL).  Until
 * its file is in, a buffer stays readable: a miss on one of its rows is
 * served from it, in memory, and so are the rows of buffers already
 * written while all buffers hold at most 2 x SPILL_BYTES (the oldest
 * written go first).  Buffers go in in the order they were
 * sealed (a later one may hold newer copies of the same rows); a buffer
 * that failed (a full disk) stops the ones after it and is tried again at
 * the next seal (a snapshot tries it alone first: buf_retry), while
 * evictions wait (spill_refused: the rows stay in memory, over the
 * budget, and no request waits for a write that fails).  At most SPILL_SEALED sealed buffers wait: sealing one
 * more waits for the oldest (the loop blocks only when rows are evicted
 * faster than the disk takes them), so the buffers hold at most
 * (1 + SPILL_SEALED) x SPILL_BYTES, plus what one snapshot writes.
 *
 * Threads: the loop owns the open buffer and the sealed list (it appends
 * and frees, both under mu); the writer reads sealed buffers (never
 * changed once sealed) and sets their state under mu. */

static size_t buf_hash(const sp_table *t, uint64_t key) {
  return (size_t)ps_mix64(key ^ ((uint64_t)(uintptr_t)t * 0x9E3779B97F4A7C15ull));
}

static void buf_free(sp_buf *b) {
  if (!b) return;
  free(b->ent);
  free(b->ix);
  free(b->data);
  free(b);
}

/* buf_find returns the stored row of KEY of T in B, or NULL. */
static const char *buf_find(const sp_buf *b, const sp_table *t, uint64_t key) {
  if (!b->icap) return NULL;
  size_t mask = b->icap - 1;
  for (size_t h = buf_hash(t, key) & mask;; h = (h + 1) & mask) {
    uint32_t v = b->ix[h];
    if (!v) return NULL;
    const sp_ent *e = &b->ent[v - 1];
    if (e->key == key && e->t == t) return b->data + e->off;
  }
}

/* buf_lookup returns the newest buffered copy of KEY of T, or NULL. */
static const char *buf_lookup(const psd_sparse *s, const sp_table *t, uint64_t key) {
  const char *v = s->open ? buf_find(s->open, t, key) : NULL;
  if (v) return v;
  for (const sp_buf *b = s->sealed; b; b = b->next) { /* oldest first: the last match */
    const char *w = buf_find(b, t, key);
    if (w) v = w;
  }
  return v;
}

/* buf_reserve makes room in the open buffer (made when there is none)
 * for N more rows of T, so that a snapshot's rows grow it once; 0 or
 * PS_ENOMEM. */
static int buf_reserve(psd_sparse *s, const sp_table *t, size_t n) {
  if (!s->open && !(s->open = calloc(1, sizeof *s->open))) return PS_ENOMEM;
  sp_buf *b = s->open;
  if (grow_to(&b->ent, &b->cap, b->n + n, sizeof *b->ent) ||
      grow_to(&b->data, &b->dcap, b->used + n * val_len(t), 1))
    return PS_ENOMEM;
  if ((b->n + n) * 2 > b->icap) {
    size_t c = b->icap ? b->icap * 2 : 4096;
    while (c < (b->n + n) * 2) c *= 2;
    if (c > UINT32_MAX) return PS_ENOMEM;
    uint32_t *ix = calloc(c, sizeof *ix);
    if (!ix) return PS_ENOMEM;
    for (size_t i = 0; i < b->n; i++) {
      size_t h = buf_hash(b->ent[i].t, b->ent[i].key) & (c - 1);
      while (ix[h]) h = (h + 1) & (c - 1);
      ix[h] = (uint32_t)(i + 1);
    }
    free(b->ix);
    b->ix = ix;
    b->icap = c;
  }
  return 0;
}

/* buf_prefetch asks for the open buffer's index slot of KEY of T. */
static void buf_prefetch(const psd_sparse *s, const sp_table *t, uint64_t key) {
  if (s->open && s->open->icap)
    __builtin_prefetch(&s->open->ix[buf_hash(t, key) & (s->open->icap - 1)]);
}

/* buf_slot returns where the stored row of KEY of T goes in the open
 * buffer (its old copy there, or a new entry); NULL when out of memory. */
static char *buf_slot(psd_sparse *s, sp_table *t, uint64_t key) {
  if (buf_reserve(s, t, 1)) return NULL;
  sp_buf *b = s->open;
  size_t len = val_len(t);
  size_t mask = b->icap - 1, h = buf_hash(t, key) & mask;
  for (; b->ix[h]; h = (h + 1) & mask) {
    const sp_ent *e = &b->ent[b->ix[h] - 1];
    if (e->key == key && e->t == t) return b->data + e->off;
  }
  b->ent[b->n] = (sp_ent){t, key, b->used};
  b->ix[h] = (uint32_t)(++b->n);
  b->used += len;
  return b->data + b->used - len;
}

/* cmp_ent orders entries as their RocksDB keys ('r', model, '\0', table
 * BE, key BE). */
static int cmp_ent(const void *a, const void *b) {
  const sp_ent *x = *(const sp_ent *const *)a, *y = *(const sp_ent *const *)b;
  if (x->t != y->t) {
    int c = strcmp(x->t->model, y->t->model);
    if (c) return c;
    if (x->t->id != y->t->id) return x->t->id < y->t->id ? -1 : 1;
  }
  return x->key < y->key ? -1 : x->key > y->key;
}

/* buf_write (writer thread) writes B as one SST file in key order ("w"
 * last: 'w' > 'r') and ingests it.  0 or a PS_E* code with EB; *DB_FAILED
 * says that the ingest itself failed (RocksDB's handle, not psd's file:
 * the handle may be in its background error state for good, db_reopen). */
static int buf_write(psd_sparse *s, const sp_buf *b, int *db_failed, ps_errbuf *eb) {
  const sp_ent **ord = malloc((b->n ? b->n : 1) * sizeof *ord);
  if (!ord) return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
  for (size_t i = 0; i < b->n; i++) ord[i] = &b->ent[i];
  qsort(ord, b->n, sizeof *ord, cmp_ent);
  char path[4200];
  snprintf(path, sizeof path, "%s/spill-%llu.sst.tmp", s->dir, (unsigned long long)b->gen);
  rocksdb_envoptions_t *env = rocksdb_envoptions_create();
  rocksdb_sstfilewriter_t *w = rocksdb_sstfilewriter_create(env, s->opts);
  char *err = NULL;
  rocksdb_sstfilewriter_open(w, path, &err);
  for (size_t i = 0; i < b->n && !err; i++) {
    char k[KEY_MAX_LEN];
    size_t kn = row_key(ord[i]->t, ord[i]->key, k);
    rocksdb_sstfilewriter_put(w, k, kn, b->data + ord[i]->off, val_len(ord[i]->t), &err);
  }
  if (!err && b->has_w) rocksdb_sstfilewriter_put(w, "w", 1, (const char *)&b->w, 8, &err);
  if (!err) rocksdb_sstfilewriter_finish(w, &err); /* synced */
  rocksdb_sstfilewriter_destroy(w);
  rocksdb_envoptions_destroy(env);
  free(ord);
  /* SstFileWriter drops what it wrote from the page cache; its rows are
   * the ones read back next (a read-back would go to the disk, with
   * readahead): the kernel reads the file back in, sequentially, now */
  int fd = err ? -1 : open(path, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
    close(fd);
  }
  /* the file goes in only once the redo log has on disk every record its
   * rows hold (invariant 6): a row ahead of the log would outlive a crash
   * that lost its record, and replay would skip the record a restarted
   * log gives that seq again */
  int rc = 0;
  pthread_mutex_lock(&s->mu); /* (psd_sparse_set_durable may change it meanwhile) */
  psd_sparse_durable_fn *durable = s->durable_fn;
  void *darg = s->durable_arg;
  pthread_mutex_unlock(&s->mu);
  if (!err && durable && b->max_seq) rc = durable(darg, b->max_seq, eb);
  if (!err && !rc && !s->db) rc = ps_errf(eb, PS_EIO, "sparse rows '%s': closed", s->dir);
  if (!err && !rc) {
    const char *files[] = {path};
    rocksdb_ingest_external_file(s->db, files, 1, s->io, &err);
    *db_failed = err != NULL;
  }
  unlink(path); /* moved in (a link, removed here), or a partial file */
  return err ? rdb_err(s, err, "write", eb) : rc;
}

/* buf_remove_tmp removes the files of buffers a process that died left
 * half written in DIR (never ingested: the rows they held are lost or
 * in later files as the durability mode says). */
static void buf_remove_tmp(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    size_t n = strlen(e->d_name);
    if (strncmp(e->d_name, "spill-", 6) || n < 8 || strcmp(e->d_name + n - 8, ".sst.tmp")) continue;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
}

static void *writer_main(void *arg) {
  psd_sparse *s = arg;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    sp_buf *b = s->sealed;
    while (b && b->state == BUF_DONE) b = b->next;
    if (b && b->state == BUF_QUEUED && !s->hold) {
      b->state = BUF_WRITING;
      pthread_mutex_unlock(&s->mu);
      ps_errbuf eb;
      int db_failed = 0;
      int rc = buf_write(s, b, &db_failed, &eb);
      pthread_mutex_lock(&s->mu);
      if (db_failed) s->db_failed = 1;
      b->state = rc ? BUF_FAILED : BUF_DONE;
      b->code = rc;
      if (rc) b->eb = eb;
      pthread_cond_broadcast(&s->cv);
      continue;
    }
    if (s->stop) break;
    pthread_cond_wait(&s->cv, &s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

void psd_sparse_hold_writer(psd_sparse *s, int hold) {
  pthread_mutex_lock(&s->mu);
  s->hold = hold;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* buf_bytes: the memory buffer B holds (its rows, entries and index). */
static size_t buf_bytes(const sp_buf *b) {
  return b->used + b->n * sizeof *b->ent + b->icap * sizeof *b->ix;
}

/* buf_reap (loop, under mu) frees the oldest sealed buffers whose files
 * are in: all of them with ALL, else while the buffers, the open one
 * included, hold more than 2 x SPILL_BYTES.  Those kept go on serving
 * their rows from memory. */
static void buf_reap(psd_sparse *s, int all) {
  size_t bytes = s->open ? buf_bytes(s->open) : 0;
  for (const sp_buf *b = s->sealed; b; b = b->next) bytes += buf_bytes(b);
  while (s->sealed && s->sealed->state == BUF_DONE && (all || bytes > 2 * (size_t)SPILL_BYTES)) {
    sp_buf *b = s->sealed;
    bytes -= buf_bytes(b);
    s->sealed = b->next;
    buf_free(b);
  }
}

/* buf_pending (under mu): the sealed buffers not in RocksDB's files yet. */
static size_t buf_pending(const psd_sparse *s) {
  size_t n = 0;
  for (const sp_buf *b = s->sealed; b; b = b->next) n += b->state != BUF_DONE;
  return n;
}

/* buf_tidy (loop) frees every sealed buffer whose file is in (then their
 * rows are read from RocksDB's files). */
static void buf_tidy(psd_sparse *s) {
  if (!s->sealed) return;
  pthread_mutex_lock(&s->mu);
  buf_reap(s, 1);
  pthread_mutex_unlock(&s->mu);
}

/* buf_failed (under mu) reports the oldest failed buffer in EB: its code,
 * or 0 when none failed. */
static int buf_failed(const psd_sparse *s, ps_errbuf *eb) {
  for (const sp_buf *b = s->sealed; b; b = b->next)
    if (b->state == BUF_FAILED) {
      *eb = b->eb;
      return b->code;
    }
  return 0;
}

/* buf_requeue_failed (under mu) queues the failed buffers for the writer
 * again. */
static void buf_requeue_failed(psd_sparse *s) {
  for (sp_buf *b = s->sealed; b; b = b->next)
    if (b->state == BUF_FAILED) b->state = BUF_QUEUED;
  pthread_cond_broadcast(&s->cv);
}

/* db_reopen (loop) replaces a handle an ingest failed through before a
 * failed buffer is written again (invariant 7): RocksDB may have gone into
 * its background error state (a MANIFEST write that met a full disk), in
 * which it refuses every later ingest even once the disk has room, so the
 * handle is closed and the directory opened again (psd_rdb_open, as the
 * dense store reopens its own: psd_store.c invariant 8).  Meanwhile the
 * writer waits (the failed buffer stops it), so the loop may swap the
 * handle.  When the open for writing fails (the disk still full), rows
 * are read through a read-only handle until a later seal's reopen works.
 * 0, or the open's error (the failed buffers stay failed). */
static int db_reopen(psd_sparse *s, ps_errbuf *eb) {
  pthread_mutex_lock(&s->mu);
  int failed = s->db_failed;
  pthread_mutex_unlock(&s->mu);
  if (!failed) return 0;
  if (s->reopen_fails == 0) ps_warn("sparse rows '%s': RocksDB failed a write; reopening it", s->dir);
  if (s->cf) rocksdb_column_family_handle_destroy(s->cf);
  if (s->db) rocksdb_close(s->db);
  s->cf = NULL;
  char *err = NULL;
  s->db = psd_rdb_open(s->opts, s->dir, 0, &s->cf, &err);
  if (s->db) {
    ps_info("sparse rows '%s' reopened after %" PRIu32 " failed tries", s->dir, s->reopen_fails);
    s->reopen_fails = 0;
    pthread_mutex_lock(&s->mu);
    s->db_failed = 0;
    pthread_mutex_unlock(&s->mu);
    return 0;
  }
  int rc = rdb_err(s, err, "reopen", eb);
  /* a full disk fails every try (each snapshot): said at the first and
   * every 60th in a row, as the dense store says its failed flushes */
  if (s->reopen_fails++ % 60 == 0)
    ps_warn("%s (%" PRIu32 " in a row); rows are read through a read-only handle meanwhile",
            eb->msg, s->reopen_fails);
  err = NULL;
  s->db = psd_rdb_open(s->opts, s->dir, 1, &s->cf, &err);
  if (!s->db) {
    ps_errbuf e2;
    rdb_err(s, err, "open for reading", &e2);
    ps_err("%s: rows on disk cannot be read until a reopen works", e2.msg);
  }
  return rc;
}

/* buf_seal (loop) seals the open buffer (none when it is empty) and hands
 * it to the writer; failed buffers are queued again first (through a
 * reopened handle when an ingest failed, db_reopen).  With
 * SPILL_SEALED buffers waiting it waits for the oldest; when that one
 * fails, its error (the open buffer stays open, its rows in memory). */
static int buf_seal(psd_sparse *s, ps_errbuf *eb) {
  int rc = db_reopen(s, eb);
  if (rc) return rc;
  pthread_mutex_lock(&s->mu);
  buf_requeue_failed(s);
  sp_buf *o = s->open;
  if (o && (o->n || o->has_w)) {
    while (buf_pending(s) >= SPILL_SEALED && !(rc = buf_failed(s, eb)))
      pthread_cond_wait(&s->cv, &s->mu);
    if (!rc) {
      o->gen = ++s->gen;
      o->state = BUF_QUEUED;
      sp_buf **tail = &s->sealed;
      while (*tail) tail = &(*tail)->next;
      *tail = o;
      s->open = NULL;
      pthread_cond_broadcast(&s->cv);
    }
  }
  buf_reap(s, 0);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* buf_wait (any thread) waits until the buffers sealed up to GEN are in
 * RocksDB's files; 0, or the error of the first that failed. */
static int buf_wait(psd_sparse *s, uint64_t gen, ps_errbuf *eb) {
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    const sp_buf *b = s->sealed;
    while (b && b->state == BUF_DONE) b = b->next;
    if (!b || b->gen > gen) break;
    if ((rc = buf_failed(s, eb))) break;
    pthread_cond_wait(&s->cv, &s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* buf_sync (loop) seals the open buffer and waits until every buffer is
 * in RocksDB's files (an export reads RocksDB itself). */
static int buf_sync(psd_sparse *s, ps_errbuf *eb) {
  int rc = buf_seal(s, eb);
  return rc ? rc : buf_wait(s, s->gen, eb);
}

/* spill_refused (loop): a buffer failed (the disk refuses writes) and no
 * seal has written it since.  Evictions wait for that (invariant 3): the
 * rows stay in memory rather than pile up in the open buffer, and no
 * request waits for a write that fails. */
static int spill_refused(psd_sparse *s) {
  if (!s->sealed) return 0;
  ps_errbuf eb;
  pthread_mutex_lock(&s->mu);
  int rc = buf_failed(s, &eb);
  pthread_mutex_unlock(&s->mu);
  return rc != 0;
}

/* buf_retry (loop) has the writer write the failed buffers again and
 * waits for them: 0 once they are in RocksDB's files, else the error. */
static int buf_retry(psd_sparse *s, ps_errbuf *eb) {
  int rc = db_reopen(s, eb);
  if (rc) return rc;
  pthread_mutex_lock(&s->mu);
  buf_requeue_failed(s);
  pthread_mutex_unlock(&s->mu);
  return buf_wait(s, s->gen, eb);
}

/* ---- the key index -------------------------------------------------------- */

/* index_find returns the row of KEY in memory, or -1. */
static int64_t index_find(const sp_table *t, uint64_t key) {
  if (!t->icap) return -1;
  size_t mask = t->icap - 1;
  for (size_t h = ps_mix64(key) & mask;; h = (h + 1) & mask) {
    uint32_t v = t->index[h];
    if (!v) return -1;
    if (t->keys[v - 1] == key) return v - 1;
  }
}

/* Requests look up and insert keys in random order, each a cache miss
 * in an index of a large table: the loops ask for the slot of the key
 * PREFETCH_AHEAD places on while they work on this one. */
#define PREFETCH_AHEAD 8

static void index_prefetch(const sp_table *t, uint64_t key) {
  if (t->icap) __builtin_prefetch(&t->index[ps_mix64(key) & (t->icap - 1)]);
}

/* index_put records row R (its key in t->keys) in an index with room. */
static void index_put(sp_table *t, size_t r) {
  size_t mask = t->icap - 1, h = ps_mix64(t->keys[r]) & mask;
  while (t->index[h]) h = (h + 1) & mask;
  t->index[h] = (uint32_t)(r + 1);
}

/* index_rebuild sizes the index for CAP rows (load <= 1/2) and refills it. */
static int index_rebuild(sp_table *t, size_t cap) {
  size_t c = 64;
  while (c < cap * 2) c *= 2;
  uint32_t *ix = calloc(c, sizeof *ix);
  if (!ix) return PS_ENOMEM;
  free(t->index);
  t->index = ix;
  t->icap = c;
  for (size_t r = 0; r < t->nrows; r++) index_put(t, r);
  return 0;
}

/* rows_reserve makes room for N more rows, in the arrays and in the
 * index (load <= 1/2), so that appending them moves nothing: a request
 * that creates a million rows grew them 15 times over, and the index as
 * often, each growth putting every row in again.  PS_ENOMEM leaves the
 * table as it was (the arrays may have grown). */
static int rows_reserve(sp_table *t, size_t n) {
  size_t want = t->nrows + n;
  if (want > t->cap) {
    size_t c = t->cap ? t->cap : 64;
    while (c < want) c *= 2;
    if (c > UINT32_MAX - 1) return PS_ENOMEM;
    uint64_t *k = realloc(t->keys, c * sizeof *k);
    if (k) t->keys = k;
    uint64_t *n = k ? realloc(t->count, c * sizeof *n) : NULL;
    if (n) t->count = n;
    uint64_t *cl = n ? realloc(t->clock, c * sizeof *cl) : NULL;
    if (cl) t->clock = cl;
    uint64_t *q = cl ? realloc(t->rseq, c * sizeof *q) : NULL;
    if (q) t->rseq = q;
    uint8_t *f = q ? realloc(t->flags, c) : NULL;
    if (f) t->flags = f;
    float *d = f ? realloc(t->data, c * t->rowf * sizeof *d) : NULL;
    if (!d) return PS_ENOMEM;
    t->data = d;
    t->cap = c;
  }
  if (want * 2 > t->icap && index_rebuild(t, t->cap)) return PS_ENOMEM;
  return 0;
}

/* row_new appends a row for KEY (contents to be set by the caller) and
 * returns its index in *R; PS_ENOMEM leaves the table as it was. */
static int row_new(sp_table *t, uint64_t key, size_t *r) {
  if (rows_reserve(t, 1)) return PS_ENOMEM;
  *r = t->nrows++;
  t->keys[*r] = key;
  t->rseq[*r] = 0;
  index_put(t, *r);
  t->st.rows_mem = t->nrows;
  return 0;
}

/* ---- admission -------------------------------------------------------------- */

/* admit_resize rehashes the admission map into C slots (a power of two
 * at least twice its keys; 0 frees it); 0 or PS_ENOMEM with it unchanged. */
static int admit_resize(sp_table *t, size_t c) {
  uint64_t *k = c ? calloc(c, sizeof *k) : NULL;
  uint32_t *n = c ? calloc(c, sizeof *n) : NULL;
  if (c && (!k || !n)) {
    free(k);
    free(n);
    return PS_ENOMEM;
  }
  for (size_t i = 0; c && i < t->acap; i++) {
    if (!t->aseen[i]) continue;
    size_t h = ps_mix64(t->akeys[i]) & (c - 1);
    while (n[h]) h = (h + 1) & (c - 1);
    k[h] = t->akeys[i];
    n[h] = t->aseen[i];
  }
  free(t->akeys);
  free(t->aseen);
  t->akeys = k;
  t->aseen = n;
  t->acap = c;
  return 0;
}

/* admit_seen counts one pull of KEY and returns how many there were.
 * A slot is taken while its count is not 0 (any key value, 0 included,
 * is a key). */
static int admit_seen(sp_table *t, uint64_t key, uint32_t *seen) {
  if ((t->an + 1) * 2 > t->acap && admit_resize(t, t->acap ? t->acap * 2 : 1024)) return PS_ENOMEM;
  size_t mask = t->acap - 1, h = ps_mix64(key) & mask;
  while (t->aseen[h] && t->akeys[h] != key) h = (h + 1) & mask;
  if (!t->aseen[h]) {
    t->akeys[h] = key;
    t->an++;
    t->st.pending++;
  }
  if (t->aseen[h] < UINT32_MAX) t->aseen[h]++;
  *seen = t->aseen[h];
  return 0;
}

/* admit_forget drops the count of KEY (if any) once KEY has a row: the
 * row is what admits it from then on (on disk too), and a count kept
 * for every key ever admitted grew the map without bound.  Backward-shift
 * deletion (linear probing, no tombstones): the entries after the freed
 * slot whose home is not between it and them move up, so that every
 * probe still finds its key.  The map shrinks by half once under 1/8
 * full (amortized against the growth at 1/2), and is freed when empty. */
static void admit_forget(sp_table *t, uint64_t key) {
  if (!t->an) return;
  size_t mask = t->acap - 1, i = ps_mix64(key) & mask;
  while (t->aseen[i] && t->akeys[i] != key) i = (i + 1) & mask;
  if (!t->aseen[i]) return;
  for (size_t j = (i + 1) & mask; t->aseen[j]; j = (j + 1) & mask) {
    size_t home = ps_mix64(t->akeys[j]) & mask;
    if (((j - home) & mask) >= ((j - i) & mask)) { /* home at or before i: may move to i */
      t->akeys[i] = t->akeys[j];
      t->aseen[i] = t->aseen[j];
      i = j;
    }
  }
  t->akeys[i] = 0;
  t->aseen[i] = 0;
  t->an--;
  t->st.pending--;
  if (!t->an) admit_resize(t, 0);
  else if (t->acap > 1024 && t->an * 8 < t->acap) admit_resize(t, t->acap / 2); /* (else kept) */
}

/* admitted says whether KEY has been pulled often enough for a row. */
static int admitted(const psd_sparse *s, const sp_table *t, uint64_t key) {
  if (s->admit_after <= 1) return 1;
  if (!t->acap) return 0;
  size_t mask = t->acap - 1, h = ps_mix64(key) & mask;
  while (t->aseen[h] && t->akeys[h] != key) h = (h + 1) & mask;
  return t->aseen[h] >= s->admit_after;
}

/* ---- tables ------------------------------------------------------------------- */

static void table_free(sp_table *t) {
  if (!t) return;
  free(t->model);
  free(t->init);
  free(t->keys);
  free(t->count);
  free(t->clock);
  free(t->rseq);
  free(t->flags);
  free(t->data);
  free(t->index);
  free(t->akeys);
  free(t->aseen);
  free(t);
}

static sp_table *table_find(const psd_sparse *s, const char *model, uint32_t table) {
  for (size_t i = 0; i < s->ntables; i++)
    if (s->tables[i]->id == table && strcmp(s->tables[i]->model, model) == 0) return s->tables[i];
  return NULL;
}

/* table_on_disk says whether RocksDB holds any row of T; 1 when the
 * look fails (a damaged file, an I/O error): rows that cannot be read are
 * still on disk, and misses must read them (and fail), not create fresh
 * rows over them. */
static int table_on_disk(const psd_sparse *s, const sp_table *t) {
  char k[KEY_MAX_LEN];
  size_t n = row_key(t, 0, k) - 8;
  if (!s->db) return 1; /* unknown (db_reopen failed both ways): misses read, and fail */
  rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ro);
  rocksdb_iter_seek(it, k, n);
  int found = 0;
  if (rocksdb_iter_valid(it)) {
    size_t klen;
    const char *ik = rocksdb_iter_key(it, &klen);
    found = klen == n + 8 && memcmp(ik, k, n) == 0;
  }
  char *err = NULL;
  rocksdb_iter_get_error(it, &err);
  rocksdb_iter_destroy(it);
  if (err) {
    ps_warn("sparse rows '%s': looking for rows of '%s'/%u: %s; counting them as on disk "
            "(misses read them back)", s->dir, t->model, t->id, err);
    rocksdb_free(err);
    found = 1;
  }
  return found;
}

int psd_sparse_add_table(psd_sparse *s, const psd_sparse_table_opts *o, ps_errbuf *eb) {
  const char *init = o->init && *o->init ? o->init : "zeros";
  if (!o->model || !*o->model || strlen(o->model) > 63)
    return ps_errf(eb, PS_EINVAL, "sparse table: bad model name");
  if (!o->dim || o->dim > 65536)
    return ps_errf(eb, PS_EINVAL, "sparse table '%s'/%u: dim %u is not in 1..65536", o->model,
                   o->table, o->dim);
  if (!ps_init_known(init))
    return ps_errf(eb, PS_EINVAL, "sparse table '%s'/%u: unknown initializer '%s'", o->model,
                   o->table, init);
  psd_optim optim;
  int rc = psd_optim_init(&optim, o->optim, eb);
  if (rc) return rc;
  sp_table *old = table_find(s, o->model, o->table);
  if (old) {
    if (old->dim == o->dim && old->optim.kind == optim.kind) return 0;
    return ps_errf(eb, PS_EEXIST, "sparse table '%s'/%u exists with dim %u and optimizer %s",
                   o->model, o->table, old->dim, psd_optim_name(&old->optim));
  }
  sp_table *t = calloc(1, sizeof *t);
  sp_table **ts = realloc(s->tables, (s->ntables + 1) * sizeof *ts);
  if (ts) s->tables = ts;
  if (t) {
    t->model = strdup(o->model);
    t->init = strdup(init);
  }
  if (!t || !ts || !t->model || !t->init) {
    table_free(t);
    return ps_errf(eb, PS_ENOMEM, "sparse table '%s'/%u: out of memory", o->model, o->table);
  }
  t->id = o->table;
  t->dim = o->dim;
  t->optim = optim;
  t->nslots = psd_optim_slots(&optim);
  t->rowf = (size_t)o->dim * (1 + t->nslots);
  t->scale = o->scale;
  t->seed = o->seed;
  t->any_cold = table_on_disk(s, t);
  s->tables[s->ntables++] = t;
  return 0;
}

int psd_sparse_dim(const psd_sparse *s, const char *model, uint32_t table, uint32_t *dim,
                   unsigned *slots) {
  const sp_table *t = table_find(s, model, table);
  if (!t) return PS_ENOENT;
  *dim = t->dim;
  if (slots) *slots = t->nslots;
  return 0;
}

/* ---- open, close ------------------------------------------------------------- */

int psd_sparse_open(psd_sparse **out, const psd_sparse_opts *o, ps_errbuf *eb) {
  *out = NULL;
  if (!o || !o->dir || !*o->dir) return ps_errf(eb, PS_EINVAL, "sparse rows: no directory");
  if (mkdir(o->dir, 0755) < 0 && errno != EEXIST)
    return ps_errf(eb, errno == ENOSPC ? PS_ENOSPC : PS_EIO, "cannot create '%s': %s", o->dir,
                   strerror(errno));
  psd_sparse *s = calloc(1, sizeof *s);
  if (!s || !(s->dir = strdup(o->dir))) {
    free(s);
    return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
  }
  s->memory_rows = o->memory_rows;
  s->admit_after = o->admit_after;
  s->max_new_rows = o->max_new_rows;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->io = rocksdb_ingestexternalfileoptions_create();
  rocksdb_ingestexternalfileoptions_set_move_files(s->io, 1);
  char *err = NULL;
  s->opts = psd_rdb_options(&err);
  s->bbto = rocksdb_block_based_options_create();
  s->cache = rocksdb_cache_create_lru(8u << 20);
  s->ro = rocksdb_readoptions_create();
  rocksdb_block_based_options_set_block_cache(s->bbto, s->cache);
  rocksdb_block_based_options_set_filter_policy(s->bbto, rocksdb_filterpolicy_create_bloom(10));
  rocksdb_block_based_options_set_data_block_index_type(
      s->bbto, rocksdb_block_based_table_data_block_index_type_binary_search_and_hash);
  rocksdb_options_set_block_based_table_factory(s->opts, s->bbto);
  rocksdb_options_set_create_if_missing(s->opts, 1);
  rocksdb_options_set_compression(s->opts, rocksdb_no_compression);
  /* a read-back is a point lookup: a hash index in each data block.
   * Rows reach the files through psd's write buffers (ingestion): the
   * memtable stays empty */
  rocksdb_options_set_write_buffer_size(s->opts, 1u << 20);
  rocksdb_options_set_max_write_buffer_number(s->opts, 2);
  rocksdb_options_set_keep_log_file_num(s->opts, 2);
  rocksdb_options_set_info_log_level(s->opts, 4 /* FATAL */);
  if (!err) s->db = psd_rdb_open(s->opts, s->dir, 0, &s->cf, &err);
  if (err) {
    int rc = rdb_err(s, err, "open", eb);
    psd_sparse_close(s);
    return rc;
  }
  size_t vlen = 0;
  char *v = rocksdb_get(s->db, s->ro, "w", 1, &vlen, &err);
  if (err) {
    int rc = rdb_err(s, err, "read", eb);
    psd_sparse_close(s);
    return rc;
  }
  if (v && vlen != 8) {
    rocksdb_free(v);
    ps_errf(eb, PS_EIO, "sparse rows '%s': its log position record has %zu bytes, not 8", s->dir, vlen);
    psd_sparse_close(s);
    return PS_EIO;
  }
  if (v) memcpy(&s->wseq, v, 8), s->has_wseq = 1;
  rocksdb_free(v);
  buf_remove_tmp(s->dir);
  if (pthread_create(&s->writer, NULL, writer_main, s)) {
    ps_errf(eb, PS_ENOMEM, "sparse rows '%s': cannot start the writer thread", s->dir);
    psd_sparse_close(s);
    return PS_ENOMEM;
  }
  s->writer_started = 1;
  *out = s;
  return 0;
}

void psd_sparse_close(psd_sparse *s) {
  if (!s) return;
  if (s->writer_started) { /* what was given to RocksDB goes in, as its memtable would */
    ps_errbuf eb;
    psd_sparse_hold_writer(s, 0);
    buf_sync(s, &eb);
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->writer, NULL);
  }
  buf_free(s->open);
  while (s->sealed) {
    sp_buf *b = s->sealed;
    s->sealed = b->next;
    buf_free(b);
  }
  for (size_t i = 0; i < s->ntables; i++) table_free(s->tables[i]);
  free(s->tables);
  if (s->cf) rocksdb_column_family_handle_destroy(s->cf);
  if (s->db) rocksdb_close(s->db);
  if (s->ro) rocksdb_readoptions_destroy(s->ro);
  if (s->opts) rocksdb_options_destroy(s->opts);
  if (s->bbto) rocksdb_block_based_options_destroy(s->bbto);
  if (s->cache) rocksdb_cache_destroy(s->cache);
  if (s->io) rocksdb_ingestexternalfileoptions_destroy(s->io);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s->set);
  free(s->set_used);
  free(s->rowof);
  free(s->upd);
  free(s->ev_hist);
  free(s->ev_mark);
  free(s->ka);
  free(s->dir);
  free(s);
}

/* ---- writing and reading rows ------------------------------------------------ */

/* put_row stores row R of T at VAL (val_len(t) bytes). */
static void put_row(const sp_table *t, size_t r, char *val) {
  memcpy(val, &t->count[r], 8);
  memcpy(val + 8, &t->clock[r], 8);
  memcpy(val + VAL_HDR, row_data(t, r), t->rowf * sizeof(float));
  memcpy(val + VAL_HDR + t->rowf * sizeof(float), &t->rseq[r], VAL_SEQ);
}

/* A key and where it is (a row, a request's index), sorted by key. */
typedef struct key_at {
  uint64_t key;
  size_t at;
} key_at;

static int cmp_key_at(const void *a, const void *b) {
  uint64_t x = ((const key_at *)a)->key, y = ((const key_at *)b)->key;
  return x < y ? -1 : x > y;
}

/* write_rows gives RocksDB the rows of T whose MARK[r] is set (every
 * row without MARK) and that changed since they were last given (or
 * never were): into the open write buffer, sealed once it holds
 * SPILL_BYTES when MARK is an eviction's (without MARK, a snapshot or an
 * export, the caller seals it once all tables are in: a seal may wait
 * for the writer, and a snapshot of a million new rows sealed every 16
 * MiB held the loop for seconds).  Rows given are clean and count as on
 * disk (the buffers serve them until their file is in). */
static int write_rows(psd_sparse *s, sp_table *t, const uint8_t *mark, ps_errbuf *eb) {
  uint64_t n = 0, todo = 0;
#define WRITE_ROW(r) ((!mark || mark[r]) && (t->flags[r] & ROW_DIRTY || !(t->flags[r] & ROW_ON_DISK)))
  for (size_t r = 0; r < t->nrows; r++) todo += WRITE_ROW(r);
  if (todo && buf_reserve(s, t, todo)) return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
  for (size_t r = 0, ahead = 0; r < t->nrows; r++) {
    if (mark && !mark[r]) continue;
    if (WRITE_ROW(r)) {
      for (ahead = ahead > r ? ahead : r + 1; ahead < t->nrows && ahead <= r + PREFETCH_AHEAD; ahead++)
        if (WRITE_ROW(ahead)) buf_prefetch(s, t, t->keys[ahead]);
      char *v = buf_slot(s, t, t->keys[r]);
      if (!v) {
        t->st.disk_writes += n;
        return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
      }
      put_row(t, r, v);
      if (t->rseq[r] > s->open->max_seq) s->open->max_seq = t->rseq[r];
      n++;
    }
    t->flags[r] = ROW_ON_DISK;
  }
#undef WRITE_ROW
  t->st.disk_writes += n;
  if (mark && s->open && s->open->used >= SPILL_BYTES) return buf_seal(s, eb);
  if (n && s->sealed) { /* room for the open buffer: older written ones go */
    pthread_mutex_lock(&s->mu);
    buf_reap(s, 0);
    pthread_mutex_unlock(&s->mu);
  }
  return 0;
}

/* load_row copies the stored row V (LEN bytes, val_ok) into a new row
 * for KEY. */
static int load_row(sp_table *t, uint64_t key, const char *v, size_t len, size_t *r) {
  int rc = row_new(t, key, r);
  if (rc) return rc;
  memcpy(&t->count[*r], v, 8);
  memcpy(&t->clock[*r], v + 8, 8);
  memcpy(row_data(t, *r), v + VAL_HDR, t->rowf * sizeof(float));
  t->rseq[*r] = val_seq(t, v, len);
  t->flags[*r] = ROW_ON_DISK;
  return 0;
}

/* read_back loads the keys of KEYS whose s->rowof entry is -1 from the
 * write buffers, then the rest from RocksDB with one MultiGet, and sets
 * their rowof. */
static int read_back(psd_sparse *s, sp_table *t, const uint64_t *keys, size_t n, ps_errbuf *eb) {
  size_t m = 0;
  if (!t->any_cold) return 0; /* every row on disk is in memory: the misses are new keys */
  for (size_t i = 0; i < n; i++) {
    if (s->rowof[i] >= 0) continue;
    const char *v = buf_lookup(s, t, keys[i]);
    size_t r;
    if (!v) {
      m++;
    } else if (load_row(t, keys[i], v, val_len(t), &r)) {
      return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
    } else {
      s->rowof[i] = (int64_t)r;
      t->st.buffer_reads++;
    }
  }
  if (!m) return 0;
  char *kbuf = malloc(m * KEY_MAX_LEN);
  const char **kl = malloc(m * sizeof *kl);
  size_t *ks = malloc(m * sizeof *ks);
  key_at *ka = grow_to(&s->ka, &s->ka_cap, m, sizeof *s->ka) ? NULL : s->ka;
  rocksdb_pinnableslice_t **vl = calloc(m, sizeof *vl);
  char **errs = calloc(m, sizeof *errs);
  int rc = kbuf && kl && ks && ka && vl && errs ? 0
           : ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
  for (size_t i = 0, j = 0; !rc && i < n; i++)
    if (s->rowof[i] < 0) ka[j++] = (key_at){keys[i], i};
  /* in key order, RocksDB's batched MultiGet looks up each file's filter
   * and index once for the keys it may hold, and reads a block once for
   * the keys in it */
  if (!rc) qsort(ka, m, sizeof *ka, cmp_key_at);
  for (size_t j = 0; !rc && j < m; j++) {
    kl[j] = kbuf + j * KEY_MAX_LEN;
    ks[j] = row_key(t, ka[j].key, kbuf + j * KEY_MAX_LEN);
  }
  if (!rc && !s->db)
    rc = ps_errf(eb, PS_EIO, "sparse rows '%s': closed after a failed reopen: %zu rows of '%s'/%u "
                 "cannot be read back", s->dir, m, t->model, t->id);
  if (!rc) rocksdb_batched_multi_get_cf(s->db, s->ro, s->cf, m, kl, ks, vl, errs, 1);
  for (size_t j = 0; !rc && j < m; j++) {
    size_t vn = 0;
    const char *v = vl[j] ? rocksdb_pinnableslice_value(vl[j], &vn) : NULL;
    if (errs[j]) { /* the request fails naming the row (a damaged file, an I/O error) */
      char what[160];
      snprintf(what, sizeof what, "reading row %llu of '%s'/%u back",
               (unsigned long long)ka[j].key, t->model, t->id);
      rc = rdb_err(s, errs[j], what, eb);
      errs[j] = NULL;
    } else if (v && !val_ok(t, vn)) {
      rc = ps_errf(eb, PS_EIO, "sparse rows '%s': row %llu of '%s'/%u has %zu bytes, expected %zu",
                   s->dir, (unsigned long long)ka[j].key, t->model, t->id, vn, val_len(t));
    } else if (v) {
      size_t r;
      if ((rc = load_row(t, ka[j].key, v, vn, &r))) {
        ps_errf(eb, rc, "sparse rows: out of memory");
      } else {
        s->rowof[ka[j].at] = (int64_t)r;
        t->st.disk_reads++;
        t->st.disk_read_bytes += t->rowf * sizeof(float);
      }
    }
  }
  for (size_t j = 0; vl && errs && j < m; j++) {
    rocksdb_pinnableslice_destroy(vl[j]);
    if (errs[j]) rocksdb_free(errs[j]);
  }
  free(kbuf);
  free(kl);
  free(ks);
  free(vl);
  free(errs);
  return rc;
}

/* ---- eviction -------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* evict brings T back to at most memory_rows rows (invariant 3): the
 * rows touched longest ago go, the changed ones written first. */
static int evict(psd_sparse *s, sp_table *t, ps_errbuf *eb) {
  if (!s->memory_rows || t->nrows <= s->memory_rows) return 0;
  if (spill_refused(s)) return 0; /* the rows stay until the disk takes writes */
  size_t keep = s->memory_rows - s->memory_rows / 8, drop = t->nrows - keep;
  /* the drop-th oldest clock, THR, by counting rows per clock: clocks
   * are request ticks, so the span of the rows' clocks is about the
   * requests the budget holds rows for, rarely more than the rows */
  uint64_t lo = UINT64_MAX, hi = 0;
  for (size_t r = 0; r < t->nrows; r++) {
    if (t->clock[r] < lo) lo = t->clock[r];
    if (t->clock[r] > hi) hi = t->clock[r];
  }
  uint64_t span = hi - lo + 1, thr = hi;
  if (grow_to(&s->ev_mark, &s->ev_mark_cap, t->nrows, 1))
    return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
  uint8_t *mark = s->ev_mark;
  memset(mark, 0, t->nrows);
  if (span <= (uint64_t)t->nrows + 4096) {
    if (grow_to(&s->ev_hist, &s->ev_hist_cap, (size_t)span, sizeof *s->ev_hist))
      return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
    uint32_t *hist = s->ev_hist;
    memset(hist, 0, (size_t)span * sizeof *hist);
    for (size_t r = 0; r < t->nrows; r++) hist[t->clock[r] - lo]++;
    size_t acc = 0;
    for (uint64_t c = 0; c < span; c++)
      if ((acc += hist[c]) >= drop) {
        thr = lo + c;
        break;
      }
  } else { /* clocks spread wider than the rows (a table left idle among others): sort */
    uint64_t *clocks = malloc(t->nrows * sizeof *clocks);
    if (!clocks) return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
    memcpy(clocks, t->clock, t->nrows * sizeof *clocks);
    qsort(clocks, t->nrows, sizeof *clocks, cmp_u64);
    thr = clocks[drop - 1];
    free(clocks);
  }
  size_t below = 0;
  for (size_t r = 0; r < t->nrows; r++) below += t->clock[r] < thr;
  size_t at_thr = drop - below; /* rows with clock == thr to drop, lowest index first */
  for (size_t r = 0; r < t->nrows; r++)
    if (t->clock[r] < thr || (t->clock[r] == thr && at_thr && at_thr--)) mark[r] = 1;
  /* a buffer that fails to seal (the disk refuses it) fails no request:
   * the rows given are in the open buffer, which stays open and serves
   * them, and the next evictions wait for the disk (spill_refused) */
  ps_errbuf seb;
  int rc = write_rows(s, t, mark, &seb);
  if (rc == PS_ENOMEM) return ps_errf(eb, rc, "%s", seb.msg);
  size_t w = 0;
  for (size_t r = 0; r < t->nrows; r++) {
    if (mark[r]) continue;
    if (w != r) {
      t->keys[w] = t->keys[r];
      t->count[w] = t->count[r];
      t->clock[w] = t->clock[r];
      t->rseq[w] = t->rseq[r];
      t->flags[w] = t->flags[r];
      memcpy(row_data(t, w), row_data(t, r), t->rowf * sizeof(float));
    }
    w++;
  }
  t->st.evictions += t->nrows - w;
  if (w < t->nrows) t->any_cold = 1;
  t->nrows = w;
  t->st.rows_mem = w;
  memset(t->index, 0, t->icap * sizeof *t->index);
  for (size_t r = 0; r < t->nrows; r++) index_put(t, r);
  return 0;
}

/* ---- requests ---------------------------------------------------------------------- */

/* request_check finds the table, checks the payload size and that no key
 * is given twice, and sizes the scratch for N keys. */
static int request_check(psd_sparse *s, const char *model, uint32_t table, const uint64_t *keys,
                         size_t n, size_t nfloats, const char *what, sp_table **tp,
                         ps_errbuf *eb) {
  sp_table *t = table_find(s, model, table);
  if (!t) return ps_errf(eb, PS_ENOENT, "sparse %s: model '%s' has no sparse table %u", what, model, table);
  if (n && !keys) return ps_errf(eb, PS_EINVAL, "sparse %s: no keys", what);
  if (n > (SIZE_MAX / 2) / ((size_t)t->dim * (1 + t->nslots) * sizeof(float)))
    return ps_errf(eb, PS_EINVAL, "sparse %s '%s'/%u: %zu keys in one request is too many", what,
                   model, table, n);
  if (nfloats != n * t->dim)
    return ps_errf(eb, PS_EINVAL, "sparse %s '%s'/%u: %zu keys need %zu floats of rows (dim %u), got %zu",
                   what, model, table, n, n * t->dim, t->dim, nfloats);
  size_t c = 64;
  while (c < n * 2) c *= 2;
  if (c > s->set_cap) {
    uint64_t *k = realloc(s->set, c * sizeof *k);
    if (k) s->set = k;
    uint8_t *u = k ? realloc(s->set_used, c) : NULL;
    if (!u) return ps_errf(eb, PS_ENOMEM, "sparse %s: out of memory", what);
    s->set_used = u;
    s->set_cap = c;
  }
  if (grow_to(&s->rowof, &s->rowof_cap, n, sizeof *s->rowof))
    return ps_errf(eb, PS_ENOMEM, "sparse %s: out of memory", what);
  memset(s->set_used, 0, c);
  for (size_t i = 0; i < n; i++) {
    if (i + PREFETCH_AHEAD < n) {
      size_t p = ps_mix64(keys[i + PREFETCH_AHEAD]) & (c - 1);
      __builtin_prefetch(&s->set_used[p]);
      __builtin_prefetch(&s->set[p]);
    }
    size_t h = ps_mix64(keys[i]) & (c - 1);
    for (; s->set_used[h]; h = (h + 1) & (c - 1))
      if (s->set[h] == keys[i])
        return ps_errf(eb, PS_EINVAL, "sparse %s '%s'/%u: key %llu is given twice", what, model,
                       table, (unsigned long long)keys[i]);
    s->set_used[h] = 1;
    s->set[h] = keys[i];
  }
  *tp = t;
  return 0;
}

/* find_rows sets s->rowof for the N keys: rows in memory (hits), then
 * rows read back from RocksDB; -1 for keys without a row. */
static int find_rows(psd_sparse *s, sp_table *t, const uint64_t *keys, size_t n, ps_errbuf *eb) {
  for (size_t i = 0; i < n; i++) {
    if (i + PREFETCH_AHEAD < n) index_prefetch(t, keys[i + PREFETCH_AHEAD]);
    s->rowof[i] = index_find(t, keys[i]);
    if (s->rowof[i] >= 0) {
      t->st.hits++;
    } else {
      t->st.misses++;
    }
  }
  return read_back(s, t, keys, n, eb);
}

/* too_many_new refuses a request that names NNEW keys without a row
 * when that is more than max_new_rows: creating (or counting) each costs
 * the loop about half a microsecond, and a request of a million new keys
 * held it, and every other worker's requests, for a second or more. */
static int too_many_new(const psd_sparse *s, const sp_table *t, const char *what, size_t nnew,
                        ps_errbuf *eb) {
  if (!s->max_new_rows || nnew <= s->max_new_rows) return 0;
  return ps_errf(eb, PS_ETOOBIG, "sparse %s '%s'/%u: %zu of its keys have no row, more than the "
                 "%llu new rows one request may create (sparse.max_new_rows): send them in "
                 "smaller requests", what, t->model, t->id, nnew,
                 (unsigned long long)s->max_new_rows);
}

/* evict_after_refusal keeps invariant 3 after a request refused once
 * it may have read rows back (they stay in memory, unchanged: invariant
 * 4) and returns RC: every refusal after find_rows goes through it. */
static int evict_after_refusal(psd_sparse *s, sp_table *t, int rc) {
  ps_errbuf eb;
  evict(s, t, &eb); /* (a failure leaves rows over budget until the next request) */
  return rc;
}

/* create_row materialises KEY from the initializer into a new row. */
static int create_row(sp_table *t, uint64_t key, int64_t *out, ps_errbuf *eb) {
  size_t r;
  if (row_new(t, key, &r)) return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
  float *d = row_data(t, r);
  ps_init_row(d, t->init, t->scale, t->seed, t->id, key, t->dim);
  psd_optim_init_slots(&t->optim, d + t->dim, t->dim);
  t->count[r] = 0;
  t->clock[r] = t->tick;
  t->flags[r] = ROW_DIRTY;
  t->st.created++;
  *out = (int64_t)r;
  return 0;
}

int psd_sparse_pull(psd_sparse *s, const char *model, uint32_t table, const uint64_t *keys,
                    size_t nkeys, float *rows, size_t nfloats, ps_errbuf *eb) {
  sp_table *t;
  int rc = request_check(s, model, table, keys, nkeys, nfloats, "pull", &t, eb);
  if (rc) return rc;
  t->tick++;
  if ((rc = find_rows(s, t, keys, nkeys, eb))) return evict_after_refusal(s, t, rc);
  size_t nnew = 0;
  for (size_t i = 0; i < nkeys; i++) nnew += s->rowof[i] < 0;
  if ((rc = too_many_new(s, t, "pull", nnew, eb))) return evict_after_refusal(s, t, rc);
  /* (with admission, the keys admitted now are not known yet: no room
   * is made for keys that may get none) */
  if (nnew && s->admit_after <= 1 && rows_reserve(t, nnew))
    return evict_after_refusal(
        s, t, ps_errf(eb, PS_ENOMEM, "sparse pull: out of memory for %zu new rows", nnew));
  for (size_t i = 0, ahead = 0; i < nkeys && !rc; i++) {
    if (s->rowof[i] >= 0) continue;
    for (ahead = ahead > i ? ahead : i + 1; ahead < nkeys && ahead <= i + PREFETCH_AHEAD; ahead++)
      if (s->rowof[ahead] < 0) index_prefetch(t, keys[ahead]);
    uint32_t seen = 1;
    if (s->admit_after > 1 && (rc = admit_seen(t, keys[i], &seen)))
      return evict_after_refusal(s, t, ps_errf(eb, rc, "sparse pull: out of memory"));
    if (seen >= s->admit_after) {
      rc = create_row(t, keys[i], &s->rowof[i], eb);
      if (!rc && s->admit_after > 1) admit_forget(t, keys[i]);
    }
  }
  for (size_t i = 0; i < nkeys && !rc; i++) {
    float *out = rows + i * t->dim;
    if (s->rowof[i] < 0) {
      ps_init_row(out, t->init, t->scale, t->seed, t->id, keys[i], t->dim);
      continue;
    }
    memcpy(out, row_data(t, (size_t)s->rowof[i]), t->dim * sizeof(float));
    t->clock[s->rowof[i]] = t->tick;
  }
  return rc ? evict_after_refusal(s, t, rc) : evict(s, t, eb);
}

/* grads_finite checks the N floats of G; 0, or PS_EINVAL naming the key. */
static int grads_finite(const sp_table *t, const uint64_t *keys, const float *g, size_t n,
                        ps_errbuf *eb) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(psd_optim_absmax(g + i * t->dim, t->dim)))
      return ps_errf(eb, PS_EINVAL, "sparse push '%s'/%u: the gradient of key %llu is not finite",
                     t->model, t->id, (unsigned long long)keys[i]);
  return 0;
}

/* log_push hands the record of a checked push to the log hook: the keys
 * that have rows (s->rowof >= 0) and their gradients; *SEQ receives its
 * seq.  No record when no key has a row. */
static int log_push(psd_sparse *s, const sp_table *t, const uint64_t *keys, size_t nkeys,
                    const float *grads, uint64_t *seq, ps_errbuf *eb) {
  size_t n = 0;
  for (size_t i = 0; i < nkeys; i++) n += s->rowof[i] >= 0;
  if (!n) return 0;
  uint64_t *k = (uint64_t *)keys;
  float *g = (float *)grads;
  if (n < nkeys) { /* keys not admitted are left out */
    k = malloc(n * sizeof *k);
    g = malloc(n * t->dim * sizeof *g);
    for (size_t i = 0, j = 0; k && g && i < nkeys; i++)
      if (s->rowof[i] >= 0) {
        k[j] = keys[i];
        memcpy(g + j++ * t->dim, grads + i * t->dim, t->dim * sizeof *g);
      }
  }
  int rc = k && g ? 0 : ps_errf(eb, PS_ENOMEM, "sparse push: out of memory");
  uint8_t h[LOG_HDR(64)];
  size_t nl = strlen(t->model);
  uint32_t u[3] = {t->id, t->dim, (uint32_t)n};
  h[0] = PSD_SPARSE_LOG_PUSH;
  h[1] = (uint8_t)nl;
  memcpy(h + 2, t->model, nl);
  memcpy(h + 2 + nl, u, sizeof u);
  struct iovec iov[3] = {{h, LOG_HDR(nl)}, {k, n * 8}, {g, n * t->dim * sizeof(float)}};
  if (!rc) rc = s->log_fn(s->log_arg, iov, 3, seq, eb);
  if (k != keys) free(k);
  if (g != grads) free(g);
  return rc;
}

/* rows_drop_new removes the rows a push created from row NROWS0 on (the
 * push failed before changing any): back to the table it found. */
static void rows_drop_new(sp_table *t, size_t nrows0) {
  if (t->nrows == nrows0) return;
  t->st.created -= t->nrows - nrows0;
  t->nrows = nrows0;
  t->st.rows_mem = nrows0;
  memset(t->index, 0, t->icap * sizeof *t->index);
  for (size_t r = 0; r < t->nrows; r++) index_put(t, r);
}

/* updates_stage computes the update of GRADS (N rows) for every key
 * whose s->rowof is a row (>= 0) or -2 (a row to create: from its
 * initial row, count 0), on copies in s->upd; -1 keys are left out.  A
 * row that would turn non-finite refuses the whole update (PS_EINVAL,
 * naming the key) with no row changed (invariant 4). */
static int updates_stage(psd_sparse *s, sp_table *t, const uint64_t *keys, size_t n,
                         const float *grads, ps_errbuf *eb) {
  for (size_t i = 0; i < n; i++) {
    float *u = s->upd + i * t->rowf;
    uint64_t count = 0;
    if (s->rowof[i] >= 0) {
      memcpy(u, row_data(t, (size_t)s->rowof[i]), t->rowf * sizeof(float));
      count = t->count[s->rowof[i]];
    } else if (s->rowof[i] == -2) {
      ps_init_row(u, t->init, t->scale, t->seed, t->id, keys[i], t->dim);
      psd_optim_init_slots(&t->optim, u + t->dim, t->dim);
    } else {
      continue;
    }
    psd_optim_apply(&t->optim, u, u + t->dim, grads + i * t->dim, t->dim, count + 1);
    if (!isfinite(psd_optim_absmax(u, t->rowf)))
      return ps_errf(eb, PS_EINVAL, "sparse push '%s'/%u: the update would make row %llu non-finite",
                     t->model, t->id, (unsigned long long)keys[i]);
  }
  return 0;
}

/* updates_create creates the rows updates_stage marked -2; PS_ENOMEM
 * with none left created. */
static int updates_create(psd_sparse *s, sp_table *t, const uint64_t *keys, size_t n,
                          ps_errbuf *eb) {
  size_t nrows0 = t->nrows;
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++)
    if (s->rowof[i] == -2) rc = create_row(t, keys[i], &s->rowof[i], eb);
  if (rc) rows_drop_new(t, nrows0);
  return rc;
}

/* admit_forget_new drops the admission counts of the N keys whose rows
 * (ROWOF) a push created (from row NROWS0 on): the rows admit them now. */
static void admit_forget_new(sp_table *t, const uint64_t *keys, size_t n, const int64_t *rowof,
                             size_t nrows0) {
  for (size_t i = 0; t->an && i < n; i++)
    if (rowof[i] >= (int64_t)nrows0) admit_forget(t, keys[i]);
}

/* updates_commit writes the staged rows of the N keys (s->rowof >= 0)
 * as the push of log seq SEQ. */
static void updates_commit(psd_sparse *s, sp_table *t, size_t n, uint64_t seq) {
  for (size_t i = 0; i < n; i++) {
    if (s->rowof[i] < 0) continue;
    size_t r = (size_t)s->rowof[i];
    memcpy(row_data(t, r), s->upd + i * t->rowf, t->rowf * sizeof(float));
    t->count[r]++;
    t->clock[r] = t->tick;
    t->rseq[r] = seq;
    t->flags[r] |= ROW_DIRTY;
  }
}

int psd_sparse_push(psd_sparse *s, const char *model, uint32_t table, const uint64_t *keys,
                    size_t nkeys, const float *grads, size_t nfloats, ps_errbuf *eb) {
  sp_table *t;
  int rc = request_check(s, model, table, keys, nkeys, nfloats, "push", &t, eb);
  if (!rc) rc = grads_finite(t, keys, grads, nkeys, eb);
  if (!rc && grow_to(&s->upd, &s->upd_cap, nkeys * t->rowf, sizeof *s->upd))
    rc = ps_errf(eb, PS_ENOMEM, "sparse push: out of memory");
  if (rc) return rc;
  t->tick++;
  if ((rc = find_rows(s, t, keys, nkeys, eb))) return evict_after_refusal(s, t, rc);
  /* a key admitted without a row is updated from its initial row; its
   * row is created only once every update checked out, so a refused
   * push materialises none */
  size_t nnew = 0;
  for (size_t i = 0; i < nkeys; i++)
    if (s->rowof[i] < 0 && admitted(s, t, keys[i])) s->rowof[i] = -2, nnew++;
  /* every refusal from here on may follow rows read back for it */
  if ((rc = too_many_new(s, t, "push", nnew, eb))) return evict_after_refusal(s, t, rc);
  if (nnew && rows_reserve(t, nnew))
    return evict_after_refusal(
        s, t, ps_errf(eb, PS_ENOMEM, "sparse push: out of memory for %zu new rows", nnew));
  if ((rc = updates_stage(s, t, keys, nkeys, grads, eb))) return evict_after_refusal(s, t, rc);
  size_t nrows0 = t->nrows;
  if ((rc = updates_create(s, t, keys, nkeys, eb))) return evict_after_refusal(s, t, rc);
  uint64_t seq = 0;
  if (s->log_fn && (rc = log_push(s, t, keys, nkeys, grads, &seq, eb))) {
    rows_drop_new(t, nrows0);
    return evict_after_refusal(s, t, rc);
  }
  for (size_t i = 0; i < nkeys; i++) t->st.dropped_grads += s->rowof[i] < 0;
  updates_commit(s, t, nkeys, seq);
  admit_forget_new(t, keys, nkeys, s->rowof, nrows0);
  return evict(s, t, eb);
}

void psd_sparse_set_log(psd_sparse *s, psd_sparse_log_fn *fn, void *arg) {
  s->log_fn = fn;
  s->log_arg = arg;
}

void psd_sparse_set_durable(psd_sparse *s, psd_sparse_durable_fn *fn, void *arg) {
  pthread_mutex_lock(&s->mu); /* the writer thread reads it */
  s->durable_fn = fn;
  s->durable_arg = arg;
  pthread_mutex_unlock(&s->mu);
}

/* rec_u32 reads one of a record's u32s (host order, as the dense store's
 * records). */
static uint32_t rec_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* replay_refuse makes EB's message the reason record SEQ does not
 * decode or apply (HOW): PS_EIO. */
static int replay_refuse(uint64_t seq, const char *how, ps_errbuf *eb) {
  char why[sizeof eb->msg];
  memcpy(why, eb->msg, sizeof why);
  return ps_errf(eb, PS_EIO, "redo log record %llu does not %s: %s", (unsigned long long)seq, how,
                 why);
}

int psd_sparse_replay(psd_sparse *s, uint64_t seq, const uint8_t *rec, size_t len, ps_errbuf *eb) {
  if (len < LOG_HDR(0) || rec[0] != PSD_SPARSE_LOG_PUSH || len < LOG_HDR(rec[1]))
    return ps_errf(eb, PS_EIO, "redo log record %llu (sparse push) does not decode",
                   (unsigned long long)seq);
  size_t nl = rec[1];
  char model[256];
  memcpy(model, rec + 2, nl);
  model[nl] = '\0';
  const uint8_t *p = rec + 2 + nl;
  uint32_t table = rec_u32(p), dim = rec_u32(p + 4), n = rec_u32(p + 8);
  sp_table *t = table_find(s, model, table);
  if (!t)
    return ps_errf(eb, PS_EIO, "redo log record %llu is a sparse push to table %u of model '%s', "
                   "which '%s' does not hold; refusing to start", (unsigned long long)seq, table,
                   model, s->dir);
  if (dim != t->dim || (uint64_t)n * (8 + (uint64_t)dim * 4) != len - LOG_HDR(nl))
    return ps_errf(eb, PS_EIO, "redo log record %llu (sparse push to '%s'/%u) does not decode",
                   (unsigned long long)seq, model, table);
  uint64_t *keys = malloc(n ? (size_t)n * 8 : 1);
  float *g = malloc(n ? (size_t)n * dim * 4 : 1);
  int rc = keys && g ? 0 : ps_errf(eb, PS_ENOMEM, "out of memory replaying the redo log");
  if (!rc) {
    memcpy(keys, p + 12, (size_t)n * 8);
    memcpy(g, p + 12 + (size_t)n * 8, (size_t)n * dim * 4);
    rc = request_check(s, model, table, keys, n, (size_t)n * dim, "push", &t, eb);
    if (rc == PS_EINVAL) rc = replay_refuse(seq, "decode", eb); /* a key twice: no push logs that */
  }
  if (!rc && grow_to(&s->upd, &s->upd_cap, (size_t)n * t->rowf, sizeof *s->upd))
    rc = ps_errf(eb, PS_ENOMEM, "out of memory replaying the redo log");
  /* the push checked its gradients and updates before it logged them:
   * a record that fails those checks is not one a push wrote */
  if (!rc && (rc = grads_finite(t, keys, g, n, eb)) == 0) {
    t->tick++;
    rc = find_rows(s, t, keys, n, eb);
    /* the record holds only the keys whose rows the push changed: those
     * without a row now are created as the push found them; a row whose
     * seq is the record's or later holds this push already */
    for (size_t i = 0; i < n && !rc; i++)
      if (s->rowof[i] < 0) s->rowof[i] = -2;
      else if (t->rseq[s->rowof[i]] >= seq) s->rowof[i] = -1;
    if (!rc) rc = updates_stage(s, t, keys, n, g, eb);
  }
  if (rc == PS_EINVAL) rc = replay_refuse(seq, "apply", eb);
  size_t nrows0 = t->nrows;
  if (!rc) rc = updates_create(s, t, keys, n, eb);
  if (!rc) updates_commit(s, t, n, seq);
  if (!rc) admit_forget_new(t, keys, n, s->rowof, nrows0);
  free(keys);
  free(g);
  return rc ? rc : evict(s, t, eb);
}

/* write_seq puts the "w" record (the log position every row in memory
 * and on disk holds) into the open write buffer. */
static int write_seq(psd_sparse *s, uint64_t seq, ps_errbuf *eb) {
  if (!s->open && !(s->open = calloc(1, sizeof *s->open)))
    return ps_errf(eb, PS_ENOMEM, "sparse rows: out of memory");
  s->open->has_w = 1;
  s->open->w = seq;
  if (seq > s->open->max_seq) s->open->max_seq = seq;
  s->wseq = seq;
  s->has_wseq = 1;
  return 0;
}

int psd_sparse_log_start(psd_sparse *s, uint64_t fallback, uint64_t *from, ps_errbuf *eb) {
  if (!s->has_wseq) {
    int rc = write_seq(s, fallback, eb);
    if (!rc) rc = buf_sync(s, eb);
    if (rc) return rc;
  }
  *from = s->wseq;
  return 0;
}

int psd_sparse_snapshot(psd_sparse *s, uint64_t log_seq, int *persist, ps_errbuf *eb) {
  *persist = 0;
  /* after a failed write the buffer that failed goes first: while the
   * disk still refuses it, the changed rows stay in memory rather than
   * being copied into the open buffer once more at every snapshot; once
   * it is in, the tables the refusal left over their budget are brought
   * back under it (invariant 3) */
  if (spill_refused(s)) {
    int rc = buf_retry(s, eb);
    if (rc) {
      s->unpersisted = 1;
      return rc;
    }
    for (size_t i = 0; i < s->ntables && !rc; i++) rc = evict(s, s->tables[i], eb);
    if (rc) return rc;
  }
  for (size_t i = 0; i < s->ntables; i++) {
    sp_table *t = s->tables[i];
    int dirty = 0;
    for (size_t r = 0; r < t->nrows && !dirty; r++)
      dirty = (t->flags[r] & ROW_DIRTY) != 0;
    int rc = dirty ? write_rows(s, t, NULL, eb) : 0;
    if (rc) return rc;
  }
  if (log_seq != s->wseq || !s->has_wseq) {
    int rc = write_seq(s, log_seq, eb);
    if (rc) return rc;
  }
  int rc = buf_seal(s, eb);
  if (rc) return rc;
  pthread_mutex_lock(&s->mu);
  s->persist_gen = s->gen;
  *persist = buf_pending(s) > 0 || s->unpersisted;
  pthread_mutex_unlock(&s->mu);
  s->unpersisted = 0;
  return 0;
}

int psd_sparse_persist(psd_sparse *s, ps_errbuf *eb) {
  pthread_mutex_lock(&s->mu);
  uint64_t gen = s->persist_gen;
  pthread_mutex_unlock(&s->mu);
  return buf_wait(s, gen, eb);
}

void psd_sparse_persist_failed(psd_sparse *s) { s->unpersisted = 1; }

int psd_sparse_row(psd_sparse *s, const char *model, uint32_t table, uint64_t key, float *value,
                   float *slots, uint64_t *count, uint64_t *clock, int *in_memory, ps_errbuf *eb) {
  sp_table *t = table_find(s, model, table);
  if (!t) return ps_errf(eb, PS_ENOENT, "model '%s' has no sparse table %u", model, table);
  int64_t r = index_find(t, key);
  const char *v = r < 0 ? buf_lookup(s, t, key) : NULL;
  char *got = NULL;
  if (r < 0 && !v) {
    char k[KEY_MAX_LEN], *err = NULL;
    size_t vlen = 0;
    if (!s->db) return ps_errf(eb, PS_EIO, "sparse rows '%s': closed after a failed reopen", s->dir);
    got = rocksdb_get(s->db, s->ro, k, row_key(t, key, k), &vlen, &err);
    if (err) {
      char what[160];
      snprintf(what, sizeof what, "reading row %llu of '%s'/%u", (unsigned long long)key,
               t->model, t->id);
      return rdb_err(s, err, what, eb);
    }
    if (!got) return ps_errf(eb, PS_ENOENT, "sparse table '%s'/%u has no row %llu", model, table,
                             (unsigned long long)key);
    if (!val_ok(t, vlen)) {
      rocksdb_free(got);
      return ps_errf(eb, PS_EIO, "sparse rows '%s': row %llu has %zu bytes", s->dir,
                     (unsigned long long)key, vlen);
    }
    v = got;
  }
  const float *d = r >= 0 ? row_data(t, (size_t)r) : NULL;
  if (value) memcpy(value, d ? d : (const float *)(v + VAL_HDR), t->dim * sizeof(float));
  if (slots && t->nslots)
    memcpy(slots, d ? d + t->dim : (const float *)(v + VAL_HDR) + t->dim,
           (size_t)t->dim * t->nslots * sizeof(float));
  if (count) {
    if (d) *count = t->count[r];
    else memcpy(count, v, 8);
  }
  if (clock) {
    if (d) *clock = t->clock[r];
    else memcpy(clock, v + 8, 8);
  }
  if (in_memory) *in_memory = d != NULL;
  rocksdb_free(got);
  return 0;
}

/* export_held (loop) collects in s->ka the keys of T after AFTER (every
 * key when !RESUME) that memory or a write buffer holds, sorted, each
 * once; *M receives their count.  For an export while the disk refuses
 * the buffers: those rows are not in RocksDB's files. */
static int export_held(psd_sparse *s, sp_table *t, int resume, uint64_t after, size_t *m,
                       ps_errbuf *eb) {
  size_t n = t->nrows;
  if (s->open) n += s->open->n;
  for (const sp_buf *b = s->sealed; b; b = b->next) n += b->n;
  if (grow_to(&s->ka, &s->ka_cap, n ? n : 1, sizeof *s->ka))
    return ps_errf(eb, PS_ENOMEM, "sparse export: out of memory");
  key_at *ka = s->ka;
  n = 0;
  for (size_t r = 0; r < t->nrows; r++)
    if (!resume || t->keys[r] > after) ka[n++] = (key_at){t->keys[r], 0};
  for (const sp_buf *b = s->open; b; b = b == s->open ? s->sealed : b->next)
    for (size_t i = 0; i < b->n; i++)
      if (b->ent[i].t == t && (!resume || b->ent[i].key > after))
        ka[n++] = (key_at){b->ent[i].key, 0};
  qsort(ka, n, sizeof *ka, cmp_key_at);
  size_t u = 0;
  for (size_t i = 0; i < n; i++)
    if (!u || ka[i].key != ka[u - 1].key) ka[u++] = ka[i];
  *m = u;
  return 0;
}

/* export_value: the newest copy of held key KEY of T (memory, else the
 * newest write buffer's). */
static const float *export_value(const psd_sparse *s, const sp_table *t, uint64_t key) {
  int64_t r = index_find(t, key);
  if (r >= 0) return row_data(t, (size_t)r);
  return (const float *)(buf_lookup(s, t, key) + VAL_HDR);
}

int psd_sparse_export(psd_sparse *s, const char *model, uint32_t table, int resume, uint64_t after,
                      size_t limit, uint64_t *keys, float *rows, size_t *n, int *done,
                      ps_errbuf *eb) {
  *n = 0;
  *done = 1;
  sp_table *t = table_find(s, model, table);
  if (!t) return ps_errf(eb, PS_ENOENT, "model '%s' has no sparse table %u", model, table);
  if (resume && after == UINT64_MAX) return 0;
  /* RocksDB's files hold every row once the buffers are in; while the
   * disk refuses them, the rows in memory and in the buffers are read
   * beside the files (held: newer than the files' copies) */
  size_t held = 0, h = 0;
  int rc = 0;
  if (!spill_refused(s)) {
    rc = write_rows(s, t, NULL, eb); /* rows not on disk yet, and changed ones */
    if (!rc) rc = buf_sync(s, eb);
    if (rc == PS_ENOMEM) return rc;
  }
  if ((rc || spill_refused(s)) && (rc = export_held(s, t, resume, after, &held, eb)))
    return rc;
  char k[KEY_MAX_LEN];
  size_t kn = row_key(t, resume ? after + 1 : 0, k), pre = kn - 8;
  if (!s->db) return ps_errf(eb, PS_EIO, "sparse rows '%s': closed after a failed reopen", s->dir);
  rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ro);
  rocksdb_iter_seek(it, k, kn);
  for (;;) {
    size_t klen = 0, vlen;
    const char *ik = rocksdb_iter_valid(it) ? rocksdb_iter_key(it, &klen) : NULL;
    if (ik && (klen != kn || memcmp(ik, k, pre))) ik = NULL; /* past the table */
    uint64_t key = 0;
    for (int i = 0; ik && i < 8; i++) key = key << 8 | (unsigned char)ik[pre + i];
    if (!ik && h == held) break;
    if (*n == limit) {
      *done = 0;
      break;
    }
    const float *v;
    if (h < held && (!ik || s->ka[h].key <= key)) { /* held: newer than the files' copy */
      if (ik && s->ka[h].key == key) rocksdb_iter_next(it);
      key = s->ka[h++].key;
      v = export_value(s, t, key);
    } else {
      const char *val = rocksdb_iter_value(it, &vlen);
      if (!val_ok(t, vlen)) {
        rc = ps_errf(eb, PS_EIO, "sparse rows '%s': a row of '%s'/%u has %zu bytes", s->dir,
                     t->model, t->id, vlen);
        break;
      }
      v = (const float *)(val + VAL_HDR);
      rocksdb_iter_next(it);
    }
    keys[*n] = key;
    memcpy(rows + *n * t->dim, v, t->dim * sizeof(float));
    (*n)++;
  }
  char *err = NULL;
  rocksdb_iter_get_error(it, &err);
  rocksdb_iter_destroy(it);
  if (err && !rc) {
    char what[160];
    snprintf(what, sizeof what, "exporting the rows of '%s'/%u", t->model, t->id);
    rc = rdb_err(s, err, what, eb);
  }
  else if (err) rocksdb_free(err);
  return rc;
}

size_t psd_sparse_ntables(const psd_sparse *s) { return s->ntables; }

void psd_sparse_table_at(const psd_sparse *s, size_t i, const char **model, uint32_t *table) {
  *model = s->tables[i]->model;
  *table = s->tables[i]->id;
}

int psd_sparse_stats_get(psd_sparse *s, const char *model, uint32_t table, psd_sparse_stats *st) {
  sp_table *t = table_find(s, model, table);
  if (!t) return PS_ENOENT;
  *st = t->st;
  st->admit_bytes = t->acap * (sizeof *t->akeys + sizeof *t->aseen);
  uint64_t v = 0;
  if (s->db && rocksdb_property_int(s->db, "rocksdb.total-sst-files-size", &v) == 0)
    st->disk_bytes = v;
  return 0;
}

int psd_sparse_flush(psd_sparse *s, uint64_t log_seq, ps_errbuf *eb) {
  int persist;
  int rc = psd_sparse_snapshot(s, log_seq, &persist, eb);
  if (!rc) rc = psd_sparse_persist(s, eb);
  if (rc) psd_sparse_persist_failed(s);
  else buf_tidy(s); /* every row is in RocksDB's files: read from there */
  return rc;
}
