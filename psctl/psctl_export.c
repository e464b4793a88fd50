/* psctl export: a model's parameters from every shard, as an .npz file.
 *
 * GetModel from the first shard that answers gives the spec; the chunk
 * layout follows from it and the config's shard ids (ps_layout_build,
 * the same computation every process makes).  Export from every shard at
 * once gives each shard's chunks.  Invariants checked before anything is
 * written:
 *   1. every chunk arrives exactly once, from the shard that holds it;
 *   2. each reply's values are exactly its chunks' elements.
 * The file is written atomically (ps_npz_write), one float32 member per
 * tensor with the tensor's shape, so it loads in NumPy and PyTorch.  A
 * model with embedding tables is streamed instead (ps_npz_stream,
 * psctl_export_rows.c): the tensors, then per table "NAME.rows" and
 * "NAME.keys". */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_model.h"
#include "ps_npz.h"
#include "ps_pb.h"
#include "psctl.h"
#include "psctl_export_rows.h"

#define PSCTL_EXPORT_SPEC_TIMEOUT_MS 3000

static const char psctl_export_usage[] =
    "usage: psctl export --model NAME -o FILE.npz [--config FILE] [--timeout-ms N]\n"
    "Reads every parameter of model NAME from all shards and writes them to FILE.npz, one\n"
    "float32 array per tensor with its shape (numpy.load reads it), and for each embedding\n"
    "table NAME.rows (float32, [rows, dim]) and NAME.keys (uint64, [rows]): every row the\n"
    "shards hold, read page by page (not one instant while training runs; zip64 past 4 GiB).\n"
    "The file is replaced atomically (-o is also --output; a symlink is followed, and a\n"
    "directory, device or FIFO refused; a stop by signal leaves no partial file, where\n"
    "the filesystem has O_TMPFILE; elsewhere, NFS say, only SIGINT, SIGTERM and SIGHUP\n"
    "remove FILE.npz.tmp.PID).\n"
    "--timeout-ms bounds each shard's export and each page of rows (default 60000; --timeout\n"
    "is the same flag, as psctl status and bench spell it).\n"
    "Short forms: -m NAME (--model), -c FILE (--config), -h (--help).\n"
    "Exit status: 0, 1 when a shard is down or not the shard the file says (psctl status\n"
    "shows MISMATCH), the model is unknown, the export is inconsistent or FILE.npz cannot\n"
    "be written (nothing is written then), 2 on bad usage or a bad configuration, -o in a\n"
    "directory that does not exist included (a link to one too): checked before anything\n"
    "is read.\n";

typedef struct psctl_export_opts {
  const char *config, *model, *out;
  int timeout_ms;
} psctl_export_opts;

/* psctl_export_args parses argv into O; returns 0, -1 for --help, or 2. */
static int psctl_export_args(int argc, char **argv, psctl_export_opts *o) {
  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'}, {"model", required_argument, 0, 'm'},
      {"output", required_argument, 0, 'o'}, {"timeout-ms", required_argument, 0, 't'},
      {"timeout", required_argument, 0, 'T'}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  memset(o, 0, sizeof *o);
  o->timeout_ms = 60000;
  optind = 1;
  int c, bad = 0;
  ps_errbuf eb;
  while (!bad && (c = getopt_long(argc, argv, "c:m:o:h", opts, NULL)) != -1) {
    uint64_t v;
    switch (c) {
      case 'c': o->config = optarg; break;
      case 'm': o->model = optarg; break;
      case 'o': o->out = optarg; break;
      case 't':
      case 'T':
        bad = psctl_parse_u64("export", c == 't' ? "timeout-ms" : "timeout", optarg, 1, 3600000,
                              &v) < 0;
        if (!bad) o->timeout_ms = (int)v;
        break;
      case 'h': fputs(psctl_export_usage, stdout); return -1;
      default: bad = 1; break;
    }
  }
  if (!bad && optind < argc) {
    fprintf(stderr, "psctl export: unexpected argument '%s'\n", argv[optind]);
    bad = 1;
  } else if (!bad && (!o->model || !o->out || !*o->out)) {
    fprintf(stderr, "psctl export: %s\n", !o->model ? "--model NAME is required"
                                         : !o->out  ? "-o FILE is required"
                                                    : "-o names no file (an empty path)");
    bad = 1;
  } else if (!bad && ps_name_check("model", o->model, &eb) < 0) {
    fprintf(stderr, "psctl export: %s\n", eb.msg);
    bad = 1;
  }
  if (bad) fputs("see 'psctl export --help'\n", stderr);
  return bad ? 2 : 0;
}

