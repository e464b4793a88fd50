/* ps_chan: tensor-channel framing and the blocking, pipelining client.
 *
 * Client invariants:
 *  1. The socket is non-blocking; every wait is a poll() bounded by the
 *     client's timeout (no byte moving for timeout_ms fails the call).
 *  2. Requests in flight sit in a ring in send order.  A server answers in
 *     order, so the reply being read belongs to the oldest request still
 *     waiting; one that agreed to unordered acks in the hello (ps_chan.h)
 *     may answer a push after requests behind it, and a reply then belongs
 *     to the waiting request with its id.  Either way a reply that matches
 *     no waiting request breaks the client, except one of request id 0
 *     (no request has it): the shard's word on the connection (its refusal
 *     at accept: limits.max_connections, descriptors), which breaks the
 *     client with what the shard said.  A request collected out of
 *     order (ps_chan_recv_id) leaves a hole in the ring, dropped once it
 *     reaches the head.
 *  3. Reply bytes are parsed by ps_chan_rx, the frame decoder the shard
 *     shares (header -> meta -> data -> MAC), with this client's callbacks.
 *     Small reads go through a staging buffer; once the data of a pull
 *     reply is due and nothing is staged, readv() targets the caller's
 *     destination segments directly.
 *  4. While a send waits for POLLOUT it also drains replies (POLLIN), so a
 *     pipeline can never deadlock on two full socket buffers.
 *  5. Any framing or I/O failure marks the client broken; later calls
 *     answer PS_EUNAVAIL with the first failure's message.
 *  6. With the payload MAC (the shard said so in the hello) every frame
 *     after the hello ends in a MAC (ps_auth.h): sends append it; a reply
 *     is complete only once its MAC checked out (RX_MAC), else the client
 *     is broken.  A pull's data is MACed from the destination segments
 *     once all of it arrived, discarded data as it goes by.
 *  7. Shared memory (ps_shm.h; ps_chan.h "shared memory"): the region is
 *     used only when the shard offered it in its last HELLO reply and the
 *     client mapped it (size, seals and token checked), never with the
 *     payload MAC, only for fp32 payloads, and for pulls alone when the
 *     offer said so (shm_pulls_only: a shard of one earlier version under
 *     durability `sync`).
 *     Its first half is the push area, its second the pull area (for
 *     payloads that do not already lie in the region), until the caller
 *     moves the region onto its own memory (ps_chan_shm_move): then the
 *     areas are the caller's bytes, and only payloads that lie in the
 *     region use it.  At most one push and one pull in flight use it: a
 *     push's bytes are the shard's to read until a reply to that push or
 *     to a later request arrives (the shard acts on a connection's
 *     requests in the order sent), a pull's area is the shard's to write
 *     until its reply was taken (copied out when it was not read in
 *     place); others meanwhile go over TCP.  With PS_CHAN_SHM_HOLD (asked
 *     in the hello and agreed in the last HELLO reply: a shard that logs
 *     pushes from the region) the region is PS_CHAN_SHM_PUSH_AREAS push
 *     areas and a pull area, each a page-rounded share of it, and a
 *     push's bytes are the shard's until that push's own answer (ack or
 *     error) arrives, so a shard under `sync` may log them from the
 *     region after it answered later requests: up to that many pushes in
 *     flight use a free push area each, others go over TCP.  Such a
 *     region is the client's own business: it never moves, and payloads
 *     that lie in it in whole or in part go over TCP, so the client
 *     itself writes a push area only to copy a push in (a caller that
 *     pulls into a busy push area writes it, as it could any memory).  A
 *     reply that says its data is
 *     in the region answers only a request that asked for that; anything
 *     else breaks the client. */
#include "ps_chan.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_addr.h"
#include "ps_auth.h"
#include "ps_log.h"
#include "ps_pb.h"
#include "ps_shm.h"

#define CHAN_STAGE 8192              /* staging buffer for headers and metas */
#define CHAN_CLIENT_MAX_DATA (1ull << 40)
#define CHAN_BEAT_MAX (1u << 20) /* a beat reply larger than this breaks the client */
#define CHAN_SEG_MAX (1u << 30)      /* contiguous wrappers split at this */

/* ---- header ------------------------------------------------------------ */

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

/* ps_chan_hdr_encode writes H as the 32-byte little-endian header. */
void ps_chan_hdr_encode(uint8_t out[PS_CHAN_HDR_LEN], const ps_chan_hdr *h) {
  put32(out, h->magic);
  out[4] = (uint8_t)h->version;
  out[5] = (uint8_t)(h->version >> 8);
  out[6] = (uint8_t)h->flags;
  out[7] = (uint8_t)(h->flags >> 8);
  put32(out + 8, h->meta_len);
  put32(out + 12, h->reserved);
  put64(out + 16, h->data_len);
  put64(out + 24, h->req_id);
}

/* ps_chan_hdr_decode parses IN into H and checks it (see ps_chan.h);
 * returns 0, PS_EPROTO or PS_ETOOBIG. */
int ps_chan_hdr_decode(ps_chan_hdr *h, const uint8_t in[PS_CHAN_HDR_LEN], uint64_t max_data) {
  h->magic = get32(in);
  h->version = (uint16_t)(in[4] | in[5] << 8);
  h->flags = (uint16_t)(in[6] | in[7] << 8);
  h->meta_len = get32(in + 8);
  h->reserved = get32(in + 12);
  h->data_len = get64(in + 16);
  h->req_id = get64(in + 24);
  if (h->magic != PS_CHAN_MAGIC || h->version != PS_CHAN_VERSION || (h->flags & ~PS_CHAN_FLAG_MAC) ||
      h->reserved != 0 || h->meta_len > PS_CHAN_MAX_META)
    return PS_EPROTO;
  if (h->data_len > max_data) return PS_ETOOBIG;
  return 0;
}

/* ---- receiving frames ---------------------------------------------------- */

/* rx_take: how many of AVAIL bytes the current part of RX still wants,
 * of NEED in all. */
static size_t rx_take(const ps_chan_rx *rx, uint64_t need, size_t avail) {
  uint64_t left = need - rx->got;
  return left < avail ? (size_t)left : avail;
}

/* rx_meta_room makes room for the meta of the header just accepted. */
static int rx_meta_room(ps_chan_rx *rx) {
  if (rx->h.meta_len <= rx->meta_cap) return 0;
  uint8_t *m = realloc(rx->meta, rx->h.meta_len);
  if (!m) return PS_ENOMEM;
  rx->meta = m;
  rx->meta_cap = rx->h.meta_len;
  return 0;
}

/* ps_chan_rx_feed: see ps_chan.h. */
long ps_chan_rx_feed(ps_chan_rx *rx, const uint8_t *p, size_t n, const ps_chan_rx_ops *ops,
                     void *arg) {
  size_t used = 0;
  while (used < n && (!ops->more || ops->more(arg))) {
    const uint8_t *q = p + used;
    size_t take;
    int rc = 0, done = 0;
    switch (rx->state) {
      case PS_CHAN_RX_HDR:
        if (rx->got == 0 && ops->begin && (rc = ops->begin(arg)) < 0) return rc;
        take = rx_take(rx, PS_CHAN_HDR_LEN, n - used);
        memcpy(rx->hdrbuf + rx->got, q, take);
        if ((rx->got += take) == PS_CHAN_HDR_LEN) {
          if ((rc = ops->hdr(arg)) == 0 && (rc = rx_meta_room(rx)) == 0) {
            rx->state = PS_CHAN_RX_META;
            rx->got = 0;
          }
        }
        break;
      case PS_CHAN_RX_META:
        take = rx_take(rx, rx->h.meta_len, n - used);
        memcpy(rx->meta + rx->got, q, take);
        if ((rx->got += take) == rx->h.meta_len) {
          rx->state = PS_CHAN_RX_HDR;
          rx->got = 0;
          done = 1;
        }
        break;
      case PS_CHAN_RX_MAC:
        take = rx_take(rx, PS_AUTH_MAC, n - used);
        memcpy(rx->tag + rx->got, q, take);
        if ((rx->got += take) == PS_AUTH_MAC) {
          rx->state = PS_CHAN_RX_HDR;
          rx->got = 0;
          done = 2;
        }
        break;
      default: /* DATA, DISCARD */
        take = rx_take(rx, rx->h.data_len, n - used);
        if (rx->state == PS_CHAN_RX_DATA) ops->data(arg, q, take);
        else if (ops->discard) ops->discard(arg, q, take);
        if ((rx->got += take) == rx->h.data_len) done = 3;
    }
    if (rc < 0) return rc;
    used += take; /* before the step's callback, which may pause the owner */
    if (done == 1) rc = ops->meta(arg);
    else if (done == 2) rc = ops->mac_done(arg);
    else if (done == 3) rc = ops->data_done(arg);
    if (rc < 0) return rc;
  }
  return (long)used;
}

