/* ps_gpu_cpu: the CPU backend.  Matrix products are OpenBLAS cblas_sgemm
 * (single-threaded by default: oversubscribed BLAS threads were measured
 * 3-6x slower); everything else is a plain loop over contiguous rows that
 * the compiler vectorises.  Device memory is host memory (unified). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_gpu.h"
#include "ps_gpu_blas.h"

/* cpu_check fails with PS_EDEVICE when T is not host memory, PS_EINVAL
 * when it has no data. */
static int cpu_check(const ps_gpu_tensor *t) {
  if (!t || t->device != PS_GPU_HOST) return PS_EDEVICE;
  if (!t->data && (size_t)t->rows * t->cols != 0) return PS_EINVAL;
  return 0;
}

/* same_shape: 0 when A and B are both host tensors of one shape. */
static int same_shape(const ps_gpu_tensor *a, const ps_gpu_tensor *b) {
  int rc = cpu_check(a);
  if (!rc) rc = cpu_check(b);
  if (!rc && (a->rows != b->rows || a->cols != b->cols)) rc = PS_EINVAL;
  return rc;
}

static size_t numel(const ps_gpu_tensor *t) { return (size_t)t->rows * t->cols; }

/* cpu_alloc returns 64-byte aligned memory (aligned_alloc wants a size
 * that is a multiple of the alignment). */
static int cpu_alloc(ps_gpu_backend *be, size_t bytes, void **ptr) {
  (void)be;
  size_t n = (bytes + 63) & ~(size_t)63;
  *ptr = aligned_alloc(64, n ? n : 64);
  return *ptr ? 0 : PS_ENOMEM;
}

static void cpu_free(ps_gpu_backend *be, void *ptr) {
  (void)be;
  free(ptr);
}

/* cpu_copy copies synchronously; both directions are the same memcpy. */
static int cpu_copy(ps_gpu_backend *be, void *dst, const void *src, size_t bytes, int stream) {
  (void)be;
  if ((unsigned)stream >= PS_GPU_NSTREAMS) return PS_EINVAL;
  if (bytes && dst != src) memcpy(dst, src, bytes);
  return 0;
}

static int cpu_sync(ps_gpu_backend *be, int stream) {
  (void)be;
  return (unsigned)stream < PS_GPU_NSTREAMS ? 0 : PS_EINVAL;
}

static int cpu_stream_wait(ps_gpu_backend *be, int waiter, int waitee) {
  (void)be;
  return (unsigned)waiter < PS_GPU_NSTREAMS && (unsigned)waitee < PS_GPU_NSTREAMS ? 0 : PS_EINVAL;
}

