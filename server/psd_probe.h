/* psd_probe: the shard checks that its own gRPC listener still accepts,
 * and rebuilds the gRPC server when it does not.
 *
 * gRPC core 1.51 gives up on a listener after one accept4 fails with
 * anything but EAGAIN/ECONNABORTED (EMFILE when the process ran out of
 * descriptors for a moment): it logs "Failed accept4", and the socket
 * stays bound and listening, so the kernel completes handshakes that
 * nobody ever accepts (psctl status: DOWN).  No server argument caps
 * connections in 1.51, so the shard probes from outside:
 *
 *  1. Every PSD_PROBE_INTERVAL_MS the loop connects (libuv, non-blocking)
 *     to the shard's own gRPC address and waits PSD_PROBE_DEADLINE_MS for
 *     the first HTTP/2 frame, the server's SETTINGS, which gRPC's own
 *     threads send as soon as they accepted: the handlers on the loop
 *     play no part, so a busy loop cannot fail the probe (at the deadline
 *     the socket is read directly, in case the loop was late).  With TLS
 *     (security.mode: tls) the server speaks after the client: the probe
 *     sends a TLS ClientHello (made once by OpenSSL at start, ALPN h2) and
 *     waits for the first record header of the answer, a handshake record
 *     (the ServerHello), which gRPC's handshaker threads send as well.
 *  2. A probe that cannot even open its socket (no descriptor free) does
 *     not count: the listener is not known to be at fault.
 *  3. After PSD_PROBE_FAILS failures in a row, and only while the process
 *     has psd_fd_reserve descriptors free, the server is rebuilt on the
 *     same address (psd_grpc_restart) with a warning; a rebuild that
 *     fails (address not free yet) is tried again at the next tick.
 *  4. Probes run only while the shard is SERVING or DEGRADED; psd_probe_stop
 *     ends them before a drain stops gRPC on purpose.
 *
 * Loop thread only. */
#ifndef PSD_PROBE_H
#define PSD_PROBE_H

#include <netinet/in.h>
#include <stdint.h>
#include <uv.h>

#include "ps_error.h"
#include "psd_shard.h"

#define PSD_PROBE_INTERVAL_MS 2000
#define PSD_PROBE_DEADLINE_MS 1000
#define PSD_PROBE_FAILS 3
#define PSD_PROBE_RESTART_DRAIN_MS 500 /* replies already queued get this long */

typedef struct psd_probe {
  psd_shard *sh;
  struct sockaddr_storage addr; /* where the gRPC server listens */
  uv_timer_t tick, deadline;
  uv_tcp_t tcp;
  uv_connect_t conn;
  int running;                  /* timers started, not stopped */
  int busy;                     /* a probe's socket is open (or closing) */
  int done;                     /* that probe was judged */
  uint8_t frame[9];             /* the first HTTP/2 frame header (TLS: record header) */
  size_t got, want;             /* bytes of frame received, expected */
  uint8_t *hello;               /* TLS: the ClientHello sent first (NULL: plaintext) */
  size_t hello_len;
  uv_write_t wr;
  int fails;                    /* failed probes in a row */
} psd_probe;

/* psd_probe_start resolves sh->me->grpc_addr (a wildcard host probes the
 * loopback) and starts the timers on sh->loop.  Returns 0 or PS_EINVAL
 * (an address it cannot resolve) with a message. */
int psd_probe_start(psd_probe *p, psd_shard *sh, ps_errbuf *eb);

/* psd_probe_stop ends probing and closes the probe's handles (run the
 * loop afterwards); idempotent. */
void psd_probe_stop(psd_probe *p);

#endif
