/* psd_grpc: the gRPC core control-plane server of a shard.
 *
 * Threads and ownership:
 *  1. The gRPC thread blocks in grpc_completion_queue_next.  A call struct
 *     goes NEW (requested with grpc_server_request_call) -> RECV (its one
 *     request message requested) -> handed to the loop through a mutexed
 *     FIFO + uv_async_send -> SEND (reply batch started by the loop) ->
 *     freed by the gRPC thread when that batch completes.  A call is owned
 *     by exactly one thread at any time.
 *  2. Handlers run on the loop thread and never block; uv_async_send
 *     coalesces, so the async callback drains the whole FIFO.
 *  3. A pull, dense or sparse, that must wait for slower workers
 *     (psd_shard_pull_admit, psd_shard_sparse_pull_admit) is parked: the
 *     loop keeps the call and its request (c->held, whose descriptor says
 *     which), links it in g->parked and answers it from the park's
 *     callback; until then it counts in sh->inflight.  The shard releases parked pulls before it
 *     drains; a stop finds none parked unless it rebuilds the server
 *     (psd_grpc_restart), and then answers them PS_EUNAVAIL itself.
 *  3a. Under durability `sync` an applied Push or SparsePush is answered only once its
 *     redo log record is synced (psd_shard_push_durable): the call keeps
 *     its packed reply (c->sout), is linked in g->parked with c->syncing
 *     set, and is answered from the log's callback; a rebuild answers it
 *     PS_EUNAVAIL.
 *  4. Shutdown: grpc_server_shutdown_and_notify (no new calls), answer
 *     what was handed over, grpc_server_cancel_all_calls, wait for the
 *     notification, shut the queue down, join the thread (it stops at
 *     GRPC_QUEUE_SHUTDOWN), grpc_shutdown. */
#include "psd_grpc.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "health.pb-c.h"
#include "ps_auth.h"
#include "ps_log.h"
#include "ps_rpc.h"
#include "ps_time.h"
#include "ps_tls.h"
#include "psd_coord.h"
#include "psd_shard_sparse.h"
#include "psd_store.h"
#include "psd_wal.h"
#include "ps_pb.h"

#define PSD_GRPC_PENDING 8        /* grpc_server_request_call kept outstanding */
#define PSD_GRPC_META_SLACK (1u << 20) /* bytes allowed beyond max_request_bytes */

enum psd_grpc_stage { PSD_CALL_NEW, PSD_CALL_RECV, PSD_CALL_SEND };

typedef struct psd_grpc_call {
  enum psd_grpc_stage stage;
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
  grpc_byte_buffer *req;
  grpc_byte_buffer *resp;
  grpc_slice status_msg;
  int cancelled;
  struct psd_grpc_call *next;     /* in the hand-over FIFO */
  struct psd_grpc *g;
  ProtobufCMessage *held;         /* a parked pull's request (invariant 3) */
  psd_park park;
  struct psd_grpc_call *pprev, *pnext; /* in g->parked while held or syncing */
  int syncing;                    /* a push waits for its log sync (invariant 3a) */
  grpc_slice sout;                /* its packed reply */
  psd_wal_waiter swt;
} psd_grpc_call;

typedef struct psd_grpc {
  psd_shard *sh;
  grpc_server *server;
  grpc_completion_queue *cq;
  pthread_t thread;
  int thread_started;
  uv_async_t async;
  pthread_mutex_t mu;             /* guards head/tail */
  psd_grpc_call *head, *tail;
  atomic_int shutting_down;       /* no more request_call */
  atomic_int shutdown_notified;   /* the server's shutdown tag completed */
  int shutdown_started;
  char shutdown_tag;              /* its address is the tag */
  psd_grpc_call *parked;          /* parked pulls (invariant 3; loop thread) */
  uint64_t refused;               /* calls refused for the caller's role (loop thread) */
  ps_said refused_said;           /* their last log line (ps_now_ms) */
  ps_role_cache roles;            /* callers' certificates' roles (loop thread) */
} psd_grpc;

#define PSD_GRPC_REFUSE_LOG_MS 10000 /* at most one log line about refused calls this often */

/* ---- call structs -------------------------------------------------- */

/* psd_grpc_call_free releases a call struct and everything it holds. */
static void psd_grpc_call_free(psd_grpc_call *c) {
  if (c->call) grpc_call_unref(c->call);
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->md);
  if (c->req) grpc_byte_buffer_destroy(c->req);
  if (c->resp) grpc_byte_buffer_destroy(c->resp);
  if (c->held) protobuf_c_message_free_unpacked(c->held, NULL);
  grpc_slice_unref(c->status_msg);
  free(c);
}

/* psd_grpc_request asks the server for one more incoming call; returns 0
 * or -1 (shutting down, or out of memory). */
static int psd_grpc_request(psd_grpc *g) {
  if (atomic_load(&g->shutting_down)) return -1;
  psd_grpc_call *c = calloc(1, sizeof *c);
  if (!c) return -1;
  c->stage = PSD_CALL_NEW;
  c->g = g;
  c->status_msg = grpc_empty_slice();
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->md);
  if (grpc_server_request_call(g->server, &c->call, &c->details, &c->md, g->cq, g->cq, c) !=
      GRPC_CALL_OK) {
    psd_grpc_call_free(c);
    return -1;
  }
  return 0;
}

/* ---- the gRPC thread ------------------------------------------------- */

