/* ps_gpu_cuda: the CUDA backend.  Matrix products are cuBLAS sgemm (fp32
 * by default, TF32 tensor-op math on request); everything else is a small
 * kernel below.
 *
 * Invariants:
 *  1. Two non-blocking streams per backend: stream[PS_GPU_STREAM_COMPUTE]
 *     runs every op (cuBLAS is bound to it); stream[PS_GPU_STREAM_COPY]
 *     runs only the copies the caller puts there.  Ordering between them
 *     is the caller's, through stream_wait (an event recorded on the
 *     waitee, waited on by the waiter).  Neither stream synchronises with
 *     the legacy default stream.
 *  2. The scratch buffer (reduction partials) is used only by ops, hence
 *     only on the compute stream; it is replaced only after that stream
 *     has drained, so no queued kernel can read a freed scratch buffer.
 *  3. Loss, count and gradient results stay in device memory: no op
 *     synchronises with the host.  Errors of asynchronous kernels surface
 *     at the next call that reports them (sync, usually).
 *  4. Reductions are deterministic: fixed grids, per-block partials summed
 *     in a fixed order by a second kernel; no atomics.  Loss sums are
 *     accumulated in double.
 *  5. Every op first makes ORDINAL the calling thread's current device, so
 *     a backend may move between threads (one at a time, ps_gpu.h 5).
 *  6. Every CUDA and cuBLAS call is checked; a failure becomes PS_EDEVICE
 *     (PS_ENOMEM for cudaErrorMemoryAllocation) and its message, with
 *     CUDA's own text, is logged and kept for ps_gpu_cuda_last_error. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The project's headers are C: their functions have C linkage. */
extern "C" {
#include "ps_error.h"
#include "ps_gpu.h"
#include "ps_log.h"
}
#include "ps_gpu_cuda.h"

#define THREADS 256              /* threads per block of every 1-D kernel */
#define WARPS (THREADS / 32)
#define BG_TX 32                 /* bias_grad tile: 32 columns x 8 row lanes */
#define BG_TY 8

typedef struct cuda_impl {
  int ordinal;
  int nsm;                                /* streaming multiprocessors */
  int tf32;
  cudaStream_t stream[PS_GPU_NSTREAMS];
  cudaEvent_t event[PS_GPU_NSTREAMS];     /* event[s] is recorded on stream s */
  cublasHandle_t blas;                    /* bound to the compute stream */
  void *scratch;                          /* device; compute stream only (2.) */
  size_t scratch_bytes;
  char err[256];                          /* last failure (6.) */
  char base_desc[140];                    /* desc without the math mode */
} cuda_impl;

/* ---- device code -------------------------------------------------------- */

template <int ACT>
__device__ __forceinline__ float act_f(float v) {
  if (ACT == PS_GPU_ACT_RELU) return v > 0 ? v : 0.0f;
  if (ACT == PS_GPU_ACT_SIGMOID) return 1.0f / (1.0f + expf(-v));
  if (ACT == PS_GPU_ACT_TANH) return tanhf(v);
  return v;
}

/* act_d: dy * act'(.) from the forward output y (ps_gpu.h act_bwd). */
template <int ACT>
__device__ __forceinline__ float act_d(float y, float dy) {
  if (ACT == PS_GPU_ACT_RELU) return y > 0 ? dy : 0.0f;
  if (ACT == PS_GPU_ACT_SIGMOID) return dy * y * (1 - y);
  if (ACT == PS_GPU_ACT_TANH) return dy * (1 - y * y);
  return dy;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* block_sum: the sum of V over a block of THREADS threads, valid in
 * thread 0.  Every thread of the block must call it. */
__device__ double block_sum(double v) {
  __shared__ double part[WARPS];
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) part[w] = v;
  __syncthreads();
  v = threadIdx.x < WARPS ? part[threadIdx.x] : 0.0;
  if (w == 0) v = warp_sum(v);
  return v;
}

/* k_finish: OUT[0] = SCALE * sum of the NP partials (one block, fixed
 * order: deterministic). */
__global__ void __launch_bounds__(THREADS)
k_finish(const double *part, uint32_t np, double scale, float *out) {
  double s = 0;
  for (uint32_t i = threadIdx.x; i < np; i += THREADS) s += part[i];
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = (float)(s * scale);
}

/* Y = act(Y + B): x over columns (B read once per thread), y over rows. */
template <int ACT>
__global__ void __launch_bounds__(THREADS)
k_bias_add(float *y, const float *b, uint32_t rows, uint32_t cols) {
  const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const float bj = b[j];
  for (uint32_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const size_t o = (size_t)i * cols + j;
    y[o] = act_f<ACT>(y[o] + bj);
  }
}

/* Column sums of DY over the row range of blockIdx.y (ROWS_PER rows):
 * a 32x8 tile, coalesced 128-byte row segments, reduced over the 8 row
 * lanes in shared memory.  With one row range (gridDim.y == 1) thread
 * (j, 0) writes DB[j] = beta DB[j] + sum; otherwise PART[blockIdx.y, j]. */
__global__ void __launch_bounds__(BG_TX *BG_TY)
k_bias_grad(const float *dy, uint32_t rows, uint32_t cols, uint32_t rows_per, float beta,
            float *db, float *part) {
  __shared__ float sh[BG_TY][BG_TX + 1];
  const uint32_t j = blockIdx.x * BG_TX + threadIdx.x;
  const uint32_t r0 = blockIdx.y * rows_per;
  const uint32_t r1 = min(rows, r0 + rows_per);
  float s = 0;
  if (j < cols)
    for (uint32_t i = r0 + threadIdx.y; i < r1; i += BG_TY) s += dy[(size_t)i * cols + j];
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || j >= cols) return;
  s = 0;
  for (int t = 0; t < BG_TY; t++) s += sh[t][threadIdx.x];
  if (gridDim.y == 1)
    db[j] = (beta == 0 ? 0.0f : beta * db[j]) + s;
  else
    part[(size_t)blockIdx.y * cols + j] = s;
}

/* DB[j] = beta DB[j] + sum over the NP row ranges of PART[., j]. */
__global__ void __launch_bounds__(THREADS)
k_bias_grad_finish(const float *part, uint32_t np, uint32_t cols, float beta, float *db) {
  const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float s = 0;
  for (uint32_t p = 0; p < np; p++) s += part[(size_t)p * cols + j];
  db[j] = (beta == 0 ? 0.0f : beta * db[j]) + s;
}

