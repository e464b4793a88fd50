/* ps_addr: see ps_addr.h. */
#include "ps_addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* ps_addr_split: see ps_addr.h. */
int ps_addr_split(const char *addr, char *host, size_t hostlen, int *port, ps_errbuf *eb) {
  *port = 0;
  if (hostlen) host[0] = 0;
  const char *colon = addr ? strrchr(addr, ':') : NULL;
  const char *h = addr;
  size_t hl = colon ? (size_t)(colon - addr) : 0;
  int ok = hl > 0;
  if (ok && h[0] == '[') {
    ok = hl > 2 && h[hl - 1] == ']' && !memchr(h + 1, '[', hl - 1) && !memchr(h + 1, ']', hl - 2);
    h++, hl -= 2;
  } else if (ok) {
    ok = !memchr(h, ':', hl) && strcspn(h, " \t[]") >= hl;
  }
  if (!ok || hl >= hostlen)
    return ps_errf(eb, PS_EINVAL, "bad address '%s' (want host:port)", addr ? addr : "");
  memcpy(host, h, hl);
  host[hl] = 0;
  /* an address written as one (digits and dots, or in brackets) must be
   * one: 999.1.1.1 is no host name either, and only the bind would say */
  unsigned char ip[16];
  int v6 = addr[0] == '[';
  char bare[64]; /* an IPv6 address without its zone ("%eth0") */
  snprintf(bare, sizeof bare, "%.*s", (int)strcspn(host, "%"), host);
  if ((v6 || strspn(host, "0123456789.") == hl) &&
      inet_pton(v6 ? AF_INET6 : AF_INET, bare, ip) != 1)
    return ps_errf(eb, PS_EINVAL, "bad address '%s' ('%s' is no %s address)", addr, host,
                   v6 ? "IPv6" : "IPv4");
  const char *p = colon + 1;
  size_t nd = strspn(p, "0123456789"), z = strspn(p, "0");
  long v = 0;
  for (size_t i = z; i < nd && i < z + 5; i++) v = v * 10 + (p[i] - '0');
  if (nd == 0 || nd - z > 5 || p[nd] || v < 1 || v > 65535) {
    *port = -1;
    return ps_errf(eb, PS_EINVAL, "bad port in address '%s' (want 1..65535)", addr);
  }
  /* 07000 is 7000 here but octal 3584 to some readers (YAML 1.1,
   * inet_aton's parts): refused, as the cluster file's integers are */
  if (z) {
    *port = -1;
    return ps_errf(eb, PS_EINVAL, "bad port in address '%s' (%s has a leading zero: write %ld)",
                   addr, p, v);
  }
  *port = (int)v;
  return 0;
}

/* An address as ps_addr_same compares it. */
typedef struct addr_id {
  int port;
  int kind;              /* AF_INET, AF_INET6, ADDR_LOCAL (localhost) or 0 (a host name) */
  unsigned char ip[16];  /* AF_INET: the first 4 bytes */
  char name[256];        /* a host name; AF_INET6: its zone ("eth0"), else "" */
} addr_id;
enum { ADDR_LOCAL = -1 };

/* addr_id_of reads ADDR into *ID; 0, or -1 when it is no address. */
static int addr_id_of(const char *addr, addr_id *id) {
  char host[256];
  ps_errbuf eb;
  memset(id, 0, sizeof *id);
  if (ps_addr_split(addr, host, sizeof host, &id->port, &eb) < 0) return -1;
  size_t hl = strcspn(host, "%");
  if (addr[0] == '[') {
    snprintf(id->name, sizeof id->name, "%s", host[hl] ? host + hl + 1 : "");
    host[hl] = 0;
    if (inet_pton(AF_INET6, host, id->ip) != 1) return -1;
    id->kind = AF_INET6;
    static const unsigned char v4mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (!memcmp(id->ip, v4mapped, 12)) { /* [::ffff:10.0.0.1] is 10.0.0.1 */
      memmove(id->ip, id->ip + 12, 4);
      memset(id->ip + 4, 0, 12);
      id->kind = AF_INET;
      id->name[0] = 0;
    }
  } else if (strspn(host, "0123456789.") == strlen(host)) {
    if (inet_pton(AF_INET, host, id->ip) != 1) return -1;
    id->kind = AF_INET;
  } else {
    id->kind = strcasecmp(host, "localhost") ? 0 : ADDR_LOCAL;
    snprintf(id->name, sizeof id->name, "%s", host);
  }
  return 0;
}

/* addr_any says whether ID's host is a wildcard: 4 (0.0.0.0), 6 ([::],
 * dual stack) or 0. */
static int addr_any(const addr_id *id) {
  static const unsigned char zero[16];
  if (id->kind == AF_INET && !memcmp(id->ip, zero, 4)) return 4;
  if (id->kind == AF_INET6 && !memcmp(id->ip, zero, 16)) return 6;
  return 0;
}

/* addr_host_same says whether A and B name one host address (neither a
 * wildcard). */
