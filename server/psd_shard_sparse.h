/* psd_shard_sparse: a shard's sparse tables behind its request handlers
 * (the store of rows is psd_sparse.h; this is the shard's side of it).
 *
 * The shard opens one psd_sparse in DATA_DIR/sparse (sparse.memory_rows,
 * sparse.admit_after and sparse.max_new_rows of the config) and, for every model whose graph
 * has an embedding table (ps.graph.Param.sparse), one table per such
 * parameter: at submit and, after a restart, for every model the store
 * restored.  A table's rows are the ones whose bucket is placed on this
 * shard (ps_place_row_map); a request naming another shard's key is
 * refused.
 *
 * Clocks: rows keep the consistency of their model's dense tensors, with
 * the same clock table (psd_clock.h), one per model, not one per table.
 * A sparse pull carries the worker's clock and is admitted, parked and
 * released exactly as a dense pull (psd_shard_sparse_pull_admit calls
 * psd_shard_pull_admit; the transports answer a released one through the
 * same callback as their dense pulls, on the plane it came on).  A step's
 * clock is the worker's clock, advanced once per step, by the last push
 * of the step a shard receives: psw pushes a step's rows, acknowledged,
 * before its dense push, so on a shard that holds any dense chunk of the
 * model the dense push advances it and a sparse push does not (else
 * another worker's pull could pass the step before this worker's dense
 * gradients are in); on a shard that holds none, the sparse push
 * advances it.  Advancing is raising to clock + 1 (psd_clock_pushed), so
 * pushes of one step never advance it twice.  A sparse push of no keys
 * carries the clock alone (nothing is applied or logged).  A pull at
 * PS_CLOCK_READER (ps_model.h: psw --evaluate) is no step's: served at
 * once, it neither enters the clock table nor refreshes a lease, so a
 * reader holds no rank and holds no training worker back.
 *
 * Every function runs on the shard's loop thread, returns 0 or a negative
 * PS_E* code with a message in EB, and changes nothing on error. */
#ifndef PSD_SHARD_SPARSE_H
#define PSD_SHARD_SPARSE_H

#include "ps.pb-c.h"
#include "psd_shard.h"
#include "psd_sparse.h"

/* psd_shard_sparse_open opens SH's rows and registers the tables of every
 * model its store holds.  psd_shard_sparse_close (NULL-safe) frees them
 * without flushing. */
int psd_shard_sparse_open(psd_shard *sh, ps_errbuf *eb);
void psd_shard_sparse_close(psd_shard *sh);

/* psd_shard_sparse_rows: SH's rows (psd_sparse.h), or NULL when not open;
 * for read-only looks (psd_sparse_row: tests, the fuzz targets). */
psd_sparse *psd_shard_sparse_rows(const psd_shard *sh);

/* psd_shard_sparse_check checks SPEC's embedding tables before the store
 * takes SPEC (a graph that does not parse, a bad dim or initializer, a
 * table that exists with another dim or optimizer); psd_shard_sparse_add
 * then registers them.  Both are no-ops for models without tables. */
int psd_shard_sparse_check(psd_shard *sh, const Ps__ModelSpec *spec, ps_errbuf *eb);

/* psd_shard_sparse_tables counts SPEC's embedding tables (0 when it has
 * no graph, or one that does not parse). */
size_t psd_shard_sparse_tables(const Ps__ModelSpec *spec);
int psd_shard_sparse_add(psd_shard *sh, const Ps__ModelSpec *spec, ps_errbuf *eb);

/* psd_shard_sparse_pull: *ROWS (caller frees with free()) receives
 * nkeys rows encoded in R->codec (fp32, fp16 or int8, each row on its
 * own), *NBYTES their size.  psd_shard_sparse_push decodes R's rows (in
 * R->codec) and applies them as gradients.  Errors: the shard's state,
 * PS_ENOENT (unknown model or table), PS_EINVAL (keys and rows that
 * disagree, a duplicate or misplaced key, a NaN gradient, a row codec
 * other than fp32/fp16/int8, an int8 scale that is not finite, a worker
 * id outside the cluster),
 * PS_ETOOBIG (over limits.max_request_bytes), PS_EIO from RocksDB. */
