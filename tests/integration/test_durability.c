/* durability sync end to end (issue 15): real psd processes.
 *
 *  - Crash loop: a shard under pushes from 3 channel connections and 1
 *    gRPC client is SIGKILLed at a random moment, restarted, and pulled.
 *    One channel connection asked for unordered acks (psd_chan invariant
 *    7b) and sends a pull behind each push, taking the pull's answer
 *    first: its pushes count as acknowledged only by their own answer.
 *    It also holds a shared-memory region (PS_CHAN_SHM_HOLD, where the
 *    run's security allows one), so its 64 KiB pushes are logged from
 *    the region (psd_chan invariant 11).
 *    Channel pushes go to 1..3 chunks, or to all 16 (64 KiB, logged from
 *    the channel's own buffer: psd_wal invariant 8, zero copy).  The
 *    third channel connection pushes in the model's codec, onebit (it
 *    carries -1 exactly), or in fp32 through the same coded path (a shard
 *    takes only those two), which the log holds as received and the
 *    replay decodes (psd_store's record kind 3).
 *    The model is one tensor of zeros with SGD, lr 1, and every gradient
 *    is -1, so a chunk's value is exactly the number of pushes applied to
 *    it.  The test keeps its own tally per chunk: pushes acknowledged, and
 *    pushes that were in flight when the shard died (they may or may not
 *    have been applied).  After each restart every chunk must hold
 *    acknowledged <= value <= acknowledged + in flight (no acknowledged
 *    push lost, none applied twice: each is sent once), the same value in
 *    every element, and the model version likewise between the pushes
 *    acknowledged and those plus the ones in flight.  The shard must have
 *    replayed records from its log in at least one restart (otherwise the
 *    test proves nothing about the log).  Every other restart follows a
 *    simulated power cut: psd runs with tests/server/fsync_shim.c
 *    preloaded, which records the size of each redo log segment at every
 *    fdatasync, and the test cuts the segments back to those sizes before
 *    the restart (a SIGKILL alone keeps the page cache), so an
 *    acknowledgement sent before the sync that covered its record would
 *    show up as a lost push.  A third of the restarts run on a
 *    "filesystem" refusing O_DIRECT opens, a third refusing O_DIRECT
 *    writes (the shim's PS_ODIRECT_EINVAL): the log's buffered fallbacks
 *    (psd_wal invariant 7) keep every acknowledged push too.  `make test` runs a few
 *    iterations; build/bin/ps_test_crash_loop (make test-long) runs 60.
 *  - A log left by a sync run, started under periodic: replayed, written
 *    into a snapshot and removed (the shard must not lose what sync
 *    acknowledged when the operator switches modes).
 *  - Disk full under sync: the shard's data_dir on a small tmpfs that the
 *    test fills; pushes are then refused with a message naming the redo
 *    log, the shard is DEGRADED (psctl status), nothing unsynced is
 *    acknowledged; with space again it is SERVING, and after SIGKILL every
 *    acknowledged push is there. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps_chan.h"
#include "psd_store.h"
#include "ps_codec.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "test_durability.h"

#define CL_CHUNKS 16
#define CL_ELEMS 1024 /* the cluster file's chunk_elems */
#define CL_PUSHERS 4  /* the last one pushes over gRPC */

typedef struct cl_tally {
  atomic_uint_fast64_t acked[CL_CHUNKS], maybe[CL_CHUNKS];
  atomic_uint_fast64_t acked_pushes, maybe_pushes;
  atomic_int stop;
  char chan_addr[64], grpc_addr[64];
} cl_tally;

typedef struct cl_pusher {
  cl_tally *t;
  int grpc;
  int unordered;             /* a channel asking for unordered acks */
  int coded;                 /* a channel pushing onebit or fp32, coded */
  int shm;                   /* its connection got a region */
  uint64_t acked;            /* its pushes acknowledged */
  uint64_t rng;
  pthread_t th;
} cl_pusher;

static uint64_t cl_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* cl_count adds one push of IDS to the acknowledged or the in-flight tally. */
static void cl_count(cl_tally *t, const uint32_t *ids, size_t n, int acked) {
  for (size_t i = 0; i < n; i++) atomic_fetch_add(acked ? &t->acked[ids[i]] : &t->maybe[ids[i]], 1);
  atomic_fetch_add(acked ? &t->acked_pushes : &t->maybe_pushes, 1);
}

/* cl_push_grpc pushes over gRPC Push; 0 or the error. */
static int cl_push_grpc(ps_rpc *r, const uint32_t *ids, size_t n, const float *g) {
  Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
  req.model = "cl";
  req.chunk_ids = (uint32_t *)ids;
  req.n_chunk_ids = n;
  req.grads.data = (uint8_t *)g;
  req.grads.len = n * CL_ELEMS * sizeof(float);
  ProtobufCMessage *rep = NULL;
  ps_errbuf eb;
  int err = ps_rpc_call(r, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor, &rep, 10000, &eb);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  return err;
}

/* cl_push_unordered pushes G to IDS on C (unordered acks) with a pull of
 * the same chunks behind it, whose answer it takes first; returns the
 * push's answer (0 or its error), *PULL_ERR the pull's. */
static int cl_push_unordered(ps_chan_client *c, const uint32_t *ids, size_t n, float *g,
                             float *scratch, int *pull_err) {
  ps_req r = {.model = "cl", .ids = ids, .nids = n};
  struct iovec src = {g, n * CL_ELEMS * sizeof(float)}, dst = {scratch, src.iov_len};
  uint64_t push, pull, v;
  ps_errbuf eb;
  int err = ps_chan_send_pushv(c, &r, &src, 1, &push, &eb);
  if (err < 0) return err;
  *pull_err = ps_chan_send_pullv(c, &r, &dst, 1, &pull, &eb);
  if (*pull_err == 0) *pull_err = ps_chan_recv_id(c, pull, &v, &eb);
  return ps_chan_recv_id(c, push, &v, &eb);
}

/* cl_push_coded pushes G (N chunks of -1) to IDS on C encoded in CODEC
 * into ENC; 0 or the push's error. */
static int cl_push_coded(ps_chan_client *c, const uint32_t *ids, size_t n, const float *g,
                         ps_codec_id codec, uint8_t *enc) {
  uint64_t len = 0;
  for (size_t i = 0; i < n; i++) {
    ps_codec_encode(codec, g, CL_ELEMS, PS_CODEC_TOPK_DEFAULT, enc + len);
    len += ps_codec_size(codec, CL_ELEMS, PS_CODEC_TOPK_DEFAULT);
  }
  ps_req r = {.model = "cl", .ids = ids, .nids = n, .codec = codec};
  struct iovec src = {enc, len};
  uint64_t id, v;
  ps_errbuf eb;
  int err = ps_chan_send_pushv(c, &r, &src, 1, &id, &eb);
  return err < 0 ? err : ps_chan_recv_id(c, id, &v, &eb);
}

/* cl_pusher_main pushes -1 to 1..3 random chunks at a time (a channel
 * pusher to all 16 in one push of 64 KiB one time in four: its gradients
 * are logged from the channel's buffer, psd_wal invariant 8) until told
 * to stop or a push fails (the shard died): that push counts as in
 * flight. */
static void *cl_pusher_main(void *arg) {
  cl_pusher *p = arg;
  cl_tally *t = p->t;
  static const float ones_neg[CL_CHUNKS * CL_ELEMS] = {0};
  float *g = malloc(sizeof ones_neg), *scratch = malloc(sizeof ones_neg);
  for (size_t i = 0; i < CL_CHUNKS * CL_ELEMS; i++) g[i] = -1.0f;
  ps_chan_client *c = NULL;
  ps_rpc *r = NULL;
  ps_errbuf eb;
  /* the unordered pusher holds a shared-memory region (where the run's
   * security allows one): its 64 KiB pushes are logged from there
   * (psd_chan invariant 11) */
  uint64_t held = (PS_CHAN_SHM_PUSH_AREAS + 1) * sizeof ones_neg;
  int err = p->grpc ? ps_test_rpc_open(&r, t->grpc_addr, &eb)
            : p->unordered
                ? ps_test_chan_connect_shm(&c, t->chan_addr, "test",
                                           PS_CHAN_UNORDERED_ACKS | PS_CHAN_SHM_HOLD, held, 10000,
                                           &eb)
                : ps_test_chan_connect_flags(&c, t->chan_addr, "test", 0, 10000, &eb);
  p->shm = c && ps_chan_shm(c, NULL, NULL);
  while (err == 0 && !atomic_load(&t->stop)) {
    uint32_t ids[CL_CHUNKS];
    size_t n = 1 + cl_rand(&p->rng) % 3;
    if (!p->grpc && cl_rand(&p->rng) % 4 == 0) n = CL_CHUNKS;
    uint32_t first = (uint32_t)(cl_rand(&p->rng) % CL_CHUNKS);
    for (size_t i = 0; i < n; i++) ids[i] = (first + (uint32_t)i * 5) % CL_CHUNKS;
    uint64_t v;
    int pull_err = 0;
    err = p->grpc        ? cl_push_grpc(r, ids, n, g)
          : p->coded     ? cl_push_coded(c, ids, n, g,
                                         cl_rand(&p->rng) % 2 ? PS_CODEC_FP32 : PS_CODEC_ONEBIT,
                                         (uint8_t *)scratch)
          : p->unordered ? cl_push_unordered(c, ids, n, g, scratch, &pull_err)
                         : ps_test_push(c, "cl", ids, n, g, n * CL_ELEMS, 0, 0, 0, &v, &eb);
    cl_count(t, ids, n, err == 0);
    p->acked += err == 0;
    if (err == 0) err = pull_err;
  }
  ps_chan_close(c);
  if (r) ps_rpc_close(r);
  free(g);
  free(scratch);
  return NULL;
}

/* cl_pull pulls every chunk (retrying while the shard is not serving yet)
 * into OUT and its version into *V. */
static void cl_pull(cl_tally *t, float *out, uint64_t *v, const char *log) {
  uint32_t ids[CL_CHUNKS];
  for (uint32_t i = 0; i < CL_CHUNKS; i++) ids[i] = i;
  int64_t end = ps_test_now_ms() + 15000;
  int err;
  ps_errbuf eb;
  do {
    ps_chan_client *c;
    err = ps_test_chan_connect(&c, t->chan_addr, "test", 10000, &eb);
    if (err == 0) err = ps_test_pull(c, "cl", ids, CL_CHUNKS, out, CL_CHUNKS * CL_ELEMS, 0, 0, v, &eb);
    ps_chan_close(c);
    if (err) usleep(20000);
  } while (err && ps_test_now_ms() < end);
  ck_assert_msg(err == 0, "pull after the restart: %s; see %s", eb.msg, log);
}

/* ps_test_dur_replayed: see test_durability.h. */
uint64_t ps_test_dur_replayed(const char *log) {
  size_t len;
  char *s = ps_test_read_file(log, &len);
  uint64_t n = 0;
  for (char *p = s; (p = strstr(p, "redo log replayed: ")) != NULL; p++)
    n += strtoull(p + strlen("redo log replayed: "), NULL, 10);
  free(s);
  return n;
}

/* cl_last_number returns the number after KEY in LOG's last line that
 * holds KEY (-1: none). */
