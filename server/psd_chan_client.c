/* psd_chan_client: the tensor-channel client on a libuv loop (see
 * psd_chan_client.h for the invariants).
 *
 * A client's connection state, and the function that makes each
 * transition (cc_state asserts the list):
 *   DOWN       -> RESOLVING   cc_connect (the first request while down)
 *   RESOLVING  -> CONNECTING  cc_on_resolved (uv_tcp_connect started)
 *   CONNECTING -> HELLO       cc_on_connect (first HELLO written)
 *   HELLO      -> READY       cc_ready (the shard's last HELLO reply accepted)
 *   any        -> DOWN        cc_fail (invariant 3; psd_chan_client_close) */
#include "psd_chan_client.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps.pb-c.h"
#include "ps_addr.h"
#include "ps_auth.h"
#include "ps_chan.h"
#include "ps_pb.h"
#include "ps_shm.h"

#define CC_STAGE 8192
#define CC_MAX_DATA (1ull << 40)
#define CC_BEAT_MAX (1u << 20)
#define CC_SEG_MAX (1u << 30)

enum { CC_DOWN, CC_RESOLVING, CC_CONNECTING, CC_HELLO, CC_READY };

/* The handles of one connection (invariant 1).  Freed by the tcp
 * handle's close callback once it was initialized, else by the resolver's
 * callback (or at once when nothing is outstanding). */
typedef struct cc_conn {
  uv_getaddrinfo_t gai;
  uv_connect_t connect;
  uv_tcp_t tcp;
  psd_chan_client *c;                /* NULL once the client let it go */
  int tcp_init, resolving;
} cc_conn;

/* A frame to write: its meta packed when the request was made; header
 * (id, MAC flag) and MAC when it is written. */
typedef struct cc_wr {
  uv_write_t w;
  cc_conn *cn;
  const void *data;
  uint64_t dlen;
  uint8_t hdr[PS_CHAN_HDR_LEN];
  uint8_t tag[PS_AUTH_MAC];
  size_t mlen;
  uint8_t meta[];
} cc_wr;

struct psd_chan_client {
  uv_loop_t *loop;
  char addr[256], host[256], port[8];
  char *cluster;
  const ps_auth_key *key;   /* borrowed: its owner may change it between hellos */
  ps_auth_key hkey;         /* *key as the hello in progress began: it proves this one */
  int want_mac;
  int connect_ms, io_ms;
  int dead_ms;              /* psd_chan_client_set_dead_ms's (0: none) */
  int state;
  int closing;
  cc_conn *cn;
  cc_conn *feeding;         /* the connection whose bytes are being parsed */
  uv_timer_t timer;         /* invariant 4 */
  psd_chan_client_req *head, *tail;  /* every request not finished, in order (sent first) */
  size_t n;
  psd_chan_client_req hello;         /* the HELLO in flight (CC_HELLO) */
  int hello_step;           /* 1: the first, 2: the proof */
  uint8_t nc[PS_AUTH_NONCE], ns[PS_AUTH_NONCE], proof[PS_AUTH_MAC];
  size_t ns_len, proof_len;
  int peer_mac;
  uint32_t peer_version;    /* the challenge's auth_version */
  ps_auth_hello granted;    /* the last HELLO's fields (its accept MAC in proof) */
  uint8_t token[PS_SHM_TOKEN]; /* ... its shm_token */
  ps_auth_mac *mac;
  uint64_t next_id, gen;
  ps_chan_rx rx;
  psd_chan_client_req *rxq;          /* the request the reply being read answers */
  int rx_conn;              /* the frame being read is of request id 0: of the connection */
  int direct;               /* the last buffer was a pull's destination */
  uint8_t stage[CC_STAGE];
};

static void cc_fail(psd_chan_client *c, int err, const char *fmt, const char *what);

/* cc_state moves C to state TO along the list above. */
static void cc_state(psd_chan_client *c, int to) {
  assert(to == CC_DOWN || (c->state == CC_DOWN && to == CC_RESOLVING) ||
         (c->state == CC_RESOLVING && to == CC_CONNECTING) ||
         (c->state == CC_CONNECTING && to == CC_HELLO) || (c->state == CC_HELLO && to == CC_READY));
  c->state = to;
}
static void cc_kick(psd_chan_client *c);
static void cc_on_timeout(uv_timer_t *t);
static void cc_on_write(uv_write_t *w, int status);

/* ---- connection ----------------------------------------------------------------- */

static void cc_conn_closed(uv_handle_t *h) { free(h->data); }

