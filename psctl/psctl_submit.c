/* psctl submit: register a model graph file on every shard.
 *
 * All or nothing, as far as a client can make it: every shard must answer
 * Status first (nothing is submitted while one is down), then SubmitModel
 * goes to every shard at once.  SubmitModel is idempotent, so when some
 * shards refuse or fail, psctl says which shards have the model and which
 * do not, and running the same command again completes it. */
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_model.h"
#include "psctl.h"
#include "psw_graph.h"
#include "psw_sparse.h"

#define PSCTL_SUBMIT_TIMEOUT_MS 10000

static const char psctl_submit_usage[] =
    "usage: psctl submit FILE --name NAME [--config FILE]\n"
    "         [--optimizer sgd|momentum|nesterov|adam|adagrad] [--lr X] [--momentum X]\n"
    "         [--beta1 X] [--beta2 X] [--eps X] [--weight-decay X]\n"
    "         [--lr-decay GAMMA --lr-decay-steps N] [--seed N] [--chunk-elems N] [--replace]\n"
    "         [--consistency bsp|ssp|asp] [--staleness S] [--staleness-weight none|inverse]\n"
    "         [--clip-norm X] [--codec fp32|fp16|int8|onebit|topk] [--pull-codec fp32|fp16|int8]\n"
    "         [--topk F] [--codec-warmup-steps N] [--codec-min-elems N] [--tensor-codec NAME=CODEC]\n"
    "Checks the graph file, checks that every shard is up and is the shard the file says\n"
    "(its cluster, id and shard list: psctl status shows MISMATCH), then registers the model\n"
    "on every shard.  Defaults: sgd, lr 0.01, momentum 0.9, beta1 0.9, beta2 0.999, eps 1e-8\n"
    "(adagrad: 1e-10), seed 1 (of the initial values), the cluster's chunk size, constant lr\n"
    "(--lr-decay: lr * GAMMA^(t/N) after t updates of a chunk).  --chunk-elems N: float32\n"
    "elements per chunk, 1..67108864; 0 (the default): each shard's chunk_elems, fixed in the\n"
    "model when it is registered.\n"
    "--momentum applies to momentum and nesterov, --beta1/--beta2 to adam, --eps to\n"
    "adam and adagrad; a flag the optimizer does not use is refused, as is 0 for any of them\n"
    "(the shards take 0 as unset: the default), --lr-decay-steps without --lr-decay and\n"
    "--lr-decay without --lr-decay-steps.  --replace replaces a model\n"
    "of that name with different settings.\n"
    "Consistency, staleness and staleness weight default to the cluster file's training section;\n"
    "--staleness (the ssp bound) contradicts bsp and asp.\n"
    "--clip-norm X: workers scale each step's whole gradient to an L2 norm of at most X before\n"
    "they push, and shards refuse a chunk whose own gradient norm exceeds X (default 0: none).\n"
    "--codec: how workers encode gradients on the wire (with error feedback); --pull-codec: how\n"
    "shards encode the parameters workers pull; --topk F: the fraction of each chunk topk\n"
    "sends (8 bytes per kept element: from 0.5 on no fewer bytes than fp32, which is warned\n"
    "about); the job's first --codec-warmup-steps N clocks go uncompressed (a worker joining\n"
    "later has no warm-up of its own); tensors under --codec-min-elems N elements stay fp32.\n"
    "These default to the cluster file's training section (fp32, fp32, 0.01, 0, 1024).\n"
    "--tensor-codec NAME=CODEC (repeatable) sets one\n"
    "dense tensor's push codec; an embedding table's rows travel in --codec (onebit and topk\n"
    "as int8) and --pull-codec.\n"
    "Short forms: -n NAME (--name), -c FILE (--config), -h (--help).\n"
    "Exit status: 0, 1 when a shard is down or refuses (it says which shards have the model;\n"
    "run again to complete), 2 on bad usage or a bad file.\n";