static long long cl_last_number(const char *log, const char *key) {
  size_t len;
  char *s = ps_test_read_file(log, &len), *last = NULL;
  for (char *p = s; (p = strstr(p, key)) != NULL; p++) last = p;
  long long n = last ? strtoll(last + strlen(key), NULL, 10) : -1;
  free(s);
  return n;
}

/* cl_last_replayed returns the count of LOG's last "redo log replayed" line. */
static long long cl_last_replayed(const char *log) {
  return cl_last_number(log, "redo log replayed: ");
}

/* cl_status_args writes to OUT (N bytes) what `psctl status --json ARGS`
 * says of shard 0: the Python expression EXPR of its object `s`, printed;
 * "" when psctl or python failed. */
static void cl_status_args(const char *yaml, const char *dir, const char *args, const char *expr,
                           char *out, size_t n) {
  char cmd[4096], p[700];
  snprintf(p, sizeof p, "%s/status-out", dir);
  snprintf(cmd, sizeof cmd,
           "timeout 20 '%s' status --config '%s' --json %s 2>/dev/null | python3 -c 'import json,"
           "sys; s=json.load(sys.stdin)[\"shards\"][0]; print(%s)' > '%s' 2>/dev/null",
           ps_test_bin("psctl"), yaml, args, expr, p);
  out[0] = '\0';
  if (system(cmd) != 0) return;
  char *t = ps_test_read_file(p, NULL);
  snprintf(out, n, "%s", t);
  free(t);
}

/* cl_status_text: cl_status_args with no more arguments. */
static void cl_status_text(const char *yaml, const char *dir, const char *expr, char *out,
                           size_t n) {
  cl_status_args(yaml, dir, "", expr, out, n);
}

/* cl_status_num returns cl_status_text's number (-2: psctl or python
 * failed). */
static long long cl_status_num(const char *yaml, const char *dir, const char *expr) {
  char t[64];
  cl_status_text(yaml, dir, expr, t, sizeof t);
  return t[0] ? strtoll(t, NULL, 10) : -2;
}

/* cl_status_replayed returns what `psctl status --json` says shard 0's
 * start replayed (-1: no redo log shown). */
static long long cl_status_replayed(const char *yaml, const char *dir) {
  return cl_status_num(yaml, dir,
                       "-1 if s[\"redo_log\"] is None else s[\"redo_log\"][\"replayed\"]");
}

/* cl_power_cut cuts every segment in REDO back to the size its last
 * recorded fdatasync saw (FSYNC_LOG), or to nothing when none was
 * recorded: what a power cut would leave.  Returns the bytes dropped. */
static uint64_t cl_power_cut(const char *fsync_log, const char *redo) {
  size_t len;
  char *rec = access(fsync_log, R_OK) == 0 ? ps_test_read_file(fsync_log, &len) : strdup("");
  DIR *d = opendir(redo);
  ck_assert_msg(d != NULL, "no redo log directory '%s'", redo);
  struct dirent *e;
  uint64_t dropped = 0;
  while ((e = readdir(d)) != NULL) {
    if (!strstr(e->d_name, ".log")) continue;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", redo, e->d_name);
    long long synced = 0; /* the last line naming PATH */
    for (char *line = rec; *line;) {
      char *nl = strchr(line, '\n');
      char *sp = strchr(line, ' ');
      if (!nl || !sp || sp > nl) break;
      if ((size_t)(nl - sp - 1) == strlen(path) && !memcmp(sp + 1, path, strlen(path)))
        synced = atoll(line);
      line = nl + 1;
    }
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    if (st.st_size > synced) {
      dropped += (uint64_t)(st.st_size - synced);
      ck_assert_int_eq(truncate(path, synced), 0);
    }
  }
  closedir(d);
  free(rec);
  return dropped;
}

/* psd_wal_has_records_test: 1 when DIR holds a non-empty .log file or a
 * spare (.free). */
static int psd_wal_has_records_test(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d)) != NULL) {
    char p[PATH_MAX];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    found = (strstr(e->d_name, ".log") && stat(p, &st) == 0 && st.st_size > 0) ||
            strstr(e->d_name, ".free");
  }
  closedir(d);
  return found;
}

/* ps_test_dur_start: see test_durability.h. */
pid_t ps_test_dur_start(const char *yaml, const char *log, int gp, int cp, char **env) {
  pid_t pid = ps_test_psd(yaml, 0, log, env);
  ck_assert_msg(ps_test_wait_port(cp, 30000) == 0 && ps_test_wait_port(gp, 10000) == 0,
                "psd did not start; see %s", log);
  return pid;
}

static pid_t cl_start(const char *yaml, const char *log, int gp, int cp) {
  return ps_test_dur_start(yaml, log, gp, cp, NULL);
}

/* cl_sync_yaml: a one-shard cluster file under DIR with durability sync. */
static const char *cl_sync_yaml(const char *dir, int *gp, int *cp) {
  return ps_test_sync_yaml(dir, 1, NULL, gp, cp);
}

/* cl_submit registers the crash loop's model: zeros, SGD lr 1. */
static void cl_submit(int gp) {
  static uint32_t shape[] = {CL_CHUNKS, CL_ELEMS};
  Ps__TensorSpec ts = PS__TENSOR_SPEC__INIT, *tsp = &ts;
  ts.name = "w";
  ts.n_shape = 2;
  ts.shape = shape;
  ts.init = "zeros";
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd";
  opt.lr = 1;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = "cl";
  spec.codec = "onebit"; /* the coded pushes' (the shard takes it or fp32) */
  spec.n_tensors = 1;
  spec.tensors = &tsp;
  spec.optimizer = &opt;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", gp);
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, addr, &eb), 0);
  ps_test_submit(r, &spec, 0, 10000);
  ps_rpc_close(r);
}

/* ps_test_crash_loop: see test_durability.h. */
void ps_test_crash_loop(int iters) {
  ps_test_rng_init();
  const char *dir = ps_test_tmpdir();
  int gp, cp;
  char yaml[700], log[700];
  snprintf(yaml, sizeof yaml, "%s", cl_sync_yaml(dir, &gp, &cp));
  snprintf(log, sizeof log, "%s/psd0.log", dir);
  char fsync_log[700], redo[700];
  snprintf(fsync_log, sizeof fsync_log, "%s/fsync.log", dir);
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  ps_test_shim_env env;
  ps_test_shim_env_init(&env, fsync_log, NULL);
  cl_tally *t = calloc(1, sizeof *t);
  snprintf(t->chan_addr, sizeof t->chan_addr, "127.0.0.1:%d", cp);
  snprintf(t->grpc_addr, sizeof t->grpc_addr, "127.0.0.1:%d", gp);
  /* restarts on a "filesystem" that refuses O_DIRECT (the shim's
   * PS_ODIRECT_EINVAL), in its opens (ENV_ND: every third restart) or in
   * its writes (ENV_NW: the one after): the log goes on buffered after
   * O_DIRECT runs and back (psd_wal invariant 7) */
  char *env_nd[8], *env_nw[8], nodirect[] = "PS_ODIRECT_EINVAL=1";
  char nowrite[] = "PS_ODIRECT_EINVAL=write";
  size_t ne = 0;
  while (env.env[ne] && ne < 6) env_nd[ne] = env_nw[ne] = env.env[ne], ne++;
  env_nd[ne] = nodirect;
  env_nw[ne++] = nowrite;
  env_nd[ne] = env_nw[ne] = NULL;
  pid_t pid = ps_test_dur_start(yaml, log, gp, cp, env.env);
  uint64_t cut = 0;
  cl_submit(gp);
  uint64_t seed = ps_test_seed | 1;
  float *got = malloc(CL_CHUNKS * CL_ELEMS * sizeof(float));
  uint64_t coded_acked = 0;
  int held = 0; /* iterations whose unordered pusher pushed through a held region */
  for (int it = 0; it < iters; it++) {
    cl_pusher ps[CL_PUSHERS];
    atomic_store(&t->stop, 0);
    uint64_t acked0 = atomic_load(&t->acked_pushes);
    for (int i = 0; i < CL_PUSHERS; i++) {
      ps[i] = (cl_pusher){.t = t, .grpc = i == CL_PUSHERS - 1, .unordered = i == 1,
                          .coded = i == 2, .rng = cl_rand(&seed) | 1};
      ck_assert_int_eq(pthread_create(&ps[i].th, NULL, cl_pusher_main, &ps[i]), 0);
    }
    /* some pushes acknowledged, then a kill at a random moment */
    int64_t end = ps_test_now_ms() + 10000;
    while (atomic_load(&t->acked_pushes) < acked0 + 5 && ps_test_now_ms() < end) usleep(2000);
    usleep((useconds_t)(cl_rand(&seed) % 600) * 1000);
    int st = ps_test_stop(pid, SIGKILL, 5000);
    ck_assert_msg(WIFSIGNALED(st), "psd was not running at iteration %d; see %s", it, log);
    atomic_store(&t->stop, 1);
    for (int i = 0; i < CL_PUSHERS; i++) {
      pthread_join(ps[i].th, NULL);
      if (ps[i].coded) coded_acked += ps[i].acked;
      if (ps[i].unordered && ps[i].acked) held += ps[i].shm;
    }
    if (it % 2) cut += cl_power_cut(fsync_log, redo);
    pid = ps_test_dur_start(yaml, log, gp, cp,
                            it % 3 == 0 ? env_nd : it % 3 == 1 ? env_nw : env.env);
    uint64_t v;
    cl_pull(t, got, &v, log);
    for (int c = 0; c < CL_CHUNKS; c++) {
      uint64_t a = atomic_load(&t->acked[c]), m = atomic_load(&t->maybe[c]);
      float x = got[(size_t)c * CL_ELEMS];
      for (int e = 1; e < CL_ELEMS; e++)
        ck_assert_msg(got[(size_t)c * CL_ELEMS + e] == x, "chunk %d is not uniform (seed %llu)",
                      c, (unsigned long long)ps_test_seed);
      ck_assert_msg(x >= (float)a && x <= (float)(a + m),
                    "iteration %d, chunk %d: value %g, but %llu pushes were acknowledged and "
                    "%llu in flight (seed %llu); see %s", it, c, (double)x,
                    (unsigned long long)a, (unsigned long long)m,
                    (unsigned long long)ps_test_seed, log);
      atomic_store(&t->acked[c], (uint64_t)x); /* in-flight ones are decided now */
      atomic_store(&t->maybe[c], 0);
    }
    uint64_t a = atomic_load(&t->acked_pushes), m = atomic_load(&t->maybe_pushes);
    ck_assert_msg(v >= a && v <= a + m, "iteration %d: version %llu, %llu pushes acknowledged, "
                  "%llu in flight; see %s", it, (unsigned long long)v, (unsigned long long)a,
                  (unsigned long long)m, log);
    atomic_store(&t->acked_pushes, v);
    atomic_store(&t->maybe_pushes, 0);
  }
  ck_assert_msg(ps_test_dur_replayed(log) > 0, "no restart replayed a record from the log; see %s", log);
  ck_assert_msg(coded_acked > 0, "no encoded push was acknowledged; see %s", log);
  ck_assert_msg(held > 0 || ps_test_payload_mac(), /* the MAC: no region */
                "the unordered pusher never pushed through a held region; see %s", log);
  size_t loglen;
  char *text = ps_test_read_file(log, &loglen);
  ck_assert_msg(strstr(text, "refuses O_DIRECT opens") != NULL,
                "no start wrote the log buffered (PS_ODIRECT_EINVAL=1); see %s", log);
  ck_assert_msg(strstr(text, "refuses O_DIRECT writes") != NULL,
                "no start fell back to buffered writes (PS_ODIRECT_EINVAL=write); see %s", log);
  free(text);
  if (cut) fprintf(stderr, "crash loop: the power cuts dropped %llu unsynced log bytes\n",
                   (unsigned long long)cut);
  long long want = cl_last_replayed(log), shown = cl_status_replayed(yaml, dir);
  ck_assert_msg(shown == want, "psctl status shows %lld records replayed, the log %lld; see %s",
                shown, want, log);
  int st = ps_test_stop(pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d; see %s", st, log);
  free(got);
  free(t);
}

START_TEST(test_crash_loop_short) { ps_test_crash_loop(4); }
END_TEST

/* cl_pushes_snap starts the one-shard sync cluster of DIR (its yaml in
 * YAML, ports in *GP, *CP; with NO_SNAP no snapshot after the submit's:
 * every push is the log's alone), submits and sends N pushes, one per
 * sync; returns the shard.  cl_pushes: snapshots as usual. */
static pid_t cl_pushes_snap(const char *dir, char *yaml, size_t ylen, int *gp, int *cp, int n,
                            int no_snap) {
  char log[700], addr[64];
  snprintf(yaml, ylen, "%s", cl_sync_yaml(dir, gp, cp));
  if (no_snap)
    ps_test_file_replace(yaml, yaml, "flush_interval_ms: 200", "flush_interval_ms: 600000");
  snprintf(log, sizeof log, "%s/psd0.log", dir);
  snprintf(addr, sizeof addr, "127.0.0.1:%d", *cp);
  pid_t pid = cl_start(yaml, log, *gp, *cp);
  cl_submit(*gp);
  ps_chan_client *c;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_chan_connect(&c, addr, "test", 10000, &eb), 0);
  float g[CL_ELEMS];
  for (int i = 0; i < CL_ELEMS; i++) g[i] = -1.0f;
  uint64_t v;
  for (int i = 0; i < n; i++) {
    uint32_t id = (uint32_t)i % CL_CHUNKS;
    ck_assert_int_eq(ps_test_push(c, "cl", &id, 1, g, CL_ELEMS, 0, 0, 0, &v, &eb), 0);
  }
  ps_chan_close(c);
  return pid;
}

