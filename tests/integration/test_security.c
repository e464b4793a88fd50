/* Tests for issue 17's security: one psd with mutual TLS (certificates from
 * scripts/mkcerts) and an authenticated tensor channel.  Each refusal is
 * checked to leave the shard's state unchanged and to show in its
 * counters (auth_refused, chan_auth_refused). */
#include <errno.h>
#include <grpc/status.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "health.pb-c.h"
#include "ps.pb-c.h"
#include "ps_auth.h"
#include "psd_chan_client.h"
#include "ps_chan.h"
#include "ps_config.h"
#include "ps_rpc.h"
#include "ps_test.h"
#include "ps_tls.h"
#include "psd_grpc.h"

#define SEC_ELEMS 1000 /* model "m": one tensor of 1000 floats, chunks of 256 */
#define SEC_CHUNKS 4

static pid_t sec_pid;
static int sec_gp, sec_cp, sec_up_ok;
static char sec_dir[512], sec_yaml[700], sec_grpc[64], sec_chan[64];
static ps_config sec_cfg;

/* sec_mkcerts runs scripts/mkcerts for a cluster on 127.0.0.1 into
 * DIR/NAME; its 'security' section goes to DIR/NAME.yaml.  0 or -1. */
static int sec_mkcerts(const char *dir, const char *name) {
  char pre[700], cmd[2400];
  snprintf(pre, sizeof pre, "%s/%s-pre.yaml", dir, name);
  FILE *f = fopen(pre, "w");
  if (!f) return -1;
  fprintf(f, "cluster: test\nshards:\n  - {id: 0, grpc: 127.0.0.1:1, channel: 127.0.0.1:2, "
             "data_dir: /x}\n");
  fclose(f);
  snprintf(cmd, sizeof cmd, "scripts/mkcerts --config '%s' --out '%s/%s' > '%s/%s.yaml'", pre,
           dir, name, dir, name);
  return system(cmd) == 0 ? 0 : -1;
}

/* Starts the secured psd once for the suite (unchecked fixture). */
static void sec_up(void) {
  snprintf(sec_dir, sizeof sec_dir, "%s", ps_test_tmpdir());
  if (sec_mkcerts(sec_dir, "tls") < 0 || sec_mkcerts(sec_dir, "other") < 0) {
    fprintf(stderr, "security: scripts/mkcerts failed\n");
    return;
  }
  char path[700], log[700];
  snprintf(path, sizeof path, "%s/tls.yaml", sec_dir);
  FILE *f = fopen(path, "r");
  static char sec[4096];
  size_t n = f ? fread(sec, 1, sizeof sec - 1, f) : 0;
  if (f) fclose(f);
  sec[n] = '\0';
  const char *saved = ps_test_security_yaml;
  ps_test_security_yaml = sec;
  int cp;
  snprintf(sec_yaml, sizeof sec_yaml, "%s",
           ps_test_cluster_yaml(sec_dir, 1, "workers:\n  count: 2\n", &sec_gp, &cp));
  ps_test_security_yaml = saved;
  sec_cp = cp;
  ps_errbuf eb;
  if (ps_config_load(&sec_cfg, sec_yaml, &eb) < 0) {
    fprintf(stderr, "security: %s\n", eb.msg);
    return;
  }
  snprintf(sec_grpc, sizeof sec_grpc, "127.0.0.1:%d", sec_gp);
  snprintf(sec_chan, sizeof sec_chan, "127.0.0.1:%d", sec_cp);
  snprintf(log, sizeof log, "%s/psd.log", sec_dir);
  sec_pid = ps_test_psd(sec_yaml, 0, log, NULL);
  sec_up_ok = ps_test_wait_port(sec_cp, 15000) == 0 && ps_test_wait_port(sec_gp, 5000) == 0;
  if (!sec_up_ok) fprintf(stderr, "security: psd did not start; see %s\n", log);
}

static void sec_down(void) {
  if (sec_pid > 0) ps_test_stop(sec_pid, SIGTERM, 10000);
  sec_pid = 0;
  ps_config_release(&sec_cfg);
}

/* sec_rpc_at opens a control-plane channel to ADDR as ROLE (its
 * certificate in CFG); sec_rpc to the suite's shard. */
static ps_rpc *sec_rpc_at(const char *addr, const ps_config *cfg, int role) {
  ck_assert_msg(sec_up_ok, "psd is not running");
  ps_rpc *r;
  ps_errbuf eb;
  int rc = ps_rpc_open_cfg(&r, addr, cfg, role, &eb);
  ck_assert_msg(rc == 0, "%s", eb.msg);
  return r;
}

static ps_rpc *sec_rpc(const ps_config *cfg, int role) { return sec_rpc_at(sec_grpc, cfg, role); }

/* sec_operator_call calls METHOD with REQ on the shard at ADDR as the
 * operator and returns its reply (of descriptor D), failing the test
 * when the call fails. */
static ProtobufCMessage *sec_operator_call(const char *addr, const char *method,
                                           const ProtobufCMessage *req,
                                           const ProtobufCMessageDescriptor *d) {
  ps_rpc *r = sec_rpc_at(addr, &sec_cfg, PS_ROLE_OPERATOR);
  ProtobufCMessage *rep;
  ps_errbuf eb;
  int rc = ps_rpc_call(r, method, req, d, &rep, 5000, &eb);
  ps_rpc_close(r);
  ck_assert_msg(rc == 0, "%s: %s", method, eb.msg);
  return rep;
}

/* sec_status_at: the status of the shard at ADDR, asked as the operator;
 * sec_status: of the suite's shard. */
static Ps__StatusReply *sec_status_at(const char *addr) {
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  return (Ps__StatusReply *)sec_operator_call(addr, "/ps.Ps/Status", &req.base,
                                              &ps__status_reply__descriptor);
}

static Ps__StatusReply *sec_status(void) { return sec_status_at(sec_grpc); }

/* sec_counter returns the shard's chan_auth_refused (CHAN) or
 * auth_refused counter, asked as the operator. */
static uint64_t sec_counter(int chan) {
  Ps__StatusReply *st = sec_status();
  uint64_t v = chan ? st->chan_auth_refused : st->auth_refused;
  ps__status_reply__free_unpacked(st, NULL);
  return v;
}

/* sec_errors returns the shard's errors counter (requests answered with
 * an error), asked as the operator. */
static uint64_t sec_errors(void) {
  Ps__StatusReply *st = sec_status();
  uint64_t v = st->errors;
  ps__status_reply__free_unpacked(st, NULL);
  return v;
}

/* sec_worker_key loads the suite's secret file into *KEYS and returns its
 * worker key (the caller releases KEYS). */
static const ps_auth_key *sec_worker_key(ps_auth_keys *keys) {
  const ps_auth_key *key;
  ps_errbuf eb;
  int rc = ps_auth_client_key(sec_cfg.security.secret_file, PS_ROLE_WORKER, keys, &key, &eb);
  ck_assert_msg(rc == 0, "%s", eb.msg);
  return key;
}

/* sec_spec fills SPEC for model NAME: one tensor of N floats. */
static void sec_spec(Ps__ModelSpec *spec, Ps__TensorSpec *t, Ps__TensorSpec **tp,
                     Ps__OptimizerSpec *opt, uint32_t *shape, const char *name, uint32_t n) {
  ps__tensor_spec__init(t);
  *shape = n;
  t->name = "w";
  t->n_shape = 1;
  t->shape = shape;
  t->init = "ones";
  ps__optimizer_spec__init(opt);
  opt->kind = "sgd";
  opt->lr = 1;
  ps__model_spec__init(spec);
  spec->name = (char *)name;
  spec->seed = 1;
  tp[0] = t;
  spec->n_tensors = 1;
  spec->tensors = tp;
  spec->optimizer = opt;
  spec->chunk_elems = 256;
}

/* sec_submit_as submits model NAME of N floats as ROLE with CFG's
 * certificates; the call's result.  sec_submit: with the suite's. */
static int sec_submit_as(const ps_config *cfg, int role, const char *name, uint32_t n,
                         int replace, ps_errbuf *eb) {
  Ps__ModelSpec spec;
  Ps__TensorSpec t, *tp[1];
  Ps__OptimizerSpec opt;
  uint32_t shape;
  sec_spec(&spec, &t, tp, &opt, &shape, name, n);
  Ps__SubmitModelRequest req = PS__SUBMIT_MODEL_REQUEST__INIT;
  req.model = &spec;
  req.replace = replace;
  ps_rpc *r = sec_rpc(cfg, role);
  Ps__SubmitModelReply *rep = NULL;
  int rc = ps_rpc_call(r, "/ps.Ps/SubmitModel", &req.base, &ps__submit_model_reply__descriptor,
                       (ProtobufCMessage **)&rep, 10000, eb);
  if (rep) ps__submit_model_reply__free_unpacked(rep, NULL);
  ps_rpc_close(r);
  return rc;
}

static int sec_submit(int role, const char *name, uint32_t n, int replace, ps_errbuf *eb) {
  return sec_submit_as(&sec_cfg, role, name, n, replace, eb);
}

/* sec_model_params: how many parameters model NAME has on the shard. */
static uint64_t sec_model_params(const char *name) {
  Ps__StatusReply *st = sec_status();
  uint64_t n = 0;
  for (size_t i = 0; i < st->n_models; i++)
    if (!strcmp(st->models[i]->name, name)) n = st->models[i]->params;
  ps__status_reply__free_unpacked(st, NULL);
  return n;
}

/* sec_model_version: model NAME's version on the shard (0: none). */
static uint64_t sec_model_version(const char *name) {
  Ps__StatusReply *st = sec_status();
  uint64_t v = 0;
  for (size_t i = 0; i < st->n_models; i++)
    if (!strcmp(st->models[i]->name, name)) v = st->models[i]->version;
  ps__status_reply__free_unpacked(st, NULL);
  return v;
}

/* sec_ensure_model submits model "m" (1000 floats) as the operator. */
static void sec_ensure_model(void) {
  ps_errbuf eb;
  int rc = sec_submit(PS_ROLE_OPERATOR, "m", SEC_ELEMS, 0, &eb);
  ck_assert_msg(rc == 0, "submit as operator: %s", eb.msg);
}

/* sec_pull reads model "m" over the channel with KEY; the connect's result. */
static int sec_pull(const ps_auth_key *key, float *out, ps_errbuf *eb) {
  static const uint32_t ids[SEC_CHUNKS] = {0, 1, 2, 3};
  ps_chan_client *c;
  int rc = ps_chan_connect_auth(&c, sec_chan, "test", key, 0, 5000, eb);
  if (rc < 0) return rc;
  uint64_t v;
  rc = ps_test_pull(c, "m", ids, SEC_CHUNKS, out, SEC_ELEMS, 0, 0, &v, eb);
  ps_chan_close(c);
  return rc;
}

/* Without credentials: plaintext gRPC, TLS without a client certificate,
 * a channel hello without a key: all refused, the model unchanged. */
START_TEST(test_sec_no_credentials) {
  sec_ensure_model();
  Ps__StatusReply *st = sec_status();
  uint64_t chan0 = st->chan_auth_refused;
  ck_assert_str_eq(st->security, "mtls+chan-hmac");
  ps__status_reply__free_unpacked(st, NULL);
  ps_errbuf eb;
  ps_rpc *r;
  ck_assert_int_eq(ps_rpc_open(&r, sec_grpc, &eb), 0); /* plaintext */
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  ProtobufCMessage *rep = NULL;
  ck_assert_int_lt(ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                               &rep, 3000, &eb), 0);
  ps_rpc_close(r);
  r = sec_rpc(&sec_cfg, PS_ROLE_NONE); /* TLS, the right CA, no certificate */
  ck_assert_int_lt(sec_submit(PS_ROLE_NONE, "m", 10, 1, &eb), 0);
  ck_assert_int_lt(ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                               &rep, 3000, &eb), 0);
  ps_rpc_close(r);
  float out[SEC_ELEMS];
  ck_assert_int_eq(sec_pull(NULL, out, &eb), PS_EPERM); /* not worth retrying */
  ck_assert_msg(strstr(eb.msg, "authentication required"), "%s", eb.msg);
  ck_assert_uint_eq(sec_model_params("m"), SEC_ELEMS);
  ck_assert_uint_eq(sec_counter(1), chan0 + 1);
}
END_TEST

/* A certificate of another CA is refused; so is a shard this client's CA
 * did not sign. */
START_TEST(test_sec_wrong_certificate) {
  sec_ensure_model();
  char path[700];
  snprintf(path, sizeof path, "%s/other.yaml", sec_dir);
  char *other_sec = ps_test_read_file(path, NULL);
  char yaml[8192];
  snprintf(yaml, sizeof yaml, "cluster: test\n%sshards:\n  - {id: 0, grpc: '%s', channel: '%s',"
           " data_dir: /x}\n", other_sec, sec_grpc, sec_chan);
  free(other_sec);
  ps_config other;
  ps_errbuf eb;
  ck_assert_msg(ps_config_load_buf(&other, "other.yaml", yaml, strlen(yaml), &eb) == 0, "%s",
                eb.msg);
  ps_rpc *r = sec_rpc(&other, PS_ROLE_OPERATOR); /* other CA: neither side trusts the other */
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  ProtobufCMessage *rep = NULL;
  ck_assert_int_lt(ps_rpc_call(r, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                               &rep, 3000, &eb), 0);
  ps_rpc_close(r);
  /* This cluster's CA for the shard, the other CA's operator certificate:
   * the client sees at once that its certificate does not chain to the CA
   * it was given (the shard's refusal of it: test_sec_python_health). */
  free(other.security.tls.ca);
  other.security.tls.ca = strdup(sec_cfg.security.tls.ca);
  ck_assert_int_eq(ps_rpc_open_cfg(&r, sec_grpc, &other, PS_ROLE_OPERATOR, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "operator.pem' does not chain to the CA in"), "%s", eb.msg);
  /* The other cluster's channel secret: same key ids, other secrets. */
  ps_auth_keys keys;
  const ps_auth_key *key;
  ck_assert_int_eq(ps_auth_client_key(other.security.secret_file, PS_ROLE_WORKER, &keys, &key,
                                      &eb), 0);
  uint64_t chan0 = sec_counter(1);
  float out[SEC_ELEMS];
  /* The shard proves its key first: this client sees the shard's proof
   * fail, stops (PS_EPERM: not worth retrying) and closes; the shard
   * counts a client that left without its proof once it sees the close. */
  ck_assert_int_eq(sec_pull(key, out, &eb), PS_EPERM);
  ck_assert_msg(strstr(eb.msg, "proof of key 'worker-1' is wrong"), "%s", eb.msg);
  ps_auth_release(&keys);
  ps_config_release(&other);
  ck_assert_uint_eq(sec_model_params("m"), SEC_ELEMS);
  uint64_t chan1 = sec_counter(1);
  for (int i = 0; i < 100 && chan1 == chan0; i++) { /* at most 5 s */
    usleep(50 * 1000);
    chan1 = sec_counter(1);
  }
  ck_assert_uint_eq(chan1, chan0 + 1);
}
END_TEST

/* Roles: a worker may read (GetModel, Export, Status) but not submit or
 * replace; the operator may.  A channel push of a sum with a worker's or
 * the operator's key (only an aggregator's forwards sums), refused first
 * (counted in auth_refused and errors), is no gRPC call: the gRPC
 * refusals' log line counts only its own. */
START_TEST(test_sec_roles) {
  sec_ensure_model();
  uint64_t refused0 = sec_counter(0), errors0 = sec_errors(), version0 = sec_model_version("m");
  ps_errbuf eb;
  static const int sum_roles[] = {PS_ROLE_WORKER, PS_ROLE_OPERATOR};
  for (size_t k = 0; k < sizeof sum_roles / sizeof sum_roles[0]; k++) {
    ps_auth_keys keys = {0};
    const ps_auth_key *key;
    ck_assert_msg(ps_auth_client_key(sec_cfg.security.secret_file, sum_roles[k], &keys, &key,
                                     &eb) == 0, "%s", eb.msg);
    ps_chan_client *c;
    ck_assert_msg(ps_chan_connect_auth(&c, sec_chan, "test", key, 0, 5000, &eb) == 0, "%s",
                  eb.msg);
    static const uint32_t ids[SEC_CHUNKS] = {0, 1, 2, 3}, sum[] = {0, 1};
    static float g[SEC_ELEMS];
    ps_req sq = {.model = "m", .ids = ids, .nids = SEC_CHUNKS, .grads = g, .nbytes = sizeof g,
                 .summed = sum, .nsummed = 2};
    uint64_t ver;
    char want[200];
    snprintf(want, sizeof want, "a push that sums 2 workers needs an aggregator's key; this "
             "connection proved a %s key", ps_role_name(sum_roles[k]));
    ck_assert_int_eq(ps_chan_push(c, &sq, &ver, &eb), PS_EPERM);
    ck_assert_msg(strstr(eb.msg, want), "%s", eb.msg);
    /* a request answered with an error: in errors too (it was not), and
     * nothing applied; the connection goes on with its next push, which
     * every role may send */
    ck_assert_uint_eq(sec_counter(0), ++refused0);
    ck_assert_uint_eq(sec_errors(), ++errors0);
    ck_assert_uint_eq(sec_model_version("m"), version0);
    ps_req wq = {.model = "m", .ids = ids, .nids = SEC_CHUNKS, .grads = g, .nbytes = sizeof g};
    ck_assert_msg(ps_chan_push(c, &wq, &ver, &eb) == 0, "%s", eb.msg);
    ck_assert_uint_eq(sec_model_version("m"), ++version0);
    ps_chan_close(c);
    ps_auth_release(&keys);
  }
  ck_assert_uint_eq(sec_counter(0), refused0);
  ck_assert_int_eq(sec_submit(PS_ROLE_WORKER, "m", 10, 1, &eb), PS_EPERM);
  ck_assert_msg(strstr(eb.msg, "not allowed for role 'worker'"), "%s", eb.msg);
  ck_assert_int_eq(sec_submit(PS_ROLE_WORKER, "w2", 10, 0, &eb), PS_EPERM);
  ck_assert_uint_eq(sec_model_params("m"), SEC_ELEMS);
  ck_assert_uint_eq(sec_model_params("w2"), 0);
  ps_rpc *r = sec_rpc(&sec_cfg, PS_ROLE_WORKER);
  Ps__ExportRequest ex = PS__EXPORT_REQUEST__INIT;
  ex.model = "m";
  Ps__ExportReply *exr;
  ck_assert_int_eq(ps_rpc_call(r, "/ps.Ps/Export", &ex.base, &ps__export_reply__descriptor,
                               (ProtobufCMessage **)&exr, 5000, &eb), 0);
  ck_assert_uint_eq(exr->values.len, SEC_ELEMS * sizeof(float));
  ps__export_reply__free_unpacked(exr, NULL);
  ps_rpc_close(r);
  ck_assert_uint_eq(sec_counter(0), refused0 + 2);
  ck_assert_int_eq(sec_submit(PS_ROLE_OPERATOR, "w2", 10, 0, &eb), 0);
  ck_assert_uint_eq(sec_model_params("w2"), 10);
  /* the shard's side: a refusal is logged (at most every 10 s), naming the
   * caller's address and certificate subject; it said nothing before */
  char log[700];
  snprintf(log, sizeof log, "%s/psd.log", sec_dir);
  char *out = ps_test_read_file(log, NULL);
  const char *line = out ? strstr(out, "grpc: refused ") : NULL;
  ck_assert_msg(line && strstr(line, "from ipv4:127.0.0.1:") && strstr(line, ", subject 'CN=") &&
                    strstr(line, "is not allowed for role '"), "%s", out ? out : "(no log)");
  ck_assert_msg(!strncmp(line, "grpc: refused 1 calls ", 22), "%s", line);
  free(out);
}
END_TEST

