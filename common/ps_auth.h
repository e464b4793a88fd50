/* ps_auth: identities and the tensor channel's authentication.
 *
 * Roles (README "security"): a worker may push, pull, register, heartbeat
 * and read (GetModel, Export, Status, ListWorkers); an aggregator may also
 * forward sums on the channel; an operator may do everything but forward
 * sums, and only an operator may submit or replace a model or page
 * through an embedding table (ExportRows).  psd_grpc's method table says
 * who may call each gRPC method (test_sec_method_table pins it).  On the
 * control plane the role is the OU of the client certificate's subject
 * (gRPC auth context, psd_grpc); on the channel it is the role of the key
 * the peer proved it holds.
 *
 * The secret file holds the cluster's channel keys, one per line:
 *     KEY_ID ROLE HEX_SECRET       # comment
 * KEY_ID: 1-32 letters, digits, '.', '_', '-'; ROLE: worker | aggregator
 * | operator; the secret is 32..128 bytes written as hex.  A shard accepts
 * every key of its file (so a key can be rotated without stopping the
 * cluster: add the new key to the shards, move the clients, remove the
 * old); a client proves the last key of its own role.  The file must be
 * a regular file readable by its owner only.
 *
 * The hello (ps_chan.h): client nonce Nc -> server nonce Ns and the
 * server's proof -> client's proof -> ok with the shard's accept MAC.
 * Each is HMAC-SHA256(secret, label | SHA-256(cluster) | key id | Nc | Ns | the
 * hello's negotiated fields (ps_auth_hello)) with a label per side, so
 * none can be replayed on another connection (fresh nonces), reflected to
 * the other side, or kept while a field is changed on the way; they are
 * compared in constant time (CRYPTO_memcmp).  Thread-safe; a loaded key set is read-only. */
#ifndef PS_AUTH_H
#define PS_AUTH_H

#include <openssl/x509.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"

enum ps_role { PS_ROLE_NONE = 0, PS_ROLE_WORKER, PS_ROLE_AGGREGATOR, PS_ROLE_OPERATOR,
               PS_ROLE_COUNT };
#define PS_ROLE_BIT(r) (1u << (r))
/* Sets of roles allowed to do something. */
#define PS_ROLES_ANY (PS_ROLE_BIT(PS_ROLE_NONE) | PS_ROLES_CLIENT)
#define PS_ROLES_CLIENT \
  (PS_ROLE_BIT(PS_ROLE_WORKER) | PS_ROLE_BIT(PS_ROLE_AGGREGATOR) | PS_ROLE_BIT(PS_ROLE_OPERATOR))
#define PS_ROLES_OPERATOR PS_ROLE_BIT(PS_ROLE_OPERATOR)

/* ps_role_name returns "worker", ... ("none" for PS_ROLE_NONE); static. */
const char *ps_role_name(int role);

/* ps_role_parse returns the role named by the LEN bytes at S, or -1. */
int ps_role_parse(const char *s, size_t len);

/* ps_role_from_name returns the role that NAME's OU attributes name
 * (OU=worker, ...; other OUs ignored), or PS_ROLE_NONE (also when two OUs
 * name different roles).  ps_role_from_cert_pem: the same for the subject
 * of the PEM certificate in the LEN bytes at PEM (gRPC's x509_pem_cert
 * auth property); none when it does not parse. */
int ps_role_from_name(const X509_NAME *name);
int ps_role_from_cert_pem(const char *pem, size_t len);

/* A few recent certificates' roles, keyed by their exact PEM bytes (a
 * rotated certificate's bytes differ: parsed anew, never an old role);
 * one thread's (psd_grpc: the loop's).  Zeroed: empty. */
#define PS_ROLE_CACHE_N 8
typedef struct ps_role_cache {
  struct {
    char *pem;
    size_t len;
    int role;
  } e[PS_ROLE_CACHE_N];
  unsigned next;   /* the entry replaced next */
  uint64_t parsed; /* certificates parsed (not found in the cache) */
} ps_role_cache;

/* ps_role_cache_get is ps_role_from_cert_pem through C; ps_role_cache_free
 * empties C. */
int ps_role_cache_get(ps_role_cache *c, const char *pem, size_t len);
void ps_role_cache_free(ps_role_cache *c);

/* ps_auth_private_file checks that PATH is a regular file that neither
 * its group nor others may read, write or execute; 0, or PS_ECONFIG /
 * PS_EIO with the path, and who may do what, in EB. */
int ps_auth_private_file(const char *path, ps_errbuf *eb);

#define PS_AUTH_ID_MAX 32
#define PS_AUTH_SECRET_MIN 32
#define PS_AUTH_SECRET_MAX 128
#define PS_AUTH_NONCE 32
#define PS_AUTH_MAC 32