template <int ACT>
__global__ void __launch_bounds__(THREADS) k_act_fwd(const float *x, float *y, size_t n) {
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS)
    y[i] = act_f<ACT>(x[i]);
}

template <int ACT>
__global__ void __launch_bounds__(THREADS)
k_act_bwd(const float *y, const float *dy, float *dx, size_t n) {
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS)
    dx[i] = act_d<ACT>(y[i], dy[i]);
}

/* Softmax cross-entropy, one warp per row: row maximum, sum of exp(x -
 * max), loss log(sum) + max - x[label], and (D != NULL) the gradient
 * (softmax - onehot) * inv_n.  x[label] is read before D is written, so
 * D may even be X.  A label outside [0, k) gives a NaN loss and no
 * one-hot term (never an access out of bounds).  PART[blockIdx.x]
 * receives the block's loss sum. */
__global__ void __launch_bounds__(THREADS)
k_softmax_xent(const float *logits, const int32_t *labels, uint32_t n, uint32_t k, float inv_n,
               float *d, double *part) {
  const uint32_t lane = threadIdx.x & 31;
  double acc = 0;
  for (uint32_t i = blockIdx.x * WARPS + (threadIdx.x >> 5); i < n; i += gridDim.x * WARPS) {
    const float *x = logits + (size_t)i * k;
    float mx = -INFINITY;
    for (uint32_t j = lane; j < k; j += 32) mx = fmaxf(mx, x[j]);
    mx = warp_max(mx);
    float s = 0;
    for (uint32_t j = lane; j < k; j += 32) s += expf(x[j] - mx);
    s = warp_sum(s);
    const int32_t lab = labels[i];
    const bool ok = lab >= 0 && (uint32_t)lab < k;
    const float xl = ok ? x[lab] : NAN;
    __syncwarp();
    if (d) {
      float *dr = d + (size_t)i * k;
      const float sc = inv_n / s;
      for (uint32_t j = lane; j < k; j += 32) {
        float v = expf(x[j] - mx) * sc;
        dr[j] = (int32_t)j == lab ? v - inv_n : v;
      }
    }
    if (lane == 0) acc += (double)logf(s) + mx - xl;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* Rows whose first maximum is at the label, one warp per row: each lane
 * keeps the first maximum of its strided columns, the warp keeps the
 * larger value or, on a tie, the smaller index. */
__global__ void __launch_bounds__(THREADS)
k_accuracy(const float *logits, const int32_t *labels, uint32_t n, uint32_t k, double *part) {
  const uint32_t lane = threadIdx.x & 31;
  double hits = 0;
  for (uint32_t i = blockIdx.x * WARPS + (threadIdx.x >> 5); i < n; i += gridDim.x * WARPS) {
    const float *x = logits + (size_t)i * k;
    float bv = -INFINITY;
    uint32_t bi = UINT32_MAX;
    for (uint32_t j = lane; j < k; j += 32)
      if (bi == UINT32_MAX || x[j] > bv) {
        bv = x[j];
        bi = j;
      }
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const uint32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi != UINT32_MAX && (bi == UINT32_MAX || ov > bv || (ov == bv && oi < bi))) {
        bv = ov;
        bi = oi;
      }
    }
    if (lane == 0 && (int64_t)bi == (int64_t)labels[i]) hits += 1;
  }
  hits = block_sum(hits);
  if (threadIdx.x == 0) part[blockIdx.x] = hits;
}

/* Mean squared error: PART[blockIdx.x] = the block's sum of (p - t)^2 in
 * double; D (may be NULL) = g (p - t) with g = 2 / n. */
__global__ void __launch_bounds__(THREADS)
k_mse(const float *p, const float *t, size_t n, float g, float *d, double *part) {
  double acc = 0;
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS) {
    const float e = p[i] - t[i];
    if (d) d[i] = g * e;
    acc += (double)e * e;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* Sigmoid cross-entropy, one thread per row of [n, 1] logits: D (may be
 * NULL) = (sigmoid(z) - y) inv_n, P (may be NULL) = sigmoid(z);
 * PART[blockIdx.x] = the block's loss sum in double (NaN for a label that
 * is neither 0 nor 1). */
__global__ void __launch_bounds__(THREADS)
k_sigmoid_xent(const float *z, const int32_t *labels, uint32_t n, float inv_n, float *d, float *p,
               double *part) {
  double acc = 0;
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS) {
    const float zi = z[i];
    const int32_t l = labels[i];
    const float y = l == 1 ? 1.0f : 0.0f;
    const float pr = 1.0f / (1.0f + expf(-zi));
    if (d) d[i] = (pr - y) * inv_n;
    if (p) p[i] = pr;
    acc += (l == 0 || l == 1) ? (double)(fmaxf(zi, 0.0f) - y * zi + log1pf(expf(-fabsf(zi)))) : NAN;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* Embedding lookup, one thread per output element (bag b, column j): the
 * bag's rows summed in bag order (the CPU backend's order), then scaled
 * by 1/|bag| under mean pooling. */
__global__ void __launch_bounds__(THREADS)
k_embed_fwd(const float *t, const int32_t *off, const int32_t *slot, uint32_t nbags, uint32_t d,
            int mean, float *y) {
  const size_t n = (size_t)nbags * d;
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS) {
    const size_t b = i / d, j = i % d;
    const int32_t k0 = off[b], k1 = off[b + 1];
    float s = 0;
    for (int32_t k = k0; k < k1; k++) s += t[(size_t)slot[k] * d + j];
    if (mean && k1 > k0) s *= 1.0f / (float)(k1 - k0);
    y[i] = s;
  }
}

/* Its backward, one thread per table element (row r, column j): the
 * gradients of the bags that read row r gathered in bag order through the
 * transposed index, so no two threads write one element (no atomics,
 * deterministic: invariant 4). */
