/* ps_config: the cluster YAML file (libyaml), described by a key table.
 *
 * One file describes the whole cluster: shards, chunking, durability,
 * limits, and the workers / training / data sections used by psw.  Errors
 * are reported as "FILE:LINE:COL: message" (1-based, the position of the
 * offending key or value) and the load fails with PS_ECONFIG.  Unknown
 * keys, duplicate keys, wrong types, out-of-range values and missing
 * required keys are all errors.  README.md ("Configuration reference") describes every key.
 * Loading is thread-safe (no global state); a loaded config is read-only. */
#ifndef PS_CONFIG_H
#define PS_CONFIG_H

/* the largest limits.max_request_bytes a file may set (1 GiB) */
#define PS_CONFIG_MAX_REQUEST_BYTES 1073741824

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ps_error.h"

enum ps_durability { PS_DUR_PERIODIC = 0, PS_DUR_SYNC = 1 };

typedef struct ps_shard_conf {
  uint32_t id;          /* unique; placement hashes over these ids */
  char *grpc_addr;      /* "host:port" for the gRPC control plane */
  char *channel_addr;   /* "host:port" for the tensor channel */
  char *data_dir;       /* RocksDB directory of this shard */
} ps_shard_conf;

/* An aggregator (DESIGN.md "Hierarchy"): a psd that sums its local
 * workers' pushes and serves their pulls (psd --aggregator NAME). */
typedef struct ps_agg_conf {
  char *name;           /* unique; workers name it (workers.aggregator, psw --aggregator) */
  char *grpc_addr;      /* "host:port" for the gRPC control plane */
  char *channel_addr;   /* "host:port" for the tensor channel (workers connect here) */
  uint32_t workers;     /* local workers it expects per clock: a sum is forwarded when
                           all of them pushed ... */
  uint32_t max_delay_ms;/* ... or this long after the first push of it, default 20 */
} ps_agg_conf;

typedef struct ps_data_conf {
  char *format;         /* "idx" | "csv" | "criteo" (default "idx") */
  char *train_images;   /* idx: images file; csv: the training CSV */
  char *train_labels;   /* idx only */
  char *test_images;    /* idx: images file; csv: the test CSV */
  char *test_labels;    /* idx only */
  double scale;         /* input scaling, default 1/255 */
  uint32_t partitions;  /* training-set partitions, default 16 */
  uint32_t limit;       /* use only the first N training samples (0: all) */
} ps_data_conf;

typedef struct ps_train_conf {
  char *model;          /* model name on the shards */
  uint32_t epochs;      /* default 10 */
  uint32_t batch_size;  /* default 64 */
  uint64_t seed;        /* shuffling seed, default 1 */
  char *consistency;    /* "bsp" | "ssp" | "asp" (default "asp") */
  uint32_t staleness;   /* ssp bound, default 0 */
  char *staleness_weight; /* "none" | "inverse" (default "none") */
  uint32_t pull_timeout_ms; /* a parked pull gives up after this, default 30000 */
  /* Wire codecs (ps_codec.h), the defaults of psctl submit. */
  char *codec;          /* push: fp32 | fp16 | int8 | onebit | topk (default fp32) */
  char *pull_codec;     /* fp32 | fp16 | int8 (default fp32) */
  double topk;          /* fraction topk keeps, (0, 1], default 0.01 */
  uint32_t codec_warmup_steps; /* steps sent fp32 first, default 0 */
  uint32_t codec_min_elems;    /* smaller tensors stay fp32, default 1024 */
} ps_train_conf;

typedef struct ps_worker_conf {
  uint32_t count;       /* number of workers expected, default 1 */
  uint32_t min;         /* workers that must be there before training starts
                           (1..count; 0 in the file: count) */
  char *device;         /* "auto" | "cpu" | "cuda" | "cuda:N" (default "auto") */
  uint32_t retry_ms;    /* total time a worker retries a shard, default 30000 */
  int overlap;          /* 1: push/pull overlap compute (staleness 1), default 0 */
  uint32_t blas_threads;/* OpenBLAS threads of a CPU worker, default 1 */
  uint32_t coordinator; /* shard id of the coordinator, default 0 */
  uint32_t heartbeat_ms;/* worker heartbeat interval, default 1000 */
  uint32_t lease_ms;    /* a worker silent this long is DEAD, default 5000 */
  /* Straggler factors by rank (slowdown[r] >= 1; ranks past the list: 1):
   * a worker sleeps (F - 1) x its compute time after each step. */
  double *slowdown;
  size_t nslowdown;
  /* Transient stragglers: every worker's step is, with probability
   * jitter_prob (default 0), slowed jitter_factor x (default 1). */
  double jitter_prob, jitter_factor;
  char *aggregator;     /* name of this host's aggregator (NULL: straight to the shards) */
  /* 1: a worker and a shard on the same host move fp32 payloads through a
   * shared-memory region instead of the socket (ps_shm.h), default 1;
   * the shard offers it only where this is on too. */
  int shared_memory;
} ps_worker_conf;

