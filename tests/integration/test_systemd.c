/* systemd integration of psd: sd_notify over NOTIFY_SOCKET (STATUS lines,
 * READY=1 only once the restored state serves, STOPPING=1 at SIGTERM,
 * exit 0), a clear exit 1 when the store is locked, and the unit file
 * accepted by systemd-analyze verify.
 *
 * Every psd started is recorded in shared memory so the unchecked
 * teardown (in the runner's process) stops it by PID even when a test
 * failed half-way. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "health.pb-c.h"
#include "ps.pb-c.h"
#include "ps_rpc.h"
#include "ps_test.h"

/* sd_recv waits up to TIMEOUT_MS for one datagram on FD; its length or -1. */
static int sd_recv(int fd, char *buf, size_t len, int timeout_ms) {
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return -1;
  ssize_t n = recv(fd, buf, len - 1, 0);
  if (n < 0) return -1;
  buf[n] = 0;
  return (int)n;
}

/* sd_has_line says whether MSG has the line LINE (or a line starting with
 * LINE when PREFIX). */
static int sd_has_line(const char *msg, const char *line, int prefix) {
  size_t n = strlen(line);
  for (const char *p = msg; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
    if (!strncmp(p, line, n) && (prefix || p[n] == '\n' || p[n] == 0)) return 1;
  return 0;
}

/* sd_socket binds a notify socket in DIR (systemd's end) and writes
 * NOTIFY_SOCKET=its path into ENV (ENV_LEN bytes); the descriptor. */
static int sd_socket(const char *dir, char *env, size_t env_len) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  int n = snprintf(sa.sun_path, sizeof sa.sun_path, "%s/notify.sock", dir);
  ck_assert(n > 0 && (size_t)n < sizeof sa.sun_path);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  snprintf(env, env_len, "NOTIFY_SOCKET=%s", sa.sun_path);
  return fd;
}

/* sd_until reads FD's datagrams, each appended to ALL (CAP bytes), until
 * one has the line LINE (a prefix when PREFIX) or TIMEOUT_MS passed: 1
 * when it came. */
static int sd_until(int fd, char *all, size_t cap, const char *line, int prefix, int timeout_ms) {
  char msg[4096];
  int64_t end = ps_test_now_ms() + timeout_ms;
  while (ps_test_now_ms() < end) {
    if (sd_recv(fd, msg, sizeof msg, 200) < 0) continue;
    size_t n = strlen(all);
    snprintf(all + n, cap - n, "%s\n", msg);
    if (sd_has_line(msg, line, prefix)) return 1;
  }
  return 0;
}

static ps_rpc *sd_rpc(int port) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  ps_rpc *r;
  ps_errbuf eb;
  ck_assert_int_eq(ps_test_rpc_open(&r, addr, &eb), 0);
  return r;
}

/* sd_push pushes -1 gradients to model "sd"'s chunk 0: 0, or the error
 * (in EB). */
static int sd_push(ps_rpc *r, ps_errbuf *eb) {
  ProtobufCMessage *rep;
  float g[100];
  for (int i = 0; i < 100; i++) g[i] = -1;
  uint32_t id = 0;
  Ps__PushRequest push = PS__PUSH_REQUEST__INIT;
  push.model = "sd"; push.n_chunk_ids = 1; push.chunk_ids = &id;
  push.grads.data = (uint8_t *)g; push.grads.len = sizeof g;
  int rc = ps_rpc_call(r, "/ps.Ps/Push", &push.base, &ps__push_reply__descriptor, &rep, 5000, eb);
  if (rc == 0) protobuf_c_message_free_unpacked(rep, NULL);
  return rc;
}

/* sd_seed submits model "sd" (one zero-initialised tensor of 100 floats,
 * SGD lr 1) and pushes -1 gradients once, so the values are all 1.0 at
 * version 1. */
