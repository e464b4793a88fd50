/* psd_store: one shard's chunks of every model, in memory, with the
 * server-side optimizer, backed by RocksDB.
 *
 * Invariants:
 *  1. Memory is what serves; RocksDB holds the last flushed state of every
 *     model: its spec (registry), each chunk's values and optimizer slots
 *     with the redo log seq of the last push it holds, and the model
 *     version with the redo log position (psd_store_log_seq) of the last
 *     finished flush: every chunk holds at least every push up to it.
 *  2. A request that fails validation changes nothing (all checks happen
 *     before the first write to a chunk).
 *  3. Opening a store restores exactly the last flushed state.
 *  4. Chunk data of a model with the same spec is initialised identically
 *     on any shard count (ps_init_fill).
 *
 * Not thread-safe: one thread (psd's loop) calls everything except
 * psd_flush_write, which may run on any thread while the loop goes on
 * (it reads chunks under the store's own mutex). */
#ifndef PSD_STORE_H
#define PSD_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ps_error.h"
#include "ps_req.h"
#include "ps.pb-c.h"

typedef struct psd_store psd_store;
typedef struct psd_flush psd_flush;

typedef struct psd_store_opts {
  const char *dir;          /* RocksDB directory (created if missing) */
  const char *cluster;      /* the cluster's name (copied), recorded in a new store
                             * and checked in an existing one; NULL: neither */
  const char *renamed_from; /* a store recording this cluster name is taken as
                             * CLUSTER's and records CLUSTER (psd --rename-cluster;
                             * read at the open only); NULL: none */
  uint32_t shard_index;     /* this shard's index in shard_ids */
  const uint32_t *shard_ids;/* the cluster's shard ids, file order (copied) */
  size_t nshards;
  uint32_t chunk_elems;     /* default for specs with chunk_elems 0 */
  uint64_t max_bytes;       /* memory budget of the models (psd_store_bytes); 0: none */
} psd_store_opts;

/* psd_store_lock_dir creates DIR (parents included) and takes an
 * exclusive lock on DIR/psd.lock (DIR itself when that file cannot be
 * made) for the calling process (*FD, closed to give it up; -1 with a
 * warning where the filesystem has no locks), so that a second psd on the
 * same data_dir stops before it touches anything there (the redo log's
 * spares are removed before the store opens).  PS_ELOCKED when another
 * process holds it; PS_EIO, PS_ENOSPC, PS_EINVAL (a bad path). */
#define PSD_STORE_LOCK "psd.lock"
int psd_store_lock_dir(const char *dir, int *fd, ps_errbuf *eb);

/* psd_store_dir_check says, without changing anything, when DIR or one of
 * its parents is a symlink whose target does not exist (which no mkdir
 * can mend): PS_EIO naming the link and its target; else 0.
 * psd_store_lock_dir and psd_store_open say the same; psd -t --shard N
 * warns with it. */
int psd_store_dir_check(const char *dir, ps_errbuf *eb);

/* psd_store_check_owner reads, without writing (a running shard's store
 * too), the records of the store in DIR: PS_ECONFIG, with psd_store_open's
 * message, when it belongs to another cluster than CLUSTER (NULL: not
 * checked) or RENAMED_FROM (NULL: none), or another shard id than
 * SHARD_ID; else 0 (no store there, or one that cannot be read: the start
 * says why).  psd -t --shard N. */
int psd_store_check_owner(const char *dir, const char *cluster, const char *renamed_from,
                          uint32_t shard_id, ps_errbuf *eb);

/* psd_store_open opens (or creates, parents included) the RocksDB at
 * o->dir and restores every model flushed there, whatever their size (a
 * warning says when they exceed o->max_bytes).  A store records its
 * cluster's name (o->cluster) when created, or at the first open that
 * gives it one (a store from before the record).  Errors: PS_ELOCKED
 * (another process or store holds the directory), PS_ECONFIG (the
 * directory belongs to another cluster, or another shard id), PS_EIO
 * (permission, corruption, ...), PS_ENOSPC, PS_EINVAL (bad options); EB
 * carries RocksDB's message and the directory.  The caller closes *OUT with psd_store_close. */
int psd_store_open(psd_store **out, const psd_store_opts *o, ps_errbuf *eb);

/* psd_store_close frees the store and closes RocksDB (no flush: call
 * psd_store_flush first).  NULL is fine. */
void psd_store_close(psd_store *s);

/* psd_store_replaces says whether psd_store_submit with REPLACE would
 * replace a model of SPEC's name (it exists with another spec). */
int psd_store_replaces(const psd_store *s, const Ps__ModelSpec *spec);

