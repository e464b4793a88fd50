/* psw_coord: a worker's membership in the cluster — registration with the
 * coordinator shard (rank, world size, data partitions), the heartbeat
 * thread that keeps its lease on every shard, and leaving when done.
 *
 * Invariants:
 *  1. Registration retries an unreachable coordinator with backoff (100 ms
 *     doubling to 2 s) for at most workers.retry_ms; an answer that is an
 *     error (not the coordinator, every rank held) ends it at once.  So
 *     does registering again after an expiry (invariant 2): a restarted
 *     coordinator may be reached before the worker's channel to it is
 *     done with gRPC's reconnect backoff, whose calls fail at once.  So
 *     each retry, and each heartbeat that found a shard unreachable,
 *     resets that channel's backoff (ps_rpc_reset_backoff): a shard back
 *     from a restart is reached at the worker's next try or beat, within
 *     its lease, not seconds later.
 *  2. Once started, the thread heartbeats every shard every heartbeat_ms
 *     (from the registration reply, else workers.heartbeat_ms) with the
 *     figures of psw_coord_update and psw_coord_blocked (rates worked
 *     out at the beat).  A shard that answers
 *     "expired" (it declared the worker DEAD) makes a registered worker
 *     register again, and so does a coordinator that answers
 *     "unregistered" (it restarted without the worker's registration:
 *     psd_clock invariant 13; a fixed rank ignores it), or refuses a
 *     claim as expired; should the coordinator then hand out another rank
 *     (ours went to a newcomer), psw_coord_lost reports it and the worker
 *     must stop: two workers must never share a rank.  A fixed rank
 *     whose beat the coordinator refuses because a live registered
 *     process holds its rank (HeartbeatReply.held) stops the same way.
 *  3. psw_coord_free with LEAVING sends one last heartbeat marked leaving
 *     to every shard, so a stopping worker never holds bsp/ssp back for a
 *     lease time; DONE says it finished its training (else the
 *     coordinator hands its partitions to the living at once).
 *  4. The worker's data partitions are the registration's, then whatever
 *     the coordinator's latest heartbeat reply says (they change when a
 *     worker dies and its partitions go to the living, and back when its
 *     rank is taken again: psd_clock invariant 7).  Each change of the
 *     list counts one generation.
 *  5. Rejoining (psd_clock invariant 9): a shard that declared the worker
 *     DEAD refuses its pushes and pulls with PS_EEXPIRED and ignores its
 *     plain heartbeats.  The worker then registers again (when it
 *     registered; invariant 2) and sends every shard a heartbeat marked
 *     rejoin, which brings it back there; psw_coord_rejoin does this for
 *     the data path, the heartbeat thread when a beat is answered
 *     "expired".  The first beats of a new process are marked rejoin too:
 *     it takes its rank, whatever an earlier process of it left behind.
 *     psw_coord_rejoins counts the comebacks (not those first beats, nor
 *     a registration made again only because a restarted coordinator
 *     lost it: no shard took the worker out of its clock table),
 *     from the moment the coordinator took the worker back: the trainer
 *     then steps out of the clock tables and goes on at the slowest live
 *     clock, as at a claim after waiting (its own clock may be far
 *     behind the living's), once every shard took the step-out
 *     (psw_coord_stepped_out).
 *  6. Partition progress (psd_clock invariant 7): the training thread
 *     claims each partition it trains from the coordinator
 *     (psw_coord_claim) and reports its place before each push
 *     (psw_coord_report, or psw_coord_report_start while it computes the
 *     batch), waiting for the answer before it pushes: so the coordinator
 *     always knows how far a worker may have got (offset: pushes
 *     acknowledged by every shard; started: the end of the batch being
 *     pushed).  An unreachable coordinator is retried like registration.
 *  7. A progress report (claims and lease beats stay on gRPC) goes as a
 *     CHAN_BEAT frame on a tensor-channel connection of the report's own
 *     to the coordinator (ps_chan_beat: the same HeartbeatRequest and
 *     reply, authenticated like the data path's connections), which
 *     answers on its loop thread without gRPC's thread hand-overs and
 *     HTTP/2 framing: once per step, that wait is on the step's critical
 *     path.  Any failure there closes that connection and sends the same
 *     report by gRPC; the channel is tried again after
 *     PSW_COORD_CHAN_RETRY_MS (a shard that predates CHAN_BEAT closes
 *     the connection, so an old coordinator costs one try a second).
 *  8. The fence: a worker whose last request the coordinator answered
 *     as live was sent a lease ago or more (CLOCK_MONOTONIC, which counts
 *     while the process is stopped: SIGSTOP, a VM paused) may have lost
 *     its rank meanwhile, to a new process.  Its next report or claim
 *     then goes out only after a plain heartbeat to the coordinator
 *     confirms the lease; one answered expired (declared dead, or the
 *     rank held by another process: psd_clock invariant 12) makes the
 *     report PS_EEXPIRED unsent, and the trainer registers again or stops
 *     (invariant 2).  Every push and pull of a step waits for its report
 *     (invariant 6), so none goes out in another worker's name.  A
 *     worker that lost its rank sends no more heartbeats.
 *
 * Thread-safety: psw_coord_update, psw_coord_blocked, psw_coord_lost, psw_coord_rejoin,
 * psw_coord_rejoins and psw_coord_partitions may be called from any
 * thread while the heartbeat thread runs; the rest from one thread. */
