/* ps_codec: the codec table (see ps_codec.h). */
#include "ps_codec.h"

#include <math.h>
#include <string.h>

#include "ps_place.h" /* ps_mix64 */

/* ---- fp16 ------------------------------------------------------------------- */

/* ps_codec_f2h converts F to binary16, rounding to nearest even; finite
 * values beyond the largest half (65504) saturate to it, NaN stays NaN. */
uint16_t ps_codec_f2h(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;            /* NaN */
  if (ax >= 0x477ff000u) return sign | 0x7bffu;           /* rounds past 65504: saturate */
  if (ax < 0x38800000u) {                                 /* below 2^-14: a subnormal half */
    float a;
    memcpy(&a, &ax, 4);
    return sign | (uint16_t)rintf(a * 0x1p24f);           /* rintf: nearest even; 1024 is 2^-14 */
  }
  uint32_t r = ax + 0x0fffu + ((ax >> 13) & 1u);          /* nearest even on the 13 dropped bits */
  return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

/* ps_codec_h2f converts binary16 H to float exactly. */
float ps_codec_h2f(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
  if (e == 0) {
    float f = (float)m * 0x1p-24f;
    return sign ? -f : f;
  }
  x = e == 31 ? sign | 0x7f800000u | (m << 13) : sign | ((e + 112) << 23) | (m << 13);
  float f;
  memcpy(&f, &x, 4);
  return f;
}

/* ---- the codecs ------------------------------------------------------------- */

typedef struct ps_codec_ops {
  const char *name;
  uint64_t (*size)(uint32_t n, float topk);
  void (*encode)(const float *x, uint32_t n, float topk, uint8_t *out);
  int (*check)(const uint8_t *in, uint32_t n, float topk, const char *what, ps_errbuf *eb);
  void (*decode_acc)(const uint8_t *in, uint32_t n, float topk, float alpha, float *out);
} ps_codec_ops;

static float get_f32(const uint8_t *p) { float f; memcpy(&f, p, 4); return f; }
static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* codec_check_scale: a scale must be finite and not negative. */
static int codec_check_scale(const char *codec, const uint8_t *in, const char *what,
                             ps_errbuf *eb) {
  float s = get_f32(in);
  if (!isfinite(s) || s < 0)
    return ps_errf(eb, PS_EINVAL, "%s: %s scale %g is not a finite non-negative number", what,
                   codec, (double)s);
  return 0;
}

static int check_none(const uint8_t *in, uint32_t n, float topk, const char *what, ps_errbuf *eb) {
  (void)in, (void)n, (void)topk, (void)what, (void)eb;
  return 0;
}

/* fp32 */
static uint64_t fp32_size(uint32_t n, float topk) { (void)topk; return (uint64_t)n * 4; }
static void fp32_encode(const float *x, uint32_t n, float topk, uint8_t *out) {
  (void)topk;
  memcpy(out, x, (size_t)n * 4);
}
static void fp32_decode_acc(const uint8_t *in, uint32_t n, float topk, float alpha, float *out) {
  (void)topk;
  for (uint32_t i = 0; i < n; i++) out[i] += alpha * get_f32(in + 4 * (size_t)i);
}

/* fp16: with the CPU's F16C conversions where it has them (the same
 * results: both round to nearest even; a value is clamped to +-65504
 * first, which is what saturation means, and NaN stays NaN). */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define PS_CODEC_F16C 1
__attribute__((target("avx,f16c"))) static void fp16_encode_f16c(const float *x, uint32_t n,
                                                                   uint8_t *out) {
  const __m256 lim = _mm256_set1_ps(65504.0f), nlim = _mm256_set1_ps(-65504.0f);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x8 = _mm256_loadu_ps(x + i);
    __m256 v = _mm256_max_ps(_mm256_min_ps(x8, lim), nlim);
    v = _mm256_blendv_ps(v, x8, _mm256_cmp_ps(x8, x8, _CMP_UNORD_Q)); /* min/max clamp NaN: undo */
    _mm_storeu_si128((__m128i *)(out + 2 * (size_t)i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; i++) {
    uint16_t h = ps_codec_f2h(x[i]);
    memcpy(out + 2 * (size_t)i, &h, 2);
  }
}
__attribute__((target("avx,f16c"))) static void fp16_decode_f16c(const uint8_t *in, uint32_t n,
                                                                   float alpha, float *out) {
  const __m256 a = _mm256_set1_ps(alpha);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + 2 * (size_t)i)));
    _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_mul_ps(a, v)));
  }
  for (; i < n; i++) {
    uint16_t h;
    memcpy(&h, in + 2 * (size_t)i, 2);
    out[i] += alpha * ps_codec_h2f(h);
  }
}
/* onebit_bits_avx writes the sign bits of X (N, a multiple of 8) to BITS,
 * 8 per byte (bit k of byte j: the sign of X[8j + k]), as onebit_encode's
 * scalar loop does. */
