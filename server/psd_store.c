/* psd_store: one shard's chunks of every model, in memory, with the
 * server-side optimizer, backed by RocksDB (see psd_store.h).
 *
 * Memory: each held chunk is ONE allocation of len * (1 + slots) floats
 * (values, then the optimizer's slots) plus a 32-byte psd_cstate, so a
 * model costs params * (1 + slots) * 4 bytes and little else.
 *
 * RocksDB keys (values little-endian, chunk ids big-endian so they sort):
 *   "m"                              "psd1" u32 shard id
 *   "n"                              the cluster's name (the cluster file's
 *                                    'cluster'), written with "m", or by the
 *                                    first open of a store from before it
 *                                    (older psd ignore the key)
 *   "r/" name                        u64 gen, packed ModelSpec (registry)
 *   "v/" name                        u64 gen, u64 version, u64 bytes_raw,
 *                                    u64 bytes_wire (records of 16 bytes,
 *                                    from before the counters, read as 0)
 *   "c/" name "\0" u64be gen u32be id u32 len, u32 slots, u64 step, u64 seq,
 *                                    float values[len], float slots[len*slots]
 *                                    (records without seq, from before
 *                                    invariant 9, are read as seq 0)
 *   "w"                              u64 redo log seq the snapshot holds
 *                                    (durability sync; written by every flush)
 *   "i"                              u64 id of its redo log (psd_store_log_id)
 *   "a"                              u64 the same id, while the log's copy of
 *                                    it may be unwritten (a log from before
 *                                    ids being given the store's; older psd
 *                                    ignore the key)
 *
 * Redo log records of pushes (psd_store_log_push, psd_store_replay):
 *   u8 kind 1, u8 name length, name, u64 gen, u32 worker, u64 clock,
 *   u64 version_seen, u32 nids, u64 nelems, u32 ids[nids], float grads[nelems]
 * or, for a push that came encoded in fewer bytes than its floats
 * (ps_codec.h; kind 2 is a sparse push, psd_sparse.h):
 *   u8 kind 3, the same fields to nids, u64 nbytes, u32 codec,
 *   u32 ids[nids], the payload as received[nbytes]
 * which replay decodes as the push did (decoding is a pure function of
 * the bytes, the codec and the model's layout), so the log holds an
 * int8 push in about a quarter of the bytes, a onebit one in 1/32.
 *
 * Invariants (beyond the header's):
 *  5. gen is unique to one incarnation of a model in this directory.  A
 *     REPLACE deletes every "c/" record of the name and writes "r/" and
 *     "v/" with a new gen in one synced batch.  A flush prepared before
 *     the replace and written after it can only add records of the old
 *     gen, which open ignores and deletes, so it never resurrects state.
 *  6. "r/" is written by submit only, "v/" and "c/" by flushes.  Chunks
 *     without a record start from their initializer, so a fresh model
 *     costs one small synced write.
 *  7. The stored spec has chunk_elems resolved (never 0), so a change of
 *     the cluster's default does not change an existing model's layout.
 *  8. A RocksDB handle that failed a write is never written through again
 *     (a full disk leaves RocksDB 7.8's writers in error states that end
 *     the process when reused): psd_flush_finish closes it after a failed
 *     flush, psd_flush_prepare after a failed submit (db_failed: a flush
 *     may be using it until then), leaving s->db NULL; the next flush
 *     reopens the directory on its writing thread, checks it is still
 *     this shard's, and writes the batch; only then is the new handle
 *     installed.  Reopening reads nothing into memory: the models in
 *     memory are newer than the directory, which only catches up.  While
 *     s->db is NULL or failed, submit is refused (it would write).
 *  9. A snapshot is not one instant: psd_flush_prepare (loop) takes the
 *     dirty chunk list, the versions and the log position L; the writing
 *     thread then reads each chunk as it is when it gets there, so a chunk
 *     may hold pushes after L.  Each chunk record carries the seq of the
 *     last push applied to it (pushes apply in seq order), and replay
 *     applies a record to a chunk only when the record is newer than the
 *     chunk, so the log after L gives back the exact state; the model's
 *     version (taken at L) counts every record replayed.  The writing
 *     thread puts the chunk records, then "v/" and "w" (L), into one SST
 *     file (PSD_SNAP_TMP, synced), copying one chunk at a time, and
 *     ingests it into RocksDB (a link: no WAL, no memtable), so a snapshot
 *     lands whole or not at all; a crash before leaves the previous L and
 *     its chunks, from which replay is exact too.  No copy of the chunks
 *     is held but one chunk's.
 * 10. The writing thread reads chunk data, steps and seqs, and finds
 *     models in s->models, only under s->mu; the loop holds s->mu while a
 *     push changes chunks and while submit changes the model list.  The
 *     loop waits at most for the copy of one chunk.
 * 11. Write-ahead: the log position L and the chunks' seqs may name
 *     records the redo log has not synced yet (L is the last record
 *     appended; a push lands in memory before its record is written).  A
 *     snapshot ingested before them would outlive them after a crash (a
 *     SIGKILL loses what the writer had not written yet, a power cut what
 *     it had not synced), and the next records would reuse their seqs,
 *     which replay then skips as held by the snapshot: acknowledged
 *     pushes lost.  So psd_flush_write calls the flush's durable hook
 *     (psd_flush_set_durable) with the highest seq the SST file holds
 *     before it ingests it; the background flush waits there for the
 *     log's sync (psd_wal_wait_synced). */
#include "psd_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rocksdb/c.h>

#include "ps_log.h"
#include "ps_model.h"
#include "ps_pb.h"
#include "ps_place.h"
#include "psd_optim.h"

typedef struct psd_cstate {
  float *data;   /* len * (1 + slots) floats in the model's slab; NULL: not held here */
  uint64_t step; /* updates applied (Adam's t) */
  uint64_t seq;  /* redo log seq of the last push applied (invariant 9) */
  uint8_t dirty;
  uint8_t filled;/* data holds a restored or initialised state */
  psd_optim_bounds bound; /* on the magnitudes in data (psd_optim.h) */
} psd_cstate;

typedef struct psd_model {
  Ps__ModelSpec *spec;   /* unpacked copy, owned */
  uint8_t *packed;       /* the same, packed: registry value and equality */
  size_t packed_len;
  ps_layout layout;      /* borrows spec */
  psd_optim optim;
  unsigned slots;
  uint64_t gen;
  uint64_t version;
  int version_dirty;
  size_t ndirty;         /* dirty chunks */
  uint32_t *held;        /* increasing chunk ids held here */
  size_t nheld;
  uint64_t held_elems;
  uint64_t spec_bytes;   /* psd_store_spec_bytes of spec, for the budget */
  psd_cstate *chunks;    /* indexed by model-wide chunk id */
  void *slab;            /* every held chunk's data, one anonymous mapping */
  size_t slab_len;
  int inverse;           /* staleness_weight inverse: scale by 1/(1+tau) */
  uint64_t tau_hist[PSD_TAU_BUCKETS]; /* pushes by tau since start (not persisted) */
  uint64_t bytes_raw, bytes_wire; /* psd_model_info's, as of the last "v/" record after a restart */
  int bytes_dirty;       /* a pull moved the counters since "v/" was last written */
} psd_model;

struct psd_store {
  rocksdb_t *db;
  rocksdb_options_t *opts;
  rocksdb_block_based_table_options_t *bbto;
  rocksdb_cache_t *cache;
  rocksdb_env_t *env;
  rocksdb_writeoptions_t *wsync;
  rocksdb_readoptions_t *ro;
  char *dir;
  char *cluster;         /* psd_store_opts' (owned); NULL: not checked */
  uint32_t shard_index, shard_id;
  uint32_t *shard_ids;
  size_t nshards;
  uint32_t chunk_elems;
  uint64_t max_bytes;    /* budget of psd_store_bytes; 0: none */
  int db_failed;         /* a submit's write failed: close db at the next flush */
  uint32_t fail_closes;  /* psd_flush_finish closes after failed flushes, in a row */
  psd_model **models;
  size_t nmodels;
  uint64_t next_gen;
  float *scratch;        /* a weighted chunk gradient */
  size_t scratch_cap;    /* floats */
  float *decoded;        /* a compressed push's gradients, decoded */
  size_t decoded_cap;    /* floats */
  float *trial;          /* a chunk's state, to try an uncertain update on */
  size_t trial_cap;      /* floats */
  psd_optim_bounds *after; /* a push's chunk bounds once applied */
  size_t after_cap;      /* entries */
  psd_store_log_fn *log_fn; /* redo log (durability sync); NULL: none */
  void *log_arg;
  uint64_t log_seq;      /* seq of the last logged push applied (or restored) */
  uint64_t log_seq_flushed; /* the "w" the last finished snapshot wrote (or restored) */
  /* Held by the loop while it changes chunk data or the model list, by a
   * flush's writing thread while it reads one chunk (invariant 10). */
  pthread_mutex_t mu;
};

typedef struct psd_flush_ref {
  uint64_t gen;
  uint32_t id;
} psd_flush_ref;

struct psd_flush {
  psd_store *store;             /* whose chunks psd_flush_write reads, under store->mu */
  rocksdb_t *db;                /* the store's (borrowed), or the one reopen made */
  int reopen;                   /* the store was closed: psd_flush_write reopens it */
  const rocksdb_options_t *opts;/* borrowed from the store, for the reopen */
  const rocksdb_readoptions_t *ro;
  uint32_t shard_id;
  const char *cluster;          /* the store's (borrowed), may be NULL */
  rocksdb_writeoptions_t *wsync;
  const char *dir;
  rocksdb_writebatch_t *tail;   /* versions and the log position, written last */
  psd_flush_ref *chunks;        /* what to write; what to mark dirty again on failure */
  size_t nchunks;
  uint64_t *vgens;              /* models whose version record is in the batch */
  size_t nvgens;
  uint64_t log_seq;             /* the redo log position the snapshot holds */
  uint64_t max_seq;             /* the highest chunk seq psd_flush_take copied */
  psd_flush_durable_fn *durable;/* waits for the log before the ingest (invariant 11) */
  void *durable_arg;
};

/* Chunk record headers: PSD_HDR_V1 (len, slots, step) as written before
 * invariant 9, PSD_HDR with the chunk's log seq after them. */
enum { PSD_HDR_V1 = 16, PSD_HDR = 24, PSD_KEY_MAX = 2 + 128 + 1 + 12 };
/* A flush writes its snapshot here, then moves it into RocksDB. */
#define PSD_SNAP_TMP "psd-snapshot.sst.tmp"

/* ---- encoding ------------------------------------------------------------ */

static void psd_store_put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t psd_store_get64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t psd_store_get32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* psd_store_key writes PREFIX NAME into K (PSD_KEY_MAX bytes) and returns
 * its length; names are below 128 bytes (ps_layout_build checks). */
static size_t psd_store_key(char *k, char prefix, const char *name) {
  size_t n = strlen(name);
  k[0] = prefix;
  k[1] = '/';
  memcpy(k + 2, name, n);
  return 2 + n;
}

/* psd_store_chunk_key writes the "c/" key of chunk ID of incarnation GEN. */
static size_t psd_store_chunk_key(char *k, const char *name, uint64_t gen, uint32_t id) {
  size_t n = psd_store_key(k, 'c', name);
  k[n++] = '\0';
  for (int i = 7; i >= 0; i--) k[n++] = (char)(gen >> (8 * i));
  for (int i = 3; i >= 0; i--) k[n++] = (char)(id >> (8 * i));
  return n;
}

/* psd_rdb_code: see psd_store.h. */
int psd_rdb_code(const char *err) {
  if (strstr(err, "No space left")) return PS_ENOSPC;
  if (strstr(err, "lock") &&
      (strstr(err, "temporarily unavailable") || strstr(err, "hold by current process")))
    return PS_ELOCKED;
  return PS_EIO;
}

/* psd_store_rdb_err converts a RocksDB error string (freed here) to a
 * PS_E* code once (psd_rdb_code), quoting it and the directory in EB. */
static int psd_store_rdb_err(ps_errbuf *eb, char *err, const char *what, const char *dir) {
  int code = psd_rdb_code(err);
  ps_errf(eb, code, "%s '%s': %s", what, dir, err);
  rocksdb_free(err);
  return code;
}

/* ---- models --------------------------------------------------------------- */

