/* Sparse rows end to end (issue 19): durability, the worker's client
 * across a restart, row codecs.  One real psd
 * with the click-through model's embedding table (dim 4, SGD lr 1) and a
 * memory budget of 8 rows for 48 keys, so most rows live in RocksDB.
 * Every gradient is -1, so a row's value minus its initial value is the
 * number of pushes applied to it, in every element.
 *
 *  - sync: pushers on 2 gRPC connections and a tensor channel send
 *    SparsePush (CHAN_SPARSE_PUSH) of 1..6 random keys each; the shard
 *    is SIGKILLed at a random moment, restarted (every
 *    other time after a simulated power cut of the redo log, as in the
 *    dense crash loop) and pulled.  Every row must hold acknowledged <=
 *    pushes <= acknowledged + in flight (none lost, none applied twice),
 *    the same count in every element, and some restart must have replayed
 *    records.
 *  - periodic: pushes, a wait until `last_flush` (Status) is past the last
 *    acknowledgement, more pushes, SIGKILL: every row holds at least the
 *    pushes before that flush and at most all of them.
 *  - a log of sparse pushes left by sync, started under periodic: the
 *    rows hold every logged push, and keep them through another kill.
 *  - the worker's client (psw_sparse) across a restart: a pull waits for
 *    the shard, a push to a dead shard is dropped and counted.
 *  - row codecs: fp16 and int8 pulls decode to the fp32 rows within the
 *    codec's rounding, an int8 or fp16 push moves the rows by exactly its
 *    decoding, the client (psw_sparse_set_codecs) round-trips both ways;
 *    bad rows (a length that disagrees, a NaN int8 scale, an fp16 Inf, a
 *    dense-only codec) are refused with every row unchanged.
 *  - psctl export: the table as .rows and .keys members of the .npz.
 *  - the tensor channel (suite psd_sparse_chan): rows pulled and pushed
 *    there are the gRPC calls' bit for bit in every row codec, through
 *    ps_chan and through psw_sparse (with no gRPC address to fall back
 *    on); bad requests are refused with rows unchanged and the connection
 *    usable (frames whose data disagrees with their key count too); a
 *    channel that does not offer rows sends psw_sparse to gRPC. */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "ps_chan.h"
#include "ps_codec.h"
#include "ps_model.h"
#include "ps_place.h"
#include "ps_rpc.h"
#include "common/npz_check.h"
#include "ps_test.h"
#include "test_durability.h"
#include "psw_ctr.h"
#include "psw_graph.h"
#include "psw_sparse.h"

enum { SD_DIM = 4, SD_KEYS = 48, SD_PUSHERS = 3 };

typedef struct sd_tally {
  uint64_t keys[SD_KEYS];
  atomic_uint_fast64_t acked[SD_KEYS], maybe[SD_KEYS], pushes;
  atomic_int stop;
  char addr[64], caddr[64]; /* gRPC, channel */
} sd_tally;

typedef struct sd_pusher {
  sd_tally *t;
  uint64_t rng;
  int chan;               /* pushes on the tensor channel (CHAN_SPARSE_PUSH) */
  pthread_t th;
} sd_pusher;

static uint64_t sd_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* sd_push_raw pushes LEN bytes of rows P in CODEC for KEYS (N). */
static int sd_push_raw(ps_rpc *r, const uint64_t *keys, size_t n, uint32_t codec, const void *p,
                       size_t len, ps_errbuf *eb) {
  Ps__SparsePushRequest q = PS__SPARSE_PUSH_REQUEST__INIT;
  q.model = "ctr", q.table = 0, q.keys = (uint64_t *)keys, q.n_keys = n, q.codec = codec;
  q.rows.data = (uint8_t *)p, q.rows.len = len;
  ProtobufCMessage *rep = NULL;
  int rc = ps_rpc_call(r, "/ps.Ps/SparsePush", &q.base, &ps__sparse_push_reply__descriptor, &rep,
                       10000, eb);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  return rc;
}

/* sd_push sends one SparsePush of the keys IDX (N) with gradient -1. */
static int sd_push(ps_rpc *r, const sd_tally *t, const int *idx, size_t n, ps_errbuf *eb) {
  uint64_t keys[SD_KEYS];
  float g[SD_KEYS * SD_DIM];
  for (size_t i = 0; i < n; i++) keys[i] = t->keys[idx[i]];
  for (size_t i = 0; i < n * SD_DIM; i++) g[i] = -1.0f;
  return sd_push_raw(r, keys, n, PS_CODEC_FP32, g, n * SD_DIM * sizeof(float), eb);
}

/* sd_pick chooses 1..6 distinct keys. */
static size_t sd_pick(uint64_t *rng, int *idx) {
  size_t n = 1 + sd_rand(rng) % 6;
  int first = (int)(sd_rand(rng) % SD_KEYS);
  for (size_t i = 0; i < n; i++) idx[i] = (first + (int)i * 7) % SD_KEYS;
  return n;
}

static void sd_count(sd_tally *t, const int *idx, size_t n, int acked) {
  for (size_t i = 0; i < n; i++) atomic_fetch_add(acked ? &t->acked[idx[i]] : &t->maybe[idx[i]], 1);
  if (acked) atomic_fetch_add(&t->pushes, 1);
}

/* sd_chan_push sends one CHAN_SPARSE_PUSH of KEYS (N) with LEN bytes of
 * rows P in CODEC over C and waits for its answer. */
static int sd_chan_push(ps_chan_client *c, const uint64_t *keys, size_t n, uint32_t codec,
                        const void *p, size_t len, ps_errbuf *eb) {
  ps_chan_sparse q = {.model = "ctr", .codec = codec, .keys = keys, .nkeys = (uint32_t)n};
  int rc = ps_chan_send_sparse_push(c, &q, p, len, NULL, eb);
  return rc ? rc : ps_chan_recv(c, NULL, NULL, eb);
}

/* sd_pusher_main pushes until told to stop or a push fails (the shard
 * died): that push counts as in flight. */
static void *sd_pusher_main(void *arg) {
  sd_pusher *p = arg;
  ps_rpc *r = NULL;
  ps_chan_client *c = NULL;
  ps_errbuf eb;
  int err = p->chan ? ps_test_chan_connect(&c, p->t->caddr, "test", 10000, &eb)
                    : ps_test_rpc_open(&r, p->t->addr, &eb);
  while (err == 0 && !atomic_load(&p->t->stop)) {
    int idx[6];
    size_t n = sd_pick(&p->rng, idx);
    if (c) {
      uint64_t keys[6];
      float g[6 * SD_DIM];
      for (size_t i = 0; i < n; i++) keys[i] = p->t->keys[idx[i]];
      for (size_t i = 0; i < n * SD_DIM; i++) g[i] = -1.0f;
      err = sd_chan_push(c, keys, n, PS_CODEC_FP32, g, n * SD_DIM * sizeof(float), &eb);
    } else {
      err = sd_push(r, p->t, idx, n, &eb);
    }
    sd_count(p->t, idx, n, err == 0);
  }
  if (r) ps_rpc_close(r);
  ps_chan_close(c);
  return NULL;
}

/* sd_model submits the click-through model (1 field, dim 4, 1 dense
 * feature) with SGD lr 1 and seed 11 through R. */
static void sd_submit(ps_rpc *r) {
  psw_ctr_shape sh = {1, SD_DIM, 1, NULL, 0, 0, 0};
  ps_test_ctr m;
  ps_test_ctr_model(&m, &sh, "sgd", 1.0f, 11);
  ps_test_submit(r, m.spec, 0, 10000);
  ps_test_ctr_release(&m);
}

