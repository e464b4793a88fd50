/* psw_client: a worker's push/pull client over every shard of one model
 * (see psw_client.h for the invariants). */
#include "psw_client.h"

#include "ps_auth.h"

#include <errno.h>
#include <pthread.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_chan.h"
#include "ps_log.h"
#include "ps_time.h"
#include "ps_rpc.h"

#define PSW_GETMODEL_TIMEOUT_MS 3000
#define PSW_CONNECT_TIMEOUT_MS 2000
#define PSW_AGG_PROBE_MS 1000 /* psw_client_agg_return's wait for each connection */
#define PSW_SAY_AGAIN_MS 10000 /* a long wait is said again at most this often (invariant 12) */

/* One shard as this worker sees it. */
typedef struct psw_shard {
  uint32_t index;            /* position in cfg->shards */
  const ps_shard_conf *conf; /* borrowed from the config */
  ps_chan_client *ch;        /* NULL while down */
  uint32_t *ids;             /* chunk ids held by this shard, increasing */
  size_t nids;
  uint64_t nelems;
  size_t nseg;               /* runs of chunks contiguous in the flat vectors */
  uint64_t *seg_off;
  uint32_t *seg_len;
  struct iovec *pseg[PSW_CLIENT_MAX_BUFS]; /* segments of params[b] (bytes) */
  struct iovec *gseg[PSW_CLIENT_MAX_BUFS]; /* ... and of grads[b] */
  uint64_t version[PSW_CLIENT_MAX_BUFS];   /* version of the last pull into b */
  uint64_t pushed_version;   /* version answered by the last push */
  uint64_t pushes_acked;     /* pushes this shard answered with success */
  uint64_t pushes_unanswered;/* pushes sent (or begun) whose answer never came:
                                applied or not, nobody knows (invariant 4) */
  uint64_t pushes_broken;    /* of those, the ones whose connection broke or whose
                                send failed (not answered with a refusal) */
  uint64_t pushes_expired;   /* of those, the ones refused for an expired lease */
  uint64_t pushes_refused;   /* of those, the ones answered DEGRADED: refused, not
                                applied (invariant 12; psw_client_say_refused) */
  uint64_t pushes_unsynced;  /* ... answered DEGRADED as applied in memory only */
  uint64_t push_id, pull_id; /* request ids of the round's push and pull */
  uint64_t push_clock;       /* clock of the round's push */
  /* Pushes whose answer is still due, oldest first (invariant 8): one
   * more than the depth while a round collects; and their clocks. */
  uint64_t ack_ids[PSW_CLIENT_ACK_DEPTH + 1], ack_clocks[PSW_CLIENT_ACK_DEPTH + 1];
  int nacks;
  uint64_t moved_on;         /* invariant 13: to say before the next pull (0: nothing) */
  int clocked;               /* the model's pulls wait on clocks (bsp, ssp): moved_on matters */
  /* Codecs (ps_codec.h).  The error-feedback residual of every chunk of
   * this shard (its chunks' elements back to back, in ids order) lives
   * here for the client's life: it survives a reconnect, and a worker that
   * restarts starts again from zero (what it had not yet sent is lost). */
  float *residual;           /* nelems floats, allocated at the first compressed push */
  uint8_t *penc, *genc;      /* encoded pull reply / push payload */
  uint64_t penc_len, genc_len;
  ps_codec_id pull_codec;    /* of the pull in flight */
  uint64_t tx_closed, rx_closed; /* bytes moved by connections closed since */
  uint64_t shm_closed;       /* of those, through shared memory (invariant 9) */
  uint64_t push_tx;          /* bytes of push frames written (headers included) */
  int64_t down_since_ms;     /* 0 while healthy */
  uint32_t delay_ms;         /* next backoff sleep */
  ps_errbuf down_eb;         /* why it went down */
  int redown;                /* it failed again after a reconnect, still down (invariant 12) */
  int64_t refused_since_ms;  /* it refuses pushes (DEGRADED) since; 0: it takes them */
  int64_t refused_said_ms;   /* ... said last then (invariant 12) */
  int via_agg;               /* its connection is (or was to be) to the aggregator */
  int round_agg;             /* this round's push to it goes through the aggregator */
  int down_said;             /* its own failure was logged (not only the aggregator's) */
} psw_shard;

/* The communication thread's one-job mailbox. */
typedef struct psw_job {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, running, pending, quit;
  int outstanding;  /* started and not yet collected by psw_client_wait */
  int gbuf, pbuf;
  uint64_t push_clock, pull_clock;
  int err;
  ps_errbuf eb;
} psw_job;

struct psw_client {
  const ps_config *cfg;
  char *model;
  uint32_t worker;
  int reader;                /* psw_client_conf's */
  ps_gpu_backend *be;
  int nbufs;
  int io_timeout_ms;
  volatile sig_atomic_t *stop;
  int64_t stop_seen_ms;      /* when a wait first saw the stop (psw_chan_await); 0: not yet */
  Ps__GetModelReply *reply; /* owns the spec */
  size_t spec_from;         /* the shard that answered it */
  uint8_t *held;            /* per shard: seen holding the model (a spec or a pull
                               answered; invariant 10) */
  uint8_t *spec_seen;       /* the last spec a check found, packed (NULL: the open's) */
  size_t spec_seen_len;
  uint64_t spec_changes;    /* psw_client_spec_changes */
  ps_layout layout;
  int have_layout;
  float *params[PSW_CLIENT_MAX_BUFS];
  float *grads[PSW_CLIENT_MAX_BUFS];
  size_t nshards;
  psw_shard *shards;
  uint64_t reconnects;
  uint64_t parked_ms;       /* pulls held parked by the shards, in total */
  uint64_t pushes_skipped;  /* a round's push a shard never got (down; invariant 11) */
  int (*rejoin)(void *arg, ps_errbuf *eb); /* invariant 5 */
  /* workers.aggregator (DESIGN.md "Hierarchy"): every shard's connection
   * goes to it until one fails; from then on to the root shards. */
  const ps_agg_conf *agg;
  int agg_down;
  int agg_probe_failed;     /* psw_client_agg_return found it silent (said once) */
  int agg_hung;             /* a liveness probe went unanswered (invariant 7a) */
  int64_t agg_heard_ms;     /* ... the last one answered then (0: none yet) */
  void *rejoin_arg;
  int defer_acks;            /* invariant 8 */
  psw_job job;
  void (*idle_fn)(void *arg); /* psw_client_idle_once: runs in the next round */
  void *idle_arg;
  ps_auth_client auth;      /* security.secret_file: read again at each connection */
  /* Invariant 9: grads[0] and params[0] as one page-aligned mapping (the
   * layout of a region's push and pull areas), when they may be placed in
   * a shard's shared memory; NULL: the backend's host_alloc. */
  uint8_t *zc;
  size_t zc_area;           /* bytes of each half */
};

/* psw_retryable: see psw_client.h. */
int psw_retryable(int err) { return ps_err_path_failed(err) || err == PS_EDEGRADED; }

/* ---- spec and layout ------------------------------------------------------- */

/* psw_call_once makes one gRPC call on a connection of its own to ADDR
 * (ps_rpc_call's arguments and result); a stop ends it at once
 * (PS_ESHUTDOWN): these calls (the spec, an export) change nothing. */
static int psw_call_once(const psw_client *c, const char *addr, const char *method,
                         const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                         int timeout_ms, ps_errbuf *eb) {
  ps_rpc *rpc = NULL;
  int err = ps_rpc_open_cfg(&rpc, addr, c->cfg, PS_ROLE_WORKER, eb);
  if (err < 0) return err;
  err = ps_rpc_call_stop(rpc, method, req, resp_desc, resp, timeout_ms, c->stop, 0, eb);
  ps_rpc_close(rpc);
  return err;
}

/* psw_try_get_model asks shard I for the spec; 0 with c->reply set, or the
 * call's error. */
static int psw_try_get_model(psw_client *c, size_t i, ps_errbuf *eb) {
  Ps__GetModelRequest req = PS__GET_MODEL_REQUEST__INIT;
  req.name = c->model;
  ProtobufCMessage *resp = NULL;
  int err = psw_call_once(c, c->cfg->shards[i].grpc_addr, "/ps.Ps/GetModel", &req.base,
                          &ps__get_model_reply__descriptor, &resp, PSW_GETMODEL_TIMEOUT_MS, eb);
  if (err < 0) return err;
  c->reply = (Ps__GetModelReply *)resp;
  if (!c->reply->model) {
    protobuf_c_message_free_unpacked(resp, NULL);
    c->reply = NULL;
    return ps_errf(eb, PS_EPROTO, "shard %u answered GetModel '%s' without a model",
                   c->cfg->shards[i].id, c->model);
  }
  return 0;
}

/* psw_fetch_spec tries every shard in turn, backing off between rounds,
 * for at most workers.retry_ms, and takes the first spec answered
 * (c->spec_from: that shard).  A shard without the model does not end
 * the round: a model can be on some shards only (submit refused it on
 * the others, limits.max_shard_bytes), which psw_check_shards then names.
 * A round in which shards answered, none with the model, ends it with
 * PS_ENOENT; another answer ends it at once. */
static int psw_fetch_spec(psw_client *c, ps_errbuf *eb) {
  int64_t start = ps_now_ms();
  uint32_t delay = PS_BACKOFF_FIRST_MS;
  for (;;) {
    int err = 0, missing = -1;
    ps_errbuf meb = {""};
    const char *last = NULL; /* the address of the last failure, EB's */
    for (size_t i = 0; i < c->cfg->nshards; i++) {
      err = psw_try_get_model(c, i, eb);
      if (err == 0) {
        c->spec_from = i;
        return 0;
      }
      if (err == PS_ENOENT && missing < 0) {
        missing = (int)i;
        meb = *eb;
      }
      if (err != PS_ENOENT && !psw_retryable(err)) return err;
      if (err != PS_ENOENT) last = c->cfg->shards[i].grpc_addr;
    }
    if (missing >= 0)
      return ps_errf(eb, PS_ENOENT, "model '%s' is not on the cluster (shard %u: %s)", c->model,
                     c->cfg->shards[missing].id, meb.msg);
    uint32_t nap = ps_backoff_nap(start, delay, c->cfg->workers.retry_ms);
    if (!nap) {
      /* a shard that listens but refuses this worker's handshake is no
       * unreachable one: say what to check */
      if (last) ps_rpc_explain_handshake(last, err, eb, PSW_GETMODEL_TIMEOUT_MS);
      return ps_errf(eb, err, "no shard answered GetModel '%s' within %u ms: %s", c->model,
                     c->cfg->workers.retry_ms, eb->msg);
    }
    if ((err = ps_sleep_ms(nap, c->stop)) < 0) return ps_errf(eb, err, "stopped");
    delay = ps_backoff_next(delay);
  }
}

/* psw_export_shard reads shard S's chunks with Export into parameter
 * buffer PBUF; it must send exactly the chunks placement gives it. */
