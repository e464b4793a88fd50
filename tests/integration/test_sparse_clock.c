/* Sparse rows under their model's consistency (issue 19, item 5): a
 * sparse pull carries the worker's clock and is admitted, parked and
 * released by the same clock table as the model's dense pulls, on both
 * planes (psd_shard_sparse.h "Clocks").  Real psd processes: one shard
 * (the coordinator) per test case of the "one" case, started in an
 * unchecked fixture; the other cases start theirs in the test and stop
 * them by PID.
 *
 *  - bsp over gRPC and over the channel: a pull for clock c+1 parks until
 *    every worker pushed clock c; on a shard that holds dense chunks of
 *    the model the dense push of the step releases it, a sparse push of
 *    the step does not (it does not advance the clock a second time, nor
 *    before the dense gradients are in); the model's parked counters
 *    count it; a request behind it on its connection waits for it.
 *  - ssp s=2: a pull 2 clocks ahead is served at once, 3 ahead parks.
 *  - asp: served at once whatever the clocks; a reader's pull
 *    (PS_CLOCK_READER) at once under bsp, outside the clock table.
 *  - a parked pull times out naming the slowest worker (channel), is
 *    released when the slowest worker's lease expires, and an expired
 *    worker's sparse pull and push are refused (PS_EEXPIRED).
 *  - a shard that holds none of the model's dense chunks (two shards): the
 *    sparse push of a step advances the clock there (an empty one too,
 *    which psw_sparse_push sends where a step has no key); a push of the
 *    worker's client lost there (refused DEGRADED) is said by a moved_on
 *    heartbeat before its next pull, which is served.
 *  - a pull parked when its shard stops (SIGTERM) is answered with the
 *    shutdown error on both planes; when it is killed, both planes' calls
 *    come back with an error. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_chan.h"
#include "ps_model.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "psw_graph.h"
#include "psw_sparse.h"

enum { SC_DIM = 4, SC_NKEYS = 3 };
#define SC_LEASE_MS 1200
#define SC_LONG_LEASE_MS 10000 /* the cases whose workers go quiet while a pull waits */
#define SC_PULL_TIMEOUT_MS 2500

static const uint64_t sc_keys[SC_NKEYS] = {11, 22, 33};

/* One shard's addresses and process. */
typedef struct sc_shard {
  pid_t pid;
  char addr[64], chan[64];
  char log[600];
} sc_shard;

static sc_shard one;
static char sc_yaml[600]; /* the last cluster file sc_start wrote */

/* sc_start starts NSHARDS shards into SH (workers count 2, leases of
 * LEASE_MS, short pull timeouts). */
static void sc_start(sc_shard *sh, int nshards, int lease_ms) {
  const char *dir = ps_test_tmpdir();
  int gp[2], cp[2];
  char extra[256];
  snprintf(extra, sizeof extra,
           "workers:\n  count: 2\n  heartbeat_ms: 100\n  lease_ms: %d\n"
           "training:\n  pull_timeout_ms: %d\n", lease_ms, SC_PULL_TIMEOUT_MS);
  const char *yaml = ps_test_cluster_yaml(dir, nshards, extra, gp, cp);
  snprintf(sc_yaml, sizeof sc_yaml, "%s", yaml);
  for (int i = 0; i < nshards; i++) {
    snprintf(sh[i].log, sizeof sh[i].log, "%s/psd%d.log", dir, i);
    sh[i].pid = ps_test_psd(yaml, i, sh[i].log, NULL);
    snprintf(sh[i].addr, sizeof sh[i].addr, "127.0.0.1:%d", gp[i]);
    snprintf(sh[i].chan, sizeof sh[i].chan, "127.0.0.1:%d", cp[i]);
  }
  for (int i = 0; i < nshards; i++)
    if (ps_test_wait_port(gp[i], 10000) < 0 || ps_test_wait_port(cp[i], 10000) < 0)
      fprintf(stderr, "test_sparse_clock: psd did not start, see %s\n", sh[i].log);
}

static void sc_stop(sc_shard *sh, int nshards) {
  for (int i = 0; i < nshards; i++) {
    if (sh[i].pid > 0) ps_test_stop(sh[i].pid, SIGTERM, 10000);
    sh[i].pid = 0;
  }
}

static void sc_up(void) { sc_start(&one, 1, SC_LEASE_MS); }
static void sc_down(void) { sc_stop(&one, 1); }

/* sc_submit registers the click-through model (1 field, dim 4, 1 dense
 * feature, no hidden layer) as NAME with CONSISTENCY and STALENESS. */
static void sc_submit(ps_rpc *r, const char *name, const char *consistency, uint32_t staleness) {
  psw_ctr_shape shape = {1, SC_DIM, 1, NULL, 0, 0, 0};
  ps_test_ctr m;
  ps_test_ctr_model(&m, &shape, "sgd", 1.0f, 11);
  char *own = m.spec->name;
  m.spec->name = (char *)name;
  m.spec->consistency = (char *)consistency;
  m.spec->staleness = staleness;
  ps_test_submit(r, m.spec, 0, 10000);
  m.spec->name = own;
  m.spec->consistency = NULL;
  ps_test_ctr_release(&m);
}

/* sc_held returns how many dense chunks of MODEL the shard behind R holds
 * (Export); their ids into IDS (up to 64) and bytes of fp32 into *BYTES. */