static pid_t cl_pushes(const char *dir, char *yaml, size_t ylen, int *gp, int *cp, int n) {
  return cl_pushes_snap(dir, yaml, ylen, gp, cp, n, 0);
}

/* cl_disk_bytes checks that `psctl status` counts the redo log of DIR's
 * shard in its size on disk. */
static void cl_disk_bytes(const char *dir, const char *yaml) {
  char redo[800], cmd[2000], p[800];
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  snprintf(p, sizeof p, "%s/redo-bytes", dir);
  snprintf(cmd, sizeof cmd, "du -s -B1 '%s' | cut -f1 > '%s'", redo, p);
  ck_assert_int_eq(system(cmd), 0);
  char *t = ps_test_read_file(p, NULL);
  long long rb = strtoll(t, NULL, 10), db = cl_status_num(yaml, dir, "s[\"disk_bytes\"]");
  free(t);
  ck_assert_msg(db >= rb - 4096, "disk_bytes %lld, the redo log alone %lld", db, rb);
}

START_TEST(test_sync_log_then_periodic) {
  const char *dir = ps_test_tmpdir();
  int gp, cp;
  char yaml[700], log[700], redo[700], addr[64];
  ps_test_stop(cl_pushes(dir, yaml, sizeof yaml, &gp, &cp, 200), SIGKILL, 5000);
  snprintf(log, sizeof log, "%s/psd0.log", dir);
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  snprintf(addr, sizeof addr, "127.0.0.1:%d", cp);
  uint64_t v;
  /* the same cluster under periodic */
  ps_test_file_replace(yaml, yaml, "  mode: sync\n", "  mode: periodic\n");
  pid_t pid = cl_start(yaml, log, gp, cp);
  cl_tally t;
  snprintf(t.chan_addr, sizeof t.chan_addr, "%s", addr);
  float *got = malloc(CL_CHUNKS * CL_ELEMS * sizeof(float));
  cl_pull(&t, got, &v, log);
  ck_assert_uint_eq(v, 200);
  for (int k = 0; k < CL_CHUNKS; k++)
    ck_assert_msg(got[(size_t)k * CL_ELEMS] == (float)(200 / CL_CHUNKS + (k < 200 % CL_CHUNKS)),
                  "chunk %d: %g; see %s", k, (double)got[(size_t)k * CL_ELEMS], log);
  free(got);
  ck_assert_msg(cl_last_replayed(log) > 0, "the periodic start replayed nothing; see %s", log);
  ck_assert_msg(!psd_wal_has_records_test(redo), "the log in '%s' was not removed", redo);
  /* the replayed state went into a snapshot: psctl status does not say "never" */
  ck_assert_int_gt(cl_status_num(yaml, dir, "s[\"last_flush_unix_ms\"]"), 0);
  /* and it says what the replay did, with no redo log (before: redo_log
   * null and the replay nowhere but in psd's log) */
  long long want = cl_last_replayed(log);
  ck_assert_int_eq(cl_status_replayed(yaml, dir), -1);
  ck_assert_int_eq(cl_status_num(yaml, dir, "-1 if s.get(\"start_replay\") is None else "
                                 "s[\"start_replay\"][\"replayed\"]"), want);
  char out[700], cmd[2000];
  snprintf(out, sizeof out, "%s/status-text", dir);
  snprintf(cmd, sizeof cmd, "timeout 20 '%s' status --config '%s' > '%s' 2>&1",
           ps_test_bin("psctl"), yaml, out);
  ck_assert_int_eq(system(cmd), 0);
  char *txt = ps_test_read_file(out, NULL), line[200];
  snprintf(line, sizeof line, "no redo log (durability periodic); start replayed %lld records", want);
  ck_assert_msg(strstr(txt, line), "no '%s' in psctl status: %s", line, txt);
  free(txt);
  int st = ps_test_stop(pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
}
END_TEST

/* Right after a start that replayed the log, `psctl status` does not say
 * FLUSHED "never": the restored state is on disk (the snapshot, and the
 * log it replayed, which it keeps until the next snapshot); it said so
 * until the first snapshot, a flush_interval_ms later. */
START_TEST(test_flushed_after_replay) {
  const char *dir = ps_test_tmpdir();
  int gp, cp;
  char yaml[700], log[700];
  ps_test_stop(cl_pushes(dir, yaml, sizeof yaml, &gp, &cp, 50), SIGKILL, 5000);
  ps_test_file_replace(yaml, yaml, "flush_interval_ms: 200\n", "flush_interval_ms: 600000\n");
  snprintf(log, sizeof log, "%s/psd0-restart.log", dir);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  long long t0 = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  pid_t pid = cl_start(yaml, log, gp, cp);
  ck_assert_msg(cl_last_replayed(log) > 0, "nothing replayed; see %s", log);
  long long lf = cl_status_num(yaml, dir, "s[\"last_flush_unix_ms\"]");
  ck_assert_msg(lf >= t0, "last_flush_unix_ms %lld after a start at %lld; see %s", lf, t0, log);
  int st = ps_test_stop(pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
}
END_TEST

/* A store and a log keep one id: another store's redo directory put in
 * place of a store's own is refused at the start (it used to be replayed
 * onto the store, which then held neither's state); a removed log is a
 * warning that names what may be lost, and a new log starts. */
START_TEST(test_foreign_log_refused) {
  char dx[700], dy[700], yx[700], yy[700], log[800], redo[800], other[800];
  int gx, cx, gy, cy;
  snprintf(dx, sizeof dx, "%s/x", ps_test_tmpdir());
  snprintf(dy, sizeof dy, "%s/y", ps_test_tmpdir());
  ck_assert_int_eq(mkdir(dx, 0700), 0);
  ck_assert_int_eq(mkdir(dy, 0700), 0);
  pid_t pid = cl_pushes(dx, yx, sizeof yx, &gx, &cx, 20);
  cl_disk_bytes(dx, yx);
  ps_test_stop(pid, SIGTERM, 15000); /* x: a clean stop, a snapshot */
  ps_test_stop(cl_pushes(dy, yy, sizeof yy, &gy, &cy, 200), SIGKILL, 5000); /* y: its log */
  snprintf(redo, sizeof redo, "%s/shard0/redo", dx);
  snprintf(other, sizeof other, "%s/shard0/redo", dy);
  snprintf(log, sizeof log, "%s/psd0-foreign.log", dx);
  char cmd[3000];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s' '%s'", redo, other, redo);
  ck_assert_int_eq(system(cmd), 0);
  pid = ps_test_psd(yx, 0, log, NULL);
  int st = ps_test_wait_pid(pid, 30000);
  ck_assert_msg(st != -1, "psd started on another store's log; see %s", log);
  size_t len;
  char *text = ps_test_read_file(log, &len);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0 && strstr(text, "is not the log of store"),
                "psd ended with %d; see %s", st, log);
  free(text);
  /* its id file removed: refused too (it was taken as a log from before
   * ids and its 200 records replayed onto x's store) */
  snprintf(cmd, sizeof cmd, "rm '%s/id'", redo);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(log, sizeof log, "%s/psd0-noid.log", dx);
  pid = ps_test_psd(yx, 0, log, NULL);
  st = ps_test_wait_pid(pid, 30000);
  ck_assert_msg(st != -1, "psd started on another store's log without its id; see %s", log);
  text = ps_test_read_file(log, &len);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0 && strstr(text, "holds records but no id") &&
                    strstr(text, "refusing to replay it") && strstr(text, "printf 'psd redo log "),
                "psd ended with %d; see %s", st, log);
  ck_assert_msg(!strstr(text, "redo log replayed"), "see %s", log);
  free(text);
  /* the log removed: a warning, then the snapshot's state */
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", redo);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(log, sizeof log, "%s/psd0-removed.log", dx);
  pid = cl_start(yx, log, gx, cx);
  ps_test_stop(pid, SIGTERM, 15000);
  text = ps_test_read_file(log, &len);
  ck_assert_msg(strstr(text, "holds no log and no id") && strstr(text, "are lost"), "see %s", log);
  free(text);
}
END_TEST

/* cl_start_refused starts DIR's shard on YAML, its log DIR/NAME (path in
 * LOG, LLEN bytes), and waits up to 30 s for it to end (killed past
 * that: status -1 in *ST); returns the log's text (caller frees). */
static char *cl_start_refused(const char *yaml, const char *dir, const char *name, char *log,
                              size_t llen, int *st) {
  snprintf(log, llen, "%s/%s", dir, name);
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  *st = ps_test_wait_pid(pid, 30000);
  if (*st == -1) ps_test_stop(pid, SIGKILL, 5000);
  return ps_test_read_file(log, NULL);
}

