/* psw_sparse: keys split by shard with a counting sort, one request per
 * shard (a pull: per part of at most sparse.max_new_rows keys and of what
 * limits.max_request_bytes holds, pull_part; a push over the latter is
 * refused before it is sent, push_fits), rows scattered back to the
 * caller's order.
 *
 * Planes (sparse.plane): with `channel` a shard's rows go over its tensor
 * channel (CHAN_SPARSE_PULL / _PUSH) once a connection to it is open and
 * its HELLO offered them; the requests of all shards are sent before any
 * reply is read (the shards work at once).  gRPC carries a shard's rows
 * when the channel is not there: plane `grpc`, a shard that does not offer
 * rows (asked again after PSW_SPARSE_CHAN_OLD_MS), a connect that failed
 * (again after PSW_SPARSE_CHAN_RETRY_MS), or a pull whose connection broke
 * or that the shard refused as psw_retryable says (then the pull is made
 * on gRPC with psw_sparse.h's waits).  A push is never sent twice: one
 * whose connection broke is lost as on gRPC (one a shard refused as
 * expired was not applied: it goes again after the rejoin).  Replies are
 * taken by request id, each wait looking at the stop flag (chan_take).  A connection the shard
 * closed while idle (a restart) is seen before the next request
 * (ps_chan_alive) and opened again, so no push is lost to it. */
#include "psw_sparse.h"

#include "ps_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_codec.h"
#include "ps_model.h"
#include "ps_place.h"
#include "ps_auth.h"
#include "ps_rpc.h"
#include "ps_time.h"
#include "psw_client.h"

#define PSW_SPARSE_CONNECT_MS 2000      /* a channel connect and hello */
#define PSW_SPARSE_CHAN_RETRY_MS 1000   /* no new channel after a failed connect for this long */
#define PSW_SPARSE_CHAN_OLD_MS 60000    /* ... nor to a shard that did not offer rows */
/* a gRPC pull that timed out this long before the reply timeout (the
 * shard's pull_timeout_ms + 5 s) was answered by the shard: parked */
#define PSW_SPARSE_ANSWERED_MS 2500
/* lost pushes are said at the first, then at most this often (as the
 * dense client says a shard's refusals: psw_client.h invariant 12) */
#define PSW_SPARSE_SAY_AGAIN_MS 10000

struct psw_sparse {
  const ps_config *cfg;
  char model[64];
  uint32_t table, dim, worker;
  uint64_t seed;
  uint16_t shard_of[PS_PLACE_ROW_BUCKETS];
  size_t nshards;
  ps_rpc **rpc;             /* per shard, opened on first use */
  /* per request: keys grouped by shard (start[s] .. start[s + 1]) */
  uint32_t *start, *pos;    /* nshards + 1; nkeys: original index of grouped key i */
  uint32_t *lo, *hi;        /* per shard: the grouped keys of this pull request (pull_part) */
  uint64_t *keys;
  float *buf;
  size_t cap, bufcap;
  volatile sig_atomic_t *stop; /* psw_sparse_set_stop; may be NULL */
  int64_t stop_seen_ms;        /* when a wait first saw the stop (psw_chan_await) */
  ps_codec_id push_codec, pull_codec;
  uint64_t warmup;             /* clocks before the codecs apply */
  uint8_t *enc;                /* a push's encoded rows */
  size_t enccap;
  uint64_t lost_pushes;        /* shard calls of pushes lost with a connection */
  int64_t lost_said_ms;        /* when a lost push was last said (push_lost) */
  uint64_t lost_unsaid, rows_unsaid; /* pushes (and their rows) lost since then, not said */
  /* the tensor channel (file comment), per shard: */
  ps_chan_client **ch;         /* open connection, or NULL */
  int64_t *ch_retry_ms;        /* no new connection before this time */
  uint8_t *via_chan;           /* this request's rows to shard k are on ch[k] */
  uint64_t *req_id;            /* ... as this request id there */
  uint64_t *moved_on;          /* per shard: a clock to say before its next pull (say_moved_on) */
  uint8_t *todo;               /* this request still owes shard k a call */
  /* psw_sparse_set_rejoin: a refusal as expired rejoins (may be NULL) */
  int (*rejoin)(void *arg, ps_errbuf *eb);
  void *rejoin_arg;
  uint8_t *rx;                 /* pulled rows as they arrive, a region per shard */
  size_t rxcap;
  ps_auth_client auth;         /* security.secret_file's worker key, read at each connect */
};

void psw_sparse_set_stop(psw_sparse *s, volatile sig_atomic_t *stop) { s->stop = stop; }

void psw_sparse_set_rejoin(psw_sparse *s, int (*rejoin)(void *arg, ps_errbuf *eb), void *arg) {
  s->rejoin = rejoin;
  s->rejoin_arg = arg;
}

/* stopping says whether a stop was asked for (psw_sparse_set_stop). */
static int stopping(const psw_sparse *s) { return s->stop && *s->stop; }

ps_codec_id psw_sparse_row_codec(ps_codec_id model_codec) {
  return model_codec == PS_CODEC_FP32 || model_codec == PS_CODEC_FP16 ? model_codec
                                                                      : PS_CODEC_INT8;
}

void psw_sparse_set_codecs(psw_sparse *s, ps_codec_id push, ps_codec_id pull, uint64_t warmup) {
  s->push_codec = psw_sparse_row_codec(push);
  s->pull_codec = psw_sparse_row_codec(pull);
  s->warmup = warmup;
}

