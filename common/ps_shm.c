/* ps_shm: a connection's shared-memory region (see ps_shm.h for the
 * invariants). */
#include "ps_shm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define SHM_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* shm_map maps FD's LEN bytes shared, read-write, into S. */
static int shm_map(ps_shm *s, int fd, uint64_t bytes, ps_errbuf *eb) {
  size_t len = (size_t)bytes + PS_SHM_HDR;
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ps_errf(eb, PS_ENOMEM, "mmap of %zu bytes: %s", len, strerror(errno));
  s->map = p;
  s->map_len = len;
  s->data = s->map + PS_SHM_HDR;
  s->bytes = bytes;
  return 0;
}

/* ps_shm_create: see ps_shm.h. */
int ps_shm_create(ps_shm *s, uint64_t bytes, ps_errbuf *eb) {
  memset(s, 0, sizeof *s);
  s->fd = -1;
  if (bytes == 0 || bytes > SIZE_MAX / 2)
    return ps_errf(eb, PS_EINVAL, "a region of %llu bytes", (unsigned long long)bytes);
  int fd = memfd_create("psd-chan", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ps_errf(eb, PS_ENOTSUP, "memfd_create: %s", strerror(errno));
  int rc = 0;
  if (ftruncate(fd, (off_t)(bytes + PS_SHM_HDR)) < 0)
    rc = ps_errf(eb, PS_ENOMEM, "ftruncate: %s", strerror(errno));
  else if (fcntl(fd, F_ADD_SEALS, SHM_SEALS) < 0)
    rc = ps_errf(eb, PS_ENOTSUP, "sealing the region: %s", strerror(errno));
  else if (getrandom(s->token, sizeof s->token, 0) != (ssize_t)sizeof s->token)
    rc = ps_errf(eb, PS_EIO, "getrandom: %s", strerror(errno));
  if (rc == 0) rc = shm_map(s, fd, bytes, eb);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  memcpy(s->map, s->token, sizeof s->token);
  s->fd = fd;
  return 0;
}

/* ps_shm_open: see ps_shm.h. */
int ps_shm_open(ps_shm *s, uint32_t pid, uint32_t fd, uint64_t bytes, const uint8_t *token,
                size_t tlen, ps_errbuf *eb) {
  memset(s, 0, sizeof *s);
  s->fd = -1;
  if (tlen != PS_SHM_TOKEN || bytes == 0 || bytes > SIZE_MAX / 2)
    return ps_errf(eb, PS_EPROTO, "a malformed offer (%llu bytes, a %zu-byte token)",
                   (unsigned long long)bytes, tlen);
  char path[64];
  snprintf(path, sizeof path, "/proc/%u/fd/%u", pid, fd);
  int f = open(path, O_RDWR | O_CLOEXEC);
  if (f < 0) return ps_errf(eb, PS_EPERM, "open %s: %s", path, strerror(errno));
  struct stat st;
  int rc = 0;
  int seals = fcntl(f, F_GET_SEALS);
  if (fstat(f, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != bytes + PS_SHM_HDR)
    rc = ps_errf(eb, PS_EPROTO, "%s is not the region offered (size)", path);
  else if (seals < 0 || (seals & SHM_SEALS) != SHM_SEALS)
    rc = ps_errf(eb, PS_EPROTO, "%s is not sealed", path);
  if (rc == 0) rc = shm_map(s, f, bytes, eb);
  close(f);
  if (rc == 0 && memcmp(s->map, token, PS_SHM_TOKEN) != 0) {
    ps_shm_release(s);
    rc = ps_errf(eb, PS_EPROTO, "%s holds another token: not the region offered", path);
  }
  if (rc == 0) memcpy(s->token, token, PS_SHM_TOKEN);
  return rc;
}

/* ps_shm_move: see ps_shm.h. */
int ps_shm_move(ps_shm *s, void *at, ps_errbuf *eb) {
  long page = sysconf(_SC_PAGESIZE);
  if (!s->map || s->moved || ((uintptr_t)at % (uintptr_t)page) || s->bytes % (uint64_t)page)
    return ps_errf(eb, PS_EINVAL, "the region cannot move there (alignment)");
  memcpy(s->data, at, s->bytes);
  void *p = mremap(s->data, s->bytes, s->bytes, MREMAP_MAYMOVE | MREMAP_FIXED, at);
  if (p == MAP_FAILED) return ps_errf(eb, PS_ENOMEM, "mremap: %s", strerror(errno));
  s->data = at;
  s->map_len = PS_SHM_HDR; /* the header's page stays where it was */
  s->moved = 1;
  return 0;
}

/* shm_unmove gives S's moved data range private memory with the same
 * bytes (invariant 4); the shared mapping stays where that fails. */
static void shm_unmove(ps_shm *s) {
  void *p = mmap(NULL, s->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  memcpy(p, s->data, s->bytes);
  if (mremap(p, s->bytes, s->bytes, MREMAP_MAYMOVE | MREMAP_FIXED, s->data) == MAP_FAILED)
    munmap(p, s->bytes);
}

/* ps_shm_close_fd: see ps_shm.h. */
void ps_shm_close_fd(ps_shm *s) {
  if (s->fd >= 0) close(s->fd);
  s->fd = -1;
}

/* ps_shm_release: see ps_shm.h. */
void ps_shm_release(ps_shm *s) {
  if (s->map && s->moved) shm_unmove(s);
  if (s->map) munmap(s->map, s->map_len);
  s->moved = 0;
  ps_shm_close_fd(s);
  s->map = s->data = NULL;
  s->map_len = 0;
  s->bytes = 0;
}

/* ps_shm_holds: see ps_shm.h. */
int ps_shm_holds(const ps_shm *s, uint64_t off, uint64_t len) {
  return s->map && off % 8 == 0 && off <= s->bytes && len <= s->bytes - off;
}
