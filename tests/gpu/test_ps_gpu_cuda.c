/* Tests for the cuda backend: every op on fresh random inputs (never zeros;
 * shapes that are not multiples of 32, both transposes) against the CPU
 * backend, one 2-layer MLP training step against the CPU backend's
 * gradients (chained by hand, and through the worker's executor), copies
 * overlapped on the two streams, and device selection.
 *
 * Error measure: max |got - want| / max |want| over the tensor (relative
 * to the tensor's scale, so a sum that cancels to ~0 in one element does
 * not fail on rounding); where one element may be the whole tensor, the
 * scale is at least the size a sum of random terms has, the root sum of
 * their squares: for gemm over alpha a b and beta c, for column sums
 * (bias_grad) sqrt(rows) x rms.  Bounds: 1e-5 with fp32 math, 5e-3 for gemm
 * with TF32.  Without a device (or without a cuda build) every test that needs
 * one is reported as skipped ("no CUDA device: <CUDA's message>"); the
 * selection test runs everywhere.  The same suite is also built against
 * the host emulator (tests/cuda_emu, program ps_tests_cuda_emu), where a
 * device "exists" and every test runs. */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps_gpu.h"
#include "ps_test.h"
#include "psw_embed.h"
#include "psw_graph.h"
#ifdef PS_HAVE_CUDA_BACKEND
#include <cuda_runtime_api.h>

#include "ps_gpu_cuda.h"
#endif


/* fill_rnd: values in [-scale, scale], none closer to 0 than scale/100. */
static void fill_rnd(float *x, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) {
    float v = ps_test_rnd() * scale;
    if (fabsf(v) < scale * 0.01f) v = v < 0 ? v - scale * 0.01f : v + scale * 0.01f;
    x[i] = v;
  }
}

static int32_t rnd_label(uint32_t k) { return (int32_t)((uint32_t)((ps_test_rnd() + 1) * 0.5f * k) % k); }

static ps_gpu_backend *cpu, *gpu;
static char no_gpu[600];

/* Buffers made by a test, freed by teardown (tests run in a child, but
 * CK_FORK=no must not leak device memory either). */
enum { MAXBUFS = 1024 };
static void *dbufs[MAXBUFS], *hbufs[MAXBUFS];
static int ndbufs, nhbufs;

static void setup(void) {
  ps_errbuf eb;
  ps_test_rng_init();
  ck_assert_msg(ps_gpu_cpu_open(1, &cpu, &eb) == 0, "%s", eb.msg);
  gpu = NULL;
  if (ps_gpu_open("cuda", &gpu, &eb) != 0) {
    gpu = NULL;
    snprintf(no_gpu, sizeof no_gpu, "%s", eb.msg);
  }
}

static void teardown(void) {
  for (int i = 0; i < ndbufs; i++) gpu->ops->free_buf(gpu, dbufs[i]);
  for (int i = 0; i < nhbufs; i++) free(hbufs[i]);
  ndbufs = nhbufs = 0;
  ps_gpu_close(gpu);
  ps_gpu_close(cpu);
  gpu = cpu = NULL;
}

#define NEED_GPU()                                            \
  do {                                                        \
    if (!gpu) PS_SKIP("no CUDA device: %s", no_gpu);          \
  } while (0)

/* hnew: N floats of host memory, freed by teardown. */
static float *hnew(size_t n) {
  ck_assert_int_lt(nhbufs, MAXBUFS);
  float *p = malloc((n ? n : 1) * sizeof(float));
  ck_assert(p != NULL);
  return hbufs[nhbufs++] = p;
}

/* hrnd: hnew filled by fill_rnd. */
static float *hrnd(size_t n, float scale) {
  float *p = hnew(n);
  fill_rnd(p, n, scale);
  return p;
}

/* dnew: BYTES of device memory, freed by teardown. */
static void *dnew(size_t bytes) {
  ck_assert_int_lt(ndbufs, MAXBUFS);
  void *p;
  ck_assert_int_eq(gpu->ops->alloc(gpu, bytes, &p), 0);
  return dbufs[ndbufs++] = p;
}

/* dfrom: a device copy of BYTES at H (queued on the compute stream, so
 * every later op sees it). */
static void *dfrom(const void *h, size_t bytes) {
  void *d = dnew(bytes);
  ck_assert_int_eq(gpu->ops->copy_h2d(gpu, d, h, bytes, PS_GPU_STREAM_COMPUTE), 0);
  return d;
}

/* dget: a new host copy of N floats at device D (after all queued ops). */
static float *dget(const float *d, size_t n) {
  float *h = hnew(n);
  ck_assert_int_eq(gpu->ops->copy_d2h(gpu, h, d, n * sizeof(float), PS_GPU_STREAM_COMPUTE), 0);
  ck_assert_int_eq(gpu->ops->sync(gpu, PS_GPU_STREAM_COMPUTE), 0);
  return h;
}

static ps_gpu_tensor HT(float *d, uint32_t r, uint32_t c) { return ps_gpu_tensor_make(cpu, d, r, c); }
static ps_gpu_tensor DT(float *d, uint32_t r, uint32_t c) { return ps_gpu_tensor_make(gpu, d, r, c); }

/* rel_err: max |got - want| / max(max |want|, SCALE) (infinite when GOT
 * has a NaN or an infinity that WANT lacks). */
static double rel_err(const float *got, const float *want, size_t n, double scale) {
  double num = 0, den = scale;
  for (size_t i = 0; i < n; i++) {
    if (isfinite(want[i]) && !isfinite(got[i])) return INFINITY;
    num = fmax(num, fabs((double)got[i] - want[i]));
    den = fmax(den, fabs((double)want[i]));
  }
  return num / (den > 0 ? den : 1);
}

/* expect_close_at fails the test when GOT (device, N floats) is farther
 * than TOL from WANT (host) by rel_err with scale at least SCALE (TOL 0:
 * equal).  SCALE > 0 is for sums of random terms, which may cancel to
 * near 0 in every element: measured against the size such a sum has
 * (sqrt(terms) x their rms), not the value it reached, so that neither
 * backend's float rounding fails it (a dropped term still does). */
static void expect_close_at(const char *what, const float *got_dev, const float *want, size_t n,
                            double tol, double scale) {
  float *got = dget(got_dev, n);
  double e = rel_err(got, want, n, scale);
  ck_assert_msg(e <= tol, "%s: relative error %.3g > %.3g (first: got %.8g want %.8g; seed %llu)",
                what, e, tol, got[0], want[0], (unsigned long long)ps_test_seed);
}

/* expect_close: expect_close_at at the scale of WANT itself. */
static void expect_close(const char *what, const float *got_dev, const float *want, size_t n,
                         double tol) {
  expect_close_at(what, got_dev, want, n, tol, 0);
}

