/* psd_agg: the `forward` backend of a psd that runs as an aggregator
 * (psd --aggregator NAME; DESIGN.md "Hierarchy").
 *
 * Workers on the aggregator's host talk to it over the tensor channel as
 * they would to a shard: one connection per root shard, each push and
 * pull carrying that shard's chunks.  The aggregator learns a model's
 * layout (GetModel from a root shard) and so knows each request's root
 * shard and payload size.  It fetches the layout again when a connection
 * opened after the last fetch names the model: a `psctl submit --replace`
 * (another shape, codec, consistency or seed) is seen by the workers
 * started for it, through their new connections.  A changed spec retires
 * the old entry: its copies are dropped, sums still open under it are
 * forwarded as they were, the new one starts with a zero residual.
 *
 * Invariants:
 *  1. Pushes are summed per (model, root shard, chunk ids, clock): a
 *     group; under asp per (model, root shard, chunk ids), whatever the
 *     workers' clocks (the group's clock is the oldest: nothing waits on
 *     clocks under asp, and workers a clock or two apart would otherwise
 *     each wait max_delay_ms for a partner that never comes).  The worker's payload is decoded (any codec) and added to the
 *     group's fp32 sum.  A group is forwarded as one push when every
 *     push it expects is in (1a), or max_delay_ms after its first push,
 *     whichever is first (also at once when a worker pushes twice into one
 *     group).  The forwarded push carries the sum,
 *     the workers summed (ChanMeta.summed), the oldest version among them
 *     and the group's clock, in the codec the workers pushed in (the
 *     model's after its warm-up), re-encoded with the aggregator's own
 *     error-feedback residual per chunk.
 * 1a. A group expects ps_agg_conf.workers pushes, less one for each
 *     gone worker: one that sent a request before, has none waiting here
 *     and neither sent one nor was answered for workers.lease_ms (dead or
 *     left: its lease on the roots, which it renews there directly, runs
 *     out in that time too), or one that left through the aggregator
 *     (invariant 6); but never fewer than the live workers.  So a dead
 *     local worker holds the others' sums (for max_delay_ms per clock at
 *     most) until it left (a few heartbeats after its connections closed)
 *     or, its connections still open, its lease ran out, and not after.
 *     Time the aggregator's own loop was stalled (psd_stall.h: a long
 *     request held it, or the process was stopped) is no worker's
 *     silence: its requests waited unread, so the stall extends that
 *     lease (here, in invariant 6's forgetting and in status's workers)
 *     and is logged once.
 *  2. A worker's push is answered only once the root has answered the
 *     forwarded sum that contains it, with the root's answer: nothing an
 *     aggregator acknowledged is lost with it.
 *  3. Pulls are served from the aggregator's copy of the chunks (per
 *     model, chunk ids and pull codec) when that copy stands for a clock
 *     at least the worker's (the root then held the bound for it) and the
 *     worker is known to that root (invariant 6).  A copy stands for the
 *     clock it was fetched for, lowered to the clock of every sum of its
 *     chunks answered since with a lower one: it holds every push of a
 *     clock below the one it stands for, also when the clocks start over
 *     (a new job's workers);
 *     under ASP also when no forwarded push of these chunks was answered
 *     since the copy was fetched.  Otherwise the pull waits for a root
 *     fetch at exactly its clock: one fetch serves every local worker
 *     that waits at that clock, and a fetch never asks for a clock above a
 *     waiting worker's (that could wait for the worker itself).
 *  4. The root is reached through channel clients on the aggregator's own
 *     loop (psd_chan_client.h; no threads, the loop never waits on a root):
 *     per root shard one link for pushes and leaves (pipelined, answered
 *     in order) and `workers` for pulls (a pull goes to the one with the
 *     fewest requests in flight), so a pull parked on the root holds up
 *     no push and no other worker's pull while the links outnumber the
 *     parked pulls.  A link connects on its first request and again on
 *     the first after a failure; a failure (refused, closed, no progress
 *     for pull_timeout_ms + 5 s, a bad reply, a path that acknowledged
 *     nothing for ps_config_dead_ms: TCP_USER_TIMEOUT and keepalive, as on
 *     psw's connections) fails the requests it carried (invariant 5).  Finished requests are acted on the next
 *     loop turn (one uv_async), oldest first, never inside the call that
 *     made them.  Everything runs on the loop thread; GetModel alone
 *     runs on libuv's thread pool (invariant 7).
 *  5. A root that fails a forwarded request fails the workers' requests
 *     it carried with the root's error (PS_EUNAVAIL when unreachable):
 *     workers retry or fail over to the root shards directly (psw).
 * 5a. A forwarded sum that fails so (unreachable, broken, timed out, a
 *     bad reply, the root shutting down: not a DEGRADED or expired
 *     refusal) fails its workers' pulls of that root waiting here above
 *     the sum's clock (parked on the root, or on another worker's fetch)
 *     with its error, and every such pull of theirs that comes on a
 *     connection opened before the failure, until the worker pushes to
 *     that root again: under bsp the root would hold them for the lost
 *     push until pull_timeout_ms, and the worker, which sends its next
 *     pull before its push is answered, would read the failure only then.
 *     Answered so, it fails over at once (psw: the first pull from the
 *     roots asks for the lost push's clock).
 *  6. Clocks and leases (DESIGN.md "Hierarchy", control plane).  Every
 *     local worker's clock is in each root shard's clock table before the
 *     aggregator serves it anything of that shard, as its own first pull
 *     would have put it there flat: the aggregator knows, per model, root
 *     shard and worker, whether a forwarded request named the worker (a
 *     fetch for it, or a sum holding its push, answered by that root); a
 *     pull of a worker not known so is never served from the copy or from
 *     another worker's fetch but starts a fetch of its own, which enters
 *     it at its clock (counted in enters).  So a root's staleness bound
 *     holds exactly for every worker behind the aggregator; the roots'
 *     view of a worker's clock only lags while its push waits in a sum,
 *     which holds the others back, never lets them run ahead.  What a
 *     worker is known for is forgotten when it comes back after a lease of
 *     silence or after it left (its rank may be another worker's), and
 *     for a root shard whose link connects again (it may have restarted).
 *     Leases stay the workers' own: they heartbeat the roots directly (so
 *     an aggregator's death takes no lease with it).  A local worker
 *     whose every connection to the aggregator closed (killed, crashed)
 *     and that neither came back nor has a request waiting here for
 *     3 x workers.heartbeat_ms after its last request or answer leaves
 *     through the aggregator: a leaving beat to every root shard, acted on
 *     only by a shard that heard nothing from the worker for 2 x
 *     heartbeat_ms (a worker alive and talking to the roots directly
 *     stays, from the moment its own channel connection's hello, which
 *     names it, was accepted there: psd_chan invariant 9a, so a leave
 *     queued during a cut and sent at the heal cannot remove a worker
 *     that failed over and connected but asked nothing yet; a shard
 *     that kept it or failed is asked again every
 *     heartbeat while the worker stays away, up to a lease after its last
 *     word here); its sums stop waiting for it at once, not after
 *     lease_ms.
 * 4a. Whatever the aggregator holds (a pull parked on a root, a sum
 *     waiting for a straggler: each pauses only its own connection,
 *     psd_chan invariant 7), its loop accepts a new channel connection
 *     and answers its hello at once, never waiting on a root: a worker
 *     whose request waited long probes it so (psw_client.h invariant
 *     7a), and takes a hello unanswered for a lease as the aggregator's
 *     death (hung: stopped, or its loop wedged).
 *  7. Model specs (GetModel, gRPC) are fetched on libuv's thread pool,
 *     never on the loop: a request whose model's layout is not here, or
 *     was fetched before its connection opened, waits (its connection
 *     paused: psd_agg_spec_wait) while the loop serves everything else;
 *     one fetch per model name at a time, its waiters all answered when
 *     it lands. */
