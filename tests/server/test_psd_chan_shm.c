/* Tests for the tensor channel's shared memory (psd_chan invariant 11,
 * ps_chan invariant 7) against real psds on loopback: pushes and pulls
 * through the region give bit for bit what TCP gives (copied through the
 * push and pull areas, scattered, and in place from memory the region was
 * moved onto, which keeps the last values after the close); the byte
 * counters count its payloads; what a raw client may ask for is checked
 * (a region too large is not offered, an offset outside the region or a
 * frame that also carries data is refused with the connection kept, a
 * connection without a region cannot name one), the region is sealed for
 * the client too, and clients that go away mid-request leave no region
 * and no descriptor behind.  A second psd with workers.shared_memory off
 * offers nothing (as a shard that predates the field), and its clients
 * work over TCP.  A psd under durability sync takes pushes in its region
 * too, logging and applying its own copy of them: what it applied is what
 * a kill -9 and restart replay, whatever the client writes there after.
 * A shard that sees its client on another address offers
 * nothing either: tests/integration/test_netlab.c checks that (its hosts
 * are network namespaces of this machine; tests here use 127.0.0.1
 * alone). */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_auth.h"
#include "ps_chan.h"
#include "ps_pb.h"
#include "ps_rpc.h"
#include "ps_shm.h"
#include "ps_test.h"

#define SH_ELEMS 3000     /* tensor "w": 3 chunks of 1024 (the last 952) */
#define SH_NCHUNKS 3
#define SH_MAX_REQ (1u << 20)
#define SH_AREA 12288u    /* page-rounded fp32 payload of the model */

static pid_t sh_pid, off_pid;
static char sh_grpc[64], sh_chan[64], off_grpc[64], off_chan[64];
static int sh_started, off_started;
static const uint32_t sh_ids[SH_NCHUNKS] = {0, 1, 2};

/* sh_wait_chan waits up to TIMEOUT_MS for a listener on HOST:PORT; 0
 * once one answers. */
static int sh_wait_chan(const char *host, int port, int timeout_ms) {
  int64_t end = ps_test_now_ms() + timeout_ms;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, host, &a.sin_addr);
  do {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    close(fd);
    if (rc == 0) return 0;
    usleep(20000);
  } while (ps_test_now_ms() < end);
  return -1;
}

/* sh_start starts a psd with EXTRA config (durability sync when SYNC);
 * fills its addresses (and YAML_OUT, 600 bytes, with its config's path
 * when not NULL). */
static pid_t sh_start(const char *extra, int sync, char *grpc, char *chan, int *ok,
                      char *yaml_out) {
  const char *dir = ps_test_tmpdir();
  char log[600];
  int gp, cp;
  const char *yaml = sync ? ps_test_sync_yaml(dir, 1, extra, &gp, &cp)
                          : ps_test_cluster_yaml(dir, 1, extra, &gp, &cp);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  if (yaml_out) snprintf(yaml_out, 600, "%s", yaml);
  snprintf(grpc, 64, "127.0.0.1:%d", gp);
  snprintf(chan, 64, "127.0.0.1:%d", cp);
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  *ok = ps_test_wait_port(gp, 15000) == 0 && sh_wait_chan("127.0.0.1", cp, 5000) == 0;
  if (!*ok) fprintf(stderr, "psd did not start; see %s\n", log);
  return pid;
}

static void sh_up(void) {
  char extra[96];
  snprintf(extra, sizeof extra, "limits:\n  max_request_bytes: %u\n", SH_MAX_REQ);
  sh_pid = sh_start(extra, 0, sh_grpc, sh_chan, &sh_started, NULL);
}

static void sh_down(void) {
  if (sh_pid > 0) ps_test_stop(sh_pid, SIGTERM, 10000);
  sh_pid = 0;
}

static void off_up(void) {
  off_pid = sh_start("workers:\n  shared_memory: false\n", 0, off_grpc, off_chan, &off_started,
                     NULL);
}

static pid_t sy_pid;
static char sy_grpc[64], sy_chan[64], sy_yaml[600];
static int sy_started;

/* sy_up starts the sync psd inside its test (a child of the test's
 * process, so that sy_restart can wait for it to die). */
static void sy_up(void) {
  sy_pid = sh_start(NULL, 1, sy_grpc, sy_chan, &sy_started, sy_yaml);
  ck_assert_msg(sy_started, "the sync psd did not start");
}

/* sy_restart kills the sync psd (SIGKILL: only what its log holds
 * survives) and starts it again on the same config and data. */
static void sy_restart(void) {
  ck_assert_int_ne(ps_test_stop(sy_pid, SIGKILL, 10000), -1);
  char log[700];
  snprintf(log, sizeof log, "%s.restart.log", sy_yaml);
  sy_pid = ps_test_psd(sy_yaml, 0, log, NULL);
  ck_assert_msg(ps_test_wait_port(atoi(strrchr(sy_grpc, ':') + 1), 15000) == 0 &&
                    sh_wait_chan("127.0.0.1", atoi(strrchr(sy_chan, ':') + 1), 5000) == 0,
                "psd did not restart; see %s", log);
}

