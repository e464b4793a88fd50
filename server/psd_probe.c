/* psd_probe: the gRPC listener's self-probe and rebuild (see psd_probe.h;
 * the invariants referred to are numbered there). */
#include "psd_probe.h"

#include <netdb.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "ps_addr.h"
#include "ps_log.h"
#include "psd_fd.h"
#include "psd_grpc.h"

#define PSD_PROBE_SETTINGS 4 /* HTTP/2 frame type of SETTINGS (RFC 9113 6.5) */
#define PSD_PROBE_TLS_HANDSHAKE 22 /* TLS record type of a handshake (RFC 8446 5.1) */

static void probe_closed(uv_handle_t *h) {
  psd_probe *p = h->data;
  p->busy = 0;
}

/* probe_rebuild replaces the gRPC server (invariant 3), unless the process
 * is still short of descriptors: then the next failed probe tries again. */
static void probe_rebuild(psd_probe *p) {
  psd_shard *sh = p->sh;
  uint64_t limit = psd_fd_limit(), open = 0, reserve = psd_fd_reserve(limit);
  if (limit != UINT64_MAX && psd_fd_count(&open) == 0 && open + reserve > limit) {
    ps_warn("grpc: %s does not answer, but only %llu of %llu descriptors are free "
            "(%llu wanted): not rebuilding yet", sh->me->grpc_addr,
            (unsigned long long)(open < limit ? limit - open : 0), (unsigned long long)limit,
            (unsigned long long)reserve);
    return;
  }
  if (sh->grpc)
    ps_warn("grpc: %s accepts no connection (%d probes in a row failed): rebuilding the gRPC "
            "server; its clients reconnect", sh->me->grpc_addr, p->fails);
  ps_errbuf eb = {{0}};
  if (psd_grpc_restart(sh, PSD_PROBE_RESTART_DRAIN_MS, &eb) < 0) {
    ps_err("grpc: cannot rebuild the server on %s, trying again in %d ms: %s",
           sh->me->grpc_addr, PSD_PROBE_INTERVAL_MS, eb.msg);
    return;
  }
  p->fails = 0;
  ps_warn("grpc: server rebuilt on %s", sh->me->grpc_addr);
}

/* probe_judge ends the probe in flight (once): OK, or a failure for WHY
 * (invariant 3). */
static void probe_judge(psd_probe *p, int ok, const char *why) {
  if (p->done) return;
  p->done = 1;
  uv_timer_stop(&p->deadline);
  if (!uv_is_closing((uv_handle_t *)&p->tcp)) uv_close((uv_handle_t *)&p->tcp, probe_closed);
  if (ok) {
    if (p->fails) ps_info("grpc: %s answers again", p->sh->me->grpc_addr);
    p->fails = 0;
    return;
  }
  p->fails++;
  ps_info("grpc: probe of %s failed (%d in a row): %s", p->sh->me->grpc_addr, p->fails, why);
  if (p->fails >= PSD_PROBE_FAILS) probe_rebuild(p);
}

/* probe_frame_ok: the first frame header arrived and is a SETTINGS frame
 * (TLS: the first record header is a handshake record of TLS 1.x). */
static int probe_frame_ok(const psd_probe *p) {
  if (p->got != p->want) return 0;
  if (p->hello) return p->frame[0] == PSD_PROBE_TLS_HANDSHAKE && p->frame[1] == 3;
  return p->frame[3] == PSD_PROBE_SETTINGS;
}

static void probe_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  psd_probe *p = h->data;
  (void)hint;
  *buf = uv_buf_init((char *)p->frame + p->got, (unsigned)(p->want - p->got));
}

/* probe_client_hello makes the bytes of a TLS ClientHello (ALPN h2) in
 * P->hello with OpenSSL over memory BIOs; 0 or PS_EINTERNAL. */
static int probe_client_hello(psd_probe *p, ps_errbuf *eb) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl = ctx ? SSL_new(ctx) : NULL;
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
  int rc = PS_EINTERNAL;
  if (ssl && rb && wb) {
    static const unsigned char alpn[] = {2, 'h', '2'};
    SSL_set_alpn_protos(ssl, alpn, sizeof alpn);
    SSL_set_connect_state(ssl);
    SSL_set_bio(ssl, rb, wb); /* SSL owns them now */
    rb = wb = NULL;
    SSL_do_handshake(ssl); /* wants to read: the ClientHello is in the write BIO */
    char *data;
    long n = BIO_get_mem_data(SSL_get_wbio(ssl), &data);
    if (n > 0 && (p->hello = malloc((size_t)n))) {
      memcpy(p->hello, data, (size_t)n);
      p->hello_len = (size_t)n;
      rc = 0;
    }
  }
  BIO_free(rb);
  BIO_free(wb);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return rc < 0 ? ps_errf(eb, rc, "cannot make a TLS ClientHello for the gRPC self-probe") : 0;
}

static void probe_written(uv_write_t *w, int status) {
  psd_probe *p = w->data;
  if (status < 0 && status != UV_ECANCELED) probe_judge(p, 0, uv_strerror(status));
}