/* cc_drop lets the current connection go (its handles close). */
static void cc_drop(psd_chan_client *c) {
  cc_conn *cn = c->cn;
  c->cn = NULL;
  if (!cn) return;
  cn->c = NULL;
  if (cn->tcp_init && !uv_is_closing((uv_handle_t *)&cn->tcp))
    uv_close((uv_handle_t *)&cn->tcp, cc_conn_closed);
  else if (cn->tcp_init || !cn->resolving) free(cn); /* closed by a walk (psd_chan_client_close) */
}

/* cc_finish finishes request Q (out of the list) with its status. */
static void cc_finish(psd_chan_client_req *q) {
  char *msg = q->msg;
  uint8_t *reply = q->reply;
  q->msg = NULL;
  q->reply = NULL;
  free(q->wr);
  q->wr = NULL;
  psd_done_finish(&q->done, q->status, q->status < 0 ? (msg ? msg : ps_strerror(q->status)) : NULL);
  free(msg);
  free(reply);
}

/* cc_fail_all finishes every request with ERR and MSG (invariant 3). */
static void cc_fail_all(psd_chan_client *c, int err, const char *msg) {
  psd_chan_client_req *q = c->head;
  c->head = c->tail = NULL;
  c->n = 0;
  while (q) {
    psd_chan_client_req *next = q->next;
    free(q->msg);
    q->msg = strdup(msg);
    q->status = err;
    q->done.data = NULL;
    q->done.nbytes = 0;
    cc_finish(q);
    q = next;
  }
}

/* cc_fail closes the connection and fails every request (invariant 3);
 * FMT has two %s: the address and WHAT. */
static void cc_fail(psd_chan_client *c, int err, const char *fmt, const char *what) {
  ps_errbuf eb;
  ps_errf(&eb, err, fmt, c->addr, what);
  cc_state(c, CC_DOWN);
  cc_drop(c);
  c->rx.state = PS_CHAN_RX_HDR;
  c->rx.got = 0;
  c->rxq = NULL;
  ps_auth_mac_free(c->mac);
  c->mac = NULL;
  if (!c->closing) uv_timer_stop(&c->timer);
  cc_fail_all(c, err, eb.msg);
}

/* cc_kick restarts the progress timer while anything waits (invariant 4). */
static void cc_kick(psd_chan_client *c) {
  if (c->closing) return;
  if (c->state == CC_DOWN || (c->state == CC_READY && !c->n)) {
    uv_timer_stop(&c->timer);
    return;
  }
  uint64_t ms = (uint64_t)(c->state == CC_READY ? c->io_ms : c->connect_ms);
  uv_timer_start(&c->timer, cc_on_timeout, ms, 0);
}

static void cc_on_timeout(uv_timer_t *t) {
  psd_chan_client *c = t->data;
  if (c->state == CC_DOWN || (c->state == CC_READY && !c->n)) return;
  char what[64];
  snprintf(what, sizeof what, "%d ms", c->state == CC_READY ? c->io_ms : c->connect_ms);
  cc_fail(c, PS_ETIMEDOUT,
          c->state == CC_READY ? "channel '%s': no progress for %s"
                               : "connect to '%s': no hello within %s",
          what);
}

/* cc_write writes frame WR (its meta packed) as request ID on the current
 * connection: header, meta, data, MAC.  0 or a libuv error (WR freed). */
static int cc_write(psd_chan_client *c, cc_wr *wr, uint64_t id) {
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                   .meta_len = (uint32_t)wr->mlen, .data_len = wr->dlen, .req_id = id};
  if (c->mac) h.flags = PS_CHAN_FLAG_MAC;
  ps_chan_hdr_encode(wr->hdr, &h);
  uv_buf_t b[3 + (CC_MAX_DATA / CC_SEG_MAX)];
  unsigned n = 0;
  b[n++] = uv_buf_init((char *)wr->hdr, sizeof wr->hdr);
  b[n++] = uv_buf_init((char *)wr->meta, (unsigned)wr->mlen);
  for (uint64_t off = 0; off < wr->dlen;) {
    uint64_t l = wr->dlen - off > CC_SEG_MAX ? CC_SEG_MAX : wr->dlen - off;
    b[n++] = uv_buf_init((char *)wr->data + off, (unsigned)l);
    off += l;
  }
  if (c->mac) { /* ps_chan.c invariant 6 */
    ps_auth_mac_begin(c->mac, 'C');
    for (unsigned i = 0; i < n; i++) ps_auth_mac_update(c->mac, 'C', b[i].base, b[i].len);
    ps_auth_mac_end(c->mac, 'C', wr->tag);
    b[n++] = uv_buf_init((char *)wr->tag, sizeof wr->tag);
  }
  wr->cn = c->cn;
  wr->w.data = wr;
  int rc = uv_write(&wr->w, (uv_stream_t *)&c->cn->tcp, b, n, cc_on_write);
  if (rc < 0) free(wr);
  return rc;
}