#ifndef PSD_AGG_H
#define PSD_AGG_H

#include <stdint.h>
#include <uv.h>

#include "ps_config.h"
#include "ps_error.h"
#include "ps_req.h"
#include "psd_done.h"

typedef struct psd_agg psd_agg;
typedef struct psd_op psd_op;

/* One pending request, owned by the caller (a transport's connection),
 * which sets done.fn and done.arg.  It finishes (psd_done.h) on the loop
 * thread, exactly once, unless psd_agg_cancel took the op back first;
 * done.version is the root's, and a pull's values are done.data
 * (encoded, borrowed until fn returns) of done.nbytes. */
struct psd_op {
  psd_done done;
  /* psd_agg's: */
  psd_op *next;
  psd_op **list;
  uint64_t clock;
  uint32_t worker;
  void *wait;             /* a pull: the root fetch it waits for */
};

typedef struct psd_agg_stats {
  uint64_t pushes_in;      /* worker pushes summed */
  uint64_t forwarded;      /* sums forwarded to the roots */
  uint64_t pulls_in;       /* worker pulls */
  uint64_t pull_hits;      /* served from the copy or from a fetch another worker started */
  uint64_t fetches;        /* pulls forwarded to the roots */
  uint64_t enters;         /* of fetches: made only to enter a worker into a root's clock table */
  uint64_t leaves;         /* local workers that left the roots through the aggregator */
} psd_agg_stats;

