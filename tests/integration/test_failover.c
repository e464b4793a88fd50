/* Integration: worker failover inside an epoch and elastic workers
 * (issue 16), on logistic regression over a 10k-sample Fashion-MNIST
 * subset, 2 shards, bsp, 12 partitions, lease_ms 1000:
 *  - kill: 3 workers, one SIGKILLed every 2 s and restarted at once (it
 *    gets a rank back at once: a new one while its old lease lives); the
 *    run completes, the coordinator's accounting shows every epoch trained
 *    exactly the data set's size, every partition finished, and at most
 *    one batch retrained per handover (the batch in flight); the test
 *    accuracy of the result (psw --evaluate) reaches 0.80; bsp's bound
 *    held (max gap 0).
 *  - join: 2 workers (workers.min 2, count 3) and a third one mid-epoch:
 *    it trains partitions taken from the others, nothing is skipped or
 *    retrained.
 *  - replace: a model replaced with another layout or graph mid-job
 *    makes its workers exit 1 saying so; one at another learning rate
 *    keeps them training the new job to its end.
 *  - SIGTERM while parked: a worker whose pull waits for a stopped
 *    worker (bsp) leaves at once on SIGTERM, reporting what every shard
 *    acknowledged (nothing retrained).
 *  - rejoin under ssp: a worker stopped past its lease and continued
 *    goes on at the slowest live clock; the living worker's clock never
 *    stands still for long after it comes back.
 *  - join rate: a worker that joins a running job reports its own
 *    steps per second, not its start clock over its time.
 *  - drain: SIGTERM to one of 3 workers mid-run: it reports its offset
 *    with nothing in flight and leaves; the others finish its partition
 *    from there (no sample retrained, none skipped).
 *  - coordinator restart: shard 0 stopped and started again mid-run
 *    restores the partition and clock tables (coordinator.state); the
 *    job completes with the same exact accounting.
 *  - coordinator SIGKILLed, back 5 s later (lease 2 s): every worker
 *    keeps its rank and goes on.
 *  - coordinator restarted from a table without a worker's registration:
 *    the worker registers again, keeps its rank and trains on.
 *  - a worker SIGSTOPped past its lease whose rank a new worker took,
 *    then continued: it stops, the new worker keeps the rank and trains.
 *  - a fixed --rank started into a running elastic job: refused, exit 2.
 *  - a registered worker started right after a coordinator's SIGKILL and
 *    restart while a fixed rank of its model lives: refused, exit 2.
 *  - end of job: a worker with nothing left to claim waits; the last
 *    one training (asp, slowed) is SIGKILLed, and the waiting worker
 *    takes its partition over and finishes the job.
 *  - a shard no worker uses, stopped for many heartbeats: it says nothing
 *    of a stall (no lease to extend).
 * Every worker that ends by itself says job_done true: one with nothing
 * left to claim waits for the others' partitions.
 * The longer variant (MLP, 4 workers, a kill every 10 s) runs under
 * `make test-long` (PS_TEST_LONG=1).
 *
 * Skipped (visibly) when the dataset package is not installed. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps_rpc.h"
#include "ps_test.h"

#define TF_DATA "/usr/share/datasets/fashion-mnist"
#define TF_MAXW 16
#define TF_SAMPLES 10000
#define TF_PARTS 12
#define TF_BATCH 64

typedef struct tf_ctx {
  char dir[512], yaml[600];
  int gp[2], cp[2];
  pid_t shard[2];
  pid_t w[TF_MAXW];   /* worker processes, started in order */
  int nw;
  int epochs;
  int lease_ms;        /* workers.lease_ms; 0: 1000 */
  int pull_timeout_ms; /* training.pull_timeout_ms; 0: the default */
  const char *staleness; /* the model's ssp bound (NULL: none said) */
} tf_ctx;

/* tf_start writes the cluster file (COUNT workers expected, MIN to
 * start, EPOCHS; durability SYNC, else the suite's periodic), starts both
 * shards and submits model "m" (LAYERS: "logreg" or an MLP layer list)
 * with Adam at LR, under CONSISTENCY. */
static void tf_start_c(tf_ctx *x, int count, int min, int epochs, const char *layers,
                       const char *lr, int limit, const char *consistency, int sync) {
  x->epochs = epochs;
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  char extra[2048], pt[64] = "";
  if (x->pull_timeout_ms) snprintf(pt, sizeof pt, "  pull_timeout_ms: %d\n", x->pull_timeout_ms);
  snprintf(extra, sizeof extra,
           "workers:\n  count: %d\n  min: %d\n  device: cpu\n  retry_ms: 10000\n"
           "  heartbeat_ms: 200\n  lease_ms: %d\n"
           "training:\n  model: m\n  epochs: %d\n  batch_size: %d\n  seed: 1\n%s"
           "data:\n  format: idx\n"
           "  train_images: " TF_DATA "/train-images-idx3-ubyte.gz\n"
           "  train_labels: " TF_DATA "/train-labels-idx1-ubyte.gz\n"
           "  test_images: " TF_DATA "/t10k-images-idx3-ubyte.gz\n"
           "  test_labels: " TF_DATA "/t10k-labels-idx1-ubyte.gz\n"
           "  scale: 1/255\n  partitions: %d\n  limit: %d\n",
           count, min, x->lease_ms ? x->lease_ms : 1000, epochs, TF_BATCH, pt, TF_PARTS, limit);
  snprintf(x->yaml, sizeof x->yaml, "%s",
           (sync ? ps_test_sync_yaml : ps_test_cluster_yaml)(x->dir, 2, extra, x->gp, x->cp));
  ps_test_start_shards(x->yaml, x->dir, 2, x->gp, x->cp, x->shard);
  ps_test_submit_mlp(x->dir, x->yaml, layers, lr, consistency, x->staleness);
}

/* tf_start: tf_start_c under bsp. */
static void tf_start(tf_ctx *x, int count, int min, int epochs, const char *layers,
                     const char *lr, int limit) {
  tf_start_c(x, count, min, epochs, layers, lr, limit, "bsp", 0);
}

/* tf_log writes worker I's log path to BUF. */
static void tf_log(const tf_ctx *x, int i, char *buf, size_t cap) {
  snprintf(buf, cap, "%s/psw%d.log", x->dir, i);
}

/* tf_spawn_with starts one more registering worker on cluster file YAML
 * with option OPT VAL (OPT NULL: none); returns its index. */
static int tf_spawn_with(tf_ctx *x, const char *yaml, const char *opt, const char *val) {
  ck_assert_int_lt(x->nw, TF_MAXW);
  char log[700];
  tf_log(x, x->nw, log, sizeof log);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", (char *)yaml, "--quiet", (char *)opt,
                  (char *)val, NULL};
  x->w[x->nw] = ps_test_spawn(argv, log, NULL);
  return x->nw++;
}

/* tf_spawn_slow: tf_spawn_with on the cluster file, --slowdown SLOWDOWN
 * (NULL: none). */
static int tf_spawn_slow(tf_ctx *x, const char *slowdown) {
  return tf_spawn_with(x, x->yaml, slowdown ? "--slowdown" : NULL, slowdown);
}

/* tf_spawn starts one more registering worker; returns its index. */
static int tf_spawn(tf_ctx *x) { return tf_spawn_slow(x, NULL); }

/* tf_list asks the coordinator (shard 0) for its worker and partition
 * tables (the caller frees with protobuf_c_message_free_unpacked). */
static Ps__ListWorkersReply *tf_list(tf_ctx *x) {
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->gp[0]);
  ck_assert_int_eq(ps_test_rpc_open(&rpc, addr, &eb), 0);
  Ps__ListWorkersRequest req = PS__LIST_WORKERS_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  ck_assert_msg(ps_rpc_call(rpc, "/ps.Ps/ListWorkers", &req.base,
                            &ps__list_workers_reply__descriptor, &resp, 5000, &eb) == 0,
                "ListWorkers: %s", eb.msg);
  ps_rpc_close(rpc);
  return (Ps__ListWorkersReply *)resp;
}

/* tf_trained returns the samples the coordinator counts trained in epoch
 * E so far. */
static uint64_t tf_trained(tf_ctx *x, uint32_t e) {
  Ps__ListWorkersReply *r = tf_list(x);
  uint64_t t = e < r->n_epochs ? r->epochs[e]->trained : 0;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return t;
}

/* tf_wait_trained waits until epoch E has at least N samples trained. */
static void tf_wait_trained(tf_ctx *x, uint32_t e, uint64_t n) {
  for (int64_t end = ps_test_now_ms() + 60000; tf_trained(x, e) < n;) {
    ck_assert_msg(ps_test_now_ms() < end, "epoch %u never reached %llu samples", e + 1,
                  (unsigned long long)n);
    usleep(20000);
  }
}

/* tf_check_accounting checks the coordinator's accounting: every epoch
 * trained the data set's size exactly and finished every partition, and
 * at most MAX_PER_HANDOVER samples were retrained per handover
 * (UINT64_MAX: any number, with a worker's own retraining after a push of
 * unknown fate too).  Returns the handovers. */
