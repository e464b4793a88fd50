/* A shard whose data_dir fills up (issue 10, case 2): a real psd on a
 * tmpfs the test mounts itself.
 *
 *  1. submit a model (256 chunks, Adam: 3 MiB a full flush), push every
 *     chunk, wait for the flush: all on disk;
 *  2. fill the filesystem (a filler file written until ENOSPC) and push
 *     every chunk until a flush fails; keep filling what RocksDB frees
 *     when the shard closes it, until the shard stays DEGRADED; it must
 *     stay alive throughout (before the fix it aborted at once, in
 *     RocksDB: "Assertion `sync_without_flush_called_' failed");
 *  3. while DEGRADED: pushes (to the second half of the chunks) and
 *     pulls are served from memory, SubmitModel is refused saying
 *     "degraded", psctl status shows DEGRADED (exit 1);
 *  4. the filler removed, the shard reopens RocksDB, flushes and is
 *     SERVING again (psctl status exit 0);
 *  5. SIGKILL and restart: the state pulled in 3 comes back bit for bit,
 *     so the recovery flush wrote the failed flush's chunks (the first
 *     half was not pushed again) as well as the later ones; then SIGTERM
 *     exits 0 and a restart shows the same state again.
 *
 * tmpfs, not an ext4 image: RocksDB fails the same way on both (its log
 * is preallocated with fallocate on both; the unfixed psd aborts on
 * both), and tmpfs needs no loop device.  The mount is made and undone
 * by the test case's unchecked fixture (in the runner's process), so it
 * is unmounted however the test ends; the test reports itself skipped
 * where mounting is not permitted.  Every wait is bounded. */
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/npz_check.h"
#include "ps.pb-c.h"
#include "ps_place.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "psw_ctr.h"

#define DF_CHUNKS 256   /* tensor [256, 1024], chunk_elems 1024 */
#define DF_ELEMS 1024
#define DF_FS "size=128m"

/* The fixture's state, made in the runner and inherited by the test:
 * df.dir holds logs and the cluster file, df.mnt (the tmpfs) is shard 0's
 * data_dir. */
static ps_test_tmpfs df;

static void df_setup(void) {
  ps_test_procs_setup();
  ps_test_tmpfs_make(&df, "ps_test_disk", DF_FS);
}

/* df_teardown stops what the test started (psd holds files on the tmpfs)
 * and unmounts; the logs stay in df.dir, as other tests' do. */
static void df_teardown(void) {
  ps_test_procs_teardown();
  ps_test_tmpfs_remove(&df);
}

typedef struct df_ctx {
  char yaml[700], log[700], filler[700];
  int gp, cp;
  pid_t pid;
  ps_rpc *rpc;
} df_ctx;

static void df_start(df_ctx *x) {
  x->pid = ps_test_psd(x->yaml, 0, x->log, NULL);
  ck_assert_msg(ps_test_wait_port(x->cp, 15000) == 0 && ps_test_wait_port(x->gp, 5000) == 0,
                "psd did not start; see %s", x->log);
  char addr[64];
  ps_errbuf eb;
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->gp);
  ck_assert_int_eq(ps_test_rpc_open(&x->rpc, addr, &eb), 0);
}

/* df_alive fails the test when psd has exited, saying how. */
static void df_alive(df_ctx *x, const char *when) {
  int st;
  pid_t r = waitpid(x->pid, &st, WNOHANG);
  ck_assert_msg(r == 0, "psd ended %s (%s %d); see %s", when,
                r == x->pid && WIFSIGNALED(st) ? "signal" : "exit",
                r == x->pid ? (WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st)) : -1, x->log);
}

static void df_spec(Ps__ModelSpec *spec, Ps__TensorSpec *t, Ps__TensorSpec **ts,
                    Ps__OptimizerSpec *opt, uint32_t *shape, const char *name) {
  shape[0] = DF_CHUNKS;
  shape[1] = DF_ELEMS;
  ps__tensor_spec__init(t);
  t->name = "w";
  t->n_shape = 2;
  t->shape = shape;
  t->init = "uniform";
  t->scale = 0.1f;
  ts[0] = t;
  ps__optimizer_spec__init(opt);
  opt->kind = "adam";
  opt->lr = 0.01f;
  opt->beta1 = 0.9f;
  opt->beta2 = 0.999f;
  opt->eps = 1e-8f;
  ps__model_spec__init(spec);
  spec->name = (char *)name;
  spec->seed = 7;
  spec->n_tensors = 1;
  spec->tensors = ts;
  spec->optimizer = opt;
}

