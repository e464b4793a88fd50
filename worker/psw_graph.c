/* psw_graph: loading, checking and executing model graphs.
 *
 * Values: every parameter, input and node output is a value with a shape
 * [rows, cols] where rows may be the batch dimension.  Ops are a table
 * (name, arity, shape check, forward, backward).
 *
 * Invariants:
 *  1. Values are numbered params first (in graph order), then inputs, then
 *     node outputs in node order; a node only reads values numbered below
 *     its output (names are defined before use).
 *  2. Scalars are only produced by loss ops and only the graph's loss is
 *     differentiated: backward runs the "live" nodes (those the loss
 *     depends on) in reverse order.
 *  3. A gradient buffer is written (beta 0) by the last live consumer of
 *     its value in forward order and accumulated (beta 1) by the others.
 *  4. A dense node whose output feeds only one activation node is fused:
 *     both share one buffer (bias_add applies the activation), and the
 *     activation's backward runs in place. */
#include "psw_graph.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_config.h"
#include "ps_model.h"
#include "ps_pb.h"
#include "ps_place.h"

enum { V_PARAM, V_INPUT, V_NODE };
enum { IN_FEATURES = 1, IN_LABELS, IN_TARGETS, IN_IDS };

typedef struct val {
  const char *name;       /* borrowed from the protobuf */
  int kind;               /* V_PARAM | V_INPUT | V_NODE */
  int input_kind;         /* IN_* for inputs */
  int batch;              /* rows are the batch dimension */
  int scalar;
  uint32_t rows, cols;    /* rows only when !batch */
  uint64_t offset;        /* params: first element in the flat vector */
  int producer;           /* node index for V_NODE, else -1 */
  int nconsumers;
  int needs_grad;         /* depends on a parameter */
  int sparse;             /* params: an embedding table (rows per step, not in the flat vector) */
} val;

typedef struct op_def op_def;

typedef struct gnode {
  const op_def *op;
  const char *name;
  int in[3];
  int out;
  int live;               /* the loss depends on it */
  int acc[3];             /* backward accumulates into in[i]'s gradient */
  ps_gpu_act act;         /* activation of an act node, or fused into dense */
  int fused;              /* act node whose work the dense before it does */
  int mean;               /* embedding_lookup: mean pooling */
} gnode;

struct psw_graph {
  Ps__Graph__Graph *pb;
  size_t nvals, nnodes, nparams;
  val *vals;
  uint32_t *index;        /* value id + 1 by name hash (find_val); 0: free */
  size_t imask;           /* index slots - 1 (a power of two) */
  gnode *nodes;
  uint64_t total;         /* floats in the flat parameter vector */
  int features, labels, targets, ids; /* value ids or -1 */
  int table;              /* the embedding table's value id, or -1 */
  int loss;               /* value id */
  int acc_node;           /* softmax_xent node used for accuracy, or -1 */
  int sig_node;           /* sigmoid_xent node used for auc and logloss, or -1 */
};

struct psw_exec {
  const psw_graph *g;
  ps_gpu_backend *be;
  uint32_t max_batch, n;
  float **data, **grad;   /* per value; params/inputs set per step when unified */
  float *params_dev, *grads_dev, *x_dev, *t_dev, *scratch, *count;
  int32_t *labels_dev;
  const int32_t *labels;  /* this step's labels on the device */
  void *allocs[64];
  size_t nallocs;
  /* Per parameter: the first node (forward order) that reads it, before
   * which its upload must have landed, and the node whose backward writes
   * its gradient last (the first live reader that back-propagates), after
   * which it can be downloaded; -1: none. */
  int *first_read, *last_grad;
  const float *host_params; /* this step's host parameters (not unified) */
  float *host_grads;        /* where this step's gradients go (not unified) */
  /* The embedding table's slice of this step (psw_sparse_batch): index
   * and rows on the device (views of the host's on a unified backend;
   * else buffers grown as batches need, freed by psw_exec_free). */
  ps_gpu_bags bags;
  float *sp_rows, *sp_grads;
  float *host_sp_grads;
  void *sp_buf;             /* device: rows, grads, index (not unified) */
  size_t sp_cap;            /* its bytes */
  float *probs;             /* sigmoid_xent probabilities of the last batch (max_batch) */
};

/* ---- the op table -------------------------------------------------------- */

typedef int (*op_check_fn)(psw_graph *g, gnode *n, val *out, ps_errbuf *eb);
typedef int (*op_run_fn)(psw_exec *ex, const gnode *n);

struct op_def {
  const char *name;
  int nin;
  const char *args;       /* for arity messages */
  op_check_fn check;
  op_run_fn fwd, bwd;
  ps_gpu_act act;
  int is_loss;
};

static int chk_dense(psw_graph *g, gnode *n, val *out, ps_errbuf *eb);
static int chk_act(psw_graph *g, gnode *n, val *out, ps_errbuf *eb);
static int chk_xent(psw_graph *g, gnode *n, val *out, ps_errbuf *eb);
static int chk_mse(psw_graph *g, gnode *n, val *out, ps_errbuf *eb);
static int fwd_dense(psw_exec *ex, const gnode *n);
static int bwd_dense(psw_exec *ex, const gnode *n);
static int fwd_act(psw_exec *ex, const gnode *n);
static int bwd_act(psw_exec *ex, const gnode *n);
static int fwd_xent(psw_exec *ex, const gnode *n);
static int bwd_xent(psw_exec *ex, const gnode *n);
static int fwd_mse(psw_exec *ex, const gnode *n);
static int bwd_mse(psw_exec *ex, const gnode *n);
static int chk_sigxent(psw_graph *g, gnode *n, val *out, ps_errbuf *eb);
static int chk_embed(psw_graph *g, gnode *n, val *out, ps_errbuf *eb);
static int chk_concat(psw_graph *g, gnode *n, val *out, ps_errbuf *eb);
static int fwd_sigxent(psw_exec *ex, const gnode *n);
static int bwd_sigxent(psw_exec *ex, const gnode *n);
static int fwd_embed(psw_exec *ex, const gnode *n);
static int bwd_embed(psw_exec *ex, const gnode *n);
static int fwd_concat(psw_exec *ex, const gnode *n);
static int bwd_concat(psw_exec *ex, const gnode *n);

static const op_def ops[] = {
    {"dense", 3, "x, W, b", chk_dense, fwd_dense, bwd_dense, PS_GPU_ACT_NONE, 0},
    {"relu", 1, "x", chk_act, fwd_act, bwd_act, PS_GPU_ACT_RELU, 0},
    {"sigmoid", 1, "x", chk_act, fwd_act, bwd_act, PS_GPU_ACT_SIGMOID, 0},
    {"tanh", 1, "x", chk_act, fwd_act, bwd_act, PS_GPU_ACT_TANH, 0},
    {"softmax_xent", 2, "logits, labels", chk_xent, fwd_xent, bwd_xent, PS_GPU_ACT_NONE, 1},
    {"mse", 2, "pred, targets", chk_mse, fwd_mse, bwd_mse, PS_GPU_ACT_NONE, 1},
    {"sigmoid_xent", 2, "logits, labels", chk_sigxent, fwd_sigxent, bwd_sigxent, PS_GPU_ACT_NONE, 1},
    {"embedding_lookup", 2, "ids, table", chk_embed, fwd_embed, bwd_embed, PS_GPU_ACT_NONE, 0},
    {"concat", 2, "a, b", chk_concat, fwd_concat, bwd_concat, PS_GPU_ACT_NONE, 0},
    {"embedding", -1, NULL, NULL, NULL, NULL, PS_GPU_ACT_NONE, 0}, /* reserved */
};

static const op_def *op_find(const char *name) {
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    if (strcmp(ops[i].name, name) == 0) return &ops[i];
  return NULL;
}

/* shape_str formats V's shape as "[-1, 10]" into BUF. */
static const char *shape_str(const val *v, char *buf, size_t len) {
  if (v->scalar)
    snprintf(buf, len, "[]");
  else if (v->batch)
    snprintf(buf, len, "[-1, %u]", v->cols);
  else
    snprintf(buf, len, "[%u, %u]", v->rows, v->cols);
  return buf;
}

/* need_matrix: 0 when value V is a batch matrix (what element-wise ops and
 * dense's x take), else PS_EINVAL naming node and input. */
static int need_matrix(const psw_graph *g, const gnode *n, int v, ps_errbuf *eb) {
  const val *x = &g->vals[v];
  char s[48];
  if (!x->batch || x->scalar || x->input_kind == IN_LABELS || x->input_kind == IN_IDS)
    return ps_errf(eb, PS_EINVAL, "node '%s': input '%s' must be a batch of rows, not %s%s",
                   n->name, x->name,
                   x->input_kind == IN_LABELS ? "labels " : x->input_kind == IN_IDS ? "ids " : "",
                   shape_str(x, s, sizeof s));
  return 0;
}

static int chk_dense(psw_graph *g, gnode *n, val *out, ps_errbuf *eb) {
  int rc = need_matrix(g, n, n->in[0], eb);
  if (rc) return rc;
  const val *x = &g->vals[n->in[0]], *w = &g->vals[n->in[1]], *b = &g->vals[n->in[2]];
  if (w->kind != V_PARAM || b->kind != V_PARAM || w->sparse || b->sparse)
    return ps_errf(eb, PS_EINVAL, "node '%s': weight '%s' and bias '%s' must be dense parameters",
                   n->name, w->name, b->name);
  if (w->rows != x->cols)
    return ps_errf(eb, PS_EINVAL, "node '%s': input '%s' has %u columns but weight '%s' has %u rows",
                   n->name, x->name, x->cols, w->name, w->rows);
  if (b->rows != 1 || b->cols != w->cols)
    return ps_errf(eb, PS_EINVAL, "node '%s': bias '%s' has %u elements but weight '%s' has %u columns",
                   n->name, b->name, b->rows * b->cols, w->name, w->cols);
  out->batch = 1;
  out->cols = w->cols;
  return 0;
}

static int chk_act(psw_graph *g, gnode *n, val *out, ps_errbuf *eb) {
  int rc = need_matrix(g, n, n->in[0], eb);
  if (rc) return rc;
  n->act = n->op->act;
  out->batch = 1;
  out->cols = g->vals[n->in[0]].cols;
  return 0;
}

static int chk_xent(psw_graph *g, gnode *n, val *out, ps_errbuf *eb) {
  int rc = need_matrix(g, n, n->in[0], eb);
  if (rc) return rc;
  const val *l = &g->vals[n->in[1]];
  if (l->input_kind != IN_LABELS)
    return ps_errf(eb, PS_EINVAL, "node '%s': second input '%s' must be a labels input", n->name,
                   l->name);
  if (g->vals[n->in[0]].cols < 2)
    return ps_errf(eb, PS_EINVAL, "node '%s': logits '%s' need at least 2 columns", n->name,
                   g->vals[n->in[0]].name);
  out->scalar = 1;
  out->rows = out->cols = 1;
  return 0;
}

