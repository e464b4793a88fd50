/* Tests for sparse tables on the gRPC plane (psd_shard_sparse, SparsePull
 * and SparsePush): two real shards with a memory budget of 8 rows per
 * table, the click-through model of psw_graph_ctr_pack submitted to both;
 * rows of keys routed by ps_place_row_map come back as the deterministic
 * initializer made them, an SGD push moves them, bad requests (a key of
 * the other shard, an unknown table, rows that disagree with the keys, a
 * NaN gradient, a worker outside the cluster) are refused with no row
 * changed, and a shard stopped with SIGTERM and started again serves the
 * same rows (flushed at shutdown, most of them evicted to RocksDB). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_place.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "psw_ctr.h"
#include "psw_embed.h"
#include "psw_graph.h"
#include "psw_metric.h"
#include "psw_sparse.h"

enum { DIM = 4, NKEYS = 40 };

typedef struct sp_cluster {
  char dir[512], log[600];
  const char *yaml;
  int gp[2], cp[2];
  pid_t pids[2];
  ps_rpc *r[2];
  uint64_t seed;
} sp_cluster;

static void sp_open(sp_cluster *c, int s) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", c->gp[s]);
  ps_errbuf eb;
  ck_assert_msg(ps_test_rpc_open(&c->r[s], addr, &eb) == 0, "%s", eb.msg);
}

/* sp_pull pulls KEYS (N) of table 0 from shard S into ROWS; returns the
 * call's code (message in EB). */
static int sp_pull(sp_cluster *c, int s, const uint64_t *keys, size_t n, float *rows, ps_errbuf *eb) {
  Ps__SparsePullRequest q = PS__SPARSE_PULL_REQUEST__INIT;
  q.model = "ctr", q.table = 0, q.keys = (uint64_t *)keys, q.n_keys = n, q.worker = 1;
  Ps__SparsePullReply *rep = NULL;
  int rc = ps_rpc_call(c->r[s], "/ps.Ps/SparsePull", &q.base, &ps__sparse_pull_reply__descriptor,
                       (ProtobufCMessage **)&rep, 10000, eb);
  if (rc) return rc;
  ck_assert_uint_eq(rep->rows.len, n * DIM * sizeof(float));
  memcpy(rows, rep->rows.data, rep->rows.len);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return 0;
}

static int sp_push(sp_cluster *c, int s, uint32_t table, const uint64_t *keys, size_t n,
                   const float *g, size_t nbytes, uint32_t worker, ps_errbuf *eb) {
  Ps__SparsePushRequest q = PS__SPARSE_PUSH_REQUEST__INIT;
  q.model = "ctr", q.table = table, q.keys = (uint64_t *)keys, q.n_keys = n, q.worker = worker;
  q.rows.data = (uint8_t *)g, q.rows.len = nbytes;
  Ps__SparsePushReply *rep = NULL;
  int rc = ps_rpc_call(c->r[s], "/ps.Ps/SparsePush", &q.base, &ps__sparse_push_reply__descriptor,
                       (ProtobufCMessage **)&rep, 10000, eb);
  if (!rc) protobuf_c_message_free_unpacked(&rep->base, NULL);
  return rc;
}

static void sp_wait_up(sp_cluster *c, int s) {
  ck_assert_msg(ps_test_wait_port(c->gp[s], 15000) == 0, "shard %d did not start, see %s", s, c->log);
}

