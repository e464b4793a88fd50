/* ps_crc32c: CRC-32C, hardware and software (see ps_crc32c.h).
 *
 * The hardware version follows Mark Adler's public crc32c.c: the crc32
 * instruction has a latency of 3 cycles and a throughput of 1, so three
 * independent streams over adjacent blocks run it at full speed, and
 * their values are combined by "shifting" a block's CRC over the zeros of
 * the next block (a linear operator over GF(2), applied by four table
 * lookups).  Tables are made once, at first use.
 *
 * Where the CPU has AVX-512 and VPCLMULQDQ, inputs of 256 bytes or more
 * are folded instead (Intel's "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ", 2009, sixteen 128-bit lanes at a time):
 * a 128-bit lane X, D bits before the lane it is added to, becomes
 * X.lo * k(D + 32) ^ X.hi * k(D - 32) (carry-less products), where k(m)
 * is x^m modulo the polynomial, bit-reflected, shifted left by one; the
 * last lane left is run through the crc32 instruction from 0, since
 * folding keeps the CRC of what it replaces.  About three times the
 * three streams' speed on data in cache (65 against 23 GB/s, 512 KiB,
 * a 2-core Intel Xeon test machine, 2026-12-02); in the redo log's
 * writer, whose records come from memory, 1.6 times (BENCHMARKS.md,
 * durability run 38). */
#include "ps_crc32c.h"

#include <pthread.h>
#include <string.h>

#define CRC32C_POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
static uint32_t crc32c_table[8][256];   /* slicing-by-8 */
static int crc32c_have_hw;              /* ps_crc32c_hw's level */

/* crc32c_mulmod: A times B modulo the polynomial (reflected: bit 31 is
 * x^0), as zlib's multmodp. */
static uint32_t crc32c_mulmod(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (; a; m >>= 1) {
    if (a & m) {
      p ^= b;
      a &= ~m;
    }
    b = b & 1 ? (b >> 1) ^ CRC32C_POLY : b >> 1;
  }
  return p;
}

static uint32_t crc32c_x2n[64]; /* x^(8 2^k) modulo the polynomial */

/* crc32c_shift8 multiplies A by x^(8 N): A shifted over N zero bytes. */
static uint32_t crc32c_shift8(uint32_t a, uint64_t n) {
  for (int k = 0; n; n >>= 1, k++)
    if (n & 1) a = crc32c_mulmod(crc32c_x2n[k], a);
  return a;
}

#if defined(__x86_64__)
#define CRC32C_X86 1
#include <immintrin.h>
#include <nmmintrin.h>
#define CRC32C_LONG 8192 /* bytes per stream of a long block */
#define CRC32C_SHORT 256 /* of a short one */
static uint32_t crc32c_long[4][256], crc32c_short[4][256]; /* shift tables */

/* crc32c_gf2_times multiplies matrix MAT by vector VEC over GF(2). */
static uint32_t crc32c_gf2_times(const uint32_t *mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec; vec >>= 1, mat++)
    if (vec & 1) sum ^= *mat;
  return sum;
}

static void crc32c_gf2_square(uint32_t *sq, const uint32_t *mat) {
  for (int n = 0; n < 32; n++) sq[n] = crc32c_gf2_times(mat, mat[n]);
}

/* crc32c_zeros makes the tables that apply LEN (a power of two) zero
 * bytes to a CRC register. */
static void crc32c_zeros(uint32_t zeros[4][256], size_t len) {
  uint32_t odd[32], even[32], *op = even;
  odd[0] = CRC32C_POLY; /* one zero bit */
  for (int n = 1; n < 32; n++) odd[n] = 1u << (n - 1);
  crc32c_gf2_square(even, odd); /* two */
  crc32c_gf2_square(odd, even); /* four */
  for (;;) {                    /* eight zero bits (one byte), then doubling */
    crc32c_gf2_square(even, odd);
    op = even;
    if ((len >>= 1) == 0) break;
    crc32c_gf2_square(odd, even);
    op = odd;
    if ((len >>= 1) == 0) break;
  }
  for (uint32_t n = 0; n < 256; n++)
    for (int k = 0; k < 4; k++) zeros[k][n] = crc32c_gf2_times(op, n << (8 * k));
}

