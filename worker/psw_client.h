/* psw_client: a worker's view of the cluster for one model.
 *
 * The client fetches the model's spec with GetModel from any reachable
 * shard, builds the chunk layout over the config's shard ids, checks that
 * every shard holding chunks of it has the model (invariant 10), allocates
 * NBUFS flat parameter vectors and NBUFS flat gradient vectors with the
 * backend's host_alloc (the layout of ps_layout's model offsets, which is
 * also psw_graph's flat vector), and opens one tensor-channel connection
 * per shard.  Each shard's chunks are described once as segments (runs of
 * chunks contiguous in the flat vectors) so that pushes and pulls move
 * bytes straight between the socket and the vectors.
 *
 * Invariants:
 *  1. A pull succeeds only when every shard answered it; a buffer whose
 *     pull failed is never reported as valid, and after any reconnect the
 *     whole vector is pulled again from every shard before the call
 *     returns 0.  So a caller never computes on a partial pull.
 *  2. A push and the pull behind it go out on the same connection, in
 *     that order: the pull sees the push (the shard handles a connection's
 *     requests in order).  Requests go to every shard before any reply is
 *     awaited, so the shards work concurrently without threads.
 *  3. Versions: every pull records each shard's version for the buffer it
 *     filled; a push of gradient buffer B sends, per shard, the version of
 *     parameter buffer B (the parameters those gradients were computed on).
 *  4. A connection that breaks (shard down, restarting, draining, or
 *     silent past the I/O timeout) is reopened with exponential backoff,
 *     100 ms doubling to 2 s, for at most workers.retry_ms in all; a line
 *     on stderr says when it is lost and when it is back.  A push that was
 *     in flight on a broken connection is not resent (it may or may not
 *     have been applied; sending it twice could apply it twice).
 *  5. A shard that refuses a push or pull with PS_EEXPIRED (it declared
 *     the worker dead: psd_clock invariant 9) applied nothing: the client
 *     calls conf->rejoin (register again, rejoin every shard) and pulls
 *     again from every shard; the refused push is dropped, like one lost
 *     with a connection (invariant 4), and retried for at most
 *     workers.retry_ms while the shards still refuse.
 *  6. Codecs: from clock codec_warmup_steps on, a push is encoded in the
 *     model's codec per chunk with error feedback (ps_codec_encode_ef;
 *     the residual per chunk stays with the client across reconnects and
 *     is lost when the worker restarts) and a pull asks for the model's
 *     pull codec and is decoded into the fp32 parameter buffer.
 *  7. Aggregator (workers.aggregator, DESIGN.md "Hierarchy"): every
 *     shard's connection goes to the aggregator's channel address, which
 *     forwards each request to the shard whose chunks it names.  The first
 *     connection that breaks switches the client to the shards' own
 *     addresses for the rest of its life (the reconnects of invariant 4
 *     go there; the connections that did not break stay on the
 *     aggregator until they do); a push left unanswered by the dead
 *     aggregator, on any connection still through it, is not resent, and
 *     the pull repeated behind it asks for the push's clock (the roots may
 *     never have seen that push: they must not wait for it).  A push the
 *     aggregator answers with a retryable error (a root it could not
 *     reach, or whose link failed with the sum in flight; not DEGRADED,
 *     a root's own refusal) is one of unknown fate, as if the connection
 *     had broken (psw_client_pushes_unknown).  psw_client_agg_return,
 *     called by the trainer at an epoch boundary, probes the aggregator
 *     and, when it answers again, moves every connection back to it at
 *     once.
 * 7a. A hung aggregator (stopped, or its loop wedged: its kernel still
 *     acknowledges TCP, so no connection breaks) is found by a liveness
 *     probe (psw_agg_hung): a request on a connection through it that has
 *     had no byte back for half of workers.lease_ms, with no probe
 *     answered within that half lease, opens a new connection to it whose
 *     hello must be answered within a lease (a live aggregator's loop
 *     answers it at once, whatever pulls it holds: psd_agg.h; any answer
 *     counts, a refusal at its connection limit too).  An
 *     unanswered probe ends that wait as an I/O timeout would, and every
 *     later one on a connection through it at once, until
 *     psw_client_agg_return moves back: the connections fail over as in
 *     invariant 7.  A stop shorter than a lease fails nothing over.
 *  8. Deferred acks (conf->defer_acks; for durability `sync`, where a
 *     shard acknowledges a push only once its redo log synced it): the
 *     connections ask for unordered acks (ps_chan.h), and a push/pull
 *     returns once the pull is in, leaving a push answer that is not in
 *     yet pending: the pull has seen the push (the shard applied it before
 *     serving the pull) but the push is not yet acknowledged, so nothing
 *     may count on its durability.  A later round takes it (after it sent
 *     its own requests): as soon as it is in, and by waiting for it once
 *     PSW_CLIENT_ACK_DEPTH later pushes went to that shard, so the sync
 *     overlaps the caller's next steps and between rounds at most that
 *     many pushes per shard are unacknowledged, always the latest ones
 *     (psw_client_acks_pending); psw_client_settle and close take them
 *     all.  It is
 *     counted exactly as one read in its own round: acknowledged, or, when
 *     the connection broke or the shard answered a retryable error
 *     (DEGRADED: the log failed), unanswered and never resent (invariant
 *     4).  A round that finds a shard without a connection (left so by
 *     psw_client_settle) reconnects it before it sends.  Through an
 *     aggregator no answer is left pending: it reads a connection's next
 *     request only once the push before it is answered (psd_chan.c
 *     conn_forward), so the pull's reply never comes first, and a
 *     connection through it that breaks loses at most the round's own
 *     push (invariant 7's failover pull covers it).
 *  9. Shared memory (workers.shared_memory; ps_chan.h "shared memory"):
 *     every connection asks for a region of areas of its shard's fp32
 *     payload each (none with the payload MAC or through an aggregator):
 *     two when it is to move onto the vectors (below), else
 *     PS_CHAN_SHM_PUSH_AREAS + 1 with PS_CHAN_SHM_HOLD (a push is copied
 *     into a push area no unanswered push uses, so that a shard under
 *     durability `sync` logs it from there; other shards grant two); where
 *     the shard offers one, fp32 pushes and pulls go through it (encoded
 *     ones stay on TCP).  With one buffer and a backend that computes on
 *     host memory (the CPU backend), grads[0] and params[0] are the two
 *     halves of one page-aligned mapping, and the region of a shard that
 *     holds the whole model is moved onto it (ps_chan_shm_move): the
 *     shard reads a push straight from the gradient vector and writes a
 *     pull straight into the parameters.  That is safe because such a
 *     client runs its rounds on the caller's thread: the caller writes
 *     gradients only between rounds, when the shard is done with them (a
 *     round ends with the pull, which the shard serves after the push),
 *     and reads parameters only after the round that pulled them.  A
 *     connection closed (reconnect, failover) gives the vectors private
 *     memory with their bytes back, and the next connection's region
 *     takes them over again, bytes kept.  Otherwise the region's areas
 *     are copied through (one copy on this side instead of the socket's
 *     two).  The byte counters count these payloads as before;
 *     psw_client_shm_bytes says how many went through shared memory.
 * 10. The layout is fetched once, at open, and every other shard that
 *     holds chunks of it is asked for the model then: a model on some
 *     shards only (submit refused on the others: limits.max_shard_bytes)
 *     fails the open with PS_ENOENT naming the shards that lack it (a
 *     shard that does not answer cannot tell).  A shard that refuses a push
 *     or pull as naming chunks it does not have, or of another size
 *     (PS_ENOENT, PS_EINVAL), is asked for the model's spec again: when
 *     the model was replaced with another layout (psctl submit --replace)
 *     or removed, the call fails with PS_EINVAL saying so (the worker
 *     must start again: nothing it could push or pull fits any more;
 *     "no longer on the cluster" only from a shard seen holding it, by a
 *     spec or a pull it answered); a replace with the same layout is no
 *     such refusal.  Such a refusal is never PS_ENOENT to the caller.
 * 11. A stop (conf->stop set) ends a round's wait for a pull, which a
 *     shard may hold parked up to pull_timeout_ms, within
 *     PSW_STOP_POLL_MS: the call fails with PS_ESHUTDOWN once every push
 *     answer of the round is in (they are not parked; one that does not
 *     come within PSW_STOP_PUSH_GRACE_MS of the stop, a shard that
 *     hangs, is left in flight too), the pull's reply left in flight, the
 *     connection kept (it is no shard failure).
 *     psw_client_pushes_lost then says whether every push went out and
 *     was acknowledged.
 * 12. A shard that answers is up, whatever it answers: its connection is
 *     kept and its other reply read, but for a push refused for good (not
 *     retryable, not expired: the call fails), whose pull is not waited
 *     for: the refused push raised no clock, so under bsp (or with
 *     overlap under ssp) that pull would wait parked for this worker
 *     itself; its reply is left in flight (deferring acks, a push answer
 *     that comes in while the pull is awaited is taken first).  A pull it held parked past
 *     pull_timeout_ms (PS_ETIMEDOUT naming the slowest worker: the
 *     staleness bound) is pulled again from every shard, with no
 *     reconnect, for as long as the shards answer so (the slowest
 *     worker's lease bounds it when that worker is dead or stopped;
 *     workers.retry_ms does not: no shard failed); the wait is said on
 *     stderr at first, at most every PSW_SAY_AGAIN_MS while it lasts and
 *     when it ends.  A push it refuses as DEGRADED (durability sync, a
 *     failing disk) is not resent (invariant 4; nothing is pulled again:
 *     the round's pull was served), said the same way, and once the shard
 *     has refused pushes for workers.retry_ms the call fails with
 *     PS_EDEGRADED.  A shard that fails again after each reconnect
 *     (the first failure's time counts) is given up once it has failed for
 *     workers.retry_ms.
 * 13. A push a shard may never have applied (unanswered: its connection
 *     broke, or its send failed; or refused, DEGRADED) raised no clock
 *     there, yet the worker goes on past it (invariants 4, 12): under bsp
 *     its next pull would wait on that shard for the worker itself, for
 *     ever (psd_clock invariant 11; a restarted shard's clock of it may
 *     already stand at that step, put there by another request, a table
 *     model's sparse pull).  So the client tells the shard, on its gRPC
 *     address, before its next pull there (a refusal: at once, the pull
 *     behind it parked): a heartbeat with moved_on, the push's clock + 1,
 *     which raises the worker's clock as the push would have (nothing if
 *     it was applied, nor once the worker stepped out of the clock tables
 *     past that step: psd_clock invariant 11; a rejoiner that goes on at
 *     the slowest live clock would otherwise be put back behind its own
 *     next pull).  The push's gradients stay lost (not resent); the
 *     trainer trains its samples again (psw_client_pushes_unknown).
 *     Not under asp (no pull waits), not for a DEGRADED answer that the
 *     push was applied in memory (it raised the clock), and not for a push
 *     sent to an aggregator, which may still forward the sum holding it:
 *     a root told first would let other workers past that step.  But a
 *     push the aggregator answered DEGRADED is one a root refused (the
 *     sum holding it is over: psd_agg.h invariants 2 and 5) or the
 *     aggregator never summed: that root is told as a direct one would be.
 *
 * Thread-safety: a client is used by one thread at a time, except that
 * psw_client_start hands one push/pull to the client's own communication
 * thread, which uses the client until psw_client_wait returns; meanwhile
 * the caller may read and write only the buffers that job does not touch. */