/* A log the replay refuses as damaged (a record acknowledged long before
 * the last group, its payload flipped) says how to start anyway and what
 * it costs; doing what it says (the redo directory moved away) starts the
 * shard from its snapshot with a warning.  The message said only what was
 * wrong, and an operator was left guessing (an outside audit). */
START_TEST(test_corrupt_log_hint) {
  const char *dir = ps_test_tmpdir();
  int gp, cp;
  char yaml[700], redo[700], cmd[3000];
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  /* 40 groups, none in a snapshot */
  ps_test_stop(cl_pushes_snap(dir, yaml, sizeof yaml, &gp, &cp, 40, 1), SIGKILL, 5000);
  /* the first segment's first record: its payload's byte 8 flipped */
  snprintf(cmd, sizeof cmd,
           "f=$(ls '%s'/*.log | head -1) && printf '\\377' | dd of=\"$f\" bs=1 seek=24 "
           "conv=notrunc status=none", redo);
  ck_assert_int_eq(system(cmd), 0);
  char bad[700], want[900];
  int st;
  char *text = cl_start_refused(yaml, dir, "psd0-corrupt.log", bad, sizeof bad, &st);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0, "psd started on a damaged log (%d); see %s",
                st, bad);
  snprintf(want, sizeof want, "move the whole directory '%s' away", redo);
  ck_assert_msg(strstr(text, "cannot recover from the redo log") && strstr(text, want) &&
                    strstr(text, "losing the pushes acknowledged after it"),
                "no hint '%s' in %s", want, bad);
  free(text);
  /* what it says: the shard starts from its snapshot, the loss said */
  snprintf(cmd, sizeof cmd, "mv '%s' '%s.bad'", redo, redo);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(bad, sizeof bad, "%s/psd0-moved.log", dir);
  st = ps_test_stop(cl_start(yaml, bad, gp, cp), SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
  text = ps_test_read_file(bad, NULL);
  ck_assert_msg(strstr(text, "holds no log and no id") && strstr(text, "are lost"), "see %s", bad);
  free(text);
}
END_TEST

/* A log the replay cannot use for a system call's failure, not for its
 * contents (here its segment immutable, chattr +i: the open for the
 * replay's sync fails, as for a segment the shard's user may not write),
 * gets the call's error and no advice to move the log away: the log is
 * whole, and moving it would lose the pushes acknowledged after the
 * snapshot for nothing.  The hint for a damaged log was given for any
 * PS_EIO of the replay, this one included ("... give its user write
 * access). To start from the last snapshot instead, losing the pushes
 * acknowledged after it, move the whole directory ... away"). */
START_TEST(test_log_io_error_no_hint) {
  const char *dir = ps_test_tmpdir();
  int gp, cp;
  char yaml[700], redo[700], seg[800], cmd[3000], log[700];
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  ps_test_stop(cl_pushes_snap(dir, yaml, sizeof yaml, &gp, &cp, 10, 1), SIGKILL, 5000);
  snprintf(seg, sizeof seg, "%s/seg", dir);
  snprintf(cmd, sizeof cmd, "ls '%s'/*.log | head -1 > '%s'", redo, seg);
  ck_assert_int_eq(system(cmd), 0);
  char *f = ps_test_read_file(seg, NULL);
  f[strcspn(f, "\n")] = 0;
  snprintf(cmd, sizeof cmd, "chattr +i '%s'", f);
  ck_assert_msg(system(cmd) == 0, "chattr +i '%s' failed (root on ext4 or xfs needed)", f);
  int st;
  char *text = cl_start_refused(yaml, dir, "psd0-immutable.log", log, sizeof log, &st);
  snprintf(cmd, sizeof cmd, "chattr -i '%s'", f); /* before any assertion: the dir is removed */
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0,
                "psd started on an immutable segment (%d); see %s", st, log);
  ck_assert_msg(strstr(text, "cannot recover from the redo log") &&
                    strstr(text, "give its user write access"), "see %s", log);
  ck_assert_msg(!strstr(text, "move the whole directory"),
                "advice to move a whole log away for a system call's failure; see %s", log);
  free(text);
  free(f);
  /* the segment writable again, the shard starts on its log, nothing lost */
  snprintf(log, sizeof log, "%s/psd0-again.log", dir);
  st = ps_test_stop(cl_start(yaml, log, gp, cp), SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
  text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "redo log replayed: 10 records"), "see %s", log);
  free(text);
}
END_TEST

/* cl_store_id reads (and, SET >= 0, stores with pending SET) the log id
 * of DIR's shard 0 store, psd stopped; returns whether it was pending. */
static int cl_store_id(const char *dir, uint64_t *id, int set) {
  char sd[800];
  snprintf(sd, sizeof sd, "%s/shard0", dir);
  uint32_t ids[] = {0};
  psd_store_opts o = {.dir = sd, .shard_index = 0, .shard_ids = ids, .nshards = 1,
                      .chunk_elems = 1024};
  psd_store *s;
  ps_errbuf eb;
  int pending = 0;
  ck_assert_msg(psd_store_open(&s, &o, &eb) == 0, "open '%s': %s", sd, eb.msg);
  ck_assert_msg(psd_store_log_id(s, id, &pending, &eb) == 0, "%s", eb.msg);
  if (set >= 0) ck_assert_msg(psd_store_set_log_id(s, *id, set, &eb) == 0, "%s", eb.msg);
  psd_store_close(s);
  return pending;
}

/* A store and a log from before ids get one in two writes, the store's
 * marked pending until the log's is written: a start stopped between them
 * (here: the mark set by hand, the log's id file removed) leaves a store
 * with an id beside a log with records and none, which the next start
 * finishes (the log replayed, its id written, the mark cleared) instead of
 * refusing it as a log whose id was removed. */
