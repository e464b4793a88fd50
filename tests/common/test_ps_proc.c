/* ps_proc: the programs' start-up (ps_proc_start) against real
 * processes.
 *
 *  - psd started with stdout and stderr closed (`psd >&- 2>&-`) stops
 *    cleanly at SIGTERM: it aborted (exit 134) in libuv's uv__close, whose
 *    epoll descriptor had landed on fd 1.
 *  - psd and psw started with SIGTERM, SIGINT and SIGHUP blocked (and
 *    psd with SIGTERM ignored) still stop at SIGTERM, and psctl dies by it:
 *    the mask they inherited kept the signal pending for good.
 *
 * Every process started is recorded (ps_test_procs_setup) and stopped by
 * PID. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps_test.h"

/* pp_stops sends SIGTERM to PID and checks that it ends within 15 s with
 * exit status WANT (or by signal -WANT when WANT < 0); WHO names it. */
static void pp_stops(pid_t pid, int want, const char *who) {
  kill(pid, SIGTERM);
  int st = ps_test_wait_pid(pid, 15000);
  if (st == -1) {
    ps_test_stop(pid, SIGKILL, 5000);
    ck_abort_msg("%s did not stop within 15 s of SIGTERM", who);
  }
  if (want >= 0)
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == want, "%s: wait status 0x%x, want exit %d",
                  who, st, want);
  else
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == -want, "%s: wait status 0x%x, want signal %d",
                  who, st, -want);
}

START_TEST(test_proc_closed_std_fds) {
  const char *dir = ps_test_tmpdir();
  int gp[1], cp[1];
  char yaml[600];
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 1, NULL, gp, cp));
  char *argv[] = {"/bin/sh", "-c", "exec \"$0\" --config \"$1\" --shard 0 >&- 2>&-",
                  (char *)ps_test_bin("psd"), yaml, NULL};
  pid_t pid = ps_test_spawn(argv, NULL, NULL);
  ck_assert_msg(ps_test_wait_port(gp[0], 15000) == 0, "psd with fds 1 and 2 closed did not listen");
  pp_stops(pid, 0, "psd started with fds 1 and 2 closed");
}
END_TEST

/* pp_spawn_blocked starts ARGV with SIGTERM, SIGINT and SIGHUP blocked
 * (and SIGTERM ignored when IGNORE), as a careless supervisor would;
 * this test process's own mask and disposition are restored. */
static pid_t pp_spawn_blocked(char *const argv[], const char *log, int ignore) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGHUP);
  struct sigaction ign = {.sa_handler = SIG_IGN}, was;
  sigemptyset(&ign.sa_mask);
  ck_assert_int_eq(sigprocmask(SIG_BLOCK, &block, &old), 0);
  if (ignore) sigaction(SIGTERM, &ign, &was);
  pid_t pid = ps_test_spawn(argv, log, NULL);
  if (ignore) sigaction(SIGTERM, &was, NULL);
  sigprocmask(SIG_SETMASK, &old, NULL);
  return pid;
}

