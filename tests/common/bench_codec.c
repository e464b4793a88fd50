/* ps_bench_codec: the CPU cost of each codec (scripts/bench_compression):
 * nanoseconds per element of a worker's encode with error feedback and a
 * shard's decode, on chunks of 65,536 elements (the bench cluster's
 * chunk_elems), topk keeping 1 %.  Median of 5 rounds of 200 chunks.
 * The gradient is pseudo-random, normal-like (the sum of 4 uniforms),
 * with 1 % of its elements 10 times larger (a heavy tail); only topk's
 * cost depends on the values.  topk is measured twice: with the sampled
 * threshold (the codec as workers run it) and with the exact radix select
 * over the whole chunk, both with error feedback, and the paths the
 * sampled one took over all its chunks are counted.
 *
 *   ps_bench_codec [--elems N]   N: elements per chunk, 1..67108864 (the
 *                                range of chunk_elems; default 65536)
 *
 * A bad flag or value: a message naming it and the usage on stderr, exit
 * status 2; --help: the usage on stdout, status 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_codec.h"
#include "ps_config.h"
#include "ps_place.h"

#define ROUNDS 5
#define REPS 200
#define MAX_ELEMS 67108864 /* chunk_elems's largest (README, Configuration) */

static const char usage[] = "usage: ps_bench_codec [--elems N]   (N: elements per chunk, 1.."
                            "67108864, default 65536)\n";

static double bench_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int bench_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double bench_median(double *v) {
  qsort(v, ROUNDS, sizeof v[0], bench_cmp);
  return v[ROUNDS / 2];
}

/* bench_topk_ef: ps_codec_encode_ef for topk with the selection asked:
 * RES += G, encode RES, RES -= the decoding; counts the path in PATHS. */
static void bench_topk_ef(const float *g, uint32_t n, int exact, float *res, uint8_t *buf,
                          unsigned *paths) {
  for (uint32_t i = 0; i < n; i++) res[i] += g[i];
  paths[ps_codec_topk_encode(res, n, 0.01f, exact, buf)]++;
  ps_codec_decode_acc(PS_CODEC_TOPK, buf, n, 0.01f, -1.0f, res);
}

int main(int argc, char **argv) {
  uint32_t n = 65536;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    uint64_t v = 0;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(usage, stdout);
      return 0;
    }
    if (strcmp(a, "--elems")) {
      fprintf(stderr, "ps_bench_codec: unknown argument '%s'\n%s", a, usage);
      return 2;
    }
    if (i + 1 == argc) {
      fprintf(stderr, "ps_bench_codec: --elems wants a value\n%s", usage);
      return 2;
    }
    /* the flags' integer parser: no sign, no blank, no wrap-around */
    if (ps_parse_uint(argv[++i], &v) < 0 || v < 1 || v > MAX_ELEMS) {
      fprintf(stderr, "ps_bench_codec: bad value '%s' for --elems (an integer from 1 to %d)\n%s",
              argv[i], MAX_ELEMS, usage);
      return 2;
    }
    n = (uint32_t)v;
  }
  float *g = malloc(n * sizeof *g), *res = calloc(n, sizeof *res), *out = malloc(n * sizeof *out);
  uint8_t *buf = malloc((size_t)n * 8);
  if (!g || !res || !out || !buf) {
    fprintf(stderr, "ps_bench_codec: out of memory for %u-element chunks\n", n);
    return 1;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint64_t r = ps_mix64(i);
    float v = -2.0f;
    for (int k = 0; k < 4; k++) v += (float)((r >> (16 * k)) & 0xffff) / 65536.0f;
    g[i] = (ps_mix64(r) % 100 == 0 ? 10.0f : 1.0f) * v * 1e-3f;
  }
  printf("%-11s %18s %14s   (ns per element, %u-element chunks, median of %d)\n", "codec",
         "encode+feedback", "decode", n, ROUNDS);
  unsigned paths[2][PS_TOPK_EXACT + 1] = {{0}};
  for (int row = 0; row <= PS_CODEC_N; row++) {
    int id = row < PS_CODEC_N ? row : PS_CODEC_TOPK, exact = row == PS_CODEC_N;
    double enc[ROUNDS], dec[ROUNDS];
    memset(res, 0, n * sizeof *res);
    for (int k = 0; k < ROUNDS; k++) {
      double t0 = bench_now();
      for (int r = 0; r < REPS; r++) {
        if (id == PS_CODEC_TOPK) bench_topk_ef(g, n, exact, res, buf, paths[exact]);
        else ps_codec_encode_ef(id, g, n, 0.01f, 0, res, buf);
      }
      double t1 = bench_now();
      for (int r = 0; r < REPS; r++) ps_codec_decode(id, buf, n, 0.01f, out);
      double t2 = bench_now();
      enc[k] = (t1 - t0) / REPS / n * 1e9;
      dec[k] = (t2 - t1) / REPS / n * 1e9;
    }
    printf("%-11s %18.2f %14.2f\n", exact ? "topk-exact" : ps_codec_name(id), bench_median(enc),
           bench_median(dec));
  }
  printf("topk's paths over %d chunks: sampled %u, small %u, under k %u, over 2k %u\n",
         ROUNDS * REPS, paths[0][PS_TOPK_SAMPLED], paths[0][PS_TOPK_SMALL],
         paths[0][PS_TOPK_UNDER], paths[0][PS_TOPK_OVER]);
  free(g), free(res), free(out), free(buf);
  return 0;
}
