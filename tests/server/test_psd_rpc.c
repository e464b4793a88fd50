/* Tests for psd's gRPC control plane (psd_grpc, psd_shard, ps_rpc): two
 * real psd processes on loopback, driven through ps_rpc and ps_chan.
 *
 * The daemons are started once per test case in an unchecked fixture (the
 * runner's own process), so they are stopped by PID even when a test
 * fails; each test uses its own model names. */
#include <dirent.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health.pb-c.h"
#include "ps_chan.h"
#include "ps_model.h"
#include "ps_place.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "ps_time.h"
#include "ps_version.h"

#define RPC_MAX_REQ 65536 /* max_request_bytes in the test cluster */

static pid_t rpc_pids[2];
static char rpc_addr[2][64];
static char rpc_chan_addr[2][64];
static const uint32_t rpc_ids[2] = {0, 1};

static void rpc_up(void) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp[2], cp[2];
  const char *yaml = ps_test_cluster_yaml(
      dir, 2, "limits:\n  max_request_bytes: 65536\n  drain_timeout_ms: 2000\n", gp, cp);
  char log[600];
  snprintf(log, sizeof log, "%s/psd.log", dir);
  for (int i = 0; i < 2; i++) {
    rpc_pids[i] = ps_test_psd(yaml, i, log, NULL);
    snprintf(rpc_addr[i], sizeof rpc_addr[i], "127.0.0.1:%d", gp[i]);
    snprintf(rpc_chan_addr[i], sizeof rpc_chan_addr[i], "127.0.0.1:%d", cp[i]);
  }
  for (int i = 0; i < 2; i++)
    if (ps_test_wait_port(gp[i], 10000) < 0 || ps_test_wait_port(cp[i], 10000) < 0)
      fprintf(stderr, "test_psd_rpc: shard %d did not start, see %s\n", i, log);
}

static void rpc_down(void) {
  for (int i = 0; i < 2; i++)
    if (rpc_pids[i] > 0) ps_test_stop(rpc_pids[i], SIGTERM, 10000);
}

/* A model: w [100, 100] (glorot), b [100] (zeros); chunk_elems 1024. */
typedef struct rpc_model {
  uint32_t shape_w[2], shape_b[1];
  Ps__TensorSpec tw, tb;
  Ps__TensorSpec *ts[2];
  Ps__OptimizerSpec opt;
  Ps__ModelSpec spec;
} rpc_model;

static void rpc_model_init(rpc_model *m, const char *name, float lr) {
  memset(m, 0, sizeof *m);
  ps__tensor_spec__init(&m->tw);
  ps__tensor_spec__init(&m->tb);
  ps__optimizer_spec__init(&m->opt);
  ps__model_spec__init(&m->spec);
  m->shape_w[0] = m->shape_w[1] = 100;
  m->shape_b[0] = 100;
  m->tw.name = "w"; m->tw.n_shape = 2; m->tw.shape = m->shape_w; m->tw.init = "glorot"; m->tw.scale = 1;
  m->tb.name = "b"; m->tb.n_shape = 1; m->tb.shape = m->shape_b; m->tb.init = "zeros";
  m->ts[0] = &m->tw;
  m->ts[1] = &m->tb;
  m->opt.kind = "sgd";
  m->opt.lr = lr;
  m->spec.name = (char *)name;
  m->spec.seed = 7;
  m->spec.n_tensors = 2;
  m->spec.tensors = m->ts;
  m->spec.optimizer = &m->opt;
}

static ps_rpc *rpc_open(int shard) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, rpc_addr[shard], &eb), 0);
  return r;
}

/* rpc_chan connects to SHARD's channel. */
static ps_chan_client *rpc_chan(int shard) {
  ps_chan_client *c;
  ps_errbuf eb;
  ck_assert_msg(ps_test_chan_connect(&c, rpc_chan_addr[shard], "test", 5000, &eb) == 0,
                "connect: %s", eb.msg);
  return c;
}

static int rpc_submit(ps_rpc *r, const Ps__ModelSpec *spec, int replace, Ps__SubmitModelReply **rep,
                      ps_errbuf *eb) {
  return ps_test_submit_call(r, spec, replace, 5000, rep, eb);
}

/* rpc_push_as pushes as WORKER; rpc_push as worker 0. */
static int rpc_push_as(ps_rpc *r, const char *model, const uint32_t *ids, size_t n,
                       const void *grads, size_t nbytes, uint32_t worker, uint64_t *version,
                       ps_errbuf *eb) {
  Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
  req.worker = worker;
  req.model = (char *)model;
  req.chunk_ids = (uint32_t *)ids;
  req.n_chunk_ids = n;
  req.grads.data = (uint8_t *)grads;
  req.grads.len = nbytes;
  Ps__PushReply *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor,
                        (ProtobufCMessage **)&rep, 5000, eb);
  if (err == 0) {
    *version = rep->version;
    protobuf_c_message_free_unpacked(&rep->base, NULL);
  }
  return err;
}

static int rpc_push(ps_rpc *r, const char *model, const uint32_t *ids, size_t n, const void *grads,
                    size_t nbytes, uint64_t *version, ps_errbuf *eb) {
  return rpc_push_as(r, model, ids, n, grads, nbytes, 0, version, eb);
}

/* rpc_pull returns the values (caller frees) and their count in *N. */
static float *rpc_pull(ps_rpc *r, const char *model, const uint32_t *ids, size_t n, size_t *nvals,
                       uint64_t *version, int *err, ps_errbuf *eb) {
  Ps__PullRequest req = PS__PULL_REQUEST__INIT;
  req.model = (char *)model;
  req.chunk_ids = (uint32_t *)ids;
  req.n_chunk_ids = n;
  Ps__PullReply *rep = NULL;
  *err = ps_rpc_call(r, "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor,
                     (ProtobufCMessage **)&rep, 5000, eb);
  if (*err < 0) return NULL;
  float *v = malloc(rep->values.len + 1);
  memcpy(v, rep->values.data, rep->values.len);
  *nvals = rep->values.len / sizeof(float);
  *version = rep->version;
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return v;
}

/* rpc_layout builds the layout of M over the two test shards. */
static void rpc_layout(ps_layout *l, const rpc_model *m) {
  ps_errbuf eb;
  ck_assert_int_eq(ps_layout_build(l, &m->spec, 1024, rpc_ids, 2, &eb), 0);
}

/* rpc_expected fills the initial values of chunks IDS of M. */
static float *rpc_expected(const ps_layout *l, const rpc_model *m, const uint32_t *ids, size_t n,
                           uint64_t nelems) {
  float *v = malloc(nelems * sizeof(float) + 1), *p = v;
  for (size_t i = 0; i < n; i++) {
    const ps_chunk *c = &l->chunks[ids[i]];
    const ps_tensor_info *t = &l->tensors[c->tensor];
    const Ps__TensorSpec *ts = m->spec.tensors[c->tensor];
    ck_assert_int_eq(ps_init_fill(p, ts->init, ts->scale, m->spec.seed, c->tensor, c->offset,
                                  c->len, t->fan_in, t->fan_out), 0);
    p += c->len;
  }
  return v;
}

START_TEST(test_rpc_submit_push_pull) {
  rpc_model m;
  rpc_model_init(&m, "m1", 0.5f);
  ps_layout l;
  rpc_layout(&l, &m);
  ps_errbuf eb;
  uint32_t chunks = 0;
  uint64_t params = 0;
  for (int s = 0; s < 2; s++) {
    ps_rpc *r = rpc_open(s);
    Ps__SubmitModelReply *rep = NULL;
    ck_assert_msg(rpc_submit(r, &m.spec, 0, &rep, &eb) == 0, "submit: %s", eb.msg);
    ck_assert(rep->created && !rep->replaced);
    chunks += rep->chunks;
    params += rep->params;
    protobuf_c_message_free_unpacked(&rep->base, NULL);
    /* The same spec again is a no-op. */
    ck_assert_int_eq(rpc_submit(r, &m.spec, 0, &rep, &eb), 0);
    ck_assert(!rep->created);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
    ps_rpc_close(r);
  }
  ck_assert_uint_eq(chunks, l.nchunks);
  ck_assert_uint_eq(params, l.nparams);
  /* Each shard serves its own chunks with the deterministic initial values;
   * one SGD push of all-ones gradients moves each value by -lr. */
  for (int s = 0; s < 2; s++) {
    uint32_t *ids;
    uint64_t nelems;
    long n = ps_layout_shard_chunks(&l, (uint32_t)s, &ids, &nelems);
    ck_assert_int_gt(n, 0);
    ps_rpc *r = rpc_open(s);
    size_t nv;
    uint64_t ver;
    int err;
    float *v = rpc_pull(r, "m1", ids, (size_t)n, &nv, &ver, &err, &eb);
    ck_assert_msg(err == 0, "pull: %s", eb.msg);
    ck_assert_uint_eq(nv, nelems);
    ck_assert_uint_eq(ver, 0);
    float *want = rpc_expected(&l, &m, ids, (size_t)n, nelems);
    ck_assert_int_eq(memcmp(v, want, nelems * sizeof(float)), 0);
    float *g = malloc(nelems * sizeof(float));
    for (uint64_t i = 0; i < nelems; i++) g[i] = 1.0f;
    ck_assert_msg(rpc_push(r, "m1", ids, (size_t)n, g, nelems * 4, &ver, &eb) == 0, "push: %s", eb.msg);
    ck_assert_uint_eq(ver, 1);
    free(v);
    v = rpc_pull(r, "m1", ids, (size_t)n, &nv, &ver, &err, &eb);
    ck_assert_int_eq(err, 0);
    ck_assert_uint_eq(ver, 1);
    for (uint64_t i = 0; i < nelems; i++)
      ck_assert_msg(fabsf(v[i] - (want[i] - 0.5f)) < 1e-6f, "element %llu: %g, want %g",
                    (unsigned long long)i, v[i], want[i] - 0.5f);
    free(g);
    free(v);
    free(want);
    free(ids);
    ps_rpc_close(r);
  }
  /* A different spec under the same name is refused unless replaced. */
  rpc_model m2;
  rpc_model_init(&m2, "m1", 0.25f);
  ps_rpc *r = rpc_open(0);
  Ps__SubmitModelReply *rep = NULL;
  ck_assert_int_eq(rpc_submit(r, &m2.spec, 0, &rep, &eb), PS_EEXIST);
  ck_assert_int_eq(rpc_submit(r, &m2.spec, 1, &rep, &eb), 0);
  ck_assert(rep->created && rep->replaced);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  /* the same spec again, replace or not: neither created nor replaced */
  ck_assert_int_eq(rpc_submit(r, &m2.spec, 1, &rep, &eb), 0);
  ck_assert(!rep->created && !rep->replaced);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  ps_rpc_close(r);
  ps_layout_release(&l);
}
END_TEST

