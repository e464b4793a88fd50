/* ps_tls: gRPC SSL credentials from the cluster file (see ps_tls.h). */
#include "ps_tls.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <errno.h>
#include <openssl/bn.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/x509_vfy.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ps_addr.h"
#include "ps_auth.h"

#define PS_TLS_MAX_PEM (1u << 20)

/* ps_tls_security_name: see ps_tls.h. */
const char *ps_tls_security_name(const ps_security_conf *s) {
  /* 0: no channel secret, 1: the hello's proof, 2: and every frame MACed */
  int chan = !s->secret_file ? 0 : s->payload_mac ? 2 : 1;
  static const char *const names[3][3] = {
      {"none", "none+chan-hmac", "none+chan-hmac+payload-mac"},
      {"mtls", "mtls+chan-hmac", "mtls+chan-hmac+payload-mac"},
      {"tls", "tls+chan-hmac", "tls+chan-hmac+payload-mac"}};
  return names[s->mode != PS_SEC_TLS ? 0 : s->require_client_cert ? 1 : 2][chan];
}

int ps_tls_read(const char *path, int private_, char **out, ps_errbuf *eb) {
  *out = NULL;
  struct stat st;
  if (private_) {
    int rc = ps_auth_private_file(path, eb);
    if (rc < 0) return rc;
  } else if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) { /* as a private file says */
    return ps_errf(eb, PS_ECONFIG, "'%s': not a regular file", path);
  }
  FILE *f = ps_config_fopen(path);
  if (!f) return ps_errf(eb, PS_ECONFIG, "'%s': cannot open: %s", path, strerror(errno));
  char *buf = malloc(PS_TLS_MAX_PEM + 1);
  if (!buf) {
    fclose(f);
    return ps_errf(eb, PS_ENOMEM, "out of memory reading '%s'", path);
  }
  size_t n = fread(buf, 1, PS_TLS_MAX_PEM + 1, f);
  int bad = ferror(f);
  fclose(f);
  int rc = 0;
  if (bad) rc = ps_errf(eb, PS_EIO, "'%s': cannot read", path);
  else if (n > PS_TLS_MAX_PEM) rc = ps_errf(eb, PS_ECONFIG, "'%s': larger than 1 MiB", path);
  else if ((buf[n] = '\0', !strstr(buf, "-----BEGIN ")))
    rc = ps_errf(eb, PS_ECONFIG, "'%s': not a PEM file", path);
  if (rc < 0) {
    OPENSSL_cleanse(buf, n);
    free(buf);
    return rc;
  }
  buf[n] = '\0';
  *out = buf;
  return 0;
}

void ps_tls_free_secret(char *p) {
  if (!p) return;
  OPENSSL_cleanse(p, strlen(p));
  free(p);
}

/* tls_pair reads CA, CERT and KEY (each may be NULL: left NULL); WHO
 * names the pair's keys in security.tls ("": cert and key, "worker_":
 * worker_cert and worker_key), and a failure's message says which key's
 * file it was. */
static int tls_pair(const char *ca, const char *cert, const char *key, const char *who,
                    char **ca_pem, char **cert_pem, char **key_pem, ps_errbuf *eb) {
  *ca_pem = *cert_pem = *key_pem = NULL;
  int rc = 0;
  const char *name = "ca", *part = "";
  if (ca) rc = ps_tls_read(ca, 0, ca_pem, eb);
  if (rc == 0 && cert) part = "cert", rc = ps_tls_read(cert, 0, cert_pem, eb);
  if (rc == 0 && key) part = "key", rc = ps_tls_read(key, 1, key_pem, eb);
  if (rc < 0) {
    ps_errbuf why = *eb;
    if (*part) ps_errf(eb, rc, "security.tls.%s%s %s", who, part, why.msg);
    else ps_errf(eb, rc, "security.tls.%s %s", name, why.msg);
    free(*ca_pem);
    free(*cert_pem);
    ps_tls_free_secret(*key_pem);
    *ca_pem = *cert_pem = *key_pem = NULL;
  }
  return rc;
}

