/* Integration: the click-through model trained end to end (issue 19): a
 * synthetic Criteo log from scripts/gen_ctr (TC_LINES lines, 5000 ids per
 * field; the first TC_TRAIN lines train, the rest test), 2 psd shards
 * with a sparse memory budget smaller than their share of the table (so
 * rows are evicted to RocksDB and read back while training), the ctr
 * graph from psctl (embedding dim 8, layers 64,32, AdaGrad on both the
 * rows and the dense tensors), 2 registered psw workers, one pass.
 *
 * Before training `psw --evaluate` gives the starting point (AUC about
 * 0.5, logloss about ln 2); after the pass each worker's JSON line must
 * show that it learned (AUC above TC_MIN_AUC_WORKER, logloss below the
 * start), and a second `psw --evaluate` test AUC above TC_MIN_AUC and
 * logloss 0.05 below the start.  Bad input: a Criteo file with a bad line makes
 * psw exit 2 naming the file and line. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "ps_test.h"

#define TC_LINES 30000
#define TC_TRAIN 24000
/* Measured test AUC of the workers after the pass (2 workers, batch 256,
 * 7 runs on a loaded 2-core machine, 14 figures): 0.762-0.785.  Each
 * worker evaluates as it ends, with as much of the other's training as
 * the model holds then: one worker often runs 7 times as fast as the
 * other, and a CI run's first worker showed AUC 0.7425 (logloss 0.561),
 * a run here 0.7516 with logloss 0.667, both failing the bound of the
 * time (0.745, logloss 0.05 under the start).  So a worker's own line
 * must show it learned (TC_MIN_AUC_WORKER, logloss under the start),
 * and the bound is for `psw --evaluate` after both: over 11 runs on a
 * quiet 2-core machine AUC 0.7535-0.7819, logloss 0.494-0.563 (from
 * 0.690).  TC_MIN_AUC leaves 3 points below the lowest, 25 above
 * chance (0.45-0.5 before training). */
#define TC_MIN_AUC 0.72
#define TC_MIN_AUC_WORKER 0.70

typedef struct tc_ctx {
  char dir[512], yaml[600], train[600], test[600];
  int gp[2], cp[2];
  pid_t shard[2];
  int sync;                  /* durability sync (else the tests' periodic) */
  const char *consistency;   /* psctl submit --consistency (NULL: asp) */
  const char *training;      /* more lines of the training section (NULL: none) */
  const char *sparse;        /* more lines of the sparse section (NULL: none) */
  const char *top;           /* more sections of the cluster file (NULL: none) */
  const char *dim;           /* psctl model ctr --dim (NULL: 8) */
} tc_ctx;

/* tc_split writes the first KEEP lines of SRC to A and the rest to B. */
static void tc_split(const char *src, int keep, const char *a, const char *b) {
  FILE *in = fopen(src, "r"), *out = fopen(a, "w");
  ck_assert(in && out);
  char line[4096];
  for (int n = 0; fgets(line, sizeof line, in); n++) {
    if (n == keep) {
      fclose(out);
      ck_assert((out = fopen(b, "w")) != NULL);
    }
    fputs(line, out);
  }
  fclose(in);
  fclose(out);
}

/* tc_cluster generates the log (GEN; else two lines of each file are
 * written by hand), writes the cluster file (WORKERS: more lines of its
 * workers section), starts both shards and submits the ctr model. */
