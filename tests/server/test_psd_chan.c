/* Tests for the tensor channel against one real psd on loopback: round
 * trips (contiguous, scattered, pipelined), errors answered with the
 * connection still usable, and bad frames that close only their own
 * connection while the values stay unchanged. */
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_config.h"
#include "ps_place.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "psd_chan.h"

#define W_ELEMS 4096       /* tensor "w": 16 chunks of 256 */
#define B_ELEMS 100        /* tensor "b": chunk 16, 100 elements */
#define NCHUNKS 17
#define NELEMS (W_ELEMS + B_ELEMS)
#define MAX_REQ (64u << 20)

static pid_t psd_pid;
static char grpc_addr[64], chan_addr[64];
static int started;

/* Starts one psd for the whole suite (unchecked fixture: runs in the
 * runner, before the tests fork). */
static void psd_up(void) {
  const char *dir = ps_test_tmpdir();
  char extra[64], log[600];
  int gp, cp;
  snprintf(extra, sizeof extra, "limits:\n  max_request_bytes: %u\n", MAX_REQ);
  const char *yaml = ps_test_cluster_yaml(dir, 1, extra, &gp, &cp);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  snprintf(grpc_addr, sizeof grpc_addr, "127.0.0.1:%d", gp);
  snprintf(chan_addr, sizeof chan_addr, "127.0.0.1:%d", cp);
  psd_pid = ps_test_psd(yaml, 0, log, NULL);
  started = ps_test_wait_port(cp, 15000) == 0 && ps_test_wait_port(gp, 5000) == 0;
  if (!started) fprintf(stderr, "psd did not start; see %s\n", log);
}

static void psd_down(void) {
  if (psd_pid > 0) ps_test_stop(psd_pid, SIGTERM, 10000);
  psd_pid = 0;
}

/* submit registers model NAME: w[4096] uniform and b[100] ones, SGD lr 0.5,
 * 256-element chunks (or CHUNK when it is not 0 with W of WN elements). */
static void submit_model(const char *name, uint32_t wn, uint32_t chunk) {
  ck_assert_msg(started, "psd is not running");
  uint32_t ws[] = {wn}, bs[] = {B_ELEMS};
  Ps__TensorSpec w = PS__TENSOR_SPEC__INIT, b = PS__TENSOR_SPEC__INIT;
  w.name = "w"; w.n_shape = 1; w.shape = ws; w.init = "uniform"; w.scale = 1;
  b.name = "b"; b.n_shape = 1; b.shape = bs; b.init = "ones";
  Ps__TensorSpec *ts[] = {&w, &b};
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd"; opt.lr = 0.5f;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = (char *)name; spec.seed = 7; spec.n_tensors = 2; spec.tensors = ts;
  spec.optimizer = &opt; spec.chunk_elems = chunk;
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_rpc_open(&r, grpc_addr, &eb), 0);
  ps_test_submit(r, &spec, 1, 10000);
  ps_rpc_close(r);
}

static ps_chan_client *chan_open(void) {
  ps_chan_client *c;
  ps_errbuf eb;
  int rc = ps_chan_connect(&c, chan_addr, "test", 5000, &eb);
  ck_assert_msg(rc == 0, "connect: %s", eb.msg);
  return c;
}

static const uint32_t all_ids[NCHUNKS] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

/* pull_all reads the whole small model into OUT; returns its version. */
static uint64_t pull_all(ps_chan_client *c, const char *model, float *out) {
  ps_errbuf eb;
  uint64_t v = 0;
  int rc = ps_chan_pull(c, model, all_ids, NCHUNKS, out, NELEMS, 0, 0, &v, &eb);
  ck_assert_msg(rc == 0, "pull: %s", eb.msg);
  return v;
}

