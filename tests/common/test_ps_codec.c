/* Tests for ps_codec: round-trip bounds on random nonzero data, exact
 * encoded sizes, the error-feedback invariant, fp16 rounding and
 * saturation, and the validation of bad encoded input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_codec.h"
#include "ps_place.h"
#include "ps_test.h"

#define N 4099 /* not a multiple of 8: onebit's last byte is partial */

/* fill_random fills X with nonzero values in +-[0.01, 2) (never 0). */
static void fill_random(float *x, uint32_t n, uint64_t seed) {
  for (uint32_t i = 0; i < n; i++) {
    uint64_t r = ps_mix64(seed + i);
    float mag = 0.01f + (float)(r >> 40) / (float)(1u << 24) * 1.99f;
    x[i] = (r & 1) ? -mag : mag;
  }
}

START_TEST(test_sizes) {
  ck_assert_uint_eq(ps_codec_size(PS_CODEC_FP32, N, 0), 4 * N);
  ck_assert_uint_eq(ps_codec_size(PS_CODEC_FP16, N, 0), 2 * N);
  ck_assert_uint_eq(ps_codec_size(PS_CODEC_INT8, N, 0), 4 + N);
  ck_assert_uint_eq(ps_codec_size(PS_CODEC_ONEBIT, N, 0), 4 + (N + 7) / 8);
  ck_assert_uint_eq(ps_codec_size(PS_CODEC_TOPK, N, 0.01f), 8 * 41); /* ceil(40.99) */
  ck_assert_uint_eq(ps_codec_topk_k(10, 0.01f), 1);
  ck_assert_uint_eq(ps_codec_topk_k(10, 1.0f), 10);
  ck_assert_uint_eq(ps_codec_topk_k(0, 0.5f), 0);
}
END_TEST

/* Round trip of every codec: the error per element is within the codec's
 * bound, and the encoding has exactly ps_codec_size bytes (a guard byte
 * after it stays untouched). */
START_TEST(test_round_trip) {
  static float x[N], y[N];
  static uint8_t buf[4 * N + 16];
  fill_random(x, N, 42);
  float amax = 0;
  double l1 = 0;
  for (int i = 0; i < N; i++) {
    amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    l1 += fabsf(x[i]);
  }
  for (int id = 0; id < PS_CODEC_N; id++) {
    uint64_t sz = ps_codec_size(id, N, 0.01f);
    memset(buf, 0xA5, sizeof buf);
    ps_codec_encode(id, x, N, 0.01f, buf);
    ck_assert_uint_eq(buf[sz], 0xA5);
    ps_errbuf eb;
    ck_assert_int_eq(ps_codec_check(id, buf, sz, N, 0.01f, "t", &eb), 0);
    ps_codec_decode(id, buf, N, 0.01f, y);
    double maxerr = 0;
    for (int i = 0; i < N; i++) {
      double e = fabs((double)x[i] - y[i]);
      if (id == PS_CODEC_FP16) e /= fabs(x[i]); /* relative */
      maxerr = e > maxerr ? e : maxerr;
    }
    switch (id) {
      case PS_CODEC_FP32: ck_assert(maxerr == 0); break;
      case PS_CODEC_FP16: ck_assert(maxerr <= 0x1p-11 * 1.0001); break; /* half an ulp */
      case PS_CODEC_INT8: ck_assert(maxerr <= amax / 127 / 2 * 1.0001); break;
      case PS_CODEC_ONEBIT: {
        /* every element decodes to the mean magnitude with its sign */
        float s = (float)(l1 / N);
        for (int i = 0; i < N; i++) ck_assert(fabsf(y[i] - copysignf(s, x[i])) <= s * 1e-6f);
        break;
      }
      case PS_CODEC_TOPK: {
        /* the 41 kept are the largest: nothing dropped exceeds anything kept */
        float minkept = INFINITY, maxdrop = 0;
        int kept = 0;
        for (int i = 0; i < N; i++) {
          if (y[i] != 0) {
            ck_assert(y[i] == x[i]);
            kept++;
            minkept = fabsf(x[i]) < minkept ? fabsf(x[i]) : minkept;
          } else {
            maxdrop = fabsf(x[i]) > maxdrop ? fabsf(x[i]) : maxdrop;
          }
        }
        ck_assert_int_eq(kept, 41);
        ck_assert(maxdrop <= minkept);
        break;
      }
    }
  }
}
END_TEST

