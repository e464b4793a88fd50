/* cuda_emu: the part of the CUDA runtime API that gpu/ps_gpu_cuda.cu and
 * its tests use, emulated on the host (tests/cuda_emu/cuda_emu.cc), so
 * that the cuda backend's own code runs and is checked on a machine
 * without a GPU.  Not NVIDIA's header: same names and meanings, only what
 * the backend calls.  Usable from C (this file) and C++ (cuda_runtime.h
 * adds the kernel side).
 *
 * What the emulation checks and what it cannot:
 *  - Streams run lazily: queued work executes only when something waits
 *    for it (cudaStreamSynchronize, a copy to pageable memory, an event
 *    another stream waits on, cudaFree), and what a stream's event waits
 *    wait for runs before the stream's own work.  Work that a stream uses
 *    before the stream that produces it was made to wait therefore reads
 *    stale data, as it may on a GPU.  Copies follow CUDA's documented host
 *    synchronisation (pageable source: staged at the call; pageable
 *    destination or host to host: done when the call returns; pinned:
 *    asynchronous).  Streams are all non-blocking (the legacy stream's
 *    implicit synchronisation is not emulated: the backend never uses
 *    it); cudaStreamDestroy runs all queued work, stricter than CUDA.
 *  - Kernels run block after block; a block's threads are fibers, each
 *    run until it ends or waits at a barrier (__syncthreads, __syncwarp,
 *    __shfl_xor_sync).  Thread order within a block and block order
 *    within a launch alternate between index order and reverse, so data
 *    a barrier does not order is read unwritten in one of them; shared
 *    memory is NaN at the start of every block.  A barrier that not every
 *    live thread reaches, a warp mask that is not exactly the live lanes,
 *    and a kernel argument pointing at pageable host memory abort.
 *  - Device memory is host memory: a kernel that strays outside its
 *    buffer is caught only by the sanitizer build, and host code reading
 *    device memory directly is not caught at all; new device and pinned
 *    memory is filled with NaN bytes (0xff).
 *  - Not emulated: timing, races between threads that no barrier
 *    separates (fibers do not interleave), occupancy and launch-bound
 *    limits, the hardware's float rounding (host libm instead). */
#ifndef PS_CUDA_EMU_RUNTIME_API_H
#define PS_CUDA_EMU_RUNTIME_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400
} cudaError_t;

typedef enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
} cudaMemcpyKind;

typedef enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 } cudaDeviceAttr;

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;

#define cudaStreamNonBlocking 0x01u
#define cudaEventDisableTiming 0x02u

typedef struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor;
  int multiProcessorCount;
} cudaDeviceProp;

typedef struct cudaFuncAttributes {
  int maxThreadsPerBlock;
} cudaFuncAttributes;

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, const void *func);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t error);
const char *cudaGetErrorName(cudaError_t error);

cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t bytes);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags);
cudaError_t cudaDeviceSynchronize(void);

#ifdef __cplusplus
}
#endif

#endif
