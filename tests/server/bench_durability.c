/* ps_bench_durability: the measurements of scripts/bench_durability.
 *
 *   ps_bench_durability --config FILE --size BYTES --inflight N [--conns C]
 *                       [--secs S]
 *       N pushes kept in flight to shard 0 of FILE over C channel
 *       connections (default min(N, 8); unordered acks, each connection
 *       one thread pipelining its share), each push to its own chunk of
 *       BYTES (SGD, zero gradients), back to back for S seconds (default 3,
 *       after 0.5 s of warm-up): pushes/s, the ack latency's p50 and p99,
 *       and from the shard's Status the redo log's syncs/s and pushes per
 *       sync (0 under periodic).  One JSON line.
 *   ps_bench_durability --fsync-ref DIR [--secs S]
 *       the disk's own rate of 4 KiB appends each followed by fdatasync,
 *       one writer (a file in DIR, removed after).  One JSON line.
 *   ps_bench_durability --bw-ref DIR [--secs S]
 *       the disk's sequential log bandwidth: 1 MiB writes each followed by
 *       fdatasync, one writer, appending to a fresh file for S seconds,
 *       then overwriting it from its start for S seconds (MB/s of each).
 *       One JSON line.
 *   ps_bench_durability --rocksdb-ref DIR [--secs S]
 *       RocksDB's synced puts of 1 KiB (WAL + fsync per write group) with 1
 *       and 8 writer threads: the alternative to psd's own log file; and
 *       one thread's synced puts (rate, p99 latency) while another writes
 *       64 MiB synced batches back to back, as psd's snapshots would go
 *       through the same WAL.  One JSON line. */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rocksdb/c.h>

#include "ps_chan.h"
#include "ps_config.h"
#include "ps.pb-c.h"
#include "ps_rpc.h"

#define BD_CONNS 8 /* connections by default, the pushes in flight spread over them */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct bd_thread {
  const char *addr, *cluster, *model;
  uint32_t chunk, elems, depth; /* chunks chunk.. chunk+depth-1, DEPTH pushes in flight */
  double t_start, t_end;      /* counted window */
  double *lat;                /* latencies in the window, seconds */
  size_t nlat, cap;
  int err;
  char msg[sizeof(ps_errbuf)];
  pthread_t th;
} bd_thread;

static void *bd_pusher(void *arg) {
  bd_thread *t = arg;
  ps_chan_client *c = NULL;
  ps_errbuf eb;
  float *g = calloc(t->elems, sizeof *g);
  double *sent = calloc(t->depth, sizeof *sent); /* send times, oldest first (a ring) */
  struct iovec v = {.iov_base = g, .iov_len = t->elems * sizeof(float)};
  uint32_t next = 0, head = 0, n = 0; /* pushes sent, ring head, in flight */
  t->err = ps_chan_connect_auth(&c, t->addr, t->cluster, NULL, PS_CHAN_UNORDERED_ACKS, 10000, &eb);
  while (t->err == 0) {
    double t0 = now_s();
    while (n < t->depth && t0 < t->t_end && t->err == 0) { /* DEPTH in flight until the end */
      uint32_t chunk = t->chunk + next++ % t->depth;
      ps_req r = {.model = t->model, .ids = &chunk, .nids = 1, .nbytes = v.iov_len};
      uint64_t id;
      if ((t->err = ps_chan_send_pushv(c, &r, &v, 1, &id, &eb)) == 0)
        sent[(head + n++) % t->depth] = t0;
    }
    uint64_t id, ver;
    if (t->err < 0 || !n || (t->err = ps_chan_recv(c, &id, &ver, &eb)) < 0) break;
    double t1 = now_s(), ts = sent[head];
    head = (head + 1) % t->depth;
    n--;
    if (ts < t->t_start || t1 > t->t_end) continue;
    if (t->nlat == t->cap) {
      t->cap = t->cap ? 2 * t->cap : 4096;
      t->lat = realloc(t->lat, t->cap * sizeof *t->lat);
    }
    t->lat[t->nlat++] = t1 - ts;
  }
  if (t->err < 0) snprintf(t->msg, sizeof t->msg, "%s", eb.msg);
  ps_chan_close(c);
  free(g);
  free(sent);
  return NULL;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* bd_status reads shard 0's redo log counters. */
static int bd_status(ps_rpc *r, uint64_t *syncs, uint64_t *records) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  ProtobufCMessage *rep = NULL;
  ps_errbuf eb;
  int err = ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor, &rep, 10000,
                        &eb);
  if (err < 0) {
    fprintf(stderr, "ps_bench_durability: status: %s\n", eb.msg);
    return err;
  }
  *syncs = ((Ps__StatusReply *)rep)->wal_syncs;
  *records = ((Ps__StatusReply *)rep)->wal_records;
  protobuf_c_message_free_unpacked(rep, NULL);
  return 0;
}