#ifndef PSW_CLIENT_H
#define PSW_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_config.h"
#include "ps_error.h"
#include "ps_gpu.h"
#include "ps_model.h"

#define PSW_CLIENT_MAX_BUFS 2
#define PSW_CLIENT_ACK_DEPTH 2 /* deferred push answers per shard (invariant 8) */

typedef struct psw_client psw_client;

typedef struct psw_client_conf {
  const ps_config *cfg;   /* borrowed for the client's life */
  const char *model;      /* model name (copied) */
  uint32_t worker;        /* worker id sent with every request (the rank) */
  ps_gpu_backend *be;     /* host_alloc/host_free for the vectors; borrowed */
  int nbufs;              /* parameter/gradient buffers, 1..PSW_CLIENT_MAX_BUFS */
  int io_timeout_ms;      /* channel I/O timeout; 0: 10000 */
  /* Set non-zero (by a signal handler) to cut retries short: waits and
   * backoffs then end with PS_ESHUTDOWN.  May be NULL. */
  volatile sig_atomic_t *stop;
  /* Invariant 5: called from the thread that runs the push/pull when a
   * shard refused it as expired; 0 once the worker may go on, else a
   * PS_E* code that ends the call.  NULL: the refusal ends the call. */
  int (*rejoin)(void *arg, ps_errbuf *eb);
  void *rejoin_arg;
  int defer_acks;         /* invariant 8 */
  int reader;             /* psw --evaluate: no training worker, so its connections' hellos
                             name no worker (psd_chan invariant 9a) */
} psw_client_conf;

