/* ps_gpu_blas: which OpenBLAS kernel the CPU backend runs (see
 * ps_gpu_blas.h for the invariants).  Core names are OpenBLAS's, as
 * OPENBLAS_CORETYPE accepts them (driver/others/dynamic.c). */
#include "ps_gpu_blas.h"
#include "ps_proc.h"

#include <cblas.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "ps_gpu_blas_int.h"

/* CPUID.1:ECX */
#define L1_FMA (1u << 12)
#define L1_MOVBE (1u << 22)
#define L1_POPCNT (1u << 23)
#define L1_OSXSAVE (1u << 27)
#define L1_AVX (1u << 28)
#define L1_F16C (1u << 29)
/* CPUID.(7,0):EBX */
#define L7_BMI1 (1u << 3)
#define L7_AVX2 (1u << 5)
#define L7_BMI2 (1u << 8)
#define L7_AVX512F (1u << 16)
#define L7_AVX512DQ (1u << 17)
#define L7_AVX512CD (1u << 28)
#define L7_AVX512BW (1u << 30)
#define L7_AVX512VL (1u << 31)
/* CPUID.80000001h:ECX */
#define EXT_LZCNT (1u << 5)
/* XCR0: SSE and AVX (ymm upper halves) state; opmask, zmm upper halves
 * and zmm16-31 state. */
#define XCR0_YMM 0x06u
#define XCR0_ZMM 0xe0u

/* What each level needs, beyond the level below it (invariant 1). */
#define AVX_L1 (L1_OSXSAVE | L1_AVX)
#define AVX2_L1 L1_FMA
#define AVX2_L7 L7_AVX2
#define AVX512_L1 (L1_MOVBE | L1_POPCNT | L1_F16C)
#define AVX512_L7 \
  (L7_BMI1 | L7_BMI2 | L7_AVX512F | L7_AVX512DQ | L7_AVX512CD | L7_AVX512BW | L7_AVX512VL)
#define AVX512_EXT EXT_LZCNT

#define ENV_CORETYPE "OPENBLAS_CORETYPE"
#define ENV_TIMEOUT "OPENBLAS_THREAD_TIMEOUT"

/* OpenBLAS's x86-64 core names (0.3.21's DYNAMIC_ARCH list, plus
 * SapphireRapids from later releases) and their instruction-set level. */
static const struct {
  const char *name;
  ps_gpu_blas_isa isa;
} blas_cores[] = {
    {"Unknown", PS_GPU_BLAS_ISA_SSE},        {"Katmai", PS_GPU_BLAS_ISA_SSE},
    {"Coppermine", PS_GPU_BLAS_ISA_SSE},     {"Northwood", PS_GPU_BLAS_ISA_SSE},
    {"Prescott", PS_GPU_BLAS_ISA_SSE},       {"Banias", PS_GPU_BLAS_ISA_SSE},
    {"Atom", PS_GPU_BLAS_ISA_SSE},           {"Core2", PS_GPU_BLAS_ISA_SSE},
    {"Penryn", PS_GPU_BLAS_ISA_SSE},         {"Dunnington", PS_GPU_BLAS_ISA_SSE},
    {"Nehalem", PS_GPU_BLAS_ISA_SSE},        {"Athlon", PS_GPU_BLAS_ISA_SSE},
    {"Opteron", PS_GPU_BLAS_ISA_SSE},        {"Opteron_SSE3", PS_GPU_BLAS_ISA_SSE},
    {"Barcelona", PS_GPU_BLAS_ISA_SSE},      {"Nano", PS_GPU_BLAS_ISA_SSE},
    {"Bobcat", PS_GPU_BLAS_ISA_SSE},         {"Sandybridge", PS_GPU_BLAS_ISA_AVX},
    {"Bulldozer", PS_GPU_BLAS_ISA_AVX},      {"Piledriver", PS_GPU_BLAS_ISA_AVX},
    {"Steamroller", PS_GPU_BLAS_ISA_AVX},    {"Excavator", PS_GPU_BLAS_ISA_AVX},
    {"Haswell", PS_GPU_BLAS_ISA_AVX2},       {"Zen", PS_GPU_BLAS_ISA_AVX2},
    {"SkylakeX", PS_GPU_BLAS_ISA_AVX512},    {"Cooperlake", PS_GPU_BLAS_ISA_AVX512},
    {"SapphireRapids", PS_GPU_BLAS_ISA_AVX512},
};

/* What ps_gpu_blas_select found, for ps_gpu_blas_kernel and _describe. */
static struct {
  const char *kernel; /* psw's choice for this machine, NULL: none */
  int forced;         /* 1: this process runs with psw's OPENBLAS_CORETYPE */
  char adopted[32];   /* that value (second process) */
  char picked[32];    /* OpenBLAS's own pick (first process) */
  char failed[128];   /* why psw's choice was not applied, "" if it was */
} blas_state;

