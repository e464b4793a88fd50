/* ps_proc: the programs' start-up (ps_proc_start) against real
 * processes.
 *
 *  - psd started with stdout and stderr closed (`psd >&- 2>&-`) stops
 *    cleanly at SIGTERM: it aborted (exit 134) in libuv's uv__close, whose
 *    epoll descriptor had landed on fd 1.
 *  - psd and psw started with SIGTERM, SIGINT and SIGHUP blocked (and
 *    psd with SIGTERM ignored) still stop at SIGTERM, and psctl dies by it:
 *    the mask they inherited kept the signal pending for good.
 *  - psd and psw whose stderr is a full pipe nobody reads go on (psd
 *    serves, psw trains): the lines stderr cannot take are dropped and
 *    counted in the next line it takes.
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

/* pp_full_fifo makes the FIFO DIR/stderr.fifo (its path into FIFO, 700
 * bytes) and fills it: returns the test's end of it (non-blocking), the
 * reader that never reads until the test drains it.  A program started
 * with 2>FIFO opens a blocking description of its own. */
static int pp_full_fifo(const char *dir, char *fifo) {
  snprintf(fifo, 700, "%s/stderr.fifo", dir);
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  int rd = open(fifo, O_RDWR | O_NONBLOCK);
  int fill = open(fifo, O_WRONLY | O_NONBLOCK);
  ck_assert(rd >= 0 && fill >= 0);
  static char junk[4096];
  memset(junk, 'x', sizeof junk);
  while (write(fill, junk, sizeof junk) > 0) continue;
  close(fill);
  return rd;
}

/* psd whose stderr is a full pipe nobody reads (a stalled journald) still
 * serves and stops at SIGTERM: its first log line blocked its start, and
 * a blocked write held the event loop that SIGTERM needs.  The lines it
 * could not write are counted in the next one it writes. */
START_TEST(test_proc_full_stderr) {
  char dir[512], yaml[600], fifo[700];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp[1], cp[1];
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 1, NULL, gp, cp));
  int rd = pp_full_fifo(dir, fifo);
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

/* pp_lines counts the lines of PATH (0 when it cannot be read yet). */
static int pp_lines(const char *path) {
  FILE *f = fopen(path, "r");
  int n = 0, c;
  if (!f) return 0;
  while ((c = getc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

/* pp_drain_until reads FD (non-blocking) into BUF (CAP bytes, kept
 * NUL-terminated; the oldest bytes go when it is full) until BUF holds
 * WANT or MS have passed; returns 1 when it does. */
static int pp_drain_until(int fd, char *buf, size_t cap, const char *want, int ms) {
  size_t got = strlen(buf);
  for (int64_t end = ps_test_now_ms() + ms; ps_test_now_ms() < end;) {
    if (got + 1 >= cap) { /* keep the last half: WANT may straddle the cut */
      memmove(buf, buf + got - cap / 2, cap / 2);
      got = cap / 2;
    }
    ssize_t r = read(fd, buf + got, cap - 1 - got);
    if (r > 0) got += (size_t)r;
    buf[got] = '\0';
    if (strstr(buf, want)) return 1;
    if (r <= 0) usleep(20 * 1000);
  }
  return 0;
}

/* psw whose stderr is a full pipe nobody reads keeps training: its
 * progress lines (the first step's, every epoch's) went out with stdio's
 * blocking writes, so the first of them held the worker at its first step
 * until someone read; now they follow the log's rule (dropped, counted).
 * Epochs go by (the metrics file grows) while the pipe stays full; once
 * it is drained, the next line psw writes counts those it dropped.  A
 * job of 100000 epochs, stopped by SIGTERM once the count came: its end
 * would leave no line to carry it. */
START_TEST(test_proc_psw_full_stderr) {
  char dir[512], yaml[600], fifo[700], csv[600], metrics[600], out[600], extra[1600];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  snprintf(csv, sizeof csv, "%s/train.csv", dir);
  FILE *f = fopen(csv, "w");
  ck_assert(f != NULL);
  for (int i = 0; i < 96; i++) { /* 3 steps of 32: three classes, 4 features */
    fprintf(f, "%d", i % 3);
    for (int j = 0; j < 4; j++) fprintf(f, ",%d", j == i % 3);
    fputc('\n', f);
  }
  ck_assert(fclose(f) == 0);
  snprintf(extra, sizeof extra,
           "workers:\n  count: 1\n  retry_ms: 10000\n"
           "training:\n  model: m\n  epochs: 1\n  batch_size: 32\n"
           "data:\n  format: csv\n  train_images: %s\n  test_images: %s\n  scale: 1\n"
           "  partitions: 1\n",
           csv, csv);
  int gp[1], cp[1];
  pid_t shard;
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 1, extra, gp, cp));
  ps_test_start_shards(yaml, dir, 1, gp, cp, &shard);
  ps_test_submit_mlp(dir, yaml, "4,8,3", "0.01", "asp", NULL);
  int rd = pp_full_fifo(dir, fifo);
  snprintf(metrics, sizeof metrics, "%s/metrics.csv", dir);
  snprintf(out, sizeof out, "%s/psw.out", dir); /* its stdout: the JSON line */
  char *argv[] = {"/bin/sh", "-c",
                  "exec \"$0\" --config \"$1\" --rank 0 --workers 1 --epochs 100000 "
                  "--metrics-csv \"$2\" 2>\"$3\"",
                  (char *)ps_test_bin("psw"), yaml, metrics, fifo, NULL};
  pid_t pid = ps_test_spawn(argv, out, NULL);
  /* three epochs (a header line, then a row each) with nobody reading */
  int64_t end = ps_test_now_ms() + 20000;
  int st = -1;
  while (pp_lines(metrics) < 4 && ps_test_now_ms() < end &&
         (st = ps_test_wait_pid(pid, 50)) == -1)
    continue;
  int rows = pp_lines(metrics);
  if (rows < 4) { /* held by its stderr (or ended): not stopped by SIGTERM then */
    if (st == -1) st = ps_test_stop(pid, SIGKILL, 5000);
    ck_abort_msg("psw with a full stderr trained %d epochs in 20 s (wait status 0x%x; see %s)",
                 rows ? rows - 1 : 0, st, out);
  }
  static char buf[1 << 16];
  buf[0] = '\0';
  int said = pp_drain_until(rd, buf, sizeof buf, "log lines dropped", 10000);
  pp_stops(pid, 128 + SIGTERM, "psw with a full stderr");
  close(rd);
  ps_test_stop(shard, SIGTERM, 10000);
  ck_assert_msg(said, "no count of the dropped lines once stderr was drained: ...%s",
                buf + (strlen(buf) > 2000 ? strlen(buf) - 2000 : 0));
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
  tcase_add_test(tc, test_proc_psw_full_stderr);
  suite_add_tcase(s, tc);
  return s;
}
