/* psd_clock: leases, clock tables and parked pulls (see psd_clock.h).
 *
 * Workers live in one array (ids are the ranks; a DEAD worker keeps its
 * slot for status).  Models are allocated one by one (parked pulls point at
 * them) and never freed before the table.  Each model keeps the clocks of
 * its live workers and a list of parked pulls.  Releases take one parked
 * pull at a time off the live list and call it (invariant 5): a callback
 * may push, pull, cancel or park again without invalidating a walk. */
#include "psd_clock.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_model.h"
#include "ps_pb.h"
#include "psd_stall.h"

typedef struct clock_entry {
  uint32_t worker;
  uint64_t clock;
  int restored;              /* provisional: loaded from a save (invariant 10)
                                or entered at registration; the worker's next
                                push or pull sets it, up or down */
} clock_entry;

typedef struct psd_clock_model {
  char *name;
  uint32_t staleness;
  clock_entry *ent;
  size_t nent, cap;
  psd_park *head, *tail;
  uint32_t nparked;
  uint64_t max_gap, parked_total, timeouts;
} psd_clock_model;

typedef struct clock_worker {
  uint32_t id;
  char *host, *device, *model;
  uint32_t pid;
  int registered, dead;
  int leased;                /* it registered or sent a heartbeat (invariant 9) */
  int left;                  /* dead because it said it was done */
  uint32_t nparked;
  uint64_t last_ms, clock;
  uint64_t credit_ms;        /* loop stalls since last_ms, not its silence (invariant 3) */
  uint64_t out_clock;        /* the largest clock it stepped out at (psd_clock_step_out),
                                + 1; 0: never (invariant 11) */
  int unseen;                /* registered into a rank with no record here (no earlier
                                holder declared dead: invariant 13), not loaded from a save */
  int fixed;                 /* its heartbeats say it is a fixed rank (invariant 14); saved
                                with its model (invariant 10) */
  uint32_t gone_pid;         /* the registered process whose dead rank a rejoin of another
                                took (invariant 12; 0: none): its words are refused; saved */
  float steps_per_s, blocked_share;
} clock_worker;

/* A data partition (invariant 7). */
typedef struct clock_part {
  uint32_t epoch;
  uint64_t offset, started, size;
  uint32_t owner;            /* rank or PSD_CLOCK_NOBODY */
  int active;
  int restored;              /* loaded from a save, not claimed nor reported since:
                                started, and a claim, may lag the worker (invariant 10) */
} clock_part;

struct psd_clock {
  psd_clock_opts o;
  uint32_t cap;              /* worker ids below it (invariant 8) */
  clock_worker *w;
  size_t nw, wcap;
  psd_clock_model **m;
  size_t nm, mcap;
  clock_part *part;          /* o.nparts of them */
  psd_epoch_info *ep;        /* per epoch seen, nep of them (room for ep_cap) */
  size_t nep, ep_cap;
  uint32_t job_epochs;       /* the largest epoch count claimed */
  char *job_model;           /* the model the partition table trains (NULL: none yet) */
  uint64_t data_size;
  int dirty;                 /* invariant 10 */
};

static void clock_part_orphan(psd_clock *c, uint32_t rank);
static void clock_part_balance(psd_clock *c);

static const char *const psd_worker_state_names[] = {
    [PSD_WORKER_ALIVE] = "ALIVE", [PSD_WORKER_LATE] = "LATE", [PSD_WORKER_DEAD] = "DEAD",
    [PSD_WORKER_DONE] = "DONE"};

/* psd_worker_state_name returns ST's static upper-case name. */
const char *psd_worker_state_name(psd_worker_state st) {
  if ((unsigned)st > PSD_WORKER_DONE) return "UNKNOWN";
  return psd_worker_state_names[st];
}

/* psd_clock_new: see psd_clock.h. */
int psd_clock_new(psd_clock **out, const psd_clock_opts *o, ps_errbuf *eb) {
  psd_clock *c = calloc(1, sizeof *c);
  if (!c) return ps_errf(eb, PS_ENOMEM, "out of memory for the clock table");
  c->o = *o;
  if (!c->o.lease_ms) c->o.lease_ms = 5000;
  if (!c->o.heartbeat_ms) c->o.heartbeat_ms = 1000;
  if (!c->o.pull_timeout_ms) c->o.pull_timeout_ms = 30000;
  c->cap = psd_clock_rank_cap(c->o.world_size);
  if (c->o.nparts && !(c->part = calloc(c->o.nparts, sizeof *c->part))) {
    free(c);
    return ps_errf(eb, PS_ENOMEM, "out of memory for %u partitions", o->nparts);
  }
  for (uint32_t p = 0; p < c->o.nparts; p++) c->part[p].owner = PSD_CLOCK_NOBODY;
  *out = c;
  return 0;
}

/* psd_clock_free: see psd_clock.h. */
void psd_clock_free(psd_clock *c) {
  if (!c) return;
  psd_clock_release_all(c, PS_ESHUTDOWN, "shard is shutting down");
  for (size_t i = 0; i < c->nm; i++) {
    free(c->m[i]->name);
    free(c->m[i]->ent);
    free(c->m[i]);
  }
  for (size_t i = 0; i < c->nw; i++) {
    free(c->w[i].host);
    free(c->w[i].device);
    free(c->w[i].model);
  }
  free(c->m);
  free(c->w);
  free(c->part);
  free(c->ep);
  free(c->job_model);
  free(c);
}

/* psd_clock_rank_cap: see psd_clock.h. */
uint32_t psd_clock_rank_cap(uint32_t world_size) {
  return world_size > (UINT32_MAX - 2) / 2 ? UINT32_MAX - 1 : 2 * world_size + 2;
}

/* ---- lookups ------------------------------------------------------------ */

/* clock_model_find returns MODEL's entry or NULL. */
static psd_clock_model *clock_model_find(const psd_clock *c, const char *model) {
  for (size_t i = 0; i < c->nm; i++)
    if (!strcmp(c->m[i]->name, model)) return c->m[i];
  return NULL;
}

/* clock_model_get returns MODEL's entry, made (asp) when missing; NULL on
 * out of memory (message in EB). */
static psd_clock_model *clock_model_get(psd_clock *c, const char *model, ps_errbuf *eb) {
  psd_clock_model *m = clock_model_find(c, model);
  if (m) return m;
  if (c->nm == c->mcap) {
    size_t cap = c->mcap ? 2 * c->mcap : 8;
    psd_clock_model **n = realloc(c->m, cap * sizeof *n);
    if (!n) goto oom;
    c->m = n;
    c->mcap = cap;
  }
  if (!(m = calloc(1, sizeof *m))) goto oom;
  if (!(m->name = strdup(model))) {
    free(m);
    goto oom;
  }
  m->staleness = PSD_CLOCK_ASP;
  c->m[c->nm++] = m;
  return m;
oom:
  ps_errf(eb, PS_ENOMEM, "out of memory tracking model '%s'", model);
  return NULL;
}

/* clock_worker_find returns worker ID's slot or NULL. */
static clock_worker *clock_worker_find(const psd_clock *c, uint32_t id) {
  for (size_t i = 0; i < c->nw; i++)
    if (c->w[i].id == id) return &c->w[i];
  return NULL;
}

/* psd_clock_check_worker: see psd_clock.h. */
int psd_clock_check_worker(const psd_clock *c, uint32_t worker, ps_errbuf *eb) {
  if (worker < c->cap) return 0;
  return ps_errf(eb, PS_EINVAL,
                 "worker %" PRIu32 " is outside this cluster's worker ids (0..%" PRIu32
                 ", that is 2 x workers.count + 1 with workers.count %" PRIu32 ")",
                 worker, c->cap - 1, c->o.world_size);
}

/* clock_worker_expired says whether W may only come back by registering
 * or rejoining (invariant 9): dead, and not because it finished. */
static int clock_worker_expired(const clock_worker *w) {
  return w && w->dead && !w->left && w->leased;
}

/* clock_expired_err fills EB for a request of expired worker ID. */
static int clock_expired_err(uint32_t id, ps_errbuf *eb) {
  return ps_errf(eb, PS_EEXPIRED,
                 "worker %" PRIu32 " was declared dead (its lease expired): it must register "
                 "again before it pushes or pulls",
                 id);
}

/* clock_heard notes that W spoke (or was alive in a parked pull) at
 * NOW_MS: its lease starts again, with no stall credited. */
static void clock_heard(clock_worker *w, uint64_t now_ms) {
  w->last_ms = now_ms;
  w->credit_ms = 0;
}

/* clock_waited notes that a parked pull of W ended at NOW_MS: W was
 * alive while it waited, unless it left or died meanwhile (its pull
 * outlives it until released: no word of it, its silence goes on). */
static void clock_waited(clock_worker *w, uint64_t now_ms) {
  if (w && !w->dead) clock_heard(w, now_ms);
}