/* psctl_export_spec asks the shards in order for MODEL's spec until one
 * answers.  Returns 0 with *REPLY (caller frees with
 * protobuf_c_message_free_unpacked), or 1 after printing why not. */
static int psctl_export_spec(psctl_cluster *c, const char *model, Ps__GetModelReply **reply) {
  Ps__GetModelRequest req = PS__GET_MODEL_REQUEST__INIT;
  req.name = (char *)model;
  for (size_t i = 0; i < c->cfg.nshards; i++) {
    ps_errbuf eb = {""};
    ProtobufCMessage *resp = NULL;
    int err = ps_rpc_call(c->rpc[i], "/ps.Ps/GetModel", &req.base,
                          &ps__get_model_reply__descriptor, &resp,
                          PSCTL_EXPORT_SPEC_TIMEOUT_MS, &eb);
    const ps_shard_conf *s = &c->cfg.shards[i];
    err = psctl_explain_shard(c, i, err, &eb, PSCTL_EXPORT_SPEC_TIMEOUT_MS);
    if (err == 0 && ((Ps__GetModelReply *)resp)->model) {
      *reply = (Ps__GetModelReply *)resp;
      return 0;
    }
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
    if (err == 0 || err == PS_ENOENT) {
      fprintf(stderr, "psctl export: unknown model '%s' (shard %" PRIu32 " has no such model)\n",
              model, s->id);
      return 1;
    }
    fprintf(stderr, "psctl export: shard %" PRIu32 " (%s) %s: %s\n", s->id, s->grpc_addr,
            psctl_call_failed(err), eb.msg[0] ? eb.msg : ps_strerror(err));
  }
  fprintf(stderr, "psctl export: no shard answered; nothing written\n");
  return 1;
}

/* The model being assembled. */
typedef struct psctl_export_asm {
  const ps_layout *l;
  float *values;       /* l->nparams floats: tensors at their model_offset */
  int32_t *from;       /* per chunk: index of the shard it came from, -1: none yet */
} psctl_export_asm;

/* psctl_export_place copies the chunks of shard I's reply R into A.
 * Returns 0, or 1 after printing what is inconsistent.  The shards were
 * found to be the file's (psctl_check_cluster), so chunks that do not fit
 * the layout come from another spec of the model than the one psctl read
 * first: it was replaced (--replace) between psctl's GetModel and this
 * shard's Export. */
static int psctl_export_place(psctl_export_asm *a, const psctl_cluster *c, size_t i,
                              const Ps__ExportReply *r) {
  ps_errbuf eb;
  if (ps_layout_place(a->l, (uint32_t)i, r->chunk_ids, r->n_chunk_ids, r->values.data,
                      r->values.len, a->values, a->from, &eb) >= 0)
    return 0;
  char *guess = strstr(eb.msg, " (does the config"); /* ps_layout_place's guess: checked */
  if (guess) *guess = 0;
  fprintf(stderr, "psctl export: shard %" PRIu32 " (%s) %s: its chunks do not fit the model's "
          "spec psctl read first; the model was most likely replaced (psctl submit --replace) "
          "during the export: run it again\n", c->cfg.shards[i].id, c->cfg.shards[i].grpc_addr,
          eb.msg);
  return 1;
}

/* psctl_export_missing says, once per shard, that shard I answered
 * without chunks it should hold (the layout puts them there): it stopped,
 * restarted or lost the model between psctl's calls.  1 when it did, else 0. */
static int psctl_export_missing(const psctl_export_asm *a, const psctl_cluster *c, size_t i) {
  size_t want = 0, lack = 0, first = 0;
  for (size_t ch = 0; ch < a->l->nchunks; ch++) {
    if (a->l->chunks[ch].shard != i) continue;
    want++;
    if (a->from[ch] < 0 && !lack++) first = ch;
  }
  if (!lack) return 0;
  const ps_chunk *cc = &a->l->chunks[first];
  fprintf(stderr, "psctl export: shard %" PRIu32 " (%s) did not answer its part of the model: "
          "its reply lacks %zu of the %zu chunks it holds (the first: chunk %zu, tensor '%s', "
          "elements %" PRIu64 "..); it stopped, restarted or lost the model during the export: "
          "run it again\n", c->cfg.shards[i].id, c->cfg.shards[i].grpc_addr, lack, want, first,
          a->l->tensors[cc->tensor].name, cc->offset);
  return 1;
}

/* psctl_export_gather asks every shard for its chunks and fills A.
 * Returns 0, or 1 after printing which shard failed or what is missing. */
