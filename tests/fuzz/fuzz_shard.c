/* fuzz_shard: the shard's request handlers (server/psd_shard.h) behind
 * SubmitModel, Push and Pull, on a real store (RocksDB in a fresh
 * directory under $TMPDIR) and clock table (tests/fuzz/fuzz_psd.h).
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
#include "fuzz_psd.h"
#include "ps_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_SHARD_MAX_ELEMS (1u << 18) /* per submitted model: see fuzz_spec_small */
#define FUZZ_SHARD_MAX_CHUNKS (1u << 14)
#define FUZZ_SHARD_RESET_EVERY 256

static struct {
  fuzz_psd f; /* the shard (fuzz_psd.h, without sparse tables) */
  unsigned runs;
} fz;

static void fuzz_shard_close(void) { fuzz_psd_close(&fz.f); }

static void fuzz_shard_open(void) { fuzz_psd_open(&fz.f, "fuzz_shard", 1, 0); }

/* fuzz_shard_done checks the promise of a handler that returned RC with
 * EB, counters BEFORE: an error is a code with a message and is counted. */
static void fuzz_shard_done(int rc, const ps_errbuf *eb, const psd_counters *before) {
  fuzz_note("request", rc, eb);
  if (rc >= 0) return;
  fuzz_check_error(rc, *eb);
  const psd_counters *now = &fz.f.sh.ctr;
  fuzz_check(now->pushes == before->pushes && now->pulls == before->pulls &&
                 now->bytes_in == before->bytes_in && now->bytes_out == before->bytes_out,
             "a refused request (%s) changed the counters", eb->msg);
}

/* fuzz_shard_submit: psd_grpc_submit.  Returns 1 when the store changed. */
static int fuzz_shard_submit(const uint8_t *data, size_t size) {
  Ps__SubmitModelRequest *r = ps__submit_model_request__unpack(NULL, size, data);
  if (!r) return 0;
  int changed = 0;
  if (fuzz_spec_small(r->model, fz.f.cfg.chunk_elems, FUZZ_SHARD_MAX_ELEMS,
                      FUZZ_SHARD_MAX_CHUNKS)) {
    Ps__SubmitModelReply rep = PS__SUBMIT_MODEL_REPLY__INIT;
    ps_errbuf eb;
    psd_counters before = fz.f.sh.ctr;
    int rc = psd_shard_submit(&fz.f.sh, r->model, r->replace, &rep, &eb);
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
  psd_counters before = fz.f.sh.ctr;
  ps_req q = {.model = r->model, .ids = r->chunk_ids, .nids = r->n_chunk_ids,
              .worker = r->worker, .clock = r->clock, .version = r->version,
              .codec = (ps_codec_id)r->codec, .grads = r->grads.data, .nbytes = r->grads.len};
  int rc = psd_shard_push(&fz.f.sh, &q, &version, &eb);
  fuzz_shard_done(rc, &eb, &before);
  ps__push_request__free_unpacked(r, NULL);
  return rc == 0;
}

/* fuzz_shard_unpark: a parked pull's release; never runs (cancelled). */
static void fuzz_shard_unpark(psd_done *d, int status, const char *msg) {
  (void)d;
  fuzz_check(0, "a cancelled pull was released (%d, %s)", status, msg ? msg : "");
}

/* fuzz_shard_pull: psd_grpc_pull and psd_grpc_pull_serve. */
static void fuzz_shard_pull(const uint8_t *data, size_t size) {
  Ps__PullRequest *r = ps__pull_request__unpack(NULL, size, data);
  if (!r) return;
  uint64_t n = 0, version = 0;
  ps_errbuf eb;
  psd_counters before = fz.f.sh.ctr;
  ps_req q = {.model = r->model, .ids = r->chunk_ids, .nids = r->n_chunk_ids,
              .worker = r->worker, .clock = r->clock, .codec = (ps_codec_id)r->codec};
  int rc = psd_shard_payload(&fz.f.sh, &q, 0, &n, &q.nbytes, &eb);
  psd_park park = {.done = {.fn = fuzz_shard_unpark}};
  if (rc == 0) {
    fuzz_check(q.nbytes <= fz.f.cfg.max_request_bytes, "%llu bytes admitted",
               (unsigned long long)q.nbytes);
    rc = psd_shard_pull_admit(&fz.f.sh, r->model, r->worker, r->clock, &park, &eb);
  }
  if (rc == 1) {
    psd_clock_cancel(fz.f.sh.clock, &park);
    rc = 0;
  } else if (rc == 0) {
    q.out = malloc(q.nbytes ? q.nbytes : 1);
    fuzz_check(q.out != NULL, "out of memory");
    rc = psd_shard_pull(&fz.f.sh, &q, &version, &eb);
    free(q.out);
  }
  fuzz_shard_done(rc, &eb, &before);
  ps__pull_request__free_unpacked(r, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!fz.f.open) {
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
