/* psd_chan_client: the channel client on a libuv loop (psd_chan_client.h),
 * run on a loop in the test against a real psd (with PS_TEST_SECURITY=tls
 * the authenticated channel, tls-mac the payload MAC too) and against a
 * fake shard on a thread of the test that misbehaves on purpose:
 *  - round trip: pull, push, pull pipelined on one connection (the pull
 *    after the push sees p0 - lr g), a pull whose bytes land in place, a
 *    refusal that keeps the connection, a beat; the loop closes clean;
 *  - connection refused: every request made finishes with PS_EUNAVAIL, and
 *    a later one connects again (and fails again);
 *  - the peer dies mid-request (it answered the hello, read the request,
 *    closed): the request finishes with PS_EUNAVAIL;
 *  - bounded waits: a peer that never answers the hello, or answers it
 *    but never the request, fails the request with PS_ETIMEDOUT;
 *  - close with requests in flight finishes them with PS_ESHUTDOWN;
 *  - dead_ms: psd_chan_client_set_dead_ms gives the connection's socket
 *    TCP_USER_TIMEOUT and keepalive (an aggregator's link to a root then
 *    breaks on a cut path as psw's connections do), the one up now too. */
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_pb.h"
#include "ps_test.h"
#include "psd_chan_client.h"

#define TC_ELEMS 3000 /* 3 chunks of 1024 by default: 12000 bytes, over the staging buffer */
#define TC_WAIT_MS 20000

typedef struct tc_res {
  int done, status;
  char msg[512];
  uint64_t version, nbytes;
  void *reply;
} tc_res;

static void tc_fn(psd_done *d, int status, const char *msg) {
  tc_res *r = d->arg;
  r->done++;
  r->status = status;
  snprintf(r->msg, sizeof r->msg, "%s", msg ? msg : "");
  r->version = d->version;
  r->nbytes = d->nbytes;
  if (status == 0 && d->data && d->nbytes) {
    free(r->reply);
    r->reply = malloc(d->nbytes);
    memcpy(r->reply, d->data, d->nbytes);
  }
}

static void tc_tick(uv_timer_t *t) { (void)t; }

/* tc_run turns LOOP until the N results are in (each once), at most
 * TIMEOUT_MS. */