/* set_tf32 switches gemm math; 0 when done, -1 when this build cannot. */
static int set_tf32(int on) {
#ifdef PS_HAVE_CUDA_BACKEND
  ck_assert_int_eq(ps_gpu_cuda_set_tf32(gpu, on), 0);
  ck_assert(strstr(gpu->desc, on ? ", tf32" : ", fp32") != NULL);
  return 0;
#else
  return on ? -1 : 0;
#endif
}

/* ---- selection (runs without a device) --------------------------------- */

START_TEST(test_open_selection) {
  ps_gpu_backend *b = NULL;
  ps_errbuf eb;
  int rc = ps_gpu_open("cuda", &b, &eb);
  if (rc == 0) {
    ck_assert_str_eq(b->name, "cuda");
    ck_assert_int_eq(b->device, 0);
    ck_assert_int_eq(b->unified, 0);
    ck_assert_msg(strncmp(b->desc, "cuda:0: ", 8) == 0, "desc: %s", b->desc);
    ps_gpu_close(b);
    ck_assert_int_eq(ps_gpu_open("auto", &b, &eb), 0);
    ck_assert_str_eq(b->name, "cuda");
    ps_gpu_close(b);
    return;
  }
  /* No device (or no cuda build): PS_EDEVICE with CUDA's own message. */
  ck_assert_int_eq(rc, PS_EDEVICE);
  ck_assert(b == NULL);
  ck_assert_msg(strncmp(eb.msg, "device 'cuda:0': ", 17) == 0 && strlen(eb.msg) > 25,
                "message: %s", eb.msg);
#ifdef PS_HAVE_CUDA_BACKEND
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess)
    ck_assert_msg(strstr(eb.msg, cudaGetErrorString(e)) != NULL, "message: %s (cuda says: %s)",
                  eb.msg, cudaGetErrorString(e));
  else
    ck_assert_msg(strstr(eb.msg, "no such device") != NULL, "message: %s", eb.msg);
  printf("test_open_selection: ps_gpu_open(\"cuda\"): %s\n", eb.msg);
#else
  ck_assert_msg(strstr(eb.msg, "no cuda backend") != NULL, "message: %s", eb.msg);
#endif
  ck_assert_int_eq(ps_gpu_open("cuda:3", &b, &eb), PS_EDEVICE);
  ck_assert(strstr(eb.msg, "cuda:3") != NULL);
  /* auto falls back to the CPU backend. */
  ck_assert_int_eq(ps_gpu_open("auto", &b, &eb), 0);
  ck_assert_str_eq(b->name, "cpu");
  ck_assert_int_eq(b->device, PS_GPU_HOST);
#ifdef PS_HAVE_CUDA_BACKEND
  /* The cuda settings refuse other backends. */
  ck_assert_int_eq(ps_gpu_cuda_set_tf32(b, 1), PS_EINVAL);
  ck_assert_str_eq(ps_gpu_cuda_last_error(b), "");
#endif
  ps_gpu_close(b);
}
END_TEST

#ifdef PS_HAVE_CUDA_BACKEND
/* Without the NVIDIA driver (no libcuda.so.1; on the emulator
 * PS_CUDA_EMU_NO_DRIVER=1, which the real runtime ignores) CUDA's runtime
 * says its "driver version is insufficient": the message says instead
 * that there is no driver, with CUDA's text in parentheses. */
START_TEST(test_open_no_driver) {
  setenv("PS_CUDA_EMU_NO_DRIVER", "1", 1);
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  (void)cudaGetLastError();
  void *h = dlopen("libcuda.so.1", RTLD_LAZY);
  if (h) dlclose(h);
  if (e != cudaErrorInsufficientDriver || h)
    PS_SKIP("the NVIDIA driver is here (libcuda.so.1 %s, cudaGetDeviceCount: %s)",
            h ? "loads" : "does not load", cudaGetErrorString(e));
  ps_gpu_backend *b = NULL;
  ps_errbuf eb;
  ck_assert_int_eq(ps_gpu_open("cuda:2", &b, &eb), PS_EDEVICE);
  ck_assert(b == NULL);
  char want[512];
  snprintf(want, sizeof want,
           "device 'cuda:2': no usable CUDA device: no NVIDIA driver (libcuda.so.1) found "
           "(CUDA: %s)",
           cudaGetErrorString(e));
  ck_assert_str_eq(eb.msg, want);
  ck_assert_int_eq(ps_gpu_open("auto", &b, &eb), 0); /* still falls back to the CPU */
  ck_assert_str_eq(b->name, "cpu");
  ps_gpu_close(b);
}
END_TEST
#endif

/* ---- gemm ------------------------------------------------------------------ */

/* gemm_case runs C = alpha op(A) op(B) + beta C with [m, k] x [k, n] on
 * both backends (beta NaN-free unless BETA == 0, where C starts as NaN). */
static void gemm_case(uint32_t m, uint32_t k, uint32_t n, int ta, int tb, float beta, double tol) {
  const float alpha = 0.75f + 0.25f * ps_test_rnd();
  float *a = hrnd((size_t)m * k, 1), *b = hrnd((size_t)k * n, 1), *c = hrnd((size_t)m * n, 1);
  if (beta == 0)
    for (size_t i = 0; i < (size_t)m * n; i++) c[i] = NAN;
  /* The size of the terms each element sums, as a root sum of squares of
   * alpha a b and beta c (an element may cancel to ~0; its rounding, TF32's
   * too, scales with the terms: expect_close_at). */
  double scale = 0;
  for (uint32_t i = 0; i < m; i++)
    for (uint32_t j = 0; j < n; j++) {
      double t = 0;
      for (uint32_t l = 0; l < k; l++) {
        double p = (double)alpha * (ta ? a[(size_t)l * m + i] : a[(size_t)i * k + l]) *
                   (tb ? b[(size_t)j * k + l] : b[(size_t)l * n + j]);
        t += p * p;
      }
      if (beta != 0) t += ((double)beta * c[(size_t)i * n + j]) * ((double)beta * c[(size_t)i * n + j]);
      scale = fmax(scale, sqrt(t));
    }
  float *da = dfrom(a, (size_t)m * k * 4), *db = dfrom(b, (size_t)k * n * 4),
        *dc = dfrom(c, (size_t)m * n * 4);
  ps_gpu_tensor A = ta ? HT(a, k, m) : HT(a, m, k), B = tb ? HT(b, n, k) : HT(b, k, n),
                C = HT(c, m, n);
  ps_gpu_tensor dA = ta ? DT(da, k, m) : DT(da, m, k), dB = tb ? DT(db, n, k) : DT(db, k, n),
                dC = DT(dc, m, n);
  ck_assert_int_eq(cpu->ops->gemm(cpu, ta, tb, alpha, &A, &B, beta, &C), 0);
  ck_assert_int_eq(gpu->ops->gemm(gpu, ta, tb, alpha, &dA, &dB, beta, &dC), 0);
  char what[96];
  snprintf(what, sizeof what, "gemm m=%u k=%u n=%u ta=%d tb=%d beta=%g", m, k, n, ta, tb, beta);
  expect_close_at(what, dc, c, (size_t)m * n, tol, scale);
}