/* ps_gpu_blas_read_cpu: see ps_gpu_blas.h. */
int ps_gpu_blas_read_cpu(ps_gpu_blas_cpu *cpu) {
  memset(cpu, 0, sizeof *cpu);
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d, max = __get_cpuid_max(0, NULL);
  if (max >= 1) {
    __cpuid(1, a, b, c, d);
    cpu->l1_ecx = c;
  }
  if (max >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    cpu->l7_ebx = b;
  }
  if ((unsigned)__get_cpuid_max(0x80000000u, NULL) >= 0x80000001u) {
    __cpuid(0x80000001u, a, b, c, d);
    cpu->ext_ecx = c;
  }
  /* xgetbv is an illegal instruction unless the OS set CR4.OSXSAVE. */
  if (cpu->l1_ecx & L1_OSXSAVE) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    cpu->xcr0 = (uint64_t)hi << 32 | lo;
  }
  return 0;
#else
  return PS_ENOTSUP;
#endif
}

/* has: every bit of WANT is set in HAVE. */
static int has(uint64_t have, uint64_t want) { return (have & want) == want; }

/* ps_gpu_blas_cpu_isa: see ps_gpu_blas.h. */
ps_gpu_blas_isa ps_gpu_blas_cpu_isa(const ps_gpu_blas_cpu *cpu) {
  if (!has(cpu->l1_ecx, AVX_L1) || !has(cpu->xcr0, XCR0_YMM)) return PS_GPU_BLAS_ISA_SSE;
  if (!has(cpu->l1_ecx, AVX2_L1) || !has(cpu->l7_ebx, AVX2_L7)) return PS_GPU_BLAS_ISA_AVX;
  if (!has(cpu->l1_ecx, AVX512_L1) || !has(cpu->l7_ebx, AVX512_L7) ||
      !has(cpu->ext_ecx, AVX512_EXT) || !has(cpu->xcr0, XCR0_ZMM))
    return PS_GPU_BLAS_ISA_AVX2;
  return PS_GPU_BLAS_ISA_AVX512;
}

/* ps_gpu_blas_core_isa: see ps_gpu_blas.h. */
ps_gpu_blas_isa ps_gpu_blas_core_isa(const char *name) {
  for (size_t i = 0; name && i < sizeof blas_cores / sizeof blas_cores[0]; i++)
    if (!strcasecmp(name, blas_cores[i].name)) return blas_cores[i].isa;
  return PS_GPU_BLAS_ISA_UNKNOWN;
}

/* ps_gpu_blas_choose: see ps_gpu_blas.h.  The rules, in order: the
 * user's variable; a library that cannot switch; a core psw does not
 * know; a CPU without AVX2; a core already at the AVX2 level or above
 * (invariant 3); otherwise the best core the CPU runs (invariant 4). */
int ps_gpu_blas_choose(const ps_gpu_blas_in *in, ps_gpu_blas_choice *out) {
  if (!in || !out) return PS_EINVAL;
  ps_gpu_blas_isa core = ps_gpu_blas_core_isa(in->core), cpu = ps_gpu_blas_cpu_isa(&in->cpu);
  *out = (ps_gpu_blas_choice){NULL, NULL};
  if (in->env)
    out->why = "OPENBLAS_CORETYPE is set: the user's choice stands";
  else if (!in->dynamic_arch)
    out->why = "OpenBLAS is not a DYNAMIC_ARCH build: its kernel is fixed when it is built";
  else if (core == PS_GPU_BLAS_ISA_UNKNOWN)
    out->why = "psw does not know OpenBLAS's core: its choice stands";
  else if (cpu < PS_GPU_BLAS_ISA_AVX2)
    out->why = "the CPU or the OS offers neither AVX2 nor AVX-512: OpenBLAS's choice stands";
  else if (core >= cpu)
    out->why = "OpenBLAS's core already uses the best instructions the CPU has";
  else if (core >= PS_GPU_BLAS_ISA_AVX2)
    out->why = "OpenBLAS chose an AVX2 core for a CPU with AVX-512: a deliberate choice, kept";
  else if (cpu == PS_GPU_BLAS_ISA_AVX512) {
    out->kernel = "SkylakeX";
    out->why = "OpenBLAS picked a generic core for a CPU with AVX-512";
  } else {
    out->kernel = "Haswell";
    out->why = "OpenBLAS picked a generic core for a CPU with AVX2";
  }
  return 0;
}

/* ps_gpu_blas_reexec: see ps_gpu_blas_int.h. */
int ps_gpu_blas_reexec(const char *exe, char *const argv[], const char *kernel,
                       const char *picked, ps_errbuf *eb) {
  int e = 0;
  if (setenv(ENV_CORETYPE, kernel, 1) < 0 || setenv(PS_GPU_BLAS_GUARD, picked, 1) < 0 ||
      ps_proc_exec_env(1) < 0) /* a closed stdout stays one (psw --help >&-: exit 1) */
    e = errno;
  else if (execv(exe, argv) < 0)
    e = errno;
  if (!e) e = EINVAL;
  unsetenv(ENV_CORETYPE);
  unsetenv(PS_GPU_BLAS_GUARD);
  ps_proc_exec_env(0);
  int err = ps_errf(eb, ps_err_from_errno(e),
                    "cannot execute '%s' again with " ENV_CORETYPE "=%s: %s", exe, kernel,
                    strerror(e));
  errno = e;
  return err;
}