typedef struct psctl_submit_opts {
  const char *file, *name, *config;
  Ps__OptimizerSpec opt;
  uint64_t seed;
  uint32_t chunk_elems;
  int replace;
  const char *consistency, *staleness_weight; /* NULL: the cluster file's */
  int64_t staleness;                          /* -1: the cluster file's */
  double clip_norm;                           /* 0: no clipping */
  const char *codec, *pull_codec;             /* NULL: the cluster file's */
  double topk;                                /* 0: the cluster file's */
  int64_t codec_warmup, codec_min_elems;      /* -1: the cluster file's */
  unsigned given;                             /* psctl_opt_uses' flags given (bits) */
  int decay_steps_given, decay_given;         /* --lr-decay-steps, --lr-decay */
  char *tensor_codec[64];                     /* "NAME=CODEC" from argv */
  size_t ntensor_codec;
} psctl_submit_opts;

/* A float option: its letter and where it goes. */
typedef struct psctl_fopt {
  int key;
  const char *name;
  size_t off;  /* offset of the float in Ps__OptimizerSpec */
} psctl_fopt;

static const psctl_fopt psctl_fopts[] = {
    {'l', "lr", offsetof(Ps__OptimizerSpec, lr)},
    {'m', "momentum", offsetof(Ps__OptimizerSpec, momentum)},
    {'1', "beta1", offsetof(Ps__OptimizerSpec, beta1)},
    {'2', "beta2", offsetof(Ps__OptimizerSpec, beta2)},
    {'e', "eps", offsetof(Ps__OptimizerSpec, eps)},
    {'w', "weight-decay", offsetof(Ps__OptimizerSpec, weight_decay)},
    {'g', "lr-decay", offsetof(Ps__OptimizerSpec, lr_decay)},
};

/* psctl_submit_float stores ARG as float option KEY; 0 or -1 (not a
 * finite number, or not a float option). */
static int psctl_submit_float(psctl_submit_opts *o, int key, const char *arg) {
  for (size_t i = 0; i < sizeof psctl_fopts / sizeof psctl_fopts[0]; i++) {
    if (psctl_fopts[i].key != key) continue;
    double v;
    if (psctl_parse_double("submit", psctl_fopts[i].name, arg, -DBL_MAX, DBL_MAX, &v) < 0)
      return -1;
    *(float *)((char *)&o->opt + psctl_fopts[i].off) = (float)v;
    return 0;
  }
  return -1;
}

/* The optimizer flags only some optimizers use: the option's letter, its
 * name, the kinds that use it (blank-separated, blanks around) and ZERO,
 * what the shards would use for a 0.  None of them can be 0: proto3 sends
 * a 0 as unset, and the shards take an unset setting as its default
 * (psd_optim.h), so 0 is refused rather than silently run as the default. */
static const struct {
  int key;
  const char *flag, *kinds, *zero;
} psctl_opt_uses[] = {
    {'m', "momentum", " momentum nesterov ", "0.9 (for no momentum use --optimizer sgd)"},
    {'1', "beta1", " adam ", "0.9"},
    {'2', "beta2", " adam ", "0.999"},
    {'e', "eps", " adam adagrad ", "1e-8 (adagrad: 1e-10)"}};

/* psctl_submit_fits refuses an optimizer flag the chosen optimizer does
 * not use (it would be ignored without a word, psctl_opt_uses), 0 for
 * any of those flags, --lr-decay-steps without --lr-decay, and
 * --lr-decay without --lr-decay-steps.  0, or 1 said on stderr.  An
 * unknown optimizer is the shards' to refuse. */
