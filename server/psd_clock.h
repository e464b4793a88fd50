/* psd_clock: a shard's worker leases, per-model clock tables and parked
 * pulls.  Pure bookkeeping: no sockets, no libuv; time comes in as
 * arguments (milliseconds of any monotonic clock), so it is tested alone.
 *
 * Model (DESIGN.md "Consistency"):
 *  1. A worker's clock counts its completed steps.  A push carrying clock c
 *     (the step it computed) raises the worker's clock on that model to
 *     c + 1; a pull at clock c (the step it will compute on the values)
 *     enters a worker new to the table at c and changes no other clock.
 *  2. A pull at clock c of a model with bound s (bsp: 0, ssp: s) is served
 *     when the slowest live worker in the model's table has clock >= c - s;
 *     under asp at once.  Otherwise it is parked: nothing polls it; it is
 *     re-checked when a push raises a clock or a worker leaves the table.
 *  3. Leases: any request of a worker (heartbeat, push, pull) refreshes its
 *     lease.  A worker with a pull parked here is alive.  A worker silent
 *     for lease_ms is DEAD: it leaves every clock table (the pulls waiting
 *     on it are re-checked) and its rank becomes free.  Time the shard's
 *     loop was stalled (psd_clock_stalled: it read nothing, so a worker's
 *     beats waited unread) is not silence: it extends the lease.
 *  4. A parked pull gives up at its deadline (pull_timeout_ms after it was
 *     parked) with PS_ETIMEDOUT and a message naming the slowest worker
 *     and its clock.
 *  5. A released pull's callback runs after the pull is unlinked, never
 *     inside a table walk: it may call back into psd_clock.  Each parked
 *     pull's callback runs exactly once, unless psd_clock_cancel unlinks it
 *     first.
 *  6. Recorded per model: the largest gap (pull clock - slowest live clock)
 *     at which a pull was served; never above s for bsp / ssp.
 *  7. Data partitions (DESIGN.md "Fault tolerance"): the coordinator
 *     keeps, per partition, its epoch, the offset trained up to in that
 *     epoch (in the partition's own sample order, a function of (seed,
 *     epoch, partition)), the end of what was started (offset <= started:
 *     the samples in flight) and its owner (a live registered rank, or
 *     nobody).  A worker trains only a partition it claimed
 *     (psd_clock_claim), which makes it ACTIVE; it reports each step
 *     (psd_clock_progress) before pushing it: offset = samples whose
 *     pushes every shard acknowledged, started = the end of the batch it
 *     is about to push.  Reaching the partition's size ends its epoch
 *     (epoch + 1, offset 0, no longer active).  Only an inactive
 *     partition moves between live workers (a partition boundary): to
 *     balance the unfinished ones at registration, when a worker claims
 *     with nothing of its own left (it takes one of the most loaded
 *     worker's), and when a worker dies or leaves: its partitions go to
 *     the live workers at once, resuming at the last reported offset; the
 *     samples in [offset, started) of its active one are counted as
 *     retrained (at most the batches in flight).  A sample is thus
 *     trained at least once per epoch, and twice only when it was in
 *     flight at a death.  Per epoch the table counts the samples trained
 *     (offset advances: every partition's size exactly, once the epoch is
 *     complete), those retrained and the handovers.
 *  8. Worker identity: a worker is its rank, an id below the rank cap
 *     (psd_clock_rank_cap: 2 x world_size + 2, world_size = workers.count,
 *     the expected size; every shard computes the same cap from the
 *     cluster file).  Every request naming a worker at or above the cap is
 *     refused with PS_EINVAL before anything is recorded, so the worker
 *     table never holds more than the cap whatever clients send.
 *     Registration hands out a died rank first, then one never held, then
 *     one whose worker finished, among [0, world_size) and then among
 *     [world_size, cap): a worker restarted while its old lease still
 *     lives gets a new rank at once (elastic membership).
 *  9. Expiry is final for a worker that held a lease (it registered or
 *     sent a heartbeat): DEAD by its lease, or by leaving before it
 *     finished, it is not brought back by its pushes, pulls or plain
 *     heartbeats (refused with PS_EEXPIRED, nothing recorded: it may have
 *     been partitioned away while the others went on without it, and its
 *     rank and data may be another's now).  Only psd_clock_register or
 *     psd_clock_rejoin (the worker registered again with the coordinator,
 *     or a new process of a fixed rank starts) brings it back; its
 *     partitions stay with whoever took them.  A rank whose worker left
 *     done is taken by any request (the next run), and so is one that
 *     never held a lease (a bare client that pushes and pulls without
 *     heartbeats: it could not rejoin).
 * 10. Persistence: psd_clock_save writes the partition table, the epoch
 *     counts, the workers (with their host and pid: one that registers
 *     again after the restart keeps its rank; their model, fixed mark and
 *     the registered process their rank was taken from: invariants 12
 *     and 14 hold across the restart) and every model's clock table as
 *     text, its first line naming the format's version; psd_clock_load
 *     restores them into a new table (a save whose worker lines have no
 *     host, or no fixed mark (version 1), an older psd's, too: it knows
 *     no fixed rank and refuses no old holder until told again), the
 *     workers alive with a fresh lease, which psd_clock_grace starts
 *     again when the coordinator serves: they have lease_ms from then to
 *     reach it (they could not while it was down) before they expire as
 *     usual.  Saves are periodic, so a partition's saved state may lag
 *     its worker's: until the partition's first claim or report after the
 *     restore, a report's retrained is bounded by the partition's rest,
 *     not by started, and its owner's report of it at its epoch and past
 *     its offset is taken though it is not active (the claim came after
 *     the save: the worker goes on with it, nothing is trained again),
 *     and so is its report at a later epoch (it finished the saved one
 *     after the save: that epoch's rest, and any between, is counted
 *     trained and finished, as the lost reports would have); a
 *     save made before the job's first claim names no job, and the first
 *     claim after the restore takes the table as it is, the restored
 *     marks kept (a new job would clear them).  A restored clock holds
 *     the others back as before, until the worker's first push or pull
 *     sets it to where the worker is (up, or down when a push was lost
 *     with the restart: else its own pull would wait for it forever).  psd_clock_dirty says
 *     whether anything persisted changed since the last save.
 * 11. A worker may go on past a push a shard never applied: one lost with
 *     its connection (the shard restarted, or the frame was cut), or
 *     refused as DEGRADED.  Its clock here then stays at that step, and
 *     under bsp (ssp: a few steps later) its own next pull would wait for
 *     it for ever, its lease alive.  The worker knows (psw_client
 *     invariant 13) and says so (psd_clock_moved_on: raised as the push
 *     would have; the gradients are lost, the samples trained again).  The
 *     shard cannot tell by itself: a pull above the worker's own clock
 *     also comes from an aggregator whose sum holding the worker's push is
 *     still on its way (psd_agg.h invariant 6), and raising it then would
 *     let the others past that push.  A word that comes after the
 *     worker stepped out (psd_clock_step_out) at that push's clock + 1 or
 *     later, while it is still out (no entry, or a provisional one),
 *     changes nothing: the push came before the step-out, which took the
 *     worker out of the tables, and its next pull or push enters it where
 *     it is.  Entered at the push's clock, it would stand behind its own
 *     next pull: a rejoiner goes on at the slowest live clock, above it.
 * 12. A registered rank is held by the process that registered it (its
 *     host and pid): psd_clock_holder tells the coordinator to refuse,
 *     as expired, what another process sends in its name (one stopped
 *     past its lease, whose rank went to a new worker meanwhile, then
 *     resumed: its leave would declare the new worker dead, its progress
 *     would move the new worker's partition).  Heartbeats never change a
 *     registered worker's pid.  Fixed ranks and bare clients (never
 *     registered), dead ranks and requests without a pid are not told
 *     apart; a dead rank that another process takes back by a rejoin (a
 *     fixed rank after the registered worker finished) is that process's
 *     (psd_clock_rejoin drops the old registration), and the registered
 *     process it was taken from is refused as another's while the rank
 *     lives, by a restarted coordinator too (saved: invariant 10): it
 *     must not become the holder again by its beats, then take the rank
 *     back by registering as if a restart had lost it.  A fixed rank
 *     whose rank a live registered process holds stops when refused so
 *     (HeartbeatReply.held): the registration wins.
 * 13. A restarted coordinator may have lost a registration (it came
 *     after the last save: invariant 10): the worker's heartbeats then
 *     name a rank the table holds no registration of.  They are taken (a
 *     fixed rank's never register) and the coordinator says so in its
 *     reply (psd_clock_unregistered); its claim is refused as expired.  A
 *     worker that registered registers again, and psd_clock_register
 *     gives the process whose beats made the rank's record (its host and
 *     pid) that rank back.  A rank another process registered meanwhile
 *     is that one's (invariant 12): the beats of the process that lost
 *     it are refused as expired, and it is offered another rank; when
 *     the rank had no record here at that registration (the newcomer came
 *     before the lost process's beats), the refusal says so
 *     (HeartbeatReply.rank_taken): that process was never declared dead.
 * 14. A fixed rank (psw --rank: it never registers) says so in its
 *     heartbeats (psd_clock_set_fixed); it trains its share of the
 *     partitions whatever registers, so while a live one of a model is
 *     in the table, psd_clock_register refuses that model's registrations
 *     (a registered worker would train every partition again on top of
 *     it).  One that died or left blocks nothing.  Saved (invariant 10):
 *     a restored table refuses them at once, its fixed ranks alive with
 *     the others' grace, not only after their next heartbeats.
 *
 * Not thread-safe: one thread (the shard's loop) calls everything. */