/* clock_lease_end returns when W's lease runs out: lease_ms of silence,
 * not counting the loop's stalls (invariant 3). */
static uint64_t clock_lease_end(const psd_clock *c, const clock_worker *w) {
  return w->last_ms + c->o.lease_ms + w->credit_ms;
}

/* clock_worker_get sets *OUT to worker ID's slot (made when missing),
 * alive again and with its lease refreshed.  PS_EINVAL for an id outside
 * the world (invariant 8); PS_EEXPIRED, unless REVIVE, for an expired
 * worker (invariant 9); PS_ENOMEM. */
static int clock_worker_get(psd_clock *c, uint32_t id, uint64_t now_ms, int revive,
                            clock_worker **out, ps_errbuf *eb) {
  clock_worker *w = clock_worker_find(c, id);
  if (!revive && clock_worker_expired(w)) return clock_expired_err(id, eb);
  if (!w) {
    int err = psd_clock_check_worker(c, id, eb);
    if (err < 0) return err;
    if (c->nw == c->wcap) {
      size_t cap = c->wcap ? 2 * c->wcap : 8;
      clock_worker *n = realloc(c->w, cap * sizeof *n);
      if (!n) return ps_errf(eb, PS_ENOMEM, "out of memory tracking worker %" PRIu32, id);
      c->w = n;
      c->wcap = cap;
    }
    w = &c->w[c->nw++];
    memset(w, 0, sizeof *w);
    w->id = id;
  }
  w->dead = w->left = 0;
  clock_heard(w, now_ms);
  if (out) *out = w;
  return 0;
}

/* clock_entry_find returns WORKER's clock entry in M or NULL. */
static clock_entry *clock_entry_find(psd_clock_model *m, uint32_t worker) {
  for (size_t i = 0; i < m->nent; i++)
    if (m->ent[i].worker == worker) return &m->ent[i];
  return NULL;
}

/* clock_raise raises WORKER's clock in M to at least CLOCK (entering it);
 * one beyond PS_CLOCK_MAX + 1 is refused, so that nothing in the table
 * wraps (the shard refuses such requests before: psd_shard_clock_check). */
static int clock_raise(psd_clock *c, psd_clock_model *m, uint32_t worker, uint64_t clock,
                       ps_errbuf *eb) {
  if (clock > PS_CLOCK_MAX + 1)
    return ps_errf(eb, PS_EINVAL, "clock %" PRIu64 " of worker %" PRIu32 " is beyond the "
                   "largest a worker reaches (%" PRIu64 ")", clock, worker, PS_CLOCK_MAX);
  clock_entry *e = clock_entry_find(m, worker);
  if (!e) {
    if (m->nent == m->cap) {
      size_t cap = m->cap ? 2 * m->cap : 8;
      clock_entry *n = realloc(m->ent, cap * sizeof *n);
      if (!n) return ps_errf(eb, PS_ENOMEM, "out of memory for the clocks of '%s'", m->name);
      m->ent = n;
      m->cap = cap;
    }
    e = &m->ent[m->nent++];
    e->worker = worker;
    e->clock = clock;
    e->restored = 0;
  } else if (clock > e->clock || e->restored) {
    e->clock = clock;
    e->restored = 0;
  }
  clock_worker *w = clock_worker_find(c, worker);
  if (w && clock > w->clock) w->clock = clock;
  c->dirty = 1;
  return 0;
}

/* clock_slowest returns M's slowest live entry, or NULL when it has none. */
static const clock_entry *clock_slowest(const psd_clock_model *m) {
  const clock_entry *s = NULL;
  for (size_t i = 0; i < m->nent; i++)
    if (!s || m->ent[i].clock < s->clock) s = &m->ent[i];
  return s;
}

/* clock_ready says whether a pull at CLOCK of M may be served now
 * (invariant 2), and writes its gap to *GAP. */
static int clock_ready(const psd_clock_model *m, uint64_t clock, uint64_t *gap) {
  const clock_entry *s = clock_slowest(m);
  uint64_t min = s ? s->clock : clock;
  *gap = clock > min ? clock - min : 0;
  return m->staleness == PSD_CLOCK_ASP || *gap <= m->staleness;
}

/* ---- parking --------------------------------------------------------------- */

/* clock_unlink takes P off its model's list and its worker's count. */
static void clock_unlink(psd_clock *c, psd_park *p) {
  psd_clock_model *m = p->model;
  if (p->prev) p->prev->next = p->next;
  else m->head = p->next;
  if (p->next) p->next->prev = p->prev;
  else m->tail = p->prev;
  p->prev = p->next = NULL;
  p->linked = 0;
  m->nparked--;
  clock_worker *w = clock_worker_find(c, p->worker);
  if (w && w->nparked) w->nparked--;
}

/* clock_serve_ready releases the parked pulls of M that became servable,
 * one at a time (invariant 5).  A released worker's lease is refreshed:
 * it was alive while it waited. */
static void clock_serve_ready(psd_clock *c, psd_clock_model *m, uint64_t now_ms) {
  for (;;) {
    psd_park *p;
    uint64_t gap = 0;
    for (p = m->head; p; p = p->next)
      if (clock_ready(m, p->clock, &gap)) break;
    if (!p) return;
    clock_unlink(c, p);
    if (gap > m->max_gap) m->max_gap = gap;
    clock_worker *w = clock_worker_find(c, p->worker);
    clock_waited(w, now_ms);
    psd_done_finish(&p->done, 0, NULL);
  }
}

/* psd_clock_set_model: see psd_clock.h. */
int psd_clock_set_model(psd_clock *c, const char *model, uint32_t staleness, uint64_t now_ms,
                        ps_errbuf *eb) {
  psd_clock_model *m = clock_model_get(c, model, eb);
  if (!m) return PS_ENOMEM;
  if (m->staleness == staleness) return 0;
  m->staleness = staleness;
  clock_serve_ready(c, m, now_ms);
  return 0;
}

/* psd_clock_model_fresh: see psd_clock.h. */
void psd_clock_model_fresh(psd_clock *c, const char *model) {
  psd_clock_model *m = clock_model_find(c, model);
  if (m) m->max_gap = m->parked_total = m->timeouts = 0;
}

/* psd_clock_check_live: see psd_clock.h. */
int psd_clock_check_live(const psd_clock *c, uint32_t worker, ps_errbuf *eb) {
  int err = psd_clock_check_worker(c, worker, eb);
  if (err < 0) return err;
  return clock_worker_expired(clock_worker_find(c, worker)) ? clock_expired_err(worker, eb) : 0;
}

static void clock_setstr(char **dst, const char *src);

/* clock_other_process says whether a request from process PID on HOST
 * is not from the process W's record names (invariant 12); a request or
 * record without a pid is anyone's. */
static int clock_other_process(const clock_worker *w, const char *host, uint32_t pid) {
  if (!w->pid || !pid) return 0;
  return w->pid != pid || (host && *host && w->host && strcmp(host, w->host) != 0);
}

/* psd_clock_rejoin: see psd_clock.h. */
int psd_clock_rejoin(psd_clock *c, uint32_t worker, const char *host, uint32_t pid,
                     uint64_t now_ms, ps_errbuf *eb) {
  clock_worker *w = clock_worker_find(c, worker);
  /* a dead rank is anyone's (invariant 12): taken back by another
   * process than the one that registered it (a fixed rank after a
   * registered worker finished), it is no longer that registration's,
   * else psd_clock_holder would refuse every later word of its new
   * holder, its rejoins included */
  int other = w && w->dead && w->registered && clock_other_process(w, host, pid);
  uint32_t gone = other && !w->left ? w->pid : 0; /* a finished one does not come back */
  int err = clock_worker_get(c, worker, now_ms, 1, &w, eb);
  if (err < 0) return err;
  w->leased = 1;
  /* the registered process it was taken from is refused (psd_clock_holder),
   * else its comeback's beats would make it the holder again (a rank not
   * registered is not told apart) and its registration take the rank back;
   * a rejoin of the rank dead again makes it anyone's again */
  if (w->gone_pid != gone) c->dirty = 1; /* saved (invariant 10) */
  w->gone_pid = gone;
  if (other) {
    w->registered = w->unseen = 0;
    w->pid = pid;
    clock_setstr(&w->host, host);
    c->dirty = 1;
  }
  return 0;
}

/* psd_clock_touch: see psd_clock.h. */
int psd_clock_touch(psd_clock *c, uint32_t worker, uint64_t now_ms, ps_errbuf *eb) {
  return clock_worker_get(c, worker, now_ms, 0, NULL, eb);
}

/* psd_clock_heard: see psd_clock.h. */
void psd_clock_heard(psd_clock *c, uint32_t worker, uint64_t now_ms) {
  clock_waited(clock_worker_find(c, worker), now_ms);
}

