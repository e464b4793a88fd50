/* psd_sparse: one shard's sparse (embedding) tables: key -> row, hot rows
 * in memory, cold rows in RocksDB.
 *
 * A table belongs to one embedding parameter (model, table = the
 * parameter's index) and holds rows of DIM floats keyed by 64-bit ids.
 * Each row in memory is: its values, its optimizer slots (psd_optim
 * layout with N = DIM), its update count and the clock it was last
 * touched (the table's request counter: every pull or push of a table is
 * one tick).
 *
 * Invariants:
 *  1. A row is created on its first pull (or first push) from the
 *     deterministic initializer ps_init_row(seed, table, key): the same
 *     key has the same starting row on any shard count.  With admission
 *     (admit_after = k > 1) a key is materialised only on its k-th pull;
 *     until then a pull reads its initial value and a push of it is
 *     counted (dropped_grads) but not stored.  A key's count (in memory
 *     only) is dropped once it has its row: the map holds pending keys.
 *  2. Optimizers work per row with per-row step counts: a row's t is its
 *     own update count.  Adam is "lazy": a row's moments decay only when
 *     the row is updated, and its bias correction uses the row's own t
 *     (1 - b^t with t = that row's updates), so a rarely seen row gets
 *     the large correction of a young parameter, never a global step's.
 *  3. A table with memory_rows = M > 0 keeps at most M rows in memory
 *     after every request (a single request may bring up to its own key
 *     count in first): when over M it evicts the rows touched longest ago
 *     down to M - M/8 (a batch of evictions per M/8 new rows, not one per
 *     row).  An evicted row that changed since it was last written goes
 *     to RocksDB first, through the write buffers (invariant 7; a
 *     snapshot or the redo log makes rows durable, not each eviction); a
 *     miss reads the request's missing keys back from the write buffers
 *     (a row whose file is not in yet, or that was written lately: no
 *     disk read), then the rest with one MultiGet; it reads nothing while
 *     every row of the table on disk is also in memory (none was on disk
 *     when the table was added and none was evicted since: a miss is a
 *     new key).  A row read back is
 *     bit-identical to the row evicted (values, slots, update count,
 *     clock).
 *     Exception: while the disk refuses the write buffers (one failed
 *     and no seal has written it since: a full disk), nothing is evicted
 *     and the table may hold more than M rows; requests are served all
 *     the same.  The next snapshot writes the failed buffer first; once
 *     it is in, every table is brought back to at most M rows.
 *  4. A request that fails validation (unknown table, key count and
 *     payload that disagree, duplicate keys, more keys without a row than
 *     max_new_rows, NaN/Inf gradients, an update
 *     that would leave a value or slot non-finite, a log that fails)
 *     changes no row and creates none (a push updates copies, from the
 *     initial row for a key without one, and creates rows only once every
 *     update checked out).  Rows it read back from disk stay in memory
 *     unchanged, as many as invariant 3 keeps (a refused request evicts
 *     as a served one does).
 *  5. psd_sparse_flush writes every changed row in memory and waits
 *     until every write buffer is in RocksDB's files, so that after it
 *     returns a restart with the same directory reads every row back as
 *     it was.
 *  6. Durability (the shard's durability mode, as for dense chunks):
 *     psd_sparse_snapshot (loop) writes every changed row and the "w"
 *     record (the redo log position every row holds) into the open write
 *     buffer and seals it, and psd_sparse_persist (any thread) waits
 *     until that buffer and every one sealed before it are in RocksDB's
 *     files.  Buffers go in in the order they were sealed, so once a
 *     persist that began after a snapshot returned, every push accepted
 *     before the snapshot is on disk (periodic: a crash loses at most
 *     what came after it; rows in buffers not yet in are lost with the
 *     process, as RocksDB's memtable was).  Under
 *     sync a push hands a record (psd_sparse_set_log: the keys whose rows
 *     it changes and their gradients, kind PSD_SPARSE_LOG_PUSH) to the
 *     log after every check and before any row changes; each row stores
 *     the seq of the last push applied to it, so a row that reached the
 *     files early (an eviction's buffer) is not given a
 *     push twice by psd_sparse_replay, which applies a record only to the
 *     rows older than it and creates the rows it names that are missing.
 *     Write-ahead: the writer ingests a buffer only once the durable hook
 *     (psd_sparse_set_durable) says the log has synced the newest seq
 *     its rows hold, so no row on disk is ahead of the log; a refusal
 *     fails the buffer (retried at the next seal, its rows still served).
 *     Clocks (last touched) and admission counts are not logged: after a
 *     replay a row's clock is the replay's, and keys pulled but not yet
 *     admitted start their count again.
 *  7. Write buffers: rows given to RocksDB do not go through its
 *     memtable (a skiplist: a random insert or lookup cost about a
 *     microsecond, most of a budgeted shard's time) but into psd's open
 *     write buffer, a hash of (table, key) -> stored row.  Evictions
 *     seal it at 16 MiB; a snapshot, an export or a flush gives it all
 *     its rows first and seals it once (a seal may wait for the writer:
 *     once per snapshot, not once per 16 MiB of a large one).  A writer
 *     thread writes a sealed buffer, in key order, as one SST file (synced)
 *     that RocksDB ingests whole (no memtable, no WAL).  A sealed buffer
 *     serves its rows until its file is in, and after that as long as
 *     all buffers (the open one included) hold at most 32 MiB: the
 *     oldest written ones go first; one sealed buffer at most waits for
 *     the writer (sealing another waits on the loop).  So the buffers
 *     hold at most 32 MiB plus the rows of one snapshot (every changed
 *     row in memory), as RocksDB's two 16 MiB write buffers did.
 *     A buffer that fails (a full disk) stops the ones after it and
 *     fails the persist that waits for it (no request: invariant 3's
 *     exception), and is tried again at the next snapshot, alone (the
 *     changed rows are copied in only once it is in); its rows stay
 *     readable meanwhile.  When RocksDB's ingest itself failed (its
 *     MANIFEST write met the full disk), its handle may refuse every
 *     later ingest, room or not: the buffer is written again only through
 *     a reopened handle (as the dense store's, psd_store.c invariant 8);
 *     while the reopen for writing fails, rows are read through a
 *     read-only one.
 *
 * Stored row: update count (u64), clock (u64), DIM x (1 + slots) floats,
 * seq (u64), host byte order; rows written before the seq existed are
 * read with seq 0.  "w": u64 log position.
 *
 * RocksDB: its own instance in o->dir (beside the dense store's, so that
 * neither's format or flush cycle changes the other's), rows in ingested
 * SST files (invariant 7; the memtable is left empty), bloom filters
 * (most misses of a large table are new keys), a hash index in each data
 * block, no compression; SstFileWriter drops what it writes from the page
 * cache, so a file is read back in (POSIX_FADV_WILLNEED) before it is
 * ingested.  Rows come back with one batched MultiGet in key order.
 * Key: 'r' model '\0' table (u32 BE) key (u64 BE); value: see "Stored
 * row" above.
 *
 * Not thread-safe: one thread (psd's loop) calls everything, except
 * psd_sparse_persist, which may run on another thread meanwhile.  The
 * writer thread (invariant 7) is psd_sparse's own. */