/* psd_grpc_handover queues C for the loop and wakes it. */
static void psd_grpc_handover(psd_grpc *g, psd_grpc_call *c) {
  c->next = NULL;
  pthread_mutex_lock(&g->mu);
  if (g->tail)
    g->tail->next = c;
  else
    g->head = c;
  g->tail = c;
  pthread_mutex_unlock(&g->mu);
  uv_async_send(&g->async);
}

/* psd_grpc_event advances the call whose batch completed (gRPC thread). */
static void psd_grpc_event(psd_grpc *g, psd_grpc_call *c, int ok) {
  switch (c->stage) {
    case PSD_CALL_NEW: {
      if (!ok) {
        psd_grpc_call_free(c);
        return;
      }
      psd_grpc_request(g);
      grpc_op op;
      memset(&op, 0, sizeof op);
      op.op = GRPC_OP_RECV_MESSAGE;
      op.data.recv_message.recv_message = &c->req;
      c->stage = PSD_CALL_RECV;
      if (grpc_call_start_batch(c->call, &op, 1, c, NULL) != GRPC_CALL_OK) psd_grpc_call_free(c);
      return;
    }
    case PSD_CALL_RECV:
      if (!ok) {
        psd_grpc_call_free(c);
        return;
      }
      psd_grpc_handover(g, c);
      return;
    case PSD_CALL_SEND:
      psd_grpc_call_free(c);
      return;
  }
}

/* psd_grpc_thread runs the completion queue until it is shut down. */
static void *psd_grpc_thread(void *arg) {
  psd_grpc *g = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    if (ev.tag == &g->shutdown_tag)
      atomic_store(&g->shutdown_notified, 1);
    else
      psd_grpc_event(g, ev.tag, ev.success);
  }
  return NULL;
}

/* ---- handlers (loop thread) ------------------------------------------- */

/* psd_grpc_pack packs MSG into a slice-owned buffer in *OUT. */
static int psd_grpc_pack(const ProtobufCMessage *msg, grpc_slice *out, ps_errbuf *eb) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return ps_errf(eb, PS_ENOMEM, "out of memory packing a reply of %zu bytes", n);
  protobuf_c_message_pack(msg, buf);
  *out = grpc_slice_new(buf, n, free);
  return 0;
}

/* A handler answers REQ (in *OUT) or returns a PS_E* code, or
 * PSD_GRPC_PARKED after taking REQ over into C->held (invariant 3). */
typedef int (*psd_grpc_handler)(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *req,
                                grpc_slice *out, ps_errbuf *eb);
#define PSD_GRPC_PARKED 1

/* SubmitModel: register a model spec on this shard. */
static int psd_grpc_submit(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                           grpc_slice *out, ps_errbuf *eb) {
  (void)c;
  const Ps__SubmitModelRequest *r = (const Ps__SubmitModelRequest *)m;
  Ps__SubmitModelReply rep = PS__SUBMIT_MODEL_REPLY__INIT;
  int err = psd_shard_submit(sh, r->model, r->replace, &rep, eb);
  return err < 0 ? err : psd_grpc_pack(&rep.base, out, eb);
}

/* GetModel: the registered spec of a model. */
static int psd_grpc_get_model(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                              grpc_slice *out, ps_errbuf *eb) {
  (void)c;
  const Ps__GetModelRequest *r = (const Ps__GetModelRequest *)m;
  const Ps__ModelSpec *spec = psd_shard_spec(sh, r->name);
  if (!spec) {
    psd_shard_count_error(sh);
    return ps_errf(eb, sh->store ? PS_ENOENT : PS_ENOTSUP, "unknown model '%s'%s", r->name,
                   sh->store ? "" : " (an aggregator holds no model: ask a root shard)");
  }
  Ps__GetModelReply rep = PS__GET_MODEL_REPLY__INIT;
  rep.model = (Ps__ModelSpec *)spec;
  return psd_grpc_pack(&rep.base, out, eb);
}

static void psd_grpc_synced(psd_done *d, int status, const char *msg);

/* psd_grpc_link puts C in g->parked (invariants 3, 3a). */
static void psd_grpc_link(psd_grpc_call *c) {
  c->pprev = NULL;
  c->pnext = c->g->parked;
  if (c->pnext) c->pnext->pprev = c;
  c->g->parked = c;
}

/* psd_grpc_unlink takes C out of g->parked. */
static void psd_grpc_unlink(psd_grpc_call *c) {
  if (c->pprev) c->pprev->pnext = c->pnext;
  else c->g->parked = c->pnext;
  if (c->pnext) c->pnext->pprev = c->pprev;
  c->pprev = c->pnext = NULL;
}

/* psd_grpc_push_durable holds an applied push's reply OUT until its log
 * record is synced (invariant 3a): PSD_GRPC_PARKED (M freed here), 0
 * (answer now) or an error (OUT released). */
static int psd_grpc_push_durable(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                                 grpc_slice *out, ps_errbuf *eb) {
  c->swt.done = (psd_done){.fn = psd_grpc_synced, .arg = c};
  int d = psd_shard_push_durable(sh, &c->swt, eb);
  if (d <= 0) {
    if (d < 0) grpc_slice_unref(*out);
    return d;
  }
  c->sout = *out;
  *out = grpc_empty_slice();
  c->syncing = 1;
  psd_grpc_link(c);
  protobuf_c_message_free_unpacked((ProtobufCMessage *)m, NULL);
  return PSD_GRPC_PARKED;
}