static void off_down(void) {
  if (off_pid > 0) ps_test_stop(off_pid, SIGTERM, 10000);
  off_pid = 0;
}

/* sh_submit_n registers model NAME on the psd at GRPC: w[ELEMS]
 * uniform, SGD lr 0.5, chunks of CHUNK elements. */
static void sh_submit_n(const char *grpc, int ok, const char *name, uint32_t elems,
                        uint32_t chunk) {
  ck_assert_msg(ok, "psd at %s is not running", grpc);
  uint32_t ws[] = {elems};
  Ps__TensorSpec w = PS__TENSOR_SPEC__INIT;
  w.name = "w"; w.n_shape = 1; w.shape = ws; w.init = "uniform"; w.scale = 1;
  Ps__TensorSpec *ts[] = {&w};
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd"; opt.lr = 0.5f;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = (char *)name; spec.seed = 7; spec.n_tensors = 1; spec.tensors = ts;
  spec.optimizer = &opt; spec.chunk_elems = chunk;
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, grpc, &eb), 0);
  ps_test_submit(r, &spec, 1, 10000);
  ps_rpc_close(r);
}

/* sh_submit: w[SH_ELEMS] in 1024-element chunks. */
static void sh_submit(const char *grpc, int ok, const char *name) {
  sh_submit_n(grpc, ok, name, SH_ELEMS, 1024);
}

/* sh_connect_f opens a channel to ADDR asking for BYTES of shared memory
 * (0: none) with ps_chan FLAGS besides the run's security ones; *MAC:
 * this run MACs frames (PS_TEST_SECURITY=tls-mac: no region is offered
 * then). */
static ps_chan_client *sh_connect_f(const char *addr, uint64_t bytes, int more, int *mac) {
  ps_errbuf eb;
  if (mac) *mac = ps_test_payload_mac();
  ps_chan_client *c = NULL;
  int rc = ps_test_chan_connect_shm(&c, addr, "test", more, bytes, 5000, &eb);
  ck_assert_msg(rc == 0, "connect: %s", eb.msg);
  return c;
}

static ps_chan_client *sh_connect(const char *addr, uint64_t bytes, int *mac) {
  return sh_connect_f(addr, bytes, 0, mac);
}

/* sh_push / sh_pull: the whole model, from G / into OUT. */
static void sh_push(ps_chan_client *c, const char *model, const float *g) {
  ps_errbuf eb;
  uint64_t v;
  int rc = ps_test_push(c, model, sh_ids, SH_NCHUNKS, g, SH_ELEMS, 0, 0, 0, &v, &eb);
  ck_assert_msg(rc == 0, "push: %s", eb.msg);
}
static void sh_pull(ps_chan_client *c, const char *model, float *out) {
  ps_errbuf eb;
  uint64_t v;
  int rc = ps_test_pull(c, model, sh_ids, SH_NCHUNKS, out, SH_ELEMS, 0, 0, &v, &eb);
  ck_assert_msg(rc == 0, "pull: %s", eb.msg);
}

/* sh_region_count: the regions psd PID maps (SCAN "maps") or holds a
 * descriptor of ("fd"). */
static int sh_region_count(pid_t pid, const char *scan) {
  char path[64], link[256];
  int n = 0;
  if (!strcmp(scan, "maps")) {
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    char *text = ps_test_read_file(path, NULL);
    for (char *p = text; p && (p = strstr(p, "memfd:psd-chan")); p++) n++;
    free(text);
    return n;
  }
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  ck_assert_ptr_nonnull(d);
  for (struct dirent *e; (e = readdir(d));) {
    char f[400];
    snprintf(f, sizeof f, "%s/%s", path, e->d_name);
    ssize_t k = readlink(f, link, sizeof link - 1);
    if (k > 0) {
      link[k] = 0;
      n += strstr(link, "memfd:psd-chan") != NULL;
    }
  }
  closedir(d);
  return n;
}