static void tc_run(uv_loop_t *loop, tc_res *rs, int n, int timeout_ms) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tc_tick, 20, 20);
  int64_t until = ps_test_now_ms() + timeout_ms;
  for (;;) {
    int all = 1;
    for (int i = 0; i < n; i++) all &= rs[i].done > 0;
    if (all || ps_test_now_ms() > until) break;
    uv_run(loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  for (int i = 0; i < n; i++) {
    ck_assert_msg(rs[i].done > 0, "request %d did not finish within %d ms", i, timeout_ms);
    ck_assert_int_eq(rs[i].done, 1);
  }
}

/* tc_close closes C and checks that LOOP then winds down: nothing left. */
static void tc_close(uv_loop_t *loop, psd_chan_client *c) {
  psd_chan_client_close(c);
  int64_t until = ps_test_now_ms() + TC_WAIT_MS;
  while (uv_run(loop, UV_RUN_NOWAIT) && ps_test_now_ms() < until) usleep(1000);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

static psd_chan_client_req tc_req(tc_res *r) {
  psd_chan_client_req q;
  memset(&q, 0, sizeof q);
  q.done.fn = tc_fn;
  q.done.arg = r;
  return q;
}

/* ---- against a real shard ---------------------------------------------------------- */

typedef struct tc_shard {
  char dir[512], yaml[600], addr[64];
  int gp[1], cp[1];
  pid_t pid;
} tc_shard;

static void tc_shard_start(tc_shard *s) {
  snprintf(s->dir, sizeof s->dir, "%s", ps_test_tmpdir());
  snprintf(s->yaml, sizeof s->yaml, "%s", ps_test_cluster_yaml(s->dir, 1, NULL, s->gp, s->cp));
  ps_test_start_shards(s->yaml, s->dir, 1, s->gp, s->cp, &s->pid);
  ps_rpc *rpc = NULL;
  ps_errbuf eb = {""};
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", s->gp[0]);
  ck_assert_msg(ps_test_rpc_open(&rpc, addr, &eb) == 0, "%s", eb.msg);
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  Ps__TensorSpec t = PS__TENSOR_SPEC__INIT, *ts = &t;
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  uint32_t shape = TC_ELEMS;
  t.name = "w";
  t.n_shape = 1;
  t.shape = &shape;
  t.init = "uniform";
  t.scale = 0.5f;
  opt.kind = "sgd";
  opt.lr = 0.1f;
  spec.name = "m";
  spec.seed = 7;
  spec.n_tensors = 1;
  spec.tensors = &ts;
  spec.optimizer = &opt;
  spec.consistency = "asp";
  ps_test_submit(rpc, &spec, 0, 10000);
  ps_rpc_close(rpc);
  snprintf(s->addr, sizeof s->addr, "127.0.0.1:%d", s->cp[0]);
}

START_TEST(test_cc_round_trip) {
  tc_shard s;
  tc_shard_start(&s);
  ps_auth_keys keys = {0};
  const ps_auth_key *key;
  int flags;
  ps_errbuf eb = {""};
  ck_assert_msg(ps_test_chan_key(&keys, &key, &flags, &eb) == 0, "%s", eb.msg);
  uv_loop_t loop;
  uv_loop_init(&loop);
  psd_chan_client *c;
  ck_assert_int_eq(psd_chan_client_new(&c, &loop, s.addr, "test", key, flags, 5000, 10000, &eb), 0);
  ck_assert_uint_eq(psd_chan_client_gen(c), 0);
  static float p0[TC_ELEMS], p1[TC_ELEMS], g[TC_ELEMS];
  for (int i = 0; i < TC_ELEMS; i++) g[i] = (float)(i % 17) * 0.25f;
  uint32_t ids[3] = {0, 1, 2};
  ps_req pull0 = {.model = "m", .ids = ids, .nids = 3, .out = p0, .nbytes = sizeof p0};
  ps_req push = {.model = "m", .ids = ids, .nids = 3, .grads = g, .nbytes = sizeof g};
  ps_req pull1 = {.model = "m", .ids = ids, .nids = 3, .out = p1, .nbytes = sizeof p1};
  tc_res r[3] = {{0}};
  psd_chan_client_req q[3] = {tc_req(&r[0]), tc_req(&r[1]), tc_req(&r[2])};
  /* pipelined, made before the connection is up: written in order once
   * the hello is done, answered in order */
  ck_assert_int_eq(psd_chan_client_pull(c, &pull0, &q[0], &eb), 0);
  ck_assert_int_eq(psd_chan_client_push(c, &push, &q[1], &eb), 0);
  ck_assert_int_eq(psd_chan_client_pull(c, &pull1, &q[2], &eb), 0);
  ck_assert_uint_eq(psd_chan_client_inflight(c), 3);
  tc_run(&loop, r, 3, TC_WAIT_MS);
  for (int i = 0; i < 3; i++) ck_assert_msg(r[i].status == 0, "request %d: %s", i, r[i].msg);
  ck_assert_uint_eq(psd_chan_client_inflight(c), 0);
  ck_assert_uint_eq(psd_chan_client_gen(c), 1);
  ck_assert_uint_eq(q[2].gen, 1);
  ck_assert_uint_eq(r[0].nbytes, sizeof p0);
  ck_assert_uint_gt(r[2].version, r[0].version);
  for (int i = 0; i < TC_ELEMS; i++)
    ck_assert_msg(p1[i] == p0[i] - 0.1f * g[i] || fabsf(p1[i] - (p0[i] - 0.1f * g[i])) < 1e-6f,
                  "element %d: %g, want %g", i, p1[i], p0[i] - 0.1f * g[i]);
  /* a refusal keeps the connection: an unknown model, then a beat */
  ps_req bad = {.model = "nope", .ids = ids, .nids = 1, .out = p1, .nbytes = 4096};
  Ps__HeartbeatRequest hb = PS__HEARTBEAT_REQUEST__INIT;
  hb.worker = 0;
  uint8_t hbuf[64];
  size_t hlen = ps__heartbeat_request__pack(&hb, hbuf);
  tc_res r2[2] = {{0}};
  psd_chan_client_req q2[2] = {tc_req(&r2[0]), tc_req(&r2[1])};
  ck_assert_int_eq(psd_chan_client_pull(c, &bad, &q2[0], &eb), 0);
  ck_assert_int_eq(psd_chan_client_beat(c, hbuf, hlen, &q2[1], &eb), 0);
  tc_run(&loop, r2, 2, TC_WAIT_MS);
  ck_assert_int_eq(r2[0].status, PS_ENOENT);
  ck_assert_msg(strstr(r2[0].msg, "nope"), "%s", r2[0].msg);
  ck_assert_msg(r2[1].status == 0, "beat: %s", r2[1].msg);
  Ps__HeartbeatReply *rep = NULL;
  ck_assert_int_eq(ps_pb_unpack(&ps__heartbeat_reply__descriptor, r2[1].reply, r2[1].nbytes,
                                (ProtobufCMessage **)&rep, &eb), 0);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  ck_assert_uint_eq(psd_chan_client_gen(c), 1); /* the same connection */
  /* close with a request in flight: PS_ESHUTDOWN */
  tc_res r3 = {0};
  psd_chan_client_req q3 = tc_req(&r3);
  ck_assert_int_eq(psd_chan_client_pull(c, &pull1, &q3, &eb), 0);
  psd_chan_client_close(c);
  ck_assert_int_eq(r3.done, 1);
  ck_assert_int_eq(r3.status, PS_ESHUTDOWN);
  int64_t until = ps_test_now_ms() + TC_WAIT_MS;
  while (uv_run(&loop, UV_RUN_NOWAIT) && ps_test_now_ms() < until) usleep(1000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  for (int i = 0; i < 3; i++) free(r[i].reply);
  for (int i = 0; i < 2; i++) free(r2[i].reply);
  ps_auth_release(&keys);
  ps_test_stop(s.pid, SIGTERM, 10000);
}
END_TEST

START_TEST(test_cc_refused) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", ps_test_free_port());
  uv_loop_t loop;
  uv_loop_init(&loop);
  psd_chan_client *c;
  ps_errbuf eb = {""};
  ck_assert_int_eq(psd_chan_client_new(&c, &loop, "nonsense", "test", NULL, 0, 1000, 1000, &eb),
                   PS_EINVAL);
  ck_assert_int_eq(psd_chan_client_new(&c, &loop, addr, "test", NULL, 0, 5000, 5000, &eb), 0);
  static float out[16];
  uint32_t ids[1] = {0};
  ps_req pull = {.model = "m", .ids = ids, .nids = 1, .out = out, .nbytes = sizeof out};
  for (int round = 0; round < 2; round++) { /* the second connects again */
    tc_res r[2] = {{0}};
    psd_chan_client_req q[2] = {tc_req(&r[0]), tc_req(&r[1])};
    ck_assert_int_eq(psd_chan_client_pull(c, &pull, &q[0], &eb), 0);
    ck_assert_int_eq(psd_chan_client_pull(c, &pull, &q[1], &eb), 0);
    tc_run(&loop, r, 2, TC_WAIT_MS);
    for (int i = 0; i < 2; i++) {
      ck_assert_int_eq(r[i].status, PS_EUNAVAIL);
      ck_assert_msg(strstr(r[i].msg, addr), "%s", r[i].msg);
    }
  }
  ck_assert_uint_eq(psd_chan_client_gen(c), 0);
  tc_close(&loop, c);
}
END_TEST

/* ---- a fake shard ------------------------------------------------------------------- */

enum { TF_SILENT, TF_HELLO_SILENT, TF_HELLO_CLOSE, TF_LIMIT, TF_HELLO_ID0 };

typedef struct tc_fake {
  int lfd, port, mode;
  pthread_t t;
  int got_request;
} tc_fake;

/* tf_read reads N bytes within 10 s; 0, or -1 (closed, timed out). */
static int tf_read(int fd, void *p, size_t n) {
  size_t got = 0;
  while (got < n) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, 10000) != 1) return -1;
    ssize_t r = read(fd, (uint8_t *)p + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

/* tf_frame reads one frame (header and meta; no data expected) into H. */
static int tf_frame(int fd, ps_chan_hdr *h) {
  uint8_t hb[PS_CHAN_HDR_LEN], meta[4096];
  if (tf_read(fd, hb, sizeof hb) < 0 || ps_chan_hdr_decode(h, hb, 1u << 20) < 0 ||
      h->meta_len > sizeof meta)
    return -1;
  return tf_read(fd, meta, h->meta_len);
}

/* tf_wait_close waits (10 s at most) for the client to close. */
static void tf_wait_close(int fd) {
  uint8_t b[256];
  struct pollfd pf = {.fd = fd, .events = POLLIN};
  while (poll(&pf, 1, 10000) == 1 && read(fd, b, sizeof b) > 0) {
  }
}

/* tf_id0 writes an error frame of request id 0 with STATUS (what a shard
 * at its connection limit sends at accept). */
static void tf_id0(int fd, int status) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_ERROR;
  m.status = status;
  m.message = "shard 0 holds its limit of 1 channel connections (limits.max_connections)";
  uint8_t mb[256], hb[PS_CHAN_HDR_LEN];
  size_t ml = ps__chan_meta__pack(&m, mb);
  ps_chan_hdr rh = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                    .meta_len = (uint32_t)ml, .req_id = 0};
  ps_chan_hdr_encode(hb, &rh);
  if (write(fd, hb, sizeof hb) != (ssize_t)sizeof hb || write(fd, mb, ml) != (ssize_t)ml)
    return;
}