/* Each role against each rpc of ps.Ps: a worker is refused the operator's
 * methods (SubmitModel, ExportRows) with PERMISSION_DENIED and the role in
 * the message, counted in auth_refused and errors; the operator may call
 * every one.  The requests are malformed (a field cut short), so a method
 * the role may call fails to parse (INVALID_ARGUMENT) after the role check
 * and changes nothing: the role is checked before the request is read. */
START_TEST(test_sec_role_methods) {
  static const char *const operator_only[] = {"SubmitModel", "ExportRows"};
  static const uint8_t cut[] = {0x0a, 0x05}; /* field 1, 5 bytes long, none sent */
  static const int roles[] = {PS_ROLE_WORKER, PS_ROLE_OPERATOR};
  ck_assert_int_eq(ps_err_to_grpc(PS_EPERM), GRPC_STATUS_PERMISSION_DENIED);
  ck_assert_int_eq(ps_err_to_grpc(PS_EINVAL), GRPC_STATUS_INVALID_ARGUMENT);
  uint64_t refused0 = sec_counter(0), errors0 = sec_errors(), calls = 0, refused = 0;
  for (size_t k = 0; k < sizeof roles / sizeof roles[0]; k++) {
    ps_rpc *r = sec_rpc(&sec_cfg, roles[k]);
    for (unsigned i = 0; i < ps__ps__descriptor.n_methods; i++) {
      const char *name = ps__ps__descriptor.methods[i].name;
      char path[200], want[300];
      snprintf(path, sizeof path, "/%s/%s", ps__ps__descriptor.name, name);
      int op_only = 0;
      for (size_t j = 0; j < sizeof operator_only / sizeof operator_only[0]; j++)
        op_only |= !strcmp(operator_only[j], name);
      int denied = op_only && roles[k] != PS_ROLE_OPERATOR;
      void *rep = NULL;
      size_t rep_len = 0;
      ps_errbuf eb = {""};
      int rc = ps_rpc_call_raw(r, path, cut, sizeof cut, &rep, &rep_len, 5000, &eb);
      free(rep);
      calls++;
      if (denied) {
        refused++;
        snprintf(want, sizeof want, "'%s' is not allowed for role '%s'", path,
                 ps_role_name(roles[k]));
        ck_assert_msg(rc == PS_EPERM && strstr(eb.msg, want), "%s as %s: %d %s", path,
                      ps_role_name(roles[k]), rc, eb.msg);
      } else {
        snprintf(want, sizeof want, "cannot parse the '%s' request", path);
        ck_assert_msg(rc == PS_EINVAL && strstr(eb.msg, want), "%s as %s: %d %s", path,
                      ps_role_name(roles[k]), rc, eb.msg);
      }
      /* the shard's table says the same (test_sec_method_table pins it) */
      int allowed = (psd_grpc_method_roles(path) & (int)PS_ROLE_BIT(roles[k])) != 0;
      ck_assert_msg(allowed == !denied, "%s as %s: the table disagrees", path,
                    ps_role_name(roles[k]));
    }
    ps_rpc_close(r);
  }
  ck_assert_uint_eq(refused, 2);
  ck_assert_uint_eq(sec_counter(0), refused0 + refused);
  ck_assert_uint_eq(sec_errors(), errors0 + calls);
}
END_TEST

/* ---- the channel hello, by hand ------------------------------------------- */

static int raw_connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  return fd;
}

static int raw_connect(void) { return raw_connect_to(sec_cp); }

static void raw_send(int fd, const Ps__ChanMeta *m, uint64_t id) {
  uint8_t buf[4096];
  size_t n = ps__chan_meta__get_packed_size(m);
  ck_assert_uint_le(n, sizeof buf - PS_CHAN_HDR_LEN);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION, .meta_len = (uint32_t)n,
                   .req_id = id};
  ps_chan_hdr_encode(buf, &h);
  ps__chan_meta__pack(m, buf + PS_CHAN_HDR_LEN);
  ck_assert_int_eq(write(fd, buf, PS_CHAN_HDR_LEN + n), (ssize_t)(PS_CHAN_HDR_LEN + n));
}

/* raw_read reads N bytes within 5 s; 0, or -1 at EOF. */
static int raw_read(int fd, uint8_t *p, size_t n) {
  while (n) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    ck_assert_int_eq(poll(&pf, 1, 5000), 1);
    ssize_t r = read(fd, p, n);
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* raw_recv reads one reply frame's meta (NULL at EOF). */
static Ps__ChanMeta *raw_recv(int fd) {
  uint8_t hdr[PS_CHAN_HDR_LEN], meta[4096];
  ps_chan_hdr h;
  if (raw_read(fd, hdr, sizeof hdr) < 0) return NULL;
  ck_assert_int_eq(ps_chan_hdr_decode(&h, hdr, 0), 0);
  ck_assert_uint_le(h.meta_len, sizeof meta);
  ck_assert_int_eq(raw_read(fd, meta, h.meta_len), 0);
  return ps__chan_meta__unpack(NULL, h.meta_len, meta);
}

/* raw_proof sends PROOF in the hello's second frame and returns the op of
 * the shard's answer (its error message, if any, into WHY, 200 bytes). */
static int raw_proof(int fd, const uint8_t proof[PS_AUTH_MAC], char *why) {
  Ps__ChanMeta pm = PS__CHAN_META__INIT;
  pm.op = PS__CHAN_OP__CHAN_HELLO;
  pm.auth.data = (uint8_t *)proof;
  pm.auth.len = PS_AUTH_MAC;
  raw_send(fd, &pm, 2);
  Ps__ChanMeta *ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  int op = ch->op;
  snprintf(why, 200, "%s", ch->message ? ch->message : "");
  ps__chan_meta__free_unpacked(ch, NULL);
  return op;
}

/* raw_hello fills HELLO, the first frame naming KEY, with nonce NC all
 * FILL bytes. */
static void raw_hello(Ps__ChanMeta *hello, const ps_auth_key *key, uint8_t nc[PS_AUTH_NONCE],
                      int fill) {
  memset(nc, fill, PS_AUTH_NONCE);
  ps__chan_meta__init(hello);
  hello->op = PS__CHAN_OP__CHAN_HELLO;
  hello->proto_version = PS_CHAN_VERSION;
  hello->cluster = "test";
  hello->key_id = (char *)key->id;
  hello->nonce.data = nc;
  hello->nonce.len = PS_AUTH_NONCE;
  hello->auth_version = PS_AUTH_HELLO_VERSION;
}

/* A recorded hello and proof, replayed on a new connection, meet a fresh
 * shard nonce and are refused; an unknown key id too. */
START_TEST(test_sec_replayed_hello) {
  sec_ensure_model();
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  ps_errbuf eb;
  uint64_t chan0 = sec_counter(1);
  uint8_t nc[PS_AUTH_NONCE], proof[PS_AUTH_MAC];
  char why[200];
  Ps__ChanMeta hello;
  raw_hello(&hello, key, nc, 7);
  /* The genuine exchange, recorded. */
  int fd = raw_connect();
  raw_send(fd, &hello, 1);
  Ps__ChanMeta *ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  ck_assert_int_eq(ch->op, PS__CHAN_OP__CHAN_HELLO);
  ck_assert_uint_eq(ch->nonce.len, PS_AUTH_NONCE);
  ck_assert(ps_auth_check(key, PS_AUTH_SERVER, "test", nc, ch->nonce.data, NULL, ch->auth.data,
                          ch->auth.len));
  ps_auth_proof(key, PS_AUTH_CLIENT, "test", nc, ch->nonce.data, NULL, proof);
  ps__chan_meta__free_unpacked(ch, NULL);
  ck_assert_int_eq(raw_proof(fd, proof, why), PS__CHAN_OP__CHAN_HELLO); /* accepted */
  close(fd);
  /* The replay: same hello, same proof, new connection. */
  fd = raw_connect();
  raw_send(fd, &hello, 1);
  ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  ck_assert_int_eq(ch->op, PS__CHAN_OP__CHAN_HELLO);
  ps__chan_meta__free_unpacked(ch, NULL);
  ck_assert_int_eq(raw_proof(fd, proof, why), PS__CHAN_OP__CHAN_ERROR);
  ck_assert_msg(strstr(why, "wrong proof"), "%s", why);
  ck_assert_ptr_null(raw_recv(fd)); /* closed after the one error frame */
  close(fd);
  /* An unknown key id. */
  fd = raw_connect();
  hello.key_id = "nobody";
  raw_send(fd, &hello, 1);
  ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  ck_assert_int_eq(ch->op, PS__CHAN_OP__CHAN_ERROR);
  ck_assert_msg(strstr(ch->message, "unknown key id"), "%s", ch->message);
  ps__chan_meta__free_unpacked(ch, NULL);
  ck_assert_ptr_null(raw_recv(fd));
  close(fd);
  /* The genuine client still gets in, and reads what was submitted. */
  float out[SEC_ELEMS];
  ck_assert_msg(sec_pull(key, out, &eb) == 0, "%s", eb.msg);
  ck_assert(out[0] == 1.0f && out[SEC_ELEMS - 1] == 1.0f);
  ps_auth_release(&keys);
  ck_assert_uint_eq(sec_counter(1), chan0 + 2);
}
END_TEST

/* A wrong secret under a known key id: the shard proves its key, the
 * client's proof is wrong, the shard refuses and counts it. */
START_TEST(test_sec_wrong_secret) {
  sec_ensure_model();
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  Ps__StatusReply *st = sec_status();
  uint64_t chan0 = st->chan_auth_refused, pulls0 = st->pulls;
  ps__status_reply__free_unpacked(st, NULL);
  /* The client cannot check the shard's proof without the secret either,
   * so this goes by hand: hello, then a proof made with another secret. */
  ps_auth_key wrong = *key;
  wrong.secret[0] ^= 1;
  uint8_t nc[PS_AUTH_NONCE], proof[PS_AUTH_MAC];
  Ps__ChanMeta hello;
  raw_hello(&hello, key, nc, 9);
  int fd = raw_connect();
  raw_send(fd, &hello, 1);
  Ps__ChanMeta *ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  ck_assert(!ps_auth_check(&wrong, PS_AUTH_SERVER, "test", nc, ch->nonce.data, NULL,
                           ch->auth.data, ch->auth.len));
  ps_auth_proof(&wrong, PS_AUTH_CLIENT, "test", nc, ch->nonce.data, NULL, proof);
  ps__chan_meta__free_unpacked(ch, NULL);
  char why[200];
  ck_assert_int_eq(raw_proof(fd, proof, why), PS__CHAN_OP__CHAN_ERROR);
  ck_assert_ptr_null(raw_recv(fd));
  close(fd);
  ps_auth_release(&keys);
  ck_assert_uint_eq(sec_model_params("m"), SEC_ELEMS);
  st = sec_status();
  ck_assert_uint_eq(st->chan_auth_refused, chan0 + 1);
  ck_assert_uint_eq(st->pulls, pulls0);
  ps__status_reply__free_unpacked(st, NULL);
}
END_TEST

/* With a key and no payload MAC a client on the shard's host still gets
 * its shared-memory region: the shard's accept MAC covers the region's
 * process, descriptor and token, and the client's check of it passes. */
START_TEST(test_sec_hello_shm_granted) {
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  ps_chan_client *c;
  ps_errbuf eb;
  ck_assert_msg(ps_chan_connect_shm(&c, sec_chan, "test", key, PS_CHAN_UNORDERED_ACKS, 1 << 20,
                                    5000, &eb) == 0,
                "%s", eb.msg);
  void *data;
  uint64_t bytes;
  ck_assert_int_eq(ps_chan_shm(c, &data, &bytes), 1);
  ck_assert_uint_ne(ps_chan_features(c), 0);
  ps_chan_close(c);
  ps_auth_release(&keys);
}
END_TEST

/* psctl names the cluster's security as the shard does: `psctl bench
 * --json` said "tls+chan-hmac" where `psctl status --json` (the shard's
 * Status) said "mtls+chan-hmac" for the same mutual-TLS cluster. */
START_TEST(test_sec_bench_names_mode) {
  ck_assert_msg(sec_up_ok, "psd is not running");
  char log[700];
  snprintf(log, sizeof log, "%s/bench.log", ps_test_tmpdir());
  char *argv[] = {(char *)ps_test_bin("psctl"), "bench", "--config", sec_yaml, "--json",
                  "--model-mib", "1", "--rounds", "1", "--small-secs", "0", "--skip-grpc", NULL};
  int rc = ps_test_run(argv, log, 60000);
  char *out = ps_test_read_file(log, NULL);
  ck_assert_msg(rc == 0 && strstr(out, "\"security\":\"mtls+chan-hmac\""), "exit %d: %s", rc,
                out);
  free(out);
}
END_TEST

/* A stock gRPC client (Debian python3-grpcio) calls Health/Check over TLS
 * with the right certificate, and cannot without one or in plaintext. */
START_TEST(test_sec_python_health) {
  ck_assert_msg(sec_up_ok, "psd is not running");
  if (system("/usr/bin/python3 -c 'import grpc' 2>/dev/null") != 0)
    PS_SKIP("python3-grpcio is not installed (make deps installs it)");
  const ps_tls_conf *t = &sec_cfg.security.tls;
  char log[700];
  snprintf(log, sizeof log, "%s/health.log", sec_dir);
  char *ok[] = {"/usr/bin/python3", "tests/integration/health_check.py", sec_grpc, "--ca", t->ca,
                "--cert", t->worker_cert, "--key", t->worker_key, NULL};
  char *nocert[] = {"/usr/bin/python3", "tests/integration/health_check.py", sec_grpc, "--ca",
                    t->ca, NULL};
  char *plain[] = {"/usr/bin/python3", "tests/integration/health_check.py", sec_grpc, NULL};
  /* a certificate another CA signed (psw and psctl refuse it before they
   * connect: test_sec_wrong_certificate); the shard refuses it too */
  char cert[700], key[700];
  snprintf(cert, sizeof cert, "%s/other/operator.pem", sec_dir);
  snprintf(key, sizeof key, "%s/other/operator.key", sec_dir);
  char *foreign[] = {"/usr/bin/python3", "tests/integration/health_check.py", sec_grpc, "--ca",
                     t->ca, "--cert", cert, "--key", key, NULL};
  ck_assert_int_eq(ps_test_run(ok, log, 20000), 0);
  ck_assert_int_eq(ps_test_run(nocert, log, 20000), 1);
  ck_assert_int_eq(ps_test_run(plain, log, 20000), 1);
  ck_assert_int_eq(ps_test_run(foreign, log, 20000), 1);
  char *out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "status 1\n"), "%s", out);
  free(out);
}
END_TEST

/* Secret and key files others may read are refused, with their path. */
START_TEST(test_sec_file_modes) {
  const char *dir = ps_test_tmpdir();
  char path[700];
  snprintf(path, sizeof path, "%s/s.secret", dir);
  ps_test_write_file(path, "k1 worker 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
  ps_auth_keys k;
  ps_errbuf eb;
  ck_assert_int_eq(chmod(path, 0644), 0);
  ck_assert_int_eq(ps_auth_load(&k, path, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, path) && strstr(eb.msg, "mode 644"), "%s", eb.msg);
  ck_assert_msg(strstr(eb.msg, "readable by its group and others (mode 644)"), "%s", eb.msg);
  /* the message names who may read it: mode 640 used to say "by others" */
  ck_assert_int_eq(chmod(path, 0640), 0);
  ck_assert_int_eq(ps_auth_load(&k, path, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "readable by its group (mode 640)"), "%s", eb.msg);
  ck_assert_int_eq(chmod(path, 0602), 0);
  ck_assert_int_eq(ps_auth_load(&k, path, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "writable by others (mode 602)"), "%s", eb.msg);
  ck_assert_int_eq(chmod(path, 0670), 0);
  ck_assert_int_eq(ps_auth_load(&k, path, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "readable, writable and executable by its group (mode 670)"), "%s",
                eb.msg);
  ck_assert_int_eq(chmod(path, 0600), 0);
  ck_assert_msg(ps_auth_load(&k, path, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(k.n, 1);
  ck_assert_int_eq(k.keys[0].role, PS_ROLE_WORKER);
  ps_auth_release(&k);
  static const struct { const char *text, *msg; } bad[] = {
      {"k1 worker 0011\n", ":1: the secret must be 32..128 bytes"},
      {"k1 boss 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
       ":1: unknown role"},
      {"# c\n\nk1 worker 00112233445566778899aabbccddeeff00112233445566778899aabbccddeezz\n",
       ":3: the secret is not hex"},
      {"k1 worker 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
       "k1 operator 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
       ":2: duplicate key id"},
      {"# only a comment\n", ": no key in the secret file"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ps_test_write_file(path, bad[i].text);
    ck_assert_int_eq(chmod(path, 0600), 0);
    ck_assert_int_eq(ps_auth_load(&k, path, &eb), PS_ECONFIG);
    ck_assert_msg(strstr(eb.msg, bad[i].msg), "case %zu: %s", i, eb.msg);
    ck_assert_msg(!strstr(eb.msg, "00112233"), "a secret in a message: %s", eb.msg);
  }
  /* psd -t refuses a world-readable private key, naming it. */
  ck_assert_msg(sec_up_ok, "psd is not running");
  ck_assert_int_eq(chmod(sec_cfg.security.tls.key, 0644), 0);
  char log[700];
  snprintf(log, sizeof log, "%s/t.log", dir);
  char *argv[] = {(char *)ps_test_bin("psd"), "-t", "--config", sec_yaml, NULL};
  int rc = ps_test_run(argv, log, 20000);
  ck_assert_int_eq(chmod(sec_cfg.security.tls.key, 0600), 0);
  ck_assert_int_eq(rc, 2);
  char *out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, sec_cfg.security.tls.key) && strstr(out, "readable"), "%s", out);
  free(out);
  ck_assert_int_eq(ps_test_run(argv, log, 20000), 0);
  /* psw exits 2 (a configuration error, as psctl does), naming the file */
  ck_assert_int_eq(chmod(sec_cfg.security.secret_file, 0644), 0);
  char *wargv[] = {(char *)ps_test_bin("psw"), "--config", sec_yaml, "--model", "mlp", "--rank", "0", NULL};
  snprintf(log, sizeof log, "%s/psw.log", dir);
  rc = ps_test_run(wargv, log, 20000);
  ck_assert_int_eq(chmod(sec_cfg.security.secret_file, 0600), 0);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(rc == 2 && strstr(out, sec_cfg.security.secret_file) && strstr(out, "readable"),
                "exit %d: %s", rc, out);
  free(out);
}
END_TEST

/* sec_expired_pair writes a self-signed certificate that expired
 * yesterday and its key to CERT and KEY. */
static void sec_expired_pair(const char *cert, const char *key) {
  EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  X509 *x = X509_new();
  ck_assert(pk && x);
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), -2 * 86400);
  X509_gmtime_adj(X509_getm_notAfter(x), -86400);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"old", -1, -1, 0);
  X509_set_issuer_name(x, n);
  X509_set_pubkey(x, pk);
  ck_assert(X509_sign(x, pk, EVP_sha256()) > 0);
  FILE *f = fopen(cert, "w");
  ck_assert(f && PEM_write_X509(f, x));
  fclose(f);
  f = fopen(key, "w");
  ck_assert(f && PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL));
  fclose(f);
  ck_assert_int_eq(chmod(key, 0600), 0);
  X509_free(x);
  EVP_PKEY_free(pk);
}