/* bd_submit registers MODEL: N chunks of ELEMS floats, SGD. */
static int bd_submit(ps_rpc *r, const char *model, uint32_t n, uint32_t elems) {
  uint32_t shape[2] = {n, elems};
  Ps__TensorSpec ts = PS__TENSOR_SPEC__INIT, *tsp = &ts;
  ts.name = "w";
  ts.n_shape = 2;
  ts.shape = shape;
  ts.init = "zeros";
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd";
  opt.lr = 0.01f;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = (char *)model;
  spec.n_tensors = 1;
  spec.tensors = &tsp;
  spec.optimizer = &opt;
  spec.chunk_elems = elems;
  Ps__SubmitModelRequest req = PS__SUBMIT_MODEL_REQUEST__INIT;
  req.model = &spec;
  req.replace = 1;
  ProtobufCMessage *rep = NULL;
  ps_errbuf eb;
  int err = ps_rpc_call(r, "/ps.Ps/SubmitModel", &req.base, &ps__submit_model_reply__descriptor,
                        &rep, 30000, &eb);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  if (err < 0) fprintf(stderr, "ps_bench_durability: submit: %s\n", eb.msg);
  return err;
}

/* bd_push_run: the measurement of bd_push_bench on shard SC, MODEL
 * submitted. */
static int bd_push_run(ps_rpc *r, const ps_config *cfg, const ps_shard_conf *sc, const char *model,
                       uint64_t size, int inflight, int conns, double secs) {
  uint32_t elems = (uint32_t)(size / 4);
  uint64_t s0, r0, s1, r1;
  bd_thread *ts = calloc((size_t)conns, sizeof *ts);
  double start = now_s() + 0.5, end = start + secs;
  for (int i = 0, at = 0; i < conns; i++) { /* INFLIGHT spread over CONNS connections */
    uint32_t depth = (uint32_t)(inflight / conns + (i < inflight % conns));
    ts[i] = (bd_thread){.addr = sc->channel_addr, .cluster = cfg->cluster, .model = model,
                        .chunk = (uint32_t)at, .elems = elems, .depth = depth,
                        .t_start = start, .t_end = end};
    at += (int)depth;
    pthread_create(&ts[i].th, NULL, bd_pusher, &ts[i]);
  }
  while (now_s() < start) usleep(1000);
  int bad = bd_status(r, &s0, &r0) < 0;
  while (now_s() < end) usleep(1000);
  bad += bd_status(r, &s1, &r1) < 0;
  size_t n = 0;
  for (int i = 0; i < conns; i++) {
    pthread_join(ts[i].th, NULL);
    if (ts[i].err < 0 && !bad++) fprintf(stderr, "ps_bench_durability: push: %s\n", ts[i].msg);
    n += ts[i].nlat;
  }
  double *all = malloc((n ? n : 1) * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < conns; i++) {
    memcpy(all + k, ts[i].lat, ts[i].nlat * sizeof *all);
    k += ts[i].nlat;
    free(ts[i].lat);
  }
  qsort(all, n, sizeof *all, cmp_d);
  double p50 = n ? all[n / 2] : 0, p99 = n ? all[(size_t)((double)n * 0.99)] : 0;
  uint64_t syncs = bad ? 0 : s1 - s0, recs = bad ? 0 : r1 - r0;
  printf("{\"size\":%llu,\"inflight\":%d,\"conns\":%d,\"secs\":%.1f,\"pushes_per_s\":%.1f,"
         "\"syncs_per_s\":%.1f,\"pushes_per_sync\":%.2f,\"p50_us\":%.0f,\"p99_us\":%.0f,"
         "\"errors\":%d}\n",
         (unsigned long long)size, inflight, conns, secs, (double)n / secs, (double)syncs / secs,
         syncs ? (double)recs / (double)syncs : 0.0, p50 * 1e6, p99 * 1e6, bad);
  free(all);
  free(ts);
  return bad ? 1 : 0;
}

static int bd_push_bench(const char *config, uint64_t size, int inflight, int conns, double secs) {
  ps_config cfg;
  ps_errbuf eb;
  if (ps_config_load(&cfg, config, &eb) < 0) {
    fprintf(stderr, "%s\n", eb.msg);
    return 2;
  }
  const ps_shard_conf *sc = &cfg.shards[0];
  ps_rpc *r = NULL;
  char model[64];
  snprintf(model, sizeof model, "dur%llu_%d", (unsigned long long)size, inflight);
  uint64_t s0, r0;
  int rc = 1;
  if (ps_rpc_open(&r, sc->grpc_addr, &eb) < 0)
    fprintf(stderr, "ps_bench_durability: %s\n", eb.msg);
  else if (bd_submit(r, model, (uint32_t)inflight, (uint32_t)(size / 4)) == 0 &&
           bd_status(r, &s0, &r0) == 0)
    rc = bd_push_run(r, &cfg, sc, model, size, inflight, conns, secs);
  ps_rpc_close(r);
  ps_config_release(&cfg);
  return rc;
}

