/* ps_addr: "host:port" network addresses.
 *
 * One parser for the addresses of the cluster file and the channel: the
 * config check, the channel client (ps_chan) and the channel listener
 * (psd_chan) all split with ps_addr_split.  Pure functions but
 * ps_addr_dial, the one client-side TCP connect; thread-safe. */
#ifndef PS_ADDR_H
#define PS_ADDR_H

#include <stddef.h>

#include "ps_error.h"

/* ps_addr_split splits ADDR, "host:port" or "[v6addr]:port", into HOST
 * (the caller's buffer of HOSTLEN bytes, NUL-terminated, brackets
 * stripped) and *PORT.  Strict: the host is non-empty, holds no ':' unless
 * bracketed and no blank or bracket otherwise; the port is 1..5 digits
 * only (no sign, no trailing junk) with value 1..65535.  Returns 0 or
 * PS_EINVAL with a message in EB; on failure *PORT is -1 when only the
 * port part is at fault and 0 otherwise, so a caller can word its own
 * message. */
int ps_addr_split(const char *addr, char *host, size_t hostlen, int *port, ps_errbuf *eb);

/* How two addresses relate (ps_addr_same). */
enum ps_addr_rel {
  PS_ADDR_OTHER = 0, /* different (or one is no address) */
  PS_ADDR_SAME = 1,  /* one socket address: two listeners on one host cannot both bind it */
  PS_ADDR_MAYBE = 2, /* one port, and one is a wildcard host (0.0.0.0, [::]): the same on one
                        host, nothing on two */
};

/* ps_addr_same says how addresses A and B relate, without DNS: IP
 * addresses are compared as inet_pton reads them ([0:0::1] is [::1],
 * [::ffff:10.0.0.1] is 10.0.0.1), 'localhost' as the loopback address
 * of either family, other host names without case.  A wildcard host
 * takes its port on every address of its host: 0.0.0.0 the IPv4 ones
 * (names and localhost included), [::] all of them (dual stack). */
int ps_addr_same(const char *a, const char *b);

/* ps_addr_wildcard says whether ADDR's host is a wildcard: 0.0.0.0 or
 * [::] (however written); 0 for one that is no address. */
int ps_addr_wildcard(const char *addr);

/* ps_addr_loopback says whether ADDR's host is a loopback address, so
 * that no other host reaches it: 'localhost' (any case), 127.0.0.0/8 and
 * [::1], IP addresses as inet_pton reads them ([0:0::1], [::ffff:127.0.0.1]).
 * 0 for a wildcard, another name (no DNS) or one that is no address. */
int ps_addr_loopback(const char *addr);

/* ps_addr_same_host says whether addresses A and B, ports aside, name one
 * host as far as their text tells, without DNS: both loopback (all of
 * them are one machine's), the same host address as ps_addr_same compares
 * it (host names without case; a name and an IP address are never one),
 * or both the same wildcard.  0 when either is no address. */
int ps_addr_same_host(const char *a, const char *b);

/* ps_addr_dial opens a non-blocking TCP connection to ADDR ("host:port",
 * its first resolved address) within TIMEOUT_MS and sets *FD to it; 0, or
 * a PS_E* code with *FD -1 and EB saying why (WHAT names the address in
 * the messages: "channel").  The channel client dials with it, and
 * ps_rpc_explain_handshake to see whether an address takes TCP at all. */
int ps_addr_dial(const char *what, const char *addr, int timeout_ms, int *fd, ps_errbuf *eb);

/* ps_addr_dead_after makes the kernel abort TCP socket FD once the peer
 * acknowledged nothing for DEAD_MS (TCP_USER_TIMEOUT): data it sent, or,
 * the socket being idle, keepalive probes, which start after DEAD_MS / 2
 * of silence (at least 1 s) and repeat every second.  A connection whose
 * path was cut then fails within DEAD_MS instead of waiting out TCP's
 * exponential retransmission backoff (minutes; after a heal the next
 * retransmission may still be many seconds off), and the caller's
 * reconnect takes over.  A live peer acknowledges within a round trip
 * however busy its process is, so this never ends a slow but live
 * connection.  0, or PS_EIO with EB saying why. */
int ps_addr_dead_after(int fd, int dead_ms, ps_errbuf *eb);

#endif