START_TEST(test_gemm) {
  NEED_GPU();
  static const uint32_t shapes[][3] = {{1, 1, 1},    {7, 5, 6},     {33, 65, 31},
                                       {64, 128, 96}, {257, 129, 70}, {100, 1000, 10}};
  for (int tf32 = 0; tf32 < 2; tf32++) {
    if (set_tf32(tf32)) continue;
    const double tol = tf32 ? 5e-3 : 1e-5;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
          gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, 0.5f + 0.25f * ps_test_rnd(), tol);
          gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, 0, tol);
        }
  }
  set_tf32(0);
  /* k = 0: C = beta C (cuBLAS is not asked). */
  float *c = hrnd(12, 1), *dc = dfrom(c, 48);
  ps_gpu_tensor A0 = DT(NULL, 3, 0), B0 = DT(NULL, 0, 4), dC = DT(dc, 3, 4);
  ck_assert_int_eq(gpu->ops->gemm(gpu, 0, 0, 1, &A0, &B0, 2, &dC), 0);
  for (int i = 0; i < 12; i++) c[i] *= 2;
  expect_close("gemm k=0", dc, c, 12, 1e-7);
  /* Shapes that disagree, and host tensors, are refused. */
  float *da = dnew(15 * 4);
  ps_gpu_tensor dA = DT(da, 3, 5), dB = DT(da, 5, 3);
  ck_assert_int_eq(gpu->ops->gemm(gpu, 1, 0, 1, &dA, &dB, 0, &dC), PS_EINVAL);
  ps_gpu_tensor hA = HT(hrnd(15, 1), 3, 5), dB4 = DT(dnew(20 * 4), 5, 4);
  ck_assert_int_eq(gpu->ops->gemm(gpu, 0, 0, 1, &hA, &dB4, 0, &dC), PS_EDEVICE);
}
END_TEST

/* ---- bias, activations --------------------------------------------------- */

static const uint32_t ew_shapes[][2] = {{1, 1}, {3, 7}, {64, 300}, {129, 1000}, {1000, 10}, {17, 4099}};
#define NSHAPES (sizeof ew_shapes / sizeof ew_shapes[0])

START_TEST(test_bias_add) {
  NEED_GPU();
  for (size_t s = 0; s < NSHAPES; s++)
    for (int act = 0; act < PS_GPU_NACTS; act++) {
      const uint32_t r = ew_shapes[s][0], c = ew_shapes[s][1];
      float *y = hrnd((size_t)r * c, 2), *b = hrnd(c, 1);
      float *dy = dfrom(y, (size_t)r * c * 4), *db = dfrom(b, c * 4);
      ps_gpu_tensor Y = HT(y, r, c), B = HT(b, 1, c), dY = DT(dy, r, c), dB = DT(db, 1, c);
      ck_assert_int_eq(cpu->ops->bias_add(cpu, &Y, &B, (ps_gpu_act)act), 0);
      ck_assert_int_eq(gpu->ops->bias_add(gpu, &dY, &dB, (ps_gpu_act)act), 0);
      char what[80];
      snprintf(what, sizeof what, "bias_add+%s [%u, %u]", ps_gpu_act_name((ps_gpu_act)act), r, c);
      expect_close(what, dy, y, (size_t)r * c, 1e-5);
    }
  float *d = dnew(40);
  ps_gpu_tensor Y = DT(d, 2, 5), B = DT(d, 1, 4);
  ck_assert_int_eq(gpu->ops->bias_add(gpu, &Y, &B, PS_GPU_ACT_NONE), PS_EINVAL);
}
END_TEST

START_TEST(test_bias_grad) {
  NEED_GPU();
  static const uint32_t shapes[][2] = {{1, 5}, {3, 37}, {64, 300}, {1000, 33}, {4096, 70},
                                       {5000, 1}, {1024, 4096}, {0, 9}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int with_beta = 0; with_beta < 2; with_beta++) {
      const uint32_t r = shapes[s][0], c = shapes[s][1];
      const float beta = with_beta ? 0.5f + 0.25f * ps_test_rnd() : 0;
      float *dy = hrnd((size_t)r * c, 1), *db = hrnd(c, 1);
      if (!with_beta)
        for (uint32_t j = 0; j < c; j++) db[j] = NAN; /* beta = 0 ignores DB */
      float *ddy = dfrom(dy, (size_t)r * c * 4), *ddb = dfrom(db, c * 4);
      ps_gpu_tensor DY = HT(dy, r, c), DB = HT(db, 1, c), dDY = DT(ddy, r, c), dDB = DT(ddb, 1, c);
      ck_assert_int_eq(cpu->ops->bias_grad(cpu, &DY, beta, &DB), 0);
      ck_assert_int_eq(gpu->ops->bias_grad(gpu, &dDY, beta, &dDB), 0);
      double sq = 0;
      for (size_t i = 0; i < (size_t)r * c; i++) sq += (double)dy[i] * dy[i];
      const double sum_scale = r ? sqrt(r * (sq / ((double)r * c))) : 0; /* sqrt(rows) x rms */
      char what[80];
      snprintf(what, sizeof what, "bias_grad [%u, %u] beta=%g", r, c, beta);
      expect_close_at(what, ddb, db, c, 1e-5, sum_scale);
    }
}
END_TEST

