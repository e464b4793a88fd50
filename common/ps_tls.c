/* ps_tls: gRPC SSL credentials from the cluster file (see ps_tls.h). */
#include "ps_tls.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_auth.h"

#define PS_TLS_MAX_PEM (1u << 20)

int ps_tls_read(const char *path, int private_, char **out, ps_errbuf *eb) {
  *out = NULL;
  if (private_) {
    int rc = ps_auth_private_file(path, eb);
    if (rc < 0) return rc;
  }
  FILE *f = fopen(path, "rb");
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

/* tls_pair reads CA, CERT and KEY (each may be NULL: left NULL). */
static int tls_pair(const char *ca, const char *cert, const char *key, char **ca_pem,
                    char **cert_pem, char **key_pem, ps_errbuf *eb) {
  *ca_pem = *cert_pem = *key_pem = NULL;
  int rc = 0;
  if (ca) rc = ps_tls_read(ca, 0, ca_pem, eb);
  if (rc == 0 && cert) rc = ps_tls_read(cert, 0, cert_pem, eb);
  if (rc == 0 && key) rc = ps_tls_read(key, 1, key_pem, eb);
  if (rc < 0) {
    free(*ca_pem);
    free(*cert_pem);
    ps_tls_free_secret(*key_pem);
    *ca_pem = *cert_pem = *key_pem = NULL;
  }
  return rc;
}

int ps_tls_server_creds(const ps_config *cfg, grpc_server_credentials **out, ps_errbuf *eb) {
  *out = NULL;
  if (cfg->security.mode != PS_SEC_TLS) {
    *out = grpc_insecure_server_credentials_create();
    return 0;
  }
  const ps_tls_conf *t = &cfg->security.tls;
  char *ca, *cert, *key;
  int rc = tls_pair(t->ca, t->cert, t->key, &ca, &cert, &key, eb);
  if (rc < 0) return rc;
  grpc_ssl_pem_key_cert_pair pair = {key, cert};
  *out = grpc_ssl_server_credentials_create_ex(
      ca, &pair, 1,
      cfg->security.require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                        : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY,
      NULL);
  free(ca);
  free(cert);
  ps_tls_free_secret(key);
  if (!*out) return ps_errf(eb, PS_ECONFIG, "cannot make TLS server credentials from '%s'", t->cert);
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
  if (role == PS_ROLE_WORKER) cf = t->worker_cert, kf = t->worker_key;
  else if (role == PS_ROLE_OPERATOR) cf = t->operator_cert, kf = t->operator_key;
  char *ca, *cert, *key;
  int rc = tls_pair(t->ca, cf, kf, &ca, &cert, &key, eb);
  if (rc < 0) return rc;
  grpc_ssl_pem_key_cert_pair pair = {key, cert};
  *out = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
  free(ca);
  free(cert);
  ps_tls_free_secret(key);
  if (!*out) return ps_errf(eb, PS_ECONFIG, "cannot make TLS client credentials from '%s'", t->ca);
  return 0;
}
