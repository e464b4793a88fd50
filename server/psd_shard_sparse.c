/* psd_shard_sparse: the shard's sparse tables (see psd_shard_sparse.h). */
#include "psd_shard_sparse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.pb-c.h"
#include "ps_codec.h"
#include "ps_model.h"
#include "ps_place.h"
#include "psd_sparse.h"
#include "psd_store.h"

/* One table's placement: which buckets are this shard's. */
typedef struct sps_map {
  char model[64];
  uint32_t table;
  uint64_t seed;                       /* ps_place_row_seed */
  uint16_t shard[PS_PLACE_ROW_BUCKETS];/* bucket -> shard index */
} sps_map;

struct psd_shard_sparse {
  psd_sparse *rows;
  uint64_t log_from;                   /* the log position the rows on disk hold */
  sps_map *maps;
  size_t nmaps;
};

/* sps_graph unpacks SPEC's graph (caller frees with
 * ps__graph__graph__free_unpacked), or NULL when it has none or it does
 * not parse (psd_store does not look at graphs). */
static Ps__Graph__Graph *sps_graph(const Ps__ModelSpec *spec) {
  if (!spec->graph.len) return NULL;
  return ps__graph__graph__unpack(NULL, spec->graph.len, spec->graph.data);
}

/* sps_table_opts describes parameter I of G in SPEC as a table. */
static psd_sparse_table_opts sps_table_opts(const Ps__ModelSpec *spec, const Ps__Graph__Graph *g,
                                            size_t i) {
  const Ps__Graph__Param *p = g->params[i];
  psd_sparse_table_opts t = {.model = spec->name, .table = (uint32_t)i,
                             .dim = p->n_shape == 1 ? p->shape[0] : 0, .init = p->init,
                             .scale = p->scale, .seed = spec->seed, .optim = spec->optimizer};
  return t;
}

static const sps_map *sps_find(const struct psd_shard_sparse *sp, const char *model, uint32_t t) {
  for (size_t i = 0; i < sp->nmaps; i++)
    if (sp->maps[i].table == t && !strcmp(sp->maps[i].model, model)) return &sp->maps[i];
  return NULL;
}

/* sps_add_map records the placement of table T of MODEL (once). */
static int sps_add_map(psd_shard *sh, const char *model, uint32_t t) {
  struct psd_shard_sparse *sp = sh->sparse;
  if (sps_find(sp, model, t)) return 0;
  sps_map *m = realloc(sp->maps, (sp->nmaps + 1) * sizeof *m);
  if (!m) return PS_ENOMEM;
  sp->maps = m;
  m += sp->nmaps;
  uint32_t ids[1024];
  size_t n = sh->cfg->nshards < 1024 ? sh->cfg->nshards : 1024;
  for (size_t i = 0; i < n; i++) ids[i] = sh->cfg->shards[i].id;
  snprintf(m->model, sizeof m->model, "%s", model);
  m->table = t;
  m->seed = ps_place_row_seed(model, t);
  ps_place_row_map(model, t, ids, n, m->shard);
  sp->nmaps++;
  return 0;
}

/* sps_table_fn: what psd_shard_sparse_check and _add do to the
 * embedding parameter I of G. */
typedef int (*sps_table_fn)(psd_shard *sh, const Ps__ModelSpec *spec, const Ps__Graph__Graph *g,
                            size_t i, ps_errbuf *eb);

/* sps_each_table runs FN on every embedding parameter of SPEC's graph
 * until one fails. */
static int sps_each_table(psd_shard *sh, const Ps__ModelSpec *spec, sps_table_fn fn,
                          ps_errbuf *eb) {
  if (!sh->sparse || !spec->graph.len) return 0;
  Ps__Graph__Graph *g = sps_graph(spec);
  if (!g) return ps_errf(eb, PS_EINVAL, "model '%s': its graph does not parse", spec->name);
  int rc = 0;
  for (size_t i = 0; i < g->n_params && !rc; i++)
    if (g->params[i]->sparse) rc = fn(sh, spec, g, i, eb);
  ps__graph__graph__free_unpacked(g, NULL);
  return rc;
}

