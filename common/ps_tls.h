/* ps_tls: gRPC credentials from the cluster file's 'security' section.
 *
 * mode none: insecure credentials (plaintext).  mode tls: gRPC core's SSL
 * credentials: the shard presents tls.cert (with IP SANs: clients check
 * the address they dial against them) and verifies client certificates
 * against tls.ca, requiring one when security.require_client_cert; a
 * client verifies the shard against tls.ca and presents its role's pair
 * (psw: worker_cert, psctl: operator_cert).  Private keys must be readable
 * by their owner only (ps_auth_private_file).  Thread-safe. */
#ifndef PS_TLS_H
#define PS_TLS_H

#include <grpc/grpc_security.h>
#include <stdint.h>

#include "ps_config.h"
#include "ps_error.h"

/* ps_tls_read reads PATH whole into a NUL-terminated buffer (caller frees
 * with ps_tls_free_secret when PRIVATE, else free); a PRIVATE file is
 * first checked with ps_auth_private_file.  0, PS_ECONFIG or PS_EIO. */
int ps_tls_read(const char *path, int private_, char **out, ps_errbuf *eb);

/* ps_tls_free_secret wipes and frees a buffer of ps_tls_read. */
void ps_tls_free_secret(char *p);

/* ps_tls_check reads CA, CERT and KEY (CERT and KEY may be NULL: only
 * CA is read) and checks the pair as the credentials below do before
 * gRPC gets it: KEY is CERT's private key, CERT is valid now and chains
 * to a certificate in CA (an intermediate there counts as an anchor).
 * 0, PS_ECONFIG or PS_EIO, naming the file and what is wrong. */
int ps_tls_check(const char *ca, const char *cert, const char *key, ps_errbuf *eb);
/* ps_tls_check_pair is ps_tls_check of the pair whose keys in
 * security.tls WHO names ("": cert and key, "worker_": worker_cert and
 * worker_key, "operator_"), as a file's failure says; a client's pair
 * (WHO not "") must also be one for TLS clients (purpose sslclient: an
 * extendedKeyUsage, where it has one, with clientAuth), as the shards
 * check it in the handshake. */
int ps_tls_check_pair(const char *ca, const char *cert, const char *key, const char *who,
                      ps_errbuf *eb);

/* ps_tls_check_hosts checks that certificate CERT names the host of each
 * of ADDRS[0..N) ("host:port"; NULL entries and wildcard hosts skipped)
 * as gRPC clients check it when they dial that address: an IP address
 * among its IP SANs, a name among its DNS SANs (its CN where it has
 * none).  0, or PS_ECONFIG / PS_EIO listing the hosts it does not name. */
int ps_tls_check_hosts(const char *cert, const char *const *addrs, size_t n, ps_errbuf *eb);

/* ps_tls_security_name names how a cluster with security section S
 * authenticates: "none", "tls" (a client certificate not required) or
 * "mtls" (mutual TLS) on the control plane, then "+chan-hmac" when the
 * channel asks for the hello's proof (a secret file), and then
 * "+payload-mac" when every frame carries a MAC.  One name for one
 * cluster wherever it is shown (the shard's Status, psctl bench --json);
 * static. */
const char *ps_tls_security_name(const ps_security_conf *s);

/* ps_tls_expiry checks when the certificates in PEM file PATH end: 0
 * when each is valid for WITHIN_S seconds more, 1 when one is not (the
 * earliest), with "certificate 'PATH' expires on DATE (in N days)" or
 * "... expired on DATE" in EB; PS_ECONFIG / PS_EIO when PATH cannot be
 * read. */
int ps_tls_expiry(const char *path, int64_t within_s, ps_errbuf *eb);

/* ps_tls_server: the TLS pair and CA a gRPC server presents and trusts.
 * It holds the last good PEMs of security.tls.{ca,cert,key}; the
 * credentials made from it (ps_tls_server_creds) ask it for them through
 * gRPC core's certificate-config fetcher, which gRPC calls on its own
 * threads at every new handshake.  A reload (SIGHUP) therefore reaches
 * the next connection, while open ones keep the pair they were made with;
 * a reload that fails keeps the old PEMs.  It outlives the servers made
 * with it (psd_grpc_restart makes a new one from the same object), and
 * each credentials from it back one grpc_server_add_http2_port (gRPC
 * fetches the first config there).  Thread-safe. */
typedef struct ps_tls_server ps_tls_server;

/* ps_tls_server_open reads and checks (as ps_tls_check does) CFG's
 * security.tls ca, cert and key (mode tls) into *OUT (freed with
 * ps_tls_server_free; CFG borrowed for its life).  0, PS_ECONFIG, PS_EIO
 * or PS_ENOMEM naming the file. */
int ps_tls_server_open(const ps_config *cfg, ps_tls_server **out, ps_errbuf *eb);

/* ps_tls_server_reload reads and checks the three files again: 0 and the
 * next handshake gets them, or the error (naming the file) and the old
 * ones stay. */
int ps_tls_server_reload(ps_tls_server *s, ps_errbuf *eb);

/* ps_tls_server_expiry is ps_tls_expiry of the certificate S holds now
 * (as loaded: its file may have changed since). */
int ps_tls_server_expiry(const ps_tls_server *s, int64_t within_s, ps_errbuf *eb);

/* ps_tls_server_serial: the serial number (hex) of the certificate S
 * holds now; valid until the next reload. */
const char *ps_tls_server_serial(const ps_tls_server *s);

void ps_tls_server_free(ps_tls_server *s);

/* ps_tls_server_creds makes a server's credentials in *OUT (caller
 * releases with grpc_server_credentials_release): insecure when CFG's
 * mode is none, else SSL fed by TLS (not NULL then), requiring a client
 * certificate when security.require_client_cert. */
int ps_tls_server_creds(const ps_config *cfg, ps_tls_server *tls, grpc_server_credentials **out,
                        ps_errbuf *eb);

/* ps_tls_channel_creds makes a client's credentials for ROLE (ps_auth.h:
 * PS_ROLE_WORKER uses the worker pair, PS_ROLE_OPERATOR the operator pair,
 * PS_ROLE_NONE presents no certificate) in *OUT (caller releases with
 * grpc_channel_credentials_release).  CFG NULL: insecure.  The pair is
 * checked as ps_tls_check_pair checks a client's; a worker or operator
 * without one, when
 * the shards require a client certificate, is PS_ECONFIG at once. */
int ps_tls_channel_creds(const ps_config *cfg, int role, grpc_channel_credentials **out,
                         ps_errbuf *eb);

#endif