START_TEST(test_log_id_pending_finished) {
  const char *dir = ps_test_tmpdir();
  int gp, cp;
  char yaml[700], log[700], p[800];
  ps_test_stop(cl_pushes(dir, yaml, sizeof yaml, &gp, &cp, 200), SIGKILL, 5000);
  uint64_t sid = 0, lid = 0;
  ck_assert_int_eq(cl_store_id(dir, &sid, 1), 0);
  ck_assert_uint_ne(sid, 0);
  snprintf(p, sizeof p, "%s/shard0/redo/id", dir);
  ck_assert_int_eq(unlink(p), 0);
  snprintf(log, sizeof log, "%s/psd0-pending.log", dir);
  pid_t pid = cl_start(yaml, log, gp, cp);
  cl_tally t;
  snprintf(t.chan_addr, sizeof t.chan_addr, "127.0.0.1:%d", cp);
  float *got = malloc(CL_CHUNKS * CL_ELEMS * sizeof(float));
  uint64_t v;
  cl_pull(&t, got, &v, log);
  free(got);
  ck_assert_uint_eq(v, 200);
  int st = ps_test_stop(pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
  size_t len;
  char *text = ps_test_read_file(log, &len);
  ck_assert_msg(strstr(text, "stopped between the store's write and the log's"), "see %s", log);
  free(text);
  char *idt = ps_test_read_file(p, &len);
  ck_assert_int_eq(sscanf(idt, "psd redo log %16" SCNx64, &lid), 1);
  free(idt);
  ck_assert_uint_eq(lid, sid);
  ck_assert_int_eq(cl_store_id(dir, &lid, -1), 0); /* the mark cleared */
}
END_TEST

/* ---- disk full under sync ------------------------------------------------------ */

static ps_test_tmpfs du; /* du.mnt: shard 0's data_dir */

static void du_setup(void) {
  ps_test_procs_setup();
  ps_test_tmpfs_make(&du, "ps_test_dur", "size=96m");
}

static void du_teardown(void) {
  ps_test_procs_teardown();
  ps_test_tmpfs_remove(&du);
}

/* du_fill writes PATH until the filesystem is full. */
static void du_fill(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  ck_assert_int_ge(fd, 0);
  static char buf[1 << 16];
  while (write(fd, buf, sizeof buf) > 0) {
  }
  while (write(fd, buf, 512) > 0) {
  }
  close(fd);
}

/* du_state returns shard 0's state in OUT and why it is in it
 * (state_why) in WHY (WN bytes), as `psctl status --json` says. */
static void du_state(const char *yaml, const char *dir, char *out, size_t n, char *why, size_t wn) {
  char t[800];
  cl_status_text(yaml, dir, "s[\"state\"] + \"\\n\" + s[\"state_why\"]", t, sizeof t);
  char *nl = t + strcspn(t, "\n");
  snprintf(out, n, "%.*s", (int)(nl - t), t);
  snprintf(why, wn, "%.*s", *nl ? (int)strcspn(nl + 1, "\n") : 0, *nl ? nl + 1 : "");
}

/* A sync shard 0 on the fixture's disk, model "cl" submitted, a channel
 * client to it and a gradient of -1 for every chunk (du_open). */
typedef struct du_shard {
  int gp, cp;
  char yaml[700], log[700], addr[64];
  pid_t pid;
  ps_chan_client *c;
  float *g;                  /* CL_CHUNKS * CL_ELEMS, all -1 (the caller frees) */
  uint32_t ids[CL_CHUNKS];   /* every chunk */
} du_shard;

static void du_open(du_shard *d, const char *flush_interval_ms) {
  snprintf(d->yaml, sizeof d->yaml, "%s", cl_sync_yaml(du.dir, &d->gp, &d->cp));
  if (flush_interval_ms) {
    char to[64];
    snprintf(to, sizeof to, "  flush_interval_ms: %s\n", flush_interval_ms);
    ps_test_file_replace(d->yaml, d->yaml, "  flush_interval_ms: 200\n", to);
  }
  snprintf(d->log, sizeof d->log, "%s/psd0.log", du.dir);
  d->pid = cl_start(d->yaml, d->log, d->gp, d->cp);
  cl_submit(d->gp);
  ps_errbuf eb;
  snprintf(d->addr, sizeof d->addr, "127.0.0.1:%d", d->cp);
  ck_assert_int_eq(ps_test_chan_connect(&d->c, d->addr, "test", 10000, &eb), 0);
  d->g = malloc(CL_CHUNKS * CL_ELEMS * sizeof(float));
  ck_assert_ptr_nonnull(d->g);
  for (size_t i = 0; i < CL_CHUNKS * CL_ELEMS; i++) d->g[i] = -1.0f;
  for (uint32_t i = 0; i < CL_CHUNKS; i++) d->ids[i] = i;
}

/* du_wait_serving waits up to 15 s for D's shard to be SERVING. */
static void du_wait_serving(const du_shard *d) {
  char state[64], why[600];
  int64_t end = ps_test_now_ms() + 15000;
  do {
    du_state(d->yaml, du.dir, state, sizeof state, why, sizeof why);
  } while (strcmp(state, "SERVING") && ps_test_now_ms() < end && usleep(100000) == 0);
  ck_assert_msg(!strcmp(state, "SERVING"), "state %s, want SERVING; see %s", state, d->log);
}

START_TEST(test_disk_full_sync) {
  if (!du.mounted) PS_SKIP("%s", du.why);
  du_shard d;
  du_open(&d, NULL);
  char filler[700], state[64], why[600];
  snprintf(filler, sizeof filler, "%s/filler", du.mnt);
  ps_errbuf eb;
  uint64_t v, acked = 0;
  for (int i = 0; i < 5; i++, acked++)
    ck_assert_int_eq(ps_test_push(d.c, "cl", d.ids, CL_CHUNKS, d.g, CL_CHUNKS * CL_ELEMS, 0, 0,
                                  0, &v, &eb), 0);
  /* full: pushes (64 KiB records) until one is refused; none may be acknowledged
   * unless on disk, and the refusal names the log */
  du_fill(filler);
  int err = 0;
  for (int i = 0; i < 200 && err == 0; i++) {
    err = ps_test_push(d.c, "cl", d.ids, CL_CHUNKS, d.g, CL_CHUNKS * CL_ELEMS, 0, 0, 0, &v, &eb);
    if (err == 0) acked++;
    else ck_assert_msg(err == PS_EDEGRADED && strstr(eb.msg, "redo log"),
                       "refusal: %d '%s', want PS_EDEGRADED naming the redo log", err, eb.msg);
    if (err == 0) du_fill(filler);
  }
  ck_assert_msg(err == PS_EDEGRADED, "pushes still acknowledged on a full disk; see %s", d.log);
  int64_t end = ps_test_now_ms() + 10000;
  do {
    /* A failed snapshot removes its partial SST file, and the log may
     * take the space it freed: fill it again and push to the last chunk
     * (the tally reads chunk 0) so the shard writes to a full disk. */
    du_fill(filler);
    ps_test_push(d.c, "cl", d.ids + CL_CHUNKS - 1, 1, d.g, CL_ELEMS, 0, 0, 0, &v, &eb);
    du_state(d.yaml, du.dir, state, sizeof state, why, sizeof why);
  } while (strcmp(state, "DEGRADED") && ps_test_now_ms() < end && usleep(100000) == 0);
  ck_assert_msg(!strcmp(state, "DEGRADED"), "state %s, want DEGRADED; see %s", state, d.log);
  ck_assert_msg(strstr(why, "redo log") || strstr(why, "flush"), "state_why '%s'", why);
  /* refused before it applies while degraded */
  err = ps_test_push(d.c, "cl", d.ids, 1, d.g, CL_ELEMS, 0, 0, 0, &v, &eb);
  ck_assert_msg(err == PS_EDEGRADED && strstr(eb.msg, "degraded"), "%d %s", err, eb.msg);
  /* the log's spares give their space back; a few retries reopen the store
   * on the full disk meanwhile (each failed open leaves an empty RocksDB
   * log, which a later open removes) */
  char store[700], redo[720];
  snprintf(store, sizeof store, "%s/shard0", du.dir);
  snprintf(redo, sizeof redo, "%s/redo", store);
  usleep(1000000);
  ck_assert_int_eq(ps_test_count_files(redo, ".free", 0), 0);
  /* space again: the retry writes the log, SERVING */
  ck_assert_int_eq(unlink(filler), 0);
  du_wait_serving(&d);
  for (int i = 0; i < 3; i++, acked++)
    ck_assert_int_eq(ps_test_push(d.c, "cl", d.ids, CL_CHUNKS, d.g, CL_CHUNKS * CL_ELEMS, 0, 0,
                                  0, &v, &eb), 0);
  ps_chan_close(d.c);
  ps_test_stop(d.pid, SIGKILL, 5000);
  d.pid = cl_start(d.yaml, d.log, d.gp, d.cp);
  cl_tally t;
  snprintf(t.chan_addr, sizeof t.chan_addr, "%s", d.addr);
  cl_pull(&t, d.g, &v, d.log);
  ck_assert_int_le(ps_test_count_files(store, ".log", 1), 1); /* the open one at most */
  /* the refused push that failed the log may be applied (it was logged
   * by the retry): acked <= value <= acked + 1 */
  ck_assert_msg(d.g[0] >= (float)acked && d.g[0] <= (float)acked + 1,
                "value %g after the restart, %llu pushes acknowledged; see %s", (double)d.g[0],
                (unsigned long long)acked, d.log);
  int st = ps_test_stop(d.pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
  free(d.g);
}
END_TEST

/* A sync shard's own log on a small disk never fills it (psd_wal
 * invariant 9): short of the reserve kept for the snapshot that lets the
 * log shrink, the shard refuses pushes (DEGRADED), the next snapshot cuts
 * the log, and it serves again by itself; pushes of twice the disk's size
 * go through, and after SIGKILL every acknowledged push is there.  (The
 * log used to fill the disk, and the snapshot, which waits for the log's
 * sync, could then never be taken: DEGRADED until an operator freed
 * space.)  Run 1 has a ten-minute flush_interval_ms: the shard short of
 * space takes that snapshot at once (it waited for the next tick,
 * refusing every push meanwhile). */
START_TEST(test_log_fills_disk_sync) {
  if (!du.mounted) PS_SKIP("%s", du.why);
  du_shard d;
  du_open(&d, _i ? "600000" : NULL);
  size_t n = CL_CHUNKS * CL_ELEMS;
  ps_errbuf eb;
  cl_tally t;
  snprintf(t.chan_addr, sizeof t.chan_addr, "%s", d.addr);
  uint64_t v, acked = 0, refused = 0, want = (2 * 96ull << 20) / (n * sizeof(float));
  cl_pull(&t, d.g, &v, d.log); /* (the fixture's disk may hold the last test's pushes) */
  float base = d.g[0];
  for (size_t i = 0; i < n; i++) d.g[i] = -1.0f;
  int64_t end = ps_test_now_ms() + 40000;
  while (acked < want) {
    ck_assert_msg(ps_test_now_ms() < end, "%llu of %llu pushes acknowledged in 40 s, %llu "
                  "refused: the log filled the disk and stayed stuck? see %s",
                  (unsigned long long)acked, (unsigned long long)want,
                  (unsigned long long)refused, d.log);
    int err = ps_test_push(d.c, "cl", d.ids, CL_CHUNKS, d.g, n, 0, 0, 0, &v, &eb);
    if (err == 0) {
      acked++;
      continue;
    }
    ck_assert_msg(err == PS_EDEGRADED && strstr(eb.msg, "degraded"), "refusal %d: %s", err,
                  eb.msg);
    refused++;
    usleep(20000);
  }
  ck_assert_msg(refused > 0, "never short of space: the test tested nothing (see %s)", d.log);
  char *text = ps_test_read_file(d.log, NULL);
  ck_assert_msg(strstr(text, "nearly full"), "no word of the disk in %s", d.log);
  free(text);
  ps_chan_close(d.c);
  ps_test_stop(d.pid, SIGKILL, 5000);
  d.pid = cl_start(d.yaml, d.log, d.gp, d.cp);
  cl_pull(&t, d.g, &v, d.log);
  ck_assert_msg(d.g[0] == base + (float)acked, "value %g after the restart, %g before and %llu "
                "pushes acknowledged; see %s", (double)d.g[0], (double)base,
                (unsigned long long)acked, d.log);
  int st = ps_test_stop(d.pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
  free(d.g);
}
END_TEST

/* du_free_said returns the free space (MiB) that WHY, a DEGRADED reason,
 * says the redo log's disk has; -1 when it says none. */
static double du_free_said(const char *why) {
  const char *p = strstr(why, "nearly full (");
  return p ? atof(p + strlen("nearly full (")) : -1;
}

/* A sync shard short of log space while the disk stays low (another
 * file holds it) says the free space of now in its DEGRADED reason: an
 * operator who freed some, not enough, saw the figure of when it fell
 * short.  Said in psd's log once, not at each look. */
START_TEST(test_short_why_follows_free) {
  if (!du.mounted) PS_SKIP("%s", du.why);
  du_shard d;
  du_open(&d, NULL);
  char filler[700], state[64], why[600];
  snprintf(filler, sizeof filler, "%s/filler_why", du.mnt);
  ps_errbuf eb;
  uint64_t v;
  /* 24 MiB kept (a quarter of the disk): 10 MiB left, short at the next push */
  ps_test_leave_free(filler, 10 << 20);
  int64_t end = ps_test_now_ms() + 15000;
  do {
    ps_test_push(d.c, "cl", d.ids, 1, d.g, CL_ELEMS, 0, 0, 0, &v, &eb);
    du_state(d.yaml, du.dir, state, sizeof state, why, sizeof why);
  } while (strcmp(state, "DEGRADED") && ps_test_now_ms() < end && usleep(100000) == 0);
  ck_assert_msg(!strcmp(state, "DEGRADED") && du_free_said(why) >= 0 && du_free_said(why) < 12,
                "state %s '%s', want DEGRADED, about 10 MiB free; see %s", state, why, d.log);
  /* 18 MiB free: still short, the reason says so */
  ps_test_leave_free(filler, 18 << 20);
  end = ps_test_now_ms() + 15000;
  do {
    du_state(d.yaml, du.dir, state, sizeof state, why, sizeof why);
  } while (du_free_said(why) < 16 && ps_test_now_ms() < end && usleep(100000) == 0);
  ck_assert_msg(!strcmp(state, "DEGRADED") && du_free_said(why) >= 16 && du_free_said(why) < 19,
                "state %s '%s', want DEGRADED, about 18 MiB free; see %s", state, why, d.log);
  char *text = ps_test_read_file(d.log, NULL), me[32]; /* (the earlier tests' lines too) */
  snprintf(me, sizeof me, "psd[%d]", (int)d.pid);
  int said = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
    said += strstr(line, me) && strstr(line, "degraded: the redo log's disk is nearly full");
  free(text);
  ck_assert_msg(said == 1, "psd's log says the disk nearly full %d times; see %s", said, d.log);
  /* space again: SERVING */
  ck_assert_int_eq(unlink(filler), 0);
  du_wait_serving(&d);
  ps_chan_close(d.c);
  int st = ps_test_stop(d.pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
  free(d.g);
}
END_TEST

/* cl_snapshot_pos returns the position of LOG's last "redo log replayed:
 * N records after the snapshot's P" line (-1: none). */
static long long cl_snapshot_pos(const char *log) {
  return cl_last_number(log, "after the snapshot's ");
}

/* A snapshot taken while a push's record waits for its sync must not be
 * ingested before that sync (psd_store invariant 11): the crash loop once
 * lost an acknowledged push when a snapshot holding an unwritten record
 * (position L) outlived it in a SIGKILL, the next push reused seq L, and
 * the replay after the next crash skipped it as held by the snapshot.
 * Here the fsync shim's gate holds the sync of push 2 while the flush
 * timer runs; then a power cut drops push 2's record: the snapshot the
 * shard restarts from must not be past record 1 (the one synced), and a
 * push acknowledged after the restart must survive the next crash. */
START_TEST(test_snapshot_waits_for_log) {
  const char *dir = ps_test_tmpdir();
  ps_test_gated gt;
  ps_test_gated_init(&gt, dir, NULL, 1);
  const char *yaml = gt.yaml, *log = gt.log, *fsync_log = gt.fsync_log, *gate = gt.gate;
  const char *addr = gt.chan;
  int gp = gt.gp, cp = gt.cp;
  char redo[700];
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  pid_t pid = ps_test_dur_start(yaml, log, gp, cp, gt.env.env);
  cl_submit(gp);
  float *g = malloc(CL_CHUNKS * CL_ELEMS * sizeof(float)), one[CL_ELEMS];
  for (int i = 0; i < CL_ELEMS; i++) one[i] = -1.0f;
  uint32_t id0 = 0;
  uint64_t v;
  ps_errbuf eb;
  ps_chan_client *a, *b, *r;
  ck_assert_int_eq(ps_test_chan_connect(&a, addr, "test", 10000, &eb), 0);
  ck_assert_int_eq(ps_test_push(a, "cl", &id0, 1, one, CL_ELEMS, 0, 0, 0, &v, &eb), 0);
  /* push 2: applied, its sync held by the gate (never acknowledged) */
  ps_test_write_file(gate, "held\n");
  ck_assert_int_eq(ps_test_chan_connect(&b, addr, "test", 10000, &eb), 0);
  ps_req q = {.model = "cl", .ids = &id0, .nids = 1};
  struct iovec src = {one, sizeof one};
  uint64_t held;
  ck_assert_int_eq(ps_chan_send_pushv(b, &q, &src, 1, &held, &eb), 0);
  ck_assert_int_eq(ps_test_chan_connect(&r, addr, "test", 10000, &eb), 0);
  int64_t end = ps_test_now_ms() + 10000;
  do ck_assert_int_eq(ps_test_pull(r, "cl", &id0, 1, g, CL_ELEMS, 0, 0, &v, &eb), 0);
  while (g[0] < 2.0f && ps_test_now_ms() < end && usleep(5000) == 0);
  ck_assert_msg(g[0] == 2.0f, "push 2 was not applied (value %g); see %s", (double)g[0], log);
  /* the flush timer (200 ms) ticks a few times while the sync waits */
  usleep(1200 * 1000);
  ps_chan_close(r);
  int st = ps_test_stop(pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  ps_chan_close(a);
  ps_chan_close(b);
  unlink(gate);
  cl_power_cut(fsync_log, redo); /* push 2's record was never synced */
  pid = ps_test_dur_start(yaml, log, gp, cp, gt.env.env);
  ck_assert_msg(cl_snapshot_pos(log) <= 1, "the shard restarted from a snapshot at record %lld, "
                "but the log only ever synced record 1; see %s", cl_snapshot_pos(log), log);
  cl_tally t;
  snprintf(t.chan_addr, sizeof t.chan_addr, "%s", addr);
  cl_pull(&t, g, &v, log);
  float before = g[0]; /* 1, or 2 when the snapshot kept the unacknowledged push */
  ck_assert_int_eq(ps_test_chan_connect(&a, addr, "test", 10000, &eb), 0);
  ck_assert_int_eq(ps_test_push(a, "cl", &id0, 1, one, CL_ELEMS, 0, 0, 0, &v, &eb), 0);
  ps_chan_close(a);
  st = ps_test_stop(pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  pid = ps_test_dur_start(yaml, log, gp, cp, gt.env.env);
  cl_pull(&t, g, &v, log);
  ck_assert_msg(g[0] == before + 1, "chunk 0 holds %g after the crash, %g before the "
                "acknowledged push; see %s", (double)g[0], (double)before, log);
  st = ps_test_stop(pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d; see %s", st, log);
  free(g);
}
END_TEST

/* cl_push_one pushes -1 to chunk 0 over a new connection to ADDR;
 * returns the answer (0 or its error), or the connection's error (no
 * Check assertion: a thread may call it). */
static int cl_push_one(const char *addr) {
  float one[CL_ELEMS];
  for (int i = 0; i < CL_ELEMS; i++) one[i] = -1.0f;
  uint32_t id0 = 0;
  uint64_t v;
  ps_errbuf eb;
  ps_chan_client *c;
  /* 60 s: test_stalled_sync_shown holds the sync for 6 s and more (a
   * sanitizer build's push timed out at 10 s) */
  int err = ps_test_chan_connect(&c, addr, "test", 60000, &eb);
  if (err < 0) return err;
  err = ps_test_push(c, "cl", &id0, 1, one, CL_ELEMS, 0, 0, 0, &v, &eb);
  ps_chan_close(c);
  return err;
}

/* cl_restart_value restarts the shard of GT and returns chunk 0's value
 * (its pid in *PID). */
static float cl_restart_value(ps_test_gated *gt, pid_t *pid) {
  *pid = ps_test_dur_start(gt->yaml, gt->log, gt->gp, gt->cp, gt->env.env);
  cl_tally t;
  snprintf(t.chan_addr, sizeof t.chan_addr, "%s", gt->chan);
  float *g = malloc(CL_CHUNKS * CL_ELEMS * sizeof(float));
  uint64_t v;
  cl_pull(&t, g, &v, gt->log);
  float x = g[0];
  free(g);
  return x;
}

/* cl_gated_start starts GT's shard under the fsync shim in DIR (with no
 * snapshot but the final one when NO_FLUSH: the log keeps every record),
 * submits the model and makes N acknowledged pushes to chunk 0. */
static pid_t cl_gated_start(ps_test_gated *gt, const char *dir, int no_flush, int n) {
  ps_test_gated_init(gt, dir, NULL, 0);
  if (no_flush) {
    char cmd[1600];
    snprintf(cmd, sizeof cmd,
             "sed -i 's/flush_interval_ms: 200$/flush_interval_ms: 600000/' '%s' && "
             "grep -q 'flush_interval_ms: 600000$' '%s'", gt->yaml, gt->yaml);
    ck_assert_int_eq(system(cmd), 0);
  }
  pid_t pid = ps_test_dur_start(gt->yaml, gt->log, gt->gp, gt->cp, gt->env.env);
  cl_submit(gt->gp);
  for (int i = 0; i < n; i++) ck_assert_int_eq(cl_push_one(gt->chan), 0);
  return pid;
}

/* cl_stop_clean stops PID with SIGTERM: it must exit 0. */
static void cl_stop_clean(pid_t pid, const char *log) {
  int st = ps_test_stop(pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d; see %s", st, log);
}

/* A clean stop under sync leaves no log behind: its final snapshot holds
 * every record (a restart used to read the whole log to replay none of
 * it, and the log stayed until a later snapshot).  The next log goes on
 * after the snapshot's position, so pushes acknowledged after the
 * restart survive a crash.  A stop while the log's syncs fail writes the
 * final snapshot anyway (the only copy of the push answered "applied in
 * memory but not on disk"), says so, exits 0 and removes the log too. */
START_TEST(test_clean_stop_no_log) {
  const char *dir = ps_test_tmpdir();
  ps_test_gated gt;
  pid_t pid = cl_gated_start(&gt, dir, 0, 20);
  char redo[700];
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  cl_stop_clean(pid, gt.log);
  ck_assert_msg(ps_test_count_files(redo, ".log", 0) == 0 && ps_test_count_files(redo, ".free", 0) == 0,
                "a clean stop left %d segments and %d spares in %s", ps_test_count_files(redo, ".log", 0),
                ps_test_count_files(redo, ".free", 0), redo);
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 20.0f);
  ck_assert_int_eq(cl_last_replayed(gt.log), 0);
  for (int i = 0; i < 5; i++) ck_assert_int_eq(cl_push_one(gt.chan), 0);
  /* the syncs fail: the push is applied, answered DEGRADED; then a stop */
  ps_test_write_file(gt.fail, "fail\n");
  ck_assert_int_eq(cl_push_one(gt.chan), PS_EDEGRADED);
  cl_stop_clean(pid, gt.log);
  size_t len;
  char *text = ps_test_read_file(gt.log, &len);
  ck_assert_msg(strstr(text, "writing the snapshot anyway") && !strstr(text, "final flush of shard 0 failed"),
                "see %s", gt.log);
  free(text);
  unlink(gt.fail);
  ck_assert_int_eq(ps_test_count_files(redo, ".log", 0), 0);
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 26.0f);
  /* the log goes on after the snapshot: an acknowledged push survives a crash */
  ck_assert_int_eq(cl_push_one(gt.chan), 0);
  int st = ps_test_stop(pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 27.0f);
  ck_assert_int_eq(cl_last_replayed(gt.log), 1);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* A worker whose pushes a DEGRADED shard refused (its log's syncs fail)
 * goes on without them, within workers.retry_ms, and ends with exit 0
 * (psw_client invariant 12); it used to say so once, at the first
 * refusal, and then end as a run that succeeded.  Its log's last word
 * before the JSON line now counts the pushes the shard did not apply:
 * the model lacks those updates. */
START_TEST(test_worker_degraded_said) {
  const char *dir = ps_test_tmpdir();
  char train[600], extra[1600], psw_log[700];
  snprintf(train, sizeof train, "%s/train.csv", dir);
  FILE *f = fopen(train, "w");
  ck_assert(f != NULL);
  for (int i = 0; i < 320; i++) { /* 10 steps of 32: three classes, 4 features */
    fprintf(f, "%d", i % 3);
    for (int j = 0; j < 4; j++) fprintf(f, ",%d", j == i % 3);
    fputc('\n', f);
  }
  ck_assert(fclose(f) == 0);
  snprintf(extra, sizeof extra,
           "workers:\n  count: 1\n  retry_ms: 60000\n"
           "training:\n  model: m\n  epochs: 1\n  batch_size: 32\n"
           "data:\n  format: csv\n  train_images: %s\n  test_images: %s\n  scale: 1\n",
           train, train);
  ps_test_gated gt;
  ps_test_gated_init(&gt, dir, extra, 0);
  pid_t pid = ps_test_dur_start(gt.yaml, gt.log, gt.gp, gt.cp, gt.env.env);
  ps_test_submit_mlp(dir, gt.yaml, "4,8,3", "0.01", "asp", NULL);
  ps_test_write_file(gt.fail, "fail\n"); /* every push: refused, or applied but not synced */
  snprintf(psw_log, sizeof psw_log, "%s/psw.log", dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", gt.yaml, "--rank", "0", "--workers",
                  "1", NULL};
  int rc = ps_test_run(argv, psw_log, 60000);
  char *text = ps_test_read_file(psw_log, NULL);
  ck_assert_msg(rc == 0, "psw exit %d; see %s", rc, psw_log);
  /* the warning comes before the JSON line and counts the refusals */
  const char *said = strstr(text, " were refused while it was DEGRADED");
  const char *json = strstr(text, "{\"model\":");
  ck_assert_msg(said && json && said < json, "no count of the refused pushes before the JSON "
                "line; see %s", psw_log);
  const char *to = strstr(text, " pushes to shard 0 (");
  ck_assert_msg(strstr(said, "the model lacks those updates") && to && to < said, "see %s",
                psw_log);
  ck_assert_msg(ps_test_json_sum(json, "pushes_unanswered") > 0, "see %s", psw_log);
  free(text);
  unlink(gt.fail);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* cl_full_segments counts the segments holding records in DIR's shard's
 * redo directory. */
static int cl_full_segments(const char *dir) {
  char redo[700];
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  return ps_test_count_files(redo, ".log", 0) - ps_test_count_files(redo, ".log", 1);
}

/* cl_log_copy copies DIR's shard's redo directory aside (SAVE), or puts
 * that copy back in its place; returns cl_full_segments then. */
static int cl_log_copy(const char *dir, int save) {
  char redo[700], cmd[2400];
  snprintf(redo, sizeof redo, "%s/shard0/redo", dir);
  if (save) snprintf(cmd, sizeof cmd, "cp -a '%s' '%s.bak'", redo, redo);
  else snprintf(cmd, sizeof cmd, "rm -rf '%s' && mv '%s.bak' '%s'", redo, redo, redo);
  ck_assert_int_eq(system(cmd), 0);
  return cl_full_segments(dir);
}

/* A snapshot ahead of a log that holds records (here: the log as it was
 * before a stop whose syncs failed and whose final snapshot was written
 * anyway, put back, as if the shard had been killed before it removed
 * the log) is mended at the start with a warning naming both positions:
 * the replayed state goes into a snapshot, the old log goes, and a push
 * acknowledged after the start survives a crash.  (It used to start
 * silently, the log going on after a gap.) */
START_TEST(test_snapshot_ahead_warned) {
  const char *dir = ps_test_tmpdir();
  ps_test_gated gt;
  pid_t pid = cl_gated_start(&gt, dir, 1, 10);
  ck_assert_int_gt(cl_log_copy(dir, 1), 0);
  ps_test_write_file(gt.fail, "fail\n");
  ck_assert_int_eq(cl_push_one(gt.chan), PS_EDEGRADED); /* record 11: in the final snapshot only */
  cl_stop_clean(pid, gt.log);
  unlink(gt.fail);
  cl_log_copy(dir, 0);
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 11.0f);
  size_t len;
  char *text = ps_test_read_file(gt.log, &len);
  ck_assert_msg(strstr(text, "the snapshot holds records up to 11, the redo log ends at 10") &&
                    strstr(text, "the pushes acknowledged after record 11 are lost"),
                "no warning; see %s", gt.log);
  free(text);
  ck_assert_int_eq(cl_push_one(gt.chan), 0);
  int st = ps_test_stop(pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 12.0f);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* A log the snapshot holds entirely (here: the log as it was before a
 * clean stop, put back, as if the shard had been killed in its stop after
 * the final snapshot) is dropped right after the start, not kept (and
 * grown) until a snapshot that an idle shard never takes. */
START_TEST(test_covered_log_dropped) {
  const char *dir = ps_test_tmpdir();
  ps_test_gated gt;
  pid_t pid = cl_gated_start(&gt, dir, 1, 10);
  cl_log_copy(dir, 1);
  cl_stop_clean(pid, gt.log);
  int full = cl_log_copy(dir, 0);
  ck_assert_int_gt(full, 0);
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 10.0f);
  ck_assert_int_eq(cl_last_replayed(gt.log), 0);
  int64_t end = ps_test_now_ms() + 10000;
  while ((full = cl_full_segments(dir)) > 0 && ps_test_now_ms() < end) usleep(20000);
  ck_assert_msg(full == 0, "%d segments the snapshot holds are still in %s/shard0/redo", full, dir);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* cl_slow_pushes pushes -1 to chunk 0 of the crash loop's model at the
 * channel address ARG, one push every 700 ms, 7 times (a quiet log: about
 * one sync a second); failures are left to the caller's checks. */
static void *cl_slow_pushes(void *arg) {
  for (int k = 0; k < 7; k++) {
    cl_push_one(arg);
    usleep(700000);
  }
  return NULL;
}

/* psctl status --interval: the two samples are that far apart, so a quiet
 * log's syncs (one every 700 ms, which a 500 ms gap often misses) show
 * as a rate above 0 and one push per sync. */
START_TEST(test_status_interval) {
  const char *dir = ps_test_tmpdir();
  ps_test_gated gt;
  pid_t pid = cl_gated_start(&gt, dir, 0, 0);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, cl_slow_pushes, gt.chan), 0);
  usleep(300000);
  char t[128];
  int64_t t0 = ps_test_now_ms();
  cl_status_args(gt.yaml, dir, "--interval 3000",
                 "s[\"redo_log\"][\"syncs_per_s\"], s[\"redo_log\"][\"pushes_per_sync\"]", t,
                 sizeof t);
  int64_t took = ps_test_now_ms() - t0;
  pthread_join(th, NULL);
  double syncs = 0, per = 0;
  ck_assert_msg(sscanf(t, "%lf %lf", &syncs, &per) == 2, "no redo log rates: '%s'", t);
  ck_assert_msg(took >= 3000, "psctl status took %lld ms, under its --interval",
                (long long)took);
  ck_assert_msg(syncs > 0.3 && syncs < 10 && per >= 1 && per < 2,
                "syncs/s %g, pushes per sync %g over 3 s of a push every 700 ms", syncs, per);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* A shard restarted between the two samples of `psctl status --interval`
 * is shown as it is now (SERVING, exit 0), without rates across the
 * restart; the second sample used to fail on the old connection ("DOWN
 * Socket closed", exit 1). */
START_TEST(test_status_across_restart) {
  ps_test_gated gt;
  const char *dir = ps_test_tmpdir();
  pid_t pid = cl_gated_start(&gt, dir, 0, 3);
  char out[800];
  snprintf(out, sizeof out, "%s/status-restart.json", dir);
  char *argv[] = {(char *)ps_test_bin("psctl"), "status", "--config", gt.yaml, "--json",
                  "--interval", "8000", NULL};
  pid_t st_pid = ps_test_spawn(argv, out, NULL);
  usleep(1500 * 1000); /* the first sample is taken (the restart has 6.5 s before the second) */
  int st = ps_test_stop(pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 3.0f);
  st = ps_test_wait_pid(st_pid, 30000);
  if (st == -1) ps_test_stop(st_pid, SIGKILL, 5000);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "psctl status ended with status %d; see %s", st, out);
  size_t len;
  char *text = ps_test_read_file(out, &len);
  ck_assert_msg(strstr(text, "\"state\":\"SERVING\"") && strstr(text, "\"pushes_per_s\":null"),
                "%s", text);
  free(text);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* cl_log_waits_for waits up to TIMEOUT_MS for LOG to hold TEXT; 1 when it does. */
static int cl_log_waits_for(const char *log, const char *text, int timeout_ms) {
  for (int64_t end = ps_test_now_ms() + timeout_ms;; usleep(100 * 1000)) {
    char *t = ps_test_read_file(log, NULL);
    int found = strstr(t, text) != NULL;
    free(t);
    if (found || ps_test_now_ms() >= end) return found;
  }
}

/* cl_push_thread makes one push to the channel address ARG; its result
 * is the thread's (intptr_t). */
static void *cl_push_thread(void *arg) {
  return (void *)(intptr_t)cl_push_one(arg);
}

/* A log sync the disk does not answer (held on the fsync shim's gate) is
 * shown: psctl status's busy_ms and text line, and a warning in psd's
 * log after 5 s; the push waits, and is acknowledged once the disk
 * answers, with a log line saying so. */
START_TEST(test_stalled_sync_shown) {
  ps_test_gated gt;
  const char *dir = ps_test_tmpdir();
  pid_t pid = cl_gated_start(&gt, dir, 0, 2);
  ps_test_write_file(gt.gate, "held\n");
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, cl_push_thread, gt.chan), 0);
  long long busy = -2;
  for (int64_t end = ps_test_now_ms() + 30000; ps_test_now_ms() < end; usleep(500 * 1000))
    if ((busy = cl_status_num(gt.yaml, dir, "s[\"redo_log\"][\"busy_ms\"]")) >= 6000) break;
  ck_assert_msg(busy >= 6000 && busy < 60000, "busy_ms %lld: no held sync shown", busy);
  char cmd[2400], out[800];
  snprintf(out, sizeof out, "%s/status-text", dir);
  snprintf(cmd, sizeof cmd, "timeout 20 '%s' status --config '%s' > '%s' 2>&1",
           ps_test_bin("psctl"), gt.yaml, out);
  ck_assert_int_ge(system(cmd), 0);
  size_t len;
  char *text = ps_test_read_file(out, &len);
  ck_assert_msg(strstr(text, "the redo log's disk work in flight has run"), "%s", text);
  free(text);
  ck_assert_msg(cl_log_waits_for(gt.log, "the redo log's disk work in flight has run ", 5000) &&
                    cl_log_waits_for(gt.log, " s (the disk is not answering?)", 1000),
                "see %s", gt.log);
  /* the snapshot that holds the push waits for its sync, and says so */
  ck_assert_msg(cl_log_waits_for(gt.log, " for the sync of record ", 5000), "see %s", gt.log);
  unlink(gt.gate);
  void *r;
  pthread_join(th, &r);
  ck_assert_int_eq((int)(intptr_t)r, 0);
  ck_assert_msg(cl_log_waits_for(gt.log, "the redo log's stalled disk work ended", 10000), "see %s",
                gt.log);
  ck_assert_int_eq(cl_status_num(gt.yaml, dir, "s[\"redo_log\"][\"busy_ms\"]"), 0);
  cl_stop_clean(pid, gt.log);
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 3.0f);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* A second psd on a data_dir in use stops before it touches anything
 * there: it used to remove the running shard's spare log files (a start
 * removes spares before the store opens), then fail on RocksDB's lock. */
START_TEST(test_second_start_refused) {
  ps_test_gated gt;
  const char *dir = ps_test_tmpdir();
  pid_t pid = cl_gated_start(&gt, dir, 0, 3);
  char spare[800], log2[800];
  snprintf(spare, sizeof spare, "%s/shard0/redo/00000000000000ff.free", dir);
  snprintf(log2, sizeof log2, "%s/psd-second.log", dir);
  ps_test_write_file(spare, "spare\n");
  pid_t two = ps_test_psd(gt.yaml, 0, log2, gt.env.env);
  int st = ps_test_wait_pid(two, 20000);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1,
                "the second psd ended with status %d; see %s", st, log2);
  size_t len;
  char *text = ps_test_read_file(log2, &len);
  ck_assert_msg(strstr(text, "is in use by another psd"), "see %s", log2);
  free(text);
  ck_assert_msg(access(spare, F_OK) == 0, "the second psd removed %s", spare);
  ck_assert_int_eq(cl_push_one(gt.chan), 0); /* the first one serves on */
  cl_stop_clean(pid, gt.log);
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 4.0f);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* SIGTERM while the start replays the log (held there: the replay's
 * fdatasync of a segment, before it applies the segment's records, waits
 * on the fsync shim's gate) stops the replay before its next record, a
 * clean stop, exit 0, not a death by the signal; the next start has
 * every acknowledged push. */
START_TEST(test_stop_during_replay) {
  ps_test_gated gt;
  pid_t pid = cl_gated_start(&gt, ps_test_tmpdir(), 1, 10);
  int st = ps_test_stop(pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  ps_test_write_file(gt.gate, "held\n");
  pid = ps_test_psd(gt.yaml, 0, gt.log, gt.env.env);
  usleep(1500 * 1000); /* the store opens, the replay reaches its sync and waits */
  ck_assert_int_eq(kill(pid, SIGTERM), 0);
  usleep(100 * 1000);
  unlink(gt.gate);
  st = ps_test_wait_pid(pid, 20000);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "psd ended with status %d; see %s", st, gt.log);
  size_t len;
  char *text = ps_test_read_file(gt.log, &len);
  ck_assert_msg(strstr(text, "Terminated during the replay; stopping"), "see %s", gt.log);
  free(text);
  ck_assert_float_eq(cl_restart_value(&gt, &pid), 10.0f);
  cl_stop_clean(pid, gt.log);
}
END_TEST

/* dd_start starts shard 0 of YAML logging to LOG and waits for its gRPC
 * port GP. */
static pid_t dd_start(const char *yaml, const char *log, int gp) {
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  ck_assert_msg(ps_test_wait_port(gp, 30000) == 0, "psd did not listen; see %s", log);
  return pid;
}

/* dd_refused starts shard 0 of YAML logging to LOG, expects it to stop
 * at once with exit status CODE (1: a start-up error; 2: the file is
 * wrong, which systemd does not retry) and its log to hold WANT. */
static void dd_refused(const char *yaml, const char *log, int code, const char *want) {
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  int st = ps_test_wait_pid(pid, 20000);
  if (st == -1) ps_test_stop(pid, SIGKILL, 5000);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == code,
                "psd ended with status %d, not exit %d; see %s", st, code, log);
  size_t len;
  char *text = ps_test_read_file(log, &len);
  ck_assert_msg(strstr(text, want), "no \"%s\" in %s:\n%s", want, log, text);
  free(text);
}

/* A shard whose data_dir holds another cluster's store (a data_dir copied
 * from another cluster's file) is refused at start, naming both clusters
 * and the directory, with exit status 2 (a configuration error, which the
 * unit's RestartPreventExitStatus keeps systemd from retrying every 2 s;
 * it was 1); it used to load and serve that cluster's models.
 * Its own cluster starts on it again. */
START_TEST(test_other_cluster_refused) {
  const char *dir = ps_test_tmpdir();
  int gp;
  char yaml[600], other[800], log[800], log2[800], want[1200];
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 1, NULL, &gp, NULL));
  snprintf(other, sizeof other, "%s/other.yaml", dir);
  ps_test_file_replace(yaml, other, "cluster: test\n", "cluster: other\n");
  snprintf(log, sizeof log, "%s/psd.log", dir);
  snprintf(log2, sizeof log2, "%s/psd-other.log", dir);
  pid_t pid = dd_start(yaml, log, gp);
  ps_rpc *r = NULL;
  ps_errbuf eb;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", gp);
  ck_assert_msg(ps_test_rpc_open(&r, addr, &eb) == 0, "%s", eb.msg);
  ps_test_tiny m;
  ps_test_tiny_make(&m, 2);
  ps_test_submit(r, ps_test_tiny_spec(&m, "a"), 0, 10000);
  ps_rpc_close(r);
  ps_test_tiny_free(&m);
  int st = ps_test_stop(pid, SIGTERM, 20000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d; see %s", st, log);
  snprintf(want, sizeof want, "shard 0: cannot open the store: directory '%s/shard0' holds a "
           "store of cluster 'test', not of cluster 'other' (is data_dir another cluster's? if "
           "the cluster was renamed, start the shard once with --rename-cluster test)", dir);
  dd_refused(other, log2, 2, want);
  pid = dd_start(yaml, log, gp);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 20000), 0);
  /* the cluster renamed "other" in its file: one start with
   * --rename-cluster test takes the store, with its model, and from then
   * on the store is "other"'s */
  char *renamed[] = {(char *)ps_test_bin("psd"), "--config", other, "--shard", "0",
                     "--rename-cluster", "test", NULL};
  pid = ps_test_spawn(renamed, log2, NULL);
  ck_assert_msg(ps_test_wait_port(gp, 30000) == 0, "psd did not listen; see %s", log2);
  ck_assert_msg(ps_test_rpc_open(&r, addr, &eb) == 0, "%s", eb.msg);
  Ps__GetModelRequest q = PS__GET_MODEL_REQUEST__INIT;
  q.name = "a";
  Ps__GetModelReply *rep = NULL;
  ck_assert_msg(ps_rpc_call(r, "/ps.Ps/GetModel", &q.base, &ps__get_model_reply__descriptor,
                            (ProtobufCMessage **)&rep, 10000, &eb) == 0, "%s", eb.msg);
  ps__get_model_reply__free_unpacked(rep, NULL);
  ps_rpc_close(r);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 20000), 0);
  dd_refused(yaml, log, 2, "holds a store of cluster 'other', not of cluster 'test'");
  pid = dd_start(other, log2, gp);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 20000), 0);
}
END_TEST