#ifndef PSD_SPARSE_H
#define PSD_SPARSE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ps.pb-c.h"
#include "ps_error.h"

typedef struct psd_sparse psd_sparse;

typedef struct psd_sparse_opts {
  const char *dir;         /* RocksDB directory of the rows (created; its parent must exist) */
  uint64_t memory_rows;    /* per table: rows kept in memory; 0: no limit (YAML sparse.memory_rows) */
  uint32_t admit_after;    /* pulls before a key gets a row; 0 and 1: at once (sparse.admit_after) */
  uint64_t max_new_rows;   /* keys without a row one request may name; 0: no limit (sparse.max_new_rows) */
} psd_sparse_opts;

typedef struct psd_sparse_table_opts {
  const char *model;                 /* copied */
  uint32_t table;                    /* the parameter's index in the model */
  uint32_t dim;                      /* 1..65536 */
  const char *init;                  /* ps_init_fill kind ("" : "zeros"), copied */
  float scale;
  uint64_t seed;                     /* the model's seed */
  const Ps__OptimizerSpec *optim;    /* borrowed for the call */
} psd_sparse_table_opts;

/* Counters of one table (since it was added; not persisted). */
typedef struct psd_sparse_stats {
  uint64_t rows_mem;       /* rows in memory now */
  uint64_t hits;           /* keys of pulls and pushes found in memory */
  uint64_t misses;         /* keys not in memory: read back, created, or not admitted */
  uint64_t disk_reads;     /* rows read back from RocksDB */
  uint64_t buffer_reads;   /* rows read back from the write buffers (their file not in yet) */
  uint64_t disk_read_bytes;/* their floats' bytes (values and slots; not buffer_reads') */
  uint64_t created;        /* rows materialised from the initializer */
  uint64_t evictions;      /* rows dropped from memory */
  uint64_t disk_writes;    /* rows given to RocksDB (evictions of changed rows, snapshots) */
  uint64_t pending;        /* keys pulled but not admitted yet */
  uint64_t admit_bytes;    /* memory of their admission counts (0 once none is pending) */
  uint64_t dropped_grads;  /* gradient rows pushed for keys not admitted */
  uint64_t disk_bytes;     /* RocksDB's SST files, the whole instance */
} psd_sparse_stats;

