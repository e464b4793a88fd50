/* Integration: hierarchy (issue 14, DESIGN.md "Hierarchy") with 2 real
 * root shards, one aggregator (psd --aggregator h0, 3 local workers) and 3
 * psw workers that register with the coordinator on a 3000-sample
 * Fashion-MNIST subset, logistic regression:
 *
 *  - one update: 3 bare channel clients push g0, g1, g2 at clock 0 to a
 *    model straight on the root and to its twin through the aggregator;
 *    the root applies the aggregator's one push of the sum (SGD) and both
 *    models then hold p0 - lr (g0 + g1 + g2) to rounding;
 *  - replace: a model replaced on the root (another shape, then another
 *    seed) is seen through the running aggregator by new connections;
 *  - clip: the root takes a sum of N within N x clip_norm, and the
 *    aggregator's topk re-encoding of a sum with its residual is scaled
 *    down to that bound;
 *  - sum: under BSP with plain SGD, each root shard sees exactly one push
 *    per clock, every one the sum of the 3 workers (Status sum_pushes,
 *    sum_grads, version), its recorded gap stays 0, and the aggregator
 *    fetched once per clock per shard.  (A whole flat training run is not
 *    compared: its workers start as they register, the first ones alone,
 *    so even two flat runs differ; the one-update test above is the exact
 *    comparison.)
 *  - ssp s = 2 with one worker slowed 3x: the roots' recorded gap stays
 *    within 2;
 *  - clocks: a worker's first pull through the aggregator enters it into
 *    the root's clock table (a fetch of its own), so a worker straight on
 *    the root waits for it under BSP;
 *  - a dead local worker leaves through the aggregator (leases longer
 *    than the test): the aggregator's sums no longer wait for it, the
 *    roots list it DEAD;
 *  - a root that stops and comes back: a push through the aggregator
 *    fails while it is down (the worker's connection stays) and is
 *    acknowledged once it is back (the link connects again);
 *  - a root killed mid-run under durability sync, one worker behind the
 *    aggregator: the push the aggregator answers with the root's failure
 *    is trained again, so the root's version covers every batch;
 *  - a sum that fails on its way to a stopped root (no hello): the
 *    worker's pulls of the next clock, parked on the root or sent after
 *    the push's answer, fail at once with PS_EUNAVAIL, and psw's client
 *    goes to the root directly within seconds, not pull_timeout_ms;
 *  - a SIGTERM'd aggregator forwards the sum it holds at once and answers
 *    the push with the root's acknowledgement before it exits;
 *  - a root whose gRPC port never answers: the aggregator serves other
 *    connections while it fetches the model's layout off its loop, and
 *    the failed fetch answers the requests that waited for it;
 *  - root links: the aggregator's connections to its root give up a cut
 *    path as psw's do (TCP_USER_TIMEOUT half a lease, keepalive), read
 *    off the aggregator's own sockets (pidfd_getfd);
 *  - a hung aggregator (SIGSTOPped; 2 s lease, 60 s pull_timeout_ms):
 *    held for less than a lease, or holding pulls for a stopped worker,
 *    it keeps its workers; hung for good, they reach the roots within 3
 *    leases (its liveness probe goes unanswered), not after
 *    pull_timeout_ms + 5 s, and finish with nothing acknowledged lost;
 *  - failover and return: kill -9 the aggregator mid-training under BSP:
 *    every worker goes to the roots directly (a sum lost with the
 *    aggregator must not hold the roots' BSP clocks); the aggregator is
 *    started again and every worker returns to it at its next epoch
 *    boundary (the new aggregator sums pushes); all finish, every push a
 *    worker saw acknowledged was applied, and the model learned.
 *
 * Skipped (visibly) without the dataset. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_codec.h"
#include "ps_config.h"
#include "ps_gpu.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "psw_client.h"

#define TH_DATA "/usr/share/datasets/fashion-mnist"
#define TH_WAIT_MS 90000
#define TH_N 3

typedef struct th_ctx {
  char dir[512], yaml[600], log[TH_N][640], agg_log[640];
  int gp[2], cp[2], agg_gp, agg_cp;
  pid_t shard[2], agg;
  char *json[TH_N];
  int lease_ms;  /* workers.lease_ms (0: 3000) */
  int beat_ms;   /* workers.heartbeat_ms with lease_ms in th_bare_delay (0: 200) */
  int nw;        /* workers (and h0's workers; 0: TH_N) */
  int sync;      /* durability sync */
  int pull_timeout_ms; /* training.pull_timeout_ms in th_start (0: the default) */
  int max_conns; /* the aggregator's limits.max_connections (0: the default) */
  ps_test_shim_env *shim; /* the roots run under the fsync shim (NULL: not) */
} th_ctx;

/* th_start writes the cluster file (aggregator h0 for 3 workers, or
 * X->nw; sums wait up to DELAY ms for all of them; durability sync when
 * X->sync), starts both roots and, when AGG,
 * the aggregator, and submits model "m" (logreg) with CONSISTENCY,
 * STALENESS and plain SGD. */
static void th_start(th_ctx *x, int agg, const char *consistency, const char *staleness,
                     int delay_ms, int epochs) {
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  x->agg_gp = ps_test_free_port();
  do x->agg_cp = ps_test_free_port();
  while (x->agg_cp == x->agg_gp);
  char extra[2048], pt[64] = "";
  if (x->pull_timeout_ms) snprintf(pt, sizeof pt, "  pull_timeout_ms: %d\n", x->pull_timeout_ms);
  snprintf(extra, sizeof extra,
           "aggregators:\n  - name: h0\n    grpc: 127.0.0.1:%d\n    channel: 127.0.0.1:%d\n"
           "    workers: %d\n    max_delay_ms: %d\n"
           "workers:\n  count: %d\n  device: cpu\n  retry_ms: 10000\n"
           "  heartbeat_ms: 200\n  lease_ms: %d\n"
           "training:\n  model: m\n  epochs: %d\n  batch_size: 64\n  seed: 1\n%s"
           "data:\n  format: idx\n"
           "  train_images: " TH_DATA "/train-images-idx3-ubyte.gz\n"
           "  train_labels: " TH_DATA "/train-labels-idx1-ubyte.gz\n"
           "  test_images: " TH_DATA "/t10k-images-idx3-ubyte.gz\n"
           "  test_labels: " TH_DATA "/t10k-labels-idx1-ubyte.gz\n"
           "  scale: 1/255\n  partitions: 6\n  limit: 3000\n",
           x->agg_gp, x->agg_cp, x->nw ? x->nw : TH_N, delay_ms, x->nw ? x->nw : TH_N,
           x->lease_ms ? x->lease_ms : 3000, epochs, pt);
  snprintf(x->yaml, sizeof x->yaml, "%s",
           x->sync ? ps_test_sync_yaml(x->dir, 2, extra, x->gp, x->cp)
                   : ps_test_cluster_yaml(x->dir, 2, extra, x->gp, x->cp));
  ps_test_start_shards_env(x->yaml, x->dir, 2, x->gp, x->cp, x->shard,
                           x->shim ? x->shim->env : NULL);
  if (agg) {
    snprintf(x->agg_log, sizeof x->agg_log, "%s/agg.log", x->dir);
    /* the aggregator's own limit, in a copy of the file that only it reads */
    char ayaml[sizeof x->yaml + 16];
    snprintf(ayaml, sizeof ayaml, "%s", x->yaml);
    if (x->max_conns) {
      snprintf(ayaml, sizeof ayaml, "%s/agg.yaml", x->dir);
      char *text = ps_test_read_file(x->yaml, NULL), tail[64];
      ck_assert_ptr_nonnull(text);
      snprintf(tail, sizeof tail, "limits:\n  max_connections: %d\n", x->max_conns);
      char *all = malloc(strlen(text) + strlen(tail) + 1);
      ck_assert_ptr_nonnull(all);
      strcat(strcpy(all, text), tail);
      ps_test_write_file(ayaml, all);
      free(all);
      free(text);
    }
    char *argv[] = {(char *)ps_test_bin("psd"), "--config", ayaml, "--aggregator", "h0", NULL};
    x->agg = ps_test_spawn(argv, x->agg_log, NULL);
    ck_assert_msg(ps_test_wait_port(x->agg_cp, 10000) == 0, "aggregator not up; see %s",
                  x->agg_log);
  }
  char pb[600], log[600];
  snprintf(pb, sizeof pb, "%s/m.pb", x->dir);
  snprintf(log, sizeof log, "%s/psctl.log", x->dir);
  char *lr[] = {(char *)ps_test_bin("psctl"), "model", "logreg", "--inputs", "784", "--classes",
                "10", "-o", pb, NULL};
  ck_assert_msg(ps_test_run(lr, log, 20000) == 0, "psctl model failed; see %s", log);
  char *submit[] = {(char *)ps_test_bin("psctl"), "submit", pb, "--name", "m", "--config",
                    x->yaml, "--optimizer", "sgd", "--lr", "0.05", "--consistency",
                    (char *)consistency, "--staleness", (char *)staleness, NULL};
  ck_assert_msg(ps_test_run(submit, log, 30000) == 0, "psctl submit failed; see %s", log);
}

/* th_spawn starts registering worker I, through h0 when AGG, worker 1
 * slowed by SLOW1 (NULL: not). */
static pid_t th_spawn(th_ctx *x, int i, int agg, const char *slow1) {
  char log[sizeof x->log[i]];
  snprintf(log, sizeof log, "%s/psw%d.log", x->dir, i);
  memcpy(x->log[i], log, sizeof log);
  char *argv[10] = {(char *)ps_test_bin("psw"), "--config", x->yaml, "--quiet"};
  int n = 4;
  if (agg) argv[n++] = "--aggregator", argv[n++] = "h0";
  if (i == 1 && slow1) argv[n++] = "--slowdown", argv[n++] = (char *)slow1;
  argv[n] = NULL;
  return ps_test_spawn(argv, x->log[i], NULL);
}

/* th_wait waits for the first N workers of W and keeps their JSON lines. */
static void th_wait(th_ctx *x, const pid_t *w, int n) {
  for (int i = 0; i < n; i++) {
    int st = ps_test_wait_pid(w[i], TH_WAIT_MS);
    ck_assert_msg(st >= 0, "worker %d did not finish within %d ms; see %s", i, TH_WAIT_MS,
                  x->log[i]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d failed; see %s", i,
                  x->log[i]);
    char *out = ps_test_read_file(x->log[i], NULL);
    x->json[i] = strdup(ps_test_last_line(out));
    free(out);
    ck_assert_msg(x->json[i][0] == '{', "worker %d's last line: %s", i, x->json[i]);
  }
}

/* th_train runs the 3 workers to the end. */
static void th_train(th_ctx *x, int agg, const char *slow1) {
  pid_t w[TH_N];
  for (int i = 0; i < TH_N; i++) w[i] = th_spawn(x, i, agg, slow1);
  th_wait(x, w, TH_N);
}

/* th_evaluate returns the test loss psw --evaluate reports for "m". */
static double th_evaluate(th_ctx *x) {
  char log[700];
  snprintf(log, sizeof log, "%s/eval.log", x->dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x->yaml, "--evaluate", NULL};
  ck_assert_msg(ps_test_run(argv, log, 30000) == 0, "evaluate failed; see %s", log);
  char *out = ps_test_read_file(log, NULL);
  double loss = ps_test_json_num(ps_test_last_line(out), "test_loss");
  free(out);
  return loss;
}

/* th_log_wait waits up to TIMEOUT_MS for NEEDLE in the file at PATH: 1
 * when it is there. */
static int th_log_wait(const char *path, const char *needle, int timeout_ms) {
  int64_t deadline = ps_test_now_ms() + timeout_ms;
  for (;;) {
    char *out = ps_test_read_file(path, NULL);
    int found = out && strstr(out, needle);
    free(out);
    if (found) return 1;
    if (ps_test_now_ms() >= deadline) return 0;
    usleep(20000);
  }
}

static void th_finish(th_ctx *x) {
  if (x->agg > 0) ps_test_stop(x->agg, SIGTERM, 10000);
  for (int s = 0; s < 2; s++)
    if (x->shard[s] > 0) ps_test_stop(x->shard[s], SIGTERM, 10000);
  for (int i = 0; i < TH_N; i++) free(x->json[i]);
  memset(x, 0, sizeof *x);
}

#define TH_NEED_DATA()                                          \
  do {                                                          \
    if (access(TH_DATA "/train-images-idx3-ubyte.gz", R_OK) != 0) \
      PS_SKIP("dataset-fashion-mnist is not installed (%s)", TH_DATA); \
  } while (0)

#define TH_ELEMS 3000 /* 3 chunks of 1024 */

static void th_spec(Ps__ModelSpec *spec, Ps__TensorSpec *t, Ps__TensorSpec **ts,
                    Ps__OptimizerSpec *opt, uint32_t *shape, const char *name);

