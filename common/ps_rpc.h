/* ps_rpc: a blocking gRPC core client for unary calls with protobuf-c
 * messages (psctl, psw, tests).
 *
 * Thread-safe: one ps_rpc may be used by several threads at once (each
 * call has its own completion queue).  Message size limits are raised to
 * PS_RPC_MAX_MSG on the channel. */
#ifndef PS_RPC_H
#define PS_RPC_H

#include <protobuf-c/protobuf-c.h>
#include <signal.h>

#include "ps_config.h"
#include "ps_error.h"

#define PS_RPC_MAX_MSG (1 << 30)
/* A gRPC connection whose peer acknowledged nothing for this long is
 * given up by the kernel (TCP_USER_TIMEOUT, through gRPC's keepalive
 * timeout; keepalive pings themselves stay off in practice: an hour), so
 * that after a network cut the next call connects afresh instead of
 * waiting out TCP's retransmission backoff on the old connection, which
 * may leave the next retransmission several seconds past the heal. */
#define PS_RPC_DEAD_MS 5000

typedef struct ps_rpc ps_rpc;

/* ps_grpc_init is grpc_init (balanced by grpc_shutdown) for every use of
 * gRPC in a process (ps_rpc_open, psd's server), so that gRPC reads, at
 * its first one, a backup poll of PS_RPC_BACKUP_POLL_MS
 * (GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS, set in the environment
 * unless it is there already).  Its default, 5 s, is how late a channel
 * learned of a connection attempt's end when no call was waiting on it:
 * a channel in TRANSIENT_FAILURE fails calls at once, without polling,
 * so a shard restarted on the same port was reached 5 to 10 s after its
 * port opened (the attempt begun before was refused, the next one
 * connected, each seen at a backup poll only), whatever the backoff. */
#define PS_RPC_BACKUP_POLL_MS 100
void ps_grpc_init(void);

/* ps_grpc_env sets that variable (unless the environment has it); the
 * programs' mains call it first, before any thread exists (setenv races
 * with another thread's getenv), and ps_grpc_init once for the others. */
void ps_grpc_env(void);

/* ps_rpc_open creates an insecure channel to ADDR ("host:port"); it does
 * not connect yet.  Calls ps_grpc_init (balanced by ps_rpc_close). */
int ps_rpc_open(ps_rpc **out, const char *addr, ps_errbuf *eb);

/* ps_rpc_open_cfg is ps_rpc_open with the credentials CFG's 'security'
 * section asks for (ps_tls.h): plaintext for mode none, else TLS with
 * ROLE's client certificate (ps_auth.h PS_ROLE_*).  PS_ECONFIG when a
 * certificate or key cannot be read (or a key is not owner-only). */
int ps_rpc_open_cfg(ps_rpc **out, const char *addr, const ps_config *cfg, int role,
                    ps_errbuf *eb);

/* ps_rpc_call calls METHOD ("/ps.Ps/Status") with REQ and waits at most
 * TIMEOUT_MS.  On success *RESP is a new message of RESP_DESC (caller frees
 * with protobuf_c_message_free_unpacked(*resp, NULL)).  Errors: the gRPC
 * status converted with ps_err_from_grpc (PS_EUNAVAIL when the server
 * cannot be reached, PS_ETIMEDOUT past the deadline), with the server's
 * status message in EB. */
int ps_rpc_call(ps_rpc *r, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                int timeout_ms, ps_errbuf *eb);

/* ps_rpc_call_stop is ps_rpc_call that a stop can end: its wait looks at
 * *STOP (a signal handler's flag; NULL: never) every PS_RPC_STOP_POLL_MS,
 * and once *STOP has been set for GRACE_MS (0: at once) the call is
 * cancelled and fails with PS_ESHUTDOWN (EB says "stopped"); whether the
 * server acted on it is then not known (an answer that came before the
 * cancel took effect is returned as usual). */
#define PS_RPC_STOP_POLL_MS 100
int ps_rpc_call_stop(ps_rpc *r, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                     int timeout_ms, volatile sig_atomic_t *stop, int grace_ms, ps_errbuf *eb);

/* ps_rpc_call_raw is ps_rpc_call on serialized bytes: *RESP (caller frees
 * with free()) receives the reply's bytes. */
int ps_rpc_call_raw(ps_rpc *r, const char *method, const void *req, size_t req_len,
                    void **resp, size_t *resp_len, int timeout_ms, ps_errbuf *eb);

/* The result of one call of ps_rpc_call_all. */
typedef struct ps_rpc_reply {
  int err;                 /* 0 or a PS_E* code */
  ps_errbuf eb;            /* message when err < 0 */
  ProtobufCMessage *resp;  /* reply when err == 0; freed by ps_rpc_replies_free */
  double ms;               /* round-trip time in milliseconds (0 when never sent) */
} ps_rpc_reply;

/* ps_rpc_call_all calls METHOD with REQ on each of the N channels R[0..N)
 * at once and waits at most TIMEOUT_MS for them all: one deadline for the
 * lot, so servers that do not answer cost the round one timeout, not one
 * each.  OUT has N entries (caller-owned; free the replies with
 * ps_rpc_replies_free).  Returns how many calls failed. */
int ps_rpc_call_all(ps_rpc *const *r, size_t n, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, int timeout_ms,
                    ps_rpc_reply *out);

/* ps_rpc_replies_free frees the replies in OUT[0..N) and zeroes them. */
void ps_rpc_replies_free(ps_rpc_reply *out, size_t n);

/* ps_rpc_explain_handshake looks at a call to ADDR that failed with ERR
 * (message in EB): when gRPC could not connect for a reason a failed
 * handshake gives ("Socket closed", "Handshake failed", a reset) and a
 * plain TCP connect to ADDR completes now, within TIMEOUT_MS, the server
 * listens but refused this client's TLS, or plaintext: EB is rewritten to
 * say so and what to check (security.mode, the certificate), and it
 * returns 1.  Else 0, EB untouched: an address nobody listens on stays
 * unreachable. */
int ps_rpc_explain_handshake(const char *addr, int err, ps_errbuf *eb, int timeout_ms);

void ps_rpc_close(ps_rpc *r);

/* ps_rpc_reset_backoff makes R's channel try to connect again at its next
 * call, not after gRPC's reconnect backoff (1 s growing 1.6 times a try:
 * 9 s and more after a peer that was down for 5 s), whose calls fail at
 * once meanwhile.  For a caller that retries on its own schedule, before
 * each retry (a worker reaching a restarted coordinator within its
 * lease); thread-safe. */
void ps_rpc_reset_backoff(ps_rpc *r);

#endif