static void tc_cluster(tc_ctx *x, int gen_log, const char *workers) {
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  char all[600], log[600], pb[600], extra[2048];
  snprintf(all, sizeof all, "%s/all.tsv", x->dir);
  snprintf(log, sizeof log, "%s/gen.log", x->dir);
  char *gen[] = {"scripts/gen_ctr", "-o", all, "--lines", "30000", "--ids", "5000", "--seed", "7", NULL};
  snprintf(x->train, sizeof x->train, "%s/train.tsv", x->dir);
  snprintf(x->test, sizeof x->test, "%s/test.tsv", x->dir);
  if (gen_log) {
    ck_assert_msg(ps_test_run(gen, log, 120000) == 0, "gen_ctr failed; see %s", log);
    tc_split(all, TC_TRAIN, x->train, x->test);
  } else {
    static const char two[] =
        "1\t1\t\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13\ta\tb\tc\td\te\tf\t1\t2\t3\t4\t5\t6\t7"
        "\t8\t9\t10\t11\t12\t13\t14\t15\t16\t17\t18\t19\t\n"
        "0\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n";
    ps_test_write_file(x->train, two);
    ps_test_write_file(x->test, two);
  }
  /* each shard holds about 42k rows of the table after the pass */
  snprintf(extra, sizeof extra,
           "workers:\n  count: 2\n  device: cpu\n  retry_ms: 10000\n%s"
           "training:\n  model: ctr\n  epochs: 1\n  batch_size: 256\n  seed: 1\n%s"
           "sparse:\n  memory_rows: 20000\n%s"
           "data:\n  format: criteo\n  train_images: %s\n  test_images: %s\n  partitions: 8\n%s",
           workers, x->training ? x->training : "", x->sparse ? x->sparse : "", x->train, x->test,
           x->top ? x->top : "");
  snprintf(x->yaml, sizeof x->yaml, "%s",
           x->sync ? ps_test_sync_yaml(x->dir, 2, extra, x->gp, x->cp)
                   : ps_test_cluster_yaml(x->dir, 2, extra, x->gp, x->cp));
  ps_test_start_shards(x->yaml, x->dir, 2, x->gp, x->cp, x->shard);
  snprintf(pb, sizeof pb, "%s/ctr.pb", x->dir);
  snprintf(log, sizeof log, "%s/psctl.log", x->dir);
  char *model[] = {(char *)ps_test_bin("psctl"), "model", "ctr", "--fields", "26", "--dim",
                   (char *)(x->dim ? x->dim : "8"),
                   "--dense", "13", "--layers", "64,32", "-o", pb, NULL};
  ck_assert_msg(ps_test_run(model, log, 20000) == 0, "psctl model failed; see %s", log);
  char *submit[] = {(char *)ps_test_bin("psctl"), "submit", pb, "--name", "ctr", "--config",
                    x->yaml, "--optimizer", "adagrad", "--lr", "0.05", "--consistency",
                    (char *)(x->consistency ? x->consistency : "asp"), NULL};
  ck_assert_msg(ps_test_run(submit, log, 30000) == 0, "psctl submit failed; see %s", log);
}

/* tc_evaluate runs psw --evaluate with cluster file YAML and returns its
 * JSON line (caller frees *TEXT). */
static const char *tc_evaluate(const tc_ctx *x, const char *name, char **text) {
  char log[600];
  snprintf(log, sizeof log, "%s/%s.log", x->dir, name);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", (char *)x->yaml, "--evaluate", NULL};
  ck_assert_msg(ps_test_run(argv, log, 60000) == 0, "psw --evaluate failed; see %s", log);
  *text = ps_test_read_file(log, NULL);
  return ps_test_last_line(*text);
}