/* df_push pushes gradient VAL * (1 + i % 3) to chunks [FIRST, FIRST + N). */
static void df_push(df_ctx *x, uint32_t first, uint32_t n, float val) {
  uint32_t ids[DF_CHUNKS];
  size_t ne = (size_t)n * DF_ELEMS;
  float *g = malloc(ne * sizeof *g);
  ck_assert_ptr_nonnull(g);
  for (uint32_t i = 0; i < n; i++) ids[i] = first + i;
  for (size_t i = 0; i < ne; i++) g[i] = val * (float)(1 + i % 3);
  Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
  req.model = "df";
  req.chunk_ids = ids;
  req.n_chunk_ids = n;
  req.grads.data = (uint8_t *)g;
  req.grads.len = ne * sizeof *g;
  ProtobufCMessage *rep;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(x->rpc, "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor, &rep,
                            10000, &eb) == 0, "push to chunks %u..%u: %s", first, first + n - 1,
                eb.msg);
  protobuf_c_message_free_unpacked(rep, NULL);
  free(g);
}

/* df_pull returns every chunk's values (caller frees) and the version. */
static float *df_pull(df_ctx *x, uint64_t *version) {
  uint32_t ids[DF_CHUNKS];
  for (uint32_t i = 0; i < DF_CHUNKS; i++) ids[i] = i;
  Ps__PullRequest req = PS__PULL_REQUEST__INIT;
  req.model = "df";
  req.chunk_ids = ids;
  req.n_chunk_ids = DF_CHUNKS;
  Ps__PullReply *rep;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(x->rpc, "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor,
                            (ProtobufCMessage **)&rep, 10000, &eb) == 0, "pull: %s", eb.msg);
  size_t bytes = (size_t)DF_CHUNKS * DF_ELEMS * sizeof(float);
  ck_assert_uint_eq(rep->values.len, bytes);
  float *v = malloc(bytes);
  ck_assert_ptr_nonnull(v);
  memcpy(v, rep->values.data, bytes);
  *version = rep->version;
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return v;
}

/* df_status writes the shard's state (STATE, 32 bytes) and last flush. */
static void df_status(df_ctx *x, char *state, int64_t *last_flush) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *st;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(x->rpc, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                            (ProtobufCMessage **)&st, 5000, &eb) == 0, "status: %s", eb.msg);
  snprintf(state, 32, "%s", st->state);
  *last_flush = st->last_flush_unix_ms;
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

static int64_t df_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* df_wait waits up to 15 s for state WANT with a flush at or after
 * SINCE_MS (0: any), checking that psd lives. */
static void df_wait(df_ctx *x, const char *want, int64_t since_ms) {
  int64_t end = ps_test_now_ms() + 15000;
  char state[32];
  int64_t last;
  for (;;) {
    df_alive(x, want);
    df_status(x, state, &last);
    if (!strcmp(state, want) && last >= since_ms) return;
    ck_assert_msg(ps_test_now_ms() < end,
                  "shard not %s with a flush after %lld within 15 s (%s, last flush %lld); see %s",
                  want, (long long)since_ms, state, (long long)last, x->log);
    usleep(50000);
  }
}

/* df_fill appends to PATH until the filesystem is full. */
static void df_fill(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  ck_assert_msg(fd >= 0, "open '%s': %s", path, strerror(errno));
  static char block[1 << 16];
  long long total = 0;
  ssize_t n;
  while ((n = write(fd, block, sizeof block)) > 0) total += n;
  int e = errno;
  close(fd);
  ck_assert_msg(n < 0 && e == ENOSPC, "filling '%s' ended with %s after %lld bytes", path,
                strerror(e), total);
}

/* df_psctl_state runs `psctl status --json` and checks that it exits
 * CODE and that shard 0's state is WANT. */
