/* test_durability: the crash loop of durability sync, shared by the
 * psd_durability suite (a few iterations in make test) and
 * build/bin/ps_test_crash_loop (make test-long). */
#ifndef TEST_DURABILITY_H
#define TEST_DURABILITY_H

#include <stdint.h>
#include <sys/types.h>

/* ps_test_crash_loop runs ITERS kill-restart-verify iterations against a
 * real psd under durability sync (see test_durability.c); fails the
 * running Check test on the first violation.  Needs the process fixture
 * (ps_test_procs_setup). */
void ps_test_crash_loop(int iters);

/* ps_test_dur_start starts shard 0 of YAML (ENV: more environment, may
 * be NULL) logging to LOG and waits for both its ports GP and CP. */
pid_t ps_test_dur_start(const char *yaml, const char *log, int gp, int cp, char **env);

/* ps_test_dur_replayed sums the records LOG's "redo log replayed: N
 * records" lines count. */
uint64_t ps_test_dur_replayed(const char *log);

#endif
