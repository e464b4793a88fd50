/* psd_shard: one psd process's shard — state, counters, and the request
 * handlers that both transports (psd_grpc, psd_chan) decode into.
 *
 * Every handler runs on the shard's libuv loop thread; transports on other
 * threads hand requests to the loop first.  A handler checks the shard's
 * state (the table in psd_shard.c: SERVING accepts everything; DEGRADED
 * serves pushes, pulls and workers from memory under `periodic` and
 * refuses SubmitModel with PS_EDEGRADED; the others refuse everything),
 * calls the store, and counts the request, its bytes and its errors.  It
 * returns 0 or a negative PS_E* code with a message in EB, and never
 * changes state on error.
 *
 * States and their transitions (psd_shard_set_state asserts the list):
 *   STARTING   -> RECOVERING  psd_main_open: the store opens
 *   RECOVERING -> SERVING     psd_main_serve: store open, listeners bound
 *   SERVING    -> DEGRADED    psd_main_flushed: a flush failed (full disk,
 *                             i/o error); RocksDB is closed, the flush
 *                             timer retries, reopening it
 *   DEGRADED   -> SERVING     psd_main_flushed: a retry reopened RocksDB and
 *                             wrote everything dirty
 *   SERVING    -> DRAINING    psd_main_drain: SIGTERM or SIGINT
 *   DEGRADED   -> DRAINING    psd_main_drain (the final flush retries once)
 *   RECOVERING -> DRAINING    psd_main_serve: SIGTERM or SIGINT came while
 *                             the store opened or the log replayed
 * Under durability `sync` the redo log's writer moves SERVING <-> DEGRADED
 * too (psd_main_wal_state: a log write or fdatasync failed / works
 * again); the shard is SERVING only when both the flush and the log work. */
#ifndef PSD_SHARD_H
#define PSD_SHARD_H

#include <stdint.h>
#include <uv.h>

#include "ps_config.h"
#include "ps_error.h"
#include "psd_agg.h"
#include "psd_clock.h"
#include "psd_stall.h"
#include "psd_store.h"

typedef enum psd_state {
  PSD_STARTING = 0,
  PSD_RECOVERING,
  PSD_SERVING,
  PSD_DRAINING,
  PSD_DEGRADED,
} psd_state;

const char *psd_state_name(psd_state st);

struct psd_shard;

/* psd_shard_set_state moves SH to state TO, asserting that the transition
 * is in the list above; WHY (may be NULL) says why a shard is DEGRADED
 * and is quoted when a request is refused. */
void psd_shard_set_state(struct psd_shard *sh, psd_state to, const char *why);

typedef struct psd_counters {
  uint64_t pushes, pulls, bytes_in, bytes_out, errors;
  uint64_t chan_refused;     /* channel connections closed at accept (psd_chan.h) */
  uint64_t chan_idle_closed; /* channel connections closed as idle */
  uint64_t grpc_restarts;    /* gRPC servers rebuilt by the self-probe (psd_probe.h) */
  uint64_t auth_refused;     /* gRPC calls refused for the caller's role (psd_grpc.c) */
  uint64_t chan_auth_refused;/* channel hellos refused: no, unknown or wrong proof */
  uint64_t chan_bad_frames;  /* channel connections closed for a bad frame after the hello */
  uint64_t chan_slow_closed; /* channel connections closed as slow readers (max_queued_bytes) */
  uint64_t chan_shm_bytes;   /* payload bytes through shared memory (psd_chan invariant 11) */
  uint64_t chan_shm_conns;   /* channel connections with a region now */
  uint64_t agg_pushes;       /* pushes that summed an aggregator's workers (ps_req.summed) */
  uint64_t agg_summed;       /* the worker gradients those pushes summed */
} psd_counters;

struct psd_grpc;
struct ps_tls_server;
struct psd_chan;
struct psd_wal;
struct psd_wal_waiter;
struct psd_shard_sparse;