static int chk_mse(psw_graph *g, gnode *n, val *out, ps_errbuf *eb) {
  int rc = need_matrix(g, n, n->in[0], eb);
  if (rc) return rc;
  const val *p = &g->vals[n->in[0]], *t = &g->vals[n->in[1]];
  if (t->input_kind != IN_TARGETS)
    return ps_errf(eb, PS_EINVAL, "node '%s': second input '%s' must be a targets input", n->name,
                   t->name);
  if (t->cols != p->cols)
    return ps_errf(eb, PS_EINVAL, "node '%s': prediction '%s' has %u columns but targets '%s' have %u",
                   n->name, p->name, p->cols, t->name, t->cols);
  out->scalar = 1;
  out->rows = out->cols = 1;
  return 0;
}

static int chk_sigxent(psw_graph *g, gnode *n, val *out, ps_errbuf *eb) {
  int rc = need_matrix(g, n, n->in[0], eb);
  if (rc) return rc;
  const val *x = &g->vals[n->in[0]], *l = &g->vals[n->in[1]];
  if (l->input_kind != IN_LABELS)
    return ps_errf(eb, PS_EINVAL, "node '%s': second input '%s' must be a labels input", n->name,
                   l->name);
  if (x->cols != 1)
    return ps_errf(eb, PS_EINVAL, "node '%s': logits '%s' must have 1 column, not %u", n->name,
                   x->name, x->cols);
  out->scalar = 1;
  out->rows = out->cols = 1;
  return 0;
}

/* chk_embed: ids [-1, F] and a table of dim d give [-1, F d]; the
 * "pooling" attribute says how a field's bag is pooled. */
static int chk_embed(psw_graph *g, gnode *n, val *out, ps_errbuf *eb) {
  const val *ids = &g->vals[n->in[0]], *t = &g->vals[n->in[1]];
  if (ids->input_kind != IN_IDS)
    return ps_errf(eb, PS_EINVAL, "node '%s': first input '%s' must be an ids input", n->name,
                   ids->name);
  if (t->kind != V_PARAM || !t->sparse)
    return ps_errf(eb, PS_EINVAL, "node '%s': second input '%s' must be an embedding table", n->name,
                   t->name);
  const Ps__Graph__Node *pn = g->pb->nodes[n - g->nodes];
  for (size_t a = 0; a < pn->n_attrs; a++) {
    const Ps__Graph__Attr *at = pn->attrs[a];
    if (strcmp(at->name, "pooling") != 0)
      return ps_errf(eb, PS_EINVAL, "node '%s': unknown attribute '%s' (expected pooling)", n->name,
                     at->name);
    if (strcmp(at->s, "sum") && strcmp(at->s, "mean"))
      return ps_errf(eb, PS_EINVAL, "node '%s': pooling '%s' (expected sum or mean)", n->name, at->s);
    n->mean = strcmp(at->s, "mean") == 0;
  }
  if ((uint64_t)ids->cols * t->cols > UINT32_MAX)
    return ps_errf(eb, PS_EINVAL, "node '%s': %u fields of %u columns is too wide", n->name,
                   ids->cols, t->cols);
  out->batch = 1;
  out->cols = ids->cols * t->cols;
  return 0;
}

static int chk_concat(psw_graph *g, gnode *n, val *out, ps_errbuf *eb) {
  int rc = need_matrix(g, n, n->in[0], eb);
  if (!rc) rc = need_matrix(g, n, n->in[1], eb);
  if (rc) return rc;
  if (n->in[0] == n->in[1])
    return ps_errf(eb, PS_EINVAL, "node '%s': concatenates '%s' with itself", n->name,
                   g->vals[n->in[0]].name);
  uint64_t cols = (uint64_t)g->vals[n->in[0]].cols + g->vals[n->in[1]].cols;
  if (cols > UINT32_MAX) return ps_errf(eb, PS_EINVAL, "node '%s': too wide", n->name);
  out->batch = 1;
  out->cols = (uint32_t)cols;
  return 0;
}

/* ---- checking -------------------------------------------------------------- */

/* name_hash: FNV-1a of NAME (the value index's hash). */
static uint32_t name_hash(const char *name) {
  uint32_t h = 2166136261u;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 16777619u;
  return h;
}

/* find_val returns the id of the value named NAME, or -1 (g->index: an
 * open-addressing table of value id + 1, so that a graph of many values
 * is checked in linear time). */
static int find_val(const psw_graph *g, const char *name) {
  for (size_t i = name_hash(name) & g->imask; g->index[i]; i = (i + 1) & g->imask)
    if (strcmp(g->vals[g->index[i] - 1].name, name) == 0) return (int)g->index[i] - 1;
  return -1;
}

/* add_val appends a value named NAME, refusing empty and duplicate names. */
static int add_val(psw_graph *g, const char *what, const char *name, val **out, ps_errbuf *eb) {
  if (!name || !*name) return ps_errf(eb, PS_EINVAL, "%s has no name", what);
  if (find_val(g, name) >= 0)
    return ps_errf(eb, PS_EINVAL, "%s: duplicate name '%s'", what, name);
  size_t i = name_hash(name) & g->imask;
  while (g->index[i]) i = (i + 1) & g->imask;
  g->index[i] = (uint32_t)g->nvals + 1;
  val *v = &g->vals[g->nvals++];
  memset(v, 0, sizeof *v);
  v->name = name;
  v->producer = -1;
  *out = v;
  return 0;
}

/* check_param_name checks parameter NAME as a file name too: psctl
 * export writes NAME.npy (an embedding table NAME.rows.npy and
 * NAME.keys.npy) into its archive, so a name is at most 255 bytes
 * without control characters, and its '/'-separated parts are neither
 * empty, "." nor ".." (no absolute path, none that climbs out). */
