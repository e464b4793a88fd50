/* fuzz_shard: the shard's request handlers (server/psd_shard.h) behind
 * SubmitModel, Push and Pull, on a real store (RocksDB in a fresh
 * directory under $TMPDIR) and clock table.
 *
 * Input: one byte that picks the request (mod 3: SubmitModelRequest,
 * PushRequest, PullRequest), then that protobuf message, decoded with
 * protobuf-c (a message that does not decode is rejected, as gRPC's
 * decoder does).  The handlers are called as psd_grpc.c does; a pull that
 * parks is cancelled at once, as when its connection closes.  The shard
 * holds model "m" (tensors W [4, 8] and b [8], chunks of 16 elements:
 * ids 0..2, all on this one shard; ssp with bound 1, Adam) from the
 * start.  Once a request changed the store (a model created or replaced,
 * a push applied) or every 256 inputs, the shard is made anew.
 *
 * Checks: every handler error is a PS_E* code with a message; a refused
 * request changes no counter but errors. */
#include <ftw.h>
#include <stdio.h>
#include <uv.h>

#include "fuzz.h"
#include "ps.pb-c.h"
#include "ps_config.h"
#include "ps_log.h"
#include "psd_shard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_SHARD_MAX_ELEMS (1u << 18) /* per submitted model: see fuzz_spec_small */
#define FUZZ_SHARD_MAX_CHUNKS (1u << 14)
#define FUZZ_SHARD_RESET_EVERY 256

static struct {
  char dir[4096];
  ps_config cfg;
  uv_loop_t loop;
  psd_shard sh;
  int open;
  unsigned runs;
} fz;

/* fuzz_shard_rm removes one entry of the tree nftw walks (depth first). */
static int fuzz_shard_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

/* fuzz_shard_close closes the shard, its store and clock, and removes its
 * directory. */
