/* cuda_emu: a host emulation of the CUDA runtime and cuBLAS calls that
 * gpu/ps_gpu_cuda.cu makes (declared in include/; what it checks and what
 * it cannot is written there), so that the cuda backend's code is run and
 * checked against the CPU backend on machines without a GPU.
 *
 * Invariants:
 *  1. Every queue, the memory registry and all execution are under
 *     exec_mu: one host thread at a time runs queued work.
 *  2. Queued work runs only when waited for (drain): a stream's work in
 *     order, after what its queued event waits wait for (the recorded
 *     stream up to what it had queued at the record).
 *  3. A kernel runs block after block; a block's threads are fibers on
 *     the draining thread, each run until it ends or parks at a barrier;
 *     barriers count the block's (or warp's) live threads, so a thread
 *     that returned early does not hold the others up, and a barrier no
 *     live thread can pass aborts.
 *  4. Failing calls set the calling thread's last error, which
 *     cudaGetLastError returns and clears (CUDA's non-sticky errors). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "cublas_v2.h"
#include "cuda_runtime.h"

/* AddressSanitizer follows stack switches only when told (its fiber
 * annotations); without it they cost nothing. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_SWITCH_START(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define EMU_SWITCH_FINISH(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define EMU_SWITCH_START(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#define EMU_SWITCH_FINISH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

constexpr int kDevices = 1;
constexpr int kSMs = 2;                      /* few blocks: grid-stride loops do run */
constexpr size_t kMemory = (size_t)4 << 30;  /* device memory the emulator hands out */
constexpr unsigned kMaxThreads = 1024;

thread_local cudaError_t last_error = cudaSuccess;
thread_local int current_device = 0;

cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}

[[noreturn]] void die(const char *what) {
  fprintf(stderr, "cuda_emu: %s\n", what);
  abort();
}

/* ---- queues (invariant 2) -------------------------------------------------- */

struct op {
  uint64_t seq;
  CUstream_st *dep; /* drain DEP up to DEP_SEQ first (an event wait) */
  uint64_t dep_seq;
  std::function<void()> run;
};

}  // namespace

struct CUstream_st {
  std::deque<op> q;
  uint64_t last = 0; /* seq of the last op queued */
};

struct CUevent_st {
  CUstream_st *stream = nullptr; /* where it was last recorded */
  uint64_t seq = 0;              /* and what that stream had queued then */
};

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

std::recursive_mutex exec_mu;
CUstream_st legacy_stream; /* stream 0 */
std::vector<CUstream_st *> streams{&legacy_stream}; /* in creation order: repeatable runs */
std::set<CUevent_st *> events;
std::map<uintptr_t, size_t> dev_mem, pinned_mem;
size_t dev_used;

CUstream_st *stream_of(cudaStream_t s) { return s ? s : &legacy_stream; }

bool valid_stream(cudaStream_t s) {
  return std::find(streams.begin(), streams.end(), stream_of(s)) != streams.end();
}

uint64_t enqueue(CUstream_st *s, std::function<void()> run, CUstream_st *dep = nullptr,
                 uint64_t dep_seq = 0) {
  s->q.push_back(op{++s->last, dep, dep_seq, std::move(run)});
  return s->last;
}

/* drain runs S's queued work up to seq UPTO.  What its waits wait for
 * runs first, before any of S's own: S's earlier work thus runs as late as
 * CUDA allows, so a stream that reads S's results without waiting for
 * them reads them unwritten.  (A wait refers to earlier work only, so the
 * recursion ends.) */
void drain(CUstream_st *s, uint64_t upto) {
  for (;;) {
    auto it = s->q.begin();
    while (it != s->q.end() && it->seq <= upto && !it->dep) ++it;
    if (it == s->q.end() || it->seq > upto) break;
    CUstream_st *dep = it->dep;
    it->dep = nullptr;
    drain(dep, it->dep_seq);
  }
  while (!s->q.empty() && s->q.front().seq <= upto) {
    op o = std::move(s->q.front());
    s->q.pop_front();
    if (o.run) o.run();
  }
}

