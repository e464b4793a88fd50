/* ps_chan: the tensor channel — framing shared by server and client, and
 * the blocking client used by psw, psctl and tests.
 *
 * A frame is a 32-byte fixed header (little-endian):
 *   u32 magic 'PSC1' (0x31435350) | u16 version (1) | u16 flags (0)
 *   u32 meta_len | u32 reserved (0) | u64 data_len | u64 request id
 * then meta_len bytes of a ps.ChanMeta message, then data_len bytes of
 * tensor data in the meta's codec (ps_codec.h; 0: raw float32
 * little-endian), read straight into its final memory.  A connection
 * starts with a HELLO frame (protocol version, cluster name, and with a
 * cluster secret a key id and nonce) answered by HELLO (with a secret: the
 * shard's nonce and proof, then the client's proof in a second HELLO,
 * answered by HELLO; ps_auth.h); anything else first, or a
 * bad magic/version/length, closes the connection.  Replies carry the
 * request id of their request; a server answers one connection's requests
 * in order, except that a client whose first HELLO set unordered_acks,
 * answered by a last HELLO that also sets it, may get a push's answer
 * after the answers of requests behind it (a push that waits for its
 * redo-log sync under durability `sync`: the shard goes on serving; the
 * push is acknowledged only once synced).  Errors come back as CHAN_ERROR
 * frames with status + message.
 *
 * Shared memory: a client on the shard's host may ask in its first HELLO
 * for a region of shm_bytes; the shard's last HELLO reply may offer one
 * (ps_shm.h; psd_chan invariant 11 says when), which the client maps.
 * Then a PUSH or PULL of fp32 data may set shm and shm_off in its meta and
 * carry no data: the push's payload lies in the region at shm_off, the
 * pull's reply (shm set, no data) put the values there.  Frames, their
 * order, acknowledgements, errors and parking are as over TCP; only the
 * payload bytes skip the socket.  ps_chan_connect_shm asks for it; the
 * client uses it by itself (ps_chan.c invariant 7), and in place, without
 * a copy, when the caller's push or pull segments already lie in the
 * region (ps_chan_shm). */
#ifndef PS_CHAN_H
#define PS_CHAN_H

#include <stddef.h>
#include <stdint.h>

#include <sys/uio.h>

#include "ps_auth.h"
#include "ps_error.h"
#include "ps_req.h"

#define PS_CHAN_MAGIC 0x31435350u
#define PS_CHAN_VERSION 1
#define PS_CHAN_HDR_LEN 32
/* Header flag: the frame ends in a PS_AUTH_MAC-byte MAC after its data
 * (security.payload_mac; ps_auth.h), not counted in data_len. */
#define PS_CHAN_FLAG_MAC 1u
#define PS_CHAN_MAX_META (1u << 24)
/* A server takes at most this much meta before the peer's HELLO (a hello
 * is tens of bytes; its auth proof will add tens more): a peer that has
 * not said who it is must not make the server buffer PS_CHAN_MAX_META. */
#define PS_CHAN_HELLO_META_MAX 4096u

typedef struct ps_chan_hdr {
  uint32_t magic;
  uint16_t version;
  uint16_t flags;
  uint32_t meta_len;
  uint32_t reserved;
  uint64_t data_len;
  uint64_t req_id;
} ps_chan_hdr;

void ps_chan_hdr_encode(uint8_t out[PS_CHAN_HDR_LEN], const ps_chan_hdr *h);

/* ps_chan_hdr_decode parses IN; PS_EPROTO for a bad magic, version,
 * unknown flag, reserved field or meta_len > PS_CHAN_MAX_META, PS_ETOOBIG
 * for data_len > MAX_DATA. */
int ps_chan_hdr_decode(ps_chan_hdr *h, const uint8_t in[PS_CHAN_HDR_LEN], uint64_t max_data);

