/* psw_metric: binary classification metrics over predicted probabilities
 * (the sigmoid_xent node's, psw_exec_probs), for the auc and logloss
 * metrics of a graph.  Pure functions; thread-safe. */
#ifndef PSW_METRIC_H
#define PSW_METRIC_H

#include <stddef.h>
#include <stdint.h>

/* psw_metric_auc returns the area under the ROC curve of probabilities P
 * for labels Y (0 or 1) over N samples: the chance that a random positive
 * scores above a random negative, ties counting one half (the rank-sum
 * form, O(n log n)).  NAN when N has no positive or no negative, or on
 * out-of-memory. */
double psw_metric_auc(const float *p, const int32_t *y, size_t n);

/* psw_metric_logloss returns the mean of -(y log p + (1 - y) log(1 - p))
 * with P clamped to [1e-7, 1 - 1e-7]; NAN for N = 0. */
double psw_metric_logloss(const float *p, const int32_t *y, size_t n);

#endif
