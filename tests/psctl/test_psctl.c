/* psctl end to end: the real psctl against real psd shards on 127.0.0.1
 * (ephemeral ports, data dirs in a temp dir).
 *
 *  - export: an MLP graph built with `psctl model mlp`, submitted with
 *    Adam, one push of gradients to every chunk over gRPC, every chunk
 *    pulled; `psctl export` writes an .npz whose members, read back with
 *    ps_npz_read, are the pulled values bit for bit, with the tensors'
 *    names and shapes.  Unknown model: exit 1; no --model: exit 2; a shard
 *    SIGKILLed: exit 1 and no file written (an existing one left as it was).
 *  - model: `show` on a good file (exit 0, the parameter count), on a
 *    truncated one (exit 2, the field named); `logreg` writes a file that
 *    show accepts.
 *  - submit: with a shard down exit 1 and nothing registered on the other;
 *    the same file twice: 0 both times; another lr under the same name: 1
 *    and a hint at --replace, the old settings kept; with --replace: 0 and
 *    the new settings on every shard.
 *
 * Every process started is recorded in shared memory so that the
 * unchecked teardown stops it by PID even when an assertion failed
 * half-way (Check runs each test in a child of the runner). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_config.h"
#include "ps_model.h"
#include "ps_npz.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "ps_version.h"
#include "psctl.h"
#include "psd_optim.h"
#include "psw_graph.h"
#include "psw_train.h"

#define PT_NSHARDS 2
typedef struct pt_ctx {
  char dir[512], yaml[600], log[600], out[600], err[600];
  int gp[PT_NSHARDS];
  pid_t pid[PT_NSHARDS];
  ps_rpc *rpc[PT_NSHARDS];
} pt_ctx;

/* pt_init makes a temp dir and a 2-shard cluster file in it. */
static void pt_init(pt_ctx *x) {
  memset(x, 0, sizeof *x);
  snprintf(x->dir, sizeof x->dir, "%s", ps_test_tmpdir());
  snprintf(x->log, sizeof x->log, "%s/psd.log", x->dir);
  snprintf(x->out, sizeof x->out, "%s/psctl.out", x->dir);
  snprintf(x->err, sizeof x->err, "%s/psctl.err", x->dir);
  snprintf(x->yaml, sizeof x->yaml, "%s",
           ps_test_cluster_yaml(x->dir, PT_NSHARDS, NULL, x->gp, NULL));
}

/* pt_start starts shard S, waits for its gRPC port and opens a client. */
static void pt_start(pt_ctx *x, int s) {
  char addr[64];
  x->pid[s] = ps_test_psd(x->yaml, s, x->log, NULL);
  ck_assert_msg(ps_test_wait_port(x->gp[s], 15000) == 0, "shard %d did not listen, see %s", s,
                x->log);
  ps_errbuf eb;
  snprintf(addr, sizeof addr, "127.0.0.1:%d", x->gp[s]);
  ck_assert_int_eq(ps_test_rpc_open(&x->rpc[s], addr, &eb), 0);
}

/* pt_kill SIGKILLs shard S and closes its client. */
static void pt_kill(pt_ctx *x, int s) {
  if (x->rpc[s]) ps_rpc_close(x->rpc[s]);
  x->rpc[s] = NULL;
  int st = ps_test_stop(x->pid[s], SIGKILL, 5000);
  ck_assert_msg(WIFSIGNALED(st), "shard %d: status %d after SIGKILL", s, st);
  x->pid[s] = 0;
}

/* pt_stop_all ends every running shard with SIGTERM and expects exit 0. */
static void pt_stop_all(pt_ctx *x) {
  for (int s = 0; s < PT_NSHARDS; s++) {
    if (x->rpc[s]) ps_rpc_close(x->rpc[s]);
    x->rpc[s] = NULL;
    if (x->pid[s] <= 0) continue;
    int st = ps_test_stop(x->pid[s], SIGTERM, 15000);
    x->pid[s] = 0;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "shard %d ended with status %d, see %s",
                  s, st, x->log);
  }
}

/* pt_cleanup removes X->dir (called on success only: a failed test leaves
 * its files, logs included, for a look). */
static void pt_cleanup(const pt_ctx *x) {
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", x->dir);
  ck_assert_int_eq(system(cmd), 0);
}

/* pt_run runs `PROG ARGS` (PROG: psd, psw or psctl; ARGS a printf format,
 * arguments quoted by the caller) with stdout to X->out and stderr to
 * X->err; its exit code, or -1 when it did not exit normally. */