static int psctl_submit_fits(const psctl_submit_opts *o) {
  static const char *const known[] = {"sgd", "momentum", "nesterov", "adam", "adagrad"};
  int k = 0;
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) k |= !strcmp(o->opt.kind, known[i]);
  char want[32];
  snprintf(want, sizeof want, " %s ", o->opt.kind);
  for (size_t i = 0; k && i < sizeof psctl_opt_uses / sizeof psctl_opt_uses[0]; i++) {
    if (!(o->given >> i & 1) || strstr(psctl_opt_uses[i].kinds, want)) continue;
    fprintf(stderr, "psctl submit: --%s does not apply to --optimizer %s (used by%.*s)\n",
            psctl_opt_uses[i].flag, o->opt.kind, (int)strlen(psctl_opt_uses[i].kinds) - 1,
            psctl_opt_uses[i].kinds);
    return 1;
  }
  for (size_t i = 0; i < sizeof psctl_opt_uses / sizeof psctl_opt_uses[0]; i++) {
    float v = 0;
    for (size_t j = 0; j < sizeof psctl_fopts / sizeof psctl_fopts[0]; j++)
      if (psctl_fopts[j].key == psctl_opt_uses[i].key)
        v = *(const float *)((const char *)&o->opt + psctl_fopts[j].off);
    if (!(o->given >> i & 1) || v != 0.0f) continue;
    fprintf(stderr, "psctl submit: --%s 0 (or a value that rounds to 0 as a float) is not "
            "possible: the shards read a 0 as unset and would use the default %s\n",
            psctl_opt_uses[i].flag, psctl_opt_uses[i].zero);
    return 1;
  }
  if (o->decay_steps_given && o->opt.lr_decay_steps && !o->decay_given) {
    fprintf(stderr, "psctl submit: --lr-decay-steps needs --lr-decay GAMMA (0 < GAMMA < 1): "
            "without it the rate never decays\n");
    return 1;
  }
  if (o->decay_given && !(o->opt.lr_decay > 0 && o->opt.lr_decay < 1)) {
    fprintf(stderr, "psctl submit: --lr-decay wants GAMMA with 0 < GAMMA < 1, got %g\n",
            (double)o->opt.lr_decay);
    return 1;
  }
  /* said here by the flags' names, not later by the spec's fields */
  if (o->decay_given && o->decay_steps_given && !o->opt.lr_decay_steps) {
    fprintf(stderr, "psctl submit: --lr-decay-steps wants N > 0, got 0\n");
    return 1;
  }
  if (o->opt.lr_decay != 0 && !o->opt.lr_decay_steps) {
    fprintf(stderr, "psctl submit: --lr-decay GAMMA needs --lr-decay-steps N (> 0): lr falls by "
            "GAMMA over each N updates of a chunk\n");
    return 1;
  }
  return 0;
}