/* ---- receive ------------------------------------------------------------------- */

/* cc_expected: the request the next reply answers (invariant 2). */
static psd_chan_client_req *cc_expected(psd_chan_client *c) {
  if (c->state == CC_HELLO) return c->hello.sent ? &c->hello : NULL;
  return c->head && c->head->sent ? c->head : NULL;
}

/* cc_break fails the connection for a protocol violation WHAT. */
static int cc_break(psd_chan_client *c, const char *what) {
  cc_fail(c, PS_EPROTO, "channel '%s': %s", what);
  return PS_EPROTO;
}

static int rx_more(void *arg) {
  psd_chan_client *c = arg;
  return !c->closing && c->cn && c->cn == c->feeding;
}

static int rx_begin(void *arg) {
  psd_chan_client *c = arg;
  return cc_expected(c) ? 0 : cc_break(c, "unexpected bytes");
}

static int rx_hdr(void *arg) {
  psd_chan_client *c = arg;
  if (ps_chan_hdr_decode(&c->rx.h, c->rx.hdrbuf, CC_MAX_DATA) < 0)
    return cc_break(c, "bad reply header");
  psd_chan_client_req *e = cc_expected(c);
  /* request id 0 before the hello succeeded: the server's word on the
   * connection (refused at accept); after it, an unexpected reply */
  c->rx_conn = c->rx.h.req_id == 0 && c->rx.h.meta_len > 0 && c->state != CC_READY;
  if (c->rx_conn) return 0;
  if (!e || c->rx.h.req_id != e->id || c->rx.h.meta_len == 0)
    return cc_break(c, "unexpected reply");
  if (!!(c->rx.h.flags & PS_CHAN_FLAG_MAC) != !!c->mac)
    return cc_break(c, c->mac ? "a reply without its MAC" : "a MAC the hello did not agree on");
  c->rxq = e;
  return 0;
}

static void cc_hello_next(psd_chan_client *c);

/* cc_rx_finish: the reply of c->rxq is complete. */
static int cc_rx_finish(psd_chan_client *c) {
  psd_chan_client_req *q = c->rxq;
  c->rxq = NULL;
  c->rx.state = PS_CHAN_RX_HDR;
  c->rx.got = 0;
  if (q == &c->hello) {
    cc_hello_next(c);
    return 0;
  }
  c->head = q->next;
  if (!c->head) c->tail = NULL;
  c->n--;
  if (q->status == 0 && q->op == PS__CHAN_OP__CHAN_BEAT) {
    q->done.data = q->reply;
    q->done.nbytes = q->want;
  } else if (q->status == 0) {
    q->done.data = q->dst;
    q->done.nbytes = q->op == PS__CHAN_OP__CHAN_PULL ? q->want : 0;
  }
  cc_finish(q);
  cc_kick(c);
  return 0;
}

static int rx_data_done(void *arg) {
  psd_chan_client *c = arg;
  if (!c->mac) return cc_rx_finish(c);
  if (c->rx.state == PS_CHAN_RX_DATA) {
    psd_chan_client_req *q = c->rxq;
    ps_auth_mac_update(c->mac, 'S', q->op == PS__CHAN_OP__CHAN_BEAT ? q->reply : q->dst,
                       c->rx.h.data_len);
  }
  c->rx.state = PS_CHAN_RX_MAC;
  c->rx.got = 0;
  return 0;
}