/* psw_client_open fetches the spec of CONF->model (retrying unreachable
 * shards within workers.retry_ms), builds the layout, allocates the
 * vectors, connects to every shard and starts the communication thread.
 * Errors: PS_ENOENT (no such model on the shards), PS_EINVAL (a bad spec),
 * PS_EUNAVAIL / PS_ETIMEDOUT (no shard reachable within the budget),
 * PS_ENOMEM; message in EB.  *OUT is freed with psw_client_close. */
int psw_client_open(psw_client **out, const psw_client_conf *conf, ps_errbuf *eb);

/* psw_client_check_model asks the shards for MODEL's spec as
 * psw_client_open does first (retrying unreachable ones within
 * workers.retry_ms, STOP ends the wait), and every shard that holds
 * chunks of it for the model (invariant 10), so that a worker learns that
 * the model is missing, everywhere or on some shards, before it
 * registers: 0, PS_ENOENT, or another error as psw_client_open. */
int psw_client_check_model(const ps_config *cfg, const char *model, volatile sig_atomic_t *stop,
                           ps_errbuf *eb);

/* psw_client_close stops the communication thread (after its job), closes
 * the connections and frees the vectors and the spec; NULL is a no-op. */
void psw_client_close(psw_client *c);

/* psw_client_spec_check asks a shard holding the model's chunks for its
 * spec again: 0 when the worker may go on with its own (the same layout,
 * graph, clip norm, codecs and consistency with its staleness: a submit
 * that changed only what the shards apply, such as the optimizer or the
 * seed), PS_EINVAL saying the model
 * is gone or was replaced and the workers must start again (0 when no
 * shard answers: it cannot tell).  Not while a job runs. */
