/* Tests for psw_graph: graph checks with their exact messages, the
 * executor against central finite differences of the whole graph, spec
 * round trips. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "psw_graph.h"
#include "ps_test.h"

/* ---- a small graph builder --------------------------------------------------- */

typedef struct tgraph {
  Ps__Graph__Graph g;
  Ps__Graph__Param P[8], *pp[8];
  Ps__Graph__Input I[4], *ip[4];
  Ps__Graph__Node N[12], *np[12];
  uint32_t pshape[8][2];
  int32_t ishape[4][2];
  char *nin[12][3], *nout[12][1], *metrics[1];
} tgraph;

static void tg_init(tgraph *t, const char *loss) {
  memset(t, 0, sizeof *t);
  ps__graph__graph__init(&t->g);
  t->g.name = "t";
  t->g.loss = (char *)loss;
  t->g.params = t->pp;
  t->g.inputs = t->ip;
  t->g.nodes = t->np;
}

/* tg_param adds parameter NAME of shape [r, c] ([r] when c == 0). */
static void tg_param(tgraph *t, const char *name, uint32_t r, uint32_t c) {
  size_t i = t->g.n_params++;
  Ps__Graph__Param *p = &t->P[i];
  ps__graph__param__init(p);
  p->name = (char *)name;
  t->pshape[i][0] = r, t->pshape[i][1] = c;
  p->shape = t->pshape[i];
  p->n_shape = c ? 2 : 1;
  p->init = c ? "glorot" : "zeros";
  p->scale = 1;
  t->pp[i] = p;
}

/* tg_input adds input NAME of KIND with shape [-1, cols] ([-1] when 0). */
static void tg_input(tgraph *t, const char *name, const char *kind, int32_t cols) {
  size_t i = t->g.n_inputs++;
  Ps__Graph__Input *p = &t->I[i];
  ps__graph__input__init(p);
  p->name = (char *)name;
  p->kind = (char *)kind;
  t->ishape[i][0] = -1, t->ishape[i][1] = cols;
  p->shape = t->ishape[i];
  p->n_shape = cols ? 2 : 1;
  t->ip[i] = p;
}

/* tg_node adds node NAME running OP on NIN inputs (varargs) into OUT. */
static void tg_node(tgraph *t, const char *name, const char *op, const char *out, int nin, ...) {
  size_t i = t->g.n_nodes++;
  Ps__Graph__Node *n = &t->N[i];
  ps__graph__node__init(n);
  n->name = (char *)name;
  n->op = (char *)op;
  va_list ap;
  va_start(ap, nin);
  for (int k = 0; k < nin; k++) t->nin[i][k] = va_arg(ap, char *);
  va_end(ap);
  n->n_inputs = (size_t)nin;
  n->inputs = t->nin[i];
  t->nout[i][0] = (char *)out;
  n->n_outputs = 1;
  n->outputs = t->nout[i];
  t->np[i] = n;
}

static int tg_load(tgraph *t, psw_graph **g, ps_errbuf *eb) {
  size_t len = ps__graph__graph__get_packed_size(&t->g);
  uint8_t *buf = malloc(len + 1);
  ck_assert(buf != NULL);
  ps__graph__graph__pack(&t->g, buf);
  int rc = psw_graph_load(buf, len, g, eb);
  free(buf);
  return rc;
}

/* A 2-layer tanh MLP in -> hid -> k over inputs x, y. */
static void tg_mlp(tgraph *t, int32_t in, uint32_t hid, uint32_t k) {
  tg_init(t, "loss");
  tg_param(t, "W1", (uint32_t)in, hid);
  tg_param(t, "b1", hid, 0);
  tg_param(t, "W2", hid, k);
  tg_param(t, "b2", k, 0);
  tg_input(t, "x", "features", in);
  tg_input(t, "y", "labels", 0);
  tg_node(t, "fc1", "dense", "z1", 3, "x", "W1", "b1");
  tg_node(t, "act1", "tanh", "h1", 1, "z1");
  tg_node(t, "fc2", "dense", "logits", 3, "h1", "W2", "b2");
  tg_node(t, "xent", "softmax_xent", "loss", 2, "logits", "y");
}

