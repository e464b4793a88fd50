/* Tests for the tensor channel against one real psd on loopback: round
 * trips (contiguous, scattered, pipelined), errors answered with the
 * connection still usable, and bad frames that close only their own
 * connection while the values stay unchanged.  A second psd with small
 * limits (max_connections, idle_timeout_ms) checks what a hostile or
 * forgetful client may hold: connections beyond the cap, silent ones, and
 * a huge meta announced before the hello.  A third psd under durability
 * sync, with the fsync shim's gate holding its redo log's syncs, shows
 * unordered acks: a pull answered while the push before it waits for its
 * sync, whose ack comes only after it (and in order for a client that did
 * not ask). */
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
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
static char grpc_addr[64], chan_addr[64], psd_log[600];
static int started, grpc_port;

/* Starts one psd for the whole suite (unchecked fixture: runs in the
 * runner, before the tests fork). */
static void psd_up(void) {
  const char *dir = ps_test_tmpdir();
  char extra[64], log[600];
  int gp, cp;
  snprintf(extra, sizeof extra, "limits:\n  max_request_bytes: %u\n", MAX_REQ);
  const char *yaml = ps_test_cluster_yaml(dir, 1, extra, &gp, &cp);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  snprintf(psd_log, sizeof psd_log, "%s", log);
  grpc_port = gp;
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
  ck_assert_int_eq(ps_test_rpc_open(&r, grpc_addr, &eb), 0);
  ps_test_submit(r, &spec, 1, 10000);
  ps_rpc_close(r);
}

static ps_chan_client *chan_open(void) {
  ps_chan_client *c;
  ps_errbuf eb;
  int rc = ps_test_chan_connect(&c, chan_addr, "test", 5000, &eb);
  ck_assert_msg(rc == 0, "connect: %s", eb.msg);
  return c;
}

static const uint32_t all_ids[NCHUNKS] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

