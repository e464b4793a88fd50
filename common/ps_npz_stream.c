/* ps_npz_stream: .npz members written in pieces, zip64 where needed (see
 * ps_npz_stream.h).  Headers are patched with pwrite once a member ends;
 * the data goes through stdio. */
#include "ps_npz_stream.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define ZS_LOCAL_SIG 0x04034b50u
#define ZS_CENTRAL_SIG 0x02014b50u
#define ZS_END_SIG 0x06054b50u
#define ZS_END64_SIG 0x06064b50u
#define ZS_LOC64_SIG 0x07064b50u
#define ZS_DOS_DATE 0x0021 /* 1980-01-01, as ps_npz_write */
#define ZS_PAD_TAG 0x5350  /* the local header's padding extra field */
#define ZS_MAX_NAME 1019

typedef struct zs_member {
  char *name;          /* with ".npy" */
  uint32_t crc;
  uint64_t size, offset;
} zs_member;

struct ps_npz_stream {
  char path[4096], tmp[4096];
  FILE *f;
  uint64_t off;        /* bytes written so far */
  uint64_t zip64_at;
  zs_member *m;
  size_t n, cap;
  /* the open member */
  int open;
  ps_npz_dtype dtype;
  uint32_t ndim;
  uint64_t shape[PS_NPZ_MAX_DIMS], inner; /* inner: product of shape[1..] */
  uint64_t hdr_at, hdr_len, data_len, elems;
  uint32_t data_crc;
  int failed;          /* the PS_E* code of a member that failed half-written, or 0 */
};

static void zs_put16(unsigned char *p, uint64_t v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }
static void zs_put32(unsigned char *p, uint64_t v) { zs_put16(p, v & 0xffff), zs_put16(p + 2, (v >> 16) & 0xffff); }
static void zs_put64(unsigned char *p, uint64_t v) { zs_put32(p, v & 0xffffffffu), zs_put32(p + 4, v >> 32); }

static int zs_io(ps_npz_stream *z, const char *what, ps_errbuf *eb) {
  return ps_errf(eb, ps_err_from_errno(errno ? errno : EIO), "writing '%s': %s: %s", z->path, what,
                 strerror(errno ? errno : EIO));
}

/* zs_out appends LEN bytes. */
static int zs_out(ps_npz_stream *z, const void *p, size_t len, ps_errbuf *eb) {
  if (len && fwrite(p, len, 1, z->f) != 1) return zs_io(z, "write", eb);
  z->off += len;
  return 0;
}

/* zs_patch writes LEN bytes at offset AT (the stream's end is unchanged). */
static int zs_patch(ps_npz_stream *z, uint64_t at, const void *p, size_t len, ps_errbuf *eb) {
  if (fflush(z->f) != 0) return zs_io(z, "flush", eb);
  if (pwrite(fileno(z->f), p, len, (off_t)at) != (ssize_t)len) return zs_io(z, "patch", eb);
  return 0;
}

/* zs_header writes the NPY 1.0 header of the open member with first
 * dimension ROWS into BUF, padded to LEN bytes when LEN > 0 (else to the
 * next multiple of 64), and returns its length (0: does not fit LEN). */
static size_t zs_header(const ps_npz_stream *z, uint64_t rows, char *buf, size_t cap, size_t len) {
  char shape[24 * PS_NPZ_MAX_DIMS + 8];
  size_t s = 0;
  shape[s++] = '(';
  for (uint32_t i = 0; i < z->ndim; i++)
    s += (size_t)snprintf(shape + s, sizeof shape - s, i ? " %" PRIu64 "," : "%" PRIu64 ",",
                          i ? z->shape[i] : rows);
  if (z->ndim > 1) s--;
  shape[s++] = ')';
  shape[s] = 0;
  int d = snprintf(buf + 10, cap - 10, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                   z->dtype == PS_NPZ_U8 ? "<u8" : "<f4", shape);
  size_t total = len ? len : (10 + (size_t)d + 1 + 63) / 64 * 64;
  if (10 + (size_t)d + 1 > total) return 0;
  memset(buf + 10 + d, ' ', total - 10 - (size_t)d - 1);
  buf[total - 1] = '\n';
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  zs_put16((unsigned char *)buf + 8, total - 10);
  return total;
}