static void *tf_main(void *arg) {
  tc_fake *f = arg;
  struct pollfd pf = {.fd = f->lfd, .events = POLLIN};
  if (poll(&pf, 1, 10000) != 1) return NULL;
  int fd = accept(f->lfd, NULL, NULL);
  if (fd < 0) return NULL;
  ps_chan_hdr h;
  if (f->mode == TF_LIMIT) { /* refused at accept, as a shard at max_connections does */
    tf_id0(fd, PS_EUNAVAIL);
  } else if (f->mode != TF_SILENT && tf_frame(fd, &h) == 0) {
    Ps__ChanMeta m = PS__CHAN_META__INIT;
    m.op = PS__CHAN_OP__CHAN_HELLO;
    m.proto_version = PS_CHAN_VERSION;
    uint8_t mb[256], hb[PS_CHAN_HDR_LEN];
    size_t ml = ps__chan_meta__pack(&m, mb);
    ps_chan_hdr rh = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                      .meta_len = (uint32_t)ml, .req_id = h.req_id};
    ps_chan_hdr_encode(hb, &rh);
    if (write(fd, hb, sizeof hb) == (ssize_t)sizeof hb && write(fd, mb, ml) == (ssize_t)ml &&
        tf_frame(fd, &h) == 0)
      f->got_request = 1;
    if (f->mode == TF_HELLO_CLOSE) {
      close(fd);
      return NULL;
    }
    if (f->mode == TF_HELLO_ID0) tf_id0(fd, PS_EINVAL); /* injected after the hello */
  }
  tf_wait_close(fd);
  close(fd);
  return NULL;
}