/* ---- receiving frames: one decoder for the client and the shard ----------
 *
 * ps_chan_rx cuts the bytes of one direction of a connection into frames:
 * the header, meta_len bytes of meta, data_len bytes of data (into memory
 * its owner names, or discarded) and, when the owner says so, the
 * PS_AUTH_MAC-byte MAC after them.  The owner decides everything else
 * through its callbacks (ps_chan_rx_ops), each called once a part is
 * complete; a callback returns 0 or a PS_E* code, which ends the feed with
 * that code (the connection is then unusable).  The owner may read the
 * data of a DATA part itself (readv / a libuv buffer straight into its
 * memory), advancing got and calling its own data_done when it is in. */
enum { PS_CHAN_RX_HDR, PS_CHAN_RX_META, PS_CHAN_RX_DATA, PS_CHAN_RX_DISCARD, PS_CHAN_RX_MAC };

typedef struct ps_chan_rx {
  int state;                      /* PS_CHAN_RX_*: the part being received */
  uint64_t got;                   /* bytes of that part received */
  uint8_t hdrbuf[PS_CHAN_HDR_LEN];
  ps_chan_hdr h;                  /* the frame's header, once hdr accepted it */
  uint8_t *meta;                  /* h.meta_len bytes (meta_cap allocated) */
  size_t meta_cap;
  uint8_t tag[PS_AUTH_MAC];       /* the frame's MAC */
} ps_chan_rx;

typedef struct ps_chan_rx_ops {
  /* NULL, or 0 to stop the feed before the next step (the owner paused). */
  int (*more)(void *arg);
  /* NULL, or called when a header's first bytes arrive. */
  int (*begin)(void *arg);
  /* The header is in rx->hdrbuf: decode and check it into rx->h (the
   * decoder then makes room for the meta and receives it). */
  int (*hdr)(void *arg);
  /* The meta is in rx->meta (state is HDR again, got 0): act on it, and
   * set state DATA or DISCARD (got 0) when data follows, or MAC. */
  int (*meta)(void *arg);
  /* DATA bytes P[0..N) for data offset rx->got; DISCARD bytes (NULL:
   * dropped). */
  void (*data)(void *arg, const uint8_t *p, size_t n);
  void (*discard)(void *arg, const uint8_t *p, size_t n);
  /* The data is complete: act, or set state MAC (got 0). */
  int (*data_done)(void *arg);
  /* The MAC is in rx->tag (state is HDR again, got 0): check it and act. */
  int (*mac_done)(void *arg);
} ps_chan_rx_ops;

/* ps_chan_rx_feed consumes up to N bytes at P; returns how many it used
 * (fewer when ops->more said stop) or the PS_E* code of the step that
 * failed (PS_ENOMEM: no room for a meta). */
long ps_chan_rx_feed(ps_chan_rx *rx, const uint8_t *p, size_t n, const ps_chan_rx_ops *ops,
                     void *arg);

/* ps_chan_rx_release frees RX's meta buffer. */
void ps_chan_rx_release(ps_chan_rx *rx);

typedef struct ps_chan_client ps_chan_client;

/* ps_chan_connect connects to ADDR ("host:port") and exchanges HELLO with
 * CLUSTER within TIMEOUT_MS, which also becomes the client's I/O timeout
 * (no byte moving for that long fails a call with PS_ETIMEDOUT).  *OUT is
 * closed with ps_chan_close.  Not thread-safe: one thread uses a client at
 * a time (different clients are independent). */
int ps_chan_connect(ps_chan_client **out, const char *addr, const char *cluster,
                    int timeout_ms, ps_errbuf *eb);

/* ps_chan_connect_auth is ps_chan_connect with the hello's
 * challenge-response (ps_auth.h) over KEY (borrowed for the call; NULL:
 * none, for shards without security.secret_file).  The shard proves KEY
 * first: a shard that does not, or proves it wrong, fails the connect
 * with PS_EPROTO; a shard that refuses this client's proof answers an
 * error (PS_EPROTO) and closes.  When the shard asks for the payload MAC
 * the client MACs every later frame and checks every reply's MAC (a
 * wrong one breaks the client, PS_EPROTO); FLAGS PS_CHAN_AUTH_MAC
 * (security.payload_mac) refuses a shard that does not ask for it. */
