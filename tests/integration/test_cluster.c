/* Integration: two psd shards started as processes from the structure of
 * config/local-2shards.yaml (ports rewritten to ephemeral ones, data dirs
 * to a temp dir); a model submitted, pushes and pulls from a test client;
 * a shard SIGKILLed after a flush comes back with its flushed state; a
 * SIGTERM ends in exit 0 with everything flushed; psctl status reports
 * both up (exit 0) and one down (exit 1), also as JSON.
 *
 * Every process started is recorded in shared memory so the unchecked
 * teardown stops it by PID even when the test failed half-way. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_model.h"
#include "ps_auth.h"
#include "ps_config.h"
#include "ps_rpc.h"
#include "ps_test.h"

typedef struct cl_ctx {
  char dir[512], yaml[600], log[600];
  int gp[2], cp[2];
  pid_t pid[2];
  ps_rpc *rpc[2];
} cl_ctx;

/* cl_yaml rewrites config/local-2shards.yaml into X->yaml: each shard's
 * grpc/channel port and data_dir replaced, its TLS files made under
 * X->dir/tls by scripts/mkcerts, everything else kept. */
static void cl_yaml(cl_ctx *x) {
  FILE *in = fopen("config/local-2shards.yaml", "r");
  ck_assert_msg(in != NULL, "cannot read config/local-2shards.yaml");
  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  char line[1024];
  int shard = -1;
  while (fgets(line, sizeof line, in)) {
    char *key = line + strspn(line, " -");
    int indent = (int)(key - line);
    if (!strncmp(key, "id:", 3)) shard++;
    if (shard >= 0 && shard < 2 && !strncmp(key, "grpc:", 5))
      fprintf(out, "%.*sgrpc: 127.0.0.1:%d\n", indent, line, x->gp[shard]);
    else if (shard >= 0 && shard < 2 && !strncmp(key, "channel:", 8))
      fprintf(out, "%.*schannel: 127.0.0.1:%d\n", indent, line, x->cp[shard]);
    else if (shard >= 0 && shard < 2 && !strncmp(key, "data_dir:", 9))
      fprintf(out, "%.*sdata_dir: %s/shard%d\n", indent, line, x->dir, shard);
    else if (strstr(line, "/etc/psd/tls/")) {
      char *p = strstr(line, "/etc/psd/tls/");
      fprintf(out, "%.*s%s/tls/%s", (int)(p - line), line, x->dir, p + strlen("/etc/psd/tls/"));
    } else
      fputs(line, out);
  }
  fclose(in);
  fclose(out);
  ck_assert_int_eq(shard, 1);
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "scripts/mkcerts --force --config config/local-2shards.yaml --out '%s/tls' "
           ">/dev/null", x->dir);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(x->yaml, sizeof x->yaml, "%s/cluster.yaml", x->dir);
  ps_test_write_file(x->yaml, buf);
  free(buf);
}

/* cl_start starts shard S and waits for both of its ports. */
static void cl_start(cl_ctx *x, int s) {
  x->pid[s] = ps_test_psd(x->yaml, s, x->log, NULL);
  ck_assert_msg(ps_test_wait_port(x->gp[s], 15000) == 0, "shard %d did not listen, see %s", s, x->log);
  ck_assert_int_eq(ps_test_wait_port(x->cp[s], 15000), 0);
}

/* The model: 6 tensors [256, 256] (chunk_elems 65536: one chunk each). */
typedef struct cl_model {
  uint32_t shape[2];
  Ps__TensorSpec t[6];
  Ps__TensorSpec *ts[6];
  Ps__OptimizerSpec opt;
  Ps__ModelSpec spec;
} cl_model;

static void cl_model_init(cl_model *m) {
  static const char *names[6] = {"a", "b", "c", "d", "e", "f"};
  m->shape[0] = m->shape[1] = 256;
  for (int i = 0; i < 6; i++) {
    ps__tensor_spec__init(&m->t[i]);
    m->t[i].name = (char *)names[i];
    m->t[i].n_shape = 2;
    m->t[i].shape = m->shape;
    m->t[i].init = "uniform";
    m->t[i].scale = 0.1f;
    m->ts[i] = &m->t[i];
  }
  ps__optimizer_spec__init(&m->opt);
  m->opt.kind = "adam";
  m->opt.lr = 0.01f;
  m->opt.beta1 = 0.9f;
  m->opt.beta2 = 0.999f;
  m->opt.eps = 1e-8f;
  ps__model_spec__init(&m->spec);
  m->spec.name = "clm";
  m->spec.seed = 3;
  m->spec.n_tensors = 6;
  m->spec.tensors = m->ts;
  m->spec.optimizer = &m->opt;
}

static void cl_connect(cl_ctx *x, int s) {
  char addr[64];
  ps_errbuf eb;
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->gp[s]);
  ps_config cfg; /* the operator's certificate of the cluster file */
  ck_assert_msg(ps_config_load(&cfg, x->yaml, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_rpc_open_cfg(&x->rpc[s], addr, &cfg, PS_ROLE_OPERATOR, &eb), 0);
  ps_config_release(&cfg);
}