START_TEST(test_sparse_rpc) {
  sp_cluster c;
  memset(&c, 0, sizeof c);
  snprintf(c.dir, sizeof c.dir, "%s", ps_test_tmpdir());
  snprintf(c.log, sizeof c.log, "%s/psd.log", c.dir);
  c.yaml = ps_test_cluster_yaml(c.dir, 2, "workers:\n  count: 2\nsparse:\n  memory_rows: 8\n", c.gp, c.cp);
  for (int s = 0; s < 2; s++) c.pids[s] = ps_test_psd(c.yaml, s, c.log, NULL);
  for (int s = 0; s < 2; s++) sp_wait_up(&c, s), sp_open(&c, s);
  /* the model: psctl model ctr --fields 2 --dim 4 --dense 1, SGD lr 0.5 */
  psw_ctr_shape sh = {2, DIM, 1, NULL, 0, 0, 0};
  ps_errbuf eb;
  ps_test_ctr m;
  ps_test_ctr_model(&m, &sh, "sgd", 0.5f, c.seed = 77);
  for (int s = 0; s < 2; s++) ps_test_submit(c.r[s], m.spec, 0, 10000);
  /* the same model with a wider table is refused before the store changes */
  {
    psw_ctr_shape wide = {2, 2 * DIM, 1, NULL, 0, 0, 0};
    ps_test_ctr m2;
    ps_test_ctr_model(&m2, &wide, "sgd", 0.5f, 77);
    Ps__SubmitModelReply *rep;
    /* with --replace: a model with tables is not replaced (its rows would stay) */
    ck_assert_int_eq(ps_test_submit_call(c.r[0], m2.spec, 1, 10000, &rep, &eb), PS_ENOTSUP);
    ck_assert_msg(strstr(eb.msg, "whose rows a replace cannot drop") != NULL, "%s", eb.msg);
    /* without: the table's dim is what refuses it */
    ck_assert_int_eq(ps_test_submit_call(c.r[0], m2.spec, 0, 10000, &rep, &eb), PS_ENOTSUP);
    ck_assert_msg(strstr(eb.msg, "sparse table 0 exists with dim 4") != NULL, "%s", eb.msg);
    ps_test_ctr_release(&m2);
  }
  {
    /* the same table, other dense settings, with --replace: refused too */
    ps_test_ctr m3;
    ps_test_ctr_model(&m3, &sh, "sgd", 0.25f, 77);
    Ps__SubmitModelReply *rep;
    ck_assert_int_eq(ps_test_submit_call(c.r[0], m3.spec, 1, 10000, &rep, &eb), PS_ENOTSUP);
    /* a dense model replaced by one with tables: refused, the message
     * naming the new model's tables (it blamed the dense model's) */
    Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
    opt.kind = "sgd", opt.lr = 0.1f;
    uint32_t shape[1] = {16};
    Ps__TensorSpec t = PS__TENSOR_SPEC__INIT, *tp = &t;
    t.name = "w", t.shape = shape, t.n_shape = 1;
    Ps__ModelSpec d = PS__MODEL_SPEC__INIT;
    d.name = "dn", d.tensors = &tp, d.n_tensors = 1, d.optimizer = &opt;
    ck_assert_int_eq(ps_test_submit_call(c.r[0], &d, 0, 10000, &rep, &eb), 0);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
    /* on both shards, as psctl submits: psctl status below says a model
     * on some shards only (exit 1) */
    ck_assert_int_eq(ps_test_submit_call(c.r[1], &d, 0, 10000, &rep, &eb), 0);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
    char *name = m3.spec->name;
    m3.spec->name = "dn";
    ck_assert_int_eq(ps_test_submit_call(c.r[0], m3.spec, 1, 10000, &rep, &eb), PS_ENOTSUP);
    ck_assert_msg(strstr(eb.msg, "the new model 'dn' has embedding tables") != NULL, "%s", eb.msg);
    m3.spec->name = name;
    /* the same spec again is still the no-op it always was */
    ck_assert_int_eq(ps_test_submit_call(c.r[0], m.spec, 1, 10000, &rep, &eb), 0);
    ck_assert(!rep->created && !rep->replaced);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
    ps_test_ctr_release(&m3);
  }
  /* keys by shard, as a worker routes them */
  static uint16_t map[PS_PLACE_ROW_BUCKETS];
  const uint32_t ids[2] = {0, 1};
  ps_place_row_map("ctr", 0, ids, 2, map);
  uint64_t rseed = ps_place_row_seed("ctr", 0), keys[2][NKEYS];
  size_t nk[2] = {0, 0};
  for (uint64_t k = 1; nk[0] < NKEYS / 2 || nk[1] < NKEYS / 2; k++) {
    int s = map[ps_place_row_bucket(rseed, k * 0x9e3779b97f4a7c15ull)];
    if (nk[s] < NKEYS / 2) keys[s][nk[s]++] = k * 0x9e3779b97f4a7c15ull;
  }
  float rows[NKEYS * DIM], want[NKEYS / 2][DIM], grad[NKEYS * DIM], before[2][NKEYS / 2][DIM];
  for (int s = 0; s < 2; s++) {
    ck_assert_msg(sp_pull(&c, s, keys[s], nk[s], rows, &eb) == 0, "pull: %s", eb.msg);
    for (size_t i = 0; i < nk[s]; i++) {
      ck_assert_int_eq(ps_init_row(want[i], "uniform", 0.05f, 77, 0, keys[s][i], DIM), 0);
      ck_assert_int_eq(memcmp(rows + i * DIM, want[i], sizeof want[i]), 0);
    }
    for (size_t i = 0; i < nk[s] * DIM; i++) grad[i] = 0.25f * (float)(i % 7) - 0.5f;
    ck_assert_msg(sp_push(&c, s, 0, keys[s], nk[s], grad, nk[s] * DIM * 4, 0, &eb) == 0, "push: %s", eb.msg);
    ck_assert_msg(sp_pull(&c, s, keys[s], nk[s], rows, &eb) == 0, "pull: %s", eb.msg);
    for (size_t i = 0; i < nk[s]; i++)
      for (int j = 0; j < DIM; j++) {
        ck_assert_float_eq_tol(rows[i * DIM + j], want[i][j] - 0.5f * grad[i * DIM + j], 1e-6);
        before[s][i][j] = rows[i * DIM + j];
      }
  }
  /* bad requests: refused by name, nothing changed */
  ck_assert_int_eq(sp_pull(&c, 0, keys[1], 1, rows, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "belongs to shard 1, not 0") != NULL, "%s", eb.msg);
  ck_assert_int_eq(sp_push(&c, 0, 5, keys[0], 1, grad, DIM * 4, 0, &eb), PS_ENOENT);
  ck_assert_msg(strstr(eb.msg, "has no sparse table 5") != NULL, "%s", eb.msg);
  ck_assert_int_eq(sp_push(&c, 0, 0, keys[0], 2, grad, DIM * 4, 0, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "2 keys of dim 4 need 32 bytes of rows, got 16") != NULL, "%s", eb.msg);
  grad[5] = NAN;
  ck_assert_int_eq(sp_push(&c, 0, 0, keys[0], 3, grad, 3 * DIM * 4, 0, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "is not finite") != NULL, "%s", eb.msg);
  grad[5] = 0;
  ck_assert_int_eq(sp_push(&c, 0, 0, keys[0], 1, grad, DIM * 4, 9, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "worker 9 is outside this cluster's worker ids") != NULL, "%s", eb.msg);
  uint64_t dup[2] = {keys[0][0], keys[0][0]};
  ck_assert_int_eq(sp_pull(&c, 0, dup, 2, rows, &eb), PS_EINVAL);
  ck_assert_msg(sp_pull(&c, 0, keys[0], nk[0], rows, &eb) == 0, "pull: %s", eb.msg);
  ck_assert_int_eq(memcmp(rows, before[0], nk[0] * DIM * sizeof(float)), 0);
  /* the counters in Status and in psctl status */
  Ps__StatusRequest sq = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *st = NULL;
  ck_assert_msg(ps_rpc_call(c.r[1], "/ps.Ps/Status", &sq.base, &ps__status_reply__descriptor,
                            (ProtobufCMessage **)&st, 10000, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(st->n_sparse_tables, 1);
  const Ps__SparseTableStatus *ts = st->sparse_tables[0];
  ck_assert_str_eq(ts->model, "ctr");
  ck_assert_uint_eq(ts->dim, DIM);
  ck_assert_uint_eq(ts->created, NKEYS / 2);
  ck_assert_uint_le(ts->rows_mem, 8);
  ck_assert_uint_ge(ts->evictions, NKEYS / 2 - 8);
  ck_assert_uint_ge(ts->disk_reads + ts->buffer_reads, NKEYS / 2 - 8);
  ck_assert_uint_eq(ts->hits + ts->misses, 3 * NKEYS / 2); /* pull, push, pull */
  ck_assert_uint_eq(ts->admit_bytes, 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  char out[700], err[700];
  snprintf(out, sizeof out, "%s/status.out", c.dir);
  snprintf(err, sizeof err, "%s/status.err", c.dir);
  char *argv[] = {(char *)ps_test_bin("psctl"), "status", "--config", (char *)c.yaml, "--json", NULL};
  ck_assert_int_eq(ps_test_run(argv, out, 20000), 0);
  char *json = ps_test_read_file(out, NULL);
  ck_assert_msg(strstr(json, "\"sparse_tables\":[{\"model\":\"ctr\",\"table\":0,\"dim\":4,") != NULL,
                "psctl status --json: %s", json);
  /* no key pending (admit_after 0): their counts take no memory */
  ck_assert_msg(strstr(json, ",\"admit_bytes\":0}") != NULL, "psctl status --json: %s", json);
  free(json);
  argv[4] = NULL;
  ck_assert_int_eq(ps_test_run(argv, err, 20000), 0);
  char *text = ps_test_read_file(err, NULL);
  ck_assert_msg(strstr(text, "SPARSE TABLE") != NULL, "psctl status: %s", text);
  /* the admission counts' columns, none pending: 0 keys, 0 bytes */
  ck_assert_msg(strstr(text, "   PENDING    ADMIT\n") != NULL, "psctl status: %s", text);
  ck_assert_msg(strstr(text, "          0       0B\n") != NULL, "psctl status: %s", text);
  free(text);
  /* a restart (SIGTERM: drain, flush) keeps every row, evicted or not */
  ps_rpc_close(c.r[0]);
  ck_assert_int_eq(ps_test_stop(c.pids[0], SIGTERM, 15000), 0);
  c.pids[0] = ps_test_psd(c.yaml, 0, c.log, NULL);
  sp_wait_up(&c, 0);
  sp_open(&c, 0);
  int rc = -1;
  for (int tries = 0; tries < 100 && rc; tries++) { /* READY follows the port by a moment */
    rc = sp_pull(&c, 0, keys[0], nk[0], rows, &eb);
    if (rc) usleep(100000);
  }
  ck_assert_msg(rc == 0, "pull after restart: %s", eb.msg);
  ck_assert_int_eq(memcmp(rows, before[0], nk[0] * DIM * sizeof(float)), 0);
  for (int s = 0; s < 2; s++) ps_rpc_close(c.r[s]);
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(c.pids[s], SIGTERM, 15000), 0);
  ps_test_ctr_release(&m);
}
END_TEST

/* eval_ctr: logloss and AUC of the model on the first N samples of D,
 * rows pulled through SP (the executor EX sized for batches of N). */
static void eval_ctr(psw_exec *ex, psw_embed *pe, psw_sparse *sp, const float *params,
                     const psw_ctr *d, uint32_t n, uint32_t *off, double *ll, double *auc) {
  ps_errbuf eb;
  ck_assert_msg(psw_embed_build(pe, n * PSW_CTR_FIELDS, off, d->keys, 0, &eb) == 0, "%s", eb.msg);
  uint32_t nk;
  const uint64_t *keys = psw_embed_keys(pe, &nk);
  float *rows = malloc((size_t)nk * 4 * sizeof(float)), *p = malloc(n * sizeof(float)), loss;
  ck_assert_msg(psw_sparse_pull(sp, keys, nk, rows, 0, &eb) == 0, "%s", eb.msg);
  psw_sparse_batch sb = {.rows = rows};
  psw_embed_bags(pe, &sb.bags);
  psw_batch b = {n, d->dense, d->label, NULL, &sb};
  uint32_t correct;
  ck_assert_msg(psw_exec_eval(ex, params, &b, &loss, &correct, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(psw_exec_probs(ex, p), 0);
  *ll = psw_metric_logloss(p, d->label, n);
  *auc = psw_metric_auc(p, d->label, n);
  free(rows);
  free(p);
}

/* The sparse path end to end: a synthetic click log (scripts/gen_ctr),
 * the click-through model's embedding rows on two shards with a budget
 * of 2000 rows each (most rows evicted and read back), a worker's steps
 * through psw_embed (distinct keys), psw_sparse (pull, push), the
 * executor; the dense parameters are updated here with SGD (the dense
 * path is tested elsewhere).  Two epochs over 4000 lines must lower the
 * logloss of 2000 held-out lines and lift their AUC well above chance. */
START_TEST(test_sparse_ctr_learns) {
  sp_cluster c;
  memset(&c, 0, sizeof c);
  snprintf(c.dir, sizeof c.dir, "%s", ps_test_tmpdir());
  snprintf(c.log, sizeof c.log, "%s/psd.log", c.dir);
  c.yaml = ps_test_cluster_yaml(c.dir, 2, "workers:\n  count: 1\nsparse:\n  memory_rows: 2000\n", c.gp, c.cp);
  for (int s = 0; s < 2; s++) c.pids[s] = ps_test_psd(c.yaml, s, c.log, NULL);
  char data[600], glog[600];
  snprintf(data, sizeof data, "%s/ctr.tsv", c.dir);
  snprintf(glog, sizeof glog, "%s/gen.log", c.dir);
  char *gen[] = {"scripts/gen_ctr", "-o", data, "--lines", "6000", "--ids", "3000", "--seed", "5", NULL};
  ck_assert_int_eq(ps_test_run(gen, glog, 120000), 0);
  psw_ctr d;
  ps_errbuf eb;
  ck_assert_msg(psw_ctr_load(&d, data, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(d.n, 6000);
  for (int s = 0; s < 2; s++) sp_wait_up(&c, s), sp_open(&c, s);
  psw_ctr_shape sh = {PSW_CTR_FIELDS, 4, PSW_CTR_DENSE, NULL, 0, 0, 0};
  ps_test_ctr m;
  ps_test_ctr_model(&m, &sh, "adagrad", 0.5f, 3);
  psw_graph *g = m.g;
  for (int s = 0; s < 2; s++) ps_test_submit(c.r[s], m.spec, 0, 10000);
  ps_config cfg;
  ck_assert_msg(ps_config_load(&cfg, c.yaml, &eb) == 0, "%s", eb.msg);
  psw_sparse *sp;
  ck_assert_msg(psw_sparse_open(&sp, &cfg, "ctr", 0, 4, 0, &eb) == 0, "%s", eb.msg);
  ps_gpu_backend *be;
  ck_assert_int_eq(ps_gpu_open("cpu", &be, &eb), 0);
  enum { B = 64, NE = 2000 };
  psw_exec *ex;
  ck_assert_msg(psw_exec_create(g, be, NE, &ex, &eb) == 0, "%s", eb.msg);
  psw_embed *pe;
  ck_assert_int_eq(psw_embed_create(&pe), 0);
  uint64_t np = psw_graph_nparams(g);
  float *params = malloc(np * sizeof(float)), *grads = malloc(np * sizeof(float));
  ck_assert_int_eq(psw_graph_init_params(g, 3, params), 0);
  uint32_t *off = malloc((NE * PSW_CTR_FIELDS + 1) * sizeof *off);
  for (uint32_t i = 0; i <= NE * PSW_CTR_FIELDS; i++) off[i] = i; /* one id per field */
  double ll0, auc0, ll1, auc1;
  eval_ctr(ex, pe, sp, params, &d, NE, off, &ll0, &auc0);
  float *rows = malloc((size_t)B * PSW_CTR_FIELDS * 4 * sizeof(float));
  float *rgrads = malloc((size_t)B * PSW_CTR_FIELDS * 4 * sizeof(float));
  uint64_t clock = 0;
  for (int epoch = 0; epoch < 2; epoch++)
    for (uint32_t at = NE; at + B <= d.n; at += B, clock++) { /* the first NE are held out */
      ck_assert_msg(psw_embed_build(pe, B * PSW_CTR_FIELDS, off, d.keys + (size_t)at * PSW_CTR_FIELDS,
                                    0, &eb) == 0, "%s", eb.msg);
      uint32_t nk;
      const uint64_t *keys = psw_embed_keys(pe, &nk);
      ck_assert_msg(psw_sparse_pull(sp, keys, nk, rows, clock, &eb) == 0, "pull: %s", eb.msg);
      psw_sparse_batch sb = {.rows = rows, .row_grads = rgrads};
      psw_embed_bags(pe, &sb.bags);
      psw_batch b = {B, d.dense + (size_t)at * PSW_CTR_DENSE, d.label + at, NULL, &sb};
      float loss;
      uint32_t correct;
      ck_assert_msg(psw_exec_step(ex, params, &b, grads, &loss, &correct, &eb) == 0, "%s", eb.msg);
      ck_assert_msg(psw_sparse_push(sp, keys, nk, rgrads, clock, &eb) == 0, "push: %s", eb.msg);
      for (uint64_t i = 0; i < np; i++) params[i] -= 0.1f * grads[i];
    }
  eval_ctr(ex, pe, sp, params, &d, NE, off, &ll1, &auc1);
  char *gl = ps_test_read_file(glog, NULL);
  printf("test_sparse_ctr_learns: held-out logloss %.4f -> %.4f, auc %.4f -> %.4f (gen_ctr: %s)\n",
         ll0, ll1, auc0, auc1, ps_test_last_line(gl));
  free(gl);
  ck_assert_msg(ll1 < ll0 - 0.02 && auc1 > 0.65, "logloss %.4f -> %.4f, auc %.4f -> %.4f", ll0, ll1,
                auc0, auc1);
  /* the budget held: rows were evicted and read back */
  Ps__StatusRequest sq = PS__STATUS_REQUEST__INIT;
  for (int s = 0; s < 2; s++) {
    Ps__StatusReply *st = NULL;
    ck_assert_msg(ps_rpc_call(c.r[s], "/ps.Ps/Status", &sq.base, &ps__status_reply__descriptor,
                              (ProtobufCMessage **)&st, 10000, &eb) == 0, "%s", eb.msg);
    ck_assert_uint_eq(st->n_sparse_tables, 1);
    ck_assert_uint_le(st->sparse_tables[0]->rows_mem, 2000);
    ck_assert_uint_gt(st->sparse_tables[0]->evictions, 0);
    ck_assert_uint_gt(st->sparse_tables[0]->disk_reads + st->sparse_tables[0]->buffer_reads, 0);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  free(rows), free(rgrads), free(params), free(grads), free(off);
  psw_embed_free(pe);
  psw_exec_free(ex);
  ps_gpu_close(be);
  psw_sparse_close(sp);
  ps_config_release(&cfg);
  psw_ctr_release(&d);
  for (int s = 0; s < 2; s++) ps_rpc_close(c.r[s]);
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(c.pids[s], SIGTERM, 15000), 0);
  ps_test_ctr_release(&m);
}
END_TEST

Suite *psd_sparse_rpc_suite(void) {
  Suite *s = suite_create("psd_sparse_rpc");
  TCase *tc = tcase_create("grpc");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 150);
  tcase_add_test(tc, test_sparse_rpc);
  tcase_add_test(tc, test_sparse_ctr_learns);
  suite_add_tcase(s, tc);
  return s;
}