static void tf_start(tc_fake *f, int mode) {
  memset(f, 0, sizeof *f);
  f->mode = mode;
  f->lfd = ps_test_listen(0, &f->port);
  ck_assert_int_eq(pthread_create(&f->t, NULL, tf_main, f), 0);
}

/* One pull of a client against a fake shard. */
typedef struct tf_pull {
  tc_fake f;
  uv_loop_t loop;
  psd_chan_client *c;
  tc_res r;
  psd_chan_client_req q;
} tf_pull;

/* tf_pull_start starts a fake shard in MODE and makes K's client's pull
 * of it (DEAD_MS > 0: psd_chan_client_set_dead_ms first). */
static void tf_pull_start(tf_pull *k, int mode, int connect_ms, int io_ms, int dead_ms) {
  memset(k, 0, sizeof *k);
  tf_start(&k->f, mode);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", k->f.port);
  uv_loop_init(&k->loop);
  ps_errbuf eb = {""};
  ck_assert_int_eq(
      psd_chan_client_new(&k->c, &k->loop, addr, "test", NULL, 0, connect_ms, io_ms, &eb), 0);
  if (dead_ms > 0) psd_chan_client_set_dead_ms(k->c, dead_ms);
  static float out[16];
  uint32_t ids[1] = {0};
  ps_req pull = {.model = "m", .ids = ids, .nids = 1, .out = out, .nbytes = sizeof out};
  k->q = tc_req(&k->r);
  ck_assert_int_eq(psd_chan_client_pull(k->c, &pull, &k->q, &eb), 0);
}

/* tf_pull_end closes K's client and waits for its fake shard. */
static void tf_pull_end(tf_pull *k) {
  tc_close(&k->loop, k->c);
  pthread_join(k->f.t, NULL);
  close(k->f.lfd);
}

/* tf_case runs one pull against a fake shard in MODE and returns its result. */
static tc_res tf_case(int mode, int connect_ms, int io_ms, int *got_request) {
  tf_pull k;
  tf_pull_start(&k, mode, connect_ms, io_ms, 0);
  tc_run(&k.loop, &k.r, 1, TC_WAIT_MS);
  tf_pull_end(&k);
  *got_request = k.f.got_request;
  return k.r;
}

START_TEST(test_cc_peer_dies) {
  int got;
  tc_res r = tf_case(TF_HELLO_CLOSE, 5000, 5000, &got);
  ck_assert_int_eq(got, 1); /* it died after reading the request */
  ck_assert_int_eq(r.status, PS_EUNAVAIL);
  ck_assert_msg(strstr(r.msg, "closed by the server"), "%s", r.msg);
}
END_TEST

