/* Tests for ps_gpu_blas: the choice of OpenBLAS kernel against a table of
 * CPUs (cpuid words written from the Intel SDM, independently of the
 * code's own constants), the promise never to pick a kernel the CPU
 * cannot run (checked on the table and on random cpuid words), this
 * machine's cpuid decoding against the kernel's /proc/cpuinfo flags, and
 * the two halves of the re-execution: the exec itself (into env(1), and
 * into a path that fails) and the second process taking psw's choice over.
 * psw's own re-execution runs end to end in tests/integration/test_train.c. */
#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ps_gpu_blas.h"
#include "ps_gpu_blas_int.h"
#include "ps_proc.h"
#include "ps_test.h"

/* CPUID.1:ECX (Intel SDM vol. 2A, CPUID, table "feature information"). */
#define C_SSE3 (1u << 0)
#define C_SSSE3 (1u << 9)
#define C_FMA (1u << 12)
#define C_SSE41 (1u << 19)
#define C_SSE42 (1u << 20)
#define C_MOVBE (1u << 22)
#define C_POPCNT (1u << 23)
#define C_XSAVE (1u << 26)
#define C_OSXSAVE (1u << 27)
#define C_AVX (1u << 28)
#define C_F16C (1u << 29)
/* CPUID.(EAX=7,ECX=0):EBX */
#define S_BMI1 (1u << 3)
#define S_AVX2 (1u << 5)
#define S_BMI2 (1u << 8)
#define S_ERMS (1u << 9)
#define S_AVX512F (1u << 16)
#define S_AVX512DQ (1u << 17)
#define S_ADX (1u << 19)
#define S_AVX512IFMA (1u << 21)
#define S_AVX512PF (1u << 26)
#define S_AVX512ER (1u << 27)
#define S_AVX512CD (1u << 28)
#define S_AVX512BW (1u << 30)
#define S_AVX512VL (1u << 31)
/* CPUID.80000001h:ECX */
#define E_LZCNT (1u << 5)
/* XCR0 (SDM vol. 1, 13.1): x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM,
 * and the AMX tile state of newer Xeons. */
#define X_SSE_AVX 0x7u
#define X_AVX512 0xe7u
#define X_AMX 0x60000u

/* Families of CPUs, as their cpuid words read. */
static const ps_gpu_blas_cpu CPU_SSE = {   /* Nehalem: SSE4.2, no XSAVE */
    C_SSE3 | C_SSSE3 | C_SSE41 | C_SSE42 | C_POPCNT, 0, 0, 0};
static const ps_gpu_blas_cpu CPU_AVX = {   /* Sandy Bridge */
    C_SSE3 | C_SSSE3 | C_SSE41 | C_SSE42 | C_POPCNT | C_XSAVE | C_OSXSAVE | C_AVX, 0, 0,
    X_SSE_AVX};
#define HSW_C (C_SSE3 | C_SSSE3 | C_SSE41 | C_SSE42 | C_POPCNT | C_XSAVE | C_OSXSAVE | C_AVX | \
               C_FMA | C_MOVBE | C_F16C)
#define HSW_S (S_BMI1 | S_AVX2 | S_BMI2 | S_ERMS)
#define SKX_S (HSW_S | S_ADX | S_AVX512F | S_AVX512DQ | S_AVX512CD | S_AVX512BW | S_AVX512VL)
static const ps_gpu_blas_cpu CPU_AVX2 = {HSW_C, HSW_S, E_LZCNT, X_SSE_AVX}; /* Haswell */
/* Intel family 6 model 207 (AVX-512 with IFMA, bf16, AMX). */
static const ps_gpu_blas_cpu CPU_207 = {HSW_C, SKX_S | S_AVX512IFMA, E_LZCNT,
                                        X_AVX512 | X_AMX};

