/* Integration: a psd that runs out of file descriptors for a moment.
 *
 * psd runs under `prlimit --nofile=64` (about 24 of them are its own at
 * rest).  A flood of connections to the tensor channel must leave
 * descriptors for gRPC (the channel's reserve): psctl status answers while
 * the flood is held.  A flood of connections to the gRPC port takes every
 * descriptor; gRPC core 1.51 then logs "Failed accept4: Too many open
 * files" and never accepts on that listener again, so after the flood has
 * gone the shard must notice (its self-probe) and rebuild its gRPC server:
 * psctl status says SERVING again within a bounded wait, and the channel
 * still serves a pull, and a gRPC pull that was parked (bsp, waiting for
 * a slower worker) when the server was rebuilt is answered UNAVAILABLE,
 * not left to a server that is gone.  A second test checks that psd raises its soft
 * RLIMIT_NOFILE to the hard limit at start. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_rpc.h"
#include "ps_test.h"

#define FD_FLOOD 120 /* connections per flood: well past 64 descriptors */
#define FD_ELEMS 64

typedef struct fd_ctx {
  char dir[512], yaml[600], log[600], out[600];
  int gp, cp;
  pid_t pid;
} fd_ctx;

/* fd_start starts psd under prlimit with the open-files limit LIMIT
 * ("SOFT[:HARD]") and waits for both ports.  Leases and parked pulls last
 * a minute: a parked pull must still be parked when gRPC is rebuilt. */
static void fd_start(fd_ctx *x, const char *limit) {
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  snprintf(x->yaml, sizeof x->yaml, "%s",
           ps_test_cluster_yaml(x->dir, 1,
                                "workers:\n  count: 2\n  lease_ms: 60000\n"
                                "training:\n  pull_timeout_ms: 60000\n", &x->gp, &x->cp));
  snprintf(x->log, sizeof x->log, "%s/psd.log", x->dir);
  snprintf(x->out, sizeof x->out, "%s/psctl.out", x->dir);
  char nofile[64];
  snprintf(nofile, sizeof nofile, "--nofile=%s", limit);
  char *argv[] = {"/usr/bin/prlimit", nofile, (char *)ps_test_bin("psd"), "--config", x->yaml,
                  "--shard", "0", NULL};
  x->pid = ps_test_spawn(argv, x->log, NULL);
  ck_assert_msg(ps_test_wait_port(x->cp, 15000) == 0 && ps_test_wait_port(x->gp, 5000) == 0,
                "psd did not start; see %s", x->log);
}

/* fd_psctl runs `psctl status --json` with a 2 s deadline per call; its
 * exit code (0: every shard SERVING). */
static int fd_psctl(fd_ctx *x) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "timeout 20 '%s' status --config '%s' --json --timeout 2000 > '%s' 2>>'%s'",
           ps_test_bin("psctl"), x->yaml, x->out, x->log);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* fd_flood opens up to N connections to PORT (fewer when connect fails
 * or times out) into FDS; returns how many. */
static int fd_flood(int port, int *fds, int n) {
  int k = 0;
  for (; k < n; k++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
      close(fd);
      break;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t el = sizeof err;
    if (poll(&p, 1, 1000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
      close(fd);
      break; /* the backlog is full */
    }
    fds[k] = fd;
  }
  return k;
}

/* fd_closed_by_peer counts the connections of FDS the server closed. */
static int fd_closed_by_peer(const int *fds, int n) {
  int closed = 0;
  for (int i = 0; i < n; i++) {
    char buf[256];
    ssize_t r;
    while ((r = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT)) > 0) {
    }
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) closed++;
  }
  return closed;
}

static void fd_close_all(int *fds, int n) {
  for (int i = 0; i < n; i++) close(fds[i]);
}

