/* psctl model: build common model graph files (mlp, logreg, ctr) and show any
 * graph file.  Subcommands are a table; every graph written is loaded and
 * checked (psw_graph) before it reaches the disk. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_pb.h"
#include "psctl.h"
#include "psw_graph.h"

static const char psctl_model_usage[] =
    "usage: psctl model mlp --layers N,N,...,N [--activation relu|sigmoid|tanh] [--name NAME] -o FILE\n"
    "       psctl model logreg --inputs N --classes K [--name NAME] -o FILE\n"
    "       psctl model ctr --fields F --dim D --dense N [--layers N,N,...] [--hash-buckets B]\n"
    "                       [--pooling sum|mean] [--name NAME] -o FILE\n"
    "       psctl model show FILE\n"
    "mlp: dense layers of the given widths (inputs first, classes last) with the activation\n"
    "(default relu) between them and softmax cross-entropy; weights glorot (gain 1), biases 0.\n"
    "logreg: one dense layer and softmax cross-entropy.  ctr: a click-through model: an\n"
    "embedding table of dimension D (rows created when first touched; ids hashed into B rows\n"
    "with --hash-buckets, else raw 64-bit ids) looked up for F fields (each field's ids pooled,\n"
    "default sum), concatenated after N dense features, relu layers of the given widths (none\n"
    "by default) down to one logit, sigmoid cross-entropy; metrics auc and logloss.\n"
    "-o is also --output, -h --help.  show: inputs, parameters, nodes with their shapes, loss and\n"
    "parameter count.  Exit status: 0, 1 on i/o failure, 2 on bad usage or a bad graph file.\n";

typedef struct psctl_model_opts {
  const char *out, *name, *layers, *act, *pooling;
  long inputs, classes, fields, dim, dense;
  uint64_t hash_buckets;
} psctl_model_opts;

/* psctl_model_args parses the options of mlp/logreg; 0, or an exit code
 * (-1: --help printed). */
static int psctl_model_args(int argc, char **argv, psctl_model_opts *o) {
  static const struct option opts[] = {{"layers", required_argument, 0, 'l'},
                                       {"activation", required_argument, 0, 'a'},
                                       {"inputs", required_argument, 0, 'i'},
                                       {"classes", required_argument, 0, 'k'},
                                       {"fields", required_argument, 0, 'f'},
                                       {"dim", required_argument, 0, 'd'},
                                       {"dense", required_argument, 0, 'e'},
                                       {"hash-buckets", required_argument, 0, 'b'},
                                       {"pooling", required_argument, 0, 'p'},
                                       {"name", required_argument, 0, 'n'},
                                       {"output", required_argument, 0, 'o'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  *o = (psctl_model_opts){NULL, NULL, NULL, "relu", "sum", 0, 0, 0, 0, 0, 0};
  optind = 1;
  int c;
  char cmd[64];
  /* getopt_long names argv[0] in its own messages: "psctl model KIND" there
   * too (static: argv keeps it after this returns) */
  static char prog[64];
  const char *kind = argv[0];
  snprintf(prog, sizeof prog, "psctl model %s", kind);
  argv[0] = prog;
  uint64_t v;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
      case 'l': o->layers = optarg; break;
      case 'a': o->act = optarg; break;
      case 'i':
      case 'k':
        snprintf(cmd, sizeof cmd, "model %s", kind);
        /* a softmax over one class learns nothing: --classes from 2 */
        if (psctl_parse_u64(cmd, c == 'i' ? "inputs" : "classes", optarg, c == 'i' ? 1 : 2,
                            1L << 24, &v) < 0)
          return 2;
        *(c == 'i' ? &o->inputs : &o->classes) = (long)v;
        break;
      case 'f':
      case 'd':
      case 'e':
        snprintf(cmd, sizeof cmd, "model %s", kind);
        if (psctl_parse_u64(cmd, c == 'f' ? "fields" : c == 'd' ? "dim" : "dense", optarg, 1,
                            c == 'd' ? 65536 : 1L << 20, &v) < 0)
          return 2;
        *(c == 'f' ? &o->fields : c == 'd' ? &o->dim : &o->dense) = (long)v;
        break;
      case 'b':
        snprintf(cmd, sizeof cmd, "model %s", kind);
        if (psctl_parse_u64(cmd, "hash-buckets", optarg, 0, UINT64_MAX, &o->hash_buckets) < 0) return 2;
        break;
      case 'p': o->pooling = optarg; break;
      case 'n': o->name = optarg; break;
      case 'o': o->out = optarg; break;
      case 'h': fputs(psctl_model_usage, stdout); return -1;
      default: fputs("see 'psctl model --help'\n", stderr); return 2;
    }
  }
  if (optind < argc || !o->out) {
    fprintf(stderr, "psctl model %s: %s\nsee 'psctl model --help'\n", kind,
            o->out ? "unexpected argument" : "-o FILE is required");
    return 2;
  }
  ps_errbuf eb;
  if (o->name && ps_name_check("model", o->name, &eb) < 0) { /* as psctl submit --name */
    fprintf(stderr, "psctl model %s: --name: %s\n", kind, eb.msg);
    return 2;
  }
  return 0;
}

