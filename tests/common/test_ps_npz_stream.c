/* Tests for ps_npz_stream: members written in pieces with their first
 * dimension decided at the end, uint64 and float32 members, zip64 forced
 * on small members by a lowered threshold; every archive is checked by
 * Python's zipfile (structure, zip64 records, CRC-32) and its NPY members
 * parsed there (python3 without numpy: the header dict and the data), and
 * the float32-only archive is read back by ps_npz_read.  Bad use: a
 * member begun while one is open, rows that are not whole, a duplicate
 * name; an aborted stream leaves no file, nor does a close after a
 * member that failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ps_npz.h"
#include "ps_npz_stream.h"
#include "npz_check.h"
#include "ps_test.h"

/* The checker prints "NAME DESCR SHAPE v0 v1 ..." per member, in order. */
static const char npz_check_py[] =
    "import ast, struct, sys, zipfile\n"
    "z = zipfile.ZipFile(sys.argv[1])\n"
    "assert z.testzip() is None\n"
    "for i in z.infolist():\n"
    "    b = z.read(i)\n"
    "    assert b[:8] == b'\\x93NUMPY\\x01\\x00'\n"
    "    hl = struct.unpack('<H', b[8:10])[0]\n"
    "    assert (10 + hl) % 64 == 0\n"
    "    h = ast.literal_eval(b[10:10 + hl].decode())\n"
    "    d = b[10 + hl:]\n"
    "    f = {'<u8': 'Q', '<f4': 'f'}[h['descr']]\n"
    "    n = len(d) // struct.calcsize(f)\n"
    "    v = struct.unpack('<%d%s' % (n, f), d)\n"
    "    p = 1\n"
    "    for s in h['shape']: p *= s\n"
    "    assert p == n, (h, n)\n"
    "    print(i.filename, h['descr'], h['shape'], ' '.join(('%d' if f == 'Q' else '%g') % x for x in v))\n";

/* ps_test_npz_py: see npz_check.h. */
char *ps_test_npz_py(const char *dir, const char *path) {
  char py[700], out[700], cmd[2200];
  snprintf(py, sizeof py, "%s/check.py", dir);
  snprintf(out, sizeof out, "%s/check.out", dir);
  ps_test_write_file(py, npz_check_py);
  snprintf(cmd, sizeof cmd, "python3 '%s' '%s' > '%s' 2>&1", py, path, out);
  int st = system(cmd);
  char *s = ps_test_read_file(out, NULL);
  ck_assert_msg(st == 0, "python's zipfile refused %s: %s", path, s);
  return s;
}