void drain_all() {
  for (CUstream_st *s : streams) drain(s, UINT64_MAX);
}

/* alloc_of returns the allocation of M holding P (end() when none). */
std::map<uintptr_t, size_t>::const_iterator alloc_of(const std::map<uintptr_t, size_t> &m,
                                                     const void *p) {
  const uintptr_t a = (uintptr_t)p;
  auto it = m.upper_bound(a);
  if (it == m.begin()) return m.end();
  --it;
  return a < it->first + it->second ? it : m.end();
}

/* within: [P, P + BYTES) lies inside one allocation of M. */
bool within(const std::map<uintptr_t, size_t> &m, const void *p, size_t bytes) {
  auto it = alloc_of(m, p);
  return it != m.end() && bytes <= it->first + it->second - (uintptr_t)p;
}

bool is_device(const void *p) { return alloc_of(dev_mem, p) != dev_mem.end(); }
bool is_pinned(const void *p) { return alloc_of(pinned_mem, p) != pinned_mem.end(); }

/* ---- blocks as fibers (invariant 3) -------------------------------------------- */

/* Block-shared memory (cuda_runtime.h: every __shared__ variable is in
 * section ps_emu_shared), poisoned before each block. */
extern "C" char __start_ps_emu_shared[] __attribute__((weak));
extern "C" char __stop_ps_emu_shared[] __attribute__((weak));

/* poison_shared fills the shared section with 0xff (NaN); not checked by
 * ASan, which puts no redzones into a named section anyway. */
__attribute__((no_sanitize_address)) void poison_shared() {
  for (volatile char *p = __start_ps_emu_shared; p && p < __stop_ps_emu_shared; p++) *p = (char)0xff;
}

/* block_runner runs a kernel's blocks one after another; a block's
 * threads are fibers (ucontext) on the calling thread, each run until it
 * ends or waits at a barrier.  The order alternates, thread by thread
 * within blocks and block by block within launches, between index order
 * and reverse (by the parity of block and launch), so a read of data that
 * no barrier orders after its write sees it unwritten in one of them. */
class block_runner {
 public:
  ~block_runner() {
    for (fiber &f : f_)
      if (f.stack) munmap(f.stack, kStack);
  }

  void run(const std::function<void()> &body, dim3 grid, dim3 block) {
    const unsigned n = block.x * block.y * block.z;
    if (f_.size() < n) f_.resize(n);
    for (unsigned i = 0; i < n; i++)
      if (!f_[i].stack) {
        void *st = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (st == MAP_FAILED) die("no memory for a thread's stack");
        f_[i].stack = st;
      }
    body_ = &body;
    n_ = n;
    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z, launch = launches_++;
    for (uint64_t k = 0; k < nblocks; k++) {
      const uint64_t b = launch & 1 ? nblocks - 1 - k : k;
      const unsigned x = (unsigned)(b % grid.x), y = (unsigned)(b / grid.x % grid.y),
                     z = (unsigned)(b / ((uint64_t)grid.x * grid.y));
      run_block(uint3{x, y, z}, grid, block, (b + launch) & 1);
    }
    body_ = nullptr;
  }

  void syncthreads() {
    const uint64_t g = bar_gen_;
    if (++arrived_ == alive_) {
      release_block();
      return;
    }
    park(BLOCK, g);
  }

  void syncwarp(unsigned mask) {
    check_mask(mask, "__syncwarp");
    warp_barrier(cur_ / 32);
  }

  void shfl_xor(unsigned mask, void *v, size_t size, int lane_mask) {
    check_mask(mask, "__shfl_xor_sync");
    const unsigned i = cur_, w = i / 32, src = 32 * w + ((i % 32) ^ ((unsigned)lane_mask & 31u));
    if (src >= n_ || f_[src].done) die("__shfl_xor_sync reads a lane that does not exist or has returned");
    memcpy(slots_[i], v, size);
    warp_barrier(w);
    memcpy(v, slots_[src], size);
    warp_barrier(w);
  }

