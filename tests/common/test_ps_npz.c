/* Tests for ps_npz: write then read back gives exact bytes and shapes;
 * NumPy (Debian's /usr/bin/python3) reads what we write and we read what
 * NumPy writes; bad archives fail with their message. */
#include <dirent.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "ps_npz.h"
#include "ps_npz_stream.h"
#include "ps_test.h"

#define PY "/usr/bin/python3"

static float w[256 * 10], bvec[10], t3[24], sc[1];
static const uint64_t w_shape[] = {256, 10}, b_shape[] = {10}, t_shape[] = {2, 3, 4},
                      e_shape[] = {0, 5};

/* fill_arrays gives the test arrays awkward values: signs, -0, a
 * subnormal, infinities, a NaN payload. */
static void fill_arrays(void) {
  for (int i = 0; i < 2560; i++) w[i] = (float)sin(i * 0.37) * (float)(i % 17 - 8);
  w[1] = -0.0f;
  w[2] = 1e-40f;
  w[3] = INFINITY;
  w[4] = -INFINITY;
  uint32_t nan_bits = 0x7fc00123;
  memcpy(&w[5], &nan_bits, 4);
  for (int i = 0; i < 10; i++) bvec[i] = (float)i / 3;
  for (int i = 0; i < 24; i++) t3[i] = (float)(i * i) - 100;
  sc[0] = 42.5f;
}

static const ps_npz_array arrays[] = {
    {"layer0/w", 2, w_shape, w},
    {"b", 1, b_shape, bvec},
    {"t", 3, t_shape, t3},
    {"scalar", 0, NULL, sc},
    {"empty", 2, e_shape, NULL},
};
#define NARRAYS (sizeof arrays / sizeof arrays[0])

static uint64_t nelems(const ps_npz_array *a) {
  uint64_t n = 1;
  for (uint32_t i = 0; i < a->ndim; i++) n *= a->shape[i];
  return n;
}

static const char *write_test_npz(void) {
  static char path[600];
  fill_arrays();
  snprintf(path, sizeof path, "%s/m.npz", ps_test_tmpdir());
  ps_errbuf eb = {""};
  ck_assert_msg(ps_npz_write(path, arrays, NARRAYS, &eb) == 0, "%s", eb.msg);
  return path;
}