/* psd_model_free frees M and every chunk it holds.  NULL is fine. */
static void psd_model_free(psd_model *m) {
  if (!m) return;
  if (m->slab) munmap(m->slab, m->slab_len);
  free(m->chunks);
  free(m->held);
  ps_layout_release(&m->layout);
  if (m->spec) ps__model_spec__free_unpacked(m->spec, NULL);
  free(m->packed);
  free(m);
}

/* psd_store_check_consistency checks M's consistency fields (parsed by
 * ps_layout_build): 0 or PS_EINVAL. */
static int psd_store_check_consistency(const psd_model *m, ps_errbuf *eb) {
  if (m->layout.consistency == PS_BSP && m->spec->staleness)
    return ps_errf(eb, PS_EINVAL, "model '%s': bsp has staleness 0, not %u", m->spec->name,
                   m->spec->staleness);
  return 0;
}

static uint64_t psd_store_spec_bytes(const Ps__ModelSpec *spec, uint64_t packed_len);

/* psd_model_new makes a model from a packed spec (PACKED is taken over,
 * freed on error too) without chunk data: spec, layout, optimizer, held
 * ids.  0, PS_EINVAL for a bad spec, PS_ENOMEM. */
static int psd_model_new(psd_store *s, uint8_t *packed, size_t len, uint64_t gen,
                         psd_model **out, ps_errbuf *eb) {
  psd_model *m = calloc(1, sizeof *m);
  if (!m) {
    free(packed);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  m->packed = packed;
  m->packed_len = len;
  m->gen = gen;
  m->spec = ps__model_spec__unpack(NULL, len, packed);
  if (!m->spec) {
    psd_model_free(m);
    return ps_errf(eb, PS_EINVAL, "model spec does not decode");
  }
  int rc = ps_layout_build(&m->layout, m->spec, s->chunk_elems, s->shard_ids, s->nshards, eb);
  if (rc == 0) rc = ps_modelspec_check(m->spec, eb);
  if (rc == 0) rc = psd_store_check_consistency(m, eb);
  if (rc == 0) rc = psd_optim_init(&m->optim, m->spec->optimizer, eb);
  m->inverse = m->layout.stale_weight == PS_WEIGHT_INVERSE;
  if (rc < 0) {
    psd_model_free(m);
    return rc;
  }
  m->slots = psd_optim_slots(&m->optim);
  m->spec_bytes = psd_store_spec_bytes(m->spec, m->packed_len);
  long n = ps_layout_shard_chunks(&m->layout, s->shard_index, &m->held, &m->held_elems);
  m->chunks = calloc(m->layout.nchunks ? m->layout.nchunks : 1, sizeof *m->chunks);
  if (n < 0 || !m->chunks) {
    psd_model_free(m);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  m->nheld = (size_t)n;
  /* Chunk data lives in one mapping of its own, outside the malloc heap:
   * freeing a model returns all of it at once, and nothing the heap does
   * (fragmentation, other threads' arenas) can keep it resident. */
  m->slab_len = (size_t)m->held_elems * (1 + m->slots) * sizeof(float);
  if (m->slab_len) {
    void *p = mmap(NULL, m->slab_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      /* The message names the model: format it before the spec is freed. */
      int rc = ps_errf(eb, PS_ENOMEM, "out of memory for the %zu bytes of model '%s' on this shard",
                       m->slab_len, m->spec->name);
      m->slab_len = 0;
      psd_model_free(m);
      return rc;
    }
    m->slab = p;
  }
  float *at = m->slab;
  for (size_t i = 0; i < m->nheld; i++) {
    m->chunks[m->held[i]].data = at;
    at += (size_t)m->layout.chunks[m->held[i]].len * (1 + m->slots);
  }
  *out = m;
  return 0;
}

/* psd_model_fill initialises every held chunk not restored (values from
 * ps_init_fill, zero slots).  0 or PS_EINVAL (unknown initializer). */
static int psd_model_fill(psd_model *m, ps_errbuf *eb) {
  for (size_t i = 0; i < m->nheld; i++) {
    psd_cstate *c = &m->chunks[m->held[i]];
    if (c->filled) continue;
    const ps_chunk *ch = &m->layout.chunks[m->held[i]];
    const ps_tensor_info *ti = &m->layout.tensors[ch->tensor];
    const Ps__TensorSpec *ts = m->spec->tensors[ch->tensor];
    const char *init = ts->init && ts->init[0] ? ts->init : "zeros";
    int rc = ps_init_fill(c->data, init, ts->scale, m->spec->seed, ch->tensor, ch->offset,
                          ch->len, ti->fan_in, ti->fan_out);
    if (rc < 0) return ps_errf(eb, rc, "tensor '%s': unknown initializer '%s'", ts->name, init);
    psd_optim_init_slots(&m->optim, c->data + ch->len, ch->len);
    if (psd_optim_measure(&m->optim, c->data, ch->len, &c->bound) < 0)
      return ps_errf(eb, PS_EINVAL, "tensor '%s': initial values are not finite", ts->name);
    c->step = 0;
    c->filled = 1;
  }
  return 0;
}

/* psd_store_find returns the model named NAME (LEN bytes) and its index
 * in *IDX (may be NULL), or NULL. */
static psd_model *psd_store_find(const psd_store *s, const char *name, size_t len, size_t *idx) {
  for (size_t i = 0; i < s->nmodels; i++) {
    const char *n = s->models[i]->spec->name;
    if (strlen(n) == len && memcmp(n, name, len) == 0) {
      if (idx) *idx = i;
      return s->models[i];
    }
  }
  return NULL;
}

/* psd_store_model returns MODEL or NULL with PS_ENOENT in EB. */
static psd_model *psd_store_model(const psd_store *s, const char *model, ps_errbuf *eb) {
  psd_model *m = model ? psd_store_find(s, model, strlen(model), NULL) : NULL;
  if (!m) ps_errf(eb, PS_ENOENT, "unknown model '%s'", model ? model : "");
  return m;
}

/* psd_store_add appends M to the model list; 0 or PS_ENOMEM. */
static int psd_store_add(psd_store *s, psd_model *m, ps_errbuf *eb) {
  psd_model **v = realloc(s->models, (s->nmodels + 1) * sizeof *v);
  if (!v) return ps_errf(eb, PS_ENOMEM, "out of memory");
  s->models = v;
  s->models[s->nmodels++] = m;
  return 0;
}

/* ---- memory budget --------------------------------------------------------- */

/* What the budget counts, measured: a model of 100,000 one-element
 * tensors (2 shards, SGD) took 290-300 bytes of heap per tensor on each
 * shard, all of it below; the old count (the chunk bookkeeping alone, 68
 * bytes) let a shard take over 4 times its budget.  Not counted: a
 * submit's transient copies (the gRPC request and its unpacked message,
 * about 200 bytes a tensor more), freed when it ends and handed back to
 * the system then (psd_grpc_handle's malloc_trim).
 *
 * Bookkeeping of every chunk of a model, held here or not: its layout
 * entry and its state (one calloc each, exact). */
#define PSD_CHUNK_META ((uint64_t)(sizeof(ps_chunk) + sizeof(psd_cstate)))

/* psd_heap returns what malloc (glibc) takes for N bytes: an 8-byte
 * header, 16-byte granules, 32 bytes at least. */
static uint64_t psd_heap(uint64_t n) { return n <= 24 ? 32 : (n + 8 + 15) & ~(uint64_t)15; }

/* psd_heap_str returns what the unpacked copy of string S takes (an
 * empty proto3 string is not packed, so not allocated on unpacking). */
static uint64_t psd_heap_str(const char *s) { return s && *s ? psd_heap(strlen(s) + 1) : 0; }

/* psd_heap_unknown returns what M's unknown fields take unpacked. */
static uint64_t psd_heap_unknown(const ProtobufCMessage *m) {
  uint64_t b = m->n_unknown_fields ? psd_heap(m->n_unknown_fields * sizeof *m->unknown_fields) : 0;
  for (size_t i = 0; i < m->n_unknown_fields; i++) b += psd_heap(m->unknown_fields[i].len);
  return b;
}

/* psd_store_spec_bytes returns what SPEC (PACKED_LEN bytes packed) takes
 * on every shard beside its chunks: the model, its packed copy (the
 * registry value), its unpacked copy (a message, a name, a shape and
 * strings per tensor) and the layout's tensor entries.  O(tensors). */
static uint64_t psd_store_spec_bytes(const Ps__ModelSpec *spec, uint64_t packed_len) {
  uint64_t b = psd_heap(sizeof(psd_model)) + psd_heap(packed_len) + psd_heap(sizeof *spec) +
               psd_heap_str(spec->name) + psd_heap_str(spec->consistency) +
               psd_heap_str(spec->staleness_weight) + psd_heap_str(spec->codec) +
               psd_heap_str(spec->pull_codec) + psd_heap_unknown(&spec->base) +
               (spec->graph.len ? psd_heap(spec->graph.len) : 0) +
               (spec->n_tensors ? psd_heap(spec->n_tensors * sizeof *spec->tensors) : 0) +
               spec->n_tensors * (uint64_t)sizeof(ps_tensor_info);
  if (spec->optimizer)
    b += psd_heap(sizeof *spec->optimizer) + psd_heap_str(spec->optimizer->kind) +
         psd_heap_unknown(&spec->optimizer->base);
  for (size_t t = 0; t < spec->n_tensors; t++) {
    const Ps__TensorSpec *ts = spec->tensors[t];
    b += psd_heap(sizeof *ts) + psd_heap_str(ts->name) + psd_heap_str(ts->init) +
         psd_heap_str(ts->codec) + psd_heap_unknown(&ts->base) +
         (ts->n_shape ? psd_heap(ts->n_shape * sizeof *ts->shape) : 0);
  }
  return b;
}

/* psd_store_need returns the bytes a model holding HELD elements in NHELD
 * of its NCHUNKS chunks takes here with SLOTS optimizer slots, beside
 * SPEC_BYTES for its spec (saturated at UINT64_MAX). */
static uint64_t psd_store_need(uint64_t held, unsigned slots, uint64_t nchunks, uint64_t nheld,
                               uint64_t spec_bytes) {
  uint64_t per = (1 + (uint64_t)slots) * sizeof(float);
  uint64_t meta = nchunks * PSD_CHUNK_META + nheld * 4;
  if (spec_bytes > UINT64_MAX - meta || held > (UINT64_MAX - meta - spec_bytes) / per)
    return UINT64_MAX;
  return held * per + meta + spec_bytes;
}

static uint64_t psd_model_bytes(const psd_model *m) {
  return psd_store_need(m->held_elems, m->slots, m->layout.nchunks, m->nheld, m->spec_bytes);
}

/* psd_store_bytes: see psd_store.h. */
uint64_t psd_store_bytes(const psd_store *s) {
  uint64_t total = 0;
  for (size_t i = 0; i < s->nmodels; i++) {
    uint64_t b = psd_model_bytes(s->models[i]);
    total = b > UINT64_MAX - total ? UINT64_MAX : total + b;
  }
  return total;
}

/* psd_store_size formats B bytes for a message ("7.45 GiB") into BUF. */
static const char *psd_store_size(char buf[32], uint64_t b) {
  static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (b < 1024) {
    snprintf(buf, 32, "%" PRIu64 " bytes", b);
    return buf;
  }
  double v = (double)b / 1024;
  size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof units / sizeof units[0]) v /= 1024, u++;
  snprintf(buf, 32, "%.2f %s", v, units[u]);
  return buf;
}

/* psd_store_spec_need sizes SPEC (not validated yet) on this shard
 * without allocating: it counts the chunks as ps_layout_build cuts them
 * and places them as it does.  Writes the bytes to *NEED and returns 1,
 * or 0 with a lower bound when the bookkeeping alone is over LIMIT (a
 * hostile spec of tiny chunks is refused without walking them), or -1
 * when SPEC cannot be sized (its validation later says why). */
static int psd_store_spec_need(const psd_store *s, const Ps__ModelSpec *spec, uint64_t packed_len,
                               uint64_t limit, uint64_t *need) {
  uint64_t ce = spec->chunk_elems ? spec->chunk_elems : s->chunk_elems, nchunks = 0;
  psd_optim o;
  ps_errbuf ignored;
  if (!ce || !spec->n_tensors || psd_optim_init(&o, spec->optimizer, &ignored) < 0) return -1;
  for (size_t t = 0; t < spec->n_tensors; t++) {
    const Ps__TensorSpec *ts = spec->tensors[t];
    uint64_t n = 1;
    for (size_t d = 0; d < ts->n_shape; d++) {
      if (ts->shape[d] == 0 || n > (UINT64_C(1) << 40) / ts->shape[d]) return -1;
      n *= ts->shape[d];
    }
    if (!ts->n_shape || (nchunks += (n + ce - 1) / ce) >= UINT32_MAX) return -1;
  }
  uint64_t spec_bytes = psd_store_spec_bytes(spec, packed_len);
  if ((*need = psd_store_need(0, 0, nchunks, 0, spec_bytes)) > limit) return 0;
  uint64_t held = 0, nheld = 0;
  for (size_t t = 0; t < spec->n_tensors; t++) {
    const Ps__TensorSpec *ts = spec->tensors[t];
    uint64_t n = 1;
    for (size_t d = 0; d < ts->n_shape; d++) n *= ts->shape[d];
    for (uint64_t i = 0; i * ce < n; i++)
      if (ps_place_chunk(spec->name, (uint32_t)t, (uint32_t)i, s->shard_ids, s->nshards) ==
          s->shard_index) {
        held += n - i * ce < ce ? n - i * ce : ce;
        nheld++;
      }
  }
  *need = psd_store_need(held, psd_optim_slots(&o), nchunks, nheld, spec_bytes);
  return 1;
}

/* psd_store_budget checks that SPEC (PACKED_LEN bytes packed) fits this
 * shard's budget beside the models it holds, OLD (being replaced, may be
 * NULL) not counted: 0, or PS_ETOOBIG naming the model, its size here and
 * the budget. */
static int psd_store_budget(const psd_store *s, const Ps__ModelSpec *spec, uint64_t packed_len,
                            const psd_model *old, ps_errbuf *eb) {
  if (!s->max_bytes) return 0;
  uint64_t others = psd_store_bytes(s) - (old ? psd_model_bytes(old) : 0);
  uint64_t room = others < s->max_bytes ? s->max_bytes - others : 0, need;
  int exact = psd_store_spec_need(s, spec, packed_len, s->max_bytes, &need);
  if (exact < 0 || need <= room) return 0;
  char n[32], h[32], b[32];
  if (!others)
    return ps_errf(eb, PS_ETOOBIG,
                   "model '%s' needs %s%s on shard %" PRIu32 ", over its budget of %s "
                   "(limits.max_shard_bytes)", spec->name, exact ? "" : "at least ",
                   psd_store_size(n, need), s->shard_id, psd_store_size(b, s->max_bytes));
  return ps_errf(eb, PS_ETOOBIG,
                 "model '%s' needs %s%s on shard %" PRIu32 ", which holds %s of other models: "
                 "over its budget of %s (limits.max_shard_bytes)", spec->name,
                 exact ? "" : "at least ", psd_store_size(n, need), s->shard_id,
                 psd_store_size(h, others), psd_store_size(b, s->max_bytes));
}

/* ---- open, restore, close ------------------------------------------------- */

/* psd_store_dir_check: see psd_store.h.  mkdir and stat say only EEXIST
 * and ENOENT for a symlink whose target is missing, which read as "not a
 * directory" or "cannot create": the link is what the operator must see. */
int psd_store_dir_check(const char *dir, ps_errbuf *eb) {
  char path[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof path) return 0;
  memcpy(path, dir, n + 1);
  for (char *p = path + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char c = *p;
    *p = '\0';
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode) && stat(path, &st) < 0 && errno == ENOENT) {
      char to[4096];
      ssize_t k = readlink(path, to, sizeof to - 1);
      to[k > 0 ? k : 0] = '\0';
      return ps_errf(eb, PS_EIO, "'%s' is a symlink to '%s', which does not exist (make the "
                     "target, or point data_dir elsewhere)", path, to);
    }
    *p = c;
    if (c == '\0') break;
  }
  return 0;
}

