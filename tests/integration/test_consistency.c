/* Integration: consistency models end to end (issue 4 section 6), with 2
 * real psd shards and 2 psw workers that register with the coordinator
 * (no --rank) on a 4000-sample Fashion-MNIST subset:
 *
 *  - registration: the workers get ranks 0 and 1; every step of the 3
 *    epochs over the 8 partitions is pushed once (the versions);
 *  - bsp: no pull is ever served with a clock gap above 0 on either shard
 *    (Status max_gap), while pulls were parked (so the bound was at work);
 *    psw --evaluate afterwards reports the final model: the last worker's
 *    last evaluation (after a bsp pull that waited for every push) and every
 *    push counted in the version;
 *  - ssp with s = 2 and one worker slowed 3x: gaps of 1..2, never above;
 *  - asp with one worker slowed 5x: no pull parked on any shard and
 *    neither worker's time parked (its blocked share, the push/pull round,
 *    depends on the machine's load and is not checked: under the
 *    sanitizers it passed half), the fast worker's training rate above the
 *    slow one's by a margin (lock-step: equal; measured over 2x in 4 idle
 *    runs, 1.6x with a build running beside it), and it finishes first;
 *  - failover: a killed worker's partitions go to the survivor (the
 *    accounting of it: tests/integration/test_failover.c);
 *  - the model's settings, not the cluster file's (a tiny CSV, no
 *    dataset): a push refused under bsp ends the worker at once, and
 *    --overlap follows the submitted model's consistency.
 *
 * Skipped (visibly) without the dataset.  Every process is recorded
 * (ps_test_procs_setup) so the unchecked teardown stops it by PID even
 * when a test failed half-way. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_rpc.h"
#include "ps_test.h"

#define TC_DATA "/usr/share/datasets/fashion-mnist"
#define TC_WAIT_MS 60000

typedef struct tc_ctx {
  char dir[512], yaml[600], log[2][600];
  int gp[2], cp[2];
  pid_t shard[2];
  char *out[2];        /* each worker's log (stderr and the JSON line) */
  const char *json[2]; /* its last line */
} tc_ctx;
/* tc_start writes the cluster file (heartbeats every 200 ms, leases of 3 s),
 * starts both shards and submits model "m" (LAYERS: "logreg" or an MLP
 * layer list) with CONSISTENCY and STALENESS. */
static void tc_start_epochs(tc_ctx *x, const char *layers, const char *consistency,
                            const char *staleness, int epochs) {
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  char extra[1200];
  snprintf(extra, sizeof extra,
      "workers:\n  count: 2\n  device: cpu\n  retry_ms: 10000\n"
      "  heartbeat_ms: 200\n  lease_ms: %d\n"
      "training:\n  model: m\n  epochs: %d\n  batch_size: 64\n  seed: 1\n"
      "data:\n  format: idx\n"
      "  train_images: " TC_DATA "/train-images-idx3-ubyte.gz\n"
      "  train_labels: " TC_DATA "/train-labels-idx1-ubyte.gz\n"
      "  test_images: " TC_DATA "/t10k-images-idx3-ubyte.gz\n"
      "  test_labels: " TC_DATA "/t10k-labels-idx1-ubyte.gz\n"
      "  scale: 1/255\n  partitions: 8\n  limit: 4000\n", epochs > 3 ? 60000 : 3000, epochs);
  snprintf(x->yaml, sizeof x->yaml, "%s", ps_test_cluster_yaml(x->dir, 2, extra, x->gp, x->cp));
  ps_test_start_shards(x->yaml, x->dir, 2, x->gp, x->cp, x->shard);
  ps_test_submit_mlp(x->dir, x->yaml, layers, "0.001", consistency, staleness);
}

/* tc_start: tc_start_epochs for 3 epochs, leases of 3 s. */
static void tc_start(tc_ctx *x, const char *layers, const char *consistency,
                     const char *staleness) {
  tc_start_epochs(x, layers, consistency, staleness, 3);
}

/* tc_spawn starts registering worker I (log in x->log[I]) with the
 * option OPT VAL added (OPT NULL: none). */
static pid_t tc_spawn(tc_ctx *x, int i, const char *opt, const char *val) {
  char log[sizeof x->log[i]]; /* straight into x->log[i], gcc fears an overlap with x->dir */
  snprintf(log, sizeof log, "%s/psw%d.log", x->dir, i);
  memcpy(x->log[i], log, sizeof log);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x->yaml, "--quiet", (char *)opt,
                  (char *)val, NULL};
  return ps_test_spawn(argv, x->log[i], NULL);
}

