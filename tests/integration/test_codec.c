/* Integration: gradient and parameter codecs end to end (issue 13).
 * Logistic regression on a 10k-sample Fashion-MNIST subset with 2 psd
 * shards and 2 psw workers, Adam lr 3e-4 (test_train.c's setup), once per
 * push codec, each with a pull codec: both workers must reach the
 * accuracy bound measured for that pair (CODEC_EPOCHS epochs) and report
 * the bytes they moved, and psctl status --json must show the codecs and,
 * for a compressed pair, fewer wire bytes than raw ones (raw = wire for
 * fp32).
 *
 * Skipped (visibly) when the dataset package is not installed. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps_test.h"

#define CODEC_DATA "/usr/share/datasets/fashion-mnist"
#define CODEC_EPOCHS 15
#define CODEC_STR(x) CODEC_STR2(x)
#define CODEC_STR2(x) #x

/* push codec, pull codec, accuracy bound: at least 1.5 points under the
 * lowest of 6 runs of 15 epochs per pair on this machine (fp32 0.796-0.813,
 * fp16 0.807-0.813, int8 0.803-0.814, onebit 0.787-0.806, topk 0.786-0.803;
 * under load).  topk keeps 5 % of each chunk; the first 20 steps go fp32. */
static const struct {
  const char *push, *pull;
  double min_acc;
} codec_runs[] = {
    {"fp32", "fp32", 0.78}, {"fp16", "fp16", 0.78}, {"int8", "int8", 0.78},
    {"onebit", "fp32", 0.77}, {"topk", "int8", 0.77},
};

/* codec_status runs psctl status --json for YAML into OUT (DIR/status.json). */
static char *codec_status(const char *dir, const char *yaml) {
  char out[600], cmd[2000];
  snprintf(out, sizeof out, "%s/status.json", dir);
  snprintf(cmd, sizeof cmd, "%s status --config %s --json > %s 2>&1", ps_test_bin("psctl"), yaml,
           out);
  ck_assert_msg(system(cmd) == 0, "psctl status failed; see %s", out);
  return ps_test_read_file(out, NULL);
}

START_TEST(test_codec_train_logreg) {
  if (access(CODEC_DATA "/train-images-idx3-ubyte.gz", R_OK) != 0)
    PS_SKIP("dataset-fashion-mnist is not installed (%s)", CODEC_DATA);
  const char *push = codec_runs[_i].push, *pull = codec_runs[_i].pull;
  char dir[512], yaml[600], pb[600], log[600];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  static const char extra[] =
      "workers:\n  count: 2\n  device: cpu\n  retry_ms: 10000\n"
      "training:\n  model: lr\n  epochs: " CODEC_STR(CODEC_EPOCHS) "\n  batch_size: 64\n"
      "  seed: 1\n"
      "data:\n  format: idx\n"
      "  train_images: " CODEC_DATA "/train-images-idx3-ubyte.gz\n"
      "  train_labels: " CODEC_DATA "/train-labels-idx1-ubyte.gz\n"
      "  test_images: " CODEC_DATA "/t10k-images-idx3-ubyte.gz\n"
      "  test_labels: " CODEC_DATA "/t10k-labels-idx1-ubyte.gz\n"
      "  scale: 1/255\n  partitions: 8\n  limit: 10000\n";
  int gp[2], cp[2];
  pid_t shard[2];
  snprintf(yaml, sizeof yaml, "%s", ps_test_cluster_yaml(dir, 2, extra, gp, cp));
  ps_test_start_shards(yaml, dir, 2, gp, cp, shard);
  snprintf(pb, sizeof pb, "%s/lr.pb", dir);
  snprintf(log, sizeof log, "%s/psctl.log", dir);
  char *model[] = {(char *)ps_test_bin("psctl"), "model", "logreg", "--inputs", "784",
                   "--classes", "10", "-o", pb, NULL};
  ck_assert_msg(ps_test_run(model, log, 20000) == 0, "psctl model failed; see %s", log);
  char *submit[] = {(char *)ps_test_bin("psctl"), "submit", pb, "--name", "lr", "--config", yaml,
                    "--optimizer", "adam", "--lr", "0.0003", "--codec", (char *)push,
                    "--pull-codec", (char *)pull, "--topk", "0.05", "--codec-warmup-steps", "20",
                    NULL};
  ck_assert_msg(ps_test_run(submit, log, 30000) == 0, "psctl submit failed; see %s", log);
  char wlog[2][600];
  pid_t w[2];
  for (int r = 0; r < 2; r++) {
    char rank[8];
    snprintf(rank, sizeof rank, "%d", r);
    snprintf(wlog[r], sizeof wlog[r], "%s/psw%d.log", dir, r);
    char *argv[] = {(char *)ps_test_bin("psw"), "--config", yaml, "--rank", rank, "--workers", "2",
                    NULL};
    w[r] = ps_test_spawn(argv, wlog[r], NULL);
  }
  for (int r = 0; r < 2; r++) {
    int st = ps_test_wait_pid(w[r], 120000);
    ck_assert_msg(st >= 0, "worker %d did not finish within 120 s; see %s", r, wlog[r]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d failed; see %s", r, wlog[r]);
  }
  for (int r = 0; r < 2; r++) {
    char *text = ps_test_read_file(wlog[r], NULL);
    const char *line = ps_test_last_line(text);
    double acc = ps_test_json_num(line, "test_accuracy");
    double sent = ps_test_json_num(line, "bytes_sent"), recv = ps_test_json_num(line, "bytes_received");
    fprintf(stderr, "codec %s/%s worker %d: accuracy %.4f, sent %.0f, received %.0f bytes\n", push,
            pull, r, acc, sent, recv);
    ck_assert_msg(acc >= codec_runs[_i].min_acc, "%s/%s worker %d: test accuracy %.4f < %.2f",
                  push, pull, r, acc, codec_runs[_i].min_acc);
    ck_assert(sent > 0 && recv > 0);
    free(text);
  }
  char *st = codec_status(dir, yaml);
  char want[64];
  snprintf(want, sizeof want, "\"codec\":\"%s\",\"pull_codec\":\"%s\"", push, pull);
  ck_assert_msg(strstr(st, want), "status does not show %s: %s", want, st);
  /* every shard: raw > wire for a compressed pair, raw == wire for fp32 */
  for (const char *p = st; (p = strstr(p, "\"bytes_raw\":")); p++) {
    double raw = strtod(p + 12, NULL), wire = ps_test_json_num(p, "bytes_wire");
    ck_assert(raw > 0);
    ck_assert_msg(!strcmp(push, "fp32") ? raw == wire : wire < raw, "raw %.0f, wire %.0f", raw, wire);
  }
  free(st);
  for (int s = 0; s < 2; s++) ps_test_stop(shard[s], SIGTERM, 10000);
}
END_TEST

Suite *ps_codec_train_suite(void) {
  Suite *s = suite_create("ps_codec_train");
  TCase *tc = tcase_create("train");
  tcase_set_timeout(tc, 180);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_loop_test(tc, test_codec_train_logreg, 0, sizeof codec_runs / sizeof codec_runs[0]);
  suite_add_tcase(s, tc);
  return s;
}