/* th_submit submits model NAME through RPC: one tensor of TH_ELEMS, plain
 * SGD, bsp, push codec CODEC (NULL: fp32), seed 7 (twins start equal). */
static void th_submit(ps_rpc *rpc, const char *name, const char *codec) {
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *ts;
  Ps__OptimizerSpec opt;
  uint32_t shape;
  th_spec(&spec, &t, &ts, &opt, &shape, name);
  if (codec) spec.codec = (char *)codec;
  ps_test_submit(rpc, &spec, 0, 10000);
}

/* th_submit_asp: th_submit's model NAME under asp. */
static void th_submit_asp(ps_rpc *rpc, const char *name) {
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *ts;
  Ps__OptimizerSpec opt;
  uint32_t shape;
  th_spec(&spec, &t, &ts, &opt, &shape, name);
  spec.consistency = "asp";
  ps_test_submit(rpc, &spec, 0, 10000);
}

static void th_spec(Ps__ModelSpec *spec, Ps__TensorSpec *t, Ps__TensorSpec **ts,
                    Ps__OptimizerSpec *opt, uint32_t *shape, const char *name) {
  ps__tensor_spec__init(t);
  t->name = "w";
  *shape = TH_ELEMS;
  t->n_shape = 1;
  t->shape = shape;
  t->init = "uniform";
  t->scale = 0.5f;
  *ts = t;
  ps__optimizer_spec__init(opt);
  opt->kind = "sgd";
  opt->lr = 0.1f;
  ps__model_spec__init(spec);
  spec->name = (char *)name;
  spec->seed = 7;
  spec->n_tensors = 1;
  spec->tensors = ts;
  spec->optimizer = opt;
  spec->consistency = "bsp";
}

/* th_bare_delay starts one root shard and aggregator h0 (3 workers, sums
 * wait up to DELAY_MS for all of them; X->lease_ms: leases that long,
 * heartbeats of X->beat_ms (0: 200 ms), else the defaults) and opens
 * *RPC to the root. */
static void th_bare_delay(th_ctx *x, ps_rpc **rpc, int delay_ms) {
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  x->agg_gp = ps_test_free_port();
  do x->agg_cp = ps_test_free_port();
  while (x->agg_cp == x->agg_gp);
  char extra[512], lease[64] = "";
  if (x->lease_ms)
    snprintf(lease, sizeof lease, "  heartbeat_ms: %d\n  lease_ms: %d\n",
             x->beat_ms ? x->beat_ms : 200, x->lease_ms);
  snprintf(extra, sizeof extra,
           "aggregators:\n  - {name: h0, grpc: \"127.0.0.1:%d\", channel: \"127.0.0.1:%d\", "
           "workers: 3, max_delay_ms: %d}\nworkers:\n  count: 3\n%s", x->agg_gp, x->agg_cp,
           delay_ms, lease);
  snprintf(x->yaml, sizeof x->yaml, "%s", ps_test_cluster_yaml(x->dir, 1, extra, x->gp, x->cp));
  ps_test_start_shards(x->yaml, x->dir, 1, x->gp, x->cp, x->shard);
  snprintf(x->agg_log, sizeof x->agg_log, "%s/agg.log", x->dir);
  char *argv[] = {(char *)ps_test_bin("psd"), "--config", x->yaml, "--aggregator", "h0", NULL};
  x->agg = ps_test_spawn(argv, x->agg_log, NULL);
  ck_assert_int_eq(ps_test_wait_port(x->agg_cp, 10000), 0);
  ps_errbuf eb = {""};
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->gp[0]);
  ck_assert_int_eq(ps_test_rpc_open(rpc, addr, &eb), 0);
}

/* th_bare: th_bare_delay with sums waiting up to 10 s. */
static void th_bare(th_ctx *x, ps_rpc **rpc) { th_bare_delay(x, rpc, 10000); }

/* th_chan connects to PORT on 127.0.0.1. */
static ps_chan_client *th_chan(int port) {
  char addr[64];
  ps_errbuf eb = {""};
  ps_chan_client *c;
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  ck_assert_msg(ps_test_chan_connect(&c, addr, "test", 10000, &eb) == 0, "%s", eb.msg);
  return c;
}

START_TEST(test_hier_sum_is_one_update) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare(&x, &rpc);
  th_submit(rpc, "flat", NULL);
  th_submit(rpc, "hier", NULL);
  ps_rpc_close(rpc);

  static float g[3][TH_ELEMS], p0[TH_ELEMS], pf[TH_ELEMS], ph[TH_ELEMS], pr[TH_ELEMS];
  ps_test_rng_init();
  for (int w = 0; w < 3; w++)
    for (int i = 0; i < TH_ELEMS; i++) g[w][i] = ps_test_rnd();
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *root = th_chan(x.cp[0]), *agg[3];
  uint64_t v0, v;
  ck_assert_int_eq(ps_test_pull(root, "flat", ids, 3, p0, TH_ELEMS, 0, 0, &v0, &eb), 0);
  for (uint32_t w = 0; w < 3; w++)
    ck_assert_msg(ps_test_push(root, "flat", ids, 3, g[w], TH_ELEMS, w, 0, v0, &v, &eb) == 0,
                  "%s", eb.msg);
  ck_assert_int_eq(ps_test_pull(root, "flat", ids, 3, pf, TH_ELEMS, 0, 1, &v, &eb), 0);
  ck_assert_uint_eq(v, v0 + 3);
  /* the twin through the aggregator: 3 workers' pushes of clock 0 in flight at once */
  for (uint32_t w = 0; w < 3; w++) {
    agg[w] = th_chan(x.agg_cp);
    ps_req r = {.model = "hier", .ids = ids, .nids = 3, .worker = w, .clock = 0, .version = v0};
    struct iovec seg = {g[w], sizeof g[w]};
    ck_assert_msg(ps_chan_send_pushv(agg[w], &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  }
  for (int w = 0; w < 3; w++) {
    ck_assert_msg(ps_chan_recv(agg[w], NULL, &v, &eb) == 0, "worker %d: %s", w, eb.msg);
    ck_assert_uint_eq(v, v0 + 1); /* one update */
  }
  ck_assert_int_eq(ps_test_pull(agg[1], "hier", ids, 3, ph, TH_ELEMS, 1, 1, &v, &eb), 0);
  ck_assert_int_eq(ps_test_pull(root, "hier", ids, 3, pr, TH_ELEMS, 0, 1, &v, &eb), 0);
  for (int i = 0; i < TH_ELEMS; i++) {
    float want = p0[i] - 0.1f * (g[0][i] + g[1][i] + g[2][i]);
    float tol = 1e-5f * (1 + (want < 0 ? -want : want));
    ck_assert_msg(pf[i] - want <= tol && want - pf[i] <= tol, "flat [%d] %g, want %g", i, pf[i], want);
    ck_assert_msg(ph[i] - pf[i] <= tol && pf[i] - ph[i] <= tol, "[%d] through the aggregator %g, "
                  "flat %g (seed %llu)", i, ph[i], pf[i], (unsigned long long)ps_test_seed);
    ck_assert_msg(pr[i] == ph[i], "[%d]: the aggregator's copy %g, the root's %g", i, ph[i], pr[i]);
  }
  Ps__StatusReply *st = ps_test_status(x.gp[0]);
  ck_assert_uint_eq(st->pushes, 4);
  ck_assert_uint_eq(st->sum_pushes, 1);
  ck_assert_uint_eq(st->sum_grads, 3);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  /* a push of chunks the model does not have is refused with the reason */
  const uint32_t bad[1] = {7};
  ck_assert_int_eq(ps_test_push(agg[0], "hier", bad, 1, g[0], 1024, 0, 1, v, &v, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "no chunk 7"), "%s", eb.msg);
  for (int w = 0; w < 3; w++) ps_chan_close(agg[w]);
  ps_chan_close(root);
  th_finish(&x);
}
END_TEST

/* th_root_links checks each of process PID's sockets connected to
 * 127.0.0.1:PORT (copied here with pidfd_getfd) for TCP_USER_TIMEOUT
 * DEAD_MS and keepalive; how many it checked (-errno: not permitted here). */
static int th_root_links(pid_t pid, int port, unsigned dead_ms) {
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0), n = 0;
  if (pfd < 0) return -errno;
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(dir);
  ck_assert_msg(d != NULL, "%s: %s", dir, strerror(errno));
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    int fd = (int)syscall(SYS_pidfd_getfd, pfd, atoi(e->d_name), 0);
    if (fd < 0 && (errno == EPERM || errno == ENOSYS)) {
      n = -errno;
      break;
    }
    if (fd < 0) continue; /* closed meanwhile */
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0 && peer.sin_family == AF_INET &&
        ntohs(peer.sin_port) == port) {
      unsigned ut = 0;
      int ka = 0;
      len = sizeof ut;
      ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, &len), 0);
      len = sizeof ka;
      ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &ka, &len), 0);
      ck_assert_msg(ut == dead_ms && ka == 1, "the aggregator's link to the root (its fd %s): "
                    "TCP_USER_TIMEOUT %u ms, keepalive %d; want %u ms, on", e->d_name, ut, ka,
                    dead_ms);
      n++;
    }
    close(fd);
  }
  closedir(d);
  close(pfd);
  return n;
}

/* The aggregator's links to its root (the push link, a pull link) give a
 * cut path up after half a lease (ps_config_dead_ms: 3 s of 6), as psw's
 * connections do, and the aggregator then fails what they carried and
 * connects again (psd_agg invariant 4).  Before, they had no
 * TCP_USER_TIMEOUT nor keepalive: a cut aggregator-to-root path waited
 * out TCP's retransmission backoff, many seconds past the heal. */