#ifndef PSW_COORD_H
#define PSW_COORD_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "ps_config.h"
#include "ps_error.h"

typedef struct psw_coord psw_coord;

typedef struct psw_coord_conf {
  const ps_config *cfg;        /* borrowed for the coord's life */
  const char *model;           /* copied */
  const char *device;          /* the backend's description (copied) */
  volatile sig_atomic_t *stop; /* set by a signal handler: retries end; may be NULL */
} psw_coord_conf;

/* What the coordinator handed out. */
typedef struct psw_coord_reg {
  uint32_t rank, world_size;
  uint32_t heartbeat_ms, lease_ms;
  uint64_t start_clock;        /* the slowest live worker's clock */
} psw_coord_reg;

/* psw_coord_new opens a control-plane channel to every shard (nothing is
 * sent yet).  *OUT is freed with psw_coord_free. */
int psw_coord_new(psw_coord **out, const psw_coord_conf *conf, ps_errbuf *eb);

/* psw_coord_register registers with the coordinator (invariant 1) and
 * fills *REG (valid until psw_coord_free).  Errors: PS_EUNAVAIL /
 * PS_ETIMEDOUT (no coordinator within workers.retry_ms), PS_EEXIST (every
 * rank is held, or live fixed ranks of the model train: psw_coord_fixed_live),
 * PS_ESHUTDOWN (*stop), the server's answer otherwise. */
int psw_coord_register(psw_coord *c, psw_coord_reg *reg, ps_errbuf *eb);

/* psw_coord_wait_world waits until the coordinator lists WORLD live
 * workers or the job has begun (a worker joining a running job does not
 * wait) or has finished its EPOCHS (the worker's own count: its claim
 * finds nothing to do, whether the job ended before it came or while it
 * waited), polling, for at most TIMEOUT_MS.  Returns 0, PS_ETIMEDOUT
 * (the count seen is in EB's message) or PS_ESHUTDOWN.  A wait is said
 * once, on the log, when it begins. */
int psw_coord_wait_world(psw_coord *c, uint32_t world, uint32_t epochs, uint32_t timeout_ms,
                         ps_errbuf *eb);

/* psw_coord_fixed_live returns how many live fixed ranks of this
 * worker's model the coordinator lists (their heartbeats say they run
 * with --rank: psd_clock invariant 14; 0 when it does not answer): a
 * registration the coordinator refused with PS_EEXIST for them is a
 * usage error, not a full rank table. */
int psw_coord_fixed_live(psw_coord *c);

/* psw_coord_check_fixed: before a fixed rank (--rank RANK --workers
 * WORKERS, no registration) trains, PS_EEXIST (message in EB) when the
 * coordinator has an elastic job of this model under way, or live
 * registered workers of it still waiting for their world: its partitions
 * go to the registered workers as they claim them, and the fixed rank
 * would train its own share again on top of theirs (the message says
 * when one of them holds RANK).  0 otherwise, and
 * when the coordinator does not answer (a fixed rank needs none). */
int psw_coord_check_fixed(psw_coord *c, uint32_t rank, uint32_t workers, ps_errbuf *eb);

/* psw_coord_start starts the heartbeat thread for worker id WORKER
 * (invariant 2).  REGISTERED: re-register when a shard says expired. */
int psw_coord_start(psw_coord *c, uint32_t worker, int registered, ps_errbuf *eb);

/* psw_coord_rejoin registers again and rejoins every shard after a shard
 * refused a push or pull as expired (invariant 5); thread-safe (one rejoin
 * at a time).  Returns 0 when it rejoined, 1 when no shard holds the
 * worker expired any more (the refusal predates a rejoin already done,
 * by either thread: nothing done, nothing logged), or PS_EEXIST when the
 * rank went to another worker (as psw_coord_lost; message in EB). */
int psw_coord_rejoin(psw_coord *c, ps_errbuf *eb);

/* psw_coord_rejoins returns how many times the worker came back after a
 * shard declared it dead (invariant 5), by either thread; thread-safe.
 * A change tells the trainer that its clock may lie far behind the
 * living's (it was stopped or cut off past its lease). */
uint64_t psw_coord_rejoins(psw_coord *c);

/* psw_coord_update sets the figures the next heartbeats carry: CLOCK, the
 * worker's own steps OWN since it began training at T0_S (ps_now_s()),
 * and BLOCKED_S, the seconds it has waited on pushes and pulls since.
 * Each heartbeat works out steps/s and the blocked share at its own time
 * (a wait under way, psw_coord_blocked, included), so a worker parked
 * behind a straggler shows its rate falling and its share rising while it
 * waits, not the figures of its last step. */
void psw_coord_update(psw_coord *c, uint64_t clock, uint64_t own, double t0_s, double blocked_s);

