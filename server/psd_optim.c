/* psd_optim: server-side optimizers (SGD, momentum, Nesterov, Adam,
 * AdaGrad) as a table of kinds; see psd_optim.h for the update rules.
 *
 * The loops read and write through restrict pointers and carry no
 * branches, so the compiler vectorises them, and each is compiled for
 * AVX-512 and AVX2 too (PSD_OPTIM_CLONES): the CPU picks at load.  The
 * build's ISO C mode contracts nothing into FMAs and sqrt and division
 * round exactly at every width, so every clone computes the same bits.
 * Adam on a shard is memory- and divide-bound: the AVX-512 clone runs the
 * MLP's 235k parameters in half the SSE loop's time, and that update sits
 * between every push and the pull behind it (BENCHMARKS.md, issue 11). */
#include "psd_optim.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "ps_codec.h"

/* Static: clang 14 names an exported target_clones function's symbols so
 * that other files cannot link to it (ps_codec.c does the same). */
#if defined(__x86_64__) && defined(__GNUC__)
#define PSD_OPTIM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PSD_OPTIM_CLONES
#endif

typedef void psd_optim_apply_fn(const psd_optim *o, float *restrict w, float *restrict s,
                                const float *restrict g, uint32_t n, uint64_t step);

/* What bounds an update: the current bounds B, |g| <= G (weight decay
 * already folded in: G = gmax + wd * w), the step's learning rate LR.
 * Writes the bounds after the update to *A and returns the largest value
 * the update computes on the way (intermediates included). */
typedef double psd_optim_predict_fn(const psd_optim *o, const psd_optim_bounds *b, double g,
                                    double lr, uint64_t step, psd_optim_bounds *a);

struct psd_optim_kind {
  const char *name;
  unsigned slots;
  float eps_default;
  psd_optim_apply_fn *apply;
  psd_optim_predict_fn *predict;
};

/* psd_optim_sgd: w -= lr * (g + wd * w). */
PSD_OPTIM_CLONES
static void psd_optim_sgd(const psd_optim *o, float *restrict w, float *restrict s,
                          const float *restrict g, uint32_t n, uint64_t step) {
  (void)s, (void)step;
  const float lr = o->lr, wd = o->weight_decay;
  for (uint32_t i = 0; i < n; i++) w[i] -= lr * (g[i] + wd * w[i]);
}

/* psd_optim_momentum: v = mu v + g'; w -= lr v (heavy ball). */
PSD_OPTIM_CLONES
static void psd_optim_momentum(const psd_optim *o, float *restrict w, float *restrict v,
                               const float *restrict g, uint32_t n, uint64_t step) {
  (void)step;
  const float lr = o->lr, wd = o->weight_decay, mu = o->momentum;
  for (uint32_t i = 0; i < n; i++) {
    float gi = g[i] + wd * w[i];
    v[i] = mu * v[i] + gi;
    w[i] -= lr * v[i];
  }
}

/* psd_optim_nesterov: v = mu v + g'; w -= lr (g' + mu v). */
PSD_OPTIM_CLONES
static void psd_optim_nesterov(const psd_optim *o, float *restrict w, float *restrict v,
                               const float *restrict g, uint32_t n, uint64_t step) {
  (void)step;
  const float lr = o->lr, wd = o->weight_decay, mu = o->momentum;
  for (uint32_t i = 0; i < n; i++) {
    float gi = g[i] + wd * w[i];
    v[i] = mu * v[i] + gi;
    w[i] -= lr * (gi + mu * v[i]);
  }
}

/* psd_optim_adam: moments in s[0..n) (m) and s[n..2n) (v); bias
 * correction folded into the step size, computed in double. */
PSD_OPTIM_CLONES
static void psd_optim_adam(const psd_optim *o, float *restrict w, float *restrict s,
                           const float *restrict g, uint32_t n, uint64_t step) {
  const float wd = o->weight_decay, b1 = o->beta1, b2 = o->beta2, eps = o->eps;
  const float c1 = 1.0f - b1, c2 = 1.0f - b2;
  double t = (double)(step ? step : 1);
  const float lr_t = (float)(o->lr * sqrt(1.0 - pow(b2, t)) / (1.0 - pow(b1, t)));
  float *restrict m = s, *restrict v = s + n;
  for (uint32_t i = 0; i < n; i++) {
    float gi = g[i] + wd * w[i];
    m[i] = b1 * m[i] + c1 * gi;
    v[i] = b2 * v[i] + c2 * gi * gi;
    w[i] -= lr_t * m[i] / (sqrtf(v[i]) + eps);
  }
}