/* int8 of chunks of subnormals, where 127 / max|x| overflows (a fuzzer
 * found the conversion of infinity to int): each decodes within one
 * step s of its input, s == 0 gives zeros, every code in [-127, 127]. */
START_TEST(test_int8_subnormal) {
  static const float cases[][4] = {
      {0x1p-149f, -0x1p-149f, 0, 0x1p-149f},        /* s underflows to 0 */
      {0x1p-130f, -0x1.8p-131f, 0x1p-149f, -0x1p-130f},
      {0x1.fffffep-127f, -0x1p-127f, 0x1p-140f, 0},  /* max|x| just below FLT_MIN */
      {0x1p-100f, -0x1p-101f, 0x1p-120f, 0x1.7p-100f}};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    uint8_t buf[4 + 4];
    float y[4], s;
    ps_codec_encode(PS_CODEC_INT8, cases[c], 4, 0, buf);
    memcpy(&s, buf, 4);
    ps_errbuf eb;
    ck_assert_int_eq(ps_codec_check(PS_CODEC_INT8, buf, sizeof buf, 4, 0, "t", &eb), 0);
    ps_codec_decode(PS_CODEC_INT8, buf, 4, 0, y);
    for (int i = 0; i < 4; i++) {
      ck_assert_int_ge((int8_t)buf[4 + i], -127);
      if (s == 0) ck_assert(y[i] == 0);
      else
        ck_assert_msg(fabsf(y[i] - cases[c][i]) <= s, "case %zu element %d: %a for %a (s %a)", c,
                      i, (double)y[i], (double)cases[c][i], (double)s);
    }
  }
}
END_TEST

/* topk with ties at the threshold: exactly k kept, the lowest indices of
 * the tied ones, in increasing order. */
START_TEST(test_topk_ties) {
  static float x[N];
  static uint8_t buf[8 * N];
  for (int i = 0; i < N; i++) x[i] = (i % 2) ? -0.5f : 0.5f;
  x[100] = 3.0f, x[4000] = -2.0f;
  ps_codec_encode(PS_CODEC_TOPK, x, N, 0.01f, buf); /* k = 41 */
  uint32_t idx[41];
  memcpy(idx, buf, sizeof idx);
  ck_assert_uint_eq(idx[0], 0);
  for (int j = 1; j < 41; j++) ck_assert_uint_gt(idx[j], idx[j - 1]);
  /* 100 and 4000 are kept, and 39 of the ties: 0..38 (100 in between) */
  ck_assert_uint_eq(idx[38], 38);
  ck_assert_uint_eq(idx[39], 100);
  ck_assert_uint_eq(idx[40], 4000);
}
END_TEST

/* fill_gauss fills X with normal-like values (the sum of 4 uniforms, in
 * (-2, 2)), a different draw for every SEED. */
static void fill_gauss(float *x, uint32_t n, uint64_t seed) {
  for (uint32_t i = 0; i < n; i++) {
    uint64_t r = ps_mix64(seed * 0x9e3779b97f4a7c15ull + i);
    float v = -2.0f;
    for (int k = 0; k < 4; k++) v += (float)((r >> (16 * k)) & 0xffff) / 65536.0f;
    x[i] = v;
  }
}

/* topk_same encodes X (N) with the sampled threshold and with the exact
 * radix select: the bytes must be the same; returns the sampled path. */
static ps_codec_topk_path topk_same(const float *x, uint32_t n, float frac, const char *what) {
  static uint8_t a[8 * 70000], b[8 * 70000];
  uint64_t sz = ps_codec_size(PS_CODEC_TOPK, n, frac);
  ck_assert_uint_le(sz, sizeof a);
  memset(a, 0x5A, sizeof a), memset(b, 0xA5, sizeof b);
  ps_codec_topk_path p = ps_codec_topk_encode(x, n, frac, 0, a);
  ck_assert_int_eq(ps_codec_topk_encode(x, n, frac, 1, b), PS_TOPK_EXACT);
  ck_assert_msg(!memcmp(a, b, sz), "%s: the sampled topk (path %d) differs from the exact one",
                what, (int)p);
  ck_assert_uint_eq(a[sz], 0x5A); /* nothing written past the encoding */
  ps_errbuf eb;
  ck_assert_int_eq(ps_codec_check(PS_CODEC_TOPK, a, sz, n, frac, what, &eb), 0);
  return p;
}

