/* psw_train: the worker's training run (see psw_train.h for the two step
 * schedules). */
#include "psw_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_codec.h"
#include "ps_gpu.h"
#include "ps_log.h"
#include "ps_model.h"
#include "ps_place.h"
#include "ps_time.h"
#include "psw_client.h"
#include "psw_coord.h"
#include "psw_data.h"
#include "psw_embed.h"
#include "psw_graph.h"
#include "psw_metric.h"
#include "psw_progress.h"
#include "psw_sparse.h"

/* An evaluation runs the test set in batches of PSW_EVAL_BATCH samples,
 * fewer where the executor's buffers and the batch's embedding rows
 * would pass PSW_EVAL_BYTES (run_eval_size): wide tables (dim up to
 * 65536) or layers would otherwise need gigabytes that a training batch
 * of a few samples never asks for. */
#define PSW_EVAL_BATCH 1024
#define PSW_EVAL_BYTES (256u << 20)
#define PSW_SEED_RANK_MIX 0x9e3779b97f4a7c15ull

/* One partition's samples inside a loaded block. */
typedef struct run_view {
  const float *x;
  const int32_t *y;
  const uint64_t *keys; /* criteo: the categorical keys, fields per sample; else NULL */
  uint64_t n;
  int loaded;
} run_view;

/* Everything one run holds; released by run_close. */
typedef struct psw_run {
  const psw_train_opts *o;
  psw_train_result *r;
  ps_gpu_backend *be;
  psw_client *cl;
  psw_coord *coord;     /* membership: registration, heartbeats */
  uint32_t epochs;      /* the job's epoch count: --epochs, or more (run_claim) */
  uint32_t rank, workers;
  uint32_t eval_batch;  /* samples per evaluation batch (run_eval_size) */
  uint32_t *parts;      /* the partitions trained in the current local epoch */
  size_t nparts;
  psw_dataset *blocks;  /* training data loaded so far, one block per load */
  size_t nblocks;
  struct run_view *views; /* per partition (data.partitions): its samples */
  uint64_t data_total;  /* samples in the (limited) training set */
  uint32_t *local;      /* fixed rank: its partitions, */
  size_t nlocal;
  uint32_t local_epoch, local_next; /* the next to train */
  double slowdown;      /* >= 1 */
  uint64_t jitter_rng;  /* run_straggle's random state */
  double blocked_ms;    /* waiting for parameters since t_train_ms */
  double report_wait_ms; /* waiting for progress reports' answers since t_train_ms */
  double t_train_ms;    /* when the first step's pull went out */
  psw_graph *g;
  psw_exec *ex;
  psw_dataset test;
  int have_test;
  uint32_t *perm;       /* the current partition's sample order this epoch */
  size_t perm_cap;
  float *xb;            /* one gathered batch of features */
  int32_t *yb;          /* ... and its labels */
  uint32_t dim;
  uint64_t steps_per_epoch;
  uint64_t clock;       /* steps completed: the worker's clock */
  int reader;           /* psw --evaluate: rows pulled at PS_CLOCK_READER */
  uint64_t clock0;      /* where it started: the slowest live clock when
                           it registered (0 in a fresh run) */
  uint64_t rejoins;     /* psw_coord_rejoins as of the last claim */
  uint64_t spec_changes; /* psw_client_spec_changes as of the last restart */
  uint64_t expired_said; /* psw_client_pushes_expired as of the last retrain said */
  double train_s;       /* seconds spent training (evaluation excluded) */
  int64_t t0_ms;
  psw_progress prog;
  /* A model with an embedding table (run_sparse_open): each batch's
   * distinct keys are pulled from the shards and their row gradients
   * pushed back, beside the dense push/pull. */
  psw_sparse *sp;       /* NULL for a dense model */
  psw_embed *pe;        /* the batch's distinct keys and bag index */
  uint32_t fields, tdim;  /* ids columns, row width */
  uint64_t hash_buckets;  /* the table's hashing trick (0: raw keys) */
  uint32_t *off;        /* identity bag offsets: one id per bag */
  uint64_t *kb;         /* one batch's keys, hashed: [batch, fields] */
  float *rows, *rgrads; /* the batch's slice of the table and its gradient */
  float *probs;         /* a batch's sigmoid outputs (psw_graph_binary), else NULL */
  /* The batch gathered ahead (run_prefetch) while the previous step's
   * push and pull were on their way: xb/yb hold samples [pre_first,
   * pre_first + pre_n) of view pre_v's order; pre_v NULL: none. */
  const struct run_view *pre_v;
  uint64_t pre_first;
  uint32_t pre_n;
} psw_run;

/* Running sums of one epoch. */
typedef struct psw_epoch_acc {
  double loss_sum;      /* sum over batches of loss * rows */
  uint64_t correct, samples;
  double train_s;
} psw_epoch_acc;

/* run_now_ms returns CLOCK_MONOTONIC milliseconds (fractional). */
static double run_now_ms(void) { return ps_now_s() * 1e3; }

/* run_block_begin starts a wait on pushes or pulls (told to the
 * heartbeats, which count a wait under way); returns its start for
 * run_block_end, which adds it to the blocked time. */
static double run_block_begin(psw_run *x) {
  double t = run_now_ms();
  psw_coord_blocked(x->coord, t / 1e3);
  return t;
}

static void run_block_end(psw_run *x, double t) {
  x->blocked_ms += run_now_ms() - t;
  psw_coord_blocked(x->coord, 0);
}

/* run_stopping says whether the caller asked the run to stop. */
static int run_stopping(const psw_run *x) { return x->o->stop && *x->o->stop; }

/* run_bad marks the failure ERR as the input's fault (exit 2). */
static int run_bad(psw_run *x, int err) {
  x->r->bad_input = 1;
  return err;
}

/* ---- set-up ------------------------------------------------------------------ */

/* run_open_backend opens the device; the CPU backend gets the asked
 * number of OpenBLAS threads. */
static int run_open_backend(psw_run *x, ps_errbuf *eb) {
  int err = ps_gpu_open(x->o->device, &x->be, eb);
  if (err < 0) return run_bad(x, err);
  if (!strcmp(x->be->name, "cpu") && x->o->blas_threads > 1) {
    ps_gpu_close(x->be);
    x->be = NULL;
    if ((err = ps_gpu_cpu_open(x->o->blas_threads, &x->be, eb)) < 0) return err;
  }
  snprintf(x->r->device, sizeof x->r->device, "%s", x->be->desc);
  ps_info("device %s", x->be->desc);
  return 0;
}

/* run_check_data checks the data against the graph's inputs: D holds
 * training partitions PARTS[0..NSEL), or the test set (PARTS NULL). */
static int run_check_data(psw_run *x, const psw_dataset *d, const uint32_t *parts, size_t nsel,
                          ps_errbuf *eb) {
  const char *what = parts ? "training" : "test";
  uint32_t want = psw_graph_input_dim(x->g), k = psw_graph_classes(x->g);
  if (x->sp && d->fields != x->fields)
    return run_bad(x, ps_errf(eb, PS_EINVAL, "%s set has %u categorical fields per sample, model "
                              "'%s' wants %u (its embedding table reads data.format 'criteo')",
                              what, d->fields, x->o->model, x->fields));
  if (d->dim != want)
    return run_bad(x, ps_errf(eb, PS_EINVAL, "%s set has %u features per sample, model '%s' wants %u",
                              what, d->dim, x->o->model, want));
  for (uint64_t i = 0; k && i < d->n; i++)
    if (d->y[i] < 0 || (uint32_t)d->y[i] >= k) { /* named as the user finds it: the file, the sample's index in it */
      const ps_data_conf *c = &x->o->cfg->data;
      const char *f = psw_data_label_file(c, !parts);
      uint64_t at = psw_data_file_index(d->total, c->partitions, parts, nsel, i), line = 0;
      char where[48] = ""; /* a CSV file's line too, as its parse errors say it */
      ps_errbuf leb;
      if (f && c->format && !strcmp(c->format, "csv") && psw_data_csv_line(f, at, &line, &leb) == 0)
        snprintf(where, sizeof where, " line %llu,", (unsigned long long)line);
      return run_bad(x, ps_errf(eb, PS_EINVAL, "%s set '%s':%s sample %llu (counted from 0 in the "
                                "file's order) has label %d, model '%s' has %u classes",
                                what, f ? f : "?", where, (unsigned long long)at, d->y[i],
                                x->o->model, k));
    }
  return 0;
}

/* run_add_block loads partitions PARTS[0..N) (ascending) as one more
 * block and points their views into it. */
static int run_add_block(psw_run *x, const uint32_t *parts, size_t n, ps_errbuf *eb) {
  const ps_config *cfg = x->o->cfg;
  psw_dataset *nb = realloc(x->blocks, (x->nblocks + 1) * sizeof *nb);
  if (!nb) return ps_errf(eb, PS_ENOMEM, "out of memory");
  x->blocks = nb;
  psw_dataset *d = &x->blocks[x->nblocks];
  int err = psw_data_load(d, &cfg->data, 0, parts, n, eb);
  if (err < 0) return run_bad(x, err);
  x->nblocks++;
  if ((err = run_check_data(x, d, parts, n, eb)) < 0) return err;
  if (x->dim && d->dim != x->dim)
    return run_bad(x, ps_errf(eb, PS_EFORMAT, "training partitions differ in features"));
  x->dim = d->dim;
  x->data_total = d->total;
  uint64_t at = 0, b, e;
  for (size_t i = 0; i < n; i++) {
    psw_data_partition(d->total, cfg->data.partitions, parts[i], &b, &e);
    x->views[parts[i]] = (run_view){.x = d->x + (size_t)at * d->dim, .y = d->y + at,
                                   .keys = d->keys ? d->keys + (size_t)at * d->fields : NULL,
                                   .n = e - b, .loaded = 1};
    at += e - b;
  }
  return 0;
}

