/* Tests for psd_store: push/flush/reopen bit for bit, SIGKILL after a flush,
 * bad input changes nothing, submit semantics, shard-count independence
 * of initial values, RocksDB failures at open, the store closed after a
 * failed flush and reopened by the next, the memory budget at submit,
 * chunk records written before they carried a log seq, and the byte
 * counters in the version record (and version records without them). */
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rocksdb/c.h>

#include "ps_model.h"
#include "psd_store.h"
#include "ps_test.h"

static const uint32_t ids2[] = {0, 1};

/* store_push / store_pull: fp32 psd_store_push / psd_store_pull of NELEMS
 * floats (the form these tests want). */
static int store_push(psd_store *s, const char *model, const uint32_t *ids, size_t nids,
                      const float *g, uint64_t nelems, uint32_t worker, uint64_t clock,
                      uint64_t version_seen, uint64_t *version, ps_errbuf *eb) {
  ps_req r = {.model = model, .ids = ids, .nids = nids, .worker = worker, .clock = clock,
              .version = version_seen, .grads = g, .nbytes = nelems * sizeof(float)};
  return psd_store_push(s, &r, version, eb);
}
static int store_pull(psd_store *s, const char *model, const uint32_t *ids, size_t nids,
                      float *out, uint64_t nelems, uint64_t *version, ps_errbuf *eb) {
  ps_req r = {.model = model, .ids = ids, .nids = nids, .out = out,
              .nbytes = nelems * sizeof(float)};
  return psd_store_pull(s, &r, version, eb);
}
static int store_payload_elems(psd_store *s, const char *model, const uint32_t *ids, size_t nids,
                               uint64_t *nelems, ps_errbuf *eb) {
  ps_req r = {.model = model, .ids = ids, .nids = nids};
  uint64_t nbytes;
  return psd_store_payload(s, &r, 1, nelems, &nbytes, eb);
}

/* A model: w [30, 20] glorot, b [20] uniform, chunks of 64 elements. */
static uint32_t shape_w[] = {30, 20}, shape_b[] = {20};

typedef struct spec_buf {
  Ps__TensorSpec t[2];
  Ps__TensorSpec *tp[2];
  Ps__OptimizerSpec opt;
  Ps__ModelSpec spec;
} spec_buf;

/* make_spec fills B with model NAME (seed SEED, optimizer KIND). */
static Ps__ModelSpec *make_spec(spec_buf *b, const char *name, uint64_t seed, const char *kind) {
  ps__tensor_spec__init(&b->t[0]);
  ps__tensor_spec__init(&b->t[1]);
  b->t[0].name = "w";
  b->t[0].n_shape = 2;
  b->t[0].shape = shape_w;
  b->t[0].init = "glorot";
  b->t[0].scale = 1;
  b->t[1].name = "b";
  b->t[1].n_shape = 1;
  b->t[1].shape = shape_b;
  b->t[1].init = "uniform";
  b->t[1].scale = 0.1f;
  b->tp[0] = &b->t[0];
  b->tp[1] = &b->t[1];
  ps__optimizer_spec__init(&b->opt);
  b->opt.kind = (char *)kind;
  b->opt.lr = 0.01f;
  b->opt.weight_decay = 0.001f;
  ps__model_spec__init(&b->spec);
  b->spec.name = (char *)name;
  b->spec.seed = seed;
  b->spec.n_tensors = 2;
  b->spec.tensors = b->tp;
  b->spec.optimizer = &b->opt;
  b->spec.chunk_elems = 64;
  return &b->spec;
}

/* open_store opens DIR as shard INDEX of NSHARDS (ids 0, 1); fails the test on error. */
static psd_store *open_store(const char *dir, uint32_t index, size_t nshards) {
  psd_store_opts o = {.dir = dir, .shard_index = index, .shard_ids = ids2, .nshards = nshards,
                      .chunk_elems = 1000};
  psd_store *s;
  ps_errbuf eb;
  int rc = psd_store_open(&s, &o, &eb);
  ck_assert_msg(rc == 0, "open '%s': %s", dir, eb.msg);
  return s;
}

static int try_open(const char *dir, uint32_t index, size_t nshards, ps_errbuf *eb) {
  psd_store_opts o = {.dir = dir, .shard_index = index, .shard_ids = ids2, .nshards = nshards,
                      .chunk_elems = 1000};
  psd_store *s = (psd_store *)1;
  int rc = psd_store_open(&s, &o, eb);
  ck_assert_ptr_null(s);
  return rc;
}

static void submit(psd_store *s, const Ps__ModelSpec *spec) {
  ps_errbuf eb;
  int created;
  int rc = psd_store_submit(s, spec, 0, &created, NULL, NULL, &eb);
  ck_assert_msg(rc == 0, "submit: %s", eb.msg);
}

/* push_all pushes gradients f(step, element) to every chunk held of "m". */
static uint64_t push_all(psd_store *s, int step) {
  const uint32_t *ids;
  size_t n;
  uint64_t elems, version;
  ck_assert_int_eq(psd_store_held(s, "m", &ids, &n, &elems), 0);
  float *g = malloc(elems * sizeof *g);
  for (uint64_t i = 0; i < elems; i++) g[i] = (float)sin((double)(i * 7 + (uint64_t)step * 13)) * 0.5f;
  ps_errbuf eb;
  int rc = store_push(s, "m", ids, n, g, elems, 0, (uint64_t)step, 0, &version, &eb);
  free(g);
  ck_assert_msg(rc == 0, "push: %s", eb.msg);
  return version;
}

/* same_state asserts that stores A and B hold identical bytes (values,
 * optimizer slots, step) for every chunk of "m" that A holds. */
static void same_state(psd_store *a, psd_store *b) {
  const uint32_t *ids;
  size_t n;
  ck_assert_int_eq(psd_store_held(a, "m", &ids, &n, NULL), 0);
  ck_assert_uint_gt(n, 0);
  for (size_t i = 0; i < n; i++) {
    const float *da, *db;
    uint32_t la, lb;
    unsigned sa, sb;
    uint64_t ta, tb;
    ck_assert_int_eq(psd_store_chunk_state(a, "m", ids[i], &da, &la, &sa, &ta), 0);
    ck_assert_int_eq(psd_store_chunk_state(b, "m", ids[i], &db, &lb, &sb, &tb), 0);
    ck_assert_uint_eq(la, lb);
    ck_assert_uint_eq(sa, sb);
    ck_assert_uint_eq(ta, tb);
    ck_assert_msg(memcmp(da, db, (size_t)la * (1 + sa) * sizeof(float)) == 0,
                  "chunk %u differs", ids[i]);
  }
}

static uint64_t version_of(psd_store *s) {
  psd_model_info info;
  ck_assert_uint_ge(psd_store_nmodels(s), 1);
  psd_store_model_info(s, 0, &info);
  return info.version;
}

static uint64_t version_of_model(psd_store *s, const char *name) {
  for (size_t i = 0; i < psd_store_nmodels(s); i++) {
    psd_model_info info;
    psd_store_model_info(s, i, &info);
    if (!strcmp(info.name, name)) return info.version;
  }
  ck_abort_msg("no model '%s'", name);
  return 0;
}

static char *path_in(const char *dir, const char *leaf) {
  static char buf[4][600];
  static int k;
  char *p = buf[k++ % 4];
  snprintf(p, 600, "%s/%s", dir, leaf);
  return p;
}

START_TEST(test_flush_reopen_identical) {
  const char *tmp = ps_test_tmpdir();
  char *da = strdup(path_in(tmp, "a")), *dr = strdup(path_in(tmp, "ref"));
  spec_buf sb;
  psd_store *a = open_store(da, 0, 1), *ref = open_store(dr, 0, 1);
  submit(a, make_spec(&sb, "m", 42, "adam"));
  submit(ref, make_spec(&sb, "m", 42, "adam"));
  for (int t = 1; t <= 3; t++) {
    push_all(a, t);
    push_all(ref, t);
  }
  ck_assert(psd_store_dirty(a));
  ps_errbuf eb;
  ck_assert_msg(psd_store_flush(a, &eb) == 0, "%s", eb.msg);
  ck_assert(!psd_store_dirty(a));
  ck_assert_uint_gt(psd_store_disk_bytes(a), 30 * 20 * 3 * 4);
  psd_store_close(a);
  a = open_store(da, 0, 1);
  ck_assert_uint_eq(version_of(a), 3);
  same_state(a, ref);
  /* The restored optimizer state and steps carry on identically. */
  ck_assert_uint_eq(push_all(a, 4), 4);
  push_all(ref, 4);
  same_state(a, ref);
  const Ps__ModelSpec *sp = psd_store_spec(a, "m");
  ck_assert_ptr_nonnull(sp);
  ck_assert_uint_eq(sp->seed, 42);
  ck_assert_str_eq(sp->optimizer->kind, "adam");
  psd_store_close(a);
  psd_store_close(ref);
  free(da);
  free(dr);
}
END_TEST