/* clock_setstr replaces *DST with a copy of SRC (NULL or "": unchanged). */
static void clock_setstr(char **dst, const char *src) {
  if (!src || !*src || (*dst && !strcmp(*dst, src))) return;
  char *n = strdup(src);
  if (!n) return; /* descriptive only: keep the old one */
  free(*dst);
  *dst = n;
}

/* psd_clock_heartbeat: see psd_clock.h. */
int psd_clock_heartbeat(psd_clock *c, uint32_t worker, const char *model, uint64_t clock,
                        float steps_per_s, float blocked_share, const char *host,
                        const char *device, uint64_t now_ms, ps_errbuf *eb) {
  clock_worker *w;
  int err = clock_worker_get(c, worker, now_ms, 0, &w, eb);
  if (err < 0) return err;
  w->leased = 1;
  w->steps_per_s = steps_per_s;
  w->blocked_share = blocked_share;
  if (clock > w->clock && clock <= PS_CLOCK_MAX) w->clock = clock; /* beyond: a bogus beat's */
  clock_setstr(&w->host, host);
  clock_setstr(&w->device, device);
  if (model && *model && (!w->model || strcmp(w->model, model) != 0))
    c->dirty = 1; /* saved: a fixed rank's blocks its model's registrations (invariant 14) */
  clock_setstr(&w->model, model);
  return 0;
}

/* What holds a rank (invariant 7); the free ones in the order
 * registration hands them out. */
typedef enum clock_rank { RANK_DIED, RANK_NEVER, RANK_FINISHED, RANK_LIVE } clock_rank;

/* clock_worker_rank says what W's record makes of its rank. */
static clock_rank clock_worker_rank(const clock_worker *w) {
  return !w->dead ? RANK_LIVE : w->left ? RANK_FINISHED : RANK_DIED;
}

/* clock_rank_of says what holds RANK. */
static clock_rank clock_rank_of(const psd_clock *c, uint32_t rank) {
  const clock_worker *w = clock_worker_find(c, rank);
  return w ? clock_worker_rank(w) : RANK_NEVER;
}

/* clock_fixed_refuse: PS_EEXIST naming them when live fixed ranks of
 * MODEL are in the table (invariant 14), else 0. */
static int clock_fixed_refuse(const psd_clock *c, const char *model, ps_errbuf *eb) {
  if (!model || !*model) return 0;
  char ranks[160] = "";
  size_t len = 0;
  uint32_t n = 0;
  for (size_t i = 0; i < c->nw; i++) {
    const clock_worker *w = &c->w[i];
    if (w->dead || !w->fixed || !w->model || strcmp(w->model, model) != 0) continue;
    if (len < sizeof ranks) {
      int k = snprintf(ranks + len, sizeof ranks - len, "%s%" PRIu32, n ? ", " : "", w->id);
      len += k > 0 ? (size_t)k : 0;
    }
    n++;
  }
  if (!n) return 0;
  return ps_errf(eb, PS_EEXIST,
                 "model '%s' is trained by %" PRIu32 " live fixed rank%s (psw --rank: %s %s): "
                 "they train their partitions whatever registers, and a registered worker "
                 "would train them again on top of theirs; start psw with --rank for a rank "
                 "they lack, or without it after they finished",
                 model, n, n == 1 ? "" : "s", n == 1 ? "rank" : "ranks", ranks);
}

/* psd_clock_register: see psd_clock.h. */
int psd_clock_register(psd_clock *c, const char *model, const char *host, uint32_t pid,
                       const char *device, uint64_t now_ms, uint32_t *rank,
                       uint64_t *start_clock, ps_errbuf *eb) {
  psd_clock_tick(c, now_ms); /* expired leases free their ranks first */
  int ferr = clock_fixed_refuse(c, model, eb); /* invariant 14 */
  if (ferr < 0) return ferr;
  /* the same process (HOST and PID) asking again gets its rank back,
   * live (a retried registration) or declared dead meanwhile (cut off past
   * its lease: it registers again to rejoin), unless another took it or
   * it finished (its rank is the next run's); so does the process whose
   * heartbeats a restarted coordinator that lost its registration heard
   * (invariant 13): the rank is the one it trains in */
  uint32_t r = UINT32_MAX;
  for (size_t i = 0; i < c->nw && host && pid; i++)
    if ((c->w[i].registered ? clock_worker_rank(&c->w[i]) != RANK_FINISHED : !c->w[i].dead) &&
        c->w[i].pid == pid && c->w[i].host && !strcmp(c->w[i].host, host))
      r = c->w[i].id;
  /* invariant 8: within the expected world first, then past it */
  uint32_t lo[2] = {0, c->o.world_size}, hi[2] = {c->o.world_size, c->cap};
  for (int half = 0; half < 2 && r == UINT32_MAX; half++)
    for (int want = RANK_DIED; want < RANK_LIVE && r == UINT32_MAX; want++)
      for (uint32_t i = lo[half]; r == UINT32_MAX && i < hi[half]; i++)
        if (clock_rank_of(c, i) == (clock_rank)want) r = i;
  if (r == UINT32_MAX)
    return ps_errf(eb, PS_EEXIST, "all %" PRIu32 " worker ids are held by live workers",
                   c->cap);
  int unseen = clock_rank_of(c, r) == RANK_NEVER;
  clock_worker *w;
  int err = clock_worker_get(c, r, now_ms, 1, &w, eb);
  if (err < 0) return err;
  if (!(w->registered && w->pid == pid)) w->unseen = unseen; /* not a retried registration */
  w->gone_pid = 0;
  w->registered = w->leased = 1;
  w->fixed = 0;
  w->pid = pid;
  w->steps_per_s = w->blocked_share = 0;
  if (!host || !*host) { /* not the rank's last holder's: invariant 12 compares it */
    free(w->host);
    w->host = NULL;
  }
  clock_setstr(&w->host, host);
  clock_setstr(&w->device, device);
  clock_setstr(&w->model, model);
  psd_clock_model *m = model ? clock_model_find(c, model) : NULL;
  const clock_entry *s = m ? clock_slowest(m) : NULL;
  *start_clock = s ? s->clock : 0;
  w->clock = *start_clock;
  *rank = r;
  clock_part_balance(c); /* it takes unfinished partitions from the most loaded */
  c->dirty = 1;
  /* The new worker holds the others back from its registration on (not
   * from its first pull, which may come seconds later, after its data is
   * loaded): under bsp nobody steps ahead of a worker still starting. */
  if (!m || clock_entry_find(m, r)) return 0;
  int err2 = clock_raise(c, m, r, *start_clock, eb);
  /* provisional: a worker registering again after an expiry (a restart of
   * this shard, a partition) is further on, and its first pull says where */
  if (err2 == 0) clock_entry_find(m, r)->restored = 1;
  return err2;
}

/* psd_clock_pushed: see psd_clock.h. */
int psd_clock_pushed(psd_clock *c, const char *model, uint32_t worker, uint64_t clock,
                     uint64_t now_ms, ps_errbuf *eb) {
  int err = clock_worker_get(c, worker, now_ms, 0, NULL, eb);
  if (err < 0) return err;
  psd_clock_model *m = clock_model_get(c, model, eb);
  if (!m) return PS_ENOMEM;
  if (clock > PS_CLOCK_MAX) /* clock + 1 must not wrap */
    return ps_errf(eb, PS_EINVAL, "clock %" PRIu64 " of worker %" PRIu32 " is beyond the "
                   "largest a worker reaches (%" PRIu64 ")", clock, worker, PS_CLOCK_MAX);
  if ((err = clock_raise(c, m, worker, clock + 1, eb)) < 0) return err;
  clock_serve_ready(c, m, now_ms);
  return 0;
}

/* psd_clock_moved_on: see psd_clock.h.  A word about a push from before
 * the worker stepped out (CLOCK at most the step-out's), while it is
 * still out (no entry, or a provisional one: it did not push or pull
 * since), is dropped: the step-out came after that push, and the
 * worker's next pull or push enters it where it is (entered or set here,
 * at the push's clock, it would stand behind its own next pull: a
 * rejoiner goes on at the slowest live clock). */
int psd_clock_moved_on(psd_clock *c, const char *model, uint32_t worker, uint64_t clock,
                       uint64_t now_ms, ps_errbuf *eb) {
  psd_clock_model *m = clock_model_find(c, model);
  if (!m) return ps_errf(eb, PS_ENOENT, "no clock table of model '%s' here", model);
  clock_worker *w;
  int err = clock_worker_get(c, worker, now_ms, 0, &w, eb);
  if (err < 0) return err;
  const clock_entry *e = clock_entry_find(m, worker);
  if (clock < w->out_clock && (!e || e->restored)) return 0;
  if ((err = clock_raise(c, m, worker, clock, eb)) < 0) return err;
  clock_serve_ready(c, m, now_ms);
  return 0;
}