/* run_view_of returns partition P's samples, loading them when needed;
 * NULL with EB set on failure. */
static const run_view *run_view_of(psw_run *x, uint32_t p, ps_errbuf *eb) {
  if (p >= x->o->cfg->data.partitions) {
    ps_errf(eb, PS_EPROTO, "the coordinator granted partition %u of %u", p,
            x->o->cfg->data.partitions);
    return NULL;
  }
  if (!x->views[p].loaded && run_add_block(x, &p, 1, eb) < 0) return NULL;
  return &x->views[p];
}

/* run_load_data loads the partitions this rank starts with (one block;
 * others are loaded when first claimed), or partition 0 when it starts
 * with none (the features per sample size the batch buffers), and the
 * test set. */
static int run_load_data(psw_run *x, ps_errbuf *eb) {
  const ps_config *cfg = x->o->cfg;
  uint32_t nparts = cfg->data.partitions ? cfg->data.partitions : 1, zero = 0;
  if (!(x->views = calloc(nparts, sizeof *x->views)))
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  int err = x->nparts ? run_add_block(x, x->parts, x->nparts, eb) : run_add_block(x, &zero, 1, eb);
  if (err < 0) return err;
  /* fewer samples than partitions: the cluster file's check warned when
   * 'limit' is the cause, the file's length is known only now */
  if (x->data_total < nparts && !(cfg->data.limit && cfg->data.limit < nparts))
    ps_warn("training set '%s': %llu samples for %u partitions (data.partitions): %llu "
            "partitions hold no sample", cfg->data.train_images,
            (unsigned long long)x->data_total, nparts,
            (unsigned long long)(nparts - x->data_total));
  if (cfg->data.test_images) {
    if ((err = psw_data_load(&x->test, &cfg->data, 1, NULL, 0, eb)) < 0) return run_bad(x, err);
    x->have_test = x->test.n > 0;
    if (x->have_test && (err = run_check_data(x, &x->test, NULL, 0, eb)) < 0) return err;
  }
  /* each partition ends in its own short batch: the steps of all, shared */
  uint32_t w = x->workers ? x->workers : 1, np = cfg->data.partitions ? cfg->data.partitions : 1;
  uint64_t all = 0;
  for (uint32_t p = 0; p < np; p++) {
    uint64_t b, e;
    psw_data_partition(x->data_total, np, p, &b, &e);
    all += (e - b + x->o->batch - 1) / x->o->batch;
  }
  x->steps_per_epoch = (all + w - 1) / w;
  return 0;
}

/* run_note_part adds P to the partitions of this local epoch (for the
 * result's list). */
static void run_note_part(psw_run *x, uint32_t p) {
  for (size_t i = 0; i < x->nparts; i++)
    if (x->parts[i] == p) return;
  uint32_t *n = realloc(x->parts, (x->nparts + 1) * sizeof *n);
  if (!n) return; /* the list is informative */
  size_t i = x->nparts;
  for (; i > 0 && n[i - 1] > p; i--) n[i] = n[i - 1];
  n[i] = p;
  x->parts = n;
  x->nparts++;
}

/* run_join registers with the coordinator (when asked to) for the rank,
 * world size and partitions, picks the straggler factor and starts the
 * heartbeats. */
static int run_join(psw_run *x, ps_errbuf *eb) {
  const psw_train_opts *o = x->o;
  psw_coord_conf cc = {.cfg = o->cfg, .model = o->model, .device = x->r->device, .stop = o->stop};
  int err = psw_coord_new(&x->coord, &cc, eb);
  if (err < 0) /* a key or secret file of its own (others may read it, ...) */
    return err == PS_ECONFIG ? run_bad(x, err) : err;
  /* the data files too, before a rank is taken or a shard waited for */
  const ps_data_conf *d = &o->cfg->data;
  if ((err = psw_data_conf_check(d, 0, eb)) < 0 ||
      (d->test_images && (err = psw_data_conf_check(d, 1, eb)) < 0))
    return run_bad(x, err);
  if (o->register_worker) {
    /* a model not submitted yet: said before a rank is taken */
    if ((err = psw_client_check_model(o->cfg, o->model, o->stop, eb)) < 0)
      return err == PS_ENOENT || err == PS_EINVAL ? run_bad(x, err) : err;
    psw_coord_reg reg;
    /* refused for fixed ranks of the model (they train their share
     * whatever registers): started wrong, as a fixed rank beside
     * registered workers is */
    if ((err = psw_coord_register(x->coord, &reg, eb)) < 0)
      return err == PS_EEXIST && psw_coord_fixed_live(x->coord) ? run_bad(x, err) : err;
    x->rank = reg.rank;
    x->r->ranked = 1;
    x->workers = reg.world_size;
    x->clock = x->clock0 = reg.start_clock;
    uint32_t np = o->cfg->data.partitions;
    if (!(x->parts = malloc((np ? np : 1) * sizeof *x->parts)))
      return ps_errf(eb, PS_ENOMEM, "out of memory");
    psw_coord_partitions(x->coord, x->parts, np, &x->nparts);
    char list[256];
    ps_info("registered as worker %u of %u, start clock %llu: holds partitions [%s] now (it "
            "claims the next ones from the coordinator as it trains)", x->rank, x->workers,
            (unsigned long long)reg.start_clock, ps_log_u32s(list, sizeof list, x->parts, x->nparts));
  } else {
    /* a fixed rank in a running elastic job trains its share twice */
    if ((err = psw_coord_check_fixed(x->coord, x->rank, x->workers, eb)) < 0)
      return run_bad(x, err);
    uint32_t nparts = o->cfg->data.partitions;
    if (!(x->parts = malloc((nparts ? nparts : 1) * sizeof *x->parts)))
      return ps_errf(eb, PS_ENOMEM, "out of memory");
    x->nparts = psw_data_parts_for_rank(nparts, x->rank, x->workers, x->parts);
    if (!(x->local = malloc((x->nparts ? x->nparts : 1) * sizeof *x->local)))
      return ps_errf(eb, PS_ENOMEM, "out of memory");
    memcpy(x->local, x->parts, x->nparts * sizeof *x->local);
    x->nlocal = x->nparts;
  }
  const ps_worker_conf *w = &o->cfg->workers;
  x->slowdown = o->slowdown >= 1 ? o->slowdown : x->rank < w->nslowdown ? w->slowdown[x->rank] : 1;
  x->jitter_rng = o->cfg->training.seed ^ ((uint64_t)(x->rank + 1) * PSW_SEED_RANK_MIX);
  x->r->rank = x->rank;
  x->r->workers = x->workers;
  x->r->slowdown = x->slowdown;
  psw_progress_init(&x->prog, stderr, x->rank, o->quiet);
  return psw_coord_start(x->coord, x->rank, o->register_worker, eb);
}

/* run_rejoin is the clients' rejoin hook (psw_client invariant 5, and the
 * sparse table's): the worker registers again and rejoins every shard
 * (psw_coord invariant 5). */
static int run_rejoin(void *coord, ps_errbuf *eb) { return psw_coord_rejoin(coord, eb); }

/* run_eval_size sets x->eval_batch for graph x->g: PSW_EVAL_BATCH, or
 * as many samples as PSW_EVAL_BYTES holds (the executor's floats per
 * sample, and an embedding table's rows and their gradients for each of
 * the sample's ids), at least 1; returns the larger of it and the
 * training batch TRAIN_BATCH (0: none), the batch the buffers are made
 * for. */
static uint32_t run_eval_size(psw_run *x, uint32_t train_batch) {
  uint64_t per = psw_graph_sample_floats(x->g);
  uint32_t fields, dim;
  if (psw_graph_embedding(x->g, NULL, &fields, &dim, NULL) >= 0) per += 2 * (uint64_t)fields * dim;
  uint64_t fit = PSW_EVAL_BYTES / (per * sizeof(float));
  x->eval_batch = fit >= PSW_EVAL_BATCH ? PSW_EVAL_BATCH : fit ? (uint32_t)fit : 1;
  return train_batch > x->eval_batch ? train_batch : x->eval_batch;
}

/* run_sparse_open prepares the sparse side of a model with an embedding
 * table, for batches of up to MAXB rows: the table's client (as worker
 * rank), the key index and the row buffers.  A dense model needs none.
 * A binary classifier also gets a batch of probabilities (x->probs). */
static int run_sparse_open(psw_run *x, uint32_t maxb, ps_errbuf *eb) {
  uint32_t table;
  if (psw_graph_binary(x->g) && !(x->probs = malloc((size_t)maxb * sizeof *x->probs)))
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  if (psw_graph_embedding(x->g, &table, &x->fields, &x->tdim, &x->hash_buckets) < 0) return 0;
  int err = psw_sparse_open(&x->sp, x->o->cfg, x->o->model, table, x->tdim, x->rank, eb);
  if (err < 0) return err;
  psw_sparse_set_stop(x->sp, x->o->stop);
  psw_sparse_set_rejoin(x->sp, run_rejoin, x->coord);
  /* the model's codecs, as rows can take them (psw_sparse_row_codec) */
  const Ps__ModelSpec *spec = psw_client_spec(x->cl);
  ps_codec_id push = PS_CODEC_FP32, pull = PS_CODEC_FP32;
  if ((err = ps_codec_parse(spec->codec, "codec", &push, eb)) < 0 ||
      (err = ps_codec_parse(spec->pull_codec, "pull codec", &pull, eb)) < 0)
    return err;
  psw_sparse_set_codecs(x->sp, push, pull, spec->codec_warmup_steps);
  size_t nb = (size_t)maxb * x->fields, nr = nb * x->tdim;
  if (psw_embed_create(&x->pe) < 0 || !(x->off = malloc((nb + 1) * sizeof *x->off)) ||
      !(x->kb = malloc(nb * sizeof *x->kb)) || !(x->rows = malloc(nr * sizeof *x->rows)) ||
      !(x->rgrads = malloc(nr * sizeof *x->rgrads)))
    return ps_errf(eb, PS_ENOMEM, "out of memory for the embedding rows of %u samples", maxb);
  for (size_t i = 0; i <= nb; i++) x->off[i] = (uint32_t)i; /* one id per field */
  return 0;
}

