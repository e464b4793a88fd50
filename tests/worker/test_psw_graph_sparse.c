/* Tests for the sparse parts of psw_graph: the click-through model of
 * psw_graph_ctr_pack (embedding_lookup over multi-valued fields, concat,
 * sigmoid_xent) differentiated against central finite differences in
 * the dense parameters and in the rows of the table slice, with sum and
 * mean pooling; the separate-memory path (what a GPU takes) giving the
 * same gradients bit for bit; bad batches and bad graphs refused with
 * clear messages; the auc and logloss metrics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_test.h"
#include "psw_embed.h"
#include "psw_graph.h"
#include "psw_metric.h"

enum { NS = 6, NF = 3, ND = 4, NX = 2 };

/* A batch of NS samples: dense features, 0..3 ids per field out of 7. */
typedef struct ctr_case {
  psw_graph *g;
  psw_exec *ex;
  psw_embed *pe;
  psw_sparse_batch sp;
  psw_batch b;
  float *params, *rows, x[NS * NX];
  int32_t y[NS];
  uint32_t off[NS * NF + 1], nrows;
  uint64_t keys[NS * NF * 3];
} ctr_case;

static void ctr_setup(ctr_case *c, ps_gpu_backend *be, const uint32_t *layers, size_t nl, int mean) {
  ps_errbuf eb;
  psw_ctr_shape sh = {NF, ND, NX, layers, nl, 0, mean};
  uint8_t *buf;
  size_t len;
  ck_assert_msg(psw_graph_ctr_pack("t", &sh, &buf, &len, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_graph_load(buf, len, &c->g, &eb) == 0, "%s", eb.msg);
  free(buf);
  uint32_t param, fields, dim;
  ck_assert_int_eq(psw_graph_embedding(c->g, &param, &fields, &dim, NULL), 0);
  ck_assert(param == 0 && fields == NF && dim == ND);
  ck_assert_uint_eq(psw_graph_classes(c->g), 2);
  ck_assert_msg(psw_exec_create(c->g, be, NS, &c->ex, &eb) == 0, "%s", eb.msg);
  uint64_t np = psw_graph_nparams(c->g);
  c->params = malloc(np * sizeof(float));
  ck_assert_int_eq(psw_graph_init_params(c->g, ps_test_seed, c->params), 0);
  for (uint64_t i = 0; i < np; i++) c->params[i] += 0.3f * ps_test_rnd();
  for (int i = 0; i < NS * NX; i++) c->x[i] = ps_test_rnd();
  for (int i = 0; i < NS; i++) c->y[i] = i % 2;
  c->off[0] = 0;
  for (int b = 0; b < NS * NF; b++) {
    uint32_t len2 = (uint32_t)(b * 7 % 4);
    c->off[b + 1] = c->off[b] + len2;
    for (uint32_t k = c->off[b]; k < c->off[b + 1]; k++) c->keys[k] = (uint64_t)((b + k) % 7) << 40;
  }
  ck_assert_int_eq(psw_embed_create(&c->pe), 0);
  ck_assert_msg(psw_embed_build(c->pe, NS * NF, c->off, c->keys, mean, &eb) == 0, "%s", eb.msg);
  psw_embed_bags(c->pe, &c->sp.bags);
  psw_embed_keys(c->pe, &c->nrows);
  c->rows = malloc((size_t)c->nrows * ND * sizeof(float));
  for (uint32_t i = 0; i < c->nrows * ND; i++) c->rows[i] = ps_test_rnd();
  c->sp.rows = c->rows;
  c->sp.row_grads = malloc((size_t)c->nrows * ND * sizeof(float));
  c->b = (psw_batch){NS, c->x, c->y, NULL, &c->sp};
}

static void ctr_teardown(ctr_case *c) {
  free(c->params);
  free(c->rows);
  free(c->sp.row_grads);
  psw_embed_free(c->pe);
  psw_exec_free(c->ex);
  psw_graph_free(c->g);
}

static double ctr_loss(ctr_case *c) {
  float loss;
  uint32_t correct;
  ps_errbuf eb;
  ck_assert_msg(psw_exec_eval(c->ex, c->params, &c->b, &loss, &correct, &eb) == 0, "%s", eb.msg);
  return loss;
}

/* fd_one checks the gradient G of element *V by central differences. */
static void fd_one(ctr_case *c, float *v, float g, const char *what, size_t i) {
  float v0 = *v;
  const float h = 1e-2f;
  *v = v0 + h;
  double lp = ctr_loss(c), hp = (double)*v - v0;
  *v = v0 - h;
  double lm = ctr_loss(c), hm = v0 - (double)*v;
  *v = v0;
  double fd = (lp - lm) / (hp + hm);
  ck_assert_msg(fabs(fd - g) <= 2e-4 + 1e-2 * fabs(fd),
                "%s element %zu: finite difference %.7g, backward %.7g (seed %llu)", what, i, fd, g,
                (unsigned long long)ps_test_seed);
}

/* No hidden layer (no relu kink near a perturbation): logistic regression
 * over the dense features and the pooled embeddings. */
START_TEST(test_ctr_gradients) {
  ps_gpu_backend *be;
  ps_errbuf eb;
  ck_assert_int_eq(ps_gpu_open("cpu", &be, &eb), 0);
  for (int mean = 0; mean < 2; mean++) {
    ctr_case c;
    ctr_setup(&c, be, NULL, 0, mean);
    uint64_t np = psw_graph_nparams(c.g);
    float *grads = malloc(np * sizeof(float)), loss;
    uint32_t correct;
    ck_assert_msg(psw_exec_step(c.ex, c.params, &c.b, grads, &loss, &correct, &eb) == 0, "%s", eb.msg);
    ck_assert(isfinite(loss) && loss > 0);
    float *rg = malloc((size_t)c.nrows * ND * sizeof(float));
    memcpy(rg, c.sp.row_grads, (size_t)c.nrows * ND * sizeof(float));
    /* the probabilities behind auc and logloss: the loss is their logloss */
    float p[NS];
    ck_assert_int_eq(psw_exec_probs(c.ex, p), 0);
    ck_assert_msg(fabs(psw_metric_logloss(p, c.y, NS) - loss) < 1e-5, "logloss %g, loss %g",
                  psw_metric_logloss(p, c.y, NS), loss);
    for (uint64_t i = 0; i < np; i++) fd_one(&c, &c.params[i], grads[i], "dense", i);
    for (uint32_t i = 0; i < c.nrows * ND; i++) fd_one(&c, &c.rows[i], rg[i], "row", i);
    free(grads);
    free(rg);
    ctr_teardown(&c);
  }
  ps_gpu_close(be);
}
END_TEST

/* With hidden layers, the separate-memory path (rows and index uploaded,
 * row gradients downloaded) gives the unified path's results bit for
 * bit; a step into poisoned gradient buffers leaves none unwritten. */
START_TEST(test_ctr_separate_memory) {
  ps_gpu_backend *be;
  ps_errbuf eb;
  ck_assert_int_eq(ps_gpu_open("cpu", &be, &eb), 0);
  static const uint32_t layers[] = {5, 3};
  ctr_case c;
  ctr_setup(&c, be, layers, 2, 0);
  uint64_t np = psw_graph_nparams(c.g);
  size_t nr = (size_t)c.nrows * ND;
  float *g1 = malloc(np * sizeof(float)), *g2 = malloc(np * sizeof(float));
  float *r1 = malloc(nr * sizeof(float)), l1, l2;
  uint32_t c1, c2;
  ck_assert_msg(psw_exec_step(c.ex, c.params, &c.b, g1, &l1, &c1, &eb) == 0, "%s", eb.msg);
  memcpy(r1, c.sp.row_grads, nr * sizeof(float));
  be->unified = 0;
  psw_exec *ex2;
  ck_assert_msg(psw_exec_create(c.g, be, NS, &ex2, &eb) == 0, "%s", eb.msg);
  for (uint64_t i = 0; i < np; i++) g2[i] = NAN;
  for (size_t i = 0; i < nr; i++) c.sp.row_grads[i] = NAN;
  ck_assert_msg(psw_exec_step(ex2, c.params, &c.b, g2, &l2, &c2, &eb) == 0, "%s", eb.msg);
  ck_assert_float_eq(l1, l2);
  ck_assert_int_eq(memcmp(g1, g2, np * sizeof(float)), 0);
  ck_assert_int_eq(memcmp(r1, c.sp.row_grads, nr * sizeof(float)), 0);
  psw_exec_free(ex2);
  be->unified = 1;
  free(g1), free(g2), free(r1);
  ctr_teardown(&c);
  ps_gpu_close(be);
}
END_TEST

START_TEST(test_ctr_bad_batches) {
  ps_gpu_backend *be;
  ps_errbuf eb;
  ck_assert_int_eq(ps_gpu_open("cpu", &be, &eb), 0);
  ctr_case c;
  ctr_setup(&c, be, NULL, 0, 0);
  float grads[64], loss;
  uint32_t correct;
  psw_batch b = c.b;
  b.sparse = NULL;
  ck_assert_int_eq(psw_exec_step(c.ex, c.params, &b, grads, &loss, &correct, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "batch lacks the ids of input 'ids'");
  b = c.b;
  b.n = NS - 1;
  ck_assert_int_eq(psw_exec_step(c.ex, c.params, &b, grads, &loss, &correct, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "batch of 5 rows has 18 bags of ids (expected 3 fields per row)");
  psw_sparse_batch bad = c.sp;
  int32_t slots[NS * NF * 3];
  memcpy(slots, bad.bags.bag_slot, bad.bags.nnz * sizeof(int32_t));
  slots[0] = (int32_t)c.nrows; /* a slot past the table slice */
  bad.bags.bag_slot = slots;
  b = c.b;
  b.sparse = &bad;
  ck_assert_int_eq(psw_exec_step(c.ex, c.params, &b, grads, &loss, &correct, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "batch: inconsistent embedding index (see ps_gpu_bags)");
  int32_t y[NS] = {0, 1, 2, 0, 1, 0};
  b = c.b;
  b.labels = y;
  ck_assert_int_eq(psw_exec_step(c.ex, c.params, &b, grads, &loss, &correct, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "label 2 of row 2 is not a class id in [0, 2)");
  ctr_teardown(&c);
  ps_gpu_close(be);
}
END_TEST

/* Graphs that misuse the sparse kinds are refused by name. */
START_TEST(test_ctr_bad_graphs) {
  ps_errbuf eb;
  psw_ctr_shape sh = {NF, ND, NX, NULL, 0, 0, 0};
  uint8_t *buf;
  size_t len;
  ck_assert_int_eq(psw_graph_ctr_pack("t", &sh, &buf, &len, &eb), 0);
  Ps__Graph__Graph *pb = ps__graph__graph__unpack(NULL, len, buf);
  free(buf);
  ck_assert(pb != NULL);
  psw_graph *g;
#define TRY(msg_)                                                               \
  do {                                                                          \
    size_t n_ = ps__graph__graph__get_packed_size(pb);                          \
    uint8_t *b_ = malloc(n_);                                                   \
    ps__graph__graph__pack(pb, b_);                                             \
    int rc_ = psw_graph_load(b_, n_, &g, &eb);                                  \
    free(b_);                                                                   \
    ck_assert_int_eq(rc_, PS_EINVAL);                                           \
    ck_assert_str_eq(eb.msg, msg_);                                             \
  } while (0)
  /* a table of two dimensions */
  uint32_t shape2[2] = {4, 4}, *shape1 = pb->params[0]->shape;
  pb->params[0]->shape = shape2, pb->params[0]->n_shape = 2;
  TRY("embedding table 'emb': shape must be [dim] with dim 1..65536");
  pb->params[0]->shape = shape1, pb->params[0]->n_shape = 1;
  /* bad pooling */
  char *mean0 = pb->nodes[0]->attrs[0]->s;
  pb->nodes[0]->attrs[0]->s = "max";
  TRY("node 'embed': pooling 'max' (expected sum or mean)");
  pb->nodes[0]->attrs[0]->s = mean0;
  /* embedding_lookup over the features, and a dense layer over the table */
  char *in0 = pb->nodes[0]->inputs[0];
  pb->nodes[0]->inputs[0] = "x";
  TRY("node 'embed': first input 'x' must be an ids input");
  pb->nodes[0]->inputs[0] = in0;
  char *w = pb->nodes[2]->inputs[1];
  pb->nodes[2]->inputs[1] = "emb";
  TRY("node 'fc1': weight 'emb' and bias 'b1' must be dense parameters");
  pb->nodes[2]->inputs[1] = w;
  /* the ids input where rows are wanted */
  char *cin = pb->nodes[1]->inputs[0];
  pb->nodes[1]->inputs[0] = "ids";
  TRY("node 'concat': input 'ids' must be a batch of rows, not ids [-1, 3]");
  pb->nodes[1]->inputs[0] = cin;
  /* hash_buckets on a dense parameter */
  pb->params[1]->hash_buckets = 10;
  TRY("parameter 'W1': hash_buckets is for embedding tables");
  pb->params[1]->hash_buckets = 0;
  /* a dense parameter named as psctl export names the table's keys
   * (export then failed for good: duplicate member 'emb.keys') */
  char *w1 = pb->params[1]->name;
  pb->params[1]->name = pb->nodes[2]->inputs[1] = "emb.keys";
  TRY("parameter 'emb.keys': psctl export names embedding table 'emb' 'emb.keys' in its "
      "archive");
  pb->params[1]->name = w1;
  pb->nodes[2]->inputs[1] = w;
  /* a softmax over the single logit */
  char *op = pb->nodes[pb->n_nodes - 1]->op;
  pb->nodes[pb->n_nodes - 1]->op = "softmax_xent";
  TRY("node 'xent': logits 'logits' need at least 2 columns");
  pb->nodes[pb->n_nodes - 1]->op = op;
  /* and the untouched graph loads */
  size_t n = ps__graph__graph__get_packed_size(pb);
  uint8_t *b = malloc(n);
  ps__graph__graph__pack(pb, b);
  ck_assert_msg(psw_graph_load(b, n, &g, &eb) == 0, "%s", eb.msg);
  psw_graph_free(g);
  free(b);
  ps__graph__graph__free_unpacked(pb, NULL);
#undef TRY
}
END_TEST

START_TEST(test_metrics) {
  const float p[6] = {0.9f, 0.8f, 0.3f, 0.3f, 0.2f, 0.1f};
  const int32_t y[6] = {1, 0, 1, 0, 0, 0};
  /* positives at 0.9 and 0.3: pairs above 4 + 2.5 of 8 */
  ck_assert(fabs(psw_metric_auc(p, y, 6) - (4 + 2.5) / 8) < 1e-12);
  const int32_t none[2] = {1, 1};
  ck_assert(isnan(psw_metric_auc(p, none, 2)));
  double want = -(log(0.9) + log(0.2) + log(0.3) + log(0.7) + log(0.8) + log(0.9)) / 6;
  ck_assert(fabs(psw_metric_logloss(p, y, 6) - want) < 1e-6);
  const float zero[1] = {0};
  ck_assert(fabs(psw_metric_logloss(zero, none, 1) - -log(1e-7)) < 1e-3);
}
END_TEST

Suite *psw_graph_sparse_suite(void) {
  Suite *s = suite_create("psw_graph_sparse");
  TCase *tc = tcase_create("ctr");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_ctr_gradients);
  tcase_add_test(tc, test_ctr_separate_memory);
  tcase_add_test(tc, test_ctr_bad_batches);
  tcase_add_test(tc, test_ctr_bad_graphs);
  tcase_add_test(tc, test_metrics);
  suite_add_tcase(s, tc);
  return s;
}
