/* ps_proc: see ps_proc.h. */
#include "ps_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int proc_stdout_closed; /* stdout was closed at the start */

#define PROC_ENV_CLOSED "PS_PROC_STDOUT_CLOSED" /* ps_proc_exec_env */

void ps_proc_start(void) {
  /* a program that executes itself again (psw, ps_gpu_blas.h) hands over
   * that its first image found stdout closed: this one finds /dev/null */
  if (getenv(PROC_ENV_CLOSED)) {
    proc_stdout_closed = 1;
    unsetenv(PROC_ENV_CLOSED);
  }
  /* in order: open(2) returns the lowest free descriptor, the one closed */
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; fd++) {
    if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
    int got = open("/dev/null", O_RDWR);
    if (got >= 0 && got != fd) close(got); /* cannot happen; never keep a stray one */
    if (fd == STDOUT_FILENO) proc_stdout_closed = 1;
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
}

int ps_proc_exec_env(int set) {
  if (!proc_stdout_closed) return 0;
  return set ? setenv(PROC_ENV_CLOSED, "1", 1) : unsetenv(PROC_ENV_CLOSED);
}

int ps_proc_flush_stdout(const char *prog, const char *what, int rc) {
  errno = 0;
  if (fflush(stdout) == 0 && !ferror(stdout) && !proc_stdout_closed) return rc;
  fprintf(stderr, "%s: %s could not be written to stdout: %s\n", prog, what,
          proc_stdout_closed ? "it was closed when the program started"
          : errno            ? strerror(errno)
                             : "write error");
  return rc ? rc : 1;
}