START_TEST(test_shm_matches_tcp) {
  sh_submit(sh_grpc, sh_started, "sa");
  sh_submit(sh_grpc, sh_started, "sb");
  int mac = 0;
  ps_chan_client *s = sh_connect(sh_chan, 2 * SH_AREA, &mac);
  ps_chan_client *t = sh_connect(sh_chan, 0, NULL);
  void *data = NULL;
  uint64_t bytes = 0;
  ck_assert_int_eq(ps_chan_shm(s, &data, &bytes), !mac);
  ck_assert_int_eq(ps_chan_shm(t, NULL, NULL), 0);
  if (!mac) ck_assert_uint_eq(bytes, 2 * SH_AREA);
  int gport = atoi(strrchr(sh_grpc, ':') + 1);
  Ps__StatusReply *st = ps_test_status(gport);
  uint64_t shard_shm0 = st->chan_shm_bytes;
  ck_assert_uint_eq(st->chan_shm_connections, mac ? 0 : 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  static float g[SH_ELEMS], a[SH_ELEMS], b[SH_ELEMS];
  sh_pull(s, "sa", a);
  sh_pull(t, "sb", b);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  for (int step = 0; step < 4; step++) {
    for (int i = 0; i < SH_ELEMS; i++) g[i] = (float)((i * 7 + step) % 13 - 6) * 0.0625f;
    sh_push(s, "sa", g);
    sh_push(t, "sb", g);
    sh_pull(s, "sa", a);
    sh_pull(t, "sb", b);
    ck_assert_msg(memcmp(a, b, sizeof a) == 0, "step %d: shared memory and TCP differ", step);
  }
  /* A scattered pull: the pull area copied out into two segments. */
  static float lo[1000], hi[SH_ELEMS - 1000];
  struct iovec seg[2] = {{lo, sizeof lo}, {hi, sizeof hi}};
  ps_req r = {.model = "sa", .ids = sh_ids, .nids = SH_NCHUNKS};
  ps_errbuf eb;
  uint64_t v;
  ck_assert_msg(ps_chan_pullv(s, &r, seg, 2, &v, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(memcmp(lo, b, sizeof lo), 0);
  ck_assert_int_eq(memcmp(hi, b + 1000, sizeof hi), 0);
  uint64_t stx, srx, tx, rx;
  ps_chan_shm_bytes(s, &stx, &srx);
  ps_chan_bytes(s, &tx, &rx);
  uint64_t pay = SH_ELEMS * sizeof(float);
  ck_assert_uint_eq(stx, mac ? 0 : 4 * pay);
  ck_assert_uint_eq(srx, mac ? 0 : 6 * pay);
  ck_assert_uint_ge(tx, 4 * pay); /* the payloads count in the channel's bytes either way */
  ck_assert_uint_ge(rx, 6 * pay);
  if (!mac) {
    /* In place: the region moved onto our memory; push from its first
     * half, pull into its second. */
    uint8_t *mine = mmap(NULL, 2 * SH_AREA, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert(mine != MAP_FAILED);
    ck_assert_msg(ps_chan_shm_move(s, mine, &eb) == 0, "%s", eb.msg);
    ck_assert_int_eq(ps_chan_shm(s, &data, NULL), 1);
    ck_assert_ptr_eq(data, mine);
    float *mg = (float *)mine, *mp = (float *)(mine + SH_AREA);
    for (int i = 0; i < SH_ELEMS; i++) mg[i] = g[i] = (float)(i % 5) * -0.25f;
    sh_push(s, "sa", mg);
    sh_push(t, "sb", g);
    sh_pull(s, "sa", mp);
    sh_pull(t, "sb", b);
    ck_assert_int_eq(memcmp(mp, b, sizeof b), 0);
    ps_chan_shm_bytes(s, &stx, &srx);
    ck_assert_uint_eq(stx, 5 * pay);
    ck_assert_uint_eq(srx, 7 * pay);
    /* Moved, the areas are our memory: a pull elsewhere goes over TCP. */
    static float elsewhere[SH_ELEMS];
    sh_pull(s, "sa", elsewhere);
    ck_assert_int_eq(memcmp(elsewhere, b, sizeof b), 0);
    ck_assert_int_eq(memcmp(mp, b, sizeof b), 0);
    ps_chan_shm_bytes(s, &stx, &srx);
    ck_assert_uint_eq(srx, 7 * pay);
    st = ps_test_status(gport); /* the shard counts what the client counts */
    ck_assert_uint_eq(st->chan_shm_bytes - shard_shm0, stx + srx);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    ps_chan_close(s);
    s = NULL;
    ck_assert_int_eq(memcmp(mp, b, sizeof b), 0); /* the values stay after the close */
    mp[0] = 1; /* and the memory is ours */
    munmap(mine, 2 * SH_AREA);
  }
  ps_chan_close(s);
  ps_chan_close(t);
}
END_TEST

/* ---- raw frames ---- */

static int raw_open(const char *chan) { return ps_test_raw_open(chan); }

static void raw_frame(int fd, const Ps__ChanMeta *m, uint64_t data_len) {
  ps_test_raw_frame(fd, m, data_len, data_len);
}

/* raw_read reads exactly N bytes within 5 s. */
static void raw_read(int fd, void *buf, size_t n) {
  size_t got = 0;
  int64_t end = ps_test_now_ms() + 5000;
  while (got < n) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ck_assert_msg(ps_test_now_ms() < end, "no reply");
    if (poll(&p, 1, 100) <= 0) continue;
    ssize_t r = read(fd, (uint8_t *)buf + got, n - got);
    ck_assert_msg(r > 0, "connection closed");
    got += (size_t)r;
  }
}

/* raw_reply reads one reply frame; returns its meta (caller frees), its
 * data length in *DLEN (the data is dropped). */
static Ps__ChanMeta *raw_reply(int fd, uint64_t *dlen) {
  uint8_t hdr[PS_CHAN_HDR_LEN], meta[512];
  raw_read(fd, hdr, sizeof hdr);
  ps_chan_hdr h;
  ck_assert_int_eq(ps_chan_hdr_decode(&h, hdr, 1u << 30), 0);
  ck_assert_uint_le(h.meta_len, sizeof meta);
  raw_read(fd, meta, h.meta_len);
  for (uint64_t left = h.data_len; left;) {
    uint8_t junk[4096];
    size_t n = left < sizeof junk ? (size_t)left : sizeof junk;
    raw_read(fd, junk, n);
    left -= n;
  }
  Ps__ChanMeta *m;
  ps_errbuf eb;
  ck_assert_int_eq(ps_pb_unpack(&ps__chan_meta__descriptor, meta, h.meta_len,
                                (ProtobufCMessage **)&m, &eb), 0);
  if (dlen) *dlen = h.data_len;
  return m;
}

/* raw_hello_hold says hello asking for BYTES of shared memory, held
 * (shm_hold) when HOLD; returns the reply's meta (caller frees). */
static Ps__ChanMeta *raw_hello_hold(int fd, uint64_t bytes, int hold) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_HELLO;
  m.proto_version = PS_CHAN_VERSION;
  m.cluster = "test";
  m.shm_bytes = bytes;
  m.shm_hold = (uint32_t)hold;
  raw_frame(fd, &m, 0);
  Ps__ChanMeta *r = raw_reply(fd, NULL);
  ck_assert_int_eq(r->op, PS__CHAN_OP__CHAN_HELLO);
  return r;
}

static Ps__ChanMeta *raw_hello(int fd, uint64_t bytes) { return raw_hello_hold(fd, bytes, 0); }

/* raw_req sends a push (PUSH) or pull of model "sr" in shared memory at
 * OFF (SHM 0: an ordinary one) with DATA bytes of data; returns the
 * reply's status (0 or the error), *SHM_SET whether it says shm. */
static int raw_req(int fd, int push, int shm, uint64_t off, uint64_t data, int *shm_set) {
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = push ? PS__CHAN_OP__CHAN_PUSH : PS__CHAN_OP__CHAN_PULL;
  m.model = "sr";
  m.chunk_ids = (uint32_t *)sh_ids;
  m.n_chunk_ids = SH_NCHUNKS;
  m.shm = (uint32_t)shm;
  m.shm_off = off;
  raw_frame(fd, &m, data);
  uint64_t dlen = 0;
  Ps__ChanMeta *r = raw_reply(fd, &dlen);
  int status = r->op == PS__CHAN_OP__CHAN_ERROR ? r->status : 0;
  if (status == 0) ck_assert_int_eq(r->op, m.op);
  if (shm_set) *shm_set = r->shm != 0;
  if (status == 0 && shm) ck_assert_uint_eq(dlen, 0);
  ps__chan_meta__free_unpacked(r, NULL);
  return status;
}

static int raw_refused(void) {
  const char *e = getenv("PS_TEST_SECURITY");
  return e && *e && strcmp(e, "none") != 0;
}

START_TEST(test_shm_raw_requests) {
  if (raw_refused()) PS_SKIP("raw frames without the hello's proof: refused by design");
  sh_submit(sh_grpc, sh_started, "sr");
  /* A region too large for the limits is not offered. */
  int fd = raw_open(sh_chan);
  Ps__ChanMeta *h = raw_hello(fd, 3ull * SH_MAX_REQ);
  ck_assert_uint_eq(h->shm_bytes, 0);
  ps__chan_meta__free_unpacked(h, NULL);
  close(fd);
  /* One within them is: the client opens it, sealed for it too. */
  fd = raw_open(sh_chan);
  h = raw_hello(fd, 2 * SH_AREA);
  ck_assert_uint_eq(h->shm_bytes, 2 * SH_AREA);
  ck_assert_int_eq(h->shm_pid, sh_pid);
  ck_assert_uint_eq(h->shm_token.len, PS_SHM_TOKEN);
  char path[64];
  snprintf(path, sizeof path, "/proc/%u/fd/%u", h->shm_pid, h->shm_fd);
  int f = open(path, O_RDWR);
  ck_assert_msg(f >= 0, "open %s: %s", path, strerror(errno));
  ck_assert_int_eq(ftruncate(f, 0), -1);
  ck_assert_int_eq(ftruncate(f, 1 << 30), -1);
  close(f);
  ps_shm region;
  ps_errbuf eb;
  ck_assert_msg(ps_shm_open(&region, h->shm_pid, h->shm_fd, h->shm_bytes, h->shm_token.data,
                            h->shm_token.len, &eb) == 0, "%s", eb.msg);
  ps__chan_meta__free_unpacked(h, NULL);
  uint64_t pay = SH_ELEMS * sizeof(float);
  int set = 0;
  /* Refused, the connection kept: outside the region, unaligned, data too. */
  ck_assert_int_eq(raw_req(fd, 1, 1, 2 * SH_AREA - pay + 8, 0, NULL), PS_EINVAL);
  ck_assert_int_eq(raw_req(fd, 0, 1, 4, 0, NULL), PS_EINVAL);
  ck_assert_int_eq(raw_req(fd, 1, 1, 0, pay, NULL), PS_EINVAL);
  ck_assert_int_eq(raw_req(fd, 0, 1, UINT64_MAX - 7, 0, NULL), PS_EINVAL);
  /* Served: values pulled into the region, gradients pushed from it. */
  ck_assert_int_eq(raw_req(fd, 0, 1, SH_AREA, 0, &set), 0);
  ck_assert_int_eq(set, 1);
  static float before[SH_ELEMS], after[SH_ELEMS];
  memcpy(before, region.data + SH_AREA, pay);
  float *g = (float *)region.data;
  for (int i = 0; i < SH_ELEMS; i++) g[i] = 0.5f;
  ck_assert_int_eq(raw_req(fd, 1, 1, 0, 0, &set), 0);
  ck_assert_int_eq(raw_req(fd, 0, 1, SH_AREA, 0, NULL), 0);
  memcpy(after, region.data + SH_AREA, pay);
  for (int i = 0; i < SH_ELEMS; i++) ck_assert(after[i] == before[i] - 0.5f * 0.5f);
  ck_assert_int_eq(raw_req(fd, 0, 0, 0, 0, &set), 0); /* over TCP, as ever */
  ck_assert_int_eq(set, 0);
  ps_shm_release(&region);
  close(fd);
  /* Without a region, naming one is refused; the connection still serves. */
  fd = raw_open(sh_chan);
  h = raw_hello(fd, 0);
  ck_assert_uint_eq(h->shm_bytes, 0);
  ps__chan_meta__free_unpacked(h, NULL);
  ck_assert_int_eq(raw_req(fd, 1, 1, 0, 0, NULL), PS_EINVAL);
  ck_assert_int_eq(raw_req(fd, 0, 1, 0, 0, NULL), PS_EINVAL);
  ck_assert_int_eq(raw_req(fd, 0, 0, 0, 0, NULL), 0);
  close(fd);
}
END_TEST

/* Clients that go away with a push or a pull in flight through their
 * region, or before using it at all: no region and no descriptor stays
 * in the shard, which serves on. */
START_TEST(test_shm_client_gone) {
  sh_submit(sh_grpc, sh_started, "sg");
  static float g[SH_ELEMS], out[SH_ELEMS];
  for (int i = 0; i < 12; i++) {
    ps_chan_client *c = sh_connect(sh_chan, 2 * SH_AREA, NULL);
    ps_req r = {.model = "sg", .ids = sh_ids, .nids = SH_NCHUNKS, .grads = g,
                .nbytes = sizeof g};
    struct iovec seg = {i % 3 == 1 ? (void *)g : out, sizeof g};
    uint64_t id;
    ps_errbuf eb;
    if (i % 3 == 0) ck_assert_int_eq(ps_chan_send_pushv(c, &r, &seg, 1, &id, &eb), 0);
    if (i % 3 == 1) ck_assert_int_eq(ps_chan_send_pullv(c, &r, &seg, 1, &id, &eb), 0);
    ps_chan_close(c);
  }
  int64_t end = ps_test_now_ms() + 5000;
  while ((sh_region_count(sh_pid, "maps") || sh_region_count(sh_pid, "fd")) &&
         ps_test_now_ms() < end)
    usleep(20000);
  ck_assert_int_eq(sh_region_count(sh_pid, "maps"), 0);
  ck_assert_int_eq(sh_region_count(sh_pid, "fd"), 0);
  ps_chan_client *c = sh_connect(sh_chan, 2 * SH_AREA, NULL);
  sh_pull(c, "sg", out);
  ps_chan_close(c);
}
END_TEST

/* No region from a shard with workers.shared_memory off. */
START_TEST(test_shm_config_off) {
  sh_submit(off_grpc, off_started, "so");
  ps_chan_client *c = sh_connect(off_chan, 2 * SH_AREA, NULL);
  ck_assert_int_eq(ps_chan_shm(c, NULL, NULL), 0);
  static float g[SH_ELEMS], out[SH_ELEMS];
  for (int i = 0; i < SH_ELEMS; i++) g[i] = 1;
  sh_push(c, "so", g);
  sh_pull(c, "so", out);
  uint64_t stx, srx;
  ps_chan_shm_bytes(c, &stx, &srx);
  ck_assert_uint_eq(stx + srx, 0);
  ck_assert_int_eq(sh_region_count(off_pid, "maps"), 0);
  ps_chan_close(c);
}
END_TEST

/* Under durability sync a push in the region is copied, logged and
 * applied from the copy (psd_chan invariant 11): the client pushes there,
 * the values are those TCP gives, and after a kill -9 and a restart the
 * replayed values are the ones applied, though the client overwrote its
 * gradients in the region once the push was acknowledged. */
START_TEST(test_shm_sync_push_copied) {
  sy_up();
  sh_submit(sy_grpc, sy_started, "sy");
  int mac;
  ps_chan_client *c = sh_connect(sy_chan, 2 * SH_AREA, &mac);
  ck_assert_int_eq(ps_chan_shm(c, NULL, NULL), !mac);
  static float g[SH_ELEMS], out[SH_ELEMS], tcp[SH_ELEMS];
  for (int i = 0; i < SH_ELEMS; i++) g[i] = (float)(i % 13) - 6.0f;
  for (int k = 0; k < 3; k++) sh_push(c, "sy", g);
  sh_pull(c, "sy", out);
  uint64_t stx, srx, pay = SH_ELEMS * sizeof(float);
  ps_chan_shm_bytes(c, &stx, &srx);
  ck_assert_uint_eq(stx, mac ? 0 : 3 * pay);
  ck_assert_uint_eq(srx, mac ? 0 : pay);
  ps_chan_client *t = sh_connect(sy_chan, 0, NULL);
  sh_pull(t, "sy", tcp);
  ck_assert_int_eq(memcmp(out, tcp, sizeof out), 0);
  ps_chan_close(t);
  ps_chan_close(c);
  static float before[SH_ELEMS], after[SH_ELEMS], replayed[SH_ELEMS];
  if (!raw_refused()) { /* raw frames: no authentication */
    sh_submit(sy_grpc, sy_started, "sr");
    int fd = raw_open(sy_chan);
    Ps__ChanMeta *h = raw_hello(fd, 2 * SH_AREA);
    ck_assert_uint_eq(h->shm_bytes, 2 * SH_AREA);
    ck_assert_uint_eq(h->shm_pulls_only, 0);
    ps_shm region;
    ps_errbuf eb;
    ck_assert_msg(ps_shm_open(&region, h->shm_pid, h->shm_fd, h->shm_bytes, h->shm_token.data,
                              h->shm_token.len, &eb) == 0, "%s", eb.msg);
    ps__chan_meta__free_unpacked(h, NULL);
    int set = 0;
    ck_assert_int_eq(raw_req(fd, 0, 1, SH_AREA, 0, &set), 0);
    ck_assert_int_eq(set, 1);
    memcpy(before, region.data + SH_AREA, pay);
    float *rg = (float *)region.data;
    for (int i = 0; i < SH_ELEMS; i++) rg[i] = 0.5f;
    ck_assert_int_eq(raw_req(fd, 1, 1, 0, 0, NULL), 0); /* acknowledged: synced */
    for (int i = 0; i < SH_ELEMS; i++) rg[i] = 1e30f;  /* no longer the shard's business */
    ck_assert_int_eq(raw_req(fd, 0, 1, SH_AREA, 0, NULL), 0);
    memcpy(after, region.data + SH_AREA, pay);
    for (int i = 0; i < SH_ELEMS; i++) ck_assert(after[i] == before[i] - 0.5f * 0.5f);
    ps_shm_release(&region);
    close(fd);
    /* a held region (lent to the log): pulls only in its pull area, the
     * last of four, pushes only in its push areas */
    fd = raw_open(sy_chan);
    h = raw_hello_hold(fd, 4 * SH_AREA, 1);
    ck_assert_uint_eq(h->shm_bytes, 4 * SH_AREA);
    ck_assert_uint_eq(h->shm_hold, 1);
    ps__chan_meta__free_unpacked(h, NULL);
    ck_assert_int_eq(raw_req(fd, 0, 1, 2 * SH_AREA, 0, NULL), PS_EINVAL); /* over a push area */
    ck_assert_int_eq(raw_req(fd, 1, 1, 3 * SH_AREA, 0, NULL), PS_EINVAL); /* in the pull area */
    ck_assert_int_eq(raw_req(fd, 1, 1, SH_AREA / 2, 0, NULL), PS_EINVAL); /* over two areas */
    ck_assert_int_eq(raw_req(fd, 0, 1, 3 * SH_AREA, 0, NULL), 0);
    ck_assert_int_eq(raw_req(fd, 1, 1, 2 * SH_AREA, 0, NULL), 0); /* zeros: nothing changes */
    close(fd);
    /* too small to hold four areas of a page: no region */
    fd = raw_open(sy_chan);
    h = raw_hello_hold(fd, 3 * 4096, 1);
    ck_assert_uint_eq(h->shm_bytes, 0);
    ps__chan_meta__free_unpacked(h, NULL);
    close(fd);
  }
  sy_restart();
  c = sh_connect(sy_chan, 0, NULL);
  sh_pull(c, "sy", replayed);
  ck_assert_int_eq(memcmp(replayed, out, sizeof out), 0);
  if (!raw_refused()) {
    sh_pull(c, "sr", replayed);
    ck_assert_int_eq(memcmp(replayed, after, pay), 0);
  }
  ps_chan_close(c);
  ps_test_stop(sy_pid, SIGTERM, 10000);
}
END_TEST

#define SL_ELEMS 20480u /* 80 KiB pushes: what the log takes by reference (64 KiB or more) */
#define SL_CHUNKS 5
#define SL_AREA 81920u
#define SL_AREAS PS_CHAN_SHM_PUSH_AREAS
static const uint32_t sl_ids[SL_CHUNKS] = {0, 1, 2, 3, 4};

/* sl_send sends a push of model "sl" from G without waiting; its id. */
static uint64_t sl_send(ps_chan_client *c, const float *g) {
  ps_req r = {.model = "sl", .ids = sl_ids, .nids = SL_CHUNKS};
  struct iovec v = {(void *)g, SL_ELEMS * sizeof(float)};
  uint64_t id;
  ps_errbuf eb;
  ck_assert_msg(ps_chan_send_pushv(c, &r, &v, 1, &id, &eb) == 0, "push: %s", eb.msg);
  return id;
}

/* sl_pull pulls model "sl" over TCP from CHAN into OUT. */
static void sl_pull(const char *chan, float *out) {
  ps_chan_client *t = sh_connect(chan, 0, NULL);
  ps_errbuf eb;
  uint64_t v;
  int rc = ps_test_pull(t, "sl", sl_ids, SL_CHUNKS, out, SL_ELEMS, 0, 0, &v, &eb);
  ck_assert_msg(rc == 0, "pull: %s", eb.msg);
  ps_chan_close(t);
}

/* Under durability sync a client that holds its pushes in the region
 * until answered (PS_CHAN_SHM_HOLD) gets SL_AREAS push areas, and its
 * pushes are logged from there (psd_chan invariant 11, psd_wal invariant
 * 8): with the log's syncs held by the fsync shim's gate, the pushes
 * beyond SL_AREAS unanswered ones go over TCP; an answered push's area
 * serves the next; after a kill -9 and a restart the replayed values are
 * those applied, though every area was rewritten once its push was
 * answered; the log says how many records it wrote from shared memory.
 * A shard under periodic grants such a client two areas (the test "on"). */
START_TEST(test_shm_sync_push_lent) {
  const char *dir = ps_test_tmpdir();
  ps_test_gated gt;
  ps_test_gated_init(&gt, dir, NULL, 0);
  const char *gate = gt.gate, *chan = gt.chan;
  char log2[600];
  snprintf(log2, sizeof log2, "%s/psd2.log", dir);
  pid_t pid = ps_test_psd(gt.yaml, 0, gt.log, gt.env.env);
  int ok = ps_test_wait_port(gt.gp, 15000) == 0 && sh_wait_chan("127.0.0.1", gt.cp, 5000) == 0;
  sh_submit_n(gt.grpc, ok, "sl", SL_ELEMS, 4096);
  int mac;
  ps_chan_client *c = sh_connect_f(chan, (SL_AREAS + 1) * SL_AREA,
                                   PS_CHAN_SHM_HOLD | PS_CHAN_UNORDERED_ACKS, &mac);
  uint64_t bytes = 0, stx, srx, pay = SL_ELEMS * sizeof(float), ids[SL_AREAS + 2], v;
  ck_assert_int_eq(ps_chan_shm(c, NULL, &bytes), !mac);
  if (!mac) ck_assert_uint_eq(bytes, (SL_AREAS + 1) * SL_AREA);
  ps_errbuf eb;
  if (!mac) { /* a held region is the client library's: it does not move */
    void *at = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(at, MAP_FAILED);
    ck_assert_int_eq(ps_chan_shm_move(c, at, &eb), PS_EINVAL);
    munmap(at, bytes);
  }
  static float g[SL_AREAS + 2][SL_ELEMS], out[SL_ELEMS], tcp[SL_ELEMS];
  for (int k = 0; k < SL_AREAS + 2; k++)
    for (uint32_t i = 0; i < SL_ELEMS; i++) g[k][i] = (float)((i * 3 + (uint32_t)k) % 11) - 5.0f;
  ps_test_write_file(gate, "held\n");
  for (int k = 0; k <= SL_AREAS; k++) ids[k] = sl_send(c, g[k]);
  ps_chan_shm_bytes(c, &stx, &srx);
  ck_assert_uint_eq(stx, mac ? 0 : SL_AREAS * pay); /* every area's push unanswered: TCP */
  unlink(gate);
  for (int k = 0; k <= SL_AREAS; k++)
    ck_assert_msg(ps_chan_recv_id(c, ids[k], &v, &eb) == 0, "push %d: %s", k, eb.msg);
  ids[SL_AREAS + 1] = sl_send(c, g[SL_AREAS + 1]);
  ck_assert_msg(ps_chan_recv_id(c, ids[SL_AREAS + 1], &v, &eb) == 0, "push: %s", eb.msg);
  ps_chan_shm_bytes(c, &stx, &srx);
  ck_assert_uint_eq(stx, mac ? 0 : (SL_AREAS + 1) * pay);
  ck_assert_int_eq(ps_test_pull(c, "sl", sl_ids, SL_CHUNKS, out, SL_ELEMS, 0, 0, &v, &eb), 0);
  sl_pull(chan, tcp);
  ck_assert_int_eq(memcmp(out, tcp, sizeof out), 0);
  ps_chan_close(c);
  /* kill -9: the log's records are all there is of these pushes */
  ck_assert_int_ne(ps_test_stop(pid, SIGKILL, 10000), -1);
  pid = ps_test_psd(gt.yaml, 0, log2, gt.env.env); /* the gate again, for the pushes below */
  ck_assert_msg(ps_test_wait_port(gt.gp, 15000) == 0 &&
                    sh_wait_chan("127.0.0.1", gt.cp, 5000) == 0, "psd did not restart; see %s", log2);
  sl_pull(chan, tcp);
  ck_assert_int_eq(memcmp(out, tcp, sizeof out), 0);
  /* two more held pushes, the second queued behind the first's held
   * sync when their connection closes: the region lives on until the log
   * wrote it, and a clean stop says where their records came from */
  c = sh_connect_f(chan, (SL_AREAS + 1) * SL_AREA, PS_CHAN_SHM_HOLD | PS_CHAN_UNORDERED_ACKS,
                   NULL);
  ps_test_write_file(gate, "held\n");
  ids[0] = sl_send(c, g[0]);
  ids[2] = sl_send(c, g[1]);
  ps_req pr = {.model = "sl", .ids = sl_ids, .nids = SL_CHUNKS};
  struct iovec dst = {out, sizeof out};
  ck_assert_msg(ps_chan_send_pullv(c, &pr, &dst, 1, &ids[1], &eb) == 0, "pull: %s", eb.msg);
  ck_assert_msg(ps_chan_recv_id(c, ids[1], &v, &eb) == 0, "pull: %s", eb.msg); /* the push waits */
  ck_assert_int_eq(ps_chan_done(c, ids[0]) + ps_chan_done(c, ids[2]), 0);
  ps_chan_close(c);
  unlink(gate);
  sl_pull(chan, tcp);
  ck_assert_int_eq(memcmp(out, tcp, sizeof out), 0);
  Ps__StatusReply *st = ps_test_status(gt.gp);
  ck_assert_str_eq(st->state, "SERVING");
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 10000), 0);
  char *text = ps_test_read_file(log2, NULL);
  ck_assert_msg(strstr(text, mac ? "0 of them from its shared memory"
                                 : "2 of them from its shared memory"), "%s", text);
  free(text);
}
END_TEST

