/* fuzz_graph: the model-graph loaders, worker/psw_graph.c and the chunk
 * layout of common/ps_model.c.
 *
 * Input: bytes read two ways.  (1) As a graph file (ps.graph.Graph,
 * psw_graph_load); a graph that loads goes through psw_graph_print,
 * psw_graph_to_spec and back through psw_graph_from_spec (which must
 * accept it: same parameter count), ps_layout_build of that spec, and
 * when small (parameters, input and target columns) one forward/backward
 * step of 2 rows on the CPU backend (one id per field, zero rows, for a
 * graph with an embedding table), which a checked graph must pass.
 * (2) As a ModelSpec from GetModel (psw_graph_from_spec, as psw does with
 * what a shard sends) and ps_layout_build of it.
 * Checks: failures are PS_E* codes with a message, of the kinds
 * psw_graph.h documents. */
#include "fuzz.h"
#include "ps_gpu.h"
#include "ps_model.h"
#include "psw_embed.h"
#include "psw_graph.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_GRAPH_MAX_COLS (1u << 12)   /* input / target columns run */
#define FUZZ_GRAPH_MAX_PARAMS (1u << 16) /* parameters initialised and run */
#define FUZZ_GRAPH_MAX_ELEMS (1u << 20)  /* layout of a spec */
#define FUZZ_GRAPH_MAX_CHUNKS (1u << 16)

static const uint32_t fuzz_graph_shards[] = {0, 1, 2};

/* fuzz_graph_check_load checks the failure of a graph loader. */
static void fuzz_graph_check_load(int rc, const ps_errbuf *eb) {
  fuzz_check_error(rc, *eb);
  fuzz_check(rc == PS_EFORMAT || rc == PS_EINVAL || rc == PS_ENOTSUP || rc == PS_ENOMEM,
             "rc %s (%s)", ps_errname(rc), eb->msg);
}

/* fuzz_graph_layout builds (and releases) the layout of SPEC over three
 * shards when it is small. */
static void fuzz_graph_layout(const Ps__ModelSpec *spec) {
  if (!fuzz_spec_small(spec, 64, FUZZ_GRAPH_MAX_ELEMS, FUZZ_GRAPH_MAX_CHUNKS)) return;
  ps_layout l;
  ps_errbuf eb;
  int rc = ps_layout_build(&l, spec, 64, fuzz_graph_shards, 3, &eb);
  if (rc < 0) {
    fuzz_check_error(rc, eb);
    return;
  }
  uint64_t total = 0;
  for (uint32_t s = 0; s < 3; s++) {
    uint32_t *ids;
    uint64_t n = 0;
    long k = ps_layout_shard_chunks(&l, s, &ids, &n);
    fuzz_check(k >= 0, "ps_layout_shard_chunks: %ld", k);
    total += n;
    free(ids);
  }
  fuzz_check(total == l.nparams, "shards hold %llu of %llu parameters",
             (unsigned long long)total, (unsigned long long)l.nparams);
  ps_layout_release(&l);
}