START_TEST(test_hier_root_link_dead_ms) {
  th_ctx x = {.lease_ms = 6000};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare_delay(&x, &rpc, 50);
  th_submit_asp(rpc, "m");
  ps_rpc_close(rpc);
  static float g[TH_ELEMS], p[TH_ELEMS];
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *agg = th_chan(x.agg_cp);
  uint64_t v;
  ck_assert_msg(ps_test_pull(agg, "m", ids, 3, p, TH_ELEMS, 0, 0, &v, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(ps_test_push(agg, "m", ids, 3, g, TH_ELEMS, 0, 0, v, &v, &eb) == 0, "%s", eb.msg);
  int n = th_root_links(x.agg, x.cp[0], 3000);
  ps_chan_close(agg);
  th_finish(&x);
  if (n < 0) PS_SKIP("pidfd_getfd is not permitted here: %s", strerror(-n));
  ck_assert_msg(n >= 2, "%d of the aggregator's sockets reach the root's channel, want its push "
                "and pull links", n);
}
END_TEST

/* A model's clip_norm bounds each worker's gradient; a sum of N workers'
 * may be N times as long: the root takes an aggregator's sum within N x
 * the clip (it refused the sum of three pushes each within the clip). */
START_TEST(test_hier_clip_sum) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare(&x, &rpc);
  static float h[TH_ELEMS];
  ps_test_rng_init();
  double norm = 0;
  for (int i = 0; i < TH_ELEMS; i++) h[i] = ps_test_rnd(), norm += (double)h[i] * h[i];
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *ts;
  Ps__OptimizerSpec opt;
  uint32_t shape;
  th_spec(&spec, &t, &ts, &opt, &shape, "clip");
  spec.clip_norm = (float)sqrt(norm); /* each push's own norm: within it */
  ps_test_submit(rpc, &spec, 0, 10000);
  ps_rpc_close(rpc);
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *agg[3];
  for (uint32_t w = 0; w < 3; w++) {
    agg[w] = th_chan(x.agg_cp);
    ps_req r = {.model = "clip", .ids = ids, .nids = 3, .worker = w, .clock = 0};
    struct iovec seg = {h, sizeof h};
    ck_assert_msg(ps_chan_send_pushv(agg[w], &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  }
  uint64_t v;
  for (int w = 0; w < 3; w++) {
    ck_assert_msg(ps_chan_recv(agg[w], NULL, &v, &eb) == 0, "worker %d: %s", w, eb.msg);
    ck_assert_uint_eq(v, 1); /* one update: the sum, taken */
    ps_chan_close(agg[w]);
  }
  /* one worker's push over the clip is still refused, at the root too */
  for (int i = 0; i < TH_ELEMS; i++) h[i] *= 2;
  ps_chan_client *root = th_chan(x.cp[0]);
  ck_assert_int_eq(ps_test_push(root, "clip", ids, 3, h, TH_ELEMS, 0, 1, v, &v, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "over its clip_norm"), "%s", eb.msg);
  ps_chan_close(root);
  th_finish(&x);
}
END_TEST

/* th_topk_push sends worker W's push of clock CLOCK (version seen V) on
 * C: chunk 0 of model "ctk", topk, its K kept values all VAL on the
 * elements FIRST..FIRST+K-1. */
static void th_topk_push(ps_chan_client *c, uint32_t w, uint64_t clock, uint64_t v,
                         uint32_t first, uint32_t k, float val) {
  static float g[1024];
  static uint8_t enc[1024 * 8];
  static const uint32_t id = 0;
  memset(g, 0, sizeof g);
  for (uint32_t i = 0; i < k; i++) g[first + i] = val;
  ps_codec_encode(PS_CODEC_TOPK, g, 1024, 0, enc);
  ps_req r = {.model = "ctk", .ids = &id, .nids = 1, .worker = w, .clock = clock, .version = v,
              .codec = PS_CODEC_TOPK};
  struct iovec seg = {enc, ps_codec_size(PS_CODEC_TOPK, 1024, 0)};
  ps_errbuf eb = {""};
  ck_assert_msg(ps_chan_send_pushv(c, &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
}

/* The aggregator re-encodes a sum of N with its residual (error feedback),
 * so what a topk encoding left out comes back with a later sum: the
 * encoding may exceed N x clip_norm although every push is within the
 * clip, and is scaled down to that bound as a worker's is (the root
 * refused it, over its clip_norm).  Chunk 0 keeps its k largest values;
 * clock 0: each of 3 workers puts its k on a set of k elements of its
 * own, the sum sends the first set (ties: the lowest indices) and keeps
 * the other two; clock 1: all 3 push the second set, which then holds 4
 * pushes' worth: 4 x 0.499 against 3 x 0.5. */
START_TEST(test_hier_clip_topk) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare(&x, &rpc);
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *ts;
  Ps__OptimizerSpec opt;
  uint32_t shape;
  th_spec(&spec, &t, &ts, &opt, &shape, "ctk");
  spec.codec = "topk"; /* its default fraction: k of chunk 0's 1024 */
  spec.clip_norm = 0.5f;
  ps_test_submit(rpc, &spec, 0, 10000);
  ps_rpc_close(rpc);
  const uint32_t k = ps_codec_topk_k(1024, 0);
  const float val = 0.499f / sqrtf((float)k); /* a push's norm: 0.499 */
  ps_chan_client *agg[3];
  for (uint32_t w = 0; w < 3; w++) agg[w] = th_chan(x.agg_cp);
  uint64_t v = 0;
  for (uint64_t clock = 0; clock < 2; clock++) {
    for (uint32_t w = 0; w < 3; w++)
      th_topk_push(agg[w], w, clock, v, clock ? k : w * k, k, val);
    uint64_t got[3];
    for (int w = 0; w < 3; w++)
      ck_assert_msg(ps_chan_recv(agg[w], NULL, &got[w], &eb) == 0, "clock %llu, worker %d: %s",
                    (unsigned long long)clock, w, eb.msg);
    v = got[0];
    ck_assert_uint_eq(v, clock + 1); /* one update a clock: the sum, taken */
  }
  Ps__StatusReply *st = ps_test_status(x.gp[0]);
  ck_assert_uint_eq(st->sum_pushes, 2);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  for (int w = 0; w < 3; w++) ps_chan_close(agg[w]);
  th_finish(&x);
}
END_TEST

/* The aggregator's copy across clocks that start over (psd_agg.h
 * invariants 1 and 3), as when a second job's workers start at clock 0
 * through an aggregator that served the first: the copy fetched at clock
 * 5 must not answer a pull of clock 1 after a sum of clock 0 changed the
 * chunks (the workers of a second job trained on the first's last
 * parameters and diverged); under asp, pushes of three workers at three
 * clocks make one sum at once, not one each after max_delay_ms; a fourth
 * worker, more than the aggregator expects, is warned about. */
START_TEST(test_hier_clocks_start_over) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare(&x, &rpc); /* sums wait up to 10 s for the 3 workers */
  th_submit(rpc, "b", NULL);
  th_submit_asp(rpc, "a");
  ps_rpc_close(rpc);
  static float g[TH_ELEMS], p0[TH_ELEMS], p1[TH_ELEMS];
  ps_test_rng_init();
  for (int i = 0; i < TH_ELEMS; i++) g[i] = ps_test_rnd();
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *agg[3];
  uint64_t v0, v;
  for (uint32_t w = 0; w < 3; w++) agg[w] = th_chan(x.agg_cp);
  for (uint32_t w = 0; w < 3; w++) /* the copy: fetched at clock 5 */
    ck_assert_msg(ps_test_pull(agg[w], "b", ids, 3, p0, TH_ELEMS, w, 5, &v0, &eb) == 0, "%s",
                  eb.msg);
  for (uint32_t w = 0; w < 3; w++) { /* clock 0 again: one sum */
    ps_req r = {.model = "b", .ids = ids, .nids = 3, .worker = w, .clock = 0, .version = v0};
    struct iovec seg = {g, sizeof g};
    ck_assert_msg(ps_chan_send_pushv(agg[w], &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  }
  for (int w = 0; w < 3; w++)
    ck_assert_msg(ps_chan_recv(agg[w], NULL, &v, &eb) == 0, "worker %d: %s", w, eb.msg);
  ck_assert_int_eq(ps_test_pull(agg[0], "b", ids, 3, p1, TH_ELEMS, 0, 1, &v, &eb), 0);
  ck_assert_uint_eq(v, v0 + 1);
  for (int i = 0; i < TH_ELEMS; i++) {
    float want = p0[i] - 0.1f * 3 * g[i], tol = 1e-5f * (1 + (want < 0 ? -want : want));
    ck_assert_msg(p1[i] - want <= tol && want - p1[i] <= tol, "[%d] %g, want %g (the copy "
                  "from before the sum: %g)", i, p1[i], want, p0[i]);
  }
  /* asp: clocks 3, 4 and 5, one sum answered long before 10 s */
  ck_assert_int_eq(ps_test_pull(agg[0], "a", ids, 3, p0, TH_ELEMS, 0, 3, &v0, &eb), 0);
  Ps__StatusReply *st = ps_test_status(x.gp[0]);
  uint64_t sums0 = st->sum_pushes;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  int64_t t0 = ps_test_now_ms();
  for (uint32_t w = 0; w < 3; w++) {
    ps_req r = {.model = "a", .ids = ids, .nids = 3, .worker = w, .clock = 3 + w, .version = v0};
    struct iovec seg = {g, sizeof g};
    ck_assert_msg(ps_chan_send_pushv(agg[w], &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  }
  for (int w = 0; w < 3; w++)
    ck_assert_msg(ps_chan_recv(agg[w], NULL, &v, &eb) == 0, "worker %d: %s", w, eb.msg);
  ck_assert_msg(ps_test_now_ms() - t0 < 5000, "the asp pushes waited %lld ms",
                (long long)(ps_test_now_ms() - t0));
  st = ps_test_status(x.gp[0]);
  ck_assert_uint_eq(st->sum_pushes, sums0 + 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  /* a fourth local worker: more than the aggregator's 'workers', said */
  ps_chan_client *fourth = th_chan(x.agg_cp);
  ps_req r = {.model = "a", .ids = ids, .nids = 3, .worker = 3, .clock = 6, .version = v0};
  struct iovec seg = {g, sizeof g};
  ck_assert_msg(ps_chan_send_pushv(fourth, &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(th_log_wait(x.agg_log, "4 local workers use it, more than its 'workers' (3)",
                            10000), "no warning in %s", x.agg_log);
  ps_chan_close(fourth);
  for (int w = 0; w < 3; w++) ps_chan_close(agg[w]);
  th_finish(&x);
}
END_TEST

/* A local worker killed (its connection closed) and another started in
 * its place, as README's failover has it: the dead one counts as live
 * until it leaves (3 heartbeats after its close), yet it is no longer
 * connected, so the aggregator must not warn that 4 workers use it,
 * more than its 'workers' (3): that told the operator to raise a
 * setting that was right. */
START_TEST(test_hier_replaced_worker_not_over) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare_delay(&x, &rpc, 50);
  th_submit_asp(rpc, "a");
  ps_rpc_close(rpc);
  static float g[TH_ELEMS], p[TH_ELEMS];
  ps_test_rng_init();
  for (int i = 0; i < TH_ELEMS; i++) g[i] = 0.01f * ps_test_rnd();
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *agg[3];
  uint64_t v;
  for (uint32_t w = 0; w < 3; w++) {
    agg[w] = th_chan(x.agg_cp);
    ck_assert_msg(ps_test_pull(agg[w], "a", ids, 3, p, TH_ELEMS, w, 0, &v, &eb) == 0,
                  "worker %u: %s", w, eb.msg);
    ck_assert_msg(ps_test_push(agg[w], "a", ids, 3, g, TH_ELEMS, w, 0, v, &v, &eb) == 0,
                  "worker %u: %s", w, eb.msg);
  }
  ps_chan_close(agg[2]); /* kill -9 */
  int64_t t0 = ps_test_now_ms();
  agg[2] = th_chan(x.agg_cp); /* the worker started in its place, rank 3 */
  ck_assert_msg(ps_test_pull(agg[2], "a", ids, 3, p, TH_ELEMS, 3, 1, &v, &eb) == 0, "%s",
                eb.msg);
  for (uint32_t w = 0; w < 3; w++)
    ck_assert_msg(ps_test_push(agg[w], "a", ids, 3, g, TH_ELEMS, w == 2 ? 3 : w, 1, v, &v,
                               &eb) == 0, "worker %u: %s", w, eb.msg);
  /* worker 2 leaves 3 heartbeats (3 s) after its close: before that it
   * still counts as live, which is what this test is about */
  ck_assert_msg(ps_test_now_ms() - t0 < 2500, "too slow (%lld ms): worker 2 may have left",
                (long long)(ps_test_now_ms() - t0));
  char *log = ps_test_read_file(x.agg_log, NULL);
  ck_assert_msg(log && !strstr(log, "local workers use it"), "a false warning in %s:\n%s",
                x.agg_log, log ? log : "");
  free(log);
  for (int w = 0; w < 3; w++) ps_chan_close(agg[w]);
  th_finish(&x);
}
END_TEST

/* One psw_client round in a thread (th_half_round), bounded by a stop. */
typedef struct th_round {
  psw_client *c;
  uint64_t push_clock, pull_clock;
  volatile sig_atomic_t *stop;
  int rc;
  ps_errbuf eb;
} th_round;

static void *th_round_main(void *arg) {
  th_round *r = arg;
  r->rc = psw_client_push_pull(r->c, 0, r->push_clock, 0, r->pull_clock, &r->eb);
  return NULL;
}

/* th_round_run runs R's round and, MS_BEFORE ms into it, calls FN(X)
 * (NULL: nothing); it stops the round after 15 s: its return code. */
static int th_round_run(th_round *r, void (*fn)(th_ctx *), th_ctx *x, int ms_before) {
  pthread_t th;
  *r->stop = 0;
  ck_assert_int_eq(pthread_create(&th, NULL, th_round_main, r), 0);
  usleep((useconds_t)ms_before * 1000);
  if (fn) fn(x);
  int64_t t0 = ps_test_now_ms();
  while (ps_test_now_ms() - t0 < 15000 && pthread_tryjoin_np(th, NULL) != 0) usleep(20000);
  *r->stop = 1;
  pthread_join(th, NULL);
  return r->rc;
}

/* Worker 0's client of "m" through h0 (th_client), its config and
 * backend, and the stop that bounds its rounds. */
typedef struct th_worker {
  ps_config cfg;
  ps_gpu_backend *be;
  psw_client *c;
  volatile sig_atomic_t stop;
} th_worker;

/* th_client opens W on X's cluster: one buffer, DEFER acks, I/O timeout
 * IO_MS; it pulls clock 0 and returns W's first round (push 0, pull 1). */
static th_round th_client(th_ctx *x, th_worker *w, int io_ms, int defer) {
  ps_errbuf eb = {""};
  ck_assert_msg(ps_config_load(&w->cfg, x->yaml, &eb) == 0, "%s", eb.msg);
  free(w->cfg.workers.aggregator);
  w->cfg.workers.aggregator = strdup("h0");
  ck_assert_msg(ps_gpu_cpu_open(1, &w->be, &eb) == 0, "%s", eb.msg);
  w->stop = 0;
  psw_client_conf cc = {.cfg = &w->cfg, .model = "m", .worker = 0, .be = w->be, .nbufs = 1,
                        .io_timeout_ms = io_ms, .stop = &w->stop, .defer_acks = defer};
  ck_assert_msg(psw_client_open(&w->c, &cc, &eb) == 0, "psw_client_open: %s", eb.msg);
  ck_assert_msg(psw_client_pull_all(w->c, 0, 0, &eb) == 0, "%s", eb.msg);
  return (th_round){.c = w->c, .stop = &w->stop, .push_clock = 0, .pull_clock = 1};
}

/* th_client_close closes what th_client opened. */
static void th_client_close(th_worker *w) {
  psw_client_close(w->c);
  ps_gpu_close(w->be);
  ps_config_release(&w->cfg);
}

/* th_restart_root1 kills root 1 and starts it again once the
 * aggregator's hold of a push (2 s) is over: the sum fails there. */
static void th_restart_root1(th_ctx *x) {
  ck_assert(WIFSIGNALED(ps_test_stop(x->shard[1], SIGKILL, 10000)));
  usleep(2500 * 1000);
  char log[640];
  snprintf(log, sizeof log, "%s/psd1-again.log", x->dir);
  x->shard[1] = ps_test_psd(x->yaml, 1, log, NULL);
  ck_assert_msg(ps_test_wait_port(x->cp[1], 15000) == 0, "root 1 not back; see %s", log);
}

static void th_kill_agg(th_ctx *x) {
  ck_assert_int_eq(ps_test_stop(x->agg, SIGKILL, 5000) & 0x7f, SIGKILL);
  x->agg = 0;
}

/* A worker half on its aggregator: a failure through the aggregator (a
 * root stopped behind it) sends the failed connection to the roots, while
 * its connection to the other root stays on the aggregator until the
 * epoch boundary.  The aggregator then dies holding this worker's push to
 * that root (it waits for a second local worker): the push is lost, so
 * the root holds the worker at the push's clock, and under BSP its pull
 * of the next clock waited for itself for ever ("slowest live worker 0
 * is at clock 2"): a kill -9 of a root, then of the aggregator, stopped a
 * whole job.  The pull after such a loss asks for the push's clock. */
START_TEST(test_hier_half_failover_lost_push) {
  TH_NEED_DATA();
  th_ctx x = {0};
  x.nw = 2;            /* the aggregator waits for 2 workers ... */
  x.lease_ms = 120000; /* (no heartbeats here) */
  x.sync = 1;          /* root 1 is killed */
  th_start(&x, 1, "bsp", "0", 2000, 1); /* ... up to 2 s: holds the one worker's push */
  static th_worker w;
  th_round r = th_client(&x, &w, 10000, 0);
  /* step 0 through the aggregator */
  ck_assert_msg(th_round_run(&r, NULL, &x, 0) == 0, "step 0: %s", r.eb.msg);
  /* root 1 dies while the aggregator holds step 1's push: root 1's
   * connection goes to the roots, root 0's stays on the aggregator */
  r.push_clock = 1, r.pull_clock = 2;
  ck_assert_msg(th_round_run(&r, th_restart_root1, &x, 500) == 0, "step 1: %s", r.eb.msg);
  /* the aggregator dies holding step 2's push to root 0 */
  r.push_clock = 2, r.pull_clock = 3;
  int rc = th_round_run(&r, th_kill_agg, &x, 700);
  ck_assert_msg(rc == 0, "step 2, the aggregator killed: %d %s", rc, r.eb.msg);
  r.push_clock = 3, r.pull_clock = 4; /* and on, on the roots */
  ck_assert_msg(th_round_run(&r, NULL, &x, 0) == 0, "step 3: %s", r.eb.msg);
  th_client_close(&w);
  th_finish(&x);
}
END_TEST

/* A push a root refuses as DEGRADED (durability sync, its redo log's
 * syncs failing) raised no clock there; behind the aggregator the worker
 * gets the root's refusal of the sum.  Under bsp the pull behind it then
 * waits at the root for the worker itself: a direct worker says that it
 * went on (psw_client invariant 13), but one behind the aggregator never
 * did ("a push sent to an aggregator may still be forwarded"), though the
 * refused sum is over, and its pull stayed parked until pull_timeout_ms,
 * then again, for ever ("slowest live worker 0 is at clock 2"), a whole
 * job stopped by one root's failing disk. */
START_TEST(test_hier_degraded_moved_on) {
  TH_NEED_DATA();
  th_ctx x = {0};
  x.nw = 1;            /* sums go out at once */
  x.lease_ms = 120000; /* (no heartbeats here) */
  x.sync = 1;
  static ps_test_shim_env shim;
  char gate[600], fail[610];
  snprintf(gate, sizeof gate, "%s/gate", ps_test_tmpdir());
  snprintf(fail, sizeof fail, "%s.fail", gate);
  ps_test_shim_env_init(&shim, NULL, gate);
  x.shim = &shim;
  th_start(&x, 1, "bsp", "0", 2000, 1);
  static th_worker w;
  /* as psw's: deferred acks, an I/O timeout past the roots' pull_timeout_ms */
  th_round r = th_client(&x, &w, 35000, 1);
  ck_assert_msg(th_round_run(&r, NULL, &x, 0) == 0, "step 0: %s", r.eb.msg);
  FILE *f = fopen(fail, "w"); /* the roots' log syncs fail from now on */
  ck_assert(f != NULL && fclose(f) == 0);
  /* the first failed sync: applied in memory, answered DEGRADED; the
   * roots are DEGRADED from then on and refuse pushes */
  for (uint64_t k = 1; k < 4; k++) {
    r.push_clock = k, r.pull_clock = k + 1;
    int rc = th_round_run(&r, NULL, &x, 0);
    ck_assert_msg(rc == 0, "step %d, pushes refused: %d %s", (int)k, rc, r.eb.msg);
  }
  ck_assert_msg(psw_client_pushes_lost(w.c) > 0, "no push refused");
  unlink(fail);
  th_client_close(&w);
  th_finish(&x);
}
END_TEST

/* Deferred acks (psw_client invariant 8) through the aggregator: it
 * answers a push before it reads the pull behind it, so no answer is left
 * pending even while it holds the push (a sum waiting up to 2 s for a
 * second worker), and its death loses the round's own push only, the
 * one the failover pull (at that push's clock) covers: an older one lost
 * with it would be forgotten (nothing but the round's push clock is
 * remembered for an aggregator's connection). */
START_TEST(test_hier_deferred_acks_none_pending) {
  TH_NEED_DATA();
  th_ctx x = {0};
  x.nw = 2;            /* the aggregator waits for 2 workers ... */
  x.lease_ms = 120000; /* (no heartbeats here) */
  x.sync = 1;
  th_start(&x, 1, "ssp", "2", 2000, 1); /* ... up to 2 s: holds the one worker's push */
  static th_worker w;
  th_round r = th_client(&x, &w, 10000, 1);
  for (uint64_t k = 0; k < 2; k++) { /* the pull is served behind the push held */
    r.push_clock = k, r.pull_clock = k + 1;
    int64_t t0 = ps_test_now_ms();
    ck_assert_msg(th_round_run(&r, NULL, &x, 0) == 0, "step %d: %s", (int)k, r.eb.msg);
    ck_assert_msg(ps_test_now_ms() - t0 >= 1500, "step %d's push not held", (int)k);
    ck_assert_uint_eq(psw_client_acks_pending(w.c), 0);
  }
  r.push_clock = 2, r.pull_clock = 3; /* the aggregator dies holding step 2's push */
  int rc = th_round_run(&r, th_kill_agg, &x, 700);
  ck_assert_msg(rc == 0, "step 2, the aggregator killed: %d %s", rc, r.eb.msg);
  ck_assert_uint_eq(psw_client_pushes_unknown(w.c), 2); /* step 2's, to each root */
  r.push_clock = 3, r.pull_clock = 4; /* and on, on the roots */
  ck_assert_msg(th_round_run(&r, NULL, &x, 0) == 0, "step 3: %s", r.eb.msg);
  ck_assert_msg(psw_client_settle(w.c, &r.eb) == 0, "%s", r.eb.msg);
  ck_assert_uint_eq(psw_client_pushes_unknown(w.c), 2);
  th_client_close(&w);
  th_finish(&x);
}
END_TEST

/* th_parked waits up to 10 s until root PORT holds N parked pulls of its
 * first model; returns how many it holds then. */
static uint64_t th_parked(int port, uint64_t n) {
  int64_t deadline = ps_test_now_ms() + 10000;
  uint64_t parked = 0;
  for (;;) {
    Ps__StatusReply *st = ps_test_status(port);
    parked = st->n_models ? st->models[0]->parked : 0;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    if (parked >= n || ps_test_now_ms() >= deadline) return parked;
    usleep(20000);
  }
}

/* Clocks through the aggregator (psd_agg.h invariant 6), BSP: worker 1's
 * first pull is one the aggregator's copy could serve (worker 0's fetch
 * at the same clock), but the root must learn worker 1's clock first: a
 * fetch of its own enters it.  So when worker 0's push of clock 0 reaches
 * the root alone (the sum's delay ran out), a third worker's pull at
 * clock 1 straight on the root waits for worker 1 (BSP gap 0), and is
 * served once worker 1's push arrives.  (Served from the copy, worker 1
 * would be unknown to the root, which would then let the third worker
 * run a clock ahead of it.) */
START_TEST(test_hier_clock_entered) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare_delay(&x, &rpc, 200);
  th_submit(rpc, "b", NULL);
  ps_rpc_close(rpc);
  static float p[TH_ELEMS], g[TH_ELEMS], p2[TH_ELEMS];
  for (int i = 0; i < TH_ELEMS; i++) g[i] = 0.01f * (float)(i % 7);
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *a0 = th_chan(x.agg_cp), *a1 = th_chan(x.agg_cp), *root = th_chan(x.cp[0]);
  uint64_t v, v1;
  ck_assert_msg(ps_test_pull(a0, "b", ids, 3, p, TH_ELEMS, 0, 0, &v, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(ps_test_pull(a1, "b", ids, 3, p, TH_ELEMS, 1, 0, &v, &eb) == 0, "%s", eb.msg);
  Ps__StatusReply *ag = ps_test_status(x.agg_gp);
  ck_assert_uint_eq(ag->agg_fetches, 2);
  ck_assert_uint_eq(ag->agg_enters, 1); /* worker 1's: the copy was fresh for clock 0 */
  protobuf_c_message_free_unpacked(&ag->base, NULL);
  ck_assert_msg(ps_test_push(a0, "b", ids, 3, g, TH_ELEMS, 0, 0, v, &v1, &eb) == 0, "%s", eb.msg);
  /* worker 2 on the root at clock 1: worker 1 is still at 0 there */
  ps_req r = {.model = "b", .ids = ids, .nids = 3, .worker = 2, .clock = 1};
  struct iovec seg = {p2, sizeof p2};
  ck_assert_msg(ps_chan_send_pullv(root, &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(th_parked(x.gp[0], 1) == 1, "worker 2's pull at clock 1 was not held for "
                "worker 1 (clock 0 behind the aggregator)");
  ck_assert_msg(ps_test_push(a1, "b", ids, 3, g, TH_ELEMS, 1, 0, v, &v1, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(ps_chan_recv(root, NULL, &v1, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(v1, v + 2); /* both workers' pushes applied before it was served */
  Ps__StatusReply *st = ps_test_status(x.gp[0]);
  ck_assert_uint_eq(st->models[0]->max_gap, 0);
  ck_assert_uint_eq(st->models[0]->pulls_parked, 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ps_chan_close(a0);
  ps_chan_close(a1);
  ps_chan_close(root);
  th_finish(&x);
}
END_TEST

/* A forwarded sum that fails (psd_agg.h invariant 5a): the root never got
 * the push, so under BSP it holds the worker's pulls of the next clock
 * for that push until pull_timeout_ms (30 s), and the worker, whose
 * connection is read on only once its push is answered, sends that pull
 * after the failure and fails over only once it is answered ("a cut
 * aggregator-to-root path stalled the job for 40 s after the heal"); it
 * then asked again, for ever, reading the timeout as a slow worker.  Here
 * the root is SIGSTOPped while the aggregator holds worker 0's push: the
 * push link's connect gets no hello (2 s) and the push fails unsent.  A
 * pull of clock 1 worker 0 parked on the root before, on another
 * connection, and the one it sends behind the push are both answered at
 * once with PS_EUNAVAIL (psw's failover). */
START_TEST(test_hier_push_failed_pull_parked) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare_delay(&x, &rpc, 2500); /* a lone worker's push is held 2.5 s */
  th_submit(rpc, "b", NULL);
  ps_rpc_close(rpc);
  static float p[TH_ELEMS], g[TH_ELEMS], p2[TH_ELEMS];
  for (int i = 0; i < TH_ELEMS; i++) g[i] = 0.01f * (float)(i % 7);
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *a0 = th_chan(x.agg_cp), *a1 = th_chan(x.agg_cp);
  uint64_t v, pull_id;
  ck_assert_msg(ps_test_pull(a0, "b", ids, 3, p, TH_ELEMS, 0, 0, &v, &eb) == 0, "%s", eb.msg);
  ps_req pull = {.model = "b", .ids = ids, .nids = 3, .worker = 0, .clock = 1};
  struct iovec ps = {p, sizeof p}, ps2 = {p2, sizeof p2};
  ck_assert_msg(ps_chan_send_pullv(a1, &pull, &ps, 1, &pull_id, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(th_parked(x.gp[0], 1) == 1, "the pull of clock 1 is not parked on the root");
  ck_assert_int_eq(kill(x.shard[0], SIGSTOP), 0);
  ps_chan_set_timeout(a0, 20000);
  uint64_t v1;
  int err = ps_test_push(a0, "b", ids, 3, g, TH_ELEMS, 0, 0, v, &v1, &eb);
  ck_assert_int_eq(kill(x.shard[0], SIGCONT), 0);
  ck_assert_msg(err < 0, "the push reached a stopped root: %s", ps_strerror(err));
  /* both well within the root's pull_timeout_ms (30 s), which held them */
  ps_chan_set_timeout(a1, 5000);
  int64_t t0 = ps_test_now_ms();
  err = ps_chan_recv_id(a1, pull_id, &v, &eb);
  ck_assert_msg(err == PS_EUNAVAIL && strstr(eb.msg, "push of clock 0"),
                "the pull parked behind the failed push: %s after %lld ms (%s)",
                ps_strerror(err), (long long)(ps_test_now_ms() - t0), eb.msg);
  t0 = ps_test_now_ms();
  ps_chan_set_timeout(a0, 5000);
  err = ps_chan_pullv(a0, &pull, &ps2, 1, &v, &eb);
  ck_assert_msg(err == PS_EUNAVAIL && strstr(eb.msg, "push of clock 0"),
                "the pull sent after the failed push: %s after %lld ms (%s)", ps_strerror(err),
                (long long)(ps_test_now_ms() - t0), eb.msg);
  ps_chan_close(a0);
  ps_chan_close(a1);
  th_finish(&x);
}
END_TEST

/* th_stop_root0 SIGSTOPs root 0 for 5 s: a push the aggregator forwards
 * meanwhile gets no hello on its link (2 s) and fails unsent. */
static void th_stop_root0(th_ctx *x) {
  ck_assert_int_eq(kill(x->shard[0], SIGSTOP), 0);
  usleep(5000 * 1000);
  ck_assert_int_eq(kill(x->shard[0], SIGCONT), 0);
}

/* The same through psw's client: its round of push 0 and pull 1, the
 * push failing in the aggregator's sum, goes to the root directly and
 * pulls clock 0 there within a few seconds of the failure (about 7 s of
 * waits in all: the push held 2.5 s, the root stopped 5 s); it stayed on
 * the aggregator, its pull held on the root for pull_timeout_ms (the
 * default 30 s) and then asked again, past the 15 s th_round_run gives
 * it after the stop (20.3 s in all): the bound is 20 s, room for a loaded
 * machine, and the old code's 30 s cannot meet it. */
START_TEST(test_hier_push_failed_failover) {
  th_ctx x = {0};
  ps_rpc *rpc;
  x.lease_ms = 120000; /* (no heartbeats here) */
  /* The aggregator asks the root to drop the worker once its connection
   * closes (the failover), and again every heartbeat while it stays
   * away, which the root does for a worker silent there for 2
   * heartbeats: this test's worker sends no heartbeats (psw does), and
   * its direct pull parked on the root does not count as speaking, so
   * on a slow machine (the sanitizers) a repeated leave dropped it
   * ("declared dead"); a 30 s heartbeat keeps that out of this test,
   * which checks the failover's speed.  (The leave that arrives between
   * the worker's direct connect and its first request cannot: the hello
   * names the worker, test_rpc_leave_after_worker_hello.) */
  x.beat_ms = 30000;
  th_bare_delay(&x, &rpc, 2500); /* the lone worker's push is held 2.5 s */
  th_submit(rpc, "m", NULL);
  ps_rpc_close(rpc);
  static th_worker w;
  /* as psw's: an I/O timeout past the root's pull_timeout_ms */
  th_round r = th_client(&x, &w, 35000, 0);
  int64_t t0 = ps_test_now_ms();
  int rc = th_round_run(&r, th_stop_root0, &x, 300);
  int64_t ms = ps_test_now_ms() - t0;
  ck_assert_msg(rc == 0, "the round whose push failed: %d %s after %lld ms", rc, r.eb.msg,
                (long long)ms);
  ck_assert_msg(ms < 20000, "the round took %lld ms", (long long)ms);
  ck_assert_uint_eq(psw_client_pushes_unknown(w.c), 1);
  r.push_clock = 1, r.pull_clock = 2; /* and on, on the root */
  ck_assert_msg(th_round_run(&r, NULL, &x, 0) == 0, "step 1: %s", r.eb.msg);
  th_client_close(&w);
  th_finish(&x);
}
END_TEST

/* th_beat_root beats workers 0..2 on the root (RPC): bare channel
 * clients behind the aggregator beat no root themselves. */
static void th_beat_root(ps_rpc *rpc) {
  ps_errbuf eb = {""};
  for (uint32_t w = 0; w < 3; w++)
    ck_assert_msg(ps_test_beat(rpc, w, 0, &eb) == 0, "worker %u's beat: %s", w, eb.msg);
}

/* An aggregator whose loop stalls (here SIGSTOPped for twice the 1.5 s
 * lease, which is the same to its leases) does not count its local
 * workers gone for the silence it caused.  Three workers summed clock 0;
 * workers 0 and 1 pushed clock 1 and the sum waits (up to 10 s) for
 * worker 2, whose push goes out while the aggregator is stopped and waits
 * unread in its socket.  On resuming, the aggregator credits the stall to
 * the leases (and says so once), reads worker 2's push and forwards one
 * sum of the three.  (It used to fire its timer first, count worker 2
 * gone, a lease silent, and forward the sum of two; worker 2's push then
 * went alone after the 10 s delay: 3 sums of clocks 0 and 1, not 2.)  The
 * test beats the root for the workers meanwhile, so that the root's
 * leases are not at issue. */
START_TEST(test_hier_agg_stalled) {
  th_ctx x = {.lease_ms = 1500};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare_delay(&x, &rpc, 10000);
  th_submit(rpc, "s", NULL);
  static float g[TH_ELEMS];
  for (int i = 0; i < TH_ELEMS; i++) g[i] = 0.01f * (float)(i % 5);
  const uint32_t ids[3] = {0, 1, 2};
  struct iovec seg = {g, sizeof g};
  ps_chan_client *a[3];
  uint64_t id[3], v = 0;
  for (uint32_t w = 0; w < 3; w++) a[w] = th_chan(x.agg_cp);
  for (uint32_t w = 0; w < 3; w++) {
    ps_req r = {.model = "s", .ids = ids, .nids = 3, .worker = w, .clock = 0};
    ck_assert_msg(ps_chan_send_pushv(a[w], &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  }
  for (int w = 0; w < 3; w++)
    ck_assert_msg(ps_chan_recv(a[w], NULL, &v, &eb) == 0, "worker %d: %s", w, eb.msg);
  th_beat_root(rpc);
  for (uint32_t w = 0; w < 2; w++) {
    ps_req r = {.model = "s", .ids = ids, .nids = 3, .worker = w, .clock = 1, .version = v};
    ck_assert_msg(ps_chan_send_pushv(a[w], &r, &seg, 1, &id[w], &eb) == 0, "%s", eb.msg);
  }
  uint64_t in = 0;
  for (int64_t until = ps_test_now_ms() + 10000; in < 5 && ps_test_now_ms() < until;) {
    Ps__StatusReply *ag = ps_test_status(x.agg_gp);
    in = ag->agg_pushes_in;
    protobuf_c_message_free_unpacked(&ag->base, NULL);
    if (in < 5) usleep(5000);
  }
  ck_assert_msg(in == 5, "the aggregator took %llu pushes, not 5", (unsigned long long)in);
  ck_assert_int_eq(ps_test_sigstop(x.agg, 5000), 0);
  ps_req r2 = {.model = "s", .ids = ids, .nids = 3, .worker = 2, .clock = 1, .version = v};
  ck_assert_msg(ps_chan_send_pushv(a[2], &r2, &seg, 1, &id[2], &eb) == 0, "%s", eb.msg);
  for (int k = 0; k < 15; k++) {
    usleep(200 * 1000);
    th_beat_root(rpc);
  }
  ck_assert_int_eq(kill(x.agg, SIGCONT), 0);
  int done[3] = {0};
  for (int64_t until = ps_test_now_ms() + 20000; ps_test_now_ms() < until;) {
    int all = 1;
    for (int w = 0; w < 3; w++) {
      if (!done[w]) done[w] = ps_chan_wait_id(a[w], id[w], 50, &eb);
      ck_assert_msg(done[w] >= 0, "worker %d: %s", w, eb.msg);
      all &= done[w];
    }
    if (all) break;
    th_beat_root(rpc);
  }
  for (int w = 0; w < 3; w++) {
    ck_assert_msg(done[w] == 1, "worker %d's push of clock 1 was not answered", w);
    ck_assert_msg(ps_chan_recv_id(a[w], id[w], &v, &eb) == 0, "worker %d: %s", w, eb.msg);
  }
  Ps__StatusReply *ag = ps_test_status(x.agg_gp);
  ck_assert_uint_eq(ag->agg_pushes_in, 6);
  ck_assert_msg(ag->agg_forwarded == 2, "the aggregator forwarded %llu sums for 2 clocks of 3 "
                "workers (it counted worker 2 gone for its own stall); see %s",
                (unsigned long long)ag->agg_forwarded, x.agg_log);
  protobuf_c_message_free_unpacked(&ag->base, NULL);
  Ps__StatusReply *st = ps_test_status(x.gp[0]);
  ck_assert_uint_eq(st->sum_pushes, 2);
  ck_assert_uint_eq(st->sum_grads, 6);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ck_assert_msg(th_log_wait(x.agg_log, "aggregator h0: its event loop was stalled", 1000),
                "the aggregator did not say its loop stalled; see %s", x.agg_log);
  for (int w = 0; w < 3; w++) ps_chan_close(a[w]);
  ps_rpc_close(rpc);
  th_finish(&x);
}
END_TEST

#define TH_BIG 5000 /* 5 chunks */

/* th_replace replaces model "r" on the root by one of ELEMS elements and
 * SEED through RPC. */
static void th_replace(ps_rpc *rpc, uint32_t elems, uint64_t seed) {
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *ts;
  Ps__OptimizerSpec opt;
  uint32_t shape;
  th_spec(&spec, &t, &ts, &opt, &shape, "r");
  shape = elems;
  spec.seed = seed;
  ps_test_submit(rpc, &spec, 1, 10000);
}

/* th_same_pull pulls ELEMS elements (chunks 0..) of "r" at clock 0
 * through a new connection to the aggregator and straight from the root:
 * both must hold the root's values. */
static void th_same_pull(th_ctx *x, uint32_t elems, const char *when) {
  static float pa[TH_BIG], pr[TH_BIG];
  const uint32_t ids[5] = {0, 1, 2, 3, 4};
  size_t nids = (elems + 1023) / 1024;
  ps_errbuf eb = {""};
  uint64_t va, vr;
  ps_chan_client *agg = th_chan(x->agg_cp), *root = th_chan(x->cp[0]);
  ck_assert_msg(ps_test_pull(agg, "r", ids, nids, pa, elems, 0, 0, &va, &eb) == 0,
                "%s: pull through the aggregator: %s", when, eb.msg);
  ck_assert_msg(ps_test_pull(root, "r", ids, nids, pr, elems, 0, 0, &vr, &eb) == 0, "%s: %s",
                when, eb.msg);
  ck_assert_msg(!memcmp(pa, pr, elems * sizeof *pa), "%s: the aggregator served other values "
                "than the root's", when);
  ps_chan_close(agg);
  ps_chan_close(root);
}

/* A model replaced on the roots while the aggregator runs: new
 * connections see the new layout (another shape: 3 -> 5 chunks) and the
 * new values (the same shape, another seed: the aggregator's copy of the
 * old model is not served), and the new layout sums pushes. */
START_TEST(test_hier_replace) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare(&x, &rpc);
  th_replace(rpc, TH_ELEMS, 7);
  th_same_pull(&x, TH_ELEMS, "before the replace");
  th_replace(rpc, TH_BIG, 8);
  th_same_pull(&x, TH_BIG, "after a replace with 5 chunks");
  th_replace(rpc, TH_BIG, 9);
  th_same_pull(&x, TH_BIG, "after a replace with another seed");
  ps_rpc_close(rpc);
  /* 3 workers' pushes of the new shape are summed into one update */
  static float g[TH_BIG], p0[TH_BIG], p1[TH_BIG];
  ps_test_rng_init();
  for (int i = 0; i < TH_BIG; i++) g[i] = ps_test_rnd();
  const uint32_t ids[5] = {0, 1, 2, 3, 4};
  ps_chan_client *root = th_chan(x.cp[0]), *agg[3];
  uint64_t v0, v;
  ck_assert_int_eq(ps_test_pull(root, "r", ids, 5, p0, TH_BIG, 0, 0, &v0, &eb), 0);
  for (uint32_t w = 0; w < 3; w++) {
    agg[w] = th_chan(x.agg_cp);
    ps_req r = {.model = "r", .ids = ids, .nids = 5, .worker = w, .version = v0};
    struct iovec seg = {g, sizeof g};
    ck_assert_msg(ps_chan_send_pushv(agg[w], &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  }
  for (int w = 0; w < 3; w++) {
    ck_assert_msg(ps_chan_recv(agg[w], NULL, &v, &eb) == 0, "worker %d: %s", w, eb.msg);
    ck_assert_uint_eq(v, v0 + 1);
  }
  ck_assert_int_eq(ps_test_pull(root, "r", ids, 5, p1, TH_BIG, 0, 1, &v, &eb), 0);
  for (int i = 0; i < TH_BIG; i++) {
    float want = p0[i] - 0.1f * 3 * g[i], tol = 1e-5f * (1 + (want < 0 ? -want : want));
    ck_assert_msg(p1[i] - want <= tol && want - p1[i] <= tol, "[%d] %g, want %g", i, p1[i], want);
  }
  for (int w = 0; w < 3; w++) ps_chan_close(agg[w]);
  ps_chan_close(root);
  char *log = ps_test_read_file(x.agg_log, NULL);
  ck_assert_msg(strstr(log, "model 'r' changed on the roots (replaced): 5000 parameters"), "%s",
                log);
  free(log);
  th_finish(&x);
}
END_TEST

/* Codecs compose: int8 pushes from 3 workers into the aggregator, int8
 * from it to the root (re-encoded with its residual, zero at first). */
START_TEST(test_hier_codec) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare(&x, &rpc);
  th_submit(rpc, "q", "int8");
  ps_rpc_close(rpc);
  static const uint32_t len[3] = {1024, 1024, TH_ELEMS - 2048};
  static float g[TH_ELEMS], sum[TH_ELEMS], fwd[TH_ELEMS], p0[TH_ELEMS], p1[TH_ELEMS];
  static uint8_t enc[3][TH_ELEMS + 16], fenc[TH_ELEMS + 16];
  uint64_t nbytes = 0, v0, v;
  ps_test_rng_init();
  for (int w = 0; w < 3; w++) {
    for (int i = 0; i < TH_ELEMS; i++) g[i] = ps_test_rnd() * (float)(w + 1);
    uint8_t *o = enc[w];
    for (int k = 0, off = 0; k < 3; off += len[k++]) {
      ps_codec_encode(PS_CODEC_INT8, g + off, len[k], 0, o);
      ps_codec_decode_acc(PS_CODEC_INT8, o, len[k], 0, 1.0f, sum + off);
      o += ps_codec_size(PS_CODEC_INT8, len[k], 0);
    }
    nbytes = (uint64_t)(o - enc[w]);
  }
  for (int k = 0, off = 0; k < 3; off += len[k++]) { /* what the aggregator sends */
    ps_codec_encode(PS_CODEC_INT8, sum + off, len[k], 0, fenc);
    ps_codec_decode(PS_CODEC_INT8, fenc, len[k], 0, fwd + off);
  }
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *root = th_chan(x.cp[0]), *agg[3];
  ck_assert_int_eq(ps_test_pull(root, "q", ids, 3, p0, TH_ELEMS, 0, 0, &v0, &eb), 0);
  for (uint32_t w = 0; w < 3; w++) {
    agg[w] = th_chan(x.agg_cp);
    ps_req r = {.model = "q", .ids = ids, .nids = 3, .worker = w, .version = v0,
                .codec = PS_CODEC_INT8};
    struct iovec seg = {enc[w], nbytes};
    ck_assert_msg(ps_chan_send_pushv(agg[w], &r, &seg, 1, NULL, &eb) == 0, "%s", eb.msg);
  }
  for (int w = 0; w < 3; w++) ck_assert_msg(ps_chan_recv(agg[w], NULL, &v, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_test_pull(root, "q", ids, 3, p1, TH_ELEMS, 0, 1, &v, &eb), 0);
  ck_assert_uint_eq(v, v0 + 1);
  for (int i = 0; i < TH_ELEMS; i++) {
    float want = p0[i] - 0.1f * fwd[i], tol = 0.1f * 6.0f / 127; /* one int8 step of the sum */
    ck_assert_msg(p1[i] - want <= tol && want - p1[i] <= tol, "[%d] %g, want %g (seed %llu)", i,
                  p1[i], want, (unsigned long long)ps_test_seed);
  }
  Ps__StatusReply *st = ps_test_status(x.gp[0]);
  ck_assert_uint_eq(st->sum_pushes, 1);
  ck_assert_uint_eq(st->bytes_in, nbytes); /* int8 on the root's wire too */
  protobuf_c_message_free_unpacked(&st->base, NULL);
  for (int w = 0; w < 3; w++) ps_chan_close(agg[w]);
  ps_chan_close(root);
  th_finish(&x);
}
END_TEST

/* th_wait_sums waits up to 30 s until root shard 0 applied N sums. */
static void th_wait_sums(th_ctx *x, uint64_t n) {
  int64_t deadline = ps_test_now_ms() + 30000;
  uint64_t sums = 0;
  while (ps_test_now_ms() < deadline) {
    Ps__StatusReply *st = ps_test_status(x->gp[0]);
    sums = st->sum_pushes;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    if (sums >= n) break;
    usleep(20000);
  }
  ck_assert_msg(sums >= n, "the roots saw %llu sums", (unsigned long long)sums);
}

/* th_midway starts a BSP cluster with the aggregator (sums wait up to
 * DELAY ms) and the workers W for EPOCHS, and returns once root shard 0
 * applied SUMS sums. */
static void th_midway(th_ctx *x, int delay, int epochs, uint64_t sums, pid_t *w) {
  th_start(x, 1, "bsp", "0", delay, epochs);
  for (int i = 0; i < TH_N; i++) w[i] = th_spawn(x, i, 1, NULL);
  th_wait_sums(x, sums);
}

START_TEST(test_hier_bsp_sums) {
  TH_NEED_DATA();
  th_ctx x = {0};
  th_start(&x, 1, "bsp", "0", 10000, 2);
  th_train(&x, 1, NULL);
  /* psctl status shows the tree's middle tier */
  char slog[700];
  snprintf(slog, sizeof slog, "%s/status.log", x.dir);
  char *status[] = {(char *)ps_test_bin("psctl"), "status", "--config", x.yaml, "--json", NULL};
  ck_assert_int_eq(ps_test_run(status, slog, 20000), 0);
  char *so = ps_test_read_file(slog, NULL);
  ck_assert_msg(strstr(so, "\"aggregators\":[{\"name\":\"h0\""), "%s", so);
  /* each worker's first pull on each root enters it there (one fetch
   * each; the first worker's is the clock's own fetch): 2 x 2 enters */
  ck_assert_msg(strstr(so, "\"enters\":4,\"leaves\":0,\"workers\":[0,1,2]"), "%s", so);
  free(so);
  /* 1000 samples each, batch 64: 16 steps an epoch, 32 in all */
  int steps = (int)ps_test_json_num(x.json[0], "steps");
  ck_assert_int_eq(steps, 32);
  for (int s = 0; s < 2; s++) {
    Ps__StatusReply *st = ps_test_status(x.gp[s]);
    ck_assert_uint_eq(st->n_models, 1);
    /* one push per clock, each the sum of all 3 workers */
    ck_assert_uint_eq(st->pushes, (uint64_t)steps);
    ck_assert_uint_eq(st->sum_pushes, (uint64_t)steps);
    ck_assert_uint_eq(st->sum_grads, (uint64_t)(TH_N * steps));
    ck_assert_uint_eq(st->models[0]->version, (uint64_t)steps);
    ck_assert_uint_eq(st->models[0]->max_gap, 0);
    ck_assert_uint_eq(st->models[0]->pull_timeouts, 0);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  Ps__StatusReply *ag = ps_test_status(x.agg_gp);
  ck_assert_str_eq(ag->aggregator, "h0");
  ck_assert_uint_eq(ag->agg_pushes_in, (uint64_t)(2 * TH_N * steps));
  ck_assert_uint_eq(ag->agg_forwarded, (uint64_t)(2 * steps));
  /* 3 pulls per clock per shard, one fetch each (the initial pull too),
   * and a fetch of its own for each worker's first pull after the first
   * (it enters the root's clock table: psd_agg.h invariant 6) */
  ck_assert_uint_eq(ag->agg_enters, (uint64_t)(2 * (TH_N - 1)));
  ck_assert_uint_eq(ag->agg_fetches, (uint64_t)(2 * (steps + 1)) + ag->agg_enters);
  ck_assert_uint_eq(ag->agg_pull_hits + ag->agg_fetches, ag->agg_pulls_in);
  protobuf_c_message_free_unpacked(&ag->base, NULL);
  double loss = th_evaluate(&x);
  ck_assert_msg(loss > 0 && loss < 1.5, "test loss %f after 2 epochs", loss);
  th_finish(&x);
}
END_TEST

START_TEST(test_hier_ssp_bound) {
  TH_NEED_DATA();
  th_ctx x = {0};
  th_start(&x, 1, "ssp", "2", 20, 2);
  th_train(&x, 1, "3");
  for (int s = 0; s < 2; s++) {
    Ps__StatusReply *st = ps_test_status(x.gp[s]);
    ck_assert_uint_le(st->models[0]->max_gap, 2);
    ck_assert_uint_eq(st->models[0]->pull_timeouts, 0);
    ck_assert_uint_gt(st->sum_pushes, 0);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  th_finish(&x);
}
END_TEST

/* th_failover_counts checks the finished workers of a run of EPOCHS (16
 * steps each) that failed over from the aggregator mid-training: every
 * batch was trained, and again those whose push to the failed aggregator
 * may not have been applied (at most three a push: the deferred ones);
 * and nothing acknowledged is lost: every push a worker saw acknowledged
 * by shard 0 (directly or in a sum) is among the gradients it applied. */
static void th_failover_counts(th_ctx *x, int epochs) {
  long acked = 0;
  for (int i = 0; i < TH_N; i++) {
    int steps = (int)ps_test_json_num(x->json[i], "steps");
    int again = 3 * (int)ps_test_json_sum(x->json[i], "pushes_unanswered");
    ck_assert_msg(steps >= epochs * 16 && steps <= epochs * 16 + again, "worker %d: %d steps, "
                  "%d retrained at most; see %s", i, steps, again, x->log[i]);
    const char *p = strstr(x->json[i], "\"pushes_acked\":[");
    ck_assert_ptr_nonnull(p);
    acked += strtol(p + strlen("\"pushes_acked\":["), NULL, 10);
  }
  Ps__StatusReply *st = ps_test_status(x->gp[0]);
  uint64_t applied = st->pushes - st->sum_pushes + st->sum_grads;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ck_assert_msg((uint64_t)acked <= applied, "workers saw %ld pushes acknowledged, shard 0 applied "
                "%llu gradients", acked, (unsigned long long)applied);
}

START_TEST(test_hier_failover) {
  TH_NEED_DATA();
  th_ctx x = {0};
  pid_t w[TH_N];
  th_midway(&x, 20, 10, 10, w); /* mid-training: once the roots applied some sums */
  ck_assert_int_eq(kill(x.agg, SIGKILL), 0);
  ck_assert_int_ge(ps_test_wait_pid(x.agg, 5000), 0);
  x.agg = 0;
  /* every worker goes to the roots; then the aggregator comes back on its
   * addresses and the workers return to it at their next epoch boundary */
  for (int i = 0; i < TH_N; i++)
    ck_assert_msg(th_log_wait(x.log[i], "going to the root shards directly", 30000),
                  "worker %d did not fail over; see %s", i, x.log[i]);
  /* the roots take the workers' own pushes before the aggregator is back */
  int64_t until = ps_test_now_ms() + 30000;
  uint64_t plain = 0;
  while (ps_test_now_ms() < until && plain < TH_N) {
    Ps__StatusReply *st = ps_test_status(x.gp[0]);
    plain = st->pushes - st->sum_pushes;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    usleep(10000);
  }
  ck_assert_msg(plain >= TH_N, "shard 0 saw %llu pushes from the workers directly",
                (unsigned long long)plain);
  /* held while the aggregator starts, so that epochs are left to return at */
  for (int i = 0; i < TH_N; i++) ck_assert_int_eq(kill(w[i], SIGSTOP), 0);
  char *argv[] = {(char *)ps_test_bin("psd"), "--config", x.yaml, "--aggregator", "h0", NULL};
  snprintf(x.agg_log, sizeof x.agg_log, "%s/agg2.log", x.dir);
  x.agg = ps_test_spawn(argv, x.agg_log, NULL);
  int up = ps_test_wait_port(x.agg_cp, 10000);
  for (int i = 0; i < TH_N; i++) ck_assert_int_eq(kill(w[i], SIGCONT), 0);
  ck_assert_msg(up == 0, "aggregator not back; see %s", x.agg_log);
  th_wait(&x, w, TH_N);
  for (int i = 0; i < TH_N; i++) {
    char *out = ps_test_read_file(x.log[i], NULL);
    ck_assert_msg(strstr(out, "aggregator h0 (127.0.0.1:") && strstr(out, "answers again; back "
                  "to it"), "worker %d did not return to the aggregator; see %s", i, x.log[i]);
    free(out);
  }
  th_failover_counts(&x, 10);
  /* the restarted aggregator summed the returned workers' pushes */
  Ps__StatusReply *ag = ps_test_status(x.agg_gp);
  ck_assert_msg(ag->agg_pushes_in > 0 && ag->agg_forwarded > 0, "the restarted aggregator "
                "summed %llu pushes", (unsigned long long)ag->agg_pushes_in);
  protobuf_c_message_free_unpacked(&ag->base, NULL);
  double acc = ps_test_json_num(x.json[0], "test_accuracy");
  ck_assert_msg(acc > 0.6, "test accuracy %f after failover", acc);
  th_finish(&x);
}
END_TEST

/* th_log_count counts the workers whose log holds NEEDLE. */
static int th_log_count(th_ctx *x, const char *needle) {
  int n = 0;
  for (int i = 0; i < TH_N; i++) {
    char *out = ps_test_read_file(x->log[i], NULL);
    n += out && strstr(out, needle) != NULL;
    free(out);
  }
  return n;
}

/* A hung aggregator (SIGSTOPped: its kernel still acknowledges TCP, so
 * no connection breaks) holding its workers' pulls, with a 2 s lease and
 * a 60 s pull_timeout_ms.  Live and holding two workers' pulls for a
 * stopped third past half a lease, it answers their probes and keeps
 * them; stopped for less than a lease, it keeps them
 * (the liveness probe waits a lease for its hello); stopped for good,
 * every worker goes to the roots within a lease and a half of probing
 * (asserted within 3 leases), not after pull_timeout_ms + 5 s (65 s: the
 * old wait), and the job finishes with the same accounting as after a
 * kill -9 (nothing acknowledged lost, steps retrained within the
 * unanswered pushes). */
START_TEST(test_hier_agg_hung_failover) {
  TH_NEED_DATA();
  th_ctx x = {.lease_ms = 2000, .pull_timeout_ms = 60000};
  pid_t w[TH_N];
  th_midway(&x, 20, 200, 10, w);
  /* a live aggregator holding the others' pulls (under bsp, for worker 0,
   * stopped 0.8 lease) past half a lease answers their probes: nobody
   * leaves it */
  ck_assert_int_eq(ps_test_sigstop(w[0], 5000), 0);
  usleep(1600 * 1000);
  ck_assert_int_eq(kill(w[0], SIGCONT), 0);
  usleep(1000 * 1000);
  ck_assert_msg(th_log_count(&x, "going to the root shards directly") == 0,
                "a worker left a live aggregator that held its pull; see %s", x.log[1]);
  /* a short stop of the aggregator: leases extended, nobody leaves */
  ck_assert_int_eq(ps_test_sigstop(x.agg, 5000), 0);
  usleep(1800 * 1000);
  ck_assert_int_eq(kill(x.agg, SIGCONT), 0);
  usleep(2500 * 1000);
  ck_assert_msg(th_log_count(&x, "going to the root shards directly") == 0,
                "a worker failed over for a stop shorter than a lease; see %s", x.log[0]);
  /* hung for good: every worker reaches the roots */
  th_wait_sums(&x, 12);
  ck_assert_int_eq(ps_test_sigstop(x.agg, 5000), 0);
  int64_t t0 = ps_test_now_ms(), bound = 3 * x.lease_ms, took = -1;
  while (ps_test_now_ms() - t0 <= bound + 20000) {
    if (th_log_count(&x, "going to the root shards directly") == TH_N) {
      took = ps_test_now_ms() - t0;
      break;
    }
    usleep(20000);
  }
  kill(x.agg, SIGCONT);
  ck_assert_msg(took >= 0 && took <= bound, "the workers reached the roots %lld ms after the "
                "aggregator hung (-1: not within %lld ms), not within 3 leases (%lld ms); see %s",
                (long long)took, (long long)bound + 20000, (long long)bound, x.log[0]);
  ck_assert_msg(th_log_count(&x, "did not answer a liveness probe") == TH_N,
                "not every worker said why; see %s", x.log[0]);
  th_wait(&x, w, TH_N);
  th_failover_counts(&x, 200);
  th_finish(&x);
}
END_TEST

/* A live aggregator at its limits.max_connections (every connection its
 * workers': past its hello) answers a liveness probe with an error frame
 * (PS_EUNAVAIL), and that is an answer: its loop runs.  Its workers,
 * whose pulls it holds for a stopped worker past half a lease, probe it
 * and stay; they took the refusal as a hung aggregator and all went to
 * the roots. */
START_TEST(test_hier_agg_full_probe_answers) {
  TH_NEED_DATA();
  th_ctx x = {.lease_ms = 2000, .pull_timeout_ms = 60000, .max_conns = 2 * TH_N};
  pid_t w[TH_N];
  th_midway(&x, 20, 200, 10, w);
  Ps__StatusReply *ag = ps_test_status(x.agg_gp);
  uint32_t open = ag->chan_connections;
  protobuf_c_message_free_unpacked(&ag->base, NULL);
  ck_assert_msg(open == (uint32_t)x.max_conns, "the aggregator holds %u channel connections, "
                "not its limit %d; see %s", open, x.max_conns, x.agg_log);
  ck_assert_int_eq(ps_test_sigstop(w[0], 5000), 0);
  usleep(1600 * 1000);
  ck_assert_int_eq(kill(w[0], SIGCONT), 0);
  usleep(1000 * 1000);
  ag = ps_test_status(x.agg_gp);
  uint64_t refused = ag->chan_refused;
  protobuf_c_message_free_unpacked(&ag->base, NULL);
  ck_assert_msg(refused > 0, "no probe met the aggregator's limit; see %s", x.agg_log);
  ck_assert_msg(th_log_count(&x, "going to the root shards directly") == 0,
                "a worker left a live aggregator that refused its probe at its connection "
                "limit; see %s", x.log[1]);
  for (int i = 0; i < TH_N; i++) ps_test_stop(w[i], SIGKILL, 5000);
  th_finish(&x);
}
END_TEST

/* A root killed mid-run under durability sync, behind the aggregator
 * (sums forwarded at once, one worker): the push the aggregator forwarded
 * to it fails, and the aggregator answers the worker with the root's
 * failure on the worker's still-open connection.  That push may or may
 * not have been applied, like one whose own connection broke (README
 * "Data failover"): the worker trains its batch again from the last
 * acknowledged offset.  So the root's version (pushes applied, restored
 * by its replay, plus those after) covers every batch of every epoch (it
 * used to fall one short: the failed push counted its samples trained). */
START_TEST(test_hier_root_killed_sync) {
  TH_NEED_DATA();
  th_ctx x = {.nw = 1, .sync = 1};
  const int epochs = 6;
  th_start(&x, 1, "bsp", "0", 0, epochs);
  pid_t w = th_spawn(&x, 0, 1, NULL);
  int64_t deadline = ps_test_now_ms() + 60000;
  uint64_t v = 0;
  while (ps_test_now_ms() < deadline && v < 40) {
    Ps__StatusReply *st = ps_test_status(x.gp[1]);
    v = st->n_models ? st->models[0]->version : 0;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    usleep(10000);
  }
  ck_assert_msg(v >= 40, "shard 1 applied %llu pushes; see %s", (unsigned long long)v, x.log[0]);
  int st = ps_test_stop(x.shard[1], SIGKILL, 10000);
  ck_assert(WIFSIGNALED(st));
  char log[700];
  snprintf(log, sizeof log, "%s/psd1-again.log", x.dir);
  x.shard[1] = ps_test_psd(x.yaml, 1, log, NULL);
  ck_assert_msg(ps_test_wait_port(x.gp[1], 20000) == 0, "shard 1 did not come back; see %s", log);
  th_wait(&x, &w, 1);
  /* 3000 samples in 6 partitions of 500: 8 batches of 64 each */
  const uint64_t batches = 6 * 8 * (uint64_t)epochs;
  Ps__StatusReply *sk = ps_test_status(x.gp[1]);
  ck_assert_uint_eq(sk->n_models, 1);
  uint64_t version = sk->models[0]->version;
  protobuf_c_message_free_unpacked(&sk->base, NULL);
  ck_assert_msg(version >= batches, "shard 1 applied %llu pushes, fewer than the job's %llu "
                "batches: samples were skipped (worker: %s; see %s)", (unsigned long long)version,
                (unsigned long long)batches, x.json[0], x.dir);
  th_finish(&x);
}
END_TEST

/* A local worker killed mid-training under BSP, sums waiting up to 10 s
 * for all 3, leases of 120 s (longer than the test waits): the worker
 * leaves through the aggregator (psd_agg.h invariant 6: its connections
 * closed, 3 heartbeats later a leaving beat to each root), so the
 * aggregator's sums stop waiting for it (else every clock would take
 * 10 s and the others could not finish within the test's wait) and the
 * coordinator hands its data partitions to the two others, which finish;
 * the roots list it DEAD and applied sums of 2 gradients. */
START_TEST(test_hier_dead_worker) {
  TH_NEED_DATA();
  th_ctx x = {0};
  pid_t w[TH_N];
  x.lease_ms = 120000;
  th_midway(&x, 10000, 3, 5, w);
  ck_assert_int_eq(kill(w[2], SIGKILL), 0);
  ck_assert_int_ge(ps_test_wait_pid(w[2], 5000), 0);
  th_wait(&x, w, 2);
  for (int s = 0; s < 2; s++)
    ck_assert_msg(ps_test_worker_states(x.gp[s], UINT32_MAX, "DEAD") == 1, "root %d does not list the killed worker DEAD", s);
  Ps__StatusReply *ag = ps_test_status(x.agg_gp);
  ck_assert_uint_eq(ag->agg_leaves, 1);
  protobuf_c_message_free_unpacked(&ag->base, NULL);
  ck_assert_msg(th_log_wait(x.agg_log, "did not come back: it leaves the root shards", 1000),
                "see %s", x.agg_log);
  Ps__StatusReply *st = ps_test_status(x.gp[0]);
  ck_assert_msg(st->sum_grads < 3 * st->sum_pushes, "%llu sums of %llu gradients: none of 2",
                (unsigned long long)st->sum_pushes, (unsigned long long)st->sum_grads);
  ck_assert_uint_eq(st->models[0]->max_gap, 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  for (int i = 0; i < 2; i++) {
    double acc = ps_test_json_num(x.json[i], "test_accuracy");
    ck_assert_msg(acc > 0.6, "worker %d: test accuracy %f", i, acc);
  }
  th_finish(&x);
}
END_TEST

/* psd -t and psw check the aggregator named on the command line. */
/* test_hier_spec_off_loop: the aggregator fetches a model's layout
 * (GetModel) off its loop.  The root's gRPC port is a listener that
 * never answers (the test does not accept: the call hangs up to its 3 s
 * timeout).  A worker's pull then waits for the layout while the loop
 * goes on serving: another connection's hello completes within 2 s, which
 * a loop blocked in the call could not before the call's timeout.  The
 * fetch fails: the pull gets the error, the connection stays usable, and a
 * push on it (its data discarded unread into any layout) gets the error
 * too. */
START_TEST(test_hier_spec_off_loop) {
  th_ctx x = {0};
  snprintf(x.dir, sizeof x.dir, "%s", ps_test_tmpdir());
  x.agg_gp = ps_test_free_port();
  do x.agg_cp = ps_test_free_port();
  while (x.agg_cp == x.agg_gp);
  char extra[512];
  snprintf(extra, sizeof extra,
           "aggregators:\n  - {name: h0, grpc: \"127.0.0.1:%d\", channel: \"127.0.0.1:%d\", "
           "workers: 3}\nworkers:\n  count: 3\n", x.agg_gp, x.agg_cp);
  snprintf(x.yaml, sizeof x.yaml, "%s", ps_test_cluster_yaml(x.dir, 1, extra, x.gp, x.cp));
  int hole = ps_test_listen(x.gp[0], NULL);
  snprintf(x.agg_log, sizeof x.agg_log, "%s/agg.log", x.dir);
  char *argv[] = {(char *)ps_test_bin("psd"), "--config", x.yaml, "--aggregator", "h0", NULL};
  x.agg = ps_test_spawn(argv, x.agg_log, NULL);
  ck_assert_int_eq(ps_test_wait_port(x.agg_cp, 10000), 0);
  ps_chan_client *a = th_chan(x.agg_cp);
  uint32_t ids[1] = {0};
  float out[4], g[4] = {0};
  ps_req r = {.model = "m", .ids = ids, .nids = 1, .worker = 0, .clock = 0};
  struct iovec dst = {out, sizeof out};
  uint64_t id = 0, v = 0;
  ps_errbuf eb = {""};
  ck_assert_int_eq(ps_chan_send_pullv(a, &r, &dst, 1, &id, &eb), 0);
  /* the aggregator is in GetModel once its connection to the root waits */
  struct pollfd p = {.fd = hole, .events = POLLIN};
  ck_assert_msg(poll(&p, 1, 10000) == 1, "the aggregator did not ask the root for the model");
  ps_chan_client *b = NULL;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x.agg_cp);
  ck_assert_msg(ps_test_chan_connect(&b, addr, "test", 2000, &eb) == 0,
                "a hello waited for the model's fetch: %s", eb.msg);
  ps_chan_close(b);
  int rc = ps_chan_recv(a, NULL, &v, &eb);
  ck_assert_int_lt(rc, 0);
  ck_assert_msg(strstr(eb.msg, "no root shard answered"), "%s", eb.msg);
  ck_assert(ps_chan_alive(a));
  r.grads = g;
  r.nbytes = sizeof g;
  rc = ps_chan_push(a, &r, &v, &eb);
  ck_assert_int_lt(rc, 0);
  ck_assert_msg(strstr(eb.msg, "no root shard answered"), "%s", eb.msg);
  ck_assert(ps_chan_alive(a));
  ps_chan_close(a);
  close(hole);
  th_finish(&x);
}
END_TEST

/* test_hier_root_restart: the aggregator's links reconnect.  A push
 * through the aggregator (sums forwarded at once) is acknowledged; the
 * root stops: the next push fails with the link's error (invariant 5)
 * and the worker's connection stays; the root comes back on its data: the
 * push after that is forwarded on a new connection and acknowledged with
 * a newer version. */
START_TEST(test_hier_root_restart) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare_delay(&x, &rpc, 0);
  th_submit(rpc, "m", NULL);
  ps_rpc_close(rpc);
  static float g[TH_ELEMS];
  for (int i = 0; i < TH_ELEMS; i++) g[i] = 0.5f;
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *w = th_chan(x.agg_cp);
  uint64_t v0 = 0, v;
  ck_assert_msg(ps_test_push(w, "m", ids, 3, g, TH_ELEMS, 0, 0, 0, &v0, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_test_stop(x.shard[0], SIGTERM, 10000), 0);
  x.shard[0] = 0;
  int rc = ps_test_push(w, "m", ids, 3, g, TH_ELEMS, 0, 1, v0, &v, &eb);
  ck_assert_msg(rc == PS_EUNAVAIL, "push with the root down: %d %s", rc, eb.msg);
  ck_assert(ps_chan_alive(w));
  ps_test_start_shards(x.yaml, x.dir, 1, x.gp, x.cp, x.shard);
  rc = ps_test_push(w, "m", ids, 3, g, TH_ELEMS, 0, 1, v0, &v, &eb);
  ck_assert_msg(rc == 0, "push after the root came back: %s (see %s)", eb.msg, x.agg_log);
  ck_assert_uint_gt(v, v0);
  ps_chan_close(w);
  th_finish(&x);
}
END_TEST

/* test_hier_sigterm_forwards: a SIGTERM'd aggregator forwards the sums it
 * holds at once and answers their workers with the roots' answers, so its
 * drain ends promptly with nothing dropped.  A push through the
 * aggregator (sums wait up to 20 s for 3 workers) is held; at SIGTERM it
 * is acknowledged (the root applied the sum) and the aggregator exits 0
 * well within drain_timeout_ms (5 s): it used to hold the sum until
 * max_delay_ms, time the drain out, answer the push "shutting down" and
 * drop it. */
START_TEST(test_hier_sigterm_forwards) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare_delay(&x, &rpc, 20000);
  th_submit(rpc, "m", NULL);
  ps_rpc_close(rpc);
  static float g[TH_ELEMS];
  for (int i = 0; i < TH_ELEMS; i++) g[i] = 0.5f;
  const uint32_t ids[3] = {0, 1, 2};
  ps_chan_client *w = th_chan(x.agg_cp);
  ps_req r = {.model = "m", .ids = ids, .nids = 3, .worker = 0, .clock = 0, .grads = g,
              .nbytes = sizeof g};
  struct iovec src = {g, sizeof g};
  uint64_t id = 0, v = 0;
  ck_assert_msg(ps_chan_send_pushv(w, &r, &src, 1, &id, &eb) == 0, "%s", eb.msg);
  int64_t deadline = ps_test_now_ms() + 10000;
  uint64_t in = 0;
  while (ps_test_now_ms() < deadline && !in) {
    Ps__StatusReply *st = ps_test_status(x.agg_gp);
    in = st->agg_pushes_in;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    if (!in) usleep(10000);
  }
  ck_assert_msg(in == 1, "the aggregator did not take the push; see %s", x.agg_log);
  int64_t t0 = ps_test_now_ms();
  ck_assert_int_eq(kill(x.agg, SIGTERM), 0);
  int rc = ps_chan_recv_id(w, id, &v, &eb);
  ck_assert_msg(rc == 0, "the held push at SIGTERM: %d %s (see %s)", rc, eb.msg, x.agg_log);
  int st = ps_test_wait_pid(x.agg, 10000);
  int64_t took = ps_test_now_ms() - t0;
  ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aggregator: status %d; see %s",
                st, x.agg_log);
  x.agg = 0;
  ck_assert_msg(took < 4000, "the aggregator took %lld ms to stop; see %s", (long long)took,
                x.agg_log);
  ck_assert_msg(!th_log_wait(x.agg_log, "drain timed out", 0), "see %s", x.agg_log);
  Ps__StatusReply *root = ps_test_status(x.gp[0]);
  ck_assert_uint_eq(root->sum_pushes, 1);
  ck_assert_uint_eq(root->models[0]->version, v);
  protobuf_c_message_free_unpacked(&root->base, NULL);
  ps_chan_close(w);
  th_finish(&x);
}
END_TEST

START_TEST(test_hier_flags) {
  th_ctx x = {0};
  snprintf(x.dir, sizeof x.dir, "%s", ps_test_tmpdir());
  snprintf(x.yaml, sizeof x.yaml, "%s", ps_test_cluster_yaml(x.dir, 1,
           "aggregators:\n  - {name: h0, grpc: '127.0.0.1:1', channel: '127.0.0.1:2', "
           "workers: 2}\n", NULL, NULL));
  char log[700];
  snprintf(log, sizeof log, "%s/t.log", x.dir);
  char *ok[] = {(char *)ps_test_bin("psd"), "-t", "--config", x.yaml, "--aggregator", "h0", NULL};
  ck_assert_int_eq(ps_test_run(ok, log, 10000), 0);
  char *out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "configuration ok (1 shard, 1 aggregator)"), "%s", out);
  free(out);
  char *bad[] = {(char *)ps_test_bin("psd"), "-t", "--config", x.yaml, "--aggregator", "h9", NULL};
  ck_assert_int_eq(ps_test_run(bad, log, 10000), 2);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "no aggregator named 'h9' in the 'aggregators' list"), "%s", out);
  free(out);
  char *both[] = {(char *)ps_test_bin("psd"), "--config", x.yaml, "--shard", "0", "--aggregator",
                  "h0", NULL};
  ck_assert_int_eq(ps_test_run(both, log, 10000), 2);
  char *w[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--model", "m", "--aggregator",
               "h9", NULL};
  ck_assert_int_eq(ps_test_run(w, log, 10000), 2);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "no aggregator named 'h9'"), "%s", out);
  free(out);
}
END_TEST

/* A push that sums workers (ChanMeta.summed, what an aggregator sends its
 * roots) sent to an aggregator is refused with the reason: aggregators
 * forward to the roots only, and h0 summed it in as the push of its one
 * `worker`, its other workers' clocks and the clip bound's count left out.
 * Nothing reaches the root; counted in the aggregator's errors. */
START_TEST(test_hier_sum_refused) {
  th_ctx x = {0};
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  th_bare(&x, &rpc);
  th_submit(rpc, "hier", NULL);
  ps_rpc_close(rpc);
  static float g[TH_ELEMS];
  const uint32_t ids[3] = {0, 1, 2}, sum[2] = {0, 1};
  ps_chan_client *agg = th_chan(x.agg_cp);
  Ps__StatusReply *st = ps_test_status(x.agg_gp);
  uint64_t errors0 = st->errors;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ps_req r = {.model = "hier", .ids = ids, .nids = 3, .grads = g, .nbytes = sizeof g,
              .summed = sum, .nsummed = 2};
  uint64_t v;
  ck_assert_int_eq(ps_chan_push(agg, &r, &v, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "a push that sums 2 workers sent to aggregator 'h0': an "
                           "aggregator takes its workers' own pushes"), "%s", eb.msg);
  st = ps_test_status(x.agg_gp);
  ck_assert_uint_eq(st->errors, errors0 + 1);
  ck_assert_uint_eq(st->agg_pushes_in, 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  st = ps_test_status(x.gp[0]); /* th_bare's one root */
  ck_assert_uint_eq(st->pushes, 0);
  ck_assert_uint_eq(st->sum_pushes, 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  /* a sum of a model the roots do not hold (the aggregator fails to
   * fetch its layout) is refused the same, and the layout's error goes
   * with it: it answered the connection's next request, this pull of a
   * model that exists */
  r.model = "nope";
  ck_assert_int_eq(ps_chan_push(agg, &r, &v, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "a push that sums 2 workers sent to aggregator 'h0'"), "%s",
                eb.msg);
  st = ps_test_status(x.agg_gp);
  ck_assert_uint_eq(st->errors, errors0 + 2);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  /* the connection goes on: its pull is answered */
  static float p[TH_ELEMS];
  ck_assert_msg(ps_test_pull(agg, "hier", ids, 3, p, TH_ELEMS, 0, 0, &v, &eb) == 0, "%s", eb.msg);
  ps_chan_close(agg);
  th_finish(&x);
}
END_TEST

Suite *hier_suite(void) {
  Suite *s = suite_create("hier");
  TCase *tc = tcase_create("hier");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, test_hier_flags);
  tcase_add_test(tc, test_hier_spec_off_loop);
  tcase_add_test(tc, test_hier_root_restart);
  tcase_add_test(tc, test_hier_sigterm_forwards);
  tcase_add_test(tc, test_hier_sum_is_one_update);
  tcase_add_test(tc, test_hier_replaced_worker_not_over);
  tcase_add_test(tc, test_hier_half_failover_lost_push);
  tcase_add_test(tc, test_hier_degraded_moved_on);
  tcase_add_test(tc, test_hier_deferred_acks_none_pending);
  tcase_add_test(tc, test_hier_clip_sum);
  tcase_add_test(tc, test_hier_root_link_dead_ms);
  tcase_add_test(tc, test_hier_clip_topk);
  tcase_add_test(tc, test_hier_clocks_start_over);
  tcase_add_test(tc, test_hier_clock_entered);
  tcase_add_test(tc, test_hier_codec);
  tcase_add_test(tc, test_hier_replace);
  tcase_add_test(tc, test_hier_bsp_sums);
  tcase_add_test(tc, test_hier_ssp_bound);
  tcase_add_test(tc, test_hier_failover);
  tcase_add_test(tc, test_hier_dead_worker);
  tcase_add_test(tc, test_hier_root_killed_sync);
  suite_add_tcase(s, tc);
  /* an aggregator's own stall is no local worker's silence */
  TCase *ts = tcase_create("hier_stall");
  tcase_add_unchecked_fixture(ts, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(ts, 180);
  tcase_add_test(ts, test_hier_agg_stalled);
  tcase_add_test(ts, test_hier_agg_hung_failover);
  tcase_add_test(ts, test_hier_agg_full_probe_answers);
  suite_add_tcase(s, ts);
  /* a failed sum's waiting pulls (quick, no dataset: CK_RUN_CASE=hier_lost) */
  TCase *tl = tcase_create("hier_lost");
  tcase_add_unchecked_fixture(tl, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tl, 60);
  tcase_add_test(tl, test_hier_push_failed_pull_parked);
  tcase_add_test(tl, test_hier_push_failed_failover);
  suite_add_tcase(s, tl);
  /* a sum sent to an aggregator (quick, no dataset: CK_RUN_CASE=hier_sum) */
  tl = tcase_create("hier_sum");
  tcase_add_unchecked_fixture(tl, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tl, 60);
  tcase_add_test(tl, test_hier_sum_refused);
  suite_add_tcase(s, tl);
  return s;
}