/* psd_sparse_open opens (or creates) the RocksDB at o->dir.  PS_EINVAL
 * for bad options, PS_EIO / PS_ENOSPC / PS_ELOCKED from RocksDB (message
 * in EB with the directory).  Close with psd_sparse_close. */
int psd_sparse_open(psd_sparse **out, const psd_sparse_opts *o, ps_errbuf *eb);

/* psd_sparse_close waits for the write buffers given to RocksDB to go in
 * (as RocksDB's close flushed its memtable), stops the writer, frees every
 * table and closes RocksDB; rows changed in memory are not written (call
 * psd_sparse_flush first).  NULL is fine. */
void psd_sparse_close(psd_sparse *s);

/* psd_sparse_add_table registers table T (its rows already on disk are
 * read back as they are needed; when RocksDB fails the look for them, a
 * damaged file, they count as on disk: misses read them back, and fail,
 * rather than create fresh rows over them).  The same table again with
 * the same dim and optimizer: 0; different: PS_EEXIST.  PS_EINVAL for a bad dim,
 * initializer or optimizer. */
int psd_sparse_add_table(psd_sparse *s, const psd_sparse_table_opts *t, ps_errbuf *eb);

/* psd_sparse_pull writes the rows of the NKEYS distinct KEYS (borrowed)
 * to ROWS (NFLOATS = nkeys x dim floats, in key order), creating,
 * admitting or reading back rows as invariants 1 and 3 say.  PS_ENOENT
 * for an unknown table; PS_EINVAL for NFLOATS != nkeys x dim or a key
 * given twice; PS_ETOOBIG when more than max_new_rows of the keys have
 * no row (in memory or on disk), none created; PS_EIO from RocksDB (a
 * row that cannot be read back: the message names the table and the
 * key; the rows read back before it are kept as invariant 3 says). */
int psd_sparse_pull(psd_sparse *s, const char *model, uint32_t table, const uint64_t *keys,
                    size_t nkeys, float *rows, size_t nfloats, ps_errbuf *eb);

/* psd_sparse_push applies GRADS (NFLOATS = nkeys x dim floats, row i the
 * gradient of KEYS[i]) with the table's optimizer, row by row (invariant
 * 2).  Errors as psd_sparse_pull (PS_ETOOBIG counting the admitted keys
 * without a row), plus PS_EINVAL for a NaN or infinite
 * gradient or an update that would make a row non-finite; nothing changes
 * then (invariant 4). */
int psd_sparse_push(psd_sparse *s, const char *model, uint32_t table, const uint64_t *keys,
                    size_t nkeys, const float *grads, size_t nfloats, ps_errbuf *eb);

/* psd_sparse_row reads row KEY without loading it or touching its clock:
 * from memory, else from RocksDB.  VALUE receives dim floats, SLOTS dim x
 * slots floats, *COUNT the update count, *CLOCK the last-touched clock,
 * *IN_MEMORY whether it is in memory (each may be NULL).  PS_ENOENT when
 * the table is unknown or the key has no row (never materialised).  For
 * export and tests. */
int psd_sparse_row(psd_sparse *s, const char *model, uint32_t table, uint64_t key, float *value,
                   float *slots, uint64_t *count, uint64_t *clock, int *in_memory, ps_errbuf *eb);

/* psd_sparse_dim returns the row width of a table and its optimizer's
 * slots per element (*SLOTS may be NULL); PS_ENOENT when unknown. */
int psd_sparse_dim(const psd_sparse *s, const char *model, uint32_t table, uint32_t *dim,
                   unsigned *slots);

/* psd_sparse_ntables returns how many tables S has; psd_sparse_table_at
 * names table I (*MODEL borrowed until S closes). */
size_t psd_sparse_ntables(const psd_sparse *s);
void psd_sparse_table_at(const psd_sparse *s, size_t i, const char **model, uint32_t *table);

/* psd_sparse_export writes the rows of a table changed in memory to
 * RocksDB (as an eviction would) and reads up to LIMIT rows in key order
 * after key AFTER (from the first when !RESUME): their keys to KEYS and
 * values (dim floats each, no slots) to ROWS, the count to *N; *DONE
 * says no row follows.  While the disk refuses the write buffers
 * (invariant 7) the rows in memory and in the buffers are read beside
 * RocksDB's files instead.  PS_ENOENT for an unknown table, PS_ENOMEM,
 * PS_EIO from RocksDB (a stored row of the wrong size included). */