/* cpu_gemm: C = alpha op(A) op(B) + beta C via cblas_sgemm (row-major). */
static int cpu_gemm(ps_gpu_backend *be, int ta, int tb, float alpha, const ps_gpu_tensor *a,
                    const ps_gpu_tensor *b, float beta, ps_gpu_tensor *c) {
  (void)be;
  int rc = cpu_check(a);
  if (!rc) rc = cpu_check(b);
  if (!rc) rc = cpu_check(c);
  if (rc) return rc;
  uint32_t m = ta ? a->cols : a->rows, k = ta ? a->rows : a->cols;
  uint32_t kb = tb ? b->cols : b->rows, n = tb ? b->rows : b->cols;
  if (k != kb || c->rows != m || c->cols != n) return PS_EINVAL;
  if (!m || !n) return 0;
  if (!k) {  /* BLAS leaves C alone when k == 0; honour beta ourselves. */
    for (size_t i = 0; i < numel(c); i++) c->data[i] = beta == 0 ? 0 : beta * c->data[i];
    return 0;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              (int)m, (int)n, (int)k, alpha, a->data, (int)a->cols, b->data, (int)b->cols, beta,
              c->data, (int)c->cols);
  return 0;
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* act_row applies ACT to N values in place: one loop per activation so
 * each one vectorises. */
static void act_row(ps_gpu_act act, float *restrict y, size_t n) {
  switch (act) {
    case PS_GPU_ACT_RELU:
      for (size_t j = 0; j < n; j++) y[j] = y[j] > 0 ? y[j] : 0;
      break;
    case PS_GPU_ACT_SIGMOID:
      for (size_t j = 0; j < n; j++) y[j] = sigmoidf(y[j]);
      break;
    case PS_GPU_ACT_TANH:
      for (size_t j = 0; j < n; j++) y[j] = tanhf(y[j]);
      break;
    default:
      break;
  }
}

/* cpu_bias_add: Y = act(Y + B) row by row (one pass over Y). */
static int cpu_bias_add(ps_gpu_backend *be, ps_gpu_tensor *y, const ps_gpu_tensor *b,
                        ps_gpu_act act) {
  (void)be;
  int rc = cpu_check(y);
  if (!rc) rc = cpu_check(b);
  if (rc) return rc;
  if (numel(b) != y->cols || (unsigned)act >= PS_GPU_NACTS) return PS_EINVAL;
  const size_t n = y->cols;
  const float *restrict bias = b->data;
  for (uint32_t i = 0; i < y->rows; i++) {
    float *restrict row = y->data + (size_t)i * n;
    if (act == PS_GPU_ACT_RELU) {
      for (size_t j = 0; j < n; j++) {
        float v = row[j] + bias[j];
        row[j] = v > 0 ? v : 0;
      }
    } else {
      for (size_t j = 0; j < n; j++) row[j] += bias[j];
      act_row(act, row, n);
    }
  }
  return 0;
}

/* cpu_bias_grad: DB = beta DB + sum over rows of DY. */
static int cpu_bias_grad(ps_gpu_backend *be, const ps_gpu_tensor *dy, float beta,
                         ps_gpu_tensor *db) {
  (void)be;
  int rc = cpu_check(dy);
  if (!rc) rc = cpu_check(db);
  if (rc) return rc;
  if (numel(db) != dy->cols) return PS_EINVAL;
  const size_t n = dy->cols;
  float *restrict out = db->data;
  for (size_t j = 0; j < n; j++) out[j] = beta == 0 ? 0 : beta * out[j];
  for (uint32_t i = 0; i < dy->rows; i++) {
    const float *restrict row = dy->data + (size_t)i * n;
    for (size_t j = 0; j < n; j++) out[j] += row[j];
  }
  return 0;
}

/* cpu_act_fwd: Y = act(X). */
static int cpu_act_fwd(ps_gpu_backend *be, ps_gpu_act act, const ps_gpu_tensor *x,
                       ps_gpu_tensor *y) {
  (void)be;
  int rc = same_shape(x, y);
  if (rc) return rc;
  if ((unsigned)act >= PS_GPU_NACTS) return PS_EINVAL;
  if (y->data != x->data) memcpy(y->data, x->data, numel(x) * sizeof(float));
  act_row(act, y->data, numel(y));
  return 0;
}

/* cpu_act_bwd: DX = DY * act'(from Y). */
static int cpu_act_bwd(ps_gpu_backend *be, ps_gpu_act act, const ps_gpu_tensor *y,
                       const ps_gpu_tensor *dy, ps_gpu_tensor *dx) {
  (void)be;
  int rc = same_shape(y, dy);
  if (!rc) rc = same_shape(dy, dx);
  if (rc) return rc;
  const size_t n = numel(y);
  const float *yv = y->data, *g = dy->data;
  float *d = dx->data;
  switch (act) {
    case PS_GPU_ACT_NONE:
      if (d != g) memcpy(d, g, n * sizeof(float));
      break;
    case PS_GPU_ACT_RELU:
      /* Both loads first: a conditional load of g[j] kept this loop
       * scalar and branchy (a mispredict per other element, 6 % of a
       * batch-64 step); this form vectorises to a compare and a mask. */
      for (size_t j = 0; j < n; j++) {
        float gj = g[j];
        d[j] = yv[j] > 0 ? gj : 0.0f;
      }
      break;
    case PS_GPU_ACT_SIGMOID:
      for (size_t j = 0; j < n; j++) d[j] = g[j] * yv[j] * (1 - yv[j]);
      break;
    case PS_GPU_ACT_TANH:
      for (size_t j = 0; j < n; j++) d[j] = g[j] * (1 - yv[j] * yv[j]);
      break;
    default:
      return PS_EINVAL;
  }
  return 0;
}

/* xent_row returns -log softmax(x)[label] for one row of K logits and,
 * when D is not NULL, writes (softmax - onehot) * inv_n to D. */
static double xent_row(const float *restrict x, uint32_t k, int32_t label, float *restrict d,
                       float inv_n) {
  float mx = x[0];
  for (uint32_t j = 1; j < k; j++) mx = x[j] > mx ? x[j] : mx;
  float sum = 0;
  if (d) {
    for (uint32_t j = 0; j < k; j++) sum += d[j] = expf(x[j] - mx);
    float s = inv_n / sum;
    for (uint32_t j = 0; j < k; j++) d[j] *= s;
    d[label] -= inv_n;
  } else {
    for (uint32_t j = 0; j < k; j++) sum += expf(x[j] - mx);
  }
  return (double)logf(sum) + mx - x[label];
}

/* cpu_softmax_xent: mean softmax cross-entropy and its gradient. */
static int cpu_softmax_xent(ps_gpu_backend *be, const ps_gpu_tensor *logits,
                            const int32_t *labels, ps_gpu_tensor *loss, ps_gpu_tensor *dlogits) {
  (void)be;
  int rc = cpu_check(logits);
  if (!rc) rc = cpu_check(loss);
  if (!rc && dlogits) rc = same_shape(logits, dlogits);
  if (rc) return rc;
  if (numel(loss) != 1 || !logits->rows || !logits->cols || !labels) return PS_EINVAL;
  const uint32_t n = logits->rows, k = logits->cols;
  const float inv_n = 1.0f / (float)n;
  double total = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (labels[i] < 0 || (uint32_t)labels[i] >= k) return PS_EINVAL;
    total += xent_row(logits->data + (size_t)i * k, k, labels[i],
                      dlogits ? dlogits->data + (size_t)i * k : NULL, inv_n);
  }
  loss->data[0] = (float)(total / n);
  return 0;
}

