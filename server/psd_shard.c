/* psd_shard: state checks, counters and the request handlers shared by
 * both transports.  Loop thread only (see psd_shard.h). */
#include "psd_shard.h"
#include "psd_shard_sparse.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_log.h"
#include "ps_model.h"
#include "ps_pb.h"
#include "ps_tls.h"
#include "ps_version.h"
#include "psd_wal.h"
#include "psd_coord.h"

static const char *const psd_state_names[] = {
    [PSD_STARTING] = "STARTING", [PSD_RECOVERING] = "RECOVERING", [PSD_SERVING] = "SERVING",
    [PSD_DRAINING] = "DRAINING", [PSD_DEGRADED] = "DEGRADED",
};

/* psd_state_name returns the static upper-case name of ST. */
const char *psd_state_name(psd_state st) {
  if ((unsigned)st >= sizeof psd_state_names / sizeof psd_state_names[0]) return "UNKNOWN";
  return psd_state_names[st];
}

/* The transitions of psd_shard.h's list, as a bit set of target states
 * per source state. */
#define PSD_TO(st) (1u << (st))
static const unsigned psd_state_next[] = {
    [PSD_STARTING] = PSD_TO(PSD_RECOVERING),
    [PSD_RECOVERING] = PSD_TO(PSD_SERVING) | PSD_TO(PSD_DRAINING),
    [PSD_SERVING] = PSD_TO(PSD_DEGRADED) | PSD_TO(PSD_DRAINING),
    [PSD_DEGRADED] = PSD_TO(PSD_SERVING) | PSD_TO(PSD_DRAINING),
    [PSD_DRAINING] = 0,
};

/* psd_shard_set_state: see psd_shard.h. */
void psd_shard_set_state(psd_shard *sh, psd_state to, const char *why) {
  assert((unsigned)sh->state < sizeof psd_state_next / sizeof psd_state_next[0]);
  assert(psd_state_next[sh->state] & PSD_TO(to));
  sh->state = to;
  snprintf(sh->degraded_why, sizeof sh->degraded_why, "%s",
           to == PSD_DEGRADED && why ? why : "");
}

/* What a request asks of the shard, for the state table below. */
typedef enum psd_req {
  PSD_REQ_READ,   /* pulls, payload checks, exports: memory only */
  PSD_REQ_PUSH,   /* changes memory; durable at the next flush */
  PSD_REQ_WORKER, /* register, heartbeat: clock tables, memory only */
  PSD_REQ_SUBMIT, /* writes the registry to RocksDB before answering */
  PSD_REQ_N
} psd_req;

/* PSD_IF_SYNC: refused only under durability `sync`, where an answer
 * promises the update is on disk. */
enum { PSD_IF_SYNC = 1 };

/* psd_state_refuses[state][req]: 0 accepted, else the code refusing it.
 * DEGRADED keeps serving from memory what `periodic` acknowledges before
 * it is durable anyway; a submit must write, so it waits for the disk. */
static const int psd_state_refuses[][PSD_REQ_N] = {
    /*                 READ          PUSH          WORKER        SUBMIT */
    [PSD_STARTING] = {PS_EUNAVAIL, PS_EUNAVAIL, PS_EUNAVAIL, PS_EUNAVAIL},
    [PSD_RECOVERING] = {PS_EUNAVAIL, PS_EUNAVAIL, PS_EUNAVAIL, PS_EUNAVAIL},
    [PSD_SERVING] = {0, 0, 0, 0},
    [PSD_DRAINING] = {PS_ESHUTDOWN, PS_ESHUTDOWN, PS_ESHUTDOWN, PS_ESHUTDOWN},
    [PSD_DEGRADED] = {0, PSD_IF_SYNC, 0, PS_EDEGRADED},
};

/* psd_shard_who: see psd_shard.h. */
const char *psd_shard_who(const psd_shard *sh, char *buf, size_t cap) {
  if (sh->agg_me) snprintf(buf, cap, "aggregator %s", sh->agg_me->name);
  else snprintf(buf, cap, "shard %u", sh->me->id);
  return buf;
}

/* psd_shard_accepting returns 0 when the shard takes a request of kind REQ
 * now, else the code refusing it (psd_state_refuses) with a message
 * saying why. */
static int psd_shard_accepting(const psd_shard *sh, psd_req req, ps_errbuf *eb) {
  int code = psd_state_refuses[sh->state][req];
  if (code == PSD_IF_SYNC) code = sh->cfg->durability == PS_DUR_SYNC ? PS_EDEGRADED : 0;
  if (code == 0) return 0;
  char me[96];
  psd_shard_who(sh, me, sizeof me);
  switch (code) {
    case PS_EDEGRADED:
      return ps_errf(eb, PS_EDEGRADED,
                     "%s is degraded (%s): %s are refused until its disk works and has "
                     "room again", me,
                     sh->degraded_why, req == PSD_REQ_SUBMIT ? "models" : "pushes");
    case PS_ESHUTDOWN:
      return ps_errf(eb, PS_ESHUTDOWN, "%s is shutting down", me);
    default:
      return ps_errf(eb, code, "%s is not serving yet (%s)", me, psd_state_name(sh->state));
  }
}

int psd_shard_admit(psd_shard *sh, int push, ps_errbuf *eb) {
  return psd_shard_accepting(sh, push ? PSD_REQ_PUSH : PSD_REQ_READ, eb);
}

/* psd_shard_count_error counts one failed request. */
void psd_shard_count_error(psd_shard *sh) { sh->ctr.errors++; }

/* psd_shard_done counts ERR as an error when it is one and returns it. */
static int psd_shard_done(psd_shard *sh, int err) {
  if (err < 0) sh->ctr.errors++;
  return err;
}

