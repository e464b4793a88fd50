/* psw_data: IDX and CSV readers, partitions, per-epoch shuffling.
 *
 * Both readers go through psw_gz, which reads gzipped and plain files
 * alike and refuses bytes after a gzip stream.  Invariants:
 *   1. A selection resolves to ascending, disjoint sample ranges, so an
 *      IDX file is only ever seeked forward (a backward gzseek would
 *      decompress from the start again).
 *   2. IDX byte offsets in messages count uncompressed bytes from the
 *      start of the file (what `zcat FILE | xxd` shows).
 *   3. CSV line numbers are 1-based physical lines, blank lines included. */
#include "psw_data.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ps_log.h"
#include "ps_place.h"
#include "psw_ctr.h"
#include "psw_gz.h"

typedef struct data_range {
  uint64_t begin, end;
} data_range;

void psw_data_partition(uint64_t n, uint32_t nparts, uint32_t part, uint64_t *begin,
                        uint64_t *end) {
  if (nparts == 0) nparts = 1;
  *begin = (uint64_t)((unsigned __int128)n * part / nparts);
  *end = (uint64_t)((unsigned __int128)n * (part + 1) / nparts);
}

uint64_t psw_data_file_index(uint64_t total, uint32_t nparts, const uint32_t *parts, size_t nsel,
                             uint64_t i) {
  uint64_t b, e;
  for (size_t j = 0; parts && j < nsel; j++) {
    psw_data_partition(total, nparts, parts[j], &b, &e);
    if (i < e - b) return b + i;
    i -= e - b;
  }
  return i;
}

size_t psw_data_parts_for_rank(uint32_t nparts, uint32_t rank, uint32_t workers, uint32_t *out) {
  size_t k = 0;
  if (workers == 0) workers = 1;
  for (uint32_t p = rank % workers; p < nparts; p += workers) out[k++] = p;
  return k;
}

static int data_cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* data_ranges resolves SEL over TOTAL samples into ascending ranges
 * (*OUT, caller frees) and their sample count *N.  Returns 0, PS_EINVAL
 * (bad partition list) or PS_ENOMEM. */
static int data_ranges(uint64_t total, const psw_data_sel *sel, data_range **out, size_t *nout,
                       uint64_t *n, ps_errbuf *eb) {
  uint32_t nparts = sel && sel->nparts ? sel->nparts : 1;
  size_t nsel = sel && sel->parts ? sel->nsel : nparts;
  uint32_t *parts = malloc((nsel ? nsel : 1) * sizeof *parts);
  data_range *rg = malloc((nsel ? nsel : 1) * sizeof *rg);
  if (!parts || !rg) {
    free(parts);
    free(rg);
    return ps_errf(eb, PS_ENOMEM, "out of memory for %zu partitions", nsel);
  }
  for (size_t i = 0; i < nsel; i++) parts[i] = sel && sel->parts ? sel->parts[i] : (uint32_t)i;
  qsort(parts, nsel, sizeof *parts, data_cmp_u32);
  *n = 0;
  for (size_t i = 0; i < nsel; i++) {
    if (parts[i] >= nparts || (i && parts[i] == parts[i - 1])) {
      int r = ps_errf(eb, PS_EINVAL, parts[i] >= nparts ? "partition %" PRIu32 " out of range (%" PRIu32 " partitions)" : "partition %" PRIu32 " given twice (%" PRIu32 " partitions)", parts[i], nparts);
      free(parts);
      free(rg);
      return r;
    }
    psw_data_partition(total, nparts, parts[i], &rg[i].begin, &rg[i].end);
    *n += rg[i].end - rg[i].begin;
  }
  free(parts);
  *out = rg;
  *nout = nsel;
  return 0;
}

/* ---- IDX ----------------------------------------------------------------- */

typedef struct idx_file {
  psw_gz *z;
  const char *path;
  uint64_t off;     /* uncompressed offset of the next byte */
  uint64_t count;   /* records */
  uint32_t dims[3]; /* dims[0] = count */
  uint64_t rec;     /* bytes per record */
  uint64_t hdr;     /* bytes before record 0; 0 while reading the header */
  const char *kind; /* "image" | "label", for messages */
  uint64_t size;    /* the file's size in bytes (UINT64_MAX: unknown) */
} idx_file;

