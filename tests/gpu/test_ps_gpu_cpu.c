/* Tests for ps_gpu and the CPU backend: every op's backward against
 * central finite differences in double precision, on fresh random inputs
 * (the seed is printed in failure messages), forward ops against naive
 * double references, and device selection. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "ps_gpu.h"
#include "ps_gpu_blas.h"
#include "ps_test.h"
#include "psw_embed.h"


/* rnd_away: random values at least 0.05 away from 0 (relu's kink), so a
 * step of h = 1e-3 never crosses it. */
static void fill_rnd(float *x, size_t n, float scale, int away) {
  for (size_t i = 0; i < n; i++) {
    float v = ps_test_rnd() * scale;
    if (away && fabsf(v) < 0.05f) v = v < 0 ? v - 0.05f : v + 0.05f;
    x[i] = v;
  }
}

static ps_gpu_backend *be;

static void setup(void) {
  ps_errbuf eb;
  ps_test_rng_init();
  ck_assert_msg(ps_gpu_cpu_open(1, &be, &eb) == 0, "%s", eb.msg);
}

static void teardown(void) {
  ps_gpu_close(be);
  be = NULL;
}

static ps_gpu_tensor T(float *d, uint32_t r, uint32_t c) { return ps_gpu_tensor_make(be, d, r, c); }

/* A scalar function of the float buffers, evaluated in double. */
typedef double (*loss_fn)(void *ctx);

/* fd_check compares ANALYTIC[i] with the central difference of F in
 * X[i] for every i (X is restored afterwards). */
static void fd_check(const char *what, float *x, size_t n, loss_fn f, void *ctx,
                     const float *analytic, float h, double tol) {
  for (size_t i = 0; i < n; i++) {
    float x0 = x[i];
    x[i] = x0 + h;
    double hp = (double)x[i] - x0;   /* the step actually taken in float */
    double lp = f(ctx);
    x[i] = x0 - h;
    double hm = x0 - (double)x[i];
    double lm = f(ctx);
    x[i] = x0;
    double fd = (lp - lm) / (hp + hm), an = analytic[i];
    ck_assert_msg(fabs(fd - an) <= tol * (1 + fabs(fd) + fabs(an)),
                  "%s: element %zu: finite difference %.7g, backward %.7g (seed %llu)", what, i,
                  fd, an, (unsigned long long)ps_test_seed);
  }
}

/* ---- gemm --------------------------------------------------------------- */

START_TEST(test_gemm_reference) {
  enum { M = 7, K = 5, N = 6 };
  float a[M * K], b[K * N], c[M * N], c0[M * N];
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      fill_rnd(a, M * K, 1, 0);
      fill_rnd(b, K * N, 1, 0);
      fill_rnd(c0, M * N, 1, 0);
      memcpy(c, c0, sizeof c);
      ps_gpu_tensor A = ta ? T(a, K, M) : T(a, M, K), Bt = tb ? T(b, N, K) : T(b, K, N);
      ps_gpu_tensor C = T(c, M, N);
      ck_assert_int_eq(be->ops->gemm(be, ta, tb, 0.5f, &A, &Bt, 2.0f, &C), 0);
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double s = 0;
          for (int k = 0; k < K; k++)
            s += (double)(ta ? a[k * M + i] : a[i * K + k]) * (tb ? b[j * K + k] : b[k * N + j]);
          double want = 0.5 * s + 2.0 * c0[i * N + j];
          ck_assert_msg(fabs(c[i * N + j] - want) < 1e-5 * (1 + fabs(want)),
                        "gemm ta=%d tb=%d (%d,%d): %g want %g", ta, tb, i, j, c[i * N + j], want);
        }
    }
  /* beta = 0 ignores NaN in C; shapes that disagree are refused. */
  ps_gpu_tensor A = T(a, M, K), Bm = T(b, K, N), C = T(c, M, N);
  for (int i = 0; i < M * N; i++) c[i] = NAN;
  ck_assert_int_eq(be->ops->gemm(be, 0, 0, 1, &A, &Bm, 0, &C), 0);
  for (int i = 0; i < M * N; i++) ck_assert(isfinite(c[i]));
  ck_assert_int_eq(be->ops->gemm(be, 1, 0, 1, &A, &Bm, 0, &C), PS_EINVAL);
  ps_gpu_tensor D = A;
  D.device = 0;
  ck_assert_int_eq(be->ops->gemm(be, 0, 0, 1, &D, &Bm, 0, &C), PS_EDEVICE);
}
END_TEST