/* psd_shard_stored returns 0 when SH holds a store (a root shard), else
 * PS_ENOTSUP: an aggregator answers pushes and pulls on the channel only. */
static int psd_shard_stored(const psd_shard *sh, ps_errbuf *eb) {
  if (sh->store) return 0;
  return ps_errf(eb, PS_ENOTSUP, "aggregator '%s' holds no model: it sums pushes and serves "
                 "pulls on the tensor channel only (ask a root shard)",
                 sh->agg_me ? sh->agg_me->name : "?");
}

/* psd_shard_spec returns MODEL's spec (borrowed from the store), or NULL
 * (unknown, or an aggregator: see psd_shard_stored). */
const Ps__ModelSpec *psd_shard_spec(psd_shard *sh, const char *model) {
  return sh->store ? psd_store_spec(sh->store, model) : NULL;
}

/* psd_shard_held: see psd_shard.h. */
int psd_shard_held(psd_shard *sh, const char *model, const uint32_t **ids, size_t *nids,
                   uint64_t *nelems, ps_errbuf *eb) {
  int err = psd_shard_stored(sh, eb);
  if (err == 0 && psd_store_held(sh->store, model, ids, nids, nelems) < 0)
    err = ps_errf(eb, PS_ENOENT, "unknown model '%s'", model);
  return psd_shard_done(sh, err);
}

/* ---- consistency ----------------------------------------------------------- */

/* psd_shard_stall_check credits a stalled loop to the leases (psd_clock
 * invariant 3, psd_stall.h): the heartbeats of that time still wait
 * unread in the sockets and must not count as silence.  Runs before any
 * use of NOW by the table, so neither the timer nor a request's own tick
 * (a registration's) expires a worker for the shard's own silence. */
static void psd_shard_stall_check(psd_shard *sh, uint64_t now) {
  if (!sh->clock) return;
  uint64_t stall = psd_stall_check(&sh->clock_stall, now);
  if (stall) psd_clock_stalled(sh->clock, stall, now);
}

/* psd_shard_now_ms: the loop's millisecond clock (the timer's base),
 * after crediting a stall that ended just now (psd_shard_stall_check). */
static uint64_t psd_shard_now_ms(psd_shard *sh) {
  uv_update_time(sh->loop);
  uint64_t now = uv_now(sh->loop);
  psd_shard_stall_check(sh, now);
  return now;
}

/* psd_shard_staleness: see psd_shard.h. */
uint32_t psd_shard_staleness(const Ps__ModelSpec *spec) {
  ps_consistency c = PS_ASP;
  ps_errbuf eb;
  if (spec && ps_consistency_parse(spec->name, spec->consistency, &c, &eb) < 0) c = PS_ASP;
  return c == PS_BSP ? 0 : c == PS_SSP ? spec->staleness : PSD_CLOCK_ASP;
}

static void psd_shard_on_clock_timer(uv_timer_t *t);

/* psd_shard_clock_arm (re)starts the timer for the table's next
 * deadline, a watch period away at most while leases run (so that its
 * lateness shows a stalled loop: psd_stall_arm), or stops it when the
 * table has none (no live worker, no parked pull): no lease to extend,
 * no stall to say. */
static void psd_shard_clock_arm(psd_shard *sh) {
  if (!sh->clock) return;
  uint64_t now = uv_now(sh->loop), next = psd_clock_next_ms(sh->clock, now);
  psd_stall_arm(&sh->clock_stall, now, next, next != UINT64_MAX);
}

/* psd_shard_on_clock_timer expires leases and times parked pulls out. */
static void psd_shard_on_clock_timer(uv_timer_t *t) {
  psd_shard *sh = t->data;
  uint64_t now = psd_shard_now_ms(sh); /* credits a stall first */
  psd_stall_fired(&sh->clock_stall);
  psd_clock_tick(sh->clock, now);
  psd_shard_clock_arm(sh);
}

/* psd_shard_on_expire says that a worker's lease expired. */
static void psd_shard_on_expire(void *arg, uint32_t worker, uint64_t silent_ms) {
  psd_shard *sh = arg;
  ps_warn("worker %u: lease expired (silent for %llu ms): it leaves the clock tables%s", worker,
          (unsigned long long)silent_ms,
          sh->coordinator ? "; its data partitions go to the live workers" : "");
}

/* psd_shard_clock_start: see psd_shard.h. */
int psd_shard_clock_start(psd_shard *sh, ps_errbuf *eb) {
  const ps_config *cfg = sh->cfg;
  psd_clock_opts o = {.heartbeat_ms = cfg->workers.heartbeat_ms,
                      .lease_ms = cfg->workers.lease_ms,
                      .pull_timeout_ms = cfg->training.pull_timeout_ms,
                      .world_size = cfg->workers.count, .nparts = cfg->data.partitions,
                      .on_expire = psd_shard_on_expire, .arg = sh};
  int err = psd_clock_new(&sh->clock, &o, eb);
  if (err < 0) return err;
  sh->coordinator = ps_config_coordinator(cfg) == sh->me;
  uv_timer_init(sh->loop, &sh->clock_timer);
  sh->clock_timer.data = sh;
  char me[96];
  psd_stall_init(&sh->clock_stall, &sh->clock_timer, psd_shard_on_clock_timer,
                 cfg->workers.heartbeat_ms, cfg->workers.lease_ms,
                 psd_shard_who(sh, me, sizeof me), "heartbeats");
  uint64_t now = psd_shard_now_ms(sh);
  size_t n = sh->store ? psd_store_nmodels(sh->store) : 0;
  for (size_t i = 0; i < n && err == 0; i++) {
    psd_model_info info;
    psd_store_model_info(sh->store, i, &info);
    err = psd_clock_set_model(sh->clock, info.name, psd_shard_staleness(info.spec), now, eb);
  }
  if (err == 0) err = psd_coord_restore(sh, eb);
  return err;
}

