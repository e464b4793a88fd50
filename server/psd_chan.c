/* psd_chan: the tensor-channel server of a shard (libuv TCP, loop thread).
 *
 * Per connection, a receive state machine HDR -> META -> DATA | DISCARD
 * (-> MAC), ps_chan_rx: the decoder the client shares (ps_chan.h); this
 * file gives its callbacks and the direct reads of invariant 1:
 *  1. Headers, metas and small data tails are read through a staging
 *     buffer and parsed from there; once a push's data is due and nothing
 *     is staged, alloc_cb hands libuv the remaining span of the
 *     connection's data buffer, so gradient bytes land in place (one copy:
 *     the kernel's).  The buffer is page-aligned: under durability `sync`
 *     the redo log may take it with a push's gradients, to write them from
 *     there (psd_wal_append_own, psd_wal invariant 8), and give the
 *     connection a block it is done with (or none) in its place.
 *  2. A push is validated (psd_shard_payload and its byte count)
 *     when its meta is complete, before any data is read; a refused push's
 *     data is read into a scratch buffer and dropped, then answered with a
 *     CHAN_ERROR frame.  A data_len above cfg->max_request_bytes closes the
 *     connection (ps_chan_hdr_decode) once a CHAN_ERROR saying so is
 *     written (invariant 6).
 *  2a. A beat (CHAN_BEAT: a packed HeartbeatRequest of at most
 *     CHAN_BEAT_MAX bytes) is read like a push's data and answered with
 *     psd_shard_heartbeat's reply, packed, as gRPC's Heartbeat is.
 *  2b. Sparse rows (CHAN_SPARSE_PULL / CHAN_SPARSE_PUSH, offered in the
 *     HELLO reply's features): the data (keys, then a push's rows) is read
 *     like a push's, once its length agrees with the meta's key count (else
 *     read into scratch and refused); keys and rows are then handed in
 *     place to psd_shard_sparse_pull / _push, the gRPC calls' entry points.
 *     A pull's reply writes the rows buffer the entry point made; a push
 *     is answered as a dense one (invariant 7a under `sync`).
 *  3. A pull is answered from one buffer filled by psd_shard_pull and
 *     written with header + meta in one uv_write.  The buffer of a written
 *     reply stays with its connection as the spare and serves the next
 *     pull that fits, so a worker's steady pulls allocate nothing (a fresh
 *     allocation of that size is a page fault per 4 KiB on every pull).
 *  3a. Except a pull whose chunks all travel as fp32, on a connection
 *     whose earlier replies libuv has all handed to the kernel, without
 *     the payload MAC: its reply goes out with one uv_try_write straight
 *     from the chunks' own memory (psd_shard_pull_view, no copy), and only
 *     the part the socket did not take is copied into a reply buffer and
 *     queued (conn_pull_direct).  Either way every byte is in the kernel
 *     or in our buffer before the loop turns, so no later push can change
 *     a reply half sent.
 *  4. Replies are written in request order (requests are handled in the
 *     order read, synchronously).  Backpressure: while more than
 *     CHAN_MAX_QUEUED reply bytes wait in libuv, the connection stops
 *     reading; unparsed staged bytes wait with it.
 *  4a. The same shard-wide: ch->queued counts every connection's reply
 *     bytes waiting in libuv (c->queued, summed as they are queued and
 *     written or cancelled).  While it is over limits.max_queued_bytes, a
 *     connection that has replies of its own queued stops reading after
 *     the request at hand (one reply more each at most); one with none
 *     reads on, and one paused resumes once its own replies are written,
 *     so a client that reads its replies is never held by those that do
 *     not.  The sweep then closes slow readers while over the limit: of
 *     the connections with replies queued that took none of them
 *     (c->wrote_ms: a write done, or libuv's write queue shrinking) for
 *     chan_slow_ms, the one holding the most first, counted in
 *     chan_slow_closed and logged (rate-limited) with its peer.
 *  5. sh->inflight counts a request from its complete meta to the write
 *     callback of its reply.
 *  6. Protocol violations close only that connection (after writing an
 *     error frame where the peer may learn something from it).  After the
 *     hello each is counted in chan_bad_frames and logged (rate-limited,
 *     with the peer and the reason: conn_bad_frame); a header announcing
 *     data over limits.max_request_bytes is answered with a CHAN_ERROR
 *     (PS_ETOOBIG, the limit named) and the connection closes once it is
 *     written.  Before the hello they count in chan_auth_refused (9).  A
 *     push refused by the shard's checks (answered, the connection kept)
 *     is logged rate-limited too (conn_push_refused).
 *  7. A pull, dense or sparse, that must wait for slower workers
 *     (psd_shard_pull_admit, psd_shard_sparse_pull_admit) is parked
 *     (a sparse pull's keys stay in the data buffer meanwhile): the
 *     connection stops reading, so the requests behind it wait and
 *     replies stay in request order.  Its release answers it and
 *     resumes reading from the channel's wake-up handle on the next loop
 *     turn (never inside the release, which may run within another
 *     connection's parse).  A connection closed while its pull is parked
 *     cancels the park.
 *  7a. Under durability `sync` an applied push is answered only once its
 *     redo log record is synced (psd_shard_push_durable): until then the
 *     connection waits like a parked pull (stops reading; the reply keeps
 *     request order) and the push stays in flight; a close cancels the
 *     wait.
 *  7b. Unordered acks (a client whose hello asked for them; ps_chan.h):
 *     the push waits in the connection's list of acks (conn_ack, its own
 *     waiter and request id) instead, and reading goes on: requests
 *     behind it are served (a pull sees the applied, not yet synced push,
 *     as a pull from another connection always could) and answered
 *     before it; its acknowledgement still leaves only once its record is
 *     synced (the log answers waiters in record order, so a connection's
 *     pushes are acknowledged in order).  At most CHAN_MAX_ACKS wait per
 *     connection; a push beyond that (or without memory for its entry)
 *     waits as in 7a.  A close cancels every wait.
 *  7c. On an aggregator, a push or pull whose model's layout is not there
 *     yet (or predates the connection) waits for it (psd_shard_forward_spec:
 *     a GetModel off the loop) with the connection paused, its meta kept
 *     and its data not yet read; then it is acted on as if just read (a
 *     fetch that failed answers it with the roots' error, a push's data
 *     discarded).  A close cancels the wait.
 *  8. Limits (psd_chan.h): the pre-HELLO meta cap is checked on the
 *     header, before the meta buffer grows.  A new connection is accepted
 *     and closed without being read when fewer than psd_fd_reserve
 *     descriptors would be left free (psd_fd.h: gRPC and RocksDB cannot
 *     wait for one), at once; or when max_connections are open, after an
 *     error frame that says so (also at once when descriptors are short).
 *     A sweep timer (CHAN_SWEEP_MS, at most a quarter of the idle timeout)
 *     closes connections that moved no byte, in or out, for
 *     idle_timeout_ms and have no pull parked; a long reply still draining
 *     (libuv's write queue shrinking) is activity.
 *  8a. Strangers cannot hold the limit: a connection must finish its
 *     hello (with security.secret_file: prove its key) within
 *     CHAN_HELLO_MS of its accept (idle_timeout_ms when shorter), however
 *     it trickles bytes; the sweep (at most a quarter of that apart)
 *     closes it otherwise, counted in chan_idle_closed and logged at most
 *     every CHAN_REFUSE_LOG_MS.  And at max_connections a new connection
 *     is not refused while any counted one is still in its hello: the
 *     oldest of those is closed (counted in chan_refused) and the new one
 *     admitted, so a worker's hello competes only with the strangers that
 *     arrive during it; only when every connection is past its hello is
 *     the new one refused (the error frame of invariant 8, request id 0:
 *     the client shows its message).  Without a secret file the hello
 *     proves nothing, so anyone who says it holds a slot until idle.
 *  9. With security.secret_file the hello is a challenge-response
 *     (ps_auth.h): HELLO(key id, Nc) -> HELLO(Ns, shard's proof) ->
 *     HELLO(client's proof) -> HELLO.  Until the proof checks out the
 *     connection stays pre-hello (invariant 8's meta cap, nothing else
 *     served); a missing, unknown or wrong proof gets one error frame
 *     (status PS_EPERM: clients do not retry it) and a close, and counts
 *     in chan_auth_refused, as does a client that closes (EOF) after
 *     the shard's proof without sending its own (it found that proof
 *     wrong, another secret under the key id, or wants a MAC this shard
 *     does not give).  A replayed hello meets a
 *     fresh Ns, so its old proof is wrong.  Both proofs cover every
 *     field the client's first HELLO asks with (payload_mac,
 *     unordered_acks, shm_bytes, shm_hold, hello_worker when set) and the challenge's
 *     payload_mac; the last HELLO carries in `auth` the accept MAC over
 *     those and what it grants (features, unordered_acks, the region),
 *     which the client checks (ps_auth_hello): a field changed on the way
 *     fails the hello.  A hello without auth_version PS_AUTH_HELLO_VERSION
 *     (an older psd's proofs) is refused and counted like a wrong proof.
 *  9a. A first HELLO naming a worker (hello_worker: a worker's own
 *     connection; ps_chan_connect_worker) counts, once the hello succeeds,
 *     as that worker speaking (psd_shard_worker_hello: a live worker's
 *     lease starts again, on a shard that is no aggregator), so that an
 *     aggregator's conditional leave for a worker that failed over to
 *     this shard and connected, but asked nothing yet, finds it speaking
 *     (psd_agg.h invariant 6).  With keys only a worker's key names one;
 *     a hello without the field (psctl, an aggregator, an older client)
 *     names nobody, as before.
 * 10. With security.payload_mac the shard says so in its challenge (bound
 *     into both proofs) and every frame after the hello, both ways, ends in
 *     a MAC (ps_auth.h).  A request is acted on only once its MAC checked
 *     out: a push's data is read (and MACed) in full first, a pull waits in
 *     c->req for its MAC (PS_CHAN_RX_MAC).  A wrong or missing MAC closes the
 *     connection and counts in chan_auth_refused (and errors); a reply's
 *     MAC is made when the reply is queued (replies are queued in wire
 *     order).
 * 11. Shared memory (ps_shm.h; ps_chan.h "shared memory"): a client whose
 *     first HELLO asks for shm_bytes is offered a region in the last HELLO
 *     reply only when workers.shared_memory is on, payload_mac is off (the
 *     MAC covers wire bytes), the shard is no aggregator (a forwarded
 *     push's data must outlive the request), the size is at most one
 *     limits.max_request_bytes (plus a page) per area (two areas, or a hold
 *     client's PS_CHAN_SHM_PUSH_AREAS + 1), and the connection's peer
 *     address is the shard's own local address (same host); anything else,
 *     or a region that cannot be made, is no offer and the data stays on
 *     TCP; a region that cannot be made (out of memory or descriptors) is
 *     logged, with the peer and why, at most every CHAN_REFUSE_LOG_MS.  The offer comes after the hello's authentication (invariant 9).
 *     The region's descriptor stays open (counted with the connection's in
 *     invariant 8's reckoning) until the client's first request that names
 *     the region (it has opened it by then) or the close; the mapping
 *     lives as long as the connection.  A PUSH or PULL whose meta sets shm
 *     has data_len 0 and names shm_off: its payload (as many bytes as
 *     psd_shard_payload says) lies, or is to be put, at that offset, which
 *     must lie in the region (else the request is refused, the connection
 *     kept).  A push's gradients are handed to psd_shard_push in place
 *     (only borrowed: ps_req.own stays NULL); except under durability
 *     `sync`, where the bytes logged and those applied must be the same:
 *     for a client whose hello set shm_hold (it leaves a push's bytes
 *     unchanged until that push's own answer, ps_chan.c invariant 7) they
 *     are applied in place and lent to the redo log (ps_req.lend, psd_wal
 *     invariant 8), which writes them from the region; the region
 *     (conn_lend, counted) then lives until the connection and every
 *     record that reads it are done with it.  Other clients may change
 *     them once a later request is answered, so their pushes are first
 *     copied into the connection's page-aligned data buffer and logged
 *     and applied from there, as a push read from the socket is.  A
 *     shard that does not log gives a hold client two areas' bytes (of
 *     those it asked for) and leaves shm_hold unset in its reply: the
 *     client then uses them as any client does.  (Shards before this
 *     offered the region for pulls only under `sync`, shm_pulls_only;
 *     clients still honour that.)  A pull is written there by
 *     psd_shard_pull, on the loop, before its reply (shm set, no data) is
 *     queued, so invariant 3a's "no later push changes a reply half sent"
 *     holds as for a copy.
 *     A lent region's pushes must each lie in one of its push areas and
 *     its pulls in its pull area (the last of PS_CHAN_SHM_PUSH_AREAS + 1,
 *     else refused), so the shard never writes a pull over a push its
 *     log has yet to write, and a client that keeps its promise for one
 *     area keeps it for the whole push; a region too small for areas of
 *     a page is not offered.  The client decides which bytes it may write when
 *     (ps_chan.h); a client that rewrites a push's bytes while the shard
 *     reads them corrupts its own gradients past their checks, and, when
 *     it promised to hold them (shm_hold) and breaks that, can make the
 *     log differ from what was applied or fail its checksum (a restart
 *     then refuses the log, or cuts it as torn): what a process of the
 *     same user could do anyway, writing into the shard's memory or files.
 *     psw keeps the promise; ps_chan's client never moves a held region
 *     and copies every payload through its areas.
 * 12. Strings a peer chose (key ids, cluster names) reach a log line or an
 *     error message only through ps_log_escape (\xNN for control bytes):
 *     an unauthenticated peer cannot forge a log line. */
#include "psd_chan.h"

#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ps_addr.h"
#include "ps_auth.h"
#include "ps_chan.h"
#include "ps_log.h"
#include "ps_pb.h"
#include "ps_shm.h"
#include "psd_coord.h"
#include "psd_fd.h"
#include "psd_shard_sparse.h"
#include "psd_wal.h"

#define CHAN_STAGE 16384
#define CHAN_MAX_QUEUED (16u << 20)
#define CHAN_SLOW_MS 10000u      /* a reader with replies queued, none taken this long, is slow (4a) */
#define CHAN_BEAT_MAX (1u << 20)
#define CHAN_MAX_ACKS 64u         /* pushes waiting for their sync per connection (7b) */
#define CHAN_SWEEP_MS 5000u      /* longest period of the idle sweep (invariant 8) */
#define CHAN_HELLO_MS 5000u      /* longest time from accept to a finished hello (8a) */
#define CHAN_REFUSE_LOG_MS 10000 /* at most one log line about refusals this often */
#define CHAN_FD_SAMPLE_MS 1000   /* descriptors counted at most this often ... */
#define CHAN_FD_SAMPLE_NEAR_MS 100 /* ... or this often near the reserve */

