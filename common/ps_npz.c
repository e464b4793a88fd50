/* ps_npz: .npz writer and reader (zip of stored NPY 1.0 members).
 *
 * Zip layout written (APPNOTE 6.3, no zip64, no data descriptors):
 *   for each member: local header (30 bytes) + name + NPY bytes
 *   central directory: one 46-byte header + name per member
 *   end of central directory (22 bytes)
 * Invariants:
 *   1. Sizes and CRC-32 are known before a member is written (the data is
 *      in memory), so local headers are final and the file is streamed.
 *   2. Every offset and size fits in 32 bits: checked before writing.
 *   3. The NPY header length makes 10 + header_len a multiple of 64. */
#include "ps_npz.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define NPZ_LOCAL_SIG 0x04034b50u
#define NPZ_CENTRAL_SIG 0x02014b50u
#define NPZ_END_SIG 0x06054b50u
#define NPZ_VERSION 20         /* zip 2.0: stored members */
#define NPZ_DOS_DATE 0x0021    /* 1980-01-01: reproducible archives */
#define NPZ_MAX_NAME 1024

static void npz_put16(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8);
}
static void npz_put32(unsigned char *p, uint32_t v) {
  npz_put16(p, v & 0xffff), npz_put16(p + 2, v >> 16);
}
static uint32_t npz_get16(const unsigned char *p) { return p[0] | (uint32_t)p[1] << 8; }
static uint32_t npz_get32(const unsigned char *p) {
  return npz_get16(p) | npz_get16(p + 2) << 16;
}

static int npz_little_endian(void) {
  const uint16_t one = 1;
  return *(const unsigned char *)&one == 1;
}

/* npz_header writes the NPY 1.0 header of A to BUF (at least 256 + 24 *
 * ndim bytes) and returns its length, a multiple of 64. */
static size_t npz_header(const ps_npz_array *a, char *buf, size_t cap) {
  char shape[24 * PS_NPZ_MAX_DIMS + 8];
  size_t s = 0;
  shape[s++] = '(';
  for (uint32_t i = 0; i < a->ndim; i++)
    s += (size_t)snprintf(shape + s, sizeof shape - s, i ? " %" PRIu64 "," : "%" PRIu64 ",",
                          a->shape[i]);
  if (a->ndim > 1) s--; /* "(3,)" keeps its comma, "(3, 4)" does not */
  shape[s++] = ')';
  shape[s] = 0;
  int d = snprintf(buf + 10, cap - 10, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }",
                   shape);
  size_t total = (10 + (size_t)d + 1 + 63) / 64 * 64; /* + 1 for the '\n' */
  memset(buf + 10 + d, ' ', total - 10 - (size_t)d - 1);
  buf[total - 1] = '\n';
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  npz_put16((unsigned char *)buf + 8, (uint32_t)(total - 10));
  return total;
}

/* npz_nelems multiplies A's shape out; returns 0 or PS_ETOOBIG. */
static int npz_nelems(const ps_npz_array *a, uint64_t *n, ps_errbuf *eb) {
  uint64_t k = 1;
  for (uint32_t i = 0; i < a->ndim; i++) {
    if (a->shape[i] && k > UINT64_MAX / 4 / a->shape[i])
      return ps_errf(eb, PS_ETOOBIG, "array '%s' is too large", a->name);
    k *= a->shape[i];
  }
  *n = k;
  return 0;
}