/* idx_truncated reports a file that ends at f->off. */
static int idx_truncated(idx_file *f, ps_errbuf *eb) {
  if (!f->hdr)
    return ps_errf(eb, PS_EFORMAT, "%s: byte %" PRIu64 ": truncated file (in the header)",
                   f->path, f->off);
  return ps_errf(eb, PS_EFORMAT, "%s: byte %" PRIu64 ": truncated file (%s %" PRIu64 " of %"
                 PRIu64 " incomplete)", f->path, f->off, f->kind, (f->off - f->hdr) / f->rec,
                 f->count);
}

/* idx_read reads exactly LEN bytes (BUF NULL: skips them).  A gzip
 * stream cut short or corrupt is psw_gz's "truncated or corrupt gzip
 * file" error; data that ends early in a whole file is idx_truncated. */
static int idx_read(idx_file *f, void *buf, uint64_t len, ps_errbuf *eb) {
  size_t got = 0;
  int r = psw_gz_read(f->z, buf, (size_t)len, &got, eb);
  f->off += got;
  return r < 0 ? r : got < len ? idx_truncated(f, eb) : 0;
}

/* idx_seek moves forward to uncompressed offset OFF. */
static int idx_seek(idx_file *f, uint64_t off, ps_errbuf *eb) {
  return off == f->off ? 0 : idx_read(f, NULL, off - f->off, eb);
}

static uint32_t idx_be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* idx_open opens PATH and reads its header, expecting NDIMS dimensions
 * of unsigned bytes (KIND: "image" or "label", for messages). */
static int idx_open(idx_file *f, const char *path, unsigned ndims, const char *kind,
                    ps_errbuf *eb) {
  memset(f, 0, sizeof *f);
  f->path = path;
  f->kind = kind;
  int r = psw_gz_open(&f->z, path, eb);
  if (r < 0) return r;
  unsigned char h[16];
  uint32_t want = 0x00000800u | ndims;
  r = idx_read(f, h, 4, eb);
  if (r == 0 && idx_be32(h) != want)
    r = ps_errf(eb, PS_EFORMAT, "%s: byte 0: bad magic 0x%08" PRIx32 " (expected 0x%08" PRIx32
                ", IDX %s file)", path, idx_be32(h), want, kind);
  if (r == 0) r = idx_read(f, h + 4, 4 * ndims, eb);
  f->rec = 1;
  for (unsigned i = 0; r == 0 && i < ndims; i++) {
    f->dims[i] = idx_be32(h + 4 + 4 * i);
    if (i > 0 && (f->dims[i] == 0 || f->dims[i] > 65536))
      r = ps_errf(eb, PS_EFORMAT, "%s: byte %u: bad dimension %" PRIu32, path, 4 + 4 * i,
                  f->dims[i]);
    if (i > 0) f->rec *= f->dims[i];
  }
  if (r == 0 && f->rec > (1u << 24))
    r = ps_errf(eb, PS_EFORMAT, "%s: byte 8: records of %" PRIu64 " bytes are too large", path,
                f->rec);
  if (r < 0) {
    psw_gz_close(f->z);
    f->z = NULL;
    return r;
  }
  f->count = f->dims[0];
  f->hdr = 4 + 4 * (uint64_t)ndims;
  struct stat st;
  f->size = stat(path, &st) == 0 && st.st_size > 0 ? (uint64_t)st.st_size : UINT64_MAX;
  return 0;
}

/* idx_longer reports a file with MORE bytes after its last record. */
static int idx_longer(idx_file *f, uint64_t more, ps_errbuf *eb) {
  return ps_errf(eb, PS_EFORMAT, "%s: byte %" PRIu64 ": %" PRIu64 " more bytes after the last of "
                 "the %" PRIu64 " %ss its header counts (two files joined, or one written over "
                 "a longer one?)", f->path, f->hdr + f->count * f->rec, more, f->count, f->kind);
}

