/* ps_test_crash_loop: the long crash loop of durability sync (make
 * test-long): a shard under pushes SIGKILLed and restarted ITERS times
 * (default 60), every acknowledged push checked after each restart
 * (tests/integration/test_durability.c).
 *
 *   ps_test_crash_loop [ITERS]       (or PS_CRASH_ITERS=ITERS, as make test-long sets)
 *
 * Prints Check's summary and the runner's "N passed, N failed" line. */
#include <stdio.h>
#include <stdlib.h>

#include "ps_test.h"
#include "integration/test_durability.h"

static int cl_iters = 60;
int *ps_test_skip_counter; /* ps_test.c's; this runner counts no skips */

START_TEST(test_crash_loop_long) { ps_test_crash_loop(cl_iters); }
END_TEST

int main(int argc, char **argv) {
  const char *env = getenv("PS_CRASH_ITERS");
  if (env && *env) cl_iters = atoi(env);
  if (cl_iters <= 0 || argc > 2 || (argc == 2 && (cl_iters = atoi(argv[1])) <= 0)) {
    fprintf(stderr, "usage: ps_test_crash_loop [ITERATIONS]\n");
    return 2;
  }
  Suite *s = suite_create("psd_crash_loop");
  TCase *tc = tcase_create("long");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 60 + 15 * cl_iters);
  tcase_add_test(tc, test_crash_loop_long);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr), run = srunner_ntests_run(sr);
  srunner_free(sr);
  printf("%d passed, %d failed\n", run - failed, failed);
  return failed ? 1 : 0;
}