/* pull_all reads the whole small model into OUT; returns its version. */
static uint64_t pull_all(ps_chan_client *c, const char *model, float *out) {
  ps_errbuf eb;
  uint64_t v = 0;
  int rc = ps_test_pull(c, model, all_ids, NCHUNKS, out, NELEMS, 0, 0, &v, &eb);
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
  int rc = ps_test_push(c, "rt", all_ids, NCHUNKS, g, NELEMS, 0, 0, 0, &ver, &eb);
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
  struct iovec iov[3];
  for (int i = 0; i < 3; i++) {
    dst[i] = buf + off[i];
    iov[i] = (struct iovec){dst[i], lens[i] * sizeof(float)};
  }
  for (size_t i = 0; i < 8192; i++) buf[i] = -99.0f;
  ps_errbuf eb;
  uint64_t ver;
  ps_req q = {.model = "sc", .ids = ids, .nids = 3};
  int rc = ps_chan_pullv(c, &q, iov, 3, &ver, &eb);
  ck_assert_msg(rc == 0, "pullv: %s", eb.msg);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(memcmp(dst[i], all + src_off[i], lens[i] * sizeof(float)), 0);
  ck_assert(buf[1000 + 256] == -99.0f && buf[2] == -99.0f && buf[5000 + B_ELEMS] == -99.0f);
  /* Gradients from scattered segments: chunk i's gradient is i+1. */
  for (int i = 0; i < 3; i++)
    for (uint32_t j = 0; j < lens[i]; j++) dst[i][j] = (float)(i + 1);
  rc = ps_chan_pushv(c, &q, iov, 3, &ver, &eb);
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
  struct iovec src[] = {{ones, sizeof ones}};
  uint64_t ids[16];
  ps_errbuf eb;
  /* 8 pushes in flight (chunks 0..7), then 8 pulls in flight. */
  for (uint32_t k = 0; k < 8; k++)
    ck_assert_int_eq(ps_chan_send_pushv(c, &(ps_req){.model = "pl", .ids = &all_ids[k], .nids = 1},
                                        src, 1, &ids[k], &eb), 0);
  ck_assert_uint_eq(ps_chan_inflight(c), 8);
  for (uint32_t k = 0; k < 8; k++) {
    struct iovec dst[] = {{outs[k], 256 * sizeof(float)}};
    ck_assert_int_eq(ps_chan_send_pullv(c, &(ps_req){.model = "pl", .ids = &all_ids[k], .nids = 1},
                                        dst, 1, &ids[8 + k], &eb), 0);
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
  struct iovec src[] = {{g, (size_t)wn * sizeof(float)}};
  ps_req q = {.model = "big", .ids = ids, .nids = nch};
  ps_errbuf eb;
  for (int k = 0; k < 8; k++) {
    ck_assert_int_eq(ps_chan_send_pushv(c, &q, src, 1, NULL, &eb), 0);
    struct iovec dst[] = {{out[k], (size_t)wn * sizeof(float)}};
    ck_assert_msg(ps_chan_send_pullv(c, &q, dst, 1, NULL, &eb) == 0,
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

/* A pull answered straight from the chunks' memory (psd_chan invariant
 * 3a) to a client that does not read yet: the socket takes part of the
 * reply, the rest waits in the shard while another connection's push
 * changes every value; when the client reads at last, the reply must hold
 * the values of the version it names, to the last element (the pull is
 * normally served first, version 0, since the push goes out 300 ms after
 * it; either order must be consistent), and the next pull sees the push. */
START_TEST(test_direct_pull_partly_sent) {
  const uint32_t wn = 4u << 20, chunk = 1u << 16, nch = wn / chunk;
  submit_model("dp", wn, chunk);
  ps_chan_client *c = chan_open(), *p = chan_open();
  ps_chan_set_timeout(c, 20000);
  ps_chan_set_timeout(p, 20000);
  ps_errbuf eb;
  ck_assert_msg(ps_chan_set_bufsize(c, 0, 1 << 16, &eb) == 0, "%s", eb.msg);
  uint32_t *ids = malloc(nch * sizeof *ids);
  float *g = malloc((size_t)wn * sizeof *g), *out = malloc((size_t)wn * sizeof *out);
  float *v0 = malloc((size_t)wn * sizeof *v0);
  ck_assert(ids && g && out && v0);
  for (uint32_t i = 0; i < nch; i++) ids[i] = i;
  for (uint32_t i = 0; i < wn; i++) g[i] = 0.125f;
  ps_init_fill(v0, "uniform", 1, 7, 0, 0, wn, wn, 1);
  ps_req q = {.model = "dp", .ids = ids, .nids = nch};
  struct iovec dst[] = {{out, (size_t)wn * sizeof(float)}};
  struct iovec src[] = {{g, (size_t)wn * sizeof(float)}};
  uint64_t ver = 9;
  ck_assert_int_eq(ps_chan_send_pullv(c, &q, dst, 1, NULL, &eb), 0);
  usleep(300000);
  ck_assert_msg(ps_chan_pushv(p, &q, src, 1, &ver, &eb) == 0, "push: %s", eb.msg);
  ck_assert_uint_eq(ver, 1);
  ck_assert_msg(ps_chan_recv(c, NULL, &ver, &eb) == 0, "pull: %s", eb.msg);
  ck_assert_uint_le(ver, 1);
  for (uint32_t i = 0; i < wn; i++) {
    float want = ver == 0 ? v0[i] : v0[i] - 0.0625f;
    ck_assert_msg(out[i] == want, "element %u: %.7g, its value at version %llu %.7g", i,
                  (double)out[i], (unsigned long long)ver, (double)want);
  }
  ck_assert_msg(ps_chan_pullv(c, &q, dst, 1, &ver, &eb) == 0, "pull: %s", eb.msg);
  ck_assert_uint_eq(ver, 1);
  for (uint32_t i = 0; i < wn; i += 4099)
    ck_assert_msg(out[i] == v0[i] - 0.0625f, "element %u after the push", i);
  free(ids);
  free(g);
  free(out);
  free(v0);
  ps_chan_close(p);
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
                 ? ps_test_push(c, cases[i].model, cases[i].ids, cases[i].nids, g,
                                cases[i].nelems, 0, 0, 0, &ver, &eb)
                 : ps_test_pull(c, cases[i].model, cases[i].ids, cases[i].nids, g,
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

/* raw_refused: whether the shards of this run authenticate the channel
 * (PS_TEST_SECURITY=tls or tls-mac): a raw socket's frames then carry no
 * hello proof and the shard closes it at once, by design (test_security
 * covers that), so the raw-frame tests below do not apply. */
static int raw_refused(void) {
  const char *e = getenv("PS_TEST_SECURITY");
  return e && *e && strcmp(e, "none") != 0;
}
#define RAW_NEEDS_PLAIN_CHANNEL()                                                    \
  do {                                                                               \
    if (raw_refused())                                                               \
      PS_SKIP("raw frames without the hello's proof: refused by an authenticated " \
              "shard by design");                                                    \
  } while (0)

static int raw_open(void) { return ps_test_raw_open(chan_addr); }

/* raw_frame writes a frame with meta M and DATA_LEN declared bytes of
 * which SEND are actually sent (zeros). */
static void raw_frame(int fd, const Ps__ChanMeta *m, uint64_t data_len, uint64_t send) {
  ps_test_raw_frame(fd, m, data_len, send);
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
/* A cluster "test\0junk": protobuf-c would cut it at the NUL and match. */
static void bad_cluster_nul(int fd) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_HELLO;
  m.proto_version = PS_CHAN_VERSION;
  m.cluster = "testXjunk";
  uint8_t meta[64], hdr[PS_CHAN_HDR_LEN];
  size_t mlen = ps__chan_meta__pack(&m, meta);
  uint8_t *x = memchr(meta, 'X', mlen);
  ck_assert_ptr_nonnull(x);
  *x = '\0';
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                   .meta_len = (uint32_t)mlen, .req_id = 1};
  ps_chan_hdr_encode(hdr, &h);
  ck_assert_int_eq(write(fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
  ck_assert_int_eq(write(fd, meta, mlen), (ssize_t)mlen);
}
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
  RAW_NEEDS_PLAIN_CHANNEL();
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
      {"cluster with a NUL", bad_cluster_nul},
  };
  Ps__StatusReply *st = ps_test_status(grpc_port);
  uint64_t refused0 = st->chan_auth_refused;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int fd = raw_open();
    cases[i].send(fd);
    ck_assert_msg(raw_closed(fd), "%s: connection left open", cases[i].what);
    close(fd);
    ck_assert_uint_eq(pull_all(good, "bf", after), v_before);
    ck_assert_msg(memcmp(before, after, sizeof before) == 0, "%s changed values", cases[i].what);
  }
  /* the four refused before their hello are counted, and a stranger's
   * flood of them is not a line each in the log: 200 more of them */
  for (int i = 0; i < 200; i++) {
    int fd = raw_open();
    bad_garbage(fd);
    ck_assert(raw_closed(fd));
    close(fd);
  }
  st = ps_test_status(grpc_port);
  ck_assert_uint_ge(st->chan_auth_refused, refused0 + 204);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  char *text = ps_test_read_file(psd_log, NULL);
  int lines = 0;
  for (const char *q = text; (q = strstr(q, "malformed frame header before the hello")); q++) lines++;
  ck_assert_msg(lines <= 3, "%d log lines for the malformed frames", lines);
  free(text);
  /* The client reports a wrong cluster with the server's reason. */
  ps_chan_client *c = NULL;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_chan_connect(&c, chan_addr, "other", 5000, &eb), PS_EPROTO);
  ck_assert_msg(strstr(eb.msg, "wrong cluster 'other'") != NULL, "message: %s", eb.msg);
  ps_chan_close(good);
}
END_TEST


/* ---- bad frames after the hello: counted, logged, the oversize answered ---- */

/* raw_read_full reads N bytes from FD within 5 s; 1 when it did. */
static int raw_read_full(int fd, void *buf, size_t n) {
  int64_t end = ps_test_now_ms() + 5000;
  size_t got = 0;
  while (got < n && ps_test_now_ms() < end) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) <= 0) continue;
    ssize_t r = read(fd, (uint8_t *)buf + got, n - got);
    if (r <= 0) return 0;
    got += (size_t)r;
  }
  return got == n;
}