static void fuzz_shard_close(void) {
  if (!fz.open) return;
  psd_shard_clock_stop(&fz.sh);
  psd_clock_free(fz.sh.clock);
  uv_close((uv_handle_t *)&fz.sh.clock_timer, NULL);
  uv_run(&fz.loop, UV_RUN_NOWAIT);
  psd_store_close(fz.sh.store);
  uv_loop_close(&fz.loop);
  ps_config_release(&fz.cfg);
  fuzz_check(nftw(fz.dir, fuzz_shard_rm, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove %s",
             fz.dir);
  fz.open = 0;
}

/* fuzz_shard_open makes a SERVING shard 0 of a one-shard cluster in a
 * fresh directory, holding model "m". */
static void fuzz_shard_open(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(fz.dir, sizeof fz.dir, "%s/fuzz_shard.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  fuzz_check(mkdtemp(fz.dir) != NULL, "mkdtemp %s failed", fz.dir);
  char yaml[8192];
  snprintf(yaml, sizeof yaml,
           "cluster: fuzz\n"
           "chunk_elems: 16\n"
           "limits:\n  max_request_bytes: 1048576\n"
           "workers:\n  count: 2\n"
           "security: {mode: none}\n"
           "shards:\n"
           "  - id: 0\n"
           "    grpc: 127.0.0.1:7000\n"
           "    channel: 127.0.0.1:7100\n"
           "    data_dir: %s/db\n", fz.dir);
  ps_errbuf eb;
  fuzz_check(ps_config_load_buf(&fz.cfg, "fuzz_shard.yaml", yaml, strlen(yaml), &eb) == 0,
             "config: %s", eb.msg);
  fuzz_check(uv_loop_init(&fz.loop) == 0, "uv_loop_init failed");
  memset(&fz.sh, 0, sizeof fz.sh);
  fz.sh.cfg = &fz.cfg;
  fz.sh.me = &fz.cfg.shards[0];
  fz.sh.loop = &fz.loop;
  uint32_t id = fz.sh.me->id;
  psd_store_opts o = {.dir = fz.sh.me->data_dir, .shard_index = 0, .shard_ids = &id,
                      .nshards = 1, .chunk_elems = fz.cfg.chunk_elems};
  fuzz_check(psd_store_open(&fz.sh.store, &o, &eb) == 0, "store: %s", eb.msg);
  fuzz_check(psd_shard_clock_start(&fz.sh, &eb) == 0, "clock: %s", eb.msg);
  fz.sh.state = PSD_SERVING;

  uint32_t wshape[] = {4, 8}, bshape[] = {8};
  Ps__TensorSpec w = PS__TENSOR_SPEC__INIT, b = PS__TENSOR_SPEC__INIT, *ts[] = {&w, &b};
  w.name = "W", w.shape = wshape, w.n_shape = 2, w.init = "glorot", w.scale = 1;
  b.name = "b", b.shape = bshape, b.n_shape = 1, b.init = "zeros";
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "adam", opt.lr = 0.01f, opt.beta1 = 0.9f, opt.beta2 = 0.999f, opt.eps = 1e-8f;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = "m", spec.seed = 1, spec.tensors = ts, spec.n_tensors = 2, spec.optimizer = &opt;
  spec.consistency = "ssp", spec.staleness = 1;
  Ps__SubmitModelReply rep = PS__SUBMIT_MODEL_REPLY__INIT;
  fuzz_check(psd_shard_submit(&fz.sh, &spec, 0, &rep, &eb) == 0, "submit: %s", eb.msg);
  fz.open = 1;
}

/* fuzz_shard_done checks the promise of a handler that returned RC with
 * EB, counters BEFORE: an error is a code with a message and is counted. */
static void fuzz_shard_done(int rc, const ps_errbuf *eb, const psd_counters *before) {
  fuzz_note("request", rc, eb);
  if (rc >= 0) return;
  fuzz_check_error(rc, *eb);
  const psd_counters *now = &fz.sh.ctr;
  fuzz_check(now->pushes == before->pushes && now->pulls == before->pulls &&
                 now->bytes_in == before->bytes_in && now->bytes_out == before->bytes_out,
             "a refused request (%s) changed the counters", eb->msg);
}

/* fuzz_shard_submit: psd_grpc_submit.  Returns 1 when the store changed. */
static int fuzz_shard_submit(const uint8_t *data, size_t size) {
  Ps__SubmitModelRequest *r = ps__submit_model_request__unpack(NULL, size, data);
  if (!r) return 0;
  int changed = 0;
  if (fuzz_spec_small(r->model, fz.cfg.chunk_elems, FUZZ_SHARD_MAX_ELEMS,
                      FUZZ_SHARD_MAX_CHUNKS)) {
    Ps__SubmitModelReply rep = PS__SUBMIT_MODEL_REPLY__INIT;
    ps_errbuf eb;
    psd_counters before = fz.sh.ctr;
    int rc = psd_shard_submit(&fz.sh, r->model, r->replace, &rep, &eb);
    fuzz_shard_done(rc, &eb, &before);
    changed = rc == 0 && rep.created;
  }
  ps__submit_model_request__free_unpacked(r, NULL);
  return changed;
}

/* fuzz_shard_push: psd_grpc_push.  Returns 1 when the store changed. */
static int fuzz_shard_push(const uint8_t *data, size_t size) {
  Ps__PushRequest *r = ps__push_request__unpack(NULL, size, data);
  if (!r) return 0;
  uint64_t version = 0;
  ps_errbuf eb;
  psd_counters before = fz.sh.ctr;
  ps_req q = {.model = r->model, .ids = r->chunk_ids, .nids = r->n_chunk_ids,
              .worker = r->worker, .clock = r->clock, .version = r->version,
              .codec = (ps_codec_id)r->codec, .grads = r->grads.data, .nbytes = r->grads.len};
  int rc = psd_shard_push(&fz.sh, &q, &version, &eb);
  fuzz_shard_done(rc, &eb, &before);
  ps__push_request__free_unpacked(r, NULL);
  return rc == 0;
}

/* fuzz_shard_unpark: a parked pull's release; never runs (cancelled). */
static void fuzz_shard_unpark(psd_park *p, int status, const char *msg) {
  (void)p;
  fuzz_check(0, "a cancelled pull was released (%d, %s)", status, msg ? msg : "");
}

/* fuzz_shard_pull: psd_grpc_pull and psd_grpc_pull_serve. */
static void fuzz_shard_pull(const uint8_t *data, size_t size) {
  Ps__PullRequest *r = ps__pull_request__unpack(NULL, size, data);
  if (!r) return;
  uint64_t n = 0, version = 0;
  ps_errbuf eb;
  psd_counters before = fz.sh.ctr;
  ps_req q = {.model = r->model, .ids = r->chunk_ids, .nids = r->n_chunk_ids,
              .worker = r->worker, .clock = r->clock, .codec = (ps_codec_id)r->codec};
  int rc = psd_shard_payload(&fz.sh, &q, 0, &n, &q.nbytes, &eb);
  psd_park park = {.fn = fuzz_shard_unpark};
  if (rc == 0) {
    fuzz_check(q.nbytes <= fz.cfg.max_request_bytes, "%llu bytes admitted",
               (unsigned long long)q.nbytes);
    rc = psd_shard_pull_admit(&fz.sh, r->model, r->worker, r->clock, &park, &eb);
  }
  if (rc == 1) {
    psd_clock_cancel(fz.sh.clock, &park);
    rc = 0;
  } else if (rc == 0) {
    q.out = malloc(q.nbytes ? q.nbytes : 1);
    fuzz_check(q.out != NULL, "out of memory");
    rc = psd_shard_pull(&fz.sh, &q, &version, &eb);
    free(q.out);
  }
  fuzz_shard_done(rc, &eb, &before);
  ps__pull_request__free_unpacked(r, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!fz.open) {
    ps_log_init("fuzz_shard", LOG_CRIT);
    fuzz_shard_open();
    atexit(fuzz_shard_close);
  }
  if (size == 0) return 0;
  int changed = 0;
  switch (data[0] % 3) {
    case 0: changed = fuzz_shard_submit(data + 1, size - 1); break;
    case 1: changed = fuzz_shard_push(data + 1, size - 1); break;
    default: fuzz_shard_pull(data + 1, size - 1);
  }
  if (changed || ++fz.runs % FUZZ_SHARD_RESET_EVERY == 0) {
    fuzz_shard_close();
    fuzz_shard_open();
  }
  return 0;
}