/* sps_check_table: a table that exists must keep its dim; a new one
 * needs a good shape and initializer. */
static int sps_check_table(psd_shard *sh, const Ps__ModelSpec *spec, const Ps__Graph__Graph *g,
                           size_t i, ps_errbuf *eb) {
  psd_sparse_table_opts t = sps_table_opts(spec, g, i);
  uint32_t dim;
  if (psd_sparse_dim(sh->sparse->rows, spec->name, (uint32_t)i, &dim, NULL) == 0 && dim != t.dim)
    return ps_errf(eb, PS_ENOTSUP, "model '%s': sparse table %zu exists with dim %u, and a "
                   "model's tables cannot be replaced: submit the new model under another name",
                   spec->name, i, dim);
  if (!t.dim || t.dim > 65536 || g->params[i]->n_shape != 1)
    return ps_errf(eb, PS_EINVAL, "model '%s': embedding table '%s' must have shape [dim], dim 1..65536",
                   spec->name, g->params[i]->name);
  if (*g->params[i]->init && !ps_init_known(g->params[i]->init))
    return ps_errf(eb, PS_EINVAL, "model '%s': table '%s': unknown initializer '%s'", spec->name,
                   g->params[i]->name, g->params[i]->init);
  return 0;
}

/* sps_add_table registers the table and its placement. */
static int sps_add_table(psd_shard *sh, const Ps__ModelSpec *spec, const Ps__Graph__Graph *g,
                         size_t i, ps_errbuf *eb) {
  psd_sparse_table_opts t = sps_table_opts(spec, g, i);
  int rc = psd_sparse_add_table(sh->sparse->rows, &t, eb);
  if (!rc && sps_add_map(sh, spec->name, (uint32_t)i))
    rc = ps_errf(eb, PS_ENOMEM, "model '%s': out of memory", spec->name);
  return rc;
}

int psd_shard_sparse_check(psd_shard *sh, const Ps__ModelSpec *spec, ps_errbuf *eb) {
  return sps_each_table(sh, spec, sps_check_table, eb);
}

size_t psd_shard_sparse_tables(const Ps__ModelSpec *spec) {
  Ps__Graph__Graph *g = spec && spec->graph.len ? sps_graph(spec) : NULL;
  size_t n = 0;
  for (size_t i = 0; g && i < g->n_params; i++) n += g->params[i]->sparse != 0;
  if (g) ps__graph__graph__free_unpacked(g, NULL);
  return n;
}

int psd_shard_sparse_add(psd_shard *sh, const Ps__ModelSpec *spec, ps_errbuf *eb) {
  return sps_each_table(sh, spec, sps_add_table, eb);
}

int psd_shard_sparse_open(psd_shard *sh, ps_errbuf *eb) {
  char dir[4200];
  if (snprintf(dir, sizeof dir, "%s/sparse", sh->me->data_dir) >= (int)sizeof dir)
    return ps_errf(eb, PS_EINVAL, "data_dir '%s' is too long", sh->me->data_dir);
  struct psd_shard_sparse *sp = calloc(1, sizeof *sp);
  if (!sp) return ps_errf(eb, PS_ENOMEM, "out of memory");
  psd_sparse_opts o = {.dir = dir, .memory_rows = sh->cfg->sparse.memory_rows,
                       .admit_after = sh->cfg->sparse.admit_after,
                       .max_new_rows = sh->cfg->sparse.max_new_rows};
  int rc = psd_sparse_open(&sp->rows, &o, eb);
  if (rc) {
    free(sp);
    return rc;
  }
  sh->sparse = sp;
  for (size_t i = 0; i < psd_store_nmodels(sh->store) && !rc; i++) {
    psd_model_info mi;
    psd_store_model_info(sh->store, i, &mi);
    rc = psd_shard_sparse_add(sh, mi.spec, eb);
  }
  /* before the redo log's replay: the store's position is its snapshot's */
  if (!rc) rc = psd_sparse_log_start(sp->rows, psd_store_log_seq(sh->store), &sp->log_from, eb);
  if (rc) psd_shard_sparse_close(sh);
  return rc;
}