/* raw_read_meta reads the next frame the shard sends on FD (no data
 * expected) and returns its meta (caller frees), or NULL when the
 * connection closed first. */
static Ps__ChanMeta *raw_read_meta(int fd) {
  uint8_t hdr[PS_CHAN_HDR_LEN], meta[4096];
  ps_chan_hdr h;
  if (!raw_read_full(fd, hdr, sizeof hdr)) return NULL;
  ck_assert_int_eq(ps_chan_hdr_decode(&h, hdr, 0), 0);
  ck_assert_uint_le(h.meta_len, sizeof meta);
  if (!raw_read_full(fd, meta, h.meta_len)) return NULL;
  return ps__chan_meta__unpack(NULL, h.meta_len, meta);
}

/* raw_hdr writes a bare header on FD: MAGIC, META_LEN bytes of meta
 * (not sent) and DATA_LEN of data announced. */
static void raw_hdr(int fd, uint32_t magic, uint32_t meta_len, uint64_t data_len) {
  uint8_t hdr[PS_CHAN_HDR_LEN];
  ps_chan_hdr h = {.magic = magic, .version = PS_CHAN_VERSION, .meta_len = meta_len,
                   .data_len = data_len, .req_id = 2};
  ps_chan_hdr_encode(hdr, &h);
  ck_assert_int_eq(write(fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
}

static void ah_zeros(int fd) {
  uint8_t z[PS_CHAN_HDR_LEN + 16] = {0};
  ck_assert_int_eq(write(fd, z, sizeof z), (ssize_t)sizeof z);
}
static void ah_op(int fd, int op) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = (Ps__ChanOp)op;
  m.model = "bh";
  raw_frame(fd, &m, 0, 0);
}
static void ah_op99(int fd) { ah_op(fd, 99); }
static void ah_error(int fd) { ah_op(fd, PS__CHAN_OP__CHAN_ERROR); }
static void ah_hello2(int fd) { raw_hello(fd, "test"); }
static void ah_magic(int fd) { raw_hdr(fd, 0x12345678, 8, 0); }
static void ah_meta_huge(int fd) { raw_hdr(fd, PS_CHAN_MAGIC, PS_CHAN_MAX_META + 1, 0); }
static void ah_push(int fd, uint64_t data_len) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_PUSH;
  m.model = "bh";
  m.n_chunk_ids = 1;
  m.chunk_ids = (uint32_t *)all_ids;
  raw_frame(fd, &m, data_len, 0);
}
static void ah_push_2e63(int fd) { ah_push(fd, UINT64_C(1) << 63); }
static void ah_push_1g(int fd) { ah_push(fd, UINT64_C(1) << 30); }

/* Frames out of the protocol after a good hello (the outside tester's
 * list: all zeros, op 99, a second HELLO, a client's CHAN_ERROR, data of
 * 2^63 or 1 GiB over max_request_bytes, a meta over 16 MiB, a bad
 * magic) each close their connection, count in chan_bad_frames and
 * leave a log line naming the peer, a few lines for all of them (rate
 * limited); a request over max_request_bytes first hears why, in a
 * CHAN_ERROR that names the limit.  Before, each closed in silence. */
START_TEST(test_bad_frames_after_hello_counted) {
  RAW_NEEDS_PLAIN_CHANNEL();
  submit_model("bh", W_ELEMS, 256);
  struct {
    const char *what;
    void (*send)(int fd);
    int too_big;
  } cases[] = {
      {"all zeros", ah_zeros, 0},        {"op 99", ah_op99, 0},
      {"a second hello", ah_hello2, 0},  {"a client's CHAN_ERROR", ah_error, 0},
      {"data_len 2^63", ah_push_2e63, 1}, {"data_len 1 GiB", ah_push_1g, 1},
      {"meta over 16 MiB", ah_meta_huge, 0}, {"bad magic", ah_magic, 0},
  };
  size_t n = sizeof cases / sizeof cases[0];
  Ps__StatusReply *st = ps_test_status(grpc_port);
  uint64_t bad0 = st->chan_bad_frames, refused0 = st->chan_auth_refused;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  for (size_t i = 0; i < n; i++) {
    int fd = raw_open();
    raw_hello(fd, "test");
    Ps__ChanMeta *hello = raw_read_meta(fd);
    ck_assert_msg(hello && (int)hello->op == PS__CHAN_OP__CHAN_HELLO, "%s: no hello reply",
                  cases[i].what);
    ps__chan_meta__free_unpacked(hello, NULL);
    cases[i].send(fd);
    if (cases[i].too_big) {
      Ps__ChanMeta *e = raw_read_meta(fd);
      ck_assert_msg(e != NULL, "%s: closed without an error frame", cases[i].what);
      ck_assert_int_eq((int)e->op, PS__CHAN_OP__CHAN_ERROR);
      ck_assert_int_eq(e->status, PS_ETOOBIG);
      char lim[64];
      snprintf(lim, sizeof lim, "limits.max_request_bytes %u", MAX_REQ);
      ck_assert_msg(e->message && strstr(e->message, lim), "%s: message '%s'", cases[i].what,
                    e->message ? e->message : "");
      ps__chan_meta__free_unpacked(e, NULL);
    }
    ck_assert_msg(raw_closed(fd), "%s: connection left open", cases[i].what);
    close(fd);
  }
  st = ps_test_status(grpc_port);
  ck_assert_uint_eq(st->chan_bad_frames, bad0 + n);
  ck_assert_uint_eq(st->chan_auth_refused, refused0); /* they all said hello */
  protobuf_c_message_free_unpacked(&st->base, NULL);
  char *text = ps_test_read_file(psd_log, NULL);
  int lines = 0;
  for (const char *q = text; (q = strstr(q, "frame out of the protocol")); q++) lines++;
  /* one line, or a few when the suite ran long: earlier tests' lines, a tail */
  ck_assert_msg(lines >= 1 && lines <= 4, "%d log lines for %zu bad frames", lines, n);
  ck_assert_msg(strstr(text, "the last from 127.0.0.1:"), "the log names no peer");
  free(text);
}
END_TEST