/* cpu_mse: mean squared error over all elements, and its gradient. */
static int cpu_mse(ps_gpu_backend *be, const ps_gpu_tensor *pred, const ps_gpu_tensor *target,
                   ps_gpu_tensor *loss, ps_gpu_tensor *dpred) {
  (void)be;
  int rc = same_shape(pred, target);
  if (!rc) rc = cpu_check(loss);
  if (!rc && dpred) rc = same_shape(pred, dpred);
  if (rc) return rc;
  const size_t n = numel(pred);
  if (numel(loss) != 1 || !n) return PS_EINVAL;
  const float *p = pred->data, *t = target->data;
  const float g = 2.0f / (float)n;
  double total = 0;
  for (size_t j = 0; j < n; j++) {
    float e = p[j] - t[j];
    total += (double)e * e;
  }
  if (dpred)
    for (size_t j = 0; j < n; j++) dpred->data[j] = g * (p[j] - t[j]);
  loss->data[0] = (float)(total / n);
  return 0;
}

/* cpu_accuracy: rows whose first maximum is at the label. */
static int cpu_accuracy(ps_gpu_backend *be, const ps_gpu_tensor *logits, const int32_t *labels,
                        ps_gpu_tensor *count) {
  (void)be;
  int rc = cpu_check(logits);
  if (!rc) rc = cpu_check(count);
  if (rc) return rc;
  if (numel(count) != 1 || !logits->cols || !labels) return PS_EINVAL;
  uint32_t correct = 0, k = logits->cols;
  for (uint32_t i = 0; i < logits->rows; i++) {
    const float *x = logits->data + (size_t)i * k;
    uint32_t best = 0;
    for (uint32_t j = 1; j < k; j++)
      if (x[j] > x[best]) best = j;
    correct += (int32_t)best == labels[i];
  }
  count->data[0] = (float)correct;
  return 0;
}