/* ps_chan_rx_release: see ps_chan.h. */
void ps_chan_rx_release(ps_chan_rx *rx) {
  free(rx->meta);
  rx->meta = NULL;
  rx->meta_cap = 0;
}

/* ---- client state --------------------------------------------------------- */

typedef struct chan_pending {
  uint64_t id;
  int op;                 /* PS__CHAN_OP__* of the request */
  struct iovec *dst;      /* pull: copied segment array (malloc'd); beat: one
                             segment over reply */
  size_t nseg;
  uint64_t want_bytes;    /* pull: bytes expected into dst */
  int done, status;
  int collected;          /* ps_chan_recv_id took it: a hole in the ring */
  uint64_t version;
  uint32_t parked_ms;     /* pull reply: time parked on the shard */
  char *msg;              /* error text (malloc'd) or NULL */
  uint8_t *reply;         /* beat: the reply's data (malloc'd), want_bytes long */
  /* HELLO reply: the shard's nonce and proof (ps_auth.h), when given */
  uint8_t nonce[PS_AUTH_NONCE], auth[PS_AUTH_MAC];
  size_t nonce_len, auth_len;
  int payload_mac;
  uint32_t auth_version;  /* the challenge's (ps_auth.h PS_AUTH_HELLO_VERSION) */
  int shm, shm_copy;      /* its payload is in the region (invariant 7): in place, or copied */
  uint64_t shm_off;       /* where, from the region's data start */
} chan_pending;

struct ps_chan_client {
  int fd;
  int timeout_ms;
  char addr[256];
  int broken;
  ps_errbuf broken_eb;
  uint64_t next_id;
  chan_pending *q;        /* ring of qcap entries (holes included) */
  size_t qcap, qhead, qlen;
  size_t nlive;           /* entries not collected: requests in flight */
  size_t nwait;           /* of those, the ones whose reply is not complete */
  uint64_t rx_id;         /* the request the reply being read answers */
  int rx_conn;            /* the frame being read has request id 0: the shard's word on
                             the connection, no request's reply (invariant 2) */
  int want_unordered;     /* asked for unordered acks in the hello */
  uint32_t worker1;       /* the worker the hello names + 1 (0: none; ps_chan_connect_worker) */
  int unordered;          /* the shard agreed (invariant 2) */
  /* receive state machine (invariant 3) */
  ps_chan_rx rx;
  ps_errbuf *rx_eb;       /* the feeding call's, for the callbacks' messages */
  uint8_t stage[CHAN_STAGE];
  size_t stage_off, stage_len;
  /* send scratch */
  uint8_t *tx_meta;
  size_t tx_meta_cap;
  struct iovec *iov;
  size_t iov_cap;
  uint32_t last_parked_ms; /* of the last reply ps_chan_recv returned */
  ps_auth_mac *mac;        /* frames after the hello carry MACs (invariant 6) */
  uint8_t tx_tag[PS_AUTH_MAC];
  uint64_t tx_bytes, rx_bytes; /* every byte written / read on the socket */
  uint8_t *reply;          /* the data of the last beat reply ps_chan_recv returned */
  size_t reply_len;
  uint32_t features;       /* the shard's HELLO reply's ChanFeature bits */
  ps_auth_hello hello;     /* the hello's fields: asked for, and (the last HELLO reply's)
                              granted, as the proofs and the accept MAC cover them */
  int helloed;             /* the hello succeeded: a frame of id 0 is an unexpected reply */
  /* shared memory (invariant 7) */
  uint64_t shm_want;       /* asked for in the hello */
  uint64_t shm_offer;      /* the last HELLO reply's: bytes, process, descriptor, token */
  int shm_pulls_only;      /* ... and whether pushes go over TCP (invariant 7) */
  uint32_t shm_pid, shm_fd;
  uint8_t shm_token[PS_SHM_TOKEN];
  size_t shm_token_len;
  ps_shm shm;              /* mapped: map != NULL */
  int want_hold;           /* PS_CHAN_SHM_HOLD asked for ... */
  int shm_hold;            /* ... and agreed: several push areas (invariant 7) */
  uint64_t shm_push_id[PS_CHAN_SHM_PUSH_AREAS]; /* the request using each area (0: none) */
  uint64_t shm_pull_id;
  uint64_t shm_tx, shm_rx; /* payload bytes that went through the region */
};

/* chan_break marks C unusable with ERR and a message; returns ERR. */
static int chan_break(ps_chan_client *c, ps_errbuf *eb, int err, const char *fmt, const char *what) {
  if (!c->broken) {
    c->broken = 1;
    ps_errf(&c->broken_eb, err, fmt, c->addr, what);
  }
  if (eb) *eb = c->broken_eb;
  return err;
}

/* chan_check_usable returns PS_EUNAVAIL with the first failure's message
 * when C is broken, else 0. */
static int chan_check_usable(ps_chan_client *c, ps_errbuf *eb) {
  if (!c->broken) return 0;
  return ps_errf(eb, PS_EUNAVAIL, "channel '%s' is unusable: %s", c->addr, c->broken_eb.msg);
}

/* chan_wait polls C's socket for EVENTS within the timeout; returns the
 * revents, or a negative PS_E* code (PS_ETIMEDOUT marks C broken). */
static int chan_wait(ps_chan_client *c, short events, ps_errbuf *eb) {
  struct pollfd p = {.fd = c->fd, .events = events};
  for (;;) {
    int r = poll(&p, 1, c->timeout_ms);
    if (r > 0) return p.revents;
    if (r == 0) return chan_break(c, eb, PS_ETIMEDOUT, "channel '%s': no progress for %s", "the timeout");
    if (errno != EINTR)
      return chan_break(c, eb, PS_EIO, "channel '%s': poll: %s", strerror(errno));
  }
}

/* ---- receive ---------------------------------------------------------------- */

/* seg_iov fills IOV (at most MAX entries) with the spans of E's segments
 * from byte OFF on; returns the entry count. */
static int seg_iov(const chan_pending *e, uint64_t off, struct iovec *iov, int max) {
  int n = 0;
  for (size_t i = 0; i < e->nseg && n < max; i++) {
    uint64_t len = e->dst[i].iov_len;
    if (off >= len) {
      off -= len;
      continue;
    }
    iov[n].iov_base = (uint8_t *)e->dst[i].iov_base + off;
    iov[n].iov_len = (size_t)(len - off);
    off = 0;
    n++;
  }
  return n;
}

/* chan_find returns the request in flight (not collected) with ID, or NULL. */
static chan_pending *chan_find(ps_chan_client *c, uint64_t id) {
  for (size_t i = 0; i < c->qlen; i++) {
    chan_pending *e = &c->q[(c->qhead + i) % c->qcap];
    if (!e->collected && e->id == id) return e;
  }
  return NULL;
}

/* chan_oldest_waiting returns the oldest request whose reply is not
 * complete, or NULL. */
static chan_pending *chan_oldest_waiting(ps_chan_client *c) {
  for (size_t i = 0; i < c->qlen; i++) {
    chan_pending *e = &c->q[(c->qhead + i) % c->qcap];
    if (!e->collected && !e->done) return e;
  }
  return NULL;
}

/* rx_entry returns the pending request the incoming reply belongs to. */
static chan_pending *rx_entry(ps_chan_client *c) { return chan_find(c, c->rx_id); }

/* rx_finish completes the reply of the current entry and rearms for the
 * next header. */
static void rx_finish(ps_chan_client *c) {
  chan_pending *e = rx_entry(c);
  e->done = 1;
  if (e->id == c->shm_pull_id) c->shm_pull_id = 0; /* invariant 7 */
  for (int i = 0; i < PS_CHAN_SHM_PUSH_AREAS; i++) { /* held: its own answer; else any after */
    uint64_t p = c->shm_push_id[i];
    if (p && (c->shm_hold ? e->id == p : e->id >= p)) c->shm_push_id[i] = 0;
  }
  c->nwait--;
  c->rx.state = PS_CHAN_RX_HDR;
  c->rx.got = 0;
}