/* rpc_bad_push checks that a push fails with WANT and a message. */
#define rpc_bad_push(r, model, ids, n, g, nbytes, want)                                  \
  do {                                                                                  \
    uint64_t ver_;                                                                      \
    ps_errbuf eb_ = {{0}};                                                              \
    int err_ = rpc_push(r, model, ids, n, g, nbytes, &ver_, &eb_);                      \
    ck_assert_msg(err_ == (want), "push: got %s (%s), want %s", ps_errname(err_), eb_.msg, \
                  ps_errname(want));                                                    \
    ck_assert(eb_.msg[0]);                                                              \
  } while (0)

/* rpc_fresh makes model NAME (lr 0.5) in *M with its layout in *L and
 * submits it through shard 0, whose handle it returns. */
static ps_rpc *rpc_fresh(rpc_model *m, const char *name, ps_layout *l) {
  rpc_model_init(m, name, 0.5f);
  rpc_layout(l, m);
  ps_errbuf eb;
  ps_rpc *r = rpc_open(0);
  Ps__SubmitModelReply *rep = NULL;
  ck_assert_msg(rpc_submit(r, &m->spec, 0, &rep, &eb) == 0, "submit: %s", eb.msg);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return r;
}

START_TEST(test_rpc_bad_input) {
  rpc_model m;
  ps_layout l;
  ps_rpc *r = rpc_fresh(&m, "bad", &l);
  ps_errbuf eb;
  uint32_t *ids, *other;
  uint64_t nelems, nother;
  long n = ps_layout_shard_chunks(&l, 0, &ids, &nelems);
  long no = ps_layout_shard_chunks(&l, 1, &other, &nother);
  ck_assert(n > 0 && no > 0);
  size_t nv;
  uint64_t ver0, ver;
  int err;
  float *before = rpc_pull(r, "bad", ids, (size_t)n, &nv, &ver0, &err, &eb);
  ck_assert_int_eq(err, 0);
  float *g = calloc(nelems + 20000, sizeof(float));
  rpc_bad_push(r, "nosuch", ids, 1, g, l.chunks[ids[0]].len * 4, PS_ENOENT);
  uint32_t unknown = 99999;
  rpc_bad_push(r, "bad", &unknown, 1, g, 1024 * 4, PS_ENOENT);
  rpc_bad_push(r, "bad", other, 1, g, l.chunks[other[0]].len * 4, PS_ENOENT);
  rpc_bad_push(r, "bad", ids, (size_t)n, g, (nelems - 1) * 4, PS_EINVAL);
  rpc_bad_push(r, "bad", ids, (size_t)n, g, nelems * 4 + 2, PS_EINVAL);
  rpc_bad_push(r, "bad", ids, (size_t)n, g, (RPC_MAX_REQ / 4 + 1024) * 4, PS_ETOOBIG);
  g[nelems / 2] = NAN;
  rpc_bad_push(r, "bad", ids, (size_t)n, g, nelems * 4, PS_EINVAL);
  g[nelems / 2] = INFINITY;
  rpc_bad_push(r, "bad", ids, (size_t)n, g, nelems * 4, PS_EINVAL);
  g[nelems / 2] = 0;
  /* Unparsable messages and unknown methods. */
  void *resp = NULL;
  size_t rlen;
  static const unsigned char junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
  err = ps_rpc_call_raw(r, "/ps.Ps/Push", junk, sizeof junk, &resp, &rlen, 5000, &eb);
  ck_assert_msg(err == PS_EINVAL, "junk push: %s %s", ps_errname(err), eb.msg);
  err = ps_rpc_call_raw(r, "/ps.Ps/NoSuch", junk, sizeof junk, &resp, &rlen, 5000, &eb);
  ck_assert_msg(err == PS_ENOTSUP, "unknown method: %s %s", ps_errname(err), eb.msg);
  /* Bad pulls. */
  free(rpc_pull(r, "nosuch", ids, 1, &nv, &ver, &err, &eb));
  ck_assert_int_eq(err, PS_ENOENT);
  ck_assert_str_eq(eb.msg, "unknown model 'nosuch'");
  free(rpc_pull(r, "bad", other, 1, &nv, &ver, &err, &eb));
  ck_assert_int_eq(err, PS_ENOENT);
  /* Nothing changed, and the shard still serves. */
  float *after = rpc_pull(r, "bad", ids, (size_t)n, &nv, &ver, &err, &eb);
  ck_assert_int_eq(err, 0);
  ck_assert_uint_eq(ver, ver0);
  ck_assert_uint_eq(nv, nelems);
  ck_assert_int_eq(memcmp(before, after, nelems * sizeof(float)), 0);
  ck_assert_int_eq(rpc_push(r, "bad", ids, (size_t)n, g, nelems * 4, &ver, &eb), 0);
  ck_assert_uint_eq(ver, ver0 + 1);
  free(before);
  free(after);
  free(g);
  free(ids);
  free(other);
  ps_rpc_close(r);
  ps_layout_release(&l);
}
END_TEST

/* rpc_register asks shard R for a rank as MODEL / HOST / DEVICE. */
static int rpc_register(ps_rpc *r, const char *model, const char *host, const char *device,
                        ps_errbuf *eb) {
  Ps__RegisterWorkerRequest req = PS__REGISTER_WORKER_REQUEST__INIT;
  req.model = (char *)model;
  req.host = (char *)host;
  req.device = (char *)device;
  req.pid = 1;
  Ps__RegisterWorkerReply *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/RegisterWorker", &req.base,
                        &ps__register_worker_reply__descriptor, (ProtobufCMessage **)&rep, 5000,
                        eb);
  if (rep) protobuf_c_message_free_unpacked(&rep->base, NULL);
  return err;
}

/* What an attacker without credentials tried (issue 10, cases 5 and 8):
 * made-up worker ids, and names that are not names or not UTF-8.  Each is
 * refused with a clear message and changes nothing. */
START_TEST(test_rpc_hostile_ids_and_names) {
  rpc_model m;
  ps_layout l;
  ps_rpc *r = rpc_fresh(&m, "hostile", &l);
  ps_errbuf eb;
  Ps__SubmitModelReply *rep = NULL;
  uint32_t *ids;
  uint64_t nelems, ver0, ver;
  size_t nv;
  int err;
  long n = ps_layout_shard_chunks(&l, 0, &ids, &nelems);
  float *before = rpc_pull(r, "hostile", ids, (size_t)n, &nv, &ver0, &err, &eb);
  float *g = calloc(nelems, sizeof(float));
  g[0] = 1;
  /* A worker outside the world (workers.count is 1 here: ids 0..3). */
  for (uint32_t w = 4; w < 200; w += 37) {
    ck_assert_int_eq(rpc_push_as(r, "hostile", ids, (size_t)n, g, nelems * 4, w, &ver, &eb),
                     PS_EINVAL);
    ck_assert_msg(strstr(eb.msg, "is outside this cluster's worker ids (0..3"), "%s", eb.msg);
  }
  /* Names. */
  rpc_model bad;
  static const char *const bad_names[] = {"bad name", "a/b", "\xff\xfe", "", "x\ny"};
  for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
    rpc_model_init(&bad, bad_names[i], 0.5f);
    ck_assert_int_eq(rpc_submit(r, &bad.spec, 0, &rep, &eb), PS_EINVAL);
    ck_assert_msg(strstr(eb.msg, "bad model name") || strstr(eb.msg, "not valid UTF-8"), "%s",
                  eb.msg);
  }
  ck_assert_int_eq(rpc_register(r, "hostile", "h\xff", "cpu", &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "field 'host' of RegisterWorkerRequest is not valid UTF-8"), "%s",
                eb.msg);
  ck_assert_int_eq(rpc_register(r, "hostile", "h\033[2J", "cpu", &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "worker host holds a control character (byte 1)");
  ck_assert_int_eq(rpc_register(r, "a b", "h", "cpu", &eb), PS_EINVAL);
  ck_assert_int_eq(rpc_register(r, "hostile", "h", "\xc0\x80", &eb), PS_EINVAL);
  /* Nothing changed; the shard still serves. */
  float *after = rpc_pull(r, "hostile", ids, (size_t)n, &nv, &ver, &err, &eb);
  ck_assert_int_eq(err, 0);
  ck_assert_uint_eq(ver, ver0);
  ck_assert_int_eq(memcmp(before, after, nelems * sizeof(float)), 0);
  ck_assert_int_eq(rpc_push(r, "hostile", ids, (size_t)n, g, nelems * 4, &ver, &eb), 0);
  ck_assert_uint_eq(ver, ver0 + 1);
  free(before);
  free(after);
  free(g);
  free(ids);
  ps_rpc_close(r);
  ps_layout_release(&l);
}
END_TEST

