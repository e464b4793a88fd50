/* Tests for the coordinator and consistency over real psd processes:
 * RegisterWorker / Heartbeat / ListWorkers, pulls parked over gRPC and
 * over the tensor channel, released by another worker's push, by a lease
 * expiring, or timed out.  One shard (the coordinator) per test case,
 * started in an unchecked fixture and stopped by PID. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_rpc.h"
#include "ps_test.h"

#define CONS_LEASE_MS 800
#define CONS_PULL_TIMEOUT_MS 2500

static pid_t cons_pid;
static char cons_addr[64], cons_chan[64];

static void cons_up(void) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp, cp;
  char extra[256];
  snprintf(extra, sizeof extra,
           "workers:\n  count: 2\n  heartbeat_ms: 100\n  lease_ms: %d\n"
           "training:\n  pull_timeout_ms: %d\n", CONS_LEASE_MS, CONS_PULL_TIMEOUT_MS);
  const char *yaml = ps_test_cluster_yaml(dir, 1, extra, &gp, &cp);
  char log[600];
  snprintf(log, sizeof log, "%s/psd.log", dir);
  cons_pid = ps_test_psd(yaml, 0, log, NULL);
  snprintf(cons_addr, sizeof cons_addr, "127.0.0.1:%d", gp);
  snprintf(cons_chan, sizeof cons_chan, "127.0.0.1:%d", cp);
  if (ps_test_wait_port(gp, 10000) < 0 || ps_test_wait_port(cp, 10000) < 0)
    fprintf(stderr, "test_psd_consistency: psd did not start, see %s\n", log);
}

static void cons_down(void) {
  if (cons_pid > 0) ps_test_stop(cons_pid, SIGTERM, 10000);
  cons_pid = 0;
}

/* cons_submit registers model NAME: one tensor of 8 floats (chunk 0),
 * sgd lr 1, with CONSISTENCY and STALENESS. */
static void cons_submit(ps_rpc *r, const char *name, const char *consistency,
                        uint32_t staleness, const char *weight) {
  uint32_t shape[1] = {8};
  Ps__TensorSpec t = PS__TENSOR_SPEC__INIT;
  t.name = "w";
  t.n_shape = 1;
  t.shape = shape;
  t.init = "zeros";
  Ps__TensorSpec *ts[1] = {&t};
  Ps__OptimizerSpec o = PS__OPTIMIZER_SPEC__INIT;
  o.kind = "sgd";
  o.lr = 1;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = (char *)name;
  spec.seed = 1;
  spec.n_tensors = 1;
  spec.tensors = ts;
  spec.optimizer = &o;
  spec.consistency = (char *)consistency;
  spec.staleness = staleness;
  spec.staleness_weight = (char *)weight;
  ps_test_submit(r, &spec, 0, 5000);
}

static const uint32_t cons_ids[1] = {0};

/* cons_push pushes gradient G (8 equal floats) of WORKER at CLOCK. */
static int cons_push(ps_rpc *r, const char *model, uint32_t worker, uint64_t clock,
                     uint64_t version, float g, ps_errbuf *eb) {
  float grads[8];
  for (int i = 0; i < 8; i++) grads[i] = g;
  Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
  req.model = (char *)model;
  req.n_chunk_ids = 1;
  req.chunk_ids = (uint32_t *)cons_ids;
  req.grads.data = (uint8_t *)grads;
  req.grads.len = sizeof grads;
  req.worker = worker;
  req.clock = clock;
  req.version = version;
  ProtobufCMessage *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor, &rep, 5000, eb);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  return err;
}

/* A pull in a thread: over gRPC (chan NULL) or over a tensor channel. */
typedef struct cons_pull {
  ps_rpc *r;
  ps_chan_client *chan;
  const char *model;
  uint32_t worker;
  uint64_t clock;
  int err;
  ps_errbuf eb;
  int64_t done_ms;
  ps_test_bg bg;
} cons_pull;

static void cons_pull_run(void *arg) {
  cons_pull *p = arg;
  if (p->chan) {
    float out[8];
    uint64_t v;
    p->err = ps_test_pull(p->chan, p->model, cons_ids, 1, out, 8, p->worker, p->clock, &v,
                          &p->eb);
  } else {
    Ps__PullRequest req = PS__PULL_REQUEST__INIT;
    req.model = (char *)p->model;
    req.n_chunk_ids = 1;
    req.chunk_ids = (uint32_t *)cons_ids;
    req.worker = p->worker;
    req.clock = p->clock;
    ProtobufCMessage *rep = NULL;
    p->err = ps_rpc_call(p->r, "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor, &rep,
                         10000, &p->eb);
    if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  }
  p->done_ms = ps_test_now_ms();
}

