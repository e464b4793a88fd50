/* psw: the worker runtime.
 *
 *   psw --config FILE [--model NAME] [--rank R [--workers W]] [--device D]
 *       [--epochs N] [--batch N] [--metrics-csv FILE] [--overlap|--no-overlap]
 *       [--blas-threads N] [--slowdown F] [--quiet]
 *   psw --config FILE [--model NAME] --evaluate
 *   psw --blas-kernel
 *
 * Defaults come from the YAML file's training and workers sections.  The
 * model graph is fetched from the cluster.  Without --rank the worker
 * registers with the coordinator shard, which hands out its rank, the
 * world size and its data partitions.  Progress goes to stderr; the last
 * line on stdout is one JSON object with the run's results.  --evaluate
 * reads the model's current parameters once, evaluates the test set and
 * prints {"model","test_loss","test_accuracy","test_auc","test_logloss",
 * "version","wall_s"}.  A model with an embedding table trains on
 * data.format criteo: its rows are pulled and pushed per step by key.
 *
 * The OpenBLAS kernel: before anything else psw may execute itself again
 * with OPENBLAS_CORETYPE set, when OpenBLAS picked a generic kernel on a
 * CPU with AVX2 or AVX-512 (gpu/ps_gpu_blas.h); a user-set
 * OPENBLAS_CORETYPE always stands.  The device line names the kernel.
 * --blas-kernel prints the kernel psw forces on this machine (the value
 * for OPENBLAS_CORETYPE; nothing when OpenBLAS's choice stands) and exits.
 *
 * Exit codes: 0 success, 1 runtime failure (a shard down past
 * workers.retry_ms, ...), 2 bad usage, configuration, data or graph,
 * 128+N when stopped by signal N (SIGHUP 129, SIGINT 130, SIGTERM 143) after the
 * current step. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_config.h"
#include "ps_fpu.h"
#include "ps_gpu.h"
#include "ps_gpu_blas.h"
#include "ps_log.h"
#include "ps_pb.h"
#include "ps_proc.h"
#include "ps_rpc.h"
#include "ps_stop.h"
#include "ps_version.h"
#include "psw_train.h"

/* Command-line values; NULL / -1 means "from the YAML file". */
typedef struct psw_args {
  const char *config, *model, *device, *metrics_csv, *aggregator;
  long rank, workers, epochs, batch, blas_threads;
  double slowdown;  /* 0: from the YAML file */
  int overlap, quiet, evaluate, blas_kernel; /* overlap: -1 = the YAML's */
  int help, version;
} psw_args;

static const char psw_usage[] =
    "usage: psw --config FILE [--model NAME] [--rank R [--workers W]] [--device auto|cpu|cuda[:N]]\n"
    "           [--epochs N] [--batch N] [--metrics-csv FILE] [--overlap|--no-overlap]\n"
    "           [--blas-threads N] [--slowdown F] [--aggregator NAME] [--quiet]\n"
    "       psw --config FILE [--model NAME] --evaluate\n"
    "       psw --blas-kernel\n"
    "       psw --version\n"
    "Trains model NAME (default training.model); the graph is fetched from the cluster.\n"
    "--metrics-csv FILE appends a row per epoch to FILE (a header line first when FILE is\n"
    "empty; the file is opened at start, so a bad path fails at once); --quiet drops the\n"
    "progress lines (the log's other lines and the JSON line stay).\n"
    "--device D (default workers.device): auto (a CUDA device when there is one, else\n"
    "the CPU), cpu, cuda (= cuda:0) or cuda:N, N from 0 to 999 without leading zeros.\n"
    "Without --rank the worker registers with the coordinator shard for its rank, the\n"
    "world size and its data partitions; --rank R runs as rank R among W workers (default\n"
    "workers.count) without registering.  --slowdown F (>= 1) sleeps (F-1) x the compute\n"
    "time after each step (default workers.slowdown[rank]).  --aggregator NAME pushes\n"
    "and pulls through aggregator NAME of the 'aggregators' list (default\n"
    "workers.aggregator), and straight to the root shards once it fails.  --evaluate evaluates the\n"
    "model's current parameters on the test set once and prints one JSON line.\n"
    "A model with an embedding table (psctl model ctr) reads data.format criteo;\n"
    "each step pulls the rows of the batch's distinct ids and pushes their\n"
    "gradients; its JSON lines add test_auc and test_logloss.\n"
    "OpenBLAS kernel: where OpenBLAS picks a generic kernel on a CPU with AVX2 or\n"
    "AVX-512, psw runs Haswell or SkylakeX instead (it executes itself again with\n"
    "OPENBLAS_CORETYPE set); a user-set OPENBLAS_CORETYPE always stands.  The device\n"
    "line of the log and of psctl status names the kernel that runs and who chose it.\n"
    "--blas-kernel prints the kernel psw picks on this machine (a value for\n"
    "OPENBLAS_CORETYPE; nothing when OpenBLAS's own choice stands) and exits 0.\n"
    "--version prints the build (commit and its UTC date) and exits 0.\n"
    "Short forms: -c (--config), -m (--model), -r (--rank), -w (--workers), -d (--device),\n"
    "-e (--epochs), -b (--batch), -M (--metrics-csv), -O (--overlap), -N (--no-overlap),\n"
    "-T (--blas-threads), -S (--slowdown), -A (--aggregator), -E (--evaluate), -q (--quiet),\n"
    "-h (--help); --version and --blas-kernel have none (--version has none in psd and\n"
    "psctl either).\n"
    "Exit status: 0 done, 1 a runtime failure (a shard or the coordinator unreachable\n"
    "past workers.retry_ms, a refusal), 2 bad usage, configuration, data or graph,\n"
    "128+N stopped by signal N after the current step (SIGHUP 129, SIGINT 130, SIGTERM 143;\n"
    "a second one ends psw at once).\n";