/* npz_check validates the arrays and that the archive stays below 4 GiB. */
static int npz_check(const ps_npz_array *arrays, size_t n, ps_errbuf *eb) {
  if (n >= 0xffff) return ps_errf(eb, PS_ETOOBIG, "%zu arrays: an .npz holds at most 65534", n);
  uint64_t total = 22;
  for (size_t i = 0; i < n; i++) {
    const ps_npz_array *a = &arrays[i];
    size_t len = a->name ? strlen(a->name) : 0;
    if (!len || len > NPZ_MAX_NAME - 5)
      return ps_errf(eb, PS_EINVAL, "array %zu: name must be 1..%d bytes", i, NPZ_MAX_NAME - 5);
    if (a->ndim > PS_NPZ_MAX_DIMS)
      return ps_errf(eb, PS_EINVAL, "array '%s': %" PRIu32 " dimensions, at most %d", a->name,
                     a->ndim, PS_NPZ_MAX_DIMS);
    for (size_t j = 0; j < i; j++)
      if (!strcmp(arrays[j].name, a->name))
        return ps_errf(eb, PS_EINVAL, "duplicate array '%s'", a->name);
    uint64_t ne;
    int r = npz_nelems(a, &ne, eb);
    if (r < 0) return r;
    total += 30 + 46 + 2 * (len + 4) + 64 + 24 * (uint64_t)PS_NPZ_MAX_DIMS + 4 * ne;
    if (total > 0xffffffffu)
      return ps_errf(eb, PS_ETOOBIG, "archive would reach 4 GiB at array '%s' (zip64 is not "
                     "supported)", a->name);
  }
  return 0;
}

/* npz_crc extends CRC over LEN bytes (zlib takes uInt lengths). */
static uint32_t npz_crc(uint32_t crc, const void *p, uint64_t len) {
  const unsigned char *b = p;
  while (len > 0) {
    uInt k = len > (1u << 30) ? (1u << 30) : (uInt)len;
    crc = (uint32_t)crc32(crc, b, k);
    b += k;
    len -= k;
  }
  return crc;
}

/* npz_data_le gives A's data little-endian: A's own on little-endian
 * hosts, else a swapped copy in *COPY (caller frees). */
static const void *npz_data_le(const ps_npz_array *a, uint64_t ne, void **copy) {
  *copy = NULL;
  if (npz_little_endian() || ne == 0) return a->data;
  uint32_t *c = malloc(ne * 4);
  if (!c) return NULL;
  memcpy(c, a->data, ne * 4);
  for (uint64_t i = 0; i < ne; i++) c[i] = __builtin_bswap32(c[i]);
  return *copy = c;
}

typedef struct npz_member {
  uint32_t crc, size, offset;
} npz_member;

/* npz_write_member writes A's local header and NPY bytes at offset *OFF
 * of F and fills M. */
static int npz_write_member(FILE *f, const ps_npz_array *a, uint64_t *off, npz_member *m,
                            ps_errbuf *eb) {
  char hdr[256 + 24 * PS_NPZ_MAX_DIMS];
  size_t hlen = npz_header(a, hdr, sizeof hdr);
  uint64_t ne = 0;
  npz_nelems(a, &ne, eb);
  void *copy;
  const void *data = npz_data_le(a, ne, &copy);
  if (ne && !data) return ps_errf(eb, PS_ENOMEM, "out of memory for array '%s'", a->name);
  m->crc = npz_crc(npz_crc((uint32_t)crc32(0, Z_NULL, 0), hdr, hlen), data, ne * 4);
  m->size = (uint32_t)(hlen + ne * 4);
  m->offset = (uint32_t)*off;
  size_t nlen = strlen(a->name) + 4;
  unsigned char lh[30] = {0};
  npz_put32(lh, NPZ_LOCAL_SIG);
  npz_put16(lh + 4, NPZ_VERSION);
  npz_put16(lh + 12, NPZ_DOS_DATE);
  npz_put32(lh + 14, m->crc);
  npz_put32(lh + 18, m->size);
  npz_put32(lh + 22, m->size);
  npz_put16(lh + 26, (uint32_t)nlen);
  int ok = fwrite(lh, 30, 1, f) == 1 && fputs(a->name, f) >= 0 && fputs(".npy", f) >= 0 &&
           fwrite(hdr, hlen, 1, f) == 1 && (ne == 0 || fwrite(data, ne * 4, 1, f) == 1);
  free(copy);
  *off += 30 + nlen + m->size;
  return ok ? 0 : ps_errf(eb, ps_err_from_errno(errno), "writing array '%s': %s", a->name,
                          strerror(errno));
}