/* tc_read reads worker I's log into x->out[I] and its JSON line (the last
 * line, which must be model "m"'s) into x->json[I]. */
static void tc_read(tc_ctx *x, int i) {
  x->out[i] = ps_test_read_file(x->log[i], NULL);
  char *copy = strdup(x->out[i]);
  x->json[i] = strdup(ps_test_last_line(copy));
  free(copy);
  ck_assert_msg(x->json[i][0] == '{' && strstr(x->json[i], "\"model\":\"m\""),
                "worker %d's last line: %s", i, x->json[i]);
}

/* tc_fast returns the worker that ran at full speed (slowdown 1). */
static int tc_fast(const tc_ctx *x) { return strstr(x->json[0], "\"slowdown\":1,") ? 0 : 1; }

/* tc_train runs two registering workers to the end, worker 1 with
 * --slowdown SLOW1 (NULL: none); their logs and JSON lines land in X. */
static void tc_train(tc_ctx *x, const char *slow1) {
  pid_t w[2];
  for (int i = 0; i < 2; i++) w[i] = tc_spawn(x, i, i == 1 && slow1 ? "--slowdown" : NULL, slow1);
  for (int i = 0; i < 2; i++) {
    int st = ps_test_wait_pid(w[i], TC_WAIT_MS);
    ck_assert_msg(st >= 0, "worker %d did not finish within %d ms; see %s", i, TC_WAIT_MS,
                  x->log[i]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d failed; see %s", i,
                  x->log[i]);
  }
  for (int i = 0; i < 2; i++) tc_read(x, i);
}

/* tc_status returns the Status of model "m" on every shard, summed:
 * *MAX_GAP the largest over the shards, *PARKED the pulls ever parked,
 * *VERSION the smallest shard version. */