/* Dense layer: L = sum(w . (x W + b)); backward as the executor does it:
 * dW = x^T w (gemm TN), dx = w W^T (gemm NT), db = column sums of w. */
enum { DN = 4, DI = 5, DO = 3 };
struct dense_ctx {
  float x[DN * DI], W[DI * DO], b[DO], y[DN * DO], w[DN * DO];
  ps_gpu_act act;
};

static double dense_loss(void *p) {
  struct dense_ctx *c = p;
  ps_gpu_tensor X = T(c->x, DN, DI), Wt = T(c->W, DI, DO), Bt = T(c->b, 1, DO), Y = T(c->y, DN, DO);
  ck_assert_int_eq(be->ops->gemm(be, 0, 0, 1, &X, &Wt, 0, &Y), 0);
  ck_assert_int_eq(be->ops->bias_add(be, &Y, &Bt, c->act), 0);
  double s = 0;
  for (int i = 0; i < DN * DO; i++) s += (double)c->w[i] * c->y[i];
  return s;
}

START_TEST(test_dense_act_backward) {
  for (int act = 0; act < PS_GPU_NACTS; act++) {
    struct dense_ctx c;
    c.act = (ps_gpu_act)act;
    fill_rnd(c.x, DN * DI, 1, 0);
    fill_rnd(c.W, DI * DO, 1, 0);
    fill_rnd(c.b, DO, 1, 0);
    fill_rnd(c.w, DN * DO, 1, 0);
    dense_loss(&c);
    /* Keep relu's pre-activations away from the kink (a central
     * difference across it is not the derivative): shift a column's bias
     * until none of its rows' pre-activations is within 0.05 of 0.  (The
     * outputs alone cannot tell: a negative pre-activation reads as 0, and
     * a shift for one row could move another onto the kink.) */
    for (int o = 0; o < DO && act == PS_GPU_ACT_RELU; o++) {
      int near = 1;
      for (int tries = 0; near && tries < 200; tries++) {
        near = 0;
        for (int n = 0; n < DN; n++) {
          double z = c.b[o];
          for (int i = 0; i < DI; i++) z += (double)c.x[n * DI + i] * c.W[i * DO + o];
          near |= fabs(z) < 0.05;
        }
        if (near) c.b[o] += 0.07f;
      }
      ck_assert_msg(!near, "no bias keeps column %d off relu's kink (seed %llu)", o,
                    (unsigned long long)ps_test_seed);
    }
    dense_loss(&c);
    float dz[DN * DO], dW[DI * DO], db[DO], dx[DN * DI];
    ps_gpu_tensor Y = T(c.y, DN, DO), Wg = T(c.w, DN, DO), DZ = T(dz, DN, DO);
    ps_gpu_tensor X = T(c.x, DN, DI), Wt = T(c.W, DI, DO), DW = T(dW, DI, DO), DB = T(db, 1, DO),
                  DX = T(dx, DN, DI);
    ck_assert_int_eq(be->ops->act_bwd(be, c.act, &Y, &Wg, &DZ), 0);
    ck_assert_int_eq(be->ops->gemm(be, 1, 0, 1, &X, &DZ, 0, &DW), 0);
    ck_assert_int_eq(be->ops->gemm(be, 0, 1, 1, &DZ, &Wt, 0, &DX), 0);
    ck_assert_int_eq(be->ops->bias_grad(be, &DZ, 0, &DB), 0);
    char what[64];
    snprintf(what, sizeof what, "dense+%s dW", ps_gpu_act_name(c.act));
    fd_check(what, c.W, DI * DO, dense_loss, &c, dW, 1e-3f, 2e-3);
    snprintf(what, sizeof what, "dense+%s db", ps_gpu_act_name(c.act));
    fd_check(what, c.b, DO, dense_loss, &c, db, 1e-3f, 2e-3);
    snprintf(what, sizeof what, "dense+%s dx", ps_gpu_act_name(c.act));
    fd_check(what, c.x, DN * DI, dense_loss, &c, dx, 1e-3f, 2e-3);
  }
}
END_TEST