static uint32_t tf_check_accounting(tf_ctx *x, uint64_t samples, uint64_t max_per_handover,
                                    uint64_t *retrained) {
  Ps__ListWorkersReply *r = tf_list(x);
  ck_assert_uint_eq(r->data_size, samples);
  ck_assert_uint_eq(r->job_epochs, (uint32_t)x->epochs);
  ck_assert_uint_eq(r->n_partitions, TF_PARTS);
  for (size_t i = 0; i < r->n_partitions; i++)
    ck_assert_msg(r->partitions[i]->pos->epoch == (uint32_t)x->epochs,
                  "partition %zu ended at epoch %u of %d", i, r->partitions[i]->pos->epoch,
                  x->epochs);
  ck_assert_uint_eq(r->n_epochs, (size_t)x->epochs + 0);
  uint32_t handovers = 0;
  *retrained = 0;
  for (size_t e = 0; e < r->n_epochs; e++) {
    const Ps__EpochInfo *ep = r->epochs[e];
    ck_assert_msg(ep->trained == samples && ep->done_parts == TF_PARTS,
                  "epoch %zu: %llu of %llu samples trained, %u of %d partitions done", e + 1,
                  (unsigned long long)ep->trained, (unsigned long long)samples, ep->done_parts,
                  TF_PARTS);
    ck_assert_msg(max_per_handover == UINT64_MAX ||
                      ep->retrained <= (uint64_t)ep->handovers * max_per_handover,
                  "epoch %zu: %llu samples retrained over %u handovers", e + 1,
                  (unsigned long long)ep->retrained, ep->handovers);
    handovers += ep->handovers;
    *retrained += ep->retrained;
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return handovers;
}

/* tf_max_gap returns the largest bsp gap any shard served. */
static uint64_t tf_max_gap(tf_ctx *x) {
  uint64_t gap = 0;
  for (int s = 0; s < 2; s++) {
    Ps__StatusReply *st = ps_test_status(x->gp[s]);
    for (size_t m = 0; m < st->n_models; m++)
      if (st->models[m]->max_gap > gap) gap = st->models[m]->max_gap;
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  return gap;
}

/* tf_evaluate returns the test accuracy of the model's parameters now
 * (psw --evaluate). */
static double tf_evaluate(tf_ctx *x) {
  char log[700];
  snprintf(log, sizeof log, "%s/evaluate.log", x->dir);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x->yaml, "--evaluate", "--quiet", NULL};
  ck_assert_msg(ps_test_run(argv, log, 60000) == 0, "psw --evaluate failed; see %s", log);
  char *text = ps_test_read_file(log, NULL);
  double acc = ps_test_json_num(ps_test_last_line(text), "test_accuracy");
  free(text);
  return acc;
}

/* tf_wait_all waits for every worker still running, each to exit 0 (or,
 * when SIGOK, 128 + SIGOK for the ones stopped with it). */
static void tf_wait_all(tf_ctx *x, const int *stopped) {
  int done = 0, finished = 0; /* workers whose JSON line says job_done true; that ended */
  for (int i = 0; i < x->nw; i++) {
    if (x->w[i] <= 0) continue;
    char log[700];
    tf_log(x, i, log, sizeof log);
    int st = ps_test_wait_pid(x->w[i], 90000);
    ck_assert_msg(st >= 0, "worker %d did not finish; see %s", i, log);
    int want = stopped && stopped[i] ? 128 + stopped[i] : 0;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == want, "worker %d exited %d; see %s", i,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
    x->w[i] = 0;
    if (want) continue;
    char *text = ps_test_read_file(log, NULL);
    finished++;
    done += strstr(text, "\"job_done\":true}") != NULL;
    free(text);
  }
  /* a worker out of partitions waits for the job's end: each saw it done */
  ck_assert_msg(done == finished, "%d of %d workers say job_done true (see %s)", done, finished,
                x->dir);
}

/* tf_finish stops the shards. */
static void tf_finish(tf_ctx *x) {
  for (int s = 0; s < 2; s++)
    if (x->shard[s] > 0) ps_test_stop(x->shard[s], SIGTERM, 10000);
}

#define TF_NEED_DATA()                                              \
  do {                                                              \
    if (access(TF_DATA "/train-images-idx3-ubyte.gz", R_OK) != 0)   \
      PS_SKIP("dataset-fashion-mnist is not installed (%s)", TF_DATA); \
  } while (0)

/* tf_kill_loop: NW workers; every EVERY_MS one of the running ones (in
 * turn) is SIGKILLed and, RESTART_MS later, a new one started, until a
 * worker finishes (the rest of the job is in the living's hands; a
 * killed one is still replaced); then every worker is waited for.
 * Returns the kills. */
static int tf_kill_loop(tf_ctx *x, int nw, int every_ms, int restart_ms) {
  int live[TF_MAXW * 4], nlive = 0, kills = 0, finished = 0;
  for (int i = 0; i < nw; i++) live[nlive++] = tf_spawn(x);
  int64_t next = ps_test_now_ms() + every_ms;
  for (int turn = 0; !finished && x->nw < TF_MAXW;) {
    usleep(20000);
    for (int k = 0; k < nlive; k++) {
      int st = ps_test_wait_pid(x->w[live[k]], 0);
      if (st < 0) continue;
      char log[700];
      tf_log(x, live[k], log, sizeof log);
      ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d failed; see %s", live[k],
                    log);
      x->w[live[k]] = 0;
      live[k--] = live[--nlive];
      finished = 1;
    }
    if (finished || ps_test_now_ms() < next) continue;
    int k = turn++ % nlive;
    int st = ps_test_stop(x->w[live[k]], SIGKILL, 5000);
    x->w[live[k]] = 0;
    if (!WIFSIGNALED(st)) finished = 1; /* it had ended by itself */
    kills += WIFSIGNALED(st);
    usleep((useconds_t)restart_ms * 1000);
    live[k] = tf_spawn(x);
    next = ps_test_now_ms() + every_ms;
  }
  tf_wait_all(x, NULL);
  return kills;
}

/* tf_kill_run: the kill scenario on a cluster tf_start made: NW
 * workers, kills every EVERY_MS, restarts RESTART_MS later; checks the
 * accounting (every epoch exactly once, at most one batch retrained per
 * handover), the bsp bound and a test accuracy of at least MIN_ACC. */
static void tf_kill_run(tf_ctx *x, uint64_t samples, int nw, int every_ms, int restart_ms,
                        double min_acc) {
  int kills = tf_kill_loop(x, nw, every_ms, restart_ms);
  ck_assert_msg(kills >= 2, "only %d kills: the run was too short to test failover; see %s",
                kills, x->dir);
  uint64_t retrained;
  uint32_t handovers = tf_check_accounting(x, samples, TF_BATCH, &retrained);
  ck_assert_uint_eq(tf_max_gap(x), 0);
  double acc = tf_evaluate(x);
  ck_assert_msg(acc >= min_acc, "test accuracy %.4f < %.2f after %d kills", acc, min_acc, kills);
  fprintf(stderr, "failover: %d kills, %u handovers, %llu samples retrained, accuracy %.4f\n",
          kills, handovers, (unsigned long long)retrained, acc);
  tf_finish(x);
}

/* Kill every 2 s and restart at once (see the top). */
START_TEST(test_failover_kill_restart) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  /* Adam at 5e-4: logistic regression at 2e-3 oscillates around 0.80.
   * 90 epochs and a kill a second: the job lasts about 6 s here, long
   * enough for several kills however fast the step (60 epochs took 3.9 s
   * once the progress reports moved to the channel, one kill at 2 s) */
  tf_start(&x, 3, 2, 90, "logreg", "0.0005", TF_SAMPLES);
  tf_kill_run(&x, TF_SAMPLES, 3, 1000, 0, 0.80);
}
END_TEST

/* Join: a third worker mid-epoch takes partitions from the others. */
START_TEST(test_failover_join) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  /* 30 epochs: the job outlasts the third worker's start-up (under the
   * sanitizers too), so that it finds partitions left to take */
  tf_start(&x, 3, 2, 30, "logreg", "0.002", TF_SAMPLES);
  tf_spawn(&x);
  tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 4);
  /* it asks for fewer epochs than the job's: it trains on with the job
   * and says so (its progress said "epoch 17/7") */
  int third = tf_spawn_with(&x, x.yaml, "--epochs", "1");
  tf_wait_all(&x, NULL);
  uint64_t retrained;
  ck_assert_uint_eq(tf_check_accounting(&x, TF_SAMPLES, 0, &retrained), 0);
  ck_assert_uint_eq(retrained, 0);
  char log[700];
  tf_log(&x, third, log, sizeof log);
  char *text = ps_test_read_file(log, NULL);
  const char *line = ps_test_last_line(text);
  ck_assert_msg(ps_test_json_num(line, "steps") > 0, "the joining worker trained nothing: %s",
                line);
  ck_assert_msg(strstr(text, "the job trains 30 epochs, the most its workers asked for"),
                "see %s", log);
  free(text);
  ck_assert_uint_eq(tf_max_gap(&x), 0);
  tf_finish(&x);
}
END_TEST

/* tf_worker finds the worker of process PID in the coordinator's table:
 * 1 with its clock and steps/s, 0 when it is not listed (yet). */
static int tf_worker(tf_ctx *x, pid_t pid, uint64_t *clock, double *steps_per_s) {
  Ps__ListWorkersReply *r = tf_list(x);
  int found = 0;
  for (size_t i = 0; i < r->n_workers && !found; i++)
    if (r->workers[i]->pid == (uint32_t)pid && !strcmp(r->workers[i]->state, "ALIVE")) {
      *clock = r->workers[i]->clock;
      *steps_per_s = r->workers[i]->steps_per_s;
      found = 1;
    }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return found;
}

/* tf_wait_state waits (up to 10 s) until the coordinator lists the
 * worker of process PID in STATE. */
static void tf_wait_state(tf_ctx *x, pid_t pid, const char *state) {
  for (int64_t end = ps_test_now_ms() + 10000;; usleep(20000)) {
    Ps__ListWorkersReply *r = tf_list(x);
    int found = 0;
    for (size_t i = 0; i < r->n_workers && !found; i++)
      found = r->workers[i]->pid == (uint32_t)pid && !strcmp(r->workers[i]->state, state);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (found) return;
    ck_assert_msg(ps_test_now_ms() < end, "worker of pid %d never listed %s; see %s", (int)pid,
                  state, x->dir);
  }
}

/* tf_longest_stall watches the clock of the worker of process PID in
 * the coordinator's table for FOR_MS and returns the longest time (ms)
 * it stood still; *STEPS: the steps it took meanwhile. */
static int64_t tf_longest_stall(tf_ctx *x, pid_t pid, int for_ms, uint64_t *steps) {
  uint64_t c0 = 0, c = 0, last = 0;
  double sps;
  ck_assert_msg(tf_worker(x, pid, &c0, &sps), "worker of pid %d is not alive; see %s", (int)pid,
                x->dir);
  last = c0;
  int64_t t = ps_test_now_ms(), end = t + for_ms, moved = t, longest = 0;
  for (; t < end; t = ps_test_now_ms()) {
    usleep(10000);
    ck_assert_msg(tf_worker(x, pid, &c, &sps), "worker of pid %d left; see %s", (int)pid, x->dir);
    int64_t now = ps_test_now_ms();
    if (c != last) {
      last = c;
      moved = now;
    }
    if (now - moved > longest) longest = now - moved;
  }
  *steps = last - c0;
  return longest;
}

/* tf_start_clock returns the start clock worker I's log names (waiting
 * up to 20 s for it). */
static uint64_t tf_start_clock(tf_ctx *x, int i) {
  char log[700];
  tf_log(x, i, log, sizeof log);
  for (int64_t end = ps_test_now_ms() + 20000;; usleep(20000)) {
    char *text = access(log, R_OK) == 0 ? ps_test_read_file(log, NULL) : NULL;
    const char *at = text ? strstr(text, "start clock ") : NULL;
    uint64_t c = at ? strtoull(at + strlen("start clock "), NULL, 10) : 0;
    free(text);
    if (at) return c;
    ck_assert_msg(ps_test_now_ms() < end, "worker %d never registered; see %s", i, log);
  }
}