/* psd_shard_clock_serving: see psd_shard.h. */
void psd_shard_clock_serving(psd_shard *sh) {
  if (!sh->clock) return;
  psd_clock_grace(sh->clock, psd_shard_now_ms(sh));
  psd_shard_clock_arm(sh);
}

/* psd_shard_clock_stop: see psd_shard.h. */
void psd_shard_clock_stop(psd_shard *sh) {
  if (!sh->clock) return;
  psd_clock_release_all(sh->clock, PS_ESHUTDOWN, "shard is shutting down");
  psd_stall_stop(&sh->clock_stall);
  psd_coord_stop(sh);
}

/* psd_shard_parked_ms: see psd_shard.h. */
uint32_t psd_shard_parked_ms(psd_shard *sh, const psd_park *p) {
  uint64_t now = psd_shard_now_ms(sh);
  return now > p->since_ms ? (uint32_t)(now - p->since_ms) : 0;
}

/* psd_shard_pull_admit: see psd_shard.h. */
int psd_shard_pull_admit(psd_shard *sh, const char *model, uint32_t worker, uint64_t clock,
                         psd_park *p, ps_errbuf *eb) {
  if (!sh->clock) return 0;
  int err = psd_shard_accepting(sh, PSD_REQ_READ, eb);
  if (err < 0) return psd_shard_done(sh, err);
  err = psd_clock_pull(sh->clock, model, worker, clock, psd_shard_now_ms(sh), p, eb);
  psd_shard_clock_arm(sh);
  return psd_shard_done(sh, err);
}

/* shard_partitions sets *OUT (malloc'd) and *N to the data partitions
 * RANK trains now (psd_clock invariant 7); PS_ENOMEM. */
static int shard_partitions(psd_shard *sh, uint32_t rank, uint32_t **out, size_t *n) {
  uint32_t nparts = sh->cfg->data.partitions;
  *n = 0;
  if (!(*out = malloc((nparts ? nparts : 1) * sizeof **out))) return PS_ENOMEM;
  *n = psd_clock_partitions(sh->clock, rank, nparts, *out);
  return 0;
}

/* psd_shard_check_worker_text checks what a worker says of itself before
 * the shard keeps it (and psctl status prints it): MODEL empty or a model
 * name, HOST at most 255 bytes and DEVICE at most 1024, neither with a
 * control character (ps_pb_unpack already refused bad UTF-8). */
static int psd_shard_check_worker_text(const char *model, const char *host, const char *device,
                                       ps_errbuf *eb) {
  int err = model && *model ? ps_name_check("model", model, eb) : 0;
  if (err == 0) err = ps_text_check("worker host", host, 255, eb);
  if (err == 0) err = ps_text_check("worker device", device, 1024, eb);
  return err;
}

/* psd_shard_check_worker_rates checks the rates a heartbeat reports
 * (steps/s, share of time blocked): a number psw computes is finite and
 * not negative; anything else would reach ListWorkers and psctl status,
 * whose JSON has no NaN or Infinity. */
static int psd_shard_check_worker_rates(float steps_per_s, float blocked_share, ps_errbuf *eb) {
  if (!isfinite(steps_per_s) || steps_per_s < 0)
    return ps_errf(eb, PS_EINVAL, "heartbeat: steps_per_s %g is not a finite number >= 0",
                   (double)steps_per_s);
  if (!isfinite(blocked_share) || blocked_share < 0)
    return ps_errf(eb, PS_EINVAL, "heartbeat: blocked_share %g is not a finite number >= 0",
                   (double)blocked_share);
  return 0;
}

/* psd_shard_register: see psd_shard.h. */
int psd_shard_register(psd_shard *sh, const Ps__RegisterWorkerRequest *req,
                       Ps__RegisterWorkerReply *reply, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_WORKER, eb);
  if (err < 0) return psd_shard_done(sh, err);
  if (!sh->coordinator || !sh->clock)
    return psd_shard_done(sh, ps_errf(eb, PS_ENOTSUP,
                                      "shard %u is not the coordinator (shard %u is)",
                                      sh->me->id, ps_config_coordinator(sh->cfg)->id));
  if ((err = psd_shard_check_worker_text(req->model, req->host, req->device, eb)) < 0)
    return psd_shard_done(sh, err);
  /* a worker that cut the data otherwise would train other samples */
  if (req->partitions && req->partitions != psd_clock_nparts(sh->clock))
    return psd_shard_done(sh, ps_errf(eb, PS_ECONFIG, "this worker cuts the training set into "
                                      "%u partitions, the coordinator into %u: data.partitions "
                                      "differs between their cluster files", req->partitions,
                                      psd_clock_nparts(sh->clock)));
  uint32_t rank;
  uint64_t start;
  err = psd_clock_register(sh->clock, req->model, req->host, req->pid, req->device,
                           psd_shard_now_ms(sh), &rank, &start, eb);
  psd_shard_clock_arm(sh);
  if (err < 0) return psd_shard_done(sh, err);
  psd_coord_save_soon(sh); /* the rank, with the host and pid it goes by */
  if (shard_partitions(sh, rank, &reply->partitions, &reply->n_partitions) < 0)
    return psd_shard_done(sh, ps_errf(eb, PS_ENOMEM, "out of memory"));
  reply->worker = reply->rank = rank;
  reply->world_size = sh->cfg->workers.count;
  reply->heartbeat_ms = sh->cfg->workers.heartbeat_ms;
  reply->lease_ms = sh->cfg->workers.lease_ms;
  reply->start_clock = start;
  const Ps__ModelSpec *spec = req->model ? psd_store_spec(sh->store, req->model) : NULL;
  reply->consistency = spec && spec->consistency && *spec->consistency ? spec->consistency : "asp";
  reply->staleness = spec ? spec->staleness : 0;
  ps_info("worker %u registered: %s pid %u, %s, model '%s', start clock %llu", rank,
          req->host, req->pid, req->device, req->model, (unsigned long long)start);
  return 0;
}

