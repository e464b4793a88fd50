/* psctl bench: push/pull throughput over the tensor channel and over gRPC,
 * small-request rate, and (--memory-params) the set-up for a shard memory
 * measurement.
 *
 * Throughput: a dense model of one float32 tensor (--model-mib, default
 * 64 MiB, SGD) is submitted to every shard (replacing an older one), then
 * each round pushes (or pulls) the whole model: one thread per shard, all
 * at once, each sending its shard's chunks in requests of --request-mib
 * (default 4 MiB).  Chunks of a shard lie scattered in the flat parameter
 * vector, as in a worker: the channel sends from / receives into them with
 * writev/readv; gRPC gathers into / scatters out of one message buffer,
 * and that copy is part of its time.  A round's time runs from the first
 * thread's start to the last thread's end; the figures are the median over
 * --rounds rounds (after one warm-up round) and the rate over all of them
 * together (their bytes over their summed time, so that rounds slowed by
 * a shard's periodic flush count as they happened), in MB/s (10^6 bytes).
 * Small requests: pushes/s of one 256-float (1 KiB) chunk to shard 0 with
 * 8 requests in flight on one channel connection, for --small-secs; then
 * (unless --skip-grpc) unary gRPC Push calls/s of the same chunk, one at a
 * time, as long again (a call's cost on the control plane, TLS or not). */
#include <float.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_model.h"
#include "ps_time.h"
#include "psctl.h"
#include "ps_auth.h"
#include "ps_tls.h"

#define BENCH_TIMEOUT_MS 60000 /* default --timeout */

typedef struct bench_opts {
  const char *config;
  int json, rounds, depth, skip_grpc, sockbuf;
  double model_mib, request_mib, small_secs;
  uint64_t memory_params;
} bench_opts;

/* One request: chunk ids and the segments of the flat vector they cover. */
typedef struct bench_req {
  uint32_t *ids;
  size_t nids;
  struct iovec *seg;      /* bytes of the flat vector */
  size_t nseg;
  uint64_t nelems;
} bench_req;

/* Per-shard worker state (owned by the bench; one thread per shard). */
typedef struct bench_shard {
  const char *model;
  const ps_shard_conf *conf;
  ps_chan_client *chan;
  ps_rpc *rpc;
  bench_req *req;
  size_t nreq;
  int depth;
  float *scratch;           /* gRPC gather/scatter buffer */
  pthread_barrier_t *start;
  int (*op)(struct bench_shard *, ps_errbuf *);
  double t0, t1;
  int err;
  ps_errbuf eb;
} bench_shard;

/* The worker id the bench's pushes and pulls name: the last one the
 * shards accept (2 x workers.count + 1), which registration hands out
 * last; its heartbeats (bench_beats) take it back (rejoin) should a
 * worker that held it have been declared dead, hold its lease while the
 * bench runs, and give it up (done) at the end. */
static uint32_t bench_worker;

/* How long any one call or channel request may take (--timeout, ms): a
 * hung shard fails the bench with its name after this long. */
static int bench_timeout_ms = BENCH_TIMEOUT_MS;

/* ---- the four transfer kinds -------------------------------------------------- */

/* bench_chan_run sends every request of S over the channel with up to
 * S->depth in flight; PUSH selects the direction. */
static int bench_chan_run(bench_shard *s, int push, ps_errbuf *eb) {
  size_t sent = 0, got = 0;
  while (got < s->nreq) {
    while (sent < s->nreq && sent - got < (size_t)s->depth) {
      bench_req *r = &s->req[sent++];
      ps_req q = {.model = s->model, .ids = r->ids, .nids = r->nids, .worker = bench_worker};
      int rc = push ? ps_chan_send_pushv(s->chan, &q, r->seg, r->nseg, NULL, eb)
                    : ps_chan_send_pullv(s->chan, &q, r->seg, r->nseg, NULL, eb);
      if (rc < 0) return rc;
    }
    int rc = ps_chan_recv(s->chan, NULL, NULL, eb);
    if (rc < 0) return rc;
    got++;
  }
  return 0;
}
static int bench_chan_push(bench_shard *s, ps_errbuf *eb) { return bench_chan_run(s, 1, eb); }
static int bench_chan_pull(bench_shard *s, ps_errbuf *eb) { return bench_chan_run(s, 0, eb); }