/* A certificate and key that do not go together, an expired certificate,
 * one another CA signed: refused before gRPC gets them (whose own
 * errors name neither file nor reason), by psd -t and by clients. */
START_TEST(test_sec_pair_checked) {
  ck_assert_msg(sec_up_ok, "psd is not running");
  const ps_tls_conf *t = &sec_cfg.security.tls;
  ps_errbuf eb;
  ck_assert_msg(ps_tls_check(t->ca, t->cert, t->key, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(ps_tls_check(t->ca, t->worker_cert, t->worker_key, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_tls_check(t->ca, t->cert, t->worker_key, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "is not the private key of certificate") &&
                    strstr(eb.msg, t->worker_key),
                "%s", eb.msg);
  char cert[700], key[700], other[700];
  snprintf(cert, sizeof cert, "%s/old.pem", sec_dir);
  snprintf(key, sizeof key, "%s/old.key", sec_dir);
  sec_expired_pair(cert, key);
  ck_assert_int_eq(ps_tls_check(cert, cert, key, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "old.pem' expired on"), "%s", eb.msg);
  /* a key under a passphrase: refused, never asked for */
  char enc[700];
  snprintf(enc, sizeof enc, "%s/enc.key", sec_dir);
  EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  FILE *kf = fopen(enc, "w");
  ck_assert(pk && kf);
  ck_assert(PEM_write_PrivateKey(kf, pk, EVP_aes_128_cbc(), (unsigned char *)"pw", 2, NULL,
                                 NULL));
  fclose(kf);
  EVP_PKEY_free(pk);
  ck_assert_int_eq(chmod(enc, 0600), 0);
  ck_assert_int_eq(ps_tls_check(t->ca, t->worker_cert, enc, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "protected by a passphrase"), "%s", eb.msg);
  snprintf(other, sizeof other, "%s/other/ca.pem", sec_dir);
  ck_assert_int_eq(ps_tls_check(other, t->cert, t->key, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "does not chain to the CA in"), "%s", eb.msg);
  /* the shard's own certificate as tls.ca: it chained to itself, and no
   * client's did */
  ck_assert_int_eq(ps_tls_check(t->cert, t->cert, t->key, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "holds no CA certificate"), "%s", eb.msg);
  /* psd -t: the shard's key swapped for the worker's */
  char path[700], log[700];
  snprintf(path, sizeof path, "%s/swapped.yaml", sec_dir);
  snprintf(log, sizeof log, "%s/swapped.log", sec_dir);
  ps_test_file_replace(sec_yaml, path, "shard.key", "worker.key");
  char *argv[] = {(char *)ps_test_bin("psd"), "-t", "--config", path, NULL};
  ck_assert_int_eq(ps_test_run(argv, log, 20000), 2);
  char *out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "worker.key' is not the private key of certificate"), "%s", out);
  free(out);
  /* a shard host the certificate does not name (gRPC clients would refuse
   * the handshake): psd -t warns, naming it; the file as made, no warning */
  char *ok[] = {(char *)ps_test_bin("psd"), "-t", "--config", sec_yaml, NULL};
  snprintf(log, sizeof log, "%s/names-ok.log", sec_dir);
  ck_assert_int_eq(ps_test_run(ok, log, 20000), 0);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(!strstr(out, "warning"), "%s", out);
  free(out);
  ps_test_file_replace(sec_yaml, path, "grpc: 127.0.0.1:", "grpc: localhost:");
  snprintf(log, sizeof log, "%s/names.log", sec_dir);
  ck_assert_int_eq(ps_test_run(argv, log, 20000), 0);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "warning: security.tls.cert: certificate") &&
                    strstr(out, "does not name localhost"),
                "%s", out);
  free(out);
  const char *addrs[] = {"127.0.0.1:1", "0.0.0.0:2", "localhost:3", "[::1]:4"};
  ck_assert_int_eq(ps_tls_check_hosts(t->cert, addrs, 2, &eb), 0);
  ck_assert_int_eq(ps_tls_check_hosts(t->cert, addrs, 4, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "does not name localhost, ::1 ("), "%s", eb.msg);
  /* a wildcard however written is dialed by no client: no SAN to check
   * ([0:0::0] was checked as an IP SAN, compared as text with "::") */
  const char *wild[] = {"127.0.0.1:1", "[0:0::0]:2", "[::ffff:0.0.0.0]:3", "[::]:4"};
  ck_assert_msg(ps_tls_check_hosts(t->cert, wild, 4, &eb) == 0, "%s", eb.msg);
}
END_TEST

/* sec_t runs psd -t on the file at PATH (AGG: --aggregator AGG; SHARD:
 * --shard 0) with its output in LOG; the exit status, *OUT the output. */
static int sec_t(const char *path, const char *agg, int shard, const char *log, char **out) {
  char *argv[8] = {(char *)ps_test_bin("psd"), "-t", "--config", (char *)path};
  int n = 4;
  if (agg) argv[n++] = "--aggregator", argv[n++] = (char *)agg;
  if (shard) argv[n++] = "--shard", argv[n++] = "0";
  argv[n] = NULL;
  int rc = ps_test_run(argv, log, 20000);
  *out = ps_test_read_file(log, NULL);
  return rc;
}

/* An aggregator checks its own needs before it starts (README "Security":
 * each program checks its own pair): the worker pair it presents to the
 * roots for their models, and an aggregator key in the secret file.
 * `psd -t --aggregator a1` and `psd --aggregator a1` exit 2 naming the
 * file (they used to start, and every worker behind the aggregator exited
 * 1 with "no root shard answered"); plain `psd -t` checks what the file's
 * aggregators need too; `psd -t --shard 0` only the shard's. */
START_TEST(test_sec_aggregator_checked) {
  ck_assert_msg(sec_up_ok, "psd is not running");
  const ps_tls_conf *t = &sec_cfg.security.tls;
  char path[700], log[700], base[700], cert[700], key[700], secret[700];
  snprintf(base, sizeof base, "%s/agg-base.yaml", sec_dir);
  snprintf(path, sizeof path, "%s/agg.yaml", sec_dir);
  snprintf(log, sizeof log, "%s/agg-t.log", sec_dir);
  char *text = ps_test_read_file(sec_yaml, NULL);
  size_t len = strlen(text) + 256;
  char *yaml = malloc(len);
  snprintf(yaml, len, "%saggregators:\n  - {name: a1, grpc: '127.0.0.1:1', channel: "
           "'127.0.0.1:2', workers: 1}\n", text);
  ps_test_write_file(base, yaml);
  free(yaml);
  free(text);
  char *out;
  ck_assert_msg(sec_t(base, "a1", 0, log, &out) == 0, "%s", out);
  free(out);
  ck_assert_msg(sec_t(base, NULL, 0, log, &out) == 0, "%s", out);
  free(out);
  /* the worker key readable by the group (its mode put back before any
   * check can fail: the suite's other tests use it) */
  ck_assert_int_eq(chmod(t->worker_key, 0640), 0);
  char *o_agg, *o_all, *o_shard, *o_run;
  int rc = sec_t(base, "a1", 0, log, &o_agg);
  int rc_all = sec_t(base, NULL, 0, log, &o_all);
  int rc_shard = sec_t(base, NULL, 1, log, &o_shard);
  char *run[] = {(char *)ps_test_bin("psd"), "--config", base, "--aggregator", "a1", NULL};
  snprintf(log, sizeof log, "%s/agg-run.log", sec_dir);
  int rc_run = ps_test_run(run, log, 20000);
  o_run = ps_test_read_file(log, NULL);
  ck_assert_int_eq(chmod(t->worker_key, 0600), 0);
  ck_assert_msg(rc == 2 && strstr(o_agg, t->worker_key) && strstr(o_agg, "mode 640") &&
                strstr(o_agg, "worker pair") && strstr(o_agg, "security.tls.worker_key '"),
                "exit %d: %s", rc, o_agg);
  /* plain -t: a warning (a shard's host may not hold the worker pair) */
  ck_assert_msg(rc_all == 0 && strstr(o_all, t->worker_key) && strstr(o_all, "warning"),
                "plain -t: exit %d: %s", rc_all, o_all);
  ck_assert_msg(rc_shard == 0, "-t --shard 0 needs no worker pair: exit %d: %s", rc_shard,
                o_shard);
  ck_assert_msg(rc_run == 2 && strstr(o_run, t->worker_key), "psd --aggregator: exit %d: %s",
                rc_run, o_run);
  free(o_agg);
  free(o_all);
  free(o_shard);
  free(o_run);
  snprintf(log, sizeof log, "%s/agg-t.log", sec_dir);
  /* no worker pair while the roots require a client certificate */
  ps_test_file_replace(base, path, "    worker_cert:", "    #worker_cert:");
  ps_test_file_replace(path, path, "    worker_key:", "    #worker_key:");
  rc = sec_t(path, "a1", 0, log, &out);
  ck_assert_msg(rc == 2 && strstr(out, "worker_cert is not set"), "exit %d: %s", rc, out);
  free(out);
  /* an expired worker certificate */
  snprintf(cert, sizeof cert, "%s/wold.pem", sec_dir);
  snprintf(key, sizeof key, "%s/wold.key", sec_dir);
  sec_expired_pair(cert, key);
  ps_test_file_replace(base, path, t->worker_cert, cert);
  ps_test_file_replace(path, path, t->worker_key, key);
  rc = sec_t(path, "a1", 0, log, &out);
  ck_assert_msg(rc == 2 && strstr(out, "wold.pem' expired on"), "exit %d: %s", rc, out);
  free(out);
  /* a secret file without an aggregator key: the aggregator refuses it,
   * plain psd -t on a file that names one warns; the shard alone needs none */
  snprintf(secret, sizeof secret, "%s/noagg.secret", sec_dir);
  ps_test_write_file(secret, "w1 worker "
                     "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
  ck_assert_int_eq(chmod(secret, 0600), 0);
  ps_test_file_replace(base, path, sec_cfg.security.secret_file, secret);
  rc = sec_t(path, "a1", 0, log, &out);
  ck_assert_msg(rc == 2 && strstr(out, "has no key of role 'aggregator'"), "exit %d: %s", rc,
                out);
  free(out);
  rc = sec_t(path, NULL, 0, log, &out);
  ck_assert_msg(rc == 0 && strstr(out, "has no key of role 'aggregator'"), "plain -t: exit %d: "
                "%s", rc, out);
  free(out);
  rc = sec_t(path, NULL, 1, log, &out);
  ck_assert_msg(rc == 0, "-t --shard 0: exit %d: %s", rc, out);
  free(out);
}
END_TEST

/* sec_name_role: the role of a subject made of the "TYPE=VALUE" entries
 * in ENTRIES (NULL-terminated), each an attribute of its own. */
static int sec_name_role(const char *const *entries) {
  X509_NAME *n = X509_NAME_new();
  ck_assert(n);
  for (; *entries; entries++) {
    const char *eq = strchr(*entries, '=');
    char type[16];
    ck_assert(eq && (size_t)(eq - *entries) < sizeof type);
    memcpy(type, *entries, (size_t)(eq - *entries));
    type[eq - *entries] = '\0';
    ck_assert(X509_NAME_add_entry_by_txt(n, type, MBSTRING_UTF8, (const unsigned char *)eq + 1,
                                         -1, -1, 0));
  }
  int role = ps_role_from_name(n);
  X509_NAME_free(n);
  return role;
}

/* Roles from the OU attributes of certificate subjects: a CN that prints
 * like an OU ("x,OU=operator", "x/OU=operator") names no role. */
START_TEST(test_sec_role_subject) {
#define R(...) sec_name_role((const char *const[]){__VA_ARGS__, NULL})
  ck_assert_int_eq(R("CN=t-worker", "OU=worker", "O=psd"), PS_ROLE_WORKER);
  ck_assert_int_eq(R("O=psd", "OU=operator", "CN=x"), PS_ROLE_OPERATOR);
  ck_assert_int_eq(R("O=psd", "OU=aggregator", "CN=x"), PS_ROLE_AGGREGATOR);
  ck_assert_int_eq(R("CN=OU=operator"), PS_ROLE_NONE);
  ck_assert_int_eq(R("CN=x,OU=operator", "OU=shard"), PS_ROLE_NONE);
  ck_assert_int_eq(R("CN=x/OU=operator", "O=psd"), PS_ROLE_NONE);
  ck_assert_int_eq(R("O=psd,OU=operator", "OU=worker"), PS_ROLE_WORKER);
  ck_assert_int_eq(R("CN=x", "OU=shard"), PS_ROLE_NONE);
  /* two roles: none (the one that won depended on the subject's order) */
  ck_assert_int_eq(R("CN=x", "OU=operator", "OU=worker", "O=psd"), PS_ROLE_NONE);
  ck_assert_int_eq(R("CN=x", "OU=worker", "OU=worker"), PS_ROLE_WORKER);
  ck_assert_int_eq(R("CN=x", "OU=team-a", "OU=worker"), PS_ROLE_WORKER);
  ck_assert_int_eq(R("OU=workers"), PS_ROLE_NONE);
  ck_assert_int_eq(R("OU=worker\\"), PS_ROLE_NONE);
  X509_NAME *bmp = X509_NAME_new(); /* an OU written as a BMPString (UTF-16) */
  ck_assert(bmp && X509_NAME_add_entry_by_NID(bmp, NID_organizationalUnitName, V_ASN1_BMPSTRING,
                                              (const unsigned char *)"\0o\0p\0e\0r\0a\0t\0o\0r",
                                              16, -1, 0));
  ck_assert_int_eq(ASN1_STRING_type(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(bmp, 0))),
                   V_ASN1_BMPSTRING);
  ck_assert_int_eq(ps_role_from_name(bmp), PS_ROLE_OPERATOR);
  X509_NAME_free(bmp);
#undef R
  ck_assert_int_eq(ps_role_from_name(NULL), PS_ROLE_NONE);
  ck_assert_int_eq(ps_role_from_cert_pem("not a certificate", 17), PS_ROLE_NONE);
}
END_TEST

/* sec_cert_pem returns a self-signed certificate with subject "CN=CN,
 * OU=OU" as PEM (free it); *LEN: its length. */
static char *sec_cert_pem(const char *cn, const char *ou, size_t *len) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  ck_assert(k && x);
  X509_NAME *n = X509_get_subject_name(x);
  ck_assert(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                       -1, 0) &&
            X509_NAME_add_entry_by_txt(n, "OU", MBSTRING_UTF8, (const unsigned char *)ou, -1,
                                       -1, 0));
  ck_assert(X509_set_issuer_name(x, n) && X509_set_pubkey(x, k));
  ck_assert(X509_gmtime_adj(X509_getm_notBefore(x), 0) &&
            X509_gmtime_adj(X509_getm_notAfter(x), 3600) && X509_sign(x, k, EVP_sha256()));
  BIO *b = BIO_new(BIO_s_mem());
  ck_assert(b && PEM_write_bio_X509(b, x));
  char *data;
  long n_ = BIO_get_mem_data(b, &data);
  ck_assert(n_ > 0);
  char *pem = malloc((size_t)n_);
  ck_assert(pem);
  memcpy(pem, data, (size_t)n_);
  *len = (size_t)n_;
  BIO_free(b);
  X509_free(x);
  EVP_PKEY_free(k);
  return pem;
}

/* psd_grpc's role cache: the same PEM bytes are parsed once; a rotated
 * certificate (other bytes, another role) is parsed anew, never given the
 * old one's role; more certificates than it holds still get their roles. */
START_TEST(test_sec_role_cache) {
  size_t wl, ol;
  char *w = sec_cert_pem("t-worker", "worker", &wl), *o = sec_cert_pem("t-worker", "operator", &ol);
  ps_role_cache c = {0};
  ck_assert_int_eq(ps_role_cache_get(&c, w, wl), PS_ROLE_WORKER);
  ck_assert_int_eq(ps_role_cache_get(&c, w, wl), PS_ROLE_WORKER);
  ck_assert_uint_eq(c.parsed, 1);
  ck_assert_int_eq(ps_role_cache_get(&c, o, ol), PS_ROLE_OPERATOR);
  ck_assert_uint_eq(c.parsed, 2);
  ck_assert_int_eq(ps_role_cache_get(&c, w, wl), PS_ROLE_WORKER);
  ck_assert_uint_eq(c.parsed, 2);
  /* a copy of the bytes (another buffer) hits; one byte changed misses */
  char *w2 = malloc(wl);
  ck_assert(w2);
  memcpy(w2, w, wl);
  ck_assert_int_eq(ps_role_cache_get(&c, w2, wl), PS_ROLE_WORKER);
  ck_assert_uint_eq(c.parsed, 2);
  w2[wl / 2] ^= 1;
  ps_role_cache_get(&c, w2, wl);
  ck_assert_uint_eq(c.parsed, 3);
  ck_assert_int_eq(ps_role_cache_get(&c, "junk", 4), PS_ROLE_NONE);
  for (int i = 0; i < 2 * PS_ROLE_CACHE_N; i++) { /* evictions: still right */
    size_t l;
    char *p = sec_cert_pem("x", i % 2 ? "aggregator" : "worker", &l);
    ck_assert_int_eq(ps_role_cache_get(&c, p, l), i % 2 ? PS_ROLE_AGGREGATOR : PS_ROLE_WORKER);
    free(p);
  }
  ck_assert_int_eq(ps_role_cache_get(&c, o, ol), PS_ROLE_OPERATOR);
  ps_role_cache_free(&c);
  free(w);
  free(w2);
  free(o);
}
END_TEST