/* cl_pull returns shard S's values of IDS (caller frees) and its version. */
static float *cl_pull(cl_ctx *x, int s, const uint32_t *ids, size_t n, uint64_t nelems,
                      uint64_t *version) {
  Ps__PullRequest req = PS__PULL_REQUEST__INIT;
  req.model = "clm";
  req.chunk_ids = (uint32_t *)ids;
  req.n_chunk_ids = n;
  Ps__PullReply *rep;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(x->rpc[s], "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor,
                            (ProtobufCMessage **)&rep, 10000, &eb) == 0, "pull shard %d: %s", s, eb.msg);
  ck_assert_uint_eq(rep->values.len, nelems * 4);
  float *v = malloc(nelems * 4);
  memcpy(v, rep->values.data, nelems * 4);
  *version = rep->version;
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return v;
}

static void cl_push(cl_ctx *x, int s, const uint32_t *ids, size_t n, uint64_t nelems, float val) {
  float *g = malloc(nelems * 4);
  for (uint64_t i = 0; i < nelems; i++) g[i] = val * (float)((i % 5) + 1);
  Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
  req.model = "clm";
  req.chunk_ids = (uint32_t *)ids;
  req.n_chunk_ids = n;
  req.grads.data = (uint8_t *)g;
  req.grads.len = nelems * 4;
  ProtobufCMessage *rep;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(x->rpc[s], "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor, &rep,
                            10000, &eb) == 0, "push shard %d: %s", s, eb.msg);
  protobuf_c_message_free_unpacked(rep, NULL);
  free(g);
}

/* cl_wait_flush waits until shard S reports a flush at or after SINCE_MS. */
static void cl_wait_flush(cl_ctx *x, int s, int64_t since_ms) {
  int64_t end = ps_test_now_ms() + 15000;
  for (;;) {
    Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
    Ps__StatusReply *st;
    ps_errbuf eb;
    ck_assert_int_eq(ps_rpc_call(x->rpc[s], "/ps.Ps/Status", &req.base,
                                 &ps__status_reply__descriptor, (ProtobufCMessage **)&st, 5000, &eb), 0);
    int64_t last = st->last_flush_unix_ms;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    if (last >= since_ms) return;
    ck_assert_msg(ps_test_now_ms() < end, "shard %d did not flush within 15 s", s);
    usleep(50000);
  }
}

static int64_t cl_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* cl_psctl runs psctl status (with --json when JSON) into OUT; its exit code. */
static int cl_psctl(cl_ctx *x, int json, const char *out) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "timeout 20 '%s' status --config '%s' %s > '%s' 2>>'%s'",
           ps_test_bin("psctl"), x->yaml, json ? "--json" : "", out, x->log);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* cl_json_check runs a python3 json check of FILE; 0 when it holds. */
static int cl_json_check(const char *file, const char *expr) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if (%s) else 1)' '%s'",
           expr, file);
  return system(cmd) == 0 ? 0 : -1;
}

