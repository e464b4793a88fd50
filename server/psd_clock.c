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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct clock_entry {
  uint32_t worker;
  uint64_t clock;
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
  float steps_per_s, blocked_share;
} clock_worker;

struct psd_clock {
  psd_clock_opts o;
  clock_worker *w;
  size_t nw, wcap;
  psd_clock_model **m;
  size_t nm, mcap;
};

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
  free(c);
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
  if (worker < c->o.world_size) return 0;
  return ps_errf(eb, PS_EINVAL,
                 "worker %" PRIu32 " is outside this cluster's %" PRIu32
                 " workers (ids 0..%" PRIu32 ", workers.count)",
                 worker, c->o.world_size, c->o.world_size - 1);
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
  w->last_ms = now_ms;
  if (out) *out = w;
  return 0;
}

/* clock_entry_find returns WORKER's clock entry in M or NULL. */
static clock_entry *clock_entry_find(psd_clock_model *m, uint32_t worker) {
  for (size_t i = 0; i < m->nent; i++)
    if (m->ent[i].worker == worker) return &m->ent[i];
  return NULL;
}

/* clock_raise raises WORKER's clock in M to at least CLOCK (entering it). */
static int clock_raise(psd_clock *c, psd_clock_model *m, uint32_t worker, uint64_t clock,
                       ps_errbuf *eb) {
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
  } else if (clock > e->clock) {
    e->clock = clock;
  }
  clock_worker *w = clock_worker_find(c, worker);
  if (w && clock > w->clock) w->clock = clock;
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
    if (w) w->last_ms = now_ms;
    p->fn(p, 0, NULL);
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

/* psd_clock_check_live: see psd_clock.h. */
int psd_clock_check_live(const psd_clock *c, uint32_t worker, ps_errbuf *eb) {
  int err = psd_clock_check_worker(c, worker, eb);
  if (err < 0) return err;
  return clock_worker_expired(clock_worker_find(c, worker)) ? clock_expired_err(worker, eb) : 0;
}

/* psd_clock_rejoin: see psd_clock.h. */
int psd_clock_rejoin(psd_clock *c, uint32_t worker, uint64_t now_ms, ps_errbuf *eb) {
  clock_worker *w;
  int err = clock_worker_get(c, worker, now_ms, 1, &w, eb);
  if (err == 0) w->leased = 1;
  return err;
}

/* psd_clock_touch: see psd_clock.h. */
int psd_clock_touch(psd_clock *c, uint32_t worker, uint64_t now_ms, ps_errbuf *eb) {
  return clock_worker_get(c, worker, now_ms, 0, NULL, eb);
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
  if (clock > w->clock) w->clock = clock;
  clock_setstr(&w->host, host);
  clock_setstr(&w->device, device);
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

/* psd_clock_register: see psd_clock.h. */
int psd_clock_register(psd_clock *c, const char *model, const char *host, uint32_t pid,
                       const char *device, uint64_t now_ms, uint32_t *rank,
                       uint64_t *start_clock, ps_errbuf *eb) {
  psd_clock_tick(c, now_ms); /* expired leases free their ranks first */
  uint32_t r = UINT32_MAX;
  for (size_t i = 0; i < c->nw && host; i++)
    if (!c->w[i].dead && c->w[i].registered && c->w[i].pid == pid && c->w[i].host &&
        !strcmp(c->w[i].host, host) && c->w[i].id < c->o.world_size)
      r = c->w[i].id;
  for (int want = RANK_DIED; want < RANK_LIVE && r == UINT32_MAX; want++)
    for (uint32_t i = 0; r == UINT32_MAX && i < c->o.world_size; i++)
      if (clock_rank_of(c, i) == (clock_rank)want) r = i;
  if (r == UINT32_MAX)
    return ps_errf(eb, PS_EEXIST, "all %" PRIu32 " worker ranks are held by live workers",
                   c->o.world_size);
  clock_worker *w;
  int err = clock_worker_get(c, r, now_ms, 1, &w, eb);
  if (err < 0) return err;
  w->registered = w->leased = 1;
  w->pid = pid;
  w->steps_per_s = w->blocked_share = 0;
  clock_setstr(&w->host, host);
  clock_setstr(&w->device, device);
  clock_setstr(&w->model, model);
  psd_clock_model *m = model ? clock_model_find(c, model) : NULL;
  const clock_entry *s = m ? clock_slowest(m) : NULL;
  *start_clock = s ? s->clock : 0;
  w->clock = *start_clock;
  *rank = r;
  /* The new worker holds the others back from its registration on (not
   * from its first pull, which may come seconds later, after its data is
   * loaded): under bsp nobody steps ahead of a worker still starting. */
  return m && !clock_entry_find(m, r) ? clock_raise(c, m, r, *start_clock, eb) : 0;
}

/* psd_clock_pushed: see psd_clock.h. */
int psd_clock_pushed(psd_clock *c, const char *model, uint32_t worker, uint64_t clock,
                     uint64_t now_ms, ps_errbuf *eb) {
  int err = clock_worker_get(c, worker, now_ms, 0, NULL, eb);
  if (err < 0) return err;
  psd_clock_model *m = clock_model_get(c, model, eb);
  if (!m) return PS_ENOMEM;
  if ((err = clock_raise(c, m, worker, clock + 1, eb)) < 0) return err;
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
  err = clock_entry_find(m, worker) ? 0 : clock_raise(c, m, worker, clock, eb);
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
      p->fn(p, status, msg);
    }
  }
}

