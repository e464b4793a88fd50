/* ps_gpu_blas: which OpenBLAS kernel the CPU backend runs.
 *
 * An OpenBLAS built with DYNAMIC_ARCH (Debian's) picks its kernel, its
 * "core", once, while the library loads, from the CPU's vendor, family and
 * model; OPENBLAS_CORETYPE, read at that same moment, overrides the pick.
 * A model the library does not know gets a generic core: OpenBLAS 0.3.21
 * runs "Prescott" (SSE3) on Intel family 6 model 207, whose sgemm is 7x
 * slower than the "SkylakeX" kernel on the same core.  Since the choice is
 * made before main runs, psw corrects it by executing itself again with
 * OPENBLAS_CORETYPE set (ps_gpu_blas_select, first thing in main).
 *
 * Invariants:
 *  1. Never a kernel the CPU cannot run (an illegal instruction is a crash,
 *     not a slowdown).  "Haswell" needs AVX, AVX2 and FMA in cpuid and the
 *     OS saving SSE and AVX state (XCR0 bits 1-2; xgetbv runs only when
 *     OSXSAVE says it may).  "SkylakeX" (built with -march=skylake-avx512)
 *     needs all of that, AVX-512 F, CD, BW, DQ and VL, the scalar
 *     extensions that -march turns on (BMI1, BMI2, LZCNT, POPCNT, MOVBE,
 *     F16C) and the OS saving opmask and zmm state (XCR0 bits 5-7).
 *  2. A user-set OPENBLAS_CORETYPE is never replaced (any value, even
 *     empty).
 *  3. Only a core below the AVX2 level is replaced (a generic or fallback
 *     one: Prescott, Core2, Nehalem, Sandybridge, ...), and only on a CPU
 *     that can run AVX2 or AVX-512 kernels.  An AVX2 core (Haswell, Zen)
 *     on a CPU with AVX-512 is kept: OpenBLAS picks one there only for a
 *     model it knows (or when the OS hides zmm state, which invariant 1
 *     also sees); its vectors are half as wide, not the 7x loss of a
 *     generic core; and a deliberate choice of the library is not
 *     second-guessed.
 *  4. On a CPU with AVX-512 the forced core is "SkylakeX", also when the
 *     CPU has AVX512-BF16: 0.3.21's OPENBLAS_CORETYPE parser does not
 *     accept "Cooperlake" (its name search stops one entry short), and
 *     Cooperlake adds only bf16 kernels to SkylakeX's (same sgemm).
 *  5. At most one re-execution: the guard variable PS_GPU_BLAS_REEXEC
 *     (OpenBLAS's own pick, for the log) marks the second process, which
 *     never executes again; it then removes both variables from its
 *     environment so that programs it starts decide for themselves.
 *  6. Idle helpers sleep (ps_gpu_blas_short_spin).  After each call
 *     OpenBLAS's helper threads busy-wait, calling sched_yield, for
 *     2^OPENBLAS_THREAD_TIMEOUT TSC cycles (default 2^28: about 0.1 s)
 *     before they sleep.  A worker waits on the network between steps,
 *     and a helper spinning meanwhile takes the core that the shard's
 *     optimizer and both ends of the loopback copy need (issue 11: with
 *     1 shard + 1 worker, spinning helpers made the push wait 2-3x
 *     longer).  Unless the user set OPENBLAS_THREAD_TIMEOUT (any value
 *     stands), the CPU backend with more than one thread sets it to
 *     PS_GPU_BLAS_SPIN_LOG2 for the library, never for programs it starts.
 *
 * Not thread-safe: ps_gpu_blas_select runs before any thread exists. */
#ifndef PS_GPU_BLAS_H
#define PS_GPU_BLAS_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"

/* Instruction-set levels of OpenBLAS's x86-64 cores, lowest first. */
typedef enum ps_gpu_blas_isa {
  PS_GPU_BLAS_ISA_UNKNOWN = -1, /* a core name psw does not know */
  PS_GPU_BLAS_ISA_SSE = 0,      /* generic: Prescott, Core2, Nehalem, ... */
  PS_GPU_BLAS_ISA_AVX = 1,      /* Sandybridge, Bulldozer, ... */
  PS_GPU_BLAS_ISA_AVX2 = 2,     /* Haswell, Zen */
  PS_GPU_BLAS_ISA_AVX512 = 3    /* SkylakeX, Cooperlake, SapphireRapids */
} ps_gpu_blas_isa;

/* The cpuid and XCR0 words the choice reads; a leaf the CPU lacks reads 0. */
typedef struct ps_gpu_blas_cpu {
  uint32_t l1_ecx;   /* CPUID.1:ECX (FMA, MOVBE, POPCNT, OSXSAVE, AVX, F16C) */
  uint32_t l7_ebx;   /* CPUID.(7,0):EBX (BMI1, AVX2, BMI2, AVX-512 F DQ CD BW VL) */
  uint32_t ext_ecx;  /* CPUID.80000001h:ECX (LZCNT) */
  uint64_t xcr0;     /* XGETBV(0): the state the OS saves; 0 without OSXSAVE */
} ps_gpu_blas_cpu;