static uint32_t crc32c_shift(uint32_t zeros[4][256], uint32_t crc) {
  return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^ zeros[2][(crc >> 16) & 0xff] ^
         zeros[3][crc >> 24];
}

static uint64_t crc32c_load(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* crc32c_block runs three streams of BLK bytes each from *P while *N
 * allows, advancing both. */
__attribute__((target("sse4.2")))
static uint64_t crc32c_blocks(uint64_t c0, const unsigned char **pp, size_t *np, size_t blk,
                              uint32_t zeros[4][256]) {
  const unsigned char *p = *pp;
  size_t n = *np;
  while (n >= 3 * blk) {
    uint64_t c1 = 0, c2 = 0;
    const unsigned char *end = p + blk;
    do {
      c0 = _mm_crc32_u64(c0, crc32c_load(p));
      c1 = _mm_crc32_u64(c1, crc32c_load(p + blk));
      c2 = _mm_crc32_u64(c2, crc32c_load(p + 2 * blk));
      p += 8;
    } while (p < end);
    c0 = crc32c_shift(zeros, (uint32_t)c0) ^ c1;
    c0 = crc32c_shift(zeros, (uint32_t)c0) ^ c2;
    p += 2 * blk;
    n -= 3 * blk;
  }
  *pp = p;
  *np = n;
  return c0;
}

/* crc32c_tail runs the crc32 instruction over the N bytes at P. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_tail(uint64_t c, const unsigned char *p, size_t n) {
  for (; n >= 8; n -= 8, p += 8) c = _mm_crc32_u64(c, crc32c_load(p));
  for (; n; n--) c = _mm_crc32_u8((uint32_t)c, *p++);
  return (uint32_t)c;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t n) {
  const unsigned char *p = buf;
  uint64_t c = (uint32_t)~crc;
  for (; n && ((uintptr_t)p & 7); n--) c = _mm_crc32_u8((uint32_t)c, *p++);
  c = crc32c_blocks(c, &p, &n, CRC32C_LONG, crc32c_long);
  c = crc32c_blocks(c, &p, &n, CRC32C_SHORT, crc32c_short);
  return ~crc32c_tail(c, p, n);
}

/* The folding constants {k(D + 32), k(D - 32)} for D = 128, 256, 384,
 * 512 and 2048 bits (see the top of this file). */
static uint64_t crc32c_fold_k[5][2];

static void crc32c_fold_init(void) {
  static const unsigned d[5] = {128, 256, 384, 512, 2048};
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 2; j++)
      crc32c_fold_k[i][j] =
          (uint64_t)crc32c_shift8(1u << 31, (j ? d[i] - 32 : d[i] + 32) / 8) << 1;
}

#define CRC32C_FOLD_TARGET __attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))

/* crc32c_fold4 folds the four 128-bit lanes of X by K's distance. */
CRC32C_FOLD_TARGET static inline __m512i crc32c_fold4(__m512i x, __m512i k) {
  return _mm512_xor_si512(_mm512_clmulepi64_epi128(x, k, 0x00),
                          _mm512_clmulepi64_epi128(x, k, 0x11));
}

CRC32C_FOLD_TARGET static inline __m128i crc32c_fold1(__m128i x, int i) {
  __m128i k = _mm_loadu_si128((const __m128i *)crc32c_fold_k[i]);
  return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

/* crc32c_wide: crc32c_hw folding 256 bytes a round while N allows. */
CRC32C_FOLD_TARGET static uint32_t crc32c_wide(uint32_t crc, const void *buf, size_t n) {
  const unsigned char *p = buf;
  if (n < 256) return crc32c_hw(crc, p, n);
  __m512i k512 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)crc32c_fold_k[3])),
          k2048 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)crc32c_fold_k[4]));
  __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64),
          x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
  x0 = _mm512_xor_si512(x0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)~crc)));
  for (p += 256, n -= 256; n >= 256; p += 256, n -= 256) {
    x0 = _mm512_xor_si512(crc32c_fold4(x0, k2048), _mm512_loadu_si512(p));
    x1 = _mm512_xor_si512(crc32c_fold4(x1, k2048), _mm512_loadu_si512(p + 64));
    x2 = _mm512_xor_si512(crc32c_fold4(x2, k2048), _mm512_loadu_si512(p + 128));
    x3 = _mm512_xor_si512(crc32c_fold4(x3, k2048), _mm512_loadu_si512(p + 192));
  }
  x1 = _mm512_xor_si512(x1, crc32c_fold4(x0, k512));
  x2 = _mm512_xor_si512(x2, crc32c_fold4(x1, k512));
  x3 = _mm512_xor_si512(x3, crc32c_fold4(x2, k512));
  __m128i r = _mm_xor_si128(crc32c_fold1(_mm512_extracti32x4_epi32(x3, 0), 2),
                            crc32c_fold1(_mm512_extracti32x4_epi32(x3, 1), 1));
  r = _mm_xor_si128(r, crc32c_fold1(_mm512_extracti32x4_epi32(x3, 2), 0));
  r = _mm_xor_si128(r, _mm512_extracti32x4_epi32(x3, 3));
  uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(r));
  c = _mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(r, 1));
  return ~crc32c_tail(c, p, n);
}
#endif