/* run_sparse_close releases what run_sparse_open made. */
static void run_sparse_close(psw_run *x) {
  psw_sparse_close(x->sp);
  psw_embed_free(x->pe);
  free(x->off);
  free(x->kb);
  free(x->rows);
  free(x->rgrads);
  free(x->probs);
  x->sp = NULL, x->pe = NULL, x->off = NULL, x->kb = NULL;
  x->rows = x->rgrads = x->probs = NULL;
}

/* run_sparse_keys copies the keys of sample K of KEYS into row I of the
 * batch's keys, through the table's hashing trick. */
static void run_sparse_keys(psw_run *x, const uint64_t *keys, uint64_t k, uint32_t i) {
  const uint64_t *src = keys + k * x->fields;
  uint64_t *dst = x->kb + (size_t)i * x->fields;
  for (uint32_t f = 0; f < x->fields; f++) dst[f] = ps_place_row_key(src[f], x->hash_buckets);
}

/* run_sparse_pull indexes the N rows of keys in x->kb (their distinct
 * keys, psw_embed) and pulls those keys' rows into x->rows at CLOCK;
 * fills *SB for the step.  The wait counts as blocked. */
static int run_sparse_pull(psw_run *x, uint32_t n, uint64_t clock, psw_sparse_batch *sb,
                           ps_errbuf *eb) {
  int err = psw_embed_build(x->pe, n * x->fields, x->off, x->kb, 0, eb);
  if (err < 0) return err;
  uint32_t nk;
  const uint64_t *keys = psw_embed_keys(x->pe, &nk);
  double t = run_block_begin(x);
  err = psw_sparse_pull(x->sp, keys, nk, x->rows, clock, eb);
  run_block_end(x, t);
  if (err == PS_ETOOBIG) { /* psw makes the requests: say what its user can change */
    ps_errbuf m = *eb;
    return ps_errf(eb, err, "%s; psw asks each shard for a batch's distinct keys (%u keys of %u "
                   "samples here) in requests of at most sparse.max_new_rows keys (%llu in psw's "
                   "cluster file, 0: no limit) and of at most limits.max_request_bytes (%llu "
                   "there): give psw the shards' cluster file, or lower --batch "
                   "(training.batch_size)", m.msg, nk, n,
                   (unsigned long long)x->o->cfg->sparse.max_new_rows,
                   (unsigned long long)x->o->cfg->max_request_bytes);
  }
  if (err < 0) return err;
  *sb = (psw_sparse_batch){.rows = x->rows, .row_grads = x->rgrads};
  psw_embed_bags(x->pe, &sb->bags);
  return 0;
}

/* run_sparse_push pushes the gradients of the last pulled keys at CLOCK. */
static int run_sparse_push(psw_run *x, uint64_t clock, ps_errbuf *eb) {
  uint32_t nk;
  const uint64_t *keys = psw_embed_keys(x->pe, &nk);
  int err = psw_sparse_push(x->sp, keys, nk, x->rgrads, clock, eb);
  if (err == PS_ETOOBIG) { /* psw's own check (psw_sparse.h) or a shard's smaller limit */
    ps_errbuf m = *eb;
    return ps_errf(eb, err, "%s (a batch of %u distinct keys here; psw's cluster file must be "
                   "the shards')", m.msg, nk);
  }
  return err;
}

/* run_correct counts the N rows whose sigmoid output, thresholded at
 * 0.5, is label Y (a graph with a sigmoid_xent node has no argmax). */
static uint32_t run_correct(const int32_t *y, uint32_t n, const float *p) {
  uint32_t c = 0;
  for (uint32_t i = 0; i < n; i++) c += (p[i] > 0.5f) == (y[i] != 0);
  return c;
}

/* run_open_client opens the client for the schedule x->r->overlap says:
 * two buffers and ordered acks with overlap, else one buffer and
 * deferred acks (a push's log sync under durability sync overlaps the
 * next step's compute). */
static int run_open_client(psw_run *x, ps_errbuf *eb) {
  psw_client_conf cc = {.cfg = x->o->cfg, .model = x->o->model, .worker = x->rank,
                        .be = x->be, .nbufs = x->r->overlap ? 2 : 1, .stop = x->o->stop,
                        /* a pull may wait parked on a shard up to pull_timeout_ms */
                        .io_timeout_ms = ps_config_reply_timeout_ms(x->o->cfg),
                        .rejoin = run_rejoin, .rejoin_arg = x->coord,
                        .defer_acks = !x->r->overlap};
  int err = psw_client_open(&x->cl, &cc, eb);
  /* no such model, a bad key file, ... */
  return err == PS_ENOENT || err == PS_EINVAL || err == PS_ECONFIG ? run_bad(x, err) : err;
}

/* run_setup opens the backend, the client (which fetches the spec and its
 * graph from the cluster), the executor, the data and the batch buffers. */
static int run_setup(psw_run *x, ps_errbuf *eb) {
  int err = run_open_backend(x, eb);
  if (err < 0) return err;
  if ((err = run_join(x, eb)) < 0) return err;
  if ((err = run_open_client(x, eb)) < 0) return err;
  /* The shards enforce the model's consistency, not the cluster file's:
   * overlap pulls one step ahead and would wait on its own push under bsp
   * (or ssp with staleness 0).  A model that allows none gets sequential
   * steps, on a client opened again for them. */
  const Ps__ModelSpec *sp = psw_client_spec(x->cl);
  ps_consistency mode = psw_client_layout(x->cl)->consistency;
  uint32_t staleness = sp->staleness;
  if (x->r->overlap && (mode == PS_BSP || (mode == PS_SSP && staleness < 1))) {
    if (!x->o->quiet)
      ps_info("model '%s' is %s (staleness %u), which allows no overlap: steps run "
              "sequentially", x->o->model, ps_consistency_name(mode), staleness);
    x->r->overlap = 0;
    psw_client_close(x->cl);
    x->cl = NULL;
    if ((err = run_open_client(x, eb)) < 0) return err;
  }
  if ((err = psw_graph_from_spec(psw_client_spec(x->cl), &x->g, eb)) < 0) {
    ps_errbuf m = *eb;
    return run_bad(x, ps_errf(eb, err, "model '%s': %s", x->o->model, m.msg));
  }
  if (psw_graph_nparams(x->g) != psw_client_nparams(x->cl))
    return run_bad(x, ps_errf(eb, PS_EINVAL, "model '%s': graph has %llu parameters, spec %llu",
                              x->o->model, (unsigned long long)psw_graph_nparams(x->g),
                              (unsigned long long)psw_client_nparams(x->cl)));
  uint32_t maxb = run_eval_size(x, x->o->batch);
  if ((err = psw_exec_create(x->g, x->be, maxb, &x->ex, eb)) < 0) return err;
  if ((err = run_sparse_open(x, maxb, eb)) < 0) return err;
  if ((err = run_load_data(x, eb)) < 0) return err;
  x->xb = malloc((size_t)x->o->batch * x->dim * sizeof *x->xb);
  x->yb = malloc((size_t)x->o->batch * sizeof *x->yb);
  if (!x->xb || !x->yb) return ps_errf(eb, PS_ENOMEM, "out of memory");
  return 0;
}

/* run_close releases everything run_setup made; FINISHED: the training
 * ran to its end (psw_coord invariant 3). */
static void run_close(psw_run *x, int finished) {
  psw_coord_free(x->coord, 1, finished);
  run_sparse_close(x);
  psw_client_close(x->cl);
  psw_exec_free(x->ex);
  psw_graph_free(x->g);
  ps_gpu_close(x->be);
  for (size_t i = 0; i < x->nblocks; i++) psw_data_release(&x->blocks[i]);
  free(x->blocks);
  free(x->views);
  psw_data_release(&x->test);
  free(x->perm);
  free(x->parts);
  free(x->local);
  free(x->xb);
  free(x->yb);
}

/* ---- steps ------------------------------------------------------------------- */

/* run_gather copies samples [FIRST, FIRST + N) of the current
 * partition's order (V: its samples) into xb/yb; returns N. */
static uint32_t run_gather(psw_run *x, const run_view *v, uint64_t first, uint32_t n) {
  size_t row = (size_t)x->dim * sizeof(float);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t k = x->perm[first + i];
    memcpy(x->xb + (size_t)i * x->dim, v->x + (size_t)k * x->dim, row);
    x->yb[i] = v->y[k];
    if (x->sp) run_sparse_keys(x, v->keys, k, i);
  }
  return n;
}

/* run_clip scales the N gradients at G and the R row gradients at RG to
 * an L2 norm of at most CLIP together (the model's clip_norm; clipping by
 * global norm needs the whole gradient, which only the worker sees). */
static void run_clip(float *g, uint64_t n, float *rg, uint64_t r, float clip) {
  double sum = 0;
  for (uint64_t i = 0; i < n; i++) sum += (double)g[i] * g[i];
  for (uint64_t i = 0; i < r; i++) sum += (double)rg[i] * rg[i];
  double norm = sqrt(sum);
  if (!(norm > clip)) return;
  float scale = (float)(clip / norm);
  for (uint64_t i = 0; i < n; i++) g[i] *= scale;
  for (uint64_t i = 0; i < r; i++) rg[i] *= scale;
}