/* idx_fits checks that the file can hold its first N records before
 * anything is sized from its header: a plain file holds its size (else
 * it is truncated, fewer or more bytes refused whichever records are
 * loaded, data.limit's first N too), a gzip one at most 1032 times that
 * (deflate's largest ratio). */
static int idx_fits(idx_file *f, uint64_t n, ps_errbuf *eb) {
  uint64_t whole = f->hdr + f->count * f->rec; /* count < 2^32, rec <= 2^24 */
  if (psw_gz_direct(f->z) && f->size != UINT64_MAX) {
    if (f->size > whole) return idx_longer(f, f->size - whole, eb);
    if (f->size < whole) { /* cut short: refused whatever data.limit is */
      f->off = f->size;
      return idx_truncated(f, eb);
    }
    return 0;
  }
  uint64_t most = f->size == UINT64_MAX ? UINT64_MAX
                  : f->size > UINT64_MAX / 1032 ? UINT64_MAX : f->size * 1032;
  if (n <= most / f->rec) return 0;
  return ps_errf(eb, PS_EFORMAT, "%s: byte 4: %" PRIu64 " %ss of %" PRIu64 " bytes, but %" PRIu64
                 " compressed bytes hold at most %" PRIu64 " (truncated, or not an IDX file)",
                 f->path, n, f->kind, f->rec, f->size, most);
}

/* idx_check_end reads F on from the end of its last record to the end
 * of the file: the gzip trailer holds the check of all the data (a file
 * cut there would pass as whole), and bytes after the records (in the
 * stream, or in a second gzip member) are not data its header counts. */
static int idx_check_end(idx_file *f, ps_errbuf *eb) {
  uint64_t more = 0;
  size_t got;
  int r;
  do {
    r = psw_gz_read(f->z, NULL, 1u << 20, &got, eb);
    more += got;
  } while (r == 0 && got == 1u << 20);
  return r < 0 ? r : more ? idx_longer(f, more, eb) : 0;
}

static void idx_close(idx_file *f) {
  psw_gz_close(f->z);
  f->z = NULL;
}

/* idx_read_images reads records [BEGIN, END) of IM into X as scaled floats
 * (LUT maps a byte to its float), a block of records at a time. */
static int idx_read_images(idx_file *im, uint64_t begin, uint64_t end, const float *lut,
                           float *x, unsigned char *buf, uint64_t bufrecs, ps_errbuf *eb) {
  int r = idx_seek(im, im->hdr + begin * im->rec, eb);
  for (uint64_t i = begin; r == 0 && i < end; i += bufrecs) {
    uint64_t k = end - i < bufrecs ? end - i : bufrecs, len = k * im->rec;
    if ((r = idx_read(im, buf, len, eb)) < 0) break;
    float *dst = x + (i - begin) * im->rec;
    for (uint64_t j = 0; j < len; j++) dst[j] = lut[buf[j]];
  }
  return r;
}

/* idx_read_labels reads labels [BEGIN, END) of LB into Y. */
static int idx_read_labels(idx_file *lb, uint64_t begin, uint64_t end, int32_t *y,
                           unsigned char *buf, uint64_t buflen, ps_errbuf *eb) {
  int r = idx_seek(lb, lb->hdr + begin, eb);
  for (uint64_t i = begin; r == 0 && i < end; i += buflen) {
    uint64_t k = end - i < buflen ? end - i : buflen;
    if ((r = idx_read(lb, buf, k, eb)) < 0) break;
    for (uint64_t j = 0; j < k; j++) y[i - begin + j] = buf[j];
  }
  return r;
}

/* data_alloc sizes D for N samples of DIM features. */
static int data_alloc(psw_dataset *d, uint64_t n, uint32_t dim, ps_errbuf *eb) {
  d->n = n;
  d->dim = dim;
  d->x = malloc(n && dim ? n * dim * sizeof *d->x : 1);
  d->y = malloc(n ? n * sizeof *d->y : 1);
  if (!d->x || !d->y)
    return ps_errf(eb, PS_ENOMEM, "out of memory for %" PRIu64 " samples of %" PRIu32
                   " features", n, dim);
  return 0;
}

