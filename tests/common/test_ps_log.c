/* Tests for ps_log's list text (ps_log_u32s), escaping (ps_log_escape)
 * and its journald check. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* JOURNAL_STREAM that names another stream than stderr (inherited, stderr
 * sent to a file) leaves lines as for a file: timestamp, program, level;
 * naming stderr's device and inode, lines are journald's "<N>text". */
START_TEST(test_journal_stream_checked) {
  char path[600];
  snprintf(path, sizeof path, "%s/log", ps_test_tmpdir());
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) { /* a child: the runner's own stderr stays as it is */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    struct stat st;
    if (fd < 0 || dup2(fd, STDERR_FILENO) < 0 || fstat(STDERR_FILENO, &st) < 0) _exit(1);
    setenv("JOURNAL_STREAM", "8:99999", 1);
    ps_log_init("tlog", LOG_INFO);
    ps_info("to a file");
    char v[64];
    snprintf(v, sizeof v, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", v, 1);
    ps_log_init("tlog", LOG_INFO);
    ps_info("to the journal");
    _exit(0);
  }
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  char *text = ps_test_read_file(path, NULL);
  ck_assert_ptr_nonnull(text);
  char *nl = strchr(text, '\n');
  ck_assert_ptr_nonnull(nl);
  *nl = '\0';
  ck_assert_msg(text[0] != '<' && strstr(text, " tlog[") && strstr(text, " info: to a file"),
                "first line: %s", text);
  ck_assert_str_eq(nl + 1, "<6>to the journal\n");
  free(text);
}
END_TEST

Suite *ps_log_suite(void) {
  Suite *s = suite_create("ps_log");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_u32s);
  tcase_add_test(tc, test_escape);
  tcase_add_test(tc, test_journal_stream_checked);
  suite_add_tcase(s, tc);
  return s;
}