/* npz_write_directory writes the central directory and its end record. */
static int npz_write_directory(FILE *f, const ps_npz_array *arrays, const npz_member *m,
                               size_t n, uint64_t off, ps_errbuf *eb) {
  uint64_t start = off;
  int ok = 1;
  for (size_t i = 0; ok && i < n; i++) {
    size_t nlen = strlen(arrays[i].name) + 4;
    unsigned char ch[46] = {0};
    npz_put32(ch, NPZ_CENTRAL_SIG);
    npz_put16(ch + 4, NPZ_VERSION);
    npz_put16(ch + 6, NPZ_VERSION);
    npz_put16(ch + 14, NPZ_DOS_DATE);
    npz_put32(ch + 16, m[i].crc);
    npz_put32(ch + 20, m[i].size);
    npz_put32(ch + 24, m[i].size);
    npz_put16(ch + 28, (uint32_t)nlen);
    npz_put32(ch + 42, m[i].offset);
    ok = fwrite(ch, 46, 1, f) == 1 && fputs(arrays[i].name, f) >= 0 && fputs(".npy", f) >= 0;
    off += 46 + nlen;
  }
  unsigned char end[22] = {0};
  npz_put32(end, NPZ_END_SIG);
  npz_put16(end + 8, (uint32_t)n);
  npz_put16(end + 10, (uint32_t)n);
  npz_put32(end + 12, (uint32_t)(off - start));
  npz_put32(end + 16, (uint32_t)start);
  ok = ok && fwrite(end, 22, 1, f) == 1;
  return ok ? 0 : ps_errf(eb, ps_err_from_errno(errno), "writing the zip directory: %s",
                          strerror(errno));
}

/* npz_write_file writes the whole archive to the open file F. */
static int npz_write_file(FILE *f, const ps_npz_array *arrays, size_t n, ps_errbuf *eb) {
  npz_member *m = calloc(n ? n : 1, sizeof *m);
  if (!m) return ps_errf(eb, PS_ENOMEM, "out of memory");
  uint64_t off = 0;
  int r = 0;
  for (size_t i = 0; r == 0 && i < n; i++) r = npz_write_member(f, &arrays[i], &off, &m[i], eb);
  if (r == 0) r = npz_write_directory(f, arrays, m, n, off, eb);
  free(m);
  return r;
}

/* npz_tmp_anon opens an unnamed file (O_TMPFILE) in the directory of
 * PATH: a writer killed before ps_npz_tmp_commit leaves nothing.  The fd,
 * or -1 where the filesystem has no O_TMPFILE (NFS, older kernels) or
 * /proc, which linkat needs to name it later, is missing. */
static int npz_tmp_anon(const char *path) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  int n = !slash ? snprintf(dir, sizeof dir, ".")
          : slash == path ? snprintf(dir, sizeof dir, "/")
                          : snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  if (n < 0 || n >= (int)sizeof dir) return -1;
  int fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  if (fd >= 0 && access(proc, F_OK) != 0) {
    close(fd);
    fd = -1;
  }
  return fd;
}

/* ps_npz_tmp_open: see ps_npz.h. */
int ps_npz_tmp_open(const char *path, char *tmp, size_t cap, FILE **out, ps_errbuf *eb) {
  *out = NULL;
  if (snprintf(tmp, cap, "%s.tmp.%ld", path, (long)getpid()) >= (int)cap)
    return ps_errf(eb, PS_EINVAL, "path '%s' is too long", path);
  int fd = npz_tmp_anon(path), named = fd < 0;
  /* O_EXCL: never through a link someone left at that name */
  if (named) fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0 && errno == EEXIST && unlink(tmp) == 0) /* left by an earlier process of this pid */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
  if (!f) {
    int e = errno;
    if (fd >= 0) {
      close(fd);
      if (named) unlink(tmp);
    }
    /* named as the user gave it: the temporary name is ours */
    return ps_errf(eb, ps_err_from_errno(e), "cannot write '%s': %s", path, strerror(e));
  }
  struct stat st; /* a file replaced keeps its mode, not the umask's */
  if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) (void)fchmod(fd, st.st_mode & 07777);
  *out = f;
  return 0;
}