/* Steps/s of a worker that joined a running job count its own steps,
 * not the start clock it was given (asp: a fast worker alone far
 * ahead, then a joiner slowed 1000 times, a few steps in seconds; the
 * rate it reports stays within what it trained since its first step). */
START_TEST(test_failover_join_rate) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start_c(&x, 2, 1, 400, "logreg", "0.002", TF_SAMPLES, "asp", 0);
  int fast = tf_spawn(&x);
  tf_wait_trained(&x, 3, TF_SAMPLES / 2); /* its clock is past 500 */
  int slow = tf_spawn_slow(&x, "1000");
  uint64_t c0 = tf_start_clock(&x, slow), c = 0;
  ck_assert_msg(c0 > 400, "the joiner started at clock %llu", (unsigned long long)c0);
  double sps = 0;
  int64_t end = ps_test_now_ms() + 30000;
  while (!tf_worker(&x, x.w[slow], &c, &sps) || c <= c0) {
    ck_assert_msg(ps_test_now_ms() < end, "the joiner took no step; see %s", x.dir);
    usleep(20000);
  }
  int64_t t1 = ps_test_now_ms(); /* it has trained a step by now */
  usleep(3000 * 1000);
  ck_assert(tf_worker(&x, x.w[slow], &c, &sps));
  double since = (double)(ps_test_now_ms() - t1) / 1e3 - 1.0; /* a step, a heartbeat */
  double own = (double)(c - c0) / since;
  ck_assert_msg(sps <= own + 1e-3, "the joiner (start clock %llu, clock %llu) reports %.1f "
                "steps/s; its own steps give at most %.1f", (unsigned long long)c0,
                (unsigned long long)c, sps, own);
  for (int i = fast; i <= slow; i++) ps_test_stop(x.w[i], SIGKILL, 5000);
  x.w[fast] = x.w[slow] = 0;
  tf_finish(&x);
}
END_TEST

/* tf_replace trains model "m" (784,32,10, relu) under consistency FROM
 * with 2 workers for EPOCHS, replaces it a quarter into the first epoch
 * with a bsp model of LAYERS and ACTIVATION at LR (psctl submit
 * --replace) and checks the
 * workers: WANT NULL, they go on and finish the job; else each exits 1
 * at its next step saying WANT and to start the workers again (not
 * claiming partition after partition, nor training on with its old
 * graph). */
static void tf_replace(const char *from, int epochs, const char *layers, const char *activation,
                       const char *lr, const char *want) {
  tf_ctx x = {0};
  tf_start_c(&x, 2, 2, epochs, "784,32,10", "0.002", TF_SAMPLES, from, 0);
  char pb[600], log[700];
  snprintf(pb, sizeof pb, "%s/m2.pb", x.dir);
  snprintf(log, sizeof log, "%s/psctl-replace.log", x.dir);
  char *model[] = {(char *)ps_test_bin("psctl"), "model", "mlp", "--layers", (char *)layers,
                   "--activation", (char *)activation, "-o", pb, NULL};
  /* made before the workers start: the replace follows the first
   * quarter epoch at once (a fast machine trained 60 epochs meanwhile) */
  ck_assert_msg(ps_test_run(model, log, 20000) == 0, "psctl model failed; see %s", log);
  tf_spawn(&x);
  tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 4);
  char *submit[] = {(char *)ps_test_bin("psctl"), "submit", pb, "--name", "m", "--config",
                    x.yaml, "--optimizer", "adam", "--lr", (char *)lr, "--consistency", "bsp",
                    "--replace", NULL};
  ck_assert_msg(ps_test_run(submit, log, 30000) == 0, "psctl submit failed; see %s", log);
  if (!want) {
    tf_wait_all(&x, NULL);
    uint64_t retrained;
    tf_check_accounting(&x, TF_SAMPLES, (uint64_t)TF_SAMPLES, &retrained);
    tf_finish(&x);
    return;
  }
  for (int i = 0; i < 2; i++) {
    tf_log(&x, i, log, sizeof log);
    int st = ps_test_wait_pid(x.w[i], 20000);
    ck_assert_msg(st >= 0, "worker %d goes on after the replace; see %s", i, log);
    x.w[i] = 0;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "worker %d exited %d; see %s", i,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
    char *text = ps_test_read_file(log, NULL);
    ck_assert_msg(strstr(text, want) && strstr(text, "start the workers again"), "see %s", log);
    int lines = 0;
    for (const char *p = text; (p = strchr(p, '\n')); p++) lines++;
    ck_assert_msg(lines < 40, "worker %d wrote %d lines; see %s", i, lines, log);
    free(text);
  }
  tf_finish(&x);
}

/* Another layer list: it used to loop forever, ~350 lines/s, counting
 * each failed step. */
START_TEST(test_failover_replace_shape) {
  TF_NEED_DATA();
  tf_replace("bsp", 600, "784,16,10", "relu", "0.002", "model 'm' was replaced with another layout");
}
END_TEST

/* The same tensors under another activation: the workers went on with
 * the old graph (and the new one, evaluated on what they trained, was at
 * chance). */
START_TEST(test_failover_replace_graph) {
  TF_NEED_DATA();
  tf_replace("bsp", 600, "784,32,10", "sigmoid", "0.002",
             "model 'm' was replaced with another graph");
}
END_TEST

/* The same graph at another learning rate (what the shards apply): the
 * workers train the new job to its end. */
START_TEST(test_failover_replace_lr) {
  TF_NEED_DATA();
  tf_replace("bsp", 20, "784,32,10", "relu", "0.001", NULL);
}
END_TEST

/* The same graph under another consistency (asp to bsp): the workers'
 * clocks, run apart under asp, would park the fast ones until the
 * slowest caught up, and a worker's schedule (overlap) depends on the
 * bound; they exit to be started again, joining at the slowest live
 * clock (they went on, parked, before). */
START_TEST(test_failover_replace_consistency) {
  TF_NEED_DATA();
  tf_replace("asp", 600, "784,32,10", "relu", "0.002",
             "model 'm' was replaced with another graph, clip norm, codec or consistency");
}
END_TEST

/* Fewer samples than partitions (data.limit 5, 12 partitions: psd -t
 * warns): the empty partitions are finished as the others are (every
 * worker of such a job exited 1 on "bad progress offset"). */
START_TEST(test_failover_empty_partitions) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start(&x, 2, 2, 2, "logreg", "0.002", 5);
  tf_spawn(&x);
  tf_spawn(&x);
  tf_wait_all(&x, NULL);
  uint64_t retrained;
  tf_check_accounting(&x, 5, 0, &retrained);
  tf_finish(&x);
}
END_TEST

/* tf_epochs_retrained returns the samples the coordinator counts
 * retrained, over every epoch. */
static uint64_t tf_epochs_retrained(tf_ctx *x) {
  Ps__ListWorkersReply *r = tf_list(x);
  uint64_t n = 0;
  for (size_t e = 0; e < r->n_epochs; e++) n += r->epochs[e]->retrained;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return n;
}

/* SIGTERM while the worker's pull waits parked (bsp, the other worker
 * stopped with SIGSTOP, pull_timeout_ms 20 s, leases of 60 s): the stop
 * ends the wait within a heartbeat or so, the worker reports the offset
 * every shard acknowledged (nothing retrained), says stopped true and
 * exits 143 (it used to wait out pull_timeout_ms, say stopped false and
 * leave its last acknowledged batch counted in flight). */
START_TEST(test_failover_sigterm_parked) {
  TF_NEED_DATA();
  tf_ctx x = {.lease_ms = 60000, .pull_timeout_ms = 20000};
  tf_start(&x, 2, 2, 30, "logreg", "0.002", TF_SAMPLES);
  int a = tf_spawn(&x), b = tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 4);
  ck_assert_int_eq(kill(x.w[b], SIGSTOP), 0);
  usleep(1000 * 1000); /* worker a's next pull parks on the shards */
  uint32_t parked = 0;
  for (int s = 0; s < 2; s++) {
    Ps__StatusReply *ss = ps_test_status(x.gp[s]);
    parked += ss->n_models ? ss->models[0]->parked : 0;
    protobuf_c_message_free_unpacked(&ss->base, NULL);
  }
  ck_assert_msg(parked > 0, "no pull parked with worker %d stopped; see %s", b, x.dir);
  int64_t t = ps_test_now_ms();
  char log[700];
  tf_log(&x, a, log, sizeof log);
  int st = ps_test_stop(x.w[a], SIGTERM, 15000);
  int64_t took = ps_test_now_ms() - t;
  x.w[a] = 0;
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM, "worker %d exited %d after "
                "%lld ms; see %s", a, WIFEXITED(st) ? WEXITSTATUS(st) : -1, (long long)took, log);
  ck_assert_msg(took < 3000, "the stop took %lld ms; see %s", (long long)took, log);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(ps_test_last_line(text), "\"stopped\":true"), "see %s", log);
  free(text);
  ck_assert_uint_eq(tf_epochs_retrained(&x), 0);
  ps_test_stop(x.w[b], SIGKILL, 5000);
  x.w[b] = 0;
  tf_finish(&x);
}
END_TEST

/* A worker declared dead that comes back does not hold the living back
 * (ssp, staleness 2, 2 workers, leases of 1 s): b is stopped with
 * SIGSTOP past its lease and a trains on alone for 3 s more (thousands
 * of steps), then b is continued.  b registers again, keeps its rank and
 * goes on at the slowest live clock (as a worker that joins does), so
 * a's clock keeps moving: its longest stall in the 5 s after b resumed
 * stays far below the 3 s b would need to catch up alone (it used to
 * come back at its old clock, which parked a's pulls until b had run
 * those steps: 2.7 s measured; 46-100 ms since).  The bound held
 * throughout. */
START_TEST(test_failover_rejoin_ssp) {
  TF_NEED_DATA();
  tf_ctx x = {.staleness = "2"};
  tf_start_c(&x, 2, 2, 400, "logreg", "0.002", TF_SAMPLES, "ssp", 0);
  int a = tf_spawn(&x), b = tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 4);
  ck_assert_int_eq(kill(x.w[b], SIGSTOP), 0);
  tf_wait_state(&x, x.w[b], "DEAD");
  usleep(3000 * 1000); /* a runs ahead alone */
  ck_assert_int_eq(kill(x.w[b], SIGCONT), 0);
  uint64_t steps;
  int64_t stall = tf_longest_stall(&x, x.w[a], 5000, &steps);
  tf_wait_state(&x, x.w[b], "ALIVE"); /* b did come back */
  char log[700];
  tf_log(&x, b, log, sizeof log);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "registering again"), "worker b did not register again; see %s",
                log);
  const char *on = strstr(text, "after rejoining; going on at clock ");
  on = on ? on + strlen("after rejoining; going on at clock ") : "(not said)";
  fprintf(stderr, "rejoin under ssp: worker a's longest stall %lld ms, %llu steps in 5 s; "
          "worker b went on at clock %.*s\n", (long long)stall, (unsigned long long)steps,
          (int)strcspn(on, "\n"), on);
  free(text);
  ck_assert_msg(stall < 1000, "worker a stood still for %lld ms after worker b rejoined "
                "(%llu steps in 5 s); see %s", (long long)stall, (unsigned long long)steps, x.dir);
  ck_assert_uint_le(tf_max_gap(&x), 2);
  for (int i = a; i <= b; i++) ps_test_stop(x.w[i], SIGKILL, 5000);
  x.w[a] = x.w[b] = 0;
  tf_finish(&x);
}
END_TEST