static void probe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  psd_probe *p = s->data;
  (void)buf;
  if (p->done || n == 0) return;
  if (n < 0) {
    probe_judge(p, 0, n == UV_EOF ? "closed by the server" : uv_strerror((int)n));
    return;
  }
  p->got += (size_t)n;
  if (p->got == p->want)
    probe_judge(p, probe_frame_ok(p), p->hello ? "its first record is not a TLS handshake"
                                               : "its first frame is not SETTINGS");
}

static void probe_connected(uv_connect_t *req, int status) {
  psd_probe *p = req->data;
  if (p->done || status == UV_ECANCELED) return;
  if (status < 0) {
    probe_judge(p, 0, uv_strerror(status));
    return;
  }
  int r = 0;
  if (p->hello) {
    uv_buf_t b = uv_buf_init((char *)p->hello, (unsigned)p->hello_len);
    p->wr.data = p;
    r = uv_write(&p->wr, (uv_stream_t *)&p->tcp, &b, 1, probe_written);
  }
  if (r == 0) r = uv_read_start((uv_stream_t *)&p->tcp, probe_alloc, probe_read);
  if (r < 0) probe_judge(p, 0, uv_strerror(r));
}

/* probe_deadline judges a probe that saw no SETTINGS in time; the socket
 * is read directly first, in case the loop itself was late (invariant 1). */
static void probe_deadline(uv_timer_t *t) {
  psd_probe *p = t->data;
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&p->tcp, &fd) == 0) {
    ssize_t n;
    while (p->got < p->want &&
           (n = recv(fd, p->frame + p->got, p->want - p->got, MSG_DONTWAIT)) > 0)
      p->got += (size_t)n;
  }
  probe_judge(p, probe_frame_ok(p), p->hello ? "no TLS ServerHello within the deadline"
                                             : "no HTTP/2 SETTINGS within the deadline");
}

/* probe_tick starts a probe (invariants 1, 2, 4), or retries a rebuild
 * that failed. */
static void probe_tick(uv_timer_t *t) {
  psd_probe *p = t->data;
  psd_shard *sh = p->sh;
  if (p->busy || (sh->state != PSD_SERVING && sh->state != PSD_DEGRADED)) return;
  if (!sh->grpc) {
    probe_rebuild(p);
    return;
  }
  uv_tcp_init(sh->loop, &p->tcp);
  p->tcp.data = p;
  p->conn.data = p;
  p->busy = 1;
  p->done = 0;
  p->got = 0;
  int r = uv_tcp_connect(&p->conn, &p->tcp, (const struct sockaddr *)&p->addr, probe_connected);
  if (r < 0) { /* invariant 2: no socket, the listener is not known to be at fault */
    p->done = 1;
    uv_close((uv_handle_t *)&p->tcp, probe_closed);
    ps_debug("grpc: cannot probe %s: %s", sh->me->grpc_addr, uv_strerror(r));
    return;
  }
  uv_timer_start(&p->deadline, probe_deadline, PSD_PROBE_DEADLINE_MS, 0);
}

/* psd_probe_start: see psd_probe.h. */
int psd_probe_start(psd_probe *p, psd_shard *sh, ps_errbuf *eb) {
  memset(p, 0, sizeof *p);
  p->sh = sh;
  char host[256], svc[8];
  int port;
  if (ps_addr_split(sh->me->grpc_addr, host, sizeof host, &port, eb) < 0)
    return ps_errf(eb, PS_EINVAL, "cannot probe grpc address '%s': %s", sh->me->grpc_addr,
                   eb->msg);
  if (!strcmp(host, "0.0.0.0"))
    snprintf(host, sizeof host, "127.0.0.1");
  else if (!strcmp(host, "::"))
    snprintf(host, sizeof host, "::1");
  snprintf(svc, sizeof svc, "%d", port);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
  int g = getaddrinfo(host, svc, &hints, &ai);
  if (g)
    return ps_errf(eb, PS_EINVAL, "cannot probe grpc address '%s': %s", sh->me->grpc_addr,
                   gai_strerror(g));
  memcpy(&p->addr, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  p->want = sizeof p->frame;
  if (sh->cfg->security.mode == PS_SEC_TLS) {
    int rc = probe_client_hello(p, eb);
    if (rc < 0) return rc;
    p->want = 5; /* a TLS record header */
  }
  uv_timer_init(sh->loop, &p->tick);
  uv_timer_init(sh->loop, &p->deadline);
  p->tick.data = p->deadline.data = p;
  uv_timer_start(&p->tick, probe_tick, PSD_PROBE_INTERVAL_MS, PSD_PROBE_INTERVAL_MS);
  p->running = 1;
  return 0;
}

/* psd_probe_stop: see psd_probe.h. */
void psd_probe_stop(psd_probe *p) {
  if (!p->running) return;
  p->running = 0;
  p->done = 1;
  uv_close((uv_handle_t *)&p->tick, NULL);
  uv_close((uv_handle_t *)&p->deadline, NULL);
  if (p->busy && !uv_is_closing((uv_handle_t *)&p->tcp))
    uv_close((uv_handle_t *)&p->tcp, probe_closed);
  /* A write still queued on the closing socket is cancelled by the close,
   * before the loop ends: the hello may go once the loop has run. */
}