#ifndef PSD_CLOCK_H
#define PSD_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"
#include "psd_done.h"

#define PSD_CLOCK_ASP UINT32_MAX /* staleness bound of asp: no bound */

typedef struct psd_clock psd_clock;
typedef struct psd_park psd_park;

/* A parked pull, owned by the caller (a transport's request), linked into
 * the table while parked.  The caller sets done.fn and done.arg; the rest
 * is psd_clock's.  Its release (psd_done.h): STATUS 0 (serve it now) or a
 * PS_E* code with MSG. */
struct psd_park {
  psd_done done;
  uint32_t worker;
  uint64_t clock;
  uint64_t since_ms, deadline_ms;
  struct psd_clock_model *model;
  psd_park *prev, *next;
  int linked;
};

typedef struct psd_clock_opts {
  uint32_t heartbeat_ms;     /* LATE after 2 x this without a word */
  uint32_t lease_ms;         /* DEAD after this */
  uint32_t pull_timeout_ms;  /* parked pulls give up after this */
  uint32_t world_size;       /* workers.count, the expected size (invariant 8) */
  uint32_t nparts;           /* data partitions (invariant 7; 0: none tracked) */
  /* Told of every lease that expires (not of a worker that leaves), after
   * the worker left the tables; must not call into psd_clock.  May be NULL. */
  void (*on_expire)(void *arg, uint32_t worker, uint64_t silent_ms);
  void *arg;
} psd_clock_opts;