/* Drain: SIGTERM hands the offset over exactly. */
START_TEST(test_failover_sigterm_drain) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start(&x, 3, 3, 3, "logreg", "0.002", TF_SAMPLES);
  for (int i = 0; i < 3; i++) tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 3);
  int st = ps_test_stop(x.w[1], SIGTERM, 10000);
  x.w[1] = 0;
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM,
                "the drained worker exited %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  tf_wait_all(&x, NULL);
  uint64_t retrained;
  tf_check_accounting(&x, TF_SAMPLES, 0, &retrained);
  ck_assert_uint_eq(retrained, 0);
  tf_finish(&x);
}
END_TEST

/* The end of a job (asp, 2 workers, one slowed 200 times): the fast
 * worker runs out of partitions to claim while the slow one trains its
 * last, and waits (out of the clock tables); the slow one is SIGKILLed
 * then.  Its partition comes to the waiting worker once its lease ends,
 * which finishes the job: every epoch trained exactly, at most the batch
 * in flight retrained.  A worker started after the end finds nothing to
 * do at once, without waiting for workers.min. */
START_TEST(test_failover_end_of_job) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start_c(&x, 2, 2, 2, "784,64,10", "0.002", TF_SAMPLES, "asp", 0);
  int fast = tf_spawn(&x), slow = tf_spawn_slow(&x, "200");
  char log[700], slog[700];
  tf_log(&x, fast, log, sizeof log);
  tf_log(&x, slow, slog, sizeof slog);
  for (int64_t end = ps_test_now_ms() + 60000;;) {
    char *text = access(log, R_OK) == 0 ? ps_test_read_file(log, NULL) : NULL;
    int waiting = text && strstr(text, "nothing left to claim; waiting");
    free(text);
    if (waiting) break;
    ck_assert_msg(ps_test_wait_pid(x.w[fast], 0) < 0, "the fast worker ended without waiting; "
                  "see %s", log);
    ck_assert_msg(ps_test_now_ms() < end, "the fast worker never waited; see %s", log);
    usleep(20000);
  }
  int st = ps_test_stop(x.w[slow], SIGKILL, 5000);
  x.w[slow] = 0;
  ck_assert_msg(WIFSIGNALED(st), "the slow worker had ended by itself (too fast to test "
                "this); see %s", slog);
  tf_wait_all(&x, NULL);
  uint64_t retrained;
  ck_assert_uint_ge(tf_check_accounting(&x, TF_SAMPLES, TF_BATCH, &retrained), 1);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "took over partition"), "see %s", log);
  free(text);
  /* a worker started once the job is done finds nothing to do at once:
   * it does not wait workers.retry_ms for workers.min (2) to register */
  int64_t t0 = ps_test_now_ms();
  int late = tf_spawn(&x);
  tf_wait_all(&x, NULL);
  tf_log(&x, late, log, sizeof log);
  text = ps_test_read_file(log, NULL);
  ck_assert_msg(ps_test_now_ms() - t0 < 8000 && !strstr(text, "training anyway") &&
                    strstr(text, "is finished already"),
                "the late worker waited for others (%lld ms); see %s",
                (long long)(ps_test_now_ms() - t0), log);
  free(text);
  tf_finish(&x);
}
END_TEST

/* tf_spawn_edited starts a worker on a copy of the cluster file with FROM
 * replaced by TO (NAME: the copy's name); returns its index. */
static int tf_spawn_edited(tf_ctx *x, const char *name, const char *from, const char *to) {
  char path[700];
  snprintf(path, sizeof path, "%s/%s", x->dir, name);
  ps_test_file_replace(x->yaml, path, from, to);
  return tf_spawn_with(x, path, NULL, NULL);
}

/* tf_refused waits for worker I to exit 1 (refused) with WHY in its log. */
static void tf_refused(tf_ctx *x, int i, const char *why) {
  char log[700];
  tf_log(x, i, log, sizeof log);
  int st = ps_test_wait_pid(x->w[i], 60000);
  x->w[i] = 0;
  ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "worker %d was not refused "
                "(exit %d); see %s", i, st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, why), "no '%s' in %s", why, log);
  free(text);
}

/* Workers whose cluster files cut the training set otherwise (another
 * data.partitions, another data.limit) are refused once the job has
 * begun, instead of training other samples; the job goes on exact. */
START_TEST(test_failover_data_mismatch) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start(&x, 3, 1, 8, "logreg", "0.002", TF_SAMPLES);
  tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 4);
  char parts[32], limit[32];
  snprintf(parts, sizeof parts, "partitions: %d\n", TF_PARTS);
  snprintf(limit, sizeof limit, "limit: %d\n", TF_SAMPLES);
  int p = tf_spawn_edited(&x, "parts.yaml", parts, "partitions: 5\n");
  int l = tf_spawn_edited(&x, "limit.yaml", limit, "limit: 6000\n");
  tf_refused(&x, p, "data.partitions differs");
  tf_refused(&x, l, "samples, the job's 10000");
  tf_wait_all(&x, NULL);
  uint64_t retrained;
  tf_check_accounting(&x, TF_SAMPLES, 0, &retrained);
  ck_assert_uint_eq(retrained, 0);
  /* the job is done: more epochs on another training set are refused too
   * (exit 1, as the README says), and the refusal leaves the job as it
   * was: workers with the job's data go on with it to the end */
  char more[16], path[700];
  snprintf(more, sizeof more, "%d", x.epochs + 1);
  snprintf(path, sizeof path, "%s/limit.yaml", x.dir);
  l = tf_spawn_with(&x, path, "--epochs", more);
  tf_refused(&x, l, "samples, the job's 10000");
  tf_spawn_with(&x, x.yaml, "--epochs", more);
  tf_wait_all(&x, NULL);
  x.epochs++;
  tf_check_accounting(&x, TF_SAMPLES, 0, &retrained);
  tf_finish(&x);
}
END_TEST

/* More epochs for a finished job: a worker started with a larger
 * --epochs waits for workers.min like a new job's first worker (the
 * finished job's workers, listed DONE, do not count), the job goes on
 * once the second comes, and the accounting is exact. */
START_TEST(test_failover_more_epochs) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start(&x, 2, 2, 1, "logreg", "0.002", TF_SAMPLES);
  tf_spawn(&x);
  tf_spawn(&x);
  tf_wait_all(&x, NULL);
  char more[16];
  snprintf(more, sizeof more, "%d", x.epochs + 1);
  tf_spawn_with(&x, x.yaml, "--epochs", more);
  usleep(1500 * 1000); /* retry_ms is 10 s: it waits for the second */
  Ps__ListWorkersReply *r = tf_list(&x);
  ck_assert_str_eq(r->job_model, "m");
  ck_assert_msg(r->job_epochs == 1, "a lone worker claimed epoch 2 without waiting for "
                "workers.min (job epochs %u)", r->job_epochs);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  tf_spawn_with(&x, x.yaml, "--epochs", more);
  tf_wait_all(&x, NULL);
  x.epochs++;
  uint64_t retrained;
  tf_check_accounting(&x, TF_SAMPLES, 0, &retrained);
  tf_finish(&x);
}
END_TEST

/* A coordinator killed (SIGKILL) under durability sync loses no
 * acknowledged push, and its saved progress (at most 100 ms old) is
 * behind what was acknowledged: the samples since are trained again,
 * none skipped.  Its model version (pushes applied, restored by the
 * replay, plus those after) covers every batch of every epoch.  (Under
 * periodic the pushes since the last snapshot are lost, their samples
 * counted trained: the README says so.) */
static void tf_shard_killed_sync(int k, int overlap) {
  tf_ctx x = {0};
  tf_start_c(&x, 2, 2, 6, "logreg", "0.002", TF_SAMPLES, overlap ? "asp" : "bsp", 1);
  for (int i = 0; i < 2; i++) tf_spawn_with(&x, x.yaml, overlap ? "--overlap" : NULL, NULL);
  tf_wait_trained(&x, 1, TF_SAMPLES / 2);
  int st = ps_test_stop(x.shard[k], SIGKILL, 10000);
  ck_assert(WIFSIGNALED(st));
  char log[700];
  snprintf(log, sizeof log, "%s/psd%d-again.log", x.dir, k);
  x.shard[k] = ps_test_psd(x.yaml, k, log, NULL);
  ck_assert_msg(ps_test_wait_port(x.gp[k], 20000) == 0, "shard %d did not come back; see %s", k,
                log);
  tf_wait_all(&x, NULL);
  uint64_t retrained;
  tf_check_accounting(&x, TF_SAMPLES, UINT64_MAX, &retrained);
  /* a worker that went back over a push of unknown fate says so, and the
   * coordinator counts those samples retrained (it counted none); not when
   * the coordinator itself was killed: its table, saved up to 100 ms
   * before, may not hold how far the worker had started */
  int again = 0;
  for (int i = 0; i < x.nw; i++) {
    char log[700];
    tf_log(&x, i, log, sizeof log);
    char *text = ps_test_read_file(log, NULL);
    again |= strstr(text, "is trained again from sample") != NULL;
    free(text);
  }
  ck_assert_msg(k == 0 || !again || retrained > 0, "workers trained again, none counted (see %s)",
                x.dir);
  Ps__ListWorkersReply *r = tf_list(&x);
  uint64_t batches = 0;
  for (size_t i = 0; i < r->n_partitions; i++)
    batches += (r->partitions[i]->pos->size + TF_BATCH - 1) / TF_BATCH;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  Ps__StatusReply *sk = ps_test_status(x.gp[k]);
  ck_assert_uint_eq(sk->n_models, 1);
  uint64_t version = sk->models[0]->version;
  protobuf_c_message_free_unpacked(&sk->base, NULL);
  ck_assert_msg(version >= batches * (uint64_t)x.epochs, "shard %d applied %llu pushes, fewer "
                "than the job's %llu batches: samples were skipped (see %s)", k,
                (unsigned long long)version, (unsigned long long)(batches * x.epochs), x.dir);
  tf_finish(&x);
}

