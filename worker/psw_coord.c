/* psw_coord: registration, heartbeats and leaving (see psw_coord.h for the
 * invariants). */
#include "psw_coord.h"

#include "ps_auth.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_log.h"
#include "ps_pb.h"
#include "ps_rpc.h"
#include "ps_time.h"

#define PSW_COORD_CALL_MS 2000     /* one RegisterWorker / ListWorkers call */
#define PSW_COORD_WORLD_POLL_MS 50
#define PSW_COORD_CHAN_RETRY_MS 1000 /* after a failed report on the channel */

struct psw_coord {
  const ps_config *cfg;
  char *model, *device;
  char host[256];
  volatile sig_atomic_t *stop;
  ps_rpc **rpc;                  /* one channel per shard, in cfg order */
  size_t coord;                  /* index of the coordinator shard */
  uint64_t grant_clock;          /* the last grant's start_clock (training thread) */
  uint32_t job_epochs;           /* the last claim answer's job_epochs (training thread) */
  int fin_refused;               /* the last claim's finished partition was refused */
  Ps__RegisterWorkerReply *reg;  /* the last registration's reply */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, quit, registered;
  uint32_t worker, heartbeat_ms;
  uint64_t clock, own;           /* figures for the heartbeat (under mu) */
  double t0_s, blocked_s, blocked_since_s; /* psw_coord_update, psw_coord_blocked */
  int lost;                      /* invariant 2 (under mu) */
  int rejoin_next;               /* the next beats carry rejoin (invariant 5; under mu) */
  pthread_mutex_t rejoin_mu;     /* one rejoin at a time (heartbeat or data thread) */
  uint64_t rejoins;              /* comebacks after a shard declared it dead (under mu) */
  uint64_t reregs;               /* rejoins done, for any cause (under mu): one cause,
                                    one rejoin */
  ps_errbuf lost_eb;
  uint32_t *parts;               /* invariant 4 (under mu) */
  size_t nparts;
  uint64_t parts_gen;
  /* The report thread (psw_coord_report_start), all under rmu: */
  pthread_t rthread;
  pthread_mutex_t rmu;
  pthread_cond_t rcv;
  int rstarted, rquit, rhave, rdone, rerr;
  psw_coord_part rpos;
  ps_errbuf reb;
  /* The report thread's tensor-channel connection to the coordinator
   * (invariant 7): */
  ps_chan_client *bch;
  int64_t bch_retry_ms;          /* no new connection before this time */
  /* The fence (invariant 8): */
  uint32_t lease_ms;             /* the lease the shards hold this worker to */
  int64_t lease_ok_ms;           /* when the last request the coordinator answered as
                                    live was sent (under mu; 0: none yet) */
  /* The last step-out (psw_coord_step_out; training thread only): */
  uint64_t out_clock;            /* its clock */
  unsigned char *out_ok;         /* per shard: answered it (it is out there) */
  ps_auth_client auth;           /* security.secret_file's worker key, read at each connect */
};

/* psw_coord_new: see psw_coord.h. */
int psw_coord_new(psw_coord **out, const psw_coord_conf *conf, ps_errbuf *eb) {
  psw_coord *c = calloc(1, sizeof *c);
  if (!c) return ps_errf(eb, PS_ENOMEM, "out of memory");
  c->cfg = conf->cfg;
  c->stop = conf->stop;
  c->model = strdup(conf->model);
  c->device = strdup(conf->device ? conf->device : "");
  c->rpc = calloc(conf->cfg->nshards, sizeof *c->rpc);
  c->out_ok = calloc(conf->cfg->nshards ? conf->cfg->nshards : 1, 1);
  pthread_mutex_init(&c->mu, NULL);
  pthread_mutex_init(&c->rejoin_mu, NULL);
  ps_cond_init_mono(&c->cv); /* the beat's wait: a wall-clock step must not stretch it */
  pthread_mutex_init(&c->rmu, NULL);
  pthread_cond_init(&c->rcv, NULL);
  if (gethostname(c->host, sizeof c->host - 1) < 0) strcpy(c->host, "?");
  int err = 0;
  if (!c->model || !c->device || !c->rpc || !c->out_ok)
    err = ps_errf(eb, PS_ENOMEM, "out of memory");
  if (err == 0)
    err = ps_auth_client_open(&c->auth, conf->cfg->security.secret_file, PS_ROLE_WORKER, eb);
  const ps_shard_conf *co = ps_config_coordinator(conf->cfg);
  for (size_t i = 0; err == 0 && i < conf->cfg->nshards; i++) {
    err = ps_rpc_open_cfg(&c->rpc[i], conf->cfg->shards[i].grpc_addr, conf->cfg, PS_ROLE_WORKER,
                          eb);
    if (&conf->cfg->shards[i] == co) c->coord = i;
  }
  if (err < 0) {
    psw_coord_free(c, 0, 0);
    return err;
  }
  *out = c;
  return 0;
}

/* coord_set_parts makes PARTS[0..N) the worker's partitions, counting a
 * change (invariant 4); out of memory keeps the old list. */
static void coord_set_parts(psw_coord *c, const uint32_t *parts, size_t n) {
  pthread_mutex_lock(&c->mu);
  if (n != c->nparts || (n && memcmp(parts, c->parts, n * sizeof *parts) != 0)) {
    uint32_t *copy = malloc((n ? n : 1) * sizeof *copy);
    if (copy) {
      if (n) memcpy(copy, parts, n * sizeof *parts);
      free(c->parts);
      c->parts = copy;
      c->nparts = n;
      c->parts_gen++;
    }
  }
  pthread_mutex_unlock(&c->mu);
}

