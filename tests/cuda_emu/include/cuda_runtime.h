/* cuda_emu: the runtime API (cuda_runtime_api.h) plus, for C++, the
 * kernel side of CUDA as the host emulation needs it: dim3, the built-in
 * indices, the qualifiers, barriers and warp shuffles, and ps_emu_launch,
 * which the build puts where the source has "kernel<<<cfg>>>(args)"
 * (Makefile: the .cu file is rewritten by one sed expression, line for
 * line).  See cuda_runtime_api.h for what is and is not emulated. */
#ifndef PS_CUDA_EMU_RUNTIME_H
#define PS_CUDA_EMU_RUNTIME_H

#include "cuda_runtime_api.h"

#ifdef __cplusplus
#include <math.h>
#include <stdint.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

/* Set by the emulator before it runs each thread of a kernel (threads
 * are fibers on one host thread, one kernel at a time). */
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
/* One block runs at a time, so block-shared memory is a static; all of it
 * sits in one section, which the emulator fills with NaN bytes (0xff)
 * before every block, so nothing a block did not write is read as data. */
#define __shared__ static __attribute__((section("ps_emu_shared")))

/* Warp operations take a MASK of lanes, which must name exactly the
 * warp's live lanes (the emulator aborts otherwise: a lane that returned
 * or does not exist makes the operation undefined on a GPU). */
void ps_emu_syncthreads(void);
void ps_emu_syncwarp(unsigned mask);
/* ps_emu_shfl_xor replaces the SIZE bytes at V with lane (this lane ^
 * LANE_MASK)'s value. */
void ps_emu_shfl_xor(unsigned mask, void *v, size_t size, int lane_mask);

#define __syncthreads() ps_emu_syncthreads()
inline void __syncwarp(unsigned mask = 0xffffffffu) { ps_emu_syncwarp(mask); }
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  ps_emu_shfl_xor(mask, &v, sizeof v, lane_mask);
  return v;
}
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}

struct ps_emu_cfg {
  dim3 grid, block;
  size_t shmem;
  cudaStream_t stream;
  ps_emu_cfg(dim3 g, dim3 b, size_t sh = 0, cudaStream_t s = 0) : grid(g), block(b), shmem(sh), stream(s) {}
};

/* ps_emu_enqueue checks CFG (errors go to cudaGetLastError, as a failed
 * launch does) and queues BODY to run once per thread of CFG's grid on
 * CFG's stream. */
void ps_emu_enqueue(const ps_emu_cfg &cfg, std::function<void()> body);

/* ps_emu_check_arg aborts unless pointer argument INDEX of a kernel is
 * NULL, device memory or pinned host memory (a GPU faults on any other). */
void ps_emu_check_arg(const void *p, unsigned index);

template <typename T>
inline void ps_emu_check_one(const T &, unsigned) {}
template <typename T>
inline void ps_emu_check_one(T *const &p, unsigned index) {
  ps_emu_check_arg((const void *)p, index);
}
template <typename Tuple, size_t... I>
inline void ps_emu_check_args(const Tuple &t, std::index_sequence<I...>) {
  (ps_emu_check_one(std::get<I>(t), (unsigned)I), ...);
}

/* ps_emu_launch: "KERNEL<<<CFG>>>(ARGS)".  The arguments are converted to
 * the kernel's parameter types and copied at the launch, as CUDA does. */
template <typename... P, typename... A>
void ps_emu_launch(const ps_emu_cfg &cfg, void (*kernel)(P...), A &&...args) {
  std::tuple<typename std::decay<P>::type...> t(std::forward<A>(args)...);
  ps_emu_check_args(t, std::index_sequence_for<P...>{});
  ps_emu_enqueue(cfg, [kernel, t]() { std::apply(kernel, t); });
}
#endif

#endif
