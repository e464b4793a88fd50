/* Tests for psw_embed: the distinct keys of a batch in first-appearance
 * order, the bag index both ways (checked by ps_gpu_bags_check, which
 * must also catch a corrupted index), reuse across builds, bad offsets. */
#include <string.h>

#include "ps_gpu.h"
#include "ps_test.h"
#include "psw_embed.h"

START_TEST(test_embed_index) {
  psw_embed *e;
  ps_errbuf eb;
  ck_assert_int_eq(psw_embed_create(&e), 0);
  static const uint32_t off[5] = {0, 2, 2, 5, 6};
  static const uint64_t keys[6] = {42, UINT64_MAX, 42, 7, 42, 7};
  ck_assert_msg(psw_embed_build(e, 4, off, keys, 1, &eb) == 0, "%s", eb.msg);
  uint32_t nk;
  const uint64_t *k = psw_embed_keys(e, &nk);
  ck_assert_uint_eq(nk, 3);
  ck_assert(k[0] == 42 && k[1] == UINT64_MAX && k[2] == 7);
  ps_gpu_bags b;
  psw_embed_bags(e, &b);
  ck_assert_uint_eq(b.nbags, 4);
  ck_assert_uint_eq(b.nnz, 6);
  ck_assert_int_eq(b.mean, 1);
  static const int32_t slot[6] = {0, 1, 0, 2, 0, 2}, roff[4] = {0, 3, 4, 6},
                       rbag[6] = {0, 2, 2, 0, 2, 3};
  ck_assert_int_eq(memcmp(b.bag_slot, slot, sizeof slot), 0);
  ck_assert_int_eq(memcmp(b.row_off, roff, sizeof roff), 0);
  ck_assert_int_eq(memcmp(b.row_bag, rbag, sizeof rbag), 0);
  ck_assert_int_eq(ps_gpu_bags_check(&b), 0);
  /* A corrupted copy is refused: a slot out of range, a transpose out of order. */
  int32_t s2[6], r2[6];
  memcpy(s2, slot, sizeof s2);
  memcpy(r2, rbag, sizeof r2);
  ps_gpu_bags bad = b;
  bad.bag_slot = s2;
  s2[3] = 3;
  ck_assert_int_eq(ps_gpu_bags_check(&bad), PS_EINVAL);
  s2[3] = 2;
  bad.row_bag = r2;
  r2[1] = 0, r2[0] = 2;
  ck_assert_int_eq(ps_gpu_bags_check(&bad), PS_EINVAL);
  /* A bigger build reuses and grows the buffers; an empty one works. */
  uint32_t boff[1001];
  uint64_t bkeys[3000];
  boff[0] = 0;
  for (uint32_t i = 0; i < 1000; i++) boff[i + 1] = boff[i] + i % 4;
  for (uint32_t i = 0; i < boff[1000]; i++) bkeys[i] = (uint64_t)(i % 777) << 33;
  ck_assert_msg(psw_embed_build(e, 1000, boff, bkeys, 0, &eb) == 0, "%s", eb.msg);
  psw_embed_keys(e, &nk);
  ck_assert_uint_eq(nk, 777);
  psw_embed_bags(e, &b);
  ck_assert_int_eq(ps_gpu_bags_check(&b), 0);
  static const uint32_t zero[1] = {0};
  ck_assert_int_eq(psw_embed_build(e, 0, zero, NULL, 0, &eb), 0);
  psw_embed_keys(e, &nk);
  ck_assert_uint_eq(nk, 0);
  /* Offsets that do not start at 0 or decrease are refused. */
  static const uint32_t dec[3] = {0, 2, 1};
  ck_assert_int_eq(psw_embed_build(e, 2, dec, keys, 0, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "embedding bags: offset of bag 2 decreases");
  ck_assert_int_eq(psw_embed_build(e, 1, dec + 1, keys, 0, &eb), PS_EINVAL);
  psw_embed_free(e);
}
END_TEST

Suite *psw_embed_suite(void) {
  Suite *s = suite_create("psw_embed");
  TCase *tc = tcase_create("index");
  tcase_add_test(tc, test_embed_index);
  suite_add_tcase(s, tc);
  return s;
}
