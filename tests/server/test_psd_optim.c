/* Tests for psd_optim: each kind against values worked out by hand (a few
 * steps, Adam's bias correction included), defaults, bad specs, and the
 * vectorised loops against a scalar double-precision reference. */
#include <math.h>
#include <string.h>

#include "psd_optim.h"
#include "ps_test.h"

/* optim makes a resolved optimizer of KIND with LR, WD and MU (0: default). */
static psd_optim optim(const char *kind, float lr, float wd, float mu) {
  Ps__OptimizerSpec spec = PS__OPTIMIZER_SPEC__INIT;
  spec.kind = (char *)kind;
  spec.lr = lr;
  spec.weight_decay = wd;
  spec.momentum = mu;
  psd_optim o;
  ps_errbuf eb;
  ck_assert_msg(psd_optim_init(&o, &spec, &eb) == 0, "%s", eb.msg);
  return o;
}

#define ck_near(a, b) ck_assert_msg(fabs((double)(a) - (double)(b)) <= 1e-6 * (1 + fabs((double)(b))), \
                                    "%s = %.9g, expected %.9g", #a, (double)(a), (double)(b))

START_TEST(test_sgd) {
  psd_optim o = optim("sgd", 0.1f, 0, 0);
  ck_assert_uint_eq(psd_optim_slots(&o), 0);
  float w[1] = {1}, g[1] = {0.5f};
  psd_optim_apply(&o, w, NULL, g, 1, 1);
  ck_near(w[0], 0.95);
  psd_optim_apply(&o, w, NULL, g, 1, 2);
  ck_near(w[0], 0.90);
  /* Weight decay: g' = 0.5 + 0.1 * 1 = 0.6, w = 1 - 0.06. */
  o = optim("sgd", 0.1f, 0.1f, 0);
  w[0] = 1;
  psd_optim_apply(&o, w, NULL, g, 1, 1);
  ck_near(w[0], 0.94);
}
END_TEST

START_TEST(test_lr_decay) {
  Ps__OptimizerSpec spec = PS__OPTIMIZER_SPEC__INIT;
  spec.kind = "sgd";
  spec.lr = 0.1f;
  spec.lr_decay = 0.5f;
  spec.lr_decay_steps = 2;
  psd_optim o;
  ps_errbuf eb;
  ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), 0);
  /* Step t uses lr * 0.5^((t-1)/2): 0.1, 0.1/sqrt(2), 0.05. */
  float w[1] = {1}, g[1] = {1};
  psd_optim_apply(&o, w, NULL, g, 1, 1);
  ck_near(w[0], 0.9);
  psd_optim_apply(&o, w, NULL, g, 1, 2);
  ck_near(w[0], 0.9 - 0.1 / sqrt(2.0));
  psd_optim_apply(&o, w, NULL, g, 1, 3);
  ck_near(w[0], 0.9 - 0.1 / sqrt(2.0) - 0.05);
  spec.lr_decay_steps = 0;
  ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "optimizer 'sgd': lr_decay needs lr_decay_steps > 0");
  spec.lr_decay = 1.5f;
  ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), PS_EINVAL);
}
END_TEST

START_TEST(test_momentum) {
  psd_optim o = optim("momentum", 0.1f, 0, 0); /* mu 0 means 0.9 */
  ck_assert_uint_eq(psd_optim_slots(&o), 1);
  ck_near(o.momentum, 0.9);
  float w[1] = {1}, v[1], g1[1] = {1}, g0[1] = {0};
  psd_optim_init_slots(&o, v, 1);
  ck_near(v[0], 0);
  psd_optim_apply(&o, w, v, g1, 1, 1); /* v = 1, w = 0.9 */
  ck_near(v[0], 1);
  ck_near(w[0], 0.9);
  psd_optim_apply(&o, w, v, g1, 1, 2); /* v = 1.9, w = 0.71 */
  ck_near(v[0], 1.9);
  ck_near(w[0], 0.71);
  psd_optim_apply(&o, w, v, g0, 1, 3); /* v = 1.71, w = 0.539 */
  ck_near(v[0], 1.71);
  ck_near(w[0], 0.539);
}
END_TEST