/* Push: gradients of some chunks. */
static int psd_grpc_push(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                         grpc_slice *out, ps_errbuf *eb) {
  const Ps__PushRequest *r = (const Ps__PushRequest *)m;
  ps_req q = {.model = r->model, .ids = r->chunk_ids, .nids = r->n_chunk_ids,
              .worker = r->worker, .clock = r->clock, .version = r->version,
              .codec = (ps_codec_id)r->codec, .grads = r->grads.data, .nbytes = r->grads.len};
  Ps__PushReply rep = PS__PUSH_REPLY__INIT;
  int err = psd_shard_push(sh, &q, &rep.version, eb);
  if (err == 0) err = psd_grpc_pack(&rep.base, out, eb);
  return err < 0 ? err : psd_grpc_push_durable(c, sh, m, out, eb);
}

/* psd_grpc_varint writes V as a protobuf varint at P; returns its length. */
static size_t psd_grpc_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

/* psd_grpc_pull_req describes pull R (borrowed) as a request. */
static ps_req psd_grpc_pull_req(const Ps__PullRequest *r) {
  return (ps_req){.model = r->model, .ids = r->chunk_ids, .nids = r->n_chunk_ids,
                  .worker = r->worker, .clock = r->clock, .codec = (ps_codec_id)r->codec};
}

/* psd_grpc_pull_serve answers pull R now.  The PullReply is encoded by
 * hand so that the store writes the values straight into the reply
 * buffer: [08 version][18 codec, when not fp32][12 len][values]. */
static int psd_grpc_pull_serve(psd_shard *sh, const Ps__PullRequest *r, grpc_slice *out,
                               ps_errbuf *eb) {
  ps_req q = psd_grpc_pull_req(r);
  uint64_t nelems;
  int err = psd_shard_payload(sh, &q, 0, &nelems, &q.nbytes, eb);
  if (err < 0) return err;
  enum { HDR_MAX = 1 + 10 + 1 + 5 + 1 + 10, DATA_OFF = 32 };
  uint8_t *buf = malloc(DATA_OFF + q.nbytes);
  if (!buf) return ps_errf(eb, PS_ENOMEM, "out of memory for a pull of %llu bytes",
                           (unsigned long long)q.nbytes);
  q.out = buf + DATA_OFF;
  uint64_t version = 0;
  err = psd_shard_pull(sh, &q, &version, eb);
  if (err < 0) {
    free(buf);
    return err;
  }
  uint8_t hdr[HDR_MAX];
  size_t h = 0;
  hdr[h++] = 0x08;
  h += psd_grpc_varint(hdr + h, version);
  if (q.codec != PS_CODEC_FP32) {
    hdr[h++] = 0x18;
    h += psd_grpc_varint(hdr + h, q.codec);
  }
  hdr[h++] = 0x12;
  h += psd_grpc_varint(hdr + h, q.nbytes);
  memcpy(buf + DATA_OFF - h, hdr, h);
  *out = grpc_slice_new_with_user_data(buf + DATA_OFF - h, h + q.nbytes, free, buf);
  return 0;
}

static void psd_grpc_unpark(psd_done *d, int status, const char *msg);

/* psd_grpc_hold keeps request M of a pull the clock table parked (on
 * c->park, answered by psd_grpc_unpark) and links C into g->parked. */
static int psd_grpc_hold(psd_grpc_call *c, const ProtobufCMessage *m) {
  c->held = (ProtobufCMessage *)m;
  psd_grpc_link(c);
  return PSD_GRPC_PARKED;
}

/* Pull: values of some chunks, served now or parked until the slower
 * workers caught up (invariant 3). */
static int psd_grpc_pull(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                         grpc_slice *out, ps_errbuf *eb) {
  const Ps__PullRequest *r = (const Ps__PullRequest *)m;
  ps_req q = psd_grpc_pull_req(r);
  uint64_t nelems, nbytes;
  int err = psd_shard_payload(sh, &q, 0, &nelems, &nbytes, eb);
  if (err < 0) return err;
  c->park.done = (psd_done){.fn = psd_grpc_unpark, .arg = c};
  err = psd_shard_pull_admit(sh, r->model, r->worker, r->clock, &c->park, eb);
  if (err < 0) return err;
  if (err == 1) return psd_grpc_hold(c, m);
  return psd_grpc_pull_serve(sh, r, out, eb);
}

/* RegisterWorker: a rank from the coordinator. */
static int psd_grpc_register(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                             grpc_slice *out, ps_errbuf *eb) {
  (void)c;
  Ps__RegisterWorkerReply rep = PS__REGISTER_WORKER_REPLY__INIT;
  int err = psd_shard_register(sh, (const Ps__RegisterWorkerRequest *)m, &rep, eb);
  if (err == 0) err = psd_grpc_pack(&rep.base, out, eb);
  free(rep.partitions);
  return err;
}

/* Heartbeat: refresh a worker's lease on this shard. */
static int psd_grpc_heartbeat(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                              grpc_slice *out, ps_errbuf *eb) {
  (void)c;
  Ps__HeartbeatReply rep = PS__HEARTBEAT_REPLY__INIT;
  int err = psd_shard_heartbeat(sh, (const Ps__HeartbeatRequest *)m, &rep, eb);
  if (err == 0) err = psd_grpc_pack(&rep.base, out, eb);
  free(rep.partitions);
  psd_coord_heartbeat_release(&rep);
  return err;
}