/* psw_num parses an integer option in [MIN, MAX] into *OUT; 0 or -1. */
static int psw_num(const char *name, const char *s, long min, long max, long *out) {
  uint64_t v = 0;
  char flag[40];
  ps_errbuf eb;
  snprintf(flag, sizeof flag, "--%s", name);
  if (ps_flag_uint(flag, s, (uint64_t)min, (uint64_t)max, &v, &eb) < 0) {
    fprintf(stderr, "psw: %s\n", eb.msg);
    return -1;
  }
  *out = (long)v;
  return 0;
}

/* psw_factor parses a straggler factor (a number from 1 to 1000) into
 * *OUT; 0 or -1. */
static int psw_factor(const char *s, double *out) {
  ps_errbuf eb;
  if (ps_flag_number("--slowdown", s, 1, 1000, out, &eb) < 0) {
    fprintf(stderr, "psw: %s\n", eb.msg);
    return -1;
  }
  return 0;
}

/* psw_parse parses argv into *A; 0, or the exit code (-1: done, exit 0:
 * --help, --blas-kernel).  A usage error is said in one line, then a
 * pointer to --help (as psctl's commands do), not the whole help text. */
static int psw_parse(int argc, char **argv, psw_args *a) {
  static const struct option opts[] = {
      {"config", 1, 0, 'c'},  {"model", 1, 0, 'm'},       {"rank", 1, 0, 'r'},
      {"workers", 1, 0, 'w'}, {"device", 1, 0, 'd'},      {"epochs", 1, 0, 'e'},
      {"batch", 1, 0, 'b'},   {"metrics-csv", 1, 0, 'M'}, {"no-overlap", 0, 0, 'N'}, {"overlap", 0, 0, 'O'},
      {"blas-threads", 1, 0, 'T'}, {"quiet", 0, 0, 'q'},  {"help", 0, 0, 'h'},
      {"slowdown", 1, 0, 'S'},     {"evaluate", 0, 0, 'E'}, {"blas-kernel", 0, 0, 'K'},
      {"aggregator", 1, 0, 'A'},   {"version", 0, 0, 'V'},
      {0, 0, 0, 0}};
  *a = (psw_args){.rank = -1, .workers = -1, .epochs = -1, .batch = -1, .blas_threads = -1, .overlap = -1};
  int ch, bad = 0;
  /* getopt's messages name argv[0]: "psw", as psd's and psctl's say
   * theirs, not the path psw was started by */
  char *prog = argv[0];
  argv[0] = "psw";
  while ((ch = getopt_long(argc, argv, "c:m:r:w:d:e:b:M:NOT:qhS:EA:", opts, NULL)) != -1) {
    switch (ch) {
      case 'c': a->config = optarg; break;
      case 'm': a->model = optarg; break;
      case 'd': a->device = optarg; break;
      case 'M': a->metrics_csv = optarg; break;
      case 'A': a->aggregator = optarg; break;
      case 'N': a->overlap = 0; break;
      case 'O': a->overlap = 1; break;
      case 'q': a->quiet = 1; break;
      case 'E': a->evaluate = 1; break;
      case 'K': a->blas_kernel = 1; break;
      case 'S': bad |= psw_factor(optarg, &a->slowdown); break;
      /* the range said is the range taken: a 0 for a count is refused here, by name */
      case 'r': bad |= psw_num("rank", optarg, 0, 4095, &a->rank); break;
      case 'w': bad |= psw_num("workers", optarg, 1, 4096, &a->workers); break;
      case 'e': bad |= psw_num("epochs", optarg, 1, 100000, &a->epochs); break;
      case 'b': bad |= psw_num("batch", optarg, 1, 1048576, &a->batch); break;
      case 'T': bad |= psw_num("blas-threads", optarg, 1, 256, &a->blas_threads); break;
      case 'h': a->help = 1; break;
      case 'V': a->version = 1; break;
      default: bad = 1;
    }
  }
  argv[0] = prog;
  /* after the whole line: a bad option before --help is still a usage error */
  if (!bad && a->version && !a->help && optind < argc) { /* a script's typo must not read as a build */
    fprintf(stderr, "psw: --version takes no argument, got '%s'\nsee 'psw --help'\n", argv[optind]);
    return 2;
  }
  if (!bad && (a->help || a->version)) {
    if (a->help) fputs(psw_usage, stdout);
    else ps_version_print("psw");
    return -1;
  }
  if (!bad && a->blas_kernel && optind == argc) {
    const char *k = ps_gpu_blas_kernel();
    if (k) puts(k);
    return -1;
  }
  /* the device rule of ps_gpu.h, which ps_gpu_open applies; said with
   * the value, before anything runs */
  ps_errbuf deb;
  if (!bad && a->device && ps_gpu_device_parse(a->device, NULL, &deb) < 0) {
    fprintf(stderr, "psw: --device takes %s, not '%s'\n", PS_GPU_DEVICE_RULE, a->device);
    bad = 1;
  }
  const char *why = optind < argc ? "unexpected argument"
                    : !a->config ? "--config is required"
                    : a->workers >= 0 && a->rank < 0 ? "--workers goes with --rank (without "
                                                       "--rank the coordinator hands both out)"
                                                     : NULL;
  if (!bad && why) {
    fprintf(stderr, "psw: %s\n", why);
    bad = 1;
  }
  if (bad) fputs("see 'psw --help'\n", stderr);
  return bad ? 2 : 0;
}

