/* Tests for ps_crc32c: the known CRC-32C vectors (RFC 3720 B.4 and the
 * usual "123456789"), the same value from every version this CPU runs
 * (SSE4.2, AVX-512 folding) and the portable one over every length and
 * alignment the three-stream blocks and the folding rounds cut
 * differently, chaining, and combining (ps_crc32c_combine). */
#include <stdlib.h>
#include <string.h>

#include "ps_crc32c.h"
#include "ps_test.h"

typedef uint32_t crc_fn(uint32_t, const void *, size_t);

static void check_vectors(crc_fn *f) {
  uint8_t b[32];
  ck_assert_uint_eq(f(0, "123456789", 9), 0xe3069283u);
  ck_assert_uint_eq(f(0, "", 0), 0);
  memset(b, 0, sizeof b);
  ck_assert_uint_eq(f(0, b, 32), 0x8a9136aau);
  memset(b, 0xff, sizeof b);
  ck_assert_uint_eq(f(0, b, 32), 0x62a8ab43u);
  for (int i = 0; i < 32; i++) b[i] = (uint8_t)i;
  ck_assert_uint_eq(f(0, b, 32), 0x46dd794eu);
  for (int i = 0; i < 32; i++) b[i] = (uint8_t)(31 - i);
  ck_assert_uint_eq(f(0, b, 32), 0x113fdb5cu);
}

static int crc_level; /* the version crc_at_level runs */

static uint32_t crc_at_level(uint32_t crc, const void *p, size_t n) {
  return ps_crc32c_level(crc_level, crc, p, n);
}

START_TEST(test_known_vectors) {
  check_vectors(ps_crc32c_sw);
  check_vectors(ps_crc32c); /* the fastest version the CPU has */
  for (crc_level = 0; crc_level <= ps_crc32c_hw(); crc_level++) check_vectors(crc_at_level);
}
END_TEST

START_TEST(test_hw_matches_sw) {
  size_t cap = 3 * 8192 * 3 + 3 * 256 * 2 + 64;
  uint8_t *b = malloc(cap);
  uint64_t x = 0x9e3779b97f4a7c15u;
  for (size_t i = 0; i < cap; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b[i] = (uint8_t)x;
  }
  /* lengths around the block sizes (3 x 8192, 3 x 256, 8) and the
   * folding rounds (256), odd starts; every version the CPU has */
  size_t lens[] = {0, 1, 7, 8, 9, 255, 256, 257, 263, 264, 511, 512, 513, 767, 768, 769,
                   3 * 256 + 8, 1000, 24575, 24576, 24577, 2 * 24576 + 3 * 256 + 13, cap - 8};
  for (int lv = 0; lv <= ps_crc32c_hw(); lv++)
    for (size_t a = 0; a < 8; a++)
      for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t n = lens[i];
        ck_assert_msg(ps_crc32c_level(lv, 0, b + a, n) == ps_crc32c_sw(0, b + a, n),
                      "version %d, length %zu at offset %zu", lv, n, a);
        ck_assert_uint_eq(ps_crc32c_level(lv, 0x12345678u, b + a, n),
                          ps_crc32c_sw(0x12345678u, b + a, n));
      }
  for (size_t n = 0; n < 1300; n++) /* every length through the first rounds */
    ck_assert_msg(ps_crc32c(0xffffffffu, b + 3, n) == ps_crc32c_sw(0xffffffffu, b + 3, n),
                  "length %zu", n);
  /* chaining: the parts' checksum is the whole's */
  uint32_t whole = ps_crc32c(0, b, cap);
  ck_assert_uint_eq(ps_crc32c(ps_crc32c(ps_crc32c(0, b, 5), b + 5, 30000), b + 30005, cap - 30005),
                    whole);
  ck_assert_uint_eq(ps_crc32c_sw(ps_crc32c_sw(0, b, 4097), b + 4097, cap - 4097), whole);
  free(b);
}
END_TEST

/* combine: the checksum of a range follows from its prefixes' (the redo
 * log's search after a bad record checks long candidates so) */
START_TEST(test_combine) {
  size_t cap = 70000;
  uint8_t *b = malloc(cap);
  for (size_t i = 0; i < cap; i++) b[i] = (uint8_t)(i * 131 + (i >> 9));
  size_t cuts[] = {0, 1, 8, 4095, 4096, 30001, cap};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    size_t k = cuts[i];
    uint32_t a = ps_crc32c(0, b, k), c = ps_crc32c(0, b + k, cap - k);
    ck_assert_uint_eq(ps_crc32c_combine(a, c, cap - k), ps_crc32c(0, b, cap));
    /* a range from two prefixes */
    ck_assert_uint_eq(ps_crc32c(0, b, cap) ^ ps_crc32c_combine(a, 0, cap - k), c);
  }
  ck_assert_uint_eq(ps_crc32c_combine(0x12345678u, 0x9abcdef0u, 0), 0x12345678u ^ 0x9abcdef0u);
  free(b);
}
END_TEST

Suite *ps_crc32c_suite(void) {
  Suite *s = suite_create("ps_crc32c");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_known_vectors);
  tcase_add_test(tc, test_hw_matches_sw);
  tcase_add_test(tc, test_combine);
  suite_add_tcase(s, tc);
  return s;
}
