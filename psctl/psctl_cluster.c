/* psctl_cluster: the helpers every subcommand shares (psctl.h):
 * psctl_cluster_open/close, psctl_call_all and the option parsers. */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "psctl.h"

#include "ps_auth.h"

/* psctl_cluster_open: see psctl.h. */
int psctl_cluster_open(psctl_cluster *c, const char *path, ps_errbuf *eb) {
  memset(c, 0, sizeof *c);
  int err = ps_config_load(&c->cfg, path ? path : PSCTL_DEFAULT_CONFIG, eb);
  if (err < 0) return err;
  ps_config_print_warnings(&c->cfg, stderr); /* as psd and psw: stdout may be --json */
  c->rpc = calloc(c->cfg.nshards ? c->cfg.nshards : 1, sizeof *c->rpc);
  if (!c->rpc) {
    err = ps_errf(eb, PS_ENOMEM, "out of memory");
    goto undo_config;
  }
  for (size_t i = 0; i < c->cfg.nshards; i++)
    if ((err = ps_rpc_open_cfg(&c->rpc[i], c->cfg.shards[i].grpc_addr, &c->cfg, PS_ROLE_OPERATOR,
                               eb)) < 0)
      goto undo_rpc;
  return 0;
undo_rpc:
  for (size_t i = 0; i < c->cfg.nshards; i++) ps_rpc_close(c->rpc[i]);
  free(c->rpc);
undo_config:
  ps_config_release(&c->cfg);
  memset(c, 0, sizeof *c);
  return err;
}

/* psctl_cluster_close: see psctl.h. */
void psctl_cluster_close(psctl_cluster *c) {
  if (c->rpc)
    for (size_t i = 0; i < c->cfg.nshards; i++) ps_rpc_close(c->rpc[i]);
  free(c->rpc);
  ps_config_release(&c->cfg);
  memset(c, 0, sizeof *c);
}

/* psctl_call_failed: see psctl.h. */
const char *psctl_call_failed(int err) {
  return err == PS_EPERM ? "refuses psctl" : err == PS_ETIMEDOUT ? "did not answer in time"
                                                                 : "is down";
}

/* psctl_call_all: see psctl.h. */
int psctl_call_all(psctl_cluster *c, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, int timeout_ms, psctl_reply *out) {
  int failed = ps_rpc_call_all(c->rpc, c->cfg.nshards, method, req, resp_desc, timeout_ms, out);
  for (size_t i = 0; failed > 0 && i < c->cfg.nshards; i++)
    out[i].err = psctl_explain_shard(c, i, out[i].err, &out[i].eb, timeout_ms);
  return failed;
}

/* psctl_explain_shard: see psctl.h. */
int psctl_explain_shard(const psctl_cluster *c, size_t i, int err, ps_errbuf *eb,
                        int timeout_ms) {
  return err < 0 && ps_rpc_explain_handshake(c->cfg.shards[i].grpc_addr, err, eb, timeout_ms)
             ? PS_EPERM
             : err;
}

/* psctl_mismatch: see psctl.h. */
int psctl_mismatch(const psctl_cluster *c, size_t i, const Ps__StatusReply *s, char *why,
                   size_t len) {
  const ps_config *f = &c->cfg;
  const ps_shard_conf *sc = &f->shards[i];
  const char *name = f->cluster ? f->cluster : "";
  int told = s->cluster && *s->cluster; /* a psd before the field sends "" */
  if (s->shard == sc->id &&
      (!told || (!strcmp(s->cluster, name) && s->cluster_shards == f->nshards &&
                 s->place_id == ps_config_place_id(f))))
    return 0;
  int n = told ? snprintf(why, len, "the shard at %s says it is shard %u of cluster '%s' with %u "
                                    "shard%s; this file says shard %u of '%s' with %zu",
                          sc->grpc_addr, s->shard, s->cluster, s->cluster_shards,
                          s->cluster_shards == 1 ? "" : "s", sc->id, name, f->nshards)
               : snprintf(why, len, "the shard at %s says it is shard %u; this file says shard %u",
                          sc->grpc_addr, s->shard, sc->id);
  if (n >= 0 && (size_t)n < len && told && s->shard == sc->id && !strcmp(s->cluster, name) &&
      s->cluster_shards == f->nshards)
    snprintf(why + n, len - (size_t)n, ", but other shard ids or another chunk_elems (chunks "
             "would be placed on other shards)");
  return 1;
}

/* psctl_check_cluster: see psctl.h. */
int psctl_check_cluster(psctl_cluster *c, const char *cmd, int timeout_ms, int all) {
  size_t n = c->cfg.nshards;
  psctl_reply *r = calloc(n ? n : 1, sizeof *r);
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  int bad = 0;
  char why[512];
  if (!r) return 0; /* the command's own calls will fail for want of memory */
  psctl_call_all(c, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor, timeout_ms, r);
  int other = 0;
  for (size_t i = 0; i < n; i++)
    if (r[i].err == 0 && psctl_mismatch(c, i, (const Ps__StatusReply *)r[i].resp, why, sizeof why)) {
      fprintf(stderr, "psctl %s: %s\n", cmd, why);
      other++;
    } else if (r[i].err && all) {
      fprintf(stderr, "psctl %s: shard %u (%s) %s: %s\n", cmd, c->cfg.shards[i].id,
              c->cfg.shards[i].grpc_addr, psctl_call_failed(r[i].err), r[i].eb.msg);
      bad++;
    }
  if (other)
    fprintf(stderr, "psctl %s: this cluster file (%s) does not describe the shards it names: use "
            "the cluster's own file (the one the shards were started with)\n", cmd, c->cfg.path);
  psctl_replies_free(r, n);
  free(r);
  return bad + other;
}

/* psctl_parse_u64: see psctl.h. */
int psctl_parse_u64(const char *cmd, const char *flag, const char *arg, uint64_t min,
                    uint64_t max, uint64_t *v) {
  char name[80];
  ps_errbuf eb;
  snprintf(name, sizeof name, "--%s", flag);
  if (ps_flag_uint(name, arg, min, max, v, &eb) < 0) {
    fprintf(stderr, "psctl %s: %s\n", cmd, eb.msg);
    return -1;
  }
  return 0;
}

/* psctl_parse_double: see psctl.h. */
int psctl_parse_double(const char *cmd, const char *flag, const char *arg, double min,
                       double max, double *v) {
  char name[80];
  ps_errbuf eb;
  snprintf(name, sizeof name, "--%s", flag);
  if (ps_flag_number(name, arg, min, max, v, &eb) < 0) {
    fprintf(stderr, "psctl %s: %s\n", cmd, eb.msg);
    return -1;
  }
  return 0;
}