/* sd_init fills T's keys (all on the one shard) and its address. */
static void sd_init(sd_tally *t, int gp) {
  memset(t, 0, sizeof *t);
  for (int i = 0; i < SD_KEYS; i++) t->keys[i] = (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull;
  snprintf(t->addr, sizeof t->addr, "127.0.0.1:%d", gp);
}

/* sd_counts pulls every key (retrying while the shard starts) and writes
 * each row's push count to N, checking that every element agrees. */
static void sd_counts(const sd_tally *t, long long *n, const char *log) {
  float rows[SD_KEYS * SD_DIM], init[SD_DIM];
  Ps__SparsePullRequest q = PS__SPARSE_PULL_REQUEST__INIT;
  q.model = "ctr", q.table = 0, q.keys = (uint64_t *)t->keys, q.n_keys = SD_KEYS, q.worker = 0;
  int64_t end = ps_test_now_ms() + 20000;
  ps_errbuf eb;
  int err;
  do {
    ps_rpc *r = NULL;
    Ps__SparsePullReply *rep = NULL;
    err = ps_test_rpc_open(&r, t->addr, &eb);
    if (err == 0)
      err = ps_rpc_call(r, "/ps.Ps/SparsePull", &q.base, &ps__sparse_pull_reply__descriptor,
                        (ProtobufCMessage **)&rep, 10000, &eb);
    if (err == 0) {
      ck_assert_uint_eq(rep->rows.len, sizeof rows);
      memcpy(rows, rep->rows.data, sizeof rows);
      protobuf_c_message_free_unpacked(&rep->base, NULL);
    }
    if (r) ps_rpc_close(r);
    if (err) usleep(50000);
  } while (err && ps_test_now_ms() < end);
  ck_assert_msg(err == 0, "pull after the restart: %s; see %s", eb.msg, log);
  for (int k = 0; k < SD_KEYS; k++) {
    ck_assert_int_eq(ps_init_row(init, "uniform", 0.05f, 11, 0, t->keys[k], SD_DIM), 0);
    n[k] = llroundf(rows[k * SD_DIM] - init[0]);
    for (int d = 0; d < SD_DIM; d++) {
      float x = rows[k * SD_DIM + d] - init[d];
      ck_assert_msg(fabsf(x - (float)n[k]) < 1e-3f, "key %d: element %d holds %g pushes, element "
                    "0 %lld; see %s", k, d, (double)x, n[k], log);
    }
  }
}

/* sd_yaml writes the one-shard cluster file with MODE and FLUSH_MS, a
 * budget of 8 rows, and EXTRA (more sections; NULL: none). */
static const char *sd_yaml(const char *dir, const char *mode, unsigned flush_ms,
                           const char *extra, int *gp, int *cp) {
  static const char was[] = "  mode: periodic\n  flush_interval_ms: 200\n";
  char more[512];
  snprintf(more, sizeof more, "sparse:\n  memory_rows: 8\n%s", extra ? extra : "");
  const char *path = ps_test_cluster_yaml(dir, 1, more, gp, cp);
  char now[96];
  snprintf(now, sizeof now, "  mode: %s\n  flush_interval_ms: %u\n", mode, flush_ms);
  ps_test_file_replace(path, path, was, now);
  return path;
}

/* One shard with the model submitted: its cluster file, log, ports,
 * process and the tally of the test's keys. */
typedef struct sd_env {
  char yaml[700], log[700];
  int gp, cp;
  pid_t pid;
  sd_tally *t;
} sd_env;

/* sd_setup_extra starts shard 0 under durability MODE (snapshots every
 * FLUSH_MS) with EXTRA in its cluster file (sd_yaml) and submits the
 * model; sd_setup, with none. */
static void sd_setup_extra(sd_env *e, const char *mode, unsigned flush_ms, const char *extra) {
  const char *dir = ps_test_tmpdir();
  snprintf(e->yaml, sizeof e->yaml, "%s", sd_yaml(dir, mode, flush_ms, extra, &e->gp, &e->cp));
  snprintf(e->log, sizeof e->log, "%s/psd0.log", dir);
  e->t = malloc(sizeof *e->t);
  sd_init(e->t, e->gp);
  snprintf(e->t->caddr, sizeof e->t->caddr, "127.0.0.1:%d", e->cp);
  e->pid = ps_test_dur_start(e->yaml, e->log, e->gp, e->cp, NULL);
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, e->t->addr, &eb), 0);
  sd_submit(r);
  ps_rpc_close(r);
}

static void sd_setup(sd_env *e, const char *mode, unsigned flush_ms) {
  sd_setup_extra(e, mode, flush_ms, NULL);
}

START_TEST(test_sparse_sync_kill) {
  ps_test_rng_init();
  sd_env e;
  sd_setup(&e, "sync", 200);
  sd_tally *t = e.t;
  const char *yaml = e.yaml, *log = e.log;
  pid_t pid = e.pid;
  uint64_t seed = ps_test_seed | 1;
  long long n[SD_KEYS];
  for (int it = 0; it < 3; it++) {
    sd_pusher ps[SD_PUSHERS];
    atomic_store(&t->stop, 0);
    uint64_t p0 = atomic_load(&t->pushes);
    for (int i = 0; i < SD_PUSHERS; i++) {
      ps[i] = (sd_pusher){.t = t, .rng = sd_rand(&seed) | 1, .chan = i == SD_PUSHERS - 1};
      ck_assert_int_eq(pthread_create(&ps[i].th, NULL, sd_pusher_main, &ps[i]), 0);
    }
    int64_t end = ps_test_now_ms() + 15000;
    while (atomic_load(&t->pushes) < p0 + 20 && ps_test_now_ms() < end) usleep(2000);
    usleep((useconds_t)(sd_rand(&seed) % 700) * 1000);
    int st = ps_test_stop(pid, SIGKILL, 5000);
    ck_assert_msg(WIFSIGNALED(st), "psd was not running at iteration %d; see %s", it, log);
    atomic_store(&t->stop, 1);
    for (int i = 0; i < SD_PUSHERS; i++) pthread_join(ps[i].th, NULL);
    ck_assert_msg(atomic_load(&t->pushes) > p0, "no push was acknowledged at iteration %d; see %s",
                  it, log);
    pid = ps_test_dur_start(yaml, log, e.gp, e.cp, NULL);
    sd_counts(t, n, log);
    for (int k = 0; k < SD_KEYS; k++) {
      long long a = (long long)atomic_load(&t->acked[k]), m = (long long)atomic_load(&t->maybe[k]);
      ck_assert_msg(n[k] >= a && n[k] <= a + m, "iteration %d, key %d: %lld pushes applied, but "
                    "%lld were acknowledged and %lld in flight (seed %llu); see %s", it, k, n[k],
                    a, m, (unsigned long long)ps_test_seed, log);
      atomic_store(&t->acked[k], (uint64_t)n[k]); /* the in-flight ones are decided now */
      atomic_store(&t->maybe[k], 0);
    }
  }
  ck_assert_msg(ps_test_dur_replayed(log) > 0, "no restart replayed a record from the log; see %s", log);
  int st = ps_test_stop(pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d; see %s", st, log);
  /* and a clean stop keeps them all */
  pid = ps_test_dur_start(yaml, log, e.gp, e.cp, NULL);
  long long after[SD_KEYS];
  sd_counts(t, after, log);
  ck_assert_int_eq(memcmp(after, n, sizeof n), 0);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 15000), 0);
  free(t);
}
END_TEST

/* sd_last_flush returns the shard's last_flush_unix_ms (Status). */
static int64_t sd_last_flush(const char *addr) {
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, addr, &eb), 0);
  Ps__StatusRequest q = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *st = NULL;
  ck_assert_msg(ps_rpc_call(r, "/ps.Ps/Status", &q.base, &ps__status_reply__descriptor,
                            (ProtobufCMessage **)&st, 10000, &eb) == 0, "%s", eb.msg);
  int64_t v = (int64_t)st->last_flush_unix_ms;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  ps_rpc_close(r);
  return v;
}

/* sd_push_rounds pushes ROUNDS pushes of every key in groups of 6 over R,
 * counting them in T. */
static void sd_push_rounds(ps_rpc *r, sd_tally *t, int rounds) {
  ps_errbuf eb;
  for (int round = 0; round < rounds; round++)
    for (int k = 0; k < SD_KEYS; k += 6) {
      int idx[6];
      for (int i = 0; i < 6; i++) idx[i] = k + i;
      ck_assert_msg(sd_push(r, t, idx, 6, &eb) == 0, "push: %s", eb.msg);
      sd_count(t, idx, 6, 1);
    }
}

START_TEST(test_sparse_periodic_kill) {
  sd_env e;
  sd_setup(&e, "periodic", 200);
  sd_tally *t = e.t;
  const char *yaml = e.yaml, *log = e.log;
  pid_t pid = e.pid;
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, t->addr, &eb), 0);
  sd_push_rounds(r, t, 5);
  /* a flush (every 200 ms) that began after the last acknowledgement */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t acked_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  int64_t end = ps_test_now_ms() + 15000;
  while (sd_last_flush(t->addr) <= acked_ms && ps_test_now_ms() < end) usleep(50000);
  ck_assert_msg(sd_last_flush(t->addr) > acked_ms, "no flush after the pushes; see %s", log);
  sd_push_rounds(r, t, 3);
  ps_rpc_close(r);
  int st = ps_test_stop(pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  pid = ps_test_dur_start(yaml, log, e.gp, e.cp, NULL);
  long long n[SD_KEYS];
  sd_counts(t, n, log);
  for (int k = 0; k < SD_KEYS; k++)
    ck_assert_msg(n[k] >= 5 && n[k] <= 8, "key %d: %lld pushes after the kill; 5 were on disk, "
                  "8 acknowledged; see %s", k, n[k], log);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 15000), 0);
  free(t);
}
END_TEST