/* psd_shard_heartbeat: see psd_shard.h. */
int psd_shard_heartbeat(psd_shard *sh, const Ps__HeartbeatRequest *req,
                        Ps__HeartbeatReply *reply, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_WORKER, eb);
  if (err < 0) return psd_shard_done(sh, err);
  if (!sh->clock) return 0;
  if ((err = psd_shard_check_worker_text(req->model, req->host, req->device, eb)) < 0 ||
      (err = psd_shard_check_worker_rates(req->steps_per_s, req->blocked_share, eb)) < 0)
    return psd_shard_done(sh, err);
  uint64_t now = psd_shard_now_ms(sh);
  /* psd_clock invariant 12: what another process sends in a registered
   * rank's name (one stopped past its lease whose rank went to a new
   * worker, then resumed) changes nothing here; it learns it is out
   * (expired), registers again and stops when the rank is not given
   * back; a fixed rank (never registered) stops (HeartbeatReply.held).
   * Only the coordinator knows who registered. */
  ps_errbuf why;
  int unseen;
  if (sh->coordinator &&
      psd_clock_holder(sh->clock, req->worker, req->host, req->pid, &unseen, &why) < 0) {
    ps_info("worker %u: %s%s refused: %s", req->worker,
            req->leaving ? "a leave" : req->n_progress ? "a progress report" : "a heartbeat",
            req->claim ? " with a claim" : "", why.msg);
    reply->expired = !req->leaving;
    reply->rank_taken = unseen && !req->leaving;
    reply->held = !req->leaving;
    reply->stayed = req->leaving;
    reply->lease_ms = sh->cfg->workers.lease_ms;
    return 0;
  }
  /* psd_clock invariant 11: a worker that went on past a push this shard
   * may never have applied; an expired one learns it (reply->expired) */
  if (req->moved_on && !req->leaving) {
    err = psd_clock_moved_on(sh->clock, req->model, req->worker, req->moved_on, now, eb);
    psd_shard_clock_arm(sh);
    reply->expired = err == PS_EEXPIRED;
    reply->lease_ms = sh->cfg->workers.lease_ms;
    return err == PS_EEXPIRED ? 0 : psd_shard_done(sh, err);
  }
  /* A worker this shard declared DEAD learns it here (its rank may have
   * been handed out again): it registers anew, then rejoins (psd_clock
   * invariant 9); until then its beats change nothing. */
  if (req->rejoin && !req->leaving && psd_clock_expired(sh->clock, req->worker)) {
    int was_dead = psd_clock_check_live(sh->clock, req->worker, NULL) == PS_EEXPIRED;
    if ((err = psd_clock_rejoin(sh->clock, req->worker, req->host, req->pid, now, eb)) < 0)
      return psd_shard_done(sh, err);
    if (was_dead) ps_info("worker %u rejoined after it was declared dead", req->worker);
  }
  /* An aggregator's leave for a local worker it saw go (DESIGN.md
   * "Hierarchy"): only a worker silent here that long leaves; one that
   * spoke since (failed over to this shard, alive), or one it never
   * heard of, stays, untouched. */
  uint64_t silent = psd_clock_silent_ms(sh->clock, req->worker, now);
  if (req->leaving && req->leave_if_silent_ms &&
      (silent == UINT64_MAX || silent < req->leave_if_silent_ms ||
       psd_clock_expired(sh->clock, req->worker))) {
    reply->stayed = 1;
    /* nothing to leave: gone already, or never here */
    reply->expired = silent == UINT64_MAX || psd_clock_expired(sh->clock, req->worker);
    reply->lease_ms = sh->cfg->workers.lease_ms;
    return 0;
  }
  reply->expired = !req->leaving && psd_clock_expired(sh->clock, req->worker);
  err = psd_clock_heartbeat(sh->clock, req->worker, req->model, req->clock, req->steps_per_s,
                            req->blocked_share, req->host, req->device, now, eb);
  if (err == PS_EEXPIRED) {
    psd_shard_clock_arm(sh);
    reply->lease_ms = sh->cfg->workers.lease_ms;
    reply->stayed = req->leaving;
    return 0; /* answered: reply->expired says it (a leaving one is gone already) */
  }
  if (err == 0) {
    psd_clock_set_pid(sh->clock, req->worker, req->pid);
    psd_clock_set_fixed(sh->clock, req->worker, req->fixed_rank); /* psd_clock invariant 14 */
  }
  if (err == 0 && req->leaving) {
    psd_clock_leave(sh->clock, req->worker, now, req->done);
    if (req->leave_if_silent_ms)
      ps_info("worker %u left through its aggregator (silent here for %llu ms, its connections "
              "to the aggregator closed)%s", req->worker, (unsigned long long)silent,
              sh->coordinator ? ": its data partitions go to the live workers" : "");
    else
      ps_info("worker %u left at clock %llu%s", req->worker, (unsigned long long)req->clock,
              req->done ? ", done"
              : sh->coordinator ? " before it finished: its data partitions go to the live workers"
                                : " before it finished");
  }
  if (err == 0 && req->idle && !req->leaving && psd_clock_step_out(sh->clock, req->worker, req->clock, now))
    ps_info("worker %u waits for a partition to claim: out of the clock tables until it pushes "
            "or pulls again", req->worker);
  psd_shard_clock_arm(sh);
  if (err < 0) return psd_shard_done(sh, err);
  reply->lease_ms = sh->cfg->workers.lease_ms;
  /* The coordinator tells a live worker its share of the data, which
   * changes when a worker dies or a rank is taken again. */
  if (sh->coordinator && !req->leaving && !reply->expired) {
    /* psd_clock invariant 13: a restart may have lost its registration */
    reply->unregistered = psd_clock_unregistered(sh->clock, req->worker);
    if ((err = psd_coord_heartbeat(sh, req, reply, now, eb)) < 0) return psd_shard_done(sh, err);
    if (shard_partitions(sh, req->worker, &reply->partitions, &reply->n_partitions) < 0)
      return psd_shard_done(sh, ps_errf(eb, PS_ENOMEM, "out of memory"));
    reply->assigned = 1;
  }
  return 0;
}

