/* test_durability: the crash loop of durability sync, shared by the
 * psd_durability suite (a few iterations in make test) and
 * build/bin/ps_test_crash_loop (make test-long). */
#ifndef TEST_DURABILITY_H
#define TEST_DURABILITY_H

/* ps_test_crash_loop runs ITERS kill-restart-verify iterations against a
 * real psd under durability sync (see test_durability.c); fails the
 * running Check test on the first violation.  Needs the process fixture
 * (ps_test_procs_setup). */
void ps_test_crash_loop(int iters);

#endif