/* sd_restarter restarts the shard after a pause (a thread, while the
 * client waits for it). */
typedef struct sd_restart {
  const char *yaml, *log;
  int pause_ms;
  pid_t pid;
  pthread_t th;
} sd_restart;

static void *sd_restart_main(void *arg) {
  sd_restart *r = arg;
  usleep((useconds_t)r->pause_ms * 1000);
  r->pid = ps_test_psd(r->yaml, 0, r->log, NULL);
  return NULL;
}

/* The worker's client of the table (psw_sparse) across a shard restart
 * under sync: a pull while the shard is down waits for it and returns the
 * rows it held; a push while it is down is dropped (not resent), counted
 * and said, and the request goes on. */
enum { SD_LOST = 5 }; /* pushes sent to the dead shard */

START_TEST(test_sparse_client_restart) {
  sd_env e;
  sd_setup(&e, "sync", 200);
  sd_tally *t = e.t;
  const char *yaml = e.yaml, *log = e.log;
  pid_t pid = e.pid;
  ps_errbuf eb;
  ps_config cfg;
  ck_assert_msg(ps_config_load(&cfg, yaml, &eb) == 0, "%s", eb.msg);
  psw_sparse *sp;
  ck_assert_msg(psw_sparse_open(&sp, &cfg, "ctr", 0, SD_DIM, 0, &eb) == 0, "%s", eb.msg);
  float rows[SD_KEYS * SD_DIM], g[SD_KEYS * SD_DIM], init[SD_DIM];
  for (int i = 0; i < SD_KEYS * SD_DIM; i++) g[i] = -1.0f;
  ck_assert_msg(psw_sparse_pull(sp, t->keys, SD_KEYS, rows, 0, &eb) == 0, "%s", eb.msg);
  for (int i = 0; i < 3; i++)
    ck_assert_msg(psw_sparse_push(sp, t->keys, SD_KEYS, g, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(psw_sparse_lost_pushes(sp), 0);
  int st = ps_test_stop(pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  /* pushes to the dead shard: dropped, the call goes on; said once, not
   * a line each (at most every 10 s, as the dense client says refusals) */
  char errlog[700];
  snprintf(errlog, sizeof errlog, "%s/client.err", ps_test_tmpdir());
  fflush(stderr);
  int saved = dup(2);
  ck_assert(freopen(errlog, "w", stderr) != NULL);
  for (int i = 0; i < SD_LOST; i++)
    ck_assert_msg(psw_sparse_push(sp, t->keys, SD_KEYS, g, 1, &eb) == 0, "%s", eb.msg);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  ck_assert_uint_eq(psw_sparse_lost_pushes(sp), SD_LOST);
  char *said = ps_test_read_file(errlog, NULL);
  int lines = 0;
  for (const char *q = said; (q = strstr(q, "not resent")); q++) lines++;
  ck_assert_msg(lines == 1, "%d lines about %d lost pushes, want 1:\n%s", lines, SD_LOST, said);
  free(said);
  /* a pull waits for the restart */
  sd_restart rs = {.yaml = yaml, .log = log, .pause_ms = 1500};
  ck_assert_int_eq(pthread_create(&rs.th, NULL, sd_restart_main, &rs), 0);
  int rc = psw_sparse_pull(sp, t->keys, SD_KEYS, rows, 1, &eb);
  pthread_join(rs.th, NULL);
  ck_assert_msg(rc == 0, "the pull across the restart: %s; see %s", eb.msg, log);
  for (int k = 0; k < SD_KEYS; k++) {
    ck_assert_int_eq(ps_init_row(init, "uniform", 0.05f, 11, 0, t->keys[k], SD_DIM), 0);
    for (int d = 0; d < SD_DIM; d++)
      ck_assert_msg(fabsf(rows[k * SD_DIM + d] - init[d] - 3.0f) < 1e-3f,
                    "key %d holds %g pushes, 3 were acknowledged", k,
                    (double)(rows[k * SD_DIM + d] - init[d]));
  }
  /* and pushes reach the restarted shard */
  ck_assert_msg(psw_sparse_push(sp, t->keys, SD_KEYS, g, 2, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(psw_sparse_lost_pushes(sp), SD_LOST);
  ck_assert_msg(psw_sparse_pull(sp, t->keys, 1, rows, 2, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_init_row(init, "uniform", 0.05f, 11, 0, t->keys[0], SD_DIM), 0);
  ck_assert(fabsf(rows[0] - init[0] - 4.0f) < 1e-3f);
  psw_sparse_close(sp);
  ps_config_release(&cfg);
  ck_assert_int_eq(ps_test_stop(rs.pid, SIGTERM, 15000), 0);
  free(t);
}
END_TEST

/* sd_pull_bytes pulls KEYS (N) in CODEC over R into OUT (the encoded
 * rows, N row sizes). */
static int sd_pull_bytes(ps_rpc *r, const uint64_t *keys, size_t n, ps_codec_id codec, void *out,
                         ps_errbuf *eb) {
  Ps__SparsePullRequest q = PS__SPARSE_PULL_REQUEST__INIT;
  q.model = "ctr", q.table = 0, q.keys = (uint64_t *)keys, q.n_keys = n, q.codec = codec;
  Ps__SparsePullReply *rep = NULL;
  int rc = ps_rpc_call(r, "/ps.Ps/SparsePull", &q.base, &ps__sparse_pull_reply__descriptor,
                       (ProtobufCMessage **)&rep, 10000, eb);
  if (rc) return rc;
  ck_assert_uint_eq(rep->codec, codec);
  ck_assert_uint_eq(rep->rows.len, n * ps_codec_size(codec, SD_DIM, 0));
  memcpy(out, rep->rows.data, rep->rows.len);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return 0;
}

/* sd_decode decodes N rows IN of CODEC into OUT, checking each. */
static void sd_decode(const uint8_t *in, size_t n, ps_codec_id codec, float *out) {
  size_t rb = ps_codec_size(codec, SD_DIM, 0);
  uint8_t tmp[4 + SD_DIM * 4];
  ps_errbuf eb;
  for (size_t i = 0; i < n; i++) {
    memcpy(tmp, in + i * rb, rb);
    ck_assert_int_eq(ps_codec_check(codec, tmp, rb, SD_DIM, 0, "row", &eb), 0);
    ps_codec_decode(codec, tmp, SD_DIM, 0, out + i * SD_DIM);
  }
}

/* sd_pull_codec pulls KEYS (N) in CODEC over R into OUT (decoded). */
static int sd_pull_codec(ps_rpc *r, const uint64_t *keys, size_t n, ps_codec_id codec, float *out,
                         ps_errbuf *eb) {
  uint8_t *raw = malloc(n * (4 + SD_DIM * 4) + 1);
  int rc = sd_pull_bytes(r, keys, n, codec, raw, eb);
  if (!rc) sd_decode(raw, n, codec, out);
  free(raw);
  return rc;
}

START_TEST(test_sparse_row_codecs) {
  sd_env e;
  sd_setup(&e, "periodic", 200);
  sd_tally *t = e.t;
  const char *yaml = e.yaml;
  pid_t pid = e.pid;
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, t->addr, &eb), 0);
  enum { N = 10 };
  float ref[N * SD_DIM], got[N * SD_DIM], g[N * SD_DIM], dec[N * SD_DIM];
  /* pulls: fp16 and int8 within their rounding of the fp32 rows */
  ck_assert_msg(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, ref, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(sd_pull_codec(r, t->keys, N, PS_CODEC_FP16, got, &eb) == 0, "%s", eb.msg);
  for (int i = 0; i < N * SD_DIM; i++)
    ck_assert_float_eq(got[i], ps_codec_h2f(ps_codec_f2h(ref[i])));
  ck_assert_msg(sd_pull_codec(r, t->keys, N, PS_CODEC_INT8, got, &eb) == 0, "%s", eb.msg);
  for (int k = 0; k < N; k++) {
    float m = 0;
    for (int d = 0; d < SD_DIM; d++) m = fmaxf(m, fabsf(ref[k * SD_DIM + d]));
    for (int d = 0; d < SD_DIM; d++)
      ck_assert_msg(fabsf(got[k * SD_DIM + d] - ref[k * SD_DIM + d]) <= m / 127 / 2 * 1.001f,
                    "key %d: int8 row element %d is %g, fp32 %g", k, d,
                    (double)got[k * SD_DIM + d], (double)ref[k * SD_DIM + d]);
  }
  /* pushes: an int8 and an fp16 push move each row by exactly its decoding (SGD lr 1) */
  uint8_t enc[N * (4 + SD_DIM * 4)];
  for (int c = 0; c < 2; c++) {
    ps_codec_id codec = c ? PS_CODEC_FP16 : PS_CODEC_INT8;
    size_t rb = ps_codec_size(codec, SD_DIM, 0);
    for (int i = 0; i < N * SD_DIM; i++) g[i] = 0.01f * (float)((i * 7) % 13) - 0.06f;
    for (int k = 0; k < N; k++) {
      ps_codec_encode(codec, g + k * SD_DIM, SD_DIM, 0, enc + k * rb);
      ps_codec_decode(codec, enc + k * rb, SD_DIM, 0, dec + k * SD_DIM);
    }
    ck_assert_msg(sd_push_raw(r, t->keys, N, codec, enc, N * rb, &eb) == 0, "%s", eb.msg);
    ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, got, &eb), 0);
    for (int i = 0; i < N * SD_DIM; i++) {
      ck_assert_float_eq(got[i], ref[i] - dec[i]);
      ref[i] = got[i];
    }
  }
  /* bad rows change nothing */
  size_t rb = ps_codec_size(PS_CODEC_INT8, SD_DIM, 0);
  for (int k = 0; k < N; k++) ps_codec_encode(PS_CODEC_INT8, g + k * SD_DIM, SD_DIM, 0, enc + k * rb);
  ck_assert_int_eq(sd_push_raw(r, t->keys, N, PS_CODEC_INT8, enc, N * rb - 1, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "need") != NULL, "%s", eb.msg);
  ck_assert_int_eq(sd_push_raw(r, t->keys, N, PS_CODEC_FP32, enc, N * rb, &eb), PS_EINVAL);
  float nan = NAN;
  memcpy(enc + 3 * rb, &nan, 4); /* row 3's scale */
  ck_assert_int_eq(sd_push_raw(r, t->keys, N, PS_CODEC_INT8, enc, N * rb, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "scale") != NULL, "%s", eb.msg);
  uint16_t h[N * SD_DIM];
  for (int i = 0; i < N * SD_DIM; i++) h[i] = ps_codec_f2h(g[i]);
  h[5 * SD_DIM + 1] = 0x7c00; /* +Inf */
  ck_assert_int_eq(sd_push_raw(r, t->keys, N, PS_CODEC_FP16, h, sizeof h, &eb), PS_EINVAL);
  ck_assert_int_eq(sd_push_raw(r, t->keys, N, PS_CODEC_ONEBIT, enc, N * rb, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "not a row codec") != NULL, "%s", eb.msg);
  ck_assert_int_eq(sd_push_raw(r, t->keys, N, 77, enc, N * rb, &eb), PS_EINVAL);
  Ps__SparsePullRequest q = PS__SPARSE_PULL_REQUEST__INIT;
  q.model = "ctr", q.table = 0, q.keys = t->keys, q.n_keys = N, q.codec = PS_CODEC_TOPK;
  ProtobufCMessage *rep = NULL;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/SparsePull", &q.base, &ps__sparse_pull_reply__descriptor,
                               &rep, 10000, &eb), PS_EINVAL);
  ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, got, &eb), 0);
  ck_assert_int_eq(memcmp(got, ref, sizeof got), 0);
  /* the worker's client with int8 pushes and fp16 pulls (after 1 warm-up clock) */
  ps_config cfg;
  ck_assert_msg(ps_config_load(&cfg, yaml, &eb) == 0, "%s", eb.msg);
  psw_sparse *sp;
  ck_assert_msg(psw_sparse_open(&sp, &cfg, "ctr", 0, SD_DIM, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(psw_sparse_row_codec(PS_CODEC_TOPK), PS_CODEC_INT8);
  ck_assert_int_eq(psw_sparse_row_codec(PS_CODEC_ONEBIT), PS_CODEC_INT8);
  ck_assert_int_eq(psw_sparse_row_codec(PS_CODEC_FP16), PS_CODEC_FP16);
  psw_sparse_set_codecs(sp, PS_CODEC_INT8, PS_CODEC_FP16, 1);
  ck_assert_int_eq(psw_sparse_pull(sp, t->keys, N, got, 0, &eb), 0); /* warm-up: fp32 */
  ck_assert_int_eq(memcmp(got, ref, sizeof got), 0);
  ck_assert_int_eq(psw_sparse_pull(sp, t->keys, N, got, 1, &eb), 0);
  for (int i = 0; i < N * SD_DIM; i++) ck_assert_float_eq(got[i], ps_codec_h2f(ps_codec_f2h(ref[i])));
  ck_assert_int_eq(psw_sparse_push(sp, t->keys, N, g, 1, &eb), 0);
  for (int k = 0; k < N; k++) {
    ps_codec_encode(PS_CODEC_INT8, g + k * SD_DIM, SD_DIM, 0, enc);
    ps_codec_decode(PS_CODEC_INT8, enc, SD_DIM, 0, dec + k * SD_DIM);
  }
  ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, got, &eb), 0);
  for (int i = 0; i < N * SD_DIM; i++) ck_assert_float_eq(got[i], ref[i] - dec[i]);
  psw_sparse_close(sp);
  ps_config_release(&cfg);
  ps_rpc_close(r);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 15000), 0);
  free(t);
}
END_TEST