__global__ void __launch_bounds__(THREADS)
k_embed_bwd(const float *dy, const int32_t *bag_off, const int32_t *row_off,
            const int32_t *row_bag, uint32_t nrows, uint32_t d, int mean, float beta, float *dt) {
  const size_t n = (size_t)nrows * d;
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS) {
    const size_t r = i / d, j = i % d;
    float s = beta == 0 ? 0.0f : beta * dt[i];
    for (int32_t k = row_off[r]; k < row_off[r + 1]; k++) {
      const int32_t b = row_bag[k];
      const float w = mean ? 1.0f / (float)(bag_off[b + 1] - bag_off[b]) : 1.0f;
      s += w * dy[(size_t)b * d + j];
    }
    dt[i] = s;
  }
}

/* Column blocks: GET = 0 writes X [n, a] into columns OFF.. of Y [n, b];
 * GET = 1 sets X = beta X + those columns. */
__global__ void __launch_bounds__(THREADS)
k_cols(float *x, uint32_t a, float *y, uint32_t b, uint32_t off, uint32_t rows, int get,
       float beta) {
  const size_t n = (size_t)rows * a;
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS) {
    const size_t yi = i / a * b + off + i % a;
    if (get)
      x[i] = (beta == 0 ? 0.0f : beta * x[i]) + y[yi];
    else
      y[yi] = x[i];
  }
}

__global__ void __launch_bounds__(THREADS)
k_axpy(float alpha, const float *x, float *y, size_t n) {
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS)
    y[i] += alpha * x[i];
}

__global__ void __launch_bounds__(THREADS) k_scale(float alpha, float *x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS)
    x[i] *= alpha;
}

__global__ void __launch_bounds__(THREADS) k_fill(float value, float *x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS)
    x[i] = value;
}

/* ---- host side: errors, checks, launch shapes ----------------------------- */

static cuda_impl *impl(const ps_gpu_backend *be) { return (cuda_impl *)be->impl; }

/* fail records "cuda:N: WHAT: CUDA's message" as BE's last error, logs it,
 * clears CUDA's (non-sticky) last-error state, and returns PS_ENOMEM for
 * an allocation failure, PS_EDEVICE otherwise. */
static int fail(ps_gpu_backend *be, cudaError_t e, const char *what) {
  cuda_impl *c = impl(be);
  snprintf(c->err, sizeof c->err, "cuda:%d: %s: %s (%s)", c->ordinal, what, cudaGetErrorString(e),
           cudaGetErrorName(e));
  ps_err("%s", c->err);
  (void)cudaGetLastError();
  return e == cudaErrorMemoryAllocation ? PS_ENOMEM : PS_EDEVICE;
}

/* blas_fail is fail for a cuBLAS status. */
static int blas_fail(ps_gpu_backend *be, cublasStatus_t s, const char *what) {
  cuda_impl *c = impl(be);
  snprintf(c->err, sizeof c->err, "cuda:%d: %s: %s", c->ordinal, what, cublasGetStatusString(s));
  ps_err("%s", c->err);
  (void)cudaGetLastError();
  return s == CUBLAS_STATUS_ALLOC_FAILED ? PS_ENOMEM : PS_EDEVICE;
}

#define CK(be, call, what)                           \
  do {                                               \
    cudaError_t ck_e_ = (call);                      \
    if (ck_e_ != cudaSuccess) return fail(be, ck_e_, what); \
  } while (0)

/* launched checks the launch just queued (configuration errors, or a
 * sticky error of an earlier kernel). */
static int launched(ps_gpu_backend *be, const char *what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? 0 : fail(be, e, what);
}

/* enter makes BE's device current for the calling thread (5.);
 * cudaGetDevice is a thread-local read, so the common case costs little. */
static int enter(ps_gpu_backend *be) {
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur == impl(be)->ordinal) return 0;
  (void)cudaGetLastError(); /* a failed cudaGetDevice must not reach launched() */
  CK(be, cudaSetDevice(impl(be)->ordinal), "cudaSetDevice");
  return 0;
}

static size_t numel(const ps_gpu_tensor *t) { return (size_t)t->rows * t->cols; }

/* check fails with PS_EDEVICE when T is not on BE's device, PS_EINVAL
 * when it has elements but no data. */
static int check(const ps_gpu_backend *be, const ps_gpu_tensor *t) {
  if (!t || t->device != be->device) return PS_EDEVICE;
  if (!t->data && numel(t) != 0) return PS_EINVAL;
  return 0;
}

/* same_shape: 0 when A and B are tensors of BE of one shape. */
static int same_shape(const ps_gpu_backend *be, const ps_gpu_tensor *a, const ps_gpu_tensor *b) {
  int rc = check(be, a);
  if (!rc) rc = check(be, b);
  if (!rc && (a->rows != b->rows || a->cols != b->cols)) rc = PS_EINVAL;
  return rc;
}

/* grid1 returns the block count of a grid-stride kernel over N items
 * (at least 1, at most 32 blocks per SM). */