/* ListWorkers: this shard's lease table. */
static int psd_grpc_list_workers(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                                 grpc_slice *out, ps_errbuf *eb) {
  (void)c, (void)m;
  Ps__ListWorkersReply rep = PS__LIST_WORKERS_REPLY__INIT;
  int err = psd_shard_list_workers(sh, &rep, eb);
  if (err == 0) err = psd_grpc_pack(&rep.base, out, eb);
  psd_shard_list_workers_release(&rep);
  return err;
}

/* Status: the shard's state, models, counters and storage. */
static int psd_grpc_status(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                           grpc_slice *out, ps_errbuf *eb) {
  (void)c;
  (void)m;
  Ps__StatusReply rep;
  psd_shard_status(sh, &rep);
  int err = psd_grpc_pack(&rep.base, out, eb);
  psd_shard_status_release(&rep);
  return err;
}

/* Export: every chunk of a model this shard holds, with its values. */
static int psd_grpc_export(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                           grpc_slice *out, ps_errbuf *eb) {
  (void)c;
  const Ps__ExportRequest *r = (const Ps__ExportRequest *)m;
  const uint32_t *ids;
  size_t nids;
  uint64_t nelems;
  int held = psd_shard_held(sh, r->model, &ids, &nids, &nelems, eb);
  if (held < 0) return held;
  Ps__ExportReply rep = PS__EXPORT_REPLY__INIT;
  rep.n_chunk_ids = nids;
  rep.chunk_ids = (uint32_t *)ids;
  rep.values.len = nelems * sizeof(float);
  rep.values.data = malloc(rep.values.len ? rep.values.len : 1);
  if (!rep.values.data) return ps_errf(eb, PS_ENOMEM, "out of memory exporting '%s'", r->model);
  int err = 0;
  ps_req q = {.model = r->model, .ids = ids, .nids = nids, .out = rep.values.data,
              .nbytes = rep.values.len}; /* fp32 */
  if (nids) err = psd_shard_pull(sh, &q, &rep.version, eb);
  if (err == 0) err = psd_grpc_pack(&rep.base, out, eb);
  free(rep.values.data);
  return err;
}

/* psd_grpc_sparse_pull_serve answers sparse pull R now. */
static int psd_grpc_sparse_pull_serve(psd_shard *sh, const Ps__SparsePullRequest *r,
                                      grpc_slice *out, ps_errbuf *eb) {
  Ps__SparsePullReply rep = PS__SPARSE_PULL_REPLY__INIT;
  uint8_t *rows;
  int err = psd_shard_sparse_pull(sh, r, &rows, &rep.rows.len, eb);
  if (err < 0) return err;
  rep.rows.data = rows;
  rep.codec = r->codec;
  err = psd_grpc_pack(&rep.base, out, eb);
  free(rows);
  return err;
}

/* SparsePull: rows of distinct keys of one table (psd_shard_sparse.h),
 * served now or parked as a dense pull (invariant 3). */
static int psd_grpc_sparse_pull(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                                grpc_slice *out, ps_errbuf *eb) {
  const Ps__SparsePullRequest *r = (const Ps__SparsePullRequest *)m;
  c->park.done = (psd_done){.fn = psd_grpc_unpark, .arg = c};
  int err = psd_shard_sparse_pull_admit(sh, r, &c->park, eb);
  if (err < 0) return err;
  if (err == 1) return psd_grpc_hold(c, m);
  return psd_grpc_sparse_pull_serve(sh, r, out, eb);
}

/* SparsePush: gradients of distinct keys of one table. */
static int psd_grpc_sparse_push(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                                grpc_slice *out, ps_errbuf *eb) {
  Ps__SparsePushReply rep = PS__SPARSE_PUSH_REPLY__INIT;
  int err = psd_shard_sparse_push(sh, (const Ps__SparsePushRequest *)m, eb);
  if (err == 0) err = psd_grpc_pack(&rep.base, out, eb);
  return err < 0 ? err : psd_grpc_push_durable(c, sh, m, out, eb); /* under sync: its record synced */
}

/* ExportRows: a page of a sparse table's rows (psd_shard_sparse.h). */
static int psd_grpc_export_rows(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                                grpc_slice *out, ps_errbuf *eb) {
  (void)c;
  Ps__ExportRowsReply rep = PS__EXPORT_ROWS_REPLY__INIT;
  int err = psd_shard_sparse_export(sh, (const Ps__ExportRowsRequest *)m, &rep, eb);
  if (err < 0) return err;
  err = psd_grpc_pack(&rep.base, out, eb);
  psd_shard_sparse_export_release(&rep);
  return err;
}

/* grpc.health.v1.Health/Check: SERVING only while the shard serves. */
static int psd_grpc_health(psd_grpc_call *c, psd_shard *sh, const ProtobufCMessage *m,
                           grpc_slice *out, ps_errbuf *eb) {
  (void)c;
  const Grpc__Health__V1__HealthCheckRequest *r = (const Grpc__Health__V1__HealthCheckRequest *)m;
  if (r->service && *r->service && strcmp(r->service, "ps.Ps"))
    return ps_errf(eb, PS_ENOENT, "unknown service '%s'", r->service);
  Grpc__Health__V1__HealthCheckResponse rep = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  rep.status = sh->state == PSD_SERVING
                   ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                   : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
  return psd_grpc_pack(&rep.base, out, eb);
}