/* psw_opts merges A over the loaded config into *O; 0 or 2. */
static int psw_opts(const psw_args *a, const ps_config *cfg, psw_train_opts *o) {
  *o = (psw_train_opts){
      .cfg = cfg, .model = a->model ? a->model : cfg->training.model,
      .register_worker = a->rank < 0, .slowdown = a->slowdown,
      .rank = a->rank < 0 ? 0 : (uint32_t)a->rank,
      .workers = a->workers < 0 ? cfg->workers.count : (uint32_t)a->workers,
      .device = a->device ? a->device : cfg->workers.device,
      .epochs = a->epochs < 0 ? cfg->training.epochs : (uint32_t)a->epochs,
      .batch = a->batch < 0 ? cfg->training.batch_size : (uint32_t)a->batch,
      .metrics_csv = a->metrics_csv, .overlap = a->overlap >= 0 ? a->overlap : cfg->workers.overlap,
      .blas_threads = a->blas_threads < 0 ? (int)cfg->workers.blas_threads : (int)a->blas_threads,
      .quiet = a->quiet, .stop = &ps_stop_signal};
  ps_errbuf eb, rk;
  /* the worker count --rank is held to: --workers, or the file's when none is given */
  if (o->rank >= o->workers)
    snprintf(rk.msg, sizeof rk.msg, "--rank %u must be below the worker count %u (%s)", o->rank,
             o->workers, a->workers < 0 ? "workers.count: give --workers" : "--workers");
  const char *why = !o->model ? "no model: give --model or set training.model"
                    : ps_name_check("model", o->model, &eb) < 0 ? eb.msg
                    : !o->workers ? "--workers must be at least 1"
                    : o->rank >= o->workers ? rk.msg
                    : !o->epochs ? "--epochs must be at least 1"
                    : !o->batch ? "--batch must be at least 1"
                    : o->blas_threads < 1 ? "--blas-threads must be at least 1" : NULL;
  if (why) fprintf(stderr, "psw: %s\n", why);
  return why ? 2 : 0;
}