/* run_compute runs forward/backward of batch S on parameter buffer B into
 * gradient buffer B (clipped to the model's clip_norm) and adds it to ACC;
 * the step alone (psw_exec_step) is timed into the result's compute_s. */
static int run_compute(psw_run *x, const run_view *v, uint64_t first, uint32_t rows, int b,
                       psw_epoch_acc *acc, ps_errbuf *eb) {
  int ready = x->pre_v == v && x->pre_first == first && x->pre_n == rows;
  x->pre_v = NULL;
  psw_batch batch = {.n = ready ? rows : run_gather(x, v, first, rows), .x = x->xb,
                     .labels = x->yb};
  psw_sparse_batch sb;
  float loss = 0;
  uint32_t correct = 0, nk = 0;
  int err;
  if (x->sp) {
    if ((err = run_sparse_pull(x, batch.n, x->clock, &sb, eb)) < 0) return err;
    batch.sparse = &sb;
    psw_embed_keys(x->pe, &nk);
  }
  double t = run_now_ms();
  err = psw_exec_step(x->ex, psw_client_params(x->cl, b), &batch,
                      psw_client_grads(x->cl, b), &loss, &correct, eb);
  double step_s = (run_now_ms() - t) / 1e3;
  if (err < 0) return err;
  if (x->probs && (err = psw_exec_probs(x->ex, x->probs)) == 0)
    correct = run_correct(batch.labels, batch.n, x->probs);
  if (err < 0) return ps_errf(eb, err, "reading the step's probabilities failed");
  if (!isfinite(loss))
    return ps_errf(eb, PS_EINVAL, "step %llu: loss is %f; stopping rather than pushing it",
                   (unsigned long long)x->clock, (double)loss);
  x->r->compute_s += step_s; /* a step r->steps counts */
  x->r->compute_samples += batch.n;
  float clip = psw_client_spec(x->cl)->clip_norm;
  if (clip > 0)
    run_clip(psw_client_grads(x->cl, b), psw_client_nparams(x->cl), x->rgrads,
             (uint64_t)nk * x->tdim, clip);
  /* Pushed before the dense push of this step, so that a worker whose
   * pull waits for this worker's clock (the staleness bound) also sees
   * these rows: sparse rows keep the dense tensors' consistency. */
  if (x->sp && (err = run_sparse_push(x, x->clock, eb)) < 0) return err;
  acc->loss_sum += (double)loss * batch.n;
  acc->correct += correct;
  acc->samples += batch.n;
  return 0;
}

/* run_wait_job waits for the communication thread's push/pull, counting
 * the wait as blocked. */
static int run_wait_job(psw_run *x, ps_errbuf *eb) {
  double t = run_block_begin(x);
  int err = psw_client_wait(x->cl, eb);
  run_block_end(x, t);
  return err;
}

/* The batch run_prefetch gathers: view V's samples [FIRST, FIRST + N). */
typedef struct run_next {
  psw_run *x;
  const run_view *v;
  uint64_t first;
  uint32_t n;
} run_next;

/* run_prefetch gathers the next batch (ARG: a run_next) into xb/yb while
 * the push and pull are out (psw_client_idle_once): the shards apply the
 * push meanwhile, so the gather leaves the step's critical path. */
static void run_prefetch(void *arg) {
  run_next *nx = arg;
  nx->x->pre_v = NULL;
  run_gather(nx->x, nx->v, nx->first, nx->n);
  nx->x->pre_v = nx->v;
  nx->x->pre_first = nx->first;
  nx->x->pre_n = nx->n;
}

/* run_push_pull is psw_client_push_pull with the wait counted as blocked:
 * the training thread has nothing to compute until the pull is in.  NX
 * (may be NULL): the next batch, gathered while the requests travel. */
static int run_push_pull(psw_run *x, int gbuf, uint64_t push_clock, int pbuf,
                         uint64_t pull_clock, run_next *nx, ps_errbuf *eb) {
  if (nx && nx->n) psw_client_idle_once(x->cl, run_prefetch, nx);
  double t = run_block_begin(x);
  int err = psw_client_push_pull(x->cl, gbuf, push_clock, pbuf, pull_clock, eb);
  run_block_end(x, t);
  return err;
}

/* run_uniform returns a number in [0, 1) from the splitmix64 state *S. */
static double run_uniform(uint64_t *s) { return (double)(ps_splitmix64(s) >> 11) / 9007199254740992.0; }

/* run_straggle sleeps (slowdown - 1) x COMPUTE_MS, a slower machine, and
 * with probability workers.jitter_prob (jitter_factor - 1) x COMPUTE_MS
 * more, a transient delay (a worker descheduled, a noisy neighbour). */
static void run_straggle(psw_run *x, double compute_ms) {
  const ps_worker_conf *w = &x->o->cfg->workers;
  double f = x->slowdown;
  if (w->jitter_prob > 0 && run_uniform(&x->jitter_rng) < w->jitter_prob)
    f += w->jitter_factor - 1;
  double ms = (f - 1) * compute_ms;
  if (ms <= 0 || run_stopping(x)) return;
  struct timespec ts = {(time_t)(ms / 1e3), (long)(fmod(ms, 1e3) * 1e6)};
  nanosleep(&ts, NULL); /* a stop signal cuts it short */
}

/* run_after_step tells the heartbeats where the worker is and checks that
 * it still holds its rank (psw_coord invariant 2).  Its steps/s are its
 * own steps (clock - clock0) over its training time: a worker that joined
 * a running job starts at the slowest live clock, a jump it did not
 * train. */
static int run_after_step(psw_run *x, ps_errbuf *eb) {
  psw_coord_update(x->coord, x->clock, x->clock - x->clock0, x->t_train_ms / 1e3,
                   x->blocked_ms / 1e3);
  return psw_coord_lost(x->coord, eb);
}

/* run_report draws the progress line after step S (of this local epoch)
 * of EPOCH. */
static void run_report(psw_run *x, uint32_t epoch, uint64_t s, const psw_epoch_acc *acc,
                       double t_epoch_ms) {
  double spent = x->train_s + (run_now_ms() - t_epoch_ms) / 1e3;
  uint64_t steps = x->steps_per_epoch > s + 1 ? x->steps_per_epoch : s + 1;
  uint64_t done = x->clock - x->clock0, total = steps * x->epochs;
  psw_progress_sample st = {
      .epoch = epoch + 1, .epochs = x->epochs, .step = s + 1, .steps = steps,
      .loss = acc->loss_sum / (double)acc->samples,
      .accuracy = (double)acc->correct / (double)acc->samples,
      .samples_per_sec = spent > 0 ? (double)(x->r->samples + acc->samples) / spent : 0,
      .eta_s = done && total > done ? spent / (double)done * (double)(total - done) : 0};
  psw_progress_step(&x->prog, &st);
}

/* run_tell_wait waits for the report run_tell_start sent (psw_coord
 * invariant 6); a worker declared dead, or whose registration a
 * restarted coordinator lost, registers again first (its partition is
 * then another's, or nobody's until claimed: PS_ENOENT). */
static int run_tell_wait(psw_run *x, uint32_t part, ps_errbuf *eb) {
  if (!x->o->register_worker) return 0;
  int err = psw_coord_report_wait(x->coord, eb);
  if (err == PS_EEXPIRED) {
    ps_errbuf why = *eb;
    if ((err = psw_coord_rejoin(x->coord, eb)) < 0) return err;
    return ps_errf(eb, PS_ENOENT, "%s: partition %u is no longer this worker's", why.msg, part);
  }
  return err;
}

/* run_tell_start starts reporting POS to the coordinator when the worker
 * registered (run_tell_wait takes the answer). */
static int run_tell_start(psw_run *x, const psw_coord_part *pos, ps_errbuf *eb) {
  return x->o->register_worker ? psw_coord_report_start(x->coord, pos, eb) : 0;
}

/* run_tell reports POS and waits for the answer. */
static int run_tell(psw_run *x, const psw_coord_part *pos, ps_errbuf *eb) {
  int err = run_tell_start(x, pos, eb);
  return err < 0 ? err : run_tell_wait(x, pos->part, eb);
}

/* run_order sizes the order array for N samples and fills it with
 * partition P's order in EPOCH. */
static int run_order(psw_run *x, uint32_t p, uint32_t epoch, uint64_t n, ps_errbuf *eb) {
  if (n > x->perm_cap) {
    uint32_t *perm = realloc(x->perm, n * sizeof *perm);
    if (!perm) return ps_errf(eb, PS_ENOMEM, "out of memory");
    x->perm = perm;
    x->perm_cap = n;
  }
  psw_data_part_order(x->perm, (uint32_t)n, x->o->cfg->training.seed, epoch, p);
  return 0;
}

/* run_step_failed takes back the step whose push or pull failed with ERR
 * (its clock and its samples in ACC, ACC0 before it: it trained
 * nothing the job counts) and returns ERR. */
static int run_step_failed(psw_run *x, psw_epoch_acc *acc, const psw_epoch_acc *acc0, int err) {
  *acc = *acc0;
  x->clock--;
  return err;
}

/* run_part_stop ends partition POS when a stop cut a round short while
 * it waited (a pull parked for a slower worker, a shard down: psw_client
 * invariant 11, psw_sparse.h "Stops"), the pushes up to sample END sent:
 * every push answer due is taken, and when no push went unacknowledged
 * since LOST0 (psw_client_pushes_lost; UINT64_MAX: not known) the
 * partition is trained up to END, else only up to ACKED, with END (and
 * the OUT samples after it, whose sparse push the stop cut short) in
 * flight.  Reported at once, as a stop at a step's end is (1, or an
 * error). */
