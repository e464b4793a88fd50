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
 *     counted (dropped_grads) but not stored.
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
 *     to RocksDB first, in one WriteBatch without the WAL (the flush, a
 *     snapshot or the redo log makes rows durable, not each eviction); a
 *     miss reads the batch's missing keys back with one MultiGet.  A row
 *     read back is bit-identical to the row evicted (values, slots,
 *     update count, clock).
 *  4. A request that fails validation (unknown table, key count and
 *     payload that disagree, duplicate keys, NaN/Inf gradients, an update
 *     that would leave a value or slot non-finite) changes no row.  Rows
 *     it read back from disk stay in memory unchanged.
 *  5. psd_sparse_flush writes every changed row in memory and flushes
 *     RocksDB's memtables, so that after it returns a restart with the
 *     same directory reads every row back as it was.
 *
 * RocksDB: its own instance in o->dir (beside the dense store's, so that
 * neither's format or flush cycle changes the other's), 16 MiB write
 * buffers x 2, bloom filters (most misses of a large table are new keys),
 * no compression.  Key: 'r' model '\0' table (u32 BE) key (u64 BE);
 * value: update count (u64), clock (u64), DIM x (1 + slots) floats, all
 * host byte order.
 *
 * Not thread-safe: one thread (psd's loop) calls everything. */
#ifndef PSD_SPARSE_H
#define PSD_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#include "ps.pb-c.h"
#include "ps_error.h"

typedef struct psd_sparse psd_sparse;

typedef struct psd_sparse_opts {
  const char *dir;         /* RocksDB directory of the rows (created; its parent must exist) */
  uint64_t memory_rows;    /* per table: rows kept in memory; 0: no limit (YAML sparse.memory_rows) */
  uint32_t admit_after;    /* pulls before a key gets a row; 0 and 1: at once (sparse.admit_after) */
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
  uint64_t disk_read_bytes;/* their value bytes */
  uint64_t created;        /* rows materialised from the initializer */
  uint64_t evictions;      /* rows dropped from memory */
  uint64_t disk_writes;    /* rows written (evictions of changed rows, flushes) */
  uint64_t pending;        /* keys pulled but not admitted yet */
  uint64_t dropped_grads;  /* gradient rows pushed for keys not admitted */
  uint64_t disk_bytes;     /* RocksDB's SST files, the whole instance */
} psd_sparse_stats;

/* psd_sparse_open opens (or creates) the RocksDB at o->dir.  PS_EINVAL
 * for bad options, PS_EIO / PS_ENOSPC / PS_ELOCKED from RocksDB (message
 * in EB with the directory).  Close with psd_sparse_close. */
int psd_sparse_open(psd_sparse **out, const psd_sparse_opts *o, ps_errbuf *eb);

/* psd_sparse_close frees every table and closes RocksDB without flushing
 * (call psd_sparse_flush first).  NULL is fine. */
void psd_sparse_close(psd_sparse *s);

/* psd_sparse_add_table registers table T (its rows already on disk are
 * read back as they are needed).  The same table again with the same dim
 * and optimizer: 0; different: PS_EEXIST.  PS_EINVAL for a bad dim,
 * initializer or optimizer. */
int psd_sparse_add_table(psd_sparse *s, const psd_sparse_table_opts *t, ps_errbuf *eb);

/* psd_sparse_pull writes the rows of the NKEYS distinct KEYS (borrowed)
 * to ROWS (NFLOATS = nkeys x dim floats, in key order), creating,
 * admitting or reading back rows as invariants 1 and 3 say.  PS_ENOENT
 * for an unknown table; PS_EINVAL for NFLOATS != nkeys x dim or a key
 * given twice; PS_EIO from RocksDB. */
int psd_sparse_pull(psd_sparse *s, const char *model, uint32_t table, const uint64_t *keys,
                    size_t nkeys, float *rows, size_t nfloats, ps_errbuf *eb);

/* psd_sparse_push applies GRADS (NFLOATS = nkeys x dim floats, row i the
 * gradient of KEYS[i]) with the table's optimizer, row by row (invariant
 * 2).  Errors as psd_sparse_pull, plus PS_EINVAL for a NaN or infinite
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

/* psd_sparse_stats fills *ST for a table; PS_ENOENT when unknown. */
int psd_sparse_stats_get(psd_sparse *s, const char *model, uint32_t table, psd_sparse_stats *st);

/* psd_sparse_flush writes every changed row in memory and flushes
 * RocksDB's memtables to its files (invariant 5).  PS_EIO / PS_ENOSPC;
 * rows stay marked changed on failure. */
int psd_sparse_flush(psd_sparse *s, ps_errbuf *eb);

#endif