static int rx_meta(void *arg) {
  psd_chan_client *c = arg;
  psd_chan_client_req *e = c->rxq;
  Ps__ChanMeta *m;
  ps_errbuf ueb;
  if (ps_pb_unpack(&ps__chan_meta__descriptor, c->rx.meta, c->rx.h.meta_len,
                   (ProtobufCMessage **)&m, &ueb) < 0)
    return cc_break(c, "undecodable reply meta");
  if (c->rx_conn) { /* what the server said, rather than "unexpected reply" */
    char said[600];
    int err = ps_chan_conn_said(m, said, sizeof said);
    ps__chan_meta__free_unpacked(m, NULL);
    cc_fail(c, err, "channel '%s': %s", said);
    return err;
  }
  uint64_t dlen = c->rx.h.data_len;
  e->done.version = m->version;
  if ((int)m->op == PS__CHAN_OP__CHAN_HELLO && e->op == PS__CHAN_OP__CHAN_HELLO &&
      c->hello_step == 1) { /* the challenge; the last reply says nothing of these */
    c->ns_len = m->nonce.len == PS_AUTH_NONCE ? m->nonce.len : 0;
    if (c->ns_len) memcpy(c->ns, m->nonce.data, c->ns_len);
    c->proof_len = m->auth.len <= PS_AUTH_MAC ? m->auth.len : 0;
    if (c->proof_len) memcpy(c->proof, m->auth.data, c->proof_len);
    c->peer_mac = m->payload_mac != 0;
    c->peer_version = m->auth_version;
  } else if ((int)m->op == PS__CHAN_OP__CHAN_HELLO && e->op == PS__CHAN_OP__CHAN_HELLO) {
    /* the last: what it granted, under its accept MAC (ps_auth.h) */
    c->proof_len = m->auth.len <= PS_AUTH_MAC ? m->auth.len : 0;
    if (c->proof_len) memcpy(c->proof, m->auth.data, c->proof_len);
    size_t tl = m->shm_token.len <= sizeof c->token ? m->shm_token.len : 0;
    if (tl) memcpy(c->token, m->shm_token.data, tl);
    ps_chan_hello_granted(m, &c->granted);
    c->granted.token = tl ? c->token : NULL; /* m is freed */
  }
  int bad = 0;
  if ((int)m->op == PS__CHAN_OP__CHAN_ERROR) {
    e->status = m->status < 0 ? m->status : PS_EPROTO;
    free(e->msg);
    e->msg = strdup(m->message && *m->message ? m->message : ps_strerror(e->status));
  } else if ((int)m->op != e->op) {
    bad = 1;
  } else if (e->op == PS__CHAN_OP__CHAN_BEAT) {
    if (dlen > CC_BEAT_MAX) bad = 2;
    else if (!(e->reply = malloc(dlen ? dlen : 1))) bad = 3;
    else e->want = dlen;
  } else if (e->op == PS__CHAN_OP__CHAN_PULL && dlen != e->want) {
    char buf[200];
    snprintf(buf, sizeof buf, "pull of model '%s': the server sent %llu bytes, %llu asked for",
             m->model ? m->model : "", (unsigned long long)dlen, (unsigned long long)e->want);
    e->status = PS_EINVAL;
    free(e->msg);
    e->msg = strdup(buf);
  }
  ps__chan_meta__free_unpacked(m, NULL);
  if (bad)
    return cc_break(c, bad == 1   ? "reply of the wrong kind"
                       : bad == 2 ? "a beat reply over 1 MiB"
                                  : "no room for a beat reply");
  if (c->mac) {
    ps_auth_mac_begin(c->mac, 'S');
    ps_auth_mac_update(c->mac, 'S', c->rx.hdrbuf, sizeof c->rx.hdrbuf);
    ps_auth_mac_update(c->mac, 'S', c->rx.meta, c->rx.h.meta_len);
  }
  int reads = e->status == 0 &&
              (e->op == PS__CHAN_OP__CHAN_PULL || e->op == PS__CHAN_OP__CHAN_BEAT);
  c->rx.state = reads ? PS_CHAN_RX_DATA : PS_CHAN_RX_DISCARD;
  c->rx.got = 0;
  return dlen == 0 ? rx_data_done(c) : 0;
}

static void rx_data(void *arg, const uint8_t *p, size_t n) {
  psd_chan_client *c = arg;
  psd_chan_client_req *q = c->rxq;
  uint8_t *to = q->op == PS__CHAN_OP__CHAN_BEAT ? q->reply : q->dst;
  memcpy(to + c->rx.got, p, n);
}

static void rx_discard(void *arg, const uint8_t *p, size_t n) {
  psd_chan_client *c = arg;
  if (c->mac) ps_auth_mac_update(c->mac, 'S', p, n);
}

static int rx_mac_done(void *arg) {
  psd_chan_client *c = arg;
  if (!ps_auth_mac_verify(c->mac, 'S', c->rx.tag))
    return cc_break(c, "a reply's MAC is wrong (changed on the way?)");
  return cc_rx_finish(c);
}

static const ps_chan_rx_ops cc_rx_ops = {.more = rx_more, .begin = rx_begin, .hdr = rx_hdr,
                                         .meta = rx_meta, .data = rx_data,
                                         .discard = rx_discard, .data_done = rx_data_done,
                                         .mac_done = rx_mac_done};