struct psd_conn;

/* A push of an unordered-acks connection waiting for its log sync
 * (invariant 7b). */
typedef struct conn_ack {
  psd_wal_waiter wt;
  struct psd_conn *conn;
  uint64_t req_id, version;
  struct conn_ack *prev, *next;
} conn_ack;

typedef struct psd_conn {
  struct psd_chan *chan;
  uv_tcp_t tcp;
  struct psd_conn *prev, *next;
  int hello_done, closing, paused;
  int hello_proving;          /* challenge sent, the client's proof is due (invariant 9) */
  int role;                   /* ps_auth.h role of the proven key (none without keys) */
  uint8_t nc[PS_AUTH_NONCE], ns[PS_AUTH_NONCE];
  ps_auth_key key;            /* a copy: a SIGHUP may replace the key set meanwhile */
  ps_auth_mac *mac;           /* frames after the hello carry MACs (invariant 10) */
  int req_is_pull;            /* c->req is a pull waiting for its MAC (not in flight) */
  int direct;                 /* the last alloc_cb bypassed the stage */
  ps_chan_rx rx;              /* the frame being received (ps_chan.h's decoder) */
  Ps__ChanMeta *req;          /* decoded meta of the push being received */
  int req_err;                /* push refused: the error to answer */
  ps_errbuf req_eb;
  void *data;                 /* push data buffer (encoded) */
  size_t data_cap;            /* bytes */
  void *spare;                /* a written pull reply's buffer (invariant 3) */
  size_t spare_cap;           /* bytes */
  size_t queued;              /* reply bytes handed to libuv, not yet written */
  uint8_t stage[CHAN_STAGE];
  size_t stage_off, stage_len;
  int parked, resume_pending; /* invariant 7 */
  Ps__ChanMeta *pmeta;        /* the parked pull's meta */
  uint64_t preq_id;           /* and its request id */
  psd_park park;
  int syncing;                /* a push waits for its log sync (invariant 7a) */
  uint64_t sversion;          /* its version, for the answer */
  int ssparse;                /* it is a sparse push (invariant 2b) */
  psd_wal_waiter swt;
  int unordered;              /* the hello agreed on unordered acks (7b) */
  conn_ack *acks;             /* pushes waiting for their sync (7b) */
  unsigned nacks;
  psd_op op;                  /* a forwarded push or pull (aggregator) ... */
  int op_pending, op_push;    /* ... waiting for the root; the connection is paused */
  uint32_t op_codec;          /* the pull's codec */
  psd_op spec;                /* a push or pull waiting for its model's layout (7c) ... */
  int spec_pending;           /* ... the connection paused meanwhile */
  Ps__ChanMeta *smeta;        /* its meta */
  int spec_err;               /* the layout could not be fetched: the request's answer */
  ps_errbuf spec_eb;
  uint64_t agg_stamp;         /* an aggregator's: psd_agg_conn_stamp at accept */
  uint32_t agg_worker1;       /* an aggregator's: its worker + 1 (psd_shard_forward_conn) */
  int counted;                /* counts in sh->chan_conns (not a refused one) */
  uint64_t last_ms;           /* uv_now of its last byte moved (invariant 8) */
  uint64_t accept_ms;         /* uv_now of its accept: the hello's deadline runs (8a) */
  size_t last_wq;             /* libuv's write queue size at the last sweep */
  uint64_t wrote_ms;          /* uv_now of its last reply bytes taken, or of its first queued (4a) */
  uint32_t hello_worker1;     /* the first HELLO's hello_worker: its worker + 1 (9a) */
  uint64_t shm_want;          /* region bytes the first HELLO asked for (invariant 11) */
  uint32_t want_mac;          /* the first HELLO's payload_mac (invariant 9: proved) */
  int shm_hold;               /* ... and that it holds pushes there until answered */
  ps_shm shm;                 /* the region offered; map NULL: none */
  struct conn_lend *lend;     /* the region as the redo log borrows it (invariant 11) */
  uint64_t req_nbytes;        /* the push being received: its payload bytes */
} psd_conn;

typedef struct psd_chan {
  psd_shard *sh;
  uv_tcp_t listener;
  int listening;
  psd_conn *conns;
  int handles;                /* open libuv handles (listener + conns + wake + sweep) */
  int closing;
  uv_async_t wake;            /* resumes released connections (invariant 7) */
  uv_timer_t sweep;           /* closes idle connections (invariant 8) */
  ps_said refused;            /* of sh->ctr.chan_refused */
  uint64_t fd_other;          /* open descriptors not the channel's, when last counted */
  uint64_t fd_sample_ms;      /* uv_now of that count */
  int fd_sampled;
  ps_auth_keys keys;          /* security.secret_file (invariant 9); none: no auth */
  ps_said auth_refused;       /* of sh->ctr.chan_auth_refused */
  ps_said hello_late;         /* hellos past their deadline (8a), in chan_idle_closed */
  uint64_t hello_late_n;      /* their count (chan_idle_closed counts idle ones too) */
  uint64_t swept_ms;          /* uv_now of the last sweep (a stalled loop: chan_sweep) */
  uint64_t shm_fds;           /* regions' descriptors still open (invariant 11) */
  uint64_t queued;            /* reply bytes queued in libuv, all connections (4a) */
  ps_said slow;               /* of sh->ctr.chan_slow_closed (4a) */
  ps_said bad;                /* of sh->ctr.chan_bad_frames (invariant 6) */
  ps_said push_refused;       /* pushes refused by the shard's checks (invariant 6) ... */
  uint64_t push_refused_n;    /* ... and their count */
  ps_said shm_failed;         /* regions that could not be made (invariant 11) ... */
  uint64_t shm_failed_n;      /* ... and their count */
} psd_chan;

typedef struct chan_wr {
  uv_write_t req;
  psd_conn *conn;
  int inflight;               /* counts in sh->inflight */
  int close_after;
  size_t bytes;
  void *data;                 /* pull reply data (owned) */
  size_t data_cap;            /* its size in bytes */
  uint8_t tag[PS_AUTH_MAC];   /* the reply's MAC (invariant 10) */
  uint8_t hdr[PS_CHAN_HDR_LEN];
  uint8_t meta[];
} chan_wr;

static void conn_close(psd_conn *c);
static void conn_resume(psd_conn *c);
static void conn_data_done(psd_conn *c);
static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* chan_maybe_free frees the channel once every handle is closed. */
static void chan_maybe_free(psd_chan *ch) {
  if (ch->closing && ch->handles == 0) {
    if (ch->sh->chan == ch) ch->sh->chan = NULL;
    ps_auth_release(&ch->keys);
    free(ch);
  }
}

/* ---- replies ---------------------------------------------------------------- */

/* conn_take_buf returns a pull reply buffer of at least BYTES and its
 * size in *CAP: the connection's spare when it is large enough (invariant
 * 3), else a new one (NULL: out of memory). */
static void *conn_take_buf(psd_conn *c, size_t bytes, size_t *cap) {
  if (c->spare && c->spare_cap >= bytes) {
    void *p = c->spare;
    *cap = c->spare_cap;
    c->spare = NULL;
    return p;
  }
  *cap = bytes ? bytes : 1;
  return malloc(*cap);
}

/* conn_give_buf takes back reply buffer P of CAP bytes as the
 * connection's spare, keeping the larger of it and the spare held; frees
 * the other, and P too once the connection is closing. */
static void conn_give_buf(psd_conn *c, void *p, size_t cap) {
  if (!p) return;
  if (c->closing || (c->spare && c->spare_cap >= cap)) {
    free(p);
    return;
  }
  free(c->spare);
  c->spare = p;
  c->spare_cap = cap;
}

/* conn_queued_add counts N reply bytes handed to libuv for C, in its
 * total and the channel's (invariants 4, 4a); conn_queued_sub takes back
 * N written or cancelled.  A connection's stall is timed from its first
 * queued byte. */
static void conn_queued_add(psd_conn *c, size_t n) {
  if (c->queued == 0) c->wrote_ms = uv_now(c->chan->sh->loop);
  c->queued += n;
  c->chan->queued += n;
}

static void conn_queued_sub(psd_conn *c, size_t n) {
  c->queued -= n;
  c->chan->queued -= n;
}

/* conn_backlogged: C must stop reading for the replies it has queued:
 * over CHAN_MAX_QUEUED of its own (invariant 4), or any while the
 * channel's are over limits.max_queued_bytes (4a). */
static int conn_backlogged(const psd_conn *c) {
  return c->queued > CHAN_MAX_QUEUED ||
         (c->queued && c->chan->queued > c->chan->sh->cfg->max_queued_bytes);
}

/* conn_may_resume: C is paused and open, waits for nothing (a parked
 * pull, a sync, a forwarded request, a layout: invariants 7, 7c) and its
 * replies in flight allow reading (conn_backlogged). */
static int conn_may_resume(const psd_conn *c) {
  return c->paused && !c->closing && !c->parked && !c->syncing && !c->op_pending &&
         !c->spec_pending && !conn_backlogged(c);
}

/* wr_done finishes a reply write: counters, backpressure, deferred close. */
static void wr_done(uv_write_t *req, int status) {
  chan_wr *w = (chan_wr *)req;
  psd_conn *c = w->conn;
  psd_shard *sh = c->chan->sh;
  if (w->inflight && sh->inflight) sh->inflight--;
  conn_queued_sub(c, w->bytes);
  if (status == 0) c->last_ms = c->wrote_ms = uv_now(c->chan->sh->loop);
  conn_give_buf(c, w->data, w->data_cap); /* before a resume serves the next pull */
  if (status < 0 && status != UV_ECANCELED) conn_close(c);
  else if (w->close_after) conn_close(c);
  else if (conn_may_resume(c)) conn_resume(c);
  free(w);
}

/* conn_reply_id returns the request id the reply being written answers. */
static uint64_t conn_reply_id(const psd_conn *c) {
  return c->parked || c->op_pending ? c->preq_id : c->rx.h.req_id;
}

/* conn_reply writes one frame: META (packed here), then NBYTES of DATA,
 * a buffer of DATA_CAP bytes (ownership passes to the write; may be
 * NULL).  INFLIGHT: the frame
 * answers a request counted in sh->inflight.  Returns 0 or a PS_E* code
 * (the connection is then closed). */
static int conn_reply_to(psd_conn *c, uint64_t req_id, const Ps__ChanMeta *meta, void *data,
                         size_t data_cap, uint64_t nbytes, int inflight, int close_after) {
  size_t mlen = ps__chan_meta__get_packed_size(meta);
  chan_wr *w = malloc(sizeof *w + mlen);
  if (!w) {
    free(data);
    if (inflight && c->chan->sh->inflight) c->chan->sh->inflight--;
    conn_close(c);
    return PS_ENOMEM;
  }
  ps__chan_meta__pack(meta, w->meta);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                   .meta_len = (uint32_t)mlen, .data_len = nbytes, .req_id = req_id,
                   .flags = c->mac ? PS_CHAN_FLAG_MAC : 0};
  ps_chan_hdr_encode(w->hdr, &h);
  w->conn = c;
  w->inflight = inflight;
  w->close_after = close_after;
  w->data = data;
  w->data_cap = data_cap;
  w->bytes = sizeof w->hdr + mlen + (size_t)h.data_len;
  uv_buf_t bufs[4] = {uv_buf_init((char *)w->hdr, sizeof w->hdr),
                      uv_buf_init((char *)w->meta, (unsigned)mlen),
                      uv_buf_init((char *)data, (unsigned)h.data_len)};
  unsigned nbufs = data ? 3 : 2;
  if (c->mac) { /* invariant 10 */
    ps_auth_mac_begin(c->mac, 'S');
    for (unsigned i = 0; i < nbufs; i++) ps_auth_mac_update(c->mac, 'S', bufs[i].base, bufs[i].len);
    ps_auth_mac_end(c->mac, 'S', w->tag);
    bufs[nbufs++] = uv_buf_init((char *)w->tag, sizeof w->tag);
    w->bytes += sizeof w->tag;
  }
  conn_queued_add(c, w->bytes);
  int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nbufs, wr_done);
  if (r < 0) {
    conn_queued_sub(c, w->bytes);
    if (inflight && c->chan->sh->inflight) c->chan->sh->inflight--;
    free(data);
    free(w);
    conn_close(c);
    return PS_EIO;
  }
  return 0;
}

/* conn_reply answers the current request (conn_reply_to): the parked or
 * forwarded one, else the one just read. */
static int conn_reply(psd_conn *c, const Ps__ChanMeta *meta, void *data, size_t data_cap,
                      uint64_t nbytes, int inflight, int close_after) {
  return conn_reply_to(c, conn_reply_id(c), meta, data, data_cap, nbytes, inflight, close_after);
}

/* conn_reply_error_to answers request REQ_ID with a CHAN_ERROR frame. */
static int conn_reply_error_to(psd_conn *c, uint64_t req_id, int status, const char *msg,
                               int inflight, int close_after) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_ERROR;
  m.status = status;
  m.message = (char *)msg;
  return conn_reply_to(c, req_id, &m, NULL, 0, 0, inflight, close_after);
}

/* conn_reply_error answers the current request with a CHAN_ERROR frame. */
static int conn_reply_error(psd_conn *c, int status, const char *msg, int inflight,
                            int close_after) {
  return conn_reply_error_to(c, c->parked || c->op_pending ? c->preq_id : c->rx.h.req_id,
                             status, msg, inflight, close_after);
}

/* ---- requests --------------------------------------------------------------- */

/* psd_chan_hello_check: see psd_chan.h. */
int psd_chan_hello_check(const ps_config *cfg, const ps_chan_hdr *h, const Ps__ChanMeta *m,
                         int *answer, ps_errbuf *eb) {
  const char *cluster = cfg->cluster ? cfg->cluster : "";
  *answer = 0;
  if ((int)m->op != PS__CHAN_OP__CHAN_HELLO || h->data_len)
    return ps_errf(eb, PS_EPROTO, "first frame is not a hello");
  *answer = 1;
  if (m->proto_version != PS_CHAN_VERSION)
    return ps_errf(eb, PS_EPROTO, "protocol version %u not supported (want %d)",
                   m->proto_version, PS_CHAN_VERSION);
  if (!m->cluster || strcmp(m->cluster, cluster) != 0) {
    char shown[4 * 64 + 8]; /* the peer's words: escaped (invariant 12) */
    return ps_errf(eb, PS_EPROTO, "wrong cluster '%s' (this is '%s')",
                   ps_log_escape(shown, sizeof shown, m->cluster, 64), cluster);
  }
  return 0;
}

