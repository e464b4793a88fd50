/* ps_stop: SIGTERM and SIGINT (and SIGHUP, or not) as a stop request, for a program that
 * notices it at its own pace (psw between steps, psd while it starts).
 * The first one sets ps_stop_signal (to the signal's number); a second
 * one ends the process by the signal's default action, so a program
 * stuck before it looks stays killable. */
#ifndef PS_STOP_H
#define PS_STOP_H

#include <signal.h>

extern volatile sig_atomic_t ps_stop_signal;

/* ps_stop_install installs the handler for SIGTERM and SIGINT; RESTART:
 * with SA_RESTART (interrupted system calls go on), else without (a
 * blocking wait returns EINTR and notices the request).  HUP: SIGHUP is a
 * stop request too (a worker whose terminal or session closed stops as
 * cleanly as at SIGTERM; unless the process started with SIGHUP ignored,
 * as under nohup, which stays so), else it is ignored until the program handles it
 * itself (psd reloads keys on SIGHUP once it serves: one sent while it
 * starts, systemd's reload say, must not kill it). */
void ps_stop_install(int restart, int hup);

#endif