/* psd_agg_new makes the aggregator ME of CFG (both borrowed for its life)
 * on LOOP with its root links (they connect on their first request).  0
 * or a PS_E* code (*OUT may then be set: stop and free it as usual). */
int psd_agg_new(psd_agg **out, uv_loop_t *loop, const ps_config *cfg, const ps_agg_conf *me,
                ps_errbuf *eb);

/* psd_agg_drain (at SIGTERM, before the drain waits for the requests in
 * flight) forwards every open sum at once, whatever it still waits for:
 * its workers are answered with the roots' answer (invariant 2), not
 * held until max_delay_ms and then dropped by psd_agg_stop.  Pulls
 * waiting for a root fetch (which a root may hold parked up to
 * pull_timeout_ms) and requests waiting for a model's layout are
 * answered PS_ESHUTDOWN now, as a draining shard answers its parked
 * pulls: nothing is applied by them, and their workers go to the roots
 * directly.  The aggregator keeps running for the forwarded sums;
 * idempotent. */
void psd_agg_drain(psd_agg *a);

/* psd_agg_stop answers every pending op with PS_ESHUTDOWN, closes the
 * links' clients and the loop handles (run the loop afterwards); free
 * with psd_agg_free once the loop has run.  Idempotent. */
void psd_agg_stop(psd_agg *a);

/* psd_agg_reload_key reads security.secret_file again for the key the
 * aggregator proves to its roots (SIGHUP, psd_chan_reload_keys): links
 * connecting from now on prove the file's last aggregator key; a file
 * that cannot be read keeps the old key (a warning).  Loop thread. */
void psd_agg_reload_key(psd_agg *a);
void psd_agg_free(psd_agg *a);

/* psd_agg_conn_stamp returns the stamp of a connection accepted now, for
 * the ps_req.conn_stamp of its requests (increasing, never 0). */
uint64_t psd_agg_conn_stamp(psd_agg *a);

/* psd_agg_spec_wait readies MODEL's layout for a request on a connection
 * stamped STAMP (invariant 7): 0 when it is here and was fetched after
 * that connection opened; else 1, a GetModel runs off the loop (the first
 * fetch, or again: a `psctl submit --replace` is seen by the connections
 * opened after it) and OP (done.fn and arg set by the caller) finishes
 * once it is done: status 0, ask again; a PS_E* code when a model never
 * fetched could not be (the roots' word, PS_EUNAVAIL when none answered).
 * A failed fetch again keeps the layout it has; 0 at once too once the
 * aggregator drains or stops (the request's own call refuses it).
 * psd_agg_cancel takes OP back.  PS_ENOMEM (OP unused). */
int psd_agg_spec_wait(psd_agg *a, const char *model, uint64_t stamp, psd_op *op, ps_errbuf *eb);

/* psd_agg_payload validates a push (PUSH non-zero) or pull of R against
 * its model's layout and sizes its payload in R->codec.  It never waits:
 * a model whose layout is not here yet is PS_EUNAVAIL (a fetch started;
 * callers that can wait use psd_agg_spec_wait first). */
int psd_agg_payload(psd_agg *a, const ps_req *r, int push, uint64_t *nelems, uint64_t *nbytes,
                    ps_errbuf *eb);

/* psd_agg_push adds push R (validated by psd_agg_payload; R->grads is
 * read during the call only) to its group: 1, OP completes later with the
 * root's version (invariant 2); or a PS_E* code (OP unused). */
int psd_agg_push(psd_agg *a, const ps_req *r, psd_op *op, ps_errbuf *eb);

/* psd_agg_pull answers pull R: 0 now (OP's done.data, nbytes and version set,
 * borrowed until the next call into the aggregator), 1 later through OP,
 * or a PS_E* code. */
int psd_agg_pull(psd_agg *a, const ps_req *r, psd_op *op, ps_errbuf *eb);

/* psd_agg_conn_worker counts the open connections of local worker W
 * (DELTA +1 or -1; invariant 6). */
void psd_agg_conn_worker(psd_agg *a, uint32_t w, int delta);

/* psd_agg_cancel takes back a pending OP (its connection closed): its fn
 * will not run.  A push already summed is still forwarded. */
void psd_agg_cancel(psd_agg *a, psd_op *op);

void psd_agg_stats_get(const psd_agg *a, psd_agg_stats *st);

/* psd_agg_workers writes to IDS (room for psd_clock_rank_cap(workers.count)) the workers
 * that sent A a push or pull, or were answered, within the last
 * workers.lease_ms, in rank order; returns how many. */
size_t psd_agg_workers(psd_agg *a, uint32_t *ids);

#endif
