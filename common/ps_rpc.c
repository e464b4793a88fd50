/* ps_rpc: blocking unary gRPC core calls with protobuf-c messages.
 *
 * One call = grpc_channel_create_call on a per-call completion queue + one
 * batch of the six client ops, then wait for it.  ps_rpc_call_all starts
 * one such call per channel on a shared queue, all with one deadline, and
 * takes their completions as they come.  Replies arrive in many slices; they
 * are copied into one contiguous buffer because protobuf-c unpacks only
 * from one. */
#include "ps_rpc.h"
#include "ps_pb.h"
#include "ps_time.h"
#include "ps_tls.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_addr.h"

struct ps_rpc {
  grpc_channel *ch;
};

/* ps_grpc_env: see ps_rpc.h. */
void ps_grpc_env(void) {
  char ms[16];
  snprintf(ms, sizeof ms, "%d", PS_RPC_BACKUP_POLL_MS);
  setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", ms, 0);
}

/* ps_grpc_init: see ps_rpc.h. */
void ps_grpc_init(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, ps_grpc_env); /* a main that did not call it */
  grpc_init();
}

/* rpc_open_creds creates the channel over CR (released here) with raised
 * message limits; 0 or PS_ENOMEM / PS_EUNAVAIL. */
static int rpc_open_creds(ps_rpc **out, const char *addr, grpc_channel_credentials *cr,
                          ps_errbuf *eb) {
  ps_rpc *r = calloc(1, sizeof *r);
  if (!r) {
    grpc_channel_credentials_release(cr);
    return ps_errf(eb, PS_ENOMEM, "out of memory opening '%s'", addr);
  }
  /* gRPC's own reconnect backoff stays (1 s, growing): with a faster one
   * a short-lived client (psctl) that reached a dead shard had a
   * reconnect timer fire while it exited, and gRPC's threads then crashed
   * in the exit's destructors (SIGSEGV, now and then). */
  static const struct { const char *key; int value; } iargs[] = {
      {GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, PS_RPC_MAX_MSG},
      {GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, PS_RPC_MAX_MSG},
      {GRPC_ARG_KEEPALIVE_TIME_MS, 3600000}, /* what enables the next one */
      {GRPC_ARG_KEEPALIVE_TIMEOUT_MS, PS_RPC_DEAD_MS}};
  enum { NARGS = sizeof iargs / sizeof iargs[0] };
  grpc_arg args[NARGS];
  memset(args, 0, sizeof args);
  for (size_t i = 0; i < NARGS; i++) {
    args[i].type = GRPC_ARG_INTEGER;
    args[i].key = (char *)iargs[i].key;
    args[i].value.integer = iargs[i].value;
  }
  grpc_channel_args ca = {NARGS, args};
  r->ch = grpc_channel_create(addr, cr, &ca);
  grpc_channel_credentials_release(cr);
  if (!r->ch) {
    grpc_shutdown();
    free(r);
    return ps_errf(eb, PS_EUNAVAIL, "cannot create a channel to '%s'", addr);
  }
  *out = r;
  return 0;
}

/* ps_rpc_open: an insecure channel; see ps_rpc.h. */
int ps_rpc_open(ps_rpc **out, const char *addr, ps_errbuf *eb) {
  ps_grpc_init();
  return rpc_open_creds(out, addr, grpc_insecure_credentials_create(), eb);
}

/* ps_rpc_open_cfg: the channel CFG's security asks for; see ps_rpc.h. */
int ps_rpc_open_cfg(ps_rpc **out, const char *addr, const ps_config *cfg, int role,
                    ps_errbuf *eb) {
  ps_grpc_init();
  grpc_channel_credentials *cr;
  int err = ps_tls_channel_creds(cfg, role, &cr, eb);
  if (err < 0) {
    grpc_shutdown();
    return err;
  }
  return rpc_open_creds(out, addr, cr, eb);
}

/* ps_rpc_read_bb copies byte buffer BB into a new malloc'd buffer; 0 or
 * PS_ENOMEM / PS_EPROTO. */
static int ps_rpc_read_bb(grpc_byte_buffer *bb, void **out, size_t *len) {
  size_t total = grpc_byte_buffer_length(bb), off = 0;
  unsigned char *buf = malloc(total ? total : 1);
  if (!buf) return PS_ENOMEM;
  grpc_byte_buffer_reader rd;
  if (!grpc_byte_buffer_reader_init(&rd, bb)) {
    free(buf);
    return PS_EPROTO;
  }
  grpc_slice sl;
  while (grpc_byte_buffer_reader_next(&rd, &sl)) {
    size_t n = GRPC_SLICE_LENGTH(sl);
    if (off + n > total) { /* decompressed: grow */
      unsigned char *nb = realloc(buf, off + n);
      if (!nb) {
        grpc_slice_unref(sl);
        grpc_byte_buffer_reader_destroy(&rd);
        free(buf);
        return PS_ENOMEM;
      }
      buf = nb;
      total = off + n;
    }
    memcpy(buf + off, GRPC_SLICE_START_PTR(sl), n);
    off += n;
    grpc_slice_unref(sl);
  }
  grpc_byte_buffer_reader_destroy(&rd);
  *out = buf;
  *len = off;
  return 0;
}