/* The hello's proofs and session key cover the whole cluster name: two
 * names alike in their first 63 characters (or more) accept none of each
 * other's proofs. */
START_TEST(test_sec_proof_cluster_whole) {
  ps_auth_key k = {.id = "w1", .role = PS_ROLE_WORKER, .len = PS_AUTH_SECRET_MIN};
  memset(k.secret, 7, k.len);
  uint8_t nc[PS_AUTH_NONCE] = {1}, ns[PS_AUTH_NONCE] = {2}, proof[PS_AUTH_MAC];
  char a[200], b[200];
  memset(a, 'c', 150);
  a[150] = '\0';
  static const int at[] = {63, 64, 149};
  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
    memcpy(b, a, sizeof a);
    b[at[i]] = 'd';
    for (int side = PS_AUTH_CLIENT; side <= PS_AUTH_ACCEPT; side++) {
      ps_auth_proof(&k, side, a, nc, ns, NULL, proof);
      ck_assert(ps_auth_check(&k, side, a, nc, ns, NULL, proof, sizeof proof));
      ck_assert_msg(!ps_auth_check(&k, side, b, nc, ns, NULL, proof, sizeof proof),
                    "side %d: names that differ at byte %d share a proof", side, at[i]);
    }
  }
  b[149] = '\0'; /* a prefix of the other */
  ps_auth_proof(&k, PS_AUTH_CLIENT, a, nc, ns, NULL, proof);
  ck_assert(!ps_auth_check(&k, PS_AUTH_CLIENT, b, nc, ns, NULL, proof, sizeof proof));
}
END_TEST

/* Rotation: a key added to the shard's secret file is accepted after a
 * SIGHUP, beside the old one; an unreadable file leaves the keys as they
 * were. */
START_TEST(test_sec_key_rotation) {
  sec_ensure_model();
  const char *path = sec_cfg.security.secret_file;
  size_t len;
  char *old = ps_test_read_file(path, &len);
  static const char rot_hex[] =
      "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
  ps_auth_key rot;
  memset(&rot, 0, sizeof rot);
  snprintf(rot.id, sizeof rot.id, "rot-2");
  rot.role = PS_ROLE_WORKER;
  rot.len = 32;
  for (int i = 0; i < 32; i++) rot.secret[i] = (uint8_t)(0xa0 + i);
  float out[SEC_ELEMS];
  ps_errbuf eb;
  ck_assert_int_eq(sec_pull(&rot, out, &eb), PS_EPERM); /* not yet known */
  /* The new key first: clients of the old file still prove worker-1 (the last). */
  char *text = malloc(len + 200);
  snprintf(text, len + 200, "rot-2 worker %s\n%s", rot_hex, old);
  ps_test_write_file(path, text);
  ck_assert_int_eq(chmod(path, 0600), 0);
  ck_assert_int_eq(kill(sec_pid, SIGHUP), 0);
  int64_t end = ps_test_now_ms() + 10000;
  int rc;
  while ((rc = sec_pull(&rot, out, &eb)) != 0 && ps_test_now_ms() < end) usleep(50000);
  ck_assert_msg(rc == 0, "the new key after SIGHUP: %s", eb.msg);
  ps_auth_keys keys;
  const ps_auth_key *key;
  ck_assert_int_eq(ps_auth_client_key(path, PS_ROLE_WORKER, &keys, &key, &eb), 0);
  ck_assert_str_eq(key->id, "worker-1");
  ck_assert_msg(sec_pull(key, out, &eb) == 0, "the old key: %s", eb.msg);
  /* A file others may read is not reloaded: both keys stay. */
  ck_assert_int_eq(chmod(path, 0644), 0);
  ck_assert_int_eq(kill(sec_pid, SIGHUP), 0);
  usleep(300000);
  ck_assert_msg(sec_pull(&rot, out, &eb) == 0, "%s", eb.msg);
  /* Back to the old file: the rotated key is gone again. */
  ps_test_write_file(path, old);
  ck_assert_int_eq(chmod(path, 0600), 0);
  ck_assert_int_eq(kill(sec_pid, SIGHUP), 0);
  end = ps_test_now_ms() + 10000;
  while ((rc = sec_pull(&rot, out, &eb)) == 0 && ps_test_now_ms() < end) usleep(50000);
  ck_assert_int_eq(rc, PS_EPERM);
  ck_assert_msg(sec_pull(key, out, &eb) == 0, "the old key: %s", eb.msg);
  ps_auth_release(&keys);
  free(text);
  free(old);
}
END_TEST

/* ---- the payload MAC ------------------------------------------------------ */

static pid_t mac_pid;
static int mac_cp, mac_up_ok;
static char mac_chan[64], mac_grpc[64];

/* Starts a second shard whose channel MACs every frame (unchecked
 * fixture; after sec_up, whose certificates and secret it shares). */
static void mac_up(void) {
  sec_up();
  if (!sec_up_ok) return;
  char path[700], log[700];
  snprintf(path, sizeof path, "%s/tls.yaml", sec_dir);
  static char sec[4200];
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(sec, 1, 4000, f) : 0;
  if (f) fclose(f);
  sec[n] = '\0';
  strcat(sec, "  payload_mac: true\n");
  const char *saved = ps_test_security_yaml;
  ps_test_security_yaml = sec;
  char dir[600];
  snprintf(dir, sizeof dir, "%s/mac", sec_dir);
  mkdir(dir, 0700);
  int gp;
  const char *yaml = ps_test_cluster_yaml(dir, 1, NULL, &gp, &mac_cp);
  ps_test_security_yaml = saved;
  snprintf(mac_chan, sizeof mac_chan, "127.0.0.1:%d", mac_cp);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  mac_pid = ps_test_psd(yaml, 0, log, NULL);
  mac_up_ok = ps_test_wait_port(mac_cp, 15000) == 0 && ps_test_wait_port(gp, 5000) == 0;
  if (!mac_up_ok) {
    fprintf(stderr, "security: the payload-MAC psd did not start; see %s\n", log);
    return;
  }
  /* Its model, submitted as the operator. */
  ps_config cfg;
  ps_errbuf eb;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", gp);
  snprintf(mac_grpc, sizeof mac_grpc, "%s", addr);
  if (ps_config_load(&cfg, yaml, &eb) < 0) return;
  ps_rpc *r;
  if (ps_rpc_open_cfg(&r, addr, &cfg, PS_ROLE_OPERATOR, &eb) == 0) {
    Ps__ModelSpec spec;
    Ps__TensorSpec t, *tp[1];
    Ps__OptimizerSpec opt;
    uint32_t shape;
    sec_spec(&spec, &t, tp, &opt, &shape, "m", SEC_ELEMS);
    Ps__SubmitModelRequest req = PS__SUBMIT_MODEL_REQUEST__INIT;
    req.model = &spec;
    ProtobufCMessage *rep = NULL;
    mac_up_ok = ps_rpc_call(r, "/ps.Ps/SubmitModel", &req.base,
                            &ps__submit_model_reply__descriptor, &rep, 10000, &eb) == 0;
    if (rep) protobuf_c_message_free_unpacked(rep, NULL);
    ps_rpc_close(r);
  }
  ps_config_release(&cfg);
}

static void mac_down(void) {
  if (mac_pid > 0) ps_test_stop(mac_pid, SIGTERM, 10000);
  mac_pid = 0;
  sec_down();
}

/* With the payload MAC, pushes and pulls work through the client, and a
 * client that wants it refuses a shard that does not MAC frames. */
START_TEST(test_sec_mac_round_trip) {
  ck_assert_msg(mac_up_ok, "the payload-MAC psd is not running");
  static const uint32_t ids[SEC_CHUNKS] = {0, 1, 2, 3};
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  ps_errbuf eb;
  ps_chan_client *c;
  ck_assert_msg(ps_chan_connect_auth(&c, mac_chan, "test", key, PS_CHAN_AUTH_MAC, 5000, &eb) == 0,
                "%s", eb.msg);
  float g[SEC_ELEMS], out[SEC_ELEMS];
  for (int i = 0; i < SEC_ELEMS; i++) g[i] = 0.25f;
  uint64_t v;
  for (int k = 0; k < 3; k++) { /* frame counts advance on both sides */
    ck_assert_msg(ps_test_push(c, "m", ids, SEC_CHUNKS, g, SEC_ELEMS, 0, 0, 0, &v, &eb) == 0,
                  "push: %s", eb.msg);
    ck_assert_msg(ps_test_pull(c, "m", ids, SEC_CHUNKS, out, SEC_ELEMS, 0, 0, &v, &eb) == 0,
                  "pull: %s", eb.msg);
  }
  ck_assert_float_eq(out[0], 1.0f - 3 * 0.25f); /* sgd, lr 1, from ones */
  ck_assert_float_eq(out[SEC_ELEMS - 1], 1.0f - 3 * 0.25f);
  /* An error reply carries its MAC too; the connection stays usable. */
  ck_assert_int_eq(ps_test_pull(c, "nope", ids, 1, out, 256, 0, 0, &v, &eb), PS_ENOENT);
  ck_assert_int_eq(ps_test_pull(c, "m", ids, SEC_CHUNKS, out, SEC_ELEMS, 0, 0, &v, &eb), 0);
  ps_chan_close(c);
  /* Downgrade: the plain shard does not MAC; a client that wants it refuses. */
  ck_assert_int_eq(ps_chan_connect_auth(&c, sec_chan, "test", key, PS_CHAN_AUTH_MAC, 5000, &eb),
                   PS_EPERM);
  ck_assert_msg(strstr(eb.msg, "does not MAC frames"), "%s", eb.msg);
  ps_auth_release(&keys);
}
END_TEST

/* raw_hello_mac does the MAC shard's hello by hand and returns the socket
 * with *M the frame MAC state (the caller frees it). */
static int raw_hello_mac(const ps_auth_key *key, ps_auth_mac **m) {
  uint8_t nc[PS_AUTH_NONCE], proof[PS_AUTH_MAC], ns[PS_AUTH_NONCE];
  Ps__ChanMeta hello;
  raw_hello(&hello, key, nc, 5);
  int fd = raw_connect_to(mac_cp);
  raw_send(fd, &hello, 1);
  Ps__ChanMeta *ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  ck_assert_uint_eq(ch->payload_mac, 1);
  memcpy(ns, ch->nonce.data, sizeof ns);
  ps_auth_hello h = {.mac = 1};
  ck_assert(ps_auth_check(key, PS_AUTH_SERVER, "test", nc, ns, &h, ch->auth.data, ch->auth.len));
  ps__chan_meta__free_unpacked(ch, NULL);
  ps_auth_proof(key, PS_AUTH_CLIENT, "test", nc, ns, &h, proof);
  char why[200];
  ck_assert_int_eq(raw_proof(fd, proof, why), PS__CHAN_OP__CHAN_HELLO);
  ck_assert_int_eq(ps_auth_mac_new(m, key, "test", nc, ns), 0);
  return fd;
}

/* mac_push_frame writes into OUT (room for PS_CHAN_HDR_LEN + 256 +
 * sizeof(float) * SEC_ELEMS + PS_AUTH_MAC bytes) a push of G (SEC_ELEMS
 * floats) to model "m"'s chunks as request ID, with its MAC as M's next
 * client frame; returns its length. */
static size_t mac_push_frame(ps_auth_mac *m, const float *g, uint64_t id, uint8_t *out) {
  static const uint32_t ids[SEC_CHUNKS] = {0, 1, 2, 3};
  Ps__ChanMeta pm = PS__CHAN_META__INIT;
  pm.op = PS__CHAN_OP__CHAN_PUSH;
  pm.model = "m";
  pm.chunk_ids = (uint32_t *)ids;
  pm.n_chunk_ids = SEC_CHUNKS;
  size_t mlen = ps__chan_meta__get_packed_size(&pm), glen = sizeof(float) * SEC_ELEMS;
  ck_assert_uint_le(mlen, 256);
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION, .flags = PS_CHAN_FLAG_MAC,
                   .meta_len = (uint32_t)mlen, .data_len = glen, .req_id = id};
  ps_chan_hdr_encode(out, &h);
  ps__chan_meta__pack(&pm, out + PS_CHAN_HDR_LEN);
  memcpy(out + PS_CHAN_HDR_LEN + mlen, g, glen);
  size_t n = PS_CHAN_HDR_LEN + mlen + glen;
  ps_auth_mac_begin(m, 'C');
  ps_auth_mac_update(m, 'C', out, n);
  ps_auth_mac_end(m, 'C', out + n);
  return n + PS_AUTH_MAC;
}

/* raw_recv_mac reads one MACed reply frame whole (its data and MAC
 * unchecked) and returns its meta (NULL at EOF). */
static Ps__ChanMeta *raw_recv_mac(int fd) {
  uint8_t hdr[PS_CHAN_HDR_LEN], meta[4096];
  static uint8_t rest[sizeof(float) * SEC_ELEMS + PS_AUTH_MAC];
  ps_chan_hdr h;
  if (raw_read(fd, hdr, sizeof hdr) < 0) return NULL;
  ck_assert_int_eq(ps_chan_hdr_decode(&h, hdr, 0), 0);
  ck_assert_uint_le(h.meta_len, sizeof meta);
  ck_assert_uint_le(h.data_len, sizeof rest - PS_AUTH_MAC);
  ck_assert_int_eq(raw_read(fd, meta, h.meta_len), 0);
  ck_assert_int_eq(raw_read(fd, rest, h.data_len + PS_AUTH_MAC), 0);
  return ps__chan_meta__unpack(NULL, h.meta_len, meta);
}

/* mac_send_ok writes the LEN bytes of FRAME to FD and checks the shard
 * answers it without an error. */
static void mac_send_ok(int fd, const uint8_t *frame, size_t len) {
  ck_assert_int_eq(write(fd, frame, len), (ssize_t)len);
  Ps__ChanMeta *r = raw_recv_mac(fd);
  ck_assert_ptr_nonnull(r);
  ck_assert_msg(r->op == PS__CHAN_OP__CHAN_PUSH && r->status == 0, "op %d status %d: %s",
                (int)r->op, r->status, r->message ? r->message : "");
  ps__chan_meta__free_unpacked(r, NULL);
}

/* With payload_mac, a push recorded on one connection and sent again, on
 * that connection or a new one, and two pushes sent in the other order,
 * each close the connection unapplied and are counted: the MAC covers the
 * frame's count under a key from the hello's nonces. */
START_TEST(test_sec_mac_replayed) {
  ck_assert_msg(mac_up_ok, "the payload-MAC psd is not running");
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  Ps__StatusReply *st = sec_status_at(mac_grpc);
  uint64_t chan0 = st->chan_auth_refused, pushes0 = st->pushes;
  ps__status_reply__free_unpacked(st, NULL);
  static float g[SEC_ELEMS];
  static uint8_t f1[PS_CHAN_HDR_LEN + 256 + sizeof g + PS_AUTH_MAC], f2[sizeof f1];
  ps_auth_mac *m;
  /* recorded and replayed on its own connection */
  int fd = raw_hello_mac(key, &m);
  size_t n1 = mac_push_frame(m, g, 10, f1);
  mac_send_ok(fd, f1, n1);
  ck_assert_int_eq(write(fd, f1, n1), (ssize_t)n1);
  ck_assert_ptr_null(raw_recv_mac(fd));
  close(fd);
  ps_auth_mac_free(m);
  /* replayed on a new connection (as its first frame after the hello) */
  fd = raw_hello_mac(key, &m);
  ck_assert_int_eq(write(fd, f1, n1), (ssize_t)n1);
  ck_assert_ptr_null(raw_recv_mac(fd));
  close(fd);
  ps_auth_mac_free(m);
  /* two frames in the other order */
  fd = raw_hello_mac(key, &m);
  n1 = mac_push_frame(m, g, 11, f1);
  size_t n2 = mac_push_frame(m, g, 12, f2);
  ck_assert_int_eq(write(fd, f2, n2), (ssize_t)n2);
  ck_assert_int_eq(write(fd, f1, n1), (ssize_t)n1);
  ck_assert_ptr_null(raw_recv_mac(fd));
  close(fd);
  ps_auth_mac_free(m);
  st = sec_status_at(mac_grpc);
  ck_assert_uint_eq(st->chan_auth_refused, chan0 + 3);
  ck_assert_uint_eq(st->pushes, pushes0 + 1); /* the recorded push, once */
  ps__status_reply__free_unpacked(st, NULL);
  ps_auth_release(&keys);
}
END_TEST

/* A push whose data was changed after its MAC was made, and a frame
 * without its MAC, each close the connection unapplied and are counted. */