/* tls_time writes T (a certificate's date) to BUF. */
static const char *tls_time(const ASN1_TIME *t, char *buf, size_t cap) {
  BIO *b = BIO_new(BIO_s_mem());
  int n = b && ASN1_TIME_print(b, t) ? BIO_read(b, buf, (int)cap - 1) : 0;
  buf[n > 0 ? n : 0] = '\0';
  BIO_free(b);
  return buf;
}

/* tls_no_passphrase: a key protected by a passphrase is refused, never
 * asked for on a terminal (OpenSSL's default callback would). */
static int tls_no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return 0;
}

/* tls_certs reads every certificate of PEM (its first in *FIRST, the rest
 * appended to *MORE, made when NULL); 0 or PS_ECONFIG naming PATH. */
static int tls_certs(const char *pem, const char *path, X509 **first, STACK_OF(X509) **more,
                     ps_errbuf *eb) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  if (!b) return ps_errf(eb, PS_ENOMEM, "out of memory reading '%s'", path);
  X509 *x;
  int n = 0, rc = 0;
  while (rc == 0 && (x = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL))) {
    if (n++ == 0 && first) {
      *first = x;
      continue;
    }
    if ((!*more && !(*more = sk_X509_new_null())) || !sk_X509_push(*more, x)) {
      X509_free(x);
      rc = ps_errf(eb, PS_ENOMEM, "out of memory reading '%s'", path);
    }
  }
  BIO_free(b);
  ERR_clear_error(); /* the end of the file (no start line) is no error here */
  if (rc == 0 && n == 0) rc = ps_errf(eb, PS_ECONFIG, "'%s': no certificate in it", path);
  return rc;
}

/* tls_check_pem checks the pair CERT_PEM / KEY_PEM (files CERT, KEY)
 * before gRPC is given it, whose own errors name neither file nor
 * reason: the key is the certificate's, the certificate is valid now
 * and chains to a certificate of CA_PEM (file CA).  0 or PS_ECONFIG. */