__attribute__((target("avx"))) static void onebit_bits_avx(const float *x, uint32_t n,
                                                          uint8_t *bits) {
  for (uint32_t i = 0; i < n; i += 8) bits[i / 8] = (uint8_t)_mm256_movemask_ps(_mm256_loadu_ps(x + i));
}
/* onebit_acc_avx is onebit_decode_acc's main loop (N a multiple of 8):
 * OUT[8j + k] += S x SIGN[BITS[j]][k], the same operations 8 at a time. */
__attribute__((target("avx"))) static void onebit_acc_avx(const uint8_t *bits, uint32_t n, float s,
                                                         const float (*sign)[8], float *out) {
  const __m256 sv = _mm256_set1_ps(s);
  for (uint32_t i = 0; i < n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i),
                                            _mm256_mul_ps(sv, _mm256_loadu_ps(sign[bits[i / 8]]))));
}
static int codec_have_f16c(void) {
  static int have = -1; /* racing first callers store the same answer */
  int h = __atomic_load_n(&have, __ATOMIC_RELAXED);
  if (h < 0) {
    /* CPUID.1:ECX bits 27 (OSXSAVE), 28 (AVX), 29 (F16C), and the OS saving
     * the AVX registers (XCR0 bits 1-2); clang 14 has no "f16c" for
     * __builtin_cpu_supports. */
    unsigned a, b, c, d;
    h = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && ((c >> 27) & 7u) == 7u) {
      unsigned lo, hi;
      __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      h = (lo & 6u) == 6u;
    }
    __atomic_store_n(&have, h, __ATOMIC_RELAXED);
  }
  return h;
}
#endif

static uint64_t fp16_size(uint32_t n, float topk) { (void)topk; return (uint64_t)n * 2; }
static void fp16_encode(const float *x, uint32_t n, float topk, uint8_t *out) {
  (void)topk;
#ifdef PS_CODEC_F16C
  if (codec_have_f16c()) {
    fp16_encode_f16c(x, n, out);
    return;
  }
#endif
  for (uint32_t i = 0; i < n; i++) {
    uint16_t h = ps_codec_f2h(x[i]);
    memcpy(out + 2 * (size_t)i, &h, 2);
  }
}
static void fp16_decode_acc(const uint8_t *in, uint32_t n, float topk, float alpha, float *out) {
  (void)topk;
#ifdef PS_CODEC_F16C
  if (codec_have_f16c()) {
    fp16_decode_f16c(in, n, alpha, out);
    return;
  }
#endif
  for (uint32_t i = 0; i < n; i++) {
    uint16_t h;
    memcpy(&h, in + 2 * (size_t)i, 2);
    out[i] += alpha * ps_codec_h2f(h);
  }
}

/* codec_absmax_bits: ps_absmax_bits's loop, compiled for AVX2 too
 * (static: clang 14 names an exported target_clones function's symbols
 * so that other files cannot link to it). */
__attribute__((target_clones("avx2", "default")))
static uint32_t codec_absmax_bits(const float *x, size_t n) {
  uint32_t top = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], 4);
    u &= 0x7fffffffu;
    top = u > top ? u : top;
  }
  return top;
}

/* ps_absmax_bits: see ps_codec.h. */
uint32_t ps_absmax_bits(const float *x, size_t n) { return codec_absmax_bits(x, n); }

/* absmax of N finite floats */
static float codec_absmax(const float *x, uint32_t n) {
  uint32_t m = ps_absmax_bits(x, n);
  float f;
  memcpy(&f, &m, 4);
  return f;
}

/* 1.5 * 2^23: adding and subtracting it rounds a float of magnitude
 * below 2^22 to an integer, to nearest even (the default rounding mode;
 * no -ffast-math here, so the compiler keeps both operations). */