/* idx_load_ranges reads the samples of RG[0..NRG) into D. */
static int idx_load_ranges(psw_dataset *d, idx_file *im, idx_file *lb, const data_range *rg,
                           size_t nrg, float scale, ps_errbuf *eb) {
  float lut[256];
  for (int i = 0; i < 256; i++) lut[i] = (float)i * scale;
  if (!isfinite(lut[255]))
    return ps_errf(eb, PS_EINVAL, "%s: data.scale %g makes pixel 255 %g, not a finite number",
                   im->path, (double)scale, (double)lut[255]);
  uint64_t bufrecs = (1u << 20) / im->rec + 1;
  unsigned char *buf = malloc(bufrecs * im->rec > (1u << 20) ? bufrecs * im->rec : (1u << 20));
  if (!buf) return ps_errf(eb, PS_ENOMEM, "out of memory");
  int r = 0;
  uint64_t at = 0;
  for (size_t i = 0; r == 0 && i < nrg; i++) {
    r = idx_read_images(im, rg[i].begin, rg[i].end, lut, d->x + at * d->dim, buf, bufrecs, eb);
    if (r == 0)
      r = idx_read_labels(lb, rg[i].begin, rg[i].end, d->y + at, buf, 1u << 20, eb);
    at += rg[i].end - rg[i].begin;
  }
  if (r == 0 && nrg && rg[nrg - 1].end == im->count) /* read up to the end: check it */
    if ((r = idx_check_end(im, eb)) == 0) r = idx_check_end(lb, eb);
  free(buf);
  return r;
}

int psw_data_load_idx(psw_dataset *d, const char *images, const char *labels, float scale,
                      const psw_data_sel *sel, ps_errbuf *eb) {
  memset(d, 0, sizeof *d);
  idx_file im, lb;
  data_range *rg = NULL;
  size_t nrg = 0;
  uint64_t n = 0;
  int r = idx_open(&im, images, 3, "image", eb);
  if (r < 0) return r;
  if ((r = idx_open(&lb, labels, 1, "label", eb)) < 0) goto out_images;
  if (im.count != lb.count) {
    r = ps_errf(eb, PS_EFORMAT, "%s: byte 4: %" PRIu64 " images but '%s' holds %" PRIu64
                " labels", images, im.count, labels, lb.count);
    goto out_labels;
  }
  if (im.count == 0) { /* as an empty CSV: training on nothing is no success */
    r = ps_errf(eb, PS_EFORMAT, "%s: byte 4: no samples (its header counts 0 images)", images);
    goto out_labels;
  }
  uint64_t total = sel && sel->limit && sel->limit < im.count ? sel->limit : im.count;
  if ((r = idx_fits(&im, total, eb)) < 0 || (r = idx_fits(&lb, total, eb)) < 0) goto out_labels;
  if ((r = data_ranges(total, sel, &rg, &nrg, &n, eb)) < 0) goto out_labels;
  if ((r = data_alloc(d, n, (uint32_t)im.rec, eb)) < 0) goto out_data;
  d->rows = im.dims[1];
  d->cols = im.dims[2];
  d->total = total;
  r = idx_load_ranges(d, &im, &lb, rg, nrg, scale, eb);
out_data:
  if (r < 0) psw_data_release(d);
  free(rg);
out_labels:
  idx_close(&lb);
out_images:
  idx_close(&im);
  return r;
}

/* ---- CSV ----------------------------------------------------------------- */

typedef struct csv_line {
  char *text;       /* NUL-terminated, no line end */
  uint64_t lineno;
} csv_line;

/* csv_slurp reads the whole (possibly gzipped) file into *BUF (caller
 * frees) with a NUL after the *LEN bytes. */
