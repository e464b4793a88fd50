/* ps_test_fsync_shim.so: LD_PRELOADed into psd by the durability crash
 * loop (tests/integration/test_durability.c) to simulate a power cut.
 *
 * Every fdatasync that succeeds on a file whose path contains "/redo/"
 * (psd's redo log) appends "SIZE PATH\n" to the file named by
 * PS_FSYNC_LOG, before fdatasync returns: the bytes the disk is known to
 * hold.  After a SIGKILL the test cuts every segment back to its last
 * recorded size (the page cache survives SIGKILL; a power cut would not
 * keep what was never synced), so an acknowledgement that went out before
 * the fdatasync covering its record shows up as a lost acknowledged push.
 * Test-only; never sanitized (loaded into programs that may not be). */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void shim_record(int fd) {
  const char *log = getenv("PS_FSYNC_LOG");
  if (!log || !*log) return;
  char link[64], path[4096], line[4200];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return;
  path[n] = '\0';
  struct stat st;
  if (!strstr(path, "/redo/") || fstat(fd, &st) < 0) return;
  int len = snprintf(line, sizeof line, "%lld %s\n", (long long)st.st_size, path);
  int lfd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (lfd < 0) return;
  if (write(lfd, line, (size_t)len) != len) abort(); /* the test would judge wrongly */
  close(lfd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  int rc = real(fd);
  if (rc == 0) shim_record(fd);
  return rc;
}
