/* ps_test_fsync_shim.so: LD_PRELOADed into psd by the durability crash
 * loop (tests/integration/test_durability.c) to simulate a power cut.
 *
 * Every fdatasync that succeeds on a file whose path contains "/redo/"
 * (psd's redo log) appends "SIZE PATH\n" to the file named by
 * PS_FSYNC_LOG, before fdatasync returns: the bytes the disk is known to
 * hold.  SIZE is the file's size, or less when the file is a reused
 * segment (psd_wal invariant 6) longer than what was written to it
 * through this descriptor: the end of the highest pwrite or pwritev, so that the
 * cut drops what was written after the last sync there too.  After a SIGKILL the test cuts every segment back to its last
 * recorded size (the page cache survives SIGKILL; a power cut would not
 * keep what was never synced), so an acknowledgement that went out before
 * the fdatasync covering its record shows up as a lost acknowledged push.
 *
 * PS_FSYNC_GATE names a file: while it exists, an fdatasync of a redo
 * log file waits (polling every millisecond, at most 60 s) before it
 * syncs, so a test holds a sync in flight for as long as it needs and
 * sees what the shard does meanwhile (tests/server/test_psd_chan.c,
 * tests/worker/test_psw_client.c).
 *
 * PS_FSYNC_FAIL names a file: while it exists, an fdatasync of a redo log
 * file fails with EIO (a disk that fails its flushes), after the gate.
 *
 * PS_FSYNC_FAIL_STORE names a file: while it exists, an fdatasync or
 * fsync of any other file (RocksDB's: the store's snapshots) fails with
 * EIO, so a test makes the shard's flushes fail while its log works.
 *
 * PS_ODIRECT_EINVAL=1: an open with O_DIRECT fails with EINVAL, as on a
 * filesystem without O_DIRECT, so that the redo log writes buffered
 * (psd_wal invariant 7; the crash loop starts psd so every third time).
 * PS_ODIRECT_EINVAL=write: the open succeeds but every pwrite(v) to a redo
 * log file opened with O_DIRECT fails with EINVAL (a filesystem that
 * takes the flag and refuses the writes): the log's fallback in its
 * first write (the crash loop's other restarts in three).
 * Test-only; never sanitized (loaded into programs that may not be). */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* per descriptor: the file (inode) and the end of its highest pwrite */
#define SHIM_FDS 4096
static struct { dev_t dev; ino_t ino; long long end; } shim_fd[SHIM_FDS];

static void shim_wrote(int fd, long long end) {
  struct stat st;
  if (fd < 0 || fd >= SHIM_FDS || fstat(fd, &st) < 0) return;
  if (shim_fd[fd].dev != st.st_dev || shim_fd[fd].ino != st.st_ino) {
    shim_fd[fd].dev = st.st_dev;
    shim_fd[fd].ino = st.st_ino;
    shim_fd[fd].end = 0;
  }
  if (end > shim_fd[fd].end) shim_fd[fd].end = end;
}

static int shim_redo(int fd, char *path);

/* shim_write_refused: whether PS_ODIRECT_EINVAL=write refuses a write to
 * FD (a redo log file open with O_DIRECT). */
static int shim_write_refused(int fd) {
  const char *e = getenv("PS_ODIRECT_EINVAL");
  char path[4096];
  int fl;
  return e && !strcmp(e, "write") && (fl = fcntl(fd, F_GETFL)) >= 0 && (fl & O_DIRECT) &&
         shim_redo(fd, path);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
  static ssize_t (*real)(int, const void *, size_t, off_t);
  if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
  if (shim_write_refused(fd)) {
    errno = EINVAL;
    return -1;
  }
  ssize_t r = real(fd, buf, n, off);
  if (r > 0) shim_wrote(fd, (long long)off + r);
  return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return pwrite(fd, buf, n, off); }

