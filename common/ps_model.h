/* ps_model: a model's chunk layout, computed identically by every process
 * from its ModelSpec and the cluster's shard ids.
 *
 * Chunks are numbered model-wide: tensor 0's chunks first (index 0, 1,
 * ...), then tensor 1's, and so on.  Chunk c covers elements
 * [offset, offset + len) of tensor `tensor`; every chunk but a tensor's
 * last has chunk_elems elements.  Push and pull payloads are the chunks'
 * values concatenated in the order of their chunk ids. */
#ifndef PS_MODEL_H
#define PS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"
#include "ps.pb-c.h"

typedef struct ps_chunk {
  uint32_t tensor;      /* index into the spec's tensors */
  uint32_t index;       /* chunk index within the tensor */
  uint64_t offset;      /* first element within the tensor */
  uint32_t len;         /* elements */
  uint32_t shard;       /* index into the shard-id list given to build */
} ps_chunk;

typedef struct ps_tensor_info {
  const char *name;     /* borrowed from the spec */
  uint64_t nelems;
  uint64_t model_offset;/* first element within the whole model's flat vector */
  uint32_t first_chunk; /* model-wide id of chunk 0 */
  uint32_t nchunks;
  uint64_t fan_in, fan_out;
} ps_tensor_info;

typedef struct ps_layout {
  uint32_t chunk_elems;
  uint64_t nparams;
  size_t ntensors;
  ps_tensor_info *tensors;
  size_t nchunks;
  ps_chunk *chunks;
} ps_layout;

/* ps_layout_build fills *L for SPEC (borrowed for L's lifetime, since
 * tensor names point into it).  CHUNK_ELEMS is used when the spec's is 0.
 * Checks the spec: non-empty unique name-less-than-128-bytes, at least one
 * tensor, non-empty unique tensor names, non-zero dimensions, known
 * initializers, total below 2^32 chunks; failure returns PS_EINVAL with a
 * message in EB.  Release with ps_layout_release. */
int ps_layout_build(ps_layout *l, const Ps__ModelSpec *spec, uint32_t chunk_elems,
                    const uint32_t *shard_ids, size_t nshards, ps_errbuf *eb);

void ps_layout_release(ps_layout *l);

/* ps_layout_shard_chunks writes the ids of the chunks on shard index SHARD
 * (in increasing order) to a new array *IDS (caller frees with free()) and
 * their total element count to *NELEMS.  Returns the number of ids or a
 * negative PS_E* code. */
long ps_layout_shard_chunks(const ps_layout *l, uint32_t shard, uint32_t **ids,
                            uint64_t *nelems);

/* ps_layout_place copies what shard index SHARD sent (the values of chunk
 * ids IDS[0..N), back to back in VALUES, LEN bytes) into OUT, the model's
 * flat parameters (tensors at their model_offset).  Every chunk must exist,
 * be placed on SHARD and come once: FROM (may be NULL), per chunk the
 * shard it came from or -1, is checked and set; and LEN must be exactly
 * the chunks' elements.  Nothing is copied unless all of that holds.
 * Returns the elements copied, or PS_EPROTO with EB saying what the shard
 * "sent ..." wrong. */
long ps_layout_place(const ps_layout *l, uint32_t shard, const uint32_t *ids, size_t n,
                     const void *values, size_t len, float *out, int32_t *from, ps_errbuf *eb);

/* ps_modelspec_check validates SPEC's model name (ps_name_check), tensor
 * names (no control characters, at most 255 bytes) and optimizer settings
 * (known kind, finite lr > 0, ...).  Returns 0 or PS_EINVAL with a message in EB. */
int ps_modelspec_check(const Ps__ModelSpec *spec, ps_errbuf *eb);

#endif
