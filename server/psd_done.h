/* psd_done: the one completion of any request that finishes later
 * (DESIGN.md "Hierarchy": one asynchronous completion object for any
 * request).  A transport (psd_chan, psd_grpc) owns one per waiting
 * request, sets fn and arg, and hands it, inside the waiting subsystem's
 * record, to that subsystem:
 *   - a pull parked for slower workers (psd_park, psd_clock.h);
 *   - a push waiting for its log record's sync (psd_wal_waiter, psd_wal.h);
 *   - a push or pull forwarded by an aggregator (psd_op, psd_agg.h).
 * The subsystem finishes it through psd_done_finish: fn runs once, on the
 * loop thread, after the record left the subsystem's lists (it may call
 * back into the subsystem), unless the subsystem's cancel took the record
 * back first.  Results a subsystem gives (a forwarded pull's values) are
 * in the psd_done, valid while fn runs. */
#ifndef PSD_DONE_H
#define PSD_DONE_H

#include <stdint.h>

typedef struct psd_done psd_done;

/* STATUS 0 or a PS_E* code with MSG (borrowed for the call, may be NULL). */
typedef void psd_done_fn(psd_done *d, int status, const char *msg);

struct psd_done {
  psd_done_fn *fn;
  void *arg;              /* the transport's request */
  /* results, where the subsystem gives them, valid during fn: */
  uint64_t version;
  const void *data;       /* borrowed until fn returns */
  uint64_t nbytes;
};

/* psd_done_finish runs D's fn with STATUS and MSG. */
static inline void psd_done_finish(psd_done *d, int status, const char *msg) {
  d->fn(d, status, msg);
}

#endif