/* psctl_submit_args parses argv; 0, or an exit code (-1: --help). */
static int psctl_submit_args(int argc, char **argv, psctl_submit_opts *o) {
  static const struct option opts[] = {
      {"name", required_argument, 0, 'n'},      {"config", required_argument, 0, 'c'},
      {"optimizer", required_argument, 0, 'O'}, {"lr", required_argument, 0, 'l'},
      {"momentum", required_argument, 0, 'm'},  {"beta1", required_argument, 0, '1'},
      {"beta2", required_argument, 0, '2'},     {"eps", required_argument, 0, 'e'},
      {"weight-decay", required_argument, 0, 'w'}, {"seed", required_argument, 0, 's'},
      {"chunk-elems", required_argument, 0, 'C'}, {"replace", no_argument, 0, 'r'},
      {"lr-decay", required_argument, 0, 'g'},  {"lr-decay-steps", required_argument, 0, 'G'},
      {"consistency", required_argument, 0, 'K'}, {"staleness", required_argument, 0, 'S'},
      {"staleness-weight", required_argument, 0, 'W'}, {"clip-norm", required_argument, 0, 'N'},
      {"codec", required_argument, 0, 'X'},     {"pull-codec", required_argument, 0, 'P'},
      {"topk", required_argument, 0, 'k'},      {"codec-warmup-steps", required_argument, 0, 'U'},
      {"codec-min-elems", required_argument, 0, 'M'},
      {"tensor-codec", required_argument, 0, 'T'},
      {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
  memset(o, 0, sizeof *o);
  ps__optimizer_spec__init(&o->opt);
  o->opt.kind = "sgd", o->opt.lr = 0.01f, o->opt.momentum = 0.9f;
  o->opt.beta1 = 0.9f, o->opt.beta2 = 0.999f, o->opt.eps = 1e-8f;
  o->seed = 1;
  o->staleness = -1;
  o->codec_warmup = o->codec_min_elems = -1;
  optind = 1;
  int c, bad = 0;
  uint64_t v;
  while (!bad && (c = getopt_long(argc, argv, "n:c:h", opts, NULL)) != -1) {
    switch (c) {
      case 'n': o->name = optarg; break;
      case 'c': o->config = optarg; break;
      case 'O': o->opt.kind = optarg; break;
      case 'r': o->replace = 1; break;
      case 's': bad = psctl_parse_u64("submit", "seed", optarg, 0, UINT64_MAX, &o->seed); break;
      case 'C':
        /* 0: the cluster's; else chunk_elems' range in the cluster file */
        bad = psctl_parse_u64("submit", "chunk-elems", optarg, 0, PS_CHUNK_ELEMS_MAX, &v);
        o->chunk_elems = (uint32_t)v;
        break;
      case 'G':
        bad = psctl_parse_u64("submit", "lr-decay-steps", optarg, 0, UINT32_MAX, &v);
        o->opt.lr_decay_steps = (uint32_t)v;
        break;
      case 'K': o->consistency = optarg; break;
      case 'W': o->staleness_weight = optarg; break;
      case 'S':
        bad = psctl_parse_u64("submit", "staleness", optarg, 0, 1000000, &v);
        o->staleness = (int64_t)v;
        break;
      case 'N':
        bad = psctl_parse_double("submit", "clip-norm", optarg, 0, FLT_MAX, &o->clip_norm);
        break;
      case 'X':
      case 'P':
        /* "" on the wire means fp32: refuse it here rather than take it so. */
        if (!*optarg) {
          fprintf(stderr, "psctl submit: --%s wants a codec name, got ''\n",
                  c == 'X' ? "codec" : "pull-codec");
          bad = 1;
        }
        *(c == 'X' ? &o->codec : &o->pull_codec) = optarg;
        break;
      case 'k': bad = psctl_parse_double("submit", "topk", optarg, 1e-6, 1, &o->topk); break;
      case 'U':
        bad = psctl_parse_u64("submit", "codec-warmup-steps", optarg, 0, UINT32_MAX, &v);
        o->codec_warmup = (int64_t)v;
        break;
      case 'M':
        bad = psctl_parse_u64("submit", "codec-min-elems", optarg, 1, UINT32_MAX, &v);
        o->codec_min_elems = (int64_t)v;
        break;
      case 'T':
        if (o->ntensor_codec == sizeof o->tensor_codec / sizeof o->tensor_codec[0] ||
            !strchr(optarg, '=') || !strchr(optarg, '=')[1]) {
          fprintf(stderr, "psctl submit: --tensor-codec '%s' (want NAME=CODEC, at most 64)\n", optarg);
          bad = 1;
        } else {
          o->tensor_codec[o->ntensor_codec++] = optarg;
        }
        break;
      case 'h': fputs(psctl_submit_usage, stdout); return -1;
      case '?': bad = 1; break;
      default: bad = psctl_submit_float(o, c, optarg); break;
    }
    for (size_t i = 0; i < sizeof psctl_opt_uses / sizeof psctl_opt_uses[0]; i++)
      if (c == psctl_opt_uses[i].key) o->given |= 1u << i;
    if (c == 'G') o->decay_steps_given = 1;
    if (c == 'g') o->decay_given = 1;
  }
  if (!bad) bad = psctl_submit_fits(o);
  if (!bad && optind + 1 == argc) o->file = argv[optind];
  if (bad || !o->file || !o->name) {
    if (!bad) fprintf(stderr, "psctl submit: %s\n", !o->name ? "--name NAME is required" : "one graph FILE is required");
    fputs("see 'psctl submit --help'\n", stderr); /* the error, not 30 lines of usage */
    return 2;
  }
  return 0;
}

/* psctl_submit_consistency fills SPEC's consistency settings from O, else
 * from CFG's training section; 0 or 2 (a bad value, said on stderr).  The
 * strings are borrowed (from argv or CFG). */
static int psctl_submit_consistency(const psctl_submit_opts *o, const ps_config *cfg,
                                    Ps__ModelSpec *spec) {
  static const char *const modes[] = {"bsp", "ssp", "asp"};
  static const char *const weights[] = {"none", "inverse"};
  const char *c = o->consistency ? o->consistency : cfg->training.consistency;
  const char *w = o->staleness_weight ? o->staleness_weight : cfg->training.staleness_weight;
  uint32_t s = o->staleness >= 0 ? (uint32_t)o->staleness : cfg->training.staleness;
  int okc = 0, okw = 0;
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) okc |= !strcmp(c, modes[i]);
  for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++) okw |= !strcmp(w, weights[i]);
  if (!okc || !okw) {
    fprintf(stderr, "psctl submit: %s '%s' (want %s)\n", okc ? "--staleness-weight" : "--consistency",
            okc ? w : c, okc ? "none or inverse" : "bsp, ssp or asp");
    return 2;
  }
  if (!strcmp(c, "bsp")) {
    if (o->staleness > 0) {
      fprintf(stderr, "psctl submit: --staleness %u contradicts bsp (staleness 0)\n", s);
      return 2;
    }
    s = 0;
  }
  if (!strcmp(c, "asp") && o->staleness > 0) {
    fprintf(stderr, "psctl submit: --staleness %u contradicts asp (no bound: use ssp)\n", s);
    return 2;
  }
  spec->consistency = (char *)c;
  spec->staleness = !strcmp(c, "asp") ? 0 : s;
  spec->staleness_weight = (char *)w;
  return 0;
}