START_TEST(test_failover_coordinator_killed_sync) {
  TF_NEED_DATA();
  tf_shard_killed_sync(0, 0);
}
END_TEST

/* The same for shard 1 with the workers overlapping communication and
 * compute (--overlap, asp): a push of unknown fate in the communication
 * thread sends the worker back to its last acknowledged batch too (it
 * used to count the batch trained, and the shard's version fell short). */
START_TEST(test_failover_coordinator_killed_sync_overlap) {
  TF_NEED_DATA();
  tf_shard_killed_sync(1, 1);
}
END_TEST

/* tf_restart_coordinator starts shard 0 again (stopped or killed),
 * logging to psd0-again.log (its path in LOG), and waits until it
 * serves. */
static void tf_restart_coordinator(tf_ctx *x, char *log, size_t cap) {
  snprintf(log, cap, "%s/psd0-again.log", x->dir);
  x->shard[0] = ps_test_psd(x->yaml, 0, log, NULL);
  ck_assert_msg(ps_test_wait_port(x->gp[0], 20000) == 0, "shard 0 did not come back; see %s",
                log);
}

/* Coordinator restart: shard 0 is stopped (SIGTERM) mid-run and started
 * again; it restores the partition table and the clock table from
 * coordinator.state, the workers go on (one whose lease ran out while the
 * shard was away registers again: at most one batch retrained per
 * handover, and per worker whose push the stopping shard refused) and the
 * accounting is exact. */
START_TEST(test_failover_coordinator_restart) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start(&x, 2, 2, 30, "logreg", "0.002", TF_SAMPLES);
  tf_spawn(&x);
  tf_spawn(&x);
  tf_wait_trained(&x, 1, TF_SAMPLES / 2);
  ps_test_stop(x.shard[0], SIGTERM, 10000);
  char log[700];
  tf_restart_coordinator(&x, log, sizeof log);
  tf_wait_all(&x, NULL);
  uint64_t retrained;
  uint32_t handovers = tf_check_accounting(&x, TF_SAMPLES, UINT64_MAX, &retrained);
  /* a batch per handover, and one per worker whose push the stopping
   * shard refused (trained again, and counted so) */
  ck_assert_msg(retrained <= (uint64_t)(handovers + 2) * TF_BATCH, "%llu samples retrained "
                "over %u handovers", (unsigned long long)retrained, handovers);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "coordinator state restored"), "no restore in %s", log);
  free(text);
  tf_finish(&x);
}
END_TEST

/* A coordinator.state saved with another partition count (data.partitions
 * changed since) does not stop the coordinator from starting: it is set
 * aside as coordinator.state.old with a warning, and a new job starts. */
START_TEST(test_failover_partitions_changed) {
  char d[512], log[700], state[700], old[720];
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  int gp;
  const char *yaml = ps_test_cluster_yaml(d, 1, NULL, &gp, NULL);
  snprintf(log, sizeof log, "%s/psd0.log", d);
  snprintf(state, sizeof state, "%s/shard0/coordinator.state", d);
  snprintf(old, sizeof old, "%s.old", state);
  ck_assert_int_eq(mkdir(d, 0755) == 0 || errno == EEXIST, 1);
  char dir[600];
  snprintf(dir, sizeof dir, "%s/shard0", d);
  ck_assert_int_eq(mkdir(dir, 0755) == 0 || errno == EEXIST, 1);
  ps_test_write_file(state, "psd-clock 1\njob 3 data 1000 parts 4\nend\n");
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  ck_assert_msg(ps_test_wait_port(gp, 20000) == 0, "the coordinator did not start; see %s", log);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "4 partitions saved, data.partitions is 16") &&
                    strstr(text, "a new job"),
                "see %s", log);
  free(text);
  ck_assert_int_eq(access(old, F_OK), 0);
  int st = ps_test_stop(pid, SIGTERM, 10000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd: status %d; see %s", st, log);
  if (access(state, F_OK) == 0) { /* the new job's table, if the stop saved one */
    text = ps_test_read_file(state, NULL);
    ck_assert_msg(strstr(text, " parts 16\n"), "%s", text);
    free(text);
  }
}
END_TEST

/* The long variant: an MLP, 4 workers, one killed every 10 s and
 * restarted 2 s later (make test-long). */
START_TEST(test_failover_long_mlp) {
  if (!getenv("PS_TEST_LONG")) PS_SKIP("long test: make test-long (PS_TEST_LONG=1)");
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start(&x, 4, 4, 6, "784,256,10", "0.001", 60000);
  tf_kill_run(&x, 60000, 4, 10000, 2000, 0.85);
}
END_TEST

/* tf_rank_of returns the rank the coordinator lists for the live worker
 * of process PID, or -1. */
static int tf_rank_of(tf_ctx *x, pid_t pid) {
  Ps__ListWorkersReply *r = tf_list(x);
  int rank = -1;
  for (size_t i = 0; i < r->n_workers; i++)
    if (r->workers[i]->pid == (uint32_t)pid && !strcmp(r->workers[i]->state, "ALIVE"))
      rank = (int)r->workers[i]->rank;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return rank;
}

/* tf_running says whether worker I's process has not exited (it is
 * reaped when it has: *STATUS its wait status). */
static int tf_running(tf_ctx *x, int i, int *status) {
  *status = ps_test_wait_pid(x->w[i], 0);
  if (*status < 0) return 1;
  x->w[i] = 0;
  return 0;
}

/* The coordinator SIGKILLed and started again 5 s later, past the
 * workers' 2 s lease (asp, 3 workers): each worker keeps its rank (the
 * restart kept each registration's host with its pid, and a worker whose
 * channel was still in gRPC's reconnect backoff retries its registration
 * within workers.retry_ms), none exits.  It used to give rank 0 to the
 * first process that registered again, and the others exited 1 ("rank
 * went to another worker"), or all of them ("registering again failed:
 * ... Connection refused"). */
START_TEST(test_failover_coordinator_kill9_ranks) {
  TF_NEED_DATA();
  tf_ctx x = {.lease_ms = 2000};
  tf_start_c(&x, 3, 3, 400, "logreg", "0.002", TF_SAMPLES, "asp", 0);
  int rank[3];
  for (int i = 0; i < 3; i++) tf_spawn_slow(&x, "3");
  tf_wait_trained(&x, 0, TF_SAMPLES / 10);
  for (int i = 0; i < 3; i++) {
    rank[i] = tf_rank_of(&x, x.w[i]);
    ck_assert_int_ge(rank[i], 0);
  }
  ck_assert_int_eq(kill(x.shard[0], SIGKILL), 0);
  ps_test_wait_pid(x.shard[0], 5000);
  /* 5 s: the workers' channels retry at about 1, 2.6, 5.2 and 9.3 s
   * (gRPC's backoff), so their next try comes a lease after it serves */
  usleep(5000 * 1000);
  char log[700];
  tf_restart_coordinator(&x, log, sizeof log);
  /* past a lease from the restart, and the registrations' retries */
  for (int64_t end = ps_test_now_ms() + 8000; ps_test_now_ms() < end; usleep(100000))
    for (int i = 0; i < 3; i++) {
      int st = 0;
      char wlog[700];
      tf_log(&x, i, wlog, sizeof wlog);
      ck_assert_msg(tf_running(&x, i, &st), "worker %d (rank %d) exited %d after the "
                    "coordinator's restart; see %s", i, rank[i],
                    WIFEXITED(st) ? WEXITSTATUS(st) : -1, wlog);
    }
  for (int i = 0; i < 3; i++)
    ck_assert_msg(tf_rank_of(&x, x.w[i]) == rank[i], "worker %d is not rank %d any more; see %s",
                  i, rank[i], x.dir);
  for (int i = 0; i < 3; i++) ps_test_stop(x.w[i], SIGKILL, 5000);
  /* a batch a worker trains again (its push cut short by the kill) is
   * counted retrained, though the restored table's started lags it */
  int again = 0;
  for (int i = 0; i < 3; i++) {
    char wlog[700];
    tf_log(&x, i, wlog, sizeof wlog);
    char *text = ps_test_read_file(wlog, NULL);
    again += strstr(text, "is trained again from sample") != NULL;
    free(text);
    x.w[i] = 0;
  }
  ck_assert_msg(!again || tf_epochs_retrained(&x) > 0, "%d workers trained a batch again, none "
                "counted retrained; see %s", again, x.dir);
  tf_finish(&x);
}
END_TEST

/* tf_forget_rank rewrites the coordinator's saved table in DIR as if it
 * had been saved before rank RANK registered (a kill within the save of
 * its registration: psd_clock invariant 13): no worker line or clock
 * entry of it, its partitions nobody's. */
static void tf_forget_rank(const char *dir, int rank) {
  char path[700];
  snprintf(path, sizeof path, "%s/shard0/coordinator.state", dir);
  char *text = ps_test_read_file(path, NULL), *save = NULL;
  size_t cap = strlen(text) + 64, n = 0;
  char *out = calloc(1, cap);
  ck_assert_ptr_nonnull(out);
  int dropped = 0;
  for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    unsigned a, e, act;
    unsigned long long off, st, sz;
    long long owner;
    char model[64];
    int k = 0;
    if (sscanf(l, "worker %u %n", &a, &k) == 1 && k && (int)a == rank) {
      dropped++;
      continue;
    }
    if (sscanf(l, "clock %63s %u", model, &a) == 2 && (int)a == rank) continue;
    if (sscanf(l, "part %u %u %llu %llu %llu %lld %u", &a, &e, &off, &st, &sz, &owner,
               &act) == 7 && owner == rank) {
      n += (size_t)snprintf(out + n, cap - n, "part %u %u %llu %llu %llu -1 0\n", a, e, off,
                            off, sz);
      continue;
    }
    n += (size_t)snprintf(out + n, cap - n, "%s\n", l);
    ck_assert_uint_lt(n, cap);
  }
  ck_assert_msg(dropped == 1, "no worker %d in the saved table %s", rank, path);
  ps_test_write_file(path, out);
  free(out);
  free(text);
}

/* A coordinator restarted without a worker's registration (it was
 * killed within the save of it; here its saved table is rewritten so,
 * deterministically): the worker's claims and reports name a rank the
 * coordinator holds no registration of.  It registers again, as after
 * an expiry, gets its rank back (the coordinator knows its process by
 * its heartbeats' host and pid) and trains on; the job completes with
 * every sample counted.  Its claim used to be refused ("worker 1 did not
 * register: it has no partitions") and the worker exited 1. */