/* psd_clock_pull: see psd_clock.h. */
int psd_clock_pull(psd_clock *c, const char *model, uint32_t worker, uint64_t clock,
                   uint64_t now_ms, psd_park *p, ps_errbuf *eb) {
  clock_worker *w;
  int err = clock_worker_get(c, worker, now_ms, 0, &w, eb);
  if (err < 0) return err;
  psd_clock_model *m = clock_model_get(c, model, eb);
  if (!m) return PS_ENOMEM;
  /* A pull enters a worker new to the table at its clock but never raises
   * one already there: a worker pulling ahead for a later step (overlap)
   * has not done that step yet (invariant 1). */
  const clock_entry *e = clock_entry_find(m, worker);
  err = e && !e->restored ? 0 : clock_raise(c, m, worker, clock, eb);
  if (err < 0) return err;
  uint64_t gap;
  if (clock_ready(m, clock, &gap)) {
    if (gap > m->max_gap) m->max_gap = gap;
    return 0;
  }
  p->worker = worker;
  p->clock = clock;
  p->since_ms = now_ms;
  p->deadline_ms = now_ms + c->o.pull_timeout_ms;
  p->model = m;
  p->next = NULL;
  p->prev = m->tail;
  if (m->tail) m->tail->next = p;
  else m->head = p;
  m->tail = p;
  p->linked = 1;
  m->nparked++;
  m->parked_total++;
  w->nparked++;
  return 1;
}

/* psd_clock_cancel: see psd_clock.h. */
void psd_clock_cancel(psd_clock *c, psd_park *p) {
  if (c && p && p->linked) clock_unlink(c, p);
}

/* psd_clock_release_all: see psd_clock.h. */
void psd_clock_release_all(psd_clock *c, int status, const char *msg) {
  for (size_t i = 0; i < c->nm; i++) {
    psd_clock_model *m = c->m[i];
    psd_park *p;
    while ((p = m->head)) {
      clock_unlink(c, p);
      psd_done_finish(&p->done, status, msg);
    }
  }
}

/* clock_drop takes worker ID out of every clock table where its clock
 * is at most MAX_CLOCK and re-checks the parked pulls; returns how many
 * tables it left. */
static size_t clock_drop(psd_clock *c, uint32_t id, uint64_t max_clock, uint64_t now_ms) {
  size_t n = 0;
  for (size_t i = 0; i < c->nm; i++) {
    psd_clock_model *m = c->m[i];
    clock_entry *e = clock_entry_find(m, id);
    if (!e || e->clock > max_clock) continue;
    *e = m->ent[--m->nent];
    c->dirty = 1;
    n++;
  }
  for (size_t i = 0; i < c->nm; i++) clock_serve_ready(c, c->m[i], now_ms);
  return n;
}

/* clock_expire makes W DEAD: out of every clock table, whose parked pulls
 * are then re-checked (invariant 3). */
static void clock_expire(psd_clock *c, clock_worker *w, uint64_t now_ms) {
  w->dead = 1;
  clock_part_orphan(c, w->id);
  clock_part_balance(c);
  c->dirty = 1;
  clock_drop(c, w->id, UINT64_MAX, now_ms);
}

/* psd_clock_slowest: see psd_clock.h. */
uint64_t psd_clock_slowest(const psd_clock *c, const char *model) {
  const psd_clock_model *m = model ? clock_model_find(c, model) : NULL;
  const clock_entry *s = m ? clock_slowest(m) : NULL;
  return s ? s->clock : 0;
}

/* psd_clock_set_pid: see psd_clock.h.  A registered worker keeps its
 * registration's pid: a heartbeat from another process (one stopped past
 * its lease whose rank went to the registering one) must not make itself
 * the holder (psd_clock_holder). */
void psd_clock_set_pid(psd_clock *c, uint32_t worker, uint32_t pid) {
  clock_worker *w = clock_worker_find(c, worker);
  if (w && pid && !(w->registered && w->pid)) w->pid = pid;
}

/* psd_clock_set_fixed: see psd_clock.h (invariant 14). */
void psd_clock_set_fixed(psd_clock *c, uint32_t worker, int fixed) {
  clock_worker *w = clock_worker_find(c, worker);
  if (!w || w->dead) return;
  int now = fixed && !w->registered;
  if (now != w->fixed) c->dirty = 1; /* saved (invariant 10) */
  w->fixed = now;
}

/* psd_clock_holder: see psd_clock.h (invariant 12). */
int psd_clock_holder(const psd_clock *c, uint32_t worker, const char *host, uint32_t pid,
                     int *unseen, ps_errbuf *eb) {
  const clock_worker *w = clock_worker_find(c, worker);
  if (unseen) *unseen = 0;
  if (!w || w->dead || !clock_other_process(w, host, pid)) return 0;
  if (!w->registered) {
    if (!w->gone_pid || w->gone_pid != pid) return 0;
    return ps_errf(eb, PS_EEXPIRED,
                   "worker %" PRIu32 " is held by pid %" PRIu32 " on %s, which took it back "
                   "(a fixed rank's rejoin) after this process (pid %" PRIu32 " on %s), which had "
                   "registered it, was declared dead: it must stop or register again",
                   worker, w->pid, w->host ? w->host : "?", pid, host && *host ? host : "?");
  }
  if (unseen) *unseen = w->unseen;
  if (w->unseen)
    return ps_errf(eb, PS_EEXPIRED,
                   "worker %" PRIu32 " is held by pid %" PRIu32 " on %s, which registered it "
                   "while this coordinator held no registration of this process (pid %" PRIu32
                   " on %s; a restart lost it, or it never registered: a fixed rank), which was "
                   "not declared dead: it must stop or register again",
                   worker, w->pid, w->host ? w->host : "?", pid, host && *host ? host : "?");
  return ps_errf(eb, PS_EEXPIRED,
                 "worker %" PRIu32 " is held by pid %" PRIu32 " on %s, which registered after "
                 "this process (pid %" PRIu32 " on %s) was declared dead: it must stop or "
                 "register again",
                 worker, w->pid, w->host ? w->host : "?", pid, host && *host ? host : "?");
}

/* psd_clock_grace: see psd_clock.h (invariant 10). */
void psd_clock_grace(psd_clock *c, uint64_t now_ms) {
  for (size_t i = 0; i < c->nw; i++)
    if (!c->w[i].dead && c->w[i].last_ms < now_ms) clock_heard(&c->w[i], now_ms);
}

/* psd_clock_step_out: see psd_clock.h. */
size_t psd_clock_step_out(psd_clock *c, uint32_t worker, uint64_t clock, uint64_t now_ms) {
  clock_worker *w = clock_worker_find(c, worker);
  if (!w || w->dead) return 0;
  if (clock < UINT64_MAX && clock + 1 > w->out_clock) w->out_clock = clock + 1;
  return clock_drop(c, worker, clock, now_ms);
}

/* psd_clock_expired: see psd_clock.h. */
int psd_clock_expired(const psd_clock *c, uint32_t worker) {
  const clock_worker *w = clock_worker_find(c, worker);
  return w && w->dead;
}

/* psd_clock_unregistered: see psd_clock.h. */
int psd_clock_unregistered(const psd_clock *c, uint32_t worker) {
  const clock_worker *w = clock_worker_find(c, worker);
  return w && !w->dead && !w->registered;
}

/* psd_clock_silent_ms: see psd_clock.h. */
uint64_t psd_clock_silent_ms(const psd_clock *c, uint32_t worker, uint64_t now_ms) {
  const clock_worker *w = clock_worker_find(c, worker);
  if (!w) return UINT64_MAX;
  return psd_stall_silence(w->last_ms, w->credit_ms, now_ms); /* invariant 3 */
}

/* psd_clock_leave: see psd_clock.h. */
void psd_clock_leave(psd_clock *c, uint32_t worker, uint64_t now_ms, int done) {
  clock_worker *w = clock_worker_find(c, worker);
  if (w && !w->dead) {
    w->left = done;
    clock_expire(c, w, now_ms);
  }
}

/* ---- data partitions (invariant 7) ---------------------------------------- */

/* clock_claimant says whether W may own partitions: alive and registered
 * (fixed ranks and bare clients keep their own data). */
static int clock_claimant(const clock_worker *w) { return !w->dead && w->registered; }

/* clock_part_unfinished says whether partition P has epochs left. */
static int clock_part_unfinished(const psd_clock *c, const clock_part *p) {
  return !c->job_epochs || p->epoch < c->job_epochs;
}

/* clock_load returns how many unfinished partitions RANK owns. */
static uint32_t clock_load(const psd_clock *c, uint32_t rank) {
  uint32_t n = 0;
  for (uint32_t p = 0; p < c->o.nparts; p++)
    n += c->part[p].owner == rank && clock_part_unfinished(c, &c->part[p]);
  return n;
}