START_TEST(test_rpc_status_health) {
  ps_errbuf eb;
  for (int s = 0; s < 2; s++) {
    ps_rpc *r = rpc_open(s);
    Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
    Ps__StatusReply *st = NULL;
    ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                                 (ProtobufCMessage **)&st, 5000, &eb), 0);
    ck_assert_uint_eq(st->shard, (uint32_t)s);
    ck_assert_str_eq(st->state, "SERVING");
    ck_assert_str_eq(st->grpc_addr, rpc_addr[s]);
    ck_assert_str_eq(st->channel_addr, rpc_chan_addr[s]);
    ck_assert_str_eq(st->build, ps_version()); /* psd and this test: one make */
    protobuf_c_message_free_unpacked(&st->base, NULL);
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *h = NULL;
    ck_assert_int_eq(ps_rpc_call(r, "/grpc.health.v1.Health/Check", &hreq.base,
                                 &grpc__health__v1__health_check_response__descriptor,
                                 (ProtobufCMessage **)&h, 5000, &eb), 0);
    ck_assert_int_eq(h->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    protobuf_c_message_free_unpacked(&h->base, NULL);
    ps_rpc_close(r);
  }
  /* An unreachable address is PS_EUNAVAIL, not a hang. */
  ps_rpc *r;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", ps_test_free_port());
  ck_assert_int_eq(ps_test_rpc_open(&r, addr, &eb), 0);
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *st = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                        (ProtobufCMessage **)&st, 2000, &eb);
  ck_assert_msg(err == PS_EUNAVAIL || err == PS_ETIMEDOUT, "got %s", ps_errname(err));
  ps_rpc_close(r);
}
END_TEST

/* ps_rpc_call_all with two live shards among three black holes (sockets
 * that listen and never accept, as a shard whose host dropped off the
 * network): the live ones answer, each hole fails at the one shared
 * deadline, and the round takes one timeout, not one per hole (a round
 * of one call after the other takes at least 3 x 1.5 s here). */
START_TEST(test_rpc_call_all_holes) {
  enum { N = 5, TIMEOUT_MS = 1500 };
  ps_rpc *r[N];
  int holes[3];
  ps_errbuf eb;
  for (int i = 0, h = 0; i < N; i++) {
    if (i == 1 || i == 3) {
      r[i] = rpc_open(i == 1 ? 0 : 1);
      continue;
    }
    int port;
    holes[h++] = ps_test_listen(0, &port);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    ck_assert_int_eq(ps_test_rpc_open(&r[i], addr, &eb), 0);
  }
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  ps_rpc_reply out[N];
  double t0 = ps_now_s();
  int failed = ps_rpc_call_all(r, N, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                               TIMEOUT_MS, out);
  double took_ms = (ps_now_s() - t0) * 1e3;
  ck_assert_int_eq(failed, 3);
  ck_assert_msg(took_ms < 2.0 * TIMEOUT_MS, "the round took %.0f ms", took_ms);
  for (int i = 0; i < N; i++) {
    if (i == 1 || i == 3) {
      ck_assert_msg(out[i].err == 0, "shard %d: %s", i, out[i].eb.msg);
      const Ps__StatusReply *st = (const Ps__StatusReply *)out[i].resp;
      ck_assert_uint_eq(st->shard, i == 1 ? 0u : 1u);
      ck_assert(out[i].ms < took_ms);
    } else {
      ck_assert_msg(out[i].err == PS_ETIMEDOUT || out[i].err == PS_EUNAVAIL, "hole %d: %s", i,
                    ps_errname(out[i].err));
      ck_assert_ptr_null(out[i].resp);
      ck_assert(out[i].ms >= TIMEOUT_MS * 0.9);
    }
  }
  ps_rpc_replies_free(out, N);
  for (int i = 0; i < N; i++) {
    ck_assert_ptr_null(out[i].resp);
    ps_rpc_close(r[i]);
  }
  for (int h = 0; h < 3; h++) close(holes[h]);
}
END_TEST

/* rpc_reset (re)submits M with replace, so its chunks restart from their
 * initial values at version 0. */
static void rpc_reset(ps_rpc *r, rpc_model *m) {
  ps_errbuf eb;
  Ps__SubmitModelReply *rep = NULL;
  float lr = m->opt.lr;
  m->opt.lr = lr * 2; /* a different spec first, so the replace drops the state */
  ck_assert_msg(rpc_submit(r, &m->spec, 1, &rep, &eb) == 0, "submit: %s", eb.msg);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  m->opt.lr = lr;
  ck_assert_msg(rpc_submit(r, &m->spec, 1, &rep, &eb) == 0, "submit: %s", eb.msg);
  ck_assert(rep->created);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
}

/* rpc_grads fills step STEP's gradients. */
static void rpc_grads(float *g, uint64_t n, int step) {
  for (uint64_t i = 0; i < n; i++) g[i] = (float)((i * 7 + (uint64_t)step) % 13) / 13.0f - 0.5f;
}

/* Settings of one end-to-end optimizer check (0: the shard's default). */
static const struct rpc_optim_case {
  const char *kind;
  float lr, wd, mu, beta1, beta2, eps, decay;
  uint32_t decay_steps;
  int inverse; /* staleness_weight inverse, every other push computed 2 versions back */
} rpc_optim_cases[] = {
    {"sgd", 0.1f, 0, 0, 0, 0, 0, 0, 0, 0},
    {"sgd", 0.1f, 0.01f, 0, 0, 0, 0, 0.5f, 3, 1},
    {"momentum", 0.05f, 0, 0.8f, 0, 0, 0, 0, 0, 0},
    {"momentum", 0.05f, 0.01f, 0, 0, 0, 0, 0, 0, 1},
    {"nesterov", 0.05f, 0.02f, 0.7f, 0, 0, 0, 0.9f, 2, 0},
    {"adagrad", 0.1f, 0, 0, 0, 0, 0, 0, 0, 0},
    {"adagrad", 0.1f, 0.01f, 0, 0, 0, 1e-3f, 0.8f, 4, 1},
    {"adam", 0.01f, 0, 0, 0, 0, 0, 0, 0, 0},
    {"adam", 0.01f, 0.01f, 0, 0.5f, 0.99f, 1e-3f, 0.7f, 2, 1},
};

/* One optimizer check in progress: the model, the chunks of shard 0 and
 * the reference state (weights, two slots) in double. */
typedef struct rpc_optim_run {
  const struct rpc_optim_case *k;
  char name[32];
  rpc_model m;
  uint32_t *ids;
  long nids;
  uint64_t n;
  double *w, *s1, *s2;
  float *g;
} rpc_optim_run;

/* rpc_optim_start submits case I (named NAME) through R, its layout over
 * NSHARDS shards, and takes shard 0's initial values as the reference's. */
static void rpc_optim_start(rpc_optim_run *o, ps_rpc *r, int i, const char *name, uint32_t nshards) {
  const struct rpc_optim_case *k = o->k = &rpc_optim_cases[i];
  snprintf(o->name, sizeof o->name, "%s", name);
  rpc_model_init(&o->m, o->name, k->lr);
  o->m.opt.kind = (char *)k->kind;
  o->m.opt.weight_decay = k->wd, o->m.opt.momentum = k->mu, o->m.opt.beta1 = k->beta1;
  o->m.opt.beta2 = k->beta2, o->m.opt.eps = k->eps, o->m.opt.lr_decay = k->decay;
  o->m.opt.lr_decay_steps = k->decay_steps;
  if (k->inverse) o->m.spec.staleness_weight = "inverse";
  ps_layout l;
  ps_errbuf eb;
  ck_assert_int_eq(ps_layout_build(&l, &o->m.spec, 1024, rpc_ids, nshards, &eb), 0);
  o->nids = ps_layout_shard_chunks(&l, 0, &o->ids, &o->n);
  ck_assert_int_gt(o->nids, 1);
  ps_layout_release(&l);
  Ps__SubmitModelReply *rep = NULL;
  ck_assert_msg(rpc_submit(r, &o->m.spec, 0, &rep, &eb) == 0, "submit: %s", eb.msg);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  size_t nv;
  uint64_t ver;
  int err;
  float *v = rpc_pull(r, o->name, o->ids, (size_t)o->nids, &nv, &ver, &err, &eb);
  ck_assert_msg(err == 0 && nv == o->n, "pull: %s", eb.msg);
  o->w = malloc(o->n * 3 * sizeof(double));
  o->s1 = o->w + o->n, o->s2 = o->s1 + o->n;
  o->g = malloc(o->n * sizeof(float));
  for (uint64_t j = 0; j < o->n; j++) o->w[j] = v[j], o->s1[j] = o->s2[j] = 0;
  free(v);
}

/* rpc_optim_steps pushes steps FROM..TO through R, each followed by a
 * pull that must match the reference (README's table; for sgd, momentum,
 * nesterov and adagrad PyTorch's definition too: torch.optim's first
 * momentum buffer is the gradient, mu * 0 + g; Adam in README's form,
 * epsilon added before the bias correction). */