START_TEST(test_round_trip) {
  submit_model("rt", W_ELEMS, 256);
  ps_chan_client *c = chan_open();
  static float v0[NELEMS], v1[NELEMS], g[NELEMS], want[W_ELEMS];
  ck_assert_uint_eq(pull_all(c, "rt", v0), 0);
  ps_init_fill(want, "uniform", 1, 7, 0, 0, W_ELEMS, W_ELEMS, 1);
  ck_assert_int_eq(memcmp(v0, want, sizeof want), 0);
  for (int i = 0; i < B_ELEMS; i++) ck_assert(v0[W_ELEMS + i] == 1.0f);
  for (int i = 0; i < NELEMS; i++) g[i] = (float)(i % 7 - 3) * 0.25f;
  ps_errbuf eb;
  uint64_t ver = 0;
  int rc = ps_chan_push(c, "rt", all_ids, NCHUNKS, g, NELEMS, 1, 0, 0, &ver, &eb);
  ck_assert_msg(rc == 0, "push: %s", eb.msg);
  ck_assert_uint_eq(ver, 1);
  ck_assert_uint_eq(pull_all(c, "rt", v1), 1);
  for (int i = 0; i < NELEMS; i++)
    ck_assert_msg(fabsf(v1[i] - (v0[i] - 0.5f * g[i])) <= 1e-6f, "element %d: %g, want %g", i,
                  v1[i], v0[i] - 0.5f * g[i]);
  ps_chan_close(c);
}
END_TEST

START_TEST(test_scattered) {
  submit_model("sc", W_ELEMS, 256);
  ps_chan_client *c = chan_open();
  static float all[NELEMS], buf[8192], after[NELEMS];
  pull_all(c, "sc", all);
  /* Chunks 5, 0 and 16 into three places of a flat vector, out of order. */
  const uint32_t ids[] = {5, 0, 16};
  const uint32_t lens[] = {256, 256, B_ELEMS};
  size_t off[] = {1000, 3, 5000};
  size_t src_off[] = {5 * 256, 0, W_ELEMS};
  float *dst[3];
  for (int i = 0; i < 3; i++) dst[i] = buf + off[i];
  for (size_t i = 0; i < 8192; i++) buf[i] = -99.0f;
  ps_errbuf eb;
  uint64_t ver;
  int rc = ps_chan_pullv(c, "sc", ids, 3, dst, lens, 3, 0, 0, &ver, &eb);
  ck_assert_msg(rc == 0, "pullv: %s", eb.msg);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(memcmp(dst[i], all + src_off[i], lens[i] * sizeof(float)), 0);
  ck_assert(buf[1000 + 256] == -99.0f && buf[2] == -99.0f && buf[5000 + B_ELEMS] == -99.0f);
  /* Gradients from scattered segments: chunk i's gradient is i+1. */
  for (int i = 0; i < 3; i++)
    for (uint32_t j = 0; j < lens[i]; j++) dst[i][j] = (float)(i + 1);
  rc = ps_chan_pushv(c, "sc", ids, 3, (const float *const *)dst, lens, 3, 0, 0, 0, &ver, &eb);
  ck_assert_msg(rc == 0, "pushv: %s", eb.msg);
  pull_all(c, "sc", after);
  for (int i = 0; i < NELEMS; i++) {
    float g = 0;
    for (int k = 0; k < 3; k++)
      if ((size_t)i >= src_off[k] && (size_t)i < src_off[k] + lens[k]) g = (float)(k + 1);
    ck_assert_msg(after[i] == all[i] - 0.5f * g, "element %d", i);
  }
  ps_chan_close(c);
}
END_TEST