static void cons_pull_start(cons_pull *p) { ps_test_bg_start(&p->bg, cons_pull_run, p); }

/* cons_wait waits up to MS for P to finish; returns 1 when it did. */
static int cons_wait(cons_pull *p, int ms) { return ps_test_bg_wait(&p->bg, ms); }

/* cons_rejoin sends a heartbeat marked rejoin for workers 0 and 1: the
 * tests share one shard, and a worker an earlier test let expire is
 * refused until it rejoins (psd_clock invariant 9), as a new process of
 * it does with its first beat. */
static void cons_rejoin(ps_rpc *r) {
  for (uint32_t w = 0; w < 2; w++) {
    ps_errbuf eb;
    ck_assert_msg(ps_test_beat(r, w, 1, &eb) == 0, "rejoin of worker %u: %s", w, eb.msg);
  }
}

/* cons_pull_now pulls over gRPC and expects an immediate answer. */
static int cons_pull_now(ps_rpc *r, const char *model, uint32_t worker, uint64_t clock) {
  cons_pull p = {.r = r, .model = model, .worker = worker, .clock = clock};
  cons_pull_start(&p);
  ck_assert_msg(cons_wait(&p, 3000), "pull at clock %llu did not come back",
                (unsigned long long)clock);
  return p.err;
}

/* cons_model_status returns the ModelStatus of MODEL (caller frees REP). */
static const Ps__ModelStatus *cons_model_status(ps_rpc *r, const char *model,
                                                Ps__StatusReply **rep) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  ps_errbuf eb;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                               (ProtobufCMessage **)rep, 5000, &eb), 0);
  for (size_t i = 0; i < (*rep)->n_models; i++)
    if (!strcmp((*rep)->models[i]->name, model)) return (*rep)->models[i];
  ck_abort_msg("model '%s' not in status", model);
  return NULL;
}