static int check_param_name(const char *name, ps_errbuf *eb) {
  int rc = ps_text_check("parameter name", name, 255, eb);
  if (rc) return rc;
  for (const char *p = name;;) {
    size_t n = strcspn(p, "/");
    if (!n || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
      return ps_errf(eb, PS_EINVAL, "parameter name '%s': an empty, '.' or '..' part (it names "
                     "a file in psctl export's archive)", name);
    if (!p[n]) return 0;
    p += n + 1;
  }
}

static int check_params(psw_graph *g, ps_errbuf *eb) {
  for (size_t i = 0; i < g->pb->n_params; i++) {
    const Ps__Graph__Param *p = g->pb->params[i];
    char what[160];
    snprintf(what, sizeof what, "params[%zu]", i);
    val *v;
    int rc = add_val(g, what, p->name, &v, eb);
    if (!rc) rc = check_param_name(p->name, eb);
    if (rc) return rc;
    /* as the shards will check the spec (ps_layout_build) */
    if (!isfinite(p->scale) || fabsf(p->scale) > 1e30f)
      return ps_errf(eb, PS_EINVAL, "parameter '%s': initializer scale %g is not a finite number "
                     "up to 1e30", p->name, (double)p->scale);
    if (p->sparse) {
      if (p->n_shape != 1 || !p->shape[0] || p->shape[0] > 65536)
        return ps_errf(eb, PS_EINVAL, "embedding table '%s': shape must be [dim] with dim 1..65536",
                       p->name);
      if (*p->init && !ps_init_known(p->init))
        return ps_errf(eb, PS_EINVAL, "parameter '%s': unknown initializer '%s'", p->name, p->init);
      if (g->table >= 0)
        return ps_errf(eb, PS_EINVAL, "embedding table '%s': a second table (only one is supported)",
                       p->name);
      v->kind = V_PARAM;
      v->sparse = 1;
      v->cols = p->shape[0];
      v->needs_grad = 1;
      g->table = (int)i;
      continue;
    }
    if (p->hash_buckets)
      return ps_errf(eb, PS_EINVAL, "parameter '%s': hash_buckets is for embedding tables", p->name);
    if (p->n_shape < 1 || p->n_shape > 2)
      return ps_errf(eb, PS_EINVAL, "parameter '%s': shape must have 1 or 2 dimensions, has %zu",
                     p->name, p->n_shape);
    if (!p->shape[0] || (p->n_shape == 2 && !p->shape[1]))
      return ps_errf(eb, PS_EINVAL, "parameter '%s': shape has a zero dimension", p->name);
    if (*p->init && !ps_init_known(p->init))
      return ps_errf(eb, PS_EINVAL, "parameter '%s': unknown initializer '%s'", p->name, p->init);
    v->kind = V_PARAM;
    v->rows = p->n_shape == 2 ? p->shape[0] : 1;
    v->cols = p->n_shape == 2 ? p->shape[1] : p->shape[0];
    if ((uint64_t)v->rows * v->cols > (UINT64_C(1) << 40) || g->total > (UINT64_C(1) << 50))
      return ps_errf(eb, PS_EINVAL, "parameter '%s': %llu elements (at most 2^40 a tensor)",
                     p->name, (unsigned long long)v->rows * v->cols);
    v->offset = g->total;
    v->needs_grad = 1;
    g->total += (uint64_t)v->rows * v->cols;
  }
  g->nparams = g->pb->n_params;
  /* psctl export's members for the table: no tensor may take them */
  for (int k = 0; g->table >= 0 && k < 2; k++) {
    char member[300];
    snprintf(member, sizeof member, "%s.%s", g->vals[g->table].name, k ? "keys" : "rows");
    if (find_val(g, member) >= 0)
      return ps_errf(eb, PS_EINVAL, "parameter '%s': psctl export names embedding table '%s' "
                     "'%s' in its archive", member, g->vals[g->table].name, member);
  }
  return 0;
}

static const struct { const char *name; int kind; } input_kinds[] = {
    {"features", IN_FEATURES}, {"labels", IN_LABELS}, {"targets", IN_TARGETS}, {"ids", IN_IDS}};

/* check_input_shape sets V's columns from input P's shape ([-1, d, ...]
 * for features/targets, [-1] or [-1, 1] for labels). */
static int check_input_shape(const Ps__Graph__Input *p, val *v, ps_errbuf *eb) {
  if (p->n_shape < 1 || p->shape[0] != -1)
    return ps_errf(eb, PS_EINVAL, "input '%s': shape must start with the batch dimension -1", p->name);
  uint64_t cols = 1;
  for (size_t d = 1; d < p->n_shape; d++) {
    if (p->shape[d] <= 0)
      return ps_errf(eb, PS_EINVAL, "input '%s': dimension %zu must be positive", p->name, d);
    cols *= (uint64_t)p->shape[d];
  }
  if (v->input_kind == IN_LABELS ? cols != 1 : (p->n_shape < 2 || cols > UINT32_MAX))
    return ps_errf(eb, PS_EINVAL, "input '%s': bad shape for %s", p->name, p->kind);
  v->batch = 1;
  v->cols = (uint32_t)cols;
  return 0;
}

static int check_inputs(psw_graph *g, ps_errbuf *eb) {
  for (size_t i = 0; i < g->pb->n_inputs; i++) {
    const Ps__Graph__Input *p = g->pb->inputs[i];
    char what[160];
    snprintf(what, sizeof what, "inputs[%zu]", i);
    val *v;
    int rc = add_val(g, what, p->name, &v, eb);
    if (rc) return rc;
    v->kind = V_INPUT;
    for (size_t k = 0; k < sizeof input_kinds / sizeof input_kinds[0]; k++)
      if (strcmp(p->kind, input_kinds[k].name) == 0) v->input_kind = input_kinds[k].kind;
    if (!v->input_kind)
      return ps_errf(eb, PS_EINVAL, "input '%s': unknown kind '%s' (expected features, labels, targets or ids)",
                     p->name, p->kind);
    int *slot = v->input_kind == IN_FEATURES ? &g->features
                : v->input_kind == IN_LABELS ? &g->labels
                : v->input_kind == IN_IDS    ? &g->ids
                                             : &g->targets;
    if (*slot >= 0)
      return ps_errf(eb, PS_EINVAL, "input '%s': a second %s input (only one is supported)", p->name, p->kind);
    *slot = (int)(v - g->vals);
    if ((rc = check_input_shape(p, v, eb))) return rc;
  }
  if (g->features < 0) return ps_errf(eb, PS_EINVAL, "graph has no features input");
  return 0;
}

/* check_node resolves node I's op and inputs, checks its shapes and
 * defines its output. */
static int check_node(psw_graph *g, size_t i, ps_errbuf *eb) {
  const Ps__Graph__Node *pn = g->pb->nodes[i];
  gnode *n = &g->nodes[i];
  if (!*pn->name) return ps_errf(eb, PS_EINVAL, "nodes[%zu] has no name", i);
  n->name = pn->name;
  n->op = op_find(pn->op);
  if (!n->op) return ps_errf(eb, PS_EINVAL, "node '%s': unknown op '%s'", pn->name, pn->op);
  if (n->op->nin < 0)
    return ps_errf(eb, PS_ENOTSUP, "node '%s': op '%s' is not supported yet", pn->name, pn->op);
  if ((int)pn->n_inputs != n->op->nin)
    return ps_errf(eb, PS_EINVAL, "node '%s': op '%s' takes %d inputs (%s), got %zu", pn->name,
                   pn->op, n->op->nin, n->op->args, pn->n_inputs);
  if (pn->n_outputs != 1)
    return ps_errf(eb, PS_EINVAL, "node '%s': op '%s' has 1 output, got %zu", pn->name, pn->op,
                   pn->n_outputs);
  for (int k = 0; k < n->op->nin; k++) {
    n->in[k] = find_val(g, pn->inputs[k]);
    if (n->in[k] < 0)
      return ps_errf(eb, PS_EINVAL, "node '%s': input '%s' is not defined before this node",
                     pn->name, pn->inputs[k]);
  }
  char what[160];
  snprintf(what, sizeof what, "node '%s' output", pn->name);
  val *out;
  int rc = add_val(g, what, pn->outputs[0], &out, eb);
  if (rc) return rc;
  out->kind = V_NODE;
  out->producer = (int)i;
  n->out = (int)(out - g->vals);
  if ((rc = n->op->check(g, n, out, eb))) return rc;
  for (int k = 0; k < n->op->nin; k++) {
    g->vals[n->in[k]].nconsumers++;
    out->needs_grad |= g->vals[n->in[k]].needs_grad;
  }
  return 0;
}

/* check_loss finds the loss, marks live nodes, and checks metrics. */
static int check_loss(psw_graph *g, ps_errbuf *eb) {
  const char *loss = g->pb->loss;
  if (!*loss) return ps_errf(eb, PS_EINVAL, "graph has no loss (field 'loss' is empty)");
  g->loss = find_val(g, loss);
  if (g->loss < 0) return ps_errf(eb, PS_EINVAL, "loss '%s' is not defined", loss);
  const val *l = &g->vals[g->loss];
  char s[48];
  if (!l->scalar)
    return ps_errf(eb, PS_EINVAL, "loss '%s' is not a scalar (its shape is %s)", loss,
                   shape_str(l, s, sizeof s));
  g->nodes[l->producer].live = 1;
  for (size_t i = g->nnodes; i-- > 0;) {
    gnode *n = &g->nodes[i];
    if (!n->live) continue;
    for (int k = 0; k < n->op->nin; k++) {
      int p = g->vals[n->in[k]].producer;
      if (p >= 0) g->nodes[p].live = 1;
    }
  }
  uint8_t *used = calloc(g->nparams ? g->nparams : 1, 1); /* read by a live node */
  if (!used) return ps_errf(eb, PS_ENOMEM, "graph: out of memory");
  for (size_t i = 0; i < g->nnodes; i++)
    for (int k = 0; g->nodes[i].live && k < g->nodes[i].op->nin; k++)
      if ((size_t)g->nodes[i].in[k] < g->nparams) used[g->nodes[i].in[k]] = 1;
  size_t p = 0;
  while (p < g->nparams && used[p]) p++;
  free(used);
  if (p < g->nparams)
    return ps_errf(eb, PS_EINVAL, "parameter '%s' does not affect the loss '%s'", g->vals[p].name,
                   loss);
  g->acc_node = -1;
  for (size_t i = 0; i < g->nnodes; i++)
    if (strcmp(g->nodes[i].op->name, "softmax_xent") == 0 && (g->acc_node < 0 || g->nodes[i].live))
      g->acc_node = (int)i;
  g->sig_node = -1;
  for (size_t i = 0; i < g->nnodes; i++)
    if (strcmp(g->nodes[i].op->name, "sigmoid_xent") == 0 && (g->sig_node < 0 || g->nodes[i].live))
      g->sig_node = (int)i;
  for (size_t m = 0; m < g->pb->n_metrics; m++) {
    const char *name = g->pb->metrics[m];
    int acc = strcmp(name, "accuracy") == 0, bin = !strcmp(name, "auc") || !strcmp(name, "logloss");
    if (!acc && !bin)
      return ps_errf(eb, PS_EINVAL, "unknown metric '%s' (expected accuracy, auc or logloss)", name);
    if (acc && g->acc_node < 0)
      return ps_errf(eb, PS_EINVAL, "metric 'accuracy' needs a softmax_xent node");
    if (bin && g->sig_node < 0)
      return ps_errf(eb, PS_EINVAL, "metric '%s' needs a sigmoid_xent node", name);
  }
  return 0;
}

/* plan marks fusions and gradient accumulation (invariants 3 and 4). */
static int plan(psw_graph *g, ps_errbuf *eb) {
  for (size_t i = 0; i + 1 < g->nnodes; i++) {
    gnode *d = &g->nodes[i], *a = &g->nodes[i + 1];
    if (strcmp(d->op->name, "dense") == 0 && a->op->act != PS_GPU_ACT_NONE &&
        a->in[0] == d->out && g->vals[d->out].nconsumers == 1) {
      d->act = a->act;
      a->fused = 1;
    }
  }
  /* A live node's backward accumulates into an input that a later live
   * node reads too (read[v]: one does, seen walking back from the end). */
  uint8_t *read = calloc(g->nvals ? g->nvals : 1, 1);
  if (!read) return ps_errf(eb, PS_ENOMEM, "graph: out of memory");
  for (size_t i = g->nnodes; i-- > 0;) {
    gnode *n = &g->nodes[i];
    if (!n->live) continue;
    for (int k = 0; k < n->op->nin; k++) n->acc[k] = read[n->in[k]];
    for (int k = 0; k < n->op->nin; k++) read[n->in[k]] = 1;
  }
  free(read);
  for (size_t i = 0; i < g->nnodes; i++) {
    gnode *n = &g->nodes[i];
    /* The same value twice in one node: the later slot writes first. */
    for (int k = 0; k < n->op->nin; k++)
      for (int q = k + 1; q < n->op->nin; q++)
        if (n->in[q] == n->in[k]) n->acc[k] = 1;
  }
  return 0;
}

/* text_check is ps_text_check without a length limit, WHAT naming the
 * string as "node 2 output 1" (1-based) when its own text may not be
 * printed. */
static int text_check(const char *text, ps_errbuf *eb, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int text_check(const char *text, ps_errbuf *eb, const char *fmt, ...) {
  for (const char *p = text; p && *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) {
      char what[96];
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(what, sizeof what, fmt, ap);
      va_end(ap);
      return ps_text_check(what, text, SIZE_MAX, eb);
    }
  return 0;
}

/* check_texts refuses a control character in any string of the graph,
 * first of all: the other checks, psctl model show and psw's log print
 * them, and an escape sequence or a newline there would reach a terminal
 * or forge a log line.  (Parameter names are file names too:
 * check_param_name checks the rest.) */
static int check_texts(const Ps__Graph__Graph *pb, ps_errbuf *eb) {
  int rc = text_check(pb->name, eb, "graph name");
  for (size_t i = 0; !rc && i < pb->n_params; i++)
    if (!(rc = text_check(pb->params[i]->name, eb, "parameter name")))
      rc = text_check(pb->params[i]->init, eb, "parameter %zu init", i + 1);
  for (size_t i = 0; !rc && i < pb->n_inputs; i++)
    if (!(rc = text_check(pb->inputs[i]->name, eb, "input %zu name", i + 1)))
      rc = text_check(pb->inputs[i]->kind, eb, "input %zu kind", i + 1);
  for (size_t i = 0; !rc && i < pb->n_nodes; i++) {
    const Ps__Graph__Node *n = pb->nodes[i];
    if (!(rc = text_check(n->name, eb, "node %zu name", i + 1)))
      rc = text_check(n->op, eb, "node %zu op", i + 1);
    for (size_t k = 0; !rc && k < n->n_inputs; k++)
      rc = text_check(n->inputs[k], eb, "node %zu input %zu", i + 1, k + 1);
    for (size_t k = 0; !rc && k < n->n_outputs; k++)
      rc = text_check(n->outputs[k], eb, "node %zu output %zu", i + 1, k + 1);
    for (size_t k = 0; !rc && k < n->n_attrs; k++)
      if (!(rc = text_check(n->attrs[k]->name, eb, "node %zu attribute %zu name", i + 1, k + 1)))
        rc = text_check(n->attrs[k]->s, eb, "node %zu attribute %zu value", i + 1, k + 1);
  }
  if (!rc) rc = text_check(pb->loss, eb, "loss");
  for (size_t i = 0; !rc && i < pb->n_metrics; i++)
    rc = text_check(pb->metrics[i], eb, "metric %zu", i + 1);
  return rc;
}

static int check_graph(psw_graph *g, ps_errbuf *eb) {
  const Ps__Graph__Graph *pb = g->pb;
  int rc = check_texts(pb, eb);
  if (rc) return rc;
  size_t nv = pb->n_params + pb->n_inputs + pb->n_nodes;
  if (nv > UINT32_MAX / 4) return ps_errf(eb, PS_EINVAL, "graph: %zu values", nv);
  size_t slots = 16;
  while (slots < 2 * nv) slots *= 2;
  g->imask = slots - 1;
  g->index = calloc(slots, sizeof *g->index);
  g->vals = calloc(nv ? nv : 1, sizeof *g->vals);
  g->nodes = calloc(pb->n_nodes ? pb->n_nodes : 1, sizeof *g->nodes);
  if (!g->index || !g->vals || !g->nodes) return ps_errf(eb, PS_ENOMEM, "graph: out of memory");
  g->nnodes = pb->n_nodes;
  g->features = g->labels = g->targets = g->ids = g->table = -1;
  rc = check_params(g, eb);
  if (!rc) rc = check_inputs(g, eb);
  if (!rc) rc = ps_graph_node_names_check(pb, eb); /* before a node's message names one */
  for (size_t i = 0; !rc && i < pb->n_nodes; i++) rc = check_node(g, i, eb);
  if (rc) return rc;
  if (!pb->n_nodes) return ps_errf(eb, PS_EINVAL, "graph has no nodes");
  if ((g->ids < 0) != (g->table < 0))
    return ps_errf(eb, PS_EINVAL, g->ids < 0 ? "embedding table '%s' but no ids input"
                                             : "ids input '%s' but no embedding table",
                   g->vals[g->ids < 0 ? g->table : g->ids].name);
  for (size_t i = 0; i < g->nparams; i++)
    if (!g->vals[i].nconsumers)
      return ps_errf(eb, PS_EINVAL, "parameter '%s' is not used by any node", g->vals[i].name);
  if ((rc = check_loss(g, eb))) return rc;
  return plan(g, eb);
}

/* ---- loading ----------------------------------------------------------------- */

/* read_varint reads a varint at *P (< END); 0 or -1 when truncated. */
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  *v = 0;
  for (int shift = 0; *p < end && shift < 64; shift += 7) {
    uint8_t b = *(*p)++;
    *v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return 0;
  }
  return -1;
}

/* wire_diagnose walks the top-level fields of a Graph message that
 * protobuf-c refused and says which field is cut off or malformed. */
static int wire_diagnose(const uint8_t *buf, size_t len, ps_errbuf *eb) {
  const uint8_t *p = buf, *end = buf + len;
  while (p < end) {
    size_t at = (size_t)(p - buf);
    uint64_t key, n = 0;
    if (read_varint(&p, end, &key)) break;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&ps__graph__graph__descriptor, (unsigned)(key >> 3));
    const char *name = f ? f->name : "?";
    int bad = (key & 7) == 2 ? read_varint(&p, end, &n) || n > (uint64_t)(end - p)
              : (key & 7) == 0 ? read_varint(&p, end, &n)
                               : 1;
    if (bad)
      return ps_errf(eb, PS_EFORMAT, "field '%s' (#%u) at byte %zu is truncated or malformed",
                     name, (unsigned)(key >> 3), at);
    if ((key & 7) == 2) p += n;
  }
  return ps_errf(eb, PS_EFORMAT, "not a valid ps.graph.Graph protobuf (%zu bytes)", len);
}