/* A refused push is answered (the connection kept) and logged, rate
 * limited, with the peer and the reason; before, psd said nothing. */
START_TEST(test_refused_push_logged) {
  submit_model("rp", W_ELEMS, 256);
  ps_chan_client *c = chan_open();
  static float g[256];
  ps_errbuf eb;
  uint64_t v;
  g[3] = NAN;
  for (int i = 0; i < 20; i++) {
    ck_assert_int_lt(ps_test_push(c, "rp", all_ids, 1, g, 256, 0, 0, 0, &v, &eb), 0);
    ck_assert_int_lt(ps_test_push(c, "no-such\nmodel", all_ids, 1, g, 256, 0, 0, 0, &v, &eb), 0);
  }
  g[3] = 0;
  ck_assert_msg(ps_test_push(c, "rp", all_ids, 1, g, 256, 0, 0, 0, &v, &eb) == 0, "%s", eb.msg);
  ps_chan_close(c);
  char *text = ps_test_read_file(psd_log, NULL);
  int lines = 0;
  for (const char *q = text; (q = strstr(q, "push(es) since the last report")); q++) lines++;
  ck_assert_msg(lines >= 1 && lines <= 4, "%d log lines for 40 refused pushes", lines);
  ck_assert_msg(!strstr(text, "no-such\nmodel"), "a peer's newline reached the log");
  free(text);
}
END_TEST

/* A peer that leaves with replies still queued (it sent pulls, never read,
 * half-closed, then reset) costs only its connection: the server's next
 * write fails with EPIPE, which must not raise a SIGPIPE that kills psd. */
START_TEST(test_peer_gone_with_replies_queued) {
  RAW_NEEDS_PLAIN_CHANNEL();
  submit_model("pg", 1u << 20, 1u << 20); /* chunk 0: 4 MiB */
  ps_chan_client *good = chan_open();
  static float before[NELEMS];
  uint32_t b_id[] = {1};
  ps_errbuf eb;
  uint64_t v = 0;
  ck_assert_int_eq(ps_test_pull(good, "pg", b_id, 1, before, B_ELEMS, 0, 0, &v, &eb), 0);
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
  int rc = ps_test_pull(good, "pg", b_id, 1, before, B_ELEMS, 0, 0, &v, &eb);
  ck_assert_msg(rc == 0, "pull after the peer left: %s", eb.msg);
  ps_chan_close(good);
}
END_TEST

/* psd_rss_kb returns PID's resident set in KiB (VmRSS), or -1. */
static long psd_rss_kb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb;
}

/* raw_send_all sends N bytes of BYTE, ignoring a peer that closed (the
 * server may refuse mid-way); returns the bytes it got out. */
static size_t raw_send_all(int fd, uint8_t byte, size_t n) {
  static uint8_t buf[65536];
  memset(buf, byte, sizeof buf);
  size_t sent = 0;
  while (sent < n) {
    size_t k = n - sent < sizeof buf ? n - sent : sizeof buf;
    ssize_t r = send(fd, buf, k, MSG_NOSIGNAL);
    if (r <= 0) break;
    sent += (size_t)r;
  }
  return sent;
}

/* A connection that has not said hello may announce a meta of only
 * PS_CHAN_HELLO_META_MAX bytes: one announcing 16 MiB is closed at its
 * header, before the shard buffers what follows.  Eight such peers each
 * sending 2 MiB of meta must leave the shard's memory where it was (they
 * cost 2 MiB each, 16 MiB announced each, when the header was believed). */
START_TEST(test_prehello_meta_capped) {
  ck_assert_msg(started, "psd is not running");
  enum { PEERS = 8, SEND = 2 << 20 };
  long rss0 = psd_rss_kb(psd_pid);
  ck_assert_int_gt(rss0, 0);
  int fds[PEERS];
  for (int i = 0; i < PEERS; i++) {
    fds[i] = raw_open();
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fds[i], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    uint8_t hdr[PS_CHAN_HDR_LEN];
    ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                     .meta_len = PS_CHAN_MAX_META, .req_id = 1};
    ps_chan_hdr_encode(hdr, &h);
    ck_assert_int_eq(write(fds[i], hdr, sizeof hdr), (ssize_t)sizeof hdr);
    raw_send_all(fds[i], 0x0a, SEND);
  }
  usleep(200000);
  long rss1 = psd_rss_kb(psd_pid);
  for (int i = 0; i < PEERS; i++) {
    ck_assert_msg(raw_closed(fds[i]), "peer %d announcing a 16 MiB meta before hello left open", i);
    close(fds[i]);
  }
  ck_assert_msg(rss1 - rss0 < 4096, "the shard grew by %ld KiB for %d peers that never said hello",
                rss1 - rss0, PEERS);
  /* A hello of ordinary size still works. */
  ps_chan_close(chan_open());
}
END_TEST

/* ---- limits: a second psd with a cap of LIM_CONNS connections and an idle
 * timeout of LIM_IDLE_MS ------------------------------------------------- */

#define LIM_CONNS 4
#define LIM_IDLE_MS 2000

static pid_t lim_pid;
static char lim_grpc[64], lim_chan[64];
static int lim_started;