typedef struct ps_auth_key {
  char id[PS_AUTH_ID_MAX + 1];
  int role;
  size_t len;
  uint8_t secret[PS_AUTH_SECRET_MAX];
} ps_auth_key;

typedef struct ps_auth_keys {
  ps_auth_key *keys;
  size_t n;
} ps_auth_keys;

/* ps_auth_load reads the secret file PATH into *K (zeroed first; released
 * with ps_auth_release).  PS_ECONFIG with "PATH:LINE: message" for a bad
 * line (never quoting a secret), a file others may read, or no key. */
int ps_auth_load(ps_auth_keys *k, const char *path, ps_errbuf *eb);

/* ps_auth_release wipes and frees K's keys; idempotent. */
void ps_auth_release(ps_auth_keys *k);

/* ps_auth_find returns the key with id ID, or NULL (borrowed from K). */
const ps_auth_key *ps_auth_find(const ps_auth_keys *k, const char *id);

/* ps_auth_pick returns the last key of ROLE in K, or NULL. */
const ps_auth_key *ps_auth_pick(const ps_auth_keys *k, int role);

/* ps_auth_client_key loads SECRET_FILE (NULL: no channel auth; *KEY =
 * NULL, 0) into *KS and points *KEY at the key a client of ROLE proves
 * (ps_auth_pick); PS_ECONFIG when the file has none of that role.  The
 * caller releases *KS with ps_auth_release. */
int ps_auth_client_key(const char *secret_file, int role, ps_auth_keys *ks,
                       const ps_auth_key **key, ps_errbuf *eb);

/* ---- a client's key, read again at each connection -------------------------
 * A client (psw, psctl, an aggregator towards its roots) proves the last
 * key of its role in its secret file.  Rotation (README "Security") moves
 * that file to a new key while the client runs, so a client reads the
 * file again whenever it opens a channel (ps_auth_client_now): a moved
 * file takes effect at its next connection, and a connection never
 * proves a key the shards were told to forget only because the client
 * started before the move.  A file that cannot be read then (being
 * rewritten, a mode others may read, no key of the role) keeps the key
 * the client had, with one warning until a read works again.  Thread-safe
 * (a mutex); each call hands out a copy, so connections never share the
 * key being replaced. */
typedef struct ps_auth_client {
  const char *path;         /* the secret file (borrowed); NULL: no channel auth */
  int role;
  int open;                 /* the mutex is initialised */
  int failing;              /* the last read failed and said so */
  pthread_mutex_t mu;
  ps_auth_key key;          /* the key the file names now */
  ps_auth_key proven;       /* the last key a hello proved (has_proven) */
  int has_proven;
} ps_auth_client;

/* ps_auth_client_open reads SECRET_FILE (NULL: no channel auth) for a
 * client of ROLE into AC (zeroed first) as ps_auth_client_key does: at
 * start a file without a key of ROLE is an error (PS_ECONFIG / PS_EIO). */
int ps_auth_client_open(ps_auth_client *ac, const char *secret_file, int role, ps_errbuf *eb);

/* ps_auth_client_now reads AC's file again and copies the key to prove now
 * into *OUT (the caller wipes it with ps_auth_key_wipe once the hello is
 * done): 1, or 0 when AC has no file (*OUT untouched: no auth).  A file
 * that cannot be read keeps the old key (a warning, once until it reads
 * again); a new key is logged at info level. */
int ps_auth_client_now(ps_auth_client *ac, ps_auth_key *out);

/* ps_auth_client_proved notes that a hello proved K (the key a refused
 * new one falls back to: ps_auth_client_fallback).  ps_auth_client_fallback
 * copies into *OUT the last key a hello proved when it is not key id
 * NEW_ID: 1, else 0.  A file shared with the shards names the new key as
 * soon as it is edited, before the shards' SIGHUP; a connection refused
 * for the new key then proves the old one (README "Security"). */
void ps_auth_client_proved(ps_auth_client *ac, const ps_auth_key *k);
int ps_auth_client_fallback(ps_auth_client *ac, const char *new_id, ps_auth_key *out);

/* ps_auth_client_close wipes AC's key; idempotent (a zeroed AC is fine). */
void ps_auth_client_close(ps_auth_client *ac);

/* ps_auth_key_wipe zeroes K in a way the compiler keeps (a secret). */
void ps_auth_key_wipe(ps_auth_key *k);

/* ps_auth_nonce fills OUT with random bytes (RAND_bytes); 0 or PS_EINTERNAL. */
int ps_auth_nonce(uint8_t out[PS_AUTH_NONCE], ps_errbuf *eb);

/* The hello's negotiated fields, all of which the proofs cover, so that
 * one a middleman changed (a feature turned off, unordered acks or shared
 * memory asked for or refused) fails the hello: what the client's first
 * HELLO asked for, the shard's payload-MAC decision in its challenge and,
 * for the accept MAC (PS_AUTH_ACCEPT) only, what the shard's last HELLO
 * granted.  A field this psd does not send is 0.  worker1 (a worker's
 * own connection: its id + 1, ps.proto hello_worker) goes into the proofs
 * only when set, last, so that a hello naming no worker (an aggregator's,
 * psctl's, an older client's) is proved as before. */