/* psd_store_submit registers SPEC (copied) and creates this shard's chunks
 * from their initializers, with *CREATED = 1.  The same spec again: 0 with
 * *CREATED = 0.  A different spec under a taken name: PS_EEXIST unless
 * REPLACE, which drops the old model's state (*CREATED = 2).  Bad specs: PS_EINVAL (a graph
 * with two nodes of one name too: ps_modelspec_graph_check).  PS_ETOOBIG, before
 * anything is allocated, when the store's models would then hold more
 * than max_bytes (the replaced model not counted), naming the model, what
 * it needs here and the budget.  PS_EDEGRADED while the store is closed
 * after a failed write.  *NCHUNKS / *NPARAMS (may be NULL) receive what
 * this shard holds. */
int psd_store_submit(psd_store *s, const Ps__ModelSpec *spec, int replace, int *created,
                     uint32_t *nchunks, uint64_t *nparams, ps_errbuf *eb);

/* psd_store_spec returns the registered spec of MODEL (borrowed until the
 * model is replaced or the store closed), or NULL. */
const Ps__ModelSpec *psd_store_spec(const psd_store *s, const char *model);

/* psd_store_payload checks that R's model exists and every one of its
 * chunk ids is held by this shard, and writes the total element count of
 * those chunks to *NELEMS and the payload bytes in R->codec (push when
 * PUSH, else pull; ps_layout_payload_bytes) to *NBYTES.  PS_ENOENT for an
 * unknown model or a chunk not held here; PS_EINVAL for an empty or
 * duplicate id list, an unknown codec, a pull codec other than fp32,
 * fp16, int8, or a push codec other than fp32 and the model's push_wire
 * (ps_model.h: a worker from before a replace changed the codec). */
int psd_store_payload(const psd_store *s, const ps_req *r, int push, uint64_t *nelems,
                      uint64_t *nbytes, ps_errbuf *eb);

/* psd_store_push decodes R's gradients (R->nbytes in R->codec: the chunks
 * of R->ids, each encoded on its own) into the store's scratch and applies
 * them with the model's optimizer, which never sees a codec; increments the
 * model's version (written to *VERSION).  R->version is the version the
 * worker computed on (staleness tau = version - R->version; a model whose
 * staleness_weight is "inverse" scales the gradients by 1/(1+tau) before
 * its optimizer; every push counts in the tau histogram).  Errors as
 * psd_store_payload, plus PS_EINVAL for a payload whose length does not
 * match its codec and chunks, a bad encoding (ps_codec_check: NaN/Inf
 * scale, topk index out of range or repeated) or a NaN/Inf gradient;
 * nothing changes on error. */
int psd_store_push(psd_store *s, const ps_req *r, uint64_t *version, ps_errbuf *eb);

/* psd_store_pull encodes the values of the chunks R->ids in R->codec into
 * R->out (R->nbytes, as psd_store_payload sized it) and writes the
 * model's version to *VERSION. */
int psd_store_pull(psd_store *s, const ps_req *r, uint64_t *version, ps_errbuf *eb);

/* psd_store_pull_view is psd_store_pull without the copy, for a pull whose
 * every chunk travels as fp32 (the bytes are the chunks' own): SEG[0..
 * *NSEG) point at the values of the chunks R->ids, in that order (R->out
 * unused).  They stay valid until the loop thread next changes the model
 * (a push, a replace): the caller has the kernel copy them, or copies
 * them itself, before it returns to the loop.  Returns 1 with the
 * segments and counts the pull as psd_store_pull does; 0 when some chunk
 * would be encoded, or there are more than MAX, and nothing is counted
 * (call psd_store_pull); or an error as psd_store_pull. */
int psd_store_pull_view(psd_store *s, const ps_req *r, struct iovec *seg, size_t max,
                        size_t *nseg, uint64_t *version, ps_errbuf *eb);

/* psd_store_held returns the ids of every chunk of MODEL held here, in
 * increasing order (borrowed until the model changes), with their count
 * and total elements; PS_ENOENT for an unknown model. */
int psd_store_held(const psd_store *s, const char *model, const uint32_t **ids, size_t *nids,
                   uint64_t *nelems);

/* psd_store_chunk_state gives the memory of chunk ID of MODEL: *DATA
 * points at LEN values followed by LEN * SLOTS optimizer floats (borrowed
 * until the next push, replace or close); *STEP is the chunk's update
 * count (Adam's t).  Outputs may be NULL.  PS_ENOENT when the model or the
 * chunk is not held here.  For export, checkpoints and tests. */
