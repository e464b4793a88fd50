/* psw_ctr: the Criteo click-log format (Display Advertising Challenge /
 * Terabyte logs), gzipped or not.
 *
 * One sample per line, 40 tab-separated fields: the label (0 or 1), 13
 * integer features (decimal, may be negative) and 26 categorical
 * features (hexadecimal ids of 1 to 16 digits); every feature may be
 * empty (missing).  Lines end in '\n' (a '\r' before it is dropped); blank
 * lines are skipped; at most 64 KiB per line.
 *
 * What a sample becomes:
 *   dense[j]  = sign(x) log(1 + |x|) of integer feature j, 0 when missing
 *               (the usual transform: Criteo's counts span 0..10^9);
 *   keys[f]   = ps_mix64(id + ps_mix64(f + 1)) for categorical field f's id,
 *               the id 2^64 - 1 standing for a missing value: one 64-bit key
 *               space for all fields, where field f's ids never meet field
 *               g's (the same id in two fields gives two keys), so one
 *               embedding table serves every field.
 *
 * Errors: PS_EIO (cannot open, read error), PS_EFORMAT "PATH:LINE: field
 * N (what): message" (1-based lines counted as in the file, blank ones
 * included; fields 1-based: 1 the label, 2-14 the integers, 15-40 the
 * categorical ones), PS_EFORMAT from psw_gz (a gzip stream cut short or
 * corrupt, bytes after it that are no gzip member), PS_ENOMEM.
 *
 * Thread-safety: no global state; a loaded log is read-only. */
#ifndef PSW_CTR_H
#define PSW_CTR_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"

#define PSW_CTR_DENSE 13
#define PSW_CTR_FIELDS 26

typedef struct psw_ctr {
  uint64_t n;        /* samples */
  int32_t *label;    /* n labels, 0 or 1; owned */
  float *dense;      /* n x PSW_CTR_DENSE, row-major; owned */
  uint64_t *keys;    /* n x PSW_CTR_FIELDS, row-major; owned */
} psw_ctr;

/* psw_ctr_key returns the key of id ID in categorical field FIELD
 * (0-based); ID = UINT64_MAX is "missing". */
uint64_t psw_ctr_key(uint32_t field, uint64_t id);

/* psw_ctr_load reads the first LIMIT samples of PATH (0: all) into *C
 * (zeroed first; release with psw_ctr_release).  Returns 0 or a PS_E*
 * code with a message in EB (nothing to release then). */
int psw_ctr_load(psw_ctr *c, const char *path, uint64_t limit, ps_errbuf *eb);

/* psw_ctr_release frees C's arrays and zeroes it; idempotent. */
void psw_ctr_release(psw_ctr *c);

#endif
