/* ps_place: chunk placement and deterministic initial values.
 *
 * A chunk (model, tensor, index) lives on the shard with the highest
 * rendezvous (highest-random-weight) score hash(model, tensor, index,
 * shard id) over the shard ids of the cluster file.  Every process computes
 * the same answer with no lookup; adding a shard moves only the chunks
 * whose new highest score is the new shard's (about 1/(n+1) of them).
 * Pure functions; thread-safe. */
#ifndef PS_PLACE_H
#define PS_PLACE_H

#include <stddef.h>
#include <stdint.h>

/* ps_hash64 is FNV-1a over bytes followed by a splitmix64 finaliser. */
uint64_t ps_hash64(const void *data, size_t len, uint64_t seed);

/* ps_mix64 is the splitmix64 finaliser (a bijection on 64-bit values). */
uint64_t ps_mix64(uint64_t x);

/* ps_splitmix64 returns the next 64 random bits of the splitmix64
 * sequence whose state is *STATE, and advances it. */
uint64_t ps_splitmix64(uint64_t *state);

/* ps_place_chunk returns the index into SHARD_IDS (NSHARDS > 0 entries) of
 * the shard that holds chunk (MODEL, TENSOR, INDEX). */
size_t ps_place_chunk(const char *model, uint32_t tensor, uint32_t index,
                      const uint32_t *shard_ids, size_t nshards);

/* Initializers: ps_init_fill writes N values of tensor TENSOR starting at
 * element FIRST into DST.  Each value is a function of (SEED, TENSOR,
 * element index) only, so any chunking and shard count give the same
 * tensor.  KIND: "zeros", "ones", "uniform" (U[-scale, scale)), "normal"
 * (N(0, scale^2)), "glorot" (U[-a, a), a = scale * sqrt(6 / (fan_in +
 * fan_out)), fan_in = shape[0], fan_out = shape[1] or 1).  Returns 0, or
 * PS_EINVAL for an unknown KIND. */
int ps_init_fill(float *dst, const char *kind, float scale, uint64_t seed,
                 uint32_t tensor, uint64_t first, uint64_t n,
                 uint64_t fan_in, uint64_t fan_out);

/* ps_init_known says whether KIND names an initializer (1) or not (0). */
int ps_init_known(const char *kind);

/* Embedding rows (sparse tables).  Keys are 64-bit ids; a table whose
 * graph parameter has hash_buckets = B > 0 first maps a raw id to
 * ps_place_row_key(id, B) (the hashing trick: at most B rows), else uses
 * it as it is.  A row (model, table, key) lives in bucket
 * ps_place_row_bucket(seed, key), seed = ps_place_row_seed(model, table)
 * computed once per table, and a bucket lives on the shard that
 * ps_place_chunk picks for (model, table, bucket): rendezvous hashing as
 * for dense chunks (adding a shard moves about 1/(n+1) of the buckets),
 * yet one ps_mix64 and a table lookup (ps_place_row_map) per row. */
#define PS_PLACE_ROW_BUCKETS 4096u

uint64_t ps_place_row_seed(const char *model, uint32_t table);

static inline uint32_t ps_place_row_bucket(uint64_t seed, uint64_t key) {
  return (uint32_t)(ps_mix64(key ^ seed) & (PS_PLACE_ROW_BUCKETS - 1));
}

/* ps_place_row_map writes to MAP[PS_PLACE_ROW_BUCKETS] the index into
 * SHARD_IDS (NSHARDS > 0, at most 65536) of each bucket's shard. */
void ps_place_row_map(const char *model, uint32_t table, const uint32_t *shard_ids,
                      size_t nshards, uint16_t *map);

/* ps_place_row_key maps raw id ID into [0, BUCKETS) by hash (BUCKETS >
 * 0), or returns ID (BUCKETS = 0). */
uint64_t ps_place_row_key(uint64_t id, uint64_t buckets);

/* ps_init_row writes the DIM (1..65536) initial values of row KEY of
 * table TABLE: ps_init_fill's KIND and SCALE over elements
 * mix(key) * 2^16 .. + DIM - 1 of tensor TABLE (glorot with fan_in DIM,
 * fan_out 1), so the row depends only on (SEED, TABLE, KEY).  0 or
 * PS_EINVAL. */
int ps_init_row(float *dst, const char *kind, float scale, uint64_t seed, uint32_t table,
                uint64_t key, uint32_t dim);

#endif