/* One row: OpenBLAS's core (and the rest of the input) -> the kernel. */
typedef struct blas_row {
  const char *what;
  ps_gpu_blas_cpu cpu;
  const char *core, *env;
  int fixed;          /* 1: not a DYNAMIC_ARCH library */
  const char *expect; /* NULL: keep OpenBLAS's choice */
} blas_row;

static ps_gpu_blas_cpu with(ps_gpu_blas_cpu c, uint32_t drop_l1, uint32_t drop_l7,
                            uint32_t drop_ext, uint64_t xcr0) {
  c.l1_ecx &= ~drop_l1;
  c.l7_ebx &= ~drop_l7;
  c.ext_ecx &= ~drop_ext;
  if (xcr0 != ~0ull) c.xcr0 = xcr0;
  return c;
}
#define KEEP_X (~0ull)

/* blas_rows fills ROWS (at least 48) and returns how many. */
static size_t blas_rows(blas_row *r) {
  size_t n = 0;
#define ROW(w, c, core, env, fixed, exp) r[n++] = (blas_row){w, c, core, env, fixed, exp}
  /* The machine: 0.3.21 falls back to Prescott. */
  ROW("207, Prescott", CPU_207, "Prescott", NULL, 0, "SkylakeX");
  ROW("207, prescott (any case)", CPU_207, "prescott", NULL, 0, "SkylakeX");
  ROW("207, Core2", CPU_207, "Core2", NULL, 0, "SkylakeX");
  ROW("207, Nehalem", CPU_207, "Nehalem", NULL, 0, "SkylakeX");
  ROW("207, Unknown", CPU_207, "Unknown", NULL, 0, "SkylakeX");
  ROW("207, Sandybridge", CPU_207, "Sandybridge", NULL, 0, "SkylakeX");
  /* The same CPU when the OS does not save zmm state. */
  ROW("207, OS without zmm state", with(CPU_207, 0, 0, 0, X_SSE_AVX), "Prescott", NULL, 0,
      "Haswell");
  ROW("207, OS with opmask only", with(CPU_207, 0, 0, 0, X_SSE_AVX | 0x20), "Prescott", NULL,
      0, "Haswell");
  ROW("207, OS without Hi16_ZMM", with(CPU_207, 0, 0, 0, 0x67), "Prescott", NULL, 0,
      "Haswell");
  /* Without one of the extensions -march=skylake-avx512 may use. */
  ROW("AVX-512 without VL", with(CPU_207, 0, S_AVX512VL, 0, KEEP_X), "Prescott", NULL, 0,
      "Haswell");
  ROW("AVX-512 without BW", with(CPU_207, 0, S_AVX512BW, 0, KEEP_X), "Prescott", NULL, 0,
      "Haswell");
  ROW("AVX-512 without DQ", with(CPU_207, 0, S_AVX512DQ, 0, KEEP_X), "Prescott", NULL, 0,
      "Haswell");
  ROW("AVX-512 without CD", with(CPU_207, 0, S_AVX512CD, 0, KEEP_X), "Prescott", NULL, 0,
      "Haswell");
  ROW("AVX-512 without BMI2", with(CPU_207, 0, S_BMI2, 0, KEEP_X), "Prescott", NULL, 0,
      "Haswell");
  ROW("AVX-512 without LZCNT", with(CPU_207, 0, 0, E_LZCNT, KEEP_X), "Prescott", NULL, 0,
      "Haswell");
  ROW("AVX-512 without F16C", with(CPU_207, C_F16C, 0, 0, KEEP_X), "Prescott", NULL, 0,
      "Haswell");
  ROW("Knights Landing (F CD ER PF)",
      ((ps_gpu_blas_cpu){HSW_C, HSW_S | S_AVX512F | S_AVX512CD | S_AVX512ER | S_AVX512PF,
                         E_LZCNT, X_AVX512}),
      "Prescott", NULL, 0, "Haswell");
  /* AVX2 + FMA only. */
  ROW("AVX2, Prescott", CPU_AVX2, "Prescott", NULL, 0, "Haswell");
  ROW("AVX2, Core2", CPU_AVX2, "Core2", NULL, 0, "Haswell");
  ROW("AVX2, Sandybridge", CPU_AVX2, "Sandybridge", NULL, 0, "Haswell");
  ROW("AVX2, Bulldozer", CPU_AVX2, "Bulldozer", NULL, 0, "Haswell");
  ROW("AVX2 without FMA", with(CPU_AVX2, C_FMA, 0, 0, KEEP_X), "Prescott", NULL, 0, NULL);
  ROW("AVX2 without OSXSAVE", with(CPU_AVX2, C_OSXSAVE, 0, 0, 0), "Prescott", NULL, 0, NULL);
  ROW("AVX2, OS without ymm state", with(CPU_AVX2, 0, 0, 0, 0x3), "Prescott", NULL, 0, NULL);
  ROW("AVX2 flags, no AVX flag", with(CPU_AVX2, C_AVX, 0, 0, KEEP_X), "Prescott", NULL, 0, NULL);
  /* AVX only and SSE only keep the default. */
  ROW("AVX only, Prescott", CPU_AVX, "Prescott", NULL, 0, NULL);
  ROW("AVX only, Nehalem", CPU_AVX, "Nehalem", NULL, 0, NULL);
  ROW("SSE only, Prescott", CPU_SSE, "Prescott", NULL, 0, NULL);
  ROW("no cpuid at all", ((ps_gpu_blas_cpu){0, 0, 0, 0}), "Prescott", NULL, 0, NULL);
  /* OpenBLAS already on an AVX2 or AVX-512 core. */
  ROW("AVX2, Haswell", CPU_AVX2, "Haswell", NULL, 0, NULL);
  ROW("AVX2, Zen", CPU_AVX2, "Zen", NULL, 0, NULL);
  ROW("207, SkylakeX", CPU_207, "SkylakeX", NULL, 0, NULL);
  ROW("207, Cooperlake", CPU_207, "Cooperlake", NULL, 0, NULL);
  ROW("207, SapphireRapids", CPU_207, "SapphireRapids", NULL, 0, NULL);
  /* An AVX2 core on a CPU with AVX-512: OpenBLAS's deliberate choice,
   * kept (ps_gpu_blas.h, invariant 3). */
  ROW("207, Haswell", CPU_207, "Haswell", NULL, 0, NULL);
  ROW("207, Zen", CPU_207, "Zen", NULL, 0, NULL);
  /* The user's variable always stands, whatever its value. */
  ROW("207, Prescott, user Prescott", CPU_207, "Prescott", "Prescott", 0, NULL);
  ROW("207, Prescott, user empty", CPU_207, "Prescott", "", 0, NULL);
  ROW("AVX2, Prescott, user Haswell", CPU_AVX2, "Haswell", "Haswell", 0, NULL);
  /* A library that cannot switch, or a core psw does not know. */
  ROW("207, fixed Prescott build", CPU_207, "Prescott", NULL, 1, NULL);
  ROW("207, unknown core", CPU_207, "Graniterapids", NULL, 0, NULL);
  ROW("207, no core name", CPU_207, NULL, NULL, 0, NULL);
#undef ROW
  return n;
}