/* ps_rpc_status converts a finished call's status into 0 or a PS_E* code
 * with the server's message in EB. */
static int ps_rpc_status(const char *method, grpc_status_code st, grpc_slice details,
                         ps_errbuf *eb) {
  if (st == GRPC_STATUS_OK) return 0;
  char *msg = grpc_slice_to_c_string(details);
  int err = ps_err_from_grpc((int)st);
  if (msg && *msg)
    ps_errf(eb, err, "%s", msg);
  else
    ps_errf(eb, err, "'%s' failed with grpc status %d", method, (int)st);
  gpr_free(msg);
  return err;
}

/* One unary call in flight: what its six ops fill in. */
typedef struct rpc_call {
  grpc_call *call;
  grpc_byte_buffer *send, *recv;
  grpc_metadata_array init_md, trail_md;
  grpc_status_code st;
  grpc_slice details;
  int err;  /* 0, or why the batch could not start */
  int done; /* ps_rpc_call_all: its batch completed */
} rpc_call;

/* rpc_call_start starts METHOD with the bytes of REQ (not consumed) on
 * R's channel, completing on CQ with C as the tag; on failure c->err is
 * set (and EB) and nothing completes. */
static void rpc_call_start(rpc_call *c, ps_rpc *r, grpc_completion_queue *cq, const char *method,
                           grpc_slice req, gpr_timespec deadline, ps_errbuf *eb) {
  memset(c, 0, sizeof *c);
  grpc_slice msl = grpc_slice_from_copied_string(method);
  c->call = grpc_channel_create_call(r->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, msl, NULL,
                                     deadline, NULL);
  grpc_slice_unref(msl);
  c->send = grpc_raw_byte_buffer_create(&req, 1);
  grpc_metadata_array_init(&c->init_md);
  grpc_metadata_array_init(&c->trail_md);
  c->st = GRPC_STATUS_UNKNOWN;
  c->details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = c->send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->init_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &c->recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &c->trail_md;
  ops[5].data.recv_status_on_client.status = &c->st;
  ops[5].data.recv_status_on_client.status_details = &c->details;
  if (grpc_call_start_batch(c->call, ops, 6, c, NULL) != GRPC_CALL_OK)
    c->err = ps_errf(eb, PS_EINTERNAL, "cannot start call '%s'", method);
}

/* rpc_call_finish ends C, whose batch completed when DONE (or never
 * started: c->err), returns 0 with the reply's bytes in *RESP (caller
 * frees with free()) or a PS_E* code, and releases the call. */
static int rpc_call_finish(rpc_call *c, int done, const char *method, void **resp,
                           size_t *resp_len, ps_errbuf *eb) {
  int err = c->err;
  if (err == 0 && !done) err = ps_errf(eb, PS_EINTERNAL, "call '%s' did not complete", method);
  if (err == 0) err = ps_rpc_status(method, c->st, c->details, eb);
  if (err == 0 && !c->recv) err = ps_errf(eb, PS_EPROTO, "'%s' answered without a message", method);
  if (err == 0 && ps_rpc_read_bb(c->recv, resp, resp_len) < 0)
    err = ps_errf(eb, PS_ENOMEM, "out of memory reading the reply of '%s'", method);
  if (c->recv) grpc_byte_buffer_destroy(c->recv);
  grpc_byte_buffer_destroy(c->send);
  grpc_slice_unref(c->details);
  grpc_metadata_array_destroy(&c->init_md);
  grpc_metadata_array_destroy(&c->trail_md);
  grpc_call_unref(c->call);
  return err;
}