static void lim_up(void) {
  const char *dir = ps_test_tmpdir();
  char extra[160], log[600];
  int gp, cp;
  snprintf(extra, sizeof extra,
           "limits:\n  max_connections: %d\n  idle_timeout_ms: %d\n"
           "training:\n  pull_timeout_ms: 1000\n", LIM_CONNS, LIM_IDLE_MS);
  const char *yaml = ps_test_cluster_yaml(dir, 1, extra, &gp, &cp);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  snprintf(lim_grpc, sizeof lim_grpc, "127.0.0.1:%d", gp);
  snprintf(lim_chan, sizeof lim_chan, "127.0.0.1:%d", cp);
  lim_pid = ps_test_psd(yaml, 0, log, NULL);
  lim_started = ps_test_wait_port(cp, 15000) == 0 && ps_test_wait_port(gp, 5000) == 0;
  if (!lim_started) fprintf(stderr, "psd (limits) did not start; see %s\n", log);
}

static void lim_down(void) {
  if (lim_pid > 0) ps_test_stop(lim_pid, SIGTERM, 10000);
  lim_pid = 0;
}

static int lim_raw_open(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                          .sin_port = htons((uint16_t)atoi(strrchr(lim_chan, ':') + 1))};
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  return fd;
}

/* lim_status returns the limits psd's Status (caller frees). */
static Ps__StatusReply *lim_status(void) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, lim_grpc, &eb), 0);
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *rep = NULL;
  int rc = ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                       (ProtobufCMessage **)&rep, 5000, &eb);
  ps_rpc_close(r);
  ck_assert_msg(rc == 0, "status: %s", eb.msg);
  return rep;
}

/* small_submit registers the small model NAME (w: B_ELEMS ones, SGD lr
 * 0.5) on the psd at gRPC address GRPC (STARTED: whether it runs). */
static void small_submit(const char *grpc, int started, const char *name) {
  ck_assert_msg(started, "psd at %s is not running", grpc);
  uint32_t ws[] = {B_ELEMS};
  Ps__TensorSpec w = PS__TENSOR_SPEC__INIT;
  w.name = "w"; w.n_shape = 1; w.shape = ws; w.init = "ones";
  Ps__TensorSpec *ts[] = {&w};
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd"; opt.lr = 0.5f;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = (char *)name; spec.seed = 7; spec.n_tensors = 1; spec.tensors = ts;
  spec.optimizer = &opt;
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, grpc, &eb), 0);
  ps_test_submit(r, &spec, 1, 10000);
  ps_rpc_close(r);
}

static void lim_submit(const char *name) { small_submit(lim_grpc, lim_started, name); }

static int lim_pull(ps_chan_client *c, const char *model, ps_errbuf *eb) {
  static float out[B_ELEMS];
  uint64_t v;
  return ps_test_pull(c, model, all_ids, 1, out, B_ELEMS, 0, 0, &v, eb);
}

/* The (LIM_CONNS+1)th connection is closed at accept and counted; once
 * one of the others goes, a new one is served again. */
START_TEST(test_max_connections) {
  lim_submit("mc");
  ps_chan_client *c[LIM_CONNS];
  ps_errbuf eb;
  for (int i = 0; i < LIM_CONNS; i++) {
    int rc = ps_test_chan_connect(&c[i], lim_chan, "test", 5000, &eb);
    ck_assert_msg(rc == 0, "connection %d of %d: %s", i + 1, LIM_CONNS, eb.msg);
  }
  int fd = lim_raw_open();
  ck_assert_msg(raw_closed(fd), "connection %d of a cap of %d left open", LIM_CONNS + 1, LIM_CONNS);
  close(fd);
  ps_chan_client *extra = NULL;
  ck_assert_int_lt(ps_test_chan_connect(&extra, lim_chan, "test", 5000, &eb), 0);
  Ps__StatusReply *st = lim_status();
  ck_assert_uint_eq(st->chan_connections, LIM_CONNS);
  ck_assert_uint_ge(st->chan_refused, 2);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  for (int i = 1; i < LIM_CONNS; i++)
    ck_assert_msg(lim_pull(c[i], "mc", &eb) == 0, "pull on connection %d: %s", i, eb.msg);
  ps_chan_close(c[0]);
  /* The server notices the close on its next loop turn. */
  int64_t end = ps_test_now_ms() + 3000;
  int rc;
  while ((rc = ps_test_chan_connect(&extra, lim_chan, "test", 5000, &eb)) < 0 &&
         ps_test_now_ms() < end)
    usleep(20000);
  ck_assert_msg(rc == 0, "no connection after one of %d closed: %s", LIM_CONNS, eb.msg);
  ck_assert_msg(lim_pull(extra, "mc", &eb) == 0, "pull: %s", eb.msg);
  ps_chan_close(extra);
  for (int i = 1; i < LIM_CONNS; i++) ps_chan_close(c[i]);
}
END_TEST

/* raw_open_now: FD has not been closed by the server (whatever it sent
 * is read and dropped). */