typedef struct psd_shard {
  const ps_config *cfg;       /* borrowed for the shard's life */
  const ps_shard_conf *me;    /* this shard's entry in cfg */
  uint32_t index;             /* me - cfg->shards */
  uv_loop_t *loop;
  psd_store *store;
  psd_state state;
  char degraded_why[2 * sizeof(ps_errbuf) + 64]; /* why it is DEGRADED (psd_main_why) */
  uint64_t start_ms;          /* uv_hrtime-based, for uptime */
  int64_t last_flush_unix_ms; /* 0: never */
  psd_counters ctr;
  uint32_t inflight;          /* requests accepted and not yet answered */
  uint32_t chan_conns;        /* tensor-channel connections open now */
  struct psd_grpc *grpc;
  /* the TLS pair and CA gRPC serves (ps_tls.h), NULL in plaintext: read at
   * the first psd_grpc_start, kept across gRPC restarts, read again at
   * SIGHUP (psd_grpc_reload_tls); freed by whoever ends the shard */
  struct ps_tls_server *tls;
  struct psd_chan *chan;
  psd_clock *clock;           /* leases, clocks, parked pulls (psd_shard_clock_start) */
  uv_timer_t clock_timer;     /* fires at psd_clock_next_ms, or sooner (psd_shard_clock_arm) */
  psd_stall clock_stall;      /* clock_timer's lateness: a stalled loop (psd_stall.h) */
  int coordinator;            /* this shard registers workers */
  struct psd_wal *wal;        /* the redo log (durability sync), else NULL */
  /* What the start's replay of a redo log did (psd_main_recover): under
   * sync always, under periodic when a sync run left a log (then wal is
   * NULL, the log replayed, snapshotted and removed).  Status reports it. */
  struct {
    int done;                 /* a log was replayed (the rest are 0 otherwise) */
    uint64_t records, dropped, ms; /* records applied, torn-tail records cut, its time */
  } replay;
  uv_timer_t save_timer;      /* saves the coordinator's table (psd_coord.h) */
  int save_timer_on;
  struct psd_coord_bg *coord_bg; /* the timer's saves, written off the loop (psd_coord.c) */
  struct psd_shard_sparse *sparse; /* sparse tables (psd_shard_sparse.h), or NULL */
  /* The backend: the store (a root shard) or, on an aggregator (psd
   * --aggregator; store and clock NULL), the forward backend. */
  psd_agg *agg;
  const ps_agg_conf *agg_me;  /* this aggregator's entry in cfg */
} psd_shard;

/* psd_shard_admit: 0 when SH takes a read (PUSH = 0) or a push (PUSH = 1)
 * now, else the code refusing it with why in EB (not counted).  For
 * handlers outside this file (psd_shard_sparse.c). */
int psd_shard_admit(psd_shard *sh, int push, ps_errbuf *eb);

/* Control plane. */
int psd_shard_submit(psd_shard *sh, const Ps__ModelSpec *spec, int replace,
                     Ps__SubmitModelReply *reply, ps_errbuf *eb);

/* Data plane: one request struct (ps_req.h) from either transport.
 * psd_shard_payload validates a push (PUSH non-zero) or pull and sizes
 * its payload: *NELEMS floats, *NBYTES bytes in R->codec (PS_ETOOBIG over
 * max_request_bytes); transports call it before reading/allocating
 * tensor bytes.  psd_shard_push applies R (psd_store_push) and
 * psd_shard_pull fills R->out (psd_store_pull, after
 * psd_shard_pull_admit); *VERSION receives the model's version.
 * Counters count payload bytes as they travel (encoded). */
/* psd_shard_clock_check refuses (PS_EINVAL, saying so) a push or pull
 * (WHAT) of MODEL by a worker at CLOCK beyond PS_CLOCK_MAX (ps_model.h);
 * 0 otherwise.  psd_shard_payload and the sparse entry points call it
 * before anything is read or applied.  Pure; any thread. */