static void sd_seed(ps_rpc *r) {
  uint32_t shape[] = {100};
  Ps__TensorSpec t = PS__TENSOR_SPEC__INIT;
  t.name = "t"; t.n_shape = 1; t.shape = shape; t.init = "zeros";
  Ps__TensorSpec *ts[] = {&t};
  Ps__OptimizerSpec opt = PS__OPTIMIZER_SPEC__INIT;
  opt.kind = "sgd";
  opt.lr = 1;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  spec.name = "sd"; spec.seed = 1; spec.n_tensors = 1; spec.tensors = ts; spec.optimizer = &opt;
  ps_test_submit(r, &spec, 0, 5000);
  ps_errbuf eb;
  ck_assert_msg(sd_push(r, &eb) == 0, "push: %s", eb.msg);
}

/* sd_check_restored pulls model "sd" and checks it is all 1.0 at version 1. */
static void sd_check_restored(ps_rpc *r) {
  uint32_t id = 0;
  Ps__PullRequest pull = PS__PULL_REQUEST__INIT;
  pull.model = "sd"; pull.n_chunk_ids = 1; pull.chunk_ids = &id;
  Ps__PullReply *rep;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(r, "/ps.Ps/Pull", &pull.base, &ps__pull_reply__descriptor,
                            (ProtobufCMessage **)&rep, 5000, &eb) == 0, "pull after READY: %s", eb.msg);
  ck_assert_uint_eq(rep->version, 1);
  ck_assert_uint_eq(rep->values.len, 400);
  const float *v = (const float *)rep->values.data;
  for (int i = 0; i < 100; i++) ck_assert(v[i] == 1.0f);
  protobuf_c_message_free_unpacked(&rep->base, NULL);
}

START_TEST(test_systemd_notify) {
  const char *dir = ps_test_tmpdir();
  char d[512], sock[600], log[600], env[700];
  snprintf(d, sizeof d, "%s", dir);
  int gp;
  const char *yaml = ps_test_cluster_yaml(d, 1, NULL, &gp, NULL);
  snprintf(log, sizeof log, "%s/psd.log", d);
  /* A first run leaves flushed state behind. */
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  ck_assert_int_eq(ps_test_wait_port(gp, 10000), 0);
  ps_rpc *r = sd_rpc(gp);
  sd_seed(r);
  ps_rpc_close(r);
  int st = ps_test_stop(pid, SIGTERM, 10000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "first run ended with status %d", st);

  snprintf(sock, sizeof sock, "%s/notify.sock", d);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  ck_assert_uint_lt(strlen(sock), sizeof sa.sun_path);
  strcpy(sa.sun_path, sock);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  snprintf(env, sizeof env, "NOTIFY_SOCKET=%s", sock);
  char *envp[] = {env, NULL};
  pid = ps_test_psd(yaml, 0, log, envp);
  char msg[4096];
  int saw_opening = 0, ready = 0;
  int64_t end = ps_test_now_ms() + 15000;
  while (!ready && ps_test_now_ms() < end) {
    if (sd_recv(fd, msg, sizeof msg, 1000) < 0) continue;
    if (sd_has_line(msg, "STATUS=opening store", 0)) saw_opening = 1;
    ck_assert_msg(!sd_has_line(msg, "STOPPING=1", 0), "STOPPING before READY: %s", msg);
    if (sd_has_line(msg, "READY=1", 0)) ready = 1;
  }
  ck_assert_msg(saw_opening, "no 'STATUS=opening store' before READY");
  ck_assert_msg(ready, "no READY=1 within 15 s");
  /* READY means: restored and serving, right now. */
  r = sd_rpc(gp);
  Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  Grpc__Health__V1__HealthCheckResponse *h;
  ps_errbuf eb;
  ck_assert_msg(ps_rpc_call(r, "/grpc.health.v1.Health/Check", &hreq.base,
                            &grpc__health__v1__health_check_response__descriptor,
                            (ProtobufCMessage **)&h, 5000, &eb) == 0, "health: %s", eb.msg);
  ck_assert_int_eq(h->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  protobuf_c_message_free_unpacked(&h->base, NULL);
  sd_check_restored(r);
  ps_rpc_close(r);

  ck_assert_int_eq(kill(pid, SIGTERM), 0);
  int stopping = 0;
  end = ps_test_now_ms() + 10000;
  while (!stopping && ps_test_now_ms() < end)
    if (sd_recv(fd, msg, sizeof msg, 1000) >= 0 && sd_has_line(msg, "STOPPING=1", 0)) stopping = 1;
  ck_assert_msg(stopping, "no STOPPING=1 after SIGTERM");
  st = ps_test_wait_pid(pid, 10000);
  ck_assert_msg(st != -1, "psd did not exit within 10 s of SIGTERM");
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd exited with status %d", st);
  close(fd);
}
END_TEST

/* A second psd on the same data directory fails at start with one clear
 * line and exit 1, and never says READY. */
START_TEST(test_systemd_store_locked) {
  char d[512], log1[600], log2[600];
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  int gp;
  const char *yaml = ps_test_cluster_yaml(d, 1, NULL, &gp, NULL);
  snprintf(log1, sizeof log1, "%s/psd1.log", d);
  snprintf(log2, sizeof log2, "%s/psd2.log", d);
  pid_t a = ps_test_psd(yaml, 0, log1, NULL);
  ck_assert_int_eq(ps_test_wait_port(gp, 10000), 0);
  pid_t b = ps_test_psd(yaml, 0, log2, NULL);
  int st = ps_test_wait_pid(b, 10000);
  ck_assert_msg(st != -1, "second psd still running");
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "second psd: status %d", st);
  FILE *f = fopen(log2, "r");
  ck_assert_ptr_nonnull(f);
  char line[1024];
  int found = 0;
  while (fgets(line, sizeof line, f)) found |= strstr(line, "cannot open the store") != NULL;
  fclose(f);
  ck_assert_msg(found, "no 'cannot open the store' line in %s", log2);
  st = ps_test_stop(a, SIGTERM, 10000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "first psd: status %d", st);
}
END_TEST

