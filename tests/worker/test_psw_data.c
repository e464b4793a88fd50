/* Tests for psw_data: IDX (plain and gzipped) and CSV readers on good and
 * bad files made here, partitions, shuffling, and the real Fashion-MNIST
 * files when the Debian package is installed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "psw_ctr.h"
#include "psw_data.h"
#include "ps_test.h"

#define NS 10 /* samples in the generated IDX files */
#define ROWS 3
#define COLS 2

static uint8_t pixel(int i, int j) { return (uint8_t)(i * 37 + j * 11 + 5); }

/* write_bytes writes LEN bytes to PATH, gzipped when GZ. */
static void write_bytes(const char *path, const void *data, size_t len, int gz) {
  if (gz) {
    gzFile f = gzopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(gzwrite(f, data, (unsigned)len), (int)len);
    ck_assert_int_eq(gzclose(f), Z_OK);
  } else {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
  }
}

static void be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* write_idx writes NS images of ROWSxCOLS (the header saying HDR_COUNT,
 * only the first KEEP bytes of the file) and NLAB labels under DIR;
 * paths in IMG and LAB. */
static void write_idx(const char *dir, int gz, uint32_t hdr_count, size_t keep, uint32_t nlab,
                      char *img, char *lab) {
  uint8_t buf[16 + NS * ROWS * COLS];
  be32(buf, 0x803);
  be32(buf + 4, hdr_count);
  be32(buf + 8, ROWS);
  be32(buf + 12, COLS);
  for (int i = 0; i < NS; i++)
    for (int j = 0; j < ROWS * COLS; j++) buf[16 + i * ROWS * COLS + j] = pixel(i, j);
  sprintf(img, "%s/img%s", dir, gz ? ".gz" : "");
  write_bytes(img, buf, keep < sizeof buf ? keep : sizeof buf, gz);
  uint8_t lb[8 + NS];
  be32(lb, 0x801);
  be32(lb + 4, nlab);
  for (int i = 0; i < NS; i++) lb[8 + i] = (uint8_t)(i % 7);
  sprintf(lab, "%s/lab%s", dir, gz ? ".gz" : "");
  write_bytes(lab, lb, 8 + (nlab < NS ? nlab : NS), gz);
}

/* check_sample asserts that sample K of D is file sample I at SCALE. */
static void check_sample(const psw_dataset *d, uint64_t k, int i, float scale) {
  ck_assert_int_eq(d->y[k], i % 7);
  for (int j = 0; j < ROWS * COLS; j++)
    ck_assert_msg(d->x[k * d->dim + j] == (float)pixel(i, j) * scale, "sample %d pixel %d", i, j);
}

START_TEST(test_idx_all) {
  /* _i: 0 plain, 1 gzipped */
  char img[600], lab[600];
  write_idx(ps_test_tmpdir(), _i, NS, 1000, NS, img, lab);
  psw_dataset d;
  ps_errbuf eb = {""};
  ck_assert_msg(psw_data_load_idx(&d, img, lab, 0.5f, NULL, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, NS);
  ck_assert_uint_eq(d.total, NS);
  ck_assert_uint_eq(d.dim, ROWS * COLS);
  ck_assert_uint_eq(d.rows, ROWS);
  ck_assert_uint_eq(d.cols, COLS);
  for (int i = 0; i < NS; i++) check_sample(&d, (uint64_t)i, i, 0.5f);
  psw_data_release(&d);
  ck_assert_ptr_null(d.x);
}
END_TEST

START_TEST(test_idx_partitions) {
  char img[600], lab[600];
  write_idx(ps_test_tmpdir(), _i, NS, 1000, NS, img, lab);
  psw_dataset d;
  ps_errbuf eb = {""};
  /* 10 samples in 3 partitions: [0,3) [3,6) [6,10); given out of order. */
  uint32_t parts[] = {2, 0};
  psw_data_sel sel = {.nparts = 3, .parts = parts, .nsel = 2};
  ck_assert_msg(psw_data_load_idx(&d, img, lab, 1.0f, &sel, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 7);
  static const int want[] = {0, 1, 2, 6, 7, 8, 9};
  for (int k = 0; k < 7; k++) check_sample(&d, (uint64_t)k, want[k], 1.0f);
  psw_data_release(&d);
  /* limit 5 then 2 partitions: partition 1 is [2,5). */
  uint32_t one = 1;
  psw_data_sel lim = {.limit = 5, .nparts = 2, .parts = &one, .nsel = 1};
  ck_assert_msg(psw_data_load_idx(&d, img, lab, 1.0f, &lim, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 3);
  ck_assert_uint_eq(d.total, 5);
  for (int k = 0; k < 3; k++) check_sample(&d, (uint64_t)k, 2 + k, 1.0f);
  psw_data_release(&d);
  uint32_t bad[] = {1, 1};
  psw_data_sel twice = {.nparts = 3, .parts = bad, .nsel = 2};
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, &twice, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "partition 1 given twice (3 partitions)");
  uint32_t three = 3;
  psw_data_sel out = {.nparts = 3, .parts = &three, .nsel = 1};
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, &out, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "partition 3 out of range (3 partitions)");
}
END_TEST

/* expect_idx_error loads IMG/LAB and checks the code and message (the
 * message's "%s" is the path named). */
static void expect_idx_error(const char *img, const char *lab, int err, const char *fmt,
                             const char *path) {
  psw_dataset d;
  ps_errbuf eb = {""};
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, NULL, &eb), err);
  char want[1200];
  snprintf(want, sizeof want, fmt, path, lab);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_ptr_null(d.x);
}