/* A store's RocksDB opened directly, to write records in older layouts. */
typedef struct raw_db {
  rocksdb_options_t *o;
  rocksdb_t *db;
  rocksdb_readoptions_t *ro;
  rocksdb_writeoptions_t *wo;
} raw_db;

static raw_db raw_db_open(const char *dir) {
  raw_db r = {.o = rocksdb_options_create()};
  char *err = NULL;
  r.db = rocksdb_open(r.o, dir, &err);
  ck_assert_msg(!err, "%s", err);
  r.ro = rocksdb_readoptions_create();
  r.wo = rocksdb_writeoptions_create();
  return r;
}

static void raw_db_close(raw_db *r) {
  rocksdb_writeoptions_destroy(r->wo);
  rocksdb_readoptions_destroy(r->ro);
  rocksdb_close(r->db);
  rocksdb_options_destroy(r->o);
}

/* A store written before chunk records carried their log seq (16-byte
 * header: len, slots, step) opens with the same state. */
START_TEST(test_open_chunk_records_without_seq) {
  const char *tmp = ps_test_tmpdir();
  char *da = strdup(path_in(tmp, "a")), *dr = strdup(path_in(tmp, "ref"));
  spec_buf sb;
  psd_store *a = open_store(da, 0, 1), *ref = open_store(dr, 0, 1);
  submit(a, make_spec(&sb, "m", 42, "adam"));
  submit(ref, make_spec(&sb, "m", 42, "adam"));
  push_all(a, 1);
  push_all(ref, 1);
  ps_errbuf eb;
  ck_assert_msg(psd_store_flush(a, &eb) == 0, "%s", eb.msg);
  psd_store_close(a);
  /* rewrite every "c/" record in the old layout */
  raw_db r = raw_db_open(da);
  char *err = NULL;
  rocksdb_writebatch_t *b = rocksdb_writebatch_create();
  rocksdb_iterator_t *it = rocksdb_create_iterator(r.db, r.ro);
  int n = 0;
  for (rocksdb_iter_seek(it, "c/", 2); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
    size_t kl, vl;
    const char *k = rocksdb_iter_key(it, &kl), *v = rocksdb_iter_value(it, &vl);
    if (kl < 2 || memcmp(k, "c/", 2) != 0) break;
    ck_assert_uint_gt(vl, 24);
    const char *vals[] = {v, v + 24};
    size_t lens[] = {16, vl - 24};
    rocksdb_writebatch_putv(b, 1, &k, &kl, 2, vals, lens);
    n++;
  }
  rocksdb_iter_destroy(it);
  ck_assert_int_gt(n, 0);
  rocksdb_write(r.db, r.wo, b, &err);
  ck_assert_msg(!err, "%s", err);
  rocksdb_writebatch_destroy(b);
  raw_db_close(&r);
  a = open_store(da, 0, 1);
  same_state(a, ref);
  push_all(a, 2);
  push_all(ref, 2);
  same_state(a, ref);
  psd_store_close(a);
  psd_store_close(ref);
  free(da);
  free(dr);
}
END_TEST

/* bytes_of reads model 0's raw and wire byte counters. */
static void bytes_of(psd_store *s, uint64_t *raw, uint64_t *wire) {
  psd_model_info info;
  ck_assert_uint_ge(psd_store_nmodels(s), 1);
  psd_store_model_info(s, 0, &info);
  *raw = info.bytes_raw, *wire = info.bytes_wire;
}

/* The raw/wire byte counters live in the "v/" record: a flush and reopen
 * keeps them, a pull alone reaches disk at psd_store_flush (the final
 * flush), and a "v/" record of 16 bytes (written before the counters)
 * opens with its version and counters of 0. */