/* DONE: it left saying it finished; DEAD: it died (lease expired or left
 * unfinished). */
typedef enum psd_worker_state {
  PSD_WORKER_ALIVE,
  PSD_WORKER_LATE,
  PSD_WORKER_DEAD,
  PSD_WORKER_DONE
} psd_worker_state;
const char *psd_worker_state_name(psd_worker_state st);

/* What psd_clock_worker reports about one worker (strings borrowed until
 * the next call that changes the table). */
typedef struct psd_worker_info {
  uint32_t id;
  const char *host, *device, *model;
  uint32_t pid;
  int registered;
  int fixed;                 /* live, and its heartbeats say it is a fixed rank (invariant 14) */
  psd_worker_state state;
  uint64_t clock;            /* the largest clock seen from it */
  uint64_t age_ms;           /* since its last word */
  float steps_per_s, blocked_share;
} psd_worker_info;

/* psd_clock_new makes an empty table; *OUT is freed with psd_clock_free. */
int psd_clock_new(psd_clock **out, const psd_clock_opts *o, ps_errbuf *eb);

/* psd_clock_free releases every parked pull with PS_ESHUTDOWN and frees
 * the table.  NULL is fine. */
void psd_clock_free(psd_clock *c);

/* psd_clock_set_model declares MODEL's consistency: STALENESS is the bound
 * (0 for bsp, PSD_CLOCK_ASP for asp).  A model is asp until declared.  A
 * changed bound re-checks the parked pulls. */