/* clock_expire makes W DEAD: out of every clock table, whose parked pulls
 * are then re-checked (invariant 3). */
static void clock_expire(psd_clock *c, clock_worker *w, uint64_t now_ms) {
  uint32_t id = w->id;
  w->dead = 1;
  for (size_t i = 0; i < c->nm; i++) {
    psd_clock_model *m = c->m[i];
    clock_entry *e = clock_entry_find(m, id);
    if (!e) continue;
    *e = m->ent[--m->nent];
  }
  for (size_t i = 0; i < c->nm; i++) clock_serve_ready(c, c->m[i], now_ms);
}

/* psd_clock_expired: see psd_clock.h. */
int psd_clock_expired(const psd_clock *c, uint32_t worker) {
  const clock_worker *w = clock_worker_find(c, worker);
  return w && w->dead;
}

/* psd_clock_leave: see psd_clock.h. */
void psd_clock_leave(psd_clock *c, uint32_t worker, uint64_t now_ms, int done) {
  clock_worker *w = clock_worker_find(c, worker);
  if (w && !w->dead) {
    w->left = done;
    clock_expire(c, w, now_ms);
  }
}

/* psd_clock_partitions: see psd_clock.h (invariant 7). */
size_t psd_clock_partitions(const psd_clock *c, uint32_t rank, uint32_t nparts, uint32_t *out) {
  uint32_t world = c->o.world_size, nlive = 0, mine = UINT32_MAX;
  if (rank >= world) return 0;
  uint8_t *held = malloc(world); /* clock_rank of each rank, one pass over c->w */
  if (!held) return 0;
  memset(held, RANK_NEVER, world);
  for (size_t i = 0; i < c->nw; i++)
    if (c->w[i].id < world) held[c->w[i].id] = (uint8_t)clock_worker_rank(&c->w[i]);
  for (uint32_t r = 0; r < world; r++) {
    if (held[r] != RANK_LIVE) continue;
    if (r == rank) mine = nlive;
    nlive++;
  }
  size_t n = 0;
  uint32_t orphans = 0;
  for (uint32_t p = 0; p < nparts; p++) {
    uint32_t home = p % world;
    if (held[home] != RANK_DIED) {
      if (home == rank) out[n++] = p;
    } else if (orphans++ % (nlive ? nlive : 1) == mine) {
      out[n++] = p;
    }
  }
  free(held);
  return n;
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
  if (w) w->last_ms = now_ms;
  p->fn(p, PS_ETIMEDOUT, msg);
}

/* psd_clock_tick: see psd_clock.h.  One expiry or timeout at a time, each
 * followed by a fresh scan (invariant 5). */
void psd_clock_tick(psd_clock *c, uint64_t now_ms) {
  for (int again = 1; again;) {
    again = 0;
    for (size_t i = 0; i < c->nw; i++) {
      clock_worker *w = &c->w[i];
      if (w->dead || w->nparked || now_ms - w->last_ms < c->o.lease_ms || now_ms < w->last_ms)
        continue;
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

/* psd_clock_next_ms: see psd_clock.h. */
uint64_t psd_clock_next_ms(const psd_clock *c, uint64_t now_ms) {
  (void)now_ms;
  uint64_t t = UINT64_MAX;
  for (size_t i = 0; i < c->nw; i++)
    if (!c->w[i].dead && !c->w[i].nparked && c->w[i].last_ms + c->o.lease_ms < t)
      t = c->w[i].last_ms + c->o.lease_ms;
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
  info->clock = w->clock;
  info->age_ms = now_ms > w->last_ms ? now_ms - w->last_ms : 0;
  info->steps_per_s = w->steps_per_s;
  info->blocked_share = w->blocked_share;
  if (w->nparked) info->age_ms = 0;
  if (clock_worker_rank(w) == RANK_FINISHED)
    info->state = PSD_WORKER_DONE;
  else if (w->dead || info->age_ms >= c->o.lease_ms)
    info->state = PSD_WORKER_DEAD;
  else if (info->age_ms > 2ull * c->o.heartbeat_ms)
    info->state = PSD_WORKER_LATE;
  else
    info->state = PSD_WORKER_ALIVE;
}