uint64_t psw_sparse_lost_pushes(const psw_sparse *s) { return s->lost_pushes; }

int psw_sparse_open(psw_sparse **out, const ps_config *cfg, const char *model, uint32_t table,
                    uint32_t dim, uint32_t worker, ps_errbuf *eb) {
  *out = NULL;
  if (!dim || strlen(model) >= 64 || cfg->nshards > 65536)
    return ps_errf(eb, PS_EINVAL, "sparse client: bad table '%s'/%u (dim %u)", model, table, dim);
  psw_sparse *s = calloc(1, sizeof *s);
  uint32_t *ids = calloc(cfg->nshards, sizeof *ids);
  if (s) {
    s->rpc = calloc(cfg->nshards, sizeof *s->rpc);
    s->start = calloc(cfg->nshards + 1, sizeof *s->start);
    s->lo = calloc(cfg->nshards, sizeof *s->lo);
    s->hi = calloc(cfg->nshards, sizeof *s->hi);
    s->ch = calloc(cfg->nshards, sizeof *s->ch);
    s->ch_retry_ms = calloc(cfg->nshards, sizeof *s->ch_retry_ms);
    s->via_chan = calloc(cfg->nshards, 1);
    s->req_id = calloc(cfg->nshards, sizeof *s->req_id);
    s->moved_on = calloc(cfg->nshards, sizeof *s->moved_on);
    s->todo = calloc(cfg->nshards, 1);
  }
  if (!s || !ids || !s->rpc || !s->start || !s->lo || !s->hi || !s->ch || !s->ch_retry_ms ||
      !s->via_chan || !s->req_id || !s->moved_on || !s->todo) {
    free(ids);
    psw_sparse_close(s);
    return ps_errf(eb, PS_ENOMEM, "sparse client: out of memory");
  }
  int rc = 0;
  if (cfg->sparse.plane == PS_SPARSE_PLANE_CHANNEL)
    rc = ps_auth_client_open(&s->auth, cfg->security.secret_file, PS_ROLE_WORKER, eb);
  if (rc) {
    free(ids);
    psw_sparse_close(s);
    return rc;
  }
  s->cfg = cfg;
  snprintf(s->model, sizeof s->model, "%s", model);
  s->table = table, s->dim = dim, s->worker = worker, s->nshards = cfg->nshards;
  for (size_t i = 0; i < cfg->nshards; i++) ids[i] = cfg->shards[i].id;
  s->seed = ps_place_row_seed(model, table);
  ps_place_row_map(model, table, ids, cfg->nshards, s->shard_of);
  free(ids);
  *out = s;
  return 0;
}

void psw_sparse_close(psw_sparse *s) {
  if (!s) return;
  for (size_t i = 0; s->rpc && i < s->nshards; i++)
    if (s->rpc[i]) ps_rpc_close(s->rpc[i]);
  for (size_t i = 0; s->ch && i < s->nshards; i++) ps_chan_close(s->ch[i]);
  free(s->ch);
  free(s->ch_retry_ms);
  free(s->via_chan);
  free(s->req_id);
  free(s->moved_on);
  free(s->todo);
  free(s->rx);
  ps_auth_client_close(&s->auth);
  free(s->rpc);
  free(s->start);
  free(s->lo);
  free(s->hi);
  free(s->pos);
  free(s->keys);
  free(s->buf);
  free(s->enc);
  free(s);
}

/* group sorts the N keys by shard into s->keys (s->pos: where each came
 * from) and sizes the row buffer. */
static int group(psw_sparse *s, const uint64_t *keys, uint32_t n, ps_errbuf *eb) {
  if (n > s->cap) {
    uint32_t *p = realloc(s->pos, n * sizeof *p);
    if (p) s->pos = p;
    uint64_t *k = p ? realloc(s->keys, n * sizeof *k) : NULL;
    if (!k) return ps_errf(eb, PS_ENOMEM, "sparse client: out of memory");
    s->keys = k;
    s->cap = n;
  }
  if ((size_t)n * s->dim > s->bufcap) {
    float *b = realloc(s->buf, (size_t)n * s->dim * sizeof *b);
    if (!b) return ps_errf(eb, PS_ENOMEM, "sparse client: out of memory");
    s->buf = b;
    s->bufcap = (size_t)n * s->dim;
  }
  size_t eb_need = ((size_t)n + 1) * (4 + (size_t)s->dim * 4); /* any row codec's rows */
  if (eb_need > s->enccap) {
    uint8_t *e = realloc(s->enc, eb_need);
    if (!e) return ps_errf(eb, PS_ENOMEM, "sparse client: out of memory");
    s->enc = e;
    s->enccap = eb_need;
  }
  if (s->cfg->sparse.plane == PS_SPARSE_PLANE_CHANNEL && eb_need > s->rxcap) {
    uint8_t *e = realloc(s->rx, eb_need);
    if (!e) return ps_errf(eb, PS_ENOMEM, "sparse client: out of memory");
    s->rx = e;
    s->rxcap = eb_need;
  }
  memset(s->start, 0, (s->nshards + 1) * sizeof *s->start);
  for (uint32_t i = 0; i < n; i++) s->start[s->shard_of[ps_place_row_bucket(s->seed, keys[i])] + 1]++;
  for (size_t k = 0; k < s->nshards; k++) s->start[k + 1] += s->start[k];
  for (uint32_t i = 0; i < n; i++) {
    uint16_t sh = s->shard_of[ps_place_row_bucket(s->seed, keys[i])];
    uint32_t at = s->start[sh]++;
    s->keys[at] = keys[i];
    s->pos[at] = i;
  }
  for (size_t k = s->nshards; k > 0; k--) s->start[k] = s->start[k - 1];
  s->start[0] = 0;
  return 0;
}

