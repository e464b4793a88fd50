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

/* A full disk reads as one on the gRPC plane: a code a client retries
 * once the shard has room (UNAVAILABLE, as a DEGRADED shard's refusal),
 * not "request too large" (RESOURCE_EXHAUSTED comes back as
 * PS_ETOOBIG, which it gives up on). */
START_TEST(test_grpc_full_disk) {
  ck_assert_int_eq(ps_err_from_grpc(ps_err_to_grpc(PS_ENOSPC)), PS_EUNAVAIL);
  ck_assert_int_eq(ps_err_to_grpc(PS_ENOSPC), ps_err_to_grpc(PS_EDEGRADED));
  ck_assert_int_eq(ps_err_from_grpc(ps_err_to_grpc(PS_ETOOBIG)), PS_ETOOBIG);
  /* every code comes back as itself or as the class the plane keeps */
  static const int same[] = {PS_EINVAL, PS_ENOENT, PS_EEXIST, PS_ETOOBIG, PS_ETIMEDOUT,
                             PS_EUNAVAIL, PS_ENOTSUP, PS_ECONFIG, PS_EEXPIRED, PS_EIO, PS_EPERM};
  for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
    ck_assert_int_eq(ps_err_from_grpc(ps_err_to_grpc(same[i])), same[i]);
}
END_TEST

/* The failures after which a client goes elsewhere: psw_retryable and
 * psd_agg's agg_lost_note read this one list (they used to keep copies
 * that could drift); an answer (a refusal, DEGRADED included) is not one. */
START_TEST(test_path_failed) {
  static const int failed[] = {PS_EUNAVAIL, PS_EIO, PS_ETIMEDOUT, PS_EPROTO, PS_ESHUTDOWN};
  int n = 0;
  for (int err = 0; err >= PS_EPERM; err--) {
    int want = 0;
    for (size_t i = 0; i < sizeof failed / sizeof failed[0]; i++) want |= err == failed[i];
    ck_assert_msg(ps_err_path_failed(err) == want, "%s", ps_errname(err));
    n += want;
  }
  ck_assert_int_eq(n, 5);
}
END_TEST

Suite *ps_error_suite(void) {
  Suite *s = suite_create("ps_error");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_errf_wraps_own_message);
  tcase_add_test(tc, test_grpc_full_disk);
  tcase_add_test(tc, test_path_failed);
  suite_add_tcase(s, tc);
  return s;
}