static unsigned grid1(const ps_gpu_backend *be, size_t n) {
  size_t b = (n + THREADS - 1) / THREADS, cap = (size_t)impl(be)->nsm * 32;
  return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

/* grid_rows: blocks for a warp-per-row kernel over N rows (at least 1, at
 * most 8 per SM: also the number of partials it writes). */
static unsigned grid_rows(const ps_gpu_backend *be, uint32_t n) {
  size_t b = ((size_t)n + WARPS - 1) / WARPS, cap = (size_t)impl(be)->nsm * 8;
  return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

/* scratch returns at least BYTES of scratch device memory in *P.  Growing
 * waits for the compute stream to drain before freeing the old buffer (2.). */
static int scratch(ps_gpu_backend *be, size_t bytes, void **p) {
  cuda_impl *c = impl(be);
  if (bytes > c->scratch_bytes) {
    size_t want = c->scratch_bytes ? c->scratch_bytes : 64 * 1024;
    while (want < bytes) want *= 2;
    CK(be, cudaStreamSynchronize(c->stream[PS_GPU_STREAM_COMPUTE]), "scratch: drain");
    if (c->scratch) CK(be, cudaFree(c->scratch), "scratch: cudaFree");
    c->scratch = NULL;
    c->scratch_bytes = 0;
    CK(be, cudaMalloc(&c->scratch, want), "scratch: cudaMalloc");
    c->scratch_bytes = want;
  }
  *p = c->scratch;
  return 0;
}

static cudaStream_t compute(const ps_gpu_backend *be) {
  return impl(be)->stream[PS_GPU_STREAM_COMPUTE];
}

/* finish queues k_finish: OUT[0] = SCALE * sum of NP partials. */
static int finish(ps_gpu_backend *be, const double *part, unsigned np, double scale, float *out) {
  k_finish<<<1, THREADS, 0, compute(be)>>>(part, np, scale, out);
  return launched(be, "reduction kernel");
}

/* ---- memory and copies ---------------------------------------------------- */

/* drain waits for both streams (before memory they may still use is
 * freed); failures are logged, not returned (the free goes ahead). */
static void drain(ps_gpu_backend *be) {
  cuda_impl *c = impl(be);
  for (int s = 0; s < PS_GPU_NSTREAMS; s++) {
    cudaError_t e = cudaStreamSynchronize(c->stream[s]);
    if (e != cudaSuccess) fail(be, e, "drain before free");
  }
}

static int cuda_alloc(ps_gpu_backend *be, size_t bytes, void **ptr) {
  *ptr = NULL;
  int rc = enter(be);
  if (rc) return rc;
  CK(be, cudaMalloc(ptr, bytes ? bytes : 1), "cudaMalloc");
  return 0;
}

/* cuda_free_buf frees device memory from cuda_alloc once neither stream
 * can still be using it. */
static void cuda_free_buf(ps_gpu_backend *be, void *ptr) {
  if (!ptr || enter(be)) return;
  drain(be);
  cudaError_t e = cudaFree(ptr);
  if (e != cudaSuccess) fail(be, e, "cudaFree");
}

/* cuda_host_alloc: pinned host memory (cudaMallocHost), the kind that
 * cudaMemcpyAsync copies without staging and truly asynchronously. */
static int cuda_host_alloc(ps_gpu_backend *be, size_t bytes, void **ptr) {
  *ptr = NULL;
  int rc = enter(be);
  if (rc) return rc;
  CK(be, cudaMallocHost(ptr, bytes ? bytes : 1), "cudaMallocHost");
  return 0;
}

static void cuda_host_free(ps_gpu_backend *be, void *ptr) {
  if (!ptr || enter(be)) return;
  drain(be);
  cudaError_t e = cudaFreeHost(ptr);
  if (e != cudaSuccess) fail(be, e, "cudaFreeHost");
}

/* cuda_copy queues a copy of KIND on STREAM. */
static int cuda_copy(ps_gpu_backend *be, void *dst, const void *src, size_t bytes, int stream,
                     cudaMemcpyKind kind, const char *what) {
  if ((unsigned)stream >= PS_GPU_NSTREAMS || ((!dst || !src) && bytes)) return PS_EINVAL;
  if (!bytes) return 0;
  int rc = enter(be);
  if (rc) return rc;
  CK(be, cudaMemcpyAsync(dst, src, bytes, kind, impl(be)->stream[stream]), what);
  return 0;
}

static int cuda_copy_h2d(ps_gpu_backend *be, void *dst, const void *src, size_t bytes, int stream) {
  return cuda_copy(be, dst, src, bytes, stream, cudaMemcpyHostToDevice, "copy_h2d");
}

static int cuda_copy_d2h(ps_gpu_backend *be, void *dst, const void *src, size_t bytes, int stream) {
  return cuda_copy(be, dst, src, bytes, stream, cudaMemcpyDeviceToHost, "copy_d2h");
}

/* cuda_sync blocks until STREAM is idle; reports errors of any kernel
 * queued before. */
static int cuda_sync(ps_gpu_backend *be, int stream) {
  if ((unsigned)stream >= PS_GPU_NSTREAMS) return PS_EINVAL;
  int rc = enter(be);
  if (rc) return rc;
  CK(be, cudaStreamSynchronize(impl(be)->stream[stream]), "sync");
  return 0;
}

/* cuda_stream_wait: work queued on WAITER from now on starts after the
 * work queued on WAITEE so far.  The event is re-recorded each call; a
 * wait already queued keeps the state it captured (CUDA's event rules). */
static int cuda_stream_wait(ps_gpu_backend *be, int waiter, int waitee) {
  if ((unsigned)waiter >= PS_GPU_NSTREAMS || (unsigned)waitee >= PS_GPU_NSTREAMS) return PS_EINVAL;
  if (waiter == waitee) return 0;
  int rc = enter(be);
  if (rc) return rc;
  cuda_impl *c = impl(be);
  CK(be, cudaEventRecord(c->event[waitee], c->stream[waitee]), "stream_wait: cudaEventRecord");
  CK(be, cudaStreamWaitEvent(c->stream[waiter], c->event[waitee], 0),
     "stream_wait: cudaStreamWaitEvent");
  return 0;
}

/* ---- ops -------------------------------------------------------------------- */

static int cuda_fill(ps_gpu_backend *be, float value, ps_gpu_tensor *x);
static int cuda_scale(ps_gpu_backend *be, float alpha, ps_gpu_tensor *x);

/* cuda_gemm: row-major C = alpha op(A) op(B) + beta C as the column-major
 * product C^T = op(B)^T op(A)^T: a row-major [r, c] buffer is its own
 * transpose in column-major with leading dimension c, so cuBLAS gets B
 * first with B's flag, then A with A's flag, m and n swapped. */
static int cuda_gemm(ps_gpu_backend *be, int ta, int tb, float alpha, const ps_gpu_tensor *a,
                     const ps_gpu_tensor *b, float beta, ps_gpu_tensor *c) {
  int rc = check(be, a);
  if (!rc) rc = check(be, b);
  if (!rc) rc = check(be, c);
  if (rc) return rc;
  const uint32_t m = ta ? a->cols : a->rows, k = ta ? a->rows : a->cols;
  const uint32_t kb = tb ? b->cols : b->rows, n = tb ? b->rows : b->cols;
  if (k != kb || c->rows != m || c->cols != n) return PS_EINVAL;
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX || a->cols > INT_MAX || b->cols > INT_MAX)
    return PS_EINVAL;
  if (!m || !n) return 0;
  if (!k) return beta == 0 ? cuda_fill(be, 0, c) : cuda_scale(be, beta, c);
  if ((rc = enter(be))) return rc;
  cublasStatus_t s = cublasSgemm(impl(be)->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m, (int)k, &alpha,
                                 b->data, (int)b->cols, a->data, (int)a->cols, &beta, c->data,
                                 (int)c->cols);
  return s == CUBLAS_STATUS_SUCCESS ? 0 : blas_fail(be, s, "cublasSgemm");
}

/* cuda_bias_add: Y = act(Y + B) in one pass. */
static int cuda_bias_add(ps_gpu_backend *be, ps_gpu_tensor *y, const ps_gpu_tensor *b,
                         ps_gpu_act act) {
  int rc = check(be, y);
  if (!rc) rc = check(be, b);
  if (rc) return rc;
  if (numel(b) != y->cols || (unsigned)act >= PS_GPU_NACTS) return PS_EINVAL;
  if (!y->rows || !y->cols) return 0;
  if ((rc = enter(be))) return rc;
  const unsigned tx = y->cols >= THREADS ? THREADS : (y->cols + 31) / 32 * 32;
  const unsigned gx = (y->cols + tx - 1) / tx;
  /* About 8 blocks of work per SM in all, at most 65535 row strides. */
  size_t gy = ((size_t)impl(be)->nsm * 8 * (THREADS / tx) + gx - 1) / gx;
  gy = gy > y->rows ? y->rows : gy;
  gy = gy > 65535 ? 65535 : gy < 1 ? 1 : gy;
  dim3 grid(gx, (unsigned)gy);
  cudaStream_t st = compute(be);
  switch (act) {
    case PS_GPU_ACT_RELU:
      k_bias_add<PS_GPU_ACT_RELU><<<grid, tx, 0, st>>>(y->data, b->data, y->rows, y->cols);
      break;
    case PS_GPU_ACT_SIGMOID:
      k_bias_add<PS_GPU_ACT_SIGMOID><<<grid, tx, 0, st>>>(y->data, b->data, y->rows, y->cols);
      break;
    case PS_GPU_ACT_TANH:
      k_bias_add<PS_GPU_ACT_TANH><<<grid, tx, 0, st>>>(y->data, b->data, y->rows, y->cols);
      break;
    default:
      k_bias_add<PS_GPU_ACT_NONE><<<grid, tx, 0, st>>>(y->data, b->data, y->rows, y->cols);
      break;
  }
  return launched(be, "bias_add kernel");
}

/* cuda_bias_grad: DB = beta DB + column sums of DY.  The rows are split
 * into NP ranges so that about 4 blocks per SM run; with NP > 1 the
 * partial sums go through scratch and a second kernel (no atomics). */
static int cuda_bias_grad(ps_gpu_backend *be, const ps_gpu_tensor *dy, float beta,
                          ps_gpu_tensor *db) {
  int rc = check(be, dy);
  if (!rc) rc = check(be, db);
  if (rc) return rc;
  if (numel(db) != dy->cols) return PS_EINVAL;
  if (!dy->cols) return 0;
  if ((rc = enter(be))) return rc;
  const uint32_t rows = dy->rows, cols = dy->cols;
  const unsigned gx = (cols + BG_TX - 1) / BG_TX;
  size_t np = ((size_t)impl(be)->nsm * 4 + gx - 1) / gx;
  size_t max_np = ((size_t)rows + 63) / 64; /* at least 64 rows per range */
  np = np > max_np ? max_np : np;
  np = np > 65535 ? 65535 : np < 1 ? 1 : np;
  const uint32_t rows_per = (uint32_t)(((size_t)rows + np - 1) / np);
  float *part = NULL;
  if (np > 1 && (rc = scratch(be, np * cols * sizeof(float), (void **)&part))) return rc;
  k_bias_grad<<<dim3(gx, (unsigned)np), dim3(BG_TX, BG_TY), 0, compute(be)>>>(
      dy->data, rows, cols, rows_per ? rows_per : 1, beta, db->data, part);
  if ((rc = launched(be, "bias_grad kernel")) || np == 1) return rc;
  k_bias_grad_finish<<<(cols + THREADS - 1) / THREADS, THREADS, 0, compute(be)>>>(
      part, (uint32_t)np, cols, beta, db->data);
  return launched(be, "bias_grad finish kernel");
}

/* cuda_act_fwd: Y = act(X) (Y may be X). */
static int cuda_act_fwd(ps_gpu_backend *be, ps_gpu_act act, const ps_gpu_tensor *x,
                        ps_gpu_tensor *y) {
  int rc = same_shape(be, x, y);
  if (rc) return rc;
  if ((unsigned)act >= PS_GPU_NACTS) return PS_EINVAL;
  const size_t n = numel(x);
  if (!n) return 0;
  if ((rc = enter(be))) return rc;
  const unsigned g = grid1(be, n);
  cudaStream_t st = compute(be);
  switch (act) {
    case PS_GPU_ACT_RELU:
      k_act_fwd<PS_GPU_ACT_RELU><<<g, THREADS, 0, st>>>(x->data, y->data, n);
      break;
    case PS_GPU_ACT_SIGMOID:
      k_act_fwd<PS_GPU_ACT_SIGMOID><<<g, THREADS, 0, st>>>(x->data, y->data, n);
      break;
    case PS_GPU_ACT_TANH:
      k_act_fwd<PS_GPU_ACT_TANH><<<g, THREADS, 0, st>>>(x->data, y->data, n);
      break;
    default:
      if (y->data == x->data) return 0;
      CK(be, cudaMemcpyAsync(y->data, x->data, n * sizeof(float), cudaMemcpyDeviceToDevice, st),
         "act_fwd: copy");
      return 0;
  }
  return launched(be, "act_fwd kernel");
}

/* cuda_act_bwd: DX = DY * act'(from Y) (DX may be DY). */
static int cuda_act_bwd(ps_gpu_backend *be, ps_gpu_act act, const ps_gpu_tensor *y,
                        const ps_gpu_tensor *dy, ps_gpu_tensor *dx) {
  int rc = same_shape(be, y, dy);
  if (!rc) rc = same_shape(be, dy, dx);
  if (rc) return rc;
  if ((unsigned)act >= PS_GPU_NACTS) return PS_EINVAL;
  const size_t n = numel(y);
  if (!n) return 0;
  if ((rc = enter(be))) return rc;
  const unsigned g = grid1(be, n);
  cudaStream_t st = compute(be);
  switch (act) {
    case PS_GPU_ACT_RELU:
      k_act_bwd<PS_GPU_ACT_RELU><<<g, THREADS, 0, st>>>(y->data, dy->data, dx->data, n);
      break;
    case PS_GPU_ACT_SIGMOID:
      k_act_bwd<PS_GPU_ACT_SIGMOID><<<g, THREADS, 0, st>>>(y->data, dy->data, dx->data, n);
      break;
    case PS_GPU_ACT_TANH:
      k_act_bwd<PS_GPU_ACT_TANH><<<g, THREADS, 0, st>>>(y->data, dy->data, dx->data, n);
      break;
    default:
      if (dx->data == dy->data) return 0;
      CK(be, cudaMemcpyAsync(dx->data, dy->data, n * sizeof(float), cudaMemcpyDeviceToDevice, st),
         "act_bwd: copy");
      return 0;
  }
  return launched(be, "act_bwd kernel");
}

/* cuda_softmax_xent: per-block loss sums, then LOSS = their sum / n. */
static int cuda_softmax_xent(ps_gpu_backend *be, const ps_gpu_tensor *logits,
                             const int32_t *labels, ps_gpu_tensor *loss, ps_gpu_tensor *dlogits) {
  int rc = check(be, logits);
  if (!rc) rc = check(be, loss);
  if (!rc && dlogits) rc = same_shape(be, logits, dlogits);
  if (rc) return rc;
  if (numel(loss) != 1 || !logits->rows || !logits->cols || !labels) return PS_EINVAL;
  if ((rc = enter(be))) return rc;
  const uint32_t n = logits->rows, k = logits->cols;
  const unsigned g = grid_rows(be, n);
  double *part;
  if ((rc = scratch(be, g * sizeof(double), (void **)&part))) return rc;
  k_softmax_xent<<<g, THREADS, 0, compute(be)>>>(logits->data, labels, n, k, 1.0f / (float)n,
                                                 dlogits ? dlogits->data : NULL, part);
  if ((rc = launched(be, "softmax_xent kernel"))) return rc;
  return finish(be, part, g, 1.0 / n, loss->data);
}

/* cuda_mse: mean squared error over all elements and its gradient. */
static int cuda_mse(ps_gpu_backend *be, const ps_gpu_tensor *pred, const ps_gpu_tensor *target,
                    ps_gpu_tensor *loss, ps_gpu_tensor *dpred) {
  int rc = same_shape(be, pred, target);
  if (!rc) rc = check(be, loss);
  if (!rc && dpred) rc = same_shape(be, pred, dpred);
  if (rc) return rc;
  const size_t n = numel(pred);
  if (numel(loss) != 1 || !n) return PS_EINVAL;
  if ((rc = enter(be))) return rc;
  const unsigned g = grid1(be, n);
  double *part;
  if ((rc = scratch(be, g * sizeof(double), (void **)&part))) return rc;
  k_mse<<<g, THREADS, 0, compute(be)>>>(pred->data, target->data, n, 2.0f / (float)n,
                                        dpred ? dpred->data : NULL, part);
  if ((rc = launched(be, "mse kernel"))) return rc;
  return finish(be, part, g, 1.0 / (double)n, loss->data);
}

/* cuda_accuracy: per-block hit counts (exact in double), then COUNT. */
static int cuda_accuracy(ps_gpu_backend *be, const ps_gpu_tensor *logits, const int32_t *labels,
                         ps_gpu_tensor *count) {
  int rc = check(be, logits);
  if (!rc) rc = check(be, count);
  if (rc) return rc;
  if (numel(count) != 1 || !logits->cols || !labels) return PS_EINVAL;
  if ((rc = enter(be))) return rc;
  const unsigned g = grid_rows(be, logits->rows);
  double *part;
  if ((rc = scratch(be, g * sizeof(double), (void **)&part))) return rc;
  k_accuracy<<<g, THREADS, 0, compute(be)>>>(logits->data, labels, logits->rows, logits->cols,
                                             part);
  if ((rc = launched(be, "accuracy kernel"))) return rc;
  return finish(be, part, g, 1.0, count->data);
}

/* cuda_sigmoid_xent: per-block loss sums, then LOSS = their sum / n. */
static int cuda_sigmoid_xent(ps_gpu_backend *be, const ps_gpu_tensor *logits,
                             const int32_t *labels, ps_gpu_tensor *loss, ps_gpu_tensor *dlogits,
                             ps_gpu_tensor *prob) {
  int rc = check(be, logits);
  if (!rc) rc = check(be, loss);
  if (!rc && dlogits) rc = same_shape(be, logits, dlogits);
  if (!rc && prob) rc = same_shape(be, logits, prob);
  if (rc) return rc;
  if (numel(loss) != 1 || !logits->rows || logits->cols != 1 || !labels) return PS_EINVAL;
  if ((rc = enter(be))) return rc;
  const uint32_t n = logits->rows;
  const unsigned g = grid1(be, n);
  double *part;
  if ((rc = scratch(be, g * sizeof(double), (void **)&part))) return rc;
  k_sigmoid_xent<<<g, THREADS, 0, compute(be)>>>(logits->data, labels, n, 1.0f / (float)n, dlogits ? dlogits->data : NULL, prob ? prob->data : NULL, part);
  if ((rc = launched(be, "sigmoid_xent kernel"))) return rc;
  return finish(be, part, g, 1.0 / n, loss->data);
}

/* bags_shape: 0 when the table slice T [nrows, d] and the pooled rows Y
 * [nbags, d] of BE fit BAGS. */
static int bags_shape(const ps_gpu_backend *be, const ps_gpu_tensor *t, const ps_gpu_bags *bags,
                      const ps_gpu_tensor *y) {
  int rc = check(be, t);
  if (!rc) rc = check(be, y);
  if (rc) return rc;
  if (!bags || t->rows != bags->nrows || y->rows != bags->nbags || t->cols != y->cols ||
      !bags->bag_off || !bags->row_off)
    return PS_EINVAL;
  return 0;
}

static int cuda_embed_fwd(ps_gpu_backend *be, const ps_gpu_tensor *table, const ps_gpu_bags *bags,
                          ps_gpu_tensor *y) {
  int rc = bags_shape(be, table, bags, y);
  if (rc) return rc;
  const size_t n = numel(y);
  if (!n) return 0;
  if ((rc = enter(be))) return rc;
  k_embed_fwd<<<grid1(be, n), THREADS, 0, compute(be)>>>(table->data, bags->bag_off, bags->bag_slot, bags->nbags, y->cols, bags->mean, y->data);
  return launched(be, "embed_fwd kernel");
}

static int cuda_embed_bwd(ps_gpu_backend *be, const ps_gpu_tensor *dy, const ps_gpu_bags *bags,
                          float beta, ps_gpu_tensor *dtable) {
  int rc = bags_shape(be, dtable, bags, dy);
  if (rc) return rc;
  const size_t n = numel(dtable);
  if (!n) return 0;
  if ((rc = enter(be))) return rc;
  k_embed_bwd<<<grid1(be, n), THREADS, 0, compute(be)>>>(dy->data, bags->bag_off, bags->row_off, bags->row_bag, bags->nrows, dy->cols, bags->mean, beta, dtable->data);
  return launched(be, "embed_bwd kernel");
}

/* cols: the checks and launch of cols_put (GET 0) and cols_get (GET 1). */
static int cols(ps_gpu_backend *be, const ps_gpu_tensor *x, const ps_gpu_tensor *y, uint32_t off,
                int get, float beta) {
  int rc = check(be, x);
  if (!rc) rc = check(be, y);
  if (rc) return rc;
  if (x->rows != y->rows || (uint64_t)off + x->cols > y->cols) return PS_EINVAL;
  const size_t n = numel(x);
  if (!n) return 0;
  if ((rc = enter(be))) return rc;
  k_cols<<<grid1(be, n), THREADS, 0, compute(be)>>>(x->data, x->cols, y->data, y->cols, off, x->rows, get, beta);
  return launched(be, get ? "cols_get kernel" : "cols_put kernel");
}

static int cuda_cols_put(ps_gpu_backend *be, const ps_gpu_tensor *x, ps_gpu_tensor *y,
                         uint32_t off) {
  return cols(be, x, y, off, 0, 0);
}

static int cuda_cols_get(ps_gpu_backend *be, const ps_gpu_tensor *y, uint32_t off, float beta,
                         ps_gpu_tensor *x) {
  return cols(be, x, y, off, 1, beta);
}

static int cuda_axpy(ps_gpu_backend *be, float alpha, const ps_gpu_tensor *x, ps_gpu_tensor *y) {
  int rc = same_shape(be, x, y);
  if (rc) return rc;
  const size_t n = numel(x);
  if (!n) return 0;
  if ((rc = enter(be))) return rc;
  k_axpy<<<grid1(be, n), THREADS, 0, compute(be)>>>(alpha, x->data, y->data, n);
  return launched(be, "axpy kernel");
}

static int cuda_scale(ps_gpu_backend *be, float alpha, ps_gpu_tensor *x) {
  int rc = check(be, x);
  if (rc) return rc;
  const size_t n = numel(x);
  if (!n) return 0;
  if ((rc = enter(be))) return rc;
  k_scale<<<grid1(be, n), THREADS, 0, compute(be)>>>(alpha, x->data, n);
  return launched(be, "scale kernel");
}

static int cuda_fill(ps_gpu_backend *be, float value, ps_gpu_tensor *x) {
  int rc = check(be, x);
  if (rc) return rc;
  const size_t n = numel(x);
  if (!n) return 0;
  if ((rc = enter(be))) return rc;
  k_fill<<<grid1(be, n), THREADS, 0, compute(be)>>>(value, x->data, n);
  return launched(be, "fill kernel");
}

/* ---- open and close --------------------------------------------------------- */

/* release frees whatever of C exists (a partly opened backend too) after
 * the streams drain; errors are logged only.  C itself is freed. */
static void release(cuda_impl *c) {
  if (cudaSetDevice(c->ordinal) == cudaSuccess) {
    for (int s = 0; s < PS_GPU_NSTREAMS; s++)
      if (c->stream[s]) {
        cudaError_t e = cudaStreamSynchronize(c->stream[s]);
        if (e != cudaSuccess) ps_err("cuda:%d: close: %s", c->ordinal, cudaGetErrorString(e));
      }
  }
  if (c->blas) cublasDestroy(c->blas);
  if (c->scratch) cudaFree(c->scratch);
  for (int s = 0; s < PS_GPU_NSTREAMS; s++) {
    if (c->event[s]) cudaEventDestroy(c->event[s]);
    if (c->stream[s]) cudaStreamDestroy(c->stream[s]);
  }
  (void)cudaGetLastError();
  free(c);
}

static void cuda_close(ps_gpu_backend *be) {
  release(impl(be));
  free(be);
}

static const ps_gpu_ops cuda_ops = {
    /* .alloc = */ cuda_alloc,
    /* .free_buf = */ cuda_free_buf,
    /* .host_alloc = */ cuda_host_alloc,
    /* .host_free = */ cuda_host_free,
    /* .copy_h2d = */ cuda_copy_h2d,
    /* .copy_d2h = */ cuda_copy_d2h,
    /* .sync = */ cuda_sync,
    /* .stream_wait = */ cuda_stream_wait,
    /* .gemm = */ cuda_gemm,
    /* .bias_add = */ cuda_bias_add,
    /* .bias_grad = */ cuda_bias_grad,
    /* .act_fwd = */ cuda_act_fwd,
    /* .act_bwd = */ cuda_act_bwd,
    /* .softmax_xent = */ cuda_softmax_xent,
    /* .mse = */ cuda_mse,
    /* .accuracy = */ cuda_accuracy,
    /* .sigmoid_xent = */ cuda_sigmoid_xent,
    /* .embed_fwd = */ cuda_embed_fwd,
    /* .embed_bwd = */ cuda_embed_bwd,
    /* .cols_put = */ cuda_cols_put,
    /* .cols_get = */ cuda_cols_get,
    /* .axpy = */ cuda_axpy,
    /* .scale = */ cuda_scale,
    /* .fill = */ cuda_fill,
    /* .close = */ cuda_close,
};

/* open_err formats "device 'cuda:N': WHAT: CUDA's message" into EB. */
static int open_err(ps_errbuf *eb, int ordinal, const char *what, cudaError_t e) {
  (void)cudaGetLastError();
  return ps_errf(eb, e == cudaErrorMemoryAllocation ? PS_ENOMEM : PS_EDEVICE,
                 "device 'cuda:%d': %s: %s", ordinal, what, cudaGetErrorString(e));
}

#define OPEN_CK(call, what)                                        \
  do {                                                             \
    cudaError_t ok_e_ = (call);                                    \
    if (ok_e_ != cudaSuccess) {                                    \
      rc = open_err(eb, ordinal, what, ok_e_);                     \
      goto out_release;                                            \
    }                                                              \
  } while (0)

/* driver_found says whether the NVIDIA driver's library, libcuda.so.1, can
 * be loaded.  Without it CUDA's runtime reports cudaErrorInsufficientDriver,
 * whose text ("CUDA driver version is insufficient ...") sends the user to
 * upgrade a driver that is not there at all. */
static int driver_found(void) {
  void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD); /* the runtime's, if it loaded it */
  if (!h) h = dlopen("libcuda.so.1", RTLD_LAZY);
  if (h) dlclose(h);
  return h != NULL;
}