/* psw_signals installs the stop handlers (no SA_RESTART: blocking waits
 * return and notice the request). */
static void psw_signals(void) {
  ps_stop_install(0, 1);
  signal(SIGPIPE, SIG_IGN);
}

/* psw_exit_code maps a run's outcome to the exit code (see the top of
 * this file). */
static int psw_exit_code(int err, const psw_train_result *r) {
  if (ps_stop_signal) return 128 + ps_stop_signal;
  return err == 0 ? 0 : r->bad_input ? 2 : 1;
}

/* main: see the top of this file for the exit codes. */
int main(int argc, char **argv) {
  ps_proc_start(); /* first: fds 0-2 open, no signal blocked (ps_proc.h) */
  ps_grpc_env();   /* before any thread (ps_rpc.h) */
  ps_log_init("psw", LOG_INFO);
  ps_errbuf eb = {{0}};
  /* First: it may execute psw again (nothing else done yet is lost). */
  if (ps_gpu_blas_select(argv, &eb) < 0)
    ps_warn("%s; going on with OpenBLAS's own kernel (slower)", eb.msg);
  ps_fpu_flush_subnormals(); /* before any thread: they inherit it */
  psw_args a;
  int rc = psw_parse(argc, argv, &a);
  if (rc) return rc < 0 ? ps_proc_flush_stdout("psw", "the output", 0) : rc;
  ps_config cfg;
  if (ps_config_load(&cfg, a.config, &eb) < 0) {
    fprintf(stderr, "psw: %s\n", eb.msg);
    return 2;
  }
  /* keys set in vain, a limit below the partitions: said as psd says them */
  ps_config_print_warnings(&cfg, stderr);
  /* the metrics file is checked now, not after the first epoch's training */
  FILE *mf = a.metrics_csv ? fopen(a.metrics_csv, "a") : NULL;
  if (a.metrics_csv && !mf) {
    fprintf(stderr, "psw: --metrics-csv '%s': %s\n", a.metrics_csv, strerror(errno));
    rc = 2;
    goto release_config;
  }
  if (mf) fclose(mf);
  if (a.aggregator) { /* the flag overrides workers.aggregator */
    if (!ps_config_agg(&cfg, a.aggregator)) {
      fprintf(stderr, "psw: %s: no aggregator named '%s' in the 'aggregators' list\n", a.config,
              a.aggregator);
      rc = 2;
      goto release_config;
    }
    char *name = strdup(a.aggregator);
    if (!name) {
      rc = 1;
      goto release_config;
    }
    free(cfg.workers.aggregator);
    cfg.workers.aggregator = name;
  }
  psw_train_opts o;
  if ((rc = psw_opts(&a, &cfg, &o)) != 0) goto release_config;
  psw_signals();
  psw_train_result r;
  if (a.evaluate) {
    uint64_t version;
    int err = psw_train_evaluate(&o, &r, &version, &eb);
    /* stopped: the signal came before the figures were (a complete
     * evaluation's line says false; the exit status still says the signal) */
    int stopped = ps_stop_signal && err == PS_ESHUTDOWN;
    if (err < 0 && !stopped) ps_err("evaluate '%s': %s (%s)", o.model, eb.msg, ps_errname(err));
    else if (err < 0) ps_info("evaluate '%s': stopped by %s before it finished", o.model,
                              strsignal((int)ps_stop_signal));
    if (err == 0 || stopped) psw_train_eval_json(stdout, o.model, &r, err == 0 ? version : 0, stopped);
    rc = psw_exit_code(err, &r);
    goto release_config;
  }
  int err = psw_train_run(&o, &r, &eb);
  char who[32];
  if (err < 0 && !(ps_stop_signal && err == PS_ESHUTDOWN))
    ps_err("%s: %s (%s)", psw_train_who(&r, who, sizeof who), eb.msg, ps_errname(err));
  psw_train_json(stdout, o.model, o.batch, &r);
  psw_train_result_free(&r);
  rc = psw_exit_code(err, &r);
release_config:
  ps_config_release(&cfg);
  /* the JSON line that could not be written turns 0 into 1 */
  return ps_proc_flush_stdout("psw", "the result line", rc);
}