/* chan_said_verb counts one refusal in *CTR and logs "VERB N WHAT" (WHAT:
 * "... connection(s)") with WHY at most every CHAN_REFUSE_LOG_MS (S: the
 * counter's last line); chan_said_tail logs the count not yet said once
 * that time has passed (the sweep: the tail of a burst). */
static void chan_said_verb(psd_chan *ch, uint64_t *ctr, ps_said *s, const char *verb,
                           const char *what, const char *why) {
  (*ctr)++;
  uint64_t n = ps_said_due(s, *ctr, uv_now(ch->sh->loop), CHAN_REFUSE_LOG_MS);
  if (n)
    ps_warn("channel: %s %llu %s since the last report: %s", verb, (unsigned long long)n, what,
            why);
}

static void chan_said_count(psd_chan *ch, uint64_t *ctr, ps_said *s, const char *what,
                            const char *why) {
  chan_said_verb(ch, ctr, s, "refused", what, why);
}

static void chan_said_tail(psd_chan *ch, uint64_t ctr, ps_said *s, const char *verb,
                           const char *what, const char *why) {
  uint64_t now = uv_now(ch->sh->loop);
  if (ctr <= s->logged || now - s->ms < CHAN_REFUSE_LOG_MS) return;
  ps_warn("channel: %s %llu more %s in the last %llu s: %s", verb,
          (unsigned long long)(ctr - s->logged), what, (unsigned long long)(now - s->ms) / 1000,
          why);
  s->logged = ctr;
  s->ms = now;
}

/* conn_auth_refused counts a connection C refused before its hello
 * succeeded (its key proof, or a frame or hello out of the protocol) in
 * chan_auth_refused and logs it (MSG: why), at most every
 * CHAN_REFUSE_LOG_MS: a stranger cannot fill the log. */
static void conn_auth_refused(psd_conn *c, const char *msg) {
  psd_chan *ch = c->chan;
  chan_said_count(ch, &ch->sh->ctr.chan_auth_refused, &ch->auth_refused,
                  "unauthenticated connection(s)", msg);
}

/* conn_peer writes C's peer address ("127.0.0.1:5312", "[::1]:5312")
 * into BUF for a log line; "an unknown peer" when it has none. */
static const char *conn_peer(psd_conn *c, char *buf, size_t cap) {
  struct sockaddr_storage a;
  int len = sizeof a;
  char host[64] = "";
  snprintf(buf, cap, "an unknown peer");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&a, &len) < 0) return buf;
  if (a.ss_family == AF_INET && uv_ip4_name((struct sockaddr_in *)&a, host, sizeof host) == 0)
    snprintf(buf, cap, "%s:%u", host, ntohs(((struct sockaddr_in *)&a)->sin_port));
  else if (a.ss_family == AF_INET6 &&
           uv_ip6_name((struct sockaddr_in6 *)&a, host, sizeof host) == 0)
    snprintf(buf, cap, "[%s]:%u", host, ntohs(((struct sockaddr_in6 *)&a)->sin6_port));
  return buf;
}

/* conn_bad_frame counts a frame out of the protocol after the hello
 * (invariant 6: the caller closes C) in chan_bad_frames and logs it with
 * the peer and WHY, at most every CHAN_REFUSE_LOG_MS: a client sending
 * garbage leaves a trace, but cannot fill the log. */
static void conn_bad_frame(psd_conn *c, const char *why) {
  psd_chan *ch = c->chan;
  char line[400], peer[96];
  snprintf(line, sizeof line, "the last from %s: %s", conn_peer(c, peer, sizeof peer), why);
  chan_said_verb(ch, &ch->sh->ctr.chan_bad_frames, &ch->bad, "closed",
                 "connection(s) for a frame out of the protocol", line);
}

/* conn_push_refused logs a push the shard's checks refused with MSG
 * (answered, the connection kept; already counted in errors), at most
 * every CHAN_REFUSE_LOG_MS: an operator sees why a worker's pushes fail
 * (NaN gradients, an unknown model, wrong sizes) without a line each. */
static void conn_push_refused(psd_conn *c, const char *msg) {
  psd_chan *ch = c->chan;
  char line[600], peer[96], shown[4 * 120 + 8]; /* the message names the peer's model (12) */
  snprintf(line, sizeof line, "the last from %s: %s", conn_peer(c, peer, sizeof peer),
           ps_log_escape(shown, sizeof shown, msg, 120));
  chan_said_verb(ch, &ch->push_refused_n, &ch->push_refused, "refused", "push(es)", line);
}

/* conn_hello_refuse answers the hello with error STATUS / MSG and closes
 * once it is written; an authentication failure (AUTH) is counted
 * (conn_auth_refused). */
static int conn_hello_refuse(psd_conn *c, int status, const char *msg, int auth) {
  psd_shard_count_error(c->chan->sh);
  if (auth) conn_auth_refused(c, msg);
  c->paused = 1; /* read nothing more: the connection closes once the error is written */
  uv_read_stop((uv_stream_t *)&c->tcp);
  conn_reply_error(c, status, msg, 0, 1);
  return 0;
}

/* conn_same_host: C's peer address is this end's own address (the
 * client runs on this host; invariant 11). */
static int conn_same_host(psd_conn *c) {
  struct sockaddr_storage a, b;
  int la = sizeof a, lb = sizeof b;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&a, &la) < 0 ||
      uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&b, &lb) < 0 || a.ss_family != b.ss_family)
    return 0;
  if (a.ss_family == AF_INET)
    return ((struct sockaddr_in *)&a)->sin_addr.s_addr == ((struct sockaddr_in *)&b)->sin_addr.s_addr;
  if (a.ss_family == AF_INET6)
    return memcmp(&((struct sockaddr_in6 *)&a)->sin6_addr, &((struct sockaddr_in6 *)&b)->sin6_addr,
                  sizeof(struct in6_addr)) == 0;
  return 0;
}

/* conn_lend: a connection's region as the redo log borrows it
 * (invariant 11): its pushes are logged from there; the region is
 * released when the connection and every record that reads it are done
 * with it, on whichever thread that happens. */
typedef struct conn_lend {
  ps_lend fns;
  atomic_int refs; /* the connection's, and each log record's (ps_lend) */
  ps_shm shm;      /* the region, once the connection is gone */
} conn_lend;

static void conn_lend_hold(void *arg) {
  atomic_fetch_add(&((conn_lend *)arg)->refs, 1);
}

static void conn_lend_release(void *arg) {
  conn_lend *l = arg;
  if (atomic_fetch_sub(&l->refs, 1) != 1) return;
  ps_shm_release(&l->shm);
  free(l);
}

/* conn_shm_offer makes C's region when invariant 11 allows: 0 with
 * c->shm mapped, else -1 (no offer; said at debug level). */
static int conn_shm_offer(psd_conn *c) {
  psd_chan *ch = c->chan;
  const ps_config *cfg = ch->sh->cfg;
  const char *why = NULL;
  ps_errbuf eb;
  /* a hold client's pushes are logged from its region under `sync`;
   * elsewhere it gets two areas, used as without hold */
  uint64_t areas = c->shm_hold ? PS_CHAN_SHM_PUSH_AREAS + 1 : 2, bytes = c->shm_want;
  int lend = c->shm_hold && ch->sh->wal;
  if (c->shm_hold && !lend) bytes = 2 * ps_chan_shm_area(c->shm_want, 1);
  if (!cfg->workers.shared_memory) why = "workers.shared_memory is off";
  else if (cfg->security.payload_mac) why = "security.payload_mac is on";
  else if (ch->sh->agg) why = "this is an aggregator";
  else if (c->shm_want > areas * ((uint64_t)cfg->max_request_bytes + PS_SHM_HDR))
    why = "more than one limits.max_request_bytes per area asked for";
  else if (!bytes || (lend && !ps_chan_shm_area(bytes, 1))) why = "too few bytes asked for";
  else if (!conn_same_host(c)) why = "the client is on another host";
  else if (lend && !(c->lend = calloc(1, sizeof *c->lend))) why = "out of memory";
  if (!why && ps_shm_create(&c->shm, bytes, &eb) < 0) why = eb.msg;
  /* the rules said yes, but the region could not be made: the operator should know */
  if (why && (why == eb.msg || !strcmp(why, "out of memory"))) {
    char line[700], peer[96];
    snprintf(line, sizeof line, "the last for %s, %llu bytes asked: %s (short of memory or of "
             "descriptors?); its pushes and pulls are copied through the socket",
             conn_peer(c, peer, sizeof peer), (unsigned long long)c->shm_want, why);
    chan_said_verb(ch, &ch->shm_failed_n, &ch->shm_failed, "served",
                   "connection(s) over TCP without the shared memory they asked for", line);
  }
  if (why) {
    ps_debug("channel: no shared memory for a connection (%llu bytes asked): %s",
             (unsigned long long)c->shm_want, why);
    free(c->lend);
    c->lend = NULL;
    return -1;
  }
  if (c->lend) {
    c->lend->fns = (ps_lend){.hold = conn_lend_hold, .release = conn_lend_release, .arg = c->lend};
    atomic_init(&c->lend->refs, 1);
  }
  ch->shm_fds++;
  ch->sh->ctr.chan_shm_conns++;
  return 0;
}

/* conn_shm_used: the client named C's region in a request, so it has
 * opened it: its descriptor is no longer needed here (invariant 11). */
static void conn_shm_used(psd_conn *c) {
  if (c->shm.fd < 0) return;
  ps_shm_close_fd(&c->shm);
  c->chan->shm_fds--;
}

/* conn_auth_hello fills *H with the fields of C's hello the proofs
 * cover (invariant 9): the client's first HELLO and the challenge's. */
static void conn_auth_hello(const psd_conn *c, ps_auth_hello *h) {
  *h = (ps_auth_hello){.want_mac = c->want_mac, .unordered_acks = c->unordered ? 1 : 0,
                       .shm_hold = c->shm_hold ? 1 : 0, .shm_bytes = c->shm_want,
                       .worker1 = c->hello_worker1,
                       .mac = c->chan->sh->cfg->security.payload_mac ? 1 : 0};
}

/* conn_hello_ok ends the hello: HELLO answered (with keys, with the
 * accept MAC over what it grants: invariant 9), requests served. */
static int conn_hello_ok(psd_conn *c) {
  Ps__ChanMeta r = PS__CHAN_META__INIT;
  r.op = PS__CHAN_OP__CHAN_HELLO;
  r.proto_version = PS_CHAN_VERSION;
  r.cluster = c->chan->sh->cfg->cluster;
  r.features = PS__CHAN_FEATURE__CHAN_FEAT_SPARSE; /* invariant 2b */
  r.unordered_acks = c->unordered ? 1 : 0;
  if (c->shm_want && conn_shm_offer(c) == 0) { /* invariant 11 */
    r.shm_bytes = c->shm.bytes;
    r.shm_pid = (uint32_t)getpid();
    r.shm_fd = (uint32_t)c->shm.fd;
    r.shm_token.data = c->shm.token;
    r.shm_token.len = sizeof c->shm.token;
    r.shm_hold = c->lend != NULL;
  }
  c->hello_done = 1;
  c->hello_proving = 0;
  uint8_t accept[PS_AUTH_MAC];
  if (c->chan->keys.n) {
    ps_auth_hello h;
    conn_auth_hello(c, &h);
    ps_chan_hello_granted(&r, &h);
    ps_auth_proof(&c->key, PS_AUTH_ACCEPT, c->chan->sh->cfg->cluster, c->nc, c->ns, &h, accept);
    r.auth.data = accept;
    r.auth.len = sizeof accept;
  }
  ps_auth_mac *mac = NULL;
  int rc = 0;
  if (c->chan->keys.n && c->chan->sh->cfg->security.payload_mac &&
      ps_auth_mac_new(&mac, &c->key, c->chan->sh->cfg->cluster, c->nc, c->ns) < 0)
    rc = PS_ENOMEM;
  OPENSSL_cleanse(&c->key, sizeof c->key);
  if (rc < 0) return rc;
  /* invariant 9a: a worker's own connection (a worker's key, with keys) */
  if (c->hello_worker1 && (!c->chan->keys.n || c->role == PS_ROLE_WORKER))
    psd_shard_worker_hello(c->chan->sh, c->hello_worker1 - 1);
  rc = conn_reply(c, &r, NULL, 0, 0, 0, 0); /* the last frame without a MAC */
  c->mac = mac;
  return rc;
}

/* conn_hello_challenge answers a first HELLO when the shard has keys
 * (invariant 9): the key it names, the shard's nonce and proof. */
static int conn_hello_challenge(psd_conn *c, const Ps__ChanMeta *m) {
  psd_chan *ch = c->chan;
  char why[400], shown[4 * PS_AUTH_ID_MAX + 8];
  const ps_auth_key *k = ps_auth_find(&ch->keys, m->key_id && *m->key_id ? m->key_id : NULL);
  if (!m->key_id || !*m->key_id || m->nonce.len != PS_AUTH_NONCE)
    return conn_hello_refuse(c, PS_EPERM, "channel authentication required: this shard has "
                             "security.secret_file and the hello names no key (or no 32-byte "
                             "nonce)", 1);
  if (m->auth_version != PS_AUTH_HELLO_VERSION) {
    snprintf(why, sizeof why, "channel authentication failed: the hello's proofs are of "
             "version %u, this shard's of %d (" PS_AUTH_OLD_PEER "; or the field was "
             "taken off on the way)",
             m->auth_version, PS_AUTH_HELLO_VERSION);
    return conn_hello_refuse(c, PS_EPERM, why, 1);
  }
  if (!k) {
    snprintf(why, sizeof why, "channel authentication failed: unknown key id '%s'",
             ps_log_escape(shown, sizeof shown, m->key_id, PS_AUTH_ID_MAX)); /* invariant 12 */
    return conn_hello_refuse(c, PS_EPERM, why, 1);
  }
  ps_errbuf eb;
  if (ps_auth_nonce(c->ns, &eb) < 0) return conn_hello_refuse(c, PS_EINTERNAL, eb.msg, 0);
  c->key = *k;
  memcpy(c->nc, m->nonce.data, PS_AUTH_NONCE);
  uint8_t proof[PS_AUTH_MAC];
  int mac = ch->sh->cfg->security.payload_mac;
  ps_auth_hello h;
  conn_auth_hello(c, &h);
  ps_auth_proof(&c->key, PS_AUTH_SERVER, ch->sh->cfg->cluster, c->nc, c->ns, &h, proof);
  Ps__ChanMeta r = PS__CHAN_META__INIT;
  r.op = PS__CHAN_OP__CHAN_HELLO;
  r.proto_version = PS_CHAN_VERSION;
  r.cluster = ch->sh->cfg->cluster;
  r.nonce.data = c->ns;
  r.nonce.len = PS_AUTH_NONCE;
  r.auth.data = proof;
  r.auth.len = sizeof proof;
  r.payload_mac = mac ? 1 : 0;
  r.auth_version = PS_AUTH_HELLO_VERSION;
  c->hello_proving = 1;
  return conn_reply(c, &r, NULL, 0, 0, 0, 0);
}

