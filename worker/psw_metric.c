/* psw_metric: AUC by ranks (ties averaged), logloss. */
#include "psw_metric.h"

#include <math.h>
#include <stdlib.h>

typedef struct scored {
  float p;
  int32_t y;
} scored;

static int scored_cmp(const void *a, const void *b) {
  float x = ((const scored *)a)->p, y = ((const scored *)b)->p;
  return (x > y) - (x < y);
}

double psw_metric_auc(const float *p, const int32_t *y, size_t n) {
  scored *s = malloc((n ? n : 1) * sizeof *s);
  if (!s) return NAN;
  size_t npos = 0;
  for (size_t i = 0; i < n; i++) {
    s[i].p = p[i];
    s[i].y = y[i] != 0;
    npos += s[i].y;
  }
  size_t nneg = n - npos;
  if (!npos || !nneg) {
    free(s);
    return NAN;
  }
  qsort(s, n, sizeof *s, scored_cmp);
  /* sum of the positives' ranks, a run of equal scores sharing its mean rank */
  double rank_sum = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i, pos = 0;
    while (j < n && s[j].p == s[i].p) pos += (size_t)s[j++].y;
    rank_sum += (double)pos * ((double)(i + 1) + (double)j) / 2;
    i = j;
  }
  free(s);
  return (rank_sum - (double)npos * (double)(npos + 1) / 2) / ((double)npos * (double)nneg);
}

double psw_metric_logloss(const float *p, const int32_t *y, size_t n) {
  if (!n) return NAN;
  double s = 0;
  for (size_t i = 0; i < n; i++) {
    double q = p[i] < 1e-7f ? 1e-7 : p[i] > 1 - 1e-7 ? 1 - 1e-7 : (double)p[i];
    s -= y[i] ? log(q) : log(1 - q);
  }
  return s / (double)n;
}