START_TEST(test_version_record_counters) {
  char *da = strdup(path_in(ps_test_tmpdir(), "a"));
  spec_buf sb;
  psd_store *a = open_store(da, 0, 1);
  submit(a, make_spec(&sb, "m", 42, "adam"));
  push_all(a, 1);
  uint64_t elems, raw, wire, raw2, wire2, v;
  const uint32_t *ids;
  size_t n;
  ck_assert_int_eq(psd_store_held(a, "m", &ids, &n, &elems), 0);
  float *out = malloc(elems * sizeof *out);
  ps_errbuf eb;
  ck_assert_msg(store_pull(a, "m", ids, n, out, elems, &v, &eb) == 0, "%s", eb.msg);
  bytes_of(a, &raw, &wire);
  ck_assert_uint_eq(raw, 2 * 4 * elems); /* a push and a pull, fp32 */
  ck_assert_uint_eq(wire, raw);
  ck_assert_msg(psd_store_flush(a, &eb) == 0, "%s", eb.msg);
  /* a pull alone: the next flush that psd_store_flush makes writes it */
  ck_assert_msg(store_pull(a, "m", ids, n, out, elems, &v, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psd_store_flush(a, &eb) == 0, "%s", eb.msg);
  psd_store_close(a);
  a = open_store(da, 0, 1);
  bytes_of(a, &raw2, &wire2);
  ck_assert_uint_eq(raw2, raw + 4 * elems);
  ck_assert_uint_eq(wire2, wire + 4 * elems);
  ck_assert_uint_eq(version_of(a), 1);
  psd_store_close(a);
  /* cut the "v/" records to the old 16 bytes (gen, version) */
  raw_db r = raw_db_open(da);
  char *err = NULL;
  size_t vl;
  char *val = rocksdb_get(r.db, r.ro, "v/m", 3, &vl, &err);
  ck_assert_msg(!err && val, "no v/m record");
  ck_assert_uint_eq(vl, 32);
  rocksdb_put(r.db, r.wo, "v/m", 3, val, 16, &err);
  ck_assert_msg(!err, "%s", err);
  rocksdb_free(val);
  raw_db_close(&r);
  a = open_store(da, 0, 1);
  bytes_of(a, &raw2, &wire2);
  ck_assert_uint_eq(raw2, 0);
  ck_assert_uint_eq(wire2, 0);
  ck_assert_uint_eq(version_of(a), 1);
  psd_store_close(a);
  free(out);
  free(da);
}
END_TEST

/* psd_store_pull_view: an fp32 pull's segments hold exactly the bytes
 * psd_store_pull copies, chunk by chunk in the request's order, at the
 * same version, and count the same bytes; a pull with more chunks than
 * the caller has room for is left to psd_store_pull (0, nothing counted),
 * and so is one that encodes a chunk; an unknown model is an error. */
START_TEST(test_pull_view) {
  char *da = strdup(path_in(ps_test_tmpdir(), "pv"));
  spec_buf sb;
  psd_store *a = open_store(da, 0, 1);
  Ps__ModelSpec *spec = make_spec(&sb, "m", 42, "adam");
  spec->codec_min_elems = 16; /* both tensors may travel encoded */
  submit(a, spec);
  push_all(a, 1);
  uint64_t elems, v = 0, vv = 0, raw, wire, raw2, wire2;
  const uint32_t *held;
  size_t n, nseg = 0;
  ck_assert_int_eq(psd_store_held(a, "m", &held, &n, &elems), 0);
  ck_assert_uint_ge(n, 3);
  uint32_t *ids = malloc(n * sizeof *ids);
  for (size_t i = 0; i < n; i++) ids[i] = held[n - 1 - i]; /* any order */
  float *out = malloc(elems * sizeof *out);
  struct iovec seg[64];
  ps_errbuf eb;
  ck_assert_msg(store_pull(a, "m", ids, n, out, elems, &v, &eb) == 0, "%s", eb.msg);
  bytes_of(a, &raw, &wire);
  ps_req r = {.model = "m", .ids = ids, .nids = n, .nbytes = elems * sizeof(float)};
  ck_assert_int_eq(psd_store_pull_view(a, &r, seg, 64, &nseg, &vv, &eb), 1);
  ck_assert_uint_eq(nseg, n);
  ck_assert_uint_eq(vv, v);
  size_t at = 0;
  for (size_t i = 0; i < nseg; i++) {
    ck_assert_msg(memcmp((char *)out + at, seg[i].iov_base, seg[i].iov_len) == 0, "chunk %zu", i);
    at += seg[i].iov_len;
  }
  ck_assert_uint_eq(at, elems * sizeof(float));
  bytes_of(a, &raw2, &wire2);
  ck_assert_uint_eq(raw2 - raw, 4 * elems);
  ck_assert_uint_eq(wire2 - wire, 4 * elems);
  ck_assert_int_eq(psd_store_pull_view(a, &r, seg, n - 1, &nseg, &vv, &eb), 0);
  bytes_of(a, &raw, &wire);
  ck_assert_uint_eq(raw, raw2);
  r.codec = PS_CODEC_INT8;
  ck_assert_int_eq(psd_store_pull_view(a, &r, seg, 64, &nseg, &vv, &eb), 0);
  bytes_of(a, &raw2, &wire2);
  ck_assert_uint_eq(raw2, raw);
  r.model = "nope";
  ck_assert_int_eq(psd_store_pull_view(a, &r, seg, 64, &nseg, &vv, &eb), PS_ENOENT);
  psd_store_close(a);
  free(out);
  free(ids);
  free(da);
}
END_TEST

START_TEST(test_sigkill_keeps_flushed) {
  const char *tmp = ps_test_tmpdir();
  char *dk = strdup(path_in(tmp, "k")), *dr = strdup(path_in(tmp, "ref"));
  spec_buf sb;
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    psd_store *s = open_store(dk, 0, 1);
    submit(s, make_spec(&sb, "m", 7, "momentum"));
    push_all(s, 1);
    push_all(s, 2);
    ps_errbuf eb;
    if (psd_store_flush(s, &eb) < 0) _exit(3);
    push_all(s, 3); /* never flushed */
    raise(SIGKILL);
    _exit(4);
  }
  int st = ps_test_wait_pid(pid, 30000);
  if (st == -1) ps_test_stop(pid, SIGKILL, 1000);
  ck_assert_msg(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child status %d", st);
  psd_store *k = open_store(dk, 0, 1), *ref = open_store(dr, 0, 1);
  submit(ref, make_spec(&sb, "m", 7, "momentum"));
  push_all(ref, 1);
  push_all(ref, 2);
  ck_assert_uint_eq(version_of(k), 2);
  same_state(k, ref);
  psd_store_close(k);
  psd_store_close(ref);
  free(dk);
  free(dr);
}
END_TEST

/* snapshot copies every held chunk's values of "m" (caller frees). */
static float *snapshot(psd_store *s, uint64_t *n) {
  const uint32_t *ids;
  size_t nids;
  uint64_t v;
  ps_errbuf eb;
  ck_assert_int_eq(psd_store_held(s, "m", &ids, &nids, n), 0);
  float *out = malloc(*n * sizeof *out);
  ck_assert_int_eq(store_pull(s, "m", ids, nids, out, *n, &v, &eb), 0);
  return out;
}

START_TEST(test_bad_input_changes_nothing) {
  const char *tmp = ps_test_tmpdir();
  spec_buf sb;
  psd_store *s = open_store(tmp, 0, 2);
  submit(s, make_spec(&sb, "m", 3, "adam"));
  push_all(s, 1);
  ps_errbuf eb;
  ck_assert_int_eq(psd_store_flush(s, &eb), 0);
  uint64_t n0;
  float *before = snapshot(s, &n0);
  const uint32_t *held;
  size_t nheld;
  ck_assert_int_eq(psd_store_held(s, "m", &held, &nheld, NULL), 0);
  ck_assert_uint_ge(nheld, 2);
  /* A chunk of the model that shard 0 does not hold. */
  ps_layout l;
  ck_assert_int_eq(ps_layout_build(&l, &sb.spec, 1000, ids2, 2, &eb), 0);
  uint32_t other = UINT32_MAX;
  for (size_t c = 0; c < l.nchunks; c++)
    if (l.chunks[c].shard == 1) other = (uint32_t)c;
  uint32_t nchunks = (uint32_t)l.nchunks;
  ps_layout_release(&l);
  ck_assert_uint_ne(other, UINT32_MAX);
  uint32_t len0 = 0, len1 = 0;
  psd_store_chunk_state(s, "m", held[0], NULL, &len0, NULL, NULL);
  psd_store_chunk_state(s, "m", held[1], NULL, &len1, NULL, NULL);
  float *g = calloc(len0 + len1, sizeof *g);
  for (uint32_t i = 0; i < len0 + len1; i++) g[i] = 0.25f;
  uint64_t v = 99, ne;
  char want[200];

  ck_assert_int_eq(store_push(s, "x", held, 1, g, len0, 0, 0, 0, &v, &eb), PS_ENOENT);
  ck_assert_str_eq(eb.msg, "unknown model 'x'");
  uint32_t bad[2] = {held[0], nchunks};
  ck_assert_int_eq(store_push(s, "m", bad, 2, g, len0 + 64, 0, 0, 0, &v, &eb), PS_ENOENT);
  snprintf(want, sizeof want, "model 'm' has no chunk %u (shard 0)", nchunks);
  ck_assert_str_eq(eb.msg, want);
  bad[1] = other;
  ck_assert_int_eq(store_push(s, "m", bad, 2, g, len0 + 64, 0, 0, 0, &v, &eb), PS_ENOENT);
  snprintf(want, sizeof want, "chunk %u of model 'm' is not on shard 0", other);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_int_eq(store_payload_elems(s, "m", bad, 2, &ne, &eb), PS_ENOENT);
  ck_assert_int_eq(store_push(s, "m", held, 0, g, 0, 0, 0, 0, &v, &eb), PS_EINVAL);
  bad[1] = held[0];
  ck_assert_int_eq(store_push(s, "m", bad, 2, g, 2 * len0, 0, 0, 0, &v, &eb), PS_EINVAL);
  ck_assert_int_eq(store_payload_elems(s, "m", bad, 2, &ne, &eb), PS_EINVAL);
  ck_assert_int_eq(store_push(s, "m", held, 2, g, len0 + len1 - 1, 0, 0, 0, &v, &eb), PS_EINVAL);
  snprintf(want, sizeof want, "push to model 'm': %u bytes of fp32, its %u elements need %u",
           4 * (len0 + len1 - 1), len0 + len1, 4 * (len0 + len1));
  ck_assert_str_eq(eb.msg, want);
  ck_assert_int_eq(store_pull(s, "m", held, 2, before, len0 + len1 + 1, &v, &eb), PS_EINVAL);
  /* Non-finite values in the second chunk: the first must stay untouched. */
  g[len0 + 3] = NAN;
  ck_assert_int_eq(store_push(s, "m", held, 2, g, len0 + len1, 0, 0, 0, &v, &eb), PS_EINVAL);
  snprintf(want, sizeof want, "gradient of chunk %u of model 'm' is not finite", held[1]);
  ck_assert_str_eq(eb.msg, want);
  g[len0 + 3] = -INFINITY;
  ck_assert_int_eq(store_push(s, "m", held, 2, g, len0 + len1, 0, 0, 0, &v, &eb), PS_EINVAL);
  ck_assert_uint_eq(v, 99);

  /* Bad specs. */
  spec_buf sb2;
  Ps__ModelSpec *bs = make_spec(&sb2, "n", 1, "rmsprop");
  ck_assert_int_eq(psd_store_submit(s, bs, 0, NULL, NULL, NULL, &eb), PS_EINVAL);
  bs = make_spec(&sb2, "n", 1, "sgd");
  sb2.opt.lr = 0;
  ck_assert_int_eq(psd_store_submit(s, bs, 0, NULL, NULL, NULL, &eb), PS_EINVAL);
  bs = make_spec(&sb2, "n", 1, "sgd");
  bs->n_tensors = 0;
  ck_assert_int_eq(psd_store_submit(s, bs, 0, NULL, NULL, NULL, &eb), PS_EINVAL);
  bs = make_spec(&sb2, "n", 1, "sgd");
  sb2.t[1].init = "bogus";
  ck_assert_int_eq(psd_store_submit(s, bs, 0, NULL, NULL, NULL, &eb), PS_EINVAL);
  /* a graph with two nodes of one name, refused naming it (it was taken) */
  bs = make_spec(&sb2, "n", 1, "sgd");
  const char *dup;
  bs->graph.data = ps_test_graph_dup_node(&bs->graph.len, &dup);
  ck_assert_int_eq(psd_store_submit(s, bs, 0, NULL, NULL, NULL, &eb), PS_EINVAL);
  snprintf(want, sizeof want, "model 'n': graph: two nodes are named '%s' (nodes[0] and nodes[2])",
           dup);
  ck_assert_msg(strstr(eb.msg, want), "no \"%s\" in \"%s\"", want, eb.msg);
  /* ... and with a bad model name too, the name is refused first, never
   * quoted raw (the graph's message quoted it, an escape sequence and all) */
  bs->name = (char *)"n\x1b[2Jx";
  ck_assert_int_eq(psd_store_submit(s, bs, 0, NULL, NULL, NULL, &eb), PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "bad model name") && !strchr(eb.msg, '\x1b'), "%s", eb.msg);
  free(bs->graph.data);
  ck_assert_ptr_null(psd_store_spec(s, "n"));
  ck_assert_uint_eq(psd_store_nmodels(s), 1);

  uint64_t n1;
  float *after = snapshot(s, &n1);
  ck_assert_uint_eq(n0, n1);
  ck_assert_int_eq(memcmp(before, after, n0 * sizeof *after), 0);
  ck_assert_uint_eq(version_of(s), 1);
  ck_assert(!psd_store_dirty(s));
  /* And a good push still works. */
  g[len0 + 3] = 0;
  ck_assert_int_eq(store_push(s, "m", held, 2, g, len0 + len1, 0, 0, 0, &v, &eb), 0);
  ck_assert_uint_eq(v, 2);
  free(before);
  free(after);
  free(g);
  psd_store_close(s);
}
END_TEST