START_TEST(test_pipelined) {
  submit_model("pl", W_ELEMS, 256);
  ps_chan_client *c = chan_open();
  static float v0[NELEMS], outs[8][256];
  pull_all(c, "pl", v0);
  float ones[256];
  for (int i = 0; i < 256; i++) ones[i] = 1.0f;
  const float *src[] = {ones};
  uint32_t len[] = {256};
  uint64_t ids[16];
  ps_errbuf eb;
  /* 8 pushes in flight (chunks 0..7), then 8 pulls in flight. */
  for (uint32_t k = 0; k < 8; k++)
    ck_assert_int_eq(ps_chan_send_pushv(c, "pl", &all_ids[k], 1, src, len, 1, 0, 0, 0,
                                        &ids[k], &eb), 0);
  ck_assert_uint_eq(ps_chan_inflight(c), 8);
  for (uint32_t k = 0; k < 8; k++) {
    float *dst[] = {outs[k]};
    ck_assert_int_eq(ps_chan_send_pullv(c, "pl", &all_ids[k], 1, dst, len, 1, 0, 0,
                                        &ids[8 + k], &eb), 0);
  }
  for (int k = 0; k < 16; k++) {
    uint64_t id, ver;
    int rc = ps_chan_recv(c, &id, &ver, &eb);
    ck_assert_msg(rc == 0, "recv %d: %s", k, eb.msg);
    ck_assert_uint_eq(id, ids[k]);
    ck_assert_uint_eq(ver, k < 8 ? (uint64_t)k + 1 : 8);
  }
  ck_assert_uint_eq(ps_chan_inflight(c), 0);
  for (int k = 0; k < 8; k++)
    for (int j = 0; j < 256; j++) ck_assert(outs[k][j] == v0[k * 256 + j] - 0.5f);
  ck_assert_int_eq(ps_chan_recv(c, NULL, NULL, &eb), PS_EINVAL);
  ps_chan_close(c);
}
END_TEST

/* Large pushes and pulls interleaved, 8 of each in flight: more than both
 * socket buffers and the server's reply queue hold, so this hangs (and
 * times out) unless the client drains replies while it sends. */
START_TEST(test_pipelined_large) {
  const uint32_t wn = 4u << 20, chunk = 1u << 16, nch = wn / chunk;
  submit_model("big", wn, chunk);
  ps_chan_client *c = chan_open();
  ps_chan_set_timeout(c, 20000);
  uint32_t *ids = malloc(nch * sizeof *ids);
  for (uint32_t i = 0; i < nch; i++) ids[i] = i;
  float *g = malloc((size_t)wn * sizeof *g), *out[8];
  for (uint32_t i = 0; i < wn; i++) g[i] = 0.125f;
  for (int k = 0; k < 8; k++) out[k] = malloc((size_t)wn * sizeof(float));
  const float *src[] = {g};
  uint32_t len[] = {wn};
  ps_errbuf eb;
  for (int k = 0; k < 8; k++) {
    ck_assert_int_eq(ps_chan_send_pushv(c, "big", ids, nch, src, len, 1, 0, 0, 0, NULL, &eb), 0);
    float *dst[] = {out[k]};
    ck_assert_msg(ps_chan_send_pullv(c, "big", ids, nch, dst, len, 1, 0, 0, NULL, &eb) == 0,
                  "send pull %d: %s", k, eb.msg);
  }
  for (int k = 0; k < 16; k++) {
    uint64_t ver;
    ck_assert_msg(ps_chan_recv(c, NULL, &ver, &eb) == 0, "recv %d: %s", k, eb.msg);
    ck_assert_uint_eq(ver, (uint64_t)k / 2 + 1);
  }
  /* Pull k saw k+1 pushes of 0.125 at lr 0.5 on top of uniform values. */
  float v0[4];
  ps_init_fill(v0, "uniform", 1, 7, 0, 0, 4, wn, 1);
  for (int k = 0; k < 8; k++)
    ck_assert_msg(fabsf(out[k][0] - (v0[0] - 0.0625f * (float)(k + 1))) < 1e-5f, "pull %d", k);
  for (int k = 0; k < 8; k++) free(out[k]);
  free(g);
  free(ids);
  ps_chan_close(c);
}
END_TEST