START_TEST(test_sec_mac_tampered) {
  ck_assert_msg(mac_up_ok, "the payload-MAC psd is not running");
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  ps_errbuf eb;
  static const uint32_t ids[SEC_CHUNKS] = {0, 1, 2, 3};
  float before[SEC_ELEMS], after[SEC_ELEMS];
  ps_chan_client *c;
  ck_assert_int_eq(ps_chan_connect_auth(&c, mac_chan, "test", key, 0, 5000, &eb), 0);
  uint64_t v;
  ck_assert_int_eq(ps_test_pull(c, "m", ids, SEC_CHUNKS, before, SEC_ELEMS, 0, 0, &v, &eb), 0);
  ps_chan_close(c);
  Ps__StatusReply *st = sec_status_at(mac_grpc);
  ck_assert_str_eq(st->security, "mtls+chan-hmac+payload-mac");
  uint64_t chan0 = st->chan_auth_refused, pushes0 = st->pushes;
  ps__status_reply__free_unpacked(st, NULL);
  /* The push: header, meta, data, then a MAC over other data. */
  ps_auth_mac *m;
  int fd = raw_hello_mac(key, &m);
  static float g[SEC_ELEMS];
  static uint8_t frame[PS_CHAN_HDR_LEN + 256 + sizeof g + PS_AUTH_MAC];
  size_t n = mac_push_frame(m, g, 3, frame);
  float changed = 1000.0f; /* g[7], changed on the way */
  memcpy(frame + n - PS_AUTH_MAC - sizeof g + 7 * sizeof(float), &changed, sizeof changed);
  ck_assert_int_eq(write(fd, frame, n), (ssize_t)n);
  ck_assert_ptr_null(raw_recv(fd)); /* closed, nothing answered */
  close(fd);
  ps_auth_mac_free(m);
  /* A frame without the MAC flag after a MAC hello. */
  Ps__ChanMeta pm = PS__CHAN_META__INIT;
  pm.op = PS__CHAN_OP__CHAN_PUSH;
  pm.model = "m";
  pm.chunk_ids = (uint32_t *)ids;
  pm.n_chunk_ids = SEC_CHUNKS;
  fd = raw_hello_mac(key, &m);
  raw_send(fd, &pm, 4);
  ck_assert_ptr_null(raw_recv(fd));
  close(fd);
  ps_auth_mac_free(m);
  ck_assert_int_eq(ps_chan_connect_auth(&c, mac_chan, "test", key, 0, 5000, &eb), 0);
  ck_assert_int_eq(ps_test_pull(c, "m", ids, SEC_CHUNKS, after, SEC_ELEMS, 0, 0, &v, &eb), 0);
  ps_chan_close(c);
  ck_assert_int_eq(memcmp(before, after, sizeof before), 0);
  st = sec_status_at(mac_grpc);
  ck_assert_uint_eq(st->chan_auth_refused, chan0 + 2); /* the wrong MAC, the missing one */
  ck_assert_uint_eq(st->pushes, pushes0);
  ps__status_reply__free_unpacked(st, NULL);
  ps_auth_release(&keys);
}
END_TEST

/* raw_hello_fields runs the MAC shard's hello by hand as a client that
 * asks for SENT (its first HELLO's fields, PS_AUTH_HELLO's client part)
 * while a middleman sends ON_WIRE instead: returns the op of the shard's
 * answer to the client's proof (made over SENT), its message into WHY
 * (200 bytes); *SHARD_OK: the shard's proof checked out over SENT. */
static int raw_hello_fields(const ps_auth_key *key, const ps_auth_hello *sent,
                            const ps_auth_hello *on_wire, int *shard_ok, char *why) {
  uint8_t nc[PS_AUTH_NONCE], proof[PS_AUTH_MAC], ns[PS_AUTH_NONCE];
  Ps__ChanMeta hello;
  raw_hello(&hello, key, nc, 6);
  hello.payload_mac = on_wire->want_mac;
  hello.unordered_acks = on_wire->unordered_acks;
  hello.shm_bytes = on_wire->shm_bytes;
  hello.shm_hold = on_wire->shm_hold;
  hello.hello_worker = on_wire->worker1;
  int fd = raw_connect_to(mac_cp);
  raw_send(fd, &hello, 1);
  Ps__ChanMeta *ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  ck_assert_int_eq(ch->op, PS__CHAN_OP__CHAN_HELLO);
  memcpy(ns, ch->nonce.data, sizeof ns);
  ps_auth_hello h = *sent;
  h.mac = ch->payload_mac;
  *shard_ok = ps_auth_check(key, PS_AUTH_SERVER, "test", nc, ns, &h, ch->auth.data, ch->auth.len);
  ps__chan_meta__free_unpacked(ch, NULL);
  ps_auth_proof(key, PS_AUTH_CLIENT, "test", nc, ns, &h, proof);
  Ps__ChanMeta pm = PS__CHAN_META__INIT;
  pm.op = PS__CHAN_OP__CHAN_HELLO;
  pm.auth.data = proof;
  pm.auth.len = PS_AUTH_MAC;
  raw_send(fd, &pm, 2);
  ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  int op = ch->op;
  snprintf(why, 200, "%s", ch->message ? ch->message : "");
  if (op == PS__CHAN_OP__CHAN_HELLO) { /* its accept MAC covers what it granted */
    h.features = ch->features;
    h.acks = ch->unordered_acks;
    ck_assert(ps_auth_check(key, PS_AUTH_ACCEPT, "test", nc, ns, &h, ch->auth.data, ch->auth.len));
    h.features = 0;
    ck_assert(!ps_auth_check(key, PS_AUTH_ACCEPT, "test", nc, ns, &h, ch->auth.data, ch->auth.len));
  } else {
    ck_assert_ptr_null(raw_recv(fd)); /* closed after the one error frame */
  }
  ps__chan_meta__free_unpacked(ch, NULL);
  close(fd);
  return op;
}

/* A field of the client's first HELLO changed on the way (unordered
 * acks, shared memory, the payload MAC asked for, the worker it names:
 * added, changed or taken off) makes the shard's proof
 * wrong for the client and the client's wrong for the shard, which
 * refuses it and counts it: the proofs cover every negotiated field. */
START_TEST(test_sec_hello_fields_tampered) {
  ck_assert_msg(mac_up_ok, "the payload-MAC psd is not running");
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  Ps__StatusReply *st = sec_status_at(mac_grpc);
  uint64_t chan0 = st->chan_auth_refused;
  ps__status_reply__free_unpacked(st, NULL);
  const ps_auth_hello sent = {.want_mac = 1, .unordered_acks = 1};
  const ps_auth_hello named = {.want_mac = 1, .unordered_acks = 1, .worker1 = 3};
  enum { NWIRE = 6 };
  ps_auth_hello wire[NWIRE] = {sent, sent, sent, sent, named, named};
  wire[0].unordered_acks = 0;
  wire[1].shm_bytes = 1 << 20, wire[1].shm_hold = 1;
  wire[2].want_mac = 0;
  wire[3].worker1 = 3; /* a worker named on the way */
  wire[4].worker1 = 0; /* the worker taken off */
  wire[5].worker1 = 4; /* another worker */
  char why[200];
  int shard_ok;
  /* untouched: accepted, with an accept MAC over what it granted */
  ck_assert_int_eq(raw_hello_fields(key, &sent, &sent, &shard_ok, why), PS__CHAN_OP__CHAN_HELLO);
  ck_assert(shard_ok);
  ck_assert_int_eq(raw_hello_fields(key, &named, &named, &shard_ok, why), PS__CHAN_OP__CHAN_HELLO);
  ck_assert(shard_ok);
  for (int i = 0; i < NWIRE; i++) {
    ck_assert_int_eq(raw_hello_fields(key, i < 4 ? &sent : &named, &wire[i], &shard_ok, why),
                     PS__CHAN_OP__CHAN_ERROR);
    ck_assert_msg(!shard_ok, "tampering %d: the shard's proof still checks out", i);
    ck_assert_msg(strstr(why, "wrong proof"), "%s", why);
  }
  /* a hello of proofs without these fields (an older psd, or the
   * version taken off on the way): refused before any proof, counted */
  uint8_t nc[PS_AUTH_NONCE];
  Ps__ChanMeta hello;
  raw_hello(&hello, key, nc, 8);
  hello.auth_version = 0;
  int fd = raw_connect_to(mac_cp);
  raw_send(fd, &hello, 1);
  Ps__ChanMeta *ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  ck_assert_int_eq(ch->op, PS__CHAN_OP__CHAN_ERROR);
  /* named by what its hello lacks, not by a date a reader cannot map to a build */
  ck_assert_msg(strstr(ch->message, "proofs are of version 0") &&
                    strstr(ch->message, "carries no auth_version"),
                "%s", ch->message);
  ps__chan_meta__free_unpacked(ch, NULL);
  ck_assert_ptr_null(raw_recv(fd));
  close(fd);
  st = sec_status_at(mac_grpc);
  ck_assert_uint_eq(st->chan_auth_refused, chan0 + NWIRE + 1);
  ps__status_reply__free_unpacked(st, NULL);
  ps_auth_release(&keys);
}
END_TEST

/* sec_done records a psd_chan_client request's end in its int (status,
 * or 1 while it runs). */
static void sec_done(psd_done *d, int status, const char *msg) {
  (void)msg;
  *(int *)d->arg = status;
}

/* sec_done_msg is sec_done that also keeps MSG in sec_done_said (400
 * bytes; one request at a time). */
static char *sec_done_said;
static void sec_done_msg(psd_done *d, int status, const char *msg) {
  snprintf(sec_done_said, 400, "%s", msg ? msg : "");
  sec_done(d, status, msg);
}

/* sec_cc_pull pulls model m through an aggregator's client of its roots
 * (psd_chan_client, KEY, payload MAC) from channel ADDR on a loop of its
 * own, within 20 s; its status (1: none in time), its message in MSG
 * (400 bytes). */
static int sec_cc_pull(const char *addr, const ps_auth_key *key, char *msg) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  psd_chan_client *c;
  ps_errbuf eb;
  ck_assert_int_eq(
      psd_chan_client_new(&c, &loop, addr, "test", key, PS_CHAN_AUTH_MAC, 5000, 5000, &eb), 0);
  static const uint32_t ids[SEC_CHUNKS] = {0, 1, 2, 3};
  static float out[SEC_ELEMS];
  ps_req pull = {.model = "m", .ids = ids, .nids = SEC_CHUNKS, .out = out, .nbytes = sizeof out};
  int status = 1;
  psd_chan_client_req q;
  memset(&q, 0, sizeof q);
  q.done.fn = sec_done_msg;
  q.done.arg = &status;
  msg[0] = '\0';
  sec_done_said = msg;
  ck_assert_int_eq(psd_chan_client_pull(c, &pull, &q, &eb), 0);
  int64_t until = ps_test_now_ms() + 20000;
  while (status == 1 && ps_test_now_ms() < until) uv_run(&loop, UV_RUN_NOWAIT), usleep(1000);
  psd_chan_client_close(c);
  while (uv_run(&loop, UV_RUN_NOWAIT) && ps_test_now_ms() < until + 10000) usleep(1000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  return status;
}

/* An aggregator's link to its roots (psd_chan_client) proves its key
 * with the hello's fields and checks the shard's accept MAC: its pull
 * over the payload MAC is answered. */
START_TEST(test_sec_mac_async_client) {
  ck_assert_msg(mac_up_ok, "the payload-MAC psd is not running");
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  char msg[400];
  int status = sec_cc_pull(mac_chan, key, msg);
  ck_assert_msg(status == 0, "the pull ended with %d: %s", status, msg);
  ps_auth_release(&keys);
}
END_TEST

/* ---- a middleman on the channel (a proxy thread) ---------------------------- */

typedef struct hello_proxy {
  int lfd, port, to_port;
  int frame;  /* the shard's frame it changes: 1 (the challenge), else 2 (the last HELLO) */
  pthread_t th;
} hello_proxy;

/* proxy_frame reads one frame of meta only from FD into BUF (room for
 * 4096 bytes); its length, or -1. */
static ssize_t proxy_frame(int fd, uint8_t *buf) {
  ps_chan_hdr h;
  if (raw_read(fd, buf, PS_CHAN_HDR_LEN) < 0 || ps_chan_hdr_decode(&h, buf, 0) < 0 ||
      h.meta_len > 4096 - PS_CHAN_HDR_LEN || raw_read(fd, buf + PS_CHAN_HDR_LEN, h.meta_len) < 0)
    return -1;
  return PS_CHAN_HDR_LEN + h.meta_len;
}

/* proxy_main takes one connection and relays it to the shard, but on
 * the way takes auth_version out of the shard's challenge (frame 1) or
 * clears the features of its last HELLO (frame 2). */