static int csv_slurp(const char *path, char **buf, size_t *len, ps_errbuf *eb) {
  psw_gz *z;
  int r = psw_gz_open(&z, path, eb);
  if (r < 0) return r;
  size_t cap = 1 << 20, n = 0, got = 0;
  char *b = malloc(cap + 1);
  while (b && (r = psw_gz_read(z, b + n, cap - n, &got, eb)) == 0 && (n += got) == cap) {
    char *nb = realloc(b, 2 * cap + 1);
    if (!nb) free(b);
    b = nb;
    cap *= 2;
  }
  if (!b) r = ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
  else if (r) free(b);
  psw_gz_close(z);
  if (r == 0) {
    b[n] = 0;
    *buf = b;
    *len = n;
  }
  return r;
}

/* csv_is_blank says whether S holds only spaces and tabs. */
static int csv_is_blank(const char *s) {
  return s[strspn(s, " \t")] == 0;
}

/* csv_split cuts BUF into lines, skipping blank ones, into *LINES (caller
 * frees), NUL-terminating each.  A NUL byte in a line is refused: the
 * parsers would stop at it and take "7<NUL>garbage" for 7. */
static int csv_split(const char *path, char *buf, size_t len, csv_line **lines, size_t *nlines,
                     ps_errbuf *eb) {
  size_t cap = 1024, n = 0;
  csv_line *v = malloc(cap * sizeof *v);
  uint64_t lineno = 0;
  for (char *p = buf; v && p < buf + len;) {
    char *nl = memchr(p, '\n', (size_t)(buf + len - p));
    char *end = nl ? nl : buf + len;
    const char *nul = memchr(p, 0, (size_t)(end - p));
    if (nul) {
      free(v);
      return ps_errf(eb, PS_EFORMAT, "%s:%" PRIu64 ": a NUL byte at column %zu (CSV is text: a "
                     "binary or UTF-16 file?)", path, lineno + 1, (size_t)(nul - p) + 1);
    }
    *end = 0;
    if (end > p && end[-1] == '\r') end[-1] = 0;
    lineno++;
    if (!csv_is_blank(p)) {
      if (n == cap) {
        csv_line *nv = realloc(v, 2 * cap * sizeof *v);
        if (!nv) free(v);
        v = nv;
        cap *= 2;
      }
      if (v) v[n++] = (csv_line){p, lineno};
    }
    p = end + 1;
  }
  if (!v) return ps_errf(eb, PS_ENOMEM, "out of memory for %" PRIu64 " lines", lineno);
  *lines = v;
  *nlines = n;
  return 0;
}

/* csv_field_end says whether P ends a field (spaces, then ',' or the end). */
static const char *csv_field_end(const char *p) {
  p += strspn(p, " \t");
  return *p == ',' || *p == 0 ? p : NULL;
}

/* csv_nfields counts the comma-separated fields of S. */
static uint32_t csv_nfields(const char *s) {
  uint32_t k = 1;
  for (; *s; s++) k += *s == ',';
  return k;
}

/* csv_bad_field reports field FIELD (1-based) starting at P of line L. */
static int csv_bad_field(const char *path, const csv_line *l, uint32_t field, const char *p,
                         const char *what, ps_errbuf *eb) {
  p += strspn(p, " \t");
  char text[34], shown[32 * 4 + 8]; /* a CR (old Mac line ends), an escape: as \xNN */
  size_t len = strcspn(p, ",");
  snprintf(text, sizeof text, "%.*s", (int)(len > 33 ? 33 : len), p);
  return ps_errf(eb, PS_EFORMAT, "%s:%" PRIu64 ": field %" PRIu32 " '%s' is not %s", path,
                 l->lineno, field, ps_log_escape(shown, sizeof shown, text, 32), what);
}