/* rx_data_done: the current reply's data is complete: finished, or its
 * MAC is due (invariant 6). */
static int rx_data_done(void *arg) {
  ps_chan_client *c = arg;
  if (!c->mac) {
    rx_finish(c);
    return 0;
  }
  if (c->rx.state == PS_CHAN_RX_DATA) {
    const chan_pending *e = rx_entry(c);
    for (size_t i = 0; i < e->nseg; i++)
      ps_auth_mac_update(c->mac, 'S', e->dst[i].iov_base, e->dst[i].iov_len);
  }
  c->rx.state = PS_CHAN_RX_MAC;
  c->rx.got = 0;
  return 0;
}

/* rx_begin: reply bytes are welcome only while a request waits. */
static int rx_begin(void *arg) {
  ps_chan_client *c = arg;
  if (!c->nwait) return chan_break(c, c->rx_eb, PS_EPROTO, "channel '%s': %s", "unexpected bytes");
  return 0;
}

/* rx_after_hdr checks a complete reply header; returns 0 or a PS_E* code
 * (the client is then broken). */
static int rx_after_hdr(void *arg) {
  ps_chan_client *c = arg;
  ps_errbuf *eb = c->rx_eb;
  if (ps_chan_hdr_decode(&c->rx.h, c->rx.hdrbuf, CHAN_CLIENT_MAX_DATA) < 0)
    return chan_break(c, eb, PS_EPROTO, "channel '%s': %s", "bad reply header");
  /* invariant 2: the oldest waiting request, or with unordered acks any;
   * id 0 (never a request's) is the shard's word on the connection */
  c->rx_conn = c->rx.h.req_id == 0 && !c->helloed; /* after the hello: never (unMACed) */
  chan_pending *e = c->unordered && !c->rx_conn ? chan_find(c, c->rx.h.req_id)
                                                : chan_oldest_waiting(c);
  if (!e || e->done || (c->rx.h.req_id != e->id && !c->rx_conn) || c->rx.h.meta_len == 0)
    return chan_break(c, eb, PS_EPROTO, "channel '%s': %s", "unexpected reply");
  c->rx_id = e->id;
  if (!!(c->rx.h.flags & PS_CHAN_FLAG_MAC) != !!c->mac)
    return chan_break(c, eb, PS_EPROTO, "channel '%s': %s",
                      c->mac ? "a reply without its MAC" : "a MAC the hello did not agree on");
  return 0;
}

/* chan_op_reads_data: replies to OP carry data the caller wants (pull,
 * sparse pull: into its segments; beat: into a buffer of the reply's). */
static int chan_op_reads_data(int op) {
  return op == PS__CHAN_OP__CHAN_PULL || op == PS__CHAN_OP__CHAN_BEAT ||
         op == PS__CHAN_OP__CHAN_SPARSE_PULL;
}

/* chan_shm_copy_out copies pull E's values from the region's pull area
 * into its destination segments (invariant 7). */
static void chan_shm_copy_out(ps_chan_client *c, const chan_pending *e) {
  const uint8_t *p = c->shm.data + e->shm_off;
  for (size_t i = 0; i < e->nseg; i++) {
    memcpy(e->dst[i].iov_base, p, e->dst[i].iov_len);
    p += e->dst[i].iov_len;
  }
}

/* ps_chan_conn_said: see ps_chan.h. */
int ps_chan_conn_said(const Ps__ChanMeta *m, char *said, size_t cap) {
  char shown[512];
  if ((int)m->op != PS__CHAN_OP__CHAN_ERROR || !m->message || !*m->message) {
    snprintf(said, cap, "unexpected reply");
    return PS_EPROTO;
  }
  snprintf(said, cap, "the shard refused the connection: %s",
           ps_log_escape(shown, sizeof shown, m->message, 400));
  return PS_EUNAVAIL; /* (not the frame's status: no MAC vouches for it) a shard's limit passes */
}

/* chan_said_conn breaks C with what the shard said of the connection in
 * M (freed here), a frame of request id 0 (ps_chan_conn_said). */
static int chan_said_conn(ps_chan_client *c, Ps__ChanMeta *m, ps_errbuf *eb) {
  char said[600];
  int err = ps_chan_conn_said(m, said, sizeof said);
  ps__chan_meta__free_unpacked(m, NULL);
  return chan_break(c, eb, err, "channel '%s': %s", said);
}

/* rx_after_meta decodes a complete reply meta into the current entry and
 * chooses where its data goes; returns 0 or a PS_E* code (broken). */
static int rx_after_meta(void *arg) {
  ps_chan_client *c = arg;
  ps_errbuf *eb = c->rx_eb;
  chan_pending *e = rx_entry(c);
  Ps__ChanMeta *m;
  ps_errbuf ueb;
  if (ps_pb_unpack(&ps__chan_meta__descriptor, c->rx.meta, c->rx.h.meta_len,
                   (ProtobufCMessage **)&m, &ueb) < 0)
    return chan_break(c, eb, PS_EPROTO, "channel '%s': %s", "undecodable reply meta");
  if (c->rx_conn) /* what the shard said, rather than "unexpected reply" */
    return chan_said_conn(c, m, eb);
  uint64_t dlen = c->rx.h.data_len;
  e->version = m->version;
  e->parked_ms = m->parked_ms;
  if ((int)m->op == PS__CHAN_OP__CHAN_HELLO && e->op == PS__CHAN_OP__CHAN_HELLO) {
    e->nonce_len = m->nonce.len <= PS_AUTH_NONCE ? m->nonce.len : 0;
    if (e->nonce_len) memcpy(e->nonce, m->nonce.data, e->nonce_len);
    e->auth_len = m->auth.len <= PS_AUTH_MAC ? m->auth.len : 0;
    if (e->auth_len) memcpy(e->auth, m->auth.data, e->auth_len);
    e->payload_mac = m->payload_mac != 0;
    e->auth_version = m->auth_version;
    c->features = m->features; /* the last HELLO reply's (after a proof: the shard's answer) */
    c->unordered = c->want_unordered && m->unordered_acks; /* the last HELLO's word */
    c->shm_offer = m->shm_bytes; /* invariant 7: the last HELLO's word too */
    c->shm_pulls_only = m->shm_pulls_only != 0;
    c->shm_hold = c->want_hold && m->shm_hold; /* ... and this */
    c->shm_pid = m->shm_pid;
    c->shm_fd = m->shm_fd;
    c->shm_token_len = m->shm_token.len <= PS_SHM_TOKEN ? m->shm_token.len : 0;
    if (c->shm_token_len) memcpy(c->shm_token, m->shm_token.data, c->shm_token_len);
    ps_chan_hello_granted(m, &c->hello);
    c->hello.token = c->shm_token_len ? c->shm_token : NULL; /* m is freed */
  }
  if (m->shm && (!e->shm || dlen || (int)m->op != PS__CHAN_OP__CHAN_PULL ||
                 m->shm_off != e->shm_off)) {
    ps__chan_meta__free_unpacked(m, NULL);
    return chan_break(c, eb, PS_EPROTO, "channel '%s': %s",
                      "a reply in shared memory that no request asked for");
  }
  if ((int)m->op == PS__CHAN_OP__CHAN_ERROR) {
    e->status = m->status < 0 ? m->status : PS_EPROTO;
    e->msg = strdup(m->message && *m->message ? m->message : ps_strerror(e->status));
  } else if ((int)m->op != e->op) {
    ps__chan_meta__free_unpacked(m, NULL);
    return chan_break(c, eb, PS_EPROTO, "channel '%s': %s", "reply of the wrong kind");
  } else if (e->op == PS__CHAN_OP__CHAN_BEAT && dlen > CHAN_BEAT_MAX) {
    ps__chan_meta__free_unpacked(m, NULL);
    return chan_break(c, eb, PS_EPROTO, "channel '%s': %s", "a beat reply over 1 MiB");
  } else if (e->op == PS__CHAN_OP__CHAN_BEAT && !(e->reply = malloc(dlen ? dlen : 1))) {
    ps__chan_meta__free_unpacked(m, NULL);
    return chan_break(c, eb, PS_ENOMEM, "channel '%s': %s", "no room for a beat reply");
  } else if (e->op == PS__CHAN_OP__CHAN_BEAT) {
    e->dst[0] = (struct iovec){e->reply, dlen};
    e->nseg = 1;
    e->want_bytes = dlen;
  } else if (m->shm) { /* invariant 7: the values are in the region */
    if (e->shm_copy) chan_shm_copy_out(c, e);
    c->shm_rx += e->want_bytes;
    c->rx_bytes += e->want_bytes;
  } else if (chan_op_reads_data(e->op) && e->op != PS__CHAN_OP__CHAN_BEAT &&
             dlen != e->want_bytes) {
    char buf[200];
    snprintf(buf, sizeof buf, "pull of model '%s': the server sent %llu bytes, %llu asked for",
             m->model ? m->model : "", (unsigned long long)dlen,
             (unsigned long long)e->want_bytes);
    e->status = PS_EINVAL;
    e->msg = strdup(buf);
  }
  ps__chan_meta__free_unpacked(m, NULL);
  if (c->mac) {
    ps_auth_mac_begin(c->mac, 'S');
    ps_auth_mac_update(c->mac, 'S', c->rx.hdrbuf, sizeof c->rx.hdrbuf);
    ps_auth_mac_update(c->mac, 'S', c->rx.meta, c->rx.h.meta_len);
  }
  c->rx.state = chan_op_reads_data(e->op) && e->status == 0 ? PS_CHAN_RX_DATA : PS_CHAN_RX_DISCARD;
  c->rx.got = 0;
  return dlen == 0 ? rx_data_done(c) : 0;
}