static int psw_export_shard(psw_client *c, psw_shard *s, int pbuf, int timeout_ms,
                            uint64_t *version, ps_errbuf *eb) {
  Ps__ExportRequest req = PS__EXPORT_REQUEST__INIT;
  req.model = c->model;
  ProtobufCMessage *resp = NULL;
  int err = psw_call_once(c, s->conf->grpc_addr, "/ps.Ps/Export", &req.base,
                          &ps__export_reply__descriptor, &resp, timeout_ms, eb);
  if (err < 0) return err;
  const Ps__ExportReply *r = (const Ps__ExportReply *)resp;
  ps_errbuf why;
  long placed = ps_layout_place(&c->layout, s->index, r->chunk_ids, r->n_chunk_ids,
                                r->values.data, r->values.len, c->params[pbuf], NULL, &why);
  int all = r->n_chunk_ids == s->nids && placed >= 0 && (uint64_t)placed == s->nelems;
  *version = r->version;
  protobuf_c_message_free_unpacked(resp, NULL);
  if (placed < 0) return ps_errf(eb, PS_EPROTO, "shard %u %s", s->conf->id, why.msg);
  return all ? 0 : ps_errf(eb, PS_EPROTO, "shard %u's export of '%s' is not the chunks placement "
                           "gives it", s->conf->id, c->model);
}

/* psw_client_export: see psw_client.h. */
int psw_client_export(psw_client *c, int pbuf, int timeout_ms, uint64_t *version, ps_errbuf *eb) {
  if (pbuf < 0 || pbuf >= c->nbufs) return ps_errf(eb, PS_EINVAL, "no parameter buffer %d", pbuf);
  *version = UINT64_MAX;
  for (size_t i = 0; i < c->nshards; i++) {
    uint64_t v = 0;
    int err = psw_export_shard(c, &c->shards[i], pbuf, timeout_ms, &v, eb);
    if (err < 0) {
      ps_errbuf m = *eb;
      return ps_errf(eb, err, "export from shard %u (%s): %s", c->shards[i].conf->id,
                     c->shards[i].conf->grpc_addr, m.msg);
    }
    /* a shard that holds no chunk of the model is pushed nothing: its
     * version (0) says nothing of the model's */
    if (c->shards[i].nids && v < *version) *version = v;
  }
  if (*version == UINT64_MAX) *version = 0;
  return 0;
}

/* psw_shard_segments fills S's chunk ids and merges chunks that are
 * contiguous in the flat vector into segments. */
static int psw_shard_segments(psw_client *c, psw_shard *s, ps_errbuf *eb) {
  long n = ps_layout_shard_chunks(&c->layout, s->index, &s->ids, &s->nelems);
  if (n < 0) return ps_errf(eb, (int)n, "chunks of shard %u: %s", s->conf->id, ps_strerror((int)n));
  s->nids = (size_t)n;
  s->seg_off = calloc(s->nids + 1, sizeof *s->seg_off);
  s->seg_len = calloc(s->nids + 1, sizeof *s->seg_len);
  if (!s->seg_off || !s->seg_len) return ps_errf(eb, PS_ENOMEM, "out of memory");
  for (size_t i = 0; i < s->nids; i++) {
    const ps_chunk *ch = &c->layout.chunks[s->ids[i]];
    uint64_t off = c->layout.tensors[ch->tensor].model_offset + ch->offset;
    size_t k = s->nseg;
    if (k > 0 && s->seg_off[k - 1] + s->seg_len[k - 1] == off &&
        (uint64_t)s->seg_len[k - 1] + ch->len <= UINT32_MAX) {
      s->seg_len[k - 1] += ch->len;
      continue;
    }
    s->seg_off[k] = off;
    s->seg_len[k] = ch->len;
    s->nseg++;
  }
  for (int b = 0; b < c->nbufs; b++) {
    s->pseg[b] = calloc(s->nseg + 1, sizeof *s->pseg[b]);
    s->gseg[b] = calloc(s->nseg + 1, sizeof *s->gseg[b]);
    if (!s->pseg[b] || !s->gseg[b]) return ps_errf(eb, PS_ENOMEM, "out of memory");
    for (size_t k = 0; k < s->nseg; k++) {
      size_t len = (size_t)s->seg_len[k] * sizeof(float);
      s->pseg[b][k] = (struct iovec){c->params[b] + s->seg_off[k], len};
      s->gseg[b][k] = (struct iovec){c->grads[b] + s->seg_off[k], len};
    }
  }
  return 0;
}

/* psw_shm_area: the bytes of one area (push or pull) of a region for
 * NELEMS fp32 values, page-rounded (invariant 9): the vectors' halves and
 * a region's must match for the region to move onto the vectors. */
static uint64_t psw_shm_area(uint64_t nelems) {
  return (nelems * sizeof(float) + 4095) & ~(uint64_t)4095;
}

/* psw_zc_alloc maps grads[0] and params[0] as two page-rounded halves of
 * one anonymous mapping (invariant 9) when they can later lie in a shard's
 * region: a backend that computes on host memory, one buffer, shared
 * memory on, no payload MAC.  0 (also when not), or PS_ENOMEM. */
