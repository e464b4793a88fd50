/* ps_gpu: compute backends behind one op table.
 *
 * A backend (ps_gpu_backend) is a table of ops (ps_gpu_ops) over tensors
 * that carry a device tag (ps_gpu_tensor).  Two backends: "cpu" (OpenBLAS
 * cblas_sgemm plus vectorisable loops, gpu/ps_gpu_cpu.c) and "cuda" (cuBLAS
 * plus kernels, gpu/ps_gpu_cuda.cu).  Callers allocate every buffer once
 * (alloc / host_alloc) and reuse it every step.
 *
 * Invariants:
 *  1. Tensors are row-major float32 [rows, cols]; a vector is [1, n]; a
 *     scalar is [1, 1].  `data` points to memory of the backend's device
 *     (ps_gpu_backend.device); ops refuse a tensor with another device tag
 *     (PS_EDEVICE).
 *  2. Every op returns 0 or a negative PS_E* code.  Compute ops are queued
 *     in order on the backend's compute stream (PS_GPU_STREAM_COMPUTE); on
 *     the CPU they run synchronously.  Results are visible on the host only
 *     after a copy_d2h followed by sync of the copy's stream.
 *  3. Label vectors (int32 class ids) live in device memory too; ops that
 *     take labels trust them to lie in [0, cols) (callers check on the host
 *     before copying).
 *  4. Output tensors must not alias inputs unless an op says so.
 *  5. A backend is used by one thread at a time (not thread-safe); two
 *     backends may be used by two threads.
 *
 * The CPU backend's device memory is host memory (unified = 1): callers may
 * make tensors that point at their own host buffers and skip copies. */
#ifndef PS_GPU_H
#define PS_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "ps_config.h"
#include "ps_error.h"

/* Device tags: host memory, or a CUDA device ordinal (>= 0). */
#define PS_GPU_HOST (-1)

/* Streams for copies and sync: compute ops always use the compute stream;
 * copies may go on the copy stream to overlap with compute. */
enum ps_gpu_stream { PS_GPU_STREAM_COMPUTE = 0, PS_GPU_STREAM_COPY = 1, PS_GPU_NSTREAMS = 2 };

/* Element-wise activations (fused into bias_add, or standalone). */
typedef enum ps_gpu_act {
  PS_GPU_ACT_NONE = 0,
  PS_GPU_ACT_RELU = 1,
  PS_GPU_ACT_SIGMOID = 2,
  PS_GPU_ACT_TANH = 3,
  PS_GPU_NACTS = 4
} ps_gpu_act;

/* A view of a device buffer; owns nothing. */
typedef struct ps_gpu_tensor {
  float *data;      /* device memory (borrowed), rows * cols floats */
  uint32_t rows, cols;
  int device;       /* PS_GPU_HOST or a CUDA ordinal */
} ps_gpu_tensor;

typedef struct ps_gpu_backend ps_gpu_backend;

/* Embedding bags: NBAGS bags, each a multiset of rows of a table slice
 * [nrows, d] (the distinct rows a batch touches, pulled from the shards).
 * Bag b holds the slots bag_slot[bag_off[b] .. bag_off[b+1]); its pooled
 * row (the sum, or the mean when MEAN; an empty bag pools to zeros) is
 * row b of the output [nbags, d], so the bags of sample i and fields
 * 0..F-1 (b = i F + f) give that sample's row of F d columns.  The
 * transposed index row_off / row_bag lists, for every slot r, the bags
 * that hold it (a bag twice when it holds r twice), in increasing bag
 * order: the backward pass gathers into each row in that fixed order, so
 * it is deterministic and needs no atomics.  All four arrays are int32 in
 * the backend's device memory (borrowed for the call).  Ops trust the
 * index (like labels, invariant 3): psw_embed builds it and
 * ps_gpu_bags_check checks a host copy. */
typedef struct ps_gpu_bags {
  uint32_t nbags, nrows, nnz;
  const int32_t *bag_off;   /* nbags + 1, bag_off[0] = 0, bag_off[nbags] = nnz */
  const int32_t *bag_slot;  /* nnz slots in [0, nrows) */
  const int32_t *row_off;   /* nrows + 1, row_off[nrows] = nnz */
  const int32_t *row_bag;   /* nnz bag ids, increasing within each row */
  int mean;                 /* 1: mean pooling; 0: sum */
} ps_gpu_bags;

/* ps_gpu_bags_check checks a host copy of an index (every offset list
 * non-decreasing and ending at nnz, every slot and bag in range, row_bag
 * the exact transpose of bag_slot); 0 or PS_EINVAL. */
int ps_gpu_bags_check(const ps_gpu_bags *bags);