START_TEST(test_idx_bad_files) {
  char img[600], lab[600];
  const char *dir = ps_test_tmpdir();
  int gz = _i;
  /* Swapped files: bad magic at byte 0. */
  write_idx(dir, gz, NS, 1000, NS, img, lab);
  expect_idx_error(lab, img, PS_EFORMAT,
                   "%s: byte 0: bad magic 0x00000801 (expected 0x00000803, IDX image file)", lab);
  /* 10 images, 9 labels. */
  write_idx(dir, gz, NS, 1000, NS - 1, img, lab);
  expect_idx_error(img, lab, PS_EFORMAT, "%s: byte 4: 10 images but '%s' holds 9 labels", img);
  /* The header says 10 images, the file ends 3 bytes into image 9. */
  write_idx(dir, gz, NS, 16 + 9 * ROWS * COLS + 3, NS, img, lab);
  expect_idx_error(img, lab, PS_EFORMAT,
                   "%s: byte 73: truncated file (image 9 of 10 incomplete)", img);
  /* A header claiming 4e9 images in a file of ten: refused before
   * anything is sized from it (fuzz_idx: a 195 GB allocation). */
  write_idx(dir, gz, 4000000000u, 1000, 4000000000u, img, lab);
  psw_dataset d;
  ps_errbuf eb = {""};
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, NULL, &eb), PS_EFORMAT);
  if (gz)
    ck_assert_msg(strstr(eb.msg, ": byte 4: 4000000000 images of 6 bytes, but ") &&
                  strstr(eb.msg, "(truncated, or not an IDX file)"), "%s", eb.msg);
  else
    expect_idx_error(img, lab, PS_EFORMAT,
                     "%s: byte 76: truncated file (image 10 of 4000000000 incomplete)", img);
  /* The same file cut short, with data.limit 2: a plain file's size is
   * checked against its header whatever the limit (it loaded the first 2
   * images of a file cut in image 9); a gzip one's end is read only with
   * its last record (README). */
  if (!gz) {
    write_idx(dir, gz, NS, 16 + 9 * ROWS * COLS + 3, NS, img, lab);
    psw_data_sel two = {.limit = 2};
    ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, &two, &eb), PS_EFORMAT);
    char want[1200];
    snprintf(want, sizeof want, "%s: byte 73: truncated file (image 9 of 10 incomplete)", img);
    ck_assert_str_eq(eb.msg, want);
  }
  /* A header counting no image (and a label file of none): no samples,
   * as an empty CSV, not a training run of 0 steps that exits 0. */
  write_idx(dir, gz, 0, 16, 0, img, lab);
  expect_idx_error(img, lab, PS_EFORMAT, "%s: byte 4: no samples (its header counts 0 images)",
                   img);
  /* A file shorter than its header. */
  write_idx(dir, gz, NS, 10, NS, img, lab);
  expect_idx_error(img, lab, PS_EFORMAT, "%s: byte 10: truncated file (in the header)", img);
  /* Missing file. */
  char missing[700];
  snprintf(missing, sizeof missing, "%s/nope", dir);
  expect_idx_error(missing, lab, PS_EIO, "%s: cannot open: No such file or directory", missing);
}
END_TEST

/* A data path that is no regular file: a FIFO nobody writes to blocked
 * psw's open forever, /dev/zero as a CSV grew its buffer until memory
 * ran out.  Both refused, by the check psw makes before it asks the
 * shards and by every reader. */