static void tc_status(tc_ctx *x, uint64_t *max_gap, uint64_t *parked, uint64_t *version) {
  *max_gap = *parked = 0;
  *version = UINT64_MAX;
  for (int s = 0; s < 2; s++) {
    Ps__StatusReply *st = ps_test_status(x->gp[s]);
    ck_assert_uint_eq(st->n_models, 1);
    const Ps__ModelStatus *m = st->models[0];
    if (m->max_gap > *max_gap) *max_gap = m->max_gap;
    *parked += m->pulls_parked;
    if (m->version < *version) *version = m->version;
    ck_assert_uint_eq(m->pull_timeouts, 0);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
}

/* tc_parts parses "partitions [a,b,...]" (those it owned when it
 * registered) from a worker's log into SEEN (counts per partition, 8
 * entries); returns the worker's rank. */
static int tc_parts(const char *log, int *seen) {
  const char *p = strstr(log, "registered as worker ");
  ck_assert_msg(p != NULL, "no registration line in: %s", log);
  int rank = atoi(p + strlen("registered as worker "));
  p = strstr(p, "partitions [");
  ck_assert_ptr_nonnull(p);
  for (p += strlen("partitions ["); *p && *p != ']';) {
    char *end;
    long q = strtol(p, &end, 10);
    ck_assert_msg(end != p && q >= 0 && q < 8, "bad partition list at: %s", p);
    seen[q]++;
    p = *end == ',' ? end + 1 : end;
  }
  return rank;
}

/* tc_finish stops the shards and frees what tc_train read. */
static void tc_finish(tc_ctx *x) {
  for (int s = 0; s < 2; s++)
    if (x->shard[s] > 0) ps_test_stop(x->shard[s], SIGTERM, 10000);
  for (int i = 0; i < 2; i++) {
    free(x->out[i]);
    free((char *)x->json[i]);
  }
}

#define TC_NEED_DATA()                                          \
  do {                                                          \
    if (access(TC_DATA "/train-images-idx3-ubyte.gz", R_OK) != 0) \
      PS_SKIP("dataset-fashion-mnist is not installed (%s)", TC_DATA); \
  } while (0)

START_TEST(test_consistency_bsp_and_registration) {
  TC_NEED_DATA();
  tc_ctx x = {0};
  tc_start(&x, "logreg", "bsp", "0");
  tc_train(&x, NULL);
  /* registration: ranks 0 and 1 (the partitions are claimed one at a
   * time since issue 16: tests/integration/test_failover.c checks them) */
  int seen[8] = {0}, ranks = 0, steps = 0;
  for (int i = 0; i < 2; i++) ranks |= 1 << tc_parts(x.out[i], seen);
  ck_assert_int_eq(ranks, 3);
  for (int i = 0; i < 2; i++) {
    /* 8 partitions of 500 samples, batch 64: 8 steps each, 64 an epoch */
    steps += (int)ps_test_json_num(x.json[i], "steps");
    ck_assert_int_eq((int)ps_test_json_num(x.json[i], "workers"), 2);
    double b = ps_test_json_num(x.json[i], "blocked_share");
    ck_assert_msg(b > 0 && b < 1, "blocked share %f", b);
    double p = ps_test_json_num(x.json[i], "parked_share");
    ck_assert_msg(p >= 0 && p <= b, "parked share %f, blocked %f", p, b);
  }
  ck_assert_int_eq(steps, 3 * 64);
  uint64_t gap, parked, version;
  tc_status(&x, &gap, &parked, &version);
  ck_assert_msg(gap == 0, "bsp served a pull %llu clocks ahead", (unsigned long long)gap);
  ck_assert_msg(parked > 0, "no pull was ever parked: the bound was never tested");
  ck_assert_uint_eq(version, 3 * 64);
  /* --evaluate reads the final model: what the worker that finished last
   * saw after its last pull */
  char log[600];
  snprintf(log, sizeof log, "%s/eval.log", x.dir);
  char *ev[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--evaluate", NULL};
  ck_assert_msg(ps_test_run(ev, log, 30000) == 0, "psw --evaluate failed; see %s", log);
  char *text = ps_test_read_file(log, NULL);
  const char *line = ps_test_last_line(text);
  ck_assert_msg(line[0] == '{' && strstr(line, "\"model\":\"m\""), "evaluate printed: %s", line);
  ck_assert_uint_eq((uint64_t)ps_test_json_num(line, "version"), version);
  double acc = ps_test_json_num(line, "test_accuracy");
  ck_assert_msg((acc == ps_test_json_num(x.json[0], "test_accuracy") ||
                 acc == ps_test_json_num(x.json[1], "test_accuracy")) && acc > 0.5,
                "evaluate: %s; workers: %s %s", line, x.json[0], x.json[1]);
  free(text);
  tc_finish(&x);
}
END_TEST

START_TEST(test_consistency_ssp_bound) {
  TC_NEED_DATA();
  tc_ctx x = {0};
  tc_start(&x, "784,64,10", "ssp", "2");
  tc_train(&x, "3");
  uint64_t gap, parked, version;
  tc_status(&x, &gap, &parked, &version);
  ck_assert_msg(gap <= 2, "ssp 2 served a pull %llu clocks ahead", (unsigned long long)gap);
  ck_assert_msg(gap >= 1 && parked > 0,
                "gap %llu, %llu parked: the fast worker never ran ahead into the bound",
                (unsigned long long)gap, (unsigned long long)parked);
  /* the fast worker waits for the 3x slower one, parked on the shards */
  int fast = tc_fast(&x);
  double p = ps_test_json_num(x.json[fast], "parked_share");
  ck_assert_msg(p > 0.1 && p <= ps_test_json_num(x.json[fast], "blocked_share"), "%s",
                x.json[fast]);
  tc_finish(&x);
}
END_TEST

START_TEST(test_consistency_asp_straggler) {
  TC_NEED_DATA();
  tc_ctx x = {0};
  tc_start(&x, "784,256,128,10", "asp", "0");
  tc_train(&x, "5");
  int fast = tc_fast(&x), slow = 1 - fast;
  ck_assert_msg(ps_test_json_num(x.json[slow], "slowdown") == 5, "%s", x.json[slow]);
  /* Lock-step with a 5x slower worker would park the fast one about 80 %
   * of its time and give both the same rate. */
  double rf = ps_test_json_num(x.json[fast], "samples_per_sec"), rs = ps_test_json_num(x.json[slow], "samples_per_sec");
  ck_assert_msg(rf > 1.25 * rs, "fast worker %.0f samples/s, slow one %.0f", rf, rs);
  /* Partitions are claimed one at a time, so the two may finish at about
   * the same time (the fast one taking the partitions the slow one did
   * not reach); not held back, the fast one did more of the steps. */
  ck_assert_msg(ps_test_json_num(x.json[fast], "steps") > ps_test_json_num(x.json[slow], "steps"),
                "the fast worker took no more steps than the slow one: %s / %s", x.json[fast],
                x.json[slow]);
  uint64_t gap, parked, version;
  tc_status(&x, &gap, &parked, &version);
  ck_assert_msg(parked == 0, "asp parked %llu pulls", (unsigned long long)parked);
  for (int i = 0; i < 2; i++)
    ck_assert_msg(ps_test_json_num(x.json[i], "parked_share") == 0, "%s", x.json[i]);
  tc_finish(&x);
}
END_TEST

/* A bsp worker parked behind a stopped one (SIGSTOP, within its lease)
 * tells the coordinator, heartbeat by heartbeat, its steps/s falling and
 * its blocked share rising: they were the figures of its last step, so
 * psctl status showed it training at full speed, a third blocked, for as
 * long as it waited. */
START_TEST(test_consistency_parked_figures) {
  TC_NEED_DATA();
  tc_ctx x = {0};
  tc_start_epochs(&x, "logreg", "bsp", NULL, 1000);
  pid_t w[2];
  int64_t t0 = ps_test_now_ms();
  for (int i = 0; i < 2; i++) w[i] = tc_spawn(&x, i, NULL, NULL);
  Ps__WorkerInfo a, b;
  /* a loaded machine may take long (the lease is 60 s), within the
   * tcase's 120 s */
  int64_t end = t0 + 90000;
  for (;;) { /* both training, a few steps in */
    int ok = ps_test_worker_of(x.gp[0], w[0], &a) == 0 && ps_test_worker_of(x.gp[0], w[1], &b) == 0 &&
             a.clock >= 20 && b.clock >= 20;
    if (ok) break;
    ck_assert_msg(ps_test_now_ms() < end, "the workers did not train; see %s", x.log[0]);
    usleep(50000);
  }
  ck_assert_int_eq(ps_test_sigstop(w[1], 5000), 0);
  int64_t stop = ps_test_now_ms();
  usleep(1500000); /* w[0] parks within a step; heartbeats every 200 ms */
  ck_assert_int_eq(ps_test_worker_of(x.gp[0], w[0], &a), 0);
  double qa = (double)(ps_test_now_ms() - stop) / 1000;
  usleep(3000000);
  ck_assert_int_eq(ps_test_worker_of(x.gp[0], w[0], &b), 0);
  double qb = (double)(ps_test_now_ms() - stop) / 1000;
  kill(w[1], SIGCONT);
  ck_assert_msg(a.clock == b.clock, "clock %llu then %llu behind a stopped worker under bsp",
                (unsigned long long)a.clock, (unsigned long long)b.clock);
  ck_assert_msg(b.heartbeat_age_ms < 1000, "no heartbeat for %llu ms",
                (unsigned long long)b.heartbeat_age_ms);
  /* steps/s is steps over the wall time since training started, at most
   * TS before the stop: from A's figure (a beat before its query, QA s
   * after the stop) to B's (a beat under 1 s old, sent at least QB - 1.5 s
   * after it) it falls by (TS + QA) / (TS + QB - 1.5) at least: more than
   * 5 %, unless training took long to start (a loaded machine).  Always
   * below 1: a figure that does not move fails. */
  double ts = (double)(stop - t0) / 1000;
  double fall = fmax(0.95, (ts + qa) / (ts + qb - 1.5));
  ck_assert_msg(b.steps_per_s < fall * a.steps_per_s && b.blocked_share > a.blocked_share,
                "parked %.1f s more (%.1f s into training), steps/s %g -> %g (not below %g x), "
                "blocked %g -> %g", qb - qa, ts, a.steps_per_s, b.steps_per_s, fall,
                a.blocked_share, b.blocked_share);
  for (int i = 0; i < 2; i++) ck_assert_int_ne(ps_test_stop(w[i], SIGTERM, 10000), -1);
  tc_finish(&x);
}
END_TEST

/* Failover: of two bsp workers, one is stopped after the first epoch —
 * killed (SIGKILL: the survivor waits for its lease, 3 s, to expire) or
 * sent SIGTERM (it leaves at once, not done) —; the survivor trains on
 * alone and takes the other's partitions over at once (psd_clock
 * invariant 7), so it ends with all 8. */
START_TEST(test_consistency_failover_partitions) {
  int sig = _i ? SIGTERM : SIGKILL;
  TC_NEED_DATA();
  tc_ctx x = {0};
  tc_start(&x, "784,256,10", "bsp", "0"); /* steps long enough for a heartbeat or two */
  pid_t w[2];
  for (int i = 0; i < 2; i++) w[i] = tc_spawn(&x, i, "--epochs", "8");
  /* both at work: one epoch of both (2 x 32 steps) in every shard's version */
  uint64_t gap, parked, version = 0;
  for (int64_t end = ps_test_now_ms() + TC_WAIT_MS; version < 2 * 32;) {
    ck_assert_msg(ps_test_now_ms() < end, "training never got going; see %s", x.log[0]);
    usleep(20000);
    tc_status(&x, &gap, &parked, &version);
  }
  int st = ps_test_stop(w[1], sig, 5000);
  ck_assert_msg(sig == SIGKILL ? WIFSIGNALED(st) : WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM,
                "worker 1 had ended before it was stopped; see %s", x.log[1]);
  st = ps_test_wait_pid(w[0], TC_WAIT_MS);
  ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the survivor failed; see %s",
                x.log[0]);
  tc_read(&x, 0);
  ck_assert_msg(strstr(x.json[0], "\"partitions\":[0,1,2,3,4,5,6,7]") &&
                    (int)ps_test_json_num(x.json[0], "epochs") == 8,
                "the survivor's last line: %s", x.json[0]);
  tc_status(&x, &gap, &parked, &version);
  ck_assert_msg(gap == 0, "bsp served a pull %llu clocks ahead", (unsigned long long)gap);
  char log[700];
  snprintf(log, sizeof log, "%s/psd0.log", x.dir);
  char *psd = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(psd, sig == SIGKILL ? "lease expired" : "before it finished: its data"),
                "the coordinator did not say why the partitions moved; see %s", log);
  free(psd);
  tc_finish(&x);
}
END_TEST