START_TEST(test_errors_keep_connection) {
  submit_model("er", W_ELEMS, 256);
  ps_chan_client *c = chan_open();
  static float before[NELEMS], after[NELEMS], g[NELEMS];
  uint64_t v_before = pull_all(c, "er", before);
  ps_errbuf eb;
  uint64_t ver;
  const uint32_t bad_chunk[] = {99}, dup[] = {1, 1}, one[] = {0};
  struct {
    const char *what;
    int push;
    const char *model;
    const uint32_t *ids;
    size_t nids;
    uint64_t nelems;
    float poison;
    int want;
  } cases[] = {
      {"unknown model", 1, "nope", one, 1, 256, 0, PS_ENOENT},
      {"unknown model (pull)", 0, "nope", one, 1, 256, 0, PS_ENOENT},
      {"unknown chunk", 1, "er", bad_chunk, 1, 256, 0, PS_ENOENT},
      {"unknown chunk (pull)", 0, "er", bad_chunk, 1, 256, 0, PS_ENOENT},
      {"duplicate chunk", 1, "er", dup, 2, 512, 0, PS_EINVAL},
      {"wrong count", 1, "er", one, 1, 255, 0, PS_EINVAL},
      {"wrong count (pull)", 0, "er", one, 1, 300, 0, PS_EINVAL},
      {"NaN gradient", 1, "er", all_ids, NCHUNKS, NELEMS, NAN, PS_EINVAL},
      {"Inf gradient", 1, "er", all_ids, NCHUNKS, NELEMS, INFINITY, PS_EINVAL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    for (int j = 0; j < NELEMS; j++) g[j] = 1.0f;
    g[NELEMS - 1] = cases[i].poison ? cases[i].poison : 1.0f;
    memset(&eb, 0, sizeof eb);
    int rc = cases[i].push
                 ? ps_chan_push(c, cases[i].model, cases[i].ids, cases[i].nids, g,
                                cases[i].nelems, 0, 0, 0, &ver, &eb)
                 : ps_chan_pull(c, cases[i].model, cases[i].ids, cases[i].nids, g,
                                cases[i].nelems, 0, 0, &ver, &eb);
    ck_assert_msg(rc == cases[i].want, "%s: got %s (%s)", cases[i].what, ps_errname(rc), eb.msg);
    ck_assert_msg(eb.msg[0] != 0, "%s: no message", cases[i].what);
    /* The connection still serves and nothing changed. */
    ck_assert_uint_eq(pull_all(c, "er", after), v_before);
    ck_assert_msg(memcmp(before, after, sizeof before) == 0, "%s changed values", cases[i].what);
  }
  ps_chan_close(c);
}
END_TEST

/* ---- bad frames, from a raw socket ------------------------------------------ */

static int raw_open(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                          .sin_port = htons((uint16_t)atoi(strrchr(chan_addr, ':') + 1))};
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  return fd;
}

/* raw_frame writes a frame with meta M and DATA_LEN declared bytes of
 * which SEND are actually sent (zeros). */
static void raw_frame(int fd, const Ps__ChanMeta *m, uint64_t data_len, uint64_t send) {
  uint8_t meta[512], hdr[PS_CHAN_HDR_LEN];
  size_t mlen = ps__chan_meta__pack(m, meta);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                   .meta_len = (uint32_t)mlen, .data_len = data_len, .req_id = 1};
  ps_chan_hdr_encode(hdr, &h);
  ck_assert_int_eq(write(fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
  ck_assert_int_eq(write(fd, meta, mlen), (ssize_t)mlen);
  static const uint8_t zeros[4096];
  while (send) {
    size_t n = send < sizeof zeros ? send : sizeof zeros;
    ck_assert_int_eq(write(fd, zeros, n), (ssize_t)n);
    send -= n;
  }
}

static void raw_hello(int fd, const char *cluster) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_HELLO;
  m.proto_version = PS_CHAN_VERSION;
  m.cluster = (char *)cluster;
  raw_frame(fd, &m, 0, 0);
}

/* raw_closed waits up to 5 s for the server to close FD (EOF or reset),
 * reading and dropping whatever it sends first; returns 1 when closed. */