 private:
  static constexpr size_t kStack = 256 * 1024;
  enum wait_kind { NONE, BLOCK, WARP };
  struct fiber {
    ucontext_t ctx;
    void *stack = nullptr;
    bool done = false;
    wait_kind waiting = NONE;
    uint64_t gen = 0;
  };

  static void entry();

  /* check_mask aborts unless MASK names exactly the live lanes of the
   * calling thread's warp. */
  void check_mask(unsigned mask, const char *what) {
    const unsigned w = cur_ / 32, lanes = n_ - 32 * w < 32 ? n_ - 32 * w : 32;
    unsigned live = 0;
    for (unsigned l = 0; l < lanes; l++)
      if (!f_[32 * w + l].done) live |= 1u << l;
    if (mask != live) {
      fprintf(stderr, "cuda_emu: %s: mask 0x%08x, live lanes of warp %u 0x%08x\n", what, mask, w, live);
      die("a warp operation's mask names a lane that does not exist or has returned, or leaves a live one out");
    }
  }

  void run_block(uint3 bidx, dim3 grid, dim3 block, bool reverse) {
    const unsigned n = n_;
    poison_shared();
    alive_ = n;
    arrived_ = 0;
    for (unsigned w = 0; w < (n + 31) / 32; w++) {
      walive_[w] = n - 32 * w < 32 ? n - 32 * w : 32;
      warrived_[w] = 0;
    }
    for (unsigned i = 0; i < n; i++) start_fiber(f_[i]);
    blockIdx = bidx;
    blockDim = block;
    gridDim = grid;
    for (unsigned left = n; left;) {
      bool ran = false;
      for (unsigned k = 0; k < n; k++) {
        const unsigned i = reverse ? n - 1 - k : k;
        fiber &f = f_[i];
        if (f.done || (f.waiting == BLOCK && f.gen == bar_gen_) ||
            (f.waiting == WARP && f.gen == wgen_[i / 32]))
          continue;
        f.waiting = NONE;
        cur_ = i;
        threadIdx = uint3{i % block.x, i / block.x % block.y, i / (block.x * block.y)};
        void *fake = nullptr;
        EMU_SWITCH_START(&fake, f.stack, kStack);
        swapcontext(&sched_, &f.ctx);
        EMU_SWITCH_FINISH(fake, nullptr, nullptr);
        ran = true;
        if (f.done) left--;
      }
      if (!ran && left) die("a barrier (__syncthreads, __syncwarp or a shuffle) was not reached by every live thread");
    }
  }

  /* finish: thread CUR_ ended; barriers now wait for one thread fewer. */
  void finish() {
    const unsigned w = cur_ / 32;
    f_[cur_].done = true;
    if (--alive_ && arrived_ && arrived_ == alive_) release_block();
    if (--walive_[w] && warrived_[w] && warrived_[w] == walive_[w]) release_warp(w);
  }

  void park(wait_kind kind, uint64_t gen) {
    fiber &f = f_[cur_];
    f.waiting = kind;
    f.gen = gen;
    void *fake = nullptr;
    EMU_SWITCH_START(&fake, sched_bottom_, sched_size_);
    swapcontext(&f.ctx, &sched_);
    EMU_SWITCH_FINISH(fake, &sched_bottom_, &sched_size_);
  }

  /* start_fiber makes F start the kernel body at its next switch (kept
   * out of run_block: getcontext returns twice, like setjmp). */
  __attribute__((noinline)) void start_fiber(fiber &f) {
    f.done = false;
    f.waiting = NONE;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &sched_;
    makecontext(&f.ctx, entry, 0);
  }

  void release_block() {
    arrived_ = 0;
    bar_gen_++;
  }

  void release_warp(unsigned w) {
    warrived_[w] = 0;
    wgen_[w]++;
  }