/* can_run says, with the test's own list, whether CPU runs KERNEL's
 * instructions (ps_gpu_blas.h, invariant 1). */
static int can_run(const ps_gpu_blas_cpu *c, const char *kernel) {
  const uint32_t avx2_c = C_OSXSAVE | C_AVX | C_FMA, avx2_s = S_AVX2;
  int avx2 = (c->l1_ecx & avx2_c) == avx2_c && (c->l7_ebx & avx2_s) == avx2_s &&
             (c->xcr0 & 0x6) == 0x6;
  if (!strcmp(kernel, "Haswell")) return avx2;
  const uint32_t skx_c = C_MOVBE | C_POPCNT | C_F16C,
                 skx_s = S_BMI1 | S_BMI2 | S_AVX512F | S_AVX512DQ | S_AVX512CD | S_AVX512BW |
                         S_AVX512VL;
  if (!strcmp(kernel, "SkylakeX"))
    return avx2 && (c->l1_ecx & skx_c) == skx_c && (c->l7_ebx & skx_s) == skx_s &&
           (c->ext_ecx & E_LZCNT) && (c->xcr0 & 0xe6) == 0xe6;
  return 0;
}

START_TEST(test_blas_table) {
  blas_row rows[64];
  size_t n = blas_rows(rows);
  for (size_t i = 0; i < n; i++) {
    const blas_row *r = &rows[i];
    ps_gpu_blas_in in = {.cpu = r->cpu, .core = r->core, .dynamic_arch = !r->fixed, .env = r->env};
    ps_gpu_blas_choice c = {"junk", NULL};
    ck_assert_int_eq(ps_gpu_blas_choose(&in, &c), 0);
    ck_assert_msg(c.why && *c.why, "%s: no reason given", r->what);
    ck_assert_msg(r->expect ? c.kernel && !strcmp(c.kernel, r->expect) : !c.kernel,
                  "%s: chose %s, expected %s (%s)", r->what, c.kernel ? c.kernel : "nothing",
                  r->expect ? r->expect : "nothing", c.why);
    ck_assert_msg(!c.kernel || can_run(&r->cpu, c.kernel), "%s: %s cannot run there", r->what,
                  c.kernel);
    /* Whatever psw forces, OpenBLAS 0.3.21's OPENBLAS_CORETYPE accepts. */
    ck_assert(!c.kernel || !strcmp(c.kernel, "SkylakeX") || !strcmp(c.kernel, "Haswell"));
  }
  ck_assert_int_eq(ps_gpu_blas_choose(NULL, NULL), PS_EINVAL);
}
END_TEST