START_TEST(test_failover_coordinator_lost_registration) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  /* bsp: the worker registers again without stepping out of the clock
   * tables (it was asp while it did: a push the stop cut short was said
   * moved on after the step-out, which entered it behind its own pull) */
  tf_start_c(&x, 2, 2, 12, "logreg", "0.002", TF_SAMPLES, "bsp", 0);
  tf_spawn(&x);
  tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 2);
  int lost = tf_rank_of(&x, x.w[1]) == 1 ? 1 : 0; /* rank 1's: 0 is the other's */
  ck_assert_int_eq(tf_rank_of(&x, x.w[lost]), 1);
  int st = ps_test_stop(x.shard[0], SIGTERM, 10000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd 0: status %d; see %s", st, x.dir);
  tf_forget_rank(x.dir, 1);
  char log[700], wlog[700];
  tf_restart_coordinator(&x, log, sizeof log);
  tf_log(&x, lost, wlog, sizeof wlog);
  tf_wait_all(&x, NULL);
  uint64_t retrained;
  tf_check_accounting(&x, TF_SAMPLES, UINT64_MAX, &retrained);
  char *text = ps_test_read_file(wlog, NULL);
  ck_assert_msg(strstr(text, "the coordinator holds no registration of this worker") &&
                    !strstr(text, "rank 1 went to another worker"),
                "see %s", wlog);
  /* no shard declared it dead: it does not step out of the clock tables
   * and jump to the slowest live clock as a comeback does (it did) */
  ck_assert_msg(!strstr(text, "after rejoining"), "it stepped out as if declared dead; see %s",
                wlog);
  free(text);
  text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "coordinator state restored") &&
                    strstr(text, "worker 1 registered:"),
                "the worker did not register its rank again; see %s", log);
  free(text);
  tf_finish(&x);
}
END_TEST

/* A coordinator restarted without rank 1's registration, and a newcomer
 * registered rank 1 before the worker that held it spoke again (it was
 * SIGSTOPped across the restart, well within its 60 s lease, which the
 * test's bounded waits, 40 s at most, never reach): that worker
 * is refused, registers again, is offered another rank and stops, saying
 * that its rank was taken after the coordinator restarted without its
 * registration.  It used to say "lease expired", though no shard ever
 * declared it dead. */
START_TEST(test_failover_coordinator_lost_registration_taken) {
  TF_NEED_DATA();
  tf_ctx x = {.lease_ms = 60000};
  tf_start_c(&x, 2, 2, 400, "logreg", "0.002", TF_SAMPLES, "asp", 0);
  tf_spawn_slow(&x, "3");
  tf_spawn_slow(&x, "3");
  tf_wait_trained(&x, 0, TF_SAMPLES / 10);
  int lost = tf_rank_of(&x, x.w[1]) == 1 ? 1 : 0;
  ck_assert_int_eq(tf_rank_of(&x, x.w[lost]), 1);
  ck_assert_int_eq(kill(x.w[lost], SIGSTOP), 0);
  int st = ps_test_stop(x.shard[0], SIGTERM, 10000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd 0: status %d; see %s", st, x.dir);
  tf_forget_rank(x.dir, 1);
  char log[700], wlog[700];
  tf_restart_coordinator(&x, log, sizeof log);
  int c = tf_spawn_slow(&x, "3");
  for (int64_t end = ps_test_now_ms() + 15000; tf_rank_of(&x, x.w[c]) < 0; usleep(20000))
    ck_assert_msg(ps_test_now_ms() < end, "the new worker never registered; see %s", x.dir);
  ck_assert_int_eq(tf_rank_of(&x, x.w[c]), 1);
  ck_assert_int_eq(kill(x.w[lost], SIGCONT), 0);
  tf_log(&x, lost, wlog, sizeof wlog);
  st = ps_test_wait_pid(x.w[lost], 15000);
  ck_assert_msg(st >= 0, "the resumed worker did not stop; see %s", wlog);
  x.w[lost] = 0;
  char *text = ps_test_read_file(wlog, NULL);
  ck_assert_msg(strstr(text, "rank 1 was taken by another worker after the coordinator "
                             "restarted without this worker's registration") &&
                    !strstr(text, "lease expired"),
                "the resumed worker does not say its rank was taken; see %s", wlog);
  free(text);
  ck_assert_int_eq(tf_rank_of(&x, x.w[c]), 1);
  for (int i = 0; i < x.nw; i++)
    if (x.w[i] > 0) ps_test_stop(x.w[i], SIGKILL, 5000), x.w[i] = 0;
  tf_finish(&x);
}
END_TEST

/* A worker SIGSTOPped past its lease whose rank a new process took
 * meanwhile (ssp 2, 3 workers), then SIGCONTed: the coordinator refuses
 * what it sends in that rank's name (its heartbeats, progress, leave) as
 * expired, so it registers again, is offered another rank and stops
 * saying so; the new worker keeps the rank, alive and training.  The
 * resumed one used to claim the rank's partition, exit 1 on "bad
 * progress offset" and leave in the rank's name, which declared the new
 * worker dead. */
START_TEST(test_failover_stopped_rank_taken) {
  TF_NEED_DATA();
  tf_ctx x = {.staleness = "2"};
  tf_start_c(&x, 3, 3, 400, "logreg", "0.002", TF_SAMPLES, "ssp", 0);
  for (int i = 0; i < 3; i++) tf_spawn_slow(&x, "3");
  tf_wait_trained(&x, 0, TF_SAMPLES / 10);
  int b = 1, rank = tf_rank_of(&x, x.w[b]);
  ck_assert_int_ge(rank, 0);
  ck_assert_int_eq(kill(x.w[b], SIGSTOP), 0);
  tf_wait_state(&x, x.w[b], "DEAD");
  int c = tf_spawn_slow(&x, "3");
  for (int64_t end = ps_test_now_ms() + 10000; tf_rank_of(&x, x.w[c]) < 0; usleep(20000))
    ck_assert_msg(ps_test_now_ms() < end, "the new worker never registered; see %s", x.dir);
  ck_assert_int_eq(tf_rank_of(&x, x.w[c]), rank);
  usleep(1500 * 1000); /* it claims and trains */
  ck_assert_int_eq(kill(x.w[b], SIGCONT), 0);
  char log[700];
  tf_log(&x, b, log, sizeof log);
  int st = ps_test_wait_pid(x.w[b], 15000);
  ck_assert_msg(st >= 0, "the resumed worker did not stop; see %s", log);
  x.w[b] = 0;
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "went to another worker") && !strstr(text, "bad progress"),
                "the resumed worker did not stop for its rank going to another; see %s", log);
  free(text);
  usleep(1500 * 1000);
  ck_assert_msg(tf_rank_of(&x, x.w[c]) == rank, "the new worker lost rank %d; see %s", rank,
                x.dir);
  uint64_t c0 = 0, c1 = 0;
  double sps;
  ck_assert(tf_worker(&x, x.w[c], &c0, &sps));
  usleep(1500 * 1000);
  ck_assert(tf_worker(&x, x.w[c], &c1, &sps));
  ck_assert_msg(c1 > c0, "the new worker stands at clock %llu; see %s", (unsigned long long)c1,
                x.dir);
  for (int i = 0; i < x.nw; i++)
    if (x.w[i] > 0) ps_test_stop(x.w[i], SIGKILL, 5000), x.w[i] = 0;
  tf_finish(&x);
}
END_TEST

/* A fixed --rank started into a running elastic job (2 registered
 * workers, one SIGKILLed, then psw --rank 1 --workers 2) is refused at
 * start, exit 2, naming the job: it used to train partitions p % 2 == 1
 * every epoch on top of the job (half the data twice) and exit 0. */
START_TEST(test_failover_fixed_rank_refused) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start_c(&x, 2, 2, 400, "logreg", "0.002", TF_SAMPLES, "asp", 0);
  tf_spawn_slow(&x, "3");
  int b = tf_spawn_slow(&x, "3");
  tf_wait_trained(&x, 0, TF_SAMPLES / 10);
  ps_test_stop(x.w[b], SIGKILL, 5000);
  x.w[b] = 0;
  char log[700];
  tf_log(&x, x.nw, log, sizeof log);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--quiet", "--rank", "1",
                  "--workers", "2", NULL};
  int rc = ps_test_run(argv, log, 20000);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(rc == 2 && strstr(text, "elastic job of model 'm' under way"),
                "a fixed rank in a running elastic job exited %d; see %s", rc, log);
  free(text);
  ps_test_stop(x.w[0], SIGKILL, 5000);
  x.w[0] = 0;
  tf_finish(&x);
}
END_TEST

/* psw --rank 0 after the registered worker that held rank 0 finished
 * (the auditor's case; issue 19's rejoin pairs): the fixed rank takes the
 * dead rank back and trains its pass quietly.  The coordinator kept the
 * finished process as the rank's registered holder and refused every
 * beat of the new one, rejoins included: psw logged "rank 0 was taken by
 * another worker after the coordinator restarted ... rejoining with its
 * fixed rank" and "a shard missed the rejoin" at each beat, though the
 * coordinator never restarted. */
START_TEST(test_failover_fixed_rank_after_finished) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start_c(&x, 1, 1, 1, "logreg", "0.002", 2000, "asp", 0);
  int a = tf_spawn(&x);
  char log[700];
  tf_log(&x, a, log, sizeof log);
  int st = ps_test_wait_pid(x.w[a], 60000);
  x.w[a] = 0;
  ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "the registered worker did not finish (status %d); see %s", st, log);
  tf_log(&x, x.nw, log, sizeof log);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--quiet", "--rank", "0",
                  "--workers", "1", NULL};
  int rc = ps_test_run(argv, log, 60000);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(rc == 0, "psw --rank 0 exited %d; see %s", rc, log);
  ck_assert_msg(!strstr(text, "coordinator restarted") && !strstr(text, "missed the rejoin") &&
                    !strstr(text, "declared this worker dead") && !strstr(text, "is held by"),
                "psw --rank 0 was refused as another process; see %s", log);
  free(text);
  tf_finish(&x);
}
END_TEST

/* psw --rank 0 while a registered worker holds rank 0 (it registered
 * first, and waits for the world of 2: no job has begun) is refused at
 * start, exit 2, naming the model and the rank's registered holder.  It
 * used to train, its beats refused in the registered worker's name ("rank
 * 0, this worker's fixed rank (--rank), is held by another process" and
 * "a shard missed the rejoin" at each beat), and once the world formed
 * both trained rank 0's partitions. */
