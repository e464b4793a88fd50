/* fuzz_data.h: the selection byte shared by fuzz_idx and fuzz_csv. */
#ifndef PS_FUZZ_DATA_H
#define PS_FUZZ_DATA_H

#include "psw_data.h"

/* fuzz_data_sel turns selection byte B into *SEL and returns it, or NULL
 * (every sample) for 0: limit B >> 4 (0: none), B & 3 + 1 partitions, of
 * which the last one, or all of them when B & 4. */
static inline const psw_data_sel *fuzz_data_sel(uint8_t b, psw_data_sel *sel, uint32_t *part) {
  if (b == 0) return NULL;
  sel->limit = b >> 4;
  sel->nparts = (b & 3u) + 1;
  *part = sel->nparts - 1;
  sel->parts = b & 4 ? NULL : part;
  sel->nsel = b & 4 ? 0 : 1;
  return sel;
}

/* fuzz_data_check checks a dataset loaded with SEL: sizes agree, labels
 * and features as promised (features finite; IDX: LUT values). */
static inline void fuzz_data_check(const psw_dataset *d, const psw_data_sel *sel) {
  fuzz_check(d->n <= d->total, "%llu samples of %llu", (unsigned long long)d->n,
             (unsigned long long)d->total);
  if (!sel) fuzz_check(d->n == d->total, "not every sample loaded");
  if (sel && sel->limit) fuzz_check(d->total <= sel->limit, "limit ignored");
  fuzz_check(d->dim > 0, "no features");
  fuzz_check(!d->rows || (uint64_t)d->rows * d->cols == d->dim, "rows x cols != dim");
  for (uint64_t i = 0; i < d->n * d->dim; i++)
    fuzz_check(d->x[i] == d->x[i] && d->x[i] - d->x[i] == 0, "feature %llu not finite",
               (unsigned long long)i);
  for (uint64_t i = 0; i < d->n; i++)
    fuzz_check(!d->rows || (d->y[i] >= 0 && d->y[i] < 256), "IDX label %d", d->y[i]);
}

/* fuzz_data_failed checks a failed load of a reader: a code a reader may
 * return, with a message, and nothing left in D. */
static inline void fuzz_data_failed(int rc, const ps_errbuf *eb, const psw_dataset *d) {
  fuzz_check_error(rc, *eb);
  fuzz_check(rc == PS_EIO || rc == PS_EFORMAT || rc == PS_EINVAL || rc == PS_ENOMEM,
             "rc %s (%s)", ps_errname(rc), eb->msg);
  fuzz_check(!d->x && !d->y, "a failed load left data");
}

#endif