START_TEST(test_not_regular_files) {
  char fifo[600], zero[] = "/dev/zero", want[1400];
  snprintf(fifo, sizeof fifo, "%s/fifo", ps_test_tmpdir());
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  char *paths[] = {fifo, zero};
  const char *kinds[] = {"a FIFO", "a character device"};
  for (int i = 0; i < 2; i++) {
    ps_data_conf c = {.format = "csv", .train_images = paths[i], .scale = 1, .partitions = 1};
    ps_errbuf eb = {""};
    ck_assert_int_eq(psw_data_conf_check(&c, 0, &eb), PS_ECONFIG);
    snprintf(want, sizeof want, "training set: '%s' is %s, not a data file", paths[i], kinds[i]);
    ck_assert_str_eq(eb.msg, want);
    snprintf(want, sizeof want, "%s: %s, not a regular file (psw reads a data file more than "
             "once and sizes it from its length)", paths[i], kinds[i]);
    psw_dataset d;
    ck_assert_int_eq(psw_data_load_csv(&d, paths[i], 1.0f, NULL, &eb), PS_EFORMAT);
    ck_assert_str_eq(eb.msg, want);
    ck_assert_int_eq(psw_data_load_idx(&d, paths[i], paths[i], 1.0f, NULL, &eb), PS_EFORMAT);
    ck_assert_str_eq(eb.msg, want);
    psw_ctr log;
    ck_assert_int_eq(psw_ctr_load(&log, paths[i], 0, &eb), PS_EFORMAT);
    ck_assert_str_eq(eb.msg, want);
  }
}
END_TEST

START_TEST(test_idx_corrupt_gzip) {
  /* A gzip stream cut in the middle: an error with the path, never data. */
  char img[600], lab[600];
  write_idx(ps_test_tmpdir(), 1, NS, 1000, NS, img, lab);
  FILE *f = fopen(img, "rb");
  ck_assert_ptr_nonnull(f);
  unsigned char buf[4096];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  ck_assert_int_eq(truncate(img, (off_t)(n - 12)), 0); /* drop the trailer and some data */
  psw_dataset d;
  ps_errbuf eb = {""};
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, NULL, &eb), PS_EFORMAT);
  char prefix[700];
  snprintf(prefix, sizeof prefix, "%s: byte ", img);
  ck_assert_msg(!strncmp(eb.msg, prefix, strlen(prefix)), "%s", eb.msg);
  ck_assert_msg(strstr(eb.msg, ": truncated or corrupt gzip file (unexpected end of file)"),
                "%s", eb.msg);
  /* A reserved deflate block type in the first block: what inflate says
   * in the parentheses, as README documents */
  write_idx(ps_test_tmpdir(), 1, NS, 1000, NS, img, lab);
  f = fopen(img, "r+b");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fseek(f, 10, SEEK_SET), 0); /* after gzip's 10-byte header */
  int b0 = fgetc(f);
  ck_assert_int_eq(fseek(f, 10, SEEK_SET), 0);
  ck_assert_int_eq(fputc(b0 | 0x06, f), b0 | 0x06); /* BTYPE 11 */
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, NULL, &eb), PS_EFORMAT);
  snprintf(prefix, sizeof prefix, "%s: byte 0: truncated or corrupt gzip file (invalid block type)",
           img);
  ck_assert_str_eq(eb.msg, prefix);
}
END_TEST

/* append_file appends LEN bytes to PATH as they are. */
static void append_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "ab");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(data, 1, len, f), len);
  ck_assert_int_eq(fclose(f), 0);
}

/* append_gz_member appends LEN bytes to PATH as a gzip member of its own
 * (as `cat a.gz b.gz` makes). */
static void append_gz_member(const char *path, const void *data, size_t len) {
  char tmp[700];
  snprintf(tmp, sizeof tmp, "%s.member", path);
  write_bytes(tmp, data, len, 1);
  size_t n;
  char *member = ps_test_read_file(tmp, &n);
  append_file(path, member, n);
  free(member);
  unlink(tmp);
}

/* An IDX file longer than its header says: 5 bytes after the last image,
 * in a plain file (_i 0), in the gzip stream (1), in a second gzip member
 * (2); or 5 bytes after the gzip stream that are no gzip member (3).
 * Each was loaded as the file's first part: now refused, naming it. */