/* psd_shard_list_workers: see psd_shard.h.  Strings are copied. */
int psd_shard_list_workers(psd_shard *sh, Ps__ListWorkersReply *reply, ps_errbuf *eb) {
  reply->shard = sh->me->id;
  reply->coordinator = sh->coordinator;
  reply->world_size = sh->cfg->workers.count;
  int cerr = psd_coord_list(sh, reply, eb);
  if (cerr < 0) return cerr;
  size_t n = sh->clock ? psd_clock_nworkers(sh->clock) : 0;
  if (!n) return 0;
  reply->workers = calloc(n, sizeof *reply->workers);
  if (!reply->workers) return ps_errf(eb, PS_ENOMEM, "out of memory listing workers");
  uint64_t now = psd_shard_now_ms(sh);
  for (size_t i = 0; i < n; i++) {
    psd_worker_info in;
    psd_clock_worker(sh->clock, i, now, &in);
    Ps__WorkerInfo *w = malloc(sizeof *w);
    if (!w) break;
    ps__worker_info__init(w);
    w->worker = w->rank = in.id;
    w->host = strdup(in.host);
    w->device = strdup(in.device);
    w->model = strdup(in.model);
    w->state = (char *)psd_worker_state_name(in.state);
    w->pid = in.pid;
    w->clock = in.clock;
    w->heartbeat_age_ms = in.age_ms;
    w->steps_per_s = in.steps_per_s;
    w->blocked_share = in.blocked_share;
    w->registered = sh->coordinator && in.registered;
    w->fixed_rank = sh->coordinator && in.fixed;
    reply->workers[reply->n_workers++] = w;
    int err = sh->coordinator ? shard_partitions(sh, in.id, &w->partitions, &w->n_partitions) : 0;
    if (err < 0 || !w->host || !w->device || !w->model) {
      psd_shard_list_workers_release(reply);
      return ps_errf(eb, PS_ENOMEM, "out of memory listing workers");
    }
  }
  return 0;
}

/* psd_shard_list_workers_release frees what psd_shard_list_workers made. */
void psd_shard_list_workers_release(Ps__ListWorkersReply *reply) {
  for (size_t i = 0; i < reply->n_workers; i++) {
    free(reply->workers[i]->host);
    free(reply->workers[i]->device);
    free(reply->workers[i]->model);
    free(reply->workers[i]->partitions);
    free(reply->workers[i]);
  }
  free(reply->workers);
  reply->workers = NULL;
  reply->n_workers = 0;
  psd_coord_list_release(reply);
}

/* psd_shard_submit registers SPEC on this shard and fills REPLY's counts. */
int psd_shard_submit(psd_shard *sh, const Ps__ModelSpec *spec, int replace,
                     Ps__SubmitModelReply *reply, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_SUBMIT, eb);
  if (err == 0) err = psd_shard_stored(sh, eb);
  if (err < 0) return psd_shard_done(sh, err);
  if (!spec) return psd_shard_done(sh, ps_errf(eb, PS_EINVAL, "submit without a model"));
  int created = 0;
  uint32_t nchunks = 0;
  uint64_t nparams = 0;
  /* a replace cannot drop a model's embedding rows (the store's dense
   * state it can): refused, whether the old or the new model has tables */
  const Ps__ModelSpec *old = psd_store_spec(sh->store, spec->name);
  if (replace && old && (psd_shard_sparse_tables(old) || psd_shard_sparse_tables(spec)) &&
      psd_store_replaces(sh->store, spec))
    return psd_shard_done(sh, psd_shard_sparse_tables(old)
                                  ? ps_errf(eb, PS_ENOTSUP, "model '%s' has embedding tables, "
                                            "whose rows a replace cannot drop: submit the new "
                                            "model under another name", spec->name)
                                  : ps_errf(eb, PS_ENOTSUP, "the new model '%s' has embedding "
                                            "tables, and a replace cannot put a model with "
                                            "tables in place of another: submit it under "
                                            "another name", spec->name));
  /* embedding tables: checked before the store takes the spec, added after */
  if ((err = psd_shard_sparse_check(sh, spec, eb)) < 0) return psd_shard_done(sh, err);
  err = psd_store_submit(sh->store, spec, replace, &created, &nchunks, &nparams, eb);
  if (err < 0) return psd_shard_done(sh, err);
  if ((err = psd_shard_sparse_add(sh, spec, eb)) < 0) return psd_shard_done(sh, err);
  if (sh->clock) {
    const Ps__ModelSpec *now_spec = psd_store_spec(sh->store, spec->name);
    err = psd_clock_set_model(sh->clock, spec->name, psd_shard_staleness(now_spec),
                              psd_shard_now_ms(sh), eb);
    /* a model submitted anew (or replaced) trains from the first epoch */
    const char *job = psd_clock_job_model(sh->clock);
    if (err == 0 && created && job && !strcmp(job, spec->name))
      err = psd_clock_job_reset(sh->clock, spec->name, eb);
    if (created) psd_clock_model_fresh(sh->clock, spec->name); /* as the tau histogram */
    psd_shard_clock_arm(sh);
    if (err < 0) return psd_shard_done(sh, err);
  }
  reply->created = created != 0;
  reply->replaced = created == 2;
  reply->chunks = nchunks;
  reply->params = nparams;
  return 0;
}