int psd_store_chunk_state(const psd_store *s, const char *model, uint32_t id,
                          const float **data, uint32_t *len, unsigned *slots, uint64_t *step);

/* Status.  tau_hist counts pushes by staleness tau = model version -
 * the version the push was computed on, in the buckets of psd_tau_bucket
 * (pushes received since the store opened, replayed ones not counted;
 * not persisted). */
#define PSD_TAU_BUCKETS 7
typedef struct psd_model_info {
  const char *name;     /* borrowed */
  uint32_t chunks;
  uint64_t params;
  uint64_t version;
  const Ps__ModelSpec *spec; /* borrowed */
  uint64_t tau_hist[PSD_TAU_BUCKETS];
  /* pushed + pulled tensor bytes, as fp32 and as sent, since the model was
   * submitted: persisted with the version (a shard restart keeps them;
   * after a crash they are those of the last snapshot, the replayed
   * pushes not counted: the log holds them decoded) */
  uint64_t bytes_raw, bytes_wire;
} psd_model_info;

/* psd_tau_bucket returns TAU's bucket: 0, 1, 2, 3-4, 5-8, 9-16, >16. */
unsigned psd_tau_bucket(uint64_t tau);
size_t psd_store_nmodels(const psd_store *s);
void psd_store_model_info(const psd_store *s, size_t i, psd_model_info *info);
uint64_t psd_store_disk_bytes(const psd_store *s); /* RocksDB's live files */
/* psd_dir_bytes returns the disk space the regular files in DIR take
 * (their allocated blocks, RocksDB's preallocated WAL space included; 0
 * when DIR cannot be read). */
uint64_t psd_dir_bytes(const char *dir);
int psd_store_dirty(const psd_store *s);           /* anything to flush? */

/* psd_store_bytes returns the memory the store's models hold: for each,
 * held elements x (1 + optimizer slots) x 4 bytes, plus 48 bytes of
 * bookkeeping per chunk of the whole model and 4 per chunk held.  What
 * max_bytes limits. */
uint64_t psd_store_bytes(const psd_store *s);

/* Flushing, in three steps so the write can leave the loop thread:
 * psd_flush_prepare (loop thread) lists every dirty chunk, takes the
 * versions and the log position, and marks them clean, copying no chunk
 * data; *F is NULL when nothing is dirty and the store is open.
 * psd_flush_write (any thread, while the loop goes on) first reopens
 * RocksDB when a failed flush closed it, then copies each listed chunk as
 * it is then (under the store's mutex: a push waits at most for one
 * chunk's copy) into one SST file followed by the versions and the log
 * position, syncs it and ingests it into RocksDB (chunks of a model
 * replaced meanwhile are skipped).  psd_flush_finish
 * (loop thread) frees F; when STATUS < 0 it marks the snapshot's chunks
 * dirty again so nothing is lost, and closes RocksDB (a handle that
 * failed a write is not used again); the next flush reopens it.
 * psd_store_flush does all three in a row.  Write errors: PS_ENOSPC,
 * PS_EIO, PS_ECONFIG (the reopened directory holds another shard). */
int psd_flush_prepare(psd_store *s, psd_flush **f, ps_errbuf *eb);
/* psd_flush_log_seq: the redo log position the snapshot F holds (every
 * logged push up to it; psd_store_log_seq when it was prepared). */
uint64_t psd_flush_log_seq(const psd_flush *f);
/* psd_flush_durable_fn: called by psd_flush_write once the SST file is
 * written and before it is ingested, with the highest redo log seq the
 * snapshot holds (its log position, or a chunk's seq when a push landed
 * after the prepare: invariant 9).  It returns 0 once the log holds every
 * record up to SEQ on disk, else an error (EB) that fails the flush: a
 * snapshot never holds a push whose record a crash can still take away
 * (invariant 11). */
typedef int psd_flush_durable_fn(void *arg, uint64_t seq, ps_errbuf *eb);
/* psd_flush_set_durable installs FN (may be NULL: ingest at once, as
 * psd_store_flush at a clean stop does) on F. */
void psd_flush_set_durable(psd_flush *f, psd_flush_durable_fn *fn, void *arg);
int psd_flush_write(psd_flush *f, ps_errbuf *eb);
void psd_flush_finish(psd_store *s, psd_flush *f, int status);
int psd_store_flush(psd_store *s, ps_errbuf *eb);