/* The sampled top-k threshold gives the exact top-k's bytes on every path:
 * the threshold's candidates trimmed to k (the usual path), more than 2k
 * candidates (all magnitudes equal, or mostly zeros: exact select), fewer
 * than k (an unlucky sample: exact select), a chunk too small to sample;
 * and on chunks of many shapes and fractions, ties included. */
START_TEST(test_topk_sampled) {
  enum { n = 65536 };
  static float x[n + 7];
  unsigned seen[PS_TOPK_EXACT + 1] = {0};
  char what[64];
  /* random chunks: sizes around the bench's 65,536, fractions 0.1 % .. 10 % */
  static const uint32_t sizes[] = {65536, 65543, 40000, 20011};
  static const float fracs[] = {0.01f, 0.001f, 0.05f, 0.1f};
  for (int s = 0; s < 4; s++)
    for (int f = 0; f < 4; f++)
      for (int seed = 0; seed < 4; seed++) {
        fill_gauss(x, sizes[s], (uint64_t)(s * 100 + f * 10 + seed));
        snprintf(what, sizeof what, "n %u frac %g seed %d", sizes[s], (double)fracs[f], seed);
        seen[topk_same(x, sizes[s], fracs[f], what)]++;
      }
  ck_assert_uint_gt(seen[PS_TOPK_SAMPLED], 0);
  ck_assert_uint_gt(seen[PS_TOPK_SMALL], 0); /* 20,011 at 0.1 % needs a sample above n/4 */
  /* ties: magnitudes from 16 levels only, so the k-th is tied many times */
  fill_gauss(x, n, 77);
  for (uint32_t i = 0; i < n; i++) x[i] = roundf(x[i] * 4) / 4;
  ck_assert_int_eq(topk_same(x, n, 0.01f, "16 levels"), PS_TOPK_OVER);
  for (uint32_t i = 0; i < n; i++) x[i] = (float)(i % 500) * (i % 2 ? -1e-3f : 1e-3f);
  topk_same(x, n, 0.01f, "500 levels");
  /* all equal: every element is a candidate */
  for (uint32_t i = 0; i < n; i++) x[i] = i % 3 ? 0.5f : -0.5f;
  ck_assert_int_eq(topk_same(x, n, 0.01f, "all equal"), PS_TOPK_OVER);
  /* mostly zeros (a sparse gradient): the threshold is 0 */
  memset(x, 0, sizeof x);
  for (uint32_t i = 0; i < n; i += 1000) x[i] = (float)i;
  ck_assert_int_eq(topk_same(x, n, 0.01f, "mostly zeros"), PS_TOPK_OVER);
  /* an unlucky sample: this draw's sample overestimates the threshold
   * (found by trying seeds; if the sampling changes, find another) */
  fill_gauss(x, n, 2595);
  ck_assert_int_eq(topk_same(x, n, 0.01f, "seed 2595"), PS_TOPK_UNDER);
  /* a random draw that overshoots 2k (likewise) */
  fill_gauss(x, n, 240);
  ck_assert_int_eq(topk_same(x, n, 0.01f, "seed 240"), PS_TOPK_OVER);
  /* small chunks, and the ones the other tests use */
  fill_gauss(x, 4099, 5);
  ck_assert_int_eq(topk_same(x, 4099, 0.01f, "4099"), PS_TOPK_SMALL);
  ck_assert_int_eq(topk_same(x, 1, 0.01f, "1"), PS_TOPK_SMALL);
  ck_assert_int_eq(topk_same(x, 64, 1.0f, "64 all"), PS_TOPK_SMALL);
}
END_TEST