static int bd_fsync_ref(const char *dir, double secs) {
  char path[4096];
  snprintf(path, sizeof path, "%s/fsync-ref.bin", dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    perror(path);
    return 1;
  }
  static char buf[4096];
  uint64_t n = 0;
  double t0 = now_s(), end = t0 + secs;
  while (now_s() < end) {
    if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf || fdatasync(fd) < 0) {
      perror(path);
      close(fd);
      return 1;
    }
    n++;
  }
  double dt = now_s() - t0;
  close(fd);
  unlink(path);
  printf("{\"fdatasync_per_s\":%.1f,\"block\":4096}\n", (double)n / dt);
  return 0;
}

/* bd_bw_ref: the disk's sequential log bandwidth, 1 MiB writes each
 * followed by fdatasync, one writer: appending to a fresh file (a new
 * segment) for S seconds, then overwriting that file from its start (a
 * reused segment, psd_wal invariant 6) for S seconds. */
static int bd_bw_ref(const char *dir, double secs) {
  char path[4096];
  snprintf(path, sizeof path, "%s/bw-ref.bin", dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  size_t bs = 1 << 20;
  char *buf = calloc(1, bs);
  if (fd < 0 || !buf) {
    perror(path);
    free(buf);
    return 1;
  }
  memset(buf, 0x5a, bs);
  double rate[2];
  uint64_t blocks = 0;
  for (int phase = 0; phase < 2; phase++) {
    uint64_t n = 0;
    double t0 = now_s(), end = t0 + secs;
    while (now_s() < end) {
      off_t off = (off_t)((phase ? n % (blocks ? blocks : 1) : n) * bs);
      if (pwrite(fd, buf, bs, off) != (ssize_t)bs || fdatasync(fd) < 0) {
        perror(path);
        close(fd);
        unlink(path);
        free(buf);
        return 1;
      }
      n++;
    }
    if (!phase) blocks = n;
    rate[phase] = (double)n * (double)bs / (now_s() - t0);
  }
  close(fd);
  unlink(path);
  free(buf);
  printf("{\"append_mbps\":%.1f,\"overwrite_mbps\":%.1f,\"block\":%zu}\n", rate[0] / 1e6,
         rate[1] / 1e6, bs);
  return 0;
}

typedef struct bd_rdb {
  rocksdb_t *db;
  rocksdb_writeoptions_t *wo;
  double end;
  uint64_t n;
  int id;
  double maxlat;
  double *lat;        /* thread 0's latencies (seconds), when not NULL */
  size_t nlat, cap;
  pthread_t th;
} bd_rdb;

/* bd_rdb_big writes 64 MiB synced batches until the deadline. */
static void *bd_rdb_big(void *arg) {
  bd_rdb *t = arg;
  enum { REC = 1 << 20, NREC = 64 };
  char *val = calloc(1, REC);
  while (now_s() < t->end) {
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    for (int i = 0; i < NREC; i++) {
      char key[32];
      int kl = snprintf(key, sizeof key, "big%d", i);
      rocksdb_writebatch_put(b, key, (size_t)kl, val, REC);
    }
    char *err = NULL;
    rocksdb_write(t->db, t->wo, b, &err);
    rocksdb_writebatch_destroy(b);
    if (err) {
      rocksdb_free(err);
      break;
    }
    t->n++;
  }
  free(val);
  return NULL;
}

static void *bd_rdb_main(void *arg) {
  bd_rdb *t = arg;
  char key[32], val[1024] = {0};
  while (now_s() < t->end) {
    int kl = snprintf(key, sizeof key, "k%d-%llu", t->id, (unsigned long long)t->n);
    char *err = NULL;
    double t0 = now_s();
    rocksdb_put(t->db, t->wo, key, (size_t)kl, val, sizeof val, &err);
    if (t->lat) {
      if (t->nlat == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 1024;
        t->lat = realloc(t->lat, t->cap * sizeof *t->lat);
      }
      t->lat[t->nlat++] = now_s() - t0;
    }
    if (err) {
      fprintf(stderr, "rocksdb: %s\n", err);
      rocksdb_free(err);
      break;
    }
    t->n++;
  }
  return NULL;
}

static int bd_rocksdb_ref(const char *dir, double secs) {
  char path[4096];
  snprintf(path, sizeof path, "%s/rocksdb-ref", dir);
  rocksdb_options_t *o = rocksdb_options_create();
  rocksdb_options_set_create_if_missing(o, 1);
  char *err = NULL;
  rocksdb_t *db = rocksdb_open(o, path, &err);
  if (err) {
    fprintf(stderr, "rocksdb: %s\n", err);
    return 1;
  }
  rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(wo, 1);
  printf("{");
  int threads[] = {1, 8};
  for (int k = 0; k < 2; k++) {
    bd_rdb t[8];
    double t0 = now_s();
    for (int i = 0; i < threads[k]; i++) {
      t[i] = (bd_rdb){.db = db, .wo = wo, .end = t0 + secs, .id = i};
      pthread_create(&t[i].th, NULL, bd_rdb_main, &t[i]);
    }
    uint64_t n = 0;
    for (int i = 0; i < threads[k]; i++) {
      pthread_join(t[i].th, NULL);
      n += t[i].n;
    }
    printf("%s\"sync_puts_per_s_%dthreads\":%.1f", k ? "," : "", threads[k],
           (double)n / (now_s() - t0));
  }
  /* one putter beside back-to-back 64 MiB batches, and alone, for its p99 */
  for (int k = 0; k < 2; k++) {
    double t0 = now_s();
    bd_rdb put = {.db = db, .wo = wo, .end = t0 + secs, .lat = malloc(sizeof(double)), .cap = 1};
    bd_rdb big = {.db = db, .wo = wo, .end = t0 + secs};
    pthread_create(&put.th, NULL, bd_rdb_main, &put);
    if (k) pthread_create(&big.th, NULL, bd_rdb_big, &big);
    pthread_join(put.th, NULL);
    if (k) pthread_join(big.th, NULL);
    qsort(put.lat, put.nlat, sizeof *put.lat, cmp_d);
    double p99 = put.nlat ? put.lat[(size_t)((double)put.nlat * 0.99)] : 0;
    printf(",\"%s_puts_per_s\":%.1f,\"%s_put_p99_us\":%.0f", k ? "beside_64mib_batches" : "alone",
           (double)put.n / (now_s() - t0), k ? "beside_64mib_batches" : "alone", p99 * 1e6);
    if (k) printf(",\"batches_64mib\":%llu", (unsigned long long)big.n);
    free(put.lat);
  }
  printf(",\"value\":1024}\n");
  rocksdb_writeoptions_destroy(wo);
  rocksdb_close(db);
  rocksdb_destroy_db(o, path, &err);
  if (err) rocksdb_free(err);
  rocksdb_options_destroy(o);
  return 0;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'},   {"size", required_argument, 0, 'b'},
      {"inflight", required_argument, 0, 'n'}, {"secs", required_argument, 0, 's'},
      {"fsync-ref", required_argument, 0, 'f'}, {"rocksdb-ref", required_argument, 0, 'r'},
      {"bw-ref", required_argument, 0, 'w'},    {"conns", required_argument, 0, 'k'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  static const char usage[] =
      "usage: ps_bench_durability --config FILE --size BYTES --inflight N [--conns C] [--secs S]\n"
      "       ps_bench_durability --fsync-ref DIR [--secs S]\n"
      "       ps_bench_durability --rocksdb-ref DIR [--secs S]\n"
      "       ps_bench_durability --bw-ref DIR [--secs S]\n";
  const char *config = NULL, *fref = NULL, *rref = NULL, *wref = NULL;
  uint64_t size = 1024;
  int inflight = 1, conns = -1, c; /* -1: min(inflight, BD_CONNS) */
  double secs = 3;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case 'c': config = optarg; break;
      case 'b': size = strtoull(optarg, NULL, 10); break;
      case 'n': inflight = atoi(optarg); break;
      case 'k': conns = atoi(optarg); break;
      case 's': secs = atof(optarg); break;
      case 'f': fref = optarg; break;
      case 'r': rref = optarg; break;
      case 'w': wref = optarg; break;
      case 'h': fputs(usage, stdout); return 0;
      default: fputs(usage, stderr); return 2;
    }
  }
  if (conns == -1) conns = inflight < BD_CONNS ? inflight : BD_CONNS;
  if (secs <= 0 || inflight < 1 || inflight > 1024 || conns < 1 || conns > inflight || size < 4 ||
      size % 4) {
    fputs(usage, stderr);
    return 2;
  }
  if (fref) return bd_fsync_ref(fref, secs);
  if (rref) return bd_rocksdb_ref(rref, secs);
  if (wref) return bd_bw_ref(wref, secs);
  if (!config) {
    fputs(usage, stderr);
    return 2;
  }
  return bd_push_bench(config, size, inflight, conns, secs);
}