/* psd_store_mkdirs creates DIR and its missing parents (mode 0755); 0 or
 * PS_EIO naming the directory (or the dangling symlink on its way). */
static int psd_store_mkdirs(const char *dir, ps_errbuf *eb) {
  char path[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof path) return ps_errf(eb, PS_EINVAL, "bad directory '%s'", dir);
  memcpy(path, dir, n + 1);
  for (char *p = path + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char c = *p;
    *p = '\0';
    if (mkdir(path, 0755) < 0 && errno != EEXIST) {
      int e = errno;
      if (psd_store_dir_check(dir, eb) < 0) return PS_EIO;
      return ps_errf(eb, e == ENOSPC ? PS_ENOSPC : PS_EIO, "cannot create '%s': %s", path,
                     strerror(e));
    }
    *p = c;
    if (c == '\0') break;
  }
  struct stat st;
  if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
    if (psd_store_dir_check(dir, eb) < 0) return PS_EIO;
    return ps_errf(eb, PS_EIO, "'%s' is not a directory", dir);
  }
  return 0;
}

/* psd_rdb_drop_empty_wals: see psd_store.h. */
void psd_rdb_drop_empty_wals(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t n = strspn(e->d_name, "0123456789");
    struct stat st;
    int info_log = !strncmp(e->d_name, "LOG.old.", 8); /* RocksDB's, moved aside at an open */
    if (((n >= 6 && !strcmp(e->d_name + n, ".log")) || info_log) &&
        fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
        st.st_size == 0)
      unlinkat(dirfd(d), e->d_name, 0);
  }
  closedir(d);
}

/* psd_rdb_options: see psd_store.h. */
rocksdb_options_t *psd_rdb_options(char **err) {
  rocksdb_options_t *o = rocksdb_options_create(), *base = rocksdb_options_create();
  rocksdb_get_options_from_string(base, "allow_fallocate=false", o, err);
  rocksdb_options_destroy(base);
  return o;
}

/* psd_rdb_open: see psd_store.h. */
rocksdb_t *psd_rdb_open(const rocksdb_options_t *opts, const char *dir, int read_only,
                        rocksdb_column_family_handle_t **cf, char **err) {
  const char *name = "default";
  const rocksdb_options_t *cfopts = opts;
  rocksdb_column_family_handle_t *h = NULL;
  rocksdb_t *db;
  if (read_only) {
    db = rocksdb_open_for_read_only_column_families(opts, dir, 1, &name, &cfopts, &h, 0, err);
  } else {
    psd_rdb_drop_empty_wals(dir);
    db = rocksdb_open_column_families(opts, dir, 1, &name, &cfopts, &h, err);
  }
  if (cf) *cf = db ? h : NULL;
  else if (db && h) rocksdb_column_family_handle_destroy(h);
  return db;
}

/* psd_store_open_db opens RocksDB at s->dir (psd_rdb_options) with
 * bounded memory: no compression (floats do not compress), 32 MiB write
 * buffers, a small block cache (the store reads only at open). */
static int psd_store_open_db(psd_store *s, ps_errbuf *eb) {
  char *err = NULL;
  s->opts = psd_rdb_options(&err);
  if (err) return psd_store_rdb_err(eb, err, "cannot set the store's options", s->dir);
  s->bbto = rocksdb_block_based_options_create();
  s->cache = rocksdb_cache_create_lru(8u << 20);
  /* Compactions (every snapshot rewrites the chunks it holds) run at the
   * lowest CPU priority, so they take what the loop leaves. */
  s->env = rocksdb_create_default_env();
  rocksdb_env_lower_thread_pool_cpu_priority(s->env);
  rocksdb_options_set_env(s->opts, s->env);
  s->wsync = rocksdb_writeoptions_create();
  s->ro = rocksdb_readoptions_create();
  rocksdb_block_based_options_set_block_cache(s->bbto, s->cache);
  rocksdb_options_set_block_based_table_factory(s->opts, s->bbto);
  rocksdb_options_set_create_if_missing(s->opts, 1);
  rocksdb_options_set_compression(s->opts, rocksdb_no_compression);
  rocksdb_options_set_write_buffer_size(s->opts, 32u << 20);
  rocksdb_options_set_max_write_buffer_number(s->opts, 2);
  /* The memtable arena (default min(1 MiB, write buffer / 8)) gives every
   * entry over a quarter block its own malloc; a chunk record (786 KB at
   * 65536 Adam elements) is such an entry, but below psd's mmap threshold
   * (1 MiB), so a big flush put its whole copy into the writing thread's
   * malloc arena, where it stayed resident after the memtable was freed
   * (arena heaps are returned only from their top).  With 8 MiB blocks,
   * records up to 2 MiB share blocks and bigger ones are single
   * allocations, and both sizes are mmap'd and unmapped when freed. */
  rocksdb_options_set_arena_block_size(s->opts, 8u << 20);
  rocksdb_options_set_max_total_wal_size(s->opts, 256u << 20);
  rocksdb_options_set_keep_log_file_num(s->opts, 2);
  /* RocksDB's own LOG file only gets FATAL lines: its logger writes on
   * through a file writer that failed, which RocksDB 7.8 (as Debian builds
   * it, with assertions) answers by aborting the process: on a full disk
   * the background error recovery logged twice and the shard died
   * ("Assertion `sync_without_flush_called_' failed").  Errors that
   * matter come back from the calls and reach psd's own log. */
  rocksdb_options_set_info_log_level(s->opts, 4 /* FATAL */);
  rocksdb_writeoptions_set_sync(s->wsync, 1);
  rocksdb_readoptions_set_fill_cache(s->ro, 0);
  s->db = psd_rdb_open(s->opts, s->dir, 0, NULL, &err);
  if (err) return psd_store_rdb_err(eb, err, "cannot open store", s->dir);
  /* A reopen (invariant 8) must find this store, not make an empty one. */
  rocksdb_options_set_create_if_missing(s->opts, 0);
  return 0;
}

/* psd_store_read_meta reads the shard id record of DB (directory DIR)
 * and, when CLUSTER is not NULL, its cluster name: 0 when they name
 * SHARD_ID and CLUSTER (*UNNAMED 1 when the store records no cluster, one
 * from before "n", or RENAMED_FROM, not NULL: the name must be written),
 * 1 when there is no shard id (a fresh directory),
 * PS_ECONFIG for another cluster's or shard's directory, PS_EIO for a
 * foreign or unreadable one.  The cluster is checked first: a data_dir
 * copied from another cluster's file most often holds a shard of another
 * id too, and the cluster is what the operator must fix.  Thread-safe
 * (RocksDB is). */
static int psd_store_read_meta(rocksdb_t *db, const rocksdb_readoptions_t *ro, const char *dir,
                               uint32_t shard_id, const char *cluster,
                               const char *renamed_from, int *unnamed, ps_errbuf *eb) {
  char *err = NULL;
  size_t len = 0;
  *unnamed = 0;
  char *v = rocksdb_get(db, ro, "m", 1, &len, &err);
  if (err) return psd_store_rdb_err(eb, err, "cannot read store", dir);
  if (!v) return 1;
  int ok = len == 8 && memcmp(v, "psd1", 4) == 0;
  uint32_t id = ok ? psd_store_get32(v + 4) : 0;
  rocksdb_free(v);
  if (!ok) return ps_errf(eb, PS_EIO, "'%s' is not a psd store", dir);
  if (cluster) {
    v = rocksdb_get(db, ro, "n", 1, &len, &err);
    if (err) return psd_store_rdb_err(eb, err, "cannot read store", dir);
    char name[64] = "";
    ok = v && len > 0 && len < sizeof name;
    if (ok) {
      memcpy(name, v, len);
      name[len] = '\0';
      ok = ps_name_valid(name);
    }
    if (v) rocksdb_free(v);
    if (!v || (ok && renamed_from && !strcmp(name, renamed_from))) *unnamed = 1;
    else if (!ok) return ps_errf(eb, PS_EIO, "'%s' is not a psd store (bad cluster name record)",
                                 dir);
    else if (strcmp(name, cluster) != 0)
      return ps_errf(eb, PS_ECONFIG, "directory '%s' holds a store of cluster '%s', not of "
                     "cluster '%s' (is data_dir another cluster's? if the cluster was renamed, "
                     "start the shard once with --rename-cluster %s)", dir, name, cluster, name);
  }
  if (id != shard_id)
    return ps_errf(eb, PS_ECONFIG, "directory '%s' holds shard %" PRIu32 ", not shard %" PRIu32,
                   dir, id, shard_id);
  return 0;
}