/* security (README "security"): how the control plane and the tensor
 * channel authenticate.  mode is required: plaintext only where the file
 * says 'none'.  Paths are borrowed strings of the config. */
enum ps_sec_mode { PS_SEC_NONE = 0, PS_SEC_TLS = 1 };

typedef struct ps_tls_conf {
  char *ca;             /* PEM CA bundle: verifies servers and client certificates */
  char *cert, *key;     /* psd's own certificate (IP SANs) and private key */
  char *worker_cert, *worker_key;     /* what psw presents (role in the subject's OU) */
  char *operator_cert, *operator_key; /* what psctl presents */
} ps_tls_conf;

typedef struct ps_security_conf {
  int mode;                 /* enum ps_sec_mode */
  ps_tls_conf tls;
  int require_client_cert;  /* tls: a client without a certificate is refused (default true) */
  char *secret_file;        /* channel keys (ps_auth.h); NULL: the channel is unauthenticated */
  int payload_mac;          /* every channel frame ends in a MAC (needs secret_file), default 0 */
} ps_security_conf;
/* Sparse (embedding) tables on the shards (server/psd_sparse.h). */
typedef struct ps_sparse_conf {
  uint64_t memory_rows; /* rows per table and shard kept in memory; 0: no limit (default) */
  uint32_t admit_after; /* pulls before a key gets a row; 0 (default) and 1: at once */
  uint64_t max_new_rows;/* keys without a row one pull or push may name; 0: no limit */
  int plane;            /* enum ps_sparse_plane: how psw moves rows (default channel) */
} ps_sparse_conf;
/* sparse.plane: rows on the tensor channel where the shard offers it
 * (else gRPC), or always on gRPC. */
enum ps_sparse_plane { PS_SPARSE_PLANE_CHANNEL = 0, PS_SPARSE_PLANE_GRPC = 1 };

/* durability's group commit defaults (the keys' table in ps_config.c) */
#define PS_GROUP_COMMIT_MAX_BYTES_DEF 4194304
#define PS_GROUP_COMMIT_MAX_WAIT_US_DEF 0
#define PS_CONFIG_STR_(x) #x
#define PS_CONFIG_STR(x) PS_CONFIG_STR_(x)

typedef struct ps_config {
  char *path;                 /* the file loaded */
  char *cluster;              /* cluster name, sent in the channel hello */
  uint32_t chunk_elems;       /* elements per chunk, default 65536 */
  enum ps_durability durability;
  uint32_t flush_interval_ms; /* snapshots, both modes, default 1000 */
  uint64_t group_commit_max_bytes;  /* sync: most bytes per log write + fdatasync, 4 MiB */
  uint32_t group_commit_max_wait_us;/* sync: wait for more pushes before a sync, default 0 */
  char warning[4 * 4096 + 512]; /* "PATH:LINE:COL: warning: ..." lines (keys set in vain, a
                                 * data_dir twice on a host; cut after about 4); "" */
  uint64_t max_request_bytes; /* largest push/pull payload, default 256 MiB, at most
                                 PS_CONFIG_MAX_REQUEST_BYTES */
  uint32_t drain_timeout_ms;  /* SIGTERM: wait for in-flight requests, default 5000 */
  uint32_t max_connections;   /* tensor-channel connections at once, default 1024 */
  uint32_t idle_timeout_ms;   /* close a silent connection, > pull_timeout_ms, default 120000 */
  uint64_t max_queued_bytes;  /* channel reply bytes queued, all connections, default 256 MiB */
  uint64_t max_shard_bytes;   /* memory budget of a shard's models; 0: ps_config_shard_budget */
  size_t nshards;
  ps_shard_conf *shards;      /* nshards entries, in file order */
  size_t naggs;
  ps_agg_conf *aggs;          /* naggs entries (the 'aggregators' list), in file order */
  ps_worker_conf workers;
  ps_train_conf training;
  ps_data_conf data;
  ps_security_conf security;
  ps_sparse_conf sparse;
} ps_config;