START_TEST(test_idx_trailing) {
  char img[600], lab[600], want[1200];
  const char *dir = ps_test_tmpdir();
  write_idx(dir, 0, NS, 1000, NS, img, lab);
  append_file(img, "extra", 5);
  if (_i) { /* the same bytes gzipped, or the IDX file gzipped and then the extra bytes */
    size_t n;
    char *plain = ps_test_read_file(img, &n);
    write_idx(dir, 1, NS, 1000, NS, img, lab);
    if (_i == 1) write_bytes(img, plain, n, 1);
    if (_i == 2) append_gz_member(img, "extra", 5);
    if (_i == 3) append_file(img, "extra", 5);
    free(plain);
  }
  psw_dataset d;
  ps_errbuf eb = {""};
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, NULL, &eb), PS_EFORMAT);
  ck_assert_ptr_null(d.x);
  if (_i == 3) {
    snprintf(want, sizeof want, "%s: compressed byte ", img);
    ck_assert_msg(!strncmp(eb.msg, want, strlen(want)) &&
                  strstr(eb.msg, ": data after the end of the gzip stream that is not another "
                                 "gzip member"), "%s", eb.msg);
    return;
  }
  snprintf(want, sizeof want, "%s: byte 76: 5 more bytes after the last of the 10 images its "
           "header counts (two files joined, or one written over a longer one?)", img);
  ck_assert_str_eq(eb.msg, want);
}
END_TEST

/* A gzipped CSV file of two gzip members (`cat a.gz b.gz`) reads as one
 * stream, as zcat reads it; bytes after the last member that are no gzip
 * member are refused (they were dropped unread). */
START_TEST(test_gzip_members) {
  char csv[600];
  snprintf(csv, sizeof csv, "%s/m.csv.gz", ps_test_tmpdir());
  write_bytes(csv, "1,2\n3,4\n", 8, 1);
  append_gz_member(csv, "5,6\n", 4);
  psw_dataset d;
  ps_errbuf eb = {""};
  ck_assert_msg(psw_data_load_csv(&d, csv, 1.0f, NULL, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 3);
  ck_assert_int_eq(d.y[2], 5);
  psw_data_release(&d);
  append_file(csv, "7,8\n", 4);
  ck_assert_int_eq(psw_data_load_csv(&d, csv, 1.0f, NULL, &eb), PS_EFORMAT);
  ck_assert_msg(strstr(eb.msg, csv) == eb.msg &&
                strstr(eb.msg, ": data after the end of the gzip stream that is not another "
                               "gzip member"), "%s", eb.msg);
}
END_TEST

/* cut_file drops the last DROP bytes of PATH. */
static void cut_file(const char *path, size_t drop) {
  size_t n = 0;
  free(ps_test_read_file(path, &n));
  ck_assert(n > drop);
  ck_assert_int_eq(truncate(path, (off_t)(n - drop)), 0);
}

/* A gzipped IDX file whose data is whole but whose gzip trailer (the
 * check of all its data) was cut is an error too, when the last record is
 * read; so is a gzipped CSV file cut anywhere (zlib reads a cut stream as
 * its end: the file would load as a shorter one). */
START_TEST(test_gzip_cut_short) {
  char img[600], lab[600];
  psw_dataset d;
  ps_errbuf eb = {""};
  write_idx(ps_test_tmpdir(), 1, NS, 1000, NS, img, lab);
  cut_file(img, 4); /* the trailer's length field */
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, NULL, &eb), PS_EFORMAT);
  ck_assert_msg(strstr(eb.msg, img) == eb.msg && strstr(eb.msg, "truncated or corrupt gzip"),
                "%s", eb.msg);
  write_idx(ps_test_tmpdir(), 1, NS, 1000, NS, img, lab);
  cut_file(lab, 1);
  ck_assert_int_eq(psw_data_load_idx(&d, img, lab, 1.0f, NULL, &eb), PS_EFORMAT);
  ck_assert_msg(strstr(eb.msg, lab) == eb.msg && strstr(eb.msg, "truncated or corrupt gzip"),
                "%s", eb.msg);
  /* a partition short of the last record does not read that far */
  uint32_t zero = 0;
  psw_data_sel sel = {.nparts = 2, .parts = &zero, .nsel = 1};
  ck_assert_msg(psw_data_load_idx(&d, img, lab, 1.0f, &sel, &eb) == 0, "%s", eb.msg);
  psw_data_release(&d);
  char csv[600], text[4096], *p = text;
  for (int i = 0; i < 200; i++) p += sprintf(p, "%d,%d,%d\n", i % 3, i * 7, i * 13);
  sprintf(csv, "%s/d.csv.gz", ps_test_tmpdir());
  for (size_t drop = 1; drop <= 64; drop *= 4) {
    write_bytes(csv, text, strlen(text), 1);
    cut_file(csv, drop);
    int rc = psw_data_load_csv(&d, csv, 1.0f, NULL, &eb);
    ck_assert_msg(rc == PS_EFORMAT, "cut by %zu: rc %d, %llu samples", drop, rc,
                  (unsigned long long)d.n);
    ck_assert_msg(strstr(eb.msg, csv) == eb.msg && strstr(eb.msg, "truncated or corrupt gzip"),
                  "%s", eb.msg);
  }
}
END_TEST