/* ---- the model's settings against the worker's (no dataset needed) ---- */

/* A small cluster: 2 shards with chunks of 4 elements (logistic
 * regression of 3 inputs and 2 classes, 8 parameters, spans both), one
 * partition of 4 CSV samples, one registering worker, batch 1; the
 * cluster file says consistency FILE_CONS. */
typedef struct tq_ctx {
  char dir[512], yaml[600], pb[600], log[600];
  int gp[2], cp[2];
  pid_t shard[2];
} tq_ctx;

/* tq_start writes the data and the cluster file, starts the shards and
 * builds the model's graph (not submitted: tq_submit). */
static void tq_start(tq_ctx *x, const char *file_cons) {
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  char train[600], extra[1400];
  snprintf(train, sizeof train, "%s/train.csv", x->dir);
  ps_test_write_file(train, "0,0.5,-1.0,2.0\n0,0.5,-1.0,2.0\n0,0.5,-1.0,2.0\n0,0.5,-1.0,2.0\n");
  snprintf(extra, sizeof extra,
           "workers:\n  count: 1\n  device: cpu\n  retry_ms: 10000\n"
           "training:\n  model: lr\n  epochs: 1\n  batch_size: 1\n  seed: 1\n"
           "  consistency: %s\n"
           "data:\n  format: csv\n  train_images: %s\n  scale: 1\n  partitions: 1\n",
           file_cons, train);
  snprintf(x->yaml, sizeof x->yaml, "%s", ps_test_cluster_yaml(x->dir, 2, extra, x->gp, x->cp));
  ps_test_file_replace(x->yaml, x->yaml, "chunk_elems: 1024", "chunk_elems: 4");
  ps_test_start_shards(x->yaml, x->dir, 2, x->gp, x->cp, x->shard);
  snprintf(x->pb, sizeof x->pb, "%s/lr.pb", x->dir);
  snprintf(x->log, sizeof x->log, "%s/psctl.log", x->dir);
  char *model[] = {(char *)ps_test_bin("psctl"), "model", "logreg", "--inputs", "3",
                   "--classes", "2", "-o", x->pb, NULL};
  ck_assert_msg(ps_test_run(model, x->log, 20000) == 0, "psctl model failed; see %s", x->log);
}