/* psd_store_meta checks that the directory belongs to this cluster and
 * shard (or to cluster RENAMED_FROM, not NULL), or claims a fresh one
 * (and records the cluster in one from before "n" or of RENAMED_FROM).  0, PS_ECONFIG for another cluster's or shard's
 * directory, PS_EIO for a foreign or unreadable one. */
static int psd_store_meta(psd_store *s, const char *renamed_from, ps_errbuf *eb) {
  int unnamed;
  int rc = psd_store_read_meta(s->db, s->ro, s->dir, s->shard_id, s->cluster, renamed_from,
                               &unnamed, eb);
  if (rc < 0 || (rc == 0 && !unnamed)) return rc;
  char *err = NULL;
  rocksdb_writebatch_t *b = rocksdb_writebatch_create();
  if (rc > 0) {
    char meta[8] = {'p', 's', 'd', '1'};
    memcpy(meta + 4, &s->shard_id, 4);
    rocksdb_writebatch_put(b, "m", 1, meta, sizeof meta);
  }
  if (s->cluster) rocksdb_writebatch_put(b, "n", 1, s->cluster, strlen(s->cluster));
  rocksdb_write(s->db, s->wsync, b, &err);
  rocksdb_writebatch_destroy(b);
  if (err) return psd_store_rdb_err(eb, err, "cannot write store", s->dir);
  return 0;
}

/* psd_store_check_owner: see psd_store.h. */
int psd_store_check_owner(const char *dir, const char *cluster, const char *renamed_from,
                          uint32_t shard_id, ps_errbuf *eb) {
  char path[4200];
  snprintf(path, sizeof path, "%s/CURRENT", dir);
  if (access(path, F_OK) < 0) return 0; /* no store (yet), or not ours to read */
  /* RocksDB's info log goes to a directory of its own: in DIR, an open
   * moves the file there aside, a running shard's too */
  const char *tmp = getenv("TMPDIR");
  char logdir[4200];
  snprintf(logdir, sizeof logdir, "%s/psd-check.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(logdir)) {
    ps_warn("cannot check the store in '%s': no temporary directory '%s': %s", dir, logdir,
            strerror(errno));
    return 0;
  }
  char *err = NULL;
  rocksdb_options_t *o = psd_rdb_options(&err);
  int rc = 0;
  if (!err) {
    rocksdb_options_set_db_log_dir(o, logdir);
    rocksdb_options_set_info_log_level(o, 4 /* FATAL */);
    rocksdb_t *db = psd_rdb_open(o, dir, 1, NULL, &err);
    if (db) {
      rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
      int unnamed;
      rc = psd_store_read_meta(db, ro, dir, shard_id, cluster, renamed_from, &unnamed, eb);
      if (rc != PS_ECONFIG) rc = 0;
      rocksdb_readoptions_destroy(ro);
      rocksdb_close(db);
    }
  }
  if (err) rocksdb_free(err);
  rocksdb_options_destroy(o);
  DIR *d = opendir(logdir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
  }
  rmdir(logdir);
  return rc;
}

typedef int psd_store_visit_fn(psd_store *s, const char *key, size_t klen, const char *val,
                               size_t vlen, rocksdb_writebatch_t *junk, ps_errbuf *eb);

/* psd_store_scan calls FN for every record whose key starts with PREFIX
 * (2 bytes); stops at the first error. */
static int psd_store_scan(psd_store *s, const char *prefix, psd_store_visit_fn *fn,
                          rocksdb_writebatch_t *junk, ps_errbuf *eb) {
  rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ro);
  int rc = 0;
  for (rocksdb_iter_seek(it, prefix, 2); rc == 0 && rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
    size_t klen, vlen;
    const char *k = rocksdb_iter_key(it, &klen);
    if (klen < 2 || memcmp(k, prefix, 2) != 0) break;
    const char *v = rocksdb_iter_value(it, &vlen);
    rc = fn(s, k, klen, v, vlen, junk, eb);
  }
  char *err = NULL;
  rocksdb_iter_get_error(it, &err);
  rocksdb_iter_destroy(it);
  if (err) {
    if (rc == 0) return psd_store_rdb_err(eb, err, "cannot read store", s->dir);
    rocksdb_free(err);
  }
  return rc;
}

/* psd_store_visit_registry restores one "r/" record: a model without data. */
static int psd_store_visit_registry(psd_store *s, const char *k, size_t klen, const char *v,
                                    size_t vlen, rocksdb_writebatch_t *junk, ps_errbuf *eb) {
  (void)junk;
  if (vlen < 8) return ps_errf(eb, PS_EIO, "'%s': corrupt registry entry '%.*s'", s->dir, (int)klen - 2, k + 2);
  uint8_t *packed = malloc(vlen - 8 ? vlen - 8 : 1);
  if (!packed) return ps_errf(eb, PS_ENOMEM, "out of memory");
  memcpy(packed, v + 8, vlen - 8);
  uint64_t gen = psd_store_get64(v);
  psd_model *m;
  int rc = psd_model_new(s, packed, vlen - 8, gen, &m, eb);
  if (rc < 0) {
    char why[sizeof eb->msg];
    memcpy(why, eb->msg, sizeof why);
    return ps_errf(eb, PS_EIO, "'%s': registry entry '%.*s': %s", s->dir, (int)klen - 2, k + 2, why);
  }
  if ((rc = psd_store_add(s, m, eb)) < 0) psd_model_free(m);
  if (gen >= s->next_gen) s->next_gen = gen + 1;
  return rc;
}

/* A "v/" record: gen, version and the byte counters (psd_store_vrec). */
#define PSD_VREC_LEN 32

/* psd_store_vrec writes M's "v/" value into V (PSD_VREC_LEN bytes). */
static void psd_store_vrec(const psd_model *m, uint8_t *v) {
  psd_store_put64(v, m->gen);
  psd_store_put64(v + 8, m->version);
  psd_store_put64(v + 16, m->bytes_raw);
  psd_store_put64(v + 24, m->bytes_wire);
}

/* psd_store_visit_version restores one "v/" record (stale gens ignored). */
static int psd_store_visit_version(psd_store *s, const char *k, size_t klen, const char *v,
                                   size_t vlen, rocksdb_writebatch_t *junk, ps_errbuf *eb) {
  psd_model *m = psd_store_find(s, k + 2, klen - 2, NULL);
  if (vlen != 16 && vlen != PSD_VREC_LEN)
    return ps_errf(eb, PS_EIO, "'%s': corrupt version of '%.*s'", s->dir, (int)klen - 2, k + 2);
  if (!m) {
    rocksdb_writebatch_delete(junk, k, klen);
    return 0;
  }
  if (psd_store_get64(v) != m->gen) return 0;
  m->version = psd_store_get64(v + 8);
  if (vlen == PSD_VREC_LEN) {
    m->bytes_raw = psd_store_get64(v + 16);
    m->bytes_wire = psd_store_get64(v + 24);
  }
  return 0;
}

/* psd_store_visit_chunk restores one "c/" record into its model; records
 * of unknown models or stale gens go to JUNK (deleted after the scan);
 * chunks no longer placed here are left alone. */
static int psd_store_visit_chunk(psd_store *s, const char *k, size_t klen, const char *v,
                                 size_t vlen, rocksdb_writebatch_t *junk, ps_errbuf *eb) {
  const char *nul = memchr(k + 2, '\0', klen - 2);
  if (!nul || (size_t)(k + klen - nul) != 13)
    return ps_errf(eb, PS_EIO, "'%s': corrupt chunk key", s->dir);
  uint64_t gen = 0;
  uint32_t id = 0;
  for (int i = 1; i <= 8; i++) gen = gen << 8 | (uint8_t)nul[i];
  for (int i = 9; i <= 12; i++) id = id << 8 | (uint8_t)nul[i];
  if (gen >= s->next_gen) s->next_gen = gen + 1;
  psd_model *m = psd_store_find(s, k + 2, (size_t)(nul - k - 2), NULL);
  if (!m || m->gen != gen) {
    rocksdb_writebatch_delete(junk, k, klen);
    return 0;
  }
  if (id >= m->layout.nchunks) return ps_errf(eb, PS_EIO, "'%s': model '%s' has no chunk %" PRIu32, s->dir, m->spec->name, id);
  const ps_chunk *ch = &m->layout.chunks[id];
  if (ch->shard != s->shard_index) return 0;
  size_t bytes = (size_t)ch->len * (1 + m->slots) * sizeof(float);
  size_t hdr = vlen == PSD_HDR_V1 + bytes ? PSD_HDR_V1 : PSD_HDR;
  if (vlen != hdr + bytes || psd_store_get32(v) != ch->len || psd_store_get32(v + 4) != m->slots)
    return ps_errf(eb, PS_EIO, "'%s': corrupt record of chunk %" PRIu32 " of model '%s'", s->dir, id,
                   m->spec->name);
  psd_cstate *c = &m->chunks[id];
  memcpy(c->data, v + hdr, bytes);
  c->seq = hdr == PSD_HDR ? psd_store_get64(v + 16) : 0;
  /* A restored chunk that is not finite (written before updates were
   * checked) keeps unbounded bounds: every push to it is tried first. */
  psd_optim_measure(&m->optim, c->data, ch->len, &c->bound);
  c->step = psd_store_get64(v + 8);
  c->filled = 1;
  return 0;
}

/* psd_store_read_log_seq reads the "w" record (absent: 0). */
static int psd_store_read_log_seq(psd_store *s, ps_errbuf *eb) {
  char *err = NULL;
  size_t len = 0;
  char *v = rocksdb_get(s->db, s->ro, "w", 1, &len, &err);
  if (err) return psd_store_rdb_err(eb, err, "cannot read store", s->dir);
  int ok = !v || len == 8;
  if (v && ok) s->log_seq = s->log_seq_flushed = psd_store_get64(v);
  rocksdb_free(v);
  return ok ? 0 : ps_errf(eb, PS_EIO, "'%s': corrupt redo log position", s->dir);
}

/* psd_store_restore loads the registry, versions and chunk records, fills
 * chunks never flushed from their initializers, and deletes junk. */
static int psd_store_restore(psd_store *s, ps_errbuf *eb) {
  rocksdb_writebatch_t *junk = rocksdb_writebatch_create();
  int rc = psd_store_read_log_seq(s, eb);
  if (rc == 0) rc = psd_store_scan(s, "r/", psd_store_visit_registry, junk, eb);
  if (rc == 0) rc = psd_store_scan(s, "v/", psd_store_visit_version, junk, eb);
  if (rc == 0) rc = psd_store_scan(s, "c/", psd_store_visit_chunk, junk, eb);
  for (size_t i = 0; rc == 0 && i < s->nmodels; i++) rc = psd_model_fill(s->models[i], eb);
  if (rc == 0 && rocksdb_writebatch_count(junk) > 0) {
    char *err = NULL;
    rocksdb_write(s->db, s->wsync, junk, &err);
    if (err) rc = psd_store_rdb_err(eb, err, "cannot write store", s->dir);
  }
  rocksdb_writebatch_destroy(junk);
  return rc;
}

/* psd_store_lock_dir: see psd_store.h. */
int psd_store_lock_dir(const char *dir, int *fd, ps_errbuf *eb) {
  *fd = -1;
  int rc = psd_store_mkdirs(dir, eb);
  if (rc < 0) return rc;
  char path[4200];
  snprintf(path, sizeof path, "%s/" PSD_STORE_LOCK, dir);
  /* a file opened for writing: NFS turns flock into a POSIX lock, which
   * needs that; the directory itself when the file cannot be made (a
   * full disk) */
  int d = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (d < 0) d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) return ps_errf(eb, PS_EIO, "cannot open '%s': %s", dir, strerror(errno));
  if (flock(d, LOCK_EX | LOCK_NB) == 0) {
    *fd = d;
    return 0;
  }
  int e = errno;
  close(d);
  if (e == EWOULDBLOCK)
    return ps_errf(eb, PS_ELOCKED, "data_dir '%s' is in use by another psd (a second start of "
                   "this shard, or another shard given the same data_dir)", dir);
  /* no lock on this filesystem: RocksDB's own lock still guards the store */
  ps_warn("cannot lock data_dir '%s' (%s): going on without the guard against a second psd",
          dir, strerror(e));
  return 0;
}