/* expect_error loads T and checks the code and the exact message. */
static void expect_error(tgraph *t, int code, const char *msg) {
  psw_graph *g = (psw_graph *)1;
  ps_errbuf eb = {{0}};
  ck_assert_int_eq(tg_load(t, &g, &eb), code);
  ck_assert(g == NULL);
  ck_assert_str_eq(eb.msg, msg);
}

/* ---- random numbers ------------------------------------------------------------- */


/* ---- validation ----------------------------------------------------------------- */

START_TEST(test_valid_mlp) {
  tgraph t;
  tg_mlp(&t, 6, 5, 3);
  t.metrics[0] = "accuracy";
  t.g.metrics = t.metrics;
  t.g.n_metrics = 1;
  psw_graph *g;
  ps_errbuf eb;
  ck_assert_msg(tg_load(&t, &g, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(psw_graph_nparams(g), 6 * 5 + 5 + 5 * 3 + 3);
  ck_assert_uint_eq(psw_graph_input_dim(g), 6);
  ck_assert_uint_eq(psw_graph_classes(g), 3);
  psw_graph_free(g);
  /* The packed MLP builder gives a graph that loads. */
  uint8_t *buf;
  size_t len;
  uint32_t layers[] = {784, 256, 128, 10};
  ck_assert_int_eq(psw_graph_mlp_pack("mlp", layers, 4, PS_GPU_ACT_RELU, &buf, &len, &eb), 0);
  ck_assert_msg(psw_graph_load(buf, len, &g, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(psw_graph_nparams(g), 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10);
  psw_graph_free(g);
  free(buf);
}
END_TEST

START_TEST(test_errors_ops_and_shapes) {
  tgraph t;
  tg_mlp(&t, 6, 5, 3);
  t.N[1].op = "conv";
  expect_error(&t, PS_EINVAL, "node 'act1': unknown op 'conv'");
  tg_mlp(&t, 6, 5, 3);
  t.N[1].op = "embedding";
  expect_error(&t, PS_ENOTSUP, "node 'act1': op 'embedding' is not supported yet");
  tg_mlp(&t, 6, 5, 3);
  t.pshape[2][0] = 4; /* W2 [4, 3] after a 5-wide layer */
  expect_error(&t, PS_EINVAL, "node 'fc2': input 'h1' has 5 columns but weight 'W2' has 4 rows");
  tg_mlp(&t, 6, 5, 3);
  t.pshape[1][0] = 7;
  expect_error(&t, PS_EINVAL, "node 'fc1': bias 'b1' has 7 elements but weight 'W1' has 5 columns");
  tg_mlp(&t, 6, 5, 3);
  t.N[0].n_inputs = 2;
  expect_error(&t, PS_EINVAL, "node 'fc1': op 'dense' takes 3 inputs (x, W, b), got 2");
  tg_mlp(&t, 6, 5, 3);
  t.nin[2][0] = "h2";
  expect_error(&t, PS_EINVAL, "node 'fc2': input 'h2' is not defined before this node");
  tg_mlp(&t, 6, 5, 3);
  t.nin[0][0] = "h1"; /* used before act1 defines it */
  expect_error(&t, PS_EINVAL, "node 'fc1': input 'h1' is not defined before this node");
  tg_mlp(&t, 6, 5, 3);
  t.nin[3][1] = "x";
  expect_error(&t, PS_EINVAL, "node 'xent': second input 'x' must be a labels input");
}
END_TEST

START_TEST(test_errors_params_and_loss) {
  tgraph t;
  tg_mlp(&t, 6, 5, 3);
  tg_param(&t, "W3", 3, 3);
  expect_error(&t, PS_EINVAL, "parameter 'W3' is not used by any node");
  tg_mlp(&t, 6, 5, 3);
  t.g.loss = "logits";
  expect_error(&t, PS_EINVAL, "loss 'logits' is not a scalar (its shape is [-1, 3])");
  tg_mlp(&t, 6, 5, 3);
  t.g.loss = "";
  expect_error(&t, PS_EINVAL, "graph has no loss (field 'loss' is empty)");
  tg_mlp(&t, 6, 5, 3);
  t.g.loss = "lost";
  expect_error(&t, PS_EINVAL, "loss 'lost' is not defined");
  tg_mlp(&t, 6, 5, 3);
  t.P[0].init = "bogus";
  expect_error(&t, PS_EINVAL, "parameter 'W1': unknown initializer 'bogus'");
  tg_mlp(&t, 6, 5, 3);
  t.P[3].name = "W1";
  expect_error(&t, PS_EINVAL, "params[3]: duplicate name 'W1'");
  /* what the shards refuse in the spec, refused in the file (psctl model
   * show printed these) */
  tg_mlp(&t, 6, 5, 3);
  t.P[0].scale = NAN;
  expect_error(&t, PS_EINVAL, "parameter 'W1': initializer scale nan is not a finite number up "
               "to 1e30");
  tg_mlp(&t, 6, 5, 3);
  t.pshape[0][0] = t.pshape[0][1] = 4294967295u;
  expect_error(&t, PS_EINVAL, "parameter 'W1': 18446744065119617025 elements (at most 2^40 a "
               "tensor)");
  tg_mlp(&t, 6, 5, 3);
  t.I[1].kind = "images";
  expect_error(&t, PS_EINVAL, "input 'y': unknown kind 'images' (expected features, labels, targets or ids)");
  tg_mlp(&t, 6, 5, 3);
  t.metrics[0] = "f1";
  t.g.metrics = t.metrics;
  t.g.n_metrics = 1;
  expect_error(&t, PS_EINVAL, "unknown metric 'f1' (expected accuracy, auc or logloss)");
}
END_TEST

/* Parameter names are file names in psctl export's archive: no control
 * character, no empty, "." or ".." part (a name could climb out of the
 * directory the archive is unpacked into), and, as every string of the
 * file, no NUL (protobuf-c cut "WX1" with a NUL for X to "W", and the
 * model was submitted so) and no bad UTF-8. */
START_TEST(test_errors_names) {
  static const struct { const char *name, *msg; } bad[] = {
      {"../W1", "parameter name '../W1': an empty, '.' or '..' part (it names a file in psctl "
                "export's archive)"},
      {"/tmp/W1", "parameter name '/tmp/W1': an empty, '.' or '..' part (it names a file in "
                  "psctl export's archive)"},
      {"a//W1", "parameter name 'a//W1': an empty, '.' or '..' part (it names a file in psctl "
                "export's archive)"},
      {"a/./W1", "parameter name 'a/./W1': an empty, '.' or '..' part (it names a file in "
                 "psctl export's archive)"},
      {"W1/", "parameter name 'W1/': an empty, '.' or '..' part (it names a file in psctl "
              "export's archive)"},
      {"W\x1b[1m", "parameter name holds a control character (byte 1)"},
  };
  tgraph t;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tg_mlp(&t, 6, 5, 3);
    t.P[0].name = (char *)bad[i].name;
    t.nin[0][1] = (char *)bad[i].name;
    expect_error(&t, PS_EINVAL, bad[i].msg);
  }
  /* Control characters in the graph's other strings: names that psctl
   * model show and the error messages print (a terminal's escape codes,
   * a newline forging a line) */
  static const struct { int where; const char *msg; } ctl[] = {
      {0, "graph name holds a control character (byte 1)"},
      {1, "input 1 name holds a control character (byte 1)"},
      {2, "node 2 name holds a control character (byte 1)"},
      {3, "node 2 output 1 holds a control character (byte 1)"},
      {4, "node 1 op holds a control character (byte 1)"},
      {5, "loss holds a control character (byte 1)"},
  };
  for (size_t i = 0; i < sizeof ctl / sizeof ctl[0]; i++) {
    tg_mlp(&t, 6, 5, 3);
    char *bad = "g\x1b[2J\n";
    switch (ctl[i].where) {
      case 0: t.g.name = bad; break;
      case 1: t.I[0].name = t.nin[0][0] = bad; break;
      case 2: t.N[1].name = bad; break;
      case 3: t.nout[1][0] = t.nin[2][0] = bad; break;
      case 4: t.N[0].op = bad; break;
      case 5: t.g.loss = bad; break;
    }
    expect_error(&t, PS_EINVAL, ctl[i].msg);
  }
  tg_mlp(&t, 6, 5, 3);
  t.P[0].name = t.nin[0][1] = "layer.1/W";
  psw_graph *g = NULL;
  ps_errbuf eb = {{0}};
  ck_assert_msg(tg_load(&t, &g, &eb) == 0, "%s", eb.msg);
  psw_graph_free(g);
  /* a NUL and a byte that is not UTF-8, patched into the packed file */
  for (int k = 0; k < 2; k++) {
    tg_mlp(&t, 6, 5, 3);
    t.P[0].name = t.nin[0][1] = "WX1";
    size_t len = ps__graph__graph__get_packed_size(&t.g);
    uint8_t *buf = malloc(len);
    ck_assert_ptr_nonnull(buf);
    ps__graph__graph__pack(&t.g, buf);
    for (size_t i = 0; i + 3 <= len; i++)
      if (!memcmp(buf + i, "WX1", 3)) buf[i + 1] = k ? 0xff : 0;
    g = NULL;
    ck_assert_int_eq(psw_graph_load(buf, len, &g, &eb), PS_EINVAL);
    ck_assert_ptr_null(g);
    ck_assert_msg(strstr(eb.msg, "is not valid UTF-8 or holds a NUL byte"), "%s", eb.msg);
    free(buf);
  }
}
END_TEST

/* Found by tests/fuzz/fuzz_graph: a field numbered 0, spelled 80 00,
 * passed protobuf-c's unpack and the graph checks, but the graph that
 * psw_graph_to_spec packs from it (00 00) no longer unpacks, so workers
 * could not load the submitted model.  Refused at load, at any depth. */
START_TEST(test_errors_field_zero) {
  uint32_t layers[] = {4, 3, 2};
  uint8_t *mlp;
  size_t len;
  ps_errbuf eb;
  ck_assert_int_eq(psw_graph_mlp_pack("m", layers, 3, PS_GPU_ACT_RELU, &mlp, &len, &eb), 0);
  /* At the top, and inside a Param appended as field 2 (params). */
  static const uint8_t top[] = {0x80, 0x00, 0x00};
  static const uint8_t param[] = {0x12, 0x09, 0x0a, 0x01, 'Z', 0x12, 0x01, 0x01, 0x80, 0x00, 0x00};
  const struct { const uint8_t *pre, *post; size_t npre, npost; const char *want; } cases[] = {
      {top, NULL, sizeof top, 0, "a 'ps.graph.Graph' has a field numbered 0 (not valid protobuf)"},
      {NULL, param, 0, sizeof param, "a 'ps.graph.Param' has a field numbered 0 (not valid protobuf)"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint8_t buf[1024];
    size_t n = 0;
    if (cases[i].npre) memcpy(buf + n, cases[i].pre, cases[i].npre), n += cases[i].npre;
    memcpy(buf + n, mlp, len), n += len;
    if (cases[i].npost) memcpy(buf + n, cases[i].post, cases[i].npost), n += cases[i].npost;
    psw_graph *g = NULL;
    ck_assert_int_eq(psw_graph_load(buf, n, &g, &eb), PS_EFORMAT);
    ck_assert_str_eq(eb.msg, cases[i].want);
    ck_assert_ptr_null(g);
  }
  /* An unknown field of another number is ignored and survives to_spec. */
  uint8_t buf[1024] = {0x40, 0x05};
  memcpy(buf + 2, mlp, len);
  psw_graph *g, *g2;
  Ps__ModelSpec *spec;
  ck_assert_msg(psw_graph_load(buf, len + 2, &g, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(psw_graph_to_spec(g, "m", &spec, &eb), 0);
  ck_assert_msg(psw_graph_from_spec(spec, &g2, &eb) == 0, "%s", eb.msg);
  psw_graph_free(g2);
  psw_graph_spec_free(spec);
  psw_graph_free(g);
  free(mlp);
}
END_TEST

/* An empty file (a failed download, `touch`): said so, not "graph has
 * no features input" (0 bytes unpack as a graph with nothing in it). */
START_TEST(test_errors_empty_file) {
  char path[512];
  snprintf(path, sizeof path, "%s/empty.pb", ps_test_tmpdir());
  FILE *f = fopen(path, "wb");
  ck_assert(f != NULL);
  ck_assert_int_eq(fclose(f), 0);
  psw_graph *g = (psw_graph *)1;
  ps_errbuf eb;
  ck_assert_int_eq(psw_graph_load_file(path, &g, &eb), PS_EFORMAT);
  ck_assert(g == NULL);
  char want[700];
  snprintf(want, sizeof want, "%s: the file is empty (0 bytes), not a graph", path);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_int_eq(psw_graph_load("", 0, &g, &eb), PS_EFORMAT);
  ck_assert_str_eq(eb.msg, "empty graph (0 bytes)");
  /* A FIFO nobody writes to (`psctl model show FIFO`): read as empty, as
   * the cluster file is, not an open that blocks forever. */
  snprintf(path, sizeof path, "%s/fifo.pb", ps_test_tmpdir());
  ck_assert_int_eq(mkfifo(path, 0600), 0);
  ck_assert_int_eq(psw_graph_load_file(path, &g, &eb), PS_EFORMAT);
  snprintf(want, sizeof want, "%s: the file is empty (0 bytes), not a graph", path);
  ck_assert_str_eq(eb.msg, want);
}
END_TEST

START_TEST(test_errors_truncated_file) {
  tgraph t;
  tg_mlp(&t, 6, 5, 3);
  size_t len = ps__graph__graph__get_packed_size(&t.g);
  uint8_t *buf = malloc(len);
  ps__graph__graph__pack(&t.g, buf);
  const char *dir = ps_test_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/cut.pb", dir);
  FILE *f = fopen(path, "wb");
  ck_assert(f != NULL);
  /* Cut in the middle of the last node (nodes are field 4, after the
   * params and inputs; the loss, field 5, is written last). */
  size_t cut = len - 12;
  ck_assert_uint_eq(fwrite(buf, 1, cut, f), cut);
  fclose(f);
  psw_graph *g;
  ps_errbuf eb;
  ck_assert_int_eq(psw_graph_load_file(path, &g, &eb), PS_EFORMAT);
  char want[700];
  /* Find where the last node field starts to know the byte offset. */
  size_t at = 0, p = 0;
  while (p < len) {
    at = p;
    uint8_t key = buf[p++];
    size_t n = 0;
    for (int shift = 0;; shift += 7) {
      n |= (size_t)(buf[p] & 0x7f) << shift;
      if (!(buf[p++] & 0x80)) break;
    }
    if ((key >> 3) == 4 && p + n > cut) break;
    p += n;
  }
  snprintf(want, sizeof want, "%s: field 'nodes' (#4) at byte %zu is truncated or malformed", path, at);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_int_eq(psw_graph_load_file("/nonexistent/x.pb", &g, &eb), PS_ENOENT);
  ck_assert_str_eq(eb.msg, "/nonexistent/x.pb: No such file or directory");
  free(buf);
}
END_TEST

/* ---- executor ------------------------------------------------------------------- */

struct gctx {
  psw_exec *ex;
  float *params;
  psw_batch b;
};

static double graph_loss(void *p) {
  struct gctx *c = p;
  float loss;
  uint32_t correct;
  ps_errbuf eb;
  ck_assert_msg(psw_exec_eval(c->ex, c->params, &c->b, &loss, &correct, &eb) == 0, "%s", eb.msg);
  return loss;
}

/* grad_check compares every gradient of T's graph with central finite
 * differences of the mean loss (h = 1e-2 in float; the loss in float is
 * accurate to ~1e-7, so the difference quotient to ~1e-5). */
static void grad_check(tgraph *t, uint32_t n, uint32_t in, uint32_t k, int targets) {
  psw_graph *g;
  ps_gpu_backend *be;
  ps_errbuf eb;
  ck_assert_msg(tg_load(t, &g, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_gpu_open("cpu", &be, &eb), 0);
  struct gctx c;
  ck_assert_msg(psw_exec_create(g, be, n + 3, &c.ex, &eb) == 0, "%s", eb.msg);
  uint64_t np = psw_graph_nparams(g);
  c.params = malloc(np * sizeof(float));
  float *grads = malloc(np * sizeof(float)), *x = malloc(n * in * sizeof(float));
  float *tg = malloc(n * k * sizeof(float));
  int32_t *y = malloc(n * sizeof(int32_t));
  ck_assert_int_eq(psw_graph_init_params(g, ps_test_seed, c.params), 0);
  for (uint64_t i = 0; i < np; i++) c.params[i] += 0.3f * ps_test_rnd(); /* biases not zero */
  for (uint32_t i = 0; i < n * in; i++) x[i] = ps_test_rnd();
  for (uint32_t i = 0; i < n * k; i++) tg[i] = ps_test_rnd();
  for (uint32_t i = 0; i < n; i++) y[i] = (int32_t)((ps_test_rnd() + 1) / 2 * k) % (int32_t)k;
  c.b = (psw_batch){n, x, targets ? NULL : y, targets ? tg : NULL, NULL};
  float loss, loss2;
  uint32_t correct, correct2;
  for (uint64_t i = 0; i < np; i++) grads[i] = NAN;
  ck_assert_msg(psw_exec_step(c.ex, c.params, &c.b, grads, &loss, &correct, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_exec_eval(c.ex, c.params, &c.b, &loss2, &correct2, &eb) == 0, "%s", eb.msg);
  ck_assert_float_eq(loss, loss2);
  ck_assert_uint_eq(correct, correct2);
  ck_assert(isfinite(loss) && loss > 0);
  for (uint64_t i = 0; i < np; i++) {
    float p0 = c.params[i];
    const float h = 1e-2f;
    c.params[i] = p0 + h;
    double lp = graph_loss(&c), hp = (double)c.params[i] - p0;
    c.params[i] = p0 - h;
    double lm = graph_loss(&c), hm = p0 - (double)c.params[i];
    c.params[i] = p0;
    double fd = (lp - lm) / (hp + hm);
    ck_assert_msg(fabs(fd - grads[i]) <= 2e-4 + 1e-2 * fabs(fd),
                  "param element %llu: finite difference %.7g, backward %.7g (seed %llu)",
                  (unsigned long long)i, fd, grads[i], (unsigned long long)ps_test_seed);
  }
  /* The same step through the executor's separate-memory path (what a
   * GPU takes: parameters uploaded layer by layer on the copy stream,
   * gradients downloaded as each is final), on the CPU backend made to
   * look non-unified: every gradient arrives, bit for bit. */
  be->unified = 0;
  psw_exec *ex2;
  ck_assert_msg(psw_exec_create(g, be, n + 3, &ex2, &eb) == 0, "%s", eb.msg);
  float *grads2 = malloc(np * sizeof(float));
  for (uint64_t i = 0; i < np; i++) grads2[i] = NAN;
  ck_assert_msg(psw_exec_step(ex2, c.params, &c.b, grads2, &loss2, &correct2, &eb) == 0, "%s",
                eb.msg);
  ck_assert_float_eq(loss, loss2);
  ck_assert_uint_eq(correct, correct2);
  ck_assert_int_eq(memcmp(grads, grads2, np * sizeof(float)), 0);
  ck_assert_msg(psw_exec_eval(ex2, c.params, &c.b, &loss2, &correct2, &eb) == 0, "%s", eb.msg);
  ck_assert_float_eq(loss, loss2);
  psw_exec_free(ex2);
  be->unified = 1;
  free(grads2);
  free(c.params), free(grads), free(x), free(tg), free(y);
  psw_exec_free(c.ex);
  ps_gpu_close(be);
  psw_graph_free(g);
}

START_TEST(test_graph_gradient_xent) {
  tgraph t;
  tg_mlp(&t, 6, 5, 4);
  grad_check(&t, 7, 6, 4, 0);
}
END_TEST

START_TEST(test_graph_gradient_shared_weights_mse) {
  /* x -> dense(W, b) -> sigmoid -> dense(W, b) -> mse: W and b are used
   * twice, so their gradients accumulate; the sigmoid is fused. */
  tgraph t;
  tg_init(&t, "loss");
  tg_param(&t, "W", 4, 4);
  tg_param(&t, "b", 4, 0);
  tg_input(&t, "x", "features", 4);
  tg_input(&t, "t", "targets", 4);
  tg_node(&t, "fc1", "dense", "z1", 3, "x", "W", "b");
  tg_node(&t, "s1", "sigmoid", "h1", 1, "z1");
  tg_node(&t, "fc2", "dense", "z2", 3, "h1", "W", "b");
  tg_node(&t, "t2", "tanh", "h2", 1, "z2");
  tg_node(&t, "t3", "tanh", "h3", 1, "h2");
  tg_node(&t, "l", "mse", "loss", 2, "h3", "t");
  grad_check(&t, 5, 4, 4, 1);
}
END_TEST

START_TEST(test_exec_batches_and_spec) {
  uint32_t layers[] = {6, 5, 3};
  uint8_t *buf;
  size_t len;
  ps_errbuf eb;
  psw_graph *g, *g2;
  ps_gpu_backend *be;
  ck_assert_int_eq(psw_graph_mlp_pack("m", layers, 3, PS_GPU_ACT_RELU, &buf, &len, &eb), 0);
  ck_assert_int_eq(psw_graph_load(buf, len, &g, &eb), 0);
  free(buf);
  ck_assert_int_eq(ps_gpu_open("cpu", &be, &eb), 0);
  psw_exec *ex;
  ck_assert_int_eq(psw_exec_create(g, be, 4, &ex, &eb), 0);
  float params[64], grads[64], x[5 * 6] = {0}, loss;
  uint32_t correct;
  int32_t y[5] = {0, 1, 2, 1, 0};
  ck_assert_int_eq(psw_graph_init_params(g, 1, params), 0);
  psw_batch b = {5, x, y, NULL, NULL};
  ck_assert_int_eq(psw_exec_step(ex, params, &b, grads, &loss, &correct, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "batch of 5 rows (expected 1..4)");
  b.n = 4;
  y[2] = 3;
  ck_assert_int_eq(psw_exec_eval(ex, params, &b, &loss, &correct, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "label 3 of row 2 is not a class id in [0, 3)");
  /* Spec round trip: same tensors, graph loads back. */
  Ps__ModelSpec *spec;
  ck_assert_int_eq(psw_graph_to_spec(g, "mnist", &spec, &eb), 0);
  ck_assert_str_eq(spec->name, "mnist");
  ck_assert_uint_eq(spec->n_tensors, 4);
  ck_assert_str_eq(spec->tensors[2]->name, "W2");
  ck_assert_uint_eq(spec->tensors[2]->shape[0], 5);
  ck_assert_int_eq(psw_graph_from_spec(spec, &g2, &eb), 0);
  ck_assert_uint_eq(psw_graph_nparams(g2), psw_graph_nparams(g));
  psw_graph_free(g2);
  spec->tensors[1]->name = "bias";
  ck_assert_int_eq(psw_graph_from_spec(spec, &g2, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "model 'mnist': tensor 1 'bias' does not match graph parameter 'b1'");
  psw_graph_spec_free(spec);
  psw_exec_free(ex);
  ps_gpu_close(be);
  psw_graph_free(g);
}
END_TEST

Suite *psw_graph_suite(void) {
  Suite *s = suite_create("psw_graph");
  TCase *tc = tcase_create("graph");
  tcase_add_unchecked_fixture(tc, ps_test_rng_init, NULL);
  tcase_add_test(tc, test_valid_mlp);
  tcase_add_test(tc, test_errors_ops_and_shapes);
  tcase_add_test(tc, test_errors_params_and_loss);
  tcase_add_test(tc, test_errors_truncated_file);
  tcase_add_test(tc, test_errors_empty_file);
  tcase_add_test(tc, test_errors_field_zero);
  tcase_add_test(tc, test_errors_names);
  tcase_add_test(tc, test_graph_gradient_xent);
  tcase_add_test(tc, test_graph_gradient_shared_weights_mse);
  tcase_add_test(tc, test_exec_batches_and_spec);
  suite_add_tcase(s, tc);
  return s;
}