START_TEST(test_fp16) {
  ck_assert_uint_eq(ps_codec_f2h(1.0f), 0x3c00);
  ck_assert_uint_eq(ps_codec_f2h(-2.0f), 0xc000);
  ck_assert_uint_eq(ps_codec_f2h(65504.0f), 0x7bff);
  ck_assert_uint_eq(ps_codec_f2h(1e9f), 0x7bff);   /* saturates, never Inf */
  ck_assert_uint_eq(ps_codec_f2h(-1e30f), 0xfbff);
  ck_assert_uint_eq(ps_codec_f2h(INFINITY), 0x7bff);
  ck_assert_uint_eq(ps_codec_f2h(0x1p-24f), 0x0001); /* smallest subnormal */
  ck_assert_uint_eq(ps_codec_f2h(0x1p-14f), 0x0400); /* smallest normal */
  /* ties to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 */
  ck_assert_uint_eq(ps_codec_f2h(1.0f + 0x1p-11f), 0x3c00);
  ck_assert_uint_eq(ps_codec_f2h(1.0f + 3 * 0x1p-11f), 0x3c02);
  for (uint32_t h = 0; h < 0x7c00; h++) /* every finite half round-trips */
    ck_assert_uint_eq(ps_codec_f2h(ps_codec_h2f((uint16_t)h)), h);
  /* the vector path (F16C where the CPU has it) encodes as ps_codec_f2h */
  static float v[N];
  static uint16_t h[N];
  fill_random(v, N, 3);
  float special[] = {1e9f, -1e9f, 65519.0f, 65520.0f, 0x1p-25f, 0x1.8p-24f, -0.0f, 1.0f + 0x1p-11f,
                     NAN, INFINITY, -INFINITY, 0x1p-20f};
  for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) v[i * 7] = special[i];
  for (int i = 0; i < N; i += 3) v[i] *= 1e-4f; /* many subnormal halves */
  ps_codec_encode(PS_CODEC_FP16, v, N, 0, h);
  for (int i = 0; i < N; i++)
    ck_assert_msg(h[i] == ps_codec_f2h(v[i]) || (isnan(v[i]) && (h[i] & 0x7fff) > 0x7c00),
                  "element %d (%g): %04x, want %04x", i, (double)v[i], h[i], ps_codec_f2h(v[i]));
}
END_TEST

/* Error feedback: after every step, the sum of what was sent (decoded)
 * plus the residual equals the sum of the gradients, to rounding. */
START_TEST(test_error_feedback) {
  enum { n = 1000, steps = 20 };
  static float g[n], res[n], sent[n], gsum[n];
  static uint8_t buf[4 * n];
  for (int id = 1; id < PS_CODEC_N; id++) {
    memset(res, 0, sizeof res);
    memset(sent, 0, sizeof sent);
    memset(gsum, 0, sizeof gsum);
    for (int t = 0; t < steps; t++) {
      fill_random(g, n, 1000 + (uint64_t)t * n);
      for (int i = 0; i < n; i++) gsum[i] += g[i];
      ps_codec_encode_ef(id, g, n, 0.05f, 0, res, buf);
      ps_codec_decode_acc(id, buf, n, 0.05f, 1.0f, sent);
      for (int i = 0; i < n; i++)
        ck_assert_msg(fabsf(sent[i] + res[i] - gsum[i]) <= 1e-4f * (1 + fabsf(gsum[i])),
                      "%s step %d element %d: %g + %g != %g", ps_codec_name(id), t, i,
                      (double)sent[i], (double)res[i], (double)gsum[i]);
    }
  }
}
END_TEST

/* Error feedback under a clip norm: every codec's decoded chunk stays
 * within the clip (fp16 within its rounding, under the shard's 1e-3
 * room) although gradient plus residual is far over it, and the sum of
 * what was sent plus the residual is still the sum of the gradients. */
START_TEST(test_error_feedback_clip) {
  enum { n = 1000, steps = 20 };
  static float g[n], res[n], sent[n], gsum[n], one[n];
  static uint8_t buf[4 * n];
  for (int id = 1; id < PS_CODEC_N; id++) {
    memset(res, 0, sizeof res);
    memset(sent, 0, sizeof sent);
    memset(gsum, 0, sizeof gsum);
    double clip = 0;
    for (int t = 0; t < steps; t++) {
      fill_random(g, n, 2000 + (uint64_t)t * n);
      if (t == 0) { /* the gradients come clipped: each step's norm is the clip */
        for (int i = 0; i < n; i++) clip += (double)g[i] * g[i];
        clip = sqrt(clip);
      }
      double gn = 0;
      for (int i = 0; i < n; i++) gn += (double)g[i] * g[i];
      for (int i = 0; i < n; i++) g[i] *= (float)(clip / sqrt(gn));
      for (int i = 0; i < n; i++) gsum[i] += g[i];
      ps_codec_encode_ef(id, g, n, 0.05f, (float)clip, res, buf);
      ps_codec_decode(id, buf, n, 0.05f, one);
      double norm = 0;
      for (int i = 0; i < n; i++) norm += (double)one[i] * one[i], sent[i] += one[i];
      ck_assert_msg(sqrt(norm) <= clip * (1 + 1e-3), "%s step %d: decoded norm %g over clip %g",
                    ps_codec_name(id), t, sqrt(norm), clip);
      for (int i = 0; i < n; i++)
        ck_assert_msg(fabsf(sent[i] + res[i] - gsum[i]) <= 1e-4f * (1 + fabsf(gsum[i])),
                      "%s step %d element %d: %g + %g != %g", ps_codec_name(id), t, i,
                      (double)sent[i], (double)res[i], (double)gsum[i]);
    }
  }
}
END_TEST