/* ---- activations ---------------------------------------------------------- */

enum { AN = 3, AK = 7 };
struct act_ctx {
  float x[AN * AK], y[AN * AK], w[AN * AK];
  ps_gpu_act act;
};

static double act_loss(void *p) {
  struct act_ctx *c = p;
  ps_gpu_tensor X = T(c->x, AN, AK), Y = T(c->y, AN, AK);
  ck_assert_int_eq(be->ops->act_fwd(be, c->act, &X, &Y), 0);
  double s = 0;
  for (int i = 0; i < AN * AK; i++) s += (double)c->w[i] * c->y[i];
  return s;
}

START_TEST(test_act_backward) {
  for (int act = 0; act < PS_GPU_NACTS; act++) {
    struct act_ctx c;
    c.act = (ps_gpu_act)act;
    fill_rnd(c.x, AN * AK, 2, 1);
    fill_rnd(c.w, AN * AK, 1, 0);
    act_loss(&c);
    float dx[AN * AK];
    ps_gpu_tensor Y = T(c.y, AN, AK), W = T(c.w, AN, AK), DX = T(dx, AN, AK);
    ck_assert_int_eq(be->ops->act_bwd(be, c.act, &Y, &W, &DX), 0);
    fd_check(ps_gpu_act_name(c.act), c.x, AN * AK, act_loss, &c, dx, 1e-3f, 2e-3);
    /* In place: DX may be DY (recompute Y: fd_check left it perturbed). */
    act_loss(&c);
    float g[AN * AK];
    memcpy(g, c.w, sizeof g);
    ps_gpu_tensor G = T(g, AN, AK);
    ck_assert_int_eq(be->ops->act_bwd(be, c.act, &Y, &G, &G), 0);
    ck_assert_int_eq(memcmp(g, dx, sizeof g), 0);
  }
  ps_gpu_tensor a = T((float[4]){1, 2, 3, 4}, 2, 2), b = T((float[4]){0}, 4, 1);
  ck_assert_int_eq(be->ops->act_fwd(be, PS_GPU_ACT_RELU, &a, &b), PS_EINVAL);
}
END_TEST

/* ---- losses --------------------------------------------------------------- */

enum { SN = 5, SK = 4 };
struct xent_ctx {
  float x[SN * SK], t[SN * SK], loss;
  int32_t labels[SN];
  int mse;
};

static double xent_loss(void *p) {
  struct xent_ctx *c = p;
  ps_gpu_tensor X = T(c->x, SN, SK), L = T(&c->loss, 1, 1), Tg = T(c->t, SN, SK);
  int rc = c->mse ? be->ops->mse(be, &X, &Tg, &L, NULL)
                  : be->ops->softmax_xent(be, &X, c->labels, &L, NULL);
  ck_assert_int_eq(rc, 0);
  return c->loss;
}

/* Reference mean cross-entropy in double. */
static double xent_ref(const float *x, const int32_t *labels, int n, int k) {
  double total = 0;
  for (int i = 0; i < n; i++) {
    double mx = x[i * k], s = 0;
    for (int j = 1; j < k; j++) mx = fmax(mx, x[i * k + j]);
    for (int j = 0; j < k; j++) s += exp(x[i * k + j] - mx);
    total += log(s) + mx - x[i * k + labels[i]];
  }
  return total / n;
}

