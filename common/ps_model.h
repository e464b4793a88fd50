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

#include "ps_codec.h"
#include "ps_error.h"
#include "graph.pb-c.h"
#include "ps.pb-c.h"

/* Consistency models and staleness weights (psd_clock.h, DESIGN.md
 * "Consistency"), converted from their spec and config strings once. */
typedef enum ps_consistency { PS_ASP = 0, PS_BSP, PS_SSP } ps_consistency;
typedef enum ps_stale_weight { PS_WEIGHT_NONE = 0, PS_WEIGHT_INVERSE } ps_stale_weight;

/* ps_consistency_parse / ps_stale_weight_parse convert S ("" or NULL:
 * asp / none) for model MODEL (named in the message); PS_EINVAL saying
 * what is known.  ps_consistency_name returns the static name. */
int ps_consistency_parse(const char *model, const char *s, ps_consistency *out, ps_errbuf *eb);
int ps_stale_weight_parse(const char *model, const char *s, ps_stale_weight *out, ps_errbuf *eb);
const char *ps_consistency_name(ps_consistency c);

/* PS_CLOCK_READER: the clock of a sparse pull that is no training step's
 * (psw --evaluate): the shard serves it at once, outside the clock table
 * (no staleness bound, no lease, no rank held; psd_shard_sparse.h). */
#define PS_CLOCK_READER UINT64_MAX

/* PS_CLOCK_MAX: the largest clock a worker's push or pull may carry (a
 * training step; 2^62, centuries of steps).  Workers move their clocks
 * on by one a step, or jump to the slowest live clock on a rejoin or a
 * takeover, so a clock beyond it is a client's bug or a forged request;
 * the shard refuses it (psd_shard_clock_check) and the clock table never
 * holds one: clock + 1, gaps and the table's int64 views cannot wrap. */
#define PS_CLOCK_MAX (UINT64_C(1) << 62)

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
  /* Its chunks' codec in a compressed push / pull: fp32 for a small
   * tensor, TensorSpec.codec for a push when set, else fp32 for a push
   * under an fp32 model, else PS_CODEC_N (the request's codec). */
  ps_codec_id push_codec, pull_codec;
} ps_tensor_info;

typedef struct ps_layout {
  uint32_t chunk_elems;
  uint64_t nparams;
  size_t ntensors;
  ps_tensor_info *tensors;
  size_t nchunks;
  ps_chunk *chunks;
  ps_consistency consistency;   /* the spec's, parsed once */
  ps_stale_weight stale_weight;
  /* The spec's codecs, parsed once (ps_codec.h, ModelSpec.codec...). */
  ps_codec_id push_codec, pull_codec;
  /* The codec a compressed push names (PushRequest.codec, ChanMeta.codec;
   * fp32 names an uncompressed one, as in the warm-up): the model's push
   * codec, or under an fp32 model the first codec a tensor has of its own
   * (TensorSpec.codec; the other tensors then travel fp32), fp32 when no
   * tensor is compressed.  The only compressed codec a shard takes. */
  ps_codec_id push_wire;
  float topk;             /* fraction topk keeps */
  uint32_t codec_warmup;  /* steps each worker sends uncompressed */
  uint32_t codec_min_elems;
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

/* ps_layout_chunk_codec returns the codec chunk ID travels in within a
 * push (PUSH non-zero) or pull whose codec is C: fp32 when C is, else the
 * tensor's codec for that direction (a small tensor stays fp32, a
 * TensorSpec.codec overrides the push codec, and under an fp32 model the
 * other tensors push fp32: C is then push_wire). */
ps_codec_id ps_layout_chunk_codec(const ps_layout *l, uint32_t id, ps_codec_id c, int push);

/* ps_layout_payload_bytes returns the payload bytes of the chunks IDS
 * (existing ids) in a push or pull of codec C: the one function every
 * payload size comes from. */
uint64_t ps_layout_payload_bytes(const ps_layout *l, const uint32_t *ids, size_t n,
                                 ps_codec_id c, int push);

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

/* ps_graph_node_names_check refuses a graph in which two nodes have the
 * same name (a message, a print names a node by it), naming the name
 * (unless it holds a control character) and both nodes (0-based, as
 * nodes[i]).  Nodes without a name are left to the graph loader.
 * Returns 0 or PS_EINVAL (ENOMEM) with a message in EB. */
int ps_graph_node_names_check(const Ps__Graph__Graph *g, ps_errbuf *eb);

/* ps_modelspec_graph_check unpacks SPEC's graph, when it has one, and
 * checks it with ps_graph_node_names_check: what a shard checks of a
 * submitted model's graph (psw_graph_load checks the rest). */
int ps_modelspec_graph_check(const Ps__ModelSpec *spec, ps_errbuf *eb);

#endif