START_TEST(test_train_ctr_two_workers) {
  tc_ctx x = {0};
  tc_cluster(&x, 1, "");
  char *t0;
  const char *l0 = tc_evaluate(&x, "eval0", &t0);
  double ll0 = ps_test_json_num(l0, "test_logloss"), auc0 = ps_test_json_num(l0, "test_auc");
  char log[2][600];
  pid_t w[2];
  for (int r = 0; r < 2; r++) {
    snprintf(log[r], sizeof log[r], "%s/psw%d.log", x.dir, r);
    char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, NULL};
    w[r] = ps_test_spawn(argv, log[r], NULL);
  }
  for (int r = 0; r < 2; r++) {
    int st = ps_test_wait_pid(w[r], 60000);
    ck_assert_msg(st >= 0, "worker %d did not finish within 60 s; see %s", r, log[r]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d failed; see %s", r, log[r]);
  }
  uint64_t steps = 0;
  for (int r = 0; r < 2; r++) {
    char *text = ps_test_read_file(log[r], NULL);
    const char *line = ps_test_last_line(text);
    double auc = ps_test_json_num(line, "test_auc"), ll = ps_test_json_num(line, "test_logloss");
    printf("test_train_ctr_two_workers: worker %d: auc %.4f -> %.4f, logloss %.4f -> %.4f\n", r,
           auc0, auc, ll0, ll);
    /* its own figures: it learned (how much depends on how far the other
     * worker had got when this one ended); the bound is for the model
     * both trained, evaluated below */
    ck_assert_msg(auc > TC_MIN_AUC_WORKER && ll < ll0, "worker %d: %s", r, line);
    ck_assert_int_eq((int)ps_test_json_num(line, "epochs"), 1);
    ck_assert_msg(strstr(line, "\"sparse_pushes_lost\":0"), "%s", line); /* no shard died */
    steps += (uint64_t)ps_test_json_num(line, "steps");
    free(text);
  }
  /* 8 partitions of 3000 samples; a batch never spans two (psw_train.h),
   * whichever worker claims them: 8 x ceil(3000 / 256) steps in all */
  ck_assert_uint_eq(steps, 8 * 12);
  char *t1;
  const char *l1 = tc_evaluate(&x, "eval1", &t1);
  printf("test_train_ctr_two_workers: after the pass: %s\n", l1);
  ck_assert_msg(ps_test_json_num(l1, "test_auc") > TC_MIN_AUC &&
                ps_test_json_num(l1, "test_logloss") < ll0 - 0.05, "after training: %s", l1);
  /* the memory budget held the rows: some went to RocksDB and came back */
  char out[600];
  snprintf(out, sizeof out, "%s/status.json", x.dir);
  char *status[] = {(char *)ps_test_bin("psctl"), "status", "--json", "--config", x.yaml, NULL};
  ck_assert_msg(ps_test_run(status, out, 20000) == 0, "psctl status failed; see %s", out);
  char *st = ps_test_read_file(out, NULL);
  ck_assert_msg(strstr(st, "\"evictions\":0,") == NULL && strstr(st, "\"evictions\":"),
                "no row was evicted: %s", st);
  free(st);
  /* the text's partition table of this 1-epoch job: "1 epoch", not "1 epochs" */
  snprintf(out, sizeof out, "%s/status.txt", x.dir);
  char *text_status[] = {(char *)ps_test_bin("psctl"), "status", "--config", x.yaml, NULL};
  ck_assert_msg(ps_test_run(text_status, out, 20000) == 0, "psctl status failed; see %s", out);
  st = ps_test_read_file(out, NULL);
  ck_assert_msg(strstr(st, "partitions of model 'ctr' (1 epoch claimed, "), "%s", st);
  free(st);
  free(t0);
  free(t1);
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(x.shard[s], SIGTERM, 10000), 0);
}
END_TEST

START_TEST(test_train_ctr_bad_line) {
  tc_ctx x = {0};
  tc_cluster(&x, 0, "");
  /* a third line without its label */
  char *text = ps_test_read_file(x.train, NULL);
  size_t n = strlen(text);
  text = realloc(text, 2 * n + 1);
  memcpy(text + n, text, n); /* the two lines again, the first without its label */
  text[2 * n] = 0;
  text[n] = 'x';
  text[n + 1] = '\t';
  ps_test_write_file(x.train, text);
  free(text);
  char log[600];
  snprintf(log, sizeof log, "%s/bad.log", x.dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--rank", "0", "--workers", "2", NULL};
  ck_assert_int_eq(ps_test_run(argv, log, 60000), 2);
  text = ps_test_read_file(log, NULL);
  char want[700];
  snprintf(want, sizeof want, "%s:3: field 1 (label): expected 0 or 1", x.train);
  ck_assert_msg(strstr(text, want), "no '%s' in: %s", want, text);
  free(text);
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(x.shard[s], SIGTERM, 10000), 0);
}
END_TEST

/* tc_trained returns the samples the coordinator (shard 0) counts
 * trained in the first epoch so far. */
static uint64_t tc_trained(const tc_ctx *x) {
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->gp[0]);
  ck_assert_int_eq(ps_test_rpc_open(&rpc, addr, &eb), 0);
  Ps__ListWorkersRequest req = PS__LIST_WORKERS_REQUEST__INIT;
  Ps__ListWorkersReply *r = NULL;
  ck_assert_msg(ps_rpc_call(rpc, "/ps.Ps/ListWorkers", &req.base,
                            &ps__list_workers_reply__descriptor, (ProtobufCMessage **)&r, 5000,
                            &eb) == 0, "ListWorkers: %s", eb.msg);
  ps_rpc_close(rpc);
  uint64_t n = r->n_epochs ? r->epochs[0]->trained : 0;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return n;
}

