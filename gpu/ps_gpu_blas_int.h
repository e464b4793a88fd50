/* ps_gpu_blas internals, for its tests. */
#ifndef PS_GPU_BLAS_INT_H
#define PS_GPU_BLAS_INT_H

#include "ps_error.h"

/* The guard variable of the second process (ps_gpu_blas.h, invariant 5);
 * its value is the core OpenBLAS picked in the first one. */
#define PS_GPU_BLAS_GUARD "PS_GPU_BLAS_REEXEC"

/* ps_gpu_blas_reexec sets OPENBLAS_CORETYPE=KERNEL and the guard to
 * PICKED, then executes EXE with ARGV (NULL terminated).  Returns only
 * when the execution failed: both variables are unset again, errno says
 * why, and a negative PS_E* code comes back with the message in EB. */
int ps_gpu_blas_reexec(const char *exe, char *const argv[], const char *kernel,
                       const char *picked, ps_errbuf *eb);

#endif