static int sd_cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* psctl export of the table: rows mostly evicted to RocksDB, some changed
 * in memory since; the .npz holds every row once, keys in order, each
 * row as a pull reads it (checked by Python's zipfile and an NPY parse). */
START_TEST(test_sparse_export) {
  sd_env e;
  sd_setup(&e, "periodic", 3600000); /* no snapshot: rows only in memory stay there */
  sd_tally *t = e.t;
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, t->addr, &eb), 0);
  sd_push_rounds(r, t, 2);
  uint64_t keys[SD_KEYS];
  memcpy(keys, t->keys, sizeof keys);
  qsort(keys, SD_KEYS, sizeof *keys, sd_cmp_u64);
  float rows[SD_KEYS * SD_DIM];
  ck_assert_int_eq(sd_pull_codec(r, keys, SD_KEYS, PS_CODEC_FP32, rows, &eb), 0);
  /* the last 6 rows touched stay in memory, changed since RocksDB got them */
  int idx[6] = {0, 1, 2, 3, 4, 5};
  ck_assert_int_eq(sd_push(r, t, idx, 6, &eb), 0);
  for (int k = 0; k < SD_KEYS; k++)
    for (int i = 0; i < 6; i++)
      if (keys[k] == t->keys[i])
        for (int j = 0; j < SD_DIM; j++) rows[k * SD_DIM + j] -= -1.0f; /* SGD lr 1, gradient -1 */
  /* ExportRows of a table the shard does not have */
  Ps__ExportRowsRequest xq = PS__EXPORT_ROWS_REQUEST__INIT;
  xq.model = "ctr", xq.table = 5;
  ProtobufCMessage *xr = NULL;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/ExportRows", &xq.base, &ps__export_rows_reply__descriptor,
                               &xr, 10000, &eb), PS_ENOENT);
  ps_rpc_close(r);
  const char *dir = strrchr(e.log, '/') ? e.log : NULL;
  char d[700], npz[800];
  snprintf(d, sizeof d, "%.*s", (int)(strrchr(dir, '/') - dir), dir);
  snprintf(npz, sizeof npz, "%s/ctr.npz", d);
  char plog[800];
  snprintf(plog, sizeof plog, "%s/psctl.log", d);
  char *argv[] = {(char *)ps_test_bin("psctl"), "export", "--config", e.yaml, "--model", "ctr",
                  "-o", npz, NULL};
  int st = ps_test_run(argv, plog, 60000);
  char *pl = ps_test_read_file(plog, NULL);
  ck_assert_msg(st == 0 && strstr(pl, "1 embedding table, 48 rows"), "psctl export: %s", pl);
  free(pl);
  char *out = ps_test_npz_py(d, npz);
  /* the expected members, as the checker prints them */
  size_t cap = 64 * SD_KEYS * SD_DIM + 64 * SD_KEYS, n = 0;
  char *wk = malloc(cap), *wr = malloc(cap);
  n = (size_t)snprintf(wk, cap, ".keys.npy <u8 (%d,)", SD_KEYS);
  for (int k = 0; k < SD_KEYS; k++)
    n += (size_t)snprintf(wk + n, cap - n, " %llu", (unsigned long long)keys[k]);
  snprintf(wk + n, cap - n, "\n");
  n = (size_t)snprintf(wr, cap, ".rows.npy <f4 (%d, %d)", SD_KEYS, SD_DIM);
  for (int i = 0; i < SD_KEYS * SD_DIM; i++) n += (size_t)snprintf(wr + n, cap - n, " %g", (double)rows[i]);
  snprintf(wr + n, cap - n, "\n");
  ck_assert_msg(strstr(out, wk) != NULL, "no keys member as expected in:\n%s\nwanted:%s", out, wk);
  ck_assert_msg(strstr(out, wr) != NULL, "no rows member as expected in:\n%s\nwanted:%s", out, wr);
  free(wk), free(wr), free(out);
  /* an unknown model writes nothing */
  char bad[800];
  snprintf(bad, sizeof bad, "%s/none.npz", d);
  char *argv2[] = {(char *)ps_test_bin("psctl"), "export", "--config", e.yaml, "--model", "nope",
                   "-o", bad, NULL};
  ck_assert_int_eq(ps_test_run(argv2, plog, 60000), 1);
  ck_assert_int_ne(access(bad, F_OK), 0);
  ck_assert_int_eq(ps_test_stop(e.pid, SIGTERM, 15000), 0);
  free(t);
}
END_TEST