/* rx_data copies the small tail N at P of a pull's or beat's data into its
 * destination segments, at data offset rx.got. */
static void rx_data(void *arg, const uint8_t *p, size_t n) {
  ps_chan_client *c = arg;
  struct iovec iov[64];
  size_t done = 0;
  while (done < n) {
    int k = seg_iov(rx_entry(c), c->rx.got + done, iov, 64);
    if (k == 0) break;
    for (int i = 0; i < k && done < n; i++) {
      size_t t = iov[i].iov_len < n - done ? iov[i].iov_len : n - done;
      memcpy(iov[i].iov_base, p + done, t);
      done += t;
    }
  }
}

/* rx_discard MACs discarded reply data as it goes by (invariant 6). */
static void rx_discard(void *arg, const uint8_t *p, size_t n) {
  ps_chan_client *c = arg;
  if (c->mac) ps_auth_mac_update(c->mac, 'S', p, n);
}

/* rx_mac_done checks a reply's MAC and completes it. */
static int rx_mac_done(void *arg) {
  ps_chan_client *c = arg;
  if (!ps_auth_mac_verify(c->mac, 'S', c->rx.tag))
    return chan_break(c, c->rx_eb, PS_EPROTO, "channel '%s': %s",
                      "a reply's MAC is wrong (changed on the way?)");
  rx_finish(c);
  return 0;
}

static const ps_chan_rx_ops rx_ops = {.begin = rx_begin, .hdr = rx_after_hdr,
                                      .meta = rx_after_meta, .data = rx_data,
                                      .discard = rx_discard, .data_done = rx_data_done,
                                      .mac_done = rx_mac_done};

/* rx_feed consumes N staged bytes at P (ps_chan_rx_feed); returns how
 * many it used or a PS_E* code (the client is then broken). */
static long rx_feed(ps_chan_client *c, const uint8_t *p, size_t n, ps_errbuf *eb) {
  c->rx_eb = eb;
  long u = ps_chan_rx_feed(&c->rx, p, n, &rx_ops, c);
  c->rx_eb = NULL;
  if (u < 0 && !c->broken) /* the decoder's own failure: no room for a meta */
    return chan_break(c, eb, (int)u, "channel '%s': %s", ps_strerror((int)u));
  return u;
}

/* rx_progress reads what the socket has (without blocking) and parses it;
 * returns 0 (also when nothing was there) or a PS_E* code (broken). */
static int rx_progress(ps_chan_client *c, ps_errbuf *eb) {
  for (;;) {
    ssize_t r;
    if (c->rx.state == PS_CHAN_RX_DATA && c->rx.h.data_len - c->rx.got >= CHAN_STAGE) {
      struct iovec iov[IOV_MAX];
      int k = seg_iov(rx_entry(c), c->rx.got, iov, IOV_MAX);
      r = readv(c->fd, iov, k);
      if (r > 0) c->rx_bytes += (uint64_t)r;
      if (r > 0 && (c->rx.got += (uint64_t)r) == c->rx.h.data_len) rx_data_done(c);
    } else {
      r = read(c->fd, c->stage, CHAN_STAGE);
      if (r > 0) {
        c->rx_bytes += (uint64_t)r;
        long u = rx_feed(c, c->stage, (size_t)r, eb);
        if (u < 0) return (int)u;
      }
    }
    if (r > 0) continue;
    if (r == 0) return chan_break(c, eb, PS_EUNAVAIL, "channel '%s': %s", "closed by the server");
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno != EINTR)
      return chan_break(c, eb, ps_err_from_errno(errno) == PS_EUNAVAIL ? PS_EUNAVAIL : PS_EIO,
                        "channel '%s': read: %s", strerror(errno));
  }
}

/* ---- send ------------------------------------------------------------------- */

/* chan_writev writes all of IOV[0..N) (which it advances), draining
 * replies while the socket is full (invariant 4); 0 or a PS_E* code. */
static int chan_writev(ps_chan_client *c, struct iovec *iov, size_t n, ps_errbuf *eb) {
  size_t i = 0;
  while (i < n) {
    int cnt = n - i > IOV_MAX ? IOV_MAX : (int)(n - i);
    /* sendmsg with MSG_NOSIGNAL: a peer that went away is an error
     * return, never a SIGPIPE that kills a caller who did not ignore it. */
    struct msghdr mh = {.msg_iov = iov + i, .msg_iovlen = (size_t)cnt};
    ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    if (w > 0) c->tx_bytes += (uint64_t)w;
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        return chan_break(c, eb, PS_EUNAVAIL, "channel '%s': write: %s", strerror(errno));
      int ev = chan_wait(c, POLLOUT | POLLIN, eb);
      if (ev < 0) return ev;
      if (ev & (POLLIN | POLLHUP | POLLERR)) {
        int rc = rx_progress(c, eb);
        if (rc < 0) return rc;
      }
      continue;
    }
    size_t left = (size_t)w;
    while (i < n && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (i < n) {
      iov[i].iov_base = (uint8_t *)iov[i].iov_base + left;
      iov[i].iov_len -= left;
    }
  }
  return 0;
}

/* chan_reserve makes room for one more pending request and returns it. */
static chan_pending *chan_reserve(ps_chan_client *c) {
  if (c->qlen == c->qcap) {
    size_t cap = c->qcap ? 2 * c->qcap : 16;
    chan_pending *q = malloc(cap * sizeof *q);
    if (!q) return NULL;
    for (size_t i = 0; i < c->qlen; i++) q[i] = c->q[(c->qhead + i) % c->qcap];
    free(c->q);
    c->q = q;
    c->qcap = cap;
    c->qhead = 0;
  }
  chan_pending *e = &c->q[(c->qhead + c->qlen) % c->qcap];
  memset(e, 0, sizeof *e);
  return e;
}

/* chan_send_frame sends one frame of META and the segments SEG (NSEG,
 * may be 0) and queues its pending entry E (already filled but for id);
 * *REQ_ID receives the id.  0 or a PS_E* code. */
static int chan_send_frame(ps_chan_client *c, Ps__ChanMeta *meta, const struct iovec *seg,
                           size_t nseg, chan_pending *e, uint64_t *req_id, ps_errbuf *eb) {
  size_t mlen = ps__chan_meta__get_packed_size(meta);
  if (mlen > c->tx_meta_cap) {
    uint8_t *m = realloc(c->tx_meta, mlen);
    if (!m) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
    c->tx_meta = m;
    c->tx_meta_cap = mlen;
  }
  ps__chan_meta__pack(meta, c->tx_meta);
  if (nseg + 3 > c->iov_cap) { /* header, meta, segments, MAC */
    struct iovec *v = realloc(c->iov, (nseg + 3) * sizeof *v);
    if (!v) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
    c->iov = v;
    c->iov_cap = nseg + 3;
  }
  uint8_t hdr[PS_CHAN_HDR_LEN];
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                   .meta_len = (uint32_t)mlen, .req_id = ++c->next_id};
  size_t n = 2;
  for (size_t i = 0; i < nseg; i++) {
    if (!seg[i].iov_len) continue;
    c->iov[n++] = seg[i];
    h.data_len += seg[i].iov_len;
  }
  if (c->mac) h.flags = PS_CHAN_FLAG_MAC;
  ps_chan_hdr_encode(hdr, &h);
  c->iov[0] = (struct iovec){hdr, sizeof hdr};
  c->iov[1] = (struct iovec){c->tx_meta, mlen};
  if (c->mac) { /* invariant 6 */
    ps_auth_mac_begin(c->mac, 'C');
    for (size_t i = 0; i < n; i++) ps_auth_mac_update(c->mac, 'C', c->iov[i].iov_base, c->iov[i].iov_len);
    ps_auth_mac_end(c->mac, 'C', c->tx_tag);
    c->iov[n++] = (struct iovec){c->tx_tag, sizeof c->tx_tag};
  }
  e->id = h.req_id;
  c->qlen++; /* queued first: replies may arrive while we still write */
  c->nlive++;
  c->nwait++;
  int rc = chan_writev(c, c->iov, n, eb);
  if (rc < 0) return rc;
  if (req_id) *req_id = h.req_id;
  return 0;
}