int psd_clock_set_model(psd_clock *c, const char *model, uint32_t staleness, uint64_t now_ms,
                        ps_errbuf *eb);

/* psd_clock_model_fresh zeroes MODEL's figures for status (the largest
 * gap served, the pulls ever parked, the timeouts): a model submitted
 * anew or replaced starts counting again. */
void psd_clock_model_fresh(psd_clock *c, const char *model);

/* psd_clock_check_worker: 0 when WORKER belongs to the world (invariant
 * 8), else PS_EINVAL naming the world.  Every call below that names a
 * worker checks it too; a caller that changes other state first (a push)
 * checks before. */
int psd_clock_check_worker(const psd_clock *c, uint32_t worker, ps_errbuf *eb);

/* psd_clock_check_live: 0 when WORKER may push (invariant 9), else
 * PS_EEXPIRED; checks the world too (psd_clock_check_worker). */
int psd_clock_check_live(const psd_clock *c, uint32_t worker, ps_errbuf *eb);

/* psd_clock_rejoin brings WORKER back (invariant 9): alive, lease
 * refreshed, clock tables entered again at its next pull or push.  A
 * dead rank that process PID on HOST takes back while its record names
 * another registered process (a fixed rank after the registered worker
 * finished) is no longer registered: its new holder's words are not
 * refused in the old one's name (invariant 12). */
int psd_clock_rejoin(psd_clock *c, uint32_t worker, const char *host, uint32_t pid,
                     uint64_t now_ms, ps_errbuf *eb);

/* psd_clock_touch refreshes WORKER's lease (any request of it); PS_EEXPIRED
 * for a worker that expired (invariant 9). */
int psd_clock_touch(psd_clock *c, uint32_t worker, uint64_t now_ms, ps_errbuf *eb);

/* psd_clock_heard notes that WORKER spoke at NOW_MS without a request
 * (its channel connection's hello named it): a live worker's lease starts
 * again (psd_clock_silent_ms counts from here); an unknown, dead or
 * departed one stays as it is (a hello registers and revives nobody). */
void psd_clock_heard(psd_clock *c, uint32_t worker, uint64_t now_ms);

/* psd_clock_heartbeat refreshes the lease and records what the worker
 * says of itself (HOST, DEVICE, MODEL copied; NULL keeps the old);
 * PS_EEXPIRED, recording nothing, for a worker that expired (invariant 9). */
int psd_clock_heartbeat(psd_clock *c, uint32_t worker, const char *model, uint64_t clock,
                        float steps_per_s, float blocked_share, const char *host,
                        const char *device, uint64_t now_ms, ps_errbuf *eb);

/* psd_clock_expired says whether WORKER is in the table and DEAD (its
 * lease expired or it left); 0 for a live or unknown worker. */
int psd_clock_expired(const psd_clock *c, uint32_t worker);

/* psd_clock_unregistered says whether WORKER is in the table, live, and
 * holds no registration (invariant 13: a fixed rank, or a worker whose
 * registration a restart lost); 0 for an unknown or dead worker. */
int psd_clock_unregistered(const psd_clock *c, uint32_t worker);

/* psd_clock_silent_ms returns how long WORKER has sent nothing here at
 * NOW_MS (its last request or released pull, one released after it left
 * or died excepted; a pull parked for it does not count), less the
 * loop's stalls since (psd_clock_stalled: its words waited unread then),
 * UINT64_MAX when the table does not know it.  Status's heartbeat age
 * counts the stalls, and is 0 for a live worker with a pull parked here. */
uint64_t psd_clock_silent_ms(const psd_clock *c, uint32_t worker, uint64_t now_ms);

/* psd_clock_slowest returns the slowest live clock in MODEL's table (0
 * when it has none or no such model). */
uint64_t psd_clock_slowest(const psd_clock *c, const char *model);

/* psd_clock_set_pid records WORKER's process id PID (0: not said, kept)
 * for status; an unknown worker, or a registered one (its registration's
 * pid stays: invariant 12), is left alone. */
void psd_clock_set_pid(psd_clock *c, uint32_t worker, uint32_t pid);