/* Batches with more distinct keys on a shard than sparse.max_new_rows
 * (300 here; a batch of 256 lines names about 3000 per shard): psw asks
 * each shard for them in parts of at most 300 keys, so --evaluate and a
 * pass train as with no limit (one worker: every sample, 8 x 12 steps;
 * AUC as test_train_ctr_two_workers'), and the table holds the rows.  The
 * worker sent a shard's keys in one request, which the shard refused
 * whole: exit 1 at the first step.  A worker whose file has a larger
 * limit than the shards' is still refused, and says to give it theirs.
 * Twice: every key admitted at once on the channel, then with
 * sparse.admit_after 2 (a key's row made at its second pull; pushes, not
 * split, create none) on gRPC (sparse.plane). */
START_TEST(test_train_ctr_max_new_rows) {
  static const char *const sparse[] = {"  max_new_rows: 300\n",
                                       "  max_new_rows: 300\n  admit_after: 2\n  plane: grpc\n"};
  tc_ctx x = {.sparse = sparse[_i]};
  tc_cluster(&x, 1, "  min: 1\n");
  /* first (the table has no row yet), a worker told of no limit: one
   * request per shard, refused; it says why */
  char yaml0[700], log[600], *text;
  snprintf(yaml0, sizeof yaml0, "%s/nolimit.yaml", x.dir);
  text = ps_test_read_file(x.yaml, NULL);
  char *lim = strstr(text, "max_new_rows: 300");
  ck_assert(lim != NULL);
  memcpy(lim, "max_new_rows: 0  ", strlen("max_new_rows: 300"));
  ps_test_write_file(yaml0, text);
  free(text);
  snprintf(log, sizeof log, "%s/nolimit.log", x.dir);
  char *ev[] = {(char *)ps_test_bin("psw"), "--config", yaml0, "--evaluate", NULL};
  ck_assert_int_eq(ps_test_run(ev, log, 60000), 1);
  text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "more than the 300 new rows one request may create "
                             "(sparse.max_new_rows)"), "%s", text);
  ck_assert_msg(strstr(text, "(0 in psw's cluster file, 0: no limit) and of at most "
                             "limits.max_request_bytes (268435456 there): give psw the shards' "
                             "cluster file"), "%s", text);
  free(text);
  char *t0;
  const char *l0 = tc_evaluate(&x, "eval0", &t0);
  double ll0 = ps_test_json_num(l0, "test_logloss");
  snprintf(log, sizeof log, "%s/train.log", x.dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--quiet", NULL};
  int st = ps_test_run(argv, log, 100000);
  text = ps_test_read_file(log, NULL);
  ck_assert_msg(st == 0, "psw exited %d: %s", st, text);
  const char *line = ps_test_last_line(text);
  printf("test_train_ctr_max_new_rows %d: %s\n", _i, line);
  ck_assert_int_eq((int)ps_test_json_num(line, "steps"), 8 * 12);
  ck_assert_msg(ps_test_json_num(line, "test_auc") > TC_MIN_AUC &&
                ps_test_json_num(line, "test_logloss") < ll0 - 0.05, "%s", line);
  ck_assert_uint_eq(tc_trained(&x), TC_TRAIN);
  free(text);
  char *t1;
  const char *l1 = tc_evaluate(&x, "eval1", &t1);
  ck_assert_msg(ps_test_json_num(l1, "test_auc") > TC_MIN_AUC, "after training: %s", l1);
  /* the table's rows: far more than one request per shard could create */
  char out[600], npz[600];
  snprintf(out, sizeof out, "%s/export.log", x.dir);
  snprintf(npz, sizeof npz, "%s/ctr.npz", x.dir);
  char *exp[] = {(char *)ps_test_bin("psctl"), "export", "--config", x.yaml, "--model", "ctr",
                 "-o", npz, NULL};
  ck_assert_msg(ps_test_run(exp, out, 30000) == 0, "psctl export failed; see %s", out);
  text = ps_test_read_file(out, NULL);
  const char *at = strstr(text, "1 embedding table, ");
  ck_assert_msg(at, "%s", text);
  long rows = strtol(at + strlen("1 embedding table, "), NULL, 10);
  ck_assert_msg(rows > 20 * 300, "%ld rows: %s", rows, text);
  free(text);
  free(t0);
  free(t1);
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(x.shard[s], SIGTERM, 10000), 0);
}
END_TEST