START_TEST(test_submit_semantics) {
  const char *tmp = ps_test_tmpdir();
  spec_buf sb, sb2;
  ps_errbuf eb;
  int created = -1;
  uint32_t nchunks;
  uint64_t nparams;
  psd_store *s = open_store(tmp, 0, 1);
  ck_assert_int_eq(psd_store_submit(s, make_spec(&sb, "m", 1, "sgd"), 0, &created, &nchunks, &nparams, &eb), 0);
  ck_assert_int_eq(created, 1);
  ck_assert_uint_eq(nparams, 620);
  ck_assert_uint_eq(nchunks, 10 + 1);
  push_all(s, 1);
  ck_assert_int_eq(psd_store_flush(s, &eb), 0);
  /* Same spec: a no-op that keeps the state. */
  ck_assert_int_eq(psd_store_submit(s, make_spec(&sb, "m", 1, "sgd"), 0, &created, NULL, NULL, &eb), 0);
  ck_assert_int_eq(created, 0);
  ck_assert_uint_eq(version_of(s), 1);
  /* Different spec under the name. */
  ck_assert_int_eq(psd_store_submit(s, make_spec(&sb2, "m", 2, "sgd"), 0, &created, NULL, NULL, &eb), PS_EEXIST);
  ck_assert_str_eq(eb.msg, "model 'm' exists with a different spec");
  ck_assert_uint_eq(psd_store_spec(s, "m")->seed, 1);
  /* A flush prepared before the replace and written after it must not
   * bring the old model back. */
  push_all(s, 2);
  psd_flush *f;
  ck_assert_int_eq(psd_flush_prepare(s, &f, &eb), 0);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(psd_store_submit(s, make_spec(&sb2, "m", 2, "sgd"), 1, &created, NULL, NULL, &eb), 0);
  ck_assert_int_eq(created, 2); /* replaced */
  ck_assert_int_eq(psd_flush_write(f, &eb), 0);
  psd_flush_finish(s, f, 0);
  ck_assert_uint_eq(version_of(s), 0);
  ck_assert_uint_eq(psd_store_spec(s, "m")->seed, 2);
  uint64_t n;
  float *fresh = snapshot(s, &n);
  psd_store_close(s);
  s = open_store(tmp, 0, 1);
  ck_assert_uint_eq(psd_store_spec(s, "m")->seed, 2);
  ck_assert_uint_eq(version_of(s), 0);
  uint64_t n2;
  float *again = snapshot(s, &n2);
  ck_assert_uint_eq(n, n2);
  ck_assert_int_eq(memcmp(fresh, again, n * sizeof *fresh), 0);
  /* A failed write leaves the snapshot dirty. */
  push_all(s, 3);
  ck_assert_int_eq(psd_flush_prepare(s, &f, &eb), 0);
  ck_assert(!psd_store_dirty(s));
  psd_flush_finish(s, f, PS_EIO);
  ck_assert(psd_store_dirty(s));
  ck_assert_int_eq(psd_store_flush(s, &eb), 0);
  ck_assert_int_eq(psd_flush_prepare(s, &f, &eb), 0);
  ck_assert_ptr_null(f);
  psd_store_close(s);
  s = open_store(tmp, 0, 1);
  ck_assert_uint_eq(version_of(s), 1);
  free(fresh);
  free(again);
  psd_store_close(s);
}
END_TEST

/* Hostile submits (issue 10, cases 1 and 10): a model too large to map
 * fails with a message naming it (the error path used to free the spec
 * and then read its name), a NaN initializer scale is named as such, and
 * the store goes on serving. */
