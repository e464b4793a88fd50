/* psd_agg: the aggregator's forward backend (see psd_agg.h for the
 * invariants). */
#include "psd_agg.h"

#include <stdlib.h>
#include <string.h>

#include "ps_auth.h"
#include "ps_chan.h"
#include "ps_log.h"
#include "ps_model.h"
#include "ps_pb.h"
#include "ps_rpc.h"
#include "ps_time.h"
#include "psd_chan_client.h"
#include "psd_clock.h"
#include "psd_stall.h"

#define AGG_GETMODEL_TIMEOUT_MS 3000
#define AGG_CONNECT_TIMEOUT_MS 2000

/* A model as the aggregator knows it: its layout and the error-feedback
 * residual of the forwarded pushes (nparams floats, by model offset). */
typedef struct agg_model {
  struct agg_model *next;
  Ps__GetModelReply *reply; /* owns the spec the layout points into */
  ps_layout layout;
  float *residual;
  uint64_t stamp;           /* a->stamp when the spec was fetched */
  int retired;              /* replaced on the roots: kept for what is in flight */
  uint8_t *known;           /* [shard * nseen + worker]: in that root's clock table (inv. 6) */
  struct agg_lost *lost;    /* [shard * nseen + worker]: a sum holding its push failed (inv. 5) */
} agg_model;

/* A worker's push to a root that failed in a forwarded sum (invariant
 * 5a): its pulls above CLOCK on connections up to STAMP fail too. */
typedef struct agg_lost {
  uint64_t clock1;          /* the sum's clock + 1; 0: none */
  uint64_t stamp;           /* a->stamp when the sum failed */
  int code;                 /* its failure */
} agg_lost;

/* A sum being collected (invariant 1). */
typedef struct agg_group {
  struct agg_group *next;
  agg_model *m;
  uint32_t shard;           /* index into cfg->shards */
  uint32_t *ids;
  size_t nids;
  uint64_t clock, version;  /* version: the oldest */
  ps_codec_id codec;
  float *sum;               /* nelems floats */
  uint64_t nelems;
  uint32_t *workers;
  size_t nworkers;
  uint64_t first_ms;
  psd_op *waiters;
} agg_group;

/* The aggregator's copy of some chunks (invariant 3). */
typedef struct agg_copy {
  struct agg_copy *next;
  agg_model *m;
  uint32_t shard;
  uint32_t *ids;
  size_t nids;
  ps_codec_id codec;
  void *data;
  uint64_t nbytes, version, clock; /* the clock it was fetched for */
  int have, dirty;          /* dirty: a sum of these chunks was applied since */
  psd_op *waiters;
} agg_copy;

/* One request to a root, on a link (invariant 4). */
typedef struct agg_job {
  struct agg_job *next;
  int push;
  int leave;                /* a leaving beat for r.worker (invariant 6) */
  int stayed, gone;         /* leave: the root did not act on it; it had nothing to leave */
  uint32_t shard;           /* leave: the root's index */
  struct agg_link *link;    /* the link that carries it */
  agg_group *g;             /* push: the group it forwards (owned) */
  agg_copy *c;              /* pull: the copy it fills */
  ps_req r;                 /* model, ids borrowed from g / c */
  void *data;               /* push payload (owned) / pull destination (owned) */
  uint64_t nbytes;
  uint8_t beat[64];         /* leave: the packed HeartbeatRequest */
  psd_chan_client_req q;             /* its request on the link's client */
  int status;
  uint64_t version;
  ps_errbuf eb;
} agg_job;

/* One connection to a root shard: a channel client on the loop. */
typedef struct agg_link {
  psd_agg *a;
  const ps_shard_conf *root;
  psd_chan_client *cc;
  size_t busy;              /* jobs in flight on it */
  uint64_t gen;             /* psd_chan_client_gen of the last job done (invariant 6: reconnects) */
} agg_link;

typedef struct agg_spec_fetch agg_spec_fetch;

struct psd_agg {
  uv_loop_t *loop;
  const ps_config *cfg;
  const ps_agg_conf *me;
  uint32_t *shard_ids;
  agg_model *models;
  agg_group *groups;
  agg_copy *copies;
  agg_spec_fetch *fetches;  /* GetModel calls on the way (invariant 7) */
  uv_timer_t timer;         /* forwards groups at their deadline; its lateness: a stall */
  psd_stall stall;          /* the loop's stall watch on timer (psd_stall.h) */
  uv_async_t done_async;    /* runs the finished jobs on the next loop turn */
  agg_job *done;            /* finished jobs, newest first */
  size_t nlinks, per_shard; /* per_shard links per root: [0] pushes, the rest pulls */
  agg_link *links;
  int stopped;
  int draining;             /* psd_agg_drain ran: no spec fetch waits any more */
  psd_agg_stats st;
  uint64_t *seen_ms;        /* per worker id (< nseen): uv_now + 1 of its last request or
                               answer, 0 never */
  uint64_t *credit_ms;      /* per worker id: the loop's stalls since seen_ms, no silence */
  uint8_t *busy;            /* agg_expected's scratch: nseen flags */
  uint32_t nseen;           /* psd_clock_rank_cap(workers.count): the ids a worker may have */
  uint32_t *nconn;          /* per worker id: its open connections (invariant 6) */
  uint64_t *closed_ms;      /* per worker id: uv_now + 1 when its last connection closed */
  uint8_t *left;            /* per worker id: it left through the aggregator (1; 2: a root
                               acted on it) and did not connect again */
  uint64_t *retry_ms;       /* per worker id: uv_now at which to ask the roots in resend
                               again (0: none) */
  uint8_t *resend;          /* [worker * nshards + shard]: ask that root again */
  uint64_t stamp;           /* psd_agg_conn_stamp's last */
  uint32_t over_said;       /* the most live local workers over me->workers logged */
  ps_auth_client auth;      /* security.secret_file: the aggregator's channel key ... */
  ps_auth_key key;          /* ... as the links prove it (read again at SIGHUP) */
  int keyed;                /* 0: an unauthenticated channel */
};

static void agg_timer_arm(psd_agg *a);
static uint64_t agg_now(psd_agg *a);
static void agg_forget(psd_agg *a, uint32_t shard, uint32_t w);
static void agg_op_add(psd_op **list, psd_op *op);
static void agg_op_done_pop(psd_op **list, int code, const char *msg);

/* ---- models ------------------------------------------------------------------ */

static void agg_model_free(agg_model *m) {
  ps_layout_release(&m->layout);
  protobuf_c_message_free_unpacked(&m->reply->base, NULL);
  free(m->residual);
  free(m->known);
  free(m->lost);
  free(m);
}

/* agg_spec_rpc asks the roots (CFG's shards, in order) for MODEL's spec
 * (*RESP).  Touches nothing of the aggregator: it runs on a thread of
 * libuv's pool (agg_fetch_work), never on the loop (invariant 7). */
static int agg_spec_rpc(const ps_config *cfg, const char *model, ProtobufCMessage **resp,
                        ps_errbuf *eb) {
  Ps__GetModelRequest req = PS__GET_MODEL_REQUEST__INIT;
  req.name = (char *)model;
  int err = PS_EUNAVAIL;
  *resp = NULL;
  ps_errf(eb, PS_EUNAVAIL, "no root shard configured");
  for (size_t i = 0; i < cfg->nshards; i++) {
    ps_rpc *rpc = NULL;
    /* GetModel is a worker's right: the worker certificate under TLS */
    if ((err = ps_rpc_open_cfg(&rpc, cfg->shards[i].grpc_addr, cfg, PS_ROLE_WORKER, eb)) < 0)
      continue;
    err = ps_rpc_call(rpc, "/ps.Ps/GetModel", &req.base, &ps__get_model_reply__descriptor, resp,
                      AGG_GETMODEL_TIMEOUT_MS, eb);
    ps_rpc_close(rpc);
    if (err == 0 || err == PS_ENOENT) break;
  }
  if (err < 0) return ps_errf(eb, err, "model '%s': no root shard answered: %s", model, eb->msg);
  return 0;
}

