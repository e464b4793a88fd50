/* Tests for ps_place and ps_model: placement and initial values. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_model.h"
#include "ps_place.h"
#include "ps_test.h"

static const uint32_t ids4[] = {0, 1, 2, 3};

START_TEST(test_place_deterministic) {
  /* Known answers: the function must not depend on process state. */
  size_t a = ps_place_chunk("mlp", 3, 17, ids4, 4);
  for (int i = 0; i < 100; i++) ck_assert_uint_eq(ps_place_chunk("mlp", 3, 17, ids4, 4), a);
  /* Different keys land differently somewhere. */
  int differ = 0;
  for (uint32_t i = 0; i < 64; i++)
    differ |= ps_place_chunk("mlp", 0, i, ids4, 4) != ps_place_chunk("mlp", 0, 0, ids4, 4);
  ck_assert(differ);
}
END_TEST

START_TEST(test_place_balanced) {
  size_t count[4] = {0};
  for (uint32_t i = 0; i < 1000; i++) count[ps_place_chunk("model", i % 7, i, ids4, 4)]++;
  size_t max = 0;
  for (int s = 0; s < 4; s++) max = count[s] > max ? count[s] : max;
  ck_assert_msg(max <= 1.2 * 250, "most loaded shard holds %zu of 1000 chunks", max);
}
END_TEST

START_TEST(test_place_add_shard_moves_few) {
  const uint32_t ids5[] = {0, 1, 2, 3, 4};
  int moved = 0, moved_elsewhere = 0;
  for (uint32_t i = 0; i < 1000; i++) {
    size_t a = ps_place_chunk("model", 1, i, ids4, 4);
    size_t b = ps_place_chunk("model", 1, i, ids5, 5);
    if (a != b) {
      moved++;
      if (b != 4) moved_elsewhere++;
    }
  }
  /* Ideal: 1/5 of the chunks move, all of them to the new shard. */
  ck_assert_int_eq(moved_elsewhere, 0);
  ck_assert_msg(moved < 260, "%d of 1000 chunks moved", moved);
  ck_assert_msg(moved > 140, "%d of 1000 chunks moved", moved);
}
END_TEST

/* Rows: the bucket map is the chunk rendezvous over buckets (so adding a
 * shard moves only buckets that go to it, about 1/5), buckets spread
 * evenly, hashed keys stay in range, and a row's initial values depend
 * on (seed, table, key) only. */
START_TEST(test_place_rows) {
  static uint16_t m4[PS_PLACE_ROW_BUCKETS], m5[PS_PLACE_ROW_BUCKETS];
  const uint32_t ids5[] = {0, 1, 2, 3, 4};
  ps_place_row_map("ctr", 0, ids4, 4, m4);
  ps_place_row_map("ctr", 0, ids5, 5, m5);
  size_t count[4] = {0}, moved = 0;
  for (uint32_t b = 0; b < PS_PLACE_ROW_BUCKETS; b++) {
    ck_assert_uint_eq(m4[b], ps_place_chunk("ctr", 0, b, ids4, 4));
    if (m4[b] != m5[b]) {
      ck_assert_uint_eq(m5[b], 4);
      moved++;
    }
  }
  ck_assert_msg(moved > 600 && moved < 1050, "%zu of 4096 buckets moved", moved);
  uint64_t seed = ps_place_row_seed("ctr", 0);
  ck_assert(seed != ps_place_row_seed("ctr", 1) && seed != ps_place_row_seed("ctx", 0));
  for (uint64_t k = 0; k < 40000; k++) count[m4[ps_place_row_bucket(seed, k)]]++;
  for (int s = 0; s < 4; s++)
    ck_assert_msg(count[s] > 9000 && count[s] < 11000, "shard %d holds %zu of 40000 rows", s, count[s]);
  for (uint64_t k = 0; k < 1000; k++) ck_assert(ps_place_row_key(k * 0x123456789ull, 1000) < 1000);
  ck_assert(ps_place_row_key(77, 0) == 77);
  float a[16], b[16], c[16];
  ck_assert_int_eq(ps_init_row(a, "normal", 0.1f, 5, 2, 1ull << 63, 16), 0);
  ck_assert_int_eq(ps_init_row(b, "normal", 0.1f, 5, 2, 1ull << 63, 16), 0);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  ck_assert_int_eq(ps_init_row(c, "normal", 0.1f, 5, 2, (1ull << 63) + 1, 16), 0);
  ck_assert(memcmp(a, c, sizeof a) != 0);
  ck_assert_int_eq(ps_init_row(c, "normal", 0.1f, 5, 3, 1ull << 63, 16), 0);
  ck_assert(memcmp(a, c, sizeof a) != 0);
  ck_assert_int_eq(ps_init_row(c, "bogus", 0.1f, 5, 3, 1, 16), PS_EINVAL);
  ck_assert_int_eq(ps_init_row(c, "zeros", 0.1f, 5, 3, 1, 0), PS_EINVAL);
}
END_TEST

