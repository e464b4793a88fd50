/* ps_bench_gpu: the cuda backend's speed on one GPU (issue 5, section 5).
 *
 *   ps_bench_gpu [--device cuda:N] [--iters N] [--tf32]
 *
 * 1. The sgemm rate: a loop of 4096^3 products through the op table's gemm
 *    (one cublasSgemm call each), in TFLOP/s.
 * 2. The wide MLP 4096-4096-4096-10 (relu, softmax cross-entropy), batch
 *    1024: forward + backward per step through the op table (every gemm,
 *    bias, activation and loss op a worker step runs; no copies), its
 *    TFLOP/s counting the gemms only, and that rate as a fraction of 1.
 *
 * Times are wall clock around N iterations after warm-up, ended by a sync
 * of the compute stream.  Prints the device's description first.  Exits 0
 * with "no CUDA device: ..." when there is none (or this build has no cuda
 * backend), 1 on any other failure.  The last line is machine-readable:
 * "result sgemm_tflops=... mlp_ms=... mlp_tflops=... fraction=...".
 * Like psw, it first makes OpenBLAS run the best kernel the CPU has
 * (ps_gpu_blas_select: it may execute itself again). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_gpu.h"
#include "ps_gpu_blas.h"
#ifdef PS_HAVE_CUDA_BACKEND
#include "ps_gpu_cuda.h"
#endif

#define CHECK(call)                                                                  \
  do {                                                                               \
    int ck_rc_ = (call);                                                             \
    if (ck_rc_) {                                                                    \
      fprintf(stderr, "ps_bench_gpu: %s: %s\n", #call, ps_strerror(ck_rc_));         \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

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

static float *dev_new(ps_gpu_backend *be, size_t n) {
  float *d;
  CHECK(be->ops->alloc(be, n * sizeof(float), (void **)&d));
  return d;
}

/* bench_sgemm returns the 4096^3 sgemm rate in TFLOP/s. */
static double bench_sgemm(ps_gpu_backend *be, int iters) {
  enum { N = 4096 };
  float *a = dev_rand(be, (size_t)N * N, 1), *b = dev_rand(be, (size_t)N * N, 1),
        *c = dev_new(be, (size_t)N * N);
  ps_gpu_tensor A = ps_gpu_tensor_make(be, a, N, N), B = ps_gpu_tensor_make(be, b, N, N),
                C = ps_gpu_tensor_make(be, c, N, N);
  for (int i = 0; i < 3; i++) CHECK(be->ops->gemm(be, 0, 0, 1, &A, &B, 0, &C));
  CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
  double t0 = now_s();
  for (int i = 0; i < iters; i++) CHECK(be->ops->gemm(be, 0, 0, 1, &A, &B, 0, &C));
  CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
  double dt = (now_s() - t0) / iters, tflops = 2.0 * N * N * (double)N / dt * 1e-12;
  printf("sgemm %dx%dx%d: %.3f ms each, %.2f TFLOP/s\n", N, N, N, dt * 1e3, tflops);
  be->ops->free_buf(be, a);
  be->ops->free_buf(be, b);
  be->ops->free_buf(be, c);
  return tflops;
}

enum { NL = 3, BATCH = 1024 };
static const uint32_t widths[NL + 1] = {4096, 4096, 4096, 10};

/* The wide MLP's buffers: layer l (1..NL) maps act[l-1] to act[l]. */
struct wide {
  float *act[NL + 1], *dact[NL + 1], *w[NL + 1], *b[NL + 1], *dw[NL + 1], *db[NL + 1], *loss;
  int32_t *labels;
};

#define TS(p, r, c) ps_gpu_tensor_make(be, p, r, c)

/* wide_step queues one forward + backward pass of M on BE. */
static void wide_step(ps_gpu_backend *be, struct wide *m) {
  const ps_gpu_ops *o = be->ops;
  for (int l = 1; l <= NL; l++) {
    ps_gpu_tensor X = TS(m->act[l - 1], BATCH, widths[l - 1]),
                  W = TS(m->w[l], widths[l - 1], widths[l]), Bi = TS(m->b[l], 1, widths[l]),
                  Y = TS(m->act[l], BATCH, widths[l]);
    CHECK(o->gemm(be, 0, 0, 1, &X, &W, 0, &Y));
    CHECK(o->bias_add(be, &Y, &Bi, l < NL ? PS_GPU_ACT_RELU : PS_GPU_ACT_NONE));
  }
  ps_gpu_tensor Z = TS(m->act[NL], BATCH, widths[NL]), DZ = TS(m->dact[NL], BATCH, widths[NL]),
                L = TS(m->loss, 1, 1);
  CHECK(o->softmax_xent(be, &Z, m->labels, &L, &DZ));
  for (int l = NL; l >= 1; l--) {
    ps_gpu_tensor X = TS(m->act[l - 1], BATCH, widths[l - 1]),
                  W = TS(m->w[l], widths[l - 1], widths[l]),
                  DY = TS(m->dact[l], BATCH, widths[l]),
                  DW = TS(m->dw[l], widths[l - 1], widths[l]), DB = TS(m->db[l], 1, widths[l]);
    CHECK(o->gemm(be, 1, 0, 1, &X, &DY, 0, &DW));
    CHECK(o->bias_grad(be, &DY, 0, &DB));
    if (l > 1) {
      ps_gpu_tensor DX = TS(m->dact[l - 1], BATCH, widths[l - 1]);
      CHECK(o->gemm(be, 0, 1, 1, &DY, &W, 0, &DX));
      CHECK(o->act_bwd(be, PS_GPU_ACT_RELU, &X, &DX, &DX));
    }
  }
}