/* pb_tag0 returns the name of the message type in M's tree (M and the
 * messages in its message fields) that holds an unknown field numbered 0,
 * or NULL.  protobuf-c's unpack takes such a key when it is spelled in
 * two or more bytes (80 00) but refuses it in its one-byte form (00),
 * which is how pack writes it back, so a message holding one does not
 * survive a pack and unpack (psw_graph_to_spec, then the workers). */
static const char *pb_tag0(const ProtobufCMessage *m) {
  for (unsigned i = 0; i < m->n_unknown_fields; i++)
    if (m->unknown_fields[i].tag == 0) return m->descriptor->name;
  for (unsigned f = 0; f < m->descriptor->n_fields; f++) {
    const ProtobufCFieldDescriptor *fd = &m->descriptor->fields[f];
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    const char *at = (const char *)m + fd->offset;
    size_t n = fd->label == PROTOBUF_C_LABEL_REPEATED
                   ? *(const size_t *)((const char *)m + fd->quantifier_offset) : 1;
    const ProtobufCMessage *const *sub = fd->label == PROTOBUF_C_LABEL_REPEATED
                                             ? *(const ProtobufCMessage *const *const *)at
                                             : (const ProtobufCMessage *const *)at;
    for (size_t k = 0; k < n; k++) {
      const char *bad = sub[k] ? pb_tag0(sub[k]) : NULL;
      if (bad) return bad;
    }
  }
  return NULL;
}

int psw_graph_load(const void *buf, size_t len, psw_graph **out, ps_errbuf *eb) {
  *out = NULL;
  /* 0 bytes unpack as a graph with nothing in it: "no features input" */
  if (!len) return ps_errf(eb, PS_EFORMAT, "empty graph (0 bytes)");
  psw_graph *g = calloc(1, sizeof *g);
  if (!g) return ps_errf(eb, PS_ENOMEM, "graph: out of memory");
  g->pb = ps__graph__graph__unpack(NULL, len, buf);
  if (!g->pb) {
    free(g);
    return wire_diagnose(buf, len, eb);
  }
  const char *tag0 = pb_tag0(&g->pb->base);
  /* protobuf-c cuts a string at a NUL and takes bad UTF-8: ps_pb_unpack
   * refuses both (the shards would refuse the spec's tensor names) */
  ProtobufCMessage *strict = NULL;
  int rc = tag0 ? ps_errf(eb, PS_EFORMAT, "a '%s' has a field numbered 0 (not valid protobuf)",
                          tag0)
                : ps_pb_unpack(&ps__graph__graph__descriptor, buf, len, &strict, eb);
  if (strict) protobuf_c_message_free_unpacked(strict, NULL);
  if (!rc) rc = check_graph(g, eb);
  if (rc) {
    psw_graph_free(g);
    return rc;
  }
  *out = g;
  return 0;
}

int psw_graph_load_file(const char *path, psw_graph **g, ps_errbuf *eb) {
  *g = NULL;
  FILE *f = ps_config_fopen(path); /* a FIFO nobody writes to: empty, not a hang */
  if (!f) return ps_errf(eb, ps_err_from_errno(errno), "%s: %s", path, strerror(errno));
  int rc = 0, why = 0;
  size_t cap = 1 << 16, len = 0;
  uint8_t *buf = malloc(cap);
  while (buf) {
    errno = 0;
    len += fread(buf + len, 1, cap - len, f);
    why = errno;
    if (len < cap) break;
    if (cap >= PSW_GRAPH_MAX_BYTES) { /* /dev/zero, a pipe that never ends, a data file */
      rc = ps_errf(eb, PS_EFORMAT, "%s: more than %d MiB: not a graph file", path,
                   PSW_GRAPH_MAX_BYTES >> 20);
      break;
    }
    uint8_t *nb = realloc(buf, cap *= 2);
    if (!nb) free(buf);
    buf = nb;
  }
  if (!rc && !buf) rc = ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
  else if (!rc && ferror(f))
    rc = ps_errf(eb, PS_EIO, "%s: cannot read: %s", path, why ? strerror(why) : "read error");
  fclose(f);
  if (!rc && !len) /* a failed download, a `touch`, a file written over */
    rc = ps_errf(eb, PS_EFORMAT, "%s: the file is empty (0 bytes), not a graph", path);
  if (!rc && (rc = psw_graph_load(buf, len, g, eb))) {
    ps_errbuf inner = *eb;
    ps_errf(eb, rc, "%s: %s", path, inner.msg);
  }
  free(buf);
  return rc;
}

int psw_graph_from_spec(const Ps__ModelSpec *spec, psw_graph **g, ps_errbuf *eb) {
  int rc = psw_graph_load(spec->graph.data, spec->graph.len, g, eb);
  if (rc) {
    ps_errbuf inner = *eb;
    return ps_errf(eb, rc, "model '%s': graph: %s", spec->name, inner.msg);
  }
  const Ps__Graph__Graph *pb = (*g)->pb;
  size_t ndense = pb->n_params - ((*g)->table >= 0);
  rc = spec->n_tensors == ndense ? 0
       : ps_errf(eb, PS_EINVAL, "model '%s': %zu tensors but the graph has %zu dense parameters",
                 spec->name, spec->n_tensors, ndense);
  for (size_t i = 0, k = 0; !rc && i < pb->n_params; i++) {
    const Ps__Graph__Param *p = pb->params[i];
    if (p->sparse) continue;
    const Ps__TensorSpec *t = spec->tensors[k++];
    if (strcmp(t->name, p->name) || t->n_shape != p->n_shape ||
        memcmp(t->shape, p->shape, p->n_shape * sizeof *p->shape))
      rc = ps_errf(eb, PS_EINVAL, "model '%s': tensor %zu '%s' does not match graph parameter '%s'",
                   spec->name, i, t->name, p->name);
  }
  if (rc) {
    psw_graph_free(*g);
    *g = NULL;
  }
  return rc;
}

void psw_graph_free(psw_graph *g) {
  if (!g) return;
  if (g->pb) ps__graph__graph__free_unpacked(g->pb, NULL);
  free(g->vals);
  free(g->index);
  free(g->nodes);
  free(g);
}

const Ps__Graph__Graph *psw_graph_proto(const psw_graph *g) { return g->pb; }
uint64_t psw_graph_nparams(const psw_graph *g) { return g->total; }
uint32_t psw_graph_input_dim(const psw_graph *g) { return g->vals[g->features].cols; }
uint32_t psw_graph_target_dim(const psw_graph *g) {
  return g->targets < 0 ? 0 : g->vals[g->targets].cols;
}
uint32_t psw_graph_classes(const psw_graph *g) {
  if (g->acc_node < 0) return g->sig_node < 0 ? 0 : 2;
  return g->vals[g->nodes[g->acc_node].in[0]].cols;
}

int psw_graph_binary(const psw_graph *g) { return g->sig_node >= 0; }

uint64_t psw_graph_sample_floats(const psw_graph *g) {
  uint64_t n = (uint64_t)psw_graph_input_dim(g) + psw_graph_target_dim(g) + 2, maxv = 1;
  for (size_t v = g->nparams + g->pb->n_inputs; v < g->nvals; v++) {
    if (g->vals[v].scalar) continue;
    n += 2 * (uint64_t)g->vals[v].cols;
    maxv = g->vals[v].cols > maxv ? g->vals[v].cols : maxv;
  }
  return n + maxv;
}