START_TEST(test_nesterov) {
  psd_optim o = optim("nesterov", 0.1f, 0, 0.9f);
  float w[1] = {1}, v[1] = {0}, g[1] = {1};
  psd_optim_apply(&o, w, v, g, 1, 1); /* v = 1, w = 1 - 0.1 (1 + 0.9) */
  ck_near(w[0], 0.81);
  psd_optim_apply(&o, w, v, g, 1, 2); /* v = 1.9, w -= 0.1 (1 + 1.71) */
  ck_near(v[0], 1.9);
  ck_near(w[0], 0.539);
}
END_TEST

START_TEST(test_adam) {
  psd_optim o = optim("adam", 0.1f, 0, 0);
  ck_assert_uint_eq(psd_optim_slots(&o), 2);
  ck_near(o.beta1, 0.9);
  ck_near(o.beta2, 0.999);
  ck_near(o.eps, 1e-8);
  float w[2] = {1, -2}, s[4];
  psd_optim_init_slots(&o, s, 2);
  float g1[2] = {0.5f, 1}, g2[2] = {-0.25f, 0.5f}, g3[2] = {0.1f, -3};
  /* Step 1: m = 0.05, v = 0.00025, lr_t = 0.1 sqrt(0.001) / 0.1; the bias
   * correction makes the first step lr * sign(g). */
  psd_optim_apply(&o, w, s, g1, 2, 1);
  ck_near(s[0], 0.05);
  ck_near(s[1], 0.1);
  ck_near(s[2], 0.00025);
  ck_near(s[3], 0.001);
  ck_near(w[0], 0.9);
  ck_near(w[1], -2.1);
  /* Step 2: m = 0.02, v = 0.00031225, lr_t = 0.1 sqrt(0.001999) / 0.19
   * = 0.0235317, w = 0.9 - 0.0235317 * 0.02 / 0.0176706. */
  psd_optim_apply(&o, w, s, g2, 2, 2);
  ck_near(s[0], 0.02);
  ck_near(s[2], 0.00031225);
  ck_near(w[0], 0.873366374);
  ck_near(w[1], -2.19321791);
  psd_optim_apply(&o, w, s, g3, 2, 3);
  ck_near(s[1], -0.174);
  ck_near(s[3], 0.010247751);
  ck_near(w[0], 0.841842035);
  ck_near(w[1], -2.15849556);
  /* Weight decay enters the moments: g' = 0.5 + 0.5 w. */
  o = optim("adam", 0.1f, 0.5f, 0);
  float w1[1] = {1}, s1[2] = {0, 0}, g[1] = {0.5f};
  psd_optim_apply(&o, w1, s1, g, 1, 1);
  ck_near(w1[0], 0.9);
  psd_optim_apply(&o, w1, s1, g, 1, 2);
  ck_near(w1[0], 0.80016654);
}
END_TEST

START_TEST(test_adagrad) {
  psd_optim o = optim("adagrad", 0.1f, 0, 0);
  ck_near(o.eps, 1e-10);
  float w[1] = {1}, G[1] = {0}, g2[1] = {2}, g1[1] = {1};
  psd_optim_apply(&o, w, G, g2, 1, 1); /* G = 4, w -= 0.1 * 2 / 2 */
  ck_near(G[0], 4);
  ck_near(w[0], 0.9);
  psd_optim_apply(&o, w, G, g1, 1, 2); /* G = 5, w -= 0.1 / sqrt(5) */
  ck_near(G[0], 5);
  ck_near(w[0], 0.9 - 0.1 / sqrt(5.0));
}
END_TEST

START_TEST(test_bad_specs) {
  Ps__OptimizerSpec spec = PS__OPTIMIZER_SPEC__INIT;
  psd_optim o;
  ps_errbuf eb;
  ck_assert_int_eq(psd_optim_init(&o, NULL, &eb), PS_EINVAL);
  spec.kind = "rmsprop";
  spec.lr = 0.1f;
  ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "unknown optimizer 'rmsprop'");
  spec.kind = "sgd";
  spec.lr = 0;
  ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), PS_EINVAL);
  spec.lr = NAN;
  ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), PS_EINVAL);
  spec.lr = 0.5f;
  spec.momentum = 0.5f;
  spec.eps = 1e-3f;
  ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), 0);
  ck_assert_str_eq(psd_optim_name(&o), "sgd");
  ck_near(o.momentum, 0.5);
  ck_near(o.eps, 1e-3);
}
END_TEST

/* Every kind over 37 elements (not a multiple of any vector width) equals
 * a scalar double-precision reference of the same rules. */