static int tls_check_pem(const char *ca_pem, const char *cert_pem, const char *key_pem,
                         const char *ca, const char *cert, const char *key, ps_errbuf *eb) {
  X509 *leaf = NULL;
  STACK_OF(X509) *chain = NULL, *anchors = NULL;
  EVP_PKEY *pk = NULL;
  X509_STORE *store = NULL;
  X509_STORE_CTX *ctx = NULL;
  char t[64];
  int rc = tls_certs(cert_pem, cert, &leaf, &chain, eb);
  if (rc == 0) {
    BIO *b = BIO_new_mem_buf(key_pem, -1);
    pk = b ? PEM_read_bio_PrivateKey(b, NULL, tls_no_passphrase, NULL) : NULL;
    BIO_free(b);
    ERR_clear_error();
    if (!pk) rc = ps_errf(eb, PS_ECONFIG, "'%s': no private key in it (or one protected by a "
                          "passphrase)", key);
    else if (X509_check_private_key(leaf, pk) != 1)
      rc = ps_errf(eb, PS_ECONFIG, "'%s' is not the private key of certificate '%s'", key, cert);
  }
  if (rc == 0 && X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0)
    rc = ps_errf(eb, PS_ECONFIG, "certificate '%s' expired on %s", cert,
                 tls_time(X509_get0_notAfter(leaf), t, sizeof t));
  if (rc == 0 && X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0)
    rc = ps_errf(eb, PS_ECONFIG, "certificate '%s' is not valid before %s", cert,
                 tls_time(X509_get0_notBefore(leaf), t, sizeof t));
  if (rc == 0) rc = tls_certs(ca_pem, ca, NULL, &anchors, eb);
  /* a leaf as tls.ca would let this pair chain (to itself) and no peer's */
  int cas = 0;
  for (int i = 0; rc == 0 && i < sk_X509_num(anchors); i++)
    cas += X509_check_ca(sk_X509_value(anchors, i)) >= 1;
  if (rc == 0 && !cas)
    rc = ps_errf(eb, PS_ECONFIG, "'%s' holds no CA certificate (basicConstraints CA:TRUE): "
                 "tls.ca names the CA that signs every certificate of the cluster", ca);
  if (rc == 0 && (!(store = X509_STORE_new()) || !(ctx = X509_STORE_CTX_new())))
    rc = ps_errf(eb, PS_ENOMEM, "out of memory checking '%s'", cert);
  for (int i = 0; rc == 0 && i < sk_X509_num(anchors); i++)
    if (!X509_STORE_add_cert(store, sk_X509_value(anchors, i)))
      rc = ps_errf(eb, PS_ENOMEM, "out of memory checking '%s'", cert);
  if (rc == 0) {
    /* an intermediate in tls.ca is a trust anchor as well */
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    if (!X509_STORE_CTX_init(ctx, store, leaf, chain))
      rc = ps_errf(eb, PS_ENOMEM, "out of memory checking '%s'", cert);
    else if (X509_verify_cert(ctx) != 1)
      rc = ps_errf(eb, PS_ECONFIG, "certificate '%s' does not chain to the CA in '%s': %s", cert,
                   ca, X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
  }
  ERR_clear_error(); /* (a failed check leaves OpenSSL's reasons queued on this thread) */
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  sk_X509_pop_free(anchors, X509_free);
  sk_X509_pop_free(chain, X509_free);
  EVP_PKEY_free(pk);
  X509_free(leaf);
  return rc;
}

/* tls_check_client_use checks that certificate CERT_PEM (file CERT, named
 * by key security.tls.WHOcert) may authenticate a TLS client, as the
 * shards' OpenSSL checks it in the handshake (purpose sslclient): else
 * the shard closes the connection there, and the client sees only
 * "Socket closed".  0 or PS_ECONFIG saying which extension is wrong. */
static int tls_check_client_use(const char *cert_pem, const char *cert, const char *who,
                                ps_errbuf *eb) {
  X509 *leaf = NULL;
  STACK_OF(X509) *chain = NULL;
  int rc = tls_certs(cert_pem, cert, &leaf, &chain, eb);
  if (rc == 0 && X509_check_purpose(leaf, X509_PURPOSE_SSL_CLIENT, 0) != 1) {
    uint32_t flags = X509_get_extension_flags(leaf);
    const char *why =
        flags & EXFLAG_XKUSAGE && !(X509_get_extended_key_usage(leaf) & XKU_SSL_CLIENT)
            ? "its extendedKeyUsage lacks clientAuth"
        : flags & EXFLAG_KUSAGE &&
                !(X509_get_key_usage(leaf) & (KU_DIGITAL_SIGNATURE | KU_KEY_AGREEMENT))
            ? "its keyUsage allows neither digitalSignature nor keyAgreement"
            : "its extensions do not allow TLS client authentication";
    rc = ps_errf(eb, PS_ECONFIG, "certificate '%s' is not for TLS clients (%s): the shards "
                 "would refuse it in the handshake; set security.tls.%scert to a client "
                 "certificate (extendedKeyUsage clientAuth: scripts/mkcerts makes them)", cert,
                 why, who);
  }
  ERR_clear_error();
  sk_X509_pop_free(chain, X509_free);
  X509_free(leaf);
  return rc;
}

/* ps_tls_check, ps_tls_check_pair: see ps_tls.h. */
int ps_tls_check(const char *ca, const char *cert, const char *key, ps_errbuf *eb) {
  return ps_tls_check_pair(ca, cert, key, "", eb);
}

int ps_tls_check_pair(const char *ca, const char *cert, const char *key, const char *who,
                      ps_errbuf *eb) {
  char *ca_pem, *cert_pem, *key_pem;
  int rc = tls_pair(ca, cert, key, who, &ca_pem, &cert_pem, &key_pem, eb);
  if (rc == 0 && cert && key) rc = tls_check_pem(ca_pem, cert_pem, key_pem, ca, cert, key, eb);
  if (rc == 0 && cert && *who) rc = tls_check_client_use(cert_pem, cert, who, eb);
  free(ca_pem);
  free(cert_pem);
  ps_tls_free_secret(key_pem);
  return rc;
}

/* ps_tls_check_hosts: see ps_tls.h. */
int ps_tls_check_hosts(const char *cert, const char *const *addrs, size_t n, ps_errbuf *eb) {
  char *pem;
  X509 *leaf = NULL;
  STACK_OF(X509) *chain = NULL;
  int rc = ps_tls_read(cert, 0, &pem, eb);
  if (rc == 0) rc = tls_certs(pem, cert, &leaf, &chain, eb);
  char missing[512] = "";
  size_t nmiss = 0, len = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    char host[256];
    int port;
    ps_errbuf ab;
    /* a wildcard listen address (however written: [0:0::0]) no client
     * dials; every other host is checked as written, as TLS checks it */
    if (!addrs[i] || ps_addr_split(addrs[i], host, sizeof host, &port, &ab) < 0 ||
        ps_addr_wildcard(addrs[i]))
      continue;
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    /* as gRPC checks: an address against the IP SANs only, a name against
     * the DNS SANs (the subject's CN where there are none), no partial
     * wildcards */
    int ok = is_ip ? X509_check_ip_asc(leaf, host, 0) == 1
                   : X509_check_host(leaf, host, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
    int seen = 0; /* the same host in an earlier address: checked there */
    for (size_t j = 0; j < i && !seen; j++) {
      char h2[256];
      int p2;
      seen = addrs[j] && ps_addr_split(addrs[j], h2, sizeof h2, &p2, &ab) == 0 && !strcmp(h2, host);
    }
    if (ok || seen) continue;
    nmiss++;
    if (len < sizeof missing)
      len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%s", len ? ", " : "", host);
  }
  ERR_clear_error();
  if (rc == 0 && nmiss)
    rc = ps_errf(eb, PS_ECONFIG, "certificate '%s' does not name %s (no matching subjectAltName): "
                 "clients that dial %s refuse the handshake; add %s (scripts/mkcerts makes one "
                 "SAN per shard host)", cert, missing, nmiss == 1 ? "it" : "them",
                 nmiss == 1 ? "it" : "them");
  sk_X509_pop_free(chain, X509_free);
  X509_free(leaf);
  free(pem);
  return rc;
}

/* tls_date writes Unix time T as certificates' dates print (tls_time). */
static const char *tls_date(int64_t t, char *buf, size_t cap) {
  ASN1_TIME *a = ASN1_TIME_set(NULL, (time_t)t);
  if (a) tls_time(a, buf, cap);
  else snprintf(buf, cap, "%lld (Unix time)", (long long)t);
  ASN1_TIME_free(a);
  return buf;
}

/* tls_pem_end finds the earliest end (notAfter, Unix time) among the
 * certificates of PEM (file PATH) in *END, and the first one's serial
 * (hex) in SERIAL when not NULL.  0, PS_ECONFIG or PS_ENOMEM. */
static int tls_pem_end(const char *pem, const char *path, int64_t *end, char *serial,
                       size_t cap, ps_errbuf *eb) {
  X509 *first = NULL;
  STACK_OF(X509) *more = NULL;
  int rc = tls_certs(pem, path, &first, &more, eb);
  int n = rc == 0 ? 1 + (more ? sk_X509_num(more) : 0) : 0;
  for (int i = 0; i < n; i++) {
    X509 *x = i == 0 ? first : sk_X509_value(more, i - 1);
    struct tm tm;
    if (!ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm)) {
      rc = ps_errf(eb, PS_ECONFIG, "'%s': a certificate with an unreadable end date", path);
      break;
    }
    int64_t t = (int64_t)timegm(&tm);
    if (i == 0 || t < *end) *end = t;
  }
  if (rc == 0 && serial) {
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(first), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    snprintf(serial, cap, "%s", hex ? hex : "?");
    OPENSSL_free(hex);
    BN_free(bn);
  }
  ERR_clear_error();
  sk_X509_pop_free(more, X509_free);
  X509_free(first);
  return rc;
}

