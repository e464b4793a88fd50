/* cuda_emu: the cuBLAS calls gpu/ps_gpu_cuda.cu makes, emulated on the
 * host (tests/cuda_emu/cuda_emu.cc; see cuda_runtime_api.h).  cublasSgemm
 * checks its arguments as cuBLAS documents (sizes >= 0, leading
 * dimensions at least the rows of the column-major operand) and, beyond
 * cuBLAS, that every operand lies inside one device allocation; it is
 * queued on the handle's stream like any other work.  TF32 math rounds A
 * and B to 10 mantissa bits as the tensor cores do. */
#ifndef PS_CUDA_EMU_CUBLAS_V2_H
#define PS_CUDA_EMU_CUBLAS_V2_H

#include "cuda_runtime_api.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cublasContext *cublasHandle_t;

typedef enum {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_EXECUTION_FAILED = 13
} cublasStatus_t;

typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;

typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;

cublasStatus_t cublasCreate(cublasHandle_t *handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
cublasStatus_t cublasGetVersion(cublasHandle_t handle, int *version);
const char *cublasGetStatusString(cublasStatus_t status);
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc);

#ifdef __cplusplus
}
#endif

#endif