void psd_shard_sparse_close(psd_shard *sh) {
  if (!sh->sparse) return;
  psd_sparse_close(sh->sparse->rows);
  free(sh->sparse->maps);
  free(sh->sparse);
  sh->sparse = NULL;
}

psd_sparse *psd_shard_sparse_rows(const psd_shard *sh) {
  return sh->sparse ? sh->sparse->rows : NULL;
}

void psd_shard_sparse_status(psd_shard *sh, Ps__StatusReply *reply) {
  size_t n = sh->sparse ? psd_sparse_ntables(sh->sparse->rows) : 0;
  Ps__SparseTableStatus **v = n ? calloc(n, sizeof *v) : NULL;
  Ps__SparseTableStatus *t = n ? calloc(n, sizeof *t) : NULL;
  if (!v || !t) { /* status goes on without them */
    free(v);
    free(t);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    const char *model;
    uint32_t table, dim = 0;
    psd_sparse_stats st;
    psd_sparse_table_at(sh->sparse->rows, i, &model, &table);
    psd_sparse_stats_get(sh->sparse->rows, model, table, &st);
    psd_sparse_dim(sh->sparse->rows, model, table, &dim, NULL);
    ps__sparse_table_status__init(&t[i]);
    t[i].model = (char *)model, t[i].table = table, t[i].dim = dim;
    t[i].rows_mem = st.rows_mem, t[i].hits = st.hits, t[i].misses = st.misses;
    t[i].disk_reads = st.disk_reads, t[i].disk_read_bytes = st.disk_read_bytes;
    t[i].created = st.created, t[i].evictions = st.evictions, t[i].disk_writes = st.disk_writes;
    t[i].pending = st.pending, t[i].dropped_grads = st.dropped_grads;
    t[i].disk_bytes = st.disk_bytes, t[i].buffer_reads = st.buffer_reads;
    t[i].admit_bytes = st.admit_bytes;
    v[i] = &t[i];
  }
  reply->n_sparse_tables = n;
  reply->sparse_tables = v;
}

void psd_shard_sparse_status_release(Ps__StatusReply *reply) {
  if (reply->n_sparse_tables) free(reply->sparse_tables[0]);
  free(reply->sparse_tables);
  reply->sparse_tables = NULL;
  reply->n_sparse_tables = 0;
}

int psd_shard_sparse_flush(psd_shard *sh, ps_errbuf *eb) {
  return sh->sparse ? psd_sparse_flush(sh->sparse->rows, psd_store_log_seq(sh->store), eb) : 0;
}

uint64_t psd_shard_sparse_log_from(const psd_shard *sh) {
  return sh->sparse ? sh->sparse->log_from : UINT64_MAX;
}

void psd_shard_sparse_set_log(psd_shard *sh, psd_sparse_log_fn *fn, void *arg) {
  if (sh->sparse) psd_sparse_set_log(sh->sparse->rows, fn, arg);
}

void psd_shard_sparse_set_durable(psd_shard *sh, psd_sparse_durable_fn *fn, void *arg) {
  if (sh->sparse) psd_sparse_set_durable(sh->sparse->rows, fn, arg);
}

int psd_shard_sparse_replay(psd_shard *sh, uint64_t seq, const uint8_t *rec, size_t len,
                            ps_errbuf *eb) {
  if (!sh->sparse)
    return ps_errf(eb, PS_EIO, "redo log record %llu is a sparse push, but shard %u has no "
                   "sparse tables open", (unsigned long long)seq, sh->me->id);
  int rc = psd_sparse_replay(sh->sparse->rows, seq, rec, len, eb);
  if (!rc) psd_store_log_note(sh->store, seq);
  return rc;
}