/* clock_epoch grows the accounting to hold EPOCH; NULL when out of memory
 * (the counts are for status: training goes on). */
static psd_epoch_info *clock_epoch(psd_clock *c, uint32_t epoch) {
  if (epoch >= c->nep) {
    if (epoch >= 100000) return NULL; /* training.epochs is at most 100000 */
    if (epoch >= c->ep_cap) { /* doubling: a table loaded epoch by epoch grows in O(n) */
      size_t cap = c->ep_cap ? 2 * c->ep_cap : 16;
      if (cap <= epoch) cap = (size_t)epoch + 1;
      psd_epoch_info *n = realloc(c->ep, cap * sizeof *n);
      if (!n) return NULL;
      c->ep = n;
      c->ep_cap = cap;
    }
    for (size_t e = c->nep; e <= epoch; e++) c->ep[e] = (psd_epoch_info){.epoch = (uint32_t)e};
    c->nep = epoch + 1;
  }
  return &c->ep[epoch];
}

/* clock_part_orphan takes RANK's partitions from it: an active one resumes
 * at its last reported offset, its samples in flight counted retrained. */
static void clock_part_orphan(psd_clock *c, uint32_t rank) {
  for (uint32_t i = 0; i < c->o.nparts; i++) {
    clock_part *p = &c->part[i];
    if (p->owner != rank) continue;
    if (p->active) {
      psd_epoch_info *e = clock_epoch(c, p->epoch);
      if (e) {
        e->retrained += p->started - p->offset;
        e->handovers++;
      }
    }
    p->started = p->offset;
    p->active = p->restored = 0;
    p->owner = PSD_CLOCK_NOBODY;
  }
}

/* clock_extreme returns the live claimant with the least (MOST = 0) or
 * most (MOST = 1) load, lowest rank first; UINT32_MAX when none.  MOST
 * only counts workers with an inactive unfinished partition to give. */
static uint32_t clock_extreme(const psd_clock *c, int most, uint32_t *load) {
  uint32_t best = UINT32_MAX, bl = 0;
  for (size_t i = 0; i < c->nw; i++) {
    const clock_worker *w = &c->w[i];
    if (!clock_claimant(w)) continue;
    uint32_t l = clock_load(c, w->id);
    if (most) {
      int movable = 0;
      for (uint32_t p = 0; p < c->o.nparts && !movable; p++)
        movable = c->part[p].owner == w->id && !c->part[p].active &&
                  clock_part_unfinished(c, &c->part[p]);
      if (!movable) continue;
    }
    if (best == UINT32_MAX || (most ? l > bl : l < bl) || (l == bl && w->id < best)) {
      best = w->id;
      bl = l;
    }
  }
  *load = bl;
  return best;
}

/* clock_part_last returns RANK's inactive unfinished partition that it
 * would train last (highest epoch, then id), or UINT32_MAX. */
static uint32_t clock_part_last(const psd_clock *c, uint32_t rank) {
  uint32_t best = UINT32_MAX;
  for (uint32_t i = 0; i < c->o.nparts; i++) {
    const clock_part *p = &c->part[i];
    if (p->owner != rank || p->active || !clock_part_unfinished(c, p)) continue;
    if (best == UINT32_MAX || p->epoch >= c->part[best].epoch) best = i;
  }
  return best;
}

/* clock_part_balance gives every partition without an owner to the least
 * loaded live claimant, then moves inactive unfinished partitions from
 * the most to the least loaded while they differ by two or more. */
static void clock_part_balance(psd_clock *c) {
  uint32_t l;
  for (uint32_t i = 0; i < c->o.nparts; i++) {
    if (c->part[i].owner != PSD_CLOCK_NOBODY) continue;
    uint32_t to = clock_extreme(c, 0, &l);
    if (to == UINT32_MAX) return; /* nobody alive: they wait */
    c->part[i].owner = to;
  }
  for (uint32_t guard = 0; guard < c->o.nparts; guard++) {
    uint32_t lmin, lmax, to = clock_extreme(c, 0, &lmin), from = clock_extreme(c, 1, &lmax);
    if (to == UINT32_MAX || from == UINT32_MAX || lmax < lmin + 2) return;
    uint32_t p = clock_part_last(c, from);
    if (p == UINT32_MAX) return;
    c->part[p].owner = to;
  }
}

/* clock_part_pick returns RANK's next partition: its active one (unless
 * STEAL: another takes it), else its inactive unfinished one of the
 * lowest (epoch, id); UINT32_MAX. */
static uint32_t clock_part_pick(const psd_clock *c, uint32_t rank, int steal) {
  uint32_t best = UINT32_MAX;
  for (uint32_t i = 0; i < c->o.nparts; i++) {
    const clock_part *p = &c->part[i];
    if (p->owner != rank || (steal && p->active)) continue;
    if (p->active) return i;
    if (!clock_part_unfinished(c, p)) continue;
    if (best == UINT32_MAX || p->epoch < c->part[best].epoch) best = i;
  }
  return best;
}

/* clock_part_pos fills POS with partition I's place. */
static void clock_part_pos(const psd_clock *c, uint32_t i, psd_part_pos *pos) {
  const clock_part *p = &c->part[i];
  *pos = (psd_part_pos){.part = i, .epoch = p->epoch, .offset = p->offset,
                        .started = p->started, .size = p->size};
}

/* psd_clock_job_reset: see psd_clock.h. */
int psd_clock_job_reset(psd_clock *c, const char *model, ps_errbuf *eb) {
  char *m = model ? strdup(model) : NULL;
  if (model && !m) return ps_errf(eb, PS_ENOMEM, "out of memory");
  free(c->job_model);
  c->job_model = m;
  for (uint32_t i = 0; i < c->o.nparts; i++) /* owners stay: live workers */
    c->part[i] = (clock_part){.owner = c->part[i].owner};
  free(c->ep);
  c->ep = NULL;
  c->nep = c->ep_cap = 0;
  c->job_epochs = 0;
  c->data_size = 0; /* the new job's first claim says it */
  clock_part_balance(c);
  c->dirty = 1;
  return 0;
}

/* psd_clock_job_model: see psd_clock.h. */
const char *psd_clock_job_model(const psd_clock *c) { return c->job_model; }

/* clock_job_for makes MODEL the table's job (invariant 7): kept when it is
 * already, a new job when no partition is being trained, else PS_EEXIST.
 * A table with no job takes MODEL as it is: it is new or reset (nothing
 * to clear), or restored from a save made before the job's first claim
 * (invariant 10), whose restored marks the partitions its workers
 * claimed after that save still need, and whose progress since the
 * restore (their owners' reports, taken by those marks) is the job's: a
 * reset at the restart's first claim, another worker's, cleared both,
 * and the owners' next reports were refused, their retrains counted
 * nowhere. */
static int clock_job_for(psd_clock *c, const char *model, ps_errbuf *eb) {
  if (c->job_model && !strcmp(c->job_model, model)) return 0;
  if (!c->job_model) {
    if (!(c->job_model = strdup(model))) return ps_errf(eb, PS_ENOMEM, "out of memory");
    c->dirty = 1;
    return 0;
  }
  for (uint32_t i = 0; i < c->o.nparts; i++)
    if (c->part[i].active)
      return ps_errf(eb, PS_EEXIST, "the data partitions are being trained for model '%s' "
                     "(one job at a time): model '%s' must wait", c->job_model, model);
  return psd_clock_job_reset(c, model, eb);
}

/* clock_job_begun says whether the job trained anything yet: a partition
 * being trained, part-way through, or past an epoch. */
static int clock_job_begun(const psd_clock *c) {
  for (uint32_t i = 0; i < c->o.nparts; i++)
    if (c->part[i].active || c->part[i].offset || c->part[i].epoch) return 1;
  return 0;
}

/* clock_data_size checks SAMPLES, a claimant's training-set size (0: not
 * said), against the job's (invariant 7): a job keeps the size of its
 * first claim for its whole life, finished or not (a worker that cut
 * other partitions would train some samples twice and leave others out,
 * and more epochs on another set would count another set's samples); a
 * new job takes a new one.  Nothing changes when it is refused. */
static int clock_data_size(psd_clock *c, uint64_t samples, ps_errbuf *eb) {
  if (!samples || samples == c->data_size) return 0;
  if (c->data_size && clock_job_begun(c))
    return ps_errf(eb, PS_ECONFIG, "this worker's training set has %" PRIu64 " samples, the "
                   "job's %" PRIu64 ": its data files or data.limit differ from those of the "
                   "workers that trained model '%s' so far (a job keeps its training set; "
                   "submitting the model again with --replace and a setting changed starts "
                   "it over; an identical submit changes nothing)",
                   samples, c->data_size, c->job_model ? c->job_model : "");
  c->data_size = samples;
  c->dirty = 1;
  return 0;
}

