/* psd_chan_client: a tensor-channel client that runs on a libuv loop
 * (DESIGN.md "Hierarchy": an aggregator reaches its root shards without
 * threads).  The twin of ps_chan's blocking client for a process whose
 * loop must never wait: it speaks the same protocol (ps_chan.h: the
 * HELLO, with a cluster secret its challenge-response and the payload
 * MAC), parses replies with the one frame decoder, ps_chan_rx, and
 * finishes each request through its psd_done (psd_done.h) on the loop.
 *
 * Invariants:
 *  1. One client is one connection at a time to one address.  It connects
 *     on the first request (and again on the first one after a failure):
 *     address resolution (uv_getaddrinfo), connect and the HELLO exchange
 *     all run on the loop; requests made meanwhile wait in order and are
 *     written once the hello is done.  psd_chan_client_gen counts the connections
 *     that completed a hello (a new one may reach a restarted shard).
 *  2. Requests are pipelined: written in order (uv_write; a request's
 *     buffers are the caller's until it finishes), answered in order by
 *     the shard (the client does not ask for unordered acks), so a reply
 *     belongs to the oldest request sent; one that does not (its id)
 *     breaks the connection.
 *  3. A shard's refusal (CHAN_ERROR) finishes that request with the
 *     shard's status and message; the connection stays.  Anything else
 *     that goes wrong (refused or failed connect, a hello the shard or this
 *     client rejects, a close, a read or write error, a protocol violation,
 *     a bad MAC) closes the connection and finishes every request made so
 *     far with the error (PS_EUNAVAIL, PS_EPROTO, PS_ETIMEDOUT): a
 *     request always finishes, exactly once.
 *  4. Bounded waits: while a request is unanswered (or a connect or hello
 *     is on the way) and no byte moved for the timeout (connect_ms before
 *     the hello completes, io_ms after), the connection fails with
 *     PS_ETIMEDOUT (invariant 3).
 *  5. A pull's data is read straight into the caller's destination
 *     (libuv's buffer is the destination's remaining span once the data is
 *     due); headers, metas and small tails go through a staging buffer.
 *  6. psd_chan_client_close finishes the requests still unanswered with
 *     PS_ESHUTDOWN and frees the client once its handles closed (run the
 *     loop afterwards); it may be called from a request's fn.  A client
 *     whose handles a walk over the loop closed, the loop run since (a
 *     process that could not start), is freed at once.
 *  7. With psd_chan_client_set_dead_ms, each connection's socket gets
 *     TCP_USER_TIMEOUT and keepalive (ps_chan_set_dead_ms) once it
 *     connected: a cut path breaks it within dead_ms, data in flight or
 *     idle, and it fails as any broken connection does (invariant 3: a
 *     read or write error, PS_EUNAVAIL), the next request connecting
 *     again, instead of resuming whenever TCP's retransmission backoff
 *     next tries (up to minutes; many seconds after a heal). */
#ifndef PSD_CHAN_CLIENT_H
#define PSD_CHAN_CLIENT_H

#include <stdint.h>
#include <uv.h>

#include "ps_error.h"
#include "ps_req.h"
#include "psd_done.h"

struct ps_auth_key;
typedef struct psd_chan_client psd_chan_client;
typedef struct psd_chan_client_req psd_chan_client_req;

/* One request, owned by the caller, who sets done.fn and done.arg; it
 * finishes on the loop (psd_done_finish) with done.version (the shard's),
 * and for a pull done.data = the destination, done.nbytes its size; for a
 * beat done.data = the reply (a packed HeartbeatReply, the client's,
 * valid while fn runs), done.nbytes its size.  gen: psd_chan_client_gen of the
 * connection that carried it (0: none did). */
struct psd_chan_client_req {
  psd_done done;
  uint64_t gen;
  /* psd_chan_client's: */
  psd_chan_client_req *next;
  uint64_t id;
  int op;
  void *dst;
  uint64_t want;
  uint8_t *reply;
  int status;
  char *msg;
  int sent;
  void *wr;               /* its frame until written */
};

/* psd_chan_client_new makes a client of the shard at ADDR ("host:port") in CLUSTER
 * on LOOP; KEY (borrowed for the client's life; NULL: none) authenticates
 * the channel (ps_chan_connect_auth; FLAGS PS_CHAN_AUTH_MAC insists on the
 * payload MAC).  Timeouts as invariant 4.  Nothing connects yet.  0 or
 * PS_ENOMEM / PS_EINVAL (a bad address). */
int psd_chan_client_new(psd_chan_client **out, uv_loop_t *loop, const char *addr,
                        const char *cluster, const struct ps_auth_key *key, int flags,
                        int connect_ms, int io_ms, ps_errbuf *eb);

/* psd_chan_client_push sends push R (ps_req.h; R->grads, R->nbytes in R->codec,
 * borrowed until Q finishes; R itself only for the call).  psd_chan_client_pull
 * asks for R's chunks in R->codec, read into R->out (R->nbytes; another
 * byte count from the shard finishes Q with PS_EINVAL, R->out untouched
 * but for nothing).  psd_chan_client_beat sends a packed HeartbeatRequest (LEN
 * bytes at REQ, borrowed until Q finishes).  Each returns 0 (Q finishes
 * later, exactly once) or a PS_E* code (Q unused: no memory, or the
 * client is closed). */
int psd_chan_client_push(psd_chan_client *c, const ps_req *r, psd_chan_client_req *q,
                         ps_errbuf *eb);
int psd_chan_client_pull(psd_chan_client *c, const ps_req *r, psd_chan_client_req *q,
                         ps_errbuf *eb);
int psd_chan_client_beat(psd_chan_client *c, const void *req, size_t len,
                         psd_chan_client_req *q, ps_errbuf *eb);

/* psd_chan_client_inflight: requests made and not finished. */
size_t psd_chan_client_inflight(const psd_chan_client *c);

/* psd_chan_client_gen: connections that completed a hello so far. */
uint64_t psd_chan_client_gen(const psd_chan_client *c);

/* psd_chan_client_set_dead_ms: invariant 7 for C's connections from now
 * on, the one up now too (DEAD_MS <= 0: none from now on, the default). */
void psd_chan_client_set_dead_ms(psd_chan_client *c, int dead_ms);

/* psd_chan_client_close: invariant 6 (NULL is fine). */
void psd_chan_client_close(psd_chan_client *c);

#endif