/* coord_register_once asks the coordinator for a rank; 0 with c->reg set. */
static int coord_register_once(psw_coord *c, ps_errbuf *eb) {
  Ps__RegisterWorkerRequest req = PS__REGISTER_WORKER_REQUEST__INIT;
  req.model = c->model;
  req.host = c->host;
  req.pid = (uint32_t)getpid();
  req.device = c->device;
  req.partitions = c->cfg->data.partitions;
  ProtobufCMessage *resp = NULL;
  int err = ps_rpc_call(c->rpc[c->coord], "/ps.Ps/RegisterWorker", &req.base,
                        &ps__register_worker_reply__descriptor, &resp, PSW_COORD_CALL_MS, eb);
  if (err < 0) return err;
  Ps__RegisterWorkerReply *r = (Ps__RegisterWorkerReply *)resp;
  /* ranks past world_size are workers beyond the expected count (elastic;
   * psd_clock invariant 8 bounds them at 2 x world_size + 2) */
  if (!r->world_size || r->rank >= 2 * (uint64_t)r->world_size + 2) {
    protobuf_c_message_free_unpacked(resp, NULL);
    return ps_errf(eb, PS_EPROTO, "the coordinator answered rank %u of %u workers", r->rank,
                   r->world_size);
  }
  if (c->reg) protobuf_c_message_free_unpacked(&c->reg->base, NULL);
  c->reg = r;
  return 0;
}

/* coord_retryable: the coordinator is (momentarily) not there. */
static int coord_retryable(int err) {
  return err == PS_EUNAVAIL || err == PS_ETIMEDOUT || err == PS_EIO || err == PS_ESHUTDOWN ||
         err == PS_EDEGRADED;
}

/* coord_register_retry registers (coord_register_once), retrying an
 * unreachable coordinator for workers.retry_ms (invariant 1): also when
 * registering again after an expiry, which a restarted coordinator causes
 * (the worker's channel to it may still wait out gRPC's reconnect backoff
 * when it serves again, and fails at once meanwhile). */
static int coord_register_retry(psw_coord *c, ps_errbuf *eb) {
  const ps_shard_conf *co = &c->cfg->shards[c->coord];
  int64_t start = ps_now_ms();
  uint32_t delay = PS_BACKOFF_FIRST_MS;
  int said = 0, err;
  while ((err = coord_register_once(c, eb)) < 0) {
    ps_errbuf why = *eb;
    if (!coord_retryable(err))
      return ps_errf(eb, err, "registering with coordinator shard %u (%s): %s", co->id,
                     co->grpc_addr, why.msg);
    uint32_t nap = ps_backoff_nap(start, delay, c->cfg->workers.retry_ms);
    if (!nap)
      return ps_errf(eb, err, "coordinator shard %u (%s) did not answer within %u ms: %s",
                     co->id, co->grpc_addr, c->cfg->workers.retry_ms, why.msg);
    if (!said++)
      ps_warn("coordinator shard %u (%s): %s; retrying for up to %u ms", co->id, co->grpc_addr,
              eb->msg, c->cfg->workers.retry_ms);
    if (ps_sleep_ms(nap, c->stop) < 0) return ps_errf(eb, PS_ESHUTDOWN, "stopped");
    ps_rpc_reset_backoff(c->rpc[c->coord]); /* the retry reaches a coordinator back meanwhile */
    delay = ps_backoff_next(delay);
  }
  return 0;
}

/* psw_coord_register: see psw_coord.h. */
int psw_coord_register(psw_coord *c, psw_coord_reg *reg, ps_errbuf *eb) {
  int err = coord_register_retry(c, eb);
  if (err < 0) return err;
  const Ps__RegisterWorkerReply *r = c->reg;
  coord_set_parts(c, r->partitions, r->n_partitions);
  *reg = (psw_coord_reg){.rank = r->rank, .world_size = r->world_size,
                         .heartbeat_ms = r->heartbeat_ms, .lease_ms = r->lease_ms,
                         .start_clock = r->start_clock};
  c->registered = 1;
  return 0;
}

/* coord_under_way says whether the partition table R lists is a job of
 * MODEL that has begun and not finished (a worker joining it does not
 * wait for the others).  A psd that does not name the job's model (before
 * job_model) counts any progress. */
static int coord_under_way(const Ps__ListWorkersReply *r, const char *model) {
  int named = r->job_model && *r->job_model;
  if (named && strcmp(r->job_model, model) != 0) return 0; /* another model's: a new job */
  const Ps__PartProgress *q0 = r->n_partitions ? r->partitions[0]->pos : NULL;
  for (size_t i = 0; q0 && i < r->n_partitions; i++) {
    const Ps__PartProgress *q = r->partitions[i]->pos;
    if (!q) continue;
    if (r->partitions[i]->active || q->offset || q->epoch != q0->epoch) return 1;
    if (q->epoch && (!named || q->epoch < r->job_epochs)) return 1;
  }
  return 0; /* not begun, or finished: more epochs start like a new job */
}

/* coord_finished says whether the partition table R lists is a job of
 * MODEL whose every partition has trained its job's epochs, EPOCHS at
 * least (a worker asking no more finds nothing to do in it). */
static int coord_finished(const Ps__ListWorkersReply *r, const char *model, uint32_t epochs) {
  if (!r->job_model || strcmp(r->job_model, model) != 0 || !r->n_partitions ||
      r->job_epochs < epochs)
    return 0;
  for (size_t i = 0; i < r->n_partitions; i++) {
    const Ps__PartProgress *q = r->partitions[i]->pos;
    if (!q || r->partitions[i]->active || q->epoch < r->job_epochs) return 0;
  }
  return 1;
}

/* coord_live_of says whether W is a live worker (ALIVE or LATE) of MODEL
 * (or of no model named: any). */
static int coord_live_of(const Ps__WorkerInfo *w, const char *model) {
  return w->state && strcmp(w->state, "DEAD") != 0 && strcmp(w->state, "DONE") != 0 &&
         (!w->model || !*w->model || !strcmp(w->model, model));
}

/* coord_list asks the coordinator for its ListWorkers reply (*OUT: free
 * it with protobuf_c_message_free_unpacked). */
static int coord_list(psw_coord *c, Ps__ListWorkersReply **out, ps_errbuf *eb) {
  Ps__ListWorkersRequest req = PS__LIST_WORKERS_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  int err = ps_rpc_call(c->rpc[c->coord], "/ps.Ps/ListWorkers", &req.base,
                        &ps__list_workers_reply__descriptor, &resp, PSW_COORD_CALL_MS, eb);
  *out = err < 0 ? NULL : (Ps__ListWorkersReply *)resp;
  return err;
}