/* cc_alloc: the staging buffer, or the rest of a pull's destination once
 * its data is due (invariant 5). */
static void cc_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  cc_conn *cn = h->data;
  psd_chan_client *c = cn->c;
  if (c) c->direct = 0;
  if (c && c->rx.state == PS_CHAN_RX_DATA && c->rxq && c->rxq->op == PS__CHAN_OP__CHAN_PULL &&
      c->rx.h.data_len - c->rx.got >= CC_STAGE) {
    uint64_t left = c->rx.h.data_len - c->rx.got;
    c->direct = 1;
    *buf = uv_buf_init((char *)c->rxq->dst + c->rx.got,
                       (unsigned)(left > CC_SEG_MAX ? CC_SEG_MAX : left));
    return;
  }
  if (!c) { /* let go: read nothing more */
    static uint8_t sink[64];
    *buf = uv_buf_init((char *)sink, sizeof sink);
    return;
  }
  *buf = uv_buf_init((char *)c->stage, CC_STAGE);
}

static void cc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  cc_conn *cn = s->data;
  psd_chan_client *c = cn->c;
  if (!c || nread == 0) return;
  if (nread < 0) {
    cc_fail(c, PS_EUNAVAIL, "channel '%s': %s",
            nread == UV_EOF ? "closed by the server" : uv_strerror((int)nread));
    return;
  }
  cc_kick(c);
  if (c->direct) {
    c->direct = 0;
    if ((c->rx.got += (uint64_t)nread) == c->rx.h.data_len) rx_data_done(c);
    return;
  }
  c->feeding = cn;
  long u = ps_chan_rx_feed(&c->rx, c->stage, (size_t)nread, &cc_rx_ops, c);
  c->feeding = NULL;
  if (u < 0 && c->cn == cn) cc_fail(c, (int)u, "channel '%s': %s", ps_strerror((int)u));
}

/* ---- hello (ps_chan.h; ps_auth.h) ---------------------------------------------- */

/* cc_frame packs META into a new frame of DLEN bytes at DATA. */
static cc_wr *cc_frame(const Ps__ChanMeta *meta, const void *data, uint64_t dlen) {
  size_t mlen = ps__chan_meta__get_packed_size(meta);
  cc_wr *wr = calloc(1, sizeof *wr + mlen);
  if (!wr) return NULL;
  wr->mlen = ps__chan_meta__pack(meta, wr->meta);
  wr->data = data;
  wr->dlen = dlen;
  return wr;
}

static void cc_on_write(uv_write_t *w, int status) {
  cc_wr *wr = w->data;
  cc_conn *cn = wr->cn;
  free(wr);
  if (!cn->c) return;
  if (status < 0) cc_fail(cn->c, PS_EUNAVAIL, "channel '%s': write: %s", uv_strerror(status));
  else cc_kick(cn->c);
}

/* cc_send writes request Q's frame (packed in Q->wr); a write libuv
 * refuses fails the connection: 0 or -1 then (Q finished). */
static int cc_send(psd_chan_client *c, psd_chan_client_req *q) {
  cc_wr *wr = q->wr;
  q->wr = NULL;
  q->id = ++c->next_id;
  q->sent = 1;
  q->gen = c->gen;
  int rc = cc_write(c, wr, q->id);
  if (rc == 0) return 0;
  if (q == &c->hello) c->hello.sent = 0;
  cc_fail(c, PS_EUNAVAIL, "channel '%s': write: %s", uv_strerror(rc));
  return -1;
}

/* cc_auth_hello fills *H with the hello's fields the proofs cover
 * (ps_auth.h): this client asks for nothing but, maybe, the MAC; with
 * GRANTED, what the last HELLO granted too (its accept MAC). */
static void cc_auth_hello(const psd_chan_client *c, ps_auth_hello *h, int granted) {
  static const ps_auth_hello none;
  *h = granted ? c->granted : none;
  h->want_mac = c->want_mac ? 1 : 0;
  h->mac = c->peer_mac ? 1 : 0;
}