START_TEST(test_bad_input) {
  static float x[64];
  static uint8_t buf[512];
  ps_errbuf eb;
  fill_random(x, 64, 7);
  /* length mismatch */
  ps_codec_encode(PS_CODEC_INT8, x, 64, 0, buf);
  ck_assert_int_eq(ps_codec_check(PS_CODEC_INT8, buf, 67, 64, 0, "chunk 0", &eb), PS_EINVAL);
  ck_assert_ptr_nonnull(strstr(eb.msg, "67 bytes of int8"));
  /* unknown codec */
  ck_assert_int_eq(ps_codec_check((ps_codec_id)9, buf, 68, 64, 0, "chunk 0", &eb), PS_EINVAL);
  ck_assert_ptr_nonnull(strstr(eb.msg, "unknown codec 9"));
  ps_codec_id id;
  ck_assert_int_eq(ps_codec_parse("fp8", "codec", &id, &eb), PS_EINVAL);
  ck_assert_ptr_nonnull(strstr(eb.msg, "unknown codec 'fp8'"));
  ck_assert_int_eq(ps_codec_parse("", "codec", &id, &eb), 0);
  ck_assert_int_eq(id, PS_CODEC_FP32);
  /* NaN / Inf / negative scale */
  float bad[] = {NAN, INFINITY, -1.0f};
  for (int b = 0; b < 3; b++) {
    memcpy(buf, &bad[b], 4);
    ck_assert_int_eq(ps_codec_check(PS_CODEC_INT8, buf, 68, 64, 0, "c", &eb), PS_EINVAL);
    ck_assert_ptr_nonnull(strstr(eb.msg, "scale"));
    ck_assert_int_eq(ps_codec_check(PS_CODEC_ONEBIT, buf, 12, 64, 0, "c", &eb), PS_EINVAL);
  }
  /* topk: out of range, repeated */
  ps_codec_encode(PS_CODEC_TOPK, x, 64, 0.1f, buf); /* k = 7 */
  ck_assert_int_eq(ps_codec_check(PS_CODEC_TOPK, buf, 56, 64, 0.1f, "c", &eb), 0);
  uint32_t idx = 64;
  uint8_t save[4];
  memcpy(save, buf + 8, 4);
  memcpy(buf + 8, &idx, 4);
  ck_assert_int_eq(ps_codec_check(PS_CODEC_TOPK, buf, 56, 64, 0.1f, "c", &eb), PS_EINVAL);
  ck_assert_ptr_nonnull(strstr(eb.msg, "out of range"));
  memcpy(buf + 8, buf + 4, 4); /* index 2 repeats index 1 */
  ck_assert_int_eq(ps_codec_check(PS_CODEC_TOPK, buf, 56, 64, 0.1f, "c", &eb), PS_EINVAL);
  ck_assert_ptr_nonnull(strstr(eb.msg, "repeated"));
  memcpy(buf + 8, save, 4);
  ck_assert_int_eq(ps_codec_check(PS_CODEC_TOPK, buf, 56, 64, 0.1f, "c", &eb), 0);
}
END_TEST

Suite *ps_codec_suite(void) {
  Suite *s = suite_create("ps_codec");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_sizes);
  tcase_add_test(tc, test_round_trip);
  tcase_add_test(tc, test_int8_subnormal);
  tcase_add_test(tc, test_topk_ties);
  tcase_add_test(tc, test_topk_sampled);
  tcase_add_test(tc, test_fp16);
  tcase_add_test(tc, test_error_feedback);
  tcase_add_test(tc, test_error_feedback_clip);
  tcase_add_test(tc, test_bad_input);
  suite_add_tcase(s, tc);
  return s;
}