static void rpc_optim_steps(rpc_optim_run *o, ps_rpc *r, int from, int to) {
  const struct rpc_optim_case *k = o->k;
  uint64_t n = o->n;
  double *w = o->w, *s1 = o->s1, *s2 = o->s2;
  float *g = o->g;
  int adam = !strcmp(k->kind, "adam"), ada = !strcmp(k->kind, "adagrad");
  int mom = !strcmp(k->kind, "momentum"), nes = !strcmp(k->kind, "nesterov");
  double mu = k->mu ? k->mu : 0.9, b1 = k->beta1 ? k->beta1 : 0.9;
  double b2 = k->beta2 ? k->beta2 : 0.999, eps = k->eps ? k->eps : ada ? 1e-10 : 1e-8;
  ps_errbuf eb;
  for (int t = from; t <= to; t++) {
    /* every other push computed on the version before last: tau 1 */
    uint64_t seen = k->inverse && t % 2 == 0 ? (uint64_t)t - 2 : (uint64_t)t - 1;
    double scale = 1.0 / (1.0 + (double)(t - 1 - seen) * k->inverse);
    Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
    req.model = o->name;
    req.chunk_ids = o->ids;
    req.n_chunk_ids = (size_t)o->nids;
    req.version = seen;
    for (uint64_t i = 0; i < n; i++) g[i] = (float)(0.5 * sin(0.37 * (double)i + t) + 0.1 * t);
    req.grads.data = (uint8_t *)g;
    req.grads.len = n * 4;
    Ps__PushReply *prep = NULL;
    ck_assert_msg(ps_rpc_call(r, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor,
                              (ProtobufCMessage **)&prep, 5000, &eb) == 0, "push %d: %s", t, eb.msg);
    protobuf_c_message_free_unpacked(&prep->base, NULL);
    double lr = k->lr * (k->decay ? pow(k->decay, (double)(t - 1) / k->decay_steps) : 1);
    for (uint64_t i = 0; i < n; i++) {
      double gi = (double)g[i] * scale + k->wd * w[i];
      if (mom || nes) {
        s1[i] = mu * s1[i] + gi;
        w[i] -= lr * (nes ? gi + mu * s1[i] : s1[i]);
      } else if (ada) {
        s1[i] += gi * gi;
        w[i] -= lr * gi / (sqrt(s1[i]) + eps);
      } else if (adam) {
        s1[i] = b1 * s1[i] + (1 - b1) * gi;
        s2[i] = b2 * s2[i] + (1 - b2) * gi * gi;
        w[i] -= lr * sqrt(1 - pow(b2, t)) / (1 - pow(b1, t)) * s1[i] / (sqrt(s2[i]) + eps);
      } else {
        w[i] -= lr * gi;
      }
    }
    size_t nv;
    uint64_t ver;
    int err;
    float *v = rpc_pull(r, o->name, o->ids, (size_t)o->nids, &nv, &ver, &err, &eb);
    ck_assert_msg(err == 0 && nv == n && ver == (uint64_t)t, "pull %d: %s", t, eb.msg);
    for (uint64_t i = 0; i < n; i++)
      ck_assert_msg(fabs(v[i] - w[i]) <= 1e-5 * (1 + fabs(w[i])),
                    "%s (%s) step %d element %llu: %.9g, reference %.9g", k->kind, o->name, t,
                    (unsigned long long)i, (double)v[i], w[i]);
    free(v);
  }
}

static void rpc_optim_release(rpc_optim_run *o) {
  free(o->g);
  free(o->w);
  free(o->ids);
}

/* Every optimizer through a real shard: submit, pushes over gRPC, pulls. */
START_TEST(test_rpc_optim_reference) {
  char name[32];
  snprintf(name, sizeof name, "opt%d", _i);
  ps_rpc *r = rpc_open(0);
  rpc_optim_run o;
  rpc_optim_start(&o, r, _i, name, 2);
  rpc_optim_steps(&o, r, 1, 8);
  rpc_optim_release(&o);
  ps_rpc_close(r);
}
END_TEST

/* The same pushes over gRPC and over the tensor channel give identical
 * bytes and versions: the model is run once over each transport from the
 * same initial state, and pulls over both transports agree. */
START_TEST(test_rpc_same_over_channel) {
  rpc_model m;
  rpc_model_init(&m, "both", 0.1f);
  ps_layout l;
  rpc_layout(&l, &m);
  ps_errbuf eb;
  ps_rpc *r = rpc_open(1);
  uint32_t *ids;
  uint64_t nelems;
  long n = ps_layout_shard_chunks(&l, 1, &ids, &nelems);
  ck_assert_int_gt(n, 0);
  float *g = malloc(nelems * sizeof(float));
  size_t nv;
  int err;
  uint64_t vg = 0, vc = 0;
  rpc_reset(r, &m);
  for (int step = 0; step < 3; step++) {
    rpc_grads(g, nelems, step);
    ck_assert_int_eq(rpc_push(r, "both", ids, (size_t)n, g, nelems * 4, &vg, &eb), 0);
  }
  float *a = rpc_pull(r, "both", ids, (size_t)n, &nv, &vg, &err, &eb);
  ck_assert_int_eq(err, 0);
  ck_assert_uint_eq(vg, 3);

  rpc_reset(r, &m);
  ps_chan_client *c;
  ck_assert_msg(ps_test_chan_connect(&c, rpc_chan_addr[1], "test", 5000, &eb) == 0, "connect: %s", eb.msg);
  for (int step = 0; step < 3; step++) {
    rpc_grads(g, nelems, step);
    ck_assert_msg(ps_test_push(c, "both", ids, (size_t)n, g, nelems, 0, (uint64_t)step, vc, &vc,
                               &eb) == 0, "chan push: %s", eb.msg);
    ck_assert_uint_eq(vc, (uint64_t)step + 1);
  }
  float *b = malloc(nelems * sizeof(float));
  ck_assert_msg(ps_test_pull(c, "both", ids, (size_t)n, b, nelems, 0, 3, &vc, &eb) == 0,
                "chan pull: %s", eb.msg);
  ck_assert_uint_eq(vc, 3);
  ck_assert_int_eq(memcmp(a, b, nelems * sizeof(float)), 0);
  /* A gRPC pull of the state the channel built gives the same bytes. */
  free(a);
  a = rpc_pull(r, "both", ids, (size_t)n, &nv, &vg, &err, &eb);
  ck_assert_int_eq(err, 0);
  ck_assert_uint_eq(vg, 3);
  ck_assert_int_eq(memcmp(a, b, nelems * sizeof(float)), 0);
  ps_chan_close(c);
  free(a);
  free(b);
  free(g);
  free(ids);
  ps_rpc_close(r);
  ps_layout_release(&l);
}
END_TEST

/* rpc_beat_chan sends heartbeat REQ over channel C; 0 with *OUT or the
 * error. */
static int rpc_beat_chan(ps_chan_client *c, const Ps__HeartbeatRequest *req,
                         Ps__HeartbeatReply **out, ps_errbuf *eb) {
  size_t n = ps__heartbeat_request__get_packed_size(req);
  uint8_t *buf = malloc(n + 1);
  ps__heartbeat_request__pack(req, buf);
  void *rb = NULL;
  size_t rn = 0;
  int err = ps_chan_beat(c, buf, n, &rb, &rn, eb);
  free(buf);
  if (err == 0) {
    *out = ps__heartbeat_reply__unpack(NULL, rn, rb);
    ck_assert_ptr_nonnull(*out);
  }
  free(rb);
  return err;
}

/* rpc_beat_req: a heartbeat of WORKER from HOST at CLOCK, no model. */
static Ps__HeartbeatRequest rpc_beat_req(uint32_t worker, const char *host, uint64_t clock) {
  Ps__HeartbeatRequest req = PS__HEARTBEAT_REQUEST__INIT;
  req.worker = worker;
  req.model = "";
  req.host = (char *)host;
  req.clock = clock;
  return req;
}

/* rpc_errors returns the errors counter of R's shard. */
static uint64_t rpc_errors(ps_rpc *r) {
  ps_errbuf eb;
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *st = NULL;
  ck_assert_msg(ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                            (ProtobufCMessage **)&st, 5000, &eb) == 0, "status: %s", eb.msg);
  uint64_t n = st->errors;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  return n;
}

/* A heartbeat over the channel (CHAN_BEAT, psw's per-step progress
 * reports) is answered as the gRPC call is: a lease, the same reply for
 * the same state; one the shard cannot decode, or one naming a worker at
 * or above the rank cap, is refused with an error (counted once in the
 * shard's errors, as a refused gRPC call is) and the connection keeps
 * serving. */