/* cc_hello_send sends HELLO step STEP (1: cluster and nonce; 2: proof). */
static void cc_hello_send(psd_chan_client *c, int step) {
  Ps__ChanMeta meta = PS__CHAN_META__INIT;
  meta.op = PS__CHAN_OP__CHAN_HELLO;
  meta.model = "";
  uint8_t mine[PS_AUTH_MAC];
  if (step == 1) {
    meta.proto_version = PS_CHAN_VERSION;
    meta.cluster = c->cluster;
    if (c->key) {
      ps_errbuf eb;
      c->hkey = *c->key; /* a SIGHUP may reload *key before the proof (psd_agg) */
      if (ps_auth_nonce(c->nc, &eb) < 0) {
        cc_fail(c, PS_EINTERNAL, "channel '%s': %s", eb.msg);
        return;
      }
      meta.key_id = (char *)c->hkey.id;
      meta.nonce.data = c->nc;
      meta.nonce.len = sizeof c->nc;
      meta.payload_mac = c->want_mac ? 1 : 0;
      meta.auth_version = PS_AUTH_HELLO_VERSION;
    }
  } else {
    ps_auth_hello h;
    cc_auth_hello(c, &h, 0);
    ps_auth_proof(&c->hkey, PS_AUTH_CLIENT, c->cluster, c->nc, c->ns, &h, mine);
    meta.auth.data = mine;
    meta.auth.len = sizeof mine;
  }
  memset(&c->hello, 0, sizeof c->hello);
  c->hello.op = PS__CHAN_OP__CHAN_HELLO;
  c->hello_step = step;
  c->ns_len = c->proof_len = 0;
  if (step == 1) c->peer_mac = 0, c->peer_version = 0;
  if (!(c->hello.wr = cc_frame(&meta, NULL, 0))) {
    cc_fail(c, PS_ENOMEM, "channel '%s': %s", "out of memory");
    return;
  }
  cc_send(c, &c->hello);
}

/* cc_ready: the hello is done: the queued requests go out (invariant 1). */
static void cc_ready(psd_chan_client *c) {
  cc_state(c, CC_READY);
  c->gen++;
  for (psd_chan_client_req *q = c->head; q; q = q->next)
    if (!q->sent && cc_send(c, q) < 0) return; /* all failed */
  cc_kick(c);
}

/* cc_hello_next acts on the reply to HELLO step hello_step. */
static void cc_hello_next(psd_chan_client *c) {
  if (c->hello.status < 0) {
    cc_fail(c, c->hello.status == PS_EPERM ? PS_EPERM : PS_EPROTO,
            "channel '%s': the shard refused the hello: %s",
            c->hello.msg ? c->hello.msg : ps_strerror(c->hello.status));
    free(c->hello.msg);
    c->hello.msg = NULL;
    return;
  }
  if (!c->key) {
    cc_ready(c);
    return;
  }
  if (c->hello_step == 1) {
    if (c->ns_len != PS_AUTH_NONCE) {
      cc_fail(c, PS_EPERM, "channel '%s': %s", "the shard does not authenticate the channel "
              "(no security.secret_file there?)");
      return;
    }
    if (c->peer_version != PS_AUTH_HELLO_VERSION) {
      cc_fail(c, PS_EPERM, "channel '%s': %s", "the shard's hello proofs are of another "
              "version (" PS_AUTH_OLD_PEER ")");
      return;
    }
    ps_auth_hello h;
    cc_auth_hello(c, &h, 0);
    if (!ps_auth_check(&c->hkey, PS_AUTH_SERVER, c->cluster, c->nc, c->ns, &h, c->proof,
                       c->proof_len)) {
      cc_fail(c, PS_EPERM, "channel '%s': %s", "the shard's proof of the key is wrong "
              "(another secret file, or a field of the hello changed on the way?)");
      return;
    }
    if (c->want_mac && !c->peer_mac) {
      cc_fail(c, PS_EPERM, "channel '%s': %s", "the shard does not MAC frames "
              "(security.payload_mac is false there)");
      return;
    }
    cc_hello_send(c, 2);
    return;
  }
  ps_auth_hello h;
  cc_auth_hello(c, &h, 1);
  if (!ps_auth_check(&c->hkey, PS_AUTH_ACCEPT, c->cluster, c->nc, c->ns, &h, c->proof,
                     c->proof_len)) {
    cc_fail(c, PS_EPERM, "channel '%s': %s", "the shard's last hello does not carry its MAC "
            "of what it granted (a field of the hello changed on the way)");
    return;
  }
  if (c->peer_mac && ps_auth_mac_new(&c->mac, &c->hkey, c->cluster, c->nc, c->ns) < 0) {
    cc_fail(c, PS_ENOMEM, "channel '%s': %s", "out of memory");
    return;
  }
  cc_ready(c);
}

/* cc_dead gives the connected socket of C c->dead_ms (invariant 7). */
static void cc_dead(psd_chan_client *c) {
  uv_os_fd_t fd;
  if (c->dead_ms > 0 && c->cn && c->cn->tcp_init && uv_fileno((uv_handle_t *)&c->cn->tcp, &fd) == 0)
    ps_chan_fd_set_dead_ms(fd, c->addr, c->dead_ms);
}