/* call_once makes call METHOD on shard K, opening its gRPC channel first;
 * a stop ends the wait for the answer GRACE_MS after it came
 * (ps_rpc_call_stop: PS_ESHUTDOWN).  A channel whose call failed as if
 * the shard were not there is closed (the next call opens a new one). */
static int call_once(psw_sparse *s, size_t k, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **rep,
                     int grace_ms, ps_errbuf *eb) {
  int rc = 0;
  if (!s->rpc[k])
    rc = ps_rpc_open_cfg(&s->rpc[k], s->cfg->shards[k].grpc_addr, s->cfg, PS_ROLE_WORKER, eb);
  int64_t t0 = ps_now_ms();
  if (!rc) rc = ps_rpc_call_stop(s->rpc[k], method, req, desc, rep,
                                 ps_config_reply_timeout_ms(s->cfg), /* a pull may park */
                                 s->stop, grace_ms, eb);
  /* a timeout the shard answered (a parked pull, well before the reply's
   * deadline) keeps the channel: it is asked again on it */
  int answered = rc == PS_ETIMEDOUT &&
                 ps_now_ms() - t0 < ps_config_reply_timeout_ms(s->cfg) - PSW_SPARSE_ANSWERED_MS;
  if (rc && psw_retryable(rc) && !answered && s->rpc[k]) {
    ps_rpc_close(s->rpc[k]);
    s->rpc[k] = NULL;
  }
  if (rc) {
    ps_errbuf inner = *eb;
    ps_errf(eb, rc, "shard %u: %s", s->cfg->shards[k].id, inner.msg);
  }
  return rc;
}

/* sparse_who writes "worker N: sparse table 'M'/T" (the client's log
 * prefix) to BUF (CAP bytes); BUF. */
static const char *sparse_who(const psw_sparse *s, char *buf, size_t cap) {
  snprintf(buf, cap, "worker %u: sparse table '%s'/%u", s->worker, s->model, s->table);
  return buf;
}

/* slow_said notes that a pull of CLOCK came back from the shard parked
 * past pull_timeout_ms (WHY), as the dense pull's wait does
 * (psw_slow_said). */
static void slow_said(const psw_sparse *s, uint64_t clock, int64_t *since, int64_t *said,
                      const ps_errbuf *why) {
  char who[160];
  psw_slow_said(sparse_who(s, who, sizeof who), clock, since, said, why->msg);
}

/* slow_over says that a pull of CLOCK that waited for a slower worker
 * since SINCE (0: it did not) went on. */
static void slow_over(const psw_sparse *s, uint64_t clock, int64_t since) {
  if (since)
    ps_warn("worker %u: sparse table '%s'/%u: the pull of clock %llu went on after waiting %.1f s "
            "for a slower worker", s->worker, s->model, s->table, (unsigned long long)clock,
            (double)(ps_now_ms() - since) / 1e3);
}

/* call makes a pull's call (of CLOCK) on shard K, again with backoff (100
 * ms doubling to 2 s) while the shard is not there, for at most
 * workers.retry_ms, saying in the log when it is lost and when it is back
 * (psw_client.h invariant 4; a pull changes nothing a second one would
 * not).  A pull the shard answered with its parked timeout (PS_ETIMEDOUT
 * well before the reply timeout: the shard is up) is made again at once,
 * for as long as the shard answers so (invariant 12).  A stop ends the
 * wait: PS_ESHUTDOWN. */
static int call(psw_sparse *s, size_t k, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **rep, uint64_t clock,
                ps_errbuf *eb) {
  int64_t start = 0, slow_since = 0, slow_at = 0;
  int64_t answered_ms = ps_config_reply_timeout_ms(s->cfg) - PSW_SPARSE_ANSWERED_MS;
  uint32_t delay = PS_BACKOFF_FIRST_MS;
  for (;;) {
    int64_t t0 = ps_now_ms();
    int rc = call_once(s, k, method, req, desc, rep, 0, eb);
    if (rc == PS_ESHUTDOWN && stopping(s)) return rc;
    if (rc == PS_ETIMEDOUT && ps_now_ms() - t0 < answered_ms) {
      slow_said(s, clock, &slow_since, &slow_at, eb);
      continue;
    }
    if (rc == 0 && start)
      ps_info("worker %u: sparse table '%s'/%u: shard %u is back", s->worker, s->model, s->table,
              s->cfg->shards[k].id);
    if (rc == 0) slow_over(s, clock, slow_since);
    if (rc == 0 || !psw_retryable(rc)) return rc;
    if (!start) {
      start = ps_now_ms();
      ps_warn("worker %u: sparse table '%s'/%u: %s; retrying for up to %u ms (workers.retry_ms)",
              s->worker, s->model, s->table, eb->msg, s->cfg->workers.retry_ms);
    }
    uint32_t nap = ps_backoff_nap(start, delay, s->cfg->workers.retry_ms);
    if (!nap) {
      ps_errbuf inner = *eb;
      return ps_errf(eb, rc, "%s (unreachable for %u ms)", inner.msg, s->cfg->workers.retry_ms);
    }
    if (ps_sleep_ms(nap, s->stop) < 0) return ps_errf(eb, PS_ESHUTDOWN, "stopped");
    delay = ps_backoff_next(delay);
  }
}