static gpr_timespec rpc_deadline(int timeout_ms) {
  return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

/* rpc_cq_next waits for CQ's next event; a call's own deadline ends it,
 * so the wait has no limit of its own. */
static grpc_event rpc_cq_next(grpc_completion_queue *cq) {
  return grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
}

/* rpc_cq_destroy drains and destroys CQ. */
static void rpc_cq_destroy(grpc_completion_queue *cq) {
  grpc_completion_queue_shutdown(cq);
  while (rpc_cq_next(cq).type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
}

/* rpc_cq_wait waits for CQ's one call C to complete (its deadline ends
 * it at the latest), looking at *STOP every PS_RPC_STOP_POLL_MS when STOP
 * is not NULL: once it has been set for GRACE_MS the call is cancelled
 * (it then completes at once, cancelled).  Returns 1 when the call
 * completed, 0 when the queue failed, PS_ESHUTDOWN when cancelled. */
static int rpc_cq_wait(grpc_completion_queue *cq, rpc_call *c, volatile sig_atomic_t *stop,
                       int grace_ms) {
  if (!stop) return rpc_cq_next(cq).type == GRPC_OP_COMPLETE;
  int64_t stop_at = 0;
  int cancelled = 0;
  for (;;) {
    gpr_timespec slice = cancelled ? gpr_inf_future(GPR_CLOCK_REALTIME)
                                   : rpc_deadline(PS_RPC_STOP_POLL_MS);
    grpc_event ev = grpc_completion_queue_next(cq, slice, NULL);
    if (ev.type == GRPC_OP_COMPLETE) return cancelled ? PS_ESHUTDOWN : 1;
    if (ev.type != GRPC_QUEUE_TIMEOUT) return 0;
    if (*stop && !stop_at) stop_at = ps_now_ms();
    if (*stop && ps_now_ms() - stop_at >= grace_ms) {
      grpc_call_cancel(c->call, NULL);
      cancelled = 1;
    }
  }
}

/* ps_rpc_invoke sends the slice REQ (consumed) as one unary call and
 * returns the reply's bytes in *RESP (caller frees with free()); STOP and
 * GRACE_MS as ps_rpc_call_stop says. */
static int ps_rpc_invoke(ps_rpc *r, const char *method, grpc_slice req, void **resp,
                         size_t *resp_len, int timeout_ms, volatile sig_atomic_t *stop,
                         int grace_ms, ps_errbuf *eb) {
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  rpc_call c;
  rpc_call_start(&c, r, cq, method, req, rpc_deadline(timeout_ms), eb);
  grpc_slice_unref(req);
  int done = c.err == 0 ? rpc_cq_wait(cq, &c, stop, grace_ms) : 0;
  int err = rpc_call_finish(&c, done != 0, method, resp, resp_len, eb);
  if (done == PS_ESHUTDOWN && err) /* (an answer that beat the cancel stands) */
    err = ps_errf(eb, PS_ESHUTDOWN, "stopped while waiting for the answer to '%s'", method);
  rpc_cq_destroy(cq);
  return err;
}

/* ps_rpc_call_raw copies REQ into a slice and calls; see ps_rpc.h. */
int ps_rpc_call_raw(ps_rpc *r, const char *method, const void *req, size_t req_len,
                    void **resp, size_t *resp_len, int timeout_ms, ps_errbuf *eb) {
  grpc_slice s = grpc_slice_from_copied_buffer(req, req_len);
  return ps_rpc_invoke(r, method, s, resp, resp_len, timeout_ms, NULL, 0, eb);
}

/* rpc_pack packs REQ into a slice that owns its buffer (no second copy). */
static int rpc_pack(const char *method, const ProtobufCMessage *req, grpc_slice *out,
                    ps_errbuf *eb) {
  size_t n = protobuf_c_message_get_packed_size(req);
  if (n > PS_RPC_MAX_MSG) return ps_errf(eb, PS_ETOOBIG, "request to '%s' is %zu bytes", method, n);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return ps_errf(eb, PS_ENOMEM, "out of memory packing a request to '%s'", method);
  protobuf_c_message_pack(req, buf);
  *out = grpc_slice_new(buf, n, free);
  return 0;
}

/* rpc_unpack turns the reply's bytes RBUF (freed here) into *RESP. */
static int rpc_unpack(const char *method, const ProtobufCMessageDescriptor *resp_desc, void *rbuf,
                      size_t rlen, ProtobufCMessage **resp, ps_errbuf *eb) {
  ps_errbuf ueb;
  int err = ps_pb_unpack(resp_desc, rbuf, rlen, resp, &ueb);
  free(rbuf);
  if (err < 0) return ps_errf(eb, PS_EPROTO, "cannot parse the reply of '%s': %s", method, ueb.msg);
  return 0;
}

/* ps_rpc_call_stop packs REQ, calls, and unpacks the reply with
 * RESP_DESC; see ps_rpc.h. */
int ps_rpc_call_stop(ps_rpc *r, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                     int timeout_ms, volatile sig_atomic_t *stop, int grace_ms, ps_errbuf *eb) {
  grpc_slice s;
  int err = rpc_pack(method, req, &s, eb);
  if (err < 0) return err;
  void *rbuf = NULL;
  size_t rlen = 0;
  err = ps_rpc_invoke(r, method, s, &rbuf, &rlen, timeout_ms, stop, grace_ms, eb);
  if (err < 0) return err;
  return rpc_unpack(method, resp_desc, rbuf, rlen, resp, eb);
}

/* ps_rpc_call is ps_rpc_call_stop that no stop ends. */
int ps_rpc_call(ps_rpc *r, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                int timeout_ms, ps_errbuf *eb) {
  return ps_rpc_call_stop(r, method, req, resp_desc, resp, timeout_ms, NULL, 0, eb);
}

/* ps_rpc_call_all: every call is started before the first is waited
 * for, all on one queue (each reply timed as it lands) and under one
 * deadline; see ps_rpc.h. */
int ps_rpc_call_all(ps_rpc *const *r, size_t n, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, int timeout_ms,
                    ps_rpc_reply *out) {
  for (size_t i = 0; i < n; i++) memset(&out[i], 0, sizeof out[i]);
  grpc_slice s;
  rpc_call *calls = calloc(n ? n : 1, sizeof *calls);
  ps_errbuf eb = {""};
  int err = calls ? rpc_pack(method, req, &s, &eb)
                  : ps_errf(&eb, PS_ENOMEM, "out of memory calling '%s'", method);
  if (err < 0) {
    for (size_t i = 0; i < n; i++) {
      out[i].err = err;
      out[i].eb = eb;
    }
    free(calls);
    return (int)n;
  }
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  gpr_timespec deadline = rpc_deadline(timeout_ms);
  double t0 = ps_now_s();
  size_t pending = 0;
  for (size_t i = 0; i < n; i++) {
    rpc_call_start(&calls[i], r[i], cq, method, s, deadline, &out[i].eb);
    if (calls[i].err == 0) pending++;
  }
  grpc_slice_unref(s);
  /* Each started batch completes exactly once, by its deadline at the
   * latest; its status says how it ended. */
  while (pending > 0) {
    grpc_event ev = rpc_cq_next(cq);
    if (ev.type != GRPC_OP_COMPLETE) break;
    size_t i = (size_t)((rpc_call *)ev.tag - calls);
    out[i].ms = (ps_now_s() - t0) * 1e3;
    calls[i].done = 1;
    pending--;
  }
  int failed = 0;
  for (size_t i = 0; i < n; i++) {
    void *rbuf = NULL;
    size_t rlen = 0;
    out[i].err = rpc_call_finish(&calls[i], calls[i].done, method, &rbuf, &rlen, &out[i].eb);
    if (out[i].err == 0)
      out[i].err = rpc_unpack(method, resp_desc, rbuf, rlen, &out[i].resp, &out[i].eb);
    failed += out[i].err < 0;
  }
  rpc_cq_destroy(cq);
  free(calls);
  return failed;
}

/* ps_rpc_replies_free: see ps_rpc.h. */
void ps_rpc_replies_free(ps_rpc_reply *out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (out[i].resp) protobuf_c_message_free_unpacked(out[i].resp, NULL);
    memset(&out[i], 0, sizeof out[i]);
  }
}

/* ps_rpc_close destroys the channel and balances ps_rpc_open's grpc_init. */
void ps_rpc_close(ps_rpc *r) {
  if (!r) return;
  grpc_channel_destroy(r->ch);
  free(r);
  grpc_shutdown();
}

/* ---- a connection refused in its handshake ----------------------------------- */

/* ps_rpc_explain_handshake: see ps_rpc.h. */
int ps_rpc_explain_handshake(const char *addr, int err, ps_errbuf *eb, int timeout_ms) {
  /* what gRPC core says when the connection was made but its handshake
   * failed: the peer closed or reset it (a TLS shard refusing a
   * certificate or a plaintext client), or TLS itself failed (a
   * plaintext shard, a CA that did not sign the shard) */
  static const char *const signs[] = {"Socket closed", "andshake failed", "Connection reset",
                                      "Broken pipe", "End of TCP stream"};
  if (err != PS_EUNAVAIL || !strstr(eb->msg, "failed to connect to all addresses")) return 0;
  int sign = 0;
  for (size_t i = 0; i < sizeof signs / sizeof signs[0]; i++) sign |= !!strstr(eb->msg, signs[i]);
  /* honest only when the address does take TCP connections */
  int fd;
  ps_errbuf ceb;
  if (!sign || ps_addr_dial("grpc", addr, timeout_ms, &fd, &ceb) < 0) return 0;
  close(fd);
  ps_errbuf why = *eb;
  ps_errf(eb, err, "'%s' takes TCP connections but the handshake on them failed: does "
          "security.mode match the shard's, and do the shard and this client accept each "
          "other's certificate (signed by tls.ca; this client's for TLS clients)? (%s)", addr,
          why.msg);
  return 1;
}

/* ps_rpc_reset_backoff: see ps_rpc.h. */
void ps_rpc_reset_backoff(ps_rpc *r) {
  if (r) grpc_channel_reset_connect_backoff(r->ch);
}
