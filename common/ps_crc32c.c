/* ps_crc32c: CRC-32C, hardware and software (see ps_crc32c.h).
 *
 * The hardware version follows Mark Adler's public crc32c.c: the crc32
 * instruction has a latency of 3 cycles and a throughput of 1, so three
 * independent streams over adjacent blocks run it at full speed, and
 * their values are combined by "shifting" a block's CRC over the zeros of
 * the next block (a linear operator over GF(2), applied by four table
 * lookups).  Tables are made once, at first use. */
#include "ps_crc32c.h"

#include <pthread.h>
#include <string.h>

#define CRC32C_POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
static uint32_t crc32c_table[8][256];   /* slicing-by-8 */
static int crc32c_have_hw;

#if defined(__x86_64__) || defined(__i386__)
#define CRC32C_X86 1
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

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t n) {
  const unsigned char *p = buf;
  uint64_t c = (uint32_t)~crc;
  for (; n && ((uintptr_t)p & 7); n--) c = _mm_crc32_u8((uint32_t)c, *p++);
  c = crc32c_blocks(c, &p, &n, CRC32C_LONG, crc32c_long);
  c = crc32c_blocks(c, &p, &n, CRC32C_SHORT, crc32c_short);
  for (; n >= 8; n -= 8, p += 8) c = _mm_crc32_u64(c, crc32c_load(p));
  for (; n; n--) c = _mm_crc32_u8((uint32_t)c, *p++);
  return ~(uint32_t)c;
}
#endif

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
  for (int k = 0; len2; len2 >>= 1, k++)
    if (len2 & 1) crc1 = crc32c_mulmod(crc32c_x2n[k], crc1);
  return crc1 ^ crc2;
}

/* ps_crc32c: see ps_crc32c.h. */
uint32_t ps_crc32c(uint32_t crc, const void *p, size_t n) {
#ifdef CRC32C_X86
  if (ps_crc32c_hw()) return crc32c_hw(crc, p, n);
#endif
  return ps_crc32c_sw(crc, p, n);
}