/* bench_wide returns the wide MLP's gemm TFLOP/s; *MS gets ms per step. */
static double bench_wide(ps_gpu_backend *be, int iters, double *ms) {
  struct wide m;
  memset(&m, 0, sizeof m);
  double flops = 0;
  m.act[0] = dev_rand(be, (size_t)BATCH * widths[0], 1);
  for (int l = 1; l <= NL; l++) {
    const size_t in = widths[l - 1], out = widths[l];
    m.w[l] = dev_rand(be, in * out, sqrtf(6.0f / (float)(in + out)));
    m.b[l] = dev_rand(be, out, 0.01f);
    m.act[l] = dev_new(be, (size_t)BATCH * out);
    m.dact[l] = dev_new(be, (size_t)BATCH * out);
    m.dw[l] = dev_new(be, in * out);
    m.db[l] = dev_new(be, out);
    /* forward + dW, and dX for every layer but the first */
    flops += 2.0 * BATCH * in * out * (l > 1 ? 3 : 2);
  }
  m.loss = dev_new(be, 1);
  int32_t *lab = malloc(BATCH * sizeof *lab);
  if (!lab) exit(1);
  for (int i = 0; i < BATCH; i++) lab[i] = (int32_t)((rnd() + 1) * 0.5f * widths[NL]) % (int32_t)widths[NL];
  CHECK(be->ops->alloc(be, BATCH * sizeof *lab, (void **)&m.labels));
  CHECK(be->ops->copy_h2d(be, m.labels, lab, BATCH * sizeof *lab, PS_GPU_STREAM_COMPUTE));
  for (int i = 0; i < 3; i++) wide_step(be, &m);
  CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
  double t0 = now_s();
  for (int i = 0; i < iters; i++) wide_step(be, &m);
  CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
  double dt = (now_s() - t0) / iters, tflops = flops / dt * 1e-12;
  float loss;
  CHECK(be->ops->copy_d2h(be, &loss, m.loss, sizeof loss, PS_GPU_STREAM_COMPUTE));
  CHECK(be->ops->sync(be, PS_GPU_STREAM_COMPUTE));
  printf("wide MLP 4096-4096-4096-10 relu, batch %d: fwd+bwd %.3f ms/step, %.2f TFLOP/s "
         "(%.1f GFLOP/step in gemms), loss %.4f\n",
         BATCH, dt * 1e3, tflops, flops * 1e-9, loss);
  *ms = dt * 1e3;
  for (int l = 0; l <= NL; l++) {
    be->ops->free_buf(be, m.act[l]);
    be->ops->free_buf(be, m.dact[l]);
    be->ops->free_buf(be, m.w[l]);
    be->ops->free_buf(be, m.b[l]);
    be->ops->free_buf(be, m.dw[l]);
    be->ops->free_buf(be, m.db[l]);
  }
  be->ops->free_buf(be, m.loss);
  be->ops->free_buf(be, m.labels);
  free(lab);
  return tflops;
}

int main(int argc, char **argv) {
  ps_errbuf beb;
  if (ps_gpu_blas_select(argv, &beb) < 0)
    fprintf(stderr, "ps_bench_gpu: %s; going on with OpenBLAS's own kernel\n", beb.msg);
  const char *device = "cuda";
  int iters = 20, tf32 = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
      device = argv[++i];
    else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0)
      iters = atoi(argv[++i]);
    else if (strcmp(argv[i], "--tf32") == 0)
      tf32 = 1;
    else {
      fprintf(stderr, "usage: ps_bench_gpu [--device cuda:N] [--iters N] [--tf32]\n");
      return 2;
    }
  }
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
#endif
  printf("device: %s\n", be->desc);
  double sgemm = bench_sgemm(be, iters), ms;
  double wide = bench_wide(be, iters, &ms);
  printf("wide MLP fwd+bwd rate / sgemm rate: %.1f %%\n", 100 * wide / sgemm);
  printf("result sgemm_tflops=%.3f mlp_ms=%.3f mlp_tflops=%.3f fraction=%.3f math=%s\n", sgemm, ms,
         wide, wide / sgemm, tf32 ? "tf32" : "fp32");
  ps_gpu_close(be);
  return 0;
}