int psd_shard_sparse_snapshot(psd_shard *sh, int *persist, uint64_t *seq, ps_errbuf *eb) {
  *persist = 0;
  *seq = UINT64_MAX;
  if (!sh->sparse) return 0;
  *seq = psd_store_log_seq(sh->store);
  return psd_sparse_snapshot(sh->sparse->rows, *seq, persist, eb);
}

int psd_shard_sparse_persist(psd_shard *sh, ps_errbuf *eb) {
  return sh->sparse ? psd_sparse_persist(sh->sparse->rows, eb) : 0;
}

void psd_shard_sparse_persist_failed(psd_shard *sh) {
  if (sh->sparse) psd_sparse_persist_failed(sh->sparse->rows);
}

/* sps_worker checks a request's worker id: one the clock table takes
 * (psd_clock_check_worker: ranks past workers.count too, as registration
 * hands them out), or below workers.count on a shard without one. */
static int sps_worker(const psd_shard *sh, uint32_t worker, ps_errbuf *eb) {
  if (sh->clock) return psd_clock_check_worker(sh->clock, worker, eb);
  if (worker < sh->cfg->workers.count) return 0;
  return ps_errf(eb, PS_EINVAL, "worker %u is not one of the cluster's %u", worker,
                 sh->cfg->workers.count);
}

/* sps_request checks what pulls and pushes share: the shard takes it,
 * the worker is one of the cluster's, the table exists here, every key
 * is this shard's, and NKEYS rows fit max_request_bytes; *DIM receives
 * the row width. */
static int sps_request(psd_shard *sh, int push, const char *model, uint32_t table,
                       const uint64_t *keys, size_t nkeys, uint32_t worker, uint32_t *dim,
                       ps_errbuf *eb) {
  int rc = psd_shard_admit(sh, push, eb);
  if (rc) return rc;
  if (!sh->sparse) rc = ps_errf(eb, PS_EUNAVAIL, "shard %u has no sparse tables open", sh->me->id);
  else rc = sps_worker(sh, worker, eb);
  if (!rc && psd_sparse_dim(sh->sparse->rows, model, table, dim, NULL))
    rc = ps_errf(eb, PS_ENOENT, "model '%s' has no sparse table %u here", model, table);
  else if (!rc && (uint64_t)nkeys * *dim * sizeof(float) > sh->cfg->max_request_bytes)
    rc = ps_errf(eb, PS_ETOOBIG, "%zu rows of %u floats exceed max_request_bytes %llu", nkeys,
                 *dim, (unsigned long long)sh->cfg->max_request_bytes);
  const sps_map *m = rc ? NULL : sps_find(sh->sparse, model, table);
  for (size_t i = 0; m && i < nkeys && !rc; i++) {
    uint16_t s = m->shard[ps_place_row_bucket(m->seed, keys[i])];
    if (s != sh->index)
      rc = ps_errf(eb, PS_EINVAL, "key %llu of table %u belongs to shard %u, not %u",
                   (unsigned long long)keys[i], table, sh->cfg->shards[s].id, sh->me->id);
  }
  if (rc) psd_shard_count_error(sh);
  return rc;
}

/* sps_codec checks a request's row codec (fp32, fp16, int8). */
static int sps_codec(psd_shard *sh, const char *what, uint32_t codec, ps_errbuf *eb) {
  if (codec == PS_CODEC_FP32 || codec == PS_CODEC_FP16 || codec == PS_CODEC_INT8) return 0;
  psd_shard_count_error(sh);
  return ps_errf(eb, PS_EINVAL, "sparse %s: codec %u (%s) is not a row codec (fp32, fp16, int8)",
                 what, codec, ps_codec_name(codec < PS_CODEC_N ? (ps_codec_id)codec : PS_CODEC_N));
}