/* A batch whose distinct keys on a shard take more than
 * limits.max_request_bytes (64 KiB here: 1365 keys of dim 8 at 16 + 8 x 4
 * bytes each; a batch of 256 lines names about 3000 per shard): psw
 * --evaluate pulls them in parts and ends as usual; training fails at its
 * first push, before sending it, exit 1 (no crash) with an error that
 * names the limit, the keys and bytes, and what to raise.  Before, the
 * pull went in one request per shard: the channel's connection was
 * closed, gRPC refused it ("... rows of 8 floats exceed max_request_bytes
 * 65536"), and both exited 1 at the first step. */
START_TEST(test_train_ctr_max_request_bytes) {
  tc_ctx x = {.top = "limits:\n  max_request_bytes: 65536\n"};
  tc_cluster(&x, 1, "  min: 1\n");
  char *t0;
  const char *l0 = tc_evaluate(&x, "eval0", &t0);
  ck_assert_msg(ps_test_json_num(l0, "test_auc") > 0.3, "%s", l0);
  free(t0);
  char log[600];
  snprintf(log, sizeof log, "%s/train.log", x.dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--quiet", NULL};
  int st = ps_test_run(argv, log, 100000);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(st == 1, "psw exited %d: %s", st, text);
  const char *why = strstr(text, "error: ");
  ck_assert_msg(why, "%s", text);
  printf("test_train_ctr_max_request_bytes: %.*s\n", (int)strcspn(why, "\n"), why);
  ck_assert_msg(strstr(text, " bytes), over limits.max_request_bytes 65536 (1365 keys of this "
                             "table at most): a step's push to a shard is one request") &&
                strstr(text, "raise limits.max_request_bytes to at least ") &&
                strstr(text, "or lower --batch (training.batch_size) (a batch of "), "%s", text);
  free(text);
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(x.shard[s], SIGTERM, 10000), 0);
}
END_TEST

/* Rows as wide as psctl model ctr allows (--dim 65536): a sample's
 * values, rows and their gradients take about 48 MB, so psw evaluates
 * the test set in batches that fit 256 MiB (run_eval_size), and trains
 * with --batch 2.  Under a 12 GiB address-space limit (psw itself
 * reserves a few: BLAS, gRPC) both psw --evaluate and a pass end as
 * usual.  psw made every executor for 1024 evaluation samples, about
 * 49 GB here, and exited 1 at start, "cannot allocate buffers for batch
 * 1024", whatever --batch said (here and on any machine without that
 * much memory to spare). */
START_TEST(test_train_ctr_wide_rows) {
  tc_ctx x = {.dim = "65536"};
  tc_cluster(&x, 0, "  min: 1\n");
  struct rlimit old, cap;
  ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
  cap.rlim_cur = 12ull << 30, cap.rlim_max = old.rlim_max;
  if (old.rlim_max != RLIM_INFINITY && old.rlim_max < cap.rlim_cur) cap.rlim_cur = old.rlim_max;
#ifdef __SANITIZE_ADDRESS__
  cap = old; /* ASan's psw reserves terabytes for its shadow: no cap lets it start */
#endif
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &cap), 0); /* inherited by the workers only */
  char log[600], *text;
  snprintf(log, sizeof log, "%s/eval.log", x.dir);
  char *eval[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--evaluate", NULL};
  int st = ps_test_run(eval, log, 100000);
  text = ps_test_read_file(log, NULL);
  ck_assert_msg(st == 0, "psw --evaluate exited %d: %s", st, text);
  ck_assert_msg(strstr(ps_test_last_line(text), "\"test_auc\":"), "%s", text);
  free(text);
  snprintf(log, sizeof log, "%s/train.log", x.dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--batch", "2", "--quiet", NULL};
  st = ps_test_run(argv, log, 100000);
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &old), 0);
  text = ps_test_read_file(log, NULL);
  ck_assert_msg(st == 0, "psw exited %d: %s", st, text);
  ck_assert_msg(strstr(ps_test_last_line(text), "\"epochs\":1,"), "%s", text);
  free(text);
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(x.shard[s], SIGTERM, 10000), 0);
}
END_TEST