/* tls_end_say: ps_tls_expiry's verdict on END, a certificate of PATH. */
static int tls_end_say(const char *path, int64_t end, int64_t within_s, ps_errbuf *eb) {
  int64_t left = end - (int64_t)time(NULL);
  if (left > within_s) return 0;
  char d[64], in[48];
  if (left <= 0) {
    ps_errf(eb, PS_ECONFIG, "certificate '%s' expired on %s", path, tls_date(end, d, sizeof d));
    return 1;
  }
  if (left >= 86400) snprintf(in, sizeof in, "%lld days", (long long)(left / 86400));
  else if (left >= 3600) snprintf(in, sizeof in, "%lld hours", (long long)(left / 3600));
  else snprintf(in, sizeof in, "%lld s", (long long)left);
  ps_errf(eb, PS_ECONFIG, "certificate '%s' expires on %s (in %s)", path,
          tls_date(end, d, sizeof d), in);
  return 1;
}

/* ps_tls_expiry: see ps_tls.h. */
int ps_tls_expiry(const char *path, int64_t within_s, ps_errbuf *eb) {
  char *pem;
  int64_t end = 0;
  int rc = ps_tls_read(path, 0, &pem, eb);
  if (rc == 0) rc = tls_pem_end(pem, path, &end, NULL, 0, eb);
  free(pem);
  return rc < 0 ? rc : tls_end_say(path, end, within_s, eb);
}

