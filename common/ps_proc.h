/* ps_proc: what psd, psw and psctl do first in main, and how the ones
 * that print results on stdout end.
 *
 * A program may be started with a standard descriptor closed (`psd >&-`)
 * or with signals blocked (a supervisor that blocked SIGTERM for itself
 * and exec'd without unblocking).  Closed, the next open(2) or socket(2)
 * lands on fd 0, 1 or 2: log lines go into the tensor channel or libuv's
 * epoll descriptor, and libuv aborts at exit (uv__close asserts fd > 2).
 * Blocked, the signals a program stops on never arrive (they stay
 * pending): psd ignored SIGTERM for good.  Dispositions are left alone:
 * psd and psw install their handlers over an inherited SIG_IGN, except
 * the SIGHUP that nohup ignores (ps_stop.h), which stays ignored by
 * design; psctl's commands keep a shell's SIG_IGN of a background job's
 * SIGINT, as programs are meant to. */
#ifndef PS_PROC_H
#define PS_PROC_H

/* ps_proc_start opens /dev/null on each of fds 0, 1 and 2 that is closed
 * and unblocks every signal.  Call it first in main, before any thread
 * (threads inherit the mask; a thread that blocks signals later, so that
 * the main thread gets them, still may).  Not thread-safe. */
void ps_proc_start(void);

/* ps_proc_exec_env, before a program executes itself again (SET 1),
 * puts into the environment that stdout was closed when it started,
 * for the new image's ps_proc_start, which finds /dev/null there and
 * takes the variable out; after a failed exec (SET 0) takes it out
 * again.  Nothing when stdout was open; 0 or -1 with errno. */
int ps_proc_exec_env(int set);

/* ps_proc_flush_stdout flushes stdout, where PROG printed WHAT ("the
 * result line"): when it could not be written (a full disk, a closed
 * pipe whose SIGPIPE is ignored, or a stdout that was closed when the
 * program started: ps_proc_start gave it /dev/null) it says so on stderr
 * and turns RC 0 into 1; returns the exit code. */
int ps_proc_flush_stdout(const char *prog, const char *what, int rc);

#endif