/* chan_send_owned is chan_send_frame for an entry E that owns a segment
 * array: freed when the frame failed before E was queued (queued, it is
 * freed with the entry). */
static int chan_send_owned(ps_chan_client *c, Ps__ChanMeta *meta, const struct iovec *seg,
                           size_t nseg, chan_pending *e, uint64_t *req_id, ps_errbuf *eb) {
  size_t queued = c->nlive;
  int rc = chan_send_frame(c, meta, seg, nseg, e, req_id, eb);
  if (rc < 0 && c->nlive == queued) {
    free(e->dst);
    e->dst = NULL;
  }
  return rc;
}

/* ---- public calls ----------------------------------------------------------- */

/* chan_meta_init fills META for request R (may be NULL) of OP. */
static void chan_meta_init(Ps__ChanMeta *meta, int op, const ps_req *r) {
  ps__chan_meta__init(meta);
  meta->op = (Ps__ChanOp)op;
  meta->model = "";
  if (!r) return;
  meta->model = (char *)r->model;
  meta->chunk_ids = (uint32_t *)r->ids;
  meta->n_chunk_ids = r->nids;
  meta->worker = r->worker;
  meta->clock = r->clock;
  meta->version = r->version;
  meta->codec = r->codec;
  meta->summed = (uint32_t *)r->summed;
  meta->n_summed = r->nsummed;
}

/* ps_chan_shm_area: see ps_chan.h (invariant 7). */
uint64_t ps_chan_shm_area(uint64_t bytes, int hold) {
  if (!hold) return (bytes / 2) & ~(uint64_t)7;
  return (bytes / (PS_CHAN_SHM_PUSH_AREAS + 1)) & ~(uint64_t)(PS_SHM_HDR - 1);
}

/* chan_shm_place decides whether a payload of NSEG segments SEG goes
 * through the region (invariant 7): 1 with *OFF its offset there and
 * *COPY whether it must be copied to or from AREA (0: a push area, the
 * free one *SLOT names; 1: the pull area) because it does not lie in the
 * region already; 0: over TCP. */
static int chan_shm_place(const ps_chan_client *c, const ps_req *r, const struct iovec *seg,
                          size_t nseg, int area, uint64_t *off, int *copy, int *slot) {
  int nslots = c->shm_hold ? PS_CHAN_SHM_PUSH_AREAS : 1, k = 0;
  while (!area && k < nslots && c->shm_push_id[k]) k++;
  if (!c->shm.map || r->codec != PS_CODEC_FP32 || (area ? c->shm_pull_id != 0 : k == nslots) ||
      (!area && c->shm_pulls_only))
    return 0;
  if (slot) *slot = k;
  uint64_t total = 0;
  for (size_t i = 0; i < nseg; i++) total += seg[i].iov_len;
  if (total == 0) return 0;
  uintptr_t p = (uintptr_t)seg[0].iov_base, d = (uintptr_t)c->shm.data;
  int contiguous = 1, inside = 0;
  for (size_t i = 0; i < nseg; i++) {
    uintptr_t b = (uintptr_t)seg[i].iov_base;
    if (i && b != (uintptr_t)seg[i - 1].iov_base + seg[i - 1].iov_len) contiguous = 0;
    inside |= b < d + c->shm.bytes && b + seg[i].iov_len > d;
  }
  if (c->shm_hold && inside) return 0; /* a held region is ours alone: such payloads go on TCP */
  if (contiguous && p >= d && ps_shm_holds(&c->shm, p - d, total)) { /* in place */
    *off = p - d;
    *copy = 0;
    return 1;
  }
  uint64_t size = ps_chan_shm_area(c->shm.bytes, c->shm_hold);
  if (total > size || c->shm.moved) return 0; /* moved: the areas are the caller's memory */
  *off = area ? (uint64_t)(c->shm_hold ? PS_CHAN_SHM_PUSH_AREAS : 1) * size : (uint64_t)k * size;
  *copy = 1;
  return 1;
}

/* ps_chan_send_pushv: see ps_chan.h. */
int ps_chan_send_pushv(ps_chan_client *c, const ps_req *r, const struct iovec *src, size_t nseg,
                       uint64_t *req_id, ps_errbuf *eb) {
  int rc = chan_check_usable(c, eb);
  if (rc < 0) return rc;
  Ps__ChanMeta meta;
  chan_meta_init(&meta, PS__CHAN_OP__CHAN_PUSH, r);
  chan_pending *e = chan_reserve(c);
  if (!e) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  e->op = PS__CHAN_OP__CHAN_PUSH;
  uint64_t off = 0, id = 0, total = 0;
  int copy = 0, slot = 0;
  if (!chan_shm_place(c, r, src, nseg, 0, &off, &copy, &slot))
    return chan_send_frame(c, &meta, src, nseg, e, req_id, eb);
  uint8_t *p = c->shm.data + off; /* invariant 7: the data goes through the region */
  for (size_t i = 0; i < nseg; i++) {
    if (copy) memcpy(p + total, src[i].iov_base, src[i].iov_len);
    total += src[i].iov_len;
  }
  meta.shm = 1;
  meta.shm_off = off;
  meta.shm_len = total;
  if ((rc = chan_send_frame(c, &meta, NULL, 0, e, &id, eb)) < 0) return rc;
  c->shm_push_id[slot] = id;
  c->shm_tx += total;
  c->tx_bytes += total;
  if (req_id) *req_id = id;
  return 0;
}

/* ps_chan_send_pullv: see ps_chan.h. */
int ps_chan_send_pullv(ps_chan_client *c, const ps_req *r, const struct iovec *dst, size_t nseg,
                       uint64_t *req_id, ps_errbuf *eb) {
  int rc = chan_check_usable(c, eb);
  if (rc < 0) return rc;
  Ps__ChanMeta meta;
  chan_meta_init(&meta, PS__CHAN_OP__CHAN_PULL, r);
  meta.version = 0;
  chan_pending *e = chan_reserve(c);
  if (!e) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  e->op = PS__CHAN_OP__CHAN_PULL;
  e->nseg = nseg;
  e->dst = malloc(nseg * sizeof *e->dst + 1);
  if (!e->dst) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  for (size_t i = 0; i < nseg; i++) {
    e->dst[i] = dst[i];
    e->want_bytes += dst[i].iov_len;
  }
  if (chan_shm_place(c, r, dst, nseg, 1, &e->shm_off, &e->shm_copy, NULL)) { /* invariant 7 */
    e->shm = 1;
    meta.shm = 1;
    meta.shm_off = e->shm_off;
    meta.shm_len = e->want_bytes;
  }
  uint64_t id = 0;
  if ((rc = chan_send_owned(c, &meta, NULL, 0, e, &id, eb)) < 0) return rc;
  if (meta.shm) c->shm_pull_id = id;
  if (req_id) *req_id = id;
  return 0;
}

/* chan_await reads replies until the one of request ID is complete;
 * returns its entry, or NULL with the failure in *RC (EB). */
static chan_pending *chan_await(ps_chan_client *c, uint64_t id, int *rc, ps_errbuf *eb) {
  chan_pending *e;
  while ((e = chan_find(c, id)) && !e->done) {
    if ((*rc = chan_check_usable(c, eb)) < 0) return NULL;
    int ev = chan_wait(c, POLLIN, eb);
    if (ev < 0) {
      *rc = ev;
      return NULL;
    }
    /* A reply that arrived whole before a close still counts. */
    if ((*rc = rx_progress(c, eb)) < 0 && !((e = chan_find(c, id)) && e->done)) return NULL;
  }
  return e;
}