START_TEST(test_failover_fixed_rank_held_message) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start_c(&x, 2, 2, 400, "logreg", "0.002", TF_SAMPLES, "asp", 0);
  int a = tf_spawn(&x);
  for (int64_t end = ps_test_now_ms() + 15000; tf_rank_of(&x, x.w[a]) != 0; usleep(20000))
    ck_assert_msg(ps_test_now_ms() < end, "the registered worker never took rank 0; see %s",
                  x.dir);
  char log[700];
  tf_log(&x, x.nw, log, sizeof log);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--quiet", "--rank", "0",
                  "--workers", "2", NULL};
  int rc = ps_test_run(argv, log, 20000);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(rc == 2 && strstr(text, "elastic job of model 'm' whose registered workers (1 "
                                        "live) wait for their world; rank 0 is held by a "
                                        "registered worker"),
                "a fixed rank beside a waiting registered worker exited %d; see %s", rc, log);
  free(text);
  ck_assert_int_eq(tf_rank_of(&x, x.w[a]), 0);
  ps_test_stop(x.w[a], SIGKILL, 5000);
  x.w[a] = 0;
  tf_finish(&x);
}
END_TEST

/* tf_start_fixed0 starts a cluster of 2 workers (1 to start, 400
 * epochs: asp logreg), then fixed rank 0 of 2 (slowed 3 times; its log's
 * path into FLOG), and waits until the coordinator lists it; returns its
 * index in x->w. */
static int tf_start_fixed0(tf_ctx *x, char *flog, size_t cap) {
  tf_start_c(x, 2, 1, 400, "logreg", "0.002", TF_SAMPLES, "asp", 0);
  tf_log(x, x->nw, flog, cap);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x->yaml, "--quiet", "--rank", "0",
                  "--workers", "2", "--slowdown", "3", NULL};
  int f = x->nw;
  x->w[x->nw++] = ps_test_spawn(argv, flog, NULL);
  for (int64_t end = ps_test_now_ms() + 15000; tf_rank_of(x, x->w[f]) != 0; usleep(20000))
    ck_assert_msg(ps_test_now_ms() < end, "the fixed rank never beat; see %s", flog);
  return f;
}

/* A fixed rank SIGSTOPped past its lease (declared dead), whose rank a
 * registered worker then takes (a died rank goes first), and SIGCONTed:
 * the coordinator refuses its beats in the registered worker's name, and
 * it stops (exit 1) saying so, as a registered worker whose rank another
 * took does; the registered worker keeps the rank.  It used to rejoin at
 * every beat and train on: both trained rank 0's partitions. */
START_TEST(test_failover_fixed_rank_taken_stops) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  char flog[700];
  int f = tf_start_fixed0(&x, flog, sizeof flog);
  ck_assert_int_eq(kill(x.w[f], SIGSTOP), 0);
  tf_wait_state(&x, x.w[f], "DEAD");
  int c = tf_spawn_slow(&x, "3");
  for (int64_t end = ps_test_now_ms() + 15000; tf_rank_of(&x, x.w[c]) < 0; usleep(20000))
    ck_assert_msg(ps_test_now_ms() < end, "the registered worker never registered; see %s",
                  x.dir);
  ck_assert_int_eq(tf_rank_of(&x, x.w[c]), 0);
  ck_assert_int_eq(kill(x.w[f], SIGCONT), 0);
  int st = ps_test_wait_pid(x.w[f], 20000);
  ck_assert_msg(st >= 0, "the resumed fixed rank did not stop; see %s", flog);
  x.w[f] = 0;
  char *text = ps_test_read_file(flog, NULL);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1 &&
                    strstr(text, "rank 0, this worker's fixed rank (--rank), is held by another "
                                 "process, which registered it with the coordinator") &&
                    strstr(text, "a fixed rank stops"),
                "the resumed fixed rank (status %d) did not stop for its rank held; see %s", st,
                flog);
  free(text);
  ck_assert_msg(tf_rank_of(&x, x.w[c]) == 0, "the registered worker lost rank 0; see %s", x.dir);
  for (int i = 0; i < x.nw; i++)
    if (x.w[i] > 0) ps_test_stop(x.w[i], SIGKILL, 5000), x.w[i] = 0;
  tf_finish(&x);
}
END_TEST

/* A registered psw started while fixed rank 0 of 2 of the same model
 * trains is refused (exit 2), naming the model and the fixed rank: the
 * fixed rank's beats say what it is (HeartbeatRequest.fixed_rank), and
 * the coordinator lists it so.  Once the fixed rank is dead it blocks
 * nothing: a registered worker then takes its rank.  The registered psw
 * used to take a rank and train every partition on top of the fixed
 * rank's share. */
START_TEST(test_failover_register_beside_fixed_refused) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  char flog[700];
  int f = tf_start_fixed0(&x, flog, sizeof flog);
  Ps__ListWorkersReply *r = tf_list(&x);
  int fixed = 0;
  for (size_t i = 0; i < r->n_workers; i++)
    fixed |= r->workers[i]->pid == (uint32_t)x.w[f] && r->workers[i]->fixed_rank;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  ck_assert_msg(fixed, "the coordinator does not list the fixed rank as one; see %s", x.dir);
  char log[700];
  tf_log(&x, x.nw, log, sizeof log);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--quiet", NULL};
  int rc = ps_test_run(argv, log, 20000);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(rc == 2 && strstr(text, "model 'm' is trained by 1 live fixed rank (psw --rank: "
                                        "rank 0)"),
                "a registered worker beside a fixed rank exited %d; see %s", rc, log);
  free(text);
  ck_assert_int_eq(tf_rank_of(&x, x.w[f]), 0);
  /* the fixed rank dies: its lease expires, and it blocks nothing */
  pid_t dead = x.w[f];
  ps_test_stop(x.w[f], SIGKILL, 5000);
  x.w[f] = 0;
  tf_wait_state(&x, dead, "DEAD");
  int c = tf_spawn(&x);
  for (int64_t end = ps_test_now_ms() + 15000; tf_rank_of(&x, x.w[c]) != 0; usleep(20000))
    ck_assert_msg(ps_test_now_ms() < end, "no registered worker took the dead fixed rank's rank "
                  "0; see %s", x.dir);
  ps_test_stop(x.w[c], SIGKILL, 5000);
  x.w[c] = 0;
  tf_finish(&x);
}
END_TEST

/* tf_saved_pid says whether the coordinator's saved table in DIR lists a
 * worker of process PID (0 while there is no such file). */
static int tf_saved_pid(const char *dir, pid_t pid) {
  char path[700], line[1024];
  snprintf(path, sizeof path, "%s/shard0/coordinator.state", dir);
  FILE *f = fopen(path, "r");
  int found = 0;
  while (f && !found && fgets(line, sizeof line, f)) {
    unsigned id, p;
    int a, b, c, d;
    found = sscanf(line, "worker %u %d %d %d %d %u", &id, &a, &b, &c, &d, &p) == 6 &&
            p == (unsigned)pid;
  }
  if (f) fclose(f);
  return found;
}

/* The coordinator SIGKILLed and started again while fixed rank 0 of 2
 * trains (SIGSTOPped across the restart, well within its 10 s lease, so
 * that no beat of it reaches the new coordinator first): a registered
 * psw started right after is refused (exit 2) naming the fixed rank, as
 * before the restart, since the saved table says which ranks are fixed.
 * The mark was not saved: the restarted coordinator took the
 * registration, and the psw trained every partition on top of the fixed
 * rank's share. */
START_TEST(test_failover_register_beside_fixed_after_restart) {
  TF_NEED_DATA();
  tf_ctx x = {.lease_ms = 10000};
  char flog[700];
  int f = tf_start_fixed0(&x, flog, sizeof flog);
  /* a save that holds the fixed rank (the beat that said its pid said it
   * is fixed) */
  for (int64_t end = ps_test_now_ms() + 10000; !tf_saved_pid(x.dir, x.w[f]); usleep(20000))
    ck_assert_msg(ps_test_now_ms() < end, "no save lists the fixed rank; see %s", x.dir);
  ck_assert_int_eq(kill(x.w[f], SIGSTOP), 0);
  ck_assert_int_eq(kill(x.shard[0], SIGKILL), 0);
  ps_test_wait_pid(x.shard[0], 5000);
  char log[700], plog[700];
  tf_restart_coordinator(&x, log, sizeof log);
  tf_log(&x, x.nw, plog, sizeof plog);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, "--quiet", NULL};
  int rc = ps_test_run(argv, plog, 15000);
  ck_assert_int_eq(kill(x.w[f], SIGCONT), 0);
  char *text = ps_test_read_file(plog, NULL);
  ck_assert_msg(rc == 2 && strstr(text, "model 'm' is trained by 1 live fixed rank (psw --rank: "
                                        "rank 0)"),
                "a registered worker right after the coordinator's restart beside a fixed rank "
                "exited %d; see %s", rc, plog);
  free(text);
  ps_test_stop(x.w[f], SIGKILL, 5000);
  x.w[f] = 0;
  tf_finish(&x);
}
END_TEST

/* A shard whose loop stalls (here SIGSTOPped for twice the 1 s lease,
 * which is the same to its leases) does not declare its workers dead on
 * resuming: their heartbeats waited unread in its sockets and are read
 * right after.  It says once that its loop was stalled; the workers go
 * on without registering again.  (It used to sweep the leases first and
 * declare both dead: "lease expired (silent for 2xxx ms)".) */
START_TEST(test_failover_shard_stalled) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start_c(&x, 2, 2, 400, "logreg", "0.002", TF_SAMPLES, "asp", 0);
  int a = tf_spawn(&x), b = tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 8);
  for (int s = 1; s >= 0; s--) { /* a plain shard, then the coordinator */
    ck_assert_int_eq(ps_test_sigstop(x.shard[s], 5000), 0); /* stopped before the 2 s count */
    usleep(2000 * 1000);
    ck_assert_int_eq(kill(x.shard[s], SIGCONT), 0);
    usleep(1500 * 1000); /* the workers' beats come in */
  }
  for (int s = 0; s < 2; s++) {
    char log[700];
    snprintf(log, sizeof log, "%s/psd%d.log", x.dir, s);
    char *text = ps_test_read_file(log, NULL);
    ck_assert_msg(!strstr(text, "lease expired"), "shard %d declared a worker dead; see %s", s,
                  log);
    ck_assert_msg(strstr(text, "event loop was stalled"), "shard %d did not say its loop "
                  "stalled; see %s", s, log);
    free(text);
  }
  for (int i = a; i <= b; i++) {
    char log[700];
    tf_log(&x, i, log, sizeof log);
    char *text = ps_test_read_file(log, NULL);
    ck_assert_msg(!strstr(text, "registering again"), "worker %d was declared dead; see %s", i,
                  log);
    free(text);
    ps_test_stop(x.w[i], SIGKILL, 5000);
    x.w[i] = 0;
  }
  tf_finish(&x);
}
END_TEST