START_TEST(test_act) {
  NEED_GPU();
  for (size_t s = 0; s < NSHAPES; s++)
    for (int act = 0; act < PS_GPU_NACTS; act++) {
      const uint32_t r = ew_shapes[s][0], c = ew_shapes[s][1];
      const size_t n = (size_t)r * c;
      const ps_gpu_act a = (ps_gpu_act)act;
      float *x = hrnd(n, 3), *g = hrnd(n, 1), *y = hnew(n), *dx = hnew(n);
      float *dX = dfrom(x, n * 4), *dG = dfrom(g, n * 4), *dY = dnew(n * 4), *dDX = dnew(n * 4);
      ps_gpu_tensor X = HT(x, r, c), G = HT(g, r, c), Y = HT(y, r, c), DX = HT(dx, r, c);
      ps_gpu_tensor gX = DT(dX, r, c), gG = DT(dG, r, c), gY = DT(dY, r, c), gDX = DT(dDX, r, c);
      ck_assert_int_eq(cpu->ops->act_fwd(cpu, a, &X, &Y), 0);
      ck_assert_int_eq(gpu->ops->act_fwd(gpu, a, &gX, &gY), 0);
      ck_assert_int_eq(cpu->ops->act_bwd(cpu, a, &Y, &G, &DX), 0);
      ck_assert_int_eq(gpu->ops->act_bwd(gpu, a, &gY, &gG, &gDX), 0);
      char what[80];
      snprintf(what, sizeof what, "act_fwd %s [%u, %u]", ps_gpu_act_name(a), r, c);
      expect_close(what, dY, y, n, 1e-5);
      snprintf(what, sizeof what, "act_bwd %s [%u, %u]", ps_gpu_act_name(a), r, c);
      expect_close(what, dDX, dx, n, 1e-5);
      /* In place: Y may be X, DX may be DY. */
      ck_assert_int_eq(gpu->ops->act_fwd(gpu, a, &gX, &gX), 0);
      ck_assert_int_eq(gpu->ops->act_bwd(gpu, a, &gY, &gG, &gG), 0);
      snprintf(what, sizeof what, "act_fwd %s in place", ps_gpu_act_name(a));
      expect_close(what, dX, y, n, 1e-5);
      snprintf(what, sizeof what, "act_bwd %s in place", ps_gpu_act_name(a));
      expect_close(what, dG, dx, n, 1e-5);
    }
}
END_TEST

/* ---- losses and metrics ---------------------------------------------------- */

/* labels_dev: N random class ids in [0, K) on the host (*H) and device. */
static int32_t *labels_dev(uint32_t n, uint32_t k, int32_t **h) {
  int32_t *l = (int32_t *)hnew(n);
  for (uint32_t i = 0; i < n; i++) l[i] = rnd_label(k);
  *h = l;
  return dfrom(l, (size_t)n * 4);
}

START_TEST(test_softmax_xent) {
  NEED_GPU();
  static const uint32_t shapes[][2] = {{1, 1}, {5, 4}, {64, 10}, {1000, 10}, {37, 100}, {8, 1000}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int big = 0; big < 2; big++) {
      const uint32_t n = shapes[s][0], k = shapes[s][1];
      float *x = hrnd((size_t)n * k, 3), loss, *d = hnew((size_t)n * k);
      /* Huge logits (rows shifted by +-1e4): stable only with the max subtracted. */
      for (size_t i = 0; big && i < (size_t)n * k; i++) x[i] += 1e4f * (i / k % 2 ? 1 : -1);
      int32_t *lh, *ld = labels_dev(n, k, &lh);
      float *dx = dfrom(x, (size_t)n * k * 4), *dl = dnew(4), *dd = dnew((size_t)n * k * 4),
            *dl2 = dnew(4);
      ps_gpu_tensor X = HT(x, n, k), L = HT(&loss, 1, 1), D = HT(d, n, k);
      ps_gpu_tensor gX = DT(dx, n, k), gL = DT(dl, 1, 1), gD = DT(dd, n, k), gL2 = DT(dl2, 1, 1);
      ck_assert_int_eq(cpu->ops->softmax_xent(cpu, &X, lh, &L, &D), 0);
      ck_assert_int_eq(gpu->ops->softmax_xent(gpu, &gX, ld, &gL, &gD), 0);
      ck_assert_int_eq(gpu->ops->softmax_xent(gpu, &gX, ld, &gL2, NULL), 0);
      char what[80];
      snprintf(what, sizeof what, "softmax_xent loss [%u, %u]%s", n, k, big ? " big" : "");
      expect_close(what, dl, &loss, 1, 1e-5);
      expect_close(what, dl2, &loss, 1, 1e-5);
      snprintf(what, sizeof what, "softmax_xent dlogits [%u, %u]%s", n, k, big ? " big" : "");
      expect_close(what, dd, d, (size_t)n * k, 1e-5);
    }
  float *d = dnew(64);
  ps_gpu_tensor X = DT(d, 2, 4), L = DT(d, 1, 2);
  ck_assert_int_eq(gpu->ops->softmax_xent(gpu, &X, (int32_t *)d, &L, NULL), PS_EINVAL);
}
END_TEST

START_TEST(test_mse) {
  NEED_GPU();
  static const uint32_t shapes[][2] = {{1, 1}, {5, 4}, {300, 77}, {1024, 1000}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const uint32_t n = shapes[s][0], k = shapes[s][1];
    const size_t ne = (size_t)n * k;
    float *p = hrnd(ne, 2), *t = hrnd(ne, 2), loss, *d = hnew(ne);
    float *dp = dfrom(p, ne * 4), *dt = dfrom(t, ne * 4), *dl = dnew(4), *dd = dnew(ne * 4),
          *dl2 = dnew(4);
    ps_gpu_tensor P = HT(p, n, k), T = HT(t, n, k), L = HT(&loss, 1, 1), D = HT(d, n, k);
    ps_gpu_tensor gP = DT(dp, n, k), gT = DT(dt, n, k), gL = DT(dl, 1, 1), gD = DT(dd, n, k),
                  gL2 = DT(dl2, 1, 1);
    ck_assert_int_eq(cpu->ops->mse(cpu, &P, &T, &L, &D), 0);
    ck_assert_int_eq(gpu->ops->mse(gpu, &gP, &gT, &gL, &gD), 0);
    ck_assert_int_eq(gpu->ops->mse(gpu, &gP, &gT, &gL2, NULL), 0);
    char what[64];
    snprintf(what, sizeof what, "mse [%u, %u]", n, k);
    expect_close(what, dl, &loss, 1, 1e-5);
    expect_close(what, dl2, &loss, 1, 1e-5);
    expect_close(what, dd, d, ne, 1e-5);
  }
}
END_TEST

START_TEST(test_accuracy) {
  NEED_GPU();
  static const uint32_t shapes[][2] = {{1, 1}, {50, 6}, {1000, 10}, {33, 100}, {300, 1000}, {0, 4}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const uint32_t n = shapes[s][0], k = shapes[s][1];
    float *x = hrnd((size_t)n * k, 1), cnt;
    int32_t *lh, *ld = labels_dev(n, k, &lh);
    /* Make about half the rows right, and some rows ties (first max wins). */
    for (uint32_t i = 0; i < n; i++) {
      if (i % 2) x[(size_t)i * k + lh[i]] = 2;
      if (i % 7 == 3)
        for (uint32_t j = 0; j < k; j++) x[(size_t)i * k + j] = 0.5f;
    }
    float *dx = dfrom(x, (size_t)n * k * 4), *dc = dnew(4);
    ps_gpu_tensor X = HT(x, n, k), C = HT(&cnt, 1, 1), gX = DT(dx, n, k), gC = DT(dc, 1, 1);
    ck_assert_int_eq(cpu->ops->accuracy(cpu, &X, lh, &C), 0);
    ck_assert_int_eq(gpu->ops->accuracy(gpu, &gX, ld, &gC), 0);
    float *got = dget(dc, 1);
    ck_assert_msg(got[0] == cnt, "accuracy [%u, %u]: %g want %g (seed %llu)", n, k, got[0], cnt,
                  (unsigned long long)ps_test_seed);
  }
}
END_TEST