/* The op table.  BE is always the backend the table belongs to. */
typedef struct ps_gpu_ops {
  /* Memory.  alloc: *PTR receives BYTES of device memory (caller frees
   * with free_buf).  host_alloc: host memory suited to fast copies (pinned
   * on CUDA, malloc'ed and 64-byte aligned on the CPU), freed with
   * host_free.  Both return PS_ENOMEM (or PS_EDEVICE) on failure. */
  int (*alloc)(ps_gpu_backend *be, size_t bytes, void **ptr);
  void (*free_buf)(ps_gpu_backend *be, void *ptr);
  int (*host_alloc)(ps_gpu_backend *be, size_t bytes, void **ptr);
  void (*host_free)(ps_gpu_backend *be, void *ptr);

  /* Copies of BYTES between host and device memory, queued on STREAM
   * (asynchronous on CUDA when the host memory came from host_alloc;
   * synchronous on the CPU).  sync waits until everything queued on
   * STREAM is done.  stream_wait makes later work on WAITER wait for the
   * work queued on WAITEE so far (an event; no-op on the CPU). */
  int (*copy_h2d)(ps_gpu_backend *be, void *dst, const void *src, size_t bytes, int stream);
  int (*copy_d2h)(ps_gpu_backend *be, void *dst, const void *src, size_t bytes, int stream);
  int (*sync)(ps_gpu_backend *be, int stream);
  int (*stream_wait)(ps_gpu_backend *be, int waiter, int waitee);

  /* C = alpha * op(A) op(B) + beta * C, row-major; op(X) = X^T when the
   * trans flag is set.  Shapes must agree (PS_EINVAL otherwise).  beta = 0
   * ignores C's old contents (NaN included). */
  int (*gemm)(ps_gpu_backend *be, int trans_a, int trans_b, float alpha,
              const ps_gpu_tensor *a, const ps_gpu_tensor *b, float beta, ps_gpu_tensor *c);

  /* Y[i, :] = act(Y[i, :] + B) for every row i; B is [1, Y.cols].  The
   * fused form of dense + activation (ACT may be PS_GPU_ACT_NONE). */
  int (*bias_add)(ps_gpu_backend *be, ps_gpu_tensor *y, const ps_gpu_tensor *b, ps_gpu_act act);

  /* DB = beta * DB + column sums of DY; DB is [1, DY.cols]. */
  int (*bias_grad)(ps_gpu_backend *be, const ps_gpu_tensor *dy, float beta, ps_gpu_tensor *db);

  /* Y = act(X) (Y may be X).  act_bwd: DX = DY * act'(.) computed from
   * the forward output Y (relu: Y > 0, sigmoid: Y(1-Y), tanh: 1-Y^2); DX
   * may be DY. */
  int (*act_fwd)(ps_gpu_backend *be, ps_gpu_act act, const ps_gpu_tensor *x, ps_gpu_tensor *y);
  int (*act_bwd)(ps_gpu_backend *be, ps_gpu_act act, const ps_gpu_tensor *y,
                 const ps_gpu_tensor *dy, ps_gpu_tensor *dx);

  /* Softmax cross-entropy over the rows of LOGITS [n, k] with class ids
   * LABELS (n int32, device memory).  LOSS [1, 1] receives the mean loss
   * over the n rows (computed stably: log-sum-exp with the row maximum
   * subtracted).  DLOGITS (may be NULL) receives the gradient of the mean
   * loss: (softmax - onehot) / n. */
  int (*softmax_xent)(ps_gpu_backend *be, const ps_gpu_tensor *logits, const int32_t *labels,
                      ps_gpu_tensor *loss, ps_gpu_tensor *dlogits);

  /* Mean squared error: LOSS [1, 1] = mean over all n*k elements of
   * (PRED - TARGET)^2; DPRED (may be NULL) = 2 (PRED - TARGET) / (n*k). */
  int (*mse)(ps_gpu_backend *be, const ps_gpu_tensor *pred, const ps_gpu_tensor *target,
             ps_gpu_tensor *loss, ps_gpu_tensor *dpred);

  /* COUNT [1, 1] = number of rows whose argmax (first maximum) equals the
   * label (as a float; exact below 2^24). */
  int (*accuracy)(ps_gpu_backend *be, const ps_gpu_tensor *logits, const int32_t *labels,
                  ps_gpu_tensor *count);

  /* Sigmoid cross-entropy over LOGITS [n, 1] with labels LABELS (n int32,
   * 0 or 1): LOSS [1, 1] = mean of log(1 + e^z) - y z (computed as
   * max(z, 0) - y z + log1p(e^-|z|)); DLOGITS (may be NULL) = (sigmoid(z)
   * - y) / n.  PROB (may be NULL) [n, 1] = sigmoid(z), for AUC and
   * logloss. */
  int (*sigmoid_xent)(ps_gpu_backend *be, const ps_gpu_tensor *logits, const int32_t *labels,
                      ps_gpu_tensor *loss, ps_gpu_tensor *dlogits, ps_gpu_tensor *prob);

  /* Embedding lookup (see ps_gpu_bags): Y [nbags, d] = the pooled rows of
   * TABLE [nrows, d].  embed_bwd: DTABLE [nrows, d] = beta DTABLE + the
   * scatter-add of DY [nbags, d] into the rows each bag reads (weighted
   * 1/|bag| under mean pooling); beta = 0 ignores DTABLE's contents. */
  int (*embed_fwd)(ps_gpu_backend *be, const ps_gpu_tensor *table, const ps_gpu_bags *bags,
                   ps_gpu_tensor *y);
  int (*embed_bwd)(ps_gpu_backend *be, const ps_gpu_tensor *dy, const ps_gpu_bags *bags,
                   float beta, ps_gpu_tensor *dtable);

  /* Column blocks (concatenation): cols_put writes X [n, a] into columns
   * OFF .. OFF+a of Y [n, b]; cols_get sets X = beta X + those columns of
   * Y.  PS_EINVAL when the rows differ or OFF + a > b. */
  int (*cols_put)(ps_gpu_backend *be, const ps_gpu_tensor *x, ps_gpu_tensor *y, uint32_t off);
  int (*cols_get)(ps_gpu_backend *be, const ps_gpu_tensor *y, uint32_t off, float beta,
                  ps_gpu_tensor *x);

  /* Y += alpha X;  X *= alpha;  X = value  (same shapes). */
  int (*axpy)(ps_gpu_backend *be, float alpha, const ps_gpu_tensor *x, ps_gpu_tensor *y);
  int (*scale)(ps_gpu_backend *be, float alpha, ps_gpu_tensor *x);
  int (*fill)(ps_gpu_backend *be, float value, ps_gpu_tensor *x);

  /* Releases the backend and everything it holds (buffers from alloc must
   * be freed before). */
  void (*close)(ps_gpu_backend *be);
} ps_gpu_ops;

