/* psd_optim: the server-side optimizers, as a table of kinds.
 *
 * A chunk of N parameters owns N * psd_optim_slots() floats of optimizer
 * state ("slots"): slot k of element i lives at slots[k * N + i].  Every
 * kind adds weight_decay * w to the gradient first (L2).  Kinds:
 *
 *   sgd       w -= lr * g
 *   momentum  v = mu * v + g;  w -= lr * v                       (1 slot)
 *   nesterov  v = mu * v + g;  w -= lr * (g + mu * v)            (1 slot)
 *   adam      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *             lr_t = lr sqrt(1 - b2^t) / (1 - b1^t);
 *             w -= lr_t * m / (sqrt(v) + eps)                    (2 slots)
 *   adagrad   G += g^2;  w -= lr * g / (sqrt(G) + eps)            (1 slot)
 *
 * With lr_decay (gamma) and lr_decay_steps (S) set, every kind uses
 * lr_t = lr * gamma^((t - 1) / S) in place of lr, t being the chunk's update
 * count (an exponential schedule that needs no knowledge of the run's length).
 *
 * Proto3 has no presence, so 0 in the spec means the default: momentum
 * 0.9, beta1 0.9, beta2 0.999, eps 1e-8 (adam) or 1e-10 (adagrad).
 *
 * Pure functions over caller memory; thread-safe. */
#ifndef PSD_OPTIM_H
#define PSD_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"
#include "ps.pb-c.h"

typedef struct psd_optim_kind psd_optim_kind;

/* Resolved settings of one model's optimizer (defaults applied). */
typedef struct psd_optim {
  const psd_optim_kind *kind; /* static table entry */
  float lr, momentum, beta1, beta2, eps, weight_decay;
  float lr_decay;             /* 1: constant lr */
  uint32_t lr_decay_steps;
} psd_optim;

/* psd_optim_init resolves SPEC (borrowed for the call) into *O, applying
 * the defaults above.  Returns 0, or PS_EINVAL with a message in EB for a
 * missing spec, an unknown kind or a non-finite / non-positive lr. */
int psd_optim_init(psd_optim *o, const Ps__OptimizerSpec *spec, ps_errbuf *eb);

/* psd_optim_slots returns how many floats of state each parameter needs. */
unsigned psd_optim_slots(const psd_optim *o);

/* psd_optim_name returns the kind's static name ("adam", ...). */
const char *psd_optim_name(const psd_optim *o);

/* psd_optim_init_slots sets the N * slots floats at SLOTS to their initial
 * values (zeros for every kind). */
void psd_optim_init_slots(const psd_optim *o, float *slots, uint32_t n);

/* Every parameter and optimizer slot stays finite (issue 10): a push is
 * refused whole when any of its updates would leave one non-finite.  To
 * keep that check off the hot path, each chunk carries bounds on the
 * magnitudes it holds, and psd_optim_predict bounds an update from them:
 * when every value the update computes stays below PSD_OPTIM_SAFE, the
 * update is certainly finite and runs in place at full speed; only
 * otherwise does the store try it on a copy first (psd_optim_measure). */
#define PSD_OPTIM_MAX_SLOTS 2
#define PSD_OPTIM_SAFE 1e37 /* FLT_MAX / 34: room for float rounding */

typedef struct psd_optim_bounds {
  float w;                        /* max |value| */
  float s[PSD_OPTIM_MAX_SLOTS];   /* max |slot k| */
} psd_optim_bounds;

/* psd_optim_predict bounds one update at STEP (as psd_optim_apply's) of a
 * chunk whose magnitudes are bounded by *B, with |gradient| <= GMAX.
 * Returns 1 and the bounds after the update in *AFTER when every value it
 * computes stays below PSD_OPTIM_SAFE; 0 when that is not certain. */
int psd_optim_predict(const psd_optim *o, const psd_optim_bounds *b, double gmax, uint64_t step,
                      psd_optim_bounds *after);

/* psd_optim_absmax returns max |x| over the N floats at X, or a value
 * that is not finite when one of them is not (one vectorised pass). */
float psd_optim_absmax(const float *x, size_t n);

/* psd_optim_measure writes to *B the exact bounds of the chunk at W (N
 * values followed by its slots); returns 0 when every float is finite,
 * else -1. */
int psd_optim_measure(const psd_optim *o, const float *w, uint32_t n, psd_optim_bounds *b);

/* psd_optim_apply applies gradient G (N floats) to weights W and SLOTS (N
 * * slots floats) of one chunk.  STEP is the chunk's update count including
 * this one (1 for the first update; Adam's bias correction uses it).  W,
 * SLOTS and G must not overlap. */
void psd_optim_apply(const psd_optim *o, float *w, float *slots, const float *g, uint32_t n,
                     uint64_t step);

#endif
