/* psw_sparse: a worker's client of one sparse table on the shards
 * (psd_shard_sparse.h): on each shard's tensor channel (CHAN_SPARSE_PULL /
 * CHAN_SPARSE_PUSH) where the shard offers rows there and sparse.plane is
 * `channel` (the default), else over gRPC (SparsePull / SparsePush); the
 * file comment of psw_sparse.c says when which.
 *
 * Keys are table keys (for a table with hash_buckets, map ids with
 * ps_place_row_key first, before deduplication).  A pull or push splits
 * its distinct keys by shard (ps_place_row_map: one hash per key) and
 * makes one request per shard that holds any (the channel's all sent
 * before any reply is read, gRPC's in turn); rows come back in the
 * caller's key order.  A pull names at most sparse.max_new_rows keys
 * (of the client's config) per request, as a shard creates at most that
 * many rows for one, and at most as many as limits.max_request_bytes
 * holds, each key counted PSW_SPARSE_KEY_BYTES + 4 x dim bytes (a shard
 * refuses a request whose rows take more than the limit in fp32, a
 * channel frame whose keys and rows do, a gRPC message of more than the
 * limit + 1 MiB): where a shard has more it is asked in parts, one
 * round of requests after the other, each at the same clock (pulls of
 * one step are admitted alike and never advance a clock: the shard's
 * clock rules, psd_shard_sparse.h, are the same for one part or many).
 * A push is not split: it follows the pull of the same keys, which gave
 * each key that may get a row its row (with sparse.admit_after, a key
 * the pull did not admit is not admitted by the push either), so it
 * creates none and stays the step's one push per shard (on a shard that
 * holds no dense chunk of the model the push advances the worker's
 * clock: a first part would let other workers' pulls past the step
 * before the rest is in).  A push with more keys on a shard than
 * limits.max_request_bytes holds (as above) is refused before any shard
 * is sent anything (PS_ETOOBIG naming the limit, the keys and bytes, and
 * what to raise).  Sparse
 * traffic goes to the root shards directly (never through an
 * aggregator), in the row codecs below, without the staleness bound.
 * A shard that is not there (the errors psw_retryable names: down,
 * restarting, draining, degraded) is waited for as psw_client.h's
 * invariant 4 says: a pull's call is made again with backoff for at most
 * workers.retry_ms (a pull may then have counted toward a key's admission
 * twice); a push's call is not resent (it may have been applied: sending
 * it again could apply it twice), it is dropped and counted
 * (psw_sparse_lost_pushes), said in the log at the first and at most
 * every 10 s after with the count lost since (a DEGRADED shard refuses
 * every push), and the push goes on to the other
 * shards; the next pull waits for the shard.  A pull the shard held
 * parked past pull_timeout_ms (it answers PS_ETIMEDOUT naming the slowest
 * worker) is asked again for as long as the shard answers so, as the
 * dense pull is (psw_client.h invariant 12).  A shard that refuses the
 * worker as expired (PS_EEXPIRED: it declared it dead and applied nothing)
 * makes the client call the rejoin hook (psw_sparse_set_rejoin) and ask
 * that shard again, its rows only, for at most workers.retry_ms while the
 * shards still refuse (invariant 5; a push so refused is not lost: it is
 * applied once, after the rejoin).  Any other refusal fails the request
 * (nothing of a failed pull is returned; a push may have reached the
 * shards before the failing one).
 *
 * Stops (psw_sparse_set_stop): every wait for a shard, on the channel or
 * on gRPC, looks at the stop flag every PSW_STOP_POLL_MS (psw_chan_await,
 * ps_rpc_call_stop), a push's answer PSW_STOP_PUSH_GRACE_MS more; a stop
 * fails the request with PS_ESHUTDOWN, a connection that still owes an
 * answer is dropped, and a push whose answer was not waited for is
 * counted lost.
 *
 * Not thread-safe: one per worker thread. */
#ifndef PSW_SPARSE_H
#define PSW_SPARSE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "ps_codec.h"
#include "ps_config.h"
#include "ps_error.h"

typedef struct psw_sparse psw_sparse;

/* A key's own bytes in a request, at most, beside its row's 4 x dim: 8
 * on the channel, up to 10 as a protobuf varint on gRPC, and room for an
 * int8 row's scale (4). */
#define PSW_SPARSE_KEY_BYTES 16

/* psw_sparse_open prepares the client of table TABLE (the embedding
 * parameter's index) of MODEL with rows of DIM floats, for worker WORKER,
 * on the shards of CFG (borrowed for the client's life).  It does not
 * connect yet; for rows on the channel (sparse.plane) it loads
 * security.secret_file's worker key (PS_ECONFIG when the file has none).
 * Close with psw_sparse_close. */
int psw_sparse_open(psw_sparse **out, const ps_config *cfg, const char *model, uint32_t table,
                    uint32_t dim, uint32_t worker, ps_errbuf *eb);
void psw_sparse_close(psw_sparse *s);

/* Row codecs: psw_sparse_set_codecs encodes pushes in PUSH and asks
 * for pulls in PULL from clock WARMUP on (before: fp32), each row on its
 * own (int8: one float32 scale per row, max|x| / 127).  Rows have no
 * error feedback (a residual per key would grow with the table): each
 * push's rounding is lost.  psw_sparse_row_codec maps a model's codec
 * to a row codec: fp32 and fp16 stay, int8 stays, onebit and topk (for
 * dense tensors) become int8. */
ps_codec_id psw_sparse_row_codec(ps_codec_id model_codec);
void psw_sparse_set_codecs(psw_sparse *s, ps_codec_id push, ps_codec_id pull, uint64_t warmup);

/* psw_sparse_set_stop: a set *STOP (a signal handler's flag) ends a
 * request's wait for a shard with PS_ESHUTDOWN (the file comment's
 * "Stops").  psw_sparse_set_rejoin: REJOIN(ARG) registers the worker again
 * and rejoins every shard after a shard refused it as expired (0, or why
 * not; psw_coord_rejoin); without it the refusal fails the request.
 * psw_sparse_lost_pushes counts the shard calls of pushes lost with a
 * connection or to a stop. */
void psw_sparse_set_stop(psw_sparse *s, volatile sig_atomic_t *stop);
void psw_sparse_set_rejoin(psw_sparse *s, int (*rejoin)(void *arg, ps_errbuf *eb), void *arg);
uint64_t psw_sparse_lost_pushes(const psw_sparse *s);

/* psw_sparse_pull writes the rows of the NKEYS distinct KEYS to ROWS
 * ([nkeys, dim]).  psw_sparse_push sends GRADS ([nkeys, dim]) as their
 * gradients, to every shard (one with no keys where none of KEYS is:
 * the step's clock alone).  CLOCK is the worker's clock.  Errors as the shards say
 * (ps_err_from_grpc), with the shard's id in EB. */
int psw_sparse_pull(psw_sparse *s, const uint64_t *keys, uint32_t nkeys, float *rows,
                    uint64_t clock, ps_errbuf *eb);
int psw_sparse_push(psw_sparse *s, const uint64_t *keys, uint32_t nkeys, const float *grads,
                    uint64_t clock, ps_errbuf *eb);

#endif