static int raw_closed(int fd) {
  int64_t end = ps_test_now_ms() + 5000;
  uint8_t buf[4096];
  while (ps_test_now_ms() < end) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) <= 0) continue;
    ssize_t r = read(fd, buf, sizeof buf);
    if (r <= 0) return 1;
  }
  return 0;
}

static void bad_garbage(int fd) {
  const char junk[] = "GET / HTTP/1.1\r\nHost: psd\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
  ck_assert_int_eq(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
}
static void bad_before_hello(int fd) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_PULL;
  m.model = "bf";
  m.n_chunk_ids = 1;
  m.chunk_ids = (uint32_t *)all_ids;
  raw_frame(fd, &m, 0, 0);
}
static void bad_cluster(int fd) { raw_hello(fd, "other"); }
static void bad_truncated(int fd) {
  raw_hello(fd, "test");
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_PUSH;
  m.model = "bf";
  m.n_chunk_ids = 1;
  m.chunk_ids = (uint32_t *)all_ids;
  raw_frame(fd, &m, 1024, 100); /* 100 of 1024 bytes, then the peer goes */
  shutdown(fd, SHUT_WR);
}
static void bad_oversize(int fd) {
  raw_hello(fd, "test");
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_PUSH;
  m.model = "bf";
  raw_frame(fd, &m, (uint64_t)MAX_REQ + 4, 0);
}
static void bad_meta(int fd) {
  raw_hello(fd, "test");
  uint8_t hdr[PS_CHAN_HDR_LEN], meta[16];
  memset(meta, 0xff, sizeof meta);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION, .meta_len = sizeof meta};
  ps_chan_hdr_encode(hdr, &h);
  ck_assert_int_eq(write(fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
  ck_assert_int_eq(write(fd, meta, sizeof meta), (ssize_t)sizeof meta);
}

START_TEST(test_bad_frames_close_only_their_connection) {
  submit_model("bf", W_ELEMS, 256);
  ps_chan_client *good = chan_open();
  static float before[NELEMS], after[NELEMS];
  uint64_t v_before = pull_all(good, "bf", before);
  struct {
    const char *what;
    void (*send)(int fd);
  } cases[] = {
      {"garbage", bad_garbage},         {"request before hello", bad_before_hello},
      {"wrong cluster", bad_cluster},   {"truncated frame", bad_truncated},
      {"oversize data", bad_oversize},  {"undecodable meta", bad_meta},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int fd = raw_open();
    cases[i].send(fd);
    ck_assert_msg(raw_closed(fd), "%s: connection left open", cases[i].what);
    close(fd);
    ck_assert_uint_eq(pull_all(good, "bf", after), v_before);
    ck_assert_msg(memcmp(before, after, sizeof before) == 0, "%s changed values", cases[i].what);
  }
  /* The client reports a wrong cluster with the server's reason. */
  ps_chan_client *c = NULL;
  ps_errbuf eb;
  ck_assert_int_eq(ps_chan_connect(&c, chan_addr, "other", 5000, &eb), PS_EPROTO);
  ck_assert_msg(strstr(eb.msg, "wrong cluster 'other'") != NULL, "message: %s", eb.msg);
  ps_chan_close(good);
}
END_TEST


/* A peer that leaves with replies still queued (it sent pulls, never read,
 * half-closed, then reset) costs only its connection: the server's next
 * write fails with EPIPE, which must not raise a SIGPIPE that kills psd. */
START_TEST(test_peer_gone_with_replies_queued) {
  submit_model("pg", 1u << 20, 1u << 20); /* chunk 0: 4 MiB */
  ps_chan_client *good = chan_open();
  static float before[NELEMS];
  uint32_t b_id[] = {1};
  ps_errbuf eb;
  uint64_t v = 0;
  ck_assert_int_eq(ps_chan_pull(good, "pg", b_id, 1, before, B_ELEMS, 0, 0, &v, &eb), 0);
  for (int round = 0; round < 3; round++) {
    int fd = raw_open();
    raw_hello(fd, "test");
    Ps__ChanMeta m = PS__CHAN_META__INIT;
    m.op = PS__CHAN_OP__CHAN_PULL;
    m.model = "pg";
    m.n_chunk_ids = 1;
    m.chunk_ids = (uint32_t *)all_ids;
    for (int i = 0; i < 12; i++) raw_frame(fd, &m, 0, 0); /* 48 MiB of replies */
    usleep(300000); /* the server queues them and stops reading */
    shutdown(fd, SHUT_WR);
    usleep(100000);
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd); /* reset */
    usleep(200000);
  }
  ck_assert_msg(kill(psd_pid, 0) == 0, "psd died");
  int rc = ps_chan_pull(good, "pg", b_id, 1, before, B_ELEMS, 0, 0, &v, &eb);
  ck_assert_msg(rc == 0, "pull after the peer left: %s", eb.msg);
  ps_chan_close(good);
}
END_TEST

