/* ps_shm: the shared-memory region of a tensor-channel connection between
 * a worker and a shard on the same host (ps_chan.h "shared memory",
 * psd_chan invariant 11).
 *
 * Invariants:
 *  1. The shard creates the region (memfd_create, MFD_ALLOW_SEALING), sizes
 *     it PS_SHM_HDR + bytes and seals it against shrinking, growing and
 *     further sealing before it maps it: nobody, the client included, can
 *     make the file smaller than the mapping, so touching any byte of it
 *     never raises SIGBUS in either process.
 *  2. The first PS_SHM_TOKEN bytes hold a random token the shard wrote,
 *     which it also names in its HELLO reply; the client opens the region
 *     through /proc/<pid>/fd/<fd> (the kernel lets only a process allowed
 *     to inspect the shard do that: the same user, outside a stricter
 *     namespace) and uses it only when the size, the seals and the token
 *     all match: a pid from another pid namespace or a descriptor reused
 *     meanwhile names some other file, which is then left alone.
 *  3. Data lives from `data` (the region's start + PS_SHM_HDR, page
 *     aligned) for `bytes` bytes; offsets on the wire count from there.
 *     What either side writes there is visible to the other at once; who
 *     may write which bytes when is the channel's business (ps_chan.h).
 *  4. A client may move the data part of its mapping onto memory of its
 *     own (ps_shm_move: the worker's parameter and gradient vectors, so
 *     that pushes and pulls need no copy on its side).  The memory keeps
 *     its bytes both ways: they are copied into the region before the move,
 *     and on release the range gets private anonymous memory holding the
 *     region's last bytes (or, if that cannot be had, keeps the shared
 *     mapping), so the owner's pointers stay valid and its data intact. */
#ifndef PS_SHM_H
#define PS_SHM_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"

#define PS_SHM_HDR 4096u   /* the token's page; data starts after it */
#define PS_SHM_TOKEN 32u

typedef struct ps_shm {
  uint8_t *map;            /* the whole mapping (NULL: none) */
  size_t map_len;
  uint8_t *data;           /* map + PS_SHM_HDR */
  uint64_t bytes;          /* usable bytes at data */
  int fd;                  /* the shard's memfd, until closed; -1 */
  int moved;               /* data lies at the owner's memory (invariant 4) */
  uint8_t token[PS_SHM_TOKEN];
} ps_shm;

/* ps_shm_create makes a sealed region of BYTES usable bytes (invariant
 * 1) with a fresh token (invariant 2), its descriptor kept in S->fd for
 * the client to open.  0, or PS_ENOTSUP / PS_ENOMEM / PS_EIO with the
 * reason in EB (S is then empty). */
int ps_shm_create(ps_shm *s, uint64_t bytes, ps_errbuf *eb);

/* ps_shm_open maps the region the shard named: process PID's descriptor
 * FD, BYTES usable bytes, TOKEN (TLEN bytes).  0, or a PS_E* code with the
 * reason in EB (nothing mapped; invariant 2). */
int ps_shm_open(ps_shm *s, uint32_t pid, uint32_t fd, uint64_t bytes, const uint8_t *token,
                size_t tlen, ps_errbuf *eb);

/* ps_shm_move moves S's data onto AT (page aligned, S->bytes long, memory
 * the caller owns: its bytes are copied into the region first; invariant
 * 4).  0, or PS_EINVAL / PS_ENOMEM (S unchanged, the data still at its own
 * place). */
int ps_shm_move(ps_shm *s, void *at, ps_errbuf *eb);

/* ps_shm_close_fd closes S's descriptor (the mapping stays). */
void ps_shm_close_fd(ps_shm *s);

/* ps_shm_release unmaps S and closes its descriptor; S is empty after
 * (a zeroed or released S is fine). */
void ps_shm_release(ps_shm *s);

/* ps_shm_holds: OFF + LEN lies inside S's data and OFF is 8-byte aligned. */
int ps_shm_holds(const ps_shm *s, uint64_t off, uint64_t len);

#endif