int psd_shard_clock_check(const char *what, const char *model, uint64_t clock, ps_errbuf *eb);
int psd_shard_payload(psd_shard *sh, const ps_req *r, int push, uint64_t *nelems,
                      uint64_t *nbytes, ps_errbuf *eb);
int psd_shard_push(psd_shard *sh, const ps_req *r, uint64_t *version, ps_errbuf *eb);
int psd_shard_pull(psd_shard *sh, const ps_req *r, uint64_t *version, ps_errbuf *eb);
/* psd_shard_pull_view is psd_shard_pull through psd_store_pull_view (the
 * chunks' own bytes, no copy; 1), or 0 when that does not apply (nothing
 * counted: call psd_shard_pull), or an error. */
int psd_shard_pull_view(psd_shard *sh, const ps_req *r, struct iovec *seg, size_t max,
                        size_t *nseg, uint64_t *version, ps_errbuf *eb);
/* psd_shard_push_durable is called by a transport right after a
 * psd_shard_push that succeeded, before it acknowledges: 0 acknowledge
 * now (durability periodic, or the record is synced already); 1 WT is
 * queued on the redo log and WT->fn (set by the caller, with WT->arg)
 * runs later on the loop, once, with 0 (acknowledge now) or an error to
 * answer instead; or PS_EDEGRADED with a message (the log is failing:
 * answer the error). */
int psd_shard_push_durable(psd_shard *sh, struct psd_wal_waiter *wt, ps_errbuf *eb);

/* psd_shard_who writes "shard N", or "aggregator NAME" for an aggregator
 * (which serves under an id no shard has), to BUF (CAP bytes); BUF. */
const char *psd_shard_who(const psd_shard *sh, char *buf, size_t cap);

/* The forward backend (an aggregator, sh->agg; psd_agg.h): push R and
 * pull R complete through OP (1), or now (a pull: 0, OP's data set), or
 * fail with a PS_E* code; counted like the store's. */
int psd_shard_forward_push(psd_shard *sh, const ps_req *r, psd_op *op, ps_errbuf *eb);
int psd_shard_forward_pull(psd_shard *sh, const ps_req *r, psd_op *op, ps_errbuf *eb);

/* psd_shard_forward_spec readies MODEL's layout on an aggregator for a
 * request on a connection stamped STAMP without blocking the loop
 * (psd_agg_spec_wait): 0 ready (also on a store shard), or 1 and OP
 * finishes once it is fetched (status 0: go on; else the request's
 * error); a PS_E* code. */
int psd_shard_forward_spec(psd_shard *sh, const char *model, uint64_t stamp, psd_op *op,
                           ps_errbuf *eb);

/* psd_shard_forward_conn tells the aggregator (none: nothing) which local
 * worker a connection now serves: *WHO1 is the connection's worker + 1 (0:
 * none yet), WORKER the one of its latest request, or UINT32_MAX when the
 * connection closes.  The aggregator lets a worker whose last connection
 * closed leave the roots (psd_agg_conn_worker). */
void psd_shard_forward_conn(psd_shard *sh, uint32_t *who1, uint32_t worker);

/* psd_shard_worker_hello notes that WORKER's own channel connection
 * finished its hello (ps.proto hello_worker): on a shard with a clock
 * table that is no aggregator, a live WORKER counts as heard from now
 * (psd_clock_heard), so that an aggregator's conditional leave for it
 * (leave_if_silent_ms) finds it speaking even before its first request
 * on that connection (psd_agg.h invariant 6). */
void psd_shard_worker_hello(psd_shard *sh, uint32_t worker);

/* psd_shard_spec returns MODEL's registered spec (borrowed from the
 * store until the next submit), or NULL: unknown, or SH is an aggregator.
 * psd_shard_held sets the ids (borrowed likewise) and element count of
 * MODEL's chunks on SH; PS_ENOENT, or PS_ENOTSUP on an aggregator. */
