/* ps_rpc: blocking unary gRPC core calls with protobuf-c messages.
 *
 * One call = grpc_channel_create_call on a per-call pluck queue + one batch
 * of the six client ops, then pluck.  Replies arrive in many slices; they
 * are copied into one contiguous buffer because protobuf-c unpacks only
 * from one. */
#include "ps_rpc.h"
#include "ps_pb.h"
#include "ps_tls.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

struct ps_rpc {
  grpc_channel *ch;
};

/* rpc_open_creds creates the channel over CR (released here) with raised
 * message limits; 0 or PS_ENOMEM / PS_EUNAVAIL. */
static int rpc_open_creds(ps_rpc **out, const char *addr, grpc_channel_credentials *cr,
                          ps_errbuf *eb) {
  ps_rpc *r = calloc(1, sizeof *r);
  if (!r) {
    grpc_channel_credentials_release(cr);
    return ps_errf(eb, PS_ENOMEM, "out of memory opening '%s'", addr);
  }
  grpc_arg args[2];
  memset(args, 0, sizeof args);
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = PS_RPC_MAX_MSG;
  args[1] = args[0];
  args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  grpc_channel_args ca = {2, args};
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
  grpc_init();
  return rpc_open_creds(out, addr, grpc_insecure_credentials_create(), eb);
}

/* ps_rpc_open_cfg: the channel CFG's security asks for; see ps_rpc.h. */
int ps_rpc_open_cfg(ps_rpc **out, const char *addr, const ps_config *cfg, int role,
                    ps_errbuf *eb) {
  grpc_init();
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

/* ps_rpc_invoke sends the slice REQ (consumed) as one unary call and
 * returns the reply's bytes in *RESP (caller frees with free()). */
static int ps_rpc_invoke(ps_rpc *r, const char *method, grpc_slice req, void **resp,
                         size_t *resp_len, int timeout_ms, ps_errbuf *eb) {
  int err = 0;
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                       gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
  grpc_slice msl = grpc_slice_from_copied_string(method);
  grpc_call *call = grpc_channel_create_call(r->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, msl,
                                             NULL, deadline, NULL);
  grpc_slice_unref(msl);
  grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&req, 1);
  grpc_slice_unref(req);
  grpc_byte_buffer *recv = NULL;
  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_status_code st = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[5].data.recv_status_on_client.status = &st;
  ops[5].data.recv_status_on_client.status_details = &details;
  if (grpc_call_start_batch(call, ops, 6, call, NULL) != GRPC_CALL_OK) {
    err = ps_errf(eb, PS_EINTERNAL, "cannot start call '%s'", method);
    goto out_call;
  }
  /* The call's own deadline ends it; pluck waits without a limit of its own. */
  grpc_event ev = grpc_completion_queue_pluck(cq, call, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  if (ev.type != GRPC_OP_COMPLETE) {
    err = ps_errf(eb, PS_EINTERNAL, "call '%s' did not complete", method);
    goto out_call;
  }
  err = ps_rpc_status(method, st, details, eb);
  if (err == 0 && !recv) err = ps_errf(eb, PS_EPROTO, "'%s' answered without a message", method);
  if (err == 0 && ps_rpc_read_bb(recv, resp, resp_len) < 0)
    err = ps_errf(eb, PS_ENOMEM, "out of memory reading the reply of '%s'", method);
out_call:
  if (recv) grpc_byte_buffer_destroy(recv);
  grpc_byte_buffer_destroy(send);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  grpc_call_unref(call);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  return err;
}

/* ps_rpc_call_raw copies REQ into a slice and calls; see ps_rpc.h. */
int ps_rpc_call_raw(ps_rpc *r, const char *method, const void *req, size_t req_len,
                    void **resp, size_t *resp_len, int timeout_ms, ps_errbuf *eb) {
  grpc_slice s = grpc_slice_from_copied_buffer(req, req_len);
  return ps_rpc_invoke(r, method, s, resp, resp_len, timeout_ms, eb);
}

/* ps_rpc_call packs REQ into a buffer the slice then owns (no second
 * copy), calls, and unpacks the reply with RESP_DESC. */
int ps_rpc_call(ps_rpc *r, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                int timeout_ms, ps_errbuf *eb) {
  size_t n = protobuf_c_message_get_packed_size(req);
  if (n > PS_RPC_MAX_MSG) return ps_errf(eb, PS_ETOOBIG, "request to '%s' is %zu bytes", method, n);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return ps_errf(eb, PS_ENOMEM, "out of memory packing a request to '%s'", method);
  protobuf_c_message_pack(req, buf);
  grpc_slice s = grpc_slice_new(buf, n, free);
  void *rbuf = NULL;
  size_t rlen = 0;
  int err = ps_rpc_invoke(r, method, s, &rbuf, &rlen, timeout_ms, eb);
  if (err < 0) return err;
  ps_errbuf ueb;
  err = ps_pb_unpack(resp_desc, rbuf, rlen, resp, &ueb);
  free(rbuf);
  if (err < 0) return ps_errf(eb, PS_EPROTO, "cannot parse the reply of '%s': %s", method, ueb.msg);
  return 0;
}

/* ps_rpc_close destroys the channel and balances ps_rpc_open's grpc_init. */
void ps_rpc_close(ps_rpc *r) {
  if (!r) return;
  grpc_channel_destroy(r->ch);
  free(r);
  grpc_shutdown();
}