/* conn_hello_proof checks the client's proof (invariant 9). */
static int conn_hello_proof(psd_conn *c, const Ps__ChanMeta *m) {
  if ((int)m->op != PS__CHAN_OP__CHAN_HELLO || c->rx.h.data_len)
    return conn_hello_refuse(c, PS_EPERM, "channel authentication: expected the hello's proof", 1);
  ps_auth_hello h;
  conn_auth_hello(c, &h);
  if (!ps_auth_check(&c->key, PS_AUTH_CLIENT, c->chan->sh->cfg->cluster, c->nc, c->ns, &h,
                     m->auth.data, m->auth.len)) {
    char why[200];
    snprintf(why, sizeof why, "channel authentication failed: wrong proof of key '%s' (or "
             "a field of the hello changed on the way)", c->key.id);
    OPENSSL_cleanse(&c->key, sizeof c->key);
    return conn_hello_refuse(c, PS_EPERM, why, 1);
  }
  c->role = c->key.role;
  return conn_hello_ok(c);
}

/* conn_hello checks the first frame (psd_chan_hello_check) and, with
 * keys, runs the challenge-response (invariant 9); answers HELLO, or an
 * error frame and a close, or returns PS_EPROTO (close without an answer)
 * when the frame is no hello at all. */
static int conn_hello(psd_conn *c, const Ps__ChanMeta *m) {
  if (c->hello_proving) return conn_hello_proof(c, m);
  const ps_config *cfg = c->chan->sh->cfg;
  ps_errbuf eb;
  int answer, rc = psd_chan_hello_check(cfg, &c->rx.h, m, &answer, &eb);
  if (rc == 0) c->unordered = m->unordered_acks != 0; /* invariant 7b */
  if (rc == 0) c->shm_want = m->shm_bytes;           /* invariant 11 */
  if (rc == 0) c->shm_hold = m->shm_hold != 0;
  if (rc == 0) c->want_mac = m->payload_mac != 0;
  if (rc == 0) c->hello_worker1 = m->hello_worker; /* invariant 9a */
  if (rc == 0) return c->chan->keys.n ? conn_hello_challenge(c, m) : conn_hello_ok(c);
  if (!answer) {
    conn_auth_refused(c, eb.msg);
    return rc;
  }
  return conn_hello_refuse(c, PS_EPROTO, eb.msg, 1);
}

/* conn_req describes the push or pull of meta M (borrowed) as a request. */
static ps_req conn_req(const Ps__ChanMeta *m) {
  return (ps_req){.model = m->model, .ids = m->chunk_ids, .nids = m->n_chunk_ids,
                  .worker = m->worker, .clock = m->clock, .version = m->version,
                  .codec = (ps_codec_id)m->codec, .summed = m->summed,
                  .nsummed = m->n_summed};
}

/* conn_write_tail queues the last LEN bytes of a reply that
 * conn_pull_direct began, copied into BUF (CAP bytes, owned by the write
 * from here on); wr_done finishes the request as for any reply. */
static void conn_write_tail(psd_conn *c, void *buf, size_t cap, size_t len) {
  chan_wr *w = malloc(sizeof *w);
  psd_shard *sh = c->chan->sh;
  if (!w) {
    free(buf);
    if (sh->inflight) sh->inflight--;
    conn_close(c); /* a frame cut short: the peer cannot resynchronise */
    return;
  }
  *w = (chan_wr){.conn = c, .inflight = 1, .bytes = len, .data = buf, .data_cap = cap};
  uv_buf_t b = uv_buf_init(buf, (unsigned)len);
  conn_queued_add(c, len);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, wr_done) < 0) {
    conn_queued_sub(c, len);
    if (sh->inflight) sh->inflight--;
    free(buf);
    free(w);
    conn_close(c);
  }
}

/* conn_pull_meta fills RM, the reply to pull M at VERSION, parked
 * PARKED_MS (in the region when M asked for that: invariant 11). */
static void conn_pull_meta(Ps__ChanMeta *rm, const Ps__ChanMeta *m, uint64_t version,
                           uint32_t parked_ms) {
  ps__chan_meta__init(rm);
  rm->op = PS__CHAN_OP__CHAN_PULL;
  rm->version = version;
  rm->parked_ms = parked_ms;
  rm->codec = m->codec;
  rm->shm = m->shm ? 1 : 0;
  rm->shm_off = m->shm ? m->shm_off : 0;
}

#define CHAN_DIRECT_SEGS 128 /* chunks a direct pull reply may span (invariant 3a) */

/* conn_pull_direct answers pull R (meta M, sized by psd_shard_payload)
 * from the chunks' own memory when invariant 3a allows: returns 1 when it
 * answered (the reply, or its error), 0 when the caller must answer with
 * a copy. */
static int conn_pull_direct(psd_conn *c, const Ps__ChanMeta *m, const ps_req *r,
                            uint32_t parked_ms) {
  psd_shard *sh = c->chan->sh;
  /* Earlier replies must be in the kernel already (uv_try_write refuses
   * otherwise too); a written one whose wr_done is still due (c->queued)
   * is, and is the common case: the push's ack just before. */
  if (c->mac || uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp)) return 0;
  struct iovec seg[CHAN_DIRECT_SEGS];
  size_t nseg = 0;
  uint64_t version = 0;
  ps_errbuf eb;
  int rc = psd_shard_pull_view(sh, r, seg, CHAN_DIRECT_SEGS, &nseg, &version, &eb);
  if (rc == 0) return 0;
  if (rc < 0) {
    conn_reply_error(c, rc, eb.msg, 1, 0);
    return 1;
  }
  Ps__ChanMeta rm;
  conn_pull_meta(&rm, m, version, parked_ms);
  uint8_t hdr[PS_CHAN_HDR_LEN], meta[64];
  size_t mlen = ps__chan_meta__get_packed_size(&rm);
  if (mlen > sizeof meta) return 0; /* never: a few varints */
  ps__chan_meta__pack(&rm, meta);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                   .meta_len = (uint32_t)mlen, .data_len = r->nbytes, .req_id = conn_reply_id(c)};
  ps_chan_hdr_encode(hdr, &h);
  uv_buf_t bufs[2 + CHAN_DIRECT_SEGS];
  bufs[0] = uv_buf_init((char *)hdr, sizeof hdr);
  bufs[1] = uv_buf_init((char *)meta, (unsigned)mlen);
  size_t total = sizeof hdr + mlen;
  for (size_t i = 0; i < nseg; i++) {
    bufs[2 + i] = uv_buf_init(seg[i].iov_base, (unsigned)seg[i].iov_len);
    total += seg[i].iov_len;
  }
  int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, (unsigned)(2 + nseg));
  size_t sent = n > 0 ? (size_t)n : 0; /* an error: uv_write below meets it again */
  if (sent == total) {
    c->last_ms = c->wrote_ms = uv_now(sh->loop);
    if (sh->inflight) sh->inflight--;
    return 1;
  }
  size_t cap = 0, left = total - sent, at = 0;
  uint8_t *tail = conn_take_buf(c, left, &cap);
  if (!tail && !sent) {
    conn_reply_error(c, PS_ENOMEM, "pull: out of memory", 1, 0);
    return 1;
  }
  if (!tail) {
    if (sh->inflight) sh->inflight--;
    conn_close(c); /* part of the frame is out: nothing else can follow it */
    return 1;
  }
  for (size_t i = 0, off = 0; i < 2 + nseg; off += bufs[i].len, i++) {
    size_t end = off + bufs[i].len, from = sent > off ? sent - off : 0;
    if (end <= sent) continue;
    memcpy(tail + at, bufs[i].base + from, bufs[i].len - from);
    at += bufs[i].len - from;
  }
  conn_write_tail(c, tail, cap, left);
  return 1;
}

/* conn_shm_check refuses (PS_EINVAL, counted) a push or PULL of meta M
 * whose NBYTES of payload at shm_off do not lie in C's region, or, when
 * the region is lent to the log, inside one push area or in its pull
 * area (invariant 11); else marks the region used. */
static int conn_shm_check(psd_conn *c, const Ps__ChanMeta *m, uint64_t nbytes, int pull,
                          ps_errbuf *eb) {
  const char *what = pull ? "pull" : "push";
  if (!c->shm.map || c->rx.h.data_len) {
    psd_shard_count_error(c->chan->sh);
    return ps_errf(eb, PS_EINVAL, "%s of model '%s' in shared memory: %s", what, m->model,
                   !c->shm.map ? "this connection has no region" : "it also carries data");
  }
  if (m->shm_len && m->shm_len != nbytes) { /* the client's layout is not the shard's */
    psd_shard_count_error(c->chan->sh);
    return ps_errf(eb, PS_EINVAL, "%s of model '%s' in shared memory: %llu bytes there, the "
                   "chunks named need %llu (was the model replaced?)", what, m->model,
                   (unsigned long long)m->shm_len, (unsigned long long)nbytes);
  }
  if (!ps_shm_holds(&c->shm, m->shm_off, nbytes)) {
    psd_shard_count_error(c->chan->sh);
    return ps_errf(eb, PS_EINVAL, "%s of model '%s' in shared memory: %llu bytes at offset %llu "
                   "do not fit the region's %llu (or the offset is not 8-byte aligned)", what,
                   m->model, (unsigned long long)nbytes, (unsigned long long)m->shm_off,
                   (unsigned long long)c->shm.bytes);
  }
  /* a lent region: each push inside one push area, pulls in its pull
   * area, so that no request is written over a push the log has yet to
   * write (the client's hold promise covers one area per push) */
  uint64_t area = ps_chan_shm_area(c->shm.bytes, 1), pull_at = PS_CHAN_SHM_PUSH_AREAS * area;
  if (c->lend && (pull ? m->shm_off < pull_at
                       : m->shm_off + nbytes > pull_at || m->shm_off % area + nbytes > area)) {
    psd_shard_count_error(c->chan->sh);
    return ps_errf(eb, PS_EINVAL, "%s of model '%s' in shared memory at offset %llu: outside the "
                   "region's %s areas (%d push areas of %llu bytes, each push inside one; the "
                   "last %llu bytes from %llu are the pull area)", what, m->model,
                   (unsigned long long)m->shm_off, what, PS_CHAN_SHM_PUSH_AREAS,
                   (unsigned long long)area, (unsigned long long)(c->shm.bytes - pull_at),
                   (unsigned long long)pull_at);
  }
  conn_shm_used(c);
  return 0;
}

/* conn_pull_serve answers pull M now: straight from the chunks
 * (invariant 3a), else allocate, fill, write (invariant 3); PARKED_MS:
 * how long it waited parked.  The request is already counted in
 * sh->inflight. */
static void conn_pull_serve(psd_conn *c, const Ps__ChanMeta *m, uint32_t parked_ms) {
  psd_shard *sh = c->chan->sh;
  ps_errbuf eb;
  ps_req r = conn_req(m);
  uint64_t n = 0, version = 0;
  int rc = psd_shard_payload(sh, &r, 0, &n, &r.nbytes, &eb);
  if (rc == 0 && !m->shm && conn_pull_direct(c, m, &r, parked_ms)) return;
  size_t cap = 0;
  if (rc == 0 && m->shm) { /* into the region (invariant 11) */
    if ((rc = conn_shm_check(c, m, r.nbytes, 1, &eb)) == 0) r.out = c->shm.data + m->shm_off;
  } else if (rc == 0 && !(r.out = conn_take_buf(c, r.nbytes, &cap))) {
    rc = ps_errf(&eb, PS_ENOMEM, "pull of model '%s': out of memory", m->model);
  }
  if (rc == 0) rc = psd_shard_pull(sh, &r, &version, &eb);
  if (rc == 0 && m->shm) sh->ctr.chan_shm_bytes += r.nbytes;
  if (rc < 0) {
    if (!m->shm) conn_give_buf(c, r.out, cap);
    conn_reply_error(c, rc, eb.msg, 1, 0);
    return;
  }
  Ps__ChanMeta rm;
  conn_pull_meta(&rm, m, version, parked_ms);
  if (m->shm) conn_reply(c, &rm, NULL, 0, 0, 1, 0);
  else conn_reply(c, &rm, r.out, cap, r.nbytes, 1, 0);
}

static void conn_sparse_pull_serve(psd_conn *c, const Ps__ChanMeta *m, uint32_t parked_ms);

/* conn_unpark answers a parked pull, dense or sparse, the clock table
 * released and asks for the connection to resume (invariant 7). */
static void conn_unpark(psd_done *d, int status, const char *msg) {
  psd_conn *c = d->arg;
  Ps__ChanMeta *m = c->pmeta;
  /* No longer parked before the reply: a reply that fails closes C, and
   * conn_close must then neither free M nor uncount the request again. */
  c->parked = 0;
  c->pmeta = NULL;
  c->rx.h.req_id = c->preq_id; /* unchanged while parked (nothing is parsed) */
  if (status == 0 && (int)m->op == PS__CHAN_OP__CHAN_SPARSE_PULL) {
    conn_sparse_pull_serve(c, m, psd_shard_parked_ms(c->chan->sh, &c->park));
  } else if (status == 0) {
    conn_pull_serve(c, m, psd_shard_parked_ms(c->chan->sh, &c->park));
  } else {
    psd_shard_count_error(c->chan->sh);
    conn_reply_error(c, status, msg ? msg : ps_strerror(status), 1, 0);
  }
  ps__chan_meta__free_unpacked(m, NULL);
  if (!c->closing) {
    c->resume_pending = 1;
    uv_async_send(&c->chan->wake);
  }
}

/* conn_spec_err returns (and clears) the error of a request whose
 * model's layout could not be fetched (invariant 7c), in EB; 0 if none. */
static int conn_spec_err(psd_conn *c, ps_errbuf *eb) {
  int err = c->spec_err;
  if (!err) return 0;
  c->spec_err = 0;
  *eb = c->spec_eb;
  psd_shard_count_error(c->chan->sh);
  return err;
}

/* conn_pull_reply writes a pull's answer: NBYTES of DATA (copied into a
 * reply buffer) at VERSION in CODEC. */