static int psctl_export_gather(psctl_export_asm *a, psctl_cluster *c, const char *model,
                               int timeout_ms) {
  size_t n = c->cfg.nshards;
  psctl_reply *r = calloc(n, sizeof *r);
  if (!r) {
    fprintf(stderr, "psctl export: out of memory\n");
    return 1;
  }
  Ps__ExportRequest req = PS__EXPORT_REQUEST__INIT;
  req.model = (char *)model;
  int failed = psctl_call_all(c, "/ps.Ps/Export", &req.base, &ps__export_reply__descriptor,
                              timeout_ms, r);
  int code = failed != 0;
  for (size_t i = 0; failed > 0 && i < n; i++)
    if (r[i].err)
      fprintf(stderr, "psctl export: shard %" PRIu32 " (%s) %s: %s\n", c->cfg.shards[i].id,
              c->cfg.shards[i].grpc_addr, r[i].err == PS_ENOENT ? "does not have the model" :
              psctl_call_failed(r[i].err), r[i].eb.msg[0] ? r[i].eb.msg : ps_strerror(r[i].err));
  for (size_t i = 0; !code && i < n; i++)
    code = psctl_export_place(a, c, i, (const Ps__ExportReply *)r[i].resp);
  for (size_t i = 0, placed = !code; placed && i < n; i++) /* every shard short of its chunks */
    code |= psctl_export_missing(a, c, i);
  psctl_replies_free(r, n);
  free(r);
  if (code) fprintf(stderr, "psctl export: nothing written\n");
  return code;
}

/* psctl_export_stream writes the tensors ARR (of layout L) and then the
 * embedding tables of SPEC, from the shards of C, to PATH member by
 * member (ps_npz_stream: tables need not fit in memory, zip64 past 4
 * GiB).  Returns the exit code. */
static int psctl_export_stream(psctl_cluster *c, const ps_npz_array *arr, const ps_layout *l,
                               const Ps__ModelSpec *spec, const char *path, int timeout_ms) {
  ps_npz_stream *z;
  ps_errbuf eb = {""};
  if (ps_npz_stream_open(&z, path, &eb) < 0) {
    fprintf(stderr, "psctl export: %s\n", eb.msg);
    return 1;
  }
  int rc = 0;
  for (size_t t = 0; rc == 0 && t < l->ntensors; t++) {
    uint64_t ne = 1;
    for (uint32_t d = 0; d < arr[t].ndim; d++) ne *= arr[t].shape[d];
    rc = ps_npz_stream_begin(z, arr[t].name, PS_NPZ_F4, arr[t].ndim, arr[t].shape, &eb);
    if (rc == 0) rc = ps_npz_stream_write(z, arr[t].data, ne, &eb);
    if (rc == 0) rc = ps_npz_stream_end(z, &eb);
  }
  if (rc < 0) {
    fprintf(stderr, "psctl export: %s\n", eb.msg);
    ps_npz_stream_abort(z);
    return 1;
  }
  size_t ntables;
  uint64_t nrows;
  if (psctl_export_rows(c, spec, z, path, timeout_ms, &ntables, &nrows)) {
    ps_npz_stream_abort(z);
    fprintf(stderr, "psctl export: nothing written\n");
    return 1;
  }
  if (ps_npz_stream_close(z, &eb) < 0) {
    fprintf(stderr, "psctl export: %s\n", eb.msg);
    return 1;
  }
  printf("wrote model '%s' to %s: %zu tensor%s, %" PRIu64 " parameters, %zu embedding table%s, "
         "%" PRIu64 " rows\n", spec->name, path, l->ntensors, l->ntensors == 1 ? "" : "s",
         l->nparams, ntables, ntables == 1 ? "" : "s", nrows);
  return 0;
}

/* psctl_export_write writes the assembled tensors of SPEC to PATH, and
 * its embedding tables from the shards of C.  Returns the exit code. */
