/* psd_fd: the process's file descriptors (see psd_fd.h). */
#include "psd_fd.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

/* psd_fd_nr_open returns the kernel's ceiling on RLIMIT_NOFILE
 * (fs.nr_open), or 1048576 (its default) when it cannot be read. */
static uint64_t psd_fd_nr_open(void) {
  unsigned long long v = 0;
  FILE *f = fopen("/proc/sys/fs/nr_open", "r");
  if (f) {
    if (fscanf(f, "%llu", &v) != 1) v = 0;
    fclose(f);
  }
  return v ? v : 1048576;
}

/* psd_fd_raise_limit: see psd_fd.h. */
int psd_fd_raise_limit(uint64_t *before, uint64_t *after, ps_errbuf *eb) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
    return ps_errf(eb, PS_EIO, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
  *before = *after = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : rl.rlim_cur;
  rlim_t want = rl.rlim_max;
  if (want == RLIM_INFINITY) want = psd_fd_nr_open();
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= want) return 0;
  rl.rlim_cur = want;
  if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
    return ps_errf(eb, PS_EIO, "setrlimit(RLIMIT_NOFILE, %llu): %s", (unsigned long long)want,
                   strerror(errno));
  *after = want;
  return 0;
}

/* psd_fd_limit: see psd_fd.h. */
uint64_t psd_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY) return UINT64_MAX;
  return rl.rlim_cur;
}

/* psd_fd_reserve: see psd_fd.h. */
uint64_t psd_fd_reserve(uint64_t limit) {
  return limit / 4 < PSD_FD_RESERVE ? limit / 4 : PSD_FD_RESERVE;
}

/* psd_fd_count: see psd_fd.h. */
int psd_fd_count(uint64_t *n) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) {
    if (errno == EMFILE || errno == ENFILE) {
      *n = psd_fd_limit();
      return 0;
    }
    return PS_EUNAVAIL;
  }
  uint64_t k = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') k++;
  closedir(d);
  *n = k ? k - 1 : 0; /* less the directory's own descriptor */
  return 0;
}