/* dd_ls lists DIR's entries, sorted, into OUT (for a before/after check). */
static void dd_ls(const char *dir, char *out, size_t cap) {
  char cmd[900];
  snprintf(cmd, sizeof cmd, "ls -a '%s'", dir);
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  pclose(p);
}

/* psd -t --shard 0 with a file whose data_dir holds another cluster's
 * store warns that the start would fail, naming both clusters, while
 * that cluster's shard runs and after it stopped, and changes nothing in
 * the directory (RocksDB's info log included); the store's own file gets
 * no warning.  psd -t used to say "configuration ok" and nothing else. */
START_TEST(test_psd_t_other_cluster) {
  const char *dir = ps_test_tmpdir();
  int gp;
  char yaml[600], other[800], log[800], want[2400], data[800], before[4096], after[4096];
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 1, NULL, &gp, NULL));
  snprintf(other, sizeof other, "%s/other.yaml", dir);
  ps_test_file_replace(yaml, other, "cluster: test\n", "cluster: other\n");
  snprintf(log, sizeof log, "%s/psd.log", dir);
  snprintf(data, sizeof data, "%s/shard0", dir);
  snprintf(want, sizeof want, "%s: warning: shard 0's data_dir: directory '%s' holds a store of "
           "cluster 'test', not of cluster 'other' (is data_dir another cluster's? if the "
           "cluster was renamed, start the shard once with --rename-cluster test): its start "
           "would fail (exit 2)\n", other, data);
  char *t_other[] = {(char *)ps_test_bin("psd"), "-t", "--config", other, "--shard", "0", NULL};
  char *t_own[] = {(char *)ps_test_bin("psd"), "-t", "--config", yaml, "--shard", "0", NULL};
  pid_t pid = dd_start(yaml, log, gp);
  for (int running = 1; running >= 0; running--) {
    char tlog[900];
    size_t len;
    dd_ls(data, before, sizeof before);
    snprintf(tlog, sizeof tlog, "%s/psd-t-other%d.log", dir, running);
    ck_assert_int_eq(ps_test_run(t_other, tlog, 20000), 0);
    char *text = ps_test_read_file(tlog, &len);
    ck_assert_msg(strstr(text, want) && strstr(text, "configuration ok"), "no \"%s\" in %s:\n%s",
                  want, tlog, text);
    free(text);
    snprintf(tlog, sizeof tlog, "%s/psd-t-own%d.log", dir, running);
    ck_assert_int_eq(ps_test_run(t_own, tlog, 20000), 0);
    text = ps_test_read_file(tlog, &len);
    ck_assert_msg(!strstr(text, "warning"), "see %s", tlog);
    free(text);
    dd_ls(data, after, sizeof after);
    ck_assert_str_eq(before, after);
    if (running) ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 20000), 0);
  }
}
END_TEST