static void cc_on_connect(uv_connect_t *req, int status) {
  cc_conn *cn = req->data;
  psd_chan_client *c = cn->c;
  if (!c) return;
  if (status < 0) {
    cc_fail(c, PS_EUNAVAIL, "connect to '%s': %s", uv_strerror(status));
    return;
  }
  uv_tcp_nodelay(&cn->tcp, 1);
  cc_dead(c);
  cc_state(c, CC_HELLO);
  int rc = uv_read_start((uv_stream_t *)&cn->tcp, cc_alloc, cc_on_read);
  if (rc < 0) {
    cc_fail(c, PS_EUNAVAIL, "channel '%s': read: %s", uv_strerror(rc));
    return;
  }
  cc_kick(c);
  cc_hello_send(c, 1);
}

static void cc_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  cc_conn *cn = req->data;
  psd_chan_client *c = cn->c;
  cn->resolving = 0;
  if (!c) {
    if (res) uv_freeaddrinfo(res);
    free(cn);
    return;
  }
  if (status < 0) {
    cc_fail(c, PS_EUNAVAIL, "channel address '%s': %s", uv_strerror(status));
    return;
  }
  int rc = uv_tcp_init(c->loop, &cn->tcp);
  if (rc == 0) {
    cn->tcp_init = 1;
    cn->tcp.data = cn;
    cn->connect.data = cn;
    rc = uv_tcp_connect(&cn->connect, &cn->tcp, res->ai_addr, cc_on_connect);
  }
  uv_freeaddrinfo(res);
  if (rc < 0) {
    cc_fail(c, PS_EUNAVAIL, "connect to '%s': %s", uv_strerror(rc));
    return;
  }
  cc_state(c, CC_CONNECTING);
}

/* cc_connect starts a connection (invariant 1). */
static void cc_connect(psd_chan_client *c) {
  cc_conn *cn = calloc(1, sizeof *cn);
  if (!cn) {
    cc_fail(c, PS_ENOMEM, "channel '%s': %s", "out of memory");
    return;
  }
  cn->c = c;
  cn->gai.data = cn;
  c->cn = cn;
  cc_state(c, CC_RESOLVING);
  c->rx.state = PS_CHAN_RX_HDR;
  c->rx.got = 0;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  cn->resolving = 1;
  int rc = uv_getaddrinfo(c->loop, &cn->gai, cc_on_resolved, c->host, c->port, &hints);
  if (rc < 0) {
    cn->resolving = 0;
    cc_fail(c, PS_EUNAVAIL, "channel address '%s': %s", uv_strerror(rc));
    return;
  }
  cc_kick(c);
}

/* ---- requests -------------------------------------------------------------------- */

/* cc_submit queues Q (its frame in Q->wr): written now when the hello is
 * done, else once it is (a connection starts when none is up). */
static int cc_submit(psd_chan_client *c, psd_chan_client_req *q, ps_errbuf *eb) {
  if (!q->wr) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  q->next = NULL;
  if (c->tail) c->tail->next = q;
  else c->head = q;
  c->tail = q;
  c->n++;
  if (c->state == CC_READY) {
    if (cc_send(c, q) == 0) cc_kick(c);
  } else if (c->state == CC_DOWN) {
    cc_connect(c); /* may fail Q at once (finished, invariant 3) */
  }
  return 0;
}

/* cc_req_init readies Q for op OP. */
static int cc_req_init(psd_chan_client *c, psd_chan_client_req *q, int op, ps_errbuf *eb) {
  if (c->closing) return ps_errf(eb, PS_ESHUTDOWN, "channel '%s': closed", c->addr);
  psd_done d = q->done;
  memset(q, 0, sizeof *q);
  q->done = (psd_done){.fn = d.fn, .arg = d.arg};
  q->op = op;
  return 0;
}

static void cc_meta(Ps__ChanMeta *meta, int op, const ps_req *r) {
  ps__chan_meta__init(meta);
  meta->op = (Ps__ChanOp)op;
  meta->model = (char *)r->model;
  meta->chunk_ids = (uint32_t *)r->ids;
  meta->n_chunk_ids = r->nids;
  meta->worker = r->worker;
  meta->clock = r->clock;
  meta->version = op == PS__CHAN_OP__CHAN_PULL ? 0 : r->version;
  meta->codec = r->codec;
  meta->summed = (uint32_t *)r->summed;
  meta->n_summed = r->nsummed;
}