static size_t sc_held(ps_rpc *r, const char *model, uint32_t *ids, size_t *bytes) {
  Ps__ExportRequest q = PS__EXPORT_REQUEST__INIT;
  q.model = (char *)model;
  Ps__ExportReply *rep = NULL;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(r, "/ps.Ps/Export", &q.base, &ps__export_reply__descriptor,
                            (ProtobufCMessage **)&rep, 5000, &eb) == 0, "export: %s", eb.msg);
  size_t n = rep->n_chunk_ids;
  ck_assert_uint_le(n, 64);
  if (ids) memcpy(ids, rep->chunk_ids, n * sizeof *ids);
  if (bytes) *bytes = rep->values.len;
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return n;
}

/* sc_dense_push_rc pushes a zero gradient for every chunk of MODEL the
 * shard behind R holds, as WORKER at CLOCK; returns the call's result. */
static int sc_dense_push_rc(ps_rpc *r, const char *model, uint32_t worker, uint64_t clock,
                            ps_errbuf *eb) {
  uint32_t ids[64];
  size_t bytes;
  size_t n = sc_held(r, model, ids, &bytes);
  ck_assert_uint_gt(n, 0);
  void *g = calloc(1, bytes);
  Ps__PushRequest q = PS__PUSH_REQUEST__INIT;
  q.model = (char *)model;
  q.n_chunk_ids = n;
  q.chunk_ids = ids;
  q.grads.data = g;
  q.grads.len = bytes;
  q.worker = worker;
  q.clock = clock;
  ProtobufCMessage *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/Push", &q.base, &ps__push_reply__descriptor, &rep, 5000, eb);
  free(g);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  return err;
}

/* sc_dense_push is sc_dense_push_rc that must succeed. */
static void sc_dense_push(ps_rpc *r, const char *model, uint32_t worker, uint64_t clock) {
  ps_errbuf eb;
  int err = sc_dense_push_rc(r, model, worker, clock, &eb);
  ck_assert_msg(err == 0, "dense push of worker %u at %llu: %s", worker,
                (unsigned long long)clock, eb.msg);
}

/* sc_sparse_push pushes gradient 0 for the N keys KEYS of MODEL as WORKER
 * at CLOCK over gRPC; returns the call's result. */
static int sc_sparse_push(ps_rpc *r, const char *model, const uint64_t *keys, size_t n,
                          uint32_t worker, uint64_t clock, ps_errbuf *eb) {
  float g[SC_NKEYS * SC_DIM] = {0};
  Ps__SparsePushRequest q = PS__SPARSE_PUSH_REQUEST__INIT;
  q.model = (char *)model, q.table = 0, q.keys = (uint64_t *)keys, q.n_keys = n;
  q.rows.data = (uint8_t *)g, q.rows.len = n * SC_DIM * sizeof(float);
  q.worker = worker, q.clock = clock;
  ProtobufCMessage *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/SparsePush", &q.base, &ps__sparse_push_reply__descriptor,
                        &rep, 5000, eb);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  return err;
}

/* A sparse pull in a thread: over gRPC (chan NULL) or a tensor channel. */
typedef struct sc_pull {
  const char *addr;       /* gRPC address: the thread opens its own connection */
  ps_chan_client *chan;
  const char *model;
  const uint64_t *keys;   /* NULL: sc_keys */
  size_t nkeys;
  uint32_t worker;
  uint64_t clock;
  int err;
  ps_errbuf eb;
  float rows[SC_NKEYS * SC_DIM];
  ps_test_bg bg;
} sc_pull;

/* sc_pull_once pulls P's rows once, on P's plane. */
static void sc_pull_once(sc_pull *p) {
  const uint64_t *keys = p->keys ? p->keys : sc_keys;
  size_t n = p->keys ? p->nkeys : SC_NKEYS;
  if (p->chan) {
    ps_chan_sparse q = {.model = p->model, .worker = p->worker, .clock = p->clock,
                        .keys = keys, .nkeys = (uint32_t)n};
    p->err = ps_chan_send_sparse_pull(p->chan, &q, p->rows, n * SC_DIM * sizeof(float), NULL,
                                      &p->eb);
    if (p->err == 0) p->err = ps_chan_recv(p->chan, NULL, NULL, &p->eb);
    return;
  }
  ps_rpc *r = NULL;
  p->err = ps_test_rpc_open(&r, p->addr, &p->eb);
  Ps__SparsePullRequest q = PS__SPARSE_PULL_REQUEST__INIT;
  q.model = (char *)p->model, q.table = 0, q.keys = (uint64_t *)keys, q.n_keys = n;
  q.worker = p->worker, q.clock = p->clock;
  Ps__SparsePullReply *rep = NULL;
  if (p->err == 0)
    p->err = ps_rpc_call(r, "/ps.Ps/SparsePull", &q.base, &ps__sparse_pull_reply__descriptor,
                         (ProtobufCMessage **)&rep, 15000, &p->eb);
  if (p->err == 0) {
    if (rep->rows.len == n * SC_DIM * sizeof(float)) memcpy(p->rows, rep->rows.data, rep->rows.len);
    else p->err = ps_errf(&p->eb, PS_EFORMAT, "%zu bytes of rows", rep->rows.len);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
  }
  if (r) ps_rpc_close(r);
}

static void sc_pull_run(void *arg) { sc_pull_once(arg); }

static void sc_pull_start(sc_pull *p) { ps_test_bg_start(&p->bg, sc_pull_run, p); }

/* sc_wait waits up to MS for P; returns 1 when it came back. */
static int sc_wait(sc_pull *p, int ms) { return ps_test_bg_wait(&p->bg, ms); }

/* sc_pull_now pulls over gRPC and expects an answer at once; returns its
 * result. */
static int sc_pull_now(const char *addr, const char *model, uint32_t worker, uint64_t clock,
                       ps_errbuf *eb) {
  sc_pull p = {.addr = addr, .model = model, .worker = worker, .clock = clock};
  sc_pull_start(&p);
  ck_assert_msg(sc_wait(&p, 3000), "a sparse pull at clock %llu did not come back at once",
                (unsigned long long)clock);
  if (eb) *eb = p.eb;
  return p.err;
}

