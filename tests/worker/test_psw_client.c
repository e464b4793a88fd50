/* Tests for psw_client against one real psd on loopback: pulls and pushes
 * through the client agree with direct tensor-channel pulls (sequential
 * and on the communication thread), versions are recorded; a shard
 * SIGKILLed and restarted while the client pulls is reported on stderr,
 * retried and resumed; a shard that stays down ends the pull within the
 * retry budget; a codec warm-up goes fp32 first, and the byte counters
 * survive a restart.  Under durability sync, with the fsync shim's gate
 * holding the shard's log syncs, deferred acks: a push/pull returns on the
 * pull while the push is not yet counted as acknowledged, and a push whose
 * shard died before its sync is counted unanswered.  A pull parked past
 * pull_timeout_ms is pulled again without a reconnect until the slow
 * worker's lease runs out; a shard that refuses pushes (DEGRADED: the
 * shim fails its syncs) is given up after workers.retry_ms, never
 * reconnected.  A step-out of the clock tables that missed the shard
 * (its gRPC port black-holed) is sent again before the pull at the
 * slowest live clock, which waited for the worker itself.
 *
 * Every psd started is recorded in shared memory so the unchecked
 * teardown stops it by PID even when a test failed half-way. */
#include <arpa/inet.h>
#include <math.h>
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
#include "ps_gpu.h"
#include "ps_model.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "psw_client.h"
#include "psw_coord.h"
#include "psw_graph.h"

#define PC_LR 0.5f

/* One test's cluster: a single shard. */
typedef struct pc_ctx {
  char dir[512], yaml[600], log[600];
  int gp, cp;
  pid_t pid;
  ps_config cfg;
  ps_gpu_backend *be;
  int sync;                /* durability sync, the fsync shim preloaded ... */
  char gate[600];          /* ... with its gate here */
  ps_test_shim_env shim;
} pc_ctx;

/* pc_start starts the shard and waits for both listeners. */
static void pc_start(pc_ctx *x) {
  x->pid = ps_test_psd(x->yaml, 0, x->log, x->sync ? x->shim.env : NULL);
  ck_assert_msg(ps_test_wait_port(x->cp, 15000) == 0 && ps_test_wait_port(x->gp, 5000) == 0,
                "psd did not start; see %s", x->log);
}

/* pc_init_extra writes a 1-shard cluster with EXTRA (top-level keys;
 * durability sync with the fsync shim's gate when SYNC), starts it and
 * loads the config. */