/* psctl_submit_no_tensor says on stderr that --tensor-codec NAME names no
 * dense tensor of SPEC: when NAME is an embedding table of G, which codecs
 * its rows travel in instead (README "Embedding tables"). */
static void psctl_submit_no_tensor(const psw_graph *g, const Ps__ModelSpec *spec,
                                   const char *name) {
  const Ps__Graph__Graph *gp = psw_graph_proto(g);
  size_t p = 0;
  while (p < gp->n_params && (!gp->params[p]->sparse || strcmp(gp->params[p]->name, name))) p++;
  if (p == gp->n_params) {
    fprintf(stderr, "psctl submit: --tensor-codec: the model has no tensor '%s' (it names "
                    "a dense tensor of 'psctl model show')\n", name);
    return;
  }
  ps_codec_id push, pull;
  ps_errbuf eb;
  if (ps_codec_parse(spec->codec, "codec", &push, &eb) < 0 ||
      ps_codec_parse(spec->pull_codec, "pull codec", &pull, &eb) < 0) {
    push = PS_CODEC_N; /* (said below, by ps_layout_build's check) */
  }
  ps_codec_id row = push == PS_CODEC_N ? push : psw_sparse_row_codec(push);
  if (row == PS_CODEC_N)
    fprintf(stderr, "psctl submit: --tensor-codec: '%s' is an embedding table (sparse), not a "
                    "dense tensor: its rows travel in the model's --codec and --pull-codec (onebit "
                    "and topk push them as int8); --tensor-codec does not apply to them\n", name);
  else
    fprintf(stderr, "psctl submit: --tensor-codec: '%s' is an embedding table (sparse), not a "
                    "dense tensor: its rows travel in the model's codecs, pushed as %s (--codec "
                    "%s%s) and pulled as %s (--pull-codec); --tensor-codec does not apply to "
                    "them: set --codec and --pull-codec\n", name, ps_codec_name(row),
            ps_codec_name(push), row != push ? ": onebit and topk push rows as int8" : "",
            ps_codec_name(pull));
}

/* psctl_submit_topk_warn warns when topk, which some tensor is pushed
 * with, keeps a fraction F (from --topk when FROM_FLAG, else
 * training.topk) that sends no fewer bytes than fp32: 8 bytes per kept
 * element against 4 per element, so from F = 0.5 on fp32, which is
 * exact, costs no more.  The submit goes on: a warning only. */
static void psctl_submit_topk_warn(double f, int from_flag) {
  if (f < 0.5) return;
  fprintf(stderr, "psctl submit: warning: %s %g sends %.2fx the bytes of fp32 (8 bytes per kept "
                  "element against 4 per element): fp32, which is exact, %s\n",
          from_flag ? "--topk" : "training.topk", f, 2 * f,
          f > 0.5 ? "or a fraction under 0.5 would send fewer"
                  : "would send as many, a fraction under 0.5 fewer");
}

/* psctl_submit_codecs fills SPEC's codec settings from O, else from
 * CFG's training section (strings borrowed from argv or CFG; the '=' of
 * each --tensor-codec is cut) and checks them as a shard will
 * (ps_layout_build), with G the model's graph; 0 or 2 (said on
 * stderr). */
