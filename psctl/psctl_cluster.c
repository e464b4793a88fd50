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
  return ps_rpc_call_all(c->rpc, c->cfg.nshards, method, req, resp_desc, timeout_ms, out);
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