/* pwritev: the log's writes (psd_wal's wal_write), tracked and refused as
 * pwrite's are */
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
  static ssize_t (*real)(int, const struct iovec *, int, off_t);
  if (!real)
    real = (ssize_t (*)(int, const struct iovec *, int, off_t))dlsym(RTLD_NEXT, "pwritev");
  if (shim_write_refused(fd)) {
    errno = EINVAL;
    return -1;
  }
  ssize_t r = real(fd, iov, cnt, off);
  if (r > 0) shim_wrote(fd, (long long)off + r);
  return r;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off) {
  return pwritev(fd, iov, cnt, off);
}

/* shim_open: openat, refusing O_DIRECT under PS_ODIRECT_EINVAL=1. */
static int shim_open(const char *name, int dirfd, const char *path, int flags, mode_t mode) {
  int (*real)(int, const char *, int, ...) =
      (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, name);
  const char *e = getenv("PS_ODIRECT_EINVAL");
  if ((flags & O_DIRECT) && e && !strcmp(e, "1")) {
    errno = EINVAL;
    return -1;
  }
  return real(dirfd, path, flags, mode);
}

/* SHIM_OPENAT defines FN (openat, openat64): the mode argument, when
 * there is one, then shim_open (each variadic function its own va_start) */
#define SHIM_OPENAT(fn)                                          \
  int fn(int dirfd, const char *path, int flags, ...) {          \
    mode_t mode = 0;                                             \
    if (flags & (O_CREAT | O_TMPFILE)) {                         \
      va_list ap;                                                \
      va_start(ap, flags);                                       \
      mode = (mode_t)va_arg(ap, int);                            \
      va_end(ap);                                                \
    }                                                            \
    return shim_open(#fn, dirfd, path, flags, mode);             \
  }
SHIM_OPENAT(openat)
SHIM_OPENAT(openat64)

/* shim_redo: whether FD is a redo log file; its path into PATH (4096). */
static int shim_redo(int fd, char *path) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, 4095);
  if (n <= 0) return 0;
  path[n] = '\0';
  return strstr(path, "/redo/") != NULL;
}

/* shim_gate waits while PS_FSYNC_GATE exists (at most 60 s). */
static void shim_gate(int fd) {
  const char *gate = getenv("PS_FSYNC_GATE");
  char path[4096];
  if (!gate || !*gate || !shim_redo(fd, path)) return;
  for (int i = 0; i < 60000 && access(gate, F_OK) == 0; i++) usleep(1000);
}

static void shim_record(int fd) {
  const char *log = getenv("PS_FSYNC_LOG");
  if (!log || !*log) return;
  char path[4096], line[4200];
  struct stat st;
  if (!shim_redo(fd, path) || fstat(fd, &st) < 0) return;
  long long size = (long long)st.st_size;
  if (fd < SHIM_FDS && shim_fd[fd].dev == st.st_dev && shim_fd[fd].ino == st.st_ino &&
      shim_fd[fd].end < size)
    size = shim_fd[fd].end;
  int len = snprintf(line, sizeof line, "%lld %s\n", size, path);
  int lfd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (lfd < 0) return;
  if (write(lfd, line, (size_t)len) != len) abort(); /* the test would judge wrongly */
  close(lfd);
}

/* shim_failing: PS_FSYNC_FAIL exists and FD is a redo log file. */
static int shim_failing(int fd) {
  const char *fail = getenv("PS_FSYNC_FAIL");
  char path[4096];
  return fail && *fail && access(fail, F_OK) == 0 && shim_redo(fd, path);
}

/* shim_store_failing: PS_FSYNC_FAIL_STORE exists and FD is not a redo
 * log file. */
static int shim_store_failing(int fd) {
  const char *fail = getenv("PS_FSYNC_FAIL_STORE");
  char path[4096];
  return fail && *fail && access(fail, F_OK) == 0 && !shim_redo(fd, path);
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  if (shim_store_failing(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  shim_gate(fd);
  if (shim_failing(fd) || shim_store_failing(fd)) {
    errno = EIO;
    return -1;
  }
  int rc = real(fd);
  if (rc == 0) shim_record(fd);
  return rc;
}