int psw_client_spec_check(psw_client *c, ps_errbuf *eb);

/* psw_client_spec_changes counts the specs that a check (above, or a
 * refusal's: invariant 10) found other than the one before (the open's
 * at first) and let the worker go on with: each is a submit --replace
 * with settings only the shards apply, which restarts the job from its
 * first epoch (psd_clock_job_reset). */
uint64_t psw_client_spec_changes(const psw_client *c);

/* The fetched spec and its layout (borrowed for the client's life). */
const Ps__ModelSpec *psw_client_spec(const psw_client *c);
const ps_layout *psw_client_layout(const psw_client *c);
uint64_t psw_client_nparams(const psw_client *c);

/* Flat parameter / gradient vector BUF (0..nbufs-1), nparams floats of
 * host memory owned by the client. */
float *psw_client_params(psw_client *c, int buf);
float *psw_client_grads(psw_client *c, int buf);

/* psw_client_pushes_lost returns the pushes that were not acknowledged:
 * answered with an error or never (invariants 4, 8), or that a shard
 * never got because it was down when the round went out; compared before
 * and after a round (and psw_client_settle), it says whether that
 * round's push reached and was acknowledged by every shard. */
uint64_t psw_client_pushes_lost(const psw_client *c);

/* psw_client_pushes_unknown returns, of those, the pushes that a shard
 * may not have applied, whose samples are trained again: never sent to it
 * (it was down), whose connection broke before the answer came, that it
 * refused unapplied with a retryable error (draining, restarting) or for
 * an expired lease, or, through the aggregator, that it answered with a
 * root's failure (invariant 7).  A DEGRADED refusal is not counted:
 * invariant 12 goes on without it. */
uint64_t psw_client_pushes_unknown(const psw_client *c);

/* psw_client_pushes_expired returns, of those, the pushes a shard
 * refused because it had declared this worker dead (its lease expired):
 * the trainer says so rather than blame a connection. */
uint64_t psw_client_pushes_expired(const psw_client *c);

/* psw_client_parked_ms returns how long, in all, the shards kept this
 * client's pulls parked by the staleness bound (per round the longest
 * over the shards).  Read it when no push/pull is in flight. */
uint64_t psw_client_parked_ms(const psw_client *c);

/* psw_client_version returns the version shard index SHARD reported for
 * parameter buffer BUF's last pull. */
uint64_t psw_client_version(const psw_client *c, int buf, uint32_t shard);

/* psw_client_push_counts copies, for the first MAX shards in the config's
 * order, the pushes each shard acknowledged to ACKED[k] and those it did
 * not to UNANSWERED[k]: refused (an error answer: nothing applied) or
 * whose answer never came (the connection broke first: applied or not,
 * the worker cannot know; they are not sent again); returns the number of
 * shards.  A push never sent (its shard down) is in neither.  Read it
 * when no push/pull is in flight. */
size_t psw_client_push_counts(const psw_client *c, uint64_t *acked, uint64_t *unanswered,
                              size_t max);