START_TEST(test_softmax_xent) {
  struct xent_ctx c = {.mse = 0};
  fill_rnd(c.x, SN * SK, 3, 0);
  for (int i = 0; i < SN; i++) c.labels[i] = (int32_t)((ps_test_rnd() + 1) * 0.5f * SK) % SK;
  float d[SN * SK];
  ps_gpu_tensor X = T(c.x, SN, SK), L = T(&c.loss, 1, 1), D = T(d, SN, SK);
  ck_assert_int_eq(be->ops->softmax_xent(be, &X, c.labels, &L, &D), 0);
  double want = xent_ref(c.x, c.labels, SN, SK);
  ck_assert_msg(fabs(c.loss - want) < 1e-5 * (1 + want), "loss %g want %g", c.loss, want);
  fd_check("softmax_xent", c.x, SN * SK, xent_loss, &c, d, 1e-2f, 2e-3);
  /* Numerically stable: huge logits give the same loss as shifted ones. */
  float big[SN * SK], l2;
  for (int i = 0; i < SN * SK; i++) big[i] = c.x[i] + 1e4f * (float)(i / SK % 2 ? 1 : -1);
  ps_gpu_tensor Bg = T(big, SN, SK), L2 = T(&l2, 1, 1);
  ck_assert_int_eq(be->ops->softmax_xent(be, &Bg, c.labels, &L2, &D), 0);
  want = xent_ref(big, c.labels, SN, SK);
  ck_assert_msg(isfinite(l2) && fabs(l2 - want) < 1e-3 * (1 + want), "big: %g want %g", l2, want);
  /* A label out of range is refused. */
  c.labels[2] = SK;
  ck_assert_int_eq(be->ops->softmax_xent(be, &X, c.labels, &L, &D), PS_EINVAL);
}
END_TEST

START_TEST(test_mse) {
  struct xent_ctx c = {.mse = 1};
  fill_rnd(c.x, SN * SK, 2, 0);
  fill_rnd(c.t, SN * SK, 2, 0);
  float d[SN * SK];
  ps_gpu_tensor X = T(c.x, SN, SK), Tg = T(c.t, SN, SK), L = T(&c.loss, 1, 1), D = T(d, SN, SK);
  ck_assert_int_eq(be->ops->mse(be, &X, &Tg, &L, &D), 0);
  double want = 0;
  for (int i = 0; i < SN * SK; i++) want += ((double)c.x[i] - c.t[i]) * ((double)c.x[i] - c.t[i]);
  want /= SN * SK;
  ck_assert_msg(fabs(c.loss - want) < 1e-5 * (1 + want), "mse %g want %g", c.loss, want);
  fd_check("mse", c.x, SN * SK, xent_loss, &c, d, 1e-2f, 2e-3);
}
END_TEST

START_TEST(test_accuracy) {
  enum { N = 50, K = 6 };
  float x[N * K], cnt;
  int32_t labels[N];
  int want = 0;
  fill_rnd(x, N * K, 1, 0);
  for (int i = 0; i < N; i++) {
    labels[i] = (int32_t)((ps_test_rnd() + 1) * 0.5f * K) % K;
    int best = 0;
    for (int j = 1; j < K; j++)
      if (x[i * K + j] > x[i * K + best]) best = j;
    want += best == labels[i];
  }
  ps_gpu_tensor X = T(x, N, K), C = T(&cnt, 1, 1);
  ck_assert_int_eq(be->ops->accuracy(be, &X, labels, &C), 0);
  ck_assert_int_eq((int)cnt, want);
}
END_TEST