/* csv_parse_row parses line L into label *Y and DIM features X. */
static int csv_parse_row(const char *path, const csv_line *l, uint32_t dim, uint64_t dim_line,
                         float scale, int32_t *y, float *x, ps_errbuf *eb) {
  uint32_t nf = csv_nfields(l->text);
  if (nf != dim + 1)
    return ps_errf(eb, PS_EFORMAT, "%s:%" PRIu64 ": %" PRIu32 " fields, expected %" PRIu32
                   " as on line %" PRIu64, path, l->lineno, nf, dim + 1, dim_line);
  const char *p = l->text;
  char *end;
  errno = 0;
  long v = strtol(p, &end, 10);
  const char *fe = end != p ? csv_field_end(end) : NULL;
  if (!fe || errno || v < INT32_MIN || v > INT32_MAX)
    return csv_bad_field(path, l, 1, p, "an integer label", eb);
  *y = (int32_t)v;
  for (uint32_t j = 0; j < dim; j++) {
    p = fe + 1;
    float f = strtof(p, &end);
    fe = end != p ? csv_field_end(end) : NULL;
    if (!fe || !isfinite(f)) return csv_bad_field(path, l, j + 2, p, "a finite number", eb);
    if (memchr(p, 'x', (size_t)(end - p)) || memchr(p, 'X', (size_t)(end - p))) /* strtof's hex */
      return csv_bad_field(path, l, j + 2, p, "a decimal number", eb);
    x[j] = f * scale;
    if (!isfinite(x[j]))
      return csv_bad_field(path, l, j + 2, p, "a number that data.scale leaves finite", eb);
  }
  return 0;
}

/* csv_is_header: a first line whose first field is not a number. */
static int csv_is_header(const char *s) {
  char *end;
  strtod(s, &end);
  return end == s || !csv_field_end(end);
}

/* csv_load_lines parses the selected data lines into D. */
static int csv_load_lines(psw_dataset *d, const char *path, const csv_line *lines,
                          size_t nlines, float scale, const psw_data_sel *sel, ps_errbuf *eb) {
  if (nlines == 0) return ps_errf(eb, PS_EFORMAT, "%s: no samples", path);
  uint32_t nf = csv_nfields(lines[0].text);
  if (nf < 2)
    return ps_errf(eb, PS_EFORMAT, "%s:%" PRIu64 ": expected a label and at least one feature",
                   path, lines[0].lineno);
  uint64_t total = sel && sel->limit && sel->limit < nlines ? sel->limit : nlines, n;
  data_range *rg;
  size_t nrg;
  int r = data_ranges(total, sel, &rg, &nrg, &n, eb);
  if (r < 0) return r;
  if ((r = data_alloc(d, n, nf - 1, eb)) < 0) goto out_ranges;
  d->total = total;
  uint64_t at = 0;
  for (size_t i = 0; r == 0 && i < nrg; i++)
    for (uint64_t s = rg[i].begin; r == 0 && s < rg[i].end; s++, at++)
      r = csv_parse_row(path, &lines[s], d->dim, lines[0].lineno, scale, &d->y[at],
                        d->x + at * d->dim, eb);
out_ranges:
  free(rg);
  return r;
}

/* csv_read reads PATH into *BUF (caller frees) cut into its non-blank
 * *LINES (caller frees), *SKIP 1 when the first is a header line. */
static int csv_read(const char *path, char **buf, csv_line **lines, size_t *nlines, size_t *skip,
                    ps_errbuf *eb) {
  size_t len = 0;
  *lines = NULL;
  *nlines = *skip = 0;
  int r = csv_slurp(path, buf, &len, eb);
  if (r < 0) return r;
  /* a UTF-8 byte order mark (spreadsheets write one) is not part of line 1 */
  size_t bom = len >= 3 && !memcmp(*buf, "\xef\xbb\xbf", 3) ? 3 : 0;
  if ((r = csv_split(path, *buf + bom, len - bom, lines, nlines, eb)) < 0) {
    free(*buf);
    *buf = NULL;
    return r;
  }
  *skip = *nlines > 0 && csv_is_header((*lines)[0].text);
  return 0;
}

int psw_data_csv_line(const char *path, uint64_t index, uint64_t *lineno, ps_errbuf *eb) {
  char *buf = NULL;
  csv_line *lines = NULL;
  size_t nlines, skip;
  int r = csv_read(path, &buf, &lines, &nlines, &skip, eb);
  if (r < 0) return r;
  if (index < nlines - skip) *lineno = lines[skip + index].lineno;
  else r = ps_errf(eb, PS_EFORMAT, "%s: no sample %" PRIu64 " (the file changed?)", path, index);
  free(lines);
  free(buf);
  return r;
}