/* ps_npz_tmp_commit: see ps_npz.h. */
int ps_npz_tmp_commit(FILE *f, const char *tmp, const char *path, ps_errbuf *eb) {
  struct stat st;
  int fd = fileno(f);
  if (fstat(fd, &st) == 0 && st.st_nlink == 0) { /* unnamed (O_TMPFILE): its name now */
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int r = linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW); /* never over a link */
    if (r < 0 && errno == EEXIST && unlink(tmp) == 0) /* left by an earlier process of this pid */
      r = linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW);
    if (r < 0)
      return ps_errf(eb, ps_err_from_errno(errno), "cannot link '%s': %s", tmp, strerror(errno));
  }
  if (rename(tmp, path) == 0) return 0;
  int e = errno;
  unlink(tmp);
  return ps_errf(eb, ps_err_from_errno(e), "cannot rename '%s' to '%s': %s", tmp, path,
                 strerror(e));
}

int ps_npz_write(const char *path, const ps_npz_array *arrays, size_t n, ps_errbuf *eb) {
  int r = npz_check(arrays, n, eb);
  if (r < 0) return r;
  char tmp[4096];
  FILE *f;
  if ((r = ps_npz_tmp_open(path, tmp, sizeof tmp, &f, eb)) < 0) return r;
  r = npz_write_file(f, arrays, n, eb);
  if (r == 0 && (fflush(f) != 0 || fsync(fileno(f)) != 0))
    r = ps_errf(eb, ps_err_from_errno(errno), "writing '%s': %s", path, strerror(errno));
  int named = 0; /* PATH replaced: nothing to remove after that */
  if (r == 0) named = (r = ps_npz_tmp_commit(f, tmp, path, eb)) == 0;
  fclose(f); /* written and synced already: a close cannot lose data */
  if (r < 0 && !named) unlink(tmp);
  return r;
}

/* ---- reading ------------------------------------------------------------ */

/* npz_slurp reads PATH whole into *BUF (caller frees). */
static int npz_slurp(const char *path, unsigned char **buf, size_t *len, ps_errbuf *eb) {
  FILE *f = fopen(path, "rb");
  if (!f) return ps_errf(eb, PS_EIO, "%s: cannot open: %s", path, strerror(errno));
  int r = 0;
  long size = -1;
  if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
  unsigned char *b = size >= 0 ? malloc((size_t)size + 1) : NULL;
  if (size < 0 || fseek(f, 0, SEEK_SET) != 0)
    r = ps_errf(eb, PS_EIO, "%s: cannot read: %s", path, strerror(errno));
  else if (!b)
    r = ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
  else if (fread(b, 1, (size_t)size, f) != (size_t)size)
    r = ps_errf(eb, PS_EIO, "%s: cannot read: %s", path, strerror(errno));
  fclose(f);
  if (r < 0) {
    free(b);
    return r;
  }
  *buf = b;
  *len = (size_t)size;
  return 0;
}

/* npz_dict_value finds KEY's value in the NPY header dict H (NUL-ended). */
static const char *npz_dict_value(const char *h, const char *key) {
  const char *p = strstr(h, key);
  if (!p) return NULL;
  p += strlen(key);
  p += strspn(p, " ");
  if (*p != ':') return NULL;
  p++;
  return p + strspn(p, " ");
}