/* psd_clock_set_fixed records whether live WORKER's heartbeat says it is
 * a fixed rank (FIXED; invariant 14); a registered worker never is, and an
 * unknown or dead one is left alone. */
void psd_clock_set_fixed(psd_clock *c, uint32_t worker, int fixed);

/* psd_clock_holder: 0 when a request naming WORKER from process PID on
 * HOST may be the rank holder's (invariant 12), else PS_EEXPIRED naming
 * the holder.  *UNSEEN (NULL: not asked) is set when the holder
 * registered the rank while this table had no record of it (invariant
 * 13: a restart lost the refused process's registration and a newcomer
 * took the rank before its heartbeats came; it was never declared dead
 * here), else cleared.  Not kept in the save: a holder loaded from one
 * is taken as registered after the refused process was declared dead. */
int psd_clock_holder(const psd_clock *c, uint32_t worker, const char *host, uint32_t pid,
                     int *unseen, ps_errbuf *eb);

/* psd_clock_grace restarts the lease of every live worker at NOW_MS: a
 * restored coordinator serves (invariant 10). */
void psd_clock_grace(psd_clock *c, uint64_t now_ms);

/* psd_clock_step_out takes live WORKER out of every clock table where
 * its clock is at most CLOCK (the clock it said it stopped at: a late
 * step-out, overtaken by the worker's return at a later clock, leaves it
 * in), the pulls waiting on it re-checked, its lease and partitions kept:
 * it has nothing to train for now.  Its next push or pull enters it again
 * (invariant 1); a psd_clock_moved_on up to CLOCK does not (invariant
 * 11).  An unknown or dead worker is left alone.  Returns how many
 * tables it left (0: it was in none). */
size_t psd_clock_step_out(psd_clock *c, uint32_t worker, uint64_t clock, uint64_t now_ms);

/* psd_clock_leave makes WORKER DEAD at once (it stops): it leaves every
 * clock table and the pulls waiting on it are re-checked; its partitions
 * go to the live workers (invariant 7; a drained worker reported its last
 * offset with nothing in flight, so nothing is retrained).  DONE: it
 * finished its training (its rank is then taken last); else it counts as
 * died.  An unknown or already dead worker is left alone. */
void psd_clock_leave(psd_clock *c, uint32_t worker, uint64_t now_ms, int done);

/* psd_clock_partitions writes to OUT (NPARTS entries, caller-owned) the
 * partitions RANK owns now (invariant 7), in increasing order; returns
 * how many.  A rank whose worker died owns none. */
size_t psd_clock_partitions(const psd_clock *c, uint32_t rank, uint32_t nparts, uint32_t *out);

/* One partition's place in its epoch (invariant 7). */
typedef struct psd_part_pos {
  uint32_t part, epoch;
  uint64_t offset;           /* samples trained (pushes acknowledged everywhere) */
  uint64_t started;          /* end of the samples pushed or being pushed */
  uint64_t size;             /* samples in it; 0 while no worker said */
  uint64_t retrained;        /* a report's samples trained again since the last one */
} psd_part_pos;

#define PSD_CLOCK_NOBODY UINT32_MAX /* owner of a partition no live worker holds */

/* What psd_clock_part_info reports of one partition. */
typedef struct psd_part_info {
  psd_part_pos pos;
  uint32_t owner;            /* a rank or PSD_CLOCK_NOBODY */
  int active;                /* its owner claimed it and trains it */
} psd_part_info;

/* Per-epoch accounting (invariant 7). */
typedef struct psd_epoch_info {
  uint32_t epoch;
  uint64_t trained;          /* samples whose offset advanced past them */
  uint64_t retrained;        /* samples in flight at a death, handed over */
  uint32_t handovers;        /* active partitions taken from a dead worker */
  uint32_t done_parts;       /* partitions that finished this epoch */
} psd_epoch_info;

/* The partition table trains one model at a time, its job: a claim for
 * another model starts a new job (every partition at epoch 0, the counts
 * cleared) when no partition is being trained, else is refused with
 * PS_EEXIST; a table with no job takes the claim's model as it is (new,
 * or restored from a save made before the first claim: invariant 10).
 * psd_clock_job_reset starts a new job for MODEL (NULL: none) at once (a
 * model submitted again); psd_clock_job_model returns the job's model
 * (NULL: none; borrowed). */
