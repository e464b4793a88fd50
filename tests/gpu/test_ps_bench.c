/* The benchmarks' command lines: ps_bench_gpu (tests/gpu/bench_gpu.c),
 * ps_bench_codec (tests/common/bench_codec.c) and scripts/bench*.  Only
 * argument handling runs here, nothing is measured: --help prints the
 * usage and exits 0 without building or running anything; a usage error
 * exits 2 with a message naming the flag and its value; the scripts run
 * from any directory. */
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_test.h"

/* pb_run runs ARGV (at most 30 s) with its output in a fresh file of DIR;
 * returns the exit code and *OUT the output (the caller frees it). */
static int pb_run(const char *dir, char *const argv[], char **out) {
  static int n;
  char log[700];
  snprintf(log, sizeof log, "%s/run%d.log", dir, n++);
  int rc = ps_test_run(argv, log, 30000);
  *out = ps_test_read_file(log, NULL);
  return rc;
}

/* pb_usage_error: PROG ARGS (NULL-terminated, at most 6) exits 2 saying
 * WANT1 and WANT2 (the flag and its value) on its first line, which
 * starts "PROG: ". */
static void pb_usage_error(const char *dir, const char *prog, const char *const *args,
                           const char *want1, const char *want2) {
  char *argv[8] = {(char *)ps_test_bin(prog)};
  char what[256] = "";
  for (int i = 0; args[i]; i++) {
    argv[i + 1] = (char *)args[i];
    snprintf(what + strlen(what), sizeof what - strlen(what), " %s", args[i]);
  }
  char *out;
  int rc = pb_run(dir, argv, &out);
  char head[64];
  snprintf(head, sizeof head, "%s: ", prog);
  size_t l1 = strcspn(out, "\n");
  ck_assert_msg(rc == 2, "%s%s: exit %d\n%s", prog, what, rc, out);
  ck_assert_msg(!strncmp(out, head, strlen(head)) && strstr(out, want1) &&
                    strstr(out, want1) - out < (long)l1 && strstr(out, want2) &&
                    strstr(out, want2) - out < (long)l1,
                "%s%s: the first line should name '%s' and '%s':\n%s", prog, what, want1, want2,
                out);
  free(out);
}

