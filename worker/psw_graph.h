/* psw_graph: model graphs (proto/graph.proto) checked and executed on a
 * compute backend (gpu/ps_gpu.h).
 *
 * A psw_graph is a loaded and checked ps.graph.Graph: every op known, names
 * defined before use, shapes that agree, every parameter used, a scalar
 * loss.  Its parameters, in graph order, are the tensors of the model's
 * ModelSpec, and "the flat parameter vector" is all of them concatenated
 * in that order (each row-major), the same layout as ps_layout's model
 * offsets.
 *
 * A psw_exec runs one graph on one backend for batches of at most
 * max_batch rows: every device buffer is allocated once at creation.
 *
 * Thread-safety: a psw_graph is immutable after loading and may be shared
 * by threads; a psw_exec (like its backend) is used by one thread at a
 * time. */
#ifndef PSW_GRAPH_H
#define PSW_GRAPH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "graph.pb-c.h"
#include "ps.pb-c.h"
#include "ps_error.h"
#include "ps_gpu.h"

typedef struct psw_graph psw_graph;
typedef struct psw_exec psw_exec;

/* psw_graph_load unpacks LEN bytes of a serialized ps.graph.Graph and
 * checks it.  Failure: PS_EFORMAT (not a graph, truncated: the message
 * names the field), PS_EINVAL (the graph is wrong: the message names the
 * node, input, parameter or field), PS_ENOTSUP (a reserved op), PS_ENOMEM.
 * *G is freed with psw_graph_free; BUF is not kept. */
int psw_graph_load(const void *buf, size_t len, psw_graph **g, ps_errbuf *eb);

/* psw_graph_load_file is psw_graph_load on the contents of PATH; messages
 * start with "PATH: ".  PS_EIO when the file cannot be read. */
#define PSW_GRAPH_MAX_BYTES (64 << 20) /* a graph file larger is refused, unread */
int psw_graph_load_file(const char *path, psw_graph **g, ps_errbuf *eb);

/* psw_graph_from_spec loads the graph in SPEC->graph (as fetched with
 * GetModel) and checks that SPEC's tensors are the graph's dense
 * parameters (same names, shapes and order; an embedding table is no
 * tensor of the spec).  SPEC is not kept. */
int psw_graph_from_spec(const Ps__ModelSpec *spec, psw_graph **g, ps_errbuf *eb);

/* psw_graph_free releases G (NULL is a no-op). */
void psw_graph_free(psw_graph *g);

/* The checked protobuf (borrowed for G's lifetime). */
const Ps__Graph__Graph *psw_graph_proto(const psw_graph *g);

/* Number of float parameters (length of the flat parameter vector). */
uint64_t psw_graph_nparams(const psw_graph *g);

/* Columns of the features input, of the targets input (0: none), and the
 * class count of the softmax_xent node that reads the labels (0: none). */
uint32_t psw_graph_input_dim(const psw_graph *g);
uint32_t psw_graph_target_dim(const psw_graph *g);
uint32_t psw_graph_classes(const psw_graph *g);

/* psw_graph_sample_floats returns the floats an executor of G holds per
 * sample of its batch (psw_exec_create's max_batch): every value with
 * its gradient, the largest value once more (scratch), the inputs'
 * features and targets; the parameters, whose size does not grow with the
 * batch, are not counted. */
uint64_t psw_graph_sample_floats(const psw_graph *g);

/* psw_graph_binary says whether G has a sigmoid_xent node (a binary
 * classifier: psw_exec_probs gives its probabilities). */
int psw_graph_binary(const psw_graph *g);

/* psw_graph_embedding describes the graph's embedding table: its
 * parameter index, the columns F of the ids input, the row width and the
 * parameter's hash_buckets (outputs may be NULL).  PS_ENOENT without one.
 * The table is not part of the flat parameter vector: a step gets its
 * rows in psw_batch.sparse. */
int psw_graph_embedding(const psw_graph *g, uint32_t *param, uint32_t *fields, uint32_t *dim,
                        uint64_t *hash_buckets);

/* psw_graph_init_params fills PARAMS (psw_graph_nparams floats) with the
 * initial values the shards give a model with SEED (ps_init_fill, tensor
 * index = parameter index).  Returns 0 or PS_EINVAL. */
int psw_graph_init_params(const psw_graph *g, uint64_t seed, float *params);

/* psw_graph_to_spec makes a ModelSpec named NAME for submission: one
 * tensor per dense parameter (name, shape, init, scale; an embedding
 * table is not a tensor: the shards read it from the graph, psd_shard_sparse.h)
 * and the serialized graph
 * in spec->graph.  seed, chunk_elems and optimizer are left 0/NULL for the
 * caller to set (the caller keeps ownership of what it sets there).  The
 * spec borrows shape arrays from G: free it with psw_graph_spec_free
 * before G. */
int psw_graph_to_spec(const psw_graph *g, const char *name, Ps__ModelSpec **spec,
                      ps_errbuf *eb);
void psw_graph_spec_free(Ps__ModelSpec *spec);