/* sc_parked returns the model's parked pulls (Status) and, in *TOTAL,
 * how many were ever parked. */
static uint32_t sc_parked(ps_rpc *r, const char *model, uint64_t *total) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *rep = NULL;
  ps_errbuf eb;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                               (ProtobufCMessage **)&rep, 5000, &eb), 0);
  uint32_t n = UINT32_MAX;
  for (size_t i = 0; i < rep->n_models; i++)
    if (!strcmp(rep->models[i]->name, model)) {
      n = rep->models[i]->parked;
      if (total) *total = rep->models[i]->pulls_parked;
    }
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  ck_assert_msg(n != UINT32_MAX, "model '%s' not in status", model);
  return n;
}

/* sc_rejoin brings workers 0 and 1 back (a test before may have let them
 * expire; psd_clock invariant 9). */
static void sc_rejoin(ps_rpc *r) {
  for (uint32_t w = 0; w < 2; w++) {
    ps_errbuf eb;
    ck_assert_msg(ps_test_beat(r, w, 1, &eb) == 0, "rejoin of worker %u: %s", w, eb.msg);
  }
}

/* sc_behind opens *R to the shard at ADDR, brings workers 0 and 1 back
 * (sc_rejoin), submits MODEL with CONSISTENCY and STALENESS and leaves
 * worker 0 a step ahead: worker 1 pulled at clock 0, worker 0 pushed
 * step 0. */
static void sc_behind(ps_rpc **r, const char *addr, const char *model, const char *consistency,
                      uint32_t staleness) {
  ps_errbuf eb;
  ck_assert_msg(ps_test_rpc_open(r, addr, &eb) == 0, "%s", eb.msg);
  sc_rejoin(*r);
  sc_submit(*r, model, consistency, staleness);
  ck_assert_int_eq(sc_pull_now(addr, model, 1, 0, NULL), 0);
  sc_dense_push(*r, model, 0, 0);
}

/* sc_bsp runs the bsp case on MODEL with the parked pull on CHAN (NULL:
 * gRPC). */