/* A log of sparse pushes left by a sync run, started under periodic:
 * replayed into the rows, written and removed (as the dense test in
 * test_durability.c does for chunks). */
START_TEST(test_sparse_sync_log_then_periodic) {
  sd_env e;
  sd_setup(&e, "sync", 3600000); /* no snapshot: everything is in the log */
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, e.t->addr, &eb), 0);
  sd_push_rounds(r, e.t, 3);
  ps_rpc_close(r);
  ck_assert(WIFSIGNALED(ps_test_stop(e.pid, SIGKILL, 5000)));
  ps_test_file_replace(e.yaml, e.yaml, "  mode: sync\n", "  mode: periodic\n");
  pid_t pid = ps_test_dur_start(e.yaml, e.log, e.gp, e.cp, NULL);
  long long n[SD_KEYS];
  sd_counts(e.t, n, e.log);
  for (int k = 0; k < SD_KEYS; k++)
    ck_assert_msg(n[k] == 3, "key %d: %lld pushes after the periodic start, 3 logged; see %s", k,
                  n[k], e.log);
  ck_assert_msg(ps_test_dur_replayed(e.log) >= 24, "the periodic start replayed too little; see %s",
                e.log);
  /* and a kill now loses nothing of it: the replay was written */
  ck_assert(WIFSIGNALED(ps_test_stop(pid, SIGKILL, 5000)));
  pid = ps_test_dur_start(e.yaml, e.log, e.gp, e.cp, NULL);
  sd_counts(e.t, n, e.log);
  for (int k = 0; k < SD_KEYS; k++) ck_assert_int_eq(n[k], 3);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 15000), 0);
  free(e.t);
}
END_TEST

/* sd_dense0 pushes G (N floats, NULL: pulls only) to dense chunk 0 of
 * "ctr" over the channel at ADDR, then pulls it into OUT (retrying while
 * the shard starts). */
static void sd_dense0(const char *addr, const float *g, float *out, uint64_t n, const char *log) {
  uint32_t id = 0;
  uint64_t v;
  ps_errbuf eb;
  int err;
  int64_t end = ps_test_now_ms() + 15000;
  do {
    ps_chan_client *c;
    err = ps_test_chan_connect(&c, addr, "test", 10000, &eb);
    if (err == 0 && g) err = ps_test_push(c, "ctr", &id, 1, g, n, 0, 0, 0, &v, &eb);
    if (err == 0) err = ps_test_pull(c, "ctr", &id, 1, out, n, 0, 0, &v, &eb);
    ps_chan_close(c);
    if (err && !g) usleep(20000);
  } while (err && !g && ps_test_now_ms() < end);
  ck_assert_msg(err == 0, "dense chunk 0: %s; see %s", eb.msg, log);
}

/* sd_sh runs CMD (a shell line) and fails the test when it fails. */
static void sd_sh(const char *cmd) { ck_assert_msg(system(cmd) == 0, "'%s' failed", cmd); }

/* A store whose dense snapshot is ahead of its redo log's last record,
 * with the rows' position behind both (what a shard of the binary before
 * the write-ahead rule could leave when killed before the records its
 * snapshot held were synced), forged here from copies: the rows' state
 * before any record, the log's first 5 records, the dense snapshot of
 * 10.  The restart must not give seqs 6..10 again: an acknowledged dense
 * push after it survives a kill. */
START_TEST(test_snapshot_ahead_of_log) {
  sd_env e;
  sd_setup(&e, "sync", 3600000); /* no snapshot but the one at the stop */
  ck_assert_int_eq(ps_test_stop(e.pid, SIGTERM, 15000), 0);
  char d[700], cmd[5000];
  snprintf(d, sizeof d, "%.*s", (int)(strrchr(e.yaml, '/') - e.yaml), e.yaml);
  snprintf(cmd, sizeof cmd, "cp -a %s/shard0/sparse %s/sparse0", d, d);
  sd_sh(cmd);
  psw_ctr_shape sh = {1, SD_DIM, 1, NULL, 0, 0, 0};
  ps_test_ctr m;
  ps_test_ctr_model(&m, &sh, "sgd", 1.0f, 11);
  ps_layout l;
  uint32_t sid = 0;
  ps_errbuf eb;
  ck_assert_int_eq(ps_layout_build(&l, m.spec, 1024, &sid, 1, &eb), 0);
  uint64_t n = l.chunks[0].len;
  ps_layout_release(&l);
  ps_test_ctr_release(&m);
  float *g = malloc(n * sizeof *g), *v0 = malloc(n * sizeof *v0), *v1 = malloc(n * sizeof *v1);
  for (uint64_t i = 0; i < n; i++) g[i] = 1.0f;
  pid_t pid = ps_test_dur_start(e.yaml, e.log, e.gp, e.cp, NULL);
  for (int i = 0; i < 5; i++) sd_dense0(e.t->caddr, g, v0, n, e.log);
  snprintf(cmd, sizeof cmd, "cp -a %s/shard0/redo %s/redo5", d, d);
  sd_sh(cmd); /* records 1..5, each synced before its answer */
  for (int i = 0; i < 5; i++) sd_dense0(e.t->caddr, g, v0, n, e.log);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 15000), 0); /* the snapshot of 10 */
  snprintf(cmd, sizeof cmd, "rm -rf %s/shard0/sparse %s/shard0/redo && mv %s/sparse0 "
           "%s/shard0/sparse && mv %s/redo5 %s/shard0/redo", d, d, d, d, d, d);
  sd_sh(cmd);
  pid = ps_test_dur_start(e.yaml, e.log, e.gp, e.cp, NULL);
  sd_dense0(e.t->caddr, NULL, v0, n, e.log);
  sd_dense0(e.t->caddr, g, v1, n, e.log); /* acknowledged */
  for (uint64_t i = 0; i < n; i++) ck_assert_float_eq(v1[i], v0[i] - 1.0f);
  ck_assert(WIFSIGNALED(ps_test_stop(pid, SIGKILL, 5000)));
  pid = ps_test_dur_start(e.yaml, e.log, e.gp, e.cp, NULL);
  sd_dense0(e.t->caddr, NULL, v1, n, e.log);
  for (uint64_t i = 0; i < n; i++)
    ck_assert_msg(v1[i] == v0[i] - 1.0f, "element %llu: %g after the kill, %g acknowledged; see %s",
                  (unsigned long long)i, (double)v1[i], (double)(v0[i] - 1.0f), e.log);
  ck_assert_int_eq(ps_test_stop(pid, SIGTERM, 15000), 0);
  char *text = ps_test_read_file(e.log, NULL);
  ck_assert_msg(strstr(text, "the snapshot holds records up to 10, the redo log ends at 5"),
                "no word of the snapshot ahead of the log; see %s", e.log);
  free(text);
  free(g), free(v0), free(v1);
  free(e.t);
}
END_TEST

/* ---- the tensor channel ----------------------------------------------------- */

/* sd_chan_pull pulls KEYS (N) of TABLE in CODEC over C into OUT (the
 * encoded rows, NBYTES). */
static int sd_chan_pull(ps_chan_client *c, uint32_t table, const uint64_t *keys, size_t n,
                        uint32_t codec, void *out, size_t nbytes, ps_errbuf *eb) {
  ps_chan_sparse q = {.model = "ctr", .table = table, .codec = codec, .keys = keys,
                      .nkeys = (uint32_t)n};
  int rc = ps_chan_send_sparse_pull(c, &q, out, nbytes, NULL, eb);
  return rc ? rc : ps_chan_recv(c, NULL, NULL, eb);
}

/* sd_cfg loads YAML into CFG with rows on PLANE; GRPC_ADDR / CHAN_ADDR
 * (NULL: as written) replace shard 0's addresses. */
static void sd_cfg(ps_config *cfg, const char *yaml, int plane, const char *grpc_addr,
                   const char *chan_addr) {
  ps_errbuf eb;
  ck_assert_msg(ps_config_load(cfg, yaml, &eb) == 0, "%s", eb.msg);
  cfg->sparse.plane = plane;
  if (grpc_addr) {
    free(cfg->shards[0].grpc_addr);
    cfg->shards[0].grpc_addr = strdup(grpc_addr);
  }
  if (chan_addr) {
    free(cfg->shards[0].channel_addr);
    cfg->shards[0].channel_addr = strdup(chan_addr);
  }
}