static int run_part_stop(psw_run *x, psw_coord_part *pos, uint64_t acked, uint64_t end,
                         uint64_t out, uint64_t lost0, ps_errbuf *eb) {
  ps_errbuf seb;
  int all = psw_client_settle(x->cl, &seb) == 0 && psw_client_pushes_lost(x->cl) == lost0;
  pos->offset = all ? end : acked;
  pos->started = end + out;
  ps_info("worker %u: stopped while waiting for parameters: partition %u trained up to sample "
          "%llu%s", x->rank, pos->part, (unsigned long long)pos->offset,
          !all ? " (a push was not acknowledged: the samples after may be trained again)"
          : out ? " (a sparse push was cut short: the batch after may be trained again)" : "");
  int err = run_tell(x, pos, eb);
  return err < 0 && err != PS_ENOENT ? err : 1;
}

/* run_say_retrain logs that partition PART is trained again from sample
 * FROM: a push may not have been applied, and why (a refusal for an
 * expired lease is no broken connection: the operator looks elsewhere). */
static void run_say_retrain(psw_run *x, uint32_t part, uint64_t from) {
  uint64_t expired = psw_client_pushes_expired(x->cl);
  int lease = expired != x->expired_said;
  x->expired_said = expired;
  ps_info("worker %u: %s: partition %u is trained again from sample %llu", x->rank,
          lease ? "a push was refused, not applied (a shard had declared this worker dead: "
                  "its lease expired)"
                : "a push may not have been applied (a shard's connection broke before its "
                  "answer, or the shard was down)",
          part, (unsigned long long)from);
}

/* run_part trains partition POS from pos->offset to its end (or a stop).
 * Before each batch is pushed the coordinator learns how far the worker
 * may have got (psw_coord invariant 6); after it, pos->offset counts the
 * samples whose pushes every shard acknowledged.  Returns 0 (finished:
 * offset = size, reported with the next claim), 1 (stopped: reported
 * with nothing in flight), PS_ENOENT (the partition was taken away: drop
 * it) or an error.  On entry and on return, parameter buffer 0 holds a
 * complete pull taken after every push of this worker. */
static int run_part(psw_run *x, psw_coord_part *pos, psw_epoch_acc *acc, uint64_t *step,
                    double t0, ps_errbuf *eb) {
  const run_view *v = run_view_of(x, pos->part, eb);
  if (!v) return eb->msg[0] ? PS_EFORMAT : PS_ENOMEM;
  if (pos->size && pos->size != v->n)
    return run_bad(x, ps_errf(eb, PS_EINVAL, "partition %u holds %llu samples here, %llu for "
                              "the coordinator: do the workers read the same data?", pos->part,
                              (unsigned long long)v->n, (unsigned long long)pos->size));
  pos->size = v->n;
  x->pre_v = NULL; /* a batch gathered ahead belongs to the run_part that gathered it */
  if (pos->offset > v->n) return ps_errf(eb, PS_EPROTO, "offset past partition %u", pos->part);
  int err = run_order(x, pos->part, pos->epoch, v->n, eb);
  if (err < 0) return err;
  run_note_part(x, pos->part);
  int ov = x->r->overlap, cur = 0;
  uint64_t acked = pos->offset, off = pos->offset, prev_end = pos->offset;
  /* overlap: psw_client_pushes_unknown when the job out was started
   * (read only while no job runs) */
  uint64_t unknown_job = ov ? psw_client_pushes_unknown(x->cl) : 0;
  /* ends[i]: where the step i rounds back ended (deferred acks) */
  uint64_t ends[PSW_CLIENT_ACK_DEPTH + 1];
  for (int i = 0; i <= PSW_CLIENT_ACK_DEPTH; i++) ends[i] = pos->offset;
  /* Pulls carry the clock of the step that computes on them (the shard
   * parks them until the slowest worker is within the staleness bound of
   * that step); with overlap that is one step ahead of the worker's own. */
  if (ov && off < v->n && (err = psw_client_start(x->cl, -1, 0, 1, x->clock + 1)) < 0)
    return ps_errf(eb, err, "communication thread busy");
  while (off < v->n) {
    uint32_t rows = (uint32_t)(v->n - off < x->o->batch ? v->n - off : x->o->batch);
    psw_epoch_acc acc0 = *acc; /* a step whose push fails is not counted */
    uint64_t lost0 = ov ? UINT64_MAX : psw_client_pushes_lost(x->cl); /* overlap: not known */
    psw_coord_part tell = *pos;
    tell.offset = acked;
    tell.started = off + rows;
    /* the report travels while the batch computes; the push waits for it */
    if ((err = run_tell_start(x, &tell, eb)) < 0) {
      if (ov) psw_client_wait(x->cl, NULL);
      return err;
    }
    pos->retrained = 0; /* said (tell.retrained) */
    double tc = run_now_ms();
    uint64_t slost0 = x->sp ? psw_sparse_lost_pushes(x->sp) : 0;
    err = run_compute(x, v, off, rows, cur, acc, eb);
    double tw = run_now_ms();
    int terr = run_tell_wait(x, pos->part, err < 0 ? NULL : eb);
    x->report_wait_ms += run_now_ms() - tw;
    if (err == PS_ESHUTDOWN && run_stopping(x) && terr == 0) {
      /* the batch's sparse pull or push waited for a shard (psw_sparse.h
       * "Stops"): nothing of it went out, or a part of its sparse push */
      if (ov) psw_client_wait(x->cl, NULL);
      int out = x->sp && psw_sparse_lost_pushes(x->sp) != slost0;
      return run_part_stop(x, pos, acked, off, out ? rows : 0, out ? UINT64_MAX : lost0, eb);
    }
    if (err == 0) err = terr;
    if (err < 0) {
      /* not pushed (its report refused: declared dead, the partition
       * another's): no step, so not in the epoch's figures either */
      *acc = acc0;
      if (ov) psw_client_wait(x->cl, NULL);
      return err;
    }
    run_straggle(x, tw - tc); /* the compute alone, not a wait for the coordinator */
    x->clock++;
    off += rows;
    int last = off == v->n || run_stopping(x);
    if (ov && (err = run_wait_job(x, eb)) < 0) { /* this batch was not pushed yet */
      run_step_failed(x, acc, &acc0, err);
      if (err == PS_ESHUTDOWN && run_stopping(x))
        return run_part_stop(x, pos, acked, prev_end, 0, lost0, eb);
      return err;
    }
    if (ov && psw_client_pushes_unknown(x->cl) != unknown_job && !run_stopping(x)) {
      /* The job's push (the previous batch) may not be applied, as in
       * the sequential path below: this batch, computed on the pull that
       * followed it, is dropped, and the partition is trained again from
       * the last acknowledged batch, on a pull into buffer 0 (run_part's
       * entry state). */
      run_step_failed(x, acc, &acc0, 0);
      run_say_retrain(x, pos->part, acked);
      pos->retrained += prev_end - acked;
      pos->offset = acked;
      if ((err = run_push_pull(x, -1, 0, 0, x->clock, NULL, eb)) < 0) return err;
      return run_part(x, pos, acc, step, t0, eb);
    }
    if (ov) acked = prev_end; /* the previous step's push is in */
    uint64_t unknown0 = psw_client_pushes_unknown(x->cl); /* no job runs now */
    run_next nx = {x, v, off, 0};
    if (!last) nx.n = (uint32_t)(v->n - off < x->o->batch ? v->n - off : x->o->batch);
    if (ov && !last) {
      unknown_job = unknown0;
      psw_client_start(x->cl, cur, x->clock - 1, cur, x->clock + 1);
      cur = 1 - cur;
    } else if ((err = run_push_pull(x, cur, x->clock - 1, 0, x->clock, &nx, eb)) < 0) {
      if (err == PS_ESHUTDOWN && run_stopping(x)) /* the push went out: its pull waited */
        return run_part_stop(x, pos, acked, off, 0, lost0, eb);
      return run_step_failed(x, acc, &acc0, err);
    } else if (psw_client_pushes_unknown(x->cl) != unknown0 && !run_stopping(x)) {
      /* A push of this round, or a deferred one, may not be applied
       * (psw_client_pushes_unknown: a shard's connection broke before
       * its answer, or the shard was down), so the samples from the last
       * acknowledged one on are trained again, as at a handover (the
       * offset told the coordinator never passed them).  A refusal the
       * shard answered goes on without its updates (psw_client
       * invariant 12). */
      run_say_retrain(x, pos->part, acked);
      pos->retrained += off - acked; /* counted by the next report */
      off = acked;
      for (int i = 0; i <= PSW_CLIENT_ACK_DEPTH; i++) ends[i] = acked;
      last = 0;
    } else { /* deferred acks (psw_client invariant 8): the older pushes' are in */
      memmove(ends + 1, ends, PSW_CLIENT_ACK_DEPTH * sizeof *ends);
      ends[0] = off;
      acked = ends[psw_client_acks_pending(x->cl)];
    }
    prev_end = off;
    pos->offset = acked;
    if ((err = run_after_step(x, eb)) < 0) {
      if (ov && !last) psw_client_wait(x->cl, NULL);
      return err;
    }
    run_report(x, pos->epoch, (*step)++, acc, t0);
    if (last) break;
  }
  /* every push is in (its answer taken): nothing in flight; one that went
   * unanswered meanwhile sends the worker back to train the partition's
   * unacknowledged end again (as in the loop) */
  uint64_t unknown1 = psw_client_pushes_unknown(x->cl);
  if ((err = psw_client_settle(x->cl, eb)) < 0) return err;
  if (!ov && off == v->n && acked < off && psw_client_pushes_unknown(x->cl) != unknown1 &&
      !run_stopping(x)) {
    run_say_retrain(x, pos->part, acked);
    pos->retrained += off - acked;
    pos->offset = acked;
    return run_part(x, pos, acc, step, t0, eb);
  }
  pos->offset = off;
  pos->started = pos->offset;
  if (off == v->n) return 0;
  /* a stop: reported with nothing in flight, handed over exactly */
  return (err = run_tell(x, pos, eb)) < 0 && err != PS_ENOENT ? err : 1;
}

