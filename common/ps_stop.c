/* ps_stop: see ps_stop.h. */
#include "ps_stop.h"

volatile sig_atomic_t ps_stop_signal;

/* ps_stop_on_signal: async-signal-safe (signal and raise only). */
static void ps_stop_on_signal(int sig) {
  if (ps_stop_signal) {
    signal(sig, SIG_DFL);
    raise(sig);
  }
  ps_stop_signal = sig;
}

void ps_stop_install(int restart, int hup) {
  struct sigaction sa = {.sa_handler = ps_stop_on_signal, .sa_flags = restart ? SA_RESTART : 0};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  struct sigaction was;
  if (hup) { /* but one ignored from the start (nohup) stays ignored */
    if (sigaction(SIGHUP, NULL, &was) == 0 && was.sa_handler != SIG_IGN)
      sigaction(SIGHUP, &sa, NULL);
  } else {
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    sigaction(SIGHUP, &ign, NULL);
  }
}