/* npz_two writes keys (u8, 5) and rows (f4, 5 x 3) in pieces to PATH. */
static void npz_two(const char *path, uint64_t zip64_at) {
  ps_npz_stream *z;
  ps_errbuf eb;
  ck_assert_msg(ps_npz_stream_open(&z, path, &eb) == 0, "%s", eb.msg);
  if (zip64_at) ps_npz_stream_set_zip64_at(z, zip64_at);
  uint64_t keys[5] = {7, 1ull << 40, 3, 0, 12345678901ull}, ks[1] = {0}, rs[2] = {0, 3};
  float rows[15];
  for (int i = 0; i < 15; i++) rows[i] = 0.5f * (float)i - 2;
  ck_assert_int_eq(ps_npz_stream_begin(z, "emb.keys", PS_NPZ_U8, 1, ks, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_write(z, keys, 2, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_write(z, keys + 2, 3, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_end(z, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_begin(z, "emb.rows", PS_NPZ_F4, 2, rs, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_write(z, rows, 6, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_write(z, rows + 6, 0, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_write(z, rows + 6, 9, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_end(z, &eb), 0);
  ck_assert_msg(ps_npz_stream_close(z, &eb) == 0, "%s", eb.msg);
}

static const char npz_two_want[] =
    "emb.keys.npy <u8 (5,) 7 1099511627776 3 0 12345678901\n"
    "emb.rows.npy <f4 (5, 3) -2 -1.5 -1 -0.5 0 0.5 1 1.5 2 2.5 3 3.5 4 4.5 5\n";

START_TEST(test_npz_stream_members) {
  const char *dir = ps_test_tmpdir();
  char path[700];
  snprintf(path, sizeof path, "%s/t.npz", dir);
  npz_two(path, 0);
  char *out = ps_test_npz_py(dir, path);
  ck_assert_str_eq(out, npz_two_want);
  free(out);
  /* zip64 forced for every size and offset: the same content */
  npz_two(path, 1);
  out = ps_test_npz_py(dir, path);
  ck_assert_str_eq(out, npz_two_want);
  free(out);
  size_t len;
  char *bytes = ps_test_read_file(path, &len);
  ck_assert_msg(memmem(bytes, len, "PK\x06\x06", 4) && memmem(bytes, len, "PK\x06\x07", 4),
                "no zip64 end records");
  free(bytes);
  /* a float32-only stream reads back with ps_npz_read */
  ps_npz_stream *z;
  ps_errbuf eb;
  ck_assert_int_eq(ps_npz_stream_open(&z, path, &eb), 0);
  uint64_t sh[2] = {0, 2};
  float v[6] = {1, 2, 3, 4, 5, 6};
  ck_assert_int_eq(ps_npz_stream_begin(z, "w", PS_NPZ_F4, 2, sh, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_write(z, v, 6, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_end(z, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_close(z, &eb), 0);
  ps_npz r;
  ck_assert_msg(ps_npz_read(&r, path, &eb) == 0, "%s", eb.msg);
  const ps_npz_entry *e = ps_npz_find(&r, "w");
  ck_assert_ptr_nonnull(e);
  ck_assert_uint_eq(e->ndim, 2);
  ck_assert_uint_eq(e->shape[0], 3);
  ck_assert_int_eq(memcmp(e->data, v, sizeof v), 0);
  ps_npz_release(&r);
  /* a replaced file keeps its mode (a 0440 file came back 0644) */
  ck_assert_int_eq(chmod(path, 0440), 0);
  ck_assert_int_eq(ps_npz_stream_open(&z, path, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_close(z, &eb), 0);
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0440);
}
END_TEST

START_TEST(test_npz_stream_bad_use) {
  const char *dir = ps_test_tmpdir();
  char path[700];
  snprintf(path, sizeof path, "%s/bad.npz", dir);
  ps_npz_stream *z;
  ps_errbuf eb;
  uint64_t sh[2] = {0, 4};
  float v[6] = {0};
  ck_assert_int_eq(ps_npz_stream_open(&z, path, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_begin(z, "a", PS_NPZ_F4, 2, sh, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_begin(z, "b", PS_NPZ_F4, 2, sh, &eb), PS_EINVAL);
  ck_assert_int_eq(ps_npz_stream_write(z, v, 6, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_end(z, &eb), PS_EINVAL); /* 6 is not whole rows of 4 */
  ck_assert_ptr_nonnull(strstr(eb.msg, "whole rows"));
  ck_assert_int_eq(ps_npz_stream_begin(z, "a", PS_NPZ_F4, 2, sh, &eb), PS_EINVAL);
  ck_assert_ptr_nonnull(strstr(eb.msg, "duplicate"));
  ck_assert_int_eq(ps_npz_stream_begin(z, "", PS_NPZ_F4, 2, sh, &eb), PS_EINVAL);
  ps_npz_stream_abort(z);
  ck_assert_int_ne(access(path, F_OK), 0);
  char tmp[800];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  ck_assert_int_ne(access(tmp, F_OK), 0);
  /* a close with a member open fails and leaves nothing */
  ck_assert_int_eq(ps_npz_stream_open(&z, path, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_begin(z, "a", PS_NPZ_F4, 2, sh, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_close(z, &eb), PS_EINVAL);
  ck_assert_int_ne(access(path, F_OK), 0);
  ck_assert_int_ne(access(tmp, F_OK), 0);
  /* a member that failed (rows not whole; a zero inner dimension) has no
   * sizes or CRC: a close after it fails and leaves nothing, instead of
   * renaming an archive with garbage in its directory over PATH */
  ck_assert_int_eq(ps_npz_stream_open(&z, path, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_end(z, &eb), PS_EINVAL); /* none open */
  ck_assert_int_eq(ps_npz_stream_begin(z, "a", PS_NPZ_F4, 2, sh, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_write(z, v, 6, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_end(z, &eb), PS_EINVAL);
  ck_assert_int_eq(ps_npz_stream_close(z, &eb), PS_EINVAL);
  ck_assert_ptr_nonnull(strstr(eb.msg, "failed earlier"));
  ck_assert_int_ne(access(path, F_OK), 0);
  ck_assert_int_ne(access(tmp, F_OK), 0);
  uint64_t zero[2] = {0, 0};
  ck_assert_int_eq(ps_npz_stream_open(&z, path, &eb), 0);
  ck_assert_int_eq(ps_npz_stream_begin(z, "z", PS_NPZ_F4, 2, zero, &eb), PS_EINVAL);
  ck_assert_int_eq(ps_npz_stream_close(z, &eb), PS_EINVAL);
  ck_assert_int_ne(access(path, F_OK), 0);
  ck_assert_int_ne(access(tmp, F_OK), 0);
}
END_TEST

Suite *ps_npz_stream_suite(void) {
  Suite *s = suite_create("ps_npz_stream");
  TCase *tc = tcase_create("stream");
  tcase_add_test(tc, test_npz_stream_members);
  tcase_add_test(tc, test_npz_stream_bad_use);
  suite_add_tcase(s, tc);
  return s;
}