/* A start that fails tells systemd why before it exits 1: STATUS= with
 * the log's line, and ERRNO= where one errno says it (a store another psd
 * holds: EWOULDBLOCK).  It said nothing: systemctl status showed the last
 * phase ("opening store"). */
START_TEST(test_systemd_start_failed) {
  char d[512], file[600], log[600], env[700], all[8192] = "";
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  int gp;
  const char *yaml = ps_test_cluster_yaml(d, 1, NULL, &gp, NULL);
  snprintf(file, sizeof file, "%s/shard0", d); /* data_dir, a file */
  FILE *f = fopen(file, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);
  snprintf(log, sizeof log, "%s/psd.log", d);
  int fd = sd_socket(d, env, sizeof env);
  char *envp[] = {env, NULL};
  pid_t pid = ps_test_psd(yaml, 0, log, envp);
  int st = ps_test_wait_pid(pid, 20000);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "psd: status %d", st);
  sd_until(fd, all, sizeof all, "STATUS=shard 0: cannot open the store: ", 1, 2000);
  ck_assert_msg(sd_has_line(all, "STATUS=shard 0: cannot open the store: ", 1),
                "no STATUS= saying why; got:\n%s", all);
  ck_assert_msg(!sd_has_line(all, "READY=1", 0), "READY=1 from a failed start:\n%s", all);

  /* the store another psd holds */
  ck_assert_int_eq(unlink(file), 0);
  pid_t a = ps_test_psd(yaml, 0, log, NULL);
  ck_assert_int_eq(ps_test_wait_port(gp, 10000), 0);
  all[0] = '\0';
  pid = ps_test_psd(yaml, 0, log, envp);
  st = ps_test_wait_pid(pid, 20000);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "psd: status %d", st);
  char want[32];
  snprintf(want, sizeof want, "ERRNO=%d", EWOULDBLOCK);
  sd_until(fd, all, sizeof all, want, 0, 2000);
  ck_assert_msg(sd_has_line(all, want, 0) && strstr(all, "STATUS=shard 0: cannot open the store: "
                                                    "data_dir"), "no %s with its STATUS; got:\n%s",
                want, all);
  st = ps_test_stop(a, SIGTERM, 10000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "first psd: status %d", st);
  close(fd);
}
END_TEST