START_TEST(test_register_heartbeat_list) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, cons_addr, &eb), 0);
  cons_submit(r, "reg", "bsp", 0, NULL);
  uint32_t ranks[2];
  for (int i = 0; i < 3; i++) {
    Ps__RegisterWorkerRequest req = PS__REGISTER_WORKER_REQUEST__INIT;
    req.model = "reg";
    req.host = "h";
    req.pid = 100 + (uint32_t)i;
    req.device = "cpu";
    Ps__RegisterWorkerReply *rep = NULL;
    int err = ps_rpc_call(r, "/ps.Ps/RegisterWorker", &req.base,
                          &ps__register_worker_reply__descriptor, (ProtobufCMessage **)&rep,
                          5000, &eb);
    if (i == 2) { /* workers.count is 2: a third one gets a rank past it (elastic) */
      ck_assert_msg(err == 0, "register: %s", eb.msg);
      ck_assert_uint_eq(rep->rank, 2);
      protobuf_c_message_free_unpacked(&rep->base, NULL);
      continue;
    }
    ck_assert_msg(err == 0, "register: %s", eb.msg);
    ranks[i] = rep->rank;
    ck_assert_uint_eq(rep->world_size, 2);
    ck_assert_uint_eq(rep->lease_ms, CONS_LEASE_MS);
    ck_assert_str_eq(rep->consistency, "bsp");
    ck_assert_uint_gt(rep->n_partitions, 0);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
  }
  ck_assert_uint_eq(ranks[0], 0);
  ck_assert_uint_eq(ranks[1], 1);
  /* rank 0 heartbeats, rank 1 falls silent past its lease */
  int64_t end = ps_test_now_ms() + CONS_LEASE_MS + 400;
  while (ps_test_now_ms() < end) {
    Ps__HeartbeatRequest hb = PS__HEARTBEAT_REQUEST__INIT;
    hb.worker = 0;
    hb.model = "reg";
    hb.clock = 7;
    hb.steps_per_s = 12.5f;
    hb.device = "cpu";
    ProtobufCMessage *rep = NULL;
    ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Heartbeat", &hb.base,
                                 &ps__heartbeat_reply__descriptor, &rep, 2000, &eb), 0);
    protobuf_c_message_free_unpacked(rep, NULL);
    usleep(100000);
  }
  Ps__ListWorkersRequest lr = PS__LIST_WORKERS_REQUEST__INIT;
  Ps__ListWorkersReply *l = NULL;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/ListWorkers", &lr.base,
                               &ps__list_workers_reply__descriptor, (ProtobufCMessage **)&l,
                               2000, &eb), 0);
  ck_assert(l->coordinator);
  ck_assert_uint_eq(l->n_workers, 3);
  for (size_t i = 0; i < l->n_workers; i++) {
    const Ps__WorkerInfo *w = l->workers[i];
    if (w->rank == 0) {
      ck_assert_str_eq(w->state, "ALIVE");
      ck_assert_uint_eq(w->clock, 7);
      ck_assert_float_eq(w->steps_per_s, 12.5f);
      ck_assert_uint_eq(w->pid, 100);
    } else {
      ck_assert_str_eq(w->state, "DEAD");
    }
  }
  protobuf_c_message_free_unpacked(&l->base, NULL);
  /* the dead worker's rank is free again */
  Ps__RegisterWorkerRequest req = PS__REGISTER_WORKER_REQUEST__INIT;
  req.model = "reg";
  req.host = "h2";
  req.pid = 200;
  Ps__RegisterWorkerReply *rep = NULL;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/RegisterWorker", &req.base,
                               &ps__register_worker_reply__descriptor, (ProtobufCMessage **)&rep,
                               5000, &eb), 0);
  ck_assert_uint_eq(rep->rank, 1);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  /* both ranks leave done, as workers do at their end: the tests after
   * this one use workers 0 and 1 again on this shard, and a lease left
   * running here would expire them (PS_EEXPIRED) whenever the next test
   * starts more than a lease later (a loaded machine, a sanitizer build) */
  for (uint32_t w = 0; w < 2; w++) {
    Ps__HeartbeatRequest hb = PS__HEARTBEAT_REQUEST__INIT;
    hb.worker = w;
    hb.model = "reg";
    hb.host = w ? "h2" : "h";
    hb.pid = w ? 200 : 100;
    hb.leaving = 1;
    hb.done = 1;
    ProtobufCMessage *bye = NULL;
    ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Heartbeat", &hb.base,
                                 &ps__heartbeat_reply__descriptor, &bye, 2000, &eb), 0);
    protobuf_c_message_free_unpacked(bye, NULL);
  }
  ps_rpc_close(r);
}
END_TEST

/* A BSP pull one clock ahead parks over gRPC until the other worker
 * pushes; the served gap stays 0. */
START_TEST(test_grpc_pull_parked_until_push) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, cons_addr, &eb), 0);
  cons_rejoin(r); /* both workers alive now, however long the test before took */
  cons_submit(r, "bspg", "bsp", 0, NULL);
  ck_assert_int_eq(cons_pull_now(r, "bspg", 0, 0), 0);
  ck_assert_int_eq(cons_pull_now(r, "bspg", 1, 0), 0);
  ck_assert_int_eq(cons_push(r, "bspg", 0, 0, 0, 1.0f, &eb), 0);
  cons_pull p = {.r = r, .model = "bspg", .worker = 0, .clock = 1};
  cons_pull_start(&p);
  ck_assert_msg(!cons_wait(&p, 400), "a bsp pull ahead of the slowest worker was served");
  Ps__StatusReply *st;
  const Ps__ModelStatus *ms = cons_model_status(r, "bspg", &st);
  ck_assert_uint_eq(ms->parked, 1);
  ck_assert_str_eq(ms->consistency, "bsp");
  protobuf_c_message_free_unpacked(&st->base, NULL);
  int64_t t0 = ps_test_now_ms();
  ck_assert_int_eq(cons_push(r, "bspg", 1, 0, 0, 1.0f, &eb), 0);
  ck_assert_msg(cons_wait(&p, 2000), "the parked pull was not released by the push");
  ck_assert_msg(p.err == 0, "released pull: %s", p.eb.msg);
  ck_assert_int_lt(p.done_ms - t0, 1000);
  ms = cons_model_status(r, "bspg", &st);
  ck_assert_uint_eq(ms->max_gap, 0);
  ck_assert_uint_eq(ms->parked, 0);
  ck_assert_uint_eq(ms->pulls_parked, 1);
  ck_assert_uint_eq(ms->n_tau_hist, 7);
  ck_assert_uint_eq(ms->tau_hist[0] + ms->tau_hist[1], 2); /* taus 0 and 1 */
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ps_rpc_close(r);
}
END_TEST

