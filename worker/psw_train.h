/* psw_train: a worker's training run — data partitions, the step loop over
 * the compute backend and psw_client, per-epoch evaluation, progress.
 *
 * One step: forward and backward on a flat parameter vector pulled from
 * every shard, push of the gradient to every shard.  Two schedules:
 *
 *   sequential (overlap = 0): compute step t on P_t, then push g_t and
 *     pull P_{t+1} (one pipelined round trip per shard); nothing is in
 *     flight while computing.
 *   overlap (overlap = 1): two parameter/gradient buffers; while step t
 *     computes on P_t (buffer t % 2), the communication thread pushes
 *     g_{t-1} and pulls P_{t+1} into the other buffer, so P_{t+1} lacks
 *     only g_t: a staleness of one step.  Needs a consistency model that
 *     allows it (asp, or ssp with staleness >= 1); with bsp (or ssp with
 *     staleness 0) the run is sequential whatever was asked.  The model's
 *     consistency decides (its spec, which the shards enforce), not the
 *     cluster file's training section.
 *
 * A model with an embedding table (psw_graph_embedding) also pulls, per
 * step and on the training thread, the rows of the batch's distinct keys
 * (psw_sparse, after the step's dense pull is in) and pushes their
 * gradients before the step's dense push: another worker that the
 * staleness bound lets go on has seen them too.
 *
 * Data: the worker trains one partition at a time, in the partition's
 * own order for its epoch (psw_data_part_order), batches never spanning
 * two.  A registered worker claims each partition from the coordinator
 * and reports its offset before each push (psw_coord invariant 6), so a
 * partition it cannot finish resumes with another worker where it
 * stopped; a fixed rank trains its partitions (p % workers == rank) every
 * epoch.  A partition ends with every gradient pushed and a fresh pull;
 * a (local) epoch ends when the next claim is of a later epoch or none is
 * left, and the test set is evaluated then.  Thread-safety: one run per process (the
 * OpenBLAS thread count is process-wide). */
#ifndef PSW_TRAIN_H
#define PSW_TRAIN_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "ps_config.h"
#include "ps_error.h"

typedef struct psw_train_opts {
  const ps_config *cfg;        /* borrowed for the run */
  const char *model;           /* model name on the shards (borrowed) */
  /* 1: rank, world size and partitions come from the coordinator
   * (RegisterWorker), and the first step waits until the world is
   * registered; 0: RANK among WORKERS (rank < workers), partitions
   * computed the same way the coordinator does. */
  int register_worker;
  uint32_t rank, workers;
  /* Straggler factor >= 1: sleep (F - 1) x the compute time after each
   * step.  0: workers.slowdown[rank] (1 past the list). */
  double slowdown;
  const char *device;          /* "auto" | "cpu" | "cuda" | "cuda:N" (borrowed) */
  uint32_t epochs;             /* >= 1 */
  uint32_t batch;              /* >= 1 */
  const char *metrics_csv;     /* NULL: none (borrowed) */
  int overlap;                 /* 1: staleness-1 pipeline, 0: sequential */
  int blas_threads;            /* OpenBLAS threads of the CPU backend (>= 1) */
  int quiet;                   /* no progress on stderr */
  /* Set (to the signal number) by a signal handler: the run stops after
   * the current step, pushes it, and returns 0 with result.stopped set.
   * Borrowed; may be NULL. */
  volatile sig_atomic_t *stop;
} psw_train_opts;