/* A shard under periodic grants a client that would hold its pushes
 * (PS_CHAN_SHM_HOLD) two areas, used as without holding. */
START_TEST(test_shm_hold_periodic) {
  sh_submit(sh_grpc, sh_started, "sh");
  int mac;
  ps_chan_client *c = sh_connect_f(sh_chan, (SL_AREAS + 1) * SH_AREA, PS_CHAN_SHM_HOLD, &mac);
  ps_chan_client *t = sh_connect(sh_chan, 0, NULL);
  uint64_t bytes = 0, stx, srx;
  ck_assert_int_eq(ps_chan_shm(c, NULL, &bytes), !mac);
  if (!mac) ck_assert_uint_eq(bytes, 2 * SH_AREA);
  static float g[SH_ELEMS], a[SH_ELEMS], b[SH_ELEMS];
  for (int k = 0; k < 3; k++) {
    for (int i = 0; i < SH_ELEMS; i++) g[i] = (float)((i * 5 + k) % 7) - 3.0f;
    sh_push(c, "sh", g);
  }
  sh_pull(c, "sh", a);
  sh_pull(t, "sh", b);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  ps_chan_shm_bytes(c, &stx, &srx);
  ck_assert_uint_eq(stx, mac ? 0 : 3 * SH_ELEMS * sizeof(float));
  ck_assert_uint_eq(srx, mac ? 0 : SH_ELEMS * sizeof(float));
  ps_chan_close(c);
  ps_chan_close(t);
}
END_TEST

Suite *psd_chan_shm_suite(void) {
  Suite *s = suite_create("psd_chan_shm");
  TCase *tc = tcase_create("on");
  tcase_add_unchecked_fixture(tc, sh_up, sh_down);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_shm_matches_tcp);
  tcase_add_test(tc, test_shm_raw_requests);
  tcase_add_test(tc, test_shm_client_gone);
  tcase_add_test(tc, test_shm_hold_periodic);
  suite_add_tcase(s, tc);
  TCase *off = tcase_create("off");
  tcase_add_unchecked_fixture(off, off_up, off_down);
  tcase_set_timeout(off, 60);
  tcase_add_test(off, test_shm_config_off);
  suite_add_tcase(s, off);
  TCase *sy = tcase_create("sync");
  tcase_add_unchecked_fixture(sy, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(sy, 60);
  tcase_add_test(sy, test_shm_sync_push_copied);
  tcase_add_test(sy, test_shm_sync_push_lent);
  suite_add_tcase(s, sy);
  return s;
}