/* tq_submit submits model "lr" (--replace) with SGD at LR under
 * CONSISTENCY (STALENESS: its ssp bound, or NULL). */
static void tq_submit(tq_ctx *x, const char *lr, const char *consistency, const char *staleness) {
  char *submit[] = {(char *)ps_test_bin("psctl"), "submit", x->pb, "--name", "lr", "--config",
                    x->yaml, "--replace", "--optimizer", "sgd", "--lr", (char *)lr,
                    "--consistency", (char *)consistency, staleness ? "--staleness" : NULL,
                    (char *)staleness, NULL};
  ck_assert_msg(ps_test_run(submit, x->log, 30000) == 0, "psctl submit failed; see %s", x->log);
}

/* tq_worker runs the worker (with option OPT, may be NULL) to its end
 * within 20 s and returns its exit status; *OUT: its log (the caller
 * frees it), whose last line is the JSON line. */
static int tq_worker(tq_ctx *x, const char *opt, char **out) {
  char log[600];
  snprintf(log, sizeof log, "%s/psw.log", x->dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x->yaml, (char *)opt, NULL};
  pid_t w = ps_test_spawn(argv, log, NULL);
  int st = ps_test_wait_pid(w, 20000);
  if (st < 0) ps_test_stop(w, SIGTERM, 5000);
  ck_assert_msg(st >= 0, "the worker did not finish within 20 s; see %s", log);
  ck_assert_msg(WIFEXITED(st), "the worker was killed; see %s", log);
  *out = ps_test_read_file(log, NULL);
  return WEXITSTATUS(st);
}

