/* psd_grpc: the gRPC control-plane server of a shard (gRPC core).
 *
 * A thread blocks in grpc_completion_queue_next and hands each complete
 * request to the shard's loop (a queue + uv_async_send, drained whole);
 * handlers run on the loop thread and their replies are sent with
 * grpc_call_start_batch.  Methods are dispatched through a table:
 * every rpc of ps.Ps (proto/ps.proto) and /grpc.health.v1.Health/Check
 * (SERVING once the shard serves). */
#ifndef PSD_GRPC_H
#define PSD_GRPC_H

#include "ps_error.h"
#include "psd_shard.h"

/* psd_grpc_start binds sh->me->grpc_addr and starts serving; sets
 * sh->grpc.  Returns 0 or PS_EUNAVAIL (address taken) with a message. */
int psd_grpc_start(psd_shard *sh, ps_errbuf *eb);

/* psd_grpc_stop_accepting starts the server's shutdown: new calls are
 * refused; calls already received are still answered (by the handlers,
 * which refuse data-plane work while the shard drains).  Loop thread. */
void psd_grpc_stop_accepting(psd_shard *sh);

/* psd_grpc_stop shuts the server down: new calls are refused, calls in
 * flight are cancelled after they are answered or DRAIN_MS passed, the
 * thread joined, grpc_shutdown called; answers handed-over requests while
 * it waits.  Sets sh->grpc to NULL; the memory is freed once libuv has
 * closed the async handle (run the loop afterwards).  Loop thread; blocks
 * at most about DRAIN_MS. */
void psd_grpc_stop(psd_shard *sh, int drain_ms);

/* psd_grpc_restart replaces the server with a new one on the same
 * address: psd_grpc_stop (pulls still parked are answered PS_EUNAVAIL,
 * open connections are closed: clients reconnect), then psd_grpc_start;
 * counted in sh->ctr.grpc_restarts.  For a listener that stopped
 * accepting (psd_probe.h).  Works with no server (sh->grpc NULL: a
 * restart that failed before).  Returns 0 or psd_grpc_start's error, with
 * sh->grpc then NULL.  Loop thread; blocks about DRAIN_MS at most, and
 * 2 s more when calls must be cancelled. */
int psd_grpc_restart(psd_shard *sh, int drain_ms, ps_errbuf *eb);

/* psd_grpc_reload_tls reads the TLS certificate, key and CA again
 * (SIGHUP) into sh->tls: new connections get them, open ones keep the
 * pair they were made with; on failure (the error in EB, naming the
 * file) the old ones stay.  PS_ENOTSUP when the shard serves no TLS.
 * Loop thread. */
int psd_grpc_reload_tls(psd_shard *sh, ps_errbuf *eb);

/* psd_grpc_method_roles returns the set of roles (PS_ROLE_BIT, ps_auth.h)
 * that may call method PATH ("/ps.Ps/Push") under TLS, or -1 for a method
 * the shard does not serve (refused to everyone).  psd_grpc_method_count:
 * how many methods it serves (ps.Ps's and Health/Check).  For the test
 * that every rpc of ps.proto has its roles (test_sec_method_table). */
int psd_grpc_method_roles(const char *path);
size_t psd_grpc_method_count(void);

#endif
