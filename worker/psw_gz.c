/* psw_gz: gzipped or plain data files, read with zlib's inflate.
 *
 * Invariants:
 *   1. in[] holds the file's bytes from next_in on (avail_in of them);
 *      the rest of the file is unread, or none is left (eof).
 *   2. out counts the uncompressed bytes delivered (read or skipped):
 *      the byte offsets in messages, as `zcat FILE | xxd` shows them.
 *   3. between: a gzip member ended; the next byte of the file starts
 *      another member, or there is none.
 *   4. line[lpos, lhave) holds data psw_gz_gets read ahead: the next
 *      bytes of a read or gets come from there first. */
#include "psw_gz.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define GZ_IN (1u << 18)
#define GZ_SCRATCH (1u << 16)

struct psw_gz {
  int fd;
  const char *path;
  int direct, between, eof;
  uint64_t out;
  uint64_t in_off; /* file bytes read into in[] so far */
  z_stream zs;
  int zinit;
  unsigned char in[GZ_IN];
  unsigned char scratch[GZ_SCRATCH]; /* where skipped gzip data is inflated to */
  size_t lpos, lhave;
  unsigned char line[GZ_SCRATCH];
};

/* gz_fill moves what is left of in[] to its start and reads once more
 * from the file after it (nothing when in[] is full or the file ended). */
static int gz_fill(psw_gz *z, ps_errbuf *eb) {
  if (z->zs.avail_in && z->zs.next_in != z->in) memmove(z->in, z->zs.next_in, z->zs.avail_in);
  z->zs.next_in = z->in;
  while (!z->eof && z->zs.avail_in < GZ_IN) {
    ssize_t k = read(z->fd, z->in + z->zs.avail_in, GZ_IN - z->zs.avail_in);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0)
      return ps_errf(eb, PS_EIO, "%s: byte %" PRIu64 ": cannot read: %s", z->path, z->out,
                     strerror(errno));
    if (k == 0) z->eof = 1;
    z->zs.avail_in += (uInt)k;
    z->in_off += (uint64_t)k;
    break;
  }
  return 0;
}