/* psd_shard_too_big refuses a payload of NBYTES over max_request_bytes. */
static int psd_shard_too_big(psd_shard *sh, const ps_req *r, uint64_t nbytes, ps_errbuf *eb) {
  if (nbytes <= sh->cfg->max_request_bytes) return 0;
  return ps_errf(eb, PS_ETOOBIG, "payload of %llu bytes for model '%s' exceeds max_request_bytes %llu",
                 (unsigned long long)nbytes, r->model,
                 (unsigned long long)sh->cfg->max_request_bytes);
}

/* psd_shard_clock_check: see psd_shard.h. */
int psd_shard_clock_check(const char *what, const char *model, uint64_t clock, ps_errbuf *eb) {
  if (clock <= PS_CLOCK_MAX) return 0;
  return ps_errf(eb, PS_EINVAL, "%s of model '%s' at clock %llu: beyond the largest clock a "
                 "worker reaches (%llu); refused (a client's bug or a forged request)", what,
                 model ? model : "", (unsigned long long)clock,
                 (unsigned long long)PS_CLOCK_MAX);
}

/* psd_shard_payload validates a push or pull request's model, ids,
 * codec and clock and sizes its payload. */
int psd_shard_payload(psd_shard *sh, const ps_req *r, int push, uint64_t *nelems,
                      uint64_t *nbytes, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_READ, eb);
  if (err == 0) err = psd_shard_clock_check(push ? "push" : "pull", r->model, r->clock, eb);
  if (err == 0)
    err = sh->agg ? psd_agg_payload(sh->agg, r, push, nelems, nbytes, eb)
                  : psd_store_payload(sh->store, r, push, nelems, nbytes, eb);
  if (err == 0) err = psd_shard_too_big(sh, r, *nbytes, eb);
  return psd_shard_done(sh, err);
}

/* shard_cmp_u32 orders uint32_t values (qsort). */
static int shard_cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* shard_summed_once: 0 when no worker appears twice in the N ids of an
 * aggregator's push (ps_req.summed), else PS_EINVAL: a sum names each
 * worker it holds once, and the norm a shard allows (clip_norm times the
 * workers summed) and the sums counted must not grow by repeating one.
 * SH's world bounds the list before it is sorted. */
static int shard_summed_once(const psd_shard *sh, const uint32_t *who, size_t n, ps_errbuf *eb) {
  if (n < 2) return 0;
  /* distinct ids of the world number at most its rank cap: a longer list
   * repeats one, refused without sorting it */
  uint32_t cap = psd_clock_rank_cap(sh->cfg->workers.count);
  if (n > cap)
    return ps_errf(eb, PS_EINVAL,
                   "a push summing %zu workers names one twice: this cluster has %" PRIu32
                   " worker ids; refused, nothing applied",
                   n, cap);
  uint32_t *v = malloc(n * sizeof *v);
  if (!v) return ps_errf(eb, PS_ENOMEM, "out of memory checking a push's %zu summed workers", n);
  memcpy(v, who, n * sizeof *v);
  qsort(v, n, sizeof *v, shard_cmp_u32);
  int err = 0;
  for (size_t i = 1; i < n && err == 0; i++)
    if (v[i] == v[i - 1])
      err = ps_errf(eb, PS_EINVAL,
                    "a push summing %zu workers names worker %" PRIu32 " twice; refused, "
                    "nothing applied",
                    n, v[i]);
  free(v);
  return err;
}

/* psd_shard_push applies gradients; counts bytes in on success. */
int psd_shard_push(psd_shard *sh, const ps_req *r, uint64_t *version, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_PUSH, eb);
  if (err == 0) err = psd_shard_stored(sh, eb);
  if (err == 0) err = psd_shard_too_big(sh, r, r->nbytes, eb);
  if (err == 0) err = psd_shard_clock_check("push", r->model, r->clock, eb);
  if (err < 0) return psd_shard_done(sh, err);
  /* An aggregator's push sums the gradients of R->summed (DESIGN.md
   * "Hierarchy"); a plain push is its worker's alone. */
  const uint32_t *who = r->nsummed ? r->summed : &r->worker;
  size_t nwho = r->nsummed ? r->nsummed : 1;
  if ((err = shard_summed_once(sh, who, nwho, eb)) < 0) return psd_shard_done(sh, err);
  /* a worker declared dead is refused before anything is applied (psd_clock
   * invariant 9): one dead worker in a sum refuses the whole sum */
  for (size_t i = 0; sh->clock && i < nwho; i++)
    if ((err = psd_clock_check_live(sh->clock, who[i], eb)) < 0) return psd_shard_done(sh, err);
  err = psd_store_push(sh->store, r, version, eb);
  if (err < 0) return psd_shard_done(sh, err);
  sh->ctr.pushes++;
  sh->ctr.bytes_in += r->nbytes;
  if (r->nsummed) {
    sh->ctr.agg_pushes++;
    sh->ctr.agg_summed += r->nsummed;
  }
  psd_shard_pushed(sh, r->model, who, nwho, r->clock); /* releases the pulls it makes servable */
  return 0;
}

/* psd_shard_pushed: see psd_shard.h. */
void psd_shard_pushed(psd_shard *sh, const char *model, const uint32_t *who, size_t nwho,
                      uint64_t clock) {
  for (size_t i = 0; sh->clock && i < nwho; i++) {
    ps_errbuf ceb;
    if (psd_clock_pushed(sh->clock, model, who[i], clock, psd_shard_now_ms(sh), &ceb) < 0)
      ps_warn("clock of worker %u not advanced: %s", who[i], ceb.msg);
  }
  psd_shard_clock_arm(sh);
}