static void conn_pull_reply(psd_conn *c, const void *data, uint64_t nbytes, uint64_t version,
                            uint32_t codec) {
  size_t cap = 0;
  void *buf = conn_take_buf(c, nbytes, &cap);
  if (!buf) {
    conn_reply_error(c, PS_ENOMEM, "pull: out of memory", 1, 0);
    return;
  }
  memcpy(buf, data, nbytes);
  c->chan->sh->ctr.bytes_out += nbytes;
  Ps__ChanMeta rm = PS__CHAN_META__INIT;
  rm.op = PS__CHAN_OP__CHAN_PULL;
  rm.version = version;
  rm.codec = codec;
  conn_reply(c, &rm, buf, cap, nbytes, 1, 0);
}

/* conn_op_done answers a forwarded push or pull the aggregator completed
 * and asks for the connection to resume (as conn_unpark). */
static void conn_op_done(psd_done *d, int status, const char *msg) {
  psd_conn *c = d->arg;
  int push = c->op_push;
  if (!c->op_pending) return;
  c->rx.h.req_id = c->preq_id;
  if (status < 0) {
    c->op_pending = 0;
    conn_reply_error(c, status, msg ? msg : ps_strerror(status), 1, 0);
  } else if (push) {
    c->op_pending = 0;
    Ps__ChanMeta r = PS__CHAN_META__INIT;
    r.op = PS__CHAN_OP__CHAN_PUSH;
    r.version = d->version;
    conn_reply(c, &r, NULL, 0, 0, 1, 0);
  } else {
    c->op_pending = 0;
    conn_pull_reply(c, d->data, d->nbytes, d->version, c->op_codec);
  }
  if (!c->closing) {
    c->resume_pending = 1;
    uv_async_send(&c->chan->wake);
  }
}

/* conn_forward hands a push (PUSH) or pull R to the aggregator: answered
 * now, or later by conn_op_done with the connection paused meanwhile. */
static void conn_forward(psd_conn *c, const ps_req *r, int push, uint32_t codec) {
  psd_shard *sh = c->chan->sh;
  ps_errbuf eb;
  psd_shard_forward_conn(sh, &c->agg_worker1, r->worker);
  c->op = (psd_op){.done = {.fn = conn_op_done, .arg = c}};
  c->op_pending = 1;
  c->op_push = push;
  c->op_codec = codec;
  c->preq_id = c->rx.h.req_id;
  c->paused = 1;
  uv_read_stop((uv_stream_t *)&c->tcp);
  int rc = push ? psd_shard_forward_push(sh, r, &c->op, &eb)
                : psd_shard_forward_pull(sh, r, &c->op, &eb);
  if (rc == 1) return; /* pending (or already answered) */
  c->op_pending = 0;
  if (rc < 0) conn_reply_error(c, rc, eb.msg, 1, 0);
  else conn_pull_reply(c, c->op.done.data, c->op.done.nbytes, c->op.done.version, codec);
  if (c->closing || conn_backlogged(c)) return; /* wr_done resumes */
  c->paused = 0; /* conn_feed goes on with what is staged */
  uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read);
}

/* conn_park keeps pull M (dense or sparse), parked: the connection stops
 * reading until its release (invariant 7). */
static void conn_park(psd_conn *c, Ps__ChanMeta *m) {
  c->parked = 1;
  c->pmeta = m;
  c->preq_id = c->rx.h.req_id;
  c->paused = 1;
  uv_read_stop((uv_stream_t *)&c->tcp);
}

/* conn_pull admits a pull: served now, or parked (then M is kept: returns
 * 1, the caller must not free it; invariant 7). */
static int conn_pull(psd_conn *c, Ps__ChanMeta *m) {
  psd_shard *sh = c->chan->sh;
  ps_errbuf eb;
  uint64_t n = 0, nbytes = 0;
  ps_req r = conn_req(m);
  r.conn_stamp = c->agg_stamp;
  sh->inflight++;
  int rc = conn_spec_err(c, &eb);
  if (rc == 0) rc = psd_shard_payload(sh, &r, 0, &n, &nbytes, &eb);
  if (rc == 0 && sh->agg) {
    conn_forward(c, &r, 0, m->codec);
    return 0;
  }
  if (rc == 0) {
    c->park.done = (psd_done){.fn = conn_unpark, .arg = c};
    rc = psd_shard_pull_admit(sh, m->model, m->worker, m->clock, &c->park, &eb);
  }
  if (rc < 0) {
    conn_reply_error(c, rc, eb.msg, 1, 0);
    return 0;
  }
  if (rc == 1) {
    conn_park(c, m);
    return 1;
  }
  conn_pull_serve(c, m, 0);
  return 0;
}

/* conn_data_room makes the connection's data buffer hold LEN bytes (the
 * current frame's data, or a push's copied from the region); 0, or -1 out
 * of memory (no buffer then). */
static int conn_data_room(psd_conn *c, uint64_t len) {
  if (len <= c->data_cap) return 0;
  free(c->data);
  c->data = NULL;
  c->data_cap = 0;
  /* page-aligned: a push's gradients can then go to the redo log as they
   * are (psd_wal_append_own, written with O_DIRECT from here) */
  void *p;
  if (posix_memalign(&p, 4096, len ? len : 1) != 0) return -1;
  c->data = p;
  c->data_cap = len;
  return 0;
}

/* conn_sum_refused: 0, or PS_EPERM (in c->req_eb) for push R summing
 * workers (an aggregator's sum, ChanMeta.summed) on a root shard's
 * connection that proved no aggregator key: only an aggregator forwards
 * sums (README "Security").  Refused before its data is read (discarded,
 * never buffered) and counted in auth_refused and errors, as a gRPC call
 * refused for the caller's role is; it was in auth_refused only.  An
 * aggregator takes no sum at all (PS_EINVAL, in errors): it forwards to
 * the roots, never to another aggregator, and summed a sum in as the push
 * of its one `worker`, the others' clocks and the clip bound's count
 * left out. */
static int conn_sum_refused(psd_conn *c, const ps_req *r) {
  psd_shard *sh = c->chan->sh;
  if (r->nsummed && sh->agg) {
    psd_shard_count_error(sh);
    return ps_errf(&c->req_eb, PS_EINVAL, "a push that sums %zu workers sent to aggregator "
                   "'%s': an aggregator takes its workers' own pushes; sums go to the root "
                   "shards", r->nsummed, sh->agg_me ? sh->agg_me->name : "?");
  }
  if (!r->nsummed || sh->agg || !c->chan->keys.n || c->role == PS_ROLE_AGGREGATOR) return 0;
  sh->ctr.auth_refused++;
  psd_shard_count_error(sh);
  return ps_errf(&c->req_eb, PS_EPERM, "a push that sums %zu workers needs an aggregator's "
                 "key; this connection proved a %s key", r->nsummed, ps_role_name(c->role));
}

/* conn_push_begin validates a push whose meta is complete and sets up the
 * receipt of its data (invariant 2). */
static void conn_push_begin(psd_conn *c) {
  psd_shard *sh = c->chan->sh;
  const Ps__ChanMeta *m = c->req;
  uint64_t n = 0, nbytes = 0;
  ps_req r = conn_req(m);
  r.conn_stamp = c->agg_stamp;
  sh->inflight++;
  /* a refused sum's layout error, if the aggregator failed to fetch it
   * (spec_err), goes with it: left set, it answered the connection's next
   * request, whose own layout conn_spec_hold then did not wait for */
  c->req_err = conn_sum_refused(c, &r);
  if (c->req_err) c->spec_err = 0;
  else c->req_err = conn_spec_err(c, &c->req_eb);
  if (c->req_err == 0) c->req_err = psd_shard_payload(sh, &r, 1, &n, &nbytes, &c->req_eb);
  c->req_nbytes = nbytes;
  if (c->req_err == 0 && m->shm) { /* invariant 11 */
    c->req_err = conn_shm_check(c, m, nbytes, 0, &c->req_eb);
  } else if (c->req_err == 0 && nbytes != c->rx.h.data_len) {
    psd_shard_count_error(sh);
    c->req_err = ps_errf(&c->req_eb, PS_EINVAL,
                         "push to model '%s': %llu bytes of %s sent, its %llu elements need %llu",
                         m->model, (unsigned long long)c->rx.h.data_len, ps_codec_name(r.codec),
                         (unsigned long long)n, (unsigned long long)nbytes);
  }
  if (c->req_err == 0 && !m->shm && conn_data_room(c, c->rx.h.data_len) < 0)
    c->req_err = ps_errf(&c->req_eb, PS_ENOMEM, "push to model '%s': out of memory", m->model);
  c->rx.state = c->req_err ? PS_CHAN_RX_DISCARD : PS_CHAN_RX_DATA;
  c->rx.got = 0;
}

/* conn_push_ack_to answers applied push REQ_ID. */
static void conn_push_ack_to(psd_conn *c, uint64_t req_id, uint64_t version) {
  Ps__ChanMeta r = PS__CHAN_META__INIT;
  r.op = PS__CHAN_OP__CHAN_PUSH;
  r.version = version;
  conn_reply_to(c, req_id, &r, NULL, 0, 0, 1, 0);
}

/* conn_push_ack answers the applied push just read. */
static void conn_push_ack(psd_conn *c, uint64_t version) {
  conn_push_ack_to(c, c->rx.h.req_id, version);
}

/* conn_sparse_ack answers an applied sparse push (invariant 2b). */
static void conn_sparse_ack(psd_conn *c) {
  Ps__ChanMeta r = PS__CHAN_META__INIT;
  r.op = PS__CHAN_OP__CHAN_SPARSE_PUSH;
  conn_reply(c, &r, NULL, 0, 0, 1, 0);
}

/* conn_push_synced answers a push once its log record is synced, or the
 * log's error, and resumes the connection (invariant 7a). */
static void conn_push_synced(psd_done *d, int status, const char *msg) {
  psd_conn *c = d->arg;
  int sparse = c->ssparse;
  c->syncing = c->ssparse = 0;
  if (status == 0 && sparse) {
    conn_sparse_ack(c);
  } else if (status == 0) {
    conn_push_ack(c, c->sversion);
  } else {
    psd_shard_count_error(c->chan->sh);
    conn_reply_error(c, status, msg, 1, 0);
  }
  if (!c->closing) {
    c->resume_pending = 1;
    uv_async_send(&c->chan->wake);
  }
}

/* conn_ack_unlink takes A off its connection's list (invariant 7b). */
static void conn_ack_unlink(conn_ack *a) {
  psd_conn *c = a->conn;
  if (a->prev) a->prev->next = a->next;
  else c->acks = a->next;
  if (a->next) a->next->prev = a->prev;
  c->nacks--;
}

/* conn_ack_synced answers a push of an unordered-acks connection once its
 * log record is synced, or the log's error (invariant 7b). */
static void conn_ack_synced(psd_done *d, int status, const char *msg) {
  conn_ack *a = d->arg;
  psd_conn *c = a->conn;
  conn_ack_unlink(a);
  if (status == 0) {
    conn_push_ack_to(c, a->req_id, a->version);
  } else {
    psd_shard_count_error(c->chan->sh);
    conn_reply_error_to(c, a->req_id, status, msg, 1, 0);
  }
  free(a);
}

/* conn_push_durable acknowledges the push just applied at VERSION once
 * the log holds it: now, or from the list of acks while reading goes on
 * (7b), or with the connection paused (7a). */
static void conn_push_durable(psd_conn *c, uint64_t version) {
  psd_shard *sh = c->chan->sh;
  conn_ack *a = NULL;
  if (c->unordered && c->nacks < CHAN_MAX_ACKS && (a = calloc(1, sizeof *a))) {
    *a = (conn_ack){.conn = c, .req_id = c->rx.h.req_id, .version = version,
                    .wt.done = {.fn = conn_ack_synced, .arg = a}};
  } else {
    c->swt.done = (psd_done){.fn = conn_push_synced, .arg = c};
  }
  int rc = psd_shard_push_durable(sh, a ? &a->wt : &c->swt, &c->req_eb);
  if (rc == 1 && a) { /* invariant 7b */
    a->next = c->acks;
    if (c->acks) c->acks->prev = a;
    c->acks = a;
    c->nacks++;
    return;
  }
  free(a);
  if (rc < 0) {
    conn_reply_error(c, rc, c->req_eb.msg, 1, 0);
  } else if (rc == 1) { /* invariant 7a */
    c->syncing = 1;
    c->sversion = version;
    c->paused = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
  } else {
    conn_push_ack(c, version);
  }
}

/* conn_push_end applies a push whose data is complete, or answers its
 * error. */
static void conn_push_end(psd_conn *c) {
  psd_shard *sh = c->chan->sh;
  Ps__ChanMeta *m = c->req;
  int rc = c->req_err;
  uint64_t version = 0;
  if (rc == 0) {
    ps_req r = conn_req(m);
    r.grads = m->shm ? (const void *)(c->shm.data + m->shm_off) : c->data;
    r.nbytes = c->req_nbytes; /* the frame's data_len when not in the region (checked) */
    /* logged from the region, or logged and applied from our copy (invariant 11) */
    int lend = m->shm && sh->wal && c->lend, copy = m->shm && sh->wal && !c->lend;
    void *region = c->shm.data;
    size_t region_cap = c->shm.bytes;
    if (sh->agg) {
      conn_forward(c, &r, 1, 0);
      c->rx.state = PS_CHAN_RX_HDR;
      c->rx.got = 0;
      c->req = NULL;
      ps__chan_meta__free_unpacked(m, NULL);
      return;
    }
    /* (a sum without an aggregator's key was refused in conn_push_begin) */
    if (copy && conn_data_room(c, r.nbytes) < 0) {
      rc = ps_errf(&c->req_eb, PS_ENOMEM, "push to model '%s': out of memory", m->model);
    } else {
      if (copy) {
        memcpy(c->data, r.grads, r.nbytes);
        r.grads = c->data;
      }
      /* a redo log may keep the data buffer (and write the gradients from
       * there: psd_wal invariant 8) and give another in its place; data
       * in the region is the client's (invariant 11) */
      if (lend) {
        r.own = &region;
        r.own_cap = &region_cap;
        r.lend = &c->lend->fns;
      } else if (r.grads == c->data) {
        r.own = &c->data;
        r.own_cap = &c->data_cap;
      }
      rc = psd_shard_push(sh, &r, &version, &c->req_eb);
      if (rc == 0 && m->shm) sh->ctr.chan_shm_bytes += r.nbytes;
    }
  }
  c->rx.state = PS_CHAN_RX_HDR;
  c->rx.got = 0;
  c->req = NULL;
  c->req_err = 0;
  if (rc < 0) conn_push_refused(c, c->req_eb.msg);
  if (rc < 0) conn_reply_error(c, rc, c->req_eb.msg, 1, 0);
  else conn_push_durable(c, version);
  ps__chan_meta__free_unpacked(m, NULL);
}

