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

#endif
