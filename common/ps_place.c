/* ps_place: rendezvous placement and counter-based initial values. */
#include "ps_place.h"

#include <math.h>
#include <string.h>

#include "ps_error.h"

#define PS_GOLDEN64 0x9e3779b97f4a7c15ULL /* splitmix64's increment */

uint64_t ps_mix64(uint64_t x) {
  x += PS_GOLDEN64;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t ps_splitmix64(uint64_t *state) {
  uint64_t r = ps_mix64(*state);
  *state += PS_GOLDEN64;
  return r;
}

uint64_t ps_hash64(const void *data, size_t len, uint64_t seed) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL ^ seed;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return ps_mix64(h);
}

size_t ps_place_chunk(const char *model, uint32_t tensor, uint32_t index,
                      const uint32_t *shard_ids, size_t nshards) {
  uint64_t key = ps_hash64(model, strlen(model), 0);
  key = ps_mix64(key ^ ((uint64_t)tensor << 32 | index));
  size_t best = 0;
  uint64_t best_score = 0;
  for (size_t i = 0; i < nshards; i++) {
    uint64_t score = ps_mix64(key ^ ps_mix64(0x5ca1ab1eULL + shard_ids[i]));
    if (i == 0 || score > best_score) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

/* A uniform double in [0, 1) from (seed, tensor, element, stream). */
static double init_u01(uint64_t seed, uint32_t tensor, uint64_t elem, uint64_t stream) {
  uint64_t h = ps_mix64(seed ^ ps_mix64(((uint64_t)tensor << 1 | stream) ^ ps_mix64(elem)));
  return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

int ps_init_known(const char *kind) {
  static const char *const kinds[] = {"zeros", "ones", "uniform", "normal", "glorot"};
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    if (strcmp(kind, kinds[i]) == 0) return 1;
  return 0;
}

int ps_init_fill(float *dst, const char *kind, float scale, uint64_t seed,
                 uint32_t tensor, uint64_t first, uint64_t n,
                 uint64_t fan_in, uint64_t fan_out) {
  if (strcmp(kind, "zeros") == 0 || strcmp(kind, "ones") == 0) {
    float v = kind[0] == 'o' ? 1.0f : 0.0f;
    for (uint64_t i = 0; i < n; i++) dst[i] = v;
    return 0;
  }
  double a;
  if (strcmp(kind, "uniform") == 0) {
    a = scale;
  } else if (strcmp(kind, "glorot") == 0) {
    double fans = (double)(fan_in + (fan_out ? fan_out : 1));
    a = (scale ? scale : 1.0) * sqrt(6.0 / (fans > 0 ? fans : 1.0));
  } else if (strcmp(kind, "normal") == 0) {
    for (uint64_t i = 0; i < n; i++) {
      double u1 = init_u01(seed, tensor, first + i, 0);
      double u2 = init_u01(seed, tensor, first + i, 1);
      dst[i] = (float)(scale * sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2));
    }
    return 0;
  } else {
    return PS_EINVAL;
  }
  for (uint64_t i = 0; i < n; i++)
    dst[i] = (float)(a * (2.0 * init_u01(seed, tensor, first + i, 0) - 1.0));
  return 0;
}

/* ---- embedding rows (ps_place.h) ---------------------------------------- */

uint64_t ps_place_row_seed(const char *model, uint32_t table) {
  return ps_mix64(ps_hash64(model, strlen(model), 0x726f7773 /* "rows" */) ^ table);
}

void ps_place_row_map(const char *model, uint32_t table, const uint32_t *shard_ids,
                      size_t nshards, uint16_t *map) {
  for (uint32_t b = 0; b < PS_PLACE_ROW_BUCKETS; b++)
    map[b] = (uint16_t)ps_place_chunk(model, table, b, shard_ids, nshards);
}

uint64_t ps_place_row_key(uint64_t id, uint64_t buckets) {
  return buckets ? ps_mix64(id ^ 0x6b657973 /* "keys" */) % buckets : id;
}

int ps_init_row(float *dst, const char *kind, float scale, uint64_t seed, uint32_t table,
                uint64_t key, uint32_t dim) {
  if (!dim || dim > 65536) return PS_EINVAL;
  return ps_init_fill(dst, kind, scale, seed, table, ps_mix64(key) << 16, dim, dim, 1);
}