static int psctl_export_write(psctl_cluster *c, const psctl_export_asm *a,
                              const Ps__ModelSpec *spec, const char *path, int timeout_ms) {
  const ps_layout *l = a->l;
  ps_npz_array *arr = calloc(l->ntensors, sizeof *arr);
  uint64_t *shapes = calloc(l->ntensors * PS_NPZ_MAX_DIMS, sizeof *shapes);
  int code = 1;
  ps_errbuf eb = {""};
  if (!arr || !shapes) {
    fprintf(stderr, "psctl export: out of memory\n");
    goto out_free;
  }
  for (size_t t = 0; t < l->ntensors; t++) {
    const Ps__TensorSpec *ts = spec->tensors[t];
    if (ts->n_shape > PS_NPZ_MAX_DIMS) {
      fprintf(stderr, "psctl export: tensor '%s' has %zu dimensions, at most %d fit\n", ts->name,
              ts->n_shape, PS_NPZ_MAX_DIMS);
      goto out_free;
    }
    for (size_t d = 0; d < ts->n_shape; d++) shapes[t * PS_NPZ_MAX_DIMS + d] = ts->shape[d];
    arr[t] = (ps_npz_array){ts->name, (uint32_t)ts->n_shape, &shapes[t * PS_NPZ_MAX_DIMS],
                            a->values + l->tensors[t].model_offset};
  }
  if (c && psctl_export_has_rows(spec)) {
    code = psctl_export_stream(c, arr, l, spec, path, timeout_ms);
    goto out_free;
  }
  if (ps_npz_write(path, arr, l->ntensors, &eb) < 0) {
    fprintf(stderr, "psctl export: %s\n", eb.msg);
    goto out_free;
  }
  printf("wrote model '%s' to %s: %zu tensors, %" PRIu64 " parameters\n", spec->name, path,
         l->ntensors, l->nparams);
  code = 0;
out_free:
  free(shapes);
  free(arr);
  return code;
}

/* psctl_export_model exports SPEC from cluster C to PATH; exit code. */
static int psctl_export_model(psctl_cluster *c, const Ps__ModelSpec *spec, const char *path,
                              int timeout_ms) {
  size_t n = c->cfg.nshards;
  uint32_t *ids = calloc(n, sizeof *ids);
  ps_layout l;
  ps_errbuf eb = {""};
  if (!ids) return 1;
  ps_config_shard_ids(&c->cfg, ids);
  int err = ps_layout_build(&l, spec, c->cfg.chunk_elems, ids, n, &eb);
  free(ids);
  if (err < 0) {
    fprintf(stderr, "psctl export: model '%s': %s\n", spec->name, eb.msg);
    return 1;
  }
  psctl_export_asm a = {&l, malloc((l.nparams ? l.nparams : 1) * sizeof(float)),
                        malloc((l.nchunks ? l.nchunks : 1) * sizeof(int32_t))};
  int code = 1;
  if (!a.values || !a.from) {
    fprintf(stderr, "psctl export: out of memory for %" PRIu64 " parameters\n", l.nparams);
    goto out_asm;
  }
  for (size_t ch = 0; ch < l.nchunks; ch++) a.from[ch] = -1;
  code = psctl_export_gather(&a, c, spec->name, timeout_ms);
  if (code == 0) code = psctl_export_write(c, &a, spec, path, timeout_ms);
out_asm:
  free(a.values);
  free(a.from);
  ps_layout_release(&l);
  return code;
}

/* psctl_export_main: see psctl.h. */
/* The name of the export's temporary file (ps_npz_tmp_open: both
 * archive writers use "PATH.tmp.PID" beside PATH, unnamed until the
 * rename where the filesystem has O_TMPFILE), removed when a signal
 * stops psctl (the table keys' scratch file is unlinked as soon as it is
 * open). */
static char psctl_export_tmp[4200];

static void psctl_export_on_signal(int sig) {
  unlink(psctl_export_tmp); /* async-signal-safe: unlink, signal, raise */
  signal(sig, SIG_DFL);
  raise(sig);
}

/* psctl_export_dangling writes to BUF (PATH_MAX) the file that symlink
 * PATH would name once made: its links followed (at most 40) to a name
 * that does not exist yet, in a directory that does.  0, or -1 with
 * errno set. */
static int psctl_export_dangling(const char *path, char *buf) {
  char cur[PATH_MAX], next[PATH_MAX], dir[PATH_MAX];
  if (snprintf(cur, sizeof cur, "%s", path) >= (int)sizeof cur) return errno = ENAMETOOLONG, -1;
  struct stat st;
  for (int hops = 0; lstat(cur, &st) == 0; hops++) {
    if (!S_ISLNK(st.st_mode) || hops == 40) return errno = hops == 40 ? ELOOP : EEXIST, -1;
    ssize_t n = readlink(cur, next, sizeof next - 1);
    if (n < 0) return -1;
    next[n] = 0;
    const char *slash = strrchr(cur, '/');
    int len = next[0] == '/' || !slash ? snprintf(dir, sizeof dir, "%s", next)
                                       : snprintf(dir, sizeof dir, "%.*s/%s",
                                                  (int)(slash - cur), cur, next);
    if (len >= (int)sizeof dir) return errno = ENAMETOOLONG, -1;
    memcpy(cur, dir, (size_t)len + 1);
  }
  if (errno != ENOENT) return -1;
  /* CUR does not exist: its directory must */
  char *slash = strrchr(cur, '/');
  const char *base = slash ? slash + 1 : cur;
  if (slash == cur) snprintf(dir, sizeof dir, "/");
  else if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - cur), cur);
  else snprintf(dir, sizeof dir, ".");
  if (!*base || !realpath(dir, next)) return errno = errno ? errno : ENOENT, -1;
  if (snprintf(buf, PATH_MAX, "%s/%s", strcmp(next, "/") ? next : "", base) >= PATH_MAX)
    return errno = ENAMETOOLONG, -1;
  return 0;
}

