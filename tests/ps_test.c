/* ps_test: helpers shared by the Check suites (see ps_test.h). */
#include "ps_auth.h"
#include "ps_test.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern int *ps_test_skip_counter;

void ps_test_skip(const char *test, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  printf("SKIP: %s: %s\n", test, msg);
  fflush(stdout);
  if (ps_test_skip_counter) __atomic_add_fetch(ps_test_skip_counter, 1, __ATOMIC_SEQ_CST);
}

const char *ps_test_bin(const char *name) {
  static char paths[8][512];
  static int next;
  const char *dir = getenv("PS_BIN");
  char *p = paths[next++ % 8];
  snprintf(p, 512, "%s/%s", dir && *dir ? dir : "build/bin", name);
  return p;
}

/* The directories ps_test_tmpdir made, each with the process that made
 * it: a forked test (Check's default) inherits its parent's list, and
 * removes only its own. */
#define TMPDIRS_MAX 256
static struct {
  char path[512];
  pid_t pid;
} tmpdirs[TMPDIRS_MAX];
static int ntmpdirs;

static int tmpdir_rm(const char *path, const struct stat *st, int flag, struct FTW *f) {
  (void)st, (void)f;
  if (flag == FTW_DP) rmdir(path);
  else unlink(path);
  return 0; /* on with the rest: what cannot go stays */
}

/* tmpdirs_remove removes this process's directories when it exits with
 * status 0 (a test that failed, in its own process or in the runner's,
 * keeps them: its messages name files in them), unless PS_TEST_KEEP is
 * set.  Nothing under a mount point a test left mounted is touched. */
static void tmpdirs_remove(int status, void *arg) {
  (void)arg;
  const char *keep = getenv("PS_TEST_KEEP");
  if (status != 0 || (keep && *keep && strcmp(keep, "0") != 0)) return;
  for (int i = 0; i < ntmpdirs; i++)
    if (tmpdirs[i].pid == getpid())
      nftw(tmpdirs[i].path, tmpdir_rm, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/* tmpdir_track has this process remove PATH at a successful exit. */
static void tmpdir_track(const char *path) {
  static pid_t hooked; /* the handler is inherited across fork: once */
  if (!hooked && on_exit(tmpdirs_remove, NULL) == 0) hooked = getpid();
  if (ntmpdirs < TMPDIRS_MAX) {
    snprintf(tmpdirs[ntmpdirs].path, sizeof tmpdirs[ntmpdirs].path, "%s", path);
    tmpdirs[ntmpdirs++].pid = getpid();
  }
}

const char *ps_test_tmpdir(void) {
  static char path[512];
  const char *t = getenv("TMPDIR");
  snprintf(path, sizeof path, "%s/ps_test.XXXXXX", t && *t ? t : "/tmp");
  ck_assert_msg(mkdtemp(path) != NULL, "mkdtemp: %s", strerror(errno));
  tmpdir_track(path);
  return path;
}

int ps_test_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t len = sizeof a;
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

/* ps_test_listen: see ps_test.h. */
int ps_test_listen(int port, int *bound) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(fd, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_msg(bind(fd, (struct sockaddr *)&a, sizeof a) == 0, "bind port %d: %s", port,
                strerror(errno));
  ck_assert_int_eq(listen(fd, 16), 0);
  socklen_t len = sizeof a;
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  if (bound) *bound = ntohs(a.sin_port);
  return fd;
}

void ps_test_write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ck_assert_msg(f != NULL, "open '%s': %s", path, strerror(errno));
  ck_assert(fputs(text, f) >= 0);
  ck_assert_int_eq(fclose(f), 0);
}

/* ps_test_file_replace: see ps_test.h. */
void ps_test_file_replace(const char *src, const char *dst, const char *from, const char *to) {
  size_t len;
  char *text = ps_test_read_file(src, &len), *at = strstr(text, from);
  ck_assert_msg(at != NULL, "no '%s' in %s", from, src);
  size_t cap = len + strlen(to) + 1;
  char *out = malloc(cap);
  ck_assert_ptr_nonnull(out);
  snprintf(out, cap, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
  ps_test_write_file(dst, out);
  free(text);
  free(out);
}

/* ps_test_count_files: see ps_test.h. */
int ps_test_count_files(const char *dir, const char *suffix, int empty_only) {
  DIR *d = opendir(dir);
  ck_assert_msg(d != NULL, "cannot list %s", dir);
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d)) != NULL) {
    size_t l = strlen(e->d_name), k = strlen(suffix);
    struct stat st;
    if (l > k && !strcmp(e->d_name + l - k, suffix) &&
        (!empty_only || (fstatat(dirfd(d), e->d_name, &st, 0) == 0 && st.st_size == 0)))
      n++;
  }
  closedir(d);
  return n;
}