int psd_sparse_export(psd_sparse *s, const char *model, uint32_t table, int resume, uint64_t after,
                      size_t limit, uint64_t *keys, float *rows, size_t *n, int *done,
                      ps_errbuf *eb);

/* psd_sparse_hold_writer: for tests, while HOLD the writer thread
 * starts writing no sealed buffer (their rows stay in memory, served
 * from the buffers); 0 lets it go on.  A seal that must wait for the
 * writer then waits until it is let go. */
void psd_sparse_hold_writer(psd_sparse *s, int hold);

/* psd_sparse_stats fills *ST for a table; PS_ENOENT when unknown. */
int psd_sparse_stats_get(psd_sparse *s, const char *model, uint32_t table, psd_sparse_stats *st);

/* psd_sparse_flush writes every changed row in memory and LOG_SEQ as the
 * log position, and waits until every write buffer is in RocksDB's files
 * (invariant 5: psd_sparse_snapshot then psd_sparse_persist); later
 * misses read from the files.  PS_EIO / PS_ENOSPC. */
int psd_sparse_flush(psd_sparse *s, uint64_t log_seq, ps_errbuf *eb);

/* Durability (invariant 6). */

/* The redo log hook: hands the record (the pieces of IOV) to the log and
 * writes its seq to *SEQ; 0 or a PS_E* code (the push then fails with
 * nothing changed).  Same shape as psd_store_log_fn. */
typedef int psd_sparse_log_fn(void *arg, const struct iovec *iov, int niov, uint64_t *seq,
                              ps_errbuf *eb);

/* The first byte of a sparse push's log record (a dense push's is 1).
 * Record: u8 kind, u8 model name length, name, u32 table, u32 dim, u32
 * nkeys, u64 keys[nkeys], float grads[nkeys x dim] (host order). */
#define PSD_SPARSE_LOG_PUSH 2

/* psd_sparse_set_log installs FN (NULL: no log). */
void psd_sparse_set_log(psd_sparse *s, psd_sparse_log_fn *fn, void *arg);

/* The durable hook: returns 0 once the redo log has synced every record
 * up to SEQ, or a PS_E* code (the log fails or stopped).  The writer
 * thread calls it before a write buffer's file goes into RocksDB, with
 * the newest seq the buffer's rows hold: no row on disk is ahead of the
 * log (a crash that lost a record would otherwise leave the row holding
 * it, and replay would skip the record a restarted log gives that seq
 * again).  Same shape as psd_flush_durable_fn. */
typedef int psd_sparse_durable_fn(void *arg, uint64_t seq, ps_errbuf *eb);

/* psd_sparse_set_durable installs FN (NULL: none), before any push. */
void psd_sparse_set_durable(psd_sparse *s, psd_sparse_durable_fn *fn, void *arg);

/* psd_sparse_log_start: *FROM receives the log position the rows on disk
 * hold (the "w" record); a directory without one (new, or from before
 * the rows were logged, when no log record was a sparse push) records
 * FALLBACK (the dense snapshot's position) first, persisted.  PS_EIO. */
int psd_sparse_log_start(psd_sparse *s, uint64_t fallback, uint64_t *from, ps_errbuf *eb);

/* psd_sparse_replay applies record REC (LEN bytes, kind
 * PSD_SPARSE_LOG_PUSH) of seq SEQ, row by row, to the rows older than
 * it.  PS_EIO when it does not decode (a key twice included), names a
 * table S does not hold, or holds what no push logs (a gradient that is
 * not finite, an update that would make a row non-finite); no row
 * changes then. */
int psd_sparse_replay(psd_sparse *s, uint64_t seq, const uint8_t *rec, size_t len, ps_errbuf *eb);

/* psd_sparse_snapshot writes every changed row and LOG_SEQ (when it
 * changed) into the open write buffer and seals it (invariant 7);
 * *PERSIST says whether a buffer is not in RocksDB's files yet or the
 * last persist failed (call psd_sparse_persist then, and
 * psd_sparse_persist_failed if it fails).  PS_ENOMEM, or the error of
 * an older buffer that failed again (tried alone first: the changed
 * rows stay in memory, the next snapshot writes them). */
int psd_sparse_snapshot(psd_sparse *s, uint64_t log_seq, int *persist, ps_errbuf *eb);
int psd_sparse_persist(psd_sparse *s, ps_errbuf *eb);
void psd_sparse_persist_failed(psd_sparse *s);

#endif