static const ps_codec_id sd_row_codecs[3] = {PS_CODEC_FP32, PS_CODEC_FP16, PS_CODEC_INT8};

/* Rows on the channel are the gRPC calls' bit for bit (under sync: a push
 * is answered once logged), through ps_chan and through psw_sparse. */
START_TEST(test_sparse_chan_round_trip) {
  sd_env e;
  sd_setup(&e, "sync", 200);
  sd_tally *t = e.t;
  ps_rpc *r;
  ps_chan_client *c;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, t->addr, &eb), 0);
  ck_assert_msg(ps_test_chan_connect(&c, t->caddr, "test", 10000, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(ps_chan_features(c) & PS_CHAN_FEAT_SPARSE, PS_CHAN_FEAT_SPARSE);
  enum { N = 12 };
  uint8_t viag[N * (4 + SD_DIM * 4)], viac[sizeof viag], enc[sizeof viag];
  float before[N * SD_DIM], after[N * SD_DIM], g[N * SD_DIM], dec[N * SD_DIM];
  for (int ci = 0; ci < 3; ci++) {
    ps_codec_id codec = sd_row_codecs[ci];
    size_t rb = ps_codec_size(codec, SD_DIM, 0);
    ck_assert_msg(sd_pull_bytes(r, t->keys, N, codec, viag, &eb) == 0, "%s", eb.msg);
    memset(viac, 0xee, sizeof viac);
    ck_assert_msg(sd_chan_pull(c, 0, t->keys, N, codec, viac, N * rb, &eb) == 0, "%s", eb.msg);
    ck_assert_msg(memcmp(viag, viac, N * rb) == 0, "%s rows differ between the planes",
                  ps_codec_name(codec));
    /* a push on the channel moves each row by exactly its decoding, as gRPC's then does */
    for (int i = 0; i < N * SD_DIM; i++) g[i] = 0.01f * (float)((i * 5 + ci) % 11) - 0.05f;
    for (int k = 0; k < N; k++) ps_codec_encode(codec, g + k * SD_DIM, SD_DIM, 0, enc + k * rb);
    sd_decode(enc, N, codec, dec);
    ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, before, &eb), 0);
    ck_assert_msg(sd_chan_push(c, t->keys, N, codec, enc, N * rb, &eb) == 0, "%s", eb.msg);
    ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, after, &eb), 0);
    for (int i = 0; i < N * SD_DIM; i++) ck_assert_float_eq(after[i], before[i] - dec[i]);
    ck_assert_msg(sd_push_raw(r, t->keys, N, codec, enc, N * rb, &eb) == 0, "%s", eb.msg);
    ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, before, &eb), 0);
    for (int i = 0; i < N * SD_DIM; i++) ck_assert_float_eq(before[i], after[i] - dec[i]);
  }
  /* psw_sparse on the channel alone (no gRPC address to fall back on)
   * and on gRPC alone read the same rows, and push the same way */
  ps_config cc, cg;
  sd_cfg(&cc, e.yaml, PS_SPARSE_PLANE_CHANNEL, "127.0.0.1:1", NULL);
  sd_cfg(&cg, e.yaml, PS_SPARSE_PLANE_GRPC, NULL, NULL);
  cc.workers.retry_ms = 0; /* a call that went to gRPC fails at once */
  psw_sparse *sc, *sg;
  ck_assert_msg(psw_sparse_open(&sc, &cc, "ctr", 0, SD_DIM, 0, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_sparse_open(&sg, &cg, "ctr", 0, SD_DIM, 0, &eb) == 0, "%s", eb.msg);
  for (int ci = 0; ci < 3; ci++) {
    ps_codec_id codec = sd_row_codecs[ci];
    psw_sparse_set_codecs(sc, codec, codec, 0);
    psw_sparse_set_codecs(sg, codec, codec, 0);
    ck_assert_msg(psw_sparse_pull(sc, t->keys, N, after, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_msg(psw_sparse_pull(sg, t->keys, N, before, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_msg(memcmp(after, before, sizeof after) == 0, "psw_sparse: %s rows differ",
                  ps_codec_name(codec));
    size_t rb = ps_codec_size(codec, SD_DIM, 0);
    for (int k = 0; k < N; k++) ps_codec_encode(codec, g + k * SD_DIM, SD_DIM, 0, enc + k * rb);
    sd_decode(enc, N, codec, dec);
    for (int p = 0; p < 2; p++) {
      ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, before, &eb), 0);
      ck_assert_msg(psw_sparse_push(p ? sg : sc, t->keys, N, g, 0, &eb) == 0, "%s", eb.msg);
      ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, after, &eb), 0);
      for (int i = 0; i < N * SD_DIM; i++) ck_assert_float_eq(after[i], before[i] - dec[i]);
    }
  }
  ck_assert_uint_eq(psw_sparse_lost_pushes(sc), 0);
  psw_sparse_close(sc);
  psw_sparse_close(sg);
  ps_config_release(&cc);
  ps_config_release(&cg);
  ps_chan_close(c);
  ps_rpc_close(r);
  ck_assert_int_eq(ps_test_stop(e.pid, SIGTERM, 15000), 0);
  free(t);
}
END_TEST

/* Bad sparse requests on the channel: refused by name, rows unchanged,
 * the connection usable. */
START_TEST(test_sparse_chan_bad_input) {
  sd_env e;
  sd_setup(&e, "periodic", 200);
  sd_tally *t = e.t;
  ps_chan_client *c;
  ps_errbuf eb;
  ck_assert_msg(ps_test_chan_connect(&c, t->caddr, "test", 10000, &eb) == 0, "%s", eb.msg);
  enum { N = 10 };
  float ref[N * SD_DIM], got[N * SD_DIM], g[N * SD_DIM];
  ck_assert_msg(sd_chan_pull(c, 0, t->keys, N, PS_CODEC_FP32, ref, sizeof ref, &eb) == 0, "%s",
                eb.msg);
  for (int i = 0; i < N * SD_DIM; i++) g[i] = 0.125f;
  struct {
    int pull;
    uint32_t table, codec;
    const char *model;
    size_t nkeys, nbytes;
    int nan, dup, err;
    const char *msg;
  } bad[] = {
      {1, 5, PS_CODEC_FP32, "ctr", N, sizeof g, 0, 0, PS_ENOENT, "has no sparse table 5"},
      {0, 5, PS_CODEC_FP32, "ctr", N, sizeof g, 0, 0, PS_ENOENT, "has no sparse table 5"},
      {0, 0, PS_CODEC_FP32, "nope", N, sizeof g, 0, 0, PS_ENOENT, "nope"},
      {0, 0, PS_CODEC_FP32, "ctr", 2, SD_DIM * 4, 0, 0, PS_EINVAL,
       "2 keys of dim 4 need 32 bytes of rows, got 16"},
      {0, 0, PS_CODEC_FP32, "ctr", N, sizeof g, 1, 0, PS_EINVAL, "is not finite"},
      {0, 0, PS_CODEC_ONEBIT, "ctr", N, sizeof g, 0, 0, PS_EINVAL, "not a row codec"},
      {1, 0, PS_CODEC_FP32, "ctr", 2, 2 * SD_DIM * 4, 0, 1, PS_EINVAL, ""},
      {0, 0, PS_CODEC_FP32, "ctr", 2, 2 * SD_DIM * 4, 0, 1, PS_EINVAL, ""},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t keys[N];
    memcpy(keys, t->keys, sizeof keys);
    if (bad[i].dup) keys[1] = keys[0];
    g[5] = bad[i].nan ? NAN : 0.125f;
    ps_chan_sparse q = {.model = bad[i].model, .table = bad[i].table, .codec = bad[i].codec,
                        .keys = keys, .nkeys = (uint32_t)bad[i].nkeys};
    int rc = bad[i].pull ? ps_chan_send_sparse_pull(c, &q, got, bad[i].nbytes, NULL, &eb)
                         : ps_chan_send_sparse_push(c, &q, g, bad[i].nbytes, NULL, &eb);
    if (rc == 0) rc = ps_chan_recv(c, NULL, NULL, &eb);
    ck_assert_msg(rc == bad[i].err, "case %zu: %d (%s), want %d", i, rc, eb.msg, bad[i].err);
    ck_assert_msg(strstr(eb.msg, bad[i].msg) != NULL, "case %zu: %s", i, eb.msg);
    ck_assert_msg(ps_chan_alive(c), "case %zu closed the connection", i);
  }
  ck_assert_msg(sd_chan_pull(c, 0, t->keys, N, PS_CODEC_FP32, got, sizeof got, &eb) == 0, "%s",
                eb.msg);
  ck_assert_int_eq(memcmp(got, ref, sizeof got), 0);
  /* a reply of another size than asked is refused by the client, rows untouched */
  memset(got, 0, sizeof got);
  ck_assert_int_eq(sd_chan_pull(c, 0, t->keys, N, PS_CODEC_FP32, got, sizeof got - 4, &eb),
                   PS_EINVAL);
  ck_assert(ps_chan_alive(c));
  ps_chan_close(c);
  ck_assert_int_eq(ps_test_stop(e.pid, SIGTERM, 15000), 0);
  free(t);
}
END_TEST