/* Redo log (durability sync, psd_wal.h).  psd_store_set_log installs FN:
 * psd_store_push hands it each push's record (the pieces of IOV) after
 * every check and before the first chunk changes, and fails the push
 * unchanged when FN fails (OWN, OWN_CAP, LEND: the push's ps_req own and
 * lend fields when the record's last piece is its gradients as received,
 * else NULL: see psd_wal_append_own); FN writes the record's seq to *SEQ, which
 * becomes psd_store_log_seq.  Snapshots (flushes) store the log seq they
 * hold, read back by psd_store_open.  psd_store_replay applies record REC
 * (LEN bytes) of seq SEQ as the push it logged, through the same code
 * (records of a replaced model's older incarnation are skipped); PS_EIO
 * when the record names a model the store does not hold or a newer
 * incarnation of it (the snapshot is missing or from elsewhere) or does
 * not decode. */
typedef int psd_store_log_fn(void *arg, const struct iovec *iov, int niov, void **own,
                             size_t *own_cap, const ps_lend *lend, uint64_t *seq,
                             ps_errbuf *eb);
void psd_store_set_log(psd_store *s, psd_store_log_fn *fn, void *arg);
uint64_t psd_store_log_seq(const psd_store *s);
/* psd_store_log_note: record SEQ, a log record that is not a dense push
 * (a sparse push, psd_sparse.h), as applied: the log position moves on,
 * so that the next snapshot's "w" says that the chunks need nothing up to
 * it (a flush writes "w" when it moved, even with no chunk dirty). */
void psd_store_log_note(psd_store *s, uint64_t seq);
int psd_store_replay(psd_store *s, uint64_t seq, const uint8_t *rec, size_t len, ps_errbuf *eb);
/* psd_store_log_id reads the id of the redo log this store was last
 * replayed from or logged to (key "i", psd_wal_id): *ID 0 when it holds
 * none (a fresh store, or one written before log ids); *PENDING 1 when
 * it was stored pending (below) and not since; 0 or PS_EIO.
 * psd_store_set_log_id stores ID (synced); PENDING 1 marks it as given
 * to a log that has no id yet, whose own copy is written next (a start
 * that finds the store's id and the log without one can then tell that
 * crash from a log whose id was removed), 0 clears the mark; 0 or an
 * error. */
int psd_store_log_id(psd_store *s, uint64_t *id, int *pending, ps_errbuf *eb);
int psd_store_set_log_id(psd_store *s, uint64_t id, int pending, ps_errbuf *eb);

/* psd_rdb_options makes the RocksDB options both of a shard's databases
 * (the store, the sparse rows) start from: no preallocated files
 * (RocksDB's default reserves write_buffer_size + 10 % for its
 * write-ahead log at every open, 35 MiB for the store, which on a nearly
 * full disk the redo log and the snapshots need, and which `du` cannot
 * tell from data).  *ERR set (rocksdb_free) when RocksDB refuses. */
typedef struct rocksdb_options_t rocksdb_options_t;
rocksdb_options_t *psd_rdb_options(char **err);

/* psd_rdb_code maps a RocksDB error string to a PS_E* code, as both of
 * a shard's databases report them: PS_ENOSPC for a full disk, PS_ELOCKED
 * for the LOCK file's errors only (another process or handle holds it;
 * "block checksum mismatch" holds "lock" too), else PS_EIO. */
int psd_rdb_code(const char *err);

/* psd_rdb_drop_empty_wals removes DIR's empty RocksDB write-ahead logs
 * (NNNNNN.log of 0 bytes) while its database is closed: every open that
 * fails on a full disk leaves one, which no later open removes; an empty
 * one holds no write, so nothing is lost.  Empty rotated info logs
 * (LOG.old.N: each open moves LOG aside, and only an open that succeeds
 * trims them to keep_log_file_num) go too, so that a DEGRADED shard
 * retrying its reopen for hours leaves one, not one per retry. */
void psd_rdb_drop_empty_wals(const char *dir);

/* psd_rdb_open opens the RocksDB in DIR with OPTS, as every open of a
 * shard's databases does: the first open, and the reopen of one whose
 * handle failed a write (psd_store.c invariant 8, psd_sparse.h invariant
 * 7): its empty write-ahead logs dropped first (psd_rdb_drop_empty_wals),
 * then opened for writing, or with READ_ONLY for reading only (nothing
 * written: it works on a full disk).  With CF the default column family's
 * handle goes to *CF.  NULL with *ERR set (rocksdb_free) on failure. */
typedef struct rocksdb_t rocksdb_t;
typedef struct rocksdb_column_family_handle_t rocksdb_column_family_handle_t;
rocksdb_t *psd_rdb_open(const rocksdb_options_t *opts, const char *dir, int read_only,
                        rocksdb_column_family_handle_t **cf, char **err);

#endif