START_TEST(test_cluster_two_shards) {
  cl_ctx x;
  memset(&x, 0, sizeof x);
  snprintf(x.dir, sizeof x.dir, "%s", ps_test_tmpdir());
  snprintf(x.log, sizeof x.log, "%s/cluster.log", x.dir);
  for (int s = 0; s < 2; s++) {
    x.gp[s] = ps_test_free_port();
    do x.cp[s] = ps_test_free_port(); while (x.cp[s] == x.gp[s]);
  }
  cl_yaml(&x);
  cl_start(&x, 0);
  cl_start(&x, 1);
  cl_model m;
  cl_model_init(&m);
  ps_layout l;
  ps_errbuf eb;
  const uint32_t sids[2] = {0, 1};
  ck_assert_int_eq(ps_layout_build(&l, &m.spec, 65536, sids, 2, &eb), 0);
  uint32_t *ids[2];
  uint64_t ne[2];
  long n[2];
  for (int s = 0; s < 2; s++) {
    n[s] = ps_layout_shard_chunks(&l, (uint32_t)s, &ids[s], &ne[s]);
    ck_assert_msg(n[s] > 0, "shard %d holds no chunk of the test model", s);
    cl_connect(&x, s);
    Ps__SubmitModelRequest req = PS__SUBMIT_MODEL_REQUEST__INIT;
    req.model = &m.spec;
    Ps__SubmitModelReply *rep;
    ck_assert_msg(ps_rpc_call(x.rpc[s], "/ps.Ps/SubmitModel", &req.base,
                              &ps__submit_model_reply__descriptor, (ProtobufCMessage **)&rep, 10000,
                              &eb) == 0, "submit shard %d: %s", s, eb.msg);
    ck_assert_uint_eq(rep->chunks, (uint32_t)n[s]);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
  }
  /* Two pushes each, then wait for shard 1's periodic flush. */
  for (int s = 0; s < 2; s++) {
    cl_push(&x, s, ids[s], (size_t)n[s], ne[s], 0.5f);
    cl_push(&x, s, ids[s], (size_t)n[s], ne[s], -0.25f);
  }
  int64_t t_push = cl_unix_ms();
  uint64_t v;
  float *flushed1 = cl_pull(&x, 1, ids[1], (size_t)n[1], ne[1], &v);
  ck_assert_uint_eq(v, 2);
  cl_wait_flush(&x, 1, t_push);

  /* psctl status: both up -> 0, and the JSON says so. */
  char out[700];
  snprintf(out, sizeof out, "%s/status.json", x.dir);
  ck_assert_int_eq(cl_psctl(&x, 0, out), 0);
  ck_assert_int_eq(cl_psctl(&x, 1, out), 0);
  ck_assert_msg(cl_json_check(out, "d[\"total\"]==2 and d[\"serving\"]==2 and "
                                   "[s[\"state\"] for s in d[\"shards\"]]==[\"SERVING\",\"SERVING\"] and "
                                   "sum(s[\"params\"] for s in d[\"shards\"])==6*65536 and "
                                   "d[\"shards\"][1][\"version\"]==2 and d[\"shards\"][1][\"last_flush_age_s\"] is not None") == 0,
                "psctl status --json does not describe the cluster, see %s", out);
  /* What a worker says of itself reaches the JSON escaped: quotes,
   * backslashes and UTF-8 (control characters and bad UTF-8 are refused
   * at the shard, test_psd_rpc). */
  Ps__RegisterWorkerRequest rw = PS__REGISTER_WORKER_REQUEST__INIT;
  rw.host = "n\xc5\x93ud \"q\" \\ \xc3\xa9";
  rw.device = "cpu: {\"x\": 1}";
  rw.pid = 42;
  Ps__RegisterWorkerReply *rwr;
  ck_assert_msg(ps_rpc_call(x.rpc[0], "/ps.Ps/RegisterWorker", &rw.base,
                            &ps__register_worker_reply__descriptor, (ProtobufCMessage **)&rwr,
                            5000, &eb) == 0, "register: %s", eb.msg);
  protobuf_c_message_free_unpacked(&rwr->base, NULL);
  ck_assert_int_eq(cl_psctl(&x, 1, out), 0);
  ck_assert_msg(cl_json_check(out, "d[\"workers\"][1][\"host\"]==\"n\\u0153ud \\\"q\\\" \\\\ \\u00e9\" and "
                                   "d[\"workers\"][1][\"device\"]==\"cpu: {\\\"x\\\": 1}\"") == 0,
                "psctl status --json does not carry the worker's host, see %s", out);

  /* SIGKILL shard 1 after its flush: it comes back with the flushed state. */
  ps_rpc_close(x.rpc[1]);
  int st = ps_test_stop(x.pid[1], SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  ck_assert_int_eq(cl_psctl(&x, 0, out), 1);
  ck_assert_int_eq(cl_psctl(&x, 1, out), 1);
  ck_assert_msg(cl_json_check(out, "d[\"serving\"]==1 and d[\"shards\"][1][\"state\"]==\"DOWN\" and "
                                   "d[\"shards\"][0][\"state\"]==\"SERVING\"") == 0,
                "psctl status --json with shard 1 down, see %s", out);
  cl_start(&x, 1);
  cl_connect(&x, 1);
  float *back = cl_pull(&x, 1, ids[1], (size_t)n[1], ne[1], &v);
  ck_assert_uint_eq(v, 2);
  ck_assert_int_eq(memcmp(back, flushed1, ne[1] * 4), 0);

  /* A push right before SIGTERM is flushed by the shutdown. */
  cl_push(&x, 0, ids[0], (size_t)n[0], ne[0], 0.125f);
  float *before = cl_pull(&x, 0, ids[0], (size_t)n[0], ne[0], &v);
  ck_assert_uint_eq(v, 3);
  ps_rpc_close(x.rpc[0]);
  st = ps_test_stop(x.pid[0], SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "shard 0 ended with status %d", st);
  cl_start(&x, 0);
  cl_connect(&x, 0);
  float *after = cl_pull(&x, 0, ids[0], (size_t)n[0], ne[0], &v);
  ck_assert_uint_eq(v, 3);
  ck_assert_int_eq(memcmp(before, after, ne[0] * 4), 0);
  /* The restarted shard goes on serving pushes. */
  cl_push(&x, 0, ids[0], (size_t)n[0], ne[0], 0.125f);
  free(after);
  after = cl_pull(&x, 0, ids[0], (size_t)n[0], ne[0], &v);
  ck_assert_uint_eq(v, 4);
  ck_assert(memcmp(before, after, ne[0] * 4) != 0);

  for (int s = 0; s < 2; s++) {
    ps_rpc_close(x.rpc[s]);
    st = ps_test_stop(x.pid[s], SIGTERM, 15000);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "shard %d ended with status %d", s, st);
    free(ids[s]);
  }
  free(before);
  free(after);
  free(back);
  free(flushed1);
  ps_layout_release(&l);
}
END_TEST

Suite *psd_cluster_suite(void) {
  Suite *s = suite_create("psd_cluster");
  TCase *tc = tcase_create("two_shards");
  tcase_set_timeout(tc, 180);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tc, test_cluster_two_shards);
  suite_add_tcase(s, tc);
  return s;
}