#define CODEC_RNE_MAGIC 0x1.8p23f

/* int8 */
static uint64_t int8_size(uint32_t n, float topk) { (void)topk; return 4 + (uint64_t)n; }
static void int8_encode(const float *restrict x, uint32_t n, float topk, uint8_t *restrict out) {
  (void)topk;
  float m = codec_absmax(x, n), s = m / 127.0f, inv = m > 0 ? 127.0f / m : 0;
  memcpy(out, &s, 4);
  int8_t *restrict q = (int8_t *)(out + 4);
  if (inv <= 0x1p100f) {
    /* |x * inv| <= 127 (plus an ulp, which rounds to 127): no clamp needed */
    for (uint32_t i = 0; i < n; i++)
      q[i] = (int8_t)(int)((x[i] * inv + CODEC_RNE_MAGIC) - CODEC_RNE_MAGIC);
    return;
  }
  /* a chunk of subnormals: 127 / m overflows to infinity (or nearly) and
   * s lost bits, so each x / s is clamped to [-127, 127] (s == 0: all 0) */
  for (uint32_t i = 0; i < n; i++) {
    float y = s > 0 ? x[i] / s : 0;
    y = y > 127.0f ? 127.0f : y < -127.0f ? -127.0f : y;
    q[i] = (int8_t)(int)((y + CODEC_RNE_MAGIC) - CODEC_RNE_MAGIC);
  }
}
static int int8_check(const uint8_t *in, uint32_t n, float topk, const char *what, ps_errbuf *eb) {
  (void)n, (void)topk;
  return codec_check_scale("int8", in, what, eb);
}
static void int8_decode_acc(const uint8_t *restrict in, uint32_t n, float topk, float alpha,
                            float *restrict out) {
  (void)topk;
  float s = get_f32(in) * alpha;
  const int8_t *restrict q = (const int8_t *)(in + 4);
  for (uint32_t i = 0; i < n; i++) out[i] += (float)q[i] * s;
}

/* onebit */
static uint64_t onebit_size(uint32_t n, float topk) { (void)topk; return 4 + ((uint64_t)n + 7) / 8; }
static void onebit_encode(const float *restrict x, uint32_t n, float topk, uint8_t *restrict out) {
  (void)topk;
  /* mean |x|: 8 float lanes (vectorized) per block of 256, added in double */
  double sum = 0;
  uint32_t i = 0;
  for (; i + 256 <= n; i += 256) {
    float lane[8] = {0};
    for (uint32_t j = 0; j < 256; j += 8)
      for (uint32_t k = 0; k < 8; k++) lane[k] += fabsf(x[i + j + k]);
    for (uint32_t k = 0; k < 8; k++) sum += lane[k];
  }
  for (; i < n; i++) sum += fabsf(x[i]);
  float s = n ? (float)(sum / n) : 0;
  memcpy(out, &s, 4);
  uint8_t *restrict bits = out + 4;
  i = 0;
#ifdef PS_CODEC_F16C
  if (codec_have_f16c()) { /* AVX with the OS saving its registers */
    i = n & ~7u;
    onebit_bits_avx(x, i, bits);
  }
#endif
  for (; i + 8 <= n; i += 8) {
    uint32_t byte = 0;
    for (uint32_t k = 0; k < 8; k++) {
      uint32_t b;
      memcpy(&b, &x[i + k], 4);
      byte |= (b >> 31) << k;
    }
    bits[i / 8] = (uint8_t)byte;
  }
  if (i < n) bits[i / 8] = 0;
  for (; i < n; i++)
    if (signbit(x[i])) bits[i / 8] |= (uint8_t)(1u << (i % 8));
}
static int onebit_check(const uint8_t *in, uint32_t n, float topk, const char *what, ps_errbuf *eb) {
  (void)n, (void)topk;
  return codec_check_scale("onebit", in, what, eb);
}
static void onebit_decode_acc(const uint8_t *restrict in, uint32_t n, float topk, float alpha,
                              float *restrict out) {
  (void)topk;
  static float sign[256][8]; /* sign[byte][k]: -1 when bit k of byte is set, else 1 */
  static int ready;
  if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) { /* racing fillers write the same values */
    for (int v = 0; v < 256; v++)
      for (int k = 0; k < 8; k++) sign[v][k] = (v >> k) & 1 ? -1.0f : 1.0f;
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
  }
  float s = get_f32(in) * alpha;
  const uint8_t *restrict bits = in + 4;
  uint32_t i = 0;