/* Random cpuid words (each bit set with probability 7/8, so that most
 * draws come close to a full feature set and miss one or two bits) and
 * random cores: never a kernel the CPU cannot run. */
START_TEST(test_blas_never_illegal) {
  static const char *const cores[] = {"Prescott", "Core2", "Nehalem", "Sandybridge", "Atom",
                                      "Haswell",  "Zen",   "SkylakeX", "Barcelona", "Unknown"};
  uint64_t s = ps_test_seed | 1;
  int forced = 0;
  for (int i = 0; i < 200000; i++) {
    uint32_t w[5];
    for (int k = 0; k < 5; k++) {
      uint32_t clear = ~0u;
      for (int j = 0; j < 3; j++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        clear &= (uint32_t)s;
      }
      w[k] = ~clear;
    }
    ps_gpu_blas_in in = {.cpu = {w[0], w[1], w[2], w[3]},
                         .core = cores[w[4] % (sizeof cores / sizeof cores[0])],
                         .dynamic_arch = 1};
    ps_gpu_blas_choice c;
    ck_assert_int_eq(ps_gpu_blas_choose(&in, &c), 0);
    if (!c.kernel) continue;
    forced++;
    ck_assert_msg(can_run(&in.cpu, c.kernel),
                  "%s on l1 %08x l7 %08x ext %08x xcr0 %08x (seed %llu)", c.kernel, w[0], w[1],
                  w[2], w[3], (unsigned long long)ps_test_seed);
  }
  ck_assert_int_gt(forced, 100);
}
END_TEST

/* cpuinfo_flags returns the "flags" line of /proc/cpuinfo padded with
 * spaces (" fma avx ... "), or NULL; the caller frees it. */
static char *cpuinfo_flags(void) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return NULL;
  char *line = NULL, *out = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0)
    if (!strncmp(line, "flags", 5) && strchr(line, ':')) {
      size_t len = strlen(line);
      if ((out = malloc(len + 3))) {
        snprintf(out, len + 3, " %s", strchr(line, ':') + 1);
        out[strcspn(out, "\n")] = ' ';
      }
      break;
    }
  free(line);
  fclose(f);
  return out;
}