/* psw_blocked_share returns the share of the time from T0_S to NOW_S
 * (ps_now_s()) that a worker waited on pushes and pulls: BLOCKED_S of
 * finished waits, and one under way since SINCE_S (0: none).  In [0, 1];
 * 0 when T0_S is 0 (not training yet) or not before NOW_S.  psw's JSON
 * line and every heartbeat take their blocked share from it. */
double psw_blocked_share(double t0_s, double blocked_s, double since_s, double now_s);

/* psw_coord_blocked says the worker waits on a push or pull since SINCE_S
 * (ps_now_s()), or (0) no longer does. */
void psw_coord_blocked(psw_coord *c, double since_s);

/* psw_coord_lost returns PS_EEXIST when a re-registration gave the worker
 * another rank or none (its rank is held by another worker; message in
 * EB), else 0. */
int psw_coord_lost(psw_coord *c, ps_errbuf *eb);

/* psw_coord_partitions copies the worker's current data partitions
 * (invariant 4; at most CAP) to OUT, sets *N and returns their generation
 * (0: none known, as for a worker that did not register). */
uint64_t psw_coord_partitions(psw_coord *c, uint32_t *out, size_t cap, size_t *n);

/* A partition's place (psd_clock invariant 7). */
typedef struct psw_coord_part {
  uint32_t part, epoch;
  uint64_t offset, started, size;
  uint64_t retrained; /* a report's: samples gone back over since the last (a retrain) */
} psw_coord_part;

/* psw_coord_claim reports FIN (may be NULL: a partition it just finished
 * or, on a stop, where it stopped) and asks for the partition to train
 * next (invariant 6; EPOCHS: the run's epoch count, DATA_SIZE: the
 * training set's samples).  Returns 1 with *OUT (resume at out->offset),
 * 0 when nothing is left for this worker (*JOB_DONE: every partition
 * finished), or a PS_E* code (PS_EEXPIRED: declared dead). */
int psw_coord_claim(psw_coord *c, const psw_coord_part *fin, uint32_t epochs, uint64_t data_size,
                    psw_coord_part *out, int *job_done, ps_errbuf *eb);

/* psw_coord_grant_clock returns the slowest live clock the coordinator
 * gave with the last grant (0: none said). */
uint64_t psw_coord_grant_clock(const psw_coord *c);

/* psw_coord_job_epochs returns the job's epoch count the last claim's
 * answer gave: the largest its workers asked for (0: none said). */
uint32_t psw_coord_job_epochs(const psw_coord *c);

/* psw_coord_fin_refused says whether the last claim's report of the
 * partition it finished was refused: taken away meanwhile (a handover, or
 * a new job: the model submitted again). */
int psw_coord_fin_refused(const psw_coord *c);

/* psw_coord_step_out tells every shard that this worker has nothing to
 * train for now (a heartbeat marked idle, carrying CLOCK: the latest
 * clock it pushed or pulled at): it leaves their clock tables where its
 * clock is at most CLOCK, so bsp/ssp pulls of the others do not wait for
 * it, and keeps its lease and rank; its next push or pull enters it
 * again.  Best effort: a shard that misses it (no answer within the
 * beat's timeout) keeps it until psw_coord_stepped_out or the next call. */
void psw_coord_step_out(psw_coord *c, uint64_t clock);

/* psw_coord_stepped_out makes sure every shard took the last
 * psw_coord_step_out: it sends it again to every shard, backing off,
 * until each has answered one (0), for at most workers.retry_ms
 * (PS_ETIMEDOUT naming a shard that did not), PS_ESHUTDOWN on a stop,
 * PS_EEXIST when the worker lost its rank (psw_coord_lost).  Call it
 * before pulling at a clock above the step-out's (the trainer's jump to
 * the grant's clock): a shard that missed the step-out keeps the
 * worker's old clock, which a pull never raises (psd_clock invariant 1),
 * so the pull would wait there for the worker itself ("slowest live
 * worker N"), for ever.  Returns 0 at once when every shard answered
 * the step-out. */
int psw_coord_stepped_out(psw_coord *c, ps_errbuf *eb);

/* psw_coord_report reports POS (invariant 6): 0, PS_ENOENT when the
 * partition is no longer this worker's (drop it), or a PS_E* code. */
int psw_coord_report(psw_coord *c, const psw_coord_part *pos, ps_errbuf *eb);

/* psw_coord_report_start hands POS to the report thread, which sends it
 * as psw_coord_report does while the caller computes the batch;
 * psw_coord_report_wait waits for its answer (returns as
 * psw_coord_report).  One report at a time, from one thread. */
int psw_coord_report_start(psw_coord *c, const psw_coord_part *pos, ps_errbuf *eb);
int psw_coord_report_wait(psw_coord *c, ps_errbuf *eb);

/* psw_coord_free stops the thread, sends the leaving heartbeat (marked
 * DONE or not) when LEAVING and the thread ran (invariant 3), closes the
 * channels.  NULL is fine. */
void psw_coord_free(psw_coord *c, int leaving, int done);

#endif