/* tc_spawn starts the two workers (each step slowed SLOWDOWN times, so
 * that the pass lasts) into W, their logs in LOG, and waits until the
 * coordinator counts AT samples trained. */
static void tc_spawn(tc_ctx *x, const char *slowdown, pid_t w[2], char log[2][600], uint64_t at) {
  for (int r = 0; r < 2; r++) {
    snprintf(log[r], sizeof log[r], "%s/psw%d.log", x->dir, r);
    char *argv[] = {(char *)ps_test_bin("psw"), "--config", x->yaml, "--slowdown",
                    (char *)slowdown, NULL};
    w[r] = ps_test_spawn(argv, log[r], NULL);
  }
  for (int64_t end = ps_test_now_ms() + 60000; tc_trained(x) < at;) {
    ck_assert_msg(ps_test_now_ms() < end, "training never reached %llu samples; see %s",
                  (unsigned long long)at, x->dir);
    for (int r = 0; r < 2; r++)
      ck_assert_msg(ps_test_wait_pid(w[r], 0) < 0, "worker %d ended early; see %s", r, log[r]);
    usleep(20000);
  }
}

/* A worker of the table model stopped (SIGSTOP) past its lease: a shard
 * declared it dead and refuses its sparse pull or push as expired; it
 * rejoins (registers again, takes its rank back on every shard) and goes
 * on, as a dense model's worker does, and the pass trains every sample.
 * It used to exit 1 ("... was declared dead ...: it must register again
 * before it pushes or pulls"). */
START_TEST(test_train_ctr_lease_rejoin) {
  tc_ctx x = {0};
  tc_cluster(&x, 1, "  heartbeat_ms: 200\n  lease_ms: 1000\n");
  pid_t w[2];
  char log[2][600];
  tc_spawn(&x, "4", w, log, 2048);
  ck_assert_int_eq(kill(w[1], SIGSTOP), 0);
  usleep(2500 * 1000); /* past the lease: declared dead */
  ck_assert_int_eq(kill(w[1], SIGCONT), 0);
  for (int r = 0; r < 2; r++) {
    int st = ps_test_wait_pid(w[r], 90000);
    ck_assert_msg(st >= 0, "worker %d did not finish within 90 s; see %s", r, log[r]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d exited %d; see %s", r,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1, log[r]);
  }
  char *text = ps_test_read_file(log[1], NULL);
  ck_assert_msg(strstr(text, "declared this worker dead") || strstr(text, "was declared dead"),
                "worker 1 was not declared dead (the test stopped it too briefly); see %s", log[1]);
  printf("test_train_ctr_lease_rejoin: the sparse client %s\n",
         strstr(text, "sparse table 'ctr'/0: rejoined") ? "rejoined" : "was not refused");
  free(text);
  ck_assert_uint_eq(tc_trained(&x), TC_TRAIN); /* every sample trained, once in the count */
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(x.shard[s], SIGTERM, 10000), 0);
}
END_TEST

/* SIGTERM while a shard hangs (SIGSTOP; pull_timeout_ms 30 s): the
 * workers' sparse pulls, waiting for it, end within about 100 ms and the
 * workers leave with "stopped": true (exit 143); they used to wait out the
 * reply timeout on the channel and again on gRPC, 70 s. */
START_TEST(test_train_ctr_sigterm_shard_hangs) {
  tc_ctx x = {0};
  tc_cluster(&x, 1, "");
  pid_t w[2];
  char log[2][600];
  tc_spawn(&x, "2", w, log, 1024);
  ck_assert_int_eq(kill(x.shard[1], SIGSTOP), 0);
  usleep(1500 * 1000); /* the workers wait for it */
  int64_t t0 = ps_test_now_ms();
  for (int r = 0; r < 2; r++) ck_assert_int_eq(kill(w[r], SIGTERM), 0);
  for (int r = 0; r < 2; r++) {
    int st = ps_test_wait_pid(w[r], 20000);
    int64_t took = ps_test_now_ms() - t0;
    if (st < 0) ps_test_stop(w[r], SIGKILL, 5000);
    ck_assert_msg(st >= 0 && took < 6000, "worker %d took %lld ms to stop; see %s", r,
                  (long long)took, log[r]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM, "worker %d exited %d; see %s",
                  r, WIFEXITED(st) ? WEXITSTATUS(st) : -1, log[r]);
    char *text = ps_test_read_file(log[r], NULL);
    ck_assert_msg(strstr(ps_test_last_line(text), "\"stopped\":true"), "see %s", log[r]);
    free(text);
  }
  ck_assert_int_eq(kill(x.shard[1], SIGCONT), 0);
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(x.shard[s], SIGTERM, 10000), 0);
}
END_TEST