#define PS_CHAN_AUTH_MAC 1
/* FLAGS PS_CHAN_UNORDERED_ACKS asks the shard for unordered acks (the
 * header comment): replies are then matched by request id; a shard that
 * does not agree (an older one) answers in order, which is fine too.
 * ps_chan_unordered says what was agreed. */
#define PS_CHAN_UNORDERED_ACKS 2
/* FLAGS PS_CHAN_SHM_HOLD (with shared memory) says in the hello that this
 * client leaves a push's bytes in the region unchanged until that push's
 * own answer, so that a shard under durability `sync` may log them from
 * there without a copy.  Such a shard agrees in its reply and grants
 * SHM_BYTES: the region is then PS_CHAN_SHM_PUSH_AREAS push areas and one
 * pull area (ps_chan_shm), each SHM_BYTES / (areas + 1) rounded down to a
 * page, and that many unanswered pushes can use it; such a region cannot
 * move (ps_chan_shm_move), and payloads lying in it go over TCP.  Another
 * shard grants two such areas, used
 * as without the flag (an older one: all of SHM_BYTES). */
#define PS_CHAN_SHM_HOLD 4
#define PS_CHAN_SHM_PUSH_AREAS 3
/* ps_chan_shm_area: the bytes of each area of a region of BYTES, held
 * (HOLD: PS_CHAN_SHM_PUSH_AREAS + 1 page-rounded areas) or not (two
 * halves); client and shard both lay the region out by it. */
uint64_t ps_chan_shm_area(uint64_t bytes, int hold);
struct ps_auth_key;
int ps_chan_connect_auth(ps_chan_client **out, const char *addr, const char *cluster,
                         const struct ps_auth_key *key, int flags, int timeout_ms,
                         ps_errbuf *eb);

/* ps_chan_connect_shm is ps_chan_connect_auth asking for SHM_BYTES of
 * shared memory (the header comment; 0: none, as ps_chan_connect_auth).
 * Whether the shard offered it and it could be mapped, ps_chan_shm says;
 * without it everything goes over TCP. */
int ps_chan_connect_shm(ps_chan_client **out, const char *addr, const char *cluster,
                        const struct ps_auth_key *key, int flags, uint64_t shm_bytes,
                        int timeout_ms, ps_errbuf *eb);

/* ps_chan_connect_worker is ps_chan_connect_shm for worker WORKER's own
 * connection to a shard (PS_CHAN_NO_WORKER: none, as ps_chan_connect_shm):
 * the hello names it (ps.proto hello_worker, covered by the proofs), and
 * a shard that is no aggregator counts the worker as heard from once the
 * hello succeeds, so that an aggregator's conditional leave for it does
 * not remove it before its first request (psd_agg.h invariant 6). */
#define PS_CHAN_NO_WORKER UINT32_MAX
int ps_chan_connect_worker(ps_chan_client **out, const char *addr, const char *cluster,
                           const struct ps_auth_key *key, int flags, uint64_t shm_bytes,
                           uint32_t worker, int timeout_ms, ps_errbuf *eb);

/* ps_chan_connect_client is ps_chan_connect_worker (WORKER:
 * PS_CHAN_NO_WORKER for a connection of no worker's own) proving the key AC's
 * secret file names now (ps_auth_client_now; none when AC has no file),
 * and, when the shard refuses that key (PS_EPERM) and an earlier hello
 * proved another, that one (said once per change: the shards were not
 * told the new key yet); a key that completes a hello is noted
 * (ps_auth_client_proved). */
struct ps_auth_client;
int ps_chan_connect_client(ps_chan_client **out, const char *addr, const char *cluster,
                           struct ps_auth_client *ac, int flags, uint64_t shm_bytes,
                           uint32_t worker, int timeout_ms, ps_errbuf *eb);