char *ps_test_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "cannot read %s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4096 + 1 > cap) {
      cap = cap ? cap * 2 : 8192;
      buf = realloc(buf, cap);
      ck_assert(buf != NULL);
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  fclose(f);
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

const char *ps_test_last_line(char *text) {
  size_t n = strlen(text);
  while (n && text[n - 1] == '\n') text[--n] = 0;
  char *nl = strrchr(text, '\n');
  return nl ? nl + 1 : text;
}

double ps_test_json_num(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(line, pat);
  ck_assert_msg(p != NULL, "no '%s' in: %s", key, line);
  char *end;
  double v = strtod(p + strlen(pat), &end);
  ck_assert_msg(end != p + strlen(pat), "'%s' is not a number in: %s", key, line);
  return v;
}

/* ps_test_json_sum: see ps_test.h. */
uint64_t ps_test_json_sum(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":[", key);
  const char *p = strstr(line, pat);
  ck_assert_msg(p != NULL, "no '%s' list in: %s", key, line);
  uint64_t n = 0;
  for (p += strlen(pat); *p && *p != ']'; p += *p == ',') {
    char *end;
    n += strtoull(p, &end, 10);
    ck_assert_msg(end != p, "'%s' is not a list of numbers in: %s", key, line);
    p = end;
  }
  return n;
}

const char *ps_test_security_yaml = "security:\n  mode: none\n";

/* The security section of the last cluster file written (PS_TEST_SECURITY). */
static char ps_test_sec_last[4096];

/* ps_test_env_security returns the 'security' section for a cluster file
 * in DIR: PS_TEST_SECURITY=tls makes certificates and a channel secret
 * there with scripts/mkcerts; else ps_test_security_yaml. */
static const char *ps_test_env_security(const char *dir) {
  const char *env = getenv("PS_TEST_SECURITY");
  int mac = env && !strcmp(env, "tls-mac");
  if (!env || (strcmp(env, "tls") && !mac) ||
      strcmp(ps_test_security_yaml, "security:\n  mode: none\n"))
    return ps_test_security_yaml;
  char pre[700], cmd[2400], out[700];
  snprintf(pre, sizeof pre, "%s/mkcerts-pre.yaml", dir);
  snprintf(out, sizeof out, "%s/tls.yaml", dir);
  ps_test_write_file(pre, "cluster: test\nshards:\n  - {id: 0, grpc: 127.0.0.1:1, channel: "
                          "127.0.0.1:2, data_dir: /x}\n");
  snprintf(cmd, sizeof cmd, "scripts/mkcerts --force --config '%s' --out '%s/tls' > '%s'", pre,
           dir, out);
  ck_assert_msg(system(cmd) == 0, "scripts/mkcerts failed");
  size_t len;
  char *text = ps_test_read_file(out, &len);
  ck_assert_uint_lt(len + 32, sizeof ps_test_sec_last);
  memcpy(ps_test_sec_last, text, len + 1);
  if (mac) strcat(ps_test_sec_last, "  payload_mac: true\n");
  free(text);
  return ps_test_sec_last;
}

/* ps_test_client_config loads a one-shard config holding the security
 * section of the last cluster file written (plaintext when none). */
static int ps_test_client_config(ps_config *cfg, ps_errbuf *eb) {
  char yaml[8192];
  snprintf(yaml, sizeof yaml, "cluster: test\n%sshards:\n  - {id: 0, grpc: 127.0.0.1:1, "
           "channel: 127.0.0.1:2, data_dir: /x}\n",
           *ps_test_sec_last ? ps_test_sec_last : ps_test_security_yaml);
  return ps_config_load_buf(cfg, "ps_test", yaml, strlen(yaml), eb);
}

int ps_test_rpc_open(ps_rpc **r, const char *addr, ps_errbuf *eb) {
  ps_config cfg;
  int rc = ps_test_client_config(&cfg, eb);
  if (rc == 0) rc = ps_rpc_open_cfg(r, addr, &cfg, PS_ROLE_OPERATOR, eb);
  ps_config_release(&cfg);
  return rc;
}

int ps_test_chan_connect(ps_chan_client **c, const char *addr, const char *cluster,
                         int timeout_ms, ps_errbuf *eb) {
  return ps_test_chan_connect_flags(c, addr, cluster, 0, timeout_ms, eb);
}