/* chan_take hands the complete reply of E to the caller (ps_chan_recv's
 * results) and drops E: a hole until it reaches the head (invariant 2). */
static int chan_take(ps_chan_client *c, chan_pending *e, uint64_t *req_id, uint64_t *version,
                     ps_errbuf *eb) {
  int status = e->status;
  if (req_id) *req_id = e->id;
  if (version) *version = e->version;
  c->last_parked_ms = e->parked_ms;
  free(c->reply);
  c->reply = e->reply;
  c->reply_len = e->reply ? e->want_bytes : 0;
  if (status < 0) ps_errf(eb, status, "%s", e->msg ? e->msg : ps_strerror(status));
  free(e->msg);
  free(e->dst);
  e->msg = NULL;
  e->dst = NULL;
  e->reply = NULL;
  e->collected = 1;
  c->nlive--;
  while (c->qlen && c->q[c->qhead].collected) {
    c->qhead = (c->qhead + 1) % c->qcap;
    c->qlen--;
  }
  return status;
}

/* ps_chan_recv: see ps_chan.h. */
int ps_chan_recv(ps_chan_client *c, uint64_t *req_id, uint64_t *version, ps_errbuf *eb) {
  if (c->nlive == 0) return ps_errf(eb, PS_EINVAL, "channel '%s': no request in flight", c->addr);
  int rc = 0;
  chan_pending *e = chan_await(c, c->q[c->qhead].id, &rc, eb); /* the head is never a hole */
  return e ? chan_take(c, e, req_id, version, eb) : rc;
}

/* ps_chan_recv_id: see ps_chan.h. */
int ps_chan_recv_id(ps_chan_client *c, uint64_t id, uint64_t *version, ps_errbuf *eb) {
  if (!chan_find(c, id))
    return ps_errf(eb, PS_EINVAL, "channel '%s': request %llu is not in flight", c->addr,
                   (unsigned long long)id);
  int rc = 0;
  chan_pending *e = chan_await(c, id, &rc, eb);
  return e ? chan_take(c, e, NULL, version, eb) : rc;
}

/* ps_chan_wait_id: see ps_chan.h. */
int ps_chan_wait_id(ps_chan_client *c, uint64_t id, int wait_ms, ps_errbuf *eb) {
  chan_pending *e = chan_find(c, id);
  if (!e)
    return ps_errf(eb, PS_EINVAL, "channel '%s': request %llu is not in flight", c->addr,
                   (unsigned long long)id);
  if (e->done) return 1;
  int rc = chan_check_usable(c, eb);
  if (rc < 0) return rc;
  struct pollfd p = {.fd = c->fd, .events = POLLIN};
  int r = poll(&p, 1, wait_ms > 0 ? wait_ms : 0);
  if (r < 0 && errno != EINTR)
    return chan_break(c, eb, PS_EIO, "channel '%s': poll: %s", strerror(errno));
  if (r <= 0) return 0; /* nothing yet (or a signal): the caller looks again */
  rc = rx_progress(c, eb);
  if ((e = chan_find(c, id)) && e->done) return 1; /* a reply whole before a close counts */
  return rc < 0 ? rc : 0;
}

/* ps_chan_done: see ps_chan.h. */
int ps_chan_done(const ps_chan_client *c, uint64_t id) {
  const chan_pending *e = chan_find((ps_chan_client *)c, id);
  return e && e->done;
}

/* ps_chan_unordered: see ps_chan.h. */
int ps_chan_unordered(const ps_chan_client *c) { return c->unordered; }

/* ps_chan_last_parked_ms: see ps_chan.h. */
uint32_t ps_chan_last_parked_ms(const ps_chan_client *c) { return c->last_parked_ms; }

size_t ps_chan_inflight(const ps_chan_client *c) { return c->nlive; }

/* ps_chan_bytes: see ps_chan.h. */
void ps_chan_bytes(const ps_chan_client *c, uint64_t *sent, uint64_t *received) {
  *sent = c ? c->tx_bytes : 0;
  *received = c ? c->rx_bytes : 0;
}

/* chan_idle returns PS_EINVAL unless C has nothing in flight (the blocking
 * calls would otherwise take another request's reply). */
static int chan_idle(ps_chan_client *c, ps_errbuf *eb) {
  if (c->nlive)
    return ps_errf(eb, PS_EINVAL, "channel '%s': %zu requests in flight; receive them first",
                   c->addr, c->nlive);
  return 0;
}

/* ps_chan_pushv: see ps_chan.h. */
int ps_chan_pushv(ps_chan_client *c, const ps_req *r, const struct iovec *src, size_t nseg,
                  uint64_t *version, ps_errbuf *eb) {
  int rc = chan_idle(c, eb);
  if (rc == 0) rc = ps_chan_send_pushv(c, r, src, nseg, NULL, eb);
  return rc < 0 ? rc : ps_chan_recv(c, NULL, version, eb);
}

/* ps_chan_pullv: see ps_chan.h. */
int ps_chan_pullv(ps_chan_client *c, const ps_req *r, const struct iovec *dst, size_t nseg,
                  uint64_t *version, ps_errbuf *eb) {
  int rc = chan_idle(c, eb);
  if (rc == 0) rc = ps_chan_send_pullv(c, r, dst, nseg, NULL, eb);
  return rc < 0 ? rc : ps_chan_recv(c, NULL, version, eb);
}

/* ps_chan_beat: see ps_chan.h. */
int ps_chan_beat(ps_chan_client *c, const void *req, size_t len, void **reply, size_t *reply_len,
                 ps_errbuf *eb) {
  int rc = chan_idle(c, eb);
  if (rc == 0) rc = chan_check_usable(c, eb);
  if (rc < 0) return rc;
  Ps__ChanMeta meta;
  chan_meta_init(&meta, PS__CHAN_OP__CHAN_BEAT, NULL);
  chan_pending *e = chan_reserve(c);
  if (!e) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  e->op = PS__CHAN_OP__CHAN_BEAT;
  if (!(e->dst = malloc(sizeof *e->dst)))
    return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  struct iovec seg = {(void *)req, len};
  if ((rc = chan_send_owned(c, &meta, &seg, 1, e, NULL, eb)) < 0) return rc;
  if ((rc = ps_chan_recv(c, NULL, NULL, eb)) < 0) return rc;
  *reply = c->reply;
  *reply_len = c->reply_len;
  c->reply = NULL;
  c->reply_len = 0;
  return 0;
}

/* ---- sparse rows ---------------------------------------------------------------- */

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "sparse keys travel as little-endian uint64");

/* chan_sparse_meta fills META for sparse request Q of OP. */
static void chan_sparse_meta(Ps__ChanMeta *meta, int op, const ps_chan_sparse *q) {
  chan_meta_init(meta, op, NULL);
  meta->model = (char *)q->model;
  meta->table = q->table;
  meta->n_keys = q->nkeys;
  meta->worker = q->worker;
  meta->clock = q->clock;
  meta->codec = q->codec;
}

/* ps_chan_send_sparse_pull: see ps_chan.h. */
int ps_chan_send_sparse_pull(ps_chan_client *c, const ps_chan_sparse *q, void *rows,
                             size_t nbytes, uint64_t *req_id, ps_errbuf *eb) {
  int rc = chan_check_usable(c, eb);
  if (rc < 0) return rc;
  Ps__ChanMeta meta;
  chan_sparse_meta(&meta, PS__CHAN_OP__CHAN_SPARSE_PULL, q);
  chan_pending *e = chan_reserve(c);
  if (!e) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  e->op = PS__CHAN_OP__CHAN_SPARSE_PULL;
  if (!(e->dst = malloc(sizeof *e->dst)))
    return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  e->dst[0] = (struct iovec){rows, nbytes};
  e->nseg = 1;
  e->want_bytes = nbytes;
  struct iovec seg = {(void *)q->keys, (size_t)q->nkeys * sizeof *q->keys};
  return chan_send_owned(c, &meta, &seg, 1, e, req_id, eb);
}

