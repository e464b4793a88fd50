/* Tests for ps_error's message buffer (ps_errf). */
#include "ps_error.h"
#include "ps_test.h"

#include <string.h>

/* A message may wrap the buffer's own earlier message (a caller adding
 * context to what a callee said): it used to be formatted over itself,
 * garbled. */
START_TEST(test_errf_wraps_own_message) {
  ps_errbuf eb;
  ck_assert_int_eq(ps_errf(&eb, PS_EPERM, "key '%s' is wrong", "worker-1"), PS_EPERM);
  ck_assert_int_eq(ps_errf(&eb, PS_EUNAVAIL, "shard %u unreachable: %s", 0u, eb.msg),
                   PS_EUNAVAIL);
  ck_assert_str_eq(eb.msg, "shard 0 unreachable: key 'worker-1' is wrong");
  /* NULL: only the code */
  ck_assert_int_eq(ps_errf(NULL, PS_EIO, "x"), PS_EIO);
  /* a long message is cut at the buffer's end, NUL-terminated */
  char big[2000];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = 0;
  ps_errf(&eb, PS_EIO, "%s", big);
  ck_assert_uint_eq(strlen(eb.msg), sizeof eb.msg - 1);
}
END_TEST

Suite *ps_error_suite(void) {
  Suite *s = suite_create("ps_error");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_errf_wraps_own_message);
  suite_add_tcase(s, tc);
  return s;
}