/* conn_data_begin readies the data buffer for the current beat or sparse
 * request, unless it is refused already (c->req_err): its data is then
 * read into scratch.  WHAT names it in an out-of-memory error. */
static void conn_data_begin(psd_conn *c, const char *what) {
  if (c->req_err == 0 && conn_data_room(c, c->rx.h.data_len) < 0)
    c->req_err = ps_errf(&c->req_eb, PS_ENOMEM, "%s: out of memory", what);
  c->rx.state = c->req_err ? PS_CHAN_RX_DISCARD : PS_CHAN_RX_DATA;
  c->rx.got = 0;
}

/* conn_req_take hands over the current beat or sparse request, its data
 * complete: returns its meta (the caller frees it), *RC / *EB its
 * refusal so far; the decoder waits for the next header. */
static Ps__ChanMeta *conn_req_take(psd_conn *c, int *rc, ps_errbuf *eb) {
  Ps__ChanMeta *m = c->req;
  *rc = c->req_err;
  *eb = c->req_eb;
  c->rx.state = PS_CHAN_RX_HDR;
  c->rx.got = 0;
  c->req = NULL;
  c->req_err = 0;
  return m;
}

/* conn_beat_begin readies the data buffer for beat C->req (invariant
 * 2a); one that is too large is read into scratch and refused. */
static void conn_beat_begin(psd_conn *c) {
  c->chan->sh->inflight++;
  c->req_err = 0;
  if (c->rx.h.data_len > CHAN_BEAT_MAX)
    c->req_err = ps_errf(&c->req_eb, PS_EINVAL, "a beat of %llu bytes; at most %u",
                         (unsigned long long)c->rx.h.data_len, CHAN_BEAT_MAX);
  conn_data_begin(c, "beat");
}

/* conn_beat_end answers a beat whose data is complete (invariant 2a). */
static void conn_beat_end(psd_conn *c) {
  psd_shard *sh = c->chan->sh;
  int rc;
  ps_errbuf eb;
  Ps__ChanMeta *m = conn_req_take(c, &rc, &eb);
  Ps__HeartbeatRequest *req = NULL;
  Ps__HeartbeatReply rep = PS__HEARTBEAT_REPLY__INIT;
  int counted = 0; /* psd_shard_heartbeat counts its own refusals in errors */
  if (rc == 0)
    rc = ps_pb_unpack(&ps__heartbeat_request__descriptor, c->data, c->rx.h.data_len,
                      (ProtobufCMessage **)&req, &eb);
  if (rc == 0) counted = (rc = psd_shard_heartbeat(sh, req, &rep, &eb)) < 0;
  if (rc == 0) {
    size_t n = ps__heartbeat_reply__get_packed_size(&rep);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf) {
      ps__heartbeat_reply__pack(&rep, buf);
      Ps__ChanMeta r = PS__CHAN_META__INIT;
      r.op = PS__CHAN_OP__CHAN_BEAT;
      conn_reply(c, &r, buf, n ? n : 1, n, 1, 0);
    } else {
      rc = ps_errf(&eb, PS_ENOMEM, "beat: out of memory");
    }
    free(rep.partitions);
    psd_coord_heartbeat_release(&rep);
  }
  if (rc < 0) {
    if (!counted) psd_shard_count_error(sh);
    conn_reply_error(c, rc, eb.msg, 1, 0);
  }
  if (req) protobuf_c_message_free_unpacked(&req->base, NULL);
  ps__chan_meta__free_unpacked(m, NULL);
}

/* ---- sparse rows (invariant 2b) ----------------------------------------------- */

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "sparse keys travel as little-endian uint64, read in place");

/* conn_is_sparse: M is a sparse pull or push. */
static int conn_is_sparse(const Ps__ChanMeta *m) {
  return (int)m->op == PS__CHAN_OP__CHAN_SPARSE_PULL || (int)m->op == PS__CHAN_OP__CHAN_SPARSE_PUSH;
}

/* psd_chan_sparse_check: see psd_chan.h. */
int psd_chan_sparse_check(const ps_chan_hdr *h, const Ps__ChanMeta *m, ps_errbuf *eb) {
  int pull = (int)m->op == PS__CHAN_OP__CHAN_SPARSE_PULL;
  uint64_t kb = (uint64_t)m->n_keys * sizeof(uint64_t), dl = h->data_len;
  if (pull ? dl == kb : dl >= kb) return 0;
  return ps_errf(eb, PS_EINVAL,
                 "sparse %s '%.40s'/%u: %u keys need %s%llu bytes of keys, the frame carries "
                 "%llu bytes", pull ? "pull" : "push", m->model ? m->model : "", m->table,
                 m->n_keys, pull ? "" : "at least ", (unsigned long long)kb,
                 (unsigned long long)dl);
}

/* conn_sparse_begin checks the data length of sparse request C->req
 * (psd_chan_sparse_check) and readies the data buffer; a request that
 * disagrees is read into scratch and refused, the connection kept. */
static void conn_sparse_begin(psd_conn *c) {
  psd_shard *sh = c->chan->sh;
  sh->inflight++;
  c->req_err = psd_chan_sparse_check(&c->rx.h, c->req, &c->req_eb);
  if (c->req_err) psd_shard_count_error(sh);
  conn_data_begin(c, "sparse request");
}

/* conn_sparse_pull_req describes sparse pull M, its keys in the data
 * buffer (kept while it is parked: a parked connection reads nothing). */
static Ps__SparsePullRequest conn_sparse_pull_req(const psd_conn *c, const Ps__ChanMeta *m) {
  Ps__SparsePullRequest q = PS__SPARSE_PULL_REQUEST__INIT;
  q.model = m->model, q.table = m->table, q.keys = m->n_keys ? c->data : NULL;
  q.n_keys = m->n_keys, q.worker = m->worker, q.clock = m->clock, q.codec = m->codec;
  return q;
}

/* conn_sparse_pull_serve answers sparse pull M now (PARKED_MS: how long
 * it waited parked) or its error. */
static void conn_sparse_pull_serve(psd_conn *c, const Ps__ChanMeta *m, uint32_t parked_ms) {
  Ps__SparsePullRequest q = conn_sparse_pull_req(c, m);
  uint8_t *rows = NULL;
  size_t nbytes = 0;
  ps_errbuf eb;
  int rc = psd_shard_sparse_pull(c->chan->sh, &q, &rows, &nbytes, &eb);
  if (rc < 0) {
    conn_reply_error(c, rc, eb.msg, 1, 0); /* the entry point counted it */
    return;
  }
  Ps__ChanMeta r = PS__CHAN_META__INIT;
  r.op = PS__CHAN_OP__CHAN_SPARSE_PULL;
  r.codec = m->codec;
  r.parked_ms = parked_ms;
  conn_reply(c, &r, rows, nbytes, nbytes, 1, 0); /* bytes_out: counted by the entry point */
}

/* conn_sparse_end serves a sparse request whose data is complete through
 * the entry points of the gRPC calls (psd_shard_sparse_pull / _push: the
 * same checks, codecs, log records), the keys and rows read in place; a
 * pull is admitted under the staleness bound first, parked as a dense
 * one (invariant 7). */
static void conn_sparse_end(psd_conn *c) {
  psd_shard *sh = c->chan->sh;
  int rc;
  ps_errbuf eb;
  Ps__ChanMeta *m = conn_req_take(c, &rc, &eb);
  size_t kb = (size_t)m->n_keys * sizeof(uint64_t);
  uint64_t *keys = m->n_keys ? c->data : NULL;
  if (rc == 0 && (int)m->op == PS__CHAN_OP__CHAN_SPARSE_PULL) {
    Ps__SparsePullRequest q = conn_sparse_pull_req(c, m);
    c->park.done = (psd_done){.fn = conn_unpark, .arg = c};
    rc = psd_shard_sparse_pull_admit(sh, &q, &c->park, &eb);
    if (rc == 1) {
      conn_park(c, m); /* M is kept */
      return;
    }
    if (rc == 0) conn_sparse_pull_serve(c, m, 0);
  } else if (rc == 0) {
    Ps__SparsePushRequest q = PS__SPARSE_PUSH_REQUEST__INIT;
    q.model = m->model, q.table = m->table, q.keys = keys, q.n_keys = m->n_keys;
    q.rows.data = c->data ? (uint8_t *)c->data + kb : NULL, q.rows.len = c->rx.h.data_len - kb;
    q.worker = m->worker, q.clock = m->clock, q.codec = m->codec;
    rc = psd_shard_sparse_push(sh, &q, &eb);
    if (rc == 0) {
      c->swt.done = (psd_done){.fn = conn_push_synced, .arg = c};
      rc = psd_shard_push_durable(sh, &c->swt, &eb);
    }
    if (rc == 1) { /* invariant 7a */
      c->syncing = c->ssparse = 1;
      c->paused = 1;
      uv_read_stop((uv_stream_t *)&c->tcp);
    } else if (rc == 0) {
      conn_sparse_ack(c);
    }
  }
  if (rc < 0 && (int)m->op == PS__CHAN_OP__CHAN_SPARSE_PUSH) conn_push_refused(c, eb.msg);
  if (rc < 0) conn_reply_error(c, rc, eb.msg, 1, 0); /* the entry points counted it */
  ps__chan_meta__free_unpacked(m, NULL);
}

/* conn_req_end acts on the current push or beat, whose data is complete. */
static void conn_req_end(psd_conn *c) {
  if ((int)c->req->op == PS__CHAN_OP__CHAN_BEAT) conn_beat_end(c);
  else if (conn_is_sparse(c->req)) conn_sparse_end(c);
  else conn_push_end(c);
}

/* conn_data_done: the current push's or beat's data is complete: acted
 * on now, or once its MAC arrived and checked out (invariant 10). */
static void conn_data_done(psd_conn *c) {
  if (!c->mac) {
    conn_req_end(c);
    return;
  }
  if (c->rx.state == PS_CHAN_RX_DATA) ps_auth_mac_update(c->mac, 'C', c->data, c->rx.h.data_len);
  c->rx.state = PS_CHAN_RX_MAC;
  c->rx.got = 0;
}

/* conn_mac_done checks a request's MAC and acts on the request; 0 or
 * PS_EPROTO (close: counted in chan_auth_refused). */
static int conn_mac_done(psd_conn *c) {
  if (!ps_auth_mac_verify(c->mac, 'C', c->rx.tag)) {
    c->chan->sh->ctr.chan_auth_refused++;
    ps_warn("channel: a frame's MAC is wrong (changed on the way?); closing the connection");
    return PS_EPROTO;
  }
  if (!c->req_is_pull) {
    conn_req_end(c);
    return 0;
  }
  Ps__ChanMeta *m = c->req;
  c->req = NULL;
  c->req_is_pull = 0;
  c->rx.state = PS_CHAN_RX_HDR;
  c->rx.got = 0;
  if (conn_pull(c, m) != 1) ps__chan_meta__free_unpacked(m, NULL);
  return 0;
}

static int conn_meta_act(psd_conn *c, Ps__ChanMeta *m);

/* conn_spec_done acts on the request whose model's layout the aggregator
 * fetched (status 0) or could not (its error answers the request), and
 * asks for the connection to resume (invariant 7c). */
static void conn_spec_done(psd_done *d, int status, const char *msg) {
  psd_conn *c = d->arg;
  if (!c->spec_pending) return;
  Ps__ChanMeta *m = c->smeta;
  c->spec_pending = 0;
  c->smeta = NULL;
  if (status < 0) {
    c->spec_err = status;
    ps_errf(&c->spec_eb, status, "%s", msg ? msg : ps_strerror(status));
  }
  if (conn_meta_act(c, m) < 0) {
    conn_close(c);
    return;
  }
  if (!c->closing && !c->spec_pending) {
    c->resume_pending = 1;
    uv_async_send(&c->chan->wake);
  }
}

/* conn_spec_hold: 1 when push or pull M waits for its model's layout on
 * an aggregator (the connection paused, M kept; invariant 7c); 0 to act
 * on it now (a failure to wait is the request's answer: spec_err). */
static int conn_spec_hold(psd_conn *c, Ps__ChanMeta *m) {
  psd_shard *sh = c->chan->sh;
  if (!sh->agg || c->spec_err) return 0;
  c->spec = (psd_op){.done = {.fn = conn_spec_done, .arg = c}};
  int rc = psd_shard_forward_spec(sh, m->model, c->agg_stamp, &c->spec, &c->spec_eb);
  if (rc < 0) c->spec_err = rc;
  if (rc != 1) return 0;
  c->spec_pending = 1;
  c->smeta = m;
  c->paused = 1;
  uv_read_stop((uv_stream_t *)&c->tcp);
  return 1;
}

/* conn_meta_done dispatches a frame whose meta is complete.  Returns 0 or
 * a PS_E* code: the connection must be closed. */
static int conn_meta_done(psd_conn *c) {
  Ps__ChanMeta *m;
  ps_errbuf eb;
  if (ps_pb_unpack(&ps__chan_meta__descriptor, c->rx.meta, c->rx.h.meta_len, (ProtobufCMessage **)&m,
                   &eb) < 0) {
    if (!c->hello_done) conn_auth_refused(c, eb.msg); /* a stranger's: counted, not one line each */
    else conn_bad_frame(c, eb.msg);
    return PS_EPROTO;
  }
  c->rx.got = 0;
  c->rx.state = PS_CHAN_RX_HDR;
  if (c->mac && c->hello_done) { /* invariant 10 */
    ps_auth_mac_begin(c->mac, 'C');
    ps_auth_mac_update(c->mac, 'C', c->rx.hdrbuf, sizeof c->rx.hdrbuf);
    ps_auth_mac_update(c->mac, 'C', c->rx.meta, c->rx.h.meta_len);
  }
  return conn_meta_act(c, m);
}

/* conn_bad_op counts and logs request M, which no handler takes after
 * the hello (invariant 6): what it is, so the log says why the client
 * was cut off. */
static void conn_bad_op(psd_conn *c, const Ps__ChanMeta *m) {
  char why[160];
  int op = (int)m->op;
  if (op == PS__CHAN_OP__CHAN_HELLO)
    snprintf(why, sizeof why, "a second hello on a connection past its hello");
  else if (op == PS__CHAN_OP__CHAN_ERROR)
    snprintf(why, sizeof why, "a CHAN_ERROR frame (the shard's to send, not a client's)");
  else if ((op == PS__CHAN_OP__CHAN_PUSH || op == PS__CHAN_OP__CHAN_PULL || conn_is_sparse(m)) &&
           !m->model)
    snprintf(why, sizeof why, "a push or pull (op %d) that names no model", op);
  else if (op == PS__CHAN_OP__CHAN_PULL)
    snprintf(why, sizeof why, "a pull that carries %llu bytes of data",
             (unsigned long long)c->rx.h.data_len);
  else
    snprintf(why, sizeof why, "unknown op %d (a client of another version?)", op);
  conn_bad_frame(c, why);
}

