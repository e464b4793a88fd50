/* ps_addr: see ps_addr.h. */
#include "ps_addr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

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