/* psd_store_open: see psd_store.h. */
int psd_store_open(psd_store **out, const psd_store_opts *o, ps_errbuf *eb) {
  *out = NULL;
  if (!o->dir || !o->shard_ids || o->nshards == 0 || o->shard_index >= o->nshards)
    return ps_errf(eb, PS_EINVAL, "bad store options (directory, shard %" PRIu32 " of %zu)",
                   o->shard_index, o->nshards);
  psd_store *s = calloc(1, sizeof *s);
  if (!s) return ps_errf(eb, PS_ENOMEM, "out of memory");
  pthread_mutex_init(&s->mu, NULL);
  s->dir = strdup(o->dir);
  s->cluster = o->cluster ? strdup(o->cluster) : NULL;
  s->shard_ids = malloc(o->nshards * sizeof *s->shard_ids);
  if (!s->dir || !s->shard_ids || (o->cluster && !s->cluster)) {
    psd_store_close(s);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  memcpy(s->shard_ids, o->shard_ids, o->nshards * sizeof *s->shard_ids);
  s->nshards = o->nshards;
  s->shard_index = o->shard_index;
  s->shard_id = o->shard_ids[o->shard_index];
  s->chunk_elems = o->chunk_elems;
  s->max_bytes = o->max_bytes;
  s->next_gen = 1;
  int rc = psd_store_mkdirs(s->dir, eb);
  if (rc == 0) rc = psd_store_open_db(s, eb);
  if (rc == 0) { /* a snapshot file a crash left before it was moved in */
    char path[4200];
    snprintf(path, sizeof path, "%s/" PSD_SNAP_TMP, s->dir);
    unlink(path);
  }
  if (rc == 0) rc = psd_store_meta(s, o->renamed_from, eb);
  if (rc == 0) rc = psd_store_restore(s, eb);
  if (rc < 0) {
    psd_store_close(s);
    return rc;
  }
  /* What was accepted before stays (the budget may have shrunk since). */
  uint64_t held = psd_store_bytes(s);
  if (s->max_bytes && held > s->max_bytes) {
    char h[32], b[32];
    ps_warn("store '%s': its models hold %s, over shard %" PRIu32 "'s budget of %s "
            "(limits.max_shard_bytes): they are kept, new models are refused", s->dir,
            psd_store_size(h, held), s->shard_id, psd_store_size(b, s->max_bytes));
  }
  *out = s;
  return 0;
}

/* psd_store_close: see psd_store.h. */
void psd_store_close(psd_store *s) {
  if (!s) return;
  for (size_t i = 0; i < s->nmodels; i++) psd_model_free(s->models[i]);
  free(s->models);
  if (s->db) rocksdb_close(s->db);
  if (s->ro) rocksdb_readoptions_destroy(s->ro);
  if (s->wsync) rocksdb_writeoptions_destroy(s->wsync);
  if (s->opts) rocksdb_options_destroy(s->opts);
  if (s->bbto) rocksdb_block_based_options_destroy(s->bbto);
  if (s->cache) rocksdb_cache_destroy(s->cache);
  if (s->env) rocksdb_env_destroy(s->env);
  free(s->shard_ids);
  free(s->cluster);
  free(s->dir);
  free(s->scratch);
  free(s->decoded);
  free(s->trial);
  free(s->after);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* ---- submit --------------------------------------------------------------- */

/* psd_store_pack packs SPEC with chunk_elems resolved (invariant 7) into
 * a new buffer *OUT (caller frees).  0 or PS_ENOMEM / PS_EINVAL. */
static int psd_store_pack(const psd_store *s, const Ps__ModelSpec *spec, uint8_t **out,
                          size_t *len, ps_errbuf *eb) {
  Ps__ModelSpec copy = *spec;
  if (!copy.chunk_elems) copy.chunk_elems = s->chunk_elems;
  if (ps_name_check("model", copy.name, eb) < 0) return PS_EINVAL;
  *len = ps__model_spec__get_packed_size(&copy);
  *out = malloc(*len ? *len : 1);
  if (!*out) return ps_errf(eb, PS_ENOMEM, "out of memory");
  ps__model_spec__pack(&copy, *out);
  return 0;
}

/* psd_store_write_registry writes M's "r/" and "v/" records synced, after
 * deleting every chunk record of the name when REPLACE. */
static int psd_store_write_registry(psd_store *s, const psd_model *m, int replace, ps_errbuf *eb) {
  char k[PSD_KEY_MAX], k2[PSD_KEY_MAX];
  rocksdb_writebatch_t *b = rocksdb_writebatch_create();
  if (replace) {
    size_t n = psd_store_key(k, 'c', m->spec->name);
    memcpy(k2, k, n);
    k[n] = '\0';
    k2[n] = '\1';
    rocksdb_writebatch_delete_range(b, k, n + 1, k2, n + 1);
  }
  uint8_t gv[PSD_VREC_LEN];
  psd_store_vrec(m, gv);
  size_t n = psd_store_key(k, 'r', m->spec->name);
  const char *vals[] = {(const char *)gv, (const char *)m->packed};
  size_t lens[] = {8, m->packed_len};
  const char *keys[] = {k};
  rocksdb_writebatch_putv(b, 1, keys, &n, 2, vals, lens);
  n = psd_store_key(k, 'v', m->spec->name);
  rocksdb_writebatch_put(b, k, n, (const char *)gv, sizeof gv);
  char *err = NULL;
  rocksdb_write(s->db, s->wsync, b, &err);
  rocksdb_writebatch_destroy(b);
  if (!err) return 0;
  s->db_failed = 1; /* invariant 8; a flush may be using the handle now */
  return psd_store_rdb_err(eb, err, "cannot write store", s->dir);
}

/* psd_store_counts writes what M holds here to the optional outputs. */
static void psd_store_counts(const psd_model *m, uint32_t *nchunks, uint64_t *nparams) {
  if (nchunks) *nchunks = (uint32_t)m->nheld;
  if (nparams) *nparams = m->held_elems;
}

/* psd_store_replaces: see psd_store.h. */
int psd_store_replaces(const psd_store *s, const Ps__ModelSpec *spec) {
  if (!spec || !spec->name) return 0;
  psd_model *old = psd_store_find(s, spec->name, strlen(spec->name), NULL);
  uint8_t *packed = NULL;
  size_t len = 0;
  ps_errbuf eb;
  if (!old || psd_store_pack(s, spec, &packed, &len, &eb) < 0) return 0;
  int differs = old->packed_len != len || memcmp(old->packed, packed, len) != 0;
  free(packed);
  return differs;
}

/* psd_store_submit: see psd_store.h. */
int psd_store_submit(psd_store *s, const Ps__ModelSpec *spec, int replace, int *created,
                     uint32_t *nchunks, uint64_t *nparams, ps_errbuf *eb) {
  if (created) *created = 0;
  if (!spec) return ps_errf(eb, PS_EINVAL, "no model spec");
  uint8_t *packed = NULL;
  size_t len = 0;
  int rc = psd_store_pack(s, spec, &packed, &len, eb); /* checks the name the next quotes */
  if (rc < 0) return rc;
  /* a submitted graph only: one stored by an older psd still restores */
  if ((rc = ps_modelspec_graph_check(spec, eb)) < 0) {
    free(packed);
    return rc;
  }
  size_t idx = 0;
  psd_model *old = psd_store_find(s, spec->name, strlen(spec->name), &idx);
  if (old && old->packed_len == len && memcmp(old->packed, packed, len) == 0) {
    free(packed);
    psd_store_counts(old, nchunks, nparams);
    return 0;
  }
  if (old && !replace) {
    free(packed);
    return ps_errf(eb, PS_EEXIST, "model '%s' exists with a different spec", spec->name);
  }
  if (!s->db || s->db_failed) {
    free(packed);
    return ps_errf(eb, PS_EDEGRADED, "store '%s' is closed after a failed write: model '%s' can "
                   "be registered once a flush succeeds", s->dir, spec->name);
  }
  if ((rc = psd_store_budget(s, spec, len, old, eb)) < 0) {
    free(packed);
    return rc;
  }
  psd_model *m;
  if ((rc = psd_model_new(s, packed, len, s->next_gen, &m, eb)) < 0) return rc;
  if ((rc = psd_model_fill(m, eb)) < 0 ||
      (rc = psd_store_write_registry(s, m, old != NULL, eb)) < 0) {
    psd_model_free(m);
    return rc;
  }
  s->next_gen++;
  int made = old ? 2 : 1; /* *CREATED: see psd_store.h */
  pthread_mutex_lock(&s->mu); /* a flush's thread may be looking for models */
  if (old) {
    psd_model_free(old);
    s->models[idx] = m;
  } else if ((rc = psd_store_add(s, m, eb)) < 0) {
    psd_model_free(m); /* registered on disk; restored at the next open */
  }
  pthread_mutex_unlock(&s->mu);
  if (rc < 0) return rc;
  if (created) *created = made;
  psd_store_counts(m, nchunks, nparams);
  return 0;
}

/* psd_store_spec: see psd_store.h. */
const Ps__ModelSpec *psd_store_spec(const psd_store *s, const char *model) {
  psd_model *m = model ? psd_store_find(s, model, strlen(model), NULL) : NULL;
  return m ? m->spec : NULL;
}

/* ---- push and pull -------------------------------------------------------- */

/* psd_store_check_ids checks that IDS are a non-empty duplicate-free list
 * of chunks of M held here, and sums their elements.  0, PS_EINVAL,
 * PS_ENOENT, PS_ENOMEM. */
static int psd_store_check_ids(const psd_store *s, const psd_model *m, const uint32_t *ids,
                               size_t nids, uint64_t *nelems, ps_errbuf *eb) {
  const char *name = m->spec->name;
  if (nids == 0 || !ids) return ps_errf(eb, PS_EINVAL, "no chunk ids for model '%s'", name);
  uint8_t *seen = calloc(m->layout.nchunks / 8 + 1, 1);
  if (!seen) return ps_errf(eb, PS_ENOMEM, "out of memory");
  uint64_t total = 0;
  int rc = 0;
  for (size_t i = 0; i < nids && rc == 0; i++) {
    uint32_t id = ids[i];
    if (id >= m->layout.nchunks)
      rc = ps_errf(eb, PS_ENOENT, "model '%s' has no chunk %" PRIu32 " (shard %" PRIu32 ")", name,
                   id, s->shard_id);
    else if (!m->chunks[id].data)
      rc = ps_errf(eb, PS_ENOENT, "chunk %" PRIu32 " of model '%s' is not on shard %" PRIu32, id,
                   name, s->shard_id);
    else if (seen[id / 8] & (1u << (id % 8)))
      rc = ps_errf(eb, PS_EINVAL, "duplicate chunk %" PRIu32 " of model '%s'", id, name);
    else {
      seen[id / 8] |= (uint8_t)(1u << (id % 8));
      total += m->layout.chunks[id].len;
    }
  }
  free(seen);
  if (rc == 0) *nelems = total;
  return rc;
}

/* psd_store_codec_check refuses an unknown codec, for a pull one that is
 * not fp32, fp16 or int8, and for a new push (not REPLAY) one the model
 * does not push in.  The shard enforces the model's codec (README
 * "Gradient compression"): fp32 (the warm-up, and any uncompressed push)
 * or the one codec a compressed push of the model names (push_wire).
 * Another is a worker that fetched the model before a replace changed
 * its codec: PS_EINVAL, which makes it ask for the spec again and stop
 * (psw_refused).  A replayed push was taken when it came. */
static int psd_store_codec_check(const psd_model *m, ps_codec_id c, int push, uint64_t replay,
                                 ps_errbuf *eb) {
  if (!ps_codec_valid(c))
    return ps_errf(eb, PS_EINVAL, "%s to model '%s': unknown codec %u", push ? "push" : "pull",
                   m->spec->name, (unsigned)c);
  if (!push && c > PS_CODEC_INT8)
    return ps_errf(eb, PS_EINVAL, "pull of model '%s': codec '%s' is for gradients (fp32, fp16 "
                   "or int8 for values)", m->spec->name, ps_codec_name(c));
  ps_codec_id want = m->layout.push_wire;
  if (push && !replay && c != PS_CODEC_FP32 && c != want)
    return ps_errf(eb, PS_EINVAL,
                   "push to model '%s' came in %s, but its pushes are %s%s; was the model "
                   "replaced with another codec? start its workers again (nothing applied)",
                   m->spec->name, ps_codec_name(c), ps_codec_name(want),
                   want == PS_CODEC_FP32 ? "" : " or fp32");
  return 0;
}

/* psd_store_payload_at is psd_store_payload, for the replay of log
 * record REPLAY when not 0. */
static int psd_store_payload_at(const psd_store *s, const ps_req *r, int push, uint64_t replay,
                                uint64_t *nelems, uint64_t *nbytes, ps_errbuf *eb) {
  const psd_model *m = psd_store_model(s, r->model, eb);
  if (!m) return PS_ENOENT;
  int rc = psd_store_codec_check(m, r->codec, push, replay, eb);
  if (rc == 0) rc = psd_store_check_ids(s, m, r->ids, r->nids, nelems, eb);
  if (rc == 0) *nbytes = ps_layout_payload_bytes(&m->layout, r->ids, r->nids, r->codec, push);
  return rc;
}

/* psd_store_payload: see psd_store.h. */
int psd_store_payload(const psd_store *s, const ps_req *r, int push, uint64_t *nelems,
                      uint64_t *nbytes, ps_errbuf *eb) {
  return psd_store_payload_at(s, r, push, 0, nelems, nbytes, eb);
}

/* psd_tau_bucket returns the histogram bucket of TAU: 0, 1, 2, 3-4, 5-8,
 * 9-16, >16. */
unsigned psd_tau_bucket(uint64_t tau) {
  static const uint64_t upper[PSD_TAU_BUCKETS - 1] = {0, 1, 2, 4, 8, 16};
  for (unsigned i = 0; i < PSD_TAU_BUCKETS - 1; i++)
    if (tau <= upper[i]) return i;
  return PSD_TAU_BUCKETS - 1;
}

/* psd_store_grow returns BUF (of *CAP elements of SIZE bytes) grown to
 * hold N, updating *CAP; NULL when out of memory (BUF is then kept).
 * Callers store the result back: `if (!(p = grow(b, ...))) fail; b = p`. */
static void *psd_store_grow(void *buf, size_t *cap, size_t n, size_t size) {
  if (buf && n <= *cap) return buf;
  if (n == 0) n = 1; /* NULL means out of memory, never "empty" */
  void *p = realloc(buf, n * size);
  if (p) *cap = n;
  return p;
}

/* psd_store_weighted returns G (LEN floats, LEN <= scratch_cap) scaled by
 * W, in the store's scratch buffer. */
static const float *psd_store_weighted(psd_store *s, const float *g, uint32_t len, float w) {
  for (uint32_t i = 0; i < len; i++) s->scratch[i] = g[i] * w;
  return s->scratch;
}

/* psd_store_norm returns the L2 norm of N floats at G (in double, four
 * sums so the adds overlap). */
static double psd_store_norm(const float *g, uint32_t n) {
  double a[4] = {0, 0, 0, 0};
  uint32_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; k++) a[k] += (double)g[i + k] * g[i + k];
  for (; i < n; i++) a[0] += (double)g[i] * g[i];
  return sqrt(a[0] + a[1] + a[2] + a[3]);
}

/* psd_store_check_chunk checks the push of gradient G (weighted by W) to
 * chunk ID of M before anything changes: finite, of a norm within CLIP
 * (0: not checked), and an update that leaves every value finite (by the
 * chunk's bounds, or else tried on a copy).  Writes the chunk's bounds
 * after the update to *AFTER.  0 or PS_EINVAL / PS_ENOMEM with a
 * message. */
static int psd_store_check_chunk(psd_store *s, const psd_model *m, uint32_t id, const float *g,
                                 float w, double clip, psd_optim_bounds *after, ps_errbuf *eb) {
  const psd_cstate *c = &m->chunks[id];
  uint32_t len = m->layout.chunks[id].len;
  float gmax = psd_optim_absmax(g, len);
  if (!isfinite(gmax))
    return ps_errf(eb, PS_EINVAL, "gradient of chunk %" PRIu32 " of model '%s' is not finite", id,
                   m->spec->name);
  if (clip > 0) {
    double norm = psd_store_norm(g, len);
    if (norm > clip * (1 + 1e-3)) /* room for the worker's float rounding */
      return ps_errf(eb, PS_EINVAL,
                     "gradient of chunk %" PRIu32 " of model '%s' has norm %g, over its clip_norm "
                     "%g%s", id, m->spec->name, norm, (double)m->spec->clip_norm,
                     clip > m->spec->clip_norm ? " times the workers summed" : "");
  }
  if (psd_optim_predict(&m->optim, &c->bound, (double)gmax * w, c->step + 1, after)) return 0;
  /* Not certain: try the update on a copy of the chunk. */
  size_t n = (size_t)len * (1 + m->slots);
  float *trial = psd_store_grow(s->trial, &s->trial_cap, n, sizeof(float));
  if (!trial)
    return ps_errf(eb, PS_ENOMEM, "out of memory checking a push to '%s'", m->spec->name);
  s->trial = trial;
  memcpy(s->trial, c->data, n * sizeof(float));
  const float *gw = w != 1.0f ? psd_store_weighted(s, g, len, w) : g;
  psd_optim_apply(&m->optim, s->trial, s->trial + len, gw, len, c->step + 1);
  if (psd_optim_measure(&m->optim, s->trial, len, after) < 0)
    return ps_errf(eb, PS_EINVAL,
                   "push to chunk %" PRIu32 " of model '%s' would make a parameter or optimizer "
                   "state non-finite (largest |gradient| %g); refused, nothing changed",
                   id, m->spec->name, (double)gmax);
  return 0;
}

/* ---- redo log ------------------------------------------------------------ */

enum { PSD_LOG_PUSH = 1, PSD_LOG_PUSH_CODED = 3, PSD_LOG_FIXED = 2 + 8 + 4 + 8 + 8 + 4 + 8 };

/* psd_store_log_push hands the record of checked push R to M to the log
 * hook (the ids and payload are not copied here) and records its seq:
 * R's payload as received when its codec made it smaller than its
 * NELEMS floats (kind 3), else GRADS, the floats (kind 1).  OWN: R's own
 * block when the record's last piece is R's payload as received. */
static int psd_store_log_push(psd_store *s, const psd_model *m, const ps_req *r,
                              const float *grads, uint64_t nelems, ps_errbuf *eb) {
  int coded = r->codec != PS_CODEC_FP32 && r->nbytes < nelems * 4;
  const void *payload = coded ? r->grads : (const void *)grads;
  uint64_t nbytes = coded ? r->nbytes : nelems * 4;
  void **own = payload == r->grads && r->own_cap ? r->own : NULL;
  uint8_t h[PSD_LOG_FIXED + 4 + 256];
  size_t nl = strlen(m->spec->name), n = 0;
  uint32_t n32 = (uint32_t)r->nids, c32 = (uint32_t)r->codec;
  h[n++] = coded ? PSD_LOG_PUSH_CODED : PSD_LOG_PUSH;
  h[n++] = (uint8_t)nl;
  memcpy(h + n, m->spec->name, nl);
  n += nl;
  psd_store_put64(h + n, m->gen);
  memcpy(h + n + 8, &r->worker, 4);
  psd_store_put64(h + n + 12, r->clock);
  psd_store_put64(h + n + 20, r->version);
  memcpy(h + n + 28, &n32, 4);
  psd_store_put64(h + n + 32, coded ? nbytes : nelems);
  n += 40;
  if (coded) {
    memcpy(h + n, &c32, 4);
    n += 4;
  }
  struct iovec iov[3] = {{h, n}, {(void *)r->ids, r->nids * 4}, {(void *)payload, nbytes}};
  uint64_t seq;
  int rc = s->log_fn(s->log_arg, iov, 3, own, own ? r->own_cap : NULL, own ? r->lend : NULL, &seq,
                     eb);
  if (rc == 0) s->log_seq = seq;
  return rc;
}

/* psd_store_set_log: see psd_store.h. */
void psd_store_set_log(psd_store *s, psd_store_log_fn *fn, void *arg) {
  s->log_fn = fn;
  s->log_arg = arg;
}

/* psd_store_log_seq: see psd_store.h. */
uint64_t psd_store_log_seq(const psd_store *s) { return s->log_seq; }

/* psd_store_log_note: see psd_store.h. */
void psd_store_log_note(psd_store *s, uint64_t seq) {
  if (seq > s->log_seq) s->log_seq = seq;
}

/* psd_store_get_id reads the 8-byte id under KEY into *ID (0: none). */
static int psd_store_get_id(psd_store *s, const char *key, uint64_t *id, ps_errbuf *eb) {
  char *err = NULL;
  size_t len = 0;
  *id = 0;
  char *v = rocksdb_get(s->db, s->ro, key, 1, &len, &err);
  if (err) return psd_store_rdb_err(eb, err, "cannot read store", s->dir);
  if (!v) return 0;
  int ok = len == 8;
  if (ok) memcpy(id, v, 8);
  rocksdb_free(v);
  if (!ok)
    return ps_errf(eb, PS_EIO, "store '%s': its redo log id is %zu bytes, not 8", s->dir, len);
  return 0;
}

/* psd_store_log_id: see psd_store.h. */
int psd_store_log_id(psd_store *s, uint64_t *id, int *pending, ps_errbuf *eb) {
  uint64_t a = 0;
  int rc = psd_store_get_id(s, "i", id, eb);
  if (rc == 0) rc = psd_store_get_id(s, "a", &a, eb);
  *pending = rc == 0 && *id && a == *id;
  return rc;
}

/* psd_store_set_log_id: see psd_store.h.  One synced batch: the id and
 * its pending mark come and go together with it. */
int psd_store_set_log_id(psd_store *s, uint64_t id, int pending, ps_errbuf *eb) {
  char *err = NULL;
  rocksdb_writebatch_t *b = rocksdb_writebatch_create();
  rocksdb_writebatch_put(b, "i", 1, (const char *)&id, 8);
  if (pending) rocksdb_writebatch_put(b, "a", 1, (const char *)&id, 8);
  else rocksdb_writebatch_delete(b, "a", 1);
  rocksdb_write(s->db, s->wsync, b, &err);
  rocksdb_writebatch_destroy(b);
  return err ? psd_store_rdb_err(eb, err, "cannot write store", s->dir) : 0;
}

static int psd_store_push_at(psd_store *s, const ps_req *r, uint64_t replay, uint64_t *version,
                             ps_errbuf *eb);

/* psd_store_replay: see psd_store.h.  Ids and gradients are copied out
 * of the record (it is not aligned for floats). */
int psd_store_replay(psd_store *s, uint64_t seq, const uint8_t *rec, size_t len, ps_errbuf *eb) {
  int coded = len && rec[0] == PSD_LOG_PUSH_CODED;
  size_t fixed = PSD_LOG_FIXED + (coded ? 4 : 0);
  if (len < fixed || (rec[0] != PSD_LOG_PUSH && !coded) || len < fixed + rec[1])
    return ps_errf(eb, PS_EIO, "redo log record %" PRIu64 " does not decode", seq);
  size_t nl = rec[1];
  const uint8_t *p = rec + 2 + nl;
  uint64_t gen = psd_store_get64(p), clock = psd_store_get64(p + 12);
  uint64_t seen = psd_store_get64(p + 20), nelems = psd_store_get64(p + 32);
  uint32_t worker = psd_store_get32(p + 8), nids = psd_store_get32(p + 28);
  uint32_t codec = coded ? psd_store_get32(p + 40) : PS_CODEC_FP32;
  uint64_t nbytes = coded ? nelems : nelems * 4; /* kind 3's field is the payload's bytes */
  /* nelems first: its x 4 must not wrap round to the record's size */
  if (nelems > len / (coded ? 1 : 4) || (uint64_t)nids * 4 + nbytes != len - fixed - nl ||
      !ps_codec_valid(codec))
    return ps_errf(eb, PS_EIO, "redo log record %" PRIu64 " does not decode", seq);
  p += fixed - PSD_LOG_FIXED;
  psd_model *m = psd_store_find(s, (const char *)rec + 2, nl, NULL);
  if (!m || gen > m->gen)
    return ps_errf(eb, PS_EIO, "redo log record %" PRIu64 " is a push to model '%.*s'%s, which "
                   "store '%s' does not hold: its snapshot is missing or from elsewhere; "
                   "refusing to start", seq, (int)nl, (const char *)rec + 2,
                   m ? " (a newer incarnation)" : "", s->dir);
  s->log_seq = seq;
  if (gen < m->gen) return 0; /* the model was replaced after this push */
  uint32_t *ids = malloc(nids ? (size_t)nids * 4 : 1);
  float *g = malloc(nbytes ? nbytes : 1);
  int rc = ids && g ? 0 : ps_errf(eb, PS_ENOMEM, "out of memory replaying the redo log");
  if (rc == 0) {
    memcpy(ids, p + 40, (size_t)nids * 4);
    memcpy(g, p + 40 + (size_t)nids * 4, nbytes);
    char name[256];
    memcpy(name, rec + 2, nl);
    name[nl] = '\0';
    /* the gradients as floats (kind 1), or as received (kind 3: the push
     * path checks and decodes them again) */
    ps_req r = {.model = name, .ids = ids, .nids = nids, .worker = worker, .clock = clock,
                .version = seen, .codec = (ps_codec_id)codec, .grads = g, .nbytes = nbytes};
    rc = psd_store_push_at(s, &r, seq, NULL, eb);
    if (rc < 0) {
      char why[sizeof eb->msg];
      memcpy(why, eb->msg, sizeof why);
      rc = ps_errf(eb, PS_EIO, "redo log record %" PRIu64 " does not apply: %s", seq, why);
    }
  }
  free(ids);
  free(g);
  return rc;
}

/* psd_store_decode checks every encoded chunk of push R to M (IDS
 * checked, R->nbytes matching) and points *OUT at the gradients as
 * floats: R's own bytes when all of it is fp32, else decoded into
 * s->decoded.  0, PS_EINVAL (a bad encoding), PS_ENOMEM. */
static int psd_store_decode(psd_store *s, const psd_model *m, const ps_req *r, uint64_t nelems,
                            const float **out, ps_errbuf *eb) {
  *out = r->grads;
  if (r->codec == PS_CODEC_FP32) return 0;
  const uint8_t *in = r->grads;
  char what[160];
  for (size_t i = 0; i < r->nids; i++) {
    uint32_t id = r->ids[i], len = m->layout.chunks[id].len;
    ps_codec_id c = ps_layout_chunk_codec(&m->layout, id, r->codec, 1);
    uint64_t sz = ps_codec_size(c, len, m->layout.topk);
    snprintf(what, sizeof what, "push to chunk %" PRIu32 " of model '%s'", id, m->spec->name);
    int rc = ps_codec_check(c, in, sz, len, m->layout.topk, what, eb);
    if (rc < 0) return rc;
    in += sz;
  }
  float *d = psd_store_grow(s->decoded, &s->decoded_cap, nelems, sizeof(float));
  if (!d) return ps_errf(eb, PS_ENOMEM, "out of memory decoding a push to '%s'", m->spec->name);
  s->decoded = d;
  in = r->grads;
  for (size_t i = 0; i < r->nids; i++) {
    uint32_t id = r->ids[i], len = m->layout.chunks[id].len;
    ps_codec_id c = ps_layout_chunk_codec(&m->layout, id, r->codec, 1);
    ps_codec_decode(c, in, len, m->layout.topk, d);
    in += ps_codec_size(c, len, m->layout.topk);
    d += len;
  }
  *out = s->decoded;
  return 0;
}

/* psd_store_push: see psd_store.h. */
int psd_store_push(psd_store *s, const ps_req *r, uint64_t *version, ps_errbuf *eb) {
  return psd_store_push_at(s, r, 0, version, eb);
}

/* psd_store_push_at applies a push: a new one when REPLAY is 0 (logged,
 * decoded to float32, when the store has a log), else the replay of log
 * record REPLAY, which leaves alone the chunks whose snapshot holds it
 * already (invariant 9).  Everything is checked before the first chunk
 * changes (invariant 2). */
static int psd_store_push_at(psd_store *s, const ps_req *r, uint64_t replay, uint64_t *version,
                             ps_errbuf *eb) {
  psd_model *m = psd_store_model(s, r->model, eb);
  if (!m) return PS_ENOENT;
  const uint32_t *ids = r->ids;
  size_t nids = r->nids;
  uint64_t nelems, want;
  int rc = psd_store_payload_at(s, r, 1, replay, &nelems, &want, eb);
  if (rc < 0) return rc;
  if (r->nbytes != want || (want && !r->grads))
    return ps_errf(eb, PS_EINVAL,
                   "push to model '%s': %" PRIu64 " bytes of %s, its %" PRIu64 " elements need %" PRIu64,
                   r->model, r->nbytes, ps_codec_name(r->codec), nelems, want);
  const float *grads;
  if ((rc = psd_store_decode(s, m, r, nelems, &grads, eb)) < 0) return rc;
  /* tau: updates applied since the version the gradients were computed
   * on (a version from before a restore or replace counts as fresh). */
  uint64_t tau = r->version <= m->version ? m->version - r->version : 0;
  float w = m->inverse ? 1.0f / (1.0f + (float)tau) : 1.0f;
  uint32_t maxlen = 0;
  for (size_t i = 0; i < nids; i++)
    if (m->layout.chunks[ids[i]].len > maxlen) maxlen = m->layout.chunks[ids[i]].len;
  float *scratch = psd_store_grow(s->scratch, &s->scratch_cap, maxlen, sizeof(float));
  if (scratch) s->scratch = scratch;
  psd_optim_bounds *after = psd_store_grow(s->after, &s->after_cap, nids, sizeof *after);
  if (after) s->after = after;
  if (!scratch || !after) return ps_errf(eb, PS_ENOMEM, "out of memory for a push to '%s'", r->model);
  /* Each worker clips its own gradient: an aggregator's sum of N may be N
   * times as long.  A replayed push passed this when it came (its record
   * does not say how many it summed). */
  double clip = replay ? 0 : (double)m->spec->clip_norm * (r->nsummed > 1 ? (double)r->nsummed : 1);
  const float *g = grads;
  for (size_t i = 0; i < nids; i++) {
    if ((!replay || m->chunks[ids[i]].seq < replay) &&
        (rc = psd_store_check_chunk(s, m, ids[i], g, w, clip, &s->after[i], eb)) < 0)
      return rc;
    g += m->layout.chunks[ids[i]].len;
  }
  if (!replay && s->log_fn && (rc = psd_store_log_push(s, m, r, grads, nelems, eb)) < 0)
    return rc;
  uint64_t seq = replay ? replay : s->log_seq;
  if (!replay) m->tau_hist[psd_tau_bucket(tau)]++; /* pushes received since the store opened */
  g = grads;
  pthread_mutex_lock(&s->mu); /* a flush's thread may be reading a chunk */
  for (size_t i = 0; i < nids; i++) {
    uint32_t len = m->layout.chunks[ids[i]].len;
    psd_cstate *c = &m->chunks[ids[i]];
    if (replay && c->seq >= replay) { /* the snapshot holds this push here */
      g += len;
      continue;
    }
    c->step++;
    c->seq = seq;
    c->bound = s->after[i];
    const float *gw = w != 1.0f ? psd_store_weighted(s, g, len, w) : g;
    psd_optim_apply(&m->optim, c->data, c->data + len, gw, len, c->step);
    if (!c->dirty) {
      c->dirty = 1;
      m->ndirty++;
    }
    g += len;
  }
  pthread_mutex_unlock(&s->mu);
  m->version++;
  m->version_dirty = 1;
  if (!replay) { /* what travelled, not what the log gave back */
    m->bytes_raw += nelems * sizeof(float);
    m->bytes_wire += r->nbytes;
  }
  if (version) *version = m->version;
  return 0;
}

/* psd_store_pull: see psd_store.h. */
int psd_store_pull(psd_store *s, const ps_req *r, uint64_t *version, ps_errbuf *eb) {
  psd_model *m = psd_store_model(s, r->model, eb);
  if (!m) return PS_ENOENT;
  uint64_t nelems, want;
  int rc = psd_store_payload(s, r, 0, &nelems, &want, eb);
  if (rc < 0) return rc;
  if (r->nbytes != want || (want && !r->out))
    return ps_errf(eb, PS_EINVAL, "pull of model '%s': room for %" PRIu64 " bytes, %" PRIu64
                   " needed", r->model, r->nbytes, want);
  uint8_t *out = r->out;
  for (size_t i = 0; i < r->nids; i++) {
    uint32_t id = r->ids[i], len = m->layout.chunks[id].len;
    ps_codec_id c = ps_layout_chunk_codec(&m->layout, id, r->codec, 0);
    ps_codec_encode(c, m->chunks[id].data, len, m->layout.topk, out);
    out += ps_codec_size(c, len, m->layout.topk);
  }
  m->bytes_raw += nelems * sizeof(float);
  m->bytes_wire += r->nbytes;
  m->bytes_dirty = 1;
  if (version) *version = m->version;
  return 0;
}

/* psd_store_pull_view: see psd_store.h. */
int psd_store_pull_view(psd_store *s, const ps_req *r, struct iovec *seg, size_t max,
                        size_t *nseg, uint64_t *version, ps_errbuf *eb) {
  psd_model *m = psd_store_model(s, r->model, eb);
  if (!m) return PS_ENOENT;
  uint64_t nelems, want;
  int rc = psd_store_payload(s, r, 0, &nelems, &want, eb);
  if (rc < 0) return rc;
  if (r->nids > max) return 0;
  for (size_t i = 0; i < r->nids; i++) {
    uint32_t id = r->ids[i];
    if (ps_layout_chunk_codec(&m->layout, id, r->codec, 0) != PS_CODEC_FP32) return 0;
    seg[i] = (struct iovec){m->chunks[id].data, (size_t)m->layout.chunks[id].len * sizeof(float)};
  }
  *nseg = r->nids;
  m->bytes_raw += nelems * sizeof(float);
  m->bytes_wire += want;
  m->bytes_dirty = 1;
  if (version) *version = m->version;
  return 1;
}

/* psd_store_held: see psd_store.h. */
int psd_store_held(const psd_store *s, const char *model, const uint32_t **ids, size_t *nids,
                   uint64_t *nelems) {
  psd_model *m = model ? psd_store_find(s, model, strlen(model), NULL) : NULL;
  if (!m) return PS_ENOENT;
  if (ids) *ids = m->held;
  if (nids) *nids = m->nheld;
  if (nelems) *nelems = m->held_elems;
  return 0;
}

/* ---- status --------------------------------------------------------------- */

size_t psd_store_nmodels(const psd_store *s) { return s->nmodels; }

/* psd_store_model_info fills INFO for model I (< psd_store_nmodels). */
void psd_store_model_info(const psd_store *s, size_t i, psd_model_info *info) {
  const psd_model *m = s->models[i];
  info->name = m->spec->name;
  info->chunks = (uint32_t)m->nheld;
  info->params = m->held_elems;
  info->version = m->version;
  info->spec = m->spec;
  memcpy(info->tau_hist, m->tau_hist, sizeof info->tau_hist);
  info->bytes_raw = m->bytes_raw;
  info->bytes_wire = m->bytes_wire;
}

/* psd_store_disk_bytes: see psd_store.h. */
uint64_t psd_store_disk_bytes(const psd_store *s) { return psd_dir_bytes(s->dir); }

/* psd_dir_bytes: see psd_store.h. */
uint64_t psd_dir_bytes(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  uint64_t total = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
      total += (uint64_t)st.st_blocks * 512; /* what they take: preallocated space too */
  }
  closedir(d);
  return total;
}