/* coord_live_count counts the live workers of this worker's model that
 * the coordinator lists (any rank, its own included), or INT_MAX when
 * that model's job is under way, or finished for a worker of EPOCHS (its
 * claim then says so: no one else need come); a negative PS_E* code when
 * it does not answer.  It also takes this worker's partitions from the
 * list (invariant 4). */
static int coord_live_count(psw_coord *c, uint32_t epochs, ps_errbuf *eb) {
  Ps__ListWorkersReply *r;
  int err = coord_list(c, &r, eb);
  if (err < 0) return err;
  int n = 0;
  for (size_t i = 0; i < r->n_workers; i++) {
    const Ps__WorkerInfo *w = r->workers[i];
    int live = w->state && strcmp(w->state, "DEAD") != 0 && strcmp(w->state, "DONE") != 0;
    if (live && c->registered && w->rank == c->worker)
      coord_set_parts(c, w->partitions, w->n_partitions);
    /* any rank: past workers.count too (elastic); another model's
     * workers train another job */
    n += coord_live_of(w, c->model);
  }
  if (coord_under_way(r, c->model) || coord_finished(r, c->model, epochs)) n = INT_MAX;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return n;
}

/* psw_coord_fixed_live: see psw_coord.h. */
int psw_coord_fixed_live(psw_coord *c) {
  Ps__ListWorkersReply *r;
  ps_errbuf eb;
  if (coord_list(c, &r, &eb) < 0) return 0;
  int n = 0;
  for (size_t i = 0; i < r->n_workers; i++)
    n += r->workers[i]->fixed_rank && coord_live_of(r->workers[i], c->model);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return n;
}

/* psw_coord_check_fixed: see psw_coord.h. */
int psw_coord_check_fixed(psw_coord *c, uint32_t rank, uint32_t workers, ps_errbuf *eb) {
  Ps__ListWorkersReply *r;
  ps_errbuf ceb;
  if (coord_list(c, &r, &ceb) < 0) return 0; /* no coordinator to ask: a fixed rank needs none */
  int err = 0;
  /* registered workers of the model, begun or still waiting for their
   * world: they train every partition between them (and may hold RANK) */
  uint32_t live = 0, reg = 0;
  int held = 0;
  for (size_t i = 0; i < r->n_workers; i++) {
    const Ps__WorkerInfo *w = r->workers[i];
    if (!coord_live_of(w, c->model)) continue;
    live++;
    reg += w->registered;
    held |= w->registered && w->rank == rank;
  }
  char who[120] = "";
  if (held)
    snprintf(who, sizeof who, "; rank %u is held by a registered worker", rank);
  if (coord_under_way(r, c->model))
    err = ps_errf(eb, PS_EEXIST,
                  "--rank %u --workers %u: the coordinator has an elastic job of model '%s' "
                  "under way (%u live workers, %u of them registered%s; its partitions are "
                  "claimed as it trains): a fixed rank would train partitions p %% %u == %u "
                  "again on top of it; start psw without --rank to join it, or after it finished",
                  rank, workers, c->model, live, reg, who, workers, rank);
  else if (reg)
    err = ps_errf(eb, PS_EEXIST,
                  "--rank %u --workers %u: the coordinator has an elastic job of model '%s' "
                  "whose registered workers (%u live) wait for their world%s: they will train "
                  "every partition between them, and a fixed rank would train partitions "
                  "p %% %u == %u again on top of it; start psw without --rank to join them, or "
                  "after they finished",
                  rank, workers, c->model, reg, who, workers, rank);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return err;
}

/* psw_coord_wait_world: see psw_coord.h. */
int psw_coord_wait_world(psw_coord *c, uint32_t world, uint32_t epochs, uint32_t timeout_ms,
                         ps_errbuf *eb) {
  int64_t end = ps_now_ms() + timeout_ms;
  int seen = 0, said = 0;
  for (;;) {
    int n = coord_live_count(c, epochs, eb);
    if (n >= (int)world) return 0;
    if (n > seen) seen = n;
    /* said once: the wait may last timeout_ms, silent otherwise */
    if (n >= 0 && !said++)
      ps_info("worker %u: waiting for %u of %u workers (workers.min of workers.count) to "
              "register, up to %u ms (workers.retry_ms): %d so far", c->worker, world,
              c->cfg->workers.count, timeout_ms, n);
    if (ps_now_ms() >= end)
      return ps_errf(eb, PS_ETIMEDOUT, "%d of %u workers registered after %u ms", seen, world,
                     timeout_ms);
    if (ps_sleep_ms(PSW_COORD_WORLD_POLL_MS, c->stop) < 0) return ps_errf(eb, PS_ESHUTDOWN, "stopped");
  }
}

/* coord_beat_init fills REQ with what every heartbeat of WORKER says:
 * who it is, its clock, and its steps/s and blocked share as of now
 * (psw_coord_update's figures and a wait under way, psw_coord_blocked). */
static void coord_beat_init(psw_coord *c, Ps__HeartbeatRequest *req, uint32_t worker) {
  ps__heartbeat_request__init(req);
  req->worker = worker;
  req->model = c->model;
  req->device = c->device;
  req->host = c->host;
  req->pid = (uint32_t)getpid();
  req->fixed_rank = !c->registered; /* psd_clock invariant 14 */
  pthread_mutex_lock(&c->mu);
  req->clock = c->clock;
  double now = ps_now_s(), wall = c->t0_s > 0 ? now - c->t0_s : 0;
  req->steps_per_s = wall > 0 ? (float)((double)c->own / wall) : 0;
  req->blocked_share = (float)psw_blocked_share(c->t0_s, c->blocked_s, c->blocked_since_s, now);
  pthread_mutex_unlock(&c->mu);
}

/* coord_lease_ok notes that the coordinator answered a request of this
 * worker sent at SENT as live: its lease ran from then on (invariant 8). */