#ifdef PS_CODEC_F16C
  if (codec_have_f16c()) { /* AVX with the OS saving its registers */
    i = n & ~7u;
    onebit_acc_avx(bits, i, s, (const float(*)[8])sign, out);
  }
#endif
  for (; i + 8 <= n; i += 8) {
    const float *sg = sign[bits[i / 8]];
    for (uint32_t k = 0; k < 8; k++) out[i + k] += s * sg[k];
  }
  for (; i < n; i++) out[i] += ((bits[i / 8] >> (i % 8)) & 1u) ? -s : s;
}

/* topk */
uint32_t ps_codec_topk_k(uint32_t n, float frac) {
  if (n == 0) return 0;
  if (!(frac > 0 && frac <= 1)) frac = PS_CODEC_TOPK_DEFAULT;
  double k = ceil((double)n * frac);
  return k < 1 ? 1 : k > n ? n : (uint32_t)k;
}
static uint64_t topk_size(uint32_t n, float topk) { return (uint64_t)ps_codec_topk_k(n, topk) * 8; }

static uint32_t abs_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  return b & 0x7fffffffu; /* orders non-negative floats as integers */
}

/* The K largest magnitudes of a set of elements, found exactly without
 * heap memory by a radix select over their 31 magnitude bits (at most
 * three passes of 11, 11 and 9 bits, fewer when a bucket holds exactly the
 * elements still wanted).  Kept: the elements whose magnitude bits under
 * MASK exceed PREFIX, and the first NEED of those equal to it (ties at the
 * threshold go to the lowest indices).  An element's magnitude bits are at
 * least PREFIX when it is kept (PREFIX has zeros below MASK). */
typedef struct topk_cut {
  uint32_t prefix, mask, need;
} topk_cut;

/* topk_radix: the cut of the K largest of the N elements of X, or of the
 * elements X[SEL[j]] for j < N when SEL is set (SEL unaligned: the
 * candidates are kept in the output buffer). */
static topk_cut topk_radix(const float *x, const uint8_t *sel, uint32_t n, uint32_t k) {
  static const int shift[3] = {20, 9, 0}, width[3] = {11, 11, 9};
  topk_cut c = {0, 0, k};
  uint32_t count[2048];
  for (int p = 0; p < 3 && k; p++) {
    uint32_t nb = 1u << width[p], bm = nb - 1;
    memset(count, 0, nb * sizeof count[0]);
    if (sel) {
      for (uint32_t j = 0; j < n; j++) {
        uint32_t b = abs_bits(x[get_u32(sel + 4 * (size_t)j)]);
        if ((b & c.mask) == c.prefix) count[(b >> shift[p]) & bm]++;
      }
    } else {
      for (uint32_t i = 0; i < n; i++) {
        uint32_t b = abs_bits(x[i]);
        if ((b & c.mask) == c.prefix) count[(b >> shift[p]) & bm]++;
      }
    }
    uint32_t d = bm;
    for (; d > 0 && count[d] < c.need; d--) c.need -= count[d];
    c.prefix |= d << shift[p];
    c.mask |= bm << shift[p];
    if (count[d] == c.need) break; /* the whole bucket is kept */
  }
  return c;
}

/* topk_kept: whether magnitude bits B are kept under cut C (consumes one
 * of C's ties when B is one). */
static int topk_kept(uint32_t b, topk_cut *c) {
  b &= c->mask;
  return b > c->prefix || (b == c->prefix && c->need && c->need--);
}

/* topk_exact: the K largest of X by a radix select over the whole chunk
 * (4 passes over it); indices come out sorted. */
static void topk_exact(const float *x, uint32_t n, uint32_t k, uint8_t *out) {
  topk_cut c = topk_radix(x, NULL, n, k);
  uint8_t *idx = out, *val = out + 4 * (size_t)k;
  uint32_t j = 0;
  for (uint32_t i = 0; i < n && j < k; i++)
    if (topk_kept(abs_bits(x[i]), &c)) {
      memcpy(idx + 4 * (size_t)j, &i, 4);
      memcpy(val + 4 * (size_t)j, &x[i], 4);
      j++;
    }
}