START_TEST(test_init_independent_of_chunking) {
  float whole[1000], part[1000];
  ck_assert_int_eq(ps_init_fill(whole, "glorot", 1, 42, 2, 0, 1000, 100, 10), 0);
  for (int off = 0; off < 1000; off += 333) {
    int n = off + 333 > 1000 ? 1000 - off : 333;
    ck_assert_int_eq(ps_init_fill(part + off, "glorot", 1, 42, 2, (uint64_t)off, (uint64_t)n, 100, 10), 0);
  }
  ck_assert_int_eq(memcmp(whole, part, sizeof whole), 0);
  float a = (float)sqrt(6.0 / 110.0);
  double mean = 0;
  for (int i = 0; i < 1000; i++) {
    ck_assert(whole[i] >= -a && whole[i] < a);
    mean += whole[i];
  }
  ck_assert(fabs(mean / 1000) < 0.05 * a);
  ck_assert_int_eq(ps_init_fill(whole, "bogus", 1, 1, 0, 0, 10, 1, 1), PS_EINVAL);
  ps_init_fill(whole, "normal", 2, 7, 0, 0, 1000, 1, 1);
  double var = 0;
  for (int i = 0; i < 1000; i++) var += whole[i] * whole[i];
  ck_assert(fabs(sqrt(var / 1000) - 2) < 0.2);
}
END_TEST

START_TEST(test_layout_chunks) {
  uint32_t shape0[] = {3, 5}, shape1[] = {7};
  Ps__TensorSpec t0 = PS__TENSOR_SPEC__INIT, t1 = PS__TENSOR_SPEC__INIT;
  t0.name = "w"; t0.n_shape = 2; t0.shape = shape0; t0.init = "glorot";
  t1.name = "b"; t1.n_shape = 1; t1.shape = shape1;
  Ps__TensorSpec *ts[] = {&t0, &t1};
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = "m"; spec.n_tensors = 2; spec.tensors = ts;
  ps_layout l;
  ps_errbuf eb;
  ck_assert_int_eq(ps_layout_build(&l, &spec, 4, ids4, 2, &eb), 0);
  ck_assert_uint_eq(l.nparams, 22);
  ck_assert_uint_eq(l.nchunks, 4 + 2);
  ck_assert_uint_eq(l.chunks[3].len, 3);
  ck_assert_uint_eq(l.chunks[5].len, 3);
  ck_assert_uint_eq(l.chunks[5].offset, 4);
  ck_assert_uint_eq(l.tensors[1].model_offset, 15);
  uint32_t *ids0, *ids1;
  uint64_t n0, n1;
  long c0 = ps_layout_shard_chunks(&l, 0, &ids0, &n0);
  long c1 = ps_layout_shard_chunks(&l, 1, &ids1, &n1);
  ck_assert_int_eq(c0 + c1, 6);
  ck_assert_uint_eq(n0 + n1, 22);
  /* ps_layout_place: each shard sends its chunks' values (here each
   * value is its element's index in the model); every one lands there. */
  float out[22], sent[2][22];
  int32_t from[6];
  for (int i = 0; i < 22; i++) out[i] = NAN;
  for (int i = 0; i < 6; i++) from[i] = -1;
  uint32_t *ids[2] = {ids0, ids1};
  long cnt[2] = {c0, c1};
  for (uint32_t sh = 0; sh < 2; sh++) {
    size_t at = 0;
    for (long k = 0; k < cnt[sh]; k++) {
      const ps_chunk *ch = &l.chunks[ids[sh][k]];
      for (uint32_t e = 0; e < ch->len; e++)
        sent[sh][at++] = (float)(l.tensors[ch->tensor].model_offset + ch->offset + e);
    }
    ck_assert_int_eq(ps_layout_place(&l, sh, ids[sh], (size_t)cnt[sh], sent[sh], at * 4, out, from, &eb),
                     (long)at);
  }
  for (int i = 0; i < 22; i++) ck_assert_float_eq(out[i], (float)i);
  /* refused, and nothing copied: a chunk again, another shard's chunk, an
   * unknown chunk, values that do not match the chunks */
  for (int i = 0; i < 22; i++) out[i] = NAN;
  ck_assert_int_eq(ps_layout_place(&l, 0, ids0, 1, sent[0], l.chunks[ids0[0]].len * 4, out, from, &eb), PS_EPROTO);
  ck_assert_msg(strstr(eb.msg, "a second time") != NULL, "%s", eb.msg);
  ck_assert_int_eq(ps_layout_place(&l, 1, ids0, 1, sent[0], l.chunks[ids0[0]].len * 4, out, NULL, &eb), PS_EPROTO);
  ck_assert_msg(strstr(eb.msg, "another shard") != NULL, "%s", eb.msg);
  uint32_t bad = 6;
  ck_assert_int_eq(ps_layout_place(&l, 0, &bad, 1, sent[0], 4, out, NULL, &eb), PS_EPROTO);
  ck_assert_str_eq(eb.msg, "sent chunk 6 which the model does not have");
  ck_assert_int_eq(ps_layout_place(&l, 0, ids0, (size_t)c0, sent[0], n0 * 4 - 4, out, NULL, &eb), PS_EPROTO);
  ck_assert_msg(strstr(eb.msg, "value bytes") != NULL, "%s", eb.msg);
  for (int i = 0; i < 22; i++) ck_assert(isnan(out[i]));
  free(ids0);
  free(ids1);
  ps_layout_release(&l);
  t1.name = "w";
  ck_assert_int_eq(ps_layout_build(&l, &spec, 4, ids4, 2, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "model 'm': duplicate tensor 'w'");
}
END_TEST

Suite *ps_place_suite(void) {
  Suite *s = suite_create("ps_place");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_place_deterministic);
  tcase_add_test(tc, test_place_balanced);
  tcase_add_test(tc, test_place_add_shard_moves_few);
  tcase_add_test(tc, test_place_rows);
  tcase_add_test(tc, test_init_independent_of_chunking);
  tcase_add_test(tc, test_layout_chunks);
  suite_add_tcase(s, tc);
  return s;
}