/* Under bsp, a shard SIGKILLed and started again while the one worker
 * trains: the worker's next sparse pull reaches the new shard first and
 * puts the worker's clock there at the step it computes; the dense push
 * of that step then goes into the old, dead connection and is lost.  The
 * worker went on past it (psw_client invariant 13): it says so to the
 * shard, which raises its clock as the push would have, and its pull of
 * the next step is served.  It used to wait for itself ("slowest live
 * worker 0 is at clock c") for ever, when a kill fell between a step's
 * dense pull and its sparse pull: a narrow window this test hits only
 * now and then (psw_client's test_client_lost_push_bsp makes that order
 * every time).  Three kills, the worker bounded to 120 s,
 * pull_timeout_ms 3 s (a wait for itself is said within 3 s). */
START_TEST(test_train_ctr_bsp_shard_restart) {
  tc_ctx x = {.sync = 1, .consistency = "bsp", .training = "  pull_timeout_ms: 3000\n"};
  tc_cluster(&x, 1, "");
  char log[600], again[700];
  snprintf(log, sizeof log, "%s/psw.log", x.dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--slowdown", "3", NULL};
  pid_t w = ps_test_spawn(argv, log, NULL);
  for (int64_t end = ps_test_now_ms() + 60000; tc_trained(&x) < 1024;) {
    ck_assert_msg(ps_test_now_ms() < end, "training never began; see %s", log);
    ck_assert_msg(ps_test_wait_pid(w, 0) < 0, "the worker ended early; see %s", log);
    usleep(20000);
  }
  for (int round = 0; round < 3; round++) {
    usleep((useconds_t)(200 + 250 * round) * 1000); /* the worker anywhere in its step */
    ck_assert(WIFSIGNALED(ps_test_stop(x.shard[1], SIGKILL, 10000)));
    snprintf(again, sizeof again, "%s/psd1-again%d.log", x.dir, round);
    x.shard[1] = ps_test_psd(x.yaml, 1, again, NULL);
    ck_assert_msg(ps_test_wait_port(x.cp[1], 20000) == 0 && ps_test_wait_port(x.gp[1], 20000) == 0,
                  "shard 1 did not come back; see %s", again);
  }
  int st = ps_test_wait_pid(w, 120000);
  if (st < 0) ps_test_stop(w, SIGKILL, 5000);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(!strstr(text, "is at clock") || !strstr(text, "slowest live worker 0"),
                "the worker waited for itself; see %s", log);
  ck_assert_msg(st >= 0, "the worker did not finish within 120 s; see %s", log);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the worker exited %d; see %s",
                WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
  free(text);
  ck_assert_uint_eq(tc_trained(&x), TC_TRAIN); /* every sample trained, once in the count */
  for (int s = 0; s < 2; s++) ck_assert_int_eq(ps_test_stop(x.shard[s], SIGTERM, 10000), 0);
}
END_TEST

Suite *psw_train_ctr_suite(void) {
  Suite *s = suite_create("psw_train_ctr");
  TCase *tc = tcase_create("ctr");
  tcase_set_timeout(tc, 120);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tc, test_train_ctr_two_workers);
  tcase_add_test(tc, test_train_ctr_bad_line);
  tcase_add_loop_test(tc, test_train_ctr_max_new_rows, 0, 2);
  tcase_add_test(tc, test_train_ctr_max_request_bytes);
  tcase_add_test(tc, test_train_ctr_wide_rows);
  tcase_add_test(tc, test_train_ctr_lease_rejoin);
  tcase_add_test(tc, test_train_ctr_sigterm_shard_hangs);
  suite_add_tcase(s, tc);
  TCase *rs = tcase_create("ctr_restart");
  tcase_set_timeout(rs, 240);
  tcase_add_unchecked_fixture(rs, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(rs, test_train_ctr_bsp_shard_restart);
  suite_add_tcase(s, rs);
  return s;
}