/* rejoin handles a request that a shard refused as expired (EB: the
 * refusal; that shard applied nothing of it): the rejoin hook (register
 * again, rejoin every shard), after a backoff nap when the shards refused
 * again, for at most workers.retry_ms since *SINCE (0: the first refusal),
 * as psw_client.h invariant 5 says; the caller then asks the shards that
 * refused again.  Without a hook the refusal stands. */
static int rejoin(psw_sparse *s, int64_t *since, uint32_t *delay, ps_errbuf *eb) {
  char who[160];
  psw_rejoin_ctx r = {.rejoin = s->rejoin, .arg = s->rejoin_arg, .stop = s->stop,
                      .retry_ms = s->cfg->workers.retry_ms, .who = sparse_who(s, who, sizeof who),
                      .after = "asking the shards that refused again"};
  return psw_rejoin_step(&r, since, delay, eb->msg, eb);
}

/* settle records shard K's result R (message in REB) of a request: the
 * shard is done with (s->todo cleared) unless it refused the worker as
 * expired (the first such refusal kept in XEB); the first other failure
 * goes to *RC and EB. */
static void settle(psw_sparse *s, size_t k, int r, const ps_errbuf *reb, int *rc, ps_errbuf *xeb,
                   ps_errbuf *eb) {
  if (r == PS_EEXPIRED) {
    if (!xeb->msg[0]) *xeb = *reb;
    return;
  }
  s->todo[k] = 0;
  if (r && !*rc) {
    *rc = r;
    *eb = *reb;
  }
}

/* round_end is a round's result: RC, else PS_EEXPIRED with the refusal
 * XEB when a shard refused the worker as expired, else 0. */
static int round_end(int rc, const ps_errbuf *xeb, ps_errbuf *eb) {
  if (rc || !xeb->msg[0]) return rc;
  *eb = *xeb;
  return PS_EEXPIRED;
}

/* chan_get returns shard K's channel for rows, opening it when none is
 * open and the waits of the file comment allow; NULL: use gRPC now. */
static ps_chan_client *chan_get(psw_sparse *s, size_t k) {
  if (s->cfg->sparse.plane != PS_SPARSE_PLANE_CHANNEL) return NULL;
  if (s->ch[k] && ps_chan_alive(s->ch[k])) return s->ch[k];
  ps_chan_close(s->ch[k]); /* closed by the shard while idle: a restart */
  s->ch[k] = NULL;
  int64_t now = ps_now_ms();
  if (now < s->ch_retry_ms[k]) return NULL;
  ps_errbuf eb;
  /* the file's key now: a rotation may have moved it (ps_auth.h) */
  int rc = ps_chan_connect_client(&s->ch[k], s->cfg->shards[k].channel_addr, s->cfg->cluster,
                                  &s->auth, s->cfg->security.payload_mac ? PS_CHAN_AUTH_MAC : 0,
                                  0, PS_CHAN_NO_WORKER, PSW_SPARSE_CONNECT_MS, &eb);
  if (rc) {
    s->ch_retry_ms[k] = now + PSW_SPARSE_CHAN_RETRY_MS;
    return NULL;
  }
  if (!(ps_chan_features(s->ch[k]) & PS_CHAN_FEAT_SPARSE)) { /* a shard older than rows on it */
    ps_chan_close(s->ch[k]);
    s->ch[k] = NULL;
    s->ch_retry_ms[k] = now + PSW_SPARSE_CHAN_OLD_MS;
    return NULL;
  }
  ps_chan_set_timeout(s->ch[k], ps_config_reply_timeout_ms(s->cfg)); /* a pull may park */
  ps_chan_set_dead_ms(s->ch[k], ps_config_dead_ms(s->cfg)); /* a cut ends in a reconnect */
  return s->ch[k];
}

/* chan_drop closes shard K's channel after a failure (reopened after
 * PSW_SPARSE_CHAN_RETRY_MS). */
static void chan_drop(psw_sparse *s, size_t k) {
  ps_chan_close(s->ch[k]);
  s->ch[k] = NULL;
  s->ch_retry_ms[k] = ps_now_ms() + PSW_SPARSE_CHAN_RETRY_MS;
}

/* chan_req describes the rows of shard K (grouped keys A..B) in CODEC. */
static ps_chan_sparse chan_req(const psw_sparse *s, uint32_t a, uint32_t b, ps_codec_id codec,
                               uint64_t clock) {
  return (ps_chan_sparse){.model = s->model, .table = s->table, .worker = s->worker,
                          .codec = codec, .clock = clock, .keys = s->keys + a, .nkeys = b - a};
}

/* scatter decodes the rows of grouped keys A..B (IN: B - A rows of RB
 * bytes in CODEC) into the caller's ROWS. */