/* The sampled threshold (DGC's, made exact): the magnitude that a sample
 * of the chunk puts at TOPK_SAMPLE_OVER times the fraction kept, so that
 * about 1.5 k elements pass it; one pass over the chunk collects those
 * that do (as candidates, in the output buffer: room for 2 k indices);
 * a radix select over the candidates trims them to exactly the k largest.
 * Every element at least as large as the k-th largest is a candidate, so
 * the result is the exact one, byte for byte.  When fewer than k or more
 * than 2 k pass (a bad estimate, or many equal magnitudes), the exact
 * select over the whole chunk runs instead.  The sample is stratified:
 * one element from each of m equal strata, at an offset that a hash of
 * the stratum picks (deterministic, and blind to periodic structure such
 * as a matrix's rows).  A chunk that would need a sample above a quarter
 * of its elements (or above TOPK_SAMPLE_MAX) is selected exactly. */
#define TOPK_SAMPLE_RANK 64   /* sample elements expected above the threshold */
#define TOPK_SAMPLE_OVER 1.5  /* candidates expected, in units of k */
#define TOPK_SAMPLE_MAX 8192  /* sample elements at most (32 KiB of stack) */

/* topk_candidates writes to OUT the indices of the elements of X (N)
 * whose magnitude bits are at least THR, in increasing order, and returns
 * how many, or stops at CAP + 1.  Blocks of 16 with none (most of them)
 * are skipped after one vector comparison (GCC's vector extensions; the
 * AVX2 clone does a block in two instructions). */
typedef int32_t topk_v8 __attribute__((vector_size(32)));
__attribute__((target_clones("avx2", "default")))
static uint32_t topk_candidates(const float *x, uint32_t n, uint32_t thr, uint32_t cap,
                                uint8_t *out) {
  const topk_v8 mag = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                       0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
  const int32_t t1 = (int32_t)thr - 1; /* thr <= 0x7f800000: no overflow */
  uint32_t c = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    topk_v8 a, b;
    memcpy(&a, x + i, sizeof a);
    memcpy(&b, x + i + 8, sizeof b);
    a = (a & mag) > t1, b = (b & mag) > t1; /* -1 where a candidate */
    topk_v8 any = a | b;
    uint64_t h[4];
    memcpy(h, &any, sizeof h);
    if (!(h[0] | h[1] | h[2] | h[3])) continue;
    uint32_t bits = 0;
    for (int j = 0; j < 8; j++) bits |= ((uint32_t)a[j] & 1u) << j | ((uint32_t)b[j] & 1u) << (8 + j);
    for (; bits; bits &= bits - 1) {
      if (c == cap) return cap + 1;
      uint32_t j = i + (uint32_t)__builtin_ctz(bits);
      memcpy(out + 4 * (size_t)c++, &j, 4);
    }
  }
  for (; i < n; i++)
    if (abs_bits(x[i]) >= thr) {
      if (c == cap) return cap + 1;
      memcpy(out + 4 * (size_t)c++, &i, 4);
    }
  return c;
}

static ps_codec_topk_path topk_encode_path(const float *x, uint32_t n, float topk, int exact,
                                           uint8_t *out) {
  uint32_t k = ps_codec_topk_k(n, topk);
  double q = TOPK_SAMPLE_OVER * k / (n ? n : 1);
  double mw = ceil(TOPK_SAMPLE_RANK / q);
  if (exact || q >= 0.5 || mw > TOPK_SAMPLE_MAX || mw * 4 > n) {
    topk_exact(x, n, k, out);
    return exact ? PS_TOPK_EXACT : PS_TOPK_SMALL;
  }
  uint32_t m = (uint32_t)mw, r = (uint32_t)ceil(m * q);
  float sample[TOPK_SAMPLE_MAX];
  uint64_t sw = n / m; /* strata of sw elements (the last n % m are not sampled) */
  for (uint32_t s = 0; s < m; s++)
    sample[s] = x[s * sw + (((ps_mix64(s) >> 32) * sw) >> 32)];
  uint32_t thr = topk_radix(sample, NULL, m, r).prefix;
  uint32_t c = topk_candidates(x, n, thr, 2 * k, out);
  if (c > 2 * k) {
    topk_exact(x, n, k, out);
    return PS_TOPK_OVER;
  }
  if (c < k) {
    topk_exact(x, n, k, out);
    return PS_TOPK_UNDER;
  }
  if (c > k) {
    /* trim to the k largest: compact the indices in place (a kept one
     * moves down, never over one not yet read); the values go after
     * (over candidate slots k.. once all were read) */
    topk_cut cut = topk_radix(x, out, c, k);
    uint32_t w = 0;
    for (uint32_t j = 0; j < c && w < k; j++) {
      uint32_t i = get_u32(out + 4 * (size_t)j);
      if (topk_kept(abs_bits(x[i]), &cut)) memcpy(out + 4 * (size_t)w++, &i, 4);
    }
  }
  for (uint32_t w = 0; w < k; w++)
    memcpy(out + 4 * ((size_t)k + w), &x[get_u32(out + 4 * (size_t)w)], 4);
  return PS_TOPK_SAMPLED;
}