/* The methods and the roles (ps_auth.h) that may call them under TLS:
 * only an operator changes models or pages through a sparse table
 * (ExportRows: psctl export's; no worker calls it, it lists every key of
 * a table, which SparsePull does not, and writes the rows changed in
 * memory to RocksDB on each page); workers (and aggregators) push, pull,
 * register, heartbeat and read (Export serves psw --evaluate); anyone,
 * even without a certificate, may ask Health/Check.  Every method of the
 * service ps.Ps is here with a role set of its own choosing: a method not
 * in the table is refused to everyone (UNIMPLEMENTED), and test_sec_method_
 * table fails for an rpc of ps.proto missing here (psd_grpc_method_roles). */
static const struct psd_grpc_method {
  const char *path;
  const ProtobufCMessageDescriptor *req_desc;
  psd_grpc_handler handle;
  unsigned roles;
} psd_grpc_methods[] = {
    {"/ps.Ps/SubmitModel", &ps__submit_model_request__descriptor, psd_grpc_submit,
     PS_ROLES_OPERATOR},
    {"/ps.Ps/GetModel", &ps__get_model_request__descriptor, psd_grpc_get_model, PS_ROLES_CLIENT},
    {"/ps.Ps/Push", &ps__push_request__descriptor, psd_grpc_push, PS_ROLES_CLIENT},
    {"/ps.Ps/Pull", &ps__pull_request__descriptor, psd_grpc_pull, PS_ROLES_CLIENT},
    {"/ps.Ps/Status", &ps__status_request__descriptor, psd_grpc_status, PS_ROLES_CLIENT},
    {"/ps.Ps/Export", &ps__export_request__descriptor, psd_grpc_export, PS_ROLES_CLIENT},
    {"/ps.Ps/RegisterWorker", &ps__register_worker_request__descriptor, psd_grpc_register,
     PS_ROLES_CLIENT},
    {"/ps.Ps/Heartbeat", &ps__heartbeat_request__descriptor, psd_grpc_heartbeat,
     PS_ROLES_CLIENT},
    {"/ps.Ps/ListWorkers", &ps__list_workers_request__descriptor, psd_grpc_list_workers,
     PS_ROLES_CLIENT},
    {"/ps.Ps/SparsePull", &ps__sparse_pull_request__descriptor, psd_grpc_sparse_pull,
     PS_ROLES_CLIENT},
    {"/ps.Ps/SparsePush", &ps__sparse_push_request__descriptor, psd_grpc_sparse_push,
     PS_ROLES_CLIENT},
    {"/ps.Ps/ExportRows", &ps__export_rows_request__descriptor, psd_grpc_export_rows,
     PS_ROLES_OPERATOR},
    {"/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor,
     psd_grpc_health, PS_ROLES_ANY},
};

/* psd_grpc_method_roles: see psd_grpc.h. */
int psd_grpc_method_roles(const char *path) {
  for (size_t i = 0; i < sizeof psd_grpc_methods / sizeof psd_grpc_methods[0]; i++)
    if (!strcmp(psd_grpc_methods[i].path, path)) return (int)psd_grpc_methods[i].roles;
  return -1;
}

/* psd_grpc_method_count: see psd_grpc.h. */
size_t psd_grpc_method_count(void) { return sizeof psd_grpc_methods / sizeof psd_grpc_methods[0]; }

/* psd_grpc_role returns the caller's role: the OU attributes of its
 * verified client certificate's subject (the certificate itself, from
 * gRPC's auth context: the printed x509_subject property cannot tell an
 * OU from a CN that contains ",OU=operator"), PS_ROLE_NONE without one;
 * -1 when the control plane is plaintext (no identities: every role).
 * Parsed once per certificate: g->roles keeps recent ones by their exact
 * PEM bytes (a certificate rotated by a SIGHUP reload is parsed anew). */
static int psd_grpc_role(psd_shard *sh, grpc_call *call) {
  if (sh->cfg->security.mode != PS_SEC_TLS) return -1;
  grpc_auth_context *ctx = grpc_call_auth_context(call);
  if (!ctx) return PS_ROLE_NONE;
  grpc_auth_property_iterator it =
      grpc_auth_context_find_properties_by_name(ctx, GRPC_X509_PEM_CERT_PROPERTY_NAME);
  const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
  psd_grpc *g = sh->grpc;
  int role = !p || !p->value ? PS_ROLE_NONE
             : g         ? ps_role_cache_get(&g->roles, p->value, p->value_length)
                         : ps_role_from_cert_pem(p->value, p->value_length);
  grpc_auth_context_release(ctx);
  return role;
}

/* psd_grpc_who writes into WHO (CAP bytes) the caller's certificate
 * subject as gRPC prints it, escaped for a log line, or "no client
 * certificate" (only for a refusal's log line: not on every call). */
static void psd_grpc_who(grpc_call *call, char *who, size_t cap) {
  snprintf(who, cap, "no client certificate");
  grpc_auth_context *ctx = grpc_call_auth_context(call);
  if (!ctx) return;
  grpc_auth_property_iterator it =
      grpc_auth_context_find_properties_by_name(ctx, GRPC_X509_SUBJECT_PROPERTY_NAME);
  const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
  if (p && p->value) {
    char subject[256];
    size_t n = p->value_length < sizeof subject - 1 ? p->value_length : sizeof subject - 1;
    memcpy(subject, p->value, n);
    subject[n] = '\0';
    char shown[4 * sizeof subject + 8];
    snprintf(who, cap, "subject '%s'", ps_log_escape(shown, sizeof shown, subject, n));
  }
  grpc_auth_context_release(ctx);
}

