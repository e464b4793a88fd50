/* fuzz_psd.h: a whole shard in-process for the fuzz targets of its
 * handlers, sparse tables and redo log (fuzz_shard, fuzz_sparse,
 * fuzz_wal): a real store (RocksDB in a fresh directory under $TMPDIR),
 * its sparse rows when asked (psd_shard_sparse_open: DATA_DIR/sparse),
 * and the clock table; SERVING.
 *
 * The shard holds model "m" (gen 1; seed 1; Adam; ssp with bound 1):
 * dense tensors W [4, 8] (glorot) and b [8] (zeros) in chunks of 16
 * elements (ids 0..2, all on this one shard), and (when asked) a graph
 * whose params are E (embedding, dim 4: sparse table 0), W, b and F
 * (embedding, dim 3: sparse table 3).  One shard, two workers, max_request_bytes 1 MiB,
 * sparse.memory_rows 8 (so that a few keys evict and read back rows), and
 * sparse.admit_after as the caller asks. */
#ifndef PS_FUZZ_PSD_H
#define PS_FUZZ_PSD_H

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <uv.h>

#include "fuzz.h"
#include "graph.pb-c.h"
#include "ps.pb-c.h"
#include "ps_config.h"
#include "psd_shard.h"
#include "psd_shard_sparse.h"
#include "psd_sparse.h"
#include "psd_store.h"

#define FUZZ_PSD_TABLE_E 0u /* dim 4 */
#define FUZZ_PSD_TABLE_F 3u /* dim 3 */

typedef struct fuzz_psd {
  char dir[4096];
  ps_config cfg;
  uv_loop_t loop;
  psd_shard sh;
  int open;
} fuzz_psd;

/* fuzz_psd_rm removes one entry of the tree nftw walks (depth first). */
static inline int fuzz_psd_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

/* fuzz_psd_close closes F's shard, store, rows and clock and removes its
 * directory. */