/* psd_chan_hello_check alone: what a first frame must be, and which
 * refusals the peer hears about. */
START_TEST(test_hello_check) {
  static const char yaml[] = "cluster: c1\nshards:\n  - {id: 0, grpc: 127.0.0.1:1,"
                             " channel: 127.0.0.1:2, data_dir: /nonexistent}\n";
  ps_config cfg;
  ps_errbuf eb;
  ck_assert_int_eq(ps_config_load_buf(&cfg, "t.yaml", yaml, sizeof yaml - 1, &eb), 0);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION, .meta_len = 8};
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_HELLO;
  m.proto_version = PS_CHAN_VERSION;
  m.cluster = "c1";
  int answer = -1;
  ck_assert_int_eq(psd_chan_hello_check(&cfg, &h, &m, &answer, &eb), 0);
  m.cluster = "c2";
  ck_assert_int_eq(psd_chan_hello_check(&cfg, &h, &m, &answer, &eb), PS_EPROTO);
  ck_assert_int_eq(answer, 1);
  ck_assert_str_eq(eb.msg, "wrong cluster 'c2' (this is 'c1')");
  m.cluster = "c1";
  m.proto_version = 2;
  ck_assert_int_eq(psd_chan_hello_check(&cfg, &h, &m, &answer, &eb), PS_EPROTO);
  ck_assert_int_eq(answer, 1);
  ck_assert_str_eq(eb.msg, "protocol version 2 not supported (want 1)");
  m.proto_version = PS_CHAN_VERSION;
  h.data_len = 4; /* a hello carries no data */
  ck_assert_int_eq(psd_chan_hello_check(&cfg, &h, &m, &answer, &eb), PS_EPROTO);
  ck_assert_int_eq(answer, 0);
  h.data_len = 0;
  m.op = PS__CHAN_OP__CHAN_PULL;
  ck_assert_int_eq(psd_chan_hello_check(&cfg, &h, &m, &answer, &eb), PS_EPROTO);
  ck_assert_int_eq(answer, 0);
  ck_assert_str_eq(eb.msg, "first frame is not a hello");
  ps_config_release(&cfg);
}
END_TEST

Suite *psd_chan_suite(void) {
  Suite *s = suite_create("psd_chan");
  TCase *tc = tcase_create("psd");
  tcase_add_unchecked_fixture(tc, psd_up, psd_down);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_round_trip);
  tcase_add_test(tc, test_scattered);
  tcase_add_test(tc, test_pipelined);
  tcase_add_test(tc, test_pipelined_large);
  tcase_add_test(tc, test_errors_keep_connection);
  tcase_add_test(tc, test_bad_frames_close_only_their_connection);
  tcase_add_test(tc, test_peer_gone_with_replies_queued);
  suite_add_tcase(s, tc);
  tc = tcase_create("hello");
  tcase_add_test(tc, test_hello_check);
  suite_add_tcase(s, tc);
  return s;
}