/* A data_dir that is a symlink to a missing target: `psd -t --shard 0`
 * warns that the start would fail, and the start exits 1, both naming the
 * link and its target; the start used to say "'DIR' is not a directory"
 * and psd -t nothing. */
START_TEST(test_dangling_data_dir) {
  const char *dir = ps_test_tmpdir();
  char yaml[600], from[1000], to[1000], link[700], target[700], log[800], want[4000];
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 1, NULL, NULL, NULL));
  snprintf(from, sizeof from, "data_dir: %s/shard0\n", dir);
  snprintf(link, sizeof link, "%s/link", dir);
  snprintf(target, sizeof target, "%s/gone/x", dir);
  snprintf(to, sizeof to, "data_dir: %s\n", link);
  ps_test_file_replace(yaml, yaml, from, to);
  ck_assert_int_eq(symlink(target, link), 0);
  snprintf(log, sizeof log, "%s/psd-t.log", dir);
  char *t[] = {(char *)ps_test_bin("psd"), "-t", "--config", yaml, "--shard", "0", NULL};
  ck_assert_int_eq(ps_test_run(t, log, 10000), 0);
  size_t len;
  char *text = ps_test_read_file(log, &len);
  snprintf(want, sizeof want, "%s: warning: shard 0's data_dir: '%s' is a symlink to '%s', which "
           "does not exist (make the target, or point data_dir elsewhere): its start would fail "
           "(exit 1)\n", yaml, link, target);
  ck_assert_msg(strstr(text, want), "no \"%s\" in %s:\n%s", want, log, text);
  ck_assert_msg(strstr(text, "configuration ok"), "see %s", log);
  free(text);
  /* the whole file, from any host: its shards' directories are not looked at */
  snprintf(log, sizeof log, "%s/psd-t-all.log", dir);
  char *all[] = {(char *)ps_test_bin("psd"), "-t", "--config", yaml, NULL};
  ck_assert_int_eq(ps_test_run(all, log, 10000), 0);
  text = ps_test_read_file(log, &len);
  ck_assert_msg(!strstr(text, "symlink"), "see %s", log);
  free(text);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  snprintf(want, sizeof want, "shard 0: cannot open the store: '%s' is a symlink to '%s', which "
           "does not exist", link, target);
  dd_refused(yaml, log, 1, want);
}
END_TEST