START_TEST(test_blas1_and_bias_grad) {
  enum { N = 37 };
  float x[N], y[N], y0[N];
  fill_rnd(x, N, 1, 1);
  fill_rnd(y0, N, 1, 1);
  memcpy(y, y0, sizeof y);
  ps_gpu_tensor X = T(x, 1, N), Y = T(y, 1, N);
  ck_assert_int_eq(be->ops->axpy(be, -0.5f, &X, &Y), 0);
  for (int i = 0; i < N; i++) ck_assert_float_eq_tol(y[i], y0[i] - 0.5f * x[i], 1e-6);
  ck_assert_int_eq(be->ops->scale(be, 3.0f, &Y), 0);
  for (int i = 0; i < N; i++) ck_assert_float_eq_tol(y[i], 3 * (y0[i] - 0.5f * x[i]), 1e-5);
  ck_assert_int_eq(be->ops->fill(be, 1.25f, &Y), 0);
  for (int i = 0; i < N; i++) ck_assert_float_eq(y[i], 1.25f);
  /* bias_grad with beta accumulates. */
  float dy[3 * N], db[N];
  fill_rnd(dy, 3 * N, 1, 1);
  memcpy(db, x, sizeof db);
  ps_gpu_tensor DY = T(dy, 3, N), DB = T(db, 1, N);
  ck_assert_int_eq(be->ops->bias_grad(be, &DY, 1, &DB), 0);
  for (int i = 0; i < N; i++)
    ck_assert_float_eq_tol(db[i], x[i] + dy[i] + dy[N + i] + dy[2 * N + i], 1e-5);
  ps_gpu_tensor Z = T(y, 1, N - 1);
  ck_assert_int_eq(be->ops->axpy(be, 1, &X, &Z), PS_EINVAL);
}
END_TEST

START_TEST(test_memory_and_copies) {
  void *d, *h;
  ck_assert_int_eq(be->ops->alloc(be, 1000, &d), 0);
  ck_assert_int_eq(be->ops->host_alloc(be, 1000, &h), 0);
  ck_assert_uint_eq((uintptr_t)d % 64, 0);
  fill_rnd(h, 250, 1, 1);
  ck_assert_int_eq(be->ops->copy_h2d(be, d, h, 1000, PS_GPU_STREAM_COPY), 0);
  ck_assert_int_eq(be->ops->stream_wait(be, PS_GPU_STREAM_COMPUTE, PS_GPU_STREAM_COPY), 0);
  ck_assert_int_eq(be->ops->sync(be, PS_GPU_STREAM_COPY), 0);
  ck_assert_int_eq(memcmp(d, h, 1000), 0);
  ck_assert_int_eq(be->ops->copy_d2h(be, h, d, 1000, 7), PS_EINVAL);
  be->ops->free_buf(be, d);
  be->ops->host_free(be, h);
}
END_TEST

/* ---- selection ------------------------------------------------------------ */

