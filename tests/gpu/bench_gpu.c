/* ps_bench_gpu: a compute backend's MLP step against its own sgemm rate.
 *
 *   ps_bench_gpu [--device cuda|cuda:N] [--iters N] [--tf32] [--layers W,W,..] [--batch B]
 *   ps_bench_gpu --device cpu [--layers 784,256,128,10] [--batch 256] [--threads 1,2]
 *                [--iters N]
 *
 * cuda (issue 5, section 5), on one GPU:
 * 1. The sgemm rate: a loop of 4096^3 products through the op table's gemm
 *    (one cublasSgemm call each), in TFLOP/s.
 * 2. The wide MLP (default 4096-4096-4096-10, relu, softmax cross-entropy,
 *    batch 1024): forward + backward per step through the op table (every
 *    gemm, bias, activation and loss op a worker step runs; no copies), its
 *    TFLOP/s counting the gemms only, and that rate as a fraction of 1.
 * Times are wall clock around N iterations after warm-up, ended by a sync
 * of the compute stream.  Exits 0 with "no CUDA device: ..." when there is
 * none (or this build has no cuda backend).  The last line is
 * machine-readable: "result sgemm_tflops=... mlp_ms=... mlp_tflops=...
 * fraction=... math=fp32|tf32".
 *
 * cpu (issue 11, the compute-bound ceiling of the MLP a worker trains;
 * default the 784-256-128-10 relu MLP at batch 256), for each OpenBLAS
 * thread count of --threads (default 1,2; the count is process-wide):
 * 1. each gemm of one forward + backward step alone, the products
 *    worker/psw_graph.c's executor runs (fwd_dense: Y = X W; bwd_dense:
 *    dW = X^T dY and dX = dY W^T, no dX for the first layer, whose input
 *    is the data), in GFLOP/s;
 * 2. those gemms in step order, back to back: the sgemm rate at the
 *    MLP's shapes.  The ceiling in samples/s is that rate divided by the
 *    gemm FLOPs of one sample: 2 in out per layer forward, as much for dW,
 *    and as much for dX on every layer but the first (784-256-128-10:
 *    469,504 + 469,504 + 68,096 = 1,007,104);
 * 3. the same step through the op table (gemm, bias + relu, softmax
 *    cross-entropy, bias and relu gradients, as the cuda step);
 * 4. psw's own step: psw_exec_step on the graph `psctl model mlp` builds,
 *    as ms per step, samples/s and share of the ceiling.
 * FLOPs count gemms only (2 m n k each; bias, activation and loss work is
 * left out).  Each time is the median of 7 rounds (3 for the gemms alone)
 * of N steps (default: as many as take about 0.1 s) after a warm-up.  One
 * machine-readable line per thread count: "result cpu threads=T batch=B
 * flops_per_sample=F sgemm_gflops=G ceiling_sps=C ops_ms=M exec_ms=E
 * exec_sps=S exec_share=R".
 *
 * Like psw, it first makes OpenBLAS run the best kernel the CPU has
 * (ps_gpu_blas_select: it may execute itself again).
 *
 * --help prints the usage on stdout (status 0).  A bad flag or value, or
 * flags that do not go together (--tf32 or --threads with --device cpu
 * or not), print what was wrong and the usage on stderr: status 2.  Any
 * other failure: status 1. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_config.h"
#include "ps_gpu.h"
#include "ps_gpu_blas.h"
#ifdef PS_HAVE_CUDA_BACKEND
#include "ps_gpu_cuda.h"
#endif
#include "psw_graph.h"

#define CHECK(call)                                                                  \
  do {                                                                               \
    int ck_rc_ = (call);                                                             \
    if (ck_rc_) {                                                                    \
      fprintf(stderr, "ps_bench_gpu: %s: %s\n", #call, ps_strerror(ck_rc_));         \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

enum { MAXL = 16, MAXT = 8 };

/* now_s returns CLOCK_MONOTONIC in seconds. */
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;