/* psd_shard_push_durable: see psd_shard.h. */
int psd_shard_push_durable(psd_shard *sh, struct psd_wal_waiter *wt, ps_errbuf *eb) {
  if (!sh->wal) return 0;
  wt->seq = psd_store_log_seq(sh->store);
  int err = psd_wal_wait(sh->wal, wt, eb);
  return err < 0 ? psd_shard_done(sh, err) : err;
}

/* psd_shard_forward_push: see psd_shard.h. */
int psd_shard_forward_push(psd_shard *sh, const ps_req *r, psd_op *op, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_PUSH, eb);
  if (err == 0) err = psd_agg_push(sh->agg, r, op, eb);
  if (err < 0) return psd_shard_done(sh, err);
  sh->ctr.pushes++;
  sh->ctr.bytes_in += r->nbytes;
  return err;
}

/* psd_shard_forward_pull: see psd_shard.h. */
int psd_shard_forward_pull(psd_shard *sh, const ps_req *r, psd_op *op, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_READ, eb);
  if (err == 0) err = psd_agg_pull(sh->agg, r, op, eb);
  if (err < 0) return psd_shard_done(sh, err);
  sh->ctr.pulls++;
  return err;
}

/* psd_shard_forward_spec: see psd_shard.h. */
int psd_shard_forward_spec(psd_shard *sh, const char *model, uint64_t stamp, psd_op *op,
                           ps_errbuf *eb) {
  return sh->agg ? psd_agg_spec_wait(sh->agg, model, stamp, op, eb) : 0;
}

/* psd_shard_forward_conn: see psd_shard.h. */
void psd_shard_forward_conn(psd_shard *sh, uint32_t *who1, uint32_t worker) {
  uint32_t now1 = worker == UINT32_MAX ? 0 : worker + 1;
  if (!sh->agg || *who1 == now1) return;
  if (*who1) psd_agg_conn_worker(sh->agg, *who1 - 1, -1);
  if (now1) psd_agg_conn_worker(sh->agg, worker, 1);
  *who1 = now1;
}

/* psd_shard_worker_hello: see psd_shard.h. */
void psd_shard_worker_hello(psd_shard *sh, uint32_t worker) {
  if (sh->agg || !sh->clock) return;
  psd_clock_heard(sh->clock, worker, psd_shard_now_ms(sh));
  psd_shard_clock_arm(sh);
}

/* psd_shard_pull copies values out (admitted by psd_shard_pull_admit
 * first); counts bytes out on success. */
int psd_shard_pull(psd_shard *sh, const ps_req *r, uint64_t *version, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_READ, eb);
  if (err == 0) err = psd_shard_stored(sh, eb);
  if (err < 0) return psd_shard_done(sh, err);
  err = psd_store_pull(sh->store, r, version, eb);
  if (err < 0) return psd_shard_done(sh, err);
  sh->ctr.pulls++;
  sh->ctr.bytes_out += r->nbytes;
  return 0;
}

/* psd_shard_pull_view: see psd_shard.h. */
int psd_shard_pull_view(psd_shard *sh, const ps_req *r, struct iovec *seg, size_t max,
                        size_t *nseg, uint64_t *version, ps_errbuf *eb) {
  int err = psd_shard_accepting(sh, PSD_REQ_READ, eb);
  if (err == 0) err = psd_shard_stored(sh, eb);
  if (err < 0) return psd_shard_done(sh, err);
  err = psd_store_pull_view(sh->store, r, seg, max, nseg, version, eb);
  if (err < 0) return psd_shard_done(sh, err);
  if (err == 0) return 0;
  sh->ctr.pulls++;
  sh->ctr.bytes_out += r->nbytes;
  return 1;
}

/* psd_shard_security_name says how the shard authenticates (static). */
const char *psd_shard_security_name(const psd_shard *sh) {
  return ps_tls_security_name(&sh->cfg->security);
}

/* psd_shard_status fills REPLY; model names are copied, the state and
 * addresses are borrowed (static / from the config). */