/* psw_client_say_refused warns, per shard, of the pushes a DEGRADED shard
 * refused (invariant 12: the worker went on without them, so the model
 * lacks those updates: a run that ends well must not look complete) and
 * of those it answered as applied in memory only (their sync failed: a
 * crash of the shard loses them); nothing when there were none.  Read it
 * when no push/pull is in flight, at the end of a run. */
void psw_client_say_refused(const psw_client *c);

/* psw_client_bytes writes the bytes this client's tensor-channel
 * connections sent and received in all (frame headers included; closed
 * connections too), and of those sent the push frames' (*PUSH_SENT).
 * Read it when no push/pull is in flight. */
void psw_client_bytes(const psw_client *c, uint64_t *sent, uint64_t *received,
                      uint64_t *push_sent);

/* psw_client_shm_bytes: of the bytes psw_client_bytes counts, the
 * payload bytes (both ways) that went through shared memory (invariant
 * 9).  Read it when no push/pull is in flight. */
uint64_t psw_client_shm_bytes(const psw_client *c);

/* psw_chan_await waits for request ID's reply on CH, looking at *STOP
 * every PSW_STOP_POLL_MS (invariant 11; the sparse tables' client,
 * psw_sparse.h, waits the same way): 0 once the reply is in, or CH broke
 * (ps_chan_recv_id then says how), or nothing arrived on CH for
 * IO_TIMEOUT_MS (CH's I/O timeout is then cut to 1 ms, so that
 * ps_chan_recv_id times out at once: the caller sets it back), at once
 * when STOP is NULL (ps_chan_recv_id then waits out CH's own timeout);
 * PS_ESHUTDOWN once *STOP has been set for GRACE_MS (0 for a pull, which
 * a shard may hold parked; PSW_STOP_PUSH_GRACE_MS for a push's answer,
 * which follows within a sync), the reply left in flight.  *STOP_SEEN
 * (may be NULL: this wait's own) is when a wait first saw the stop (0:
 * none yet): waits that share it share one grace, so that shards that
 * hang cost a stop GRACE_MS in all, not each. */
#define PSW_STOP_POLL_MS 100        /* how often a wait looks at the stop flag */
#define PSW_STOP_PUSH_GRACE_MS 2000 /* a stop waits this long for a push's answer */
int psw_chan_await(ps_chan_client *ch, uint64_t id, volatile sig_atomic_t *stop,
                   int64_t *stop_seen, int grace_ms, int io_timeout_ms);

/* psw_slow_said notes, for WHO ("worker N", ...), that a pull of
 * PULL_CLOCK came back parked past pull_timeout_ms (WHY: the shard's
 * timeout, naming the slowest worker), waiting since *SINCE (0: the
 * first), said last at *SAID: at the first and at most every 10 s
 * (invariant 12; the sparse client says it the same way). */
void psw_slow_said(const char *who, uint64_t pull_clock, int64_t *since, int64_t *said,
                   const char *why);

/* A refusal as expired is handled by a rejoin hook (psw_coord_rejoin:
 * register again, rejoin every shard), for WHO, within RETRY_MS, a STOP
 * ending the backoff naps; AFTER says what follows a rejoin. */
typedef struct psw_rejoin_ctx {
  int (*rejoin)(void *arg, ps_errbuf *eb); /* NULL: no hook, the refusal stands */
  void *arg;
  volatile sig_atomic_t *stop;
  uint32_t retry_ms;
  const char *who, *after;
} psw_rejoin_ctx;

/* psw_rejoin_step handles one refusal as expired (WHY) by R's hook, after
 * a backoff nap (*DELAY, doubling) when the shards refused again, for at
 * most R->retry_ms since *SINCE (set at the first refusal): 0 once
 * rejoined (said with WHY) or when the hook answers 1 (no shard holds the
 * worker expired any more: the refusal's request went out before a
 * rejoin already done; nothing said, so one expiry logs one rejoin),
 * PS_EEXPIRED past retry_ms (or with no hook), PS_ESHUTDOWN on a stop,
 * or the hook's error (invariant 5). */
int psw_rejoin_step(const psw_rejoin_ctx *r, int64_t *since, uint32_t *delay, const char *why,
                    ps_errbuf *eb);

/* psw_retryable says whether ERR means "the shard is (momentarily) not
 * there": the connection is closed and reopened with backoff (invariant
 * 4): ps_err_path_failed, or a shard's PS_EDEGRADED refusal.  Anything
 * else from a shard is an answer and ends the call.  The sparse tables'
 * client (psw_sparse.h) uses the same rule. */