/* psd_optim_adagrad: G += g'^2; w -= lr g' / (sqrt(G) + eps). */
PSD_OPTIM_CLONES
static void psd_optim_adagrad(const psd_optim *o, float *restrict w, float *restrict G,
                              const float *restrict g, uint32_t n, uint64_t step) {
  (void)step;
  const float lr = o->lr, wd = o->weight_decay, eps = o->eps;
  for (uint32_t i = 0; i < n; i++) {
    float gi = g[i] + wd * w[i];
    G[i] += gi * gi;
    w[i] -= lr * gi / (sqrtf(G[i]) + eps);
  }
}

/* ---- bounds of one update (psd_optim_predict), kind by kind -------------- */

static double psd_optim_max(double a, double b) { return a > b ? a : b; }

/* The bound functions follow the loops above term by term in real
 * arithmetic; float rounding stays far inside PSD_OPTIM_SAFE's margin.
 * A result of INFINITY means "not certain" (a zero eps, say). */
static double psd_optim_sgd_bound(const psd_optim *o, const psd_optim_bounds *b, double g,
                                  double lr, uint64_t step, psd_optim_bounds *a) {
  (void)o, (void)step;
  a->w = (float)(b->w + lr * g);
  return psd_optim_max(g, (double)b->w + lr * g);
}

static double psd_optim_momentum_bound(const psd_optim *o, const psd_optim_bounds *b, double g,
                                       double lr, uint64_t step, psd_optim_bounds *a) {
  (void)step;
  double v = o->momentum * (double)b->s[0] + g;
  a->s[0] = (float)v;
  a->w = (float)(b->w + lr * v);
  return psd_optim_max(psd_optim_max(g, v), (double)b->w + lr * v);
}

static double psd_optim_nesterov_bound(const psd_optim *o, const psd_optim_bounds *b, double g,
                                       double lr, uint64_t step, psd_optim_bounds *a) {
  (void)step;
  double v = o->momentum * (double)b->s[0] + g, step_w = g + o->momentum * v;
  a->s[0] = (float)v;
  a->w = (float)(b->w + lr * step_w);
  return psd_optim_max(psd_optim_max(step_w, v), (double)b->w + lr * step_w);
}

static double psd_optim_adam_bound(const psd_optim *o, const psd_optim_bounds *b, double g,
                                   double lr, uint64_t step, psd_optim_bounds *a) {
  double t = (double)(step ? step : 1);
  double lr_t = lr * sqrt(1.0 - pow(o->beta2, t)) / (1.0 - pow(o->beta1, t));
  double m = o->beta1 * (double)b->s[0] + (1.0 - o->beta1) * g;
  double v = o->beta2 * (double)b->s[1] + (1.0 - o->beta2) * g * g;
  if (!(o->eps >= FLT_MIN)) return INFINITY; /* a subnormal eps is flushed to 0 */
  double w = b->w + lr_t * m / o->eps;
  a->s[0] = (float)m;
  a->s[1] = (float)v;
  a->w = (float)w;
  return psd_optim_max(psd_optim_max(g * g, v), psd_optim_max(lr_t * m, w));
}

static double psd_optim_adagrad_bound(const psd_optim *o, const psd_optim_bounds *b, double g,
                                      double lr, uint64_t step, psd_optim_bounds *a) {
  (void)step;
  /* |g| / (sqrt(G + g^2) + eps) <= 1: the step moves w by at most lr
   * (2 lr with rounding); with eps 0 a zero g would make 0 / 0. */
  if (!(o->eps >= FLT_MIN)) return INFINITY;
  double G = (double)b->s[0] + g * g;
  a->s[0] = (float)G;
  a->w = (float)(b->w + 2 * lr);
  return psd_optim_max(G, (double)a->w + lr * g);
}

static const psd_optim_kind psd_optim_kinds[] = {
    {"sgd", 0, 0.0f, psd_optim_sgd, psd_optim_sgd_bound},
    {"momentum", 1, 0.0f, psd_optim_momentum, psd_optim_momentum_bound},
    {"nesterov", 1, 0.0f, psd_optim_nesterov, psd_optim_nesterov_bound},
    {"adam", 2, 1e-8f, psd_optim_adam, psd_optim_adam_bound},
    {"adagrad", 1, 1e-10f, psd_optim_adagrad, psd_optim_adagrad_bound},
};

/* psd_optim_default returns V, or DEF when V is 0 (proto3: unset). */
static float psd_optim_default(float v, float def) { return v != 0.0f ? v : def; }

/* psd_optim_init: resolves the kind by name and applies defaults; 0 or
 * PS_EINVAL. */