/* ps_chan_send_sparse_push: see ps_chan.h. */
int ps_chan_send_sparse_push(ps_chan_client *c, const ps_chan_sparse *q, const void *rows,
                             size_t nbytes, uint64_t *req_id, ps_errbuf *eb) {
  int rc = chan_check_usable(c, eb);
  if (rc < 0) return rc;
  Ps__ChanMeta meta;
  chan_sparse_meta(&meta, PS__CHAN_OP__CHAN_SPARSE_PUSH, q);
  chan_pending *e = chan_reserve(c);
  if (!e) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  e->op = PS__CHAN_OP__CHAN_SPARSE_PUSH;
  struct iovec seg[2] = {{(void *)q->keys, (size_t)q->nkeys * sizeof *q->keys},
                         {(void *)rows, nbytes}};
  return chan_send_frame(c, &meta, seg, 2, e, req_id, eb);
}

/* ps_chan_shm: see ps_chan.h. */
int ps_chan_shm(const ps_chan_client *c, void **data, uint64_t *bytes) {
  if (!c || !c->shm.map) return 0;
  if (data) *data = c->shm.data;
  if (bytes) *bytes = c->shm.bytes;
  return 1;
}

/* ps_chan_shm_move: see ps_chan.h. */
int ps_chan_shm_move(ps_chan_client *c, void *at, ps_errbuf *eb) {
  if (!c->shm.map) return ps_errf(eb, PS_EINVAL, "channel '%s': no shared memory", c->addr);
  if (c->shm_hold) /* invariant 7: its push areas are the shard's until answered */
    return ps_errf(eb, PS_EINVAL, "channel '%s': a held region cannot move", c->addr);
  return ps_shm_move(&c->shm, at, eb);
}

/* ps_chan_shm_bytes: see ps_chan.h. */
void ps_chan_shm_bytes(const ps_chan_client *c, uint64_t *sent, uint64_t *received) {
  *sent = c ? c->shm_tx : 0;
  *received = c ? c->shm_rx : 0;
}

/* ps_chan_features: see ps_chan.h. */
uint32_t ps_chan_features(const ps_chan_client *c) { return c ? c->features : 0; }

/* ps_chan_alive: see ps_chan.h. */
int ps_chan_alive(ps_chan_client *c) {
  if (!c || c->broken) return 0;
  struct pollfd p = {.fd = c->fd, .events = POLLIN};
  if (c->qlen == 0 && poll(&p, 1, 0) > 0) {
    ps_errbuf eb;
    rx_progress(c, &eb); /* a close (or stray bytes) breaks C */
  }
  return !c->broken;
}

/* chan_split describes NBYTES at P as segments of at most CHAN_SEG_MAX;
 * returns the count written to SEG (room for 64), or 0 when the payload
 * is too large for that. */
static size_t chan_split(const void *p, uint64_t nbytes, struct iovec *seg) {
  size_t n = 0;
  while (nbytes && n < 64) {
    size_t l = nbytes > CHAN_SEG_MAX ? CHAN_SEG_MAX : (size_t)nbytes;
    seg[n++] = (struct iovec){(void *)p, l};
    p = (const uint8_t *)p + l;
    nbytes -= l;
  }
  return nbytes ? 0 : n;
}

/* ps_chan_push: the contiguous form of ps_chan_pushv (R->grads, R->nbytes). */
int ps_chan_push(ps_chan_client *c, const ps_req *r, uint64_t *version, ps_errbuf *eb) {
  struct iovec seg[64];
  size_t n = chan_split(r->grads, r->nbytes, seg);
  if (r->nbytes && !n)
    return ps_errf(eb, PS_ETOOBIG, "push of %llu bytes", (unsigned long long)r->nbytes);
  return ps_chan_pushv(c, r, seg, n, version, eb);
}

/* ps_chan_pull: the contiguous form of ps_chan_pullv (R->out, R->nbytes). */
int ps_chan_pull(ps_chan_client *c, const ps_req *r, uint64_t *version, ps_errbuf *eb) {
  struct iovec seg[64];
  size_t n = chan_split(r->out, r->nbytes, seg);
  if (r->nbytes && !n)
    return ps_errf(eb, PS_ETOOBIG, "pull of %llu bytes", (unsigned long long)r->nbytes);
  return ps_chan_pullv(c, r, seg, n, version, eb);
}

/* ---- connection ------------------------------------------------------------- */

/* chan_dial opens a non-blocking TCP connection to C->addr within the
 * timeout (ps_addr_dial); sets C->fd.  0 or a PS_E* code. */
static int chan_dial(ps_chan_client *c, ps_errbuf *eb) {
  int rc = ps_addr_dial("channel", c->addr, c->timeout_ms, &c->fd, eb);
  if (rc < 0) return rc;
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return 0;
}

/* chan_hello_frame sends one HELLO frame META and waits for its reply,
 * whose nonce and proof (when given) go to NONCE / AUTH (NULL: ignored);
 * *NONCE_LEN / *AUTH_LEN receive their lengths, *MAC its payload_mac,
 * *VERSION its auth_version. */
static int chan_hello_frame(ps_chan_client *c, Ps__ChanMeta *meta, uint8_t *nonce,
                            size_t *nonce_len, uint8_t *auth, size_t *auth_len, int *mac,
                            uint32_t *version, ps_errbuf *eb) {
  chan_pending *e = chan_reserve(c);
  if (!e) return ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  e->op = PS__CHAN_OP__CHAN_HELLO;
  uint64_t id = 0;
  int rc = chan_send_frame(c, meta, NULL, 0, e, &id, eb);
  if (rc < 0) return rc;
  chan_pending *head = chan_await(c, id, &rc, eb); /* the only request in flight */
  if (!head) return rc;
  if (nonce) memcpy(nonce, head->nonce, head->nonce_len);
  if (auth) memcpy(auth, head->auth, head->auth_len);
  if (nonce_len) *nonce_len = head->nonce_len;
  if (auth_len) *auth_len = head->auth_len;
  if (mac) *mac = head->payload_mac;
  if (version) *version = head->auth_version;
  return ps_chan_recv(c, NULL, NULL, eb);
}

/* ps_chan_hello_granted: see ps_chan.h. */
void ps_chan_hello_granted(const Ps__ChanMeta *m, ps_auth_hello *h) {
  h->features = m->features;
  h->acks = m->unordered_acks;
  h->granted_hold = m->shm_hold;
  h->pulls_only = m->shm_pulls_only;
  h->shm_pid = m->shm_pid;
  h->shm_fd = m->shm_fd;
  h->granted = m->shm_bytes;
  h->token = m->shm_token.data;
  h->token_len = m->shm_token.len;
}

/* chan_hello: HELLO with CLUSTER; with KEY, the challenge-response of
 * ps_auth.h (the shard must prove KEY first, then this client does; the
 * proofs and the shard's accept MAC cover every negotiated field). */