struct ps_tls_server {
  const ps_config *cfg;
  pthread_mutex_t mu;  /* guards the PEMs and fresh: gRPC's threads fetch */
  char *ca, *cert, *key; /* the last good files (key wiped when replaced) */
  int fresh;           /* the PEMs are newer than what gRPC fetched last */
  int64_t end;         /* cert's end (Unix time) */
  char serial[128];    /* cert's serial, hex */
};

/* tls_server_load reads and checks the three files; 0 and S holds them
 * (fresh), or the error and S is unchanged. */
static int tls_server_load(ps_tls_server *s, ps_errbuf *eb) {
  const ps_tls_conf *t = &s->cfg->security.tls;
  char *ca, *cert, *key, serial[sizeof s->serial];
  int64_t end = 0;
  int rc = tls_pair(t->ca, t->cert, t->key, "", &ca, &cert, &key, eb);
  if (rc == 0) rc = tls_check_pem(ca, cert, key, t->ca, t->cert, t->key, eb);
  if (rc == 0) rc = tls_pem_end(cert, t->cert, &end, serial, sizeof serial, eb);
  if (rc < 0) {
    free(ca);
    free(cert);
    ps_tls_free_secret(key);
    return rc;
  }
  pthread_mutex_lock(&s->mu);
  char *oca = s->ca, *ocert = s->cert, *okey = s->key;
  s->ca = ca, s->cert = cert, s->key = key;
  s->fresh = 1;
  s->end = end;
  memcpy(s->serial, serial, sizeof serial);
  pthread_mutex_unlock(&s->mu);
  free(oca);
  free(ocert);
  ps_tls_free_secret(okey);
  return 0;
}

/* tls_server_fetch is gRPC's certificate-config fetcher, called on its
 * threads at each handshake (and once when a port is added): the PEMs
 * when they are newer than gRPC's (gRPC takes and destroys the config),
 * else UNCHANGED. */
static grpc_ssl_certificate_config_reload_status tls_server_fetch(
    void *user, grpc_ssl_server_certificate_config **config) {
  ps_tls_server *s = user;
  grpc_ssl_certificate_config_reload_status st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
  *config = NULL;
  pthread_mutex_lock(&s->mu);
  if (s->fresh) {
    grpc_ssl_pem_key_cert_pair pair = {s->key, s->cert};
    *config = grpc_ssl_server_certificate_config_create(s->ca, &pair, 1); /* copies */
    /* (out of memory: FAIL, gRPC keeps what it has and tries again next time) */
    st = *config ? GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW : GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
    s->fresh = !*config;
  }
  pthread_mutex_unlock(&s->mu);
  return st;
}