int psd_optim_init(psd_optim *o, const Ps__OptimizerSpec *spec, ps_errbuf *eb) {
  memset(o, 0, sizeof *o);
  if (!spec) return ps_errf(eb, PS_EINVAL, "no optimizer given");
  const char *kind = spec->kind ? spec->kind : "";
  for (size_t i = 0; i < sizeof psd_optim_kinds / sizeof psd_optim_kinds[0]; i++)
    if (strcmp(kind, psd_optim_kinds[i].name) == 0) o->kind = &psd_optim_kinds[i];
  if (!o->kind) return ps_errf(eb, PS_EINVAL, "unknown optimizer '%s'", kind);
  if (!(spec->lr > 0) || !isfinite(spec->lr))
    return ps_errf(eb, PS_EINVAL, "optimizer '%s': lr must be a finite number > 0", kind);
  o->lr = spec->lr;
  o->momentum = psd_optim_default(spec->momentum, 0.9f);
  o->beta1 = psd_optim_default(spec->beta1, 0.9f);
  o->beta2 = psd_optim_default(spec->beta2, 0.999f);
  o->eps = psd_optim_default(spec->eps, o->kind->eps_default);
  o->weight_decay = spec->weight_decay;
  o->lr_decay = psd_optim_default(spec->lr_decay, 1.0f);
  o->lr_decay_steps = spec->lr_decay_steps;
  if (!(o->lr_decay > 0 && o->lr_decay <= 1))
    return ps_errf(eb, PS_EINVAL, "optimizer '%s': lr_decay must lie in (0, 1]", kind);
  if (o->lr_decay != 1.0f && !o->lr_decay_steps)
    return ps_errf(eb, PS_EINVAL, "optimizer '%s': lr_decay needs lr_decay_steps > 0", kind);
  return 0;
}

/* psd_optim_slots: floats of state per parameter. */
unsigned psd_optim_slots(const psd_optim *o) { return o->kind->slots; }

/* psd_optim_name: the kind's static name. */
const char *psd_optim_name(const psd_optim *o) { return o->kind->name; }

/* psd_optim_init_slots: every kind starts from zero state. */
void psd_optim_init_slots(const psd_optim *o, float *slots, uint32_t n) {
  if (o->kind->slots) memset(slots, 0, (size_t)n * o->kind->slots * sizeof *slots);
}

/* psd_optim_step_lr returns the learning rate of update STEP (decayed). */
static double psd_optim_step_lr(const psd_optim *o, uint64_t step) {
  if (o->lr_decay == 1.0f || step <= 1) return o->lr;
  return (float)(o->lr * pow(o->lr_decay, (double)(step - 1) / o->lr_decay_steps));
}

/* psd_optim_predict: see psd_optim.h. */
int psd_optim_predict(const psd_optim *o, const psd_optim_bounds *b, double gmax, uint64_t step,
                      psd_optim_bounds *after) {
  double g = gmax + (double)o->weight_decay * b->w;
  *after = *b;
  double top = o->kind->predict(o, b, g, psd_optim_step_lr(o, step), step, after);
  return top < PSD_OPTIM_SAFE; /* false for NaN too */
}

/* psd_optim_absmax: see psd_optim.h. */
float psd_optim_absmax(const float *x, size_t n) {
  uint32_t bits = ps_absmax_bits(x, n);
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* psd_optim_measure: see psd_optim.h. */
int psd_optim_measure(const psd_optim *o, const float *w, uint32_t n, psd_optim_bounds *b) {
  uint32_t bits[1 + PSD_OPTIM_MAX_SLOTS] = {0}, worst = 0;
  for (unsigned k = 0; k <= o->kind->slots; k++) {
    bits[k] = ps_absmax_bits(w + (size_t)k * n, n);
    worst = bits[k] > worst ? bits[k] : worst;
  }
  memset(b, 0, sizeof *b);
  memcpy(&b->w, &bits[0], 4);
  for (unsigned k = 0; k < o->kind->slots; k++) memcpy(&b->s[k], &bits[1 + k], 4);
  return worst < 0x7f800000u ? 0 : -1;
}

/* psd_optim_apply: one update of one chunk through the kind's table entry. */
void psd_optim_apply(const psd_optim *o, float *w, float *slots, const float *g, uint32_t n,
                     uint64_t step) {
  if (o->lr_decay == 1.0f || step <= 1) {
    o->kind->apply(o, w, slots, g, n, step);
    return;
  }
  psd_optim decayed = *o;
  decayed.lr = (float)psd_optim_step_lr(o, step);
  o->kind->apply(&decayed, w, slots, g, n, step);
}
