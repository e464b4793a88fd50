/* ps_stop: SIGTERM and SIGINT as a stop request, for a program that
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
 * blocking wait returns EINTR and notices the request). */
void ps_stop_install(int restart);

#endif