const Ps__ModelSpec *psd_shard_spec(psd_shard *sh, const char *model);
int psd_shard_held(psd_shard *sh, const char *model, const uint32_t **ids, size_t *nids,
                   uint64_t *nelems, ps_errbuf *eb);

/* Consistency (psd_clock.h).  psd_shard_clock_start makes the clock
 * table (workers.* and training.pull_timeout_ms of the config), declares
 * the consistency of every model the store holds and starts its timer;
 * psd_shard_clock_stop releases every parked pull with PS_ESHUTDOWN (the
 * timer handle is closed with the loop's other handles).
 * psd_shard_clock_serving runs when the shard starts serving: the leases
 * of the workers a coordinator restored start then (psd_clock invariant
 * 10), not at the load, which the store's restore and the log's replay
 * may follow by seconds. */
int psd_shard_clock_start(psd_shard *sh, ps_errbuf *eb);
void psd_shard_clock_serving(psd_shard *sh);
void psd_shard_clock_stop(psd_shard *sh);

/* psd_shard_staleness returns SPEC's bound: 0 (bsp), staleness (ssp) or
 * PSD_CLOCK_ASP (asp, or none given). */
uint32_t psd_shard_staleness(const Ps__ModelSpec *spec);

/* psd_shard_pull_admit admits a pull (after psd_shard_payload) of
 * WORKER at CLOCK: 0 serve it now (psd_shard_pull), 1 parked in P (whose
 * fn and arg the caller set: fn runs later, exactly once, with 0 = serve
 * now or an error to answer, unless psd_clock_cancel(sh->clock, P)), or a
 * PS_E* code. */
int psd_shard_pull_admit(psd_shard *sh, const char *model, uint32_t worker, uint64_t clock,
                         psd_park *p, ps_errbuf *eb);

/* psd_shard_pushed records that each of the NWHO workers WHO pushed step
 * CLOCK of MODEL (psd_clock_pushed: raised to CLOCK + 1, never past it,
 * so two pushes of one step advance it once) and releases the pulls,
 * dense and sparse, that became servable; a failure is logged. */
void psd_shard_pushed(psd_shard *sh, const char *model, const uint32_t *who, size_t nwho,
                      uint64_t clock);

/* psd_shard_parked_ms: how long P has been parked (for the reply). */
uint32_t psd_shard_parked_ms(psd_shard *sh, const psd_park *p);

/* Coordinator and leases.  psd_shard_register hands out a rank (PS_ENOTSUP
 * on a shard that is not the coordinator); REPLY's partitions array is
 * freed with free().  psd_shard_heartbeat refreshes a lease; on the
 * coordinator its REPLY also carries the worker's current partitions
 * (freed with free()).  psd_shard_list_workers fills REPLY (release with
 * psd_shard_list_workers_release). */
int psd_shard_register(psd_shard *sh, const Ps__RegisterWorkerRequest *req,
                       Ps__RegisterWorkerReply *reply, ps_errbuf *eb);
int psd_shard_heartbeat(psd_shard *sh, const Ps__HeartbeatRequest *req,
                        Ps__HeartbeatReply *reply, ps_errbuf *eb);
int psd_shard_list_workers(psd_shard *sh, Ps__ListWorkersReply *reply, ps_errbuf *eb);
void psd_shard_list_workers_release(Ps__ListWorkersReply *reply);

/* psd_shard_status fills REPLY (whose strings and model array the caller
 * frees with psd_shard_status_release). */
void psd_shard_status(psd_shard *sh, Ps__StatusReply *reply);
void psd_shard_status_release(Ps__StatusReply *reply);

/* psd_shard_count_error counts one failed request (transport-level errors
 * such as malformed frames, which never reach a handler). */
void psd_shard_count_error(psd_shard *sh);

/* psd_shard_security_name: ps_tls_security_name of the shard's file
 * ("mtls+chan-hmac", ...); static. */
const char *psd_shard_security_name(const psd_shard *sh);

#endif