int psw_graph_embedding(const psw_graph *g, uint32_t *param, uint32_t *fields, uint32_t *dim,
                        uint64_t *hash_buckets) {
  if (g->table < 0) return PS_ENOENT;
  if (param) *param = (uint32_t)g->table;
  if (fields) *fields = g->vals[g->ids].cols;
  if (dim) *dim = g->vals[g->table].cols;
  if (hash_buckets) *hash_buckets = g->pb->params[g->table]->hash_buckets;
  return 0;
}

int psw_exec_probs(psw_exec *ex, float *probs) {
  if (ex->g->sig_node < 0) return PS_ENOENT;
  ps_gpu_backend *be = ex->be;
  int rc = be->ops->copy_d2h(be, probs, ex->probs, (size_t)ex->n * sizeof(float), PS_GPU_STREAM_COMPUTE);
  return rc ? rc : be->ops->sync(be, PS_GPU_STREAM_COMPUTE);
}

int psw_graph_init_params(const psw_graph *g, uint64_t seed, float *params) {
  for (size_t i = 0; i < g->nparams; i++) {
    const Ps__Graph__Param *p = g->pb->params[i];
    const val *v = &g->vals[i];
    if (v->sparse) continue; /* rows come from the shards' initializer (ps_init_row) */
    uint64_t n = (uint64_t)v->rows * v->cols;
    int rc = ps_init_fill(params + v->offset, *p->init ? p->init : "zeros", p->scale, seed,
                          (uint32_t)i, 0, n, p->shape[0], p->n_shape == 2 ? p->shape[1] : 1);
    if (rc) return rc;
  }
  return 0;
}

/* The spec and its arrays are one allocation, plus the packed graph.  An
 * embedding table is no tensor: the shards find it in the graph. */
int psw_graph_to_spec(const psw_graph *g, const char *name, Ps__ModelSpec **out, ps_errbuf *eb) {
  size_t n = g->nparams - (g->table >= 0), nlen = strlen(name) + 1;
  size_t size = sizeof(Ps__ModelSpec) + n * (sizeof(Ps__TensorSpec *) + sizeof(Ps__TensorSpec)) + nlen;
  Ps__ModelSpec *s = calloc(1, size);
  size_t glen = ps__graph__graph__get_packed_size(g->pb);
  uint8_t *gbuf = malloc(glen ? glen : 1);
  if (!s || !gbuf) {
    free(s);
    free(gbuf);
    return ps_errf(eb, PS_ENOMEM, "model '%s': out of memory", name);
  }
  ps__model_spec__init(s);
  Ps__TensorSpec **ptrs = (Ps__TensorSpec **)(s + 1);
  Ps__TensorSpec *ts = (Ps__TensorSpec *)(ptrs + n);
  s->name = memcpy((char *)(ts + n), name, nlen);
  for (size_t i = 0, k = 0; i < n; i++, k++) {
    if ((int)k == g->table) k++;
    const Ps__Graph__Param *p = g->pb->params[k];
    ps__tensor_spec__init(&ts[i]);
    ts[i].name = p->name;
    ts[i].n_shape = p->n_shape;
    ts[i].shape = p->shape;
    ts[i].init = p->init;
    ts[i].scale = p->scale;
    ptrs[i] = &ts[i];
  }
  s->n_tensors = n;
  s->tensors = ptrs;
  s->graph.len = ps__graph__graph__pack(g->pb, gbuf);
  s->graph.data = gbuf;
  *out = s;
  return 0;
}

void psw_graph_spec_free(Ps__ModelSpec *spec) {
  if (!spec) return;
  free(spec->graph.data);
  free(spec);
}

void psw_graph_print(const psw_graph *g, FILE *out) {
  char s[48];
  fprintf(out, "graph '%s': %zu parameter tensors, %llu parameters\n", g->pb->name, g->nparams,
          (unsigned long long)g->total);
  fprintf(out, "inputs:\n");
  for (size_t i = 0; i < g->pb->n_inputs; i++) {
    const val *v = &g->vals[g->nparams + i];
    fprintf(out, "  %-12s %-9s %s\n", v->name, g->pb->inputs[i]->kind,
            v->input_kind == IN_LABELS ? "[-1]" : shape_str(v, s, sizeof s));
  }
  fprintf(out, "parameters:\n");
  for (size_t i = 0; i < g->nparams; i++) {
    const Ps__Graph__Param *p = g->pb->params[i];
    fprintf(out, "  %-12s %-12s %s %g", p->name,
            p->sparse ? (snprintf(s, sizeof s, "[*, %u]", p->shape[0]), s)
            : p->n_shape == 1 ? (snprintf(s, sizeof s, "[%u]", p->shape[0]), s)
                              : shape_str(&g->vals[i], s, sizeof s),
            *p->init ? p->init : "zeros", p->scale);
    if (p->sparse && p->hash_buckets)
      fprintf(out, " embedding, ids hashed into %llu rows", (unsigned long long)p->hash_buckets);
    else if (p->sparse)
      fprintf(out, " embedding, raw 64-bit ids");
    fputc('\n', out);
  }
  fprintf(out, "nodes:\n");
  for (size_t i = 0; i < g->nnodes; i++) {
    const Ps__Graph__Node *pn = g->pb->nodes[i];
    fprintf(out, "  %-12s %s(", pn->name, pn->op);
    for (size_t k = 0; k < pn->n_inputs; k++) fprintf(out, "%s%s", k ? ", " : "", pn->inputs[k]);
    fprintf(out, ") -> %s %s\n", pn->outputs[0], shape_str(&g->vals[g->nodes[i].out], s, sizeof s));
  }
  fprintf(out, "loss: %s\n", g->pb->loss);
  for (size_t m = 0; m < g->pb->n_metrics; m++) fprintf(out, "metric: %s\n", g->pb->metrics[m]);
}

/* ---- executing ------------------------------------------------------------------ */

/* tensor of value V (this step's rows for batch values). */
static ps_gpu_tensor tv(const psw_exec *ex, int v) {
  const val *x = &ex->g->vals[v];
  return ps_gpu_tensor_make(ex->be, ex->data[v], x->batch ? ex->n : x->rows, x->cols);
}

static ps_gpu_tensor tg(const psw_exec *ex, int v) {
  ps_gpu_tensor t = tv(ex, v);
  t.data = ex->grad[v];
  return t;
}

/* grad_target returns where node N's backward writes input K's gradient:
 * the gradient itself, or the scratch buffer when it must accumulate (the
 * caller then adds it with finish_grad). */
static ps_gpu_tensor grad_target(const psw_exec *ex, const gnode *n, int k) {
  ps_gpu_tensor t = tg(ex, n->in[k]);
  if (n->acc[k]) t.data = ex->scratch;
  return t;
}

static int finish_grad(psw_exec *ex, const gnode *n, int k, const ps_gpu_tensor *t) {
  if (!n->acc[k]) return 0;
  ps_gpu_tensor g = tg(ex, n->in[k]);
  return ex->be->ops->axpy(ex->be, 1, t, &g);
}

static int fwd_dense(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor x = tv(ex, n->in[0]), w = tv(ex, n->in[1]), b = tv(ex, n->in[2]),
                y = tv(ex, n->out);
  b.rows = 1;
  b.cols = w.cols;
  int rc = ex->be->ops->gemm(ex->be, 0, 0, 1, &x, &w, 0, &y);
  return rc ? rc : ex->be->ops->bias_add(ex->be, &y, &b, n->act);
}

static int bwd_dense(psw_exec *ex, const gnode *n) {
  const ps_gpu_ops *o = ex->be->ops;
  ps_gpu_tensor x = tv(ex, n->in[0]), w = tv(ex, n->in[1]), dy = tg(ex, n->out);
  ps_gpu_tensor dw = tg(ex, n->in[1]), db = tg(ex, n->in[2]);
  db.rows = 1;
  db.cols = w.cols;
  int rc = o->gemm(ex->be, 1, 0, 1, &x, &dy, n->acc[1] ? 1.0f : 0.0f, &dw);
  if (!rc) rc = o->bias_grad(ex->be, &dy, n->acc[2] ? 1.0f : 0.0f, &db);
  if (rc || !ex->g->vals[n->in[0]].needs_grad) return rc;
  ps_gpu_tensor dx = tg(ex, n->in[0]);
  return o->gemm(ex->be, 0, 1, 1, &dy, &w, n->acc[0] ? 1.0f : 0.0f, &dx);
}

static int fwd_act(psw_exec *ex, const gnode *n) {
  if (n->fused) return 0;
  ps_gpu_tensor x = tv(ex, n->in[0]), y = tv(ex, n->out);
  return ex->be->ops->act_fwd(ex->be, n->act, &x, &y);
}

static int bwd_act(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor y = tv(ex, n->out), dy = tg(ex, n->out), dx = grad_target(ex, n, 0);
  int rc = ex->be->ops->act_bwd(ex->be, n->act, &y, &dy, &dx);
  return rc ? rc : finish_grad(ex, n, 0, &dx);
}

static int fwd_xent(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor x = tv(ex, n->in[0]), l = tv(ex, n->out);
  return ex->be->ops->softmax_xent(ex->be, &x, ex->labels, &l, NULL);
}

static int bwd_xent(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor x = tv(ex, n->in[0]), l = tv(ex, n->out), dx = grad_target(ex, n, 0);
  int rc = ex->be->ops->softmax_xent(ex->be, &x, ex->labels, &l, &dx);
  return rc ? rc : finish_grad(ex, n, 0, &dx);
}

static int fwd_mse(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor p = tv(ex, n->in[0]), t = tv(ex, n->in[1]), l = tv(ex, n->out);
  return ex->be->ops->mse(ex->be, &p, &t, &l, NULL);
}

static int bwd_mse(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor p = tv(ex, n->in[0]), t = tv(ex, n->in[1]), l = tv(ex, n->out),
                dp = grad_target(ex, n, 0);
  int rc = ex->be->ops->mse(ex->be, &p, &t, &l, &dp);
  return rc ? rc : finish_grad(ex, n, 0, &dp);
}

static int fwd_sigxent(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor x = tv(ex, n->in[0]), l = tv(ex, n->out);
  ps_gpu_tensor p = ps_gpu_tensor_make(ex->be, ex->probs, ex->n, 1);
  return ex->be->ops->sigmoid_xent(ex->be, &x, ex->labels, &l, NULL, &p);
}