/* rnd: uniform in [-1, 1) (xorshift64*, fixed seed: runs are comparable). */
static float rnd(void) {
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return (float)((double)((rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0 * 2 - 1);
}

/* dev_rand returns a device buffer of N floats uniform in [-scale, scale]
 * (filled through a host buffer; the caller frees it with free_buf). */
static float *dev_rand(ps_gpu_backend *be, size_t n, float scale) {
  float *h = malloc(n * sizeof(float)), *d;
  if (!h) exit(1);
  for (size_t i = 0; i < n; i++) h[i] = rnd() * scale;
  CHECK(be->ops->alloc(be, n * sizeof(float), (void **)&d));
  CHECK(be->ops->copy_h2d(be, d, h, n * sizeof(float), PS_GPU_STREAM_COMPUTE));
  CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
  free(h);
  return d;
}

/* dev_new returns N floats of device memory (the caller frees it). */
static float *dev_new(ps_gpu_backend *be, size_t n) {
  float *d;
  CHECK(be->ops->alloc(be, n * sizeof(float), (void **)&d));
  return d;
}

/* ---- timing ------------------------------------------------------------------ */

typedef void (*step_fn)(void *arg);

/* cmp_double orders doubles for qsort. */
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A step to time: FN(ARG), ITERS calls a round (0: as many as take about
 * 0.1 s, judged from the warm-up); S receives the median seconds per call. */
typedef struct timed {
  step_fn fn;
  void *arg;
  int iters;
  double s;
} timed;

/* time_steps times the K steps T[0..K) over ROUNDS (1..15) rounds each,
 * after 3 warm-up calls each.  Round r of every step runs before round
 * r + 1 of any, so that a change in the machine's load hits them alike;
 * each round ends with a sync of BE's compute stream. */
static void time_steps(ps_gpu_backend *be, timed *t, int k, int rounds) {
  double per[8][15];
  if (k < 1 || k > 8 || rounds < 1 || rounds > 15) CHECK(PS_EINVAL);
  for (int j = 0; j < k; j++) {
    double t0 = now_s();
    for (int i = 0; i < 3; i++) t[j].fn(t[j].arg);
    CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
    double dt = (now_s() - t0) / 3;
    if (t[j].iters <= 0) t[j].iters = dt > 0 ? (int)(0.1 / dt) : 1000;
    if (t[j].iters < 3) t[j].iters = 3;
    if (t[j].iters > 100000) t[j].iters = 100000;
  }
  for (int r = 0; r < rounds; r++) {
    for (int j = 0; j < k; j++) {
      double t0 = now_s();
      for (int i = 0; i < t[j].iters; i++) t[j].fn(t[j].arg);
      CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
      per[j][r] = (now_s() - t0) / t[j].iters;
    }
  }
  for (int j = 0; j < k; j++) {
    double *p = per[j];
    qsort(p, (size_t)rounds, sizeof p[0], cmp_double);
    t[j].s = rounds % 2 ? p[rounds / 2] : (p[rounds / 2 - 1] + p[rounds / 2]) / 2;
  }
}

/* time_step returns the median seconds per call of FN(ARG) (time_steps
 * with one step). */
static double time_step(ps_gpu_backend *be, step_fn fn, void *arg, int iters, int rounds) {
  timed t = {fn, arg, iters, 0};
  time_steps(be, &t, 1, rounds);
  return t.s;
}

/* One gemm through the op table: C = op(A) op(B). */
typedef struct gemm_call {
  ps_gpu_backend *be;
  int ta, tb;
  ps_gpu_tensor a, b, c;
} gemm_call;

/* run_gemm runs the gemm_call ARG. */
static void run_gemm(void *arg) {
  gemm_call *g = arg;
  CHECK(g->be->ops->gemm(g->be, g->ta, g->tb, 1, &g->a, &g->b, 0, &g->c));
}

/* gemm_flops returns 2 m n k of G. */
static double gemm_flops(const gemm_call *g) {
  double m = g->ta ? g->a.cols : g->a.rows, k = g->ta ? g->a.rows : g->a.cols;
  return 2 * m * k * g->c.cols;
}

/* bench_sgemm returns the 4096^3 sgemm rate in TFLOP/s. */
static double bench_sgemm(ps_gpu_backend *be, int iters) {
  enum { N = 4096 };
  float *a = dev_rand(be, (size_t)N * N, 1), *b = dev_rand(be, (size_t)N * N, 1),
        *c = dev_new(be, (size_t)N * N);
  gemm_call g = {be, 0, 0, ps_gpu_tensor_make(be, a, N, N), ps_gpu_tensor_make(be, b, N, N),
                 ps_gpu_tensor_make(be, c, N, N)};
  double dt = time_step(be, run_gemm, &g, iters, 1), tflops = gemm_flops(&g) / dt * 1e-12;
  printf("sgemm %dx%dx%d: %.3f ms each, %.2f TFLOP/s\n", N, N, N, dt * 1e3, tflops);
  be->ops->free_buf(be, a);
  be->ops->free_buf(be, b);
  be->ops->free_buf(be, c);
  return tflops;
}

/* ---- the MLP step ------------------------------------------------------------- */

/* An MLP's buffers on one backend: layer l (1..nl) maps act[l-1] to act[l]. */
typedef struct mlp {
  size_t nl;
  uint32_t batch;
  uint32_t widths[MAXL + 1];
  float *act[MAXL + 1], *dact[MAXL + 1], *w[MAXL + 1], *b[MAXL + 1], *dw[MAXL + 1],
      *db[MAXL + 1], *loss;
  int32_t *labels;
  double flops[3];        /* gemm FLOPs of one step: forward, dW, dX */
} mlp;

/* The gemms of a dense layer, as worker/psw_graph.c's fwd_dense and bwd_dense. */
enum { G_FWD, G_DW, G_DX };
static const char *const gemm_kind[] = {"Y = X W", "dW = X^T dY", "dX = dY W^T"};

#define TS(p, r, c) ps_gpu_tensor_make(be, p, r, c)

/* mlp_gemm returns gemm KIND of layer L (1..nl) of M. */
static gemm_call mlp_gemm(ps_gpu_backend *be, const mlp *m, int kind, size_t l) {
  uint32_t n = m->batch, in = m->widths[l - 1], out = m->widths[l];
  ps_gpu_tensor x = TS(m->act[l - 1], n, in), w = TS(m->w[l], in, out);
  ps_gpu_tensor y = TS(m->act[l], n, out), dy = TS(m->dact[l], n, out);
  if (kind == G_FWD) return (gemm_call){be, 0, 0, x, w, y};
  if (kind == G_DW) return (gemm_call){be, 1, 0, x, dy, TS(m->dw[l], in, out)};
  return (gemm_call){be, 0, 1, dy, w, TS(m->dact[l - 1], n, in)};
}

/* mlp_make allocates and fills M's buffers on BE for M->widths[0..nl]
 * and M->batch, and counts its gemm FLOPs.  Free with mlp_release. */
static void mlp_make(ps_gpu_backend *be, mlp *m) {
  const uint32_t n = m->batch, k = m->widths[m->nl];
  m->act[0] = dev_rand(be, (size_t)n * m->widths[0], 1);
  memset(m->flops, 0, sizeof m->flops);
  for (size_t l = 1; l <= m->nl; l++) {
    const size_t in = m->widths[l - 1], out = m->widths[l];
    m->w[l] = dev_rand(be, in * out, sqrtf(6.0f / (float)(in + out)));
    m->b[l] = dev_rand(be, out, 0.01f);
    m->act[l] = dev_new(be, (size_t)n * out);
    m->dact[l] = dev_new(be, (size_t)n * out);
    m->dw[l] = dev_new(be, in * out);
    m->db[l] = dev_new(be, out);
    m->flops[G_FWD] += 2.0 * n * in * out;
    m->flops[G_DW] += 2.0 * n * in * out;
    if (l > 1) m->flops[G_DX] += 2.0 * n * in * out; /* the data needs no gradient */
  }
  m->loss = dev_new(be, 1);
  int32_t *lab = malloc(n * sizeof *lab);
  if (!lab) exit(1);
  for (uint32_t i = 0; i < n; i++) lab[i] = (int32_t)((rnd() + 1) * 0.5f * k) % (int32_t)k;
  CHECK(be->ops->alloc(be, n * sizeof *lab, (void **)&m->labels));
  CHECK(be->ops->copy_h2d(be, m->labels, lab, n * sizeof *lab, PS_GPU_STREAM_COMPUTE));
  CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
  free(lab);
}

/* mlp_release frees what mlp_make allocated. */
static void mlp_release(ps_gpu_backend *be, mlp *m) {
  for (size_t l = 0; l <= m->nl; l++) { /* dact[0], w[0], ...: NULL */
    be->ops->free_buf(be, m->act[l]);
    be->ops->free_buf(be, m->dact[l]);
    be->ops->free_buf(be, m->w[l]);
    be->ops->free_buf(be, m->b[l]);
    be->ops->free_buf(be, m->dw[l]);
    be->ops->free_buf(be, m->db[l]);
  }
  be->ops->free_buf(be, m->loss);
  be->ops->free_buf(be, m->labels);
}

/* mlp_flops returns the gemm FLOPs of one forward + backward step of M. */
static double mlp_flops(const mlp *m) { return m->flops[G_FWD] + m->flops[G_DW] + m->flops[G_DX]; }

/* The step through the op table: every op (GEMMS_ONLY 0) or its gemms alone. */
typedef struct mlp_call {
  ps_gpu_backend *be;
  mlp *m;
  int gemms_only;
} mlp_call;

/* mlp_step queues one forward + backward pass of the mlp_call ARG. */
static void mlp_step(void *arg) {
  mlp_call *s = arg;
  ps_gpu_backend *be = s->be;
  const ps_gpu_ops *o = be->ops;
  mlp *m = s->m;
  const size_t nl = m->nl;
  const uint32_t n = m->batch;
  for (size_t l = 1; l <= nl; l++) {
    gemm_call g = mlp_gemm(be, m, G_FWD, l);
    run_gemm(&g);
    ps_gpu_tensor bi = TS(m->b[l], 1, m->widths[l]);
    if (!s->gemms_only)
      CHECK(o->bias_add(be, &g.c, &bi, l < nl ? PS_GPU_ACT_RELU : PS_GPU_ACT_NONE));
  }
  ps_gpu_tensor z = TS(m->act[nl], n, m->widths[nl]), dz = TS(m->dact[nl], n, m->widths[nl]),
                loss = TS(m->loss, 1, 1);
  if (!s->gemms_only) CHECK(o->softmax_xent(be, &z, m->labels, &loss, &dz));
  for (size_t l = nl; l >= 1; l--) {
    gemm_call g = mlp_gemm(be, m, G_DW, l);
    run_gemm(&g);
    ps_gpu_tensor dy = TS(m->dact[l], n, m->widths[l]), db = TS(m->db[l], 1, m->widths[l]);
    if (!s->gemms_only) CHECK(o->bias_grad(be, &dy, 0, &db));
    if (l == 1) continue;
    g = mlp_gemm(be, m, G_DX, l);
    run_gemm(&g);
    ps_gpu_tensor x = TS(m->act[l - 1], n, m->widths[l - 1]);
    if (!s->gemms_only) CHECK(o->act_bwd(be, PS_GPU_ACT_RELU, &x, &g.c, &g.c));
  }
}

/* mlp_name writes "W-W-..-W" of M into BUF (LEN bytes); returns BUF. */
static const char *mlp_name(const mlp *m, char *buf, size_t len) {
  size_t at = 0;
  for (size_t l = 0; l <= m->nl && at < len; l++)
    at += (size_t)snprintf(buf + at, len - at, "%s%u", l ? "-" : "", m->widths[l]);
  return buf;
}

/* ---- cuda ---------------------------------------------------------------------- */

/* bench_wide returns the MLP M's step rate on BE (gemm FLOPs) in TFLOP/s;
 * *MS gets ms per step. */
static double bench_wide(ps_gpu_backend *be, mlp *m, int iters, double *ms) {
  char name[256];
  mlp_make(be, m);
  mlp_call s = {be, m, 0};
  double dt = time_step(be, mlp_step, &s, iters, 1), flops = mlp_flops(m);
  double tflops = flops / dt * 1e-12;
  float loss;
  CHECK(be->ops->copy_d2h(be, &loss, m->loss, sizeof loss, PS_GPU_STREAM_COMPUTE));
  CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
  printf("wide MLP %s relu, batch %u: fwd+bwd %.3f ms/step, %.2f TFLOP/s "
         "(%.1f GFLOP/step in gemms), loss %.4f\n",
         mlp_name(m, name, sizeof name), m->batch, dt * 1e3, tflops, flops * 1e-9, loss);
  *ms = dt * 1e3;
  mlp_release(be, m);
  return tflops;
}

/* bench_cuda runs the cuda benchmark on DEVICE; the exit code. */
static int bench_cuda(const char *device, mlp *m, int iters, int tf32) {
  ps_gpu_backend *be;
  ps_errbuf eb;
  int rc = ps_gpu_open(device, &be, &eb);
  if (rc == PS_EDEVICE) {
    printf("no CUDA device: %s\n", eb.msg);
    return 0;
  }
  if (rc) {
    fprintf(stderr, "ps_bench_gpu: %s\n", eb.msg);
    return 1;
  }
  if (strcmp(be->name, "cuda") != 0) {
    printf("no CUDA device: '%s' opened the %s backend\n", device, be->name);
    ps_gpu_close(be);
    return 0;
  }
#ifdef PS_HAVE_CUDA_BACKEND
  CHECK(ps_gpu_cuda_set_tf32(be, tf32));
#else
  (void)tf32;
#endif
  printf("device: %s\n", be->desc);
  double sgemm = bench_sgemm(be, iters), ms;
  double wide = bench_wide(be, m, iters, &ms);
  printf("wide MLP fwd+bwd rate / sgemm rate: %.1f %%\n", 100 * wide / sgemm);
  printf("result sgemm_tflops=%.3f mlp_ms=%.3f mlp_tflops=%.3f fraction=%.3f math=%s\n", sgemm, ms,
         wide, wide / sgemm, tf32 ? "tf32" : "fp32");
  ps_gpu_close(be);
  return 0;
}

/* ---- cpu ----------------------------------------------------------------------- */

/* psw's step on one batch (psw_exec_step's arguments). */
typedef struct exec_call {
  psw_exec *ex;
  psw_graph *g;
  const float *params;
  float *grads;
  psw_batch b;
} exec_call;

/* run_exec runs the exec_call ARG. */
static void run_exec(void *arg) {
  exec_call *e = arg;
  float loss;
  uint32_t correct;
  ps_errbuf eb;
  if (psw_exec_step(e->ex, e->params, &e->b, e->grads, &loss, &correct, &eb) < 0) {
    fprintf(stderr, "ps_bench_gpu: psw_exec_step: %s\n", eb.msg);
    exit(1);
  }
}

/* exec_open prepares E for psw_exec_step on BE with the relu MLP of M's
 * widths, on M's input and labels (host memory: BE is the CPU).  Release
 * with exec_close. */
static void exec_open(ps_gpu_backend *be, const mlp *m, exec_call *e) {
  ps_errbuf eb;
  uint8_t *buf;
  size_t len;
  psw_graph *g;
  if (psw_graph_mlp_pack("mlp", m->widths, m->nl + 1, PS_GPU_ACT_RELU, &buf, &len, &eb) ||
      psw_graph_load(buf, len, &g, &eb)) {
    fprintf(stderr, "ps_bench_gpu: mlp graph: %s\n", eb.msg);
    exit(1);
  }
  free(buf);
  uint64_t np = psw_graph_nparams(g);
  float *params = malloc(np * sizeof *params);
  *e = (exec_call){NULL, g, params, malloc(np * sizeof *params),
                   {.n = m->batch, .x = m->act[0], .labels = m->labels}};
  if (!params || !e->grads) exit(1);
  CHECK(psw_graph_init_params(g, 1, params));
  if (psw_exec_create(g, be, m->batch, &e->ex, &eb)) {
    fprintf(stderr, "ps_bench_gpu: %s\n", eb.msg);
    exit(1);
  }
}

/* exec_close releases what exec_open made. */
static void exec_close(exec_call *e) {
  psw_exec_free(e->ex);
  psw_graph_free(e->g);
  free((float *)e->params);
  free(e->grads);
}

/* bench_cpu_gemms prints each gemm of M's step alone on BE. */
static void bench_cpu_gemms(ps_gpu_backend *be, mlp *m, int iters) {
  for (size_t l = 1; l <= m->nl; l++) {
    for (int kind = G_FWD; kind <= G_DX; kind++) {
      if (kind == G_DX && l == 1) continue;
      gemm_call g = mlp_gemm(be, m, kind, l);
      double dt = time_step(be, run_gemm, &g, iters, 3);
      uint32_t rows = g.ta ? g.a.cols : g.a.rows, inner = g.ta ? g.a.rows : g.a.cols;
      printf("  layer %zu %-12s [%u x %u] . [%u x %u]  %8.4f ms  %6.1f GFLOP/s\n", l,
             gemm_kind[kind], rows, inner, inner, g.c.cols, dt * 1e3,
             gemm_flops(&g) / dt * 1e-9);
    }
  }
}

/* bench_cpu_threads measures M's step with THREADS OpenBLAS threads. */
static void bench_cpu_threads(mlp *m, int threads, int iters) {
  ps_gpu_backend *be;
  ps_errbuf eb;
  if (ps_gpu_cpu_open(threads, &be, &eb)) {
    fprintf(stderr, "ps_bench_gpu: %s\n", eb.msg);
    exit(1);
  }
  mlp_make(be, m);
  const double flops = mlp_flops(m), per_sample = flops / m->batch;
  printf("device: %s\n", be->desc);
  bench_cpu_gemms(be, m, iters);
  mlp_call gemms = {be, m, 1}, ops = {be, m, 0};
  exec_call e;
  exec_open(be, m, &e);
  timed t[3] = {{mlp_step, &gemms, iters, 0}, {mlp_step, &ops, iters, 0}, {run_exec, &e, iters, 0}};
  time_steps(be, t, 3, 7);
  exec_close(&e);
  const double t_gemm = t[0].s, t_ops = t[1].s, t_exec = t[2].s;
  double gflops = flops / t_gemm * 1e-9, ceiling = m->batch / t_gemm;
  printf("  the step's gemms back to back: %.3f ms, %.1f GFLOP/s: ceiling %.0f samples/s\n",
         t_gemm * 1e3, gflops, ceiling);
  printf("  the step through the op table: %.3f ms, %.0f samples/s, %.1f %% of the ceiling\n",
         t_ops * 1e3, m->batch / t_ops, 100 * t_gemm / t_ops);
  printf("  psw_exec_step:                 %.3f ms, %.0f samples/s, %.1f %% of the ceiling\n",
         t_exec * 1e3, m->batch / t_exec, 100 * t_gemm / t_exec);
  printf("result cpu threads=%d batch=%u flops_per_sample=%.0f sgemm_gflops=%.3f "
         "ceiling_sps=%.1f ops_ms=%.4f exec_ms=%.4f exec_sps=%.1f exec_share=%.4f\n",
         threads, m->batch, per_sample, gflops, ceiling, t_ops * 1e3, t_exec * 1e3,
         m->batch / t_exec, t_gemm / t_exec);
  mlp_release(be, m);
  ps_gpu_close(be);
}

/* bench_cpu runs the cpu benchmark for each of THREADS[0..NT); the exit code. */
static int bench_cpu(mlp *m, const int *threads, size_t nt, int iters) {
  char name[256];
  double fwd = 0, dx = 0;
  for (size_t l = 1; l <= m->nl; l++) {
    double f = 2.0 * m->widths[l - 1] * m->widths[l];
    fwd += f;
    if (l > 1) dx += f;
  }
  printf("MLP %s relu, batch %u, CPU backend (cblas_sgemm): gemm FLOPs per sample %.0f = "
         "forward %.0f + dW %.0f + dX %.0f (no dX for layer 1); bias, relu and loss not counted\n",
         mlp_name(m, name, sizeof name), m->batch, 2 * fwd + dx, fwd, fwd, dx);
  for (size_t i = 0; i < nt; i++) bench_cpu_threads(m, threads[i], iters);
  return 0;
}

/* ---- arguments ----------------------------------------------------------------- */

/* parse_list reads "A,B,..." of integers in [LO, HI] into OUT (at most
 * MAX), each read as every flag reads an integer (ps_parse_uint: digits
 * only, no sign or blank, no wrap-around); returns the count, or -1. */
static int parse_list(const char *s, uint64_t lo, uint64_t hi, long *out, int max) {
  int n = 0;
  for (;;) {
    char tok[24];
    size_t len = strcspn(s, ",");
    uint64_t v;
    if (n == max || len >= sizeof tok) return -1;
    memcpy(tok, s, len);
    tok[len] = 0;
    if (ps_parse_uint(tok, &v) < 0 || v < lo || v > hi) return -1;
    out[n++] = (long)v;
    if (!s[len]) return n;
    s += len + 1;
  }
}

static const char usage[] =
    "usage: ps_bench_gpu [--device cuda|cuda:N] [--iters N] [--tf32] [--layers W,W,..]"
    " [--batch B]\n"
    "       ps_bench_gpu --device cpu [--layers 784,256,128,10] [--batch 256] [--threads 1,2]"
    " [--iters N]\n"
    "  --device  " PS_GPU_DEVICE_RULE "\n"
    "  --iters   steps per round, 1..1000000    --batch  1..1048576\n"
    "  --layers  2 to 17 widths, each 1..1048576  --threads  1 to 8 OpenBLAS thread counts,"
    " each 1..1024\n"
    "  --tf32    cuda only: TF32 gemm math\n";

/* bench_bad reports a bad command line, what was wrong and then the
 * usage; the exit status 2. */
static int bench_bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bench_bad(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("ps_bench_gpu: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n%s", usage);
  return 2;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(usage, stdout);
      return 0;
    }
  ps_errbuf beb;
  if (ps_gpu_blas_select(argv, &beb) < 0)
    fprintf(stderr, "ps_bench_gpu: %s; going on with OpenBLAS's own kernel\n", beb.msg);
  const char *device = "cuda", *layers = NULL, *threads = NULL;
  int tf32 = 0;
  long iters = 0, batch = 0, v[MAXL + 1], tl[MAXT];
  int nl = 0, nt = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val;
    if (!strcmp(a, "--tf32")) {
      tf32 = 1;
      continue;
    }
    if (strcmp(a, "--device") && strcmp(a, "--iters") && strcmp(a, "--layers") &&
        strcmp(a, "--threads") && strcmp(a, "--batch"))
      return bench_bad("unknown argument '%s'", a);
    if (i + 1 == argc) return bench_bad("%s wants a value", a);
    val = argv[++i];
    ps_errbuf eb;
    if (!strcmp(a, "--device")) {
      if (ps_gpu_device_parse(val, NULL, &eb) < 0) return bench_bad("--device: %s", eb.msg);
      device = val;
    } else if (!strcmp(a, "--iters")) {
      if (parse_list(val, 1, 1000000, &iters, 1) != 1)
        return bench_bad("bad value '%s' for --iters (an integer from 1 to 1000000)", val);
    } else if (!strcmp(a, "--batch")) {
      if (parse_list(val, 1, 1 << 20, &batch, 1) != 1)
        return bench_bad("bad value '%s' for --batch (an integer from 1 to 1048576)", val);
    } else if (!strcmp(a, "--layers")) {
      if ((nl = parse_list(val, 1, 1 << 20, v, MAXL + 1)) < 2)
        return bench_bad("bad value '%s' for --layers (2 to %d widths W,W,.., each from 1 to "
                         "1048576)", val, MAXL + 1);
      layers = val;
    } else {
      if ((nt = parse_list(val, 1, 1024, tl, MAXT)) < 1)
        return bench_bad("bad value '%s' for --threads (1 to %d thread counts T,T,.., each from "
                         "1 to 1024)", val, MAXT);
      threads = val;
    }
  }
  int cpu = !strcmp(device, "cpu");
  if (cpu && tf32) return bench_bad("--tf32 is a cuda gemm math: not with --device cpu");
  if (!cpu && threads)
    return bench_bad("--threads '%s' is for --device cpu (OpenBLAS threads), not '%s'", threads,
                     device);
  mlp m = {.batch = (uint32_t)(batch ? batch : cpu ? 256 : 1024)};
  if (!layers)
    nl = parse_list(cpu ? "784,256,128,10" : "4096,4096,4096,10", 1, 1 << 20, v, MAXL + 1);
  m.nl = (size_t)nl - 1;
  for (int i = 0; i < nl; i++) m.widths[i] = (uint32_t)v[i];
  if (!cpu) return bench_cuda(device, &m, iters ? (int)iters : 20, tf32);
  if (!threads) nt = parse_list("1,2", 1, 1024, tl, MAXT);
  int t[MAXT];
  for (int i = 0; i < nt; i++) t[i] = (int)tl[i];
  return bench_cpu(&m, t, (size_t)nt, (int)iters);
}
