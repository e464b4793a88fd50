/* fuzz_sparse: the shard's sparse request handlers (psd_shard_sparse_pull
 * and psd_shard_sparse_push, server/psd_shard_sparse.h) on a real shard
 * with sparse tables (tests/fuzz/fuzz_psd.h: tables 0, dim 4, and 3, dim
 * 3, of model "m"; 8 rows in memory per table, the rest in RocksDB).
 *
 * Input: a sequence of up to 16 requests, each one byte that picks it
 * (even: SparsePullRequest, odd: SparsePushRequest), a u16 length
 * (little-endian) and that many bytes of the protobuf message, decoded
 * with protobuf-c (a message that does not decode is skipped, as gRPC's
 * decoder would reject it).  The requests run in order against the same
 * shard; the shard is made anew every 64 inputs (admission after 1 pull
 * and after 2 in turn) and when it saw more than 512 keys.
 *
 * Checks: every error is a PS_E* code with a message; a refused request
 * changes no row (existence, values, optimizer slots and update count of
 * the keys of this shard's requests so far and of this request, hashed
 * before and after) and no counter but errors; a pull answers n_keys rows
 * of its codec's size, fp32 rows finite; rows stay finite. */
#include "fuzz_psd.h"
#include "ps_codec.h"
#include "ps_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_SPARSE_RESET_EVERY 64
#define FUZZ_SPARSE_MAX_KEYS 512
#define FUZZ_SPARSE_MAX_REQS 16

static struct {
  fuzz_psd f;
  unsigned runs, incarnation;
  uint64_t keys[FUZZ_SPARSE_MAX_KEYS]; /* keys seen by this shard (tracked rows) */
  size_t nkeys;
} fz;

static void fuzz_sparse_close(void) { fuzz_psd_close(&fz.f); }

static void fuzz_sparse_reset(void) {
  fuzz_psd_close(&fz.f);
  fuzz_psd_open(&fz.f, "fuzz_sparse", fz.incarnation++ % 2 ? 2 : 1, 1);
  fz.nkeys = 0;
}

/* fuzz_sparse_track adds KEYS (N) to the tracked keys while there is room;
 * returns 0 when some did not fit (the shard is made anew afterwards). */
static int fuzz_sparse_track(const uint64_t *keys, size_t n) {
  for (size_t i = 0; i < n; i++) {
    size_t j = 0;
    while (j < fz.nkeys && fz.keys[j] != keys[i]) j++;
    if (j < fz.nkeys) continue;
    if (fz.nkeys == FUZZ_SPARSE_MAX_KEYS) return 0;
    fz.keys[fz.nkeys++] = keys[i];
  }
  return 1;
}

/* fuzz_sparse_sum hashes the rows of the tracked keys and of KEYS (N) in
 * both tables. */
static uint64_t fuzz_sparse_sum(const uint64_t *keys, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  const uint32_t tables[] = {FUZZ_PSD_TABLE_E, FUZZ_PSD_TABLE_F};
  for (size_t t = 0; t < 2; t++) {
    for (size_t i = 0; i < fz.nkeys; i++) fuzz_psd_row_sum(&fz.f, tables[t], fz.keys[i], &h);
    for (size_t i = 0; i < n && i < 64; i++) fuzz_psd_row_sum(&fz.f, tables[t], keys[i], &h);
  }
  return h;
}

/* fuzz_sparse_done checks a handler's promise: RC 0, or an error with a
 * message that changed no row (SUM before) and no counter (BEFORE). */
static void fuzz_sparse_done(int rc, const ps_errbuf *eb, const psd_counters *before, uint64_t sum,
                             const uint64_t *keys, size_t n) {
  fuzz_note("request", rc, eb);
  uint64_t now = fuzz_sparse_sum(keys, n);
  if (rc >= 0) return;
  fuzz_check_error(rc, *eb);
  const psd_counters *c = &fz.f.sh.ctr;
  fuzz_check(c->pushes == before->pushes && c->pulls == before->pulls &&
                 c->bytes_in == before->bytes_in && c->bytes_out == before->bytes_out,
             "a refused request (%s) changed the counters", eb->msg);
  fuzz_check(now == sum, "a refused request (%s) changed rows", eb->msg);
}

/* fuzz_sparse_pull: psd_grpc_sparse_pull. */
static void fuzz_sparse_pull(const uint8_t *data, size_t size) {
  Ps__SparsePullRequest *r = ps__sparse_pull_request__unpack(NULL, size, data);
  if (!r) return;
  fuzz_sparse_track(r->keys, r->n_keys);
  uint64_t sum = fuzz_sparse_sum(r->keys, r->n_keys);
  psd_counters before = fz.f.sh.ctr;
  uint8_t *rows = NULL;
  size_t nbytes = 0;
  ps_errbuf eb;
  int rc = psd_shard_sparse_pull(&fz.f.sh, r, &rows, &nbytes, &eb);
  if (rc == 0) {
    uint32_t dim = 0;
    fuzz_check(psd_sparse_dim(psd_shard_sparse_rows(&fz.f.sh), r->model, r->table, &dim, NULL) == 0,
               "a pull of an unknown table was served");
    uint64_t rb = ps_codec_size((ps_codec_id)r->codec, dim, 0);
    fuzz_check(nbytes == r->n_keys * rb, "%zu keys of dim %u in codec %u: %zu bytes", r->n_keys,
               dim, r->codec, nbytes);
    if (r->codec == PS_CODEC_FP32) {
      float v;
      for (size_t i = 0; i < nbytes / 4; i++) {
        memcpy(&v, rows + 4 * i, 4);
        fuzz_check(isfinite(v), "pulled value %zu is not finite", i);
      }
    }
  } else {
    fuzz_check(rows == NULL, "a refused pull returned rows");
  }
  free(rows);
  fuzz_sparse_done(rc, &eb, &before, sum, r->keys, r->n_keys);
  ps__sparse_pull_request__free_unpacked(r, NULL);
}

/* fuzz_sparse_push: psd_grpc_sparse_push. */
static void fuzz_sparse_push(const uint8_t *data, size_t size) {
  Ps__SparsePushRequest *r = ps__sparse_push_request__unpack(NULL, size, data);
  if (!r) return;
  fuzz_sparse_track(r->keys, r->n_keys);
  uint64_t sum = fuzz_sparse_sum(r->keys, r->n_keys);
  psd_counters before = fz.f.sh.ctr;
  ps_errbuf eb;
  int rc = psd_shard_sparse_push(&fz.f.sh, r, &eb);
  fuzz_sparse_done(rc, &eb, &before, sum, r->keys, r->n_keys);
  ps__sparse_push_request__free_unpacked(r, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!fz.f.open) {
    ps_log_init("fuzz_sparse", LOG_CRIT);
    fuzz_sparse_reset();
    atexit(fuzz_sparse_close);
  }
  size_t off = 0;
  for (int i = 0; i < FUZZ_SPARSE_MAX_REQS && off + 3 <= size; i++) {
    uint8_t op = data[off];
    size_t len = (size_t)data[off + 1] | (size_t)data[off + 2] << 8;
    off += 3;
    if (len > size - off) len = size - off;
    if (op % 2) fuzz_sparse_push(data + off, len);
    else fuzz_sparse_pull(data + off, len);
    off += len;
  }
  if (++fz.runs % FUZZ_SPARSE_RESET_EVERY == 0 || fz.nkeys == FUZZ_SPARSE_MAX_KEYS)
    fuzz_sparse_reset();
  return 0;
}