static void coord_lease_ok(psw_coord *c, int64_t sent) {
  pthread_mutex_lock(&c->mu);
  if (sent > c->lease_ok_ms) c->lease_ok_ms = sent;
  pthread_mutex_unlock(&c->mu);
}

/* coord_lease_stale says whether this worker's lease may have run out
 * since the coordinator last answered it as live (invariant 8): the
 * process was stopped, or cut off, that long.  CLOCK_MONOTONIC counts
 * while a process is stopped. */
static int coord_lease_stale(psw_coord *c) {
  pthread_mutex_lock(&c->mu);
  int64_t ok = c->lease_ok_ms;
  pthread_mutex_unlock(&c->mu);
  return c->started && ok && ps_now_ms() - ok >= (int64_t)c->lease_ms;
}

/* What makes a registered worker register again (invariant 2): a shard
 * declared it dead, or the coordinator holds no registration of it (a
 * restart lost it: psd_clock invariant 13), or the coordinator refused it
 * because another process registered its rank while it held no
 * registration of this one (HeartbeatReply.rank_taken: never declared
 * dead, unless a shard said so too); and what stops a fixed rank: the
 * coordinator refused it because a live registered process holds its
 * rank (HeartbeatReply.held). */
enum { COORD_EXPIRED = 1, COORD_UNREGISTERED = 2, COORD_TAKEN = 4, COORD_HELD = 8 };

/* coord_heartbeat_all sends one heartbeat for worker WORKER to every
 * shard (LEAVING, DONE, REJOIN: see HeartbeatRequest; IDLE_AT, not NULL:
 * marked idle, stepping out of the clock tables up to that clock: each
 * shard that answers is marked in out_ok); returns
 * COORD_EXPIRED when a shard said the worker had expired, COORD_UNREGISTERED
 * when the coordinator said it holds no registration of this registered
 * worker, COORD_TAKEN when the coordinator refused it as expired for its
 * rank taken so, COORD_HELD (a fixed rank) when it refused it for a live
 * registered holder of its rank (any of them; 0: none). */
static int coord_heartbeat_all(psw_coord *c, uint32_t worker, int leaving, int done,
                               int rejoin, const uint64_t *idle_at) {
  Ps__HeartbeatRequest req;
  coord_beat_init(c, &req, worker);
  req.rejoin = rejoin;
  req.leaving = leaving;
  req.done = done;
  req.idle = idle_at != NULL;
  if (idle_at) req.clock = *idle_at;
  int timeout = c->heartbeat_ms < PSW_COORD_CALL_MS ? (int)c->heartbeat_ms : PSW_COORD_CALL_MS;
  if (timeout < 200) timeout = 200;
  size_t n = c->cfg->nshards;
  ps_rpc_reply *out = calloc(n, sizeof *out);
  if (!out) return 0;
  /* All shards at once: black-holed shards cost the round one timeout,
   * not one each, so the living still hear from us within their lease.
   * A shard that is down misses this beat; the data path says so. */
  int64_t sent = ps_now_ms();
  ps_rpc_call_all(c->rpc, n, "/ps.Ps/Heartbeat", &req.base, &ps__heartbeat_reply__descriptor,
                  timeout, out);
  const Ps__HeartbeatReply *cr = (const Ps__HeartbeatReply *)out[c->coord].resp;
  if (cr && !cr->expired && worker == c->worker && !leaving) coord_lease_ok(c, sent);
  int expired = 0;
  pthread_mutex_lock(&c->mu);
  int quit = c->quit;
  pthread_mutex_unlock(&c->mu);
  for (size_t i = 0; i < n; i++) {
    const Ps__HeartbeatReply *r = (const Ps__HeartbeatReply *)out[i].resp;
    /* a shard that restarts is reached at the next beat, within its
     * lease, not when gRPC's reconnect backoff ends (9 s and more after a
     * shard down for 5 s); not at the leaving beat: nothing follows it */
    if (!r && out[i].err == PS_EUNAVAIL && !quit) ps_rpc_reset_backoff(c->rpc[i]);
    if (!r) continue;
    if (idle_at) c->out_ok[i] = 1;
    if (r->expired)
      expired |= r->rank_taken && i == c->coord && worker == c->worker ? COORD_TAKEN
                                                                       : COORD_EXPIRED;
    /* a fixed rank whose rank a live registered process holds stops:
     * both would train the rank's partitions (coord_reregister) */
    if (r->expired && r->held && i == c->coord && worker == c->worker && !c->registered)
      expired |= COORD_HELD;
    if (r->unregistered && i == c->coord && worker == c->worker && c->registered && !leaving)
      expired |= COORD_UNREGISTERED;
    if (r->assigned && i == c->coord && worker == c->worker)
      coord_set_parts(c, r->partitions, r->n_partitions);
  }
  ps_rpc_replies_free(out, n);
  free(out);
  return expired;
}

/* coord_taken says, into BUF, what a refusal for rank_taken means for
 * this worker's rank RANK: a registered worker's registration was lost
 * by a coordinator restart, and another process registered the rank
 * meanwhile; a fixed rank never registered, so no restart is implied:
 * another process registered the rank it runs as.  Neither was declared
 * dead. */
static const char *coord_taken(const psw_coord *c, uint32_t rank, char *buf, size_t cap) {
  if (c->registered)
    snprintf(buf, cap, "rank %u was taken by another worker after the coordinator restarted "
             "without this worker's registration", rank);
  else
    snprintf(buf, cap, "rank %u, this worker's fixed rank (--rank), is held by another process, "
             "which registered it with the coordinator", rank);
  return buf;
}

/* coord_reregister registers again after a shard declared the worker
 * DEAD, or the coordinator lost its registration (WHY: coord_heartbeat_all's
 * answer), then rejoins every shard (invariant 5); a different rank (or
 * none) marks the worker lost.  Returns 0, 1 when nothing was needed, or
 * PS_EEXIST (lost); a worker that did not register (a fixed rank) only
 * rejoins, or stops (lost) when a live registered process holds its rank
 * (COORD_HELD).  SEEN: the rejoin count (reregs) when the expiry was seen; a rejoin
 * done since (by the other thread) makes this one needless.  UINT64_MAX:
 * the data path's or a claim's refusal, whose request may have gone out
 * before the last rejoin (a push's answer comes a step later, several
 * requests are in flight): a plain beat first asks whether any shard
 * still holds the worker expired, or the coordinator unregistered, so
 * that one expiry makes one rejoin. */