static int scatter(psw_sparse *s, uint32_t a, uint32_t b, ps_codec_id codec, size_t rb,
                   const uint8_t *in, float *rows, ps_errbuf *eb) {
  for (uint32_t i = a; i < b; i++, in += rb) {
    float *out = rows + (size_t)s->pos[i] * s->dim;
    if (codec == PS_CODEC_FP32) {
      memcpy(out, in, rb);
      continue;
    }
    memcpy(s->enc, in, rb); /* aligned for the decoder */
    int rc = ps_codec_check(codec, s->enc, rb, s->dim, 0, "a pulled row", eb);
    if (rc) return rc;
    ps_codec_decode(codec, s->enc, s->dim, 0, out);
  }
  return 0;
}

/* chan_take takes the answer to request ID on shard K's channel, waiting
 * for it as psw_chan_await says (GRACE_MS: how long a stop waits): 0 or
 * the answer's error (EB), or PS_ESHUTDOWN when a stop came first: the
 * connection, which still owes the answer, is then dropped. */
static int chan_take(psw_sparse *s, size_t k, uint64_t id, int grace_ms, ps_errbuf *eb) {
  int timeout = ps_config_reply_timeout_ms(s->cfg);
  if (psw_chan_await(s->ch[k], id, s->stop, &s->stop_seen_ms, grace_ms, timeout) ==
      PS_ESHUTDOWN) {
    chan_drop(s, k);
    return ps_errf(eb, PS_ESHUTDOWN, "stopped while waiting for its answer");
  }
  int rc = ps_chan_recv_id(s->ch[k], id, NULL, eb);
  ps_chan_set_timeout(s->ch[k], timeout); /* (psw_chan_await may have cut it) */
  return rc;
}

/* pull_grpc pulls the rows of shard K (grouped keys A..B) with SparsePull
 * (waiting for the shard: call). */
static int pull_grpc(psw_sparse *s, size_t k, uint32_t a, uint32_t b, ps_codec_id codec,
                     uint64_t clock, float *rows, ps_errbuf *eb) {
  const size_t rb = ps_codec_size(codec, s->dim, 0);
  Ps__SparsePullRequest q = PS__SPARSE_PULL_REQUEST__INIT;
  q.model = s->model, q.table = s->table, q.keys = s->keys + a, q.n_keys = b - a;
  q.worker = s->worker, q.clock = clock, q.codec = codec;
  Ps__SparsePullReply *rep = NULL;
  int rc = call(s, k, "/ps.Ps/SparsePull", &q.base, &ps__sparse_pull_reply__descriptor,
                (ProtobufCMessage **)&rep, clock, eb);
  if (rc) return rc;
  if (rep->codec != (uint32_t)codec || rep->rows.len != (size_t)(b - a) * rb)
    rc = ps_errf(eb, PS_EFORMAT, "shard %u: %zu bytes of %s rows for %u keys of dim %u in %s",
                 s->cfg->shards[k].id, rep->rows.len,
                 ps_codec_name(rep->codec < PS_CODEC_N ? (ps_codec_id)rep->codec : PS_CODEC_N),
                 b - a, s->dim, ps_codec_name(codec));
  if (!rc) rc = scatter(s, a, b, codec, rb, rep->rows.data, rows, eb);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return rc;
}

/* pull_chan_recv takes the reply of shard K's pull of CLOCK sent on its
 * channel (request s->req_id[k]): 0 with the rows scattered, 1 when the
 * pull must be made on gRPC (the connection broke, or the shard was not
 * there: psw_retryable), PS_ESHUTDOWN (a stop: chan_take), or the shard's
 * refusal.  A pull the shard held parked past pull_timeout_ms (PS_ETIMEDOUT
 * naming the slowest worker, the connection alive: the shard is up) is
 * sent again on the channel, for as long as the shard answers so
 * (psw_client.h invariant 12). */
static int pull_chan_recv(psw_sparse *s, size_t k, uint32_t a, uint32_t b, ps_codec_id codec,
                          uint64_t clock, float *rows, ps_errbuf *eb) {
  const size_t rb = ps_codec_size(codec, s->dim, 0);
  int64_t slow_since = 0, slow_at = 0;
  for (;;) {
    int rc = chan_take(s, k, s->req_id[k], 0, eb);
    if (rc == 0) {
      slow_over(s, clock, slow_since);
      return scatter(s, a, b, codec, rb, s->rx + (size_t)a * rb, rows, eb);
    }
    if (rc == PS_ESHUTDOWN && stopping(s)) return rc;
    if (rc == PS_ETIMEDOUT && ps_chan_alive(s->ch[k])) {
      ps_errbuf why = *eb;
      ps_errf(&why, rc, "shard %u: %s", s->cfg->shards[k].id, eb->msg);
      slow_said(s, clock, &slow_since, &slow_at, &why);
      ps_chan_sparse q = chan_req(s, a, b, codec, clock);
      if (ps_chan_send_sparse_pull(s->ch[k], &q, s->rx + (size_t)a * rb, (size_t)(b - a) * rb,
                                   &s->req_id[k], eb) == 0)
        continue;
      rc = PS_EUNAVAIL; /* could not ask again: on gRPC */
    }
    if (psw_retryable(rc) || !ps_chan_alive(s->ch[k])) {
      chan_drop(s, k);
      return 1;
    }
    ps_errbuf inner = *eb;
    return ps_errf(eb, rc, "shard %u: %s", s->cfg->shards[k].id, inner.msg);
  }
}

