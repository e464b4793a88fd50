/* psw_sparse: keys split by shard with a counting sort, one request per
 * shard, rows scattered back to the caller's order.
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
 * whose connection broke is lost as on gRPC.  A connection the shard
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
  uint64_t *keys;
  float *buf;
  size_t cap, bufcap;
  volatile sig_atomic_t *stop; /* psw_sparse_set_stop; may be NULL */
  ps_codec_id push_codec, pull_codec;
  uint64_t warmup;             /* clocks before the codecs apply */
  uint8_t *enc;                /* a push's encoded rows */
  size_t enccap;
  uint64_t lost_pushes;        /* shard calls of pushes lost with a connection */
  /* the tensor channel (file comment), per shard: */
  ps_chan_client **ch;         /* open connection, or NULL */
  int64_t *ch_retry_ms;        /* no new connection before this time */
  uint8_t *via_chan;           /* this request's rows to shard k are on ch[k] */
  uint8_t *rx;                 /* pulled rows as they arrive, a region per shard */
  size_t rxcap;
  ps_auth_client auth;         /* security.secret_file's worker key, read at each connect */
};

void psw_sparse_set_stop(psw_sparse *s, volatile sig_atomic_t *stop) { s->stop = stop; }

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
    s->ch = calloc(cfg->nshards, sizeof *s->ch);
    s->ch_retry_ms = calloc(cfg->nshards, sizeof *s->ch_retry_ms);
    s->via_chan = calloc(cfg->nshards, 1);
  }
  if (!s || !ids || !s->rpc || !s->start || !s->ch || !s->ch_retry_ms || !s->via_chan) {
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
  free(s->rx);
  ps_auth_client_close(&s->auth);
  free(s->rpc);
  free(s->start);
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

/* call_once makes call METHOD on shard K, opening its channel first; a
 * channel whose call failed as if the shard were not there is closed
 * (the next call opens a new one). */
static int call_once(psw_sparse *s, size_t k, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **rep,
                     ps_errbuf *eb) {
  int rc = 0;
  if (!s->rpc[k])
    rc = ps_rpc_open_cfg(&s->rpc[k], s->cfg->shards[k].grpc_addr, s->cfg, PS_ROLE_WORKER, eb);
  if (!rc) rc = ps_rpc_call(s->rpc[k], method, req, desc, rep,
                            ps_config_reply_timeout_ms(s->cfg), eb); /* a pull may park */
  if (rc && psw_retryable(rc) && s->rpc[k]) {
    ps_rpc_close(s->rpc[k]);
    s->rpc[k] = NULL;
  }
  if (rc) {
    ps_errbuf inner = *eb;
    ps_errf(eb, rc, "shard %u: %s", s->cfg->shards[k].id, inner.msg);
  }
  return rc;
}

/* call makes a pull's call on shard K, again with backoff (100 ms doubling
 * to 2 s) while the shard is not there, for at most workers.retry_ms,
 * saying on stderr when it is lost and when it is back (psw_client.h
 * invariant 4; a pull changes nothing a second one would not). */
static int call(psw_sparse *s, size_t k, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **rep, ps_errbuf *eb) {
  int64_t start = 0;
  uint32_t delay = PS_BACKOFF_FIRST_MS;
  for (;;) {
    int rc = call_once(s, k, method, req, desc, rep, eb);
    if (rc == 0 && start)
      fprintf(stderr, "psw: sparse table '%s'/%u: shard %u is back\n", s->model, s->table,
              s->cfg->shards[k].id);
    if (rc == 0 || !psw_retryable(rc)) return rc;
    if (!start) {
      start = ps_now_ms();
      fprintf(stderr, "psw: sparse table '%s'/%u: %s; retrying for up to %u ms\n", s->model,
              s->table, eb->msg, s->cfg->workers.retry_ms);
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
  ps_auth_key key; /* the file's key now: a rotation may have moved it (ps_auth.h) */
  int keyed = ps_auth_client_now(&s->auth, &key);
  int rc = ps_chan_connect_auth(&s->ch[k], s->cfg->shards[k].channel_addr, s->cfg->cluster,
                                keyed ? &key : NULL,
                                s->cfg->security.payload_mac ? PS_CHAN_AUTH_MAC : 0,
                                PSW_SPARSE_CONNECT_MS, &eb);
  ps_auth_key_wipe(&key);
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
                (ProtobufCMessage **)&rep, eb);
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

/* pull_chan_recv takes the reply of shard K's pull sent on its channel:
 * 0 with the rows scattered, 1 when the pull must be made on gRPC (the
 * connection broke, or the shard was not there: psw_retryable), or the
 * shard's refusal. */
static int pull_chan_recv(psw_sparse *s, size_t k, uint32_t a, uint32_t b, ps_codec_id codec,
                          float *rows, ps_errbuf *eb) {
  const size_t rb = ps_codec_size(codec, s->dim, 0);
  int rc = ps_chan_recv(s->ch[k], NULL, NULL, eb);
  if (rc == 0) return scatter(s, a, b, codec, rb, s->rx + (size_t)a * rb, rows, eb);
  if (psw_retryable(rc) || !ps_chan_alive(s->ch[k])) {
    chan_drop(s, k);
    return 1;
  }
  ps_errbuf inner = *eb;
  return ps_errf(eb, rc, "shard %u: %s", s->cfg->shards[k].id, inner.msg);
}

int psw_sparse_pull(psw_sparse *s, const uint64_t *keys, uint32_t nkeys, float *rows,
                    uint64_t clock, ps_errbuf *eb) {
  int rc = group(s, keys, nkeys, eb);
  if (rc) return rc;
  /* a reader (psw --evaluate) reads the rows exactly */
  ps_codec_id codec = clock < s->warmup || clock == PS_CLOCK_READER ? PS_CODEC_FP32 : s->pull_codec;
  const size_t rb = ps_codec_size(codec, s->dim, 0);
  for (size_t k = 0; k < s->nshards; k++) { /* every shard's request out first */
    uint32_t a = s->start[k], b = s->start[k + 1];
    ps_chan_client *ch = a < b ? chan_get(s, k) : NULL;
    ps_chan_sparse q = chan_req(s, a, b, codec, clock);
    s->via_chan[k] = ch && ps_chan_send_sparse_pull(ch, &q, s->rx + (size_t)a * rb,
                                                    (size_t)(b - a) * rb, NULL, eb) == 0;
    if (ch && !s->via_chan[k]) chan_drop(s, k);
  }
  for (size_t k = 0; k < s->nshards; k++) { /* every channel reply taken, even after an error */
    uint32_t a = s->start[k], b = s->start[k + 1];
    if (a == b || !s->via_chan[k]) continue;
    int r = pull_chan_recv(s, k, a, b, codec, rows, eb);
    if (r == 1) s->via_chan[k] = 0; /* on gRPC below */
    else if (r && !rc) rc = r;
  }
  for (size_t k = 0; k < s->nshards && !rc; k++) { /* then gRPC, which may wait for a shard */
    uint32_t a = s->start[k], b = s->start[k + 1];
    if (a < b && !s->via_chan[k]) rc = pull_grpc(s, k, a, b, codec, clock, rows, eb);
  }
  return rc;
}

/* push_lost counts shard K's push of N rows lost with its connection
 * (not resent: it may have been applied) and says so. */
static void push_lost(psw_sparse *s, uint32_t n, const ps_errbuf *eb) {
  ps_warn("worker %u: sparse table '%s'/%u: a push of %u rows is lost (%s); not resent "
          "(counted in sparse_pushes_lost)", s->worker, s->model, s->table, n, eb->msg);
  s->lost_pushes++;
}

int psw_sparse_push(psw_sparse *s, const uint64_t *keys, uint32_t nkeys, const float *grads,
                    uint64_t clock, ps_errbuf *eb) {
  int rc = group(s, keys, nkeys, eb);
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
  for (size_t k = 0; k < s->nshards; k++) { /* on the channels: every shard's push out first */
    uint32_t a = s->start[k], b = s->start[k + 1];
    ps_chan_client *ch = chan_get(s, k);
    ps_chan_sparse q = chan_req(s, a, b, codec, clock);
    s->via_chan[k] = ch != NULL;
    if (ch && ps_chan_send_sparse_push(ch, &q, out + (size_t)a * rb, (size_t)(b - a) * rb, NULL,
                                       eb) < 0) {
      push_lost(s, b - a, eb); /* part of it may have left */
      chan_drop(s, k);
      s->via_chan[k] = 2;
    }
  }
  for (size_t k = 0; k < s->nshards; k++) {
    uint32_t a = s->start[k], b = s->start[k + 1];
    if (s->via_chan[k] == 2) continue;
    int r;
    if (s->via_chan[k]) {
      r = ps_chan_recv(s->ch[k], NULL, NULL, eb);
      if (r && !psw_retryable(r) && !ps_chan_alive(s->ch[k])) r = PS_EUNAVAIL; /* broke */
      if (r && psw_retryable(r)) chan_drop(s, k);
      if (r) {
        ps_errbuf inner = *eb;
        ps_errf(eb, r, "shard %u: %s", s->cfg->shards[k].id, inner.msg);
      }
    } else if (rc) {
      continue; /* failed already: no more gRPC calls */
    } else {
      Ps__SparsePushRequest q = PS__SPARSE_PUSH_REQUEST__INIT;
      q.model = s->model, q.table = s->table, q.keys = s->keys + a, q.n_keys = b - a;
      q.rows.data = out + (size_t)a * rb, q.rows.len = (size_t)(b - a) * rb;
      q.worker = s->worker, q.clock = clock, q.codec = codec;
      Ps__SparsePushReply *rep = NULL;
      r = call_once(s, k, "/ps.Ps/SparsePush", &q.base, &ps__sparse_push_reply__descriptor,
                    (ProtobufCMessage **)&rep, eb);
      if (!r) protobuf_c_message_free_unpacked(&rep->base, NULL);
    }
    if (r && psw_retryable(r)) { /* lost with the connection: not resent */
      push_lost(s, b - a, eb);
      r = 0;
    }
    if (r && !rc) rc = r;
  }
  return rc;
}