int ps_npz_stream_open(ps_npz_stream **out, const char *path, ps_errbuf *eb) {
  *out = NULL;
  const uint16_t one = 1;
  if (*(const unsigned char *)&one != 1)
    return ps_errf(eb, PS_EINVAL, "'%s': .npz streams are written on little-endian hosts only", path);
  ps_npz_stream *z = calloc(1, sizeof *z);
  if (!z) return ps_errf(eb, PS_ENOMEM, "out of memory");
  if (snprintf(z->path, sizeof z->path, "%s", path) >= (int)sizeof z->path) {
    free(z);
    return ps_errf(eb, PS_EINVAL, "path '%s' is too long", path);
  }
  z->zip64_at = 0xffffffffu;
  int rc = ps_npz_tmp_open(path, z->tmp, sizeof z->tmp, &z->f, eb);
  if (rc < 0) {
    free(z);
    return rc;
  }
  *out = z;
  return 0;
}

void ps_npz_stream_set_zip64_at(ps_npz_stream *z, uint64_t at) { z->zip64_at = at; }

int ps_npz_stream_begin(ps_npz_stream *z, const char *name, ps_npz_dtype dtype, uint32_t ndim,
                        const uint64_t *shape, ps_errbuf *eb) {
  size_t nlen = name ? strlen(name) : 0;
  if (z->open) return ps_errf(eb, PS_EINVAL, "member '%s' begins while another is open", name);
  if (!nlen || nlen > ZS_MAX_NAME) return ps_errf(eb, PS_EINVAL, "member name must be 1..%d bytes", ZS_MAX_NAME);
  if (ndim > PS_NPZ_MAX_DIMS)
    return ps_errf(eb, PS_EINVAL, "member '%s': %u dimensions, at most %d", name, ndim, PS_NPZ_MAX_DIMS);
  for (size_t i = 0; i < z->n; i++)
    if (strlen(z->m[i].name) == nlen + 4 && !strncmp(z->m[i].name, name, nlen))
      return ps_errf(eb, PS_EINVAL, "duplicate member '%s'", name);
  if (z->n == z->cap) {
    size_t c = z->cap ? z->cap * 2 : 16;
    zs_member *m = realloc(z->m, c * sizeof *m);
    if (!m) return ps_errf(eb, PS_ENOMEM, "out of memory");
    z->m = m, z->cap = c;
  }
  zs_member *m = &z->m[z->n];
  if (!(m->name = malloc(nlen + 5))) return ps_errf(eb, PS_ENOMEM, "out of memory");
  snprintf(m->name, nlen + 5, "%s.npy", name);
  m->offset = z->off;
  z->dtype = dtype, z->ndim = ndim, z->inner = 1;
  for (uint32_t i = 0; i < ndim; i++) {
    z->shape[i] = shape[i];
    if (i) z->inner *= shape[i];
  }
  z->n++; /* the name is freed with the others from here on */
  if (!z->inner)
    return z->failed = ps_errf(eb, PS_EINVAL, "member '%s': a dimension after the first is 0", name);
  unsigned char lh[30 + 20] = {0};
  zs_put32(lh, ZS_LOCAL_SIG);
  zs_put16(lh + 4, 45);
  zs_put16(lh + 12, ZS_DOS_DATE);
  zs_put16(lh + 26, nlen + 4);
  zs_put16(lh + 28, 20);
  zs_put16(lh + 30, ZS_PAD_TAG);
  zs_put16(lh + 32, 16);
  char hdr[256 + 24 * PS_NPZ_MAX_DIMS];
  z->hdr_len = zs_header(z, UINT64_MAX, hdr, sizeof hdr, 0); /* room for any first dimension */
  z->hdr_at = z->off + 30 + nlen + 4 + 20;
  int rc = zs_out(z, lh, 30, eb);
  if (!rc) rc = zs_out(z, m->name, nlen + 4, eb);
  if (!rc) rc = zs_out(z, lh + 30, 20, eb);
  if (!rc) rc = zs_out(z, hdr, z->hdr_len, eb);
  z->data_len = z->elems = 0;
  z->data_crc = (uint32_t)crc32(0, Z_NULL, 0);
  z->open = !rc;
  if (rc) z->failed = rc;
  return rc;
}