/* fd_submit registers model "fd" (FD_ELEMS ones, one chunk, bsp). */
static void fd_submit(fd_ctx *x) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->gp);
  uint32_t shape[] = {FD_ELEMS};
  Ps__TensorSpec w = PS__TENSOR_SPEC__INIT;
  w.name = "w";
  w.n_shape = 1;
  w.shape = shape;
  w.init = "ones";
  Ps__TensorSpec *ts[] = {&w};
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd";
  opt.lr = 0.5f;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = "fd";
  spec.seed = 1;
  spec.n_tensors = 1;
  spec.tensors = ts;
  spec.optimizer = &opt;
  spec.consistency = "bsp";
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, addr, &eb), 0);
  ps_test_submit(r, &spec, 1, 10000);
  ps_rpc_close(r);
}

/* fd_pull pulls model "fd" over a new channel connection; 0 or an error. */
static int fd_pull(fd_ctx *x, ps_errbuf *eb) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->cp);
  ps_chan_client *c;
  int rc = ps_test_chan_connect(&c, addr, "test", 5000, eb);
  if (rc < 0) return rc;
  float out[FD_ELEMS];
  uint32_t id = 0;
  uint64_t v;
  rc = ps_test_pull(c, "fd", &id, 1, out, FD_ELEMS, 0, 0, &v, eb);
  ps_chan_close(c);
  if (rc == 0 && out[0] != 1.0f) rc = ps_errf(eb, PS_EINTERNAL, "pulled %g, want 1", out[0]);
  return rc;
}

/* A gRPC pull of WORKER at CLOCK, in a thread when started with
 * fd_pull_start. */
typedef struct fd_grpc_pull {
  char addr[64];
  uint32_t worker;
  uint64_t clock;
  int err;
  ps_errbuf eb;
  pthread_t th;
} fd_grpc_pull;

static void *fd_grpc_pull_run(void *arg) {
  fd_grpc_pull *p = arg;
  ps_rpc *r;
  p->err = ps_test_rpc_open(&r, p->addr, &p->eb);
  if (p->err < 0) return NULL;
  uint32_t id = 0;
  Ps__PullRequest req = PS__PULL_REQUEST__INIT;
  req.model = "fd";
  req.n_chunk_ids = 1;
  req.chunk_ids = &id;
  req.worker = p->worker;
  req.clock = p->clock;
  ProtobufCMessage *rep = NULL;
  p->err = ps_rpc_call(r, "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor, &rep, 90000,
                       &p->eb);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  ps_rpc_close(r);
  return NULL;
}

/* fd_park leaves a gRPC pull of worker 0 parked on model "fd": both
 * workers pulled at clock 0, worker 0 pushed clock 0 and pulls at clock 1
 * (bsp), in thread P. */
static void fd_park(fd_ctx *x, fd_grpc_pull *p) {
  memset(p, 0, sizeof *p);
  snprintf(p->addr, sizeof p->addr, "127.0.0.1:%d", x->gp);
  for (uint32_t w = 0; w < 2; w++) {
    fd_grpc_pull now = *p;
    now.worker = w;
    fd_grpc_pull_run(&now);
    ck_assert_msg(now.err == 0, "pull of worker %u: %s", w, now.eb.msg);
  }
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, p->addr, &eb), 0);
  float g[FD_ELEMS] = {0};
  uint32_t id = 0;
  Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
  req.model = "fd";
  req.n_chunk_ids = 1;
  req.chunk_ids = &id;
  req.grads.data = (uint8_t *)g;
  req.grads.len = sizeof g;
  ProtobufCMessage *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor, &rep, 5000, &eb);
  ck_assert_msg(err == 0, "push: %s", eb.msg);
  protobuf_c_message_free_unpacked(rep, NULL);
  ps_rpc_close(r);
  p->clock = 1;
  ck_assert_int_eq(pthread_create(&p->th, NULL, fd_grpc_pull_run, p), 0);
}