int psd_clock_job_reset(psd_clock *c, const char *model, ps_errbuf *eb);
const char *psd_clock_job_model(const psd_clock *c);

/* psd_clock_claim hands WORKER (a live, registered worker) the partition
 * it trains next (invariant 7): the one it is already training, else its
 * own unfinished one of the lowest (epoch, id), else one taken from the
 * most loaded worker, for MODEL's job (above).  EPOCHS: its run's epoch count (a partition at that
 * epoch is finished; the job's count is the largest claimed).  Returns 1
 * with *POS (resume at pos->offset), 0 when nothing is left for it (*DONE
 * set when every partition finished), or a PS_E* code (PS_EEXPIRED,
 * PS_EEXPIRED too for a worker that did not register: invariant 13).  DATA_SIZE: the samples
 * in the worker's training set (0: not said; the job's first claim sets
 * the job's, psd_clock_data_size returns it); another size is PS_ECONFIG
 * once the job trained anything, finished or not: that worker cut other
 * partitions (its data files or data.limit differ).  A new job takes a
 * new size.  A refused claim changes nothing. */
int psd_clock_claim(psd_clock *c, uint32_t worker, const char *model, uint32_t epochs,
                    uint64_t data_size, uint64_t now_ms, psd_part_pos *pos, int *done,
                    ps_errbuf *eb);

/* psd_clock_progress records POS reported by WORKER (invariant 7): 0, or
 * PS_ENOENT when the partition is not WORKER's active one at that epoch
 * (it was taken away: the worker drops it), PS_EINVAL for an offset that
 * goes back or past the size, or a size that disagrees with an earlier
 * report. */
int psd_clock_progress(psd_clock *c, uint32_t worker, const psd_part_pos *pos, uint64_t now_ms,
                       ps_errbuf *eb);

/* Partition table and epoch accounting for status: psd_clock_nparts
 * partitions, psd_clock_nepochs epochs (0..n-1) seen. */
uint32_t psd_clock_nparts(const psd_clock *c);
void psd_clock_part_info(const psd_clock *c, uint32_t part, psd_part_info *info);
size_t psd_clock_nepochs(const psd_clock *c);
void psd_clock_epoch_info(const psd_clock *c, size_t epoch, psd_epoch_info *info);
uint32_t psd_clock_job_epochs(const psd_clock *c);
uint64_t psd_clock_data_size(const psd_clock *c);

/* psd_clock_rank_cap returns the number of worker ids the table accepts
 * (invariant 8) for a world of WORLD_SIZE. */
uint32_t psd_clock_rank_cap(uint32_t world_size);

/* psd_clock_save writes the table (invariant 10) into *BUF (malloc'd,
 * caller frees; *LEN bytes, NUL-terminated) and clears the dirty mark. */
int psd_clock_save(psd_clock *c, char **buf, size_t *len, ps_errbuf *eb);

/* psd_clock_load restores what psd_clock_save wrote (TEXT, NUL-terminated)
 * into C, fresh from psd_clock_new, as of NOW_MS.  PS_EFORMAT with "line
 * N: ..." for a malformed text (C is then left as it was loaded so far:
 * free it); PS_ECONFIG when the text was saved with another partition
 * count than C's (C untouched: the count is its first entry). */
int psd_clock_load(psd_clock *c, const char *text, uint64_t now_ms, ps_errbuf *eb);

/* psd_clock_dirty says whether anything psd_clock_save writes changed
 * since the last save. */
int psd_clock_dirty(const psd_clock *c);

/* psd_clock_register hands out a rank (the worker id) for a new worker:
 * the same one to a worker of the same HOST and PID (PID not 0), live (a
 * retried registration) or declared dead (one that registers again to
 * rejoin after its lease expired), or unregistered with that pid and
 * host from its heartbeats (a registration a restart lost: invariant
 * 13), else a rank no live worker holds, by invariant 8's
 * order; the partitions are then balanced (invariant 7).  PS_EEXIST when
 * every rank below the cap is held by a live worker, or when live fixed
 * ranks of MODEL are in the table (invariant 14: the message names them).
 * *START_CLOCK: the slowest live clock of MODEL here (0 when none); the
 * worker enters MODEL's clock table (when the model is declared) at it,
 * provisionally: its first pull or push sets its clock, down too (a
 * worker registering again after an expiry may be behind it). */