/* What the choice depends on (all borrowed for the call). */
typedef struct ps_gpu_blas_in {
  ps_gpu_blas_cpu cpu;
  const char *core;  /* the core OpenBLAS picked: openblas_get_corename() */
  int dynamic_arch;  /* 1: the library picks its core at load (DYNAMIC_ARCH) */
  const char *env;   /* OPENBLAS_CORETYPE as the user set it; NULL: unset */
} ps_gpu_blas_in;

/* The choice: KERNEL is the core to force (a static name for
 * OPENBLAS_CORETYPE), NULL to keep OpenBLAS's; WHY says why (static). */
typedef struct ps_gpu_blas_choice {
  const char *kernel;
  const char *why;
} ps_gpu_blas_choice;

/* ps_gpu_blas_read_cpu fills *CPU from this CPU; 0, or PS_ENOTSUP off
 * x86 (*CPU is then all zero). */
int ps_gpu_blas_read_cpu(ps_gpu_blas_cpu *cpu);

/* ps_gpu_blas_cpu_isa returns the highest level whose kernels CPU can run
 * (invariant 1): PS_GPU_BLAS_ISA_AVX512, _AVX2, _AVX or _SSE. */
ps_gpu_blas_isa ps_gpu_blas_cpu_isa(const ps_gpu_blas_cpu *cpu);

/* ps_gpu_blas_core_isa returns the level of OpenBLAS core NAME (matched
 * without case, as OpenBLAS does), PS_GPU_BLAS_ISA_UNKNOWN for a name
 * psw does not know or NULL. */
ps_gpu_blas_isa ps_gpu_blas_core_isa(const char *name);

/* ps_gpu_blas_choose decides from IN alone (no cpuid, no environment) and
 * writes the decision to *OUT: the pure function behind
 * ps_gpu_blas_select, tested with a table of CPUs.  0, or PS_EINVAL when
 * IN or OUT is NULL. */
int ps_gpu_blas_choose(const ps_gpu_blas_in *in, ps_gpu_blas_choice *out);

/* ps_gpu_blas_select makes this process run the kernel ps_gpu_blas_choose
 * picks for it.  Call it first thing in main, before any thread, output
 * or other state that an exec would lose, with main's ARGV (NULL
 * terminated).  When a kernel is to be forced it executes /proc/self/exe
 * with ARGV, OPENBLAS_CORETYPE set and the guard variable (invariant 5),
 * and does not return.  Returns 0 when the process goes on as it is
 * (nothing to force, or this is the second process); when the execution
 * fails, the environment is restored and a negative PS_E* code returns
 * with the message in EB: the caller logs a warning and goes on with
 * OpenBLAS's own kernel. */
int ps_gpu_blas_select(char **argv, ps_errbuf *eb);

/* ps_gpu_blas_kernel returns the kernel psw forces on this machine (a
 * static name for OPENBLAS_CORETYPE), or NULL when OpenBLAS's own choice
 * (or the user's OPENBLAS_CORETYPE) stands: what `psw --blas-kernel`
 * prints.  Valid after ps_gpu_blas_select; NULL before. */
const char *ps_gpu_blas_kernel(void);

/* ps_gpu_blas_describe writes "kernel NAME (WHY)" to BUF (CAP bytes,
 * truncated to fit): the core OpenBLAS runs and who chose it, one of
 * "chosen by psw: OpenBLAS picked Prescott on this CPU", "OpenBLAS's
 * choice", "OPENBLAS_CORETYPE=VALUE", or a note that psw's choice could
 * not be applied.  Returns BUF. */
const char *ps_gpu_blas_describe(char *buf, size_t cap);

/* 2^16 TSC cycles, 20-30 us on 2-3 GHz parts: longer than the gaps
 * between one training step's gemms (a helper that slept would have to
 * be woken for the next), far shorter than a push and pull. */
#define PS_GPU_BLAS_SPIN_LOG2 16

/* ps_gpu_blas_short_spin makes OpenBLAS's helper threads sleep after
 * 2^PS_GPU_BLAS_SPIN_LOG2 cycles idle (invariant 6), unless
 * OPENBLAS_THREAD_TIMEOUT is set: OpenBLAS reads the variable when it
 * starts its thread pool, so this sets it, has OpenBLAS read its
 * environment again (openblas_read_env), removes it from the environment
 * and stops the pool (blas_thread_shutdown_), which the next call starts
 * again with the short wait.  Both functions are looked up with dlsym: a
 * BLAS without them (an OpenMP or serial build) is left alone.  Returns 1
 * when applied, 0 when not (user's variable, no such functions).  Call it
 * with no BLAS call running and no other thread reading the environment
 * (ps_gpu_cpu_open does, before it sets the thread count). */
int ps_gpu_blas_short_spin(void);

#endif