/* tq_finish stops the shards. */
static void tq_finish(tq_ctx *x) {
  for (int s = 0; s < 2; s++)
    if (x->shard[s] > 0) ps_test_stop(x->shard[s], SIGTERM, 10000);
}

/* A push a shard refuses (an update that would make a parameter
 * non-finite: lr 3e38) raises no clock there, so under bsp the pull
 * behind it waited for the worker itself, forever (pull after pull timed
 * out naming worker 0), and the refusal was never said; with overlap
 * under ssp 1 the same for pull_timeout_ms (30 s).  The worker must fail
 * at once, saying why, count the refused push and leave the partition's
 * offset where it was. */
START_TEST(test_consistency_refused_push) {
  tq_ctx x = {0};
  tq_start(&x, _i ? "ssp" : "bsp");
  tq_submit(&x, "3e38", _i ? "ssp" : "bsp", _i ? "1" : NULL);
  char *out;
  int rc = tq_worker(&x, _i ? "--overlap" : NULL, &out);
  ck_assert_msg(rc == 1 && strstr(out, "non-finite") && strstr(out, "refused"),
                "exit %d: %s", rc, out);
  const char *line = ps_test_last_line(out);
  ck_assert_msg(ps_test_json_sum(line, "pushes_unanswered") >= 1, "%s", line);
  char log[600];
  snprintf(log, sizeof log, "%s/status.json", x.dir);
  char *status[] = {(char *)ps_test_bin("psctl"), "status", "--config", x.yaml, "--json", NULL};
  ck_assert_msg(ps_test_run(status, log, 20000) == 0, "psctl status failed; see %s", log);
  char *st = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(st, "\"offset\":0,") && !strstr(st, "\"offset\":1,"),
                "the partition's offset passed the refused push: %s", st);
  free(st);
  free(out);
  tq_finish(&x);
}
END_TEST

/* psw --overlap follows the consistency of the model the shards enforce,
 * not the cluster file's: a model submitted asp under a file that says
 * bsp overlaps (it used to run sequentially, "consistency 'bsp' allows
 * no overlap"), and one submitted bsp under a file that says asp does
 * not. */
START_TEST(test_consistency_overlap_from_model) {
  tq_ctx x = {0};
  tq_start(&x, _i ? "asp" : "bsp");
  tq_submit(&x, "0.1", _i ? "bsp" : "asp", NULL);
  char *out;
  int rc = tq_worker(&x, "--overlap", &out);
  const char *line = ps_test_last_line(out);
  ck_assert_msg(rc == 0, "exit %d: %s", rc, line);
  ck_assert_msg(strstr(line, _i ? "\"overlap\":false" : "\"overlap\":true") &&
                    (int)ps_test_json_num(line, "steps") == 4, "%s", line);
  free(out);
  tq_finish(&x);
}
END_TEST

Suite *psw_consistency_suite(void) {
  Suite *s = suite_create("psw_consistency");
  TCase *tc = tcase_create("consistency");
  tcase_set_timeout(tc, 120);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tc, test_consistency_bsp_and_registration);
  tcase_add_test(tc, test_consistency_ssp_bound);
  tcase_add_test(tc, test_consistency_asp_straggler);
  tcase_add_test(tc, test_consistency_parked_figures);
  tcase_add_loop_test(tc, test_consistency_failover_partitions, 0, 2);
  suite_add_tcase(s, tc);
  tc = tcase_create("model_settings");
  tcase_set_timeout(tc, 60);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_loop_test(tc, test_consistency_refused_push, 0, 2);
  tcase_add_loop_test(tc, test_consistency_overlap_from_model, 0, 2);
  suite_add_tcase(s, tc);
  return s;
}