static int coord_reregister(psw_coord *c, uint64_t seen, int why) {
  ps_errbuf eb = {""};
  uint32_t old = c->worker;
  pthread_mutex_lock(&c->rejoin_mu);
  pthread_mutex_lock(&c->mu);
  int lost = c->lost, done_since = seen != UINT64_MAX && c->reregs != seen;
  pthread_mutex_unlock(&c->mu);
  if (!lost && !done_since && seen == UINT64_MAX) why = coord_heartbeat_all(c, old, 0, 0, 0, NULL);
  if (lost || done_since || !why) {
    pthread_mutex_unlock(&c->rejoin_mu);
    return lost ? PS_EEXIST : 1;
  }
  char taken[200];
  coord_taken(c, old, taken, sizeof taken);
  if (why & COORD_HELD) {
    /* a fixed rank: the registration holds the rank, as a registered
     * worker's newcomer holds a rank it took (that worker stops too) */
    ps_warn("worker %u: %s (it was not declared dead); stopping: a fixed rank does not train a "
            "rank that a registered worker holds", old, taken);
    pthread_mutex_lock(&c->mu);
    c->lost = 1;
    ps_errf(&c->lost_eb, PS_EEXIST, "%s; a fixed rank stops rather than train the rank's "
            "partitions alongside it", taken);
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&c->rejoin_mu);
    return PS_EEXIST;
  }
  const char *cause = why & COORD_EXPIRED ? "lease expired"
                      : why & COORD_TAKEN ? "its rank was taken by another worker after the "
                                            "coordinator restarted without its registration"
                                          : "the coordinator lost its registration";
  if (why & COORD_EXPIRED)
    ps_warn("worker %u: a shard had declared this worker dead (lease expired); %s", old,
            c->registered ? "registering again" : "rejoining with its fixed rank");
  else if (why & COORD_TAKEN)
    ps_warn("worker %u: %s (it was not declared dead); %s", old, taken,
            c->registered ? "registering again" : "rejoining with its fixed rank");
  else
    ps_warn("worker %u: the coordinator holds no registration of this worker (it restarted "
            "without it); registering again", old);
  int err = c->registered ? coord_register_retry(c, &eb) : 0;
  if (err == 0 && (!c->registered || c->reg->rank == old)) {
    if (c->registered) coord_set_parts(c, c->reg->partitions, c->reg->n_partitions);
    /* counted before the shards hear of it: the coordinator takes the
     * trainer's reports again from now on, and the trainer must not see
     * one refused before it sees the rejoin (psw_coord_rejoins) */
    pthread_mutex_lock(&c->mu);
    c->reregs++;
    /* a registration the coordinator lost alone is no comeback: no shard
     * took the worker out of its clock table, so the trainer neither
     * steps out nor jumps (invariant 5) */
    if (why & COORD_EXPIRED) c->rejoins++;
    pthread_mutex_unlock(&c->mu);
    int still = coord_heartbeat_all(c, old, 0, 0, 1, NULL);
    pthread_mutex_unlock(&c->rejoin_mu);
    if (still) ps_warn("worker %u: a shard missed the rejoin; it is tried again", old);
    return 0;
  }
  /* Not ours: give the rank we were offered back at once (as died, so
   * that its partitions keep going to the living). */
  if (err == 0) coord_heartbeat_all(c, c->reg->rank, 1, 0, 0, NULL);
  pthread_mutex_lock(&c->mu);
  c->lost = 1;
  if (err < 0)
    ps_errf(&c->lost_eb, PS_EEXIST, "%s and registering again failed: %s", cause, eb.msg);
  else if (why & COORD_EXPIRED || !(why & COORD_TAKEN))
    ps_errf(&c->lost_eb, PS_EEXIST, "%s and rank %u went to another worker (the coordinator "
            "offered rank %u)", cause, old, c->reg->rank);
  else
    ps_errf(&c->lost_eb, PS_EEXIST, "%s; it was not declared dead (the coordinator offered "
            "rank %u)", taken, c->reg->rank);
  pthread_mutex_unlock(&c->mu);
  pthread_mutex_unlock(&c->rejoin_mu);
  return PS_EEXIST;
}

/* psw_coord_rejoin: see psw_coord.h. */
int psw_coord_rejoin(psw_coord *c, ps_errbuf *eb) {
  if (!c) return ps_errf(eb, PS_EEXPIRED, "declared dead and no coordinator to rejoin");
  int err = coord_reregister(c, UINT64_MAX, 0);
  if (err < 0) return psw_coord_lost(c, eb);
  return err;
}

