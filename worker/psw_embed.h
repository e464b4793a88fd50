/* psw_embed: the distinct keys of a batch and its embedding-bag index.
 *
 * A batch's sparse fields are NBAGS bags of 64-bit keys (bag b = sample
 * i, field f, b = i F + f; CSR: bag_off[nbags + 1] into keys[nnz]).  A
 * step pulls each distinct key once (sparse pull: keys -> rows) into a
 * table slice [nkeys, d] whose row r is distinct key r, runs
 * embedding_lookup on that slice (ps_gpu_bags) and pushes the slice's
 * gradient as (keys, rows).  psw_embed_build dedups the keys (first
 * appearance order, so the result depends only on the batch) and builds
 * the index both ways.
 *
 * A psw_embed keeps its buffers between builds (grown, never shrunk).
 * Not thread-safe: one per worker thread. */
#ifndef PSW_EMBED_H
#define PSW_EMBED_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"
#include "ps_gpu.h"

typedef struct psw_embed psw_embed;

/* psw_embed_create makes an empty index (caller frees with
 * psw_embed_free); 0 or PS_ENOMEM. */
int psw_embed_create(psw_embed **e);
void psw_embed_free(psw_embed *e);

/* psw_embed_build indexes NBAGS bags: BAG_OFF (nbags + 1 offsets, from 0,
 * non-decreasing) into KEYS (bag_off[nbags] keys), pooled by mean when
 * MEAN.  Both are borrowed for the call.  PS_EINVAL for bad offsets or
 * more than 2^31 - 1 keys (message in EB), PS_ENOMEM. */
int psw_embed_build(psw_embed *e, uint32_t nbags, const uint32_t *bag_off, const uint64_t *keys,
                    int mean, ps_errbuf *eb);

/* psw_embed_keys returns the distinct keys of the last build (borrowed
 * until the next build) and their count in *NKEYS: row r of the table
 * slice belongs to key r. */
const uint64_t *psw_embed_keys(const psw_embed *e, uint32_t *nkeys);

/* psw_embed_bags fills *BAGS with host views of the last build's index
 * (borrowed until the next build), ready for ps_gpu_bags_check or a copy
 * to a device. */
void psw_embed_bags(const psw_embed *e, ps_gpu_bags *bags);

#endif