/* blas_adopt records, in the second process, the kernel the first one
 * forced and the core OpenBLAS had picked there (GUARD's value), and
 * removes both variables from the environment (invariant 5); 0. */
static int blas_adopt(const char *guard) {
  const char *env = getenv(ENV_CORETYPE);
  if (env && *env) {
    snprintf(blas_state.adopted, sizeof blas_state.adopted, "%s", env);
    snprintf(blas_state.picked, sizeof blas_state.picked, "%s", guard);
    blas_state.kernel = blas_state.adopted;
    blas_state.forced = 1;
  }
  unsetenv(ENV_CORETYPE);
  unsetenv(PS_GPU_BLAS_GUARD);
  return 0;
}

/* ps_gpu_blas_select: see ps_gpu_blas.h. */
int ps_gpu_blas_select(char **argv, ps_errbuf *eb) {
  const char *guard = getenv(PS_GPU_BLAS_GUARD);
  if (guard) return blas_adopt(guard);
  ps_gpu_blas_in in = {.core = openblas_get_corename(),
                       .dynamic_arch = strstr(openblas_get_config(), "DYNAMIC_ARCH") != NULL,
                       .env = getenv(ENV_CORETYPE)};
  ps_gpu_blas_choice c;
  if (ps_gpu_blas_read_cpu(&in.cpu) < 0 || ps_gpu_blas_choose(&in, &c) < 0 || !c.kernel) return 0;
  blas_state.kernel = c.kernel;
  snprintf(blas_state.picked, sizeof blas_state.picked, "%s", in.core);
  if (!argv || !argv[0]) {
    snprintf(blas_state.failed, sizeof blas_state.failed, "no argv to execute again");
    return ps_errf(eb, PS_EINVAL, "cannot execute the program again: no argv");
  }
  int err = ps_gpu_blas_reexec("/proc/self/exe", argv, c.kernel, in.core, eb);
  snprintf(blas_state.failed, sizeof blas_state.failed, "re-execution failed: %s", strerror(errno));
  return err;
}

/* ps_gpu_blas_kernel: see ps_gpu_blas.h. */
const char *ps_gpu_blas_kernel(void) { return blas_state.kernel; }

/* blas_word copies S into BUF (CAP bytes) with any byte outside
 * [A-Za-z0-9_.+-] as '?': the description travels to the shards, which
 * refuse control characters and bad UTF-8.  Returns BUF. */
static const char *blas_word(char *buf, size_t cap, const char *s) {
  size_t i = 0;
  for (; s && s[i] && i + 1 < cap; i++) {
    char ch = s[i];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             strchr("_.+-", ch);
    buf[i] = ok ? ch : '?';
  }
  buf[i] = 0;
  return buf;
}

/* ps_gpu_blas_describe: see ps_gpu_blas.h. */
const char *ps_gpu_blas_describe(char *buf, size_t cap) {
  char core[32], env[32], picked[32];
  blas_word(core, sizeof core, openblas_get_corename());
  blas_word(picked, sizeof picked, blas_state.picked);
  const char *user = getenv(ENV_CORETYPE);
  if (blas_state.forced && !strcasecmp(core, blas_state.adopted))
    snprintf(buf, cap, "kernel %s (chosen by psw: OpenBLAS picked %s on this CPU)", core, picked);
  else if (blas_state.forced)
    snprintf(buf, cap, "kernel %s (OpenBLAS's choice: it did not take psw's %s)", core,
             blas_word(env, sizeof env, blas_state.adopted));
  else if (blas_state.kernel)
    snprintf(buf, cap, "kernel %s (OpenBLAS's choice; psw's %s not applied: %s)", core,
             blas_state.kernel, blas_state.failed);
  else if (user)
    snprintf(buf, cap, "kernel %s (" ENV_CORETYPE "=%s)", core, blas_word(env, sizeof env, user));
  else
    snprintf(buf, cap, "kernel %s (OpenBLAS's choice)", core);
  return buf;
}

/* ps_gpu_blas_short_spin: see ps_gpu_blas.h (invariant 6). */
int ps_gpu_blas_short_spin(void) {
  if (getenv(ENV_TIMEOUT)) return 0; /* the user's choice stands */
  void (*read_env)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "openblas_read_env");
  int (*shutdown)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
  if (!read_env || !shutdown) return 0;
  char v[8];
  snprintf(v, sizeof v, "%d", PS_GPU_BLAS_SPIN_LOG2);
  if (setenv(ENV_TIMEOUT, v, 1) < 0) return 0;
  read_env();
  unsetenv(ENV_TIMEOUT);
  shutdown();
  return 1;
}