static void pc_init_extra(pc_ctx *x, const char *extra, int sync) {
  signal(SIGPIPE, SIG_IGN);
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  snprintf(x->yaml, sizeof x->yaml, "%s",
           sync ? ps_test_sync_yaml(x->dir, 1, extra, &x->gp, &x->cp)
                : ps_test_cluster_yaml(x->dir, 1, extra, &x->gp, &x->cp));
  snprintf(x->log, sizeof x->log, "%s/psd.log", x->dir);
  snprintf(x->gate, sizeof x->gate, "%s/gate", x->dir);
  x->sync = sync;
  if (sync) ps_test_shim_env_init(&x->shim, NULL, x->gate);
  pc_start(x);
  ps_errbuf eb;
  ck_assert_msg(ps_config_load(&x->cfg, x->yaml, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(ps_gpu_cpu_open(1, &x->be, &eb) == 0, "%s", eb.msg);
}

/* pc_init_mode: pc_init_extra with workers.retry_ms RETRY_MS. */
static void pc_init_mode(pc_ctx *x, uint32_t retry_ms, int sync) {
  char extra[128];
  snprintf(extra, sizeof extra, "workers:\n  retry_ms: %u\n", retry_ms);
  pc_init_extra(x, extra, sync);
}

static void pc_init(pc_ctx *x, uint32_t retry_ms) { pc_init_mode(x, retry_ms, 0); }

static void pc_fini(pc_ctx *x) {
  unlink(x->gate);
  if (x->pid > 0) ps_test_stop(x->pid, SIGTERM, 10000);
  ps_gpu_close(x->be);
  ps_config_release(&x->cfg);
}

/* pc_submit_codec registers model NAME: a 40-30-10 MLP graph (1570
 * parameters, several 1024-element chunks), SGD with PC_LR, pushes in
 * CODEC (NULL: fp32) after WARMUP steps. */
/* pc_submit_opts: pc_submit_full with clip_norm CLIP, the largest
 * tensor's own push codec BIG (NULL: none), replacing the model when
 * REPLACE. */
static void pc_submit_opts(pc_ctx *x, const char *name, const char *codec, uint32_t warmup,
                           const char *consistency, float clip, const char *big, int replace) {
  static const uint32_t layers[] = {40, 30, 10};
  ps_errbuf eb;
  uint8_t *buf;
  size_t len;
  psw_graph *g;
  Ps__ModelSpec *spec;
  ck_assert_msg(psw_graph_mlp_pack(name, layers, 3, PS_GPU_ACT_RELU, &buf, &len, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_graph_load(buf, len, &g, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_graph_to_spec(g, name, &spec, &eb) == 0, "%s", eb.msg);
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd";
  opt.lr = PC_LR;
  spec->optimizer = &opt;
  spec->seed = 3;
  char *had = spec->codec;
  if (codec) spec->codec = (char *)codec;
  spec->codec_warmup_steps = warmup;
  char *had_c = spec->consistency;
  if (consistency) spec->consistency = (char *)consistency;
  spec->clip_norm = clip;
  size_t bt = 0;
  for (size_t t = 0; t < spec->n_tensors; t++)
    if (spec->tensors[t]->shape[0] * (spec->tensors[t]->n_shape > 1 ? spec->tensors[t]->shape[1] : 1) >
        spec->tensors[bt]->shape[0] * (spec->tensors[bt]->n_shape > 1 ? spec->tensors[bt]->shape[1] : 1))
      bt = t;
  char *had_t = spec->tensors[bt]->codec;
  if (big) spec->tensors[bt]->codec = (char *)big;
  ps_rpc *r;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->gp);
  ck_assert_int_eq(ps_test_rpc_open(&r, addr, &eb), 0);
  ps_test_submit(r, spec, replace, 10000);
  ps_rpc_close(r);
  spec->optimizer = NULL;
  spec->codec = had;
  spec->consistency = had_c;
  spec->tensors[bt]->codec = had_t;
  psw_graph_spec_free(spec);
  psw_graph_free(g);
  free(buf);
}

static void pc_submit_full(pc_ctx *x, const char *name, const char *codec, uint32_t warmup,
                           const char *consistency) {
  pc_submit_opts(x, name, codec, warmup, consistency, 0, NULL, 0);
}

static void pc_submit_codec(pc_ctx *x, const char *name, const char *codec, uint32_t warmup) {
  pc_submit_full(x, name, codec, warmup, NULL);
}

static void pc_submit(pc_ctx *x, const char *name) { pc_submit_codec(x, name, NULL, 0); }

/* pc_open_acks opens a client of MODEL with NBUFS buffers, deferring
 * push answers when DEFER (psw_client invariant 8). */
static psw_client *pc_open_acks(pc_ctx *x, const char *model, int nbufs, int defer) {
  psw_client_conf cc = {.cfg = &x->cfg, .model = model, .worker = 0, .be = x->be,
                        .nbufs = nbufs, .io_timeout_ms = 5000, .defer_acks = defer};
  psw_client *c = NULL;
  ps_errbuf eb;
  int rc = psw_client_open(&c, &cc, &eb);
  ck_assert_msg(rc == 0, "psw_client_open: %s", eb.msg);
  return c;
}

static psw_client *pc_open(pc_ctx *x, const char *model, int nbufs) {
  return pc_open_acks(x, model, nbufs, 0);
}

/* pc_direct pulls every chunk of MODEL straight over a new channel into
 * a new array (caller frees): chunk ids in order concatenate to the flat
 * vector. */
static float *pc_direct(pc_ctx *x, const char *model, const ps_layout *l) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->cp);
  ps_chan_client *ch;
  ps_errbuf eb;
  ck_assert_msg(ps_test_chan_connect(&ch, addr, x->cfg.cluster, 5000, &eb) == 0, "%s", eb.msg);
  uint32_t *ids = calloc(l->nchunks, sizeof *ids);
  float *out = calloc(l->nparams, sizeof *out);
  for (uint32_t i = 0; i < l->nchunks; i++) ids[i] = i;
  uint64_t version;
  int rc = ps_test_pull(ch, model, ids, l->nchunks, out, l->nparams, 0, 0, &version, &eb);
  ck_assert_msg(rc == 0, "direct pull: %s", eb.msg);
  ps_chan_close(ch);
  free(ids);
  return out;
}

/* pc_same asserts N floats equal bit for bit. */
static void pc_same(const float *a, const float *b, uint64_t n, const char *what) {
  for (uint64_t i = 0; i < n; i++)
    ck_assert_msg(a[i] == b[i], "%s: element %llu: %g != %g", what, (unsigned long long)i,
                  (double)a[i], (double)b[i]);
}

/* pc_count: a psw_client_idle_once callback counting its runs in *ARG. */
static void pc_count(void *arg) { (*(int *)arg)++; }

START_TEST(test_client_matches_direct_pull) {
  pc_ctx x = {0};
  pc_init(&x, 10000);
  pc_submit(&x, "pc1");
  psw_client *c = pc_open(&x, "pc1", 2);
  const ps_layout *l = psw_client_layout(c);
  uint64_t n = psw_client_nparams(c);
  ck_assert_uint_eq(n, 40 * 30 + 30 + 30 * 10 + 10);
  ck_assert_uint_ge(l->nchunks, 3);
  ck_assert_str_eq(psw_client_spec(c)->name, "pc1");
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  float *d0 = pc_direct(&x, "pc1", l);
  pc_same(psw_client_params(c, 0), d0, n, "first pull");
  int nonzero = 0;
  for (uint64_t i = 0; i < n; i++) nonzero += d0[i] != 0;
  ck_assert_int_gt(nonzero, 1000); /* glorot weights, not an all-zero vector */
  /* Push then pull in one round trip: SGD moves every element by -lr*g. */
  float *g = psw_client_grads(c, 0);
  for (uint64_t i = 0; i < n; i++) g[i] = (float)((int)(i % 7) - 3) * 0.25f;
  int idled = 0; /* the idle work runs once, in this call only */
  psw_client_idle_once(c, pc_count, &idled);
  ck_assert_msg(psw_client_push_pull(c, 0, 0, 1, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(idled, 1);
  float *d1 = pc_direct(&x, "pc1", l);
  pc_same(psw_client_params(c, 1), d1, n, "pull behind push");
  for (uint64_t i = 0; i < n; i++)
    ck_assert_msg(fabsf(d1[i] - (d0[i] - PC_LR * g[i])) <= 1e-6f, "element %llu not updated",
                  (unsigned long long)i);
  ck_assert_uint_gt(psw_client_version(c, 1, 0), psw_client_version(c, 0, 0));
  /* The same through the communication thread, while this thread reads buffer 0. */
  float *g1 = psw_client_grads(c, 1);
  for (uint64_t i = 0; i < n; i++) g1[i] = 0.5f;
  ck_assert_int_eq(psw_client_start(c, 1, 1, 0, 2), 0);
  ck_assert_int_eq(psw_client_start(c, 1, 1, 0, 2), PS_EINVAL); /* one job at a time */
  ck_assert_msg(psw_client_wait(c, &eb) == 0, "%s", eb.msg);
  float *d2 = pc_direct(&x, "pc1", l);
  pc_same(psw_client_params(c, 0), d2, n, "threaded push/pull");
  for (uint64_t i = 0; i < n; i++) ck_assert(fabsf(d2[i] - (d1[i] - PC_LR * 0.5f)) <= 1e-6f);
  ck_assert_int_eq(psw_client_wait(c, &eb), 0); /* nothing started: 0 */
  ck_assert_msg(psw_client_pull_all(c, 0, 2, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(idled, 1);
  ck_assert_uint_eq(psw_client_reconnects(c), 0);
  free(d0);
  free(d1);
  free(d2);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* A restart thread: sleeps, then starts the shard again. */
typedef struct pc_restart {
  pc_ctx *x;
  int delay_ms;
} pc_restart;

static void *pc_restart_main(void *arg) {
  pc_restart *r = arg;
  usleep((useconds_t)r->delay_ms * 1000);
  pc_start(r->x);
  return NULL;
}

START_TEST(test_client_shard_restart) {
  pc_ctx x = {0};
  pc_init(&x, 20000);
  pc_submit(&x, "pc2");
  psw_client *c = pc_open(&x, "pc2", 1);
  const ps_layout *l = psw_client_layout(c);
  uint64_t n = psw_client_nparams(c);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  float *g = psw_client_grads(c, 0);
  for (uint64_t i = 0; i < n; i++) g[i] = 0.125f;
  ck_assert_msg(psw_client_push_pull(c, 0, 0, 0, 1, &eb) == 0, "%s", eb.msg);
  float *before = pc_direct(&x, "pc2", l);
  usleep(800 * 1000); /* past flush_interval_ms (200): the push is durable */
  ck_assert_int_eq(ps_test_stop(x.pid, SIGKILL, 5000) & 0x7f, SIGKILL);
  x.pid = 0;
  /* The client's stderr goes to a file we can read. */
  char errlog[600];
  snprintf(errlog, sizeof errlog, "%s/client.err", x.dir);
  fflush(stderr);
  int saved = dup(2);
  ck_assert(freopen(errlog, "w", stderr) != NULL);
  pc_restart rs = {&x, 1500};
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, pc_restart_main, &rs), 0);
  memset(psw_client_params(c, 0), 0, n * sizeof(float));
  int64_t t0 = ps_test_now_ms();
  int rc = psw_client_pull_all(c, 0, 1, &eb);
  int64_t took = ps_test_now_ms() - t0;
  pthread_join(th, NULL);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  ck_assert_msg(rc == 0, "pull across a restart: %s", eb.msg);
  ck_assert_msg(took >= 1000 && took < 15000, "pull took %lld ms", (long long)took);
  ck_assert_uint_ge(psw_client_reconnects(c), 1);
  pc_same(psw_client_params(c, 0), before, n, "pull after the restart");
  char *text = ps_test_read_file(errlog, NULL);
  ck_assert_msg(strstr(text, "reconnecting") != NULL, "no report of the lost shard: %s", text);
  ck_assert_msg(strstr(text, "is back") != NULL, "no report of the recovery: %s", text);
  free(text);
  /* And it goes on: a push/pull round after the restart works. */
  ck_assert_msg(psw_client_push_pull(c, 0, 1, 0, 2, &eb) == 0, "%s", eb.msg);
  float *after = pc_direct(&x, "pc2", l);
  pc_same(psw_client_params(c, 0), after, n, "round after the restart");
  ck_assert(fabsf(after[0] - (before[0] - PC_LR * 0.125f)) <= 1e-6f);
  free(before);
  free(after);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* pc_bytes reads the shard's raw and wire byte counters of MODEL. */
static void pc_bytes(pc_ctx *x, const char *model, uint64_t *raw, uint64_t *wire) {
  Ps__StatusReply *st = ps_test_status(x->gp);
  int found = 0;
  for (size_t i = 0; i < st->n_models; i++)
    if (!strcmp(st->models[i]->name, model)) {
      *raw = st->models[i]->bytes_raw, *wire = st->models[i]->bytes_wire;
      found = 1;
    }
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ck_assert_msg(found, "status has no model '%s'", model);
}

/* The codec warm-up: a model submitted with int8 pushes and 3 warm-up
 * steps gets the pushes of clocks 0-2 in fp32 and those from clock 3 on
 * in int8: per push, the shard's wire bytes grow by 4 bytes per parameter
 * (raw = wire) and then by int8's payload, and the client's push frames
 * shrink with them.  Then the byte counters survive a SIGTERM restart,
 * pull bytes after the last push included (the final flush writes them). */
START_TEST(test_client_codec_warmup) {
  pc_ctx x = {0};
  pc_init(&x, 20000);
  pc_submit_codec(&x, "pcw", "int8", 3);
  psw_client *c = pc_open(&x, "pcw", 1);
  const ps_layout *l = psw_client_layout(c);
  uint64_t n = psw_client_nparams(c);
  uint32_t *ids = calloc(l->nchunks, sizeof *ids);
  for (uint32_t i = 0; i < l->nchunks; i++) ids[i] = i;
  uint64_t int8_bytes = ps_layout_payload_bytes(l, ids, l->nchunks, PS_CODEC_INT8, 1);
  free(ids);
  ck_assert_uint_lt(int8_bytes, 4 * n / 2); /* the 1200-weight tensor goes int8 */
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  float *g = psw_client_grads(c, 0);
  uint64_t raw0, wire0, raw, wire, sent, recv, push0, push;
  pc_bytes(&x, "pcw", &raw0, &wire0);
  ck_assert_uint_eq(raw0, 4 * n); /* the pull */
  ck_assert_uint_eq(wire0, 4 * n);
  for (uint64_t t = 0; t < 6; t++) {
    for (uint64_t i = 0; i < n; i++) g[i] = 0.01f * (float)((i + t) % 7) - 0.03f;
    psw_client_bytes(c, &sent, &recv, &push0);
    ck_assert_msg(psw_client_push_all(c, 0, t, &eb) == 0, "push %llu: %s", (unsigned long long)t,
                  eb.msg);
    psw_client_bytes(c, &sent, &recv, &push);
    pc_bytes(&x, "pcw", &raw, &wire);
    ck_assert_uint_eq(raw - raw0, 4 * n);
    if (t < 3) {
      ck_assert_msg(wire - wire0 == 4 * n, "push %llu (warm-up) sent %llu payload bytes, not fp32's %llu",
                    (unsigned long long)t, (unsigned long long)(wire - wire0), (unsigned long long)(4 * n));
      ck_assert_uint_gt(push - push0, 4 * n);
    } else {
      ck_assert_msg(wire - wire0 == int8_bytes, "push %llu sent %llu payload bytes, not int8's %llu",
                    (unsigned long long)t, (unsigned long long)(wire - wire0),
                    (unsigned long long)int8_bytes);
      ck_assert_uint_lt(push - push0, 4 * n / 2);
    }
    raw0 = raw, wire0 = wire;
  }
  /* a periodic flush writes the pushes' state; the pull after it moves
   * only the counters, which no periodic flush writes: the final one must */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t pushed_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, flushed_ms = 0;
  for (int64_t t0 = ps_test_now_ms(); flushed_ms <= pushed_ms && ps_test_now_ms() - t0 < 10000;) {
    Ps__StatusReply *st = ps_test_status(x.gp);
    flushed_ms = st->last_flush_unix_ms;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    usleep(50 * 1000);
  }
  ck_assert_msg(flushed_ms > pushed_ms, "no flush within 10 s of the last push");
  ck_assert_msg(psw_client_pull_all(c, 0, 6, &eb) == 0, "%s", eb.msg);
  pc_bytes(&x, "pcw", &raw0, &wire0);
  ck_assert_uint_eq(raw0, raw + 4 * n);
  psw_client_close(c);
  ck_assert_msg(WIFEXITED(ps_test_stop(x.pid, SIGTERM, 10000)), "psd did not stop on SIGTERM");
  pc_start(&x);
  pc_bytes(&x, "pcw", &raw, &wire);
  ck_assert_msg(raw == raw0 && wire == wire0, "after a restart: raw %llu wire %llu, before %llu %llu",
                (unsigned long long)raw, (unsigned long long)wire, (unsigned long long)raw0,
                (unsigned long long)wire0);
  pc_fini(&x);
}
END_TEST

/* A tensor's own codec under an fp32 model (psctl submit --tensor-codec
 * W=int8 without --codec): the 1200-weight tensor's chunks go int8, the
 * rest fp32, in the shard's wire bytes and the client's push frames. */
START_TEST(test_client_tensor_codec) {
  pc_ctx x = {0};
  pc_init(&x, 20000);
  pc_submit_opts(&x, "pct", NULL, 0, NULL, 0, "int8", 0);
  psw_client *c = pc_open(&x, "pct", 1);
  const ps_layout *l = psw_client_layout(c);
  uint64_t n = psw_client_nparams(c), big = 0, bigchunks = 0;
  for (size_t t = 0; t < l->ntensors; t++)
    if (l->tensors[t].nelems > big) big = l->tensors[t].nelems, bigchunks = l->tensors[t].nchunks;
  ck_assert_uint_eq(big, 1200);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  float *g = psw_client_grads(c, 0);
  uint64_t raw0, wire0, raw, wire, sent, recv, push0, push;
  pc_bytes(&x, "pct", &raw0, &wire0);
  for (uint64_t i = 0; i < n; i++) g[i] = 0.01f * (float)(i % 7) - 0.03f;
  psw_client_bytes(c, &sent, &recv, &push0);
  ck_assert_msg(psw_client_push_all(c, 0, 0, &eb) == 0, "push: %s", eb.msg);
  psw_client_bytes(c, &sent, &recv, &push);
  pc_bytes(&x, "pct", &raw, &wire);
  ck_assert_uint_eq(raw - raw0, 4 * n);
  uint64_t want = 4 * (n - big) + big + 4 * bigchunks; /* int8: a scale per chunk */
  ck_assert_msg(wire - wire0 == want, "push sent %llu payload bytes, not %llu (W int8, rest fp32)",
                (unsigned long long)(wire - wire0), (unsigned long long)want);
  ck_assert_uint_lt(push - push0, 4 * n - 2 * big);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* Error feedback under a clip norm: the gradients pushed each have the
 * clip norm, but what topk and onebit encode is the gradient plus the
 * residual, whose norm grows past it; the client scales each chunk's
 * encoding down to the clip norm, so the shard (which refuses a decoded
 * chunk over it) takes every push. */
START_TEST(test_client_clip_codec) {
  static const char *const codecs[] = {"topk", "onebit", "int8"};
  pc_ctx x = {0};
  pc_init(&x, 20000);
  for (int k = 0; k < 3; k++) {
    char name[32];
    snprintf(name, sizeof name, "pcc%d", k);
    const float clip = 0.5f;
    pc_submit_opts(&x, name, codecs[k], 0, NULL, clip, NULL, 0);
    psw_client *c = pc_open(&x, name, 1);
    uint64_t n = psw_client_nparams(c);
    ps_errbuf eb;
    ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
    float *g = psw_client_grads(c, 0);
    for (uint64_t t = 0; t < 30; t++) {
      double norm = 0;
      for (uint64_t i = 0; i < n; i++) {
        g[i] = (float)((int)(i * 7 % 11) - 5) + 0.5f; /* the same each step: what topk leaves grows */
        norm += (double)g[i] * g[i];
      }
      for (uint64_t i = 0; i < n; i++) g[i] *= (float)(clip / sqrt(norm)); /* as psw_train clips */
      ck_assert_msg(psw_client_push_all(c, 0, t, &eb) == 0, "%s push %llu: %s", codecs[k],
                    (unsigned long long)t, eb.msg);
    }
    psw_client_close(c);
  }
  pc_fini(&x);
}
END_TEST

/* The shard enforces the model's codec: a client that fetched an int8
 * model pushes int8 after psctl submit --replace made it fp32 (the same
 * layout); the shard refuses it, nothing applied, and the client, asking
 * for the spec again, says the model was replaced ("... graph, clip norm,
 * codec or consistency"), the error psw exits 1 with. */
START_TEST(test_client_replaced_codec) {
  pc_ctx x = {0};
  pc_init(&x, 20000);
  pc_submit_codec(&x, "pcr", "int8", 0);
  psw_client *c = pc_open(&x, "pcr", 1);
  const ps_layout *l = psw_client_layout(c);
  uint64_t n = psw_client_nparams(c);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  float *g = psw_client_grads(c, 0);
  for (uint64_t i = 0; i < n; i++) g[i] = 0.01f * (float)(i % 7) - 0.03f;
  ck_assert_msg(psw_client_push_all(c, 0, 0, &eb) == 0, "push: %s", eb.msg);
  pc_submit_opts(&x, "pcr", NULL, 0, NULL, 0, NULL, 1);
  float *before = pc_direct(&x, "pcr", l);
  int err = psw_client_push_all(c, 0, 1, &eb);
  ck_assert_msg(err == PS_EINVAL &&
                    strstr(eb.msg, "replaced with another graph, clip norm, codec or consistency") &&
                    strstr(eb.msg, "came in int8"),
                "push after the replace: %d %s", err, eb.msg);
  float *after = pc_direct(&x, "pcr", l);
  pc_same(after, before, n, "the replaced model after a refused push");
  free(before);
  free(after);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

START_TEST(test_client_gives_up_in_budget) {
  pc_ctx x = {0};
  pc_init(&x, 1500);
  pc_submit(&x, "pc3");
  psw_client *c = pc_open(&x, "pc3", 1);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  ps_test_stop(x.pid, SIGKILL, 5000);
  x.pid = 0;
  int64_t t0 = ps_test_now_ms();
  int rc = psw_client_pull_all(c, 0, 1, &eb);
  int64_t took = ps_test_now_ms() - t0;
  ck_assert_int_eq(rc, PS_EUNAVAIL);
  ck_assert_msg(strstr(eb.msg, "unreachable") != NULL, "message: %s", eb.msg);
  ck_assert_msg(took >= 1000 && took < 6000, "gave up after %lld ms", (long long)took);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* A pull parked past pull_timeout_ms (bsp, worker 1 at clock 0 and
 * silent) is the shard answering, not the shard down: the client pulls
 * again without reconnecting, past workers.retry_ms, until worker 1's
 * lease runs out and the pull is served (psw_client invariant 12; it
 * used to reconnect after each timeout and say the shard was down). */
START_TEST(test_client_parked_timeout) {
  pc_ctx x = {0};
  pc_init_extra(&x, "workers:\n  retry_ms: 500\n  lease_ms: 2500\n  heartbeat_ms: 200\n"
                "training:\n  pull_timeout_ms: 300\n", 0);
  pc_submit_full(&x, "pc8", NULL, 0, "bsp");
  psw_client *c = pc_open(&x, "pc8", 1);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  const ps_layout *l = psw_client_layout(c);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x.gp);
  ps_rpc *r;
  ck_assert_int_eq(ps_test_rpc_open(&r, addr, &eb), 0);
  ck_assert_msg(ps_test_beat(r, 1, 0, &eb) == 0, "%s", eb.msg); /* leased: its lease runs out */
  ps_rpc_close(r);
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x.cp);
  ps_chan_client *ch;
  ck_assert_msg(ps_test_chan_connect(&ch, addr, x.cfg.cluster, 5000, &eb) == 0, "%s", eb.msg);
  uint32_t *ids = calloc(l->nchunks, sizeof *ids);
  float *out = calloc(l->nparams, sizeof *out);
  for (uint32_t i = 0; i < l->nchunks; i++) ids[i] = i;
  uint64_t version;
  ck_assert_msg(ps_test_pull(ch, "pc8", ids, l->nchunks, out, l->nparams, 1, 0, &version, &eb) == 0,
                "worker 1's pull: %s", eb.msg);
  ps_chan_close(ch);
  free(ids);
  free(out);
  int64_t t0 = ps_test_now_ms();
  int rc = psw_client_push_pull(c, 0, 0, 0, 1, &eb);
  int64_t took = ps_test_now_ms() - t0;
  ck_assert_msg(rc == 0, "%s", eb.msg);
  ck_assert_msg(took >= 1000 && took < 8000, "served after %lld ms", (long long)took);
  ck_assert_uint_eq(psw_client_reconnects(c), 0);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* A shard that refuses pushes (DEGRADED under sync: its log syncs fail)
 * keeps its connection, and the client, going on without its updates
 * there, gives up once it has refused them for workers.retry_ms
 * (psw_client invariant 12; it used to reconnect and pull everything
 * again at every step, with no bound). */
START_TEST(test_client_degraded_bound) {
  pc_ctx x = {0};
  pc_init_mode(&x, 1500, 1);
  pc_submit(&x, "pc9");
  psw_client *c = pc_open_acks(&x, "pc9", 1, 1);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  char fail[700];
  snprintf(fail, sizeof fail, "%s.fail", x.gate);
  ps_test_write_file(fail, "fail\n");
  int64_t t0 = ps_test_now_ms();
  int rc = 0;
  for (uint64_t t = 0; rc == 0 && ps_test_now_ms() - t0 < 8000; t++) {
    rc = psw_client_push_pull(c, 0, t, 0, t + 1, &eb);
    usleep(20000);
  }
  int64_t took = ps_test_now_ms() - t0;
  unlink(fail);
  ck_assert_msg(rc == PS_EDEGRADED && strstr(eb.msg, "refused pushes for 1500 ms"),
                "after %lld ms: %d %s", (long long)took, rc, rc ? eb.msg : "");
  ck_assert_msg(took >= 1500 && took < 5000, "gave up after %lld ms", (long long)took);
  ck_assert_uint_eq(psw_client_reconnects(c), 0);
  /* the refusals were answered: lost, but none of unknown fate (which
   * would send the trainer back to train those samples again) */
  ck_assert_uint_gt(psw_client_pushes_lost(c), 0);
  ck_assert_uint_eq(psw_client_pushes_unknown(c), 0);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* A push the shard refuses because it declared the worker dead (a
 * heartbeat gave it a lease, then silence past workers.lease_ms) counts
 * among the pushes of unknown fate (trained again) and, apart, as
 * refused for an expired lease (psw_client_pushes_expired): the trainer
 * says the lease expired, not that a connection broke (it said "a shard's
 * connection broke before its answer, or the shard was down"). */
START_TEST(test_client_expired_push) {
  pc_ctx x = {0};
  pc_init_extra(&x, "workers:\n  retry_ms: 1000\n  heartbeat_ms: 100\n  lease_ms: 300\n", 0);
  pc_submit(&x, "pc11");
  psw_client *c = pc_open(&x, "pc11", 1);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  ps_rpc *rpc;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x.gp);
  ck_assert_int_eq(ps_test_rpc_open(&rpc, addr, &eb), 0);
  Ps__HeartbeatRequest hb = PS__HEARTBEAT_REQUEST__INIT;
  hb.worker = 0;
  hb.model = "pc11";
  ProtobufCMessage *resp = NULL;
  ck_assert_msg(ps_rpc_call(rpc, "/ps.Ps/Heartbeat", &hb.base, &ps__heartbeat_reply__descriptor,
                            &resp, 5000, &eb) == 0, "%s", eb.msg);
  protobuf_c_message_free_unpacked(resp, NULL);
  ps_rpc_close(rpc);
  usleep(800 * 1000); /* past the lease: declared dead */
  int rc = psw_client_push_pull(c, 0, 0, 0, 1, &eb);
  ck_assert_msg(rc == PS_EEXPIRED, "push after the lease: %d %s", rc, rc ? eb.msg : "");
  ck_assert_uint_gt(psw_client_pushes_unknown(c), 0);
  ck_assert_uint_eq(psw_client_pushes_expired(c), 1);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* pc_stop_main sets the stop flag ARG after 6 s: a bound on a wait that
 * would otherwise last for ever. */
static volatile sig_atomic_t pc_stop_flag;
static void *pc_stop_main(void *arg) {
  (void)arg;
  for (int i = 0; i < 600 && !pc_stop_flag; i++) usleep(10000);
  pc_stop_flag = 1;
  return NULL;
}

/* pc_lost_push_open starts a 1-shard cluster (pulls parked at most
 * 300 ms) with bsp model NAME, opens worker 0's client on it (DEFER:
 * deferred acks; the stop flag pc_stop_flag, cleared), pulls, pushes
 * step 0 and pulls step 1, then SIGKILLs the shard and starts it again:
 * the client's connection is the dead one's.  *L: the model's layout. */
static psw_client *pc_lost_push_open(pc_ctx *x, const char *name, int defer,
                                     const ps_layout **l) {
  pc_init_extra(x, "workers:\n  retry_ms: 20000\ntraining:\n  pull_timeout_ms: 300\n", 0);
  pc_submit_full(x, name, NULL, 0, "bsp");
  pc_stop_flag = 0;
  psw_client_conf cc = {.cfg = &x->cfg, .model = name, .worker = 0, .be = x->be, .nbufs = 1,
                        .io_timeout_ms = 5000, .defer_acks = defer, .stop = &pc_stop_flag};
  psw_client *c = NULL;
  ps_errbuf eb;
  ck_assert_msg(psw_client_open(&c, &cc, &eb) == 0, "psw_client_open: %s", eb.msg);
  *l = psw_client_layout(c);
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_client_push_pull(c, 0, 0, 0, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_test_stop(x->pid, SIGKILL, 5000) & 0x7f, SIGKILL);
  pc_start(x);
  return c;
}

/* pc_raw_step sends, on a connection of its own to X's shard, worker
 * WORKER's pull (PUSH 0) or zero push (PUSH 1) of every chunk of model
 * NAME (layout L) at CLOCK, as another request or worker would. */
static void pc_raw_step(pc_ctx *x, const char *name, const ps_layout *l, int push,
                        uint32_t worker, uint64_t clock) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->cp);
  ps_chan_client *ch;
  ps_errbuf eb;
  ck_assert_msg(ps_test_chan_connect(&ch, addr, x->cfg.cluster, 5000, &eb) == 0, "%s", eb.msg);
  uint32_t *ids = calloc(l->nchunks, sizeof *ids);
  float *buf = calloc(l->nparams, sizeof *buf);
  for (uint32_t i = 0; i < l->nchunks; i++) ids[i] = i;
  uint64_t version;
  int err = push ? ps_test_push(ch, name, ids, l->nchunks, buf, l->nparams, worker, clock, 0,
                                &version, &eb)
                 : ps_test_pull(ch, name, ids, l->nchunks, buf, l->nparams, worker, clock,
                                &version, &eb);
  ck_assert_msg(err == 0, "worker %u's %s of step %llu: %s", worker, push ? "push" : "pull",
                (unsigned long long)clock, eb.msg);
  ps_chan_close(ch);
  free(ids);
  free(buf);
}

/* A push lost with the shard (SIGKILLed, started again) under bsp, after
 * another request of the worker put its clock on the new shard at that
 * step (a table model's sparse pull does: it comes first in a step): the
 * worker went on past the push and says so (psw_client invariant 13), so
 * its pull of the next step is served (its clock is raised as the push
 * would have).  It used to wait for itself ("slowest live worker 0 is at
 * clock 1") for ever; bounded here by a stop after 6 s.  Deferring acks
 * (DEFER) the lost push is the round's; one more push is lost with its
 * deferred answer in the second case. */
static void pc_lost_push(int defer) {
  pc_ctx x = {0};
  const ps_layout *l;
  psw_client *c = pc_lost_push_open(&x, "pcl", defer, &l);
  ps_errbuf eb;
  /* worker 0's clock on the new shard: 1 (its pull of step 1) */
  pc_raw_step(&x, "pcl", l, 0, 0, 1);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, pc_stop_main, NULL), 0);
  int64_t t0 = ps_test_now_ms();
  /* the push of step 1 goes into the old connection: lost */
  int rc = psw_client_push_pull(c, 0, 1, 0, 2, &eb);
  int64_t took = ps_test_now_ms() - t0;
  pc_stop_flag = 1;
  pthread_join(th, NULL);
  pc_stop_flag = 0;
  ck_assert_msg(rc == 0, "the pull of step 2 after %lld ms: %d %s", (long long)took, rc, eb.msg);
  ck_assert_uint_gt(psw_client_pushes_unknown(c), 0);
  /* and on: the next steps are served as ever */
  ck_assert_msg(psw_client_push_pull(c, 0, 2, 0, 3, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_client_settle(c, &eb) == 0, "%s", eb.msg);
  psw_client_close(c);
  pc_fini(&x);
}

START_TEST(test_client_lost_push_bsp) { pc_lost_push(0); }
END_TEST

START_TEST(test_client_lost_push_bsp_deferred) { pc_lost_push(1); }
END_TEST

/* A push lost with the shard (SIGKILLed, started again) under bsp, the
 * last before the worker stepped out of the clock tables (a rejoiner, at
 * its claim: psw_train's run_claim, up to its clock + 1), and then goes
 * on at the slowest live clock, above its own (the grant's start clock,
 * here worker 1's 3): the word it still owed about that push (clock 2,
 * said before its next pull) must not put it back into the table behind
 * that pull.  It did: the pull of clock 3 waited for "slowest live worker
 * 0 at clock 2", itself, for ever (bounded here by a stop after 6 s). */
START_TEST(test_client_lost_push_step_out) {
  pc_ctx x = {0};
  const ps_layout *l;
  psw_client *c = pc_lost_push_open(&x, "pcso", 0, &l);
  ps_errbuf eb;
  /* the push of step 1 goes into the old connection: lost, and no pull
   * follows it (the partition's last step) */
  ck_assert_msg(psw_client_push_all(c, 0, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_gt(psw_client_pushes_unknown(c), 0);
  /* worker 1 goes on to clock 3 on the new shard */
  pc_raw_step(&x, "pcso", l, 1, 1, 2);
  /* worker 0 steps out up to its clock (2) + 1, as a rejoiner's claim does */
  char addr[64];
  ps_rpc *rpc;
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x.gp);
  ck_assert_int_eq(ps_test_rpc_open(&rpc, addr, &eb), 0);
  Ps__HeartbeatRequest hb = PS__HEARTBEAT_REQUEST__INIT;
  hb.worker = 0;
  hb.model = "pcso";
  hb.idle = 1;
  hb.clock = 3;
  ProtobufCMessage *resp = NULL;
  ck_assert_msg(ps_rpc_call(rpc, "/ps.Ps/Heartbeat", &hb.base, &ps__heartbeat_reply__descriptor,
                            &resp, 5000, &eb) == 0, "%s", eb.msg);
  protobuf_c_message_free_unpacked(resp, NULL);
  ps_rpc_close(rpc);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, pc_stop_main, NULL), 0);
  int64_t t0 = ps_test_now_ms();
  int rc = psw_client_pull_all(c, 0, 3, &eb); /* at the slowest live clock */
  int64_t took = ps_test_now_ms() - t0;
  pc_stop_flag = 1;
  pthread_join(th, NULL);
  pc_stop_flag = 0;
  ck_assert_msg(rc == 0, "the pull of clock 3 after %lld ms: %d %s", (long long)took, rc, eb.msg);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* pc_fwd: a loopback address that black-holes the connections made in
 * the first OPEN_MS after pc_fwd_start (accepted, never read, closed
 * then: what was sent there never arrives), then forwards each new
 * connection to port TO (the shard's gRPC port): a shard whose gRPC
 * port does not answer for a while, its data path up (heartbeats there
 * time out, pulls do not). */
typedef struct pc_fwd {
  int lfd, port, to, open_ms;
  volatile int quit;
  pthread_t th;
} pc_fwd;

#define PC_FWD_FDS 16

/* pc_fwd_main: pc_fwd's thread. */
static void *pc_fwd_main(void *arg) {
  pc_fwd *f = arg;
  int64_t t0 = ps_test_now_ms();
  struct pollfd p[1 + PC_FWD_FDS]; /* the listener, then pairs: [1,2], [3,4], ... */
  int n = 1, held[PC_FWD_FDS], nheld = 0, open = 0;
  p[0] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
  char buf[65536];
  while (!f->quit) {
    if (!open && ps_test_now_ms() - t0 >= f->open_ms) {
      while (nheld) close(held[--nheld]);
      open = 1;
    }
    if (poll(p, (nfds_t)n, 20) <= 0) continue;
    for (int i = 1; i < n; i++) {
      if (!p[i].revents || p[i].fd < 0) continue;
      int peer = ((i - 1) ^ 1) + 1;
      ssize_t got = read(p[i].fd, buf, sizeof buf), off = 0;
      while (got > 0 && off < got) {
        ssize_t w = write(p[peer].fd, buf + off, (size_t)(got - off));
        if (w <= 0) break;
        off += w;
      }
      if (got <= 0 || off < got) { /* one side closed: close both */
        close(p[i].fd);
        close(p[peer].fd);
        p[i].fd = p[peer].fd = -1;
      }
    }
    if (!(p[0].revents & POLLIN)) continue;
    int a = accept(f->lfd, NULL, NULL);
    if (a < 0) continue;
    if (!open || n + 2 > 1 + PC_FWD_FDS) {
      if (nheld < PC_FWD_FDS) held[nheld++] = a;
      else close(a);
      continue;
    }
    int b = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->to),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (b >= 0 && connect(b, (struct sockaddr *)&to, sizeof to) == 0) {
      p[n++] = (struct pollfd){.fd = a, .events = POLLIN};
      p[n++] = (struct pollfd){.fd = b, .events = POLLIN};
    } else {
      close(a);
      if (b >= 0) close(b);
    }
  }
  while (nheld) close(held[--nheld]);
  for (int i = 1; i < n; i++)
    if (p[i].fd >= 0) close(p[i].fd);
  return NULL;
}

/* pc_fwd_start listens on a free loopback port (F->port) and starts F's
 * thread. */
static void pc_fwd_start(pc_fwd *f, int to, int open_ms) {
  f->to = to;
  f->open_ms = open_ms;
  f->quit = 0;
  f->lfd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(f->lfd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof a), 0);
  ck_assert_int_eq(getsockname(f->lfd, (struct sockaddr *)&a, &len), 0);
  ck_assert_int_eq(listen(f->lfd, 16), 0);
  f->port = ntohs(a.sin_port);
  ck_assert_int_eq(pthread_create(&f->th, NULL, pc_fwd_main, f), 0);
}

static void pc_fwd_stop(pc_fwd *f) {
  f->quit = 1;
  pthread_join(f->th, NULL);
  close(f->lfd);
}

/* A rejoiner's step-out of the clock tables (psw_coord_step_out, best
 * effort) that misses a shard (its beat timed out: 200 ms on a loaded
 * machine; here the shard's gRPC port does not answer for 500 ms) left
 * the worker there at its old clock, which a pull does not raise: its
 * pull at the grant's clock, the slowest live one (worker 1's 3), waited
 * on that shard for "slowest live worker 0 at clock 1", itself, for ever
 * (bounded here by a stop after 6 s).  psw_coord_stepped_out, which
 * run_claim calls before that pull, sends the step-out again until the
 * shard took it. */
START_TEST(test_client_step_out_missed) {
  pc_ctx x = {0};
  pc_init_extra(&x, "workers:\n  retry_ms: 20000\ntraining:\n  pull_timeout_ms: 300\n", 0);
  pc_submit_full(&x, "pcsm", NULL, 0, "bsp");
  pc_stop_flag = 0;
  psw_client_conf cc = {.cfg = &x.cfg, .model = "pcsm", .worker = 0, .be = x.be, .nbufs = 1,
                        .io_timeout_ms = 5000, .stop = &pc_stop_flag};
  psw_client *c = NULL;
  ps_errbuf eb;
  ck_assert_msg(psw_client_open(&c, &cc, &eb) == 0, "psw_client_open: %s", eb.msg);
  const ps_layout *l = psw_client_layout(c);
  /* worker 0 at clock 1; worker 1 goes on to clock 3 */
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_client_push_pull(c, 0, 0, 0, 1, &eb) == 0, "%s", eb.msg);
  pc_raw_step(&x, "pcsm", l, 1, 1, 2);
  /* worker 0's control plane reaches the shard through the forwarder */
  pc_fwd f;
  pc_fwd_start(&f, x.gp, 500);
  ps_config ccfg;
  ck_assert_msg(ps_config_load(&ccfg, x.yaml, &eb) == 0, "%s", eb.msg);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", f.port);
  free(ccfg.shards[0].grpc_addr);
  ccfg.shards[0].grpc_addr = strdup(addr);
  psw_coord *co = NULL;
  psw_coord_conf pcc = {.cfg = &ccfg, .model = "pcsm", .stop = &pc_stop_flag};
  ck_assert_msg(psw_coord_new(&co, &pcc, &eb) == 0, "%s", eb.msg);
  int64_t t0 = ps_test_now_ms();
  psw_coord_step_out(co, 2); /* timed out: missed */
  int rc = psw_coord_stepped_out(co, &eb); /* bounded by workers.retry_ms */
  ck_assert_msg(rc == 0, "step-out after %lld ms: %d %s", (long long)(ps_test_now_ms() - t0),
                rc, eb.msg);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, pc_stop_main, NULL), 0);
  t0 = ps_test_now_ms();
  rc = psw_client_pull_all(c, 0, 3, &eb); /* at the slowest live clock */
  int64_t took = ps_test_now_ms() - t0;
  pc_stop_flag = 1;
  pthread_join(th, NULL);
  pc_stop_flag = 0;
  ck_assert_msg(rc == 0, "the pull of clock 3 after %lld ms: %d %s", (long long)took, rc, eb.msg);
  /* taken once: a shard that answered is not asked again */
  ck_assert_int_eq(psw_coord_stepped_out(co, &eb), 0);
  psw_coord_free(co, 0, 0);
  pc_fwd_stop(&f);
  ps_config_release(&ccfg);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* pc_counts asserts the client's push counts of its one shard. */
static void pc_counts(const psw_client *c, uint64_t acked, uint64_t unanswered, const char *when) {
  uint64_t a = 0, u = 0;
  psw_client_push_counts(c, &a, &u, 1);
  ck_assert_msg(a == acked && u == unanswered, "%s: %llu acknowledged, %llu unanswered; want "
                "%llu, %llu", when, (unsigned long long)a, (unsigned long long)u,
                (unsigned long long)acked, (unsigned long long)unanswered);
}

/* Deferred acks under durability sync (psw_client invariant 8). */
START_TEST(test_client_deferred_ack) {
  pc_ctx x = {0};
  pc_init_mode(&x, 20000, 1);
  pc_submit(&x, "pc5");
  psw_client *c = pc_open_acks(&x, "pc5", 1, 1);
  uint64_t n = psw_client_nparams(c);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  float *p = psw_client_params(c, 0), *g = psw_client_grads(c, 0), p0 = p[0];
  for (uint64_t i = 0; i < n; i++) g[i] = 0.25f;
  /* The sync held: each round returns on its pull, which saw its push;
   * no push is acknowledged (nor lost) until its sync ran, and two
   * (PSW_CLIENT_ACK_DEPTH) may wait. */
  ps_test_write_file(x.gate, "held\n");
  ck_assert_msg(psw_client_push_pull(c, 0, 0, 0, 1, &eb) == 0, "%s", eb.msg);
  ck_assert(fabsf(p[0] - (p0 - PC_LR * 0.25f)) <= 1e-6f);
  ck_assert_uint_eq(psw_client_acks_pending(c), 1);
  pc_counts(c, 0, 0, "sync held");
  ck_assert_msg(psw_client_push_pull(c, 0, 1, 0, 2, &eb) == 0, "%s", eb.msg);
  ck_assert(fabsf(p[0] - (p0 - 2 * PC_LR * 0.25f)) <= 1e-6f);
  ck_assert_uint_eq(psw_client_acks_pending(c), PSW_CLIENT_ACK_DEPTH);
  pc_counts(c, 0, 0, "sync held, two rounds");
  unlink(x.gate);
  ck_assert_msg(psw_client_settle(c, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(psw_client_acks_pending(c), 0);
  pc_counts(c, 2, 0, "settled");
  /* Later rounds take the answers earlier ones left. */
  for (uint64_t t = 2; t < 5; t++)
    ck_assert_msg(psw_client_push_pull(c, 0, t, 0, t + 1, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_le(psw_client_acks_pending(c), PSW_CLIENT_ACK_DEPTH);
  ck_assert_msg(psw_client_settle(c, &eb) == 0, "%s", eb.msg);
  pc_counts(c, 5, 0, "five rounds");
  /* The shard dies while a push waits for its sync: that push is
   * unanswered (never acknowledged, never resent), and so is the next
   * round's, sent on the dead connection (as without deferred acks); the
   * round reconnects and pulls again, and the one after it pushes. */
  ps_test_write_file(x.gate, "held\n");
  ck_assert_msg(psw_client_push_pull(c, 0, 5, 0, 6, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(psw_client_acks_pending(c), 1);
  pc_counts(c, 5, 0, "sync held before the crash");
  ck_assert_int_eq(ps_test_stop(x.pid, SIGKILL, 5000) & 0x7f, SIGKILL);
  x.pid = 0;
  unlink(x.gate);
  pc_start(&x);
  ck_assert_msg(psw_client_push_pull(c, 0, 6, 0, 7, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_client_settle(c, &eb) == 0, "%s", eb.msg);
  pc_counts(c, 5, 2, "after the crash");
  ck_assert_msg(psw_client_push_pull(c, 0, 7, 0, 8, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_client_settle(c, &eb) == 0, "%s", eb.msg);
  pc_counts(c, 6, 2, "a round later");
  ck_assert_uint_ge(psw_client_reconnects(c), 1);
  psw_client_close(c);
  pc_fini(&x);
}
END_TEST

/* pc_in_region: P lies in a mapping of a shard's shared-memory region
 * (/proc/self/maps names it memfd:psd-chan). */
static int pc_in_region(const void *p) {
  char *maps = ps_test_read_file("/proc/self/maps", NULL);
  int in = 0;
  uintptr_t a = (uintptr_t)p;
  for (char *line = maps; line && *line && !in;) {
    char *nl = strchr(line, '\n');
    unsigned long lo = 0, hi = 0;
    if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && a >= lo && a < hi)
      in = strstr(line, "memfd:psd-chan") != NULL && (!nl || strstr(line, "memfd:psd-chan") < nl);
    line = nl ? nl + 1 : NULL;
  }
  free(maps);
  return in;
}

/* Shared memory (psw_client invariant 9): with one buffer on the CPU
 * backend the vectors lie in the shard's region, and rounds give bit for
 * bit what a client with workers.shared_memory off gets over TCP; with two
 * buffers the vectors stay the client's own (the region's areas are
 * copied through) and agree too. */
START_TEST(test_client_shared_vectors) {
  pc_ctx x = {0};
  pc_init(&x, 10000);
  pc_submit(&x, "pc7");
  pc_submit(&x, "pc7t");
  pc_submit(&x, "pc7d");
  psw_client *c = pc_open(&x, "pc7", 1);
  psw_client *d = pc_open(&x, "pc7d", 2);
  x.cfg.workers.shared_memory = 0;
  psw_client *t = pc_open(&x, "pc7t", 1);
  x.cfg.workers.shared_memory = 1;
  int mac = x.cfg.security.payload_mac;
  uint64_t n = psw_client_nparams(c);
  ck_assert_int_eq(pc_in_region(psw_client_params(c, 0)), !mac);
  ck_assert_int_eq(pc_in_region(psw_client_grads(c, 0)), !mac);
  ck_assert_int_eq(pc_in_region(psw_client_params(t, 0)), 0);
  ck_assert_int_eq(pc_in_region(psw_client_params(d, 0)), 0);
  ps_errbuf eb;
  ck_assert_msg(psw_client_pull_all(c, 0, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_client_pull_all(t, 0, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_client_pull_all(d, 1, 0, &eb) == 0, "%s", eb.msg);
  pc_same(psw_client_params(c, 0), psw_client_params(t, 0), n, "first pull");
  pc_same(psw_client_params(d, 1), psw_client_params(t, 0), n, "first pull, 2 buffers");
  for (int step = 0; step < 3; step++) {
    float *g[3] = {psw_client_grads(c, 0), psw_client_grads(t, 0), psw_client_grads(d, 1)};
    for (uint64_t i = 0; i < n; i++)
      g[0][i] = g[1][i] = g[2][i] = (float)((int)((i + (uint64_t)step) % 9) - 4) * 0.125f;
    ck_assert_msg(psw_client_push_pull(c, 0, (uint64_t)step, 0, (uint64_t)step + 1, &eb) == 0,
                  "%s", eb.msg);
    ck_assert_msg(psw_client_push_pull(t, 0, (uint64_t)step, 0, (uint64_t)step + 1, &eb) == 0,
                  "%s", eb.msg);
    ck_assert_msg(psw_client_push_pull(d, 1, (uint64_t)step, 1, (uint64_t)step + 1, &eb) == 0,
                  "%s", eb.msg);
    pc_same(psw_client_params(c, 0), psw_client_params(t, 0), n, "shared against TCP");
    pc_same(psw_client_params(d, 1), psw_client_params(t, 0), n, "copied against TCP");
  }
  float *direct = pc_direct(&x, "pc7", psw_client_layout(c));
  pc_same(psw_client_params(c, 0), direct, n, "shared against a direct pull");
  free(direct);
  uint64_t pay = n * sizeof(float);
  ck_assert_uint_eq(psw_client_shm_bytes(c), mac ? 0 : 7 * pay); /* 4 pulls, 3 pushes */
  ck_assert_uint_eq(psw_client_shm_bytes(d), mac ? 0 : 7 * pay);
  ck_assert_uint_eq(psw_client_shm_bytes(t), 0);
  uint64_t cs, cr, cp, ts, tr, tp;
  psw_client_bytes(c, &cs, &cr, &cp);
  psw_client_bytes(t, &ts, &tr, &tp);
  ck_assert_uint_ge(cs, 3 * pay); /* payloads count in the bytes either way */
  ck_assert_uint_ge(cr, 4 * pay);
  psw_client_close(c);
  psw_client_close(d);
  psw_client_close(t);
  pc_fini(&x);
}
END_TEST

Suite *psw_client_suite(void) {
  Suite *s = suite_create("psw_client");
  TCase *tc = tcase_create("one_shard");
  tcase_set_timeout(tc, 90);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tc, test_client_matches_direct_pull);
  tcase_add_test(tc, test_client_shard_restart);
  tcase_add_test(tc, test_client_codec_warmup);
  tcase_add_test(tc, test_client_tensor_codec);
  tcase_add_test(tc, test_client_clip_codec);
  tcase_add_test(tc, test_client_replaced_codec);
  tcase_add_test(tc, test_client_gives_up_in_budget);
  tcase_add_test(tc, test_client_parked_timeout);
  tcase_add_test(tc, test_client_degraded_bound);
  tcase_add_test(tc, test_client_expired_push);
  tcase_add_test(tc, test_client_lost_push_bsp);
  tcase_add_test(tc, test_client_lost_push_bsp_deferred);
  tcase_add_test(tc, test_client_lost_push_step_out);
  tcase_add_test(tc, test_client_step_out_missed);
  tcase_add_test(tc, test_client_deferred_ack);
  tcase_add_test(tc, test_client_shared_vectors);
  suite_add_tcase(s, tc);
  return s;
}