int psd_shard_sparse_pull(psd_shard *sh, const Ps__SparsePullRequest *r, uint8_t **rows,
                          size_t *nbytes, ps_errbuf *eb);
int psd_shard_sparse_push(psd_shard *sh, const Ps__SparsePushRequest *r, ps_errbuf *eb);

/* psd_shard_sparse_pull_admit checks pull R as psd_shard_sparse_pull
 * does, then admits it under the model's staleness bound
 * (psd_shard_pull_admit, the dense pulls' one path): 0 serve it now
 * (psd_shard_sparse_pull), 1 parked in P (P->fn runs later, once, as for
 * a dense pull: then serve it, or answer the error: PS_ETIMEDOUT naming
 * the slowest worker, PS_ESHUTDOWN), or a PS_E* code (PS_EEXPIRED for a
 * worker declared dead).  A push of a worker declared dead is refused
 * with PS_EEXPIRED before anything is applied. */
int psd_shard_sparse_pull_admit(psd_shard *sh, const Ps__SparsePullRequest *r, psd_park *p,
                                ps_errbuf *eb);

/* psd_shard_sparse_export fills REP with a page of R's table (see
 * ExportRowsRequest in ps.proto and psd_sparse_export): at most
 * R->limit rows, and no more than limits.max_request_bytes holds.
 * psd_shard_sparse_export_release frees what it allocated in REP. */
int psd_shard_sparse_export(psd_shard *sh, const Ps__ExportRowsRequest *r,
                            Ps__ExportRowsReply *rep, ps_errbuf *eb);
void psd_shard_sparse_export_release(Ps__ExportRowsReply *rep);

/* psd_shard_sparse_status adds every table's counters to REPLY (model
 * names borrowed from the tables); psd_shard_sparse_status_release frees
 * what it allocated. */
void psd_shard_sparse_status(psd_shard *sh, Ps__StatusReply *reply);
void psd_shard_sparse_status_release(Ps__StatusReply *reply);

/* psd_shard_sparse_flush writes every changed row and the store's log
 * position (psd_sparse_flush); synchronous. */
int psd_shard_sparse_flush(psd_shard *sh, ps_errbuf *eb);

/* Durability (psd_sparse.h invariant 6; psd_main drives it beside the
 * dense store's snapshots and redo log).
 *
 * psd_shard_sparse_log_from: the redo log position the rows on disk hold
 * (read at open, before the replay; UINT64_MAX without sparse tables).
 * psd_shard_sparse_set_log installs the redo log hook of sparse pushes,
 * psd_shard_sparse_set_durable the wait for the log's sync before rows
 * reach RocksDB's files (psd_sparse_set_durable).
 * psd_shard_sparse_replay applies a record of kind PSD_SPARSE_LOG_PUSH
 * and notes its seq in the store (psd_store_log_note).
 * psd_shard_sparse_snapshot (loop) writes changed rows and the store's
 * log position, *SEQ, into RocksDB's memtable; when *PERSIST, call
 * psd_shard_sparse_persist (any thread) and, if it fails,
 * psd_shard_sparse_persist_failed (loop). */
uint64_t psd_shard_sparse_log_from(const psd_shard *sh);
void psd_shard_sparse_set_log(psd_shard *sh, psd_sparse_log_fn *fn, void *arg);
void psd_shard_sparse_set_durable(psd_shard *sh, psd_sparse_durable_fn *fn, void *arg);
int psd_shard_sparse_replay(psd_shard *sh, uint64_t seq, const uint8_t *rec, size_t len,
                            ps_errbuf *eb);
int psd_shard_sparse_snapshot(psd_shard *sh, int *persist, uint64_t *seq, ps_errbuf *eb);
int psd_shard_sparse_persist(psd_shard *sh, ps_errbuf *eb);
void psd_shard_sparse_persist_failed(psd_shard *sh);

#endif