/* Requests over limits.max_request_bytes (1024 here: psw_sparse counts
 * 16 + 4 x 4 bytes a key, so 32 keys a request): psw_sparse pulls 200
 * keys of one shard in parts, on the channel and on gRPC, every row its
 * initial value; a push of them is refused before anything is sent,
 * naming the limit, the keys, the bytes and what to raise (nothing lost,
 * rows unchanged), and one of the 32 keys one request holds is applied;
 * one sent whole by a client whose file has a larger limit is the
 * shard's refusal (PS_ETOOBIG), not a lost push.  Before, the pull went
 * in one request, which the shard refused ("a request with 1600 bytes of
 * data: over this shard's limits.max_request_bytes 1024" on the channel,
 * "200 rows of 4 floats exceed max_request_bytes 1024" on gRPC), the
 * push was refused likewise on gRPC and, on the channel, counted lost
 * with the connection the shard closed (psw_sparse_push returned 0). */
START_TEST(test_sparse_request_bytes) {
  sd_env e;
  sd_setup_extra(&e, "sync", 200, "limits:\n  max_request_bytes: 1024\n");
  enum { N = 200, FIT = 1024 / (PSW_SPARSE_KEY_BYTES + SD_DIM * 4) };
  static uint64_t keys[N];
  static float rows[N * SD_DIM], again[N * SD_DIM], g[N * SD_DIM];
  float init[SD_DIM];
  for (int i = 0; i < N; i++) keys[i] = (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < N * SD_DIM; i++) g[i] = 0.25f;
  ps_errbuf eb;
  for (int plane = 0; plane < 2; plane++) {
    ps_config cfg;
    sd_cfg(&cfg, e.yaml, plane ? PS_SPARSE_PLANE_GRPC : PS_SPARSE_PLANE_CHANNEL, NULL, NULL);
    psw_sparse *sp;
    ck_assert_msg(psw_sparse_open(&sp, &cfg, "ctr", 0, SD_DIM, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_msg(psw_sparse_pull(sp, keys, N, rows, 0, &eb) == 0, "plane %d: %s", plane, eb.msg);
    for (int k = 0; k < N && !plane; k++) {
      ck_assert_int_eq(ps_init_row(init, "uniform", 0.05f, 11, 0, keys[k], SD_DIM), 0);
      for (int d = 0; d < SD_DIM; d++) ck_assert_float_eq(rows[k * SD_DIM + d], init[d]);
    }
    ck_assert_int_eq(psw_sparse_push(sp, keys, N, g, 0, &eb), PS_ETOOBIG);
    ck_assert_msg(strstr(eb.msg, "a push of 200 keys to shard 0 takes 6400 bytes (200 keys x "
                         "(16 + dim 4 x 4) bytes), over limits.max_request_bytes 1024 (32 keys "
                         "of this table at most)") &&
                  strstr(eb.msg, "raise limits.max_request_bytes to at least 6400 in every "
                         "shard's and psw's cluster file, or lower --batch"), "%s", eb.msg);
    ck_assert_uint_eq(psw_sparse_lost_pushes(sp), 0);
    ck_assert_msg(psw_sparse_pull(sp, keys, N, again, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_int_eq(memcmp(again, rows, sizeof rows), 0);
    ck_assert_msg(psw_sparse_push(sp, keys, FIT, g, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_msg(psw_sparse_pull(sp, keys, N, again, 0, &eb) == 0, "%s", eb.msg);
    for (int i = 0; i < N * SD_DIM; i++)
      ck_assert_float_eq(again[i], i < FIT * SD_DIM ? rows[i] - 0.25f : rows[i]);
    ck_assert_uint_eq(psw_sparse_lost_pushes(sp), 0);
    /* a client told of a larger limit than the shard's sends the push
     * whole: the shard refuses it (on the channel: answers and closes the
     * connection), applied nowhere; a refusal, not a lost push (before, on
     * the channel: counted lost, psw_sparse_push returned 0) */
    memcpy(rows, again, sizeof rows);
    cfg.max_request_bytes = 1 << 20;
    ck_assert_int_eq(psw_sparse_push(sp, keys, N, g, 0, &eb), PS_ETOOBIG);
    ck_assert_msg(strstr(eb.msg, "max_request_bytes 1024"), "%s", eb.msg);
    ck_assert_uint_eq(psw_sparse_lost_pushes(sp), 0);
    cfg.max_request_bytes = 1024;
    ck_assert_msg(psw_sparse_pull(sp, keys, N, again, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_int_eq(memcmp(again, rows, sizeof rows), 0);
    psw_sparse_close(sp);
    ps_config_release(&cfg);
  }
  ck_assert_int_eq(ps_test_stop(e.pid, SIGTERM, 15000), 0);
  free(e.t);
}
END_TEST

/* A stand-in for a shard that predates rows on the channel: it answers
 * the HELLO (offering rows when OFFER, as a shard whose op table lost them
 * would) and closes the connection on any other frame, as an old shard
 * does on an op it does not know. */
typedef struct sd_old_shard {
  int fd, port, offer;
  atomic_int hellos, others;
  pthread_t th;
} sd_old_shard;

static int sd_read_full(int fd, void *p, size_t n) {
  for (size_t got = 0; got < n;) {
    ssize_t r = read(fd, (uint8_t *)p + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static void *sd_old_shard_main(void *arg) {
  sd_old_shard *o = arg;
  int cfd;
  while ((cfd = accept(o->fd, NULL, NULL)) >= 0) {
    for (;;) {
      uint8_t hb[PS_CHAN_HDR_LEN], meta[4096];
      ps_chan_hdr h;
      if (sd_read_full(cfd, hb, sizeof hb) || ps_chan_hdr_decode(&h, hb, 1u << 30) ||
          h.meta_len > sizeof meta || sd_read_full(cfd, meta, h.meta_len))
        break;
      Ps__ChanMeta *m = ps__chan_meta__unpack(NULL, h.meta_len, meta);
      int hello = m && (int)m->op == PS__CHAN_OP__CHAN_HELLO;
      if (m) ps__chan_meta__free_unpacked(m, NULL);
      if (!hello) {
        atomic_fetch_add(&o->others, 1);
        break;
      }
      atomic_fetch_add(&o->hellos, 1);
      Ps__ChanMeta rm = PS__CHAN_META__INIT;
      rm.op = PS__CHAN_OP__CHAN_HELLO, rm.proto_version = PS_CHAN_VERSION, rm.cluster = "test";
      rm.features = o->offer ? PS_CHAN_FEAT_SPARSE : 0;
      uint8_t out[PS_CHAN_HDR_LEN + 256];
      size_t ml = ps__chan_meta__pack(&rm, out + PS_CHAN_HDR_LEN);
      ps_chan_hdr rh = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                        .meta_len = (uint32_t)ml, .req_id = h.req_id};
      ps_chan_hdr_encode(out, &rh);
      if (write(cfd, out, PS_CHAN_HDR_LEN + ml) < 0) break;
    }
    close(cfd);
  }
  return NULL;
}

static void sd_old_shard_start(sd_old_shard *o, int offer) {
  memset(o, 0, sizeof *o);
  o->offer = offer;
  o->fd = ps_test_listen(0, &o->port);
  ck_assert_int_eq(pthread_create(&o->th, NULL, sd_old_shard_main, o), 0);
}

static void sd_old_shard_stop(sd_old_shard *o) {
  shutdown(o->fd, SHUT_RDWR); /* ends the accept */
  pthread_join(o->th, NULL);
  close(o->fd);
}

/* psw_sparse falls back to gRPC for a shard whose channel does not offer
 * rows (nothing but the HELLO sent there), and for a pull whose channel
 * closes on the request (an old shard): the rows are the shard's all the
 * same, no push lost. */
START_TEST(test_sparse_chan_fallback) {
  sd_env e;
  sd_setup(&e, "periodic", 200);
  sd_tally *t = e.t;
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, t->addr, &eb), 0);
  enum { N = 8 };
  float want[N * SD_DIM], got[N * SD_DIM], g[N * SD_DIM];
  for (int i = 0; i < N * SD_DIM; i++) g[i] = -0.5f;
  for (int offer = 0; offer < 2; offer++) {
    sd_old_shard o;
    sd_old_shard_start(&o, offer);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", o.port);
    ps_config cfg;
    sd_cfg(&cfg, e.yaml, PS_SPARSE_PLANE_CHANNEL, NULL, addr);
    psw_sparse *sp;
    ck_assert_msg(psw_sparse_open(&sp, &cfg, "ctr", 0, SD_DIM, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, want, &eb), 0);
    ck_assert_msg(psw_sparse_pull(sp, t->keys, N, got, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_int_eq(memcmp(got, want, sizeof got), 0);
    ck_assert_msg(psw_sparse_push(sp, t->keys, N, g, 0, &eb) == 0, "%s", eb.msg);
    ck_assert_uint_eq(psw_sparse_lost_pushes(sp), 0);
    ck_assert_int_eq(sd_pull_codec(r, t->keys, N, PS_CODEC_FP32, got, &eb), 0);
    for (int i = 0; i < N * SD_DIM; i++) ck_assert_float_eq(got[i], want[i] + 0.5f);
    int secured = cfg.security.secret_file != NULL; /* the stand-in proves no key */
    psw_sparse_close(sp);
    ps_config_release(&cfg);
    sd_old_shard_stop(&o);
    ck_assert_int_ge(atomic_load(&o.hellos), 1);
    if (offer && !secured) ck_assert_int_ge(atomic_load(&o.others), 1); /* the pull it closed on */
    else ck_assert_int_eq(atomic_load(&o.others), 0);                 /* no row sent to it */
  }
  ps_rpc_close(r);
  ck_assert_int_eq(ps_test_stop(e.pid, SIGTERM, 15000), 0);
  free(t);
}
END_TEST

/* sd_raw_frame writes one frame of meta M and LEN bytes of DATA (id ID)
 * on socket FD. */
static void sd_raw_frame(int fd, const Ps__ChanMeta *m, const void *data, size_t len, uint64_t id) {
  uint8_t out[PS_CHAN_HDR_LEN + 512];
  size_t ml = ps__chan_meta__get_packed_size(m);
  ck_assert_uint_le(ml, sizeof out - PS_CHAN_HDR_LEN);
  ps__chan_meta__pack(m, out + PS_CHAN_HDR_LEN);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION, .meta_len = (uint32_t)ml,
                   .data_len = len, .req_id = id};
  ps_chan_hdr_encode(out, &h);
  ck_assert_int_eq(write(fd, out, PS_CHAN_HDR_LEN + ml), (ssize_t)(PS_CHAN_HDR_LEN + ml));
  if (len) ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
}

/* sd_raw_reply reads one reply frame from FD: its meta (caller frees) and
 * up to CAP bytes of data into DATA (*LEN: its data_len). */
static Ps__ChanMeta *sd_raw_reply(int fd, void *data, size_t cap, uint64_t *len) {
  uint8_t hb[PS_CHAN_HDR_LEN], meta[4096];
  ps_chan_hdr h;
  ck_assert_int_eq(sd_read_full(fd, hb, sizeof hb), 0);
  ck_assert_int_eq(ps_chan_hdr_decode(&h, hb, 1u << 30), 0);
  ck_assert_uint_le(h.meta_len, sizeof meta);
  ck_assert_int_eq(sd_read_full(fd, meta, h.meta_len), 0);
  ck_assert_uint_le(h.data_len, cap);
  if (h.data_len) ck_assert_int_eq(sd_read_full(fd, data, h.data_len), 0);
  *len = h.data_len;
  Ps__ChanMeta *m = ps__chan_meta__unpack(NULL, h.meta_len, meta);
  ck_assert_ptr_nonnull(m);
  return m;
}

/* Sparse frames whose data disagrees with their key count (which the
 * client never sends): refused with the counts, the connection kept, the
 * next request served (raw frames: skipped on an authenticated channel,
 * which closes a hello without its proof by design). */
START_TEST(test_sparse_chan_bad_frames) {
  sd_env e;
  sd_setup(&e, "periodic", 200);
  ps_config cfg;
  sd_cfg(&cfg, e.yaml, PS_SPARSE_PLANE_CHANNEL, NULL, NULL);
  int secured = cfg.security.secret_file != NULL;
  ps_config_release(&cfg);
  if (secured) {
    ck_assert_int_eq(ps_test_stop(e.pid, SIGTERM, 15000), 0);
    free(e.t);
    PS_SKIP("raw frames without the hello's proof: refused by an authenticated shard by design");
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)e.cp),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  Ps__ChanMeta m = PS__CHAN_META__INIT;
  m.op = PS__CHAN_OP__CHAN_HELLO, m.proto_version = PS_CHAN_VERSION, m.cluster = "test";
  sd_raw_frame(fd, &m, NULL, 0, 1);
  uint64_t len;
  float rows[3 * SD_DIM];
  Ps__ChanMeta *r = sd_raw_reply(fd, rows, sizeof rows, &len);
  ck_assert_int_eq(r->op, PS__CHAN_OP__CHAN_HELLO);
  ck_assert_uint_eq(r->features & PS_CHAN_FEAT_SPARSE, PS_CHAN_FEAT_SPARSE);
  ps__chan_meta__free_unpacked(r, NULL);
  ps__chan_meta__init(&m);
  m.model = "ctr", m.op = PS__CHAN_OP__CHAN_SPARSE_PULL, m.n_keys = 3;
  sd_raw_frame(fd, &m, e.t->keys, 2 * sizeof(uint64_t), 2); /* 2 keys' bytes for 3 */
  r = sd_raw_reply(fd, rows, sizeof rows, &len);
  ck_assert_int_eq(r->op, PS__CHAN_OP__CHAN_ERROR);
  ck_assert_int_eq(r->status, PS_EINVAL);
  ck_assert_msg(strstr(r->message, "3 keys need 24 bytes of keys, the frame carries 16") != NULL,
                "%s", r->message);
  ps__chan_meta__free_unpacked(r, NULL);
  m.op = PS__CHAN_OP__CHAN_SPARSE_PUSH, m.n_keys = 5;
  sd_raw_frame(fd, &m, e.t->keys, 4 * sizeof(uint64_t), 3); /* fewer bytes than 5 keys */
  r = sd_raw_reply(fd, rows, sizeof rows, &len);
  ck_assert_int_eq(r->status, PS_EINVAL);
  ck_assert_msg(strstr(r->message, "at least 40 bytes") != NULL, "%s", r->message);
  ps__chan_meta__free_unpacked(r, NULL);
  m.op = PS__CHAN_OP__CHAN_SPARSE_PULL, m.n_keys = 3;
  sd_raw_frame(fd, &m, e.t->keys, 3 * sizeof(uint64_t), 4); /* and a good one is served */
  r = sd_raw_reply(fd, rows, sizeof rows, &len);
  ck_assert_int_eq(r->op, PS__CHAN_OP__CHAN_SPARSE_PULL);
  ck_assert_uint_eq(len, sizeof rows);
  ps__chan_meta__free_unpacked(r, NULL);
  float init[SD_DIM];
  ck_assert_int_eq(ps_init_row(init, "uniform", 0.05f, 11, 0, e.t->keys[2], SD_DIM), 0);
  ck_assert_int_eq(memcmp(rows + 2 * SD_DIM, init, sizeof init), 0);
  close(fd);
  ck_assert_int_eq(ps_test_stop(e.pid, SIGTERM, 15000), 0);
  free(e.t);
}
END_TEST

Suite *psd_sparse_chan_suite(void) {
  Suite *s = suite_create("psd_sparse_chan");
  TCase *tc = tcase_create("chan");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_sparse_chan_round_trip);
  tcase_add_test(tc, test_sparse_chan_bad_input);
  tcase_add_test(tc, test_sparse_chan_fallback);
  tcase_add_test(tc, test_sparse_chan_bad_frames);
  tcase_add_test(tc, test_sparse_request_bytes);
  suite_add_tcase(s, tc);
  return s;
}

Suite *psd_sparse_rows_suite(void) {
  Suite *s = suite_create("psd_sparse_rows");
  TCase *tc = tcase_create("kill");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 150);
  tcase_add_test(tc, test_sparse_sync_kill);
  tcase_add_test(tc, test_sparse_periodic_kill);
  tcase_add_test(tc, test_sparse_sync_log_then_periodic);
  tcase_add_test(tc, test_snapshot_ahead_of_log);
  tcase_add_test(tc, test_sparse_client_restart);
  tcase_add_test(tc, test_sparse_row_codecs);
  tcase_add_test(tc, test_sparse_export);
  suite_add_tcase(s, tc);
  return s;
}