  void warp_barrier(unsigned w) {
    const uint64_t g = wgen_[w];
    if (++warrived_[w] == walive_[w]) {
      release_warp(w);
      return;
    }
    park(WARP, g);
  }

  ucontext_t sched_;
  const void *sched_bottom_ = nullptr; /* the scheduler's stack, for ASan */
  size_t sched_size_ = 0;
  std::vector<fiber> f_;
  const std::function<void()> *body_ = nullptr;
  unsigned n_ = 0, cur_ = 0, alive_ = 0, arrived_ = 0;
  uint64_t launches_ = 0;
  uint64_t bar_gen_ = 0;
  unsigned walive_[kMaxThreads / 32] = {}, warrived_[kMaxThreads / 32] = {};
  uint64_t wgen_[kMaxThreads / 32] = {};
  unsigned char slots_[kMaxThreads][8] = {};
};

block_runner runner; /* used under exec_mu only */

void block_runner::entry() {
  EMU_SWITCH_FINISH(nullptr, &runner.sched_bottom_, &runner.sched_size_);
  (*runner.body_)();
  runner.finish();
  EMU_SWITCH_START(nullptr, runner.sched_bottom_, runner.sched_size_); /* this stack is done */
} /* returns to sched_ (uc_link) */

}  // namespace

void ps_emu_syncthreads(void) { runner.syncthreads(); }
void ps_emu_syncwarp(unsigned mask) { runner.syncwarp(mask); }
void ps_emu_shfl_xor(unsigned mask, void *v, size_t size, int lane_mask) {
  runner.shfl_xor(mask, v, size, lane_mask);
}

void ps_emu_check_arg(const void *p, unsigned index) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  if (p && !is_device(p) && !is_pinned(p)) {
    fprintf(stderr, "cuda_emu: kernel argument %u (%p) is neither device nor pinned host memory\n", index, p);
    die("a kernel was given a host pointer (a GPU faults on it)");
  }
}


void ps_emu_enqueue(const ps_emu_cfg &cfg, std::function<void()> body) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  const dim3 g = cfg.grid, b = cfg.block;
  if (!valid_stream(cfg.stream)) {
    fail(cudaErrorInvalidResourceHandle);
    return;
  }
  if (!g.x || !g.y || !g.z || !b.x || !b.y || !b.z || b.x > 1024 || b.y > 1024 || b.z > 64 ||
      (uint64_t)b.x * b.y * b.z > kMaxThreads || g.x > 0x7fffffffu || g.y > 65535 ||
      g.z > 65535 || cfg.shmem != 0) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  enqueue(stream_of(cfg.stream), [g, b, body = std::move(body)] { runner.run(body, g, b); });
}

extern "C" {

/* ---- devices and errors --------------------------------------------------------- */

/* PS_CUDA_EMU_NO_DRIVER=1: the emulated runtime finds no driver, as
 * CUDA's does on a machine without libcuda.so.1 (cudaErrorInsufficientDriver). */
cudaError_t cudaGetDeviceCount(int *count) {
  if (!count) return fail(cudaErrorInvalidValue);
  const char *nd = getenv("PS_CUDA_EMU_NO_DRIVER");
  if (nd && !strcmp(nd, "1")) {
    *count = 0;
    return fail(cudaErrorInsufficientDriver);
  }
  *count = kDevices;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= kDevices) return fail(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
  if (!device) return fail(cudaErrorInvalidValue);
  *device = current_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
  if (!prop) return fail(cudaErrorInvalidValue);
  if (device < 0 || device >= kDevices) return fail(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "cuda_emu (host emulation, no GPU)");
  prop->totalGlobalMem = kMemory;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = kSMs;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
  if (!value || attr != cudaDevAttrMultiProcessorCount) return fail(cudaErrorInvalidValue);
  if (device < 0 || device >= kDevices) return fail(cudaErrorInvalidDevice);
  *value = kSMs;
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, const void *func) {
  if (!attr || !func) return fail(cudaErrorInvalidValue);
  attr->maxThreadsPerBlock = (int)kMaxThreads;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
  }
  return "unrecognized error code";
}