START_TEST(test_blas1) {
  NEED_GPU();
  static const size_t sizes[] = {1, 37, 1000, 100003};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    const uint32_t n = (uint32_t)sizes[s];
    const float alpha = 0.5f + ps_test_rnd();
    float *x = hrnd(n, 1), *y = hrnd(n, 1);
    float *dx = dfrom(x, n * 4), *dy = dfrom(y, n * 4);
    ps_gpu_tensor X = HT(x, 1, n), Y = HT(y, 1, n), gX = DT(dx, 1, n), gY = DT(dy, 1, n);
    ck_assert_int_eq(cpu->ops->axpy(cpu, alpha, &X, &Y), 0);
    ck_assert_int_eq(gpu->ops->axpy(gpu, alpha, &gX, &gY), 0);
    expect_close("axpy", dy, y, n, 1e-6);
    ck_assert_int_eq(cpu->ops->scale(cpu, -alpha, &Y), 0);
    ck_assert_int_eq(gpu->ops->scale(gpu, -alpha, &gY), 0);
    expect_close("scale", dy, y, n, 1e-6);
    ck_assert_int_eq(cpu->ops->fill(cpu, alpha, &X), 0);
    ck_assert_int_eq(gpu->ops->fill(gpu, alpha, &gX), 0);
    expect_close("fill", dx, x, n, 0);
    float *got = dget(dx, n);
    for (uint32_t i = 0; i < n; i++) ck_assert_float_eq(got[i], alpha);
  }
  float *d = dnew(64);
  ps_gpu_tensor X = DT(d, 1, 4), Z = DT(d, 1, 3);
  ck_assert_int_eq(gpu->ops->axpy(gpu, 1, &X, &Z), PS_EINVAL);
}
END_TEST

/* ---- memory, copies and the two streams -------------------------------------- */

/* Pinned buffers, copies on the copy stream ordered against compute by
 * stream_wait both ways: upload -> scale on compute -> download.  A
 * missing wait shows as stale or half-scaled data (16 MiB per round, so
 * the copy and the kernel take long enough to overlap if they could). */
START_TEST(test_copies_and_streams) {
  NEED_GPU();
  const size_t n = (size_t)4 << 20;
  float *h, *back, *d;
  ck_assert_int_eq(gpu->ops->host_alloc(gpu, n * 4, (void **)&h), 0);
  ck_assert_int_eq(gpu->ops->host_alloc(gpu, n * 4, (void **)&back), 0);
  d = dnew(n * 4);
  ps_gpu_tensor D = DT(d, 1, (uint32_t)n);
  for (int round = 0; round < 4; round++) {
    fill_rnd(h, n, 1);
    const float f = (float)(2 << round); /* a power of two: exact */
    ck_assert_int_eq(gpu->ops->copy_h2d(gpu, d, h, n * 4, PS_GPU_STREAM_COPY), 0);
    ck_assert_int_eq(gpu->ops->stream_wait(gpu, PS_GPU_STREAM_COMPUTE, PS_GPU_STREAM_COPY), 0);
    ck_assert_int_eq(gpu->ops->scale(gpu, f, &D), 0);
    ck_assert_int_eq(gpu->ops->stream_wait(gpu, PS_GPU_STREAM_COPY, PS_GPU_STREAM_COMPUTE), 0);
    ck_assert_int_eq(gpu->ops->copy_d2h(gpu, back, d, n * 4, PS_GPU_STREAM_COPY), 0);
    ck_assert_int_eq(gpu->ops->sync(gpu, PS_GPU_STREAM_COPY), 0);
    for (size_t i = 0; i < n; i++)
      if (back[i] != f * h[i])
        ck_abort_msg("round %d: element %zu: %g want %g", round, i, back[i], f * h[i]);
  }
  ck_assert_int_eq(gpu->ops->copy_d2h(gpu, back, d, 4, 7), PS_EINVAL);
  ck_assert_int_eq(gpu->ops->sync(gpu, 2), PS_EINVAL);
  ck_assert_int_eq(gpu->ops->stream_wait(gpu, 0, 0), 0);
  gpu->ops->host_free(gpu, h);
  gpu->ops->host_free(gpu, back);
  gpu->ops->free_buf(gpu, NULL);
#ifdef PS_HAVE_CUDA_BACKEND
  ck_assert_str_eq(ps_gpu_cuda_last_error(gpu), "");
#endif
}
END_TEST

/* ---- one MLP training step ------------------------------------------------------ */

/* A 2-layer MLP, chained by hand as the executor does it:
 *   H = act(X W1 + b1), Z = H W2 + b2, loss = xent(Z, y)
 *   dW2 = H^T dZ, db2 = colsum dZ, dH = act'(dZ W2^T), dW1 = X^T dH, db1 = colsum dH
 * P holds the backend's tensors for one run. */
enum { MN = 67, MI = 50, MH = 129, MK = 10 };
struct mlp {
  float *x, *w1, *b1, *w2, *b2, *h, *z, *dz, *dh, *dw1, *db1, *dw2, *db2, *loss, *cnt;
  int32_t *labels;
};

/* mlp_step runs forward and backward on BE with the buffers of P. */
static void mlp_step(ps_gpu_backend *be, const struct mlp *p, ps_gpu_act act) {
  const ps_gpu_ops *o = be->ops;
#define MT(ptr, r, c) ps_gpu_tensor_make(be, p->ptr, r, c)
  ps_gpu_tensor X = MT(x, MN, MI), W1 = MT(w1, MI, MH), B1 = MT(b1, 1, MH), W2 = MT(w2, MH, MK),
                B2 = MT(b2, 1, MK), H = MT(h, MN, MH), Z = MT(z, MN, MK), DZ = MT(dz, MN, MK),
                DH = MT(dh, MN, MH), DW1 = MT(dw1, MI, MH), DB1 = MT(db1, 1, MH),
                DW2 = MT(dw2, MH, MK), DB2 = MT(db2, 1, MK), L = MT(loss, 1, 1), C = MT(cnt, 1, 1);
#undef MT
  ck_assert_int_eq(o->gemm(be, 0, 0, 1, &X, &W1, 0, &H), 0);
  ck_assert_int_eq(o->bias_add(be, &H, &B1, act), 0);
  ck_assert_int_eq(o->gemm(be, 0, 0, 1, &H, &W2, 0, &Z), 0);
  ck_assert_int_eq(o->bias_add(be, &Z, &B2, PS_GPU_ACT_NONE), 0);
  ck_assert_int_eq(o->softmax_xent(be, &Z, p->labels, &L, &DZ), 0);
  ck_assert_int_eq(o->accuracy(be, &Z, p->labels, &C), 0);
  ck_assert_int_eq(o->gemm(be, 1, 0, 1, &H, &DZ, 0, &DW2), 0);
  ck_assert_int_eq(o->bias_grad(be, &DZ, 0, &DB2), 0);
  ck_assert_int_eq(o->gemm(be, 0, 1, 1, &DZ, &W2, 0, &DH), 0);
  ck_assert_int_eq(o->act_bwd(be, act, &H, &DH, &DH), 0);
  ck_assert_int_eq(o->gemm(be, 1, 0, 1, &X, &DH, 0, &DW1), 0);
  ck_assert_int_eq(o->bias_grad(be, &DH, 0, &DB1), 0);
}