START_TEST(test_open_devices) {
  ps_gpu_backend *b = NULL;
  ps_errbuf eb;
  ck_assert_int_eq(ps_gpu_open("cpu", &b, &eb), 0);
  ck_assert_str_eq(b->name, "cpu");
  ck_assert(strstr(b->desc, "OpenBLAS") != NULL);
  ps_gpu_close(b);
  ck_assert_int_eq(ps_gpu_open("auto", &b, &eb), 0);
  ck_assert(b != NULL);
  int got_cuda = strcmp(b->name, "cuda") == 0;
  ps_gpu_close(b);
  if (!got_cuda) {
    /* No cuda backend or no device: "cuda" must fail with a clear message. */
    ck_assert_int_eq(ps_gpu_open("cuda", &b, &eb), PS_EDEVICE);
    ck_assert(b == NULL);
    ck_assert_msg(strstr(eb.msg, "cuda") != NULL, "message: %s", eb.msg);
  }
  ck_assert_int_eq(ps_gpu_open("gpu", &b, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "unknown device 'gpu' (expected auto, cpu, cuda or cuda:N (N from 0 "
                           "to 999, no leading zeros))");
  ck_assert_int_eq(ps_gpu_open("cuda:x", &b, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "device 'cuda:x': expected cuda:N with N a device number from 0 to "
                           "999, no leading zeros");
  ps_gpu_act a;
  ck_assert_int_eq(ps_gpu_act_parse("tanh", &a), 0);
  ck_assert_int_eq(a, PS_GPU_ACT_TANH);
  ck_assert_int_eq(ps_gpu_act_parse("gelu", &a), PS_EINVAL);
}
END_TEST

/* cuda:N has one spelling per device and a stated range: every name
 * strtol would also have read (a sign, a blank, leading zeros) or that
 * is out of range is refused as malformed (PS_EINVAL, the rule in the
 * message), before any device is looked at; the range's ends are names
 * (PS_EDEVICE here at most: no such device). */
START_TEST(test_device_names) {
  static const char *const bad[] = {"cuda:", "cuda:01", "cuda:00000001", "cuda:0999",
                                    "cuda:1000", "cuda:+1", "cuda:-0", "cuda: 1", "cuda:1 ",
                                    "cuda:99999999999999999999", "CUDA", "cuda0", ""};
  ps_gpu_backend *b = NULL;
  ps_errbuf eb;
  int ord = 7;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_msg(ps_gpu_device_parse(bad[i], &ord, &eb) == PS_EINVAL, "'%s' accepted", bad[i]);
    ck_assert_msg(strstr(eb.msg, "0 to 999, no leading zeros") != NULL, "'%s': %s", bad[i], eb.msg);
    ck_assert_int_eq(ps_gpu_open(bad[i], &b, &eb), PS_EINVAL);
    ck_assert(b == NULL);
  }
  static const struct { const char *name; int ord; } good[] = {
      {"auto", 0}, {"cpu", -1}, {"cuda", 0}, {"cuda:0", 0}, {"cuda:7", 7}, {"cuda:10", 10},
      {"cuda:999", 999}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    ck_assert_msg(ps_gpu_device_parse(good[i].name, &ord, &eb) == 0, "'%s': %s", good[i].name,
                  eb.msg);
    ck_assert_int_eq(ord, good[i].ord);
  }
  int rc = ps_gpu_open("cuda:999", &b, &eb); /* no machine has 1000 GPUs */
  ck_assert_msg(rc == PS_EDEVICE && b == NULL, "cuda:999: %d %s", rc, eb.msg);
}
END_TEST

/* ---- sigmoid cross-entropy, embedding bags, column blocks ------------------ */

enum { GN = 9 };
struct sig_ctx {
  float z[GN], loss;
  int32_t y[GN];
};

static double sig_loss(void *ctx) {
  struct sig_ctx *c = ctx;
  ps_gpu_tensor Z = T(c->z, GN, 1), L = T(&c->loss, 1, 1);
  ck_assert_int_eq(be->ops->sigmoid_xent(be, &Z, c->y, &L, NULL, NULL), 0);
  return c->loss;
}

START_TEST(test_sigmoid_xent) {
  struct sig_ctx c;
  fill_rnd(c.z, GN, 4, 0);
  for (int i = 0; i < GN; i++) c.y[i] = i % 3 == 0;
  float d[GN], p[GN];
  ps_gpu_tensor Z = T(c.z, GN, 1), L = T(&c.loss, 1, 1), D = T(d, GN, 1), P = T(p, GN, 1);
  ck_assert_int_eq(be->ops->sigmoid_xent(be, &Z, c.y, &L, &D, &P), 0);
  double want = 0;
  for (int i = 0; i < GN; i++) {
    double q = 1 / (1 + exp(-(double)c.z[i]));
    want -= c.y[i] ? log(q) : log(1 - q);
    ck_assert_msg(fabs(p[i] - q) < 1e-6, "prob %d: %g want %g", i, p[i], q);
  }
  want /= GN;
  ck_assert_msg(fabs(c.loss - want) < 1e-5 * (1 + want), "loss %g want %g", c.loss, want);
  fd_check("sigmoid_xent", c.z, GN, sig_loss, &c, d, 1e-2f, 2e-3);
  /* stable for huge logits: the loss of a confident mistake is |z| */
  c.z[0] = -1e4f, c.z[1] = 1e4f, c.y[0] = 1, c.y[1] = 1;
  ck_assert_int_eq(be->ops->sigmoid_xent(be, &Z, c.y, &L, &D, NULL), 0);
  ck_assert(isfinite(c.loss) && c.loss > 1e4f / GN * 0.99f);
  c.y[3] = 2;
  ck_assert_int_eq(be->ops->sigmoid_xent(be, &Z, c.y, &L, &D, NULL), PS_EINVAL);
  ps_gpu_tensor Z2 = T(c.z, 3, 3);
  ck_assert_int_eq(be->ops->sigmoid_xent(be, &Z2, c.y, &L, NULL, NULL), PS_EINVAL);
}
END_TEST

/* Bags of 3 samples x 2 fields over keys with repeats, one empty bag and
 * a key twice in one bag; the loss is sum(C .* Y) for a random C. */
enum { EB_BAGS = 6, EB_D = 5 };
static const uint32_t eb_off[EB_BAGS + 1] = {0, 3, 4, 4, 7, 9, 10};
static const uint64_t eb_keys[10] = {7, 1ull << 40, 7, 99, 3, 99, 99, 1ull << 40, 5, 3};

struct emb_ctx {
  ps_gpu_bags bags;
  float *table, *c, y[EB_BAGS * EB_D];
};

static double emb_loss(void *ctx) {
  struct emb_ctx *e = ctx;
  ps_gpu_tensor Tb = T(e->table, e->bags.nrows, EB_D), Y = T(e->y, EB_BAGS, EB_D);
  ck_assert_int_eq(be->ops->embed_fwd(be, &Tb, &e->bags, &Y), 0);
  double l = 0;
  for (int i = 0; i < EB_BAGS * EB_D; i++) l += (double)e->c[i] * e->y[i];
  return l;
}

START_TEST(test_embed_backward) {
  psw_embed *pe;
  ps_errbuf eb;
  ck_assert_int_eq(psw_embed_create(&pe), 0);
  for (int mean = 0; mean < 2; mean++) {
    ck_assert_msg(psw_embed_build(pe, EB_BAGS, eb_off, eb_keys, mean, &eb) == 0, "%s", eb.msg);
    struct emb_ctx e;
    psw_embed_bags(pe, &e.bags);
    ck_assert_uint_eq(e.bags.nrows, 5);
    ck_assert_int_eq(ps_gpu_bags_check(&e.bags), 0);
    float table[5 * EB_D], c[EB_BAGS * EB_D], dt[5 * EB_D];
    fill_rnd(table, 5 * EB_D, 1, 0);
    fill_rnd(c, EB_BAGS * EB_D, 1, 0);
    e.table = table, e.c = c;
    emb_loss(&e);
    /* forward against a direct reference over the keys */
    uint32_t nk;
    const uint64_t *keys = psw_embed_keys(pe, &nk);
    for (int b = 0; b < EB_BAGS; b++)
      for (int j = 0; j < EB_D; j++) {
        double s = 0;
        for (uint32_t k = eb_off[b]; k < eb_off[b + 1]; k++) {
          uint32_t r = 0;
          while (keys[r] != eb_keys[k]) r++;
          s += table[r * EB_D + j];
        }
        uint32_t len = eb_off[b + 1] - eb_off[b];
        if (mean && len) s /= len;
        ck_assert_msg(fabs(e.y[b * EB_D + j] - s) < 1e-6, "bag %d col %d: %g want %g", b, j,
                      e.y[b * EB_D + j], s);
      }
    ps_gpu_tensor DY = T(c, EB_BAGS, EB_D), DT = T(dt, 5, EB_D);
    ck_assert_int_eq(be->ops->embed_bwd(be, &DY, &e.bags, 0, &DT), 0);
    fd_check(mean ? "embed mean" : "embed sum", table, 5 * EB_D, emb_loss, &e, dt, 1e-2f, 1e-3);
    /* beta = 1 accumulates: twice the gradient */
    float dt2[5 * EB_D];
    memcpy(dt2, dt, sizeof dt);
    ps_gpu_tensor DT2 = T(dt2, 5, EB_D);
    ck_assert_int_eq(be->ops->embed_bwd(be, &DY, &e.bags, 1, &DT2), 0);
    for (int i = 0; i < 5 * EB_D; i++) ck_assert_float_eq_tol(dt2[i], 2 * dt[i], 1e-6);
    /* shapes that disagree with the index are refused */
    ps_gpu_tensor bad = T(dt, 4, EB_D);
    ck_assert_int_eq(be->ops->embed_bwd(be, &DY, &e.bags, 0, &bad), PS_EINVAL);
  }
  psw_embed_free(pe);
}
END_TEST

START_TEST(test_cols) {
  float x[3 * 2], y[3 * 5], g[3 * 2];
  fill_rnd(x, 6, 1, 0);
  fill_rnd(y, 15, 1, 0);
  ps_gpu_tensor X = T(x, 3, 2), Y = T(y, 3, 5), G = T(g, 3, 2);
  ck_assert_int_eq(be->ops->cols_put(be, &X, &Y, 3), 0);
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 2; j++) ck_assert_float_eq(y[i * 5 + 3 + j], x[i * 2 + j]);
  ck_assert_int_eq(be->ops->cols_get(be, &Y, 3, 0, &G), 0);
  ck_assert_int_eq(memcmp(g, x, sizeof x), 0);
  ck_assert_int_eq(be->ops->cols_get(be, &Y, 3, 1, &G), 0);
  for (int i = 0; i < 6; i++) ck_assert_float_eq(g[i], 2 * x[i]);
  ck_assert_int_eq(be->ops->cols_put(be, &X, &Y, 4), PS_EINVAL);
  ps_gpu_tensor X2 = T(x, 2, 3);
  ck_assert_int_eq(be->ops->cols_get(be, &Y, 0, 0, &X2), PS_EINVAL);
}
END_TEST