/* ps_chan_shm: 1 when C has a mapped region, its data start in *DATA and
 * its size in *BYTES (either may be NULL); 0 otherwise (C NULL too).  The
 * first half is where pushes that do not lie in the region are copied,
 * the second where pulls are answered that do not (with
 * PS_CHAN_SHM_HOLD: the first areas and the last); a caller that keeps
 * its own payloads in the region (pushes from, pulls into) moves them
 * without any copy, except in a held region, where they go over TCP.
 * The mapping lives until ps_chan_close. */
int ps_chan_shm(const ps_chan_client *c, void **data, uint64_t *bytes);

/* ps_chan_shm_move moves C's region (its data part) onto AT, memory the
 * caller owns of the region's size, page aligned, whose bytes it keeps
 * (ps_shm_move): from then on ps_chan_shm names AT, payloads the caller
 * keeps there move without any copy, and others go over TCP (the push
 * and pull areas are the caller's memory now); at ps_chan_close AT gets
 * private memory again with the region's last bytes.  0, or a PS_E* code
 * (nothing moved; the region still usable where it was). */
int ps_chan_shm_move(ps_chan_client *c, void *at, ps_errbuf *eb);

/* ps_chan_shm_bytes writes the payload bytes C's pushes sent and its
 * pulls received through shared memory (also counted in ps_chan_bytes).
 * C NULL: 0. */
void ps_chan_shm_bytes(const ps_chan_client *c, uint64_t *sent, uint64_t *received);

/* ps_chan_beat sends a control-plane request on the channel (op
 * CHAN_BEAT: LEN bytes at REQ, a packed HeartbeatRequest) and waits for
 * its reply's data, a packed HeartbeatReply: *REPLY (malloc'd, the caller
 * frees it) of *REPLY_LEN bytes.  Errors as ps_chan_push's; a shard that
 * does not know the op closes the connection (PS_EUNAVAIL).  Needs no
 * request in flight. */
int ps_chan_beat(ps_chan_client *c, const void *req, size_t len, void **reply, size_t *reply_len,
                 ps_errbuf *eb);

/* Sparse rows (CHAN_SPARSE_PULL / CHAN_SPARSE_PUSH; proto/ps.proto): the
 * channel's twins of the SparsePull / SparsePush calls.  Q names the table
 * and the NKEYS distinct KEYS (sent as little-endian uint64, no copy);
 * CODEC is a row codec (ps_codec.h: fp32, fp16, int8).  A pull's reply
 * data, the rows in key order, is read into ROWS (NBYTES: what the rows
 * take in CODEC; a reply of another size is PS_EINVAL, ROWS then
 * untouched); ROWS is borrowed until ps_chan_recv returned the request.
 * A push sends NBYTES of ROWS after the keys (borrowed until send
 * returns).  Replies as ps_chan_recv says; a refusal (unknown table, keys
 * and rows that disagree, a NaN row, ...) is the shard's status with its
 * message, the connection usable.  Only a shard whose HELLO offered
 * PS_CHAN_FEAT_SPARSE (ps_chan_features) serves them; another closes the
 * connection (PS_EUNAVAIL). */
#define PS_CHAN_FEAT_SPARSE 1u
typedef struct ps_chan_sparse {
  const char *model;
  uint32_t table, worker, codec;
  uint64_t clock;
  const uint64_t *keys;
  uint32_t nkeys;
} ps_chan_sparse;
int ps_chan_send_sparse_pull(ps_chan_client *c, const ps_chan_sparse *q, void *rows,
                             size_t nbytes, uint64_t *req_id, ps_errbuf *eb);
int ps_chan_send_sparse_push(ps_chan_client *c, const ps_chan_sparse *q, const void *rows,
                             size_t nbytes, uint64_t *req_id, ps_errbuf *eb);