int psw_data_load_csv(psw_dataset *d, const char *path, float scale, const psw_data_sel *sel,
                      ps_errbuf *eb) {
  memset(d, 0, sizeof *d);
  char *buf = NULL;
  size_t nlines = 0, skip = 0;
  csv_line *lines = NULL;
  int r = csv_read(path, &buf, &lines, &nlines, &skip, eb);
  if (r < 0) return r;
  static char said[512]; /* a file is loaded again for each block of partitions: said once */
  if (skip && strncmp(said, path, sizeof said)) {
    ps_info("%s:%" PRIu64 ": a header line (its first field is not a number): skipped", path,
            lines[0].lineno);
    snprintf(said, sizeof said, "%s", path);
  }
  r = csv_load_lines(d, path, lines + skip, nlines - skip, scale, sel, eb);
  if (r < 0) psw_data_release(d);
  free(lines);
  free(buf);
  return r;
}

/* ---- by configuration ---------------------------------------------------- */

/* data_conf_files returns in F the files of the training or test set
 * (TEST) of C: images and labels for idx, one file (F[1] NULL) for csv
 * and criteo; PS_ECONFIG when C names them not. */
static int data_conf_files(const ps_data_conf *c, int test, const char *f[2], ps_errbuf *eb) {
  int idx = !c->format || !strcmp(c->format, "idx");
  f[0] = test ? c->test_images : c->train_images;
  f[1] = !idx ? NULL : test ? c->test_labels : c->train_labels;
  const char *set = test ? "test" : "training", *key = test ? "test" : "train";
  if (!f[0] || (idx && !f[1]))
    return idx ? ps_errf(eb, PS_ECONFIG, "no %s set in 'data' (%s_images, %s_labels)", set, key, key)
               : ps_errf(eb, PS_ECONFIG, "no %s set in 'data' (%s_images)", set, key);
  return 0;
}

const char *psw_data_label_file(const ps_data_conf *conf, int test) {
  int idx = !conf->format || !strcmp(conf->format, "idx");
  return idx ? (test ? conf->test_labels : conf->train_labels)
             : (test ? conf->test_images : conf->train_images);
}

static int data_conf_idx(psw_dataset *d, const ps_data_conf *c, int test,
                         const psw_data_sel *sel, ps_errbuf *eb) {
  const char *f[2];
  int r = data_conf_files(c, test, f, eb);
  return r < 0 ? r : psw_data_load_idx(d, f[0], f[1], (float)c->scale, sel, eb);
}

/* data_conf_file returns in *F the one file of the training or test set
 * (csv, criteo); PS_ECONFIG when C names none. */
static int data_conf_file(const ps_data_conf *c, int test, const char **f, ps_errbuf *eb) {
  const char *two[2];
  int r = data_conf_files(c, test, two, eb);
  *f = two[0];
  return r;
}

static int data_conf_csv(psw_dataset *d, const ps_data_conf *c, int test,
                         const psw_data_sel *sel, ps_errbuf *eb) {
  const char *f;
  int r = data_conf_file(c, test, &f, eb);
  return r < 0 ? r : psw_data_load_csv(d, f, (float)c->scale, sel, eb);
}

/* data_conf_criteo loads a Criteo log (psw_ctr_load, the first LIMIT
 * samples) and keeps the selected partitions, moved down in place. */