int psw_retryable(int err);

/* psw_client_reconnects counts the connections reopened so far. */
uint64_t psw_client_reconnects(const psw_client *c);

/* psw_client_pull_all pulls every chunk of the model from every shard
 * into parameter buffer PBUF, with the worker's CLOCK.  Returns 0 when the
 * whole vector arrived (invariant 1); PS_EUNAVAIL / PS_ETIMEDOUT when a
 * shard stayed unreachable past the retry budget; PS_ESHUTDOWN when *stop
 * was set; a server error (its status code and message) otherwise. */
int psw_client_pull_all(psw_client *c, int pbuf, uint64_t clock, ps_errbuf *eb);

/* psw_client_push_all pushes gradient buffer GBUF to every shard (with
 * the versions of parameter buffer GBUF) and waits for every answer. */
int psw_client_push_all(psw_client *c, int gbuf, uint64_t clock, ps_errbuf *eb);

/* psw_client_push_pull pushes gradient buffer GBUF (GBUF < 0: nothing)
 * with clock PUSH_CLOCK and, right behind it on each connection, pulls
 * into parameter buffer PBUF (PBUF < 0: nothing) with clock PULL_CLOCK:
 * one round trip per shard, all shards at once.  Returns as
 * psw_client_pull_all; 0 means PBUF holds a complete pull. */
int psw_client_push_pull(psw_client *c, int gbuf, uint64_t push_clock, int pbuf,
                         uint64_t pull_clock, ps_errbuf *eb);

/* psw_client_settle takes every deferred push answer (invariant 8),
 * waiting for those not in yet; afterwards every push sent is counted as
 * acknowledged or unanswered (a shard whose connection broke is marked
 * down; the next push/pull reconnects it).  Returns 0, or a shard's
 * non-retryable answer.  Not while a job runs. */
int psw_client_settle(psw_client *c, ps_errbuf *eb);

/* psw_client_acks_pending: the most deferred push answers any shard
 * still owes (0..PSW_CLIENT_ACK_DEPTH): every push older than that many
 * rounds is answered (invariant 8). */
size_t psw_client_acks_pending(const psw_client *c);

/* psw_client_idle_once has FN(ARG) run once during this thread's next
 * psw_client_push_pull (or _pull_all, _push_all), on this thread, right
 * after the requests went out to every shard and before the first reply
 * is awaited: work that needs no parameters (psw_train: gathering the next
 * batch) then overlaps the shards' work on the push.  When that call
 * sends nothing (no shard reachable), FN does not run and is dropped.
 * FN must not use the client.  Not for psw_client_start's jobs. */
void psw_client_idle_once(psw_client *c, void (*fn)(void *arg), void *arg);

/* psw_client_export reads every chunk of the model from every shard with
 * the Export call (which no clock table sees: an evaluator never holds
 * bsp/ssp workers back) into parameter buffer PBUF.  *VERSION: the
 * smallest version of the shards that hold a chunk of it (0: none).
 * PS_EUNAVAIL / PS_ETIMEDOUT when a shard does
 * not answer within TIMEOUT_MS, PS_EPROTO when a reply misses or repeats
 * chunks; message in EB.  Not while a job runs. */
int psw_client_export(psw_client *c, int pbuf, int timeout_ms, uint64_t *version, ps_errbuf *eb);

/* psw_client_start hands psw_client_push_pull(GBUF, PUSH_CLOCK, PBUF,
 * PULL_CLOCK) to the communication thread and returns at once;
 * psw_client_wait waits for it and returns its result (0 when nothing was
 * started).  One job at a time: PS_EINVAL when one was started and not yet
 * collected by psw_client_wait (whether or not it has finished). */
int psw_client_start(psw_client *c, int gbuf, uint64_t push_clock, int pbuf,
                     uint64_t pull_clock);
int psw_client_wait(psw_client *c, ps_errbuf *eb);

/* psw_client_agg_return: a client that failed over from its aggregator
 * to the root shards (invariant 7) goes back to it when it answers again:
 * it opens one connection to the aggregator per shard, waiting at most
 * 1 s for each, and only when all opened replaces the roots' connections
 * with them.  Call it with no push/pull in flight, at a point where
 * switching paths is harmless (psw_train: an epoch boundary).  Returns 1
 * when it went back, 0 when it stays (no aggregator, not failed over, a
 * job outstanding, or the aggregator does not answer; the first silence
 * is said on stderr). */
int psw_client_agg_return(psw_client *c);

#endif