START_TEST(test_cc_bounded_waits) {
  int got;
  tc_res r = tf_case(TF_SILENT, 300, 60000, &got); /* no hello: connect_ms */
  ck_assert_int_eq(got, 0);
  ck_assert_int_eq(r.status, PS_ETIMEDOUT);
  ck_assert_msg(strstr(r.msg, "no hello"), "%s", r.msg);
  r = tf_case(TF_HELLO_SILENT, 60000, 300, &got); /* no answer: io_ms */
  ck_assert_int_eq(got, 1);
  ck_assert_int_eq(r.status, PS_ETIMEDOUT);
  ck_assert_msg(strstr(r.msg, "no progress"), "%s", r.msg);
}
END_TEST

/* A shard at its connection limit says so at accept (a frame of request
 * id 0): the aggregator's link reports what it said (it said "unexpected
 * reply"). */
START_TEST(test_cc_limit_said) {
  int got;
  tc_res r = tf_case(TF_LIMIT, 5000, 5000, &got);
  ck_assert_int_eq(r.status, PS_EUNAVAIL);
  ck_assert_msg(strstr(r.msg, "the shard refused the connection: shard 0 holds its limit"),
                "%s", r.msg);
  /* after the hello a frame of id 0 is no one's word (it carries no MAC an
   * injected one could not forge): an unexpected reply, retryable, never
   * the status it claims */
  r = tf_case(TF_HELLO_ID0, 5000, 5000, &got);
  ck_assert_int_eq(r.status, PS_EPROTO);
  ck_assert_msg(strstr(r.msg, "unexpected reply"), "%s", r.msg);
}
END_TEST

/* tc_client_fd: this process's socket connected to 127.0.0.1:PORT (the
 * client's end, not the fake shard's accepted one), or -1. */
static int tc_client_fd(int port) {
  for (int fd = 0; fd < 4096; fd++) {
    struct sockaddr_in peer;
    socklen_t n = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &n) == 0 && peer.sin_family == AF_INET &&
        ntohs(peer.sin_port) == port)
      return fd;
  }
  return -1;
}

/* tc_dead_ms_of: FD's TCP_USER_TIMEOUT, and whether keepalive is on. */
static unsigned tc_dead_ms_of(int fd, int *keepalive) {
  unsigned ut = 0;
  socklen_t n = sizeof ut;
  ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, &n), 0);
  n = sizeof *keepalive;
  ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, keepalive, &n), 0);
  return ut;
}

/* An aggregator's root link (psd_agg sets ps_config_dead_ms on it) gets
 * TCP_USER_TIMEOUT and keepalive on each connection, set before it
 * connects or while it is up; before, it had neither, and a cut path
 * waited out TCP's retransmission backoff. */
START_TEST(test_cc_dead_ms) {
  tf_pull k; /* the fake answers the hello, never the pull */
  tf_pull_start(&k, TF_HELLO_SILENT, 5000, 60000, 2500);
  int64_t until = ps_test_now_ms() + TC_WAIT_MS;
  while (psd_chan_client_gen(k.c) < 1 && !k.r.done && ps_test_now_ms() < until) {
    uv_run(&k.loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ck_assert_msg(psd_chan_client_gen(k.c) == 1, "no hello within %d ms: %s", TC_WAIT_MS, k.r.msg);
  int fd = tc_client_fd(k.f.port), ka = 0;
  ck_assert_int_ge(fd, 0);
  ck_assert_uint_eq(tc_dead_ms_of(fd, &ka), 2500);
  ck_assert_int_eq(ka, 1);
  psd_chan_client_set_dead_ms(k.c, 4000); /* the connection up now */
  ck_assert_uint_eq(tc_dead_ms_of(fd, &ka), 4000);
  ck_assert_int_eq(ka, 1);
  ck_assert_int_eq(k.r.done, 0);
  tf_pull_end(&k);
  ck_assert_int_eq(k.r.status, PS_ESHUTDOWN);
}
END_TEST

Suite *psd_chan_client_suite(void) {
  Suite *s = suite_create("psd_chan_client");
  TCase *tc = tcase_create("psd_chan_client");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_cc_round_trip);
  tcase_add_test(tc, test_cc_refused);
  tcase_add_test(tc, test_cc_peer_dies);
  tcase_add_test(tc, test_cc_bounded_waits);
  tcase_add_test(tc, test_cc_limit_said);
  tcase_add_test(tc, test_cc_dead_ms);
  suite_add_tcase(s, tc);
  return s;
}
