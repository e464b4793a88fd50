/* ps_auth: roles, the secret file and the channel hello's proofs (see
 * ps_auth.h).  Secrets never reach an error message or a log line. */
#include "ps_auth.h"

#include <errno.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ps_log.h"

static const char *const ps_role_names[PS_ROLE_COUNT] = {"none", "worker", "aggregator",
                                                         "operator"};

const char *ps_role_name(int role) {
  return role >= 0 && role < PS_ROLE_COUNT ? ps_role_names[role] : "none";
}

int ps_role_parse(const char *s, size_t len) {
  for (int r = PS_ROLE_WORKER; r < PS_ROLE_COUNT; r++)
    if (strlen(ps_role_names[r]) == len && !memcmp(ps_role_names[r], s, len)) return r;
  return -1;
}

/* auth_role_add folds the role of one OU value (LEN bytes at S) into
 * *ROLE: values that name no role are ignored; a second, different role
 * makes it none for good (-2 marks that here). */
static void auth_role_add(int *role, const char *s, size_t len) {
  int r = ps_role_parse(s, len);
  if (r <= 0 || *role == -2) return;
  *role = *role == PS_ROLE_NONE || *role == r ? r : -2;
}

/* ps_role_from_name: the role the OU attributes of NAME name, read as
 * attributes (never from a printed subject, where a CN such as
 * "x,OU=operator" or "x/OU=operator" reads like an OU of its own); none
 * when two of them name different roles (which would win depends on the
 * order a CA writes them in). */
int ps_role_from_name(const X509_NAME *name) {
  if (!name) return PS_ROLE_NONE;
  int role = PS_ROLE_NONE;
  for (int i = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, -1); i >= 0;
       i = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, i)) {
    unsigned char *u = NULL; /* as UTF-8, whichever string type the CA chose */
    int n = ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
    if (n >= 0) auth_role_add(&role, (const char *)u, (size_t)n);
    OPENSSL_free(u);
  }
  return role < 0 ? PS_ROLE_NONE : role;
}

int ps_role_from_cert_pem(const char *pem, size_t len) {
  if (!pem || !len || len > INT_MAX) return PS_ROLE_NONE;
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  int role = x ? ps_role_from_name(X509_get_subject_name(x)) : PS_ROLE_NONE;
  X509_free(x);
  BIO_free(b);
  return role;
}

int ps_role_cache_get(ps_role_cache *c, const char *pem, size_t len) {
  if (!pem || !len) return PS_ROLE_NONE;
  for (unsigned i = 0; i < PS_ROLE_CACHE_N; i++)
    if (c->e[i].pem && c->e[i].len == len && !memcmp(c->e[i].pem, pem, len)) return c->e[i].role;
  int role = ps_role_from_cert_pem(pem, len);
  c->parsed++;
  char *copy = malloc(len); /* none: the role still, uncached */
  if (copy) {
    unsigned i = c->next++ % PS_ROLE_CACHE_N;
    free(c->e[i].pem);
    memcpy(copy, pem, len);
    c->e[i].pem = copy;
    c->e[i].len = len;
    c->e[i].role = role;
  }
  return role;
}

void ps_role_cache_free(ps_role_cache *c) {
  for (unsigned i = 0; i < PS_ROLE_CACHE_N; i++) free(c->e[i].pem);
  memset(c, 0, sizeof *c);
}

/* auth_access writes to BUF who may do what with a file of MODE beyond
 * its owner: "readable by its group", "readable and writable by its group
 * and others", "readable by its group, writable by others". */
static void auth_access(unsigned mode, char *buf, size_t cap) {
  static const char *const verbs[8] = {"",
                                       "executable",
                                       "writable",
                                       "writable and executable",
                                       "readable",
                                       "readable and executable",
                                       "readable and writable",
                                       "readable, writable and executable"};
  unsigned g = mode >> 3 & 7, o = mode & 7;
  if (g == o) snprintf(buf, cap, "%s by its group and others", verbs[g]);
  else if (g && o) snprintf(buf, cap, "%s by its group, %s by others", verbs[g], verbs[o]);
  else snprintf(buf, cap, "%s by %s", verbs[g | o], g ? "its group" : "others");
}