START_TEST(test_submit_hostile) {
  const char *tmp = ps_test_tmpdir();
  spec_buf sb;
  ps_errbuf eb;
  int created;
  psd_store *s = open_store(tmp, 0, 1);
  /* 40 tensors of 2^40 floats with Adam: 480 TiB, more than the address
   * space, so the mapping fails on any host. */
  enum { NBIG = 40 };
  static uint32_t big_shape[2] = {1u << 20, 1u << 20};
  Ps__TensorSpec bt[NBIG], *btp[NBIG];
  char names[NBIG][8];
  Ps__ModelSpec *big = make_spec(&sb, "huge", 1, "adam");
  for (int i = 0; i < NBIG; i++) {
    bt[i] = sb.t[0];
    snprintf(names[i], sizeof names[i], "w%d", i);
    bt[i].name = names[i];
    bt[i].n_shape = 2;
    bt[i].shape = big_shape;
    btp[i] = &bt[i];
  }
  big->n_tensors = NBIG;
  big->tensors = btp;
  big->chunk_elems = 1u << 26;
  int rc = psd_store_submit(s, big, 0, &created, NULL, NULL, &eb);
  ck_assert_msg(rc == PS_ENOMEM || rc == PS_ETOOBIG, "huge: %s", eb.msg);
  ck_assert_msg(strstr(eb.msg, "model 'huge'"), "%s", eb.msg);
  ck_assert_uint_eq(psd_store_nmodels(s), 0);
  /* A NaN initializer scale. */
  Ps__ModelSpec *nan_spec = make_spec(&sb, "m", 1, "sgd");
  sb.t[1].scale = NAN;
  ck_assert_int_eq(psd_store_submit(s, nan_spec, 0, &created, NULL, NULL, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "tensor 'b': initializer scale nan is not a finite number up to 1e30");
  sb.t[1].scale = 1e35f;
  ck_assert_int_eq(psd_store_submit(s, nan_spec, 0, &created, NULL, NULL, &eb), PS_EINVAL);
  /* Still serving. */
  submit(s, make_spec(&sb, "m", 1, "sgd"));
  push_all(s, 1);
  ck_assert_uint_eq(version_of(s), 1);
  psd_store_close(s);
}
END_TEST

/* chunk_bytes copies chunk ID of model NAME (values and slots). */
static float *chunk_bytes(psd_store *s, const char *name, uint32_t id, size_t *n) {
  const float *d;
  uint32_t len;
  unsigned slots;
  ck_assert_int_eq(psd_store_chunk_state(s, name, id, &d, &len, &slots, NULL), 0);
  *n = (size_t)len * (1 + slots);
  float *c = malloc(*n * sizeof *c);
  memcpy(c, d, *n * sizeof *c);
  return c;
}

/* Huge but finite gradients (issue 10, case 6): an update that would
 * leave a value or a slot non-finite is refused whole with every chunk
 * unchanged (SGD lr 1 and two pushes of 3e38 made -inf then NaN; Adam
 * with one push of 1e30 froze its chunk), and clip_norm bounds a
 * chunk's gradient. */
START_TEST(test_push_never_poisons) {
  const char *tmp = ps_test_tmpdir();
  spec_buf sb;
  ps_errbuf eb;
  uint64_t version;
  psd_store *s = open_store(tmp, 0, 1);
  static const char *const kinds[] = {"sgd", "adam"};
  static const float huge[] = {3e38f, 1e30f};
  for (int k = 0; k < 2; k++) {
    Ps__ModelSpec *spec = make_spec(&sb, kinds[k], 1, kinds[k]);
    sb.opt.lr = 1;
    submit(s, spec);
    const uint32_t *held;
    size_t n;
    uint64_t elems;
    ck_assert_int_eq(psd_store_held(s, kinds[k], &held, &n, &elems), 0);
    ck_assert_uint_ge(n, 2);
    float *g = calloc(elems, sizeof *g);
    for (uint64_t i = 0; i < elems; i++) g[i] = 0.01f;
    uint32_t last = held[n - 1];
    uint64_t at = elems - 1; /* the last chunk's last element */
    g[at] = huge[k];
    /* SGD's first push stays finite (-3e38); its second would not. */
    int pushes_ok = k == 0 ? 1 : 0;
    for (int p = 0; p < pushes_ok; p++)
      ck_assert_msg(store_push(s, kinds[k], held, n, g, elems, 0, 0, 0, &version, &eb) == 0,
                    "%s", eb.msg);
    size_t nb, nf;
    float *first = chunk_bytes(s, kinds[k], held[0], &nf);
    float *before = chunk_bytes(s, kinds[k], last, &nb);
    uint64_t v0 = version_of_model(s, kinds[k]);
    ck_assert_int_eq(store_push(s, kinds[k], held, n, g, elems, 0, 1, 0, &version, &eb),
                     PS_EINVAL);
    ck_assert_msg(strstr(eb.msg, "would make a parameter or optimizer state non-finite"), "%s",
                  eb.msg);
    float *first2 = chunk_bytes(s, kinds[k], held[0], &nf);
    float *after = chunk_bytes(s, kinds[k], last, &nb);
    ck_assert_int_eq(memcmp(before, after, nb * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(first, first2, nf * sizeof(float)), 0); /* refused whole */
    ck_assert_uint_eq(version_of_model(s, kinds[k]), v0);
    /* Ordinary pushes go on. */
    g[at] = 0.01f;
    ck_assert_msg(store_push(s, kinds[k], held, n, g, elems, 0, 1, 0, &version, &eb) == 0,
                  "%s", eb.msg);
    free(first), free(first2), free(before), free(after), free(g);
  }
  /* clip_norm: a chunk whose own gradient norm exceeds it is refused. */
  Ps__ModelSpec *spec = make_spec(&sb, "clipped", 1, "sgd");
  spec->clip_norm = 1;
  submit(s, spec);
  const uint32_t *held;
  size_t n;
  uint64_t elems;
  ck_assert_int_eq(psd_store_held(s, "clipped", &held, &n, &elems), 0);
  float *g = calloc(elems, sizeof *g);
  g[0] = 0.6f, g[1] = 0.8f; /* norm 1 */
  ck_assert_msg(store_push(s, "clipped", held, n, g, elems, 0, 0, 0, &version, &eb) == 0, "%s",
                eb.msg);
  g[1] = 0.9f;
  ck_assert_int_eq(store_push(s, "clipped", held, n, g, elems, 0, 1, 0, &version, &eb),
                   PS_EINVAL);
  ck_assert_msg(strstr(eb.msg, "over its clip_norm 1"), "%s", eb.msg);
  free(g);
  psd_store_close(s);
}
END_TEST

START_TEST(test_two_shards_same_tensors) {
  const char *tmp = ps_test_tmpdir();
  spec_buf sb;
  psd_store *one = open_store(path_in(tmp, "one"), 0, 1);
  psd_store *s0 = open_store(path_in(tmp, "s0"), 0, 2);
  psd_store *s1 = open_store(path_in(tmp, "s1"), 1, 2);
  submit(one, make_spec(&sb, "m", 5, "adam"));
  submit(s0, make_spec(&sb, "m", 5, "adam"));
  submit(s1, make_spec(&sb, "m", 5, "adam"));
  const uint32_t *all;
  size_t nall, n0, n1;
  uint64_t e0, e1, eall;
  ck_assert_int_eq(psd_store_held(one, "m", &all, &nall, &eall), 0);
  ck_assert_int_eq(psd_store_held(s0, "m", NULL, &n0, &e0), 0);
  ck_assert_int_eq(psd_store_held(s1, "m", NULL, &n1, &e1), 0);
  ck_assert_uint_eq(n0 + n1, nall);
  ck_assert_uint_eq(e0 + e1, eall);
  ck_assert_uint_gt(n0, 0);
  ck_assert_uint_gt(n1, 0);
  for (size_t i = 0; i < nall; i++) {
    const float *a, *b;
    uint32_t la, lb;
    ck_assert_int_eq(psd_store_chunk_state(one, "m", all[i], &a, &la, NULL, NULL), 0);
    psd_store *holder = psd_store_chunk_state(s0, "m", all[i], &b, &lb, NULL, NULL) == 0 ? s0 : s1;
    if (holder == s1) {
      ck_assert_int_eq(psd_store_chunk_state(s1, "m", all[i], &b, &lb, NULL, NULL), 0);
    } else {
      ck_assert_int_eq(psd_store_chunk_state(s1, "m", all[i], NULL, NULL, NULL, NULL), PS_ENOENT);
    }
    ck_assert_uint_eq(la, lb);
    ck_assert_int_eq(memcmp(a, b, la * sizeof *a), 0);
  }
  psd_store_close(one);
  psd_store_close(s0);
  psd_store_close(s1);
}
END_TEST

START_TEST(test_open_failures) {
  const char *tmp = ps_test_tmpdir();
  char *d = strdup(tmp);
  ps_errbuf eb;
  psd_store *s = open_store(d, 0, 1);
  /* The same directory twice. */
  ck_assert_int_eq(try_open(d, 0, 1, &eb), PS_ELOCKED);
  ck_assert_msg(strstr(eb.msg, d) != NULL, "%s", eb.msg);
  psd_store_close(s);
  /* A directory that cannot be created. */
  ck_assert_int_eq(try_open("/dev/null/psd", 0, 1, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "/dev/null") != NULL, "%s", eb.msg);
  /* Shard 1's directory opened as shard 0. */
  char *d1 = strdup(path_in(d, "shard1"));
  s = open_store(d1, 1, 2);
  psd_store_close(s);
  ck_assert_int_eq(try_open(d1, 0, 2, &eb), PS_ECONFIG);
  char want[800];
  snprintf(want, sizeof want, "directory '%s' holds shard 1, not shard 0", d1);
  ck_assert_str_eq(eb.msg, want);
  /* Bad options. */
  ck_assert_int_eq(try_open(d1, 2, 2, &eb), PS_EINVAL);
  free(d1);
  free(d);
}
END_TEST

/* open_renamed opens DIR as shard INDEX of NSHARDS of cluster CLUSTER
 * (NULL: none given), renamed from RENAMED_FROM (NULL: not); the store in
 * *OUT (NULL on error).  open_cluster: not renamed. */
static int open_renamed(psd_store **out, const char *dir, const char *cluster,
                        const char *renamed_from, uint32_t index, size_t nshards,
                        ps_errbuf *eb) {
  psd_store_opts o = {.dir = dir, .cluster = cluster, .renamed_from = renamed_from,
                      .shard_index = index, .shard_ids = ids2, .nshards = nshards,
                      .chunk_elems = 1000};
  return psd_store_open(out, &o, eb);
}

static int open_cluster(psd_store **out, const char *dir, const char *cluster, uint32_t index,
                        size_t nshards, ps_errbuf *eb) {
  return open_renamed(out, dir, cluster, NULL, index, nshards, eb);
}

/* A store records its cluster's name: a data_dir copied from another
 * cluster's file is refused with both names, before it serves that
 * cluster's models; a store from before the record (opened without a
 * name) still opens, and takes the name of the first cluster that opens
 * it. */
START_TEST(test_open_other_cluster) {
  const char *tmp = ps_test_tmpdir();
  char *d = strdup(path_in(tmp, "a")), *old = strdup(path_in(tmp, "old"));
  spec_buf sb;
  ps_errbuf eb;
  char want[800];
  psd_store *s;
  ck_assert_msg(open_cluster(&s, d, "alpha", 0, 1, &eb) == 0, "%s", eb.msg);
  submit(s, make_spec(&sb, "m", 42, "sgd"));
  psd_store_close(s);
  /* another cluster's: refused, its model not loaded */
  s = (psd_store *)1;
  ck_assert_int_eq(open_cluster(&s, d, "beta", 0, 1, &eb), PS_ECONFIG);
  ck_assert_ptr_null(s);
  snprintf(want, sizeof want, "directory '%s' holds a store of cluster 'alpha', not of cluster "
           "'beta' (is data_dir another cluster's? if the cluster was renamed, start the shard "
           "once with --rename-cluster alpha)", d);
  ck_assert_str_eq(eb.msg, want);
  /* the cluster is named even where the shard id differs too */
  ck_assert_int_eq(open_cluster(&s, d, "beta", 1, 2, &eb), PS_ECONFIG);
  ck_assert_str_eq(eb.msg, want);
  /* its own cluster opens it, with its model */
  ck_assert_msg(open_cluster(&s, d, "alpha", 0, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_ptr_nonnull(psd_store_spec(s, "m"));
  psd_store_close(s);
  /* a store with no name recorded (written before the record) opens under
   * any cluster, keeps its model, and records that cluster's name */
  ck_assert_msg(open_cluster(&s, old, NULL, 0, 1, &eb) == 0, "%s", eb.msg);
  submit(s, make_spec(&sb, "m", 42, "sgd"));
  psd_store_close(s);
  ck_assert_msg(open_cluster(&s, old, "gamma", 0, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_ptr_nonnull(psd_store_spec(s, "m"));
  psd_store_close(s);
  ck_assert_int_eq(open_cluster(&s, old, "alpha", 0, 1, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "of cluster 'gamma', not of cluster 'alpha'") != NULL, "%s",
                eb.msg);
  ck_assert_msg(open_cluster(&s, old, "gamma", 0, 1, &eb) == 0, "%s", eb.msg);
  psd_store_close(s);
  /* a renamed cluster (psd --rename-cluster OLD): a store recording
   * another name than OLD is still refused; one recording OLD opens with
   * its model and records the new name, which later opens need */
  ck_assert_int_eq(open_renamed(&s, d, "delta", "gamma", 0, 1, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "of cluster 'alpha', not of cluster 'delta'") != NULL, "%s",
                eb.msg);
  ck_assert_msg(open_renamed(&s, d, "delta", "alpha", 0, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_ptr_nonnull(psd_store_spec(s, "m"));
  psd_store_close(s);
  ck_assert_int_eq(open_cluster(&s, d, "alpha", 0, 1, &eb), PS_ECONFIG);
  ck_assert_msg(open_cluster(&s, d, "delta", 0, 1, &eb) == 0, "%s", eb.msg);
  ck_assert_ptr_nonnull(psd_store_spec(s, "m"));
  psd_store_close(s);
  free(old);
  free(d);
}
END_TEST

/* A data_dir that is a symlink to a missing target, or under one, is
 * refused naming the link and its target, and nothing is made: it used to
 * say "'DIR' is not a directory" (or "cannot create ...: No such file or
 * directory" below it), which sent the operator looking at the wrong
 * thing.  A symlink to a directory is a good data_dir. */
START_TEST(test_open_dangling_symlink) {
  const char *tmp = ps_test_tmpdir();
  char *link = strdup(path_in(tmp, "link")), *to = strdup(path_in(tmp, "gone/x"));
  char *under = strdup(path_in(link, "shard0"));
  ck_assert_int_eq(symlink(to, link), 0);
  ps_errbuf eb;
  char want[1200];
  snprintf(want, sizeof want, "'%s' is a symlink to '%s', which does not exist (make the target, "
           "or point data_dir elsewhere)", link, to);
  ck_assert_int_eq(try_open(link, 0, 1, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_int_eq(try_open(under, 0, 1, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, want);
  int fd = 0;
  ck_assert_int_eq(psd_store_lock_dir(link, &fd, &eb), PS_EIO);
  ck_assert_int_eq(fd, -1);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_int_eq(psd_store_dir_check(under, &eb), PS_EIO);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_int_eq(access(path_in(tmp, "gone"), F_OK), -1);
  /* its target made: a good data_dir */
  char *gone = strdup(path_in(tmp, "gone"));
  ck_assert_int_eq(mkdir(gone, 0755), 0);
  ck_assert_int_eq(mkdir(to, 0755), 0);
  ck_assert_int_eq(psd_store_dir_check(under, &eb), 0);
  psd_store_close(open_store(under, 0, 1));
  free(gone);
  free(under);
  free(to);
  free(link);
}
END_TEST

/* RocksDB files are not preallocated (a fresh store holds kilobytes, not
 * the 35 MiB RocksDB reserves for its log by default), and the empty
 * logs that failed opens leave are removed at the next open. */
START_TEST(test_open_no_dead_space) {
  const char *d = ps_test_tmpdir();
  psd_store *s = open_store(d, 0, 1);
  psd_store_close(s);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "du -sk '%s'", d);
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  long kib = -1;
  ck_assert_int_eq(fscanf(p, "%ld", &kib), 1);
  pclose(p);
  ck_assert_msg(kib >= 0 && kib < 4096, "a fresh store takes %ld KiB", kib);
  const char *empty = path_in(d, "000999.log");
  FILE *f = fopen(empty, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);
  s = open_store(d, 0, 1);
  ck_assert_int_eq(access(empty, F_OK), -1);
  psd_store_close(s);
}
END_TEST

/* open_budget opens DIR as the only shard with memory budget MAX. */
static psd_store *open_budget(const char *dir, uint64_t max) {
  psd_store_opts o = {.dir = dir, .shard_index = 0, .shard_ids = ids2, .nshards = 1,
                      .chunk_elems = 1000, .max_bytes = max};
  psd_store *s;
  ps_errbuf eb;
  ck_assert_msg(psd_store_open(&s, &o, &eb) == 0, "open '%s': %s", dir, eb.msg);
  return s;
}

/* push_first pushes gradients f(step) to the first held chunk of "m" only. */
static void push_first(psd_store *s, int step) {
  const uint32_t *ids;
  size_t n;
  ck_assert_int_eq(psd_store_held(s, "m", &ids, &n, NULL), 0);
  uint32_t len;
  ck_assert_int_eq(psd_store_chunk_state(s, "m", ids[0], NULL, &len, NULL, NULL), 0);
  float *g = malloc(len * sizeof *g);
  for (uint32_t i = 0; i < len; i++) g[i] = (float)cos((double)(i + (uint32_t)step * 3)) * 0.25f;
  ps_errbuf eb;
  uint64_t version;
  ck_assert_msg(store_push(s, "m", ids, 1, g, len, 0, 0, 0, &version, &eb) == 0, "push: %s",
                eb.msg);
  free(g);
}

/* A failed flush closes RocksDB (psd_store.c invariant 8): the store goes
 * on serving from memory and refuses submits; the next flush reopens the
 * directory without touching memory and writes what the failed one held
 * plus what came after; a reopen that fails leaves it closed and dirty. */
START_TEST(test_failed_flush_reopens) {
  const char *tmp = ps_test_tmpdir();
  char *da = strdup(path_in(tmp, "a")), *dr = strdup(path_in(tmp, "ref"));
  char *moved = strdup(path_in(tmp, "moved"));
  spec_buf sb, sb2;
  ps_errbuf eb;
  psd_store *a = open_store(da, 0, 1), *ref = open_store(dr, 0, 1);
  submit(a, make_spec(&sb, "m", 9, "adam"));
  submit(ref, make_spec(&sb, "m", 9, "adam"));
  push_all(a, 1);
  push_all(ref, 1);
  ck_assert_int_eq(psd_store_flush(a, &eb), 0);

  /* Every chunk dirty, then the write fails. */
  push_all(a, 2);
  push_all(ref, 2);
  psd_flush *f;
  ck_assert_int_eq(psd_flush_prepare(a, &f, &eb), 0);
  ck_assert_ptr_nonnull(f);
  psd_flush_finish(a, f, PS_ENOSPC);
  ck_assert(psd_store_dirty(a));
  int created = -1;
  ck_assert_int_eq(psd_store_submit(a, make_spec(&sb2, "n", 1, "sgd"), 0, &created, NULL, NULL,
                                    &eb), PS_EDEGRADED);
  ck_assert_msg(strstr(eb.msg, "closed after a failed write") && strstr(eb.msg, "'n'"), "%s",
                eb.msg);
  ck_assert_int_eq(created, 0);
  ck_assert_uint_eq(psd_store_nmodels(a), 1);
  /* The same spec again writes nothing: still answered. */
  ck_assert_int_eq(psd_store_submit(a, make_spec(&sb, "m", 9, "adam"), 0, &created, NULL, NULL,
                                    &eb), 0);

  /* Memory serves; one chunk more changes. */
  push_first(a, 3);
  push_first(ref, 3);
  same_state(a, ref);

  /* The directory gone: the reopen fails (no empty store is made in its
   * place; RocksDB leaves a directory with its LOG), nothing is lost. */
  ck_assert_int_eq(rename(da, moved), 0);
  ck_assert_int_lt(psd_store_flush(a, &eb), 0);
  ck_assert_msg(strstr(eb.msg, "cannot reopen store"), "%s", eb.msg);
  ck_assert(psd_store_dirty(a));
  char cmd[1400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mv '%s' '%s'", da, moved, da);
  ck_assert_int_eq(system(cmd), 0);

  /* Back: the flush reopens and writes; memory is untouched by it. */
  ck_assert_msg(psd_store_flush(a, &eb) == 0, "%s", eb.msg);
  ck_assert(!psd_store_dirty(a));
  same_state(a, ref);
  ck_assert_uint_eq(version_of(a), 3);
  ck_assert_msg(psd_store_submit(a, make_spec(&sb2, "n", 1, "sgd"), 0, &created, NULL, NULL,
                                 &eb) == 0, "%s", eb.msg);
  psd_store_close(a);

  /* On disk: steps 1-3, including the chunks of the failed flush. */
  a = open_store(da, 0, 1);
  ck_assert_uint_eq(version_of(a), 3);
  ck_assert_ptr_nonnull(psd_store_spec(a, "n"));
  same_state(a, ref);
  psd_store_close(a);
  psd_store_close(ref);
  free(da);
  free(dr);
  free(moved);
}
END_TEST

/* count_in counts NEEDLE in HAY. */
static int count_in(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++) n++;
  return n;
}

/* fail_flushes has N flushes of A fail after the write (as on a full
 * disk, retried every second), the log's messages appended to ERRLOG. */
static void fail_flushes(psd_store *a, int n, const char *errlog) {
  fflush(stderr);
  int saved = dup(2), lf = open(errlog, O_WRONLY | O_CREAT | O_APPEND, 0644);
  ck_assert(saved >= 0 && lf >= 0);
  dup2(lf, 2);
  ps_errbuf eb;
  for (int i = 0; i < n; i++) {
    psd_flush *f;
    ck_assert_msg(psd_flush_prepare(a, &f, &eb) == 0, "%s", eb.msg);
    ck_assert_ptr_nonnull(f);
    ck_assert_msg(i == 0 || psd_flush_write(f, &eb) == 0, "%s", eb.msg); /* reopens */
    psd_flush_finish(a, f, PS_ENOSPC);
  }
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(lf);
}

/* A flush failing at every retry closes the store each time: that is said
 * at the first and every 60th in a row (as the flush's own error), not at
 * each (20 lines in 20 s of a full disk); a new run of failures after a
 * flush that worked is said again. */
START_TEST(test_failed_flush_close_said_rarely) {
  const char *tmp = ps_test_tmpdir();
  char *da = strdup(path_in(tmp, "a")), *errlog = strdup(path_in(tmp, "stderr"));
  spec_buf sb;
  ps_errbuf eb;
  psd_store *a = open_store(da, 0, 1);
  submit(a, make_spec(&sb, "m", 9, "adam"));
  push_all(a, 1);
  fail_flushes(a, 20, errlog);
  char *text = ps_test_read_file(errlog, NULL);
  ck_assert_msg(count_in(text, "closed after a failed flush") == 1, "%s", text);
  free(text);
  ck_assert_msg(psd_store_flush(a, &eb) == 0, "%s", eb.msg);
  push_all(a, 2);
  fail_flushes(a, 2, errlog);
  text = ps_test_read_file(errlog, NULL);
  ck_assert_msg(count_in(text, "closed after a failed flush") == 2, "%s", text);
  free(text);
  psd_store_close(a);
  free(da);
  free(errlog);
}
END_TEST

/* count_info_logs counts RocksDB's rotated info logs (LOG.old.*) in DIR. */
static int count_info_logs(const char *dir) {
  char cmd[700];
  snprintf(cmd, sizeof cmd, "exit $(ls '%s' | grep -c '^LOG\\.old\\.')", dir);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Reopens that keep failing (a DEGRADED shard retries at every flush
 * interval) leave a bounded number of rotated info logs: each RocksDB
 * open moves LOG to a new, empty LOG.old.N, which no open that fails
 * removes (21 of them after 10 s at flush_interval_ms 500). */
START_TEST(test_failed_reopens_bound_info_logs) {
  const char *tmp = ps_test_tmpdir();
  char *da = strdup(path_in(tmp, "a")), *moved = strdup(path_in(tmp, "moved"));
  spec_buf sb;
  ps_errbuf eb;
  psd_store *a = open_store(da, 0, 1);
  submit(a, make_spec(&sb, "m", 9, "adam"));
  push_all(a, 1);
  ck_assert_int_eq(psd_store_flush(a, &eb), 0);
  push_all(a, 2);
  psd_flush *f;
  ck_assert_int_eq(psd_flush_prepare(a, &f, &eb), 0);
  psd_flush_finish(a, f, PS_ENOSPC); /* closed: the next flushes reopen */
  /* the directory gone, each reopen fails (and leaves RocksDB's LOG) */
  ck_assert_int_eq(rename(da, moved), 0);
  for (int i = 0; i < 12; i++) ck_assert_int_lt(psd_store_flush(a, &eb), 0);
  int n = count_info_logs(da);
  ck_assert_msg(n >= 0 && n <= 2, "%d LOG.old files after 12 failed reopens", n);
  psd_store_close(a);
  free(da);
  free(moved);
}
END_TEST

/* heap_used returns the bytes malloc has handed out, every arena. */
static uint64_t heap_used(void) {
  struct mallinfo2 mi = mallinfo2();
  return (uint64_t)mi.uordblks + mi.hblkhd;
}

/* The budget counts what a model of many tiny tensors really takes: its
 * spec (a message, a name and a shape per tensor, the packed copy) and
 * the layout, not only the chunk bookkeeping.  The audit: 15 models of
 * 100,000 one-element tensors took a shard from 83 MB to 708 MB, every
 * one accepted, the budget counting 64 bytes a chunk of the ~300 used. */
START_TEST(test_submit_budget_tiny_tensors) {
  enum { N = 20000 };
  const char *tmp = ps_test_tmpdir();
  ps_test_tiny m;
  ps_test_tiny_make(&m, N);
  ps_errbuf eb;
  int created;
  /* What the shard keeps for a model, measured (the second submit: the
   * first one also grows the heap's own arenas and RocksDB's buffers)
   * against what the budget counts for it. */
  psd_store *u = open_store(path_in(tmp, "u"), 0, 1);
  submit(u, ps_test_tiny_spec(&m, "a"));
  uint64_t counted_a = psd_store_bytes(u);
  uint64_t h0 = heap_used();
  submit(u, ps_test_tiny_spec(&m, "b"));
  uint64_t used = heap_used() - h0, counted = psd_store_bytes(u) - counted_a;
  psd_store_close(u);
#ifdef __SANITIZE_ADDRESS__
  used = counted; /* ASan's allocator: malloc's figures do not see it (and it pads) */
#endif
  ck_assert_msg(counted >= used * 9 / 10 && counted <= used * 2,
                "a model of %d one-element tensors took %" PRIu64 " bytes of heap (%" PRIu64
                " a tensor), the budget counts %" PRIu64 " (%" PRIu64 " a tensor)",
                N, used, used / N, counted, counted / N);
  /* At least what certainly exists per tensor: its unpacked message and
   * name, its layout entry and chunk bookkeeping, its value. */
  ck_assert_uint_ge(counted / N, sizeof(Ps__TensorSpec) + sizeof(ps_tensor_info) +
                                     sizeof(ps_chunk) + 3 + 4);

  /* A budget of 150 bytes a tensor (twice the old count) refuses the
   * model, naming it; nothing is made. */
  psd_store *s = open_budget(path_in(tmp, "b"), (uint64_t)N * 150);
  ck_assert_int_eq(psd_store_submit(s, ps_test_tiny_spec(&m, "m"), 0, &created, NULL, NULL, &eb),
                   PS_ETOOBIG);
  ck_assert_msg(strstr(eb.msg, "model 'm' needs ") && strstr(eb.msg, "(limits.max_shard_bytes)"),
                "%s", eb.msg);
  ck_assert_uint_eq(psd_store_nmodels(s), 0);
  psd_store_close(s);
  /* With room for exactly one such model, the second is refused. */
  s = open_budget(path_in(tmp, "c"), counted_a + counted_a / 2);
  submit(s, ps_test_tiny_spec(&m, "a"));
  ck_assert_int_eq(psd_store_submit(s, ps_test_tiny_spec(&m, "b"), 0, &created, NULL, NULL, &eb),
                   PS_ETOOBIG);
  ck_assert_uint_eq(psd_store_nmodels(s), 1);
  ck_assert_uint_eq(psd_store_bytes(s), counted_a);
  psd_store_close(s);
  ps_test_tiny_free(&m);
}
END_TEST

/* size_str formats B as psd_store's messages do. */
static const char *size_str(char *buf, uint64_t b) {
  static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = (double)b / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) v /= 1024, u++;
  snprintf(buf, 32, "%.2f %s", v, units[u]);
  return buf;
}

/* limits.max_shard_bytes at submit: refused before anything is made,
 * with the model, its size and the budget named; other models count, the
 * replaced one does not; a restored store over budget opens. */
START_TEST(test_submit_budget) {
  const char *tmp = ps_test_tmpdir();
  spec_buf sb, sb2, sb3;
  ps_errbuf eb;
  int created;
  char want[600], n1[32], n2[32], n3[32];
  /* What "m" (Adam) and "s" (SGD) take, from an unlimited store. */
  psd_store *u = open_store(path_in(tmp, "u"), 0, 1);
  submit(u, make_spec(&sb, "m", 1, "adam"));
  uint64_t need_m = psd_store_bytes(u);
  /* 620 values and 2 Adam slots each, 11 chunks of bookkeeping (72 bytes
   * each at most), the spec (two tensors, the model: 2 KiB at most). */
  ck_assert_uint_ge(need_m, 620 * 3 * 4);
  ck_assert_uint_le(need_m, 620 * 3 * 4 + 11 * 72 + 2048);
  submit(u, make_spec(&sb2, "s", 1, "sgd"));
  uint64_t need_s = psd_store_bytes(u) - need_m;
  ck_assert_uint_lt(need_s, need_m);
  psd_store_close(u);

  char *d = strdup(path_in(tmp, "b"));
  psd_store *s = open_budget(d, need_m - 1);
  ck_assert_int_eq(psd_store_submit(s, make_spec(&sb, "m", 1, "adam"), 0, &created, NULL, NULL,
                                    &eb), PS_ETOOBIG);
  snprintf(want, sizeof want,
           "model 'm' needs %s on shard 0, over its budget of %s (limits.max_shard_bytes)",
           size_str(n1, need_m), size_str(n2, need_m - 1));
  ck_assert_str_eq(eb.msg, want);
  ck_assert_uint_eq(psd_store_nmodels(s), 0);
  ck_assert_uint_eq(psd_store_bytes(s), 0);
  psd_store_close(s);

  /* Exactly the budget fits; a second model does not. */
  s = open_budget(d, need_m);
  submit(s, make_spec(&sb, "m", 1, "adam"));
  ck_assert_uint_eq(psd_store_bytes(s), need_m);
  ck_assert_int_eq(psd_store_submit(s, make_spec(&sb2, "s", 1, "sgd"), 0, &created, NULL, NULL,
                                    &eb), PS_ETOOBIG);
  snprintf(want, sizeof want,
           "model 's' needs %s on shard 0, which holds %s of other models: over its budget of "
           "%s (limits.max_shard_bytes)",
           size_str(n1, need_s), size_str(n2, need_m), size_str(n3, need_m));
  ck_assert_str_eq(eb.msg, want);
  ck_assert_uint_eq(psd_store_nmodels(s), 1);
  /* Replacing "m" with as big a model: the old one is not counted. */
  ck_assert_int_eq(psd_store_submit(s, make_spec(&sb3, "m", 2, "adam"), 1, &created, NULL, NULL,
                                    &eb), 0);
  ck_assert_int_eq(created, 2); /* replaced */
  ck_assert_uint_eq(psd_store_spec(s, "m")->seed, 2);
  psd_store_close(s);

  /* The budget shrank: the store opens with its model, new ones wait. */
  s = open_budget(d, need_m / 2);
  ck_assert_ptr_nonnull(psd_store_spec(s, "m"));
  ck_assert_int_eq(psd_store_submit(s, make_spec(&sb2, "s", 1, "sgd"), 0, &created, NULL, NULL,
                                    &eb), PS_ETOOBIG);
  psd_store_close(s);

  /* GiB-sized: a [32768, 32768] Adam tensor, 12 GiB of values. */
  static uint32_t big_shape[] = {32768, 32768};
  sb3.t[0].shape = big_shape;
  sb3.spec.n_tensors = 1;
  sb3.spec.name = "big";
  sb3.spec.chunk_elems = 65536;
  s = open_budget(path_in(tmp, "g"), UINT64_C(2) << 30);
  ck_assert_int_eq(psd_store_submit(s, &sb3.spec, 0, &created, NULL, NULL, &eb), PS_ETOOBIG);
  ck_assert_str_eq(eb.msg, "model 'big' needs 12.00 GiB on shard 0, over its budget of 2.00 GiB "
                           "(limits.max_shard_bytes)");
  /* A hostile spec of 2^30 one-element chunks: its bookkeeping alone is
   * over, refused without walking (or making) them. */
  sb3.spec.chunk_elems = 1;
  int64_t t0 = ps_test_now_ms();
  ck_assert_int_eq(psd_store_submit(s, &sb3.spec, 0, &created, NULL, NULL, &eb), PS_ETOOBIG);
  ck_assert_int_lt(ps_test_now_ms() - t0, 1000);
  ck_assert_msg(strstr(eb.msg, "model 'big' needs at least ") != NULL, "%s", eb.msg);
  ck_assert_uint_eq(psd_store_nmodels(s), 0);
  psd_store_close(s);
  free(d);
}
END_TEST

Suite *psd_store_suite(void) {
  Suite *s = suite_create("psd_store");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_flush_reopen_identical);
  tcase_add_test(tc, test_sigkill_keeps_flushed);
  tcase_add_test(tc, test_bad_input_changes_nothing);
  tcase_add_test(tc, test_submit_semantics);
  tcase_add_test(tc, test_submit_hostile);
  tcase_add_test(tc, test_push_never_poisons);
  tcase_add_test(tc, test_two_shards_same_tensors);
  tcase_add_test(tc, test_open_failures);
  tcase_add_test(tc, test_open_other_cluster);
  tcase_add_test(tc, test_open_dangling_symlink);
  tcase_add_test(tc, test_open_no_dead_space);
  tcase_add_test(tc, test_failed_flush_reopens);
  tcase_add_test(tc, test_failed_flush_close_said_rarely);
  tcase_add_test(tc, test_failed_reopens_bound_info_logs);
  tcase_add_test(tc, test_submit_budget);
  tcase_add_test(tc, test_submit_budget_tiny_tensors);
  tcase_add_test(tc, test_open_chunk_records_without_seq);
  tcase_add_test(tc, test_version_record_counters);
  tcase_add_test(tc, test_pull_view);
  suite_add_tcase(s, tc);
  return s;
}