/* Under sync the redo log's replay extends systemd's start timeout
 * (EXTEND_TIMEOUT_USEC, then every 5 s while it applies records), and a
 * SIGTERM during the start says STOPPING=1 at once (it said nothing when
 * the stop came before the replay's end: the start ended with exit 0 and
 * no word). */
START_TEST(test_systemd_replay_notify) {
  char d[512], log[600], env[700], cmd[1400], all[8192] = "";
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  int gp;
  const char *yaml = ps_test_sync_yaml(d, 1, NULL, &gp, NULL);
  /* no snapshot after the seed: the log holds its push */
  snprintf(cmd, sizeof cmd, "sed -i 's/flush_interval_ms: 200$/flush_interval_ms: 600000/' '%s' "
           "&& grep -q 'flush_interval_ms: 600000$' '%s'", yaml, yaml);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(log, sizeof log, "%s/psd.log", d);
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  ck_assert_int_eq(ps_test_wait_port(gp, 10000), 0);
  ps_rpc *r = sd_rpc(gp);
  sd_seed(r);
  ps_rpc_close(r);
  ps_test_stop(pid, SIGKILL, 10000);

  /* stopped as soon as it opens the store (before or in the replay) */
  int fd = sd_socket(d, env, sizeof env);
  char *envp[] = {env, NULL};
  pid = ps_test_psd(yaml, 0, log, envp);
  ck_assert_msg(sd_until(fd, all, sizeof all, "STATUS=opening store", 0, 15000),
                "no 'STATUS=opening store'; got:\n%s", all);
  ck_assert_int_eq(kill(pid, SIGTERM), 0);
  ck_assert_msg(sd_until(fd, all, sizeof all, "STOPPING=1", 0, 10000),
                "no STOPPING=1 after a SIGTERM in the start; got:\n%s", all);
  int st = ps_test_wait_pid(pid, 10000);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd: status %d", st);
  ck_assert_msg(!sd_has_line(all, "READY=1", 0), "READY=1:\n%s", all);

  /* a start to the end: the replay extends the start's timeout */
  all[0] = '\0';
  pid = ps_test_psd(yaml, 0, log, envp);
  ck_assert_msg(sd_until(fd, all, sizeof all, "READY=1", 0, 15000), "no READY=1; got:\n%s", all);
  ck_assert_msg(strstr(all, "STATUS=replaying the redo log\nEXTEND_TIMEOUT_USEC="),
                "no EXTEND_TIMEOUT_USEC at the replay; got:\n%s", all);
  r = sd_rpc(gp);
  sd_check_restored(r);
  ps_rpc_close(r);
  st = ps_test_stop(pid, SIGTERM, 10000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd: status %d", st);
  close(fd);
}
END_TEST

/* A port another process holds: psd says which address and why, exit 1,
 * before it opens (or makes) the store. */
START_TEST(test_systemd_port_taken) {
  char d[512], log[600], store[700];
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  int gp;
  const char *yaml = ps_test_cluster_yaml(d, 1, NULL, &gp, NULL);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)gp),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  ck_assert_int_eq(listen(fd, 1), 0);
  snprintf(log, sizeof log, "%s/psd.log", d);
  pid_t pid = ps_test_psd(yaml, 0, log, NULL);
  int st = ps_test_wait_pid(pid, 20000);
  close(fd);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "psd: status %d; see %s", st,
                log);
  char *text = ps_test_read_file(log, NULL), want[200];
  snprintf(want, sizeof want, "cannot listen on grpc address '127.0.0.1:%d': Address already "
           "in use", gp);
  ck_assert_msg(strstr(text, want), "no \"%s\" in %s", want, log);
  free(text);
  snprintf(store, sizeof store, "%s/shard0/CURRENT", d); /* RocksDB's, had it opened */
  ck_assert_msg(access(store, F_OK) != 0, "psd made the store: %s", store);
}
END_TEST

/* The shipped unit passes systemd-analyze verify (with ExecStart pointing
 * at the built psd, since verify checks that the binary exists). */