START_TEST(test_rpc_beat_over_channel) {
  ps_errbuf eb;
  ps_rpc *r = rpc_open(1);
  ps_chan_client *c = rpc_chan(1);
  Ps__HeartbeatRequest req = rpc_beat_req(1, "beat-test", 4);
  Ps__HeartbeatReply *g = NULL, *b = NULL;
  ck_assert_msg(ps_rpc_call(r, "/ps.Ps/Heartbeat", &req.base, &ps__heartbeat_reply__descriptor,
                            (ProtobufCMessage **)&g, 5000, &eb) == 0, "grpc beat: %s", eb.msg);
  ck_assert_msg(rpc_beat_chan(c, &req, &b, &eb) == 0, "chan beat: %s", eb.msg);
  ck_assert_uint_gt(b->lease_ms, 0);
  ck_assert_uint_eq(b->lease_ms, g->lease_ms);
  ck_assert_int_eq(b->expired, g->expired);
  ck_assert_int_eq(b->assigned, g->assigned);
  ck_assert_uint_eq(b->n_partitions, g->n_partitions);
  protobuf_c_message_free_unpacked(&g->base, NULL);
  protobuf_c_message_free_unpacked(&b->base, NULL);
  /* undecodable bytes: refused, the connection still serves */
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
  void *rb = NULL;
  size_t rn = 0;
  int err = ps_chan_beat(c, junk, sizeof junk, &rb, &rn, &eb);
  ck_assert_int_lt(err, 0);
  ck_assert_ptr_null(rb);
  /* a worker id past the rank cap: refused before anything is recorded,
   * and counted once in errors, as by gRPC */
  req.worker = 1u << 30;
  uint64_t e0 = rpc_errors(r);
  err = ps_rpc_call(r, "/ps.Ps/Heartbeat", &req.base, &ps__heartbeat_reply__descriptor,
                    (ProtobufCMessage **)&g, 5000, &eb);
  ck_assert_int_eq(err, PS_EINVAL);
  uint64_t e1 = rpc_errors(r);
  ck_assert_uint_eq(e1 - e0, 1);
  err = rpc_beat_chan(c, &req, &b, &eb);
  ck_assert_int_eq(err, PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "1073741824") != NULL, "message: %s", eb.msg);
  ck_assert_uint_eq(rpc_errors(r) - e1, 1);
  req.worker = 1;
  ck_assert_msg(rpc_beat_chan(c, &req, &b, &eb) == 0, "chan beat after refusals: %s", eb.msg);
  ck_assert_int_eq(b->expired, 0);
  protobuf_c_message_free_unpacked(&b->base, NULL);
  ps_chan_close(c);
  ps_rpc_close(r);
}
END_TEST

/* A push that says it sums several workers (an aggregator's, ps_req.summed)
 * but names one of them twice is refused whole: nothing applied, the
 * version unchanged; the same sum with each worker once is applied. */
START_TEST(test_rpc_summed_twice) {
  rpc_model m;
  ps_layout l;
  ps_rpc *r = rpc_fresh(&m, "summed", &l);
  ps_chan_client *c = rpc_chan(0);
  ps_errbuf eb;
  uint32_t *ids;
  uint64_t nelems, ver0, ver;
  size_t nv;
  int err;
  long n = ps_layout_shard_chunks(&l, 0, &ids, &nelems);
  ck_assert_int_gt(n, 0);
  float *before = rpc_pull(r, "summed", ids, (size_t)n, &nv, &ver0, &err, &eb);
  ck_assert_int_eq(err, 0);
  float *g = calloc(nelems, sizeof(float));
  g[0] = 1;
  /* workers 0 and 1 only: test_rpc_conditional_leave needs 2 and 3 unheard of here */
  static const uint32_t twice[][5] = {{0, 0}, {1, 0, 1}, {0, 0, 0, 0}, {0, 1, 0, 1, 0}};
  static const size_t ntwice[] = {2, 3, 4, 5}; /* 5: longer than the world's 4 ids */
  for (size_t i = 0; i < 4; i++) {
    ps_req q = {.model = "summed", .ids = ids, .nids = (size_t)n, .worker = twice[i][0],
                .grads = g, .nbytes = nelems * 4, .summed = twice[i], .nsummed = ntwice[i]};
    ck_assert_int_eq(ps_chan_push(c, &q, &ver, &eb), PS_EINVAL);
    ck_assert_msg(strstr(eb.msg, "twice"), "case %zu: %s", i, eb.msg);
  }
  float *after = rpc_pull(r, "summed", ids, (size_t)n, &nv, &ver, &err, &eb);
  ck_assert_int_eq(err, 0);
  ck_assert_uint_eq(ver, ver0);
  ck_assert_int_eq(memcmp(before, after, nelems * sizeof(float)), 0);
  static const uint32_t once[] = {1, 0};
  ps_req q = {.model = "summed", .ids = ids, .nids = (size_t)n, .worker = 0, .grads = g,
              .nbytes = nelems * 4, .summed = once, .nsummed = 2};
  ck_assert_msg(ps_chan_push(c, &q, &ver, &eb) == 0, "a sum of distinct workers: %s", eb.msg);
  ck_assert_uint_eq(ver, ver0 + 1);
  free(before);
  free(after);
  free(g);
  free(ids);
  ps_chan_close(c);
  ps_rpc_close(r);
  ps_layout_release(&l);
}
END_TEST

/* A heartbeat whose rates are NaN, infinite or negative (a hostile or
 * buggy client) is refused over gRPC and the channel alike, records
 * nothing, and ListWorkers (what psctl status --json prints, where NaN is
 * not JSON) holds only finite rates. */
START_TEST(test_rpc_beat_rates_finite) {
  ps_errbuf eb;
  ps_rpc *r = rpc_open(1);
  ps_chan_client *c = rpc_chan(1);
  Ps__HeartbeatRequest req = rpc_beat_req(2, "rates-test", 3);
  req.steps_per_s = 2.5f;
  req.blocked_share = 0.25f;
  Ps__HeartbeatReply *b = NULL;
  ck_assert_msg(rpc_beat_chan(c, &req, &b, &eb) == 0, "good beat: %s", eb.msg);
  protobuf_c_message_free_unpacked(&b->base, NULL);
  static const float bad[][2] = {{NAN, 0.5f}, {INFINITY, 0.5f}, {-1.0f, 0.5f}, {1.0f, NAN},
                                 {1.0f, INFINITY}, {1.0f, -0.5f}, {-INFINITY, -INFINITY}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    req.steps_per_s = bad[i][0];
    req.blocked_share = bad[i][1];
    const char *field = isfinite(bad[i][0]) && bad[i][0] >= 0 ? "blocked_share" : "steps_per_s";
    Ps__HeartbeatReply *g = NULL;
    ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Heartbeat", &req.base, &ps__heartbeat_reply__descriptor,
                                 (ProtobufCMessage **)&g, 5000, &eb),
                     PS_EINVAL);
    ck_assert_msg(strstr(eb.msg, field) && strstr(eb.msg, "not a finite number"), "case %zu: %s",
                  i, eb.msg);
    ck_assert_int_eq(rpc_beat_chan(c, &req, &b, &eb), PS_EINVAL);
    ck_assert_msg(strstr(eb.msg, field), "case %zu over the channel: %s", i, eb.msg);
  }
  Ps__ListWorkersRequest lr = PS__LIST_WORKERS_REQUEST__INIT;
  Ps__ListWorkersReply *l = NULL;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/ListWorkers", &lr.base,
                               &ps__list_workers_reply__descriptor, (ProtobufCMessage **)&l, 5000,
                               &eb),
                   0);
  int seen = 0;
  for (size_t i = 0; i < l->n_workers; i++) {
    const Ps__WorkerInfo *w = l->workers[i];
    ck_assert_msg(isfinite(w->steps_per_s) && isfinite(w->blocked_share),
                  "worker %u: steps/s %g, blocked %g", w->worker, (double)w->steps_per_s,
                  (double)w->blocked_share);
    if (w->worker == 2) {
      seen = 1;
      ck_assert_float_eq(w->steps_per_s, 2.5f); /* the good beat's, unchanged */
      ck_assert_float_eq(w->blocked_share, 0.25f);
    }
  }
  ck_assert(seen);
  protobuf_c_message_free_unpacked(&l->base, NULL);
  ps_chan_close(c);
  ps_rpc_close(r);
}
END_TEST

/* An aggregator's leave for a local worker (leave_if_silent_ms, DESIGN.md
 * "Hierarchy"): refused (stayed, nothing changed) while the worker spoke
 * to the shard within that time, for a worker the shard never heard of,
 * and for one gone already; acted on once the worker was silent that
 * long (it is DEAD then). */
START_TEST(test_rpc_conditional_leave) {
  ps_errbuf eb;
  int port = atoi(strrchr(rpc_addr[0], ':') + 1);
  ps_chan_client *c = rpc_chan(0);
  Ps__HeartbeatRequest req = PS__HEARTBEAT_REQUEST__INIT;
  req.worker = 3;
  req.model = "";
  Ps__HeartbeatReply *b = NULL;
  ck_assert_msg(rpc_beat_chan(c, &req, &b, &eb) == 0, "beat: %s", eb.msg);
  ck_assert_int_eq(b->stayed, 0);
  protobuf_c_message_free_unpacked(&b->base, NULL);
  ck_assert_int_eq(ps_test_worker_states(port, 3, "ALIVE"), 1);
  Ps__HeartbeatRequest lv = PS__HEARTBEAT_REQUEST__INIT;
  lv.worker = 3;
  lv.model = "";
  lv.leaving = 1;
  lv.leave_if_silent_ms = 600000; /* it spoke just now */
  ck_assert_msg(rpc_beat_chan(c, &lv, &b, &eb) == 0, "leave: %s", eb.msg);
  ck_assert_int_eq(b->stayed, 1);
  ck_assert_int_eq(b->expired, 0); /* an aggregator may ask again */
  protobuf_c_message_free_unpacked(&b->base, NULL);
  ck_assert_int_eq(ps_test_worker_states(port, 3, "ALIVE"), 1);
  lv.worker = 2; /* never heard of */
  lv.leave_if_silent_ms = 1;
  ck_assert_msg(rpc_beat_chan(c, &lv, &b, &eb) == 0, "leave: %s", eb.msg);
  ck_assert_int_eq(b->stayed, 1);
  ck_assert_int_eq(b->expired, 1); /* nothing to leave */
  protobuf_c_message_free_unpacked(&b->base, NULL);
  ck_assert_int_eq(ps_test_worker_states(port, 2, "DEAD"), 0);
  ck_assert_int_eq(ps_test_worker_states(port, 2, "ALIVE"), 0);
  usleep(50000); /* worker 3 silent for at least 50 ms now */
  lv.worker = 3;
  lv.leave_if_silent_ms = 20;
  ck_assert_msg(rpc_beat_chan(c, &lv, &b, &eb) == 0, "leave: %s", eb.msg);
  ck_assert_int_eq(b->stayed, 0);
  protobuf_c_message_free_unpacked(&b->base, NULL);
  ck_assert_int_eq(ps_test_worker_states(port, 3, "DEAD"), 1);
  ck_assert_msg(rpc_beat_chan(c, &lv, &b, &eb) == 0, "leave: %s", eb.msg);
  ck_assert_int_eq(b->stayed, 1); /* gone already */
  ck_assert_int_eq(b->expired, 1);
  protobuf_c_message_free_unpacked(&b->base, NULL);
  ps_chan_close(c);
}
END_TEST