/* cc_dense sends dense request R of OP (push: its payload; pull: its
 * destination) as Q. */
static int cc_dense(psd_chan_client *c, const ps_req *r, int op, psd_chan_client_req *q,
                    ps_errbuf *eb) {
  int rc = cc_req_init(c, q, op, eb);
  if (rc < 0) return rc;
  Ps__ChanMeta meta;
  cc_meta(&meta, op, r);
  int push = op == PS__CHAN_OP__CHAN_PUSH;
  if (!push) {
    q->dst = r->out;
    q->want = r->nbytes;
  }
  q->wr = cc_frame(&meta, push ? r->grads : NULL, push ? r->nbytes : 0);
  return cc_submit(c, q, eb);
}

/* psd_chan_client_push: see psd_chan_client.h. */
int psd_chan_client_push(psd_chan_client *c, const ps_req *r, psd_chan_client_req *q,
                         ps_errbuf *eb) {
  return cc_dense(c, r, PS__CHAN_OP__CHAN_PUSH, q, eb);
}

/* psd_chan_client_pull: see psd_chan_client.h. */
int psd_chan_client_pull(psd_chan_client *c, const ps_req *r, psd_chan_client_req *q,
                         ps_errbuf *eb) {
  return cc_dense(c, r, PS__CHAN_OP__CHAN_PULL, q, eb);
}

/* psd_chan_client_beat: see psd_chan_client.h. */
int psd_chan_client_beat(psd_chan_client *c, const void *req, size_t len,
                         psd_chan_client_req *q, ps_errbuf *eb) {
  int rc = cc_req_init(c, q, PS__CHAN_OP__CHAN_BEAT, eb);
  if (rc < 0) return rc;
  Ps__ChanMeta meta = PS__CHAN_META__INIT;
  meta.op = PS__CHAN_OP__CHAN_BEAT;
  meta.model = "";
  q->wr = cc_frame(&meta, req, len);
  return cc_submit(c, q, eb);
}

size_t psd_chan_client_inflight(const psd_chan_client *c) { return c->n; }

uint64_t psd_chan_client_gen(const psd_chan_client *c) { return c->gen; }

/* psd_chan_client_set_dead_ms: see psd_chan_client.h. */
void psd_chan_client_set_dead_ms(psd_chan_client *c, int dead_ms) {
  c->dead_ms = dead_ms > 0 ? dead_ms : 0;
  if (c->state >= CC_HELLO) cc_dead(c); /* the connection up now */
}

/* ---- life ------------------------------------------------------------------------ */

/* psd_chan_client_new: see psd_chan_client.h. */
int psd_chan_client_new(psd_chan_client **out, uv_loop_t *loop, const char *addr,
                        const char *cluster, const ps_auth_key *key, int flags, int connect_ms,
                        int io_ms, ps_errbuf *eb) {
  psd_chan_client *c = calloc(1, sizeof *c);
  if (!c || !(c->cluster = strdup(cluster ? cluster : ""))) {
    free(c);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  snprintf(c->addr, sizeof c->addr, "%s", addr);
  int port;
  if (ps_addr_split(addr, c->host, sizeof c->host, &port, eb) < 0) {
    free(c->cluster);
    free(c);
    return ps_errf(eb, PS_EINVAL, "bad channel address '%s' (want host:port)", addr);
  }
  snprintf(c->port, sizeof c->port, "%d", port);
  c->loop = loop;
  c->key = key;
  c->want_mac = (flags & PS_CHAN_AUTH_MAC) != 0;
  c->connect_ms = connect_ms > 0 ? connect_ms : 1;
  c->io_ms = io_ms > 0 ? io_ms : 1;
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  *out = c;
  return 0;
}

static void cc_timer_closed(uv_handle_t *h) {
  psd_chan_client *c = h->data;
  ps_chan_rx_release(&c->rx);
  ps_auth_key_wipe(&c->hkey);
  free(c->cluster);
  free(c);
}

/* psd_chan_client_close: see psd_chan_client.h. */
void psd_chan_client_close(psd_chan_client *c) {
  if (!c || c->closing) return;
  c->closing = 1;
  /* handles some walk over the loop closed (and the loop ran since: a
   * process that could not start) are gone already */
  int walked = uv_is_closing((uv_handle_t *)&c->timer);
  cc_fail(c, PS_ESHUTDOWN, "channel '%s': %s", "the client is closing");
  if (walked) cc_timer_closed((uv_handle_t *)&c->timer);
  else uv_close((uv_handle_t *)&c->timer, cc_timer_closed);
}