int ps_npz_stream_write(ps_npz_stream *z, const void *data, uint64_t nelems, ps_errbuf *eb) {
  if (!z->open) return ps_errf(eb, PS_EINVAL, "no member is open");
  uint64_t len = nelems * (z->dtype == PS_NPZ_U8 ? 8 : 4);
  const unsigned char *p = data;
  for (uint64_t done = 0; done < len;) {
    uInt k = len - done > (1u << 30) ? (1u << 30) : (uInt)(len - done);
    z->data_crc = (uint32_t)crc32(z->data_crc, p + done, k);
    int rc = zs_out(z, p + done, k, eb);
    if (rc) return z->failed = rc;
    done += k;
  }
  z->data_len += len;
  z->elems += nelems;
  return 0;
}

int ps_npz_stream_end(ps_npz_stream *z, ps_errbuf *eb) {
  if (!z->open) return ps_errf(eb, PS_EINVAL, "no member is open");
  zs_member *m = &z->m[z->n - 1];
  z->open = 0;
  if (z->ndim == 0 && z->elems != 1)
    return z->failed = ps_errf(eb, PS_EINVAL, "member '%s': a scalar of %" PRIu64 " elements",
                               m->name, z->elems);
  if (z->elems % z->inner)
    return z->failed = ps_errf(eb, PS_EINVAL, "member '%s': %" PRIu64 " elements are not whole "
                               "rows of %" PRIu64, m->name, z->elems, z->inner);
  char hdr[256 + 24 * PS_NPZ_MAX_DIMS];
  size_t hl = zs_header(z, z->elems / z->inner, hdr, sizeof hdr, z->hdr_len);
  uint32_t hcrc = (uint32_t)crc32(crc32(0, Z_NULL, 0), (const Bytef *)hdr, (uInt)hl);
  m->crc = (uint32_t)crc32_combine(hcrc, z->data_crc, (z_off_t)z->data_len);
  m->size = hl + z->data_len;
  unsigned char lh[16 + 20];
  size_t nlen = strlen(m->name);
  zs_put32(lh, m->crc);
  int big = m->size >= z->zip64_at;
  zs_put32(lh + 4, big ? 0xffffffffu : m->size);
  zs_put32(lh + 8, big ? 0xffffffffu : m->size);
  int rc = zs_patch(z, z->hdr_at, hdr, hl, eb);
  if (!rc) rc = zs_patch(z, m->offset + 14, lh, 12, eb);
  if (!rc && big) { /* the padding becomes the zip64 extra field */
    zs_put16(lh + 16, 1);
    zs_put16(lh + 18, 16);
    zs_put64(lh + 20, m->size);
    zs_put64(lh + 28, m->size);
    rc = zs_patch(z, m->offset + 30 + nlen, lh + 16, 20, eb);
  }
  if (rc) z->failed = rc;
  return rc;
}