/* conn_meta_act acts on request M (its meta complete, MAC begun): a push
 * or pull of a model whose layout an aggregator does not have yet waits
 * for it first (invariant 7c; acted on again from conn_spec_done).
 * Returns 0 or a PS_E* code: the connection must be closed. */
static int conn_meta_act(psd_conn *c, Ps__ChanMeta *m) {
  int rc = 0;
  if (!c->hello_done) {
    rc = conn_hello(c, m);
  } else if ((int)m->op == PS__CHAN_OP__CHAN_PUSH && m->model) {
    if (conn_spec_hold(c, m)) return 0;
    c->req = m;
    conn_push_begin(c);
    if (c->rx.h.data_len == 0) conn_data_done(c);
    return 0;
  } else if ((int)m->op == PS__CHAN_OP__CHAN_PULL && m->model && c->rx.h.data_len == 0) {
    if (conn_spec_hold(c, m)) return 0;
    if (c->mac) { /* served once its MAC checked out */
      c->req = m;
      c->req_is_pull = 1;
      c->rx.state = PS_CHAN_RX_DISCARD;
      conn_data_done(c);
      return 0;
    }
    if (conn_pull(c, m) == 1) return 0; /* parked: M is kept */
  } else if ((int)m->op == PS__CHAN_OP__CHAN_BEAT) {
    c->req = m;
    conn_beat_begin(c);
    if (c->rx.h.data_len == 0) conn_data_done(c);
    return 0;
  } else if (conn_is_sparse(m) && m->model) {
    c->req = m;
    conn_sparse_begin(c);
    if (c->rx.h.data_len == 0) conn_data_done(c);
    return 0;
  } else {
    conn_bad_op(c, m);
    rc = PS_EPROTO;
  }
  ps__chan_meta__free_unpacked(m, NULL);
  return rc;
}

/* conn_too_big answers a request whose header announces data over
 * limits.max_request_bytes (invariant 6): a CHAN_ERROR that names the
 * limit, then the close once it is written; nothing more is read (the
 * data that follows cannot be skipped cheaply, nor trusted). */
static int conn_too_big(psd_conn *c) {
  psd_shard *sh = c->chan->sh;
  char msg[240];
  snprintf(msg, sizeof msg, "a request with %llu bytes of data: over this shard's "
           "limits.max_request_bytes %llu; the connection is closed (split the request, or "
           "raise the limit on every shard)", (unsigned long long)c->rx.h.data_len,
           (unsigned long long)sh->cfg->max_request_bytes);
  conn_bad_frame(c, msg);
  psd_shard_count_error(sh);
  c->paused = 1; /* the decoder stops at the next step (rx_more) */
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->rx.h.meta_len = 0; /* the decoder makes no room for a meta it will not read */
  conn_reply_error(c, PS_ETOOBIG, msg, 0, 1);
  return 0;
}

/* conn_hdr_done checks a complete header; 0 or a PS_E* code (close). */
static int conn_hdr_done(psd_conn *c) {
  int rc = ps_chan_hdr_decode(&c->rx.h, c->rx.hdrbuf, c->chan->sh->cfg->max_request_bytes);
  if (rc == PS_ETOOBIG && c->hello_done && c->rx.h.meta_len) return conn_too_big(c);
  if (rc < 0 || c->rx.h.meta_len == 0) {
    if (!c->hello_done) {
      conn_auth_refused(c, "a malformed frame header before the hello");
    } else {
      char why[200];
      snprintf(why, sizeof why, "a malformed frame header (magic 0x%08x, version %u, flags "
               "0x%x, meta %u bytes, data %llu bytes; want magic 0x%08x, version %d, a meta "
               "of 1..%u bytes)", c->rx.h.magic, c->rx.h.version, c->rx.h.flags,
               c->rx.h.meta_len, (unsigned long long)c->rx.h.data_len, PS_CHAN_MAGIC,
               PS_CHAN_VERSION, (unsigned)PS_CHAN_MAX_META);
      conn_bad_frame(c, why);
    }
    return rc < 0 ? rc : PS_EPROTO;
  }
  if (!!(c->rx.h.flags & PS_CHAN_FLAG_MAC) != !!c->mac) { /* invariant 10 */
    if (c->mac) c->chan->sh->ctr.chan_auth_refused++; /* a frame without its MAC */
    else if (c->hello_done) conn_bad_frame(c, "a frame flagged with a MAC the hello did not agree on");
    return PS_EPROTO;
  }
  if (!c->hello_done && (c->rx.h.meta_len > PS_CHAN_HELLO_META_MAX || c->rx.h.data_len)) {
    conn_auth_refused(c, "a first frame too large for a hello");
    return PS_EPROTO; /* invariant 8: no big buffer for a peer that has not said hello */
  }
  return 0; /* the decoder makes room for the meta */
}

/* ---- receive ---------------------------------------------------------------- */

/* The decoder's callbacks (ps_chan_rx_ops) over a connection. */
static int rx_more(void *arg) {
  psd_conn *c = arg;
  if (conn_backlogged(c) && !c->paused) { /* invariants 4, 4a */
    c->paused = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
  }
  return !c->paused && !c->closing;
}
static int rx_hdr(void *arg) { return conn_hdr_done(arg); }
static int rx_meta(void *arg) { return conn_meta_done(arg); }
static int rx_mac(void *arg) { return conn_mac_done(arg); }
static void rx_data(void *arg, const uint8_t *p, size_t n) {
  psd_conn *c = arg;
  memcpy((uint8_t *)c->data + c->rx.got, p, n);
}
static void rx_discard(void *arg, const uint8_t *p, size_t n) {
  psd_conn *c = arg;
  if (c->mac) ps_auth_mac_update(c->mac, 'C', p, n);
}
static int rx_data_done(void *arg) {
  conn_data_done(arg);
  return 0;
}

static const ps_chan_rx_ops conn_rx_ops = {.more = rx_more, .hdr = rx_hdr, .meta = rx_meta,
                                           .data = rx_data, .discard = rx_discard,
                                           .data_done = rx_data_done, .mac_done = rx_mac};

/* conn_feed parses staged bytes until they run out or the connection
 * pauses (invariant 4).  Returns 0 or a PS_E* code (close). */
static int conn_feed(psd_conn *c) {
  long used = ps_chan_rx_feed(&c->rx, c->stage + c->stage_off, c->stage_len - c->stage_off,
                              &conn_rx_ops, c);
  if (used < 0) return (int)used;
  c->stage_off += (size_t)used;
  rx_more(c); /* pauses on a full write queue after the last step too */
  return 0;
}

/* conn_alloc: the staging buffer, or the remaining span of the push being
 * received when it is large (invariant 1). */
static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  psd_conn *c = h->data;
  uint64_t left = c->rx.h.data_len - c->rx.got;
  c->direct = (c->rx.state == PS_CHAN_RX_DATA || c->rx.state == PS_CHAN_RX_DISCARD) && left >= CHAN_STAGE;
  c->stage_off = c->stage_len = 0; /* only called once the stage is parsed */
  if (c->direct && c->rx.state == PS_CHAN_RX_DATA) {
    size_t n = left > (1u << 30) ? (1u << 30) : (size_t)left;
    *buf = uv_buf_init((char *)c->data + c->rx.got, (unsigned)n);
  } else if (c->direct) { /* discarded in bulk */
    *buf = uv_buf_init((char *)c->stage, left < CHAN_STAGE ? (unsigned)left : CHAN_STAGE);
  } else {
    *buf = uv_buf_init((char *)c->stage, CHAN_STAGE);
  }
}

/* conn_read: libuv's read callback. */
static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  psd_conn *c = s->data;
  (void)buf;
  if (nread < 0) {
    if (c->rx.state != PS_CHAN_RX_HDR || c->rx.got) psd_shard_count_error(c->chan->sh); /* truncated */
    if (c->hello_proving && nread == UV_EOF) /* invariant 9: it refused this shard */
      conn_auth_refused(c, "a client closed after the shard's proof without its own: its "
                           "secret file has another secret for that key id, or it wants "
                           "payload_mac and this shard does not MAC");
    conn_close(c);
    return;
  }
  if (nread == 0) return;
  c->last_ms = uv_now(c->chan->sh->loop);
  int rc = 0;
  if (c->direct) {
    if (c->rx.state == PS_CHAN_RX_DISCARD && c->mac) ps_auth_mac_update(c->mac, 'C', c->stage, (size_t)nread);
    c->rx.got += (uint64_t)nread;
    if (c->rx.got == c->rx.h.data_len) conn_data_done(c);
  } else {
    c->stage_len = (size_t)nread;
    rc = conn_feed(c);
  }
  if (rc < 0) {
    if (rc != PS_ENOMEM) psd_shard_count_error(c->chan->sh);
    ps_debug("channel: closing a connection: %s", ps_strerror(rc));
    conn_close(c);
  }
}

/* conn_resume restarts reading after backpressure eased: staged bytes
 * first. */
static void conn_resume(psd_conn *c) {
  c->paused = 0;
  int rc = conn_feed(c);
  if (rc < 0) {
    psd_shard_count_error(c->chan->sh);
    conn_close(c);
    return;
  }
  if (!c->paused && !c->closing) uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read);
}

/* ---- connections ------------------------------------------------------------ */

static void conn_closed(uv_handle_t *h) {
  psd_conn *c = h->data;
  psd_chan *ch = c->chan;
  if (c->req) {
    ps__chan_meta__free_unpacked(c->req, NULL);
    /* a push whose data never came (a pull waiting for its MAC is not in flight) */
    if (!c->req_is_pull && ch->sh->inflight) ch->sh->inflight--;
  }
  ps_auth_mac_free(c->mac);
  ps_chan_rx_release(&c->rx);
  if (c->shm.map && ch->sh->ctr.chan_shm_conns) ch->sh->ctr.chan_shm_conns--;
  if (c->lend) { /* the log may still read the region (invariant 11) */
    c->lend->shm = c->shm;
    conn_lend_release(c->lend);
  } else {
    ps_shm_release(&c->shm); /* its descriptor was closed by conn_close */
  }
  free(c->data);
  free(c->spare);
  OPENSSL_cleanse(&c->key, sizeof c->key);
  free(c);
  ch->handles--;
  chan_maybe_free(ch);
}

/* conn_close unlinks C and closes its handle (idempotent); a parked pull
 * is cancelled (invariant 7). */
