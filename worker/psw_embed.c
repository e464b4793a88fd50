/* psw_embed: dedup of a batch's keys (open addressing, linear probing on
 * ps_mix64 of the key) and the two-way bag index. */
#include "psw_embed.h"

#include <stdlib.h>
#include <string.h>

#include "ps_place.h"

struct psw_embed {
  uint32_t nbags, nkeys, nnz;
  int mean;
  uint64_t *keys;                 /* distinct keys, first-appearance order */
  int32_t *bag_off, *bag_slot;    /* nbags + 1, nnz */
  int32_t *row_off, *row_bag;     /* nkeys + 1, nnz */
  int32_t *slot_of;               /* hash table: slot + 1 per cell, 0 = empty */
  size_t cap_bags, cap_nnz, cap_hash;
};

int psw_embed_create(psw_embed **e) {
  *e = calloc(1, sizeof **e);
  return *e ? 0 : PS_ENOMEM;
}

void psw_embed_free(psw_embed *e) {
  if (!e) return;
  free(e->keys);
  free(e->bag_off);
  free(e->bag_slot);
  free(e->row_off);
  free(e->row_bag);
  free(e->slot_of);
  free(e);
}

/* regrow reallocates *P to N elements of SIZE bytes; 0 or PS_ENOMEM
 * (*P unchanged then). */
static int regrow(void *p, size_t n, size_t size) {
  void *np = realloc(*(void **)p, (n ? n : 1) * size);
  if (!np) return PS_ENOMEM;
  *(void **)p = np;
  return 0;
}

/* cap_for: the power of two (at least 64) that holds N. */
static size_t cap_for(size_t n) {
  size_t c = 64;
  while (c < n) c *= 2;
  return c;
}

/* reserve sizes every buffer for NBAGS bags and NNZ keys; a capacity is
 * raised only once all its arrays have grown. */
static int reserve(psw_embed *e, uint32_t nbags, uint32_t nnz) {
  if ((size_t)nbags + 1 > e->cap_bags) {
    size_t c = cap_for((size_t)nbags + 1);
    if (regrow(&e->bag_off, c, sizeof *e->bag_off)) return PS_ENOMEM;
    e->cap_bags = c;
  }
  if ((size_t)nnz + 1 > e->cap_nnz) {
    size_t c = cap_for((size_t)nnz + 1);
    if (regrow(&e->keys, c, sizeof *e->keys) || regrow(&e->bag_slot, c, sizeof *e->bag_slot) ||
        regrow(&e->row_bag, c, sizeof *e->row_bag) || regrow(&e->row_off, c, sizeof *e->row_off))
      return PS_ENOMEM;
    e->cap_nnz = c;
  }
  if ((size_t)nnz * 2 >= e->cap_hash) {
    size_t c = cap_for((size_t)nnz * 2);
    if (regrow(&e->slot_of, c, sizeof *e->slot_of)) return PS_ENOMEM;
    e->cap_hash = c;
  }
  return 0;
}

int psw_embed_build(psw_embed *e, uint32_t nbags, const uint32_t *bag_off, const uint64_t *keys,
                    int mean, ps_errbuf *eb) {
  if (!bag_off || bag_off[0] != 0)
    return ps_errf(eb, PS_EINVAL, "embedding bags: offsets must start at 0");
  for (uint32_t b = 0; b < nbags; b++)
    if (bag_off[b + 1] < bag_off[b])
      return ps_errf(eb, PS_EINVAL, "embedding bags: offset of bag %u decreases", b + 1);
  const uint32_t nnz = bag_off[nbags];
  if (nnz > INT32_MAX || nbags > INT32_MAX - 1)
    return ps_errf(eb, PS_EINVAL, "embedding bags: %u keys in %u bags (at most 2^31 - 1)", nnz, nbags);
  if (nnz && !keys) return ps_errf(eb, PS_EINVAL, "embedding bags: no keys");
  if (reserve(e, nbags, nnz)) return ps_errf(eb, PS_ENOMEM, "embedding bags: out of memory");
  const size_t mask = e->cap_hash - 1;
  memset(e->slot_of, 0, e->cap_hash * sizeof *e->slot_of);
  uint32_t nk = 0;
  /* pass 1: slots, distinct keys, and each row's occurrence count in row_off */
  for (uint32_t k = 0; k < nnz; k++) {
    size_t h = ps_mix64(keys[k]) & mask;
    while (e->slot_of[h] && e->keys[e->slot_of[h] - 1] != keys[k]) h = (h + 1) & mask;
    if (!e->slot_of[h]) {
      e->keys[nk] = keys[k];
      e->row_off[nk + 1] = 0;
      e->slot_of[h] = (int32_t)++nk;
    }
    e->bag_slot[k] = e->slot_of[h] - 1;
    e->row_off[e->bag_slot[k] + 1]++;
  }
  e->row_off[0] = 0;
  for (uint32_t r = 0; r < nk; r++) e->row_off[r + 1] += e->row_off[r];
  /* pass 2: bags in increasing order fill each row's list in bag order
   * (row_off[r] is advanced as the cursor, then shifted back) */
  for (uint32_t b = 0; b < nbags; b++) {
    e->bag_off[b] = (int32_t)bag_off[b];
    for (uint32_t k = bag_off[b]; k < bag_off[b + 1]; k++)
      e->row_bag[e->row_off[e->bag_slot[k]]++] = (int32_t)b;
  }
  e->bag_off[nbags] = (int32_t)nnz;
  for (uint32_t r = nk; r > 0; r--) e->row_off[r] = e->row_off[r - 1];
  e->row_off[0] = 0;
  e->nbags = nbags;
  e->nkeys = nk;
  e->nnz = nnz;
  e->mean = mean != 0;
  return 0;
}

const uint64_t *psw_embed_keys(const psw_embed *e, uint32_t *nkeys) {
  *nkeys = e->nkeys;
  return e->keys;
}

void psw_embed_bags(const psw_embed *e, ps_gpu_bags *bags) {
  bags->nbags = e->nbags;
  bags->nrows = e->nkeys;
  bags->nnz = e->nnz;
  bags->bag_off = e->bag_off;
  bags->bag_slot = e->bag_slot;
  bags->row_off = e->row_off;
  bags->row_bag = e->row_bag;
  bags->mean = e->mean;
}