/* The same over the tensor channel; a request behind the parked pull on
 * its connection waits for it. */
START_TEST(test_chan_pull_parked_until_push) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, cons_addr, &eb), 0);
  cons_rejoin(r); /* both workers alive now, however long the test before took */
  cons_submit(r, "bspc", "ssp", 1, NULL);
  ck_assert_int_eq(cons_pull_now(r, "bspc", 1, 0), 0);
  for (uint64_t k = 0; k < 2; k++) ck_assert_int_eq(cons_push(r, "bspc", 0, k, 0, 1, &eb), 0);
  ps_chan_client *ch;
  ck_assert_msg(ps_test_chan_connect(&ch, cons_chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  cons_pull p = {.chan = ch, .model = "bspc", .worker = 0, .clock = 2};
  cons_pull_start(&p);
  ck_assert_msg(!cons_wait(&p, 400), "an ssp pull 2 clocks ahead (s=1) was served");
  ck_assert_int_eq(cons_push(r, "bspc", 1, 0, 0, 1.0f, &eb), 0);
  ck_assert_msg(cons_wait(&p, 2000), "the parked channel pull was not released");
  ck_assert_msg(p.err == 0, "released pull: %s", p.eb.msg);
  /* the connection goes on serving in order: a push, then a parked pull
   * and a pull behind it on the same connection */
  float out[8];
  struct iovec dst[1] = {{out, sizeof out}};
  uint64_t id_pull, id_pull2, id, v;
  ps_req q3 = {.model = "bspc", .ids = cons_ids, .nids = 1, .clock = 3};
  ps_req q0 = {.model = "bspc", .ids = cons_ids, .nids = 1, .clock = 0};
  ck_assert_int_eq(ps_chan_send_pullv(ch, &q3, dst, 1, &id_pull, &eb),
                   0); /* slowest (w1) at 1: 3 - 1 > 1, parks */
  ck_assert_int_eq(ps_chan_send_pullv(ch, &q0, dst, 1, &id_pull2, &eb), 0);
  usleep(300000);
  Ps__StatusReply *st;
  const Ps__ModelStatus *ms = cons_model_status(r, "bspc", &st);
  ck_assert_uint_eq(ms->parked, 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ck_assert_int_eq(cons_push(r, "bspc", 1, 1, 0, 1.0f, &eb), 0); /* w1 at 2 */
  ck_assert_int_eq(ps_chan_recv(ch, &id, &v, &eb), 0);
  ck_assert_uint_eq(id, id_pull);
  ck_assert_int_eq(ps_chan_recv(ch, &id, &v, &eb), 0);
  ck_assert_uint_eq(id, id_pull2);
  ms = cons_model_status(r, "bspc", &st);
  ck_assert_uint_le(ms->max_gap, 1);
  ck_assert_uint_eq(ms->max_gap, 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ps_chan_close(ch);
  ps_rpc_close(r);
}
END_TEST

/* A channel peer that leaves while its pull is parked (a request queued
 * behind it): the release answers a closed connection; the shard goes on
 * serving and nothing stays parked. */
START_TEST(test_chan_parked_peer_gone) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, cons_addr, &eb), 0);
  cons_rejoin(r); /* both workers alive now, however long the test before took */
  cons_submit(r, "gone", "ssp", 1, NULL);
  ck_assert_int_eq(cons_pull_now(r, "gone", 1, 0), 0);
  for (uint64_t k = 0; k < 2; k++) ck_assert_int_eq(cons_push(r, "gone", 0, k, 0, 1, &eb), 0);
  for (int round = 0; round < 2; round++) {
    ps_chan_client *ch;
    ck_assert_msg(ps_test_chan_connect(&ch, cons_chan, "test", 5000, &eb) == 0, "%s", eb.msg);
    float out[8];
    struct iovec dst[1] = {{out, sizeof out}};
    uint64_t id1, id2;
    ps_req qp = {.model = "gone", .ids = cons_ids, .nids = 1, .clock = 3 + (uint64_t)round};
    ps_req q0 = {.model = "gone", .ids = cons_ids, .nids = 1, .clock = 0};
    ck_assert_int_eq(ps_chan_send_pullv(ch, &qp, dst, 1, &id1, &eb), 0); /* parks */
    ck_assert_int_eq(ps_chan_send_pullv(ch, &q0, dst, 1, &id2, &eb), 0);
    usleep(200000);
    Ps__StatusReply *st;
    const Ps__ModelStatus *ms = cons_model_status(r, "gone", &st);
    ck_assert_uint_eq(ms->parked, 1);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    ps_chan_close(ch);
    usleep(100000);
    /* w1 catches up: the first round releases the pull onto a closed
     * connection; the second round's worker 0 pushes a clock more */
    ck_assert_int_eq(cons_push(r, "gone", 1, (uint64_t)(2 * round), 0, 1.0f, &eb), 0);
    ck_assert_int_eq(cons_push(r, "gone", 1, (uint64_t)(2 * round + 1), 0, 1.0f, &eb), 0);
    if (round == 0) ck_assert_int_eq(cons_push(r, "gone", 0, 2, 0, 1.0f, &eb), 0);
    usleep(200000);
    ms = cons_model_status(r, "gone", &st);
    ck_assert_uint_eq(ms->parked, 0);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  ck_assert_int_eq(cons_pull_now(r, "gone", 1, 0), 0);
  ps_rpc_close(r);
}
END_TEST

/* A worker that falls silent: its lease expires and the pull parked on it
 * goes on. */
START_TEST(test_lease_expiry_releases_parked) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, cons_addr, &eb), 0);
  /* both workers alive now, whatever the tests before took (a sanitizer
   * build can take longer than a lease between them) */
  cons_rejoin(r);
  cons_submit(r, "dead", "bsp", 0, NULL);
  ck_assert_int_eq(cons_pull_now(r, "dead", 1, 0), 0);
  ck_assert_int_eq(cons_push(r, "dead", 0, 0, 0, 1.0f, &eb), 0);
  int64_t t0 = ps_test_now_ms();
  cons_pull p = {.r = r, .model = "dead", .worker = 0, .clock = 1};
  cons_pull_start(&p);
  ck_assert_msg(cons_wait(&p, CONS_LEASE_MS + 1500), "lease expiry did not release the pull");
  ck_assert_msg(p.err == 0, "released pull: %s", p.eb.msg);
  ck_assert_int_ge(p.done_ms - t0, CONS_LEASE_MS - 200);
  ps_rpc_close(r);
}
END_TEST

