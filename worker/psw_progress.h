/* psw_progress: how psw reports training progress — the live or plain
 * progress lines on stderr and the per-epoch metrics CSV.
 *
 * On a terminal, progress is one line redrawn with '\r' (at most every
 * 200 ms); otherwise plain lines, one every PSW_PROGRESS_PLAIN_MS and one
 * per epoch (its test figures "-" when none was evaluated: no test set).
 * Not thread-safe: one thread reports. */
#ifndef PSW_PROGRESS_H
#define PSW_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

#include "ps_error.h"

#define PSW_PROGRESS_PLAIN_MS 5000
#define PSW_METRICS_HEADER \
  "epoch,step,train_loss,train_accuracy,test_loss,test_accuracy,samples_per_sec,wall_s"

typedef struct psw_progress {
  FILE *out;        /* borrowed (stderr) */
  int tty;          /* out is a terminal: redraw one live line */
  int quiet;        /* report nothing */
  int live;         /* a live line is on screen and needs a newline */
  int64_t last_ms;  /* when the last line was drawn */
  uint32_t rank;
} psw_progress;

/* One progress sample within an epoch. */
typedef struct psw_progress_step {
  uint32_t epoch, epochs;   /* 1-based epoch */
  uint64_t step, steps;     /* step within the epoch, 1-based, and their count */
  double loss, accuracy;    /* running means over the epoch so far */
  double samples_per_sec;   /* training throughput so far */
  double eta_s;             /* seconds left in the whole run (training only) */
} psw_progress_sample;

/* One epoch's summary: the metrics CSV row. */
typedef struct psw_epoch_stats {
  uint32_t epoch;           /* 1-based */
  uint64_t step;            /* steps completed in the run */
  double train_loss, train_accuracy;
  double test_loss, test_accuracy;
  double samples_per_sec;   /* this epoch's training throughput */
  double wall_s;            /* since the run started */
} psw_epoch_stats;

/* psw_progress_init reports to OUT (borrowed) as worker RANK; QUIET
 * silences progress (errors are not progress and still go to stderr). */
void psw_progress_init(psw_progress *p, FILE *out, uint32_t rank, int quiet);

/* psw_progress_step draws S if it is time to (always for the first step). */
void psw_progress_step(psw_progress *p, const psw_progress_sample *s);

/* psw_progress_epoch ends a live line and prints E's summary line. */
void psw_progress_epoch(psw_progress *p, const psw_epoch_stats *e);

/* psw_progress_end ends a live line, if one is on screen. */
void psw_progress_end(psw_progress *p);

/* psw_metrics_append appends E as one row to the CSV file PATH, writing
 * the header first when the file is new or empty.  PS_EIO with the path
 * and errno's message in EB on failure. */
int psw_metrics_append(const char *path, const psw_epoch_stats *e, ps_errbuf *eb);

#endif