/* pull_round pulls the rows of the shards the pull still owes (s->todo):
 * the channels' requests all sent before any reply is read, then gRPC for
 * the rest (once no shard failed).  Returns 0, the first failure, or
 * PS_EEXPIRED when a shard refused the worker as expired (that shard
 * still owed: round_end). */
/* say_moved_on tells shard K that the worker went on past a sparse push
 * it may never have applied (psw_client.h invariant 13): on a shard that
 * holds no dense chunk of the model the sparse push is what moves the
 * worker's clock, and under bsp its next pull would wait there on the
 * worker itself.  A heartbeat with moved_on; said again before the next
 * pull when the shard does not answer. */
static void say_moved_on(psw_sparse *s, size_t k) {
  Ps__HeartbeatRequest q = PS__HEARTBEAT_REQUEST__INIT;
  q.worker = s->worker, q.model = s->model, q.clock = q.moved_on = s->moved_on[k];
  Ps__HeartbeatReply *rep = NULL;
  ps_errbuf eb;
  int r = call_once(s, k, "/ps.Ps/Heartbeat", &q.base, &ps__heartbeat_reply__descriptor,
                    (ProtobufCMessage **)&rep, 0, &eb);
  if (r == 0 && !rep->expired) s->moved_on[k] = 0; /* (expired: its rejoin enters it again) */
  if (rep) protobuf_c_message_free_unpacked(&rep->base, NULL);
  if (s->moved_on[k]) ps_debug("worker %u: shard %u not told of clock %llu yet: %s", s->worker,
                               s->cfg->shards[k].id, (unsigned long long)s->moved_on[k],
                               r ? eb.msg : "declared dead there");
}

static int pull_round(psw_sparse *s, ps_codec_id codec, uint64_t clock, float *rows,
                      ps_errbuf *eb) {
  const size_t rb = ps_codec_size(codec, s->dim, 0);
  int rc = 0;
  ps_errbuf reb, xeb = {""};
  for (size_t k = 0; k < s->nshards; k++) /* before the pulls: none waits on this worker */
    if (s->todo[k] && s->moved_on[k] && clock != PS_CLOCK_READER) say_moved_on(s, k);
  for (size_t k = 0; k < s->nshards; k++) { /* every shard's request out first */
    uint32_t a = s->lo[k], b = s->hi[k];
    ps_chan_client *ch = s->todo[k] ? chan_get(s, k) : NULL;
    ps_chan_sparse q = chan_req(s, a, b, codec, clock);
    s->via_chan[k] = ch && ps_chan_send_sparse_pull(ch, &q, s->rx + (size_t)a * rb,
                                                    (size_t)(b - a) * rb, &s->req_id[k],
                                                    &reb) == 0;
    if (ch && !s->via_chan[k]) chan_drop(s, k);
  }
  for (size_t k = 0; k < s->nshards; k++) { /* every channel reply taken, even after an error */
    if (!s->todo[k] || !s->via_chan[k]) continue;
    int r = pull_chan_recv(s, k, s->lo[k], s->hi[k], codec, clock, rows, &reb);
    if (r == 1) s->via_chan[k] = 0; /* on gRPC below */
    else settle(s, k, r, &reb, &rc, &xeb, eb);
  }
  for (size_t k = 0; k < s->nshards && !rc; k++) /* then gRPC, which may wait for a shard */
    if (s->todo[k] && !s->via_chan[k])
      settle(s, k, pull_grpc(s, k, s->lo[k], s->hi[k], codec, clock, rows, &reb), &reb, &rc,
             &xeb, eb);
  return round_end(rc, &xeb, eb);
}

/* pull_part sets each shard's request of part PART of a pull (s->lo,
 * s->hi, s->todo): its grouped keys PART * PER .. (PART + 1) * PER, or
 * none where it has fewer; 0 when no shard has any left. */
static int pull_part(psw_sparse *s, uint64_t part, uint64_t per) {
  int any = 0;
  for (size_t k = 0; k < s->nshards; k++) {
    uint64_t n = s->start[k + 1] - s->start[k], from = part * per;
    s->lo[k] = s->start[k] + (uint32_t)(from < n ? from : n);
    s->hi[k] = s->start[k] + (uint32_t)(from + per < n ? from + per : n);
    s->todo[k] = s->lo[k] < s->hi[k];
    any |= s->todo[k];
  }
  return any;
}

/* request_keys: the most keys one request to a shard may name so that it
 * fits limits.max_request_bytes (of the client's config), each key
 * counted PSW_SPARSE_KEY_BYTES + 4 x dim bytes (psw_sparse.h); at least
 * 1 (a row over the limit alone is the shard's to refuse). */
static uint64_t request_keys(const psw_sparse *s) {
  uint64_t n = s->cfg->max_request_bytes / (PSW_SPARSE_KEY_BYTES + (uint64_t)s->dim * 4);
  return n ? n : 1;
}