int psd_shard_sparse_pull(psd_shard *sh, const Ps__SparsePullRequest *r, uint8_t **rows,
                          size_t *nbytes, ps_errbuf *eb) {
  uint32_t dim = 0;
  *rows = NULL;
  int rc = sps_codec(sh, "pull", r->codec, eb);
  if (!rc) rc = sps_request(sh, 0, r->model, r->table, r->keys, r->n_keys, r->worker, &dim, eb);
  if (rc) return rc;
  size_t n = r->n_keys * dim, rb = ps_codec_size((ps_codec_id)r->codec, dim, 0);
  float *v = malloc((n ? n : 1) * sizeof(float));
  if (!v) rc = ps_errf(eb, PS_ENOMEM, "out of memory for %zu rows", r->n_keys);
  if (!rc) rc = psd_sparse_pull(sh->sparse->rows, r->model, r->table, r->keys, r->n_keys, v, n, eb);
  if (!rc && r->codec != PS_CODEC_FP32) { /* rows are finite: every codec encodes them */
    uint8_t *e = malloc(r->n_keys * rb + 1);
    if (!e) rc = ps_errf(eb, PS_ENOMEM, "out of memory for %zu rows", r->n_keys);
    for (size_t i = 0; e && i < r->n_keys; i++)
      ps_codec_encode((ps_codec_id)r->codec, v + i * dim, dim, 0, e + i * rb);
    free(v);
    v = (float *)e;
  }
  if (rc) {
    free(v);
    psd_shard_count_error(sh);
    return rc;
  }
  *rows = (uint8_t *)v;
  *nbytes = r->n_keys * rb;
  sh->ctr.pulls++;
  sh->ctr.bytes_out += *nbytes;
  return 0;
}

int psd_shard_sparse_pull_admit(psd_shard *sh, const Ps__SparsePullRequest *r, psd_park *p,
                                ps_errbuf *eb) {
  uint32_t dim = 0;
  int rc = sps_codec(sh, "pull", r->codec, eb);
  if (!rc) rc = sps_request(sh, 0, r->model, r->table, r->keys, r->n_keys, r->worker, &dim, eb);
  if (rc || r->clock == PS_CLOCK_READER) return rc; /* a reader: outside the clock table */
  if ((rc = psd_shard_clock_check("sparse pull", r->model, r->clock, eb)) < 0) {
    psd_shard_count_error(sh);
    return rc;
  }
  return psd_shard_pull_admit(sh, r->model, r->worker, r->clock, p, eb); /* dense pulls' path */
}

/* sps_clock records that R's worker pushed its step R->clock where no
 * dense push of the step comes: on a shard that holds none of the
 * model's chunks (the header's "Clocks").  Where chunks are held the
 * dense push advances the clock; an advance here would let another
 * worker's pull past this step before its dense gradients are in. */
static void sps_clock(psd_shard *sh, const Ps__SparsePushRequest *r) {
  const uint32_t *ids;
  size_t nids = 0;
  uint64_t nelems;
  if (psd_store_held(sh->store, r->model, &ids, &nids, &nelems) == 0 && nids) return;
  psd_shard_pushed(sh, r->model, &r->worker, 1, r->clock);
}