static int chan_hello(ps_chan_client *c, const char *cluster, const ps_auth_key *key,
                      int want_mac, ps_errbuf *eb) {
  Ps__ChanMeta meta;
  uint8_t nc[PS_AUTH_NONCE], ns[PS_AUTH_NONCE], proof[PS_AUTH_MAC];
  size_t ns_len = 0, proof_len = 0;
  ps_auth_hello h = {.want_mac = want_mac ? 1 : 0, .unordered_acks = c->want_unordered ? 1 : 0,
                     .shm_bytes = c->shm_want, .shm_hold = c->shm_want && c->want_hold ? 1 : 0,
                     .worker1 = c->worker1};
  c->hello = h; /* its replies add what they grant */
  chan_meta_init(&meta, PS__CHAN_OP__CHAN_HELLO, NULL);
  meta.proto_version = PS_CHAN_VERSION;
  meta.cluster = (char *)cluster;
  meta.unordered_acks = h.unordered_acks;
  meta.shm_bytes = h.shm_bytes;
  meta.shm_hold = h.shm_hold;
  meta.hello_worker = h.worker1;
  if (key) {
    int rc = ps_auth_nonce(nc, eb);
    if (rc < 0) return rc;
    meta.key_id = (char *)key->id;
    meta.nonce.data = nc;
    meta.nonce.len = sizeof nc;
    meta.payload_mac = h.want_mac;
    meta.auth_version = PS_AUTH_HELLO_VERSION;
  }
  int mac = 0;
  uint32_t version = 0;
  int rc = chan_hello_frame(c, &meta, ns, &ns_len, proof, &proof_len, &mac, &version, eb);
  if (rc < 0 || !key) return rc;
  if (ns_len != PS_AUTH_NONCE)
    return ps_errf(eb, PS_EPERM, "channel '%s': the shard does not authenticate the channel "
                   "(no security.secret_file there?)", c->addr);
  if (version != PS_AUTH_HELLO_VERSION)
    return ps_errf(eb, PS_EPERM, "channel '%s': the shard's hello proofs are of version %u, "
                   "this client's of %d (" PS_AUTH_OLD_PEER ")",
                   c->addr, version, PS_AUTH_HELLO_VERSION);
  h.mac = mac ? 1 : 0;
  if (!ps_auth_check(key, PS_AUTH_SERVER, cluster, nc, ns, &h, proof, proof_len))
    return ps_errf(eb, PS_EPERM, "channel '%s': the shard's proof of key '%s' is wrong "
                   "(another secret file, or a field of the hello changed on the way?)",
                   c->addr, key->id);
  if (want_mac && !mac)
    return ps_errf(eb, PS_EPERM, "channel '%s': the shard does not MAC frames "
                   "(security.payload_mac is false there)", c->addr);
  ps_auth_proof(key, PS_AUTH_CLIENT, cluster, nc, ns, &h, proof);
  chan_meta_init(&meta, PS__CHAN_OP__CHAN_HELLO, NULL);
  meta.auth.data = proof;
  meta.auth.len = sizeof proof;
  uint8_t accept[PS_AUTH_MAC];
  size_t accept_len = 0;
  rc = chan_hello_frame(c, &meta, NULL, NULL, accept, &accept_len, NULL, NULL, eb);
  if (rc < 0) return rc;
  c->hello.mac = h.mac;
  if (!ps_auth_check(key, PS_AUTH_ACCEPT, cluster, nc, ns, &c->hello, accept, accept_len))
    return ps_errf(eb, PS_EPERM, "channel '%s': the shard's last hello does not carry its MAC "
                   "of what it granted (a field of the hello changed on the way)", c->addr);
  if (mac && ps_auth_mac_new(&c->mac, key, cluster, nc, ns) < 0)
    rc = ps_errf(eb, PS_ENOMEM, "channel '%s': out of memory", c->addr);
  return rc;
}

/* chan_shm_map maps the region the shard offered, if any (invariant 7);
 * a region that cannot be used leaves the data on TCP (said at debug
 * level). */
static void chan_shm_map(ps_chan_client *c) {
  ps_errbuf eb;
  if (!c->shm_offer || !c->shm_want || c->mac) return;
  if (c->shm_offer > c->shm_want ||
      ps_shm_open(&c->shm, c->shm_pid, c->shm_fd, c->shm_offer, c->shm_token, c->shm_token_len,
                  &eb) < 0)
    ps_debug("channel '%s': the shard's shared memory is not usable here (%s); data goes over "
             "TCP", c->addr, c->shm_offer > c->shm_want ? "larger than asked for" : eb.msg);
}

/* ps_chan_connect_auth: see ps_chan.h. */
int ps_chan_connect_auth(ps_chan_client **out, const char *addr, const char *cluster,
                         const ps_auth_key *key, int flags, int timeout_ms, ps_errbuf *eb) {
  return ps_chan_connect_shm(out, addr, cluster, key, flags, 0, timeout_ms, eb);
}

/* ps_chan_connect_shm: see ps_chan.h. */
int ps_chan_connect_shm(ps_chan_client **out, const char *addr, const char *cluster,
                        const ps_auth_key *key, int flags, uint64_t shm_bytes, int timeout_ms,
                        ps_errbuf *eb) {
  return ps_chan_connect_worker(out, addr, cluster, key, flags, shm_bytes, PS_CHAN_NO_WORKER,
                                timeout_ms, eb);
}

/* ps_chan_connect_worker: see ps_chan.h. */
int ps_chan_connect_worker(ps_chan_client **out, const char *addr, const char *cluster,
                           const ps_auth_key *key, int flags, uint64_t shm_bytes, uint32_t worker,
                           int timeout_ms, ps_errbuf *eb) {
  *out = NULL;
  ps_chan_client *c = calloc(1, sizeof *c);
  if (!c) return ps_errf(eb, PS_ENOMEM, "out of memory");
  c->fd = -1;
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
  snprintf(c->addr, sizeof c->addr, "%s", addr);
  c->want_unordered = (flags & PS_CHAN_UNORDERED_ACKS) != 0;
  c->shm_want = flags & PS_CHAN_AUTH_MAC ? 0 : shm_bytes;
  c->want_hold = (flags & PS_CHAN_SHM_HOLD) != 0;
  c->worker1 = worker == PS_CHAN_NO_WORKER ? 0 : worker + 1;
  c->shm.fd = -1;
  int rc = chan_dial(c, eb);
  if (rc == 0) rc = chan_hello(c, cluster, key, flags & PS_CHAN_AUTH_MAC, eb);
  if (rc == 0) c->helloed = 1;
  if (rc == 0) chan_shm_map(c);
  if (rc < 0) {
    ps_chan_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

/* ps_chan_connect_client: see ps_chan.h. */
int ps_chan_connect_client(ps_chan_client **out, const char *addr, const char *cluster,
                           ps_auth_client *ac, int flags, uint64_t shm_bytes, uint32_t worker,
                           int timeout_ms, ps_errbuf *eb) {
  ps_auth_key key, old;
  int keyed = ps_auth_client_now(ac, &key);
  int rc = ps_chan_connect_worker(out, addr, cluster, keyed ? &key : NULL, flags, shm_bytes,
                                  worker, timeout_ms, eb);
  if (rc == PS_EPERM && keyed && ps_auth_client_fallback(ac, key.id, &old)) {
    ps_errbuf why = *eb;
    rc = ps_chan_connect_worker(out, addr, cluster, &old, flags, shm_bytes, worker, timeout_ms,
                                eb);
    if (rc == 0)
      ps_warn("channel '%s': refused key '%s' (%s); proving key '%s' as before, until the "
              "shards know the new one (a SIGHUP after the secret file's edit)", addr, key.id,
              why.msg, old.id);
    ps_auth_key_wipe(&old);
  } else if (rc == 0 && keyed) {
    ps_auth_client_proved(ac, &key);
  }
  ps_auth_key_wipe(&key);
  return rc;
}

/* ps_chan_connect: see ps_chan.h. */
int ps_chan_connect(ps_chan_client **out, const char *addr, const char *cluster,
                    int timeout_ms, ps_errbuf *eb) {
  return ps_chan_connect_auth(out, addr, cluster, NULL, 0, timeout_ms, eb);
}

void ps_chan_set_timeout(ps_chan_client *c, int timeout_ms) {
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
}

/* ps_chan_set_bufsize: see ps_chan.h. */
int ps_chan_set_bufsize(ps_chan_client *c, int sndbuf, int rcvbuf, ps_errbuf *eb) {
  if (sndbuf > 0 && setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) < 0)
    return ps_errf(eb, PS_EIO, "channel '%s': SO_SNDBUF: %s", c->addr, strerror(errno));
  if (rcvbuf > 0 && setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) < 0)
    return ps_errf(eb, PS_EIO, "channel '%s': SO_RCVBUF: %s", c->addr, strerror(errno));
  return 0;
}

/* ps_chan_set_dead_ms: see ps_chan.h. */
void ps_chan_set_dead_ms(ps_chan_client *c, int dead_ms) {
  ps_chan_fd_set_dead_ms(c->fd, c->addr, dead_ms);
}

/* ps_chan_fd_set_dead_ms: see ps_chan.h. */
void ps_chan_fd_set_dead_ms(int fd, const char *addr, int dead_ms) {
  ps_errbuf why;
  if (ps_addr_dead_after(fd, dead_ms, &why) < 0)
    ps_debug("channel '%s': %s; a cut path is waited out as TCP retransmits", addr, why.msg);
}

/* ps_chan_close: see ps_chan.h. */
void ps_chan_close(ps_chan_client *c) {
  if (!c) return;
  for (size_t i = 0; i < c->qlen; i++) { /* a hole's pointers are NULL */
    chan_pending *e = &c->q[(c->qhead + i) % c->qcap];
    free(e->msg);
    free(e->dst);
    free(e->reply);
  }
  free(c->reply);
  ps_shm_release(&c->shm);
  if (c->fd >= 0) close(c->fd);
  ps_auth_mac_free(c->mac);
  free(c->q);
  ps_chan_rx_release(&c->rx);
  free(c->tx_meta);
  free(c->iov);
  free(c);
}