/* ps_gpu_cuda_open: see ps_gpu.h.  Checks that the device exists and that
 * this build carries kernels for it, then creates the streams, events and
 * cuBLAS handle (fp32 math). */
extern "C" int ps_gpu_cuda_open(int ordinal, ps_gpu_backend **be, ps_errbuf *eb) {
  *be = NULL;
  int ndev = 0, rc;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e == cudaErrorInsufficientDriver && !driver_found()) {
    (void)cudaGetLastError();
    return ps_errf(eb, PS_EDEVICE,
                   "device 'cuda:%d': no usable CUDA device: no NVIDIA driver (libcuda.so.1) "
                   "found (CUDA: %s)",
                   ordinal, cudaGetErrorString(e));
  }
  if (e != cudaSuccess) return open_err(eb, ordinal, "no usable CUDA device", e);
  if (ordinal < 0 || ordinal >= ndev)
    return ps_errf(eb, PS_EDEVICE, "device 'cuda:%d': no such device (%d found)", ordinal, ndev);
  cuda_impl *c = (cuda_impl *)calloc(1, sizeof *c);
  ps_gpu_backend *b = (ps_gpu_backend *)calloc(1, sizeof *b);
  if (!c || !b) {
    free(c);
    free(b);
    return ps_errf(eb, PS_ENOMEM, "device 'cuda:%d': out of memory", ordinal);
  }
  c->ordinal = ordinal;
  cudaDeviceProp prop;
  cudaFuncAttributes fa;
  cublasStatus_t bs;
  int ver = 0;
  OPEN_CK(cudaSetDevice(ordinal), "cudaSetDevice");
  OPEN_CK(cudaGetDeviceProperties(&prop, ordinal), "cudaGetDeviceProperties");
  OPEN_CK(cudaDeviceGetAttribute(&c->nsm, cudaDevAttrMultiProcessorCount, ordinal),
          "cudaDeviceGetAttribute");
  if (c->nsm < 1) c->nsm = 1;
  /* No kernel image for this architecture (built for sm_80 and sm_90)
   * shows here rather than at the first op. */
  e = cudaFuncGetAttributes(&fa, (const void *)k_fill);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    rc = ps_errf(eb, PS_EDEVICE, "device 'cuda:%d' (%s, sm_%d%d): no kernels for it in this build: %s",
                 ordinal, prop.name, prop.major, prop.minor, cudaGetErrorString(e));
    goto out_release;
  }
  for (int s = 0; s < PS_GPU_NSTREAMS; s++) {
    OPEN_CK(cudaStreamCreateWithFlags(&c->stream[s], cudaStreamNonBlocking), "cudaStreamCreate");
    OPEN_CK(cudaEventCreateWithFlags(&c->event[s], cudaEventDisableTiming), "cudaEventCreate");
  }
  /* Enough scratch for the partials of a 4096-wide layer, so that a step
   * does not grow it (growing drains the compute stream). */
  OPEN_CK(cudaMalloc(&c->scratch, (size_t)1 << 20), "cudaMalloc (scratch)");
  c->scratch_bytes = (size_t)1 << 20;
  if ((bs = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS ||
      (bs = cublasSetStream(c->blas, c->stream[PS_GPU_STREAM_COMPUTE])) != CUBLAS_STATUS_SUCCESS ||
      (bs = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS ||
      (bs = cublasGetVersion(c->blas, &ver)) != CUBLAS_STATUS_SUCCESS) {
    rc = ps_errf(eb, PS_EDEVICE, "device 'cuda:%d': cuBLAS: %s", ordinal, cublasGetStatusString(bs));
    goto out_release;
  }
  b->ops = &cuda_ops;
  b->name = "cuda";
  b->device = ordinal;
  b->unified = 0;
  b->impl = c;
  snprintf(c->base_desc, sizeof c->base_desc, "cuda:%d: %.64s, sm_%d%d, %d SMs, %.1f GiB, cuBLAS %d.%d.%d",
           ordinal, prop.name, prop.major, prop.minor, c->nsm,
           (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024), ver / 10000, ver / 100 % 100,
           ver % 100);
  snprintf(b->desc, sizeof b->desc, "%s, fp32", c->base_desc);
  *be = b;
  return 0;

out_release:
  release(c);
  free(b);
  return rc;
}

/* ps_gpu_cuda_set_tf32: see ps_gpu_cuda.h. */
extern "C" int ps_gpu_cuda_set_tf32(ps_gpu_backend *be, int on) {
  if (!be || be->ops != &cuda_ops) return PS_EINVAL;
  cuda_impl *c = impl(be);
  int rc = enter(be);
  if (rc) return rc;
  cublasStatus_t s = cublasSetMathMode(c->blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
  if (s != CUBLAS_STATUS_SUCCESS) return blas_fail(be, s, "cublasSetMathMode");
  c->tf32 = on != 0;
  snprintf(be->desc, sizeof be->desc, "%s, %s", c->base_desc, c->tf32 ? "tf32" : "fp32");
  return 0;
}

/* ps_gpu_cuda_last_error: see ps_gpu_cuda.h. */
extern "C" const char *ps_gpu_cuda_last_error(const ps_gpu_backend *be) {
  return be && be->ops == &cuda_ops ? impl(be)->err : "";
}