static void df_psctl_state(df_ctx *x, const char *dir, const char *want, int code) {
  char cmd[4096], out[700];
  snprintf(out, sizeof out, "%s/status.json", dir);
  snprintf(cmd, sizeof cmd, "timeout 20 '%s' status --config '%s' --json > '%s' 2>>'%s'",
           ps_test_bin("psctl"), x->yaml, out, x->log);
  int st = system(cmd);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == code, "psctl status exit %d, want %d; see %s",
                WIFEXITED(st) ? WEXITSTATUS(st) : -1, code, out);
  snprintf(cmd, sizeof cmd,
           "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
           "sys.exit(0 if d[\"shards\"][0][\"state\"]==\"%s\" else 1)' '%s'", want, out);
  ck_assert_msg(system(cmd) == 0, "psctl status does not show %s; see %s", want, out);
}

START_TEST(test_disk_full_degraded) {
  if (!df.mounted) PS_SKIP("%s", df.why);
  df_ctx x;
  memset(&x, 0, sizeof x);
  snprintf(x.log, sizeof x.log, "%s/psd0.log", df.dir);
  snprintf(x.filler, sizeof x.filler, "%s/filler", df.mnt);
  /* ps_test_cluster_yaml puts shard 0's data_dir at DIR/shard0: the tmpfs. */
  snprintf(x.yaml, sizeof x.yaml, "%s",
           ps_test_cluster_yaml(df.dir, 1, NULL, &x.gp, &x.cp));
  df_start(&x);
  uint32_t shape[2];
  Ps__TensorSpec t, *ts[1];
  Ps__OptimizerSpec opt;
  Ps__ModelSpec spec;
  df_spec(&spec, &t, ts, &opt, shape, "df");
  ps_test_submit(x.rpc, &spec, 0, 10000);

  /* 1: everything on disk. */
  df_push(&x, 0, DF_CHUNKS, 0.5f);
  df_wait(&x, "SERVING", df_unix_ms());

  /* 2: full disk.  RocksDB preallocates its log (fallocate, 1.1 x the
   * 32 MiB write buffer) on tmpfs as on ext4, so writes go on into that
   * space until it or the memtable runs out: push every chunk (3 MiB a
   * flush) until a flush fails.  Closing RocksDB after the failure gives
   * back what it had preallocated, and the shard may then reopen and flush
   * at once: fill that too, until the shard stays DEGRADED (two looks
   * 500 ms apart, 2.5 retries).  It must live through all of it. */
  char state[32] = "";
  int64_t last;
  int degraded = 0;
  for (int i = 0; i < 120 && degraded < 2; i++) {
    df_fill(x.filler);
    df_push(&x, 0, DF_CHUNKS, i % 2 ? 0.5f : -0.25f);
    usleep((degraded ? 500 : 250) * 1000);
    df_alive(&x, "after its disk filled");
    df_status(&x, state, &last);
    degraded = strcmp(state, "DEGRADED") ? 0 : degraded + 1;
  }
  ck_assert_msg(degraded == 2, "shard not staying DEGRADED on a full disk (%s); see %s", state,
                x.log);

  /* 3: served from memory; submit refused.  (The disk topped up once
   * more: a failed reopen may have left a few blocks free.) */
  df_fill(x.filler);
  uint64_t v0, v;
  free(df_pull(&x, &v0));
  df_push(&x, DF_CHUNKS / 2, DF_CHUNKS / 2, 0.125f);
  float *want = df_pull(&x, &v);
  ck_assert_uint_eq(v, v0 + 1);
  int64_t t_last = df_unix_ms();
  Ps__ModelSpec other;
  Ps__TensorSpec t2, *ts2[1];
  Ps__OptimizerSpec opt2;
  uint32_t shape2[2];
  df_spec(&other, &t2, ts2, &opt2, shape2, "other");
  Ps__SubmitModelRequest sreq = PS__SUBMIT_MODEL_REQUEST__INIT;
  sreq.model = &other;
  ProtobufCMessage *srep = NULL;
  ps_errbuf eb;
  int err = ps_rpc_call(x.rpc, "/ps.Ps/SubmitModel", &sreq.base,
                        &ps__submit_model_reply__descriptor, &srep, 10000, &eb);
  if (srep) protobuf_c_message_free_unpacked(srep, NULL);
  ck_assert_msg(err < 0 && strstr(eb.msg, "degraded"),
                "submit while degraded: %d '%s', want a refusal saying 'degraded'", err, eb.msg);
  df_psctl_state(&x, df.dir, "DEGRADED", 1);
  df_alive(&x, "while degraded");

  /* 4: space again: SERVING, with a flush of everything pushed. */
  ck_assert_int_eq(unlink(x.filler), 0);
  df_wait(&x, "SERVING", t_last);
  df_psctl_state(&x, df.dir, "SERVING", 0);

  /* 5: the flushed state is the pulled one, after a kill and after a
   * clean stop. */
  ps_rpc_close(x.rpc);
  int st = ps_test_stop(x.pid, SIGKILL, 5000);
  ck_assert(WIFSIGNALED(st));
  df_start(&x);
  float *got = df_pull(&x, &v);
  ck_assert_uint_eq(v, v0 + 1);
  ck_assert_msg(memcmp(got, want, (size_t)DF_CHUNKS * DF_ELEMS * sizeof(float)) == 0,
                "state after the kill differs from the state pulled before it");
  free(got);
  ps_rpc_close(x.rpc);
  st = ps_test_stop(x.pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d; see %s", st,
                x.log);
  df_start(&x);
  got = df_pull(&x, &v);
  ck_assert_uint_eq(v, v0 + 1);
  ck_assert_int_eq(memcmp(got, want, (size_t)DF_CHUNKS * DF_ELEMS * sizeof(float)), 0);
  ps_rpc_close(x.rpc);
  st = ps_test_stop(x.pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
  free(got);
  free(want);
}
END_TEST

/* df_wait_state waits up to 15 s for WANT with a flush at or after
 * SINCE_MS, and then for psctl status to show it (exit CODE). */
static void df_wait_state(df_ctx *x, const char *want, int64_t since_ms, int code) {
  df_wait(x, want, since_ms);
  df_psctl_state(x, df.dir, want, code);
}

/* ---- sparse rows on a full disk ------------------------------------------
 *
 * The click-through model's embedding table (dim 4, SGD lr 1, gradient -1
 * everywhere: a row's value minus its initial value is its pushes) with
 * a budget of 8 rows for 48 keys, so every round of pushes evicts rows
 * into the sparse RocksDB:
 *  1. every key pushed, a flush: all on disk;
 *  2. the disk filled, rounds pushed until the shard stays DEGRADED (the
 *     sparse rows' write buffer and the dense snapshot fail); psd lives;
 *  3. while DEGRADED (periodic: pushes served from memory) more rounds,
 *     acknowledged; nothing is evicted (rows_mem over the budget) and
 *     every row holds every acknowledged push;
 *  4. the filler removed: SERVING again, evictions work (rows_mem back
 *     within the budget), and every row holds every push;
 *  5. SIGTERM and restart: the rows pulled (most read back from RocksDB's
 *     files) and `psctl export` equal the rows before.
 * Where the disk fills decides what fails: here psd's own file of a
 * write buffer, which leaves RocksDB's handle sound.  A fill that lands
 * between that file and RocksDB's ingest of it fails RocksDB's MANIFEST
 * write and leaves the handle refusing every later ingest until it is
 * reopened: an instant no test outside the process can pick, so
 * test_full_disk_ingest_reopens (tests/server/test_psd_sparse.c) fills
 * the disk there from the durable hook. */
enum { DS_DIM = 4, DS_KEYS = 48 };

typedef struct ds_ctx {
  df_ctx x;
  uint64_t keys[DS_KEYS];
  long long pushes[DS_KEYS]; /* acknowledged */
} ds_ctx;

/* ds_round pushes every key once (8 pushes of 6 keys), each must be
 * acknowledged. */
static void ds_round(ds_ctx *d) {
  for (int k0 = 0; k0 < DS_KEYS; k0 += 6) {
    float g[6 * DS_DIM];
    for (int i = 0; i < 6 * DS_DIM; i++) g[i] = -1.0f;
    Ps__SparsePushRequest q = PS__SPARSE_PUSH_REQUEST__INIT;
    q.model = "ctr", q.table = 0, q.keys = d->keys + k0, q.n_keys = 6;
    q.rows.data = (uint8_t *)g, q.rows.len = sizeof g;
    ProtobufCMessage *rep = NULL;
    ps_errbuf eb;
    ck_assert_msg(ps_rpc_call(d->x.rpc, "/ps.Ps/SparsePush", &q.base,
                              &ps__sparse_push_reply__descriptor, &rep, 10000, &eb) == 0,
                  "sparse push: %s; see %s", eb.msg, d->x.log);
    protobuf_c_message_free_unpacked(rep, NULL);
    for (int i = 0; i < 6; i++) d->pushes[k0 + i]++;
  }
}

/* ds_pull pulls every key into ROWS (DS_KEYS x DS_DIM) and checks that
 * each row holds its acknowledged pushes, in every element. */
static void ds_pull(ds_ctx *d, float *rows, const char *when) {
  Ps__SparsePullRequest q = PS__SPARSE_PULL_REQUEST__INIT;
  q.model = "ctr", q.table = 0, q.keys = d->keys, q.n_keys = DS_KEYS;
  Ps__SparsePullReply *rep = NULL;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(d->x.rpc, "/ps.Ps/SparsePull", &q.base,
                            &ps__sparse_pull_reply__descriptor, (ProtobufCMessage **)&rep, 10000,
                            &eb) == 0, "sparse pull %s: %s", when, eb.msg);
  ck_assert_uint_eq(rep->rows.len, (size_t)DS_KEYS * DS_DIM * sizeof(float));
  memcpy(rows, rep->rows.data, rep->rows.len);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  for (int k = 0; k < DS_KEYS; k++) {
    float init[DS_DIM];
    ck_assert_int_eq(ps_init_row(init, "uniform", 0.05f, 11, 0, d->keys[k], DS_DIM), 0);
    for (int j = 0; j < DS_DIM; j++) {
      float got = rows[k * DS_DIM + j] - init[j];
      ck_assert_msg(fabsf(got - (float)d->pushes[k]) < 1e-3f,
                    "%s: key %d element %d holds %g pushes, %lld acknowledged; see %s", when, k, j,
                    (double)got, d->pushes[k], d->x.log);
    }
  }
}