/* ps_test_raw_open: see ps_test.h. */
int ps_test_raw_open(const char *addr) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                          .sin_port = htons((uint16_t)atoi(strrchr(addr, ':') + 1))};
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  return fd;
}

/* ps_test_raw_frame: see ps_test.h. */
void ps_test_raw_frame(int fd, const Ps__ChanMeta *m, uint64_t data_len, uint64_t send) {
  uint8_t meta[512], hdr[PS_CHAN_HDR_LEN];
  ck_assert_uint_le(ps__chan_meta__get_packed_size(m), sizeof meta);
  size_t mlen = ps__chan_meta__pack(m, meta);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION,
                   .meta_len = (uint32_t)mlen, .data_len = data_len, .req_id = 1};
  ps_chan_hdr_encode(hdr, &h);
  ck_assert_int_eq(write(fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
  ck_assert_int_eq(write(fd, meta, mlen), (ssize_t)mlen);
  static const uint8_t zeros[4096];
  while (send) {
    size_t n = send < sizeof zeros ? send : sizeof zeros;
    ck_assert_int_eq(write(fd, zeros, n), (ssize_t)n);
    send -= n;
  }
}

/* ps_test_chan_connect_flags: see ps_test.h. */
/* ps_test_chan_key: see ps_test.h. */
int ps_test_chan_key(ps_auth_keys *keys, const ps_auth_key **key, int *flags, ps_errbuf *eb) {
  ps_config cfg;
  *key = NULL;
  *flags = 0;
  int rc = ps_test_client_config(&cfg, eb);
  if (rc < 0) return rc;
  rc = ps_auth_client_key(cfg.security.secret_file, PS_ROLE_WORKER, keys, key, eb);
  *flags = cfg.security.payload_mac ? PS_CHAN_AUTH_MAC : 0;
  ps_config_release(&cfg);
  return rc;
}

/* ps_test_payload_mac: see ps_test.h. */
int ps_test_payload_mac(void) {
  ps_config cfg;
  ps_errbuf eb;
  ck_assert_msg(ps_test_client_config(&cfg, &eb) == 0, "%s", eb.msg);
  int mac = cfg.security.payload_mac;
  ps_config_release(&cfg);
  return mac;
}

int ps_test_chan_connect_flags(ps_chan_client **c, const char *addr, const char *cluster,
                               int flags, int timeout_ms, ps_errbuf *eb) {
  return ps_test_chan_connect_shm(c, addr, cluster, flags, 0, timeout_ms, eb);
}

/* ps_test_chan_connect_shm: see ps_test.h. */
int ps_test_chan_connect_shm(ps_chan_client **c, const char *addr, const char *cluster, int flags,
                             uint64_t shm_bytes, int timeout_ms, ps_errbuf *eb) {
  return ps_test_chan_connect_worker(c, addr, cluster, flags, shm_bytes, PS_CHAN_NO_WORKER,
                                     timeout_ms, eb);
}

/* ps_test_chan_connect_worker: see ps_test.h. */
int ps_test_chan_connect_worker(ps_chan_client **c, const char *addr, const char *cluster,
                                int flags, uint64_t shm_bytes, uint32_t worker, int timeout_ms,
                                ps_errbuf *eb) {
  ps_auth_keys keys = {0};
  const ps_auth_key *key = NULL;
  int mac = 0;
  int rc = ps_test_chan_key(&keys, &key, &mac, eb);
  if (rc == 0)
    rc = ps_chan_connect_worker(c, addr, cluster, key, mac | flags, shm_bytes, worker, timeout_ms,
                                eb);
  ps_auth_release(&keys);
  return rc;
}

/* ps_test_sync_yaml: see ps_test.h. */
const char *ps_test_sync_yaml(const char *dir, int nshards, const char *extra, int *grpc_ports,
                              int *chan_ports) {
  const char *path = ps_test_cluster_yaml(dir, nshards, extra, grpc_ports, chan_ports);
  ps_test_file_replace(path, path, "  mode: periodic\n", "  mode: sync\n");
  return path;
}

/* ps_test_shim_env_init: see ps_test.h. */
void ps_test_shim_env_init(ps_test_shim_env *e, const char *fsync_log, const char *gate) {
  char *so = realpath(ps_test_bin("ps_test_fsync_shim.so"), NULL);
  ck_assert_msg(so != NULL, "%s is not built", ps_test_bin("ps_test_fsync_shim.so"));
  const char *ao = getenv("ASAN_OPTIONS");
  size_t n = 0;
  snprintf(e->preload, sizeof e->preload, "LD_PRELOAD=%s", so);
  e->env[n++] = e->preload;
  if (fsync_log) {
    snprintf(e->log, sizeof e->log, "PS_FSYNC_LOG=%s", fsync_log);
    e->env[n++] = e->log;
  }
  if (gate) {
    snprintf(e->gate, sizeof e->gate, "PS_FSYNC_GATE=%s", gate);
    e->env[n++] = e->gate;
    snprintf(e->fail, sizeof e->fail, "PS_FSYNC_FAIL=%s.fail", gate);
    e->env[n++] = e->fail;
  }
  /* A sanitized psd accepts a preloaded library that comes before ASan's. */
  snprintf(e->asan, sizeof e->asan, "ASAN_OPTIONS=%s%sverify_asan_link_order=0", ao ? ao : "",
           ao && *ao ? ":" : "");
  e->env[n++] = e->asan;
  e->env[n] = NULL;
  free(so);
}

/* ps_test_gated_init: see ps_test.h. */
void ps_test_gated_init(ps_test_gated *g, const char *dir, const char *extra, int fsync_log) {
  snprintf(g->yaml, sizeof g->yaml, "%s", ps_test_sync_yaml(dir, 1, extra, &g->gp, &g->cp));
  snprintf(g->log, sizeof g->log, "%s/psd.log", dir);
  snprintf(g->gate, sizeof g->gate, "%s/gate", dir);
  snprintf(g->fail, sizeof g->fail, "%s.fail", g->gate);
  g->fsync_log[0] = '\0';
  if (fsync_log) snprintf(g->fsync_log, sizeof g->fsync_log, "%s/fsync.log", dir);
  snprintf(g->grpc, sizeof g->grpc, "127.0.0.1:%d", g->gp);
  snprintf(g->chan, sizeof g->chan, "127.0.0.1:%d", g->cp);
  ps_test_shim_env_init(&g->env, fsync_log ? g->fsync_log : NULL, g->gate);
}

const char *ps_test_cluster_yaml(const char *dir, int nshards, const char *extra,
                                 int *grpc_ports, int *chan_ports) {
  static char path[600];
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  fprintf(m, "cluster: test\nchunk_elems: 1024\ndurability:\n  mode: periodic\n"
             "  flush_interval_ms: 200\n%sshards:\n", ps_test_env_security(dir));
  int used[2 * 64 + 32], nused = 0; /* the kernel may hand out a port again */
  ck_assert_int_le(nshards, 64);
  /* ports EXTRA names already (an aggregator's, picked before) are taken */
  for (const char *q = extra; q && nused < 32 && (q = strstr(q, "127.0.0.1:")); q += 10)
    used[nused++] = atoi(q + 10);
  for (int i = 0; i < nshards; i++) {
    int pick[2];
    for (int k = 0; k < 2; k++) {
      int p, dup;
      do {
        p = ps_test_free_port();
        dup = 0;
        for (int j = 0; j < nused; j++) dup |= used[j] == p;
      } while (dup);
      pick[k] = used[nused++] = p;
    }
    int g = pick[0], c = pick[1];
    if (grpc_ports) grpc_ports[i] = g;
    if (chan_ports) chan_ports[i] = c;
    fprintf(m, "  - id: %d\n    grpc: 127.0.0.1:%d\n    channel: 127.0.0.1:%d\n"
               "    data_dir: %s/shard%d\n", i, g, c, dir, i);
  }
  if (extra) fputs(extra, m);
  fclose(m);
  snprintf(path, sizeof path, "%s/cluster.yaml", dir);
  ps_test_write_file(path, buf);
  free(buf);
  return path;
}

#define PS_TEST_MAXPIDS 32
static pid_t *ps_test_pids; /* shared with the forked tests */

void ps_test_procs_setup(void) {
  ps_test_pids = mmap(NULL, PS_TEST_MAXPIDS * sizeof *ps_test_pids, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (ps_test_pids == MAP_FAILED) ps_test_pids = NULL;
  if (ps_test_pids) memset(ps_test_pids, 0, PS_TEST_MAXPIDS * sizeof *ps_test_pids);
}

void ps_test_procs_teardown(void) {
  if (!ps_test_pids) return;
  for (int i = 0; i < PS_TEST_MAXPIDS; i++)
    if (ps_test_pids[i] > 0 && kill(ps_test_pids[i], 0) == 0)
      ps_test_stop(ps_test_pids[i], SIGKILL, 5000);
  munmap(ps_test_pids, PS_TEST_MAXPIDS * sizeof *ps_test_pids);
  ps_test_pids = NULL;
}

/* ps_test_record notes PID in a free slot (or one whose process is gone). */
static void ps_test_record(pid_t pid) {
  for (int i = 0; ps_test_pids && i < PS_TEST_MAXPIDS; i++)
    if (ps_test_pids[i] == 0 || kill(ps_test_pids[i], 0) != 0) {
      ps_test_pids[i] = pid;
      return;
    }
}

void ps_test_start_shards(const char *yaml, const char *dir, int n, const int *gp,
                          const int *cp, pid_t *pids) {
  ps_test_start_shards_env(yaml, dir, n, gp, cp, pids, NULL);
}

void ps_test_start_shards_env(const char *yaml, const char *dir, int n, const int *gp,
                              const int *cp, pid_t *pids, char *const envp_add[]) {
  for (int s = 0; s < n; s++) {
    char log[600];
    snprintf(log, sizeof log, "%s/psd%d.log", dir, s);
    pids[s] = ps_test_psd(yaml, s, log, envp_add);
  }
  for (int s = 0; s < n; s++)
    ck_assert_msg(ps_test_wait_port(cp[s], 15000) == 0 && ps_test_wait_port(gp[s], 5000) == 0,
                  "shard %d did not start; see %s/psd%d.log", s, dir, s);
}

uint64_t ps_test_seed;
static uint64_t ps_test_rng_state;

void ps_test_rng_init(void) {
  ps_test_seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid() << 17 ^
                 (uint64_t)clock();
  ps_test_rng_state = ps_test_seed | 1;
}

float ps_test_rnd(void) {
  uint64_t x = ps_test_rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  ps_test_rng_state = x;
  return (float)((double)((x * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0 * 2 - 1);
}

pid_t ps_test_psd(const char *yaml, int shard, const char *log, char *const envp_add[]) {
  char id[16];
  snprintf(id, sizeof id, "%d", shard);
  char *argv[] = {(char *)ps_test_bin("psd"), "--config", (char *)yaml, "--shard", id, NULL};
  return ps_test_spawn(argv, log, envp_add);
}

pid_t ps_test_spawn(char *const argv[], const char *log, char *const envp_add[]) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    if (log) {
      int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
    }
    for (int i = 0; envp_add && envp_add[i]; i++) putenv(envp_add[i]);
    execv(argv[0], argv);
    fprintf(stderr, "exec '%s': %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  ps_test_record(pid);
  return pid;
}

int64_t ps_test_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ps_test_wait_pid(pid_t pid, int timeout_ms) {
  int64_t end = ps_test_now_ms() + timeout_ms;
  for (;;) {
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) return st;
    if (r < 0) return -1;
    if (ps_test_now_ms() >= end) return -1;
    usleep(5000);
  }
}

int ps_test_sigstop(pid_t pid, int timeout_ms) {
  if (kill(pid, SIGSTOP) != 0) return -1;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int64_t end = ps_test_now_ms() + timeout_ms;
  for (;;) {
    char *stat = ps_test_read_file(path, NULL);
    const char *p = stat ? strrchr(stat, ')') : NULL; /* the name may hold anything */
    int stopped = p && p[1] == ' ' && p[2] == 'T';
    free(stat);
    if (stopped) return 0;
    if (ps_test_now_ms() >= end) return -1;
    usleep(1000);
  }
}

int ps_test_stop(pid_t pid, int sig, int timeout_ms) {
  kill(pid, sig);
  int st = ps_test_wait_pid(pid, timeout_ms);
  if (st == -1) {
    kill(pid, SIGKILL);
    st = ps_test_wait_pid(pid, 5000);
  }
  return st;
}

int ps_test_run(char *const argv[], const char *log, int timeout_ms) {
  pid_t pid = ps_test_spawn(argv, log, NULL);
  int st = ps_test_wait_pid(pid, timeout_ms);
  if (st < 0) ps_test_stop(pid, SIGKILL, 5000);
  ck_assert_msg(st >= 0, "'%s %s' did not finish within %d ms; see %s", argv[0], argv[1],
                timeout_ms, log);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int ps_test_wait_port(int port, int timeout_ms) {
  int64_t end = ps_test_now_ms() + timeout_ms;
  do {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    close(fd);
    if (r == 0) return 0;
    usleep(10000);
  } while (ps_test_now_ms() < end);
  return -1;
}

/* ps_test_submit_call: see ps_test.h. */
int ps_test_submit_call(ps_rpc *r, const Ps__ModelSpec *spec, int replace, int timeout_ms,
                        Ps__SubmitModelReply **rep, ps_errbuf *eb) {
  Ps__SubmitModelRequest req = PS__SUBMIT_MODEL_REQUEST__INIT;
  req.model = (Ps__ModelSpec *)spec;
  req.replace = replace;
  *rep = NULL;
  return ps_rpc_call(r, "/ps.Ps/SubmitModel", &req.base, &ps__submit_model_reply__descriptor,
                     (ProtobufCMessage **)rep, timeout_ms, eb);
}

void ps_test_submit(ps_rpc *r, const Ps__ModelSpec *spec, int replace, int timeout_ms) {
  Ps__SubmitModelReply *rep;
  ps_errbuf eb;
  int err = ps_test_submit_call(r, spec, replace, timeout_ms, &rep, &eb);
  ck_assert_msg(err == 0, "submit '%s': %s", spec->name, eb.msg);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
}

/* ps_test_tmpfs_make: see ps_test.h. */
void ps_test_tmpfs_make(ps_test_tmpfs *t, const char *prefix, const char *opts) {
  memset(t, 0, sizeof *t);
  const char *tmp = getenv("TMPDIR");
  snprintf(t->dir, sizeof t->dir, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", prefix);
  if (!mkdtemp(t->dir)) {
    snprintf(t->why, sizeof t->why, "mkdtemp: %s", strerror(errno));
    return;
  }
  tmpdir_track(t->dir); /* its logs and configs too (ps_test_tmpdir) */
  snprintf(t->mnt, sizeof t->mnt, "%s/shard0", t->dir);
  if (mkdir(t->mnt, 0755) < 0) {
    snprintf(t->why, sizeof t->why, "mkdir '%s': %s", t->mnt, strerror(errno));
    return;
  }
  if (mount("tmpfs", t->mnt, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0) {
    snprintf(t->why, sizeof t->why, "cannot mount a tmpfs on '%s': %s", t->mnt, strerror(errno));
    return;
  }
  t->mounted = 1;
}

/* ps_test_tiny_make, _spec, _free: see ps_test.h. */
void ps_test_tiny_make(ps_test_tiny *m, size_t n) {
  static uint32_t one[] = {1};
  m->t = calloc(n, sizeof *m->t);
  m->tp = calloc(n, sizeof *m->tp);
  m->names = calloc(n, sizeof *m->names);
  ck_assert(m->t && m->tp && m->names);
  for (size_t i = 0; i < n; i++) {
    ps__tensor_spec__init(&m->t[i]);
    snprintf(m->names[i], sizeof m->names[i], "t%u", (unsigned)i);
    m->t[i].name = m->names[i];
    m->t[i].n_shape = 1;
    m->t[i].shape = one;
    m->tp[i] = &m->t[i];
  }
  ps__optimizer_spec__init(&m->opt);
  m->opt.kind = "sgd";
  m->opt.lr = 0.1f;
  ps__model_spec__init(&m->spec);
  m->spec.n_tensors = n;
  m->spec.tensors = m->tp;
  m->spec.optimizer = &m->opt;
}

Ps__ModelSpec *ps_test_tiny_spec(ps_test_tiny *m, const char *name) {
  m->spec.name = (char *)name;
  return &m->spec;
}

void ps_test_tiny_free(ps_test_tiny *m) {
  free(m->t);
  free(m->tp);
  free(m->names);
}

/* ps_test_leave_free: see ps_test.h. */
void ps_test_leave_free(const char *path, uint64_t leave) {
  struct statvfs sv;
  struct stat st;
  int fd = open(path, O_WRONLY | O_CREAT, 0644);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(fstatvfs(fd, &sv), 0);
  ck_assert_int_eq(fstat(fd, &st), 0);
  uint64_t room = (uint64_t)sv.f_bavail * sv.f_frsize + (uint64_t)st.st_size;
  ck_assert_msg(room > leave, "%llu free, under %llu", (unsigned long long)room,
                (unsigned long long)leave);
  if ((uint64_t)st.st_size > room - leave)
    ck_assert_int_eq(ftruncate(fd, (off_t)(room - leave)), 0);
  else
    ck_assert_int_eq(posix_fallocate(fd, 0, (off_t)(room - leave)), 0);
  close(fd);
}

/* ps_test_tmpfs_remove: see ps_test.h. */
void ps_test_tmpfs_remove(ps_test_tmpfs *t) {
  if (t->mounted && umount(t->mnt) < 0) umount2(t->mnt, MNT_DETACH);
  t->mounted = 0;
  if (t->mnt[0]) rmdir(t->mnt);
  if (t->dir[0]) rmdir(t->dir); /* when empty; else at a successful exit */
}

/* ps_test_push: see ps_test.h. */
int ps_test_push(ps_chan_client *c, const char *model, const uint32_t *ids, size_t nids,
                 const float *g, uint64_t nelems, uint32_t worker, uint64_t clock,
                 uint64_t version_seen, uint64_t *version, ps_errbuf *eb) {
  ps_req r = {.model = model, .ids = ids, .nids = nids, .worker = worker, .clock = clock,
              .version = version_seen, .grads = g, .nbytes = nelems * sizeof(float)};
  return ps_chan_push(c, &r, version, eb);
}

/* ps_test_pull: see ps_test.h. */
int ps_test_pull(ps_chan_client *c, const char *model, const uint32_t *ids, size_t nids,
                 float *out, uint64_t nelems, uint32_t worker, uint64_t clock,
                 uint64_t *version, ps_errbuf *eb) {
  ps_req r = {.model = model, .ids = ids, .nids = nids, .worker = worker, .clock = clock,
              .out = out, .nbytes = nelems * sizeof(float)};
  return ps_chan_pull(c, &r, version, eb);
}

/* ps_test_submit_mlp: see ps_test.h. */
void ps_test_submit_mlp(const char *dir, const char *yaml, const char *layers, const char *lr,
                        const char *consistency, const char *staleness) {
  char pb[600], log[600];
  snprintf(pb, sizeof pb, "%s/m.pb", dir);
  snprintf(log, sizeof log, "%s/psctl.log", dir);
  char *lrm[] = {(char *)ps_test_bin("psctl"), "model", "logreg", "--inputs", "784", "--classes",
                 "10", "-o", pb, NULL};
  char *mlp[] = {(char *)ps_test_bin("psctl"), "model", "mlp", "--layers", (char *)layers, "-o",
                 pb, NULL};
  ck_assert_msg(ps_test_run(strcmp(layers, "logreg") ? mlp : lrm, log, 20000) == 0,
                "psctl model failed; see %s", log);
  char *submit[] = {(char *)ps_test_bin("psctl"), "submit", pb, "--name", "m", "--config",
                    (char *)yaml, "--optimizer", "adam", "--lr", (char *)lr, "--consistency",
                    (char *)consistency, staleness ? "--staleness" : NULL, (char *)staleness,
                    NULL};
  ck_assert_msg(ps_test_run(submit, log, 30000) == 0, "psctl submit failed; see %s", log);
}

/* ps_test_call_port calls METHOD with REQ on the shard whose gRPC port is
 * PORT and returns its reply (of DESC), failing the test after 5 s. */
static ProtobufCMessage *ps_test_call_port(int port, const char *method,
                                           const ProtobufCMessage *req,
                                           const ProtobufCMessageDescriptor *desc) {
  ps_rpc *rpc;
  ps_errbuf eb = {""};
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  ck_assert_int_eq(ps_test_rpc_open(&rpc, addr, &eb), 0);
  ProtobufCMessage *resp = NULL;
  ck_assert_msg(ps_rpc_call(rpc, method, req, desc, &resp, 5000, &eb) == 0,
                "%s of the shard at port %d: %s", method, port, eb.msg);
  ps_rpc_close(rpc);
  return resp;
}

/* ps_test_status: see ps_test.h. */
Ps__StatusReply *ps_test_status(int port) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  return (Ps__StatusReply *)ps_test_call_port(port, "/ps.Ps/Status", &req.base,
                                              &ps__status_reply__descriptor);
}

/* ps_test_worker_states: see ps_test.h. */
int ps_test_worker_states(int port, uint32_t worker, const char *state) {
  Ps__ListWorkersRequest req = PS__LIST_WORKERS_REQUEST__INIT;
  Ps__ListWorkersReply *rep = (Ps__ListWorkersReply *)ps_test_call_port(
      port, "/ps.Ps/ListWorkers", &req.base, &ps__list_workers_reply__descriptor);
  int n = 0;
  for (size_t i = 0; i < rep->n_workers; i++)
    n += (worker == UINT32_MAX || rep->workers[i]->worker == worker) &&
         !strcmp(rep->workers[i]->state, state);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return n;
}

/* ps_test_worker_of: see ps_test.h. */
int ps_test_worker_of(int port, pid_t pid, Ps__WorkerInfo *out) {
  Ps__ListWorkersRequest req = PS__LIST_WORKERS_REQUEST__INIT;
  Ps__ListWorkersReply *rep = (Ps__ListWorkersReply *)ps_test_call_port(
      port, "/ps.Ps/ListWorkers", &req.base, &ps__list_workers_reply__descriptor);
  int rc = -1;
  for (size_t i = 0; i < rep->n_workers && rc < 0; i++) {
    if (rep->workers[i]->pid != (uint32_t)pid) continue;
    *out = *rep->workers[i];
    out->host = out->device = out->state = out->model = NULL;
    out->partitions = NULL;
    out->n_partitions = 0;
    rc = 0;
  }
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return rc;
}

/* ps_test_ctr_model: see ps_test.h. */
void ps_test_ctr_model(ps_test_ctr *m, const psw_ctr_shape *sh, const char *kind, float lr,
                       uint64_t seed) {
  uint8_t *buf;
  size_t len;
  ps_errbuf eb;
  ck_assert_msg(psw_graph_ctr_pack("ctr", sh, &buf, &len, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(psw_graph_load(buf, len, &m->g, &eb) == 0, "%s", eb.msg);
  free(buf);
  ck_assert_msg(psw_graph_to_spec(m->g, "ctr", &m->spec, &eb) == 0, "%s", eb.msg);
  ps__optimizer_spec__init(&m->opt);
  m->opt.kind = (char *)kind;
  m->opt.lr = lr;
  m->spec->optimizer = &m->opt;
  m->spec->seed = seed;
}

/* ps_test_ctr_release: see ps_test.h. */
void ps_test_ctr_release(ps_test_ctr *m) {
  m->spec->optimizer = NULL; /* not the spec's to free */
  psw_graph_spec_free(m->spec);
  psw_graph_free(m->g);
}

static void *ps_test_bg_main(void *arg) {
  ps_test_bg *b = arg;
  b->fn(b->arg);
  atomic_store(&b->done, 1);
  return NULL;
}

void ps_test_bg_start(ps_test_bg *b, void (*fn)(void *arg), void *arg) {
  b->fn = fn;
  b->arg = arg;
  atomic_store(&b->done, 0);
  ck_assert_int_eq(pthread_create(&b->th, NULL, ps_test_bg_main, b), 0);
}

int ps_test_bg_done(ps_test_bg *b) { return atomic_load(&b->done); }

int ps_test_bg_wait(ps_test_bg *b, int ms) {
  int64_t end = ps_test_now_ms() + ms;
  while (!ps_test_bg_done(b) && ps_test_now_ms() < end) usleep(5000);
  if (!ps_test_bg_done(b)) return 0;
  pthread_join(b->th, NULL);
  return 1;
}

int ps_test_beat(ps_rpc *r, uint32_t w, int rejoin, ps_errbuf *eb) {
  Ps__HeartbeatRequest hb = PS__HEARTBEAT_REQUEST__INIT;
  hb.worker = w;
  hb.rejoin = rejoin != 0;
  ProtobufCMessage *rep = NULL;
  int err = ps_rpc_call(r, "/ps.Ps/Heartbeat", &hb.base, &ps__heartbeat_reply__descriptor, &rep,
                        2000, eb);
  if (rep) protobuf_c_message_free_unpacked(rep, NULL);
  return err;
}

/* ps_test_graph_dup_node: see ps_test.h. */
uint8_t *ps_test_graph_dup_node(size_t *len, const char **name) {
  static char taken[64];
  uint32_t layers[] = {4, 3, 2};
  uint8_t *buf;
  ps_errbuf eb;
  ck_assert_msg(psw_graph_mlp_pack("dup", layers, 3, PS_GPU_ACT_RELU, &buf, len, &eb) == 0, "%s",
                eb.msg);
  Ps__Graph__Graph *g = ps__graph__graph__unpack(NULL, *len, buf);
  ck_assert(g != NULL && g->n_nodes > 2);
  free(buf);
  snprintf(taken, sizeof taken, "%s", g->nodes[0]->name);
  char *own = g->nodes[2]->name;
  g->nodes[2]->name = taken;
  *len = ps__graph__graph__get_packed_size(g);
  buf = malloc(*len);
  ck_assert(buf != NULL);
  ps__graph__graph__pack(g, buf);
  g->nodes[2]->name = own;
  ps__graph__graph__free_unpacked(g, NULL);
  *name = taken;
  return buf;
}