/* Test-set figures of one evaluation. */
typedef struct psw_eval {
  double loss, accuracy;
  double auc, logloss;  /* binary classifiers (psw_graph_binary), else NAN */
} psw_eval;

/* run_eval_batch evaluates test samples [I, I + N) on parameter buffer
 * 0 (a sparse model's rows pulled at the worker's clock, or as a
 * reader by psw --evaluate), adding to
 * *LSUM and *CORRECT and writing the probabilities to PROBS + I. */
static int run_eval_batch(psw_run *x, uint64_t i, uint32_t n, double *lsum, uint64_t *correct,
                          float *probs, ps_errbuf *eb) {
  psw_batch b = {.n = n, .x = x->test.x + (size_t)i * x->test.dim, .labels = x->test.y + i};
  psw_sparse_batch sb;
  int err;
  if (x->sp) {
    for (uint32_t k = 0; k < n; k++) run_sparse_keys(x, x->test.keys, i + k, k);
    if ((err = run_sparse_pull(x, n, x->reader ? PS_CLOCK_READER : x->clock, &sb, eb)) < 0)
      return err;
    b.sparse = &sb;
  }
  float l = 0;
  uint32_t c = 0;
  if ((err = psw_exec_eval(x->ex, psw_client_params(x->cl, 0), &b, &l, &c, eb)) < 0) return err;
  if (probs) {
    if ((err = psw_exec_probs(x->ex, probs + i)) < 0)
      return ps_errf(eb, err, "reading the probabilities failed");
    c = run_correct(b.labels, n, probs + i);
  }
  *lsum += (double)l * n;
  *correct += c;
  return 0;
}

/* run_eval evaluates the test set on parameter buffer 0 into *EV. */
static int run_eval(psw_run *x, psw_eval *ev, ps_errbuf *eb) {
  double lsum = 0;
  uint64_t correct = 0;
  float *probs = x->probs ? malloc(x->test.n * sizeof *probs) : NULL;
  if (x->probs && !probs) return ps_errf(eb, PS_ENOMEM, "out of memory");
  int err = 0;
  for (uint64_t i = 0; i < x->test.n && !err; i += x->eval_batch) {
    uint32_t n = (uint32_t)(x->test.n - i < x->eval_batch ? x->test.n - i : x->eval_batch);
    err = run_eval_batch(x, i, n, &lsum, &correct, probs, eb);
  }
  if (!err) {
    ev->loss = lsum / (double)x->test.n;
    ev->accuracy = (double)correct / (double)x->test.n;
    ev->auc = probs ? psw_metric_auc(probs, x->test.y, x->test.n) : NAN;
    ev->logloss = probs ? psw_metric_logloss(probs, x->test.y, x->test.n) : NAN;
  }
  free(probs);
  return err;
}

/* run_finish_epoch evaluates, reports and appends the metrics row. */
static int run_finish_epoch(psw_run *x, uint32_t epoch, const psw_epoch_acc *acc,
                            ps_errbuf *eb) {
  psw_train_result *r = x->r;
  psw_epoch_stats st = {.epoch = epoch + 1, .step = x->clock - x->clock0,
                        .train_loss = r->train_loss,
                        .train_accuracy = (double)acc->correct / (double)acc->samples,
                        .test_loss = NAN, .test_accuracy = NAN,
                        .samples_per_sec = acc->train_s > 0 ? (double)acc->samples / acc->train_s : 0};
  psw_eval ev = {NAN, NAN, NAN, NAN};
  int err = x->have_test ? run_eval(x, &ev, eb) : 0;
  if (err < 0) return err;
  r->test_loss = st.test_loss = ev.loss;
  r->test_accuracy = st.test_accuracy = ev.accuracy;
  r->test_auc = ev.auc;
  r->test_logloss = ev.logloss;
  if (isfinite(ev.auc) && !x->o->quiet)
    ps_info("worker %u: epoch %u: test auc %.4f, logloss %.4f", x->rank, epoch + 1, ev.auc,
            ev.logloss);
  r->epochs = epoch + 1;
  st.wall_s = (run_now_ms() - (double)x->t0_ms) / 1e3;
  psw_progress_epoch(&x->prog, &st);
  /* a file that took the first rows and fails now (a full disk): a
   * runtime failure (exit 1), not bad usage */
  if (x->o->metrics_csv && (err = psw_metrics_append(x->o->metrics_csv, &st, eb)) < 0)
    return err;
  return 0;
}

/* run_wait_world waits (at most workers.retry_ms) until the coordinator
 * lists workers.min live workers, so that the first steps are not run
 * alone; past that it trains with whoever is there.  Workers that come
 * later join the running job (psd_clock invariant 7). */
static int run_wait_world(psw_run *x, ps_errbuf *eb) {
  const ps_worker_conf *wc = &x->o->cfg->workers;
  uint32_t need = wc->min ? wc->min : wc->count;
  if (!x->o->register_worker || need < 2) return 0;
  ps_errbuf w = {""};
  int err = psw_coord_wait_world(x->coord, need, x->o->epochs, wc->retry_ms, &w);
  if (err == PS_ESHUTDOWN) return ps_errf(eb, err, "stopped");
  if (err < 0) ps_warn("worker %u: %s; training anyway", x->rank, w.msg);
  return 0;
}

/* run_claim sets *POS to the partition to train next: the coordinator's
 * grant (reporting FIN, may be NULL, with it) or, for a fixed rank, its
 * own partitions epoch after epoch from their start.  A registered
 * worker with nothing left to claim while other workers' partitions are
 * unfinished waits for the job's end, out of the clock tables
 * (psw_coord_step_out), and asks again every heartbeat: a worker that
 * dies meanwhile leaves it its partitions.  Returns 1, 0 when nothing is
 * left (the job is done, or a stop came while waiting), or a PS_E* code. */
static int run_claim(psw_run *x, const psw_coord_part *fin, psw_coord_part *pos,
                     ps_errbuf *eb) {
  if (x->o->register_worker) {
    for (int waited = 0;; waited++) {
      int done = 0;
      /* Back after a shard declared it dead (stopped or cut off past its
       * lease): its pulls since the rejoin entered it at its old clock,
       * far behind the living, whom it would hold back under bsp/ssp
       * until it caught up alone.  Out of the clock tables first (up to
       * the overlap's pull, one step ahead), so that the grant's start
       * clock is the living's slowest. */
      int stepped = psw_coord_rejoins(x->coord) != x->rejoins;
      if (stepped) psw_coord_step_out(x->coord, x->clock + 1);
      int err = psw_coord_claim(x->coord, fin, x->o->epochs, x->data_total, pos, &done, eb);
      if (err == PS_EEXPIRED && (err = psw_coord_rejoin(x->coord, eb)) >= 0)
        err = psw_coord_claim(x->coord, NULL, x->o->epochs, x->data_total, pos, &done, eb);
      uint64_t rejoins = psw_coord_rejoins(x->coord);
      int back = rejoins != x->rejoins;
      x->rejoins = rejoins;
      /* a finished partition's report refused: as a partition taken away
       * mid-way (run_train), a new job's spec may ask the worker to stop */
      if (err >= 0 && fin && psw_coord_fin_refused(x->coord)) {
        int serr = psw_client_spec_check(x->cl, eb);
        if (serr < 0) return serr;
      }
      fin = NULL;
      if (err >= 0) x->r->job_done = done;
      uint32_t je = err >= 0 ? psw_coord_job_epochs(x->coord) : 0;
      if (je > x->epochs) { /* workers that asked for more started the job */
        ps_info("worker %u: the job trains %u epochs, the most its workers asked for: more "
                "than this worker's %u, which trains on with it", x->rank, je, x->epochs);
        x->epochs = je;
      }
      if (err > 0 && (waited || back)) {
        /* out of the clock tables meanwhile (waiting, or declared dead):
         * it goes on at the slowest live clock (as a worker that
         * registers now would; under bsp the others would otherwise wait
         * for it to catch up alone), from parameters pulled now, not
         * those of before the wait.  A jump needs every shard to have
         * taken the step-out first: one that missed it (its beat timed
         * out) keeps the worker's old clock, which the pull does not
         * raise, and the pull would wait there for the worker itself,
         * for ever.  A comeback found at this claim (refused as expired)
         * has not stepped out yet: the shards that did not declare it
         * dead hold its old clock. */
        if (back && !stepped) psw_coord_step_out(x->coord, x->clock + 1);
        uint64_t at = psw_coord_grant_clock(x->coord);
        if (at > x->clock) {
          if ((err = psw_coord_stepped_out(x->coord, eb)) < 0) return err;
          x->clock0 += at - x->clock;
          x->clock = at;
        }
        ps_info("worker %u: took over partition %u (epoch %u) after %s; going on at clock "
                "%llu", x->rank, pos->part, pos->epoch + 1,
                waited ? "waiting" : "rejoining", (unsigned long long)x->clock);
        if ((err = psw_client_pull_all(x->cl, 0, x->clock, eb)) < 0) return err;
        return 1;
      }
      if (err == 0 && done && x->clock == x->clock0 && !waited)
        ps_info("worker %u: the job of model '%s' is finished already (%u epochs): nothing to "
                "train", x->rank, x->o->model, x->epochs);
      if (err != 0 || done) return err;
      if (!waited)
        ps_info("worker %u: nothing left to claim; waiting while other workers finish their "
                "partitions (one whose worker dies comes here)", x->rank);
      psw_coord_step_out(x->coord, x->clock);
      if (ps_sleep_ms(x->o->cfg->workers.heartbeat_ms, x->o->stop) < 0 || run_stopping(x)) {
        ps_info("worker %u: stopped while waiting: the job is not done", x->rank);
        return 0;
      }
    }
  }
  if (x->local_next == x->nlocal) {
    x->local_next = 0;
    x->local_epoch++;
  }
  if (!x->nlocal || x->local_epoch >= x->o->epochs) return 0;
  *pos = (psw_coord_part){.part = x->local[x->local_next++], .epoch = x->local_epoch};
  return 1;
}