/* agg_model_build builds a new entry (*OUT, not yet in a->models) from
 * RESP (a GetModelReply, owned by the entry from here on, freed on
 * failure), fetched for connections stamped up to STAMP. */
static int agg_model_build(psd_agg *a, const char *model, ProtobufCMessage *resp, uint64_t stamp,
                           agg_model **out, ps_errbuf *eb) {
  agg_model *m = calloc(1, sizeof *m);
  if (!m) {
    protobuf_c_message_free_unpacked(resp, NULL);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  m->reply = (Ps__GetModelReply *)resp;
  m->stamp = stamp;
  int err;
  if (!m->reply->model) err = ps_errf(eb, PS_EPROTO, "GetModel '%s' without a model", model);
  else
    err = ps_layout_build(&m->layout, m->reply->model, a->cfg->chunk_elems, a->shard_ids,
                          a->cfg->nshards, eb);
  if (err == 0 && (!(m->residual = calloc(m->layout.nparams ? m->layout.nparams : 1,
                                          sizeof(float))) ||
                   !(m->known = calloc((size_t)a->cfg->nshards * a->nseen, 1)) ||
                   !(m->lost = calloc((size_t)a->cfg->nshards * a->nseen, sizeof *m->lost))))
    err = ps_errf(eb, PS_ENOMEM, "out of memory for the residual of '%s'", model);
  if (err < 0) {
    if (m->reply->model) ps_layout_release(&m->layout);
    protobuf_c_message_free_unpacked(resp, NULL);
    free(m->residual);
    free(m->known);
    free(m->lost);
    free(m);
    return err;
  }
  *out = m;
  return 0;
}

/* agg_spec_same: whether specs X and Y pack to the same bytes. */
static int agg_spec_same(const Ps__ModelSpec *x, const Ps__ModelSpec *y) {
  size_t nx = protobuf_c_message_get_packed_size(&x->base);
  if (nx != protobuf_c_message_get_packed_size(&y->base)) return 0;
  uint8_t *bx = malloc(nx ? nx : 1), *by = malloc(nx ? nx : 1);
  int same = bx && by && protobuf_c_message_pack(&x->base, bx) == nx &&
             protobuf_c_message_pack(&y->base, by) == nx && !memcmp(bx, by, nx);
  free(bx);
  free(by);
  return same;
}

/* agg_model_retire takes M out of service (a new spec replaced it): its
 * copies' data go (a fetch in flight still answers its waiters); open
 * sums and jobs keep using M, freed with the aggregator. */
static void agg_model_retire(psd_agg *a, agg_model *m) {
  m->retired = 1;
  for (agg_copy *c = a->copies; c; c = c->next)
    if (c->m == m) {
      free(c->data);
      c->data = NULL;
      c->nbytes = 0;
      c->have = 0;
    }
}

/* ---- spec fetches off the loop (invariant 7) ----------------------------------- */

/* A GetModel of one model name, run on libuv's thread pool. */
struct agg_spec_fetch {
  uv_work_t work;
  psd_agg *a;               /* NULL: the aggregator was freed first (free F then) */
  agg_spec_fetch *next;     /* in a->fetches */
  const ps_config *cfg;
  char *name;
  uint64_t stamp;           /* a->stamp when it started */
  psd_op *waiters;          /* finished (status 0: ask again) when it is done */
  ProtobufCMessage *resp;   /* the pool thread's result */
  int err;
  ps_errbuf eb;
};

static void agg_fetch_work(uv_work_t *w) {
  agg_spec_fetch *f = w->data;
  f->err = agg_spec_rpc(f->cfg, f->name, &f->resp, &f->eb);
}

/* agg_model_find returns the entry in service for MODEL, or NULL. */
static agg_model *agg_model_find(psd_agg *a, const char *model) {
  for (agg_model *m = a->models; m; m = m->next)
    if (!m->retired && !strcmp(m->reply->model->name, model)) return m;
  return NULL;
}

/* agg_fetch_find returns the fetch of MODEL on the way, or NULL. */
static agg_spec_fetch *agg_fetch_find(psd_agg *a, const char *model) {
  for (agg_spec_fetch *f = a->fetches; f; f = f->next)
    if (!strcmp(f->name, model)) return f;
  return NULL;
}

/* agg_fetch_landed takes fetch F's spec into service (on the loop): a
 * first one becomes MODEL's entry, a fetch again replaces the entry when
 * the spec changed on the roots (retiring it) and is dropped when it did
 * not or the roots did not answer (said: the layout it has stays).
 * Returns 0, or F's failure for a model fetched the first time. */
static int agg_fetch_landed(psd_agg *a, agg_spec_fetch *f, ps_errbuf *eb) {
  agg_model *m = agg_model_find(a, f->name), *n = NULL;
  int err = f->err;
  if (err < 0) {
    if (!m) return ps_errf(eb, err, "%s", f->eb.msg);
    ps_warn("aggregator %s: model '%s' not fetched again (%s); keeping its layout", a->me->name,
            f->name, f->eb.msg);
    return 0;
  }
  ProtobufCMessage *resp = f->resp;
  f->resp = NULL;
  if ((err = agg_model_build(a, f->name, resp, f->stamp, &n, eb)) < 0) {
    if (!m) return err;
    ps_warn("aggregator %s: model '%s' fetched again unusable (%s); keeping its layout",
            a->me->name, f->name, eb->msg);
    return 0;
  }
  if (m && agg_spec_same(m->reply->model, n->reply->model)) {
    agg_model_free(n);
    return 0;
  }
  if (m) agg_model_retire(a, m);
  n->next = a->models;
  a->models = n;
  if (m)
    ps_info("aggregator %s: model '%s' changed on the roots (replaced): %llu parameters, %zu "
            "chunks now", a->me->name, f->name, (unsigned long long)n->layout.nparams,
            n->layout.nchunks);
  else
    ps_info("aggregator %s: model '%s' (%llu parameters, %zu chunks)", a->me->name, f->name,
            (unsigned long long)n->layout.nparams, n->layout.nchunks);
  return 0;
}

/* agg_fetch_done (loop) takes fetch F's result into service and finishes
 * its waiters: 0 (they ask again), or the failure of a first fetch. */
static void agg_fetch_done(uv_work_t *w, int status) {
  agg_spec_fetch *f = w->data;
  psd_agg *a = f->a;
  (void)status; /* never cancelled: uv_cancel is not used */
  if (a) {
    for (agg_spec_fetch **p = &a->fetches; *p; p = &(*p)->next)
      if (*p == f) {
        *p = f->next;
        break;
      }
    ps_errbuf eb = {""};
    int err = a->stopped ? ps_errf(&eb, PS_ESHUTDOWN, "aggregator %s is shutting down",
                                   a->me->name)
                         : agg_fetch_landed(a, f, &eb);
    while (f->waiters) agg_op_done_pop(&f->waiters, err, err < 0 ? eb.msg : NULL);
  }
  if (f->resp) protobuf_c_message_free_unpacked(f->resp, NULL);
  free(f->name);
  free(f);
}

/* agg_fetch_start starts a fetch of MODEL's spec off the loop, for the
 * connections opened so far; *OUT (may be NULL): it. */
static int agg_fetch_start(psd_agg *a, const char *model, agg_spec_fetch **out, ps_errbuf *eb) {
  agg_spec_fetch *f = calloc(1, sizeof *f);
  if (!f || !(f->name = strdup(model))) {
    free(f);
    return ps_errf(eb, PS_ENOMEM, "aggregator out of memory");
  }
  f->a = a;
  f->cfg = a->cfg;
  f->stamp = a->stamp;
  f->work.data = f;
  int rc = uv_queue_work(a->loop, &f->work, agg_fetch_work, agg_fetch_done);
  if (rc < 0) {
    free(f->name);
    free(f);
    return ps_errf(eb, PS_ENOMEM, "aggregator: cannot fetch model '%s': %s", model,
                   uv_strerror(rc));
  }
  f->next = a->fetches;
  a->fetches = f;
  if (out) *out = f;
  return 0;
}

/* agg_model_get returns MODEL's entry without waiting (invariant 7): it
 * starts a fetch the first time (PS_EUNAVAIL until it landed) and again
 * for a connection stamped STAMP after the last fetch (the entry it has
 * serves meanwhile). */
static int agg_model_get(psd_agg *a, const char *model, uint64_t stamp, agg_model **out,
                         ps_errbuf *eb) {
  agg_model *m = agg_model_find(a, model);
  if (m && stamp > m->stamp && !agg_fetch_find(a, model)) {
    m->stamp = a->stamp; /* one try for the connections opened so far */
    agg_fetch_start(a, model, NULL, eb);
  }
  if (m) return *out = m, 0;
  if (!agg_fetch_find(a, model)) {
    int err = agg_fetch_start(a, model, NULL, eb);
    if (err < 0) return err;
  }
  return ps_errf(eb, PS_EUNAVAIL, "model '%s': its layout is being fetched from the root shards; "
                 "try again", model);
}

/* psd_agg_spec_wait: see psd_agg.h. */
int psd_agg_spec_wait(psd_agg *a, const char *model, uint64_t stamp, psd_op *op, ps_errbuf *eb) {
  if (a->stopped || a->draining) return 0; /* the request's own call says so */
  agg_spec_fetch *f = agg_fetch_find(a, model);
  if (!f) {
    agg_model *m = agg_model_find(a, model);
    if (m && stamp <= m->stamp) return 0;
    if (m) m->stamp = a->stamp; /* one try for the connections opened so far */
    int err = agg_fetch_start(a, model, &f, eb);
    if (err < 0) return err;
  }
  agg_op_add(&f->waiters, op);
  return 1;
}

/* agg_route checks R's ids (known, all on one root shard) and returns that
 * shard's index in *SHARD. */
static int agg_route(const agg_model *m, const ps_req *r, uint32_t *shard, ps_errbuf *eb) {
  if (!r->nids) return ps_errf(eb, PS_EINVAL, "request for model '%s' names no chunk", r->model);
  for (size_t i = 0; i < r->nids; i++) {
    if (r->ids[i] >= m->layout.nchunks)
      return ps_errf(eb, PS_EINVAL, "model '%s' has no chunk %u", r->model, r->ids[i]);
    uint32_t s = m->layout.chunks[r->ids[i]].shard;
    if (i == 0) *shard = s;
    else if (s != *shard)
      return ps_errf(eb, PS_EINVAL, "request for model '%s' names chunks of two shards "
                     "(%u and %u): an aggregator forwards one shard's chunks per request",
                     r->model, *shard, s);
  }
  return 0;
}

/* agg_resolve finds R's model (*M) and root shard (*SHARD); PS_ESHUTDOWN
 * once the aggregator stops. */
static int agg_resolve(psd_agg *a, const ps_req *r, agg_model **m, uint32_t *shard,
                       ps_errbuf *eb) {
  if (a->stopped) return ps_errf(eb, PS_ESHUTDOWN, "aggregator %s is shutting down", a->me->name);
  int err = agg_model_get(a, r->model, r->conn_stamp, m, eb);
  return err < 0 ? err : agg_route(*m, r, shard, eb);
}

/* psd_agg_payload: see psd_agg.h. */
int psd_agg_payload(psd_agg *a, const ps_req *r, int push, uint64_t *nelems, uint64_t *nbytes,
                    ps_errbuf *eb) {
  agg_model *m;
  uint32_t shard;
  int err = agg_resolve(a, r, &m, &shard, eb);
  if (err < 0) return err;
  if (!ps_codec_valid(r->codec) || (!push && r->codec != PS_CODEC_FP32 &&
                                    r->codec != PS_CODEC_FP16 && r->codec != PS_CODEC_INT8))
    return ps_errf(eb, PS_EINVAL, "%s of model '%s': unknown codec %u", push ? "push" : "pull",
                   r->model, (unsigned)r->codec);
  *nelems = 0;
  for (size_t i = 0; i < r->nids; i++) *nelems += m->layout.chunks[r->ids[i]].len;
  *nbytes = ps_layout_payload_bytes(&m->layout, r->ids, r->nids, r->codec, push);
  return 0;
}

/* ---- links (invariant 4) ------------------------------------------------------ */

/* agg_job_fin (a link's request finished, on the loop) keeps job J's
 * result for agg_on_done, which acts on it on the next loop turn: a
 * request may finish inside the call that made it (a connection that
 * could not start), and the caller is not done with it yet. */
static void agg_job_fin(psd_done *d, int status, const char *msg) {
  agg_job *j = d->arg;
  psd_agg *a = j->link->a;
  /* a root that refuses this aggregator's channel key (PS_EPERM) leaves
   * its workers a way round: unavailable here, they go to the roots
   * with their own keys (psw_retryable) */
  if (status == PS_EPERM) status = PS_EUNAVAIL;
  j->status = status;
  if (status < 0) {
    ps_errf(&j->eb, status, "%s", msg ? msg : ps_strerror(status));
  } else if (j->leave) {
    Ps__HeartbeatReply *r = NULL;
    j->status = ps_pb_unpack(&ps__heartbeat_reply__descriptor, d->data, d->nbytes,
                             (ProtobufCMessage **)&r, &j->eb);
    if (r) {
      j->stayed = r->stayed;
      j->gone = r->expired;
      protobuf_c_message_free_unpacked(&r->base, NULL);
    }
  } else {
    j->version = d->version;
  }
  j->next = a->done;
  a->done = j;
  if (!a->stopped) uv_async_send(&a->done_async);
}

/* agg_submit sends J on a link of root SHARD: the push link (pushes and
 * leaves), or the pull link with the fewest jobs. */
static void agg_submit(psd_agg *a, uint32_t shard, agg_job *j) {
  agg_link *l = &a->links[shard * a->per_shard];
  if (!j->push && !j->leave) {
    l++;
    for (size_t k = 2; k < a->per_shard; k++)
      if (a->links[shard * a->per_shard + k].busy < l->busy) l = &a->links[shard * a->per_shard + k];
  }
  l->busy++;
  j->link = l;
  j->next = NULL;
  j->q.done = (psd_done){.fn = agg_job_fin, .arg = j};
  j->r.nbytes = j->nbytes;
  int rc;
  ps_errbuf eb;
  if (j->leave) {
    /* invariant 6: the worker leaves the root unless it spoke to it within
     * 2 x heartbeat_ms */
    Ps__HeartbeatRequest req = PS__HEARTBEAT_REQUEST__INIT;
    req.worker = j->r.worker;
    req.leaving = 1;
    req.leave_if_silent_ms = 2 * a->cfg->workers.heartbeat_ms;
    size_t n = ps__heartbeat_request__get_packed_size(&req);
    if (n > sizeof j->beat) {
      rc = ps_errf(&eb, PS_EINVAL, "leaving beat of %zu bytes", n);
    } else {
      ps__heartbeat_request__pack(&req, j->beat);
      rc = psd_chan_client_beat(l->cc, j->beat, n, &j->q, &eb);
    }
  } else if (j->push) {
    j->r.grads = j->data;
    rc = psd_chan_client_push(l->cc, &j->r, &j->q, &eb);
  } else {
    j->r.out = j->data;
    rc = psd_chan_client_pull(l->cc, &j->r, &j->q, &eb);
  }
  if (rc < 0) agg_job_fin(&j->q.done, rc, eb.msg);
}

/* ---- waiters ------------------------------------------------------------------ */

static void agg_op_add(psd_op **list, psd_op *op) {
  op->next = *list;
  op->list = list;
  *list = op;
}

/* psd_agg_conn_worker: see psd_agg.h.  A worker that connects again after
 * it left is another incarnation (or was alive after all): known nowhere. */
void psd_agg_conn_worker(psd_agg *a, uint32_t w, int delta) {
  if (w >= a->nseen) return;
  if (delta > 0) {
    a->nconn[w]++;
    a->closed_ms[w] = 0;
    if (a->left[w]) {
      a->left[w] = 0;
      a->retry_ms[w] = 0;
      memset(a->resend + (size_t)w * a->cfg->nshards, 0, a->cfg->nshards);
      agg_forget(a, UINT32_MAX, w);
    }
    return;
  }
  if (!a->nconn[w] || --a->nconn[w]) return;
  a->closed_ms[w] = agg_now(a) + 1;
  agg_timer_arm(a);
}

/* psd_agg_cancel: see psd_agg.h. */
void psd_agg_cancel(psd_agg *a, psd_op *op) {
  (void)a;
  if (!op->list) return;
  for (psd_op **p = op->list; *p; p = &(*p)->next)
    if (*p == op) {
      *p = op->next;
      break;
    }
  op->list = NULL;
}

/* agg_op_done unlinks OP (from the list being walked by the caller) and
 * runs its fn. */
static void agg_op_done(psd_op *op, int status, const char *msg) {
  op->list = NULL;
  op->next = NULL;
  psd_done_finish(&op->done, status, msg);
}

/* ---- pushes (invariants 1, 2) --------------------------------------------------- */

static void agg_group_free(agg_group *g) {
  free(g->ids);
  free(g->sum);
  free(g->workers);
  free(g);
}

/* agg_forward takes G out of the open groups and queues its sum for the
 * root: encoded in the group's codec with the model's residual. */
static void agg_forward(psd_agg *a, agg_group *g) {
  for (agg_group **p = &a->groups; *p; p = &(*p)->next)
    if (*p == g) {
      *p = g->next;
      break;
    }
  const ps_layout *l = &g->m->layout;
  agg_job *j = calloc(1, sizeof *j);
  uint64_t nbytes = ps_layout_payload_bytes(l, g->ids, g->nids, g->codec, 1);
  void *out = g->codec == PS_CODEC_FP32 ? NULL : malloc(nbytes ? nbytes : 1);
  if (!j || (g->codec != PS_CODEC_FP32 && !out)) {
    free(j);
    free(out);
    for (psd_op *op = g->waiters, *next; op; op = next) {
      next = op->next;
      agg_op_done(op, PS_ENOMEM, "aggregator out of memory");
    }
    agg_group_free(g);
    return;
  }
  if (g->codec == PS_CODEC_FP32) { /* the sum is the payload */
    out = g->sum;
    g->sum = NULL;
  } else {
    uint8_t *o = out;
    const float *s = g->sum;
    /* the root takes a sum of N within N x clip_norm (each worker clipped
     * its own); the sum plus the aggregator's residual may exceed it, so
     * the encoding is scaled down to it as a worker's is */
    float clip = g->m->reply->model->clip_norm * (float)(g->nworkers ? g->nworkers : 1);
    for (size_t i = 0; i < g->nids; i++) {
      const ps_chunk *c = &l->chunks[g->ids[i]];
      ps_codec_id cc = ps_layout_chunk_codec(l, g->ids[i], g->codec, 1);
      float *res = g->m->residual + l->tensors[c->tensor].model_offset + c->offset;
      ps_codec_encode_ef(cc, s, c->len, l->topk, clip, res, o);
      o += ps_codec_size(cc, c->len, l->topk);
      s += c->len;
    }
  }
  j->push = 1;
  j->g = g;
  j->data = out;
  j->nbytes = nbytes;
  j->r = (ps_req){.model = g->m->reply->model->name, .ids = g->ids, .nids = g->nids,
                  .worker = g->workers[0], .clock = g->clock, .version = g->version,
                  .codec = g->codec, .summed = g->workers, .nsummed = g->nworkers};
  a->st.forwarded++;
  agg_submit(a, g->shard, j);
}

static void agg_on_timer(uv_timer_t *t);

/* ---- clocks and leases (invariant 6) ------------------------------------------- */

/* agg_known returns whether W is in root SHARD's clock table of M. */
static int agg_known(const psd_agg *a, const agg_model *m, uint32_t shard, uint32_t w) {
  return w < a->nseen && m->known[(size_t)shard * a->nseen + w];
}

/* agg_know notes that root SHARD's clock table of M holds W. */
static void agg_know(psd_agg *a, agg_model *m, uint32_t shard, uint32_t w) {
  if (w < a->nseen) m->known[(size_t)shard * a->nseen + w] = 1;
}

/* agg_forget forgets what worker W (UINT32_MAX: every worker) is known
 * for on root SHARD (UINT32_MAX: every root), in every model. */
static void agg_forget(psd_agg *a, uint32_t shard, uint32_t w) {
  for (agg_model *m = a->models; m; m = m->next)
    for (uint32_t s = 0; s < a->cfg->nshards; s++)
      if (shard == UINT32_MAX || s == shard) {
        if (w == UINT32_MAX) memset(m->known + (size_t)s * a->nseen, 0, a->nseen);
        else if (w < a->nseen) m->known[(size_t)s * a->nseen + w] = 0;
      }
}

/* agg_stalled credits a stall of the loop of STALL_MS that ended at NOW
 * to every worker's lease here (psd_stall.h): its requests of that time
 * waited unread in the sockets. */
static void agg_stalled(psd_agg *a, uint64_t stall_ms, uint64_t now) {
  for (uint32_t w = 0; w < a->nseen; w++)
    if (a->seen_ms[w]) a->credit_ms[w] += psd_stall_lost(a->seen_ms[w] - 1, stall_ms, now);
}

/* agg_now returns the loop's updated millisecond clock, after crediting
 * a stall that ended just now (psd_stall_check): call it before any use
 * of the time by the leases. */
static uint64_t agg_now(psd_agg *a) {
  uv_update_time(a->loop);
  uint64_t now = uv_now(a->loop), stall = psd_stall_check(&a->stall, now);
  if (stall) agg_stalled(a, stall, now);
  return now;
}

/* agg_silent returns how long worker W (seen before) has been silent
 * here at NOW: since its last request or answer, less the loop's stalls
 * since (agg_stalled). */
static uint64_t agg_silent(const psd_agg *a, uint32_t w, uint64_t now) {
  return psd_stall_silence(a->seen_ms[w] - 1, a->credit_ms[w], now);
}

/* agg_touch notes that worker W is active now; one back after a lease of
 * silence may be another worker of its rank: known nowhere. */
static void agg_touch(psd_agg *a, uint32_t w) {
  if (w >= a->nseen) return;
  uint64_t now = agg_now(a);
  if (a->seen_ms[w] && agg_silent(a, w, now) > a->cfg->workers.lease_ms)
    agg_forget(a, UINT32_MAX, w);
  a->seen_ms[w] = now + 1;
  a->credit_ms[w] = 0;
}

/* agg_mark_busy sets a->busy[w] for every worker with a push in an open
 * sum or a pull waiting here. */
static void agg_mark_busy(psd_agg *a) {
  memset(a->busy, 0, a->nseen);
  for (const agg_group *g = a->groups; g; g = g->next)
    for (size_t k = 0; k < g->nworkers; k++)
      if (g->workers[k] < a->nseen) a->busy[g->workers[k]] = 1;
  for (const agg_copy *c = a->copies; c; c = c->next)
    for (const psd_op *op = c->waiters; op; op = op->next)
      if (op->worker < a->nseen) a->busy[op->worker] = 1;
}

/* agg_leave_at returns the uv_now at which worker W leaves through the
 * aggregator (its connections closed, nothing of it waiting here:
 * a->busy is current), UINT64_MAX when it does not. */
static uint64_t agg_leave_at(const psd_agg *a, uint32_t w) {
  if (a->nconn[w] || !a->closed_ms[w] || !a->seen_ms[w] || a->busy[w]) return UINT64_MAX;
  if (a->left[w]) return a->retry_ms[w] ? a->retry_ms[w] : UINT64_MAX;
  uint64_t last = a->closed_ms[w] > a->seen_ms[w] ? a->closed_ms[w] - 1 : a->seen_ms[w] - 1;
  return last + 3 * (uint64_t)a->cfg->workers.heartbeat_ms;
}

/* agg_leaves sends the leaving beats of the workers due at NOW to every
 * root, or again to the roots that kept them (a->busy is current). */
static void agg_leaves(psd_agg *a, uint64_t now) {
  uint32_t ns = a->cfg->nshards;
  for (uint32_t w = 0; w < a->nseen; w++) {
    if (agg_leave_at(a, w) > now) continue;
    a->retry_ms[w] = 0;
    if (!a->left[w]) {
      a->left[w] = 1;
      agg_forget(a, UINT32_MAX, w);
      memset(a->resend + (size_t)w * ns, 1, ns);
      ps_info("aggregator %s: worker %u closed its connections %llu ms ago and did not come "
              "back: it leaves the root shards", a->me->name, w,
              (unsigned long long)(now - (a->closed_ms[w] - 1)));
    }
    for (uint32_t s = 0; s < ns; s++) {
      if (!a->resend[(size_t)w * ns + s]) continue;
      a->resend[(size_t)w * ns + s] = 0;
      agg_job *j = calloc(1, sizeof *j);
      if (!j) { /* its lease on that root runs out instead */
        ps_warn("aggregator %s: out of memory for worker %u's leave", a->me->name, w);
        continue;
      }
      j->leave = 1;
      j->shard = s;
      j->r.worker = w;
      agg_submit(a, s, j);
    }
  }
}

/* agg_leave_done notes a root's answer to a leaving beat.  A root that
 * kept the worker (it heard from it within 2 heartbeats: alive and
 * talking to it directly, or its last word was late) or failed is asked
 * again a heartbeat later, while the worker stays away and its last word
 * here is less than a lease old (then the root's lease decides). */
static void agg_leave_done(psd_agg *a, agg_job *j) {
  uint32_t w = j->r.worker, id = a->cfg->shards[j->shard].id;
  uint64_t now = agg_now(a), hb = a->cfg->workers.heartbeat_ms;
  if (j->status < 0 || (j->stayed && !j->gone)) {
    if (a->nconn[w] || !a->left[w] || agg_silent(a, w, now) >= a->cfg->workers.lease_ms)
      return;
    a->resend[(size_t)w * a->cfg->nshards + j->shard] = 1;
    if (!a->retry_ms[w]) a->retry_ms[w] = now + hb;
    if (j->stayed && !j->gone)
      ps_info("aggregator %s: shard %u heard from worker %u within %llu ms: asking again in "
              "%llu ms", a->me->name, id, w, (unsigned long long)(2 * hb),
              (unsigned long long)hb);
    return;
  }
  if (j->stayed) return; /* gone there already (left done, or by its lease) */
  ps_info("aggregator %s: worker %u left shard %u", a->me->name, w, id);
  if (w < a->nseen && a->left[w] == 1) {
    a->left[w] = 2;
    a->st.leaves++;
  }
}

/* agg_expected returns how many pushes a sum waits for at NOW (invariant
 * 1a): the live workers (a request waiting here, or a request or answer
 * within workers.lease_ms), or ps_agg_conf.workers less the gone ones
 * (seen before, then silent for lease_ms: dead, or left; the roots'
 * leases drop them too; or left through the aggregator: invariant 6),
 * whichever is more; at most .workers, at least
 * 1.  *NEXT_MS (may be NULL): the uv_now at which a live worker with
 * nothing waiting would count as gone, UINT64_MAX when none. */
static uint32_t agg_expected(psd_agg *a, uint64_t now, uint64_t *next_ms) {
  uint64_t lease = a->cfg->workers.lease_ms, next = UINT64_MAX;
  uint32_t live = 0, gone = 0, using = 0;
  agg_mark_busy(a);
  for (uint32_t w = 0; w < a->nseen; w++) {
    if (!a->seen_ms[w]) continue;
    uint64_t last = a->seen_ms[w] - 1;
    if (a->busy[w]) {
      live++;
      using++;
    } else if (agg_silent(a, w, now) > lease || a->left[w]) {
      gone++;
    } else {
      live++;
      /* the warning counts only live workers still connected: a killed
       * one, whose connections closed, is live until it leaves, and
       * the worker started in its place is no worker too many */
      if (a->nconn[w]) using++;
      uint64_t at = last + a->credit_ms[w] + lease + 1;
      if (at < next) next = at;
    }
  }
  if (next_ms) *next_ms = next;
  if (using > a->me->workers && using > a->over_said) {
    a->over_said = using;
    ps_warn("aggregator %s: %u local workers use it, more than its 'workers' (%u): a sum goes "
            "to the roots before all of them pushed, and their parked pulls may hold all of its "
            "%u pull links to a root; set aggregators[].workers to the workers that use it",
            a->me->name, using, a->me->workers, a->me->workers);
  }
  uint32_t want = a->me->workers > gone ? a->me->workers - gone : 0;
  if (live > want) want = live;
  if (want > a->me->workers) want = a->me->workers;
  return want ? want : 1;
}

/* agg_watching: whether a local worker's lease runs here at NOW (seen
 * within a lease, and not left): its silence counts, so the loop's stalls
 * must be seen (psd_stall.h). */
static int agg_watching(const psd_agg *a, uint64_t now) {
  for (uint32_t w = 0; w < a->nseen; w++)
    if (a->seen_ms[w] && !a->left[w] && agg_silent(a, w, now) <= a->cfg->workers.lease_ms)
      return 1;
  return 0;
}

/* agg_timer_arm starts the timer for the earliest group deadline, the
 * moment a local worker would count as gone while sums are open, or the
 * next leave through the aggregator (invariant 6); a watch period away at
 * most while leases run here (psd_stall_arm). */
static void agg_timer_arm(psd_agg *a) {
  if (a->stopped) return;
  uint64_t now = uv_now(a->loop), next = UINT64_MAX, gone_at;
  for (agg_group *g = a->groups; g; g = g->next)
    if (g->first_ms + a->me->max_delay_ms < next) next = g->first_ms + a->me->max_delay_ms;
  if (next != UINT64_MAX) {
    agg_expected(a, now, &gone_at);
    if (gone_at < next) next = gone_at;
  } else {
    agg_mark_busy(a);
  }
  for (uint32_t w = 0; w < a->nseen; w++) {
    uint64_t at = agg_leave_at(a, w);
    if (at < next) next = at;
  }
  psd_stall_arm(&a->stall, now, next, agg_watching(a, now));
}

/* agg_on_timer lets the workers due leave (invariant 6) and forwards the
 * groups whose delay is over, or which hold every push still expected
 * (invariant 1). */
static void agg_on_timer(uv_timer_t *t) {
  psd_agg *a = t->data;
  uint64_t now = agg_now(a); /* credits a stall first */
  psd_stall_fired(&a->stall);
  agg_mark_busy(a);
  agg_leaves(a, now);
  uint32_t want = agg_expected(a, now, NULL);
  for (agg_group *g = a->groups, *next; g; g = next) {
    next = g->next;
    if (g->first_ms + a->me->max_delay_ms <= now || g->nworkers >= want) agg_forward(a, g);
  }
  agg_timer_arm(a);
}

/* agg_same_ids: whether IDS[0..N) are exactly R's. */
static int agg_same_ids(const uint32_t *ids, size_t n, const ps_req *r) {
  return n == r->nids && !memcmp(ids, r->ids, n * sizeof *ids);
}

/* agg_group_open returns the open group of R (a new one when none is
 * open, or when R's worker is in it already: that one goes first). */
static agg_group *agg_group_open(psd_agg *a, agg_model *m, uint32_t shard, const ps_req *r,
                                 ps_errbuf *eb) {
  for (agg_group *g = a->groups; g; g = g->next) {
    /* under asp a sum need not wait for one clock (invariant 1) */
    if (g->m != m || g->shard != shard || g->codec != r->codec ||
        (g->clock != r->clock && m->layout.consistency != PS_ASP) ||
        !agg_same_ids(g->ids, g->nids, r))
      continue;
    size_t k = 0;
    while (k < g->nworkers && g->workers[k] != r->worker) k++;
    if (k == g->nworkers) return g;
    agg_forward(a, g); /* a worker's second push of one clock: a sum of its own */
    break;
  }
  agg_group *g = calloc(1, sizeof *g);
  uint64_t nelems = 0;
  for (size_t i = 0; i < r->nids; i++) nelems += m->layout.chunks[r->ids[i]].len;
  if (g) {
    g->ids = malloc(r->nids * sizeof *g->ids);
    g->sum = calloc(nelems ? nelems : 1, sizeof(float));
    g->workers = malloc(a->me->workers * sizeof *g->workers + sizeof *g->workers);
  }
  if (!g || !g->ids || !g->sum || !g->workers) {
    if (g) agg_group_free(g);
    ps_errf(eb, PS_ENOMEM, "aggregator out of memory for a push of %llu elements",
            (unsigned long long)nelems);
    return NULL;
  }
  memcpy(g->ids, r->ids, r->nids * sizeof *g->ids);
  g->nids = r->nids;
  g->m = m;
  g->shard = shard;
  g->clock = r->clock;
  g->codec = r->codec;
  g->version = r->version;
  g->nelems = nelems;
  g->first_ms = agg_now(a);
  g->next = a->groups;
  a->groups = g;
  return g;
}

/* agg_decode_add adds push R's decoded payload (checked chunk by chunk)
 * to G's sum. */
static int agg_decode_add(agg_group *g, const ps_req *r, ps_errbuf *eb) {
  const ps_layout *l = &g->m->layout;
  const uint8_t *in = r->grads;
  float *s = g->sum;
  for (size_t i = 0; i < r->nids; i++) {
    uint32_t len = l->chunks[r->ids[i]].len;
    ps_codec_id cc = ps_layout_chunk_codec(l, r->ids[i], r->codec, 1);
    uint64_t n = ps_codec_size(cc, len, l->topk);
    char what[96];
    snprintf(what, sizeof what, "chunk %u of model '%s'", r->ids[i], r->model);
    int err = ps_codec_check(cc, in, n, len, l->topk, what, eb);
    if (err < 0) return err;
    in += n;
  }
  in = r->grads;
  for (size_t i = 0; i < r->nids; i++) {
    uint32_t len = l->chunks[r->ids[i]].len;
    ps_codec_id cc = ps_layout_chunk_codec(l, r->ids[i], r->codec, 1);
    ps_codec_decode_acc(cc, in, len, l->topk, 1.0f, s);
    in += ps_codec_size(cc, len, l->topk);
    s += len;
  }
  return 0;
}

/* psd_agg_push: see psd_agg.h. */
int psd_agg_push(psd_agg *a, const ps_req *r, psd_op *op, ps_errbuf *eb) {
  agg_model *m;
  uint32_t shard;
  int err = agg_resolve(a, r, &m, &shard, eb);
  if (err < 0) return err;
  if (r->nbytes != ps_layout_payload_bytes(&m->layout, r->ids, r->nids, r->codec, 1))
    return ps_errf(eb, PS_EINVAL, "push of model '%s': wrong payload size", r->model);
  agg_group *g = agg_group_open(a, m, shard, r, eb);
  if (!g) return PS_ENOMEM;
  if ((err = agg_decode_add(g, r, eb)) < 0) {
    if (!g->nworkers) { /* nobody else in it: drop it */
      for (agg_group **p = &a->groups; *p; p = &(*p)->next)
        if (*p == g) {
          *p = g->next;
          break;
        }
      agg_group_free(g);
    }
    return err;
  }
  g->workers[g->nworkers++] = r->worker;
  if (r->worker < a->nseen) /* it pushes again: its pulls go on (invariant 5a) */
    m->lost[(size_t)shard * a->nseen + r->worker].clock1 = 0;
  if (r->version < g->version) g->version = r->version;
  if (r->clock < g->clock) g->clock = r->clock; /* asp: the oldest */
  agg_op_add(&g->waiters, op);
  a->st.pushes_in++;
  agg_touch(a, r->worker);
  if (g->nworkers >= agg_expected(a, uv_now(a->loop), NULL) || a->me->max_delay_ms == 0)
    agg_forward(a, g);
  agg_timer_arm(a);
  return 1;
}

/* agg_lost_why says in EB why worker W's pull of CLOCK fails: its push
 * of L's clock to root SHARD failed (invariant 5a).  PS_EUNAVAIL, whatever
 * the push's failure: psw fails over on it, where a PS_ETIMEDOUT pull
 * reads as one parked too long, asked again here. */
static int agg_lost_why(psd_agg *a, const agg_lost *l, uint32_t shard, uint32_t w,
                        uint64_t clock, ps_errbuf *eb) {
  return ps_errf(eb, PS_EUNAVAIL, "pull of clock %llu: the sum holding worker %u's push of "
                 "clock %llu failed on its way to shard %u (%s), and the root would hold the "
                 "pull for that push: go to the root shards directly", (unsigned long long)clock, w,
                 (unsigned long long)(l->clock1 - 1), a->cfg->shards[shard].id,
                 ps_strerror(l->code));
}

/* agg_lost_note notes that failed sum G (status CODE, a failure after
 * which the worker fails over: ps_err_path_failed, psw_retryable less a
 * root's DEGRADED refusal, which the worker's moved_on word answers)
 * held the pushes of its workers (invariant 5a) and fails their pulls
 * waiting here above its clock: parked on the root, or on another worker's fetch there,
 * they wait for a push that never comes (under bsp until
 * pull_timeout_ms), and the worker reads its push's failure, and fails
 * over, only once they are answered. */
static void agg_lost_note(psd_agg *a, agg_group *g, int code) {
  if (!ps_err_path_failed(code)) return;
  for (size_t k = 0; k < g->nworkers; k++) {
    uint32_t w = g->workers[k];
    if (w >= a->nseen) continue;
    agg_lost *l = &g->m->lost[(size_t)g->shard * a->nseen + w];
    *l = (agg_lost){.clock1 = g->clock + 1, .stamp = a->stamp, .code = code};
    for (agg_copy *c = a->copies; c; c = c->next) {
      if (c->m != g->m || c->shard != g->shard) continue;
      for (psd_op *op = c->waiters, *next; op; op = next) {
        next = op->next;
        if (op->worker != w || op->clock <= g->clock) continue;
        ps_errbuf eb;
        agg_lost_why(a, l, g->shard, w, op->clock, &eb);
        psd_agg_cancel(a, op);
        psd_done_finish(&op->done, PS_EUNAVAIL, eb.msg);
      }
    }
  }
}

/* agg_lost_pull: 0, or the failure of pull R of worker W to root SHARD
 * of M that came on a connection opened before a sum holding W's push
 * of a lower clock failed (invariant 5a). */
static int agg_lost_pull(psd_agg *a, agg_model *m, uint32_t shard, const ps_req *r,
                         ps_errbuf *eb) {
  if (r->worker >= a->nseen) return 0;
  const agg_lost *l = &m->lost[(size_t)shard * a->nseen + r->worker];
  if (!l->clock1 || r->conn_stamp > l->stamp || r->clock < l->clock1) return 0;
  return agg_lost_why(a, l, shard, r->worker, r->clock, eb);
}

/* agg_push_done answers the workers of a forwarded sum (invariant 2) and
 * marks the copies of its chunks dirty; a copy fetched for a clock above
 * the sum's lacks a push of that clock now, so it stands for the sum's
 * clock from then on (invariant 3).  A failed sum fails its workers'
 * pulls above its clock (agg_lost_note). */
static void agg_push_done(psd_agg *a, agg_job *j) {
  agg_group *g = j->g;
  for (agg_copy *c = a->copies; c; c = c->next)
    if (c->m == g->m && c->shard == g->shard) {
      c->dirty = 1;
      if (j->status == 0 && g->clock < c->clock) c->clock = g->clock;
    }
  for (size_t k = 0; k < g->nworkers; k++) {
    agg_touch(a, g->workers[k]);
    /* invariant 6: a sum refused for a dead worker in it says nothing of
     * where the root has its workers now (the dead one may rejoin) */
    if (j->status == 0) agg_know(a, g->m, g->shard, g->workers[k]);
    else if (j->status == PS_EEXPIRED) agg_forget(a, g->shard, g->workers[k]);
  }
  for (psd_op *op = g->waiters, *next; op; op = next) {
    next = op->next;
    op->done.version = j->version;
    agg_op_done(op, j->status, j->status < 0 ? j->eb.msg : NULL);
  }
  if (j->status < 0) agg_lost_note(a, g, j->status);
  agg_group_free(g);
}

/* ---- pulls (invariant 3) -------------------------------------------------------- */

/* agg_copy_get returns the copy of R's chunks (a new, empty one the first
 * time); NULL when out of memory. */
static agg_copy *agg_copy_get(psd_agg *a, agg_model *m, uint32_t shard, const ps_req *r) {
  for (agg_copy *c = a->copies; c; c = c->next)
    if (c->m == m && c->codec == r->codec && agg_same_ids(c->ids, c->nids, r)) return c;
  agg_copy *c = calloc(1, sizeof *c);
  if (!c || !(c->ids = malloc(r->nids * sizeof *c->ids))) {
    free(c);
    return NULL;
  }
  memcpy(c->ids, r->ids, r->nids * sizeof *c->ids);
  c->nids = r->nids;
  c->m = m;
  c->shard = shard;
  c->codec = r->codec;
  c->next = a->copies;
  a->copies = c;
  return c;
}

/* agg_copy_fresh: whether C may answer a pull at CLOCK (invariant 3). */
static int agg_copy_fresh(const agg_copy *c, uint64_t clock) {
  if (!c->have) return 0;
  if (c->clock >= clock) return 1;
  return c->m->layout.consistency == PS_ASP && !c->dirty;
}

/* agg_fetch queues a fetch of C's chunks at CLOCK on behalf of WORKER
 * (*OUT: the job). */
static int agg_fetch(psd_agg *a, agg_copy *c, uint32_t worker, uint64_t clock, agg_job **out,
                     ps_errbuf *eb) {
  agg_job *j = calloc(1, sizeof *j);
  uint64_t nbytes = ps_layout_payload_bytes(&c->m->layout, c->ids, c->nids, c->codec, 0);
  void *data = malloc(nbytes ? nbytes : 1);
  if (!j || !data) {
    free(j);
    free(data);
    return ps_errf(eb, PS_ENOMEM, "aggregator out of memory for a pull of %llu bytes",
                   (unsigned long long)nbytes);
  }
  j->c = c;
  j->data = data;
  j->nbytes = nbytes;
  j->r = (ps_req){.model = c->m->reply->model->name, .ids = c->ids, .nids = c->nids,
                  .worker = worker, .clock = clock, .codec = c->codec};
  a->st.fetches++;
  agg_submit(a, c->shard, j);
  *out = j;
  return 0;
}

/* agg_fetching returns the fetch on the way for a waiter of C at CLOCK,
 * or NULL. */
static void *agg_fetching(const agg_copy *c, uint64_t clock) {
  for (const psd_op *op = c->waiters; op; op = op->next)
    if (op->clock == clock) return op->wait;
  return NULL;
}

/* psd_agg_pull: see psd_agg.h. */
int psd_agg_pull(psd_agg *a, const ps_req *r, psd_op *op, ps_errbuf *eb) {
  agg_model *m;
  uint32_t shard;
  int err = agg_resolve(a, r, &m, &shard, eb);
  if (err < 0) return err;
  if ((err = agg_lost_pull(a, m, shard, r, eb)) < 0) return err;
  agg_copy *c = agg_copy_get(a, m, shard, r);
  if (!c) return ps_errf(eb, PS_ENOMEM, "aggregator out of memory");
  a->st.pulls_in++;
  agg_touch(a, r->worker);
  op->worker = r->worker;
  void *fetch = agg_fetching(c, r->clock);
  int fresh = agg_copy_fresh(c, r->clock);
  if (!agg_known(a, m, shard, r->worker)) {
    /* invariant 6: the root enters it at its clock with a fetch of its own */
    agg_job *j;
    if ((err = agg_fetch(a, c, r->worker, r->clock, &j, eb)) < 0) return err;
    if (fresh || fetch) a->st.enters++;
    fetch = j;
  } else if (fresh) {
    a->st.pull_hits++;
    op->done.data = c->data;
    op->done.nbytes = c->nbytes;
    op->done.version = c->version;
    return 0;
  } else if (fetch) { /* one fetch per clock: the waiters at that clock share it */
    a->st.pull_hits++;
  } else {
    agg_job *j;
    if ((err = agg_fetch(a, c, r->worker, r->clock, &j, eb)) < 0) return err;
    fetch = j;
  }
  op->clock = r->clock;
  op->wait = fetch;
  agg_op_add(&c->waiters, op);
  return 1;
}

/* agg_pull_done keeps a fetched copy (when newer) and answers the
 * waiters it is fresh enough for and whose worker the root knows
 * (invariant 6); a failed fetch fails the waiters that waited for it. */
static void agg_pull_done(psd_agg *a, agg_job *j) {
  agg_copy *c = j->c;
  agg_touch(a, j->r.worker); /* the root's release of it refreshed its lease there */
  if (j->status == 0) agg_know(a, c->m, c->shard, j->r.worker);
  if (j->status == 0 && (!c->have || j->r.clock >= c->clock)) {
    free(c->data);
    c->data = j->data;
    j->data = NULL;
    c->nbytes = j->nbytes;
    c->version = j->version;
    c->clock = j->r.clock;
    c->have = 1;
    c->dirty = 0;
  }
  for (psd_op *op = c->waiters, *next; op; op = next) {
    next = op->next;
    int serve = agg_copy_fresh(c, op->clock) && agg_known(a, c->m, c->shard, op->worker);
    if (!serve && op->wait == j && j->status == 0) {
      /* its worker was forgotten meanwhile (invariant 6): a fetch of its own */
      agg_job *nj;
      ps_errbuf eb;
      if (agg_fetch(a, c, op->worker, op->clock, &nj, &eb) == 0) {
        a->st.enters++;
        op->wait = nj;
        continue;
      }
      psd_agg_cancel(a, op);
      psd_done_finish(&op->done, PS_ENOMEM, eb.msg);
      continue;
    }
    if (!serve && !(j->status < 0 && op->wait == j)) continue;
    psd_agg_cancel(a, op);
    agg_touch(a, op->worker);
    op->done.data = c->data;
    op->done.nbytes = c->nbytes;
    op->done.version = c->version;
    psd_done_finish(&op->done, serve ? 0 : j->status, serve ? NULL : j->eb.msg);
  }
}

/* agg_on_done runs the finished jobs' completions on the loop. */
static void agg_on_done(uv_async_t *h) {
  psd_agg *a = h->data;
  agg_job *list = a->done;
  a->done = NULL;
  agg_now(a); /* agg_touch's clock, a stall credited */
  agg_job *rev = NULL; /* oldest first */
  while (list) {
    agg_job *n = list->next;
    list->next = rev;
    rev = list;
    list = n;
  }
  for (agg_job *j = rev, *next; j; j = next) {
    next = j->next;
    uint32_t shard = j->leave ? j->shard : j->push ? j->g->shard : j->c->shard;
    j->link->busy--;
    if (j->status < 0)
      ps_warn("aggregator %s: %s to shard %u failed: %s%s", a->me->name,
              j->leave ? "a worker's leave" : j->push ? "push" : "pull", a->cfg->shards[shard].id,
              j->eb.msg, j->leave ? " (asked again, or its lease there decides)" : "");
    if (j->q.gen > j->link->gen) { /* a new connection carried it */
      /* it may have restarted: invariant 6 */
      if (j->link->gen) agg_forget(a, shard, UINT32_MAX);
      j->link->gen = j->q.gen;
    }
    if (j->leave) agg_leave_done(a, j);
    else if (j->push) agg_push_done(a, j);
    else agg_pull_done(a, j);
    free(j->data);
    free(j);
  }
  agg_timer_arm(a); /* answers moved workers' last words (invariant 6) */
}

/* ---- life --------------------------------------------------------------------- */

/* agg_free_tables frees what psd_agg_new allocated (the key, the tables)
 * and A itself. */
static void agg_free_tables(psd_agg *a) {
  ps_auth_client_close(&a->auth);
  ps_auth_key_wipe(&a->key);
  free(a->shard_ids);
  free(a->links);
  free(a->seen_ms);
  free(a->credit_ms);
  free(a->busy);
  free(a->nconn);
  free(a->closed_ms);
  free(a->left);
  free(a->retry_ms);
  free(a->resend);
  free(a);
}

/* psd_agg_new: see psd_agg.h. */
int psd_agg_new(psd_agg **out, uv_loop_t *loop, const ps_config *cfg, const ps_agg_conf *me,
                ps_errbuf *eb) {
  psd_agg *a = calloc(1, sizeof *a);
  if (!a) return ps_errf(eb, PS_ENOMEM, "out of memory");
  a->loop = loop;
  a->cfg = cfg;
  a->me = me;
  a->per_shard = 1 + me->workers;
  a->nlinks = cfg->nshards * a->per_shard;
  a->shard_ids = calloc(cfg->nshards, sizeof *a->shard_ids);
  a->links = calloc(a->nlinks, sizeof *a->links);
  a->nseen = psd_clock_rank_cap(cfg->workers.count);
  a->seen_ms = calloc(a->nseen, sizeof *a->seen_ms);
  a->credit_ms = calloc(a->nseen + 1, sizeof *a->credit_ms);
  a->busy = calloc(a->nseen + 1, 1);
  a->nconn = calloc(a->nseen + 1, sizeof *a->nconn);
  a->closed_ms = calloc(a->nseen + 1, sizeof *a->closed_ms);
  a->left = calloc(a->nseen + 1, 1);
  a->retry_ms = calloc(a->nseen + 1, sizeof *a->retry_ms);
  a->resend = calloc((size_t)a->nseen * cfg->nshards + 1, 1);
  int rc = a->shard_ids && a->links && a->seen_ms && a->credit_ms && a->busy && a->nconn &&
                   a->closed_ms && a->left && a->retry_ms && a->resend
               ? 0 : ps_errf(eb, PS_ENOMEM, "out of memory");
  if (rc == 0)
    rc = ps_auth_client_open(&a->auth, cfg->security.secret_file, PS_ROLE_AGGREGATOR, eb);
  if (rc == 0) a->keyed = ps_auth_client_now(&a->auth, &a->key);
  if (rc < 0) {
    agg_free_tables(a);
    return rc;
  }
  ps_config_shard_ids(cfg, a->shard_ids);
  uv_timer_init(loop, &a->timer);
  a->timer.data = a;
  char who[96];
  snprintf(who, sizeof who, "aggregator %s", me->name);
  psd_stall_init(&a->stall, &a->timer, agg_on_timer, cfg->workers.heartbeat_ms,
                 cfg->workers.lease_ms, who, "requests");
  uv_async_init(loop, &a->done_async, agg_on_done);
  a->done_async.data = a;
  for (size_t i = 0; i < a->nlinks; i++) {
    agg_link *l = &a->links[i];
    l->a = a;
    l->root = &cfg->shards[i / a->per_shard];
    /* a pull may stay parked on the root up to pull_timeout_ms */
    if ((rc = psd_chan_client_new(&l->cc, loop, l->root->channel_addr, cfg->cluster,
                         a->keyed ? &a->key : NULL,
                         cfg->security.payload_mac ? PS_CHAN_AUTH_MAC : 0,
                         AGG_CONNECT_TIMEOUT_MS, ps_config_reply_timeout_ms(cfg),
                         eb)) < 0) {
      a->nlinks = i;
      psd_agg_stop(a);
      *out = a; /* the caller frees it once the loop ran */
      return rc;
    }
    /* a cut path to the root breaks the link as it breaks psw's (invariant 4) */
    psd_chan_client_set_dead_ms(l->cc, ps_config_dead_ms(cfg));
  }
  *out = a;
  return 0;
}

/* agg_op_done_pop answers the first op of *LIST with CODE. */
static void agg_op_done_pop(psd_op **list, int code, const char *msg) {
  psd_op *op = *list;
  *list = op->next;
  agg_op_done(op, code, msg);
}

/* agg_fail_all answers every waiter of every group and copy with CODE. */
static void agg_fail_all(psd_agg *a, int code, const char *msg) {
  for (agg_group *g = a->groups; g; g = g->next)
    while (g->waiters) agg_op_done_pop(&g->waiters, code, msg);
  for (agg_copy *c = a->copies; c; c = c->next)
    while (c->waiters) agg_op_done_pop(&c->waiters, code, msg);
  for (agg_spec_fetch *f = a->fetches; f; f = f->next)
    while (f->waiters) agg_op_done_pop(&f->waiters, code, msg);
}

/* psd_agg_drain: see psd_agg.h. */
void psd_agg_drain(psd_agg *a) {
  if (!a || a->stopped) return;
  a->draining = 1;
  while (a->groups) agg_forward(a, a->groups);
  const char *why = "aggregator is shutting down";
  for (agg_copy *c = a->copies; c; c = c->next)
    while (c->waiters) agg_op_done_pop(&c->waiters, PS_ESHUTDOWN, why);
  for (agg_spec_fetch *f = a->fetches; f; f = f->next)
    while (f->waiters) agg_op_done_pop(&f->waiters, PS_ESHUTDOWN, why);
  agg_timer_arm(a);
}

/* psd_agg_stop: see psd_agg.h.  The links' clients close: the jobs in
 * flight finish (PS_ESHUTDOWN) into a->done, freed by psd_agg_free. */
void psd_agg_stop(psd_agg *a) {
  if (!a || a->stopped) return;
  a->stopped = 1;
  agg_fail_all(a, PS_ESHUTDOWN, "aggregator is shutting down");
  for (size_t i = 0; i < a->nlinks; i++) psd_chan_client_close(a->links[i].cc);
  if (!uv_is_closing((uv_handle_t *)&a->timer)) {
    psd_stall_stop(&a->stall);
    uv_close((uv_handle_t *)&a->timer, NULL);
  }
  if (!uv_is_closing((uv_handle_t *)&a->done_async))
    uv_close((uv_handle_t *)&a->done_async, NULL);
}

/* psd_agg_free frees A (stopped, and the loop ran since). */
void psd_agg_free(psd_agg *a) {
  if (!a) return;
  while (a->groups) {
    agg_group *g = a->groups;
    a->groups = g->next;
    agg_group_free(g);
  }
  while (a->copies) {
    agg_copy *c = a->copies;
    a->copies = c->next;
    free(c->ids);
    free(c->data);
    free(c);
  }
  for (agg_spec_fetch *f = a->fetches; f; f = f->next) /* still running: it frees itself */
    f->a = NULL;
  while (a->models) {
    agg_model *m = a->models;
    a->models = m->next;
    agg_model_free(m);
  }
  for (agg_job *j = a->done, *next; j; j = next) { /* finished after the loop's last turn */
    next = j->next;
    if (j->push) agg_group_free(j->g);
    free(j->data);
    free(j);
  }
  agg_free_tables(a);
}

/* psd_agg_conn_stamp: see psd_agg.h. */
uint64_t psd_agg_conn_stamp(psd_agg *a) { return ++a->stamp; }

/* psd_agg_stats_get: see psd_agg.h. */
void psd_agg_stats_get(const psd_agg *a, psd_agg_stats *st) { *st = a->st; }

/* psd_agg_workers: see psd_agg.h. */
size_t psd_agg_workers(psd_agg *a, uint32_t *ids) {
  uint64_t now = agg_now(a);
  size_t n = 0;
  for (uint32_t w = 0; w < a->nseen; w++)
    if (a->seen_ms[w] && agg_silent(a, w, now) <= a->cfg->workers.lease_ms) ids[n++] = w;
  return n;
}

/* psd_agg_reload_key: see psd_agg.h. */
void psd_agg_reload_key(psd_agg *a) {
  if (a->keyed) ps_auth_client_now(&a->auth, &a->key); /* the links copy it per hello */
}