static const char csv_good[] =
    "label,a,b,c\r\n"
    "1, 0.5, 2,4\r\n"
    "\n"
    "0,1,1e1,-3\n"
    "7,0,0,0\n"
    "2,8,6,4";

START_TEST(test_csv_good) {
  char path[600];
  sprintf(path, "%s/d.csv%s", ps_test_tmpdir(), _i ? ".gz" : "");
  write_bytes(path, csv_good, strlen(csv_good), _i);
  psw_dataset d;
  ps_errbuf eb = {""};
  ck_assert_msg(psw_data_load_csv(&d, path, 0.5f, NULL, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 4);
  ck_assert_uint_eq(d.dim, 3);
  static const int32_t y[] = {1, 0, 7, 2};
  static const float x[] = {0.25f, 1, 2, 0.5f, 5, -1.5f, 0, 0, 0, 4, 3, 2};
  for (int i = 0; i < 4; i++) ck_assert_int_eq(d.y[i], y[i]);
  for (int i = 0; i < 12; i++) ck_assert_msg(d.x[i] == x[i], "x[%d] = %g", i, d.x[i]);
  psw_data_release(&d);
  /* Without the header line, partition 1 of 2 = the last two samples. */
  write_bytes(path, csv_good + 13, strlen(csv_good) - 13, _i);
  uint32_t one = 1;
  psw_data_sel sel = {.nparts = 2, .parts = &one, .nsel = 1};
  ck_assert_msg(psw_data_load_csv(&d, path, 1.0f, &sel, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 2);
  ck_assert_uint_eq(d.total, 4);
  ck_assert_int_eq(d.y[0], 7);
  ck_assert_int_eq(d.y[1], 2);
  ck_assert(d.x[3] == 8);
  psw_data_release(&d);
  /* A byte order mark before the first sample: not a header (the first
   * sample was skipped as one) */
  char bom[256];
  snprintf(bom, sizeof bom, "\xef\xbb\xbf%s", csv_good + 13);
  write_bytes(path, bom, strlen(bom), _i);
  ck_assert_msg(psw_data_load_csv(&d, path, 1.0f, NULL, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 4);
  ck_assert_int_eq(d.y[0], 1);
  psw_data_release(&d);
  /* a feature the scale makes infinite: refused at load, not as a NaN
   * loss in training */
  write_bytes(path, "1,2\n0,1e30\n", 11, _i);
  ck_assert_int_eq(psw_data_load_csv(&d, path, 1e9f, NULL, &eb), PS_EFORMAT);
  ck_assert_msg(strstr(eb.msg, ":2: field 2 '1e30' is not a number that data.scale leaves "
                               "finite"), "%s", eb.msg);
}
END_TEST

static const struct csv_bad {
  const char *text;
  const char *msg; /* after "PATH" */
  size_t len;      /* of TEXT, which may hold a NUL (0: strlen) */
} csv_bad_cases[] = {
    {"l,a,b\n1,2,3\n\n4,abc,6\n", ":4: field 2 'abc' is not a finite number", 0},
    {"1,2,3\n4,5,6\n7,8\n", ":3: 2 fields, expected 3 as on line 1", 0},
    {"h,a\n1,2\n\n1,2,3\n", ":4: 3 fields, expected 2 as on line 2", 0},
    {"1,2\n1.5,3\n", ":2: field 1 '1.5' is not an integer label", 0},
    {"1,2\n1,nan\n", ":2: field 2 'nan' is not a finite number", 0},
    {"1,2\n1,\n", ":2: field 2 '' is not a finite number", 0},
    /* strtof reads C99 hex floats: "0x10" was 16, "0x1p3" 8 (the
     * cluster file refuses hex, and no CSV tool writes it) */
    {"1,2\n1,0x10\n", ":2: field 2 '0x10' is not a decimal number", 0},
    {"1,2\n1, -0X1p3\n", ":2: field 2 '-0X1p3' is not a decimal number", 0},
    /* a file of old Mac line ends (CR only) is one line: the CR shown as
     * \x0d, not written raw to the terminal (it hid the field's end) */
    {"1,2.5\r0,3\r", ":1: field 2 '2.5\\x0d0' is not a finite number", 0},
    {"1\n", ":1: expected a label and at least one feature", 0},
    {"label,x\n\n", ": no samples", 0},
    /* a NUL ends strtof's number: '7\0garbage' read as 7 */
    {"1,2\n0,7\0garbage\n", ":2: a NUL byte at column 4 (CSV is text: a binary or UTF-16 file?)",
     16},
    {"1,2\n\0\n3,4\n", ":2: a NUL byte at column 1 (CSV is text: a binary or UTF-16 file?)", 10},
    {"l\0,x\n1,2\n", ":1: a NUL byte at column 2 (CSV is text: a binary or UTF-16 file?)", 9},
};

START_TEST(test_csv_bad) {
  char path[600];
  sprintf(path, "%s/bad.csv", ps_test_tmpdir());
  size_t len = csv_bad_cases[_i].len ? csv_bad_cases[_i].len : strlen(csv_bad_cases[_i].text);
  write_bytes(path, csv_bad_cases[_i].text, len, 0);
  psw_dataset d;
  ps_errbuf eb = {""};
  ck_assert_int_eq(psw_data_load_csv(&d, path, 1.0f, NULL, &eb), PS_EFORMAT);
  char want[800];
  snprintf(want, sizeof want, "%s%s", path, csv_bad_cases[_i].msg);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_ptr_null(d.x);
}
END_TEST

START_TEST(test_load_by_config) {
  char path[600];
  sprintf(path, "%s/t.csv", ps_test_tmpdir());
  write_bytes(path, csv_good, strlen(csv_good), 0);
  ps_data_conf c = {.format = "csv", .train_images = path, .test_images = path, .scale = 2,
                    .partitions = 4, .limit = 0};
  psw_dataset d;
  ps_errbuf eb = {""};
  uint32_t parts[] = {3};
  ck_assert_msg(psw_data_load(&d, &c, 0, parts, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 1);
  ck_assert_int_eq(d.y[0], 2);
  ck_assert(d.x[0] == 16);
  psw_data_release(&d);
  ck_assert_msg(psw_data_load(&d, &c, 1, NULL, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 4);
  psw_data_release(&d);
  c.test_images = NULL;
  ck_assert_int_eq(psw_data_load(&d, &c, 1, NULL, 0, &eb), PS_ECONFIG);
  ck_assert_str_eq(eb.msg, "no test set in 'data' (test_images)");
}
END_TEST

/* criteo_line writes sample I (label i % 2, integer I1 = i, categorical
 * C1 = i in hex, the rest missing) to BUF. */
static size_t criteo_line(char *buf, int i) {
  size_t n = (size_t)sprintf(buf, "%d\t%d", i % 2, i);
  for (int j = 1; j < PSW_CTR_DENSE; j++) buf[n++] = '\t';
  n += (size_t)sprintf(buf + n, "\t%x", i);
  for (int f = 1; f < PSW_CTR_FIELDS; f++) buf[n++] = '\t';
  buf[n++] = '\n';
  return n;
}

START_TEST(test_load_criteo) {
  char path[600], text[4096];
  sprintf(path, "%s/t.tsv", ps_test_tmpdir());
  size_t len = 0;
  for (int i = 0; i < 8; i++) len += criteo_line(text + len, i);
  write_bytes(path, text, len, 1);
  ps_data_conf c = {.format = "criteo", .train_images = path, .test_images = path, .scale = 2,
                    .partitions = 4, .limit = 6};
  psw_dataset d;
  ps_errbuf eb = {""};
  uint32_t parts[] = {3, 1}; /* of 6 samples: 1..2 and 4..5 */
  ck_assert_msg(psw_data_load(&d, &c, 0, parts, 2, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 4);
  ck_assert_uint_eq(d.dim, PSW_CTR_DENSE);
  ck_assert_uint_eq(d.fields, PSW_CTR_FIELDS);
  static const int want[] = {1, 2, 4, 5};
  for (int k = 0; k < 4; k++) {
    int i = want[k];
    ck_assert_int_eq(d.y[k], i % 2);
    ck_assert(d.x[k * PSW_CTR_DENSE] == (float)log1p(i)); /* not scaled */
    ck_assert_uint_eq(d.keys[k * PSW_CTR_FIELDS], psw_ctr_key(0, (uint64_t)i));
    ck_assert_uint_eq(d.keys[k * PSW_CTR_FIELDS + 1], psw_ctr_key(1, UINT64_MAX));
  }
  psw_data_release(&d);
  ck_assert_msg(psw_data_load(&d, &c, 1, NULL, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 8);
  psw_data_release(&d);
  write_bytes(path, "1\t2\n", 4, 0);
  ck_assert_int_eq(psw_data_load(&d, &c, 1, NULL, 0, &eb), PS_EFORMAT);
  ck_assert_msg(strstr(eb.msg, "t.tsv:1: 2 tab-separated fields, expected 40"), "%s", eb.msg);
  write_bytes(path, "", 0, 0);
  ck_assert_int_eq(psw_data_load(&d, &c, 1, NULL, 0, &eb), PS_EFORMAT);
  ck_assert_msg(strstr(eb.msg, "t.tsv: no samples"), "%s", eb.msg);
}
END_TEST

START_TEST(test_partitions_cover) {
  for (uint32_t P = 1; P < 20; P++) {
    uint64_t next = 0;
    for (uint32_t p = 0; p < P; p++) {
      uint64_t b, e;
      psw_data_partition(1003, P, p, &b, &e);
      ck_assert_uint_eq(b, next);
      ck_assert(e - b == 1003 / P || e - b == 1003 / P + 1);
      next = e;
    }
    ck_assert_uint_eq(next, 1003);
  }
  uint32_t out[16];
  ck_assert_uint_eq(psw_data_parts_for_rank(16, 1, 3, out), 5);
  ck_assert_uint_eq(out[0], 1);
  ck_assert_uint_eq(out[4], 13);
}
END_TEST

/* tcheck_perm checks that IDX holds a permutation of 0..N-1. */
static void tcheck_perm(const uint32_t *idx, uint32_t n) {
  uint8_t *seen = calloc(n, 1);
  ck_assert_ptr_nonnull(seen);
  for (uint32_t i = 0; i < n; i++) {
    ck_assert_uint_lt(idx[i], n);
    ck_assert(!seen[idx[i]]);
    seen[idx[i]] = 1;
  }
  free(seen);
}

START_TEST(test_shuffle) {
  enum { N = 1000 };
  static uint32_t a[N], b[N], c[N];
  psw_data_shuffle(a, N, 42, 3);
  psw_data_shuffle(b, N, 42, 3);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  tcheck_perm(a, N);
  /* Another epoch or seed gives another order; not the identity. */
  psw_data_shuffle(c, N, 42, 4);
  ck_assert_int_ne(memcmp(a, c, sizeof a), 0);
  psw_data_shuffle(c, N, 43, 3);
  ck_assert_int_ne(memcmp(a, c, sizeof a), 0);
  int fixed = 0;
  for (int i = 0; i < N; i++) fixed += a[i] == (uint32_t)i;
  ck_assert_int_lt(fixed, 10);
  /* Known answer: the order must not change between builds or platforms. */
  uint32_t k[8];
  psw_data_shuffle(k, 8, 1, 0);
  static const uint32_t want[8] = {4, 1, 7, 5, 3, 0, 6, 2};
  for (int i = 0; i < 8; i++) ck_assert_msg(k[i] == want[i], "k[%d] = %u", i, k[i]);
}
END_TEST

/* A partition's order (issue 16): a function of (seed, epoch, partition)
 * alone, so an offset names the same samples on every worker; partitions
 * of the same size get different orders. */
START_TEST(test_part_order) {
  enum { N = 500 };
  static uint32_t a[N], b[N], c[N];
  psw_data_part_order(a, N, 7, 2, 3);
  psw_data_part_order(b, N, 7, 2, 3);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  tcheck_perm(a, N);
  psw_data_part_order(c, N, 7, 2, 4);
  ck_assert_int_ne(memcmp(a, c, sizeof a), 0);
  psw_data_part_order(c, N, 7, 3, 3);
  ck_assert_int_ne(memcmp(a, c, sizeof a), 0);
}
END_TEST

#define FMNIST "/usr/share/datasets/fashion-mnist/"

START_TEST(test_fashion_mnist_test_set) {
  if (access(FMNIST "t10k-labels-idx1-ubyte.gz", R_OK) != 0)
    PS_SKIP("%s not installed (Debian package dataset-fashion-mnist)", FMNIST);
  psw_dataset d;
  ps_errbuf eb = {""};
  int64_t t0 = ps_test_now_ms();
  ck_assert_msg(psw_data_load_idx(&d, FMNIST "t10k-images-idx3-ubyte.gz",
                                  FMNIST "t10k-labels-idx1-ubyte.gz", 1.0f / 255, NULL, &eb) == 0,
                "%s", eb.msg);
  int64_t ms = ps_test_now_ms() - t0;
  ck_assert_uint_eq(d.n, 10000);
  ck_assert_uint_eq(d.rows, 28);
  ck_assert_uint_eq(d.cols, 28);
  int count[10] = {0};
  for (uint64_t i = 0; i < d.n; i++) {
    ck_assert_int_ge(d.y[i], 0);
    ck_assert_int_lt(d.y[i], 10);
    count[d.y[i]]++;
  }
  for (int c = 0; c < 10; c++) ck_assert_int_eq(count[c], 1000);
  float mx = 0;
  for (uint64_t i = 0; i < d.n * d.dim; i++) mx = d.x[i] > mx ? d.x[i] : mx;
  ck_assert(mx == 1.0f);
  fprintf(stderr, "fashion-mnist t10k: 10000 images in %lld ms\n", (long long)ms);
  psw_data_release(&d);
}
END_TEST

START_TEST(test_fashion_mnist_train_partition) {
  if (access(FMNIST "train-images-idx3-ubyte.gz", R_OK) != 0)
    PS_SKIP("%s not installed (Debian package dataset-fashion-mnist)", FMNIST);
  psw_dataset all, part;
  ps_errbuf eb = {""};
  int64_t t0 = ps_test_now_ms();
  ck_assert_msg(psw_data_load_idx(&all, FMNIST "train-images-idx3-ubyte.gz",
                                  FMNIST "train-labels-idx1-ubyte.gz", 1.0f / 255, NULL, &eb) == 0,
                "%s", eb.msg);
  int64_t ms = ps_test_now_ms() - t0;
  ck_assert_uint_eq(all.n, 60000);
  uint32_t p = 13;
  psw_data_sel sel = {.nparts = 16, .parts = &p, .nsel = 1};
  ck_assert_msg(psw_data_load_idx(&part, FMNIST "train-images-idx3-ubyte.gz",
                                  FMNIST "train-labels-idx1-ubyte.gz", 1.0f / 255, &sel, &eb) == 0,
                "%s", eb.msg);
  ck_assert_uint_eq(part.n, 3750);
  ck_assert_int_eq(memcmp(part.x, all.x + 13 * 3750 * 784, 3750 * 784 * sizeof(float)), 0);
  ck_assert_int_eq(memcmp(part.y, all.y + 13 * 3750, 3750 * sizeof(int32_t)), 0);
  fprintf(stderr, "fashion-mnist train: 60000 images in %lld ms\n", (long long)ms);
  psw_data_release(&all);
  psw_data_release(&part);
}
END_TEST

Suite *psw_data_suite(void) {
  Suite *s = suite_create("psw_data");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_loop_test(tc, test_idx_all, 0, 2);
  tcase_add_loop_test(tc, test_idx_partitions, 0, 2);
  tcase_add_loop_test(tc, test_idx_bad_files, 0, 2);
  tcase_add_test(tc, test_not_regular_files);
  tcase_add_test(tc, test_idx_corrupt_gzip);
  tcase_add_test(tc, test_gzip_cut_short);
  tcase_add_loop_test(tc, test_idx_trailing, 0, 4);
  tcase_add_test(tc, test_gzip_members);
  tcase_add_loop_test(tc, test_csv_good, 0, 2);
  tcase_add_loop_test(tc, test_csv_bad, 0, (int)(sizeof csv_bad_cases / sizeof csv_bad_cases[0]));
  tcase_add_test(tc, test_load_by_config);
  tcase_add_test(tc, test_load_criteo);
  tcase_add_test(tc, test_partitions_cover);
  tcase_add_test(tc, test_shuffle);
  tcase_add_test(tc, test_part_order);
  tcase_add_test(tc, test_fashion_mnist_test_set);
  tcase_add_test(tc, test_fashion_mnist_train_partition);
  suite_add_tcase(s, tc);
  return s;
}