static void sc_bsp(const char *model, int chan) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, one.addr, &eb), 0);
  sc_rejoin(r);
  sc_submit(r, model, "bsp", 0);
  ck_assert_uint_gt(sc_held(r, model, NULL, NULL), 0); /* the dense push advances here */
  ck_assert_int_eq(sc_pull_now(one.addr, model, 0, 0, NULL), 0);
  ck_assert_int_eq(sc_pull_now(one.addr, model, 1, 0, NULL), 0);
  /* worker 0 finishes step 0: rows, then dense */
  ck_assert_int_eq(sc_sparse_push(r, model, sc_keys, SC_NKEYS, 0, 0, &eb), 0);
  sc_dense_push(r, model, 0, 0);
  ps_chan_client *ch = NULL;
  if (chan)
    ck_assert_msg(ps_test_chan_connect(&ch, one.chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  sc_pull p = {.addr = one.addr, .chan = ch, .model = model, .worker = 0, .clock = 1};
  sc_pull_start(&p);
  ck_assert_msg(!sc_wait(&p, 400), "a bsp sparse pull ahead of the slowest worker was served");
  uint64_t total = 0;
  ck_assert_uint_eq(sc_parked(r, model, &total), 1);
  /* worker 1's rows of step 0 land: its dense push is still due */
  ck_assert_int_eq(sc_sparse_push(r, model, sc_keys, SC_NKEYS, 1, 0, &eb), 0);
  ck_assert_msg(!sc_wait(&p, 300), "a sparse push advanced the clock before the dense push");
  ck_assert_uint_eq(sc_parked(r, model, NULL), 1);
  sc_dense_push(r, model, 1, 0); /* the last push of step 0 */
  ck_assert_msg(sc_wait(&p, 3000), "the parked sparse pull was not released by the last push");
  ck_assert_msg(p.err == 0, "released pull: %s", p.eb.msg);
  if (ch) ck_assert_uint_gt(ps_chan_last_parked_ms(ch), 0);
  ck_assert_uint_eq(sc_parked(r, model, &total), 0);
  ck_assert_uint_eq(total, 1);
  if (ch) {
    /* the connection goes on in order: a parked pull, then one behind it */
    float a[SC_NKEYS * SC_DIM], b[SC_NKEYS * SC_DIM];
    uint64_t id1, id2, id;
    ps_chan_sparse q2 = {.model = model, .worker = 0, .clock = 2, .keys = sc_keys,
                         .nkeys = SC_NKEYS};
    ps_chan_sparse q0 = q2;
    q0.clock = 0;
    ck_assert_int_eq(ps_chan_send_sparse_pull(ch, &q2, a, sizeof a, &id1, &eb), 0);
    ck_assert_int_eq(ps_chan_send_sparse_pull(ch, &q0, b, sizeof b, &id2, &eb), 0);
    usleep(300000);
    ck_assert_uint_eq(sc_parked(r, model, NULL), 1);
    for (uint32_t w = 0; w < 2; w++) sc_dense_push(r, model, w, 1);
    ck_assert_int_eq(ps_chan_recv(ch, &id, NULL, &eb), 0);
    ck_assert_uint_eq(id, id1);
    ck_assert_int_eq(ps_chan_recv(ch, &id, NULL, &eb), 0);
    ck_assert_uint_eq(id, id2);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    ps_chan_close(ch);
  }
  ps_rpc_close(r);
}

START_TEST(test_bsp_grpc) { sc_bsp("sbg", 0); }
END_TEST

START_TEST(test_bsp_chan) { sc_bsp("sbc", 1); }
END_TEST

/* ssp s=2: within the bound at once, past it parked until the slowest
 * worker's push. */
START_TEST(test_ssp) {
  ps_rpc *r;
  sc_behind(&r, one.addr, "ssp2", "ssp", 2);
  for (uint64_t k = 1; k < 3; k++) sc_dense_push(r, "ssp2", 0, k); /* w0 at 3, w1 at 0 */
  ck_assert_int_eq(sc_pull_now(one.addr, "ssp2", 0, 2, NULL), 0); /* 2 ahead */
  sc_pull p = {.addr = one.addr, .model = "ssp2", .worker = 0, .clock = 3};
  sc_pull_start(&p);
  ck_assert_msg(!sc_wait(&p, 400), "an ssp sparse pull 3 clocks ahead (s=2) was served");
  ck_assert_uint_eq(sc_parked(r, "ssp2", NULL), 1);
  sc_dense_push(r, "ssp2", 1, 0);
  ck_assert_msg(sc_wait(&p, 3000), "the parked ssp sparse pull was not released");
  ck_assert_msg(p.err == 0, "released pull: %s", p.eb.msg);
  ps_rpc_close(r);
}
END_TEST

/* asp: no bound. */
START_TEST(test_asp) {
  ps_rpc *r;
  sc_behind(&r, one.addr, "asp", "asp", 0);
  ck_assert_int_eq(sc_pull_now(one.addr, "asp", 0, 100, NULL), 0);
  ck_assert_uint_eq(sc_parked(r, "asp", NULL), 0);
  ps_rpc_close(r);
}
END_TEST

/* A reader's pull (PS_CLOCK_READER: psw --evaluate) under bsp is served
 * at once on both planes and does not enter the clock table: a worker
 * that only read holds nobody back. */
START_TEST(test_reader) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, one.addr, &eb), 0);
  sc_rejoin(r);
  sc_submit(r, "rd", "bsp", 0);
  ck_assert_int_eq(sc_pull_now(one.addr, "rd", 1, 0, NULL), 0);
  ck_assert_int_eq(sc_pull_now(one.addr, "rd", 0, PS_CLOCK_READER, &eb), 0);
  ps_chan_client *ch;
  ck_assert_msg(ps_test_chan_connect(&ch, one.chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  sc_pull p = {.chan = ch, .model = "rd", .worker = 0, .clock = PS_CLOCK_READER};
  sc_pull_start(&p);
  ck_assert_msg(sc_wait(&p, 3000), "a reader's channel pull was parked");
  ck_assert_msg(p.err == 0, "%s", p.eb.msg);
  ps_chan_close(ch);
  sc_dense_push(r, "rd", 1, 0); /* worker 1 alone in the table */
  ck_assert_int_eq(sc_pull_now(one.addr, "rd", 1, 1, &eb), 0);
  ck_assert_uint_eq(sc_parked(r, "rd", NULL), 0);
  ps_rpc_close(r);
}
END_TEST

/* A parked sparse pull on the channel whose slowest worker stays alive
 * gives up after pull_timeout_ms naming it; the connection stays usable. */
START_TEST(test_timeout_chan) {
  ps_rpc *r;
  ps_errbuf eb;
  sc_behind(&r, one.addr, "slow", "bsp", 0);
  ps_chan_client *ch;
  ck_assert_msg(ps_test_chan_connect(&ch, one.chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  int64_t t0 = ps_test_now_ms();
  sc_pull p = {.chan = ch, .model = "slow", .worker = 0, .clock = 1};
  sc_pull_start(&p);
  while (!ps_test_bg_done(&p.bg) && ps_test_now_ms() < t0 + SC_PULL_TIMEOUT_MS + 3000) {
    ps_test_beat(r, 1, 0, &eb); /* worker 1 stays alive, and behind */
    usleep(100000);
  }
  ck_assert(sc_wait(&p, 100));
  ck_assert_int_eq(p.err, PS_ETIMEDOUT);
  ck_assert_msg(strstr(p.eb.msg, "slowest live worker 1 is at clock 0"), "%s", p.eb.msg);
  ck_assert_int_ge(ps_test_now_ms() - t0, SC_PULL_TIMEOUT_MS - 200);
  p.clock = 0; /* the connection still serves */
  sc_pull_once(&p);
  ck_assert_msg(p.err == 0, "after the timeout: %s", p.eb.msg);
  ps_chan_close(ch);
  ps_rpc_close(r);
}
END_TEST

/* The slowest worker falls silent: its lease expires and the sparse pull
 * parked on it goes on; that worker's sparse pull and push are then
 * refused until it registers again. */
START_TEST(test_lease_expiry) {
  ps_rpc *r;
  ps_errbuf eb;
  sc_behind(&r, one.addr, "dead", "bsp", 0); /* worker 1 holds a lease: its expiry is final */
  int64_t t0 = ps_test_now_ms();
  sc_pull p = {.addr = one.addr, .model = "dead", .worker = 0, .clock = 1};
  sc_pull_start(&p);
  ck_assert_msg(sc_wait(&p, SC_LEASE_MS + 3000), "lease expiry did not release the pull");
  ck_assert_msg(p.err == 0, "released pull: %s", p.eb.msg);
  ck_assert_int_ge(ps_test_now_ms() - t0, SC_LEASE_MS - 200);
  ck_assert_int_eq(sc_pull_now(one.addr, "dead", 1, 1, &eb), PS_EEXPIRED);
  ck_assert_msg(strstr(eb.msg, "worker 1"), "%s", eb.msg);
  ck_assert_int_eq(sc_sparse_push(r, "dead", sc_keys, SC_NKEYS, 1, 0, &eb), PS_EEXPIRED);
  ps_rpc_close(r);
}
END_TEST

/* sc_stopped parks a sparse pull on each plane of a fresh shard, stops
 * the shard with SIG and checks both come back with an error. */
static void sc_stopped(int sig) {
  sc_shard sh[1];
  sc_start(sh, 1, SC_LONG_LEASE_MS);
  ps_rpc *r;
  ps_errbuf eb;
  sc_behind(&r, sh[0].addr, "stop", "bsp", 0);
  ps_chan_client *ch;
  ck_assert_msg(ps_test_chan_connect(&ch, sh[0].chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  sc_pull g = {.addr = sh[0].addr, .model = "stop", .worker = 0, .clock = 1};
  sc_pull c = {.chan = ch, .model = "stop", .worker = 0, .clock = 1};
  sc_pull_start(&g);
  sc_pull_start(&c);
  usleep(300000);
  ck_assert_uint_eq(sc_parked(r, "stop", NULL), 2);
  ps_rpc_close(r);
  ck_assert_int_ge(ps_test_stop(sh[0].pid, sig, 10000), 0);
  sh[0].pid = 0;
  ck_assert_msg(sc_wait(&g, 5000), "the parked gRPC sparse pull did not come back");
  ck_assert_msg(sc_wait(&c, 5000), "the parked channel sparse pull did not come back");
  ck_assert_int_lt(g.err, 0);
  ck_assert_int_lt(c.err, 0);
  if (sig == SIGTERM) { /* answered: the shard says why */
    ck_assert_msg(strstr(g.eb.msg, "shutting down"), "%s", g.eb.msg);
    ck_assert_msg(strstr(c.eb.msg, "shutting down"), "%s", c.eb.msg);
  }
  ps_chan_close(ch);
}

START_TEST(test_stop_releases) { sc_stopped(SIGTERM); }
END_TEST

START_TEST(test_kill_releases) { sc_stopped(SIGKILL); }
END_TEST

/* sc_bare_model submits bsp models named PREFIX0, PREFIX1, ... to both
 * shards behind R until one of them holds none of a model's dense chunks
 * (placement is deterministic: the first name whose chunks all sit on one
 * shard); its name into MODEL (16 bytes), returns that shard's index. */
static int sc_bare_model(ps_rpc *r[2], const char *prefix, char *model) {
  for (int k = 0; k < 32; k++) {
    snprintf(model, 16, "%s%d", prefix, k);
    for (int i = 0; i < 2; i++) sc_submit(r[i], model, "bsp", 0);
    for (int i = 0; i < 2; i++)
      if (!sc_held(r[i], model, NULL, NULL)) return i;
  }
  ck_abort_msg("no model of 32 left a shard without dense chunks");
  return -1;
}

/* sc_bare_keys finds a key of MODEL's table the shard at ADDR holds (a
 * misplaced one is refused before its clock) into *KEY and one it does
 * not into *OTHER, by pulls of worker 0 at clock 0. */
static void sc_bare_keys(const char *addr, const char *model, uint64_t *key, uint64_t *other) {
  *key = *other = 0;
  for (uint64_t k = 1; k < 1000 && (!*key || !*other); k++) {
    sc_pull p = {.addr = addr, .model = model, .keys = &k, .nkeys = 1, .worker = 0};
    sc_pull_once(&p);
    ck_assert_msg(p.err == 0 || p.err == PS_EINVAL, "%s", p.eb.msg);
    if (p.err == 0 && !*key) *key = k;
    if (p.err != 0 && !*other) *other = k;
  }
  ck_assert_uint_ne(*key, 0);
  ck_assert_uint_ne(*other, 0);
}

/* Two shards, a model one of them holds no dense chunk of: there the
 * sparse push of a step advances the clock (a push of no keys too). */
START_TEST(test_no_dense_shard) {
  sc_shard sh[2];
  sc_start(sh, 2, SC_LONG_LEASE_MS);
  ps_rpc *r[2];
  ps_errbuf eb;
  for (int i = 0; i < 2; i++) ck_assert_int_eq(ps_test_rpc_open(&r[i], sh[i].addr, &eb), 0);
  char model[16];
  int bare = sc_bare_model(r, "nd", model);
  uint64_t key, other;
  sc_bare_keys(sh[bare].addr, model, &key, &other);
  sc_pull w1 = {.addr = sh[bare].addr, .model = model, .keys = &key, .nkeys = 1, .worker = 1};
  sc_pull_once(&w1);
  ck_assert_msg(w1.err == 0, "%s", w1.eb.msg);
  for (uint64_t c = 0; c < 2; c++) {
    ck_assert_int_eq(sc_sparse_push(r[bare], model, &key, 1, 0, c, &eb), 0);
    sc_pull p = {.addr = sh[bare].addr, .model = model, .keys = &key, .nkeys = 1, .worker = 0,
                 .clock = c + 1};
    sc_pull_start(&p);
    ck_assert_msg(!sc_wait(&p, 400), "a bsp sparse pull at %llu was served before worker 1's "
                  "push of %llu", (unsigned long long)c + 1, (unsigned long long)c);
    /* step 0: worker 1's rows; step 1: it had no key here, a push of none */
    ck_assert_int_eq(sc_sparse_push(r[bare], model, &key, c ? 0 : 1, 1, c, &eb), 0);
    ck_assert_msg(sc_wait(&p, 3000), "worker 1's sparse push did not release the pull");
    ck_assert_msg(p.err == 0, "%s", p.eb.msg);
  }
  /* the worker's client: a step whose keys are all on the other shard
   * still tells this one its clock (an empty push, on the channel) */
  ps_config cfg;
  ck_assert_msg(ps_config_load(&cfg, sc_yaml, &eb) == 0, "%s", eb.msg);
  psw_sparse *sp;
  ck_assert_msg(psw_sparse_open(&sp, &cfg, model, 0, SC_DIM, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(sc_sparse_push(r[bare], model, &key, 1, 0, 2, &eb), 0);
  sc_pull p = {.addr = sh[bare].addr, .model = model, .keys = &key, .nkeys = 1, .worker = 0,
               .clock = 3};
  sc_pull_start(&p);
  ck_assert_msg(!sc_wait(&p, 400), "a bsp sparse pull at 3 was served before worker 1's push of 2");
  float g[SC_DIM] = {0};
  ck_assert_msg(psw_sparse_push(sp, &other, 1, g, 2, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(sc_wait(&p, 3000), "the client's empty push did not release the pull");
  ck_assert_msg(p.err == 0, "%s", p.eb.msg);
  ck_assert_uint_eq(psw_sparse_lost_pushes(sp), 0);
  psw_sparse_close(sp);
  ps_config_release(&cfg);
  for (int i = 0; i < 2; i++) ps_rpc_close(r[i]);
  sc_stop(sh, 2);
}
END_TEST

/* The worker's client of the table (psw_sparse) for WORKER on the "one"
 * shard, on PLANE; *CFG is released by the caller. */
static psw_sparse *sc_client(ps_config *cfg, const char *model, uint32_t worker, int plane) {
  ps_errbuf eb;
  ck_assert_msg(ps_config_load(cfg, sc_yaml, &eb) == 0, "%s", eb.msg);
  cfg->sparse.plane = plane;
  psw_sparse *sp;
  ck_assert_msg(psw_sparse_open(&sp, cfg, model, 0, SC_DIM, worker, &eb) == 0, "%s", eb.msg);
  return sp;
}

/* A psw_sparse_pull in a thread. */
typedef struct sc_cpull {
  psw_sparse *sp;
  const uint64_t *keys; /* NULL: sc_keys */
  uint32_t nkeys;
  uint64_t clock;
  int err;
  ps_errbuf eb;
  float rows[SC_NKEYS * SC_DIM];
  ps_test_bg bg;
} sc_cpull;

static void sc_cpull_run(void *arg) {
  sc_cpull *p = arg;
  p->err = psw_sparse_pull(p->sp, p->keys ? p->keys : sc_keys, p->keys ? p->nkeys : SC_NKEYS,
                           p->rows, p->clock, &p->eb);
}

/* sc_stderr_to sends stderr to PATH (returns the saved fd) and back
 * (sc_stderr_back). */
static int sc_stderr_to(const char *path) {
  fflush(stderr);
  int saved = dup(2);
  ck_assert(freopen(path, "w", stderr) != NULL);
  return saved;
}

static void sc_stderr_back(int saved) {
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
}

/* The client's pull parked past pull_timeout_ms on the channel (the
 * slowest worker alive and behind): the shard is up, so the client asks
 * it again on the channel, saying it waits for that worker, until the
 * slowest worker's push releases it (it used to take the timeout for a
 * shard that is down: gRPC, "retrying for up to retry_ms"). */
START_TEST(test_client_parked_chan) {
  ps_rpc *r;
  ps_errbuf eb;
  sc_behind(&r, one.addr, "cpk", "bsp", 0);
  ps_config cfg;
  sc_cpull p = {.sp = sc_client(&cfg, "cpk", 0, PS_SPARSE_PLANE_CHANNEL), .clock = 1};
  char errlog[700];
  snprintf(errlog, sizeof errlog, "%s/client.err", ps_test_tmpdir());
  int saved = sc_stderr_to(errlog);
  ps_test_bg_start(&p.bg, sc_cpull_run, &p);
  int64_t t0 = ps_test_now_ms();
  while (ps_test_now_ms() < t0 + SC_PULL_TIMEOUT_MS + 1500 && !ps_test_bg_done(&p.bg)) {
    for (uint32_t w = 0; w < 2; w++) ps_test_beat(r, w, 0, &eb); /* both alive, 1 behind */
    usleep(100000);
  }
  int early = ps_test_bg_done(&p.bg);
  sc_dense_push(r, "cpk", 1, 0); /* the slowest worker's step: the pull goes on */
  int back = ps_test_bg_wait(&p.bg, 5000);
  sc_stderr_back(saved);
  char *text = ps_test_read_file(errlog, NULL);
  ck_assert_msg(!early, "the pull came back before the slowest worker pushed: %d %s; log: %s",
                p.err, p.eb.msg, text);
  ck_assert_msg(back && p.err == 0, "the released pull: %d %s; log: %s", p.err, p.eb.msg, text);
  ck_assert_msg(strstr(text, "waiting for that worker") && strstr(text, "went on after waiting"),
                "log: %s", text);
  ck_assert_msg(!strstr(text, "retrying"), "a parked pull taken for a shard down: %s", text);
  free(text);
  psw_sparse_close(p.sp);
  ps_config_release(&cfg);
  ps_rpc_close(r);
}
END_TEST

/* A stop ends the client's wait for a parked pull within about 100 ms
 * on either plane (PS_ESHUTDOWN); it used to wait out the reply timeout
 * (pull_timeout_ms + 5 s) on the channel, then as long again on gRPC. */
START_TEST(test_client_stop) {
  ps_rpc *r;
  static const char *models[2] = {"cst0", "cst1"};
  static const int planes[2] = {PS_SPARSE_PLANE_CHANNEL, PS_SPARSE_PLANE_GRPC};
  for (int i = 0; i < 2; i++) {
    sc_behind(&r, one.addr, models[i], "bsp", 0);
    ps_config cfg;
    static volatile sig_atomic_t stop;
    stop = 0;
    sc_cpull p = {.sp = sc_client(&cfg, models[i], 0, planes[i]), .clock = 1};
    psw_sparse_set_stop(p.sp, &stop);
    ps_test_bg_start(&p.bg, sc_cpull_run, &p);
    ck_assert_msg(!ps_test_bg_wait(&p.bg, 500), "plane %d: the pull was not parked", planes[i]);
    int64_t t0 = ps_test_now_ms();
    stop = 1;
    ck_assert_msg(ps_test_bg_wait(&p.bg, 10000), "plane %d: the stop did not end the pull",
                  planes[i]);
    int64_t took = ps_test_now_ms() - t0;
    ck_assert_msg(p.err == PS_ESHUTDOWN, "plane %d: %d %s", planes[i], p.err, p.eb.msg);
    ck_assert_msg(took < 700, "plane %d: the stop took %lld ms", planes[i], (long long)took);
    psw_sparse_close(p.sp);
    ps_config_release(&cfg);
    sc_dense_push(r, models[i], 1, 0);
    ps_rpc_close(r);
  }
}
END_TEST

/* The rejoin hook of sc_client's worker 1: a heartbeat marked rejoin. */
static int sc_hook_calls;
static int sc_hook(void *arg, ps_errbuf *eb) {
  sc_hook_calls++;
  return ps_test_beat(arg, 1, 1, eb);
}

/* A worker the shard declared dead (its lease expired): its client's
 * pull and push are refused as expired; the client rejoins (its hook) and
 * asks again, and the push is applied once (it used to fail the step:
 * psw exited 1 where a dense model's worker rejoined). */
START_TEST(test_client_rejoin) {
  ps_rpc *r;
  ps_errbuf eb;
  sc_behind(&r, one.addr, "crj", "asp", 0);
  ps_config cfg;
  psw_sparse *sp = sc_client(&cfg, "crj", 1, PS_SPARSE_PLANE_CHANNEL);
  psw_sparse_set_rejoin(sp, sc_hook, r);
  float before[SC_NKEYS * SC_DIM], after[SC_NKEYS * SC_DIM], g[SC_NKEYS * SC_DIM];
  for (int i = 0; i < SC_NKEYS * SC_DIM; i++) g[i] = 0.5f;
  ck_assert_msg(psw_sparse_pull(sp, sc_keys, SC_NKEYS, before, 0, &eb) == 0, "%s", eb.msg);
  for (int step = 0; step < 2; step++) {
    usleep((SC_LEASE_MS + 800) * 1000); /* silent past its lease: declared dead */
    ck_assert_int_eq(sc_pull_now(one.addr, "crj", 1, 1, &eb), PS_EEXPIRED);
    sc_hook_calls = 0;
    int rc = step ? psw_sparse_pull(sp, sc_keys, SC_NKEYS, after, 1, &eb)
                  : psw_sparse_push(sp, sc_keys, SC_NKEYS, g, 0, &eb);
    ck_assert_msg(rc == 0, "%s after the lease expired: %s", step ? "pull" : "push", eb.msg);
    ck_assert_int_eq(sc_hook_calls, 1);
  }
  ck_assert_uint_eq(psw_sparse_lost_pushes(sp), 0);
  for (int i = 0; i < SC_NKEYS * SC_DIM; i++) /* sgd, learning rate 1: applied once */
    ck_assert_msg(after[i] == before[i] - 0.5f, "row value %d: %g, was %g", i, after[i], before[i]);
  /* without a hook the refusal stands */
  psw_sparse_set_rejoin(sp, NULL, NULL);
  usleep((SC_LEASE_MS + 800) * 1000);
  ck_assert_int_eq(psw_sparse_pull(sp, sc_keys, SC_NKEYS, after, 2, &eb), PS_EEXPIRED);
  psw_sparse_close(sp);
  ps_config_release(&cfg);
  ps_rpc_close(r);
}
END_TEST

/* sc_start_gated starts two sync shards into SH as sc_start does, each
 * under the fsync shim with its gate DIR/gateI: the file FAIL[i] (700
 * bytes each; DIR/gateI.fail) makes shard i's log syncs fail (DEGRADED). */
static void sc_start_gated(sc_shard sh[2], char fail[2][700]) {
  const char *dir = ps_test_tmpdir();
  int gp[2], cp[2];
  char extra[256];
  snprintf(extra, sizeof extra,
           "workers:\n  count: 2\n  heartbeat_ms: 100\n  lease_ms: %d\n"
           "training:\n  pull_timeout_ms: %d\n", SC_LONG_LEASE_MS, SC_PULL_TIMEOUT_MS);
  snprintf(sc_yaml, sizeof sc_yaml, "%s", ps_test_sync_yaml(dir, 2, extra, gp, cp));
  static ps_test_shim_env env[2];
  for (int i = 0; i < 2; i++) {
    char g[600];
    snprintf(g, sizeof g, "%s/gate%d", dir, i);
    snprintf(fail[i], 700, "%s.fail", g);
    ps_test_shim_env_init(&env[i], NULL, g);
    snprintf(sh[i].log, sizeof sh[i].log, "%s/psd%d.log", dir, i);
    sh[i].pid = ps_test_psd(sc_yaml, i, sh[i].log, env[i].env);
    snprintf(sh[i].addr, sizeof sh[i].addr, "127.0.0.1:%d", gp[i]);
    snprintf(sh[i].chan, sizeof sh[i].chan, "127.0.0.1:%d", cp[i]);
  }
  for (int i = 0; i < 2; i++)
    ck_assert_msg(ps_test_wait_port(gp[i], 15000) == 0 && ps_test_wait_port(cp[i], 15000) == 0,
                  "psd did not start, see %s", sh[i].log);
}

/* sc_degrade makes shard WHICH of R DEGRADED: a dense push of a model it
 * holds chunks of (asp, submitted as dg0, dg1, ...) while FAIL exists. */
static void sc_degrade(ps_rpc *r[2], int which, const char *fail) {
  char model[16];
  int k = 0;
  do {
    snprintf(model, sizeof model, "dg%d", k);
    for (int i = 0; i < 2; i++) sc_submit(r[i], model, "asp", 0);
  } while (!sc_held(r[which], model, NULL, NULL) && ++k < 32);
  ck_assert_int_lt(k, 32);
  ps_test_write_file(fail, "fail\n");
  ps_errbuf eb;
  int err = sc_dense_push_rc(r[which], model, 0, 0, &eb);
  /* (gRPC has no code for it: UNAVAILABLE, as the shard says) */
  ck_assert_msg(err < 0 && strstr(eb.msg, "degraded"), "a push with the log's syncs failing: "
                "%d %s", err, err ? eb.msg : "");
}

/* A sparse push lost on a shard that holds none of the model's dense
 * chunks (refused there DEGRADED) under bsp: the worker's client tells
 * the shard it moved on (a moved_on heartbeat) before its next pull
 * there, so that pull is served.  The push is what moves the worker's
 * clock on such a shard, so the pull used to wait for the worker itself
 * ("slowest live worker 0"), asked again at every pull timeout, until a
 * stop.  psw_client's test_client_lost_push_bsp is the dense path's. */
START_TEST(test_client_moved_on) {
  sc_shard sh[2];
  char fail[2][700];
  sc_start_gated(sh, fail);
  ps_rpc *r[2];
  ps_errbuf eb;
  for (int i = 0; i < 2; i++) ck_assert_int_eq(ps_test_rpc_open(&r[i], sh[i].addr, &eb), 0);
  char model[16];
  int bare = sc_bare_model(r, "mo", model);
  uint64_t key, other;
  sc_bare_keys(sh[bare].addr, model, &key, &other);
  ps_config cfg;
  ck_assert_msg(ps_config_load(&cfg, sc_yaml, &eb) == 0, "%s", eb.msg);
  psw_sparse *sp;
  ck_assert_msg(psw_sparse_open(&sp, &cfg, model, 0, SC_DIM, 0, &eb) == 0, "%s", eb.msg);
  static volatile sig_atomic_t stop;
  stop = 0;
  psw_sparse_set_stop(sp, &stop);
  float g[SC_DIM] = {0};
  sc_cpull p = {.sp = sp};
  for (uint64_t c = 0; c < 2; c++) { /* steps 0 and 1: pulled, and step 0 pushed */
    ck_assert_msg(psw_sparse_pull(sp, &key, 1, p.rows, c, &eb) == 0, "pull %llu: %s",
                  (unsigned long long)c, eb.msg);
    if (!c) ck_assert_msg(psw_sparse_push(sp, &key, 1, g, c, &eb) == 0, "%s", eb.msg);
  }
  sc_degrade(r, bare, fail[bare]);
  ck_assert_msg(psw_sparse_push(sp, &key, 1, g, 1, &eb) == 0, "%s", eb.msg); /* refused: lost */
  ck_assert_uint_eq(psw_sparse_lost_pushes(sp), 1);
  p.keys = &key, p.nkeys = 1, p.clock = 2; /* the pull of step 2 */
  ps_test_bg_start(&p.bg, sc_cpull_run, &p);
  int served = ps_test_bg_wait(&p.bg, SC_PULL_TIMEOUT_MS + 1500);
  stop = 1; /* the old client's wait had no end but this */
  ck_assert_msg(ps_test_bg_wait(&p.bg, 10000), "the pull of step 2 did not end at a stop");
  unlink(fail[bare]);
  ck_assert_msg(served && p.err == 0, "the pull of step 2 after a lost push %s: %d %s",
                served ? "failed" : "still waited", p.err, p.eb.msg);
  psw_sparse_close(sp);
  ps_config_release(&cfg);
  for (int i = 0; i < 2; i++) ps_rpc_close(r[i]);
  sc_stop(sh, 2);
}
END_TEST

Suite *psd_sparse_clock_suite(void) {
  Suite *s = suite_create("psd_sparse_clock");
  TCase *tc = tcase_create("one");
  tcase_add_unchecked_fixture(tc, sc_up, sc_down);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_bsp_grpc);
  tcase_add_test(tc, test_bsp_chan);
  tcase_add_test(tc, test_ssp);
  tcase_add_test(tc, test_asp);
  tcase_add_test(tc, test_reader);
  tcase_add_test(tc, test_timeout_chan);
  tcase_add_test(tc, test_lease_expiry);
  tcase_add_test(tc, test_client_parked_chan);
  tcase_add_test(tc, test_client_stop);
  tcase_add_test(tc, test_client_rejoin);
  suite_add_tcase(s, tc);
  TCase *own = tcase_create("own");
  tcase_set_timeout(own, 60);
  /* its shards stopped by PID when a test fails before it stops them */
  tcase_add_unchecked_fixture(own, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(own, test_stop_releases);
  tcase_add_test(own, test_kill_releases);
  tcase_add_test(own, test_no_dense_shard);
  tcase_add_test(own, test_client_moved_on);
  suite_add_tcase(s, own);
  return s;
}