typedef struct ps_auth_hello {
  uint32_t want_mac, unordered_acks, shm_hold; /* the client's first HELLO */
  uint64_t shm_bytes;
  uint32_t worker1;                            /* ... hello_worker (0: none) */
  uint32_t mac;                                /* the shard's challenge: payload_mac */
  uint32_t features, acks, granted_hold, pulls_only, shm_pid, shm_fd; /* its last HELLO */
  uint64_t granted;                            /* ... shm_bytes */
  const uint8_t *token;                        /* ... shm_token (TOKEN_LEN bytes) */
  size_t token_len;
} ps_auth_hello;

/* Whose MAC: the client's proof, the shard's proof, or the shard's
 * accept MAC over its last HELLO (ps_chan.h). */
enum { PS_AUTH_CLIENT = 0, PS_AUTH_SERVER = 1, PS_AUTH_ACCEPT = 2 };

/* The hello's auth_version (ps.proto ChanMeta): both sides send it with a
 * key; either refuses a peer that does not (a psd whose proofs do not
 * cover the fields of ps_auth_hello: README "Security"). */
#define PS_AUTH_HELLO_VERSION 2

/* PS_AUTH_OLD_PEER names, in a refusal, a peer whose hello has no
 * auth_version PS_AUTH_HELLO_VERSION (one text for every side). */
#define PS_AUTH_OLD_PEER                                                          \
  "a psd build whose hello carries no auth_version, made before the proofs "    \
  "covered the negotiated fields: upgrade every process of the cluster together"

/* ps_auth_proof computes SIDE's MAC (PS_AUTH_CLIENT, _SERVER, _ACCEPT)
 * over CLUSTER, K's id, the two nonces and the hello's fields H (the
 * client's and the challenge's; the accept MAC also the last HELLO's)
 * into OUT. */
void ps_auth_proof(const ps_auth_key *k, int side, const char *cluster,
                   const uint8_t nc[PS_AUTH_NONCE], const uint8_t ns[PS_AUTH_NONCE],
                   const ps_auth_hello *h, uint8_t out[PS_AUTH_MAC]);

/* ps_auth_check recomputes the MAC and compares it with GOT (GOT_LEN
 * bytes) in constant time; 1 when it matches, else 0. */
int ps_auth_check(const ps_auth_key *k, int side, const char *cluster,
                  const uint8_t nc[PS_AUTH_NONCE], const uint8_t ns[PS_AUTH_NONCE],
                  const ps_auth_hello *h, const uint8_t *got, size_t got_len);

/* ---- the payload MAC (security.payload_mac) ------------------------------
 * After the hello both sides derive a session key, HMAC(secret, "psd-chan-v1
 * session" | cluster | key id | Nc | Ns), and every frame then ends in a
 * 32-byte HMAC-SHA256 of (direction byte 'C' client->shard or 'S'
 * shard->client | the direction's frame count, u64 LE | header | meta |
 * data) (ps_chan.h PS_CHAN_FLAG_MAC): a changed, dropped, replayed or
 * reordered frame fails its check. */
typedef struct ps_auth_mac ps_auth_mac;

/* ps_auth_mac_new derives the session key of K and the nonces into a new
 * MAC state *OUT (freed with ps_auth_mac_free); 0 or PS_ENOMEM. */
int ps_auth_mac_new(ps_auth_mac **out, const ps_auth_key *k, const char *cluster,
                    const uint8_t nc[PS_AUTH_NONCE], const uint8_t ns[PS_AUTH_NONCE]);

/* ps_auth_mac_begin starts the MAC of the next frame in direction DIR
 * ('C' or 'S'; each direction counts its own frames and has its own
 * state, so a frame of each direction may be in progress at once). */
void ps_auth_mac_begin(ps_auth_mac *m, char dir);

/* ps_auth_mac_update adds N bytes at P to DIR's frame MAC. */
void ps_auth_mac_update(ps_auth_mac *m, char dir, const void *p, size_t n);

/* ps_auth_mac_end writes DIR's frame MAC to OUT. */
void ps_auth_mac_end(ps_auth_mac *m, char dir, uint8_t out[PS_AUTH_MAC]);

/* ps_auth_mac_verify ends DIR's frame MAC and compares it with GOT in
 * constant time; 1 when it matches. */
int ps_auth_mac_verify(ps_auth_mac *m, char dir, const uint8_t got[PS_AUTH_MAC]);

/* ps_auth_mac_free wipes and frees M (NULL is fine). */
void ps_auth_mac_free(ps_auth_mac *m);

#endif