/* npz_parse_npy parses member NAME's NPY bytes P[0..LEN) into E. */
static int npz_parse_npy(const char *path, const char *name, const unsigned char *p, size_t len,
                         ps_npz_entry *e, ps_errbuf *eb) {
#define NPZ_BAD(err, ...) ps_errf(eb, err, "%s: member '%s': " __VA_ARGS__)
  if (len < 10 || memcmp(p, "\x93NUMPY", 6) || p[6] < 1 || p[6] > 3)
    return NPZ_BAD(PS_EFORMAT, "not an NPY file", path, name);
  size_t hl = p[6] == 1 ? npz_get16(p + 8) : (len >= 12 ? npz_get32(p + 8) : len);
  size_t ho = p[6] == 1 ? 10 : 12;
  if (ho + hl > len) return NPZ_BAD(PS_EFORMAT, "truncated NPY header", path, name);
  char h[4096];
  if (hl >= sizeof h) return NPZ_BAD(PS_EFORMAT, "NPY header too long", path, name);
  memcpy(h, p + ho, hl);
  h[hl] = 0;
  const char *descr = npz_dict_value(h, "'descr'");
  const char *fortran = npz_dict_value(h, "'fortran_order'");
  const char *shape = npz_dict_value(h, "'shape'");
  if (!descr || !fortran || !shape || *shape != '(')
    return NPZ_BAD(PS_EFORMAT, "bad NPY header", path, name);
  if (strncmp(descr, "'<f4'", 5))
    return NPZ_BAD(PS_ENOTSUP, "dtype %.*s is not supported (float32 '<f4' only)", path, name,
                   (int)(strcspn(descr + 1, "',}") + 2 > 16 ? 16 : strcspn(descr + 1, "',}") + 2),
                   descr);
  if (strncmp(fortran, "False", 5))
    return NPZ_BAD(PS_ENOTSUP, "fortran order is not supported", path, name);
  /* The element count must not wrap: a wrapped count can match the data
   * length (shape (2**62,) "needs" 0 bytes) while nelems promises more. */
  uint64_t count = 1;
  int zero = 0, over = 0;
  const char *s = shape + 1;
  for (;;) {
    s += strspn(s, " ,");
    if (*s == ')') break;
    char *end;
    unsigned long long d = strtoull(s, &end, 10);
    if (end == s || e->ndim == PS_NPZ_MAX_DIMS)
      return NPZ_BAD(PS_EFORMAT, "bad shape in the NPY header", path, name);
    e->shape[e->ndim++] = d;
    zero |= d == 0;
    over |= __builtin_mul_overflow(count, (uint64_t)d, &count);
    s = end;
  }
  if (!zero && (over || count > (len - ho - hl) / 4))
    return NPZ_BAD(PS_EFORMAT, "%zu data bytes, the shape needs more", path, name,
                   len - ho - hl);
  e->nelems = zero ? 0 : count;
  if (len - ho - hl != e->nelems * 4)
    return NPZ_BAD(PS_EFORMAT, "%zu data bytes, the shape needs %" PRIu64, path, name,
                   len - ho - hl, e->nelems * 4);
  e->data = malloc(e->nelems ? e->nelems * 4 : 1);
  if (!e->data) return NPZ_BAD(PS_ENOMEM, "out of memory", path, name);
  memcpy(e->data, p + ho + hl, e->nelems * 4);
  if (!npz_little_endian())
    for (uint64_t i = 0; i < e->nelems; i++) {
      uint32_t *w = (uint32_t *)e->data + i;
      *w = __builtin_bswap32(*w);
    }
  return 0;
#undef NPZ_BAD
}

/* npz_find_end locates the end-of-central-directory record. */
static const unsigned char *npz_find_end(const unsigned char *b, size_t len) {
  if (len < 22) return NULL;
  size_t lo = len > 22 + 65535 ? len - 22 - 65535 : 0;
  for (size_t i = len - 22 + 1; i-- > lo;)
    if (npz_get32(b + i) == NPZ_END_SIG) return b + i;
  return NULL;
}