/* zs_directory writes the central directory and the end records. */
static int zs_directory(ps_npz_stream *z, ps_errbuf *eb) {
  uint64_t start = z->off;
  int any64 = z->n >= 0xffff;
  int rc = 0;
  for (size_t i = 0; !rc && i < z->n; i++) {
    const zs_member *m = &z->m[i];
    int big = m->size >= z->zip64_at, far = m->offset >= z->zip64_at;
    unsigned char ch[46] = {0}, x[4 + 24];
    size_t xl = 0;
    if (big || far) {
      xl = 4;
      if (big) zs_put64(x + xl, m->size), zs_put64(x + xl + 8, m->size), xl += 16;
      if (far) zs_put64(x + xl, m->offset), xl += 8;
      zs_put16(x, 1);
      zs_put16(x + 2, xl - 4);
      any64 = 1;
    }
    zs_put32(ch, ZS_CENTRAL_SIG);
    zs_put16(ch + 4, 45);
    zs_put16(ch + 6, xl ? 45 : 20);
    zs_put16(ch + 14, ZS_DOS_DATE);
    zs_put32(ch + 16, m->crc);
    zs_put32(ch + 20, big ? 0xffffffffu : m->size);
    zs_put32(ch + 24, big ? 0xffffffffu : m->size);
    zs_put16(ch + 28, strlen(m->name));
    zs_put16(ch + 30, xl);
    zs_put32(ch + 42, far ? 0xffffffffu : m->offset);
    rc = zs_out(z, ch, 46, eb);
    if (!rc) rc = zs_out(z, m->name, strlen(m->name), eb);
    if (!rc) rc = zs_out(z, x, xl, eb);
  }
  uint64_t size = z->off - start;
  any64 = any64 || start >= z->zip64_at || size >= z->zip64_at;
  if (!rc && any64) {
    unsigned char e64[56] = {0}, loc[20] = {0};
    uint64_t at = z->off;
    zs_put32(e64, ZS_END64_SIG);
    zs_put64(e64 + 4, 44);
    zs_put16(e64 + 12, 45);
    zs_put16(e64 + 14, 45);
    zs_put64(e64 + 24, z->n);
    zs_put64(e64 + 32, z->n);
    zs_put64(e64 + 40, size);
    zs_put64(e64 + 48, start);
    zs_put32(loc, ZS_LOC64_SIG);
    zs_put64(loc + 8, at);
    zs_put32(loc + 16, 1);
    rc = zs_out(z, e64, 56, eb);
    if (!rc) rc = zs_out(z, loc, 20, eb);
  }
  unsigned char end[22] = {0};
  zs_put32(end, ZS_END_SIG);
  zs_put16(end + 8, any64 ? 0xffff : z->n);
  zs_put16(end + 10, any64 ? 0xffff : z->n);
  zs_put32(end + 12, any64 ? 0xffffffffu : size);
  zs_put32(end + 16, any64 ? 0xffffffffu : start);
  return rc ? rc : zs_out(z, end, 22, eb);
}

static void zs_free(ps_npz_stream *z) {
  for (size_t i = 0; i < z->n; i++) free(z->m[i].name);
  free(z->m);
  free(z);
}

int ps_npz_stream_close(ps_npz_stream *z, ps_errbuf *eb) {
  int rc = z->open ? ps_errf(eb, PS_EINVAL, "member '%s' is still open", z->m[z->n - 1].name) : 0;
  /* a member that failed half-way has no valid sizes or CRC: no archive */
  if (!rc && z->failed)
    rc = ps_errf(eb, z->failed, "'%s' not written: a member of it failed earlier", z->path);
  if (!rc) rc = zs_directory(z, eb);
  if (!rc && (fflush(z->f) != 0 || fsync(fileno(z->f)) != 0)) rc = zs_io(z, "sync", eb);
  if (!rc) rc = ps_npz_tmp_commit(z->f, z->tmp, z->path, eb); /* removes it on error */
  else unlink(z->tmp); /* the named one (ps_npz_tmp_open's fallback) */
  fclose(z->f); /* written and synced already: a close cannot lose data */
  z->f = NULL;
  zs_free(z);
  return rc;
}

void ps_npz_stream_abort(ps_npz_stream *z) {
  if (!z) return;
  if (z->f) fclose(z->f);
  unlink(z->tmp);
  zs_free(z);
}