static inline void fuzz_psd_close(fuzz_psd *f) {
  if (!f->open) return;
  psd_shard_clock_stop(&f->sh);
  psd_clock_free(f->sh.clock);
  uv_close((uv_handle_t *)&f->sh.clock_timer, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  psd_shard_sparse_close(&f->sh);
  psd_store_close(f->sh.store);
  uv_loop_close(&f->loop);
  ps_config_release(&f->cfg);
  fuzz_check(nftw(f->dir, fuzz_psd_rm, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove %s", f->dir);
  f->open = 0;
}

/* fuzz_psd_open makes F's shard in a fresh directory named after WHAT,
 * with model "m" submitted, admission after ADMIT_AFTER pulls; without
 * SPARSE, "m" has no graph and the shard no sparse rows (fuzz_shard's). */
static inline void fuzz_psd_open(fuzz_psd *f, const char *what, unsigned admit_after, int sparse) {
  const char *tmp = getenv("TMPDIR");
  snprintf(f->dir, sizeof f->dir, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", what);
  fuzz_check(mkdtemp(f->dir) != NULL, "mkdtemp %s failed", f->dir);
  char yaml[8192];
  snprintf(yaml, sizeof yaml,
           "cluster: fuzz\n"
           "chunk_elems: 16\n"
           "limits:\n  max_request_bytes: 1048576\n"
           "workers:\n  count: 2\n"
           "sparse:\n  memory_rows: 8\n  admit_after: %u\n"
           "security: {mode: none}\n"
           "shards:\n"
           "  - id: 0\n"
           "    grpc: 127.0.0.1:7000\n"
           "    channel: 127.0.0.1:7100\n"
           "    data_dir: %s/db\n", admit_after, f->dir);
  ps_errbuf eb;
  fuzz_check(ps_config_load_buf(&f->cfg, "fuzz_psd.yaml", yaml, strlen(yaml), &eb) == 0,
             "config: %s", eb.msg);
  fuzz_check(uv_loop_init(&f->loop) == 0, "uv_loop_init failed");
  memset(&f->sh, 0, sizeof f->sh);
  f->sh.cfg = &f->cfg;
  f->sh.me = &f->cfg.shards[0];
  f->sh.loop = &f->loop;
  uint32_t id = f->sh.me->id;
  psd_store_opts o = {.dir = f->sh.me->data_dir, .shard_index = 0, .shard_ids = &id,
                      .nshards = 1, .chunk_elems = f->cfg.chunk_elems};
  fuzz_check(psd_store_open(&f->sh.store, &o, &eb) == 0, "store: %s", eb.msg);
  if (sparse) fuzz_check(psd_shard_sparse_open(&f->sh, &eb) == 0, "sparse rows: %s", eb.msg);
  fuzz_check(psd_shard_clock_start(&f->sh, &eb) == 0, "clock: %s", eb.msg);
  f->sh.state = PSD_SERVING;

  uint32_t wshape[] = {4, 8}, bshape[] = {8}, eshape[] = {4}, fshape[] = {3};
  Ps__TensorSpec w = PS__TENSOR_SPEC__INIT, b = PS__TENSOR_SPEC__INIT, *ts[] = {&w, &b};
  w.name = "W", w.shape = wshape, w.n_shape = 2, w.init = "glorot", w.scale = 1;
  b.name = "b", b.shape = bshape, b.n_shape = 1, b.init = "zeros";
  Ps__Graph__Param ge = PS__GRAPH__PARAM__INIT, gw = PS__GRAPH__PARAM__INIT,
                   gb = PS__GRAPH__PARAM__INIT, gf = PS__GRAPH__PARAM__INIT,
                   *gp[] = {&ge, &gw, &gb, &gf};
  ge.name = "E", ge.shape = eshape, ge.n_shape = 1, ge.init = "normal", ge.scale = 0.1f;
  ge.sparse = 1;
  gw.name = "W", gw.shape = wshape, gw.n_shape = 2, gw.init = "glorot", gw.scale = 1;
  gb.name = "b", gb.shape = bshape, gb.n_shape = 1, gb.init = "zeros";
  gf.name = "F", gf.shape = fshape, gf.n_shape = 1, gf.sparse = 1;
  Ps__Graph__Graph g = PS__GRAPH__GRAPH__INIT;
  g.name = "m", g.params = gp, g.n_params = 4;
  uint8_t gbuf[1024];
  size_t glen = ps__graph__graph__get_packed_size(&g);
  fuzz_check(glen <= sizeof gbuf, "graph of %zu bytes", glen);
  ps__graph__graph__pack(&g, gbuf);
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "adam", opt.lr = 0.01f, opt.beta1 = 0.9f, opt.beta2 = 0.999f, opt.eps = 1e-8f;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = "m", spec.seed = 1, spec.tensors = ts, spec.n_tensors = 2, spec.optimizer = &opt;
  spec.consistency = "ssp", spec.staleness = 1;
  if (sparse) spec.graph.data = gbuf, spec.graph.len = glen;
  Ps__SubmitModelReply rep = PS__SUBMIT_MODEL_REPLY__INIT;
  fuzz_check(psd_shard_submit(&f->sh, &spec, 0, &rep, &eb) == 0, "submit: %s", eb.msg);
  uint32_t dim = 0;
  fuzz_check(!sparse || (psd_sparse_dim(psd_shard_sparse_rows(&f->sh), "m", FUZZ_PSD_TABLE_F, &dim,
                                        NULL) == 0 && dim == 3), "table F is missing");
  f->open = 1;
}

/* fuzz_psd_row_sum folds what psd_sparse_row says about row KEY of table
 * T of model "m" (whether it exists, its values, slots and update count)
 * into the FNV-1a hash *H; aborts when the row is not finite (every row
 * stays finite: pushes that would break it are refused). */
static inline void fuzz_psd_row_sum(fuzz_psd *f, uint32_t t, uint64_t key, uint64_t *h) {
  psd_sparse *rows = psd_shard_sparse_rows(&f->sh);
  uint32_t dim = 0;
  unsigned slots = 0;
  if (psd_sparse_dim(rows, "m", t, &dim, &slots)) return;
  float v[8 * 4] = {0};
  uint64_t count = 0;
  ps_errbuf eb;
  fuzz_check(dim * (1 + slots) <= sizeof v / sizeof v[0], "dim %u, %u slots", dim, slots);
  int rc = psd_sparse_row(rows, "m", t, key, v, v + dim, &count, NULL, NULL, &eb);
  fuzz_check(rc == 0 || rc == PS_ENOENT, "row %llu: %s", (unsigned long long)key, eb.msg);
  uint8_t b[1 + 8 + sizeof v + 8];
  size_t n = 0;
  b[n++] = rc == 0;
  memcpy(b + n, &key, 8), n += 8;
  if (rc == 0) {
    for (uint32_t i = 0; i < dim * (1 + slots); i++)
      fuzz_check(isfinite(v[i]), "row %llu of table %u is not finite", (unsigned long long)key, t);
    memcpy(b + n, v, dim * (1 + slots) * sizeof(float)), n += dim * (1 + slots) * sizeof(float);
    memcpy(b + n, &count, 8), n += 8;
  }
  for (size_t i = 0; i < n; i++) *h = (*h ^ b[i]) * 0x100000001b3ull;
}

#endif