static void conn_close(psd_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  if (c->parked) {
    psd_shard *sh = c->chan->sh;
    psd_clock_cancel(sh->clock, &c->park);
    if (sh->inflight) sh->inflight--;
    ps__chan_meta__free_unpacked(c->pmeta, NULL);
    c->pmeta = NULL;
    c->parked = 0;
  }
  if (c->syncing) {
    psd_shard *sh = c->chan->sh;
    psd_wal_cancel(sh->wal, &c->swt);
    if (sh->inflight) sh->inflight--;
    c->syncing = 0;
  }
  while (c->acks) { /* invariant 7b */
    conn_ack *a = c->acks;
    psd_shard *sh = c->chan->sh;
    conn_ack_unlink(a);
    psd_wal_cancel(sh->wal, &a->wt);
    if (sh->inflight) sh->inflight--;
    free(a);
  }
  if (c->op_pending) {
    psd_shard *sh = c->chan->sh;
    psd_agg_cancel(sh->agg, &c->op);
    if (sh->inflight) sh->inflight--;
    c->op_pending = 0;
  }
  if (c->spec_pending) { /* invariant 7c */
    psd_agg_cancel(c->chan->sh->agg, &c->spec);
    ps__chan_meta__free_unpacked(c->smeta, NULL);
    c->smeta = NULL;
    c->spec_pending = 0;
  }
  psd_shard_forward_conn(c->chan->sh, &c->agg_worker1, UINT32_MAX);
  conn_shm_used(c); /* the descriptor goes now; the mapping with the handle */
  if (c->counted) {
    c->counted = 0;
    c->chan->sh->chan_conns--;
  }
  if (c->prev) c->prev->next = c->next;
  else c->chan->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

/* chan_on_wake resumes the connections whose parked pull was answered
 * (invariant 7); one still over its reply budget resumes from wr_done. */
static void chan_on_wake(uv_async_t *a) {
  psd_chan *ch = a->data;
  for (psd_conn *c = ch->conns, *next; c; c = next) {
    next = c->next;
    if (!c->resume_pending) continue;
    c->resume_pending = 0;
    if (conn_may_resume(c)) conn_resume(c);
  }
}

/* chan_hello_ms: the hello's deadline (invariant 8a). */
static uint64_t chan_hello_ms(const psd_chan *ch) {
  uint64_t idle = ch->sh->cfg->idle_timeout_ms;
  return idle < CHAN_HELLO_MS ? idle : CHAN_HELLO_MS;
}

/* conn_hello_late closes C, accepted hello_ms ago and still in its hello
 * (invariant 8a): counted in chan_idle_closed, logged at most every
 * CHAN_REFUSE_LOG_MS. */
static void conn_hello_late(psd_conn *c, uint64_t hello_ms) {
  psd_chan *ch = c->chan;
  char why[160];
  snprintf(why, sizeof why, "no hello within %llu ms of the connect (a stranger holding a "
           "slot, or a client on a very slow path)", (unsigned long long)hello_ms);
  ch->sh->ctr.chan_idle_closed++;
  chan_said_verb(ch, &ch->hello_late_n, &ch->hello_late, "closed", "connection(s)", why);
  conn_close(c);
}

/* chan_slow_ms: how long a connection with replies queued may take none
 * before it counts as a slow reader (invariant 4a): CHAN_SLOW_MS, or a
 * quarter of idle_timeout_ms when that is shorter (a reader that slow is
 * closed as idle soon anyway). */
static uint64_t chan_slow_ms(const psd_chan *ch) {
  uint64_t q = ch->sh->cfg->idle_timeout_ms / 4;
  return q < CHAN_SLOW_MS ? q : CHAN_SLOW_MS;
}

/* chan_shed closes slow readers while the channel's queued replies are
 * over limits.max_queued_bytes (invariant 4a): the one holding the most
 * first, until the rest fit or none is slow.  A closed connection's
 * replies are freed when libuv cancels them (next loop turn), so the
 * bytes still held are reckoned here. */
static void chan_shed(psd_chan *ch, uint64_t now) {
  uint64_t limit = ch->sh->cfg->max_queued_bytes, held = ch->queued, slow_ms = chan_slow_ms(ch);
  while (held > limit) {
    psd_conn *worst = NULL;
    for (psd_conn *c = ch->conns; c; c = c->next)
      if (!c->closing && c->queued && now - c->wrote_ms >= slow_ms &&
          (!worst || c->queued > worst->queued))
        worst = c;
    if (!worst) return; /* every holder reads: the replies drain */
    char why[400], peer[96];
    snprintf(why, sizeof why, "the last, %s, held %llu KiB of replies and took none for %llu "
             "ms while the shard's queued replies (%llu KiB) were over limits.max_queued_bytes "
             "(%llu KiB): a client that does not read its replies",
             conn_peer(worst, peer, sizeof peer), (unsigned long long)worst->queued >> 10,
             (unsigned long long)(now - worst->wrote_ms), (unsigned long long)held >> 10,
             (unsigned long long)limit >> 10);
    chan_said_verb(ch, &ch->sh->ctr.chan_slow_closed, &ch->slow, "closed",
                   "slow reader connection(s)", why);
    held -= worst->queued;
    conn_close(worst);
  }
}

/* chan_sweep closes the connections idle for idle_timeout_ms (invariant
 * 8), those past their hello's deadline (8a) and slow readers (4a). */
static void chan_sweep(uv_timer_t *t) {
  psd_chan *ch = t->data;
  psd_shard *sh = ch->sh;
  uint64_t now = uv_now(sh->loop), hello_ms = chan_hello_ms(ch);
  /* after a loop that stood still longer than the hello's deadline (a
   * long flush on the loop thread), hellos may be waiting unread in their
   * sockets: this round closes none for lateness (the loop reads first) */
  int stalled = ch->swept_ms && now - ch->swept_ms > hello_ms;
  ch->swept_ms = now;
  chan_said_tail(ch, ch->hello_late_n, &ch->hello_late, "closed", "connection(s)",
                 "no hello in time");
  if (sh->ctr.chan_refused > ch->refused.logged && now - ch->refused.ms >= CHAN_REFUSE_LOG_MS) {
    /* the tail of a burst that chan_refuse did not log */
    ps_warn("channel: refused %llu more connection(s) in the last %llu s "
            "(limits.max_connections %u, %u open, or short of file descriptors)",
            (unsigned long long)(sh->ctr.chan_refused - ch->refused.logged),
            (unsigned long long)(now - ch->refused.ms) / 1000, sh->cfg->max_connections,
            sh->chan_conns);
    ch->refused.logged = sh->ctr.chan_refused;
    ch->refused.ms = now;
  }
  for (psd_conn *c = ch->conns, *next; c; c = next) {
    next = c->next;
    size_t wq = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (wq < c->last_wq) c->wrote_ms = now; /* the peer takes its replies (4a) */
    if (wq != c->last_wq) { /* a long reply is still moving */
      c->last_wq = wq;
      c->last_ms = now;
    }
    if (!stalled && !c->closing && c->counted && !c->hello_done &&
        now - c->accept_ms >= hello_ms) {
      conn_hello_late(c, hello_ms);
      continue;
    }
    if (c->closing || c->parked || c->op_pending || c->spec_pending || c->acks ||
        now - c->last_ms < sh->cfg->idle_timeout_ms)
      continue;
    sh->ctr.chan_idle_closed++;
    ps_debug("channel: closing a connection silent for %llu ms",
             (unsigned long long)(now - c->last_ms));
    conn_close(c);
  }
  chan_shed(ch, now);
  chan_said_tail(ch, sh->ctr.chan_slow_closed, &ch->slow, "closed", "slow reader connection(s)",
                 "they held replies unread over limits.max_queued_bytes");
  chan_said_tail(ch, sh->ctr.chan_bad_frames, &ch->bad, "closed",
                 "connection(s) for a frame out of the protocol", "bad frames after the hello");
  chan_said_tail(ch, ch->push_refused_n, &ch->push_refused, "refused", "push(es)",
                 "answered with their error");
  chan_said_tail(ch, ch->shm_failed_n, &ch->shm_failed, "served",
                 "connection(s) over TCP without shared memory", "regions that could not be made");
}

/* chan_refuse closes connection C, which the limits do not admit, without
 * reading from it: with an error frame saying WHY when ANSWER, else at
 * once (the frame's write would hold the descriptor until the next loop
 * turn, and a burst of refusals would eat the reserve it protects).
 * Counted, and logged at most every CHAN_REFUSE_LOG_MS. */
static void chan_refuse(psd_conn *c, const char *why, int answer) {
  psd_chan *ch = c->chan;
  chan_said_count(ch, &ch->sh->ctr.chan_refused, &ch->refused, "connection(s)", why);
  c->paused = 1;
  if (answer)
    conn_reply_error(c, PS_EUNAVAIL, why, 0, 1);
  else
    conn_close(c);
}

/* chan_fds_free returns how many descriptors the process has free, the
 * connection just accepted counted as open (invariant 8).  Counting them
 * (/proc/self/fd) is O(n), so the descriptors that are not the channel's
 * are counted at most every CHAN_FD_SAMPLE_MS (CHAN_FD_SAMPLE_NEAR_MS
 * within twice RESERVE of LIMIT) and the channel's own connections are
 * added exactly. */
static uint64_t chan_fds_free(psd_chan *ch, uint64_t limit, uint64_t reserve) {
  psd_shard *sh = ch->sh;
  uint64_t now = uv_now(sh->loop), age = now - ch->fd_sample_ms;
  uint64_t mine = (uint64_t)sh->chan_conns + ch->shm_fds + 1, open = ch->fd_other + mine;
  uint64_t left = open < limit ? limit - open : 0;
  if (!ch->fd_sampled || age >= CHAN_FD_SAMPLE_MS ||
      (left < 2 * reserve && age >= CHAN_FD_SAMPLE_NEAR_MS)) {
    uint64_t n;
    if (psd_fd_count(&n) == 0) {
      ch->fd_other = n > mine ? n - mine : 0;
      ch->fd_sample_ms = now;
      ch->fd_sampled = 1;
      left = n < limit ? limit - n : 0;
    }
  }
  return left;
}

/* chan_evict makes room for NEW at max_connections (invariant 8a): the
 * oldest connection still in its hello is closed; 0 when one was, 1 when
 * every connection is past its hello (NEW is refused then). */
static int chan_evict(psd_chan *ch, psd_conn *new_) {
  psd_conn *old = NULL;
  for (psd_conn *c = ch->conns; c; c = c->next) /* newest first */
    if (c != new_ && c->counted && !c->closing && !c->hello_done) old = c;
  if (!old) return 1;
  char why[240], me[96];
  snprintf(why, sizeof why, "%s holds its limit of %u channel connections "
           "(limits.max_connections): the oldest one still in its hello was closed to admit "
           "a new one", psd_shard_who(ch->sh, me, sizeof me), ch->sh->cfg->max_connections);
  chan_said_count(ch, &ch->sh->ctr.chan_refused, &ch->refused, "connection(s)", why);
  conn_close(old);
  return 0;
}

/* chan_accept: a new connection on the listener; admitted, or refused
 * when the shard holds max_connections of connections past their hello
 * or is short of descriptors (invariants 8, 8a). */
static void chan_accept(uv_stream_t *server, int status) {
  psd_chan *ch = server->data;
  psd_shard *sh = ch->sh;
  if (status < 0 || ch->closing) return;
  psd_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->chan = ch;
  c->shm.fd = -1;
  uv_tcp_init(sh->loop, &c->tcp);
  c->tcp.data = c;
  ch->handles++;
  c->next = ch->conns;
  if (ch->conns) ch->conns->prev = c;
  ch->conns = c;
  c->last_ms = c->accept_ms = uv_now(sh->loop);
  if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (sh->agg) c->agg_stamp = psd_agg_conn_stamp(sh->agg);
  char why[240], me[96];
  psd_shard_who(sh, me, sizeof me);
  uint64_t limit = psd_fd_limit(), reserve = psd_fd_reserve(limit);
  uint64_t left = limit == UINT64_MAX ? UINT64_MAX : chan_fds_free(ch, limit, reserve);
  if (left < reserve) {
    snprintf(why, sizeof why, "%s is short of file descriptors: %llu of %llu free, "
             "%llu kept for gRPC and RocksDB", me, (unsigned long long)left,
             (unsigned long long)limit, (unsigned long long)reserve);
    chan_refuse(c, why, 0);
    return;
  }
  if (sh->chan_conns >= sh->cfg->max_connections && chan_evict(ch, c)) {
    snprintf(why, sizeof why, "%s holds its limit of %u channel connections "
             "(limits.max_connections)", me, sh->cfg->max_connections);
    chan_refuse(c, why, left / 2 >= reserve);
    return;
  }
  c->counted = 1;
  sh->chan_conns++;
  uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read);
}

/* ---- listener --------------------------------------------------------------- */

/* chan_parse_addr parses "host:port" (IPv4, [IPv6], or a host name, resolved
 * once: its first address) into SA. */
static int chan_parse_addr(const char *addr, struct sockaddr_storage *sa, ps_errbuf *eb) {
  char host[128];
  int port;
  if (ps_addr_split(addr, host, sizeof host, &port, eb) < 0)
    return port < 0 ? ps_errf(eb, PS_EINVAL, "bad port in channel address '%s'", addr)
                    : ps_errf(eb, PS_EINVAL, "bad channel address '%s' (want host:port)",
                              addr ? addr : "");
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)sa) == 0) return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)sa) == 0) return 0;
  /* a host name (localhost, the machine's own name), as gRPC's address
   * takes one and the clients resolve it: its first address */
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
  int g = getaddrinfo(host, NULL, &hints, &ai);
  if (g != 0 || !ai || ai->ai_addrlen > sizeof *sa) {
    if (ai) freeaddrinfo(ai);
    return ps_errf(eb, PS_EINVAL, "channel address '%s': cannot resolve '%s': %s", addr, host,
                   g ? gai_strerror(g) : "no address");
  }
  memcpy(sa, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  int loop;
  if (sa->ss_family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    in->sin_port = htons((uint16_t)port);
    loop = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
    in6->sin6_port = htons((uint16_t)port);
    loop = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
  }
  /* Debian maps a machine's own name to 127.0.1.1 in /etc/hosts */
  if (loop && strcasecmp(host, "localhost") != 0)
    ps_warn("channel address '%s': '%s' is a loopback address here: workers on other hosts "
            "cannot reach this shard's channel (write its IP address)", addr, host);
  return 0;
}

static void chan_listener_closed(uv_handle_t *h) {
  psd_chan *ch = h->data;
  ch->handles--;
  chan_maybe_free(ch);
}

/* psd_chan_start: see psd_chan.h. */
int psd_chan_start(psd_shard *sh, ps_errbuf *eb) {
  struct sockaddr_storage sa;
  int rc = chan_parse_addr(sh->me->channel_addr, &sa, eb);
  if (rc < 0) return rc;
  psd_chan *ch = calloc(1, sizeof *ch);
  if (!ch) return ps_errf(eb, PS_ENOMEM, "out of memory");
  if (sh->cfg->security.secret_file &&
      (rc = ps_auth_load(&ch->keys, sh->cfg->security.secret_file, eb)) < 0) {
    free(ch);
    return rc;
  }
  ch->sh = sh;
  uv_tcp_init(sh->loop, &ch->listener);
  ch->listener.data = ch;
  ch->handles = 1;
  int r = uv_tcp_bind(&ch->listener, (const struct sockaddr *)&sa, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&ch->listener, 128, chan_accept);
  if (r < 0) {
    rc = ps_errf(eb, r == UV_EADDRINUSE || r == UV_EACCES || r == UV_EADDRNOTAVAIL
                         ? PS_EUNAVAIL : PS_EIO,
                 "cannot listen on channel address '%s': %s", sh->me->channel_addr,
                 uv_strerror(r));
    ch->closing = 1;
    uv_close((uv_handle_t *)&ch->listener, chan_listener_closed);
    return rc;
  }
  uv_async_init(sh->loop, &ch->wake, chan_on_wake);
  ch->wake.data = ch;
  ch->handles++;
  uint64_t sweep_ms = chan_hello_ms(ch) / 4; /* <= idle_timeout_ms / 4 (invariant 8a) */
  if (sweep_ms > CHAN_SWEEP_MS) sweep_ms = CHAN_SWEEP_MS;
  if (sweep_ms == 0) sweep_ms = 1;
  uv_timer_init(sh->loop, &ch->sweep);
  ch->sweep.data = ch;
  ch->handles++;
  uv_timer_start(&ch->sweep, chan_sweep, sweep_ms, sweep_ms);
  ch->listening = 1;
  sh->chan = ch;
  return 0;
}

/* psd_chan_stop_accepting: see psd_chan.h. */
void psd_chan_stop_accepting(psd_shard *sh) {
  psd_chan *ch = sh->chan;
  if (!ch || !ch->listening) return;
  ch->listening = 0;
  uv_close((uv_handle_t *)&ch->listener, chan_listener_closed);
}

/* psd_chan_close: see psd_chan.h. */
void psd_chan_close(psd_shard *sh) {
  psd_chan *ch = sh->chan;
  if (!ch || ch->closing) return;
  psd_chan_stop_accepting(sh);
  ch->closing = 1;
  while (ch->conns) conn_close(ch->conns);
  uv_close((uv_handle_t *)&ch->wake, chan_listener_closed);
  uv_close((uv_handle_t *)&ch->sweep, chan_listener_closed);
  chan_maybe_free(ch);
}

/* psd_chan_reload_keys: see psd_chan.h. */
int psd_chan_reload_keys(psd_shard *sh, size_t *nkeys, ps_errbuf *eb) {
  psd_chan *ch = sh->chan;
  if (!ch || !sh->cfg->security.secret_file)
    return ps_errf(eb, PS_ENOTSUP, "no security.secret_file to reload");
  ps_auth_keys k;
  int rc = ps_auth_load(&k, sh->cfg->security.secret_file, eb);
  if (rc < 0) return rc;
  ps_auth_release(&ch->keys); /* connections mid-hello hold copies (invariant 9) */
  ch->keys = k;
  *nkeys = k.n;
  if (sh->agg) psd_agg_reload_key(sh->agg); /* its own key towards the roots, too */
  return 0;
}

/* psd_chan_secured: see psd_chan.h. */
int psd_chan_secured(const psd_shard *sh) { return sh->chan && sh->chan->keys.n > 0; }
