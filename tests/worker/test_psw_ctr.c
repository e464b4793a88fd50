/* Tests for psw_ctr (the Criteo TSV reader) and scripts/gen_ctr: values
 * of a hand-written log (missing values, negative integers, upper-case
 * hex, CRLF, blank lines, gzip, limit), bad lines with path, line and
 * field in the error, and a generated log read back whole. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ps_test.h"
#include "psw_ctr.h"

/* line builds a log line: LABEL, 13 integers (I, or "" where I is NULL),
 * 26 categoricals (C) joined by tabs into BUF. */
static const char *good_log =
    "1\t5\t-3\t\t0\t1\t2\t3\t4\t5\t6\t7\t8\t1000000\t"
    "68fd1e64\t\t0A\tffffffffffffffff\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13\t14\t15\t16\t17\t18\t19\t20\t21\t22\r\n"
    "\n"
    "0\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n";

static char *write_tmp(const char *name, const char *text, int gz) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", ps_test_tmpdir(), name);
  if (gz) {
    gzFile f = gzopen(path, "wb");
    ck_assert(f != NULL);
    ck_assert_int_eq(gzputs(f, text), (int)strlen(text));
    gzclose(f);
  } else {
    ps_test_write_file(path, text);
  }
  return path;
}

START_TEST(test_ctr_values) {
  for (int gz = 0; gz < 2; gz++) {
    const char *path = write_tmp(gz ? "a.tsv.gz" : "a.tsv", good_log, gz);
    psw_ctr c;
    ps_errbuf eb;
    ck_assert_msg(psw_ctr_load(&c, path, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_uint_eq(c.n, 2);
    ck_assert_int_eq(c.label[0], 1);
    ck_assert_int_eq(c.label[1], 0);
    ck_assert_float_eq_tol(c.dense[0], log1pf(5), 1e-6);
    ck_assert_float_eq_tol(c.dense[1], -log1pf(3), 1e-6);
    ck_assert_float_eq(c.dense[2], 0);
    ck_assert_float_eq_tol(c.dense[12], log1pf(1e6f), 1e-5);
    ck_assert(c.keys[0] == psw_ctr_key(0, 0x68fd1e64));
    ck_assert(c.keys[1] == psw_ctr_key(1, UINT64_MAX));
    ck_assert(c.keys[2] == psw_ctr_key(2, 10));
    ck_assert(c.keys[3] == psw_ctr_key(3, UINT64_MAX - 0)); /* all ones: as "missing" by design */
    ck_assert(c.keys[4] == psw_ctr_key(4, 1));
    ck_assert(c.keys[4] != psw_ctr_key(5, 1)); /* fields never share keys */
    for (int j = 0; j < PSW_CTR_DENSE; j++) ck_assert_float_eq(c.dense[PSW_CTR_DENSE + j], 0);
    for (int f = 0; f < PSW_CTR_FIELDS; f++)
      ck_assert(c.keys[PSW_CTR_FIELDS + f] == psw_ctr_key((uint32_t)f, UINT64_MAX));
    psw_ctr_release(&c);
    ck_assert_msg(psw_ctr_load(&c, path, 1, &eb) == 0, "%s", eb.msg);
    ck_assert_uint_eq(c.n, 1);
    psw_ctr_release(&c);
    psw_ctr_release(&c); /* idempotent */
  }
}
END_TEST

static const struct bad_line {
  const char *line;
  const char *msg; /* after "PATH:" */
} bad_lines[] = {
    {"2\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n",
     "2: field 1 (label): expected 0 or 1, got '2'"},
    {"1\t1.5\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n",
     "2: field 2 (integer I1): expected an integer, got '1.5'"},
    {"1\t\t\t\t\t\t\t\t\t\t\t\t\t99999999999999999999\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n",
     "2: field 14 (integer I13): expected an integer, got '99999999999999999999'"},
    {"1\t\t\t\t\t\t\t\t\t\t\t\t\t\tzz\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n",
     "2: field 15 (categorical C1): expected 1-16 hex digits, got 'zz'"},
    {"1\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t00000000000000001\n",
     "2: field 40 (categorical C26): expected 1-16 hex digits, got '00000000000000001'"},
    /* a control byte shown as \xNN, never raw to the terminal */
    {"\x1b[2J\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n",
     "2: field 1 (label): expected 0 or 1, got '\\x1b[2J'"},
    {"1\t2\t3\n", "2: 3 tab-separated fields, expected 40 (label, 13 integer, 26 categorical)"},
    {"1\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n",
     "2: more than 40 tab-separated fields"},
};

START_TEST(test_ctr_bad_line) {
  const struct bad_line *b = &bad_lines[_i];
  char text[512];
  snprintf(text, sizeof text, "0\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n%s", b->line);
  const char *path = write_tmp("bad.tsv", text, 0);
  psw_ctr c;
  ps_errbuf eb;
  ck_assert_int_eq(psw_ctr_load(&c, path, 0, &eb), PS_EFORMAT);
  char want[1024];
  snprintf(want, sizeof want, "%s:%s", path, b->msg);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_ptr_null(c.label);
  ck_assert_int_eq(psw_ctr_load(&c, "/nonexistent/x.tsv", 0, &eb), PS_EIO);
  ck_assert(strstr(eb.msg, "/nonexistent/x.tsv: cannot open") == eb.msg);
}
END_TEST

/* A UTF-8 byte order mark before line 1 (a spreadsheet's export) is
 * skipped, as CSV skips it: it read as the label, "expected 0 or 1, got
 * '<BOM>1'" with the mark invisible.  A NUL byte is refused where it is:
 * it ended the line, so "7<NUL>junk" as the last field read as 7. */
START_TEST(test_ctr_bom_and_nul) {
  char text[600];
  snprintf(text, sizeof text, "\xef\xbb\xbf%s", good_log);
  const char *path = write_tmp("bom.tsv", text, 0);
  psw_ctr c;
  ps_errbuf eb;
  ck_assert_msg(psw_ctr_load(&c, path, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(c.n, 2);
  ck_assert_int_eq(c.label[0], 1);
  psw_ctr_release(&c);
  /* line 3's last field "7<NUL>junk" */
  int n = snprintf(text, sizeof text, "%s", good_log) - 1; /* before its '\n' */
  memcpy(text + n, "7\0junk\n", 8);
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(text, 1, (size_t)n + 8, f), (size_t)n + 8);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(psw_ctr_load(&c, path, 0, &eb), PS_EFORMAT);
  char want[700];
  snprintf(want, sizeof want, "%s:3: a NUL byte at column 42 (a Criteo log is text: a binary or "
           "UTF-16 file?)", path);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_ptr_null(c.label);
}
END_TEST

/* A gzipped log cut anywhere past its gzip header, or with a byte of its
 * deflate stream changed, is an error naming the file and what is wrong,
 * never a shorter data set nor a misleading "N tab-separated fields". */
START_TEST(test_ctr_truncated_gzip) {
  static char text[300 * 400];
  char *p = text;
  for (int i = 0; i < 300; i++) {
    p += sprintf(p, "%d\t%d", i & 1, i * 7919);
    for (int f = 1; f < PSW_CTR_DENSE; f++) p += sprintf(p, "\t%d", (i * f) % 97);
    for (int f = 0; f < PSW_CTR_FIELDS; f++)
      p += sprintf(p, "\t%x", (unsigned)(i * 2654435761u >> f));
    *p++ = '\n';
  }
  *p = 0;
  const char *path = write_tmp("whole.tsv.gz", text, 1);
  size_t n = 0;
  char *gz = ps_test_read_file(path, &n);
  psw_ctr c;
  ps_errbuf eb;
  ck_assert_msg(psw_ctr_load(&c, path, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(c.n, 300);
  psw_ctr_release(&c);
  char cut[512];
  snprintf(cut, sizeof cut, "%s/cut.tsv.gz", ps_test_tmpdir());
  size_t at[] = {12, n / 7, n / 3, n / 2, n - 40, n - 9, n - 4, n - 1};
  for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
    FILE *f = fopen(cut, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(gz, 1, at[k], f), at[k]);
    fclose(f);
    int rc = psw_ctr_load(&c, cut, 0, &eb);
    ck_assert_msg(rc == PS_EFORMAT, "cut at %zu of %zu bytes: rc %d, %llu samples (%s)", at[k], n,
                  rc, (unsigned long long)c.n, rc ? eb.msg : "");
    ck_assert_msg(strstr(eb.msg, cut) == eb.msg && strstr(eb.msg, "truncated or corrupt gzip"),
                  "cut at %zu: %s", at[k], eb.msg);
    ck_assert_ptr_null(c.label);
  }
  gz[n / 2] ^= 0x55; /* a changed byte: a bad stream or a bad CRC */
  FILE *f = fopen(cut, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(gz, 1, n, f), n);
  fclose(f);
  ck_assert_int_eq(psw_ctr_load(&c, cut, 0, &eb), PS_EFORMAT);
  ck_assert_msg(strstr(eb.msg, cut) == eb.msg && strstr(eb.msg, "truncated or corrupt gzip"), "%s",
                eb.msg);
  free(gz);
}
END_TEST

/* scripts/gen_ctr writes what psw_ctr reads: 3000 lines, gzipped, with
 * Zipf ids (a few ids cover many lines) and its summary line. */
START_TEST(test_gen_ctr_round_trip) {
  const char *dir = ps_test_tmpdir();
  char out[512], log[512];
  snprintf(out, sizeof out, "%s/gen.tsv.gz", dir);
  snprintf(log, sizeof log, "%s/gen.log", dir);
  char *argv[] = {"scripts/gen_ctr", "-o", out, "--lines", "3000", "--ids", "100000", "--gzip", NULL};
  ck_assert_int_eq(ps_test_run(argv, log, 120000), 0);
  char *summary = ps_test_read_file(log, NULL);
  const char *line = ps_test_last_line(summary);
  ck_assert_int_eq((int)ps_test_json_num(line, "lines"), 3000);
  double bayes = ps_test_json_num(line, "bayes_logloss"), share = ps_test_json_num(line, "positive_share");
  ck_assert(bayes > 0.05 && bayes < 0.69);
  psw_ctr c;
  ps_errbuf eb;
  ck_assert_msg(psw_ctr_load(&c, out, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(c.n, 3000);
  uint64_t pos = 0;
  for (uint64_t i = 0; i < c.n; i++) pos += (uint64_t)c.label[i];
  ck_assert(fabs((double)pos / 3000 - share) < 1e-3);
  /* Zipf: field 0's most frequent key covers many lines */
  uint64_t best = 0;
  for (uint64_t i = 0; i < 200; i++) {
    uint64_t k = c.keys[i * PSW_CTR_FIELDS], cnt = 0;
    for (uint64_t j = 0; j < c.n; j++) cnt += c.keys[j * PSW_CTR_FIELDS] == k;
    best = cnt > best ? cnt : best;
  }
  ck_assert_msg(best > 30, "the most frequent id of field 0 is on %llu of 3000 lines",
                (unsigned long long)best);
  psw_ctr_release(&c);
  free(summary);
}
END_TEST

/* A gzipped log of two gzip members (`cat a.gz b.gz`) reads as one, as
 * zcat reads it; bytes after the last member that are no gzip member are
 * refused naming the file (zlib's gzFile dropped them unread: a log with
 * garbage appended trained as whole). */
START_TEST(test_ctr_gzip_members) {
  char path[512], *one = write_tmp("one.tsv.gz", good_log, 1);
  snprintf(path, sizeof path, "%s", one);
  size_t n;
  char *gz = ps_test_read_file(path, &n);
  FILE *f = fopen(path, "ab");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(gz, 1, n, f), n);
  ck_assert_int_eq(fclose(f), 0);
  free(gz);
  psw_ctr c;
  ps_errbuf eb;
  ck_assert_msg(psw_ctr_load(&c, path, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(c.n, 4);
  ck_assert_int_eq(c.label[2], 1);
  psw_ctr_release(&c);
  f = fopen(path, "ab");
  ck_assert_ptr_nonnull(f);
  ck_assert(fputs("0\t1\n", f) >= 0);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(psw_ctr_load(&c, path, 0, &eb), PS_EFORMAT);
  ck_assert_msg(strstr(eb.msg, path) == eb.msg &&
                strstr(eb.msg, ": data after the end of the gzip stream that is not another "
                               "gzip member"), "%s", eb.msg);
  ck_assert_ptr_null(c.label);
}
END_TEST

Suite *psw_ctr_suite(void) {
  Suite *s = suite_create("psw_ctr");
  TCase *tc = tcase_create("reader");
  tcase_set_timeout(tc, 150);
  tcase_add_test(tc, test_ctr_values);
  tcase_add_loop_test(tc, test_ctr_bad_line, 0, (int)(sizeof bad_lines / sizeof bad_lines[0]));
  tcase_add_test(tc, test_ctr_bom_and_nul);
  tcase_add_test(tc, test_ctr_truncated_gzip);
  tcase_add_test(tc, test_ctr_gzip_members);
  tcase_add_test(tc, test_gen_ctr_round_trip);
  suite_add_tcase(s, tc);
  return s;
}