/* psd_clock_claim: see psd_clock.h. */
int psd_clock_claim(psd_clock *c, uint32_t worker, const char *model, uint32_t epochs,
                    uint64_t data_size, uint64_t now_ms, psd_part_pos *pos, int *done,
                    ps_errbuf *eb) {
  clock_worker *w;
  int err = clock_worker_get(c, worker, now_ms, 0, &w, eb);
  if (err < 0) return err;
  if (!w->registered) /* invariant 13: as an expiry, it registers again */
    return ps_errf(eb, PS_EEXPIRED, "worker %" PRIu32 " did not register here (or a restart of "
                   "this coordinator lost its registration): it has no partitions and must "
                   "register again", worker);
  if ((err = clock_job_for(c, model ? model : "", eb)) < 0) return err;
  if ((err = clock_data_size(c, data_size, eb)) < 0) return err;
  *done = 0;
  if (epochs > c->job_epochs) {
    /* partitions that had finished are unfinished again (more epochs for
     * a finished job): spread them over the live workers, or the first
     * to claim would own them all and the others would train one
     * partition epoch after epoch */
    c->job_epochs = epochs;
    clock_part_balance(c);
  }
  uint32_t i = clock_part_pick(c, worker, 0);
  if (i == UINT32_MAX) {
    /* nothing of its own left: one from the most loaded worker, or one
     * nobody holds (invariant 7) */
    uint32_t l, from = clock_extreme(c, 1, &l);
    if (from != UINT32_MAX) i = clock_part_pick(c, from, 1);
    for (uint32_t k = 0; i == UINT32_MAX && k < c->o.nparts; k++)
      if (c->part[k].owner == PSD_CLOCK_NOBODY && clock_part_unfinished(c, &c->part[k])) i = k;
  }
  if (i == UINT32_MAX) {
    *done = 1;
    for (uint32_t k = 0; k < c->o.nparts; k++)
      if (clock_part_unfinished(c, &c->part[k])) *done = 0;
    return 0;
  }
  clock_part *p = &c->part[i];
  p->owner = worker;
  p->active = 1;
  p->restored = 0;
  p->started = p->offset;
  c->dirty = 1;
  clock_part_pos(c, i, pos);
  return 1;
}

/* psd_clock_progress: see psd_clock.h. */
int psd_clock_progress(psd_clock *c, uint32_t worker, const psd_part_pos *pos, uint64_t now_ms,
                       ps_errbuf *eb) {
  int err = clock_worker_get(c, worker, now_ms, 0, NULL, eb);
  if (err < 0) return err;
  if (pos->part >= c->o.nparts)
    return ps_errf(eb, PS_EINVAL, "partition %" PRIu32 " out of range (%" PRIu32 " partitions)",
                   pos->part, c->o.nparts);
  clock_part *p = &c->part[pos->part];
  /* its owner finished the saved epoch after the last save and claimed
   * the next (invariant 10): those epochs' rest is counted trained and
   * finished, as their lost reports would have, and the report is taken
   * below at its own epoch (checked first: a refused report changes
   * nothing) */
  if (p->restored && !p->active && p->owner == worker && pos->epoch > p->epoch &&
      (!c->job_epochs || pos->epoch < c->job_epochs) && pos->size &&
      (!p->size || p->size == pos->size) && p->offset <= pos->size && pos->offset <= pos->size &&
      pos->started >= pos->offset && pos->started <= pos->size && clock_epoch(c, pos->epoch)) {
    for (uint32_t k = p->epoch; k < pos->epoch; k++) {
      psd_epoch_info *e = clock_epoch(c, k);
      e->trained += pos->size - (k == p->epoch ? p->offset : 0);
      e->done_parts++;
    }
    p->epoch = pos->epoch;
    p->offset = p->started = 0;
    p->size = pos->size;
    c->dirty = 1;
  }
  /* its owner claimed it after the last save, which the restart lost
   * (invariant 10): it goes on with it rather than train again what it
   * trained since the saved offset */
  if (p->restored && !p->active && p->owner == worker && p->epoch == pos->epoch &&
      pos->offset >= p->offset)
    p->active = 1;
  if (p->owner != worker || !p->active || p->epoch != pos->epoch) {
    char owner[32] = "nobody";
    if (p->owner != PSD_CLOCK_NOBODY) snprintf(owner, sizeof owner, "worker %" PRIu32, p->owner);
    return ps_errf(eb, PS_ENOENT,
                   "partition %" PRIu32 " epoch %" PRIu32 " is not worker %" PRIu32
                   "'s to train (it is %s's, at epoch %" PRIu32 ", %s)",
                   pos->part, pos->epoch, worker, owner, p->epoch,
                   p->active ? "being trained" : "not claimed: a claim hands it out");
  }
  /* size 0: an empty partition (fewer samples than partitions), finished
   * by its first report */
  if ((p->size && p->size != pos->size) || pos->offset < p->offset ||
      pos->offset > pos->size || pos->started < pos->offset || pos->started > pos->size)
    return ps_errf(eb, PS_EINVAL,
                   "partition %" PRIu32 ": bad progress offset %" PRIu64 " started %" PRIu64
                   " size %" PRIu64 " (recorded offset %" PRIu64 ", size %" PRIu64 ")",
                   pos->part, pos->offset, pos->started, pos->size, p->offset, p->size);
  psd_epoch_info *e = clock_epoch(c, p->epoch);
  if (e) e->trained += pos->offset - p->offset;
  /* what the worker says it trains again (a push of unknown fate), at
   * most what it had started past its offset; after a restore the saved
   * started may lag the worker's offset (invariant 10: its pushes went on
   * for up to PSD_COORD_SAVE_MS after the last save), so only the rest of
   * the partition bounds it */
  uint64_t again = pos->retrained, most = p->started > pos->offset ? p->started - pos->offset : 0;
  if (p->restored) most = pos->size - pos->offset;
  if (e) e->retrained += again < most ? again : most;
  p->size = pos->size;
  p->offset = pos->offset;
  p->started = pos->started;
  p->restored = 0;
  if (p->offset == p->size) {
    if (e) e->done_parts++;
    p->epoch++;
    p->offset = p->started = 0;
    p->active = 0;
  }
  c->dirty = 1;
  return 0;
}

/* psd_clock_partitions: see psd_clock.h (invariant 7). */
size_t psd_clock_partitions(const psd_clock *c, uint32_t rank, uint32_t nparts, uint32_t *out) {
  size_t n = 0;
  for (uint32_t p = 0; p < c->o.nparts && p < nparts; p++)
    if (c->part[p].owner == rank) out[n++] = p;
  return n;
}

uint32_t psd_clock_nparts(const psd_clock *c) { return c->o.nparts; }
size_t psd_clock_nepochs(const psd_clock *c) { return c->nep; }
uint32_t psd_clock_job_epochs(const psd_clock *c) { return c->job_epochs; }
uint64_t psd_clock_data_size(const psd_clock *c) { return c->data_size; }
int psd_clock_dirty(const psd_clock *c) { return c->dirty; }

/* psd_clock_part_info: see psd_clock.h. */
void psd_clock_part_info(const psd_clock *c, uint32_t part, psd_part_info *info) {
  memset(info, 0, sizeof *info);
  if (part >= c->o.nparts) return;
  clock_part_pos(c, part, &info->pos);
  info->owner = c->part[part].owner;
  info->active = c->part[part].active;
}

/* psd_clock_epoch_info: see psd_clock.h. */
void psd_clock_epoch_info(const psd_clock *c, size_t epoch, psd_epoch_info *info) {
  if (epoch < c->nep) *info = c->ep[epoch];
  else *info = (psd_epoch_info){.epoch = (uint32_t)epoch};
}

/* clock_timeout gives up on P (invariant 4). */
static void clock_timeout(psd_clock *c, psd_park *p, uint64_t now_ms) {
  psd_clock_model *m = p->model;
  const clock_entry *s = clock_slowest(m);
  char msg[512];
  if (s)
    snprintf(msg, sizeof msg,
             "pull of model '%s' at clock %" PRIu64 " by worker %" PRIu32 " timed out after %"
             PRIu64 " ms: slowest live worker %" PRIu32 " is at clock %" PRIu64
             " (staleness bound %" PRIu32 ")",
             m->name, p->clock, p->worker, now_ms - p->since_ms, s->worker, s->clock,
             m->staleness);
  else
    snprintf(msg, sizeof msg, "pull of model '%s' at clock %" PRIu64 " timed out", m->name,
             p->clock);
  m->timeouts++;
  clock_unlink(c, p);
  clock_worker *w = clock_worker_find(c, p->worker);
  clock_waited(w, now_ms);
  psd_done_finish(&p->done, PS_ETIMEDOUT, msg);
}