void psd_shard_status(psd_shard *sh, Ps__StatusReply *reply) {
  ps__status_reply__init(reply);
  reply->shard = sh->me->id;
  reply->state = (char *)psd_state_name(sh->state);
  reply->state_why = sh->degraded_why;
  reply->uptime_ms = (uv_hrtime() / 1000000) - sh->start_ms;
  reply->pushes = sh->ctr.pushes;
  reply->pulls = sh->ctr.pulls;
  reply->bytes_in = sh->ctr.bytes_in;
  reply->bytes_out = sh->ctr.bytes_out;
  reply->errors = sh->ctr.errors;
  reply->last_flush_unix_ms = sh->last_flush_unix_ms;
  reply->grpc_addr = sh->me->grpc_addr;
  reply->channel_addr = sh->me->channel_addr;
  reply->coordinator = sh->coordinator;
  reply->chan_connections = sh->chan_conns;
  reply->chan_refused = sh->ctr.chan_refused;
  reply->chan_idle_closed = sh->ctr.chan_idle_closed;
  reply->chan_shm_bytes = sh->ctr.chan_shm_bytes;
  reply->chan_shm_connections = (uint32_t)sh->ctr.chan_shm_conns;
  reply->grpc_restarts = sh->ctr.grpc_restarts;
  reply->auth_refused = sh->ctr.auth_refused;
  reply->chan_auth_refused = sh->ctr.chan_auth_refused;
  reply->chan_bad_frames = sh->ctr.chan_bad_frames;
  reply->chan_slow_closed = sh->ctr.chan_slow_closed;
  reply->security = (char *)psd_shard_security_name(sh);
  reply->build = (char *)ps_version(); /* static */
  reply->cluster = sh->cfg->cluster ? sh->cfg->cluster : "";
  reply->cluster_shards = (uint32_t)sh->cfg->nshards;
  reply->place_id = ps_config_place_id(sh->cfg);
  if (sh->wal) {
    psd_wal_stats ws;
    psd_wal_stats_get(sh->wal, &ws);
    reply->wal = 1;
    reply->wal_bytes = ws.bytes;
    reply->wal_syncs = ws.syncs;
    reply->wal_records = ws.records;
    reply->wal_replayed = ws.replayed;
    reply->wal_replay_dropped = ws.replay_dropped;
    reply->wal_replay_ms = ws.replay_ms;
    reply->wal_busy_ms = ws.busy_ms;
  }
  reply->replay = sh->replay.done;
  reply->replay_records = sh->replay.records;
  reply->replay_dropped = sh->replay.dropped;
  reply->replay_ms = sh->replay.ms;
  reply->sum_pushes = sh->ctr.agg_pushes;
  reply->sum_grads = sh->ctr.agg_summed;
  if (sh->agg) {
    psd_agg_stats st;
    psd_agg_stats_get(sh->agg, &st);
    reply->aggregator = sh->agg_me->name;
    reply->agg_pushes_in = st.pushes_in;
    reply->agg_forwarded = st.forwarded;
    reply->agg_pulls_in = st.pulls_in;
    reply->agg_pull_hits = st.pull_hits;
    reply->agg_fetches = st.fetches;
    reply->agg_enters = st.enters;
    reply->agg_leaves = st.leaves;
    reply->agg_workers =
        malloc(psd_clock_rank_cap(sh->cfg->workers.count) * sizeof *reply->agg_workers);
    if (reply->agg_workers) reply->n_agg_workers = psd_agg_workers(sh->agg, reply->agg_workers);
  }
  if (!sh->store) return;
  reply->disk_bytes = psd_store_disk_bytes(sh->store);
  if (sh->wal) reply->disk_bytes += psd_dir_bytes(psd_wal_dir(sh->wal)); /* segments, spares */
  size_t n = psd_store_nmodels(sh->store);
  Ps__ModelStatus **ms = n ? calloc(n, sizeof *ms) : NULL;
  if (!ms) return;
  for (size_t i = 0; i < n; i++) {
    psd_model_info info;
    psd_store_model_info(sh->store, i, &info);
    Ps__ModelStatus *m = malloc(sizeof *m);
    char *name = m ? strdup(info.name) : NULL;
    if (!name) {
      free(m);
      break;
    }
    ps__model_status__init(m);
    m->name = name;
    m->chunks = info.chunks;
    m->params = info.params;
    m->version = info.version;
    uint64_t *hist = malloc(sizeof info.tau_hist);
    if (hist) {
      memcpy(hist, info.tau_hist, sizeof info.tau_hist);
      m->tau_hist = hist;
      m->n_tau_hist = PSD_TAU_BUCKETS;
    }
    const char *c = info.spec->consistency;
    m->consistency = (char *)(c && *c ? c : "asp"); /* borrowed from the spec */
    m->staleness = info.spec->staleness;
    c = info.spec->staleness_weight;
    m->staleness_weight = (char *)(c && *c ? c : "none");
    c = info.spec->codec;
    m->codec = (char *)(c && *c ? c : "fp32"); /* borrowed from the spec */
    c = info.spec->pull_codec;
    m->pull_codec = (char *)(c && *c ? c : "fp32");
    size_t ntc = 0;
    for (size_t k = 0; k < info.spec->n_tensors; k++)
      ntc += info.spec->tensors[k]->codec && *info.spec->tensors[k]->codec;
    char **tc = ntc ? malloc(2 * ntc * sizeof *tc) : NULL; /* names, then codecs (borrowed) */
    for (size_t k = 0; tc && k < info.spec->n_tensors; k++) {
      const Ps__TensorSpec *t = info.spec->tensors[k];
      if (!t->codec || !*t->codec) continue;
      tc[m->n_codec_tensors++] = t->name;
      tc[ntc + m->n_tensor_codecs++] = t->codec;
    }
    m->codec_tensors = tc;
    m->tensor_codecs = tc ? tc + ntc : NULL;
    if (info.spec->optimizer) {
      m->optimizer = info.spec->optimizer->kind; /* borrowed from the spec */
      m->lr = info.spec->optimizer->lr;
    }
    m->bytes_raw = info.bytes_raw;
    m->bytes_wire = info.bytes_wire;
    psd_clock_stats st;
    if (sh->clock && psd_clock_stats_of(sh->clock, info.name, &st) == 0) {
      m->max_gap = st.max_gap;
      m->parked = st.parked;
      m->pulls_parked = st.parked_total;
      m->pull_timeouts = st.timeouts;
    }
    ms[reply->n_models++] = m;
  }
  reply->models = ms;
  psd_shard_sparse_status(sh, reply);
}

/* psd_shard_status_release frees what psd_shard_status allocated. */
void psd_shard_status_release(Ps__StatusReply *reply) {
  free(reply->agg_workers);
  reply->agg_workers = NULL;
  reply->n_agg_workers = 0;
  for (size_t i = 0; i < reply->n_models; i++) {
    free(reply->models[i]->tau_hist);
    free(reply->models[i]->codec_tensors); /* and tensor_codecs, in the same block */
    free(reply->models[i]->name);
    free(reply->models[i]);
  }
  free(reply->models);
  reply->models = NULL;
  reply->n_models = 0;
  psd_shard_sparse_status_release(reply);
}