START_TEST(test_systemd_unit_verify) {
  if (system("command -v systemd-analyze >/dev/null 2>&1") != 0)
    PS_SKIP("systemd-analyze is not installed");
  char d[512], unit[700], out[700], cmd[2400];
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  char psd[512];
  ck_assert_ptr_nonnull(realpath(ps_test_bin("psd"), psd));
  snprintf(unit, sizeof unit, "%s/psd@0.service", d);
  snprintf(out, sizeof out, "%s/verify.out", d);
  snprintf(cmd, sizeof cmd, "sed 's#/usr/local/bin/psd#%s#g' config/psd@.service > '%s'", psd, unit);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(cmd, sizeof cmd, "grep -q '^Type=notify$' '%s' && grep -q '^WatchdogSec=' '%s'", unit, unit);
  ck_assert_msg(system(cmd) == 0, "the unit is not Type=notify with a watchdog");
  /* exit 2 (bad configuration) is not restarted; no ExecStartPre fails in
   * its place, whose status RestartPreventExitStatus would not see */
  snprintf(cmd, sizeof cmd, "grep -q '^RestartPreventExitStatus=2$' '%s' && "
           "! grep -q '^ExecStartPre=' '%s'", unit, unit);
  ck_assert_msg(system(cmd) == 0, "exit 2 is restarted, or an ExecStartPre may exit 2");
  /* a relative data_dir resolves in the state directory, not in / */
  snprintf(cmd, sizeof cmd, "grep -q '^StateDirectory=psd$' '%s' && "
           "grep -q '^WorkingDirectory=/var/lib/psd$' '%s'", unit, unit);
  ck_assert_msg(system(cmd) == 0, "WorkingDirectory is not the StateDirectory");
  snprintf(cmd, sizeof cmd, "systemd-analyze verify '%s' > '%s' 2>&1", unit, out);
  int rc = system(cmd);
  FILE *f = fopen(out, "r");
  char text[2048] = "";
  size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
  text[n] = 0;
  if (f) fclose(f);
  ck_assert_msg(rc == 0 && n == 0, "systemd-analyze verify: rc %d: %s", rc, text);
}
END_TEST

/* make install-unit PREFIX=P writes a unit that runs P/bin/psd and names
 * P's README (it named /usr/local/bin/psd whatever PREFIX was), and that
 * systemd-analyze verify accepts. */
START_TEST(test_systemd_unit_prefix) {
  if (system("command -v systemd-analyze >/dev/null 2>&1 && command -v make >/dev/null 2>&1") != 0)
    PS_SKIP("systemd-analyze or make is not installed");
  char d[512], psd[512], cmd[4200], unit[700];
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  ck_assert_ptr_nonnull(realpath(ps_test_bin("psd"), psd));
  /* PREFIX/bin/psd is the built psd (verify wants it to exist) */
  snprintf(cmd, sizeof cmd, "mkdir -p '%s/p/bin' && ln -s '%s' '%s/p/bin/psd' && "
           "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory install-unit "
           "DESTDIR='%s/root' PREFIX='%s/p' > '%s/make.out' 2>&1", d, psd, d, d, d, d);
  ck_assert_msg(system(cmd) == 0, "make install-unit failed: see %s/make.out", d);
  snprintf(unit, sizeof unit, "%s/root/etc/systemd/system/psd@.service", d);
  char *text = ps_test_read_file(unit, NULL), want[700];
  ck_assert_ptr_nonnull(text);
  snprintf(want, sizeof want, "ExecStart=%s/p/bin/psd --config ", d);
  ck_assert_msg(strstr(text, want), "no '%s' in %s", want, unit);
  snprintf(want, sizeof want, "Documentation=file:%s/p/share/doc/psd/README.md", d);
  ck_assert_msg(strstr(text, want), "no '%s' in %s", want, unit);
  free(text);
  snprintf(cmd, sizeof cmd, "! grep -v '^#' '%s' | grep /usr/local", unit);
  ck_assert_msg(system(cmd) == 0, "%s still names /usr/local", unit);
  snprintf(cmd, sizeof cmd, "cp '%s' '%s/psd@0.service' && systemd-analyze verify "
           "'%s/psd@0.service' > '%s/verify.out' 2>&1 && ! test -s '%s/verify.out'", unit, d, d,
           d, d);
  ck_assert_msg(system(cmd) == 0, "systemd-analyze verify: see %s/verify.out", d);
}
END_TEST