/* psd_clock_tick: see psd_clock.h.  One expiry or timeout at a time, each
 * followed by a fresh scan (invariant 5). */
void psd_clock_tick(psd_clock *c, uint64_t now_ms) {
  for (int again = 1; again;) {
    again = 0;
    for (size_t i = 0; i < c->nw; i++) {
      clock_worker *w = &c->w[i];
      if (w->dead || w->nparked || now_ms < clock_lease_end(c, w)) continue;
      /* clock_expire runs release callbacks, which may grow c->w */
      uint32_t id = w->id;
      uint64_t silent = now_ms - w->last_ms;
      clock_expire(c, w, now_ms);
      if (c->o.on_expire) c->o.on_expire(c->o.arg, id, silent);
      again = 1;
      break;
    }
    for (size_t i = 0; !again && i < c->nm; i++)
      for (psd_park *p = c->m[i]->head; p; p = p->next)
        if (p->deadline_ms <= now_ms) {
          clock_timeout(c, p, now_ms);
          again = 1;
          break;
        }
  }
}

/* psd_clock_stalled: see psd_clock.h.  A credit, not a moved last_ms:
 * status still shows how long the worker has been silent. */
void psd_clock_stalled(psd_clock *c, uint64_t stall_ms, uint64_t now_ms) {
  for (size_t i = 0; i < c->nw; i++) {
    clock_worker *w = &c->w[i];
    if (!w->dead) w->credit_ms += psd_stall_lost(w->last_ms, stall_ms, now_ms);
  }
}

/* psd_clock_next_ms: see psd_clock.h. */
uint64_t psd_clock_next_ms(const psd_clock *c, uint64_t now_ms) {
  (void)now_ms;
  uint64_t t = UINT64_MAX;
  for (size_t i = 0; i < c->nw; i++)
    if (!c->w[i].dead && !c->w[i].nparked && clock_lease_end(c, &c->w[i]) < t)
      t = clock_lease_end(c, &c->w[i]);
  for (size_t i = 0; i < c->nm; i++)
    for (const psd_park *p = c->m[i]->head; p; p = p->next)
      if (p->deadline_ms < t) t = p->deadline_ms;
  return t;
}

/* psd_clock_stats_of: see psd_clock.h.  PS_ENOENT for a model never seen. */
int psd_clock_stats_of(const psd_clock *c, const char *model, psd_clock_stats *st) {
  memset(st, 0, sizeof *st);
  st->staleness = PSD_CLOCK_ASP;
  const psd_clock_model *m = clock_model_find(c, model);
  if (!m) return PS_ENOENT;
  const clock_entry *s = clock_slowest(m);
  st->staleness = m->staleness;
  st->max_gap = m->max_gap;
  st->parked = m->nparked;
  st->parked_total = m->parked_total;
  st->timeouts = m->timeouts;
  st->min_clock = s ? s->clock : 0;
  st->live = (uint32_t)m->nent;
  return 0;
}

/* psd_clock_model_clock: see psd_clock.h. */
int64_t psd_clock_model_clock(const psd_clock *c, const char *model, uint32_t worker) {
  psd_clock_model *m = clock_model_find(c, model);
  const clock_entry *e = m ? clock_entry_find(m, worker) : NULL;
  return e ? (int64_t)e->clock : -1;
}

size_t psd_clock_nworkers(const psd_clock *c) { return c->nw; }
uint32_t psd_clock_world_size(const psd_clock *c) { return c->o.world_size; }

/* psd_clock_worker fills INFO for worker slot I as of NOW_MS: DEAD once
 * expired or silent past the lease, LATE after two silent heartbeat
 * intervals, ALIVE otherwise (and while a pull of it is parked). */
void psd_clock_worker(const psd_clock *c, size_t i, uint64_t now_ms, psd_worker_info *info) {
  const clock_worker *w = &c->w[i];
  memset(info, 0, sizeof *info);
  info->id = w->id;
  info->host = w->host ? w->host : "";
  info->device = w->device ? w->device : "";
  info->model = w->model ? w->model : "";
  info->pid = w->pid;
  info->registered = w->registered;
  info->fixed = w->fixed && !w->dead;
  info->clock = w->clock;
  info->age_ms = now_ms > w->last_ms ? now_ms - w->last_ms : 0;
  info->steps_per_s = w->steps_per_s;
  info->blocked_share = w->blocked_share;
  if (w->nparked && !w->dead) info->age_ms = 0; /* alive while it waits, not once gone */
  if (clock_worker_rank(w) == RANK_FINISHED)
    info->state = PSD_WORKER_DONE;
  else if (w->dead || (!w->nparked && now_ms >= clock_lease_end(c, w)))
    info->state = PSD_WORKER_DEAD;
  else if (info->age_ms > 2ull * c->o.heartbeat_ms)
    info->state = PSD_WORKER_LATE;
  else
    info->state = PSD_WORKER_ALIVE;
}

/* ---- persistence (invariant 10) ------------------------------------------- */

/* The first line of a save, its format's version: 2 writes each worker's
 * fixed mark, the pid of the registered process its rank was taken from
 * and its model (invariants 12, 14); 1 (an older psd's) did not, and
 * loads as it did: no fixed ranks, no refused old holders. */
#define CLOCK_SAVE_MAGIC "psd-clock 2"
#define CLOCK_SAVE_MAGIC_V1 "psd-clock 1"
#define CLOCK_NO_MODEL "*" /* a worker line's model when it named none (not a model name) */

/* clock_appendf appends to the growing buffer *B (*LEN used, *CAP held);
 * -1 when out of memory (*B freed). */
static int clock_appendf(char **b, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int clock_appendf(char **b, size_t *len, size_t *cap, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(*b ? *b + *len : NULL, *b ? *cap - *len : 0, fmt, ap);
    va_end(ap);
    if (k < 0) return -1;
    if (*b && *len + (size_t)k < *cap) {
      *len += (size_t)k;
      return 0;
    }
    size_t ncap = (*cap ? *cap : 4096) * 2 + (size_t)k;
    char *n = realloc(*b, ncap);
    if (!n) {
      free(*b);
      *b = NULL;
      return -1;
    }
    *b = n;
    *cap = ncap;
  }
}

/* psd_clock_save: see psd_clock.h. */
int psd_clock_save(psd_clock *c, char **buf, size_t *len, ps_errbuf *eb) {
  char *b = NULL;
  size_t n = 0, cap = 0;
  int bad = clock_appendf(&b, &n, &cap, CLOCK_SAVE_MAGIC "\njob %" PRIu32 " data %" PRIu64
                          " parts %" PRIu32 "\n", c->job_epochs, c->data_size, c->o.nparts);
  if (!bad && c->job_model) bad = clock_appendf(&b, &n, &cap, "model %s\n", c->job_model);
  for (uint32_t i = 0; !bad && i < c->o.nparts; i++) {
    const clock_part *p = &c->part[i];
    bad = clock_appendf(&b, &n, &cap, "part %" PRIu32 " %" PRIu32 " %" PRIu64 " %" PRIu64
                        " %" PRIu64 " %" PRId64 " %d\n", i, p->epoch, p->offset, p->started,
                        p->size, p->owner == PSD_CLOCK_NOBODY ? (int64_t)-1 : (int64_t)p->owner,
                        p->active);
  }
  for (size_t e = 0; !bad && e < c->nep; e++)
    bad = clock_appendf(&b, &n, &cap, "epoch %zu %" PRIu64 " %" PRIu64 " %" PRIu32 " %" PRIu32
                        "\n", e, c->ep[e].trained, c->ep[e].retrained, c->ep[e].handovers,
                        c->ep[e].done_parts);
  for (size_t i = 0; !bad && i < c->nw; i++) {
    const clock_worker *w = &c->w[i];
    /* the host last: the rest of the line (a save of an older psd ends
     * at the clock, or before the fixed mark: version 1) */
    bad = clock_appendf(&b, &n, &cap, "worker %" PRIu32 " %d %d %d %d %" PRIu32 " %" PRIu64
                        " %d %" PRIu32 " %s%s%s\n", w->id, w->registered, w->leased, w->dead,
                        w->left, w->pid, w->clock, w->fixed, w->gone_pid,
                        w->model ? w->model : CLOCK_NO_MODEL, w->host ? " " : "",
                        w->host ? w->host : "");
  }
  for (size_t i = 0; !bad && i < c->nm; i++)
    for (size_t k = 0; !bad && k < c->m[i]->nent; k++)
      bad = clock_appendf(&b, &n, &cap, "clock %s %" PRIu32 " %" PRIu64 "\n", c->m[i]->name,
                          c->m[i]->ent[k].worker, c->m[i]->ent[k].clock);
  if (!bad) bad = clock_appendf(&b, &n, &cap, "end\n");
  if (bad) return ps_errf(eb, PS_ENOMEM, "out of memory saving the clock table");
  *buf = b;
  *len = n;
  c->dirty = 0;
  return 0;
}