/* psw_graph_mlp_pack builds a multi-layer perceptron graph named NAME
 * with layer widths LAYERS[0..N) (N >= 2: inputs, hidden..., classes):
 * dense layers with ACT between them (none after the last), softmax
 * cross-entropy over N-1 = 1 layer gives logistic regression.  Weights
 * "W1".. are [in, out] glorot (gain 1), biases "b1".. zeros; inputs "x"
 * (features) and "y" (labels); loss "loss"; metric "accuracy".  *BUF (caller
 * frees with free()) receives the serialized graph, *LEN its size. */
int psw_graph_mlp_pack(const char *name, const uint32_t *layers, size_t n, ps_gpu_act act,
                       uint8_t **buf, size_t *len, ps_errbuf *eb);

/* The shape of a click-through model (psw_graph_ctr_pack). */
typedef struct psw_ctr_shape {
  uint32_t fields;          /* categorical fields F (columns of the ids input) */
  uint32_t dim;             /* embedding dimension d */
  uint32_t dense;           /* dense features (columns of the features input), >= 1 */
  const uint32_t *layers;   /* hidden layer widths (borrowed), NLAYERS of them */
  size_t nlayers;
  uint64_t hash_buckets;    /* the table's hash_buckets (0: raw ids) */
  int mean;                 /* mean pooling of multi-valued fields (else sum) */
} psw_ctr_shape;

/* psw_graph_ctr_pack builds the click-through model NAME: the embedding
 * table "emb" ([*, d], uniform 0.05) looked up for the F fields of input
 * "ids" (node "embed": each field's bag pooled), concatenated after the
 * dense features "x" ("concat" -> [-1, dense + F d]), dense layers "W1",
 * "b1", ... with relu between them down to one logit, and a sigmoid
 * cross-entropy with labels "y" (0/1); loss "loss"; metrics auc and
 * logloss.  *BUF (caller frees with free()) receives the serialized
 * graph, *LEN its size; PS_EINVAL for a bad shape. */
int psw_graph_ctr_pack(const char *name, const psw_ctr_shape *c, uint8_t **buf, size_t *len,
                       ps_errbuf *eb);

/* psw_graph_print writes a human description (inputs, parameters with
 * shapes, nodes with output shapes, loss, metrics, parameter count). */
void psw_graph_print(const psw_graph *g, FILE *out);

/* A batch's slice of the embedding table (host memory, borrowed for the
 * call): the bags of its ids input (n x fields bags, sample-major:
 * psw_embed_build and psw_embed_bags), the rows of the distinct keys
 * ([bags.nrows, dim], as pulled) and, for a step, where their gradients
 * go ([bags.nrows, dim]; the pushed (keys, rows)).  bags.mean is ignored:
 * each embedding_lookup node pools as its attribute says. */
typedef struct psw_sparse_batch {
  ps_gpu_bags bags;
  const float *rows;
  float *row_grads;
} psw_sparse_batch;

/* One batch in host memory (borrowed for the call): N rows of features X
 * (float32 [n, input_dim] row-major), class ids LABELS (n int32, in
 * [0, classes); NULL when the graph has no labels input), TARGETS
 * (float32 [n, target_dim]; NULL when it has no targets input) and SPARSE
 * (NULL when it has no ids input). */
typedef struct psw_batch {
  uint32_t n;
  const float *x;
  const int32_t *labels;
  const float *targets;
  const psw_sparse_batch *sparse;
} psw_batch;

/* psw_exec_create prepares G (borrowed; must outlive *EX) on BE
 * (borrowed) for batches up to MAX_BATCH rows, allocating every buffer.
 * Free with psw_exec_free. */
int psw_exec_create(const psw_graph *g, ps_gpu_backend *be, uint32_t max_batch, psw_exec **ex,
                    ps_errbuf *eb);

/* psw_exec_step runs forward and backward for batch B with the flat
 * parameter vector PARAMS (host memory, borrowed, not modified) and writes
 * the flat gradient of the mean loss to GRADS (host memory, same layout),
 * the loss to *LOSS and the number of rows whose argmax is the label to
 * *CORRECT (0 without a softmax_xent node).  PS_EINVAL for a bad batch
 * (size, label out of range), PS_EDEVICE from the backend.  On a device
 * with its own memory, each parameter goes up on the copy stream just
 * before its first reader (the upload of layer k+1 overlaps layer k) and
 * each gradient comes down as soon as it is final (overlapping the
 * backward of the layers below); both are done when it returns. */
int psw_exec_step(psw_exec *ex, const float *params, const psw_batch *b, float *grads,
                  float *loss, uint32_t *correct, ps_errbuf *eb);

/* psw_exec_eval is the forward pass only: *LOSS and *CORRECT. */
int psw_exec_eval(psw_exec *ex, const float *params, const psw_batch *b, float *loss,
                  uint32_t *correct, ps_errbuf *eb);

/* psw_exec_probs copies the sigmoid_xent probabilities of the last step
 * or evaluation (its n rows) to PROBS (host).  PS_ENOENT without a
 * sigmoid_xent node. */
int psw_exec_probs(psw_exec *ex, float *probs);

/* psw_exec_free releases EX's buffers (NULL is a no-op). */
void psw_exec_free(psw_exec *ex);

#endif