int psw_sparse_pull(psw_sparse *s, const uint64_t *keys, uint32_t nkeys, float *rows,
                    uint64_t clock, ps_errbuf *eb) {
  int rc = group(s, keys, nkeys, eb);
  if (rc) return rc;
  /* a reader (psw --evaluate) reads the rows exactly */
  ps_codec_id codec = clock < s->warmup || clock == PS_CLOCK_READER ? PS_CODEC_FP32 : s->pull_codec;
  /* at most sparse.max_new_rows keys per request, as a shard takes them
   * (each key counted as new: the client cannot know which have rows),
   * and at most what limits.max_request_bytes holds */
  uint64_t per = s->cfg->sparse.max_new_rows ? s->cfg->sparse.max_new_rows : UINT32_MAX;
  if (request_keys(s) < per) per = request_keys(s);
  for (uint64_t part = 0; !rc && pull_part(s, part, per); part++) {
    int64_t since = 0;
    uint32_t delay = PS_BACKOFF_FIRST_MS;
    while ((rc = pull_round(s, codec, clock, rows, eb)) == PS_EEXPIRED)
      if ((rc = rejoin(s, &since, &delay, eb)) < 0) return rc;
  }
  return rc;
}

/* push_lost counts a push of N rows lost with its connection, or refused
 * by a DEGRADED shard (not resent: it may have been applied), and says
 * so: the first, then at most every PSW_SPARSE_SAY_AGAIN_MS with the
 * count lost since (a shard refusing every push would otherwise take a
 * line per step). */
static void push_lost(psw_sparse *s, size_t k, uint64_t clock, uint32_t n, const ps_errbuf *eb) {
  int64_t now = ps_now_ms();
  if (clock != PS_CLOCK_READER && clock + 1 > s->moved_on[k]) s->moved_on[k] = clock + 1;
  s->lost_pushes++;
  s->lost_unsaid++;
  s->rows_unsaid += n;
  if (s->lost_said_ms && now - s->lost_said_ms < PSW_SPARSE_SAY_AGAIN_MS) return;
  if (s->lost_unsaid == 1)
    ps_warn("worker %u: sparse table '%s'/%u: a push of %u rows is lost (%s); not resent "
            "(counted in sparse_pushes_lost; said at most every %d s)", s->worker, s->model,
            s->table, n, eb->msg, PSW_SPARSE_SAY_AGAIN_MS / 1000);
  else
    ps_warn("worker %u: sparse table '%s'/%u: %llu pushes (%llu rows) lost in the last %.1f s, "
            "the last: %s; not resent (counted in sparse_pushes_lost)", s->worker, s->model,
            s->table, (unsigned long long)s->lost_unsaid, (unsigned long long)s->rows_unsaid,
            (double)(now - s->lost_said_ms) / 1e3, eb->msg);
  s->lost_said_ms = now;
  s->lost_unsaid = s->rows_unsaid = 0;
}

/* push_chan_answer takes the answer to shard K's push sent on its channel
 * (a stop waits PSW_STOP_PUSH_GRACE_MS for it: chan_take); a connection
 * that broke is dropped (PS_EUNAVAIL or how it broke).  A push over the
 * shard's limits.max_request_bytes is answered PS_ETOOBIG, nothing of it
 * applied, and the connection closed (psd_chan.c invariant 6): a refusal,
 * not a push lost with its connection. */
static int push_chan_answer(psw_sparse *s, size_t k, ps_errbuf *eb) {
  int r = chan_take(s, k, s->req_id[k], PSW_STOP_PUSH_GRACE_MS, eb);
  if (r == PS_ESHUTDOWN && stopping(s)) return r;
  int too_big = r == PS_ETOOBIG;
  if (r && !too_big && !psw_retryable(r) && !ps_chan_alive(s->ch[k])) r = PS_EUNAVAIL; /* broke */
  if ((r && psw_retryable(r)) || (too_big && !ps_chan_alive(s->ch[k]))) chan_drop(s, k);
  if (r) {
    ps_errbuf inner = *eb;
    ps_errf(eb, r, "shard %u: %s", s->cfg->shards[k].id, inner.msg);
  }
  return r;
}

/* push_grpc pushes the rows of shard K (grouped keys A..B, RB bytes each
 * at OUT in CODEC) with SparsePush: one call, never sent again. */
static int push_grpc(psw_sparse *s, size_t k, uint32_t a, uint32_t b, const uint8_t *out,
                     size_t rb, ps_codec_id codec, uint64_t clock, ps_errbuf *eb) {
  Ps__SparsePushRequest q = PS__SPARSE_PUSH_REQUEST__INIT;
  q.model = s->model, q.table = s->table, q.keys = s->keys + a, q.n_keys = b - a;
  q.rows.data = (uint8_t *)out + (size_t)a * rb, q.rows.len = (size_t)(b - a) * rb;
  q.worker = s->worker, q.clock = clock, q.codec = codec;
  Ps__SparsePushReply *rep = NULL;
  int r = call_once(s, k, "/ps.Ps/SparsePush", &q.base, &ps__sparse_push_reply__descriptor,
                    (ProtobufCMessage **)&rep, PSW_STOP_PUSH_GRACE_MS, eb);
  if (!r) protobuf_c_message_free_unpacked(&rep->base, NULL);
  return r;
}

/* push_round sends the push (the grouped keys' rows, RB bytes each at OUT
 * in CODEC) to the shards it still owes (s->todo): on the channels all
 * sent before any answer is read, then gRPC (once no shard failed).  A
 * push lost with its connection, or whose answer a stop did not wait for,
 * is counted (push_lost), not resent.  Returns 0, PS_ESHUTDOWN after a
 * stop, the first failure, or PS_EEXPIRED when a shard refused the worker
 * as expired (that shard applied nothing and is still owed: round_end). */