/* Bounds checked before libyaml sees a file: its loader takes time
 * quadratic in the nesting depth (100 KB of '[' took 36 s), and no real
 * cluster file comes near either number. */
#define PS_CONFIG_MAX_BYTES (1u << 20) /* 1 MiB */
#define PS_CONFIG_MAX_DEPTH 32         /* nested '[' / '{' */
#define PS_CHUNK_ELEMS_MAX 67108864    /* chunk_elems (and psctl submit --chunk-elems) */

/* ps_config_load parses PATH into *C (which it zeroes first).  A file of
 * more than PS_CONFIG_MAX_BYTES, or nested deeper than PS_CONFIG_MAX_DEPTH,
 * is refused before it is parsed.  On error it returns PS_ECONFIG (or PS_EIO when the file cannot be read, PS_ENOMEM)
 * with "PATH:LINE:COL: message" in EB and leaves nothing to release.
 * The caller releases a loaded config with ps_config_release. */
int ps_config_load(ps_config *c, const char *path, ps_errbuf *eb);

/* ps_config_fopen opens PATH (the cluster file, or a file it names) for
 * reading like fopen(PATH, "rb"), but a FIFO nobody writes to reads as
 * empty instead of blocking the open forever (a pipe with a writer, such
 * as a shell's process substitution, reads as usual).  NULL with errno. */
FILE *ps_config_fopen(const char *path);

/* ps_config_load_buf is ps_config_load of LEN bytes at BUF (borrowed),
 * reported under NAME; PS_ECONFIG for more than PS_CONFIG_MAX_BYTES. */
int ps_config_load_buf(ps_config *c, const char *name, const void *buf, size_t len,
                       ps_errbuf *eb);

/* ps_parse_uint parses S as the cluster file reads an integer: decimal
 * digits only (no sign, no blank, not empty) without a leading zero ("0"
 * alone is fine; YAML 1.1 reads 010 as octal 8).  0 with the value in *V,
 * PS_EINVAL when S is not that, PS_ETOOBIG when it exceeds 2^64 - 1.
 * Command-line flags of psd, psw and psctl read integers with it too. */
int ps_parse_uint(const char *s, uint64_t *v);

/* ps_parse_number parses S as the cluster file reads a number: a decimal
 * with an optional sign and exponent ("0.5", "-3.9e-3") or a fraction of
 * two of them ("1/255"), whole (no blank, not empty), without a leading
 * zero in an integer part ("0.05" and "1e05" are fine, "010" and "00.5"
 * are not).  0 with the value in *V; PS_EINVAL when S is not that (also
 * for hex, "inf", "nan", a division by 0); PS_ETOOBIG when it is one but
 * a double cannot hold it, a part or the quotient (*V is then +-HUGE_VAL
 * when too large, +-0 when too near 0).  psctl's and psw's number flags
 * read numbers with it too. */
int ps_parse_number(const char *s, double *v);

/* ps_flag_uint parses ARG, the value of the command-line flag FLAG
 * ("--shard", or "--layers item 2"), as ps_parse_uint does, within
 * [MIN, MAX] into *V (a minus before digits counts as out of range).
 * 0, or PS_EINVAL (*V untouched) with "FLAG wants an integer in [MIN,
 * MAX], got 'ARG': WHY" in EB, WHY one of "a leading zero (write N)",
 * "out of range", "not an integer (decimal digits only)".  The integer
 * flags of psd, psw and psctl all read their values with it. */
int ps_flag_uint(const char *flag, const char *arg, uint64_t min, uint64_t max, uint64_t *v,
                 ps_errbuf *eb);

/* ps_flag_number is ps_flag_uint for a number (ps_parse_number) in [MIN,
 * MAX]; when MIN >= 0 a sign is refused too.  The message reads "FLAG
 * wants a number, got 'ARG': WHY" when the range is [-DBL_MAX, DBL_MAX],
 * "... a number >= MIN ..." when MAX is DBL_MAX, else "... a number in
 * [MIN, MAX] ...", WHY one of "a leading zero in an integer part ...",
 * "not a number ...", "out of range" ("... (beyond a double)" for 1e400),
 * "nearer 0 than a double holds (write 0)" (1e-400 where 0 is in range),
 * "a sign (write it without)". */