START_TEST(test_fd_exhaustion_recovers) {
  fd_ctx x;
  memset(&x, 0, sizeof x);
  if (access("/usr/bin/prlimit", X_OK) != 0) PS_SKIP("no /usr/bin/prlimit");
  fd_start(&x, "64");
  fd_submit(&x);
  ps_errbuf eb;
  ck_assert_msg(fd_pull(&x, &eb) == 0, "pull before the floods: %s", eb.msg);
  fd_grpc_pull parked;
  fd_park(&x, &parked);
  static int fds[FD_FLOOD];

  /* 1. The channel keeps a reserve: gRPC answers while its flood is held. */
  int n = fd_flood(x.cp, fds, FD_FLOOD);
  usleep(500000);
  int rc = fd_psctl(&x);
  int refused = fd_closed_by_peer(fds, n);
  fd_close_all(fds, n);
  ck_assert_msg(rc == 0, "psctl status failed (exit %d) while %d channel connections were held "
                "(%d closed by the shard); see %s and %s", rc, n, refused, x.out, x.log);
  ck_assert_msg(refused > 0, "the shard under 64 descriptors took all %d channel connections", n);

  /* 2. A gRPC flood kills gRPC's listener; the shard must rebuild it. */
  n = fd_flood(x.gp, fds, FD_FLOOD);
  usleep(1000000);
  fd_close_all(fds, n);
  int64_t t0 = ps_test_now_ms(), end = t0 + 40000;
  while ((rc = fd_psctl(&x)) != 0 && ps_test_now_ms() < end) usleep(500000);
  ck_assert_msg(rc == 0, "psctl status still fails %lld ms after a flood of %d gRPC connections "
                "ended; see %s and %s", (long long)(ps_test_now_ms() - t0), n, x.out, x.log);
  ck_assert_msg(fd_pull(&x, &eb) == 0, "pull after the floods: %s", eb.msg);
  pthread_join(parked.th, NULL);
  ck_assert_msg(parked.err == PS_EUNAVAIL, "the pull parked across the rebuild: %s (%s)",
                ps_errname(parked.err), parked.eb.msg);
  /* psctl status tells what happened. */
  char *json = ps_test_read_file(x.out, NULL);
  double restarts = ps_test_json_num(json, "grpc_restarts");
  double chan_refused = ps_test_json_num(json, "chan_refused");
  free(json);
  ck_assert_msg(restarts >= 1, "grpc_restarts %g after the listener was rebuilt", restarts);
  ck_assert_msg(chan_refused >= 1, "chan_refused %g after the channel flood", chan_refused);
  int st = ps_test_stop(x.pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "psd did not stop cleanly (status %d); see %s", st, x.log);
}
END_TEST

/* psd raises its soft open-files limit to the hard one. */
START_TEST(test_fd_limit_raised) {
  fd_ctx x;
  memset(&x, 0, sizeof x);
  if (access("/usr/bin/prlimit", X_OK) != 0) PS_SKIP("no /usr/bin/prlimit");
  fd_start(&x, "64:512");
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/limits", (int)x.pid);
  char *text = ps_test_read_file(path, NULL);
  const char *line = strstr(text, "Max open files");
  ck_assert_msg(line != NULL, "no 'Max open files' in %s", path);
  unsigned long soft = 0, hard = 0;
  ck_assert_int_eq(sscanf(line, "Max open files %lu %lu", &soft, &hard), 2);
  free(text);
  ck_assert_uint_eq(hard, 512);
  ck_assert_msg(soft == 512, "soft open-files limit %lu, want the hard limit 512", soft);
  ps_test_stop(x.pid, SIGTERM, 15000);
}
END_TEST

Suite *fdlimit_suite(void) {
  Suite *s = suite_create("fdlimit");
  TCase *tc = tcase_create("fdlimit");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_fd_exhaustion_recovers);
  tcase_add_test(tc, test_fd_limit_raised);
  suite_add_tcase(s, tc);
  return s;
}