static int bwd_sigxent(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor x = tv(ex, n->in[0]), l = tv(ex, n->out), dx = grad_target(ex, n, 0);
  ps_gpu_tensor p = ps_gpu_tensor_make(ex->be, ex->probs, ex->n, 1);
  int rc = ex->be->ops->sigmoid_xent(ex->be, &x, ex->labels, &l, &dx, &p);
  return rc ? rc : finish_grad(ex, n, 0, &dx);
}

/* embed_views: this step's bags with N's pooling, the table slice at
 * DATA, and the pooled rows at OUT ([n F, d]: the node's [n, F d]). */
static void embed_views(const psw_exec *ex, const gnode *n, float *data, float *out,
                        ps_gpu_bags *b, ps_gpu_tensor *t, ps_gpu_tensor *y) {
  const uint32_t d = ex->g->vals[ex->g->table].cols;
  *b = ex->bags;
  b->mean = n->mean;
  *t = ps_gpu_tensor_make(ex->be, data, b->nrows, d);
  *y = ps_gpu_tensor_make(ex->be, out, b->nbags, d);
}

static int fwd_embed(psw_exec *ex, const gnode *n) {
  ps_gpu_bags b;
  ps_gpu_tensor t, y;
  embed_views(ex, n, ex->data[n->in[1]], ex->data[n->out], &b, &t, &y);
  return ex->be->ops->embed_fwd(ex->be, &t, &b, &y);
}

/* bwd_embed scatters into the table slice's gradient directly (beta 1
 * when another node reads the table too: invariant 3). */
static int bwd_embed(psw_exec *ex, const gnode *n) {
  ps_gpu_bags b;
  ps_gpu_tensor dt, dy;
  embed_views(ex, n, ex->grad[n->in[1]], ex->grad[n->out], &b, &dt, &dy);
  return ex->be->ops->embed_bwd(ex->be, &dy, &b, n->acc[1] ? 1.0f : 0.0f, &dt);
}

static int fwd_concat(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor a = tv(ex, n->in[0]), b = tv(ex, n->in[1]), y = tv(ex, n->out);
  int rc = ex->be->ops->cols_put(ex->be, &a, &y, 0);
  return rc ? rc : ex->be->ops->cols_put(ex->be, &b, &y, a.cols);
}

/* bwd_concat hands each input that needs one its columns of the output's
 * gradient (accumulated when another node reads it too). */
static int bwd_concat(psw_exec *ex, const gnode *n) {
  ps_gpu_tensor dy = tg(ex, n->out);
  uint32_t off = 0;
  for (int k = 0; k < 2; k++) {
    const val *v = &ex->g->vals[n->in[k]];
    if (v->needs_grad) {
      ps_gpu_tensor dx = tg(ex, n->in[k]);
      int rc = ex->be->ops->cols_get(ex->be, &dy, off, n->acc[k] ? 1.0f : 0.0f, &dx);
      if (rc) return rc;
    }
    off += v->cols;
  }
  return 0;
}

/* ex_alloc allocates BYTES of device memory recorded for psw_exec_free. */
static int ex_alloc(psw_exec *ex, size_t bytes, void *out) {
  void **p = out;
  /* At most 6 blocks are made (see psw_exec_create). */
  if (ex->nallocs == sizeof ex->allocs / sizeof ex->allocs[0]) return PS_EINTERNAL;
  int rc = ex->be->ops->alloc(ex->be, bytes ? bytes : 4, p);
  if (!rc) ex->allocs[ex->nallocs++] = *p;
  return rc;
}

/* ex_buffers lays out one device block for all node outputs and their
 * gradients (fused activations share their dense node's buffers). */
static int ex_buffers(psw_exec *ex) {
  const psw_graph *g = ex->g;
  size_t total = 0, maxv = 1;
  for (size_t v = g->nparams + g->pb->n_inputs; v < g->nvals; v++) {
    size_t n = g->vals[v].scalar ? 1 : (size_t)ex->max_batch * g->vals[v].cols;
    total += 2 * ((n + 15) & ~(size_t)15);
    maxv = n > maxv ? n : maxv;
  }
  float *block;
  const size_t probs = ((size_t)ex->max_batch + 15) & ~(size_t)15;
  int rc = ex_alloc(ex, (total + maxv + 16 + 16 + probs) * sizeof(float), &block);
  if (rc) return rc;
  ex->scratch = block;
  block += (maxv + 15) & ~(size_t)15;
  ex->count = block;
  block += 16;
  ex->probs = block;
  block += probs;
  for (size_t i = 0; i < g->nnodes; i++) {
    const gnode *n = &g->nodes[i];
    int v = n->out;
    size_t len = g->vals[v].scalar ? 1 : (size_t)ex->max_batch * g->vals[v].cols;
    len = (len + 15) & ~(size_t)15;
    if (n->fused) {
      ex->data[v] = ex->data[n->in[0]];
      ex->grad[v] = ex->grad[n->in[0]];
      continue;
    }
    ex->data[v] = block;
    ex->grad[v] = block + len;
    block += 2 * len;
  }
  return 0;
}

/* node_backprops says whether a step runs N's backward: the loss depends
 * on it and it depends on a parameter. */
static int node_backprops(const psw_graph *g, const gnode *n) {
  return n->live && g->vals[n->out].needs_grad;
}

/* ex_param_order fills first_read and last_grad (see psw_exec). */
static void ex_param_order(psw_exec *ex) {
  const psw_graph *g = ex->g;
  for (size_t p = 0; p < g->nparams; p++) ex->first_read[p] = ex->last_grad[p] = -1;
  for (size_t i = g->nnodes; i-- > 0;) {
    const gnode *n = &g->nodes[i];
    int grads = node_backprops(g, n);
    for (int k = 0; k < n->op->nin; k++) {
      int p = n->in[k];
      if (p < 0 || (size_t)p >= g->nparams) continue;
      ex->first_read[p] = (int)i;
      if (grads) ex->last_grad[p] = (int)i;
    }
  }
}

int psw_exec_create(const psw_graph *g, ps_gpu_backend *be, uint32_t max_batch, psw_exec **out,
                    ps_errbuf *eb) {
  *out = NULL;
  if (!max_batch) return ps_errf(eb, PS_EINVAL, "graph '%s': max batch must be positive", g->pb->name);
  psw_exec *ex = calloc(1, sizeof *ex);
  if (!ex) return ps_errf(eb, PS_ENOMEM, "graph '%s': out of memory", g->pb->name);
  ex->g = g;
  ex->be = be;
  ex->max_batch = max_batch;
  ex->data = calloc(g->nvals, sizeof *ex->data);
  ex->grad = calloc(g->nvals, sizeof *ex->grad);
  ex->first_read = malloc((g->nparams ? g->nparams : 1) * sizeof *ex->first_read);
  ex->last_grad = malloc((g->nparams ? g->nparams : 1) * sizeof *ex->last_grad);
  int rc = ex->data && ex->grad && ex->first_read && ex->last_grad ? ex_buffers(ex) : PS_ENOMEM;
  if (!rc) ex_param_order(ex);
  if (!rc && !be->unified) {
    uint32_t tcols = psw_graph_target_dim(g);
    rc = ex_alloc(ex, g->total * sizeof(float), &ex->params_dev);
    if (!rc) rc = ex_alloc(ex, g->total * sizeof(float), &ex->grads_dev);
    if (!rc) rc = ex_alloc(ex, (size_t)max_batch * psw_graph_input_dim(g) * sizeof(float), &ex->x_dev);
    if (!rc) rc = ex_alloc(ex, (size_t)max_batch * sizeof(int32_t), &ex->labels_dev);
    if (!rc && tcols) rc = ex_alloc(ex, (size_t)max_batch * tcols * sizeof(float), &ex->t_dev);
  }
  if (rc) {
    psw_exec_free(ex);
    return ps_errf(eb, rc, "graph '%s': cannot allocate buffers for batch %u on '%s'", g->pb->name,
                   max_batch, be->name);
  }
  *out = ex;
  return 0;
}

void psw_exec_free(psw_exec *ex) {
  if (!ex) return;
  for (size_t i = 0; i < ex->nallocs; i++) ex->be->ops->free_buf(ex->be, ex->allocs[i]);
  if (ex->sp_buf) ex->be->ops->free_buf(ex->be, ex->sp_buf);
  free(ex->data);
  free(ex->grad);
  free(ex->first_read);
  free(ex->last_grad);
  free(ex);
}

/* ex_sparse_upload copies the table slice and the index of SP to the
 * device (compute stream), growing the device buffer when needed. */
static int ex_sparse_upload(psw_exec *ex, const psw_sparse_batch *sp, uint32_t d) {
  ps_gpu_backend *be = ex->be;
  const ps_gpu_bags *h = &sp->bags;
  size_t nf = (size_t)h->nrows * d;
  size_t nint = (size_t)h->nbags + 1 + h->nnz + h->nrows + 1 + h->nnz;
  size_t bytes = 2 * ((nf + 15) & ~(size_t)15) * sizeof(float) + nint * sizeof(int32_t);
  int rc = 0;
  if (bytes > ex->sp_cap) {
    size_t want = ex->sp_cap ? ex->sp_cap : 1 << 20;
    while (want < bytes) want *= 2;
    if (ex->sp_buf) be->ops->free_buf(be, ex->sp_buf);
    ex->sp_buf = NULL;
    ex->sp_cap = 0;
    if ((rc = be->ops->alloc(be, want, &ex->sp_buf))) return rc;
    ex->sp_cap = want;
  }
  ex->sp_rows = ex->sp_buf;
  ex->sp_grads = ex->sp_rows + ((nf + 15) & ~(size_t)15);
  int32_t *ix = (int32_t *)(ex->sp_grads + ((nf + 15) & ~(size_t)15));
  const struct { const int32_t *src; size_t n; const int32_t **dst; } parts[] = {
      {h->bag_off, (size_t)h->nbags + 1, &ex->bags.bag_off},
      {h->bag_slot, h->nnz, &ex->bags.bag_slot},
      {h->row_off, (size_t)h->nrows + 1, &ex->bags.row_off},
      {h->row_bag, h->nnz, &ex->bags.row_bag}};
  rc = be->ops->copy_h2d(be, ex->sp_rows, sp->rows, nf * sizeof(float), PS_GPU_STREAM_COMPUTE);
  for (size_t i = 0; i < 4 && !rc; i++) {
    rc = be->ops->copy_h2d(be, ix, parts[i].src, parts[i].n * sizeof(int32_t), PS_GPU_STREAM_COMPUTE);
    *parts[i].dst = ix;
    ix += parts[i].n;
  }
  return rc;
}

/* ex_bind_sparse checks this step's embedding slice SP against the batch
 * (bags = rows x fields, a consistent index, rows and, when GRADS, a
 * gradient buffer) and binds it: views on a unified backend, copies
 * otherwise. */