/* psd_grpc_allow checks C's caller may call M; 0 or PS_EPERM (counted in
 * auth_refused and logged with the caller's subject and address, at most
 * every PSD_GRPC_REFUSE_LOG_MS: a stranger cannot fill the log). */
static int psd_grpc_allow(psd_shard *sh, psd_grpc_call *c, const struct psd_grpc_method *m,
                          ps_errbuf *eb) {
  if (m->roles == PS_ROLES_ANY) return 0;
  int role = psd_grpc_role(sh, c->call);
  if (role < 0 || (m->roles & PS_ROLE_BIT(role))) return 0;
  sh->ctr.auth_refused++;
  psd_shard_count_error(sh);
  ps_errf(eb, PS_EPERM, "'%s' is not allowed for role '%s'%s", m->path, ps_role_name(role),
          role == PS_ROLE_NONE ? " (no client certificate, or one whose OU is not "
                                 "worker, aggregator or operator)" : "");
  psd_grpc *g = sh->grpc;
  uint64_t n = g ? ps_said_due(&g->refused_said, ++g->refused, (uint64_t)ps_now_ms(),
                               PSD_GRPC_REFUSE_LOG_MS)
                 : 0;
  if (n) {
    char *peer = grpc_call_get_peer(c->call), shown[4 * 64 + 8], who[4 * 256 + 32];
    psd_grpc_who(c->call, who, sizeof who);
    ps_warn("grpc: refused %llu calls for the caller's role since the last report; the last "
            "from %s, %s: %s", (unsigned long long)n,
            peer ? ps_log_escape(shown, sizeof shown, peer, 64) : "an unknown peer", who,
            eb->msg);
    gpr_free(peer);
  }
  return PS_EPERM;
}

/* psd_grpc_method_find returns the table entry for C's method, or NULL. */
static const struct psd_grpc_method *psd_grpc_method_find(const psd_grpc_call *c) {
  for (size_t i = 0; i < sizeof psd_grpc_methods / sizeof psd_grpc_methods[0]; i++)
    if (grpc_slice_str_cmp(c->details.method, psd_grpc_methods[i].path) == 0)
      return &psd_grpc_methods[i];
  return NULL;
}

/* psd_grpc_unpack copies the request's slices into one buffer and unpacks
 * it with DESC (ps_pb_unpack: strings checked) into *OUT (caller frees it
 * with protobuf_c_message_free_unpacked); 0 or PS_EINVAL / PS_ENOMEM. */
static int psd_grpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc,
                           ProtobufCMessage **out, ps_errbuf *eb) {
  grpc_byte_buffer_reader rd;
  *out = NULL;
  if (!grpc_byte_buffer_reader_init(&rd, bb))
    return ps_errf(eb, PS_EINVAL, "unreadable %s message", desc->short_name);
  grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
  grpc_byte_buffer_reader_destroy(&rd);
  int err = ps_pb_unpack(desc, GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all), out, eb);
  grpc_slice_unref(all);
  return err;
}

/* psd_grpc_handle runs C's handler; 0 with the reply in *OUT or a PS_E*
 * code with a message in EB. */
static int psd_grpc_handle(psd_shard *sh, psd_grpc_call *c, grpc_slice *out, ps_errbuf *eb) {
  const struct psd_grpc_method *m = psd_grpc_method_find(c);
  if (!m) {
    char *path = grpc_slice_to_c_string(c->details.method);
    ps_errf(eb, PS_ENOTSUP, "unknown method '%s'", path ? path : "");
    gpr_free(path);
    psd_shard_count_error(sh);
    return PS_ENOTSUP;
  }
  int err = psd_grpc_allow(sh, c, m, eb);
  if (err < 0) return err;
  if (!c->req) {
    psd_shard_count_error(sh);
    return ps_errf(eb, PS_EINVAL, "'%s' call without a request message", m->path);
  }
  size_t len = grpc_byte_buffer_length(c->req);
  if (len > sh->cfg->max_request_bytes + PSD_GRPC_META_SLACK) {
    psd_shard_count_error(sh);
    return ps_errf(eb, PS_ETOOBIG, "'%s' request of %zu bytes exceeds max_request_bytes %llu",
                   m->path, len, (unsigned long long)sh->cfg->max_request_bytes);
  }
  ProtobufCMessage *req;
  ps_errbuf ueb;
  err = psd_grpc_unpack(c->req, m->req_desc, &req, &ueb);
  grpc_byte_buffer_destroy(c->req);
  c->req = NULL;
  if (err < 0) {
    psd_shard_count_error(sh);
    return ps_errf(eb, err, "cannot parse the '%s' request: %s", m->path, ueb.msg);
  }
  err = m->handle(c, sh, req, out, eb);
  if (err != PSD_GRPC_PARKED) protobuf_c_message_free_unpacked(req, NULL);
  /* A submit's transient copies (the request's bytes and its unpacked
   * message, freed here, and the store's own, freed in psd_store_submit)
   * are not counted by the memory budget: they go back to the system
   * here, where malloc kept them (200 bytes a tensor of a model of tiny
   * tensors, over the 290 the budget counts, the heap's top held by
   * what the submit kept). */
  if (m->handle == psd_grpc_submit) malloc_trim(0);
  return err;
}

/* psd_grpc_reply starts C's reply batch: OUT (taken over) when ERR is 0,
 * else status ERR with EB's message; the gRPC thread frees the call when
 * the batch completes. */