int psd_shard_sparse_push(psd_shard *sh, const Ps__SparsePushRequest *r, ps_errbuf *eb) {
  uint32_t dim = 0;
  int rc = sps_codec(sh, "push", r->codec, eb);
  if (!rc) rc = sps_request(sh, 1, r->model, r->table, r->keys, r->n_keys, r->worker, &dim, eb);
  if (!rc && (rc = psd_shard_clock_check("sparse push", r->model, r->clock, eb)) < 0)
    psd_shard_count_error(sh);
  /* a worker declared dead is refused before anything is applied, as a
   * dense push is (psd_clock invariant 9) */
  if (!rc && sh->clock && (rc = psd_clock_check_live(sh->clock, r->worker, eb)) < 0)
    psd_shard_count_error(sh);
  if (rc) return rc;
  ps_codec_id codec = (ps_codec_id)r->codec;
  size_t rb = ps_codec_size(codec, dim, 0), n = r->n_keys * dim;
  if (r->rows.len != r->n_keys * rb)
    rc = ps_errf(eb, PS_EINVAL, "sparse push '%s'/%u: %zu keys of dim %u need %zu bytes of rows, "
                 "got %zu (%s)", r->model, r->table, r->n_keys, dim, r->n_keys * rb,
                 r->rows.len, ps_codec_name(codec));
  /* decoded before anything changes: a bad row (an int8 scale that is not
   * finite; NaN or Inf values are psd_sparse_push's to refuse) fails the
   * whole push.  protobuf-c's bytes need not be float-aligned: copied. */
  float *g = NULL;
  uint8_t *in = NULL;
  if (!rc && n) {
    g = malloc(n * sizeof *g);
    in = codec == PS_CODEC_FP32 ? NULL : malloc(r->rows.len);
    if (!g || (codec != PS_CODEC_FP32 && !in)) rc = ps_errf(eb, PS_ENOMEM, "out of memory");
    else if (codec == PS_CODEC_FP32) memcpy(g, r->rows.data, r->rows.len);
    else memcpy(in, r->rows.data, r->rows.len);
  }
  for (size_t i = 0; in && !rc && i < r->n_keys; i++) {
    char what[96];
    snprintf(what, sizeof what, "sparse push '%.40s'/%u: row of key %llu", r->model, r->table,
             (unsigned long long)r->keys[i]);
    rc = ps_codec_check(codec, in + i * rb, rb, dim, 0, what, eb);
    if (!rc) ps_codec_decode(codec, in + i * rb, dim, 0, g + i * dim);
  }
  free(in);
  if (!rc && r->n_keys) /* none: the step's clock alone (the header's "Clocks") */
    rc = psd_sparse_push(sh->sparse->rows, r->model, r->table, r->keys, r->n_keys, g, n, eb);
  free(g);
  if (rc) {
    psd_shard_count_error(sh);
    return rc;
  }
  sh->ctr.pushes++;
  sh->ctr.bytes_in += r->rows.len;
  sps_clock(sh, r);
  return 0;
}

int psd_shard_sparse_export(psd_shard *sh, const Ps__ExportRowsRequest *r,
                            Ps__ExportRowsReply *rep, ps_errbuf *eb) {
  uint32_t dim = 0;
  int rc = psd_shard_admit(sh, 0, eb);
  if (!rc && !sh->sparse)
    rc = ps_errf(eb, PS_EUNAVAIL, "shard %u has no sparse tables open", sh->me->id);
  else if (!rc && psd_sparse_dim(sh->sparse->rows, r->model, r->table, &dim, NULL))
    rc = ps_errf(eb, PS_ENOENT, "model '%s' has no sparse table %u here", r->model, r->table);
  if (rc) {
    psd_shard_count_error(sh);
    return rc;
  }
  size_t cap = sh->cfg->max_request_bytes / ((size_t)dim * sizeof(float) + 8);
  size_t limit = r->limit && r->limit < cap ? r->limit : cap;
  if (!limit) limit = 1;
  rep->keys = malloc(limit * sizeof *rep->keys);
  rep->rows.data = malloc(limit * dim * sizeof(float));
  size_t n = 0;
  int done = 1;
  if (!rep->keys || !rep->rows.data)
    rc = ps_errf(eb, PS_ENOMEM, "out of memory for %zu rows", limit);
  else
    rc = psd_sparse_export(sh->sparse->rows, r->model, r->table, r->resume, r->after, limit,
                           rep->keys, (float *)rep->rows.data, &n, &done, eb);
  if (rc) {
    psd_shard_sparse_export_release(rep);
    psd_shard_count_error(sh);
    return rc;
  }
  rep->n_keys = n;
  rep->rows.len = n * dim * sizeof(float);
  rep->done = done;
  rep->dim = dim;
  sh->ctr.bytes_out += rep->rows.len;
  return 0;
}

void psd_shard_sparse_export_release(Ps__ExportRowsReply *rep) {
  free(rep->keys);
  free(rep->rows.data);
  rep->keys = NULL;
  rep->rows.data = NULL;
  rep->n_keys = rep->rows.len = 0;
}
