/* Tests for ps_log's list text (ps_log_u32s). */
#include "ps_log.h"
#include "ps_test.h"

START_TEST(test_u32s) {
  char buf[32];
  const uint32_t v[] = {0, 3, 6, 4000000000u, 12, 13, 14, 15};
  ck_assert_str_eq(ps_log_u32s(buf, sizeof buf, v, 0), "");
  ck_assert_str_eq(ps_log_u32s(buf, sizeof buf, v, 3), "0,3,6");
  /* what does not fit ends in ",..." and stays within the buffer */
  ck_assert_str_eq(ps_log_u32s(buf, sizeof buf, v, 8), "0,3,6,4000000000,...");
}
END_TEST

Suite *ps_log_suite(void) {
  Suite *s = suite_create("ps_log");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_u32s);
  suite_add_tcase(s, tc);
  return s;
}