START_TEST(test_proc_blocked_signals) {
  char dir[512], yaml[600], log[700], y2[600], extra[900];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp[1], cp[1];
  /* a training set psw can read (it checks before it waits for the shard) */
  snprintf(log, sizeof log, "%s/d.csv", dir);
  FILE *csv = fopen(log, "w");
  ck_assert_ptr_nonnull(csv);
  fputs("0,1,2\n1,2,3\n", csv);
  fclose(csv);
  snprintf(extra, sizeof extra, "data:\n  format: csv\n  train_images: %s\n", log);
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 1, extra, gp, cp));
  snprintf(log, sizeof log, "%s/psd.log", dir);
  char *psd[] = {(char *)ps_test_bin("psd"), "--config", yaml, "--shard", "0", NULL};
  pid_t pid = pp_spawn_blocked(psd, log, 1);
  ck_assert_msg(ps_test_wait_port(gp[0], 15000) == 0, "psd did not listen, see %s", log);
  pp_stops(pid, 0, "psd started with SIGTERM blocked and ignored");

  /* psw, its shard down: it waits for it (workers.retry_ms) until stopped */
  snprintf(log, sizeof log, "%s/psw.log", dir);
  char *psw[] = {(char *)ps_test_bin("psw"), "--config", yaml, "--model", "m", NULL};
  pid = pp_spawn_blocked(psw, log, 0);
  usleep(1000 * 1000);
  pp_stops(pid, 128 + SIGTERM, "psw started with SIGTERM blocked");

  /* psctl, its shard a listener that never answers: SIGTERM's default action */
  char d2[512];
  snprintf(d2, sizeof d2, "%s", ps_test_tmpdir());
  snprintf(y2, sizeof y2, "%s", ps_test_cluster_yaml(d2, 1, NULL, gp, NULL));
  int lfd = ps_test_listen(gp[0], NULL);
  ck_assert_int_ge(lfd, 0);
  snprintf(log, sizeof log, "%s/psctl.log", dir);
  char *psctl[] = {(char *)ps_test_bin("psctl"), "status", "--config", y2, "--timeout", "20000",
                   NULL};
  pid = pp_spawn_blocked(psctl, log, 0);
  usleep(500 * 1000);
  pp_stops(pid, -SIGTERM, "psctl started with SIGTERM blocked");
  close(lfd);
}
END_TEST

/* psd whose stderr is a full pipe nobody reads (a stalled journald) still
 * serves and stops at SIGTERM: its first log line blocked its start, and
 * a blocked write held the event loop that SIGTERM needs.  The lines it
 * could not write are counted in the next one it writes. */
START_TEST(test_proc_full_stderr) {
  char dir[512], yaml[600], fifo[700];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp[1], cp[1];
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 1, NULL, gp, cp));
  snprintf(fifo, sizeof fifo, "%s/stderr.fifo", dir);
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  int rd = open(fifo, O_RDWR | O_NONBLOCK); /* the reader that never reads (yet) */
  int fill = open(fifo, O_WRONLY | O_NONBLOCK); /* its own description: psd's stays blocking */
  ck_assert(rd >= 0 && fill >= 0);
  static char junk[4096];
  memset(junk, 'x', sizeof junk);
  while (write(fill, junk, sizeof junk) > 0) continue;
  close(fill);
  char *argv[] = {"/bin/sh", "-c", "exec \"$0\" --config \"$1\" --shard 0 2>\"$2\"",
                  (char *)ps_test_bin("psd"), yaml, fifo, NULL};
  pid_t pid = ps_test_spawn(argv, NULL, NULL);
  ck_assert_msg(ps_test_wait_port(gp[0], 15000) == 0, "psd with a full stderr did not listen");
  /* a line it must drop while the pipe is full: its port can listen before
   * it logs that it serves, so that alone may come after the drain below */
  kill(pid, SIGHUP);
  usleep(500 * 1000);
  char buf[4096];
  while (read(rd, buf, sizeof buf) > 0) continue; /* room again: the next line comes with the count */
  kill(pid, SIGHUP); /* it logs that there is nothing to reload */
  usleep(500 * 1000);
  pp_stops(pid, 0, "psd with a full stderr");
  size_t got = 0;
  ssize_t r;
  while (got + 1 < sizeof buf && (r = read(rd, buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)r;
  buf[got] = '\0';
  close(rd);
  ck_assert_msg(strstr(buf, "log lines dropped: stderr took no more"), "stderr after: %s", buf);
}
END_TEST

Suite *ps_proc_suite(void) {
  Suite *s = suite_create("ps_proc");
  TCase *tc = tcase_create("start");
  tcase_set_timeout(tc, 90);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tc, test_proc_closed_std_fds);
  tcase_add_test(tc, test_proc_blocked_signals);
  tcase_add_test(tc, test_proc_full_stderr);
  suite_add_tcase(s, tc);
  return s;
}