int psw_gz_open(psw_gz **out, const char *path, ps_errbuf *eb) {
  *out = NULL;
  psw_gz *z = calloc(1, sizeof *z);
  if (!z) return ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
  z->path = path;
  z->zs.next_in = z->in;
  /* O_NONBLOCK: a FIFO with no writer must not block the open (it is
   * refused below); cleared again for the reads */
  if ((z->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0) {
    int e = errno;
    free(z);
    return ps_errf(eb, PS_EIO, "%s: cannot open: %s", path, strerror(e));
  }
  struct stat st;
  int fl = fcntl(z->fd, F_GETFL), r = 0;
  if (fl < 0 || fcntl(z->fd, F_SETFL, fl & ~O_NONBLOCK) < 0 || fstat(z->fd, &st) < 0)
    r = ps_errf(eb, PS_EIO, "%s: cannot open: %s", path, strerror(errno));
  else if (!S_ISREG(st.st_mode))
    r = ps_errf(eb, PS_EFORMAT, "%s: %s, not a regular file (psw reads a data file more than "
                "once and sizes it from its length)", path, psw_gz_kind(st.st_mode));
  while (r == 0 && z->zs.avail_in < 2 && !z->eof) r = gz_fill(z, eb);
  z->direct = z->zs.avail_in < 2 || z->in[0] != 0x1f || z->in[1] != 0x8b;
  if (r == 0 && !z->direct) { /* 15 + 16: a gzip wrapper, any window size */
    int zr = inflateInit2(&z->zs, 15 + 16);
    z->zinit = zr == Z_OK;
    if (zr != Z_OK) r = ps_errf(eb, PS_ENOMEM, "%s: out of memory for inflate", path);
  }
  if (r) {
    psw_gz_close(z);
    return r;
  }
  *out = z;
  return 0;
}

const char *psw_gz_kind(unsigned mode) {
  return S_ISDIR(mode) ? "a directory" : S_ISFIFO(mode) ? "a FIFO" : S_ISCHR(mode) ? "a character device"
         : S_ISBLK(mode) ? "a block device" : S_ISSOCK(mode) ? "a socket" : S_ISREG(mode) ? "a regular file"
         : "a special file";
}

int psw_gz_direct(const psw_gz *z) {
  return z->direct;
}

/* gz_corrupt reports a gzip stream that inflate refused or that ended
 * inside a member. */
static int gz_corrupt(psw_gz *z, const char *why, ps_errbuf *eb) {
  return ps_errf(eb, PS_EFORMAT, "%s: byte %" PRIu64 ": truncated or corrupt gzip file (%s)",
                 z->path, z->out, why);
}

/* gz_next_member is called between members: 0 with *END set when the
 * file ends there, 0 when another member starts (inflate reset for it),
 * PS_EFORMAT when other bytes follow. */
static int gz_next_member(psw_gz *z, int *end, ps_errbuf *eb) {
  int r = 0;
  while (r == 0 && z->zs.avail_in < 2 && !z->eof) r = gz_fill(z, eb);
  *end = r == 0 && z->zs.avail_in == 0;
  if (r || *end) return r;
  if (z->zs.avail_in >= 2 && z->zs.next_in[0] == 0x1f && z->zs.next_in[1] == 0x8b) {
    inflateReset(&z->zs);
    z->between = 0;
    return 0;
  }
  uint64_t at = z->in_off - z->zs.avail_in;
  return ps_errf(eb, PS_EFORMAT, "%s: compressed byte %" PRIu64 ": data after the end of the "
                 "gzip stream that is not another gzip member (garbage appended to the file? "
                 "cut it off at that byte, or recompress the data)", z->path, at);
}

/* gz_inflate inflates up to LEN bytes into DST (NULL: scratch). */
static int gz_inflate(psw_gz *z, unsigned char *dst, size_t len, size_t *got, ps_errbuf *eb) {
  *got = 0;
  while (*got < len) {
    int end = 0, r = 0;
    if (z->between && ((r = gz_next_member(z, &end, eb)) || end)) return r;
    if (!z->zs.avail_in && !z->eof && (r = gz_fill(z, eb))) return r;
    size_t want = len - *got;
    if (want > (dst ? UINT_MAX : GZ_SCRATCH)) want = dst ? UINT_MAX : GZ_SCRATCH;
    z->zs.next_out = dst ? dst + *got : z->scratch;
    z->zs.avail_out = (uInt)want;
    int zr = inflate(&z->zs, Z_NO_FLUSH);
    size_t k = want - z->zs.avail_out;
    *got += k;
    z->out += k;
    if (zr == Z_STREAM_END) z->between = 1;
    else if (zr == Z_MEM_ERROR) return ps_errf(eb, PS_ENOMEM, "%s: out of memory", z->path);
    else if (zr != Z_OK && zr != Z_BUF_ERROR)
      return gz_corrupt(z, z->zs.msg ? z->zs.msg : "bad data", eb);
    else if (!k && !z->zs.avail_in && z->eof) /* the file ends inside a member */
      return gz_corrupt(z, "unexpected end of file", eb);
    else if (!k && zr == Z_BUF_ERROR && z->zs.avail_in)
      return gz_corrupt(z, "inflate made no progress", eb); /* not expected of zlib */
  }
  return 0;
}

/* gz_copy reads up to LEN bytes of a plain file into DST (NULL: skips
 * them, by seeking where the file is a regular one). */
static int gz_copy(psw_gz *z, unsigned char *dst, size_t len, size_t *got, ps_errbuf *eb) {
  *got = 0;
  struct stat st;
  while (*got < len) {
    int r;
    if (!dst && !z->zs.avail_in && !z->eof && fstat(z->fd, &st) == 0 && S_ISREG(st.st_mode)) {
      uint64_t left = st.st_size > 0 && (uint64_t)st.st_size > z->in_off
                          ? (uint64_t)st.st_size - z->in_off : 0;
      size_t k = len - *got < left ? len - *got : (size_t)left;
      if (lseek(z->fd, (off_t)k, SEEK_CUR) < 0)
        return ps_errf(eb, PS_EIO, "%s: byte %" PRIu64 ": cannot seek: %s", z->path, z->out,
                       strerror(errno));
      z->in_off += k;
      *got += k;
      z->out += k;
      if (*got < len) z->eof = 1;
      continue;
    }
    if (!z->zs.avail_in && z->eof) return 0;
    if (!z->zs.avail_in && (r = gz_fill(z, eb))) return r;
    if (!z->zs.avail_in) continue; /* gz_fill found the end */
    size_t k = len - *got < z->zs.avail_in ? len - *got : z->zs.avail_in;
    if (dst) memcpy(dst + *got, z->zs.next_in, k);
    z->zs.next_in += k;
    z->zs.avail_in -= (uInt)k;
    *got += k;
    z->out += k;
  }
  return 0;
}

static int gz_raw(psw_gz *z, void *buf, size_t len, size_t *got, ps_errbuf *eb) {
  return z->direct ? gz_copy(z, buf, len, got, eb) : gz_inflate(z, buf, len, got, eb);
}

int psw_gz_read(psw_gz *z, void *buf, size_t len, size_t *got, ps_errbuf *eb) {
  size_t k = z->lhave - z->lpos < len ? z->lhave - z->lpos : len, more = 0;
  if (k && buf) memcpy(buf, z->line + z->lpos, k);
  z->lpos += k;
  int r = k < len ? gz_raw(z, buf ? (unsigned char *)buf + k : NULL, len - k, &more, eb) : 0;
  *got = k + more;
  return r;
}

int psw_gz_gets(psw_gz *z, char *buf, size_t cap, size_t *len, ps_errbuf *eb) {
  int r = 0;
  *len = 0;
  while (*len + 1 < cap) {
    if (z->lpos == z->lhave) {
      z->lpos = 0;
      r = gz_raw(z, z->line, GZ_SCRATCH, &z->lhave, eb);
      if (r || !z->lhave) break;
    }
    size_t k = z->lhave - z->lpos < cap - 1 - *len ? z->lhave - z->lpos : cap - 1 - *len;
    const unsigned char *nl = memchr(z->line + z->lpos, '\n', k);
    if (nl) k = (size_t)(nl - (z->line + z->lpos)) + 1;
    memcpy(buf + *len, z->line + z->lpos, k);
    *len += k;
    z->lpos += k;
    if (nl) break;
  }
  buf[*len] = 0;
  return r;
}

void psw_gz_close(psw_gz *z) {
  if (!z) return;
  if (z->zinit) inflateEnd(&z->zs);
  if (z->fd >= 0) close(z->fd);
  free(z);
}