/* ps_chan_conn_said writes to SAID (CAP bytes) what a server said of a
 * connection in M, a frame of request id 0 before the hello succeeded: an
 * error frame's message ("the shard refused the connection: ...",
 * escaped; refused at accept: limits, descriptors), else "unexpected
 * reply"; returns PS_EUNAVAIL (the refusal passes: retryable, whatever
 * status the frame claims, since nothing authenticates it) or PS_EPROTO. */
struct Ps__ChanMeta;
int ps_chan_conn_said(const struct Ps__ChanMeta *m, char *said, size_t cap);

/* ps_chan_hello_granted copies into *H (its client fields untouched) what
 * the shard's last HELLO M grants, the fields its accept MAC covers
 * (ps_auth_hello); H->token points into M. */
void ps_chan_hello_granted(const struct Ps__ChanMeta *m, ps_auth_hello *h);

/* ps_chan_features: the ChanFeature bits (PS_CHAN_FEAT_*) of the shard's
 * HELLO reply (0 for a shard that predates them; C NULL: 0). */
uint32_t ps_chan_features(const ps_chan_client *c);

/* ps_chan_alive: 1 while C can carry requests (a refusal keeps it
 * usable; a broken connection or timeout does not).  With nothing in
 * flight it also looks, without waiting, whether the shard closed the
 * connection meanwhile (a restart), and then answers 0 (C NULL: 0). */
int ps_chan_alive(ps_chan_client *c);

/* ps_chan_set_timeout changes the I/O timeout (milliseconds, > 0). */
void ps_chan_set_timeout(ps_chan_client *c, int timeout_ms);

/* Blocking push / pull of request R (ps_req.h: model, chunk ids, worker,
 * clock, version, codec; a push's ChanMeta carries them all).  Push sends
 * R->nbytes at R->grads (encoded in R->codec); pull asks for the values
 * in R->codec and reads them straight into R->out (R->nbytes).  Errors:
 * the server's status code with its message (the connection stays
 * usable), PS_EUNAVAIL / PS_EIO when the connection breaks (the client is
 * then unusable: every later call answers PS_EUNAVAIL), PS_ETIMEDOUT after
 * the client's timeout (also unusable).  A pull whose byte count differs
 * from the server's answer is PS_EINVAL and R->out is left untouched.
 * These need no request in flight (PS_EINVAL otherwise). */
int ps_chan_push(ps_chan_client *c, const ps_req *r, uint64_t *version, ps_errbuf *eb);
int ps_chan_pull(ps_chan_client *c, const ps_req *r, uint64_t *version, ps_errbuf *eb);

/* Scatter/gather variants: the payload is NSEG byte segments SRC / DST
 * (typically one per run of chunks, as a shard's chunks lie scattered in
 * a worker's flat parameter vector; only their total must match the
 * payload); R's grads / out are not used.  Data goes from and to these
 * segments directly (writev / readv, no intermediate copy).  All arrays
 * are borrowed for the call. */
int ps_chan_pushv(ps_chan_client *c, const ps_req *r, const struct iovec *src, size_t nseg,
                  uint64_t *version, ps_errbuf *eb);
int ps_chan_pullv(ps_chan_client *c, const ps_req *r, const struct iovec *dst, size_t nseg,
                  uint64_t *version, ps_errbuf *eb);

/* Pipelining: ps_chan_send_pushv / ps_chan_send_pullv send one request and
 * return its id in *REQ_ID without waiting for the reply; ps_chan_recv
 * waits for the oldest request in flight and returns its id, its version
 * and its status (0 or the server's error with its message in EB).
 *
 * Ownership: R and push segments SRC are borrowed only until send
 * returns (the whole frame is written by then).  Pull destinations DST
 * (the segment array is copied; the memory it points at is not) are
 * borrowed until ps_chan_recv has returned that request's id or the
 * client is closed: the client may fill them during any later call on it,
 * since while it sends it also drains the replies that arrive, so a
 * pipeline of large pushes and pulls never deadlocks on full socket
 * buffers.  Any number of requests may be in flight. */
