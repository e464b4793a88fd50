/* ps_test: helpers shared by the Check suites.
 *
 * Suites are collected automatically: any test file that defines
 * "Suite *NAME_suite(void)" at the start of a line is run by ps_tests.
 * Process helpers start real programs (build/bin/psd, ...) on 127.0.0.1 with
 * ephemeral ports, bound every wait, and stop what they started by PID. */
#ifndef PS_TEST_H
#define PS_TEST_H

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_rpc.h"
#include "psw_graph.h"

/* PS_SKIP marks the running test as skipped (counted and reported by the
 * runner as skipped, not passed) and returns from the test function. */
#define PS_SKIP(...)                  \
  do {                                \
    ps_test_skip(__func__, __VA_ARGS__); \
    return;                           \
  } while (0)
void ps_test_skip(const char *test, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ps_test_bin returns the path of program NAME in the build's bin folder
 * (PS_BIN, default "build/bin"); static storage, one per name. */
const char *ps_test_bin(const char *name);

/* ps_test_tmpdir makes a fresh directory under $TMPDIR (or /tmp) and
 * returns its path (static storage, overwritten by the next call).  The
 * process that made it removes it, with what it holds, when it exits
 * with status 0 (a forked test that passed, the runner when every test
 * did); a failed test's stays, and PS_TEST_KEEP=1 keeps them all. */
const char *ps_test_tmpdir(void);

/* ps_test_listen returns a socket listening on 127.0.0.1:PORT (0: a
 * free one; *BOUND, may be NULL: the port); the caller closes it. */
int ps_test_listen(int port, int *bound);

/* ps_test_free_port returns a TCP port on 127.0.0.1 that was free a moment
 * ago (bound to port 0, then closed). */
int ps_test_free_port(void);

/* ps_test_write_file writes TEXT to PATH (creating it); fails the test on error. */
void ps_test_write_file(const char *path, const char *text);

/* ps_test_count_files counts DIR's files whose name ends in SUFFIX (of
 * EMPTY_ONLY: those of 0 bytes only); DIR must exist. */
int ps_test_count_files(const char *dir, const char *suffix, int empty_only);

/* ps_test_file_replace writes SRC's text to DST (SRC itself is fine)
 * with its first FROM replaced by TO; fails the test when SRC has no
 * FROM. */
void ps_test_file_replace(const char *src, const char *dst, const char *from, const char *to);

/* ps_test_read_file returns PATH's contents NUL-terminated (the caller
 * owns and frees it), *LEN its length when LEN is not NULL; fails the test
 * when PATH cannot be read. */
char *ps_test_read_file(const char *path, size_t *len);

/* ps_test_last_line returns the last non-empty line of TEXT, cutting
 * trailing newlines in place (the result points into TEXT). */
const char *ps_test_last_line(char *text);

/* ps_test_json_num returns the number after "KEY": in the JSON line LINE;
 * fails the test when KEY is missing or its value is not a number. */
double ps_test_json_num(const char *line, const char *key);

/* ps_test_json_sum returns the sum of the list of numbers after "KEY": in
 * LINE ("pushes_unanswered":[0,1] gives 1); fails the test without one. */
uint64_t ps_test_json_sum(const char *line, const char *key);

/* ps_test_cluster_yaml writes a cluster file for NSHARDS shards on
 * 127.0.0.1 with fresh ports and data dirs under DIR to DIR/cluster.yaml
 * and returns its path (static storage).  EXTRA is appended verbatim (top
 * level YAML, may be NULL).  Ports are returned in grpc_ports /
 * chan_ports when not NULL. */
/* ps_test_security_yaml is the 'security' section ps_test_cluster_yaml
 * writes: plaintext ("security:\n  mode: none\n") unless a test points it
 * at another (tests/integration/test_security.c) before it writes a file.
 * With PS_TEST_SECURITY=tls in the environment, ps_test_cluster_yaml
 * instead makes certificates and a channel secret in its DIR
 * (scripts/mkcerts) and writes mode tls with them: the suites that talk
 * to shards through ps_test_rpc_open / ps_test_chan_connect and the
 * programs then run over mutual TLS and the authenticated channel
 * (PS_TEST_SECURITY=tls-mac: with the payload MAC too). */
extern const char *ps_test_security_yaml;
const char *ps_test_cluster_yaml(const char *dir, int nshards, const char *extra,
                                 int *grpc_ports, int *chan_ports);

/* The process record: Check runs each test in a child of the runner, so a
 * test that fails half-way cannot stop what it started.  A test case that
 * starts processes adds ps_test_procs_setup / ps_test_procs_teardown as its
 * unchecked fixture (tcase_add_unchecked_fixture: they run in the runner);
 * while that record exists every ps_test_spawn is noted in shared memory,
 * and the teardown SIGKILLs whatever noted process is still there.  Without
 * the fixture nothing is recorded. */
void ps_test_procs_setup(void);
void ps_test_procs_teardown(void);

/* ps_test_spawn starts ARGV (argv[0] a path) with stdout/stderr appended to
 * LOG (NULL: inherit) and ENVP additions ("K=V" strings, NULL-terminated,
 * may be NULL), records it (see above) and returns the pid. */
pid_t ps_test_spawn(char *const argv[], const char *log, char *const envp_add[]);

/* ps_test_start_shards starts shards 0..N-1 of YAML with their logs in
 * DIR/psdI.log (pids to PIDS) and waits up to 15 s for each one's channel
 * port CP[i] and 5 s more for its gRPC port GP[i]; fails the test naming
 * the log otherwise. */
void ps_test_start_shards(const char *yaml, const char *dir, int n, const int *gp,
                          const int *cp, pid_t *pids);
/* ps_test_start_shards_env is ps_test_start_shards with ENVP_ADD as
 * ps_test_psd's (NULL: none). */
void ps_test_start_shards_env(const char *yaml, const char *dir, int n, const int *gp,
                              const int *cp, pid_t *pids, char *const envp_add[]);

/* The tests' random numbers: ps_test_rng_init (a void(void) fixture) seeds
 * from the time, pid and clock so every run sees fresh inputs, and stores
 * the seed in ps_test_seed (print it in failure messages to reproduce);
 * ps_test_rnd returns a uniform float in [-1, 1) (xorshift64*).  Per
 * process: Check runs each test in a child of its own. */
extern uint64_t ps_test_seed;
void ps_test_rng_init(void);
float ps_test_rnd(void);

/* ps_test_psd starts `psd --config YAML --shard SHARD` with ps_test_spawn
 * (LOG and ENVP_ADD as there) and returns its pid; it does not wait for
 * the listeners (ps_test_wait_port). */
pid_t ps_test_psd(const char *yaml, int shard, const char *log, char *const envp_add[]);

/* ps_test_sync_yaml is ps_test_cluster_yaml (EXTRA: more top-level
 * keys) with durability mode sync. */
const char *ps_test_sync_yaml(const char *dir, int nshards, const char *extra, int *grpc_ports,
                              int *chan_ports);

/* ps_test_shim_env fills E->env (NULL-terminated, for ps_test_psd's
 * ENVP_ADD) to preload ps_test_fsync_shim.so (tests/server/fsync_shim.c)
 * with its record of synced bytes in FSYNC_LOG and its gate GATE (either
 * NULL: unset; with GATE, the file GATE.fail makes the log's syncs fail
 * while it exists), ASan's link-order check off. */
typedef struct ps_test_shim_env {
  char preload[4200], log[4200], gate[4200], fail[4200], asan[1024];
  char *env[6];
} ps_test_shim_env;
void ps_test_shim_env_init(ps_test_shim_env *e, const char *fsync_log, const char *gate);

/* A one-shard `sync` cluster in a test's directory DIR for a psd run
 * under the fsync shim: ps_test_gated_init writes ps_test_sync_yaml's
 * (EXTRA as there) and fills G: its log DIR/psd.log, the shim's gate
 * DIR/gate (and G->fail, DIR/gate.fail: the syncs fail while it exists) and, when FSYNC_LOG, its record of synced bytes DIR/fsync.log
 * (else none: G->fsync_log empty), the listeners' addresses and G->env.  It starts nothing:
 * ps_test_psd(G->yaml, 0, G->log, G->env.env).  G must not be copied
 * (G->env points into itself). */
typedef struct ps_test_gated {
  char yaml[600], log[600], gate[600], fail[610], fsync_log[600], grpc[64], chan[64];
  int gp, cp;
  ps_test_shim_env env;
} ps_test_gated;
void ps_test_gated_init(ps_test_gated *g, const char *dir, const char *extra, int fsync_log);

/* ps_test_sigstop sends PID SIGSTOP and waits up to TIMEOUT_MS until it
 * is stopped (kill returns before: a request sent right after could
 * still be read); 0, or -1 on timeout. */
int ps_test_sigstop(pid_t pid, int timeout_ms);

/* ps_test_wait_pid waits up to TIMEOUT_MS for PID to exit; returns its
 * wait status, or -1 on timeout (the process is left running). */
int ps_test_wait_pid(pid_t pid, int timeout_ms);

/* ps_test_stop sends SIG to PID, waits up to TIMEOUT_MS, then SIGKILLs;
 * returns the wait status. */
int ps_test_stop(pid_t pid, int sig, int timeout_ms);

/* ps_test_run runs ARGV (argv[0] a path, argv[1] not NULL) with
 * ps_test_spawn (output appended to LOG) to completion within TIMEOUT_MS
 * and returns its exit code (128 + signal when killed); fails the test, and
 * kills it, when it does not finish in time. */
int ps_test_run(char *const argv[], const char *log, int timeout_ms);

/* ps_test_submit_mlp builds model "m" with psctl into DIR/m.pb (LAYERS:
 * "logreg", 784 inputs and 10 classes, or an MLP layer list such as
 * "784,256,10") and submits it to the cluster of YAML with Adam at LR and
 * CONSISTENCY (STALENESS: its bound, or NULL); fails the test naming
 * DIR/psctl.log when psctl does. */
void ps_test_submit_mlp(const char *dir, const char *yaml, const char *layers, const char *lr,
                        const char *consistency, const char *staleness);

/* ps_test_status returns the Status of the shard whose gRPC port is
 * PORT (the caller frees with protobuf_c_message_free_unpacked); fails
 * the test when it does not answer within 5 s. */
Ps__StatusReply *ps_test_status(int port);

/* ps_test_worker_states counts, on the shard whose gRPC port is PORT, the
 * workers ListWorkers shows in STATE ("ALIVE", "DEAD", ...); with WORKER
 * below UINT32_MAX only that worker (1 or 0).  Fails the test when the
 * shard does not answer within 5 s. */
int ps_test_worker_states(int port, uint32_t worker, const char *state);

/* ps_test_worker_of fills *OUT with what ListWorkers on the shard whose
 * gRPC port is PORT says of the worker process PID (its host, device,
 * model and partitions left NULL); 0, or -1 when it lists none.  Fails the
 * test when the shard does not answer within 5 s. */
int ps_test_worker_of(int port, pid_t pid, Ps__WorkerInfo *out);

/* ps_test_wait_port waits up to TIMEOUT_MS for a TCP listener on
 * 127.0.0.1:PORT; returns 0 or -1. */
int ps_test_wait_port(int port, int timeout_ms);

/* ps_test_rpc_open / ps_test_chan_connect are ps_rpc_open /
 * ps_chan_connect with the security of the last cluster file written
 * (ps_test_cluster_yaml): the operator's certificate, the worker's
 * channel key; plaintext when it says mode: none. */
int ps_test_rpc_open(ps_rpc **r, const char *addr, ps_errbuf *eb);
int ps_test_chan_connect(ps_chan_client **c, const char *addr, const char *cluster,
                         int timeout_ms, ps_errbuf *eb);
/* ps_test_chan_key loads the worker's channel key of the security
 * section ps_test_cluster_yaml last wrote into KEYS (*KEY; NULL without
 * one; release KEYS with ps_auth_release) and the ps_chan_connect_auth
 * FLAGS it asks for (PS_CHAN_AUTH_MAC). */
int ps_test_chan_key(ps_auth_keys *keys, const ps_auth_key **key, int *flags, ps_errbuf *eb);
/* ps_test_payload_mac: 1 when this run's channels MAC their frames
 * (PS_TEST_SECURITY=tls-mac: no shared memory is offered then). */
int ps_test_payload_mac(void);
/* ps_test_raw_open connects a plain TCP socket to the loopback port of
 * ADDR ("127.0.0.1:PORT"): a peer that speaks the channel's frames by
 * hand. */
int ps_test_raw_open(const char *addr);

/* ps_test_raw_frame writes a channel frame on FD: meta M, DATA_LEN
 * declared bytes of data of which SEND are actually sent (zeros). */
void ps_test_raw_frame(int fd, const Ps__ChanMeta *m, uint64_t data_len, uint64_t send);

/* ps_test_chan_connect_flags is ps_test_chan_connect with more
 * ps_chan_connect_auth FLAGS (PS_CHAN_UNORDERED_ACKS); _shm also asks for
 * SHM_BYTES of shared memory (ps_chan_connect_shm; FLAGS may hold
 * PS_CHAN_SHM_HOLD); _worker's hello also names WORKER
 * (ps_chan_connect_worker; PS_CHAN_NO_WORKER: none). */
int ps_test_chan_connect_flags(ps_chan_client **c, const char *addr, const char *cluster,
                               int flags, int timeout_ms, ps_errbuf *eb);
int ps_test_chan_connect_shm(ps_chan_client **c, const char *addr, const char *cluster, int flags,
                             uint64_t shm_bytes, int timeout_ms, ps_errbuf *eb);
int ps_test_chan_connect_worker(ps_chan_client **c, const char *addr, const char *cluster,
                                int flags, uint64_t shm_bytes, uint32_t worker, int timeout_ms,
                                ps_errbuf *eb);

/* ps_test_graph_dup_node packs an MLP graph (4, 3, 2) whose node 2 has
 * node 0's name (returned as *NAME, static); the caller frees the bytes. */
uint8_t *ps_test_graph_dup_node(size_t *len, const char **name);

/* A click-through model "ctr" of SH (psw_graph_ctr_pack) as a ModelSpec
 * with optimizer KIND at LR and SEED (ps_test_ctr_model); G is its graph
 * (what psw_exec runs).  Built in place: SPEC points at OPT.  Released
 * with ps_test_ctr_release. */
typedef struct ps_test_ctr {
  psw_graph *g;
  Ps__ModelSpec *spec;
  Ps__OptimizerSpec opt;
} ps_test_ctr;
void ps_test_ctr_model(ps_test_ctr *m, const psw_ctr_shape *sh, const char *kind, float lr,
                       uint64_t seed);
void ps_test_ctr_release(ps_test_ctr *m);

/* ps_test_submit_call calls SubmitModel with SPEC and REPLACE on the
 * shard behind R within TIMEOUT_MS: the call's result, *REP its reply on
 * success (the caller frees it). */
int ps_test_submit_call(ps_rpc *r, const Ps__ModelSpec *spec, int replace, int timeout_ms,
                        Ps__SubmitModelReply **rep, ps_errbuf *eb);

/* ps_test_submit registers SPEC on the shard behind R (SubmitModel with
 * REPLACE) within TIMEOUT_MS; fails the test with the model's name and the
 * shard's message when the call fails. */
void ps_test_submit(ps_rpc *r, const Ps__ModelSpec *spec, int replace, int timeout_ms);

/* A model of N one-element SGD tensors "t0", "t1", ...: ps_test_tiny_make
 * allocates it (failing the test when it cannot), ps_test_tiny_spec
 * names it NAME and returns its spec, ps_test_tiny_free frees it. */
typedef struct ps_test_tiny {
  Ps__ModelSpec spec;
  Ps__OptimizerSpec opt;
  Ps__TensorSpec *t, **tp;
  char (*names)[16];
} ps_test_tiny;
void ps_test_tiny_make(ps_test_tiny *m, size_t n);
Ps__ModelSpec *ps_test_tiny_spec(ps_test_tiny *m, const char *name);
void ps_test_tiny_free(ps_test_tiny *m);

/* A test fixture's small filesystem: ps_test_tmpfs_make makes a fresh
 * directory T->dir under $TMPDIR (or /tmp) named PREFIX.XXXXXX and
 * mounts a tmpfs with OPTS ("size=128m") on T->mnt = T->dir/shard0 (shard
 * 0's data_dir in ps_test_cluster_yaml's files).  T->mounted says whether
 * that worked, T->why why not (mounting needs privileges: skip then).
 * ps_test_tmpfs_remove unmounts (lazily when busy) and removes T->mnt and
 * T->dir when empty; what the tests left in T->dir goes when the runner
 * exits with status 0, as ps_test_tmpdir's directories do.  Call both
 * from the runner's unchecked fixture, so the mount is undone however the
 * test ends. */
typedef struct ps_test_tmpfs {
  char dir[512], mnt[600], why[1024];
  int mounted;
} ps_test_tmpfs;
void ps_test_tmpfs_make(ps_test_tmpfs *t, const char *prefix, const char *opts);
void ps_test_tmpfs_remove(ps_test_tmpfs *t);

/* ps_test_leave_free sizes the file PATH (made when missing) so that
 * LEAVE bytes of its filesystem are free, in one step (a watcher never
 * sees a state in between). */
void ps_test_leave_free(const char *path, uint64_t leave);

/* ps_test_now_ms: CLOCK_MONOTONIC milliseconds. */
int64_t ps_test_now_ms(void);

/* ps_test_beat sends worker W's gRPC Heartbeat (REJOIN: marked rejoin,
 * as a restarted worker's first beat) on R and drops the reply; returns
 * 0 or the call's PS_E* code with EB. */
int ps_test_beat(ps_rpc *r, uint32_t w, int rejoin, ps_errbuf *eb);

/* ps_test_bg runs FN(ARG) on a thread of its own (a request that may
 * park on a shard), waited for with a bound.  ps_test_bg_wait waits up
 * to MS and returns 1 when FN returned (the thread is then joined);
 * ps_test_bg_done says whether it has, without waiting. */
typedef struct ps_test_bg {
  pthread_t th;
  atomic_int done;
  void (*fn)(void *arg);
  void *arg;
} ps_test_bg;
void ps_test_bg_start(ps_test_bg *b, void (*fn)(void *arg), void *arg);
int ps_test_bg_wait(ps_test_bg *b, int ms);
int ps_test_bg_done(ps_test_bg *b);

/* ps_test_push / ps_test_pull: fp32 ps_chan_push / ps_chan_pull of
 * NELEMS floats at G / OUT for the chunks IDS of MODEL (the form most
 * tests want). */
int ps_test_push(ps_chan_client *c, const char *model, const uint32_t *ids, size_t nids,
                 const float *g, uint64_t nelems, uint32_t worker, uint64_t clock,
                 uint64_t version_seen, uint64_t *version, ps_errbuf *eb);
int ps_test_pull(ps_chan_client *c, const char *model, const uint32_t *ids, size_t nids,
                 float *out, uint64_t nelems, uint32_t worker, uint64_t clock,
                 uint64_t *version, ps_errbuf *eb);

#endif