const char *cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
  }
  return "cudaErrorUnknown";
}

/* ---- memory --------------------------------------------------------------------- */

/* new_block: BYTES (at least 1) of NaN bytes, registered in M. */
static cudaError_t new_block(std::map<uintptr_t, size_t> &m, void **ptr, size_t bytes) {
  if (!ptr) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  *ptr = nullptr;
  if (!bytes) bytes = 1;
  if (&m == &dev_mem && bytes > kMemory - dev_used) return fail(cudaErrorMemoryAllocation);
  void *p = malloc(bytes);
  if (!p) return fail(cudaErrorMemoryAllocation);
  memset(p, 0xff, bytes);
  m[(uintptr_t)p] = bytes;
  if (&m == &dev_mem) dev_used += bytes;
  *ptr = p;
  return cudaSuccess;
}

/* free_block: after all queued work (cudaFree synchronises the device),
 * frees PTR, which must be the start of a block of M. */
static cudaError_t free_block(std::map<uintptr_t, size_t> &m, void *ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  drain_all();
  auto it = m.find((uintptr_t)ptr);
  if (it == m.end()) return fail(cudaErrorInvalidValue);
  if (&m == &dev_mem) dev_used -= it->second;
  m.erase(it);
  free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void **ptr, size_t bytes) { return new_block(dev_mem, ptr, bytes); }
cudaError_t cudaFree(void *ptr) { return free_block(dev_mem, ptr); }
cudaError_t cudaMallocHost(void **ptr, size_t bytes) { return new_block(pinned_mem, ptr, bytes); }
cudaError_t cudaFreeHost(void *ptr) { return free_block(pinned_mem, ptr); }

/* cudaMemcpyAsync with CUDA's host synchronisation: a pageable source is
 * staged at the call; a pageable destination, or any host-to-host copy,
 * is written when the call returns; pinned memory and device-to-device
 * copies run when the stream gets there.  The kind must match where the
 * pointers are. */
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (!bytes) return cudaSuccess;
  if (!dst || !src) return fail(cudaErrorInvalidValue);
  const bool dst_dev = is_device(dst), src_dev = is_device(src);
  if ((dst_dev && !within(dev_mem, dst, bytes)) || (src_dev && !within(dev_mem, src, bytes)))
    return fail(cudaErrorInvalidValue);
  bool ok;
  switch (kind) {
    case cudaMemcpyHostToHost: ok = !dst_dev && !src_dev; break;
    case cudaMemcpyHostToDevice: ok = dst_dev && !src_dev; break;
    case cudaMemcpyDeviceToHost: ok = !dst_dev && src_dev; break;
    case cudaMemcpyDeviceToDevice: ok = dst_dev && src_dev; break;
    case cudaMemcpyDefault: ok = true; break;
    default: return fail(cudaErrorInvalidMemcpyDirection);
  }
  if (!ok) return fail(cudaErrorInvalidValue);
  CUstream_st *s = stream_of(stream);
  const bool src_pageable = !src_dev && !within(pinned_mem, src, bytes);
  /* done when the call returns: a copy to pageable memory, or host to host */
  const bool sync = !dst_dev && (!src_dev || !within(pinned_mem, dst, bytes));
  uint64_t seq;
  if (src_pageable) {
    auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char *)src,
                                                               (const unsigned char *)src + bytes);
    seq = enqueue(s, [dst, staged] { memcpy(dst, staged->data(), staged->size()); });
  } else {
    seq = enqueue(s, [dst, src, bytes] { memcpy(dst, src, bytes); });
  }
  if (sync) drain(s, seq);
  return cudaSuccess;
}

/* ---- streams and events ------------------------------------------------------------ */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
  (void)flags;
  if (!stream) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  *stream = new CUstream_st();
  streams.push_back(*stream);
  return cudaSuccess;
}