/* psctl_export_in_dir says whether the directory PATH would be made in
 * exists: 0, or -1 with errno (ENOENT, ENOTDIR, ...). */
static int psctl_export_in_dir(const char *path) {
  char dir[PATH_MAX];
  struct stat st;
  const char *slash = strrchr(path, '/');
  if (!slash) return 0; /* the working directory */
  snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
  if (stat(dir, &st) < 0) return -1;
  return S_ISDIR(st.st_mode) ? 0 : (errno = ENOTDIR, -1);
}

/* psctl_export_target checks -o PATH before anything is read: a file or
 * nothing (replaced or made, by a rename) in a directory that exists,
 * never a device, a FIFO or a directory (a rename onto /dev/null would
 * replace it for the whole machine); a symlink is followed, so that the
 * file it names is replaced and the link stays.  The path to write goes
 * to OUT.  0, or 2 said on stderr: a path that cannot name a file to
 * write is a bad argument, whether a link leads there or not (and an
 * export of hours is not read only to fail at the end). */
static int psctl_export_target(const char *path, char *out, size_t cap) {
  struct stat st;
  const char *real = path;
  char buf[PATH_MAX];
  if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
    if (!realpath(path, buf) && (errno != ENOENT || psctl_export_dangling(path, buf) < 0)) {
      fprintf(stderr, "psctl export: -o '%s': a link to nothing usable: %s\n", path,
              strerror(errno));
      return 2;
    }
    real = buf;
  }
  if (stat(real, &st) < 0 && psctl_export_in_dir(real) < 0) {
    fprintf(stderr, "psctl export: -o '%s': no directory to make it in: %s\n", path,
            strerror(errno));
    return 2;
  }
  if (stat(real, &st) == 0 && !S_ISREG(st.st_mode)) {
    fprintf(stderr, "psctl export: -o '%s' is not a regular file (a directory, device or FIFO): "
            "the export replaces the file it names\n", path);
    return 2;
  }
  if (snprintf(out, cap, "%s", real) >= (int)cap) {
    fprintf(stderr, "psctl export: -o '%s': path too long\n", path);
    return 2;
  }
  return 0;
}

int psctl_export_main(int argc, char **argv) {
  psctl_export_opts o;
  int code = psctl_export_args(argc, argv, &o);
  if (code) return code < 0 ? 0 : code;
  char out[PATH_MAX + 1];
  if ((code = psctl_export_target(o.out, out, sizeof out)) != 0) return code;
  o.out = out;
  snprintf(psctl_export_tmp, sizeof psctl_export_tmp, "%s.tmp.%ld", out, (long)getpid());
  struct sigaction sa = {.sa_handler = psctl_export_on_signal};
  sigemptyset(&sa.sa_mask);
  struct sigaction was; /* but a SIGHUP ignored from the start (nohup) stays ignored */
  for (int i = 0, sigs[] = {SIGINT, SIGTERM, SIGHUP}; i < 3; i++)
    if (sigs[i] != SIGHUP || sigaction(SIGHUP, NULL, &was) < 0 || was.sa_handler != SIG_IGN)
      sigaction(sigs[i], &sa, NULL);
  psctl_cluster c;
  ps_errbuf eb = {""};
  if (psctl_cluster_open(&c, o.config, &eb) < 0) {
    fprintf(stderr, "psctl export: %s\n", eb.msg);
    return 2;
  }
  Ps__GetModelReply *rep = NULL;
  code = psctl_check_cluster(&c, "export", PSCTL_EXPORT_SPEC_TIMEOUT_MS, 0) ? 1 : 0;
  if (code) fprintf(stderr, "psctl export: nothing written\n");
  else code = psctl_export_spec(&c, o.model, &rep);
  if (code == 0) {
    code = psctl_export_model(&c, rep->model, o.out, o.timeout_ms);
    protobuf_c_message_free_unpacked(&rep->base, NULL);
  }
  psctl_cluster_close(&c);
  return code;
}
