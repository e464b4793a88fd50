/* ps_test_blas_shim.so: for tests only, LD_PRELOADed into psw by
 * tests/integration/test_train.c (never part of a program).
 *
 * It makes OpenBLAS's own choice of kernel look like the generic
 * "Prescott", what OpenBLAS 0.3.21 picks on CPUs it does not know, so that
 * psw's correction (gpu/ps_gpu_blas.c: re-execution with
 * OPENBLAS_CORETYPE set) runs for real on any machine with AVX2 or
 * AVX-512.  When OPENBLAS_CORETYPE is set as the process starts (psw's
 * second process, or a user's choice) it answers what OpenBLAS really
 * runs.  Only psw's own calls are affected: OpenBLAS itself still picks
 * its kernel from the CPU. */
#include <dlfcn.h>
#include <stdlib.h>

static int shim_real;

/* shim_init runs when the library loads, before psw's main may remove
 * OPENBLAS_CORETYPE from the environment. */
__attribute__((constructor)) static void shim_init(void) {
  shim_real = getenv("OPENBLAS_CORETYPE") != NULL;
}

/* openblas_get_corename: "Prescott", or the real library's answer. */
const char *openblas_get_corename(void) {
  if (!shim_real) return "Prescott";
  const char *(*real)(void);
  *(void **)&real = dlsym(RTLD_NEXT, "openblas_get_corename");
  return real ? real() : "unknown";
}