START_TEST(test_loops_match_reference) {
  static const char *const kinds[] = {"sgd", "momentum", "nesterov", "adam", "adagrad"};
  enum { N = 37 };
  for (size_t k = 0; k < 5; k++) {
    psd_optim o = optim(kinds[k], 0.01f, 0.01f, 0);
    float w[N], s[2 * N], g[N];
    double rw[N], rs[2 * N];
    psd_optim_init_slots(&o, s, N);
    for (int i = 0; i < N; i++) {
      rw[i] = w[i] = (float)(i - 18) / 7.0f;
      rs[i] = rs[N + i] = 0;
    }
    for (uint64_t t = 1; t <= 5; t++) {
      for (int i = 0; i < N; i++) g[i] = (float)sin((double)(i * 3 + (int)t));
      psd_optim_apply(&o, w, s, g, N, t);
      double lr = o.lr, wd = o.weight_decay, mu = o.momentum, b1 = o.beta1, b2 = o.beta2;
      for (int i = 0; i < N; i++) {
        double gi = g[i] + wd * rw[i];
        switch (k) {
        case 0: rw[i] -= lr * gi; break;
        case 1: rs[i] = mu * rs[i] + gi; rw[i] -= lr * rs[i]; break;
        case 2: rs[i] = mu * rs[i] + gi; rw[i] -= lr * (gi + mu * rs[i]); break;
        case 3:
          rs[i] = b1 * rs[i] + (1 - b1) * gi;
          rs[N + i] = b2 * rs[N + i] + (1 - b2) * gi * gi;
          rw[i] -= lr * sqrt(1 - pow(b2, (double)t)) / (1 - pow(b1, (double)t)) * rs[i] /
                   (sqrt(rs[N + i]) + o.eps);
          break;
        default: rs[i] += gi * gi; rw[i] -= lr * gi / (sqrt(rs[i]) + o.eps); break;
        }
      }
    }
    for (int i = 0; i < N; i++)
      ck_assert_msg(fabs(w[i] - rw[i]) < 1e-5, "%s: w[%d] = %.9g, reference %.9g", kinds[k], i,
                    (double)w[i], rw[i]);
  }
}
END_TEST

/* The loops are compiled for AVX-512 and AVX2 too (psd_optim.c) and must
 * compute the same bits as the plain float rules element by element (no
 * FMA contraction, exact sqrt and division): over 1,037 elements (every
 * vector width's body and a tail), 4 steps of every kind with weight
 * decay, bit-for-bit against the rules written here one element at a time
 * (the reference loop's index is volatile: it is never vectorised). */
START_TEST(test_loops_bitwise_scalar) {
  static const char *const kinds[] = {"sgd", "momentum", "nesterov", "adam", "adagrad"};
  enum { N = 1037 };
  static float w[N], s[2 * N], g[N], rw[N], rs[2 * N];
  for (size_t k = 0; k < 5; k++) {
    psd_optim o = optim(kinds[k], 0.01f, 0.01f, 0);
    psd_optim_init_slots(&o, s, N);
    for (int i = 0; i < N; i++) {
      rw[i] = w[i] = (float)sin((double)i) * 2;
      rs[i] = rs[N + i] = 0;
    }
    for (uint64_t t = 1; t <= 4; t++) {
      for (int i = 0; i < N; i++) g[i] = (float)cos((double)(i * 7 + (int)t)) / 3;
      psd_optim_apply(&o, w, s, g, N, t);
      const float lr = o.lr, wd = o.weight_decay, mu = o.momentum, b1 = o.beta1,
                  b2 = o.beta2, eps = o.eps;
      const float lr_t = (float)(o.lr * sqrt(1.0 - pow(o.beta2, (double)t)) /
                                 (1.0 - pow(o.beta1, (double)t)));
      for (volatile int i = 0; i < N; i++) {
        float gi = g[i] + wd * rw[i];
        switch (k) {
        case 0: rw[i] -= lr * gi; break;
        case 1: rs[i] = mu * rs[i] + gi; rw[i] -= lr * rs[i]; break;
        case 2: rs[i] = mu * rs[i] + gi; rw[i] -= lr * (gi + mu * rs[i]); break;
        case 3:
          rs[i] = b1 * rs[i] + (1.0f - b1) * gi;
          rs[N + i] = b2 * rs[N + i] + (1.0f - b2) * gi * gi;
          rw[i] -= lr_t * rs[i] / (sqrtf(rs[N + i]) + eps);
          break;
        default: rs[i] += gi * gi; rw[i] -= lr * gi / (sqrtf(rs[i]) + eps); break;
        }
      }
    }
    for (int i = 0; i < N; i++)
      ck_assert_msg(memcmp(&w[i], &rw[i], sizeof w[i]) == 0, "%s: w[%d] = %.9g, scalar %.9g",
                    kinds[k], i, (double)w[i], (double)rw[i]);
    unsigned slots = psd_optim_slots(&o);
    ck_assert_msg(memcmp(s, rs, (size_t)slots * N * sizeof *s) == 0, "%s: state differs",
                  kinds[k]);
  }
}
END_TEST