/* This machine's cpuid words, decoded by ps_gpu_blas_read_cpu, have every
 * flag the kernel reports; and the level says what the flags say. A flag
 * cpuid has and the kernel does not list is printed, not failed: kernels
 * hide features they distrust (a Zen 5 Firecracker guest on Linux 6.18
 * lists no "abm" though CPUID 0x80000001 ECX bit 5, LZCNT, is set), and
 * the instructions work all the same. */
START_TEST(test_blas_read_this_cpu) {
#if !defined(__x86_64__) && !defined(__i386__)
  PS_SKIP("not an x86 CPU");
#else
  ps_gpu_blas_cpu c;
  ck_assert_int_eq(ps_gpu_blas_read_cpu(&c), 0);
  char *flags = cpuinfo_flags();
  if (!flags) PS_SKIP("no flags line in /proc/cpuinfo");
  static const struct {
    int word; /* 0: l1_ecx, 1: l7_ebx, 2: ext_ecx */
    uint32_t bit;
    const char *flag;
  } map[] = {{0, C_FMA, "fma"},         {0, C_MOVBE, "movbe"},       {0, C_POPCNT, "popcnt"},
             {0, C_AVX, "avx"},         {0, C_F16C, "f16c"},         {1, S_BMI1, "bmi1"},
             {1, S_AVX2, "avx2"},       {1, S_BMI2, "bmi2"},         {1, S_AVX512F, "avx512f"},
             {1, S_AVX512DQ, "avx512dq"}, {1, S_AVX512CD, "avx512cd"}, {1, S_AVX512BW, "avx512bw"},
             {1, S_AVX512VL, "avx512vl"}, {2, E_LZCNT, "abm"}};
  int all = 1;
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
    uint32_t w = map[i].word == 0 ? c.l1_ecx : map[i].word == 1 ? c.l7_ebx : c.ext_ecx;
    char pat[32];
    snprintf(pat, sizeof pat, " %s ", map[i].flag);
    int in_flags = strstr(flags, pat) != NULL, in_cpuid = !!(w & map[i].bit);
    ck_assert_msg(in_cpuid || !in_flags, "cpuid says %s no, /proc/cpuinfo says yes", map[i].flag);
    if (in_cpuid && !in_flags)
      printf("test_blas_read_this_cpu: cpuid has %s, the kernel does not list it\n", map[i].flag);
    all &= in_cpuid;
  }
  ps_gpu_blas_isa isa = ps_gpu_blas_cpu_isa(&c);
  if (isa >= PS_GPU_BLAS_ISA_AVX) ck_assert((c.xcr0 & 0x6) == 0x6);
  if (isa == PS_GPU_BLAS_ISA_AVX512) ck_assert(all && (c.xcr0 & 0xe0) == 0xe0);
  if (all && (c.xcr0 & 0xe6) == 0xe6) ck_assert_int_eq(isa, PS_GPU_BLAS_ISA_AVX512);
  printf("test_blas_read_this_cpu: l1 %08x l7 %08x ext %08x xcr0 %llx: level %d, "
         "OpenBLAS core %s\n",
         c.l1_ecx, c.l7_ebx, c.ext_ecx, (unsigned long long)c.xcr0, (int)isa,
         openblas_get_corename());
  free(flags);
#endif
}
END_TEST