/* cpu_sigmoid_xent: mean sigmoid cross-entropy, gradient, probabilities. */
static int cpu_sigmoid_xent(ps_gpu_backend *be, const ps_gpu_tensor *logits,
                            const int32_t *labels, ps_gpu_tensor *loss, ps_gpu_tensor *dlogits,
                            ps_gpu_tensor *prob) {
  (void)be;
  int rc = cpu_check(logits);
  if (!rc) rc = cpu_check(loss);
  if (!rc && dlogits) rc = same_shape(logits, dlogits);
  if (!rc && prob) rc = same_shape(logits, prob);
  if (rc) return rc;
  if (numel(loss) != 1 || !logits->rows || logits->cols != 1 || !labels) return PS_EINVAL;
  const uint32_t n = logits->rows;
  const float inv_n = 1.0f / (float)n;
  double total = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (labels[i] != 0 && labels[i] != 1) return PS_EINVAL;
    const float z = logits->data[i], y = (float)labels[i];
    total += (double)((z > 0 ? z : 0) - y * z + log1pf(expf(-fabsf(z))));
    const float p = sigmoidf(z);
    if (dlogits) dlogits->data[i] = (p - y) * inv_n;
    if (prob) prob->data[i] = p;
  }
  loss->data[0] = (float)(total / n);
  return 0;
}

/* bags_shape: 0 when the table slice T [nrows, d] and the pooled rows Y
 * [nbags, d] fit BAGS. */
static int bags_shape(const ps_gpu_tensor *t, const ps_gpu_bags *bags, const ps_gpu_tensor *y) {
  int rc = cpu_check(t);
  if (!rc) rc = cpu_check(y);
  if (rc) return rc;
  if (!bags || t->rows != bags->nrows || y->rows != bags->nbags || t->cols != y->cols)
    return PS_EINVAL;
  return 0;
}

/* cpu_embed_fwd: each bag's rows summed in bag order, then scaled. */
static int cpu_embed_fwd(ps_gpu_backend *be, const ps_gpu_tensor *table, const ps_gpu_bags *bags,
                         ps_gpu_tensor *y) {
  (void)be;
  int rc = bags_shape(table, bags, y);
  if (rc) return rc;
  const size_t d = y->cols;
  for (uint32_t b = 0; b < bags->nbags; b++) {
    float *restrict out = y->data + b * d;
    const int32_t k0 = bags->bag_off[b], k1 = bags->bag_off[b + 1];
    for (size_t j = 0; j < d; j++) out[j] = 0;
    for (int32_t k = k0; k < k1; k++) {
      const float *restrict row = table->data + (size_t)bags->bag_slot[k] * d;
      for (size_t j = 0; j < d; j++) out[j] += row[j];
    }
    if (bags->mean && k1 > k0) {
      const float w = 1.0f / (float)(k1 - k0);
      for (size_t j = 0; j < d; j++) out[j] *= w;
    }
  }
  return 0;
}

/* cpu_embed_bwd: each row gathers its bags' gradients in bag order (the
 * order the cuda kernel sums in). */
static int cpu_embed_bwd(ps_gpu_backend *be, const ps_gpu_tensor *dy, const ps_gpu_bags *bags,
                         float beta, ps_gpu_tensor *dtable) {
  (void)be;
  int rc = bags_shape(dtable, bags, dy);
  if (rc) return rc;
  const size_t d = dy->cols;
  for (uint32_t r = 0; r < bags->nrows; r++) {
    float *restrict out = dtable->data + r * d;
    for (size_t j = 0; j < d; j++) out[j] = beta == 0 ? 0 : beta * out[j];
    for (int32_t k = bags->row_off[r]; k < bags->row_off[r + 1]; k++) {
      const int32_t b = bags->row_bag[k], len = bags->bag_off[b + 1] - bags->bag_off[b];
      const float w = bags->mean ? 1.0f / (float)len : 1.0f;
      const float *restrict g = dy->data + (size_t)b * d;
      for (size_t j = 0; j < d; j++) out[j] += w * g[j];
    }
  }
  return 0;
}

/* cols_shape: 0 when X [n, a] fits columns OFF.. of Y [n, b]. */
static int cols_shape(const ps_gpu_tensor *x, const ps_gpu_tensor *y, uint32_t off) {
  int rc = cpu_check(x);
  if (!rc) rc = cpu_check(y);
  if (rc) return rc;
  return x->rows == y->rows && (uint64_t)off + x->cols <= y->cols ? 0 : PS_EINVAL;
}

static int cpu_cols_put(ps_gpu_backend *be, const ps_gpu_tensor *x, ps_gpu_tensor *y,
                        uint32_t off) {
  (void)be;
  int rc = cols_shape(x, y, off);
  if (rc) return rc;
  for (uint32_t i = 0; i < x->rows && x->cols; i++)
    memcpy(y->data + (size_t)i * y->cols + off, x->data + (size_t)i * x->cols,
           x->cols * sizeof(float));
  return 0;
}