int psd_clock_register(psd_clock *c, const char *model, const char *host, uint32_t pid,
                       const char *device, uint64_t now_ms, uint32_t *rank,
                       uint64_t *start_clock, ps_errbuf *eb);

/* psd_clock_pushed records that WORKER pushed step CLOCK of MODEL and
 * releases the pulls that became servable (their callbacks run before it
 * returns). */
int psd_clock_pushed(psd_clock *c, const char *model, uint32_t worker, uint64_t clock,
                     uint64_t now_ms, ps_errbuf *eb);

/* psd_clock_moved_on raises live WORKER's clock of MODEL to CLOCK
 * (invariant 11: its push of step CLOCK - 1 here may be lost), entering
 * it when it is in no table of MODEL, and releases the pulls that became
 * servable; nothing (0) when it stepped out at CLOCK or later and is out
 * of MODEL's table still (or in it provisionally only: invariant 11).
 * PS_ENOENT for a model not declared here (nothing created), PS_EEXPIRED
 * for an expired worker (invariant 9). */
int psd_clock_moved_on(psd_clock *c, const char *model, uint32_t worker, uint64_t clock,
                       uint64_t now_ms, ps_errbuf *eb);

/* psd_clock_pull admits a pull of WORKER at CLOCK of MODEL: returns 0 when
 * it may be served now (the gap is recorded), 1 when it was parked into P
 * (P->fn runs later, exactly once, or psd_clock_cancel), or a PS_E* code. */
int psd_clock_pull(psd_clock *c, const char *model, uint32_t worker, uint64_t clock,
                   uint64_t now_ms, psd_park *p, ps_errbuf *eb);

/* psd_clock_cancel unlinks a parked pull without calling it (its request
 * went away).  A pull not parked is left alone. */
void psd_clock_cancel(psd_clock *c, psd_park *p);

/* psd_clock_release_all releases every parked pull with STATUS and MSG
 * (shutdown). */
void psd_clock_release_all(psd_clock *c, int status, const char *msg);

/* psd_clock_tick expires leases (invariant 3) and times parked pulls out
 * (invariant 4) as of NOW_MS. */
void psd_clock_tick(psd_clock *c, uint64_t now_ms);

/* psd_clock_stalled says that the caller's loop read no request for the
 * STALL_MS before NOW_MS (a long request held it, or the process was
 * stopped): each live worker's lease is extended by the part of the
 * stall since its last word (invariant 3), until its next word.  Call it
 * before the tick that would expire them. */
void psd_clock_stalled(psd_clock *c, uint64_t stall_ms, uint64_t now_ms);

/* psd_clock_next_ms returns the earliest time a tick has work (a lease to
 * expire, a parked pull's deadline), or UINT64_MAX. */
uint64_t psd_clock_next_ms(const psd_clock *c, uint64_t now_ms);

/* Per-model figures for status. */
typedef struct psd_clock_stats {
  uint32_t staleness;        /* PSD_CLOCK_ASP for asp */
  uint64_t max_gap;          /* invariant 6 */
  uint32_t parked;           /* parked now */
  uint64_t parked_total, timeouts;
  uint64_t min_clock;        /* slowest live clock (0 without workers) */
  uint32_t live;             /* live workers in the table */
} psd_clock_stats;
int psd_clock_stats_of(const psd_clock *c, const char *model, psd_clock_stats *st);

/* psd_clock_model_clock returns WORKER's clock of MODEL, or -1 when the
 * worker is not in that table. */
int64_t psd_clock_model_clock(const psd_clock *c, const char *model, uint32_t worker);

/* Workers: psd_clock_nworkers of them, psd_clock_worker(i) for i below. */
size_t psd_clock_nworkers(const psd_clock *c);
void psd_clock_worker(const psd_clock *c, size_t i, uint64_t now_ms, psd_worker_info *info);
uint32_t psd_clock_world_size(const psd_clock *c);

#endif