/* A stop tells systemd how long it may take: drain_timeout_ms and a
 * margin for the final flush (EXTEND_TIMEOUT_USEC with STOPPING=1), so a
 * drain_timeout_ms past the unit's TimeoutStopSec (60 s) is not
 * SIGKILLed before its flush.  It said nothing: systemd killed it at 60 s. */
START_TEST(test_systemd_stop_extends) {
  char d[512], env[700], log[600], all[8192] = "";
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  int gp;
  const char *yaml = ps_test_cluster_yaml(d, 1, "limits:\n  drain_timeout_ms: 120000\n", &gp,
                                          NULL);
  snprintf(log, sizeof log, "%s/psd.log", d);
  int fd = sd_socket(d, env, sizeof env);
  char *envp[] = {env, NULL};
  pid_t pid = ps_test_psd(yaml, 0, log, envp);
  ck_assert_msg(sd_until(fd, all, sizeof all, "READY=1", 0, 15000), "no READY=1; got:\n%s", all);
  ck_assert_int_eq(kill(pid, SIGTERM), 0);
  ck_assert_msg(sd_until(fd, all, sizeof all, "STOPPING=1", 0, 10000), "no STOPPING=1:\n%s", all);
  const char *e = strstr(all, "EXTEND_TIMEOUT_USEC=");
  ck_assert_msg(e && strstr(all, "STOPPING=1") < e, "no EXTEND_TIMEOUT_USEC at the stop:\n%s",
                all);
  unsigned long long usec = strtoull(e + strlen("EXTEND_TIMEOUT_USEC="), NULL, 10);
  ck_assert_msg(usec > 120000000ull, "EXTEND_TIMEOUT_USEC=%llu, not past drain_timeout_ms", usec);
  int st = ps_test_wait_pid(pid, 10000);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd: status %d", st);
  close(fd);
}
END_TEST

/* A DEGRADED shard's STATUS= says what keeps it DEGRADED now, as psctl
 * status does: the redo log fails, then the store's syncs fail too, then
 * the log works again: STATUS= says the flush (it kept saying "cannot
 * sync the redo log" until the shard served again). */