static int psctl_submit_codecs(psctl_submit_opts *o, const ps_config *cfg, const psw_graph *g,
                               Ps__ModelSpec *spec) {
  const ps_train_conf *t = &cfg->training;
  spec->codec = (char *)(o->codec ? o->codec : t->codec);
  spec->pull_codec = (char *)(o->pull_codec ? o->pull_codec : t->pull_codec);
  spec->topk = (float)(o->topk > 0 ? o->topk : t->topk);
  spec->codec_warmup_steps = o->codec_warmup >= 0 ? (uint32_t)o->codec_warmup : t->codec_warmup_steps;
  spec->codec_min_elems = o->codec_min_elems >= 0 ? (uint32_t)o->codec_min_elems : t->codec_min_elems;
  for (size_t i = 0; i < o->ntensor_codec; i++) {
    char *eq = strchr(o->tensor_codec[i], '=');
    *eq = 0;
    for (size_t j = 0; j < i; j++) /* (an earlier one is cut to its name above) */
      if (!strcmp(o->tensor_codec[j], o->tensor_codec[i])) {
        fprintf(stderr, "psctl submit: --tensor-codec names tensor '%s' twice\n",
                o->tensor_codec[i]);
        return 2;
      }
    size_t t = 0;
    while (t < spec->n_tensors && strcmp(spec->tensors[t]->name, o->tensor_codec[i])) t++;
    if (t == spec->n_tensors) {
      psctl_submit_no_tensor(g, spec, o->tensor_codec[i]);
      return 2;
    }
    spec->tensors[t]->codec = eq + 1;
  }
  uint32_t one = 0;
  ps_layout l;
  ps_errbuf eb;
  if (ps_layout_build(&l, spec, 1 << 16, &one, 1, &eb) < 0) {
    fprintf(stderr, "psctl submit: %s\n", eb.msg);
    return 2;
  }
  /* as psd -t warns of training.topk under another codec */
  int topk_used = l.push_codec == PS_CODEC_TOPK;
  for (size_t i = 0; i < l.ntensors; i++) topk_used |= l.tensors[i].push_codec == PS_CODEC_TOPK;
  if (o->topk > 0 && !topk_used)
    fprintf(stderr, "psctl submit: warning: --topk applies to topk pushes only, and no tensor "
                    "of this model is pushed with topk\n");
  if (topk_used) psctl_submit_topk_warn(spec->topk, o->topk > 0);
  ps_layout_release(&l);
  return 0;
}

/* psctl_submit_check_up asks every shard for Status; returns 0 when all
 * answer and each is the shard the file says (psctl_mismatch), else
 * prints the ones that did not or are not and returns 1. */
static int psctl_submit_check_up(psctl_cluster *c, psctl_reply *r) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  int failed = psctl_call_all(c, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor, 3000,
                              r);
  char why[512];
  int other = 0;
  for (size_t i = 0; i < c->cfg.nshards; i++)
    if (r[i].err)
      fprintf(stderr, "psctl submit: shard %u (%s) %s: %s\n", c->cfg.shards[i].id,
              c->cfg.shards[i].grpc_addr, psctl_call_failed(r[i].err), r[i].eb.msg);
    else if (psctl_mismatch(c, i, (const Ps__StatusReply *)r[i].resp, why, sizeof why) && ++other)
      fprintf(stderr, "psctl submit: %s\n", why);
  psctl_replies_free(r, c->cfg.nshards);
  if (other)
    fprintf(stderr, "psctl submit: this cluster file (%s) does not describe the shards it names: "
            "use the cluster's own file (the one the shards were started with)\n", c->cfg.path);
  if (failed || other) fprintf(stderr, "psctl submit: nothing submitted\n");
  return failed || other ? 1 : 0;
}

/* psctl_submit_report prints each shard's answer and, when some failed,
 * which shards have the model (TABLES: it has embedding tables) and which
 * do not.  Returns the exit code. */