/* A backend instance, made by ps_gpu_open (or a backend's own open) and
 * released with ps_gpu_close. */
struct ps_gpu_backend {
  const ps_gpu_ops *ops;
  const char *name;     /* "cpu" | "cuda" (static) */
  char desc[256];       /* device description for status, e.g. "cpu: OpenBLAS
                           (OpenBLAS 0.3.21 ... SkylakeX ...), 1 thread, kernel
                           SkylakeX (OpenBLAS's choice)" */
  int device;           /* tag of this backend's tensors */
  int unified;          /* 1: device memory is host memory */
  void *impl;           /* backend's private state */
};

/* Device names: the one rule of ps_config.h (ps_device_parse), which
 * workers.device is checked against when the cluster file loads (psd -t
 * too) and ps_gpu_open applies. */
#define PS_GPU_MAX_ORDINAL PS_DEVICE_MAX_ORDINAL
#define PS_GPU_DEVICE_RULE PS_DEVICE_RULE

/* ps_gpu_device_parse is ps_device_parse. */
int ps_gpu_device_parse(const char *device, int *ordinal, ps_errbuf *eb);

/* ps_gpu_open opens the backend named by DEVICE (NULL: "auto"): "auto"
 * (CUDA when this build has the cuda backend and a device exists, else
 * the CPU), "cpu", "cuda" (ordinal 0) or "cuda:N".  "cuda" without a
 * device or without a CUDA build fails with PS_EDEVICE; a name
 * ps_gpu_device_parse refuses with PS_EINVAL; the message is in EB.  *BE
 * is released with ps_gpu_close. */
int ps_gpu_open(const char *device, ps_gpu_backend **be, ps_errbuf *eb);

/* ps_gpu_close releases BE (NULL is a no-op). */
void ps_gpu_close(ps_gpu_backend *be);

/* ps_gpu_cpu_open opens the CPU backend with THREADS OpenBLAS threads
 * (1 unless the process owns the whole machine; 0 means 1).  Note that
 * OpenBLAS's thread count is process-wide. */
int ps_gpu_cpu_open(int threads, ps_gpu_backend **be, ps_errbuf *eb);

/* ps_gpu_cuda_open opens CUDA device ORDINAL (gpu/ps_gpu_cuda.cu).  Fails
 * with PS_EDEVICE and CUDA's message when there is no such device.  Only
 * defined in builds with the cuda backend (PS_HAVE_CUDA_BACKEND). */
int ps_gpu_cuda_open(int ordinal, ps_gpu_backend **be, ps_errbuf *eb);

/* ps_gpu_act_name returns "none" | "relu" | "sigmoid" | "tanh" (static);
 * ps_gpu_act_parse maps such a name to *ACT (0) or returns PS_EINVAL. */
const char *ps_gpu_act_name(ps_gpu_act act);
int ps_gpu_act_parse(const char *name, ps_gpu_act *act);

/* ps_gpu_tensor_make returns a view of DATA on BE's device. */
static inline ps_gpu_tensor ps_gpu_tensor_make(const ps_gpu_backend *be, float *data,
                                               uint32_t rows, uint32_t cols) {
  ps_gpu_tensor t = {data, rows, cols, be->device};
  return t;
}

#endif