START_TEST(test_systemd_degraded_status) {
  char d[512], env[700], sfail[700], sfail_env[800], all[65536] = "", msg[4096];
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  ps_test_gated g;
  ps_test_gated_init(&g, d, NULL, 0);
  snprintf(sfail, sizeof sfail, "%s/store.fail", d);
  snprintf(sfail_env, sizeof sfail_env, "PS_FSYNC_FAIL_STORE=%s", sfail);
  int fd = sd_socket(d, env, sizeof env);
  char *envp[16];
  size_t n = 0;
  for (; g.env.env[n]; n++) envp[n] = g.env.env[n];
  envp[n++] = env;
  envp[n++] = sfail_env;
  envp[n] = NULL;
  pid_t pid = ps_test_psd(g.yaml, 0, g.log, envp);
  ck_assert_msg(sd_until(fd, all, sizeof all, "READY=1", 0, 15000), "no READY=1; got:\n%s", all);
  ps_rpc *r = sd_rpc(g.gp);
  sd_seed(r);
  ps_errbuf eb;
  ps_test_write_file(g.fail, ""); /* the log's syncs fail */
  ck_assert_msg(sd_push(r, &eb) != 0, "a push acknowledged while the log fails");
  ck_assert_msg(sd_until(fd, all, sizeof all, "STATUS=degraded: cannot sync the redo log", 1, 15000),
                "no STATUS= naming the log; got:\n%s; see %s", all, g.log);
  ps_test_write_file(sfail, ""); /* the store's too */
  ck_assert_int_eq(unlink(g.fail), 0); /* the log works again, the store does not */
  int flush_only = 0;
  int64_t end = ps_test_now_ms() + 15000;
  while (!flush_only && ps_test_now_ms() < end) {
    if (sd_recv(fd, msg, sizeof msg, 200) < 0) continue;
    size_t len = strlen(all);
    snprintf(all + len, sizeof all - len, "%s\n", msg);
    flush_only = !strncmp(msg, "STATUS=degraded: its last flush failed: ", 40) &&
                 !strstr(msg, "redo log");
  }
  ck_assert_msg(flush_only, "no STATUS= naming the flush alone once the log works; got:\n%s; "
                "see %s", all, g.log);
  ck_assert_int_eq(unlink(sfail), 0);
  ck_assert_msg(sd_until(fd, all, sizeof all, "STATUS=serving shard 0", 0, 15000),
                "not serving again; got:\n%s", all);
  ck_assert_msg(sd_push(r, &eb) == 0, "push once serving again: %s", eb.msg);
  ps_rpc_close(r);
  int st = ps_test_stop(pid, SIGTERM, 10000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd: status %d", st);
  close(fd);
}
END_TEST

/* Under a unit (stderr is the stream JOURNAL_STREAM names) every line
 * psd writes carries its priority, the start's own messages too: a bad
 * cluster file or command line that ends psd with exit 2 is an error in
 * the journal (`journalctl -p err` finds it).  They were written plain,
 * which journald files at info; off the journal they stay plain. */
START_TEST(test_systemd_journal_priority) {
  char d[512], bad[600], log[600], cmd[8192];
  snprintf(d, sizeof d, "%s", ps_test_tmpdir());
  snprintf(bad, sizeof bad, "%s/bad.yaml", d);
  snprintf(log, sizeof log, "%s/stderr.log", d);
  ps_test_write_file(bad, "cluster: x\nbogus: 1\n");
  ps_test_write_file(log, "");
  const char *psd = ps_test_bin("psd");
  /* the journal's stream: stderr is the file JOURNAL_STREAM names */
  snprintf(cmd, sizeof cmd, "JOURNAL_STREAM=$(stat -c %%d:%%i '%s') '%s' --config '%s' --shard 0 "
           "2>>'%s'; test $? = 2 && JOURNAL_STREAM=$(stat -c %%d:%%i '%s') '%s' --config '%s' "
           "2>>'%s'; test $? = 2", log, psd, bad, log, log, psd, bad, log);
  ck_assert_msg(system(cmd) == 0, "psd did not exit 2; see %s", log);
  char *text = ps_test_read_file(log, NULL), want[800];
  snprintf(want, sizeof want, "<3>%s:2:1: unknown key 'bogus' at the top level\n", bad);
  ck_assert_msg(!strncmp(text, want, strlen(want)), "wanted '%s' first, got:\n%s", want, text);
  ck_assert_msg(strstr(text, "\n<3>psd: --shard N or --aggregator NAME is required (or -t)\n"
                             "<3>usage: psd --config FILE"), "a usage error without <3>:\n%s", text);
  for (const char *p = text; *p; p = strchr(p, '\n') + 1)
    ck_assert_msg(p[0] == '<' && p[2] == '>', "a line without its priority:\n%s", text);
  free(text);
  /* a terminal, a file: as it was, no prefix */
  snprintf(cmd, sizeof cmd, "'%s' --config '%s' --shard 0 2>'%s'; test $? = 2", psd, bad, log);
  ck_assert_int_eq(system(cmd), 0);
  text = ps_test_read_file(log, NULL);
  ck_assert_str_eq(text, want + 3);
  free(text);
}
END_TEST

Suite *psd_systemd_suite(void) {
  Suite *s = suite_create("psd_systemd");
  TCase *tc = tcase_create("notify");
  tcase_set_timeout(tc, 90);
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_add_test(tc, test_systemd_notify);
  tcase_add_test(tc, test_systemd_store_locked);
  tcase_add_test(tc, test_systemd_port_taken);
  tcase_add_test(tc, test_systemd_start_failed);
  tcase_add_test(tc, test_systemd_replay_notify);
  tcase_add_test(tc, test_systemd_unit_verify);
  tcase_add_test(tc, test_systemd_unit_prefix);
  tcase_add_test(tc, test_systemd_journal_priority);
  tcase_add_test(tc, test_systemd_degraded_status);
  tcase_add_test(tc, test_systemd_stop_extends);
  suite_add_tcase(s, tc);
  return s;
}