static int addr_host_same(const addr_id *a, const addr_id *b) {
  static const unsigned char lo4[4] = {127, 0, 0, 1}, lo6[16] = {[15] = 1};
  if (a->kind == ADDR_LOCAL && b->kind == ADDR_LOCAL) return 1;
  if (a->kind == ADDR_LOCAL || b->kind == ADDR_LOCAL) { /* localhost: either loopback */
    const addr_id *o = a->kind == ADDR_LOCAL ? b : a;
    return (o->kind == AF_INET && !memcmp(o->ip, lo4, 4)) ||
           (o->kind == AF_INET6 && !memcmp(o->ip, lo6, 16) && !o->name[0]);
  }
  if (a->kind != b->kind) return 0;
  if (a->kind == 0) return !strcasecmp(a->name, b->name); /* (no DNS: names only) */
  return !memcmp(a->ip, b->ip, 16) && !strcmp(a->name, b->name);
}

/* addr_loopback says whether ID is a loopback host: localhost, 127.0.0.0/8
 * (a mapped one too) or ::1 (any zone). */
static int addr_loopback(const addr_id *id) {
  static const unsigned char lo6[16] = {[15] = 1};
  return id->kind == ADDR_LOCAL || (id->kind == AF_INET && id->ip[0] == 127) ||
         (id->kind == AF_INET6 && !memcmp(id->ip, lo6, 16));
}

/* ps_addr_loopback: see ps_addr.h. */
int ps_addr_loopback(const char *addr) {
  addr_id id;
  return addr_id_of(addr, &id) == 0 && addr_loopback(&id);
}

/* ps_addr_same_host: see ps_addr.h. */
int ps_addr_same_host(const char *a, const char *b) {
  addr_id x, y;
  if (addr_id_of(a, &x) < 0 || addr_id_of(b, &y) < 0) return 0;
  if (addr_loopback(&x) && addr_loopback(&y)) return 1; /* one machine, any of its loopbacks */
  int ax = addr_any(&x), ay = addr_any(&y);
  if (ax || ay) return ax == ay;
  return addr_host_same(&x, &y);
}

/* ps_addr_wildcard: see ps_addr.h. */
int ps_addr_wildcard(const char *addr) {
  addr_id id;
  return addr_id_of(addr, &id) == 0 && addr_any(&id) != 0;
}

/* ps_addr_same: see ps_addr.h. */
int ps_addr_same(const char *a, const char *b) {
  addr_id x, y;
  if (addr_id_of(a, &x) < 0 || addr_id_of(b, &y) < 0 || x.port != y.port) return PS_ADDR_OTHER;
  int ax = addr_any(&x), ay = addr_any(&y);
  if (ax && ax == ay) return PS_ADDR_SAME;
  if (!ax && !ay) return addr_host_same(&x, &y) ? PS_ADDR_SAME : PS_ADDR_OTHER;
  if (ax && ay) return PS_ADDR_MAYBE; /* 0.0.0.0 and [::] (dual stack) */
  /* a wildcard and another host's address: 0.0.0.0 takes no IPv6 one */
  const addr_id *other = ax ? &y : &x;
  return (ax ? ax : ay) == 4 && other->kind == AF_INET6 ? PS_ADDR_OTHER : PS_ADDR_MAYBE;
}

/* addr_connect connects socket FD to AI within TIMEOUT_MS; 0 or a PS_E*. */
static int addr_connect(int fd, const struct addrinfo *ai, const char *addr, int timeout_ms,
                        ps_errbuf *eb) {
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
    return ps_errf(eb, PS_EUNAVAIL, "connect to '%s': %s", addr, strerror(errno));
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int r;
  while ((r = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR) {}
  if (r == 0) return ps_errf(eb, PS_ETIMEDOUT, "connect to '%s': timed out", addr);
  int err = 0;
  socklen_t el = sizeof err;
  if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
  if (err) return ps_errf(eb, PS_EUNAVAIL, "connect to '%s': %s", addr, strerror(err));
  return 0;
}

/* ps_addr_dial: see ps_addr.h. */
int ps_addr_dial(const char *what, const char *addr, int timeout_ms, int *fd, ps_errbuf *eb) {
  char host[256], service[8];
  int port;
  *fd = -1;
  if (ps_addr_split(addr, host, sizeof host, &port, eb) < 0)
    return ps_errf(eb, PS_EINVAL, "bad %s address '%s' (want host:port)", what, addr);
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
  int g = getaddrinfo(host, service, &hints, &ai);
  if (g) return ps_errf(eb, PS_EINVAL, "%s address '%s': %s", what, addr, gai_strerror(g));
  int s = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int rc = s < 0 ? ps_errf(eb, ps_err_from_errno(errno), "socket: %s", strerror(errno))
                 : addr_connect(s, ai, addr, timeout_ms, eb);
  freeaddrinfo(ai);
  if (rc < 0) {
    if (s >= 0) close(s);
    return rc;
  }
  *fd = s;
  return 0;
}

/* ps_addr_dead_after: see ps_addr.h. */
int ps_addr_dead_after(int fd, int dead_ms, ps_errbuf *eb) {
  int one = 1, idle = dead_ms / 2000 > 0 ? dead_ms / 2000 : 1, intvl = 1;
  unsigned int ut = dead_ms > 0 ? (unsigned int)dead_ms : 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut) < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) < 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) < 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) < 0)
    return ps_errf(eb, PS_EIO, "TCP_USER_TIMEOUT / keepalive: %s", strerror(errno));
  return 0;
}