/* rpc_leave_silent sends over C an aggregator's conditional leave for
 * WORKER (leave_if_silent_ms SILENT_MS) and returns the reply's stayed. */
static int rpc_leave_silent(ps_chan_client *c, uint32_t worker, uint32_t silent_ms) {
  ps_errbuf eb;
  Ps__HeartbeatRequest lv = PS__HEARTBEAT_REQUEST__INIT;
  lv.worker = worker;
  lv.model = "";
  lv.leaving = 1;
  lv.leave_if_silent_ms = silent_ms;
  Ps__HeartbeatReply *b = NULL;
  ck_assert_msg(rpc_beat_chan(c, &lv, &b, &eb) == 0, "leave: %s", eb.msg);
  int stayed = (int)b->stayed;
  protobuf_c_message_free_unpacked(&b->base, NULL);
  return stayed;
}

/* The hierarchy's heal race (psd_agg.h invariant 6): a worker that failed
 * over to the roots opened its own channel connection, whose hello names
 * it, and has not asked anything on it yet when its aggregator's queued
 * conditional leave arrives: the hello counts as the worker speaking, so
 * the worker stays.  A hello that names no worker (psctl, an aggregator,
 * an older client) counts for nobody: the silent worker leaves, as
 * before. */
START_TEST(test_rpc_leave_after_worker_hello) {
  enum { SILENCE_MS = 3000, LEAVE_IF_MS = 2000 }; /* under the 5 s lease; a 2 s margin for a loaded loop */
  ps_errbuf eb;
  int port = atoi(strrchr(rpc_addr[0], ':') + 1);
  ps_chan_client *agg = rpc_chan(0); /* the aggregator's link, naming nobody */
  Ps__HeartbeatRequest req = PS__HEARTBEAT_REQUEST__INIT;
  req.worker = 2;
  req.model = "";
  req.rejoin = 1; /* whatever an earlier test left of worker 2 */
  Ps__HeartbeatReply *b = NULL;
  ck_assert_msg(rpc_beat_chan(agg, &req, &b, &eb) == 0, "beat: %s", eb.msg);
  protobuf_c_message_free_unpacked(&b->base, NULL);
  ck_assert_int_eq(ps_test_worker_states(port, 2, "ALIVE"), 1);
  usleep(SILENCE_MS * 1000);
  ps_chan_client *w = NULL;
  ck_assert_msg(ps_test_chan_connect_worker(&w, rpc_chan_addr[0], "test", 0, 0, 2, 5000, &eb) == 0,
                "worker 2's connection: %s", eb.msg);
  ck_assert_msg(rpc_leave_silent(agg, 2, LEAVE_IF_MS), "worker 2 removed although its own "
                "connection's hello just named it");
  ck_assert_int_eq(ps_test_worker_states(port, 2, "ALIVE"), 1);
  usleep(SILENCE_MS * 1000);
  ps_chan_client *anon = rpc_chan(0);
  ck_assert_int_eq(rpc_leave_silent(agg, 2, LEAVE_IF_MS), 0);
  ck_assert_int_eq(ps_test_worker_states(port, 2, "DEAD"), 1);
  ps_chan_close(anon);
  ps_chan_close(w);
  ps_chan_close(agg);
}
END_TEST

/* rpc_encode encodes gradients G of the chunks IDS of L as a push in
 * CODEC (each chunk on its own, in its chunk codec); returns the payload
 * (caller frees) and its size in *NBYTES. */
static uint8_t *rpc_encode(const ps_layout *l, const uint32_t *ids, size_t n, const float *g,
                           ps_codec_id codec, uint64_t *nbytes) {
  *nbytes = ps_layout_payload_bytes(l, ids, n, codec, 1);
  uint8_t *buf = malloc(*nbytes + 1), *p = buf;
  for (size_t i = 0; i < n; i++) {
    uint32_t len = l->chunks[ids[i]].len;
    ps_codec_id c = ps_layout_chunk_codec(l, ids[i], codec, 1);
    ps_codec_encode(c, g, len, l->topk, p);
    p += ps_codec_size(c, len, l->topk);
    g += len;
  }
  return buf;
}

/* rpc_push_codec pushes encoded gradients over gRPC. */
static int rpc_push_codec(ps_rpc *r, const char *model, const uint32_t *ids, size_t n,
                          const void *buf, size_t nbytes, ps_codec_id codec, ps_errbuf *eb) {
  Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
  req.model = (char *)model;
  req.chunk_ids = (uint32_t *)ids;
  req.n_chunk_ids = n;
  req.grads.data = (uint8_t *)buf;
  req.grads.len = nbytes;
  req.codec = codec;
  Ps__PushReply *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor,
                        (ProtobufCMessage **)&rep, 5000, eb);
  if (err == 0) protobuf_c_message_free_unpacked(&rep->base, NULL);
  return err;
}

/* rpc_pull_codec pulls over gRPC in CODEC; returns the payload (caller
 * frees) and its size in *NBYTES, or NULL with *ERR. */
static uint8_t *rpc_pull_codec(ps_rpc *r, const char *model, const uint32_t *ids, size_t n,
                               ps_codec_id codec, size_t *nbytes, int *err, ps_errbuf *eb) {
  Ps__PullRequest req = PS__PULL_REQUEST__INIT;
  req.model = (char *)model;
  req.chunk_ids = (uint32_t *)ids;
  req.n_chunk_ids = n;
  req.codec = codec;
  Ps__PullReply *rep = NULL;
  *err = ps_rpc_call(r, "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor,
                     (ProtobufCMessage **)&rep, 5000, eb);
  if (*err < 0) return NULL;
  ck_assert_uint_eq(rep->codec, codec);
  uint8_t *v = malloc(rep->values.len + 1);
  memcpy(v, rep->values.data, rep->values.len);
  *nbytes = rep->values.len;
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return v;
}

/* Every codec: the same encoded pushes over gRPC and over the channel
 * give the same bytes, and a compressed pull (fp16, int8) gives the same
 * bytes on both planes, of the size ps_layout_payload_bytes says. */
START_TEST(test_rpc_codec_same_over_channel) {
  ps_codec_id codec = (ps_codec_id)_i;
  rpc_model m;
  rpc_model_init(&m, "codec", 0.1f);
  m.spec.topk = 0.1f;
  m.spec.codec = (char *)ps_codec_name(codec); /* the shard takes no other (nor fp32) */
  ps_layout l;
  rpc_layout(&l, &m);
  ps_errbuf eb;
  ps_rpc *r = rpc_open(1);
  uint32_t *ids;
  uint64_t nelems, nbytes;
  long n = ps_layout_shard_chunks(&l, 1, &ids, &nelems);
  ck_assert_int_gt(n, 0);
  float *g = malloc(nelems * sizeof(float));
  ps_codec_id pull = codec == PS_CODEC_FP16 ? PS_CODEC_FP16 : PS_CODEC_INT8;
  uint64_t pbytes = ps_layout_payload_bytes(&l, ids, (size_t)n, pull, 0);
  size_t na, nv;
  int err;
  rpc_reset(r, &m);
  for (int step = 0; step < 3; step++) {
    rpc_grads(g, nelems, step);
    uint8_t *buf = rpc_encode(&l, ids, (size_t)n, g, codec, &nbytes);
    ck_assert_msg(rpc_push_codec(r, "codec", ids, (size_t)n, buf, nbytes, codec, &eb) == 0,
                  "grpc push %s: %s", ps_codec_name(codec), eb.msg);
    free(buf);
  }
  uint64_t vg;
  float *a = rpc_pull(r, "codec", ids, (size_t)n, &nv, &vg, &err, &eb);
  ck_assert_int_eq(err, 0);
  uint8_t *pa = rpc_pull_codec(r, "codec", ids, (size_t)n, pull, &na, &err, &eb);
  ck_assert_int_eq(err, 0);
  ck_assert_uint_eq(na, pbytes);

  rpc_reset(r, &m);
  ps_chan_client *c;
  ck_assert_msg(ps_test_chan_connect(&c, rpc_chan_addr[1], "test", 5000, &eb) == 0, "connect: %s", eb.msg);
  uint64_t vc = 0;
  for (int step = 0; step < 3; step++) {
    rpc_grads(g, nelems, step);
    uint8_t *buf = rpc_encode(&l, ids, (size_t)n, g, codec, &nbytes);
    ps_req q = {.model = "codec", .ids = ids, .nids = (size_t)n, .clock = (uint64_t)step,
                .codec = codec, .grads = buf, .nbytes = nbytes};
    ck_assert_msg(ps_chan_push(c, &q, &vc, &eb) == 0, "chan push %s: %s", ps_codec_name(codec),
                  eb.msg);
    free(buf);
  }
  float *b = malloc(nelems * sizeof(float));
  ck_assert_int_eq(ps_test_pull(c, "codec", ids, (size_t)n, b, nelems, 0, 3, &vc, &eb), 0);
  ck_assert_int_eq(memcmp(a, b, nelems * sizeof(float)), 0);
  uint8_t *pb = malloc(pbytes);
  ps_req q = {.model = "codec", .ids = ids, .nids = (size_t)n, .codec = pull, .out = pb,
              .nbytes = pbytes};
  ck_assert_msg(ps_chan_pull(c, &q, &vc, &eb) == 0, "chan pull: %s", eb.msg);
  ck_assert_int_eq(memcmp(pa, pb, pbytes), 0);
  /* the compressed pull decodes to the values within the codec's error */
  float *d = malloc(nelems * sizeof(float)), *dp = d, *bp = b;
  const uint8_t *in = pb;
  for (long i = 0; i < n; i++) {
    uint32_t len = l.chunks[ids[i]].len;
    ps_codec_id cc = ps_layout_chunk_codec(&l, ids[i], pull, 0);
    ps_codec_decode(cc, in, len, l.topk, dp);
    float amax = 0;
    for (uint32_t k = 0; k < len; k++) amax = fabsf(bp[k]) > amax ? fabsf(bp[k]) : amax;
    for (uint32_t k = 0; k < len; k++)
      ck_assert(fabsf(dp[k] - bp[k]) <= (cc == PS_CODEC_INT8 ? amax / 254 * 1.001f
                                                             : fabsf(bp[k]) * 0x1p-11f + 1e-7f));
    in += ps_codec_size(cc, len, l.topk);
    dp += len, bp += len;
  }
  ps_chan_close(c);
  free(d);
  free(a);
  free(b);
  free(pa);
  free(pb);
  free(g);
  free(ids);
  ps_rpc_close(r);
  ps_layout_release(&l);
}
END_TEST