static void crc32c_init(void) {
  crc32c_x2n[0] = 1u << 23; /* x^8 */
  for (int k = 1; k < 64; k++) crc32c_x2n[k] = crc32c_mulmod(crc32c_x2n[k - 1], crc32c_x2n[k - 1]);
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
    crc32c_table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++)
    for (int k = 1; k < 8; k++)
      crc32c_table[k][n] = (crc32c_table[k - 1][n] >> 8) ^
                           crc32c_table[0][crc32c_table[k - 1][n] & 0xff];
#ifdef CRC32C_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) {
    crc32c_zeros(crc32c_long, CRC32C_LONG);
    crc32c_zeros(crc32c_short, CRC32C_SHORT);
    crc32c_have_hw = 1;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq") &&
        __builtin_cpu_supports("pclmul")) {
      crc32c_fold_init();
      crc32c_have_hw = 2;
    }
  }
#endif
}

/* ps_crc32c_sw: see ps_crc32c.h (slicing-by-8; little-endian loads). */
uint32_t ps_crc32c_sw(uint32_t crc, const void *buf, size_t n) {
  pthread_once(&crc32c_once, crc32c_init);
  const unsigned char *p = buf;
  uint32_t c = ~crc;
  for (; n && ((uintptr_t)p & 7); n--) c = (c >> 8) ^ crc32c_table[0][(c ^ *p++) & 0xff];
  for (; n >= 8; n -= 8, p += 8) {
    uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                       (uint32_t)p[3] << 24);
    c = crc32c_table[7][lo & 0xff] ^ crc32c_table[6][(lo >> 8) & 0xff] ^
        crc32c_table[5][(lo >> 16) & 0xff] ^ crc32c_table[4][lo >> 24] ^
        crc32c_table[3][p[4]] ^ crc32c_table[2][p[5]] ^ crc32c_table[1][p[6]] ^
        crc32c_table[0][p[7]];
  }
  for (; n; n--) c = (c >> 8) ^ crc32c_table[0][(c ^ *p++) & 0xff];
  return ~c;
}

/* ps_crc32c_hw: see ps_crc32c.h. */
int ps_crc32c_hw(void) {
  pthread_once(&crc32c_once, crc32c_init);
  return crc32c_have_hw;
}

/* ps_crc32c_combine: see ps_crc32c.h.  Shifting CRC1 over LEN2 zero bytes
 * is multiplying it by x^(8 LEN2): one product per bit of LEN2, with
 * x^(8 2^k) from crc32c_x2n. */
uint32_t ps_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2) {
  pthread_once(&crc32c_once, crc32c_init);
  return crc32c_shift8(crc1, len2) ^ crc2;
}

/* ps_crc32c_level: see ps_crc32c.h. */
uint32_t ps_crc32c_level(int level, uint32_t crc, const void *p, size_t n) {
  int hw = ps_crc32c_hw();
  if (level > hw) level = hw;
#ifdef CRC32C_X86
  if (level >= 2) return crc32c_wide(crc, p, n);
  if (level == 1) return crc32c_hw(crc, p, n);
#endif
  return ps_crc32c_sw(crc, p, n);
}

/* ps_crc32c: see ps_crc32c.h. */
uint32_t ps_crc32c(uint32_t crc, const void *p, size_t n) {
  return ps_crc32c_level(2, crc, p, n);
}