static int ex_bind_sparse(psw_exec *ex, const psw_sparse_batch *sp, int grads, ps_errbuf *eb) {
  const psw_graph *g = ex->g;
  const uint32_t fields = g->vals[g->ids].cols, d = g->vals[g->table].cols;
  if (!sp) return ps_errf(eb, PS_EINVAL, "batch lacks the ids of input '%s'", g->vals[g->ids].name);
  if ((uint64_t)sp->bags.nbags != (uint64_t)ex->n * fields)
    return ps_errf(eb, PS_EINVAL, "batch of %u rows has %u bags of ids (expected %u fields per row)",
                   ex->n, sp->bags.nbags, fields);
  if (ps_gpu_bags_check(&sp->bags))
    return ps_errf(eb, PS_EINVAL, "batch: inconsistent embedding index (see ps_gpu_bags)");
  if ((sp->bags.nrows && !sp->rows) || (grads && sp->bags.nrows && !sp->row_grads))
    return ps_errf(eb, PS_EINVAL, "batch lacks the rows (or row gradients) of table '%s'",
                   g->vals[g->table].name);
  ex->bags = sp->bags;
  ex->host_sp_grads = grads ? sp->row_grads : NULL;
  if (ex->be->unified) {
    ex->sp_rows = (float *)sp->rows;
    ex->sp_grads = grads ? sp->row_grads : NULL;
  } else {
    int rc = ex_sparse_upload(ex, sp, d);
    if (rc) return ps_errf(eb, rc, "copy to device '%s' failed", ex->be->desc);
  }
  ex->data[g->table] = ex->sp_rows;
  ex->grad[g->table] = grads ? ex->sp_grads : NULL;
  return 0;
}

/* ex_bind checks batch B and points the parameter, gradient and input
 * values at this step's memory (views on a unified backend, copies
 * otherwise). */
static int ex_bind(psw_exec *ex, const float *params, const psw_batch *b, float *grads,
                   ps_errbuf *eb) {
  const psw_graph *g = ex->g;
  ps_gpu_backend *be = ex->be;
  if (!b->n || b->n > ex->max_batch)
    return ps_errf(eb, PS_EINVAL, "batch of %u rows (expected 1..%u)", b->n, ex->max_batch);
  if (!b->x || (g->labels >= 0 && !b->labels) || (g->targets >= 0 && !b->targets))
    return ps_errf(eb, PS_EINVAL, "batch lacks %s", !b->x ? "features" : g->labels >= 0 && !b->labels ? "labels" : "targets");
  uint32_t k = psw_graph_classes(g);
  for (uint32_t i = 0; k && i < b->n; i++)
    if (b->labels[i] < 0 || (uint32_t)b->labels[i] >= k)
      return ps_errf(eb, PS_EINVAL, "label %d of row %u is not a class id in [0, %u)", b->labels[i], i, k);
  ex->n = b->n;
  int rc = 0;
  float *pd = (float *)params, *gd = grads, *xd = (float *)b->x, *td = (float *)b->targets;
  ex->labels = b->labels;
  if (!be->unified) {
    size_t xb = (size_t)b->n * psw_graph_input_dim(g) * sizeof(float);
    /* the parameters go up layer by layer on the copy stream (ex_forward) */
    ex->host_params = params;
    ex->host_grads = grads;
    rc = be->ops->copy_h2d(be, ex->x_dev, b->x, xb, PS_GPU_STREAM_COMPUTE);
    if (!rc && b->labels) rc = be->ops->copy_h2d(be, ex->labels_dev, b->labels, b->n * sizeof(int32_t), PS_GPU_STREAM_COMPUTE);
    if (!rc && ex->t_dev)
      rc = be->ops->copy_h2d(be, ex->t_dev, b->targets, (size_t)b->n * psw_graph_target_dim(g) * sizeof(float), PS_GPU_STREAM_COMPUTE);
    pd = ex->params_dev, gd = ex->grads_dev, xd = ex->x_dev, td = ex->t_dev;
    ex->labels = ex->labels_dev;
  }
  for (size_t i = 0; i < g->nparams; i++) {
    ex->data[i] = pd + g->vals[i].offset;
    ex->grad[i] = gd ? gd + g->vals[i].offset : NULL;
  }
  ex->data[g->features] = xd;
  if (g->targets >= 0) ex->data[g->targets] = td;
  if (rc) return ps_errf(eb, rc, "copy to device '%s' failed", be->desc);
  return g->table >= 0 ? ex_bind_sparse(ex, b->sparse, grads != NULL, eb) : 0;
}

/* val_bytes returns the bytes of parameter V. */
static size_t val_bytes(const val *v) { return (size_t)v->rows * v->cols * sizeof(float); }

/* ex_param_copies queues, on the copy stream, the copies of the
 * parameters whose upload must land before node I runs (DOWN = 0: the
 * compute stream then waits for them; the previous step or evaluation has
 * ended with a sync of the compute stream, so nothing still reads the
 * parameter memory), or whose gradient is final once node I's backward
 * ran (DOWN = 1: ordered after the compute stream's work so far).  A
 * backend without separate memory needs none. */
static int ex_param_copies(psw_exec *ex, int i, int down) {
  const psw_graph *g = ex->g;
  const gnode *n = &g->nodes[i];
  ps_gpu_backend *be = ex->be;
  int rc = 0, queued = 0;
  if (be->unified) return 0;
  for (int k = 0; k < n->op->nin && !rc; k++) {
    int p = n->in[k];
    if (p < 0 || (size_t)p >= g->nparams || g->vals[p].sparse ||
        (down ? ex->last_grad : ex->first_read)[p] != i)
      continue;
    size_t bytes = val_bytes(&g->vals[p]);
    if (down) {
      if (!queued) rc = be->ops->stream_wait(be, PS_GPU_STREAM_COPY, PS_GPU_STREAM_COMPUTE);
      if (!rc) rc = be->ops->copy_d2h(be, ex->host_grads + g->vals[p].offset, ex->grad[p], bytes,
                                      PS_GPU_STREAM_COPY);
    } else {
      rc = be->ops->copy_h2d(be, ex->data[p], ex->host_params + g->vals[p].offset, bytes,
                             PS_GPU_STREAM_COPY);
    }
    queued = 1;
  }
  if (!rc && queued && !down) rc = be->ops->stream_wait(be, PS_GPU_STREAM_COMPUTE, PS_GPU_STREAM_COPY);
  return rc;
}

/* ex_forward runs every node, each after its parameters' upload: the
 * upload of layer k+1 overlaps layer k's compute. */
static int ex_forward(psw_exec *ex) {
  const psw_graph *g = ex->g;
  for (size_t i = 0; i < g->nnodes; i++) {
    int rc = ex_param_copies(ex, (int)i, 0);
    if (!rc) rc = g->nodes[i].op->fwd(ex, &g->nodes[i]);
    if (rc) return rc;
  }
  return 0;
}

/* ex_backward runs the live nodes' backward in reverse; each gradient
 * goes down as soon as it is final, overlapping the layers below. */
static int ex_backward(psw_exec *ex) {
  const psw_graph *g = ex->g;
  int rc = 0;
  for (size_t i = g->nnodes; !rc && i-- > 0;) {
    if (!node_backprops(g, &g->nodes[i])) continue;
    rc = g->nodes[i].op->bwd(ex, &g->nodes[i]);
    if (!rc) rc = ex_param_copies(ex, (int)i, 1);
  }
  /* the table slice's gradient is final once every node ran */
  if (!rc && g->table >= 0 && !ex->be->unified && ex->bags.nrows)
    rc = ex->be->ops->copy_d2h(ex->be, ex->host_sp_grads, ex->sp_grads,
                               (size_t)ex->bags.nrows * g->vals[g->table].cols * sizeof(float),
                               PS_GPU_STREAM_COMPUTE);
  return rc;
}

/* ex_results copies the loss and the correct count to the host. */
static int ex_results(psw_exec *ex, float *loss, uint32_t *correct) {
  const psw_graph *g = ex->g;
  ps_gpu_backend *be = ex->be;
  float host[2] = {0, 0};
  int rc = 0;
  if (g->acc_node >= 0) {
    ps_gpu_tensor x = tv(ex, g->nodes[g->acc_node].in[0]), c = ps_gpu_tensor_make(be, ex->count, 1, 1);
    rc = be->ops->accuracy(be, &x, ex->labels, &c);
    if (!rc) rc = be->ops->copy_d2h(be, &host[1], ex->count, sizeof(float), PS_GPU_STREAM_COMPUTE);
  }
  if (!rc) rc = be->ops->copy_d2h(be, &host[0], ex->data[g->loss], sizeof(float), PS_GPU_STREAM_COMPUTE);
  if (!rc) rc = be->ops->sync(be, PS_GPU_STREAM_COMPUTE);
  *loss = host[0];
  *correct = (uint32_t)host[1];
  return rc;
}

/* ex_drain waits, on a device with its own memory, until both streams are
 * idle; the first error goes to *RC unless it holds one. */
static void ex_drain(psw_exec *ex, int *rc) {
  ps_gpu_backend *be = ex->be;
  if (be->unified) return;
  for (int s = 0; s < PS_GPU_NSTREAMS; s++) {
    int r = be->ops->sync(be, s);
    if (!*rc) *rc = r;
  }
}

int psw_exec_step(psw_exec *ex, const float *params, const psw_batch *b, float *grads,
                  float *loss, uint32_t *correct, ps_errbuf *eb) {
  const psw_graph *g = ex->g;
  int rc = ex_bind(ex, params, b, grads, eb);
  if (rc) return rc;
  rc = ex_forward(ex);
  if (!rc) rc = ex_backward(ex);
  if (!rc) rc = ex_results(ex, loss, correct);
  /* the caller pushes GRADS next: every download must have landed (and
   * after a failure nothing may still be writing to it) */
  ex_drain(ex, &rc);
  return rc ? ps_errf(eb, rc, "graph '%s': step on '%s' failed: %s", g->pb->name, ex->be->name,
                      ps_strerror(rc))
            : 0;
}

int psw_exec_eval(psw_exec *ex, const float *params, const psw_batch *b, float *loss,
                  uint32_t *correct, ps_errbuf *eb) {
  int rc = ex_bind(ex, params, b, NULL, eb);
  if (rc) return rc;
  rc = ex_forward(ex);
  if (!rc) rc = ex_results(ex, loss, correct);
  ex_drain(ex, &rc);
  return rc ? ps_errf(eb, rc, "graph '%s': eval on '%s' failed: %s", ex->g->pb->name,
                      ex->be->name, ps_strerror(rc))
            : 0;
}

/* ---- building ------------------------------------------------------------------- */

