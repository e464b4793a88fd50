/* psctl: the operator CLI.  Subcommands and the helpers they share.
 *
 * Each subcommand is an entry point `int psctl_NAME_main(int argc, char
 * **argv)` (argv[0] is the subcommand's name) returning the process exit
 * code: 0 success, 1 failure, 2 usage or configuration error.  psctl_main.c
 * dispatches to them through a table.
 *
 * psctl_cluster loads the cluster YAML and opens one ps_rpc per shard;
 * psctl_call_all calls every shard at once with one deadline.  Not
 * thread-safe: one thread uses a psctl_cluster.
 *
 * psctl_parse_u64 / psctl_parse_double are the one way subcommands read a
 * numeric option. */
#ifndef PSCTL_H
#define PSCTL_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#include "ps.pb-c.h"
#include "ps_config.h"
#include "ps_error.h"
#include "ps_rpc.h"

#define PSCTL_DEFAULT_CONFIG "cluster.yaml"

int psctl_status_main(int argc, char **argv);
int psctl_submit_main(int argc, char **argv);
int psctl_model_main(int argc, char **argv);
int psctl_export_main(int argc, char **argv);
int psctl_bench_main(int argc, char **argv);

typedef struct psctl_cluster {
  ps_config cfg;     /* loaded; released by psctl_cluster_close */
  ps_rpc **rpc;      /* cfg.nshards channels, index = position in cfg.shards */
} psctl_cluster;

/* psctl_cluster_open loads PATH (NULL: PSCTL_DEFAULT_CONFIG) into *C and
 * opens a channel to every shard (no connection is made yet).  Returns 0,
 * PS_ECONFIG/PS_EIO with "file:line:col: message" in EB, or another PS_E*
 * code.  On error nothing is left to release. */
int psctl_cluster_open(psctl_cluster *c, const char *path, ps_errbuf *eb);

/* psctl_cluster_close closes the channels and releases the config;
 * idempotent on a zeroed or closed cluster. */
void psctl_cluster_close(psctl_cluster *c);

/* The result of one shard's call in psctl_call_all. */
typedef ps_rpc_reply psctl_reply;

/* psctl_call_all is ps_rpc_call_all with REQ on every shard of C.  OUT has
 * cfg.nshards entries (caller-owned; free the replies with
 * psctl_replies_free).  A call that failed because the shard's port took
 * the connection but its handshake failed (a certificate the shard
 * refuses, security.mode unlike the shard's) is PS_EPERM, its message
 * saying so (psctl_explain_shard).  Returns the number of shards whose
 * call failed (0: all answered). */
int psctl_call_all(psctl_cluster *c, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, int timeout_ms, psctl_reply *out);

/* psctl_explain_shard returns ERR, a call to shard I of C that failed with
 * message EB, as PS_EPERM with EB saying so when the shard's port takes
 * TCP connections but the handshake on them failed
 * (ps_rpc_explain_handshake: gRPC says only "failed to connect", and "is
 * down" sent the reader to a running shard's network instead of to
 * security.mode or the certificates); else ERR, EB untouched. */
int psctl_explain_shard(const psctl_cluster *c, size_t i, int err, ps_errbuf *eb, int timeout_ms);

/* psctl_call_failed says how a shard's call failed with ERR, after "shard
 * N (ADDR) ": "refuses psctl" (its certificate's role), "did not answer
 * in time", else "is down". */
const char *psctl_call_failed(int err);

/* psctl_mismatch says whether shard I of C's file is the shard whose
 * Status is S: 0 when it is, or when S cannot tell (a psd too old to send
 * its cluster: only its id is compared); 1 after writing to WHY (LEN
 * bytes) "the shard at ADDR says it is shard K of cluster 'X' with N
 * shards; this file says ...".  A file of another cluster, or listing
 * other shards, places chunks elsewhere: submit would register a model
 * on some of the cluster's shards only and export would read the wrong
 * ones. */
int psctl_mismatch(const psctl_cluster *c, size_t i, const Ps__StatusReply *s, char *why,
                   size_t len);

/* psctl_check_cluster asks every shard of C for Status (deadline
 * TIMEOUT_MS) and prints "psctl CMD: " and psctl_mismatch's message to
 * stderr for each one that is not the shard the file says.  Shards that do
 * not answer are left to the command's own calls, unless ALL: then each
 * is said ("shard N (ADDR) did not answer in time: ...") and counted.
 * Returns the number of shards found wanting. */
int psctl_check_cluster(psctl_cluster *c, const char *cmd, int timeout_ms, int all);

/* psctl_replies_free frees the replies in OUT[0..N) and zeroes them. */
#define psctl_replies_free ps_rpc_replies_free

/* psctl_parse_u64 parses ARG, the value of --FLAG of `psctl CMD`, as a whole
 * decimal integer in [MIN, MAX] into *V, as every integer flag reads one
 * (ps_flag_uint: digits only, no leading zero).  0, or -1 after printing
 * "psctl CMD: --FLAG wants an integer in [MIN, MAX], got 'ARG': WHY" to
 * stderr, WHY saying what is wrong (*V is then untouched; the caller
 * exits 2). */
int psctl_parse_u64(const char *cmd, const char *flag, const char *arg, uint64_t min,
                    uint64_t max, uint64_t *v);

/* psctl_parse_double parses ARG, the value of --FLAG of `psctl CMD`, as a
 * number in [MIN, MAX] into *V, as the cluster file reads one
 * (ps_flag_number: decimals, exponents, fractions "A/B"; hex, nan, inf,
 * blanks, trailing junk, leading zeros and over/underflow refused); when
 * MIN >= 0 any sign is refused too.  0, or -1 after printing "psctl CMD:
 * ps_flag_number's message" to stderr ("--FLAG wants a number [in [MIN,
 * MAX]|>= MIN], got 'ARG': WHY"; *V is then untouched; the caller exits 2). */
int psctl_parse_double(const char *cmd, const char *flag, const char *arg, double min,
                       double max, double *v);

/* psctl_json_double writes V as a JSON number formatted by FMT (one
 * double conversion: "%.3f", "%.7g") into BUF and returns BUF, or returns
 * "null" when V is not finite (JSON has no nan or inf); a value too wide
 * for FMT in 64 bytes is written "%.17g".  Every number
 * psctl's JSON output prints from a double goes through it. */
const char *psctl_json_double(char buf[64], const char *fmt, double v);

#endif