static int raw_open_now(int fd) {
  uint8_t buf[4096];
  ssize_t r;
  while ((r = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
  }
  return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* A connection silent for idle_timeout_ms is closed, with or without a
 * hello, and counted, but not before; one that keeps talking (a pull
 * every 400 ms for longer than the timeout) is not. */
START_TEST(test_idle_closed) {
  RAW_NEEDS_PLAIN_CHANNEL();
  lim_submit("id");
  Ps__StatusReply *st = lim_status();
  uint64_t idle0 = st->chan_idle_closed;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ps_errbuf eb;
  ps_chan_client *busy;
  ck_assert_msg(ps_test_chan_connect(&busy, lim_chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  int quiet = lim_raw_open();
  raw_hello(quiet, "test");
  int mute = lim_raw_open(); /* never says hello */
  int64_t t0 = ps_test_now_ms();
  while (ps_test_now_ms() - t0 < LIM_IDLE_MS + 1000) {
    ck_assert_msg(lim_pull(busy, "id", &eb) == 0, "a busy connection failed after %lld ms: %s",
                  (long long)(ps_test_now_ms() - t0), eb.msg);
    int64_t t = ps_test_now_ms() - t0;
    if (t < LIM_IDLE_MS - 300)
      ck_assert_msg(raw_open_now(quiet) && raw_open_now(mute),
                    "a connection closed %lld ms into an idle timeout of %d ms", (long long)t,
                    LIM_IDLE_MS);
    usleep(400000);
  }
  ck_assert_msg(raw_closed(quiet), "an idle connection (after hello) left open");
  ck_assert_msg(raw_closed(mute), "an idle connection (no hello) left open");
  close(quiet);
  close(mute);
  ck_assert_msg(lim_pull(busy, "id", &eb) == 0, "%s", eb.msg);
  ps_chan_close(busy);
  st = lim_status();
  ck_assert_uint_ge(st->chan_idle_closed, idle0 + 2);
  protobuf_c_message_free_unpacked(&st->base, NULL);
}
END_TEST

/* psd_chan_hello_check alone: what a first frame must be, and which
 * refusals the peer hears about. */
START_TEST(test_hello_check) {
  static const char yaml[] = "cluster: c1\nsecurity: {mode: none}\nshards:\n  - {id: 0, grpc: 127.0.0.1:1,"
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

/* ---- unordered acks under durability sync (psd_chan invariant 7b) ---- */

static pid_t ua_pid;
static ps_test_gated ua;
static int ua_started;

static void ua_up(void) {
  ps_test_gated_init(&ua, ps_test_tmpdir(), NULL, 1);
  ua_pid = ps_test_psd(ua.yaml, 0, ua.log, ua.env.env);
  ua_started = ps_test_wait_port(ua.cp, 15000) == 0 && ps_test_wait_port(ua.gp, 5000) == 0;
  if (!ua_started) fprintf(stderr, "psd (sync) did not start; see %s\n", ua.log);
}

static void ua_down(void) {
  unlink(ua.gate);
  if (ua_pid > 0) ps_test_stop(ua_pid, SIGTERM, 10000);
  ua_pid = 0;
}

/* ua_send sends a push of G (B_ELEMS) and a pull into OUT of model NAME on
 * C; their request ids into *PUSH / *PULL. */
static void ua_send(ps_chan_client *c, const char *name, float *g, float *out, uint64_t *push,
                    uint64_t *pull) {
  ps_errbuf eb;
  ps_req r = {.model = name, .ids = all_ids, .nids = 1};
  struct iovec src = {g, B_ELEMS * sizeof(float)}, dst = {out, B_ELEMS * sizeof(float)};
  ck_assert_msg(ps_chan_send_pushv(c, &r, &src, 1, push, &eb) == 0, "push: %s", eb.msg);
  ck_assert_msg(ps_chan_send_pullv(c, &r, &dst, 1, pull, &eb) == 0, "pull: %s", eb.msg);
}

/* ua_syncs: the redo log syncs the shim saw return (its records). */
static int ua_syncs(void) {
  if (access(ua.fsync_log, R_OK) != 0) return 0;
  char *t = ps_test_read_file(ua.fsync_log, NULL);
  int n = 0;
  for (char *p = t; (p = strchr(p, '\n')); p++) n++;
  free(t);
  return n;
}

/* Under sync, with the log's sync held by the gate: a client that asked
 * for unordered acks gets its pull (which sees the applied push) while
 * the push still waits; the push's ack comes once the sync ran.  A client
 * that did not ask gets both in request order. */
START_TEST(test_pull_answered_before_push_sync) {
  small_submit(ua.grpc, ua_started, "ua");
  ps_chan_client *c, *o;
  ps_errbuf eb;
  ck_assert_msg(ps_test_chan_connect_flags(&c, ua.chan, "test", PS_CHAN_UNORDERED_ACKS, 5000,
                                           &eb) == 0, "%s", eb.msg);
  ck_assert_msg(ps_test_chan_connect(&o, ua.chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_chan_unordered(c), 1);
  ck_assert_int_eq(ps_chan_unordered(o), 0);
  static float g[B_ELEMS], out[B_ELEMS];
  for (int i = 0; i < B_ELEMS; i++) g[i] = 1.0f;
  uint64_t push, pull, ver = 0;
  ps_test_write_file(ua.gate, "held\n");
  int synced = ua_syncs();
  ua_send(c, "ua", g, out, &push, &pull);
  ck_assert_msg(ps_chan_recv_id(c, pull, &ver, &eb) == 0, "pull: %s", eb.msg);
  ck_assert_uint_eq(ver, 1); /* the applied push, not yet synced */
  for (int i = 0; i < B_ELEMS; i++) ck_assert(out[i] == 0.5f);
  ck_assert_int_eq(ps_chan_done(c, push), 0); /* its sync is held: no ack */
  ck_assert_int_eq(ua_syncs(), synced);
  unlink(ua.gate);
  ck_assert_msg(ps_chan_recv_id(c, push, &ver, &eb) == 0, "push: %s", eb.msg);
  ck_assert_uint_eq(ver, 1);
  ck_assert_msg(ua_syncs() > synced, "acknowledged before the shim saw a sync");
  ck_assert_uint_eq(ps_chan_inflight(c), 0);
  /* The same with the sync held, on the connection that did not ask. */
  ps_test_write_file(ua.gate, "held\n");
  ua_send(o, "ua", g, out, &push, &pull);
  unlink(ua.gate);
  uint64_t id;
  ck_assert_msg(ps_chan_recv(o, &id, &ver, &eb) == 0, "push: %s", eb.msg);
  ck_assert_uint_eq(id, push);
  ck_assert_uint_eq(ver, 2);
  ck_assert_msg(ps_chan_recv(o, &id, &ver, &eb) == 0, "pull: %s", eb.msg);
  ck_assert_uint_eq(id, pull);
  for (int i = 0; i < B_ELEMS; i++) ck_assert(out[i] == 0.0f);
  /* Unordered: an id not in flight is refused; three pushes wait for
   * their syncs while the pulls behind them are answered. */
  ck_assert_int_eq(ps_chan_recv_id(c, push, &ver, &eb), PS_EINVAL);
  ps_test_write_file(ua.gate, "held\n");
  uint64_t p[3], q[3];
  static float outs[3][B_ELEMS];
  for (int k = 0; k < 3; k++) ua_send(c, "ua", g, outs[k], &p[k], &q[k]);
  for (int k = 0; k < 3; k++) {
    ck_assert_msg(ps_chan_recv_id(c, q[k], &ver, &eb) == 0, "pull %d: %s", k, eb.msg);
    ck_assert_uint_eq(ver, 3 + (uint64_t)k);
  }
  unlink(ua.gate);
  for (int k = 0; k < 3; k++) {
    ck_assert_msg(ps_chan_recv(c, &id, &ver, &eb) == 0, "push %d: %s", k, eb.msg);
    ck_assert_uint_eq(id, p[k]);
    ck_assert_uint_eq(ver, 3 + (uint64_t)k);
  }
  ck_assert_uint_eq(ps_chan_inflight(c), 0);
  ps_chan_close(c);
  ps_chan_close(o);
}
END_TEST

/* ---- slow readers: a third psd with limits.max_queued_bytes of SR_QUEUED ---- */

#define SR_QUEUED (4u << 20)
#define SR_IDLE_MS 8000 /* chan_slow_ms: a quarter, 2 s */
#define SR_CHUNK (1u << 18) /* 1 MiB of fp32 */
#define SR_PEERS 12
#define SR_PULLS 30

static pid_t sr_pid;
static char sr_grpc[64], sr_chan[64], sr_log[600];
static int sr_started, sr_gport;

static void sr_up(void) {
  const char *dir = ps_test_tmpdir();
  char extra[200];
  int cp;
  snprintf(extra, sizeof extra,
           "limits:\n  max_queued_bytes: %u\n  idle_timeout_ms: %d\n"
           "training:\n  pull_timeout_ms: 1000\n", SR_QUEUED, SR_IDLE_MS);
  const char *yaml = ps_test_cluster_yaml(dir, 1, extra, &sr_gport, &cp);
  snprintf(sr_log, sizeof sr_log, "%s/psd.log", dir);
  snprintf(sr_grpc, sizeof sr_grpc, "127.0.0.1:%d", sr_gport);
  snprintf(sr_chan, sizeof sr_chan, "127.0.0.1:%d", cp);
  sr_pid = ps_test_psd(yaml, 0, sr_log, NULL);
  sr_started = ps_test_wait_port(cp, 15000) == 0 && ps_test_wait_port(sr_gport, 5000) == 0;
  if (!sr_started) fprintf(stderr, "psd (slow readers) did not start; see %s\n", sr_log);
}

static void sr_down(void) {
  if (sr_pid > 0) ps_test_stop(sr_pid, SIGTERM, 10000);
  sr_pid = 0;
}

/* sr_hostile connects to the slow-readers psd with a 4 KiB receive
 * buffer, says hello and sends SR_PULLS pulls of chunks 0 and 1 (2 MiB
 * each) that it never reads. */
static int sr_hostile(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), rcv = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                          .sin_port = htons((uint16_t)atoi(strrchr(sr_chan, ':') + 1))};
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  raw_hello(fd, "test");
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_PULL;
  m.model = "sr";
  m.n_chunk_ids = 2;
  m.chunk_ids = (uint32_t *)all_ids;
  for (int i = 0; i < SR_PULLS; i++) raw_frame(fd, &m, 0, 0);
  return fd;
}

/* Clients that never read their replies (the outside tester's attack,
 * scaled down) hold no more than about limits.max_queued_bytes of the
 * shard's memory between them, not CHAN_MAX_QUEUED (16 MiB) each; a
 * healthy client that reads its replies is served all along; and the
 * slow readers are closed within a few seconds, counted in
 * chan_slow_closed and logged with their peer.  Before, the shard grew
 * by about 18 MiB per such client and kept them until idle. */
START_TEST(test_slow_readers_bounded) {
  RAW_NEEDS_PLAIN_CHANNEL();
  ck_assert_msg(sr_started, "psd is not running");
  uint32_t ws[] = {4 * SR_CHUNK};
  Ps__TensorSpec w = PS__TENSOR_SPEC__INIT;
  w.name = "w"; w.n_shape = 1; w.shape = ws; w.init = "ones";
  Ps__TensorSpec *ts[] = {&w};
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd"; opt.lr = 0.5f;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = "sr"; spec.seed = 7; spec.n_tensors = 1; spec.tensors = ts;
  spec.optimizer = &opt; spec.chunk_elems = SR_CHUNK;
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, sr_grpc, &eb), 0);
  ps_test_submit(r, &spec, 1, 10000);
  ps_rpc_close(r);
  ps_chan_client *good;
  ck_assert_msg(ps_test_chan_connect(&good, sr_chan, "test", 5000, &eb) == 0, "%s", eb.msg);
  static float out[4 * SR_CHUNK];
  uint64_t v;
  ck_assert_int_eq(ps_test_pull(good, "sr", all_ids, 4, out, 4 * SR_CHUNK, 0, 0, &v, &eb), 0);
  long rss0 = psd_rss_kb(sr_pid);
  int fds[SR_PEERS];
  for (int i = 0; i < SR_PEERS; i++) fds[i] = sr_hostile();
  /* the healthy client is served while they hold their replies */
  long peak = 0;
  int64_t t0 = ps_test_now_ms();
  while (ps_test_now_ms() - t0 < 1500) {
    int64_t t = ps_test_now_ms();
    int rc = ps_test_pull(good, "sr", all_ids, 4, out, 4 * SR_CHUNK, 0, 0, &v, &eb);
    ck_assert_msg(rc == 0, "a healthy pull beside the slow readers: %s", eb.msg);
    ck_assert_msg(ps_test_now_ms() - t < 1000, "a healthy pull took %lld ms",
                  (long long)(ps_test_now_ms() - t));
    long kb = psd_rss_kb(sr_pid);
    if (kb > peak) peak = kb;
    usleep(100000);
  }
  ck_assert_msg(peak - rss0 < 64 * 1024, "%d clients that do not read grew the shard by %ld KiB "
                "(limits.max_queued_bytes %u KiB)", SR_PEERS, peak - rss0, SR_QUEUED >> 10);
  /* within chan_slow_ms (2 s) and a sweep or two the slow readers go,
   * the largest first, until what the rest hold (2 MiB or so each) fits
   * the limit (those go when idle) */
  Ps__StatusReply *st = NULL;
  int64_t end = ps_test_now_ms() + 5000;
  for (;;) {
    st = ps_test_status(sr_gport);
    if (st->chan_slow_closed >= SR_PEERS / 2 || ps_test_now_ms() > end) break;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    usleep(200000);
  }
  ck_assert_msg(st->chan_slow_closed >= SR_PEERS / 2 && st->chan_slow_closed <= SR_PEERS,
                "%llu of %d slow readers closed", (unsigned long long)st->chan_slow_closed,
                SR_PEERS);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ck_assert_int_eq(ps_test_pull(good, "sr", all_ids, 4, out, 4 * SR_CHUNK, 0, 0, &v, &eb), 0);
  ps_chan_close(good);
  for (int i = 0; i < SR_PEERS; i++) close(fds[i]);
  char *text = ps_test_read_file(sr_log, NULL);
  ck_assert_msg(strstr(text, "slow reader connection(s) since the last report: the last, "
                             "127.0.0.1:"), "no log line names a slow reader");
  free(text);
}
END_TEST

/* psd_vm_kb returns PID's address space in KiB (VmSize), or -1. */
static long psd_vm_kb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmSize: %ld kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb;
}

/* A co-located client asks for a region the shard cannot map (its
 * address space capped, as the outside tester's 4 GiB cap did): the hello
 * offers none and the connection goes on over TCP, and the log says so,
 * with the peer and why.  Before, it fell back in silence. */
START_TEST(test_shm_unmade_logged) {
  RAW_NEEDS_PLAIN_CHANNEL();
  ck_assert_msg(sr_started, "psd is not running");
  struct rlimit old, cap;
  ck_assert_int_eq(prlimit(sr_pid, RLIMIT_AS, NULL, &old), 0);
  long vm = psd_vm_kb(sr_pid);
  ck_assert_int_gt(vm, 0);
  cap = (struct rlimit){.rlim_cur = (rlim_t)(vm + 96 * 1024) * 1024, .rlim_max = old.rlim_max};
  int fd = ps_test_raw_open(sr_chan);
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_HELLO;
  m.proto_version = PS_CHAN_VERSION;
  m.cluster = "test";
  m.shm_bytes = 256u << 20; /* two areas of 128 MiB: within max_request_bytes each */
  /* capped only for the hello's moment: 96 MiB more than it maps now */
  ck_assert_int_eq(prlimit(sr_pid, RLIMIT_AS, &cap, NULL), 0);
  raw_frame(fd, &m, 0, 0);
  Ps__ChanMeta *h = raw_read_meta(fd);
  ck_assert_int_eq(prlimit(sr_pid, RLIMIT_AS, &old, NULL), 0);
  ck_assert_msg(h && (int)h->op == PS__CHAN_OP__CHAN_HELLO, "no hello reply");
  ck_assert_uint_eq(h->shm_bytes, 0);
  ps__chan_meta__free_unpacked(h, NULL);
  close(fd);
  char *text = ps_test_read_file(sr_log, NULL);
  const char *l = strstr(text, "without the shared memory they asked for");
  ck_assert_msg(l && strstr(l, "the last for 127.0.0.1:") && strstr(l, "268435456 bytes asked"),
                "no log line says a region could not be made");
  free(text);
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
  tcase_add_test(tc, test_direct_pull_partly_sent);
  tcase_add_test(tc, test_errors_keep_connection);
  tcase_add_test(tc, test_bad_frames_close_only_their_connection);
  tcase_add_test(tc, test_bad_frames_after_hello_counted);
  tcase_add_test(tc, test_refused_push_logged);
  tcase_add_test(tc, test_peer_gone_with_replies_queued);
  tcase_add_test(tc, test_prehello_meta_capped);
  suite_add_tcase(s, tc);
  TCase *lim = tcase_create("limits");
  tcase_add_unchecked_fixture(lim, lim_up, lim_down);
  tcase_set_timeout(lim, 60);
  tcase_add_test(lim, test_max_connections);
  tcase_add_test(lim, test_idle_closed);
  suite_add_tcase(s, lim);
  TCase *ua = tcase_create("unordered_acks");
  tcase_add_unchecked_fixture(ua, ua_up, ua_down);
  tcase_set_timeout(ua, 60);
  tcase_add_test(ua, test_pull_answered_before_push_sync);
  suite_add_tcase(s, ua);
  TCase *sr = tcase_create("slow_readers");
  tcase_add_unchecked_fixture(sr, sr_up, sr_down);
  tcase_set_timeout(sr, 60);
  tcase_add_test(sr, test_slow_readers_bounded);
  tcase_add_test(sr, test_shm_unmade_logged);
  suite_add_tcase(s, sr);
  tc = tcase_create("hello");
  tcase_add_test(tc, test_hello_check);
  suite_add_tcase(s, tc);
  return s;
}