static int psw_zc_alloc(psw_client *c, ps_errbuf *eb) {
  if (!c->be->unified || c->nbufs != 1 || !c->cfg->workers.shared_memory ||
      c->cfg->security.payload_mac || c->layout.nparams == 0)
    return 0;
  size_t area = (size_t)psw_shm_area(c->layout.nparams);
  void *p = mmap(NULL, 2 * area, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ps_errf(eb, PS_ENOMEM, "cannot map %zu bytes of vectors", 2 * area);
  c->zc = p;
  c->zc_area = area;
  c->grads[0] = (float *)c->zc;
  c->params[0] = (float *)(c->zc + area);
  return 0;
}

/* psw_zc_place moves S's region onto the vectors when S holds the whole
 * model (invariant 9): its pushes and pulls then need no copy here. */
static void psw_zc_place(psw_client *c, psw_shard *s) {
  void *data = NULL;
  uint64_t bytes = 0;
  ps_errbuf eb;
  if (!c->zc || !s->ch || s->nelems != c->layout.nparams || s->nseg != 1 || s->seg_off[0] != 0 ||
      !ps_chan_shm(s->ch, &data, &bytes) || bytes != 2 * c->zc_area || data == c->zc)
    return;
  if (ps_chan_shm_move(s->ch, c->zc, &eb) < 0)
    ps_debug("worker %u: shard %u's shared memory stays apart from the vectors: %s", c->worker,
             s->conf->id, eb.msg);
}

/* psw_alloc_vectors allocates NBUFS parameter and gradient vectors. */
static int psw_alloc_vectors(psw_client *c, ps_errbuf *eb) {
  size_t bytes = (size_t)c->layout.nparams * sizeof(float);
  int err = psw_zc_alloc(c, eb);
  if (err < 0) return err;
  for (int b = c->zc ? 1 : 0; b < c->nbufs; b++) {
    void *p = NULL, *g = NULL;
    if (c->be->ops->host_alloc(c->be, bytes, &p) < 0)
      return ps_errf(eb, PS_ENOMEM, "cannot allocate %zu bytes of parameters", bytes);
    c->params[b] = p;
    if (c->be->ops->host_alloc(c->be, bytes, &g) < 0)
      return ps_errf(eb, PS_ENOMEM, "cannot allocate %zu bytes of gradients", bytes);
    c->grads[b] = g;
    memset(p, 0, bytes);
    memset(g, 0, bytes);
  }
  return 0;
}

/* ---- connections ------------------------------------------------------------ */

static int psw_ack_wait(psw_shard *s, ps_errbuf *eb);

/* psw_moved_on notes that S may never apply the push of step CLOCK
 * (invariant 13): its clock there is raised before the next pull.  Not
 * under asp (no pull waits on a clock), and not for a push that went to
 * an aggregator: the aggregator may still forward the sum holding it, and
 * a root told first would let other workers past that step (psd_agg.h
 * invariant 6; psw_round's failover pulls at the push's clock instead) --
 * unless REFUSED: the aggregator answered it DEGRADED, which it does only
 * with a root's refusal of the sum holding it (psd_agg.h invariants 2
 * and 5), so no sum holding it is on its way any more and nothing else
 * raises that clock (under bsp the pull behind it would wait there for
 * the worker itself, for ever). */
static void psw_moved_on(psw_shard *s, uint64_t clock, int refused) {
  if (!s->clocked || (s->via_agg && !refused)) return;
  if (clock + 1 > s->moved_on) s->moved_on = clock + 1;
}

/* psw_shard_close closes S's connection (NULL: none), keeping its byte
 * counts, and puts CH (may be NULL) in its place. */
static void psw_shard_close(psw_shard *s, ps_chan_client *ch) {
  while (s->nacks) { /* answers in are taken; the others never come */
    ps_errbuf eb;
    if (ps_chan_done(s->ch, s->ack_ids[0])) {
      psw_ack_wait(s, &eb);
      continue;
    }
    psw_moved_on(s, s->ack_clocks[0], 0);
    memmove(s->ack_ids, s->ack_ids + 1, --s->nacks * sizeof *s->ack_ids);
    memmove(s->ack_clocks, s->ack_clocks + 1, s->nacks * sizeof *s->ack_clocks);
    s->pushes_unanswered++;
    s->pushes_broken++;
  }
  uint64_t tx, rx;
  ps_chan_bytes(s->ch, &tx, &rx);
  s->tx_closed += tx;
  s->rx_closed += rx;
  ps_chan_shm_bytes(s->ch, &tx, &rx);
  s->shm_closed += tx + rx;
  ps_chan_close(s->ch); /* the vectors get their own memory back, bytes kept */
  s->ch = ch;
}

/* psw_shard_down closes S's connection and, the first time, says so: a
 * failure through the aggregator as the aggregator's (the shard itself
 * is said down only when it fails on its own). */
static void psw_shard_down(psw_client *c, psw_shard *s, const ps_errbuf *why) {
  if (s->via_agg && !c->agg_down) { /* reconnects go to the roots from now on */
    c->agg_down = 1;
    ps_warn("worker %u: aggregator %s (%s): %s; going to the root shards directly", c->worker,
            c->agg->name, c->agg->channel_addr, why->msg);
  }
  if (s->down_since_ms && s->ch) s->redown = 1; /* reconnected, and failed again */
  psw_shard_close(s, NULL);
  if (!s->down_since_ms) {
    s->down_since_ms = ps_now_ms();
    s->delay_ms = PS_BACKOFF_FIRST_MS;
    s->down_eb = *why;
  }
  if (s->via_agg || s->down_said) return;
  s->down_said = 1;
  ps_warn("worker %u: shard %u (%s): %s; reconnecting for up to %u ms", c->worker, s->conf->id,
          s->conf->channel_addr, why->msg, c->cfg->workers.retry_ms);
}

/* psw_shard_up notes that S answered a whole round again. */
static void psw_shard_up(psw_client *c, psw_shard *s) {
  if (!s->down_since_ms) return;
  if (s->down_said)
    ps_warn("worker %u: shard %u (%s) is back after %.1f s; parameters pulled again", c->worker,
            s->conf->id, s->conf->channel_addr, (double)(ps_now_ms() - s->down_since_ms) / 1e3);
  s->down_since_ms = 0;
  s->down_said = 0;
  s->redown = 0;
  s->delay_ms = PS_BACKOFF_FIRST_MS;
}

/* psw_shm_hold: whether S's region is to be held (invariant 9): always
 * but when it is to move onto the vectors (psw_zc_place), where the
 * caller rewrites the gradients at its next step. */
static int psw_shm_hold(const psw_client *c, const psw_shard *s) {
  return !(c->zc && s->nelems == c->layout.nparams && s->nseg == 1 && s->seg_off[0] == 0);
}

/* psw_chan_flags: ps_chan_connect_auth's flags for S's connections
 * (invariant 8: unordered acks when it defers them; invariant 9). */
static int psw_chan_flags(const psw_client *c, const psw_shard *s) {
  return (c->cfg->security.payload_mac ? PS_CHAN_AUTH_MAC : 0) |
         (c->defer_acks ? PS_CHAN_UNORDERED_ACKS : 0) | (psw_shm_hold(c, s) ? PS_CHAN_SHM_HOLD : 0);
}

/* psw_shm_want: the shared memory S's connections ask for (invariant 9):
 * a push area and a pull area of S's fp32 payload each, page-rounded
 * (held: PS_CHAN_SHM_PUSH_AREAS push areas); 0 when
 * workers.shared_memory is off, with the payload MAC, or through an
 * aggregator. */
static uint64_t psw_shm_want(const psw_client *c, const psw_shard *s) {
  if (!c->cfg->workers.shared_memory || c->cfg->security.payload_mac || (c->agg && !c->agg_down))
    return 0;
  return (psw_shm_hold(c, s) ? PS_CHAN_SHM_PUSH_AREAS + 1 : 2) * psw_shm_area(s->nelems);
}

/* psw_connect opens S's connection once. */
static int psw_connect(psw_client *c, psw_shard *s, ps_errbuf *eb) {
  s->via_agg = c->agg && !c->agg_down;
  const char *addr = s->via_agg ? c->agg->channel_addr : s->conf->channel_addr;
  /* the secret file's key now: a rotation moved it (ps_auth.h); a
   * training worker's hello to a root names it, so that the root counts
   * it as heard from before its first request (psd_agg.h invariant 6) */
  uint32_t named = s->via_agg || c->reader ? PS_CHAN_NO_WORKER : c->worker;
  int err = ps_chan_connect_client(&s->ch, addr, c->cfg->cluster, &c->auth, psw_chan_flags(c, s),
                                   psw_shm_want(c, s), named, PSW_CONNECT_TIMEOUT_MS, eb);
  if (err < 0) {
    s->ch = NULL;
    /* an aggregator that refuses this worker's key (another secret file
     * there) is one that failed: the roots may take the key */
    if (err == PS_EPERM && s->via_agg) {
      ps_errbuf why = *eb;
      err = ps_errf(eb, PS_EUNAVAIL, "%s", why.msg);
    }
    return err;
  }
  ps_chan_set_timeout(s->ch, c->io_timeout_ms);
  ps_chan_set_dead_ms(s->ch, ps_config_dead_ms(c->cfg)); /* a cut ends in a reconnect */
  psw_zc_place(c, s);
  return 0;
}

/* psw_reconnect reopens S's connection, sleeping with exponential backoff
 * between attempts, until it works or S has been down for retry_ms (since
 * its first failure: a shard whose every round fails again is not up). */
static int psw_reconnect(psw_client *c, psw_shard *s, ps_errbuf *eb) {
  /* one that takes connections but fails each round again counts too */
  if (s->redown && ps_now_ms() - s->down_since_ms >= (int64_t)c->cfg->workers.retry_ms)
    return ps_errf(eb, PS_EUNAVAIL, "shard %u (%s) has failed for %u ms (workers.retry_ms): %s",
                   s->conf->id, s->conf->channel_addr, c->cfg->workers.retry_ms,
                   s->down_eb.msg);
  for (;;) {
    int err = ps_sleep_ms(s->delay_ms, c->stop);
    if (err < 0) return ps_errf(eb, err, "stopped while shard %u was down", s->conf->id);
    s->delay_ms = ps_backoff_next(s->delay_ms);
    err = psw_connect(c, s, eb);
    if (err == 0) {
      c->reconnects++;
      return 0;
    }
    if (!psw_retryable(err)) return err;
    if (ps_now_ms() - s->down_since_ms >= (int64_t)c->cfg->workers.retry_ms)
      return ps_errf(eb, PS_EUNAVAIL, "shard %u (%s) unreachable for %u ms: %s", s->conf->id,
                     s->conf->channel_addr, c->cfg->workers.retry_ms, eb->msg);
  }
}

/* ---- one round: send to every shard, then receive every reply -------------- */

/* psw_codecs returns the push (PUSH) or pull codec of a step at CLOCK:
 * fp32 during the model's warm-up steps, else the model's (for a push,
 * the one that names its tensors' codecs: push_wire, which is not fp32
 * when only a tensor's own codec compresses). */
static ps_codec_id psw_codec(const psw_client *c, uint64_t clock, int push) {
  if (clock < c->layout.codec_warmup) return PS_CODEC_FP32;
  return push ? c->layout.push_wire : c->layout.pull_codec;
}

/* psw_chunk_at returns the flat-vector offset of chunk ID. */
static uint64_t psw_chunk_at(const psw_client *c, uint32_t id) {
  const ps_chunk *ch = &c->layout.chunks[id];
  return c->layout.tensors[ch->tensor].model_offset + ch->offset;
}

/* psw_grow makes *BUF hold N bytes (*LEN its size); 0 or PS_ENOMEM. */
static int psw_grow(uint8_t **buf, uint64_t *len, uint64_t n) {
  if (*buf && *len >= n) return 0;
  uint8_t *p = realloc(*buf, n ? n : 1);
  if (!p) return PS_ENOMEM;
  *buf = p;
  *len = n;
  return 0;
}

/* psw_encode encodes S's chunks of gradient buffer GBUF in CODEC, with
 * error feedback, into s->genc; *NBYTES: the payload size.  0 or
 * PS_ENOMEM.  Under a clip norm each chunk's encoding is scaled down to
 * it (ps_codec_encode_ef): the gradients come clipped (psw_train), but
 * the residual added to them is not, and the shard refuses a decoded
 * chunk over the clip norm. */
static int psw_encode(psw_client *c, psw_shard *s, int gbuf, ps_codec_id codec, uint64_t *nbytes,
                      ps_errbuf *eb) {
  const ps_layout *l = &c->layout;
  *nbytes = ps_layout_payload_bytes(l, s->ids, s->nids, codec, 1);
  if (!s->residual && !(s->residual = calloc(s->nelems ? s->nelems : 1, sizeof(float))))
    return ps_errf(eb, PS_ENOMEM, "out of memory for the error-feedback residual");
  if (psw_grow(&s->genc, &s->genc_len, *nbytes) < 0)
    return ps_errf(eb, PS_ENOMEM, "out of memory for an encoded push");
  uint8_t *out = s->genc;
  float *res = s->residual, clip = c->reply->model->clip_norm;
  for (size_t i = 0; i < s->nids; i++) {
    uint32_t id = s->ids[i], len = l->chunks[id].len;
    ps_codec_id cc = ps_layout_chunk_codec(l, id, codec, 1);
    ps_codec_encode_ef(cc, c->grads[gbuf] + psw_chunk_at(c, id), len, l->topk, clip, res, out);
    out += ps_codec_size(cc, len, l->topk);
    res += len;
  }
  return 0;
}

/* psw_decode_pull decodes S's compressed pull reply (s->penc, in
 * s->pull_codec) into parameter buffer PBUF. */
static void psw_decode_pull(psw_client *c, psw_shard *s, int pbuf) {
  const ps_layout *l = &c->layout;
  const uint8_t *in = s->penc;
  for (size_t i = 0; i < s->nids; i++) {
    uint32_t id = s->ids[i], len = l->chunks[id].len;
    ps_codec_id cc = ps_layout_chunk_codec(l, id, s->pull_codec, 0);
    ps_codec_decode(cc, in, len, l->topk, c->params[pbuf] + psw_chunk_at(c, id));
    in += ps_codec_size(cc, len, l->topk);
  }
}

/* psw_send sends S's push (GBUF >= 0) and pull (PBUF >= 0); *NSENT counts
 * the requests queued.  A compressed push is encoded first (its payload is
 * one segment); an fp32 one goes straight from the gradient buffer. */
static int psw_send(psw_client *c, psw_shard *s, int gbuf, uint64_t push_clock, int pbuf,
                    uint64_t pull_clock, int *nsent, ps_errbuf *eb) {
  *nsent = 0;
  if (gbuf >= 0) {
    ps_req r = {.model = c->model, .ids = s->ids, .nids = s->nids, .worker = c->worker,
                .clock = push_clock, .version = s->version[gbuf],
                .codec = psw_codec(c, push_clock, 1)};
    struct iovec one;
    const struct iovec *seg = s->gseg[gbuf];
    size_t nseg = s->nseg;
    int err = 0;
    if (r.codec != PS_CODEC_FP32 && (err = psw_encode(c, s, gbuf, r.codec, &r.nbytes, eb)) == 0) {
      one = (struct iovec){s->genc, r.nbytes};
      seg = &one;
      nseg = 1;
    }
    uint64_t tx0, tx1, rx;
    ps_chan_bytes(s->ch, &tx0, &rx);
    if (err == 0) err = ps_chan_send_pushv(s->ch, &r, seg, nseg, &s->push_id, eb);
    ps_chan_bytes(s->ch, &tx1, &rx);
    s->push_tx += tx1 - tx0; /* a send writes its own frame only */
    s->push_clock = push_clock;
    if (err < 0) {
      s->pushes_unanswered++; /* part of it may have gone out */
      s->pushes_broken++;
      psw_moved_on(s, push_clock, 0);
      return err;
    }
    (*nsent)++;
  }
  if (pbuf >= 0) {
    ps_req r = {.model = c->model, .ids = s->ids, .nids = s->nids, .worker = c->worker,
                .clock = pull_clock, .codec = psw_codec(c, pull_clock, 0)};
    struct iovec one;
    const struct iovec *seg = s->pseg[pbuf];
    size_t nseg = s->nseg;
    int err = 0;
    s->pull_codec = r.codec;
    if (r.codec != PS_CODEC_FP32) {
      r.nbytes = ps_layout_payload_bytes(&c->layout, s->ids, s->nids, r.codec, 0);
      if (psw_grow(&s->penc, &s->penc_len, r.nbytes) < 0)
        err = ps_errf(eb, PS_ENOMEM, "out of memory for an encoded pull");
      one = (struct iovec){s->penc, r.nbytes};
      seg = &one;
      nseg = 1;
    }
    if (err == 0) err = ps_chan_send_pullv(s->ch, &r, seg, nseg, &s->pull_id, eb);
    if (err < 0 && gbuf >= 0) { /* its reply is never read */
      s->pushes_unanswered++, s->pushes_broken++;
      psw_moved_on(s, push_clock, 0);
    }
    if (err < 0) return err;
    (*nsent)++;
  }
  return 0;
}

/* psw_push_answer counts the answer ERR (VERSION) to S's push (ANSWERED:
 * ERR came from the peer, not from this worker's stop): acknowledged, or
 * unanswered (not acknowledged: whatever the error).  A retryable
 * error, or a refusal for an expired lease, counts in pushes_broken too
 * (the trainer trains its batch again): the connection broke before the
 * answer (applied or not), the shard refused it unapplied (draining,
 * restarting: a sample is trained at least once), or, through the
 * aggregator, a root's failure was relayed (psd_agg.h invariant 5: a link
 * that broke, timed out or could not connect, with the sum in flight or
 * not yet sent: applied or not).  A DEGRADED refusal does not: the worker
 * goes on without its updates there (invariant 12), as it does when its
 * own stop cut the wait short; it counts as refused, or as unsynced when
 * WHY, the answer's message (read only then), says the push was applied
 * in memory and its sync failed (README "Durability"). */
static void psw_push_answer(psw_shard *s, int err, uint64_t version, int answered,
                            const char *why, uint64_t clock) {
  if (answered && err == PS_EDEGRADED) {
    if (strstr(why, PS_DEGRADED_IN_MEMORY)) s->pushes_unsynced++;
    else s->pushes_refused++;
  }
  if (err == 0) {
    s->pushed_version = version;
    s->pushes_acked++;
  }
  if (err < 0) s->pushes_unanswered++;
  /* (raising a clock the push raised changes nothing, but costs a call) */
  if (err < 0 && !(answered && err == PS_EDEGRADED && strstr(why, PS_DEGRADED_IN_MEMORY)))
    psw_moved_on(s, clock, answered && err == PS_EDEGRADED);
  int refused = answered && err != PS_EDEGRADED;
  if (err == PS_EEXPIRED ||
      (err < 0 && psw_retryable(err) && (refused || !ps_chan_alive(s->ch))))
    s->pushes_broken++;
  if (err == PS_EEXPIRED) s->pushes_expired++;
}

/* psw_ack_wait takes S's oldest deferred push answer (invariant 8),
 * waiting for it when it is not in yet; 0, or the push's error (EB). */
static int psw_ack_wait(psw_shard *s, ps_errbuf *eb) {
  if (!s->nacks) return 0;
  uint64_t id = s->ack_ids[0], clock = s->ack_clocks[0], version = 0;
  memmove(s->ack_ids, s->ack_ids + 1, --s->nacks * sizeof *s->ack_ids);
  memmove(s->ack_clocks, s->ack_clocks + 1, s->nacks * sizeof *s->ack_clocks);
  ps_errbuf reb;
  int err = ps_chan_recv_id(s->ch, id, &version, &reb);
  psw_push_answer(s, err, version, 1, reb.msg, clock);
  return err < 0 ? ps_errf(eb, err, "push failed: %s", reb.msg) : 0;
}

/* psw_agg_hung says whether S's connection, quiet for QUIET_MS, waits on
 * an aggregator that no longer answers (invariant 7a): once a request on
 * a connection through it has had no byte back for half a lease, and no
 * probe was answered within that half lease, a new connection to the
 * aggregator must finish its hello within a lease.  A live aggregator's
 * loop answers a hello at once, whatever it holds (a pull parked on a
 * root, a sum waiting for a straggler: those pause only their own
 * connection, psd_chan invariant 7); a stopped or wedged one does not,
 * though its kernel still acknowledges TCP.  One that did not is hung:
 * every wait on a connection through it ends (said once), and they fail
 * over as when it died. */
static int psw_agg_hung(psw_client *c, const psw_shard *s, int64_t quiet_ms) {
  if (!s->via_agg || !c->agg) return 0;
  if (c->agg_hung) return 1;
  int64_t lease = c->cfg->workers.lease_ms, now = ps_now_ms();
  if (quiet_ms < lease / 2 || (c->agg_heard_ms && now - c->agg_heard_ms < lease / 2) ||
      (c->stop && *c->stop))
    return 0;
  ps_chan_client *probe = NULL;
  ps_errbuf eb = {""};
  int err = ps_chan_connect_client(&probe, c->agg->channel_addr, c->cfg->cluster, &c->auth,
                                   c->cfg->security.payload_mac ? PS_CHAN_AUTH_MAC : 0, 0,
                                   PS_CHAN_NO_WORKER, (int)lease, &eb);
  ps_chan_close(probe);
  /* only silence for the lease is a hung aggregator: any answer shows its
   * loop runs (a refusal of this worker's key, an error frame at its
   * limits.max_connections, a close at accept when short of descriptors),
   * and a probe this worker could not make (no descriptor, no address)
   * says nothing of it */
  if (err != PS_ETIMEDOUT) {
    c->agg_heard_ms = ps_now_ms();
    ps_debug("worker %u: aggregator %s answered a liveness probe in %lld ms (%s), a request "
             "waiting on it for %.1f s", c->worker, c->agg->name,
             (long long)(c->agg_heard_ms - now), err == 0 ? "hello" : eb.msg,
             (double)(quiet_ms + c->agg_heard_ms - now) / 1e3);
    return 0;
  }
  c->agg_hung = 1;
  ps_warn("worker %u: aggregator %s (%s) did not answer a liveness probe within %lld ms (%s) "
          "while a request waited on it for %.1f s: taken as dead", c->worker, c->agg->name,
          c->agg->channel_addr, (long long)lease, eb.msg,
          (double)(quiet_ms + ps_now_ms() - now) / 1e3);
  return 1;
}

/* psw_chan_await_or is psw_chan_await that also returns 0 once request
 * OR's reply is in (OR 0: none), polling even without a stop flag; with
 * PC, a wait on PS's connection through the aggregator also ends as
 * after IO_TIMEOUT_MS once psw_agg_hung finds the aggregator hung. */
static int psw_chan_await_or(ps_chan_client *ch, uint64_t id, uint64_t or,
                             volatile sig_atomic_t *stop, int64_t *stop_seen, int grace_ms,
                             int io_timeout_ms, psw_client *pc, const psw_shard *ps) {
  static volatile sig_atomic_t never;
  if (!stop && !or && !(pc && ps->via_agg)) return 0;
  if (!stop) stop = &never;
  uint64_t tx, rx, seen;
  ps_chan_bytes(ch, &tx, &seen);
  int64_t quiet_since = ps_now_ms();
  /* the first look does not wait: a stop that came while another shard's
   * reply was awaited ends this one's wait at once, not a poll later; a
   * push's answer, which normally follows within a sync, is waited for
   * GRACE_MS more (the step then ends with nothing in flight: an exact
   * handover), not for a shard that hangs */
  int64_t own = 0, *stop_at = stop_seen ? stop_seen : &own;
  for (int wait = 0;; wait = PSW_STOP_POLL_MS) {
    ps_errbuf web;
    if (ps_chan_wait_id(ch, id, wait, &web) != 0 || (or && ps_chan_done(ch, or))) return 0;
    if (*stop && !*stop_at) *stop_at = ps_now_ms();
    if (*stop && ps_now_ms() - *stop_at >= grace_ms) return PS_ESHUTDOWN;
    ps_chan_bytes(ch, &tx, &rx);
    int64_t now = ps_now_ms();
    if (rx != seen) {
      seen = rx;
      quiet_since = now;
    } else if (now - quiet_since >= io_timeout_ms ||
               (pc && psw_agg_hung(pc, ps, now - quiet_since))) {
      ps_chan_set_timeout(ch, 1); /* the caller sets it back */
      return 0;
    }
  }
}

/* psw_chan_await: see psw_client.h. */
int psw_chan_await(ps_chan_client *ch, uint64_t id, volatile sig_atomic_t *stop,
                   int64_t *stop_seen, int grace_ms, int io_timeout_ms) {
  return psw_chan_await_or(ch, id, 0, stop, stop_seen, grace_ms, io_timeout_ms, NULL, NULL);
}

/* psw_await waits for S's reply to request ID (its push when PUSH, else
 * its pull of CLOCK) as psw_chan_await says (invariant 11): a pull may
 * wait parked on the shard up to pull_timeout_ms, and a shard that hangs
 * answers neither.  A push's answer is waited for PSW_STOP_PUSH_GRACE_MS
 * past a stop.  PS_ESHUTDOWN when a stop came first: the reply is left
 * in flight.  OR (0: none): the wait also ends once that request's reply
 * is in. */
static int psw_await(psw_client *c, psw_shard *s, uint64_t id, uint64_t or, int push,
                     uint64_t clock, ps_errbuf *eb) {
  if (psw_chan_await_or(s->ch, id, or, c->stop, &c->stop_seen_ms,
                        push ? PSW_STOP_PUSH_GRACE_MS : 0, c->io_timeout_ms, c, s) == 0)
    return 0;
  return push ? ps_errf(eb, PS_ESHUTDOWN, "stopped while waiting for the answer to a push")
              : ps_errf(eb, PS_ESHUTDOWN, "stopped while waiting for the pull of clock %llu",
                        (unsigned long long)clock);
}

/* psw_push_refused_fatal says whether a push's answer ERR is a refusal
 * that ends the round (psw_round: not retryable, not for an expired
 * lease): the shard applied nothing, so it raised no clock, and the pull
 * behind it may be parked on that very clock (under bsp it waits for the
 * worker itself).  That pull is not waited for: its reply is left in
 * flight (the connection is kept, as after a stop: invariant 11). */
static int psw_push_refused_fatal(int err) {
  return err < 0 && !psw_retryable(err) && err != PS_EEXPIRED;
}

/* psw_say_moved_on tells shard S that the worker went on past a push S
 * may never have applied (invariant 13): a heartbeat with moved_on, on
 * the shard's own gRPC address (the roots hold the clocks, also behind
 * an aggregator), which raises the worker's clock there as the push
 * would have.  Said once: a shard that does not answer is told again
 * before the next pull. */
static void psw_say_moved_on(psw_client *c, psw_shard *s) {
  Ps__HeartbeatRequest req = PS__HEARTBEAT_REQUEST__INIT;
  req.worker = c->worker;
  req.model = c->model;
  req.clock = req.moved_on = s->moved_on;
  ProtobufCMessage *resp = NULL;
  ps_errbuf eb;
  int err = psw_call_once(c, s->conf->grpc_addr, "/ps.Ps/Heartbeat", &req.base,
                          &ps__heartbeat_reply__descriptor, &resp, PSW_GETMODEL_TIMEOUT_MS, &eb);
  if (err == 0 && ((Ps__HeartbeatReply *)resp)->expired) /* its rejoin enters it again */
    err = ps_errf(&eb, PS_EEXPIRED, "declared dead there");
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  if (err < 0) {
    ps_debug("worker %u: shard %u not told of clock %llu yet: %s", c->worker, s->conf->id,
             (unsigned long long)s->moved_on, eb.msg);
    return;
  }
  ps_debug("worker %u: shard %u told that the worker went on to clock %llu", c->worker,
           s->conf->id, (unsigned long long)s->moved_on);
  s->moved_on = 0;
}

/* psw_recv receives S's NSENT replies; the first error is returned, but
 * every reply is read unless the connection broke or the push was
 * refused (psw_push_refused_fatal).  *PARKED_MS: how long the shard kept
 * the pull parked.  Deferring acks (invariant 8), the pull is taken
 * first, and a push answer that is not in by then is left for a later
 * round (unless the pull failed: then it is waited for here); a push
 * answer that comes in while the pull is awaited (a refusal comes at
 * once, ahead of the pull) is taken first.  Then the answers earlier
 * rounds left are taken: those already in, and the oldest ones, waited
 * for, down to PSW_CLIENT_ACK_DEPTH left. */
static int psw_recv(psw_client *c, psw_shard *s, int gbuf, int pbuf, uint64_t pull_clock,
                    int nsent, uint32_t *parked_ms, int *pull_err, ps_errbuf *eb) {
  int first = 0;
  *pull_err = 0;
  int defer = c->defer_acks && gbuf >= 0 && nsent == 2;
  *parked_ms = 0;
  for (int i = 0; i < nsent; i++) {
    uint64_t version = 0;
    ps_errbuf reb;
    int is_push = gbuf >= 0 && (defer ? i == 1 : i == 0);
    if (defer && is_push && !first && !ps_chan_done(s->ch, s->push_id)) {
      s->ack_clocks[s->nacks] = s->push_clock;
      s->ack_ids[s->nacks++] = s->push_id; /* at most the depth were left */
      break;
    }
    uint64_t id = is_push ? s->push_id : s->pull_id;
    uint64_t or = defer && !is_push ? s->push_id : 0;
    int err = psw_await(c, s, id, or, is_push, pull_clock, &reb), answered = err == 0;
    if (or && err == 0 && !ps_chan_done(s->ch, id) && ps_chan_done(s->ch, or)) {
      defer = 0; /* the push's answer came first: taken first */
      i = -1;
      continue;
    }
    if (err == 0) err = ps_chan_recv_id(s->ch, id, &version, &reb);
    ps_chan_set_timeout(s->ch, c->io_timeout_ms); /* (psw_await may have cut it) */
    if (!is_push) *pull_err = err;
    if (is_push) psw_push_answer(s, err, version, answered, reb.msg, s->push_clock);
    /* a refused push raised no clock: the pull behind it, parked on this
     * worker's own clock under bsp, is released by the word (invariant 13) */
    if (is_push && answered && err == PS_EDEGRADED && s->moved_on && ps_chan_alive(s->ch))
      psw_say_moved_on(c, s);
    if (err == 0 && !is_push) {
      if (s->pull_codec != PS_CODEC_FP32) psw_decode_pull(c, s, pbuf);
      s->version[pbuf] = version;
      if (c->held) c->held[s->index] = 1;
      *parked_ms = ps_chan_last_parked_ms(s->ch);
    }
    if (err < 0 && !first) {
      first = err;
      ps_errf(eb, err, "%s failed: %s", is_push ? "push" : "pull", reb.msg);
    }
    /* a broken connection answers nothing more; a shard's refusal leaves
     * it usable, and the other reply is read (invariant 12), but for a
     * push refused for good */
    if (err < 0 && psw_retryable(err) && !(defer && !is_push) && !ps_chan_alive(s->ch)) break;
    if (is_push && answered && psw_push_refused_fatal(err)) break;
  }
  while (s->nacks > PSW_CLIENT_ACK_DEPTH || (s->nacks && ps_chan_done(s->ch, s->ack_ids[0]))) {
    ps_errbuf reb;
    int err = psw_ack_wait(s, &reb);
    if (err < 0 && !first) first = ps_errf(eb, err, "%s", reb.msg);
  }
  return first;
}

/* psw_same_layout says whether SPEC cuts into the chunks the client's
 * layout has (tensors, chunks, their sizes and shards): a model replaced
 * with the same shape does (its job starts over; the worker goes on). */
static int psw_same_layout(const psw_client *c, const Ps__ModelSpec *spec) {
  uint32_t *ids = calloc(c->cfg->nshards + 1, sizeof *ids);
  if (!ids) return 1; /* cannot tell: the shard's own error stands */
  ps_config_shard_ids(c->cfg, ids);
  ps_layout l;
  ps_errbuf eb;
  int same = 0;
  if (ps_layout_build(&l, spec, c->cfg->chunk_elems, ids, c->cfg->nshards, &eb) == 0) {
    const ps_layout *o = &c->layout;
    same = l.nparams == o->nparams && l.ntensors == o->ntensors && l.nchunks == o->nchunks;
    for (size_t i = 0; same && i < l.nchunks; i++)
      same = l.chunks[i].tensor == o->chunks[i].tensor &&
             l.chunks[i].offset == o->chunks[i].offset && l.chunks[i].len == o->chunks[i].len &&
             l.chunks[i].shard == o->chunks[i].shard;
    ps_layout_release(&l);
  }
  free(ids);
  return same;
}

/* psw_str_eq compares two optional protobuf strings (NULL reads as ""). */
static int psw_str_eq(const char *a, const char *b) { return !strcmp(a ? a : "", b ? b : ""); }

/* psw_same_bound says whether SPEC has the client's staleness bound:
 * the same consistency, and under ssp the same staleness.  The worker's
 * schedule depends on it (overlap: psw_train), and its clock, run apart
 * from the others' under a looser bound, would hold them back (or be
 * held) for as many steps under a stricter one. */
static int psw_same_bound(const psw_client *c, const Ps__ModelSpec *spec) {
  ps_consistency now = PS_ASP;
  ps_errbuf eb;
  if (ps_consistency_parse(spec->name, spec->consistency, &now, &eb) < 0) return 0;
  return now == c->layout.consistency &&
         (now != PS_SSP || spec->staleness == c->reply->model->staleness);
}

/* psw_same_worker_side says whether SPEC asks the same of the worker as
 * the client's (the same layout given): its graph, clipping, codecs and
 * staleness bound (psw_same_bound).  What only the shards apply
 * (optimizer, learning rate, seed, staleness weight) may differ. */
static int psw_same_worker_side(const psw_client *c, const Ps__ModelSpec *spec) {
  const Ps__ModelSpec *o = c->reply->model;
  if (!psw_same_bound(c, spec) || o->graph.len != spec->graph.len ||
      (o->graph.len && memcmp(o->graph.data, spec->graph.data, o->graph.len)) ||
      o->clip_norm != spec->clip_norm || !psw_str_eq(o->codec, spec->codec) ||
      !psw_str_eq(o->pull_codec, spec->pull_codec) || o->topk != spec->topk ||
      o->codec_warmup_steps != spec->codec_warmup_steps ||
      o->codec_min_elems != spec->codec_min_elems || o->n_tensors != spec->n_tensors)
    return 0;
  for (size_t i = 0; i < o->n_tensors; i++)
    if (!psw_str_eq(o->tensors[i]->codec, spec->tensors[i]->codec)) return 0;
  return 1;
}

/* psw_spec_pack packs SPEC into a new buffer *OUT (*LEN bytes); 0 or
 * PS_ENOMEM. */
static int psw_spec_pack(const Ps__ModelSpec *spec, uint8_t **out, size_t *len, ps_errbuf *eb) {
  *len = protobuf_c_message_get_packed_size(&spec->base);
  if (!(*out = malloc(*len ? *len : 1))) return ps_errf(eb, PS_ENOMEM, "out of memory");
  protobuf_c_message_pack(&spec->base, *out);
  return 0;
}

/* psw_spec_note counts SPEC, which the worker may go on with, as a
 * replace (c->spec_changes) when it differs from the last one seen (the
 * open's at first): a submit with other settings that only the shards
 * apply, which restarts the job (psw_client_spec_changes). */
static int psw_spec_note(psw_client *c, const Ps__ModelSpec *spec, ps_errbuf *eb) {
  if (!c->spec_seen && psw_spec_pack(c->reply->model, &c->spec_seen, &c->spec_seen_len, eb) < 0)
    return PS_ENOMEM;
  uint8_t *now;
  size_t len;
  if (psw_spec_pack(spec, &now, &len, eb) < 0) return PS_ENOMEM;
  if (len == c->spec_seen_len && !memcmp(now, c->spec_seen, len)) {
    free(now);
    return 0;
  }
  free(c->spec_seen);
  c->spec_seen = now;
  c->spec_seen_len = len;
  c->spec_changes++;
  return 0;
}

/* psw_spec_check asks shard S for the model's spec again and compares it
 * with the client's: 0 when the worker may go on (the same layout and
 * worker side: psw_same_worker_side), else PS_EINVAL saying that the
 * model is gone or was replaced and the workers must start again (WHY,
 * may be NULL: the refusal that made the client ask); 0 too when the
 * shard does not answer (it cannot tell). */
static int psw_spec_check(psw_client *c, psw_shard *s, const ps_errbuf *why, ps_errbuf *eb) {
  Ps__GetModelRequest req = PS__GET_MODEL_REQUEST__INIT;
  req.name = c->model;
  ProtobufCMessage *resp = NULL;
  ps_errbuf geb;
  char tail[sizeof why->msg + 32] = "";
  if (why) snprintf(tail, sizeof tail, " (shard %u: %s)", s->conf->id, why->msg);
  int gerr = psw_call_once(c, s->conf->grpc_addr, "/ps.Ps/GetModel", &req.base,
                           &ps__get_model_reply__descriptor, &resp, PSW_GETMODEL_TIMEOUT_MS, &geb);
  /* "no longer" only where this worker saw it: a shard that did not
   * answer when the client opened may never have had it */
  if (gerr == PS_ENOENT && c->held && c->held[s->index])
    return ps_errf(eb, PS_EINVAL, "model '%s' is no longer on the cluster%s", c->model, tail);
  if (gerr == PS_ENOENT)
    return ps_errf(eb, PS_EINVAL, "model '%s' is not on shard %u, which holds part of it, and "
                   "this worker never saw it there%s: submit it again (psctl submit; --replace "
                   "with other settings) once every shard takes it", c->model, s->conf->id, tail);
  if (gerr < 0) return 0; /* cannot tell: a refusal of the data path will */
  if (c->held) c->held[s->index] = 1;
  const Ps__ModelSpec *spec = ((const Ps__GetModelReply *)resp)->model;
  int err = 0;
  if (spec && !psw_same_layout(c, spec))
    err = ps_errf(eb, PS_EINVAL, "model '%s' was replaced with another layout%s; start the "
                  "workers again", c->model, tail);
  else if (spec && !psw_same_worker_side(c, spec))
    err = ps_errf(eb, PS_EINVAL, "model '%s' was replaced with another graph, clip norm, "
                  "codec or consistency%s; start the workers again", c->model, tail);
  if (err == 0 && spec) err = psw_spec_note(c, spec, eb);
  protobuf_c_message_free_unpacked(resp, NULL);
  return err;
}

/* psw_refused turns shard S's refusal ERR (WHY) of a push or pull into
 * the call's error (invariant 10).  A request naming chunks the shard
 * does not have, or of another size (PS_ENOENT, PS_EINVAL), is what a
 * model replaced with another layout (psctl submit --replace) or removed
 * since the client fetched it gets: the shard's spec is fetched again to
 * say which (psw_spec_check).  Never PS_ENOENT, which callers read as a
 * partition taken away (psw_train). */
static int psw_refused(psw_client *c, psw_shard *s, int err, const ps_errbuf *why,
                       ps_errbuf *eb) {
  if (err != PS_ENOENT && err != PS_EINVAL)
    return ps_errf(eb, err, "shard %u: %s", s->conf->id, why->msg);
  if (psw_spec_check(c, s, why, eb) < 0) return PS_EINVAL;
  return ps_errf(eb, PS_EINVAL, "shard %u: %s", s->conf->id, why->msg);
}

/* psw_client_spec_changes: see psw_client.h. */
uint64_t psw_client_spec_changes(const psw_client *c) { return c->spec_changes; }

/* psw_client_spec_check: see psw_client.h. */
int psw_client_spec_check(psw_client *c, ps_errbuf *eb) {
  for (size_t k = 0; k < c->nshards; k++)
    if (c->shards[k].nids) return psw_spec_check(c, &c->shards[k], NULL, eb);
  return 0;
}

/* psw_push_refused notes that S refused a push as DEGRADED (WHY), its
 * connection kept and the round's pull served (invariant 12): said at
 * the first refusal and at most every PSW_SAY_AGAIN_MS after; once S has
 * refused for workers.retry_ms, PS_EDEGRADED ends the call. */
static int psw_push_refused(psw_client *c, psw_shard *s, const ps_errbuf *why, ps_errbuf *eb) {
  int64_t now = ps_now_ms();
  uint32_t budget = c->cfg->workers.retry_ms;
  if (!s->refused_since_ms) {
    s->refused_since_ms = s->refused_said_ms = now;
    ps_warn("worker %u: shard %u (%s): %s; going on without its updates there for up to %u ms "
            "(workers.retry_ms)", c->worker, s->conf->id, s->conf->channel_addr, why->msg, budget);
    return 0;
  }
  if (now - s->refused_since_ms >= (int64_t)budget)
    return ps_errf(eb, PS_EDEGRADED, "shard %u (%s) has refused pushes for %u ms "
                   "(workers.retry_ms): %s", s->conf->id, s->conf->channel_addr, budget, why->msg);
  if (now - s->refused_said_ms >= PSW_SAY_AGAIN_MS) {
    s->refused_said_ms = now;
    ps_warn("worker %u: shard %u still refuses pushes after %.1f s (giving up at %.1f s): %s",
            c->worker, s->conf->id, (double)(now - s->refused_since_ms) / 1e3,
            (double)budget / 1e3, why->msg);
  }
  return 0;
}

/* psw_push_taken notes that S acknowledged a push again after refusing
 * them. */
static void psw_push_taken(psw_client *c, psw_shard *s) {
  if (!s->refused_since_ms) return;
  ps_warn("worker %u: shard %u (%s) takes pushes again after %.1f s", c->worker, s->conf->id,
          s->conf->channel_addr, (double)(ps_now_ms() - s->refused_since_ms) / 1e3);
  s->refused_since_ms = 0;
}

/* psw_slow_said: see psw_client.h. */
void psw_slow_said(const char *who, uint64_t pull_clock, int64_t *since, int64_t *said,
                   const char *why) {
  int64_t now = ps_now_ms();
  if (!*since) {
    *since = *said = now;
    ps_warn("%s: %s; waiting for that worker: the pull goes on once it catches up or its "
            "lease (workers.lease_ms) runs out", who, why);
  } else if (now - *said >= PSW_SAY_AGAIN_MS) {
    *said = now;
    ps_warn("%s: the pull of clock %llu still waits for a slower worker after %.1f s: %s", who,
            (unsigned long long)pull_clock, (double)(now - *since) / 1e3, why);
  }
}

/* psw_round runs one push/pull round over every shard that has chunks.
 * Shards that fail retryably are marked down (*DOWN counts them); those
 * that refused the worker as expired are counted in *EXPIRED (message in
 * XEB; invariant 5); any other failure is returned. */
static int psw_round(psw_client *c, int gbuf, uint64_t push_clock, int pbuf,
                     uint64_t pull_clock, size_t *down, size_t *expired, ps_errbuf *xeb,
                     size_t *slow, ps_errbuf *seb_slow, ps_errbuf *eb) {
  int sent[c->nshards > 0 ? c->nshards : 1];
  int fatal = 0;
  *down = *expired = *slow = 0;
  for (size_t k = 0; k < c->nshards; k++) {
    psw_shard *s = &c->shards[k];
    sent[k] = -1;
    if (!s->nids) continue;
    ps_errbuf seb;
    /* A shard left without a connection (by psw_client_settle, or an
     * earlier call that failed) is reconnected at once, so that this
     * round's push goes out. */
    int err = s->ch ? 0 : psw_reconnect(c, s, &seb);
    if (err < 0) {
      if (gbuf >= 0) c->pushes_skipped++;
      if (!fatal) fatal = ps_errf(eb, err, "shard %u: %s", s->conf->id, seb.msg);
      continue;
    }
    if (s->moved_on && pbuf >= 0) psw_say_moved_on(c, s); /* before the pull: invariant 13 */
    err = psw_send(c, s, gbuf, push_clock, pbuf, pull_clock, &sent[k], &seb);
    if (err < 0 && psw_retryable(err)) {
      psw_shard_down(c, s, &seb);
      sent[k] = -1;
    } else if (err < 0 && !fatal) {
      fatal = ps_errf(eb, err, "shard %u: %s", s->conf->id, seb.msg);
    }
  }
  if (c->idle_fn) { /* the requests are out: the caller's work meanwhile */
    void (*fn)(void *) = c->idle_fn;
    c->idle_fn = NULL;
    fn(c->idle_arg);
  }
  uint32_t parked = 0; /* the shards park a pull at the same time: the longest */
  for (size_t k = 0; k < c->nshards; k++) {
    psw_shard *s = &c->shards[k];
    if (sent[k] < 0) continue;
    ps_errbuf reb;
    uint32_t ms;
    int pull_err;
    uint64_t acked0 = s->pushes_acked;
    int err = psw_recv(c, s, gbuf, pbuf, pull_clock, sent[k], &ms, &pull_err, &reb);
    int alive = err < 0 && ps_chan_alive(s->ch); /* the shard answered: it is up */
    if (ms > parked) parked = ms;
    if (s->pushes_acked > acked0) psw_push_taken(c, s);
    if (err == PS_ESHUTDOWN && c->stop && *c->stop && alive) {
      if (!fatal) fatal = ps_errf(eb, err, "shard %u: %s", s->conf->id, reb.msg);
    } else if (alive && pull_err == PS_ETIMEDOUT && psw_retryable(err)) { /* parked too long */
      psw_shard_up(c, s); /* it answers: a later break counts retry_ms from then */
      if ((*slow)++ == 0) ps_errf(seb_slow, err, "shard %u: %s", s->conf->id, reb.msg);
    } else if (alive && err == PS_EDEGRADED && pull_err == 0) { /* the pull is in */
      if ((err = psw_push_refused(c, s, &reb, eb)) < 0 && !fatal) fatal = err;
    } else if (err < 0 && psw_retryable(err)) psw_shard_down(c, s, &reb);
    else if (err == PS_EEXPIRED && (*expired)++ == 0)
      ps_errf(xeb, err, "shard %u: %s", s->conf->id, reb.msg);
    else if (err < 0 && err != PS_EEXPIRED && !fatal)
      fatal = psw_refused(c, s, err, &reb, eb);
  }
  for (size_t k = 0; k < c->nshards; k++)
    if (c->shards[k].nids && !c->shards[k].ch) (*down)++;
  c->parked_ms += parked;
  return fatal;
}

/* psw_rejoin_step: see psw_client.h. */
int psw_rejoin_step(const psw_rejoin_ctx *r, int64_t *since, uint32_t *delay, const char *why_in,
                    ps_errbuf *eb) {
  char why[sizeof eb->msg]; /* WHY_IN may be EB's own message */
  snprintf(why, sizeof why, "%s", why_in);
  if (!r->rejoin) return ps_errf(eb, PS_EEXPIRED, "%s", why);
  int64_t now = ps_now_ms();
  if (!*since) {
    *since = now; /* said with the rejoin: a stale refusal says nothing */
  } else {
    if (now - *since >= (int64_t)r->retry_ms)
      return ps_errf(eb, PS_EEXPIRED, "still refused after rejoining for %u ms: %s", r->retry_ms,
                     why);
    int err = ps_sleep_ms(*delay, r->stop);
    if (err < 0) return ps_errf(eb, err, "stopped while rejoining");
    *delay = ps_backoff_next(*delay);
  }
  int err = r->rejoin(r->arg, eb);
  if (err == 0) ps_warn("%s: rejoined; %s (refused: %s)", r->who, r->after, why);
  return err < 0 ? err : 0;
}

/* psw_rejoin handles a round some shard refused as expired (invariant 5):
 * psw_rejoin_step with the client's hook. */
static int psw_rejoin(psw_client *c, int64_t *since, uint32_t *delay, const ps_errbuf *xeb,
                      ps_errbuf *eb) {
  char who[32];
  snprintf(who, sizeof who, "worker %u", c->worker);
  psw_rejoin_ctx r = {.rejoin = c->rejoin, .arg = c->rejoin_arg, .stop = c->stop,
                      .retry_ms = c->cfg->workers.retry_ms, .who = who,
                      .after = "parameters pulled again"};
  return psw_rejoin_step(&r, since, delay, xeb->msg, eb);
}

/* psw_client_push_pull: see psw_client.h.  After any shard went down and
 * came back, the pull is repeated on every shard (invariant 1); pushes are
 * not repeated (invariant 4). */
static int psw_push_pull(psw_client *c, int gbuf, uint64_t push_clock, int pbuf,
                         uint64_t pull_clock, ps_errbuf *eb);

/* psw_client_idle_once: see psw_client.h. */
void psw_client_idle_once(psw_client *c, void (*fn)(void *arg), void *arg) {
  c->idle_fn = fn;
  c->idle_arg = arg;
}

int psw_client_push_pull(psw_client *c, int gbuf, uint64_t push_clock, int pbuf,
                         uint64_t pull_clock, ps_errbuf *eb) {
  int err = psw_push_pull(c, gbuf, push_clock, pbuf, pull_clock, eb);
  c->idle_fn = NULL; /* not run (nothing went out): it never runs later */
  return err;
}

/* psw_push_pull is psw_client_push_pull (the idle work aside). */
static int psw_push_pull(psw_client *c, int gbuf, uint64_t push_clock, int pbuf,
                         uint64_t pull_clock, ps_errbuf *eb) {
  if (gbuf >= c->nbufs || pbuf >= c->nbufs)
    return ps_errf(eb, PS_EINVAL, "buffer %d/%d out of range", gbuf, pbuf);
  int64_t expired_since = 0, slow_since = 0, slow_said = 0;
  uint32_t delay = PS_BACKOFF_FIRST_MS;
  for (;;) {
    size_t down = 0, expired = 0, slow = 0;
    ps_errbuf xeb = {""}, seb = {""};
    /* Which pushes go through the aggregator: every connection while it
     * serves, and after a failure through it the connections that did
     * not fail then (they stay on it until they break or the epoch
     * boundary moves every connection back: psw_client_agg_return). */
    for (size_t k = 0; k < c->nshards; k++) {
      psw_shard *s = &c->shards[k];
      s->round_agg = s->ch ? s->via_agg : c->agg && !c->agg_down;
    }
    int err = psw_round(c, gbuf, push_clock, pbuf, pull_clock, &down, &expired, &xeb, &slow,
                        &seb, eb);
    if (err < 0) return err;
    /* A connection through the aggregator broke with this push
     * unanswered: the sum holding it may never have reached the roots, so
     * they may hold this worker (and its neighbours) at PUSH_CLOCK.  The
     * repeated pull asks for that clock, not one a lost push would make
     * the roots wait for forever (BSP): one step of staleness at most,
     * once, at failover. */
    int agg_lost = 0;
    for (size_t k = 0; k < c->nshards; k++)
      if (c->shards[k].round_agg && c->shards[k].nids && !c->shards[k].ch) agg_lost = 1;
    if (agg_lost && gbuf >= 0 && pull_clock > push_clock) pull_clock = push_clock;
    if (!down && !expired && !slow) {
      for (size_t k = 0; k < c->nshards; k++) psw_shard_up(c, &c->shards[k]);
      if (slow_since)
        ps_warn("worker %u: the pull of clock %llu went on after waiting %.1f s for a slower "
                "worker", c->worker, (unsigned long long)pull_clock,
                (double)(ps_now_ms() - slow_since) / 1e3);
      return 0;
    }
    if (slow) {
      char who[32];
      snprintf(who, sizeof who, "worker %u", c->worker);
      psw_slow_said(who, pull_clock, &slow_since, &slow_said, seb.msg);
    }
    if (expired && (err = psw_rejoin(c, &expired_since, &delay, &xeb, eb)) < 0) return err;
    for (size_t k = 0; k < c->nshards; k++) {
      psw_shard *s = &c->shards[k];
      if (s->nids && !s->ch && (err = psw_reconnect(c, s, eb)) < 0) return err;
    }
    gbuf = -1;
    if (pbuf < 0) return 0; /* nothing to pull; the next pull gets everything */
  }
}

/* psw_client_settle: see psw_client.h. */
int psw_client_settle(psw_client *c, ps_errbuf *eb) {
  int fatal = 0;
  for (size_t k = 0; k < c->nshards; k++) {
    psw_shard *s = &c->shards[k];
    while (s->nacks) {
      ps_errbuf seb;
      int err = psw_ack_wait(s, &seb);
      if (err == PS_EDEGRADED && ps_chan_alive(s->ch)) { /* invariant 12 */
        if ((err = psw_push_refused(c, s, &seb, eb)) < 0 && !fatal) fatal = err;
      } else if (err < 0 && psw_retryable(err)) {
        psw_shard_down(c, s, &seb); /* the next round reconnects */
      } else if (err < 0 && !fatal) {
        fatal = ps_errf(eb, err, "shard %u: %s", s->conf->id, seb.msg);
      }
    }
  }
  return fatal;
}

/* psw_client_acks_pending: see psw_client.h. */
size_t psw_client_acks_pending(const psw_client *c) {
  size_t n = 0;
  for (size_t k = 0; k < c->nshards; k++)
    if ((size_t)c->shards[k].nacks > n) n = (size_t)c->shards[k].nacks;
  return n;
}

/* psw_client_pull_all: see psw_client.h. */
int psw_client_pull_all(psw_client *c, int pbuf, uint64_t clock, ps_errbuf *eb) {
  if (pbuf < 0) return ps_errf(eb, PS_EINVAL, "buffer %d out of range", pbuf);
  return psw_client_push_pull(c, -1, 0, pbuf, clock, eb);
}

/* psw_client_push_all: see psw_client.h. */
int psw_client_push_all(psw_client *c, int gbuf, uint64_t clock, ps_errbuf *eb) {
  if (gbuf < 0) return ps_errf(eb, PS_EINVAL, "buffer %d out of range", gbuf);
  return psw_client_push_pull(c, gbuf, clock, -1, 0, eb);
}

/* ---- the communication thread ---------------------------------------------- */

/* psw_job_main runs jobs until told to quit. */
static void *psw_job_main(void *arg) {
  psw_client *c = arg;
  psw_job *j = &c->job;
  pthread_mutex_lock(&j->mu);
  for (;;) {
    while (!j->pending && !j->quit) pthread_cond_wait(&j->cv, &j->mu);
    if (j->quit) break;
    j->pending = 0;
    pthread_mutex_unlock(&j->mu);
    ps_errbuf eb = {{0}};
    int err = psw_client_push_pull(c, j->gbuf, j->push_clock, j->pbuf, j->pull_clock, &eb);
    pthread_mutex_lock(&j->mu);
    j->err = err;
    j->eb = eb;
    j->running = 0;
    pthread_cond_broadcast(&j->cv);
  }
  pthread_mutex_unlock(&j->mu);
  return NULL;
}

/* psw_client_start: see psw_client.h. */
int psw_client_start(psw_client *c, int gbuf, uint64_t push_clock, int pbuf,
                     uint64_t pull_clock) {
  psw_job *j = &c->job;
  pthread_mutex_lock(&j->mu);
  if (j->outstanding) { /* even if done: its result is not collected yet */
    pthread_mutex_unlock(&j->mu);
    return PS_EINVAL;
  }
  j->gbuf = gbuf;
  j->pbuf = pbuf;
  j->push_clock = push_clock;
  j->pull_clock = pull_clock;
  j->running = j->pending = j->outstanding = 1;
  pthread_cond_broadcast(&j->cv);
  pthread_mutex_unlock(&j->mu);
  return 0;
}

/* psw_client_wait: see psw_client.h. */
int psw_client_wait(psw_client *c, ps_errbuf *eb) {
  psw_job *j = &c->job;
  pthread_mutex_lock(&j->mu);
  while (j->running) pthread_cond_wait(&j->cv, &j->mu);
  j->outstanding = 0;
  int err = j->err;
  if (err < 0 && eb) *eb = j->eb;
  j->err = 0;
  pthread_mutex_unlock(&j->mu);
  return err;
}

/* ---- back to the aggregator (invariant 7) ------------------------------------ */

/* psw_client_agg_return: see psw_client.h.  Every connection to the
 * aggregator is opened before any connection to a root is closed: the
 * client is never half on one path and half on the other between two
 * rounds. */
int psw_client_agg_return(psw_client *c) {
  if (!c->agg || !c->agg_down) return 0;
  pthread_mutex_lock(&c->job.mu);
  int busy = c->job.outstanding;
  pthread_mutex_unlock(&c->job.mu);
  if (busy || psw_client_settle(c, NULL) < 0) return 0;
  ps_chan_client **ch = calloc(c->nshards + 1, sizeof *ch);
  if (!ch) return 0;
  ps_errbuf eb = {""};
  int err = 0;
  for (size_t k = 0; k < c->nshards && err == 0; k++) { /* the file's key now (ps_auth.h) */
    if (!c->shards[k].nids) continue;
    err = ps_chan_connect_client(&ch[k], c->agg->channel_addr, c->cfg->cluster, &c->auth,
                                 psw_chan_flags(c, &c->shards[k]), 0, PS_CHAN_NO_WORKER,
                                 PSW_AGG_PROBE_MS, &eb);
    if (err < 0) ch[k] = NULL;
    else ps_chan_set_timeout(ch[k], c->io_timeout_ms);
    if (err == 0) ps_chan_set_dead_ms(ch[k], ps_config_dead_ms(c->cfg));
  }
  if (err < 0) {
    for (size_t k = 0; k < c->nshards; k++) ps_chan_close(ch[k]);
    free(ch);
    if (!c->agg_probe_failed) /* said once; probed again at every boundary */
      ps_info("worker %u: aggregator %s (%s) does not answer yet (%s); staying on the root "
              "shards", c->worker, c->agg->name, c->agg->channel_addr, eb.msg);
    c->agg_probe_failed = 1;
    return 0;
  }
  for (size_t k = 0; k < c->nshards; k++) {
    psw_shard *s = &c->shards[k];
    if (!s->nids) continue;
    psw_shard_close(s, ch[k]);
    s->via_agg = 1;
    s->down_since_ms = 0;
    s->down_said = 0;
    s->redown = 0;
    s->delay_ms = PS_BACKOFF_FIRST_MS;
  }
  free(ch);
  c->agg_down = 0;
  c->agg_probe_failed = 0;
  c->agg_hung = 0;
  c->agg_heard_ms = 0;
  ps_warn("worker %u: aggregator %s (%s) answers again; back to it", c->worker, c->agg->name,
          c->agg->channel_addr);
  return 1;
}

/* ---- open / close ------------------------------------------------------------ */

/* psw_open_shards sets up every shard's segments and connects to those
 * that hold chunks (a shard that is down now is retried at the first
 * pull). */
static int psw_open_shards(psw_client *c, ps_errbuf *eb) {
  int rc = ps_auth_client_open(&c->auth, c->cfg->security.secret_file, PS_ROLE_WORKER, eb);
  if (rc < 0) return rc;
  c->nshards = c->cfg->nshards;
  c->shards = calloc(c->nshards, sizeof *c->shards);
  if (!c->shards) return ps_errf(eb, PS_ENOMEM, "out of memory");
  for (size_t k = 0; k < c->nshards; k++) {
    psw_shard *s = &c->shards[k];
    s->index = (uint32_t)k;
    s->conf = &c->cfg->shards[k];
    s->clocked = c->layout.consistency != PS_ASP;
    int err = psw_shard_segments(c, s, eb);
    if (err < 0) return err;
    if (!s->nids) continue;
    ps_errbuf ceb;
    err = psw_connect(c, s, &ceb);
    if (err < 0 && !psw_retryable(err)) return ps_errf(eb, err, "%s", ceb.msg);
    if (err < 0) psw_shard_down(c, s, &ceb);
  }
  return 0;
}

/* psw_build_layout builds the chunk layout over the config's shard ids. */
static int psw_build_layout(psw_client *c, ps_errbuf *eb) {
  uint32_t *ids = calloc(c->cfg->nshards + 1, sizeof *ids);
  if (!ids) return ps_errf(eb, PS_ENOMEM, "out of memory");
  ps_config_shard_ids(c->cfg, ids);
  int err = ps_layout_build(&c->layout, c->reply->model, c->cfg->chunk_elems, ids,
                            c->cfg->nshards, eb);
  free(ids);
  if (err == 0) c->have_layout = 1;
  return err;
}

/* psw_shard_list writes the ids of the shards in cfg order whose LACK
 * entry is WANT as "0, 2" into BUF (CAP bytes, cut short with "...");
 * returns BUF. */
static const char *psw_shard_list(const psw_client *c, const uint8_t *lack, int want, char *buf,
                                  size_t cap) {
  size_t len = 0;
  buf[0] = 0;
  for (size_t k = 0; k < c->cfg->nshards && len < cap; k++)
    if (lack[k] == want)
      len += (size_t)snprintf(buf + len, cap - len, "%s%u", len ? ", " : "", c->cfg->shards[k].id);
  if (len >= cap && cap > 4) memcpy(buf + cap - 4, "...", 4);
  return buf;
}

/* psw_check_shards asks every shard that holds chunks of the model
 * (its layout) but for c->spec_from, which answered the spec, whether it
 * has the model (invariant 10): submit puts a model on every shard, but
 * a shard may refuse it (limits.max_shard_bytes) and leave it on some
 * only, where a pull would first fail after the wait for the other
 * workers.  PS_ENOENT names the shards that lack it; a shard that does
 * not answer cannot tell (the data path retries it).  c->held notes the
 * shards seen holding it. */
static int psw_check_shards(psw_client *c, ps_errbuf *eb) {
  size_t n = c->cfg->nshards;
  uint8_t *lack = calloc(n + 1, 1);
  if (!(c->held = calloc(n + 1, 1)) || !lack) {
    free(lack);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  Ps__GetModelReply *spec = c->reply;
  c->held[c->spec_from] = 1;
  int nlack = 0;
  for (size_t k = 0; k < n; k++) {
    uint32_t *ids = NULL;
    uint64_t nelems = 0;
    long nids = ps_layout_shard_chunks(&c->layout, (uint32_t)k, &ids, &nelems);
    free(ids);
    if (k == c->spec_from || nids <= 0) continue;
    ps_errbuf geb;
    c->reply = NULL;
    int err = psw_try_get_model(c, k, &geb);
    if (c->reply) protobuf_c_message_free_unpacked(&c->reply->base, NULL);
    c->held[k] = err == 0;
    lack[k] = err == PS_ENOENT;
    nlack += lack[k];
  }
  c->reply = spec;
  char on[128], off[128];
  if (nlack) {
    for (size_t k = 0; k < n; k++) lack[k] = lack[k] ? 2 : c->held[k];
    ps_errf(eb, PS_ENOENT, "model '%s' is on shards [%s] but not on shards [%s], which hold part "
            "of it (psctl submit was refused there: limits.max_shard_bytes, say): submit it "
            "again (psctl submit; --replace with other settings) once every shard takes it", c->model,
            psw_shard_list(c, lack, 1, on, sizeof on), psw_shard_list(c, lack, 2, off, sizeof off));
  }
  free(lack);
  return nlack ? PS_ENOENT : 0;
}

/* psw_client_check_model: see psw_client.h. */
int psw_client_check_model(const ps_config *cfg, const char *model, volatile sig_atomic_t *stop,
                           ps_errbuf *eb) {
  psw_client c = {.cfg = cfg, .model = (char *)model, .stop = stop};
  int err = psw_fetch_spec(&c, eb);
  if (err == 0 && (err = psw_build_layout(&c, eb)) == 0) err = psw_check_shards(&c, eb);
  if (c.have_layout) ps_layout_release(&c.layout);
  if (c.reply) protobuf_c_message_free_unpacked(&c.reply->base, NULL);
  free(c.held);
  return err;
}

/* psw_client_open: see psw_client.h. */
int psw_client_open(psw_client **out, const psw_client_conf *conf, ps_errbuf *eb) {
  *out = NULL;
  if (conf->nbufs < 1 || conf->nbufs > PSW_CLIENT_MAX_BUFS)
    return ps_errf(eb, PS_EINVAL, "nbufs %d out of range", conf->nbufs);
  psw_client *c = calloc(1, sizeof *c);
  if (!c) return ps_errf(eb, PS_ENOMEM, "out of memory");
  c->cfg = conf->cfg;
  c->worker = conf->worker;
  c->reader = conf->reader;
  c->agg = ps_config_agg(conf->cfg, conf->cfg->workers.aggregator);
  c->be = conf->be;
  c->nbufs = conf->nbufs;
  c->io_timeout_ms = conf->io_timeout_ms > 0 ? conf->io_timeout_ms : 10000;
  c->stop = conf->stop;
  c->rejoin = conf->rejoin;
  c->rejoin_arg = conf->rejoin_arg;
  c->defer_acks = conf->defer_acks;
  pthread_mutex_init(&c->job.mu, NULL);
  pthread_cond_init(&c->job.cv, NULL);
  int err = PS_ENOMEM;
  if (!(c->model = strdup(conf->model))) {
    ps_errf(eb, err, "out of memory");
    goto close_client;
  }
  if ((err = psw_fetch_spec(c, eb)) < 0) goto close_client;
  if ((err = psw_build_layout(c, eb)) < 0) goto close_client;
  if ((err = psw_check_shards(c, eb)) < 0) goto close_client;
  if ((err = psw_alloc_vectors(c, eb)) < 0) goto close_client;
  if ((err = psw_open_shards(c, eb)) < 0) goto close_client;
  if (pthread_create(&c->job.thread, NULL, psw_job_main, c) != 0) {
    err = ps_errf(eb, PS_ENOMEM, "cannot start the communication thread");
    goto close_client;
  }
  c->job.started = 1;
  *out = c;
  return 0;
close_client:
  psw_client_close(c);
  return err;
}

/* psw_client_close: see psw_client.h. */
void psw_client_close(psw_client *c) {
  if (!c) return;
  if (c->job.started) {
    pthread_mutex_lock(&c->job.mu);
    c->job.quit = 1;
    pthread_cond_broadcast(&c->job.cv);
    pthread_mutex_unlock(&c->job.mu);
    pthread_join(c->job.thread, NULL);
  }
  if (c->shards) psw_client_settle(c, NULL); /* the last answers count (invariant 8) */
  pthread_mutex_destroy(&c->job.mu);
  pthread_cond_destroy(&c->job.cv);
  ps_auth_client_close(&c->auth);
  for (size_t k = 0; c->shards && k < c->nshards; k++) {
    psw_shard *s = &c->shards[k];
    ps_chan_close(s->ch);
    free(s->ids);
    free(s->seg_off);
    free(s->seg_len);
    free(s->residual);
    free(s->penc);
    free(s->genc);
    for (int b = 0; b < PSW_CLIENT_MAX_BUFS; b++) {
      free(s->pseg[b]);
      free(s->gseg[b]);
    }
  }
  free(c->shards);
  for (int b = c->zc ? 1 : 0; b < PSW_CLIENT_MAX_BUFS; b++) {
    if (c->params[b]) c->be->ops->host_free(c->be, c->params[b]);
    if (c->grads[b]) c->be->ops->host_free(c->be, c->grads[b]);
  }
  if (c->zc) munmap(c->zc, 2 * c->zc_area); /* after the connections: none maps onto it */
  if (c->have_layout) ps_layout_release(&c->layout);
  free(c->held);
  free(c->spec_seen);
  if (c->reply) protobuf_c_message_free_unpacked(&c->reply->base, NULL);
  free(c->model);
  free(c);
}

/* ---- accessors --------------------------------------------------------------- */

const Ps__ModelSpec *psw_client_spec(const psw_client *c) { return c->reply->model; }
const ps_layout *psw_client_layout(const psw_client *c) { return &c->layout; }
uint64_t psw_client_nparams(const psw_client *c) { return c->layout.nparams; }
float *psw_client_params(psw_client *c, int buf) { return c->params[buf]; }
float *psw_client_grads(psw_client *c, int buf) { return c->grads[buf]; }
uint64_t psw_client_reconnects(const psw_client *c) { return c->reconnects; }

/* psw_client_push_counts: see psw_client.h. */
size_t psw_client_push_counts(const psw_client *c, uint64_t *acked, uint64_t *unanswered,
                              size_t max) {
  for (size_t k = 0; k < c->nshards && k < max; k++) {
    acked[k] = c->shards[k].pushes_acked;
    unanswered[k] = c->shards[k].pushes_unanswered;
  }
  return c->nshards;
}

/* psw_client_say_refused: see psw_client.h. */
void psw_client_say_refused(const psw_client *c) {
  for (size_t k = 0; k < c->nshards; k++) {
    const psw_shard *s = &c->shards[k];
    unsigned long long all = s->pushes_acked + s->pushes_unanswered;
    if (s->pushes_refused)
      ps_warn("worker %u: %llu of %llu pushes to shard %u (%s) were refused while it was "
              "DEGRADED and not sent again: the model lacks those updates (the shard's log "
              "says why it was DEGRADED)", c->worker, (unsigned long long)s->pushes_refused,
              all, s->conf->id, s->conf->channel_addr);
    if (s->pushes_unsynced)
      ps_warn("worker %u: %llu of %llu pushes to shard %u (%s) were applied in memory only, "
              "their sync failed while it was DEGRADED: a crash of that shard before its log "
              "takes them loses them", c->worker, (unsigned long long)s->pushes_unsynced, all,
              s->conf->id, s->conf->channel_addr);
  }
}

/* psw_client_bytes: see psw_client.h. */
void psw_client_bytes(const psw_client *c, uint64_t *sent, uint64_t *received,
                      uint64_t *push_sent) {
  *sent = *received = *push_sent = 0;
  for (size_t k = 0; k < c->nshards; k++) {
    *push_sent += c->shards[k].push_tx;
    uint64_t tx, rx;
    ps_chan_bytes(c->shards[k].ch, &tx, &rx);
    *sent += c->shards[k].tx_closed + tx;
    *received += c->shards[k].rx_closed + rx;
  }
}

/* psw_client_shm_bytes: see psw_client.h. */
uint64_t psw_client_shm_bytes(const psw_client *c) {
  uint64_t n = 0;
  for (size_t k = 0; k < c->nshards; k++) {
    uint64_t tx, rx;
    ps_chan_shm_bytes(c->shards[k].ch, &tx, &rx);
    n += c->shards[k].shm_closed + tx + rx;
  }
  return n;
}

/* psw_client_pushes_lost: see psw_client.h. */
uint64_t psw_client_pushes_lost(const psw_client *c) {
  uint64_t n = c->pushes_skipped;
  for (size_t k = 0; k < c->nshards; k++) n += c->shards[k].pushes_unanswered;
  return n;
}

/* psw_client_pushes_unknown: see psw_client.h. */
uint64_t psw_client_pushes_unknown(const psw_client *c) {
  uint64_t n = c->pushes_skipped;
  for (size_t k = 0; k < c->nshards; k++) n += c->shards[k].pushes_broken;
  return n;
}

/* psw_client_pushes_expired: see psw_client.h. */
uint64_t psw_client_pushes_expired(const psw_client *c) {
  uint64_t n = 0;
  for (size_t k = 0; k < c->nshards; k++) n += c->shards[k].pushes_expired;
  return n;
}

/* psw_client_parked_ms: see psw_client.h. */
uint64_t psw_client_parked_ms(const psw_client *c) { return c->parked_ms; }

/* psw_client_version: see psw_client.h. */
uint64_t psw_client_version(const psw_client *c, int buf, uint32_t shard) {
  return shard < c->nshards ? c->shards[shard].version[buf] : 0;
}
