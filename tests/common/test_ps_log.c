/* Tests for ps_log's list text (ps_log_u32s) and escaping (ps_log_escape). */
#include <string.h>

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

/* Peer strings in log lines: control bytes, quotes, backslashes and
 * bytes above ASCII as \xNN; cut at MAX bytes or the buffer, with "...". */
START_TEST(test_escape) {
  char b[64];
  ck_assert_str_eq(ps_log_escape(b, sizeof b, "evil\nline", 32), "evil\\x0aline");
  ck_assert_str_eq(ps_log_escape(b, sizeof b, "a'b\\c\x7f\xc3\xa9", 32),
                   "a\\x27b\\x5cc\\x7f\\xc3\\xa9");
  ck_assert_str_eq(ps_log_escape(b, sizeof b, NULL, 32), "");
  ck_assert_str_eq(ps_log_escape(b, sizeof b, "abcdef", 3), "abc...");
  ck_assert_str_eq(ps_log_escape(b, 12, "abcdefghijklmnop", 100), "abcd...");
  ps_log_escape(b, 12, "\n\n\n\n\n", 100);
  ck_assert_uint_lt(strlen(b), 12);
  ck_assert_ptr_null(strchr(b, '\n'));
}
END_TEST

Suite *ps_log_suite(void) {
  Suite *s = suite_create("ps_log");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_u32s);
  tcase_add_test(tc, test_escape);
  suite_add_tcase(s, tc);
  return s;
}