/* psctl_model_write checks the packed graph BUF (LEN bytes, freed here)
 * and writes it to PATH; returns the exit code. */
static int psctl_model_write(const char *cmd, uint8_t *buf, size_t len, const char *path) {
  ps_errbuf eb;
  psw_graph *g;
  if (psw_graph_load(buf, len, &g, &eb)) {
    fprintf(stderr, "psctl model %s: built a bad graph: %s\n", cmd, eb.msg);
    free(buf);
    return 1;
  }
  unsigned long long np = (unsigned long long)psw_graph_nparams(g);
  psw_graph_free(g);
  FILE *f = fopen(path, "wb");
  int ok = f && fwrite(buf, 1, len, f) == len;
  if (f && fclose(f)) ok = 0;
  int e = errno;
  free(buf);
  if (!ok) {
    fprintf(stderr, "psctl model %s: cannot write '%s': %s\n", cmd, path, strerror(e));
    return 1;
  }
  printf("wrote %s: %llu parameters, %zu bytes\n", path, np, len);
  return 0;
}

/* psctl_model_build packs the MLP NAME of LAYERS[0..N) with ACT between
 * layers, checks it and writes it to PATH; returns the exit code. */
static int psctl_model_build(const char *cmd, const char *name, const uint32_t *layers, size_t n,
                             ps_gpu_act act, const char *path) {
  uint8_t *buf;
  size_t len;
  ps_errbuf eb;
  if (psw_graph_mlp_pack(name, layers, n, act, &buf, &len, &eb)) {
    fprintf(stderr, "psctl model %s: %s\n", cmd, eb.msg);
    return 2;
  }
  return psctl_model_write(cmd, buf, len, path);
}

/* parse_layers reads "784,256,10" into LAYERS (at most MAX), each width
 * read as every integer flag is (ps_flag_uint, 1..2^24).  The count, or
 * -1: with a message naming the item in EB when a width is bad, with
 * EB's message empty when the list's shape is (an empty item, a trailing
 * comma, more than MAX). */
static int parse_layers(const char *s, uint32_t *layers, int max, ps_errbuf *eb) {
  int n = 0;
  eb->msg[0] = 0;
  while (s && *s) {
    size_t len = strcspn(s, ",");
    char flag[40];
    if (n == max || len == 0 || (s[len] == ',' && !s[len + 1])) return -1;
    snprintf(flag, sizeof flag, "--layers item %d", n + 1);
    char *item = strndup(s, len);
    uint64_t v = 0;
    int rc = item ? ps_flag_uint(flag, item, 1, 1u << 24, &v, eb)
                  : ps_errf(eb, PS_ENOMEM, "out of memory");
    free(item);
    if (rc < 0) return -1;
    layers[n++] = (uint32_t)v;
    s += len + (s[len] == ',');
  }
  return s ? n : -1;
}

static int psctl_model_mlp(int argc, char **argv) {
  psctl_model_opts o;
  int code = psctl_model_args(argc, argv, &o);
  if (code) return code < 0 ? 0 : code;
  uint32_t layers[64];
  ps_errbuf eb;
  int n = parse_layers(o.layers, layers, 64, &eb);
  ps_gpu_act act;
  if (n < 0 && eb.msg[0]) {
    fprintf(stderr, "psctl model mlp: %s\n", eb.msg);
    return 2;
  }
  if (n < 2) {
    fprintf(stderr, "psctl model mlp: --layers wants 2 to 64 positive widths like 784,256,10, got '%s'\n",
            o.layers ? o.layers : "");
    return 2;
  }
  if (ps_gpu_act_parse(o.act, &act) || act == PS_GPU_ACT_NONE) {
    fprintf(stderr, "psctl model mlp: unknown activation '%s' (expected relu, sigmoid or tanh)\n", o.act);
    return 2;
  }
  return psctl_model_build("mlp", o.name ? o.name : "mlp", layers, (size_t)n, act, o.out);
}