static void psd_grpc_reply(psd_grpc_call *c, int err, grpc_slice out, const ps_errbuf *eb) {
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
  if (err == 0) {
    c->resp = grpc_raw_byte_buffer_create(&out, 1);
    grpc_slice_unref(out);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = c->resp;
  } else {
    c->status_msg = grpc_slice_from_copied_string(eb->msg);
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = (grpc_status_code)ps_err_to_grpc(err);
  ops[n++].data.send_status_from_server.status_details = err ? &c->status_msg : NULL;
  ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
  c->stage = PSD_CALL_SEND;
  if (grpc_call_start_batch(c->call, ops, n, c, NULL) != GRPC_CALL_OK) {
    ps_warn("grpc: cannot start a reply batch");
    psd_grpc_call_free(c);
  }
}

/* psd_grpc_unpark answers a parked pull once the clock table released it
 * (invariant 3). */
static void psd_grpc_unpark(psd_done *d, int status, const char *msg) {
  psd_grpc_call *c = d->arg;
  psd_shard *sh = c->g->sh;
  psd_grpc_unlink(c);
  ps_errbuf eb = {{0}};
  grpc_slice out = grpc_empty_slice();
  int err = status;
  if (status == 0 && c->held->descriptor == &ps__sparse_pull_request__descriptor) {
    err = psd_grpc_sparse_pull_serve(sh, (const Ps__SparsePullRequest *)c->held, &out, &eb);
  } else if (status == 0) {
    err = psd_grpc_pull_serve(sh, (const Ps__PullRequest *)c->held, &out, &eb);
  } else {
    psd_shard_count_error(sh);
    snprintf(eb.msg, sizeof eb.msg, "%s", msg ? msg : ps_strerror(status));
  }
  protobuf_c_message_free_unpacked(c->held, NULL);
  c->held = NULL;
  psd_grpc_reply(c, err, out, &eb);
  if (sh->inflight) sh->inflight--;
}

/* psd_grpc_synced answers a push once its log record is synced, or the
 * log's error (invariant 3a). */
static void psd_grpc_synced(psd_done *d, int status, const char *msg) {
  psd_grpc_call *c = d->arg;
  psd_shard *sh = c->g->sh;
  psd_grpc_unlink(c);
  c->syncing = 0;
  ps_errbuf eb = {{0}};
  grpc_slice out = c->sout;
  c->sout = grpc_empty_slice();
  if (status < 0) {
    grpc_slice_unref(out);
    out = grpc_empty_slice();
    psd_shard_count_error(sh);
    snprintf(eb.msg, sizeof eb.msg, "%s", msg ? msg : ps_strerror(status));
  }
  psd_grpc_reply(c, status, out, &eb);
  if (sh->inflight) sh->inflight--;
}

/* psd_grpc_answer handles one handed-over call and starts its reply
 * batch, unless the call was parked (answered by psd_grpc_unpark). */
static void psd_grpc_answer(psd_grpc *g, psd_grpc_call *c) {
  psd_shard *sh = g->sh;
  sh->inflight++;
  ps_errbuf eb = {{0}};
  grpc_slice out = grpc_empty_slice();
  int err = psd_grpc_handle(sh, c, &out, &eb);
  if (err == PSD_GRPC_PARKED) return; /* stays in flight */
  psd_grpc_reply(c, err, out, &eb);
  sh->inflight--;
}

/* psd_grpc_drain answers every handed-over call; returns how many. */
static size_t psd_grpc_drain(psd_grpc *g) {
  pthread_mutex_lock(&g->mu);
  psd_grpc_call *c = g->head;
  g->head = g->tail = NULL;
  pthread_mutex_unlock(&g->mu);
  size_t n = 0;
  while (c) {
    psd_grpc_call *next = c->next;
    psd_grpc_answer(g, c);
    c = next;
    n++;
  }
  return n;
}

static void psd_grpc_on_async(uv_async_t *a) { psd_grpc_drain(a->data); }

/* ---- start / stop ---------------------------------------------------- */

/* psd_grpc_start creates, binds and starts the server and its thread. */
int psd_grpc_start(psd_shard *sh, ps_errbuf *eb) {
  psd_grpc *g = calloc(1, sizeof *g);
  if (!g) return ps_errf(eb, PS_ENOMEM, "out of memory starting grpc");
  g->sh = sh;
  pthread_mutex_init(&g->mu, NULL);
  ps_grpc_init();
  uint64_t max = sh->cfg->max_request_bytes + PSD_GRPC_META_SLACK;
  grpc_arg args[3];
  memset(args, 0, sizeof args);
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = max > INT_MAX ? INT_MAX : (int)max;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  args[1].value.integer = -1;
  args[2].type = GRPC_ARG_INTEGER;
  args[2].key = GRPC_ARG_ALLOW_REUSEPORT; /* a taken port must fail, not be shared */
  args[2].value.integer = 0;
  grpc_channel_args ca = {3, args};
  g->server = grpc_server_create(&ca, NULL);
  g->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(g->server, g->cq, NULL);
  grpc_server_credentials *cr;
  int err = 0;
  /* the pair is read once, and then at SIGHUP only (psd_grpc_reload_tls):
   * a restart serves what the last good reload read */
  if (sh->cfg->security.mode == PS_SEC_TLS && !sh->tls)
    err = ps_tls_server_open(sh->cfg, &sh->tls, eb);
  if (err == 0) err = ps_tls_server_creds(sh->cfg, sh->tls, &cr, eb);
  if (err < 0) goto undo_server;
  int port = grpc_server_add_http2_port(g->server, sh->me->grpc_addr, cr);
  grpc_server_credentials_release(cr);
  if (port <= 0) {
    err = ps_errf(eb, PS_EUNAVAIL, "cannot listen on grpc address '%s' (taken or invalid)",
                  sh->me->grpc_addr);
    goto undo_server;
  }
  if (uv_async_init(sh->loop, &g->async, psd_grpc_on_async) < 0) {
    err = ps_errf(eb, PS_EINTERNAL, "cannot create the grpc hand-over");
    goto undo_server;
  }
  g->async.data = g;
  if (pthread_create(&g->thread, NULL, psd_grpc_thread, g) != 0) {
    err = ps_errf(eb, PS_EINTERNAL, "cannot start the grpc thread");
    goto undo_async;
  }
  g->thread_started = 1;
  grpc_server_start(g->server);
  for (int i = 0; i < PSD_GRPC_PENDING; i++) psd_grpc_request(g);
  sh->grpc = (struct psd_grpc *)g;
  return 0;
undo_async:
  uv_close((uv_handle_t *)&g->async, NULL);
undo_server:
  grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
  grpc_server_cancel_all_calls(g->server);
  grpc_completion_queue_shutdown(g->cq);
  while (grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_server_destroy(g->server);
  grpc_completion_queue_destroy(g->cq);
  grpc_shutdown();
  pthread_mutex_destroy(&g->mu);
  /* When the async handle was initialised, libuv still references it
   * until the loop runs its close: keep G (a small, one-time leak) then. */
  if (err == 0 || !uv_is_closing((uv_handle_t *)&g->async)) free(g);
  return err;
}

/* psd_grpc_stop_accepting asks the server to refuse new calls. */
void psd_grpc_stop_accepting(psd_shard *sh) {
  psd_grpc *g = (psd_grpc *)sh->grpc;
  if (!g || g->shutdown_started) return;
  g->shutdown_started = 1;
  atomic_store(&g->shutting_down, 1);
  grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
}

static void psd_grpc_on_closed(uv_handle_t *h) {
  psd_grpc *g = h->data;
  pthread_mutex_destroy(&g->mu);
  ps_role_cache_free(&g->roles);
  free(g);
}

/* psd_grpc_wait answers hand-overs until the shutdown notification came
 * or DEADLINE_NS (uv_hrtime) passed; returns 1 when notified. */
static int psd_grpc_wait(psd_grpc *g, uint64_t deadline_ns) {
  while (!atomic_load(&g->shutdown_notified)) {
    if (!psd_grpc_drain(g)) {
      if (uv_hrtime() >= deadline_ns) return 0;
      uv_sleep(2);
    }
  }
  psd_grpc_drain(g);
  return 1;
}

/* psd_grpc_stop: see psd_grpc.h. */
void psd_grpc_stop(psd_shard *sh, int drain_ms) {
  psd_grpc *g = (psd_grpc *)sh->grpc;
  if (!g) return;
  /* invariants 3, 3a: when the server is rebuilt, or the shard stops
   * with calls still waiting when its drain time ran out */
  int stopping = sh->state == PSD_DRAINING;
  while (g->parked) {
    psd_grpc_call *c = g->parked;
    if (c->syncing) {
      psd_wal_cancel(sh->wal, &c->swt);
      psd_grpc_synced(&c->swt.done, PS_EUNAVAIL,
                      stopping ? "the shard is stopping before this push was confirmed durable "
                                 "(it is applied and logged, the log not yet synced)"
                               : "the shard's gRPC server is restarting before this push was "
                                 "confirmed durable (it is applied and logged)");
      continue;
    }
    psd_clock_cancel(sh->clock, &c->park);
    psd_grpc_unpark(&c->park.done, PS_EUNAVAIL,
                    stopping ? "the shard is stopping; retry once it is back"
                             : "the shard's gRPC server is restarting; retry");
  }
  psd_grpc_stop_accepting(sh);
  uint64_t now = uv_hrtime();
  if (!psd_grpc_wait(g, now + (uint64_t)drain_ms * 1000000)) {
    grpc_server_cancel_all_calls(g->server);
    if (!psd_grpc_wait(g, uv_hrtime() + 2000000000ull))
      ps_warn("grpc: calls still open after cancelling them");
  }
  grpc_completion_queue_shutdown(g->cq);
  if (g->thread_started) pthread_join(g->thread, NULL);
  psd_grpc_drain(g); /* nothing should be left; answers start no new work */
  grpc_server_destroy(g->server);
  grpc_completion_queue_destroy(g->cq);
  grpc_shutdown();
  sh->grpc = NULL;
  uv_close((uv_handle_t *)&g->async, psd_grpc_on_closed);
}

/* psd_grpc_restart: see psd_grpc.h. */
int psd_grpc_restart(psd_shard *sh, int drain_ms, ps_errbuf *eb) {
  ps_grpc_init(); /* the library stays up between the old server and the new */
  psd_grpc_stop(sh, drain_ms);
  int err = psd_grpc_start(sh, eb);
  grpc_shutdown();
  if (err == 0) sh->ctr.grpc_restarts++;
  return err;
}

/* psd_grpc_reload_tls: see psd_grpc.h. */
int psd_grpc_reload_tls(psd_shard *sh, ps_errbuf *eb) {
  if (!sh->tls) return ps_errf(eb, PS_ENOTSUP, "the gRPC server does not serve TLS");
  return ps_tls_server_reload(sh->tls, eb);
}
