/* ps_bench_codec: the CPU cost of each codec (scripts/bench_compression):
 * nanoseconds per element of a worker's encode with error feedback and a
 * shard's decode, on chunks of 65,536 elements (the bench cluster's
 * chunk_elems), topk keeping 1 %.  Median of 5 rounds of 200 chunks.
 *
 *   ps_bench_codec [--elems N]   N: elements per chunk (default 65536) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_codec.h"

static double bench_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int bench_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  uint32_t n = 65536;
  if (argc == 3 && !strcmp(argv[1], "--elems")) n = (uint32_t)strtoul(argv[2], NULL, 10);
  else if (argc != 1) {
    fprintf(stderr, "usage: ps_bench_codec [--elems N]\n");
    return 2;
  }
  if (n == 0) return 2;
  float *g = malloc(n * sizeof *g), *res = calloc(n, sizeof *res), *out = malloc(n * sizeof *out);
  uint8_t *buf = malloc((size_t)n * 4);
  if (!g || !res || !out || !buf) return 1;
  for (uint32_t i = 0; i < n; i++) g[i] = (float)((i * 7919u) % 1000u) / 1000.0f - 0.5f;
  printf("%-7s %18s %14s   (ns per element, %u-element chunks, median of 5)\n", "codec",
         "encode+feedback", "decode", n);
  for (int id = 0; id < PS_CODEC_N; id++) {
    double enc[5], dec[5];
    for (int k = 0; k < 5; k++) {
      double t0 = bench_now();
      for (int r = 0; r < 200; r++) ps_codec_encode_ef(id, g, n, 0.01f, res, buf);
      double t1 = bench_now();
      for (int r = 0; r < 200; r++) ps_codec_decode(id, buf, n, 0.01f, out);
      double t2 = bench_now();
      enc[k] = (t1 - t0) / 200 / n * 1e9;
      dec[k] = (t2 - t1) / 200 / n * 1e9;
    }
    qsort(enc, 5, sizeof enc[0], bench_cmp);
    qsort(dec, 5, sizeof dec[0], bench_cmp);
    printf("%-7s %18.2f %14.2f\n", ps_codec_name(id), enc[2], dec[2]);
  }
  free(g), free(res), free(out), free(buf);
  return 0;
}