/* A shard no worker uses watches no lease: stopped for many heartbeats
 * (or held by a long request), it says nothing of a stall when it
 * resumes, as no worker's lease was extended.  (psd_stall's watch kept
 * its timer firing every watch period with no lease to watch, and it
 * logged "its event loop was stalled ...: the workers' leases are
 * extended" with no worker there.) */
START_TEST(test_failover_idle_shard_stall_quiet) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp, cp;
  const char *yaml = ps_test_cluster_yaml(
      dir, 1, "workers:\n  count: 1\n  heartbeat_ms: 100\n  lease_ms: 400\n", &gp, &cp);
  char log[600];
  snprintf(log, sizeof log, "%s/psd0.log", dir);
  pid_t pid;
  ps_test_start_shards(yaml, dir, 1, &gp, &cp, &pid);
  usleep(500 * 1000); /* serving, its timer (if any) armed */
  ck_assert_int_eq(ps_test_sigstop(pid, 5000), 0);
  usleep(1500 * 1000); /* 15 heartbeats */
  ck_assert_int_eq(kill(pid, SIGCONT), 0);
  ck_assert_int_eq(ps_test_wait_port(gp, 5000), 0); /* a request read after the stop */
  usleep(1000 * 1000);
  char *text = ps_test_read_file(log, NULL);
  ck_assert_msg(!strstr(text, "event loop was stalled"), "a shard with no worker said its "
                "workers' leases were extended; see %s", log);
  free(text);
  ps_test_stop(pid, SIGTERM, 10000);
}
END_TEST

/* A worker that finds the job finished already trains no step: its JSON
 * line says so with null shares (blocked, parked, report wait), not the
 * share of its short life spent asking the coordinator (0.9984 seen). */
START_TEST(test_failover_finished_shares_null) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start(&x, 1, 1, 1, "logreg", "0.002", 1200);
  tf_spawn(&x);
  tf_wait_all(&x, NULL);
  int late = tf_spawn(&x);
  tf_wait_all(&x, NULL);
  char log[700];
  tf_log(&x, late, log, sizeof log);
  char *text = ps_test_read_file(log, NULL);
  const char *line = ps_test_last_line(text);
  ck_assert_msg(strstr(line, "\"steps\":0,"), "the late worker trained; see %s", log);
  ck_assert_msg(strstr(line, "\"blocked_share\":null") && strstr(line, "\"parked_share\":null") &&
                    strstr(line, "\"report_wait_share\":null"),
                "shares of no training: %s", line);
  free(text);
  tf_finish(&x);
}
END_TEST

/* tf_count returns how many times NEEDLE occurs in TEXT. */
static int tf_count(const char *text, const char *needle) {
  int n = 0;
  for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle)) n++;
  return n;
}

/* One expiry, one rejoin (asp, overlapping pushes, 2 workers, leases of
 * 1 s): b is stopped past its lease, then continued.  Its heartbeat
 * thread and its data path (several pushes and pulls in flight, each
 * refused as expired) all see the expiry; b registers again once and
 * says so once (it used to register again for each refusal: three
 * "registering again" / "rejoined" pairs within 2 s). */
START_TEST(test_failover_one_rejoin) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start_c(&x, 2, 2, 400, "logreg", "0.002", TF_SAMPLES, "asp", 0);
  int a = tf_spawn(&x), b = tf_spawn(&x);
  tf_wait_trained(&x, 0, TF_SAMPLES / 8);
  ck_assert_int_eq(kill(x.w[b], SIGSTOP), 0);
  tf_wait_state(&x, x.w[b], "DEAD");
  ck_assert_int_eq(kill(x.w[b], SIGCONT), 0);
  tf_wait_state(&x, x.w[b], "ALIVE");
  usleep(2500 * 1000); /* the refusals of what was in flight come back */
  char log[700];
  tf_log(&x, b, log, sizeof log);
  char *text = ps_test_read_file(log, NULL);
  int n = tf_count(text, "registering again"), m = tf_count(text, "rejoined;");
  free(text);
  ck_assert_msg(n == 1 && m <= 1, "worker b registered again %d times (%d rejoined lines) "
                "after one expiry; see %s", n, m, log);
  for (int i = a; i <= b; i++) ps_test_stop(x.w[i], SIGKILL, 5000);
  x.w[a] = x.w[b] = 0;
  tf_finish(&x);
}
END_TEST

/* A worker out past its lease while the others go on (asp, 2 workers, a
 * small data set so that epochs fly, b stopped with SIGSTOP for 3 s)
 * reports its epochs truly when it comes back: no epoch line repeats the
 * step count of the one before (a batch computed before it learnt it was
 * declared dead, its report refused, is no step: it used to end an epoch
 * "done" at the same step, evaluated on the same parameters), and an
 * epoch number it skips (the others trained it) is said, not silent. */
START_TEST(test_failover_rejoin_epochs) {
  TF_NEED_DATA();
  tf_ctx x = {0};
  tf_start_c(&x, 2, 2, 400, "logreg", "0.002", 1200, "asp", 0);
  int a = tf_spawn(&x);
  char log[700];
  tf_log(&x, x.nw, log, sizeof log);
  char *argv[] = {(char *)ps_test_bin("psw"), "--config", x.yaml, NULL};
  x.w[x.nw] = ps_test_spawn(argv, log, NULL);
  int b = x.nw++;
  for (int64_t end = ps_test_now_ms() + 30000;; usleep(20000)) {
    char *text = access(log, R_OK) == 0 ? ps_test_read_file(log, NULL) : NULL;
    int n = text ? tf_count(text, " done: step ") : 0;
    free(text);
    if (n >= 2) break;
    ck_assert_msg(ps_test_now_ms() < end, "worker b never finished 2 epochs; see %s", log);
  }
  ck_assert_int_eq(kill(x.w[b], SIGSTOP), 0);
  tf_wait_state(&x, x.w[b], "DEAD");
  usleep(3000 * 1000); /* a trains epochs alone */
  ck_assert_int_eq(kill(x.w[b], SIGCONT), 0);
  usleep(3000 * 1000);
  for (int i = a; i <= b; i++) ps_test_stop(x.w[i], SIGKILL, 5000);
  x.w[a] = x.w[b] = 0;
  char *text = ps_test_read_file(log, NULL);
  unsigned prev_epoch = 0;
  unsigned long long prev_step = 0;
  int said_skip = 0, lines = 0;
  for (char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    if (strstr(l, "trained by the other workers") &&
        strstr(l, "trained by the other workers") < strchr(l, '\n'))
      said_skip = 1;
    const char *d = strstr(l, ": epoch ");
    unsigned e;
    unsigned long long st;
    if (!d || d > strchr(l, '\n') || sscanf(d, ": epoch %u done: step %llu", &e, &st) != 2)
      continue;
    lines++;
    ck_assert_msg(!prev_epoch || st > prev_step, "epoch %u done at step %llu, as epoch %u; "
                  "see %s", e, st, prev_epoch, log);
    ck_assert_msg(!prev_epoch || e == prev_epoch + 1 || said_skip, "epoch %u done after epoch "
                  "%u, the skip not said; see %s", e, prev_epoch, log);
    prev_epoch = e;
    prev_step = st;
    said_skip = 0;
  }
  ck_assert_msg(lines >= 3, "only %d epoch lines; see %s", lines, log);
  free(text);
  tf_finish(&x);
}
END_TEST

Suite *psw_failover_suite(void) {
  Suite *s = suite_create("psw_failover");
  TCase *tc = tcase_create("failover");
  tcase_set_timeout(tc, getenv("PS_TEST_LONG") ? 900 : 120);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tc, test_failover_kill_restart);
  tcase_add_test(tc, test_failover_join);
  tcase_add_test(tc, test_failover_sigterm_drain);
  tcase_add_test(tc, test_failover_coordinator_restart);
  tcase_add_test(tc, test_failover_end_of_job);
  tcase_add_test(tc, test_failover_data_mismatch);
  tcase_add_test(tc, test_failover_more_epochs);
  tcase_add_test(tc, test_failover_coordinator_killed_sync);
  tcase_add_test(tc, test_failover_coordinator_killed_sync_overlap);
  tcase_add_test(tc, test_failover_partitions_changed);
  tcase_add_test(tc, test_failover_long_mlp);
  suite_add_tcase(s, tc);
  /* what a worker says and does when the job changes under it */
  TCase *tw = tcase_create("failover_worker");
  tcase_set_timeout(tw, 120);
  tcase_add_unchecked_fixture(tw, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tw, test_failover_join_rate);
  tcase_add_test(tw, test_failover_replace_shape);
  tcase_add_test(tw, test_failover_replace_graph);
  tcase_add_test(tw, test_failover_replace_lr);
  tcase_add_test(tw, test_failover_replace_consistency);
  tcase_add_test(tw, test_failover_empty_partitions);
  tcase_add_test(tw, test_failover_sigterm_parked);
  tcase_add_test(tw, test_failover_rejoin_ssp);
  suite_add_tcase(s, tw);
  /* who holds a rank across a coordinator's restart and a worker's stop */
  TCase *tr = tcase_create("failover_ranks");
  tcase_set_timeout(tr, 60);
  tcase_add_unchecked_fixture(tr, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tr, test_failover_coordinator_kill9_ranks);
  tcase_add_test(tr, test_failover_coordinator_lost_registration);
  tcase_add_test(tr, test_failover_coordinator_lost_registration_taken);
  tcase_add_test(tr, test_failover_stopped_rank_taken);
  tcase_add_test(tr, test_failover_fixed_rank_refused);
  tcase_add_test(tr, test_failover_fixed_rank_after_finished);
  tcase_add_test(tr, test_failover_fixed_rank_held_message);
  tcase_add_test(tr, test_failover_fixed_rank_taken_stops);
  tcase_add_test(tr, test_failover_register_beside_fixed_refused);
  tcase_add_test(tr, test_failover_register_beside_fixed_after_restart);
  suite_add_tcase(s, tr);
  /* what a worker's lines say when it trained little or nothing */
  TCase *tp = tcase_create("failover_report");
  tcase_set_timeout(tp, 60);
  tcase_add_unchecked_fixture(tp, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tp, test_failover_finished_shares_null);
  tcase_add_test(tp, test_failover_one_rejoin);
  tcase_add_test(tp, test_failover_rejoin_epochs);
  suite_add_tcase(s, tp);
  /* a shard's own stall is no worker's silence */
  TCase *ts = tcase_create("failover_stall");
  tcase_set_timeout(ts, 60);
  tcase_add_unchecked_fixture(ts, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(ts, test_failover_shard_stalled);
  tcase_add_test(ts, test_failover_idle_shard_stall_quiet);
  suite_add_tcase(s, ts);
  return s;
}
