/* scripts/fuzz itself: its work folder (FUZZ_WORK) may be an absolute
 * path.  It once set the targets' TMPDIR to $PWD/$FUZZ_WORK/tmp, so an
 * absolute FUZZ_WORK gave the targets that make a store (shard, sparse,
 * wal) a TMPDIR that does not exist, and each failed on its first input
 * (mkdtemp).  Skipped where the fuzz targets are not built (make
 * fuzz-build, which make test runs where clang can build them). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_test.h"

START_TEST(test_fuzz_work_absolute) {
  const char *bin = getenv("FUZZ_BIN") ? getenv("FUZZ_BIN") : "build/bin-fuzz";
  char prog[512], work[512], log[600];
  snprintf(prog, sizeof prog, "%s/fuzz_wal", bin);
  if (access(prog, X_OK) != 0) PS_SKIP("%s is not built (make fuzz-build)", prog);
  const char *dir = ps_test_tmpdir();
  ck_assert(dir[0] == '/');
  snprintf(work, sizeof work, "%s/work", dir);
  snprintf(log, sizeof log, "%s/fuzz.log", dir);
  setenv("FUZZ_WORK", work, 1);
  setenv("FUZZ_BIN", bin, 1);
  setenv("FUZZ_SMOKE_SECONDS", "1", 1);
  unsetenv("PS_TEST_FILTER");
  char *argv[] = {"scripts/fuzz", "smoke", "wal", NULL};
  int rc = ps_test_run(argv, log, 120000);
  char *out = ps_test_read_file(log, NULL);
  ck_assert_msg(rc == 0 && strstr(out, "1 passed, 0 failed"), "scripts/fuzz exit %d: %s", rc, out);
  free(out);
  /* its work files went where it was told */
  snprintf(log, sizeof log, "%s/smoke/wal/log", work);
  ck_assert_int_eq(access(log, R_OK), 0);
}
END_TEST

Suite *fuzz_script_suite(void) {
  Suite *s = suite_create("fuzz_script");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 150);
  tcase_add_test(tc, test_fuzz_work_absolute);
  suite_add_tcase(s, tc);
  return s;
}