/* min_abs_preact: the smallest |X W1 + b1| (relu's kink) on the CPU. */
static float min_abs_preact(const struct mlp *p) {
  float *z = hnew((size_t)MN * MH), m = INFINITY;
  ps_gpu_tensor X = HT(p->x, MN, MI), W1 = HT(p->w1, MI, MH), B1 = HT(p->b1, 1, MH),
                Z = HT(z, MN, MH);
  ck_assert_int_eq(cpu->ops->gemm(cpu, 0, 0, 1, &X, &W1, 0, &Z), 0);
  ck_assert_int_eq(cpu->ops->bias_add(cpu, &Z, &B1, PS_GPU_ACT_NONE), 0);
  for (size_t i = 0; i < (size_t)MN * MH; i++) m = fminf(m, fabsf(z[i]));
  return m;
}

/* mlp_case compares one step on both backends; relu only with fp32 (TF32's
 * ~1e-3 error would move pre-activations across the kink). */
static void mlp_case(ps_gpu_act act, int tf32) {
  struct mlp h = {0}, d = {0};
  const double tol = tf32 ? 5e-3 : 1e-5;
  h.x = hrnd((size_t)MN * MI, 1);
  h.w1 = hrnd((size_t)MI * MH, 0.3f);
  h.w2 = hrnd((size_t)MH * MK, 0.3f);
  h.b2 = hrnd(MK, 0.1f);
  for (int tries = 0;; tries++) { /* keep relu's pre-activations off the kink */
    h.b1 = hrnd(MH, 0.1f);
    if (act != PS_GPU_ACT_RELU || min_abs_preact(&h) > 1e-4f) break;
    ck_assert_int_lt(tries, 50);
  }
  int32_t *lh;
  d.labels = labels_dev(MN, MK, &lh);
  h.labels = lh;
#define BOTH(f, n)      \
  h.f = hnew(n);        \
  d.f = dnew((n) * 4)
  BOTH(h, (size_t)MN * MH);
  BOTH(z, (size_t)MN * MK);
  BOTH(dz, (size_t)MN * MK);
  BOTH(dh, (size_t)MN * MH);
  BOTH(dw1, (size_t)MI * MH);
  BOTH(db1, MH);
  BOTH(dw2, (size_t)MH * MK);
  BOTH(db2, MK);
  BOTH(loss, 1);
  BOTH(cnt, 1);
#undef BOTH
  d.x = dfrom(h.x, (size_t)MN * MI * 4);
  d.w1 = dfrom(h.w1, (size_t)MI * MH * 4);
  d.b1 = dfrom(h.b1, MH * 4);
  d.w2 = dfrom(h.w2, (size_t)MH * MK * 4);
  d.b2 = dfrom(h.b2, MK * 4);
  ck_assert_int_eq(set_tf32(tf32), 0);
  mlp_step(cpu, &h, act);
  mlp_step(gpu, &d, act);
  char what[64];
#define CMP(f, n)                                                                          \
  snprintf(what, sizeof what, "mlp %s %s: " #f, ps_gpu_act_name(act), tf32 ? "tf32" : "fp32"); \
  expect_close(what, d.f, h.f, n, tol)
  CMP(loss, 1);
  CMP(dw2, (size_t)MH * MK);
  CMP(db2, MK);
  CMP(dw1, (size_t)MI * MH);
  CMP(db1, MH);
#undef CMP
  if (!tf32) expect_close("mlp accuracy count", d.cnt, h.cnt, 1, 0);
}

START_TEST(test_mlp_step) {
  NEED_GPU();
  mlp_case(PS_GPU_ACT_RELU, 0);
  mlp_case(PS_GPU_ACT_TANH, 0);
  mlp_case(PS_GPU_ACT_SIGMOID, 0);
#ifdef PS_HAVE_CUDA_BACKEND
  mlp_case(PS_GPU_ACT_TANH, 1);
  set_tf32(0);
#endif
}
END_TEST

/* The worker's executor (worker/psw_graph.h) on both backends: one step
 * of a 50-129-10 tanh MLP with random parameters gives the same loss,
 * gradients and hit count.  This exercises its copies and syncs too. */
START_TEST(test_exec_step) {
  NEED_GPU();
  enum { N = 67 };
  static const uint32_t layers[] = {50, 129, 10};
  ps_errbuf eb;
  uint8_t *buf;
  size_t len;
  psw_graph *g;
  ck_assert_msg(psw_graph_mlp_pack("t", layers, 3, PS_GPU_ACT_TANH, &buf, &len, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_graph_load(buf, len, &g, &eb) == 0, "%s", eb.msg);
  free(buf);
  const size_t np = psw_graph_nparams(g);
  float *params = hrnd(np, 0.3f), *x = hrnd((size_t)N * layers[0], 1);
  float *gc = hnew(np), *gg = hnew(np), lc, lg;
  int32_t *labels = (int32_t *)hnew(N);
  for (int i = 0; i < N; i++) labels[i] = rnd_label(layers[2]);
  psw_batch b = {.n = N, .x = x, .labels = labels, .targets = NULL};
  uint32_t cc, cg;
  psw_exec *ec, *eg;
  ck_assert_msg(psw_exec_create(g, cpu, N, &ec, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_create(g, gpu, N, &eg, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_step(ec, params, &b, gc, &lc, &cc, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_step(eg, params, &b, gg, &lg, &cg, &eb) == 0, "%s", eb.msg);
  double e = rel_err(gg, gc, np, 0);
  ck_assert_msg(e <= 1e-5, "exec gradients: relative error %.3g (seed %llu)", e,
                (unsigned long long)ps_test_seed);
  ck_assert_msg(rel_err(&lg, &lc, 1, 0) <= 1e-5, "exec loss %.8g want %.8g", lg, lc);
  ck_assert_uint_eq(cg, cc);
  /* A second step on new parameters into a poisoned gradient buffer (the
   * uploads and downloads of one step must not mix with the next), then
   * an evaluation. */
  fill_rnd(params, np, 0.3f);
  for (size_t i = 0; i < np; i++) gg[i] = NAN;
  ck_assert_msg(psw_exec_step(ec, params, &b, gc, &lc, &cc, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_step(eg, params, &b, gg, &lg, &cg, &eb) == 0, "%s", eb.msg);
  e = rel_err(gg, gc, np, 0);
  ck_assert_msg(e <= 1e-5, "second step's gradients: relative error %.3g", e);
  ck_assert_msg(psw_exec_eval(ec, params, &b, &lc, &cc, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_eval(eg, params, &b, &lg, &cg, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(rel_err(&lg, &lc, 1, 0) <= 1e-5, "eval loss %.8g want %.8g", lg, lc);
  ck_assert_uint_eq(cg, cc);
  psw_exec_free(eg);
  psw_exec_free(ec);
  psw_graph_free(g);
}
END_TEST

/* The click-through model of psw_graph_ctr_pack through the executor on
 * both backends: the embedding rows and index go up, the row gradients
 * come down, and loss, probabilities, dense and row gradients agree. */
START_TEST(test_exec_ctr) {
  NEED_GPU();
  enum { N = 33, F = 26, D = 8, X = 13 };
  static const uint32_t layers[] = {32};
  psw_ctr_shape sh = {F, D, X, layers, 1, 0, 1};
  ps_errbuf eb;
  uint8_t *buf;
  size_t len;
  psw_graph *g;
  ck_assert_msg(psw_graph_ctr_pack("c", &sh, &buf, &len, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_graph_load(buf, len, &g, &eb) == 0, "%s", eb.msg);
  free(buf);
  uint32_t *off = (uint32_t *)hnew(N * F + 1);
  uint64_t *keys = (uint64_t *)hnew(2 * N * F * 2);
  off[0] = 0;
  for (uint32_t b = 0; b < N * F; b++) {
    off[b + 1] = off[b] + 1 + b % 2; /* one or two ids per field */
    for (uint32_t k = off[b]; k < off[b + 1]; k++) keys[k] = (uint64_t)(b % F) << 32 | (k * 7 % 50);
  }
  psw_embed *pe;
  ck_assert_int_eq(psw_embed_create(&pe), 0);
  ck_assert_msg(psw_embed_build(pe, N * F, off, keys, 1, &eb) == 0, "%s", eb.msg);
  psw_sparse_batch sc, sg;
  psw_embed_bags(pe, &sc.bags);
  uint32_t nr;
  psw_embed_keys(pe, &nr);
  sc.rows = hrnd((size_t)nr * D, 0.5f);
  sc.row_grads = hnew((size_t)nr * D);
  sg = sc;
  sg.row_grads = hnew((size_t)nr * D);
  for (size_t i = 0; i < (size_t)nr * D; i++) sg.row_grads[i] = NAN;
  const size_t np = psw_graph_nparams(g);
  float *params = hrnd(np, 0.3f), *x = hrnd((size_t)N * X, 1), *gc = hnew(np), *gg = hnew(np);
  int32_t *y = (int32_t *)hnew(N);
  for (int i = 0; i < N; i++) y[i] = rnd_label(2);
  psw_batch bc = {N, x, y, NULL, &sc}, bg = {N, x, y, NULL, &sg};
  psw_exec *ec, *eg;
  float lc, lg, pc[N], pg[N];
  uint32_t cc, cg;
  ck_assert_msg(psw_exec_create(g, cpu, N, &ec, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_create(g, gpu, N, &eg, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_step(ec, params, &bc, gc, &lc, &cc, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_step(eg, params, &bg, gg, &lg, &cg, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(psw_exec_probs(ec, pc), 0);
  ck_assert_int_eq(psw_exec_probs(eg, pg), 0);
  ck_assert_msg(rel_err(&lg, &lc, 1, 0) <= 1e-5, "ctr loss %.8g want %.8g", lg, lc);
  double e = rel_err(pg, pc, N, 0);
  ck_assert_msg(e <= 1e-5, "ctr probabilities: relative error %.3g", e);
  e = rel_err(gg, gc, np, 0);
  ck_assert_msg(e <= 1e-5, "ctr dense gradients: relative error %.3g (seed %llu)", e,
                (unsigned long long)ps_test_seed);
  e = rel_err(sg.row_grads, sc.row_grads, (size_t)nr * D, 0);
  ck_assert_msg(e <= 1e-5, "ctr row gradients: relative error %.3g (seed %llu)", e,
                (unsigned long long)ps_test_seed);
  psw_exec_free(eg);
  psw_exec_free(ec);
  psw_embed_free(pe);
  psw_graph_free(g);
}
END_TEST

/* ---- sigmoid cross-entropy, embedding bags, column blocks ------------------ */

START_TEST(test_sigmoid_xent) {
  NEED_GPU();
  static const uint32_t sizes[] = {1, 7, 512, 5000};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    const uint32_t n = sizes[s];
    float *z = hrnd(n, 6), loss, *d = hnew(n), *p = hnew(n);
    int32_t *lh, *ld = labels_dev(n, 2, &lh);
    float *dz = dfrom(z, n * 4), *dl = dnew(4), *dd = dnew(n * 4), *dp = dnew(n * 4);
    ps_gpu_tensor Z = HT(z, n, 1), L = HT(&loss, 1, 1), D = HT(d, n, 1), P = HT(p, n, 1);
    ps_gpu_tensor gZ = DT(dz, n, 1), gL = DT(dl, 1, 1), gD = DT(dd, n, 1), gP = DT(dp, n, 1);
    ck_assert_int_eq(cpu->ops->sigmoid_xent(cpu, &Z, lh, &L, &D, &P), 0);
    ck_assert_int_eq(gpu->ops->sigmoid_xent(gpu, &gZ, ld, &gL, &gD, &gP), 0);
    char what[64];
    snprintf(what, sizeof what, "sigmoid_xent [%u, 1]", n);
    expect_close(what, dl, &loss, 1, 1e-5);
    expect_close(what, dd, d, n, 1e-5);
    expect_close(what, dp, p, n, 1e-5);
  }
  float *d = dnew(64);
  ps_gpu_tensor X = DT(d, 2, 4), L = DT(d, 1, 1);
  ck_assert_int_eq(gpu->ops->sigmoid_xent(gpu, &X, (int32_t *)d, &L, NULL, NULL), PS_EINVAL);
}
END_TEST

/* embed_case: NBAGS bags of 0..MAXLEN Zipf-ish keys out of VOCAB, rows of D
 * columns, through the CPU and cuda backends (forward, and backward with
 * beta 0 and 0.5); the index goes to the device as four int32 arrays. */
static void embed_case(uint32_t nbags, uint32_t maxlen, uint32_t vocab, uint32_t d, int mean) {
  uint32_t *off = (uint32_t *)hnew(nbags + 1);
  off[0] = 0;
  for (uint32_t b = 0; b < nbags; b++)
    off[b + 1] = off[b] + (uint32_t)((ps_test_rnd() + 1) * 0.5f * (maxlen + 1)) % (maxlen + 1);
  uint64_t *keys = (uint64_t *)hnew(2 * (size_t)off[nbags] + 2);
  for (uint32_t k = 0; k < off[nbags]; k++) {
    float u = (ps_test_rnd() + 1) * 0.5f;
    keys[k] = (uint64_t)(u * u * u * vocab) * 0x9e3779b97f4a7c15ULL; /* spread over 64 bits */
  }
  psw_embed *pe;
  ps_errbuf eb;
  ck_assert_int_eq(psw_embed_create(&pe), 0);
  ck_assert_msg(psw_embed_build(pe, nbags, off, keys, mean, &eb) == 0, "%s", eb.msg);
  ps_gpu_bags hb, db;
  psw_embed_bags(pe, &hb);
  ck_assert_int_eq(ps_gpu_bags_check(&hb), 0);
  db = hb;
  db.bag_off = dfrom(hb.bag_off, (nbags + 1) * 4);
  db.bag_slot = dfrom(hb.bag_slot, hb.nnz * 4 + 4);
  db.row_off = dfrom(hb.row_off, (hb.nrows + 1) * 4);
  db.row_bag = dfrom(hb.row_bag, hb.nnz * 4 + 4);
  const uint32_t u = hb.nrows;
  float *t = hrnd((size_t)u * d, 1), *y = hnew((size_t)nbags * d), *g = hrnd((size_t)nbags * d, 1);
  float *dt = hrnd((size_t)u * d, 1);
  float *gt = dfrom(t, (size_t)u * d * 4), *gy = dnew((size_t)nbags * d * 4 + 4),
        *gg = dfrom(g, (size_t)nbags * d * 4), *gdt = dfrom(dt, (size_t)u * d * 4);
  ps_gpu_tensor Tt = HT(t, u, d), Y = HT(y, nbags, d), G = HT(g, nbags, d), DTt = HT(dt, u, d);
  ps_gpu_tensor gT = DT(gt, u, d), gY = DT(gy, nbags, d), gG = DT(gg, nbags, d), gDT = DT(gdt, u, d);
  char what[96];
  ck_assert_int_eq(cpu->ops->embed_fwd(cpu, &Tt, &hb, &Y), 0);
  ck_assert_int_eq(gpu->ops->embed_fwd(gpu, &gT, &db, &gY), 0);
  snprintf(what, sizeof what, "embed_fwd bags=%u d=%u rows=%u %s", nbags, d, u, mean ? "mean" : "sum");
  expect_close(what, gy, y, (size_t)nbags * d, 1e-6);
  for (int beta = 0; beta < 2; beta++) {
    ck_assert_int_eq(cpu->ops->embed_bwd(cpu, &G, &hb, beta * 0.5f, &DTt), 0);
    ck_assert_int_eq(gpu->ops->embed_bwd(gpu, &gG, &db, beta * 0.5f, &gDT), 0);
    snprintf(what, sizeof what, "embed_bwd bags=%u d=%u rows=%u %s beta=%g", nbags, d, u,
             mean ? "mean" : "sum", beta * 0.5);
    expect_close(what, gdt, dt, (size_t)u * d, 1e-6);
  }
  psw_embed_free(pe);
}

START_TEST(test_embed) {
  NEED_GPU();
  for (int mean = 0; mean < 2; mean++) {
    embed_case(1, 1, 1, 1, mean);
    embed_case(26 * 33, 1, 1000, 16, mean);   /* one key per field: the CTR shape */
    embed_case(300, 7, 50, 9, mean);          /* multi-valued fields, heavy repeats */
    embed_case(64, 3, 1u << 30, 130, mean);   /* distinct keys, wide rows */
  }
  ps_gpu_bags none = {0};
  float *d = dnew(64);
  ps_gpu_tensor A = DT(d, 0, 4), B = DT(d, 1, 4);
  ck_assert_int_eq(gpu->ops->embed_fwd(gpu, &A, &none, &B), PS_EINVAL);
}
END_TEST

START_TEST(test_cols) {
  NEED_GPU();
  const uint32_t n = 37, a = 13, b = 429, off = 400;
  float *x = hrnd((size_t)n * a, 1), *y = hrnd((size_t)n * b, 1), *g = hrnd((size_t)n * a, 1);
  float *dx = dfrom(x, (size_t)n * a * 4), *dy = dfrom(y, (size_t)n * b * 4),
        *dg = dfrom(g, (size_t)n * a * 4);
  ps_gpu_tensor X = HT(x, n, a), Y = HT(y, n, b), G = HT(g, n, a);
  ps_gpu_tensor gX = DT(dx, n, a), gY = DT(dy, n, b), gG = DT(dg, n, a);
  ck_assert_int_eq(cpu->ops->cols_put(cpu, &X, &Y, off), 0);
  ck_assert_int_eq(gpu->ops->cols_put(gpu, &gX, &gY, off), 0);
  expect_close("cols_put", dy, y, (size_t)n * b, 0);
  ck_assert_int_eq(cpu->ops->cols_get(cpu, &Y, off - 7, 0.5f, &G), 0);
  ck_assert_int_eq(gpu->ops->cols_get(gpu, &gY, off - 7, 0.5f, &gG), 0);
  expect_close("cols_get", dg, g, (size_t)n * a, 1e-7);
  ck_assert_int_eq(gpu->ops->cols_put(gpu, &gX, &gY, b - a + 1), PS_EINVAL);
}
END_TEST

Suite *ps_gpu_cuda_suite(void) {
  Suite *s = suite_create("ps_gpu_cuda");
  TCase *tc = tcase_create("ops");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_open_selection);
#ifdef PS_HAVE_CUDA_BACKEND
  tcase_add_test(tc, test_open_no_driver);
#endif
  tcase_add_test(tc, test_gemm);
  tcase_add_test(tc, test_bias_add);
  tcase_add_test(tc, test_bias_grad);
  tcase_add_test(tc, test_act);
  tcase_add_test(tc, test_softmax_xent);
  tcase_add_test(tc, test_mse);
  tcase_add_test(tc, test_accuracy);
  tcase_add_test(tc, test_blas1);
  tcase_add_test(tc, test_copies_and_streams);
  tcase_add_test(tc, test_mlp_step);
  tcase_add_test(tc, test_exec_step);
  tcase_add_test(tc, test_sigmoid_xent);
  tcase_add_test(tc, test_embed);
  tcase_add_test(tc, test_cols);
  tcase_add_test(tc, test_exec_ctr);
  suite_add_tcase(s, tc);
  return s;
}