int ps_chan_send_pushv(ps_chan_client *c, const ps_req *r, const struct iovec *src, size_t nseg,
                       uint64_t *req_id, ps_errbuf *eb);
int ps_chan_send_pullv(ps_chan_client *c, const ps_req *r, const struct iovec *dst, size_t nseg,
                       uint64_t *req_id, ps_errbuf *eb);
int ps_chan_recv(ps_chan_client *c, uint64_t *req_id, uint64_t *version, ps_errbuf *eb);

/* ps_chan_recv_id is ps_chan_recv for request ID, which need not be the
 * oldest: the replies read meanwhile are kept for their own calls.
 * PS_EINVAL when ID is not in flight.  ps_chan_done says (without I/O)
 * whether ID's reply has arrived whole, so that ps_chan_recv_id would not
 * wait (0 when ID is not in flight). */
int ps_chan_recv_id(ps_chan_client *c, uint64_t id, uint64_t *version, ps_errbuf *eb);
int ps_chan_done(const ps_chan_client *c, uint64_t id);

/* ps_chan_wait_id waits at most WAIT_MS for request ID's reply, reading
 * what arrives meanwhile (other replies are kept for their own calls):
 * 1 when ID's reply is in whole (ps_chan_recv_id then takes it without
 * waiting), 0 when not yet (C stays usable: no timeout counts here, so a
 * caller can look at a stop request between waits), or a PS_E* code when
 * C broke (PS_EINVAL when ID is not in flight). */
int ps_chan_wait_id(ps_chan_client *c, uint64_t id, int wait_ms, ps_errbuf *eb);

/* ps_chan_unordered: 1 when the hello agreed on unordered acks. */
int ps_chan_unordered(const ps_chan_client *c);

/* ps_chan_last_parked_ms: how long the shard kept the pull that the last
 * ps_chan_recv answered parked (staleness bound; 0 for a push). */
uint32_t ps_chan_last_parked_ms(const ps_chan_client *c);

/* ps_chan_inflight returns the number of requests sent and not yet received. */
size_t ps_chan_inflight(const ps_chan_client *c);

/* ps_chan_bytes writes the bytes C wrote to and read from its socket
 * (frames whole: headers, metas, payloads; hello included), payloads that
 * went through shared memory included (ps_chan_shm_bytes).  C NULL: 0. */
void ps_chan_bytes(const ps_chan_client *c, uint64_t *sent, uint64_t *received);

/* ps_chan_set_bufsize sets the socket's SO_SNDBUF / SO_RCVBUF in bytes
 * (0 leaves that one to the kernel's autotuning, the default). */
int ps_chan_set_bufsize(ps_chan_client *c, int sndbuf, int rcvbuf, ps_errbuf *eb);

/* ps_chan_set_dead_ms makes the kernel abort C's connection once the
 * shard acknowledged nothing for DEAD_MS (ps_addr_dead_after): a cut
 * path then breaks the client (PS_EUNAVAIL, with the kernel's reason:
 * "Connection timed out", or "No route to host" when the host's own link
 * went down) within DEAD_MS, not after TCP's retransmission backoff, and
 * the caller's reconnect takes over.  Should the kernel refuse, the
 * connection is used as it is (said at debug level): it only waits
 * longer on a cut. */
void ps_chan_set_dead_ms(ps_chan_client *c, int dead_ms);

/* ps_chan_fd_set_dead_ms is ps_chan_set_dead_ms for socket FD of a
 * channel connection to ADDR that another client opened (psd_chan_client,
 * an aggregator's link to a root shard). */
void ps_chan_fd_set_dead_ms(int fd, const char *addr, int dead_ms);

/* ps_chan_close closes the connection and frees C (NULL is fine);
 * requests in flight are abandoned. */
void ps_chan_close(ps_chan_client *c);

#endif