/* With more than one thread the CPU backend lets OpenBLAS's idle helper
 * threads sleep after a short spin (ps_gpu_blas.h invariant 6): after a
 * 2-thread sgemm the process uses almost no CPU while its only other
 * thread sleeps 200 ms; OpenBLAS's own default spins about 0.1 s of it
 * away.  Skipped, visibly, when OPENBLAS_THREAD_TIMEOUT is set or the BLAS
 * has no pool to restart (ps_gpu_blas_short_spin says 0). */
START_TEST(test_idle_helpers_sleep) {
  if (!ps_gpu_blas_short_spin()) {
    fprintf(stderr, "test_idle_helpers_sleep: skipped (OPENBLAS_THREAD_TIMEOUT set or no "
                    "OpenBLAS thread pool)\n");
    return;
  }
  ps_gpu_backend *b2 = NULL;
  ps_errbuf eb;
  ck_assert_msg(ps_gpu_cpu_open(2, &b2, &eb) == 0, "%s", eb.msg);
  enum { N = 512 };
  float *a = calloc((size_t)N * N, sizeof *a), *c = calloc((size_t)N * N, sizeof *c);
  ck_assert(a && c);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1, a, N, a, N, 0, c, N);
  struct timespec t0, t1, nap = {0, 200 * 1000 * 1000};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
  nanosleep(&nap, NULL);
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
  double cpu_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
  ck_assert_msg(cpu_ms < 20, "%.1f ms of CPU while the caller slept 200 ms: helpers spin", cpu_ms);
  free(a);
  free(c);
  ps_gpu_close(b2);
}
END_TEST

Suite *ps_gpu_cpu_suite(void) {
  Suite *s = suite_create("ps_gpu_cpu");
  TCase *tc = tcase_create("ops");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_gemm_reference);
  tcase_add_test(tc, test_dense_act_backward);
  tcase_add_test(tc, test_act_backward);
  tcase_add_test(tc, test_softmax_xent);
  tcase_add_test(tc, test_mse);
  tcase_add_test(tc, test_accuracy);
  tcase_add_test(tc, test_blas1_and_bias_grad);
  tcase_add_test(tc, test_memory_and_copies);
  tcase_add_test(tc, test_idle_helpers_sleep);
  tcase_add_test(tc, test_open_devices);
  tcase_add_test(tc, test_device_names);
  tcase_add_test(tc, test_sigmoid_xent);
  tcase_add_test(tc, test_embed_backward);
  tcase_add_test(tc, test_cols);
  suite_add_tcase(s, tc);
  return s;
}