static int data_conf_criteo(psw_dataset *d, const ps_data_conf *c, int test,
                            const psw_data_sel *sel, ps_errbuf *eb) {
  const char *f;
  psw_ctr log;
  int r = data_conf_file(c, test, &f, eb);
  if (r < 0 || (r = psw_ctr_load(&log, f, sel ? sel->limit : 0, eb)) < 0) return r;
  if (!log.n) {
    psw_ctr_release(&log);
    return ps_errf(eb, PS_EFORMAT, "%s: no samples", f);
  }
  data_range *rg;
  size_t nrg;
  uint64_t n, at = 0;
  if ((r = data_ranges(log.n, sel, &rg, &nrg, &n, eb)) < 0) {
    psw_ctr_release(&log);
    return r;
  }
  for (size_t i = 0; i < nrg; i++) { /* ascending ranges: moving down is safe */
    uint64_t k = rg[i].end - rg[i].begin, b = rg[i].begin;
    memmove(log.label + at, log.label + b, k * sizeof *log.label);
    memmove(log.dense + at * PSW_CTR_DENSE, log.dense + b * PSW_CTR_DENSE,
            k * PSW_CTR_DENSE * sizeof *log.dense);
    memmove(log.keys + at * PSW_CTR_FIELDS, log.keys + b * PSW_CTR_FIELDS,
            k * PSW_CTR_FIELDS * sizeof *log.keys);
    at += k;
  }
  free(rg);
  *d = (psw_dataset){.n = n, .dim = PSW_CTR_DENSE, .total = log.n, .x = log.dense,
                     .y = log.label, .fields = PSW_CTR_FIELDS, .keys = log.keys};
  return 0;
}

static const struct data_format {
  const char *name;
  int (*load)(psw_dataset *d, const ps_data_conf *c, int test, const psw_data_sel *sel,
              ps_errbuf *eb);
} data_formats[] = {
    {"idx", data_conf_idx},
    {"csv", data_conf_csv},
    {"criteo", data_conf_criteo},
};

int psw_data_load(psw_dataset *d, const ps_data_conf *conf, int test, const uint32_t *parts,
                  size_t nsel, ps_errbuf *eb) {
  memset(d, 0, sizeof *d);
  psw_data_sel sel = {.limit = conf->limit, .nparts = conf->partitions, .parts = parts,
                      .nsel = nsel};
  const char *fmt = conf->format ? conf->format : "idx";
  for (size_t i = 0; i < sizeof data_formats / sizeof data_formats[0]; i++)
    if (!strcmp(fmt, data_formats[i].name))
      return data_formats[i].load(d, conf, test, test ? NULL : &sel, eb);
  return ps_errf(eb, PS_ECONFIG, "unknown data format '%s'", fmt);
}

/* psw_data_conf_check: see psw_data.h. */
int psw_data_conf_check(const ps_data_conf *conf, int test, ps_errbuf *eb) {
  const char *files[2];
  int err = data_conf_files(conf, test, files, eb);
  struct stat st;
  for (int i = 0; err == 0 && i < 2; i++)
    if (files[i] && (access(files[i], R_OK) != 0 || stat(files[i], &st) != 0))
      err = ps_errf(eb, PS_ECONFIG, "%s set: cannot read '%s': %s", test ? "test" : "training",
                    files[i], strerror(errno));
    else if (files[i] && !S_ISREG(st.st_mode)) /* a FIFO would block psw's open */
      err = ps_errf(eb, PS_ECONFIG, "%s set: '%s' is %s, not a data file",
                    test ? "test" : "training", files[i], psw_gz_kind(st.st_mode));
  return err;
}

void psw_data_release(psw_dataset *d) {
  if (!d) return;
  free(d->x);
  free(d->y);
  free(d->keys);
  memset(d, 0, sizeof *d);
}

/* ---- shuffling ----------------------------------------------------------- */

void psw_data_shuffle(uint32_t *idx, uint32_t n, uint64_t seed, uint32_t epoch) {
  uint64_t s = seed ^ ((uint64_t)epoch * 0xd1b54a32d192ed03ull);
  s = ps_splitmix64(&s);
  for (uint32_t i = 0; i < n; i++) idx[i] = i;
  for (uint32_t i = n; i > 1; i--) {
    /* Multiply-shift maps 64 random bits to [0, i) without division. */
    uint32_t j = (uint32_t)(((unsigned __int128)ps_splitmix64(&s) * i) >> 64);
    uint32_t t = idx[i - 1];
    idx[i - 1] = idx[j];
    idx[j] = t;
  }
}

void psw_data_part_order(uint32_t *idx, uint32_t n, uint64_t seed, uint32_t epoch,
                         uint32_t part) {
  psw_data_shuffle(idx, n, seed ^ ps_mix64(0x70617274ull + part), epoch);
}