/* psd_optim_predict's bounds hold: over random chunks and gradients of
 * magnitudes from 1e-3 to 1e36, for every kind (weight decay and lr decay
 * on), whenever it says an update is certain, every value after it is
 * finite and within the bounds it gave; and it says so for ordinary
 * training magnitudes, so the fast path is the common one. */
START_TEST(test_predict_bounds_hold) {
  static const char *const kinds[] = {"sgd", "momentum", "nesterov", "adam", "adagrad"};
  enum { N = 64 };
  uint64_t seed = 12345;
  for (size_t k = 0; k < 5; k++) {
    Ps__OptimizerSpec spec = PS__OPTIMIZER_SPEC__INIT;
    spec.kind = (char *)kinds[k];
    spec.lr = 0.5f;
    spec.weight_decay = 0.01f;
    spec.lr_decay = 0.9f;
    spec.lr_decay_steps = 3;
    psd_optim o;
    ps_errbuf eb;
    ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), 0);
    unsigned slots = psd_optim_slots(&o);
    int certain = 0, ordinary_certain = 0, ordinary = 0;
    for (int trial = 0; trial < 400; trial++) {
      float st[N * 3], g[N];
      double gscale = pow(10, -3 + (trial % 40)), wscale = pow(10, -2 + (trial / 40) * 4);
      for (int i = 0; i < N * (1 + (int)slots); i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(seed >> 11) / 9007199254740992.0 - 0.5;
        st[i] = (float)(u * wscale);
        if (i >= N && (k == 4 || i >= 2 * N)) st[i] = st[i] * st[i]; /* Adam's v, AdaGrad's G */
      }
      for (int i = 0; i < N; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        g[i] = (float)(((double)(seed >> 11) / 9007199254740992.0 - 0.5) * gscale);
      }
      psd_optim_bounds b, after, got;
      if (psd_optim_measure(&o, st, N, &b) < 0) continue;
      uint64_t step = 1 + (uint64_t)(trial % 7);
      int sure = psd_optim_predict(&o, &b, psd_optim_absmax(g, N), step, &after);
      int plain = gscale <= 1e3 && wscale <= 1e2;
      ordinary += plain;
      ordinary_certain += plain && sure;
      if (!sure) continue;
      certain++;
      psd_optim_apply(&o, st, st + N, g, N, step);
      ck_assert_msg(psd_optim_measure(&o, st, N, &got) == 0, "%s: certain update not finite",
                    kinds[k]);
      ck_assert_msg(got.w <= after.w * 1.0001f, "%s: |w| %g over its bound %g", kinds[k],
                    (double)got.w, (double)after.w);
      for (unsigned j = 0; j < slots; j++)
        ck_assert_msg(got.s[j] <= after.s[j] * 1.0001f, "%s: |slot %u| %g over its bound %g",
                      kinds[k], j, (double)got.s[j], (double)after.s[j]);
    }
    ck_assert_msg(certain > 0 && ordinary_certain == ordinary, "%s: %d of %d ordinary updates certain",
                  kinds[k], ordinary_certain, ordinary);
  }
}
END_TEST

Suite *psd_optim_suite(void) {
  Suite *s = suite_create("psd_optim");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_sgd);
  tcase_add_test(tc, test_lr_decay);
  tcase_add_test(tc, test_momentum);
  tcase_add_test(tc, test_nesterov);
  tcase_add_test(tc, test_adam);
  tcase_add_test(tc, test_adagrad);
  tcase_add_test(tc, test_bad_specs);
  tcase_add_test(tc, test_loops_match_reference);
  tcase_add_test(tc, test_loops_bitwise_scalar);
  tcase_add_test(tc, test_predict_bounds_hold);
  suite_add_tcase(s, tc);
  return s;
}