/* cudaStreamDestroy: the stream's work completes (here: all queued work
 * runs, so no other stream's queued wait can refer to it afterwards). */
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  if (!stream || !valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
  drain_all();
  streams.erase(std::find(streams.begin(), streams.end(), stream));
  for (CUevent_st *e : events)
    if (e->stream == stream) e->stream = nullptr; /* its work is done: nothing to wait for */
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
  drain(stream_of(stream), UINT64_MAX);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  drain_all();
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags) {
  (void)flags;
  if (!event) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  *event = new CUevent_st();
  events.insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  if (!event || !events.erase(event)) return fail(cudaErrorInvalidResourceHandle);
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  if (!event || !events.count(event) || !valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
  event->stream = stream_of(stream);
  event->seq = event->stream->last;
  return cudaSuccess;
}

/* cudaStreamWaitEvent: STREAM's later work waits for what EVENT's stream
 * had queued at its last record (never recorded: nothing to wait for). */
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  if (!event || !events.count(event) || !valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (flags) return fail(cudaErrorInvalidValue);
  if (event->stream) enqueue(stream_of(stream), nullptr, event->stream, event->seq);
  return cudaSuccess;
}

/* ---- cuBLAS --------------------------------------------------------------------------- */

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode != CUBLAS_DEFAULT_MATH && mode != CUBLAS_TF32_TENSOR_OP_MATH) return CUBLAS_STATUS_INVALID_VALUE;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion(cublasHandle_t handle, int *version) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!version) return CUBLAS_STATUS_INVALID_VALUE;
  *version = 0;
  return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
  }
  return "unknown error";
}

/* tf32 rounds X to TF32 (10 mantissa bits, to nearest), as tensor-op math
 * reads gemm inputs. */
static float tf32(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* operand_ok: the column-major ROWS x COLS operand at P with leading
 * dimension LD lies inside one device allocation. */
static bool operand_ok(const float *p, int rows, int cols, int ld) {
  const size_t elems = (size_t)ld * (size_t)(cols - 1) + (size_t)rows;
  return within(dev_mem, p, elems * sizeof(float));
}

/* cublasSgemm: column-major C = alpha op(A) op(B) + beta C, C m x n, op(A)
 * m x k; with beta 0, C is not read (it may hold NaN).  Sums in double. */
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
  if ((transa != CUBLAS_OP_N && !ta) || (transb != CUBLAS_OP_N && !tb) || m < 0 || n < 0 || k < 0 ||
      lda < (ta ? k : m) || lda < 1 || ldb < (tb ? n : k) || ldb < 1 || ldc < m || ldc < 1 ||
      !alpha || !beta)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!m || !n) return CUBLAS_STATUS_SUCCESS;
  std::lock_guard<std::recursive_mutex> lk(exec_mu);
  if (!valid_stream(handle->stream)) return CUBLAS_STATUS_EXECUTION_FAILED;
  if ((k && (!operand_ok(A, ta ? k : m, ta ? m : k, lda) || !operand_ok(B, tb ? n : k, tb ? k : n, ldb))) ||
      !operand_ok(C, m, n, ldc)) {
    fprintf(stderr, "cuda_emu: cublasSgemm: an operand reaches outside its device allocation\n");
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  const float al = *alpha, be = *beta;
  const bool round = handle->math == CUBLAS_TF32_TENSOR_OP_MATH;
  enqueue(stream_of(handle->stream), [=] {
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double acc = 0;
        for (int l = 0; l < k; l++) {
          float a = ta ? A[l + (size_t)i * lda] : A[i + (size_t)l * lda];
          float b = tb ? B[j + (size_t)l * ldb] : B[l + (size_t)j * ldb];
          if (round) {
            a = tf32(a);
            b = tf32(b);
          }
          acc += (double)a * b;
        }
        float &c = C[i + (size_t)j * ldc];
        c = be == 0 ? (float)(al * acc) : (float)(al * acc + (double)be * c);
      }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