/* psd_store_dirty: 1 when a flush has something to write. */
int psd_store_dirty(const psd_store *s) {
  for (size_t i = 0; i < s->nmodels; i++)
    if (s->models[i]->ndirty || s->models[i]->version_dirty) return 1;
  return 0;
}

/* ---- flush ---------------------------------------------------------------- */

/* psd_flush_free frees F.  NULL is fine. */
static void psd_flush_free(psd_flush *f) {
  if (!f) return;
  if (f->tail) rocksdb_writebatch_destroy(f->tail);
  free(f->chunks);
  free(f->vgens);
  free(f);
}

/* psd_flush_model lists M's dirty chunks in F and puts its version into
 * F's tail, marking them clean; nothing is copied (invariant 9). */
static void psd_flush_model(psd_flush *f, psd_model *m) {
  for (size_t i = 0; i < m->nheld && m->ndirty; i++) {
    uint32_t id = m->held[i];
    psd_cstate *c = &m->chunks[id];
    if (!c->dirty) continue;
    f->chunks[f->nchunks++] = (psd_flush_ref){m->gen, id};
    c->dirty = 0;
    m->ndirty--;
  }
  if (m->version_dirty || m->bytes_dirty) { /* pulls alone do not make a flush */
    char k[PSD_KEY_MAX];
    uint8_t gv[PSD_VREC_LEN];
    psd_store_vrec(m, gv);
    size_t klen = psd_store_key(k, 'v', m->spec->name);
    rocksdb_writebatch_put(f->tail, k, klen, (const char *)gv, sizeof gv);
    f->vgens[f->nvgens++] = m->gen;
    m->version_dirty = m->bytes_dirty = 0;
  }
}