/* A parked pull whose slowest worker stays alive but never pushes gives
 * up after pull_timeout_ms, naming that worker. */
START_TEST(test_parked_pull_times_out) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, cons_addr, &eb), 0);
  cons_rejoin(r);
  cons_submit(r, "slow", "bsp", 0, NULL);
  ck_assert_int_eq(cons_pull_now(r, "slow", 1, 0), 0);
  ck_assert_int_eq(cons_push(r, "slow", 0, 0, 0, 1.0f, &eb), 0);
  int64_t t0 = ps_test_now_ms();
  cons_pull p = {.r = r, .model = "slow", .worker = 0, .clock = 1};
  cons_pull_start(&p);
  while (!ps_test_bg_done(&p.bg) && ps_test_now_ms() < t0 + CONS_PULL_TIMEOUT_MS + 2000) {
    ps_test_beat(r, 1, 0, &eb); /* worker 1 stays alive, and behind */
    usleep(100000);
  }
  ck_assert(cons_wait(&p, 100));
  ck_assert_int_eq(p.err, PS_ETIMEDOUT);
  ck_assert_msg(strstr(p.eb.msg, "slowest live worker 1 is at clock 0"), "%s", p.eb.msg);
  ck_assert_int_ge(p.done_ms - t0, CONS_PULL_TIMEOUT_MS - 200);
  ps_rpc_close(r);
}
END_TEST

/* staleness_weight inverse: a push computed on an old version moves the
 * weights by 1/(1+tau) of its gradient. */