static void *proxy_main(void *arg) {
  hello_proxy *p = arg;
  struct pollfd lp = {.fd = p->lfd, .events = POLLIN};
  if (poll(&lp, 1, 10000) != 1) return NULL;
  int cfd = accept(p->lfd, NULL, NULL), sfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->to_port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (cfd < 0 || connect(sfd, (struct sockaddr *)&a, sizeof a) < 0) goto out;
  static uint8_t buf[4096];
  int from_shard = 0;
  for (;;) {
    struct pollfd pf[2] = {{.fd = cfd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    if (poll(pf, 2, 10000) <= 0) break;
    if (pf[0].revents) {
      ssize_t n = read(cfd, buf, sizeof buf);
      if (n <= 0 || write(sfd, buf, (size_t)n) != n) break;
    }
    if (!pf[1].revents) continue;
    if (from_shard >= 2) {
      ssize_t n = read(sfd, buf, sizeof buf);
      if (n <= 0 || write(cfd, buf, (size_t)n) != n) break;
      continue;
    }
    ssize_t n = proxy_frame(sfd, buf);
    if (n < 0) break;
    if (++from_shard == (p->frame == 1 ? 1 : 2)) {
      Ps__ChanMeta *m = ps__chan_meta__unpack(NULL, (size_t)n - PS_CHAN_HDR_LEN,
                                               buf + PS_CHAN_HDR_LEN);
      if (!m) break;
      if (p->frame == 1)
        m->auth_version = 0; /* as an older psd's challenge */
      else
        m->features = 0; /* a feature taken away */
      ps_chan_hdr h;
      ps_chan_hdr_decode(&h, buf, 0);
      h.meta_len = (uint32_t)ps__chan_meta__pack(m, buf + PS_CHAN_HDR_LEN);
      ps_chan_hdr_encode(buf, &h);
      n = PS_CHAN_HDR_LEN + h.meta_len;
      ps__chan_meta__free_unpacked(m, NULL);
    }
    if (write(cfd, buf, (size_t)n) != n) break;
  }
out:
  if (cfd >= 0) close(cfd);
  close(sfd);
  return NULL;
}

/* A middleman that takes a feature out of the shard's last HELLO: the
 * client finds the accept MAC wrong and refuses the connection. */
/* proxy_start starts P's thread (P->to_port, P->frame set), its address
 * into ADDR (64 bytes). */
static void proxy_start(hello_proxy *p, char *addr) {
  p->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  ck_assert_int_eq(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0);
  ck_assert_int_eq(listen(p->lfd, 1), 0);
  ck_assert_int_eq(getsockname(p->lfd, (struct sockaddr *)&a, &al), 0);
  p->port = ntohs(a.sin_port);
  ck_assert_int_eq(pthread_create(&p->th, NULL, proxy_main, p), 0);
  snprintf(addr, 64, "127.0.0.1:%d", p->port);
}

START_TEST(test_sec_hello_reply_tampered) {
  ck_assert_msg(mac_up_ok, "the payload-MAC psd is not running");
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  hello_proxy p = {.to_port = mac_cp, .frame = 2};
  char addr[64];
  proxy_start(&p, addr);
  ps_chan_client *c = NULL;
  ps_errbuf eb;
  int rc = ps_chan_connect_auth(&c, addr, "test", key, PS_CHAN_AUTH_MAC, 5000, &eb);
  if (c) ps_chan_close(c);
  pthread_join(p.th, NULL);
  close(p.lfd);
  ck_assert_int_eq(rc, PS_EPERM);
  ck_assert_msg(strstr(eb.msg, "changed on the way"), "%s", eb.msg);
  /* without the middleman the same client gets in, with the feature */
  ck_assert_msg(ps_chan_connect_auth(&c, mac_chan, "test", key, PS_CHAN_AUTH_MAC, 5000, &eb) == 0,
                "%s", eb.msg);
  ck_assert_uint_ne(ps_chan_features(c), 0);
  ps_chan_close(c);
  ps_auth_release(&keys);
}
END_TEST

/* The same middleman against the aggregator's client of its roots
 * (psd_chan_client), and one that takes auth_version out of the shard's
 * challenge, against both clients: each refuses the connection, saying
 * why (an accept MAC that does not check; a shard whose hello carries no
 * auth_version, PS_AUTH_OLD_PEER).  Only psw's client (ps_chan) had such
 * a middleman test. */
START_TEST(test_sec_hello_middleman_clients) {
  ck_assert_msg(mac_up_ok, "the payload-MAC psd is not running");
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  static const char *const want[] = {"", "carries no auth_version", "changed on the way"};
  for (int frame = 1; frame <= 2; frame++) {
    hello_proxy p = {.to_port = mac_cp, .frame = frame};
    char addr[64];
    ps_errbuf eb;
    if (frame == 1) { /* psw's client (frame 2: test_sec_hello_reply_tampered) */
      proxy_start(&p, addr);
      ps_chan_client *c = NULL;
      int rc = ps_chan_connect_auth(&c, addr, "test", key, PS_CHAN_AUTH_MAC, 5000, &eb);
      if (c) ps_chan_close(c);
      pthread_join(p.th, NULL);
      close(p.lfd);
      ck_assert_int_eq(rc, PS_EPERM);
      ck_assert_msg(strstr(eb.msg, want[frame]), "frame %d: %s", frame, eb.msg);
    }
    /* an aggregator's link */
    proxy_start(&p, addr);
    char msg[400];
    int status = sec_cc_pull(addr, key, msg);
    pthread_join(p.th, NULL);
    close(p.lfd);
    ck_assert_msg(status == PS_EPERM && strstr(msg, want[frame]),
                  "frame %d: the aggregator's link ended with %d: %s", frame, status, msg);
  }
  ps_auth_release(&keys);
}
END_TEST


/* ---- strangers at the channel's limit (a shard of its own) ---------------- */

static pid_t lim_pid;
static int lim_cp, lim_gp, lim_up_ok;
static char lim_chan[64], lim_grpc[64], lim_log[700];

/* Starts a shard with limits {max_connections: 4, idle_timeout_ms: 3000}
 * and the suite's security (unchecked fixture; after sec_up). */
static void lim_up(void) {
  sec_up();
  if (!sec_up_ok) return;
  char path[700];
  snprintf(path, sizeof path, "%s/tls.yaml", sec_dir);
  static char sec[4200];
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(sec, 1, 4000, f) : 0;
  if (f) fclose(f);
  sec[n] = '\0';
  const char *saved = ps_test_security_yaml;
  ps_test_security_yaml = sec;
  char dir[600];
  snprintf(dir, sizeof dir, "%s/lim", sec_dir);
  mkdir(dir, 0700);
  const char *yaml = ps_test_cluster_yaml(
      dir, 1,
      "limits:\n  max_connections: 4\n  idle_timeout_ms: 3000\ntraining:\n  pull_timeout_ms: 1000\n",
      &lim_gp, &lim_cp);
  ps_test_security_yaml = saved;
  snprintf(lim_chan, sizeof lim_chan, "127.0.0.1:%d", lim_cp);
  snprintf(lim_grpc, sizeof lim_grpc, "127.0.0.1:%d", lim_gp);
  snprintf(lim_log, sizeof lim_log, "%s/psd.log", dir);
  lim_pid = ps_test_psd(yaml, 0, lim_log, NULL);
  lim_up_ok = ps_test_wait_port(lim_cp, 15000) == 0 && ps_test_wait_port(lim_gp, 5000) == 0;
  if (!lim_up_ok) fprintf(stderr, "security: the limits psd did not start; see %s\n", lim_log);
}

static void lim_down(void) {
  if (lim_pid > 0) ps_test_stop(lim_pid, SIGTERM, 10000);
  lim_pid = 0;
  sec_down();
}

/* lim_stranger connects to the limits shard and sends one byte of a
 * hello header. */
static int lim_stranger(void) {
  int saved = sec_cp;
  sec_cp = lim_cp;
  int fd = raw_connect();
  sec_cp = saved;
  ck_assert_int_eq(send(fd, "P", 1, MSG_NOSIGNAL), 1);
  return fd;
}

/* lim_closed: the shard closed FD (EOF or reset), looked at without
 * waiting. */
static int lim_closed(int fd) {
  struct pollfd pf = {.fd = fd, .events = POLLIN};
  if (poll(&pf, 1, 0) != 1) return 0;
  char b;
  return recv(fd, &b, 1, MSG_DONTWAIT) <= 0;
}

/* A hello key id with a newline is logged escaped: no forged log line. */
START_TEST(test_sec_log_injection) {
  ck_assert_msg(lim_up_ok, "the limits psd is not running");
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  uint8_t nc[PS_AUTH_NONCE];
  Ps__ChanMeta hello;
  raw_hello(&hello, key, nc, 3);
  hello.key_id = "evil\n2026-01-01T00:00:00.000Z psd[1] info: FORGED LINE";
  int saved = sec_cp;
  sec_cp = lim_cp;
  int fd = raw_connect();
  sec_cp = saved;
  raw_send(fd, &hello, 1);
  Ps__ChanMeta *ch = raw_recv(fd);
  ck_assert_ptr_nonnull(ch);
  ck_assert_int_eq(ch->op, PS__CHAN_OP__CHAN_ERROR);
  ck_assert_msg(!strchr(ch->message, '\n') && strstr(ch->message, "evil\\x0a2026"), "%s",
                ch->message);
  ps__chan_meta__free_unpacked(ch, NULL);
  close(fd);
  ps_auth_release(&keys);
  char *text = NULL;
  int64_t end = ps_test_now_ms() + 5000;
  do { /* the refusal's log line */
    free(text);
    usleep(50000);
    text = ps_test_read_file(lim_log, NULL);
  } while (!strstr(text, "unknown key id") && ps_test_now_ms() < end);
  ck_assert_msg(strstr(text, "unknown key id 'evil\\x0a2026"), "%s", text);
  ck_assert_msg(!strstr(text, "\n2026-01-01T00:00:00.000Z psd[1]"), "a forged line: %s", text);
  free(text);
}
END_TEST

/* Strangers that hold every slot with a hello trickling in keep no worker
 * out: the oldest is closed to admit it, and none outlives the hello's
 * deadline (3 s here: idle_timeout_ms) however it trickles.  At the limit
 * with every connection past its hello, the client says what the shard
 * said. */
START_TEST(test_sec_hello_deadline) {
  ck_assert_msg(lim_up_ok, "the limits psd is not running");
  Ps__StatusReply *st = sec_status_at(lim_grpc);
  uint64_t refused0 = st->chan_refused, idle0 = st->chan_idle_closed;
  ps__status_reply__free_unpacked(st, NULL);
  int fds[4];
  for (int i = 0; i < 4; i++) fds[i] = lim_stranger();
  usleep(200000);
  ps_auth_keys keys;
  const ps_auth_key *key = sec_worker_key(&keys);
  ps_errbuf eb;
  ps_chan_client *c[5] = {0};
  ck_assert_msg(ps_chan_connect_auth(&c[0], lim_chan, "test", key, 0, 5000, &eb) == 0,
                "a worker kept out by strangers: %s", eb.msg);
  /* The strangers trickle a byte every 500 ms: all are closed within the
   * deadline plus a sweep (3 s + 0.75 s), evicted or late. */
  int64_t start = ps_test_now_ms();
  int open = 4;
  while (open && ps_test_now_ms() - start < 6000) {
    open = 0;
    for (int i = 0; i < 4; i++) {
      if (fds[i] < 0) continue;
      if (lim_closed(fds[i]) || send(fds[i], "S", 1, MSG_NOSIGNAL) < 0) {
        close(fds[i]);
        fds[i] = -1;
      } else {
        open++;
      }
    }
    usleep(500000);
  }
  ck_assert_msg(open == 0, "%d stranger(s) still open after %lld ms", open,
                (long long)(ps_test_now_ms() - start));
  st = sec_status_at(lim_grpc);
  ck_assert_uint_ge(st->chan_refused, refused0 + 1);  /* the one evicted */
  ck_assert_uint_ge(st->chan_idle_closed, idle0 + 3); /* the late ones */
  ps__status_reply__free_unpacked(st, NULL);
  char *text = ps_test_read_file(lim_log, NULL);
  ck_assert_msg(strstr(text, "no hello within 3000 ms"), "%s", text);
  free(text);
  /* Four workers hold the limit: the fifth hears why (c[0] is idle by
   * now: connected again). */
  ps_chan_close(c[0]);
  for (int i = 0; i < 4; i++)
    ck_assert_msg(ps_chan_connect_auth(&c[i], lim_chan, "test", key, 0, 5000, &eb) == 0, "%s",
                  eb.msg);
  ck_assert_int_eq(ps_chan_connect_auth(&c[4], lim_chan, "test", key, 0, 5000, &eb), PS_EUNAVAIL);
  ck_assert_msg(strstr(eb.msg, "holds its limit of 4 channel connections"), "%s", eb.msg);
  for (int i = 0; i < 5; i++) ps_chan_close(c[i]);
  ps_auth_release(&keys);
}
END_TEST

/* A client's key is read again at each connection (ps_auth_client): the
 * README's rotation (new line on the shard, SIGHUP, the client's file
 * moved, the old line removed, SIGHUP) leaves a running client able to
 * connect again; a file it cannot read then keeps the key it had. */
START_TEST(test_sec_client_key_rotation) {
  sec_ensure_model();
  const char *path = sec_cfg.security.secret_file;
  size_t len;
  char *old = ps_test_read_file(path, &len);
  char mine[700];
  snprintf(mine, sizeof mine, "%s/client.secret", ps_test_tmpdir());
  ps_test_write_file(mine, old); /* the client's own file, as the shard's was */
  ck_assert_int_eq(chmod(mine, 0600), 0);
  ps_auth_client ac;
  ps_errbuf eb;
  ck_assert_msg(ps_auth_client_open(&ac, mine, PS_ROLE_WORKER, &eb) == 0, "%s", eb.msg);
  ps_auth_key k;
  float out[SEC_ELEMS];
  ck_assert_int_eq(ps_auth_client_now(&ac, &k), 1);
  ck_assert_str_eq(k.id, "worker-1");
  ck_assert_msg(sec_pull(&k, out, &eb) == 0, "%s", eb.msg);
  static const char rot_line[] =
      "rot-3 worker c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf\n";
  /* 1. the new line on the shard, SIGHUP */
  char *text = malloc(len + 200);
  snprintf(text, len + 200, "%s%s", old, rot_line);
  ps_test_write_file(path, text);
  ck_assert_int_eq(chmod(path, 0600), 0);
  ck_assert_int_eq(kill(sec_pid, SIGHUP), 0);
  usleep(300000);
  /* 2. the client's file moved to the new key */
  ps_test_write_file(mine, rot_line);
  ck_assert_int_eq(chmod(mine, 0600), 0);
  /* 3. the old worker line removed from the shard, SIGHUP */
  char *keep = malloc(len + 200), *o = keep;
  for (char *line = text, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) break;
    if (strncmp(line, "worker-1 ", 9)) {
      memcpy(o, line, (size_t)(nl + 1 - line));
      o += nl + 1 - line;
    }
  }
  *o = '\0';
  ps_test_write_file(path, keep);
  ck_assert_int_eq(chmod(path, 0600), 0);
  ck_assert_int_eq(kill(sec_pid, SIGHUP), 0);
  int64_t end = ps_test_now_ms() + 10000;
  int rc;
  while ((rc = sec_pull(&k, out, &eb)) == 0 && ps_test_now_ms() < end) usleep(50000);
  ck_assert_int_eq(rc, PS_EPERM); /* the key the client started with is gone */
  /* The client's next connection proves the moved key. */
  ck_assert_int_eq(ps_auth_client_now(&ac, &k), 1);
  ck_assert_str_eq(k.id, "rot-3");
  ck_assert_msg(sec_pull(&k, out, &eb) == 0, "after the rotation: %s", eb.msg);
  /* A file it cannot read (others may) keeps the key. */
  ck_assert_int_eq(chmod(mine, 0644), 0);
  ck_assert_int_eq(ps_auth_client_now(&ac, &k), 1);
  ck_assert_str_eq(k.id, "rot-3");
  ck_assert_msg(sec_pull(&k, out, &eb) == 0, "%s", eb.msg);
  ps_auth_key_wipe(&k);
  ps_auth_client_close(&ac);
  /* The shard's file as it was. */
  ps_test_write_file(path, old);
  ck_assert_int_eq(chmod(path, 0600), 0);
  ck_assert_int_eq(kill(sec_pid, SIGHUP), 0);
  usleep(300000);
  free(keep);
  free(text);
  free(old);
}
END_TEST


/* A secret file shared by shard and client: the edit that adds the new
 * key reaches the client before the shard's SIGHUP, so the client's next
 * connection names a key the shard does not know yet; it proves the key
 * its last hello proved instead (it exited 1 on "unknown key id"). */
START_TEST(test_sec_client_key_shared_file) {
  sec_ensure_model();
  size_t len;
  char *old = ps_test_read_file(sec_cfg.security.secret_file, &len);
  char mine[700];
  snprintf(mine, sizeof mine, "%s/shared.secret", ps_test_tmpdir());
  ps_test_write_file(mine, old);
  ck_assert_int_eq(chmod(mine, 0600), 0);
  ps_auth_client ac;
  ps_errbuf eb;
  ck_assert_msg(ps_auth_client_open(&ac, mine, PS_ROLE_WORKER, &eb) == 0, "%s", eb.msg);
  int flags = sec_cfg.security.payload_mac ? PS_CHAN_AUTH_MAC : 0;
  ps_chan_client *ch = NULL;
  ck_assert_msg(ps_chan_connect_client(&ch, sec_chan, sec_cfg.cluster, &ac, flags, 0, 1, 5000,
                                       &eb) == 0, "%s", eb.msg);
  ps_chan_close(ch);
  char *text = malloc(len + 200);
  snprintf(text, len + 200, "%s%s", old,
           "rot-9 worker a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\n");
  ps_test_write_file(mine, text); /* edited; the shard not told (no SIGHUP) */
  ck_assert_int_eq(chmod(mine, 0600), 0);
  ch = NULL;
  ck_assert_msg(ps_chan_connect_client(&ch, sec_chan, sec_cfg.cluster, &ac, flags, 0, 1, 5000,
                                       &eb) == 0, "with the new key not yet known: %s", eb.msg);
  ps_chan_close(ch);
  ps_auth_client_close(&ac);
  free(text);
  free(old);
}
END_TEST

/* A directory where a security file belongs: the message names the key
 * (tls.ca, tls.key, secret_file) and says the same for each. */
START_TEST(test_sec_file_names_key) {
  const char *dir = ps_test_tmpdir();
  char kdir[600], f[700];
  snprintf(kdir, sizeof kdir, "%s/kdir", dir);
  ck_assert_int_eq(mkdir(kdir, 0700), 0);
  snprintf(f, sizeof f, "%s/some.pem", dir);
  ps_test_write_file(f, "-----BEGIN CERTIFICATE-----\n");
  ps_errbuf eb;
  ck_assert_int_lt(ps_tls_check(kdir, f, f, &eb), 0);
  ck_assert_msg(strstr(eb.msg, "security.tls.ca '") && strstr(eb.msg, "not a regular file"), "%s",
                eb.msg);
  ck_assert_int_lt(ps_tls_check(f, f, kdir, &eb), 0);
  ck_assert_msg(strstr(eb.msg, "security.tls.key '") && strstr(eb.msg, "not a regular file"),
                "%s", eb.msg);
  ps_auth_keys k;
  ck_assert_int_eq(ps_auth_load(&k, kdir, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "security.secret_file '") && strstr(eb.msg, "not a regular file"),
                "%s", eb.msg);
}
END_TEST

/* sec_leaf writes DIR/NAME.pem and NAME.key, a certificate of role ROLE
 * that the suite's CA signs with extension lines EXT (openssl's
 * extfile syntax, '\n' between them); 0 or -1. */
static int sec_leaf(const char *name, const char *role, const char *ext) {
  char cmd[4096], dir[600];
  snprintf(dir, sizeof dir, "%s/tls", sec_dir);
  snprintf(cmd, sizeof cmd,
           "cd '%s' && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
           "%s.key -out %s.csr -subj /O=psd/OU=%s/CN=%s 2>/dev/null && printf '%s\n' > %s.ext && "
           "openssl x509 -req -in %s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
           "-extfile %s.ext -out %s.pem 2>/dev/null && chmod 600 %s.key",
           dir, name, name, role, name, ext, name, name, name, name, name);
  return system(cmd) == 0 ? 0 : -1;
}

/* sec_client_yaml writes to PATH a cluster file for the suite's shard
 * with security section SEC ("" keeps the suite's), the operator pair
 * replaced by DIR/tls/NAME.pem and .key when NAME is given, and a short
 * workers.retry_ms. */
static void sec_client_yaml(const char *path, const char *sec, const char *name) {
  char tmp[700], from[64], to[64];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  char *text = ps_test_read_file(sec_yaml, NULL);
  if (*sec) { /* the suite's section ends before "shards:" (ps_test_cluster_yaml) */
    char *a = strstr(text, "security:"), *b = a ? strstr(a, "shards:") : NULL;
    ck_assert(a && b);
    *a = '\0';
    FILE *f = fopen(tmp, "w");
    ck_assert(f);
    fprintf(f, "%s%s%s", text, sec, b);
    fclose(f);
  } else {
    ps_test_write_file(tmp, text);
  }
  free(text);
  ps_test_file_replace(tmp, path, "count: 2\n", "count: 2\n  retry_ms: 1500\n");
  for (int k = 0; name && k < 2; k++) {
    snprintf(from, sizeof from, "tls/operator.%s", k ? "key" : "pem");
    snprintf(to, sizeof to, "tls/%s.%s", name, k ? "key" : "pem");
    ps_test_file_replace(path, path, from, to);
  }
}

/* sec_worker_age returns worker W's heartbeat_age_ms on the suite's
 * shard (asked as the operator; -1 when the shard does not list it). */
static int64_t sec_worker_age(uint32_t w) {
  Ps__ListWorkersRequest req = PS__LIST_WORKERS_REQUEST__INIT;
  Ps__ListWorkersReply *rep = (Ps__ListWorkersReply *)sec_operator_call(
      sec_grpc, "/ps.Ps/ListWorkers", &req.base, &ps__list_workers_reply__descriptor);
  int64_t age = -1;
  for (size_t i = 0; i < rep->n_workers; i++)
    if (rep->workers[i]->worker == w) age = (int64_t)rep->workers[i]->heartbeat_age_ms;
  protobuf_c_message_free_unpacked(&rep->base, NULL);
  return age;
}

/* A channel hello naming a worker (hello_worker) counts as the worker
 * speaking only when it proved a worker's key (psd_chan invariant 9a):
 * an operator's or an aggregator's key naming it leaves its silence as
 * it was, a worker's key ends it. */
START_TEST(test_sec_hello_worker_needs_worker_key) {
  enum { W = 1, QUIET_MS = 1500 };
  ps_errbuf eb;
  ps_rpc *r = sec_rpc(&sec_cfg, PS_ROLE_WORKER);
  ck_assert_msg(ps_test_beat(r, W, 1, &eb) == 0, "beat: %s", eb.msg);
  ps_rpc_close(r);
  usleep(QUIET_MS * 1000);
  int flags = sec_cfg.security.payload_mac ? PS_CHAN_AUTH_MAC : 0;
  static const int roles[] = {PS_ROLE_OPERATOR, PS_ROLE_AGGREGATOR, PS_ROLE_WORKER};
  for (size_t i = 0; i < 3; i++) {
    ps_auth_keys keys = {0};
    const ps_auth_key *key;
    ck_assert_msg(ps_auth_client_key(sec_cfg.security.secret_file, roles[i], &keys, &key, &eb) ==
                      0, "%s", eb.msg);
    ps_chan_client *ch = NULL;
    ck_assert_msg(ps_chan_connect_worker(&ch, sec_chan, sec_cfg.cluster, key, flags, 0, W, 5000,
                                         &eb) == 0, "%s key: %s", ps_role_name(roles[i]), eb.msg);
    ps_chan_close(ch);
    int64_t age = sec_worker_age(W);
    if (roles[i] != PS_ROLE_WORKER)
      ck_assert_msg(age >= QUIET_MS, "a hello with %s key '%s' naming worker %d made its "
                    "heartbeat age %lld ms", ps_role_name(roles[i]), key->id, W, (long long)age);
    else /* (its age had passed QUIET_MS and grows) */
      ck_assert_msg(age >= 0 && age < QUIET_MS, "a hello with a worker key naming worker %d left "
                    "its heartbeat age at %lld ms", W, (long long)age);
    ps_auth_release(&keys);
  }
}
END_TEST

/* A client whose certificate the shards would refuse in the handshake
 * (its extendedKeyUsage serverAuth only; the CA's own certificate) is
 * refused at its start, saying why: psctl showed the shard "DOWN ...
 * Socket closed".  A client the shard refuses in the handshake (here
 * plaintext against TLS) sees the shard REFUSED with a hint at the
 * cause, psw's last message the same; a port nobody listens on stays
 * DOWN. */
START_TEST(test_sec_handshake_refused) {
  ck_assert_msg(sec_up_ok, "psd is not running");
  sec_ensure_model();
  ck_assert_int_eq(sec_leaf("sa", "operator", "basicConstraints=critical,CA:FALSE\n"
                            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth"), 0);
  char path[700], log[700];
  snprintf(path, sizeof path, "%s/sa.yaml", sec_dir);
  sec_client_yaml(path, "", "sa");
  ps_config cfg;
  ps_errbuf eb;
  ps_rpc *r;
  ck_assert_msg(ps_config_load(&cfg, path, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_rpc_open_cfg(&r, sec_grpc, &cfg, PS_ROLE_OPERATOR, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "sa.pem' is not for TLS clients") &&
                    strstr(eb.msg, "extendedKeyUsage lacks clientAuth") &&
                    strstr(eb.msg, "operator_cert"), "%s", eb.msg);
  ps_config_release(&cfg);
  char *out;
  snprintf(log, sizeof log, "%s/sa.log", sec_dir);
  char *st[] = {(char *)ps_test_bin("psctl"), "status", "--config", path, NULL};
  ck_assert_int_eq(ps_test_run(st, log, 20000), 2);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "extendedKeyUsage lacks clientAuth"), "%s", out);
  free(out);
  snprintf(path, sizeof path, "%s/ca-op.yaml", sec_dir); /* the CA's pair as psctl's */
  sec_client_yaml(path, "", "ca");
  ck_assert_msg(ps_config_load(&cfg, path, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(ps_rpc_open_cfg(&r, sec_grpc, &cfg, PS_ROLE_OPERATOR, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "ca.pem' is not for TLS clients") &&
                    strstr(eb.msg, "keyUsage allows neither digitalSignature nor keyAgreement"),
                "%s", eb.msg);
  ps_config_release(&cfg);
  /* plaintext against the TLS shard */
  snprintf(path, sizeof path, "%s/plain.yaml", sec_dir);
  sec_client_yaml(path, "security: none\n", NULL);
  snprintf(log, sizeof log, "%s/plain-status.log", sec_dir);
  st[3] = path;
  ck_assert_int_eq(ps_test_run(st, log, 30000), 1);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "REFUSED") && strstr(out, "the handshake on them failed") &&
                    strstr(out, "security.mode") && !strstr(out, "DOWN"), "%s", out);
  free(out);
  /* submit and export say the same (they said "is down") */
  char graph[700];
  snprintf(graph, sizeof graph, "%s/plain.graph", sec_dir);
  char *mk[] = {(char *)ps_test_bin("psctl"), "model", "logreg", "--inputs", "3", "--classes",
                "2", "-o", graph, NULL};
  snprintf(log, sizeof log, "%s/plain-model.log", sec_dir);
  ck_assert_int_eq(ps_test_run(mk, log, 20000), 0);
  char npz[700];
  snprintf(npz, sizeof npz, "%s/plain.npz", sec_dir);
  char *sub[] = {(char *)ps_test_bin("psctl"), "submit", graph, "--name", "plain", "--config",
                 path, NULL};
  char *exp[] = {(char *)ps_test_bin("psctl"), "export", "--model", "m", "-o", npz, "--config",
                 path, NULL};
  char **cmds[] = {sub, exp};
  for (int k = 0; k < 2; k++) {
    snprintf(log, sizeof log, "%s/plain-%s.log", sec_dir, cmds[k][1]);
    ck_assert_int_eq(ps_test_run(cmds[k], log, 30000), 1);
    out = ps_test_read_file(log, NULL);
    ck_assert_msg(strstr(out, "refuses psctl: '") && strstr(out, "the handshake on them failed") &&
                      !strstr(out, "is down"), "%s", out);
    free(out);
  }
  char train[700];
  snprintf(train, sizeof train, "%s/train.csv", sec_dir); /* psw checks its data first */
  ps_test_write_file(train, "0,0.5,-1.0,2.0\n");
  FILE *f = fopen(path, "a");
  ck_assert(f);
  fprintf(f, "data:\n  format: csv\n  train_images: %s\n  scale: 1\n  partitions: 1\n", train);
  fclose(f);
  char *w[] = {(char *)ps_test_bin("psw"), "--config", path, "--model", "m", "--rank", "0", NULL};
  snprintf(log, sizeof log, "%s/plain-psw.log", sec_dir);
  ck_assert_int_ne(ps_test_run(w, log, 60000), 0);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(out, "no shard answered GetModel") && strstr(out, "the handshake on them failed") &&
                    strstr(out, "security.mode"), "%s", out);
  free(out);
  /* nothing listens: DOWN, no hint */
  char closed[64];
  snprintf(closed, sizeof closed, "127.0.0.1:%d", ps_test_free_port());
  snprintf(log, sizeof log, "%s/down.yaml", sec_dir);
  ps_test_file_replace(path, log, sec_grpc, closed);
  snprintf(path, sizeof path, "%s/down-status.log", sec_dir);
  st[3] = log;
  ck_assert_int_eq(ps_test_run(st, path, 30000), 1);
  out = ps_test_read_file(path, NULL);
  ck_assert_msg(strstr(out, "DOWN") && !strstr(out, "REFUSED") && !strstr(out, "handshake"),
                "%s", out);
  free(out);
}
END_TEST

/* A certificate the suite's CA signed whose OU names no role but whose CN
 * prints like one ("x,OU=operator" is "CN=x\,OU=operator" in gRPC's
 * x509_subject, "x/OU=operator" is "CN=x/OU=operator") gets no role: the
 * role came from splitting that printed subject at ',' and '/', and both
 * such certificates could submit and replace models as the operator. */
START_TEST(test_sec_role_spoofed_cn) {
  ck_assert_msg(sec_up_ok, "psd is not running");
  sec_ensure_model();
  const char *ext = "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth";
  ck_assert_int_eq(sec_leaf("spc", "shard/CN=x\\\\,OU=operator", ext), 0);
  ck_assert_int_eq(sec_leaf("sps", "shard/CN=x\\\\/OU=operator", ext), 0);
  const char *names[] = {"spc", "sps"};
  for (int i = 0; i < 2; i++) {
    char path[700], model[16];
    snprintf(path, sizeof path, "%s/%s.yaml", sec_dir, names[i]);
    sec_client_yaml(path, "", names[i]);
    ps_config cfg;
    ps_errbuf eb;
    ck_assert_msg(ps_config_load(&cfg, path, &eb) == 0, "%s", eb.msg);
    uint64_t refused0 = sec_counter(0);
    snprintf(model, sizeof model, "spoof%d", i);
    ck_assert_int_eq(sec_submit_as(&cfg, PS_ROLE_OPERATOR, model, 10, 0, &eb), PS_EPERM);
    ck_assert_msg(strstr(eb.msg, "not allowed for role 'none'"), "%s: %s", names[i], eb.msg);
    ck_assert_int_eq(sec_submit_as(&cfg, PS_ROLE_OPERATOR, "m", 10, 1, &eb), PS_EPERM);
    ps_config_release(&cfg);
    ck_assert_uint_eq(sec_counter(0), refused0 + 2);
    ck_assert_uint_eq(sec_model_params(model), 0);
    ck_assert_uint_eq(sec_model_params("m"), SEC_ELEMS);
  }
}
END_TEST

/* scripts/mkcerts names every shard's and aggregator's gRPC host in the
 * shards' certificate, however the file writes them: in YAML's flow style
 * several on one line (its sed took the last 'grpc:' of each line, and
 * the certificate named 127.0.0.2 alone).  An unknown option is named
 * before the usage. */
START_TEST(test_sec_mkcerts_hosts) {
  const char *dir = ps_test_tmpdir();
  char pre[700], cmd[2400], cert[700], log[700];
  snprintf(pre, sizeof pre, "%s/flow.yaml", dir);
  ps_test_write_file(pre,
                     "cluster: flow\n"
                     "shards: [{id: 0, grpc: 127.0.0.1:41000, channel: 127.0.0.1:41100, data_dir: "
                     "/x}, {id: 1, grpc: '127.0.0.2:41001', channel: 127.0.0.2:41101, data_dir: /y}]\n"
                     "aggregators: [{name: a1, grpc: \"127.0.0.3:41200\", channel: "
                     "127.0.0.3:41201, workers: 2}]  # grpc: 127.0.0.9:1\n"
                     "# grpc: 127.0.0.8:1\n");
  snprintf(cmd, sizeof cmd, "scripts/mkcerts --config '%s' --out '%s/flow' > /dev/null", pre, dir);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(cert, sizeof cert, "%s/flow/shard.pem", dir);
  const char *addrs[] = {"127.0.0.1:41000", "127.0.0.2:41001", "127.0.0.3:41200"};
  ps_errbuf eb;
  ck_assert_msg(ps_tls_check_hosts(cert, addrs, 3, &eb) == 0, "%s", eb.msg);
  /* a comment names no host */
  const char *commented[] = {"127.0.0.9:1", "127.0.0.8:1"};
  ck_assert_int_eq(ps_tls_check_hosts(cert, commented, 2, &eb), PS_ECONFIG);
  snprintf(log, sizeof log, "%s/bogus.log", dir);
  char *argv[] = {"scripts/mkcerts", "--bogus", NULL};
  ck_assert_int_eq(ps_test_run(argv, log, 20000), 2);
  char *out = ps_test_read_file(log, NULL);
  ck_assert_msg(!strncmp(out, "mkcerts: unknown option '--bogus'\n", 34) &&
                    strstr(out, "--config cluster.yaml --out DIR"),
                "%s", out);
  free(out);
}
END_TEST

/* scripts/mkcerts writes, beside cluster.secret (every role's key, for
 * the shards), a secret file per client host: worker.secret the worker
 * key alone (a worker's host cannot prove the aggregator key),
 * aggregator.secret the worker and aggregator keys, operator.secret the
 * operator's; each the same key as cluster.secret's, owner-only. */
START_TEST(test_sec_mkcerts_role_secrets) {
  const char *dir = ps_test_tmpdir();
  ck_assert_int_eq(sec_mkcerts(dir, "roles"), 0);
  static const struct {
    const char *file;
    unsigned roles;
  } want[] = {{"worker.secret", PS_ROLE_BIT(PS_ROLE_WORKER)},
              {"aggregator.secret", PS_ROLE_BIT(PS_ROLE_WORKER) | PS_ROLE_BIT(PS_ROLE_AGGREGATOR)},
              {"operator.secret", PS_ROLE_BIT(PS_ROLE_OPERATOR)}};
  char path[700];
  ps_errbuf eb;
  ps_auth_keys all, ks;
  snprintf(path, sizeof path, "%s/roles/cluster.secret", dir);
  ck_assert_msg(ps_auth_load(&all, path, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(all.n, 3);
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    snprintf(path, sizeof path, "%s/roles/%s", dir, want[i].file);
    struct stat st;
    ck_assert_msg(stat(path, &st) == 0, "mkcerts wrote no %s", want[i].file);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert_msg(ps_auth_load(&ks, path, &eb) == 0, "%s", eb.msg);
    unsigned roles = 0;
    for (size_t k = 0; k < ks.n; k++) {
      roles |= PS_ROLE_BIT(ks.keys[k].role);
      const ps_auth_key *same = ps_auth_find(&all, ks.keys[k].id);
      ck_assert_ptr_nonnull(same);
      ck_assert_int_eq(same->role, ks.keys[k].role);
      ck_assert(same->len == ks.keys[k].len &&
                !memcmp(same->secret, ks.keys[k].secret, same->len));
    }
    ck_assert_msg(roles == want[i].roles && ks.n == (size_t)__builtin_popcount(roles),
                  "%s: roles 0x%x", want[i].file, roles);
    ps_auth_release(&ks);
  }
  ps_auth_release(&all);
  /* a rerun (--force) over files someone made readable writes new files
   * (under umask 077), never the new secrets into the old, readable ones */
  static const char *const kept[] = {"cluster.secret", "worker.secret", "worker.key", "ca.key"};
  ino_t old[4];
  for (size_t i = 0; i < 4; i++) {
    struct stat st;
    snprintf(path, sizeof path, "%s/roles/%s", dir, kept[i]);
    ck_assert_int_eq(chmod(path, 0644), 0);
    ck_assert_int_eq(stat(path, &st), 0);
    old[i] = st.st_ino;
    char keep[720]; /* a second link: the old inode's number cannot be reused */
    snprintf(keep, sizeof keep, "%s/old-%s", dir, kept[i]);
    ck_assert_int_eq(link(path, keep), 0);
  }
  char cmd[2400];
  snprintf(cmd, sizeof cmd, "scripts/mkcerts --config '%s/roles-pre.yaml' --out '%s/roles' "
           "--force > /dev/null", dir, dir);
  ck_assert_int_eq(system(cmd), 0);
  for (size_t i = 0; i < 4; i++) {
    struct stat st;
    snprintf(path, sizeof path, "%s/roles/%s", dir, kept[i]);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_msg(st.st_ino != old[i], "%s was rewritten in place, mode 644", kept[i]);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
  }
}
END_TEST

/* README "Running psd as its own user": on mkcerts' output, psd run as
 * another user (nobody, group nogroup for psd's) reads its files once the
 * recipe gives it the key, the secret and (mode 710) the directory; only
 * the key and secret, the recipe's old form, left it "Permission denied"
 * on the directory.  Needs root (and setpriv) to switch users. */
START_TEST(test_sec_own_user_recipe) {
  if (geteuid() != 0 || system("command -v setpriv > /dev/null") != 0)
    PS_SKIP("needs root and setpriv to run psd -t as another user");
  char dir[600], path[700], cmd[3000], log[700];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  ck_assert_int_eq(chmod(dir, 0711), 0); /* (mkdtemp's 700: nobody could not reach the files) */
  ck_assert_int_eq(sec_mkcerts(dir, "own"), 0);
  snprintf(path, sizeof path, "%s/own.yaml", dir);
  char *sec = ps_test_read_file(path, NULL);
  snprintf(path, sizeof path, "%s/own-cluster.yaml", dir);
  char yaml[8192];
  snprintf(yaml, sizeof yaml, "cluster: test\n%sshards:\n  - {id: 0, grpc: '127.0.0.1:1', "
           "channel: '127.0.0.1:2', data_dir: /x}\n", sec);
  free(sec);
  ps_test_write_file(path, yaml);
  ck_assert_int_eq(chmod(path, 0644), 0);
  snprintf(log, sizeof log, "%s/own.log", dir);
  snprintf(cmd, sizeof cmd, "chown nobody:nogroup '%s/own/shard.key' '%s/own/cluster.secret' && "
           "setpriv --reuid=nobody --regid=nogroup --clear-groups '%s' -t --config '%s' "
           ">> '%s' 2>&1", dir, dir, ps_test_bin("psd"), path, log);
  int rc = system(cmd);
  char *out = ps_test_read_file(log, NULL);
  ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) == 2 && strstr(out, "Permission denied"),
                "exit %d: %s", rc, out);
  free(out);
  snprintf(cmd, sizeof cmd, "chown root:nogroup '%s/own' && chmod 710 '%s/own' && "
           "setpriv --reuid=nobody --regid=nogroup --clear-groups '%s' -t --config '%s' "
           ">> '%s' 2>&1", dir, dir, ps_test_bin("psd"), path, log);
  rc = system(cmd);
  out = ps_test_read_file(log, NULL);
  ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) == 0 && strstr(out, "configuration ok"),
                "exit %d: %s", rc, out);
  free(out);
}
END_TEST