int ps_flag_number(const char *flag, const char *arg, double min, double max, double *v,
                   ps_errbuf *eb);

/* ps_config_print_warnings writes C's warnings (C->warning, keys set in
 * vain, a limit below the partitions), a line each, to F (the programs'
 * stderr: never the output a script reads), and nothing when it has
 * none. */
void ps_config_print_warnings(const ps_config *c, FILE *f);

/* ps_config_release frees everything ps_config_load allocated; idempotent. */
void ps_config_release(ps_config *c);

/* ps_config_shard returns the shard with id ID, or NULL (borrowed from C). */
const ps_shard_conf *ps_config_shard(const ps_config *c, uint32_t id);

/* ps_config_shard_ids writes the shard ids, in file order, to IDS
 * (caller-owned, c->nshards entries): the list placement hashes over. */
void ps_config_shard_ids(const ps_config *c, uint32_t *ids);

/* ps_config_place_id returns a fingerprint of what chunk placement
 * depends on in C: the set of shard ids (not their order) and
 * chunk_elems.  Two files with the same id place every chunk on the same
 * shard id; psd reports it in Status (place_id) so that psctl can tell a
 * file of another cluster from its own.  Thread-safe. */
uint64_t ps_config_place_id(const ps_config *c);

/* ps_config_shard_budget returns C's limits.max_shard_bytes, or when it
 * is 0 (the default) a third of the memory this process may use: the
 * cgroup's memory.max when one is set, else physical memory.  A third,
 * because a shard's first full flush holds up to three copies of its
 * chunks for a moment (BENCHMARKS.md; issue 15 lowers this). */
uint64_t ps_config_shard_budget(const ps_config *c);

/* ps_config_agg returns the aggregator named NAME, or NULL (NAME NULL
 * too); borrowed from C. */
const ps_agg_conf *ps_config_agg(const ps_config *c, const char *name);

/* ps_config_reply_timeout_ms: how long a worker or aggregator waits for
 * a shard's reply, which a parked pull (dense or sparse) may hold back up
 * to training.pull_timeout_ms: that plus 5 s, so the shard's own timeout,
 * which names the slowest worker, arrives first. */
int ps_config_reply_timeout_ms(const ps_config *c);

/* ps_config_dead_ms: after how long without an acknowledgement a worker's
 * tensor-channel connection, or an aggregator's link to a root shard, is
 * given up by the kernel (ps_chan_set_dead_ms, psd_chan_client_set_dead_ms):
 * half of workers.lease_ms, at least 1 s, so that a worker whose path was
 * cut reconnects within about a second of the heal rather than when TCP's
 * backoff retransmits, and well before its lease runs out. */
int ps_config_dead_ms(const ps_config *c);

/* ps_config_coordinator returns the coordinator shard: the one whose id is
 * workers.coordinator, or the first shard when no shard has that id (the
 * default 0 in a cluster without a shard 0).  Borrowed from C. */
const ps_shard_conf *ps_config_coordinator(const ps_config *c);

/* Device names, one rule for every entry point (workers.device, checked
 * here at load and so by psd -t; psw --device; ps_gpu_open;
 * ps_bench_gpu --device): "auto", "cpu", "cuda" (= cuda:0) or "cuda:N"
 * with N in 0..PS_DEVICE_MAX_ORDINAL written in decimal digits without
 * leading zeros (cuda:0, cuda:7, cuda:999; not cuda:01, cuda:+1 or
 * cuda:1000), so that each device has one name.  PS_DEVICE_RULE is that
 * rule in words, for messages and usage texts. */
#define PS_DEVICE_MAX_ORDINAL 999
#define PS_DEVICE_RULE "auto, cpu, cuda or cuda:N (N from 0 to 999, no leading zeros)"

/* ps_device_parse checks DEVICE (NULL: "auto") against that rule: 0 with
 * *ORDINAL the CUDA ordinal it names (0 for auto and cuda, -1 for cpu;
 * ORDINAL may be NULL), or PS_EINVAL with a message naming DEVICE and the
 * rule in EB. */
int ps_device_parse(const char *device, int *ordinal, ps_errbuf *eb);

#endif