static int pt_run(pt_ctx *x, const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int pt_run(pt_ctx *x, const char *prog, const char *fmt, ...) {
  char args[1500], cmd[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  /* PROG runs in X->dir; a relative PS_BIN is relative to the runner's. */
  const char *bin = ps_test_bin(prog);
  char cwd[1024] = "";
  if (bin[0] != '/') ck_assert(getcwd(cwd, sizeof cwd) != NULL);
  int n = snprintf(cmd, sizeof cmd, "cd '%s' && timeout 60 '%s%s%s' %s > '%s' 2> '%s'", x->dir,
                   cwd, *cwd ? "/" : "", bin, args, x->out, x->err);
  ck_assert(n > 0 && (size_t)n < sizeof cmd);
  int st = system(cmd);
  return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define pt_psctl(x, ...) pt_run(x, "psctl", __VA_ARGS__)

/* pt_contains checks that PATH's text contains NEEDLE. */
static int pt_contains(const char *path, const char *needle) {
  char *s = ps_test_read_file(path, NULL);
  int r = strstr(s, needle) != NULL;
  free(s);
  return r;
}

/* pt_count_prefix counts entries of DIR whose name starts with PREFIX. */
static int pt_count_prefix(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  ck_assert(d != NULL);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, prefix, strlen(prefix))) n++;
  closedir(d);
  return n;
}

/* pt_get_model returns shard S's spec of NAME (NULL when it has none);
 * free the reply *REP. */
static Ps__ModelSpec *pt_get_model(pt_ctx *x, int s, const char *name, Ps__GetModelReply **rep) {
  Ps__GetModelRequest req = PS__GET_MODEL_REQUEST__INIT;
  req.name = (char *)name;
  ps_errbuf eb = {""};
  *rep = NULL;
  int err = ps_rpc_call(x->rpc[s], "/ps.Ps/GetModel", &req.base, &ps__get_model_reply__descriptor,
                        (ProtobufCMessage **)rep, 10000, &eb);
  if (err == PS_ENOENT) return NULL;
  ck_assert_msg(err == 0, "GetModel '%s' on shard %d: %s", name, s, eb.msg);
  return (*rep)->model;
}

/* pt_status_nmodels returns how many models shard S reports in Status. */
static size_t pt_status_nmodels(pt_ctx *x, int s) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *st;
  ps_errbuf eb = {""};
  ck_assert_msg(ps_rpc_call(x->rpc[s], "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                            (ProtobufCMessage **)&st, 10000, &eb) == 0,
                "Status on shard %d: %s", s, eb.msg);
  size_t n = st->n_models;
  protobuf_c_message_free_unpacked(&st->base, NULL);
  return n;
}

/* pt_pull_all pulls every chunk of MODEL (layout L) from the shard that
 * holds it and returns the whole flat parameter vector (caller frees). */
static float *pt_pull_all(pt_ctx *x, const ps_layout *l, const char *model) {
  float *all = malloc(l->nparams * sizeof(float));
  ck_assert(all != NULL);
  uint64_t filled = 0;
  for (int s = 0; s < PT_NSHARDS; s++) {
    uint32_t *ids;
    uint64_t ne;
    long n = ps_layout_shard_chunks(l, (uint32_t)s, &ids, &ne);
    ck_assert_int_ge(n, 0);
    if (n == 0) {
      free(ids);
      continue;
    }
    Ps__PullRequest req = PS__PULL_REQUEST__INIT;
    req.model = (char *)model;
    req.chunk_ids = ids;
    req.n_chunk_ids = (size_t)n;
    Ps__PullReply *rep;
    ps_errbuf eb = {""};
    ck_assert_msg(ps_rpc_call(x->rpc[s], "/ps.Ps/Pull", &req.base, &ps__pull_reply__descriptor,
                              (ProtobufCMessage **)&rep, 10000, &eb) == 0,
                  "pull shard %d: %s", s, eb.msg);
    ck_assert_uint_eq(rep->values.len, ne * sizeof(float));
    const float *v = (const float *)rep->values.data;
    for (long k = 0; k < n; k++) {
      const ps_chunk *c = &l->chunks[ids[k]];
      ck_assert_uint_eq(c->shard, (uint32_t)s);
      memcpy(all + l->tensors[c->tensor].model_offset + c->offset, v, c->len * sizeof(float));
      v += c->len;
      filled += c->len;
    }
    protobuf_c_message_free_unpacked(&rep->base, NULL);
    free(ids);
  }
  ck_assert_uint_eq(filled, l->nparams);
  return all;
}

/* pt_push_all pushes one gradient to every chunk of MODEL: element i of
 * the model gets a non-zero value depending on i. */
static void pt_push_all(pt_ctx *x, const ps_layout *l, const char *model) {
  for (int s = 0; s < PT_NSHARDS; s++) {
    uint32_t *ids;
    uint64_t ne;
    long n = ps_layout_shard_chunks(l, (uint32_t)s, &ids, &ne);
    ck_assert_int_ge(n, 0);
    if (n == 0) {
      free(ids);
      continue;
    }
    float *g = malloc(ne * sizeof(float)), *p = g;
    ck_assert(g != NULL);
    for (long k = 0; k < n; k++) {
      const ps_chunk *c = &l->chunks[ids[k]];
      for (uint32_t e = 0; e < c->len; e++) {
        uint64_t i = l->tensors[c->tensor].model_offset + c->offset + e;
        *p++ = 0.01f * (float)((int)(i % 7) - 3) + 0.005f;
      }
    }
    Ps__PushRequest req = PS__PUSH_REQUEST__INIT;
    req.model = (char *)model;
    req.chunk_ids = ids;
    req.n_chunk_ids = (size_t)n;
    req.grads.data = (uint8_t *)g;
    req.grads.len = ne * sizeof(float);
    Ps__PushReply *rep;
    ps_errbuf eb = {""};
    ck_assert_msg(ps_rpc_call(x->rpc[s], "/ps.Ps/Push", &req.base, &ps__push_reply__descriptor,
                              (ProtobufCMessage **)&rep, 10000, &eb) == 0,
                  "push shard %d: %s", s, eb.msg);
    ck_assert_uint_eq(rep->version, 1);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
    free(g);
    free(ids);
  }
}

/* The tensors `psctl model mlp --layers 20,16,3` makes, in order. */
static const struct {
  const char *name;
  uint32_t ndim;
  uint64_t shape[2];
} pt_mlp[] = {{"W1", 2, {20, 16}}, {"b1", 1, {16}}, {"W2", 2, {16, 3}}, {"b2", 1, {3}}};
#define PT_MLP_PARAMS (20 * 16 + 16 + 16 * 3 + 3)

START_TEST(test_psctl_export) {
  pt_ctx x;
  pt_init(&x);
  for (int s = 0; s < PT_NSHARDS; s++) pt_start(&x, s);

  ck_assert_msg(pt_psctl(&x, "model mlp --layers 20,16,3 -o mlp.pb") == 0, "model mlp failed, see %s",
                x.err);
  /* --chunk-elems 100: W1 spans several chunks and its last one is short. */
  ck_assert_msg(pt_psctl(&x, "submit mlp.pb --name m --optimizer adam --lr 0.01 --chunk-elems 100 "
                             "--config '%s'", x.yaml) == 0, "submit failed, see %s", x.err);

  /* The layout every process computes: GetModel's spec, the config's ids. */
  Ps__GetModelReply *grep;
  Ps__ModelSpec *spec = pt_get_model(&x, 0, "m", &grep);
  ck_assert_msg(spec != NULL, "shard 0 has no model 'm' after submit");
  ck_assert_uint_eq(spec->n_tensors, 4);
  ck_assert_uint_eq(spec->chunk_elems, 100);
  ps_config cfg;
  ps_errbuf eb = {""};
  ck_assert_msg(ps_config_load(&cfg, x.yaml, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(cfg.nshards, PT_NSHARDS);
  uint32_t sids[PT_NSHARDS];
  ps_config_shard_ids(&cfg, sids);
  ps_layout l;
  ck_assert_msg(ps_layout_build(&l, spec, cfg.chunk_elems, sids, cfg.nshards, &eb) == 0, "%s",
                eb.msg);
  ps_config_release(&cfg);
  ck_assert_uint_eq(l.nparams, PT_MLP_PARAMS);
  ck_assert_uint_eq(l.ntensors, 4);
  ck_assert_uint_ge(l.tensors[0].nchunks, 2);
  for (int s = 0; s < PT_NSHARDS; s++) {
    uint32_t *ids;
    uint64_t ne;
    ck_assert_msg(ps_layout_shard_chunks(&l, (uint32_t)s, &ids, &ne) > 0,
                  "shard %d holds no chunk of the test model", s);
    free(ids);
  }

  /* One push to every chunk moves every parameter off its initial value. */
  float *init = pt_pull_all(&x, &l, "m");
  pt_push_all(&x, &l, "m");
  float *pulled = pt_pull_all(&x, &l, "m");
  for (uint64_t i = 0; i < l.nparams; i++)
    ck_assert_msg(memcmp(&init[i], &pulled[i], sizeof(float)) != 0,
                  "parameter %llu did not change after the push", (unsigned long long)i);
  free(init);

  /* Export, read back, compare bit for bit with names and shapes. */
  ck_assert_msg(pt_psctl(&x, "export --config '%s' --model m -o out.npz", x.yaml) == 0,
                "export failed, see %s", x.err);
  char path[700];
  snprintf(path, sizeof path, "%s/out.npz", x.dir);
  ps_npz z;
  ck_assert_msg(ps_npz_read(&z, path, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(z.n, 4);
  for (size_t t = 0; t < 4; t++) {
    const ps_npz_entry *e = &z.entries[t];
    ck_assert_str_eq(e->name, pt_mlp[t].name);
    ck_assert_str_eq(e->name, l.tensors[t].name);
    ck_assert_ptr_eq(ps_npz_find(&z, pt_mlp[t].name), e);
    ck_assert_uint_eq(e->ndim, pt_mlp[t].ndim);
    for (uint32_t d = 0; d < e->ndim; d++) ck_assert_uint_eq(e->shape[d], pt_mlp[t].shape[d]);
    ck_assert_uint_eq(e->nelems, l.tensors[t].nelems);
    ck_assert_msg(memcmp(e->data, pulled + l.tensors[t].model_offset,
                         e->nelems * sizeof(float)) == 0,
                  "tensor '%s' in the export differs from the pulled values", e->name);
  }
  ps_npz_release(&z);
  size_t good_len;
  char *good = ps_test_read_file(path, &good_len);

  /* -o a symlink to a file not made yet: the file it names is made, the
   * link stays (it used to be refused as "a link to nothing usable") */
  char lnk[700], made[700];
  snprintf(lnk, sizeof lnk, "%s/lnk.npz", x.dir);
  snprintf(made, sizeof made, "%s/made.npz", x.dir);
  ck_assert_int_eq(symlink("made.npz", lnk), 0);
  ck_assert_msg(pt_psctl(&x, "export --config '%s' --model m -o lnk.npz", x.yaml) == 0,
                "export through a dangling link failed, see %s", x.err);
  struct stat lst;
  ck_assert(lstat(lnk, &lst) == 0 && S_ISLNK(lst.st_mode));
  size_t made_len;
  char *madeb = ps_test_read_file(made, &made_len);
  ck_assert_msg(made_len == good_len && memcmp(madeb, good, good_len) == 0,
                "the export through the link differs");
  free(madeb);

  /* Unknown model: 1, nothing written. */
  ck_assert_int_eq(pt_psctl(&x, "export --config '%s' --model nosuch -o u.npz", x.yaml), 1);
  ck_assert_msg(pt_contains(x.err, "nosuch"), "the error does not name the model, see %s", x.err);
  ck_assert_int_eq(pt_count_prefix(x.dir, "u.npz"), 0);
  /* No --model: 2. */
  ck_assert_int_eq(pt_psctl(&x, "export --config '%s' -o u.npz", x.yaml), 2);
  ck_assert_int_eq(pt_count_prefix(x.dir, "u.npz"), 0);

  /* Shard 1 SIGKILLed: 1, no file written, an existing file left alone. */
  pt_kill(&x, 1);
  ck_assert_int_eq(pt_psctl(&x, "export --config '%s' --model m -o k.npz", x.yaml), 1);
  ck_assert_msg(pt_contains(x.err, "shard 1"), "the error does not name shard 1, see %s", x.err);
  ck_assert_int_eq(pt_count_prefix(x.dir, "k.npz"), 0);
  ck_assert_int_eq(pt_psctl(&x, "export --config '%s' --model m -o out.npz", x.yaml), 1);
  ck_assert_int_eq(pt_count_prefix(x.dir, "out.npz"), 1);
  size_t again_len;
  char *again = ps_test_read_file(path, &again_len);
  ck_assert_msg(again_len == good_len && memcmp(good, again, good_len) == 0,
                "a failed export changed the existing out.npz");
  free(again);
  free(good);

  protobuf_c_message_free_unpacked(&grep->base, NULL);
  ps_layout_release(&l);
  free(pulled);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

START_TEST(test_psctl_model_show) {
  pt_ctx x;
  memset(&x, 0, sizeof x);
  snprintf(x.dir, sizeof x.dir, "%s", ps_test_tmpdir());
  snprintf(x.out, sizeof x.out, "%s/psctl.out", x.dir);
  snprintf(x.err, sizeof x.err, "%s/psctl.err", x.dir);

  ck_assert_int_eq(pt_psctl(&x, "model mlp --layers 20,16,3 -o mlp.pb"), 0);
  ck_assert_msg(pt_psctl(&x, "model show mlp.pb") == 0, "show failed, see %s", x.err);
  ck_assert_msg(pt_contains(x.out, "387 parameters"), "show does not print the parameter count, see %s",
                x.out);
  ck_assert_msg(pt_contains(x.out, "W1") && pt_contains(x.out, "[20, 16]"),
                "show does not list W1 [20, 16], see %s", x.out);

  /* The first half of the good file: exit 2, the field named. */
  char path[700], half[700];
  snprintf(path, sizeof path, "%s/mlp.pb", x.dir);
  snprintf(half, sizeof half, "%s/half.pb", x.dir);
  size_t len;
  char *buf = ps_test_read_file(path, &len);
  ck_assert_uint_gt(len, 16);
  FILE *f = fopen(half, "wb");
  ck_assert(f != NULL);
  ck_assert_uint_eq(fwrite(buf, 1, len / 2, f), len / 2);
  ck_assert_int_eq(fclose(f), 0);
  free(buf);
  ck_assert_int_eq(pt_psctl(&x, "model show half.pb"), 2);
  ck_assert_msg(pt_contains(x.err, "field '"), "the error does not name a field, see %s", x.err);
  ck_assert_msg(pt_contains(x.err, "half.pb"), "the error does not name the file, see %s", x.err);

  /* logreg: a file that show accepts. */
  ck_assert_int_eq(pt_psctl(&x, "model logreg --inputs 784 --classes 10 -o lr.pb"), 0);
  ck_assert_msg(pt_psctl(&x, "model show lr.pb") == 0, "show lr.pb failed, see %s", x.err);
  ck_assert_msg(pt_contains(x.out, "7850 parameters"), "show lr.pb: wrong count, see %s", x.out);

  /* ctr: the click-through model; 429 x 256 + 256 + 256 x 128 + 128 + 128 + 1
   * dense parameters beside the embedding table. */
  ck_assert_int_eq(pt_psctl(&x, "model ctr --fields 26 --dim 16 --dense 13 --layers 256,128 -o ctr.pb"), 0);
  ck_assert_msg(pt_psctl(&x, "model show ctr.pb") == 0, "show ctr.pb failed, see %s", x.err);
  ck_assert_msg(pt_contains(x.out, "143105 parameters") && pt_contains(x.out, "emb          [*, 16]") &&
                    pt_contains(x.out, "embedding_lookup(ids, emb) -> e [-1, 416]") &&
                    pt_contains(x.out, "metric: auc") && pt_contains(x.out, "metric: logloss"),
                "show ctr.pb: not the ctr model, see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "model ctr --fields 26 --dim 16 --dense 13 --hash-buckets 1000 --pooling mean -o c2.pb"), 0);
  ck_assert_int_eq(pt_psctl(&x, "model show c2.pb"), 0);
  ck_assert_msg(pt_contains(x.out, "ids hashed into 1000 rows"), "show c2.pb, see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "model ctr --fields 26 --dense 13 -o c3.pb"), 2);
  ck_assert_msg(pt_contains(x.err, "--fields F, --dim D and --dense N are required"), "see %s", x.err);
  ck_assert_int_eq(pt_psctl(&x, "model ctr --fields 2 --dim 4 --dense 1 --pooling max -o c3.pb"), 2);
  ck_assert_msg(pt_contains(x.err, "unknown pooling 'max'"), "see %s", x.err);

  /* A graph named with a terminal's clear-screen and a newline: refused,
   * and nothing of it reaches the terminal raw (it was printed as
   * "graph 'g<ESC>[2J<LF>'") */
  uint32_t layers[] = {4, 3};
  uint8_t *pb;
  size_t pblen;
  ps_errbuf eb;
  ck_assert_int_eq(psw_graph_mlp_pack("g\x1b[2J\n", layers, 2, PS_GPU_ACT_RELU, &pb, &pblen, &eb), 0);
  snprintf(path, sizeof path, "%s/esc.pb", x.dir);
  f = fopen(path, "wb");
  ck_assert(f != NULL);
  ck_assert_uint_eq(fwrite(pb, 1, pblen, f), pblen);
  ck_assert_int_eq(fclose(f), 0);
  free(pb);
  ck_assert_int_eq(pt_psctl(&x, "model show esc.pb"), 2);
  ck_assert_msg(pt_contains(x.err, "esc.pb: graph name holds a control character (byte 1)"),
                "see %s", x.err);
  char *out = ps_test_read_file(x.out, NULL), *err = ps_test_read_file(x.err, NULL);
  ck_assert_msg(!strchr(out, 0x1b) && !strchr(err, 0x1b), "an ESC printed raw: %s%s", out, err);
  free(out);
  free(err);
  /* An empty file: said so */
  snprintf(path, sizeof path, "%s/empty.pb", x.dir);
  f = fopen(path, "wb");
  ck_assert(f != NULL);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(pt_psctl(&x, "model show empty.pb"), 2);
  ck_assert_msg(pt_contains(x.err, "empty.pb: the file is empty (0 bytes), not a graph"), "see %s",
                x.err);
  pt_cleanup(&x);
}
END_TEST

/* pt_lr returns the Adam lr shard S holds for model NAME. */
static float pt_lr(pt_ctx *x, int s, const char *name) {
  Ps__GetModelReply *rep;
  Ps__ModelSpec *spec = pt_get_model(x, s, name, &rep);
  ck_assert_msg(spec && spec->optimizer, "shard %d has no model '%s'", s, name);
  ck_assert_str_eq(spec->optimizer->kind, "adam");
  float lr = spec->optimizer->lr;
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return lr;
}

START_TEST(test_psctl_submit) {
  pt_ctx x;
  pt_init(&x);
  ck_assert_int_eq(pt_psctl(&x, "model logreg --inputs 784 --classes 10 -o lr.pb"), 0);

  /* Shard 1 down: 1, and shard 0 has no model afterwards. */
  pt_start(&x, 0);
  ck_assert_int_eq(pt_psctl(&x, "submit lr.pb --name m --optimizer adam --lr 0.01 --config '%s'",
                            x.yaml), 1);
  ck_assert_msg(pt_contains(x.err, "shard 1"), "the error does not name shard 1, see %s", x.err);
  ck_assert_uint_eq(pt_status_nmodels(&x, 0), 0);
  Ps__GetModelReply *rep;
  ck_assert_ptr_null(pt_get_model(&x, 0, "m", &rep));
  if (rep) protobuf_c_message_free_unpacked(&rep->base, NULL);

  /* Both up: the same file twice succeeds twice. */
  pt_start(&x, 1);
  for (int i = 0; i < 2; i++)
    ck_assert_msg(pt_psctl(&x, "submit lr.pb --name m --optimizer adam --lr 0.01 --config '%s'",
                           x.yaml) == 0, "submit #%d failed, see %s", i + 1, x.err);
  for (int s = 0; s < PT_NSHARDS; s++) {
    ck_assert_uint_eq(pt_status_nmodels(&x, s), 1);
    ck_assert_float_eq(pt_lr(&x, s, "m"), 0.01f);
  }

  /* Another lr under the same name: 1, --replace mentioned, nothing changed. */
  ck_assert_int_eq(pt_psctl(&x, "submit lr.pb --name m --optimizer adam --lr 0.02 --config '%s'",
                            x.yaml), 1);
  ck_assert_msg(pt_contains(x.err, "--replace"), "the error does not mention --replace, see %s", x.err);
  /* ... and no advice to run it again, which cannot help */
  ck_assert_msg(!pt_contains(x.err, "run the same command again"), "see %s", x.err);
  /* ... and no "is on shards []": both hold 'm', with the old settings
   * (it said "model 'm' with these settings is on shards [] and not on
   * shards [0, 1]") */
  ck_assert_msg(pt_contains(x.err, "psctl submit: no shard took model 'm' with these settings; "
                            "the refusals above say why") &&
                !pt_contains(x.err, "on shards []"), "see %s", x.err);
  for (int s = 0; s < PT_NSHARDS; s++) ck_assert_float_eq(pt_lr(&x, s, "m"), 0.01f);

  /* With --replace: 0 and the new lr on every shard. */
  ck_assert_msg(pt_psctl(&x, "submit lr.pb --name m --optimizer adam --lr 0.02 --replace "
                             "--config '%s'", x.yaml) == 0, "submit --replace failed, see %s", x.err);
  ck_assert_msg(pt_contains(x.out, "shard 0: replaced model 'm'"), "see %s", x.out);
  for (int s = 0; s < PT_NSHARDS; s++) {
    ck_assert_uint_eq(pt_status_nmodels(&x, s), 1);
    ck_assert_float_eq(pt_lr(&x, s, "m"), 0.02f);
  }

  /* topk keeping half a chunk or more sends no fewer bytes than fp32 (8
   * bytes per kept element): submitted, with a warning that says so (it
   * went through silently); under 0.5, or with topk unused, none */
  static const struct {
    const char *flags, *warn;
  } tk[] = {
      {"--codec topk --topk 0.5", "--topk 0.5 sends 1.00x the bytes of fp32"},
      {"--codec topk --topk 1", "--topk 1 sends 2.00x the bytes of fp32 (8 bytes per kept "
                                "element against 4 per element): fp32, which is exact, or a "
                                "fraction under 0.5 would send fewer"},
      {"--tensor-codec W1=topk --topk 0.75", "--topk 0.75 sends 1.50x the bytes of fp32"},
      {"--codec topk --topk 0.49", NULL},
      {"--codec int8 --topk 0.9", NULL},
  };
  for (size_t i = 0; i < sizeof tk / sizeof tk[0]; i++) {
    ck_assert_msg(pt_psctl(&x, "submit lr.pb --name m --optimizer adam --lr 0.02 --replace %s "
                               "--config '%s'", tk[i].flags, x.yaml) == 0,
                  "%s: failed, see %s", tk[i].flags, x.err);
    if (tk[i].warn)
      ck_assert_msg(pt_contains(x.err, tk[i].warn), "%s: no '%s' in %s", tk[i].flags,
                    tk[i].warn, x.err);
    else
      ck_assert_msg(!pt_contains(x.err, "the bytes of fp32"), "%s: see %s", tk[i].flags, x.err);
  }

  /* Codecs: bad values are refused before anything is sent (2); good
   * ones land in the model's spec on every shard. */
  static const char *const bad[][2] = {
      {"--codec fp8", "unknown codec 'fp8'"},
      {"--pull-codec onebit", "pull codec 'onebit' is not one of fp32, fp16, int8"},
      {"--topk 2", "topk"},
      {"--tensor-codec W9=int8", "no tensor 'W9'"},
      {"--tensor-codec W1=int4", "unknown tensor codec 'int4'"},
      {"--tensor-codec W1", "want NAME=CODEC"},
      {"--tensor-codec W1=", "want NAME=CODEC"},
      {"--tensor-codec W1=fp16 --tensor-codec W1=int8", "names tensor 'W1' twice"},
      {"--pull-codec abc", "pull codec 'abc' is not one of fp32, fp16, int8"},
      {"--codec ''", "--codec wants a codec name, got ''"},
      {"--pull-codec ''", "--pull-codec wants a codec name, got ''"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_int_eq(pt_psctl(&x, "submit lr.pb --name mc %s --config '%s'", bad[i][0], x.yaml), 2);
    ck_assert_msg(pt_contains(x.err, bad[i][1]), "%s: no '%s' in %s", bad[i][0], bad[i][1], x.err);
  }
  ck_assert_msg(pt_psctl(&x, "submit lr.pb --name mc --codec onebit --pull-codec int8 --topk 0.05 "
                             "--codec-warmup-steps 10 --codec-min-elems 5 --tensor-codec b1=fp16 "
                             "--config '%s'", x.yaml) == 0, "codec submit failed, see %s", x.err);
  /* --topk with no tensor pushed by topk: said, as psd -t says it of the file */
  ck_assert_msg(pt_contains(x.err, "--topk applies to topk pushes only"), "see %s", x.err);
  for (int s = 0; s < PT_NSHARDS; s++) {
    ck_assert_ptr_nonnull(pt_get_model(&x, s, "mc", &rep));
    const Ps__ModelSpec *sp = rep->model;
    ck_assert_str_eq(sp->codec, "onebit");
    ck_assert_str_eq(sp->pull_codec, "int8");
    ck_assert_float_eq(sp->topk, 0.05f);
    ck_assert_uint_eq(sp->codec_warmup_steps, 10);
    ck_assert_uint_eq(sp->codec_min_elems, 5);
    ck_assert_str_eq(sp->tensors[1]->codec, "fp16");
    protobuf_c_message_free_unpacked(&rep->base, NULL);
  }
  /* psctl status shows the tensor's own codec, in the table and in JSON */
  ck_assert_int_eq(pt_psctl(&x, "status --config '%s'", x.yaml), 0);
  ck_assert_msg(pt_contains(x.out, "(tensors: b1=fp16)"), "see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "status --json --config '%s'", x.yaml), 0);
  ck_assert_msg(pt_contains(x.out, "\"tensor_codecs\":{\"b1\":\"fp16\"}"), "see %s", x.out);

  /* A shard SIGKILLed: a new model goes nowhere. */
  pt_kill(&x, 1);
  /* its JSON row keeps the keys of a live one's (state_why), and "job"
   * is there, null, when the coordinator holds no partition table */
  ck_assert_int_eq(pt_psctl(&x, "status --json --config '%s'", x.yaml), 1);
  ck_assert_msg(pt_contains(x.out, "\"state\":\"DOWN\",\"state_why\":\"\",\"error\":") &&
                    pt_contains(x.out, "\"job\":"), "see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "submit lr.pb --name m2 --config '%s'", x.yaml), 1);
  ck_assert_uint_eq(pt_status_nmodels(&x, 0), 2);
  ck_assert_ptr_null(pt_get_model(&x, 0, "m2", &rep));
  if (rep) protobuf_c_message_free_unpacked(&rep->base, NULL);

  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* Bad command-line values of psd, psw and psctl: exit 2 with a message
 * naming the flag or the value, before any shard is asked (none runs). */
START_TEST(test_cli_bad_flags) {
  pt_ctx x;
  pt_init(&x);
  static const struct {
    const char *prog, *args; /* args: a printf format taking the cluster file */
    const char *want;
  } cases[] = {
      {"psd", "-t --config '%s' --shard ''",
       "--shard wants an integer in [0, 4294967295], got '': not an integer"},
      {"psd", "-t --config '%s' --shard ' 0'", "got ' 0': not an integer (decimal digits only)"},
      {"psd", "-t --config '%s' --shard -1", "got '-1': out of range"},
      /* why a value is refused, said by every integer and number flag of
       * the three programs as the cluster file says it (they said "bad
       * shard id '01'", "bad value", or "wants a number" for 1e400) */
      {"psd", "-t --config '%s' --shard 01",
       "psd: --shard wants an integer in [0, 4294967295], got '01': a leading zero (write 1)"},
      {"psd", "-t --config '%s' --shard 4294967296", "got '4294967296': out of range"},
      {"psd", "-t --config '%s' --shard 99999999999999999999", "out of range"},
      {"psw", "--config '%s' --model m --epochs 007",
       "psw: --epochs wants an integer in [1, 100000], got '007': a leading zero (write 7)"},
      {"psw", "--config '%s' --model m --rank 4096",
       "psw: --rank wants an integer in [0, 4095], got '4096': out of range"},
      {"psw", "--config '%s' --model m --slowdown 1e400",
       "psw: --slowdown wants a number in [1, 1000], got '1e400': out of range (beyond a double)"},
      {"psw", "--config '%s' --model m --slowdown 02",
       "--slowdown wants a number in [1, 1000], got '02': a leading zero"},
      {"psctl", "submit m.pb --name m --topk 1e400 --config '%s'",
       "--topk wants a number in [1e-06, 1], got '1e400': out of range (beyond a double)"},
      {"psctl", "submit m.pb --name m --lr 1e400 --config '%s'",
       "--lr wants a number, got '1e400': out of range (beyond a double)"},
      {"psctl", "submit m.pb --name m --lr 00.5 --config '%s'",
       "--lr wants a number, got '00.5': a leading zero"},
      {"psctl", "submit m.pb --name m --seed 012 --config '%s'",
       "--seed wants an integer in [0, 18446744073709551615], got '012': a leading zero (write 12)"},
      {"psctl", "status --config '%s' --timeout 0100", "got '0100': a leading zero (write 100)"},
      {"psctl", "model mlp --layers 784,0256,10 -o x.pb",
       "--layers item 2 wants an integer in [1, 16777216], got '0256': a leading zero (write 256)"},
      {"psctl", "model mlp --layers 784,0,10 -o x.pb",
       "--layers item 2 wants an integer in [1, 16777216], got '0': out of range"},
      {"psctl", "model ctr --fields 2 --dim 4 --dense 3 --layers 16,x -o x.pb",
       "--layers item 2 wants an integer in [1, 16777216], got 'x': not an integer"},
      {"psd", "-t --config '%s' --shard", "requires an argument"},
      {"psd", "-t --config '%s' --bogus", "unrecognized option '--bogus'"},
      {"psd", "-t --config '%s' --shard 0 --shard 1", "--shard given twice"},
      {"psd", "-t --config '%s' --shard 0 --rename-cluster 'a b'",
       "psd: --rename-cluster wants the old cluster name (1-63 letters, digits, '.', '_', '-')"},
      {"psd", "-t --config '%s' --shard 0 --rename-cluster a --rename-cluster b",
       "psd: --rename-cluster given twice"},
      {"psd", "-t --config '%s' --rename-cluster a", "psd: --rename-cluster needs --shard N"},
      {"psd", "-t --config= --shard 0", "--config wants a file"},
      {"psw", "--config '%s' --model 'a b'", "bad model name 'a b'"},
      {"psw", "--config '%s' --model ''", "bad model name ''"},
      {"psw", "--config '%s' --model m --epochs x", "--epochs wants an integer in [1, 100000], got 'x': not an integer"},
      {"psw", "--config '%s' --model m --batch -1", "--batch wants an integer in [1, 1048576], got '-1': out of range"},
      {"psw", "--config '%s' --model m --epochs ' 2'", "--epochs wants an integer in [1, 100000], got ' 2'"},
      /* the range said is the one taken (it said [0, ...], then refused
       * 0 with "--batch must be at least 1") */
      {"psw", "--config '%s' --model m --batch 0", "psw: --batch wants an integer in [1, 1048576], got '0': out of range"},
      {"psw", "--config '%s' --model m --epochs 0", "psw: --epochs wants an integer in [1, 100000], got '0': out of range"},
      {"psw", "--config '%s' --model m --blas-threads 0", "psw: --blas-threads wants an integer in [1, 256], got '0': out of range"},
      {"psw", "--config '%s' --model m --rank 0 --workers 0", "psw: --workers wants an integer in [1, 4096], got '0': out of range"},
      /* no --workers: the count is the file's, and the message says so
       * (it said "--rank must be below --workers") */
      {"psw", "--config '%s' --model m --rank 7",
       "psw: --rank 7 must be below the worker count 1 (workers.count: give --workers)"},
      {"psw", "--config '%s' --model m --rank 7 --workers 7", "psw: --rank 7 must be below the worker count 7 (--workers)"},
      {"psw", "--config '%s' --model m --slowdown 0x2", "--slowdown wants a number in [1, 1000], got '0x2': not a number"},
      {"psw", "--config '%s' --model m --slowdown 0.5", "--slowdown wants a number in [1, 1000], got '0.5': out of range"},
      {"psw", "--config '%s' --model m --blas-threads", "requires an argument"},
      {"psw", "--config '%s' --model m --metrics-csv /nonexistent/m.csv",
       "--metrics-csv '/nonexistent/m.csv': No such file or directory"},
      {"psctl", "export --config '%s' --model '' -o m.npz", "bad model name ''"},
      {"psctl", "export --config '%s' --model m -o m.npz --timeout-ms 0", "--timeout-ms wants"},
      {"psctl", "export --config '%s' --model m -o /dev/null",
       "-o '/dev/null' is not a regular file"},
      {"psctl", "export --config '%s' --model m -o ''", "-o names no file (an empty path)"},
      {"psctl", "status --config '%s' --timeout x", "--timeout wants an integer"},
      {"psctl", "status --config '%s' extra", "unexpected argument 'extra'"},
      {"psctl", "status --config '%s' --interval 99", "--interval wants an integer in [100, 600000]"},
      {"psctl", "status --config '%s' --interval 600001",
       "--interval wants an integer in [100, 600000], got '600001'"},
      {"psctl", "bench --config '%s' --rounds -3", "--rounds wants an integer"},
      {"psctl", "bench --config '%s' --model-mib 0", "--model-mib wants a size above 0"},
      {"psctl", "bench --config '%s' --request-mib 0", "--request-mib wants at least 0.001 MiB"},
      {"psctl", "bench --config '%s' --request-mib 0x10", "--request-mib wants a number >= 0, got '0x10': not a number"},
      {"psctl", "bench --config '%s' --sockbuf 4096", "--sockbuf wants 0"},
      {"psctl", "bench --config '%s' --request-mib 300", "is above limits.max_request_bytes"},
      {"psctl", "model show /dev/zero", "/dev/zero: more than 64 MiB: not a graph"},
      {"psctl", "model mlp --layers +784,10 -o x.pb", "--layers item 1 wants an integer in [1, 16777216], got '+784'"},
      {"psctl", "model mlp --layers 784 -o x.pb", "--layers wants 2 to 64 positive widths"},
      {"psctl", "model mlp --layers 784,10, -o x.pb", "--layers wants 2 to 64 positive widths"},
      {"psctl", "model mlp --layers 784,10 --name 'a b' -o x.pb", "--name: bad model name 'a b'"},
      {"psctl", "submit m.pb --name m --lr inf --config '%s'", "--lr wants a number, got 'inf': not a number"},
      {"psctl", "submit m.pb --name m --codec '' --config '%s'", "--codec wants a codec name"},
      {"psctl", "submit m.pb --name m --chunk-elems 67108865 --config '%s'",
       "--chunk-elems wants an integer in [0, 67108864]"},
      {"psctl", "submit m.pb --name m --beta1 0.5 --config '%s'",
       "--beta1 does not apply to --optimizer sgd (used by adam)"},
      {"psctl", "submit m.pb --name m --optimizer adam --momentum 0.5 --config '%s'",
       "--momentum does not apply to --optimizer adam (used by momentum nesterov)"},
      {"psctl", "submit m.pb --name m --optimizer momentum --eps 1e-6 --config '%s'",
       "--eps does not apply to --optimizer momentum (used by adam adagrad)"},
      /* a 0 reaches the shards as unset: they ran momentum 0.9, beta1 0.9, eps 1e-8 */
      {"psctl", "submit m.pb --name m --optimizer nesterov --momentum 0 --config '%s'",
       "--momentum 0 (or a value that rounds to 0 as a float) is not possible: the shards read "
       "a 0 as unset and would use the default 0.9"},
      {"psctl", "submit m.pb --name m --optimizer adam --beta1 0 --config '%s'",
       "--beta1 0 (or a value that rounds to 0 as a float) is not possible"},
      {"psctl", "submit m.pb --name m --optimizer adagrad --eps 1e-60 --config '%s'",
       "--eps 0 (or a value that rounds to 0 as a float) is not possible"},
      {"psctl", "submit m.pb --name m --lr-decay 1.5 --lr-decay-steps 10 --config '%s'",
       "--lr-decay wants GAMMA with 0 < GAMMA < 1, got 1.5"},
      {"psctl", "submit m.pb --name m --lr-decay-steps 5 --config '%s'",
       "--lr-decay-steps needs --lr-decay GAMMA"},
      {"psctl", "submit m.pb --name m --lr-decay 0 --lr-decay-steps 5 --config '%s'",
       "--lr-decay wants GAMMA with 0 < GAMMA < 1, got 0"},
      /* the flags by name, as above (it said "optimizer lr_decay needs
       * lr_decay_steps > 0", after reading the graph file) */
      {"psctl", "submit m.pb --name m --lr-decay 0.9 --config '%s'",
       "--lr-decay GAMMA needs --lr-decay-steps N"},
      {"psctl", "submit m.pb --name m --lr-decay 0.9 --lr-decay-steps 0 --config '%s'",
       "--lr-decay-steps wants N > 0, got 0"},
      /* the value out of range named (it said both flags "are required") */
      {"psctl", "model logreg --inputs 784 --classes 1 -o x.pb",
       "--classes wants an integer in [2, 16777216], got '1'"},
      {"psctl", "model logreg --inputs 0 --classes 10 -o x.pb",
       "--inputs wants an integer in [1, 16777216], got '0'"},
      {"psctl", "model logreg --classes 10 -o x.pb", "--inputs N is required"},
      {"psctl", "model logreg --inputs 784 -o x.pb", "--classes K is required"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char args[1200];
    snprintf(args, sizeof args, cases[i].args, x.yaml);
    int rc = pt_run(&x, cases[i].prog, "%s", args);
    ck_assert_msg(rc == 2, "%s %s: exit %d, not 2, see %s", cases[i].prog, args, rc, x.err);
    ck_assert_msg(pt_contains(x.err, cases[i].want), "%s %s: no \"%s\" in %s", cases[i].prog, args,
                  cases[i].want, x.err);
  }
  /* --tensor-codec naming the embedding table, which 'psctl model show'
   * lists: it is said to be one, with the codecs its rows travel in (it
   * said "the model has no tensor 'emb'") */
  ck_assert_int_eq(pt_psctl(&x, "model ctr --fields 2 --dim 4 --dense 3 -o ctr.pb"), 0);
  static const struct {
    const char *flags, *want;
  } emb[] = {
      {"", "--tensor-codec: 'emb' is an embedding table (sparse), not a dense tensor: its rows "
           "travel in the model's codecs, pushed as fp32 (--codec fp32) and pulled as fp32 "
           "(--pull-codec); --tensor-codec does not apply to them: set --codec and --pull-codec"},
      {"--codec onebit --pull-codec int8",
       "pushed as int8 (--codec onebit: onebit and topk push rows as int8) and pulled as int8"},
      {"--codec fp16", "pushed as fp16 (--codec fp16) and pulled as fp32"},
  };
  for (size_t i = 0; i < sizeof emb / sizeof emb[0]; i++) {
    ck_assert_int_eq(pt_psctl(&x, "submit ctr.pb --name c %s --tensor-codec emb=int8 --config '%s'",
                              emb[i].flags, x.yaml), 2);
    ck_assert_msg(pt_contains(x.err, emb[i].want), "%s: no '%s' in %s", emb[i].flags,
                  emb[i].want, x.err);
  }
  ck_assert_int_eq(pt_psctl(&x, "submit ctr.pb --name c --tensor-codec W9=int8 --config '%s'",
                            x.yaml), 2);
  ck_assert_msg(pt_contains(x.err, "the model has no tensor 'W9'"), "see %s", x.err);
  pt_cleanup(&x);
}
END_TEST

/* pt_config_warned runs PROG (in X's dir) with ARGS and '--config FILE'
 * for a cluster file whose 'limit' is below its 'partitions', checks
 * its exit status is WANT_RC and that its stderr carries the file's
 * warning. */
static void pt_config_warned(pt_ctx *x, const char *prog, const char *args, int want_rc) {
  char yaml[700];
  snprintf(yaml, sizeof yaml, "%s/warn.yaml", x->dir);
  ps_test_write_file(yaml, "cluster: w\nsecurity: {mode: none}\nshards:\n"
                           "  - {id: 0, grpc: 127.0.0.1:1, channel: 127.0.0.1:2, data_dir: /x}\n"
                           "data:\n  limit: 1\n  partitions: 16\n");
  ck_assert_int_eq(pt_run(x, prog, "%s --config '%s'", args, yaml), want_rc);
  char want[800];
  snprintf(want, sizeof want, "%s:6:10: warning: 'limit' (1) is below 'partitions' (16): 15 "
           "partitions hold no sample", yaml);
  ck_assert_msg(pt_contains(x->err, want), "no \"%s\" in %s", want, x->err);
}

/* The cluster file's warnings reach psw's stderr, as psd's: psw said
 * none, so a 'limit' below 'partitions' (README: "it warns") left
 * partitions of no sample unsaid to the one who runs the worker. */
START_TEST(test_psw_config_warnings) {
  pt_ctx x;
  pt_init(&x);
  pt_config_warned(&x, "psw", "--model m --metrics-csv /nonexistent/m.csv", 2);
  pt_cleanup(&x);
}
END_TEST

/* psctl prints the cluster file's warnings on stderr too, as psd and
 * psw do (it printed none), and its --json stdout stays one JSON
 * document. */
START_TEST(test_psctl_config_warnings) {
  pt_ctx x;
  pt_init(&x);
  /* exit 1: the file's one shard is DOWN */
  pt_config_warned(&x, "psctl", "status --json --interval 100 --timeout 500", 1);
  char *out = ps_test_read_file(x.out, NULL);
  ck_assert_msg(out[0] == '{' && !strstr(out, "warning"), "stdout: %s", out);
  free(out);
  pt_cleanup(&x);
}
END_TEST

/* A psctl usage error says what was wrong in one line and where the
 * help is, "see 'psctl CMD --help'": it was followed by the command's
 * whole usage text (30 lines for submit), which buried the error. */
START_TEST(test_cli_usage_error_short) {
  pt_ctx x;
  pt_init(&x);
  static const struct {
    const char *args, *want, *see;
  } cases[] = {
      {"submit m.pb --name m --optimizer adam --momentum 0.5",
       "--momentum does not apply to --optimizer adam", "psctl submit --help"},
      {"submit --name m", "one graph FILE is required", "psctl submit --help"},
      {"submit m.pb", "--name NAME is required", "psctl submit --help"},
      {"submit m.pb --name m --no-such-flag", "no-such-flag", "psctl submit --help"},
      {"status extra", "unexpected argument 'extra'", "psctl status --help"},
      {"status --no-such-flag", "no-such-flag", "psctl status --help"},
      {"export --model m", "-o FILE is required", "psctl export --help"},
      {"export --no-such-flag", "no-such-flag", "psctl export --help"},
      {"bench extra", "unexpected argument", "psctl bench --help"},
      {"bench --no-such-flag", "no-such-flag", "psctl bench --help"},
      {"model mlp --layers 4,2", "-o FILE is required", "psctl model --help"},
      {"model mlp --no-such-flag", "no-such-flag", "psctl model --help"},
      {"model", "psctl model: ", "psctl model --help"},
      {"model nosuch", "unknown kind 'nosuch'", "psctl model --help"},
      {"model show", "psctl model show: ", "psctl model --help"},
      {"nosuch", "unknown command 'nosuch'", "psctl --help"},
      {"", "psctl: ", "psctl --help"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int rc = pt_run(&x, "psctl", "%s", cases[i].args);
    char *err = ps_test_read_file(x.err, NULL);
    int lines = 0;
    for (const char *p = err; *p; p++) lines += *p == '\n';
    char see[96];
    snprintf(see, sizeof see, "see '%s'", cases[i].see);
    ck_assert_msg(rc == 2, "psctl %s: exit %d, not 2: %s", cases[i].args, rc, err);
    ck_assert_msg(strstr(err, cases[i].want) && strstr(err, see) && !strstr(err, "usage:") &&
                      lines <= 3,
                  "psctl %s: want \"%s\" and \"%s\" in a few lines, no usage text; got:\n%s",
                  cases[i].args, cases[i].want, see, err);
    free(err);
  }
  pt_cleanup(&x);
}
END_TEST

/* pt_help_names says whether HELP names the short option -L: "-L"
 * standing alone ("-o FILE", "-t|--test", "(-c)"), not inside a word or a
 * long option. */
static int pt_help_names(const char *help, char l) {
  for (const char *p = help; (p = strchr(p, '-')); p++) {
    char prev = p > help ? p[-1] : ' ', next = p[2];
    if (p[1] == l && !isalnum((unsigned char)prev) && prev != '-' &&
        !isalnum((unsigned char)next) && next != '-')
      return 1;
  }
  return 0;
}

/* Every short option psd, psw and each psctl command accepts is in its
 * --help: `psctl status -c FILE` worked as --config FILE without a word
 * of it, and psw took 16 letters its help never named.  Each letter is
 * tried before a flag that does not exist: getopt either refuses the
 * letter ("invalid option -- 'L'") or takes it (its argument, if any,
 * is the bogus flag) and then the command exits 2 on bad usage or
 * configuration, doing nothing. */
START_TEST(test_cli_short_options) {
  pt_ctx x;
  pt_init(&x);
  static const char *const cmds[][2] = {{"psd", ""},           {"psw", ""},
                                        {"psctl", "status"},   {"psctl", "submit"},
                                        {"psctl", "export"},   {"psctl", "bench"},
                                        {"psctl", "model mlp"}};
  const char *bin_dir = ps_test_bin("psctl");
  char cwd[1024] = "";
  if (bin_dir[0] != '/') ck_assert(getcwd(cwd, sizeof cwd) != NULL);
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    const char *bin = ps_test_bin(cmds[i][0]);
    char cmd[4096], accepted[700];
    snprintf(accepted, sizeof accepted, "%s/accepted.txt", x.dir);
    int n = snprintf(cmd, sizeof cmd,
                     "cd '%s' && for l in {a..z} {A..Z}; do timeout 20 '%s%s%s' %s -$l "
                     "--no-such-flag-zz < /dev/null 2>&1 | grep -q \"invalid option -- '$l'\" "
                     "|| printf %%s $l; done > '%s'",
                     x.dir, cwd, *cwd ? "/" : "", bin, cmds[i][1], accepted);
    ck_assert(n > 0 && (size_t)n < sizeof cmd);
    char *shell[] = {"/bin/bash", "-c", cmd, NULL};
    ck_assert_int_eq(ps_test_run(shell, x.log, 120000), 0);
    char *letters = ps_test_read_file(accepted, NULL);
    ck_assert_int_eq(pt_run(&x, cmds[i][0], "%s --help", cmds[i][1]), 0);
    char *help = ps_test_read_file(x.out, NULL);
    ck_assert_msg(strchr(letters, 'h'), "%s %s: -h refused (accepted: '%s')", cmds[i][0],
                  cmds[i][1], letters);
    for (const char *l = letters; *l; l++)
      ck_assert_msg(pt_help_names(help, *l), "%s %s takes -%c, which its --help does not name:\n%s",
                    cmds[i][0], cmds[i][1], *l, help);
    free(help);
    free(letters);
  }
  pt_cleanup(&x);
}
END_TEST

/* psd -t: group_commit_* keys set under mode periodic (which ignores
 * them) pass with a warning saying so and where; under sync, or absent,
 * no warning. */
START_TEST(test_psd_t_group_commit_periodic) {
  pt_ctx x;
  pt_init(&x);
  static const struct {
    const char *mode, *keys;
    int warn;
  } cases[] = {
      {"periodic", "  group_commit_max_wait_us: 100\n", 1},
      {"periodic", "  group_commit_max_bytes: 65536\n", 1},
      {"sync", "  group_commit_max_wait_us: 100\n", 0},
      {"periodic", "  group_commit_max_wait_us: 0\n", 1}, /* (set, even to the default) */
      {"periodic", "", 0},
  };
  char yaml[1200];
  snprintf(yaml, sizeof yaml, "%s/gc.yaml", x.dir);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[1200];
    snprintf(text, sizeof text,
             "cluster: gc\nsecurity:\n  mode: none\ndurability:\n  mode: %s\n%sshards:\n"
             "  - id: 0\n"
             "    grpc: 127.0.0.1:1\n    channel: 127.0.0.1:2\n    data_dir: %s/d0\n",
             cases[i].mode, cases[i].keys, x.dir);
    ps_test_write_file(yaml, text);
    int rc = pt_run(&x, "psd", "-t --config '%s'", yaml);
    ck_assert_msg(rc == 0, "case %zu: exit %d, see %s", i, rc, x.err);
    ck_assert_msg(pt_contains(x.err, "gc.yaml:6:") == cases[i].warn &&
                      pt_contains(x.err, "applies under durability mode sync only") == cases[i].warn,
                  "case %zu: warning %s, see %s", i, cases[i].warn ? "missing" : "wrong", x.err);
  }
  pt_cleanup(&x);
}
END_TEST

/* limits.max_shard_bytes: a model over a shard's budget is refused at
 * submit, the error naming the model and the budget; nothing registered. */
START_TEST(test_psctl_submit_budget) {
  pt_ctx x;
  memset(&x, 0, sizeof x);
  snprintf(x.dir, sizeof x.dir, "%s", ps_test_tmpdir());
  snprintf(x.log, sizeof x.log, "%s/psd.log", x.dir);
  snprintf(x.out, sizeof x.out, "%s/psctl.out", x.dir);
  snprintf(x.err, sizeof x.err, "%s/psctl.err", x.dir);
  snprintf(x.yaml, sizeof x.yaml, "%s",
           ps_test_cluster_yaml(x.dir, PT_NSHARDS, "limits:\n  max_shard_bytes: 400\n", x.gp,
                                NULL));
  /* 7850 parameters with Adam: 92 KiB over 2 shards; the smaller share
   * (a few of its 9 chunks) still takes over 400 bytes. */
  ck_assert_int_eq(pt_psctl(&x, "model logreg --inputs 784 --classes 10 -o lr.pb"), 0);
  pt_start(&x, 0);
  pt_start(&x, 1);
  ck_assert_int_eq(pt_psctl(&x, "submit lr.pb --name big --optimizer adam --config '%s'", x.yaml),
                   1);
  ck_assert_msg(pt_contains(x.err, "model 'big' needs ") &&
                    pt_contains(x.err, "over its budget of 400 bytes (limits.max_shard_bytes)"),
                "the error does not name the model and the budget, see %s", x.err);
  for (int s = 0; s < PT_NSHARDS; s++) ck_assert_uint_eq(pt_status_nmodels(&x, s), 0);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* pt_json_num: the number after "KEY": in PATH's text, or -1 when absent. */
static double pt_json_num(const char *path, const char *key) {
  char *s = ps_test_read_file(path, NULL), pat[96];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(s, pat);
  double v = p ? strtod(p + strlen(pat), NULL) : -1;
  free(s);
  return v;
}

/* psctl bench against two shards: every transfer kind has its median
 * round and its rate over all rounds (JSON), and the table shows both;
 * --json names the cluster's security, "none" included. */
START_TEST(test_psctl_bench) {
  pt_ctx x;
  pt_init(&x);
  pt_start(&x, 0);
  pt_start(&x, 1);
  ck_assert_int_eq(pt_psctl(&x, "bench --config '%s' --json --model-mib 1 --request-mib 0.25 "
                                "--rounds 3 --small-secs 0.2", x.yaml), 0);
  static const char *const kinds[] = {"channel_push_mbps", "channel_pull_mbps", "grpc_push_mbps",
                                      "grpc_pull_mbps"};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    char all[64];
    snprintf(all, sizeof all, "%s_overall", kinds[k]);
    double med = pt_json_num(x.out, kinds[k]), ov = pt_json_num(x.out, all);
    ck_assert_msg(med > 0 && ov > 0, "%s: %g, overall %g, see %s", kinds[k], med, ov, x.out);
  }
  ck_assert_msg(pt_json_num(x.out, "small_push_per_sec") > 0, "no small pushes, see %s", x.out);
  /* named always, as psctl status --json names it: "none" too */
  ck_assert_msg(pt_contains(x.out, "\"security\":\""), "no security key, see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "bench --config '%s' --model-mib 1 --rounds 1 --small-secs 0 "
                                "--skip-grpc", x.yaml), 0);
  ck_assert_msg(pt_contains(x.out, "overall MB/s") && !pt_contains(x.out, "grpc"),
                "the table lacks the overall column or runs gRPC, see %s", x.out);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* pt_prog_to runs `PROG ARGS` in X->dir with stdout redirected as REDIR
 * ("> /dev/full", ">&-") and stderr to X->err; its exit code, -1 when it
 * did not exit normally.  pt_psctl_to: PROG psctl. */
static int pt_prog_to(pt_ctx *x, const char *prog, const char *redir, const char *args) {
  char cmd[4096], cwd[1024] = "";
  const char *bin = ps_test_bin(prog);
  if (bin[0] != '/') ck_assert(getcwd(cwd, sizeof cwd) != NULL);
  snprintf(cmd, sizeof cmd, "cd '%s' && timeout 60 '%s%s%s' %s %s 2> '%s'", x->dir, cwd,
           *cwd ? "/" : "", bin, args, redir, x->err);
  int st = system(cmd);
  return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
#define pt_psctl_to(x, redir, args) pt_prog_to(x, "psctl", redir, args)

/* psd -t's "configuration ok" that cannot be written: exit 1 and a line on
 * stderr, as psw and psctl do (it exited 0, so `psd -t > f && use f` took
 * a file without the line for a checked one). */
START_TEST(test_psd_t_output_errors) {
  pt_ctx x;
  pt_init(&x);
  char args[700];
  snprintf(args, sizeof args, "-t --config '%s'", x.yaml);
  ck_assert_msg(pt_prog_to(&x, "psd", "> /dev/null", args) == 0, "psd %s failed, see %s", args,
                x.err);
  const char *redirs[] = {"> /dev/full", ">&-"};
  for (size_t r = 0; r < 2; r++) {
    int rc = pt_prog_to(&x, "psd", redirs[r], args);
    ck_assert_msg(rc == 1, "psd %s %s: exit %d, want 1", args, redirs[r], rc);
    ck_assert_msg(pt_contains(x.err, "psd: the result line could not be written to stdout: "),
                  "psd %s %s does not say why, see %s", args, redirs[r], x.err);
  }
  /* --help likewise, psw's too */
  ck_assert_int_eq(pt_prog_to(&x, "psd", "> /dev/full", "--help"), 1);
  ck_assert_msg(pt_contains(x.err, "psd: its output could not be written to stdout: "), "see %s",
                x.err);
  ck_assert_int_eq(pt_prog_to(&x, "psw", ">&-", "--help"), 1);
  ck_assert_msg(pt_contains(x.err, "psw: the output could not be written to stdout: "), "see %s",
                x.err);
  ck_assert_int_eq(pt_prog_to(&x, "psw", "> /dev/null", "--help"), 0);
  /* a bad file keeps its own exit code */
  ck_assert_int_eq(pt_prog_to(&x, "psd", "> /dev/full", "-t --config /nonexistent.yaml"), 2);
  pt_cleanup(&x);
}
END_TEST

/* psctl's output that cannot be written (stdout on a full disk, or
 * closed): exit 1 and a line on stderr, as psw does; it exited 0, and a
 * script reading `psctl status --json > f` took an empty f for an answer. */
START_TEST(test_psctl_output_errors) {
  pt_ctx x;
  pt_init(&x);
  for (int s = 0; s < PT_NSHARDS; s++) pt_start(&x, s);
  ck_assert_int_eq(pt_psctl(&x, "model mlp --layers 20,16,3 -o mlp.pb"), 0);
  char status[700], json[720];
  snprintf(status, sizeof status, "status --config '%s'", x.yaml);
  snprintf(json, sizeof json, "status --config '%s' --json", x.yaml);
  const char *cmds[] = {status, json, "model show mlp.pb", "--help"};
  const char *redirs[] = {"> /dev/full", ">&-"};
  for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
    ck_assert_msg(pt_psctl_to(&x, "> /dev/null", cmds[c]) == 0, "psctl %s failed, see %s",
                  cmds[c], x.err);
    for (size_t r = 0; r < 2; r++) {
      int rc = pt_psctl_to(&x, redirs[r], cmds[c]);
      ck_assert_msg(rc == 1, "psctl %s %s: exit %d, want 1", cmds[c], redirs[r], rc);
      ck_assert_msg(pt_contains(x.err, "psctl: the output could not be written to stdout: "),
                    "psctl %s %s does not say why, see %s", cmds[c], redirs[r], x.err);
    }
  }
  /* a command that failed keeps its own exit code */
  ck_assert_int_eq(pt_psctl_to(&x, "> /dev/full", "model show"), 2);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* psctl status and aggregators: the exit status counts them (README: exit
 * 1 if any is not SERVING; a dead aggregator's workers fail over, and a
 * monitoring script must see it): with the file's aggregator not running
 * its row says DOWN and psctl exits 1 (it used to exit 0); started, the
 * row says SERVING and psctl exits 0, and --json gives its build (the one
 * this test was built from, as psd was). */
START_TEST(test_psctl_status_aggregator) {
  char dir[512], log[700], out[700], extra[512];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  snprintf(out, sizeof out, "%s/status.out", dir);
  snprintf(log, sizeof log, "%s/agg.log", dir);
  int agp = ps_test_free_port(), acp;
  do acp = ps_test_free_port();
  while (acp == agp);
  snprintf(extra, sizeof extra,
           "aggregators:\n  - {name: a0, grpc: \"127.0.0.1:%d\", channel: \"127.0.0.1:%d\", "
           "workers: 1}\n", agp, acp);
  int gp[1], cp[1];
  pid_t shard[1];
  const char *yaml = ps_test_cluster_yaml(dir, 1, extra, gp, cp);
  char y[600];
  snprintf(y, sizeof y, "%s", yaml);
  ps_test_start_shards(y, dir, 1, gp, cp, shard);
  char *argv[] = {(char *)ps_test_bin("psctl"), "status", "--config", y, "--interval", "100",
                  NULL};
  ck_assert_int_eq(ps_test_run(argv, out, 20000), 1);
  char *text = ps_test_read_file(out, NULL);
  ck_assert_msg(strstr(text, "aggregators:") && strstr(text, "DOWN"), "%s", text);
  free(text);
  char *agg[] = {(char *)ps_test_bin("psd"), "--config", y, "--aggregator", "a0", NULL};
  pid_t a = ps_test_spawn(agg, log, NULL);
  ck_assert_msg(ps_test_wait_port(agp, 10000) == 0, "aggregator not up; see %s", log);
  int rc = ps_test_run(argv, out, 20000);
  text = ps_test_read_file(out, NULL);
  ck_assert_msg(rc == 0 && strstr(text, "SERVING"), "exit %d: %s", rc, text);
  free(text);
  char jout[720], want[300];
  snprintf(jout, sizeof jout, "%s/status.json", dir);
  char *jargv[] = {argv[0], "status", "--json", "--config", y, "--interval", "100", NULL};
  rc = ps_test_run(jargv, jout, 20000);
  text = ps_test_read_file(jout, NULL);
  snprintf(want, sizeof want, "\"build\":\"%s\"", ps_version());
  const char *ag = strstr(text, "\"aggregators\":[{\"name\":\"a0\"");
  ck_assert_msg(rc == 0 && ag && strstr(ag, want), "exit %d, no %s for a0: %s", rc, want, text);
  free(text);
  ps_test_stop(a, SIGTERM, 10000);
  ps_test_stop(shard[0], SIGTERM, 10000);
}
END_TEST

/* psd, psw and psctl --version: exit 0 and print "NAME BUILD", one build
 * for the three (one make), each --help naming --version; a live shard's
 * Status carries its build: psctl status --json gives it as the shard's
 * "build", equal to psd --version's, and null for a shard that did not
 * answer; the text adds no build line when every shard runs psctl's
 * build.  (README dates its compatibility notes by build: before, no
 * program said which it was.) */
START_TEST(test_version) {
  pt_ctx x;
  pt_init(&x);
  static const char *const progs[] = {"psd", "psw", "psctl"};
  char builds[3][256];
  for (size_t i = 0; i < 3; i++) {
    int rc = pt_run(&x, progs[i], "--version");
    char *out = ps_test_read_file(x.out, NULL), *err = ps_test_read_file(x.err, NULL);
    size_t n = strlen(progs[i]);
    char *nl = strchr(out, '\n');
    ck_assert_msg(rc == 0 && !strncmp(out, progs[i], n) && out[n] == ' ' && nl &&
                      nl > out + n + 1 && !nl[1],
                  "%s --version: exit %d, printed '%s', stderr '%s'", progs[i], rc, out, err);
    *nl = 0;
    snprintf(builds[i], sizeof builds[i], "%s", out + n + 1);
    free(out);
    free(err);
    ck_assert_int_eq(pt_run(&x, progs[i], "--help"), 0);
    ck_assert_msg(pt_contains(x.out, "--version"), "%s --help does not name --version", progs[i]);
  }
  ck_assert_str_eq(builds[1], builds[0]);
  ck_assert_str_eq(builds[2], builds[0]);
  pt_start(&x, 0); /* shard 1 stays down */
  ck_assert_int_eq(pt_psctl(&x, "status --json --config '%s' --interval 100", x.yaml), 1);
  char *js = ps_test_read_file(x.out, NULL), want[300];
  snprintf(want, sizeof want, "\"build\":\"%s\"", builds[0]);
  const char *s0 = strstr(js, "{\"id\":0,"), *s1 = strstr(js, "{\"id\":1,");
  const char *b0 = s0 ? strstr(s0, "\"build\":") : NULL;
  ck_assert_msg(s0 && s1 && s0 < s1 && b0 && b0 < s1 && !strncmp(b0, want, strlen(want)),
                "shard 0's build is not psd's '%s': %s", builds[0], js);
  ck_assert_msg(strstr(s1, "\"build\":null"), "shard 1 (down) has a build: %s", js);
  free(js);
  ck_assert_int_eq(pt_psctl(&x, "status --config '%s' --interval 100", x.yaml), 1);
  ck_assert_msg(!pt_contains(x.out, "psctl is"), "a build line with one build everywhere");
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* pt_yaml_variant writes X->dir/NAME: X->yaml with FROM replaced by TO
 * (FROM NULL: nothing), "cluster: test" by "cluster: CLUSTER", and
 * without the shards after the first NSHARDS; returns its path (static). */
static const char *pt_yaml_variant(pt_ctx *x, const char *name, const char *cluster,
                                   int nshards, const char *from, const char *to) {
  static char path[700];
  char *t = ps_test_read_file(x->yaml, NULL), cut[32], head[64];
  snprintf(cut, sizeof cut, "  - id: %d\n", nshards);
  char *end = nshards < PT_NSHARDS ? strstr(t, cut) : NULL;
  if (end) *end = 0;
  char *c = strstr(t, "cluster: test\n");
  ck_assert(c != NULL);
  snprintf(path, sizeof path, "%s/%s", x->dir, name);
  snprintf(head, sizeof head, "cluster: %s\n", cluster);
  FILE *f = fopen(path, "w");
  ck_assert(f != NULL);
  fprintf(f, "%.*s%s%s", (int)(c - t), t, head, c + strlen("cluster: test\n"));
  fclose(f);
  free(t);
  if (from) ps_test_file_replace(path, path, from, to);
  return path;
}

/* A cluster file that is not the shards' own (another cluster's name and
 * only shard 0 of 2; the two shards' addresses swapped; another
 * chunk_elems): status shows the shard MISMATCH and exits 1, submit
 * registers nothing, export writes nothing, each saying what the shard
 * says it is and what the file says.  Before, status said SERVING, submit
 * registered the model on shard 0 only ("on all 1 shards", exit 0) and
 * export failed later with a misleading "lacks 2 of the 4 chunks". */
START_TEST(test_psctl_cluster_mismatch) {
  pt_ctx x;
  pt_init(&x);
  ck_assert_int_eq(pt_psctl(&x, "model logreg --inputs 8 --classes 2 -o m.pb"), 0);
  pt_start(&x, 0);
  pt_start(&x, 1);
  const char *other = pt_yaml_variant(&x, "other.yaml", "other", 1, NULL, NULL);
  ck_assert_int_eq(pt_psctl(&x, "status -c '%s' --interval 100", other), 1);
  ck_assert_msg(pt_contains(x.out, "MISMATCH") &&
                    pt_contains(x.out, "says it is shard 0 of cluster 'test' with 2 shards; this "
                                       "file says shard 0 of 'other' with 1"),
                "status does not flag the other cluster's file, see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "status -c '%s' --json --interval 100", other), 1);
  ck_assert_msg(pt_contains(x.out, "\"state\":\"MISMATCH\"") &&
                    pt_contains(x.out, "\"mismatch\":\"the shard at 127.0.0.1:"),
                "status --json does not flag it, see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "submit m.pb -c '%s' -n fromother", other), 1);
  ck_assert_msg(pt_contains(x.err, "this file says shard 0 of 'other' with 1") &&
                    pt_contains(x.err, "nothing submitted"), "see %s", x.err);
  ck_assert_uint_eq(pt_status_nmodels(&x, 0), 0);
  ck_assert_int_eq(pt_psctl(&x, "submit m.pb -c '%s' -n m", x.yaml), 0);
  ck_assert_int_eq(pt_psctl(&x, "export -c '%s' -m m -o m.npz", other), 1);
  ck_assert_msg(pt_contains(x.err, "says it is shard 0 of cluster 'test' with 2 shards") &&
                    pt_contains(x.err, "nothing written"), "see %s", x.err);
  char a0[64], a1[64];
  snprintf(a0, sizeof a0, "grpc: 127.0.0.1:%d\n", x.gp[0]);
  snprintf(a1, sizeof a1, "grpc: 127.0.0.1:%d\n", x.gp[1]);
  const char *swap = pt_yaml_variant(&x, "swap.yaml", "test", 2, a0, "grpc: SWAP\n");
  ps_test_file_replace(swap, swap, a1, a0);
  ps_test_file_replace(swap, swap, "grpc: SWAP\n", a1);
  ck_assert_int_eq(pt_psctl(&x, "export -c '%s' -m m -o m.npz", swap), 1);
  ck_assert_msg(pt_contains(x.err, "says it is shard 1 of cluster 'test' with 2 shards; this file "
                                   "says shard 0 of 'test' with 2"), "see %s", x.err);
  const char *chunks = pt_yaml_variant(&x, "chunks.yaml", "test", 2, "chunk_elems: 1024\n",
                                       "chunk_elems: 2048\n");
  ck_assert_int_eq(pt_psctl(&x, "status -c '%s' --interval 100", chunks), 1);
  ck_assert_msg(pt_contains(x.out, "MISMATCH") && pt_contains(x.out, "another chunk_elems"),
                "see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "status -c '%s' --interval 100", x.yaml), 0);
  ck_assert_msg(!pt_contains(x.out, "MISMATCH"), "the cluster's own file MISMATCH, see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "export -c '%s' -m m -o m.npz", x.yaml), 0);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* A model on shard 0 only (registered there alone, as when a memory
 * budget refused it on shard 1): status names the shards that hold it
 * and those that lack it, in the text and in --json's "partial_models",
 * and exits 1 (before: all SERVING, exit 0).  The model rows carry each
 * model's optimizer and learning rate.  A DOWN shard's JSON object has
 * every member a serving shard's has, null (before: 7 of them, and
 * s["params"] raised KeyError). */
/* Every member psctl status --json writes, at every depth (a shard's,
 * a model's, a sparse table's, the top level's), is named in README.md as
 * `name`: a script reads them by name, and README is where it finds
 * them (uptime_ms, errors, pushes_per_s, tau_hist, bytes_raw and others
 * were written and named nowhere). */
/* pt_readme_names_keys asserts that README names every member of the
 * JSON text JSON (as `name`), WHO saying what wrote it; the count of
 * members.  No value string in what it checks may hold '":'. */
static int pt_readme_names_keys(const char *readme, const char *json, const char *who) {
  int keys = 0;
  for (const char *p = json; (p = strchr(p, '"')) != NULL;) {
    const char *e = strchr(p + 1, '"');
    ck_assert(e != NULL);
    if (e[1] == ':') { /* a member's name */
      char want[80];
      snprintf(want, sizeof want, "`%.*s`", (int)(e - p - 1), p + 1);
      ck_assert_msg(strstr(readme, want), "%s writes %s, which README.md does not name", who,
                    want);
      keys++;
    }
    p = e + 1;
  }
  return keys;
}

START_TEST(test_psctl_status_json_readme) {
  pt_ctx x;
  pt_init(&x);
  for (int s = 0; s < PT_NSHARDS; s++) pt_start(&x, s);
  ck_assert_int_eq(pt_psctl(&x, "model ctr --fields 2 --dim 4 --dense 3 -o ctr.pb"), 0);
  ck_assert_int_eq(pt_psctl(&x, "submit ctr.pb --name c --config '%s'", x.yaml), 0);
  ck_assert_int_eq(pt_psctl(&x, "status --json --config '%s'", x.yaml), 0);
  char *json = ps_test_read_file(x.out, NULL), *readme = ps_test_read_file("README.md", NULL);
  ck_assert_msg(strstr(json, "\"sparse_tables\":[{"), "no sparse table in %s", x.out);
  ck_assert_int_gt(pt_readme_names_keys(readme, json, "psctl status --json"), 60);
  free(json);
  free(readme);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* pt_beat sends shard 0 (the coordinator) one heartbeat of worker W of
 * model MODEL, as pid PID, FIXED saying whether it runs as a fixed --rank. */
static void pt_beat(pt_ctx *x, uint32_t w, const char *model, uint32_t pid, int fixed) {
  Ps__HeartbeatRequest hb = PS__HEARTBEAT_REQUEST__INIT;
  hb.worker = w;
  hb.model = (char *)model;
  hb.host = "h";
  hb.device = "cpu";
  hb.pid = pid;
  hb.fixed_rank = fixed;
  ProtobufCMessage *rep = NULL;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(x->rpc[0], "/ps.Ps/Heartbeat", &hb.base,
                            &ps__heartbeat_reply__descriptor, &rep, 5000, &eb) == 0,
                "heartbeat of worker %u: %s", w, eb.msg);
  protobuf_c_message_free_unpacked(rep, NULL);
}

/* psctl status says how each worker holds its rank: a worker that
 * registered (elastic) and a fixed psw --rank, in the text's KIND column
 * and as --json's "registered" and "fixed_rank" (before: neither, though
 * the coordinator's ListWorkers said both); README names both members. */
START_TEST(test_psctl_status_worker_kind) {
  pt_ctx x;
  pt_init(&x);
  for (int s = 0; s < PT_NSHARDS; s++) pt_start(&x, s);
  ck_assert_int_eq(pt_psctl(&x, "model logreg --inputs 4 --classes 2 -o lr.pb"), 0);
  ck_assert_int_eq(pt_psctl(&x, "submit lr.pb --name m --config '%s'", x.yaml), 0);
  Ps__RegisterWorkerRequest req = PS__REGISTER_WORKER_REQUEST__INIT;
  req.model = "m";
  req.host = "h";
  req.pid = 4242;
  req.device = "cpu";
  Ps__RegisterWorkerReply *reg = NULL;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(x.rpc[0], "/ps.Ps/RegisterWorker", &req.base,
                            &ps__register_worker_reply__descriptor, (ProtobufCMessage **)&reg,
                            5000, &eb) == 0, "register: %s", eb.msg);
  uint32_t r = reg->rank, f = r + 1; /* f: a fixed rank beside it */
  protobuf_c_message_free_unpacked(&reg->base, NULL);
  pt_beat(&x, r, "m", 4242, 0);
  pt_beat(&x, f, "m", 4343, 1);
  ck_assert_int_eq(pt_psctl(&x, "status --json --config '%s'", x.yaml), 0);
  char *json = ps_test_read_file(x.out, NULL), want[2][160];
  /* the state is ALIVE, or LATE on a loaded machine: not what is checked */
  const char *kind[2] = {"\"registered\":true,\"fixed_rank\":false,",
                         "\"registered\":false,\"fixed_rank\":true,"};
  snprintf(want[0], sizeof want[0], "{\"rank\":%u,\"host\":\"h\",\"pid\":4242,\"state\":\"", r);
  snprintf(want[1], sizeof want[1], "{\"rank\":%u,\"host\":\"h\",\"pid\":4343,\"state\":\"", f);
  for (int i = 0; i < 2; i++) {
    const char *w = strstr(json, want[i]), *st = w ? w + strlen(want[i]) : NULL;
    ck_assert_msg(w, "no %s in %s", want[i], x.out);
    size_t sl = !strncmp(st, "ALIVE\",", 7) ? 7 : !strncmp(st, "LATE\",", 6) ? 6 : 0;
    ck_assert_msg(sl && !strncmp(st + sl, kind[i], strlen(kind[i])), "no %s after %s in %s",
                  kind[i], want[i], x.out);
  }
  char *readme = ps_test_read_file("README.md", NULL);
  pt_readme_names_keys(readme, json, "psctl status --json");
  free(readme);
  free(json);
  /* beat again: the --json call's two samples can take the beats past
   * heartbeat_ms x 2 on a loaded machine (LATE); KIND is what is checked */
  pt_beat(&x, r, "m", 4242, 0);
  pt_beat(&x, f, "m", 4343, 1);
  ck_assert_int_eq(pt_psctl(&x, "status --config '%s'", x.yaml), 0);
  ck_assert_msg(pt_contains(x.out, " KIND ") &&
                    (pt_contains(x.out, "4242    ALIVE registered ") ||
                     pt_contains(x.out, "4242    LATE  registered ")) &&
                    (pt_contains(x.out, "4343    ALIVE fixed ") ||
                     pt_contains(x.out, "4343    LATE  fixed ")), "see %s", x.out);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* README.md names every member of psw's JSON lines (the training run's
 * and --evaluate's): 'model', 'workers' and 'batch' were written but
 * never explained. */
START_TEST(test_psw_json_readme) {
  char *readme = ps_test_read_file("README.md", NULL);
  uint64_t acked[2] = {3, 4}, lost[2] = {0, 1};
  uint32_t parts[1] = {5};
  psw_train_result r = {.ranked = 1, .rank = 1, .workers = 2, .job_done = 1, .slowdown = 1,
                        .partitions = parts, .npartitions = 1, .nshards = 2,
                        .pushes_acked = acked, .pushes_unanswered = lost, .sparse_lost = 0};
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert(f != NULL);
  psw_train_json(f, "m", 64, &r);
  psw_train_eval_json(f, "m", &r, 7, 0);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_gt(pt_readme_names_keys(readme, buf, "psw's JSON line"), 30);
  free(buf);
  free(readme);
}
END_TEST

/* pt_flag_in reports whether TEXT holds FLAG (--name) as a whole flag. */
static int pt_flag_in(const char *text, const char *flag) {
  size_t n = strlen(flag);
  for (const char *p = text; (p = strstr(p, flag)) != NULL; p++)
    if (!isalnum((unsigned char)p[n]) && p[n] != '-') return 1;
  return 0;
}

/* Every long flag that psd, psw and psctl name in their --help is named in
 * README.md too: --test, psctl status's --timeout, export's --timeout-ms,
 * submit's --seed, logreg's --inputs/--classes and bench's --rounds,
 * --depth, --skip-grpc and --small-secs were not.  Each help's lines fit
 * 100 columns (psctl submit's usage line took 101). */
START_TEST(test_cli_help_flags_readme) {
  pt_ctx x;
  pt_init(&x);
  char *readme = ps_test_read_file("README.md", NULL);
  static const char *const cmds[][2] = {{"psd", ""},           {"psw", ""},
                                        {"psctl", ""},         {"psctl", "status"},
                                        {"psctl", "submit"},   {"psctl", "export"},
                                        {"psctl", "bench"},    {"psctl", "model"}};
  int flags = 0;
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    ck_assert_int_eq(pt_run(&x, cmds[i][0], "%s --help", cmds[i][1]), 0);
    char *help = ps_test_read_file(x.out, NULL);
    for (const char *l = help; *l;) { /* and every line fits 100 columns */
      size_t n = strcspn(l, "\n");
      ck_assert_msg(n <= 100, "%s %s --help has a line of %zu columns: %.*s", cmds[i][0],
                    cmds[i][1], n, (int)n, l);
      l += n + (l[n] == '\n');
    }
    for (const char *p = help; (p = strstr(p, "--")) != NULL;) {
      size_t n = 2;
      while (islower((unsigned char)p[n]) || isdigit((unsigned char)p[n]) || p[n] == '-') n++;
      if (n > 2 && islower((unsigned char)p[2])) {
        char flag[64];
        snprintf(flag, sizeof flag, "%.*s", (int)n, p);
        ck_assert_msg(pt_flag_in(readme, flag), "%s %s --help names %s, which README.md does "
                      "not", cmds[i][0], cmds[i][1], flag);
        flags++;
      }
      p += n;
    }
    free(help);
  }
  ck_assert_int_gt(flags, 80);
  free(readme);
  pt_cleanup(&x);
}
END_TEST

/* psctl status and bench took --timeout MS, export --timeout-ms MS: each
 * refused the other's spelling (export took --timeout only as getopt's
 * abbreviation of --timeout-ms).  Each takes both now, as one flag whose
 * errors name the spelling given, and its --help names both. */
START_TEST(test_cli_timeout_spellings) {
  pt_ctx x;
  pt_init(&x);
  static const char *const cmds[] = {"status", "export", "bench"};
  static const char *const flags[] = {"--timeout", "--timeout-ms"};
  for (size_t i = 0; i < 3; i++) {
    for (size_t f = 0; f < 2; f++) {
      ck_assert_int_eq(pt_psctl(&x, "%s %s 0", cmds[i], flags[f]), 2);
      char want[64];
      snprintf(want, sizeof want, "psctl %s: %s wants an integer", cmds[i], flags[f]);
      ck_assert_msg(pt_contains(x.err, want), "psctl %s %s 0: no \"%s\" in %s", cmds[i],
                    flags[f], want, x.err);
      ck_assert_msg(pt_psctl(&x, "%s %s 5 --help", cmds[i], flags[f]) == 0,
                    "psctl %s refuses %s", cmds[i], flags[f]);
      char *help = ps_test_read_file(x.out, NULL);
      ck_assert_msg(pt_flag_in(help, flags[f]), "psctl %s --help does not name %s", cmds[i],
                    flags[f]);
      free(help);
    }
  }
  pt_cleanup(&x);
}
END_TEST

/* A graph with two nodes of one name: psctl submit refused nothing (nor
 * did the shards), and a message naming the node was ambiguous.  Now the
 * graph file is refused before any shard is asked (none runs here),
 * naming the name and both nodes. */
START_TEST(test_psctl_submit_dup_node) {
  pt_ctx x;
  pt_init(&x);
  size_t len;
  const char *name;
  uint8_t *buf = ps_test_graph_dup_node(&len, &name);
  char path[1200], want[160];
  snprintf(path, sizeof path, "%s/dup.pb", x.dir);
  FILE *f = fopen(path, "wb");
  ck_assert(f != NULL);
  ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
  ck_assert_int_eq(fclose(f), 0);
  free(buf);
  snprintf(want, sizeof want, "dup.pb: two nodes are named '%s' (nodes[0] and nodes[2])", name);
  ck_assert_int_eq(pt_psctl(&x, "submit dup.pb --name m --config '%s'", x.yaml), 2);
  ck_assert_msg(pt_contains(x.err, want), "no \"%s\" in %s", want, x.err);
  ck_assert_int_eq(pt_psctl(&x, "model show dup.pb"), 2);
  ck_assert_msg(pt_contains(x.err, want), "no \"%s\" in %s", want, x.err);
  pt_cleanup(&x);
}
END_TEST

/* psctl submit --help states the optimizers' defaults as the shards apply
 * them: it said eps 1e-8 for every optimizer, and adagrad's is 1e-10. */
START_TEST(test_psctl_submit_help_eps) {
  pt_ctx x;
  pt_init(&x);
  ck_assert_int_eq(pt_psctl(&x, "submit --help"), 0);
  char *help = ps_test_read_file(x.out, NULL);
  static const char *const kinds[][2] = {{"adam", " eps "}, {"adagrad", "(adagrad: "}};
  for (size_t i = 0; i < 2; i++) {
    Ps__OptimizerSpec spec = PS__OPTIMIZER_SPEC__INIT;
    spec.kind = (char *)kinds[i][0];
    spec.lr = 1;
    psd_optim o;
    ps_errbuf eb;
    ck_assert_int_eq(psd_optim_init(&o, &spec, &eb), 0);
    const char *at = strstr(help, "Defaults:");
    ck_assert(at != NULL);
    at = strstr(at, kinds[i][1]);
    ck_assert_msg(at != NULL, "psctl submit --help names no default eps for %s:\n%s",
                  kinds[i][0], help);
    float said = strtof(at + strlen(kinds[i][1]), NULL);
    ck_assert_msg(said == o.eps, "psctl submit --help says %s's eps is %g; the shards use %g",
                  kinds[i][0], (double)said, (double)o.eps);
  }
  free(help);
  pt_cleanup(&x);
}
END_TEST

START_TEST(test_psctl_status_partial) {
  pt_ctx x;
  pt_init(&x);
  ck_assert_int_eq(pt_psctl(&x, "model logreg --inputs 8 --classes 2 -o m.pb"), 0);
  pt_start(&x, 0);
  pt_start(&x, 1);
  ck_assert_int_eq(pt_psctl(&x, "submit m.pb -c '%s' -n whole --optimizer adam --lr 0.002",
                            x.yaml), 0);
  Ps__GetModelReply *rep;
  Ps__ModelSpec *spec = pt_get_model(&x, 0, "whole", &rep);
  ck_assert(spec != NULL);
  char *whole = spec->name;
  spec->name = "half";
  ps_test_submit(x.rpc[0], spec, 0, 10000);
  spec->name = whole;
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  ck_assert_int_eq(pt_psctl(&x, "status -c '%s' --interval 100", x.yaml), 1);
  ck_assert_msg(pt_contains(x.out, "model 'half' is on shards [0] and not on shards [1]") &&
                    !pt_contains(x.out, "model 'whole' is on"),
                "status does not name the shard lacking 'half', see %s", x.out);
  ck_assert_msg(pt_contains(x.out, "adam 0.002"), "no optimizer and lr, see %s", x.out);
  ck_assert_int_eq(pt_psctl(&x, "status -c '%s' --json --interval 100", x.yaml), 1);
  ck_assert_msg(pt_contains(x.out, "\"partial_models\":[{\"name\":\"half\",\"on\":[0],"
                                   "\"missing\":[1]}]") &&
                    pt_contains(x.out, "\"optimizer\":\"adam\",\"lr\":0.002"),
                "see %s", x.out);
  pt_kill(&x, 1);
  ck_assert_int_eq(pt_psctl(&x, "status -c '%s' --json --interval 100", x.yaml), 1);
  char *js = ps_test_read_file(x.out, NULL);
  const char *s1 = strstr(js, "{\"id\":1,");
  ck_assert_msg(s1 && strstr(js, "\"partial_models\":[]"), "%s", js);
  static const char *const keys[] = {
      "state_why", "error", "mismatch", "build", "uptime_ms", "models", "params", "version",
      "pushes", "pulls", "pushes_per_s", "pulls_per_s", "bytes_in", "bytes_out", "errors",
      "last_flush_unix_ms", "last_flush_age_s", "disk_bytes", "chan_connections",
      "chan_refused", "chan_idle_closed", "chan_bad_frames", "chan_slow_closed",
      "grpc_restarts", "security", "auth_refused", "chan_auth_refused", "chan_shm_bytes",
      "chan_shm_connections", "redo_log", "start_replay", "sparse_tables"};
  for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", keys[k]);
    const char *in0 = strstr(js, key);
    ck_assert_msg(in0 && in0 < s1 && strstr(s1, key), "'%s' not in both shards' objects: %s",
                  keys[k], js);
    if (strcmp(keys[k], "state_why") && strcmp(keys[k], "error")) {
      snprintf(key, sizeof key, "\"%s\":null", keys[k]);
      ck_assert_msg(strstr(s1, key), "the DOWN shard's '%s' is not null: %s", keys[k], js);
    }
  }
  free(js);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* An export racing a --replace: shard 1 holds model 'm' replaced with
 * another chunk size after shard 0 gave psctl its spec, so shard 1's
 * chunks do not fit the layout psctl built.  The export writes nothing
 * and says the model was most likely replaced during it, to run it again
 * (before: "placement puts on another shard (does the config list the
 * cluster's shards?)", which the cluster check rules out). */
START_TEST(test_psctl_export_replaced) {
  pt_ctx x;
  pt_init(&x);
  ck_assert_int_eq(pt_psctl(&x, "model logreg --inputs 64 --classes 10 -o m.pb"), 0);
  pt_start(&x, 0);
  pt_start(&x, 1);
  ck_assert_int_eq(pt_psctl(&x, "submit m.pb -c '%s' -n m", x.yaml), 0);
  Ps__GetModelReply *rep;
  Ps__ModelSpec *spec = pt_get_model(&x, 1, "m", &rep);
  ck_assert(spec != NULL);
  spec->chunk_elems = 64; /* 11 chunks where shard 0's spec has 2 */
  ps_test_submit(x.rpc[1], spec, 1, 10000);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  ck_assert_int_eq(pt_psctl(&x, "export -c '%s' -m m -o m.npz", x.yaml), 1);
  ck_assert_msg(pt_contains(x.err, "psctl export: shard 1 (127.0.0.1:") &&
                    pt_contains(x.err, "the model was most likely replaced (psctl submit "
                                       "--replace) during the export: run it again") &&
                    !pt_contains(x.err, "does the config"), "see %s", x.err);
  struct stat st;
  char npz[700];
  snprintf(npz, sizeof npz, "%s/m.npz", x.dir);
  ck_assert_int_ne(stat(npz, &st), 0);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* export -o in a directory that does not exist, directly or through a
 * symlink: exit 2 both (a bad argument, said before any shard is asked),
 * where a plain path gave 1 after the whole export and a link 2. */
START_TEST(test_psctl_export_output_dir) {
  pt_ctx x;
  pt_init(&x); /* no shard runs: the argument is refused first */
  ck_assert_int_eq(pt_psctl(&x, "export -c '%s' -m m -o nodir/m.npz", x.yaml), 2);
  ck_assert_msg(pt_contains(x.err, "-o 'nodir/m.npz': no directory to make it in"), "see %s",
                x.err);
  char link[700];
  snprintf(link, sizeof link, "%s/link.npz", x.dir);
  ck_assert_int_eq(symlink("nodir/m.npz", link), 0);
  ck_assert_int_eq(pt_psctl(&x, "export -c '%s' -m m -o link.npz", x.yaml), 2);
  ck_assert_msg(pt_contains(x.err, "-o 'link.npz'"), "see %s", x.err);
  pt_cleanup(&x);
}
END_TEST

/* psctl bench with shard 1 stopped (SIGSTOP: it accepts and never
 * answers): --timeout 1500 ends it with exit 1 in seconds, naming shard 1
 * (before: no --timeout, about 65 s and a message naming a channel
 * address only).  With both shards up, a small model's sizes print as
 * given ("model 0.01 MiB", "0.001 MiB requests"; before: "0 MiB"). */
START_TEST(test_psctl_bench_hung) {
  pt_ctx x;
  pt_init(&x);
  pt_start(&x, 0);
  pt_start(&x, 1);
  ck_assert_int_eq(kill(x.pid[1], SIGSTOP), 0);
  int64_t t0 = ps_test_now_ms();
  int rc = pt_psctl(&x, "bench -c '%s' --timeout 1500 --model-mib 0.01 --request-mib 0.001 "
                        "--rounds 1 --small-secs 0 --skip-grpc", x.yaml);
  int64_t ms = ps_test_now_ms() - t0;
  kill(x.pid[1], SIGCONT);
  ck_assert_msg(rc == 1 && ms < 15000 && pt_contains(x.err, "shard 1 (127.0.0.1:"),
                "exit %d after %lld ms, see %s", rc, (long long)ms, x.err);
  ck_assert_int_eq(pt_psctl(&x, "bench -c '%s' --timeout 10000 --model-mib 0.01 --request-mib "
                                "0.001 --rounds 1 --small-secs 0 --skip-grpc", x.yaml), 0);
  ck_assert_msg(pt_contains(x.out, "model 0.01 MiB over 2 shards, 0.001 MiB requests"), "see %s",
                x.out);
  pt_stop_all(&x);
  pt_cleanup(&x);
}
END_TEST

/* Small refusals: --version with an argument (psd, psctl) exits 2; a
 * bench (model mlp) option getopt refuses is prefixed "psctl bench"
 * ("psctl model mlp"); --rounds 0 and
 * an optimizer's bad lr end with the "see --help" line every other
 * refusal has. */
START_TEST(test_cli_refusals) {
  pt_ctx x;
  pt_init(&x);
  ck_assert_int_eq(pt_run(&x, "psd", "--version extra"), 2);
  ck_assert_msg(pt_contains(x.err, "--version takes no argument, got 'extra'"), "see %s", x.err);
  ck_assert_int_eq(pt_psctl(&x, "--version extra"), 2);
  ck_assert_msg(pt_contains(x.err, "--version takes no argument, got 'extra'"), "see %s", x.err);
  ck_assert_int_eq(pt_psctl(&x, "bench --bogus"), 2);
  ck_assert_msg(pt_contains(x.err, "psctl bench: unrecognized option '--bogus'") &&
                    pt_contains(x.err, "see 'psctl bench --help'"), "see %s", x.err);
  ck_assert_int_eq(pt_psctl(&x, "model mlp --bogus"), 2);
  ck_assert_msg(pt_contains(x.err, "psctl model mlp: unrecognized option '--bogus'"), "see %s",
                x.err);
  ck_assert_int_eq(pt_psctl(&x, "bench --rounds 0"), 2);
  ck_assert_msg(pt_contains(x.err, "see 'psctl bench --help'"), "see %s", x.err);
  ck_assert_int_eq(pt_psctl(&x, "model logreg --inputs 4 --classes 2 -o m.pb"), 0);
  ck_assert_int_eq(pt_psctl(&x, "submit m.pb -n m --lr 0 -c '%s'", x.yaml), 2);
  ck_assert_msg(pt_contains(x.err, "lr must be") && pt_contains(x.err, "see 'psctl submit --help'"),
                "see %s", x.err);
  pt_cleanup(&x);
}
END_TEST

/* psctl's JSON numbers: a non-finite double (a shard's or worker's
 * figure gone wrong) is null, never nan or inf, which JSON lacks. */
START_TEST(test_psctl_json_double) {
  char b[64];
  ck_assert_str_eq(psctl_json_double(b, "%.3f", 1.5), "1.500");
  ck_assert_str_eq(psctl_json_double(b, "%.7g", 0.01f), "0.01");
  ck_assert_str_eq(psctl_json_double(b, "%.0f", -2), "-2");
  ck_assert_str_eq(psctl_json_double(b, "%.3f", NAN), "null");
  ck_assert_str_eq(psctl_json_double(b, "%.3f", -NAN), "null");
  ck_assert_str_eq(psctl_json_double(b, "%.4f", INFINITY), "null");
  ck_assert_str_eq(psctl_json_double(b, "%.7g", -INFINITY), "null");
  /* a fixed format too wide for the buffer: the shortest exact form */
  ck_assert_str_eq(psctl_json_double(b, "%.0f", 1e300), "1.0000000000000001e+300");
  ck_assert_str_eq(psctl_json_double(b, "%.3f", -1e70), "-1.0000000000000001e+70");
}
END_TEST

Suite *psctl_suite(void) {
  Suite *s = suite_create("psctl");
  struct {
    const char *name;
    const TTest *test;
  } cases[] = {{"export", test_psctl_export},
               {"model_show", test_psctl_model_show},
               {"submit", test_psctl_submit},
               {"submit_budget", test_psctl_submit_budget},
               {"cli_bad_flags", test_cli_bad_flags},
               {"cli_usage_error_short", test_cli_usage_error_short},
               {"cli_short_options", test_cli_short_options},
               {"psw_config_warnings", test_psw_config_warnings},
               {"psctl_config_warnings", test_psctl_config_warnings},
               {"psd_t_group_commit", test_psd_t_group_commit_periodic},
               {"bench", test_psctl_bench},
               {"status_aggregator", test_psctl_status_aggregator},
               {"output_errors", test_psctl_output_errors},
               {"psd_t_output_errors", test_psd_t_output_errors},
               {"version", test_version},
               {"cluster_mismatch", test_psctl_cluster_mismatch},
               {"status_partial", test_psctl_status_partial},
               {"status_json_readme", test_psctl_status_json_readme},
               {"status_worker_kind", test_psctl_status_worker_kind},
               {"export_replaced", test_psctl_export_replaced},
               {"export_output_dir", test_psctl_export_output_dir},
               {"bench_hung", test_psctl_bench_hung},
               {"cli_refusals", test_cli_refusals},
               {"psw_json_readme", test_psw_json_readme},
               {"cli_help_flags_readme", test_cli_help_flags_readme},
               {"cli_timeout_spellings", test_cli_timeout_spellings},
               {"submit_dup_node", test_psctl_submit_dup_node},
               {"submit_help_eps", test_psctl_submit_help_eps},
               {"json_double", test_psctl_json_double}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    TCase *tc = tcase_create(cases[i].name);
    tcase_set_timeout(tc, 180);
    tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
    tcase_add_test(tc, cases[i].test);
    suite_add_tcase(s, tc);
  }
  return s;
}