/* fuzz_graph_run runs one step of 2 zero rows of G on the CPU backend. */
static void fuzz_graph_run(const psw_graph *g) {
  static ps_gpu_backend *be;
  ps_errbuf eb;
  uint64_t np = psw_graph_nparams(g);
  uint32_t in = psw_graph_input_dim(g), tg = psw_graph_target_dim(g);
  if (np > FUZZ_GRAPH_MAX_PARAMS || in > FUZZ_GRAPH_MAX_COLS || tg > FUZZ_GRAPH_MAX_COLS) return;
  if (!be) fuzz_check(ps_gpu_cpu_open(1, &be, &eb) == 0, "cpu backend: %s", eb.msg);
  float *params = calloc(np + 1, sizeof *params), *grads = calloc(np + 1, sizeof *grads);
  float *x = calloc(2 * (size_t)in + 1, sizeof *x), *t = calloc(2 * (size_t)tg + 1, sizeof *t);
  int32_t labels[2] = {0, psw_graph_classes(g) > 1};
  fuzz_check(params && grads && x && t, "out of memory");
  int rc = psw_graph_init_params(g, 7, params);
  fuzz_check(rc == 0, "a checked graph's parameters do not initialise: %s", ps_errname(rc));
  psw_exec *ex;
  rc = psw_exec_create(g, be, 2, &ex, &eb);
  fuzz_check(rc == 0, "a checked graph does not prepare: %s", eb.msg);
  psw_batch b = {.n = 2, .x = x, .labels = psw_graph_classes(g) ? labels : NULL,
                 .targets = tg ? t : NULL};
  uint32_t fields = 0, dim = 0, nrows = 0;
  psw_embed *pe = NULL;
  psw_sparse_batch sp = {{0}, NULL, NULL};
  uint32_t *off = NULL;
  uint64_t *keys = NULL;
  if (psw_graph_embedding(g, NULL, &fields, &dim, NULL) == 0) {
    if ((uint64_t)fields * dim > FUZZ_GRAPH_MAX_COLS) {
      free(params), free(grads), free(x), free(t);
      psw_exec_free(ex);
      return;
    }
    off = malloc((2 * (size_t)fields + 1) * sizeof *off);
    keys = malloc((2 * (size_t)fields + 1) * sizeof *keys);
    fuzz_check(off && keys && psw_embed_create(&pe) == 0, "out of memory");
    for (uint32_t i = 0; i <= 2 * fields; i++) off[i] = i, keys[i] = i % 3;
    rc = psw_embed_build(pe, 2 * fields, off, keys, 0, &eb);
    fuzz_check(rc == 0, "psw_embed_build: %s", eb.msg);
    psw_embed_bags(pe, &sp.bags);
    psw_embed_keys(pe, &nrows);
    sp.rows = calloc((size_t)nrows * dim + 1, sizeof(float));
    sp.row_grads = calloc((size_t)nrows * dim + 1, sizeof(float));
    fuzz_check(sp.rows && sp.row_grads, "out of memory");
    b.sparse = &sp;
  }
  float loss;
  uint32_t correct;
  rc = psw_exec_step(ex, params, &b, grads, &loss, &correct, &eb);
  fuzz_check(rc == 0, "a checked graph does not run: %s", eb.msg);
  fuzz_check(correct <= 2, "%u of 2 rows correct", correct);
  psw_exec_free(ex);
  free(params), free(grads), free(x), free(t);
  free(off), free(keys), free((float *)sp.rows), free(sp.row_grads);
  psw_embed_free(pe);
}

/* fuzz_graph_file: the input as a graph file. */
static void fuzz_graph_file(const uint8_t *data, size_t size) {
  static FILE *devnull;
  psw_graph *g = NULL, *g2 = NULL;
  ps_errbuf eb;
  int rc = psw_graph_load(data, size, &g, &eb);
  fuzz_note("graph", rc, &eb);
  if (rc < 0) {
    fuzz_graph_check_load(rc, &eb);
    return;
  }
  if (!devnull) fuzz_check((devnull = fopen("/dev/null", "w")) != NULL, "/dev/null");
  psw_graph_print(g, devnull);
  Ps__ModelSpec *spec;
  rc = psw_graph_to_spec(g, "fuzz", &spec, &eb);
  fuzz_check(rc == 0, "psw_graph_to_spec: %s", eb.msg);
  rc = psw_graph_from_spec(spec, &g2, &eb);
  fuzz_check(rc == 0, "a spec made from a checked graph is refused: %s", eb.msg);
  fuzz_check(!g2 || psw_graph_nparams(g2) == psw_graph_nparams(g), "parameter counts differ");
  fuzz_graph_layout(spec);
  psw_graph_free(g2);
  psw_graph_spec_free(spec);
  fuzz_graph_run(g);
  psw_graph_free(g);
}

/* fuzz_graph_spec: the input as a ModelSpec fetched from a shard. */
static void fuzz_graph_spec(const uint8_t *data, size_t size) {
  Ps__ModelSpec *spec = ps__model_spec__unpack(NULL, size, data);
  if (!spec) return;
  psw_graph *g = NULL;
  ps_errbuf eb;
  int rc = psw_graph_from_spec(spec, &g, &eb);
  fuzz_note("spec", rc, &eb);
  if (rc < 0) {
    fuzz_graph_check_load(rc, &eb);
    fuzz_check(g == NULL, "a refused spec left a graph");
  }
  fuzz_graph_layout(spec);
  psw_graph_free(g);
  ps__model_spec__free_unpacked(spec, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_graph_file(data, size);
  fuzz_graph_spec(data, size);
  return 0;
}