/* sec_v6_loopback says whether this host has [::1] to bind. */
static int sec_v6_loopback(void) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
  if (fd >= 0) close(fd);
  return ok;
}

/* psd warns of plaintext gRPC and an unauthenticated channel only on an
 * address other hosts can reach: loopback however it is written
 * (LOCALHOST, [0:0::1]) is none.  It compared the text with
 * "localhost", "::1" and "127." and warned of both. */
START_TEST(test_sec_plaintext_loopback) {
  char dir[600], path[700], log[700], gfrom[64], gto[64], cfrom[64], cto[64];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp, cp;
  const char *saved = ps_test_security_yaml;
  ps_test_security_yaml = "security:\n  mode: none\n";
  const char *yaml = ps_test_cluster_yaml(dir, 1, NULL, &gp, &cp);
  ps_test_security_yaml = saved;
  int v6 = sec_v6_loopback();
  snprintf(gfrom, sizeof gfrom, "grpc: 127.0.0.1:%d\n", gp);
  snprintf(gto, sizeof gto, "grpc: LOCALHOST:%d\n", gp);
  snprintf(cfrom, sizeof cfrom, "channel: 127.0.0.1:%d\n", cp);
  snprintf(cto, sizeof cto, v6 ? "channel: '[0:0::1]:%d'\n" : "channel: 127.0.0.9:%d\n",
           cp); /* (no ::1: another loopback address) */
  snprintf(path, sizeof path, "%s/loop.yaml", dir);
  ps_test_file_replace(yaml, path, gfrom, gto);
  ps_test_file_replace(path, path, cfrom, cto);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  pid_t pid = ps_test_psd(path, 0, log, NULL);
  char *text = NULL;
  for (int i = 0; i < 300 && (!text || !strstr(text, "shard 0 serving")); i++) {
    free(text);
    usleep(50000);
    text = ps_test_read_file(log, NULL);
  }
  ck_assert_int_eq(WEXITSTATUS(ps_test_stop(pid, SIGTERM, 10000)), 0);
  free(text);
  text = ps_test_read_file(log, NULL);
  ck_assert_msg(strstr(text, "shard 0 serving"), "psd did not serve (channel %s): %s", cto, text);
  ck_assert_msg(!strstr(text, "non-loopback"), "warned of a loopback address: %s", text);
  free(text);
}
END_TEST

/* ---- certificate reload and expiry ----------------------------------------- */

/* rel_resign rewrites DIR/WHAT.pem (mkcerts' "shard" or "ca") re-signed
 * by the CA in DIR with serial SERIAL, valid from a minute ago for
 * VALID_S seconds: the same subject, SANs and key, so the same pair. */
static void rel_resign(const char *dir, const char *what, long serial, long valid_s) {
  char path[1024];
  X509 *ca = NULL, *x = NULL;
  EVP_PKEY *cakey = NULL;
  snprintf(path, sizeof path, "%s/ca.pem", dir);
  FILE *f = fopen(path, "r");
  ck_assert(f && (ca = PEM_read_X509(f, NULL, NULL, NULL)));
  fclose(f);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  f = fopen(path, "r");
  ck_assert(f && (cakey = PEM_read_PrivateKey(f, NULL, NULL, NULL)));
  fclose(f);
  snprintf(path, sizeof path, "%s/%s.pem", dir, what);
  f = fopen(path, "r");
  ck_assert(f && (x = PEM_read_X509(f, NULL, NULL, NULL)));
  fclose(f);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), valid_s);
  X509_set_issuer_name(x, X509_get_subject_name(ca));
  ck_assert(X509_sign(x, cakey, EVP_sha256()) > 0);
  f = fopen(path, "w");
  ck_assert(f && PEM_write_X509(f, x));
  fclose(f);
  X509_free(x);
  X509_free(ca);
  EVP_PKEY_free(cakey);
}

/* rel_serial makes a new TLS connection to 127.0.0.1:PORT (ALPN h2, the
 * worker pair in DIR) and returns the serial of the certificate the
 * server presents (-1 for one over a long: mkcerts' random ones); -2
 * when the handshake fails. */
