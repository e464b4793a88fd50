/* psd_chan: the tensor-channel server of a shard (libuv TCP, loop thread).
 *
 * Decodes frames (common/ps_chan.h) into the shard's handlers
 * (psd_shard_push / psd_shard_pull; sparse rows: psd_shard_sparse_pull /
 * _push, as the gRPC calls), reading push data straight into a
 * per-connection buffer and writing pull replies from one buffer.  A bad
 * frame (magic, version, lengths, undecodable meta, a request before
 * HELLO, a HELLO with another cluster name) closes that connection only and
 * counts an error; a request the handler refuses is answered with a
 * CHAN_ERROR frame and the connection stays open.  Every request counts in
 * sh->inflight from the moment it is read until its reply is written.
 *
 * Limits on what a peer may hold (README "limits"): a header before the
 * HELLO may announce at most PS_CHAN_HELLO_META_MAX bytes of meta and no
 * data; at most cfg->max_connections connections are open at once (one
 * more is answered with a PS_EUNAVAIL error frame and closed at accept);
 * none is kept that would leave fewer than psd_fd_reserve descriptors
 * free (closed at accept, psd_fd.h); both refusals count in
 * sh->ctr.chan_refused.  A connection that moves no byte for
 * cfg->idle_timeout_ms, unless a pull of it is parked, is closed (counted
 * in sh->ctr.chan_idle_closed), as is one that has not finished its HELLO
 * within a few seconds of its accept (psd_chan.c invariant 8a); at
 * max_connections the oldest connection still in its HELLO is closed
 * (counted in chan_refused) to admit a new one, which is refused only
 * when every open connection is past its HELLO.  sh->chan_conns is the
 * number open.  Replies queued, all connections together, are bounded by
 * cfg->max_queued_bytes: over it, connections holding replies stop
 * reading and the slow readers among them are closed (counted in
 * sh->ctr.chan_slow_closed; psd_chan.c invariant 4a).  A bad frame after
 * the HELLO counts in sh->ctr.chan_bad_frames and is logged (invariant 6). */
#ifndef PSD_CHAN_H
#define PSD_CHAN_H

#include "ps_chan.h"
#include "ps_error.h"
#include "psd_shard.h"

/* psd_chan_start binds sh->me->channel_addr on sh->loop and starts
 * accepting; sets sh->chan.  Returns 0 or a PS_E* code (PS_EUNAVAIL when
 * the address is taken) with a message. */
int psd_chan_start(psd_shard *sh, ps_errbuf *eb);

/* psd_chan_stop_accepting closes the listener; open connections go on
 * (requests they send while sh->state is DRAINING are refused with
 * PS_ESHUTDOWN by the handlers). */
void psd_chan_stop_accepting(psd_shard *sh);

/* psd_chan_close closes every connection and the listener and frees
 * sh->chan once libuv has closed the handles (run the loop afterwards). */
void psd_chan_close(psd_shard *sh);

/* psd_chan_reload_keys reads security.secret_file again (SIGHUP: a key
 * added or retired without a restart; connections keep the key they
 * proved).  On error the old keys stay.  *NKEYS: keys now accepted.  On
 * an aggregator, the key it proves to its roots is read again too
 * (psd_agg_reload_key). */
int psd_chan_reload_keys(psd_shard *sh, size_t *nkeys, ps_errbuf *eb);

/* psd_chan_secured says whether the channel asks for the hello's proof. */
int psd_chan_secured(const psd_shard *sh);

/* psd_chan_hello_check checks a connection's first frame, header H and
 * decoded meta M, against CFG: a HELLO without data, of protocol version
 * PS_CHAN_VERSION, naming CFG's cluster.  Returns 0 when the shard
 * accepts it, else PS_EPROTO with the reason in EB and *ANSWER = 1 when
 * the peer is told the reason in an error frame before the close (a HELLO
 * of another version or cluster), 0 when the connection just closes (not
 * a hello).  Pure: reads its arguments only; any thread. */
int psd_chan_hello_check(const ps_config *cfg, const ps_chan_hdr *h, const Ps__ChanMeta *m,
                         int *answer, ps_errbuf *eb);

/* psd_chan_sparse_check checks the data length H->data_len of sparse
 * request M (CHAN_SPARSE_PULL: exactly its n_keys keys of 8 bytes;
 * CHAN_SPARSE_PUSH: at least those, the rows after them) before its data
 * is read: 0, or PS_EINVAL with the counts in EB (the shard reads the
 * data into scratch and answers the error; the connection stays).  What
 * the keys and rows say is the sparse entry points' to check
 * (psd_shard_sparse.h).  Pure; any thread. */
int psd_chan_sparse_check(const ps_chan_hdr *h, const Ps__ChanMeta *m, ps_errbuf *eb);

#endif