START_TEST(test_blas_core_names) {
  ck_assert_int_eq(ps_gpu_blas_core_isa("Prescott"), PS_GPU_BLAS_ISA_SSE);
  ck_assert_int_eq(ps_gpu_blas_core_isa("SANDYBRIDGE"), PS_GPU_BLAS_ISA_AVX);
  ck_assert_int_eq(ps_gpu_blas_core_isa("zen"), PS_GPU_BLAS_ISA_AVX2);
  ck_assert_int_eq(ps_gpu_blas_core_isa("Cooperlake"), PS_GPU_BLAS_ISA_AVX512);
  ck_assert_int_eq(ps_gpu_blas_core_isa("Haswellish"), PS_GPU_BLAS_ISA_UNKNOWN);
  ck_assert_int_eq(ps_gpu_blas_core_isa(NULL), PS_GPU_BLAS_ISA_UNKNOWN);
  /* The library this build links knows its own name. */
  ck_assert_int_ne(ps_gpu_blas_core_isa(openblas_get_corename()), PS_GPU_BLAS_ISA_UNKNOWN);
}
END_TEST

/* A failed execution comes back with the environment as it was and a
 * message naming the program and the kernel. */
START_TEST(test_blas_reexec_fails) {
  unsetenv("OPENBLAS_CORETYPE");
  unsetenv(PS_GPU_BLAS_GUARD);
  char *argv[] = {"psw", NULL};
  ps_errbuf eb;
  int err = ps_gpu_blas_reexec("/nonexistent/psw", argv, "SkylakeX", "Prescott", &eb);
  ck_assert_int_eq(err, PS_ENOENT);
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_msg(strstr(eb.msg, "'/nonexistent/psw'") &&
                    strstr(eb.msg, "OPENBLAS_CORETYPE=SkylakeX"),
                "%s", eb.msg);
  ck_assert_ptr_null(getenv("OPENBLAS_CORETYPE"));
  ck_assert_ptr_null(getenv(PS_GPU_BLAS_GUARD));
}
END_TEST

/* The second process starts with the kernel and the guard set. */
START_TEST(test_blas_reexec_env) {
  char out[600];
  snprintf(out, sizeof out, "%s/env.txt", ps_test_tmpdir());
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    FILE *f = freopen(out, "w", stdout);
    char *argv[] = {"env", NULL};
    ps_errbuf eb;
    if (f) ps_gpu_blas_reexec("/usr/bin/env", argv, "Haswell", "Core2", &eb);
    _exit(127);
  }
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "env(1) did not run: status %d", st);
  char *text = ps_test_read_file(out, NULL);
  ck_assert_msg(strstr(text, "\nOPENBLAS_CORETYPE=Haswell\n") ||
                    !strncmp(text, "OPENBLAS_CORETYPE=Haswell\n", 26),
                "%s", text);
  ck_assert_msg(strstr(text, "PS_GPU_BLAS_REEXEC=Core2\n") != NULL, "%s", text);
  free(text);
}
END_TEST

/* A stdout closed when the first process started is handed to the
 * second, which finds /dev/null there (ps_proc_start gave it): psw
 * --help >&- exited 0 on a CPU where psw executes itself again. */
START_TEST(test_blas_reexec_stdout_closed) {
  char out[600], cmd[800];
  snprintf(out, sizeof out, "%s/closed.txt", ps_test_tmpdir());
  snprintf(cmd, sizeof cmd, "echo \"closed=$PS_PROC_STDOUT_CLOSED\" > '%s'", out);
  for (int closed = 0; closed < 2; closed++) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      if (closed) close(STDOUT_FILENO);
      ps_proc_start();
      char *argv[] = {"sh", "-c", cmd, NULL};
      ps_errbuf eb;
      ps_gpu_blas_reexec("/bin/sh", argv, "Haswell", "Core2", &eb);
      _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "sh did not run: status %d", st);
    char *text = ps_test_read_file(out, NULL);
    ck_assert_str_eq(text, closed ? "closed=1\n" : "closed=\n");
    free(text);
  }
}
END_TEST

/* In the second process ps_gpu_blas_select executes nothing, keeps psw's
 * kernel for --blas-kernel and the description, and clears both
 * variables for the programs it may start. */