/* clock_load_worker restores a "worker" line L of a save of format
 * VERSION (CLOCK_SAVE_MAGIC): 0, 1 when L is no worker line of that
 * format, or a PS_E* code. */
static int clock_load_worker(psd_clock *c, const char *l, int version, uint64_t now_ms,
                             ps_errbuf *eb) {
  uint32_t a, h, gone = 0;
  uint64_t x;
  int f1, f2, f3, f4, fixed = 0, k = 0;
  char model[256] = CLOCK_NO_MODEL;
  if (version == 1
          ? sscanf(l, "worker %" SCNu32 " %d %d %d %d %" SCNu32 " %" SCNu64 "%n", &a, &f1, &f2,
                   &f3, &f4, &h, &x, &k) != 7
          : sscanf(l, "worker %" SCNu32 " %d %d %d %d %" SCNu32 " %" SCNu64 " %d %" SCNu32
                   " %255s%n", &a, &f1, &f2, &f3, &f4, &h, &x, &fixed, &gone, model, &k) != 10)
    return 1; /* not a worker line */
  if (l[k] && (l[k] != ' ' || !l[k + 1])) return 1;
  if (strcmp(model, CLOCK_NO_MODEL) != 0 && !ps_name_valid(model))
    return ps_errf(eb, PS_EFORMAT, "worker %" PRIu32 ": bad model name", a);
  clock_worker *w;
  int err = clock_worker_get(c, a, now_ms, 1, &w, eb);
  if (err < 0) return err;
  w->registered = f1 != 0;
  w->leased = f2 != 0;
  w->dead = f3 != 0;
  w->left = f4 != 0;
  w->pid = h;
  w->clock = x;
  /* invariants 12 and 14 hold of the registered process alone: a
   * registration clears both */
  w->fixed = fixed != 0 && !w->registered;
  w->gone_pid = w->registered ? 0 : gone;
  if (strcmp(model, CLOCK_NO_MODEL) != 0) clock_setstr(&w->model, model);
  /* its host with its pid: a worker registering again after the
   * restart is known by both (psd_clock_register) */
  if (l[k]) clock_setstr(&w->host, l + k + 1);
  return 0;
}

/* clock_load_line restores one line L (NUL-terminated) of a save of
 * format VERSION. */
static int clock_load_line(psd_clock *c, const char *l, int version, uint64_t now_ms,
                           ps_errbuf *eb) {
  uint32_t a, e, d, h;
  uint64_t x, y, z;
  int64_t o;
  int f1, k = 0;
  char name[256];
  if (sscanf(l, "job %" SCNu32 " data %" SCNu64 " parts %" SCNu32 "%n", &a, &x, &e, &k) == 3 &&
      !l[k]) {
    if (e != c->o.nparts) /* (the first entry: nothing is loaded yet) */
      return ps_errf(eb, PS_ECONFIG, "%" PRIu32 " partitions saved, data.partitions is %" PRIu32,
                     e, c->o.nparts);
    c->job_epochs = a;
    c->data_size = x;
    return 0;
  }
  if (sscanf(l, "model %255s%n", name, &k) == 1 && !l[k]) {
    char *m = strdup(name);
    if (!m) return ps_errf(eb, PS_ENOMEM, "out of memory");
    free(c->job_model);
    c->job_model = m;
    return 0;
  }
  if (sscanf(l, "part %" SCNu32 " %" SCNu32 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNd64
             " %d%n", &a, &e, &x, &y, &z, &o, &f1, &k) == 7 && !l[k]) {
    if (a >= c->o.nparts || x > y || (z && y > z) || o < -1 || o >= (int64_t)c->cap ||
        (f1 != 0 && f1 != 1))
      return ps_errf(eb, PS_EFORMAT, "bad partition entry");
    c->part[a] = (clock_part){.epoch = e, .offset = x, .started = y, .size = z,
                              .owner = o < 0 ? PSD_CLOCK_NOBODY : (uint32_t)o, .active = f1,
                              .restored = 1};
    return 0;
  }
  if (sscanf(l, "epoch %" SCNu32 " %" SCNu64 " %" SCNu64 " %" SCNu32 " %" SCNu32 "%n", &e, &x,
             &y, &h, &d, &k) == 5 && !l[k]) {
    psd_epoch_info *ep = clock_epoch(c, e);
    if (!ep) return ps_errf(eb, PS_EFORMAT, "epoch %" PRIu32 " out of range", e);
    *ep = (psd_epoch_info){.epoch = e, .trained = x, .retrained = y, .handovers = h,
                           .done_parts = d};
    return 0;
  }
  int werr = clock_load_worker(c, l, version, now_ms, eb);
  if (werr <= 0) return werr;
  if (sscanf(l, "clock %255s %" SCNu32 " %" SCNu64 "%n", name, &a, &x, &k) == 3 && !l[k]) {
    clock_worker *w = clock_worker_find(c, a);
    if (!w || w->dead) return 0; /* expired since: not in the table */
    /* the worker's own clock is its "worker" line's, which came first
     * (clock_load_order): restoring an entry must not raise it */
    uint64_t own = w->clock;
    psd_clock_model *m = clock_model_get(c, name, eb);
    int err = m ? clock_raise(c, m, a, x, eb) : PS_ENOMEM;
    if (err == 0) clock_entry_find(m, a)->restored = 1;
    w->clock = own;
    return err;
  }
  return ps_errf(eb, PS_EFORMAT, "unknown entry");
}

/* clock_load_order checks that line L's kind does not come before the
 * kind of the line before it (*RANK) in psd_clock_save's order: a "clock"
 * line raises its worker's clock, which a later "worker" line would set
 * back, so a table whose lines are out of order would not load into what
 * it saves (a round trip must be stable). */
static int clock_load_order(const char *l, int *rank, ps_errbuf *eb) {
  static const char *const kinds[] = {"job ", "model ", "part ", "epoch ", "worker ", "clock "};
  for (int i = 0; i < (int)(sizeof kinds / sizeof kinds[0]); i++) {
    if (strncmp(l, kinds[i], strlen(kinds[i]))) continue;
    if (i < *rank)
      return ps_errf(eb, PS_EFORMAT, "a '%.*s' entry after a '%.*s' entry (a saved table keeps "
                     "the order job, model, part, epoch, worker, clock)",
                     (int)strlen(kinds[i]) - 1, kinds[i], (int)strlen(kinds[*rank]) - 1,
                     kinds[*rank]);
    *rank = i;
    return 0;
  }
  return 0; /* clock_load_line refuses it */
}

/* psd_clock_load: see psd_clock.h. */
int psd_clock_load(psd_clock *c, const char *text, uint64_t now_ms, ps_errbuf *eb) {
  size_t lineno = 0;
  int ended = 0, rank = 0, version = 0;
  for (const char *p = text; *p && !ended;) {
    const char *nl = strchr(p, '\n');
    size_t n = nl ? (size_t)(nl - p) : strlen(p);
    char line[512];
    lineno++;
    if (n >= sizeof line) return ps_errf(eb, PS_EFORMAT, "line %zu: too long", lineno);
    memcpy(line, p, n);
    line[n] = 0;
    p += n + (nl != NULL);
    int err = 0;
    if (lineno == 1) {
      version = !strcmp(line, CLOCK_SAVE_MAGIC) ? 2 : !strcmp(line, CLOCK_SAVE_MAGIC_V1) ? 1 : 0;
      if (!version)
        return ps_errf(eb, PS_EFORMAT, "line 1: not a clock table ('" CLOCK_SAVE_MAGIC "', or '"
                       CLOCK_SAVE_MAGIC_V1 "' of an older psd)");
    } else if (!strcmp(line, "end")) {
      ended = 1;
    } else if ((err = clock_load_order(line, &rank, eb)) < 0 ||
               (err = clock_load_line(c, line, version, now_ms, eb)) < 0) {
      ps_errbuf why = *eb;
      return ps_errf(eb, err == PS_ENOMEM || err == PS_ECONFIG ? err : PS_EFORMAT,
                     "line %zu: %s", lineno, why.msg);
    }
  }
  if (!ended) return ps_errf(eb, PS_EFORMAT, "line %zu: truncated (no 'end')", lineno);
  /* an active partition whose owner is gone resumes with another */
  for (uint32_t i = 0; i < c->o.nparts; i++) {
    const clock_worker *w = c->part[i].owner == PSD_CLOCK_NOBODY
                                ? NULL : clock_worker_find(c, c->part[i].owner);
    if (c->part[i].owner != PSD_CLOCK_NOBODY && (!w || !clock_claimant(w)))
      clock_part_orphan(c, c->part[i].owner);
  }
  clock_part_balance(c);
  c->dirty = 0;
  return 0;
}