static int push_round(psw_sparse *s, const uint8_t *out, size_t rb, ps_codec_id codec,
                      uint64_t clock, ps_errbuf *eb) {
  int rc = 0, stopped = 0;
  ps_errbuf reb, xeb = {""};
  for (size_t k = 0; k < s->nshards; k++) { /* on the channels: every shard's push out first */
    uint32_t a = s->start[k], b = s->start[k + 1];
    ps_chan_client *ch = s->todo[k] ? chan_get(s, k) : NULL;
    ps_chan_sparse q = chan_req(s, a, b, codec, clock);
    s->via_chan[k] = ch != NULL;
    if (ch && ps_chan_send_sparse_push(ch, &q, out + (size_t)a * rb, (size_t)(b - a) * rb,
                                       &s->req_id[k], &reb) < 0) {
      push_lost(s, k, clock, b - a, &reb); /* part of it may have left */
      chan_drop(s, k);
      s->todo[k] = 0;
    }
  }
  for (size_t k = 0; k < s->nshards; k++) {
    uint32_t a = s->start[k], b = s->start[k + 1];
    if (!s->todo[k]) continue;
    int r;
    if (s->via_chan[k]) {
      r = push_chan_answer(s, k, &reb);
    } else if (rc || stopped) {
      s->todo[k] = 0; /* failed already: no more gRPC calls */
      continue;
    } else {
      r = push_grpc(s, k, a, b, out, rb, codec, clock, &reb);
    }
    if (r == PS_ESHUTDOWN && stopping(s)) { /* its answer not waited for: as lost */
      push_lost(s, k, clock, b - a, &reb);
      s->todo[k] = 0;
      stopped = 1;
      continue;
    }
    if (r && psw_retryable(r)) { /* lost with the connection: not resent */
      push_lost(s, k, clock, b - a, &reb);
      r = 0;
    }
    settle(s, k, r, &reb, &rc, &xeb, eb);
  }
  if (stopped)
    return ps_errf(eb, PS_ESHUTDOWN, "stopped while a push of sparse table '%s'/%u was out",
                   s->model, s->table);
  return round_end(rc, &xeb, eb);
}

/* push_fits refuses a push (grouped by group) that names more keys on a
 * shard than one request holds (request_keys), before any is sent: a
 * step's push to a shard is one request (psw_sparse.h). */
static int push_fits(const psw_sparse *s, ps_errbuf *eb) {
  uint64_t per = request_keys(s), row = PSW_SPARSE_KEY_BYTES + (uint64_t)s->dim * 4;
  for (size_t k = 0; k < s->nshards; k++) {
    uint64_t n = s->start[k + 1] - s->start[k];
    if (n <= per) continue;
    char fix[200]; /* the limit can be raised that far */
    if (n * row <= PS_CONFIG_MAX_REQUEST_BYTES)
      snprintf(fix, sizeof fix, "raise limits.max_request_bytes to at least %llu in every "
               "shard's and psw's cluster file, or lower", (unsigned long long)(n * row));
    else
      snprintf(fix, sizeof fix, "that is over the most limits.max_request_bytes takes (%d): "
               "lower", PS_CONFIG_MAX_REQUEST_BYTES);
    return ps_errf(eb, PS_ETOOBIG, "sparse table '%s'/%u: a push of %llu keys to shard %u takes "
                   "%llu bytes (%llu keys x (%d + dim %u x 4) bytes), over "
                   "limits.max_request_bytes %llu (%llu keys of this table at most): a step's "
                   "push to a shard is one request, as it advances the worker's clock there; "
                   "%s --batch (training.batch_size)", s->model, s->table,
                   (unsigned long long)n, s->cfg->shards[k].id, (unsigned long long)(n * row),
                   (unsigned long long)n, PSW_SPARSE_KEY_BYTES, s->dim,
                   (unsigned long long)s->cfg->max_request_bytes, (unsigned long long)per, fix);
  }
  return 0;
}

int psw_sparse_push(psw_sparse *s, const uint64_t *keys, uint32_t nkeys, const float *grads,
                    uint64_t clock, ps_errbuf *eb) {
  int rc = group(s, keys, nkeys, eb);
  if (!rc) rc = push_fits(s, eb);
  if (rc) return rc;
  ps_codec_id codec = clock < s->warmup ? PS_CODEC_FP32 : s->push_codec;
  const size_t rb = ps_codec_size(codec, s->dim, 0);
  uint8_t *out = codec == PS_CODEC_FP32 ? (uint8_t *)s->buf : s->enc; /* a region per shard */
  for (uint32_t i = 0; i < nkeys; i++) /* no error feedback: see psw_sparse.h */
    ps_codec_encode(codec, grads + (size_t)s->pos[i] * s->dim, s->dim, 0, out + (size_t)i * rb);
  /* Every shard gets the step's push, one of no keys where the batch has
   * none: it carries the step's clock, which a shard that holds no dense
   * chunk of the model advances on sparse pushes (psd_shard_sparse.h
   * "Clocks"); else a worker that had no key there would hold the others'
   * sparse pulls back under bsp / ssp. */
  for (size_t k = 0; k < s->nshards; k++) s->todo[k] = 1;
  int64_t since = 0;
  uint32_t delay = PS_BACKOFF_FIRST_MS;
  while ((rc = push_round(s, out, rb, codec, clock, eb)) == PS_EEXPIRED)
    if ((rc = rejoin(s, &since, &delay, eb)) < 0) return rc;
  return rc;
}