START_TEST(test_blas_second_process) {
  const char *core = openblas_get_corename();
  char buf[160], want[160];
  setenv("OPENBLAS_CORETYPE", core, 1);
  setenv(PS_GPU_BLAS_GUARD, "Prescott", 1);
  char *argv[] = {"/nonexistent/psw", NULL};
  ps_errbuf eb;
  ck_assert_int_eq(ps_gpu_blas_select(argv, &eb), 0);
  ck_assert_ptr_null(getenv("OPENBLAS_CORETYPE"));
  ck_assert_ptr_null(getenv(PS_GPU_BLAS_GUARD));
  ck_assert_str_eq(ps_gpu_blas_kernel(), core);
  snprintf(want, sizeof want, "kernel %s (chosen by psw: OpenBLAS picked Prescott on this CPU)",
           core);
  ck_assert_str_eq(ps_gpu_blas_describe(buf, sizeof buf), want);
}
END_TEST

/* A kernel OpenBLAS did not take is not claimed as psw's. */
START_TEST(test_blas_second_process_not_taken) {
  setenv("OPENBLAS_CORETYPE", "NoSuchCore", 1);
  setenv(PS_GPU_BLAS_GUARD, "Prescott", 1);
  char *argv[] = {"psw", NULL}, buf[160], want[160];
  ps_errbuf eb;
  ck_assert_int_eq(ps_gpu_blas_select(argv, &eb), 0);
  snprintf(want, sizeof want, "kernel %s (OpenBLAS's choice: it did not take psw's NoSuchCore)",
           openblas_get_corename());
  ck_assert_str_eq(ps_gpu_blas_describe(buf, sizeof buf), want);
}
END_TEST

/* Without psw's choice: the user's variable (shown safely: it travels to
 * the shards), or OpenBLAS's own choice. */
START_TEST(test_blas_describe_user) {
  char buf[160], want[160];
  const char *core = openblas_get_corename();
  unsetenv(PS_GPU_BLAS_GUARD);
  unsetenv("OPENBLAS_CORETYPE");
  snprintf(want, sizeof want, "kernel %s (OpenBLAS's choice)", core);
  ck_assert_str_eq(ps_gpu_blas_describe(buf, sizeof buf), want);
  setenv("OPENBLAS_CORETYPE", "Sky\x01lake \xc3\xa9X", 1);
  snprintf(want, sizeof want, "kernel %s (OPENBLAS_CORETYPE=Sky?lake???X)", core);
  ck_assert_str_eq(ps_gpu_blas_describe(buf, sizeof buf), want);
  /* The user's variable stands: select executes nothing, forces nothing. */
  char *argv[] = {"/nonexistent/psw", NULL};
  ps_errbuf eb;
  ck_assert_int_eq(ps_gpu_blas_select(argv, &eb), 0);
  ck_assert_ptr_null(ps_gpu_blas_kernel());
  ck_assert_str_eq(getenv("OPENBLAS_CORETYPE"), "Sky\x01lake \xc3\xa9X");
  /* Truncation keeps the buffer a string. */
  ck_assert_uint_eq(strlen(ps_gpu_blas_describe(buf, 8)), 7);
}
END_TEST

Suite *ps_gpu_blas_suite(void) {
  Suite *s = suite_create("ps_gpu_blas");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, ps_test_rng_init, NULL);
  tcase_add_test(tc, test_blas_table);
  tcase_add_test(tc, test_blas_never_illegal);
  tcase_add_test(tc, test_blas_read_this_cpu);
  tcase_add_test(tc, test_blas_core_names);
  tcase_add_test(tc, test_blas_reexec_fails);
  tcase_add_test(tc, test_blas_reexec_env);
  tcase_add_test(tc, test_blas_reexec_stdout_closed);
  tcase_add_test(tc, test_blas_second_process);
  tcase_add_test(tc, test_blas_second_process_not_taken);
  tcase_add_test(tc, test_blas_describe_user);
  suite_add_tcase(s, tc);
  return s;
}