int ps_auth_private_file(const char *path, ps_errbuf *eb) {
  struct stat st;
  if (stat(path, &st) < 0)
    return ps_errf(eb, errno == ENOENT ? PS_ECONFIG : PS_EIO, "'%s': cannot open: %s", path,
                   strerror(errno));
  if (!S_ISREG(st.st_mode)) return ps_errf(eb, PS_ECONFIG, "'%s': not a regular file", path);
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    char who[96];
    auth_access((unsigned)st.st_mode & 077, who, sizeof who);
    return ps_errf(eb, PS_ECONFIG, "'%s' is %s (mode %03o): it holds a secret; chmod 600 it",
                   path, who, (unsigned)(st.st_mode & 0777));
  }
  return 0;
}

/* auth_hex returns the value of hex digit C, or -1. */
static int auth_hex(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* auth_parse_line parses one non-comment line into K; returns NULL or a
 * static message about what is wrong (never the secret). */
static const char *auth_parse_line(char *line, ps_auth_key *k) {
  char *save = NULL, *id = strtok_r(line, " \t", &save), *role = strtok_r(NULL, " \t", &save);
  char *hex = strtok_r(NULL, " \t", &save);
  if (!id || !role || !hex) return "expected 'KEY_ID ROLE HEX_SECRET'";
  if (strtok_r(NULL, " \t", &save)) return "more than three fields";
  size_t il = strlen(id);
  if (il > PS_AUTH_ID_MAX || strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789._-") != il)
    return "bad key id (1-32 letters, digits, '.', '_', '-')";
  k->role = ps_role_parse(role, strlen(role));
  if (k->role < 0) return "unknown role (expected worker, aggregator or operator)";
  size_t hl = strlen(hex);
  if (hl % 2 || hl / 2 < PS_AUTH_SECRET_MIN || hl / 2 > PS_AUTH_SECRET_MAX)
    return "the secret must be 32..128 bytes written as 64..256 hex digits";
  for (size_t i = 0; i < hl / 2; i++) {
    int hi = auth_hex(hex[2 * i]), lo = auth_hex(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return "the secret is not hex";
    k->secret[i] = (uint8_t)(hi << 4 | lo);
  }
  k->len = hl / 2;
  memcpy(k->id, id, il + 1);
  OPENSSL_cleanse(hex, hl);
  return NULL;
}

/* auth_add appends K to KS (ids unique); NULL or a message. */
static const char *auth_add(ps_auth_keys *ks, const ps_auth_key *k) {
  if (ps_auth_find(ks, k->id)) return "duplicate key id";
  ps_auth_key *n = malloc((ks->n + 1) * sizeof *n);
  if (!n) return "out of memory";
  if (ks->n) memcpy(n, ks->keys, ks->n * sizeof *n);
  n[ks->n] = *k;
  if (ks->keys) OPENSSL_cleanse(ks->keys, ks->n * sizeof *ks->keys);
  free(ks->keys);
  ks->keys = n;
  ks->n++;
  return NULL;
}

int ps_auth_load(ps_auth_keys *ks, const char *path, ps_errbuf *eb) {
  memset(ks, 0, sizeof *ks);
  int rc = ps_auth_private_file(path, eb);
  if (rc < 0) { /* say which file of the security section it is */
    ps_errbuf why = *eb;
    return ps_errf(eb, rc, "security.secret_file %s", why.msg);
  }
  FILE *f = fopen(path, "r");
  if (!f)
    return ps_errf(eb, PS_EIO, "security.secret_file '%s': cannot open: %s", path, strerror(errno));
  char line[1024];
  size_t lineno = 0;
  while (rc == 0 && fgets(line, sizeof line, f)) {
    lineno++;
    size_t len = strlen(line);
    if (len == sizeof line - 1 && line[len - 1] != '\n') {
      rc = ps_errf(eb, PS_ECONFIG, "%s:%zu: line too long", path, lineno);
      break;
    }
    line[strcspn(line, "#\r\n")] = '\0';
    if (line[strspn(line, " \t")] == '\0') continue;
    ps_auth_key k;
    memset(&k, 0, sizeof k);
    const char *why = auth_parse_line(line, &k);
    if (!why) why = auth_add(ks, &k);
    OPENSSL_cleanse(&k, sizeof k);
    if (why) rc = ps_errf(eb, PS_ECONFIG, "%s:%zu: %s", path, lineno, why);
  }
  OPENSSL_cleanse(line, sizeof line);
  fclose(f);
  if (rc == 0 && ks->n == 0) rc = ps_errf(eb, PS_ECONFIG, "%s: no key in the secret file", path);
  if (rc < 0) ps_auth_release(ks);
  return rc;
}

void ps_auth_release(ps_auth_keys *ks) {
  if (!ks) return;
  if (ks->keys) OPENSSL_cleanse(ks->keys, ks->n * sizeof *ks->keys);
  free(ks->keys);
  ks->keys = NULL;
  ks->n = 0;
}

const ps_auth_key *ps_auth_find(const ps_auth_keys *ks, const char *id) {
  for (size_t i = 0; id && i < ks->n; i++)
    if (!strcmp(ks->keys[i].id, id)) return &ks->keys[i];
  return NULL;
}

const ps_auth_key *ps_auth_pick(const ps_auth_keys *ks, int role) {
  for (size_t i = ks->n; i-- > 0;)
    if (ks->keys[i].role == role) return &ks->keys[i];
  return NULL;
}

int ps_auth_client_key(const char *secret_file, int role, ps_auth_keys *ks,
                       const ps_auth_key **key, ps_errbuf *eb) {
  memset(ks, 0, sizeof *ks);
  *key = NULL;
  if (!secret_file) return 0;
  int rc = ps_auth_load(ks, secret_file, eb);
  if (rc < 0) return rc;
  if (!(*key = ps_auth_pick(ks, role))) {
    ps_auth_release(ks);
    return ps_errf(eb, PS_ECONFIG, "'%s' has no key of role '%s'", secret_file,
                   ps_role_name(role));
  }
  return 0;
}

/* ---- a client's key, read again at each connection ------------------------- */

int ps_auth_client_open(ps_auth_client *ac, const char *secret_file, int role, ps_errbuf *eb) {
  memset(ac, 0, sizeof *ac);
  ac->role = role;
  if (!secret_file) return 0;
  ps_auth_keys ks;
  const ps_auth_key *k;
  int rc = ps_auth_client_key(secret_file, role, &ks, &k, eb);
  if (rc < 0) return rc;
  ac->key = *k;
  ps_auth_release(&ks);
  ac->path = secret_file;
  pthread_mutex_init(&ac->mu, NULL);
  ac->open = 1;
  return 0;
}

int ps_auth_client_now(ps_auth_client *ac, ps_auth_key *out) {
  if (!ac->open) return 0;
  ps_auth_keys ks;
  const ps_auth_key *k;
  ps_errbuf eb;
  int rc = ps_auth_client_key(ac->path, ac->role, &ks, &k, &eb);
  pthread_mutex_lock(&ac->mu);
  if (rc < 0) {
    if (!ac->failing)
      ps_warn("channel key: cannot read the secret file again (%s); key '%s' stays in use "
              "until it can", eb.msg, ac->key.id);
    ac->failing = 1;
  } else {
    if (strcmp(k->id, ac->key.id) || k->len != ac->key.len ||
        CRYPTO_memcmp(k->secret, ac->key.secret, k->len))
      ps_info("channel key: '%s' now proves key '%s' (was '%s') for new connections", ac->path,
              k->id, ac->key.id);
    else if (ac->failing)
      ps_info("channel key: '%s' reads again; key '%s' unchanged", ac->path, k->id);
    ac->key = *k;
    ac->failing = 0;
    ps_auth_release(&ks);
  }
  *out = ac->key;
  pthread_mutex_unlock(&ac->mu);
  return 1;
}

void ps_auth_client_proved(ps_auth_client *ac, const ps_auth_key *k) {
  if (!ac->open) return;
  pthread_mutex_lock(&ac->mu);
  ac->proven = *k;
  ac->has_proven = 1;
  pthread_mutex_unlock(&ac->mu);
}

int ps_auth_client_fallback(ps_auth_client *ac, const char *new_id, ps_auth_key *out) {
  if (!ac->open) return 0;
  pthread_mutex_lock(&ac->mu);
  int ok = ac->has_proven && strcmp(ac->proven.id, new_id) != 0;
  if (ok) *out = ac->proven;
  pthread_mutex_unlock(&ac->mu);
  return ok;
}

void ps_auth_client_close(ps_auth_client *ac) {
  if (!ac || !ac->open) return;
  pthread_mutex_destroy(&ac->mu);
  OPENSSL_cleanse(ac, sizeof *ac);
}

void ps_auth_key_wipe(ps_auth_key *k) { OPENSSL_cleanse(k, sizeof *k); }

int ps_auth_nonce(uint8_t out[PS_AUTH_NONCE], ps_errbuf *eb) {
  if (RAND_bytes(out, PS_AUTH_NONCE) != 1)
    return ps_errf(eb, PS_EINTERNAL, "no random bytes for a nonce");
  return 0;
}

/* auth_put32 / auth_put64 write V little-endian at MSG + *N. */
static void auth_put32(uint8_t *msg, size_t *n, uint32_t v) {
  for (int i = 0; i < 4; i++) msg[(*n)++] = (uint8_t)(v >> (8 * i));
}
static void auth_put64(uint8_t *msg, size_t *n, uint64_t v) {
  auth_put32(msg, n, (uint32_t)v);
  auth_put32(msg, n, (uint32_t)(v >> 32));
}

/* auth_put_worker appends H's worker1 to the N bytes of MSG when set
 * (last: what comes before has a length of its own, so a message with it
 * cannot read as one without); returns the new length. */
static size_t auth_put_worker(uint8_t *msg, size_t n, const ps_auth_hello *h) {
  if (h->worker1) auth_put32(msg, &n, h->worker1);
  return n;
}

/* auth_hmac_msg writes LABEL \0 SHA-256(CLUSTER) ID \0 NC NS [FIELDS]
 * into MSG (room for AUTH_MSG_MAX bytes) and returns its length; the NULs
 * keep the strings apart, the fields have fixed sizes (the token its
 * length first).  The digest covers the whole cluster name, however long
 * (two names alike in their first bytes get different proofs).  FIELDS:
 * H's (NULL: none, the session key); the last HELLO's too when ACCEPT;
 * then H's worker1 when set (auth_put_worker). */
#define AUTH_TOKEN_MAX 64
#define AUTH_MSG_MAX                                                                  \
  (40 + 32 + PS_AUTH_ID_MAX + 2 + 2 * PS_AUTH_NONCE /* label, cluster, id, nonces */ + \
   4 + 4 * 4 + 8 /* version, mac, want_mac, unordered_acks, shm_hold, shm_bytes */ +   \
   6 * 4 + 8 + 4 + AUTH_TOKEN_MAX /* ACCEPT: six words, granted, the token's length, it */ + \
   4 /* worker1 */)
static size_t auth_hmac_msg(uint8_t *msg, const char *label, const char *cluster,
                            const ps_auth_key *k, const uint8_t *nc, const uint8_t *ns,
                            const ps_auth_hello *h, int accept) {
  size_t n = 0, ll = strlen(label);
  memcpy(msg + n, label, ll + 1);
  n += ll + 1;
  if (!cluster) cluster = "";
  unsigned int dl = 0;
  EVP_Digest(cluster, strlen(cluster), msg + n, &dl, EVP_sha256(), NULL);
  n += 32;
  memcpy(msg + n, k->id, strlen(k->id) + 1);
  n += strlen(k->id) + 1;
  memcpy(msg + n, nc, PS_AUTH_NONCE);
  n += PS_AUTH_NONCE;
  memcpy(msg + n, ns, PS_AUTH_NONCE);
  n += PS_AUTH_NONCE;
  if (!h) return n;
  auth_put32(msg, &n, PS_AUTH_HELLO_VERSION);
  auth_put32(msg, &n, h->mac ? 1 : 0);
  auth_put32(msg, &n, h->want_mac);
  auth_put32(msg, &n, h->unordered_acks);
  auth_put32(msg, &n, h->shm_hold);
  auth_put64(msg, &n, h->shm_bytes);
  if (!accept) return auth_put_worker(msg, n, h);
  size_t tl = h->token && h->token_len <= AUTH_TOKEN_MAX ? h->token_len : 0;
  auth_put32(msg, &n, h->features);
  auth_put32(msg, &n, h->acks);
  auth_put32(msg, &n, h->granted_hold);
  auth_put32(msg, &n, h->pulls_only);
  auth_put32(msg, &n, h->shm_pid);
  auth_put32(msg, &n, h->shm_fd);
  auth_put64(msg, &n, h->granted);
  auth_put32(msg, &n, (uint32_t)h->token_len); /* a longer one than fits: never equal */
  if (tl) memcpy(msg + n, h->token, tl);
  return auth_put_worker(msg, n + tl, h);
}

void ps_auth_proof(const ps_auth_key *k, int side, const char *cluster,
                   const uint8_t nc[PS_AUTH_NONCE], const uint8_t ns[PS_AUTH_NONCE],
                   const ps_auth_hello *h, uint8_t out[PS_AUTH_MAC]) {
  static const char *const labels[] = {"psd-chan-v2 client", "psd-chan-v2 server",
                                       "psd-chan-v2 accept"};
  static const ps_auth_hello none;
  uint8_t msg[AUTH_MSG_MAX];
  size_t n = auth_hmac_msg(msg, labels[side == PS_AUTH_SERVER ? 1 : side == PS_AUTH_ACCEPT ? 2 : 0],
                           cluster, k, nc, ns, h ? h : &none, side == PS_AUTH_ACCEPT);
  unsigned int len = PS_AUTH_MAC;
  HMAC(EVP_sha256(), k->secret, (int)k->len, msg, n, out, &len);
}

int ps_auth_check(const ps_auth_key *k, int side, const char *cluster,
                  const uint8_t nc[PS_AUTH_NONCE], const uint8_t ns[PS_AUTH_NONCE],
                  const ps_auth_hello *h, const uint8_t *got, size_t got_len) {
  uint8_t want[PS_AUTH_MAC];
  ps_auth_proof(k, side, cluster, nc, ns, h, want);
  int ok = got_len == PS_AUTH_MAC && CRYPTO_memcmp(want, got, PS_AUTH_MAC) == 0;
  OPENSSL_cleanse(want, sizeof want);
  return ok;
}

/* ---- the payload MAC -------------------------------------------------------- */

struct ps_auth_mac {
  EVP_MAC *mac;
  EVP_MAC_CTX *ctx[2];        /* per direction: [0] 'C', [1] 'S' (a reply may be
                                 received while a request is being MACed) */
  uint8_t key[PS_AUTH_MAC];   /* the session key */
  uint64_t seq[2];            /* frames MACed per direction */
};

int ps_auth_mac_new(ps_auth_mac **out, const ps_auth_key *k, const char *cluster,
                    const uint8_t nc[PS_AUTH_NONCE], const uint8_t ns[PS_AUTH_NONCE]) {
  *out = NULL;
  ps_auth_mac *m = calloc(1, sizeof *m);
  if (!m) return PS_ENOMEM;
  uint8_t msg[AUTH_MSG_MAX];
  size_t n = auth_hmac_msg(msg, "psd-chan-v1 session", cluster, k, nc, ns, NULL, 0);
  unsigned int len = PS_AUTH_MAC;
  HMAC(EVP_sha256(), k->secret, (int)k->len, msg, n, m->key, &len);
  m->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  for (int i = 0; i < 2 && m->mac; i++) m->ctx[i] = EVP_MAC_CTX_new(m->mac);
  if (!m->ctx[0] || !m->ctx[1]) {
    ps_auth_mac_free(m);
    return PS_ENOMEM;
  }
  *out = m;
  return 0;
}

void ps_auth_mac_begin(ps_auth_mac *m, char dir) {
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0),
                         OSSL_PARAM_construct_end()};
  int d = dir == 'S';
  EVP_MAC_init(m->ctx[d], m->key, sizeof m->key, params);
  uint8_t head[9];
  head[0] = (uint8_t)dir;
  for (int i = 0; i < 8; i++) head[1 + i] = (uint8_t)(m->seq[d] >> (8 * i));
  m->seq[d]++;
  EVP_MAC_update(m->ctx[d], head, sizeof head);
}

void ps_auth_mac_update(ps_auth_mac *m, char dir, const void *p, size_t n) {
  if (n) EVP_MAC_update(m->ctx[dir == 'S'], p, n);
}

void ps_auth_mac_end(ps_auth_mac *m, char dir, uint8_t out[PS_AUTH_MAC]) {
  size_t len = 0;
  EVP_MAC_final(m->ctx[dir == 'S'], out, &len, PS_AUTH_MAC);
}

int ps_auth_mac_verify(ps_auth_mac *m, char dir, const uint8_t got[PS_AUTH_MAC]) {
  uint8_t want[PS_AUTH_MAC];
  ps_auth_mac_end(m, dir, want);
  return CRYPTO_memcmp(want, got, PS_AUTH_MAC) == 0;
}

void ps_auth_mac_free(ps_auth_mac *m) {
  if (!m) return;
  EVP_MAC_CTX_free(m->ctx[0]);
  EVP_MAC_CTX_free(m->ctx[1]);
  EVP_MAC_free(m->mac);
  OPENSSL_cleanse(m, sizeof *m);
  free(m);
}