Suite *psd_durability_suite(void) {
  Suite *s = suite_create("psd_durability");
  TCase *tc = tcase_create("crash_loop");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_crash_loop_short);
  tcase_add_test(tc, test_sync_log_then_periodic);
  tcase_add_test(tc, test_snapshot_waits_for_log);
  tcase_add_test(tc, test_clean_stop_no_log);
  tcase_add_test(tc, test_worker_degraded_said);
  tcase_add_test(tc, test_snapshot_ahead_warned);
  tcase_add_test(tc, test_covered_log_dropped);
  tcase_add_test(tc, test_stop_during_replay);
  tcase_add_test(tc, test_second_start_refused);
  tcase_add_test(tc, test_status_across_restart);
  tcase_add_test(tc, test_stalled_sync_shown);
  tcase_add_test(tc, test_status_interval);
  tcase_add_test(tc, test_foreign_log_refused);
  tcase_add_test(tc, test_corrupt_log_hint);
  tcase_add_test(tc, test_log_io_error_no_hint);
  tcase_add_test(tc, test_flushed_after_replay);
  tcase_add_test(tc, test_log_id_pending_finished);
  suite_add_tcase(s, tc);
  tc = tcase_create("data_dir");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_other_cluster_refused);
  tcase_add_test(tc, test_dangling_data_dir);
  tcase_add_test(tc, test_psd_t_other_cluster);
  suite_add_tcase(s, tc);
  tc = tcase_create("disk_full");
  tcase_add_unchecked_fixture(tc, du_setup, du_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_disk_full_sync);
  tcase_add_loop_test(tc, test_log_fills_disk_sync, 0, 2);
  tcase_add_test(tc, test_short_why_follows_free);
  suite_add_tcase(s, tc);
  return s;
}