/* ps_tls_server_open, _reload, _expiry, _serial, _free: see ps_tls.h. */
int ps_tls_server_open(const ps_config *cfg, ps_tls_server **out, ps_errbuf *eb) {
  ps_tls_server *s = calloc(1, sizeof *s);
  *out = NULL;
  if (!s) return ps_errf(eb, PS_ENOMEM, "out of memory reading the TLS files");
  s->cfg = cfg;
  pthread_mutex_init(&s->mu, NULL);
  int rc = tls_server_load(s, eb);
  if (rc < 0) {
    ps_tls_server_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

int ps_tls_server_reload(ps_tls_server *s, ps_errbuf *eb) { return tls_server_load(s, eb); }

int ps_tls_server_expiry(const ps_tls_server *s, int64_t within_s, ps_errbuf *eb) {
  return tls_end_say(s->cfg->security.tls.cert, s->end, within_s, eb);
}

const char *ps_tls_server_serial(const ps_tls_server *s) { return s->serial; }

void ps_tls_server_free(ps_tls_server *s) {
  if (!s) return;
  free(s->ca);
  free(s->cert);
  ps_tls_free_secret(s->key);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

int ps_tls_server_creds(const ps_config *cfg, ps_tls_server *tls, grpc_server_credentials **out,
                        ps_errbuf *eb) {
  *out = NULL;
  if (cfg->security.mode != PS_SEC_TLS) {
    *out = grpc_insecure_server_credentials_create();
    return 0;
  }
  /* the new port's first fetch gets the PEMs, whatever an earlier server took */
  pthread_mutex_lock(&tls->mu);
  tls->fresh = 1;
  pthread_mutex_unlock(&tls->mu);
  grpc_ssl_client_certificate_request_type req =
      cfg->security.require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                        : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  grpc_ssl_server_credentials_options *o =
      grpc_ssl_server_credentials_create_options_using_config_fetcher(req, tls_server_fetch, tls);
  *out = o ? grpc_ssl_server_credentials_create_with_options(o) : NULL; /* takes O */
  if (!*out)
    return ps_errf(eb, PS_ECONFIG, "cannot make TLS server credentials from '%s'",
                   cfg->security.tls.cert);
  return 0;
}

int ps_tls_channel_creds(const ps_config *cfg, int role, grpc_channel_credentials **out,
                         ps_errbuf *eb) {
  *out = NULL;
  if (!cfg || cfg->security.mode != PS_SEC_TLS) {
    *out = grpc_insecure_credentials_create();
    return 0;
  }
  const ps_tls_conf *t = &cfg->security.tls;
  const char *cf = NULL, *kf = NULL;
  const char *which = NULL;
  if (role == PS_ROLE_WORKER) cf = t->worker_cert, kf = t->worker_key, which = "worker";
  else if (role == PS_ROLE_OPERATOR)
    cf = t->operator_cert, kf = t->operator_key, which = "operator";
  if (which && !cf && cfg->security.require_client_cert)
    return ps_errf(eb, PS_ECONFIG, "security.tls.%s_cert is not set, and the shards refuse a "
                   "client without a certificate (security.require_client_cert)", which);
  char *ca, *cert, *key;
  const char *who = which ? (role == PS_ROLE_WORKER ? "worker_" : "operator_") : "";
  int rc = tls_pair(t->ca, cf, kf, who, &ca, &cert, &key, eb);
  if (rc == 0 && cert) rc = tls_check_pem(ca, cert, key, t->ca, cf, kf, eb);
  if (rc == 0 && cert) rc = tls_check_client_use(cert, cf, who, eb);
  if (rc < 0) {
    free(ca);
    free(cert);
    ps_tls_free_secret(key);
    return rc;
  }
  grpc_ssl_pem_key_cert_pair pair = {key, cert};
  *out = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
  free(ca);
  free(cert);
  ps_tls_free_secret(key);
  if (!*out) return ps_errf(eb, PS_ECONFIG, "cannot make TLS client credentials from '%s'", t->ca);
  return 0;
}