/* rpc_codec_refused pushes BUF (NBYTES in CODEC) over both planes and
 * checks that each refuses it with PS_EINVAL and a message containing
 * WANT, that nothing changed and that the shard still serves. */
static void rpc_codec_refused(ps_rpc *r, ps_chan_client *c, const uint32_t *ids, size_t n,
                              const void *buf, uint64_t nbytes, uint32_t codec, const float *before,
                              uint64_t nelems, const char *want) {
  ps_errbuf eb;
  int err = rpc_push_codec(r, "bad", ids, n, buf, nbytes, (ps_codec_id)codec, &eb);
  ck_assert_msg(err == PS_EINVAL && strstr(eb.msg, want), "grpc: %d %s (want '%s')", err, eb.msg,
                want);
  ps_req q = {.model = "bad", .ids = ids, .nids = n, .codec = (ps_codec_id)codec, .grads = buf,
              .nbytes = nbytes};
  uint64_t v;
  err = ps_chan_push(c, &q, &v, &eb);
  ck_assert_msg(err == PS_EINVAL && strstr(eb.msg, want), "chan: %d %s (want '%s')", err, eb.msg,
                want);
  float *after = malloc(nelems * sizeof(float));
  ck_assert_int_eq(ps_test_pull(c, "bad", ids, n, after, nelems, 0, 0, &v, &eb), 0);
  ck_assert_int_eq(memcmp(before, after, nelems * sizeof(float)), 0);
  ck_assert_uint_eq(v, 0);
  free(after);
}

/* Bad encoded input on both planes: a length that does not match the
 * codec and chunks, an unknown codec, a NaN or Inf scale, topk indices out
 * of range or repeated, and a pull codec meant for gradients: each is a
 * clear error, nothing changes, the shard keeps serving. */
START_TEST(test_rpc_codec_bad_input) {
  rpc_model m;
  rpc_model_init(&m, "bad", 0.1f);
  ps_layout l;
  rpc_layout(&l, &m);
  ps_errbuf eb;
  ps_rpc *r = rpc_open(1);
  rpc_reset(r, &m);
  /* one chunk of w: 1024 elements */
  uint32_t id = 0;
  while (l.chunks[id].shard != 1 || l.chunks[id].tensor != 0 || l.chunks[id].len != 1024) id++;
  float g[1024], before[1024];
  rpc_grads(g, 1024, 0);
  ps_chan_client *c;
  ck_assert_msg(ps_test_chan_connect(&c, rpc_chan_addr[1], "test", 5000, &eb) == 0, "connect: %s", eb.msg);
  uint64_t v;
  ck_assert_int_eq(ps_test_pull(c, "bad", &id, 1, before, 1024, 0, 0, &v, &eb), 0);
  uint8_t buf[8192];
  /* a codec the model does not push in (a worker from before a replace) */
  ps_codec_encode(PS_CODEC_FP16, g, 1024, 0, buf);
  rpc_codec_refused(r, c, &id, 1, buf, 2048, PS_CODEC_FP16, before, 1024,
                    "came in fp16, but its pushes are fp32;");
  m.spec.codec = "int8";
  rpc_reset(r, &m); /* the same seed: the same values before */
  rpc_codec_refused(r, c, &id, 1, buf, 2048, PS_CODEC_FP16, before, 1024,
                    "came in fp16, but its pushes are int8 or fp32;");
  ps_codec_encode(PS_CODEC_INT8, g, 1024, 0, buf);
  rpc_codec_refused(r, c, &id, 1, buf, 1027, PS_CODEC_INT8, before, 1024, "its 1024 elements need 1028");
  rpc_codec_refused(r, c, &id, 1, buf, 1028, 9, before, 1024, "unknown codec 9");
  float nan = NAN, inf = INFINITY;
  memcpy(buf, &nan, 4);
  rpc_codec_refused(r, c, &id, 1, buf, 1028, PS_CODEC_INT8, before, 1024, "int8 scale nan");
  m.spec.codec = "onebit";
  rpc_reset(r, &m);
  ps_codec_encode(PS_CODEC_ONEBIT, g, 1024, 0, buf);
  memcpy(buf, &inf, 4);
  rpc_codec_refused(r, c, &id, 1, buf, 132, PS_CODEC_ONEBIT, before, 1024, "onebit scale inf");
  m.spec.codec = "topk";
  rpc_reset(r, &m);
  ps_codec_encode(PS_CODEC_TOPK, g, 1024, l.topk, buf); /* k = 11 */
  uint32_t idx = 1024;
  memcpy(buf + 4, &idx, 4);
  rpc_codec_refused(r, c, &id, 1, buf, 88, PS_CODEC_TOPK, before, 1024, "out of range");
  memcpy(buf + 4, buf, 4);
  rpc_codec_refused(r, c, &id, 1, buf, 88, PS_CODEC_TOPK, before, 1024, "repeated");
  /* a pull in a gradient codec */
  uint8_t out[1024];
  ps_req q = {.model = "bad", .ids = &id, .nids = 1, .codec = PS_CODEC_ONEBIT, .out = out,
              .nbytes = 132};
  ck_assert_int_eq(ps_chan_pull(c, &q, &v, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "is for gradients"), "%s", eb.msg);
  size_t nb;
  int err;
  ck_assert_ptr_null(rpc_pull_codec(r, "bad", &id, 1, PS_CODEC_TOPK, &nb, &err, &eb));
  ck_assert_int_eq(err, PS_EINVAL);
  /* still serving: a good compressed push applies */
  m.spec.codec = "int8";
  rpc_reset(r, &m);
  ps_codec_encode(PS_CODEC_INT8, g, 1024, 0, buf);
  ck_assert_int_eq(rpc_push_codec(r, "bad", &id, 1, buf, 1028, PS_CODEC_INT8, &eb), 0);
  ps_chan_close(c);
  ps_rpc_close(r);
  ps_layout_release(&l);
}
END_TEST

/* rc_status calls Status on R (1 s at most); on a failure it resets the
 * channel's backoff, as a worker does before each retry. */
static int rc_status(ps_rpc *r, ps_errbuf *eb) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  ProtobufCMessage *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor, &rep, 1000,
                        eb);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  if (err < 0) ps_rpc_reset_backoff(r);
  return err;
}

/* A shard killed (SIGKILL) and started again on the same port is reached
 * by a client calling every 100 ms (resetting the backoff after each
 * failure, as workers do) within 3 s of its port opening (90-170 ms
 * measured).  gRPC's default backup poll (5 s) made it 5 to 10 s: a channel in
 * TRANSIENT_FAILURE fails calls without polling, so the end of each
 * connection attempt was seen only at a backup poll (ps_grpc_init). */
/* rc_one starts one shard (cluster file EXTRA as ps_test_cluster_yaml's)
 * in a new directory, its file in *YAML, its log in LOG (600 bytes) and
 * its gRPC port in *GP; waits for it to listen and returns its PID with
 * a connection to it in *R. */
static pid_t rc_one(const char *extra, const char **yaml, char *log, int *gp, ps_rpc **r) {
  const char *dir = ps_test_tmpdir();
  int cp;
  char addr[64];
  *yaml = ps_test_cluster_yaml(dir, 1, extra, gp, &cp);
  snprintf(log, 600, "%s/psd.log", dir);
  snprintf(addr, sizeof addr, "127.0.0.1:%d", *gp);
  pid_t pid = ps_test_psd(*yaml, 0, log, NULL);
  ck_assert_msg(ps_test_wait_port(cp, 15000) == 0 && ps_test_wait_port(*gp, 5000) == 0,
                "psd did not start; see %s", log);
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(r, addr, &eb), 0);
  return pid;
}