static int cpu_cols_get(ps_gpu_backend *be, const ps_gpu_tensor *y, uint32_t off, float beta,
                        ps_gpu_tensor *x) {
  (void)be;
  int rc = cols_shape(x, y, off);
  if (rc) return rc;
  const size_t a = x->cols;
  for (uint32_t i = 0; i < x->rows; i++) {
    float *restrict out = x->data + (size_t)i * a;
    const float *restrict in = y->data + (size_t)i * y->cols + off;
    for (size_t j = 0; j < a; j++) out[j] = (beta == 0 ? 0 : beta * out[j]) + in[j];
  }
  return 0;
}

static int cpu_axpy(ps_gpu_backend *be, float alpha, const ps_gpu_tensor *x, ps_gpu_tensor *y) {
  (void)be;
  int rc = same_shape(x, y);
  if (rc) return rc;
  const size_t n = numel(x);
  const float *restrict xv = x->data;
  float *restrict yv = y->data;
  for (size_t j = 0; j < n; j++) yv[j] += alpha * xv[j];
  return 0;
}

static int cpu_scale(ps_gpu_backend *be, float alpha, ps_gpu_tensor *x) {
  (void)be;
  int rc = cpu_check(x);
  if (rc) return rc;
  for (size_t j = 0, n = numel(x); j < n; j++) x->data[j] *= alpha;
  return 0;
}

static int cpu_fill(ps_gpu_backend *be, float value, ps_gpu_tensor *x) {
  (void)be;
  int rc = cpu_check(x);
  if (rc) return rc;
  for (size_t j = 0, n = numel(x); j < n; j++) x->data[j] = value;
  return 0;
}

static void cpu_close(ps_gpu_backend *be) { free(be); }

static const ps_gpu_ops cpu_ops = {
    .alloc = cpu_alloc,
    .free_buf = cpu_free,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .copy_h2d = cpu_copy,
    .copy_d2h = cpu_copy,
    .sync = cpu_sync,
    .stream_wait = cpu_stream_wait,
    .gemm = cpu_gemm,
    .bias_add = cpu_bias_add,
    .bias_grad = cpu_bias_grad,
    .act_fwd = cpu_act_fwd,
    .act_bwd = cpu_act_bwd,
    .softmax_xent = cpu_softmax_xent,
    .mse = cpu_mse,
    .accuracy = cpu_accuracy,
    .sigmoid_xent = cpu_sigmoid_xent,
    .embed_fwd = cpu_embed_fwd,
    .embed_bwd = cpu_embed_bwd,
    .cols_put = cpu_cols_put,
    .cols_get = cpu_cols_get,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .fill = cpu_fill,
    .close = cpu_close,
};

/* ps_gpu_cpu_open: see ps_gpu.h.  Sets OpenBLAS's (process-wide) thread
 * count to THREADS (0: 1); with more than one, idle helper threads sleep
 * after a short spin (ps_gpu_blas.h invariant 6).  The description names
 * the kernel OpenBLAS runs and who chose it (ps_gpu_blas_describe). */
int ps_gpu_cpu_open(int threads, ps_gpu_backend **be, ps_errbuf *eb) {
  if (threads < 0 || threads > 1024)
    return ps_errf(eb, PS_EINVAL, "cpu backend: bad thread count '%d'", threads);
  if (threads == 0) threads = 1;
  ps_gpu_backend *b = calloc(1, sizeof *b);
  if (!b) return ps_errf(eb, PS_ENOMEM, "cpu backend: out of memory");
  if (threads > 1) ps_gpu_blas_short_spin();
  openblas_set_num_threads(threads);
  b->ops = &cpu_ops;
  b->name = "cpu";
  b->device = PS_GPU_HOST;
  b->unified = 1;
  char kernel[128];
  snprintf(b->desc, sizeof b->desc, "cpu: OpenBLAS (%s), %d thread%s, %s", openblas_get_config(),
           threads, threads == 1 ? "" : "s", ps_gpu_blas_describe(kernel, sizeof kernel));
  *be = b;
  return 0;
}