/* bench_grpc_push gathers each request into one buffer and calls Push. */
static int bench_grpc_push(bench_shard *s, ps_errbuf *eb) {
  for (size_t i = 0; i < s->nreq; i++) {
    bench_req *r = &s->req[i];
    uint8_t *p = (uint8_t *)s->scratch;
    for (size_t k = 0; k < r->nseg; k++) {
      memcpy(p, r->seg[k].iov_base, r->seg[k].iov_len);
      p += r->seg[k].iov_len;
    }
    Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
    req.worker = bench_worker;
    req.model = (char *)s->model;
    req.chunk_ids = r->ids;
    req.n_chunk_ids = r->nids;
    req.grads.data = (uint8_t *)s->scratch;
    req.grads.len = r->nelems * sizeof(float);
    ProtobufCMessage *resp = NULL;
    int rc = ps_rpc_call(s->rpc, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor, &resp,
                         bench_timeout_ms, eb);
    if (rc < 0) return rc;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return 0;
}

/* bench_grpc_pull calls Pull and scatters each reply into the segments. */
static int bench_grpc_pull(bench_shard *s, ps_errbuf *eb) {
  for (size_t i = 0; i < s->nreq; i++) {
    bench_req *r = &s->req[i];
    Ps__PullRequest req = PS__PULL_REQUEST__INIT;
    req.worker = bench_worker;
    req.model = (char *)s->model;
    req.chunk_ids = r->ids;
    req.n_chunk_ids = r->nids;
    ProtobufCMessage *resp = NULL;
    int rc = ps_rpc_call(s->rpc, "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor, &resp,
                         bench_timeout_ms, eb);
    if (rc < 0) return rc;
    Ps__PullReply *rep = (Ps__PullReply *)resp;
    if (rep->values.len != r->nelems * sizeof(float)) {
      protobuf_c_message_free_unpacked(resp, NULL);
      return ps_errf(eb, PS_EPROTO, "pull reply of %zu bytes, want %llu", rep->values.len,
                     (unsigned long long)(r->nelems * sizeof(float)));
    }
    const uint8_t *p = rep->values.data;
    for (size_t k = 0; k < r->nseg; k++) {
      memcpy(r->seg[k].iov_base, p, r->seg[k].iov_len);
      p += r->seg[k].iov_len;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return 0;
}

static const struct bench_kind {
  const char *transport, *op, *key;
  int grpc;
  int (*run)(bench_shard *, ps_errbuf *);
} bench_kinds[] = {
    {"channel", "push", "channel_push_mbps", 0, bench_chan_push},
    {"channel", "pull", "channel_pull_mbps", 0, bench_chan_pull},
    {"grpc", "push", "grpc_push_mbps", 1, bench_grpc_push},
    {"grpc", "pull", "grpc_pull_mbps", 1, bench_grpc_pull},
};
#define BENCH_NKINDS (sizeof bench_kinds / sizeof bench_kinds[0])

/* ---- rounds ------------------------------------------------------------------- */

static void *bench_thread(void *arg) {
  bench_shard *s = arg;
  pthread_barrier_wait(s->start);
  s->t0 = ps_now_s();
  s->err = s->op(s, &s->eb);
  s->t1 = ps_now_s();
  return NULL;
}

/* bench_round runs OP on every shard at once; returns the round's seconds
 * or a negative value with the first failure in EB. */
static double bench_round(bench_shard *sh, size_t n, int (*op)(bench_shard *, ps_errbuf *),
                          ps_errbuf *eb) {
  pthread_t *th = calloc(n, sizeof *th);
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, (unsigned)n);
  for (size_t i = 0; i < n; i++) {
    sh[i].op = op;
    sh[i].start = &start;
    pthread_create(&th[i], NULL, bench_thread, &sh[i]);
  }
  double t0 = 1e300, t1 = 0;
  int err = 0;
  for (size_t i = 0; i < n; i++) {
    pthread_join(th[i], NULL);
    if (sh[i].err < 0 && !err) {
      err = sh[i].err;
      ps_errf(eb, err, "shard %u: %s", sh[i].conf->id, sh[i].eb.msg);
    }
    if (sh[i].t0 < t0) t0 = sh[i].t0;
    if (sh[i].t1 > t1) t1 = sh[i].t1;
  }
  pthread_barrier_destroy(&start);
  free(th);
  return err ? -1 : t1 - t0;
}

static int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* A transfer kind's MB/s: the median round's, and over all rounds. */
typedef struct bench_rate {
  double median, overall; /* < 0: skipped */
} bench_rate;

/* bench_measure runs one warm-up and ROUNDS timed rounds of OP moving
 * BYTES each into *RATE; returns 0 or a negative PS_E* code. */
static int bench_measure(bench_shard *sh, size_t n, int (*op)(bench_shard *, ps_errbuf *),
                         int rounds, uint64_t bytes, bench_rate *rate, ps_errbuf *eb) {
  double *mbps = calloc((size_t)rounds, sizeof *mbps), secs = 0;
  if (!mbps) return ps_errf(eb, PS_ENOMEM, "out of memory");
  if (bench_round(sh, n, op, eb) < 0) {
    free(mbps);
    return -1;
  }
  for (int r = 0; r < rounds; r++) {
    double t = bench_round(sh, n, op, eb);
    if (t < 0) {
      free(mbps);
      return -1;
    }
    mbps[r] = (double)bytes / t / 1e6;
    secs += t;
  }
  qsort(mbps, (size_t)rounds, sizeof *mbps, bench_cmp_double);
  rate->median = rounds % 2 ? mbps[rounds / 2] : (mbps[rounds / 2 - 1] + mbps[rounds / 2]) / 2;
  rate->overall = (double)bytes * rounds / secs / 1e6;
  free(mbps);
  return 0;
}

/* ---- set-up ------------------------------------------------------------------- */

/* bench_submit submits a one-tensor model NAME of NPARAMS floats with
 * optimizer KIND (replacing an older one) on every shard. */
static int bench_submit(psctl_cluster *cl, Ps__ModelSpec *spec, ps_errbuf *eb) {
  Ps__SubmitModelRequest req = PS__SUBMIT_MODEL_REQUEST__INIT;
  req.model = spec;
  req.replace = 1;
  size_t n = cl->cfg.nshards;
  psctl_reply *out = calloc(n, sizeof *out);
  if (!out) return ps_errf(eb, PS_ENOMEM, "out of memory");
  psctl_call_all(cl, "/ps.Ps/SubmitModel", &req.base, &ps__submit_model_reply__descriptor,
                 bench_timeout_ms, out);
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    if (out[i].err < 0)
      rc = ps_errf(eb, out[i].err, "submit '%s' to shard %u: %s", spec->name,
                   cl->cfg.shards[i].id, out[i].eb.msg);
  psctl_replies_free(out, n);
  free(out);
  return rc;
}

/* bench_plan cuts shard SHARD's chunks of layout L into requests of at
 * most REQ_ELEMS elements over the flat vector FLAT, merging chunks that
 * are adjacent in FLAT into one segment. */
static int bench_plan(bench_shard *s, const ps_layout *l, uint32_t shard, float *flat,
                      uint64_t req_elems, ps_errbuf *eb) {
  uint32_t *ids;
  uint64_t total;
  long nids = ps_layout_shard_chunks(l, shard, &ids, &total);
  if (nids < 0) return ps_errf(eb, (int)nids, "layout of shard %u", shard);
  s->req = calloc((size_t)nids + 1, sizeof *s->req);
  s->nreq = 0;
  for (long i = 0; i < nids;) {
    bench_req *r = &s->req[s->nreq++];
    r->ids = ids + i; /* ids stay owned by the first request */
    r->seg = calloc((size_t)(nids - i), sizeof *r->seg);
    for (; i < nids; i++) {
      const ps_chunk *ch = &l->chunks[ids[i]];
      if (r->nelems && r->nelems + ch->len > req_elems) break;
      float *p = flat + l->tensors[ch->tensor].model_offset + ch->offset;
      struct iovec *last = r->nseg ? &r->seg[r->nseg - 1] : NULL;
      if (last && (uint8_t *)last->iov_base + last->iov_len == (uint8_t *)p)
        last->iov_len += (size_t)ch->len * sizeof(float);
      else
        r->seg[r->nseg++] = (struct iovec){p, (size_t)ch->len * sizeof(float)};
      r->nids++;
      r->nelems += ch->len;
    }
  }
  return 0;
}

static void bench_unplan(bench_shard *s) {
  for (size_t i = 0; i < s->nreq; i++) {
    if (i == 0) free(s->req[i].ids);
    free(s->req[i].seg);
  }
  free(s->req);
  s->req = NULL;
  s->nreq = 0;
}

/* bench_spec fills SPEC (and its parts, caller storage) for a model. */
static void bench_spec(Ps__ModelSpec *spec, Ps__TensorSpec *t, Ps__TensorSpec **tp,
                       Ps__OptimizerSpec *opt, uint32_t *shape, const char *name,
                       uint64_t nparams, uint32_t chunk_elems, const char *optimizer) {
  ps__tensor_spec__init(t);
  shape[0] = (uint32_t)nparams;
  t->name = "w";
  t->n_shape = 1;
  t->shape = shape;
  t->init = "zeros";
  ps__optimizer_spec__init(opt);
  opt->kind = (char *)optimizer;
  opt->lr = 0.001f;
  opt->beta1 = 0.9f;
  opt->beta2 = 0.999f;
  opt->eps = 1e-8f;
  ps__model_spec__init(spec);
  spec->name = (char *)name;
  spec->seed = 1;
  tp[0] = t;
  spec->n_tensors = 1;
  spec->tensors = tp;
  spec->optimizer = opt;
  spec->chunk_elems = chunk_elems;
}

/* bench_lease sends every shard a heartbeat for bench_worker: while the
 * bench runs (LEAVING 0) one marked rejoin, at the end one marked leaving
 * and done.  Best effort: a shard that misses it says so in the push or
 * pull that follows. */
static void bench_lease(psctl_cluster *cl, int leaving) {
  size_t n = cl->cfg.nshards;
  ps_rpc_reply *out = calloc(n, sizeof *out);
  if (!out) return;
  Ps__HeartbeatRequest req = PS__HEARTBEAT_REQUEST__INIT;
  req.worker = bench_worker;
  req.model = "bench";
  req.host = "psctl bench";
  req.rejoin = !leaving;
  req.leaving = req.done = leaving;
  ps_rpc_call_all(cl->rpc, n, "/ps.Ps/Heartbeat", &req.base, &ps__heartbeat_reply__descriptor,
                  5000, out);
  ps_rpc_replies_free(out, n);
  free(out);
}

/* The heartbeat thread: bench_worker's lease held while the bench runs,
 * its phases without a request of that worker (a big model's submit, the
 * wait for a flush) included. */
typedef struct bench_beats {
  psctl_cluster *cl;
  ps_ticker ticker;
} bench_beats;

static void bench_beat(void *arg, int64_t ms) {
  (void)ms;
  bench_lease(((bench_beats *)arg)->cl, 0);
}

/* bench_beats_start sends the first heartbeat and starts the thread, one
 * every workers.heartbeat_ms (its failure leaves the lease to the
 * requests themselves). */
static void bench_beats_start(bench_beats *b, psctl_cluster *cl) {
  b->cl = cl;
  bench_lease(cl, 0);
  ps_ticker_start(&b->ticker, cl->cfg.workers.heartbeat_ms, bench_beat, b);
}

/* bench_beats_stop ends the thread and leaves the worker id as done. */
static void bench_beats_stop(bench_beats *b) {
  ps_ticker_stop(&b->ticker);
  bench_lease(b->cl, 1);
}

/* bench_connect opens each shard's channel client and (unless SKIP_GRPC)
 * gives it its rpc handle and a scratch buffer of REQ_ELEMS floats. */
static int bench_connect(psctl_cluster *cl, bench_shard *sh, uint64_t req_elems, int grpc,
                         int sockbuf, ps_errbuf *eb) {
  ps_auth_keys keys;
  const ps_auth_key *key;
  int rc = ps_auth_client_key(cl->cfg.security.secret_file, PS_ROLE_OPERATOR, &keys, &key, eb);
  for (size_t i = 0; rc == 0 && i < cl->cfg.nshards; i++) {
    sh[i].conf = &cl->cfg.shards[i];
    sh[i].rpc = cl->rpc[i];
    rc = ps_chan_connect_auth(&sh[i].chan, sh[i].conf->channel_addr, cl->cfg.cluster, key,
                              cl->cfg.security.payload_mac ? PS_CHAN_AUTH_MAC : 0,
                              bench_timeout_ms, eb);
    if (rc < 0) /* the channel's message names its address only */
      rc = ps_errf(eb, rc, "shard %u (channel %s): %s", sh[i].conf->id, sh[i].conf->channel_addr,
                   eb->msg);
    if (rc == 0 && sockbuf) rc = ps_chan_set_bufsize(sh[i].chan, sockbuf, sockbuf, eb);
    if (rc == 0) ps_chan_set_timeout(sh[i].chan, bench_timeout_ms); /* a stall fails, not hangs */
    if (rc == 0 && grpc && !(sh[i].scratch = malloc(req_elems * sizeof(float))))
      rc = ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  ps_auth_release(&keys);
  return rc;
}

static void bench_disconnect(bench_shard *sh, size_t n) {
  for (size_t i = 0; i < n; i++) {
    ps_chan_close(sh[i].chan);
    free(sh[i].scratch);
    bench_unplan(&sh[i]);
  }
}

/* ---- the three measurements ------------------------------------------------------ */

/* bench_small_grpc measures unary gRPC calls/s: Push of chunk ID (256
 * floats at G) of "bench_small" to shard 0, one call at a time, for SECS
 * seconds (the control plane's per-call cost: TLS or plaintext). */
static double bench_small_grpc(bench_shard *sh0, uint32_t id, const float *g, double secs,
                               ps_errbuf *eb) {
  Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
  req.worker = bench_worker;
  req.model = "bench_small";
  req.chunk_ids = &id;
  req.n_chunk_ids = 1;
  req.grads.data = (uint8_t *)g;
  req.grads.len = 256 * sizeof(float);
  uint64_t done = 0;
  double t0 = ps_now_s(), t1 = t0;
  while (t1 - t0 < secs) {
    ProtobufCMessage *resp;
    if (ps_rpc_call(sh0->rpc, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor, &resp,
                    bench_timeout_ms, eb) < 0)
      return -1;
    protobuf_c_message_free_unpacked(resp, NULL);
    done++;
    t1 = ps_now_s();
  }
  return (double)done / (t1 - t0);
}

/* bench_small measures pushes/s of one 1 KiB chunk held by shard 0 with 8
 * requests in flight on one channel connection for SECS seconds, and
 * (GRPC) then unary gRPC calls/s of the same push into *GRPC_RATE. */
static double bench_small(psctl_cluster *cl, bench_shard *sh0, const uint32_t *shard_ids,
                          double secs, int grpc, double *grpc_rate, ps_errbuf *eb) {
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *tp[1];
  Ps__OptimizerSpec opt;
  uint32_t shape[1];
  bench_spec(&spec, &t, tp, &opt, shape, "bench_small", 256 * 64, 256, "sgd");
  ps_layout l;
  if (bench_submit(cl, &spec, eb) < 0 ||
      ps_layout_build(&l, &spec, cl->cfg.chunk_elems, shard_ids, cl->cfg.nshards, eb) < 0)
    return -1;
  uint32_t id = UINT32_MAX;
  for (uint32_t c = 0; c < l.nchunks && id == UINT32_MAX; c++)
    if (l.chunks[c].shard == 0) id = c;
  ps_layout_release(&l);
  if (id == UINT32_MAX) return ps_errf(eb, PS_ENOENT, "no chunk of 'bench_small' on shard 0");
  float g[256];
  for (int i = 0; i < 256; i++) g[i] = 1e-3f;
  struct iovec src[] = {{g, sizeof g}};
  ps_req q = {.model = "bench_small", .ids = &id, .nids = 1, .worker = bench_worker};
  uint64_t done = 0;
  double t0 = ps_now_s(), end = t0 + secs, t1 = t0;
  for (int k = 0; k < 8; k++)
    if (ps_chan_send_pushv(sh0->chan, &q, src, 1, NULL, eb) < 0) return -1;
  while (ps_chan_inflight(sh0->chan)) {
    if (ps_chan_recv(sh0->chan, NULL, NULL, eb) < 0) return -1;
    done++;
    t1 = ps_now_s();
    if (t1 < end && ps_chan_send_pushv(sh0->chan, &q, src, 1, NULL, eb) < 0) return -1;
  }
  double rate = (double)done / (t1 - t0);
  if (grpc && (*grpc_rate = bench_small_grpc(sh0, id, g, secs, eb)) < 0) return -1;
  return rate;
}

/* bench_wait_flush polls Status until every shard's last flush is at or
 * after SINCE_MS (unix ms), at most 300 s; fills PARAMS[i] with shard i's
 * parameter count of MODEL. */
static int bench_wait_flush(psctl_cluster *cl, const char *model, int64_t since_ms,
                            uint64_t *params, ps_errbuf *eb) {
  size_t n = cl->cfg.nshards;
  psctl_reply *out = calloc(n, sizeof *out);
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  double end = ps_now_s() + 300;
  int rc = PS_ETIMEDOUT;
  while (rc == PS_ETIMEDOUT && ps_now_s() < end) {
    size_t flushed = 0;
    psctl_call_all(cl, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor, 5000, out);
    for (size_t i = 0; i < n; i++) {
      const Ps__StatusReply *st = (const Ps__StatusReply *)out[i].resp;
      if (!st) continue;
      if (st->last_flush_unix_ms >= since_ms) flushed++;
      for (size_t m = 0; m < st->n_models; m++)
        if (!strcmp(st->models[m]->name, model)) params[i] = st->models[m]->params;
    }
    psctl_replies_free(out, n);
    if (flushed == n) rc = 0;
    else nanosleep(&(struct timespec){0, 200000000}, NULL);
  }
  free(out);
  return rc < 0 ? ps_errf(eb, rc, "shards did not flush '%s' within 300 s", model) : 0;
}

static int64_t bench_unix_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* bench_memory submits an Adam model of O->memory_params floats, pushes
 * every chunk once over the channel and waits for a flush, then prints
 * each shard's parameter count (the caller measures the shards' memory). */
static int bench_memory(psctl_cluster *cl, bench_shard *sh, const uint32_t *shard_ids,
                        const bench_opts *o, ps_errbuf *eb) {
  size_t n = cl->cfg.nshards;
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *tp[1];
  Ps__OptimizerSpec opt;
  uint32_t shape[1];
  bench_spec(&spec, &t, tp, &opt, shape, "bench_mem", o->memory_params, 0, "adam");
  uint64_t req_elems = (uint64_t)(o->request_mib * 262144);
  float *flat = malloc(o->memory_params * sizeof(float));
  uint64_t *params = calloc(n, sizeof *params);
  ps_layout l;
  int rc = flat && params ? 0 : ps_errf(eb, PS_ENOMEM, "out of memory");
  if (rc == 0) rc = bench_submit(cl, &spec, eb);
  if (rc == 0) rc = ps_layout_build(&l, &spec, cl->cfg.chunk_elems, shard_ids, n, eb);
  if (rc < 0) goto free_flat;
  for (uint64_t i = 0; i < o->memory_params; i++) flat[i] = 1e-3f;
  for (size_t i = 0; i < n && rc == 0; i++) {
    sh[i].model = "bench_mem";
    sh[i].depth = o->depth;
    rc = bench_plan(&sh[i], &l, (uint32_t)i, flat, req_elems, eb);
  }
  ps_layout_release(&l);
  int64_t pushed_ms = 0;
  if (rc == 0 && bench_round(sh, n, bench_chan_push, eb) < 0) rc = PS_EIO;
  if (rc == 0) {
    pushed_ms = bench_unix_ms();
    rc = bench_wait_flush(cl, "bench_mem", pushed_ms, params, eb);
  }
  if (rc == 0) {
    printf("{\"memory_model_params\":%llu,\"optimizer\":\"adam\",\"shards\":[",
           (unsigned long long)o->memory_params);
    for (size_t i = 0; i < n; i++)
      printf("%s{\"id\":%u,\"params\":%llu}", i ? "," : "", cl->cfg.shards[i].id,
             (unsigned long long)params[i]);
    printf("]}\n");
  }
free_flat:
  free(params);
  free(flat);
  return rc;
}

/* bench_throughput measures every transfer kind and the small-request
 * rates; RESULTS receives each kind's MB/s (-1: skipped), SMALL[0] channel
 * pushes/s, SMALL[1] gRPC calls/s (-1: skipped). */
static int bench_throughput(psctl_cluster *cl, bench_shard *sh, const uint32_t *shard_ids,
                            const bench_opts *o, bench_rate *results, double *small, ps_errbuf *eb) {
  size_t n = cl->cfg.nshards;
  uint64_t nparams = (uint64_t)(o->model_mib * 262144);
  uint64_t req_elems = (uint64_t)(o->request_mib * 262144);
  uint32_t chunk = req_elems >= 65536 ? 65536 : (uint32_t)req_elems;
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *tp[1];
  Ps__OptimizerSpec opt;
  uint32_t shape[1];
  bench_spec(&spec, &t, tp, &opt, shape, "bench", nparams, chunk, "sgd");
  float *flat = malloc(nparams * sizeof(float));
  ps_layout l;
  int rc = flat ? 0 : ps_errf(eb, PS_ENOMEM, "out of memory");
  if (rc == 0) rc = bench_submit(cl, &spec, eb);
  if (rc == 0) rc = ps_layout_build(&l, &spec, cl->cfg.chunk_elems, shard_ids, n, eb);
  if (rc < 0) goto free_flat;
  for (uint64_t i = 0; i < nparams; i++) flat[i] = 1e-3f;
  for (size_t i = 0; i < n && rc == 0; i++) {
    sh[i].model = "bench";
    sh[i].depth = o->depth;
    rc = bench_plan(&sh[i], &l, (uint32_t)i, flat, req_elems, eb);
  }
  ps_layout_release(&l);
  for (size_t k = 0; k < BENCH_NKINDS && rc == 0; k++) {
    results[k] = (bench_rate){-1, -1};
    if (bench_kinds[k].grpc && o->skip_grpc) continue;
    if (bench_measure(sh, n, bench_kinds[k].run, o->rounds, nparams * sizeof(float), &results[k],
                      eb) < 0)
      rc = PS_EIO;
  }
  if (rc == 0 && o->small_secs > 0) {
    small[0] = bench_small(cl, &sh[0], shard_ids, o->small_secs, !o->skip_grpc, &small[1], eb);
    if (small[0] < 0) rc = PS_EIO;
  }
free_flat:
  free(flat);
  return rc;
}

/* bench_print writes the table or the JSON object. */
static void bench_print(const psctl_cluster *cl, const bench_opts *o, const bench_rate *results,
                        const double *small) {
  if (o->json) {
    char b1[64], b2[64];
    printf("{\"model_bytes\":%s,\"shards\":%zu,\"request_bytes\":%s,\"rounds\":%d,"
           "\"depth\":%d",
           psctl_json_double(b1, "%.0f", o->model_mib * 1048576), cl->cfg.nshards,
           psctl_json_double(b2, "%.0f", o->request_mib * 1048576), o->rounds, o->depth);
    for (size_t k = 0; k < BENCH_NKINDS; k++)
      if (results[k].median >= 0)
        printf(",\"%s\":%s,\"%s_overall\":%s", bench_kinds[k].key,
               psctl_json_double(b1, "%.1f", results[k].median), bench_kinds[k].key,
               psctl_json_double(b2, "%.1f", results[k].overall));
    if (small[0] >= 0)
      printf(",\"small_push_per_sec\":%s", psctl_json_double(b1, "%.0f", small[0]));
    if (small[1] >= 0)
      printf(",\"small_grpc_calls_per_sec\":%s", psctl_json_double(b1, "%.0f", small[1]));
    /* named as the shards' Status names it (psctl status --json), "none"
     * too: a table of runs compares them by it */
    printf(",\"security\":\"%s\"", ps_tls_security_name(&cl->cfg.security));
    printf("}\n");
    return;
  }
  printf("model %g MiB over %zu shards, %g MiB requests, %d in flight per shard, "
         "median of %d rounds\n", o->model_mib, cl->cfg.nshards, o->request_mib, o->depth,
         o->rounds);
  printf("%-9s %-5s %10s %12s\n", "transport", "op", "MB/s", "overall MB/s");
  for (size_t k = 0; k < BENCH_NKINDS; k++)
    if (results[k].median >= 0)
      printf("%-9s %-5s %10.1f %12.1f\n", bench_kinds[k].transport, bench_kinds[k].op,
             results[k].median, results[k].overall);
  if (small[0] >= 0)
    printf("small: %.0f pushes/s of one 1 KiB chunk, 8 in flight (channel)\n", small[0]);
  if (small[1] >= 0)
    printf("small: %.0f gRPC Push calls/s of one 1 KiB chunk, one at a time\n", small[1]);
}

static const char bench_usage[] =
    "usage: psctl bench [--config FILE] [--json] [--rounds N] [--model-mib M]\n"
    "                   [--request-mib R] [--depth D] [--small-secs S] [--skip-grpc]\n"
    "                   [--sockbuf BYTES] [--timeout MS]\n"
    "       psctl bench [--config FILE] --memory-params N [--request-mib R]\n"
    "Submits a dense benchmark model (one float32 tensor of M MiB, default 64, SGD) and\n"
    "prints the median over N rounds (default 5) of push and pull MB/s over the tensor\n"
    "channel and over gRPC (--skip-grpc: the channel only; the gRPC rows and JSON keys\n"
    "are left out), with R MiB requests (default 4), one thread per shard, D\n"
    "requests in flight per channel (default 2), and beside each the rate over all N\n"
    "rounds together (\"overall\": their bytes over their summed time, which counts\n"
    "the rounds a shard's flush slowed); then 1 KiB pushes/s with 8 in flight\n"
    "for S seconds (default 2; 0 skips), and as long gRPC Push calls/s of 1 KiB, one at a\n"
    "time (but with --skip-grpc).  --memory-params submits an Adam model of N\n"
    "parameters, pushes every chunk once, waits for a flush and prints each shard's\n"
    "parameter count as JSON (scripts/bench_net measures the shards' memory).\n"
    "--sockbuf sets the channel clients' SO_SNDBUF/SO_RCVBUF (default 0: kernel autotuning;\n"
    "else at least 65536).  --timeout MS bounds each call and request, and the first Status\n"
    "of every shard (default 60000; --timeout-ms is the same flag, as psctl export spells it):\n"
    "a shard that does not answer in time fails the bench with its id.  Short forms: -c FILE\n"
    "(--config), -j (--json), -h (--help).\n"
    "Exit status: 0, 1 when a shard is down, is not the shard the file says (psctl status\n"
    "shows MISMATCH) or refuses the model or a request, 2 for\n"
    "usage/config errors.\n";

/* bench_args parses argv into O; 0, or an exit code (-1: --help). */
static int bench_args(int argc, char **argv, bench_opts *o) {
  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'},      {"json", no_argument, 0, 'j'},
      {"rounds", required_argument, 0, 'r'},      {"model-mib", required_argument, 0, 'm'},
      {"request-mib", required_argument, 0, 'q'}, {"depth", required_argument, 0, 'd'},
      {"small-secs", required_argument, 0, 's'},  {"skip-grpc", no_argument, 0, 'G'},
      {"memory-params", required_argument, 0, 'M'}, {"sockbuf", required_argument, 0, 'B'},
      {"timeout", required_argument, 0, 'T'}, {"timeout-ms", required_argument, 0, 't'},
      {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  *o = (bench_opts){.rounds = 5, .depth = 2, .model_mib = 64, .request_mib = 4, .small_secs = 2};
  optind = 1;
  int c;
  uint64_t u = 0;
  while ((c = getopt_long(argc, argv, "c:jh", opts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
      case 'c': o->config = optarg; break;
      case 'j': o->json = 1; break;
      case 'G': o->skip_grpc = 1; break;
      case 'r':
      case 'd':
      case 'B':
        bad = psctl_parse_u64("bench", c == 'r' ? "rounds" : c == 'd' ? "depth" : "sockbuf",
                              optarg, c == 'B' ? 0 : 1, INT_MAX, &u);
        *(c == 'r' ? &o->rounds : c == 'd' ? &o->depth : &o->sockbuf) = (int)u;
        break;
      case 'M':
        bad = psctl_parse_u64("bench", "memory-params", optarg, 0, 4000000000ull,
                              &o->memory_params);
        break;
      case 'm': bad = psctl_parse_double("bench", "model-mib", optarg, 0, DBL_MAX, &o->model_mib); break;
      case 'q':
        bad = psctl_parse_double("bench", "request-mib", optarg, 0, DBL_MAX, &o->request_mib);
        break;
      case 's':
        bad = psctl_parse_double("bench", "small-secs", optarg, 0, DBL_MAX, &o->small_secs);
        break;
      case 'T':
      case 't':
        bad = psctl_parse_u64("bench", c == 'T' ? "timeout" : "timeout-ms", optarg, 1, 3600000, &u);
        if (!bad) bench_timeout_ms = (int)u;
        break;
      case 'h': fputs(bench_usage, stdout); return -1;
      default: bad = 1; break;
    }
    if (bad) {
      fputs("see 'psctl bench --help'\n", stderr);
      return 2;
    }
  }
  const char *why = optind < argc ? "unexpected argument"
                    : o->model_mib <= 0 || o->model_mib * 262144 > 4e9
                        ? "--model-mib wants a size above 0 and at most 15258 MiB (4e9 floats)"
                    : o->request_mib < 0.001 ? "--request-mib wants at least 0.001 MiB"
                    : o->sockbuf && o->sockbuf < 65536
                        ? "--sockbuf wants 0 (the kernel's autotuning) or at least 65536 bytes"
                        : NULL;
  if (why || o->rounds < 1 || o->depth < 1 || o->sockbuf < 0 || o->memory_params > 4000000000ull) {
    if (why) fprintf(stderr, "psctl bench: %s\n", why);
    fputs("see 'psctl bench --help'\n", stderr);
    return 2;
  }
  return 0;
}

/* psctl_bench_main: see psctl.h; 0 on success, 1 when a measurement
 * failed, 2 for usage or configuration errors. */
int psctl_bench_main(int argc, char **argv) {
  bench_opts o;
  int code = bench_args(argc, argv, &o);
  if (code) return code < 0 ? 0 : code;
  psctl_cluster cl;
  ps_errbuf eb = {{0}};
  if (psctl_cluster_open(&cl, o.config, &eb) < 0) {
    fprintf(stderr, "psctl bench: %s\n", eb.msg);
    return 2;
  }
  if (o.request_mib * 1048576.0 > (double)cl.cfg.max_request_bytes) {
    fprintf(stderr, "psctl bench: --request-mib %g is above limits.max_request_bytes (%llu "
            "bytes): the shards would close the connection\n", o.request_mib,
            (unsigned long long)cl.cfg.max_request_bytes);
    psctl_cluster_close(&cl);
    return 2;
  }
  size_t n = cl.cfg.nshards;
  bench_shard *sh = calloc(n, sizeof *sh);
  uint32_t *ids = calloc(n, sizeof *ids);
  bench_rate results[BENCH_NKINDS];
  double small[2] = {-1, -1};
  int rc = sh && ids ? 0 : ps_errf(&eb, PS_ENOMEM, "out of memory");
  for (size_t i = 0; i < n && rc == 0; i++) ids[i] = cl.cfg.shards[i].id;
  bench_worker = 2 * cl.cfg.workers.count + 1;
  /* every shard up and the file's own, before a model is replaced anywhere */
  if (rc == 0 && psctl_check_cluster(&cl, "bench", bench_timeout_ms, 1)) {
    fprintf(stderr, "psctl bench: nothing measured\n");
    free(sh);
    free(ids);
    psctl_cluster_close(&cl);
    return 1;
  }
  bench_beats beats;
  bench_beats_start(&beats, &cl);
  if (rc == 0)
    rc = bench_connect(&cl, sh, (uint64_t)(o.request_mib * 262144), !o.skip_grpc, o.sockbuf,
                       &eb);
  if (rc == 0 && o.memory_params)
    rc = bench_memory(&cl, sh, ids, &o, &eb);
  else if (rc == 0 && (rc = bench_throughput(&cl, sh, ids, &o, results, small, &eb)) == 0)
    bench_print(&cl, &o, results, small);
  if (rc < 0) fprintf(stderr, "psctl bench: %s\n", eb.msg);
  if (sh) bench_disconnect(sh, n);
  bench_beats_stop(&beats);
  free(sh);
  free(ids);
  psctl_cluster_close(&cl);
  return rc < 0 ? 1 : 0;
}