/* npz_read_member reads the member described by central header CH. */
static int npz_read_member(const char *path, const unsigned char *b, size_t len,
                           const unsigned char *ch, ps_npz_entry *e, ps_errbuf *eb) {
  uint32_t method = npz_get16(ch + 10), crc = npz_get32(ch + 16), size = npz_get32(ch + 20);
  uint32_t nlen = npz_get16(ch + 28), off = npz_get32(ch + 42);
  char name[NPZ_MAX_NAME + 1];
  if (nlen > NPZ_MAX_NAME) return ps_errf(eb, PS_EFORMAT, "%s: member name too long", path);
  memcpy(name, ch + 46, nlen);
  name[nlen] = 0;
  if (method != 0)
    return ps_errf(eb, PS_ENOTSUP, "%s: member '%s' is compressed (method %" PRIu32 ")", path,
                   name, method);
  if (size == 0xffffffffu || (uint64_t)off + 30 > len || npz_get32(b + off) != NPZ_LOCAL_SIG)
    return ps_errf(eb, PS_EFORMAT, "%s: member '%s': bad local header", path, name);
  uint64_t data = (uint64_t)off + 30 + npz_get16(b + off + 26) + npz_get16(b + off + 28);
  if (data + size > len)
    return ps_errf(eb, PS_EFORMAT, "%s: member '%s': truncated", path, name);
  if (npz_crc((uint32_t)crc32(0, Z_NULL, 0), b + data, size) != crc)
    return ps_errf(eb, PS_EFORMAT, "%s: member '%s': CRC-32 mismatch", path, name);
  if (nlen < 5 || strcmp(name + nlen - 4, ".npy"))
    return ps_errf(eb, PS_EFORMAT, "%s: member '%s' is not a .npy", path, name);
  name[nlen - 4] = 0;
  if (!(e->name = strdup(name))) return ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
  name[nlen - 4] = '.';
  return npz_parse_npy(path, name, b + data, size, e, eb);
}

/* npz_read_directory walks the central directory of B into Z. */
static int npz_read_directory(ps_npz *z, const char *path, const unsigned char *b, size_t len,
                              ps_errbuf *eb) {
  const unsigned char *end = npz_find_end(b, len);
  if (!end) return ps_errf(eb, PS_EFORMAT, "%s: not a zip file (no end record)", path);
  size_t n = npz_get16(end + 10);
  uint64_t cd = npz_get32(end + 16), cdsize = npz_get32(end + 12);
  if (cd + cdsize > (uint64_t)(end - b))
    return ps_errf(eb, PS_EFORMAT, "%s: bad central directory", path);
  if (!(z->entries = calloc(n ? n : 1, sizeof *z->entries)))
    return ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
  const unsigned char *ch = b + cd;
  for (size_t i = 0; i < n; i++) {
    /* The whole entry, variable part (name, extra, comment) included,
     * lies before the end record: the name is copied from it. */
    size_t room = (size_t)(end - ch), elen = 0;
    if (room >= 46) elen = 46 + npz_get16(ch + 28) + npz_get16(ch + 30) + npz_get16(ch + 32);
    if (room < 46 || elen > room || npz_get32(ch) != NPZ_CENTRAL_SIG)
      return ps_errf(eb, PS_EFORMAT, "%s: bad central directory entry %zu", path, i);
    z->n = i + 1;
    int r = npz_read_member(path, b, len, ch, &z->entries[i], eb);
    if (r < 0) return r;
    ch += elen;
  }
  return 0;
}

int ps_npz_read(ps_npz *z, const char *path, ps_errbuf *eb) {
  memset(z, 0, sizeof *z);
  unsigned char *b = NULL;
  size_t len = 0;
  int r = npz_slurp(path, &b, &len, eb);
  if (r < 0) return r;
  r = npz_read_directory(z, path, b, len, eb);
  free(b);
  if (r < 0) ps_npz_release(z);
  return r;
}

const ps_npz_entry *ps_npz_find(const ps_npz *z, const char *name) {
  for (size_t i = 0; i < z->n; i++)
    if (!strcmp(z->entries[i].name, name)) return &z->entries[i];
  return NULL;
}

void ps_npz_release(ps_npz *z) {
  if (!z) return;
  for (size_t i = 0; i < z->n; i++) {
    free(z->entries[i].name);
    free(z->entries[i].data);
  }
  free(z->entries);
  memset(z, 0, sizeof *z);
}