/* run_epoch_done folds the local epoch's sums ACC (begun at T0) into the
 * result; EVALUATE: it ended (not stopped), so the test set is evaluated
 * and the metrics row written. */
static int run_epoch_done(psw_run *x, uint32_t epoch, psw_epoch_acc *acc, double t0,
                          int evaluate, ps_errbuf *eb) {
  psw_train_result *r = x->r;
  acc->train_s = (run_now_ms() - t0) / 1e3;
  if (acc->samples) {
    r->samples += acc->samples;
    r->train_loss = acc->loss_sum / (double)acc->samples;
  }
  r->steps = x->clock - x->clock0;
  x->train_s += acc->train_s;
  r->samples_per_sec = x->train_s > 0 ? (double)r->samples / x->train_s : 0;
  return evaluate && acc->samples ? run_finish_epoch(x, epoch, acc, eb) : 0;
}

/* run_restarted says whether the job restarted since the last call: the
 * model was submitted again with settings only the shards apply
 * (psw_client_spec_changes), which a check of the spec finds after a
 * refusal (run_train, run_claim) or, asked here, after a claim of an
 * epoch below the worker's EPOCH (else a dead worker's late partition). */
static int run_restarted(psw_run *x, const psw_coord_part *pos, uint32_t epoch, ps_errbuf *eb) {
  if (x->o->register_worker && pos->epoch < epoch &&
      psw_client_spec_changes(x->cl) == x->spec_changes) {
    int err = psw_client_spec_check(x->cl, eb);
    if (err < 0) return err;
  }
  uint64_t n = psw_client_spec_changes(x->cl);
  int restarted = n != x->spec_changes;
  x->spec_changes = n;
  return restarted;
}

/* run_restart ends local epoch EPOCH (ACC, begun at T0) at a job's
 * restart, unevaluated and without a metrics row: its steps trained the
 * old job's epoch.  The new job counts from its first epoch, to the
 * worker's own --epochs (its claims raise them again). */
static void run_restart(psw_run *x, uint32_t epoch, psw_epoch_acc *acc, double t0) {
  run_epoch_done(x, epoch, acc, t0, 0, NULL);
  ps_info("worker %u: model '%s' was submitted again (psctl submit --replace): the job "
          "restarted from epoch 1 (this worker's epoch %u ends here unevaluated, at step %llu)",
          x->rank, x->o->model, epoch + 1, (unsigned long long)(x->clock - x->clock0));
  x->epochs = x->o->epochs;
  x->r->epochs = 0;
}

/* run_say_skipped says that the worker's next partition is of epoch TO
 * while it trained nothing of epochs FROM to TO - 1 (0-based): the others
 * did (it joined late, or was out: declared dead, waiting), so its epoch
 * lines jump, and not silently. */
static void run_say_skipped(psw_run *x, uint32_t from, uint32_t to) {
  if (to == from + 1)
    ps_info("worker %u: the job is at epoch %u now: epoch %u was trained by the other workers, "
            "not here", x->rank, to + 1, from + 1);
  else
    ps_info("worker %u: the job is at epoch %u now: epochs %u to %u were trained by the other "
            "workers, not here", x->rank, to + 1, from + 1, to);
}

/* run_train pulls the starting point and trains claimed partitions until
 * none is left: a local epoch ends when a claim brings a later epoch (or
 * the last), and is evaluated then; or when the job restarted (a replace),
 * and the epochs count from the first again. */
static int run_train(psw_run *x, ps_errbuf *eb) {
  int err = run_wait_world(x, eb);
  if (err < 0) return err;
  double t = x->t_train_ms = run_block_begin(x);
  err = psw_client_pull_all(x->cl, 0, x->clock, eb);
  run_block_end(x, t);
  if (err < 0) return err;
  psw_epoch_acc acc = {0};
  uint32_t epoch = 0;
  uint64_t step = 0;
  x->nparts = 0; /* from now on: the partitions trained this local epoch */
  double t0 = run_now_ms();
  psw_coord_part fin, pos;
  const psw_coord_part *finp = NULL;
  while (!run_stopping(x)) {
    int got = run_claim(x, finp, &pos, eb);
    finp = NULL;
    if (got < 0) return err = got;
    if (got == 0) break;
    int restarted = run_restarted(x, &pos, epoch, eb);
    if (restarted < 0) return err = restarted;
    /* the first epoch this worker has no line for: after the one it trains */
    uint32_t unsaid = acc.samples || step ? epoch + 1 : epoch;
    if (restarted || (pos.epoch > epoch && (acc.samples || step))) {
      if (restarted) run_restart(x, epoch, &acc, t0);
      else if ((err = run_epoch_done(x, epoch, &acc, t0, 1, eb)) < 0) return err;
      /* nothing in flight: a worker that failed over from its aggregator
       * goes back to it if it answers again (psw_client invariant 7) */
      psw_client_agg_return(x->cl);
      acc = (psw_epoch_acc){0};
      step = 0;
      t0 = run_now_ms();
      x->nparts = 0;
      if (restarted) epoch = pos.epoch;
    }
    /* a stop during the claim or the epoch's evaluation: no step more (the
     * partition, claimed at its offset, goes back as it is when the worker
     * leaves) */
    if (run_stopping(x)) break;
    if (!restarted && pos.epoch > unsaid) run_say_skipped(x, unsaid, pos.epoch);
    if (pos.epoch > epoch) epoch = pos.epoch;
    err = run_part(x, &pos, &acc, &step, t0, eb);
    if (err == PS_ENOENT) {
      ps_info("worker %u: %s; claiming another", x->rank, eb->msg);
      /* taken away at a handover, or by a new job: a model submitted
       * again (--replace) whose graph, clip norm or codecs changed ends
       * the worker, before it pushes anything computed with the old ones */
      if ((err = psw_client_spec_check(x->cl, eb)) == 0) continue;
    }
    if (err < 0) {
      run_epoch_done(x, epoch, &acc, t0, 0, NULL);
      return err;
    }
    if (err == 0) {
      fin = pos;
      finp = &fin;
    }
  }
  if (finp && run_tell(x, finp, eb) < 0) /* stopped right after finishing it */
    ps_warn("worker %u: the end of partition %u was not reported: %s", x->rank, finp->part,
            eb->msg);
  x->r->stopped = run_stopping(x);
  return run_epoch_done(x, epoch, &acc, t0, !x->r->stopped, eb);
}

/* run_push_counts copies the client's per-shard push counts into R
 * (left empty when out of memory: the JSON line then shows none), and
 * warns of the pushes a DEGRADED shard refused. */
static void run_push_counts(psw_run *x, psw_train_result *r) {
  psw_client_say_refused(x->cl); /* before the JSON line, which counts them unanswered */
  psw_client_bytes(x->cl, &r->bytes_sent, &r->bytes_received, &r->push_bytes);
  r->shm_bytes = psw_client_shm_bytes(x->cl);
  size_t n = psw_client_push_counts(x->cl, NULL, NULL, 0);
  r->pushes_acked = calloc(n ? n : 1, sizeof *r->pushes_acked);
  r->pushes_unanswered = calloc(n ? n : 1, sizeof *r->pushes_unanswered);
  if (!r->pushes_acked || !r->pushes_unanswered) {
    free(r->pushes_acked);
    free(r->pushes_unanswered);
    r->pushes_acked = r->pushes_unanswered = NULL;
    return;
  }
  r->nshards = psw_client_push_counts(x->cl, r->pushes_acked, r->pushes_unanswered, n);
  r->sparse_lost = x->sp ? (int64_t)psw_sparse_lost_pushes(x->sp) : -1;
}