START_TEST(test_npz_roundtrip) {
  const char *path = write_test_npz();
  ps_npz z;
  ps_errbuf eb = {""};
  ck_assert_msg(ps_npz_read(&z, path, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(z.n, NARRAYS);
  for (size_t i = 0; i < NARRAYS; i++) {
    const ps_npz_entry *e = &z.entries[i];
    ck_assert_str_eq(e->name, arrays[i].name);
    ck_assert_uint_eq(e->ndim, arrays[i].ndim);
    for (uint32_t d = 0; d < e->ndim; d++) ck_assert_uint_eq(e->shape[d], arrays[i].shape[d]);
    ck_assert_uint_eq(e->nelems, nelems(&arrays[i]));
    if (e->nelems) ck_assert_int_eq(memcmp(e->data, arrays[i].data, e->nelems * 4), 0);
  }
  ck_assert_ptr_eq(ps_npz_find(&z, "t"), &z.entries[2]);
  ck_assert_ptr_null(ps_npz_find(&z, "t.npy"));
  ps_npz_release(&z);
  ps_npz_release(&z);
  /* written again over a 0600 file: the file keeps its mode (dense
   * exports came back 0644), and a link left at the temporary name is
   * not followed */
  ck_assert_int_eq(chmod(path, 0600), 0);
  char tmp[700], victim[700];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  snprintf(victim, sizeof victim, "%s.victim", path);
  FILE *vf = fopen(victim, "w");
  ck_assert_ptr_nonnull(vf);
  fputs("keep", vf);
  fclose(vf);
  ck_assert_int_eq(symlink(victim, tmp), 0);
  ck_assert_msg(ps_npz_write(path, arrays, NARRAYS, &eb) == 0, "%s", eb.msg);
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0600);
  char *v = ps_test_read_file(victim, NULL);
  ck_assert_str_eq(v, "keep");
  free(v);
}
END_TEST

START_TEST(test_npz_npy_header) {
  const char *path = write_test_npz();
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  static unsigned char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  /* First member: local header (30) + "layer0/w.npy" (12), then the NPY. */
  ck_assert_int_eq(memcmp(buf, "PK\3\4", 4), 0);
  ck_assert_int_eq(memcmp(buf + 30, "layer0/w.npy", 12), 0);
  const unsigned char *npy = buf + 42;
  ck_assert_int_eq(memcmp(npy, "\x93NUMPY\x01\x00", 8), 0);
  size_t hl = npy[8] | (size_t)npy[9] << 8;
  ck_assert_uint_eq((10 + hl) % 64, 0);
  const char *want = "{'descr': '<f4', 'fortran_order': False, 'shape': (256, 10), }";
  ck_assert_int_eq(memcmp(npy + 10, want, strlen(want)), 0);
  ck_assert_int_eq(npy[10 + hl - 1], '\n');
  ck_assert_int_eq(memcmp(npy + 10 + hl, w, 16), 0);
  ck_assert_uint_gt(n, 10240);
}
END_TEST

/* have_numpy says whether /usr/bin/python3 can import numpy. */
static int have_numpy(void) {
  return access(PY, X_OK) == 0 && system(PY " -c 'import numpy' 2>/dev/null") == 0;
}

START_TEST(test_npz_numpy_reads_ours) {
  if (!have_numpy()) PS_SKIP("%s with numpy is not installed (python3-numpy)", PY);
  const char *path = write_test_npz();
  /* The raw bytes of each array beside it, for numpy to compare. */
  const char *dir = ps_test_tmpdir();
  char raw[700], cmd[4096];
  for (size_t i = 0; i < NARRAYS; i++) {
    snprintf(raw, sizeof raw, "%s/%zu.raw", dir, i);
    FILE *f = fopen(raw, "wb");
    ck_assert_ptr_nonnull(f);
    if (nelems(&arrays[i])) fwrite(arrays[i].data, 4, nelems(&arrays[i]), f);
    fclose(f);
  }
  snprintf(cmd, sizeof cmd,
           PY " - '%s' '%s' <<'EOF'\n"
              "import sys, numpy as np\n"
              "z = np.load(sys.argv[1])\n"
              "want = [('layer0/w', (256, 10)), ('b', (10,)), ('t', (2, 3, 4)), ('scalar', ()),"
              " ('empty', (0, 5))]\n"
              "assert sorted(z.files) == sorted(n for n, _ in want), z.files\n"
              "for i, (n, s) in enumerate(want):\n"
              "    a = z[n]\n"
              "    assert a.dtype == np.float32 and a.shape == s, (n, a.dtype, a.shape)\n"
              "    assert a.tobytes() == open('%%s/%%d.raw' %% (sys.argv[2], i), 'rb').read(), n\n"
              "assert z['scalar'] == 42.5\n"
              "EOF\n",
           path, dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_npz_we_read_numpy) {
  if (!have_numpy()) PS_SKIP("%s with numpy is not installed (python3-numpy)", PY);
  const char *dir = ps_test_tmpdir();
  char cmd[2048], path[700], path64[700];
  snprintf(path, sizeof path, "%s/np.npz", dir);
  snprintf(path64, sizeof path64, "%s/np64.npz", dir);
  snprintf(cmd, sizeof cmd,
           PY " -c 'import numpy as np; "
              "np.savez(\"%s\", a=np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5, "
              "s=np.float32(7)); np.savez(\"%s\", d=np.zeros(3))'",
           path, path64);
  ck_assert_int_eq(system(cmd), 0);
  ps_npz z;
  ps_errbuf eb = {""};
  ck_assert_msg(ps_npz_read(&z, path, &eb) == 0, "%s", eb.msg);
  const ps_npz_entry *a = ps_npz_find(&z, "a"), *s = ps_npz_find(&z, "s");
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(s);
  ck_assert_uint_eq(a->ndim, 2);
  ck_assert_uint_eq(a->shape[0], 3);
  ck_assert_uint_eq(a->shape[1], 4);
  for (int i = 0; i < 12; i++) ck_assert(a->data[i] == i * 0.5f);
  ck_assert_uint_eq(s->ndim, 0);
  ck_assert(s->data[0] == 7);
  ps_npz_release(&z);
  ck_assert_int_eq(ps_npz_read(&z, path64, &eb), PS_ENOTSUP);
  char want[800];
  snprintf(want, sizeof want, "%s: member 'd.npy': dtype '<f8' is not supported (float32 '<f4' only)",
           path64);
  ck_assert_str_eq(eb.msg, want);
}
END_TEST

/* count_files counts the entries of DIR other than . and .. */
static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  ck_assert_ptr_nonnull(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
  closedir(d);
  return n;
}

START_TEST(test_npz_refuses) {
  const char *dir = ps_test_tmpdir();
  char path[700];
  snprintf(path, sizeof path, "%s/x.npz", dir);
  ps_errbuf eb = {""};
  /* 2^30 x 2 floats = 8 GiB: refused before any data is touched. */
  static const uint64_t huge[] = {1u << 30, 2};
  ps_npz_array big = {"big", 2, huge, bvec};
  ck_assert_int_eq(ps_npz_write(path, &big, 1, &eb), PS_ETOOBIG);
  ck_assert_str_eq(eb.msg, "archive would reach 4 GiB at array 'big' (zip64 is not supported)");
  ps_npz_array dup[] = {{"b", 1, b_shape, bvec}, {"b", 1, b_shape, bvec}};
  ck_assert_int_eq(ps_npz_write(path, dup, 2, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "duplicate array 'b'");
  ps_npz_array noname = {"", 1, b_shape, bvec};
  ck_assert_int_eq(ps_npz_write(path, &noname, 1, &eb), PS_EINVAL);
  ck_assert_int_eq(count_files(dir), 0); /* nothing left behind */
  char missing[700];
  snprintf(missing, sizeof missing, "%s/no/such/dir/x.npz", dir);
  ck_assert_int_eq(ps_npz_write(missing, dup, 1, &eb), PS_ENOENT);
}
END_TEST

START_TEST(test_npz_bad_archives) {
  const char *path = write_test_npz();
  ps_npz z;
  ps_errbuf eb = {""};
  char want[800];
  /* Flip one data byte of member 'b': its CRC no longer matches. */
  FILE *f = fopen(path, "r+b");
  ck_assert_ptr_nonnull(f);
  static unsigned char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf, f);
  unsigned char *p = memmem(buf + 4, n - 4, "PK\3\4", 4); /* member 'b' follows 'layer0/w' */
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(memcmp(p + 30, "b.npy", 5), 0);
  const unsigned char *npy = p + 35;
  size_t at = (size_t)(npy - buf) + 10 + (npy[8] | (size_t)npy[9] << 8) + 3;
  buf[at] ^= 1;
  fseek(f, (long)at, SEEK_SET);
  fputc(buf[at], f);
  fclose(f);
  ck_assert_int_eq(ps_npz_read(&z, path, &eb), PS_EFORMAT);
  snprintf(want, sizeof want, "%s: member 'b.npy': CRC-32 mismatch", path);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_ptr_null(z.entries);
  /* Not a zip at all. */
  ps_test_write_file(path, "hello, this is not a zip archive at all\n");
  ck_assert_int_eq(ps_npz_read(&z, path, &eb), PS_EFORMAT);
  snprintf(want, sizeof want, "%s: not a zip file (no end record)", path);
  ck_assert_str_eq(eb.msg, want);
  unlink(path);
  ck_assert_int_eq(ps_npz_read(&z, path, &eb), PS_EIO);
}
END_TEST

static void put16(unsigned char *p, uint32_t v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }
static void put32(unsigned char *p, uint32_t v) { put16(p, v), put16(p + 2, v >> 16); }

/* write_zip1 writes to PATH a zip of one stored member NAME holding
 * DATA[0..LEN), whose central header claims a name of NLEN_CD bytes
 * (the real length when 0). */
static void write_zip1(const char *path, const char *name, const void *data, size_t len,
                       uint32_t nlen_cd) {
  size_t nlen = strlen(name);
  unsigned char lh[30] = {0}, ch[46] = {0}, end[22] = {0};
  uint32_t crc = (uint32_t)crc32(crc32(0, Z_NULL, 0), data, (uInt)len);
  put32(lh, 0x04034b50u), put16(lh + 4, 20), put32(lh + 14, crc);
  put32(lh + 18, (uint32_t)len), put32(lh + 22, (uint32_t)len), put16(lh + 26, (uint32_t)nlen);
  put32(ch, 0x02014b50u), put16(ch + 4, 20), put16(ch + 6, 20), put32(ch + 16, crc);
  put32(ch + 20, (uint32_t)len), put32(ch + 24, (uint32_t)len);
  put16(ch + 28, nlen_cd ? nlen_cd : (uint32_t)nlen);
  put32(end, 0x06054b50u), put16(end + 8, 1), put16(end + 10, 1);
  put32(end + 12, (uint32_t)(46 + nlen)), put32(end + 16, (uint32_t)(30 + nlen + len));
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert(fwrite(lh, 30, 1, f) == 1 && fputs(name, f) >= 0 && fwrite(data, 1, len, f) == len &&
            fwrite(ch, 46, 1, f) == 1 && fputs(name, f) >= 0 && fwrite(end, 22, 1, f) == 1);
  ck_assert_int_eq(fclose(f), 0);
}

/* Found by tests/fuzz/fuzz_npz: a central directory entry whose name runs
 * past the end record was copied from beyond the file's buffer (a heap
 * overflow under ASan); and a shape whose element count wraps modulo 2^64
 * (2^62 elements "need" 0 bytes) was accepted with nelems 2^62 and no
 * data. */
START_TEST(test_npz_refuses_lying_sizes) {
  char path[600];
  snprintf(path, sizeof path, "%s/lie.npz", ps_test_tmpdir());
  ps_npz z;
  ps_errbuf eb = {""};
  char want[800];
  static const char npy[] = /* NPY 1.0: 10 bytes, a header of 118 (0x76), no data */
      "\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape': "
      "(4611686018427387904,), }" "                                          " "\n";
  ck_assert_uint_eq(sizeof npy - 1, 128);
  write_zip1(path, "w.npy", npy, sizeof npy - 1, 0);
  ck_assert_int_eq(ps_npz_read(&z, path, &eb), PS_EFORMAT);
  snprintf(want, sizeof want, "%s: member 'w.npy': 0 data bytes, the shape needs more", path);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_ptr_null(z.entries);
  /* The same with a shape of 0 elements is fine. */
  char ok[sizeof npy];
  memcpy(ok, npy, sizeof npy);
  memcpy(memmem(ok, sizeof ok, "4611686018427387904", 19), "0                  ", 19);
  write_zip1(path, "w.npy", ok, sizeof ok - 1, 0);
  ck_assert_msg(ps_npz_read(&z, path, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(z.entries[0].nelems, 0);
  ps_npz_release(&z);
  /* A name of 40 bytes where the directory holds 5 and the end record 22. */
  write_zip1(path, "w.npy", ok, sizeof ok - 1, 40);
  ck_assert_int_eq(ps_npz_read(&z, path, &eb), PS_EFORMAT);
  snprintf(want, sizeof want, "%s: bad central directory entry 0", path);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_ptr_null(z.entries);
}
END_TEST

START_TEST(test_npz_replaces_atomically) {
  const char *path = write_test_npz();
  ps_npz_array one = {"only", 1, b_shape, bvec};
  ps_errbuf eb = {""};
  ck_assert_msg(ps_npz_write(path, &one, 1, &eb) == 0, "%s", eb.msg);
  ps_npz z;
  ck_assert_msg(ps_npz_read(&z, path, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(z.n, 1);
  ck_assert_str_eq(z.entries[0].name, "only");
  ps_npz_release(&z);
  char dir[700];
  snprintf(dir, sizeof dir, "%s", path);
  *strrchr(dir, '/') = 0;
  ck_assert_int_eq(count_files(dir), 1); /* no temporary file left */
}
END_TEST

/* A writer killed half-way (SIGKILL: no handler runs) leaves nothing in
 * the directory where the filesystem has O_TMPFILE ($TMPDIR's tmpfs or
 * ext4 has): it left a full-size "PATH.tmp.PID" that later runs never
 * removed.  Both writers' temporary file (ps_npz_tmp_open), through the
 * streaming writer. */
START_TEST(test_npz_killed_writer_leaves_nothing) {
  char dir[600], path[700];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  snprintf(path, sizeof path, "%s/k.npz", dir);
  for (int stream = 0; stream < 2; stream++) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      static float big[1 << 18];
      ps_errbuf eb;
      if (stream) {
        ps_npz_stream *z;
        uint64_t sh[1] = {0};
        if (ps_npz_stream_open(&z, path, &eb) < 0 ||
            ps_npz_stream_begin(z, "w", PS_NPZ_F4, 1, sh, &eb) < 0 ||
            ps_npz_stream_write(z, big, 1 << 18, &eb) < 0)
          _exit(3);
      } else {
        char tmp[800];
        FILE *f;
        if (ps_npz_tmp_open(path, tmp, sizeof tmp, &f, &eb) < 0 ||
            fwrite(big, sizeof big, 1, f) != 1 || fflush(f) != 0)
          _exit(3);
      }
      raise(SIGKILL);
      _exit(4);
    }
    int st = ps_test_wait_pid(pid, 10000);
    ck_assert_msg(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "writer: status 0x%x", st);
    ck_assert_msg(count_files(dir) == 0, "%s writer killed with SIGKILL left %d file(s) in %s",
                  stream ? "the streaming" : "the", count_files(dir), dir);
  }
}
END_TEST

Suite *ps_npz_suite(void) {
  Suite *s = suite_create("ps_npz");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_npz_roundtrip);
  tcase_add_test(tc, test_npz_npy_header);
  tcase_add_test(tc, test_npz_numpy_reads_ours);
  tcase_add_test(tc, test_npz_we_read_numpy);
  tcase_add_test(tc, test_npz_refuses);
  tcase_add_test(tc, test_npz_bad_archives);
  tcase_add_test(tc, test_npz_refuses_lying_sizes);
  tcase_add_test(tc, test_npz_replaces_atomically);
  tcase_add_test(tc, test_npz_killed_writer_leaves_nothing);
  suite_add_tcase(s, tc);
  return s;
}