static long rel_serial(int port, const char *dir) {
  char cert[1024], key[1024];
  snprintf(cert, sizeof cert, "%s/worker.pem", dir);
  snprintf(key, sizeof key, "%s/worker.key", dir);
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  ck_assert(ctx);
  static const unsigned char alpn[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn);
  SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM);
  SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {5, 0}; /* a bounded handshake */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  long serial = -2;
  SSL *ssl = NULL;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && (ssl = SSL_new(ctx))) {
    SSL_set_fd(ssl, fd);
    X509 *peer = SSL_connect(ssl) == 1 ? SSL_get1_peer_certificate(ssl) : NULL;
    if (peer) serial = ASN1_INTEGER_get(X509_get0_serialNumber(peer));
    X509_free(peer);
  }
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);
  return serial;
}

/* rel_wait_log waits up to MS for TEXT in the file at LOG: 1 or 0. */
static int rel_wait_log(const char *log, const char *text, int ms) {
  int64_t end = ps_test_now_ms() + ms;
  for (;;) {
    char *s = access(log, F_OK) == 0 ? ps_test_read_file(log, NULL) : NULL;
    int found = s && strstr(s, text);
    free(s);
    if (found) return 1;
    if (ps_test_now_ms() >= end) return 0;
    usleep(50000);
  }
}

/* rel_cluster makes certificates (scripts/mkcerts) in DIR/NAME and a
 * one-shard cluster file that uses them (its path; ports in *GP, *CP). */
static const char *rel_cluster(const char *dir, const char *name, int *gp, int *cp) {
  char path[700];
  ck_assert_int_eq(sec_mkcerts(dir, name), 0);
  snprintf(path, sizeof path, "%s/%s.yaml", dir, name);
  char *sec = ps_test_read_file(path, NULL);
  const char *saved = ps_test_security_yaml;
  ps_test_security_yaml = sec;
  const char *yaml = ps_test_cluster_yaml(dir, 1, "workers:\n  count: 1\n", gp, cp);
  ps_test_security_yaml = saved;
  free(sec);
  return yaml;
}

/* rel_status calls Status as the operator of the file at YAML on
 * 127.0.0.1:PORT over R (NULL: a new channel, closed after); 0 or the
 * PS_E* code. */
static int rel_status(ps_rpc *r, const char *yaml, int port, ps_errbuf *eb) {
  ps_config cfg;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  int rc = ps_config_load(&cfg, yaml, eb);
  if (rc < 0) return rc; /* (nothing to release) */
  ps_rpc *own = NULL;
  if (rc == 0 && !r) rc = ps_rpc_open_cfg(&own, addr, &cfg, PS_ROLE_OPERATOR, eb);
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  Ps__StatusReply *rep = NULL;
  if (rc == 0)
    rc = ps_rpc_call(r ? r : own, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                     (ProtobufCMessage **)&rep, 5000, eb);
  if (rep) ps__status_reply__free_unpacked(rep, NULL);
  ps_rpc_close(own);
  ps_config_release(&cfg);
  return rc;
}

/* SIGHUP reloads the shard's TLS certificate, key and CA for new
 * connections (they were read once at start: a renewed certificate
 * needed a restart, an expired one cut off every new client): a
 * re-signed certificate is what new handshakes get, a channel opened
 * before keeps working, a bad file keeps the old pair (an error in the
 * log), and a CA file holding the old and a new CA lets clients of
 * either in (the CA rollover README.md describes). */
START_TEST(test_sec_cert_reload) {
  char dir[600], certs[700], log[700], opyaml[700], ca[800], both[700];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp, cp;
  const char *yaml = rel_cluster(dir, "rel", &gp, &cp);
  char cyaml[700];
  snprintf(cyaml, sizeof cyaml, "%s", yaml);
  ck_assert_int_eq(sec_mkcerts(dir, "next"), 0);
  snprintf(certs, sizeof certs, "%s/rel", dir);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  pid_t pid = ps_test_psd(cyaml, 0, log, NULL);
  ck_assert_msg(ps_test_wait_port(cp, 15000) == 0 && ps_test_wait_port(gp, 5000) == 0,
                "psd did not start: see %s", log);
  ck_assert_msg(rel_wait_log(log, "shard 0 serving", 10000), "psd did not serve: see %s", log);
  long first = rel_serial(gp, certs);
  ck_assert_msg(first != -2 && first != 4242, "serial %ld", first);
  ps_config cfg;
  ps_errbuf eb;
  ck_assert_msg(ps_config_load(&cfg, cyaml, &eb) == 0, "%s", eb.msg);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", gp);
  ps_rpc *old;
  ck_assert_msg(ps_rpc_open_cfg(&old, addr, &cfg, PS_ROLE_OPERATOR, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(rel_status(old, cyaml, gp, &eb) == 0, "%s", eb.msg);
  /* a renewed certificate (the same key, a new serial), then SIGHUP */
  rel_resign(certs, "shard", 4242, 100L * 86400);
  ck_assert_int_eq(kill(pid, SIGHUP), 0);
  int64_t end = ps_test_now_ms() + 10000;
  long now;
  while ((now = rel_serial(gp, certs)) != 4242 && ps_test_now_ms() < end) usleep(100000);
  ck_assert_msg(now == 4242, "after SIGHUP new connections get serial %ld, not the renewed "
                "certificate's 4242: see %s", now, log);
  ck_assert_msg(rel_wait_log(log, "sighup: TLS certificate reloaded", 5000), "see %s", log);
  ck_assert_msg(rel_status(old, cyaml, gp, &eb) == 0, "the channel opened before: %s", eb.msg);
  ck_assert_msg(rel_status(NULL, cyaml, gp, &eb) == 0, "a new channel: %s", eb.msg);
  /* a bad file: the error in the log, the renewed pair stays */
  char shard[800], *good;
  snprintf(shard, sizeof shard, "%s/shard.pem", certs);
  good = ps_test_read_file(shard, NULL);
  ps_test_write_file(shard, "not a certificate\n");
  ck_assert_int_eq(kill(pid, SIGHUP), 0);
  ck_assert_msg(rel_wait_log(log, "sighup: TLS certificate not reloaded", 5000), "see %s", log);
  ck_assert_int_eq(rel_serial(gp, certs), 4242);
  ck_assert_msg(rel_status(NULL, cyaml, gp, &eb) == 0, "after a bad file: %s", eb.msg);
  ps_test_write_file(shard, good);
  free(good);
  /* CA rollover: the CA file holds the old and the new CA; an operator of
   * the new CA is refused until the shard reloads it */
  snprintf(ca, sizeof ca, "%s/ca.pem", certs);
  char *oldca = ps_test_read_file(ca, NULL);
  snprintf(both, sizeof both, "%s/next/ca.pem", dir);
  char *newca = ps_test_read_file(both, NULL);
  size_t len = strlen(oldca) + strlen(newca) + 1;
  char *text = malloc(len);
  snprintf(text, len, "%s%s", oldca, newca);
  ps_test_write_file(ca, text);
  snprintf(opyaml, sizeof opyaml, "%s/next-op.yaml", dir);
  ps_test_file_replace(cyaml, opyaml, "rel/operator.pem", "next/operator.pem");
  ps_test_file_replace(opyaml, opyaml, "rel/operator.key", "next/operator.key");
  ck_assert_int_ne(rel_status(NULL, opyaml, gp, &eb), 0);
  ck_assert_int_eq(kill(pid, SIGHUP), 0);
  end = ps_test_now_ms() + 10000;
  int rc;
  while ((rc = rel_status(NULL, opyaml, gp, &eb)) != 0 && ps_test_now_ms() < end) usleep(100000);
  ck_assert_msg(rc == 0, "an operator of the new CA after SIGHUP: %s", eb.msg);
  ck_assert_msg(rel_status(NULL, cyaml, gp, &eb) == 0, "an operator of the old CA: %s", eb.msg);
  free(text);
  free(oldca);
  free(newca);
  ps_rpc_close(old);
  ps_config_release(&cfg);
  ck_assert_int_eq(WEXITSTATUS(ps_test_stop(pid, SIGTERM, 10000)), 0);
}
END_TEST

/* Expiry: psd -t and psd's start warn of a certificate (the shard's, the
 * CA's) that expires within 30 days, naming the file and the date (they
 * said "configuration ok" of one 50 s from its end), and a running psd
 * logs when its certificate has expired: clients then fail with
 * "certificate verify failed", and the log said nothing of why. */
START_TEST(test_sec_cert_expiry) {
  char dir[600], certs[700], log[700];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp, cp;
  const char *yaml = rel_cluster(dir, "exp", &gp, &cp);
  char cyaml[700];
  snprintf(cyaml, sizeof cyaml, "%s", yaml);
  snprintf(certs, sizeof certs, "%s/exp", dir);
  snprintf(log, sizeof log, "%s/t1.log", dir); /* a log each: ps_test_run appends */
  char *out;
  ck_assert_int_eq(sec_t(cyaml, NULL, 0, log, &out), 0);
  ck_assert_msg(!strstr(out, "warning"), "%s", out);
  free(out);
  rel_resign(certs, "shard", 11, 50);
  snprintf(log, sizeof log, "%s/t2.log", dir);
  ck_assert_int_eq(sec_t(cyaml, NULL, 0, log, &out), 0);
  ck_assert_msg(strstr(out, "warning") && strstr(out, "exp/shard.pem' expires on") &&
                    strstr(out, " GMT (in "),
                "%s", out);
  free(out);
  rel_resign(certs, "ca", 12, 20L * 86400); /* the CA itself: 20 days left */
  rel_resign(certs, "shard", 13, 100L * 86400);
  snprintf(log, sizeof log, "%s/t3.log", dir);
  ck_assert_int_eq(sec_t(cyaml, NULL, 1, log, &out), 0);
  ck_assert_msg(strstr(out, "exp/ca.pem' expires on") && !strstr(out, "shard.pem' expires"),
                "%s", out);
  free(out);
  /* a shard whose certificate ends 4 s after it starts: its start warns,
   * and its log says when it has expired */
  rel_resign(certs, "ca", 14, 100L * 86400);
  rel_resign(certs, "shard", 15, 4);
  snprintf(log, sizeof log, "%s/psd.log", dir);
  pid_t pid = ps_test_psd(cyaml, 0, log, NULL);
  ck_assert_msg(rel_wait_log(log, "shard.pem' expires on", 10000), "see %s", log);
  ck_assert_msg(rel_wait_log(log, "shard.pem' expired on", 15000),
                "no log line when the certificate expired: see %s", log);
  ck_assert_int_eq(WEXITSTATUS(ps_test_stop(pid, SIGTERM, 10000)), 0);
  out = ps_test_read_file(log, NULL);
  const char *at = strstr(out, "expired on");
  ck_assert_msg(at && !strstr(at + 1, "expired on"), "said once: %s", out);
  free(out);
}
END_TEST

/* psd -t warns of plaintext on a non-loopback address as a start does
 * (README: mode none "warns at start"): a file with a shard on 0.0.0.0
 * and a channel on 10.1.2.3 printed "configuration ok" alone.  The
 * loopback file gets no warning. */
START_TEST(test_sec_t_plaintext) {
  char dir[600], path[700], log[700], from[64], to[64];
  snprintf(dir, sizeof dir, "%s", ps_test_tmpdir());
  int gp, cp;
  const char *saved = ps_test_security_yaml;
  ps_test_security_yaml = "security:\n  mode: none\n";
  const char *yaml = ps_test_cluster_yaml(dir, 1, NULL, &gp, &cp);
  ps_test_security_yaml = saved;
  char *out;
  snprintf(log, sizeof log, "%s/t-loop.log", dir);
  ck_assert_int_eq(sec_t(yaml, NULL, 0, log, &out), 0);
  ck_assert_msg(!strstr(out, "non-loopback"), "warned of a loopback address: %s", out);
  free(out);
  snprintf(path, sizeof path, "%s/open.yaml", dir);
  snprintf(from, sizeof from, "grpc: 127.0.0.1:%d\n", gp);
  snprintf(to, sizeof to, "grpc: 0.0.0.0:%d\n", gp);
  ps_test_file_replace(yaml, path, from, to);
  snprintf(from, sizeof from, "channel: 127.0.0.1:%d\n", cp);
  snprintf(to, sizeof to, "channel: 10.1.2.3:%d\n", cp);
  ps_test_file_replace(path, path, from, to);
  for (int shard = 0; shard < 2; shard++) { /* the whole file, and --shard 0 */
    snprintf(log, sizeof log, "%s/t-open%d.log", dir, shard);
    ck_assert_int_eq(sec_t(path, NULL, shard, log, &out), 0);
    ck_assert_msg(strstr(out, "configuration ok") && strstr(out, "warning:") &&
                      strstr(out, "plaintext (security.mode: none) would be served on the "
                                  "non-loopback address '0.0.0.0:") &&
                      strstr(out, "without authentication (no security.secret_file) would be "
                                  "served on the non-loopback address '10.1.2.3:"),
                  "--shard %d: %s", shard, out);
    free(out);
  }
}
END_TEST

/* Every rpc of ps.proto's services has the roles it was given on purpose
 * in the shard's method table (psd_grpc_methods): a method left out of it
 * is refused to everyone (and a table that let it through would let it
 * to every role), so a new rpc fails here until it is classed both in
 * the table and in the list below, which says the roles README
 * ("Security") promises for each. */
START_TEST(test_sec_method_table) {
  static const struct {
    const char *name;
    unsigned roles;
  } want[] = {
      {"SubmitModel", PS_ROLES_OPERATOR},  {"GetModel", PS_ROLES_CLIENT},
      {"Push", PS_ROLES_CLIENT},           {"Pull", PS_ROLES_CLIENT},
      {"Status", PS_ROLES_CLIENT},         {"Export", PS_ROLES_CLIENT},
      {"RegisterWorker", PS_ROLES_CLIENT}, {"Heartbeat", PS_ROLES_CLIENT},
      {"ListWorkers", PS_ROLES_CLIENT},    {"SparsePull", PS_ROLES_CLIENT},
      {"SparsePush", PS_ROLES_CLIENT},     {"ExportRows", PS_ROLES_OPERATOR},
      {"Check", PS_ROLES_ANY},
  };
  const ProtobufCServiceDescriptor *svc[] = {&ps__ps__descriptor,
                                             &grpc__health__v1__health__descriptor};
  size_t n = 0;
  for (size_t s = 0; s < sizeof svc / sizeof svc[0]; s++)
    for (unsigned i = 0; i < svc[s]->n_methods; i++, n++) {
      const char *name = svc[s]->methods[i].name;
      char path[200];
      snprintf(path, sizeof path, "/%s/%s", svc[s]->name, name);
      int roles = psd_grpc_method_roles(path);
      ck_assert_msg(roles >= 0, "'%s' (proto) is not in psd_grpc_methods: every role is refused "
                    "it; class it there", path);
      size_t k = 0;
      while (k < sizeof want / sizeof want[0] && strcmp(want[k].name, name)) k++;
      ck_assert_msg(k < sizeof want / sizeof want[0], "'%s' has no roles in this test: say who "
                    "may call it here and in README \"Security\"", path);
      ck_assert_msg((unsigned)roles == want[k].roles, "'%s': psd_grpc_methods lets roles 0x%x "
                    "call it, this test 0x%x", path, (unsigned)roles, want[k].roles);
    }
  ck_assert_uint_eq(psd_grpc_method_count(), n); /* no method the protos lack */
  ck_assert_uint_eq(sizeof want / sizeof want[0], n);
  ck_assert_int_eq(psd_grpc_method_roles("/ps.Ps/Nope"), -1);
  ck_assert_int_eq(psd_grpc_method_roles("/ps.Ps/push"), -1);
}
END_TEST

Suite *security_suite(void) {
  Suite *s = suite_create("security");
  TCase *tc = tcase_create("mtls");
  tcase_add_unchecked_fixture(tc, sec_up, sec_down);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_sec_no_credentials);
  tcase_add_test(tc, test_sec_wrong_certificate);
  tcase_add_test(tc, test_sec_pair_checked);
  tcase_add_test(tc, test_sec_aggregator_checked);
  tcase_add_test(tc, test_sec_roles);
  tcase_add_test(tc, test_sec_role_methods);
  tcase_add_test(tc, test_sec_replayed_hello);
  tcase_add_test(tc, test_sec_wrong_secret);
  tcase_add_test(tc, test_sec_hello_shm_granted);
  tcase_add_test(tc, test_sec_python_health);
  tcase_add_test(tc, test_sec_bench_names_mode);
  tcase_add_test(tc, test_sec_file_modes);
  tcase_add_test(tc, test_sec_key_rotation);
  tcase_add_test(tc, test_sec_client_key_rotation);
  tcase_add_test(tc, test_sec_client_key_shared_file);
  tcase_add_test(tc, test_sec_hello_worker_needs_worker_key);
  tcase_add_test(tc, test_sec_handshake_refused);
  tcase_add_test(tc, test_sec_role_spoofed_cn);
  suite_add_tcase(s, tc);
  tc = tcase_create("limits");
  tcase_add_unchecked_fixture(tc, lim_up, lim_down);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_sec_log_injection);
  tcase_add_test(tc, test_sec_hello_deadline);
  suite_add_tcase(s, tc);
  tc = tcase_create("payload_mac");
  tcase_add_unchecked_fixture(tc, mac_up, mac_down);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_sec_mac_round_trip);
  tcase_add_test(tc, test_sec_mac_tampered);
  tcase_add_test(tc, test_sec_mac_replayed);
  tcase_add_test(tc, test_sec_hello_fields_tampered);
  tcase_add_test(tc, test_sec_hello_reply_tampered);
  tcase_add_test(tc, test_sec_hello_middleman_clients);
  tcase_add_test(tc, test_sec_mac_async_client);
  suite_add_tcase(s, tc);
  tc = tcase_create("unit");
  tcase_add_test(tc, test_sec_role_subject);
  tcase_add_test(tc, test_sec_method_table);
  tcase_add_test(tc, test_sec_role_cache);
  tcase_add_test(tc, test_sec_proof_cluster_whole);
  tcase_add_test(tc, test_sec_file_names_key);
  tcase_add_test(tc, test_sec_mkcerts_hosts);
  tcase_add_test(tc, test_sec_mkcerts_role_secrets);
  tcase_add_test(tc, test_sec_own_user_recipe);
  suite_add_tcase(s, tc);
  tc = tcase_create("plaintext");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_sec_plaintext_loopback);
  tcase_add_test(tc, test_sec_t_plaintext);
  suite_add_tcase(s, tc);
  tc = tcase_create("cert_reload");
  tcase_add_unchecked_fixture(tc, ps_test_procs_setup, ps_test_procs_teardown);
  tcase_set_timeout(tc, 90);
  tcase_add_test(tc, test_sec_cert_reload);
  tcase_add_test(tc, test_sec_cert_expiry);
  suite_add_tcase(s, tc);
  return s;
}