/* One layer's protobuf pieces, with room for their names. */
typedef struct mlp_layer {
  Ps__Graph__Param w, b;
  Ps__Graph__Node dense, act;
  uint32_t wshape[2], bshape[1];
  char wn[16], bn[16], dn[16], an[16], zn[16], hn[16];
  char *din[3], *dout[1], *ain[1], *aout[1];
} mlp_layer;

/* mlp_fill_layer sets layer I (1-based) from IN to OUT columns reading
 * value X; it writes its output name to L->hn (or "logits" when LAST). */
static void mlp_fill_layer(mlp_layer *l, int i, uint32_t in, uint32_t out, const char *x,
                           ps_gpu_act act, int last) {
  ps__graph__param__init(&l->w);
  ps__graph__param__init(&l->b);
  ps__graph__node__init(&l->dense);
  ps__graph__node__init(&l->act);
  snprintf(l->wn, sizeof l->wn, "W%d", i);
  snprintf(l->bn, sizeof l->bn, "b%d", i);
  snprintf(l->dn, sizeof l->dn, "fc%d", i);
  snprintf(l->an, sizeof l->an, "%s%d", ps_gpu_act_name(act), i);
  snprintf(l->zn, sizeof l->zn, "z%d", i);
  snprintf(l->hn, sizeof l->hn, last ? "logits" : "h%d", i);
  l->wshape[0] = in, l->wshape[1] = out, l->bshape[0] = out;
  l->w.name = l->wn, l->w.n_shape = 2, l->w.shape = l->wshape, l->w.init = "glorot", l->w.scale = 1;
  l->b.name = l->bn, l->b.n_shape = 1, l->b.shape = l->bshape, l->b.init = "zeros";
  l->din[0] = (char *)x, l->din[1] = l->wn, l->din[2] = l->bn;
  int plain = last || act == PS_GPU_ACT_NONE;
  l->dout[0] = plain ? l->hn : l->zn;
  l->dense.name = l->dn, l->dense.op = "dense", l->dense.n_inputs = 3, l->dense.inputs = l->din;
  l->dense.n_outputs = 1, l->dense.outputs = l->dout;
  l->ain[0] = l->zn, l->aout[0] = l->hn;
  l->act.name = l->an, l->act.op = (char *)ps_gpu_act_name(act);
  l->act.n_inputs = 1, l->act.inputs = l->ain, l->act.n_outputs = 1, l->act.outputs = l->aout;
}

int psw_graph_mlp_pack(const char *name, const uint32_t *layers, size_t n, ps_gpu_act act,
                       uint8_t **buf, size_t *len, ps_errbuf *eb) {
  if (n < 2 || n > 64) return ps_errf(eb, PS_EINVAL, "mlp '%s': need 2 to 64 layer widths, got %zu", name, n);
  for (size_t i = 0; i < n; i++)
    if (!layers[i]) return ps_errf(eb, PS_EINVAL, "mlp '%s': layer %zu has width 0", name, i);
  size_t nl = n - 1;
  mlp_layer *L = calloc(nl, sizeof *L);
  Ps__Graph__Param **params = calloc(2 * nl, sizeof *params);
  Ps__Graph__Node **nodes = calloc(2 * nl + 1, sizeof *nodes);
  int rc = 0;
  if (!L || !params || !nodes) {
    rc = ps_errf(eb, PS_ENOMEM, "mlp '%s': out of memory", name);
    goto free_parts;
  }
  size_t nn = 0;
  const char *x = "x";
  for (size_t i = 0; i < nl; i++) {
    int last = i + 1 == nl;
    mlp_fill_layer(&L[i], (int)i + 1, layers[i], layers[i + 1], x, act, last);
    params[2 * i] = &L[i].w, params[2 * i + 1] = &L[i].b;
    nodes[nn++] = &L[i].dense;
    if (!last && act != PS_GPU_ACT_NONE) nodes[nn++] = &L[i].act;
    x = L[i].hn;
  }
  int32_t xshape[2] = {-1, (int32_t)layers[0]}, yshape[1] = {-1};
  Ps__Graph__Input in_x = PS__GRAPH__INPUT__INIT, in_y = PS__GRAPH__INPUT__INIT;
  in_x.name = "x", in_x.n_shape = 2, in_x.shape = xshape, in_x.kind = "features";
  in_y.name = "y", in_y.n_shape = 1, in_y.shape = yshape, in_y.kind = "labels";
  Ps__Graph__Input *inputs[2] = {&in_x, &in_y};
  char *xin[2] = {"logits", "y"}, *xout[1] = {"loss"}, *metrics[1] = {"accuracy"};
  Ps__Graph__Node xent = PS__GRAPH__NODE__INIT;
  xent.name = "xent", xent.op = "softmax_xent", xent.n_inputs = 2, xent.inputs = xin;
  xent.n_outputs = 1, xent.outputs = xout;
  nodes[nn++] = &xent;
  Ps__Graph__Graph g = PS__GRAPH__GRAPH__INIT;
  g.name = (char *)name, g.n_params = 2 * nl, g.params = params, g.n_inputs = 2, g.inputs = inputs;
  g.n_nodes = nn, g.nodes = nodes, g.loss = "loss", g.n_metrics = 1, g.metrics = metrics;
  *len = ps__graph__graph__get_packed_size(&g);
  *buf = malloc(*len ? *len : 1);
  if (!*buf) rc = ps_errf(eb, PS_ENOMEM, "mlp '%s': out of memory", name);
  else ps__graph__graph__pack(&g, *buf);
free_parts:
  free(L);
  free(params);
  free(nodes);
  return rc;
}

/* psw_graph_ctr_pack: see psw_graph.h.  The MLP's layers come from
 * mlp_fill_layer (its input is the concatenation "h0"). */
int psw_graph_ctr_pack(const char *name, const psw_ctr_shape *c, uint8_t **buf, size_t *len,
                       ps_errbuf *eb) {
  if (!c->fields || !c->dim || c->dim > 65536 || !c->dense || c->nlayers > 62)
    return ps_errf(eb, PS_EINVAL, "ctr '%s': need fields >= 1, dim 1..65536, dense >= 1, at most 62 layers",
                   name);
  uint64_t in = (uint64_t)c->fields * c->dim + c->dense;
  if (in > (1u << 24)) return ps_errf(eb, PS_EINVAL, "ctr '%s': %llu MLP inputs is too many", name,
                                      (unsigned long long)in);
  for (size_t i = 0; i < c->nlayers; i++)
    if (!c->layers[i]) return ps_errf(eb, PS_EINVAL, "ctr '%s': layer %zu has width 0", name, i + 1);
  size_t nl = c->nlayers + 1;
  mlp_layer *L = calloc(nl, sizeof *L);
  Ps__Graph__Param **params = calloc(2 * nl + 1, sizeof *params);
  Ps__Graph__Node **nodes = calloc(2 * nl + 3, sizeof *nodes);
  int rc = 0;
  if (!L || !params || !nodes) {
    rc = ps_errf(eb, PS_ENOMEM, "ctr '%s': out of memory", name);
    goto free_parts;
  }
  Ps__Graph__Param emb = PS__GRAPH__PARAM__INIT;
  uint32_t eshape[1] = {c->dim};
  emb.name = "emb", emb.n_shape = 1, emb.shape = eshape, emb.init = "uniform", emb.scale = 0.05f;
  emb.sparse = 1, emb.hash_buckets = c->hash_buckets;
  params[0] = &emb;
  Ps__Graph__Attr pool = PS__GRAPH__ATTR__INIT, *pools[1] = {&pool};
  pool.name = "pooling", pool.s = c->mean ? "mean" : "sum";
  char *ein[2] = {"ids", "emb"}, *eout[1] = {"e"}, *cin[2] = {"x", "e"}, *cout[1] = {"h0"};
  Ps__Graph__Node embed = PS__GRAPH__NODE__INIT, cat = PS__GRAPH__NODE__INIT;
  embed.name = "embed", embed.op = "embedding_lookup", embed.n_inputs = 2, embed.inputs = ein;
  embed.n_outputs = 1, embed.outputs = eout, embed.n_attrs = 1, embed.attrs = pools;
  cat.name = "concat", cat.op = "concat", cat.n_inputs = 2, cat.inputs = cin;
  cat.n_outputs = 1, cat.outputs = cout;
  size_t nn = 0;
  nodes[nn++] = &embed;
  nodes[nn++] = &cat;
  const char *x = "h0";
  uint32_t width = (uint32_t)in;
  for (size_t i = 0; i < nl; i++) {
    int last = i + 1 == nl;
    uint32_t out = last ? 1 : c->layers[i];
    mlp_fill_layer(&L[i], (int)i + 1, width, out, x, PS_GPU_ACT_RELU, last);
    L[i].w.init = "glorot";
    params[1 + 2 * i] = &L[i].w, params[2 + 2 * i] = &L[i].b;
    nodes[nn++] = &L[i].dense;
    if (!last) nodes[nn++] = &L[i].act;
    x = L[i].hn;
    width = out;
  }
  int32_t xshape[2] = {-1, (int32_t)c->dense}, ishape[2] = {-1, (int32_t)c->fields}, yshape[1] = {-1};
  Ps__Graph__Input in_x = PS__GRAPH__INPUT__INIT, in_i = PS__GRAPH__INPUT__INIT,
                   in_y = PS__GRAPH__INPUT__INIT;
  in_x.name = "x", in_x.n_shape = 2, in_x.shape = xshape, in_x.kind = "features";
  in_i.name = "ids", in_i.n_shape = 2, in_i.shape = ishape, in_i.kind = "ids";
  in_y.name = "y", in_y.n_shape = 1, in_y.shape = yshape, in_y.kind = "labels";
  Ps__Graph__Input *inputs[3] = {&in_x, &in_i, &in_y};
  char *xin[2] = {"logits", "y"}, *xout[1] = {"loss"}, *metrics[2] = {"auc", "logloss"};
  Ps__Graph__Node xent = PS__GRAPH__NODE__INIT;
  xent.name = "xent", xent.op = "sigmoid_xent", xent.n_inputs = 2, xent.inputs = xin;
  xent.n_outputs = 1, xent.outputs = xout;
  nodes[nn++] = &xent;
  Ps__Graph__Graph g = PS__GRAPH__GRAPH__INIT;
  g.name = (char *)name, g.n_params = 2 * nl + 1, g.params = params, g.n_inputs = 3;
  g.inputs = inputs, g.n_nodes = nn, g.nodes = nodes, g.loss = "loss", g.n_metrics = 2;
  g.metrics = metrics;
  *len = ps__graph__graph__get_packed_size(&g);
  *buf = malloc(*len ? *len : 1);
  if (!*buf) rc = ps_errf(eb, PS_ENOMEM, "ctr '%s': out of memory", name);
  else ps__graph__graph__pack(&g, *buf);
free_parts:
  free(L);
  free(params);
  free(nodes);
  return rc;
}