START_TEST(test_bench_gpu_args) {
  const char *dir = ps_test_tmpdir();
  char *out;
  char *help[] = {(char *)ps_test_bin("ps_bench_gpu"), "--help", NULL};
  int rc = pb_run(dir, help, &out);
  ck_assert_msg(rc == 0 && !strncmp(out, "usage: ps_bench_gpu", 19), "--help: exit %d\n%s", rc,
                out);
  ck_assert_msg(strstr(out, "0 to 999"), "--help does not state cuda:N's range:\n%s", out);
  free(out);
  static const struct {
    const char *args[6], *want1, *want2;
  } bad[] = {
      {{"--device", "gpu"}, "--device", "'gpu'"},
      {{"--device", "cuda:abc"}, "--device", "'cuda:abc'"},
      {{"--device", "cuda:01"}, "--device", "'cuda:01'"},
      {{"--device", "cuda:1000"}, "--device", "0 to 999"},
      {{"--iters", "0"}, "--iters", "'0'"},
      {{"--iters", "-3"}, "--iters", "'-3'"},
      {{"--iters", "4294967297"}, "--iters", "'4294967297'"},
      {{"--iters"}, "--iters", "value"},
      {{"--batch", "0"}, "--batch", "'0'"},
      {{"--batch", "12x"}, "--batch", "'12x'"},
      {{"--layers", "5"}, "--layers", "'5'"},
      {{"--device", "cpu", "--threads", "0"}, "--threads", "'0'"},
      {{"--device", "cpu", "--tf32"}, "--tf32", "cpu"},
      {{"--threads", "2"}, "--threads", "'2'"},
      {{"--bogus"}, "unknown argument", "'--bogus'"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    pb_usage_error(dir, "ps_bench_gpu", bad[i].args, bad[i].want1, bad[i].want2);
}
END_TEST

START_TEST(test_bench_codec_args) {
  const char *dir = ps_test_tmpdir();
  char *out;
  char *help[] = {(char *)ps_test_bin("ps_bench_codec"), "--help", NULL};
  int rc = pb_run(dir, help, &out);
  ck_assert_msg(rc == 0 && !strncmp(out, "usage: ps_bench_codec", 21), "--help: exit %d\n%s", rc,
                out);
  free(out);
  /* each of these once wrapped around, ran with 0, or failed without a word */
  static const char *const vals[] = {"0", "abc", "-5", "4294967297", "99999999999999", "",
                                     "67108865", " 64"};
  for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
    const char *args[] = {"--elems", vals[i], NULL};
    char want[64];
    snprintf(want, sizeof want, "'%s'", vals[i]);
    pb_usage_error(dir, "ps_bench_codec", args, "--elems", want);
  }
  pb_usage_error(dir, "ps_bench_codec", (const char *[]){"--elems", NULL}, "--elems", "value");
  pb_usage_error(dir, "ps_bench_codec", (const char *[]){"--x", NULL}, "unknown", "'--x'");
  char *small[] = {(char *)ps_test_bin("ps_bench_codec"), "--elems", "64", NULL};
  rc = pb_run(dir, small, &out);
  ck_assert_msg(rc == 0 && strstr(out, "64-element chunks"), "--elems 64: exit %d\n%s", rc, out);
  free(out);
}
END_TEST

/* pb_script runs `cd DIR && scripts/NAME ARGS` from the repository root
 * (the tests' directory) with PS_BIN unset and a `make` first on PATH
 * that only leaves DIR/made behind; returns the exit code, *OUT the
 * output. */
static int pb_script(const char *dir, const char *name, const char *args, char **out) {
  char root[1024], cmd[8192], fake[1100];
  ck_assert(getcwd(root, sizeof root) != NULL);
  snprintf(fake, sizeof fake, "%.1000s/fakebin", dir);
  int len = snprintf(cmd, sizeof cmd,
           "mkdir -p '%s' && printf '#!/bin/sh\\ntouch %s/made\\nexit 1\\n' > '%s/make' && "
           "chmod +x '%s/make' && cd '%s' && PATH='%s':\"$PATH\" exec '%s/scripts/%s' %s",
           fake, dir, fake, fake, dir, fake, root, name, args);
  ck_assert((size_t)len < sizeof cmd);
  char *argv[] = {"/bin/sh", "-c", cmd, NULL};
  return pb_run(dir, argv, out);
}

/* Every scripts/bench*: --help from another directory prints its header
 * (the first line "NAME: ...") and exits 0, builds nothing, runs nothing. */
START_TEST(test_bench_scripts_help) {
  const char *dir = ps_test_tmpdir();
  DIR *d = opendir("scripts");
  ck_assert(d != NULL);
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, "bench", 5) || strchr(e->d_name, '.')) continue;
    char *out, made[600], head[300];
    int rc = pb_script(dir, e->d_name, "--help", &out);
    snprintf(made, sizeof made, "%s/made", dir);
    snprintf(head, sizeof head, "%s: ", e->d_name);
    ck_assert_msg(rc == 0 && !strncmp(out, head, strlen(head)), "%s --help: exit %d\n%s",
                  e->d_name, rc, out);
    ck_assert_msg(access(made, F_OK) != 0, "%s --help ran make", e->d_name);
    free(out);
    n++;
  }
  closedir(d);
  ck_assert_int_ge(n, 12);
}
END_TEST

/* The scripts cd to the repository first: started from another directory
 * bench_train finds build/bin, or the run's PS_BIN, a path relative to the
 * repository in the sanitizer build's run (it used to say "'build/bin/psd'
 * not built"), and gets as far as its own check of --device. */
START_TEST(test_bench_scripts_any_dir) {
  const char *dir = ps_test_tmpdir();
  char *out;
  int rc = pb_script(dir, "bench_train", "--device gpu", &out);
  ck_assert_msg(rc == 2 && !strstr(out, "not built") && strstr(out, "'gpu'"),
                "bench_train --device gpu from %s: exit %d\n%s", dir, rc, out);
  free(out);
}
END_TEST

Suite *ps_bench_suite(void) {
  Suite *s = suite_create("ps_bench");
  TCase *tc = tcase_create("args");
  tcase_set_timeout(tc, 120);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tc, test_bench_gpu_args);
  tcase_add_test(tc, test_bench_codec_args);
  tcase_add_test(tc, test_bench_scripts_help);
  tcase_add_test(tc, test_bench_scripts_any_dir);
  suite_add_tcase(s, tc);
  return s;
}