typedef struct psw_train_result {
  uint32_t epochs;             /* epochs completed (evaluated) */
  uint64_t steps;              /* steps completed */
  uint64_t samples;            /* training samples processed */
  double train_loss;           /* mean loss of the last epoch (or of the partial one) */
  double test_loss;            /* NAN before the first evaluation */
  double test_accuracy;        /* NAN before the first evaluation */
  double test_auc;             /* binary classifiers (a sigmoid_xent node): AUC */
  double test_logloss;         /* and logloss of the last evaluation; else NAN */
  double samples_per_sec;      /* training only, evaluation excluded */
  double wall_s;               /* the whole run */
  int overlap;                 /* the schedule that ran */
  int stopped;                 /* the run ended early on *stop */
  int job_done;                /* registered: 1 when the coordinator's last answer said
                                  every partition has finished, 0 when partitions of
                                  other workers were still unfinished; -1: a fixed rank */
  int bad_input;               /* the failure was the config's, data's or graph's */
  uint32_t rank, workers;      /* the rank that ran (given or registered) */
  int ranked;                  /* 1 once it had a rank (--rank, or registered); 0: it
                                  failed or stopped before registering, and rank means
                                  nothing (the JSON line says "rank":null) */
  double blocked_share;        /* share of the training wall time spent waiting
                                  for parameters (pulls, parked or not); this
                                  and the two shares below are NAN (JSON null)
                                  for a run that trained no step */
  double parked_share;         /* time the shards held the pulls parked by
                                  the staleness bound / training wall time
                                  (within blocked_share unless overlapping) */
  double report_wait_share;    /* time spent after computing a batch waiting for
                                  the coordinator to answer its progress report
                                  (psw_coord invariant 6) / training wall time;
                                  not within blocked_share */
  double slowdown;             /* the straggler factor applied */
  double compute_s;            /* wall seconds inside psw_exec_step (forward +
                                  backward of the training steps alone: no
                                  gather, clip, push, pull or wait) */
  uint64_t compute_samples;    /* rows those steps computed */
  char device[256];            /* the backend's description */
  uint32_t *partitions;        /* the data partitions of the last epoch */
  size_t npartitions;          /* (malloc'd: release with psw_train_result_free) */
  uint64_t bytes_sent, bytes_received; /* on the tensor channels, frames whole */
  uint64_t push_bytes;         /* of bytes_sent, the push frames' */
  uint64_t shm_bytes;          /* of both, payloads moved through shared memory */
  uint64_t *pushes_acked;      /* per shard (config order): pushes it acknowledged, */
  uint64_t *pushes_unanswered; /* and pushes whose answer never came (psw_client_push_counts) */
  int64_t sparse_lost;         /* sparse pushes lost with a shard's connection, never resent
                                  (psw_sparse_lost_pushes); -1: a dense model */
  size_t nshards;              /* (both malloc'd: psw_train_result_free) */
} psw_train_result;

/* psw_train_result_free releases what R holds (not R). */
void psw_train_result_free(psw_train_result *r);

/* psw_train_run trains as O says and fills *R (also on failure, with what
 * was done).  Returns 0, or a negative PS_E* code with the message in EB:
 * r->bad_input tells usage/config/graph/data errors (exit 2) from runtime
 * failures such as a shard down past workers.retry_ms (exit 1). */
int psw_train_run(const psw_train_opts *o, psw_train_result *r, ps_errbuf *eb);

/* psw_train_evaluate reads the model's current parameters once (Export
 * from every shard: no clock table sees it) and evaluates the test set.
 * Fills *R's test_loss, test_accuracy, wall_s and device and *VERSION
 * (the smallest shard version).  Errors as psw_train_run; PS_ECONFIG
 * (bad_input) without a test set. */
int psw_train_evaluate(const psw_train_opts *o, psw_train_result *r, uint64_t *version,
                       ps_errbuf *eb);

/* psw_train_eval_json writes the evaluation's JSON line:
 * {"model":…,"test_loss":…,"test_accuracy":…,"test_auc":…,"test_logloss":…,
 * "version":…,"wall_s":…,"stopped":…} (auc and logloss null but for binary
 * classifiers; STOPPED: a signal ended it before the figures were in,
 * which are then null). */
void psw_train_eval_json(FILE *out, const char *model, const psw_train_result *r,
                         uint64_t version, int stopped);

/* psw_train_json writes R as one JSON object line (with MODEL, R's rank,
 * null when R->ranked is 0, and the batch size BATCH) to OUT. */
void psw_train_json(FILE *out, const char *model, uint32_t batch, const psw_train_result *r);

/* psw_train_who writes how the log names R's worker into BUF (CAP bytes):
 * "worker R", or "worker" alone while it had no rank (R->ranked 0: a
 * registering worker that failed before the coordinator gave it one);
 * returns BUF. */
const char *psw_train_who(const psw_train_result *r, char *buf, size_t cap);

#endif