static void topk_encode(const float *x, uint32_t n, float topk, uint8_t *out) {
  topk_encode_path(x, n, topk, 0, out);
}

ps_codec_topk_path ps_codec_topk_encode(const float *x, uint32_t n, float topk, int exact,
                                        void *out) {
  return topk_encode_path(x, n, topk, exact, out);
}
static int topk_check(const uint8_t *in, uint32_t n, float topk, const char *what, ps_errbuf *eb) {
  uint32_t k = ps_codec_topk_k(n, topk);
  for (uint32_t j = 0; j < k; j++) {
    uint32_t i = get_u32(in + 4 * (size_t)j);
    if (i >= n)
      return ps_errf(eb, PS_EINVAL, "%s: topk index %u out of range (%u elements)", what, i, n);
    if (j && i <= get_u32(in + 4 * (size_t)(j - 1)))
      return ps_errf(eb, PS_EINVAL, "%s: topk index %u repeated or out of order", what, i);
  }
  return 0;
}
static void topk_decode_acc(const uint8_t *in, uint32_t n, float topk, float alpha, float *out) {
  uint32_t k = ps_codec_topk_k(n, topk);
  const uint8_t *val = in + 4 * (size_t)k;
  for (uint32_t j = 0; j < k; j++) out[get_u32(in + 4 * (size_t)j)] += alpha * get_f32(val + 4 * (size_t)j);
}

static const ps_codec_ops ps_codecs[PS_CODEC_N] = {
    [PS_CODEC_FP32] = {"fp32", fp32_size, fp32_encode, check_none, fp32_decode_acc},
    [PS_CODEC_FP16] = {"fp16", fp16_size, fp16_encode, check_none, fp16_decode_acc},
    [PS_CODEC_INT8] = {"int8", int8_size, int8_encode, int8_check, int8_decode_acc},
    [PS_CODEC_ONEBIT] = {"onebit", onebit_size, onebit_encode, onebit_check, onebit_decode_acc},
    [PS_CODEC_TOPK] = {"topk", topk_size, topk_encode, topk_check, topk_decode_acc},
};

/* ---- public ------------------------------------------------------------------- */

const char *ps_codec_name(ps_codec_id id) {
  return (unsigned)id < PS_CODEC_N ? ps_codecs[id].name : "unknown";
}

int ps_codec_valid(uint32_t v) { return v < PS_CODEC_N; }

int ps_codec_parse(const char *name, const char *what, ps_codec_id *id, ps_errbuf *eb) {
  if (!name || !*name) {
    *id = PS_CODEC_FP32;
    return 0;
  }
  for (unsigned i = 0; i < PS_CODEC_N; i++)
    if (!strcmp(name, ps_codecs[i].name)) {
      *id = (ps_codec_id)i;
      return 0;
    }
  return ps_errf(eb, PS_EINVAL, "unknown %s '%s' (fp32, fp16, int8, onebit or topk)",
                 what ? what : "codec", name);
}

uint64_t ps_codec_size(ps_codec_id id, uint32_t n, float topk) {
  return ps_codecs[id].size(n, topk);
}

void ps_codec_encode(ps_codec_id id, const float *x, uint32_t n, float topk, void *out) {
  ps_codecs[id].encode(x, n, topk, out);
}

