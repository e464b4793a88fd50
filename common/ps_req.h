/* ps_req: one push or pull request as it travels transport -> shard ->
 * store (and client -> transport on the worker side): what ps-lite's
 * KVMeta and KVPairs carry, instead of a dozen positional arguments.
 *
 * Pointers are borrowed for the call that receives the request. */
#ifndef PS_REQ_H
#define PS_REQ_H

#include <stddef.h>
#include <stdint.h>

#include "ps_codec.h"

/* ps_lend: memory lent by reference beyond the call (a connection's
 * shared-memory region, psd_chan invariant 11): whoever keeps reading it
 * after the call returns calls hold(arg) first and release(arg) once done
 * with it; both are thread-safe, and release may free the memory and
 * this struct. */
typedef struct ps_lend {
  void (*hold)(void *arg);
  void (*release)(void *arg);
  void *arg;
} ps_lend;

typedef struct ps_req {
  const char *model;
  const uint32_t *ids;  /* chunk ids; the payload is their chunks in this order */
  size_t nids;
  uint32_t worker;
  uint64_t clock;       /* the worker's clock (completed steps) */
  uint64_t version;     /* push: the shard version the gradients were computed on */
  ps_codec_id codec;    /* encoding of the payload (ps_layout_payload_bytes) */
  const void *grads;    /* push: the encoded gradients */
  void *out;            /* pull: where the encoded values go */
  uint64_t nbytes;      /* payload bytes at grads / out */
  /* push from an aggregator: the workers whose gradients it sums (their
   * clocks advance; `worker` is one of them); NULL / 0: `worker` alone */
  const uint32_t *summed;
  size_t nsummed;
  /* to an aggregator: the stamp psd_agg_conn_stamp gave the request's
   * connection (a model's layout fetched before it is fetched again, to
   * see a replace); 0: none */
  uint64_t conn_stamp;
  /* push: when not NULL, *own is the malloc'd block (*own_cap bytes)
   * holding grads, which a redo log may take instead of copying the
   * gradients, putting a block of its own (or NULL, 0) in its place
   * (psd_wal_append_own); NULL: grads is only borrowed for the call.
   * With LEND, *own is not given but lent: a block the log may read
   * from after the call under LEND's rules (ps_lend), *own and *own_cap
   * staying the caller's (gradients in a client's shared memory whose
   * client leaves them unchanged until the push is answered, psd_chan
   * invariant 11) */
  void **own;
  size_t *own_cap;
  const ps_lend *lend;
} ps_req;

#endif