START_TEST(test_inverse_weight) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, cons_addr, &eb), 0);
  cons_rejoin(r);
  cons_submit(r, "inv", "asp", 0, "inverse");
  ck_assert_int_eq(cons_push(r, "inv", 0, 0, 0, 1.0f, &eb), 0); /* tau 0: w = -1 */
  ck_assert_int_eq(cons_push(r, "inv", 0, 1, 1, 1.0f, &eb), 0); /* tau 0: w = -2 */
  ck_assert_int_eq(cons_push(r, "inv", 1, 0, 0, 3.0f, &eb), 0); /* tau 2: w -= 3/3 */
  Ps__PullRequest req = PS__PULL_REQUEST__INIT;
  req.model = "inv";
  req.n_chunk_ids = 1;
  req.chunk_ids = (uint32_t *)cons_ids;
  Ps__PullReply *rep = NULL;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor,
                               (ProtobufCMessage **)&rep, 5000, &eb), 0);
  const float *w = (const float *)rep->values.data;
  ck_assert_float_eq_tol(w[0], -3.0f, 1e-6f);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  Ps__StatusReply *st;
  const Ps__ModelStatus *ms = cons_model_status(r, "inv", &st);
  ck_assert_str_eq(ms->staleness_weight, "inverse");
  ck_assert_uint_eq(ms->tau_hist[0], 2);
  ck_assert_uint_eq(ms->tau_hist[2], 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ps_rpc_close(r);
}
END_TEST

/* A clock beyond PS_CLOCK_MAX (the outside tester's 2^64-1) is refused
 * on a push and a pull, over gRPC and the channel, before anything is
 * applied or entered: before, the table's clock + 1 wrapped a new worker
 * to 0, and another worker's bsp pull at clock 1 parked behind it until
 * its lease ran out. */
START_TEST(test_clock_beyond_bound_refused) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, cons_addr, &eb), 0);
  cons_rejoin(r);
  cons_submit(r, "wrap", "bsp", 0, NULL);
  ck_assert_int_eq(cons_push(r, "wrap", 0, 0, 0, 1.0f, &eb), 0); /* worker 0 at 1 */
  int rc = cons_push(r, "wrap", 1, UINT64_MAX, 0, 1.0f, &eb);
  ck_assert_msg(rc == PS_EINVAL && strstr(eb.msg, "beyond the largest clock"),
                "a push at clock 2^64-1: %d %s", rc, rc ? eb.msg : "applied");
  /* worker 1 did not enter at a wrapped 0: worker 0's next pull is served */
  ck_assert_int_eq(cons_pull_now(r, "wrap", 0, 1), 0);
  ck_assert_int_eq(cons_pull_now(r, "wrap", 1, UINT64_MAX), PS_EINVAL);
  ps_chan_client *ch;
  ck_assert_msg(ps_test_chan_connect(&ch, cons_chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  float out[8], g[8] = {0};
  uint64_t v;
  rc = ps_test_pull(ch, "wrap", cons_ids, 1, out, 8, 1, UINT64_MAX, &v, &eb);
  ck_assert_msg(rc == PS_EINVAL && strstr(eb.msg, "beyond the largest clock"),
                "a channel pull at clock 2^64-1: %d %s", rc, rc ? eb.msg : "served");
  rc = ps_test_push(ch, "wrap", cons_ids, 1, g, 8, 1, UINT64_MAX, 0, &v, &eb);
  ck_assert_msg(rc == PS_EINVAL, "a channel push at clock 2^64-1: %d %s", rc, rc ? eb.msg : "");
  ps_chan_close(ch);
  Ps__StatusReply *st;
  const Ps__ModelStatus *ms = cons_model_status(r, "wrap", &st);
  ck_assert_uint_eq(ms->max_gap, 0); /* bsp: never above S = 0 */
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ps_rpc_close(r);
}
END_TEST

Suite *psd_consistency_suite(void) {
  Suite *s = suite_create("psd_consistency");
  TCase *tc = tcase_create("rpc");
  tcase_add_unchecked_fixture(tc, cons_up, cons_down);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_register_heartbeat_list);
  tcase_add_test(tc, test_grpc_pull_parked_until_push);
  tcase_add_test(tc, test_chan_pull_parked_until_push);
  tcase_add_test(tc, test_chan_parked_peer_gone);
  tcase_add_test(tc, test_lease_expiry_releases_parked);
  tcase_add_test(tc, test_parked_pull_times_out);
  tcase_add_test(tc, test_inverse_weight);
  tcase_add_test(tc, test_clock_beyond_bound_refused);
  suite_add_tcase(s, tc);
  return s;
}