START_TEST(test_rpc_reconnect_after_restart) {
  enum { BOUND_MS = 3000, LIMIT_MS = 30000 }; /* before: 5 to 10 s */
  const char *yaml;
  char log[600];
  int gp;
  ps_rpc *r;
  ps_errbuf eb;
  pid_t pid = rc_one(NULL, &yaml, log, &gp, &r);
  ck_assert_msg(rc_status(r, &eb) == 0, "status: %s", eb.msg);
  ck_assert_int_ne(ps_test_stop(pid, SIGKILL, 10000), -1);
  /* down for 1.5 s, called all along: the channel fails (Connection refused) */
  int fails = 0;
  for (int64_t end = ps_test_now_ms() + 1500; ps_test_now_ms() < end; usleep(100000))
    fails += rc_status(r, &eb) < 0;
  ck_assert_int_gt(fails, 0);
  pid = ps_test_psd(yaml, 0, log, NULL);
  int64_t start = ps_test_now_ms(), open_at = 0, ok_at = 0;
  while (!ok_at && ps_test_now_ms() - start < LIMIT_MS) {
    if (!open_at && ps_test_wait_port(gp, 0) == 0) open_at = ps_test_now_ms();
    if (open_at && rc_status(r, &eb) == 0) ok_at = ps_test_now_ms();
    if (!ok_at) usleep(100000);
  }
  ck_assert_msg(open_at, "the restarted psd did not open its port; see %s", log);
  ck_assert_msg(ok_at && ok_at - open_at <= BOUND_MS,
                "first answer %lld ms after the port opened (bound %d ms; %s): %s",
                ok_at ? (long long)(ok_at - open_at) : -1LL, BOUND_MS,
                ok_at ? "late" : "never", eb.msg);
  ps_rpc_close(r);
  ck_assert_int_ne(ps_test_stop(pid, SIGTERM, 10000), -1);
}
END_TEST

/* The optimizer state, steps (lr decay, Adam's bias correction) and
 * version (staleness weights) survive a restart: after a SIGTERM under
 * periodic (a snapshot at shutdown; _i 0) or a SIGKILL under sync (the
 * redo log replayed; _i 1) training carries on as if none happened. */
START_TEST(test_rpc_optim_restart) {
  const char *dir = ps_test_tmpdir();
  int gp, cp;
  const char *yaml = _i ? ps_test_sync_yaml(dir, 1, NULL, &gp, &cp)
                        : ps_test_cluster_yaml(dir, 1, NULL, &gp, &cp);
  char log[600], addr[64];
  snprintf(log, sizeof log, "%s/psd.log", dir);
  snprintf(addr, sizeof addr, "127.0.0.1:%d", gp);
  static const int cases[] = {4, 8}; /* nesterov with lr decay; adam, everything */
  rpc_optim_run o[2];
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  ps_rpc *r = NULL;
  ps_errbuf eb;
  for (int round = 0; round < 2; round++) {
    ck_assert_msg(ps_test_wait_port(cp, 15000) == 0 && ps_test_wait_port(gp, 5000) == 0,
                  "psd did not start; see %s", log);
    ck_assert_int_eq(ps_test_rpc_open(&r, addr, &eb), 0);
    for (int c = 0; c < 2; c++) {
      if (!round) rpc_optim_start(&o[c], r, cases[c], c ? "adam" : "nesterov", 1);
      rpc_optim_steps(&o[c], r, round ? 6 : 1, round ? 10 : 5);
    }
    ps_rpc_close(r);
    ck_assert_int_ne(ps_test_stop(pid, round || !_i ? SIGTERM : SIGKILL, 10000), -1);
    if (!round) pid = ps_test_psd(yaml, 0, log, NULL);
  }
  for (int c = 0; c < 2; c++) rpc_optim_release(&o[c]);
}
END_TEST

/* rpc_user_timeouts scans this process's TCP sockets connected to PORT
 * (loopback): how many, and in *MIN the least TCP_USER_TIMEOUT of them. */
static int rpc_user_timeouts(int port, unsigned *min) {
  int n = 0;
  *min = ~0u;
  DIR *d = opendir("/proc/self/fd");
  ck_assert_ptr_nonnull(d);
  for (struct dirent *e; (e = readdir(d));) {
    int fd = atoi(e->d_name);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (e->d_name[0] == '.' || fd == dirfd(d) || getpeername(fd, (struct sockaddr *)&ss, &sl) < 0)
      continue;
    int peer = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
               : ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) : -1;
    unsigned ut = 0;
    socklen_t ul = sizeof ut;
    if (peer != port || getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, &ul) < 0) continue;
    n++;
    if (ut < *min) *min = ut;
  }
  closedir(d);
  return n;
}

/* A gRPC connection that a network cut left unacknowledged is given up
 * by the kernel after PS_RPC_DEAD_MS (TCP_USER_TIMEOUT), as a tensor
 * channel is: without it a worker's heartbeats after the heal waited for
 * TCP's retransmission backoff (netlab: no answer on the old connection
 * for 6 s after the heal, every call timing out), and a worker that the
 * coordinator had put out of its clock table learnt it only then. */
START_TEST(test_rpc_dead_connection_bound) {
  ps_rpc *r = rpc_open(0);
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *st = NULL;
  ps_errbuf eb;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                               (ProtobufCMessage **)&st, 5000, &eb), 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  int port = atoi(strrchr(rpc_addr[0], ':') + 1);
  unsigned min;
  int n = rpc_user_timeouts(port, &min);
  ck_assert_msg(n > 0, "no connection to %s found in /proc/self/fd", rpc_addr[0]);
  ck_assert_msg(min == PS_RPC_DEAD_MS, "a gRPC connection to %s has TCP_USER_TIMEOUT %u ms, "
                "not %d", rpc_addr[0], min, PS_RPC_DEAD_MS);
  ps_rpc_close(r);
}
END_TEST

/* rpc_rss returns PID's resident memory in bytes (-1: unknown). */
static int64_t rpc_rss(pid_t pid) {
  char path[64], line[256];
  int64_t kb = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) kb = atoll(line + 6);
  if (f) fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

/* A model of 100,000 one-element tensors submitted over gRPC takes about
 * what the memory budget counts for it (about 290 bytes a tensor, see
 * psd_store's test_submit_budget_tiny_tensors): the shard's resident
 * memory grew by about 490 bytes a tensor, malloc keeping the pages of
 * the submit's transient copies (the request, unpacked) below what the
 * model kept, so a budget-sized shard went a good deal over its budget. */
START_TEST(test_rpc_submit_tiny_tensors_rss) {
#ifdef __SANITIZE_ADDRESS__
  PS_SKIP("ASan's allocator pads and keeps freed memory");
#endif
  enum { N = 100000 };
  const char *yaml;
  char log[600];
  int gp;
  ps_rpc *r;
  pid_t pid = rc_one("limits:\n  max_request_bytes: 16777216\n", &yaml, log, &gp, &r);
  ps_test_tiny m;
  ps_test_tiny_make(&m, N);
  int64_t before = rpc_rss(pid);
  ps_test_submit(r, ps_test_tiny_spec(&m, "tiny"), 0, 60000);
  int64_t after = rpc_rss(pid);
  ck_assert_int_ge(before, 0);
  /* 290 counted, and a little more (RocksDB's memtable, the heap's slack) */
  ck_assert_msg(after - before < (int64_t)N * 380,
                "the shard grew by %" PRId64 " bytes, %" PRId64 " a tensor (the budget counts "
                "about 290); see %s", after - before, (after - before) / N, log);
  ps_rpc_close(r);
  ck_assert_int_ne(ps_test_stop(pid, SIGTERM, 15000), -1);
  ps_test_tiny_free(&m);
}
END_TEST

Suite *psd_rpc_suite(void) {
  Suite *s = suite_create("psd_rpc");
  TCase *tc = tcase_create("grpc");
  tcase_set_timeout(tc, 60);
  tcase_add_unchecked_fixture(tc, rpc_up, rpc_down);
  tcase_add_test(tc, test_rpc_submit_push_pull);
  tcase_add_test(tc, test_rpc_bad_input);
  tcase_add_test(tc, test_rpc_hostile_ids_and_names);
  tcase_add_test(tc, test_rpc_status_health);
  tcase_add_test(tc, test_rpc_call_all_holes);
  tcase_add_test(tc, test_rpc_same_over_channel);
  tcase_add_test(tc, test_rpc_beat_over_channel);
  tcase_add_test(tc, test_rpc_beat_rates_finite);
  tcase_add_test(tc, test_rpc_summed_twice);
  tcase_add_test(tc, test_rpc_conditional_leave);
  tcase_add_test(tc, test_rpc_leave_after_worker_hello);
  tcase_add_loop_test(tc, test_rpc_codec_same_over_channel, PS_CODEC_FP16, PS_CODEC_N);
  tcase_add_test(tc, test_rpc_codec_bad_input);
  tcase_add_loop_test(tc, test_rpc_optim_reference, 0,
                      (int)(sizeof rpc_optim_cases / sizeof rpc_optim_cases[0]));
  tcase_add_test(tc, test_rpc_dead_connection_bound);
  suite_add_tcase(s, tc);
  TCase *rc = tcase_create("reconnect");
  tcase_set_timeout(rc, 90);
  tcase_add_unchecked_fixture(rc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(rc, test_rpc_reconnect_after_restart);
  tcase_add_loop_test(rc, test_rpc_optim_restart, 0, 2);
  tcase_add_test(rc, test_rpc_submit_tiny_tensors_rss);
  suite_add_tcase(s, rc);
  return s;
}