static int psd_model_name_cmp(const void *a, const void *b) {
  return strcmp((*(psd_model *const *)a)->spec->name, (*(psd_model *const *)b)->spec->name);
}

/* psd_flush_prepare: see psd_store.h. */
int psd_flush_prepare(psd_store *s, psd_flush **out, ps_errbuf *eb) {
  *out = NULL;
  if (s->db_failed) { /* no flush is in flight now: close what a submit failed on */
    rocksdb_close(s->db);
    s->db = NULL;
    s->db_failed = 0;
    ps_warn("store '%s' closed after a failed write; this flush reopens it", s->dir);
  }
  size_t nchunks = 0;
  for (size_t i = 0; i < s->nmodels; i++) nchunks += s->models[i]->ndirty;
  /* A closed store flushes even with nothing dirty: reopening it is what
   * says that the directory is writable again. */
  if (s->db && nchunks == 0 && !psd_store_dirty(s) && s->log_seq == s->log_seq_flushed) return 0;
  psd_flush *f = calloc(1, sizeof *f);
  if (f) {
    f->chunks = malloc((nchunks ? nchunks : 1) * sizeof *f->chunks);
    f->vgens = malloc((s->nmodels ? s->nmodels : 1) * sizeof *f->vgens);
  }
  if (!f || !f->chunks || !f->vgens) {
    psd_flush_free(f);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  f->store = s;
  f->db = s->db;
  f->reopen = s->db == NULL;
  f->opts = s->opts;
  f->ro = s->ro;
  f->shard_id = s->shard_id;
  f->cluster = s->cluster;
  f->wsync = s->wsync;
  f->dir = s->dir;
  f->tail = rocksdb_writebatch_create();
  /* The SST file takes keys in order: models by name ("c/" and "v/" keys
   * start with it), each model's chunks by id (held is increasing). */
  psd_model **byname = malloc((s->nmodels ? s->nmodels : 1) * sizeof *byname);
  if (!byname) {
    psd_flush_free(f);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  memcpy(byname, s->models, s->nmodels * sizeof *byname);
  if (s->nmodels > 1) qsort(byname, s->nmodels, sizeof *byname, psd_model_name_cmp);
  for (size_t i = 0; i < s->nmodels; i++) psd_flush_model(f, byname[i]);
  free(byname);
  /* The snapshot holds every push applied so far (its chunks may hold
   * later ones too, each saying so): replay starts right after this. */
  uint8_t ls[8];
  f->log_seq = s->log_seq;
  psd_store_put64(ls, s->log_seq);
  rocksdb_writebatch_put(f->tail, "w", 1, (const char *)ls, sizeof ls);
  *out = f;
  return 0;
}

/* psd_flush_log_seq: see psd_store.h. */
uint64_t psd_flush_log_seq(const psd_flush *f) { return f->log_seq; }

/* psd_flush_set_durable: see psd_store.h. */
void psd_flush_set_durable(psd_flush *f, psd_flush_durable_fn *fn, void *arg) {
  f->durable = fn;
  f->durable_arg = arg;
}

/* psd_flush_reopen opens the closed store's directory into F->db and
 * checks that it still holds this shard (invariant 8); on error F->db
 * stays NULL. */
static int psd_flush_reopen(psd_flush *f, ps_errbuf *eb) {
  char *err = NULL;
  rocksdb_t *db = psd_rdb_open(f->opts, f->dir, 0, NULL, &err);
  if (err) return psd_store_rdb_err(eb, err, "cannot reopen store", f->dir);
  int unnamed;
  int rc = psd_store_read_meta(db, f->ro, f->dir, f->shard_id, f->cluster, NULL, &unnamed, eb);
  if (rc > 0) rc = ps_errf(eb, PS_EIO, "'%s' no longer holds shard %" PRIu32 "'s store", f->dir,
                           f->shard_id);
  if (rc < 0) {
    rocksdb_close(db);
    return rc;
  }
  f->db = db;
  return 0;
}

/* psd_flush_take copies chunk REF's record, as the chunk is now, into
 * *BUF (grown as needed; under the store's mutex, invariant 10) and
 * writes its key to K; returns the record's length, or 0 for a chunk
 * whose model was replaced or dropped since the prepare (skipped) or when
 * out of memory (*NOMEM set). */
static size_t psd_flush_take(psd_store *s, const psd_flush_ref *ref, char *k, size_t *klen,
                             uint8_t **buf, size_t *cap, int *nomem) {
  size_t n = 0;
  pthread_mutex_lock(&s->mu);
  psd_model *m = NULL;
  for (size_t i = 0; i < s->nmodels && !m; i++)
    if (s->models[i]->gen == ref->gen) m = s->models[i];
  const psd_cstate *c = m ? &m->chunks[ref->id] : NULL;
  if (c && c->data) {
    uint32_t len = m->layout.chunks[ref->id].len, slots = m->slots;
    size_t bytes = (size_t)len * (1 + slots) * sizeof(float);
    uint8_t *b = psd_store_grow(*buf, cap, PSD_HDR + bytes, 1);
    if (b) {
      *buf = b;
      memcpy(b, &len, 4);
      memcpy(b + 4, &slots, 4);
      psd_store_put64(b + 8, c->step);
      psd_store_put64(b + 16, c->seq);
      memcpy(b + PSD_HDR, c->data, bytes);
      *klen = psd_store_chunk_key(k, m->spec->name, m->gen, ref->id);
      n = PSD_HDR + bytes;
    } else {
      *nomem = 1;
    }
  }
  pthread_mutex_unlock(&s->mu);
  return n;
}

typedef struct psd_flush_tail {
  rocksdb_sstfilewriter_t *w;
  char *err;
} psd_flush_tail;

/* psd_flush_tail_put adds one record of a flush's tail to its SST file. */
static void psd_flush_tail_put(void *arg, const char *k, size_t klen, const char *v, size_t vlen) {
  psd_flush_tail *t = arg;
  if (!t->err) rocksdb_sstfilewriter_put(t->w, k, klen, v, vlen, &t->err);
}

static void psd_flush_tail_delete(void *arg, const char *k, size_t klen) {
  (void)arg, (void)k, (void)klen; /* a tail holds puts only */
}

/* psd_flush_sst writes the snapshot F into the SST file PATH: every chunk
 * record (in key order: the prepare sorted them), then the tail (versions
 * and "w", also in key order).  0 or an error naming the store. */
static int psd_flush_sst(psd_flush *f, const char *path, ps_errbuf *eb) {
  rocksdb_envoptions_t *env = rocksdb_envoptions_create();
  rocksdb_sstfilewriter_t *w = rocksdb_sstfilewriter_create(env, f->opts);
  char *err = NULL;
  rocksdb_sstfilewriter_open(w, path, &err);
  uint8_t *buf = NULL;
  size_t cap = 0;
  int nomem = 0;
  for (size_t i = 0; i < f->nchunks && !err && !nomem; i++) {
    char k[PSD_KEY_MAX];
    size_t klen = 0;
    size_t n = psd_flush_take(f->store, &f->chunks[i], k, &klen, &buf, &cap, &nomem);
    if (n && psd_store_get64(buf + 16) > f->max_seq) f->max_seq = psd_store_get64(buf + 16);
    if (n) rocksdb_sstfilewriter_put(w, k, klen, (const char *)buf, n, &err);
  }
  free(buf);
  psd_flush_tail t = {w, NULL};
  if (!err && !nomem) {
    rocksdb_writebatch_iterate(f->tail, &t, psd_flush_tail_put, psd_flush_tail_delete);
    err = t.err;
  }
  if (!err && !nomem) rocksdb_sstfilewriter_finish(w, &err); /* synced */
  rocksdb_sstfilewriter_destroy(w);
  rocksdb_envoptions_destroy(env);
  if (nomem) return ps_errf(eb, PS_ENOMEM, "out of memory flushing store '%s'", f->dir);
  return err ? psd_store_rdb_err(eb, err, "cannot flush store", f->dir) : 0;
}

/* psd_flush_write: see psd_store.h.  Touches F, RocksDB (which is
 * thread-safe), its own file and, under the store's mutex, the chunks
 * (invariant 10), so it may run beside the loop thread. */
int psd_flush_write(psd_flush *f, ps_errbuf *eb) {
  int rc = f->reopen ? psd_flush_reopen(f, eb) : 0;
  if (rc < 0) return rc;
  char path[4200];
  snprintf(path, sizeof path, "%s/" PSD_SNAP_TMP, f->dir);
  rc = psd_flush_sst(f, path, eb);
  if (rc == 0 && f->durable) /* invariant 11 */
    rc = f->durable(f->durable_arg, f->max_seq > f->log_seq ? f->max_seq : f->log_seq, eb);
  if (rc == 0) {
    char *err = NULL;
    const char *files[] = {path};
    rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
    rocksdb_ingestexternalfileoptions_set_move_files(io, 1);
    rocksdb_ingest_external_file(f->db, files, 1, io, &err);
    rocksdb_ingestexternalfileoptions_destroy(io);
    if (err) rc = psd_store_rdb_err(eb, err, "cannot flush store", f->dir);
  }
  unlink(path); /* moved in on success (a link, removed here), or a partial file */
  return rc;
}

/* psd_flush_finish: see psd_store.h.  On failure, chunks and versions of
 * models still present (same gen) are marked dirty again, and the handle
 * the write used is closed (invariant 8); on success a reopened handle
 * becomes the store's. */
void psd_flush_finish(psd_store *s, psd_flush *f, int status) {
  if (!f) return;
  if (status < 0 && f->db) {
    if (!f->reopen) s->db = NULL;
    rocksdb_close(f->db);
    /* a full disk fails every retry (each flush_interval_ms): said at the
     * first and every 60th in a row, as psd_main says the flush's error */
    if (s->fail_closes++ % 60 == 0)
      ps_warn("store '%s' closed after a failed flush (%" PRIu32 " in a row); the next flush "
              "reopens it", s->dir, s->fail_closes);
  } else if (status == 0 && f->reopen) {
    s->db = f->db;
    ps_info("store '%s' reopened", s->dir);
  }
  if (status == 0) s->fail_closes = 0;
  if (status == 0) s->log_seq_flushed = f->log_seq;
  for (size_t i = 0; status < 0 && i < f->nchunks; i++)
    for (size_t j = 0; j < s->nmodels; j++) {
      psd_model *m = s->models[j];
      if (m->gen != f->chunks[i].gen) continue;
      psd_cstate *c = &m->chunks[f->chunks[i].id];
      if (c->data && !c->dirty) {
        c->dirty = 1;
        m->ndirty++;
      }
    }
  for (size_t i = 0; status < 0 && i < f->nvgens; i++)
    for (size_t j = 0; j < s->nmodels; j++)
      if (s->models[j]->gen == f->vgens[i]) s->models[j]->version_dirty = 1;
  psd_flush_free(f);
}

/* psd_store_flush: prepare, write and finish in a row; 0 or the write's
 * error (the snapshot stays dirty then).  This flush (the final one, and
 * the one after a replay) also writes byte counters that only pulls
 * moved, which the periodic flushes leave for the next push. */
int psd_store_flush(psd_store *s, ps_errbuf *eb) {
  for (size_t i = 0; i < s->nmodels; i++)
    if (s->models[i]->bytes_dirty) s->models[i]->version_dirty = 1;
  psd_flush *f;
  int rc = psd_flush_prepare(s, &f, eb);
  if (rc < 0 || !f) return rc;
  rc = psd_flush_write(f, eb);
  psd_flush_finish(s, f, rc);
  return rc;
}

/* psd_store_chunk_state: see psd_store.h. */
int psd_store_chunk_state(const psd_store *s, const char *model, uint32_t id,
                          const float **data, uint32_t *len, unsigned *slots, uint64_t *step) {
  const psd_model *m = model ? psd_store_find(s, model, strlen(model), NULL) : NULL;
  if (!m || id >= m->layout.nchunks || !m->chunks[id].data) return PS_ENOENT;
  if (data) *data = m->chunks[id].data;
  if (len) *len = m->layout.chunks[id].len;
  if (slots) *slots = m->slots;
  if (step) *step = m->chunks[id].step;
  return 0;
}