static int psctl_model_logreg(int argc, char **argv) {
  psctl_model_opts o;
  int code = psctl_model_args(argc, argv, &o);
  if (code) return code < 0 ? 0 : code;
  if (!o.inputs || !o.classes) { /* the values given were checked by psctl_model_args */
    fprintf(stderr, "psctl model logreg: %s is required\n",
            !o.inputs ? "--inputs N" : "--classes K");
    return 2;
  }
  uint32_t layers[2] = {(uint32_t)o.inputs, (uint32_t)o.classes};
  return psctl_model_build("logreg", o.name ? o.name : "logreg", layers, 2, PS_GPU_ACT_NONE,
                           o.out);
}

static int psctl_model_ctr(int argc, char **argv) {
  psctl_model_opts o;
  int code = psctl_model_args(argc, argv, &o);
  if (code) return code < 0 ? 0 : code;
  if (!o.fields || !o.dim || !o.dense) {
    fprintf(stderr, "psctl model ctr: --fields F, --dim D and --dense N are required\n");
    return 2;
  }
  uint32_t layers[62];
  ps_errbuf eb;
  int n = o.layers ? parse_layers(o.layers, layers, 62, &eb) : 0;
  if (n < 0 && eb.msg[0]) {
    fprintf(stderr, "psctl model ctr: %s\n", eb.msg);
    return 2;
  }
  if (n < 0) {
    fprintf(stderr, "psctl model ctr: --layers wants up to 62 positive widths like 256,128, got '%s'\n",
            o.layers);
    return 2;
  }
  if (strcmp(o.pooling, "sum") && strcmp(o.pooling, "mean")) {
    fprintf(stderr, "psctl model ctr: unknown pooling '%s' (expected sum or mean)\n", o.pooling);
    return 2;
  }
  psw_ctr_shape c = {(uint32_t)o.fields, (uint32_t)o.dim, (uint32_t)o.dense, layers, (size_t)n,
                     o.hash_buckets, !strcmp(o.pooling, "mean")};
  uint8_t *buf;
  size_t len;
  if (psw_graph_ctr_pack(o.name ? o.name : "ctr", &c, &buf, &len, &eb)) {
    fprintf(stderr, "psctl model ctr: %s\n", eb.msg);
    return 2;
  }
  return psctl_model_write("ctr", buf, len, o.out);
}

static int psctl_model_show(int argc, char **argv) {
  if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    fputs(psctl_model_usage, stdout);
    return 0;
  }
  if (argc != 2) {
    fprintf(stderr, "psctl model show: %s\nsee 'psctl model --help'\n",
            argc < 2 ? "one graph FILE is required" : "one graph FILE only");
    return 2;
  }
  psw_graph *g;
  ps_errbuf eb;
  int err = psw_graph_load_file(argv[1], &g, &eb);
  if (err) {
    fprintf(stderr, "psctl model show: %s\n", eb.msg);
    /* The usage's promise: 1 when the file cannot be read, 2 when it is bad. */
    return err == PS_ENOENT || err == PS_EIO || err == PS_ENOMEM ? 1 : 2;
  }
  psw_graph_print(g, stdout);
  psw_graph_free(g);
  return 0;
}

static const struct {
  const char *name;
  int (*main)(int argc, char **argv);
} psctl_model_cmds[] = {
    {"mlp", psctl_model_mlp},
    {"logreg", psctl_model_logreg},
    {"ctr", psctl_model_ctr},
    {"show", psctl_model_show},
};

/* psctl_model_main dispatches "model mlp|logreg|show" (see psctl.h). */
int psctl_model_main(int argc, char **argv) {
  if (argc < 2) {
    fputs("psctl model: which kind? mlp, logreg, ctr or show\nsee 'psctl model --help'\n", stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(psctl_model_usage, stdout);
    return 0;
  }
  for (size_t i = 0; i < sizeof psctl_model_cmds / sizeof psctl_model_cmds[0]; i++)
    if (!strcmp(argv[1], psctl_model_cmds[i].name)) return psctl_model_cmds[i].main(argc - 1, argv + 1);
  fprintf(stderr, "psctl model: unknown kind '%s' (mlp, logreg, ctr or show)\nsee 'psctl model --help'\n",
          argv[1]);
  return 2;
}
