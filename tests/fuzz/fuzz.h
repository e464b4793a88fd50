/* fuzz.h: helpers shared by the libFuzzer targets in tests/fuzz.
 *
 * Each target is one fuzz_NAME.c with one LLVMFuzzerTestOneInput, built
 * by `make fuzz` (Makefile, scripts/fuzz) with clang's
 * -fsanitize=fuzzer,address,undefined; its seed corpus is
 * tests/fuzz/corpus/NAME (tests/fuzz/gen_corpus writes it).  A target
 * aborts (fuzz_check) where the code broke a documented promise, so
 * libFuzzer keeps the input as a crash. */
#ifndef PS_FUZZ_H
#define PS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ps.pb-c.h"
#include "ps_error.h"

/* fuzz_check aborts with MSG when COND is false: a broken promise of the
 * code under test (not an error it reported properly). */
#define fuzz_check(cond, ...)                                                \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: check '%s' failed: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                          \
      fputc('\n', stderr);                                                   \
      abort();                                                               \
    }                                                                        \
  } while (0)

/* fuzz_check_error checks the promise every loader makes on failure: a
 * negative PS_E* code with a message. */
#define fuzz_check_error(rc, eb)                                             \
  fuzz_check((rc) < 0 && strcmp(ps_errname(rc), "PS_E?") != 0 && (eb).msg[0], \
             "rc %d, message '%s'", (rc), (eb).msg)

/* fuzz_note prints what a loader said about the input when FUZZ_DEBUG
 * is set (to see which seeds load: FUZZ_DEBUG=1 build/bin-fuzz/fuzz_NAME
 * tests/fuzz/corpus/NAME/ *). */
static inline void fuzz_note(const char *what, int rc, const ps_errbuf *eb) {
  static int debug = -1;
  if (debug < 0) debug = getenv("FUZZ_DEBUG") != NULL;
  if (debug) fprintf(stderr, "fuzz: %s: %s%s%s\n", what, ps_errname(rc), rc < 0 ? ": " : "",
                     rc < 0 ? eb->msg : "");
}

/* fuzz_touch reads N floats at P (so that ASan sees every one of them),
 * into a sink the compiler cannot drop. */
static volatile float fuzz_sink;
static inline void fuzz_touch(const float *p, uint64_t n) {
  float s = 0;
  for (uint64_t i = 0; i < n; i++) s += p[i];
  fuzz_sink = s;
}

/* A file in memory for readers that take a path: one memfd per slot,
 * made once per process and rewritten for every input, named by
 * /proc/self/fd/N (opening that path starts at offset 0). */
typedef struct fuzz_file {
  int fd;
  char path[64];
} fuzz_file;

/* fuzz_file_set makes F hold LEN bytes at DATA (F zeroed at first use:
 * a static fuzz_file).  Aborts when memfd fails (the environment, not the
 * code under test). */
static inline void fuzz_file_set(fuzz_file *f, const void *data, size_t len) {
  if (f->fd <= 0) {
    f->fd = memfd_create("fuzz", MFD_CLOEXEC);
    fuzz_check(f->fd > 0, "memfd_create failed");
    snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
  }
  fuzz_check(ftruncate(f->fd, 0) == 0, "ftruncate failed");
  size_t off = 0;
  while (off < len) {
    ssize_t w = pwrite(f->fd, (const char *)data + off, len - off, (off_t)off);
    fuzz_check(w > 0, "pwrite failed");
    off += (size_t)w;
  }
}

/* fuzz_spec_small says whether SPEC's layout stays within MAX_ELEMS
 * elements and MAX_CHUNKS chunks (CHUNK_ELEMS when the spec has none).
 * Nothing bounds a model's size before ps_layout_build allocates its
 * chunk table (limits.max_shard_bytes is parsed but not yet enforced at
 * submit), so a 50-byte spec may ask for 100 GB: the targets skip such
 * specs rather than report an out-of-memory on every run. */
static inline int fuzz_spec_small(const Ps__ModelSpec *spec, uint32_t chunk_elems,
                                  uint64_t max_elems, uint64_t max_chunks) {
  if (!spec) return 1;
  uint64_t ce = spec->chunk_elems ? spec->chunk_elems : chunk_elems, elems = 0, chunks = 0;
  if (!ce) return 1; /* refused before any allocation */
  for (size_t t = 0; t < spec->n_tensors; t++) {
    uint64_t n = 1;
    for (size_t d = 0; d < spec->tensors[t]->n_shape; d++) {
      n *= spec->tensors[t]->shape[d] ? spec->tensors[t]->shape[d] : 1;
      if (n > max_elems) return 0;
    }
    elems += n;
    chunks += (n + ce - 1) / ce;
    if (elems > max_elems || chunks > max_chunks) return 0;
  }
  return 1;
}

#endif