/* ds_stats writes the table's rows in memory and rows read from disk. */
static void ds_stats(ds_ctx *d, uint64_t *rows_mem, uint64_t *disk_reads) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *st;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(d->x.rpc, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                            (ProtobufCMessage **)&st, 5000, &eb) == 0, "status: %s", eb.msg);
  ck_assert_uint_eq(st->n_sparse_tables, 1);
  *rows_mem = st->sparse_tables[0]->rows_mem;
  *disk_reads = st->sparse_tables[0]->disk_reads;
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

START_TEST(test_disk_full_sparse) {
  if (!df.mounted) PS_SKIP("%s", df.why);
  ds_ctx d;
  memset(&d, 0, sizeof d);
  df_ctx *x = &d.x;
  snprintf(x->log, sizeof x->log, "%s/psd0.log", df.dir);
  snprintf(x->filler, sizeof x->filler, "%s/filler", df.mnt);
  snprintf(x->yaml, sizeof x->yaml, "%s",
           ps_test_cluster_yaml(df.dir, 1, "sparse:\n  memory_rows: 8\n", &x->gp, &x->cp));
  for (int k = 0; k < DS_KEYS; k++) d.keys[k] = (uint64_t)(k + 1) * 0x9e3779b97f4a7c15ull;
  df_start(x);
  psw_ctr_shape sh = {1, DS_DIM, 1, NULL, 0, 0, 0};
  ps_test_ctr m;
  ps_test_ctr_model(&m, &sh, "sgd", 1.0f, 11);
  ps_test_submit(x->rpc, m.spec, 0, 10000);
  ps_test_ctr_release(&m);
  float rows[DS_KEYS * DS_DIM], got[DS_KEYS * DS_DIM];

  /* 1 */
  ds_round(&d);
  df_wait(x, "SERVING", df_unix_ms());

  /* 2 */
  char state[32] = "";
  int64_t last;
  int degraded = 0;
  for (int i = 0; i < 120 && degraded < 2; i++) {
    df_fill(x->filler);
    ds_round(&d);
    usleep((degraded ? 500 : 250) * 1000);
    df_alive(x, "after its disk filled");
    df_status(x, state, &last);
    degraded = strcmp(state, "DEGRADED") ? 0 : degraded + 1;
  }
  ck_assert_msg(degraded == 2, "shard not staying DEGRADED on a full disk (%s); see %s", state,
                x->log);

  /* 3 */
  df_fill(x->filler);
  for (int i = 0; i < 3; i++) ds_round(&d);
  ds_pull(&d, rows, "while DEGRADED");
  uint64_t rows_mem, reads;
  ds_stats(&d, &rows_mem, &reads);
  ck_assert_msg(rows_mem > 8, "%llu rows in memory while the disk refuses them, want > 8",
                (unsigned long long)rows_mem);
  df_psctl_state(x, df.dir, "DEGRADED", 1);
  int64_t t_last = df_unix_ms();

  /* 4 */
  ck_assert_int_eq(unlink(x->filler), 0);
  df_wait_state(x, "SERVING", t_last, 0);
  ds_round(&d);
  ds_stats(&d, &rows_mem, &reads);
  ck_assert_msg(rows_mem <= 8, "%llu rows in memory once the disk took them again, budget 8; "
                "see %s", (unsigned long long)rows_mem, x->log);
  df_wait(x, "SERVING", df_unix_ms()); /* a snapshot after it: the rows evicted are in the files */
  ds_pull(&d, rows, "after the disk had room again");
  df_wait(x, "SERVING", df_unix_ms());

  /* 5 */
  ps_rpc_close(x->rpc);
  int st = ps_test_stop(x->pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d; see %s", st,
                x->log);
  df_start(x);
  ds_pull(&d, got, "after a restart");
  ck_assert_int_eq(memcmp(got, rows, sizeof rows), 0);
  ds_stats(&d, &rows_mem, &reads); /* the rows not in memory came from RocksDB's files */
  ck_assert_msg(reads >= DS_KEYS - 8, "%llu rows read back from RocksDB after the restart, want "
                ">= %d", (unsigned long long)reads, DS_KEYS - 8);
  char npz[800], plog[800];
  snprintf(npz, sizeof npz, "%s/ctr.npz", df.dir);
  snprintf(plog, sizeof plog, "%s/psctl.log", df.dir);
  char *argv[] = {(char *)ps_test_bin("psctl"), "export", "--config", x->yaml, "--model", "ctr",
                  "-o", npz, NULL};
  ck_assert_msg(ps_test_run(argv, plog, 60000) == 0, "psctl export failed; see %s", plog);
  char *out = ps_test_npz_py(df.dir, npz);
  /* the export's rows in key order, each as pulled */
  int ord[DS_KEYS];
  for (int k = 0; k < DS_KEYS; k++) ord[k] = k;
  for (int i = 1; i < DS_KEYS; i++)
    for (int j = i; j > 0 && d.keys[ord[j]] < d.keys[ord[j - 1]]; j--) {
      int tmp = ord[j];
      ord[j] = ord[j - 1];
      ord[j - 1] = tmp;
    }
  size_t cap = 64 * DS_KEYS * DS_DIM, n;
  char *wr = malloc(cap);
  ck_assert_ptr_nonnull(wr);
  n = (size_t)snprintf(wr, cap, ".rows.npy <f4 (%d, %d)", DS_KEYS, DS_DIM);
  for (int k = 0; k < DS_KEYS; k++)
    for (int j = 0; j < DS_DIM; j++)
      n += (size_t)snprintf(wr + n, cap - n, " %g", (double)rows[ord[k] * DS_DIM + j]);
  snprintf(wr + n, cap - n, "\n");
  ck_assert_msg(strstr(out, wr) != NULL, "the export's rows differ from those pulled:\n%s\n"
                "wanted:%s", out, wr);
  free(wr);
  free(out);
  ps_rpc_close(x->rpc);
  st = ps_test_stop(x->pid, SIGTERM, 15000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd ended with status %d", st);
}
END_TEST

Suite *psd_disk_full_suite(void) {
  Suite *s = suite_create("psd_disk_full");
  TCase *tc = tcase_create("degraded");
  tcase_set_timeout(tc, 120);
  tcase_add_unchecked_fixture(tc, df_setup, df_teardown);
  tcase_add_test(tc, test_disk_full_degraded);
  suite_add_tcase(s, tc);
  tc = tcase_create("sparse");
  tcase_set_timeout(tc, 120);
  tcase_add_unchecked_fixture(tc, df_setup, df_teardown);
  tcase_add_test(tc, test_disk_full_sparse);
  suite_add_tcase(s, tc);
  return s;
}