int ps_codec_check(ps_codec_id id, const void *in, uint64_t len, uint32_t n, float topk,
                   const char *what, ps_errbuf *eb) {
  if ((unsigned)id >= PS_CODEC_N)
    return ps_errf(eb, PS_EINVAL, "%s: unknown codec %u", what, (unsigned)id);
  uint64_t want = ps_codec_size(id, n, topk);
  if (len != want)
    return ps_errf(eb, PS_EINVAL, "%s: %llu bytes of %s, %u elements need %llu", what,
                   (unsigned long long)len, ps_codecs[id].name, n, (unsigned long long)want);
  return ps_codecs[id].check(in, n, topk, what, eb);
}

void ps_codec_decode_acc(ps_codec_id id, const void *in, uint32_t n, float topk, float alpha,
                         float *out) {
  ps_codecs[id].decode_acc(in, n, topk, alpha, out);
}

void ps_codec_decode(ps_codec_id id, const void *in, uint32_t n, float topk, float *out) {
  if (id == PS_CODEC_FP32) {
    memcpy(out, in, (size_t)n * 4);
    return;
  }
  memset(out, 0, (size_t)n * sizeof *out);
  ps_codecs[id].decode_acc(in, n, topk, 1.0f, out);
}

/* codec_norm returns the L2 norm of the decoding of IN (a lossy codec's
 * chunk of N elements), read off the bytes (summed in double, as the
 * shard's clip check does). */
static double codec_norm(ps_codec_id id, const uint8_t *in, uint32_t n, float topk) {
  double sum = 0;
  if (id == PS_CODEC_FP16) {
    for (uint32_t i = 0; i < n; i++) {
      uint16_t h;
      memcpy(&h, in + 2 * (size_t)i, 2);
      double v = ps_codec_h2f(h);
      sum += v * v;
    }
  } else if (id == PS_CODEC_INT8) {
    const int8_t *q = (const int8_t *)(in + 4);
    for (uint32_t i = 0; i < n; i++) sum += (double)(q[i] * q[i]);
    sum *= (double)get_f32(in) * get_f32(in);
  } else if (id == PS_CODEC_ONEBIT) {
    sum = (double)get_f32(in) * get_f32(in) * n;
  } else if (id == PS_CODEC_TOPK) {
    uint32_t k = ps_codec_topk_k(n, topk);
    for (uint32_t j = 0; j < k; j++) {
      double v = get_f32(in + 4 * ((size_t)k + j));
      sum += v * v;
    }
  }
  return sqrt(sum);
}

/* codec_scale multiplies the decoding of IN (a lossy codec's chunk of N
 * elements) by A in (0, 1], in place: the scale of int8 and onebit, the
 * values of topk, each half of fp16 (rounded again: at most 2^-11
 * relative more).  The same as encoding the input times A (the kept
 * indices, signs and steps do not depend on the input's scale). */
static void codec_scale(ps_codec_id id, uint8_t *in, uint32_t n, float topk, float a) {
  if (id == PS_CODEC_FP16) {
    for (uint32_t i = 0; i < n; i++) {
      uint16_t h;
      memcpy(&h, in + 2 * (size_t)i, 2);
      h = ps_codec_f2h(ps_codec_h2f(h) * a);
      memcpy(in + 2 * (size_t)i, &h, 2);
    }
  } else if (id == PS_CODEC_INT8 || id == PS_CODEC_ONEBIT) {
    float s = get_f32(in) * a;
    memcpy(in, &s, 4);
  } else if (id == PS_CODEC_TOPK) {
    uint32_t k = ps_codec_topk_k(n, topk);
    for (uint32_t j = 0; j < k; j++) {
      uint8_t *p = in + 4 * ((size_t)k + j);
      float v = get_f32(p) * a;
      memcpy(p, &v, 4);
    }
  }
}

void ps_codec_encode_ef(ps_codec_id id, const float *g, uint32_t n, float topk, float clip,
                        float *residual, void *out) {
  if (id == PS_CODEC_FP32) {
    ps_codec_encode(id, g, n, topk, out);
    return;
  }
  for (uint32_t i = 0; i < n; i++) residual[i] += g[i];
  ps_codec_encode(id, residual, n, topk, out);
  if (clip > 0) {
    double norm = codec_norm(id, out, n, topk);
    if (norm > clip) codec_scale(id, out, n, topk, (float)(clip / norm));
  }
  ps_codec_decode_acc(id, out, n, topk, -1.0f, residual);
}