/* psw_train_run: see psw_train.h. */
int psw_train_run(const psw_train_opts *o, psw_train_result *r, ps_errbuf *eb) {
  memset(r, 0, sizeof *r);
  r->test_loss = r->test_accuracy = r->train_loss = r->test_auc = r->test_logloss = NAN;
  r->blocked_share = r->parked_share = r->report_wait_share = NAN; /* no step: no share */
  r->job_done = r->sparse_lost = -1;
  psw_run x = {.o = o, .r = r, .epochs = o->epochs};
  x.t0_ms = (int64_t)run_now_ms();
  if (!o->epochs || !o->batch || (!o->register_worker && o->rank >= o->workers)) {
    r->bad_input = 1;
    return ps_errf(eb, PS_EINVAL, "rank %u of %u workers, %u epochs of batch %u", o->rank,
                   o->workers, o->epochs, o->batch);
  }
  r->overlap = o->overlap != 0; /* as the model's consistency allows (run_setup) */
  x.rank = r->rank = o->register_worker ? 0 : o->rank;
  r->ranked = !o->register_worker;
  x.workers = r->workers = o->workers;
  psw_progress_init(&x.prog, stderr, x.rank, o->quiet);
  int err = run_setup(&x, eb);
  if (err == 0) err = run_train(&x, eb);
  /* shares of a run that trained: one that found the job finished spent
   * its short life asking the coordinator, no share of training */
  if (x.t_train_ms > 0 && x.clock > x.clock0) {
    double now = run_now_ms(), wall = now - x.t_train_ms;
    /* no wait is under way here: run_block_end closed the last */
    r->blocked_share = psw_blocked_share(x.t_train_ms / 1e3, x.blocked_ms / 1e3, 0, now / 1e3);
    if (wall > 0) r->report_wait_share = x.report_wait_ms / wall;
    if (x.cl && wall > 0) r->parked_share = (double)psw_client_parked_ms(x.cl) / wall;
  }
  if (x.cl) {
    psw_client_wait(x.cl, NULL); /* nothing in flight while the counts are read */
    run_push_counts(&x, r);
  }
  /* a stop that came anywhere (waiting for workers.min, for a shard or
   * the coordinator) says so, like one between steps */
  if (run_stopping(&x)) {
    r->stopped = 1;
    if (o->register_worker && r->job_done < 0) r->job_done = 0;
    char who[32];
    ps_info("%s: stopped by %s%s", psw_train_who(r, who, sizeof who), strsignal((int)*o->stop),
            r->job_done > 0 ? "" : " before the job's end");
  }
  r->partitions = x.parts; /* handed over */
  r->npartitions = x.nparts;
  x.parts = NULL;
  psw_progress_end(&x.prog);
  run_close(&x, err == 0 && !r->stopped);
  r->wall_s = (run_now_ms() - (double)x.t0_ms) / 1e3;
  return err;
}

/* run_eval_setup opens what an evaluation needs: backend, client (spec
 * and graph from the cluster), executor and the test set. */
static int run_eval_setup(psw_run *x, ps_errbuf *eb) {
  int err = psw_data_conf_check(&x->o->cfg->data, 1, eb); /* before the shards are asked */
  if (err < 0) return run_bad(x, err);
  err = run_open_backend(x, eb);
  if (err < 0) return err;
  psw_client_conf cc = {.cfg = x->o->cfg, .model = x->o->model, .worker = 0, .be = x->be,
                        .nbufs = 1, .stop = x->o->stop, .reader = 1};
  if ((err = psw_client_open(&x->cl, &cc, eb)) < 0) /* no such model, a bad key file, ... */
    return err == PS_ENOENT || err == PS_EINVAL || err == PS_ECONFIG ? run_bad(x, err) : err;
  if ((err = psw_graph_from_spec(psw_client_spec(x->cl), &x->g, eb)) < 0) {
    ps_errbuf m = *eb;
    return run_bad(x, ps_errf(eb, err, "model '%s': %s", x->o->model, m.msg));
  }
  if (psw_graph_nparams(x->g) != psw_client_nparams(x->cl))
    return run_bad(x, ps_errf(eb, PS_EINVAL, "model '%s': graph and spec disagree", x->o->model));
  uint32_t maxb = run_eval_size(x, 0);
  if ((err = psw_exec_create(x->g, x->be, maxb, &x->ex, eb)) < 0) return err;
  if ((err = run_sparse_open(x, maxb, eb)) < 0) return err;
  const ps_data_conf *d = &x->o->cfg->data;
  if ((err = psw_data_load(&x->test, d, 1, NULL, 0, eb)) < 0) return run_bad(x, err);
  if (!x->test.n) return run_bad(x, ps_errf(eb, PS_ECONFIG, "the test set is empty"));
  x->have_test = 1;
  return run_check_data(x, &x->test, NULL, 0, eb);
}

/* psw_train_evaluate: see psw_train.h. */
int psw_train_evaluate(const psw_train_opts *o, psw_train_result *r, uint64_t *version,
                       ps_errbuf *eb) {
  memset(r, 0, sizeof *r);
  r->test_loss = r->test_accuracy = r->train_loss = r->test_auc = r->test_logloss = NAN;
  r->job_done = r->sparse_lost = -1;
  *version = 0;
  psw_run x = {.o = o, .r = r, .reader = 1}; /* a reader, not a training worker */
  x.t0_ms = (int64_t)run_now_ms();
  int err = run_eval_setup(&x, eb);
  if (err == 0)
    err = psw_client_export(x.cl, 0, (int)o->cfg->workers.retry_ms + 1000, version, eb);
  psw_eval ev = {NAN, NAN, NAN, NAN};
  if (err == 0) err = run_eval(&x, &ev, eb);
  r->test_loss = ev.loss, r->test_accuracy = ev.accuracy;
  r->test_auc = ev.auc, r->test_logloss = ev.logloss;
  run_close(&x, 0);
  r->wall_s = (run_now_ms() - (double)x.t0_ms) / 1e3;
  return err;
}

/* psw_train_result_free: see psw_train.h. */
void psw_train_result_free(psw_train_result *r) {
  free(r->partitions);
  r->partitions = NULL;
  r->npartitions = 0;
  free(r->pushes_acked);
  free(r->pushes_unanswered);
  r->pushes_acked = r->pushes_unanswered = NULL;
  r->nshards = 0;
}

/* json_num writes V, or null when it is not finite. */
static void json_num(FILE *out, const char *key, double v, const char *fmt) {
  fprintf(out, ",\"%s\":", key);
  if (isfinite(v)) fprintf(out, fmt, v);
  else fputs("null", out);
}

/* json_u64s writes ,"KEY":[V0,V1,...] (N values). */
static void json_u64s(FILE *out, const char *key, const uint64_t *v, size_t n) {
  fprintf(out, ",\"%s\":[", key);
  for (size_t k = 0; k < n; k++) fprintf(out, "%s%llu", k ? "," : "", (unsigned long long)v[k]);
  fputc(']', out);
}

/* json_model opens the object with the escaped model name. */
static void json_model(FILE *out, const char *model) {
  fputs("{\"model\":\"", out);
  for (const char *p = model; *p; p++) {
    if (*p == '"' || *p == '\\') fputc('\\', out);
    if ((unsigned char)*p >= 0x20) fputc(*p, out);
  }
  fputc('"', out);
}

/* psw_train_eval_json: see psw_train.h. */
void psw_train_eval_json(FILE *out, const char *model, const psw_train_result *r,
                         uint64_t version, int stopped) {
  json_model(out, model);
  json_num(out, "test_loss", r->test_loss, "%.6f");
  json_num(out, "test_accuracy", r->test_accuracy, "%.4f");
  json_num(out, "test_auc", r->test_auc, "%.4f");
  json_num(out, "test_logloss", r->test_logloss, "%.6f");
  fprintf(out, ",\"version\":%llu", (unsigned long long)version);
  json_num(out, "wall_s", r->wall_s, "%.3f");
  fprintf(out, ",\"stopped\":%s}\n", stopped ? "true" : "false");
  fflush(out);
}

/* psw_train_who: see psw_train.h. */
const char *psw_train_who(const psw_train_result *r, char *buf, size_t cap) {
  if (r->ranked) snprintf(buf, cap, "worker %u", r->rank);
  else snprintf(buf, cap, "worker");
  return buf;
}

/* psw_train_json: see psw_train.h. */
void psw_train_json(FILE *out, const char *model, uint32_t batch, const psw_train_result *r) {
  json_model(out, model);
  if (r->ranked) fprintf(out, ",\"rank\":%u", r->rank);
  else fputs(",\"rank\":null", out);
  fprintf(out, ",\"epochs\":%u,\"steps\":%llu", r->epochs, (unsigned long long)r->steps);
  json_num(out, "train_loss", r->train_loss, "%.6f");
  json_num(out, "test_loss", r->test_loss, "%.6f");
  json_num(out, "test_accuracy", r->test_accuracy, "%.4f");
  json_num(out, "test_auc", r->test_auc, "%.4f");
  json_num(out, "test_logloss", r->test_logloss, "%.6f");
  json_num(out, "samples_per_sec", r->samples_per_sec, "%.1f");
  json_num(out, "wall_s", r->wall_s, "%.3f");
  json_num(out, "blocked_share", r->blocked_share, "%.4f");
  json_num(out, "parked_share", r->parked_share, "%.4f");
  json_num(out, "report_wait_share", r->report_wait_share, "%.4f");
  json_num(out, "compute_ms_per_step", r->steps ? r->compute_s * 1e3 / (double)r->steps : NAN,
           "%.4f");
  json_num(out, "compute_samples_per_sec",
           r->compute_s > 0 ? (double)r->compute_samples / r->compute_s : NAN, "%.1f");
  fprintf(out, ",\"workers\":%u", r->workers);
  json_num(out, "slowdown", r->slowdown >= 1 ? r->slowdown : NAN, "%g"); /* null: never ranked */
  fputs(",\"partitions\":[", out);
  for (size_t i = 0; i < r->npartitions; i++) fprintf(out, "%s%u", i ? "," : "", r->partitions[i]);
  fputc(']', out);
  json_u64s(out, "pushes_acked", r->pushes_acked, r->nshards);
  json_u64s(out, "pushes_unanswered", r->pushes_unanswered, r->nshards);
  if (r->sparse_lost >= 0)
    fprintf(out, ",\"sparse_pushes_lost\":%lld", (long long)r->sparse_lost);
  fprintf(out, ",\"bytes_sent\":%llu,\"bytes_received\":%llu,\"push_bytes\":%llu,"
          "\"shm_bytes\":%llu",
          (unsigned long long)r->bytes_sent, (unsigned long long)r->bytes_received,
          (unsigned long long)r->push_bytes, (unsigned long long)r->shm_bytes);
  fprintf(out, ",\"batch\":%u,\"overlap\":%s,\"stopped\":%s,\"job_done\":%s}\n", batch,
          r->overlap ? "true" : "false", r->stopped ? "true" : "false",
          r->job_done < 0 ? "null" : r->job_done ? "true" : "false");
  fflush(out);
}