static int psctl_submit_report(const psctl_cluster *c, const char *name, int tables,
                               psctl_reply *r) {
  size_t n = c->cfg.nshards, ok = 0;
  for (size_t i = 0; i < n; i++) {
    const ps_shard_conf *s = &c->cfg.shards[i];
    if (r[i].err) {
      fprintf(stderr, "psctl submit: shard %u (%s) failed: %s\n", s->id, s->grpc_addr, r[i].eb.msg);
      continue;
    }
    const Ps__SubmitModelReply *rep = (const Ps__SubmitModelReply *)r[i].resp;
    printf("shard %u: %s model '%s', %u chunks, %llu parameters\n", s->id,
           rep->replaced ? "replaced" : rep->created ? "created" : "already has", name, rep->chunks,
           (unsigned long long)rep->params);
    ok++;
  }
  if (ok == n) {
    printf("model '%s' is on all %zu shards\n", name, n);
    return 0;
  }
  int exists = 0, again = 1; /* again: every failure may pass on a second try */
  for (size_t i = 0; i < n; i++) {
    int e = r[i].err;
    exists |= e == PS_EEXIST;
    if (e && e != PS_EUNAVAIL && e != PS_ETIMEDOUT && e != PS_EIO && e != PS_ESHUTDOWN &&
        e != PS_EDEGRADED)
      again = 0;
  }
  if (exists)
    fprintf(stderr, "psctl submit: a model named '%s' with other settings exists; %s\n", name,
            tables ? "a model with embedding tables cannot be replaced: submit it under "
                     "another name"
                   : "--replace replaces it (unless it has embedding tables: then submit "
                     "this one under another name)");
  /* none took it: "is on shards []" read as if the model were on no
   * shard, when a refused one may well hold it, with other settings */
  if (!ok) {
    fprintf(stderr, "psctl submit: no shard took model '%s' with these settings", name);
  } else {
    fprintf(stderr, "psctl submit: model '%s' with these settings is on shards [", name);
    for (size_t i = 0, k = 0; i < n; i++)
      if (!r[i].err) fprintf(stderr, "%s%u", k++ ? ", " : "", c->cfg.shards[i].id);
    fprintf(stderr, "] and not on shards [");
    for (size_t i = 0, k = 0; i < n; i++)
      if (r[i].err) fprintf(stderr, "%s%u", k++ ? ", " : "", c->cfg.shards[i].id);
    fputc(']', stderr);
  }
  fprintf(stderr, "; %s\n", again ? "run the same command again to complete it (submission is "
                                     "idempotent)" : "the refusals above say why");
  return 1;
}

/* psctl_submit_main: see psctl.h. */
int psctl_submit_main(int argc, char **argv) {
  psctl_submit_opts o;
  int code = psctl_submit_args(argc, argv, &o);
  if (code) return code < 0 ? 0 : code;
  ps_errbuf eb = {{0}};
  psw_graph *g;
  if (psw_graph_load_file(o.file, &g, &eb)) {
    fprintf(stderr, "psctl submit: %s\n", eb.msg);
    return 2;
  }
  Ps__ModelSpec *spec = NULL;
  psctl_cluster c;
  psctl_reply *r = NULL;
  code = 2;
  if (psw_graph_to_spec(g, o.name, &spec, &eb)) {
    fprintf(stderr, "psctl submit: %s\n", eb.msg);
    goto free_graph;
  }
  spec->seed = o.seed, spec->chunk_elems = o.chunk_elems, spec->optimizer = &o.opt;
  spec->clip_norm = (float)o.clip_norm;
  if (ps_modelspec_check(spec, &eb)) { /* mostly the flags' optimizer settings */
    fprintf(stderr, "psctl submit: %s\nsee 'psctl submit --help'\n", eb.msg);
    goto free_spec;
  }
  if (psctl_cluster_open(&c, o.config, &eb) < 0) {
    fprintf(stderr, "psctl submit: %s\n", eb.msg);
    goto free_spec;
  }
  if (psctl_submit_consistency(&o, &c.cfg, spec) || psctl_submit_codecs(&o, &c.cfg, g, spec))
    goto close_cluster;
  code = 1;
  r = calloc(c.cfg.nshards, sizeof *r);
  if (!r || psctl_submit_check_up(&c, r)) goto close_cluster;
  Ps__SubmitModelRequest req = PS__SUBMIT_MODEL_REQUEST__INIT;
  req.model = spec, req.replace = o.replace;
  psctl_call_all(&c, "/ps.Ps/SubmitModel", &req.base, &ps__submit_model_reply__descriptor,
                 PSCTL_SUBMIT_TIMEOUT_MS, r);
  int tables = psw_graph_embedding(g, NULL, NULL, NULL, NULL) == 0;
  code = psctl_submit_report(&c, o.name, tables, r);
  psctl_replies_free(r, c.cfg.nshards);
close_cluster:
  free(r);
  psctl_cluster_close(&c);
free_spec:
  spec->optimizer = NULL;
  psw_graph_spec_free(spec);
free_graph:
  psw_graph_free(g);
  return code;
}