/* psw_coord_rejoins: see psw_coord.h. */
uint64_t psw_coord_rejoins(psw_coord *c) {
  if (!c) return 0;
  pthread_mutex_lock(&c->mu);
  uint64_t n = c->rejoins;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* coord_main: the heartbeat thread (invariant 2). */
static void *coord_main(void *arg) {
  psw_coord *c = arg;
  pthread_mutex_lock(&c->mu);
  while (!c->quit) {
    int rejoin = c->rejoin_next;
    uint64_t seen = c->reregs;
    c->rejoin_next = 0;
    pthread_mutex_unlock(&c->mu);
    /* The period runs from the round's start: a round that waits out a
     * silent shard does not push the next beat later. */
    struct timespec until = ps_deadline_ns((uint64_t)c->heartbeat_ms * 1000000u);
    /* a worker that lost its rank stops: its beats would only be
     * refused in the name of the rank's new holder */
    pthread_mutex_lock(&c->mu);
    int lost = c->lost;
    pthread_mutex_unlock(&c->mu);
    int why = lost ? 0 : coord_heartbeat_all(c, c->worker, 0, 0, rejoin, NULL);
    if (why) coord_reregister(c, seen, why);
    pthread_mutex_lock(&c->mu);
    while (!c->quit && pthread_cond_timedwait(&c->cv, &c->mu, &until) != ETIMEDOUT) {
    }
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

/* psw_coord_start: see psw_coord.h. */
int psw_coord_start(psw_coord *c, uint32_t worker, int registered, ps_errbuf *eb) {
  c->worker = worker;
  c->registered = registered;
  c->heartbeat_ms = registered && c->reg && c->reg->heartbeat_ms ? c->reg->heartbeat_ms
                                                                 : c->cfg->workers.heartbeat_ms;
  c->lease_ms = registered && c->reg && c->reg->lease_ms ? c->reg->lease_ms
                                                         : c->cfg->workers.lease_ms;
  /* A new process takes its rank back on every shard (invariant 5)
   * before its first push or pull, which a shard that declared the rank's
   * last holder dead would refuse; the thread's first beat does it again
   * for a shard that missed this one. */
  coord_heartbeat_all(c, worker, 0, 0, 1, NULL);
  c->rejoin_next = 1;
  if (pthread_create(&c->thread, NULL, coord_main, c) != 0)
    return ps_errf(eb, PS_ENOMEM, "cannot start the heartbeat thread");
  c->started = 1;
  return 0;
}

/* psw_coord_update: see psw_coord.h. */
void psw_coord_update(psw_coord *c, uint64_t clock, uint64_t own, double t0_s, double blocked_s) {
  if (!c) return;
  pthread_mutex_lock(&c->mu);
  c->clock = clock;
  c->own = own;
  c->t0_s = t0_s;
  c->blocked_s = blocked_s;
  pthread_mutex_unlock(&c->mu);
}

/* psw_blocked_share: see psw_coord.h. */
double psw_blocked_share(double t0_s, double blocked_s, double since_s, double now_s) {
  double wall = t0_s > 0 ? now_s - t0_s : 0;
  if (!(wall > 0)) return 0;
  double blocked = blocked_s + (since_s > 0 ? now_s - since_s : 0);
  return fmin(1, blocked / wall);
}

/* psw_coord_blocked: see psw_coord.h. */
void psw_coord_blocked(psw_coord *c, double since_s) {
  if (!c) return;
  pthread_mutex_lock(&c->mu);
  c->blocked_since_s = since_s;
  pthread_mutex_unlock(&c->mu);
}

/* psw_coord_lost: see psw_coord.h. */
int psw_coord_lost(psw_coord *c, ps_errbuf *eb) {
  if (!c) return 0;
  pthread_mutex_lock(&c->mu);
  int lost = c->lost;
  if (lost && eb) *eb = c->lost_eb;
  pthread_mutex_unlock(&c->mu);
  return lost ? PS_EEXIST : 0;
}

/* psw_coord_partitions: see psw_coord.h. */
uint64_t psw_coord_partitions(psw_coord *c, uint32_t *out, size_t cap, size_t *n) {
  pthread_mutex_lock(&c->mu);
  *n = c->nparts < cap ? c->nparts : cap;
  if (*n) memcpy(out, c->parts, *n * sizeof *out);
  uint64_t gen = c->parts_gen;
  pthread_mutex_unlock(&c->mu);
  return gen;
}

/* coord_beat_chan sends progress beat REQ to the coordinator over the
 * tensor channel (invariant 7): 0 with its reply in *OUT, or an error (the
 * caller then sends it by gRPC; a failed connection is closed and not
 * tried again for PSW_COORD_CHAN_RETRY_MS). */
static int coord_beat_chan(psw_coord *c, const Ps__HeartbeatRequest *req,
                           Ps__HeartbeatReply **out, ps_errbuf *eb) {
  int64_t now = ps_now_ms();
  int err = 0;
  if (!c->bch) {
    if (now < c->bch_retry_ms) return PS_EUNAVAIL;
    const ps_shard_conf *co = &c->cfg->shards[c->coord];
    /* the file's key now: a rotation may have moved it (ps_auth.h) */
    err = ps_chan_connect_client(&c->bch, co->channel_addr, c->cfg->cluster, &c->auth,
                                 c->cfg->security.payload_mac ? PS_CHAN_AUTH_MAC : 0, 0,
                                 req->worker, PSW_COORD_CALL_MS, eb);
    /* the beat is on every step's path: a cut must not outlast the heal */
    if (err == 0) ps_chan_set_dead_ms(c->bch, ps_config_dead_ms(c->cfg));
  }
  size_t n = ps__heartbeat_request__get_packed_size(req);
  uint8_t *buf = err == 0 ? malloc(n ? n : 1) : NULL;
  if (err == 0 && !buf) err = ps_errf(eb, PS_ENOMEM, "out of memory");
  void *rb = NULL;
  size_t rn = 0;
  if (err == 0) {
    ps__heartbeat_request__pack(req, buf);
    err = ps_chan_beat(c->bch, buf, n, &rb, &rn, eb);
  }
  free(buf);
  if (err == 0) {
    err = ps_pb_unpack(&ps__heartbeat_reply__descriptor, rb, rn, (ProtobufCMessage **)out, eb);
    free(rb);
  }
  if (err < 0) {
    ps_chan_close(c->bch);
    c->bch = NULL;
    c->bch_retry_ms = now + PSW_COORD_CHAN_RETRY_MS;
  }
  return err;
}

/* coord_fence asks the coordinator, by a plain heartbeat, whether this
 * worker still holds its lease before a report or claim goes out whose
 * lease may have run out (invariant 8).  0 with the reply in *OUT when
 * it says expired (or refused: another process holds the rank); else
 * -1, the lease confirmed or the coordinator silent (the report then
 * goes out, and is answered or retried as usual). */
static int coord_fence(psw_coord *c, Ps__HeartbeatReply **out) {
  Ps__HeartbeatRequest req;
  coord_beat_init(c, &req, c->worker);
  ProtobufCMessage *resp = NULL;
  ps_errbuf eb;
  int64_t sent = ps_now_ms();
  if (ps_rpc_call(c->rpc[c->coord], "/ps.Ps/Heartbeat", &req.base,
                  &ps__heartbeat_reply__descriptor, &resp, PSW_COORD_CALL_MS, &eb) < 0)
    return -1;
  Ps__HeartbeatReply *r = (Ps__HeartbeatReply *)resp;
  if (r->expired) {
    ps_warn("worker %u: silent past its lease (%u ms: the process was stopped or cut off), and "
            "the coordinator answers that it is out (declared dead, or its rank went to another "
            "process): it reports nothing before it registers again", c->worker, c->lease_ms);
    *out = r;
    return 0;
  }
  coord_lease_ok(c, sent);
  protobuf_c_message_free_unpacked(resp, NULL);
  return -1;
}

/* coord_progress_call sends the coordinator one heartbeat of the training
 * thread carrying POS (may be NULL) and, with CLAIM, a claim; retries an
 * unreachable coordinator for workers.retry_ms.  *OUT: the reply (caller
 * frees with protobuf_c_message_free_unpacked). */
static int coord_progress_call(psw_coord *c, const psw_coord_part *pos, int claim,
                               uint32_t epochs, uint64_t data_size, Ps__HeartbeatReply **out,
                               ps_errbuf *eb) {
  Ps__HeartbeatRequest req;
  Ps__PartProgress pp = PS__PART_PROGRESS__INIT, *ppp = &pp;
  coord_beat_init(c, &req, c->worker);
  if (pos) {
    pp.partition = pos->part;
    pp.epoch = pos->epoch;
    pp.offset = pos->offset;
    pp.started = pos->started;
    pp.retrained = pos->retrained;
    pp.size = pos->size;
    req.progress = &ppp;
    req.n_progress = 1;
  }
  req.claim = claim;
  req.epochs = epochs;
  req.data_size = data_size;
  ps_errbuf ceb;
  int64_t start = ps_now_ms();
  if (coord_lease_stale(c) && coord_fence(c, out) == 0) return 0; /* expired: *OUT says it */
  if (pos && !claim && coord_beat_chan(c, &req, out, &ceb) == 0) {
    if (!(*out)->expired) coord_lease_ok(c, start);
    return 0;
  }
  uint32_t delay = PS_BACKOFF_FIRST_MS;
  for (;;) {
    /* a stopping worker's last report takes PSW_COORD_CALL_MS in all, the
     * channel's try included: a hung coordinator does not hold the stop */
    int timeout = PSW_COORD_CALL_MS;
    if (c->stop && *c->stop) {
      int64_t left = PSW_COORD_CALL_MS - (ps_now_ms() - start);
      if (left < 200) return ps_errf(eb, PS_ESHUTDOWN, "stopped: the coordinator did not "
                                     "answer within %d ms", PSW_COORD_CALL_MS);
      timeout = (int)left;
    }
    ProtobufCMessage *resp = NULL;
    int err = ps_rpc_call(c->rpc[c->coord], "/ps.Ps/Heartbeat", &req.base,
                          &ps__heartbeat_reply__descriptor, &resp, timeout, eb);
    if (err == 0) {
      *out = (Ps__HeartbeatReply *)resp;
      if (!(*out)->expired) coord_lease_ok(c, start);
      return 0;
    }
    /* a call cut short by a coordinator going down (gRPC CANCELLED, seen
     * as PS_EINTERNAL) is retried too: a report or claim sent twice
     * records the same thing */
    uint32_t nap = ps_backoff_nap(start, delay, c->cfg->workers.retry_ms);
    if ((!coord_retryable(err) && err != PS_EINTERNAL) || !nap) return err;
    if (ps_sleep_ms(nap, c->stop) < 0) return ps_errf(eb, PS_ESHUTDOWN, "stopped");
    /* a restarted coordinator is reached at the next try, not when gRPC's
     * reconnect backoff ends (seconds after, past workers.retry_ms) */
    ps_rpc_reset_backoff(c->rpc[c->coord]);
    delay = ps_backoff_next(delay);
  }
}

/* coord_progress_answer turns a reply to a progress beat into 0,
 * PS_EEXPIRED (declared dead, or unregistered: the trainer registers
 * again, psw_coord_rejoin) or PS_ENOENT (refused). */
static int coord_progress_answer(const psw_coord *c, const Ps__HeartbeatReply *r,
                                 const psw_coord_part *pos, ps_errbuf *eb) {
  char taken[200];
  if (r->expired && r->rank_taken)
    return ps_errf(eb, PS_EEXPIRED, "the coordinator refused this worker: %s",
                   coord_taken(c, c->worker, taken, sizeof taken));
  if (r->expired)
    return ps_errf(eb, PS_EEXPIRED, "the coordinator declared worker dead (lease expired)");
  if (r->unregistered && c->registered)
    return ps_errf(eb, PS_EEXPIRED, "the coordinator holds no registration of this worker (it "
                   "restarted without it)");
  if (pos && r->n_refused)
    return ps_errf(eb, PS_ENOENT, "partition %u is no longer this worker's", pos->part);
  return 0;
}

/* psw_coord_claim: see psw_coord.h. */
int psw_coord_claim(psw_coord *c, const psw_coord_part *fin, uint32_t epochs, uint64_t data_size,
                    psw_coord_part *out, int *job_done, ps_errbuf *eb) {
  Ps__HeartbeatReply *r;
  int err = coord_progress_call(c, fin, 1, epochs, data_size, &r, eb);
  if (err < 0) return err;
  err = coord_progress_answer(c, r, NULL, eb);
  *job_done = r->job_done;
  c->fin_refused = fin && r->n_refused;
  if (err == 0) c->job_epochs = r->job_epochs;
  if (err == 0 && r->granted) {
    const Ps__PartProgress *g = r->granted;
    *out = (psw_coord_part){.part = g->partition, .epoch = g->epoch, .offset = g->offset,
                            .started = g->offset, .size = g->size};
    c->grant_clock = r->start_clock;
    err = 1;
  }
  if (err >= 0 && r->assigned) coord_set_parts(c, r->partitions, r->n_partitions);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return err;
}

/* psw_coord_grant_clock, psw_coord_job_epochs, psw_coord_fin_refused:
 * see psw_coord.h. */
uint64_t psw_coord_grant_clock(const psw_coord *c) { return c->grant_clock; }
uint32_t psw_coord_job_epochs(const psw_coord *c) { return c->job_epochs; }
int psw_coord_fin_refused(const psw_coord *c) { return c->fin_refused; }

/* psw_coord_step_out: see psw_coord.h. */
void psw_coord_step_out(psw_coord *c, uint64_t clock) {
  pthread_mutex_lock(&c->mu);
  int lost = c->lost;
  pthread_mutex_unlock(&c->mu);
  c->out_clock = clock;
  memset(c->out_ok, 0, c->cfg->nshards);
  if (!lost) coord_heartbeat_all(c, c->worker, 0, 0, 0, &clock);
}

/* coord_out_missing returns the first shard that has not answered the
 * last step-out, or SIZE_MAX when every one has. */
static size_t coord_out_missing(const psw_coord *c) {
  for (size_t i = 0; i < c->cfg->nshards; i++)
    if (!c->out_ok[i]) return i;
  return SIZE_MAX;
}

/* psw_coord_stepped_out: see psw_coord.h. */
int psw_coord_stepped_out(psw_coord *c, ps_errbuf *eb) {
  int64_t start = ps_now_ms();
  uint32_t delay = PS_BACKOFF_FIRST_MS;
  size_t miss;
  while ((miss = coord_out_missing(c)) != SIZE_MAX) {
    if (psw_coord_lost(c, eb) < 0) return PS_EEXIST;
    uint32_t nap = ps_backoff_nap(start, delay, c->cfg->workers.retry_ms);
    if (!nap)
      return ps_errf(eb, PS_ETIMEDOUT, "shard %u did not answer this worker's step-out of the "
                     "clock tables (up to clock %llu) within %u ms (workers.retry_ms): a pull "
                     "there above that clock would wait for this worker itself",
                     c->cfg->shards[miss].id, (unsigned long long)c->out_clock,
                     c->cfg->workers.retry_ms);
    if (ps_sleep_ms(nap, c->stop) < 0) return ps_errf(eb, PS_ESHUTDOWN, "stopped");
    delay = ps_backoff_next(delay);
    /* to every shard again (the ones out already ignore it): the answers
     * mark the rest */
    coord_heartbeat_all(c, c->worker, 0, 0, 0, &c->out_clock);
  }
  return 0;
}

/* psw_coord_report: see psw_coord.h. */
int psw_coord_report(psw_coord *c, const psw_coord_part *pos, ps_errbuf *eb) {
  Ps__HeartbeatReply *r;
  int err = coord_progress_call(c, pos, 0, 0, 0, &r, eb);
  if (err < 0) return err;
  err = coord_progress_answer(c, r, pos, eb);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return err;
}

/* coord_report_main: the report thread — sends each report handed over
 * by psw_coord_report_start and posts its answer. */
static void *coord_report_main(void *arg) {
  psw_coord *c = arg;
  pthread_mutex_lock(&c->rmu);
  for (;;) {
    while (!c->rhave && !c->rquit) pthread_cond_wait(&c->rcv, &c->rmu);
    if (c->rquit) break;
    psw_coord_part pos = c->rpos;
    c->rhave = 0;
    pthread_mutex_unlock(&c->rmu);
    ps_errbuf eb = {""};
    int err = psw_coord_report(c, &pos, &eb);
    pthread_mutex_lock(&c->rmu);
    c->rerr = err;
    c->reb = eb;
    c->rdone = 1;
    pthread_cond_broadcast(&c->rcv);
  }
  pthread_mutex_unlock(&c->rmu);
  return NULL;
}

/* psw_coord_report_start: see psw_coord.h. */
int psw_coord_report_start(psw_coord *c, const psw_coord_part *pos, ps_errbuf *eb) {
  pthread_mutex_lock(&c->rmu);
  if (!c->rstarted) {
    if (pthread_create(&c->rthread, NULL, coord_report_main, c) != 0) {
      pthread_mutex_unlock(&c->rmu);
      return ps_errf(eb, PS_ENOMEM, "cannot start the report thread");
    }
    c->rstarted = 1;
  }
  c->rpos = *pos;
  c->rhave = 1;
  c->rdone = 0;
  pthread_cond_broadcast(&c->rcv);
  pthread_mutex_unlock(&c->rmu);
  return 0;
}

/* psw_coord_report_wait: see psw_coord.h. */
int psw_coord_report_wait(psw_coord *c, ps_errbuf *eb) {
  pthread_mutex_lock(&c->rmu);
  while (!c->rdone) pthread_cond_wait(&c->rcv, &c->rmu);
  int err = c->rerr;
  if (err < 0 && eb) *eb = c->reb;
  pthread_mutex_unlock(&c->rmu);
  return err;
}

/* psw_coord_free: see psw_coord.h. */
void psw_coord_free(psw_coord *c, int leaving, int done) {
  if (!c) return;
  if (c->rstarted) {
    pthread_mutex_lock(&c->rmu);
    c->rquit = 1;
    pthread_cond_broadcast(&c->rcv);
    pthread_mutex_unlock(&c->rmu);
    pthread_join(c->rthread, NULL);
  }
  if (c->started) {
    pthread_mutex_lock(&c->mu);
    c->quit = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    if (leaving && !c->lost) coord_heartbeat_all(c, c->worker, 1, done, 0, NULL);
  }
  for (size_t i = 0; c->rpc && i < c->cfg->nshards; i++) ps_rpc_close(c->rpc[i]);
  free(c->rpc);
  free(c->out_ok);
  ps_chan_close(c->bch);
  ps_auth_client_close(&c->auth);
  if (c->reg) protobuf_c_message_free_unpacked(&c->reg->base, NULL);
  free(c->parts);
  pthread_mutex_destroy(&c->mu);
  pthread_mutex_destroy(&c->rejoin_mu);
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->rmu);
  pthread_cond_destroy(&c->rcv);
  free(c->model);
  free(c->device);
  free(c);
}
